//! `/healthz`, `/readyz` and `/metrics` (Prometheus text) on `agent.listen`.

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

/// The agent's counters and gauges.
pub struct Metrics {
    registry: Registry,
    pub lease_expiry_seconds: Gauge<f64, AtomicU64>,
    pub leases_watched: Gauge,
    pub store_errors: Counter,
    pub malformed_leases: Counter,
    pub events: Family<EventLabels, Counter>,
    pub renewals: Counter,
    pub ready: Gauge,
    /// 1 while the store holds a network config this agent refuses to apply live.
    pub network_config_rejected: Gauge,
    pub backend_switches: Counter,
    pub cloud_calls: Family<CloudCallLabels, Counter>,
    pub cloud_routes_owned: Family<CloudTableLabels, Gauge>,
    /// Route tables or projects that refused our route for lack of room (quota, route limit).
    pub cloud_route_limit: Family<CloudTableLabels, Gauge>,
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
            events: Family::default(),
            renewals: Counter::default(),
            ready: Gauge::default(),
            network_config_rejected: Gauge::default(),
            backend_switches: Counter::default(),
            cloud_calls: Family::default(),
            cloud_routes_owned: Family::default(),
            cloud_route_limit: Family::default(),
        };
        registry.register(
            "lease_expiry_timestamp_seconds",
            "When this host's lease runs out (Unix time; 0: a reservation or none held)",
            m.lease_expiry_seconds.clone(),
        );
        registry.register("leases_watched", "Other hosts' leases known to this agent", m.leases_watched.clone());
        registry.register("store_errors", "Failed requests to the lease store", m.store_errors.clone());
        registry.register("malformed_leases", "Store entries skipped as unreadable", m.malformed_leases.clone());
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
            "cloud_routes_owned",
            "Cloud routes weft owns, per route table",
            m.cloud_routes_owned.clone(),
        );
        registry.register(
            "cloud_route_limit_reached",
            "1 while a route table (or project quota) has no room for our route",
            m.cloud_route_limit.clone(),
        );
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

/// What readiness waits for.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    pub lease_held: bool,
    pub subnet_env_written: bool,
    pub backend_ready: bool,
    /// Set while the backend's last check failed (a full cloud route table, an API refusing).
    pub backend_problem: Option<String>,
    /// Set while something keeps the agent from being ready (network full, backend error...).
    pub problem: Option<String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.lease_held
            && self.subnet_env_written
            && self.backend_ready
            && self.problem.is_none()
            && self.backend_problem.is_none()
    }

    fn explain(&self) -> String {
        if self.is_ready() {
            return "ok\n".into();
        }
        let mut missing = Vec::new();
        if !self.lease_held {
            missing.push("no lease held");
        }
        if !self.subnet_env_written {
            missing.push("subnet.env not written");
        }
        if !self.backend_ready {
            missing.push("backend not ready");
        }
        let mut parts: Vec<&str> = missing;
        parts.extend(self.problem.as_deref());
        parts.extend(self.backend_problem.as_deref());
        parts.join("; ") + "\n"
    }
}

/// State shared by the agent loop and the HTTP server.
#[derive(Default)]
pub struct Health {
    pub metrics: Metrics,
    readiness: Mutex<Readiness>,
}

impl Health {
    pub fn update(&self, change: impl FnOnce(&mut Readiness)) {
        let mut readiness = self.readiness.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut readiness);
        self.metrics.ready.set(readiness.is_ready() as i64);
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
        health.update(|r| {
            r.lease_held = true;
            r.subnet_env_written = true;
            r.backend_ready = true;
        });
        assert!(health.readiness().is_ready());
        health.update(|r| r.problem = Some("network full".into()));
        assert_eq!(health.readiness().explain(), "network full\n");
        assert!(health.metrics.encode().contains("weft_ready 0"));
    }

    #[test]
    fn metrics_names() {
        let m = Metrics::default();
        m.events.get_or_create(&EventLabels { kind: EventKind::Added }).inc();
        let text = m.encode();
        for name in [
            "weft_lease_expiry_timestamp_seconds",
            "weft_leases_watched",
            "weft_store_errors_total",
            "weft_lease_events_total{kind=\"Added\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing in {text}");
        }
    }
}
