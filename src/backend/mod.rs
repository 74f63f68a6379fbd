//! Backends make the other hosts' subnets reachable. Each is chosen by `[network.backend] type`
//! and driven by the agent through one trait.

use std::sync::Arc;

use async_trait::async_trait;

use crate::iface::ExternalInterface;
use crate::kernel::Kernel;
use crate::lease::{Lease, LeaseMap};
use crate::network::Network;
use crate::watch::LeaseEvent;

pub mod alloc;
pub mod config;
pub mod host_gw;
pub mod route_sync;
pub mod vxlan;

pub use config::BackendConfig;

/// What a backend publishes in our lease, and the MTU it leaves for pods.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseData {
    pub backend_type: &'static str,
    pub backend_data: serde_json::Value,
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

#[async_trait]
pub trait Backend: Send {
    /// Prepares the host (devices, cloud lookups) and says what to publish in our lease.
    async fn prepare(&mut self) -> Result<LeaseData, BackendError>;
    /// Our lease is held: finish what needs our subnet.
    async fn start(&mut self, own: &Lease) -> Result<(), BackendError>;
    /// Peers changed; `peers` is the full set after `events`.
    async fn apply(&mut self, peers: &LeaseMap, events: &[LeaseEvent]) -> Result<(), BackendError>;
    /// Makes the installed state match `peers` again (periodic repair).
    async fn reconcile(&mut self, peers: &LeaseMap) -> Result<(), BackendError>;
}

/// Builds the backend `network` asks for; kernel backends talk netlink in this process's namespace.
pub fn create(network: &Network, ext: &ExternalInterface) -> Result<Box<dyn Backend>, BackendError> {
    let kernel = || -> Result<Arc<dyn Kernel>, BackendError> {
        Err(BackendError::Setup("WIRE-NETLINK".into()))
    };
    create_with_kernel(network, ext, kernel)
}

/// Like [`create`], with the kernel supplied (tests use an in-memory one).
pub fn create_with_kernel(
    network: &Network,
    ext: &ExternalInterface,
    kernel: impl FnOnce() -> Result<Arc<dyn Kernel>, BackendError>,
) -> Result<Box<dyn Backend>, BackendError> {
    match &network.backend {
        BackendConfig::Alloc(_) => Ok(Box::new(alloc::Alloc::new(ext.mtu))),
        BackendConfig::Vxlan(config) => Ok(Box::new(vxlan::Vxlan::new(kernel()?, config.clone(), ext.clone()))),
        BackendConfig::HostGw(_) => Ok(Box::new(host_gw::HostGw::new(kernel()?, ext.clone()))),
        other => Err(BackendError::Unsupported(other.type_name())),
    }
}

/// Peers' traffic is forwarded through this host: turn IPv4 forwarding on (in our namespace).
fn enable_forwarding() {
    // WIRE-SYSCTL
}
