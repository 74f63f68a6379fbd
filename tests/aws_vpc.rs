//! The aws-vpc backend end to end: `weft agent` processes against moto (a model of EC2) through
//! a fault-injecting proxy, real etcd, and one IMDSv2 server per simulated node.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::decoy::Decoy;
use common::etcd::EtcdServer;
use common::imds::{self, Imds};
use common::moto::{self, Fault, FaultProxy, Host, Moto, Vpc};
use common::weft::{Agent, Setup};

/// Pace of the agents' cloud work in these tests (300 s by default).
const RECHECK: Duration = Duration::from_secs(2);
/// Routes inside the cluster network that no agent leases.
const STALE: &str = "10.244.200.0/24";
const BLACKHOLE: &str = "10.244.201.0/24";
/// Outside the cluster network: never weft's.
const OUTSIDE: &str = "192.168.50.0/24";
const MUTATING: [&str; 4] = ["CreateRoute", "ReplaceRoute", "DeleteRoute", "ModifyNetworkInterfaceAttribute"];

/// One test's world: moto behind the proxy, a VPC, etcd, and nodes with their metadata servers.
struct World {
    runtime: tokio::runtime::Runtime,
    _moto: Moto,
    proxy: FaultProxy,
    /// Straight to moto: the test's own calls are not counted.
    ec2: aws_sdk_ec2::Client,
    vpc: Vpc,
    etcd: EtcdServer,
    nodes: Vec<(Host, Imds)>,
}

impl World {
    /// `subnets[i]` is where node i runs.
    fn new(subnets: impl Fn(&Vpc) -> Vec<String>) -> World {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let moto = Moto::start();
        let proxy = FaultProxy::start(&runtime, &moto);
        let ec2 = moto::client(&moto.endpoint);
        let vpc = runtime.block_on(moto::build_vpc(&ec2));
        let nodes = subnets(&vpc)
            .iter()
            .map(|subnet| {
                let host = runtime.block_on(moto::launch(&ec2, subnet));
                let imds = Imds::start(&runtime, imds::metadata_for(&host));
                (host, imds)
            })
            .collect();
        World { runtime, _moto: moto, proxy, ec2, vpc, etcd: EtcdServer::start(), nodes }
    }

    /// A weft.toml for this world with `backend` as the `[network.backend]` body.
    fn setup(&self, backend: &str) -> Setup {
        let setup = Setup::new(&format!(
            "[agent]\nresync = \"1s\"\n\n[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\n\n[network]\ncidr = \"10.244.0.0/16\"\n\n[network.backend]\ntype = \"aws-vpc\"\nrecheck = \"{}s\"\n{backend}\n\n[cloud]\naws_endpoint_url = \"{}\"\n",
            self.etcd.endpoint,
            RECHECK.as_secs(),
            self.proxy.endpoint
        ));
        setup.ok(&["network", "apply"]);
        setup
    }

    fn agent(&self, setup: &Setup, i: usize) -> Agent {
        let (host, imds) = &self.nodes[i];
        let name = format!("node{i}");
        imds::with_node_env(imds, || setup.agent(&name, &host.ip.to_string(), &[]))
    }

    fn routes(&self, table: &str) -> BTreeMap<String, moto::SeenRoute> {
        self.runtime.block_on(moto::routes(&self.ec2, table))
    }

    /// Whether `table` routes `cidr` to node i's interface.
    fn routes_to(&self, table: &str, cidr: &str, i: usize) -> bool {
        self.routes(table).get(cidr).is_some_and(|r| r.target == self.nodes[i].0.interface_id)
    }

    fn mutating_calls(&self) -> usize {
        let counts = self.proxy.counts();
        MUTATING.iter().map(|a| counts.get(*a).copied().unwrap_or(0)).sum()
    }
}

/// Waits for `done`, polling moto every 200 ms; on timeout the agents' logs say why.
fn wait_until(what: &str, secs: u64, agents: &[&Agent], done: impl FnMut() -> bool) {
    let logs = || agents.iter().map(|a| a.log_text()).collect::<Vec<_>>().join("\n-----\n");
    let within = Duration::from_secs(secs);
    common::wait::until_every(what, within, Duration::from_millis(200), done, || format!("agent logs:\n{}", logs()));
}

fn ready(agent: &Agent) -> bool {
    agent.get("/readyz").0 == 200
}

/// A counter of the agent's EC2 calls (`weft_cloud_api_calls_total`) for one operation, all outcomes.
fn ec2_calls(agent: &Agent, operation: &str) -> f64 {
    let (_, body) = agent.get("/metrics");
    let prefix = "weft_cloud_api_calls_total{";
    body.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(&format!("operation=\"{operation}\"")))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn tagged_mode() -> String {
    format!("route_table_tag = \"{}={}\"", moto::TAG_KEY, moto::TAG_VALUE)
}

#[test]
fn metadata_server_follows_imdsv2() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let host = Host {
        instance_id: "i-1".into(),
        interface_id: "eni-1".into(),
        mac: "02:00:00:00:00:01".into(),
        ip: "10.0.1.5".parse().unwrap(),
    };
    let server = Imds::start(&runtime, imds::metadata_for(&host));
    let e = &server.endpoint;
    assert_eq!(imds::request(e, "GET", "/latest/meta-data/instance-id", &[]).0, 401);
    assert_eq!(imds::request(e, "PUT", "/latest/api/token", &[]).0, 400, "no TTL header");
    let (status, token) =
        imds::request(e, "PUT", "/latest/api/token", &[("X-aws-ec2-metadata-token-ttl-seconds", "60")]);
    assert_eq!(status, 200);
    let with = [("X-aws-ec2-metadata-token", token.as_str())];
    assert_eq!(imds::request(e, "GET", "/latest/meta-data/instance-id", &with), (200, "i-1".to_string()));
    let path = "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:01/interface-id";
    assert_eq!(imds::request(e, "GET", path, &with), (200, "eni-1".to_string()));
    assert_eq!(imds::request(e, "GET", "/latest/meta-data/nothing", &with).0, 404);
    assert_eq!(
        imds::request(e, "GET", "/latest/meta-data/instance-id", &[("X-aws-ec2-metadata-token", "forged")]).0,
        401
    );
}

/// The multi-AZ case: three nodes in three zones, a tagged table per zone.
#[test]
fn three_agents_own_their_routes_in_every_tagged_table() {
    let world = World::new(|vpc| vpc.subnets.clone());
    let spare = world.vpc.spare_interface.clone();
    // Left behind by a departed node, a dead target, and someone else's route outside the network.
    for table in &world.vpc.tagged {
        world.runtime.block_on(async {
            moto::create_route(&world.ec2, table, STALE, &spare).await;
            moto::create_route(&world.ec2, table, BLACKHOLE, &spare).await;
            moto::create_route(&world.ec2, table, OUTSIDE, &spare).await;
        });
    }
    world.proxy.inject(Fault::Blackhole { cidr: BLACKHOLE.into() });
    let setup = world.setup(&tagged_mode());
    let started = Instant::now();
    let mut agents: Vec<Agent> = (0..3).map(|i| world.agent(&setup, i)).collect();
    let subnets: Vec<String> = agents.iter_mut().map(|a| a.wait_subnet()).collect();
    let refs: Vec<&Agent> = agents.iter().collect();

    // Every node's subnet → its interface, in every tagged table; nothing in the untagged one.
    wait_until("routes in every tagged table", 60, &refs, || {
        world.vpc.tagged.iter().all(|t| (0..3).all(|i| world.routes_to(t, &subnets[i], i)))
    });
    wait_until("stale and blackhole routes removed", 30, &refs, || {
        world.vpc.tagged.iter().all(|t| {
            let routes = world.routes(t);
            !routes.contains_key(STALE) && !routes.contains_key(BLACKHOLE)
        })
    });
    wait_until("all agents ready", 30, &refs, || agents.iter().all(ready));
    let startup_time = started.elapsed();
    let startup = world.proxy.counts();
    let untagged = world.routes(&world.vpc.untagged);
    assert!(subnets.iter().all(|s| !untagged.contains_key(s)), "untagged table written: {untagged:?}");
    for table in &world.vpc.tagged {
        assert_eq!(
            world.routes(table).get(OUTSIDE).map(|r| r.target.as_str()),
            Some(spare.as_str()),
            "outside route touched"
        );
    }
    // Source/dest check off on every node's interface.
    for (host, _) in &world.nodes {
        assert_eq!(world.runtime.block_on(moto::source_dest_check(&world.ec2, &host.interface_id)), Some(false));
    }
    // Exactly one agent cleaned up: 2 routes in each of 3 tables.
    let deletes: Vec<f64> = agents.iter().map(|a| ec2_calls(a, "DeleteRoute")).collect();
    assert_eq!(deletes.iter().sum::<f64>(), 6.0, "DeleteRoute per agent: {deletes:?}");
    assert_eq!(deletes.iter().filter(|d| **d > 0.0).count(), 1, "DeleteRoute per agent: {deletes:?}");
    for agent in &agents {
        let (_, metrics) = agent.get("/metrics");
        for table in &world.vpc.tagged {
            let owned = format!("weft_cloud_routes_owned{{provider=\"aws\",table=\"{table}\"}} 1");
            assert!(metrics.contains(&owned), "{owned} missing:\n{metrics}");
        }
    }

    // Steady state: no mutating call, at most one describe per table per recheck.
    world.proxy.reset_counts();
    let periods = 4;
    std::thread::sleep(RECHECK * periods);
    let steady = world.proxy.counts();
    assert_eq!(world.mutating_calls(), 0, "steady state changed something: {steady:?}");
    let describes = steady.get("DescribeRouteTables").copied().unwrap_or(0);
    let bound = 3 * (periods as usize + 1);
    assert!(describes <= bound * world.vpc.tagged.len(), "{describes} describes in {periods} rechecks: {steady:?}");
    println!("EC2 calls by 3 agents, start-up ({startup_time:.1?} to routes in place and clean-up done): {startup:?}");
    println!("EC2 calls by 3 agents, steady state over {periods} rechecks of {RECHECK:?}: {steady:?}");

    // A conflicting route (same CIDR, another target) is taken back; a removed one restored.
    let (b, c) = (&world.vpc.tagged[1], &world.vpc.tagged[2]);
    world.runtime.block_on(moto::replace_route(&world.ec2, b, &subnets[1], &spare));
    world.runtime.block_on(moto::delete_route(&world.ec2, c, &subnets[2]));
    wait_until("conflicting route replaced", 20, &refs, || world.routes_to(b, &subnets[1], 1));
    wait_until("removed route restored", 20, &refs, || world.routes_to(c, &subnets[2], 2));
    drop(refs);

    // A restarted agent finds everything in place: no mutating call at all.
    agents[0].stop();
    world.proxy.reset_counts();
    let again = world.agent(&setup, 0);
    wait_until("restarted agent ready", 30, &[&again], || {
        ready(&again) && ec2_calls(&again, "DescribeRouteTables") >= 2.0
    });
    assert_eq!(world.mutating_calls(), 0, "restart changed something: {:?}", world.proxy.counts());
    println!("EC2 calls while one agent restarted: {:?}", world.proxy.counts());
}

#[test]
fn explicit_tables_only() {
    let world = World::new(|vpc| vec![vpc.subnets[0].clone(), vpc.subnets[1].clone()]);
    let chosen = [world.vpc.tagged[0].clone(), world.vpc.untagged.clone()];
    let setup = world.setup(&format!("route_table_ids = [\"{}\", \"{}\"]", chosen[0], chosen[1]));
    let mut agents: Vec<Agent> = (0..2).map(|i| world.agent(&setup, i)).collect();
    let subnets: Vec<String> = agents.iter_mut().map(|a| a.wait_subnet()).collect();
    let refs: Vec<&Agent> = agents.iter().collect();
    wait_until("routes in both listed tables", 60, &refs, || {
        chosen.iter().all(|t| (0..2).all(|i| world.routes_to(t, &subnets[i], i)))
    });
    for table in &world.vpc.tagged[1..] {
        let routes = world.routes(table);
        assert!(subnets.iter().all(|s| !routes.contains_key(s)), "unlisted table {table} written");
    }
    wait_until("agents ready", 20, &refs, || agents.iter().all(ready));
}

#[test]
fn association_then_main_table() {
    // Node 0 in a subnet with its own table; node 1 in a subnet that uses the main table.
    let world = World::new(|vpc| vec![vpc.subnets[1].clone(), vpc.loose_subnet.clone()]);
    let setup = world.setup("");
    // An EC2 endpoint in the store (shared by every host) is ignored: only [cloud]'s is called.
    let decoy = Decoy::start();
    world.etcd.set_backend_key("EndpointURL", &decoy.url);
    let mut agents: Vec<Agent> = (0..2).map(|i| world.agent(&setup, i)).collect();
    let subnets: Vec<String> = agents.iter_mut().map(|a| a.wait_subnet()).collect();
    let refs: Vec<&Agent> = agents.iter().collect();
    let (associated, main) = (&world.vpc.tagged[1], &world.vpc.main);
    wait_until("route in the associated table", 60, &refs, || world.routes_to(associated, &subnets[0], 0));
    wait_until("route in the main table", 60, &refs, || world.routes_to(main, &subnets[1], 1));
    assert!(!world.routes(main).contains_key(&subnets[0]));
    assert!(!world.routes(associated).contains_key(&subnets[1]));
    wait_until("agents ready", 20, &refs, || agents.iter().all(ready));
    assert_eq!(decoy.requests(), Vec::<String>::new(), "the stored EndpointURL was called");
}

#[test]
fn full_table_and_throttling() {
    let world = World::new(|vpc| vec![vpc.subnets[0].clone()]);
    let (a, b, c) = (&world.vpc.tagged[0], &world.vpc.tagged[1], &world.vpc.tagged[2]);
    world.proxy.inject(Fault::RouteLimit { table: b.clone() });
    world.proxy.inject(Fault::Throttle { action: "CreateRoute".into(), times: 2 });
    let setup = world.setup(&tagged_mode());
    let mut agent = world.agent(&setup, 0);
    let subnet = agent.wait_subnet();
    let refs = [&agent];
    // Throttled twice, retried by the SDK with backoff: the route still lands.
    wait_until("routes in the tables with room", 60, &refs, || {
        world.routes_to(a, &subnet, 0) && world.routes_to(c, &subnet, 0)
    });
    assert!(!world.routes(b).contains_key(&subnet));
    wait_until("/readyz naming the full table", 30, &refs, || {
        let (status, body) = agent.get("/readyz");
        status == 503
            && body.contains(&format!("route table {b} is full"))
            && body.contains("50")
            && body.contains("1000")
    });
    let limit = format!("weft_cloud_route_limit_reached{{provider=\"aws\",table=\"{b}\"}} 1");
    assert!(agent.get("/metrics").1.contains(&limit), "{limit} missing");
    assert!(ec2_calls(&agent, "CreateRoute") >= 3.0);
    let throttled_then_ok = world.proxy.counts().get("CreateRoute").copied().unwrap_or(0);
    assert!(throttled_then_ok >= 5, "2 throttled + tables a, c + b refused: {:?}", world.proxy.counts());

    // Room again (the quota raised): the next recheck puts the route in and /readyz recovers.
    world.proxy.clear_faults();
    wait_until("route in the formerly full table", 30, &refs, || world.routes_to(b, &subnet, 0));
    wait_until("ready again", 30, &refs, || ready(&agent));
    let cleared = format!("weft_cloud_route_limit_reached{{provider=\"aws\",table=\"{b}\"}} 0");
    assert!(agent.get("/metrics").1.contains(&cleared), "{cleared} missing");
    agent.stop();
}
