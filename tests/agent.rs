//! The agent end to end against a real etcd: separate `weft agent` processes, the CLI, and
//! flannel-written data.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::etcd::EtcdServer;
use common::weft::{read_subnet, Setup};
use weft::lease::LeaseAttrs;
use weft::leasing::{self, LeaseRequest};
use weft::network::{Network, NetworkSection};
use weft::store::etcd::{EtcdOptions, EtcdStore};

const ALLOC: &str = "cidr = \"10.244.0.0/16\"\n[network.backend]\ntype = \"alloc\"";
const FLANNEL_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.250.0","Backend":{"Type":"alloc"}}"#;
const FLANNEL_LEASE: &str = r#"{"PublicIP":"198.51.100.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#;

fn key(subnet: &str) -> String {
    format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-"))
}

#[test]
fn two_agents_get_two_subnets_and_see_each_other() {
    let etcd = EtcdServer::start();
    let setup = Setup::etcd(&etcd.endpoint, ALLOC);
    setup.ok(&["network", "apply"]);
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    let mut b = setup.agent("b", "198.51.100.2", &[]);
    let (sa, sb) = (a.wait_subnet(), b.wait_subnet());
    assert_ne!(sa, sb);
    for agent in [&a, &b] {
        agent.wait_for("the other lease", 10, |ag| ag.metric("weft_leases_watched") == 1.0);
        assert_eq!(agent.get("/readyz").0, 200);
        assert_eq!(agent.get("/healthz").0, 200);
    }
    // What weft wrote is flannel's JSON.
    let value = etcd.etcdctl(&["get", "--print-value-only", &key(&sa)]);
    assert_eq!(value.trim(), r#"{"PublicIP":"198.51.100.1","PublicIPv6":null,"BackendType":"alloc"}"#);
    let env = std::fs::read_to_string(&a.subnet_file).unwrap();
    assert!(env.starts_with("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244."), "{env}");
    assert!(env.contains("\nFLANNEL_IPMASQ=false\n"), "{env}");
    let list: serde_json::Value = serde_json::from_str(&setup.ok(&["leases", "list", "--json"])).unwrap();
    let mut ips: Vec<_> =
        list.as_array().unwrap().iter().map(|l| l["public_ip"].as_str().unwrap().to_string()).collect();
    ips.sort();
    assert_eq!(ips, ["198.51.100.1", "198.51.100.2"]);
    assert!(list[0]["expires"].is_string(), "{list}");
    a.stop();
    b.stop();
}

#[test]
fn restart_takes_back_the_same_subnet() {
    let etcd = EtcdServer::start();
    let setup = Setup::etcd(&etcd.endpoint, ALLOC);
    setup.ok(&["network", "apply"]);
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    let first = a.wait_subnet();
    a.stop();
    // Even without the subnet.env of the last run, the lease held by our public IP is ours.
    std::fs::remove_file(&a.subnet_file).unwrap();
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    assert_eq!(a.wait_subnet(), first);
    assert_eq!(
        etcd.etcdctl(&["get", "--prefix", "--keys-only", "/coreos.com/network/subnets/"]).split_whitespace().count(),
        1
    );
    a.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_acquisitions_get_fifty_subnets() {
    let etcd = EtcdServer::start();
    // 64 subnets for 50 hosts: most random picks collide, so the create-if-absent write is what
    // keeps them apart.
    let section = NetworkSection {
        cidr: "10.244.0.0/16".into(),
        subnet_min: "10.244.1.0".into(),
        subnet_max: "10.244.64.0".into(),
        ..Default::default()
    };
    let network = Arc::new(Network::new(&section).unwrap());
    let mut tasks = Vec::new();
    for host in 0..50u8 {
        let endpoint = etcd.endpoint.clone();
        let network = network.clone();
        tasks.push(tokio::spawn(async move {
            let options = EtcdOptions { endpoints: vec![endpoint], ..Default::default() };
            let store = EtcdStore::connect(options).await.unwrap();
            let attrs = LeaseAttrs::new([198, 51, 100, host].into(), "alloc", serde_json::Value::Null);
            let request = LeaseRequest::new(&network, &attrs, Duration::from_secs(60));
            leasing::acquire(&store, &request).await.unwrap().subnet()
        }));
    }
    let mut subnets = HashSet::new();
    for task in tasks {
        assert!(subnets.insert(task.await.unwrap()), "a subnet was handed out twice");
    }
    assert_eq!(subnets.len(), 50);
    let keys = etcd.etcdctl(&["get", "--prefix", "--keys-only", "/coreos.com/network/subnets/"]);
    assert_eq!(keys.split_whitespace().count(), 50);
}

#[test]
fn reservations_are_honoured_and_never_taken() {
    let etcd = EtcdServer::start();
    // Two allocatable subnets; one reserved for .9.
    let setup = Setup::etcd(
        &etcd.endpoint,
        "cidr = \"10.244.0.0/16\"\nsubnet_min = \"10.244.1.0\"\nsubnet_max = \"10.244.2.0\"\n[network.backend]\ntype = \"alloc\"",
    );
    setup.ok(&["network", "apply"]);
    setup.ok(&["leases", "reserve", "10.244.1.0/24", "--public-ip", "198.51.100.9"]);
    let mut other = setup.agent("other", "198.51.100.1", &[]);
    assert_eq!(other.wait_subnet(), "10.244.2.0/24");
    // The network is now full for everyone but the reservation's owner.
    let mut third = setup.agent("third", "198.51.100.3", &[]);
    third.wait_for("a network-full readiness error", 10, |ag| {
        let (status, body) = ag.get("/readyz");
        status == 503 && body.contains("full")
    });
    let mut owner = setup.agent("owner", "198.51.100.9", &[]);
    assert_eq!(owner.wait_subnet(), "10.244.1.0/24");
    // Still a reservation: no etcd lease attached.
    let json = etcd.etcdctl(&["get", "-w", "json", &key("10.244.1.0/24")]);
    assert!(!json.contains("\"lease\""), "reservation got a TTL: {json}");
    let table = setup.ok(&["leases", "list"]);
    assert!(table.contains("never (reserved)"), "{table}");
    other.stop();
    third.stop();
    owner.stop();
}

/// A create whose answer was lost can land after the agent took another subnet (see the chaos
/// suite): a second lease with our public IP is an orphan of ours and goes; a reservation for
/// our address is the operator's and stays.
#[test]
fn an_orphaned_lease_of_ours_is_deleted_and_a_reservation_kept() {
    let etcd = EtcdServer::start();
    let setup = Setup::etcd(&etcd.endpoint, ALLOC);
    setup.ok(&["network", "apply"]);
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    let held = a.wait_subnet();
    a.wait_for("readiness", 10, |ag| ag.get("/readyz").0 == 200);
    let ours = etcd.etcdctl(&["get", "--print-value-only", &key(&held)]).trim().to_string();
    assert!(ours.contains("198.51.100.1"), "{ours}");
    // The orphan: our lease's value under another subnet, on an etcd lease as the agent writes.
    let granted = etcd.etcdctl(&["lease", "grant", "600"]);
    let id = granted.split_whitespace().nth(1).unwrap_or_else(|| panic!("lease grant said {granted}"));
    let (orphan, reserved) = ("10.244.77.0/24", "10.244.78.0/24");
    etcd.etcdctl(&["put", &format!("--lease={id}"), &key(orphan), &ours]);
    etcd.etcdctl(&["put", &key(reserved), &ours]);
    let start = std::time::Instant::now();
    a.wait_for("the orphan deleted", 10, |_| etcd.etcdctl(&["get", &key(orphan)]).trim().is_empty());
    println!("orphaned lease deleted {:.0?} after it appeared", start.elapsed());
    assert!(a.log_text().contains("deleted an orphaned lease"), "{}", a.log_text());
    assert!(!etcd.etcdctl(&["get", &key(reserved)]).trim().is_empty(), "the reservation was deleted");
    assert_eq!(etcd.etcdctl(&["get", "--print-value-only", &key(&held)]).trim(), ours, "our own lease changed");
    a.stop();
}

#[test]
fn a_dead_hosts_lease_expires_and_peers_see_it_go() {
    let etcd = EtcdServer::start();
    let setup = Setup::new(&format!(
        "[agent]\nlease_ttl = \"3s\"\nrenew_margin = \"2s\"\n[store]\nendpoints = [\"{}\"]\n[network]\n{ALLOC}\n",
        etcd.endpoint
    ));
    setup.ok(&["network", "apply"]);
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    let mut b = setup.agent("b", "198.51.100.2", &[]);
    a.wait_subnet();
    let sb = b.wait_subnet();
    a.wait_for("b's lease", 10, |ag| ag.metric("weft_leases_watched") == 1.0);
    // Renewals keep a live lease well past its TTL.
    std::thread::sleep(Duration::from_secs(4));
    assert!(b.metric("weft_lease_renewals_total") >= 1.0, "{}", b.log_text());
    assert_eq!(a.metric("weft_leases_watched"), 1.0);
    b.kill();
    a.wait_for("b's lease to expire", 10, |ag| ag.metric("weft_leases_watched") == 0.0);
    assert!(a.metric("weft_lease_events_total{kind=\"Removed\"}") >= 1.0);
    assert_eq!(etcd.etcdctl(&["get", &key(&sb)]).trim(), "");
    a.stop();
}

#[test]
fn watch_delivers_added_changed_removed_and_skips_malformed() {
    let etcd = EtcdServer::start();
    let setup = Setup::etcd(&etcd.endpoint, ALLOC);
    setup.ok(&["network", "apply"]);
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    a.wait_subnet();
    let peer = key("10.244.200.0/24");
    etcd.etcdctl(&["put", &peer, FLANNEL_LEASE]);
    a.wait_for("added", 10, |ag| ag.metric("weft_lease_events_total{kind=\"Added\"}") == 1.0);
    etcd.etcdctl(&["put", &peer, &FLANNEL_LEASE.replace("198.51.100.77", "198.51.100.78")]);
    a.wait_for("changed", 10, |ag| ag.metric("weft_lease_events_total{kind=\"Changed\"}") == 1.0);
    // Garbage in the store: skipped with a warning naming the key, never a crash.
    etcd.etcdctl(&["put", &key("10.244.201.0/24"), "{not json"]);
    etcd.etcdctl(&["put", "/coreos.com/network/subnets/banana", FLANNEL_LEASE]);
    etcd.etcdctl(&["put", &key("10.99.0.0/24"), FLANNEL_LEASE]);
    a.wait_for("malformed entries skipped", 10, |ag| ag.metric("weft_malformed_leases_total") >= 3.0);
    etcd.etcdctl(&["del", &peer]);
    a.wait_for("removed", 10, |ag| ag.metric("weft_lease_events_total{kind=\"Removed\"}") == 1.0);
    assert_eq!(a.get("/readyz").0, 200);
    let log = a.log_text();
    assert!(log.contains("banana") && log.contains("10.244.201.0-24") && log.contains("10.99.0.0-24"), "{log}");
    // The CLI lists what it can read and names what it cannot.
    let out = setup.weft(&["leases", "list"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("banana"));
    a.stop();
}

#[test]
fn reads_flannel_written_data() {
    let etcd = EtcdServer::start();
    etcd.etcdctl(&["put", "/coreos.com/network/config", FLANNEL_CONFIG]);
    etcd.etcdctl(&["put", &key("10.244.3.0/24"), FLANNEL_LEASE]);
    // No [network] table at all: the agent reads flannel's config from the store.
    let setup = Setup::new(&format!("[store]\nendpoints = [\"{}\"]\n", etcd.endpoint));
    let shown = setup.ok(&["network", "show"]);
    assert_eq!(shown.trim(), FLANNEL_CONFIG);
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    let subnet = a.wait_subnet();
    assert_ne!(subnet, "10.244.3.0/24");
    a.wait_for("flannel's lease", 10, |ag| ag.metric("weft_leases_watched") == 1.0);
    let list: serde_json::Value = serde_json::from_str(&setup.ok(&["leases", "list", "--json"])).unwrap();
    let flannels = list.as_array().unwrap().iter().find(|l| l["subnet"] == "10.244.3.0/24").unwrap();
    assert_eq!(flannels["backend_data"]["VtepMAC"], "aa:bb:cc:dd:ee:ff");
    // A flanneld restarting on this host would find its lease as it wrote it.
    let value = etcd.etcdctl(&["get", "--print-value-only", &key("10.244.3.0/24")]);
    assert_eq!(value.trim(), FLANNEL_LEASE);
    a.stop();
}

#[test]
fn network_apply_refuses_to_reshape_a_network_in_use() {
    let etcd = EtcdServer::start();
    let setup = Setup::etcd(&etcd.endpoint, ALLOC);
    setup.ok(&["network", "apply"]);
    setup.ok(&["leases", "reserve", "10.244.7.0/24", "--public-ip", "198.51.100.7"]);
    std::fs::write(
        &setup.config,
        std::fs::read_to_string(&setup.config).unwrap().replace("10.244.0.0/16", "10.245.0.0/16"),
    )
    .unwrap();
    let out = setup.weft(&["network", "apply"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert!(etcd.etcdctl(&["get", "/coreos.com/network/config"]).contains("10.244.0.0/16"));
    setup.ok(&["network", "apply", "--force"]);
    assert!(etcd.etcdctl(&["get", "/coreos.com/network/config"]).contains("10.245.0.0/16"));
    // Release, then a release of nothing is an error.
    setup.ok(&["leases", "release", "10.244.7.0/24"]);
    assert_eq!(setup.weft(&["leases", "release", "10.244.7.0/24"]).status.code(), Some(1));
}

#[test]
fn bad_config_exits_2_naming_file_key_and_value() {
    let setup = Setup::new("[network]\ncidr = \"10.244.0.0/33\"\n");
    let out = setup.weft(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("weft.toml") && err.contains("network.cidr") && err.contains("10.244.0.0/33"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    let out = setup.weft(&["agent"]);
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(common::weft::WEFT)
        .args(["--config", "/nonexistent/weft.toml", "config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/weft.toml"));
}

#[test]
fn config_layers_file_env_flags() {
    let setup = Setup::new(
        "[agent]\npublic_ip = \"198.51.100.1\"\nsubnet_file = \"/tmp/a.env\"\n[store]\npassword = \"s3cret\"\n",
    );
    let out = std::process::Command::new(common::weft::WEFT)
        .args(["--config", setup.config.to_str().unwrap(), "config", "check", "--store-path", "/srv/weft"])
        .env("WEFT_AGENT__PUBLIC_IP", "198.51.100.2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |k: &str| text.lines().find(|l| l.starts_with(&format!("{k} "))).unwrap_or_default().to_string();
    assert!(
        line("agent.public_ip").contains("198.51.100.2") && line("agent.public_ip").contains("WEFT_AGENT__PUBLIC_IP"),
        "{text}"
    );
    assert!(line("agent.subnet_file").contains("weft.toml:3"), "{text}");
    assert!(line("store.path").contains("/srv/weft") && line("store.path").contains("command-line flag"), "{text}");
    assert!(line("agent.listen").contains("default"), "{text}");
    assert!(!text.contains("s3cret") && line("store.password").contains("***"), "{text}");
}

/// The cloud endpoints are the host's own (`[cloud]`, or `WEFT_CLOUD__*`); the old backend keys,
/// which `weft network apply` would have published to every host, are refused with exit 2.
#[test]
fn cloud_endpoints_come_from_the_hosts_own_config() {
    let setup = Setup::new("[cloud]\ngce_endpoint = \"http://127.0.0.1:8089\"\n");
    let out = std::process::Command::new(common::weft::WEFT)
        .args(["--config", setup.config.to_str().unwrap(), "config", "check"])
        .env("WEFT_CLOUD__AWS_ENDPOINT_URL", "https://ec2.vpce.example")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |k: &str| text.lines().find(|l| l.starts_with(&format!("{k} "))).unwrap_or_default().to_string();
    let aws = line("cloud.aws_endpoint_url");
    assert!(aws.contains("https://ec2.vpce.example") && aws.contains("WEFT_CLOUD__AWS_ENDPOINT_URL"), "{text}");
    assert!(line("cloud.gce_endpoint").contains("http://127.0.0.1:8089"), "{text}");

    for (backend, old, new) in [
        ("type = \"aws-vpc\"\nendpoint_url = \"http://x\"", "network.backend.endpoint_url", "cloud.aws_endpoint_url"),
        ("type = \"gce\"\nendpoint = \"http://x\"", "network.backend.endpoint", "cloud.gce_endpoint"),
    ] {
        std::fs::write(&setup.config, format!("[network]\ncidr = \"10.244.0.0/16\"\n[network.backend]\n{backend}\n"))
            .unwrap();
        for args in [&["config", "check"][..], &["network", "apply"][..]] {
            let out = setup.weft(args);
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(old) && err.contains(&format!("moved to {new}")) && err.contains("line 5"), "{err}");
        }
    }
    // From the environment too.
    std::fs::write(&setup.config, "").unwrap();
    let out = std::process::Command::new(common::weft::WEFT)
        .args(["--config", setup.config.to_str().unwrap(), "config", "check"])
        .env("WEFT_NETWORK__BACKEND__ENDPOINT", "http://x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WEFT_NETWORK__BACKEND__ENDPOINT") && err.contains("moved to cloud.gce_endpoint"), "{err}");
}

#[test]
fn local_store_is_shared_by_several_agent_processes() {
    let setup = Setup::new("");
    let store = setup.path("store");
    std::fs::write(
        &setup.config,
        format!("[agent]\nlease_ttl = \"30s\"\nrenew_margin = \"10s\"\n[store]\nkind = \"local\"\npath = \"{}\"\n[network]\n{ALLOC}\n", store.display()),
    )
    .unwrap();
    setup.ok(&["network", "apply"]);
    let mut agents: Vec<_> = (1..=3).map(|i| setup.agent(&format!("h{i}"), &format!("198.51.100.{i}"), &[])).collect();
    let subnets: HashSet<String> = agents.iter_mut().map(|a| a.wait_subnet()).collect();
    assert_eq!(subnets.len(), 3);
    for agent in &agents {
        agent.wait_for("the two other hosts", 10, |ag| ag.metric("weft_leases_watched") == 2.0);
    }
    // One leaves: the others see it promptly once its lease is released.
    let gone = read_subnet(&agents[2].subnet_file).unwrap();
    agents[2].stop();
    setup.ok(&["leases", "release", &gone]);
    for agent in &agents[..2] {
        agent.wait_for("the release", 5, |ag| ag.metric("weft_leases_watched") == 1.0);
    }
}

#[test]
fn sighup_with_a_broken_file_keeps_running() {
    let etcd = EtcdServer::start();
    let setup = Setup::etcd(&etcd.endpoint, ALLOC);
    setup.ok(&["network", "apply"]);
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    let subnet = a.wait_subnet();
    std::fs::write(&setup.config, "[agent\nbroken").unwrap();
    a.signal("HUP");
    a.wait_for("the reload error", 10, |ag| ag.log_text().contains("keeping the running configuration"));
    assert_eq!(a.get("/readyz").0, 200);
    assert_eq!(read_subnet(&a.subnet_file).unwrap(), subnet);
    a.stop();
}

/// An edit whose store cannot be opened (here an unreadable CA file) is reported and changes
/// nothing: the running agent keeps its store, its lease and its readiness.
#[test]
fn a_reload_whose_store_cannot_be_opened_keeps_running() {
    let etcd = EtcdServer::start();
    let setup = Setup::etcd(&etcd.endpoint, ALLOC);
    setup.ok(&["network", "apply"]);
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    let subnet = a.wait_subnet();
    let original = std::fs::read_to_string(&setup.config).unwrap();
    let broken = original.replace("[store]\n", "[store]\nca_file = \"/nonexistent/weft-ca.pem\"\n");
    assert_ne!(broken, original);
    std::fs::write(&setup.config, broken).unwrap();
    a.signal("HUP");
    a.wait_for("the reload error", 10, |ag| ag.log_text().contains("cannot open the store of the new configuration"));
    assert!(a.log_text().contains("/nonexistent/weft-ca.pem"), "the error names the file: {}", a.log_text());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(a.get("/readyz").0, 200, "{}", a.log_text());
    assert_eq!(read_subnet(&a.subnet_file).unwrap(), subnet);
    // The running agent still follows the store: another host (started from the mended file)
    // appears.
    std::fs::write(&setup.config, original).unwrap();
    let mut b = setup.agent("b", "198.51.100.2", &[]);
    b.wait_subnet();
    a.wait_for("the other host", 10, |ag| ag.metric("weft_leases_watched") == 1.0);
    a.stop();
    b.stop();
}

/// A setup whose file names the host's interface and public IP (198.51.100.1), so that an edit
/// can change them; the network is published. Returns the file's text too.
fn host_in_the_file(etcd: &EtcdServer) -> (Setup, String) {
    let setup = Setup::etcd(&etcd.endpoint, ALLOC);
    let original = std::fs::read_to_string(&setup.config).unwrap();
    let with_host = original.replace("[agent]\n", "[agent]\niface = [\"lo\"]\npublic_ip = \"198.51.100.1\"\n");
    std::fs::write(&setup.config, &with_host).unwrap();
    setup.ok(&["network", "apply"]);
    (setup, with_host)
}

/// An edit that opens but then fails to run (an interface that does not exist) goes back to the
/// configuration that ran before it, with the same lease.
#[test]
fn a_reload_that_fails_to_run_goes_back_to_the_previous_configuration() {
    let etcd = EtcdServer::start();
    let (setup, with_host) = host_in_the_file(&etcd);
    let mut a = setup.agent_from_file("a");
    let subnet = a.wait_subnet();
    std::fs::write(&setup.config, with_host.replace("iface = [\"lo\"]", "iface = [\"weft-missing0\"]")).unwrap();
    a.wait_for("the fallback", 15, |ag| ag.log_text().contains("going back to the previous one"));
    a.wait_for("readiness again", 15, |ag| ag.get("/readyz").0 == 200);
    assert!(a.log_text().contains("weft-missing0"), "the error names the interface: {}", a.log_text());
    assert_eq!(read_subnet(&a.subnet_file).unwrap(), subnet);
    a.stop();
}

/// etcd gone for longer than the lease's TTL: the agent says its lease ran out (readiness 503
/// naming it) instead of reporting ready, and is ready again with the same subnet once etcd is
/// back.
#[test]
fn a_lease_that_runs_out_while_the_store_is_gone_is_reported() {
    let mut etcd = EtcdServer::start();
    let setup = Setup::etcd(&etcd.endpoint, ALLOC);
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let short = text
        .replace("lease_ttl = \"30s\"", "lease_ttl = \"4s\"")
        .replace("renew_margin = \"10s\"", "renew_margin = \"2s\"");
    assert_ne!(short, text);
    std::fs::write(&setup.config, short).unwrap();
    setup.ok(&["network", "apply"]);
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    let subnet = a.wait_subnet();
    a.wait_for("readiness", 10, |ag| ag.get("/readyz").0 == 200);
    etcd.stop();
    a.wait_for("the lease to be reported run out", 20, |ag| {
        let (status, body) = ag.get("/readyz");
        status == 503 && body.contains("lease") && body.contains("ran out")
    });
    assert_eq!(a.get("/healthz").0, 200, "alive all along");
    etcd.restart();
    a.wait_for("readiness after etcd returned", 30, |ag| ag.get("/readyz").0 == 200);
    assert_eq!(read_subnet(&a.subnet_file).unwrap(), subnet);
    a.stop();
}

/// An edit of the public IP moves our lease to the new address: the same subnet, one lease in
/// the store, not a second one while the first is left to run out.
#[test]
fn an_edited_public_ip_keeps_the_subnet_and_leaves_no_lease_behind() {
    let etcd = EtcdServer::start();
    let (setup, with_host) = host_in_the_file(&etcd);
    let mut a = setup.agent_from_file("a");
    let subnet = a.wait_subnet();
    std::fs::write(&setup.config, with_host.replace("198.51.100.1", "198.51.100.9")).unwrap();
    let value = || etcd.etcdctl(&["get", "--print-value-only", &key(&subnet)]);
    a.wait_for("the lease to move", 15, |_| value().contains("198.51.100.9"));
    let keys = etcd.etcdctl(&["get", "--prefix", "--keys-only", "/coreos.com/network/subnets/"]);
    assert_eq!(keys.split_whitespace().count(), 1, "{keys}");
    a.wait_for("readiness", 10, |ag| ag.get("/readyz").0 == 200);
    assert_eq!(read_subnet(&a.subnet_file).unwrap(), subnet);
    a.stop();
}

#[test]
fn host_settings_apply_live_from_the_edited_file() {
    let etcd = EtcdServer::start();
    let setup = Setup::etcd(&etcd.endpoint, ALLOC);
    setup.ok(&["network", "apply"]);
    // No --listen flag: the address comes from the file, so an edit can move it.
    let first = format!("127.0.0.1:{}", common::weft::free_port());
    let original = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, original.replace("[agent]\n", &format!("[agent]\nlisten = \"{first}\"\n"))).unwrap();
    let mut a = setup.agent_without_listen("a", "198.51.100.1");
    let subnet = a.wait_subnet();
    a.wait_for("the first address", 10, |_| common::weft::http_get(&first, "/healthz").0 == 200);

    // Edit: another listen address and a log level, no signal. The lease stays, the server moves.
    let second = format!("127.0.0.1:{}", common::weft::free_port());
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        text.replace(&first, &second).replace("[agent]\n", "[agent]\nlog_level = \"weft=debug\"\n"),
    )
    .unwrap();
    a.wait_for("the second address", 10, |_| common::weft::http_get(&second, "/readyz").0 == 200);
    assert_eq!(common::weft::http_get(&first, "/healthz").0, 0, "the old address still answers");
    assert!(a.log_text().contains("log level changed"), "{}", a.log_text());
    assert!(!a.log_text().contains("restarting the agent loop"), "listen and log level need no restart");

    // An invalid edit is reported and changes nothing.
    std::fs::write(&setup.config, "[agent]\nlisten = 5\n").unwrap();
    a.wait_for("the error", 10, |ag| ag.log_text().contains("keeping the running configuration"));
    assert_eq!(common::weft::http_get(&second, "/readyz").0, 200);
    assert_eq!(read_subnet(&a.subnet_file).unwrap(), subnet);
    a.stop();
}

/// `weft status` against a real agent: its JSON parsed, exit 0 when ready; 1 with the failing
/// condition when the store cannot be reached; 2 when no agent answers.
#[test]
fn status_shows_the_lease_conditions_and_reloads_and_exits_by_readiness() {
    let etcd = EtcdServer::start();
    let setup = Setup::etcd(&etcd.endpoint, ALLOC);
    setup.ok(&["network", "apply"]);
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    let subnet = a.wait_subnet();
    a.wait_for("ready", 10, |ag| ag.get("/readyz").0 == 200);
    a.signal("HUP");
    a.wait_for("the reload", 10, |ag| ag.get("/status").1.contains("\"trigger\": \"SIGHUP\""));

    let json = setup.weft(&["status", "-o", "json", "--agent", &format!("http://{}", a.listen)]);
    assert_eq!(json.status.code(), Some(0), "{}", String::from_utf8_lossy(&json.stderr));
    let status: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(status["ready"], true, "{status:#}");
    assert_eq!(status["lease"]["subnets"][0], subnet.as_str(), "{status:#}");
    assert_eq!(status["lease"]["public_ip"], "198.51.100.1");
    assert!(status["lease"]["expires"].as_str().unwrap().ends_with('Z'), "{status:#}");
    assert_eq!(status["backends"]["active"], "alloc");
    let conditions = status["conditions"].as_array().unwrap();
    assert!(conditions.len() >= 7 && conditions.iter().all(|c| c["ok"] == true), "{status:#}");
    assert!(conditions.iter().any(|c| c["name"] == "forward"), "{status:#}");
    assert_eq!(status["store"]["ok"], true);
    assert_eq!(status["last_reload"]["outcome"], "unchanged", "{status:#}");
    // The same document is what the library reads.
    let parsed: weft::status::AgentStatus = serde_json::from_slice(&json.stdout).unwrap();
    assert!(parsed.ready);

    // The address from the configuration's layers (here the environment), text output.
    let text = std::process::Command::new(common::weft::WEFT)
        .args(["--config", setup.config.to_str().unwrap(), "status"])
        .env("WEFT_AGENT__LISTEN", &a.listen)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&text.stderr));
    assert!(stdout.starts_with("ready: yes\n  ✓ network\n"), "{stdout}");
    assert!(stdout.contains(&format!("lease: {subnet} (public IP 198.51.100.1, backend alloc), expires ")), "{stdout}");
    assert!(stdout.contains("last reload: ✓ "), "{stdout}");

    // An agent whose store does not answer: not ready, and says why.
    let dead = Setup::etcd(&format!("http://127.0.0.1:{}", common::weft::free_port()), ALLOC);
    let b = dead.agent("b", "198.51.100.2", &[]);
    b.wait_for("a store error", 20, |ag| {
        serde_json::from_str::<weft::status::AgentStatus>(&ag.get("/status").1).is_ok_and(|s| !s.store.ok)
    });
    let out = dead.weft(&["status", "-o", "json", "--agent", &b.listen]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let status: weft::status::AgentStatus = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!status.ready && !status.store.ok && status.store.errors > 0, "{status:#?}");
    let network = status.conditions.iter().find(|c| c.name == "network").unwrap();
    assert!(network.reason.as_deref().unwrap_or("").contains("reading the network config"), "{status:#?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not ready (network"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No agent: exit 2, said plainly.
    let port = common::weft::free_port();
    let out = setup.weft(&["status", "--agent", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot reach the agent at 127.0.0.1:{port}")), "{stderr}");
    a.stop();
}
