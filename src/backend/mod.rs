//! Backends make the other hosts' subnets reachable. Each is chosen by `[network.backend] type`
//! and driven by the agent through one trait.

use std::sync::Arc;

use async_trait::async_trait;

use crate::health::Health;
use crate::iface::ExternalInterface;
use crate::kernel::Kernel;
use crate::lease::{BackendData, Lease, LeaseMap};
use crate::network::Network;
use crate::store::Leadership;

pub mod alloc;
#[cfg(feature = "aws")]
pub mod aws_vpc;
pub mod config;
#[cfg(feature = "gce")]
pub mod gce;
pub mod host_gw;
pub mod route_sync;
pub mod vxlan;

pub use config::BackendConfig;
pub use route_sync::PeerObjects;

/// What a backend publishes in our lease, and the MTU it leaves for pods.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseData {
    pub backend_type: &'static str,
    pub backend_data: BackendData,
    pub mtu: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {0:?} is not built into this weft")]
    Unsupported(&'static str),
    #[error("{0}")]
    Setup(String),
    /// Some peers could not be installed; the others were.
    #[error("{} peer(s) failed: {}", .0.len(), .0.join("; "))]
    Peers(Vec<String>),
}

/// How a kernel backend's peers become kernel objects, and the devices whose entries are its own.
pub struct PeerMapping {
    pub mapper: Box<dyn PeerObjects>,
    pub links: Vec<u32>,
}

/// One backend. Kernel objects for peers are installed by the data plane's shared route-sync
/// engine from the backend's [`PeerMapping`]; a backend does its own host setup, cloud work and
/// teardown.
#[async_trait]
pub trait Backend: Send + Sync {
    /// flannel's name for it, as published in leases (`BackendType`).
    fn type_name(&self) -> &'static str;
    /// Prepares the host (devices, cloud lookups) and says what to publish in our lease.
    async fn prepare(&mut self) -> Result<LeaseData, BackendError>;
    /// Our lease is held: finish what needs our subnet. Kernel backends return their mapping.
    async fn start(&mut self, own: &Lease) -> Result<Option<PeerMapping>, BackendError>;
    /// Work of the backend's own (cloud routes), called on every resync with `forced = false`
    /// (a backend keeps its own pace, e.g. `recheck`) and after each lease renewal with
    /// `forced = true`. `peers` is every other lease. An error makes `/readyz` fail until a later
    /// check succeeds. Must not block for long: slow API work belongs on a task of its own.
    async fn check(&mut self, _own: &Lease, _peers: &LeaseMap, _forced: bool) -> Result<(), BackendError> {
        Ok(())
    }
    /// Removes what this backend set up on the host, when the cluster moved to another backend.
    async fn teardown(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// What a backend may need from the agent besides the kernel.
#[derive(Clone)]
pub struct BackendContext {
    pub network: Network,
    pub ext: ExternalInterface,
    /// For cluster-wide chores done by one agent at a time ([`Leadership::lead`]).
    pub store: Arc<dyn Leadership>,
    pub health: Arc<Health>,
}

/// Builds the backend the network asks for; `kernel` gives kernel backends their kernel.
pub fn create_with_kernel(
    ctx: &BackendContext,
    kernel: impl FnOnce() -> Result<Arc<dyn Kernel>, BackendError>,
) -> Result<Box<dyn Backend>, BackendError> {
    let ext = &ctx.ext;
    match &ctx.network.backend {
        BackendConfig::Alloc(_) => Ok(Box::new(alloc::Alloc::new(ext.mtu))),
        BackendConfig::Vxlan(config) => Ok(Box::new(vxlan::Vxlan::new(kernel()?, config.clone(), ext.clone()))),
        BackendConfig::HostGw(_) => Ok(Box::new(host_gw::HostGw::new(kernel()?, ext.clone()))),
        #[cfg(feature = "aws")]
        BackendConfig::AwsVpc(config) => Ok(Box::new(aws_vpc::AwsVpc::new(ctx, config.clone())?)),
        #[cfg(feature = "gce")]
        BackendConfig::Gce(config) => Ok(Box::new(gce::Gce::new(config.clone(), ctx.clone()))),
        // Reached only when a cloud backend's feature is left out of the build.
        #[allow(unreachable_patterns)]
        other => Err(BackendError::Unsupported(other.type_name())),
    }
}

/// Peers' traffic is forwarded through this host: turn IPv4 forwarding on (in our namespace).
fn enable_forwarding() {
    match crate::kernel::sysctl::enable_ipv4_forwarding() {
        Ok(true) => tracing::info!("enabled IPv4 forwarding (net.ipv4.ip_forward = 1)"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not enable IPv4 forwarding"),
    }
}
