//! Which peers' public IPs the kernel backends may point at. A lease is whatever someone wrote to
//! the store, and its `PublicIP` decides where vxlan sends a subnet's traffic (the FDB entry) and
//! which gateway host-gw routes it by: without this check one bad lease could send a subnet's
//! packets to ourselves, to a multicast group, to the cloud's metadata server or out of the
//! cluster. Pure; [`super::route_sync::RouteSync`] asks it before installing any peer.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a peer's public IP is not one to install anything towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Untrusted {
    /// 0.0.0.0.
    Unspecified,
    /// 127.0.0.0/8.
    Loopback,
    /// 224.0.0.0/4.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 0.0.0.0/8 ("this network") and 240.0.0.0/4: no host has them; IPv6: an IPv4-mapped or
    /// -compatible address, which names an IPv4 host.
    Reserved,
    /// 169.254.0.0/16 (IPv6: fe80::/10), valid on one link only (and the cloud's metadata server): refused unless
    /// `agent.underlay_cidrs` names it.
    LinkLocal,
    /// One of this host's own addresses, or its public IP.
    Own,
    /// Outside every `agent.underlay_cidrs`.
    OutsideUnderlay,
}

impl Untrusted {
    /// The `reason` label of `weft_peers_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Untrusted::Unspecified => "unspecified",
            Untrusted::Loopback => "loopback",
            Untrusted::Multicast => "multicast",
            Untrusted::Broadcast => "broadcast",
            Untrusted::Reserved => "reserved",
            Untrusted::LinkLocal => "link_local",
            Untrusted::Own => "own_address",
            Untrusted::OutsideUnderlay => "outside_underlay",
        }
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Untrusted::Unspecified => "the unspecified address",
            Untrusted::Loopback => "a loopback address",
            Untrusted::Multicast => "a multicast address",
            Untrusted::Broadcast => "the broadcast address",
            Untrusted::Reserved => "a reserved address no host has",
            Untrusted::LinkLocal => "a link-local address (not in agent.underlay_cidrs)",
            Untrusted::Own => "one of this host's own addresses",
            Untrusted::OutsideUnderlay => "outside agent.underlay_cidrs",
        })
    }
}

/// What a peer's public IP is checked against: this host's addresses and the underlay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTrust {
    own: Vec<IpAddr>,
    /// Empty: any unicast address that is not ours. A family without a network here is
    /// unrestricted too: naming IPv4 underlays does not forbid every IPv6 address.
    underlay: Vec<IpNet>,
}

impl PeerTrust {
    pub fn new<A: Into<IpAddr>>(own: impl IntoIterator<Item = A>, underlay: Vec<IpNet>) -> Self {
        PeerTrust { own: own.into_iter().map(Into::into).collect(), underlay }
    }

    /// Whether weft may install kernel objects that send traffic to `ip`.
    pub fn check(&self, ip: impl Into<IpAddr>) -> Result<(), Untrusted> {
        let ip = ip.into();
        // Asked for every peer on every pass: the underlay is walked, not copied.
        let mut same_family = self.underlay.iter().filter(|net| matches!(net, IpNet::V6(_)) == ip.is_ipv6()).peekable();
        let restricted = same_family.peek().is_some();
        let in_underlay = same_family.any(|net| net.contains(&ip));
        let refused = match ip {
            IpAddr::V4(ip) => refused_v4(ip, in_underlay),
            IpAddr::V6(ip) => refused_v6(ip, in_underlay),
        };
        let refused = refused.or_else(|| {
            if self.own.contains(&ip) {
                Some(Untrusted::Own)
            } else if restricted && !in_underlay {
                Some(Untrusted::OutsideUnderlay)
            } else {
                None
            }
        });
        refused.map_or(Ok(()), Err)
    }
}

/// What no IPv4 peer may announce, whoever we are.
fn refused_v4(ip: Ipv4Addr, in_underlay: bool) -> Option<Untrusted> {
    let [first, ..] = ip.octets();
    if ip.is_unspecified() {
        Some(Untrusted::Unspecified)
    } else if ip.is_broadcast() {
        Some(Untrusted::Broadcast)
    } else if ip.is_loopback() {
        Some(Untrusted::Loopback)
    } else if ip.is_multicast() {
        Some(Untrusted::Multicast)
    } else if first == 0 || first >= 240 {
        Some(Untrusted::Reserved)
    } else if ip.is_link_local() && !in_underlay {
        Some(Untrusted::LinkLocal)
    } else {
        None
    }
}

/// What no IPv6 peer may announce, whoever we are.
fn refused_v6(ip: Ipv6Addr, in_underlay: bool) -> Option<Untrusted> {
    let [first, ..] = ip.segments();
    if ip.is_unspecified() {
        Some(Untrusted::Unspecified)
    } else if ip.is_loopback() {
        Some(Untrusted::Loopback)
    } else if ip.is_multicast() {
        Some(Untrusted::Multicast)
    } else if ip.to_ipv4().is_some() {
        // ::ffff:a.b.c.d and ::a.b.c.d name IPv4 hosts through an IPv6 door.
        Some(Untrusted::Reserved)
    } else if first & 0xffc0 == 0xfe80 && !in_underlay {
        Some(Untrusted::LinkLocal)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn without_an_underlay_every_unicast_address_but_ours() {
        let trust = PeerTrust::new([ip("198.51.100.1"), ip("10.0.0.5")], Vec::new());
        let cases = [
            ("198.51.100.2", Ok(())),
            ("203.0.113.9", Ok(())),
            ("10.1.2.3", Ok(())),
            ("0.0.0.0", Err(Untrusted::Unspecified)),
            ("0.1.2.3", Err(Untrusted::Reserved)),
            ("127.0.0.1", Err(Untrusted::Loopback)),
            ("127.255.0.9", Err(Untrusted::Loopback)),
            ("224.0.0.1", Err(Untrusted::Multicast)),
            ("239.255.255.250", Err(Untrusted::Multicast)),
            ("255.255.255.255", Err(Untrusted::Broadcast)),
            ("240.0.0.1", Err(Untrusted::Reserved)),
            ("255.255.255.254", Err(Untrusted::Reserved)),
            ("169.254.169.254", Err(Untrusted::LinkLocal)),
            ("198.51.100.1", Err(Untrusted::Own)),
            ("10.0.0.5", Err(Untrusted::Own)),
        ];
        for (addr, want) in cases {
            assert_eq!(trust.check(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn with_an_underlay_only_addresses_inside_it() {
        let underlay = vec!["198.51.100.0/24".parse().unwrap(), "169.254.10.0/24".parse().unwrap()];
        let trust = PeerTrust::new([ip("198.51.100.1")], underlay);
        let cases = [
            ("198.51.100.2", Ok(())),
            ("198.51.100.255", Ok(())),
            // Named by the operator: a link-local underlay is theirs to choose.
            ("169.254.10.7", Ok(())),
            ("169.254.169.254", Err(Untrusted::LinkLocal)),
            ("203.0.113.9", Err(Untrusted::OutsideUnderlay)),
            ("198.51.100.1", Err(Untrusted::Own)),
            ("224.0.0.5", Err(Untrusted::Multicast)),
        ];
        for (addr, want) in cases {
            assert_eq!(trust.check(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn ipv6_peers_are_checked_alike() {
        let own: [IpAddr; 2] = ["198.51.100.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let trust = PeerTrust::new(own, vec!["198.51.100.0/24".parse().unwrap()]);
        let cases = [
            ("2001:db8::2", Ok(())),
            ("2001:db8::1", Err(Untrusted::Own)),
            ("::", Err(Untrusted::Unspecified)),
            ("::1", Err(Untrusted::Loopback)),
            ("ff02::1", Err(Untrusted::Multicast)),
            ("fe80::1", Err(Untrusted::LinkLocal)),
            ("::ffff:198.51.100.2", Err(Untrusted::Reserved)),
        ];
        for (addr, want) in cases {
            assert_eq!(trust.check(addr.parse::<IpAddr>().unwrap()), want, "{addr}");
        }
        // An IPv6 underlay binds IPv6 peers; the IPv4 one still binds IPv4 peers.
        let underlay = vec!["198.51.100.0/24".parse().unwrap(), "2001:db8:1::/64".parse().unwrap()];
        let trust = PeerTrust::new(own, underlay);
        assert_eq!(trust.check("2001:db8:1::9".parse::<IpAddr>().unwrap()), Ok(()));
        assert_eq!(trust.check("2001:db8:2::9".parse::<IpAddr>().unwrap()), Err(Untrusted::OutsideUnderlay));
        assert_eq!(trust.check(ip("203.0.113.9")), Err(Untrusted::OutsideUnderlay));
    }

    #[test]
    fn reasons_are_distinct_metric_labels() {
        let all = [
            Untrusted::Unspecified,
            Untrusted::Loopback,
            Untrusted::Multicast,
            Untrusted::Broadcast,
            Untrusted::Reserved,
            Untrusted::LinkLocal,
            Untrusted::Own,
            Untrusted::OutsideUnderlay,
        ];
        let labels: std::collections::BTreeSet<_> = all.iter().map(|u| u.reason()).collect();
        assert_eq!(labels.len(), all.len());
        assert!(labels.iter().all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }
}
