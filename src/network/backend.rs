//! `[network.backend]`: which backend and its keys. TOML uses snake_case (`direct_routing`); the
//! store keeps flannel's names (`DirectRouting`). One table maps the two, so each backend's keys
//! are declared once.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum BackendConfig {
    Vxlan(VxlanConfig),
    HostGw(NoOptions),
    AwsVpc(AwsVpcConfig),
    Gce(GceConfig),
    /// Lease a subnet and install nothing.
    Alloc(NoOptions),
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::Vxlan(VxlanConfig::default())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VxlanConfig {
    pub vni: u32,
    pub port: u16,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
    /// 0: the external interface's MTU less the 50 bytes of vxlan encapsulation.
    pub mtu: u32,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig { vni: 1, port: 8472, gbp: false, learning: false, direct_routing: false, mtu: 0 }
    }
}

/// `overflow`: how a cloud backend reaches the peers its route tables do not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    Vxlan,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsVpcConfig {
    pub route_table_ids: Vec<String>,
    pub route_table_tag: String,
    pub region: String,
    #[serde(with = "humantime_serde")]
    pub recheck: Duration,
    /// Off (`None`): a full table is an error, as in flannel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overflow: Option<Overflow>,
    /// At most this many routes of the cluster network per table (below the cloud's own limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_limit: Option<u32>,
}

impl Default for AwsVpcConfig {
    fn default() -> Self {
        AwsVpcConfig {
            route_table_ids: Vec::new(),
            route_table_tag: String::new(),
            region: String::new(),
            recheck: Duration::from_secs(300),
            overflow: None,
            route_limit: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GceConfig {
    pub project: String,
    pub network: String,
    pub route_prefix: String,
    pub priority: u32,
    pub tags: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub recheck: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overflow: Option<Overflow>,
    /// At most this many routes of the cluster network in the VPC network (below the quota).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_limit: Option<u32>,
}

impl Default for GceConfig {
    fn default() -> Self {
        GceConfig {
            project: String::new(),
            network: String::new(),
            route_prefix: "weft-".into(),
            priority: 1000,
            tags: Vec::new(),
            recheck: Duration::from_secs(300),
            overflow: None,
            route_limit: None,
        }
    }
}

/// How often a cloud backend looks at its route (`recheck`): at least a second, so an agent
/// stays inside the cloud's API quotas; at most a day, so a lost route comes back the same day
/// (and the leadership TTL of three rechecks stays far from overflowing).
pub const RECHECK_RANGE: std::ops::RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

/// weft.toml key ↔ flannel JSON key, for every backend key. The cloud endpoints are not backend
/// keys: they come from the agent's own `[cloud]` (a store's `EndpointURL` or `Endpoint` is an
/// unknown key, ignored with a warning), so whoever writes the store cannot send each VM's cloud
/// credentials to a server of their choosing.
const KEY_NAMES: &[(&str, &str)] = &[
    ("type", "Type"),
    ("vni", "VNI"),
    ("port", "Port"),
    ("gbp", "GBP"),
    ("learning", "Learning"),
    ("direct_routing", "DirectRouting"),
    ("mtu", "MTU"),
    ("route_table_ids", "RouteTableID"),
    ("route_table_tag", "RouteTableTag"),
    ("region", "Region"),
    ("recheck", "Recheck"),
    ("project", "Project"),
    ("network", "Network"),
    ("route_prefix", "RoutePrefix"),
    ("priority", "Priority"),
    ("tags", "Tags"),
    ("overflow", "Overflow"),
    ("route_limit", "RouteLimit"),
];

/// Keys a stored network config may carry (older weft, hand-written JSON) that weft takes only
/// from the agent's own config: the flannel JSON name and the weft.toml key that holds it now.
const AGENT_ONLY_KEYS: &[(&str, &str)] =
    &[("EndpointURL", "cloud.aws_endpoint_url"), ("Endpoint", "cloud.gce_endpoint")];

/// The agent's own weft.toml key for `key` of a stored config, when only the agent may set it.
pub fn agent_only_key(key: &str) -> Option<&'static str> {
    AGENT_ONLY_KEYS.iter().find(|(flannel, _)| flannel.eq_ignore_ascii_case(key)).map(|(_, own)| *own)
}

/// Which backend, without its options: the one list of backend types and their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    Vxlan,
    HostGw,
    AwsVpc,
    Gce,
    Alloc,
}

impl BackendKind {
    pub const ALL: [BackendKind; 5] =
        [BackendKind::Vxlan, BackendKind::HostGw, BackendKind::AwsVpc, BackendKind::Gce, BackendKind::Alloc];

    /// The `type` value, as flannel spells it (and as leases carry it in `BackendType`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Vxlan => "vxlan",
            BackendKind::HostGw => "host-gw",
            BackendKind::AwsVpc => "aws-vpc",
            BackendKind::Gce => "gce",
            BackendKind::Alloc => "alloc",
        }
    }

    /// The kind named `name`; `None` for a type weft does not know (flannel's `udp`, a typo).
    pub fn from_name(name: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The keys of `[network.backend]` this kind takes besides `type`.
    fn keys(self) -> &'static [&'static str] {
        match self {
            BackendKind::Vxlan => &["vni", "port", "gbp", "learning", "direct_routing", "mtu"],
            BackendKind::HostGw | BackendKind::Alloc => &[],
            BackendKind::AwsVpc => {
                &["route_table_ids", "route_table_tag", "region", "recheck", "overflow", "route_limit"]
            }
            BackendKind::Gce => {
                &["project", "network", "route_prefix", "priority", "tags", "recheck", "overflow", "route_limit"]
            }
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl BackendConfig {
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendConfig::Vxlan(_) => BackendKind::Vxlan,
            BackendConfig::HostGw(_) => BackendKind::HostGw,
            BackendConfig::AwsVpc(_) => BackendKind::AwsVpc,
            BackendConfig::Gce(_) => BackendKind::Gce,
            BackendConfig::Alloc(_) => BackendKind::Alloc,
        }
    }

    /// The `type` value, as flannel spells it.
    pub fn type_name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Checks what serde cannot: that each duration and limit is in its range.
    pub fn check(&self) -> Result<(), super::NetworkError> {
        let (recheck, route_limit) = match self {
            BackendConfig::AwsVpc(aws) => (aws.recheck, aws.route_limit),
            BackendConfig::Gce(gce) => (gce.recheck, gce.route_limit),
            BackendConfig::Vxlan(_) | BackendConfig::HostGw(_) | BackendConfig::Alloc(_) => return Ok(()),
        };
        if route_limit == Some(0) {
            return Err(super::invalid(
                "network.backend.route_limit",
                0,
                "a table that takes no route: leave route_limit out to use the cloud's own limit",
            ));
        }
        super::bounded_duration("network.backend.recheck", recheck, RECHECK_RANGE).map(|_| ())
    }

    /// The overflow a cloud backend asks for (never for the kernel backends: they have no cap).
    pub fn overflow(&self) -> Option<Overflow> {
        match self {
            BackendConfig::AwsVpc(aws) => aws.overflow,
            BackendConfig::Gce(gce) => gce.overflow,
            BackendConfig::Vxlan(_) | BackendConfig::HostGw(_) | BackendConfig::Alloc(_) => None,
        }
    }

    /// flannel's `Backend` object for this config.
    pub fn to_flannel_json(&self) -> serde_json::Value {
        let ours = serde_json::to_value(self).expect("backend config always serializes");
        let serde_json::Value::Object(map) = ours else { unreachable!("tagged enum is an object") };
        let renamed = map
            .into_iter()
            .map(|(key, value)| {
                let flannel = KEY_NAMES.iter().find(|(toml, _)| *toml == key).map(|(_, f)| *f);
                (flannel.unwrap_or(&key).to_string(), value)
            })
            .collect();
        serde_json::Value::Object(renamed)
    }

    /// Reads flannel's `Backend` object. Like flannel (Go's JSON), key names match without regard
    /// to case; keys no backend knows are returned, not fatal. A missing object means vxlan.
    pub fn from_flannel_json(json: &serde_json::Value) -> Result<(Self, Vec<String>), String> {
        let object = match json {
            serde_json::Value::Null => return Ok((BackendConfig::default(), Vec::new())),
            serde_json::Value::Object(object) => object,
            other => return Err(format!("expected an object, found {other}")),
        };
        let mut ours = serde_json::Map::new();
        let mut ignored = Vec::new();
        for (key, value) in object {
            match KEY_NAMES.iter().find(|(_, flannel)| flannel.eq_ignore_ascii_case(key)) {
                Some((toml, _)) => {
                    ours.insert(toml.to_string(), normalize(toml, value.clone()));
                }
                None => ignored.push(key.clone()),
            }
        }
        ours.entry("type").or_insert_with(|| "vxlan".into());
        // Keys of another backend than the chosen one are ignored too.
        let type_name = ours["type"].clone();
        let known = known_keys(&type_name)?;
        ours.retain(|key, _| {
            let keep = key == "type" || known.contains(&key.as_str());
            if !keep {
                ignored.push(key.clone());
            }
            keep
        });
        let config = serde_json::from_value(serde_json::Value::Object(ours)).map_err(|e| e.to_string())?;
        Ok((config, ignored))
    }
}

/// flannel accepts `RouteTableID` as one string or a list.
fn normalize(key: &str, value: serde_json::Value) -> serde_json::Value {
    match (key, value) {
        ("route_table_ids", serde_json::Value::String(id)) => serde_json::json!([id]),
        (_, value) => value,
    }
}

fn known_keys(type_name: &serde_json::Value) -> Result<&'static [&'static str], String> {
    match type_name.as_str().and_then(BackendKind::from_name) {
        Some(kind) => Ok(kind.keys()),
        None => {
            let names: Vec<&str> = BackendKind::ALL.iter().map(|k| k.as_str()).collect();
            Err(format!("unknown backend type {type_name} ({})", names.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overflow_and_route_limit_in_flannel_json() {
        let config = BackendConfig::AwsVpc(AwsVpcConfig {
            overflow: Some(Overflow::Vxlan),
            route_limit: Some(3),
            ..Default::default()
        });
        let json = config.to_flannel_json();
        assert_eq!((json["Overflow"].as_str(), json["RouteLimit"].as_u64()), (Some("vxlan"), Some(3)));
        assert_eq!(BackendConfig::from_flannel_json(&json).unwrap().0, config);
        // Off by default, and then not written at all: flannel's aws-vpc JSON stays as it was.
        let plain = BackendConfig::Gce(GceConfig::default()).to_flannel_json();
        assert!(plain.get("Overflow").is_none() && plain.get("RouteLimit").is_none(), "{plain}");
        let err = BackendConfig::from_flannel_json(&json!({"Type": "gce", "Overflow": "udp"})).unwrap_err();
        assert!(err.contains("udp"), "{err}");
        // On a kernel backend the key is another backend's: ignored with the others.
        let (_, ignored) = BackendConfig::from_flannel_json(&json!({"Type": "vxlan", "Overflow": "vxlan"})).unwrap();
        assert_eq!(ignored, ["overflow"]);
    }

    #[test]
    fn vxlan_to_flannel_names() {
        let config = BackendConfig::Vxlan(VxlanConfig { vni: 4, direct_routing: true, ..Default::default() });
        let json = config.to_flannel_json();
        assert_eq!(json["Type"], "vxlan");
        assert_eq!(json["VNI"], 4);
        assert_eq!(json["DirectRouting"], true);
        assert_eq!(BackendConfig::from_flannel_json(&json).unwrap().0, config);
    }

    #[test]
    fn reads_flannel_spelling_and_defaults() {
        let (config, ignored) =
            BackendConfig::from_flannel_json(&json!({"Type": "vxlan", "vni": 7, "Foo": 1})).unwrap();
        assert_eq!(config, BackendConfig::Vxlan(VxlanConfig { vni: 7, ..Default::default() }));
        assert_eq!(ignored, vec!["Foo".to_string()]);
        let (config, _) = BackendConfig::from_flannel_json(&serde_json::Value::Null).unwrap();
        assert_eq!(config.type_name(), "vxlan");
    }

    #[test]
    fn route_table_id_string_or_list() {
        let one = json!({"Type": "aws-vpc", "RouteTableID": "rtb-1"});
        let (config, _) = BackendConfig::from_flannel_json(&one).unwrap();
        let BackendConfig::AwsVpc(aws) = config else { panic!("not aws-vpc") };
        assert_eq!(aws.route_table_ids, vec!["rtb-1"]);
        let many = json!({"Type": "aws-vpc", "RouteTableID": ["rtb-1", "rtb-2"]});
        let (config, _) = BackendConfig::from_flannel_json(&many).unwrap();
        let BackendConfig::AwsVpc(aws) = config else { panic!("not aws-vpc") };
        assert_eq!(aws.route_table_ids.len(), 2);
    }

    /// A store's network config is shared by every host: an endpoint there is ignored, so the
    /// backend sends its calls (and the VM's credentials) where the agent's own `[cloud]` says.
    #[test]
    fn store_endpoints_are_ignored() {
        for (kind, key) in [("aws-vpc", "EndpointURL"), ("gce", "Endpoint"), ("gce", "endpoint")] {
            let (with, ignored) =
                BackendConfig::from_flannel_json(&json!({"Type": kind, key: "http://203.0.113.9"})).unwrap();
            let (without, _) = BackendConfig::from_flannel_json(&json!({"Type": kind})).unwrap();
            assert_eq!(with, without, "{kind}: {key} must not reach the backend");
            assert_eq!(ignored, vec![key.to_string()], "{kind}: {key} is reported as ignored");
            let text = serde_json::to_string(&with.to_flannel_json()).unwrap();
            assert!(!text.contains("203.0.113.9") && !text.contains("Endpoint"), "{text}");
        }
        assert_eq!(agent_only_key("EndpointURL"), Some("cloud.aws_endpoint_url"));
        assert_eq!(agent_only_key("endpoint"), Some("cloud.gce_endpoint"));
        assert_eq!(agent_only_key("VNI"), None);
    }

    #[test]
    fn errors() {
        assert!(BackendConfig::from_flannel_json(&json!({"Type": "udp"})).unwrap_err().contains("udp"));
        assert!(BackendConfig::from_flannel_json(&json!({"Type": "vxlan", "VNI": "x"})).is_err());
        assert!(BackendConfig::from_flannel_json(&json!(3)).is_err());
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in BackendKind::ALL {
            assert_eq!(BackendKind::from_name(kind.as_str()), Some(kind));
            let config: BackendConfig = toml::from_str(&format!("type = \"{kind}\"")).unwrap();
            assert_eq!(config.kind(), kind);
        }
        assert_eq!(BackendKind::from_name("udp"), None);
    }

    #[test]
    fn toml_rejects_unknown_keys() {
        let err = toml::from_str::<BackendConfig>("type = \"vxlan\"\nvnii = 3").unwrap_err();
        assert!(err.to_string().contains("vnii"), "{err}");
        let ok: BackendConfig = toml::from_str("type = \"host-gw\"").unwrap();
        assert_eq!(ok.type_name(), "host-gw");
    }
}
