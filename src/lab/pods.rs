//! A "pod" behind each host, as a CNI bridge plugin would make it: a bridge `cni0` in the host
//! namespace holding the subnet's first address, and a pod namespace with a veth into that
//! bridge, the subnet's second address and a default route through the bridge.

use std::net::Ipv6Addr;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::topology::{Node, PodAddrs, Topology};
use super::{wire, LabError};
use crate::netns::Netns;
use crate::subnet_env::SubnetEnv;

/// The bridge pods hang off, as flannel's CNI config names it.
pub const POD_BRIDGE: &str = "cni0";
/// The pod's interface, inside the pod namespace.
pub const POD_IFACE: &str = "eth0";
/// The pod veth's host end, a port of `cni0`.
pub const POD_VETH_HOST: &str = "veth-pod";

/// What a host's subnet.env says about the pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetInfo {
    /// The subnet that names the host's lease, truncated to its network: `FLANNEL_SUBNET`, or
    /// on an IPv6-only host `FLANNEL_IPV6_SUBNET`.
    pub subnet: IpNet,
    /// `FLANNEL_MTU`: what pods may send without fragmenting the backend's packets.
    pub mtu: u32,
}

/// Reads `FLANNEL_SUBNET` and `FLANNEL_MTU` out of subnet.env's text.
pub fn parse_subnet_env(text: &str) -> Option<SubnetInfo> {
    SubnetEnv::parse(text).ok().and_then(SubnetInfo::of)
}

/// Reads a host's subnet.env; `None` while the agent has not written it.
pub fn read_subnet_env(path: &Path) -> Option<SubnetInfo> {
    SubnetEnv::read(path).ok().and_then(SubnetInfo::of)
}

impl SubnetInfo {
    /// What `env` says of the lease and the MTU.
    pub fn of(env: SubnetEnv) -> Option<SubnetInfo> {
        Some(SubnetInfo { subnet: env.lease_id(), mtu: env.mtu })
    }

    /// The host's IPv4 subnet, unless it is IPv6-only.
    pub fn ipv4(&self) -> Option<Ipv4Net> {
        match self.subnet {
            IpNet::V4(v4) => Some(v4),
            IpNet::V6(_) => None,
        }
    }
}

/// A pod's IPv6 addresses in `subnet`, as for IPv4: `::1` on the bridge (the gateway), `::2` in
/// the pod.
pub fn ipv6_addrs(subnet: Ipv6Net) -> (Ipv6Addr, Ipv6Addr) {
    let base = u128::from(subnet.network());
    (Ipv6Addr::from(base + 1), Ipv6Addr::from(base + 2))
}

/// Gives the pod behind `node` (made by [`create`]) an address of the host's IPv6 subnet too
/// ([`ipv6_addrs`]), and its IPv6 default route through the bridge. Returns the pod's address.
pub fn add_ipv6(topology: &Topology, node: &Node, subnet: Ipv6Net) -> Result<Ipv6Addr, LabError> {
    let (gateway, pod) = ipv6_addrs(subnet);
    let net = |addr| Ipv6Net::new(addr, subnet.prefix_len()).expect("the subnet's length");
    let host = Netns::open(&node.ns).map_err(LabError::io(format!("open host namespace {}", node.ns)))?;
    let pod_ns = topology.pod_ns(node);
    let pod_netns = Netns::open(&pod_ns).map_err(LabError::io(format!("open pod namespace {pod_ns}")))?;
    wire::add_ipv6(&host, POD_BRIDGE, net(gateway))?;
    wire::add_ipv6(&pod_netns, POD_IFACE, net(pod))?;
    wire::default_route_v6(&pod_netns, gateway)?;
    Ok(pod)
}

/// Builds the pod behind `node` for `info`'s IPv4 subnet; returns its addresses.
pub fn create(topology: &Topology, node: &Node, info: SubnetInfo) -> Result<PodAddrs, LabError> {
    let subnet = info.ipv4().ok_or_else(|| LabError::Invalid(format!("{}: an IPv6-only subnet", info.subnet)))?;
    let addrs = PodAddrs::for_subnet(subnet).map_err(LabError::Invalid)?;
    let (host, pod) = wire_pod(topology, node, Some(addrs.gateway), info.mtu)?;
    wire::configure(&pod, POD_IFACE, Some(addrs.pod), None)?;
    wire::default_route(&pod, addrs.gateway.addr())?;
    wire::wait_up(&pod, POD_IFACE)?;
    wire::wait_up(&host, POD_VETH_HOST)?;
    Ok(addrs)
}

/// Builds the pod behind `node` for an IPv6-only host's `subnet`, as the bridge plugin makes it
/// there: `cni0` with no IPv4 address, then the addresses of [`add_ipv6`]. Returns the pod's
/// address.
pub fn create_ipv6_only(topology: &Topology, node: &Node, subnet: Ipv6Net, mtu: u32) -> Result<Ipv6Addr, LabError> {
    let (host, pod) = wire_pod(topology, node, None, mtu)?;
    wire::configure(&pod, POD_IFACE, None, None)?;
    wire::wait_up(&pod, POD_IFACE)?;
    wire::wait_up(&host, POD_VETH_HOST)?;
    add_ipv6(topology, node, subnet)
}

/// The pod's namespace, the bridge (with `gateway`, if any) and the veth between them at `mtu`.
fn wire_pod(topology: &Topology, node: &Node, gateway: Option<Ipv4Net>, mtu: u32) -> Result<(Netns, Netns), LabError> {
    let host = Netns::open(&node.ns).map_err(LabError::io(format!("open host namespace {}", node.ns)))?;
    let pod = wire::create_ns(&topology.pod_ns(node))?;
    wire::bridge(&host, POD_BRIDGE, gateway)?;
    wire::veth_pair(&pod, POD_IFACE, &host, POD_VETH_HOST, mtu)?;
    wire::configure(&host, POD_VETH_HOST, None, Some(POD_BRIDGE))?;
    Ok((host, pod))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flannels_subnet_env() {
        let text =
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        let info = parse_subnet_env(text).unwrap();
        assert_eq!(info.subnet.to_string(), "10.244.3.0/24");
        assert_eq!(info.ipv4().map(|s| s.to_string()).as_deref(), Some("10.244.3.0/24"));
        let v6_only =
            "FLANNEL_IPV6_NETWORK=2001:db8:42::/56\nFLANNEL_IPV6_SUBNET=2001:db8:42:3::1/64\nFLANNEL_MTU=1430\n";
        assert_eq!(info.mtu, 1450);
        let v6 = parse_subnet_env(v6_only).unwrap();
        assert_eq!((v6.subnet.to_string().as_str(), v6.ipv4(), v6.mtu), ("2001:db8:42:3::/64", None, 1430));
    }

    #[test]
    fn incomplete_subnet_env_is_not_read() {
        assert_eq!(parse_subnet_env(""), None);
        assert_eq!(parse_subnet_env("FLANNEL_SUBNET=10.244.3.1/24\n"), None);
        assert_eq!(parse_subnet_env("FLANNEL_SUBNET=nope\nFLANNEL_MTU=1450\n"), None);
        // A key that only starts like another is not it.
        assert_eq!(parse_subnet_env("FLANNEL_SUBNET_X=10.0.0.1/24\nFLANNEL_MTU=1\n"), None);
    }
}
