//! `host-gw`: a route to each peer's subnet via its public IP on the external interface, and in a
//! dual-stack network one to its IPv6 subnet via its public IPv6 address. Every host must be on
//! one L2 segment; a peer that is not is reported and skipped.

use std::sync::Arc;

use async_trait::async_trait;

use super::peer_route::{add_route, enable_forwarding};
use super::route_sync::PeerObjects;
use super::{Backend, BackendError, BackendKind, LeaseData, Passive, PeerMapping, Registered, StartFailed, Started};
use crate::iface::ExternalInterface;
use crate::kernel::{Kernel, KernelState};
use crate::lease::Lease;
use crate::network::Families;

pub struct HostGw {
    kernel: Arc<dyn Kernel>,
    ext: ExternalInterface,
    /// The network is dual-stack: IPv6 is forwarded too.
    families: Families,
}

impl HostGw {
    pub fn new(kernel: Arc<dyn Kernel>, ext: ExternalInterface, families: Families) -> Self {
        HostGw { kernel, ext, families }
    }
}

#[async_trait]
impl Backend for HostGw {
    async fn register(self: Box<Self>) -> Result<Box<dyn Registered>, BackendError> {
        enable_forwarding(self.kernel.as_ref(), self.families).await;
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
        if let Some(subnet) = lease.subnet {
            let gateway = lease.attrs.public_ip;
            self.on_link(gateway.into())?;
            add_route(&mut state, subnet.into(), gateway.into(), self.ext.index, false, self.use_nexthops);
        }
        // The watcher keeps a lease's subnet of a family only inside the network's of that family.
        if let (Some(subnet), Some(gateway)) = (lease.subnet_v6, lease.attrs.public_ipv6()) {
            self.on_link(gateway.into())?;
            add_route(&mut state, subnet.into(), gateway.into(), self.ext.index, false, self.use_nexthops);
        }
        Ok(state)
    }
}

impl HostGwPeers {
    /// Whether a peer's public address is on our segment of its family. Without an IPv6 address
    /// of ours to tell by, an IPv6 gateway is left to the kernel to judge.
    fn on_link(&self, gateway: std::net::IpAddr) -> Result<(), String> {
        match self.ext.segment_of(gateway) {
            Some(segment) if !segment.contains(&gateway) => Err(format!(
                "public IP {gateway} is not on-link on {} ({}): host-gw needs every host on one L2 segment",
                self.ext.name,
                segment.trunc()
            )),
            _ => Ok(()),
        }
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
            subnet: Some(format!("10.244.{n}.0/24").parse().unwrap()),
            subnet_v6: None,
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
            addr: Some("198.51.100.1/24".parse().unwrap()),
            addr_v6: None,
            public_ip: Some("198.51.100.1".parse().unwrap()),
            public_ipv6: Some("2001:db8::1".parse().unwrap()),
        };
        let backend = Box::new(HostGw::new(kernel.clone(), ext, Families::DUAL_STACK)).register().await.unwrap();
        assert_eq!(backend.lease_data().mtu, 1500);
        // Forwarding is turned on in the (memory) kernel, never in the test machine's /proc/sys.
        assert!(kernel.forwarding.lock().unwrap().contains(&crate::kernel::IpFamily::V4));
        assert!(kernel.forwarding.lock().unwrap().contains(&crate::kernel::IpFamily::V6));
        let Ok(started) = backend.start(&lease(1, "198.51.100.1")).await else { panic!("host-gw start") };
        let mapping = started.peers.expect("host-gw maps peers");
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::HostGw, mapping.mapper, &mapping.links);
        let near = lease(2, "198.51.100.2");
        let far = lease(3, "203.0.113.3");
        let mut dual = lease(4, "198.51.100.4");
        dual.subnet_v6 = Some("2001:db8:42:4::/64".parse().unwrap());
        dual.attrs = dual.attrs.with_v6("2001:db8::4".parse().unwrap(), serde_json::Value::Null);
        let peers: LeaseMap = [near.clone(), far.clone(), dual.clone()].into_iter().map(|l| (l.id(), l)).collect();
        let err = sync.reconcile(&peers).await.unwrap_err().to_string();
        assert!(err.contains("203.0.113.3") && err.contains("not on-link"), "{err}");
        let state = kernel.snapshot();
        assert_eq!(state.routes.len(), 3, "near's, and both of the dual-stack peer's");
        let gateway = |dst: ipnet::IpNet| {
            let RouteTarget::Nexthop(id) = state.routes[&dst].target else { panic!("expected a nexthop route") };
            state.nexthops[&id].gateway.to_string()
        };
        assert_eq!(gateway(near.id()), "198.51.100.2");
        assert_eq!(gateway(dual.id()), "198.51.100.4");
        assert_eq!(gateway(dual.subnet_v6.unwrap().into()), "2001:db8::4");
    }

    /// With an IPv6 address of ours to tell by, a peer whose public IPv6 address is on another
    /// segment is reported as an IPv4 one is.
    #[test]
    fn an_off_link_ipv6_gateway_is_reported() {
        let ext = ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            addr: Some("198.51.100.1/24".parse().unwrap()),
            addr_v6: Some("2001:db8::1/64".parse().unwrap()),
            public_ip: Some("198.51.100.1".parse().unwrap()),
            public_ipv6: Some("2001:db8::1".parse().unwrap()),
        };
        let peers = HostGwPeers { ext, use_nexthops: false };
        let dual = |v6: &str| {
            let mut peer = lease(4, "198.51.100.4");
            peer.subnet_v6 = Some("2001:db8:42:4::/64".parse().unwrap());
            peer.attrs = peer.attrs.with_v6(v6.parse().unwrap(), serde_json::Value::Null);
            peer
        };
        assert_eq!(peers.objects(&dual("2001:db8::4")).unwrap().routes.len(), 2);
        let err = peers.objects(&dual("2001:db8:7::4")).unwrap_err();
        assert!(err.contains("2001:db8:7::4") && err.contains("2001:db8::/64"), "{err}");
    }
}
