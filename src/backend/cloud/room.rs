//! Room for our route: a cloud that refused it for lack of room (EC2's `RouteLimitExceeded`,
//! GCE's route quota) has told us its capacity. It is not asked again — a call bound to fail,
//! every recheck, on every overflowed host — until a route went, or until the refusal is old
//! enough that the quota may have been raised since. Only one host per table asks then, the
//! lowest subnet left out ([`prober`]): the others' retries would cost one call each per
//! refusal's age, a bill that grows with the cluster; once the prober's route got in, the next
//! lowest is the prober.

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::network::Network;

/// A refusal is trusted for this many checks of the table; then our route is tried again.
pub const TRUSTED_CHECKS: u32 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Routes in the table (or project) when the route was refused.
    route_count: usize,
    /// Of those, the cluster network's: the capacity learned, as the metrics show it.
    cluster_routes: usize,
    checks: u32,
}

impl Refusal {
    pub fn new(route_count: usize, cluster_routes: usize) -> Self {
        Refusal { route_count, cluster_routes, checks: 0 }
    }

    /// Whether our route may be tried now, with `route_count` routes in the table, of them
    /// `cluster_routes` of the cluster network; counts a check. The fullest table seen since the
    /// refusal is the mark (and its capacity): the listing we acted on may have been older than
    /// the routes that filled the table (other hosts' inserts at the same time).
    pub fn allows(&mut self, route_count: usize, cluster_routes: usize) -> bool {
        self.allows_as(route_count, cluster_routes, true)
    }

    /// [`Refusal::allows`] for a host that may be the table's prober or not: a host that is not
    /// asks again only when a route went.
    pub fn allows_as(&mut self, route_count: usize, cluster_routes: usize, prober: bool) -> bool {
        let allowed = self.would_allow(route_count, prober);
        self.checks = self.checks.saturating_add(1);
        if route_count > self.route_count {
            self.route_count = route_count;
            self.cluster_routes = cluster_routes;
        }
        allowed
    }

    /// What [`Refusal::allows_as`] would answer now, without counting a check.
    pub fn would_allow(&self, route_count: usize, prober: bool) -> bool {
        route_count < self.route_count || (prober && self.checks.saturating_add(1) > TRUSTED_CHECKS)
    }

    pub fn capacity(&self) -> usize {
        self.cluster_routes
    }
}

/// Whether `own` asks a full table again once its refusal is old: the lowest of the `leased`
/// host subnets of its family (of that family's lease size in `network`) the table does not
/// carry. Every host judges the same listing the same way, so one asks per table (two, briefly,
/// when their listings differ).
pub fn prober(leased: &BTreeSet<IpNet>, carried: &BTreeSet<IpNet>, network: &Network, own: IpNet) -> bool {
    if carried.contains(&own) {
        return false;
    }
    let subnet_len = network.space_of(&own).map_or(0, |space| space.subnet_len);
    let left_out = leased
        .iter()
        .filter(|s| super::same_family(s, &own))
        .filter(|s| s.prefix_len() == subnet_len && !carried.contains(s));
    left_out.chain([&own]).min() == Some(&own)
}

/// Whether our route must go to bring a table back within `route_limit`. Agents that looked at
/// the same moment may all have found room, and the table then holds more than the limit; no
/// cloud refuses past *our* cap. Every agent judges the same listing the same way: the routes
/// weft cannot move (of the `cluster_routes`, those that are no host's) count first, then
/// the lowest host subnets keep theirs; an agent whose route ranks beyond the limit withdraws it,
/// and its peers reach it by the overlay instead. A newcomer never displaces a route: it finds
/// the table full and does not add one.
pub fn beyond_limit(host_routes: &BTreeSet<IpNet>, cluster_routes: usize, own: IpNet, limit: usize) -> bool {
    let others = cluster_routes.saturating_sub(host_routes.len());
    let room_for_hosts = limit.saturating_sub(others);
    host_routes.iter().position(|subnet| *subnet == own).is_some_and(|rank| rank >= room_for_hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_lowest_subnets_keep_their_routes_past_the_limit() {
        let hosts = subnets(&["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24"]);
        let own = |s: &str| s.parse::<IpNet>().unwrap();
        let judged: Vec<bool> = hosts.iter().map(|s| beyond_limit(&hosts, 4, *s, 3)).collect();
        assert_eq!(judged, [false, false, false, true], "one over: the highest withdraws");
        assert!(beyond_limit(&hosts, 5, own("10.244.3.0/24"), 3), "a route weft cannot move takes a slot");
        assert!(!beyond_limit(&hosts, 4, own("10.244.4.0/24"), 4), "within the limit: nobody moves");
        assert!(!beyond_limit(&hosts, 4, own("10.244.9.0/24"), 1), "no route of ours: nothing to withdraw");
        assert!(beyond_limit(&hosts, 9, own("10.244.1.0/24"), 3), "no room at all for host routes");
    }

    #[test]
    fn tried_again_when_a_route_went_or_the_refusal_is_old() {
        let mut refusal = Refusal::new(50, 48);
        assert_eq!(refusal.capacity(), 48);
        assert!(!refusal.allows(50, 48));
        assert!(!refusal.allows(51, 48));
        assert!(refusal.allows(49, 47), "a slot was freed");
        // Listed at 2, refused because two others inserted at once: the slot freed later counts.
        let mut refusal = Refusal::new(2, 1);
        assert!(!refusal.allows(3, 2) && !refusal.allows(3, 2));
        assert_eq!(refusal.capacity(), 2, "the capacity is the fullest table's");
        assert!(refusal.allows(2, 1), "a route went since the table was full");
        let mut refusal = Refusal::new(50, 48);
        let tries: Vec<bool> = (0..=TRUSTED_CHECKS)
            .map(|_| {
                let peeked = refusal.would_allow(50, true);
                let allowed = refusal.allows(50, 48);
                assert_eq!(peeked, allowed, "a peek answers as the check it does not count");
                allowed
            })
            .collect();
        assert!(tries[..TRUSTED_CHECKS as usize].iter().all(|allowed| !allowed));
        assert!(tries[TRUSTED_CHECKS as usize], "the quota may have been raised since");
    }

    #[test]
    fn only_the_prober_asks_an_old_refusal_again() {
        let mut refusal = Refusal::new(50, 48);
        let tries: Vec<bool> = (0..3 * TRUSTED_CHECKS).map(|_| refusal.allows_as(50, 48, false)).collect();
        assert!(tries.iter().all(|allowed| !allowed), "not the prober: never asked while full");
        assert!(refusal.allows_as(49, 47, false), "a slot was freed: everyone may try");
        let network = crate::network::dual_stack_for_tests();
        let leased = subnets(&["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24", "10.244.0.0/23"]);
        let carried = subnets(&["10.244.1.0/24", "10.244.3.0/24"]);
        let own = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(prober(&leased, &carried, &network, own("10.244.2.0/24")), "the lowest left out");
        assert!(!prober(&leased, &carried, &network, own("10.244.4.0/24")));
        assert!(!prober(&leased, &carried, &network, own("10.244.1.0/24")), "carried: lower than every left out");
        assert!(prober(&BTreeSet::new(), &carried, &network, own("10.244.9.0/24")), "leases unknown: alone, it asks");
        // An IPv6 subnet is judged among the IPv6 ones only (they sort after every IPv4 one).
        let dual = subnets(&["10.244.2.0/24", "2001:db8:42:2::/64", "2001:db8:42:3::/64"]);
        assert!(prober(&dual, &carried, &network, own("2001:db8:42:2::/64")));
        assert!(!prober(&dual, &carried, &network, own("2001:db8:42:3::/64")));
        assert!(prober(&dual, &carried, &network, own("10.244.2.0/24")));
    }
}
