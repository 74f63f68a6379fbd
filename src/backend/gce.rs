//! gce: each host's subnet is routed by the VPC network with the host's instance as next hop
//! (flannel's gce backend). Route decisions live in [`plan`]; the API work runs on a task of the
//! backend's own ([`worker`]) so that the agent loop never waits on GCE.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use weft_gce::{CallRecorder, ClientOptions, ComputeApi, CredentialSource, MetadataClient, Metered, SdkCompute};

use super::{
    Active, Backend, BackendContext, BackendError, BackendKind, CloudError, LeaseData, Registered, StartFailed, Started,
};
use crate::health::{CloudCallLabels, Condition, Health};
use crate::lease::{Lease, LeaseMap};
use crate::network::backend::GceConfig;

#[cfg(test)]
mod fake;
pub mod plan;
pub mod worker;

use ipnet::Ipv4Net;
use worker::{Desired, Routing};

/// gce as configured.
pub struct Gce {
    config: GceConfig,
    ctx: BackendContext,
}

impl Gce {
    pub fn new(config: GceConfig, ctx: BackendContext) -> Self {
        Gce { config, ctx }
    }
}

/// Counts each API call in `weft_cloud_api_calls_total{provider="gce"}`.
struct HealthRecorder(Arc<Health>);

impl CallRecorder for HealthRecorder {
    fn record(&self, operation: &'static str, outcome: &'static str) {
        let labels = CloudCallLabels { provider: "gce".into(), operation: operation.into(), outcome: outcome.into() };
        self.0.metrics.cloud_calls.get_or_create(&labels).inc();
    }
}

fn cloud_error(context: &str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BackendError {
    CloudError::new("gce", context, source).into()
}

#[async_trait]
impl Backend for Gce {
    /// Reads who we are from the metadata server and builds the client; no API call yet.
    async fn register(self: Box<Self>) -> Result<Box<dyn Registered>, BackendError> {
        let metadata = MetadataClient::from_env().map_err(|e| cloud_error("metadata server", e))?;
        let mut meta = metadata.instance().await.map_err(|e| cloud_error("reading instance metadata", e))?;
        if !self.config.project.is_empty() {
            meta.project = self.config.project.clone();
        }
        if !self.config.network.is_empty() {
            meta.network = self.config.network.clone();
        }
        info!(project = %meta.project, zone = %meta.zone, instance = %meta.instance, network = %meta.network, "gce metadata");
        let options = ClientOptions {
            project: meta.project.clone(),
            endpoint: self.ctx.cloud.gce_endpoint.clone(),
            credentials: CredentialSource::from_env(),
        };
        let sdk = SdkCompute::new(&options).await.map_err(|e| cloud_error("compute client", e))?;
        let api: Arc<dyn ComputeApi> = Arc::new(Metered::new(sdk, Arc::new(HealthRecorder(self.ctx.health.clone()))));
        let routing = Routing::new(
            api,
            self.config.clone(),
            meta,
            self.ctx.network.network,
            self.ctx.store.clone(),
            self.ctx.health.clone(),
        );
        // GCE routes carry packets unencapsulated: pods get the interface's MTU.
        let data = LeaseData::plain(BackendKind::Gce, self.ctx.ext.mtu);
        Ok(Box::new(GceRegistered { routing, config: self.config, health: self.ctx.health, data }))
    }
}

/// gce with its client built, the route task not started.
struct GceRegistered {
    routing: Routing,
    config: GceConfig,
    health: Arc<Health>,
    data: LeaseData,
}

#[async_trait]
impl Registered for GceRegistered {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    /// Starts the API task; the first pass comes with the first `check()`, which the agent makes
    /// once it has listed the leases. Until that pass confirms our route, /readyz says so.
    async fn start(self: Box<Self>, own: &Lease) -> Result<Started, StartFailed> {
        let GceRegistered { routing, config, health, data } = *self;
        health.fail(Condition::Cloud, format!("gce: route for {} not confirmed yet (first check running)", own.subnet));
        let (requests, receiver) = watch::channel(None);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(routing.run(receiver, cancel.clone()));
        let active =
            GceActive { config, health, data, requests, task: Some(task), cancel, last_request: None, own: own.subnet };
        Ok(Started { backend: Box::new(active), peers: None })
    }
}

struct GceActive {
    config: GceConfig,
    health: Arc<Health>,
    data: LeaseData,
    requests: watch::Sender<Option<Desired>>,
    /// Taken by teardown, which gets the task's [`Routing`] back.
    task: Option<JoinHandle<Routing>>,
    cancel: CancellationToken,
    last_request: Option<Instant>,
    /// Our subnet, for teardown.
    own: Ipv4Net,
}

impl GceActive {
    /// Asks the task for a pass over `own` and the leased subnets.
    fn request(&mut self, own: &Lease, peers: &LeaseMap) {
        let mut leased: BTreeSet<_> = peers.keys().copied().collect();
        leased.insert(own.subnet);
        // A pass already queued is replaced: only the latest view matters.
        self.requests.send_replace(Some(Desired { own: own.subnet, leased: Some(leased) }));
        self.last_request = Some(Instant::now());
    }
}

#[async_trait]
impl Active for GceActive {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    async fn check(&mut self, own: &Lease, peers: &LeaseMap, forced: bool) -> Result<(), BackendError> {
        self.own = own.subnet;
        let due = self.last_request.is_none_or(|at| at.elapsed() >= self.config.recheck);
        if forced || due {
            self.request(own, peers);
        }
        match &self.task {
            Some(task) if !task.is_finished() => Ok(()),
            _ => Err(BackendError::TaskStopped(BackendKind::Gce)),
        }
    }

    /// Stops the task after its current pass, then removes our route with what it worked with.
    async fn teardown(mut self: Box<Self>) -> Result<(), BackendError> {
        self.cancel.cancel();
        self.health.ok(Condition::Cloud);
        let Some(task) = self.task.take() else { return Ok(()) };
        let mut routing = task.await.map_err(|e| cloud_error("route task", e))?;
        routing.teardown(Some(self.own)).await.map_err(|e| cloud_error("teardown", e))
    }
}

impl Drop for GceActive {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
