//! Pure decisions of the aws-vpc backend: which route tables are ours to write, what to do with
//! our subnet's route in each, and which routes are provably stale. No I/O: the worker feeds
//! EC2's answers in and carries the plan out.

use std::collections::BTreeSet;

use ipnet::IpNet;
use weft_aws::{Origin, RouteTable, TableFilter, Target};

use crate::backend::cloud::same_family;
use crate::network::Network;

/// Route tables hold 50 routes unless AWS raised the quota; 1000 is the most it grants.
pub const DEFAULT_ROUTE_LIMIT: usize = 50;
pub const MAX_ROUTE_LIMIT: usize = 1000;

/// How the tables are chosen, from `route_table_ids` / `route_table_tag` (first one set wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableMode {
    Explicit(Vec<String>),
    Tagged {
        key: String,
        value: String,
    },
    /// The table associated with the node's subnet, else the VPC's main table.
    Fallback,
}

impl TableMode {
    pub fn from_config(ids: &[String], tag: &str) -> Result<TableMode, String> {
        if !ids.is_empty() {
            if let Some(bad) = ids.iter().find(|id| !id.starts_with("rtb-")) {
                return Err(format!("route_table_ids: {bad:?} is not a route table id (rtb-…)"));
            }
            return Ok(TableMode::Explicit(ids.to_vec()));
        }
        if tag.is_empty() {
            return Ok(TableMode::Fallback);
        }
        match tag.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok(TableMode::Tagged { key: key.trim().to_string(), value: value.trim().to_string() })
            }
            _ => Err(format!("route_table_tag = {tag:?}: expected key=value")),
        }
    }

    /// The one DescribeRouteTables filter that finds the candidates.
    pub fn filter(&self, vpc: &str) -> TableFilter {
        match self {
            TableMode::Explicit(ids) => TableFilter::Ids(ids.clone()),
            TableMode::Tagged { key, value } => {
                TableFilter::Tagged { vpc: vpc.to_string(), key: key.clone(), value: value.clone() }
            }
            // Every table of the VPC in one call; association and main are picked here.
            TableMode::Fallback => TableFilter::Vpc { vpc: vpc.to_string() },
        }
    }

    /// The tables to write among `found` (the answer to [`TableMode::filter`]).
    pub fn choose(&self, subnet: &str, found: Vec<RouteTable>) -> Result<Vec<RouteTable>, String> {
        match self {
            TableMode::Explicit(ids) => {
                let missing: Vec<&str> =
                    ids.iter().filter(|id| !found.iter().any(|t| &t.id == *id)).map(String::as_str).collect();
                if !missing.is_empty() {
                    return Err(format!("route tables not found: {}", missing.join(", ")));
                }
                Ok(found)
            }
            TableMode::Tagged { key, value } => {
                let tagged: Vec<RouteTable> = found.into_iter().filter(|t| t.has_tag(key, value)).collect();
                if tagged.is_empty() {
                    return Err(format!("no route table in the VPC is tagged {key}={value}"));
                }
                Ok(tagged)
            }
            TableMode::Fallback => {
                let (associated, rest): (Vec<_>, Vec<_>) =
                    found.into_iter().partition(|t| t.subnets.iter().any(|s| s == subnet));
                if let Some(table) = associated.into_iter().next() {
                    return Ok(vec![table]);
                }
                match rest.into_iter().find(|t| t.main) {
                    Some(main) => Ok(vec![main]),
                    None => Err(format!("subnet {subnet} has no route table and its VPC no main table")),
                }
            }
        }
    }
}

/// What this node is and what the cluster holds, for one pass.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The cluster network of each family, with its lease size.
    pub network: &'a Network,
    /// Our subnets, a route each: IPv4, and IPv6 in a dual-stack network.
    pub own: &'a [IpNet],
    pub interface_id: &'a str,
    /// Every subnet with a lease, of either family (ours included).
    pub leased: &'a BTreeSet<IpNet>,
    /// Our previous subnets, when the lease moved: their routes to us go.
    pub retired: &'a [IpNet],
    /// Whether this agent holds the cleanup leadership.
    pub lead: bool,
}

/// Our subnet's route in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnRoute {
    /// Already to our interface.
    Keep,
    Create,
    /// Same CIDR, elsewhere or blackhole.
    Replace,
    /// Same CIDR held by a route the route API cannot change (local, propagated).
    Blocked(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Blackhole,
    NoLease,
    /// Our route to a subnet we no longer hold.
    Retired,
    /// Our route, in a table holding more than `route_limit` ([`crate::backend::cloud::room::beyond_limit`]).
    OverLimit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    /// What to do with the route to each of our subnets, in [`PlanInput::own`]'s order.
    pub own: Vec<(IpNet, OwnRoute)>,
    pub remove: Vec<(IpNet, Removal)>,
}

impl TablePlan {
    #[cfg(test)]
    pub fn is_noop(&self) -> bool {
        self.own.iter().all(|(_, own)| *own == OwnRoute::Keep) && self.remove.is_empty()
    }
}

pub fn plan_table(table: &RouteTable, input: &PlanInput) -> TablePlan {
    let own = input.own.iter().map(|own| (*own, own_route(table, *own, input.interface_id))).collect();
    let remove = table
        .routes
        .iter()
        .filter(|r| !input.own.contains(&r.destination))
        .filter_map(|r| removal(r, input).map(|why| (r.destination, why)))
        .collect();
    TablePlan { own, remove }
}

fn own_route(table: &RouteTable, own: IpNet, interface_id: &str) -> OwnRoute {
    match table.route(own) {
        None => OwnRoute::Create,
        Some(r) if r.origin != Origin::Api && r.origin != Origin::Unknown => OwnRoute::Blocked(format!(
            "{} holds a {:?} route to {own} that the route API cannot replace",
            table.id, r.origin
        )),
        Some(r) if !r.blackhole && r.target == Target::Interface(interface_id.to_string()) => OwnRoute::Keep,
        Some(_) => OwnRoute::Replace,
    }
}

/// Why `route` should go, when weft can prove it; `None` leaves it alone.
fn removal(route: &weft_aws::Route, input: &PlanInput) -> Option<Removal> {
    // Only routes made through the route API inside the cluster network are candidates: the
    // VPC's own, propagated ones and anything outside the network belong to someone else.
    if route.origin != Origin::Api || !input.network.covers(&route.destination) {
        return None;
    }
    let ours = route.target == Target::Interface(input.interface_id.to_string());
    if ours && input.retired.contains(&route.destination) && !input.leased.contains(&route.destination) {
        return Some(Removal::Retired);
    }
    // Only a route weft or flannel would have made is the leader's to judge: a subnet of the
    // lease size to an interface or instance. A blackhole of another size, or one whose gateway
    // went, is someone else's.
    let host_route = matches!(route.target, Target::Interface(_) | Target::Instance(_));
    if !input.lead || !host_route || !input.network.is_lease_sized(&route.destination) {
        return None;
    }
    if route.blackhole {
        return Some(Removal::Blackhole);
    }
    // Its subnet nobody leases any more.
    if !input.leased.contains(&route.destination) {
        return Some(Removal::NoLease);
    }
    None
}

/// The table the VPC applies to packets from our subnet, among `tables` (those we write): the one
/// associated with our subnet, else the main one, else the only one. `None`: we cannot tell, and
/// no peer counts as carried by the cloud.
pub fn own_table<'a>(tables: &'a [RouteTable], subnet: &str) -> Option<&'a RouteTable> {
    let associated = tables.iter().find(|t| t.subnets.iter().any(|s| s == subnet));
    let main = || tables.iter().find(|t| t.main);
    let only = || if tables.len() == 1 { tables.first() } else { None };
    associated.or_else(main).or_else(only)
}

/// The lease-sized subnets of the cluster network (either family) that `table` sends to a node's
/// interface or instance: the peers whose packets the VPC carries for us.
pub fn carried(table: &RouteTable, network: &Network) -> BTreeSet<IpNet> {
    table
        .routes
        .iter()
        .filter(|r| r.origin == Origin::Api && !r.blackhole && network.is_lease_sized(&r.destination))
        .filter(|r| matches!(r.target, Target::Interface(_) | Target::Instance(_)))
        .map(|r| r.destination)
        .collect()
}

/// Routes into the cluster network in `table`, whoever made them, of both families: what the
/// route metric shows.
pub fn cluster_routes(table: &RouteTable, network: &Network) -> usize {
    table.routes.iter().filter(|r| network.covers(&r.destination)).count()
}

/// Routes into the cluster network of `family`'s family: what `route_limit` counts, per family
/// as EC2 counts its routes-per-table quota.
pub fn family_routes(table: &RouteTable, network: &Network, family: IpNet) -> usize {
    table.routes.iter().filter(|r| same_family(&r.destination, &family) && network.covers(&r.destination)).count()
}

/// Whether `table` is below `route_limit` routes of the cluster network of `family`'s family
/// (none: no limit of ours).
pub fn under_limit(table: &RouteTable, network: &Network, family: IpNet, route_limit: Option<usize>) -> bool {
    route_limit.is_none_or(|limit| family_routes(table, network, family) < limit)
}

/// Whether our route to `own` in `table` ranks beyond `route_limit` among its family and must go
/// (see [`crate::backend::cloud::room::beyond_limit`]).
pub fn over_route_limit(table: &RouteTable, network: &Network, own: IpNet, limit: usize) -> bool {
    let hosts = carried(table, network).into_iter().filter(|s| same_family(s, &own)).collect();
    crate::backend::cloud::room::beyond_limit(&hosts, family_routes(table, network, own), own, limit)
}

/// Whether `table` routes `own` to our interface (what teardown removes).
pub fn routes_to_us(table: &RouteTable, own: IpNet, interface_id: &str) -> bool {
    table.route(own).is_some_and(|r| r.target == Target::Interface(interface_id.to_string()))
}

/// The message for a table that refused our route for lack of room: EC2's limit, or
/// `route_limit` when that is what was reached.
pub fn route_limit_message(table: &RouteTable, route_limit: Option<usize>) -> String {
    match route_limit {
        Some(limit) => format!(
            "route table {} is full: route_limit = {limit} routes of the cluster network reached",
            table.id
        ),
        _ => format!(
            "route table {} is full: {} routes ({DEFAULT_ROUTE_LIMIT} is the default limit, {MAX_ROUTE_LIMIT} at most); \
             ask AWS to raise the routes-per-route-table quota, or use fewer, larger subnets",
            table.id, table.route_count
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_aws::Route;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// 10.244.0.0/16 by /24 and 2001:db8:42::/56 by /64.
    fn network() -> &'static Network {
        static NETWORK: std::sync::OnceLock<Network> = std::sync::OnceLock::new();
        NETWORK.get_or_init(crate::network::dual_stack_for_tests)
    }

    /// Our subnets: IPv4 only, or both families.
    fn own(dual: bool) -> &'static [IpNet] {
        static OWN: std::sync::OnceLock<[IpNet; 2]> = std::sync::OnceLock::new();
        let both = OWN.get_or_init(|| [net("10.244.1.0/24"), net("2001:db8:42:1::/64")]);
        if dual {
            both
        } else {
            &both[..1]
        }
    }

    fn route(cidr: &str, target: Target) -> Route {
        Route { destination: net(cidr), target, blackhole: false, origin: Origin::Api }
    }

    fn eni(id: &str) -> Target {
        Target::Interface(id.into())
    }

    fn table(id: &str, routes: Vec<Route>) -> RouteTable {
        RouteTable {
            id: id.into(),
            vpc_id: "vpc-1".into(),
            route_count: routes.len(),
            routes,
            subnets: vec![],
            main: false,
            tags: vec![],
        }
    }

    fn input<'a>(leased: &'a BTreeSet<IpNet>, lead: bool) -> PlanInput<'a> {
        PlanInput { network: network(), own: own(false), interface_id: "eni-me", leased, retired: &[], lead }
    }

    fn leased(subnets: &[&str]) -> BTreeSet<IpNet> {
        subnets.iter().map(|s| net(s)).collect()
    }

    #[test]
    fn own_route_absent_ours_elsewhere_blackhole() {
        let l = leased(&["10.244.1.0/24"]);
        let p = |routes| plan_table(&table("rtb-1", routes), &input(&l, false)).own[0].1.clone();
        assert_eq!(p(vec![]), OwnRoute::Create);
        assert_eq!(p(vec![route("10.244.1.0/24", eni("eni-me"))]), OwnRoute::Keep);
        assert_eq!(p(vec![route("10.244.1.0/24", eni("eni-other"))]), OwnRoute::Replace);
        assert_eq!(p(vec![route("10.244.1.0/24", Target::Instance("i-1".into()))]), OwnRoute::Replace);
        let mut hole = route("10.244.1.0/24", eni("eni-me"));
        hole.blackhole = true;
        assert_eq!(p(vec![hole]), OwnRoute::Replace);
        let mut local = route("10.244.1.0/24", Target::Gateway("local".into()));
        local.origin = Origin::Local;
        assert!(matches!(p(vec![local]), OwnRoute::Blocked(_)));
    }

    #[test]
    fn steady_state_is_a_noop() {
        let l = leased(&["10.244.1.0/24", "10.244.2.0/24"]);
        let t = table(
            "rtb-1",
            vec![
                route("10.244.1.0/24", eni("eni-me")),
                route("10.244.2.0/24", eni("eni-peer")),
                route("0.0.0.0/0", Target::Gateway("igw-1".into())),
            ],
        );
        assert!(plan_table(&t, &input(&l, true)).is_noop());
    }

    #[test]
    fn stale_and_blackhole_only_for_the_leader() {
        let l = leased(&["10.244.1.0/24", "10.244.2.0/24"]);
        let mut hole = route("10.244.2.0/24", eni("eni-gone"));
        hole.blackhole = true;
        let t =
            table("rtb-1", vec![route("10.244.1.0/24", eni("eni-me")), hole, route("10.244.9.0/24", eni("eni-old"))]);
        assert!(plan_table(&t, &input(&l, false)).remove.is_empty());
        let plan = plan_table(&t, &input(&l, true));
        assert_eq!(
            plan.remove,
            vec![(net("10.244.2.0/24"), Removal::Blackhole), (net("10.244.9.0/24"), Removal::NoLease)]
        );
    }

    #[test]
    fn never_touched() {
        let l = leased(&["10.244.1.0/24"]);
        let mut local = route("10.0.0.0/16", Target::Gateway("local".into()));
        local.origin = Origin::Local;
        let mut propagated = route("10.244.7.0/24", Target::Gateway("vgw-1".into()));
        propagated.origin = Origin::Propagated;
        let mut outside_hole = route("192.168.0.0/24", eni("eni-x"));
        outside_hole.blackhole = true;
        // Blackholes inside the network that weft did not make: another size (an operator's
        // drop rule), or a lease-sized one whose NAT gateway went.
        let mut wide_hole = route("10.244.64.0/18", eni("eni-gone"));
        wide_hole.blackhole = true;
        let mut gateway_hole = route("10.244.9.0/24", Target::Gateway("nat-gone".into()));
        gateway_hole.blackhole = true;
        let t = table(
            "rtb-1",
            vec![
                local,
                propagated,
                outside_hole,
                wide_hole,
                gateway_hole,
                // Outside the network, no lease: not ours to judge.
                route("172.16.5.0/24", eni("eni-x")),
                // Inside, but not a lease-sized host route, or to a gateway: cannot prove stale.
                route("10.244.128.0/17", eni("eni-x")),
                route("10.244.8.0/24", Target::Gateway("nat-1".into())),
            ],
        );
        assert_eq!(plan_table(&t, &input(&l, true)).remove, vec![]);
    }

    #[test]
    fn retired_subnet_route_to_us_goes_without_leadership() {
        let l = leased(&["10.244.1.0/24"]);
        let mut i = input(&l, false);
        let retired = [net("10.244.5.0/24")];
        i.retired = &retired;
        let t = table("rtb-1", vec![route("10.244.5.0/24", eni("eni-me")), route("10.244.1.0/24", eni("eni-me"))]);
        assert_eq!(plan_table(&t, &i).remove, vec![(net("10.244.5.0/24"), Removal::Retired)]);
        // Someone else's by now: left to its owner.
        let t = table("rtb-1", vec![route("10.244.5.0/24", eni("eni-new"))]);
        assert_eq!(plan_table(&t, &i).remove, vec![]);
    }

    /// A dual-stack node: a route per family, each planned on its own; a stale IPv6 route goes
    /// as an IPv4 one does, and IPv6 routes outside the cluster's IPv6 network are left alone.
    #[test]
    fn both_families_planned_each_on_its_own() {
        let l = leased(&["10.244.1.0/24", "2001:db8:42:1::/64", "10.244.2.0/24", "2001:db8:42:2::/64"]);
        let mut i = input(&l, true);
        i.own = own(true);
        let t = table(
            "rtb-1",
            vec![
                route("10.244.1.0/24", eni("eni-me")),
                route("2001:db8:42:2::/64", eni("eni-2")),
                route("2001:db8:42:9::/64", eni("eni-gone")),
                route("2001:db8:99:9::/64", eni("eni-gone")),
                route("2001:db8:42::/60", eni("eni-x")),
            ],
        );
        let plan = plan_table(&t, &i);
        assert_eq!(
            plan.own,
            vec![(net("10.244.1.0/24"), OwnRoute::Keep), (net("2001:db8:42:1::/64"), OwnRoute::Create)]
        );
        assert_eq!(plan.remove, vec![(net("2001:db8:42:9::/64"), Removal::NoLease)]);
        let held =
            table("rtb-1", vec![route("10.244.1.0/24", eni("eni-me")), route("2001:db8:42:1::/64", eni("eni-me"))]);
        assert!(plan_table(&held, &i).is_noop());
        assert!(routes_to_us(&held, net("2001:db8:42:1::/64"), "eni-me"));
    }

    #[test]
    fn table_modes() {
        assert_eq!(TableMode::from_config(&[], "").unwrap(), TableMode::Fallback);
        assert_eq!(
            TableMode::from_config(&[], "weft = az").unwrap(),
            TableMode::Tagged { key: "weft".into(), value: "az".into() }
        );
        assert!(TableMode::from_config(&[], "novalue").is_err());
        assert!(TableMode::from_config(&["x-1".into()], "").is_err());
        let explicit = TableMode::from_config(&["rtb-1".into()], "k=v").unwrap();
        assert_eq!(explicit.filter("vpc-1"), TableFilter::Ids(vec!["rtb-1".into()]));
    }

    #[test]
    fn choose_tagged_association_main() {
        let mut a = table("rtb-a", vec![]);
        a.tags = vec![("weft".into(), "1".into())];
        let b = table("rtb-b", vec![]);
        let tagged = TableMode::Tagged { key: "weft".into(), value: "1".into() };
        let ids = |ts: Vec<RouteTable>| ts.into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(ids(tagged.choose("subnet-1", vec![a.clone(), b.clone()]).unwrap()), ["rtb-a"]);
        assert!(tagged.choose("subnet-1", vec![b.clone()]).is_err());

        let mut main = table("rtb-main", vec![]);
        main.main = true;
        let mut assoc = table("rtb-assoc", vec![]);
        assoc.subnets = vec!["subnet-1".into()];
        let fallback = TableMode::Fallback;
        assert_eq!(ids(fallback.choose("subnet-1", vec![main.clone(), assoc.clone()]).unwrap()), ["rtb-assoc"]);
        assert_eq!(ids(fallback.choose("subnet-2", vec![main.clone(), assoc]).unwrap()), ["rtb-main"]);
        assert!(fallback.choose("subnet-2", vec![b]).is_err());

        let explicit = TableMode::Explicit(vec!["rtb-a".into(), "rtb-x".into()]);
        assert!(explicit.choose("s", vec![a]).unwrap_err().contains("rtb-x"));
    }

    #[test]
    fn own_table_association_main_only() {
        let mut assoc = table("rtb-assoc", vec![]);
        assoc.subnets = vec!["subnet-a".into()];
        let mut main = table("rtb-main", vec![]);
        main.main = true;
        let other = table("rtb-other", vec![]);
        let id = |t: Option<&RouteTable>| t.map(|t| t.id.clone());
        let all = [other.clone(), main.clone(), assoc.clone()];
        assert_eq!(id(own_table(&all, "subnet-a")).as_deref(), Some("rtb-assoc"));
        assert_eq!(id(own_table(&all, "subnet-b")).as_deref(), Some("rtb-main"));
        assert_eq!(id(own_table(std::slice::from_ref(&other), "subnet-b")).as_deref(), Some("rtb-other"));
        assert_eq!(own_table(&[other.clone(), other], "subnet-b"), None);
    }

    #[test]
    fn carried_are_live_host_routes_of_the_network() {
        let mut hole = route("10.244.4.0/24", eni("eni-gone"));
        hole.blackhole = true;
        let t = table(
            "rtb-1",
            vec![
                route("10.244.2.0/24", eni("eni-2")),
                route("10.244.3.0/24", Target::Instance("i-3".into())),
                hole,
                route("10.244.5.0/24", Target::Gateway("nat-1".into())),
                route("10.244.128.0/17", eni("eni-x")),
                route("172.16.0.0/24", eni("eni-y")),
                route("2001:db8:42:2::/64", eni("eni-2")),
                route("2001:db8:42::/60", eni("eni-x")),
                route("2001:db8:99::/64", eni("eni-y")),
            ],
        );
        let got = carried(&t, network());
        assert_eq!(got, [net("10.244.2.0/24"), net("10.244.3.0/24"), net("2001:db8:42:2::/64")].into());
        assert_eq!(cluster_routes(&t, network()), 7);
    }

    #[test]
    fn route_limit_counts_the_cluster_networks_routes() {
        let (v4, v6) = (net("10.244.1.0/24"), net("2001:db8:42:1::/64"));
        let t = table(
            "rtb-1",
            vec![
                route("10.244.2.0/24", eni("eni-2")),
                route("0.0.0.0/0", eni("eni-gw")),
                route("2001:db8:42:2::/64", eni("eni-2")),
                route("2001:db8:42:3::/64", eni("eni-3")),
            ],
        );
        assert!(under_limit(&t, network(), v4, None));
        assert!(under_limit(&t, network(), v4, Some(2)));
        assert!(!under_limit(&t, network(), v4, Some(1)), "one cluster route, limit one");
        // EC2 counts each family against its own quota: two IPv6 routes, room for an IPv4 one.
        assert!(!under_limit(&t, network(), v6, Some(2)) && under_limit(&t, network(), v4, Some(2)));
    }

    #[test]
    fn past_route_limit_the_highest_host_subnets_withdraw() {
        let routes = ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"].map(|d| route(d, eni("eni-x")));
        let mut t = table("rtb-1", routes.to_vec());
        let over = |t: &RouteTable, own: &str, limit| over_route_limit(t, network(), net(own), limit);
        assert!(!over(&t, "10.244.3.0/24", 3), "at the limit: kept");
        assert!(over(&t, "10.244.3.0/24", 2) && !over(&t, "10.244.2.0/24", 2));
        // The IPv6 routes rank among themselves: the IPv4 ones take none of their slots.
        t.routes.extend(["2001:db8:42:1::/64", "2001:db8:42:2::/64"].map(|d| route(d, eni("eni-x"))));
        assert!(!over(&t, "2001:db8:42:2::/64", 2) && over(&t, "2001:db8:42:2::/64", 1));
        assert!(!over(&t, "10.244.2.0/24", 2), "the IPv6 routes take no IPv4 slot");
        // A gateway route inside the network is nobody's to withdraw: it takes the first slot.
        t.routes.push(route("10.244.128.0/17", Target::Gateway("igw-1".into())));
        assert!(over(&t, "10.244.2.0/24", 2) && !over(&t, "10.244.1.0/24", 2));
    }

    #[test]
    fn limit_message_names_table_and_limits() {
        let mut t = table("rtb-full", vec![]);
        t.route_count = 50;
        let m = route_limit_message(&t, None);
        assert!(m.starts_with("route table rtb-full is full: 50 routes"), "{m}");
        assert!(m.contains("1000"), "{m}");
    }
}
