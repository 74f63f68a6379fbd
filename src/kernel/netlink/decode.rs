//! Dumped kernel objects into weft's model, keeping only what weft owns and models.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::Parseable;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteType};
use netlink_packet_route::AddressFamily;

use super::encode::{family as encode_family, IPV6_DEFAULT_METRIC};
use super::nexthop::{NexthopMessage, RTM_NEWNEXTHOP};
use crate::kernel::{
    FdbSpec, MacAddr, NeighbourSpec, NexthopSpec, Ownership, RouteSpec, RouteTarget, MAIN_TABLE, WEFT_PROTOCOL,
};

const NUD_PERMANENT: u16 = 0x80;

/// A dumped message weft cannot parse is skipped (and logged), not fatal: the rest of the
/// state is still worth reconciling.
fn parse_or_skip<T: Parseable<[u8]>>(what: &str, payload: &[u8]) -> Option<T> {
    T::parse(payload).map_err(|e| tracing::warn!("skipping an unparsable {what} in a dump: {e}")).ok()
}

/// A dumped route as weft sees it: its own, someone else's in its way, or neither.
#[derive(Debug, PartialEq, Eq)]
pub enum DumpedRoute {
    Owned(RouteSpec),
    /// A main-table route of someone else to `dst`, which a put of weft's would replace.
    Foreign {
        dst: IpNet,
        protocol: u8,
    },
}

pub fn dumped_route(payload: &[u8], ownership: &Ownership) -> Option<DumpedRoute> {
    let message = parse_or_skip::<RouteMessage>("route", payload)?;
    match owned_route(&message, ownership) {
        Some(spec) => Some(DumpedRoute::Owned(spec)),
        None => foreign_route(&message).map(|(dst, protocol)| DumpedRoute::Foreign { dst, protocol }),
    }
}

/// The destination and protocol of a route that is not weft's (call it only on routes
/// [`owned_route`] refused) but shares the key weft's routes are replaced by: main table, no TOS,
/// no source prefix. Of any type (a `blackhole` is someone's intent too) and any metric (ours,
/// beside it, would win over it).
pub fn foreign_route(message: &RouteMessage) -> Option<(IpNet, u8)> {
    let header = &message.header;
    let protocol = u8::from(header.protocol);
    let unspecified = unspecified_address(header.address_family)?;
    if protocol == WEFT_PROTOCOL
        || header.tos != 0
        || header.source_prefix_length != 0
        || table(message) != MAIN_TABLE
        || matches!(header.kind, RouteType::Local | RouteType::Broadcast | RouteType::Anycast | RouteType::Multicast)
    {
        return None;
    }
    let dst = message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::from(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::from(*ip)),
            _ => None,
        })
        .unwrap_or(unspecified);
    if dst.is_ipv4() != unspecified.is_ipv4() {
        return None;
    }
    Some((IpNet::new(dst, header.destination_prefix_length).ok()?, protocol))
}

/// The unspecified address of an IP family (a default route's destination); `None` for others.
fn unspecified_address(family: AddressFamily) -> Option<IpAddr> {
    match family {
        AddressFamily::Inet => Some(Ipv4Addr::UNSPECIFIED.into()),
        AddressFamily::Inet6 => Some(Ipv6Addr::UNSPECIFIED.into()),
        _ => None,
    }
}

/// A route is weft's when it carries weft's protocol, or sits on a weft device (adopting what
/// flannel left there) without being the kernel's own; only the shapes weft installs count.
pub fn owned_route(message: &RouteMessage, ownership: &Ownership) -> Option<RouteSpec> {
    let header = &message.header;
    let protocol = u8::from(header.protocol);
    let unspecified = unspecified_address(header.address_family)?;
    let simple = header.kind == RouteType::Unicast
        && header.tos == 0
        && header.source_prefix_length == 0
        && header.protocol != RouteProtocol::Kernel
        && table(message) == MAIN_TABLE;
    if !simple {
        return None;
    }
    let mut attrs = RouteAttrs::default();
    for attribute in &message.attributes {
        attrs.take(attribute)?;
    }
    let on_our_link = attrs.oif.is_some_and(|oif| ownership.links.contains(&oif));
    if protocol != WEFT_PROTOCOL && !on_our_link {
        return None;
    }
    let target = match (attrs.nexthop, attrs.gateway, attrs.oif) {
        (Some(id), _, _) => RouteTarget::Nexthop(id),
        (None, Some(gateway), Some(oif)) => {
            RouteTarget::Gateway { gateway, oif, onlink: header.flags.contains(RouteFlags::Onlink) }
        }
        _ => return None,
    };
    // The metric weft's routes get: none for IPv4, the kernel's default for IPv6 (a route with
    // another one is someone else's choice, not weft's shape).
    let default_metric = if unspecified.is_ipv4() { 0 } else { IPV6_DEFAULT_METRIC };
    if attrs.metric != default_metric {
        return None;
    }
    let dst = attrs.dst.unwrap_or(unspecified);
    if dst.is_ipv4() != unspecified.is_ipv4() || attrs.gateway.is_some_and(|g| g.is_ipv4() != dst.is_ipv4()) {
        return None;
    }
    let dst = IpNet::new(dst, header.destination_prefix_length).ok()?;
    Some(RouteSpec { dst, target })
}

/// The table of a route: the header's byte, or the attribute for tables past 255.
fn table(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

#[derive(Default)]
struct RouteAttrs {
    dst: Option<IpAddr>,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    nexthop: Option<u32>,
    metric: u32,
}

impl RouteAttrs {
    /// Records one attribute; `None` when it makes the route something weft does not model.
    fn take(&mut self, attribute: &RouteAttribute) -> Option<()> {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => self.dst = Some((*ip).into()),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => self.dst = Some((*ip).into()),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => self.gateway = Some((*ip).into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => self.gateway = Some((*ip).into()),
            RouteAttribute::Oif(oif) => self.oif = Some(*oif),
            RouteAttribute::NhId(id) => self.nexthop = Some(*id),
            RouteAttribute::Priority(metric) => self.metric = *metric,
            RouteAttribute::MultiPath(_)
            | RouteAttribute::Via(_)
            | RouteAttribute::Encap(_)
            | RouteAttribute::Destination(_)
            | RouteAttribute::Gateway(_) => return None,
            _ => {}
        }
        Some(())
    }
}

/// A dumped nexthop object: weft's, or the id of someone else's, which a put of ours with that id
/// would replace.
#[derive(Debug, PartialEq, Eq)]
pub enum DumpedNexthop {
    Owned(NexthopSpec),
    Foreign { id: u32, protocol: u8 },
}

pub fn dumped_nexthop(kind: u16, payload: &[u8]) -> Option<DumpedNexthop> {
    if kind != RTM_NEWNEXTHOP {
        return None;
    }
    let message = NexthopMessage::parse(payload)
        .map_err(|e| tracing::warn!("skipping an unparsable nexthop in a dump: {e}"))
        .ok()?;
    if message.header.protocol == WEFT_PROTOCOL {
        return message.to_spec().map(DumpedNexthop::Owned);
    }
    Some(DumpedNexthop::Foreign { id: message.id()?, protocol: message.header.protocol })
}

/// A neighbour (AF_INET, AF_INET6) or FDB entry (AF_BRIDGE), whichever it is.
pub enum Neighbour {
    Arp(NeighbourSpec),
    Fdb(FdbSpec),
}

pub fn neighbour(payload: &[u8], ownership: &Ownership) -> Option<Neighbour> {
    let message = parse_or_skip::<NeighbourMessage>("neighbour", payload)?;
    owned_neighbour(&message, ownership)
}

/// Neighbours and FDB entries on weft's devices, except the kernel's own: entries it learnt or
/// resolved (not permanent) and the vxlan device's all-zero flood entries.
pub fn owned_neighbour(message: &NeighbourMessage, ownership: &Ownership) -> Option<Neighbour> {
    let header = &message.header;
    let permanent = u16::from(header.state) & NUD_PERMANENT != 0;
    if !permanent || !ownership.links.contains(&header.ifindex) {
        return None;
    }
    let (mut ip, mut mac) = (None, None);
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(address) => ip = ip_of(address),
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
            }
            _ => {}
        }
    }
    let (ip, mac) = (ip?, mac?);
    match header.family {
        AddressFamily::Inet | AddressFamily::Inet6 if encode_family(ip) == header.family => {
            Some(Neighbour::Arp(NeighbourSpec { ifindex: header.ifindex, ip, mac }))
        }
        AddressFamily::Bridge if header.flags.contains(NeighbourFlags::Own) && mac != MacAddr::default() => {
            Some(Neighbour::Fdb(FdbSpec { ifindex: header.ifindex, mac, dst: ip }))
        }
        _ => None,
    }
}

/// NDA_DST of an AF_BRIDGE entry parses as raw bytes (4 for an IPv4 remote, 16 for IPv6); of an
/// AF_INET or AF_INET6 one as an address.
fn ip_of(address: &NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(ip) => Some((*ip).into()),
        NeighbourAddress::Inet6(ip) => Some((*ip).into()),
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(|b| Ipv4Addr::from(b).into()),
            16 => <[u8; 16]>::try_from(bytes.as_slice()).ok().map(|b| Ipv6Addr::from(b).into()),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;
    use netlink_packet_route::neighbour::NeighbourState;
    use netlink_packet_route::route::RouteScope;

    use super::*;

    fn ours() -> Ownership {
        Ownership { links: vec![5] }
    }

    fn gateway_route(protocol: RouteProtocol, oif: u32) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = 24;
        message.header.table = 254;
        message.header.protocol = protocol;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message.header.flags = RouteFlags::Onlink;
        message.attributes = vec![
            RouteAttribute::Table(254),
            RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 244, 3, 0))),
            RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(10, 244, 3, 0))),
            RouteAttribute::Oif(oif),
        ];
        message
    }

    #[test]
    fn routes_by_protocol_or_device() {
        let weft = RouteProtocol::from(WEFT_PROTOCOL);
        let spec = owned_route(&gateway_route(weft, 9), &ours()).unwrap();
        assert_eq!(
            spec.target,
            RouteTarget::Gateway { gateway: Ipv4Addr::new(10, 244, 3, 0).into(), oif: 9, onlink: true }
        );
        // flannel's routes on flannel.1 are adopted; the kernel's and foreign ones elsewhere not.
        assert!(owned_route(&gateway_route(RouteProtocol::Boot, 5), &ours()).is_some());
        assert!(owned_route(&gateway_route(RouteProtocol::Kernel, 5), &ours()).is_none());
        assert!(owned_route(&gateway_route(RouteProtocol::Static, 9), &ours()).is_none());
    }

    #[test]
    fn routes_of_others_that_a_put_would_replace_are_foreign() {
        let ten_244_3: IpNet = "10.244.3.0/24".parse().unwrap();
        let with = |change: fn(&mut RouteMessage)| {
            let mut message = gateway_route(RouteProtocol::Static, 9);
            change(&mut message);
            message
        };
        let cases = [
            ("proto static", with(|_| {}), Some((ten_244_3, 4))),
            ("proto boot", with(|m| m.header.protocol = RouteProtocol::Boot), Some((ten_244_3, 3))),
            ("proto kernel", with(|m| m.header.protocol = RouteProtocol::Kernel), Some((ten_244_3, 2))),
            ("a blackhole", with(|m| m.header.kind = RouteType::BlackHole), Some((ten_244_3, 4))),
            ("another metric", with(|m| m.attributes.push(RouteAttribute::Priority(100))), Some((ten_244_3, 4))),
            ("weft's own", with(|m| m.header.protocol = RouteProtocol::from(WEFT_PROTOCOL)), None),
            ("another table", with(|m| m.attributes[0] = RouteAttribute::Table(100)), None),
            ("a TOS", with(|m| m.header.tos = 8), None),
            ("a source prefix", with(|m| m.header.source_prefix_length = 8), None),
        ];
        for (what, message, want) in cases {
            assert_eq!(foreign_route(&message), want, "{what}");
        }
        // A route weft adopts (flannel's, on flannel.1) is owned, not foreign.
        let bytes = |message: RouteMessage| {
            let mut out = vec![0; message.buffer_len()];
            message.emit(&mut out);
            out
        };
        let adopted = bytes(gateway_route(RouteProtocol::Boot, 5));
        assert!(matches!(dumped_route(&adopted, &ours()), Some(DumpedRoute::Owned(_))));
        let foreign = bytes(gateway_route(RouteProtocol::Static, 9));
        assert_eq!(dumped_route(&foreign, &ours()), Some(DumpedRoute::Foreign { dst: ten_244_3, protocol: 4 }));
    }

    #[test]
    fn nexthop_objects_of_others_are_foreign() {
        let spec =
            NexthopSpec { id: 0x0af4_0300, gateway: Ipv4Addr::new(198, 51, 100, 3).into(), oif: 9, onlink: false };
        let bytes = |protocol| {
            let message = NexthopMessage::put(&spec, protocol);
            let mut out = vec![0; message.buffer_len()];
            message.emit(&mut out);
            out
        };
        assert_eq!(dumped_nexthop(RTM_NEWNEXTHOP, &bytes(WEFT_PROTOCOL)), Some(DumpedNexthop::Owned(spec)));
        let foreign = Some(DumpedNexthop::Foreign { id: spec.id, protocol: 4 });
        assert_eq!(dumped_nexthop(RTM_NEWNEXTHOP, &bytes(4)), foreign);
        assert_eq!(dumped_nexthop(RTM_NEWNEXTHOP + 1, &bytes(4)), None, "not a RTM_NEWNEXTHOP");
    }

    #[test]
    fn unmodelled_routes_are_not_owned() {
        let weft = RouteProtocol::from(WEFT_PROTOCOL);
        let mut other_table = gateway_route(weft, 5);
        other_table.attributes[0] = RouteAttribute::Table(100);
        assert!(owned_route(&other_table, &ours()).is_none());
        let mut metric = gateway_route(weft, 5);
        metric.attributes.push(RouteAttribute::Priority(100));
        assert!(owned_route(&metric, &ours()).is_none());
        let mut multipath = gateway_route(weft, 5);
        multipath.attributes.truncate(2);
        multipath.attributes.push(RouteAttribute::MultiPath(vec![]));
        assert!(owned_route(&multipath, &ours()).is_none());
    }

    #[test]
    fn nexthop_routes_win_over_compat_gateway_attributes() {
        let mut message = gateway_route(RouteProtocol::from(WEFT_PROTOCOL), 5);
        message.attributes.push(RouteAttribute::NhId(3));
        assert_eq!(owned_route(&message, &ours()).unwrap().target, RouteTarget::Nexthop(3));
    }

    fn neighbour_message(family: AddressFamily, state: NeighbourState, mac: [u8; 6]) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = family;
        message.header.ifindex = 5;
        message.header.state = state;
        message.header.flags = NeighbourFlags::Own;
        let dst = match family {
            AddressFamily::Inet => NeighbourAddress::Inet(Ipv4Addr::new(10, 244, 3, 0)),
            _ => NeighbourAddress::Other(vec![198, 51, 100, 3]),
        };
        message.attributes =
            vec![NeighbourAttribute::Destination(dst), NeighbourAttribute::LinkLayerAddress(mac.to_vec())];
        message
    }

    #[test]
    fn neighbours_and_fdb_skip_the_kernels_own() {
        let mac = [2, 0, 0, 0, 0, 3];
        let arp = neighbour_message(AddressFamily::Inet, NeighbourState::Permanent, mac);
        assert!(matches!(owned_neighbour(&arp, &ours()), Some(Neighbour::Arp(n)) if n.mac.0 == mac));
        let fdb = neighbour_message(AddressFamily::Bridge, NeighbourState::Permanent, mac);
        assert!(matches!(
            owned_neighbour(&fdb, &ours()),
            Some(Neighbour::Fdb(f)) if f.dst == Ipv4Addr::new(198, 51, 100, 3)
        ));
        let flood = neighbour_message(AddressFamily::Bridge, NeighbourState::Permanent, [0; 6]);
        assert!(owned_neighbour(&flood, &ours()).is_none());
        let learnt = neighbour_message(AddressFamily::Bridge, NeighbourState::Reachable, mac);
        assert!(owned_neighbour(&learnt, &ours()).is_none());
        let stale = neighbour_message(AddressFamily::Inet, NeighbourState::Stale, mac);
        assert!(owned_neighbour(&stale, &ours()).is_none());
        let elsewhere = Ownership { links: vec![6] };
        assert!(owned_neighbour(&arp, &elsewhere).is_none());
    }

    #[test]
    fn ipv6_routes_carry_the_kernels_default_metric() {
        let mut message = gateway_route(RouteProtocol::from(WEFT_PROTOCOL), 9);
        message.header.address_family = AddressFamily::Inet6;
        message.header.destination_prefix_length = 64;
        message.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet6("2001:db8:3::".parse().unwrap())),
            RouteAttribute::Gateway(RouteAddress::Inet6("2001:db8:3::".parse().unwrap())),
            RouteAttribute::Oif(9),
            RouteAttribute::Priority(IPV6_DEFAULT_METRIC),
        ];
        let spec = owned_route(&message, &ours()).unwrap();
        assert_eq!(spec.dst.to_string(), "2001:db8:3::/64");
        message.attributes[3] = RouteAttribute::Priority(100);
        assert!(owned_route(&message, &ours()).is_none(), "another metric is someone else's route");
        // An IPv4 gateway on an IPv6 route (RFC 5549 style) is not a shape weft installs.
        message.attributes[1] = RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(192, 0, 2, 1)));
        message.attributes[3] = RouteAttribute::Priority(IPV6_DEFAULT_METRIC);
        assert!(owned_route(&message, &ours()).is_none());
    }
}
