//! Calling `weft-cni` as a container runtime would, inside a host's network namespace, with
//! Debian's reference plugins (bridge, host-local) as delegates. Used by tests/cni.rs and by
//! multi-host tests that create pods through weft-cni.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use weft::netns::Netns;

pub const WEFT_CNI: &str = env!("CARGO_BIN_EXE_weft-cni");
/// Where Debian's `containernetworking-plugins` installs bridge, host-local and friends.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";

/// Makes sure the reference plugins are there, installing the Debian package if needed; panics
/// (never skips) when they cannot be had.
pub fn ensure_plugins() {
    let present = || ["bridge", "host-local"].iter().all(|p| Path::new(PLUGIN_DIR).join(p).exists());
    if present() {
        return;
    }
    let _ = Command::new("apt-get").arg("update").status();
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "containernetworking-plugins"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    assert!(
        present(),
        "CNI plugins missing in {PLUGIN_DIR} and `apt-get install containernetworking-plugins` failed ({status:?})"
    );
}

/// A plugin config as a conflist entry gives it: weft-cni reading `subnet_file`, keeping its
/// state and host-local's under `state_dir` (never the machine's /var/lib/cni).
pub fn plugin_conf(network: &str, subnet_file: &Path, state_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": network,
        "type": "weft-cni",
        "subnetFile": subnet_file,
        "dataDir": state_dir.join("weft-cni"),
        "ipam": { "dataDir": state_dir.join("ipam") },
    })
}

/// What one plugin call printed.
#[derive(Debug)]
pub struct CniOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("weft-cni printed no JSON ({e}): {self:?}"))
    }

    /// The call must have succeeded; its JSON result (Null when it printed nothing).
    pub fn ok(&self) -> Value {
        assert!(self.success, "weft-cni failed: {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
}

/// One container's attachment: which pod namespace, container ID and interface.
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
}

/// Runs `weft-cni` for `command` inside `host` (where the bridge lives), with `conf` on stdin.
pub fn call(host: &Netns, command: &str, conf: &Value, pod: &Attachment) -> CniOutput {
    call_with_path(host, command, conf, pod, PLUGIN_DIR)
}

/// [`call`] with another CNI_PATH (a directory of wrappers before the real plugins).
pub fn call_with_path(host: &Netns, command: &str, conf: &Value, pod: &Attachment, cni_path: &str) -> CniOutput {
    let mut cmd = host.command(WEFT_CNI).expect("a command in the host namespace");
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", &pod.netns)
        .env("CNI_IFNAME", &pod.ifname)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start weft-cni");
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("write the config");
    let out = child.wait_with_output().expect("weft-cni output");
    CniOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The addresses host-local holds under `ipam_dir` for `network` (one file per address).
pub fn allocations(ipam_dir: &Path, network: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(ipam_dir.join(network)) else { return Vec::new() };
    let mut held: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
        .collect();
    held.sort();
    held
}

/// `conf` with the ADD result as `prevResult`, as runtimes send it for CHECK and DEL.
pub fn with_prev_result(conf: &Value, result: &Value) -> Value {
    let mut conf = conf.clone();
    conf["prevResult"] = result.clone();
    conf
}
