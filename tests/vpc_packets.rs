//! aws-vpc proven by packets: hosts in network namespaces in three availability-zone subnets of a
//! moto VPC, reaching each other's pods only through a router that forwards what the route
//! tables say ([`common::vpc_router`]), as a real VPC would. Then past the tables' size:
//! `overflow = "vxlan"` with `route_limit`, every pod reaching every other, by the cloud where a
//! route fits and over vxlan for the rest. Needs root and moto: fails, never skips, without them.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::aws_world::{AwsWorld as World, Placement, RECHECK};
use common::moto;
use common::packets::{self, ping_once, reaches, unreachable_pairs};
use common::vpc_router::Hop;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The peer subnets host i's own table (its zone's) routes to a host.
fn carried_for(world: &World, subnets: &[Ipv4Net], i: usize) -> BTreeSet<Ipv4Net> {
    let own_table = &world.vpc.tagged[(i - 1) % 3];
    world.cluster_routes(own_table).into_iter().map(|(d, _)| d).filter(|d| *d != subnets[i - 1]).collect()
}

#[test]
fn pods_reach_each_other_only_through_the_route_tables() {
    let mut world = World::new(3);
    world.start_agents("");
    let (subnets, pods) = world.pods();
    world.wait("each node's route in every tagged table", Duration::from_secs(30), || {
        world.vpc.tagged.iter().all(|t| world.cluster_routes(t).len() == 3)
    });
    world.wait("the router follows the tables", Duration::from_secs(5), || {
        (0..3).all(|i| {
            (0..3).filter(|j| *j != i).all(|j| world.router().forwarding().hop(i, subnets[j]) == Some(Hop::Host(j)))
        })
    });
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "pods not reached through the VPC: {failed:?}");
    // aws-vpc installs no kernel route: the packets went through the router.
    for i in 1..=3 {
        let routes = world.cluster.ip_json(&world.cluster.host(i).ns, &["-4", "route", "show", "proto", "87"]);
        assert_eq!(routes, serde_json::json!([]), "h{i} has kernel routes on aws-vpc");
    }

    // h2's route gone from h1's table (zone a): h1 → h2 stops within a second, h3 → h2 does not.
    // h2's agent is stopped first (killed: its lease and routes stay), or it would put the route
    // back at its next recheck, perhaps before the router looked.
    world.cluster.kill_agent(2);
    let (h2_subnet, h2_pod) = (subnets[1].to_string(), pods[1].pod.addr());
    let (ec2, table) = (world.ec2.clone(), world.vpc.tagged[0].clone());
    world.call({
        let (ec2, table, cidr) = (ec2.clone(), table.clone(), h2_subnet.clone());
        async move { moto::delete_route(&ec2, &table, &cidr).await }
    });
    // Within 200 ms (moto is read every 100 ms), with room for a loaded CI machine.
    let followed = world.wait("the router drops h2's route for h1", Duration::from_millis(500), || {
        world.router().forwarding().hop(0, subnets[1]).is_none()
    });
    assert!(!ping_once(&world.cluster.pod_ns(1), h2_pod), "h1 reached h2 without a route in its table");
    assert!(ping_once(&world.cluster.pod_ns(3), h2_pod), "h3's table still routes h2");
    // h2's agent back: it puts its route back, and the packets follow.
    world.start_agent(2);
    assert!(reaches(&world.cluster.pod_ns(1), h2_pod, Duration::from_secs(15)), "h2's route not restored");

    // The source/dest check on again for h3's interface: nothing for its pods is delivered.
    let eni = world.nodes[2].0.interface_id.clone();
    world.call({
        let (ec2, eni) = (ec2.clone(), eni.clone());
        async move { moto::set_source_dest_check(&ec2, &eni, true).await }
    });
    world.wait("the router honours h3's source/dest check", Duration::from_secs(1), || {
        world.router().forwarding().checked.contains(&2)
    });
    assert!(!ping_once(&world.cluster.pod_ns(1), pods[2].pod.addr()), "delivered to h3 with its check on");
    world.call(async move { moto::set_source_dest_check(&ec2, &eni, false).await });
    assert!(reaches(&world.cluster.pod_ns(1), pods[2].pod.addr(), Duration::from_secs(5)));
    eprintln!("router followed a deleted route in {followed:?}");
}

/// Dual-stack (issue 14): each host's IPv6 subnet is routed to its interface in every tagged
/// table (`DestinationIpv6CidrBlock`) beside its IPv4 one, and pods reach each other over both
/// families only through the tables: a deleted IPv6 route stops that family alone.
#[test]
fn dual_stack_pods_reach_each_other_over_both_families_through_the_route_tables() {
    let mut world = World::dual_stack(3);
    world.start_agents("");
    let (subnets, pods) = world.pods();
    let (subnets_v6, pods_v6) = world.pods_v6();
    let took =
        world.wait("both subnets of each node in every tagged table", Duration::from_secs(30), || {
            world.vpc.tagged.iter().all(|t| {
                (1..=3).all(|i| world.routes_to(t, subnets[i - 1], i) && world.routes_to(t, subnets_v6[i - 1], i))
            })
        });
    world.wait("the router follows the IPv6 routes", Duration::from_secs(5), || {
        (0..3).all(|i| {
            (0..3).filter(|j| *j != i).all(|j| world.router().forwarding().hop(i, subnets_v6[j]) == Some(Hop::Host(j)))
        })
    });
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "IPv4: pods not reached through the VPC: {failed:?}");
    let failed = packets::unreachable_addrs(&world.cluster, &pods_v6, Duration::from_secs(10));
    assert!(failed.is_empty(), "IPv6: pods not reached through the VPC: {failed:?}");
    for i in 1..=3 {
        let routes = world.cluster.ip_json(&world.cluster.host(i).ns, &["-6", "route", "show", "proto", "87"]);
        assert_eq!(routes, serde_json::json!([]), "h{i} has IPv6 kernel routes on aws-vpc");
        assert!(world.ready(i), "h{i} not ready:\n{}", world.cluster.agent_log(i));
    }

    // h2's IPv6 route gone from h1's table: h1 → h2 stops for IPv6 only (h2's agent stopped
    // first, or it would put the route back).
    world.cluster.kill_agent(2);
    let (ec2, table, cidr) = (world.ec2.clone(), world.vpc.tagged[0].clone(), subnets_v6[1].to_string());
    world.call(async move { moto::delete_route(&ec2, &table, &cidr).await });
    world.wait("the router drops h2's IPv6 route for h1", Duration::from_millis(500), || {
        world.router().forwarding().hop(0, subnets_v6[1]).is_none()
    });
    assert!(!ping_once(&world.cluster.pod_ns(1), pods_v6[1]), "h1 reached h2 over IPv6 without a route");
    assert!(ping_once(&world.cluster.pod_ns(1), pods[1].pod.addr()), "h1 lost h2 over IPv4 too");
    assert!(ping_once(&world.cluster.pod_ns(3), pods_v6[1]), "h3's table still routes h2's IPv6 subnet");
    world.start_agent(2);
    assert!(reaches(&world.cluster.pod_ns(1), pods_v6[1], Duration::from_secs(15)), "h2's IPv6 route not restored");
    eprintln!("dual-stack aws-vpc: both families routed in every table in {took:?}");
}

/// IPv6-only (`enable_ipv4 = false`): every tagged table routes each node's IPv6 subnet, one
/// route per node, to its interface (`DestinationIpv6CidrBlock`) and holds no IPv4 route of the
/// cluster (the leases' `0.0.0.0-0` half is no subnet); pods with no IPv4 address reach each other
/// through the tables, and a deleted IPv6 route is put back by its node's agent.
#[test]
fn ipv6_only_pods_reach_each_other_through_the_route_tables() {
    const HOSTS: usize = 3;
    let mut world = World::ipv6_only(HOSTS);
    world.start_agents("");
    let (subnets_v6, pods_v6) = world.ipv6_only_pods();
    let pod_network: IpNet = common::cluster::POD_NETWORK_V6.parse().unwrap();
    let want: BTreeSet<(IpNet, String)> =
        (1..=HOSTS).map(|i| (IpNet::V6(subnets_v6[i - 1]), world.nodes[i - 1].0.interface_id.clone())).collect();
    let took =
        world.wait("each node's IPv6 route, and only it, in every tagged table", Duration::from_secs(30), || {
            world
                .vpc
                .tagged
                .iter()
                .all(|t| world.routes_within(t, pod_network).into_iter().collect::<BTreeSet<_>>() == want)
        });
    for table in &world.vpc.tagged {
        let routes = world.routes(table);
        let v6: Vec<&String> = routes.keys().filter(|d| d.parse::<ipnet::Ipv6Net>().is_ok()).collect();
        // The VPC's own IPv6 block (its local route) and one route per node: nothing else.
        assert_eq!(v6.len(), 1 + HOSTS, "{table}: {routes:?}");
        // The only IPv4 route is the VPC's local one: nothing of 10.244.0.0/16, nor 0.0.0.0/0.
        let v4: Vec<&String> = routes.keys().filter(|d| d.parse::<Ipv4Net>().is_ok()).collect();
        assert_eq!(v4, ["10.0.0.0/16"], "{table}: IPv4 routes in an IPv6-only network: {routes:?}");
        assert_eq!(routes["10.0.0.0/16"].target, "local", "{table}: {routes:?}");
    }
    world.wait("the router follows the IPv6 routes", Duration::from_secs(5), || {
        (0..HOSTS).all(|i| {
            (0..HOSTS)
                .filter(|j| *j != i)
                .all(|j| world.router().forwarding().hop(i, subnets_v6[j]) == Some(Hop::Host(j)))
        })
    });
    let failed = packets::unreachable_addrs(&world.cluster, &pods_v6, Duration::from_secs(10));
    assert!(failed.is_empty(), "IPv6: pods not reached through the VPC: {failed:?}");
    for i in 1..=HOSTS {
        // aws-vpc installs no kernel route of either family, and no vxlan device.
        for family in ["-4", "-6"] {
            let routes = world
                .cluster
                .ip_json(&world.cluster.host(i).ns, &[family, "route", "show", "table", "all", "proto", "87"]);
            assert_eq!(routes, serde_json::json!([]), "h{i} has {family} kernel routes on aws-vpc");
        }
        assert!(world.ready(i), "h{i} not ready:\n{}", world.cluster.agent_log(i));
    }
    // Each host counts both peers as carried by the cloud (at its next pass, within a recheck),
    // not as itself for sharing its absent IPv4 half.
    world.wait("every host counts 2 peers by the cloud", RECHECK * 3, || {
        (1..=HOSTS).all(|i| world.metrics(i).contains(r#"weft_peers{path="cloud"} 2"#))
    });

    // h2's IPv6 route gone from h1's table: h1 → h2 stops, h3 → h2 does not (h2's agent stopped
    // first, or it would put the route back before the router looked); h2's agent back puts it
    // back, and the packets follow.
    world.cluster.kill_agent(2);
    let (ec2, table, cidr) = (world.ec2.clone(), world.vpc.tagged[0].clone(), subnets_v6[1].to_string());
    world.call(async move { moto::delete_route(&ec2, &table, &cidr).await });
    world.wait("the router drops h2's IPv6 route for h1", Duration::from_millis(500), || {
        world.router().forwarding().hop(0, subnets_v6[1]).is_none()
    });
    assert!(!ping_once(&world.cluster.pod_ns(1), pods_v6[1]), "h1 reached h2 without a route in its table");
    assert!(ping_once(&world.cluster.pod_ns(3), pods_v6[1]), "h3's table still routes h2's IPv6 subnet");
    world.start_agent(2);
    let restored = Instant::now();
    assert!(reaches(&world.cluster.pod_ns(1), pods_v6[1], Duration::from_secs(15)), "h2's IPv6 route not restored");
    let restored = restored.elapsed();
    assert!(world.routes_to(&world.vpc.tagged[0], subnets_v6[1], 2), "h2's route restored to another target");
    assert!(world.cluster_routes(&world.vpc.tagged[0]).is_empty(), "an IPv4 route came with the restart");
    eprintln!(
        "IPv6-only aws-vpc: one IPv6 route per node in every table in {took:?}; a deleted one restored in {restored:?}"
    );
}

/// Dual-stack with overflow: 6 hosts, `route_limit = 3` routes per family and table. A peer rides
/// the cloud only when our table carries both of its subnets; every other peer is reached over
/// vxlan for both families (`flannel.1`, `flannel-v6.1`). Every pod reaches every other over both.
#[test]
fn dual_stack_overflow_takes_a_peer_to_vxlan_for_both_families_unless_the_cloud_carries_both() {
    const HOSTS: usize = 6;
    const LIMIT: usize = 3;
    let mut world = World::dual_stack(HOSTS);
    world.start_agents(&format!("overflow = \"vxlan\"\nroute_limit = {LIMIT}"));
    let (subnets, pods) = world.pods();
    let (subnets_v6, pods_v6) = world.pods_v6();
    // Peer j of host i rides the cloud when i's own table (its zone's) routes both of j's subnets.
    let by_cloud = |world: &World, i: usize| -> BTreeSet<usize> {
        let table = &world.vpc.tagged[(i - 1) % 3];
        (1..=HOSTS)
            .filter(|j| *j != i)
            .filter(|j| world.routes_to(table, subnets[j - 1], *j) && world.routes_to(table, subnets_v6[j - 1], *j))
            .collect()
    };
    let split_right = |world: &World, i: usize| {
        let cloud = by_cloud(world, i);
        let over: BTreeSet<usize> = (1..=HOSTS).filter(|j| *j != i && !cloud.contains(j)).collect();
        let v4: BTreeSet<Ipv4Net> = over.iter().map(|j| subnets[j - 1]).collect();
        let v6: BTreeSet<ipnet::Ipv6Net> = over.iter().map(|j| subnets_v6[j - 1]).collect();
        world.overlay_routes(i) == v4 && packets::overlay_routes_v6(&world.cluster, i) == v6
    };
    let within_limit = |world: &World| {
        world.vpc.tagged.iter().all(|t| {
            let network = |cidr: &str| cidr.parse::<ipnet::IpNet>().unwrap();
            world.routes_within(t, network(common::aws_world::CIDR)).len() == LIMIT
                && world.routes_within(t, network(common::cluster::POD_NETWORK_V6)).len() == LIMIT
        })
    };
    let took = world.wait("tables full in both families, the rest over vxlan", Duration::from_secs(40), || {
        within_limit(&world) && (1..=HOSTS).all(|i| split_right(&world, i))
    });
    for i in 1..=HOSTS {
        assert!(world.ready(i), "h{i} not ready with full tables:\n{}", world.cluster.agent_log(i));
    }
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "IPv4: pods not reached: {failed:?}");
    let failed = packets::unreachable_addrs(&world.cluster, &pods_v6, Duration::from_secs(10));
    assert!(failed.is_empty(), "IPv6: pods not reached: {failed:?}");
    let split: Vec<(usize, usize)> =
        (1..=HOSTS).map(|i| (by_cloud(&world, i).len(), world.overlay_routes(i).len())).collect();
    eprintln!("dual-stack overflow: converged in {took:?}; (cloud, overlay) peers per host {split:?}");
}

/// IPv6-only with overflow: 6 hosts, `route_limit = 3`. Every tagged table holds exactly 3 IPv6
/// routes of the cluster and no IPv4 one; each host reaches over vxlan (`flannel-v6.1`, with no
/// `flannel.1` anywhere) exactly the peers its own table does not route, and every pod reaches
/// every other over IPv6.
#[test]
fn ipv6_only_overflow_takes_the_peers_the_tables_cannot_hold_to_vxlan_over_ipv6() {
    const HOSTS: usize = 6;
    const LIMIT: usize = 3;
    let mut world = World::ipv6_only(HOSTS);
    world.start_agents(&format!("overflow = \"vxlan\"\nroute_limit = {LIMIT}"));
    let (subnets_v6, pods_v6) = world.ipv6_only_pods();
    let pod_network: IpNet = common::cluster::POD_NETWORK_V6.parse().unwrap();
    // Peer j of host i rides the cloud when i's own table (its zone's) routes j's subnet to j.
    let by_cloud = |world: &World, i: usize| -> BTreeSet<usize> {
        let table = &world.vpc.tagged[(i - 1) % 3];
        (1..=HOSTS).filter(|j| *j != i && world.routes_to(table, subnets_v6[j - 1], *j)).collect()
    };
    let split_right = |world: &World, i: usize| {
        let cloud = by_cloud(world, i);
        let over: BTreeSet<Ipv6Net> =
            (1..=HOSTS).filter(|j| *j != i && !cloud.contains(j)).map(|j| subnets_v6[j - 1]).collect();
        packets::overlay_routes_v6(&world.cluster, i) == over
    };
    let full = |world: &World| world.vpc.tagged.iter().all(|t| world.routes_within(t, pod_network).len() == LIMIT);
    let took = world.wait("tables full of IPv6 routes, the rest over vxlan", Duration::from_secs(40), || {
        full(&world) && (1..=HOSTS).all(|i| split_right(&world, i))
    });
    for table in &world.vpc.tagged {
        let routes = world.routes(table);
        assert_eq!(world.routes_within(table, pod_network).len(), LIMIT, "{table}: {routes:?}");
        // The only IPv4 route is the VPC's local one: nothing of 10.244.0.0/16, nor 0.0.0.0/0.
        let v4: Vec<&String> = routes.keys().filter(|d| d.parse::<Ipv4Net>().is_ok()).collect();
        assert_eq!(v4, ["10.0.0.0/16"], "{table}: IPv4 routes in an IPv6-only network: {routes:?}");
    }
    for i in 1..=HOSTS {
        let links = world.cluster.ip_json(&world.cluster.host(i).ns, &["link", "show"]);
        let names: Vec<&str> = links.as_array().expect("a list").iter().filter_map(|l| l["ifname"].as_str()).collect();
        assert!(!names.contains(&"flannel.1"), "h{i} has flannel.1 in an IPv6-only network: {names:?}");
        assert!(names.contains(&"flannel-v6.1"), "h{i} has no flannel-v6.1: {names:?}");
        assert!(world.ready(i), "h{i} not ready with full tables:\n{}", world.cluster.agent_log(i));
    }
    let started = Instant::now();
    let failed = packets::unreachable_addrs(&world.cluster, &pods_v6, Duration::from_secs(10));
    assert!(failed.is_empty(), "IPv6: pods not reached: {failed:?}");
    let all_pairs = started.elapsed();
    let split: Vec<(usize, usize)> =
        (1..=HOSTS).map(|i| (by_cloud(&world, i).len(), packets::overlay_routes_v6(&world.cluster, i).len())).collect();
    eprintln!(
        "IPv6-only overflow: converged in {took:?}; {} pairs pinged in {all_pairs:?}; (cloud, overlay) peers per host {split:?}",
        HOSTS * (HOSTS - 1)
    );
}

/// A host in another VPC, overflow on: no table of the cluster's VPC routes to it and none of
/// its own VPC's tables routes to the others, so it and they reach each other over vxlan, while
/// the hosts of one VPC keep the cloud among themselves.
#[test]
fn a_host_in_another_vpc_is_reached_over_vxlan() {
    let placements = [Placement::Zone(0), Placement::Zone(1), Placement::Zone(2), Placement::OtherVpc(0)];
    let mut world = World::placed(&placements);
    world.apply(&World::aws_vpc("overflow = \"vxlan\""));
    // The other VPC's host last: the cleanup leader is one of the cluster VPC's hosts.
    for i in 1..=3 {
        world.start_agent(i);
        world.cluster.wait_subnet(i);
    }
    world.start_agent(4);
    let (subnets, pods) = world.pods();
    let other = world.other_vpc.clone().expect("the other VPC");
    let peers = |i: usize| -> BTreeSet<Ipv4Net> { subnets.iter().copied().filter(|s| *s != subnets[i - 1]).collect() };
    let took = world.wait("one VPC by the cloud, the other host over vxlan", Duration::from_secs(40), || {
        let ours: BTreeSet<Ipv4Net> = subnets[..3].iter().copied().collect();
        world
            .vpc
            .tagged
            .iter()
            .all(|t| world.cluster_routes(t).into_iter().map(|(d, _)| d).collect::<BTreeSet<_>>() == ours)
            && other.tagged.iter().all(|t| world.routes_to(t, subnets[3], 4))
            && (1..=3).all(|i| world.overlay_routes(i) == BTreeSet::from([subnets[3]]))
            && world.overlay_routes(4) == peers(4)
    });
    for i in 1..=4 {
        assert!(world.ready(i), "h{i} not ready:\n{}", world.cluster.agent_log(i));
    }
    // The VPC itself carries nothing between the two VPCs: the router has no hop for them.
    let forwarding = world.router().forwarding();
    for i in 0..3 {
        assert_eq!(forwarding.hop(i, subnets[3]), None, "h{} routes h4 through the VPC", i + 1);
        assert_eq!(forwarding.hop(3, subnets[i]), None, "h4 routes h{} through its VPC", i + 1);
    }
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "pods not reached: {failed:?}");
    // Between the VPC's own hosts, the packets still went by the cloud: no kernel route for them.
    for i in 1..=3 {
        assert_eq!(world.kernel_routes(i), 1, "h{i}: only the other VPC's host over vxlan");
    }
    eprintln!("host in another VPC: converged in {took:?}");
}

/// How the tables' room runs out in the overflow tests.
#[derive(Debug, Clone, Copy)]
enum Room {
    /// weft's own cap, `route_limit`.
    RouteLimit,
    /// EC2's: `RouteLimitExceeded` from the tables themselves (the fault proxy), learned.
    TableQuota,
}

/// 6 hosts, 2 per zone, at most 3 routes of the cluster network per table (weft's `route_limit`),
/// overflow on: every pod reaches every other; each host reaches by vxlan exactly the peers its
/// own table has no route for; a host that leaves frees its slots for overflowed hosts, and the
/// peers' vxlan routes to the host that took them go.
#[test]
fn overflow_reaches_every_peer_by_the_cloud_where_it_fits_and_by_vxlan_for_the_rest() {
    overflow_with(Room::RouteLimit);
}

/// The same, the room being EC2's: tables that answer `RouteLimitExceeded` past 3 cluster routes,
/// no `route_limit` (the capacity is learned from the refusal).
#[test]
fn overflow_learns_the_tables_capacity_from_route_limit_exceeded() {
    overflow_with(Room::TableQuota);
}

fn overflow_with(room: Room) {
    const HOSTS: usize = 6;
    const LIMIT: usize = 3;
    let mut world = World::new(HOSTS);
    match room {
        Room::RouteLimit => world.start_agents(&format!("overflow = \"vxlan\"\nroute_limit = {LIMIT}")),
        Room::TableQuota => {
            world.with_table_capacity(LIMIT);
            world.start_agents("overflow = \"vxlan\"");
        }
    }
    let (subnets, pods) = world.pods();
    let carried = |world: &World, i: usize| carried_for(world, &subnets, i);
    let peers = |i: usize| -> BTreeSet<Ipv4Net> { subnets.iter().copied().filter(|s| *s != subnets[i - 1]).collect() };
    let converged = || {
        world.vpc.tagged.iter().all(|t| world.cluster_routes(t).len() == LIMIT)
            && (1..=HOSTS).all(|i| {
                let overlay = world.overlay_routes(i);
                let cloud = carried(&world, i);
                overlay.is_disjoint(&cloud) && overlay.union(&cloud).copied().collect::<BTreeSet<_>>() == peers(i)
            })
    };
    let took = world.wait("tables full, the rest over vxlan", Duration::from_secs(40), converged);
    for table in &world.vpc.tagged {
        assert!(world.cluster_routes(table).len() <= LIMIT, "{table} over route_limit");
    }
    for i in 1..=HOSTS {
        assert_eq!(
            world.cluster.readyz(i),
            Some(200),
            "h{i} not ready with a full table:\n{}",
            world.cluster.agent_log(i)
        );
    }
    if let Room::TableQuota = room {
        // A host whose route some table refused learned that table's capacity.
        let learned = (1..=HOSTS).any(|i| {
            let (_, metrics) = world.cluster.agent_get(i, "/metrics").expect("metrics");
            metrics.lines().any(|l| l.starts_with("weft_cloud_route_capacity{") && l.ends_with(&format!(" {LIMIT}")))
        });
        assert!(learned, "no agent learned a capacity of {LIMIT} from RouteLimitExceeded");
    }
    let started = Instant::now();
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "pods not reached: {failed:?}");
    let all_pairs = started.elapsed();
    let split: Vec<(usize, usize)> =
        (1..=HOSTS).map(|i| (carried(&world, i).len(), world.overlay_routes(i).len())).collect();

    // A host with a cloud route leaves (its agent killed, its lease deleted): the leader removes
    // its routes, an overflowed host takes the slot, and every host in that table's zone drops
    // its vxlan route to the new holder.
    let table = world.vpc.tagged[0].clone();
    let routed: Vec<Ipv4Net> = world.cluster_routes(&table).into_iter().map(|(d, _)| d).collect();
    // Not the cleanup leader: its turn would have to run out first (a slower test, not another one).
    let leads = |i: usize| world.cluster.agent_log(i).contains("leading the removal of stale cloud routes");
    let leaver = (1..=HOSTS)
        .find(|i| routed.contains(&subnets[i - 1]) && !leads(*i))
        .expect("a host routed in zone a's table that does not lead");
    world.cluster.kill_agent(leaver);
    let key = format!("/coreos.com/network/subnets/{}", subnets[leaver - 1].to_string().replace('/', "-"));
    world.cluster.etcdctl(&["del", &key]);
    let left_at = Instant::now();
    world.wait("the slot taken by an overflowed host", RECHECK * 8, || {
        let now: BTreeSet<Ipv4Net> = world.cluster_routes(&table).into_iter().map(|(d, _)| d).collect();
        now.len() == LIMIT && !now.contains(&subnets[leaver - 1])
    });
    let taken = left_at.elapsed();
    let zone_a: Vec<usize> = (1..=HOSTS).filter(|i| (i - 1) % 3 == 0 && *i != leaver).collect();
    world.wait("zone a's hosts reach the new holder by the cloud", Duration::from_secs(10), || {
        zone_a.iter().all(|i| world.overlay_routes(*i).is_disjoint(&carried(&world, *i)))
    });
    for i in (1..=HOSTS).filter(|i| *i != leaver) {
        for j in (1..=HOSTS).filter(|j| *j != i && *j != leaver) {
            assert!(reaches(&world.cluster.pod_ns(i), pods[j - 1].pod.addr(), Duration::from_secs(5)), "h{i} → h{j}");
        }
    }
    eprintln!(
        "overflow ({room:?}): converged in {took:?}; {} pairs pinged in {all_pairs:?}; (cloud, overlay) peers per host {split:?}; \
         a freed slot taken in {taken:?}",
        HOSTS * (HOSTS - 1)
    );
}

/// A live switch with pings every 10 ms through it: vxlan → aws-vpc (overflow on) → host-gw →
/// aws-vpc. Packets lost while each switch settles are counted and printed; once settled, none.
#[test]
fn live_switch_through_cloud_routes_keeps_pods_talking() {
    const HOSTS: usize = 3;
    const PAIRS: [(usize, usize); 3] = [(1, 2), (2, 3), (3, 1)];
    let mut world = World::new(HOSTS);
    world.apply("type = \"vxlan\"");
    for i in 1..=HOSTS {
        world.start_agent(i);
    }
    let (subnets, pods) = world.pods();
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "pods not reached on vxlan: {failed:?}");
    let all_routed = |world: &World| world.vpc.tagged.iter().all(|t| world.cluster_routes(t).len() == HOSTS);
    let no_cloud_routes = |world: &World| world.vpc.tagged.iter().all(|t| world.cluster_routes(t).is_empty());
    let steps = [
        ("aws-vpc, overflow on", World::aws_vpc("overflow = \"vxlan\""), "aws-vpc"),
        ("host-gw", "type = \"host-gw\"".to_string(), "host-gw"),
        ("aws-vpc", World::aws_vpc(""), "aws-vpc"),
    ];
    let flows = |count| -> Vec<packets::Flow> {
        PAIRS.iter().map(|(f, t)| packets::Flow::start(&world.cluster, *f, pods[t - 1].pod.addr(), count)).collect()
    };
    let mut report = Vec::new();
    for (name, backend, kind) in &steps {
        // 10 s of pings: the switch and its settling (3 s at most here) fall inside.
        let during = flows(1000);
        std::thread::sleep(Duration::from_millis(300));
        world.apply(backend);
        let moved = world.wait(&format!("leases on {name}"), Duration::from_secs(30), || {
            world.lease_types().iter().all(|t| t == kind)
        });
        let settled = world.wait(&format!("{name} settled"), Duration::from_secs(30), || match *kind {
            // Every peer by the cloud (3 hosts fit): no kernel route left on any host.
            "aws-vpc" => all_routed(&world) && (1..=HOSTS).all(|i| world.kernel_routes(i) == 0),
            _ => no_cloud_routes(&world) && (1..=HOSTS).all(|i| world.kernel_routes(i) == HOSTS - 1),
        });
        for flow in during {
            let label = flow.name.clone();
            let (sent, received) = flow.finish();
            assert!(sent > 500, "{label}: the flow did not run");
            report.push(format!(
                "to {name}: {label}: {sent} sent, {} lost while switching (leases moved in {moved:?}, settled {settled:?} later)",
                sent - received
            ));
        }
        // Settled: not one packet lost.
        for flow in flows(200) {
            let label = flow.name.clone();
            let (sent, received) = flow.finish();
            assert_eq!(sent - received, 0, "{label}: packets lost on a settled {name}\n{}", report.join("\n"));
        }
        let now: Vec<Ipv4Net> = (1..=HOSTS)
            .map(|i| {
                weft::lab::pods::read_subnet_env(&world.cluster.subnet_file(i))
                    .and_then(|s| s.ipv4())
                    .expect("subnet.env")
            })
            .collect();
        assert_eq!(now, subnets, "subnets changed while switching to {name}");
    }
    eprintln!("{}", report.join("\n"));
}
