//! Leases as flannel stores them: the subnet key (`10.244.3.0-24`) and the JSON attributes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::kernel::MacAddr;
use crate::network::backend::BackendKind;

/// What a host publishes about itself in its lease (flannel's `LeaseAttrs`). An agent keeps one
/// for every peer of the cluster, so they are kept small: a backend type weft knows by a static
/// name, vxlan's data as its parts (see [`BackendData`]), and flannel's IPv6 fields, which
/// IPv4-only hosts leave out, behind one pointer. The JSON is flannel's, field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "AttrsJson", into = "AttrsJson")]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    pub backend_type: Cow<'static, str>,
    pub backend_data: BackendData,
    /// `PublicIPv6` and `BackendV6Data`, when either is set.
    pub v6: Option<Box<V6Attrs>>,
}

/// flannel's IPv6 attributes of a lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V6Attrs {
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend_v6_data: BackendData,
}

/// [`LeaseAttrs`] as flannel's JSON spells it.
#[derive(Serialize, Deserialize)]
struct AttrsJson {
    #[serde(rename = "PublicIP")]
    public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType", default, skip_serializing_if = "str::is_empty")]
    backend_type: Cow<'static, str>,
    #[serde(rename = "BackendData", default, skip_serializing_if = "BackendData::is_null")]
    backend_data: BackendData,
    #[serde(rename = "BackendV6Data", default, skip_serializing_if = "BackendData::is_null")]
    backend_v6_data: BackendData,
}

impl From<AttrsJson> for LeaseAttrs {
    fn from(json: AttrsJson) -> Self {
        let v6 = V6Attrs { public_ipv6: json.public_ipv6, backend_v6_data: json.backend_v6_data };
        LeaseAttrs {
            public_ip: json.public_ip,
            backend_type: backend_type_name(&json.backend_type),
            backend_data: json.backend_data,
            v6: (v6 != V6Attrs::default()).then(|| Box::new(v6)),
        }
    }
}

impl From<LeaseAttrs> for AttrsJson {
    fn from(attrs: LeaseAttrs) -> Self {
        let v6 = attrs.v6.map(|v6| *v6).unwrap_or_default();
        AttrsJson {
            public_ip: attrs.public_ip,
            public_ipv6: v6.public_ipv6,
            backend_type: attrs.backend_type,
            backend_data: attrs.backend_data,
            backend_v6_data: v6.backend_v6_data,
        }
    }
}

/// A backend type by a static name when weft knows it (no allocation for each peer's lease),
/// else as written.
fn backend_type_name(name: &str) -> Cow<'static, str> {
    match BackendKind::from_name(name) {
        Some(kind) => Cow::Borrowed(kind.as_str()),
        None => Cow::Owned(name.to_string()),
    }
}

impl LeaseAttrs {
    pub fn new(public_ip: Ipv4Addr, backend_type: &str, backend_data: impl Into<BackendData>) -> Self {
        LeaseAttrs {
            public_ip,
            backend_type: backend_type_name(backend_type),
            backend_data: backend_data.into(),
            v6: None,
        }
    }

    /// `PublicIPv6`, when the host published one.
    pub fn public_ipv6(&self) -> Option<Ipv6Addr> {
        self.v6.as_ref().and_then(|v6| v6.public_ipv6)
    }

    /// `BackendV6Data` (null when absent).
    pub fn backend_v6_data(&self) -> &BackendData {
        static NULL: BackendData = BackendData(Data::Null);
        self.v6.as_ref().map_or(&NULL, |v6| &v6.backend_v6_data)
    }

    /// These attributes with the IPv6 ones of a dual-stack host.
    pub fn with_v6(mut self, public_ipv6: Ipv6Addr, backend_v6_data: impl Into<BackendData>) -> Self {
        self.v6 = Some(Box::new(V6Attrs { public_ipv6: Some(public_ipv6), backend_v6_data: backend_v6_data.into() }));
        self
    }

    /// Whether `other` was published by the host that publishes these: the same public IPv4
    /// address, or the same public IPv6 one. (IPv6-only hosts all publish 0.0.0.0, as flannel
    /// writes them: that address tells no host; a host that turned IPv4 off is still known by
    /// its IPv6 address.)
    pub fn is_same_host(&self, other: &LeaseAttrs) -> bool {
        Self::same_host(self.public_ip, self.public_ipv6(), other)
    }

    /// [`LeaseAttrs::is_same_host`] for a lease read only as far as its public addresses.
    pub fn same_host(public_ip: Ipv4Addr, public_ipv6: Option<Ipv6Addr>, other: &LeaseAttrs) -> bool {
        let by_ipv4 = !public_ip.is_unspecified() && public_ip == other.public_ip;
        let by_ipv6 = public_ipv6.is_some() && public_ipv6 == other.public_ipv6();
        by_ipv4 || by_ipv6
    }

    /// The address other hosts reach this one on: the public IPv4 one, else (IPv6-only) the
    /// public IPv6 one.
    pub fn public_addr(&self) -> Option<IpAddr> {
        if self.public_ip.is_unspecified() {
            self.public_ipv6().map(IpAddr::V6)
        } else {
            Some(IpAddr::V4(self.public_ip))
        }
    }

    /// The JSON flannel writes for these attributes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("lease attributes always serialize")
    }
}

/// A backend's own data in a lease (flannel's `BackendData`, e.g. the VTEP's MAC), kept as the
/// JSON text it was read as: an agent holds every lease of the cluster, and a parsed JSON object
/// costs over ten times the bytes of its text (and a tree of allocations to read it). vxlan's
/// data exactly as flannel and weft write it, `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`, is
/// kept as its parts instead: no heap block for each peer, and the same text when written back.
#[derive(Clone, Default)]
pub struct BackendData(Data);

#[derive(Clone, Default)]
enum Data {
    #[default]
    Null,
    Vtep {
        vni: u32,
        mac: MacAddr,
    },
    Text(Box<RawValue>),
}

impl BackendData {
    /// No data (`null`): what host-gw and the cloud backends publish.
    pub fn null() -> Self {
        BackendData(Data::Null)
    }

    pub fn is_null(&self) -> bool {
        matches!(self.0, Data::Null)
    }

    fn from_text(raw: Box<RawValue>) -> Self {
        match vtep_parts(raw.get()) {
            Some((vni, mac)) => BackendData(Data::Vtep { vni, mac }),
            None => BackendData(Data::Text(raw)),
        }
    }

    /// The JSON text of the data.
    fn text(&self) -> Cow<'_, str> {
        match &self.0 {
            Data::Null => Cow::Borrowed("null"),
            Data::Vtep { vni, mac } => Cow::Owned(vtep_text(*vni, *mac)),
            Data::Text(raw) => Cow::Borrowed(raw.get()),
        }
    }

    /// The data as a JSON value. Fails on data nested deeper than serde_json builds values
    /// (128 levels): the text was read without that limit, as a peer may have written anything.
    pub fn value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.text())
    }

    /// One string field of the data, if the data is an object that has it.
    pub fn str_field(&self, name: &str) -> Option<String> {
        // vxlan's data read for every peer on every sync: answered from its parts (its VNI is a
        // number, not a string).
        if let Data::Vtep { mac, .. } = &self.0 {
            return (name == "VtepMAC").then(|| mac.to_string());
        }
        let text = self.text();
        // Only the fields' raw text is read: nothing is allocated for the fields not asked for.
        let fields: BTreeMap<&str, &RawValue> = serde_json::from_str(&text).ok()?;
        serde_json::from_str(fields.get(name)?.get()).ok()
    }
}

/// vxlan's data as its text, as flannel writes it (Go's `encoding/json`, lower-case MAC).
fn vtep_text(vni: u32, mac: MacAddr) -> String {
    format!(r#"{{"VNI":{vni},"VtepMAC":"{mac}"}}"#)
}

/// The VNI and MAC of vxlan's data when `text` is exactly what [`vtep_text`] writes for them;
/// anything else (other spacing or order, more fields, an upper-case MAC) stays text.
fn vtep_parts(text: &str) -> Option<(u32, MacAddr)> {
    let (vni, mac) = text.strip_prefix(r#"{"VNI":"#)?.strip_suffix(r#""}"#)?.split_once(r#","VtepMAC":""#)?;
    let (vni, mac): (u32, MacAddr) = (vni.parse().ok()?, mac.parse().ok()?);
    (vtep_text(vni, mac) == text).then_some((vni, mac))
}

impl From<serde_json::Value> for BackendData {
    fn from(value: serde_json::Value) -> Self {
        if value.is_null() {
            return BackendData::null();
        }
        BackendData::from_text(RawValue::from_string(value.to_string()).expect("a JSON value's text is valid JSON"))
    }
}

/// Data compares by its text: the same data written with other spacing reads as a change, which
/// costs a recomputation of that peer's objects and nothing in the kernel. (Text never holds
/// what [`Data::Vtep`] would: both come from [`BackendData::from_text`].)
impl PartialEq for BackendData {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Data::Null, Data::Null) => true,
            (Data::Vtep { vni, mac }, Data::Vtep { vni: other_vni, mac: other_mac }) => {
                vni == other_vni && mac == other_mac
            }
            (Data::Text(raw), Data::Text(other)) => raw.get() == other.get(),
            _ => false,
        }
    }
}

impl Eq for BackendData {}

impl fmt::Display for BackendData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl fmt::Debug for BackendData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for BackendData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Data::Null => serializer.serialize_none(),
            Data::Vtep { vni, mac } => {
                let raw = RawValue::from_string(vtep_text(*vni, *mac)).map_err(serde::ser::Error::custom)?;
                serializer.serialize_some(&raw)
            }
            Data::Text(raw) => serializer.serialize_some(raw),
        }
    }
}

impl<'de> Deserialize<'de> for BackendData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Option::<Box<RawValue>>::deserialize(deserializer)?;
        Ok(raw.map_or_else(BackendData::null, BackendData::from_text))
    }
}

/// One host's lease on a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The IPv4 subnet; `None` in an IPv6-only network (flannel's `0.0.0.0-0` key part).
    pub subnet: Option<Ipv4Net>,
    /// The IPv6 subnet of a dual-stack or IPv6-only lease (the part of the key after `&`).
    pub subnet_v6: Option<Ipv6Net>,
    pub attrs: LeaseAttrs,
    pub expiry: Expiry,
}

/// When a lease runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A reservation: a key without TTL, never taken by an agent.
    Never,
    At(SystemTime),
    /// Leased, but the store did not say until when (etcd lists leases without their TTL).
    Unknown,
}

impl Lease {
    pub fn is_reservation(&self) -> bool {
        self.expiry == Expiry::Never
    }

    /// The subnets this lease's key names.
    pub fn key(&self) -> LeaseKey {
        LeaseKey { subnet: self.subnet, subnet_v6: self.subnet_v6 }
    }

    /// The subnet that names this lease among the others (see [`LeaseKey::id`]).
    pub fn id(&self) -> IpNet {
        self.key().id()
    }
}

/// What a lease's key names: the IPv4 subnet and, dual-stack, the IPv6 one; IPv6-only, the IPv6
/// one alone. flannel spells them `10.244.3.0-24`, `10.244.3.0-24&2001:db8:42:3::-64` and
/// `0.0.0.0-0&2001:db8:42:3::-64`. A key names at least one subnet ([`parse_lease_key`] refuses
/// `0.0.0.0-0` alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    pub subnet: Option<Ipv4Net>,
    pub subnet_v6: Option<Ipv6Net>,
}

/// What flannel writes for the IPv4 part of an IPv6-only key.
const NO_IPV4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0);

impl LeaseKey {
    /// The key of an IPv6-only lease.
    pub fn ipv6_only(subnet_v6: Ipv6Net) -> LeaseKey {
        LeaseKey { subnet: None, subnet_v6: Some(subnet_v6) }
    }

    /// The subnet that tells this lease from every other of its network: the IPv4 one where the
    /// network has IPv4 (a dual-stack key differing only in its IPv6 part claims the same
    /// subnet), else the IPv6 one.
    pub fn id(&self) -> IpNet {
        match (self.subnet, self.subnet_v6) {
            (Some(v4), _) => v4.into(),
            (None, Some(v6)) => v6.into(),
            (None, None) => NO_IPV4.into(),
        }
    }

    /// Whether the two keys hold a subnet in common (of either family): two such leases would
    /// route one subnet to two hosts, so only one of them may be created.
    pub fn shares_a_subnet_with(&self, other: &LeaseKey) -> bool {
        self.subnets().any(|mine| other.subnets().any(|theirs| mine == theirs))
    }

    /// The subnets of the key, IPv4 first: what a route per destination (a cloud's) is made for.
    pub fn subnets(&self) -> impl Iterator<Item = IpNet> {
        [self.subnet.map(IpNet::V4), self.subnet_v6.map(IpNet::V6)].into_iter().flatten()
    }
}

impl From<Ipv4Net> for LeaseKey {
    fn from(subnet: Ipv4Net) -> Self {
        LeaseKey { subnet: Some(subnet), subnet_v6: None }
    }
}

/// The key of a lease named by one subnet: IPv4-only, or IPv6-only.
impl From<IpNet> for LeaseKey {
    fn from(subnet: IpNet) -> Self {
        match subnet {
            IpNet::V4(v4) => v4.into(),
            IpNet::V6(v6) => LeaseKey::ipv6_only(v6),
        }
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v4 = self.subnet.unwrap_or(NO_IPV4);
        write!(f, "{}-{}", v4.network(), v4.prefix_len())?;
        if let Some(v6) = self.subnet_v6 {
            write!(f, "&{}-{}", v6.network(), v6.prefix_len())?;
        }
        Ok(())
    }
}

/// The leases of a cluster by their [`Lease::id`].
pub type LeaseMap = crate::family_map::FamilyMap<Lease>;

/// A key or value in the store that is not a lease we can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseParseError {
    #[error("subnet key {key:?} is not of the form a.b.c.d-len (or a.b.c.d-len&ipv6-len)")]
    BadKey { key: String },
    #[error("lease {key:?} holds invalid JSON: {reason}")]
    BadJson { key: String, reason: String },
}

/// `10.244.3.0/24` → `10.244.3.0-24`, flannel's key for a subnet (dual-stack:
/// `10.244.3.0-24&2001:db8:42:3::-64`).
pub fn subnet_key(key: impl Into<LeaseKey>) -> String {
    key.into().to_string()
}

/// The subnet that names the lease of a key ([`LeaseKey::id`]).
pub fn parse_subnet_key(key: &str) -> Result<IpNet, LeaseParseError> {
    parse_lease_key(key).map(|k| k.id())
}

/// Parses a subnet key as the store names it (the part after `subnets/`): exactly
/// `<a.b.c.d>-<len>`, or flannel's dual-stack `<a.b.c.d>-<len>&<ipv6>-<len6>`. Each part must be
/// written as flannel writes it (the prefix's network address, no leading zeros, IPv6 in its
/// shortest lower-case form, nothing before or after): any other spelling of a subnet would be a
/// second key for it, and its deletion or junk would alias the real lease.
pub fn parse_lease_key(key: &str) -> Result<LeaseKey, LeaseParseError> {
    let bad = || LeaseParseError::BadKey { key: key.to_string() };
    let (v4, v6) = match key.split_once('&') {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (key, None),
    };
    let (addr, len) = v4.split_once('-').ok_or_else(bad)?;
    let subnet = Ipv4Net::new(addr.parse().map_err(|_| bad())?, len.parse().map_err(|_| bad())?).map_err(|_| bad())?;
    let subnet_v6 = match v6 {
        Some(v6) => {
            let (addr, len) = v6.split_once('-').ok_or_else(bad)?;
            Some(Ipv6Net::new(addr.parse().map_err(|_| bad())?, len.parse().map_err(|_| bad())?).map_err(|_| bad())?)
        }
        None => None,
    };
    // flannel's IPv6-only key says "no IPv4 subnet" with 0.0.0.0-0, which alone names nothing.
    let subnet = (subnet != NO_IPV4).then_some(subnet);
    if subnet.is_none() && subnet_v6.is_none() {
        return Err(bad());
    }
    let parsed = LeaseKey { subnet, subnet_v6 };
    if parsed.to_string() != key {
        return Err(bad());
    }
    Ok(parsed)
}

/// Reads one stored lease from its key and JSON value.
pub fn parse_lease(key: &str, value: &[u8], expiry: Expiry) -> Result<Lease, LeaseParseError> {
    let LeaseKey { subnet, subnet_v6 } = parse_lease_key(key)?;
    let attrs: LeaseAttrs = serde_json::from_slice(value)
        .map_err(|e| LeaseParseError::BadJson { key: key.to_string(), reason: e.to_string() })?;
    Ok(Lease { subnet, subnet_v6, attrs, expiry })
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subnets: Vec<String> = self.key().subnets().map(|s| s.to_string()).collect();
        write!(f, "{} ({}", subnets.join(" "), self.attrs.backend_type)?;
        let v4 = (!self.attrs.public_ip.is_unspecified()).then_some(IpAddr::V4(self.attrs.public_ip));
        let v6 = self.attrs.public_ipv6().map(IpAddr::V6);
        let publics: Vec<String> = v4.into_iter().chain(v6).map(|ip| ip.to_string()).collect();
        if !publics.is_empty() {
            write!(f, " via {}", publics.join(", "))?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_keys_round_trip() {
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(subnet_key(net), "10.244.3.0-24");
        assert_eq!(parse_subnet_key("10.244.3.0-24"), Ok(net.into()));
        // flannel's dual-stack key: the IPv4 part names the lease.
        assert_eq!(parse_subnet_key("10.244.3.0-24&fd00:10:244:3::-64"), Ok(net.into()));
        // flannel's IPv6-only key: no IPv4 subnet, the IPv6 one names the lease.
        let v6: Ipv6Net = "2001:db8:42:3::/64".parse().unwrap();
        let key = parse_lease_key("0.0.0.0-0&2001:db8:42:3::-64").unwrap();
        assert_eq!(key, LeaseKey::ipv6_only(v6));
        assert_eq!(key.id(), IpNet::V6(v6));
        assert_eq!(key.subnets().collect::<Vec<_>>(), [IpNet::V6(v6)]);
        assert_eq!(subnet_key(key), "0.0.0.0-0&2001:db8:42:3::-64");
        assert!(parse_subnet_key("0.0.0.0-0").is_err(), "names no subnet");
    }

    #[test]
    fn bad_subnet_keys_are_rejected() {
        for key in ["10.244.3.0", "10.244.3.0-33", "10.244.3.1-24", "x-24", "10.244.3.0-", "", "-24"] {
            assert!(parse_subnet_key(key).is_err(), "{key} accepted");
        }
    }

    /// Each of these would otherwise be read as 10.244.5.0/24: a second key for a real subnet,
    /// whose deletion (or junk) would remove or replace the real lease.
    #[test]
    fn keys_aliasing_a_subnet_are_rejected() {
        for key in [
            "x/10.244.5.0-24",
            "subnets/10.244.5.0-24",
            "/coreos.com/network/subnets/10.244.5.0-24",
            "10.244.5.0-24/",
            "10.244.5.0-24&junk",
            "10.244.5.0-24&",
            "10.244.5.0-24&fd00::-64&fd01::-64",
            "10.244.5.0-24&fd00::1-64",
            "10.244.5.0-24&fd00::-129",
            "10.244.5.0-24&fd00:0::-64",
            "10.244.5.0-24&FD00::-64",
            "10.244.5.0-24&10.244.5.0-24",
            "10.244.5.0-24&fd00::0-64",
            "10.244.5.0-024",
            "10.244.5.0-+24",
            "010.244.5.0-24",
            " 10.244.5.0-24",
            "10.244.5.0-24 ",
            "10.244.5.0-24\n",
            "10.244.5.0-24-24",
        ] {
            assert!(parse_subnet_key(key).is_err(), "{key:?} accepted as {:?}", parse_subnet_key(key));
        }
    }

    #[test]
    fn reads_flannel_written_attributes() {
        let json = br#"{"PublicIP":"192.0.2.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#;
        let lease = parse_lease("10.244.3.0-24", json, Expiry::Never).unwrap();
        assert_eq!(lease.attrs.public_ip, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(lease.attrs.backend_type, "vxlan");
        assert_eq!(lease.attrs.backend_data.str_field("VtepMAC").as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        assert!(lease.is_reservation());
    }

    #[test]
    fn backend_data_is_kept_as_written() {
        let json = br#"{"PublicIP":"192.0.2.10","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb:cc:dd:ee:ff", "VNI":1}}"#;
        let lease = parse_lease("10.244.3.0-24", json, Expiry::Unknown).unwrap();
        let data = &lease.attrs.backend_data;
        assert_eq!(data.to_string(), r#"{"VtepMAC":"aa:bb:cc:dd:ee:ff", "VNI":1}"#);
        assert_eq!(data.value().unwrap()["VNI"], 1);
        assert_eq!(data.str_field("VNI"), None, "not a string");
        assert_eq!(data.str_field("Missing"), None);
        assert_eq!(lease.attrs, parse_lease("10.244.3.0-24", json, Expiry::Never).unwrap().attrs);
        assert_ne!(*data, BackendData::from(serde_json::json!({"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"})));
        // Written back as it was read.
        assert!(lease.attrs.to_json().ends_with(r#""BackendData":{"VtepMAC":"aa:bb:cc:dd:ee:ff", "VNI":1}}"#));
        let null = parse_lease("10.244.3.0-24", br#"{"PublicIP":"192.0.2.10","BackendData":null}"#, Expiry::Unknown);
        assert!(null.unwrap().attrs.backend_data.is_null());
        assert_eq!(BackendData::null().to_string(), "null");
        assert_eq!(BackendData::from(serde_json::Value::Null), BackendData::null());
    }

    #[test]
    fn deeply_nested_backend_data_is_read_and_kept_but_not_built_into_a_value() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let json = format!(r#"{{"PublicIP":"192.0.2.10","BackendData":{deep}}}"#);
        let lease = parse_lease("10.244.3.0-24", json.as_bytes(), Expiry::Unknown).unwrap();
        assert_eq!(lease.attrs.backend_data.to_string(), deep);
        assert!(lease.attrs.backend_data.value().is_err());
        assert_eq!(lease.attrs.backend_data.str_field("VtepMAC"), None);
    }

    #[test]
    fn writes_flannel_json() {
        let attrs = LeaseAttrs::new(
            Ipv4Addr::new(192, 0, 2, 10),
            "vxlan",
            serde_json::json!({"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"}),
        );
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"192.0.2.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#
        );
    }

    #[test]
    fn vxlan_data_as_flannel_writes_it_is_kept_as_parts_and_written_back_byte_for_byte() {
        let flannel = r#"{"VNI":4096,"VtepMAC":"0a:bb:cc:dd:ee:f0"}"#;
        let data: BackendData = serde_json::from_str(flannel).unwrap();
        assert!(matches!(data.0, Data::Vtep { vni: 4096, mac: MacAddr([0x0a, 0xbb, 0xcc, 0xdd, 0xee, 0xf0]) }));
        assert_eq!(data.to_string(), flannel);
        assert_eq!(serde_json::to_string(&data).unwrap(), flannel);
        assert_eq!(data.str_field("VtepMAC").as_deref(), Some("0a:bb:cc:dd:ee:f0"));
        assert_eq!(data.str_field("VNI"), None, "a number, not a string");
        assert_eq!(data.value().unwrap()["VNI"], 4096);
        assert_eq!(data, BackendData::from(serde_json::json!({"VNI": 4096, "VtepMAC": "0a:bb:cc:dd:ee:f0"})));
        assert_ne!(data, BackendData::from(serde_json::json!({"VNI": 4097, "VtepMAC": "0a:bb:cc:dd:ee:f0"})));
        // Anything that would not be written back as it came stays text, as it came.
        for text in [
            r#"{"VNI":1,"VtepMAC":"AA:BB:CC:DD:EE:FF"}"#,
            r#"{"VNI":1.0,"VtepMAC":"aa:bb:cc:dd:ee:ff"}"#,
            r#"{"VNI": 1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}"#,
            r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee"}"#,
            r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff:00"}"#,
            r#"{"VNI":1,"VtepMAC":"a:bb:cc:dd:ee:ff"}"#,
            r#"{"VNI":-1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}"#,
            r#"{"VNI":4294967296,"VtepMAC":"aa:bb:cc:dd:ee:ff"}"#,
            r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff","Extra":true}"#,
        ] {
            let data: BackendData = serde_json::from_str(text).unwrap();
            assert!(matches!(data.0, Data::Text(_)), "{text}");
            assert_eq!(serde_json::to_string(&data).unwrap(), text);
        }
    }

    /// vxlan data with every byte of flannel's text changed in turn, and random VNIs and MACs:
    /// whatever is kept, as parts or as text, is written back exactly as read.
    #[test]
    fn any_variation_of_vxlan_data_is_written_back_as_read() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let mut texts = Vec::new();
        for _ in 0..2_000 {
            texts.push(vtep_text(rng.random(), MacAddr(rng.random())));
        }
        let base = vtep_text(1, MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]));
        for at in 0..base.len() {
            for byte in [b'0', b'9', b'a', b'F', b':', b'"', b' ', b'-', b'.', b'}'] {
                let mut bytes = base.clone().into_bytes();
                bytes[at] = byte;
                texts.push(String::from_utf8(bytes).expect("ASCII"));
            }
        }
        for text in texts {
            let Ok(data) = serde_json::from_str::<BackendData>(&text) else { continue };
            assert_eq!(serde_json::to_string(&data).unwrap(), text);
            assert_eq!(data.to_string(), text);
            let again: BackendData = serde_json::from_str(&text).unwrap();
            assert_eq!(again, data, "{text}");
        }
    }

    #[test]
    fn a_dual_stack_lease_round_trips_as_flannel_wrote_it() {
        let json = r#"{"PublicIP":"192.0.2.10","PublicIPv6":"2001:db8::10","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:fe"}}"#;
        let lease = parse_lease("10.244.3.0-24&2001:db8:0:3::-64", json.as_bytes(), Expiry::Unknown).unwrap();
        let v6 = lease.attrs.v6.as_deref().expect("IPv6 attributes");
        assert_eq!(v6.public_ipv6, Some("2001:db8::10".parse().unwrap()));
        assert_eq!(v6.backend_v6_data.str_field("VtepMAC").as_deref(), Some("aa:bb:cc:dd:ee:fe"));
        assert_eq!(lease.attrs.to_json(), json);
        // An IPv4-only lease carries none.
        let v4 = LeaseAttrs::new(Ipv4Addr::new(192, 0, 2, 10), "host-gw", serde_json::Value::Null);
        let read: LeaseAttrs = serde_json::from_str(&v4.to_json()).unwrap();
        assert!(read.v6.is_none());
        assert_eq!(read, v4);
    }

    #[test]
    fn backend_types_weft_knows_are_not_allocated_per_lease() {
        let known: LeaseAttrs = serde_json::from_str(r#"{"PublicIP":"192.0.2.10","BackendType":"host-gw"}"#).unwrap();
        assert!(matches!(known.backend_type, Cow::Borrowed("host-gw")));
        let other: LeaseAttrs = serde_json::from_str(r#"{"PublicIP":"192.0.2.10","BackendType":"udp"}"#).unwrap();
        assert_eq!(other.backend_type, "udp");
        assert!(other.to_json().contains(r#""BackendType":"udp""#));
    }

    /// An agent keeps a lease for every peer of the cluster: a field that grows this grows the
    /// agent by that much per peer (the benchmark's `--memory` prints the total per peer). 104:
    /// 88 before the IPv6 subnet of a dual-stack key (18 bytes in place, no heap block).
    #[test]
    fn a_lease_stays_small() {
        assert!(std::mem::size_of::<Lease>() <= 104, "{} bytes", std::mem::size_of::<Lease>());
    }

    #[test]
    fn bad_json_names_the_key() {
        let err = parse_lease("10.244.3.0-24", b"{not json", Expiry::Never).unwrap_err();
        assert!(err.to_string().contains("10.244.3.0-24"));
    }
}
