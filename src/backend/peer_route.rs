//! What the kernel backends (vxlan, host-gw) share: a peer's route, and forwarding on.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::kernel::{Kernel, KernelState, NexthopSpec, RouteSpec, RouteTarget};
use crate::network::Families;

/// A route to `dst` (one of a lease's subnets) via `gateway`, through a nexthop object where the
/// kernel has them. One path for both families.
pub fn add_route(state: &mut KernelState, dst: IpNet, gateway: IpAddr, oif: u32, onlink: bool, nexthops: bool) {
    let target = if nexthops {
        // One nexthop object per peer, named after its subnet: unique and stable across restarts.
        let id = nexthop_id(&dst);
        state.add_nexthop(NexthopSpec { id, gateway, oif, onlink });
        RouteTarget::Nexthop(id)
    } else {
        RouteTarget::Gateway { gateway, oif, onlink }
    };
    state.add_route(RouteSpec { dst, target });
}

/// The nexthop object id of the route to `subnet`. IPv4: the subnet's network address as a u32,
/// exactly as always (nodes upgraded in place keep their nexthop ids). IPv6: an FNV-1a hash of the
/// network address and prefix length with the top bit set, so it cannot collide with an IPv4 id
/// of a subnet below 128.0.0.0 and is stable across restarts; a collision between two IPv6
/// subnets is possible in principle (2^-31 per pair) and shows as one peer's nexthop replaced.
pub fn nexthop_id(subnet: &IpNet) -> u32 {
    match subnet {
        IpNet::V4(net) => u32::from(net.network()),
        IpNet::V6(net) => {
            let mut hash: u32 = 0x811c_9dc5;
            for byte in net.network().octets().iter().chain(std::iter::once(&net.prefix_len())) {
                hash = (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193);
            }
            hash | 0x8000_0000
        }
    }
}

/// Peers' traffic is forwarded through this host: turn forwarding on for each family the network
/// has (in the kernel's namespace). A failure is logged, not fatal: forwarding may be managed by
/// someone else.
pub async fn enable_forwarding(kernel: &dyn Kernel, families: Families) {
    for family in families.each() {
        match kernel.enable_forwarding(family).await {
            Ok(true) => tracing::info!("enabled {family} forwarding"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not enable {family} forwarding"),
        }
    }
}
