//! `host-gw`: a route to each peer's subnet via its public IP on the external interface. Every
//! host must be on one L2 segment; a peer that is not is reported and skipped.

use std::sync::Arc;

use async_trait::async_trait;

use super::peer_route::{add_route, enable_forwarding};
use super::route_sync::PeerObjects;
use super::{Backend, BackendError, BackendKind, LeaseData, Passive, PeerMapping, Registered, StartFailed, Started};
use crate::iface::ExternalInterface;
use crate::kernel::{Kernel, KernelState};
use crate::lease::Lease;

pub struct HostGw {
    kernel: Arc<dyn Kernel>,
    ext: ExternalInterface,
}

impl HostGw {
    pub fn new(kernel: Arc<dyn Kernel>, ext: ExternalInterface) -> Self {
        HostGw { kernel, ext }
    }
}

#[async_trait]
impl Backend for HostGw {
    async fn register(self: Box<Self>) -> Result<Box<dyn Registered>, BackendError> {
        enable_forwarding(self.kernel.as_ref()).await;
        let data = LeaseData::plain(BackendKind::HostGw, self.ext.mtu);
        Ok(Box::new(HostGwRegistered { kernel: self.kernel, ext: self.ext, data }))
    }
}

struct HostGwRegistered {
    kernel: Arc<dyn Kernel>,
    ext: ExternalInterface,
    data: LeaseData,
}

#[async_trait]
impl Registered for HostGwRegistered {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    async fn start(self: Box<Self>, _own: &Lease) -> Result<Started, StartFailed> {
        let peers = HostGwPeers { ext: self.ext, use_nexthops: self.kernel.supports_nexthops().await };
        // Routes are recognised by weft's protocol number; no device is ours.
        let mapping = PeerMapping { mapper: Box::new(peers), links: Vec::new(), remap: None };
        Ok(Started { backend: Box::new(Passive(self.data)), peers: Some(mapping) })
    }
}

pub struct HostGwPeers {
    pub ext: ExternalInterface,
    pub use_nexthops: bool,
}

impl PeerObjects for HostGwPeers {
    fn objects(&self, lease: &Lease) -> Result<KernelState, String> {
        let mut state = KernelState::default();
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
    use crate::backend::route_sync::RouteSync;
    use crate::kernel::memory::MemoryKernel;
    use crate::kernel::RouteTarget;
    use crate::lease::{Expiry, LeaseAttrs, LeaseMap};

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
        let backend = Box::new(HostGw::new(kernel.clone(), ext)).register().await.unwrap();
        assert_eq!(backend.lease_data().mtu, 1500);
        // Forwarding is turned on in the (memory) kernel, never in the test machine's /proc/sys.
        assert!(kernel.forwarding.lock().unwrap().contains(&crate::kernel::IpFamily::V4));
        let Ok(started) = backend.start(&lease(1, "198.51.100.1")).await else { panic!("host-gw start") };
        let mapping = started.peers.expect("host-gw maps peers");
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::HostGw, mapping.mapper, &mapping.links);
        let near = lease(2, "198.51.100.2");
        let far = lease(3, "203.0.113.3");
        let peers: LeaseMap = [near.clone(), far.clone()].into_iter().map(|l| (l.subnet, l)).collect();
        let err = sync.reconcile(&peers).await.unwrap_err().to_string();
        assert!(err.contains("203.0.113.3") && err.contains("not on-link"), "{err}");
        let state = kernel.snapshot();
        assert_eq!(state.routes.len(), 1);
        let route = state.routes[&near.subnet.into()];
        let RouteTarget::Nexthop(id) = route.target else { panic!("expected a nexthop route") };
        assert_eq!(state.nexthops[&id].gateway.to_string(), "198.51.100.2");
    }
}
