//! gce: each host's subnet is routed by the VPC network with the host's instance as next hop
//! (flannel's gce backend). Route decisions live in [`plan`]; the API work runs on a task of the
//! backend's own ([`worker`]) so that the agent loop never waits on GCE.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use weft_gce::{CallRecorder, ClientOptions, ComputeApi, CredentialSource, MetadataClient, Metered, SdkCompute};

use super::{Backend, BackendContext, BackendError, LeaseData, PeerMapping};
use crate::backend::config::GceConfig;
use crate::health::{CloudCallLabels, Health};
use crate::lease::{BackendData, Lease, LeaseMap};

#[cfg(test)]
mod fake;
pub mod plan;
pub mod worker;

use worker::{Desired, Outcome, Routing, SharedOutcome};

pub struct Gce {
    config: GceConfig,
    ctx: BackendContext,
    state: State,
    outcome: SharedOutcome,
    last_request: Option<Instant>,
    /// Our subnet, for teardown.
    own: Option<ipnet::Ipv4Net>,
}

enum State {
    /// Before `prepare()`.
    New,
    /// Metadata read and client built; the task is not running.
    Prepared(Box<Routing>),
    Running {
        requests: watch::Sender<Option<Desired>>,
        task: JoinHandle<Routing>,
        cancel: CancellationToken,
    },
    /// Torn down (or the task was lost).
    Done,
}

impl Gce {
    pub fn new(config: GceConfig, ctx: BackendContext) -> Self {
        Gce {
            config,
            ctx,
            state: State::New,
            outcome: Arc::new(Mutex::new(Outcome::Pending)),
            last_request: None,
            own: None,
        }
    }

    /// Asks the task for a pass over `own` and the leased subnets.
    fn request(&mut self, own: &Lease, peers: &LeaseMap) {
        if let State::Running { requests, .. } = &self.state {
            let mut leased: BTreeSet<_> = peers.keys().copied().collect();
            leased.insert(own.subnet);
            // A pass already queued is replaced: only the latest view matters.
            requests.send_replace(Some(Desired { own: own.subnet, leased: Some(leased) }));
            self.last_request = Some(Instant::now());
        }
    }

    /// Stops the task after its current pass and takes back what it worked with.
    async fn stop(&mut self) -> Option<Routing> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Prepared(routing) => Some(*routing),
            State::Running { task, cancel, .. } => {
                cancel.cancel();
                task.await.ok()
            }
            State::New | State::Done => None,
        }
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

fn setup_error(context: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Setup(format!("gce: {context}: {e}"))
}

#[async_trait]
impl Backend for Gce {
    fn type_name(&self) -> &'static str {
        "gce"
    }

    /// Reads who we are from the metadata server and builds the client; no API call yet.
    async fn prepare(&mut self) -> Result<LeaseData, BackendError> {
        let metadata = MetadataClient::from_env().map_err(|e| setup_error("metadata server", e))?;
        let mut meta = metadata.instance().await.map_err(|e| setup_error("reading instance metadata", e))?;
        if !self.config.project.is_empty() {
            meta.project = self.config.project.clone();
        }
        if !self.config.network.is_empty() {
            meta.network = self.config.network.clone();
        }
        info!(project = %meta.project, zone = %meta.zone, instance = %meta.instance, network = %meta.network, "gce metadata");
        let options = ClientOptions {
            project: meta.project.clone(),
            endpoint: self.config.endpoint.clone(),
            credentials: CredentialSource::from_env(),
        };
        let sdk = SdkCompute::new(&options).await.map_err(|e| setup_error("compute client", e))?;
        let api: Arc<dyn ComputeApi> = Arc::new(Metered::new(sdk, Arc::new(HealthRecorder(self.ctx.health.clone()))));
        let routing = Routing::new(
            api,
            self.config.clone(),
            meta,
            self.ctx.network.network,
            self.ctx.store.clone(),
            self.ctx.health.clone(),
        );
        self.state = State::Prepared(Box::new(routing));
        // GCE routes carry packets unencapsulated: pods get the interface's MTU.
        Ok(LeaseData { backend_type: "gce", backend_data: BackendData::null(), mtu: self.ctx.ext.mtu })
    }

    /// Starts the API task; the first pass comes with the first `check()`, which the agent makes
    /// once it has listed the leases.
    async fn start(&mut self, own: &Lease) -> Result<Option<PeerMapping>, BackendError> {
        self.own = Some(own.subnet);
        match std::mem::replace(&mut self.state, State::Done) {
            State::Prepared(routing) => {
                let (requests, receiver) = watch::channel(None);
                let cancel = CancellationToken::new();
                let task = tokio::spawn(routing.run(receiver, self.outcome.clone(), cancel.clone()));
                self.state = State::Running { requests, task, cancel };
                Ok(None)
            }
            // Started again after our lease changed: the running task takes the new subnet.
            running @ State::Running { .. } => {
                self.state = running;
                Ok(None)
            }
            other => {
                self.state = other;
                Err(BackendError::Setup("gce: start before prepare".into()))
            }
        }
    }

    async fn check(&mut self, own: &Lease, peers: &LeaseMap, forced: bool) -> Result<(), BackendError> {
        self.own = Some(own.subnet);
        let due = self.last_request.is_none_or(|at| at.elapsed() >= self.config.recheck);
        if forced || due {
            self.request(own, peers);
        }
        if let State::Running { task, .. } = &self.state {
            if task.is_finished() {
                return Err(BackendError::Setup("gce: the route task stopped".into()));
            }
        }
        match &*self.outcome.lock().unwrap_or_else(|e| e.into_inner()) {
            Outcome::Ok => Ok(()),
            Outcome::Pending => Err(BackendError::Setup(format!(
                "gce: route for {} not confirmed yet (first check running)",
                own.subnet
            ))),
            Outcome::Failed(e) => Err(BackendError::Setup(e.clone())),
        }
    }

    async fn teardown(&mut self) -> Result<(), BackendError> {
        match self.stop().await {
            Some(mut routing) => routing.teardown(self.own).await.map_err(BackendError::Setup),
            None => Ok(()),
        }
    }
}

impl Drop for Gce {
    fn drop(&mut self) {
        if let State::Running { cancel, .. } = &self.state {
            cancel.cancel();
        }
    }
}
