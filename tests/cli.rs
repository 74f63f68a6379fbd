//! The CLI's machine-readable answers and exit codes, against a local store: `weft version`,
//! `-o json` on `network show`, `config check` and `leases list`, the feature check of
//! `config check`, and the log format and colours.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::weft::{Setup, WEFT};
use serde_json::Value;

/// A local store in the setup's directory and an alloc network.
fn local(extra: &str) -> Setup {
    let setup = Setup::new("");
    let store = setup.path("store");
    let text = format!(
        "{extra}\n[store]\nkind = \"local\"\npath = \"{}\"\n\n[network]\ncidr = \"10.244.0.0/16\"\n[network.backend]\ntype = \"alloc\"\n",
        store.display()
    );
    std::fs::write(&setup.config, text).unwrap();
    setup
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn version_says_version_revision_and_features() {
    let out = Command::new(WEFT).args(["version", "-o", "json"]).output().unwrap();
    assert!(out.status.success());
    let info = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let revision = info["revision"].as_str().unwrap();
    assert!(revision == "unknown" || revision.chars().all(|c| c.is_ascii_hexdigit()), "{revision}");
    let want: Vec<&str> =
        [("aws", cfg!(feature = "aws")), ("gce", cfg!(feature = "gce")), ("kube", cfg!(feature = "kube"))]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect();
    assert_eq!(info["features"], serde_json::json!(want));
    let text = Command::new(WEFT).arg("version").output().unwrap();
    let line = String::from_utf8_lossy(&text.stdout);
    assert!(line.starts_with(&format!("weft {} (rev {revision}) features: ", env!("CARGO_PKG_VERSION"))), "{line}");
    let flag = Command::new(WEFT).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&flag.stdout).trim(), format!("weft {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn network_show_config_check_and_leases_list_as_json() {
    let setup = local("");
    setup.ok(&["network", "apply"]);
    let shown = json(&setup.ok(&["network", "show", "-o", "json"]));
    assert_eq!(shown["network"], "10.244.0.0/16");
    assert_eq!(shown["subnet_len"], 24);
    assert_eq!(shown["backend"], "alloc");
    assert_eq!(shown["config"]["Network"], "10.244.0.0/16", "{shown}");
    assert_eq!(shown["config"]["Backend"]["Type"], "alloc");
    assert!(shown["subnet_count"].as_u64().unwrap() > 0);

    let checked = json(&setup.ok(&["config", "check", "--output", "json"]));
    assert_eq!(checked["file"], setup.config.display().to_string());
    let values = checked["values"].as_array().unwrap();
    let find = |key: &str| values.iter().find(|v| v["key"] == key).unwrap_or_else(|| panic!("no {key}: {checked}"));
    assert_eq!(find("store.kind")["value"], "local");
    assert!(find("store.kind")["source"].as_str().unwrap().contains("weft.toml"));
    assert_eq!(find("agent.ip_masq")["value"], false);
    assert_eq!(find("agent.log_format")["value"], "text");
    assert_eq!(find("agent.log_format")["source"], "default");

    setup.ok(&["leases", "reserve", "10.244.7.0/24", "--public-ip", "198.51.100.7"]);
    for flag in [&["-o", "json"][..], &["--json"][..]] {
        let args: Vec<&str> = ["leases", "list"].iter().copied().chain(flag.iter().copied()).collect();
        let leases = json(&setup.ok(&args));
        assert_eq!(leases.as_array().unwrap().len(), 1, "{leases}");
        assert_eq!(leases[0]["subnet"], "10.244.7.0/24");
        assert_eq!(leases[0]["public_ip"], "198.51.100.7");
        assert_eq!(leases[0]["reservation"], true);
    }
    let table = setup.ok(&["leases", "list", "-o", "text"]);
    assert!(table.starts_with("SUBNET"), "{table}");
    let bad = setup.weft(&["leases", "list", "-o", "yaml"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// An IPv6-only network from `network show`, and leases of it: a reservation by IPv6 subnet and
/// address (flannel's `0.0.0.0-0&…` key, PublicIP 0.0.0.0), listed by its IPv6 subnet and
/// released by it; an IPv4 subnet is refused, naming the network.
#[test]
fn an_ipv6_only_network_is_shown_and_its_leases_reserved_by_ipv6_subnet() {
    let setup = Setup::new("");
    let text = format!(
        "[store]\nkind = \"local\"\npath = \"{}\"\n\n[network]\nenable_ipv4 = false\nipv6_cidr = \"2001:db8:42::/56\"\n\
         [network.backend]\ntype = \"alloc\"\n",
        setup.path("store").display()
    );
    std::fs::write(&setup.config, text).unwrap();
    setup.ok(&["network", "apply"]);
    let shown = json(&setup.ok(&["network", "show", "-o", "json"]));
    assert!(shown.get("network").is_none(), "no IPv4 side: {shown}");
    assert_eq!(shown["ipv6"]["network"], "2001:db8:42::/56", "{shown}");
    assert_eq!(shown["config"]["EnableIPv4"], false, "{shown}");

    setup.ok(&["leases", "reserve", "2001:db8:42:7::/64", "--public-ip", "2001:db8::7"]);
    let leases = json(&setup.ok(&["leases", "list", "-o", "json"]));
    assert_eq!(leases.as_array().unwrap().len(), 1, "{leases}");
    assert_eq!(leases[0]["subnet"], "2001:db8:42:7::/64", "{leases}");
    assert_eq!(leases[0]["public_ip"], "0.0.0.0", "{leases}");
    assert_eq!(leases[0]["public_ipv6"], "2001:db8::7", "{leases}");
    let table = setup.ok(&["leases", "list", "-o", "text"]);
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(row.starts_with("2001:db8:42:7::/64") && row.contains("2001:db8::7"), "{table}");
    assert!(!table.contains("0.0.0.0"), "{table}");
    let refused = setup.weft(&["leases", "reserve", "10.244.7.0/24", "--public-ip", "198.51.100.7"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("2001:db8:42::/56") && err.contains("IPv6"), "{err}");
    setup.ok(&["leases", "release", "2001:db8:42:7::/64"]);
    assert_eq!(json(&setup.ok(&["leases", "list", "-o", "json"])), serde_json::json!([]));
}

/// Each backend and store that needs a feature: accepted when this build has it, else exit 2
/// naming the feature. The pure decision is unit-tested for every build in `build_info`.
#[test]
fn config_check_refuses_what_this_build_lacks() {
    let cases = [
        ("[network.backend]\ntype = \"aws-vpc\"\n", "backend aws-vpc", "aws", cfg!(feature = "aws")),
        ("[network.backend]\ntype = \"gce\"\n", "backend gce", "gce", cfg!(feature = "gce")),
    ];
    for (backend, what, feature, compiled) in cases {
        let setup = Setup::new(&format!("[store]\nkind = \"etcd\"\n[network]\ncidr = \"10.244.0.0/16\"\n{backend}"));
        let out = setup.weft(&["config", "check"]);
        let err = String::from_utf8_lossy(&out.stderr);
        if compiled {
            assert!(out.status.success(), "{err}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{err}");
            let want = format!("{what} needs the `{feature}` feature; this weft was built without it");
            assert!(err.contains(&want), "{err}");
        }
    }
    let setup = Setup::new("[store]\nkind = \"kube\"\n");
    let out = setup.weft(&["config", "check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "kube") {
        assert!(out.status.success(), "{err}");
    } else {
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("store kube needs the `kube` feature"), "{err}");
    }
}

/// IPv6 keys that cannot be used: `config check` exits 2 naming the key and the value.
#[test]
fn config_check_names_bad_ipv6_keys() {
    let network = |keys: &str, backend: &str| {
        format!("[store]\nkind = \"etcd\"\n[network]\n{keys}\n[network.backend]\ntype = \"{backend}\"\n")
    };
    let cases = [
        (network("cidr = \"2001:db8::/56\"", "host-gw"), "network.cidr", "2001:db8::/56"),
        (network("ipv6_cidr = \"10.245.0.0/16\"", "host-gw"), "network.ipv6_cidr", "10.245.0.0/16"),
        (network("ipv6_cidr = \"2001:db8::/56\"\nipv6_subnet_len = 129", "host-gw"), "network.ipv6_subnet_len", "129"),
        (network("ipv6_cidr = \"2001:db8::/56\"\nipv6_subnet_len = 48", "host-gw"), "network.ipv6_subnet_len", "48"),
        (network("enable_ipv4 = false", "host-gw"), "network.enable_ipv4", "false"),
        (network("enable_ipv4 = false\nipv6_cidr = \"10.245.0.0/16\"", "vxlan"), "network.ipv6_cidr", "10.245.0.0/16"),
        (
            format!("[agent]\npublic_ipv6 = \"198.51.100.1\"\n{}", network("", "host-gw")),
            "agent.public_ipv6",
            "198.51.100.1",
        ),
    ];
    for (text, key, value) in cases {
        let setup = Setup::new(&text);
        let out = setup.weft(&["config", "check"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(key) && err.contains(value), "{text}: {err}");
    }
    for keys in ["ipv6_cidr = \"2001:db8:42::/56\"", "enable_ipv4 = false\nipv6_cidr = \"2001:db8:42::/56\""] {
        let good = Setup::new(&network(keys, "host-gw"));
        let out = good.weft(&["config", "check"]);
        assert!(out.status.success(), "{keys}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// An agent's first log lines, its stderr a pipe.
fn agent_log(setup: &Setup, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut child = Command::new(WEFT)
        .args(args)
        .arg("--config")
        .arg(&setup.config)
        .args(["agent", "--public-ip", "198.51.100.9"])
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let subnet_file = setup.path("subnet.env");
    let start = Instant::now();
    while !subnet_file.exists() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let _ = child.wait();
    assert!(subnet_file.exists(), "the agent leased no subnet:\n{log}");
    log
}

#[test]
fn log_format_from_file_environment_and_flag_and_no_colours_on_a_pipe() {
    let agent =
        |setup: &Setup| format!("[agent]\nsubnet_file = \"{}\"\nlisten = \"\"\n", setup.path("subnet.env").display());
    // Text by default: no colour escapes on a pipe.
    let setup = local("");
    std::fs::write(&setup.config, format!("{}{}", agent(&setup), std::fs::read_to_string(&setup.config).unwrap()))
        .unwrap();
    setup.ok(&["network", "apply"]);
    let text = agent_log(&setup, &[], &[]);
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\u{1b}'), "colours on a pipe:\n{text}");
    let is_json = |log: &str| log.lines().filter(|l| !l.is_empty()).all(|l| serde_json::from_str::<Value>(l).is_ok());

    // The file says json; the environment says text; the flag says json again.
    let setup = local("");
    let body = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, format!("{}log_format = \"json\"\nlog_level = \"debug\"\n{body}", agent(&setup)))
        .unwrap();
    setup.ok(&["network", "apply"]);
    let from_file = agent_log(&setup, &[], &[]);
    assert!(is_json(&from_file) && from_file.contains("\"level\":\"DEBUG\""), "{from_file}");
    std::fs::remove_file(setup.path("subnet.env")).unwrap();
    let from_env = agent_log(&setup, &[("WEFT_AGENT__LOG_FORMAT", "text"), ("WEFT_AGENT__LOG_LEVEL", "info")], &[]);
    assert!(!is_json(&from_env) && from_env.contains("INFO") && !from_env.contains("DEBUG"), "{from_env}");
    std::fs::remove_file(setup.path("subnet.env")).unwrap();
    let from_flag = agent_log(&setup, &[("WEFT_AGENT__LOG_FORMAT", "text")], &["--log-format", "json"]);
    assert!(is_json(&from_flag), "{from_flag}");
}
