//! The plugin's network config, as the runtime passes it on stdin. Keys are flannel's CNI
//! plugin's (`subnetFile`, `dataDir`, `delegate`, `ipam`), so a flannel conflist works unchanged
//! with `"type": "weft-cni"`.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{CniError, Code};

/// The spec versions this plugin speaks; the delegate gets the same version as we did.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The version errors are reported in when the config did not say a usable one.
pub const LATEST_VERSION: &str = "1.0.0";
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// flannel's plugin keeps each container's delegate config here; sharing the place lets weft-cni
/// delete pods that flannel's plugin added, during a migration.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    pub subnet_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// Keys for the delegate plugin, overriding what is derived from subnet.env.
    #[serde(default)]
    pub delegate: Map<String, Value>,
    /// IPAM keys for the delegate (extra routes, another IPAM type).
    #[serde(default)]
    pub ipam: Map<String, Value>,
    /// Runtime-provided values (port mappings, bandwidth), handed on to the delegate.
    pub runtime_config: Option<Value>,
    /// The chain's result so far (CHECK, DEL), handed on to the delegate.
    pub prev_result: Option<Value>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(Code::Decode, "network config on stdin is not valid", e.to_string()))?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("cniVersion {:?} is not supported", conf.cni_version),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        if conf.name.is_empty() {
            return Err(CniError::new(Code::InvalidConfig, "network config has no name", ""));
        }
        Ok(conf)
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.subnet_file.clone().unwrap_or_else(|| DEFAULT_SUBNET_FILE.into())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| DEFAULT_DATA_DIR.into())
    }

    /// Whether this version knows CHECK (added in 0.4.0).
    pub fn supports_check(&self) -> bool {
        !matches!(self.cni_version.as_str(), "0.3.0" | "0.3.1")
    }
}

/// The version to print errors in: the config's when it is one we speak.
pub fn error_version(stdin: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Version {
        cni_version: Option<String>,
    }
    serde_json::from_slice::<Version>(stdin)
        .ok()
        .and_then(|v| v.cni_version)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_flannel_style_config() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","subnetFile":"/tmp/s.env","delegate":{"hairpinMode":true}}"#,
        )
        .unwrap();
        assert_eq!(conf.subnet_file(), PathBuf::from("/tmp/s.env"));
        assert_eq!(conf.data_dir(), PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(conf.delegate["hairpinMode"], true);
        assert!(conf.supports_check());
    }

    #[test]
    fn rejects_what_it_cannot_serve() {
        let old = NetConf::parse(br#"{"cniVersion":"0.2.0","name":"x"}"#).unwrap_err();
        assert_eq!(old.code, Code::IncompatibleVersion);
        let nameless = NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(nameless.code, Code::InvalidConfig);
        let garbage = NetConf::parse(b"{").unwrap_err();
        assert_eq!(garbage.code, Code::Decode);
    }

    #[test]
    fn errors_speak_the_callers_version_when_possible() {
        assert_eq!(error_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(error_version(br#"{"cniVersion":"9.9.9"}"#), "1.0.0");
        assert_eq!(error_version(b"nonsense"), "1.0.0");
    }
}
