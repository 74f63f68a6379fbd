//! `weft-cni` with Debian's real bridge and host-local plugins: ADD puts a veth with an address
//! from the host's subnet into a pod namespace, CHECK passes, DEL removes it. Everything happens
//! in namespaces this test creates; the machine's own namespace is never touched.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::cni::{self, Attachment};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use weft::netns::Netns;

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "tests/cni.rs creates network namespaces and needs root (CI={}): run it as root",
            std::env::var("CI").unwrap_or_default()
        );
    }
}

/// A host namespace (where cni0 lives) and a pod namespace, deleted even when the test panics.
struct Namespaces {
    host: Netns,
    pod: Netns,
}

impl Namespaces {
    fn new() -> Namespaces {
        let id = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let host = Netns::create(&format!("wcni{id}-host")).expect("create the host namespace");
        // Built field by field so that a failure creating the pod still removes the host.
        let guard = HostOnly(Some(host));
        let pod = Netns::create(&format!("wcni{id}-pod")).expect("create the pod namespace");
        Namespaces { host: guard.take(), pod }
    }
}

struct HostOnly(Option<Netns>);

impl HostOnly {
    fn take(mut self) -> Netns {
        self.0.take().expect("host namespace")
    }
}

impl Drop for HostOnly {
    fn drop(&mut self) {
        if let Some(ns) = self.0.take() {
            let _ = ns.delete();
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = self.pod.delete();
        let _ = self.host.delete();
    }
}

/// `ip -j ...` inside `ns`, parsed.
fn ip_json(ns: &Netns, args: &[&str]) -> Value {
    let out = Command::new("ip").args(["-n", &ns.name, "-j"]).args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()))
}

fn veths(ns: &Netns) -> Vec<String> {
    ip_json(ns, &["link", "show", "type", "veth"])
        .as_array()
        .map(|links| links.iter().filter_map(|l| l["ifname"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn ipv4_of(ns: &Netns, ifname: &str) -> Option<Ipv4Net> {
    let links = ip_json(ns, &["-4", "addr", "show", "dev", ifname]);
    let info = links.get(0)?.get("addr_info")?.get(0)?;
    format!("{}/{}", info["local"].as_str()?, info["prefixlen"].as_u64()?).parse().ok()
}

#[test]
fn add_check_del_with_the_real_bridge_and_host_local() {
    require_root();
    cni::ensure_plugins();
    let ns = Namespaces::new();
    let state = tempfile::tempdir().expect("temp dir");
    let subnet_file = state.path().join("subnet.env");
    // The agent masquerades (FLANNEL_IPMASQ=true), so the bridge must not: no iptables needed.
    std::fs::write(
        &subnet_file,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .expect("write subnet.env");
    let conf = cni::plugin_conf("weft-test", &subnet_file, state.path());
    let pod = Attachment { container_id: "c0ffee".into(), netns: ns.pod.path.clone(), ifname: "eth0".into() };

    let result = cni::call(&ns.host, "ADD", &conf, &pod).ok();
    assert_eq!(result["cniVersion"], "1.0.0", "{result}");
    let address: Ipv4Net = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"));
    let subnet: Ipv4Net = "10.244.7.0/24".parse().expect("subnet");
    assert!(subnet.contains(&address.addr()), "{address} outside {subnet}");
    assert_eq!(result["ips"][0]["gateway"], "10.244.7.1");

    // The pod side: eth0 with that address, MTU from subnet.env, a route to the cluster network.
    assert_eq!(ipv4_of(&ns.pod, "eth0"), Some(address));
    let eth0 = ip_json(&ns.pod, &["link", "show", "dev", "eth0"]);
    assert_eq!(eth0[0]["mtu"], 1450);
    let routes = ip_json(&ns.pod, &["-4", "route", "show"]);
    assert!(
        routes
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["dst"] == "10.244.0.0/16" && r["gateway"] == "10.244.7.1")),
        "no route to the cluster network: {routes}"
    );
    // The host side: cni0 holds the gateway address, and the pod's veth is enslaved to it.
    assert_eq!(ipv4_of(&ns.host, "cni0"), Some("10.244.7.1/24".parse().expect("gw")));
    let host_veths = veths(&ns.host);
    assert_eq!(host_veths.len(), 1, "{host_veths:?}");
    let veth = ip_json(&ns.host, &["link", "show", "dev", &host_veths[0]]);
    assert_eq!(veth[0]["master"], "cni0", "{veth}");

    let check = cni::call(&ns.host, "CHECK", &cni::with_prev_result(&conf, &result), &pod);
    check.ok();

    let del_conf = cni::with_prev_result(&conf, &result);
    cni::call(&ns.host, "DEL", &del_conf, &pod).ok();
    assert!(veths(&ns.host).is_empty(), "the host veth is gone");
    assert!(veths(&ns.pod).is_empty(), "the pod veth is gone");
    // DEL is idempotent; CHECK of a deleted container says so with code 3.
    cni::call(&ns.host, "DEL", &del_conf, &pod).ok();
    let gone = cni::call(&ns.host, "CHECK", &del_conf, &pod);
    assert!(!gone.success);
    assert_eq!(gone.json()["code"], 3, "{gone:?}");

    // The address went back to the pool: the next pod may get it again.
    let again = cni::call(&ns.host, "ADD", &conf, &pod).ok();
    assert!(again["ips"][0]["address"].is_string(), "{again}");
    cni::call(&ns.host, "DEL", &cni::with_prev_result(&conf, &again), &pod).ok();
}

/// Each family subnet.env names is handed out: a dual-stack host's pod gets an address of each
/// with a route to each cluster network, an IPv6-only host's (flannel's file without the IPv4
/// lines) an IPv6 address alone. CHECK and DEL pass for both.
#[test]
fn every_family_of_the_subnet_env_and_only_those_is_handed_out() {
    require_root();
    cni::ensure_plugins();
    let v6_lines = "FLANNEL_IPV6_NETWORK=2001:db8:42::/56\nFLANNEL_IPV6_SUBNET=2001:db8:42:7::1/64\n";
    let dual = format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n{v6_lines}");
    for (lines, ipv4) in [(dual, true), (v6_lines.to_string(), false)] {
        let ns = Namespaces::new();
        let state = tempfile::tempdir().expect("temp dir");
        let subnet_file = state.path().join("subnet.env");
        std::fs::write(&subnet_file, format!("{lines}FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n")).expect("write");
        let conf = cni::plugin_conf("weft-test", &subnet_file, state.path());
        let pod = Attachment { container_id: "d0ab1e".into(), netns: ns.pod.path.clone(), ifname: "eth0".into() };
        let result = cni::call(&ns.host, "ADD", &conf, &pod).ok();
        let addresses: Vec<&str> =
            result["ips"].as_array().expect("ips").iter().filter_map(|ip| ip["address"].as_str()).collect();
        let v6: Vec<&&str> = addresses.iter().filter(|a| a.contains(':')).collect();
        assert_eq!(v6.len(), 1, "{result}");
        assert!(v6[0].starts_with("2001:db8:42:7::") && v6[0].ends_with("/64"), "{result}");
        assert_eq!(addresses.len(), if ipv4 { 2 } else { 1 }, "{result}");
        assert_eq!(ipv4_of(&ns.pod, "eth0").is_some(), ipv4, "the pod's IPv4 address");
        let routes = ip_json(&ns.pod, &["-6", "route", "show"]);
        let to_cluster = |r: &Value| r["dst"] == "2001:db8:42::/56" && r["gateway"] == "2001:db8:42:7::1";
        assert!(routes.as_array().is_some_and(|r| r.iter().any(to_cluster)), "{routes}");
        cni::call(&ns.host, "CHECK", &cni::with_prev_result(&conf, &result), &pod).ok();
        cni::call(&ns.host, "DEL", &cni::with_prev_result(&conf, &result), &pod).ok();
        assert!(veths(&ns.pod).is_empty(), "the pod veth is gone");
    }
}

fn write_subnet_env(dir: &std::path::Path, subnet: &str) -> std::path::PathBuf {
    let path = dir.join("subnet.env");
    std::fs::write(
        &path,
        format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
    )
    .expect("write subnet.env");
    path
}

fn address_of(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("no address in {result}")).to_string()
}

/// One container attached twice (eth0 and net1), as a runtime with several networks does: each
/// DEL releases its own veth and address, and neither leaks.
#[test]
fn two_interfaces_of_one_container_are_deleted_one_by_one() {
    require_root();
    cni::ensure_plugins();
    let ns = Namespaces::new();
    let state = tempfile::tempdir().expect("temp dir");
    let subnet_file = write_subnet_env(state.path(), "10.244.8.1/24");
    let conf = cni::plugin_conf("weft-test", &subnet_file, state.path());
    let pod =
        |ifname: &str| Attachment { container_id: "c0ffee2".into(), netns: ns.pod.path.clone(), ifname: ifname.into() };
    let (eth0, net1) = (pod("eth0"), pod("net1"));
    let first = cni::call(&ns.host, "ADD", &conf, &eth0).ok();
    let second = cni::call(&ns.host, "ADD", &conf, &net1).ok();
    assert_ne!(address_of(&first), address_of(&second));
    let ipam = state.path().join("ipam");
    assert_eq!(cni::allocations(&ipam, "weft-test").len(), 2);

    cni::call(&ns.host, "DEL", &cni::with_prev_result(&conf, &first), &eth0).ok();
    assert_eq!(veths(&ns.pod), ["net1"], "only eth0 went");
    assert_eq!(ipv4_of(&ns.pod, "net1").map(|a| a.to_string()), Some(address_of(&second)));
    assert_eq!(cni::allocations(&ipam, "weft-test").len(), 1, "net1 keeps its address");
    cni::call(&ns.host, "CHECK", &cni::with_prev_result(&conf, &second), &net1).ok();

    cni::call(&ns.host, "DEL", &cni::with_prev_result(&conf, &second), &net1).ok();
    assert!(veths(&ns.pod).is_empty() && veths(&ns.host).is_empty(), "every veth is gone");
    assert_eq!(cni::allocations(&ipam, "weft-test"), Vec::<String>::new(), "no address leaked");
}

/// A delegate that did its work and then failed (killed by the runtime's timeout, say): the
/// ADD fails, and the DEL the runtime sends next must still release the address and the veth.
#[test]
fn a_failed_add_is_released_by_the_following_del() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    cni::ensure_plugins();
    let ns = Namespaces::new();
    let state = tempfile::tempdir().expect("temp dir");
    let subnet_file = write_subnet_env(state.path(), "10.244.9.1/24");
    let wrappers = state.path().join("bin");
    std::fs::create_dir(&wrappers).expect("wrapper dir");
    let wrapper = wrappers.join("bridge-then-fail");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n[ \"$CNI_COMMAND\" = PROBE ] && exit 0\n\
             if [ \"$CNI_COMMAND\" = ADD ]; then {dir}/bridge >/dev/null; exit 1; fi\nexec {dir}/bridge\n",
            dir = cni::PLUGIN_DIR
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // A child forked by another test's thread may hold the new file open for writing (ETXTBSY)
    // for a moment; once it ran, it runs.
    let mut tries = 0;
    while let Err(e) = Command::new(&wrapper).env("CNI_COMMAND", "PROBE").status() {
        tries += 1;
        assert!(tries < 50, "the wrapper does not run: {e}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut conf = cni::plugin_conf("weft-test", &subnet_file, state.path());
    conf["delegate"] = json!({ "type": "bridge-then-fail", "bridge": "cni0", "isGateway": true });
    let pod = Attachment { container_id: "deadbeef".into(), netns: ns.pod.path.clone(), ifname: "eth0".into() };
    let path = format!("{}:{}", wrappers.display(), cni::PLUGIN_DIR);

    let add = cni::call_with_path(&ns.host, "ADD", &conf, &pod, &path);
    assert!(!add.success, "{add:?}");
    let ipam = state.path().join("ipam");
    assert_eq!(cni::allocations(&ipam, "weft-test").len(), 1, "the delegate took an address");
    assert_eq!(veths(&ns.pod), ["eth0"]);

    cni::call_with_path(&ns.host, "DEL", &conf, &pod, &path).ok();
    assert_eq!(cni::allocations(&ipam, "weft-test"), Vec::<String>::new(), "the address leaked");
    assert!(veths(&ns.pod).is_empty() && veths(&ns.host).is_empty(), "the veth leaked");
}

/// Errors need no namespace: they come before any delegate runs.
#[test]
fn errors_are_cni_error_json_with_the_specs_codes() {
    let state = tempfile::tempdir().expect("temp dir");
    let run = |command: &str, conf: &Value, env: &[(&str, &str)]| {
        let mut cmd = Command::new(cni::WEFT_CNI);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_NETNS", "/run/netns/nonexistent")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni::PLUGIN_DIR);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes())?;
                child.wait_with_output()
            })
            .expect("run weft-cni");
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), json)
    };
    let conf = cni::plugin_conf("weft-test", &state.path().join("missing.env"), state.path());

    let (status, version) = run("VERSION", &json!({"cniVersion": "1.0.0"}), &[]);
    assert_eq!(status, Some(0));
    assert_eq!(version["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"]));

    // No subnet.env yet: the agent is not up; the runtime should retry (11).
    let (status, err) = run("ADD", &conf, &[]);
    assert_eq!(status, Some(1));
    assert_eq!(err["code"], 11, "{err}");
    assert_eq!(err["cniVersion"], "1.0.0");
    assert!(err["msg"].as_str().is_some_and(|m| m.contains("missing.env")), "{err}");

    let (_, err) = run("ADD", &json!({"cniVersion": "0.1.0", "name": "x"}), &[]);
    assert_eq!(err["code"], 1, "{err}");
    let (_, err) = run("BOGUS", &conf, &[]);
    assert_eq!(err["code"], 4, "{err}");
    let (_, err) = run("ADD", &conf, &[("CNI_NETNS", "")]);
    assert_eq!(err["code"], 4, "{err}");
    let mut not_json = Command::new(cni::WEFT_CNI);
    let out = not_json
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/x")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/x")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run weft-cni");
    let err: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!(err["code"], 6, "{err}");

    // A delegate that is not on CNI_PATH.
    std::fs::write(
        state.path().join("s.env"),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .expect("write subnet.env");
    let conf = cni::plugin_conf("weft-test", &state.path().join("s.env"), state.path());
    let (_, err) = run("ADD", &conf, &[("CNI_PATH", "/nonexistent")]);
    assert_eq!(err["code"], 100, "{err}");
}
