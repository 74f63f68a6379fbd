//! The cloud API bill at scale (issue 17): 50 agents — weft's own provider and cloud engine, each
//! with its own SDK client — for an hour of settled rechecks (12 at the default 300 s), against
//! moto through the counting proxy (aws-vpc) and against the GCE test server (gce). Each once on a
//! store that shares the cleanup leader's view of the cloud (etcd's kind, here the memory store)
//! and once on one that cannot (the local store): the calls per hour per agent and per cluster,
//! and what they come to at 1,000 nodes. Needs moto: fails, never skips, without it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::gce_api::GceApiServer;
use common::gce_metadata::MetadataServer;
use common::moto::{self, FaultProxy, Moto, TAG_KEY, TAG_VALUE};
use weft::backend::aws_vpc::node::Node;
use weft::backend::aws_vpc::plan::TableMode;
use weft::backend::aws_vpc::worker::AwsRoutes;
use weft::backend::cloud::engine::{Engine, Provider, Request};
use weft::backend::cloud::{CloudPaths, Settings};
use weft::backend::gce::worker::Routing;
use weft::health::Health;
use weft::lease::LeaseKey;
use weft::network::backend::GceConfig;
use weft::network::{Network, NetworkSection};
use weft::store::local::LocalStore;
use weft::store::memory::MemoryStore;
use weft::store::Leadership;
use weft_aws::{SdkEc2, SdkOptions};
use weft_gce::{ClientOptions, ComputeApi, CredentialSource, InstanceMetadata, SdkCompute};

const AGENTS: usize = 50;
/// An hour at the default recheck of 300 s.
const RECHECKS_PER_HOUR: usize = 12;
const RECHECK: Duration = Duration::from_secs(300);

/// What an hour of settled rechecks cost, by API operation.
struct Bill {
    by_operation: BTreeMap<String, usize>,
}

impl Bill {
    fn total(&self) -> usize {
        self.by_operation.values().sum()
    }

    fn writes(&self) -> usize {
        self.by_operation.iter().filter(|(op, _)| is_write(op)).map(|(_, n)| n).sum()
    }
}

/// EC2's and Compute's operations that change something.
fn is_write(operation: &str) -> bool {
    ["Create", "Replace", "Delete", "Modify", ".insert", ".delete"].iter().any(|w| operation.contains(w))
}

/// Two clusters of the same hosts, each in a cluster network of its own (so the other's routes
/// are none of its business): one on a store sharing the leader's view, one on a store without
/// (its state in `dir`, which the caller keeps until the end).
fn clusters(dir: &std::path::Path) -> [(&'static str, Arc<dyn Leadership>); 2] {
    [
        ("10.244.0.0/16", Arc::new(MemoryStore::new())),
        ("10.245.0.0/16", Arc::new(LocalStore::open(dir).expect("a local store"))),
    ]
}

fn network(cidr: &str) -> Network {
    Network::new(&NetworkSection { cidr: cidr.into(), subnet_len: 24, ..Default::default() }).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn aws_an_hour_of_settled_rechecks_costs_one_describe_per_recheck_with_a_shared_view() {
    // The agents' SDK clients take their credentials from the environment, as on a node.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let runtime = runtime();
    let moto = Moto::start();
    let proxy = FaultProxy::start(&runtime, &moto);
    let ec2 = moto::client(&moto.endpoint);
    let nodes: Vec<Node> = runtime.block_on(async {
        let vpc = moto::build_vpc(&ec2).await;
        let mut nodes = Vec::new();
        for i in 0..AGENTS {
            let subnet = vpc.subnets[i % vpc.subnets.len()].clone();
            let host = moto::launch(&ec2, &subnet).await;
            let (instance_id, interface_id) = (host.instance_id, host.interface_id);
            nodes.push(Node { instance_id, vpc_id: vpc.id.clone(), subnet_id: subnet, interface_id });
        }
        nodes
    });
    let mode = TableMode::from_config(&[], &format!("{TAG_KEY}={TAG_VALUE}")).unwrap();
    let options = SdkOptions { region: moto::REGION.into(), endpoint_url: proxy.endpoint.clone() };
    let dir = tempfile::tempdir().unwrap();
    let [shared, unshared] = clusters(dir.path()).map(|(cidr, store)| {
        let network = network(cidr);
        runtime.block_on(async {
            let mut providers = Vec::new();
            for node in &nodes {
                let ec2 = Arc::new(SdkEc2::new(&options, Arc::new(|_: weft_aws::Call| {})).await);
                let health = Arc::new(Health::default());
                providers.push(AwsRoutes::new(ec2, node.clone(), mode.clone(), &network, None, RECHECK, health));
            }
            let calls = || proxy.calls_made();
            settle_and_count(providers, &network, store, calls, |from| proxy.counts_since(from)).await
        })
    });
    print_bills("EC2", &shared, &unshared);
    assert_eq!(shared.writes() + unshared.writes(), 0, "a settled cluster wrote");
    // Shared: the leader's one describe per recheck, whatever the number of agents.
    assert!(shared.total() <= 2 * RECHECKS_PER_HOUR, "the bill grew with the agents: {:?}", shared.by_operation);
    // Unshared: every agent describes the tables every recheck.
    assert!(unshared.total() >= AGENTS * RECHECKS_PER_HOUR, "{:?}", unshared.by_operation);
}

#[test]
fn gce_an_hour_of_settled_rechecks_costs_one_listing_per_recheck_with_a_shared_view() {
    const PROJECT: &str = "weft-bill";
    const ZONE: &str = "us-central1-a";
    let server = GceApiServer::start(PROJECT);
    server.api.add_network("default");
    for i in 0..AGENTS {
        server.api.add_instance(ZONE, &format!("node-{i}"), "default", &format!("10.128.0.{}", i + 10));
    }
    // One metadata server hands every agent's client its token, as each instance's would.
    let metadata = MetadataServer::start(PROJECT, ZONE, "node-0", "default", "10.128.0.10");
    std::env::set_var("GCE_METADATA_HOST", &metadata.host);
    let runtime = runtime();
    let meta = |i: usize| InstanceMetadata {
        project: PROJECT.into(),
        zone: ZONE.into(),
        instance: format!("node-{i}"),
        network: "default".into(),
    };
    let options = ClientOptions {
        project: PROJECT.into(),
        endpoint: server.endpoint.clone(),
        credentials: CredentialSource::from_env(),
    };
    let dir = tempfile::tempdir().unwrap();
    let [shared, unshared] = clusters(dir.path()).map(|(cidr, store)| {
        let network = network(cidr);
        runtime.block_on(async {
            let mut providers = Vec::new();
            for i in 0..AGENTS {
                let api: Arc<dyn ComputeApi> = Arc::new(SdkCompute::new(&options).await.expect("a Compute client"));
                providers.push(Routing::new(api, GceConfig::default(), meta(i), &network, Arc::new(Health::default())));
            }
            let calls = || server.api.calls().len();
            settle_and_count(providers, &network, store, calls, |from| server.api.call_counts(from)).await
        })
    });
    print_bills("Compute", &shared, &unshared);
    assert_eq!(shared.writes() + unshared.writes(), 0, "a settled cluster wrote");
    assert!(shared.total() <= 2 * RECHECKS_PER_HOUR, "the bill grew with the agents: {:?}", shared.by_operation);
    assert!(unshared.total() >= AGENTS * RECHECKS_PER_HOUR, "{:?}", unshared.by_operation);
}

/// Runs `providers` (one per agent, agent i leasing the i-th subnet) until a round writes
/// nothing, then counts an hour of rechecks: `calls` says how many calls were made so far,
/// `counts(from)` counts those from the `from`th on by operation.
async fn settle_and_count<P: Provider>(
    providers: Vec<P>,
    network: &Network,
    store: Arc<dyn Leadership>,
    calls: impl Fn() -> usize,
    counts: impl Fn(usize) -> BTreeMap<String, usize>,
) -> Bill {
    let health = Arc::new(Health::default());
    let mut engines: Vec<Engine<P>> = providers
        .into_iter()
        .map(|provider| {
            let (store, health, paths) = (store.clone(), health.clone(), CloudPaths::default());
            Engine::new(provider, Settings { recheck: RECHECK, overflow: false, store, health, paths }).0
        })
        .collect();
    let subnets: Vec<LeaseKey> = (0..engines.len()).map(|i| LeaseKey::from(network.nth_subnet(i as u64))).collect();
    let leased: BTreeSet<LeaseKey> = subnets.iter().copied().collect();
    for rounds in 1.. {
        let from = calls();
        round(&mut engines, &subnets, &leased).await;
        let wrote = counts(from).keys().any(|op| is_write(op));
        if rounds > 1 && !wrote {
            break;
        }
        assert!(rounds < 10, "{}: not settled after {rounds} rounds: {:?}", network, counts(from));
    }
    let from = calls();
    for _ in 0..RECHECKS_PER_HOUR {
        round(&mut engines, &subnets, &leased).await;
    }
    Bill { by_operation: counts(from) }
}

/// One recheck of the cluster: every agent's pass, in turn.
async fn round<P: Provider>(engines: &mut [Engine<P>], subnets: &[LeaseKey], leased: &BTreeSet<LeaseKey>) {
    for (engine, own) in engines.iter_mut().zip(subnets) {
        engine.pass(&Request { own: Some(*own), leased: Some(leased.clone()) }).await;
    }
}

/// The two bills side by side, and at 1,000 nodes: the shared one as is (it does not grow with
/// the nodes), the other per node times 1,000.
fn print_bills(api: &str, shared: &Bill, unshared: &Bill) {
    let per_node = |bill: &Bill| bill.total() as f64 / AGENTS as f64;
    eprintln!("{api} calls in an hour of settled rechecks ({RECHECKS_PER_HOUR} at {RECHECK:?}), {AGENTS} agents:");
    eprintln!("  store          per cluster  per agent  at 1,000 nodes  by operation");
    for (name, bill, at_1000) in
        [("shares a view", shared, shared.total() as f64), ("no shared view", unshared, per_node(unshared) * 1000.0)]
    {
        eprintln!(
            "  {name:<14} {:>11} {:>10.2} {:>15.0}  {:?}",
            bill.total(),
            per_node(bill),
            at_1000,
            bill.by_operation
        );
    }
}
