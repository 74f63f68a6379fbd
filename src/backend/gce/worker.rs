//! The API side of the gce backend: a task of its own that brings our route (and, on the
//! elected agent, the stale routes) in line whenever the backend asks, so that the agent loop
//! never waits on GCE. Each pass publishes its outcome for `check()` and `/readyz`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weft_gce::{same_resource, wait_for_operation, ComputeApi, GceError, InstanceMetadata, Route, WaitPolicy};

use super::plan::{self, plan_own, route_name, stale_routes, StaleTracker, Step, Target, FLANNEL_PREFIX};
use crate::health::{CloudTableLabels, Condition, Health};
use crate::network::backend::GceConfig;
use crate::store::Leadership;

/// What the backend wants the routes to reflect.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub own: Ipv4Net,
    /// Every leased subnet (ours included); `None` until the agent has listed the leases, and
    /// until then no route is judged stale.
    pub leased: Option<BTreeSet<Ipv4Net>>,
}

/// The links our route is made of, looked up once.
#[derive(Debug, Clone)]
struct Resolved {
    instance: String,
    network: String,
    /// The network's name, the `table` label of the route metrics.
    network_name: String,
}

/// Everything a pass needs; returned by the task when it stops so that teardown can use it.
pub struct Routing {
    pub api: Arc<dyn ComputeApi>,
    pub config: GceConfig,
    pub meta: InstanceMetadata,
    /// The flannel network (`10.244.0.0/16`): stale routes are looked for only inside it.
    pub cluster: Ipv4Net,
    pub store: Arc<dyn Leadership>,
    pub health: Arc<Health>,
    pub wait: WaitPolicy,
    resolved: Option<Resolved>,
    stale: StaleTracker,
    owned: Option<String>,
    last_own: Option<Ipv4Net>,
}

/// Leadership for stale-route removal, one agent at a time across the cluster.
const LEADERSHIP: &str = "gce-routes";

impl Routing {
    pub fn new(
        api: Arc<dyn ComputeApi>,
        config: GceConfig,
        meta: InstanceMetadata,
        cluster: Ipv4Net,
        store: Arc<dyn Leadership>,
        health: Arc<Health>,
    ) -> Self {
        Routing {
            api,
            config,
            meta,
            cluster,
            store,
            health,
            wait: WaitPolicy::default(),
            resolved: None,
            stale: StaleTracker::default(),
            owned: None,
            last_own: None,
        }
    }

    /// Serves requests until `cancel` (checked between passes, never in the middle of one).
    /// A failed pass is retried with backoff without waiting for the next request.
    pub async fn run(mut self, mut requests: watch::Receiver<Option<Desired>>, cancel: CancellationToken) -> Self {
        const FIRST_RETRY: Duration = Duration::from_secs(1);
        let mut retry: Option<Duration> = None;
        loop {
            let pause = retry.unwrap_or(Duration::MAX);
            tokio::select! {
                _ = cancel.cancelled() => return self,
                changed = requests.changed() => if changed.is_err() { return self },
                _ = tokio::time::sleep(pause), if retry.is_some() => {}
            }
            let Some(desired) = requests.borrow_and_update().clone() else { continue };
            let result = self.pass(&desired).await;
            retry = match &result {
                Ok(()) => None,
                Err(_) => {
                    Some(retry.map_or(FIRST_RETRY, |r| r.saturating_mul(2).min(self.config.recheck.max(FIRST_RETRY))))
                }
            };
            if let Err(e) = &result {
                warn!(error = %e, retry_in = ?retry.unwrap_or_default(), "gce routes");
            }
            self.publish(result);
        }
    }

    /// Each pass's outcome goes straight to `/readyz`; this worker alone writes its cloud condition.
    fn publish(&self, result: Result<(), String>) {
        self.health.set(Condition::Cloud, result.err());
    }

    /// One pass: our route, then (when leading) the stale ones.
    pub async fn pass(&mut self, desired: &Desired) -> Result<(), String> {
        let resolved =
            self.resolve().await.map_err(|e| format!("gce: looking up instance {}: {e}", self.meta.instance))?;
        self.last_own = Some(desired.own);
        let target = Target {
            subnet: desired.own,
            network: resolved.network.clone(),
            instance: resolved.instance.clone(),
            priority: self.config.priority,
            tags: self.config.tags.clone(),
        };
        let leading = match &desired.leased {
            Some(_) => self.lead().await,
            None => false,
        };
        let prefix = self.config.route_prefix.clone();
        let own_name = route_name(&prefix, desired.own);
        let flannel_name = route_name(FLANNEL_PREFIX, desired.own);
        let adoptable = own_name != flannel_name;
        // The leader lists the network once for both jobs; the others read their route by name.
        let (ours, flannel, listing) = if leading {
            let routes =
                self.api.list_routes(&resolved.network).await.map_err(|e| format!("gce: listing routes: {e}"))?;
            let find = |name: &str| routes.iter().find(|r| r.name == name).cloned();
            (find(&own_name), find(&flannel_name).filter(|_| adoptable), Some(routes))
        } else {
            let through_us = |r: &Option<Route>| {
                r.as_ref()
                    .and_then(|r| r.next_hop_instance.as_deref())
                    .is_some_and(|h| same_resource(h, &target.instance))
            };
            // Look first where our route was last time: one call per recheck in steady state.
            let adopted_before = adoptable && self.owned.as_deref() == Some(flannel_name.as_str());
            let (ours, flannel) = if adopted_before {
                let flannel = self.get_route(&flannel_name).await?;
                let ours = if through_us(&flannel) { None } else { self.get_route(&own_name).await? };
                (ours, flannel)
            } else {
                let ours = self.get_route(&own_name).await?;
                let flannel = if adoptable && !through_us(&ours) { self.get_route(&flannel_name).await? } else { None };
                (ours, flannel)
            };
            (ours, flannel, None)
        };
        let plan = plan_own(&target, &prefix, ours.as_ref(), flannel.as_ref());
        let result = self.apply_own(&plan, &resolved).await;
        self.note_owned(&resolved, result.is_ok());
        result?;
        if self.owned.as_deref() != Some(plan.owned.as_str()) {
            if plan.adopted {
                info!(route = %plan.owned, subnet = %desired.own, "adopted flannel's route for our subnet");
            } else {
                info!(route = %plan.owned, subnet = %desired.own, "our route is in place");
            }
            self.owned = Some(plan.owned.clone());
        }
        if let (Some(routes), Some(leased)) = (listing, &desired.leased) {
            let stale = stale_routes(&routes, &prefix, &resolved.network, self.cluster, leased);
            for name in self.stale.confirm(stale) {
                match self.delete(&name).await {
                    Ok(()) => info!(route = %name, "removed a stale route (no lease for its subnet)"),
                    // Cleanup is the cluster's chore, not this host's health: it is tried again.
                    Err(e) => warn!(route = %name, error = %e, "removing a stale route"),
                }
            }
        }
        Ok(())
    }

    async fn apply_own(&self, plan: &plan::OwnPlan, resolved: &Resolved) -> Result<(), String> {
        for step in &plan.steps {
            match step {
                Step::Delete(name) => {
                    info!(route = %name, "deleting a route that conflicts with ours");
                    self.delete(name).await.map_err(|e| format!("gce: deleting route {name}: {e}"))?;
                }
                Step::Insert(spec) => {
                    info!(route = %spec.name, dest = %spec.dest_range, "creating our route");
                    let inserted = match self.api.insert_route(spec).await {
                        Ok(op) => wait_for_operation(self.api.as_ref(), op, self.wait).await,
                        Err(e) => Err(e),
                    };
                    let limit = self.limit_gauge(resolved);
                    match inserted {
                        Ok(()) => {
                            limit.set(0);
                        }
                        Err(e @ GceError::QuotaExceeded { .. }) => {
                            limit.set(1);
                            return Err(format!(
                                "gce: no room for route {} ({} via {}): {e}; raise the quota or remove unused routes",
                                spec.name, spec.dest_range, self.meta.instance
                            ));
                        }
                        Err(e) => return Err(format!("gce: creating route {}: {e}", spec.name)),
                    }
                }
            }
        }
        Ok(())
    }

    fn limit_gauge(&self, resolved: &Resolved) -> prometheus_client::metrics::gauge::Gauge {
        let labels = CloudTableLabels { provider: "gce".into(), table: resolved.network_name.clone() };
        self.health.metrics.cloud_route_limit.get_or_create(&labels).clone()
    }

    fn note_owned(&self, resolved: &Resolved, in_place: bool) {
        let labels = CloudTableLabels { provider: "gce".into(), table: resolved.network_name.clone() };
        self.health.metrics.cloud_routes_owned.get_or_create(&labels).set(i64::from(in_place));
    }

    /// Deletes a route and waits for it to be gone; a route already gone is fine.
    async fn delete(&self, name: &str) -> Result<(), GceError> {
        let result = match self.api.delete_route(name).await {
            Ok(op) => wait_for_operation(self.api.as_ref(), op, self.wait).await,
            Err(e) => Err(e),
        };
        match result {
            Err(GceError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    async fn get_route(&self, name: &str) -> Result<Option<Route>, String> {
        match self.api.get_route(name).await {
            Ok(route) => Ok(Some(route)),
            Err(GceError::NotFound { .. }) => Ok(None),
            Err(e) => Err(format!("gce: reading route {name}: {e}")),
        }
    }

    /// Whether this agent removes stale routes now. A store error means "not now".
    async fn lead(&mut self) -> bool {
        // Three rechecks: a leader that died is replaced within that, a live one renews in time.
        let ttl = self.config.recheck.saturating_mul(3).max(Duration::from_secs(15));
        match self.store.lead(LEADERSHIP, &self.meta.instance, ttl).await {
            Ok(true) => true,
            Ok(false) => {
                self.stale.clear();
                false
            }
            Err(e) => {
                debug!(error = %e, "gce: stale-route leadership unavailable");
                self.stale.clear();
                false
            }
        }
    }

    async fn resolve(&mut self) -> Result<Resolved, GceError> {
        if let Some(resolved) = &self.resolved {
            return Ok(resolved.clone());
        }
        let instance = self.api.get_instance(&self.meta.zone, &self.meta.instance).await?;
        // The route goes into the instance's own network unless the config names one; then the
        // network is read so the route carries its exact selfLink.
        let (network, network_name) = if self.config.network.is_empty() {
            let link = instance
                .networks
                .first()
                .cloned()
                .unwrap_or_else(|| format!("projects/{}/global/networks/{}", self.meta.project, self.meta.network));
            let name = link.rsplit('/').next().unwrap_or(&link).to_string();
            (link, name)
        } else {
            let network = self.api.get_network(&self.config.network).await?;
            (network.self_link, network.name)
        };
        let instance_link = if instance.self_link.is_empty() {
            format!("projects/{}/zones/{}/instances/{}", self.meta.project, self.meta.zone, self.meta.instance)
        } else {
            instance.self_link
        };
        let resolved = Resolved { instance: instance_link, network, network_name };
        info!(instance = %resolved.instance, network = %resolved.network, "gce identity");
        self.resolved = Some(resolved.clone());
        Ok(resolved)
    }

    /// Deletes our route (and flannel's one we adopted), when the cluster leaves the gce backend.
    pub async fn teardown(&mut self, own: Option<Ipv4Net>) -> Result<(), String> {
        let Some(own) = own.or(self.last_own) else { return Ok(()) };
        let resolved = self.resolve().await.map_err(|e| format!("gce: looking up instance: {e}"))?;
        let mut failures = Vec::new();
        for name in [route_name(&self.config.route_prefix, own), route_name(FLANNEL_PREFIX, own)] {
            let ours = match self.get_route(&name).await {
                Ok(Some(route)) => {
                    route.next_hop_instance.as_deref().is_some_and(|h| same_resource(h, &resolved.instance))
                }
                Ok(None) => false,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            if ours {
                match self.delete(&name).await {
                    Ok(()) => info!(route = %name, "deleted our route"),
                    Err(e) => failures.push(format!("gce: deleting route {name}: {e}")),
                }
            }
        }
        self.note_owned(&resolved, false);
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeApi;
    use super::*;
    use crate::store::local::LocalStore;

    struct Rig {
        api: Arc<FakeApi>,
        health: Arc<Health>,
        store: Arc<dyn Leadership>,
        _dir: tempfile::TempDir,
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Leadership> = Arc::new(LocalStore::open(dir.path()).unwrap());
            Rig { api: Arc::new(FakeApi::default()), health: Arc::new(Health::default()), store, _dir: dir }
        }

        fn routing(&self, instance: &str) -> Routing {
            let meta = InstanceMetadata {
                project: "p".into(),
                zone: "z".into(),
                instance: instance.into(),
                network: "default".into(),
            };
            let api: Arc<dyn ComputeApi> = self.api.clone();
            Routing::new(api, GceConfig::default(), meta, net("10.244.0.0/16"), self.store.clone(), self.health.clone())
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn desired(own: &str, leased: &[&str]) -> Desired {
        Desired { own: net(own), leased: Some(leased.iter().map(|s| net(s)).chain([net(own)]).collect()) }
    }

    #[tokio::test]
    async fn creates_once_then_only_reads() {
        let rig = Rig::new();
        let mut a = rig.routing("node-a");
        a.pass(&desired("10.244.1.0/24", &[])).await.unwrap();
        let route = rig.api.routes.lock().unwrap()["weft-10-244-1-0-24"].clone();
        assert_eq!(route.next_hop_instance.as_deref(), Some(super::super::fake::instance_link("node-a").as_str()));
        rig.api.take_calls();
        a.pass(&desired("10.244.1.0/24", &[])).await.unwrap();
        // The leader (the only agent here) lists once; nothing is written.
        assert_eq!(rig.api.take_calls(), ["routes.list"]);
    }

    #[tokio::test]
    async fn only_the_leader_removes_stale_routes_after_two_passes() {
        let rig = Rig::new();
        rig.api.put("weft-10-244-9-0-24", "10.244.9.0/24", "node-gone");
        let (mut a, mut b) = (rig.routing("node-a"), rig.routing("node-b"));
        a.pass(&desired("10.244.1.0/24", &["10.244.2.0/24"])).await.unwrap();
        b.pass(&desired("10.244.2.0/24", &["10.244.1.0/24"])).await.unwrap();
        assert!(rig.api.routes.lock().unwrap().contains_key("weft-10-244-9-0-24"), "removed on first sight");
        rig.api.take_calls();
        b.pass(&desired("10.244.2.0/24", &["10.244.1.0/24"])).await.unwrap();
        assert_eq!(rig.api.take_calls(), ["routes.get weft-10-244-2-0-24"], "a follower reads its route only");
        a.pass(&desired("10.244.1.0/24", &["10.244.2.0/24"])).await.unwrap();
        assert!(!rig.api.routes.lock().unwrap().contains_key("weft-10-244-9-0-24"));
        assert!(rig.api.take_calls().contains(&"routes.delete weft-10-244-9-0-24".to_string()));
    }

    #[tokio::test]
    async fn adopted_flannel_route_costs_one_read() {
        let rig = Rig::new();
        rig.api.put("flannel-10-244-1-0-24", "10.244.1.0/24", "node-a");
        // Another agent leads, so node-a reads by name.
        assert!(rig.store.lead(LEADERSHIP, "node-x", Duration::from_secs(60)).await.unwrap());
        let mut a = rig.routing("node-a");
        a.pass(&desired("10.244.1.0/24", &[])).await.unwrap();
        assert_eq!(
            rig.api.take_calls(),
            ["instances.get node-a", "routes.get weft-10-244-1-0-24", "routes.get flannel-10-244-1-0-24"]
        );
        a.pass(&desired("10.244.1.0/24", &[])).await.unwrap();
        assert_eq!(rig.api.take_calls(), ["routes.get flannel-10-244-1-0-24"]);
        assert!(!rig.api.routes.lock().unwrap().contains_key("weft-10-244-1-0-24"));
    }

    #[tokio::test]
    async fn quota_is_a_clear_error_and_a_metric() {
        let rig = Rig::new();
        *rig.api.insert_error.lock().unwrap() = Some("QUOTA_EXCEEDED".into());
        let mut a = rig.routing("node-a");
        let e = a.pass(&desired("10.244.1.0/24", &[])).await.unwrap_err();
        assert!(e.contains("quota ROUTES-per-project exceeded (limit 2)") && e.contains("weft-10-244-1-0-24"), "{e}");
        let text = rig.health.metrics.encode();
        assert!(text.contains("weft_cloud_route_limit_reached{provider=\"gce\",table=\"default\"} 1"), "{text}");
        assert!(text.contains("weft_cloud_routes_owned{provider=\"gce\",table=\"default\"} 0"), "{text}");
        *rig.api.insert_error.lock().unwrap() = None;
        a.pass(&desired("10.244.1.0/24", &[])).await.unwrap();
        let text = rig.health.metrics.encode();
        assert!(text.contains("weft_cloud_route_limit_reached{provider=\"gce\",table=\"default\"} 0"), "{text}");
    }

    #[tokio::test]
    async fn teardown_deletes_only_our_route() {
        let rig = Rig::new();
        rig.api.put("weft-10-244-1-0-24", "10.244.1.0/24", "node-a");
        rig.api.put("flannel-10-244-1-0-24", "10.244.1.0/24", "node-old");
        let mut a = rig.routing("node-a");
        a.teardown(Some(net("10.244.1.0/24"))).await.unwrap();
        let routes = rig.api.routes.lock().unwrap();
        assert!(!routes.contains_key("weft-10-244-1-0-24"));
        assert!(routes.contains_key("flannel-10-244-1-0-24"), "not through us: not ours to delete");
    }
}
