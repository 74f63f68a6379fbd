//! `weft network import`: flannel's network config as weft's `[network]` table. It reads
//! kube-flannel's `net-conf.json`, the ConfigMap holding it (YAML, as in `kube-flannel.yml`, or
//! JSON, as `kubectl get configmap -o json` prints it) or the JSON flannel keeps in etcd, and
//! says which keys it did not carry over.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Network, NetworkSection, StoredConfigError};

/// The ConfigMap key kube-flannel keeps its network config under.
pub const NET_CONF_KEY: &str = "net-conf.json";
/// Top-level keys of flannel's config that weft reads (the backend's are judged by the backend).
const KNOWN_KEYS: [&str; 11] = [
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "EnableIPv4",
    "EnableIPv6",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "Backend",
];

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{source_name}: no flannel network config found (expected net-conf.json, or a ConfigMap with a \"{NET_CONF_KEY}\" key)")]
    NotFound { source_name: String },
    #[error("{source_name}: {error}")]
    Invalid {
        source_name: String,
        #[source]
        error: StoredConfigError,
    },
}

/// flannel's config, read as weft's.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub network: Network,
    /// Keys of flannel's config weft does not use, top level and backend.
    pub ignored: Vec<String>,
}

/// Reads `text` (named `source_name` in errors): net-conf.json itself, or a ConfigMap holding it.
pub fn import(text: &str, source_name: &str) -> Result<Imported, ImportError> {
    let net_conf = find_net_conf(text).ok_or_else(|| ImportError::NotFound { source_name: source_name.into() })?;
    let invalid = |error| ImportError::Invalid { source_name: source_name.into(), error };
    let (network, backend_ignored) = Network::from_flannel_json(&net_conf).map_err(invalid)?;
    let top: Value = serde_json::from_str(&net_conf).map_err(|e| invalid(StoredConfigError::Json(e.to_string())))?;
    let mut ignored: Vec<String> = top
        .as_object()
        .map(|o| o.keys().filter(|k| !KNOWN_KEYS.contains(&k.as_str())).cloned().collect())
        .unwrap_or_default();
    ignored.extend(backend_ignored.into_iter().map(|key| format!("Backend.{key}")));
    Ok(Imported { network, ignored })
}

/// net-conf.json's text within `text`, whichever of the accepted shapes it has.
fn find_net_conf(text: &str) -> Option<String> {
    if let Ok(json) = serde_json::from_str::<Value>(text) {
        return net_conf_in(&json);
    }
    // YAML, perhaps several documents (kube-flannel.yml holds the namespace, RBAC, the
    // ConfigMap and the DaemonSet).
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|document| serde_json::to_value(serde_yaml::Value::deserialize(document).ok()?).ok())
        .find_map(|json| net_conf_in(&json))
}

/// In a parsed document: net-conf.json itself, a ConfigMap, or a `List` of objects.
fn net_conf_in(json: &Value) -> Option<String> {
    // An IPv6-only net-conf.json has no `Network`, only `IPv6Network`.
    if json.get("Network").is_some() || json.get("IPv6Network").is_some() {
        return Some(json.to_string());
    }
    match json.get("kind").and_then(Value::as_str) {
        Some("ConfigMap") => json.get("data")?.get(NET_CONF_KEY)?.as_str().map(str::to_string),
        Some("List") => json.get("items")?.as_array()?.iter().find_map(net_conf_in),
        _ => None,
    }
}

/// The `[network]` table for weft.toml, with a header naming its source and what was left out.
pub fn to_toml(imported: &Imported, source_name: &str) -> String {
    #[derive(Serialize)]
    struct Table<'a> {
        network: &'a NetworkSection,
    }
    let section = imported.network.section();
    let body = toml::to_string(&Table { network: &section }).expect("a network section serializes as TOML");
    let mut out = format!("# [network] imported from {source_name} by `weft network import`.\n");
    if !imported.ignored.is_empty() {
        out.push_str(&format!("# Not carried over (weft does not use them): {}.\n", imported.ignored.join(", ")));
    }
    out.push_str(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::backend::BackendConfig;

    const NET_CONF: &str = r#"{
      "Network": "10.244.0.0/16",
      "EnableNFTables": false,
      "Backend": { "Type": "vxlan", "VNI": 4, "DirectRouting": true }
    }"#;

    /// The table read back as weft reads weft.toml.
    fn read_back(toml_text: &str) -> Network {
        #[derive(serde::Deserialize)]
        struct File {
            network: NetworkSection,
        }
        let file: File = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
        Network::new(&file.network).unwrap()
    }

    #[test]
    fn net_conf_becomes_a_network_table_that_reads_back_the_same() {
        let imported = import(NET_CONF, "net-conf.json").unwrap();
        assert_eq!(imported.ignored, ["EnableNFTables"]);
        let text = to_toml(&imported, "net-conf.json");
        assert!(text.starts_with("# [network] imported from net-conf.json"), "{text}");
        assert!(text.contains("EnableNFTables") && text.contains("[network.backend]"), "{text}");
        let network = read_back(&text);
        assert_eq!(network, imported.network);
        let BackendConfig::Vxlan(vxlan) = &network.backend else { panic!("{:?}", network.backend) };
        assert_eq!((vxlan.vni, vxlan.direct_routing), (4, true));
    }

    #[test]
    fn the_configmap_as_yaml_among_other_documents_or_as_json() {
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-flannel\n---\n\
             kind: ConfigMap\napiVersion: v1\nmetadata:\n  name: kube-flannel-cfg\ndata:\n  cni-conf.json: |\n    {{}}\n  \
             net-conf.json: |\n{}\n---\nkind: DaemonSet\n",
            NET_CONF.lines().map(|l| format!("    {}", l.trim())).collect::<Vec<_>>().join("\n")
        );
        let from_yaml = import(&yaml, "kube-flannel.yml").unwrap();
        assert_eq!(from_yaml, import(NET_CONF, "x").unwrap());
        let json = serde_json::json!({"kind": "ConfigMap", "data": {"net-conf.json": NET_CONF}}).to_string();
        assert_eq!(import(&json, "cm.json").unwrap(), from_yaml);
        let list =
            serde_json::json!({"kind": "List", "items": [{"kind": "ConfigMap", "data": {"net-conf.json": NET_CONF}}]});
        assert_eq!(import(&list.to_string(), "list.json").unwrap(), from_yaml);
    }

    #[test]
    fn an_ipv6_only_net_conf_is_found_and_reads_back() {
        let v6_only = r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "2001:db8:42::/56", "Backend": {"Type": "host-gw"}}"#;
        let imported = import(v6_only, "net-conf.json").unwrap();
        assert!(imported.network.is_ipv6_only());
        let text = to_toml(&imported, "net-conf.json");
        assert!(text.contains("enable_ipv4 = false"), "{text}");
        assert_eq!(read_back(&text), imported.network);
        let configmap = serde_json::json!({"kind": "ConfigMap", "data": {"net-conf.json": v6_only}});
        assert_eq!(import(&configmap.to_string(), "cm.json").unwrap(), imported);
    }

    #[test]
    fn errors_name_the_source_and_what_is_wrong() {
        let e = import("kind: Secret\n", "secret.yaml").unwrap_err().to_string();
        assert!(e.starts_with("secret.yaml: no flannel network config found"), "{e}");
        let e = import(r#"{"Network": "10.244.0.0/33"}"#, "net-conf.json").unwrap_err().to_string();
        assert!(e.starts_with("net-conf.json: ") && e.contains("10.244.0.0/33"), "{e}");
        let e =
            import(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}"#, "n.json").unwrap_err().to_string();
        assert!(e.contains("udp"), "{e}");
    }
}
