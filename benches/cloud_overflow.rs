//! The cloud overflow benchmark of issue 13: `cargo bench --bench cloud_overflow`
//! (`WEFT_BENCH_QUICK=1` or `--quick`: 200 agents).
//!
//! 1,000 aws-vpc agents with `overflow = "vxlan"`, in three availability zones, each writing its
//! route into the zone tables of one VPC whose tables hold 50 routes each (EC2 answers
//! `RouteLimitExceeded` past that, as an old account's tables do). Each agent is weft's own
//! aws-vpc provider under the cloud engine, as the agent runs it; only EC2 is simulated
//! (in memory, counting every call). Time is counted in rechecks: one round is every agent's
//! pass once, in turn.
//!
//! Printed: rechecks until the tables are settled (no route written or removed in a round) and
//! every agent knows for each peer whether the cloud carries it (the rest go over vxlan, which
//! needs no cloud call), the cloud/overlay split per agent, EC2 calls per agent per recheck and
//! per cluster in the steady state, the CPU time of a round; then 10 routed hosts leave and the
//! rechecks until their slots are taken by overflowed hosts. It asserts as it goes (settled
//! within 50 rechecks, no table past its capacity, no write in the steady state, freed slots
//! taken); `tests/cloud_bench_smoke.rs` runs the quick mode.
//!
//! It runs twice in one go (issue 17): on a store that cannot share the leader's view of the
//! tables (the local store: every agent describes the tables itself each recheck), then on one
//! that can (the memory store, as etcd: only the leader describes them once settled). Both
//! print the steady state's EC2 calls per recheck and per hour at the default recheck.
#![allow(dead_code)] // Also compiled as a module of tests/cloud_bench_smoke.rs, which uses `run` only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net};
use weft::backend::aws_vpc::node::Node;
use weft::backend::aws_vpc::plan::TableMode;
use weft::backend::aws_vpc::worker::AwsRoutes;
use weft::backend::cloud::engine::{Engine, Request};
use weft::backend::cloud::{CloudPaths, Settings, StaleTracker};
use weft::health::Health;
use weft::lease::LeaseKey;
use weft::network::{Network, NetworkSection};
use weft::store::local::LocalStore;
use weft::store::memory::MemoryStore;
use weft::store::Leadership;
use weft_aws::{Ec2, Ec2Error, Instance, Interface, Origin, Route, RouteTable, TableFilter, Target};

const ZONES: usize = 3;
/// Routes a table holds, its local route included (EC2 counts every route).
const TABLE_CAPACITY: usize = 50;
const LEAVERS: usize = 10;
const TAG: (&str, &str) = ("kubernetes.io/cluster/bench", "owned");
const VPC: &str = "vpc-bench";

/// EC2's route tables in memory, with a capacity, counting calls by operation.
#[derive(Default)]
struct SimEc2 {
    tables: Mutex<BTreeMap<String, RouteTable>>,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    /// Route writes that succeeded (create, replace, delete): zero in a settled round.
    writes: Mutex<u64>,
}

impl SimEc2 {
    fn new() -> SimEc2 {
        let sim = SimEc2::default();
        let local = Route {
            destination: "172.31.0.0/16".parse().unwrap(),
            target: Target::Gateway("local".into()),
            blackhole: false,
            origin: Origin::Local,
        };
        let mut tables = sim.tables.lock().unwrap();
        for zone in 0..ZONES {
            let id = format!("rtb-zone{zone}");
            let table = RouteTable {
                id: id.clone(),
                vpc_id: VPC.into(),
                routes: vec![local.clone()],
                route_count: 1,
                subnets: vec![subnet_of_zone(zone)],
                main: false,
                tags: vec![(TAG.0.into(), TAG.1.into())],
            };
            tables.insert(id, table);
        }
        drop(tables);
        sim
    }

    fn count(&self, operation: &'static str) {
        *self.calls.lock().unwrap().entry(operation).or_default() += 1;
    }

    fn take_calls(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn take_writes(&self) -> u64 {
        std::mem::take(&mut *self.writes.lock().unwrap())
    }

    fn edit<T>(&self, table: &str, change: impl FnOnce(&mut RouteTable) -> Result<T, Ec2Error>) -> Result<T, Ec2Error> {
        let mut tables = self.tables.lock().unwrap();
        let table = tables.get_mut(table).ok_or_else(|| Ec2Error::NotFound {
            operation: "sim",
            code: "InvalidRouteTableID.NotFound".into(),
            message: table.into(),
        })?;
        let out = change(table)?;
        table.route_count = table.routes.len();
        *self.writes.lock().unwrap() += 1;
        Ok(out)
    }

    fn cluster_routes(&self, zone: usize, network: IpNet) -> BTreeSet<IpNet> {
        let tables = self.tables.lock().unwrap();
        let table = &tables[&format!("rtb-zone{zone}")];
        table.routes.iter().map(|r| r.destination).filter(|d| network.contains(d)).collect()
    }
}

/// The lease of an (IPv4) subnet.
fn key(subnet: IpNet) -> LeaseKey {
    match subnet {
        IpNet::V4(v4) => v4.into(),
        IpNet::V6(_) => unreachable!("the benchmark's leases are IPv4"),
    }
}

fn subnet_of_zone(zone: usize) -> String {
    format!("subnet-zone{zone}")
}

fn interface_of(agent: usize) -> String {
    format!("eni-{agent:05}")
}

fn route_to(destination: IpNet, eni: &str) -> Route {
    Route { destination, target: Target::Interface(eni.into()), blackhole: false, origin: Origin::Api }
}

#[async_trait]
impl Ec2 for SimEc2 {
    async fn instance(&self, _: &str) -> Result<Instance, Ec2Error> {
        unreachable!("each agent knows its node")
    }
    async fn interface_by_ip(&self, _: Ipv4Addr) -> Result<Option<Interface>, Ec2Error> {
        unreachable!("each agent knows its node")
    }
    async fn set_source_dest_check(&self, _: &str, _: bool) -> Result<(), Ec2Error> {
        unreachable!("each agent knows its node")
    }

    async fn route_tables(&self, filter: &TableFilter) -> Result<Vec<RouteTable>, Ec2Error> {
        self.count("DescribeRouteTables");
        let tables = self.tables.lock().unwrap();
        Ok(tables
            .values()
            .filter(|t| match filter {
                TableFilter::Tagged { vpc, key, value } => t.vpc_id == *vpc && t.has_tag(key, value),
                _ => false,
            })
            .cloned()
            .collect())
    }

    async fn create_route(&self, table: &str, destination: IpNet, eni: &str) -> Result<(), Ec2Error> {
        self.count("CreateRoute");
        self.edit(table, |t| {
            if t.route(destination).is_some() {
                return Err(Ec2Error::AlreadyExists { operation: "CreateRoute" });
            }
            if t.routes.len() >= TABLE_CAPACITY {
                return Err(Ec2Error::RouteLimitExceeded { table: t.id.clone() });
            }
            t.routes.push(route_to(destination, eni));
            Ok(())
        })
    }

    async fn replace_route(&self, table: &str, destination: IpNet, eni: &str) -> Result<(), Ec2Error> {
        self.count("ReplaceRoute");
        self.edit(table, |t| match t.routes.iter_mut().find(|r| r.destination == destination) {
            Some(route) => {
                *route = route_to(destination, eni);
                Ok(())
            }
            None => Err(Ec2Error::NotFound {
                operation: "ReplaceRoute",
                code: "InvalidRoute.NotFound".into(),
                message: destination.to_string(),
            }),
        })
    }

    async fn delete_route(&self, table: &str, destination: IpNet) -> Result<(), Ec2Error> {
        self.count("DeleteRoute");
        self.edit(table, |t| {
            t.routes.retain(|r| r.destination != destination);
            Ok(())
        })
    }
}

/// One agent: its engine over weft's aws-vpc provider, and what the engine says the cloud carries.
struct Agent {
    engine: Engine<AwsRoutes>,
    paths: CloudPaths,
    zone: usize,
}

struct Cluster {
    ec2: Arc<SimEc2>,
    agents: Vec<Agent>,
    subnets: Vec<IpNet>,
    network: IpNet,
    /// Agents gone (their leases deleted).
    gone: BTreeSet<usize>,
    _store_dir: tempfile::TempDir,
}

/// Which store the agents elect their leader through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// The local store: no shared view, every agent describes the tables.
    None,
    /// The memory store, as etcd: the leader's view is shared.
    LeaderView,
}

impl Cluster {
    fn new(count: usize, sharing: Sharing) -> Cluster {
        let section = NetworkSection { cidr: "10.0.0.0/8".into(), subnet_len: 24, ..Default::default() };
        let network = Network::new(&section).expect("the benchmark's network");
        let dir = tempfile::tempdir().expect("a temp dir");
        let store: Arc<dyn Leadership> = match sharing {
            Sharing::None => Arc::new(LocalStore::open(dir.path()).expect("a local store")),
            Sharing::LeaderView => Arc::new(MemoryStore::new()),
        };
        let ec2 = Arc::new(SimEc2::new());
        let health = Arc::new(Health::default());
        let mode = TableMode::from_config(&[], &format!("{}={}", TAG.0, TAG.1)).expect("a tag");
        let mut agents = Vec::new();
        for i in 0..count {
            let zone = i % ZONES;
            let node = Node {
                instance_id: format!("i-{i:05}"),
                vpc_id: VPC.into(),
                subnet_id: subnet_of_zone(zone),
                interface_id: interface_of(i),
            };
            let mut provider = AwsRoutes::new(
                ec2.clone(),
                node,
                mode.clone(),
                &network,
                None,
                Duration::from_secs(300),
                health.clone(),
            );
            // A round stands for a recheck (300 s by default): always past the stale grace.
            provider.stale = StaleTracker::default();
            let paths = CloudPaths::default();
            let settings = Settings {
                recheck: Duration::from_secs(300),
                overflow: true,
                store: store.clone(),
                health: health.clone(),
                paths: paths.clone(),
            };
            let (engine, _outcomes) = Engine::new(provider, settings);
            agents.push(Agent { engine, paths, zone });
        }
        // Lease i: the i-th /24 after 10.0.0.0/24.
        let subnets =
            (0..count).map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + ((i as u32 + 1) << 8)), 24).unwrap().into());
        Cluster {
            ec2,
            agents,
            subnets: subnets.collect(),
            network: network.lease_space().network,
            gone: BTreeSet::new(),
            _store_dir: dir,
        }
    }

    /// Every agent's pass once: one recheck of the cluster. Returns the route writes made.
    async fn round(&mut self) -> u64 {
        let leased: BTreeSet<LeaseKey> =
            self.subnets.iter().enumerate().filter(|(i, _)| !self.gone.contains(i)).map(|(_, s)| key(*s)).collect();
        let mut request = Request { own: None, leased: Some(leased) };
        for (i, agent) in self.agents.iter_mut().enumerate() {
            if self.gone.contains(&i) {
                continue;
            }
            request.own = Some(key(self.subnets[i]));
            agent.engine.pass(&request).await;
        }
        self.ec2.take_writes()
    }

    /// Whether every live agent's carried peers are exactly its zone table's live routes: it
    /// knows which peers the cloud carries (and sends the rest over vxlan).
    fn views_settled(&self) -> bool {
        (0..self.agents.len()).filter(|i| !self.gone.contains(i)).all(|i| {
            let agent = &self.agents[i];
            let mut table = self.ec2.cluster_routes(agent.zone, self.network);
            table.remove(&self.subnets[i]);
            let carried: BTreeSet<IpNet> = agent.paths.subscribe().borrow().clone();
            let mut carried_peers = carried;
            carried_peers.remove(&self.subnets[i]);
            carried_peers == table
        })
    }

    fn live(&self) -> usize {
        self.agents.len() - self.gone.len()
    }
}

fn main() {
    let quick = std::env::var_os("WEFT_BENCH_QUICK").is_some() || std::env::args().any(|a| a == "--quick");
    let agents = if quick { 200 } else { 1000 };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let without = runtime.block_on(run(agents, Sharing::None));
    let with = runtime.block_on(run(agents, Sharing::LeaderView));
    println!("steady-state EC2 calls of {agents} agents, per recheck (per hour at the default 300 s recheck):");
    for (name, calls) in [("every agent describes", without), ("the leader's view shared", with)] {
        println!(
            "  {name:<26} {:>8.1} per cluster ({:>7.0}/h), {:.3} per agent ({:.1}/h)",
            calls.per_cluster(),
            calls.per_cluster() * 12.0,
            calls.per_agent(),
            calls.per_agent() * 12.0
        );
    }
}

/// The steady state's EC2 calls: what a settled cluster costs the account's request budget.
#[derive(Debug, Clone)]
pub struct SteadyCalls {
    pub agents: usize,
    pub rechecks: u64,
    pub by_operation: BTreeMap<&'static str, u64>,
}

impl SteadyCalls {
    pub fn per_cluster(&self) -> f64 {
        self.by_operation.values().sum::<u64>() as f64 / self.rechecks as f64
    }

    pub fn per_agent(&self) -> f64 {
        self.per_cluster() / self.agents as f64
    }

    pub fn of(&self, operation: &str) -> f64 {
        self.by_operation.get(operation).copied().unwrap_or(0) as f64 / self.rechecks as f64
    }
}

/// The benchmark with `count` agents; panics when the cluster does not settle.
pub async fn run(count: usize, sharing: Sharing) -> SteadyCalls {
    let mut cluster = Cluster::new(count, sharing);
    println!(
        "cloud overflow: {count} aws-vpc agents, overflow = \"vxlan\", {ZONES} zones, {ZONES} tagged tables of \
         {TABLE_CAPACITY} routes (local route included), shared view: {sharing:?}"
    );

    let mut rounds = 0;
    let mut cpu = Duration::ZERO;
    loop {
        let start = Instant::now();
        let writes = cluster.round().await;
        cpu += start.elapsed();
        rounds += 1;
        if writes == 0 && cluster.views_settled() {
            break;
        }
        assert!(rounds < 50, "not settled after 50 rechecks");
    }
    let startup_calls = cluster.ec2.take_calls();
    println!(
        "  settled after {rounds} rechecks (the last one changed nothing; {:.0} min at the default recheck of 300 s), \
         every peer reachable throughout (over vxlan until its cloud route is known); {:.1} ms of CPU per recheck \
         of the whole cluster ({} build)",
        rounds as f64 * 5.0,
        cpu.as_secs_f64() * 1000.0 / rounds as f64,
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!("  EC2 calls until settled: {startup_calls:?}");
    for zone in 0..ZONES {
        let routes = cluster.ec2.cluster_routes(zone, cluster.network).len();
        assert!(routes < TABLE_CAPACITY, "zone {zone}: {routes} cluster routes, past the table");
        println!("  zone {zone} table: {routes} cluster routes (+ local)");
    }
    let carried: Vec<usize> = (0..count)
        .map(|i| cluster.agents[i].paths.subscribe().borrow().iter().filter(|s| **s != cluster.subnets[i]).count())
        .collect();
    let (min, max) = (carried.iter().min().unwrap(), carried.iter().max().unwrap());
    let mean = carried.iter().sum::<usize>() as f64 / carried.len() as f64;
    println!(
        "  per agent, of {} peers: {min}..{max} by the cloud (mean {mean:.1}), the rest ({:.1} mean) over vxlan",
        count - 1,
        (count - 1) as f64 - mean
    );

    // The steady state: rechecks that change nothing; overflowed agents try their route again
    // only once their refusal is old (room::TRUSTED_CHECKS).
    const STEADY: u64 = 22;
    for _ in 0..STEADY {
        let writes = cluster.round().await;
        assert_eq!(writes, 0, "a settled cluster wrote routes");
    }
    let steady = SteadyCalls { agents: count, rechecks: STEADY, by_operation: cluster.ec2.take_calls() };
    println!(
        "  steady state, per recheck: {:.1} EC2 calls per cluster, {:.3} per agent ({:?} over {STEADY} rechecks)",
        steady.per_cluster(),
        steady.per_agent(),
        steady.by_operation
    );

    // Routed hosts leave: the leader removes their routes (two passes apart), overflowed hosts
    // take the slots.
    let routed: BTreeSet<IpNet> = cluster.ec2.cluster_routes(0, cluster.network);
    let leavers: Vec<usize> =
        (0..count).filter(|i| routed.contains(&cluster.subnets[*i])).skip(1).take(LEAVERS).collect();
    cluster.gone.extend(leavers.iter().copied());
    let before = cluster.ec2.cluster_routes(0, cluster.network).len();
    let mut rounds = 0;
    loop {
        cluster.round().await;
        rounds += 1;
        let now = cluster.ec2.cluster_routes(0, cluster.network);
        let left = leavers.iter().any(|i| now.contains(&cluster.subnets[*i]));
        if !left && now.len() == before && cluster.views_settled() {
            break;
        }
        assert!(rounds < 30, "freed slots not taken within 30 rechecks");
    }
    println!(
        "  {LEAVERS} routed hosts of zone 0 left: their slots taken by overflowed hosts, and every view right, \
         after {rounds} rechecks ({} agents live)",
        cluster.live()
    );
    steady
}
