//! What interface choice needs to know (links with their IPv4 addresses, which link the default
//! route and a route to a given address leave by), read over rtnetlink.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::kernel::{InterfaceInfo, KernelError, MAIN_TABLE};

fn failed(what: &str, error: rtnetlink::Error) -> KernelError {
    KernelError::Netlink(format!("{what}: {error}"))
}

/// Every link with its IPv4 addresses.
pub async fn all(handle: &Handle) -> Result<Vec<InterfaceInfo>, KernelError> {
    let mut links = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(|e| failed("list links", e))? {
        let mut link = InterfaceInfo {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            addrs: Vec::new(),
            addrs_v6: Vec::new(),
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                _ => {}
            }
        }
        links.push(link);
    }
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(|e| failed("list addresses", e))? {
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        let (Some(ip), Some(link)) = (local, links.iter_mut().find(|l| l.index == msg.header.index)) else {
            continue;
        };
        match ip {
            IpAddr::V4(ip) => link.addrs.extend(Ipv4Net::new(ip, msg.header.prefix_len)),
            IpAddr::V6(ip) => {
                let deprecated = msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::CacheInfo(info) if info.ifa_preferred == 0));
                // Link-local (fe80::/10) and loopback addresses reach no other host.
                let global = !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80;
                if global && !deprecated {
                    link.addrs_v6.extend(Ipv6Net::new(ip, msg.header.prefix_len));
                }
            }
        }
    }
    Ok(links)
}

/// The link the default route of the main table leaves by: IPv4's, else (a host without IPv4)
/// IPv6's.
pub async fn default_route_oif(handle: &Handle) -> Result<Option<u32>, KernelError> {
    match default_oif_of(handle, RouteMessageBuilder::<Ipv4Addr>::new().build()).await? {
        Some(oif) => Ok(Some(oif)),
        None => default_oif_of(handle, RouteMessageBuilder::<Ipv6Addr>::new().build()).await,
    }
}

/// The link the default route among the routes `query` lists leaves by.
async fn default_oif_of(handle: &Handle, query: RouteMessage) -> Result<Option<u32>, KernelError> {
    let mut routes = handle.route().get(query).execute();
    while let Some(route) = routes.try_next().await.map_err(|e| failed("list routes", e))? {
        if route.header.destination_prefix_length != 0 || u32::from(route.header.table) != MAIN_TABLE {
            continue;
        }
        if let Some(oif) = oif_of(&route.attributes) {
            return Ok(Some(oif));
        }
    }
    Ok(None)
}

/// The link a packet to `target` would leave by (`ip route get`), or `None` when unreachable.
pub async fn route_oif_to(handle: &Handle, target: IpAddr) -> Option<u32> {
    let query = match target {
        IpAddr::V4(ip) => RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(ip, 32).build(),
        IpAddr::V6(ip) => RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(ip, 128).build(),
    };
    let mut routes = handle.route().get(query).execute();
    let route = routes.try_next().await.ok()??;
    oif_of(&route.attributes)
}

fn oif_of(attributes: &[RouteAttribute]) -> Option<u32> {
    attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(oif) => Some(*oif),
        _ => None,
    })
}
