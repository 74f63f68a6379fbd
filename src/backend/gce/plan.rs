//! What to do about GCE routes, decided without I/O: route names, which route is ours (our own
//! name, or flannel's adopted), what to delete and insert, and which routes are stale.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use weft_gce::{same_resource, Route, RouteSpec};

use crate::network::Network;

/// flannel's gce backend names its routes `flannel-<a-b-c-d>-<len>`.
pub const FLANNEL_PREFIX: &str = "flannel-";

/// `<prefix><a-b-c-d>-<len>`, flannel's naming with our prefix; an IPv6 subnet the same way, its
/// colons as dashes (`weft-2001-db8-42-3---64`: GCE names take only `[-a-z0-9]`).
pub fn route_name(prefix: &str, subnet: IpNet) -> String {
    let addr = subnet.network().to_string().replace(['.', ':'], "-");
    format!("{prefix}{addr}-{}", subnet.prefix_len())
}

/// The subnet a route name stands for, when it has `prefix` and is well formed. A name reads as
/// one family only: four decimal parts cannot be an IPv6 address, nor an IPv6 one IPv4.
pub fn parse_route_name(prefix: &str, name: &str) -> Option<IpNet> {
    let rest = name.strip_prefix(prefix)?;
    let (addr, len) = rest.rsplit_once('-')?;
    let addr: IpAddr = match addr.replace('-', ".").parse::<Ipv4Addr>() {
        Ok(v4) => v4.into(),
        Err(_) => addr.replace('-', ":").parse::<Ipv6Addr>().ok()?.into(),
    };
    let net = IpNet::new(addr, len.parse().ok()?).ok()?;
    // A name whose address has host bits is not one we wrote (and not the same as the trunc).
    (net.network() == addr).then_some(net)
}

/// The route this host needs: its subnet through its instance, in its network.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub subnet: IpNet,
    pub network: String,
    pub instance: String,
    pub priority: u32,
    pub tags: Vec<String>,
}

impl Target {
    pub fn spec(&self, prefix: &str) -> RouteSpec {
        RouteSpec {
            name: route_name(prefix, self.subnet),
            dest_range: self.subnet,
            network: self.network.clone(),
            next_hop_instance: self.instance.clone(),
            priority: self.priority,
            tags: self.tags.clone(),
            description: format!("weft: pod subnet {} via this instance", self.subnet),
        }
    }

    /// Same destination, network and next hop: the route carries our traffic.
    fn carries(&self, route: &Route) -> bool {
        route.dest_range.parse::<IpNet>().ok() == Some(self.subnet)
            && same_resource(&route.network, &self.network)
            && route.next_hop_instance.as_deref().is_some_and(|hop| same_resource(hop, &self.instance))
    }

    /// Exactly the route we would insert (priority and tags too).
    fn is_exactly(&self, route: &Route) -> bool {
        let tags = |t: &[String]| t.iter().cloned().collect::<BTreeSet<_>>();
        self.carries(route) && route.priority == Some(self.priority) && tags(&route.tags) == tags(&self.tags)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Delete(String),
    Insert(RouteSpec),
}

/// What to do for our own route, and which route is ours once done.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnPlan {
    /// Deletions first: GCE refuses an insert whose name exists.
    pub steps: Vec<Step>,
    pub owned: String,
    /// The route kept is flannel's, taken over as ours.
    pub adopted: bool,
}

/// Decides about our route given what exists under our name and under flannel's name for our
/// subnet (`None`: no such route).
pub fn plan_own(target: &Target, prefix: &str, ours: Option<&Route>, flannel: Option<&Route>) -> OwnPlan {
    let mut steps = Vec::new();
    let ours_ok = ours.is_some_and(|r| target.is_exactly(r));
    // flannel's route was made with flannel's own settings: it is ours if it carries our traffic.
    let flannel_carries = flannel.is_some_and(|r| target.carries(r));
    let flannel_ok = !ours_ok && flannel_carries;
    if let Some(route) = ours.filter(|_| !ours_ok) {
        steps.push(Step::Delete(route.name.clone()));
    }
    // A flannel route for our subnet through another instance is a leftover claim on our subnet:
    // left alone, GCE would spread our traffic over both next hops.
    let conflicting = |r: &&Route| !flannel_carries && r.dest_range.parse::<IpNet>().ok() == Some(target.subnet);
    if let Some(route) = flannel.filter(conflicting) {
        steps.push(Step::Delete(route.name.clone()));
    }
    if ours_ok {
        return OwnPlan { steps, owned: route_name(prefix, target.subnet), adopted: false };
    }
    if let (true, Some(route)) = (flannel_ok, flannel) {
        return OwnPlan { steps, owned: route.name.clone(), adopted: true };
    }
    let spec = target.spec(prefix);
    let owned = spec.name.clone();
    steps.push(Step::Insert(spec));
    OwnPlan { steps, owned, adopted: false }
}

/// Routes of ours (our prefix, our network, a next-hop instance, a lease-sized subnet of the
/// cluster network) whose subnet nobody leases any more. Everything else is left alone.
pub fn stale_routes(
    routes: &[Route],
    prefix: &str,
    network: &str,
    cluster: &Network,
    leased: &BTreeSet<IpNet>,
) -> Vec<String> {
    routes
        .iter()
        .filter(|r| same_resource(&r.network, network) && r.next_hop_instance.is_some())
        .filter_map(|r| {
            let subnet = parse_route_name(prefix, &r.name)?;
            let ours = r.dest_range.parse::<IpNet>().ok() == Some(subnet) && cluster.is_lease_sized(&subnet);
            (ours && !leased.contains(&subnet)).then(|| r.name.clone())
        })
        .collect()
}

/// The lease-sized subnets of the cluster network (either family) that `network` routes to an
/// instance: the peers whose packets the VPC carries (GCE routes apply network-wide).
pub fn carried(routes: &[Route], network: &str, cluster: &Network) -> BTreeSet<IpNet> {
    routes
        .iter()
        .filter(|r| same_resource(&r.network, network) && r.next_hop_instance.is_some())
        .filter_map(|r| r.dest_range.parse::<IpNet>().ok())
        .filter(|dest| cluster.is_lease_sized(dest))
        .collect()
}

/// Routes into the cluster network (either family) in `network`, whoever made them: what
/// `route_limit` counts (GCE's quota counts every route of the project, of both families).
pub fn cluster_routes(routes: &[Route], network: &str, cluster: &Network) -> usize {
    routes
        .iter()
        .filter(|r| same_resource(&r.network, network))
        .filter(|r| r.dest_range.parse::<IpNet>().is_ok_and(|dest| cluster.covers(&dest)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "https://www.googleapis.com/compute/v1/projects/p/global/networks/default";
    const ME: &str = "https://www.googleapis.com/compute/v1/projects/p/zones/z/instances/node-a";
    const OTHER: &str = "https://www.googleapis.com/compute/v1/projects/p/zones/z/instances/node-b";

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn cluster() -> Network {
        crate::network::dual_stack_for_tests()
    }

    fn target() -> Target {
        Target { subnet: net("10.244.3.0/24"), network: NET.into(), instance: ME.into(), priority: 1000, tags: vec![] }
    }

    fn route(name: &str, dest: &str, hop: &str) -> Route {
        Route {
            name: name.into(),
            dest_range: dest.into(),
            network: NET.into(),
            next_hop_instance: Some(hop.into()),
            priority: Some(1000),
            tags: vec![],
            self_link: format!("{NET}/../routes/{name}"),
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(route_name("weft-", net("10.244.3.0/24")), "weft-10-244-3-0-24");
        assert_eq!(parse_route_name("weft-", "weft-10-244-3-0-24"), Some(net("10.244.3.0/24")));
        assert_eq!(parse_route_name("flannel-", "flannel-10-244-3-0-24"), Some(net("10.244.3.0/24")));
        for bad in
            ["weft-10-244-3-24", "weft-10-244-3-1-24", "weft-x-244-3-0-24", "other-10-244-3-0-24", "weft-10-244-3-0-33"]
        {
            assert_eq!(parse_route_name("weft-", bad), None, "{bad}");
        }
        let v6 = net("2001:db8:42:3::/64");
        assert_eq!(route_name("weft-", v6), "weft-2001-db8-42-3---64");
        assert_eq!(parse_route_name("weft-", "weft-2001-db8-42-3---64"), Some(v6));
        let longest = net("2001:db8:1111:2222:3333:4444:5555:6666/128");
        assert!(route_name("weft-", longest).len() <= 63, "GCE names are at most 63 characters");
        assert_eq!(parse_route_name("weft-", &route_name("weft-", longest)), Some(longest));
        for bad in
            ["weft-2001-db8-42-3--1-64", "weft-2001-db8-42-3---129", "weft-2001-db8-42-3-", "weft-1-2-3-4-5-6-7-8-9-64"]
        {
            assert_eq!(parse_route_name("weft-", bad), None, "{bad}");
        }
    }

    #[test]
    fn missing_route_is_inserted() {
        let plan = plan_own(&target(), "weft-", None, None);
        assert_eq!(plan.owned, "weft-10-244-3-0-24");
        let [Step::Insert(spec)] = plan.steps.as_slice() else { panic!("{plan:?}") };
        assert_eq!((spec.dest_range, spec.next_hop_instance.as_str(), spec.priority), (net("10.244.3.0/24"), ME, 1000));
    }

    #[test]
    fn correct_route_means_nothing_to_do() {
        // A partial link names the same instance as the API's full selfLink.
        let ours = route("weft-10-244-3-0-24", "10.244.3.0/24", "projects/p/zones/z/instances/node-a");
        let plan = plan_own(&target(), "weft-", Some(&ours), None);
        assert!(plan.steps.is_empty(), "{plan:?}");
        assert!(!plan.adopted);
    }

    #[test]
    fn other_next_hop_is_replaced() {
        let ours = route("weft-10-244-3-0-24", "10.244.3.0/24", OTHER);
        let plan = plan_own(&target(), "weft-", Some(&ours), None);
        assert_eq!(plan.steps[0], Step::Delete("weft-10-244-3-0-24".into()));
        assert!(matches!(&plan.steps[1], Step::Insert(s) if s.next_hop_instance == ME));
        // A changed priority is a replacement too.
        let mut ours = route("weft-10-244-3-0-24", "10.244.3.0/24", ME);
        ours.priority = Some(900);
        assert_eq!(plan_own(&target(), "weft-", Some(&ours), None).steps.len(), 2);
    }

    #[test]
    fn flannel_route_is_adopted_not_duplicated() {
        let flannel = route("flannel-10-244-3-0-24", "10.244.3.0/24", ME);
        let plan = plan_own(&target(), "weft-", None, Some(&flannel));
        assert!(plan.steps.is_empty(), "{plan:?}");
        assert_eq!((plan.owned.as_str(), plan.adopted), ("flannel-10-244-3-0-24", true));
    }

    #[test]
    fn flannel_route_next_to_ours_is_left_alone() {
        let ours = route("weft-10-244-3-0-24", "10.244.3.0/24", ME);
        let flannel = route("flannel-10-244-3-0-24", "10.244.3.0/24", ME);
        let plan = plan_own(&target(), "weft-", Some(&ours), Some(&flannel));
        assert!(plan.steps.is_empty(), "{plan:?}");
        assert_eq!(plan.owned, "weft-10-244-3-0-24");
    }

    #[test]
    fn flannel_route_through_another_instance_is_replaced_by_ours() {
        let flannel = route("flannel-10-244-3-0-24", "10.244.3.0/24", OTHER);
        let plan = plan_own(&target(), "weft-", None, Some(&flannel));
        assert_eq!(plan.steps[0], Step::Delete("flannel-10-244-3-0-24".into()));
        assert!(matches!(&plan.steps[1], Step::Insert(s) if s.name == "weft-10-244-3-0-24"));
        assert!(!plan.adopted);
    }

    #[test]
    fn stale_only_our_prefix_our_network_no_lease() {
        let cluster = cluster();
        let leased: BTreeSet<_> = [net("10.244.3.0/24"), net("10.244.4.0/24"), net("2001:db8:42:3::/64")].into();
        let mut foreign_network = route("weft-10-244-9-0-24", "10.244.9.0/24", OTHER);
        foreign_network.network = "projects/p/global/networks/other".into();
        let mut gateway = route("weft-10-244-8-0-24", "10.244.8.0/24", OTHER);
        gateway.next_hop_instance = None;
        let routes = vec![
            route("weft-10-244-3-0-24", "10.244.3.0/24", ME),       // leased
            route("weft-10-244-5-0-24", "10.244.5.0/24", OTHER),    // stale
            route("flannel-10-244-6-0-24", "10.244.6.0/24", OTHER), // flannel's: not ours to remove
            route("weft-10-99-0-0-24", "10.99.0.0/24", OTHER),      // another cluster's network
            route("weft-10-244-7-0-24", "10.244.70.0/24", OTHER),   // name and range disagree
            route("weft-10-244-0-0-16", "10.244.0.0/16", OTHER),    // not a lease: the whole network
            route("weft-10-244-12-0-23", "10.244.12.0/23", OTHER),  // not lease-sized
            route("default-route-123", "0.0.0.0/0", OTHER),
            route("weft-2001-db8-42-3---64", "2001:db8:42:3::/64", ME), // leased
            route("weft-2001-db8-42-5---64", "2001:db8:42:5::/64", OTHER), // stale
            route("weft-2001-db8-99---64", "2001:db8:99::/64", OTHER),  // outside the IPv6 network
            route("weft-2001-db8-42-6---64", "10.244.6.0/24", OTHER),   // name and range disagree
            foreign_network,
            gateway,
        ];
        let stale = stale_routes(&routes, "weft-", NET, &cluster, &leased);
        assert_eq!(stale, ["weft-10-244-5-0-24", "weft-2001-db8-42-5---64"]);
    }

    #[test]
    fn carried_are_instance_routes_of_the_network() {
        let cluster = cluster();
        let mut foreign_network = route("weft-10-244-9-0-24", "10.244.9.0/24", OTHER);
        foreign_network.network = "projects/p/global/networks/other".into();
        let mut gateway = route("weft-10-244-8-0-24", "10.244.8.0/24", OTHER);
        gateway.next_hop_instance = None;
        let routes = vec![
            route("weft-10-244-3-0-24", "10.244.3.0/24", ME),
            route("flannel-10-244-6-0-24", "10.244.6.0/24", OTHER),
            route("big", "10.244.128.0/17", OTHER),
            route("elsewhere", "10.99.0.0/24", OTHER),
            route("junk", "not-a-cidr", OTHER),
            route("weft-2001-db8-42-7---64", "2001:db8:42:7::/64", OTHER),
            route("v6-wide", "2001:db8:42::/60", OTHER),
            route("v6-elsewhere", "2001:db8:99::/64", OTHER),
            foreign_network,
            gateway,
        ];
        let expected = [net("10.244.3.0/24"), net("10.244.6.0/24"), net("2001:db8:42:7::/64")];
        assert_eq!(carried(&routes, NET, &cluster), expected.into());
        // Every route into the network counts against a limit, a gateway one too.
        assert_eq!(cluster_routes(&routes, NET, &cluster), 6);
    }
}
