//! What the kernel backends (vxlan, host-gw) share: a peer's route, and forwarding on.

use std::net::Ipv4Addr;

use crate::kernel::{IpFamily, Kernel, KernelState, NexthopSpec, RouteSpec, RouteTarget};
use crate::lease::Lease;

/// A route to the lease's subnet via `gateway`, through a nexthop object where the kernel has them.
pub fn add_route(state: &mut KernelState, lease: &Lease, gateway: Ipv4Addr, oif: u32, onlink: bool, nexthops: bool) {
    let target = if nexthops {
        // One nexthop object per peer, named after its subnet: unique and stable across restarts.
        let id = u32::from(lease.subnet.network());
        state.add_nexthop(NexthopSpec { id, gateway, oif, onlink });
        RouteTarget::Nexthop(id)
    } else {
        RouteTarget::Gateway { gateway, oif, onlink }
    };
    state.add_route(RouteSpec { dst: lease.subnet, target });
}

/// Peers' traffic is forwarded through this host: turn IPv4 forwarding on (in the kernel's
/// namespace). A failure is logged, not fatal: forwarding may be managed by someone else.
pub async fn enable_forwarding(kernel: &dyn Kernel) {
    match kernel.enable_forwarding(IpFamily::V4).await {
        Ok(true) => tracing::info!("enabled IPv4 forwarding (net.ipv4.ip_forward = 1)"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not enable IPv4 forwarding"),
    }
}
