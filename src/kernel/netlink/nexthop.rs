//! Nexthop objects (`RTM_NEWNEXTHOP` / `RTM_DELNEXTHOP` / `RTM_GETNEXTHOP`, kernel 5.3+).
//!
//! rtnetlink and netlink-packet-route have no messages for them, so this is the small subset weft
//! needs — `struct nhmsg` and the `NHA_*` attributes of `<linux/nexthop.h>` — on
//! netlink-packet-core's framing, so it can share a socket and a batch with the route messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable, Nla, NlaBuffer,
    NlasIterator, Parseable,
};

use crate::kernel::NexthopSpec;

pub const RTM_NEWNEXTHOP: u16 = 104;
pub const RTM_DELNEXTHOP: u16 = 105;
pub const RTM_GETNEXTHOP: u16 = 106;
/// Multicast group of nexthop notifications.
pub const RTNLGRP_NEXTHOP: u32 = 32;
/// `RTNH_F_ONLINK` in `nh_flags`: the gateway is on the device even without a matching prefix.
pub const RTNH_F_ONLINK: u32 = 4;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_FDB: u16 = 11;

/// `sizeof(struct nhmsg)`: family, scope, protocol, resvd (one byte each), then u32 flags.
pub const NHMSG_LEN: usize = 8;

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// `struct nhmsg`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NexthopHeader {
    pub family: u8,
    /// Filled by the kernel in dumps; must be 0 in requests.
    pub scope: u8,
    pub protocol: u8,
    pub flags: u32,
}

impl NexthopHeader {
    fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let raw = buf.get(..NHMSG_LEN).ok_or_else(|| DecodeError::buffer_too_small(buf.len(), NHMSG_LEN))?;
        Ok(NexthopHeader {
            family: raw[0],
            scope: raw[1],
            protocol: raw[2],
            flags: u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]),
        })
    }

    fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.family;
        buf[1] = self.scope;
        buf[2] = self.protocol;
        buf[3] = 0;
        buf[4..NHMSG_LEN].copy_from_slice(&self.flags.to_ne_bytes());
    }
}

/// The `NHA_*` attributes weft reads or writes; the rest are kept opaque.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NexthopAttribute {
    Id(u32),
    Oif(u32),
    Gateway(IpAddr),
    /// A group of nexthops (raw `struct nexthop_grp` array): not a single-path nexthop.
    Group(Vec<u8>),
    Blackhole,
    Fdb,
    Other(DefaultNla),
}

impl Nla for NexthopAttribute {
    fn value_len(&self) -> usize {
        match self {
            Self::Id(_) | Self::Oif(_) => 4,
            Self::Gateway(IpAddr::V4(_)) => 4,
            Self::Gateway(IpAddr::V6(_)) => 16,
            Self::Group(raw) => raw.len(),
            Self::Blackhole | Self::Fdb => 0,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Id(_) => NHA_ID,
            Self::Oif(_) => NHA_OIF,
            Self::Gateway(_) => NHA_GATEWAY,
            Self::Group(_) => NHA_GROUP,
            Self::Blackhole => NHA_BLACKHOLE,
            Self::Fdb => NHA_FDB,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            Self::Id(v) | Self::Oif(v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            // Addresses are in network byte order, as everywhere in netlink.
            Self::Gateway(IpAddr::V4(ip)) => buf[..4].copy_from_slice(&ip.octets()),
            Self::Gateway(IpAddr::V6(ip)) => buf[..16].copy_from_slice(&ip.octets()),
            Self::Group(raw) => buf[..raw.len()].copy_from_slice(raw),
            Self::Blackhole | Self::Fdb => {}
            Self::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl NexthopAttribute {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let value = nla.value();
        Ok(match nla.kind() {
            NHA_ID => Self::Id(parse_u32(value, "NHA_ID")?),
            NHA_OIF => Self::Oif(parse_u32(value, "NHA_OIF")?),
            NHA_GATEWAY => Self::Gateway(parse_ip(value)?),
            NHA_GROUP => Self::Group(value.to_vec()),
            NHA_BLACKHOLE => Self::Blackhole,
            NHA_FDB => Self::Fdb,
            _ => Self::Other(DefaultNla::parse(nla)?),
        })
    }
}

fn parse_u32(value: &[u8], what: &str) -> Result<u32, DecodeError> {
    let bytes: [u8; 4] =
        value.try_into().map_err(|_| DecodeError::from(format!("{what}: {} bytes, want 4", value.len())))?;
    Ok(u32::from_ne_bytes(bytes))
}

fn parse_ip(value: &[u8]) -> Result<IpAddr, DecodeError> {
    if let Ok(v4) = <[u8; 4]>::try_from(value) {
        return Ok(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(value) {
        return Ok(IpAddr::V6(Ipv6Addr::from(v6)));
    }
    Err(DecodeError::invalid_ip_address(value.len()))
}

/// One nexthop message: `struct nhmsg` and its attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NexthopMessage {
    pub header: NexthopHeader,
    pub attributes: Vec<NexthopAttribute>,
}

impl NexthopMessage {
    /// `ip nexthop replace id <id> via <gw> dev <oif> [onlink] proto <protocol>`.
    pub fn put(spec: &NexthopSpec, protocol: u8) -> Self {
        NexthopMessage {
            header: NexthopHeader {
                family: family_of(spec.gateway),
                scope: 0,
                protocol,
                flags: if spec.onlink { RTNH_F_ONLINK } else { 0 },
            },
            attributes: vec![
                NexthopAttribute::Id(spec.id),
                NexthopAttribute::Gateway(spec.gateway),
                NexthopAttribute::Oif(spec.oif),
            ],
        }
    }

    /// `ip nexthop del id <id>`: the kernel rejects a delete whose header is not all zero.
    pub fn delete(id: u32) -> Self {
        NexthopMessage { header: NexthopHeader::default(), attributes: vec![NexthopAttribute::Id(id)] }
    }

    /// A dump request for every nexthop (the header doubles as the filter: all zero = all).
    pub fn dump() -> Self {
        NexthopMessage::default()
    }

    pub fn id(&self) -> Option<u32> {
        self.attributes.iter().find_map(|a| match a {
            NexthopAttribute::Id(id) => Some(*id),
            _ => None,
        })
    }

    /// The nexthop as weft models it: a single gateway (of the nexthop's family) on a device.
    /// Groups, blackholes, FDB nexthops and family-less ones are something else and yield `None`.
    pub fn to_spec(&self) -> Option<NexthopSpec> {
        if self.header.family != AF_INET && self.header.family != AF_INET6 {
            return None;
        }
        let (mut id, mut gateway, mut oif) = (None, None, None);
        for attribute in &self.attributes {
            match attribute {
                NexthopAttribute::Id(v) => id = Some(*v),
                NexthopAttribute::Oif(v) => oif = Some(*v),
                NexthopAttribute::Gateway(ip) if family_of(*ip) == self.header.family => gateway = Some(*ip),
                NexthopAttribute::Gateway(_)
                | NexthopAttribute::Group(_)
                | NexthopAttribute::Blackhole
                | NexthopAttribute::Fdb => return None,
                NexthopAttribute::Other(_) => {}
            }
        }
        Some(NexthopSpec { id: id?, gateway: gateway?, oif: oif?, onlink: self.header.flags & RTNH_F_ONLINK != 0 })
    }

    /// Parses the payload of a nexthop message (after the netlink header).
    pub fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let header = NexthopHeader::parse(buf)?;
        let mut attributes = Vec::new();
        for nla in NlasIterator::new(&buf[NHMSG_LEN..]) {
            attributes.push(NexthopAttribute::parse(&nla?)?);
        }
        Ok(NexthopMessage { header, attributes })
    }
}

impl Emitable for NexthopMessage {
    fn buffer_len(&self) -> usize {
        NHMSG_LEN + self.attributes.as_slice().buffer_len()
    }

    fn emit(&self, buf: &mut [u8]) {
        self.header.emit(buf);
        self.attributes.as_slice().emit(&mut buf[NHMSG_LEN..]);
    }
}

/// The nexthop messages as a netlink protocol payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NexthopNetlinkMessage {
    New(NexthopMessage),
    Del(NexthopMessage),
    Get(NexthopMessage),
}

impl NexthopNetlinkMessage {
    pub fn message(&self) -> &NexthopMessage {
        match self {
            Self::New(m) | Self::Del(m) | Self::Get(m) => m,
        }
    }
}

impl NetlinkSerializable for NexthopNetlinkMessage {
    fn message_type(&self) -> u16 {
        match self {
            Self::New(_) => RTM_NEWNEXTHOP,
            Self::Del(_) => RTM_DELNEXTHOP,
            Self::Get(_) => RTM_GETNEXTHOP,
        }
    }

    fn buffer_len(&self) -> usize {
        self.message().buffer_len()
    }

    fn serialize(&self, buf: &mut [u8]) {
        self.message().emit(buf)
    }
}

impl NetlinkDeserializable for NexthopNetlinkMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        let message = NexthopMessage::parse(payload)?;
        match header.message_type {
            RTM_NEWNEXTHOP => Ok(Self::New(message)),
            RTM_DELNEXTHOP => Ok(Self::Del(message)),
            RTM_GETNEXTHOP => Ok(Self::Get(message)),
            other => Err(format!("message type {other} is not a nexthop message").into()),
        }
    }
}

impl From<NexthopNetlinkMessage> for netlink_packet_core::NetlinkPayload<NexthopNetlinkMessage> {
    fn from(message: NexthopNetlinkMessage) -> Self {
        netlink_packet_core::NetlinkPayload::InnerMessage(message)
    }
}

/// The nexthop family (`nh_family`) of a gateway.
fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};

    use super::*;

    fn frame(message: NexthopNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
        let mut nl = NetlinkMessage::from(message);
        nl.header.flags = flags;
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        buf
    }

    #[test]
    fn put_matches_the_uapi_layout() {
        let spec = NexthopSpec { id: 7, gateway: Ipv4Addr::new(10, 244, 3, 0).into(), oif: 5, onlink: true };
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let bytes = frame(NexthopNetlinkMessage::New(NexthopMessage::put(&spec, 87)), flags, 9);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            // struct nlmsghdr: len 48, type 104, flags 0x0505, seq 9, pid 0
            &48u32.to_ne_bytes()[..], &104u16.to_ne_bytes(), &0x0505u16.to_ne_bytes(),
            &9u32.to_ne_bytes(), &0u32.to_ne_bytes(),
            // struct nhmsg: AF_INET, scope 0, protocol 87, resvd, flags RTNH_F_ONLINK
            &[2, 0, 87, 0], &4u32.to_ne_bytes(),
            // NHA_ID (1) = 7
            &8u16.to_ne_bytes(), &1u16.to_ne_bytes(), &7u32.to_ne_bytes(),
            // NHA_GATEWAY (6) = 10.244.3.0, network order
            &8u16.to_ne_bytes(), &6u16.to_ne_bytes(), &[10, 244, 3, 0],
            // NHA_OIF (5) = 5
            &8u16.to_ne_bytes(), &5u16.to_ne_bytes(), &5u32.to_ne_bytes(),
        ]
        .concat();
        assert_eq!(bytes, want);
    }

    #[test]
    fn delete_has_an_all_zero_header() {
        let bytes = frame(NexthopNetlinkMessage::Del(NexthopMessage::delete(3)), 0x5, 1);
        assert_eq!(bytes.len(), 16 + NHMSG_LEN + 8);
        assert_eq!(&bytes[4..6], &RTM_DELNEXTHOP.to_ne_bytes());
        assert_eq!(&bytes[16..24], &[0; 8]);
        assert_eq!(&bytes[26..28], &NHA_ID.to_ne_bytes());
        assert_eq!(&bytes[28..32], &3u32.to_ne_bytes());
    }

    #[test]
    fn dump_request_is_a_bare_nhmsg() {
        let bytes = frame(NexthopNetlinkMessage::Get(NexthopMessage::dump()), 0x301, 2);
        assert_eq!(bytes.len(), 16 + NHMSG_LEN);
        assert_eq!(&bytes[4..6], &RTM_GETNEXTHOP.to_ne_bytes());
    }

    /// A dump as the kernel sends it: one single-path nexthop (with scope link filled in, as
    /// the kernel does for onlink), one group, one IPv6 and one blackhole.
    fn kernel_dump() -> Vec<u8> {
        let single = NexthopMessage {
            header: NexthopHeader { family: AF_INET, scope: 253, protocol: 87, flags: RTNH_F_ONLINK },
            attributes: vec![
                NexthopAttribute::Id(1),
                NexthopAttribute::Gateway(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 0))),
                NexthopAttribute::Oif(5),
                NexthopAttribute::Other(DefaultNla::new(99, vec![1, 2, 3])),
            ],
        };
        let group = NexthopMessage {
            header: NexthopHeader { family: 0, protocol: 87, ..Default::default() },
            attributes: vec![NexthopAttribute::Id(2), NexthopAttribute::Group(vec![1, 0, 0, 0, 0, 0, 0, 0])],
        };
        let v6 = NexthopMessage {
            header: NexthopHeader { family: AF_INET6, protocol: 87, ..Default::default() },
            attributes: vec![
                NexthopAttribute::Id(3),
                NexthopAttribute::Gateway("2001:db8::1".parse().unwrap()),
                NexthopAttribute::Oif(5),
            ],
        };
        let blackhole = NexthopMessage {
            header: NexthopHeader { family: AF_INET, ..Default::default() },
            attributes: vec![NexthopAttribute::Id(4), NexthopAttribute::Blackhole],
        };
        [single, group, v6, blackhole].into_iter().flat_map(|m| frame(NexthopNetlinkMessage::New(m), 0x2, 1)).collect()
    }

    #[test]
    fn decodes_a_dump() {
        let dump = kernel_dump();
        let mut offset = 0;
        let mut specs = Vec::new();
        let mut ids = Vec::new();
        while offset < dump.len() {
            let nl = NetlinkMessage::<NexthopNetlinkMessage>::deserialize(&dump[offset..]).unwrap();
            offset += nl.header.length as usize;
            let netlink_packet_core::NetlinkPayload::InnerMessage(NexthopNetlinkMessage::New(m)) = nl.payload else {
                panic!("not a RTM_NEWNEXTHOP: {nl:?}");
            };
            ids.push(m.id().unwrap());
            specs.extend(m.to_spec());
        }
        assert_eq!(ids, [1, 2, 3, 4]);
        assert_eq!(
            specs,
            [
                NexthopSpec { id: 1, gateway: Ipv4Addr::new(10, 244, 1, 0).into(), oif: 5, onlink: true },
                NexthopSpec { id: 3, gateway: "2001:db8::1".parse().unwrap(), oif: 5, onlink: false },
            ]
        );
    }

    #[test]
    fn round_trips() {
        let message = NexthopMessage::put(
            &NexthopSpec { id: 42, gateway: Ipv4Addr::new(192, 0, 2, 1).into(), oif: 3, onlink: false },
            87,
        );
        let bytes = frame(NexthopNetlinkMessage::New(message.clone()), 0x1, 1);
        let nl = NetlinkMessage::<NexthopNetlinkMessage>::deserialize(&bytes).unwrap();
        assert_eq!(nl.payload, netlink_packet_core::NetlinkPayload::InnerMessage(NexthopNetlinkMessage::New(message)));
    }

    #[test]
    fn ipv6_put_round_trips_to_its_spec() {
        let spec = NexthopSpec { id: 0x8000_0042, gateway: "2001:db8:1::".parse().unwrap(), oif: 3, onlink: true };
        let message = NexthopMessage::put(&spec, 87);
        assert_eq!(message.header.family, AF_INET6);
        let bytes = frame(NexthopNetlinkMessage::New(message), 0x1, 1);
        let nl = NetlinkMessage::<NexthopNetlinkMessage>::deserialize(&bytes).unwrap();
        let netlink_packet_core::NetlinkPayload::InnerMessage(NexthopNetlinkMessage::New(m)) = nl.payload else {
            panic!("not a RTM_NEWNEXTHOP: {nl:?}");
        };
        assert_eq!(m.to_spec(), Some(spec));
        // A gateway of the other family than the header's is not modelled.
        let mut mixed = m.clone();
        mixed.header.family = AF_INET;
        assert_eq!(mixed.to_spec(), None);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        assert!(NexthopMessage::parse(&[2, 0, 87]).is_err());
        let mut bytes = NexthopMessage::delete(1);
        bytes.attributes.clear();
        let mut buf = vec![0; NHMSG_LEN + 6];
        bytes.emit(&mut buf[..NHMSG_LEN]);
        // An attribute header that claims more than there is.
        buf[NHMSG_LEN..NHMSG_LEN + 4].copy_from_slice(&[40, 0, 1, 0]);
        assert!(NexthopMessage::parse(&buf).is_err());
    }
}
