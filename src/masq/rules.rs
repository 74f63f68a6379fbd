//! Which masquerade rules weft wants, as plain data: no kernel types here, so the rules can be
//! built, compared with what the kernel holds, and tested without root.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The address family of a masquerade table. Each family has a table of its own (nftables `ip`
/// and `ip6` tables), with the same name and the same rules over its own addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// nftables' keyword for the family, as `nft` shows tables (`ip weft`, `ip6 weft`).
    pub fn nft_name(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// Multicast destinations are never masqueraded: the replies that make NAT work never come.
    pub fn multicast(self) -> IpNet {
        match self {
            Family::V4 => IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4)),
            Family::V6 => IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8)),
        }
    }

    /// Length of an address, in bytes.
    pub fn addr_len(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// Offset of a field in the network header, in bytes.
    pub fn offset(self, field: Field) -> u32 {
        match (self, field) {
            (Family::V4, Field::Source) => 12,
            (Family::V4, Field::Destination) => 16,
            (Family::V6, Field::Source) => 8,
            (Family::V6, Field::Destination) => 24,
        }
    }

    /// The field at `offset` with `len` bytes, if it is an address of this family.
    pub fn field_at(self, offset: u32, len: u32) -> Option<Field> {
        if len != self.addr_len() {
            return None;
        }
        [Field::Source, Field::Destination].into_iter().find(|field| self.offset(*field) == offset)
    }

    /// An address of this family from its bytes (network order).
    pub fn addr_from_bytes(self, bytes: &[u8]) -> Option<IpAddr> {
        match self {
            Family::V4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
            Family::V6 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.nft_name())
    }
}

/// Which address of the packet a match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Source,
    Destination,
}

/// `<family> saddr|daddr [!=] <net>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrMatch {
    pub field: Field,
    pub negated: bool,
    pub net: IpNet,
}

impl AddrMatch {
    pub fn source(net: IpNet) -> AddrMatch {
        AddrMatch { field: Field::Source, negated: false, net }
    }

    pub fn destination(net: IpNet) -> AddrMatch {
        AddrMatch { field: Field::Destination, negated: false, net }
    }
}

/// `!m` matches what `m` does not.
impl std::ops::Not for AddrMatch {
    type Output = AddrMatch;

    fn not(self) -> AddrMatch {
        AddrMatch { negated: !self.negated, ..self }
    }
}

impl fmt::Display for AddrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = Family::of(&self.net);
        let field = match self.field {
            Field::Source => "saddr",
            Field::Destination => "daddr",
        };
        let op = if self.negated { "!= " } else { "" };
        write!(f, "{family} {field} {op}{}", self.net)
    }
}

/// What a rule does with a packet that matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Leave the packet's source alone (stop looking at weft's rules).
    Return,
    /// Masquerade with a fully random source port, as flannel does (`--random-fully`): it avoids
    /// the port collisions that sequential port allocation causes under many parallel flows.
    Masquerade,
    /// Let the packet through this chain (weft's FORWARD rules, see `forward`).
    Accept,
}

/// One rule of weft's masquerade chain, or one of its FORWARD rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MasqRule {
    pub matches: Vec<AddrMatch>,
    pub action: Action,
    /// Kept in the rule (nftables userdata) so `nft list` tells whose rule it is and why.
    pub comment: String,
}

impl fmt::Display for MasqRule {
    /// Close to `nft list` syntax, for logs and assertion messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        match self.action {
            Action::Return => f.write_str("return")?,
            Action::Masquerade => f.write_str("masquerade fully-random")?,
            Action::Accept => f.write_str("accept")?,
        }
        write!(f, " comment {:?}", self.comment)
    }
}

/// flannel's masquerade rules for cluster network `network` and this host's subnet `own`, in
/// order (the first match wins). Both must be of one family and `own` inside `network`; the
/// caller ([`super::Masquerade::new`]) checks that.
pub fn masq_rules(network: IpNet, own: IpNet) -> Vec<MasqRule> {
    let family = Family::of(&network);
    let rule = |matches: Vec<AddrMatch>, action, comment: &str| MasqRule {
        matches,
        action,
        comment: format!("weft: {comment}"),
    };
    vec![
        rule(
            vec![AddrMatch::source(network), AddrMatch::destination(network)],
            Action::Return,
            "pod to pod keeps its source",
        ),
        // Before the last rule: a packet from outside (another host, a load balancer) to one of
        // this host's pods must keep its source, or the pod never sees its client.
        rule(
            vec![!AddrMatch::source(network), AddrMatch::destination(own)],
            Action::Return,
            "outside to own pods keeps its source",
        ),
        rule(
            vec![AddrMatch::source(network), !AddrMatch::destination(family.multicast())],
            Action::Masquerade,
            "pods to outside the network",
        ),
        // The host itself reaching a remote pod: its source (the host address) means nothing on
        // the overlay; the outgoing interface's address (e.g. flannel.1's) does.
        rule(
            vec![!AddrMatch::source(network), AddrMatch::destination(network)],
            Action::Masquerade,
            "host to remote pods",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// Which rule a packet hits, or None when it falls through the chain (accepted unchanged).
    fn first_match(rules: &[MasqRule], src: &str, dst: &str) -> Option<Action> {
        let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        rules
            .iter()
            .find(|rule| {
                rule.matches.iter().all(|m| {
                    let addr = match m.field {
                        Field::Source => src,
                        Field::Destination => dst,
                    };
                    m.net.contains(&addr) != m.negated
                })
            })
            .map(|rule| rule.action)
    }

    #[test]
    fn flannels_semantics_for_ipv4() {
        let rules = masq_rules(net("10.244.0.0/16"), net("10.244.3.0/24"));
        let cases = [
            ("10.244.3.5", "10.244.7.9", Some(Action::Return)), // pod → remote pod
            ("10.244.3.5", "10.244.3.6", Some(Action::Return)), // pod → local pod
            ("10.244.3.5", "224.0.0.251", None),                // pod → multicast
            ("10.244.3.5", "239.1.2.3", None),
            ("10.244.3.5", "203.0.113.7", Some(Action::Masquerade)), // pod → outside
            ("198.51.100.2", "10.244.3.5", Some(Action::Return)),    // outside → own pod
            ("198.51.100.2", "10.244.7.9", Some(Action::Masquerade)), // host → remote pod
            ("198.51.100.2", "203.0.113.7", None),                   // not the cluster's business
        ];
        for (src, dst, want) in cases {
            assert_eq!(first_match(&rules, src, dst), want, "{src} → {dst}");
        }
    }

    #[test]
    fn ipv6_uses_its_own_multicast_range() {
        let rules = masq_rules(net("fd00:10::/56"), net("fd00:10:0:3::/64"));
        assert_eq!(first_match(&rules, "fd00:10:0:3::5", "ff02::fb"), None);
        assert_eq!(first_match(&rules, "fd00:10:0:3::5", "2001:db8::1"), Some(Action::Masquerade));
        assert_eq!(first_match(&rules, "2001:db8::1", "fd00:10:0:3::5"), Some(Action::Return));
    }

    #[test]
    fn every_rule_is_commented_and_displays_like_nft() {
        let rules = masq_rules(net("10.244.0.0/16"), net("10.244.3.0/24"));
        assert!(rules.iter().all(|r| r.comment.starts_with("weft: ")));
        assert_eq!(
            rules[2].to_string(),
            "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random \
             comment \"weft: pods to outside the network\""
        );
    }

    #[test]
    fn fields_are_found_by_offset_and_length() {
        for family in [Family::V4, Family::V6] {
            for field in [Field::Source, Field::Destination] {
                let at = family.field_at(family.offset(field), family.addr_len());
                assert_eq!(at, Some(field));
            }
        }
        assert_eq!(Family::V4.field_at(12, 2), None);
        assert_eq!(Family::V4.field_at(9, 4), None);
    }
}
