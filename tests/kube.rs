//! `store.kind = "kube"` against a test API server: agents annotate their own nodes exactly as
//! flannel does, follow the other nodes (add, change, delete), relist after 410 Gone, and skip
//! nodes they cannot read.
#![cfg(feature = "kube")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::kube_api::KubeApi;
use common::weft::{Agent, Setup};
use futures::StreamExt;
use weft::config::{StoreKind, StoreSection};
use weft::store::kube::rbac::{triples, LEADER_ACCESS, NODE_ACCESS};
use weft::store::{LeaseWrite, Store};

const PREFIX: &str = "flannel.alpha.coreos.com";
const NETWORK: &str = "[network]\ncidr = \"10.244.0.0/16\"\n[network.backend]\ntype = \"alloc\"\n";

fn key(name: &str) -> String {
    format!("{PREFIX}/{name}")
}

/// A weft.toml for the agent of `node`.
fn setup(api: &KubeApi, node: &str) -> Setup {
    let setup = Setup::new("");
    let kubeconfig = api.kubeconfig(setup.dir.path());
    let toml = format!(
        "[store]\nkind = \"kube\"\nnode_name = \"{node}\"\nkubeconfig = \"{}\"\n\n{NETWORK}",
        kubeconfig.display()
    );
    std::fs::write(&setup.config, toml).expect("write weft.toml");
    setup
}

struct Host {
    // Kept for its directory: the agent's config, log and subnet.env live there.
    _setup: Setup,
    agent: Agent,
}

fn start(api: &KubeApi, node: &str, public_ip: &str) -> Host {
    let setup = setup(api, node);
    let agent = setup.agent(node, public_ip, &[]);
    Host { _setup: setup, agent }
}

/// Annotations under flannel's prefix.
fn notes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (key(k), v.to_string())).collect()
}

/// Annotations flannel writes for an alloc-backend node (its data is `null`).
fn flannel_alloc_annotations(public_ip: &str) -> BTreeMap<String, String> {
    notes(&[
        ("backend-data", "null"),
        ("backend-type", "alloc"),
        ("kube-subnet-manager", "true"),
        ("public-ip", public_ip),
    ])
}

fn events(agent: &Agent, kind: &str) -> f64 {
    agent.metric(&format!("weft_lease_events_total{{kind=\"{kind}\"}}"))
}

fn watched(agent: &Agent) -> f64 {
    agent.metric("weft_leases_watched")
}

fn three_hosts(api: &KubeApi) -> Vec<Host> {
    for i in 1..=3 {
        api.add_node(&format!("node-{i}"), Some(&format!("10.244.{i}.0/24")), &BTreeMap::new());
    }
    let mut hosts: Vec<Host> = (1..=3).map(|i| start(api, &format!("node-{i}"), &format!("198.51.100.{i}"))).collect();
    for (i, host) in hosts.iter_mut().enumerate() {
        assert_eq!(host.agent.wait_subnet(), format!("10.244.{}.0/24", i + 1), "the subnet is the podCIDR");
    }
    for host in &hosts {
        host.agent.wait_for("two peers", 20, |a| watched(a) == 2.0);
    }
    hosts
}

#[test]
fn agents_annotate_like_flannel_and_follow_node_changes() {
    let api = KubeApi::start();
    let hosts = three_hosts(&api);

    // Byte for byte what flannel's kube subnet manager writes.
    for i in 1..=3 {
        assert_eq!(api.annotations(&format!("node-{i}")), flannel_alloc_annotations(&format!("198.51.100.{i}")));
    }
    // Each agent patched only its own node, through nodes/status, with a strategic merge patch
    // of the annotations (what flannel's ClusterRole allows).
    let patches = api.patches();
    assert_eq!(patches.len(), 3, "{patches:?}");
    for p in &patches {
        assert!(p.status && p.content_type == "application/strategic-merge-patch+json", "{p:?}");
        assert_eq!(p.body["metadata"]["annotations"][key("kube-subnet-manager")], "true");
        assert_eq!(p.body.as_object().map(|o| o.len()), Some(1), "only metadata: {p:?}");
    }
    let mut patched: Vec<&str> = patches.iter().map(|p| p.node.as_str()).collect();
    patched.sort();
    assert_eq!(patched, ["node-1", "node-2", "node-3"]);

    let first = &hosts[0].agent;
    assert!(events(first, "Added") >= 2.0);

    // Change: a peer's address changes in its annotations.
    api.annotate("node-3", &key("public-ip"), Some("198.51.100.33"));
    first.wait_for("a Changed event", 20, |a| events(a, "Changed") >= 1.0);

    // Add: a node flannel itself annotated joins.
    api.add_node("node-4", Some("10.244.4.0/24"), &flannel_alloc_annotations("198.51.100.4"));
    for host in &hosts {
        host.agent.wait_for("node-4 as a peer", 20, |a| watched(a) == 3.0);
    }

    // Delete: the node goes, and so does its lease.
    api.delete_node("node-3");
    first.wait_for("a Removed event", 20, |a| events(a, "Removed") >= 1.0);
    first.wait_for("two peers again", 20, |a| watched(a) == 2.0);
    assert_eq!(api.patches().len(), 3, "no agent wrote another node");
    // Running agents need nothing the manifest's roles do not grant.
    let needed = api.access();
    assert!(needed.is_subset(&granted()), "not granted: {:?}", needed.difference(&granted()).collect::<Vec<_>>());
}

#[test]
fn relists_after_410_gone_and_skips_unreadable_nodes() {
    let api = KubeApi::start();
    let hosts = three_hosts(&api);
    let lists_before = api.list_count();

    // Compaction plus a restart of the API server: every watch resumes from a resourceVersion
    // that is gone, gets 410, and must list again to catch what it missed.
    api.expire_watches();
    api.add_node("node-5", Some("10.244.5.0/24"), &flannel_alloc_annotations("198.51.100.5"));
    for host in &hosts {
        host.agent.wait_for("node-5 after the relist", 30, |a| watched(a) == 3.0);
    }
    assert!(
        api.list_count() >= lists_before + 3,
        "every agent relisted: {} lists before, {} after",
        lists_before,
        api.list_count()
    );

    // Unreadable nodes are skipped with a warning naming them; the rest carry on.
    let managed = ("kube-subnet-manager", "true");
    api.add_node("broken-ip", Some("10.244.6.0/24"), &notes(&[managed, ("public-ip", "not-an-address")]));
    api.add_node(
        "broken-data",
        Some("10.244.7.0/24"),
        &notes(&[managed, ("public-ip", "198.51.100.7"), ("backend-data", "{not json")]),
    );
    api.add_node("no-cidr", None, &notes(&[managed, ("public-ip", "198.51.100.8")]));
    // A node added afterwards shows the watch went past the broken ones.
    api.add_node("node-9", Some("10.244.9.0/24"), &flannel_alloc_annotations("198.51.100.9"));
    for host in &hosts {
        host.agent.wait_for("node-9", 20, |a| watched(a) == 4.0);
        let log = host.agent.log_text();
        for name in ["broken-ip", "broken-data", "no-cidr"] {
            assert!(
                log.lines().any(|l| l.contains("skipping node") && l.contains(name)),
                "no warning naming {name}:\n{log}"
            );
        }
    }
}

#[test]
fn waits_for_the_pod_cidr_and_honours_public_ip_overwrite() {
    let api = KubeApi::start();
    api.add_node("late", None, &notes(&[("public-ip-overwrite", "203.0.113.9")]));
    let mut host = start(&api, "late", "198.51.100.20");
    host.agent.wait_for("the wait for a podCIDR", 20, |a| a.log_text().contains("waiting for the node's spec.podCIDR"));
    assert!(!host.agent.subnet_file.exists(), "no subnet.env before the podCIDR");
    api.set_pod_cidr("late", "10.244.20.0/24");
    assert_eq!(host.agent.wait_subnet(), "10.244.20.0/24");

    let notes = api.annotations("late");
    assert_eq!(notes[&key("public-ip")], "203.0.113.9", "the overwrite is what peers see");
    assert_eq!(notes[&key("public-ip-overwrite")], "203.0.113.9");
    // The agent does not mistake the overwritten address for someone else holding its subnet.
    std::thread::sleep(Duration::from_secs(2));
    let log = host.agent.log_text();
    assert!(!log.contains("acquiring again"), "{log}");
    assert_eq!(api.patches().len(), 1, "{:?}", api.patches());
    host.agent.stop();
}

/// The store on its own: listing, the assigned subnet, refusing other nodes, leadership.
#[test]
fn store_lists_nodes_and_elects_one_leader() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = api.kubeconfig(dir.path());
    api.add_node("a", Some("10.244.1.0/24"), &BTreeMap::new());
    api.add_node("b", Some("10.244.2.0/24"), &BTreeMap::new());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let open = |node: &str| {
            let section = StoreSection {
                kind: StoreKind::Kube,
                node_name: node.into(),
                kubeconfig: kubeconfig.display().to_string(),
                ..StoreSection::default()
            };
            async move { weft::store::open(&section).await.expect("open kube store") }
        };
        let a: Arc<dyn Store> = open("a").await;
        let b: Arc<dyn Store> = open("b").await;
        assert_eq!(a.assigned_subnet().await.unwrap(), Some("10.244.1.0/24".parse::<ipnet::Ipv4Net>().unwrap().into()));
        assert!(a.network_config().await.unwrap().is_none(), "no [network] handed in");
        assert!(a.put_network_config("{}").await.is_err());

        let attrs = r#"{"PublicIP":"198.51.100.1","PublicIPv6":null,"BackendType":"alloc"}"#;
        // Only our own podCIDR can be "leased".
        let other = a
            .create_lease(LeaseWrite::new("10.244.2.0/24".parse::<ipnet::Ipv4Net>().unwrap(), attrs, None))
            .await
            .unwrap();
        assert_eq!(other, weft::store::WriteOutcome::Conflict);
        let own = a
            .create_lease(LeaseWrite::new("10.244.1.0/24".parse::<ipnet::Ipv4Net>().unwrap(), attrs, None))
            .await
            .unwrap();
        assert!(matches!(own, weft::store::WriteOutcome::Written { .. }), "{own:?}");
        let listing = b.list_leases().await.unwrap();
        assert_eq!(listing.leases.len(), 1, "only the annotated node is a lease");
        assert_eq!(listing.leases[0].key, "10.244.1.0-24");
        assert!(
            b.delete_lease("10.244.1.0/24".parse::<ipnet::Ipv4Net>().unwrap().into()).await.is_err(),
            "not b's node"
        );
        assert!(a.delete_lease("10.244.1.0/24".parse::<ipnet::Ipv4Net>().unwrap().into()).await.unwrap());
        assert!(b.list_leases().await.unwrap().leases.is_empty());
        // A watch: kube-rs lists, then watches from the listing's resourceVersion.
        let mut updates = b.watch_leases(0);
        let follow = tokio::spawn(async move { while updates.next().await.is_some() {} });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while api.watch_count() == 0 {
            assert!(std::time::Instant::now() < deadline, "the store never watched");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        follow.abort();

        let ttl = Duration::from_secs(2);
        assert!(a.lead("routes", "a", ttl).await.unwrap());
        assert!(!b.lead("routes", "b", ttl).await.unwrap(), "a leads");
        assert!(a.lead("routes", "a", ttl).await.unwrap(), "a renews");
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert!(b.lead("routes", "b", ttl).await.unwrap(), "a's turn ran out");
        assert!(!a.lead("routes", "a", ttl).await.unwrap());
    });
    let lease = api.lease("kube-system", "weft-routes").expect("a coordination Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // Every call of the store (each of its operations ran above) needed exactly what
    // config/kubernetes/weft.yaml grants: src/store/kube/rbac.rs lists it, and its unit test keeps
    // the manifest equal to that list. A grant nobody uses, or a call not granted, fails here.
    assert_eq!(api.access(), granted(), "what the store called vs what src/store/kube/rbac.rs grants");
}

/// What the manifest's roles grant, as (group, resource, verb).
fn granted() -> BTreeSet<(String, String, String)> {
    let mut all = triples(NODE_ACCESS);
    all.extend(triples(LEADER_ACCESS));
    all
}

/// Multi-host tests run the API server in a namespace of their own: it must serve there, and
/// only there.
#[test]
fn serves_inside_a_namespace_for_multi_host_tests() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test creates a network namespace and needs root (CI={})", std::env::var("CI").unwrap_or_default());
    }
    let ns = weft::netns::Netns::create(&format!("wkube{}", std::process::id())).expect("create a namespace");
    struct Gone(weft::netns::Netns);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = self.0.delete();
        }
    }
    let ns = Gone(ns);
    let api = KubeApi::start_in(Some(&ns.0), "127.0.0.1:0");
    api.add_node("n", Some("10.244.1.0/24"), &BTreeMap::new());
    let addr = api.addr;
    let inside = ns.0.run(move || common::weft::http_get(&addr.to_string(), "/api/v1/nodes/n")).expect("run in ns");
    assert_eq!(inside.0, 200, "{inside:?}");
    assert!(inside.1.contains("10.244.1.0/24"), "{inside:?}");
    let outside = common::weft::http_get(&addr.to_string(), "/api/v1/nodes/n");
    assert_eq!(outside.0, 0, "the machine's loopback must not serve it: {outside:?}");
}

/// Dual-stack nodes: each agent holds its node's IPv6 podCIDR beside the IPv4 one, annotates
/// `public-ipv6` and `backend-v6-data` as flannel does, and sees its peer's IPv6 side.
#[test]
fn dual_stack_nodes_lease_both_pod_cidrs() {
    let api = KubeApi::start();
    let network =
        "[network]\ncidr = \"10.244.0.0/16\"\nipv6_cidr = \"2001:db8:42::/56\"\n[network.backend]\ntype = \"alloc\"\n";
    let mut hosts = Vec::new();
    for i in 1..=2 {
        let name = format!("node-{i}");
        api.add_node(&name, None, &BTreeMap::new());
        api.set_pod_cidrs(&name, &format!("10.244.{i}.0/24"), &format!("2001:db8:42:{i}::/64"));
        let setup = setup(&api, &name);
        let toml = std::fs::read_to_string(&setup.config).unwrap().replace(NETWORK, network);
        std::fs::write(&setup.config, toml).unwrap();
        let ipv6 = format!("2001:db8::{i}");
        let agent = setup.agent(&name, &format!("198.51.100.{i}"), &["--public-ipv6", &ipv6]);
        hosts.push(Host { _setup: setup, agent });
    }
    for (i, host) in hosts.iter_mut().enumerate() {
        let i = i + 1;
        assert_eq!(host.agent.wait_subnet(), format!("10.244.{i}.0/24"));
        let env = weft::subnet_env::SubnetEnv::read(&host.agent.subnet_file).unwrap();
        assert_eq!(env.ipv6.map(|v6| v6.subnet.to_string()), Some(format!("2001:db8:42:{i}::/64")));
        host.agent.wait_for("one peer", 20, |a| watched(a) == 1.0);
        let notes = api.annotations(&format!("node-{i}"));
        assert_eq!(notes.get(&key("public-ipv6")).map(String::as_str), Some(format!("2001:db8::{i}").as_str()));
        assert_eq!(notes.get(&key("backend-v6-data")).map(String::as_str), Some("null"), "{notes:?}");
    }
}

/// IPv6-only nodes (`enable_ipv4 = false`, spec.podCIDRs holding one IPv6 CIDR): each agent
/// holds its node's IPv6 podCIDR as flannel's `0.0.0.0-0&<v6>` lease, annotates only flannel's
/// IPv6 annotations (no `public-ip`, no `backend-data`), writes a subnet.env without IPv4 lines,
/// and follows the other IPv6-only nodes, flannel's included.
#[test]
fn ipv6_only_nodes_lease_their_ipv6_pod_cidr() {
    let api = KubeApi::start();
    let network =
        "[network]\nenable_ipv4 = false\nipv6_cidr = \"2001:db8:42::/56\"\n[network.backend]\ntype = \"alloc\"\n";
    let mut hosts = Vec::new();
    for i in 1..=3 {
        let name = format!("node-{i}");
        api.add_node(&name, Some(&format!("2001:db8:42:{i}::/64")), &BTreeMap::new());
        let setup = setup(&api, &name);
        let toml = std::fs::read_to_string(&setup.config).unwrap().replace(NETWORK, network);
        std::fs::write(&setup.config, toml).unwrap();
        let ipv6 = format!("2001:db8::{i}");
        let agent = setup.agent(&name, &format!("198.51.100.{i}"), &["--public-ipv6", &ipv6]);
        hosts.push(Host { _setup: setup, agent });
    }
    let ipv6_env = |a: &Agent| weft::subnet_env::SubnetEnv::read(&a.subnet_file).ok().filter(|e| e.ipv6.is_some());
    for (i, host) in hosts.iter().enumerate() {
        let i = i + 1;
        let agent = &host.agent;
        agent.wait_for("an IPv6 subnet.env", 20, |a| ipv6_env(a).is_some());
        // The subnet is the node's IPv6 podCIDR; the file has no IPv4 lines.
        let env = ipv6_env(agent).expect("read a moment ago");
        assert!(env.ipv4.is_none(), "node-{i}: {env:?}");
        let v6 = env.ipv6.expect("filtered on it");
        assert_eq!(v6.subnet.to_string(), format!("2001:db8:42:{i}::/64"));
        assert_eq!(v6.network.to_string(), "2001:db8:42::/56");
        let text = std::fs::read_to_string(&agent.subnet_file).unwrap();
        let ipv4_line = |l: &str| l.starts_with("FLANNEL_NETWORK=") || l.starts_with("FLANNEL_SUBNET=");
        assert!(!text.lines().any(ipv4_line), "node-{i}'s subnet.env has IPv4 lines:\n{text}");
        assert!(text.lines().any(|l| l == format!("FLANNEL_IPV6_SUBNET=2001:db8:42:{i}::1/64")), "{text}");
        // Its own lease as /status shows it: the IPv6 subnet alone.
        let status: weft::status::AgentStatus = serde_json::from_str(&agent.get("/status").1).expect("/status JSON");
        let lease = status.lease.expect("a lease");
        assert_eq!(lease.subnets, [format!("2001:db8:42:{i}::/64")], "{lease:?}");
        assert_eq!(lease.public_ipv6.as_deref(), Some(format!("2001:db8::{i}").as_str()), "{lease:?}");
        agent.wait_for("two IPv6-only peers", 20, |a| watched(a) == 2.0);
    }
    // flannel's IPv6 annotations and nothing of IPv4, though each agent knows its IPv4 address.
    for i in 1..=3 {
        let ipv6 = format!("2001:db8::{i}");
        assert_eq!(
            api.annotations(&format!("node-{i}")),
            notes(&[
                ("backend-type", "alloc"),
                ("backend-v6-data", "null"),
                ("kube-subnet-manager", "true"),
                ("public-ipv6", &ipv6),
            ]),
            "node-{i}"
        );
    }
    assert_eq!(api.patches().len(), 3, "one patch each: {:?}", api.patches());

    // The store lists flannel's IPv6-only leases: PublicIP 0.0.0.0, the node's PublicIPv6.
    let out = hosts[0]._setup.ok(&["leases", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let rows = listed.as_array().unwrap_or_else(|| panic!("a list: {out}"));
    let mut seen: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (text("subnet"), text("public_ip"), text("public_ipv6"))
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String, String)> =
        (1..=3).map(|i| (format!("2001:db8:42:{i}::/64"), "0.0.0.0".to_string(), format!("2001:db8::{i}"))).collect();
    assert_eq!(seen, want, "{out}");

    // A node flannel annotated with IPv4 off (Go's null data, no public-ip) joins every agent's
    // view; one whose agent has not published its IPv6 address yet is skipped, naming the
    // annotation it lacks.
    let flannel = |ipv6: &str| {
        notes(&[
            ("backend-type", "alloc"),
            ("backend-v6-data", "null"),
            ("kube-subnet-manager", "true"),
            ("public-ipv6", ipv6),
        ])
    };
    api.add_node("node-4", Some("2001:db8:42:4::/64"), &flannel("2001:db8::4"));
    api.add_node("early", Some("2001:db8:42:5::/64"), &notes(&[("kube-subnet-manager", "true")]));
    // Added after the broken one: the watch went past it.
    api.add_node("node-6", Some("2001:db8:42:6::/64"), &flannel("2001:db8::6"));
    for host in &hosts {
        host.agent.wait_for("node-4 and node-6 as peers", 20, |a| watched(a) == 4.0);
        let log = host.agent.log_text();
        assert!(
            log.lines().any(|l| l.contains("skipping node") && l.contains("early") && l.contains(&key("public-ipv6"))),
            "no warning naming early's missing public-ipv6:\n{log}"
        );
    }
    // Once it publishes the address, it is a lease too.
    api.annotate("early", &key("public-ipv6"), Some("2001:db8::5"));
    for host in &hosts {
        host.agent.wait_for("early as a peer", 20, |a| watched(a) == 5.0);
    }
    assert_eq!(api.patches().len(), 3, "no agent wrote another node");
}
