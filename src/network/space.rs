//! One family's subnets: the arithmetic and the validation shared by IPv4 and IPv6. An address
//! is a number (`u128` holds either family) and the `i`-th subnet is the network's address plus
//! `i` subnet sizes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{invalid, NetworkError};

/// Every subnet between `min` and `max` (inclusive) is `subnet_len` long and inside `network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetSpace {
    pub network: IpNet,
    pub subnet_len: u8,
    pub min: IpAddr,
    pub max: IpAddr,
}

/// The config keys a space is read from, for errors that name them.
pub struct SpaceKeys {
    pub cidr: &'static str,
    pub subnet_len: &'static str,
    pub subnet_min: &'static str,
    pub subnet_max: &'static str,
}

/// A space as the operator wrote it: strings and 0 for "flannel's default".
pub struct SpaceText<'a> {
    pub cidr: &'a str,
    pub subnet_len: u8,
    pub subnet_min: &'a str,
    pub subnet_max: &'a str,
}

/// The bounds of one family: the longest subnet that leaves a host room for pods, and the
/// default length's rule (flannel's).
struct FamilyRules {
    name: &'static str,
    example: &'static str,
    longest_subnet: u8,
    /// Networks up to this prefix get `usual_len` subnets; longer ones four subnets.
    usual_below: u8,
    usual_len: u8,
}

const IPV4: FamilyRules =
    FamilyRules { name: "IPv4", example: "10.244.0.0/16", longest_subnet: 28, usual_below: 22, usual_len: 24 };
const IPV6: FamilyRules =
    FamilyRules { name: "IPv6", example: "2001:db8:42::/56", longest_subnet: 124, usual_below: 62, usual_len: 64 };

fn rules(network: &IpNet) -> &'static FamilyRules {
    match network {
        IpNet::V4(_) => &IPV4,
        IpNet::V6(_) => &IPV6,
    }
}

/// flannel's default subnet length: a /24 (IPv6: /64) per host where the network leaves room
/// for one, otherwise four subnets.
pub fn default_subnet_len(network: IpNet) -> u8 {
    let rules = rules(&network);
    if network.prefix_len() <= rules.usual_below {
        rules.usual_len
    } else {
        network.prefix_len() + 2
    }
}

fn width(network: &IpNet) -> u8 {
    network.max_prefix_len()
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

fn addr_like(network: &IpNet, value: u128) -> IpAddr {
    match network {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

impl SubnetSpace {
    /// Validates one family's keys. `v6` says which family the keys are for: an address of the
    /// other one is an error naming the key.
    pub fn parse(keys: &SpaceKeys, text: &SpaceText<'_>, v6: bool) -> Result<SubnetSpace, NetworkError> {
        let family = if v6 { &IPV6 } else { &IPV4 };
        let not_cidr = || format!("not an {} CIDR such as {}", family.name, family.example);
        let parsed: IpNet = text.cidr.parse().map_err(|_| invalid(keys.cidr, text.cidr, not_cidr()))?;
        if matches!(parsed, IpNet::V6(_)) != v6 {
            return Err(invalid(keys.cidr, text.cidr, not_cidr()));
        }
        let network = parsed.trunc();
        if network != parsed {
            return Err(invalid(keys.cidr, text.cidr, format!("host bits set: did you mean {network}?")));
        }
        let subnet_len = match text.subnet_len {
            0 => default_subnet_len(network),
            len => len,
        };
        if subnet_len > width(&network) {
            return Err(invalid(keys.subnet_len, subnet_len, format!("longer than an {} address", family.name)));
        }
        if subnet_len < network.prefix_len() {
            let reason = format!("shorter than the network's prefix /{}", network.prefix_len());
            return Err(invalid(keys.subnet_len, subnet_len, reason));
        }
        if subnet_len > family.longest_subnet {
            let reason = format!("subnets smaller than /{} leave no room for a host", family.longest_subnet);
            return Err(invalid(keys.subnet_len, subnet_len, reason));
        }
        let mut space = SubnetSpace { network, subnet_len, min: network.network(), max: network.network() };
        let count = space.slots();
        // flannel skips the network's first subnet by default (its first address is the network's).
        let default_min = if count > 1 { space.subnet_at(1).network() } else { space.subnet_at(0).network() };
        space.min = space.parse_bound(keys.subnet_min, text.subnet_min, default_min, family)?;
        space.max =
            space.parse_bound(keys.subnet_max, text.subnet_max, space.subnet_at(count - 1).network(), family)?;
        if space.min > space.max {
            return Err(invalid(keys.subnet_min, space.min, format!("above {} {}", keys.subnet_max, space.max)));
        }
        Ok(space)
    }

    /// How many subnets of `subnet_len` the network holds, capped where a count stops meaning
    /// anything (an IPv6 /8 of /64s).
    fn slots(&self) -> u128 {
        1u128.checked_shl(u32::from(self.subnet_len - self.network.prefix_len())).unwrap_or(u128::MAX)
    }

    fn parse_bound(
        &self,
        key: &'static str,
        raw: &str,
        default: IpAddr,
        family: &FamilyRules,
    ) -> Result<IpAddr, NetworkError> {
        if raw.is_empty() {
            return Ok(default);
        }
        let addr: IpAddr = raw.parse().map_err(|_| invalid(key, raw, format!("not an {} address", family.name)))?;
        if addr.is_ipv6() != matches!(self.network, IpNet::V6(_)) {
            return Err(invalid(key, raw, format!("not an {} address", family.name)));
        }
        if !self.network.contains(&addr) {
            return Err(invalid(key, raw, format!("outside the network {}", self.network)));
        }
        let aligned = IpNet::new(addr, self.subnet_len).expect("a valid length").network();
        if aligned != addr {
            return Err(invalid(key, raw, format!("not on a /{} boundary (try {aligned})", self.subnet_len)));
        }
        Ok(addr)
    }

    /// The subnet `index` subnet sizes past the network's address.
    fn subnet_at(&self, index: u128) -> IpNet {
        let size = 1u128 << (width(&self.network) - self.subnet_len);
        let addr = bits(self.network.network()) + index * size;
        IpNet::new(addr_like(&self.network, addr), self.subnet_len).expect("subnet_len fits the family")
    }

    fn index_of(&self, addr: IpAddr) -> u128 {
        let offset = bits(addr) - bits(self.network.network());
        offset >> (width(&self.network) - self.subnet_len)
    }

    /// How many subnets lie between `min` and `max`, saturating (an IPv6 range can hold more
    /// than a `u64` counts; no cluster gets near either).
    pub fn subnet_count(&self) -> u64 {
        let count = self.index_of(self.max) - self.index_of(self.min) + 1;
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// The `i`-th subnet counting from `min`.
    pub fn nth_subnet(&self, i: u64) -> IpNet {
        self.subnet_at(self.index_of(self.min) + u128::from(i))
    }

    /// Where `subnet` lies counting from `min` (the inverse of [`SubnetSpace::nth_subnet`]), if
    /// it is in the allocation range.
    pub fn position(&self, subnet: &IpNet) -> Option<u64> {
        self.in_allocation_range(subnet)
            .then(|| u64::try_from(self.index_of(subnet.network()) - self.index_of(self.min)).ok())
            .flatten()
    }

    /// Whether `subnet` is one this space hands out: inside it, of the right length.
    pub fn contains_subnet(&self, subnet: &IpNet) -> bool {
        subnet.prefix_len() == self.subnet_len && self.network.contains(subnet)
    }

    /// Whether `subnet` lies between `min` and `max`, where new leases are allocated.
    pub fn in_allocation_range(&self, subnet: &IpNet) -> bool {
        self.contains_subnet(subnet) && subnet.network() >= self.min && subnet.network() <= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V6_KEYS: SpaceKeys = SpaceKeys {
        cidr: "network.ipv6_cidr",
        subnet_len: "network.ipv6_subnet_len",
        subnet_min: "network.ipv6_subnet_min",
        subnet_max: "network.ipv6_subnet_max",
    };

    fn v6(cidr: &str, len: u8, min: &str, max: &str) -> Result<SubnetSpace, NetworkError> {
        SubnetSpace::parse(&V6_KEYS, &SpaceText { cidr, subnet_len: len, subnet_min: min, subnet_max: max }, true)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_defaults_are_flannels() {
        let s = v6("2001:db8:42::/56", 0, "", "").unwrap();
        assert_eq!(s.subnet_len, 64);
        assert_eq!(s.min, "2001:db8:42:1::".parse::<IpAddr>().unwrap(), "the first subnet is skipped");
        assert_eq!(s.max, "2001:db8:42:ff::".parse::<IpAddr>().unwrap());
        assert_eq!(s.subnet_count(), 255);
        assert_eq!(s.nth_subnet(0), net("2001:db8:42:1::/64"));
        assert_eq!(s.nth_subnet(254), net("2001:db8:42:ff::/64"));
        assert_eq!(s.position(&net("2001:db8:42:ff::/64")), Some(254));
        assert_eq!(s.position(&net("2001:db8:42::/64")), None, "below the range");
        assert!(s.in_allocation_range(&net("2001:db8:42:7::/64")));
        assert!(!s.in_allocation_range(&net("2001:db8:42::/64")));
        assert!(s.contains_subnet(&net("2001:db8:42::/64")));
        assert!(!s.contains_subnet(&net("2001:db8:43::/64")));
        assert!(!s.contains_subnet(&net("2001:db8:42:7::/80")));
        // A small network: four subnets, as for IPv4.
        assert_eq!(v6("2001:db8::/120", 0, "", "").unwrap().subnet_len, 122);
    }

    #[test]
    fn huge_ipv6_ranges_saturate_instead_of_overflowing() {
        let s = v6("2001:db8::/32", 124, "", "").unwrap();
        assert_eq!(s.subnet_count(), u64::MAX);
        assert_eq!(s.nth_subnet(1), net("2001:db8::20/124"));
        let s = v6("::/0", 124, "", "").unwrap();
        assert_eq!(s.subnet_count(), u64::MAX);
        assert_eq!(s.nth_subnet(0), net("::10/124"));
    }

    #[test]
    fn an_explicit_ipv6_range_is_kept() {
        let s = v6("2001:db8:42::/48", 64, "2001:db8:42:10::", "2001:db8:42:12::").unwrap();
        assert_eq!(s.subnet_count(), 3);
        assert_eq!(s.nth_subnet(2), net("2001:db8:42:12::/64"));
    }

    #[test]
    fn bad_ipv6_input_names_the_key() {
        let cases = [
            (v6("10.244.0.0/16", 0, "", ""), "network.ipv6_cidr"),
            (v6("2001:db8::1/64", 0, "", ""), "network.ipv6_cidr"),
            (v6("banana", 0, "", ""), "network.ipv6_cidr"),
            (v6("2001:db8::/56", 129, "", ""), "network.ipv6_subnet_len"),
            (v6("2001:db8::/56", 48, "", ""), "network.ipv6_subnet_len"),
            (v6("2001:db8::/56", 127, "", ""), "network.ipv6_subnet_len"),
            (v6("2001:db8::/56", 64, "10.0.0.0", ""), "network.ipv6_subnet_min"),
            (v6("2001:db8::/56", 64, "2001:db9::", ""), "network.ipv6_subnet_min"),
            (v6("2001:db8::/56", 64, "2001:db8::1", ""), "network.ipv6_subnet_min"),
            (v6("2001:db8::/56", 64, "", "2001:db8::x"), "network.ipv6_subnet_max"),
            (v6("2001:db8::/56", 64, "2001:db8:0:9::", "2001:db8:0:8::"), "network.ipv6_subnet_min"),
        ];
        for (result, key) in cases {
            let err = result.unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }
}
