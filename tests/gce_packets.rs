//! gce proven by packets: hosts in network namespaces, instances of the GCE test server, reaching
//! each other's pods only through a router that forwards what the network's routes say
//! ([`common::vpc_router`]). The project's route quota is 3, overflow is on: every pod reaches
//! every other, by a route where one fits and over vxlan for the rest; a host in another network
//! is reached over vxlan. Needs root: fails, never skips, without it.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::gce_world::{GceWorld as World, NETWORK, OTHER_NETWORK, RECHECK, ZONE};
use common::packets::{self, ping_once, reaches, unreachable_pairs};
use ipnet::Ipv4Net;
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
    let subnets: Vec<Ipv4Net> = infos.iter().map(|info| info.subnet).collect();
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
