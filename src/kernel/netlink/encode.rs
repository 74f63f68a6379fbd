//! Plan operations as netlink requests, and how to name them in errors.

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::nexthop::{NexthopMessage, NexthopNetlinkMessage};
use crate::kernel::{FdbSpec, NeighbourSpec, NexthopSpec, Op, RouteSpec, RouteTarget, WEFT_PROTOCOL};

/// Create or replace in place: an existing object is changed, never deleted and re-added.
const PUT: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
const DELETE: u16 = NLM_F_REQUEST | NLM_F_ACK;
const DUMP: u16 = NLM_F_REQUEST | NLM_F_DUMP;
/// `IP6_RT_PRIO_USER`: the metric of an IPv6 route added without one (IPv4 routes have none).
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

/// Appends `op` as one netlink message with sequence number `seq`.
pub fn encode_op(op: &Op, seq: u32, out: &mut Vec<u8>) {
    use RouteNetlinkMessage as R;
    match op {
        Op::PutRoute(r) => push(R::NewRoute(route(r, false)), PUT, seq, out),
        Op::DeleteRoute(r) => push(R::DelRoute(route(r, true)), DELETE, seq, out),
        Op::PutNexthop(n) => push(NexthopNetlinkMessage::New(NexthopMessage::put(n, WEFT_PROTOCOL)), PUT, seq, out),
        Op::DeleteNexthop(n) => push(NexthopNetlinkMessage::Del(NexthopMessage::delete(n.id)), DELETE, seq, out),
        Op::PutNeighbour(n) => push(R::NewNeighbour(neighbour(n)), PUT, seq, out),
        Op::DeleteNeighbour(n) => push(R::DelNeighbour(neighbour(n)), DELETE, seq, out),
        Op::PutFdb(f) => push(R::NewNeighbour(fdb(f)), PUT, seq, out),
        Op::DeleteFdb(f) => push(R::DelNeighbour(fdb(f)), DELETE, seq, out),
    }
}

/// Whether a failed `op` failed only because its object is already gone.
pub fn already_gone(op: &Op, errno: i32) -> bool {
    match op {
        // A route through a nexthop that no longer exists cannot exist either (the kernel
        // removes routes with their nexthop), but the kernel answers EINVAL ("Nexthop id does
        // not exist") before it looks for the route.
        Op::DeleteRoute(RouteSpec { target: RouteTarget::Nexthop(_), .. }) => {
            matches!(errno, libc::ESRCH | libc::EINVAL)
        }
        Op::DeleteRoute(_) => errno == libc::ESRCH,
        // Neighbours, FDB entries and nexthops answer ENOENT.
        Op::DeleteNexthop(_) | Op::DeleteNeighbour(_) | Op::DeleteFdb(_) => errno == libc::ENOENT,
        _ => false,
    }
}

/// Dump requests for what `read_owned` looks at.
pub fn dump_routes(family: AddressFamily, seq: u32, out: &mut Vec<u8>) {
    let mut message = RouteMessage::default();
    message.header.address_family = family;
    push(RouteNetlinkMessage::GetRoute(message), DUMP, seq, out);
}

pub fn dump_neighbours(family: AddressFamily, seq: u32, out: &mut Vec<u8>) {
    let mut message = NeighbourMessage::default();
    message.header.family = family;
    push(RouteNetlinkMessage::GetNeighbour(message), DUMP, seq, out);
}

pub fn dump_nexthops(seq: u32, out: &mut Vec<u8>) {
    let request = NexthopNetlinkMessage::Get(NexthopMessage::dump());
    push(request, DUMP, seq, out);
}

fn push<M: NetlinkSerializable>(inner: M, flags: u16, seq: u32, out: &mut Vec<u8>) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    message.finalize();
    let start = out.len();
    out.resize(start + message.buffer_len(), 0);
    message.serialize(&mut out[start..]);
    // Messages in one buffer start on 4-byte boundaries.
    out.resize((out.len() + 3) & !3, 0);
}

/// A main-table unicast route. A delete leaves protocol and scope open (so it also removes an
/// adopted route of another protocol) but names the target, so it removes only that route.
fn route(spec: &RouteSpec, delete: bool) -> RouteMessage {
    let mut message = RouteMessage::default();
    let header = &mut message.header;
    header.address_family = family(spec.dst.addr());
    header.destination_prefix_length = spec.dst.prefix_len();
    header.table = RouteHeader::RT_TABLE_MAIN;
    header.kind = RouteType::Unicast;
    if delete {
        header.scope = RouteScope::NoWhere;
    } else {
        header.protocol = RouteProtocol::from(WEFT_PROTOCOL);
        header.scope = RouteScope::Universe;
    }
    let attributes = &mut message.attributes;
    attributes.push(RouteAttribute::Destination(route_address(spec.dst.addr())));
    if spec.dst.addr().is_ipv6() && !delete {
        // What the kernel would give it anyway, said so that what is put decodes as it reads back.
        attributes.push(RouteAttribute::Priority(IPV6_DEFAULT_METRIC));
    }
    match spec.target {
        RouteTarget::Nexthop(id) => attributes.push(RouteAttribute::NhId(id)),
        RouteTarget::Gateway { gateway, oif, onlink } => {
            attributes.push(RouteAttribute::Gateway(route_address(gateway)));
            attributes.push(RouteAttribute::Oif(oif));
            if onlink {
                message.header.flags = RouteFlags::Onlink;
            }
        }
    }
    message
}

/// `ip neigh replace <ip> lladdr <mac> dev <ifindex> nud permanent`.
fn neighbour(spec: &NeighbourSpec) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = family(spec.ip);
    message.header.ifindex = spec.ifindex;
    message.header.state = NeighbourState::Permanent;
    message.attributes = vec![
        NeighbourAttribute::Destination(neighbour_address(spec.ip)),
        NeighbourAttribute::LinkLayerAddress(spec.mac.0.to_vec()),
    ];
    message
}

/// `bridge fdb replace <mac> dev <ifindex> dst <dst> self permanent`: the vxlan device's own
/// table (NTF_SELF), not a bridge's.
fn fdb(spec: &FdbSpec) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = spec.ifindex;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(spec.mac.0.to_vec()),
        NeighbourAttribute::Destination(neighbour_address(spec.dst)),
    ];
    message
}

/// The address family of `ip`: every encoder takes it from the object, so IPv4 and IPv6 share
/// one code path.
pub fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(ip) => RouteAddress::Inet(ip),
        IpAddr::V6(ip) => RouteAddress::Inet6(ip),
    }
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
        IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
    }
}

/// Names an operation's object the way `ip` would print it, for errors.
pub fn describe(op: &Op) -> String {
    match op {
        Op::PutRoute(r) => route_text(r),
        Op::DeleteRoute(r) => format!("delete {}", route_text(r)),
        Op::PutNexthop(n) => nexthop_text(n),
        Op::DeleteNexthop(n) => format!("delete {}", nexthop_text(n)),
        Op::PutNeighbour(n) => neighbour_text(n),
        Op::DeleteNeighbour(n) => format!("delete {}", neighbour_text(n)),
        Op::PutFdb(f) => fdb_text(f),
        Op::DeleteFdb(f) => format!("delete {}", fdb_text(f)),
    }
}

fn route_text(r: &RouteSpec) -> String {
    match r.target {
        RouteTarget::Nexthop(id) => format!("route {} nhid {id}", r.dst),
        RouteTarget::Gateway { gateway, oif, onlink } => {
            format!("route {} via {gateway} dev {oif}{}", r.dst, if onlink { " onlink" } else { "" })
        }
    }
}

fn nexthop_text(n: &NexthopSpec) -> String {
    let onlink = if n.onlink { " onlink" } else { "" };
    format!("nexthop id {} via {} dev {}{onlink}", n.id, n.gateway, n.oif)
}

fn neighbour_text(n: &NeighbourSpec) -> String {
    format!("neighbour {} lladdr {} dev {}", n.ip, n.mac, n.ifindex)
}

fn fdb_text(f: &FdbSpec) -> String {
    format!("fdb {} dev {} dst {}", f.mac, f.ifindex, f.dst)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::kernel::{MacAddr, Object};

    fn onlink_route() -> RouteSpec {
        RouteSpec {
            dst: "10.244.3.0/24".parse().unwrap(),
            target: RouteTarget::Gateway { gateway: Ipv4Addr::new(10, 244, 3, 0).into(), oif: 5, onlink: true },
        }
    }

    #[test]
    fn describes_like_ip_does() {
        assert_eq!(describe(&Op::PutRoute(onlink_route())), "route 10.244.3.0/24 via 10.244.3.0 dev 5 onlink");
        let fdb = FdbSpec { ifindex: 5, mac: MacAddr([2, 0, 0, 0, 0, 1]), dst: Ipv4Addr::new(198, 51, 100, 2).into() };
        assert_eq!(describe(&Op::DeleteFdb(fdb)), "delete fdb 02:00:00:00:00:01 dev 5 dst 198.51.100.2");
    }

    #[test]
    fn route_put_layout() {
        let mut out = Vec::new();
        encode_op(&Op::PutRoute(onlink_route()), 7, &mut out);
        // nlmsghdr(16) + rtmsg(12) + RTA_DST(8) + RTA_GATEWAY(8) + RTA_OIF(8)
        assert_eq!(out.len(), 52);
        assert_eq!(&out[4..6], &24u16.to_ne_bytes()); // RTM_NEWROUTE
        assert_eq!(&out[6..8], &PUT.to_ne_bytes());
        assert_eq!(&out[8..12], &7u32.to_ne_bytes());
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
        assert_eq!(&out[16..24], &[2, 24, 0, 0, 254, 87, 0, 1]);
        assert_eq!(&out[24..28], &4u32.to_ne_bytes()); // RTNH_F_ONLINK
    }

    #[test]
    fn fdb_put_layout() {
        let mut out = Vec::new();
        let fdb = FdbSpec { ifindex: 5, mac: MacAddr([2, 0, 0, 0, 0, 1]), dst: Ipv4Addr::new(198, 51, 100, 2).into() };
        encode_op(&Op::PutFdb(fdb), 1, &mut out);
        assert_eq!(&out[4..6], &28u16.to_ne_bytes()); // RTM_NEWNEIGH
                                                      // ndmsg: AF_BRIDGE, pad, ifindex, state NUD_PERMANENT, flags NTF_SELF, type
        assert_eq!(out[16], libc::AF_BRIDGE as u8);
        assert_eq!(&out[20..24], &5u32.to_ne_bytes());
        assert_eq!(&out[24..26], &0x80u16.to_ne_bytes());
        assert_eq!(out[26], 2);
    }

    #[test]
    fn only_deletes_may_find_nothing() {
        let route = Op::DeleteRoute(onlink_route());
        assert!(already_gone(&route, libc::ESRCH));
        assert!(!already_gone(&route, libc::ENETUNREACH));
        assert!(!already_gone(&Op::PutRoute(onlink_route()), libc::ENOENT));
    }

    /// The payload (after the 16-byte nlmsghdr) of the one message in `out`.
    fn payload(out: &[u8]) -> &[u8] {
        let len = u32::from_ne_bytes(out[..4].try_into().unwrap()) as usize;
        &out[16..len]
    }

    fn put_then_decode(op: Op) -> Option<Object> {
        use super::super::decode;
        let ownership = crate::kernel::Ownership { links: vec![5] };
        let mut out = Vec::new();
        encode_op(&op, 1, &mut out);
        match op {
            Op::PutRoute(_) => match decode::dumped_route(payload(&out), &ownership)? {
                decode::DumpedRoute::Owned(route) => Some(Object::Route(route)),
                decode::DumpedRoute::Foreign { .. } => None,
            },
            Op::PutNeighbour(_) | Op::PutFdb(_) => match decode::neighbour(payload(&out), &ownership)? {
                decode::Neighbour::Arp(n) => Some(Object::Neighbour(n)),
                decode::Neighbour::Fdb(f) => Some(Object::Fdb(f)),
            },
            _ => None,
        }
    }

    #[test]
    fn both_families_round_trip_through_the_decoder() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let objects = [
            Object::Route(onlink_route()),
            Object::Route(RouteSpec {
                dst: "2001:db8:3::/64".parse().unwrap(),
                target: RouteTarget::Gateway { gateway: "2001:db8:3::".parse().unwrap(), oif: 5, onlink: true },
            }),
            Object::Route(RouteSpec { dst: "2001:db8:4::/64".parse().unwrap(), target: RouteTarget::Nexthop(9) }),
            Object::Neighbour(NeighbourSpec { ifindex: 5, ip: Ipv4Addr::new(10, 244, 3, 0).into(), mac }),
            Object::Neighbour(NeighbourSpec { ifindex: 5, ip: "2001:db8:3::".parse().unwrap(), mac }),
            Object::Fdb(FdbSpec { ifindex: 5, mac, dst: Ipv4Addr::new(198, 51, 100, 2).into() }),
            Object::Fdb(FdbSpec { ifindex: 5, mac, dst: "2001:db8:ff::2".parse().unwrap() }),
        ];
        for object in objects {
            let op = match object {
                Object::Route(r) => Op::PutRoute(r),
                Object::Neighbour(n) => Op::PutNeighbour(n),
                Object::Fdb(f) => Op::PutFdb(f),
                Object::Nexthop(n) => Op::PutNexthop(n),
            };
            assert_eq!(put_then_decode(op), Some(object), "{object:?}");
        }
    }

    #[test]
    fn ipv6_route_put_layout() {
        let route = RouteSpec {
            dst: "2001:db8:3::/64".parse().unwrap(),
            target: RouteTarget::Gateway { gateway: "2001:db8:3::".parse().unwrap(), oif: 5, onlink: true },
        };
        let mut out = Vec::new();
        encode_op(&Op::PutRoute(route), 7, &mut out);
        // nlmsghdr(16) + rtmsg(12) + RTA_DST(20) + RTA_PRIORITY(8) + RTA_GATEWAY(20) + RTA_OIF(8)
        assert_eq!(out.len(), 84);
        assert_eq!(&out[16..24], &[libc::AF_INET6 as u8, 64, 0, 0, 254, 87, 0, 1]);
        assert_eq!(describe(&Op::PutRoute(route)), "route 2001:db8:3::/64 via 2001:db8:3:: dev 5 onlink");
    }
}
