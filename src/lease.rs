//! Leases as flannel stores them: the subnet key (`10.244.3.0-24`) and the JSON attributes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What a host publishes about itself in its lease (flannel's `LeaseAttrs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType", default, skip_serializing_if = "String::is_empty")]
    pub backend_type: String,
    #[serde(rename = "BackendData", default, skip_serializing_if = "BackendData::is_null")]
    pub backend_data: BackendData,
    #[serde(rename = "BackendV6Data", default, skip_serializing_if = "BackendData::is_null")]
    pub backend_v6_data: BackendData,
}

impl LeaseAttrs {
    pub fn new(public_ip: Ipv4Addr, backend_type: &str, backend_data: impl Into<BackendData>) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: backend_type.to_string(),
            backend_data: backend_data.into(),
            backend_v6_data: BackendData::null(),
        }
    }

    /// The JSON flannel writes for these attributes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("lease attributes always serialize")
    }
}

/// A backend's own data in a lease (flannel's `BackendData`, e.g. the VTEP's MAC), kept as the
/// JSON text it was read as: an agent holds every lease of the cluster, and a parsed JSON object
/// costs over ten times the bytes of its text (and a tree of allocations to read it).
#[derive(Clone, Default)]
pub struct BackendData(Option<Box<RawValue>>);

impl BackendData {
    /// No data (`null`): what host-gw and the cloud backends publish.
    pub fn null() -> Self {
        BackendData(None)
    }

    pub fn is_null(&self) -> bool {
        self.0.is_none()
    }

    /// The data as a JSON value. Fails on data nested deeper than serde_json builds values
    /// (128 levels): the text was read without that limit, as a peer may have written anything.
    pub fn value(&self) -> Result<serde_json::Value, serde_json::Error> {
        self.0.as_deref().map_or(Ok(serde_json::Value::Null), |raw| serde_json::from_str(raw.get()))
    }

    /// One string field of the data, if the data is an object that has it.
    pub fn str_field(&self, name: &str) -> Option<String> {
        let raw = self.0.as_deref()?;
        // Only the fields' raw text is read: nothing is allocated for the fields not asked for.
        let fields: BTreeMap<&str, &RawValue> = serde_json::from_str(raw.get()).ok()?;
        serde_json::from_str(fields.get(name)?.get()).ok()
    }
}

impl From<serde_json::Value> for BackendData {
    fn from(value: serde_json::Value) -> Self {
        if value.is_null() {
            return BackendData::null();
        }
        BackendData(Some(RawValue::from_string(value.to_string()).expect("a JSON value's text is valid JSON")))
    }
}

/// Data compares by its text: the same data written with other spacing reads as a change, which
/// costs a recomputation of that peer's objects and nothing in the kernel.
impl PartialEq for BackendData {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_deref().map(RawValue::get) == other.0.as_deref().map(RawValue::get)
    }
}

impl Eq for BackendData {}

impl fmt::Display for BackendData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_deref().map_or("null", RawValue::get))
    }
}

impl fmt::Debug for BackendData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for BackendData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for BackendData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Option::<Box<RawValue>>::deserialize(deserializer).map(BackendData)
    }
}

/// One host's lease on a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Net,
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
}

/// The leases of a cluster by subnet.
pub type LeaseMap = BTreeMap<Ipv4Net, Lease>;

/// A key or value in the store that is not a lease we can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseParseError {
    #[error("subnet key {key:?} is not of the form a.b.c.d-len (or a.b.c.d-len&ipv6-len)")]
    BadKey { key: String },
    #[error("lease {key:?} holds invalid JSON: {reason}")]
    BadJson { key: String, reason: String },
}

/// `10.244.3.0/24` → `10.244.3.0-24`, flannel's key for a subnet.
pub fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// Parses a subnet key as the store names it (the part after `subnets/`): exactly
/// `<a.b.c.d>-<len>`, or flannel's dual-stack `<a.b.c.d>-<len>&<ipv6>-<len6>`, which yields its
/// IPv4 part. Each part must be written as flannel writes it (the prefix's network address, no
/// leading zeros, nothing before or after): any other spelling of a subnet would be a second key
/// for it, and its deletion or junk would alias the real lease.
pub fn parse_subnet_key(key: &str) -> Result<Ipv4Net, LeaseParseError> {
    let bad = || LeaseParseError::BadKey { key: key.to_string() };
    let (v4, v6) = match key.split_once('&') {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (key, None),
    };
    let (addr, len) = v4.split_once('-').ok_or_else(bad)?;
    let net = Ipv4Net::new(addr.parse().map_err(|_| bad())?, len.parse().map_err(|_| bad())?).map_err(|_| bad())?;
    if subnet_key(net) != v4 {
        return Err(bad());
    }
    if let Some(v6) = v6 {
        let (addr, len) = v6.split_once('-').ok_or_else(bad)?;
        let net6 =
            Ipv6Net::new(addr.parse().map_err(|_| bad())?, len.parse().map_err(|_| bad())?).map_err(|_| bad())?;
        if format!("{}-{}", net6.network(), net6.prefix_len()) != v6 {
            return Err(bad());
        }
    }
    Ok(net)
}

/// Reads one stored lease from its key and JSON value.
pub fn parse_lease(key: &str, value: &[u8], expiry: Expiry) -> Result<Lease, LeaseParseError> {
    let subnet = parse_subnet_key(key)?;
    let attrs: LeaseAttrs = serde_json::from_slice(value)
        .map_err(|e| LeaseParseError::BadJson { key: key.to_string(), reason: e.to_string() })?;
    Ok(Lease { subnet, attrs, expiry })
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} via {})", self.subnet, self.attrs.backend_type, self.attrs.public_ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_keys_round_trip() {
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(subnet_key(net), "10.244.3.0-24");
        assert_eq!(parse_subnet_key("10.244.3.0-24"), Ok(net));
        // flannel's dual-stack key: the IPv4 part is the subnet.
        assert_eq!(parse_subnet_key("10.244.3.0-24&fd00:10:244:3::-64"), Ok(net));
        assert_eq!(parse_subnet_key("0.0.0.0-0"), Ok("0.0.0.0/0".parse().unwrap()));
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
    fn bad_json_names_the_key() {
        let err = parse_lease("10.244.3.0-24", b"{not json", Expiry::Never).unwrap_err();
        assert!(err.to_string().contains("10.244.3.0-24"));
    }
}
