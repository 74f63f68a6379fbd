//! `/healthz`, `/readyz`, `/metrics` (Prometheus text) and `/status` (JSON, [`AgentStatus`]) on
//! `agent.listen`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::status::{self, AgentStatus, Backends, ConditionState, KernelObjects, LeaseState, Reload, StoreHealth};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum EventKind {
    Added,
    Changed,
    Removed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub kind: EventKind,
}

/// Labels of a cloud API call: `provider` (aws, gce), `operation` (CreateRoute...), `outcome`
/// (ok, throttled, error...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloudCallLabels {
    pub provider: String,
    pub operation: String,
    pub outcome: String,
}

/// A cloud route table (aws: `rtb-…`; gce: the VPC network).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloudTableLabels {
    pub provider: String,
    pub table: String,
}

/// What a cloud pass decided from (`weft_cloud_passes`): `cloud` (the provider's API) or
/// `shared` (the leader's view, read from the store).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloudPassLabels {
    pub provider: String,
    pub read: String,
}

impl CloudPassLabels {
    pub fn new(provider: &str, shared: bool) -> Self {
        CloudPassLabels { provider: provider.into(), read: if shared { "shared" } else { "cloud" }.into() }
    }
}

/// How a peer is reached (`weft_peers`): `cloud` (a route in our own table) or `overlay` (vxlan).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: String,
}

/// Why a peer was not installed (`weft_peers_rejected_total`): `own_address`, `multicast`...
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerRejectedLabels {
    pub reason: String,
}

/// What `weft_build_info` says about this binary (always 1).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub revision: String,
    /// `aws,gce,kube`: the optional features compiled in.
    pub features: String,
}

/// The agent's counters and gauges.
pub struct Metrics {
    registry: Registry,
    pub lease_expiry_seconds: Gauge<f64, AtomicU64>,
    pub leases_watched: Gauge,
    pub store_errors: Counter,
    pub malformed_leases: Counter,
    /// Peers whose public IP the kernel backends refused to send traffic to.
    pub peers_rejected: Family<PeerRejectedLabels, Counter>,
    pub events: Family<EventLabels, Counter>,
    pub renewals: Counter,
    pub ready: Gauge,
    /// 1 while the store holds a network config this agent refuses to apply live.
    pub network_config_rejected: Gauge,
    pub backend_switches: Counter,
    pub cloud_calls: Family<CloudCallLabels, Counter>,
    pub cloud_passes: Family<CloudPassLabels, Counter>,
    pub cloud_routes_owned: Family<CloudTableLabels, Gauge>,
    /// Route tables or projects that refused our route for lack of room (quota, route limit).
    pub cloud_route_limit: Family<CloudTableLabels, Gauge>,
    /// Routes of the cluster network in each route table (or the project), anyone's.
    pub cloud_routes: Family<CloudTableLabels, Gauge>,
    /// How many routes of the cluster network a table takes, once known (`route_limit`, or
    /// learned from the cloud's refusal).
    pub cloud_route_capacity: Family<CloudTableLabels, Gauge>,
    /// Peers by path, for the cloud backends.
    pub peers_by_path: Family<PathLabels, Gauge>,
    /// Routes and nexthop objects of others in peers' way, which weft leaves alone.
    pub kernel_conflicts: Gauge,
    pub build_info: Family<BuildLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let m = Metrics {
            registry: Registry::default(),
            lease_expiry_seconds: Gauge::default(),
            leases_watched: Gauge::default(),
            store_errors: Counter::default(),
            malformed_leases: Counter::default(),
            peers_rejected: Family::default(),
            events: Family::default(),
            renewals: Counter::default(),
            ready: Gauge::default(),
            network_config_rejected: Gauge::default(),
            backend_switches: Counter::default(),
            cloud_calls: Family::default(),
            cloud_passes: Family::default(),
            cloud_routes_owned: Family::default(),
            cloud_route_limit: Family::default(),
            cloud_routes: Family::default(),
            cloud_route_capacity: Family::default(),
            peers_by_path: Family::default(),
            kernel_conflicts: Gauge::default(),
            build_info: Family::default(),
        };
        registry.register(
            "lease_expiry_timestamp_seconds",
            "When this host's lease runs out (Unix time; 0: a reservation or none held)",
            m.lease_expiry_seconds.clone(),
        );
        registry.register("leases_watched", "Other hosts' leases known to this agent", m.leases_watched.clone());
        registry.register("store_errors", "Failed requests to the lease store", m.store_errors.clone());
        registry.register("malformed_leases", "Store entries skipped as unreadable", m.malformed_leases.clone());
        registry.register(
            "peers_rejected",
            "Peer leases whose public IP no kernel object is installed towards, by reason",
            m.peers_rejected.clone(),
        );
        registry.register("lease_events", "Lease events handed to the backend", m.events.clone());
        registry.register("lease_renewals", "Renewals of this host's lease", m.renewals.clone());
        registry.register("ready", "1 when /readyz answers 200", m.ready.clone());
        registry.register(
            "network_config_rejected",
            "1 while the store holds a network config this agent cannot apply live (it runs the previous one)",
            m.network_config_rejected.clone(),
        );
        registry.register("backend_switches", "Backend switches applied live", m.backend_switches.clone());
        registry.register("cloud_api_calls", "Cloud API calls by operation and outcome", m.cloud_calls.clone());
        registry.register(
            "cloud_passes",
            "Cloud route passes by what they decided from: the cloud's API, or the leader's view shared through the store",
            m.cloud_passes.clone(),
        );
        registry.register(
            "cloud_routes_owned",
            "Cloud routes weft owns, per route table",
            m.cloud_routes_owned.clone(),
        );
        registry.register(
            "cloud_route_limit_reached",
            "1 while a route table (or project quota) has no room for our route",
            m.cloud_route_limit.clone(),
        );
        registry.register(
            "cloud_routes",
            "Routes of the cluster network per route table (or project), whoever made them",
            m.cloud_routes.clone(),
        );
        registry.register(
            "cloud_route_capacity",
            "Routes of the cluster network a route table takes (route_limit, or learned when the cloud refused one)",
            m.cloud_route_capacity.clone(),
        );
        registry.register(
            "peers",
            "Peers by path: cloud (a route in this host's own route table) or overlay (vxlan, with overflow)",
            m.peers_by_path.clone(),
        );
        registry.register(
            "kernel_conflicts",
            "Routes and nexthop objects of others where a peer's would go (not replaced; the peer is not installed)",
            m.kernel_conflicts.clone(),
        );
        registry.register(
            "build_info",
            "Always 1; the labels say the version, git revision and optional features of this agent",
            m.build_info.clone(),
        );
        let build = crate::build_info::BuildInfo::current();
        let labels = BuildLabels {
            version: build.version.to_string(),
            revision: build.revision.to_string(),
            features: crate::build_info::features_label(&build.features),
        };
        m.build_info.get_or_create(&labels).set(1);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// One thing readiness waits for. Each is written by one owner only, so that one part's
/// recovery never hides another's failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    /// The cluster network config is read (the agent loop, at start).
    Network,
    /// Our lease is held and `subnet.env` written (the lease loop).
    Lease,
    /// The stored network config is the one running (network changes: refused or failed switches).
    Config,
    /// The backend is started and its own checks pass (the data plane).
    Backend,
    /// weft's nftables masquerade rules are as `agent.ip_masq` wants (the host's side effects).
    Masquerade,
    /// weft's FORWARD accept rules are as `agent.forward_rules` wants (the host's side effects).
    Forward,
    /// Our cloud route is in place (the cloud backend's worker).
    Cloud,
    /// No peer is kept out of the kernel by a route or nexthop object of someone else (the lease
    /// loop, after each sync of the data plane).
    Kernel,
    /// The store answers the lease loop: its last listing, renewal or lease watch succeeded
    /// (through [`Health::store_error`] and [`Health::store_ok`] only). The data plane keeps running
    /// meanwhile; this says that it runs on what was last read.
    Store,
}

impl Condition {
    pub const ALL: [Condition; 9] = [
        Condition::Network,
        Condition::Lease,
        Condition::Config,
        Condition::Backend,
        Condition::Masquerade,
        Condition::Forward,
        Condition::Cloud,
        Condition::Kernel,
        Condition::Store,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Condition::Network => "network",
            Condition::Lease => "lease",
            Condition::Config => "config",
            Condition::Backend => "backend",
            Condition::Masquerade => "masquerade",
            Condition::Forward => "forward",
            Condition::Cloud => "cloud",
            Condition::Kernel => "kernel",
            Condition::Store => "store",
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every failing condition with its reason; ready when none fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    failing: BTreeMap<Condition, String>,
}

impl Default for Readiness {
    /// At start: nothing read, leased or started yet.
    fn default() -> Self {
        let failing = [
            (Condition::Network, "no network config read yet"),
            (Condition::Lease, "no lease held yet"),
            (Condition::Backend, "backend not started yet"),
        ];
        Readiness { failing: failing.into_iter().map(|(c, why)| (c, why.to_string())).collect() }
    }
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.failing.is_empty()
    }

    /// Why `condition` fails; `None` when it holds.
    pub fn problem(&self, condition: Condition) -> Option<&str> {
        self.failing.get(&condition).map(String::as_str)
    }

    /// The failing conditions, in the order of [`Condition::ALL`].
    pub fn failing(&self) -> impl Iterator<Item = (Condition, &str)> {
        self.failing.iter().map(|(c, why)| (*c, why.as_str()))
    }

    /// `/readyz`'s body: `ok`, or a line per failing condition.
    fn explain(&self) -> String {
        if self.is_ready() {
            return "ok\n".into();
        }
        self.failing().map(|(condition, why)| format!("{condition}: {why}\n")).collect()
    }
}

/// State shared by the agent loop and the HTTP server.
#[derive(Default)]
pub struct Health {
    pub metrics: Metrics,
    readiness: Mutex<Readiness>,
    status: Mutex<StatusParts>,
}

/// What `/status` shows beyond readiness and metrics, each part written by its owner.
#[derive(Debug, Clone, Default)]
struct StatusParts {
    lease: Option<LeaseState>,
    backends: Backends,
    kernel_peers: u64,
    kernel: KernelObjects,
    store: StoreHealth,
    last_reload: Option<Reload>,
}

impl Health {
    /// `condition` holds.
    pub fn ok(&self, condition: Condition) {
        self.set(condition, None);
    }

    /// `condition` fails, for `why`.
    pub fn fail(&self, condition: Condition, why: impl std::fmt::Display) {
        self.set(condition, Some(why.to_string()));
    }

    /// `condition` holds (`None`) or fails for the reason given.
    pub fn set(&self, condition: Condition, problem: Option<String>) {
        let mut readiness = self.readiness.lock().unwrap_or_else(|e| e.into_inner());
        match problem {
            Some(why) => readiness.failing.insert(condition, why),
            None => readiness.failing.remove(&condition),
        };
        self.metrics.ready.set(readiness.is_ready() as i64);
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, StatusParts> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Our lease as now held (the lease loop).
    pub fn set_lease(&self, lease: LeaseState) {
        self.parts().lease = Some(lease);
    }

    /// The data plane after a sync: backends, peers with kernel objects, objects wanted and
    /// installed.
    pub fn set_dataplane(&self, backends: Backends, kernel_peers: u64, kernel: KernelObjects) {
        let mut parts = self.parts();
        (parts.backends, parts.kernel_peers, parts.kernel) = (backends, kernel_peers, kernel);
    }

    /// A request of the lease loop to the store failed: counted (`weft_store_errors_total`), kept
    /// as the last, and the store condition fails until a request succeeds. Only for failures a
    /// success always follows once the store is back (a renewal or a listing is retried until it
    /// succeeds, a broken lease watch resumes with a full listing).
    pub fn store_error(&self, why: impl std::fmt::Display) {
        let why = why.to_string();
        self.note_store_error(&why);
        self.fail(Condition::Store, format!("unreachable: {why}"));
    }

    /// The network config's watch broke: counted and kept as the last error like any other, but
    /// readiness is left to the lease watch. This watch says nothing when it is back (it sends
    /// only changes), so a failure it reported would outlive the outage.
    pub fn config_watch_error(&self, why: impl std::fmt::Display) {
        self.note_store_error(&why.to_string());
    }

    fn note_store_error(&self, why: &str) {
        self.metrics.store_errors.inc();
        let mut parts = self.parts();
        parts.store.ok = false;
        parts.store.last_error = Some(why.to_string());
        parts.store.last_error_at = Some(status::timestamp(std::time::SystemTime::now()));
    }

    /// A request to the store succeeded.
    pub fn store_ok(&self) {
        self.parts().store.ok = true;
        self.ok(Condition::Store);
    }

    /// The configuration was read again, for `trigger`, with `outcome`.
    pub fn reloaded(&self, trigger: &str, ok: bool, outcome: impl std::fmt::Display) {
        let at = status::timestamp(std::time::SystemTime::now());
        self.parts().last_reload = Some(Reload { at, trigger: trigger.to_string(), ok, outcome: outcome.to_string() });
    }

    /// `/status`'s document.
    pub fn status(&self) -> AgentStatus {
        let readiness = self.readiness();
        let conditions = Condition::ALL
            .iter()
            .map(|c| {
                let reason = readiness.problem(*c).map(str::to_string);
                ConditionState { name: c.name().to_string(), ok: reason.is_none(), reason }
            })
            .collect();
        let path = |name: &str| {
            let labels = PathLabels { path: name.to_string() };
            self.metrics.peers_by_path.get(&labels).map_or(0, |g| g.get().max(0) as u64)
        };
        let parts = self.parts().clone();
        let mut store = parts.store;
        store.errors = self.metrics.store_errors.get();
        AgentStatus {
            ready: readiness.is_ready(),
            conditions,
            lease: parts.lease,
            backends: parts.backends,
            peers: status::Peers {
                known: self.metrics.leases_watched.get().max(0) as u64,
                kernel: parts.kernel_peers,
                cloud: path("cloud"),
                overlay: path("overlay"),
            },
            kernel: parts.kernel,
            store,
            last_reload: parts.last_reload,
        }
    }
}

/// Serves the endpoints until `cancel`. Binding happens before returning, so a taken port is an
/// error at start-up, not a log line later.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status_json))
        .with_state(health);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "health server stopped");
        }
    }))
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let readiness = health.readiness();
    let status = if readiness.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, readiness.explain())
}

/// 200 with the document whether ready or not: `ready` says which (a client must not need the
/// status code to read it).
async fn status_json(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let body = serde_json::to_string_pretty(&health.status()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    ([(header::CONTENT_TYPE, "application/json")], body + "\n")
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], health.metrics.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_everything() {
        let health = Health::default();
        assert!(!health.readiness().is_ready());
        for condition in [Condition::Network, Condition::Lease, Condition::Backend] {
            health.ok(condition);
        }
        assert!(health.readiness().is_ready());
        assert!(health.metrics.encode().contains("weft_ready 1"));
        health.fail(Condition::Lease, "network full");
        assert_eq!(health.readiness().explain(), "lease: network full\n");
        assert!(health.metrics.encode().contains("weft_ready 0"));
    }

    #[test]
    fn every_failing_condition_is_listed_and_each_owner_clears_only_its_own() {
        let health = Health::default();
        for condition in Condition::ALL {
            health.ok(condition);
        }
        health.fail(Condition::Masquerade, "nftables: permission denied");
        health.fail(Condition::Cloud, "route table rtb-1 is full");
        // The backend's check passing says nothing about masquerade or the cloud.
        health.ok(Condition::Backend);
        let readiness = health.readiness();
        assert_eq!(readiness.explain(), "masquerade: nftables: permission denied\ncloud: route table rtb-1 is full\n");
        assert_eq!(readiness.problem(Condition::Cloud), Some("route table rtb-1 is full"));
        health.ok(Condition::Cloud);
        assert_eq!(health.readiness().failing().map(|(c, _)| c).collect::<Vec<_>>(), [Condition::Masquerade]);
    }

    #[test]
    fn the_status_lists_every_condition_and_counts_store_errors() {
        let health = Health::default();
        health.store_error("connection refused");
        health.store_error("connection refused again");
        let status = health.status();
        assert!(!status.ready);
        assert_eq!(status.conditions.len(), Condition::ALL.len());
        assert_eq!(status.conditions[1].reason.as_deref(), Some("no lease held yet"));
        assert!(status.conditions[2].ok, "config holds from the start");
        assert_eq!((status.store.ok, status.store.errors), (false, 2));
        assert_eq!(status.store.last_error.as_deref(), Some("connection refused again"));
        health.store_ok();
        health.reloaded("SIGHUP", true, "unchanged");
        let status = health.status();
        assert!(status.store.ok && status.store.last_error.is_some(), "the last error stays on record");
        assert_eq!(
            status.last_reload.map(|r| (r.trigger, r.ok, r.outcome)),
            Some(("SIGHUP".into(), true, "unchanged".into()))
        );
    }

    #[test]
    fn an_unreachable_store_fails_readiness_until_a_request_succeeds() {
        let health = Health::default();
        for condition in Condition::ALL {
            health.ok(condition);
        }
        health.store_error("lease watch: connection refused");
        assert_eq!(health.readiness().explain(), "store: unreachable: lease watch: connection refused\n");
        health.store_ok();
        assert!(health.readiness().is_ready());
        // A broken config watch is on record, but readiness follows the lease watch alone.
        health.config_watch_error("network config watch: connection reset");
        assert!(health.readiness().is_ready());
        let status = health.status();
        assert_eq!((status.store.ok, status.store.errors), (false, 2));
        assert_eq!(status.store.last_error.as_deref(), Some("network config watch: connection reset"));
    }

    #[test]
    fn metrics_names() {
        let m = Metrics::default();
        m.events.get_or_create(&EventLabels { kind: EventKind::Added }).inc();
        m.peers_rejected.get_or_create(&PeerRejectedLabels { reason: "multicast".into() }).inc();
        let text = m.encode();
        for name in [
            "weft_lease_expiry_timestamp_seconds",
            "weft_leases_watched",
            "weft_store_errors_total",
            "weft_lease_events_total{kind=\"Added\"} 1",
            "weft_peers_rejected_total{reason=\"multicast\"} 1",
            "weft_kernel_conflicts 0",
        ] {
            assert!(text.contains(name), "{name} missing in {text}");
        }
    }

    #[test]
    fn build_info_says_what_this_binary_is() {
        let text = Metrics::default().encode();
        let features = crate::build_info::features_label(&crate::build_info::features());
        let line = format!(
            "weft_build_info{{version=\"{}\",revision=\"{}\",features=\"{features}\"}} 1\n",
            crate::build_info::VERSION,
            crate::build_info::REVISION
        );
        assert!(text.contains(&line), "{line} missing in {text}");
    }
}
