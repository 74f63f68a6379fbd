//! The cluster network: flannel's JSON config in the store, the `[network]` table of weft.toml,
//! validation into a typed [`Network`], and the subnet arithmetic over it.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub mod backend;
pub mod import;

use backend::BackendConfig;

/// Subnets smaller than this leave too few addresses for a host's pods.
const SMALLEST_SUBNET_LEN: u8 = 28;

/// The `[network]` table as written by the operator: strings are validated by [`Network::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    pub cidr: String,
    /// 0: flannel's default for the network's size.
    pub subnet_len: u8,
    pub subnet_min: String,
    pub subnet_max: String,
    pub backend: BackendConfig,
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            cidr: "10.244.0.0/16".into(),
            subnet_len: 0,
            subnet_min: String::new(),
            subnet_max: String::new(),
            backend: BackendConfig::default(),
        }
    }
}

/// A validated cluster network: every subnet between `subnet_min` and `subnet_max` (inclusive) is
/// `subnet_len` long and inside `network`.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub backend: BackendConfig,
}

/// A change of the network's shape: its CIDR or its subnet length. Leases taken in the old shape
/// may not fit the new one, so a reshape cannot apply while hosts hold leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reshape {
    pub old_network: Ipv4Net,
    pub old_subnet_len: u8,
    pub new_network: Ipv4Net,
    pub new_subnet_len: u8,
}

impl std::fmt::Display for Reshape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "from {} (/{} subnets) to {} (/{} subnets)",
            self.old_network, self.old_subnet_len, self.new_network, self.new_subnet_len
        )
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
    if network.prefix_len() <= 22 {
        24
    } else {
        network.prefix_len() + 2
    }
}

impl Network {
    pub fn new(section: &NetworkSection) -> Result<Network, NetworkError> {
        let parsed: Ipv4Net = section
            .cidr
            .parse()
            .map_err(|_| invalid("network.cidr", &section.cidr, "not an IPv4 CIDR such as 10.244.0.0/16"))?;
        let network = parsed.trunc();
        if network != parsed {
            return Err(invalid("network.cidr", &section.cidr, format!("host bits set: did you mean {network}?")));
        }
        let subnet_len = match section.subnet_len {
            0 => default_subnet_len(network),
            len => len,
        };
        if subnet_len < network.prefix_len() {
            return Err(invalid(
                "network.subnet_len",
                subnet_len,
                format!("shorter than the network's prefix /{}", network.prefix_len()),
            ));
        }
        if subnet_len > SMALLEST_SUBNET_LEN {
            let reason = format!("subnets smaller than /{SMALLEST_SUBNET_LEN} leave no room for a host");
            return Err(invalid("network.subnet_len", subnet_len, reason));
        }
        let count = 1u64 << (subnet_len - network.prefix_len());
        let nth = |i: u64| subnet_at(network, subnet_len, i).network();
        // flannel skips the network's first subnet by default (its .0 address is the network's).
        let default_min = if count > 1 { nth(1) } else { nth(0) };
        let subnet_min = parse_bound("network.subnet_min", &section.subnet_min, default_min, network, subnet_len)?;
        let subnet_max = parse_bound("network.subnet_max", &section.subnet_max, nth(count - 1), network, subnet_len)?;
        if subnet_min > subnet_max {
            return Err(invalid("network.subnet_min", subnet_min, format!("above network.subnet_max {subnet_max}")));
        }
        section.backend.check()?;
        Ok(Network { network, subnet_len, subnet_min, subnet_max, backend: section.backend.clone() })
    }

    /// How many subnets lie between `subnet_min` and `subnet_max`.
    pub fn subnet_count(&self) -> u64 {
        self.index_of(self.subnet_max) - self.index_of(self.subnet_min) + 1
    }

    /// The `i`-th subnet counting from `subnet_min`.
    pub fn nth_subnet(&self, i: u64) -> Ipv4Net {
        subnet_at(self.network, self.subnet_len, self.index_of(self.subnet_min) + i)
    }

    /// Whether `subnet` is one this network hands out: inside it, of the right length.
    /// A lease outside the network is never installed.
    pub fn contains_subnet(&self, subnet: &Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len && self.network.contains(subnet)
    }

    /// Whether `subnet` is between `subnet_min` and `subnet_max`, where new leases are allocated.
    pub fn in_allocation_range(&self, subnet: &Ipv4Net) -> bool {
        self.contains_subnet(subnet) && subnet.network() >= self.subnet_min && subnet.network() <= self.subnet_max
    }

    fn index_of(&self, addr: Ipv4Addr) -> u64 {
        let offset = u32::from(addr) - u32::from(self.network.network());
        u64::from(offset >> (32 - self.subnet_len))
    }

    pub fn section(&self) -> NetworkSection {
        NetworkSection {
            cidr: self.network.to_string(),
            subnet_len: self.subnet_len,
            subnet_min: self.subnet_min.to_string(),
            subnet_max: self.subnet_max.to_string(),
            backend: self.backend.clone(),
        }
    }
}

fn subnet_at(network: Ipv4Net, subnet_len: u8, index: u64) -> Ipv4Net {
    let base = u32::from(network.network()) as u64;
    let addr = base + (index << (32 - subnet_len));
    Ipv4Net::new(Ipv4Addr::from(addr as u32), subnet_len).expect("subnet_len is at most 32")
}

fn parse_bound(
    key: &'static str,
    raw: &str,
    default: Ipv4Addr,
    network: Ipv4Net,
    subnet_len: u8,
) -> Result<Ipv4Addr, NetworkError> {
    if raw.is_empty() {
        return Ok(default);
    }
    let addr: Ipv4Addr = raw.parse().map_err(|_| invalid(key, raw, "not an IPv4 address"))?;
    if !network.contains(&addr) {
        return Err(invalid(key, raw, format!("outside the network {network}")));
    }
    let aligned = Ipv4Net::new(addr, subnet_len).expect("valid length").network();
    if aligned != addr {
        return Err(invalid(key, raw, format!("not on a /{subnet_len} boundary (try {aligned})")));
    }
    Ok(addr)
}

// ---- flannel's JSON -------------------------------------------------------------------------

/// The network config exactly as flannel keeps it at `<prefix>/config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FlannelNetworkJson {
    #[serde(rename = "Network")]
    network: String,
    #[serde(rename = "SubnetLen", default, skip_serializing_if = "is_zero")]
    subnet_len: u8,
    #[serde(rename = "SubnetMin", default, skip_serializing_if = "String::is_empty")]
    subnet_min: String,
    #[serde(rename = "SubnetMax", default, skip_serializing_if = "String::is_empty")]
    subnet_max: String,
    #[serde(rename = "Backend", default)]
    backend: serde_json::Value,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
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
        (self.network != old.network || self.subnet_len != old.subnet_len).then_some(Reshape {
            old_network: old.network,
            old_subnet_len: old.subnet_len,
            new_network: self.network,
            new_subnet_len: self.subnet_len,
        })
    }

    /// flannel's JSON for this network, as `weft network apply` publishes it.
    pub fn to_flannel_json(&self) -> String {
        let json = FlannelNetworkJson {
            network: self.network.to_string(),
            subnet_len: self.subnet_len,
            subnet_min: self.subnet_min.to_string(),
            subnet_max: self.subnet_max.to_string(),
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
        let section = NetworkSection {
            cidr: json.network,
            subnet_len: json.subnet_len,
            subnet_min: json.subnet_min,
            subnet_max: json.subnet_max,
            backend,
        };
        Ok((Network::new(&section)?, ignored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!((reshape.old_subnet_len, reshape.new_subnet_len), (24, 26));
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
            assert_eq!((n.subnet_len, n.subnet_min, n.subnet_max, n.subnet_count()), (len, min, max, count), "{cidr}");
        }
        let n = Network::new(&section("10.244.0.0/16")).unwrap();
        assert_eq!(n.nth_subnet(0), net("10.244.1.0/24"));
        assert_eq!(n.nth_subnet(254), net("10.244.255.0/24"));
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
        assert!(n.in_allocation_range(&net("10.244.11.0/24")));
        assert!(!n.in_allocation_range(&net("10.244.13.0/24")));
        assert!(n.contains_subnet(&net("10.244.13.0/24")));
        assert!(!n.contains_subnet(&net("10.245.13.0/24")));
        assert!(!n.contains_subnet(&net("10.244.13.0/25")));
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
        assert_eq!(n.subnet_max, Ipv4Addr::new(10, 244, 250, 0));
        assert_eq!(n.backend.type_name(), "vxlan");
        // Minimal config: flannel's defaults fill the rest.
        let (n, _) = Network::from_flannel_json(r#"{"Network":"10.1.0.0/16"}"#).unwrap();
        assert_eq!(n.subnet_len, 24);
        assert_eq!(n.backend.type_name(), "vxlan");
    }

    #[test]
    fn json_round_trips() {
        let n = Network::new(&section("10.244.0.0/16")).unwrap();
        let (back, _) = Network::from_flannel_json(&n.to_flannel_json()).unwrap();
        assert_eq!(back, n);
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
