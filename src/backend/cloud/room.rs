//! Room for our route: a cloud that refused it for lack of room (EC2's `RouteLimitExceeded`,
//! GCE's route quota) has told us its capacity. It is not asked again — a call bound to fail,
//! every recheck, on every overflowed host — until a route went, or until the refusal is old
//! enough that the quota may have been raised since.

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

    /// Whether our route may be tried now, with `route_count` routes in the table; counts a check.
    pub fn allows(&mut self, route_count: usize) -> bool {
        self.checks = self.checks.saturating_add(1);
        route_count < self.route_count || self.checks > TRUSTED_CHECKS
    }

    pub fn capacity(&self) -> usize {
        self.cluster_routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_again_when_a_route_went_or_the_refusal_is_old() {
        let mut refusal = Refusal::new(50, 48);
        assert_eq!(refusal.capacity(), 48);
        assert!(!refusal.allows(50));
        assert!(!refusal.allows(51));
        assert!(refusal.allows(49), "a slot was freed");
        let mut refusal = Refusal::new(50, 48);
        let tries: Vec<bool> = (0..=TRUSTED_CHECKS).map(|_| refusal.allows(50)).collect();
        assert!(tries[..TRUSTED_CHECKS as usize].iter().all(|allowed| !allowed));
        assert!(tries[TRUSTED_CHECKS as usize], "the quota may have been raised since");
    }
}
