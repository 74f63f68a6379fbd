//! `host-gw`: a route to each peer's subnet via its public IP on the external interface. Every
//! host must be on one L2 segment; a peer that is not is reported and skipped.

use std::sync::Arc;

use async_trait::async_trait;

use super::route_sync::{PeerObjects, RouteSync};
use super::vxlan::add_route;
use super::{Backend, BackendError, LeaseData};
use crate::iface::ExternalInterface;
use crate::kernel::{Kernel, KernelState, Ownership};
use crate::lease::{Lease, LeaseMap};
use crate::watch::LeaseEvent;

pub struct HostGw {
    kernel: Arc<dyn Kernel>,
    ext: ExternalInterface,
    sync: Option<RouteSync>,
}

impl HostGw {
    pub fn new(kernel: Arc<dyn Kernel>, ext: ExternalInterface) -> Self {
        HostGw { kernel, ext, sync: None }
    }

    fn sync(&mut self) -> Result<&mut RouteSync, BackendError> {
        self.sync.as_mut().ok_or_else(|| BackendError::Setup("host-gw backend used before start".into()))
    }
}

#[async_trait]
impl Backend for HostGw {
    async fn prepare(&mut self) -> Result<LeaseData, BackendError> {
        super::enable_forwarding();
        Ok(LeaseData { backend_type: "host-gw", backend_data: serde_json::Value::Null, mtu: self.ext.mtu })
    }

    async fn start(&mut self, _own: &Lease) -> Result<(), BackendError> {
        let peers = HostGwPeers { ext: self.ext.clone(), use_nexthops: self.kernel.supports_nexthops().await };
        // Routes are recognised by weft's protocol number; no device is ours.
        self.sync = Some(RouteSync::new(self.kernel.clone(), Ownership::default(), Box::new(peers)));
        Ok(())
    }

    async fn apply(&mut self, peers: &LeaseMap, events: &[LeaseEvent]) -> Result<(), BackendError> {
        self.sync()?.on_events(peers, events).await.map(|_| ())
    }

    async fn reconcile(&mut self, peers: &LeaseMap) -> Result<(), BackendError> {
        self.sync()?.reconcile(peers).await.map(|_| ())
    }
}

pub struct HostGwPeers {
    pub ext: ExternalInterface,
    pub use_nexthops: bool,
}

impl PeerObjects for HostGwPeers {
    fn objects(&self, lease: &Lease) -> Result<KernelState, String> {
        let mut state = KernelState::default();
        if lease.attrs.backend_type != "host-gw" {
            return Ok(state);
        }
        let gateway = lease.attrs.public_ip;
        if !self.ext.addr.contains(&gateway) {
            return Err(format!(
                "public IP {gateway} is not on-link on {} ({}): host-gw needs every host on one L2 segment",
                self.ext.name,
                self.ext.addr.trunc()
            ));
        }
        add_route(&mut state, lease, gateway, self.ext.index, false, self.use_nexthops);
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::memory::MemoryKernel;
    use crate::kernel::RouteTarget;
    use crate::lease::{Expiry, LeaseAttrs};

    fn lease(n: u8, ip: &str) -> Lease {
        Lease {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            attrs: LeaseAttrs::new(ip.parse().unwrap(), "host-gw", serde_json::Value::Null),
            expiry: Expiry::Unknown,
        }
    }

    #[tokio::test]
    async fn routes_via_peers_and_reports_off_link_ones() {
        let kernel = Arc::new(MemoryKernel::default());
        let ext = ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            addr: "198.51.100.1/24".parse().unwrap(),
            public_ip: "198.51.100.1".parse().unwrap(),
        };
        let mut backend = HostGw::new(kernel.clone(), ext);
        assert_eq!(backend.prepare().await.unwrap().mtu, 1500);
        backend.start(&lease(1, "198.51.100.1")).await.unwrap();
        let near = lease(2, "198.51.100.2");
        let far = lease(3, "203.0.113.3");
        let peers: LeaseMap = [near.clone(), far.clone()].into_iter().map(|l| (l.subnet, l)).collect();
        let err = backend.reconcile(&peers).await.unwrap_err().to_string();
        assert!(err.contains("203.0.113.3") && err.contains("not on-link"), "{err}");
        let state = kernel.snapshot();
        assert_eq!(state.routes.len(), 1);
        let route = state.routes[&near.subnet];
        let RouteTarget::Nexthop(id) = route.target else { panic!("expected a nexthop route") };
        assert_eq!(state.nexthops[&id].gateway.to_string(), "198.51.100.2");
    }
}
