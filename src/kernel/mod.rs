//! The kernel side of the data plane: typed objects (routes, nexthops, neighbours, FDB entries),
//! the desired-vs-actual diff, and a trait over netlink so the logic can be tested without it.
//!
//! Ownership: routes and nexthop objects weft installs carry [`WEFT_PROTOCOL`]; neighbours and
//! FDB entries are weft's when they sit on a device weft owns (`flannel.<vni>`). weft removes what
//! it owns and no longer wants, and never touches anything else: a peer whose objects would replace
//! a route or nexthop object of someone else ([`Foreign`]) is left out ([`plan::foreign_conflicts`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net};

pub mod memory;
pub mod netlink;
pub mod packed;
pub mod plan;
pub mod sysctl;

pub use plan::{diff, diff_all, foreign_conflicts, Claimed, Conflict, Op, Phases, Plan};

/// Route protocol number of every route and nexthop weft installs (`ip route show proto 87`).
pub const WEFT_PROTOCOL: u8 = 87;

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// What every vxlan device weft creates is called before its VNI.
const VXLAN_DEVICE_PREFIX: &str = "flannel.";
/// The same for the IPv6 device of a dual-stack network.
const VXLAN_V6_DEVICE_PREFIX: &str = "flannel-v6.";

/// The name of weft's vxlan device for `vni`: `flannel.<vni>`, as flannel names it. The one place
/// that knows the name; everything else calls this or [`vxlan_device_vni`].
pub fn vxlan_device_name(vni: u32) -> String {
    format!("{VXLAN_DEVICE_PREFIX}{vni}")
}

/// The name of weft's IPv6 vxlan device for `vni`: `flannel-v6.<vni>`, as flannel names it.
pub fn vxlan_v6_device_name(vni: u32) -> String {
    format!("{VXLAN_V6_DEVICE_PREFIX}{vni}")
}

/// The VNI of a device named like weft's vxlan devices (`flannel.<vni>`, `flannel-v6.<vni>`),
/// or `None`.
pub fn vxlan_device_vni(name: &str) -> Option<u32> {
    let vni = name.strip_prefix(VXLAN_DEVICE_PREFIX).or_else(|| name.strip_prefix(VXLAN_V6_DEVICE_PREFIX))?;
    if vni.is_empty() || !vni.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    vni.parse().ok()
}

/// An IP address family, for the per-family knobs (forwarding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(|| format!("{s:?} is not a MAC address"))?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address"));
        }
        Ok(MacAddr(mac))
    }
}

/// Where a route sends its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// `via <gateway> dev <oif> [onlink]`.
    Gateway { gateway: IpAddr, oif: u32, onlink: bool },
    /// `nhid <id>`: a nexthop object (kernel 5.3+), much cheaper for the kernel to install.
    Nexthop(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// IPv4 or IPv6: one model and one code path for both families.
    pub dst: IpNet,
    pub target: RouteTarget,
}

/// A nexthop object: `ip nexthop add id <id> via <gateway> dev <oif> [onlink] proto 87`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NexthopSpec {
    pub id: u32,
    pub gateway: IpAddr,
    pub oif: u32,
    pub onlink: bool,
}

/// A permanent ARP (IPv4) or NDP (IPv6) entry: `ip neigh replace <ip> lladdr <mac> dev <ifindex> nud permanent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourSpec {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// A vxlan forwarding entry: `bridge fdb replace <mac> dev <ifindex> dst <dst> self permanent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbSpec {
    pub ifindex: u32,
    pub mac: MacAddr,
    pub dst: IpAddr,
}

/// One kernel object of any kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Nexthop(NexthopSpec),
    Route(RouteSpec),
    Neighbour(NeighbourSpec),
    Fdb(FdbSpec),
}

/// Kernel objects by identity. Used both for what weft wants and for what it finds installed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub nexthops: BTreeMap<u32, NexthopSpec>,
    pub routes: BTreeMap<IpNet, RouteSpec>,
    pub neighbours: BTreeMap<(u32, IpAddr), NeighbourSpec>,
    pub fdb: BTreeMap<(u32, MacAddr), FdbSpec>,
}

impl KernelState {
    pub fn add_route(&mut self, route: RouteSpec) {
        self.routes.insert(route.dst, route);
    }

    pub fn add_nexthop(&mut self, nexthop: NexthopSpec) {
        self.nexthops.insert(nexthop.id, nexthop);
    }

    pub fn add_neighbour(&mut self, neighbour: NeighbourSpec) {
        self.neighbours.insert((neighbour.ifindex, neighbour.ip), neighbour);
    }

    pub fn add_fdb(&mut self, fdb: FdbSpec) {
        self.fdb.insert((fdb.ifindex, fdb.mac), fdb);
    }

    pub fn add(&mut self, object: Object) {
        match object {
            Object::Nexthop(n) => self.add_nexthop(n),
            Object::Route(r) => self.add_route(r),
            Object::Neighbour(n) => self.add_neighbour(n),
            Object::Fdb(f) => self.add_fdb(f),
        }
    }

    /// Every object, nexthops first.
    pub fn objects(&self) -> impl Iterator<Item = Object> + Clone + '_ {
        let nexthops = self.nexthops.values().map(|n| Object::Nexthop(*n));
        let routes = self.routes.values().map(|r| Object::Route(*r));
        let neighbours = self.neighbours.values().map(|n| Object::Neighbour(*n));
        nexthops.chain(routes).chain(neighbours).chain(self.fdb.values().map(|f| Object::Fdb(*f)))
    }

    pub fn len(&self) -> usize {
        self.nexthops.len() + self.routes.len() + self.neighbours.len() + self.fdb.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which kernel objects are weft's to manage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Devices weft created (`flannel.<vni>`): neighbours, FDB entries and routes on them are weft's.
    pub links: Vec<u32>,
}

/// Kernel objects that are not weft's but sit where weft's would go, each with the protocol that
/// put it there (`proto static` is 4): main-table routes by destination, nexthop objects by id.
/// weft's puts are `NLM_F_REPLACE`, which would take them over, so weft leaves those places alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Foreign {
    pub routes: BTreeMap<IpNet, u8>,
    pub nexthops: BTreeMap<u32, u8>,
}

impl Foreign {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.nexthops.is_empty()
    }
}

/// One read of the kernel: what weft owns, and what of others its puts must not touch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelReading {
    pub owned: KernelState,
    pub foreign: Foreign,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{op}: {reason}")]
    Rejected { op: String, reason: String },
    #[error("{0}")]
    Link(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One failed operation of a batch; the rest of the batch was still applied.
#[derive(Debug)]
pub struct OpFailure {
    pub op: Op,
    pub error: KernelError,
}

/// What a vxlan device should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// Underlay: local address (its family is the outer packets') and device of the outer packets.
    pub local: IpAddr,
    pub underlay_index: u32,
    pub gbp: bool,
    pub learning: bool,
    pub mtu: u32,
    /// MAC to give a new device, so the VtepMAC published in the lease survives restarts.
    pub mac: Option<MacAddr>,
}

/// A link weft looked up or created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkHandle {
    pub index: u32,
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u32,
}

/// A link as interface choice sees it: with its IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub addrs: Vec<Ipv4Net>,
    /// Global IPv6 addresses (not link-local, not deprecated), for a dual-stack host's public one.
    pub addrs_v6: Vec<ipnet::Ipv6Net>,
}

/// What choosing the external interface reads from the kernel (`iface::discover`). Implemented
/// over netlink and, in unit tests, in memory.
#[async_trait]
pub trait Interfaces: Send + Sync {
    /// Every link with its addresses.
    async fn interfaces(&self) -> Result<Vec<InterfaceInfo>, KernelError>;
    /// The link the default route (main table) leaves by, if there is one: IPv4's, else IPv6's.
    async fn default_route_oif(&self) -> Result<Option<u32>, KernelError>;
    /// The link a packet to `target` would leave by, or `None` when there is no route.
    async fn route_oif_to(&self, target: std::net::IpAddr) -> Option<u32>;
}

/// The kernel as the data plane sees it. Implemented over netlink ([`netlink`]) and, in unit
/// tests, in memory.
#[async_trait]
pub trait Kernel: Send + Sync {
    /// Every route, nexthop, neighbour and FDB entry weft owns under `ownership`, and the routes
    /// and nexthop objects of others in their way, from the same dumps.
    async fn read(&self, ownership: &Ownership) -> Result<KernelReading, KernelError>;
    /// Every route, nexthop, neighbour and FDB entry weft owns under `ownership`.
    async fn read_owned(&self, ownership: &Ownership) -> Result<KernelState, KernelError> {
        Ok(self.read(ownership).await?.owned)
    }
    /// Applies `ops` in order, in batches; a failed op does not stop the others.
    async fn apply(&self, ops: &[Op]) -> Vec<OpFailure>;
    /// Creates the vxlan device, or adopts an existing one that matches; explains a mismatch.
    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<LinkHandle, KernelError>;
    /// Gives `ifindex` exactly `addr` among the addresses of its family (IPv6 link-local ones
    /// aside), removing the others of that family, and sets it up.
    async fn ensure_address(&self, ifindex: u32, addr: IpNet) -> Result<(), KernelError>;
    async fn link_by_name(&self, name: &str) -> Result<Option<LinkHandle>, KernelError>;
    async fn delete_link(&self, index: u32) -> Result<(), KernelError>;
    /// Every link in the namespace.
    async fn links(&self) -> Result<Vec<LinkHandle>, KernelError>;
    /// Whether the kernel has nexthop objects (5.3+).
    async fn supports_nexthops(&self) -> bool;
    /// Turns forwarding of `family` on (peers' traffic is forwarded through this host); true when
    /// it was off and this changed it.
    async fn enable_forwarding(&self, family: IpFamily) -> Result<bool, KernelError>;
    /// A notification each time something weft owns under `ownership` may have been changed or
    /// removed by someone else, so it is repaired at once rather than at the next resync. `None`
    /// where the kernel cannot tell.
    fn change_notifications(&self, _ownership: Ownership) -> Option<futures::stream::BoxStream<'static, ()>> {
        None
    }
}
