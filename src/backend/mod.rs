//! Backends make the other hosts' subnets reachable. Each is chosen by `[network.backend] type`.
//!
//! A backend's life is three types, so its steps cannot come out of order:
//! [`Backend`] (configured, nothing touched) → [`Backend::register`] sets the host up and yields a
//! [`Registered`] backend, which knows what to publish in our lease → once the lease is held,
//! [`Registered::start`] yields an [`Active`] one, checked on every resync and torn down when the
//! cluster moves to another backend. The data plane ([`crate::dataplane`]) drives all of it.

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::CloudSection;
use crate::health::Health;
use crate::iface::ExternalInterface;
use crate::kernel::{Kernel, KernelError};
use crate::lease::{BackendData, Lease, LeaseAttrs, LeaseKey, LeaseMap};
use crate::network::Network;
use crate::store::Leadership;

pub mod alloc;
#[cfg(feature = "aws")]
pub mod aws_vpc;
#[cfg(any(feature = "aws", feature = "gce"))]
pub mod cloud;
#[cfg(feature = "gce")]
pub mod gce;
pub mod host_gw;
pub mod peer_route;
pub mod peer_trust;
pub mod route_sync;
pub mod vxlan;

pub use crate::network::backend::{BackendConfig, BackendKind};
pub use route_sync::PeerObjects;

/// What a backend publishes in our lease, and the MTU it leaves for pods.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseData {
    pub kind: BackendKind,
    pub backend_data: BackendData,
    /// What the backend publishes for IPv6 in a dual-stack network (`BackendV6Data`).
    pub backend_v6_data: BackendData,
    pub mtu: u32,
}

impl LeaseData {
    /// A backend that publishes nothing of its own (`BackendData: null`).
    pub fn plain(kind: BackendKind, mtu: u32) -> Self {
        LeaseData { kind, backend_data: BackendData::null(), backend_v6_data: BackendData::null(), mtu }
    }

    /// The attributes this host publishes with this backend: its public addresses and the
    /// backend's data, the IPv6 ones in a network with IPv6. An IPv6-only host publishes
    /// 0.0.0.0 as its IPv4 address, as flannel writes it.
    pub fn attrs(&self, ext: &ExternalInterface, network: &Network) -> Result<LeaseAttrs, BackendError> {
        let public_ip = if network.is_ipv6_only() {
            std::net::Ipv4Addr::UNSPECIFIED
        } else {
            ext.require_public_ip().map_err(|problem| BackendError::Config { backend: self.kind, problem })?
        };
        let attrs = LeaseAttrs::new(public_ip, self.kind.as_str(), self.backend_data.clone());
        if network.ipv6.is_none() {
            return Ok(attrs);
        }
        let public_ipv6 =
            ext.require_public_ipv6().map_err(|problem| BackendError::Config { backend: self.kind, problem })?;
        Ok(attrs.with_v6(public_ipv6, self.backend_v6_data.clone()))
    }
}

/// A cloud API's refusal or failure, with the call that failed.
#[derive(Debug, thiserror::Error)]
#[error("{provider}: {context}: {source}")]
pub struct CloudError {
    pub provider: &'static str,
    pub context: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl CloudError {
    pub fn new(
        provider: &'static str,
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        CloudError { provider, context: context.into(), source: source.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {0} is not built into this weft (it needs the cargo feature of that backend)")]
    Unsupported(BackendKind),
    #[error("{backend} config: {problem}")]
    Config { backend: BackendKind, problem: String },
    #[error("{context}: {source}")]
    Kernel {
        context: String,
        #[source]
        source: KernelError,
    },
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// The backend's own task (cloud API work) is gone; the agent must be restarted to get it back.
    #[error("{0}: its worker task stopped")]
    TaskStopped(BackendKind),
    /// Some peers could not be installed; the others were.
    #[error("{} peer(s) failed: {}", .0.len(), .0.join("; "))]
    Peers(Vec<String>),
}

impl BackendError {
    pub fn kernel(context: impl Into<String>, source: KernelError) -> Self {
        BackendError::Kernel { context: context.into(), source }
    }
}

/// How a kernel backend's peers become kernel objects, and the devices whose entries are its own.
pub struct PeerMapping {
    pub mapper: Box<dyn PeerObjects>,
    pub links: Vec<u32>,
    /// Tells of peers whose mapping changed without a lease event (which peers the cloud
    /// carries, with overflow): the data plane maps those again.
    pub remap: Option<tokio::sync::watch::Receiver<std::collections::BTreeSet<ipnet::IpNet>>>,
}

/// A backend as configured: nothing on the host touched yet.
#[async_trait]
pub trait Backend: Send {
    /// Sets the host up for this backend (devices, cloud lookups); the result knows what to
    /// publish in our lease. On failure nothing is left half made that a retry would trip over.
    async fn register(self: Box<Self>) -> Result<Box<dyn Registered>, BackendError>;
}

/// A backend whose host side is set up, waiting for our lease.
#[async_trait]
pub trait Registered: Send + Sync {
    fn lease_data(&self) -> &LeaseData;
    fn kind(&self) -> BackendKind {
        self.lease_data().kind
    }
    /// Devices this backend made or adopted (kept while another live backend uses them).
    fn links(&self) -> Vec<u32> {
        Vec::new()
    }
    /// Our lease is held: finish what needs our subnet. A failure hands the backend back, so
    /// that what `register` made can be removed.
    async fn start(self: Box<Self>, own: &Lease) -> Result<Started, StartFailed>;
    /// Undoes `register` (a switch that did not go through). Most backends leave nothing to undo.
    async fn abandon(self: Box<Self>) -> Result<(), BackendError> {
        Ok(())
    }
}

/// A started backend and, for a kernel backend, how its peers map to kernel objects.
pub struct Started {
    pub backend: Box<dyn Active>,
    pub peers: Option<PeerMapping>,
}

/// A start that failed, with the backend it was given.
pub struct StartFailed {
    pub error: BackendError,
    pub backend: Box<dyn Registered>,
}

/// A running backend. Kernel objects for peers are installed by the data plane's route-sync
/// engine from the backend's [`PeerMapping`]; the backend keeps its own cloud work and teardown.
#[async_trait]
pub trait Active: Send + Sync {
    fn lease_data(&self) -> &LeaseData;
    fn kind(&self) -> BackendKind {
        self.lease_data().kind
    }
    /// Our lease moved to another subnet (it was lost and leased again).
    async fn own_lease_changed(&mut self, _own: &Lease) -> Result<(), BackendError> {
        Ok(())
    }
    /// Keys whose lease is in the store but unreadable: a cloud backend counts their subnets as
    /// leased, so that their routes are never judged stale. Told before each `check`.
    fn unreadable_leases(&mut self, _keys: &std::collections::BTreeSet<LeaseKey>) {}
    /// Our lease ran out while the store could not be reached: another host may hold our subnet
    /// by now. A cloud backend stops asserting its route until `check` brings a lease again.
    fn own_lease_lapsed(&mut self) {}
    /// Work of the backend's own (cloud routes), called on every resync with `forced = false`
    /// (a backend keeps its own pace, e.g. `recheck`) and after each lease renewal with
    /// `forced = true`. `peers` is every other lease. Must not block for long: slow API work
    /// belongs on a task of its own, which reports through its own readiness condition.
    async fn check(&mut self, _own: &Lease, _peers: &LeaseMap, _forced: bool) -> Result<(), BackendError> {
        Ok(())
    }
    /// Removes what this backend set up on the host, when the cluster moved to another backend.
    async fn teardown(self: Box<Self>) -> Result<(), BackendError>;
}

/// The peers (by their [`Lease::id`], as [`LeaseMap`] keys them) with a subnet of either family
/// in one of two sets of carried subnets and not the other: peers whose path changed.
pub fn cloud_paths_changed(
    before: &std::collections::BTreeSet<ipnet::IpNet>,
    after: &std::collections::BTreeSet<ipnet::IpNet>,
    peers: &crate::lease::LeaseMap,
) -> Vec<ipnet::IpNet> {
    let mut changed = Vec::new();
    let mut others = std::collections::BTreeSet::new();
    for subnet in before.symmetric_difference(after) {
        if peers.contains_key(subnet) {
            changed.push(*subnet);
        } else {
            others.insert(*subnet);
        }
    }
    if !others.is_empty() {
        // A lease is keyed by one of its subnets: one walk finds the holders of the others.
        let holders = peers.iter().filter(|(_, l)| l.key().subnets().any(|s| others.contains(&s)));
        changed.extend(holders.map(|(id, _)| id));
        changed.sort_unstable();
        changed.dedup();
    }
    changed
}

/// What a backend may need from the agent besides the kernel.
#[derive(Clone)]
pub struct BackendContext {
    pub network: Network,
    pub ext: ExternalInterface,
    /// For cluster-wide chores done by one agent at a time ([`Leadership::lead`]).
    pub store: Arc<dyn Leadership>,
    pub health: Arc<Health>,
    /// The cloud endpoints, from the agent's own config only (never the store's network config).
    pub cloud: CloudSection,
}

/// The backend the network asks for; `kernel` gives kernel backends their kernel.
pub fn create(
    ctx: &BackendContext,
    kernel: impl FnOnce() -> Result<Arc<dyn Kernel>, BackendError>,
) -> Result<Box<dyn Backend>, BackendError> {
    let ext = &ctx.ext;
    match &ctx.network.backend {
        BackendConfig::Alloc(_) => Ok(Box::new(alloc::Alloc::new(ext.mtu))),
        BackendConfig::Vxlan(config) => {
            let vxlan = vxlan::Vxlan::new(kernel()?, config.clone(), ext.clone());
            Ok(Box::new(vxlan.families(ctx.network.families())))
        }
        BackendConfig::HostGw(_) => Ok(Box::new(host_gw::HostGw::new(kernel()?, ext.clone(), ctx.network.families()))),
        #[cfg(feature = "aws")]
        BackendConfig::AwsVpc(config) => {
            let paths = cloud::CloudPaths::default();
            let aws = Box::new(aws_vpc::AwsVpc::new(ctx, config.clone(), paths.clone())?);
            with_overflow(aws, config.overflow, paths, ctx, kernel)
        }
        #[cfg(feature = "gce")]
        BackendConfig::Gce(config) => {
            let paths = cloud::CloudPaths::default();
            let gce = Box::new(gce::Gce::new(config.clone(), ctx.clone(), paths.clone()));
            with_overflow(gce, config.overflow, paths, ctx, kernel)
        }
        // Reached only when a cloud backend's feature is left out of the build.
        #[allow(unreachable_patterns)]
        other => Err(BackendError::Unsupported(other.kind())),
    }
}

/// `cloud` alone, or with vxlan for the peers its routes do not carry (`overflow = "vxlan"`);
/// either way on a host that forwards.
#[cfg(any(feature = "aws", feature = "gce"))]
fn with_overflow(
    cloud: Box<dyn Backend>,
    overflow: Option<crate::network::backend::Overflow>,
    paths: cloud::CloudPaths,
    ctx: &BackendContext,
    kernel: impl FnOnce() -> Result<Arc<dyn Kernel>, BackendError>,
) -> Result<Box<dyn Backend>, BackendError> {
    let kernel = kernel()?;
    let families = ctx.network.families();
    match overflow {
        None => Ok(Box::new(cloud::forwarding::Forwarding::new(cloud, kernel, families))),
        Some(crate::network::backend::Overflow::Vxlan) => {
            // The vxlan part turns forwarding on itself, and carries both families.
            let overlay = vxlan::Vxlan::new(kernel, crate::network::backend::VxlanConfig::default(), ctx.ext.clone())
                .families(families);
            Ok(Box::new(cloud::hybrid::Hybrid::new(cloud, Box::new(overlay), paths)))
        }
    }
}

/// An [`Active`] backend with nothing of its own to check or remove.
pub(crate) struct Passive(pub LeaseData);

#[async_trait]
impl Active for Passive {
    fn lease_data(&self) -> &LeaseData {
        &self.0
    }

    async fn teardown(self: Box<Self>) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkSection;

    fn ext(v4: bool) -> ExternalInterface {
        ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            addr: v4.then(|| "198.51.100.1/24".parse().unwrap()),
            addr_v6: Some("2001:db8::1/64".parse().unwrap()),
            public_ip: v4.then(|| "198.51.100.1".parse().unwrap()),
            public_ipv6: Some("2001:db8::1".parse().unwrap()),
        }
    }

    fn network(enable_ipv4: bool, ipv6_cidr: &str) -> Network {
        Network::new(&NetworkSection { enable_ipv4, ipv6_cidr: ipv6_cidr.into(), ..Default::default() }).unwrap()
    }

    /// A host publishes the addresses of the network's families: an IPv6-only one 0.0.0.0 for
    /// IPv4 (flannel's spelling), whatever its interface has; a network with IPv4 needs one.
    #[test]
    fn published_addresses_follow_the_networks_families() {
        let data = LeaseData::plain(BackendKind::HostGw, 1500);
        let v6_only = data.attrs(&ext(true), &network(false, "2001:db8:42::/56")).unwrap();
        assert_eq!(v6_only.public_ip, std::net::Ipv4Addr::UNSPECIFIED);
        assert_eq!(v6_only.public_ipv6(), Some("2001:db8::1".parse().unwrap()));
        let dual = data.attrs(&ext(true), &network(true, "2001:db8:42::/56")).unwrap();
        assert_eq!(dual.public_ip.to_string(), "198.51.100.1");
        let err = data.attrs(&ext(false), &network(true, "")).unwrap_err().to_string();
        assert!(err.contains("eth0 has no IPv4 address") && err.contains("agent.public_ip"), "{err}");
        assert!(data.attrs(&ext(false), &network(false, "2001:db8:42::/56")).is_ok());
    }
}
