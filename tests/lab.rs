//! `weft lab` end to end, and the multi-host harness the kernel tests are built on. Needs root
//! (network namespaces): fails, never skips, without it.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{require_root, Cluster, WEFT};
use weft::lab::{agents, wire, LAB_PREFIX};

const ALLOC: &str = "cidr = \"10.244.0.0/16\"\n[network.backend]\ntype = \"alloc\"";

fn weft(args: &[&str]) -> Output {
    Command::new(WEFT).args(args).env("NO_COLOR", "1").output().expect("run weft")
}

fn ok(args: &[&str]) -> String {
    let out = weft(args);
    assert!(
        out.status.success(),
        "weft {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `weft lab down` when the test ends, passed or not.
struct LabGuard;

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = weft(&["lab", "down"]);
    }
}

/// The lab uses fixed names, so its whole life cycle is one test: tests run in parallel.
#[test]
fn lab_up_status_down() {
    require_root();
    let existing = wire::namespaces_with_prefix(LAB_PREFIX).unwrap();
    assert!(
        existing.is_empty() && !Path::new("/run/weft-lab").exists(),
        "a weft lab already exists on this machine ({existing:?}); this test would replace it: \
         run `weft lab down` first"
    );
    let _guard = LabGuard;

    let up = ok(&["lab", "up", "--hosts", "2", "--backend", "alloc"]);
    for expected in [
        "leased 10.244.",
        "198.51.100.11",
        "198.51.100.12",
        "from \\ to",
        "ip netns exec weft-lab-h1 bash",
        "weft lab down",
    ] {
        assert!(up.contains(expected), "no {expected:?} in:\n{up}");
    }
    // alloc installs no routes: pods do not reach each other, and the matrix says so.
    assert!(up.contains('✗'), "{up}");
    let namespaces = wire::namespaces_with_prefix(LAB_PREFIX).unwrap();
    assert_eq!(namespaces, ["weft-lab-h1", "weft-lab-h1-pod", "weft-lab-h2", "weft-lab-h2-pod", "weft-lab-sw"]);
    let pids: Vec<u32> = ["h1", "h2"]
        .iter()
        .map(|h| {
            let text = std::fs::read_to_string(format!("/run/weft-lab/{h}/pid")).unwrap();
            text.trim().parse().unwrap()
        })
        .collect();
    assert!(pids.iter().all(|p| agents::is_alive(*p)), "{pids:?}");

    let again = weft(&["lab", "up", "--hosts", "2", "--backend", "alloc"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("weft lab down"), "{err}");

    let status = ok(&["lab", "status"]);
    assert!(status.contains("h1    weft-lab-h1  running (pid"), "{status}");
    assert_eq!(status.matches(" ready\n").count(), 2, "{status}");
    assert!(status.contains("from \\ to"), "{status}");

    // -o json: hosts, leases and pings parsed back; alloc's ✗ is expected, so the lab is ok.
    let shown: serde_json::Value = serde_json::from_str(&ok(&["lab", "status", "-o", "json"])).unwrap();
    assert_eq!(shown["hosts"].as_array().unwrap().len(), 2, "{shown}");
    assert_eq!(shown["leases"][0]["backend"], "alloc", "{shown}");
    let pings = shown["pings"].as_array().unwrap();
    assert_eq!(pings.len(), 2, "{shown}");
    assert!(pings.iter().all(|p| p["reachable"] == false), "{shown}");
    assert_eq!(shown["ok"], true, "{shown}");
    // Each host's own `weft check connectivity` ran, as that host: one peer each, not reached.
    let checks = shown["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{shown}");
    for check in checks {
        assert!(check["error"].is_null(), "{shown}");
        let peers = check["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1, "{shown}");
        assert_eq!((&peers[0]["reachable"], &peers[0]["path"]), (&false.into(), &"alloc".into()), "{shown}");
    }
    assert!(status.contains("Each host to its peers' subnets") && status.contains("0/1 peer subnets"), "{status}");
    // A lease of another backend makes the ✗ a failure: status exits 1 (and says so in JSON).
    let lab_config = "/run/weft-lab/weft.toml";
    ok(&["--config", lab_config, "leases", "reserve", "10.244.200.0/24", "--public-ip", "198.51.100.99"]);
    let failing = weft(&["lab", "status"]);
    assert_eq!(failing.status.code(), Some(1), "{failing:?}");
    let err = String::from_utf8_lossy(&failing.stderr);
    assert!(err.contains("pod-to-pod ping(s) got no answer"), "{err}");
    let failing = weft(&["lab", "status", "-o", "json"]);
    assert_eq!(failing.status.code(), Some(1));
    let shown: serde_json::Value = serde_json::from_slice(&failing.stdout).unwrap();
    assert_eq!(shown["ok"], false, "{shown}");
    ok(&["--config", lab_config, "leases", "release", "10.244.200.0/24"]);
    ok(&["lab", "status"]);

    let down = ok(&["lab", "down"]);
    assert!(down.contains("stopped 2 agent(s), deleted 5 namespace(s)"), "{down}");
    assert_eq!(wire::namespaces_with_prefix(LAB_PREFIX).unwrap(), Vec::<String>::new());
    assert!(!Path::new("/run/weft-lab").exists());
    assert!(pids.iter().all(|p| !agents::is_alive(*p)), "{pids:?}");

    let twice = ok(&["lab", "down"]);
    assert!(twice.contains("no lab to remove"), "{twice}");
    let status = weft(&["lab", "status"]);
    assert!(!status.status.success());

    // Dual-stack: IPv6 underlay and pods, vxlan's second device, every pod reaching every other
    // over both families (`lab up` exits non-zero on any ✗).
    let up = ok(&["lab", "up", "--hosts", "2", "--backend", "vxlan", "--ipv6"]);
    for expected in ["and 2001:db8::/64", "(IPv6)", "Pod to pod ping over IPv6"] {
        assert!(up.contains(expected), "no {expected:?} in:\n{up}");
    }
    let shown: serde_json::Value = serde_json::from_str(&ok(&["lab", "status", "-o", "json"])).unwrap();
    let pings = shown["pings_v6"].as_array().unwrap_or_else(|| panic!("no IPv6 pings: {shown}"));
    assert_eq!(pings.len(), 2, "{shown}");
    assert!(pings.iter().all(|p| p["reachable"] == true), "{shown}");
    let down = ok(&["lab", "down"]);
    assert!(down.contains("stopped 2 agent(s)"), "{down}");

    // IPv6-only: pods with an IPv6 address alone, no IPv4 matrix, every pod reaching every other
    // over IPv6; the leases are flannel's IPv6-only ones, each matched to its host.
    let up = ok(&["lab", "up", "--hosts", "2", "--backend", "host-gw", "--ipv6-only"]);
    for expected in ["(IPv6 only, mtu 1500)", "Pod to pod ping over IPv6"] {
        assert!(up.contains(expected), "no {expected:?} in:\n{up}");
    }
    assert!(!up.contains("Pod to pod ping, average"), "an IPv4 matrix in an IPv6-only lab:\n{up}");
    let shown: serde_json::Value = serde_json::from_str(&ok(&["lab", "status", "-o", "json"])).unwrap();
    assert!(shown.get("pings").is_none(), "{shown}");
    let pings = shown["pings_v6"].as_array().unwrap_or_else(|| panic!("no IPv6 pings: {shown}"));
    assert!(pings.len() == 2 && pings.iter().all(|p| p["reachable"] == true), "{shown}");
    let leases = shown["leases"].as_array().unwrap();
    assert!(leases.iter().all(|l| l["host"].is_string() && l["subnet"].as_str().unwrap().contains(':')), "{shown}");
    ok(&["lab", "down"]);
}

#[test]
fn harness_hosts_reach_each_other_on_the_underlay() {
    let cluster = Cluster::new(2);
    let (h1, h2) = (cluster.host(1), cluster.host(2));
    assert!(cluster.ping(&h1.ns, h2.addr).is_some(), "h1 → h2");
    assert!(cluster.ping(&h2.ns, h1.addr).is_some(), "h2 → h1");
    let addrs = cluster.ip_json(&h1.ns, &["-4", "addr", "show", "dev", "eth0"]);
    assert_eq!(addrs[0]["addr_info"][0]["local"], "198.51.100.11", "{addrs}");
    assert_eq!(addrs[0]["mtu"], 1500, "{addrs}");
}

#[test]
fn harness_runs_agents_against_etcd_in_a_service_namespace() {
    let mut cluster = Cluster::with_etcd(2);
    cluster.write_config(ALLOC);
    cluster.weft_ok(&["network", "apply"]);
    cluster.start_agent(1, &[]);
    cluster.start_agent(2, &[]);
    let (s1, s2) = (cluster.wait_subnet(1), cluster.wait_subnet(2));
    assert_ne!(s1.subnet, s2.subnet);
    let keys = cluster.etcdctl(&["get", "--keys-only", "--prefix", "/coreos.com/network/subnets/"]);
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 2, "{keys}");
    for i in [1, 2] {
        assert_eq!(cluster.readyz(i), Some(200), "{}", cluster.agent_log(i));
    }
    // A pod reaches its host's bridge and routes everything else through it.
    let pod = cluster.make_pod(1, s1);
    let pod_ns = cluster.pod_ns(1);
    assert!(cluster.ping(&pod_ns, pod.gateway.addr()).is_some());
    let routes = cluster.ip_json(&pod_ns, &["-4", "route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], pod.gateway.addr().to_string(), "{routes}");
    cluster.stop_agent(2);
    assert_eq!(cluster.readyz(2), None);
}

#[test]
fn harness_cleans_up_when_a_test_panics() {
    require_root();
    let seen: Arc<Mutex<Option<(String, u32)>>> = Arc::default();
    let inside = seen.clone();
    let result = std::panic::catch_unwind(move || {
        let mut cluster = Cluster::new(2);
        cluster.write_config(ALLOC);
        cluster.weft_ok(&["network", "apply"]);
        cluster.start_agent(1, &[]);
        cluster.wait_subnet(1);
        let pid = cluster.agent_pid(1).unwrap();
        *inside.lock().unwrap() = Some((cluster.topology.prefix.clone(), pid));
        panic!("deliberate failure inside a cluster test");
    });
    assert!(result.is_err());
    let (prefix, pid) = seen.lock().unwrap().clone().expect("the cluster was built");
    assert_eq!(wire::namespaces_with_prefix(&prefix).unwrap(), Vec::<String>::new());
    std::thread::sleep(Duration::from_millis(100));
    assert!(!agents::is_alive(pid), "agent {pid} outlived its cluster");
}
