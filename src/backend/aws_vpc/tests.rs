//! The backend driven through a fake [`Ec2`]: what it calls, in which tables, and what it
//! reports.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ipnet::IpNet;
use weft_aws::{Ec2, Ec2Error, Instance, Interface, Origin, Route, RouteTable, TableFilter, Target};

use super::*;
use crate::backend::Active;
use crate::config::CloudSection;
use crate::health::Condition;
use crate::iface::ExternalInterface;
use crate::lease::{Expiry, LeaseAttrs, LeaseMap};
use crate::network::backend::{BackendConfig, Overflow};
use crate::network::{Network, NetworkSection};
use crate::store::local::LocalStore;
use crate::store::Leadership;

/// An in-memory EC2 with route tables, a call log and failures to inject.
#[derive(Default)]
struct FakeEc2 {
    tables: Mutex<BTreeMap<String, RouteTable>>,
    calls: Mutex<Vec<String>>,
    /// `CreateRoute` into these tables fails with RouteLimitExceeded.
    full: Mutex<Vec<String>>,
}

impl FakeEc2 {
    fn with_tables(tables: Vec<RouteTable>) -> Arc<FakeEc2> {
        let fake = FakeEc2::default();
        *fake.tables.lock().unwrap() = tables.into_iter().map(|t| (t.id.clone(), t)).collect();
        Arc::new(fake)
    }

    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn route(&self, table: &str, cidr: &str) -> Option<Route> {
        self.tables.lock().unwrap()[table].route(net(cidr)).cloned()
    }

    fn edit<T>(&self, table: &str, change: impl FnOnce(&mut RouteTable) -> T) -> Result<T, Ec2Error> {
        let mut tables = self.tables.lock().unwrap();
        let table = tables.get_mut(table).ok_or_else(|| not_found("InvalidRouteTableID.NotFound"))?;
        let out = change(table);
        table.route_count = table.routes.len();
        Ok(out)
    }
}

fn not_found(code: &str) -> Ec2Error {
    Ec2Error::NotFound { operation: "fake", code: code.into(), message: String::new() }
}

#[async_trait]
impl Ec2 for FakeEc2 {
    async fn instance(&self, _: &str) -> Result<Instance, Ec2Error> {
        unreachable!("the backend under test knows its node")
    }
    async fn interface_by_ip(&self, _: Ipv4Addr) -> Result<Option<Interface>, Ec2Error> {
        unreachable!("the backend under test knows its node")
    }
    async fn set_source_dest_check(&self, _: &str, _: bool) -> Result<(), Ec2Error> {
        unreachable!("the backend under test knows its node")
    }

    async fn route_tables(&self, filter: &TableFilter) -> Result<Vec<RouteTable>, Ec2Error> {
        self.log("DescribeRouteTables".into());
        let tables = self.tables.lock().unwrap();
        Ok(tables
            .values()
            .filter(|t| match filter {
                TableFilter::Ids(ids) => ids.contains(&t.id),
                TableFilter::Tagged { vpc, key, value } => t.vpc_id == *vpc && t.has_tag(key, value),
                TableFilter::AssociatedWith { subnet } => t.subnets.contains(subnet),
                TableFilter::Main { vpc } => t.vpc_id == *vpc && t.main,
                TableFilter::Vpc { vpc } => t.vpc_id == *vpc,
            })
            .cloned()
            .collect())
    }

    async fn create_route(&self, table: &str, destination: IpNet, eni: &str) -> Result<(), Ec2Error> {
        self.log(format!("CreateRoute {table} {destination}"));
        if self.full.lock().unwrap().iter().any(|t| t == table) {
            return Err(Ec2Error::RouteLimitExceeded { table: table.into() });
        }
        self.edit(table, |t| {
            if t.route(destination).is_some() {
                return Err(Ec2Error::AlreadyExists { operation: "CreateRoute" });
            }
            t.routes.push(api_route(destination, Target::Interface(eni.into())));
            Ok(())
        })?
    }

    async fn replace_route(&self, table: &str, destination: IpNet, eni: &str) -> Result<(), Ec2Error> {
        self.log(format!("ReplaceRoute {table} {destination}"));
        self.edit(table, |t| match t.routes.iter_mut().find(|r| r.destination == destination) {
            Some(route) => {
                *route = api_route(destination, Target::Interface(eni.into()));
                Ok(())
            }
            None => Err(not_found("InvalidRoute.NotFound")),
        })?
    }

    async fn delete_route(&self, table: &str, destination: IpNet) -> Result<(), Ec2Error> {
        self.log(format!("DeleteRoute {table} {destination}"));
        self.edit(table, |t| t.routes.retain(|r| r.destination != destination))
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn api_route(destination: IpNet, target: Target) -> Route {
    Route { destination, target, blackhole: false, origin: Origin::Api }
}

fn table(id: &str, tag: Option<&str>, routes: Vec<Route>) -> RouteTable {
    let mut routes = routes;
    let local = Route {
        destination: net("10.0.0.0/16"),
        target: Target::Gateway("local".into()),
        blackhole: false,
        origin: Origin::Local,
    };
    routes.insert(0, local);
    RouteTable {
        id: id.into(),
        vpc_id: "vpc-1".into(),
        route_count: routes.len(),
        routes,
        subnets: vec![],
        main: false,
        tags: tag.map(|v| vec![("weft".to_string(), v.to_string())]).unwrap_or_default(),
    }
}

fn node(instance: &str, eni: &str) -> Node {
    Node {
        instance_id: instance.into(),
        vpc_id: "vpc-1".into(),
        subnet_id: "subnet-a".into(),
        interface_id: eni.into(),
    }
}

struct Harness {
    ctx: BackendContext,
    _dir: tempfile::TempDir,
}

fn harness(config: &AwsVpcConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path()).unwrap());
    harness_on(config, store, dir)
}

fn harness_on(config: &AwsVpcConfig, store: Arc<dyn Leadership>, dir: tempfile::TempDir) -> Harness {
    harness_of(config, store, dir, "")
}

/// A harness in a network with `ipv6_cidr` (dual-stack unless empty).
fn harness_of(config: &AwsVpcConfig, store: Arc<dyn Leadership>, dir: tempfile::TempDir, ipv6_cidr: &str) -> Harness {
    let section = NetworkSection {
        cidr: "10.244.0.0/16".into(),
        ipv6_cidr: ipv6_cidr.into(),
        backend: BackendConfig::AwsVpc(config.clone()),
        ..Default::default()
    };
    let ctx = BackendContext {
        network: Network::new(&section).unwrap(),
        ext: ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu: 9001,
            addr: Some("10.0.1.10/24".parse().unwrap()),
            addr_v6: None,
            public_ip: Some("10.0.1.10".parse().unwrap()),
            public_ipv6: (!ipv6_cidr.is_empty()).then(|| "2001:db8::10".parse().unwrap()),
        },
        store,
        health: Arc::new(Health::default()),
        cloud: CloudSection::default(),
    };
    Harness { ctx, _dir: dir }
}

fn tagged_config() -> AwsVpcConfig {
    AwsVpcConfig { route_table_tag: "weft=az".into(), ..Default::default() }
}

fn lease(subnet: &str) -> Lease {
    Lease {
        subnet: Some(subnet.parse().unwrap()),
        subnet_v6: None,
        attrs: LeaseAttrs::new("10.0.1.10".parse().unwrap(), BackendKind::AwsVpc.as_str(), serde_json::Value::Null),
        expiry: Expiry::At(SystemTime::now() + Duration::from_secs(3600)),
    }
}

fn peers(subnets: &[&str]) -> LeaseMap {
    subnets.iter().map(|s| (s.parse().unwrap(), lease(s))).collect()
}

/// Asks for a pass and waits until the worker finished it; the outcome.
async fn pass(backend: &mut Started, own: &Lease, peers: &LeaseMap) -> Result<(), String> {
    backend.check(own, peers, true).await.unwrap();
    let outcomes = &mut backend.outcomes;
    outcomes.changed().await.unwrap();
    outcomes.borrow_and_update().clone()
}

/// The backend under test, started.
type Started = CloudActive<AwsRoutes>;

async fn started(h: &Harness, config: AwsVpcConfig, ec2: Arc<FakeEc2>, node: Node, own: &Lease) -> Started {
    AwsVpc::with_ec2(&h.ctx, config, ec2, node).activate(own)
}

/// The usual node: tagged tables, instance i-1 with eni-1, leasing 10.244.1.0/24.
async fn started_tagged(ec2: &Arc<FakeEc2>) -> (Harness, Lease, Started) {
    let h = harness(&tagged_config());
    let own = lease("10.244.1.0/24");
    let backend = started(&h, tagged_config(), ec2.clone(), node("i-1", "eni-1"), &own).await;
    (h, own, backend)
}

#[tokio::test]
async fn routes_in_every_tagged_table_then_nothing_to_do() {
    let ec2 = FakeEc2::with_tables(vec![
        table("rtb-a", Some("az"), vec![]),
        table("rtb-b", Some("az"), vec![]),
        table("rtb-untagged", None, vec![]),
    ]);
    let (h, own, mut backend) = started_tagged(&ec2).await;
    pass(&mut backend, &own, &peers(&[])).await.unwrap();
    assert_eq!(
        ec2.take_calls(),
        ["DescribeRouteTables", "CreateRoute rtb-a 10.244.1.0/24", "CreateRoute rtb-b 10.244.1.0/24"]
    );
    assert_eq!(ec2.route("rtb-a", "10.244.1.0/24").unwrap().target, Target::Interface("eni-1".into()));
    assert!(ec2.route("rtb-untagged", "10.244.1.0/24").is_none());
    // Steady state: one describe, no change.
    pass(&mut backend, &own, &peers(&[])).await.unwrap();
    assert_eq!(ec2.take_calls(), ["DescribeRouteTables"]);
    let metrics = h.ctx.health.metrics.encode();
    assert!(metrics.contains(r#"weft_cloud_routes_owned{provider="aws",table="rtb-a"} 1"#), "{metrics}");
}

/// With a store that shares the leader's view (etcd, memory; issue 17), only the leader
/// describes the tables once settled: the others decide from what it shares, and ask EC2 only
/// when they have something to write.
#[tokio::test]
async fn once_settled_only_the_leader_describes_the_tables() {
    let ec2 = FakeEc2::with_tables(vec![table("rtb-a", Some("az"), vec![]), table("rtb-b", Some("az"), vec![])]);
    let store = Arc::new(crate::store::memory::MemoryStore::new());
    let h = harness_on(&tagged_config(), store, tempfile::tempdir().unwrap());
    let (own1, own2) = (lease("10.244.1.0/24"), lease("10.244.2.0/24"));
    let mut first = started(&h, tagged_config(), ec2.clone(), node("i-1", "eni-1"), &own1).await;
    let mut second = started(&h, tagged_config(), ec2.clone(), node("i-2", "eni-2"), &own2).await;
    let (peers1, peers2) = (peers(&["10.244.2.0/24"]), peers(&["10.244.1.0/24"]));
    pass(&mut first, &own1, &peers1).await.unwrap();
    // The view the leader shared predates every route: a write is planned from EC2's answer.
    pass(&mut second, &own2, &peers2).await.unwrap();
    let calls = ec2.take_calls();
    assert_eq!(calls.iter().filter(|c| *c == "DescribeRouteTables").count(), 2, "{calls:?}");
    assert_eq!(calls.iter().filter(|c| c.starts_with("CreateRoute")).count(), 4, "{calls:?}");
    for _ in 0..3 {
        pass(&mut first, &own1, &peers1).await.unwrap();
        pass(&mut second, &own2, &peers2).await.unwrap();
        assert_eq!(ec2.take_calls(), ["DescribeRouteTables"], "the leader's describe, nothing else");
    }
    // Someone deletes the follower's route: the leader's next view shows it, and the follower
    // describes before it writes the route back.
    ec2.edit("rtb-b", |t| t.routes.retain(|r| r.destination != net("10.244.2.0/24"))).unwrap();
    pass(&mut first, &own1, &peers1).await.unwrap();
    pass(&mut second, &own2, &peers2).await.unwrap();
    assert_eq!(
        ec2.take_calls(),
        ["DescribeRouteTables", "DescribeRouteTables", "CreateRoute rtb-b 10.244.2.0/24"],
        "the leader's describe, then the follower's own before its write"
    );
    assert!(ec2.route("rtb-b", "10.244.2.0/24").is_some());
}

fn dual_lease(subnet: &str, subnet_v6: &str) -> Lease {
    Lease { subnet_v6: Some(subnet_v6.parse().unwrap()), ..lease(subnet) }
}

/// Dual-stack: the IPv6 subnet gets its route (`DestinationIpv6CidrBlock` to our interface) in
/// every table beside the IPv4 one; a stale IPv6 route goes as an IPv4 one does; the cloud
/// carries a peer once both of its routes are in our table; teardown removes both of ours.
#[tokio::test(start_paused = true)]
async fn dual_stack_routes_both_families_in_every_table() {
    let stale_v6 = api_route(net("2001:db8:42:9::/64"), Target::Interface("eni-9".into()));
    let foreign_v6 = api_route(net("2001:db8:99::/64"), Target::Interface("eni-9".into()));
    // rtb-a is our subnet's table: what the VPC applies to our packets.
    let ours =
        RouteTable { subnets: vec!["subnet-a".into()], ..table("rtb-a", Some("az"), vec![stale_v6, foreign_v6]) };
    let ec2 = FakeEc2::with_tables(vec![ours, table("rtb-b", Some("az"), vec![])]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path()).unwrap());
    let h = harness_of(&tagged_config(), store, dir, "2001:db8:42::/56");
    let own = dual_lease("10.244.1.0/24", "2001:db8:42:1::/64");
    let paths = CloudPaths::default();
    let registered =
        AwsVpc::new(&h.ctx, tagged_config(), paths.clone()).unwrap().registered(ec2.clone(), node("i-1", "eni-1"));
    let mut backend = registered.activate(&own);
    let peer = dual_lease("10.244.2.0/24", "2001:db8:42:2::/64");
    let peers: LeaseMap = [(peer.id(), peer.clone())].into();
    pass(&mut backend, &own, &peers).await.unwrap();
    let calls = ec2.take_calls();
    for table in ["rtb-a", "rtb-b"] {
        for subnet in ["10.244.1.0/24", "2001:db8:42:1::/64"] {
            assert!(calls.contains(&format!("CreateRoute {table} {subnet}")), "{calls:?}");
            assert_eq!(ec2.route(table, subnet).unwrap().target, Target::Interface("eni-1".into()));
        }
    }
    // The leader's second sighting, after the grace, removes the IPv6 route nobody leases; the
    // one outside the cluster's IPv6 network is not weft's.
    tokio::time::advance(crate::backend::cloud::stale::STALE_GRACE).await;
    pass(&mut backend, &own, &peers).await.unwrap();
    assert!(ec2.route("rtb-a", "2001:db8:42:9::/64").is_none(), "{:?}", ec2.take_calls());
    assert!(ec2.route("rtb-a", "2001:db8:99::/64").is_some());
    // The peer's routes: carried once both families are there.
    ec2.edit("rtb-a", |t| t.routes.push(api_route(net("10.244.2.0/24"), Target::Interface("eni-2".into())))).unwrap();
    pass(&mut backend, &own, &peers).await.unwrap();
    assert!(paths.carries(net("10.244.2.0/24")) && !paths.carries_all(&peer.key()), "IPv6 not carried yet");
    ec2.edit("rtb-a", |t| t.routes.push(api_route(net("2001:db8:42:2::/64"), Target::Interface("eni-2".into()))))
        .unwrap();
    pass(&mut backend, &own, &peers).await.unwrap();
    assert!(paths.carries_all(&peer.key()));
    ec2.take_calls();
    Box::new(backend).teardown().await.unwrap();
    for table in ["rtb-a", "rtb-b"] {
        assert!(ec2.route(table, "10.244.1.0/24").is_none() && ec2.route(table, "2001:db8:42:1::/64").is_none());
    }
    assert!(ec2.route("rtb-a", "2001:db8:42:2::/64").is_some(), "a peer's route stays");
}

#[tokio::test]
async fn conflicting_and_blackhole_routes_are_replaced() {
    let mut hole = api_route(net("10.244.1.0/24"), Target::Instance("i-gone".into()));
    hole.blackhole = true;
    let ec2 = FakeEc2::with_tables(vec![
        table("rtb-a", Some("az"), vec![api_route(net("10.244.1.0/24"), Target::Interface("eni-other".into()))]),
        table("rtb-b", Some("az"), vec![hole]),
    ]);
    let (_h, own, mut backend) = started_tagged(&ec2).await;
    pass(&mut backend, &own, &peers(&[])).await.unwrap();
    assert_eq!(
        ec2.take_calls(),
        ["DescribeRouteTables", "ReplaceRoute rtb-a 10.244.1.0/24", "ReplaceRoute rtb-b 10.244.1.0/24"]
    );
    let route = ec2.route("rtb-b", "10.244.1.0/24").unwrap();
    assert!(!route.blackhole && route.target == Target::Interface("eni-1".into()));
}

#[tokio::test]
async fn full_table_is_reported_and_others_still_get_the_route() {
    let ec2 = FakeEc2::with_tables(vec![table("rtb-a", Some("az"), vec![]), table("rtb-b", Some("az"), vec![])]);
    ec2.full.lock().unwrap().push("rtb-a".into());
    let (h, own, mut backend) = started_tagged(&ec2).await;
    let err = pass(&mut backend, &own, &peers(&[])).await.unwrap_err();
    assert!(
        err.starts_with("aws-vpc: route table rtb-a is full: 1 routes (50 is the default limit, 1000 at most)"),
        "{err}"
    );
    assert!(ec2.route("rtb-b", "10.244.1.0/24").is_some());
    assert_eq!(h.ctx.health.readiness().problem(Condition::Cloud), Some(err.as_str()));
    let metrics = h.ctx.health.metrics.encode();
    assert!(metrics.contains(r#"weft_cloud_route_limit_reached{provider="aws",table="rtb-a"} 1"#), "{metrics}");
    // The cloud condition stays failed until a pass succeeds; the backend's own check is fine.
    assert!(backend.check(&own, &peers(&[]), false).await.is_ok());
    assert!(h.ctx.health.readiness().problem(Condition::Cloud).is_some());
    // The quota raised: EC2 is asked again once its refusal is old, and the route goes in.
    ec2.full.lock().unwrap().clear();
    ec2.take_calls();
    let mut passes = 0;
    while pass(&mut backend, &own, &peers(&[])).await.is_err() {
        passes += 1;
        assert!(passes <= crate::backend::cloud::room::TRUSTED_CHECKS, "never tried again");
    }
    assert_eq!(passes, crate::backend::cloud::room::TRUSTED_CHECKS);
    let creates = ec2.take_calls().iter().filter(|c| c.starts_with("CreateRoute rtb-a")).count();
    assert_eq!(creates, 1, "not asked while the refusal was trusted");
    assert_eq!(h.ctx.health.readiness().problem(Condition::Cloud), None);
}

#[tokio::test(start_paused = true)]
async fn one_leader_removes_stale_and_blackhole_routes() {
    let mut hole = api_route(net("10.244.7.0/24"), Target::Interface("eni-gone".into()));
    hole.blackhole = true;
    let routes = vec![
        api_route(net("10.244.2.0/24"), Target::Interface("eni-2".into())),
        api_route(net("10.244.9.0/24"), Target::Interface("eni-dead".into())),
        hole,
        api_route(net("172.16.0.0/24"), Target::Interface("eni-elsewhere".into())),
    ];
    let ec2 = FakeEc2::with_tables(vec![table("rtb-a", Some("az"), routes)]);
    let h = harness(&tagged_config());
    let (own1, own2) = (lease("10.244.1.0/24"), lease("10.244.2.0/24"));
    let mut first = started(&h, tagged_config(), ec2.clone(), node("i-1", "eni-1"), &own1).await;
    let mut second = started(&h, tagged_config(), ec2.clone(), node("i-2", "eni-2"), &own2).await;
    let deletes = |ec2: &FakeEc2| -> Vec<String> {
        ec2.take_calls().into_iter().filter(|c| c.starts_with("DeleteRoute")).collect()
    };
    pass(&mut first, &own1, &peers(&["10.244.2.0/24"])).await.unwrap();
    pass(&mut second, &own2, &peers(&["10.244.1.0/24"])).await.unwrap();
    // A blackhole goes at once; a route without a lease only when the next pass still finds it so.
    assert_eq!(deletes(&ec2), ["DeleteRoute rtb-a 10.244.7.0/24"]);
    pass(&mut second, &own2, &peers(&["10.244.1.0/24"])).await.unwrap();
    assert_eq!(deletes(&ec2), Vec::<String>::new(), "not the leader");
    // A pass right after (a lease event) is too soon: a lease may still be on its way.
    pass(&mut first, &own1, &peers(&["10.244.2.0/24"])).await.unwrap();
    assert_eq!(deletes(&ec2), Vec::<String>::new(), "confirmed before the grace");
    tokio::time::advance(crate::backend::cloud::stale::STALE_GRACE).await;
    pass(&mut first, &own1, &peers(&["10.244.2.0/24"])).await.unwrap();
    assert_eq!(deletes(&ec2), ["DeleteRoute rtb-a 10.244.9.0/24"]);
    assert!(ec2.route("rtb-a", "172.16.0.0/24").is_some(), "outside the network: untouched");
    assert!(ec2.route("rtb-a", "10.244.2.0/24").is_some(), "leased: untouched");
}

#[tokio::test]
async fn fallback_association_then_main() {
    let mut assoc = table("rtb-assoc", None, vec![]);
    assoc.subnets = vec!["subnet-a".into()];
    let mut main = table("rtb-main", None, vec![]);
    main.main = true;
    let ec2 = FakeEc2::with_tables(vec![assoc, main]);
    let h = harness(&AwsVpcConfig::default());
    let own = lease("10.244.1.0/24");
    let mut backend = started(&h, AwsVpcConfig::default(), ec2.clone(), node("i-1", "eni-1"), &own).await;
    pass(&mut backend, &own, &peers(&[])).await.unwrap();
    assert!(ec2.route("rtb-assoc", "10.244.1.0/24").is_some());
    assert!(ec2.route("rtb-main", "10.244.1.0/24").is_none());

    let mut other = node("i-2", "eni-2");
    other.subnet_id = "subnet-b".into();
    let own2 = lease("10.244.2.0/24");
    let mut backend2 = started(&h, AwsVpcConfig::default(), ec2.clone(), other, &own2).await;
    pass(&mut backend2, &own2, &peers(&[])).await.unwrap();
    assert!(ec2.route("rtb-main", "10.244.2.0/24").is_some());
}

#[tokio::test]
async fn recheck_paces_unforced_checks() {
    let ec2 = FakeEc2::with_tables(vec![table("rtb-a", Some("az"), vec![])]);
    // The shortest recheck a config may set (`RECHECK_RANGE`).
    let recheck = Duration::from_secs(1);
    let config = AwsVpcConfig { recheck, ..tagged_config() };
    let h = harness(&config);
    let own = lease("10.244.1.0/24");
    let mut backend = started(&h, config, ec2.clone(), node("i-1", "eni-1"), &own).await;
    pass(&mut backend, &own, &peers(&[])).await.unwrap();
    ec2.take_calls();
    for _ in 0..3 {
        backend.check(&own, &peers(&[]), false).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(ec2.take_calls().is_empty(), "no pass before recheck elapsed");
    tokio::time::sleep(recheck).await;
    backend.check(&own, &peers(&[]), false).await.unwrap();
    backend.outcomes.changed().await.unwrap();
    assert_eq!(ec2.take_calls(), ["DescribeRouteTables"]);
}

#[tokio::test]
async fn a_moved_lease_takes_its_old_route_along() {
    let ec2 = FakeEc2::with_tables(vec![table("rtb-a", Some("az"), vec![])]);
    let h = harness(&tagged_config());
    let (old, new) = (lease("10.244.1.0/24"), lease("10.244.3.0/24"));
    let mut backend = started(&h, tagged_config(), ec2.clone(), node("i-1", "eni-1"), &old).await;
    pass(&mut backend, &old, &peers(&[])).await.unwrap();
    // Another agent leads: our own old route still goes.
    h.ctx.store.lead(worker::LEADERSHIP, "i-other", Duration::from_secs(600)).await.unwrap();
    pass(&mut backend, &new, &peers(&[])).await.unwrap();
    assert!(ec2.route("rtb-a", "10.244.1.0/24").is_none());
    assert!(ec2.route("rtb-a", "10.244.3.0/24").is_some());
}

#[tokio::test]
async fn teardown_removes_only_routes_to_us() {
    let ec2 = FakeEc2::with_tables(vec![
        table("rtb-a", Some("az"), vec![]),
        table("rtb-b", Some("az"), vec![api_route(net("10.244.1.0/24"), Target::Interface("eni-new-owner".into()))]),
    ]);
    let (_h, own, mut backend) = started_tagged(&ec2).await;
    pass(&mut backend, &own, &peers(&[])).await.unwrap();
    // rtb-b's route went to another node since (our subnet is its now): not ours to delete.
    ec2.edit("rtb-b", |t| t.routes[1].target = Target::Interface("eni-new-owner".into())).unwrap();
    ec2.take_calls();
    Box::new(backend).teardown().await.unwrap();
    assert_eq!(ec2.take_calls(), ["DescribeRouteTables", "DeleteRoute rtb-a 10.244.1.0/24"]);
    assert!(ec2.route("rtb-b", "10.244.1.0/24").is_some());
}

#[test]
fn bad_config_is_refused() {
    let config = AwsVpcConfig { route_table_tag: "no-equals".into(), ..Default::default() };
    let h = harness(&config);
    let err = AwsVpc::new(&h.ctx, config, CloudPaths::default()).err().unwrap();
    assert!(err.to_string().contains("key=value"), "{err}");
}

/// The stale-route bug: passes ran only when the agent asked (its 60 s resync), so a route left
/// by a gone node outlived `recheck` many times over. The engine keeps its own pace now.
#[tokio::test]
async fn the_leader_removes_a_stale_route_within_a_few_rechecks_unasked() {
    let stale = api_route(net("10.244.250.0/24"), Target::Interface("eni-gone".into()));
    let ec2 = FakeEc2::with_tables(vec![table("rtb-a", Some("az"), vec![stale])]);
    let config = AwsVpcConfig { recheck: Duration::from_secs(1), ..tagged_config() };
    let h = harness(&config);
    let own = lease("10.244.1.0/24");
    let mut backend = started(&h, config, ec2.clone(), node("i-1", "eni-1"), &own).await;
    backend.check(&own, &peers(&[]), false).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ec2.route("rtb-a", "10.244.250.0/24").is_some() {
        assert!(std::time::Instant::now() < deadline, "stale route still there: {:?}", ec2.take_calls());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let describes = ec2.take_calls().iter().filter(|c| *c == "DescribeRouteTables").count();
    assert!((2..=3).contains(&describes), "seen twice, then removed: {describes} passes");
}

/// Overflow on, `route_limit` reached: no CreateRoute is even tried, `/readyz` stays ready, and
/// the peers the table carries are counted as the cloud's.
#[tokio::test]
async fn a_full_table_with_overflow_is_no_error() {
    let routes = vec![
        api_route(net("10.244.2.0/24"), Target::Interface("eni-2".into())),
        api_route(net("10.244.3.0/24"), Target::Interface("eni-3".into())),
    ];
    let ec2 = FakeEc2::with_tables(vec![table("rtb-a", Some("az"), routes)]);
    let config = AwsVpcConfig { route_limit: Some(2), overflow: Some(Overflow::Vxlan), ..tagged_config() };
    let h = harness(&config);
    let own = lease("10.244.1.0/24");
    let mut backend = started(&h, config.clone(), ec2.clone(), node("i-1", "eni-1"), &own).await;
    let leased = peers(&["10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24"]);
    pass(&mut backend, &own, &leased).await.unwrap();
    assert_eq!(ec2.take_calls(), ["DescribeRouteTables"], "route_limit: nothing tried");
    assert_eq!(h.ctx.health.readiness().problem(Condition::Cloud), None);
    let metrics = h.ctx.health.metrics.encode();
    for line in [
        r#"weft_peers{path="cloud"} 2"#,
        r#"weft_peers{path="overlay"} 1"#,
        r#"weft_cloud_route_capacity{provider="aws",table="rtb-a"} 2"#,
        r#"weft_cloud_routes{provider="aws",table="rtb-a"} 2"#,
        r#"weft_cloud_route_limit_reached{provider="aws",table="rtb-a"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // Without overflow the same table is a readiness problem naming the limit.
    let strict = AwsVpcConfig { overflow: None, ..config };
    let h = harness(&strict);
    let mut backend = started(&h, strict, ec2.clone(), node("i-1", "eni-1"), &own).await;
    let err = pass(&mut backend, &own, &leased).await.unwrap_err();
    assert!(err.contains("route_limit = 2"), "{err}");
}

/// A table EC2 found full is not asked again until a route went: then our route goes in.
#[tokio::test]
async fn a_refused_table_is_tried_again_once_a_slot_is_free() {
    let routes = vec![api_route(net("10.244.2.0/24"), Target::Interface("eni-2".into()))];
    let ec2 = FakeEc2::with_tables(vec![table("rtb-a", Some("az"), routes)]);
    ec2.full.lock().unwrap().push("rtb-a".into());
    let config = AwsVpcConfig { overflow: Some(Overflow::Vxlan), ..tagged_config() };
    let h = harness(&config);
    let own = lease("10.244.1.0/24");
    let mut backend = started(&h, config, ec2.clone(), node("i-1", "eni-1"), &own).await;
    let leased = peers(&["10.244.2.0/24"]);
    pass(&mut backend, &own, &leased).await.unwrap();
    assert_eq!(ec2.take_calls(), ["DescribeRouteTables", "CreateRoute rtb-a 10.244.1.0/24"]);
    pass(&mut backend, &own, &leased).await.unwrap();
    assert_eq!(ec2.take_calls(), ["DescribeRouteTables"], "no call bound to fail");
    // The peer left and its route went: the slot is ours.
    ec2.full.lock().unwrap().clear();
    ec2.edit("rtb-a", |t| t.routes.retain(|r| r.destination != net("10.244.2.0/24"))).unwrap();
    pass(&mut backend, &own, &peers(&[])).await.unwrap();
    assert_eq!(ec2.take_calls(), ["DescribeRouteTables", "CreateRoute rtb-a 10.244.1.0/24"]);
    assert!(ec2.route("rtb-a", "10.244.1.0/24").is_some());
}

/// A lease in the store that does not parse still holds its subnet: its route is never stale.
#[tokio::test(start_paused = true)]
async fn an_unreadable_lease_keeps_its_route() {
    let held = api_route(net("10.244.9.0/24"), Target::Interface("eni-9".into()));
    let ec2 = FakeEc2::with_tables(vec![table("rtb-a", Some("az"), vec![held])]);
    let (_h, own, mut backend) = started_tagged(&ec2).await;
    backend.unreadable_leases(&[lease("10.244.9.0/24").key()].into());
    for _ in 0..3 {
        pass(&mut backend, &own, &peers(&[])).await.unwrap();
    }
    assert!(ec2.route("rtb-a", "10.244.9.0/24").is_some(), "{:?}", ec2.take_calls());
    // Once it is gone from the store for good, the leader's two passes remove it.
    backend.unreadable_leases(&Default::default());
    pass(&mut backend, &own, &peers(&[])).await.unwrap();
    tokio::time::advance(crate::backend::cloud::stale::STALE_GRACE).await;
    pass(&mut backend, &own, &peers(&[])).await.unwrap();
    assert!(ec2.route("rtb-a", "10.244.9.0/24").is_none());
}
