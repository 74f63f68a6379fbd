//! The lab's files under `/run/weft-lab` (tmpfs: a reboot removes a lab along with its
//! namespaces) and the configs its agents read.
//!
//! ```text
//! /run/weft-lab/weft.toml        the lab's config (store and network), for `weft --config`
//! /run/weft-lab/store/           the embedded store all agents share
//! /run/weft-lab/h1/weft.toml     h1's agent config
//! /run/weft-lab/h1/subnet.env    written by h1's agent
//! /run/weft-lab/h1/agent.log     its stdout and stderr
//! /run/weft-lab/h1/pid           its process id
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::topology::{Node, HOST_IFACE};
use super::LabError;
use crate::config::{Config, StoreKind, StoreSection};
use crate::network::backend::BackendConfig;

pub const STATE_DIR: &str = "/run/weft-lab";
/// Each host namespace has a loopback of its own, so every agent can use the default address.
pub const AGENT_LISTEN: &str = "127.0.0.1:9810";
/// Resync often: in a lab, a hand-deleted route should come back while one watches.
const LAB_RESYNC: Duration = Duration::from_secs(5);

/// Where a lab keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabDir {
    pub root: PathBuf,
}

impl Default for LabDir {
    fn default() -> Self {
        LabDir::new(STATE_DIR)
    }
}

impl LabDir {
    pub fn new(root: impl Into<PathBuf>) -> LabDir {
        LabDir { root: root.into() }
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("weft.toml")
    }

    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    pub fn host_dir(&self, node: &Node) -> PathBuf {
        self.root.join(&node.name)
    }

    pub fn host_config(&self, node: &Node) -> PathBuf {
        self.host_dir(node).join("weft.toml")
    }

    pub fn subnet_file(&self, node: &Node) -> PathBuf {
        self.host_dir(node).join("subnet.env")
    }

    pub fn log(&self, node: &Node) -> PathBuf {
        self.host_dir(node).join("agent.log")
    }

    pub fn pid_file(&self, node: &Node) -> PathBuf {
        self.host_dir(node).join("pid")
    }

    /// The agent's recorded pid, if any.
    pub fn read_pid(&self, node: &Node) -> Option<u32> {
        std::fs::read_to_string(self.pid_file(node)).ok()?.trim().parse().ok()
    }

    pub fn write_pid(&self, node: &Node, pid: u32) -> Result<(), LabError> {
        let path = self.pid_file(node);
        std::fs::write(&path, format!("{pid}\n")).map_err(LabError::io(format!("write {}", path.display())))
    }

    /// Writes `text` to `path` under the lab, creating its directory.
    pub fn write(&self, path: &Path, text: &str) -> Result<(), LabError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(LabError::io(format!("create {}", dir.display())))?;
        }
        std::fs::write(path, text).map_err(LabError::io(format!("write {}", path.display())))
    }
}

/// The lab's config: the embedded store under `dir`, and the network and agent settings of
/// `base` (a user's file) or weft's defaults; `backend` replaces the base's backend unless it
/// is the same type (then the file's options for it are kept).
pub fn lab_config(base: Option<&Config>, backend: Option<BackendConfig>, dir: &LabDir) -> Config {
    let mut config = Config::default();
    match base {
        Some(base) => {
            config.network = base.network.clone();
            config.agent = base.agent.clone();
        }
        None => config.agent.resync = LAB_RESYNC,
    }
    if let Some(backend) = backend {
        if backend.kind() != config.network.backend.kind() {
            config.network.backend = backend;
        }
    }
    config.store = StoreSection { kind: StoreKind::Local, path: dir.store(), ..StoreSection::default() };
    config
}

/// One host's agent config: the lab's, with this host's interface, files and listen address.
/// The public IP is left to be found on `eth0`, as on a real host.
pub fn host_config(lab: &Config, node: &Node, dir: &LabDir) -> Config {
    let mut config = lab.clone();
    let agent = &mut config.agent;
    agent.iface = vec![HOST_IFACE.to_string()];
    agent.iface_regex.clear();
    agent.iface_can_reach.clear();
    agent.public_ip.clear();
    agent.subnet_file = dir.subnet_file(node);
    agent.listen = AGENT_LISTEN.to_string();
    config
}

/// The config as weft.toml.
pub fn render(config: &Config, comment: &str) -> Result<String, LabError> {
    let body = toml::to_string(config).map_err(|e| LabError::Invalid(format!("render the lab's weft.toml: {e}")))?;
    Ok(format!("# {comment}\n\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Flags};
    use crate::lab::Topology;
    use crate::network::backend::NoOptions;

    fn alloc() -> BackendConfig {
        BackendConfig::Alloc(NoOptions {})
    }

    #[test]
    fn lab_defaults() {
        let dir = LabDir::default();
        let config = lab_config(None, Some(alloc()), &dir);
        assert_eq!(config.store.kind, StoreKind::Local);
        assert_eq!(config.store.path, Path::new("/run/weft-lab/store"));
        assert_eq!(config.network.cidr, "10.244.0.0/16");
        assert_eq!(config.network.backend, alloc());
        assert_eq!(config.agent.resync, LAB_RESYNC);
        let default_backend = lab_config(None, None, &dir).network.backend;
        assert_eq!(default_backend.type_name(), "vxlan");
    }

    #[test]
    fn a_users_file_gives_network_and_agent_but_not_the_store() {
        let mut base = Config::default();
        base.network.cidr = "10.50.0.0/16".into();
        base.network.backend =
            BackendConfig::Vxlan(crate::network::backend::VxlanConfig { vni: 7, ..Default::default() });
        base.agent.ip_masq = true;
        base.store.endpoints = vec!["http://192.0.2.1:2379".into()];
        let dir = LabDir::new("/tmp/lab");
        let config = lab_config(Some(&base), None, &dir);
        assert_eq!(config.network, base.network);
        assert!(config.agent.ip_masq);
        assert_eq!(config.store.kind, StoreKind::Local);
        // Same type: the file's options stay; another type replaces them.
        let vxlan = BackendConfig::Vxlan(Default::default());
        let same = lab_config(Some(&base), Some(vxlan), &dir);
        assert_eq!(same.network.backend, base.network.backend);
        let other = lab_config(Some(&base), Some(alloc()), &dir);
        assert_eq!(other.network.backend, alloc());
    }

    #[test]
    fn host_config_and_its_file_round_trip() {
        let dir = LabDir::new("/run/weft-lab");
        let node = Topology::lab(2).unwrap().host(2);
        let lab = lab_config(None, Some(alloc()), &dir);
        let host = host_config(&lab, &node, &dir);
        assert_eq!(host.agent.iface, ["eth0"]);
        assert_eq!(host.agent.subnet_file, Path::new("/run/weft-lab/h2/subnet.env"));
        assert_eq!(host.agent.listen, "127.0.0.1:9810");
        let text = render(&host, "h2").unwrap();
        assert!(text.contains("type = \"alloc\""), "{text}");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &text).unwrap();
        let loaded = config::load(file.path(), true, Flags::default()).unwrap();
        assert_eq!(loaded.config, host, "{text}");
    }
}
