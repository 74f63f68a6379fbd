//! gce proven by packets: hosts in network namespaces, instances of the GCE test server, reaching
//! each other's pods only through a router that forwards what the network's routes say
//! ([`common::vpc_router`]). The project's route quota is 3, overflow is on: every pod reaches
//! every other, by a route where one fits and over vxlan for the rest; a host in another network
//! is reached over vxlan. Needs root: fails, never skips, without it.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::gce_api::GceApiServer;
use common::gce_metadata::MetadataServer;
use common::packets::{self, ping_once, reaches, unreachable_pairs};
use common::vpc_router::{Identity, RoutedHost, VpcRouter};
use ipnet::Ipv4Net;
use weft::lab::PodAddrs;
use weft::netns::Netns;

const PROJECT: &str = "weft-packets";
const ZONE: &str = "europe-west1-b";
const NETWORK: &str = "default";
/// The last host's instance is in this network: no route of `default` reaches it.
const OTHER_NETWORK: &str = "other";
const QUOTA: usize = 3;
const HOSTS: usize = 6;
const RECHECK: Duration = Duration::from_secs(2);

/// The cluster, the API and metadata servers and the router; the router is dropped first.
struct World {
    router: Option<VpcRouter>,
    cluster: Cluster,
    api: GceApiServer,
    /// Host i's at index i - 1.
    metadata: Vec<MetadataServer>,
}

fn instance(i: usize) -> String {
    format!("node-{i}")
}

fn network_of(i: usize) -> &'static str {
    if i == HOSTS {
        OTHER_NETWORK
    } else {
        NETWORK
    }
}

impl World {
    fn new() -> World {
        let cluster = Cluster::with_etcd(HOSTS);
        let service = cluster.topology.service();
        let netns = Netns::open(&service.ns).expect("the service namespace");
        let api = GceApiServer::start_in(PROJECT, &netns, service.addr);
        api.api.add_network(NETWORK);
        api.api.add_network(OTHER_NETWORK);
        api.api.set_route_quota(Some(QUOTA));
        let mut metadata = Vec::new();
        let mut routed = Vec::new();
        for i in 1..=HOSTS {
            let (name, network, host) = (instance(i), network_of(i), cluster.host(i));
            let ip = host.addr.to_string();
            api.api.add_instance(ZONE, &name, network, &ip);
            let server = MetadataServer::start_in(PROJECT, ZONE, &name, network, &ip, &netns, service.addr);
            api.api.allow_token(&server.token, &name);
            metadata.push(server);
            let cloud =
                Identity::Gce { network: api.api.network_link(network), instance: api.api.instance_link(ZONE, &name) };
            routed.push(RoutedHost { ns: host.ns, addr: host.addr, cloud });
        }
        let router = VpcRouter::start_gce(&service.ns, service.addr, api.api.clone(), routed);
        World { router: Some(router), cluster, api, metadata }
    }

    fn start_agent(&mut self, i: usize) {
        let env = [
            ("GCE_METADATA_HOST", self.metadata[i - 1].host.clone()),
            ("WEFT_CLOUD__GCE_ENDPOINT", self.api.endpoint.clone()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.cluster.start_agent_with_env(i, &[], &env);
    }

    /// Destinations the routes of host i's network send to an instance, i's own left out.
    fn carried(&self, subnets: &[Ipv4Net], i: usize) -> BTreeSet<Ipv4Net> {
        let network = self.api.api.network_link(network_of(i));
        let tail = |link: &str| link.rsplit("/networks/").next().map(str::to_string);
        self.api
            .api
            .routes()
            .values()
            .filter(|r| r["network"].as_str().and_then(tail) == tail(&network))
            .filter(|r| r["nextHopInstance"].is_string())
            .filter_map(|r| r["destRange"].as_str()?.parse().ok())
            .filter(|d| *d != subnets[i - 1])
            .collect()
    }

    fn wait(&self, what: &str, within: Duration, check: impl FnMut() -> bool) -> Duration {
        let state = || {
            let mut out = format!("routes: {:?}\n", self.api.api.routes().keys().collect::<Vec<_>>());
            for i in 1..=HOSTS {
                let log = self.cluster.agent_log(i);
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                out.push_str(&format!(
                    "h{i} overlay {:?}\n---- h{i} log (newest first) ----\n{}\n",
                    packets::overlay_routes(&self.cluster, i),
                    tail.join("\n")
                ));
            }
            out
        };
        common::wait::until_every(what, within, Duration::from_millis(100), check, state)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.router.take();
    }
}

#[test]
fn gce_quota_of_three_every_pod_reaches_every_other_by_a_route_or_by_vxlan() {
    let mut world = World::new();
    let network = format!(
        "cidr = \"10.244.0.0/16\"\nsubnet_min = \"10.244.1.0\"\nsubnet_max = \"10.244.20.0\"\n\
         [network.backend]\ntype = \"gce\"\nrecheck = \"{}s\"\noverflow = \"vxlan\"\n",
        RECHECK.as_secs()
    );
    world.cluster.write_config(&network);
    world.cluster.weft_ok(&["network", "apply"]);
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
    world.api.api.set_can_ip_forward(ZONE, &instance(to), false);
    world.wait("the router honours canIpForward", Duration::from_secs(1), || {
        world.router.as_ref().expect("router").forwarding().checked.contains(&(to - 1))
    });
    assert!(!ping_once(&world.cluster.pod_ns(from), pods[to - 1].pod.addr()), "delivered without canIpForward");
    world.api.api.set_can_ip_forward(ZONE, &instance(to), true);
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
