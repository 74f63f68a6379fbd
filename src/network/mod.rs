//! The cluster network: flannel's JSON config in the store, the `[network]` table of weft.toml,
//! validation into a typed [`Network`], and the subnet arithmetic over it.

use std::ops::RangeInclusive;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub mod backend;
pub mod import;
pub mod space;

use crate::lease::LeaseKey;
use backend::BackendConfig;
pub use space::SubnetSpace;
use space::{SpaceKeys, SpaceText};

const IPV4_KEYS: SpaceKeys = SpaceKeys {
    cidr: "network.cidr",
    subnet_len: "network.subnet_len",
    subnet_min: "network.subnet_min",
    subnet_max: "network.subnet_max",
};

const IPV6_KEYS: SpaceKeys = SpaceKeys {
    cidr: "network.ipv6_cidr",
    subnet_len: "network.ipv6_subnet_len",
    subnet_min: "network.ipv6_subnet_min",
    subnet_max: "network.ipv6_subnet_max",
};

/// The `[network]` table as written by the operator: strings are validated by [`Network::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    pub cidr: String,
    /// 0: flannel's default for the network's size.
    pub subnet_len: u8,
    pub subnet_min: String,
    pub subnet_max: String,
    /// false: no IPv4 subnets, an IPv6-only cluster (`cidr` and the other IPv4 keys are not
    /// read then).
    pub enable_ipv4: bool,
    /// The IPv6 network ("": IPv4 only). Set, every host also leases an IPv6 subnet.
    pub ipv6_cidr: String,
    /// 0: flannel's default, /64 where the network leaves room for one.
    pub ipv6_subnet_len: u8,
    pub ipv6_subnet_min: String,
    pub ipv6_subnet_max: String,
    pub backend: BackendConfig,
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            cidr: "10.244.0.0/16".into(),
            subnet_len: 0,
            subnet_min: String::new(),
            subnet_max: String::new(),
            enable_ipv4: true,
            ipv6_cidr: String::new(),
            ipv6_subnet_len: 0,
            ipv6_subnet_min: String::new(),
            ipv6_subnet_max: String::new(),
            backend: BackendConfig::default(),
        }
    }
}

/// A validated cluster network: one [`SubnetSpace`] per family it runs, IPv4, IPv6 or both
/// (never neither).
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// The IPv4 subnets; `None` in an IPv6-only network.
    pub ipv4: Option<SubnetSpace>,
    /// The IPv6 subnets, in a dual-stack or IPv6-only network.
    pub ipv6: Option<SubnetSpace>,
    pub backend: BackendConfig,
}

/// The address families a network runs: what a backend makes devices, routes and forwarding
/// for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl Families {
    pub const IPV4: Families = Families { ipv4: true, ipv6: false };
    pub const DUAL_STACK: Families = Families { ipv4: true, ipv6: true };
    pub const IPV6: Families = Families { ipv4: false, ipv6: true };

    /// Each family that is on, IPv4 first.
    pub fn each(self) -> impl Iterator<Item = crate::kernel::IpFamily> {
        use crate::kernel::IpFamily;
        [(self.ipv4, IpFamily::V4), (self.ipv6, IpFamily::V6)]
            .into_iter()
            .filter_map(|(on, family)| on.then_some(family))
    }
}

/// A change of the network's shape: a family's CIDR or subnet length, or IPv6 turned on or off.
/// Leases taken in the old shape may not fit the new one, so a reshape cannot apply while hosts
/// hold leases. Each side in words: `10.244.0.0/16 (/24 subnets)`, then the IPv6 one if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reshape {
    pub from: String,
    pub to: String,
}

impl std::fmt::Display for Reshape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "from {} to {}", self.from, self.to)
    }
}

/// A network config that cannot be used; names the key and the value.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{key} = {value:?}: {reason}")]
pub struct NetworkError {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
}

pub(crate) fn invalid(key: &'static str, value: impl ToString, reason: impl Into<String>) -> NetworkError {
    NetworkError { key, value: value.to_string(), reason: reason.into() }
}

/// `value` of `key` if inside `range`: a duration read from a file or the store is bounded where
/// it is read, so no timer or TTL made from it later can overflow (`Instant + d` panics).
pub fn bounded_duration(
    key: &'static str,
    value: Duration,
    range: RangeInclusive<Duration>,
) -> Result<Duration, NetworkError> {
    if range.contains(&value) {
        return Ok(value);
    }
    let (min, max) = (humantime::format_duration(*range.start()), humantime::format_duration(*range.end()));
    Err(invalid(key, humantime::format_duration(value), format!("must be between {min} and {max}")))
}

/// flannel's default subnet length: a /24 per host where the network is /22 or larger,
/// otherwise four subnets.
pub fn default_subnet_len(network: Ipv4Net) -> u8 {
    space::default_subnet_len(network.into())
}

impl Network {
    pub fn new(section: &NetworkSection) -> Result<Network, NetworkError> {
        if !section.enable_ipv4 && section.ipv6_cidr.is_empty() {
            let reason = "with no network.ipv6_cidr either, no family is left";
            return Err(invalid("network.enable_ipv4", false, reason));
        }
        // IPv6-only: the IPv4 keys are not read, as flannel does not read `Network` then.
        let ipv4 = section
            .enable_ipv4
            .then(|| {
                let text = SpaceText {
                    cidr: &section.cidr,
                    subnet_len: section.subnet_len,
                    subnet_min: &section.subnet_min,
                    subnet_max: &section.subnet_max,
                };
                SubnetSpace::parse(&IPV4_KEYS, &text, false)
            })
            .transpose()?;
        let ipv6 = if section.ipv6_cidr.is_empty() {
            for (key, set) in [
                ("network.ipv6_subnet_len", section.ipv6_subnet_len != 0),
                ("network.ipv6_subnet_min", !section.ipv6_subnet_min.is_empty()),
                ("network.ipv6_subnet_max", !section.ipv6_subnet_max.is_empty()),
            ] {
                if set {
                    return Err(invalid(key, "(set)", "needs network.ipv6_cidr"));
                }
            }
            None
        } else {
            let text = SpaceText {
                cidr: &section.ipv6_cidr,
                subnet_len: section.ipv6_subnet_len,
                subnet_min: &section.ipv6_subnet_min,
                subnet_max: &section.ipv6_subnet_max,
            };
            Some(SubnetSpace::parse(&IPV6_KEYS, &text, true)?)
        };
        section.backend.check()?;
        Ok(Network { ipv4, ipv6, backend: section.backend.clone() })
    }

    /// The space whose subnets name the leases ([`crate::lease::LeaseKey::id`]): IPv4 where the
    /// network has it, else IPv6.
    pub fn lease_space(&self) -> &SubnetSpace {
        self.ipv4.as_ref().or(self.ipv6.as_ref()).expect("a network has at least one family")
    }

    /// The families the network runs.
    pub fn families(&self) -> Families {
        Families { ipv4: self.ipv4.is_some(), ipv6: self.ipv6.is_some() }
    }

    /// Whether the network has no IPv4 subnets.
    pub fn is_ipv6_only(&self) -> bool {
        self.ipv4.is_none()
    }

    /// How many leases the network holds: the subnets of the leases' naming family between its
    /// `subnet_min` and `subnet_max`.
    pub fn subnet_count(&self) -> u64 {
        self.lease_space().subnet_count()
    }

    /// The `i`-th lease's naming subnet, counting from `subnet_min`.
    pub fn nth_subnet(&self, i: u64) -> IpNet {
        self.lease_space().nth_subnet(i)
    }

    /// Whether a lease's key has exactly the network's families, each subnet inside its
    /// family's network and of its length. A lease outside the network is never installed.
    pub fn fits(&self, key: &LeaseKey) -> bool {
        fn fits_space(space: Option<&SubnetSpace>, subnet: Option<IpNet>) -> bool {
            match (space, subnet) {
                (None, None) => true,
                (Some(space), Some(subnet)) => space.contains_subnet(&subnet),
                _ => false,
            }
        }
        fits_space(self.ipv4.as_ref(), key.subnet.map(IpNet::V4))
            && fits_space(self.ipv6.as_ref(), key.subnet_v6.map(IpNet::V6))
    }

    /// The network's subnet spaces, IPv4 first.
    pub fn spaces(&self) -> impl Iterator<Item = SubnetSpace> {
        [self.ipv4, self.ipv6].into_iter().flatten()
    }

    /// The subnet space of `subnet`'s family, if the network has that family.
    pub fn space_of(&self, subnet: &IpNet) -> Option<SubnetSpace> {
        self.spaces().find(|space| space.network.addr().is_ipv4() == subnet.addr().is_ipv4())
    }

    /// Whether `destination` lies inside the network of its family: a route there is the
    /// cluster's business, whatever its length.
    pub fn covers(&self, destination: &IpNet) -> bool {
        self.spaces().any(|space| space.network.contains(destination))
    }

    /// Whether `destination` is shaped as a lease of either family: inside the network of its
    /// family, of that family's subnet length (what a host route of weft or flannel is).
    pub fn is_lease_sized(&self, destination: &IpNet) -> bool {
        self.spaces().any(|space| space.contains_subnet(destination))
    }

    /// The IPv4 network, unless the network is IPv6-only.
    pub fn ipv4_network(&self) -> Option<Ipv4Net> {
        match self.ipv4?.network {
            IpNet::V4(net) => Some(net),
            IpNet::V6(_) => None,
        }
    }

    /// The IPv6 network of a dual-stack or IPv6-only network.
    pub fn ipv6_network(&self) -> Option<Ipv6Net> {
        match self.ipv6?.network {
            IpNet::V6(net) => Some(net),
            IpNet::V4(_) => None,
        }
    }

    /// The networks of both families, IPv4 first.
    pub fn networks(&self) -> impl Iterator<Item = IpNet> {
        self.spaces().map(|space| space.network)
    }

    pub fn section(&self) -> NetworkSection {
        let (v4, v6) = (self.ipv4.as_ref(), self.ipv6.as_ref());
        NetworkSection {
            cidr: v4.map(|s| s.network.to_string()).unwrap_or_default(),
            subnet_len: v4.map_or(0, |s| s.subnet_len),
            subnet_min: v4.map(|s| s.min.to_string()).unwrap_or_default(),
            subnet_max: v4.map(|s| s.max.to_string()).unwrap_or_default(),
            enable_ipv4: v4.is_some(),
            ipv6_cidr: v6.map(|s| s.network.to_string()).unwrap_or_default(),
            ipv6_subnet_len: v6.map_or(0, |s| s.subnet_len),
            ipv6_subnet_min: v6.map(|s| s.min.to_string()).unwrap_or_default(),
            ipv6_subnet_max: v6.map(|s| s.max.to_string()).unwrap_or_default(),
            backend: self.backend.clone(),
        }
    }
}

/// The network's CIDRs, IPv4 first: `10.244.0.0/16`, `10.244.0.0/16 and 2001:db8:42::/56`.
impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cidrs: Vec<String> = self.networks().map(|n| n.to_string()).collect();
        f.write_str(&cidrs.join(" and "))
    }
}

// ---- flannel's JSON -------------------------------------------------------------------------

/// The network config exactly as flannel keeps it at `<prefix>/config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FlannelNetworkJson {
    /// Absent in an IPv6-only network.
    #[serde(rename = "Network", default, skip_serializing_if = "String::is_empty")]
    network: String,
    #[serde(rename = "SubnetLen", default, skip_serializing_if = "is_zero")]
    subnet_len: u8,
    #[serde(rename = "SubnetMin", default, skip_serializing_if = "String::is_empty")]
    subnet_min: String,
    #[serde(rename = "SubnetMax", default, skip_serializing_if = "String::is_empty")]
    subnet_max: String,
    /// Absent: true, as flannel reads it.
    #[serde(rename = "EnableIPv4", default, skip_serializing_if = "Option::is_none")]
    enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6", default, skip_serializing_if = "is_false")]
    enable_ipv6: bool,
    #[serde(rename = "IPv6Network", default, skip_serializing_if = "String::is_empty")]
    ipv6_network: String,
    #[serde(rename = "IPv6SubnetLen", default, skip_serializing_if = "is_zero")]
    ipv6_subnet_len: u8,
    #[serde(rename = "IPv6SubnetMin", default, skip_serializing_if = "String::is_empty")]
    ipv6_subnet_min: String,
    #[serde(rename = "IPv6SubnetMax", default, skip_serializing_if = "String::is_empty")]
    ipv6_subnet_max: String,
    #[serde(rename = "Backend", default)]
    backend: serde_json::Value,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The stored config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoredConfigError {
    #[error("network config in the store is not valid JSON: {0}")]
    Json(String),
    #[error("network config in the store: {0}")]
    Invalid(#[from] NetworkError),
}

impl Network {
    /// How this network reshapes `old`, if it does: another CIDR or subnet length. The subnet
    /// range and the backend can change live; these cannot.
    pub fn reshape_from(&self, old: &Network) -> Option<Reshape> {
        (self.shape() != old.shape()).then(|| Reshape { from: old.shape(), to: self.shape() })
    }

    /// The network's shape in words: each family's CIDR and subnet length.
    fn shape(&self) -> String {
        let shapes: Vec<String> =
            self.spaces().map(|space| format!("{} (/{} subnets)", space.network, space.subnet_len)).collect();
        shapes.join(" and ")
    }

    /// flannel's JSON for this network, as `weft network apply` publishes it.
    pub fn to_flannel_json(&self) -> String {
        let (v4, v6) = (self.ipv4.as_ref(), self.ipv6.as_ref());
        let json = FlannelNetworkJson {
            network: v4.map(|s| s.network.to_string()).unwrap_or_default(),
            subnet_len: v4.map_or(0, |s| s.subnet_len),
            subnet_min: v4.map(|s| s.min.to_string()).unwrap_or_default(),
            subnet_max: v4.map(|s| s.max.to_string()).unwrap_or_default(),
            // flannel reads an absent EnableIPv4 as true: said only to turn IPv4 off.
            enable_ipv4: v4.is_none().then_some(false),
            enable_ipv6: v6.is_some(),
            ipv6_network: v6.map(|s| s.network.to_string()).unwrap_or_default(),
            ipv6_subnet_len: v6.map_or(0, |s| s.subnet_len),
            ipv6_subnet_min: v6.map(|s| s.min.to_string()).unwrap_or_default(),
            ipv6_subnet_max: v6.map(|s| s.max.to_string()).unwrap_or_default(),
            backend: self.backend.to_flannel_json(),
        };
        serde_json::to_string(&json).expect("network config always serializes")
    }

    /// Reads flannel's JSON (as written by flannel's users or by weft). Unknown keys are returned
    /// so the caller can warn about them; flannel ignores them too.
    pub fn from_flannel_json(text: &str) -> Result<(Network, Vec<String>), StoredConfigError> {
        let json: FlannelNetworkJson =
            serde_json::from_str(text).map_err(|e| StoredConfigError::Json(e.to_string()))?;
        let (backend, ignored) = BackendConfig::from_flannel_json(&json.backend)
            .map_err(|reason| invalid("Backend", &json.backend, reason))?;
        // flannel reads the IPv6 keys only when EnableIPv6 says so.
        let v6 = |value: String| if json.enable_ipv6 { value } else { String::new() };
        let section = NetworkSection {
            cidr: json.network,
            subnet_len: json.subnet_len,
            subnet_min: json.subnet_min,
            subnet_max: json.subnet_max,
            enable_ipv4: json.enable_ipv4.unwrap_or(true),
            ipv6_subnet_len: if json.enable_ipv6 { json.ipv6_subnet_len } else { 0 },
            ipv6_subnet_min: v6(json.ipv6_subnet_min),
            ipv6_subnet_max: v6(json.ipv6_subnet_max),
            ipv6_cidr: v6(json.ipv6_network),
            backend,
        };
        if json.enable_ipv6 && section.ipv6_cidr.is_empty() {
            return Err(invalid("IPv6Network", "", "EnableIPv6 is true: the IPv6 network is needed").into());
        }
        Ok((Network::new(&section)?, ignored))
    }
}

/// A dual-stack host-gw network for tests: 10.244.0.0/16 and 2001:db8:42::/56.
#[cfg(test)]
pub(crate) fn dual_stack_for_tests() -> Network {
    let section = NetworkSection {
        cidr: "10.244.0.0/16".into(),
        ipv6_cidr: "2001:db8:42::/56".into(),
        backend: BackendConfig::HostGw(backend::NoOptions {}),
        ..Default::default()
    };
    Network::new(&section).expect("a valid network")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn section(cidr: &str) -> NetworkSection {
        NetworkSection { cidr: cidr.into(), ..NetworkSection::default() }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn only_the_cidr_or_the_subnet_length_reshape() {
        let old = Network::new(&section("10.244.0.0/16")).unwrap();
        let ranged =
            Network::new(&NetworkSection { subnet_min: "10.244.9.0".into(), ..section("10.244.0.0/16") }).unwrap();
        assert_eq!(ranged.reshape_from(&old), None);
        let mut other_backend = old.clone();
        other_backend.backend = BackendConfig::HostGw(backend::NoOptions {});
        assert_eq!(other_backend.reshape_from(&old), None);

        let wider = Network::new(&section("10.0.0.0/8")).unwrap();
        let reshape = wider.reshape_from(&old).unwrap();
        assert_eq!(reshape.to_string(), "from 10.244.0.0/16 (/24 subnets) to 10.0.0.0/8 (/24 subnets)");
        let longer = Network::new(&NetworkSection { subnet_len: 26, ..section("10.244.0.0/16") }).unwrap();
        let reshape = longer.reshape_from(&old).unwrap();
        assert_eq!(reshape.to, "10.244.0.0/16 (/26 subnets)");
        let dual = Network::new(&dual_stack()).unwrap();
        assert_eq!(
            dual.reshape_from(&old).unwrap().to_string(),
            "from 10.244.0.0/16 (/24 subnets) to 10.244.0.0/16 (/24 subnets) and 2001:db8:42::/56 (/64 subnets)"
        );
    }

    #[test]
    fn flannel_defaults_a_24_per_host_or_four_subnets() {
        // cidr, subnet_len, subnet_min, subnet_max, count
        let cases = [
            ("10.244.0.0/16", 24, Ipv4Addr::new(10, 244, 1, 0), Ipv4Addr::new(10, 244, 255, 0), 255),
            ("192.0.2.0/24", 26, Ipv4Addr::new(192, 0, 2, 64), Ipv4Addr::new(192, 0, 2, 192), 3),
        ];
        for (cidr, len, min, max, count) in cases {
            let n = Network::new(&section(cidr)).unwrap();
            let v4 = n.ipv4.unwrap();
            assert_eq!(
                (v4.subnet_len, v4.min, v4.max, n.subnet_count()),
                (len, min.into(), max.into(), count),
                "{cidr}"
            );
        }
        let n = Network::new(&section("10.244.0.0/16")).unwrap();
        assert_eq!(n.nth_subnet(0), IpNet::V4(net("10.244.1.0/24")));
        assert_eq!(n.nth_subnet(254), IpNet::V4(net("10.244.255.0/24")));
        assert_eq!(default_subnet_len(net("10.0.0.0/22")), 24);
        assert_eq!(default_subnet_len(net("10.0.0.0/23")), 25);
    }

    #[test]
    fn explicit_range() {
        let s = NetworkSection {
            subnet_min: "10.244.10.0".into(),
            subnet_max: "10.244.12.0".into(),
            ..section("10.244.0.0/16")
        };
        let n = Network::new(&s).unwrap();
        assert_eq!(n.subnet_count(), 3);
        let v4 = n.ipv4.unwrap();
        assert!(v4.in_allocation_range(&net("10.244.11.0/24").into()));
        assert!(!v4.in_allocation_range(&net("10.244.13.0/24").into()));
        assert!(n.fits(&net("10.244.13.0/24").into()));
        assert!(!n.fits(&net("10.245.13.0/24").into()));
        assert!(!n.fits(&net("10.244.13.0/25").into()));
    }

    #[test]
    fn bad_input_names_key_and_value() {
        let cases = [
            (section("10.244.0.0/33"), "network.cidr"),
            (section("10.244.1.0/16"), "network.cidr"),
            (section("fe80::/64"), "network.cidr"),
            (NetworkSection { subnet_len: 12, ..section("10.244.0.0/16") }, "network.subnet_len"),
            (NetworkSection { subnet_len: 30, ..section("10.244.0.0/16") }, "network.subnet_len"),
            (NetworkSection { subnet_min: "10.245.1.0".into(), ..section("10.244.0.0/16") }, "network.subnet_min"),
            (NetworkSection { subnet_min: "10.244.1.7".into(), ..section("10.244.0.0/16") }, "network.subnet_min"),
            (NetworkSection { subnet_max: "banana".into(), ..section("10.244.0.0/16") }, "network.subnet_max"),
            (
                NetworkSection {
                    subnet_min: "10.244.9.0".into(),
                    subnet_max: "10.244.8.0".into(),
                    ..section("10.244.0.0/16")
                },
                "network.subnet_min",
            ),
        ];
        for (s, key) in cases {
            let err = Network::new(&s).unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(err.to_string().contains(&err.value));
        }
    }

    #[test]
    fn reads_flannels_json() {
        let text = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.250.0","Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;
        let (n, ignored) = Network::from_flannel_json(text).unwrap();
        assert!(ignored.is_empty());
        assert_eq!(n.ipv4.unwrap().max.to_string(), "10.244.250.0");
        assert_eq!(n.backend.type_name(), "vxlan");
        // Minimal config: flannel's defaults fill the rest.
        let (n, _) = Network::from_flannel_json(r#"{"Network":"10.1.0.0/16"}"#).unwrap();
        assert_eq!(n.ipv4.unwrap().subnet_len, 24);
        assert_eq!(n.backend.type_name(), "vxlan");
    }

    #[test]
    fn json_round_trips() {
        let n = Network::new(&section("10.244.0.0/16")).unwrap();
        let (back, _) = Network::from_flannel_json(&n.to_flannel_json()).unwrap();
        assert_eq!(back, n);
        let dual = Network::new(&dual_stack()).unwrap();
        let json = dual.to_flannel_json();
        assert!(json.contains(r#""EnableIPv6":true,"IPv6Network":"2001:db8:42::/56","IPv6SubnetLen":64"#), "{json}");
        assert_eq!(Network::from_flannel_json(&json).unwrap().0, dual);
        assert_eq!(Network::new(&dual.section()).unwrap(), dual);
    }

    fn dual_stack() -> NetworkSection {
        NetworkSection {
            ipv6_cidr: "2001:db8:42::/56".into(),
            backend: BackendConfig::HostGw(backend::NoOptions {}),
            ..section("10.244.0.0/16")
        }
    }

    #[test]
    fn a_dual_stack_network_has_both_spaces() {
        let n = Network::new(&dual_stack()).unwrap();
        let v6 = n.ipv6.expect("IPv6 is on");
        assert_eq!((v6.subnet_len, v6.subnet_count()), (64, 255));
        let key = |v4: &str, v6: Option<&str>| LeaseKey {
            subnet: (!v4.is_empty()).then(|| net(v4)),
            subnet_v6: v6.map(|s| s.parse().unwrap()),
        };
        assert!(n.fits(&key("10.244.9.0/24", Some("2001:db8:42:9::/64"))));
        assert!(!n.fits(&key("10.244.9.0/24", None)), "a dual-stack lease has both subnets");
        assert!(!n.fits(&key("", Some("2001:db8:42:9::/64"))), "a dual-stack lease has both subnets");
        assert!(!n.fits(&key("10.244.9.0/24", Some("2001:db8:43:9::/64"))));
        let v4_only = Network::new(&section("10.244.0.0/16")).unwrap();
        assert!(v4_only.fits(&key("10.244.9.0/24", None)));
        assert!(!v4_only.fits(&key("10.244.9.0/24", Some("2001:db8:42:9::/64"))));
        assert!(!v4_only.fits(&key("", Some("2001:db8:42:9::/64"))));
    }

    #[test]
    fn reads_flannels_dual_stack_json() {
        let text = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:42::/48","IPv6SubnetLen":64,"IPv6SubnetMin":"2001:db8:42:10::","Backend":{"Type":"host-gw"}}"#;
        let (n, ignored) = Network::from_flannel_json(text).unwrap();
        assert!(ignored.is_empty());
        let v6 = n.ipv6.unwrap();
        assert_eq!(v6.min.to_string(), "2001:db8:42:10::");
        assert_eq!(v6.max.to_string(), "2001:db8:42:ffff::");
        // IPv6 keys without EnableIPv6 are ignored, as flannel ignores them.
        let text = r#"{"Network":"10.244.0.0/16","IPv6Network":"2001:db8:42::/48"}"#;
        assert_eq!(Network::from_flannel_json(text).unwrap().0.ipv6, None);
        let err = Network::from_flannel_json(r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#).unwrap_err();
        assert!(err.to_string().contains("IPv6Network"), "{err}");
        let err = Network::from_flannel_json(r#"{"Network":"10.244.0.0/16","EnableIPv4":false}"#).unwrap_err();
        assert!(err.to_string().contains("network.enable_ipv4"), "{err}");
    }

    fn ipv6_only() -> NetworkSection {
        NetworkSection { enable_ipv4: false, cidr: String::new(), ..dual_stack() }
    }

    #[test]
    fn an_ipv6_only_network_names_its_leases_by_their_ipv6_subnets() {
        let n = Network::new(&ipv6_only()).unwrap();
        assert!(n.is_ipv6_only() && n.ipv4_network().is_none());
        assert_eq!(n.to_string(), "2001:db8:42::/56");
        assert_eq!(n.nth_subnet(0), "2001:db8:42:1::/64".parse::<IpNet>().unwrap());
        assert_eq!(n.subnet_count(), 255);
        let v6: Ipv6Net = "2001:db8:42:9::/64".parse().unwrap();
        assert!(n.fits(&LeaseKey::ipv6_only(v6)));
        assert!(!n.fits(&LeaseKey { subnet: Some(net("10.244.9.0/24")), subnet_v6: Some(v6) }));
        assert!(!n.fits(&LeaseKey::ipv6_only("2001:db8:43:9::/64".parse().unwrap())));
        // The IPv4 keys are not read: the default cidr (or any text) is left alone.
        let with_cidr = NetworkSection { cidr: "banana".into(), ..ipv6_only() };
        assert_eq!(Network::new(&with_cidr).unwrap(), n);
        assert_eq!(Network::new(&n.section()).unwrap(), n);
    }

    #[test]
    fn ipv6_only_flannel_json_round_trips() {
        let text =
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:42::/56","Backend":{"Type":"vxlan"}}"#;
        let (n, _) = Network::from_flannel_json(text).unwrap();
        assert!(n.is_ipv6_only());
        let json = n.to_flannel_json();
        assert!(
            json.starts_with(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:42::/56""#),
            "{json}"
        );
        assert_eq!(Network::from_flannel_json(&json).unwrap().0, n);
        // flannel's IPv6-only config may keep a Network it does not read.
        let text =
            r#"{"Network":"10.244.0.0/16","EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:42::/56"}"#;
        assert!(Network::from_flannel_json(text).unwrap().0.is_ipv6_only());
    }

    #[test]
    fn bad_dual_stack_input_names_the_key() {
        let cases = [
            (NetworkSection { ipv6_cidr: "10.245.0.0/16".into(), ..section("10.244.0.0/16") }, "network.ipv6_cidr"),
            (section("2001:db8::/56"), "network.cidr"),
            (NetworkSection { ipv6_subnet_len: 129, ..dual_stack() }, "network.ipv6_subnet_len"),
            (NetworkSection { ipv6_subnet_len: 40, ..dual_stack() }, "network.ipv6_subnet_len"),
            (NetworkSection { ipv6_subnet_len: 64, ..section("10.244.0.0/16") }, "network.ipv6_subnet_len"),
            (NetworkSection { enable_ipv4: false, ..section("10.244.0.0/16") }, "network.enable_ipv4"),
            (NetworkSection { ipv6_cidr: "10.245.0.0/16".into(), ..ipv6_only() }, "network.ipv6_cidr"),
            (NetworkSection { ipv6_subnet_len: 129, ..ipv6_only() }, "network.ipv6_subnet_len"),
        ];
        for (s, key) in cases {
            let err = Network::new(&s).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn stored_config_errors() {
        assert!(matches!(Network::from_flannel_json("{"), Err(StoredConfigError::Json(_))));
        let err = Network::from_flannel_json(r#"{"Network":"10.244.0.0/16","SubnetLen":8}"#).unwrap_err();
        assert!(err.to_string().contains("subnet_len"), "{err}");
    }

    /// A recheck this long would overflow the cloud worker's timers and leadership TTL (a
    /// crash-loop on every cloud agent): it is an invalid network config instead.
    #[test]
    fn stored_durations_out_of_range_are_invalid_configs() {
        for backend in ["aws-vpc", "gce"] {
            for recheck in ["99999999999999h", "0s", "25h"] {
                let json =
                    format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{backend}","Recheck":"{recheck}"}}}}"#);
                let err = Network::from_flannel_json(&json).unwrap_err();
                assert!(matches!(err, StoredConfigError::Invalid(_)), "{err}");
                let text = err.to_string();
                assert!(
                    text.contains("network.backend.recheck") && text.contains("must be between 1s and 1day"),
                    "{text}"
                );
            }
            let json = format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{backend}","Recheck":"24h"}}}}"#);
            assert!(Network::from_flannel_json(&json).is_ok());
        }
    }
}
