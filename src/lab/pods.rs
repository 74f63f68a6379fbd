//! A "pod" behind each host, as a CNI bridge plugin would make it: a bridge `cni0` in the host
//! namespace holding the subnet's first address, and a pod namespace with a veth into that
//! bridge, the subnet's second address and a default route through the bridge.

use std::path::Path;

use ipnet::Ipv4Net;

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
    /// The host's subnet (`FLANNEL_SUBNET`, truncated to its network).
    pub subnet: Ipv4Net,
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
    /// The IPv4 side of a host's subnet.env, which the lab's pods are built on; `None` for an
    /// IPv6-only host.
    pub fn of(env: SubnetEnv) -> Option<SubnetInfo> {
        Some(SubnetInfo { subnet: env.ipv4?.subnet, mtu: env.mtu })
    }
}

/// A pod's IPv6 addresses in `subnet`, as for IPv4: `::1` on the bridge (the gateway), `::2` in
/// the pod.
pub fn ipv6_addrs(subnet: ipnet::Ipv6Net) -> (std::net::Ipv6Addr, std::net::Ipv6Addr) {
    let base = u128::from(subnet.network());
    (std::net::Ipv6Addr::from(base + 1), std::net::Ipv6Addr::from(base + 2))
}

/// Gives the pod behind `node` (made by [`create`]) an address of the host's IPv6 subnet too
/// ([`ipv6_addrs`]), and its IPv6 default route through the bridge. Returns the pod's address.
pub fn add_ipv6(topology: &Topology, node: &Node, subnet: ipnet::Ipv6Net) -> Result<std::net::Ipv6Addr, LabError> {
    let (gateway, pod) = ipv6_addrs(subnet);
    let net = |addr| ipnet::Ipv6Net::new(addr, subnet.prefix_len()).expect("the subnet's length");
    let host = Netns::open(&node.ns).map_err(LabError::io(format!("open host namespace {}", node.ns)))?;
    let pod_ns = topology.pod_ns(node);
    let pod_netns = Netns::open(&pod_ns).map_err(LabError::io(format!("open pod namespace {pod_ns}")))?;
    wire::add_ipv6(&host, POD_BRIDGE, net(gateway))?;
    wire::add_ipv6(&pod_netns, POD_IFACE, net(pod))?;
    wire::default_route_v6(&pod_netns, gateway)?;
    Ok(pod)
}

/// Builds the pod behind `node` for `info`'s subnet; returns its addresses.
pub fn create(topology: &Topology, node: &Node, info: SubnetInfo) -> Result<PodAddrs, LabError> {
    let addrs = PodAddrs::for_subnet(info.subnet).map_err(LabError::Invalid)?;
    let host = Netns::open(&node.ns).map_err(LabError::io(format!("open host namespace {}", node.ns)))?;
    let pod = wire::create_ns(&topology.pod_ns(node))?;
    wire::bridge(&host, POD_BRIDGE, addrs.gateway)?;
    wire::veth_pair(&pod, POD_IFACE, &host, POD_VETH_HOST, info.mtu)?;
    wire::configure(&host, POD_VETH_HOST, None, Some(POD_BRIDGE))?;
    wire::configure(&pod, POD_IFACE, Some(addrs.pod), None)?;
    wire::default_route(&pod, addrs.gateway.addr())?;
    wire::wait_up(&pod, POD_IFACE)?;
    wire::wait_up(&host, POD_VETH_HOST)?;
    Ok(addrs)
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
        assert_eq!(info.mtu, 1450);
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
