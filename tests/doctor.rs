//! `weft doctor` in a host namespace of its own: every check passes on a prepared host, then each
//! ✗ is provoked one at a time (ip_forward off, the vxlan port taken, strict rp_filter, a FORWARD
//! policy of DROP, an unreachable store; aws-vpc against moto and an IMDSv2 double; gce against
//! the Compute test server and a metadata double). JSON output parsed, exit codes checked.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::cluster::{Cluster, WEFT};
use weft::doctor::Check;
use weft::netns::Netns;

const NETWORK: &str = "cidr = \"10.244.0.0/16\"\n\n[network.backend]\ntype = \"vxlan\"\n";

/// What one `weft doctor -o json` run gave: its exit code and the checks by name.
struct Run {
    code: i32,
    checks: BTreeMap<String, Check>,
    text: String,
}

impl Run {
    fn failed(&self) -> Vec<&str> {
        self.checks.values().filter(|c| !c.ok).map(|c| c.name.as_str()).collect()
    }

    fn check(&self, name: &str) -> &Check {
        self.checks.get(name).unwrap_or_else(|| panic!("no check {name}: {}", self.text))
    }
}

/// `weft --config <cluster's weft.toml> doctor -o json <extra>` in host 1's namespace.
fn doctor(cluster: &Cluster, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let out = cluster
        .host_ns(1)
        .command(WEFT)
        .expect("enter host 1")
        .arg("--config")
        .arg(cluster.path("weft.toml"))
        .args(["doctor", "-o", "json"])
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("WEFT_NO_NEXTHOP")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run weft doctor");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let list: Vec<Check> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let checks = list.into_iter().map(|c| (c.name.clone(), c)).collect();
    Run { code: out.status.code().unwrap_or(-1), checks, text }
}

/// Writes `/proc/sys/net/<path>` inside `ns` (sysctls under net are the namespace's own).
fn sysctl(ns: &Netns, path: &str, value: &str) {
    let file = format!("/proc/sys/net/{path}");
    let value = value.to_string();
    ns.run(move || std::fs::write(&file, value))
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("{path}: {e}"));
}

fn nft(ns: &Netns, args: &[&str]) {
    let out = ns.command("nft").expect("enter the namespace").args(args).output().expect("run nft");
    assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Host 1 on its own underlay, etcd in the service namespace, the network published; every
/// knob doctor looks at set so that all checks pass.
fn prepared(network: &str) -> Cluster {
    let cluster = Cluster::with_etcd(1);
    let config = cluster.write_config(network);
    let text = std::fs::read_to_string(&config).unwrap().replace("[agent]\n", "[agent]\niface = [\"eth0\"]\n");
    std::fs::write(&config, text).unwrap();
    cluster.weft_ok(&["network", "apply"]);
    let ns = cluster.host_ns(1);
    sysctl(&ns, "ipv4/ip_forward", "1");
    sysctl(&ns, "ipv4/conf/all/rp_filter", "0");
    sysctl(&ns, "ipv4/conf/eth0/rp_filter", "0");
    cluster
}

fn assert_only_failure(run: &Run, name: &str) {
    assert_eq!(run.code, 1, "{}", run.text);
    assert_eq!(run.failed(), [name], "{}", run.text);
    let check = run.check(name);
    assert!(check.fix.as_deref().is_some_and(|f| !f.is_empty()), "a failure carries a fix: {check:?}");
}

#[test]
fn kernel_and_store_checks_pass_then_fail_one_by_one() {
    let cluster = prepared(NETWORK);
    let ns = cluster.host_ns(1);
    let run = doctor(&cluster, &[], &[]);
    assert_eq!(run.code, 0, "{}", run.text);
    for name in [
        "store",
        "interface",
        "kernel.ip_forward",
        "kernel.vxlan",
        "udp_port",
        "kernel.rp_filter",
        "kernel.nexthops",
        "mtu",
        "firewall.forward",
    ] {
        assert!(run.check(name).ok, "{name}: {}", run.text);
    }
    assert!(run.check("store").detail.contains("backend vxlan"), "{}", run.text);
    assert!(run.check("interface").detail.contains("eth0") && run.check("interface").detail.contains("agent.iface"));
    assert!(run.check("mtu").detail.contains("overhead 50"), "{}", run.text);

    // net.ipv4.ip_forward = 0.
    sysctl(&ns, "ipv4/ip_forward", "0");
    let run = doctor(&cluster, &[], &[]);
    assert_only_failure(&run, "kernel.ip_forward");
    assert!(run.check("kernel.ip_forward").fix.as_deref().unwrap().contains("sysctl -w net.ipv4.ip_forward=1"));
    sysctl(&ns, "ipv4/ip_forward", "1");

    // The vxlan port held by a socket of someone else.
    let socket = ns.run(|| std::net::UdpSocket::bind("0.0.0.0:8472")).unwrap().expect("bind 8472 in the namespace");
    let run = doctor(&cluster, &[], &[]);
    assert_only_failure(&run, "udp_port");
    assert!(run.check("udp_port").fix.as_deref().unwrap().contains("network.backend.port"));
    drop(socket);

    // Strict reverse-path filtering on eth0, which carries no default route.
    sysctl(&ns, "ipv4/conf/eth0/rp_filter", "1");
    let run = doctor(&cluster, &[], &[]);
    assert_only_failure(&run, "kernel.rp_filter");
    sysctl(&ns, "ipv4/conf/eth0/rp_filter", "0");

    // iptables' FORWARD policy DROP: weft's accept rules cover it, unless agent.forward_rules is off.
    nft(&ns, &["add", "table", "ip", "filter"]);
    nft(&ns, &["add", "chain", "ip", "filter", "FORWARD", "{ type filter hook forward priority 0; policy drop; }"]);
    let run = doctor(&cluster, &[], &[]);
    assert_eq!(run.code, 0, "{}", run.text);
    assert!(run.check("firewall.forward").detail.contains("weft appends its accept rules"), "{}", run.text);
    let run = doctor(&cluster, &[], &[("WEFT_AGENT__FORWARD_RULES", "false")]);
    assert_only_failure(&run, "firewall.forward");
    assert!(run.check("firewall.forward").fix.as_deref().unwrap().starts_with("set agent.forward_rules = true"));
    nft(&ns, &["delete", "table", "ip", "filter"]);

    // The store at a wrong endpoint: the backend checks go on with weft.toml's [network].
    let wrong = cluster.etcd_endpoint().replace(":2379", ":2399");
    let run = doctor(&cluster, &["--store-endpoints", &wrong], &[]);
    assert_only_failure(&run, "store");
    assert!(run.check("store").fix.as_deref().unwrap().contains("store.endpoints"), "{}", run.text);
    assert!(run.checks.contains_key("udp_port"), "the vxlan checks still ran: {}", run.text);

    // Text output: a ✗ line and its fix, the same exit code.
    let out = cluster
        .host_ns(1)
        .command(WEFT)
        .unwrap()
        .arg("--config")
        .arg(cluster.path("weft.toml"))
        .args(["--store-endpoints", &wrong, "doctor"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("✗ store") && text.contains("fix: check store.endpoints"), "{text}");
    assert!(text.contains("✓ kernel.ip_forward"), "{text}");
}

#[test]
fn an_mtu_larger_than_the_interface_takes_fails_and_host_gw_skips_the_vxlan_checks() {
    let cluster = prepared("cidr = \"10.244.0.0/16\"\n\n[network.backend]\ntype = \"vxlan\"\nmtu = 1500\n");
    let run = doctor(&cluster, &[], &[]);
    assert_only_failure(&run, "mtu");
    assert!(run.check("mtu").fix.as_deref().unwrap().contains("network.backend.mtu = 1450"), "{}", run.text);
    let config = cluster.write_config("cidr = \"10.244.0.0/16\"\n\n[network.backend]\ntype = \"host-gw\"\n");
    let text = std::fs::read_to_string(&config).unwrap().replace("[agent]\n", "[agent]\niface = [\"eth0\"]\n");
    std::fs::write(&config, text).unwrap();
    cluster.weft_ok(&["network", "apply"]);
    let run = doctor(&cluster, &[], &[]);
    assert_eq!(run.code, 0, "{}", run.text);
    assert!(!run.checks.contains_key("udp_port") && !run.checks.contains_key("kernel.vxlan"), "{}", run.text);
    assert!(run.check("mtu").detail.contains("pods get MTU"), "{}", run.text);
}

#[test]
fn a_config_that_does_not_load_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weft.toml");
    std::fs::write(&config, "[agent]\nno_such_key = 1\n").unwrap();
    let out = std::process::Command::new(WEFT).arg("--config").arg(&config).arg("doctor").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
