//! gce proven by packets: hosts in network namespaces, instances of the GCE test server, reaching
//! each other's pods only through a router that forwards what the network's routes say
//! ([`common::vpc_router`]). The project's route quota is 3, overflow is on: every pod reaches
//! every other, by a route where one fits and over vxlan for the rest; a host in another network
//! is reached over vxlan. Needs root: fails, never skips, without it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::gce_world::{GceWorld as World, NETWORK, OTHER_NETWORK, RECHECK, ZONE};
use common::packets::{self, ping_once, reaches, unreachable_pairs};
use ipnet::{Ipv4Net, Ipv6Net};
use weft::lab::PodAddrs;

const PROJECT: &str = "weft-packets";
const QUOTA: usize = 3;
const HOSTS: usize = 6;

/// Hosts node-1 … node-6; the last one's instance is in another network, which no route of
/// `default` reaches.
fn new_world() -> World {
    let names: Vec<String> = (1..=HOSTS).map(|i| format!("node-{i}")).collect();
    let instances: Vec<(&str, &str)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), if i + 1 == HOSTS { OTHER_NETWORK } else { NETWORK }))
        .collect();
    let world = World::new(PROJECT, &instances);
    world.api.api.set_route_quota(Some(QUOTA));
    world
}

#[test]
fn gce_quota_of_three_every_pod_reaches_every_other_by_a_route_or_by_vxlan() {
    let mut world = new_world();
    world.apply("overflow = \"vxlan\"");
    // The host in the other network last: the cleanup leader is one of `default`'s.
    for i in 1..=HOSTS - 1 {
        world.start_agent(i);
    }
    let infos: Vec<_> = (1..HOSTS).map(|i| world.cluster.wait_subnet(i)).collect();
    world.start_agent(HOSTS);
    let mut infos = infos;
    infos.push(world.cluster.wait_subnet(HOSTS));
    let subnets: Vec<Ipv4Net> = infos.iter().map(|info| info.ipv4().expect("an IPv4 subnet")).collect();
    let pods: Vec<PodAddrs> = (1..=HOSTS).map(|i| world.cluster.make_pod(i, infos[i - 1])).collect();
    let peers = |i: usize| -> BTreeSet<Ipv4Net> { subnets.iter().copied().filter(|s| *s != subnets[i - 1]).collect() };
    let split_right = |world: &World, i: usize| {
        let (overlay, cloud) = (packets::overlay_routes(&world.cluster, i), world.carried(&subnets, i));
        overlay.is_disjoint(&cloud) && overlay.union(&cloud).copied().collect::<BTreeSet<_>>() == peers(i)
    };
    let took = world.wait("the quota used, the rest over vxlan", Duration::from_secs(40), || {
        world.api.api.routes().len() == QUOTA && (1..=HOSTS).all(|i| split_right(&world, i))
    });
    for i in 1..=HOSTS {
        assert_eq!(world.cluster.readyz(i), Some(200), "h{i} not ready at the quota:\n{}", world.cluster.agent_log(i));
    }
    for i in 1..HOSTS {
        assert!(
            packets::overlay_routes(&world.cluster, i).contains(&subnets[HOSTS - 1]),
            "h{i} does not reach the host in another network over vxlan"
        );
    }
    let started = Instant::now();
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "pods not reached: {failed:?}");
    let all_pairs = started.elapsed();

    // A host reached by a route loses canIpForward: the network delivers nothing for its pods.
    let (from, to) = (1..HOSTS)
        .flat_map(|i| (1..HOSTS).map(move |j| (i, j)))
        .find(|(i, j)| i != j && world.carried(&subnets, *i).contains(&subnets[j - 1]))
        .expect("a pair of default's hosts joined by a route");
    world.api.api.set_can_ip_forward(ZONE, world.instance(to), false);
    world.wait("the router honours canIpForward", Duration::from_secs(1), || {
        world.router().forwarding().checked.contains(&(to - 1))
    });
    assert!(!ping_once(&world.cluster.pod_ns(from), pods[to - 1].pod.addr()), "delivered without canIpForward");
    world.api.api.set_can_ip_forward(ZONE, world.instance(to), true);
    assert!(reaches(&world.cluster.pod_ns(from), pods[to - 1].pod.addr(), Duration::from_secs(5)));

    // A routed host of `default` leaves (killed, lease deleted): the leader removes its route,
    // an overflowed host takes the quota, and its peers drop their vxlan route to it.
    let leads = |i: usize| world.cluster.agent_log(i).contains("leading the removal of stale cloud routes");
    let leaver = (1..HOSTS)
        .find(|i| world.carried(&subnets, if *i == 1 { 2 } else { 1 }).contains(&subnets[i - 1]) && !leads(*i))
        .expect("a routed host that does not lead");
    world.cluster.kill_agent(leaver);
    let key = format!("/coreos.com/network/subnets/{}", subnets[leaver - 1].to_string().replace('/', "-"));
    world.cluster.etcdctl(&["del", &key]);
    let left_at = Instant::now();
    let leaver_route = |world: &World| {
        world
            .api
            .api
            .routes()
            .values()
            .any(|r| r["destRange"].as_str() == Some(subnets[leaver - 1].to_string().as_str()))
    };
    world.wait("the quota taken by an overflowed host", RECHECK * 8, || {
        !leaver_route(&world) && world.api.api.routes().len() == QUOTA
    });
    let taken = left_at.elapsed();
    let stayed: Vec<usize> = (1..=HOSTS).filter(|i| *i != leaver).collect();
    world.wait("the peers reach the new holder by its route", Duration::from_secs(10), || {
        stayed.iter().all(|i| packets::overlay_routes(&world.cluster, *i).is_disjoint(&world.carried(&subnets, *i)))
    });
    for i in &stayed {
        for j in stayed.iter().filter(|j| *j != i) {
            assert!(reaches(&world.cluster.pod_ns(*i), pods[j - 1].pod.addr(), Duration::from_secs(5)), "h{i} → h{j}");
        }
    }
    eprintln!(
        "gce overflow: converged in {took:?}; {} pairs pinged in {all_pairs:?}; the freed quota taken in {taken:?}",
        HOSTS * (HOSTS - 1)
    );
}

/// Dual-stack (issue 14): 4 hosts in one network, a project quota of 5 routes, overflow on. Each
/// host's subnets get a route each (an IPv6 `destRange` for the IPv6 one) while the quota lasts;
/// a peer rides the network's routes only when both of its subnets have one, and is reached over
/// vxlan for both families otherwise. Every pod reaches every other over both families.
#[test]
fn gce_dual_stack_routes_both_families_and_overflows_a_peer_whole() {
    const DUAL_HOSTS: usize = 4;
    const DUAL_QUOTA: usize = 5;
    let names: Vec<String> = (1..=DUAL_HOSTS).map(|i| format!("node-{i}")).collect();
    let instances: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), NETWORK)).collect();
    let mut world = World::dual_stack("weft-packets-v6", &instances);
    world.api.api.set_route_quota(Some(DUAL_QUOTA));
    world.apply("overflow = \"vxlan\"");
    for i in 1..=DUAL_HOSTS {
        world.start_agent(i);
    }
    let (subnets, pods) = world.pods();
    let (subnets_v6, pods_v6) = world.pods_v6();
    let routed = |world: &World, destination: String| {
        world.api.api.routes().values().any(|r| r["destRange"].as_str() == Some(destination.as_str()))
    };
    let both_routed = |world: &World, j: usize| {
        routed(world, subnets[j - 1].to_string()) && routed(world, subnets_v6[j - 1].to_string())
    };
    let split_right = |world: &World, i: usize| {
        let over: Vec<usize> = (1..=DUAL_HOSTS).filter(|j| *j != i && !both_routed(world, *j)).collect();
        let v4: BTreeSet<Ipv4Net> = over.iter().map(|j| subnets[j - 1]).collect();
        let v6: BTreeSet<Ipv6Net> = over.iter().map(|j| subnets_v6[j - 1]).collect();
        packets::overlay_routes(&world.cluster, i) == v4 && packets::overlay_routes_v6(&world.cluster, i) == v6
    };
    let took = world.wait("the quota used by both families, the rest over vxlan", Duration::from_secs(40), || {
        world.api.api.routes().len() == DUAL_QUOTA && (1..=DUAL_HOSTS).all(|i| split_right(&world, i))
    });
    let whole = (1..=DUAL_HOSTS).filter(|j| both_routed(&world, *j)).count();
    // Who got in first decides the split, but 5 routes among 4 hosts hold at least one whole.
    assert!(whole >= 1, "no host has both of its routes");
    let v6_route = world
        .api
        .api
        .routes()
        .values()
        .find(|r| r["destRange"].as_str().is_some_and(|d| d.contains(':')))
        .cloned()
        .expect("an IPv6 route");
    assert!(v6_route["name"].as_str().is_some_and(|n| n.starts_with("weft-2001-db8-42-")), "{v6_route}");
    for i in 1..=DUAL_HOSTS {
        assert!(world.ready(i), "h{i} not ready at the quota:\n{}", world.cluster.agent_log(i));
    }
    let failed = unreachable_pairs(&world.cluster, &pods, Duration::from_secs(10));
    assert!(failed.is_empty(), "IPv4: pods not reached: {failed:?}");
    let failed = packets::unreachable_addrs(&world.cluster, &pods_v6, Duration::from_secs(10));
    assert!(failed.is_empty(), "IPv6: pods not reached: {failed:?}");
    eprintln!("gce dual-stack overflow: converged in {took:?}; hosts routed whole: {whole}");
}

/// IPv6-only (`enable_ipv4 = false`): one route per node, named after its IPv6 subnet
/// (`weft-2001-db8-42-…`), its `destRange` that subnet and its next hop the node's instance; no
/// IPv4 route at all (the leases' `0.0.0.0-0` half is no subnet). Pods with no IPv4 address
/// reach each other through the network's routes, and a deleted route is put back by its node.
#[test]
fn gce_ipv6_only_routes_one_ipv6_route_per_node_and_pods_talk_through_them() {
    const V6_HOSTS: usize = 3;
    let names: Vec<String> = (1..=V6_HOSTS).map(|i| format!("node-{i}")).collect();
    let instances: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), NETWORK)).collect();
    let mut world = World::ipv6_only("weft-packets-v6-only", &instances);
    world.apply("");
    for i in 1..=V6_HOSTS {
        world.start_agent(i);
    }
    let (subnets_v6, pods_v6) = world.ipv6_only_pods();
    // name → (destRange, nextHopInstance): exactly these, nothing of IPv4.
    let route_name = |s: &Ipv6Net| format!("weft-{}-{}", s.network().to_string().replace(':', "-"), s.prefix_len());
    let want: BTreeMap<String, (String, String)> = (1..=V6_HOSTS)
        .map(|i| (route_name(&subnets_v6[i - 1]), (subnets_v6[i - 1].to_string(), world.instance_link(i))))
        .collect();
    let seen = |world: &World| -> BTreeMap<String, (String, String)> {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("(none)").to_string();
        world
            .api
            .api
            .routes()
            .into_iter()
            .map(|(n, r)| (n, (text(&r["destRange"]), text(&r["nextHopInstance"]))))
            .collect()
    };
    let took =
        world.wait("one IPv6 route per node, and nothing else", Duration::from_secs(30), || seen(&world) == want);
    for name in want.keys() {
        assert!(name.starts_with("weft-2001-db8-42-"), "{name}");
    }
    let forwarding = |world: &World| {
        (0..V6_HOSTS).all(|i| {
            (0..V6_HOSTS)
                .filter(|j| *j != i)
                .all(|j| world.router().forwarding().hop(i, subnets_v6[j]) == Some(common::vpc_router::Hop::Host(j)))
        })
    };
    world.wait("the router follows the IPv6 routes", Duration::from_secs(5), || forwarding(&world));
    let failed = packets::unreachable_addrs(&world.cluster, &pods_v6, Duration::from_secs(10));
    assert!(failed.is_empty(), "IPv6: pods not reached through the network's routes: {failed:?}");
    for i in 1..=V6_HOSTS {
        // gce installs no kernel route of either family.
        for family in ["-4", "-6"] {
            let routes = world
                .cluster
                .ip_json(&world.cluster.host(i).ns, &[family, "route", "show", "table", "all", "proto", "87"]);
            assert_eq!(routes, serde_json::json!([]), "h{i} has {family} kernel routes on gce");
        }
        assert!(world.ready(i), "h{i} not ready:\n{}", world.cluster.agent_log(i));
    }
    // Each host counts both peers as carried by the cloud (at its next pass, within a recheck).
    world.wait("every host counts 2 peers by the cloud", RECHECK * 3, || {
        (1..=V6_HOSTS).all(|i| world.metric(i, r#"weft_peers{path="cloud"}"#) == (V6_HOSTS - 1) as f64)
    });

    // h2's route deleted behind the agents' backs (h2's agent stopped first, or it would put it
    // back before the router looked): nobody reaches h2's pod; h2's agent back restores it.
    world.cluster.kill_agent(2);
    let h2_route = route_name(&subnets_v6[1]);
    assert!(world.api.api.delete_route(&h2_route), "no route {h2_route}");
    world.wait("the router drops h2's route", Duration::from_millis(500), || {
        world.router().forwarding().hop(0, subnets_v6[1]).is_none()
    });
    assert!(!ping_once(&world.cluster.pod_ns(1), pods_v6[1]), "h1 reached h2 without a route");
    world.start_agent(2);
    let restored = Instant::now();
    assert!(reaches(&world.cluster.pod_ns(1), pods_v6[1], Duration::from_secs(15)), "h2's route not restored");
    let restored = restored.elapsed();
    assert_eq!(seen(&world), want, "the routes after h2's restart");
    eprintln!("gce IPv6-only: one IPv6 route per node in {took:?}; a deleted one restored in {restored:?}");
}
