//! aws-vpc proven by packets: hosts in network namespaces in three availability-zone subnets of a
//! moto VPC, reaching each other's pods only through a router that forwards what the route
//! tables say ([`common::vpc_router`]), as a real VPC would. Then past the tables' size:
//! `overflow = "vxlan"` with `route_limit`, every pod reaching every other, by the cloud where a
//! route fits and over vxlan for the rest. Needs root and moto: fails, never skips, without them.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use common::cluster::{runtime_in, Cluster};
use common::imds::{self, Imds};
use common::moto::{self, Fault, FaultProxy, Host, Moto, Vpc};
use common::packets::{self, ping_once, reaches, unreachable_pairs};
use common::vpc_router::{Hop, Identity, RoutedHost, VpcRouter};
use ipnet::Ipv4Net;
use weft::lab::PodAddrs;
use weft::netns::Netns;

const CIDR: &str = "10.244.0.0/16";
const MOTO_PORT: u16 = 5000;
/// The cloud backend's pace here (300 s by default).
const RECHECK: Duration = Duration::from_secs(2);

/// The cluster, moto and the router; dropped router first (it uses moto), then the cluster.
struct World {
    router: Option<VpcRouter>,
    cluster: Cluster,
    runtime: tokio::runtime::Runtime,
    moto: Moto,
    ec2: Client,
    vpc: Vpc,
    /// Host i at index i - 1, launched in zone subnet (i - 1) % 3.
    nodes: Vec<(Host, Imds)>,
    /// Between the agents and moto when a test needs EC2's faults.
    proxy: Option<FaultProxy>,
}

impl World {
    fn new(hosts: usize) -> World {
        let cluster = Cluster::with_etcd(hosts);
        let service = cluster.topology.service();
        let netns = Netns::open(&service.ns).expect("the service namespace");
        let runtime = runtime_in(&netns);
        let moto = Moto::start_in(&netns, service.addr, MOTO_PORT);
        let ec2 = moto::client(&moto.endpoint);
        let vpc = {
            let ec2 = ec2.clone();
            runtime.block_on(runtime.spawn(async move { moto::build_vpc(&ec2).await })).expect("building the VPC")
        };
        let mut nodes = Vec::new();
        for i in 0..hosts {
            let (ec2, subnet) = (ec2.clone(), vpc.subnets[i % 3].clone());
            let host = runtime.block_on(runtime.spawn(async move { moto::launch(&ec2, &subnet).await })).unwrap();
            let imds = Imds::start_at(&runtime, imds::metadata_for(&host), SocketAddr::from((service.addr, 0)));
            nodes.push((host, imds));
        }
        let routed = nodes
            .iter()
            .enumerate()
            .map(|(i, (host, _))| RoutedHost {
                ns: cluster.host(i + 1).ns,
                addr: cluster.host(i + 1).addr,
                cloud: Identity::Aws {
                    subnet_id: vpc.subnets[i % 3].clone(),
                    instance_id: host.instance_id.clone(),
                    interface_id: host.interface_id.clone(),
                },
            })
            .collect();
        let router = VpcRouter::start_aws(
            &service.ns,
            service.addr,
            runtime.handle().clone(),
            ec2.clone(),
            vpc.id.clone(),
            routed,
        );
        World { router: Some(router), cluster, runtime, moto, ec2, vpc, nodes, proxy: None }
    }

    fn router(&self) -> &VpcRouter {
        self.router.as_ref().expect("the router runs")
    }

    fn call<T: Send + 'static>(&self, f: impl std::future::Future<Output = T> + Send + 'static) -> T {
        self.runtime.block_on(self.runtime.spawn(f)).expect("an EC2 call in the service namespace")
    }

    /// aws-vpc over the tagged tables, with `extra` keys.
    fn aws_vpc(extra: &str) -> String {
        format!(
            "type = \"aws-vpc\"\nroute_table_tag = \"{}={}\"\nrecheck = \"{}s\"\n{extra}",
            moto::TAG_KEY,
            moto::TAG_VALUE,
            RECHECK.as_secs()
        )
    }

    /// Writes the config with `backend` and applies it to the store.
    fn apply(&self, backend: &str) {
        let network =
            format!("cidr = \"{CIDR}\"\nsubnet_min = \"10.244.1.0\"\nsubnet_max = \"10.244.20.0\"\n[network.backend]\n{backend}");
        self.cluster.write_config(&network);
        self.cluster.weft_ok(&["network", "apply"]);
    }

    fn start_agents(&mut self, extra: &str) {
        self.apply(&World::aws_vpc(extra));
        for i in 1..=self.nodes.len() {
            self.start_agent(i);
        }
    }

    fn lease_types(&self) -> Vec<String> {
        let text = self.cluster.weft_ok(&["leases", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&text).expect("leases as JSON");
        list.as_array().expect("a list").iter().map(|l| l["backend_type"].as_str().unwrap_or("").to_string()).collect()
    }

    /// weft's kernel routes (`proto 87`) on host i.
    fn kernel_routes(&self, i: usize) -> usize {
        let routes = self.cluster.ip_json(&self.cluster.host(i).ns, &["-4", "route", "show", "proto", "87"]);
        routes.as_array().map_or(0, Vec::len)
    }

    /// Agents started from now on call EC2 through a fault proxy, which answers
    /// `RouteLimitExceeded` once a table holds `cluster_routes` routes of the cluster network.
    fn with_table_capacity(&mut self, cluster_routes: usize) {
        let service = self.cluster.topology.service();
        let proxy = FaultProxy::start_at(&self.runtime, &self.moto, service.addr);
        let (ec2, table) = (self.ec2.clone(), self.vpc.tagged[0].clone());
        // The tables are alike: each has its local route, nothing else yet.
        let others = self.call(async move { moto::routes(&ec2, &table).await }).len();
        proxy.inject(Fault::Capacity { routes: others + cluster_routes });
        self.proxy = Some(proxy);
    }

    fn start_agent(&mut self, i: usize) {
        let mut env = imds::node_env(&self.nodes[i - 1].1).to_vec();
        let endpoint = self.proxy.as_ref().map_or(&self.moto.endpoint, |p| &p.endpoint);
        env.push(("WEFT_CLOUD__AWS_ENDPOINT_URL", endpoint.as_str()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, *v)).collect();
        self.cluster.start_agent_with_env(i, &[], &env);
    }

    /// Every host's subnet, once each agent wrote subnet.env, and a pod behind each.
    fn pods(&mut self) -> (Vec<Ipv4Net>, Vec<PodAddrs>) {
        let infos: Vec<_> = (1..=self.nodes.len()).map(|i| self.cluster.wait_subnet(i)).collect();
        let pods = (1..=self.nodes.len()).map(|i| self.cluster.make_pod(i, infos[i - 1])).collect();
        (infos.iter().map(|info| info.subnet).collect(), pods)
    }

    /// Routes of the cluster network in `table`: destination → interface.
    fn cluster_routes(&self, table: &str) -> Vec<(Ipv4Net, String)> {
        let (ec2, table) = (self.ec2.clone(), table.to_string());
        let cidr: Ipv4Net = CIDR.parse().unwrap();
        let routes = self.call(async move { moto::routes(&ec2, &table).await });
        routes
            .into_iter()
            .filter_map(|(d, r)| d.parse::<Ipv4Net>().ok().filter(|d| cidr.contains(d)).map(|d| (d, r.target)))
            .collect()
    }

    fn overlay_routes(&self, i: usize) -> BTreeSet<Ipv4Net> {
        packets::overlay_routes(&self.cluster, i)
    }

    fn wait(&self, what: &str, within: Duration, check: impl FnMut() -> bool) -> Duration {
        common::wait::until_every(what, within, Duration::from_millis(100), check, || self.state())
    }

    /// What a failed wait shows: each table's cluster routes, each host's overlay routes and
    /// the end of its agent's log.
    fn state(&self) -> String {
        let mut out = String::new();
        for table in &self.vpc.tagged {
            out.push_str(&format!("table {table}: {:?}\n", self.cluster_routes(table)));
        }
        for i in 1..=self.nodes.len() {
            let log = self.cluster.agent_log(i);
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            out.push_str(&format!(
                "h{i} overlay {:?}\n---- h{i} log (newest first) ----\n{}\n",
                self.overlay_routes(i),
                tail.join("\n")
            ));
        }
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.router.take();
    }
}

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
            .map(|i| weft::lab::pods::read_subnet_env(&world.cluster.subnet_file(i)).expect("subnet.env").subnet)
            .collect();
        assert_eq!(now, subnets, "subnets changed while switching to {name}");
    }
    eprintln!("{}", report.join("\n"));
}
