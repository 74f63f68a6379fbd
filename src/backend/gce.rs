//! gce: each host's subnet is routed by the VPC network with the host's instance as next hop
//! (flannel's gce backend). Route decisions live in [`plan`]; the API work runs on a task of the
//! backend's own ([`worker`]) so that the agent loop never waits on GCE.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::info;
use weft_gce::{CallRecorder, ClientOptions, ComputeApi, CredentialSource, MetadataClient, Metered, SdkCompute};

use super::cloud::{CloudActive, CloudPaths, Settings};
use super::{
    Backend, BackendContext, BackendError, BackendKind, CloudError, LeaseData, Registered, StartFailed, Started,
};
use crate::health::{CloudCallLabels, Health};
use crate::lease::Lease;
use crate::network::backend::GceConfig;

#[cfg(test)]
mod fake;
pub mod plan;
pub mod worker;

use worker::Routing;

/// gce as configured.
pub struct Gce {
    config: GceConfig,
    ctx: BackendContext,
    /// Where the engine tells which peers our network carries (read by the overflow, if on).
    paths: CloudPaths,
}

impl Gce {
    pub fn new(config: GceConfig, ctx: BackendContext, paths: CloudPaths) -> Self {
        Gce { config, ctx, paths }
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
        let routing = Routing::new(api, self.config.clone(), meta, &self.ctx.network, self.ctx.health.clone());
        // GCE routes carry packets unencapsulated: pods get the interface's MTU.
        let data = LeaseData::plain(BackendKind::Gce, self.ctx.ext.mtu);
        let settings = Settings {
            recheck: self.config.recheck,
            overflow: self.config.overflow.is_some(),
            store: self.ctx.store.clone(),
            health: self.ctx.health.clone(),
            paths: self.paths,
        };
        Ok(Box::new(GceRegistered { routing, settings, data }))
    }
}

/// gce with its client built, the route task not started.
struct GceRegistered {
    routing: Routing,
    settings: Settings,
    data: LeaseData,
}

#[async_trait]
impl Registered for GceRegistered {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    /// Starts the engine; the first pass comes with the first `check()`, which the agent makes
    /// once it has listed the leases.
    async fn start(self: Box<Self>, own: &Lease) -> Result<Started, StartFailed> {
        let GceRegistered { routing, settings, data } = *self;
        Ok(Started { backend: Box::new(CloudActive::start(routing, settings, data, own)), peers: None })
    }
}
