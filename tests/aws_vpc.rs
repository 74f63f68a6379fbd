//! The aws-vpc backend end to end: `weft agent` processes in network namespaces, each an instance
//! of moto (a model of EC2) with its own IMDSv2 server, calling EC2 through a counting,
//! fault-injecting proxy, over a real etcd. Every test proves by packets what the tables say: the
//! hosts reach each other's pods only through the VPC router ([`common::vpc_router`]), which
//! forwards as the route tables do. Needs root and moto: fails, never skips, without them.

mod common;

use std::time::{Duration, Instant};

use common::aws_world::{AwsWorld as World, Placement, RECHECK};
use common::decoy::Decoy;
use common::imds::{self, Imds};
use common::moto::{self, Fault, Host};
use common::packets::{reaches, unreachable_pairs};
use common::secrets;

/// Routes inside the cluster network that no agent leases.
const STALE: &str = "10.244.200.0/24";
const BLACKHOLE: &str = "10.244.201.0/24";
/// Outside the cluster network: never weft's.
const OUTSIDE: &str = "192.168.50.0/24";

/// aws-vpc with `extra` keys and no table selection of the tests' own (flannel's default: the
/// table of the host's subnet, else the main table).
fn aws_vpc_plain(extra: &str) -> String {
    format!("type = \"aws-vpc\"\nrecheck = \"{}s\"\n{extra}", RECHECK.as_secs())
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
    let mut world = World::new(3);
    let proxy = world.with_proxy();
    let spare = world.vpc.spare_interface.clone();
    // Left behind by a departed node, a dead target, and someone else's route outside the network.
    for table in world.vpc.tagged.clone() {
        let (ec2, spare) = (world.ec2.clone(), spare.clone());
        world.call(async move {
            moto::create_route(&ec2, &table, STALE, &spare).await;
            moto::create_route(&ec2, &table, BLACKHOLE, &spare).await;
            moto::create_route(&ec2, &table, OUTSIDE, &spare).await;
        });
    }
    proxy.inject(Fault::Blackhole { cidr: BLACKHOLE.into() });
    let started = Instant::now();
    world.start_agents("");
    let (subnets, pods) = world.pods();

    // Every node's subnet → its interface, in every tagged table; nothing in the untagged one.
    world.wait("routes in every tagged table", Duration::from_secs(60), || {
        world.vpc.tagged.iter().all(|t| (1..=3).all(|i| world.routes_to(t, subnets[i - 1], i)))
    });
    world.wait("stale and blackhole routes removed", Duration::from_secs(30), || {
        world.vpc.tagged.iter().all(|t| {
            let routes = world.routes(t);
            !routes.contains_key(STALE) && !routes.contains_key(BLACKHOLE)
        })
    });
    world.wait("all agents ready", Duration::from_secs(30), || (1..=3).all(|i| world.ready(i)));
    let startup_time = started.elapsed();
    let startup = proxy.counts();
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "pods not reached through the tables: {failed:?}");
    let untagged = world.routes(&world.vpc.untagged);
    assert!(subnets.iter().all(|s| !untagged.contains_key(&s.to_string())), "untagged table written: {untagged:?}");
    for table in &world.vpc.tagged {
        assert_eq!(
            world.routes(table).get(OUTSIDE).map(|r| r.target.as_str()),
            Some(spare.as_str()),
            "outside route touched"
        );
    }
    // Source/dest check off on every node's interface.
    for (host, _) in &world.nodes {
        let (ec2, eni) = (world.ec2.clone(), host.interface_id.clone());
        assert_eq!(world.call(async move { moto::source_dest_check(&ec2, &eni).await }), Some(false));
    }
    // Exactly one agent cleaned up: 2 routes in each of 3 tables.
    let deletes: Vec<f64> = (1..=3).map(|i| world.ec2_calls(i, "DeleteRoute")).collect();
    assert_eq!(deletes.iter().sum::<f64>(), 6.0, "DeleteRoute per agent: {deletes:?}");
    assert_eq!(deletes.iter().filter(|d| **d > 0.0).count(), 1, "DeleteRoute per agent: {deletes:?}");
    for i in 1..=3 {
        let metrics = world.metrics(i);
        for table in &world.vpc.tagged {
            let owned = format!("weft_cloud_routes_owned{{provider=\"aws\",table=\"{table}\"}} 1");
            assert!(metrics.contains(&owned), "{owned} missing:\n{metrics}");
        }
    }

    // Steady state: no mutating call, at most one describe per table per recheck.
    proxy.reset_counts();
    let periods = 4;
    std::thread::sleep(RECHECK * periods);
    let steady = proxy.counts();
    assert_eq!(world.mutating_calls(), 0, "steady state changed something: {steady:?}");
    // The leader describes the tables; the others decide from the view it shares in etcd.
    let describes = steady.get("DescribeRouteTables").copied().unwrap_or(0);
    assert!(describes <= periods as usize + 1, "{describes} describes in {periods} rechecks: {steady:?}");
    println!("EC2 calls by 3 agents, start-up ({startup_time:.1?} to routes in place and clean-up done): {startup:?}");
    println!("EC2 calls by 3 agents, steady state over {periods} rechecks of {RECHECK:?}: {steady:?}");

    // A conflicting route (same CIDR, another target) is taken back; a removed one restored; the
    // pods behind them are reached again.
    let (b, c) = (world.vpc.tagged[1].clone(), world.vpc.tagged[2].clone());
    let (ec2, cidr1, cidr2) = (world.ec2.clone(), subnets[1].to_string(), subnets[2].to_string());
    world.call({
        let (ec2, b, c, spare) = (ec2.clone(), b.clone(), c.clone(), spare.clone());
        async move {
            moto::replace_route(&ec2, &b, &cidr1, &spare).await;
            moto::delete_route(&ec2, &c, &cidr2).await;
        }
    });
    world.wait("conflicting route replaced", Duration::from_secs(20), || world.routes_to(&b, subnets[1], 2));
    world.wait("removed route restored", Duration::from_secs(20), || world.routes_to(&c, subnets[2], 3));
    // Zone b's host reaches h2 through its own table again, zone c's host reaches h3.
    assert!(reaches(&world.cluster.pod_ns(2), pods[1].pod.addr(), Duration::from_secs(1)), "h2's own pod");
    assert!(reaches(&world.cluster.pod_ns(3), pods[1].pod.addr(), Duration::from_secs(5)), "h3 → h2");
    assert!(reaches(&world.cluster.pod_ns(1), pods[2].pod.addr(), Duration::from_secs(5)), "h1 → h3");
    assert!(reaches(&world.cluster.pod_ns(3), pods[0].pod.addr(), Duration::from_secs(5)), "h3 → h1");

    // A restarted agent finds everything in place: no mutating call at all.
    world.cluster.stop_agent(1);
    proxy.reset_counts();
    world.start_agent(1);
    // Two passes: from EC2, or from the leader's view once it shows everything in place.
    world.wait("restarted agent ready", Duration::from_secs(30), || world.ready(1) && world.cloud_passes(1) >= 2.0);
    assert_eq!(world.mutating_calls(), 0, "restart changed something: {:?}", proxy.counts());
    println!("EC2 calls while one agent restarted: {:?}", proxy.counts());
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(5));
    assert!(failed.is_empty(), "pods not reached after the restart: {failed:?}");
    let logs = (1..=3).map(|i| (format!("h{i}'s log"), world.cluster.agent_log(i)));
    secrets::assert_absent_from(logs, imds::SECRET_ACCESS_KEY);
}

/// `route_table_ids`: exactly the listed tables, tagged or not. A host whose own subnet's table
/// is not listed has no route to anyone: its pods are cut off, as the VPC says.
#[test]
fn explicit_tables_only() {
    let mut world = World::new(3);
    let chosen = [world.vpc.tagged[0].clone(), world.vpc.tagged[1].clone(), world.vpc.untagged.clone()];
    world.start_agents_with(&aws_vpc_plain(&format!(
        "route_table_ids = [\"{}\", \"{}\", \"{}\"]",
        chosen[0], chosen[1], chosen[2]
    )));
    let (subnets, pods) = world.pods();
    world.wait("routes in the listed tables", Duration::from_secs(60), || {
        chosen.iter().all(|t| (1..=3).all(|i| world.routes_to(t, subnets[i - 1], i)))
    });
    let unlisted = world.routes(&world.vpc.tagged[2]);
    assert!(subnets.iter().all(|s| !unlisted.contains_key(&s.to_string())), "unlisted table written: {unlisted:?}");
    world.wait("agents ready", Duration::from_secs(20), || (1..=3).all(|i| world.ready(i)));
    // Zones a and b reach each other by their (listed) tables; zone c's host, whose table is not
    // listed, answers nobody.
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(3));
    let cut: Vec<(usize, usize)> = vec![(1, 3), (2, 3), (3, 1), (3, 2)];
    assert_eq!(failed, cut, "only zone c's host is cut off");
}

/// No table selection: each node's route goes into its own subnet's table, else the main table;
/// hosts of one subnet reach each other, a host of another table does not.
#[test]
fn association_then_main_table() {
    // Hosts 1 and 2 in a subnet with its own table; host 3 in a subnet that uses the main table.
    let mut world = World::placed(&[Placement::Zone(1), Placement::Zone(1), Placement::Loose]);
    world.apply(&aws_vpc_plain(""));
    // An EC2 endpoint in the store (shared by every host) is ignored: only [cloud]'s is called.
    let service = world.cluster.topology.service();
    let decoy = Decoy::start_in(&weft::netns::Netns::open(&service.ns).expect("the service namespace"), service.addr);
    world.cluster.set_backend_key("EndpointURL", &decoy.url);
    for i in 1..=3 {
        world.start_agent(i);
    }
    let (subnets, pods) = world.pods();
    let (associated, main) = (world.vpc.tagged[1].clone(), world.vpc.main.clone());
    world.wait("routes in the associated table", Duration::from_secs(60), || {
        world.routes_to(&associated, subnets[0], 1) && world.routes_to(&associated, subnets[1], 2)
    });
    world.wait("route in the main table", Duration::from_secs(60), || world.routes_to(&main, subnets[2], 3));
    let (in_main, in_associated) = (world.routes(&main), world.routes(&associated));
    assert!(subnets[..2].iter().all(|s| !in_main.contains_key(&s.to_string())), "main table: {in_main:?}");
    assert!(!in_associated.contains_key(&subnets[2].to_string()), "associated table: {in_associated:?}");
    world.wait("agents ready", Duration::from_secs(20), || (1..=3).all(|i| world.ready(i)));
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(3));
    assert_eq!(failed, vec![(1, 3), (2, 3), (3, 1), (3, 2)], "only the two hosts of one table reach each other");
    assert_eq!(decoy.requests(), Vec::<String>::new(), "the stored EndpointURL was called");
}

/// A table that refuses the route (RouteLimitExceeded) and throttled calls: the route lands where
/// there is room, `/readyz` names the full table, and the host behind the full table is really
/// cut off until there is room again.
#[test]
fn full_table_and_throttling() {
    let mut world = World::new(2);
    let proxy = world.with_proxy();
    let (a, b) = (world.vpc.tagged[0].clone(), world.vpc.tagged[1].clone());
    proxy.inject(Fault::RouteLimit { table: b.clone() });
    proxy.inject(Fault::Throttle { action: "CreateRoute".into(), times: 2 });
    world.start_agents("");
    let (subnets, pods) = world.pods();
    let c = world.vpc.tagged[2].clone();
    // Throttled twice, retried by the SDK with backoff: the routes still land.
    world.wait("routes in the tables with room", Duration::from_secs(60), || {
        (1..=2).all(|i| world.routes_to(&a, subnets[i - 1], i) && world.routes_to(&c, subnets[i - 1], i))
    });
    assert!(world.cluster_routes(&b).is_empty(), "the full table took a route");
    world.wait("/readyz naming the full table", Duration::from_secs(30), || {
        let (status, body) = world.readyz_body(1);
        status == 503
            && body.contains(&format!("route table {b} is full"))
            && body.contains("50")
            && body.contains("1000")
    });
    let limit = format!("weft_cloud_route_limit_reached{{provider=\"aws\",table=\"{b}\"}} 1");
    assert!(world.metrics(1).contains(&limit), "{limit} missing");
    assert!(world.ec2_calls(1, "CreateRoute") >= 3.0);
    let throttled_then_ok = proxy.counts().get("CreateRoute").copied().unwrap_or(0);
    assert!(throttled_then_ok >= 8, "2 throttled + 2 hosts × tables a, c and b refused: {:?}", proxy.counts());
    // h2's subnet uses table b: its replies have no way back, so neither reaches the other.
    assert_eq!(unreachable_pairs(&world.cluster, &pods, Duration::from_secs(2)), vec![(1, 2), (2, 1)]);

    // Room again (the quota raised): the next recheck puts the routes in, /readyz recovers and
    // the pods reach each other.
    proxy.clear_faults();
    world.wait("routes in the formerly full table", Duration::from_secs(30), || {
        (1..=2).all(|i| world.routes_to(&b, subnets[i - 1], i))
    });
    world.wait("ready again", Duration::from_secs(30), || (1..=2).all(|i| world.ready(i)));
    let cleared = format!("weft_cloud_route_limit_reached{{provider=\"aws\",table=\"{b}\"}} 0");
    assert!(world.metrics(1).contains(&cleared), "{cleared} missing");
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "pods not reached once the table had room: {failed:?}");
}
