//! `vxlan`: an overlay device `flannel.<vni>`; for each peer an ARP entry, an FDB entry and a
//! route through the device — or, with `direct_routing` and the peer on our L2 segment, a plain
//! route via its public IP. A dual-stack network adds flannel's `flannel-v6.<vni>` over the IPv6
//! underlay, with the same three objects for each peer's IPv6 subnet (its VtepMAC in
//! `BackendV6Data`).

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;

use super::peer_route::{add_route, enable_forwarding};
use super::route_sync::PeerObjects;
use super::{Active, Backend, BackendError, BackendKind, LeaseData, PeerMapping, Registered, StartFailed, Started};
use crate::iface::ExternalInterface;
use crate::kernel::{
    vxlan_device_name, vxlan_v6_device_name, FdbSpec, Kernel, KernelState, LinkHandle, MacAddr, NeighbourSpec,
    VxlanSpec,
};
use crate::lease::{BackendData, Lease};
use crate::network::backend::VxlanConfig;
use crate::network::Families;

/// Bytes of outer headers vxlan adds to every packet.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The same over an IPv6 underlay (its header is 20 bytes longer).
pub const VXLAN_V6_OVERHEAD: u32 = 70;

pub struct Vxlan {
    kernel: Arc<dyn Kernel>,
    config: VxlanConfig,
    ext: ExternalInterface,
    /// Which devices to make: `flannel.<vni>` for IPv4, `flannel-v6.<vni>` for IPv6.
    families: Families,
}

impl Vxlan {
    pub fn new(kernel: Arc<dyn Kernel>, config: VxlanConfig, ext: ExternalInterface) -> Self {
        Vxlan { kernel, config, ext, families: Families::IPV4 }
    }

    /// This backend for the network's `families`: `flannel-v6.<vni>` beside `flannel.<vni>`
    /// (dual-stack) or alone (IPv6-only).
    pub fn families(mut self, families: Families) -> Self {
        self.families = families;
        self
    }

    /// `flannel.<vni>` (see [`vxlan_device_name`]).
    pub fn device_name(vni: u32) -> String {
        vxlan_device_name(vni)
    }

    /// Makes (or adopts) one of our devices: `local` picks the family of its underlay.
    async fn ensure_device(&self, name: String, local: IpAddr, mtu: u32) -> Result<LinkHandle, BackendError> {
        let spec = VxlanSpec {
            name,
            vni: self.config.vni,
            port: self.config.port,
            local,
            underlay_index: self.ext.index,
            gbp: self.config.gbp,
            learning: self.config.learning,
            mtu,
            mac: Some(stable_mac(local_identity(&self.ext, local), self.config.vni)),
        };
        self.kernel
            .ensure_vxlan(&spec)
            .await
            .map_err(|e| BackendError::kernel(format!("vxlan device {}", spec.name), e))
    }
}

/// What a device's MAC is derived from: the public address of its family.
fn local_identity(ext: &ExternalInterface, local: IpAddr) -> IpAddr {
    match local {
        IpAddr::V4(ip) => ext.public_ip.unwrap_or(ip).into(),
        IpAddr::V6(ip) => ext.public_ipv6.unwrap_or(ip).into(),
    }
}

/// A MAC derived from our public IP and VNI: the same after a restart or a reboot, so peers'
/// ARP and FDB entries stay valid (a locally administered unicast address).
pub fn stable_mac(public_ip: impl Into<IpAddr>, vni: u32) -> MacAddr {
    let octets: Vec<u8> = match public_ip.into() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in octets.iter().chain(vni.to_be_bytes().iter()) {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let b = hash.to_be_bytes();
    MacAddr([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

/// vxlan's data in a lease, as flannel writes it.
fn vtep_data(vni: u32, mac: MacAddr) -> BackendData {
    serde_json::json!({ "VNI": vni, "VtepMAC": mac.to_string() }).into()
}

#[async_trait]
impl Backend for Vxlan {
    /// Makes (or adopts) the devices; their VtepMACs go in our lease.
    async fn register(self: Box<Self>) -> Result<Box<dyn Registered>, BackendError> {
        enable_forwarding(self.kernel.as_ref(), self.families).await;
        let configured = |overhead: u32| {
            if self.config.mtu > 0 {
                self.config.mtu
            } else {
                self.ext.mtu.saturating_sub(overhead)
            }
        };
        let mut data = LeaseData {
            kind: BackendKind::Vxlan,
            backend_data: BackendData::null(),
            backend_v6_data: BackendData::null(),
            mtu: u32::MAX,
        };
        let link = if self.families.ipv4 {
            let mtu = configured(VXLAN_OVERHEAD);
            let local = self.ext.addr.map(|a| a.addr()).ok_or_else(|| BackendError::Config {
                backend: BackendKind::Vxlan,
                problem: format!("the network has IPv4 but interface {} has no IPv4 address", self.ext.name),
            })?;
            let link = self.ensure_device(Self::device_name(self.config.vni), local.into(), mtu).await?;
            (data.backend_data, data.mtu) = (vtep_data(self.config.vni, link.mac), mtu);
            Some(link)
        } else {
            None
        };
        let link6 = if self.families.ipv6 {
            let local = self
                .ext
                .require_public_ipv6()
                .map_err(|problem| BackendError::Config { backend: BackendKind::Vxlan, problem })?;
            let mtu6 = configured(VXLAN_V6_OVERHEAD);
            let link6 = self.ensure_device(vxlan_v6_device_name(self.config.vni), local.into(), mtu6).await?;
            data.backend_v6_data = vtep_data(self.config.vni, link6.mac);
            // Pods send both families through one interface: the smaller MTU fits both.
            data.mtu = data.mtu.min(mtu6);
            Some(link6)
        } else {
            None
        };
        let use_nexthops = self.kernel.supports_nexthops().await;
        let Vxlan { kernel, config, ext, .. } = *self;
        Ok(Box::new(VxlanRegistered {
            device: Device { kernel, vni: config.vni, link, link6 },
            config,
            ext,
            use_nexthops,
            data,
        }))
    }
}

/// Our `flannel.<vni>` device (unless IPv6-only), and `flannel-v6.<vni>` in a network with IPv6.
struct Device {
    kernel: Arc<dyn Kernel>,
    vni: u32,
    link: Option<LinkHandle>,
    link6: Option<LinkHandle>,
}

impl Device {
    /// Our subnets' first addresses on the devices (as flannel: /32 and /128): the source of
    /// what we send through them.
    async fn address(&self, own: &Lease) -> Result<(), BackendError> {
        let v4 = self
            .link
            .as_ref()
            .zip(own.subnet)
            .map(|(link, subnet)| (link, IpNet::new(subnet.network().into(), 32).expect("/32 is valid")));
        let v6 = self
            .link6
            .as_ref()
            .zip(own.subnet_v6)
            .map(|(link, subnet)| (link, IpNet::new(subnet.network().into(), 128).expect("/128 is valid")));
        for (link, addr) in v4.into_iter().chain(v6) {
            self.kernel
                .ensure_address(link.index, addr)
                .await
                .map_err(|e| BackendError::kernel(format!("address {addr} on {}", link.name), e))?;
        }
        Ok(())
    }

    fn indices(&self) -> Vec<u32> {
        self.link.iter().chain(&self.link6).map(|l| l.index).collect()
    }

    /// Deleting a device takes its neighbours, FDB entries and routes with it.
    async fn delete(self) -> Result<(), BackendError> {
        let names = (self.link.map(|_| vxlan_device_name(self.vni)).into_iter())
            .chain(self.link6.map(|_| vxlan_v6_device_name(self.vni)));
        for name in names {
            let found = self
                .kernel
                .link_by_name(&name)
                .await
                .map_err(|e| BackendError::kernel(format!("looking up {name}"), e))?;
            if let Some(link) = found {
                self.kernel
                    .delete_link(link.index)
                    .await
                    .map_err(|e| BackendError::kernel(format!("deleting {name}"), e))?;
                tracing::info!(device = %name, "removed the vxlan device");
            }
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
        self.device.indices()
    }

    async fn start(self: Box<Self>, own: &Lease) -> Result<Started, StartFailed> {
        if let Err(error) = self.device.address(own).await {
            return Err(StartFailed { error, backend: self });
        }
        let peers = VxlanPeers {
            link: self.device.link.as_ref().map(|l| l.index),
            link6: self.device.link6.as_ref().map(|l| l.index),
            ext: self.ext,
            direct_routing: self.config.direct_routing,
            use_nexthops: self.use_nexthops,
        };
        let mapping = PeerMapping { mapper: Box::new(peers), links: self.device.indices(), remap: None };
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
    /// `flannel.<vni>`, unless the network is IPv6-only.
    pub link: Option<u32>,
    /// `flannel-v6.<vni>` in a network with IPv6.
    pub link6: Option<u32>,
    pub ext: ExternalInterface,
    pub direct_routing: bool,
    pub use_nexthops: bool,
}

impl PeerObjects for VxlanPeers {
    fn objects(&self, lease: &Lease) -> Result<KernelState, String> {
        let mut state = KernelState::default();
        if let (Some(link), Some(subnet)) = (self.link, lease.subnet) {
            let data = &lease.attrs.backend_data;
            self.to_subnet(&mut state, link, subnet.into(), lease.attrs.public_ip.into(), || {
                vtep_mac(data, "BackendData")
            })?;
        }
        // The watcher keeps a lease's subnet of a family only inside the network's of that family.
        if let (Some(link6), Some(subnet), Some(public_ipv6)) = (self.link6, lease.subnet_v6, lease.attrs.public_ipv6())
        {
            let data = lease.attrs.backend_v6_data();
            self.to_subnet(&mut state, link6, subnet.into(), public_ipv6.into(), || vtep_mac(data, "BackendV6Data"))?;
        }
        Ok(state)
    }
}

impl VxlanPeers {
    /// A peer's subnet of one family: with `direct_routing` and the peer's public address on our
    /// segment of that family, a plain route to that address (no encapsulation); else through
    /// `link`, with the VTEP's MAC that `mac` reads from the lease.
    fn to_subnet(
        &self,
        state: &mut KernelState,
        link: u32,
        subnet: IpNet,
        public: IpAddr,
        mac: impl FnOnce() -> Result<MacAddr, String>,
    ) -> Result<(), String> {
        if self.direct_routing && self.ext.segment_of(public).is_some_and(|segment| segment.contains(&public)) {
            add_route(state, subnet, public, self.ext.index, false, self.use_nexthops);
        } else {
            self.through_device(state, link, subnet, mac()?, public);
        }
        Ok(())
    }

    /// A peer's subnet through one of our devices: the subnet's first address is the peer's VTEP
    /// (its neighbour entry), its MAC's packets go to the peer's public address (the FDB entry),
    /// and the subnet is routed via the VTEP, on-link.
    fn through_device(&self, state: &mut KernelState, link: u32, subnet: IpNet, mac: MacAddr, public: IpAddr) {
        let vtep = subnet.network();
        state.add_neighbour(NeighbourSpec { ifindex: link, ip: vtep, mac });
        state.add_fdb(FdbSpec { ifindex: link, mac, dst: public });
        add_route(state, subnet, vtep, link, true, self.use_nexthops);
    }
}

/// The VtepMAC of vxlan's data in a lease (`field` names which data, for the error).
fn vtep_mac(data: &BackendData, field: &str) -> Result<MacAddr, String> {
    data.str_field("VtepMAC")
        .ok_or_else(|| format!("{field}.VtepMAC is missing"))?
        .parse()
        .map_err(|e| format!("{field}.VtepMAC: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use crate::backend::route_sync::RouteSync;
    use crate::kernel::memory::MemoryKernel;
    use crate::lease::{Expiry, LeaseAttrs, LeaseMap};
    use crate::watch::LeaseEvent;

    fn ext() -> ExternalInterface {
        ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            addr: Some("198.51.100.1/24".parse().unwrap()),
            addr_v6: None,
            public_ip: Some("198.51.100.1".parse().unwrap()),
            public_ipv6: None,
        }
    }

    fn lease(n: u8, ip: &str, mac: &str) -> Lease {
        Lease {
            subnet: Some(format!("10.244.{n}.0/24").parse().unwrap()),
            subnet_v6: None,
            attrs: LeaseAttrs::new(ip.parse().unwrap(), "vxlan", serde_json::json!({"VNI": 1, "VtepMAC": mac})),
            expiry: Expiry::Unknown,
        }
    }

    fn peers(leases: &[Lease]) -> LeaseMap {
        leases.iter().map(|l| (l.id(), l.clone())).collect()
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
        sync.on_events(&all, &[LeaseEvent::Added(a.id()), LeaseEvent::Added(b.id())]).await.unwrap();
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
        sync.on_events(&peers(std::slice::from_ref(&a)), &[LeaseEvent::Added(a.id())]).await.unwrap();
        let rebooted = lease(2, "198.51.100.2", "02:00:00:00:00:22");
        let change = LeaseEvent::Changed(rebooted.id());
        sync.on_events(&peers(std::slice::from_ref(&rebooted)), &[change]).await.unwrap();
        let state = kernel.snapshot();
        assert_eq!(state.fdb.len(), 1);
        assert_eq!(state.fdb.values().next().unwrap().mac.to_string(), "02:00:00:00:00:22");
        assert_eq!(state.neighbours.values().next().unwrap().mac.to_string(), "02:00:00:00:00:22");
        sync.on_events(&LeaseMap::new(), &[LeaseEvent::Removed(rebooted.id())]).await.unwrap();
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
        second.on_events(&peers(std::slice::from_ref(&a)), &[LeaseEvent::Added(a.id())]).await.unwrap();
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
        sync.set_trust(PeerTrust::new(ext().public_ip, underlay), family.clone());
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

    #[tokio::test]
    async fn a_dual_stack_peer_gets_objects_on_both_devices() {
        let kernel = Arc::new(MemoryKernel::default());
        let ext = ExternalInterface { public_ipv6: Some("2001:db8::1".parse().unwrap()), ..ext() };
        let vxlan = Vxlan::new(kernel.clone(), VxlanConfig::default(), ext).families(Families::DUAL_STACK);
        let registered = Box::new(vxlan).register().await.unwrap();
        let data = registered.lease_data().clone();
        assert_eq!(data.mtu, 1430, "the IPv6 device's, which fits both");
        let mac6 = data.backend_v6_data.str_field("VtepMAC").expect("BackendV6Data has the v6 device's MAC");
        assert_ne!(Some(mac6), data.backend_data.str_field("VtepMAC"));
        let mut own = lease(1, "198.51.100.1", "02:00:00:00:00:01");
        own.subnet_v6 = Some("2001:db8:42:1::/64".parse().unwrap());
        let Ok(started) = registered.start(&own).await else { panic!("vxlan start") };
        let mapping = started.peers.expect("vxlan maps peers");
        assert_eq!(mapping.links.len(), 2, "both devices are ours");
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, mapping.mapper, &mapping.links);
        let mut peer = lease(2, "198.51.100.2", "02:00:00:00:00:02");
        peer.subnet_v6 = Some("2001:db8:42:2::/64".parse().unwrap());
        peer.attrs = peer
            .attrs
            .with_v6("2001:db8::2".parse().unwrap(), serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:62"}));
        sync.reconcile(&peers(&[peer])).await.unwrap();
        let state = kernel.snapshot();
        assert_eq!((state.routes.len(), state.neighbours.len(), state.fdb.len()), (2, 2, 2));
        let fdb: Vec<String> = state.fdb.values().map(|f| format!("{} {}", f.mac, f.dst)).collect();
        assert!(fdb.contains(&"02:00:00:00:00:62 2001:db8::2".to_string()), "{fdb:?}");
        let nh = state.nexthops.values().find(|n| n.gateway.to_string() == "2001:db8:42:2::").expect("IPv6 nexthop");
        assert!(nh.onlink);
        let addrs: Vec<String> = kernel.addresses.lock().unwrap().iter().map(|(_, a)| a.to_string()).collect();
        assert!(addrs.contains(&"2001:db8:42:1::/128".to_string()), "{addrs:?}");
    }

    /// IPv6-only, on a host with no IPv4 address: `flannel-v6.1` alone, our lease's IPv4 data
    /// null; an IPv6-only peer gets its three objects there. A network with IPv4 on such a host
    /// is refused, naming the interface.
    #[tokio::test]
    async fn an_ipv6_only_network_makes_only_the_ipv6_device() {
        let kernel = Arc::new(MemoryKernel::default());
        let ext = ExternalInterface {
            addr: None,
            public_ip: None,
            addr_v6: Some("2001:db8::1/64".parse().unwrap()),
            public_ipv6: Some("2001:db8::1".parse().unwrap()),
            ..ext()
        };
        let refused = Vxlan::new(kernel.clone(), VxlanConfig::default(), ext.clone()).families(Families::DUAL_STACK);
        let Err(err) = Box::new(refused).register().await else { panic!("registered without an IPv4 address") };
        assert!(err.to_string().contains("eth0 has no IPv4 address"), "{err}");
        let vxlan = Vxlan::new(kernel.clone(), VxlanConfig::default(), ext).families(Families::IPV6);
        let registered = Box::new(vxlan).register().await.unwrap();
        let data = registered.lease_data().clone();
        assert!(data.backend_data.is_null() && data.mtu == 1430, "{data:?}");
        let names: Vec<String> = kernel.links.lock().unwrap().iter().map(|l| l.name.clone()).collect();
        assert_eq!(names, ["flannel-v6.1"]);
        let mut own = lease(1, "0.0.0.0", "02:00:00:00:00:01");
        (own.subnet, own.subnet_v6) = (None, Some("2001:db8:42:1::/64".parse().unwrap()));
        let Ok(started) = registered.start(&own).await else { panic!("vxlan start") };
        let mapping = started.peers.expect("vxlan maps peers");
        assert_eq!(mapping.links.len(), 1);
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, mapping.mapper, &mapping.links);
        let mut peer = lease(2, "0.0.0.0", "02:00:00:00:00:02");
        (peer.subnet, peer.subnet_v6) = (None, Some("2001:db8:42:2::/64".parse().unwrap()));
        peer.attrs.backend_data = BackendData::null();
        peer.attrs = peer
            .attrs
            .with_v6("2001:db8::2".parse().unwrap(), serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:62"}));
        sync.reconcile(&peers(&[peer])).await.unwrap();
        let state = kernel.snapshot();
        assert_eq!((state.routes.len(), state.neighbours.len(), state.fdb.len()), (1, 1, 1));
        let routes: Vec<String> = state.routes.keys().map(|r| r.to_string()).collect();
        assert_eq!(routes, ["2001:db8:42:2::/64"]);
    }

    /// `direct_routing` for IPv6: a peer whose public IPv6 address is on our IPv6 segment gets a
    /// plain route to it; one elsewhere goes through `flannel-v6`.
    #[test]
    fn direct_routing_over_ipv6_on_the_same_segment_only() {
        let ext = ExternalInterface { addr_v6: Some("2001:db8::1/64".parse().unwrap()), ..ext() };
        let peers = VxlanPeers { link: Some(10), link6: Some(11), ext, direct_routing: true, use_nexthops: false };
        let dual = |n: u8, v6: &str| {
            let mut peer = lease(n, "203.0.113.9", "02:00:00:00:00:02");
            peer.subnet_v6 = Some(format!("2001:db8:42:{n}::/64").parse().unwrap());
            peer.attrs =
                peer.attrs.with_v6(v6.parse().unwrap(), serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:62"}));
            peer
        };
        let near = peers.objects(&dual(2, "2001:db8::2")).unwrap();
        let fdb: Vec<IpAddr> = near.fdb.values().map(|f| f.dst).collect();
        assert_eq!(
            fdb,
            ["203.0.113.9".parse::<IpAddr>().unwrap()],
            "only the IPv4 side (another segment) is encapsulated"
        );
        let v6_route =
            near.routes.iter().find(|(dst, _)| dst.to_string().starts_with("2001:db8:42:2::")).expect("an IPv6 route");
        assert!(format!("{:?}", v6_route.1).contains("2001:db8::2"), "{:?}", v6_route.1);
        let far = peers.objects(&dual(3, "2001:db8:7::3")).unwrap();
        assert_eq!(far.fdb.len(), 2, "another IPv6 segment: through flannel-v6");
    }

    #[test]
    fn stable_mac_is_stable_and_local() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = stable_mac(ip("198.51.100.1"), 1);
        assert_eq!(a, stable_mac(ip("198.51.100.1"), 1));
        assert_ne!(a, stable_mac(ip("198.51.100.2"), 1));
        assert_ne!(stable_mac(ip("2001:db8::1"), 1), stable_mac(ip("2001:db8::2"), 1));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered unicast");
    }
}
