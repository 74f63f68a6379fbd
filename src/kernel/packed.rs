//! Kernel objects packed into bytes, for what the agent keeps per peer between syncs.
//!
//! A peer has a few objects (a vxlan peer: nexthop, route, neighbour, FDB entry). As [`Object`]s
//! they take 48 bytes each, sized for IPv6 addresses; packed, an IPv4 peer's four take 53 bytes
//! in all, kept in place up to 54 bytes (a heap block of its own would cost a pointer and the
//! allocator's rounding, 80 bytes, for each peer). With 10,000 peers that is 1.5 MB of
//! the agent's resident memory.
//!
//! Layout of one object: a tag byte (kind in the low bits, then which addresses are IPv6 and the
//! route's target kind), then its fields in a fixed order, integers little-endian, addresses as
//! 4 or 16 bytes. Only [`PackedObjects::pack`] writes it, so [`PackedObjects::iter`] trusts it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{FdbSpec, MacAddr, NeighbourSpec, NexthopSpec, Object, RouteSpec, RouteTarget};

const KIND_MASK: u8 = 0b11;
const NEXTHOP: u8 = 0;
const ROUTE: u8 = 1;
const NEIGHBOUR: u8 = 2;
const FDB: u8 = 3;
/// The object's address (a route's destination) is IPv6.
const V6: u8 = 1 << 2;
/// A route's gateway is IPv6.
const GATEWAY_V6: u8 = 1 << 3;
/// A route's target is a nexthop object (else a gateway).
const VIA_NEXTHOP: u8 = 1 << 4;
/// A nexthop or gateway route is `onlink`.
const ONLINK: u8 = 1 << 5;

/// Packed objects up to this many bytes are kept in place: an IPv4 vxlan peer's take 53, and
/// with the length and the variant's tag a [`PackedObjects`] is then 56 bytes, no larger than
/// a pointer to the heap and the allocator's smallest fitting block.
const INLINE: usize = 54;

/// A peer's kernel objects, packed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedObjects(Bytes);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Bytes {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Default for PackedObjects {
    fn default() -> Self {
        PackedObjects(Bytes::Inline { len: 0, bytes: [0; INLINE] })
    }
}

impl PackedObjects {
    pub fn pack(objects: impl Iterator<Item = Object>) -> Self {
        let mut out = Vec::new();
        for object in objects {
            write_object(&mut out, object);
        }
        match u8::try_from(out.len()) {
            Ok(len) if out.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..out.len()].copy_from_slice(&out);
                PackedObjects(Bytes::Inline { len, bytes })
            }
            _ => PackedObjects(Bytes::Heap(out.into_boxed_slice())),
        }
    }

    /// The objects, in the order they were packed.
    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: self.bytes() }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Bytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Bytes::Heap(bytes) => bytes,
        }
    }
}

fn write_object(out: &mut Vec<u8>, object: Object) {
    match object {
        Object::Nexthop(n) => {
            out.push(NEXTHOP | family(n.gateway) | if n.onlink { ONLINK } else { 0 });
            out.extend_from_slice(&n.id.to_le_bytes());
            write_addr(out, n.gateway);
            out.extend_from_slice(&n.oif.to_le_bytes());
        }
        Object::Route(r) => {
            let mut tag = ROUTE | family(r.dst.addr());
            match r.target {
                RouteTarget::Nexthop(_) => tag |= VIA_NEXTHOP,
                RouteTarget::Gateway { gateway, onlink, .. } => {
                    tag |= if gateway.is_ipv6() { GATEWAY_V6 } else { 0 } | if onlink { ONLINK } else { 0 };
                }
            }
            out.push(tag);
            write_addr(out, r.dst.addr());
            out.push(r.dst.prefix_len());
            match r.target {
                RouteTarget::Nexthop(id) => out.extend_from_slice(&id.to_le_bytes()),
                RouteTarget::Gateway { gateway, oif, .. } => {
                    write_addr(out, gateway);
                    out.extend_from_slice(&oif.to_le_bytes());
                }
            }
        }
        Object::Neighbour(n) => {
            out.push(NEIGHBOUR | family(n.ip));
            out.extend_from_slice(&n.ifindex.to_le_bytes());
            write_addr(out, n.ip);
            out.extend_from_slice(&n.mac.0);
        }
        Object::Fdb(f) => {
            out.push(FDB | family(f.dst));
            out.extend_from_slice(&f.ifindex.to_le_bytes());
            out.extend_from_slice(&f.mac.0);
            write_addr(out, f.dst);
        }
    }
}

fn family(addr: IpAddr) -> u8 {
    if addr.is_ipv6() {
        V6
    } else {
        0
    }
}

fn write_addr(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

/// The objects of a [`PackedObjects`], unpacked one by one.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    rest: &'a [u8],
}

impl Iterator for Iter<'_> {
    type Item = Object;

    fn next(&mut self) -> Option<Object> {
        let (&tag, rest) = self.rest.split_first()?;
        self.rest = rest;
        let v6 = tag & V6 != 0;
        let onlink = tag & ONLINK != 0;
        Some(match tag & KIND_MASK {
            NEXTHOP => {
                let id = self.u32();
                let gateway = self.addr(v6);
                Object::Nexthop(NexthopSpec { id, gateway, oif: self.u32(), onlink })
            }
            ROUTE => {
                let addr = self.addr(v6);
                let prefix = self.byte();
                let dst = IpNet::new(addr, prefix).expect("packed from a valid prefix");
                let target = if tag & VIA_NEXTHOP != 0 {
                    RouteTarget::Nexthop(self.u32())
                } else {
                    let gateway = self.addr(tag & GATEWAY_V6 != 0);
                    RouteTarget::Gateway { gateway, oif: self.u32(), onlink }
                };
                Object::Route(RouteSpec { dst, target })
            }
            NEIGHBOUR => {
                let ifindex = self.u32();
                let ip = self.addr(v6);
                Object::Neighbour(NeighbourSpec { ifindex, ip, mac: self.mac() })
            }
            _ => {
                let ifindex = self.u32();
                let mac = self.mac();
                Object::Fdb(FdbSpec { ifindex, mac, dst: self.addr(v6) })
            }
        })
    }
}

impl Iter<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (bytes, rest) = self.rest.split_at(N);
        self.rest = rest;
        bytes.try_into().expect("split at N")
    }

    fn byte(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn mac(&mut self) -> MacAddr {
        MacAddr(self.take())
    }

    fn addr(&mut self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(self.take::<16>()))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.take::<4>()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Object> {
        let mac = MacAddr([0x02, 0, 0, 0, 0, 0x2a]);
        vec![
            Object::Nexthop(NexthopSpec { id: 7, gateway: "10.244.3.0".parse().unwrap(), oif: 4, onlink: true }),
            Object::Nexthop(NexthopSpec {
                id: 1 << 31,
                gateway: "2001:db8::3".parse().unwrap(),
                oif: 9,
                onlink: false,
            }),
            Object::Route(RouteSpec { dst: "10.244.3.0/24".parse().unwrap(), target: RouteTarget::Nexthop(7) }),
            Object::Route(RouteSpec {
                dst: "2001:db8:3::/64".parse().unwrap(),
                target: RouteTarget::Gateway { gateway: "2001:db8::3".parse().unwrap(), oif: 2, onlink: false },
            }),
            Object::Route(RouteSpec {
                dst: "10.244.4.0/24".parse().unwrap(),
                target: RouteTarget::Gateway { gateway: "198.51.100.4".parse().unwrap(), oif: 2, onlink: true },
            }),
            Object::Route(RouteSpec {
                dst: "10.244.5.0/24".parse().unwrap(),
                target: RouteTarget::Gateway { gateway: "2001:db8::5".parse().unwrap(), oif: 3, onlink: false },
            }),
            Object::Neighbour(NeighbourSpec { ifindex: 4, ip: "10.244.3.0".parse().unwrap(), mac }),
            Object::Neighbour(NeighbourSpec { ifindex: 5, ip: "2001:db8:3::".parse().unwrap(), mac }),
            Object::Fdb(FdbSpec { ifindex: 4, mac, dst: "198.51.100.3".parse().unwrap() }),
            Object::Fdb(FdbSpec { ifindex: u32::MAX, mac, dst: "2001:db8::3".parse().unwrap() }),
        ]
    }

    #[test]
    fn every_kind_of_object_comes_back_as_packed() {
        let objects = every_kind();
        let packed = PackedObjects::pack(objects.iter().copied());
        assert_eq!(packed.iter().collect::<Vec<_>>(), objects);
        // The iterator can be walked again from a clone (the diff walks it once per kind).
        let mut iter = packed.iter();
        iter.next();
        assert_eq!(iter.clone().count(), objects.len() - 1);
    }

    #[test]
    fn an_ipv4_vxlan_peer_packs_into_53_bytes() {
        let objects = &every_kind();
        let peer = [objects[0], objects[2], objects[6], objects[8]];
        let packed = PackedObjects::pack(peer.into_iter());
        assert_eq!(packed.bytes().len(), 53);
        assert!(matches!(packed.0, Bytes::Inline { len: 53, .. }), "kept in place");
        assert!(std::mem::size_of::<Object>() * peer.len() > 3 * packed.bytes().len());
        assert_eq!(std::mem::size_of::<PackedObjects>(), 56);
        assert!(PackedObjects::pack(std::iter::empty()).is_empty());
        assert_eq!(PackedObjects::pack(std::iter::empty()), PackedObjects::default());
    }

    #[test]
    fn more_than_fits_in_place_goes_to_the_heap_and_comes_back() {
        let objects = every_kind();
        let packed = PackedObjects::pack(objects.iter().copied());
        assert!(matches!(packed.0, Bytes::Heap(_)), "{} bytes", packed.bytes().len());
        assert_eq!(packed.iter().collect::<Vec<_>>(), objects);
    }
}
