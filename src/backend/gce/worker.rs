//! gce's side of the cloud engine ([`crate::backend::cloud`]): one pass reads our route (or, on
//! the elected agent and with overflow, every route of the network), puts ours in place and
//! removes what is provably stale. The leader shares its listing through the store; the others
//! decide from it while it calls for no change, and ask Compute only when something is to be
//! written. When passes run is the engine's business.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;
use tracing::{debug, info, warn};
use weft_gce::{same_resource, wait_for_operation, ComputeApi, GceError, InstanceMetadata, Route, WaitPolicy};

use super::plan::{self, plan_own, route_name, stale_routes, Step, Target, FLANNEL_PREFIX};
use crate::backend::cloud::room::{beyond_limit, prober};
use crate::backend::cloud::{view, Pass, PassInput, Problem, Provider, Refusal, StaleTracker};
use crate::backend::BackendKind;
use crate::health::{CloudPassLabels, CloudTableLabels, Health};
use crate::lease::LeaseKey;
use crate::network::backend::GceConfig;
use crate::network::Network;

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
    /// The cluster network of each family (`10.244.0.0/16`, and an IPv6 one in a dual-stack
    /// network): stale routes are looked for only inside them.
    pub cluster: Network,
    pub health: Arc<Health>,
    pub wait: WaitPolicy,
    resolved: Option<Resolved>,
    stale: StaleTracker<String>,
    /// The route that carries each of our subnets (ours, or flannel's adopted).
    owned: BTreeMap<IpNet, String>,
    /// The quota's last refusal of our route to each subnet (with the network's route count then).
    refusals: BTreeMap<IpNet, Refusal>,
}

/// What a pass knows before it writes: the network's routes (when listed), the host routes among
/// them, and every leased subnet (once the agent listed the leases).
struct Known<'a> {
    listing: Option<&'a [Route]>,
    carried: Option<&'a BTreeSet<IpNet>>,
    leased: Option<&'a BTreeSet<IpNet>>,
}

/// Leadership for stale-route removal, one agent at a time across the cluster.
#[cfg(test)]
const LEADERSHIP: &str = "gce-routes";

impl Routing {
    pub fn new(
        api: Arc<dyn ComputeApi>,
        config: GceConfig,
        meta: InstanceMetadata,
        network: &Network,
        health: Arc<Health>,
    ) -> Self {
        let stale_grace = crate::backend::cloud::stale::grace(config.recheck);
        Routing {
            api,
            config,
            meta,
            cluster: network.clone(),
            health,
            wait: WaitPolicy::default(),
            resolved: None,
            stale: StaleTracker::with_grace(stale_grace),
            owned: BTreeMap::new(),
            refusals: BTreeMap::new(),
        }
    }

    /// One pass: our route, then (when leading) the stale ones; what our network carries.
    async fn run_pass(&mut self, input: &PassInput<'_>) -> Pass {
        let resolved = match self.resolve().await {
            Ok(resolved) => resolved,
            Err(e) => return Pass::failed(format!("looking up instance {}: {e}", self.meta.instance)),
        };
        // The leader lists the network once for every job; with overflow or a route limit every
        // agent needs the listing; the others read their route by name. The leader's listing,
        // when it shared one that calls for no change, stands for all of that.
        let listed = input.lead || self.config.overflow.is_some() || self.config.route_limit.is_some();
        let quiet = self.quiet_view(input, &resolved);
        self.health.metrics.cloud_passes.get_or_create(&CloudPassLabels::new("gce", quiet.is_some())).inc();
        let listing = match quiet {
            Some(routes) => Some(routes),
            None if listed => match self.api.list_routes(&resolved.network).await {
                Ok(routes) => Some(routes),
                Err(e) => return Pass::failed(format!("listing routes: {e}")),
            },
            None => None,
        };
        let view = match (&listing, input.lead) {
            (Some(routes), true) => view::encode(&resolved.network, routes),
            _ => None,
        };
        let carried = listing.as_ref().map(|routes| plan::carried(routes, &resolved.network, &self.cluster));
        let Some(own) = input.own else {
            // Our lease ran out: nothing of ours is asserted (the engine says so in /readyz).
            return Pass { problems: Vec::new(), carried, view };
        };
        let mut problems = Vec::new();
        let known = Known { listing: listing.as_deref(), carried: carried.as_ref(), leased: input.leased };
        // What we knew of subnets we no longer hold is no guide for the ones we do.
        self.refusals.retain(|subnet, _| own.subnets().any(|own| own == *subnet));
        self.owned.retain(|subnet, _| own.subnets().any(|own| own == *subnet));
        // Each of our subnets has its route, tried even when the other family's failed.
        for own in own.subnets() {
            problems.extend(self.own_route(own, &resolved, &known).await.err());
        }
        let no_room = problems.iter().any(|p| matches!(p, Problem::NoRoom(_)));
        self.limit_gauge(&resolved).set(i64::from(no_room));
        self.note_owned(&resolved, problems.is_empty());
        if let (Some(routes), Some(leased), true) = (&listing, input.leased, input.lead) {
            let prefix = &self.config.route_prefix;
            let stale = stale_routes(routes, prefix, &resolved.network, &self.cluster, leased);
            for name in self.stale.confirm(stale) {
                match self.delete(&name).await {
                    Ok(()) => info!(route = %name, "removed a stale route (no lease for its subnet)"),
                    // Cleanup is the cluster's chore, not this host's health: it is tried again.
                    Err(e) => warn!(route = %name, error = %e, "removing a stale route"),
                }
            }
        }
        Pass { problems, carried, view }
    }

    /// The route this host needs.
    fn target(&self, own: IpNet, resolved: &Resolved) -> Target {
        Target {
            subnet: own,
            network: resolved.network.clone(),
            instance: resolved.instance.clone(),
            priority: self.config.priority,
            tags: self.config.tags.clone(),
        }
    }

    /// Our route and flannel's for our subnet, as `routes` list them.
    fn named(&self, routes: &[Route], own: IpNet) -> (Option<Route>, Option<Route>) {
        let own_name = route_name(&self.config.route_prefix, own);
        let flannel_name = route_name(FLANNEL_PREFIX, own);
        let find = |name: &str| routes.iter().find(|r| r.name == name).cloned();
        (find(&own_name), find(&flannel_name).filter(|_| own_name != flannel_name))
    }

    /// Whether we ask a refused quota again once its refusal is old (one host of the network and
    /// family does).
    fn prober(&self, leased: Option<&BTreeSet<IpNet>>, hosts: &BTreeSet<IpNet>, own: IpNet) -> bool {
        prober(leased.unwrap_or(&BTreeSet::new()), hosts, &self.cluster, own)
    }

    /// The leader's shared listing, if it is of our network and calls for no change here
    /// ([`Self::own_route`]'s decisions, without acting): every write is planned from Compute's
    /// own answer.
    fn quiet_view(&self, input: &PassInput<'_>, resolved: &Resolved) -> Option<Vec<Route>> {
        let routes: Vec<Route> = view::decode(input.shared?, &resolved.network)?;
        let Some(own) = input.own else { return Some(routes) };
        let count = plan::cluster_routes(&routes, &resolved.network, &self.cluster);
        let hosts = plan::carried(&routes, &resolved.network, &self.cluster);
        let limit = self.config.route_limit.map(|l| l as usize);
        let writes = |own: IpNet| {
            let (ours, flannel) = self.named(&routes, own);
            let target = self.target(own, resolved);
            let plan = plan_own(&target, &self.config.route_prefix, ours.as_ref(), flannel.as_ref());
            if plan.steps.iter().any(|s| matches!(s, Step::Insert(_))) {
                let prober = self.prober(input.leased, &hosts, own);
                let over_limit = limit.is_some_and(|limit| count >= limit);
                !over_limit && self.refusals.get(&own).is_none_or(|r| r.would_allow(routes.len(), prober))
            } else {
                !plan.steps.is_empty() || limit.is_some_and(|limit| beyond_limit(&hosts, count, own, limit))
            }
        };
        if own.subnets().any(writes) {
            debug!("the shared routes call for a change: asking Compute before writing");
            return None;
        }
        Some(routes)
    }

    /// Our route to `own` (ours by name, or flannel's adopted) in place, through our instance.
    /// The quota is the project's, shared by both families: the limit counts and ranks the
    /// routes of both (an IPv4 subnet ranks before every IPv6 one).
    async fn own_route(&mut self, own: IpNet, resolved: &Resolved, known: &Known<'_>) -> Result<(), Problem> {
        let failed = |m: String| Problem::Failed(m);
        let target = self.target(own, resolved);
        let prefix = self.config.route_prefix.clone();
        let own_name = route_name(&prefix, own);
        let flannel_name = route_name(FLANNEL_PREFIX, own);
        let adoptable = own_name != flannel_name;
        let (listing, carried) = (known.listing, known.carried);
        let (ours, flannel) = match listing {
            Some(routes) => self.named(routes, own),
            None => {
                let through_us = |r: &Option<Route>| {
                    r.as_ref()
                        .and_then(|r| r.next_hop_instance.as_deref())
                        .is_some_and(|h| same_resource(h, &target.instance))
                };
                // Look first where our route was last time: one call per recheck in steady state.
                let adopted_before = adoptable && self.owned.get(&own) == Some(&flannel_name);
                if adopted_before {
                    let flannel = self.get_route(&flannel_name).await.map_err(failed)?;
                    let ours =
                        if through_us(&flannel) { None } else { self.get_route(&own_name).await.map_err(failed)? };
                    (ours, flannel)
                } else {
                    let ours = self.get_route(&own_name).await.map_err(failed)?;
                    let flannel = if adoptable && !through_us(&ours) {
                        self.get_route(&flannel_name).await.map_err(failed)?
                    } else {
                        None
                    };
                    (ours, flannel)
                }
            }
        };
        let plan = plan_own(&target, &prefix, ours.as_ref(), flannel.as_ref());
        let inserts = plan.steps.iter().any(|s| matches!(s, Step::Insert(_)));
        let cluster_routes = listing.map(|routes| plan::cluster_routes(routes, &resolved.network, &self.cluster));
        if let (Some(count), Some(routes), Some(hosts)) = (cluster_routes, listing, carried) {
            let labels = self.labels(resolved);
            self.health.metrics.cloud_routes.get_or_create(&labels).set(count as i64);
            let limit = self.config.route_limit.map(|l| l as usize);
            if !inserts && limit.is_some_and(|limit| beyond_limit(hosts, count, own, limit)) {
                // Agents that looked at once overfilled the network: the highest subnets withdraw.
                let name = plan.owned.clone();
                self.delete(&name).await.map_err(|e| failed(format!("withdrawing route {name}: {e}")))?;
                info!(route = %name, "withdrew our route: the network holds more than route_limit");
                self.owned.remove(&own);
                return Err(Problem::NoRoom(format!(
                    "no room for route {own_name} in network {}: {count} routes of the cluster network \
                     (route_limit = {}); ours withdrawn, the lowest subnets keep theirs",
                    resolved.network_name,
                    limit.unwrap_or_default()
                )));
            }
            let over_limit = limit.is_some_and(|limit| count >= limit);
            let prober = self.prober(known.leased, hosts, own);
            let refused = inserts
                && !over_limit
                && self.refusals.get_mut(&own).is_some_and(|r| !r.allows_as(routes.len(), count, prober));
            let learned = self.refusals.values().map(Refusal::capacity).min();
            if let Some(capacity) = [limit, learned].into_iter().flatten().min() {
                self.health.metrics.cloud_route_capacity.get_or_create(&labels).set(capacity as i64);
            }
            if inserts && (over_limit || refused) {
                return Err(Problem::NoRoom(format!(
                    "no room for route {own_name} in network {}: {count} routes of the cluster network ({})",
                    resolved.network_name,
                    match limit {
                        Some(limit) if count >= limit => format!("route_limit = {limit}"),
                        _ => "the quota refused one at this count".into(),
                    }
                )));
            }
        }
        let result = self.apply_own(&plan).await;
        match &result {
            Err(Problem::NoRoom(_)) => {
                let refusal = listing.zip(cluster_routes).map(|(routes, cluster)| Refusal::new(routes.len(), cluster));
                match refusal {
                    Some(refusal) => self.refusals.insert(own, refusal),
                    None => self.refusals.remove(&own),
                };
            }
            Ok(()) => {
                self.refusals.remove(&own);
            }
            Err(Problem::Failed(_)) => {}
        }
        result?;
        if self.owned.get(&own) != Some(&plan.owned) {
            if plan.adopted {
                info!(route = %plan.owned, subnet = %own, "adopted flannel's route for our subnet");
            } else {
                info!(route = %plan.owned, subnet = %own, "our route is in place");
            }
            self.owned.insert(own, plan.owned.clone());
        }
        Ok(())
    }

    fn labels(&self, resolved: &Resolved) -> CloudTableLabels {
        CloudTableLabels { provider: "gce".into(), table: resolved.network_name.clone() }
    }

    async fn apply_own(&self, plan: &plan::OwnPlan) -> Result<(), Problem> {
        for step in &plan.steps {
            match step {
                Step::Delete(name) => {
                    info!(route = %name, "deleting a route that conflicts with ours");
                    self.delete(name).await.map_err(|e| Problem::Failed(format!("deleting route {name}: {e}")))?;
                }
                Step::Insert(spec) => {
                    info!(route = %spec.name, dest = %spec.dest_range, "creating our route");
                    let inserted = match self.api.insert_route(spec).await {
                        Ok(op) => wait_for_operation(self.api.as_ref(), op, self.wait).await,
                        Err(e) => Err(e),
                    };
                    match inserted {
                        Ok(()) => {}
                        Err(e @ GceError::QuotaExceeded { .. }) => {
                            return Err(Problem::NoRoom(format!(
                                "no room for route {} ({} via {}): {e}; raise the quota or remove unused routes",
                                spec.name, spec.dest_range, self.meta.instance
                            )));
                        }
                        Err(e) => return Err(Problem::Failed(format!("creating route {}: {e}", spec.name))),
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
            Err(e) => Err(format!("reading route {name}: {e}")),
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
    async fn remove_own(&mut self, own: LeaseKey) -> Result<(), String> {
        let resolved = self.resolve().await.map_err(|e| format!("looking up instance: {e}"))?;
        let mut failures = Vec::new();
        let prefix = self.config.route_prefix.clone();
        let names: Vec<String> =
            own.subnets().flat_map(|own| [route_name(&prefix, own), route_name(FLANNEL_PREFIX, own)]).collect();
        for name in names {
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
                    Err(e) => failures.push(format!("deleting route {name}: {e}")),
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

#[async_trait]
impl Provider for Routing {
    fn kind(&self) -> BackendKind {
        BackendKind::Gce
    }

    fn holder(&self) -> String {
        self.meta.instance.clone()
    }

    async fn pass(&mut self, input: &PassInput<'_>) -> Pass {
        self.run_pass(input).await
    }

    fn lost_leadership(&mut self) {
        self.stale.clear();
    }

    /// Deletes our route (and flannel's one we adopted), when the cluster leaves the gce backend.
    async fn teardown(&mut self, own: LeaseKey) -> Result<(), String> {
        self.remove_own(own).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::watch;

    use super::super::fake::FakeApi;
    use super::*;
    use crate::backend::cloud::engine::{Engine, Outcome, Request};
    use crate::backend::cloud::{CloudPaths, Settings};
    use crate::store::local::LocalStore;
    use crate::store::Leadership;

    /// A provider with its engine, passes run one at a time by the test.
    struct Agent {
        engine: Engine<Routing>,
        outcomes: watch::Receiver<Outcome>,
    }

    impl Agent {
        async fn pass(&mut self, request: &Request) -> Result<(), String> {
            self.engine.pass(request).await;
            self.outcomes.borrow_and_update().clone()
        }
    }

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

        /// On a store that shares the leader's view (etcd's kind; the local store does not).
        fn sharing() -> Rig {
            let store = Arc::new(crate::store::memory::MemoryStore::new());
            Rig { store, ..Rig::new() }
        }

        fn routing(&self, instance: &str) -> Routing {
            self.routing_with(instance, GceConfig::default())
        }

        fn routing_with(&self, instance: &str, config: GceConfig) -> Routing {
            let meta = InstanceMetadata {
                project: "p".into(),
                zone: "z".into(),
                instance: instance.into(),
                network: "default".into(),
            };
            let api: Arc<dyn ComputeApi> = self.api.clone();
            // Dual-stack: an IPv4-only lease in it is planned exactly as in an IPv4-only network.
            let network = crate::network::dual_stack_for_tests();
            let mut routing = Routing::new(api, config, meta, &network, self.health.clone());
            // Passes here are back to back: two in a row confirm, as passes a recheck apart do.
            routing.stale = StaleTracker::default();
            routing
        }

        fn agent(&self, instance: &str) -> Agent {
            self.agent_with(instance, GceConfig::default())
        }

        fn agent_with(&self, instance: &str, config: GceConfig) -> Agent {
            let settings = Settings {
                recheck: Duration::from_secs(300),
                overflow: false,
                store: self.store.clone(),
                health: self.health.clone(),
                paths: CloudPaths::default(),
            };
            let (engine, outcomes) = Engine::new(self.routing_with(instance, config), settings);
            Agent { engine, outcomes }
        }
    }

    fn net(s: &str) -> LeaseKey {
        LeaseKey::from(s.parse::<ipnet::Ipv4Net>().unwrap())
    }

    fn desired(own: &str, leased: &[&str]) -> Request {
        Request { own: Some(net(own)), leased: Some(leased.iter().map(|s| net(s)).chain([net(own)]).collect()) }
    }

    fn dual(v4: &str, v6: &str) -> LeaseKey {
        LeaseKey { subnet: Some(v4.parse().unwrap()), subnet_v6: Some(v6.parse().unwrap()) }
    }

    /// Dual-stack: each subnet gets its route (an IPv6 `destRange`, the colons of its name as
    /// dashes); a stale IPv6 route goes as an IPv4 one does; teardown removes both of ours.
    #[tokio::test]
    async fn dual_stack_routes_each_subnet() {
        let rig = Rig::new();
        rig.api.put("weft-2001-db8-42-9---64", "2001:db8:42:9::/64", "node-gone");
        rig.api.put("weft-2001-db8-99---64", "2001:db8:99::/64", "node-gone");
        let mut a = rig.agent("node-a");
        let own = dual("10.244.1.0/24", "2001:db8:42:1::/64");
        let request = Request { own: Some(own), leased: Some([own].into()) };
        a.pass(&request).await.unwrap();
        let routes = rig.api.routes.lock().unwrap().clone();
        let v6 = &routes["weft-2001-db8-42-1---64"];
        assert_eq!(v6.dest_range, "2001:db8:42:1::/64");
        assert_eq!(v6.next_hop_instance.as_deref(), Some(super::super::fake::instance_link("node-a").as_str()));
        assert_eq!(routes["weft-10-244-1-0-24"].dest_range, "10.244.1.0/24");
        a.pass(&request).await.unwrap();
        let names: Vec<String> = rig.api.routes.lock().unwrap().keys().cloned().collect();
        assert_eq!(
            names,
            ["weft-10-244-1-0-24", "weft-2001-db8-42-1---64", "weft-2001-db8-99---64"],
            "the stale IPv6 route went on the second sighting; the one outside the network stays"
        );
        let mut routing = rig.routing("node-a");
        Provider::teardown(&mut routing, own).await.unwrap();
        let names: Vec<String> = rig.api.routes.lock().unwrap().keys().cloned().collect();
        assert_eq!(names, ["weft-2001-db8-99---64"]);
    }

    #[tokio::test]
    async fn creates_once_then_only_reads() {
        let rig = Rig::new();
        let mut a = rig.agent("node-a");
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
        let (mut a, mut b) = (rig.agent("node-a"), rig.agent("node-b"));
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

    /// With a store that shares the leader's listing (issue 17), a settled follower makes no
    /// Compute call at all; a route of its gone missing is seen in the leader's next listing, and
    /// read by the follower itself before it writes.
    #[tokio::test]
    async fn once_settled_only_the_leader_reads_the_routes() {
        let rig = Rig::sharing();
        let (mut a, mut b) = (rig.agent("node-a"), rig.agent("node-b"));
        let (for_a, for_b) =
            (desired("10.244.1.0/24", &["10.244.2.0/24"]), desired("10.244.2.0/24", &["10.244.1.0/24"]));
        a.pass(&for_a).await.unwrap();
        b.pass(&for_b).await.unwrap();
        assert!(rig.api.routes.lock().unwrap().contains_key("weft-10-244-2-0-24"));
        rig.api.take_calls();
        for _ in 0..3 {
            a.pass(&for_a).await.unwrap();
            b.pass(&for_b).await.unwrap();
            assert_eq!(rig.api.take_calls(), ["routes.list"], "the leader's listing, nothing else");
        }
        rig.api.routes.lock().unwrap().remove("weft-10-244-2-0-24");
        a.pass(&for_a).await.unwrap();
        b.pass(&for_b).await.unwrap();
        let calls = rig.api.take_calls();
        assert_eq!(calls[..2], ["routes.list", "routes.get weft-10-244-2-0-24"], "{calls:?}");
        assert!(calls.contains(&"routes.insert weft-10-244-2-0-24".to_string()), "{calls:?}");
        assert!(rig.api.routes.lock().unwrap().contains_key("weft-10-244-2-0-24"));
    }

    #[tokio::test]
    async fn adopted_flannel_route_costs_one_read() {
        let rig = Rig::new();
        rig.api.put("flannel-10-244-1-0-24", "10.244.1.0/24", "node-a");
        // Another agent leads, so node-a reads by name.
        assert!(rig.store.lead(LEADERSHIP, "node-x", Duration::from_secs(60)).await.unwrap());
        let mut a = rig.agent("node-a");
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
    async fn past_route_limit_the_highest_subnet_withdraws_and_a_newcomer_adds_none() {
        let rig = Rig::new();
        let limited = || GceConfig { route_limit: Some(2), ..Default::default() };
        // Three agents found room at once: three routes, a limit of two.
        for (name, dest, node) in [
            ("weft-10-244-1-0-24", "10.244.1.0/24", "node-a"),
            ("weft-10-244-2-0-24", "10.244.2.0/24", "node-b"),
            ("weft-10-244-3-0-24", "10.244.3.0/24", "node-c"),
        ] {
            rig.api.put(name, dest, node);
        }
        let all = ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"];
        let mut c = rig.agent_with("node-c", limited());
        let e = c.pass(&desired("10.244.3.0/24", &all)).await.unwrap_err();
        assert!(e.contains("route_limit = 2") && e.contains("withdrawn"), "{e}");
        assert!(!rig.api.routes.lock().unwrap().contains_key("weft-10-244-3-0-24"));
        let mut a = rig.agent_with("node-a", limited());
        a.pass(&desired("10.244.1.0/24", &all)).await.unwrap();
        assert_eq!(rig.api.routes.lock().unwrap().len(), 2, "the lowest subnets keep theirs");
        // A newcomer with a lower subnet finds the network full and displaces nobody.
        let mut d = rig.agent_with("node-d", limited());
        assert!(d.pass(&desired("10.244.0.0/24", &all)).await.is_err());
        assert_eq!(rig.api.routes.lock().unwrap().len(), 2);
        assert!(a.pass(&desired("10.244.1.0/24", &all)).await.is_ok(), "kept by the next pass too");
    }

    #[tokio::test]
    async fn quota_is_a_clear_error_and_a_metric() {
        let rig = Rig::new();
        *rig.api.insert_error.lock().unwrap() = Some("QUOTA_EXCEEDED".into());
        let mut a = rig.agent("node-a");
        let e = a.pass(&desired("10.244.1.0/24", &[])).await.unwrap_err();
        assert!(e.contains("quota ROUTES-per-project exceeded (limit 2)") && e.contains("weft-10-244-1-0-24"), "{e}");
        let text = rig.health.metrics.encode();
        assert!(text.contains("weft_cloud_route_limit_reached{provider=\"gce\",table=\"default\"} 1"), "{text}");
        assert!(text.contains("weft_cloud_routes_owned{provider=\"gce\",table=\"default\"} 0"), "{text}");
        // The quota raised: asked again only once the refusal is old (no insert bound to fail).
        *rig.api.insert_error.lock().unwrap() = None;
        rig.api.take_calls();
        let mut passes = 0;
        while a.pass(&desired("10.244.1.0/24", &[])).await.is_err() {
            passes += 1;
            assert!(passes <= crate::backend::cloud::room::TRUSTED_CHECKS, "never tried again");
        }
        let inserts = rig.api.take_calls().iter().filter(|c| c.starts_with("routes.insert")).count();
        assert_eq!((passes, inserts), (crate::backend::cloud::room::TRUSTED_CHECKS, 1));
        let text = rig.health.metrics.encode();
        assert!(text.contains("weft_cloud_route_limit_reached{provider=\"gce\",table=\"default\"} 0"), "{text}");
    }

    #[tokio::test]
    async fn teardown_deletes_only_our_route() {
        let rig = Rig::new();
        rig.api.put("weft-10-244-1-0-24", "10.244.1.0/24", "node-a");
        rig.api.put("flannel-10-244-1-0-24", "10.244.1.0/24", "node-old");
        let mut a = rig.routing("node-a");
        Provider::teardown(&mut a, net("10.244.1.0/24")).await.unwrap();
        let routes = rig.api.routes.lock().unwrap();
        assert!(!routes.contains_key("weft-10-244-1-0-24"));
        assert!(routes.contains_key("flannel-10-244-1-0-24"), "not through us: not ours to delete");
    }
}
