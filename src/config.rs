//! weft.toml: one file drives everything. Layered with figment: defaults < file <
//! `WEFT_<SECTION>__<KEY>` environment < command-line flags. Every value keeps where it came from
//! (`weft config check` prints it) and every error names the file, key and value.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::network::{Network, NetworkSection};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/weft/weft.toml";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentSection,
    pub store: StoreSection,
    pub network: NetworkSection,
    pub cloud: CloudSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Interface names or addresses, tried in order.
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub iface_can_reach: String,
    pub public_ip: String,
    /// What other hosts reach us on over IPv6 in a dual-stack network; "": the interface's first
    /// global IPv6 address.
    pub public_ipv6: String,
    /// The networks other hosts' public IPs must be in (CIDRs); empty: any unicast address but
    /// ours. A lease announcing another address gets no kernel objects.
    pub underlay_cidrs: Vec<String>,
    pub subnet_file: PathBuf,
    pub ip_masq: bool,
    /// Accept rules for the cluster network in iptables' FORWARD chain (flannel's
    /// `--iptables-forward-rules`), so a FORWARD policy of DROP does not cut pods off.
    pub forward_rules: bool,
    #[serde(with = "humantime_serde")]
    pub renew_margin: Duration,
    /// How long a lease lasts in the store (flannel: 24 h).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the backend's state is checked against the leases.
    #[serde(with = "humantime_serde")]
    pub resync: Duration,
    pub listen: String,
    /// A `RUST_LOG`-style filter (`info`, `weft=debug`); "" means `RUST_LOG`, else `info`.
    /// `RUST_LOG` beats the file's value, `WEFT_AGENT__LOG_LEVEL` beats both.
    pub log_level: String,
    /// `text` or `json` (the `--log-format` flag beats it).
    pub log_format: crate::logging::LogFormat,
}

impl From<&AgentSection> for crate::iface::InterfaceChoice {
    fn from(agent: &AgentSection) -> Self {
        crate::iface::InterfaceChoice {
            iface: agent.iface.clone(),
            iface_regex: agent.iface_regex.clone(),
            iface_can_reach: agent.iface_can_reach.clone(),
            public_ip: agent.public_ip.clone(),
            public_ipv6: agent.public_ipv6.clone(),
        }
    }
}

impl AgentSection {
    /// `underlay_cidrs` parsed (they were validated when the config was loaded).
    pub fn underlay(&self) -> Vec<ipnet::IpNet> {
        self.underlay_cidrs.iter().filter_map(|cidr| cidr.parse().ok()).collect()
    }
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            iface: Vec::new(),
            iface_regex: Vec::new(),
            iface_can_reach: String::new(),
            public_ip: String::new(),
            public_ipv6: String::new(),
            underlay_cidrs: Vec::new(),
            subnet_file: "/run/flannel/subnet.env".into(),
            ip_masq: false,
            forward_rules: true,
            renew_margin: Duration::from_secs(3600),
            lease_ttl: Duration::from_secs(24 * 3600),
            resync: Duration::from_secs(60),
            listen: "127.0.0.1:9810".into(),
            log_level: String::new(),
            log_format: crate::logging::LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Etcd,
    Kube,
    Local,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub kind: StoreKind,
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    pub username: String,
    pub password: String,
    pub path: PathBuf,
    /// `kind = "kube"`: this node's name (default: env `NODE_NAME`).
    pub node_name: String,
    /// `kind = "kube"`: default in-cluster, then `~/.kube/config`.
    pub kubeconfig: String,
    pub annotation_prefix: String,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            kind: StoreKind::Etcd,
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/coreos.com/network".into(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            username: String::new(),
            password: String::new(),
            path: "/var/lib/weft/store".into(),
            node_name: String::new(),
            kubeconfig: String::new(),
            annotation_prefix: "flannel.alpha.coreos.com".into(),
        }
    }
}

/// Never prints the password.
impl fmt::Debug for StoreSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSection")
            .field("kind", &self.kind)
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &if self.password.is_empty() { "" } else { "***" })
            .field("path", &self.path)
            .field("node_name", &self.node_name)
            .field("kubeconfig", &self.kubeconfig)
            .field("annotation_prefix", &self.annotation_prefix)
            .finish()
    }
}

/// Where the cloud backends send their API calls. Only this host's own file and environment set
/// it: the store's network config is written by whoever can write the store and read by every
/// host, and an endpoint there would get each VM's credentials sent to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudSection {
    /// aws-vpc: the EC2 endpoint (a VPC endpoint; moto in tests). "" = the SDK's, for the region.
    pub aws_endpoint_url: String,
    /// gce: the Compute API's base URL (tests). "" = the public endpoint.
    pub gce_endpoint: String,
}

/// Endpoint keys that `[network.backend]` once had, and where they live now.
const MOVED_TO_CLOUD: &[(&str, &str)] =
    &[("network.backend.endpoint_url", "cloud.aws_endpoint_url"), ("network.backend.endpoint", "cloud.gce_endpoint")];

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: cannot read: {source}")]
    Unreadable {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// Values given on the command line, as dotted keys (`agent.public_ip`).
#[derive(Debug, Clone, Default)]
pub struct Flags(Vec<(String, Value)>);

impl Flags {
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.0.push((key.to_string(), value.into()));
    }
}

impl Provider for Flags {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flag")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (key, value) in &self.0 {
            insert_dotted(&mut root, key, value.clone());
        }
        Ok(Profile::Default.collect(root))
    }
}

fn insert_dotted(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = dict.entry(head.to_string()).or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_dotted(inner, rest, value);
            }
        }
    }
}

/// The configuration in effect and where each value came from.
pub struct Loaded {
    pub config: Config,
    pub file: PathBuf,
    figment: Figment,
}

/// Reads the layered configuration. A missing file is an error only if it was asked for by name
/// (`explicit`); without one the defaults, environment and flags apply.
pub fn load(file: &Path, explicit: bool, flags: Flags) -> Result<Loaded, ConfigError> {
    let file_name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
        Err(source) => return Err(ConfigError::Unreadable { file: file_name, source }),
    };
    let mut figment = Figment::new().merge(defaults());
    if text.is_some() {
        figment = figment.merge(Toml::file_exact(file));
    }
    let figment = figment
        .merge(
            Env::prefixed("WEFT_")
                // WEFT_CONFIG and the like are not config keys; only WEFT_<SECTION>__<KEY> are.
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        )
        .merge(flags);
    let config = checked(&figment, &file_name, text.as_deref())?;
    Ok(Loaded { config, file: file.to_path_buf(), figment })
}

/// The configuration `text` alone describes (no environment, no flags), checked as [`load`]
/// checks a file: for the fuzzer and tools that hold the text already.
pub fn parse_toml(text: &str) -> Result<Config, ConfigError> {
    let figment = Figment::new().merge(defaults()).merge(Toml::string(text));
    checked(&figment, "weft.toml", Some(text))
}

/// The figment's configuration, with every error naming `file_name` (and the line in `text`).
fn checked(figment: &Figment, file_name: &str, text: Option<&str>) -> Result<Config, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { file: file_name.to_string(), message };
    if let Some(message) = moved_key(figment, text).or_else(|| misplaced_overflow(figment, text)) {
        return Err(invalid(message));
    }
    let config: Config = figment.extract().map_err(|e| invalid(describe_figment_error(e, text)))?;
    validate(&config).map_err(|(key, message)| {
        let line = text.and_then(|t| line_of(t, key));
        let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
        invalid(format!("{at}{message}"))
    })?;
    Ok(config)
}

/// `overflow` under a backend without a route-table cap, or to something other than vxlan, which
/// serde would only call an unknown key or variant: say what it is for.
fn misplaced_overflow(figment: &Figment, text: Option<&str>) -> Option<String> {
    const KEY: &str = "network.backend.overflow";
    let value = figment.find_value(KEY).ok()?;
    let backend = figment.find_value("network.backend.type").ok().and_then(|t| t.into_string());
    let backend = backend.unwrap_or_else(|| "vxlan".into());
    let named = value.clone().into_string();
    let shown = named.as_ref().map(|v| format!("{v:?}")).unwrap_or_else(|| format!("{value:?}"));
    let line = text.and_then(|t| line_of(t, KEY)).map(|l| format!("line {l}: ")).unwrap_or_default();
    if !matches!(backend.as_str(), "aws-vpc" | "gce") {
        return Some(format!(
            "{line}{KEY} = {shown}: only the cloud backends (aws-vpc, gce) overflow to vxlan; type is {backend:?}"
        ));
    }
    (named.as_deref() != Some("vxlan"))
        .then(|| format!("{line}{KEY} = {shown}: the one overflow is \"vxlan\" (or leave the key out)"))
}

/// An endpoint set in `[network.backend]` (file or environment), which serde would only call an
/// unknown key: say where it went, and why.
fn moved_key(figment: &Figment, text: Option<&str>) -> Option<String> {
    let (old, new) = MOVED_TO_CLOUD.iter().find(|(old, _)| figment.find_value(old).is_ok())?;
    let line = text.and_then(|t| line_of(t, old)).map(|l| format!("line {l}: ")).unwrap_or_default();
    let from_env = figment.find_metadata(old).is_some_and(|m| m.name.contains("environment"));
    let source =
        if from_env { format!(" (from WEFT_{})", old.replace('.', "__").to_uppercase()) } else { String::new() };
    Some(format!(
        "{line}{old}{source} moved to {new}: cloud endpoints come only from this host's own weft.toml \
         or environment, never from the network config that `weft network apply` shares"
    ))
}

fn describe_figment_error(error: figment::Error, text: Option<&str>) -> String {
    let mut messages = Vec::new();
    for e in error {
        let key = e.path.join(".");
        let line = text.and_then(|t| line_of(t, &key)).map(|l| format!("line {l}: ")).unwrap_or_default();
        let source = e
            .metadata
            .as_ref()
            .and_then(|m| m.interpolate(&e.profile.clone().unwrap_or_default(), &e.path).into())
            .filter(|_| !key.is_empty())
            .map(|k| format!(" (from {k})"))
            .unwrap_or_default();
        let key = if key.is_empty() { String::new() } else { format!("{key}: ") };
        let kind = if key.contains("password") { "invalid value (hidden)".to_string() } else { e.kind.to_string() };
        messages.push(format!("{line}{key}{kind}{source}"));
    }
    messages.join("; ")
}

/// Every default but the backend's: backend keys differ by type, and merging vxlan's defaults under
/// a file's `type = "host-gw"` would make them unknown keys. serde fills in the chosen type's.
fn defaults() -> impl Provider {
    let mut data = Serialized::defaults(Config::default()).data().expect("defaults serialize");
    if let Some(Some(Value::Dict(_, network))) = data.get_mut(&Profile::Default).map(|d| d.get_mut("network")) {
        network.remove("backend");
    }
    Defaults(data)
}

struct Defaults(Map<Profile, Dict>);

impl Provider for Defaults {
    fn metadata(&self) -> Metadata {
        Metadata::named("default")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(self.0.clone())
    }
}

/// Finds the line of `section.key` in a TOML file, to point at it in errors.
pub fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let (table, key) = dotted.rsplit_once('.')?;
    let mut current = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.trim().to_string();
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        if current == table && name.trim().trim_matches('"') == key {
            return Some(n + 1);
        }
    }
    None
}

/// How long a lease may last: flannel's is a day; a month at most keeps an orphaned lease from
/// holding its subnet for ever (and every expiry computed from it representable).
const LEASE_TTL_RANGE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3600);
/// How often the kernel is repaired: a second at least, a day at most.
const RESYNC_RANGE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

/// Checks what serde cannot: addresses, patterns, durations, the network. Returns the key and a message.
fn validate(config: &Config) -> Result<(), (&'static str, String)> {
    let agent = &config.agent;
    let bad = |key: &'static str, value: &str, why: &str| Err((key, format!("{key} = {value:?}: {why}")));
    if !agent.public_ip.is_empty() && agent.public_ip.parse::<Ipv4Addr>().is_err() {
        return bad("agent.public_ip", &agent.public_ip, "not an IPv4 address");
    }
    if !agent.public_ipv6.is_empty() && agent.public_ipv6.parse::<std::net::Ipv6Addr>().is_err() {
        return bad("agent.public_ipv6", &agent.public_ipv6, "not an IPv6 address");
    }
    if !agent.iface_can_reach.is_empty() && agent.iface_can_reach.parse::<IpAddr>().is_err() {
        return bad("agent.iface_can_reach", &agent.iface_can_reach, "not an IP address");
    }
    for cidr in &agent.underlay_cidrs {
        match cidr.parse::<ipnet::IpNet>() {
            Err(_) => return bad("agent.underlay_cidrs", cidr, "not a CIDR such as 192.0.2.0/24 or 2001:db8::/64"),
            Ok(net) if net.trunc() != net => {
                return bad("agent.underlay_cidrs", cidr, &format!("host bits set: did you mean {}?", net.trunc()))
            }
            Ok(_) => {}
        }
    }
    for pattern in &agent.iface_regex {
        if let Err(e) = regex::Regex::new(pattern) {
            return bad("agent.iface_regex", pattern, &e.to_string());
        }
    }
    if !agent.listen.is_empty() && agent.listen.parse::<SocketAddr>().is_err() {
        return bad("agent.listen", &agent.listen, "not an address:port (\"\" turns it off)");
    }
    if !agent.log_level.is_empty() {
        if let Err(e) = crate::logging::filter_from(&agent.log_level) {
            return bad("agent.log_level", &agent.log_level, &e);
        }
    }
    for (key, value, range) in
        [("agent.lease_ttl", agent.lease_ttl, LEASE_TTL_RANGE), ("agent.resync", agent.resync, RESYNC_RANGE)]
    {
        crate::network::bounded_duration(key, value, range).map_err(|e| (e.key, e.to_string()))?;
    }
    if agent.renew_margin >= agent.lease_ttl {
        let value = humantime::format_duration(agent.renew_margin).to_string();
        return bad("agent.renew_margin", &value, "must be shorter than agent.lease_ttl");
    }
    if config.store.kind == StoreKind::Etcd && config.store.endpoints.is_empty() {
        return bad("store.endpoints", "[]", "etcd needs at least one endpoint");
    }
    if config.store.cert_file.is_empty() != config.store.key_file.is_empty() {
        return bad("store.cert_file", &config.store.cert_file, "cert_file and key_file go together");
    }
    for (key, value) in
        [("cloud.aws_endpoint_url", &config.cloud.aws_endpoint_url), ("cloud.gce_endpoint", &config.cloud.gce_endpoint)]
    {
        let public_or_url = value.is_empty() || value.starts_with("https://") || value.starts_with("http://");
        if !public_or_url {
            return bad(key, value, "not an http:// or https:// URL (\"\" = the public endpoint)");
        }
    }
    Network::new(&config.network).map_err(|e| (e.key, e.to_string()))?;
    Ok(())
}

impl Loaded {
    /// Each effective value as `key = value  # source`, the password hidden.
    pub fn describe(&self) -> Vec<(String, String, String)> {
        let value = serde_json::to_value(&self.config).expect("config always serializes");
        let mut rows = Vec::new();
        flatten("", &value, &mut rows);
        rows.into_iter()
            .map(|(key, value)| {
                let shown = if key == "store.password" && value != "\"\"" { "\"***\"".into() } else { value };
                let source = self.source_of(&key);
                (key, shown, source)
            })
            .collect()
    }

    fn source_of(&self, key: &str) -> String {
        let Some(meta) = self.figment.find_metadata(key) else {
            return "default".into();
        };
        match (&meta.source, meta.name.as_ref()) {
            (Some(figment::Source::File(path)), _) => {
                let line = std::fs::read_to_string(path).ok().and_then(|t| line_of(&t, key));
                match line {
                    Some(l) => format!("{}:{l}", path.display()),
                    None => path.display().to_string(),
                }
            }
            (_, name) if name.contains("environment") => {
                let var = format!("WEFT_{}", key.replacen('.', "__", 1).to_uppercase());
                format!("environment {var}")
            }
            (_, name) => name.to_string(),
        }
    }
}

fn flatten(prefix: &str, value: &serde_json::Value, rows: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, rows);
            }
        }
        other => rows.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load_text(text: &str) -> Result<Loaded, ConfigError> {
        let f = write(text);
        load(f.path(), true, Flags::default())
    }

    #[test]
    fn defaults_without_a_file() {
        let loaded = load(Path::new("/nonexistent/weft.toml"), false, Flags::default()).unwrap();
        assert_eq!(loaded.config, Config::default());
        assert!(load(Path::new("/nonexistent/weft.toml"), true, Flags::default()).is_err());
    }

    #[test]
    fn file_values_and_backend_keys() {
        let loaded = load_text(
            "[agent]\npublic_ip = \"192.0.2.1\"\nrenew_margin = \"30m\"\n[network]\ncidr = \"10.5.0.0/16\"\n[network.backend]\ntype = \"vxlan\"\nvni = 4\n",
        )
        .unwrap();
        assert_eq!(loaded.config.agent.public_ip, "192.0.2.1");
        assert_eq!(loaded.config.agent.renew_margin, Duration::from_secs(1800));
        let network = Network::new(&loaded.config.network).unwrap();
        assert!(network.to_flannel_json().contains("\"VNI\":4"));
    }

    #[test]
    fn flags_beat_file() {
        let f = write("[agent]\npublic_ip = \"192.0.2.1\"\n");
        let mut flags = Flags::default();
        flags.set("agent.public_ip", "192.0.2.9");
        let loaded = load(f.path(), true, flags).unwrap();
        assert_eq!(loaded.config.agent.public_ip, "192.0.2.9");
        let rows = loaded.describe();
        let row = rows.iter().find(|r| r.0 == "agent.public_ip").unwrap();
        assert_eq!(row.2, "command-line flag");
        let row = rows.iter().find(|r| r.0 == "agent.subnet_file").unwrap();
        assert_eq!(row.2, "default");
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let err = load_text("[agent]\n\nbogus = 1\n").err().unwrap().to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(err.contains(".toml") || err.contains("/tmp"), "{err}");
        let err = load_text("[network.backend]\ntype = \"vxlan\"\nvnii = 3\n").err().unwrap().to_string();
        assert!(err.contains("vnii"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let err = load_text("[network]\nsubnet_len = \"big\"\n").err().unwrap().to_string();
        assert!(err.contains("network.subnet_len"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn syntax_error_names_line() {
        let err = load_text("[agent\npublic_ip = 1\n").err().unwrap().to_string();
        assert!(err.contains("line 1") || err.contains("1:"), "{err}");
    }

    #[test]
    fn invalid_values_name_key_value_and_line() {
        let cases = [
            ("[network]\ncidr = \"10.0.0.0/40\"\n", "network.cidr", "10.0.0.0/40"),
            ("[network]\ncidr = \"10.244.0.0/16\"\nsubnet_min = \"10.9.0.0\"\n", "network.subnet_min", "10.9.0.0"),
            ("[network]\ncidr = \"10.244.0.0/16\"\nsubnet_len = 8\n", "network.subnet_len", "8"),
            ("[agent]\npublic_ip = \"nope\"\n", "agent.public_ip", "nope"),
            ("[agent]\nlisten = \"localhost\"\n", "agent.listen", "localhost"),
            ("[agent]\niface_regex = [\"(\"]\n", "agent.iface_regex", "("),
            ("[agent]\nunderlay_cidrs = [\"192.0.2.0/24\", \"10.0.0.0/33\"]\n", "agent.underlay_cidrs", "10.0.0.0/33"),
            ("[agent]\nunderlay_cidrs = [\"underlay\"]\n", "agent.underlay_cidrs", "underlay"),
            ("[agent]\nunderlay_cidrs = [\"192.0.2.1/24\"]\n", "agent.underlay_cidrs", "192.0.2.1/24"),
        ];
        for (text, key, value) in cases {
            let err = load_text(text).err().unwrap().to_string();
            assert!(err.contains(key) && err.contains(value), "{err}");
            assert!(err.contains("line "), "{err}");
        }
    }

    /// Out of range, a duration would overflow a timer or TTL later (a panic in a cloud worker).
    #[test]
    fn durations_out_of_range_name_key_and_value() {
        let cases = [
            ("[agent]\nresync = \"0s\"\n", "agent.resync", "0s"),
            ("[agent]\nresync = \"2days\"\n", "agent.resync", "2days"),
            ("[agent]\nlease_ttl = \"99999999999999h\"\n", "agent.lease_ttl", "11407711613years"),
            (
                "[network.backend]\ntype = \"aws-vpc\"\nrecheck = \"99999999999999h\"\n",
                "network.backend.recheck",
                "11407711613years",
            ),
            ("[network.backend]\ntype = \"gce\"\nrecheck = \"0s\"\n", "network.backend.recheck", "0s"),
        ];
        for (text, key, value) in cases {
            let err = load_text(text).err().unwrap_or_else(|| panic!("{text} accepted")).to_string();
            assert!(err.contains(key) && err.contains(value) && err.contains("must be between"), "{err}");
        }
        let ok = load_text(
            "[agent]\nlease_ttl = \"30days\"\nresync = \"1s\"\n[network.backend]\ntype = \"gce\"\nrecheck = \"24h\"\n",
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    /// `overflow` is for the cloud backends, and only to vxlan; `route_limit` at least one route.
    #[test]
    fn overflow_and_route_limit_name_key_and_value() {
        let cases = [
            ("[network.backend]\ntype = \"vxlan\"\noverflow = \"vxlan\"\n", "overflow", "vxlan"),
            ("[network.backend]\ntype = \"host-gw\"\noverflow = \"vxlan\"\n", "overflow", "host-gw"),
            ("[network.backend]\ntype = \"alloc\"\noverflow = \"vxlan\"\n", "overflow", "alloc"),
            ("[network.backend]\ntype = \"aws-vpc\"\noverflow = \"udp\"\n", "overflow", "udp"),
            ("[network.backend]\ntype = \"gce\"\noverflow = \"host-gw\"\n", "overflow", "host-gw"),
            ("[network.backend]\ntype = \"aws-vpc\"\nroute_limit = 0\n", "network.backend.route_limit", "0"),
        ];
        for (text, key, value) in cases {
            let err = load_text(text).err().unwrap_or_else(|| panic!("{text} accepted")).to_string();
            assert!(err.contains(key) && err.contains(value), "{text}: {err}");
        }
        let ok = load_text("[network.backend]\ntype = \"aws-vpc\"\noverflow = \"vxlan\"\nroute_limit = 3\n").unwrap();
        assert_eq!(ok.config.network.backend.overflow(), Some(crate::network::backend::Overflow::Vxlan));
    }

    #[test]
    fn underlay_cidrs_are_read() {
        let loaded = load_text("[agent]\nunderlay_cidrs = [\"192.0.2.0/24\", \"198.51.100.0/25\"]\n").unwrap();
        let want: Vec<ipnet::IpNet> = vec!["192.0.2.0/24".parse().unwrap(), "198.51.100.0/25".parse().unwrap()];
        assert_eq!(loaded.config.agent.underlay(), want);
        assert!(Config::default().agent.underlay().is_empty());
    }

    #[test]
    fn password_is_never_shown() {
        let loaded = load_text("[store]\nusername = \"u\"\npassword = \"hunter2\"\n").unwrap();
        let shown = format!("{:?} {:?}", loaded.config, loaded.describe());
        assert!(!shown.contains("hunter2"), "{shown}");
        // Nine digits: the error names a temporary file whose random name may hold a short one.
        let err = load_text("[store]\npassword = 987654321\n").err().unwrap().to_string();
        assert!(!err.contains("987654321"), "{err}");
    }

    #[test]
    fn cloud_endpoints_are_read_and_checked() {
        let loaded = load_text(
            "[cloud]\naws_endpoint_url = \"http://127.0.0.1:5000\"\ngce_endpoint = \"https://compute.example\"\n",
        )
        .unwrap();
        assert_eq!(loaded.config.cloud.aws_endpoint_url, "http://127.0.0.1:5000");
        assert_eq!(loaded.config.cloud.gce_endpoint, "https://compute.example");
        assert_eq!(Config::default().cloud, CloudSection::default(), "empty: the public endpoints");
        let err = load_text("[cloud]\n\ngce_endpoint = \"compute.example\"\n").err().unwrap().to_string();
        assert!(
            err.contains("cloud.gce_endpoint") && err.contains("compute.example") && err.contains("line 3"),
            "{err}"
        );
    }

    /// The endpoints left `[network.backend]`, which `weft network apply` publishes to every host.
    #[test]
    fn backend_endpoints_name_where_they_moved() {
        let cases = [
            (
                "type = \"aws-vpc\"\nendpoint_url = \"http://x\"",
                "network.backend.endpoint_url",
                "cloud.aws_endpoint_url",
            ),
            ("type = \"gce\"\nendpoint = \"http://x\"", "network.backend.endpoint", "cloud.gce_endpoint"),
        ];
        for (backend, old, new) in cases {
            let err = load_text(&format!("[network]\ncidr = \"10.244.0.0/16\"\n[network.backend]\n{backend}\n"))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(old) && err.contains(&format!("moved to {new}")), "{err}");
            assert!(err.contains("line 5"), "{err}");
        }
    }

    #[test]
    fn log_format_and_level_are_read_and_checked() {
        let loaded = load_text("[agent]\nlog_format = \"json\"\nlog_level = \"weft=debug\"\n").unwrap();
        assert_eq!(loaded.config.agent.log_format, crate::logging::LogFormat::Json);
        assert_eq!(loaded.config.agent.log_level, "weft=debug");
        assert_eq!(Config::default().agent.log_format, crate::logging::LogFormat::Text);
        let err = load_text("[agent]\n\nlog_format = \"xml\"\n").err().unwrap().to_string();
        assert!(err.contains("agent.log_format") && err.contains("xml") && err.contains("line 3"), "{err}");
        let err = load_text("[agent]\nlog_level = \"weft=loud\"\n").err().unwrap().to_string();
        assert!(err.contains("agent.log_level") && err.contains("weft=loud") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn line_lookup() {
        let text = "[agent]\niface = []\n\n[network.backend]\ntype = \"vxlan\"\n";
        assert_eq!(line_of(text, "agent.iface"), Some(2));
        assert_eq!(line_of(text, "network.backend.type"), Some(5));
        assert_eq!(line_of(text, "network.cidr"), None);
    }
}
