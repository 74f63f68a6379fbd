//! The gce backend end to end: `weft agent` processes in network namespaces against a real etcd,
//! a test server for the Compute REST API and one metadata server per instance; pods reach each
//! other only through the VPC router, which forwards what the network's routes say
//! ([`common::vpc_router`]). Prints the API calls made at start-up and in steady state.
//! Needs root: fails, never skips, without it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::decoy::Decoy;
use common::gce_api::GceApi;
use common::gce_world::{GceWorld as World, NETWORK, OTHER_NETWORK, ZONE};
use common::packets::unreachable_pairs;
use common::secrets;
use weft::netns::Netns;

const PROJECT: &str = "weft-test";

fn next_hop(api: &GceApi, route: &str) -> Option<String> {
    api.routes().get(route).and_then(|r| r["nextHopInstance"].as_str().map(str::to_string))
}

/// Calls of `operation` naming `detail`, by caller.
fn calls_on(api: &GceApi, operation: &str, detail: &str) -> Vec<String> {
    api.calls().into_iter().filter(|c| c.operation == operation && c.detail == detail).map(|c| c.caller).collect()
}

fn calls_metric(world: &World, i: usize, operation: &str, outcome: &str) -> f64 {
    world.metric(
        i,
        &format!("weft_cloud_api_calls_total{{provider=\"gce\",operation=\"{operation}\",outcome=\"{outcome}\"}}"),
    )
}

fn wait_ready(world: &World, hosts: &[usize]) {
    world.wait("agents ready", Duration::from_secs(30), || hosts.iter().all(|i| world.ready(*i)));
}

/// Whoever can write the store must not get the instances' tokens: an `Endpoint` in the stored
/// network config (shared by every host) is ignored; only the agent's own `[cloud]` counts.
#[test]
fn an_endpoint_in_the_stored_config_is_never_called() {
    let mut world = World::new(PROJECT, &[("node-a", NETWORK)]);
    let service = world.cluster.topology.service();
    let decoy = Decoy::start_in(&Netns::open(&service.ns).expect("the service namespace"), service.addr);
    world.apply("");
    world.cluster.set_backend_key("Endpoint", &decoy.url);
    world.start_agent(1);
    let subnet = world.cluster.wait_subnet(1).subnet;
    wait_ready(&world, &[1]);
    let api = &world.api.api;
    let route = format!("weft-{}", subnet.to_string().replace(['.', '/'], "-"));
    assert_eq!(next_hop(api, &route), Some(world.instance_link(1)));
    assert!(!calls_on(api, "routes.insert", &route).is_empty(), "the route went to [cloud]'s API");
    assert_eq!(decoy.requests(), Vec::<String>::new(), "the stored Endpoint was called");
    let log = world.cluster.agent_log(1);
    assert!(log.contains("names a cloud endpoint") && log.contains("cloud.gce_endpoint"), "{log}");
}

#[test]
fn three_agents_route_their_subnets_and_one_removes_stale_routes() {
    let mut world = World::new(PROJECT, &[("node-a", NETWORK), ("node-b", NETWORK), ("node-c", NETWORK)]);
    let asked = ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"];
    let api = world.api.api.clone();
    let net = api.network_link(NETWORK);
    // A machine that is gone: its address answers nothing.
    api.add_instance(ZONE, "node-gone", NETWORK, "192.0.2.250");
    let gone = api.instance_link(ZONE, "node-gone");
    // flannel ran here before: node-a's route under flannel's name, to be adopted.
    api.put_route("flannel-10-244-1-0-24", "10.244.1.0/24", &net, Some(&world.instance_link(1)));
    // node-b's subnet routed through the machine that is gone: to be replaced.
    api.put_route("weft-10-244-2-0-24", "10.244.2.0/24", &net, Some(&gone));
    // A subnet nobody leases any more: stale.
    api.put_route("weft-10-244-200-0-24", "10.244.200.0/24", &net, Some(&gone));
    // Not ours: other prefixes, another cluster's range, another network, flannel's leftovers.
    let foreign = [
        ("default-route-0123456789abcdef", "0.0.0.0/0", net.clone(), None),
        ("app-10-50-0-0-16", "10.50.0.0/16", net.clone(), Some(gone.clone())),
        ("weft-10-99-0-0-24", "10.99.0.0/24", net.clone(), Some(gone.clone())),
        ("weft-10-244-201-0-24", "10.244.201.0/24", api.network_link(OTHER_NETWORK), Some(gone.clone())),
        ("flannel-10-244-9-0-24", "10.244.9.0/24", net.clone(), Some(gone.clone())),
    ];
    for (name, dest, network, hop) in &foreign {
        api.put_route(name, dest, network, hop.as_deref());
    }
    let foreign_before: BTreeMap<_, _> =
        api.routes().into_iter().filter(|(name, _)| foreign.iter().any(|f| f.0 == name)).collect();

    world.apply("");
    let started = Instant::now();
    for (i, subnet) in asked.iter().enumerate() {
        world.start_agent_asking(i + 1, subnet);
    }
    let (subnets, pods) = world.pods();
    assert_eq!(subnets.iter().map(ToString::to_string).collect::<Vec<_>>(), asked, "each got the subnet it asked for");
    wait_ready(&world, &[1, 2, 3]);
    let ready_after = started.elapsed();

    // Each subnet routed once, through its own instance.
    assert_eq!(next_hop(&api, "flannel-10-244-1-0-24"), Some(world.instance_link(1)));
    assert!(!api.routes().contains_key("weft-10-244-1-0-24"), "flannel's route was duplicated");
    assert_eq!(next_hop(&api, "weft-10-244-2-0-24"), Some(world.instance_link(2)));
    assert_eq!(next_hop(&api, "weft-10-244-3-0-24"), Some(world.instance_link(3)));
    assert_eq!(api.routes()["weft-10-244-3-0-24"]["destRange"], "10.244.3.0/24");
    assert_eq!(api.routes()["weft-10-244-3-0-24"]["network"], net.as_str());
    assert_eq!(api.routes()["weft-10-244-3-0-24"]["priority"], 1000);
    assert_eq!(calls_on(&api, "routes.insert", "weft-10-244-3-0-24"), ["node-c"]);
    assert_eq!(calls_on(&api, "routes.insert", "weft-10-244-2-0-24"), ["node-b"]);
    assert_eq!(calls_on(&api, "routes.delete", "weft-10-244-2-0-24"), ["node-b"], "the conflicting route is replaced");
    assert!(calls_on(&api, "routes.insert", "weft-10-244-1-0-24").is_empty());
    // The network's routes carry the packets: every pod reaches every other.
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "pods not reached through the network's routes: {failed:?}");

    // The stale route goes, removed by exactly one agent (two passes of the leader).
    world.wait("the stale route removed", Duration::from_secs(30), || {
        !api.routes().contains_key("weft-10-244-200-0-24")
    });
    let startup_calls = api.call_counts(0);
    let deleters = calls_on(&api, "routes.delete", "weft-10-244-200-0-24");
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
    // The leader lists the routes; the others decide from the listing it shares in etcd.
    assert!(!steady_calls.contains_key("routes.get"), "a follower read its route: {steady_calls:?}");
    let foreign_after: BTreeMap<_, _> =
        api.routes().into_iter().filter(|(name, _)| foreign.iter().any(|f| f.0 == name)).collect();
    assert_eq!(foreign_after, foreign_before, "foreign routes were touched");
    for (name, ..) in &foreign {
        assert!(calls_on(&api, "routes.delete", name).is_empty(), "{name} deleted");
    }
    for i in 1..=3 {
        assert!(world.ready(i), "h{i} not ready in steady state");
        assert_eq!(world.metric(i, "weft_cloud_routes_owned{provider=\"gce\",table=\"default\"}"), 1.0);
        assert_eq!(calls_metric(&world, i, "instances.get", "ok"), 1.0, "identity is looked up once");
    }
    println!("gce API calls, start-up of 3 agents until all ready ({ready_after:?}) and the stale route gone: {startup_calls:?}");
    println!("gce API calls, steady state, 3 agents, {steady:?} with recheck 2s: {steady_calls:?}");

    // A restart changes nothing, and the pods still reach each other.
    for i in 1..=3 {
        world.cluster.stop_agent(i);
    }
    let mark = api.calls().len();
    let routes_before = api.routes();
    for i in 1..=3 {
        world.start_agent(i);
    }
    wait_ready(&world, &[1, 2, 3]);
    std::thread::sleep(Duration::from_secs(5));
    let restart_calls = api.call_counts(mark);
    assert_eq!(api.routes(), routes_before, "a restart changed routes");
    for changing in ["routes.insert", "routes.delete"] {
        assert!(!restart_calls.contains_key(changing), "{changing} after restart: {restart_calls:?}");
    }
    println!("gce API calls, restart of 3 agents and 5 s: {restart_calls:?}");
    assert!(world.metadata.iter().all(|m| m.requests() > 0));
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "pods not reached after the restart: {failed:?}");
    // No agent logs any instance's access token.
    for metadata in &world.metadata {
        let logs = (1..=3).map(|h| (format!("h{h}'s log"), world.cluster.agent_log(h)));
        secrets::assert_absent_from(logs, &metadata.token);
    }
}

/// A route the API refuses (quota, a failed operation) shows in `/readyz` and the metrics, and
/// the host whose route is missing is really cut off until the retry succeeds.
#[test]
fn quota_and_operation_errors_show_in_readyz_and_metrics() {
    let mut world = World::new(PROJECT, &[("node-a", NETWORK), ("node-b", NETWORK)]);
    let api = world.api.api.clone();
    let limit = "weft_cloud_route_limit_reached{provider=\"gce\",table=\"default\"}";
    world.apply("");

    // No room for a route: the insert's operation ends in QUOTA_EXCEEDED.
    api.set_route_quota(Some(0));
    world.start_agent_asking(1, "10.244.1.0/24");
    world.wait("the quota error", Duration::from_secs(30), || {
        let (status, body) = world.readyz_body(1);
        status == 503 && body.contains("ROUTES-per-project")
    });
    let (_, body) = world.readyz_body(1);
    assert!(body.contains("quota"), "{body}");
    println!("/readyz while the route quota is full: {}", body.trim());
    assert_eq!(world.metric(1, limit), 1.0);
    assert!(calls_metric(&world, 1, "globalOperations.get", "quota_exceeded") >= 1.0);
    let log = world.cluster.agent_log(1);
    assert!(log.contains("ROUTES-per-project"), "{log}");
    // The same refused up front (HTTP 403, reason quotaExceeded).
    api.set_quota_http(true);
    world.wait("a 403 quota error", Duration::from_secs(30), || {
        calls_metric(&world, 1, "routes.insert", "quota_exceeded") >= 1.0
    });
    assert_eq!(world.readyz_body(1).0, 503);
    // Room again: the retry succeeds without a restart.
    api.set_route_quota(None);
    wait_ready(&world, &[1]);
    assert_eq!(world.metric(1, limit), 0.0);
    assert!(api.routes().contains_key("weft-10-244-1-0-24"));

    // An operation that ends in an error: node-b's subnet has no route, so neither host's pods
    // reach the other's (the replies to node-b have no way back either).
    api.fail_insert("weft-10-244-2-0-24", "RESOURCE_NOT_READY");
    world.start_agent_asking(2, "10.244.2.0/24");
    let (_, pods) = world.pods();
    world.wait("the operation error", Duration::from_secs(30), || {
        let (status, body) = world.readyz_body(2);
        status == 503 && body.contains("RESOURCE_NOT_READY")
    });
    assert!(calls_metric(&world, 2, "globalOperations.get", "operation_error") >= 1.0);
    println!("/readyz while the insert operation fails: {}", world.readyz_body(2).1.trim());
    assert!(world.cluster.agent_log(2).contains("RESOURCE_NOT_READY"));
    assert_eq!(unreachable_pairs(&world.cluster, &pods, Duration::from_secs(2)), vec![(1, 2), (2, 1)]);
    api.clear_failures();
    wait_ready(&world, &[2]);
    assert_eq!(next_hop(&api, "weft-10-244-2-0-24"), Some(world.instance_link(2)));
    assert!(world.ready(1), "node-a's route was never at stake");
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "pods not reached once the route was in: {failed:?}");
}
