//! `vxlan`: an overlay device `flannel.<vni>`; for each peer an ARP entry, an FDB entry and a
//! route through the device — or, with `direct_routing` and the peer on our L2 segment, a plain
//! route via its public IP.

use std::net::Ipv4Addr;
use std::sync::Arc;

use async_trait::async_trait;

use super::peer_route::{add_route, enable_forwarding};
use super::route_sync::PeerObjects;
use super::{Active, Backend, BackendError, BackendKind, LeaseData, PeerMapping, Registered, StartFailed, Started};
use crate::iface::ExternalInterface;
use crate::kernel::{vxlan_device_name, FdbSpec, Kernel, KernelState, LinkHandle, MacAddr, NeighbourSpec, VxlanSpec};
use crate::lease::Lease;
use crate::network::backend::VxlanConfig;

/// Bytes of outer headers vxlan adds to every packet.
pub const VXLAN_OVERHEAD: u32 = 50;

pub struct Vxlan {
    kernel: Arc<dyn Kernel>,
    config: VxlanConfig,
    ext: ExternalInterface,
}

impl Vxlan {
    pub fn new(kernel: Arc<dyn Kernel>, config: VxlanConfig, ext: ExternalInterface) -> Self {
        Vxlan { kernel, config, ext }
    }

    /// `flannel.<vni>` (see [`vxlan_device_name`]).
    pub fn device_name(vni: u32) -> String {
        vxlan_device_name(vni)
    }
}

/// A MAC derived from our public IP and VNI: the same after a restart or a reboot, so peers'
/// ARP and FDB entries stay valid (a locally administered unicast address).
pub fn stable_mac(public_ip: Ipv4Addr, vni: u32) -> MacAddr {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in public_ip.octets().iter().chain(vni.to_be_bytes().iter()) {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let b = hash.to_be_bytes();
    MacAddr([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

#[async_trait]
impl Backend for Vxlan {
    /// Makes (or adopts) the device; the VtepMAC goes in our lease.
    async fn register(self: Box<Self>) -> Result<Box<dyn Registered>, BackendError> {
        enable_forwarding(self.kernel.as_ref()).await;
        let mtu = if self.config.mtu > 0 { self.config.mtu } else { self.ext.mtu.saturating_sub(VXLAN_OVERHEAD) };
        let spec = VxlanSpec {
            name: Self::device_name(self.config.vni),
            vni: self.config.vni,
            port: self.config.port,
            local: self.ext.addr.addr(),
            underlay_index: self.ext.index,
            gbp: self.config.gbp,
            learning: self.config.learning,
            mtu,
            mac: Some(stable_mac(self.ext.public_ip, self.config.vni)),
        };
        let link = self
            .kernel
            .ensure_vxlan(&spec)
            .await
            .map_err(|e| BackendError::kernel(format!("vxlan device {}", spec.name), e))?;
        let use_nexthops = self.kernel.supports_nexthops().await;
        let backend_data = serde_json::json!({ "VNI": self.config.vni, "VtepMAC": link.mac.to_string() }).into();
        let data = LeaseData { kind: BackendKind::Vxlan, backend_data, mtu };
        let Vxlan { kernel, config, ext } = *self;
        Ok(Box::new(VxlanRegistered {
            device: Device { kernel, vni: config.vni, link },
            config,
            ext,
            use_nexthops,
            data,
        }))
    }
}

/// Our `flannel.<vni>` device.
struct Device {
    kernel: Arc<dyn Kernel>,
    vni: u32,
    link: LinkHandle,
}

impl Device {
    /// Our subnet's first address on the device: the source of what we send through it.
    async fn address(&self, own: &Lease) -> Result<(), BackendError> {
        let addr = ipnet::IpNet::V4(ipnet::Ipv4Net::new(own.subnet.network(), 32).expect("/32 is valid"));
        self.kernel
            .ensure_address(self.link.index, addr)
            .await
            .map_err(|e| BackendError::kernel(format!("address {addr} on {}", Vxlan::device_name(self.vni)), e))
    }

    /// Deleting the device takes its neighbours, FDB entries and routes with it.
    async fn delete(self) -> Result<(), BackendError> {
        let name = Vxlan::device_name(self.vni);
        let found =
            self.kernel.link_by_name(&name).await.map_err(|e| BackendError::kernel(format!("looking up {name}"), e))?;
        if let Some(link) = found {
            self.kernel
                .delete_link(link.index)
                .await
                .map_err(|e| BackendError::kernel(format!("deleting {name}"), e))?;
            tracing::info!(device = %name, "removed the vxlan device");
        }
        Ok(())
    }
}

struct VxlanRegistered {
    device: Device,
    config: VxlanConfig,
    ext: ExternalInterface,
    use_nexthops: bool,
    data: LeaseData,
}

#[async_trait]
impl Registered for VxlanRegistered {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    fn links(&self) -> Vec<u32> {
        vec![self.device.link.index]
    }

    async fn start(self: Box<Self>, own: &Lease) -> Result<Started, StartFailed> {
        if let Err(error) = self.device.address(own).await {
            return Err(StartFailed { error, backend: self });
        }
        let peers = VxlanPeers {
            link: self.device.link.index,
            ext: self.ext,
            direct_routing: self.config.direct_routing,
            use_nexthops: self.use_nexthops,
        };
        let mapping = PeerMapping { mapper: Box::new(peers), links: vec![self.device.link.index], remap: None };
        Ok(Started { backend: Box::new(VxlanActive { device: self.device, data: self.data }), peers: Some(mapping) })
    }

    async fn abandon(self: Box<Self>) -> Result<(), BackendError> {
        self.device.delete().await
    }
}

struct VxlanActive {
    device: Device,
    data: LeaseData,
}

#[async_trait]
impl Active for VxlanActive {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    async fn own_lease_changed(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.device.address(own).await
    }

    async fn teardown(self: Box<Self>) -> Result<(), BackendError> {
        self.device.delete().await
    }
}

/// Maps a vxlan peer to its kernel objects.
pub struct VxlanPeers {
    pub link: u32,
    pub ext: ExternalInterface,
    pub direct_routing: bool,
    pub use_nexthops: bool,
}

impl PeerObjects for VxlanPeers {
    fn objects(&self, lease: &Lease) -> Result<KernelState, String> {
        let mut state = KernelState::default();
        let public_ip = lease.attrs.public_ip;
        if self.direct_routing && self.ext.addr.contains(&public_ip) {
            add_route(&mut state, lease, public_ip, self.ext.index, false, self.use_nexthops);
            return Ok(state);
        }
        let mac: MacAddr = lease
            .attrs
            .backend_data
            .str_field("VtepMAC")
            .ok_or("BackendData.VtepMAC is missing")?
            .parse()
            .map_err(|e| format!("BackendData.VtepMAC: {e}"))?;
        let vtep = lease.subnet.network();
        state.add_neighbour(NeighbourSpec { ifindex: self.link, ip: vtep.into(), mac });
        state.add_fdb(FdbSpec { ifindex: self.link, mac, dst: public_ip.into() });
        add_route(&mut state, lease, vtep, self.link, true, self.use_nexthops);
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::route_sync::RouteSync;
    use crate::kernel::memory::MemoryKernel;
    use crate::lease::{Expiry, LeaseAttrs, LeaseMap};
    use crate::watch::LeaseEvent;

    fn ext() -> ExternalInterface {
        ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            addr: "198.51.100.1/24".parse().unwrap(),
            public_ip: "198.51.100.1".parse().unwrap(),
        }
    }

    fn lease(n: u8, ip: &str, mac: &str) -> Lease {
        Lease {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            attrs: LeaseAttrs::new(ip.parse().unwrap(), "vxlan", serde_json::json!({"VNI": 1, "VtepMAC": mac})),
            expiry: Expiry::Unknown,
        }
    }

    fn peers(leases: &[Lease]) -> LeaseMap {
        leases.iter().map(|l| (l.subnet, l.clone())).collect()
    }

    /// A vxlan backend prepared and started on `kernel`, its peers synced by a fresh engine.
    async fn started(kernel: Arc<MemoryKernel>, config: VxlanConfig) -> RouteSync {
        let vxlan = Box::new(Vxlan::new(kernel.clone(), config, ext())).register().await.unwrap();
        let data = vxlan.lease_data().clone();
        assert_eq!(data.mtu, 1450);
        assert_eq!(data.backend_data.value().unwrap()["VNI"], 1);
        let own = lease(1, "198.51.100.1", &data.backend_data.str_field("VtepMAC").unwrap());
        let Ok(started) = vxlan.start(&own).await else { panic!("vxlan start") };
        let mapping = started.peers.expect("vxlan maps peers");
        let mut sync = RouteSync::new(kernel);
        sync.add_mapper(BackendKind::Vxlan, mapping.mapper, &mapping.links);
        sync
    }

    #[tokio::test]
    async fn installs_neighbour_fdb_and_route_per_peer() {
        let kernel = Arc::new(MemoryKernel::default());
        let mut sync = started(kernel.clone(), VxlanConfig::default()).await;
        let a = lease(2, "198.51.100.2", "02:00:00:00:00:02");
        let b = lease(3, "203.0.113.3", "02:00:00:00:00:03");
        let all = peers(&[a.clone(), b.clone()]);
        sync.on_events(&all, &[LeaseEvent::Added(a.subnet), LeaseEvent::Added(b.subnet)]).await.unwrap();
        let state = kernel.snapshot();
        assert_eq!((state.routes.len(), state.neighbours.len(), state.fdb.len(), state.nexthops.len()), (2, 2, 2, 2));
        let nh = state.nexthops.values().find(|n| n.gateway == Ipv4Addr::new(10, 244, 3, 0)).unwrap();
        assert!(nh.onlink);
        assert_eq!(kernel.addresses.lock().unwrap()[0].1.to_string(), "10.244.1.0/32");
    }

    #[tokio::test]
    async fn rebooted_peer_replaced_and_removed_peer_cleaned() {
        let kernel = Arc::new(MemoryKernel::default());
        let mut sync = started(kernel.clone(), VxlanConfig::default()).await;
        let a = lease(2, "198.51.100.2", "02:00:00:00:00:02");
        sync.on_events(&peers(std::slice::from_ref(&a)), &[LeaseEvent::Added(a.subnet)]).await.unwrap();
        let rebooted = lease(2, "198.51.100.2", "02:00:00:00:00:22");
        let change = LeaseEvent::Changed(rebooted.subnet);
        sync.on_events(&peers(std::slice::from_ref(&rebooted)), &[change]).await.unwrap();
        let state = kernel.snapshot();
        assert_eq!(state.fdb.len(), 1);
        assert_eq!(state.fdb.values().next().unwrap().mac.to_string(), "02:00:00:00:00:22");
        assert_eq!(state.neighbours.values().next().unwrap().mac.to_string(), "02:00:00:00:00:22");
        sync.on_events(&LeaseMap::new(), &[LeaseEvent::Removed(rebooted.subnet)]).await.unwrap();
        assert!(kernel.snapshot().is_empty());
    }

    #[tokio::test]
    async fn direct_routing_on_the_same_segment_only() {
        let kernel = Arc::new(MemoryKernel::default());
        let config = VxlanConfig { direct_routing: true, ..Default::default() };
        let mut sync = started(kernel.clone(), config).await;
        let near = lease(2, "198.51.100.2", "02:00:00:00:00:02");
        let far = lease(3, "203.0.113.3", "02:00:00:00:00:03");
        sync.reconcile(&peers(&[near, far])).await.unwrap();
        let state = kernel.snapshot();
        assert_eq!(state.fdb.len(), 1, "only the far peer goes through vxlan");
        let near_nh = state.nexthops[&u32::from(Ipv4Addr::new(10, 244, 2, 0))];
        assert_eq!((near_nh.gateway, near_nh.oif, near_nh.onlink), ("198.51.100.2".parse().unwrap(), 2, false));
    }

    #[tokio::test]
    async fn restart_adopts_without_changes_and_removes_stale() {
        let kernel = Arc::new(MemoryKernel::default());
        let a = lease(2, "198.51.100.2", "02:00:00:00:00:02");
        let gone = lease(9, "198.51.100.9", "02:00:00:00:00:09");
        started(kernel.clone(), VxlanConfig::default()).await.reconcile(&peers(&[a.clone(), gone])).await.unwrap();
        let before = kernel.applied_count();
        // The new run sees only `a`: it changes nothing for `a`, and removes `gone`'s 4 objects.
        let mut second = started(kernel.clone(), VxlanConfig::default()).await;
        second.on_events(&peers(std::slice::from_ref(&a)), &[LeaseEvent::Added(a.subnet)]).await.unwrap();
        assert_eq!(kernel.applied_count() - before, 4);
        assert_eq!(kernel.snapshot().routes.len(), 1);
    }

    #[tokio::test]
    async fn bad_peers_are_reported_others_installed() {
        let kernel = Arc::new(MemoryKernel::default());
        let mut sync = started(kernel.clone(), VxlanConfig::default()).await;
        let good = lease(2, "198.51.100.2", "02:00:00:00:00:02");
        let bad = lease(3, "198.51.100.3", "not-a-mac");
        let mut other = lease(4, "198.51.100.4", "02:00:00:00:00:04");
        other.attrs.backend_type = "host-gw".into();
        let err = sync.reconcile(&peers(&[good, bad, other])).await.unwrap_err();
        assert!(err.to_string().contains("10.244.3.0/24") && err.to_string().contains("VtepMAC"), "{err}");
        assert_eq!(kernel.snapshot().routes.len(), 1, "only the good vxlan peer");
    }

    /// No FDB entry (nor neighbour, nor route) towards a public IP that is ours, multicast or
    /// outside the underlay: the one check in RouteSync covers vxlan's mapper.
    #[tokio::test]
    async fn no_fdb_entry_towards_an_untrusted_public_ip() {
        use crate::backend::peer_trust::PeerTrust;
        use crate::health::PeerRejectedLabels;
        use prometheus_client::metrics::family::Family;

        let kernel = Arc::new(MemoryKernel::default());
        let mut sync = started(kernel.clone(), VxlanConfig::default()).await;
        let family = Family::<PeerRejectedLabels, _>::default();
        let underlay = vec!["198.51.100.0/24".parse().unwrap()];
        sync.set_trust(PeerTrust::new([ext().public_ip], underlay), family.clone());
        let good = lease(2, "198.51.100.2", "02:00:00:00:00:02");
        let hostile = [
            lease(3, "198.51.100.1", "02:00:00:00:00:03"),
            lease(4, "239.1.1.1", "02:00:00:00:00:04"),
            lease(5, "203.0.113.5", "02:00:00:00:00:05"),
            lease(6, "0.0.0.0", "02:00:00:00:00:06"),
        ];
        let mut all = hostile.to_vec();
        all.push(good.clone());
        sync.reconcile(&peers(&all)).await.unwrap();
        let state = kernel.snapshot();
        let fdb: Vec<_> = state.fdb.values().map(|f| f.dst.to_string()).collect();
        assert_eq!(fdb, ["198.51.100.2"]);
        assert_eq!((state.routes.len(), state.neighbours.len()), (1, 1));
        let count = |reason: &str| family.get_or_create(&PeerRejectedLabels { reason: reason.into() }).get();
        let counts = [count("own_address"), count("multicast"), count("outside_underlay"), count("unspecified")];
        assert_eq!(counts, [1, 1, 1, 1]);
    }

    #[test]
    fn stable_mac_is_stable_and_local() {
        let a = stable_mac("198.51.100.1".parse().unwrap(), 1);
        assert_eq!(a, stable_mac("198.51.100.1".parse().unwrap(), 1));
        assert_ne!(a, stable_mac("198.51.100.2".parse().unwrap(), 1));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered unicast");
    }
}
