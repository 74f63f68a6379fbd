//! The gce backend end to end: `weft agent` processes against a real etcd, a test server for
//! the Compute REST API and one metadata server per instance. Prints the API calls made at
//! start-up and in steady state.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::decoy::Decoy;
use common::etcd::EtcdServer;
use common::gce_api::{GceApi, GceApiServer};
use common::gce_metadata::MetadataServer;
use common::weft::{Agent, Setup};

const PROJECT: &str = "weft-test";
const ZONE: &str = "europe-west1-b";
const NETWORK: &str = "default";

/// `GCE_METADATA_HOST` is per process, and the harness starts agents with the test's own
/// environment: set it and spawn under one lock so parallel tests do not mix them up.
static SPAWN: Mutex<()> = Mutex::new(());

/// One GCE instance running a weft agent.
struct Node {
    name: &'static str,
    subnet: &'static str,
    ip: &'static str,
    metadata: MetadataServer,
}

impl Node {
    fn new(api: &GceApi, name: &'static str, subnet: &'static str, ip: &'static str) -> Node {
        api.add_instance(ZONE, name, NETWORK, ip);
        let metadata = MetadataServer::start(PROJECT, ZONE, name, NETWORK, ip);
        api.allow_token(&metadata.token, name);
        Node { name, subnet, ip, metadata }
    }

    /// Starts the agent; the subnet.env of a "previous run" makes it ask for `subnet`.
    fn start(&self, setup: &Setup) -> Agent {
        let env = setup.path(&format!("{}.env", self.name));
        if !env.exists() {
            std::fs::write(&env, format!("FLANNEL_SUBNET={}\n", self.subnet.replace(".0/", ".1/")))
                .expect("subnet.env");
        }
        let _guard = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY (edition 2021: safe fn): no other thread of this test binary reads the
        // environment while SPAWN is held.
        std::env::set_var("GCE_METADATA_HOST", &self.metadata.host);
        std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS");
        setup.agent(self.name, self.ip, &[])
    }
}

fn setup(etcd: &EtcdServer, api: &GceApiServer, extra_backend: &str) -> Setup {
    let setup = Setup::new(&format!(
        "[agent]\nlease_ttl = \"30s\"\nrenew_margin = \"10s\"\nresync = \"1s\"\n\n\
         [store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\n\n\
         [network]\ncidr = \"10.244.0.0/16\"\n\n\
         [network.backend]\ntype = \"gce\"\nrecheck = \"2s\"\n{extra_backend}\n\n\
         [cloud]\ngce_endpoint = \"{}\"\n",
        etcd.endpoint, api.endpoint
    ));
    setup.ok(&["network", "apply"]);
    setup
}

fn api_server() -> GceApiServer {
    let server = GceApiServer::start(PROJECT);
    server.api.add_network(NETWORK);
    server.api.add_network("other");
    server
}

fn wait_ready(agent: &Agent, secs: u64) {
    agent.wait_for("/readyz 200", secs, |a| a.get("/readyz").0 == 200);
}

fn next_hop(api: &GceApi, route: &str) -> Option<String> {
    api.routes().get(route).and_then(|r| r["nextHopInstance"].as_str().map(str::to_string))
}

/// Calls of `operation` naming `detail`, by caller.
fn calls_on(api: &GceApi, operation: &str, detail: &str) -> Vec<String> {
    api.calls().into_iter().filter(|c| c.operation == operation && c.detail == detail).map(|c| c.caller).collect()
}

fn calls_metric(agent: &Agent, operation: &str, outcome: &str) -> f64 {
    agent.metric(&format!(
        "weft_cloud_api_calls_total{{provider=\"gce\",operation=\"{operation}\",outcome=\"{outcome}\"}}"
    ))
}

/// Whoever can write the store must not get the instances' tokens: an `Endpoint` in the stored
/// network config (shared by every host) is ignored; only the agent's own `[cloud]` counts.
#[test]
fn an_endpoint_in_the_stored_config_is_never_called() {
    let etcd = EtcdServer::start();
    let server = api_server();
    let api = &server.api;
    let node = Node::new(api, "node-a", "10.244.1.0/24", "10.132.0.2");
    let decoy = Decoy::start();
    let setup = setup(&etcd, &server, "");
    etcd.set_backend_key("Endpoint", &decoy.url);
    let agent = node.start(&setup);
    wait_ready(&agent, 30);
    assert_eq!(next_hop(api, "weft-10-244-1-0-24"), Some(api.instance_link(ZONE, "node-a")));
    assert!(!calls_on(api, "routes.insert", "weft-10-244-1-0-24").is_empty(), "the route went to [cloud]'s API");
    assert_eq!(decoy.requests(), Vec::<String>::new(), "the stored Endpoint was called");
    let log = agent.log_text();
    assert!(log.contains("names a cloud endpoint") && log.contains("cloud.gce_endpoint"), "{log}");
}

#[test]
fn three_agents_route_their_subnets_and_one_removes_stale_routes() {
    let etcd = EtcdServer::start();
    let server = api_server();
    let api = &server.api;
    let net = api.network_link(NETWORK);
    let nodes = [
        Node::new(api, "node-a", "10.244.1.0/24", "10.132.0.2"),
        Node::new(api, "node-b", "10.244.2.0/24", "10.132.0.3"),
        Node::new(api, "node-c", "10.244.3.0/24", "10.132.0.4"),
    ];
    api.add_instance(ZONE, "node-gone", NETWORK, "10.132.0.9");
    let gone = api.instance_link(ZONE, "node-gone");
    // flannel ran here before: node-a's route under flannel's name, to be adopted.
    api.put_route("flannel-10-244-1-0-24", "10.244.1.0/24", &net, Some(&api.instance_link(ZONE, "node-a")));
    // node-b's subnet routed through a machine that is gone: to be replaced.
    api.put_route("weft-10-244-2-0-24", "10.244.2.0/24", &net, Some(&gone));
    // A subnet nobody leases any more: stale.
    api.put_route("weft-10-244-200-0-24", "10.244.200.0/24", &net, Some(&gone));
    // Not ours: other prefixes, another cluster's range, another network, flannel's leftovers.
    let foreign = [
        ("default-route-0123456789abcdef", "0.0.0.0/0", net.clone(), None),
        ("app-10-50-0-0-16", "10.50.0.0/16", net.clone(), Some(gone.clone())),
        ("weft-10-99-0-0-24", "10.99.0.0/24", net.clone(), Some(gone.clone())),
        ("weft-10-244-201-0-24", "10.244.201.0/24", api.network_link("other"), Some(gone.clone())),
        ("flannel-10-244-9-0-24", "10.244.9.0/24", net.clone(), Some(gone.clone())),
    ];
    for (name, dest, network, hop) in &foreign {
        api.put_route(name, dest, network, hop.as_deref());
    }
    let foreign_before: BTreeMap<_, _> =
        api.routes().into_iter().filter(|(name, _)| foreign.iter().any(|f| f.0 == name)).collect();

    let setup = setup(&etcd, &server, "");
    let started = Instant::now();
    let mut agents: Vec<Agent> = nodes.iter().map(|n| n.start(&setup)).collect();
    for agent in &agents {
        wait_ready(agent, 30);
    }
    let ready_after = started.elapsed();

    // Each subnet routed once, through its own instance.
    assert_eq!(next_hop(api, "flannel-10-244-1-0-24"), Some(api.instance_link(ZONE, "node-a")));
    assert!(!api.routes().contains_key("weft-10-244-1-0-24"), "flannel's route was duplicated");
    assert_eq!(next_hop(api, "weft-10-244-2-0-24"), Some(api.instance_link(ZONE, "node-b")));
    assert_eq!(next_hop(api, "weft-10-244-3-0-24"), Some(api.instance_link(ZONE, "node-c")));
    assert_eq!(api.routes()["weft-10-244-3-0-24"]["destRange"], "10.244.3.0/24");
    assert_eq!(api.routes()["weft-10-244-3-0-24"]["network"], net.as_str());
    assert_eq!(api.routes()["weft-10-244-3-0-24"]["priority"], 1000);
    assert_eq!(calls_on(api, "routes.insert", "weft-10-244-3-0-24"), ["node-c"]);
    assert_eq!(calls_on(api, "routes.insert", "weft-10-244-2-0-24"), ["node-b"]);
    assert_eq!(calls_on(api, "routes.delete", "weft-10-244-2-0-24"), ["node-b"], "the conflicting route is replaced");
    assert!(calls_on(api, "routes.insert", "weft-10-244-1-0-24").is_empty());

    // The stale route goes, removed by exactly one agent (two passes of the leader).
    common::wait::until("the stale route removed", Duration::from_secs(30), || {
        !api.routes().contains_key("weft-10-244-200-0-24")
    });
    let startup_calls = api.call_counts(0);
    let deleters = calls_on(api, "routes.delete", "weft-10-244-200-0-24");
    assert_eq!(deleters.len(), 1, "{deleters:?}");
    let lister: Vec<_> = api.calls().into_iter().filter(|c| c.operation == "routes.list").map(|c| c.caller).collect();
    assert!(lister.iter().all(|c| *c == deleters[0]), "only the leader lists: {lister:?}");

    // Steady state: some rechecks, nothing changes.
    let mark = api.calls().len();
    let routes_before = api.routes();
    let steady = Duration::from_secs(10);
    std::thread::sleep(steady);
    let steady_calls = api.call_counts(mark);
    assert_eq!(api.routes(), routes_before);
    for changing in ["routes.insert", "routes.delete"] {
        assert!(!steady_calls.contains_key(changing), "{changing} in steady state: {steady_calls:?}");
    }
    let foreign_after: BTreeMap<_, _> =
        api.routes().into_iter().filter(|(name, _)| foreign.iter().any(|f| f.0 == name)).collect();
    assert_eq!(foreign_after, foreign_before, "foreign routes were touched");
    for (name, ..) in &foreign {
        assert!(calls_on(api, "routes.delete", name).is_empty(), "{name} deleted");
    }
    for agent in &agents {
        assert_eq!(agent.get("/readyz").0, 200);
        assert_eq!(agent.metric("weft_cloud_routes_owned{provider=\"gce\",table=\"default\"}"), 1.0);
        assert!(calls_metric(agent, "instances.get", "ok") == 1.0, "identity is looked up once");
    }
    println!("gce API calls, start-up of 3 agents until all ready ({ready_after:?}) and the stale route gone: {startup_calls:?}");
    println!("gce API calls, steady state, 3 agents, {steady:?} with recheck 2s: {steady_calls:?}");

    // A restart changes nothing.
    for agent in &mut agents {
        agent.stop();
    }
    let mark = api.calls().len();
    let routes_before = api.routes();
    let agents: Vec<Agent> = nodes.iter().map(|n| n.start(&setup)).collect();
    for agent in &agents {
        wait_ready(agent, 30);
    }
    std::thread::sleep(Duration::from_secs(5));
    let restart_calls = api.call_counts(mark);
    assert_eq!(api.routes(), routes_before, "a restart changed routes");
    for changing in ["routes.insert", "routes.delete"] {
        assert!(!restart_calls.contains_key(changing), "{changing} after restart: {restart_calls:?}");
    }
    println!("gce API calls, restart of 3 agents and 5 s: {restart_calls:?}");
    assert!(nodes.iter().all(|n| n.metadata.requests() > 0));
}

#[test]
fn quota_and_operation_errors_show_in_readyz_and_metrics() {
    let etcd = EtcdServer::start();
    let server = api_server();
    let api = &server.api;
    let a = Node::new(api, "node-a", "10.244.1.0/24", "10.132.0.2");
    let b = Node::new(api, "node-b", "10.244.2.0/24", "10.132.0.3");
    let setup = setup(&etcd, &server, "");

    // No room for a route: the insert's operation ends in QUOTA_EXCEEDED.
    api.set_route_quota(Some(0));
    let agent_a = a.start(&setup);
    agent_a.wait_for("the quota error", 30, |ag| {
        let (status, body) = ag.get("/readyz");
        status == 503 && body.contains("ROUTES-per-project")
    });
    let (_, body) = agent_a.get("/readyz");
    assert!(body.contains("quota"), "{body}");
    println!("/readyz while the route quota is full: {}", body.trim());
    assert_eq!(agent_a.metric("weft_cloud_route_limit_reached{provider=\"gce\",table=\"default\"}"), 1.0);
    assert!(calls_metric(&agent_a, "globalOperations.get", "quota_exceeded") >= 1.0);
    assert!(agent_a.log_text().contains("ROUTES-per-project"), "{}", agent_a.log_text());
    // The same refused up front (HTTP 403, reason quotaExceeded).
    api.set_quota_http(true);
    agent_a.wait_for("a 403 quota error", 30, |ag| calls_metric(ag, "routes.insert", "quota_exceeded") >= 1.0);
    assert_eq!(agent_a.get("/readyz").0, 503);
    // Room again: the retry succeeds without a restart.
    api.set_route_quota(None);
    wait_ready(&agent_a, 30);
    assert_eq!(agent_a.metric("weft_cloud_route_limit_reached{provider=\"gce\",table=\"default\"}"), 0.0);
    assert!(api.routes().contains_key("weft-10-244-1-0-24"));

    // An operation that ends in an error.
    api.fail_insert("weft-10-244-2-0-24", "RESOURCE_NOT_READY");
    let agent_b = b.start(&setup);
    agent_b.wait_for("the operation error", 30, |ag| {
        let (status, body) = ag.get("/readyz");
        status == 503 && body.contains("RESOURCE_NOT_READY")
    });
    assert!(calls_metric(&agent_b, "globalOperations.get", "operation_error") >= 1.0);
    println!("/readyz while the insert operation fails: {}", agent_b.get("/readyz").1.trim());
    assert!(agent_b.log_text().contains("RESOURCE_NOT_READY"));
    api.clear_failures();
    wait_ready(&agent_b, 30);
    assert_eq!(next_hop(api, "weft-10-244-2-0-24"), Some(api.instance_link(ZONE, "node-b")));
    assert_eq!(agent_a.get("/readyz").0, 200, "node-a's route was never at stake");
}
