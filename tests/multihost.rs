//! The data plane across hosts: real agents in network namespaces (common::cluster), a real etcd,
//! real packets between pods. Needs root: fails, never skips, without it.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::monitor::Monitor;
use common::wait::until as wait_until;
use weft::lab::pods::SubnetInfo;
use weft::lab::PodAddrs;

/// Leases stay in 10.244.1–9.0/24, so tests can use other /24s of the network freely.
const NETWORK: &str = "cidr = \"10.244.0.0/16\"\nsubnet_min = \"10.244.1.0\"\nsubnet_max = \"10.244.9.0\"";
/// Routes weft installs carry this protocol number.
const WEFT_PROTO: &str = "87";

/// N hosts with agents running `backend` (the `[network.backend]` body) and a pod each.
fn cluster_with_pods(hosts: usize, backend: &str) -> (Cluster, Vec<SubnetInfo>, Vec<PodAddrs>) {
    let mut cluster = Cluster::with_etcd(hosts);
    cluster.write_config(&format!("{NETWORK}\n[network.backend]\n{backend}"));
    cluster.weft_ok(&["network", "apply"]);
    for i in 1..=hosts {
        cluster.start_agent(i, &[]);
    }
    let infos: Vec<SubnetInfo> = (1..=hosts).map(|i| cluster.wait_subnet(i)).collect();
    let pods = (1..=hosts).map(|i| cluster.make_pod(i, infos[i - 1])).collect();
    (cluster, infos, pods)
}

/// Every pod reaches every other pod (within a few seconds of the agents starting).
fn assert_full_mesh(cluster: &Cluster, pods: &[PodAddrs]) {
    for from in 1..=pods.len() {
        for to in (1..=pods.len()).filter(|to| *to != from) {
            let target = pods[to - 1].pod.addr();
            assert!(
                cluster.wait_ping(&cluster.pod_ns(from), target, Duration::from_secs(5)),
                "pod h{from} cannot reach pod h{to} ({target}); h{from}'s routes: {}",
                cluster.ip_json(&cluster.host(from).ns, &["-4", "route"])
            );
        }
    }
}

/// Destinations of the routes weft owns in host i's namespace.
fn weft_routes(cluster: &Cluster, i: usize) -> Vec<String> {
    let routes = cluster.ip_json(&cluster.host(i).ns, &["-4", "route", "show", "proto", WEFT_PROTO]);
    let mut dsts: Vec<String> =
        routes.as_array().unwrap().iter().map(|r| r["dst"].as_str().unwrap_or("").to_string()).collect();
    dsts.sort();
    dsts
}

fn ip(_cluster: &Cluster, ns: &str, args: &[&str]) {
    let out = weft::netns::Netns::open(ns).unwrap().command("ip").unwrap().args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn pods_talk_across_hosts_with_vxlan() {
    let (cluster, _, pods) = cluster_with_pods(3, "type = \"vxlan\"");
    assert_full_mesh(&cluster, &pods);
    let links = cluster.ip_json(&cluster.host(1).ns, &["-d", "link", "show", "flannel.1"]);
    assert_eq!(links[0]["mtu"], 1450, "{links}");
}

#[test]
fn pods_talk_across_hosts_with_vxlan_direct_routing() {
    let (cluster, infos, pods) = cluster_with_pods(2, "type = \"vxlan\"\ndirect_routing = true");
    assert_full_mesh(&cluster, &pods);
    // Same L2 segment: the peer is reached directly, not through flannel.1.
    let route = cluster.ip_json(&cluster.host(1).ns, &["-4", "route", "show", &infos[1].subnet.to_string()]);
    assert_eq!(route[0]["gateway"], "198.51.100.12", "{route}");
}

#[test]
fn pods_talk_across_hosts_with_host_gw() {
    let (cluster, infos, pods) = cluster_with_pods(3, "type = \"host-gw\"");
    assert_full_mesh(&cluster, &pods);
    let route = cluster.ip_json(&cluster.host(1).ns, &["-4", "route", "show", &infos[2].subnet.to_string()]);
    assert_eq!(route[0]["gateway"], "198.51.100.13", "{route}");
    assert_eq!(route[0]["dev"], "eth0", "{route}");
}

#[test]
fn a_released_peer_vanishes_from_the_others_within_2s() {
    let (mut cluster, infos, _) = cluster_with_pods(3, "type = \"host-gw\"");
    let gone = infos[2].subnet.to_string();
    wait_until("h1 knows h3", Duration::from_secs(5), || weft_routes(&cluster, 1).contains(&gone));
    // The host leaves: its agent stops (a running one would lease its subnet again) and its
    // lease is removed, as when a node is deleted.
    cluster.stop_agent(3);
    cluster.weft_ok(&["leases", "release", &gone]);
    let took = wait_until("h3's route leaves h1 and h2", Duration::from_secs(2), || {
        !weft_routes(&cluster, 1).contains(&gone) && !weft_routes(&cluster, 2).contains(&gone)
    });
    eprintln!("a released peer left the others after {took:?}");
}

#[test]
fn a_route_deleted_by_hand_comes_back_within_the_resync() {
    // The harness's config resyncs every 2 s.
    let (cluster, infos, _) = cluster_with_pods(2, "type = \"host-gw\"");
    let peer = infos[1].subnet.to_string();
    wait_until("h1 knows h2", Duration::from_secs(5), || weft_routes(&cluster, 1).contains(&peer));
    ip(&cluster, &cluster.host(1).ns, &["route", "del", &peer]);
    assert!(!weft_routes(&cluster, 1).contains(&peer));
    wait_until("the route comes back", Duration::from_secs(4), || weft_routes(&cluster, 1).contains(&peer));
}

#[test]
fn a_route_of_someone_else_to_a_peers_subnet_is_left_alone_and_reported() {
    // The harness's config resyncs every 2 s.
    let (mut cluster, infos, _) = cluster_with_pods(2, "type = \"host-gw\"");
    let peer = infos[1].subnet.to_string();
    let h1 = cluster.host(1).ns;
    wait_until("h1 knows h2", Duration::from_secs(5), || weft_routes(&cluster, 1).contains(&peer));
    // The operator takes the destination over by hand.
    ip(&cluster, &h1, &["route", "replace", "blackhole", &peer, "proto", "static"]);
    let by_hand = |cluster: &Cluster| cluster.ip_json(&h1, &["-4", "route", "show", "table", "main", "exact", &peer]);
    let before = by_hand(&cluster);
    assert_eq!(before[0]["type"], "blackhole", "{before}");
    let reason = format!("kernel: route to {peer} owned by proto static; not replaced");
    wait_until("/readyz names the conflict", Duration::from_secs(5), || {
        cluster.agent_get(1, "/readyz").is_some_and(|(status, body)| status == 503 && body.contains(&reason))
    });
    let (_, metrics) = cluster.agent_get(1, "/metrics").unwrap();
    assert!(metrics.contains("weft_kernel_conflicts 1"), "{metrics}");
    std::thread::sleep(Duration::from_millis(2500)); // one resync later
    assert_eq!(by_hand(&cluster), before, "a resync touched the route of someone else");
    let warned = cluster.agent_log(1).lines().filter(|l| l.contains("another program routes there")).count();
    assert_eq!(warned, 1, "warned once, not at every resync:\n{}", cluster.agent_log(1));

    // The peer leaves: weft deletes nothing of the operator's, and the conflict ends.
    cluster.stop_agent(2);
    cluster.weft_ok(&["leases", "release", &peer]);
    wait_until("h1 is ready again", Duration::from_secs(5), || cluster.readyz(1) == Some(200));
    std::thread::sleep(Duration::from_millis(2500)); // one resync later
    assert_eq!(by_hand(&cluster), before, "the route of someone else was deleted or changed");
    let (_, metrics) = cluster.agent_get(1, "/metrics").unwrap();
    assert!(metrics.contains("weft_kernel_conflicts 0"), "{metrics}");
}

#[test]
fn stale_entries_go_and_foreign_routes_stay() {
    let mut cluster = Cluster::with_etcd(2);
    cluster.write_config(&format!("{NETWORK}\n[network.backend]\ntype = \"host-gw\""));
    cluster.weft_ok(&["network", "apply"]);
    let h1 = cluster.host(1).ns;
    // Left by an earlier run of weft (its protocol), for a host that is gone: must go.
    ip(&cluster, &h1, &["route", "add", "10.244.77.0/24", "via", "198.51.100.99", "proto", WEFT_PROTO]);
    // Somebody else's, inside and outside the cluster network: must stay.
    ip(&cluster, &h1, &["route", "add", "10.244.78.0/24", "via", "198.51.100.98"]);
    ip(&cluster, &h1, &["route", "add", "203.0.113.0/24", "via", "198.51.100.97"]);
    cluster.start_agent(1, &[]);
    cluster.start_agent(2, &[]);
    let peer = cluster.wait_subnet(2).subnet.to_string();
    cluster.wait_subnet(1);
    wait_until("h1 holds exactly its peer's route", Duration::from_secs(5), || {
        weft_routes(&cluster, 1) == [peer.clone()]
    });
    std::thread::sleep(Duration::from_millis(2500)); // one resync later
    let all = cluster.ip_json(&h1, &["-4", "route"]);
    let dsts: Vec<&str> = all.as_array().unwrap().iter().filter_map(|r| r["dst"].as_str()).collect();
    assert!(dsts.contains(&"10.244.78.0/24") && dsts.contains(&"203.0.113.0/24"), "{all}");
    assert!(!dsts.contains(&"10.244.77.0/24"), "{all}");
}

#[test]
fn an_agent_restart_changes_no_route_and_traffic_keeps_flowing() {
    let (mut cluster, _, pods) = cluster_with_pods(2, "type = \"vxlan\"");
    assert_full_mesh(&cluster, &pods);
    let h1 = cluster.host(1).ns;
    let before = cluster.ip_json(&h1, &["-4", "route"]);
    let mut monitor = Monitor::routes(&h1);
    cluster.stop_agent(1);
    assert!(cluster.ping(&cluster.pod_ns(1), pods[1].pod.addr()).is_some(), "traffic stopped with the agent");
    cluster.start_agent(1, &[]);
    wait_until("h1 ready again", Duration::from_secs(10), || cluster.readyz(1) == Some(200));
    std::thread::sleep(Duration::from_millis(500));
    let changes = monitor.stop();
    assert!(changes.trim().is_empty(), "routes changed across the restart:\n{changes}");
    assert_eq!(cluster.ip_json(&h1, &["-4", "route"]), before);
    assert!(cluster.ping(&cluster.pod_ns(1), pods[1].pod.addr()).is_some());
}

#[test]
fn ip_masq_installs_weft_table_and_subnet_env_says_so() {
    let mut cluster = Cluster::with_etcd(2);
    cluster.write_config(&format!("{NETWORK}\n[network.backend]\ntype = \"host-gw\""));
    cluster.weft_ok(&["network", "apply"]);
    cluster.start_agent(1, &["--ip-masq", "true"]);
    cluster.start_agent(2, &[]);
    let info = cluster.wait_subnet(1);
    cluster.wait_subnet(2);
    let env = std::fs::read_to_string(cluster.subnet_file(1)).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
    let nft = |i: usize| {
        let out = weft::netns::Netns::open(&cluster.host(i).ns)
            .unwrap()
            .command("nft")
            .unwrap()
            .args(["-j", "list", "table", "ip", "weft"])
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (present, json) = nft(1);
    assert!(present, "no weft table on h1");
    let rules: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rules: Vec<_> = rules["nftables"].as_array().unwrap().iter().filter(|o| o.get("rule").is_some()).collect();
    assert_eq!(rules.len(), 4, "{json}");
    let text = json.to_string();
    assert!(text.contains("10.244.0.0") && text.contains(&info.subnet.network().to_string()), "{text}");
    assert!(text.contains("masquerade"), "{text}");
    // Without ip_masq, no table.
    assert!(!nft(2).0, "h2 runs without ip_masq but has a weft table");
}

/// A lease is anyone's write to the store. One announcing this host's own address, a multicast
/// group or the unspecified address gets no FDB entry, neighbour or route on this host (and is
/// counted once per reason); the real peer keeps working.
#[test]
fn hostile_public_ips_get_nothing_installed() {
    let (cluster, _, pods) = cluster_with_pods(2, "type = \"vxlan\"");
    assert_full_mesh(&cluster, &pods);
    let own = cluster.host(1).addr.to_string();
    let hostile = [("10.244.20.0", own.as_str()), ("10.244.21.0", "224.0.0.1"), ("10.244.22.0", "0.0.0.0")];
    for (n, (subnet, public_ip)) in hostile.iter().enumerate() {
        let attrs = format!(
            r#"{{"PublicIP":"{public_ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:de:ad:00:00:0{n}"}}}}"#
        );
        cluster.etcdctl(&["put", &format!("/coreos.com/network/subnets/{subnet}-24"), &attrs]);
    }
    let metrics = || {
        let addr = common::cluster::AGENT_LISTEN.parse().unwrap();
        let answer = weft::lab::probe::http_get(&cluster.host_ns(1), addr, "/metrics").unwrap();
        answer.map(|(_, body)| body).unwrap_or_default()
    };
    let rejected = |body: &str, reason: &str| {
        weft::lab::probe::metric(body, &format!("weft_peers_rejected_total{{reason=\"{reason}\"}}"))
    };
    wait_until("h1 sees the three leases", Duration::from_secs(5), || {
        weft::lab::probe::metric(&metrics(), "weft_leases_watched") == Some(4.0)
    });
    // A resync later (the cluster's is 2 s): still nothing for them.
    std::thread::sleep(Duration::from_secs(3));
    let routes = weft_routes(&cluster, 1);
    assert!(hostile.iter().all(|(subnet, _)| !routes.contains(&format!("{subnet}/24"))), "{routes:?}");
    let out = weft::netns::Netns::open(&cluster.host(1).ns)
        .unwrap()
        .command("bridge")
        .unwrap()
        .args(["-j", "fdb", "show", "dev", "flannel.1"])
        .output()
        .unwrap();
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dsts: Vec<&str> = entries.as_array().unwrap().iter().filter_map(|e| e["dst"].as_str()).collect();
    assert_eq!(dsts, [cluster.host(2).addr.to_string()], "only h2's FDB entry: {entries}");
    let neighbours = cluster.ip_json(&cluster.host(1).ns, &["-4", "neigh", "show", "dev", "flannel.1"]);
    assert_eq!(neighbours.as_array().unwrap().len(), 1, "only h2's neighbour: {neighbours}");
    // Each refused once, with a warning naming the lease and the address.
    let body = metrics();
    for reason in ["own_address", "multicast", "unspecified"] {
        assert_eq!(rejected(&body, reason), Some(1.0), "{reason}: {body}");
    }
    let log = cluster.agent_log(1);
    for (subnet, public_ip) in hostile {
        let named = log.lines().any(|l| {
            l.contains("skipping peer")
                && l.contains(&format!("{subnet}/24"))
                && l.contains(&format!("public_ip={public_ip}"))
        });
        assert!(named, "no warning naming {subnet}/24 and {public_ip} in h1's log:\n{log}");
    }
    assert_full_mesh(&cluster, &pods);
}

/// `iptables -S FORWARD` in host i's namespace.
fn iptables_forward(cluster: &Cluster, i: usize) -> Vec<String> {
    let out = cluster.host_ns(i).command("iptables").unwrap().args(["-S", "FORWARD"]).output().unwrap();
    assert!(out.status.success(), "iptables -S FORWARD in h{i}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn weft_forward_rules(cluster: &Cluster, i: usize) -> Vec<String> {
    iptables_forward(cluster, i).into_iter().filter(|rule| rule.contains("10.244.0.0/16")).collect()
}

/// Docker's FORWARD DROP policy (iptables-nft) on both hosts: with `agent.forward_rules` (the
/// default) pods still reach each other; without, they do not. `weft agent --cleanup` takes the
/// rules away, and only them.
#[test]
fn forward_rules_let_pods_talk_under_a_forward_drop_policy() {
    let mut cluster = Cluster::with_etcd(2);
    cluster.write_config(&format!("{NETWORK}\n[network.backend]\ntype = \"host-gw\""));
    cluster.weft_ok(&["network", "apply"]);
    for i in 1..=2 {
        let out = cluster.host_ns(i).command("iptables").unwrap().args(["-P", "FORWARD", "DROP"]).output().unwrap();
        assert!(out.status.success(), "iptables -P FORWARD DROP: {}", String::from_utf8_lossy(&out.stderr));
    }
    for i in 1..=2 {
        cluster.start_agent(i, &["--forward-rules", "false"]);
    }
    let infos: Vec<SubnetInfo> = (1..=2).map(|i| cluster.wait_subnet(i)).collect();
    let pods: Vec<PodAddrs> = (1..=2).map(|i| cluster.make_pod(i, infos[i - 1])).collect();
    let peer = infos[1].subnet.trunc().to_string();
    wait_until("h1's route to h2's subnet", Duration::from_secs(10), || weft_routes(&cluster, 1).contains(&peer));
    assert!(weft_forward_rules(&cluster, 1).is_empty(), "{:?}", iptables_forward(&cluster, 1));
    assert!(
        cluster.ping(&cluster.pod_ns(1), pods[1].pod.addr()).is_none(),
        "pods talk through a FORWARD DROP policy without forward rules: the test proves nothing"
    );

    for i in 1..=2 {
        cluster.stop_agent(i);
        cluster.start_agent(i, &[]);
    }
    assert_full_mesh(&cluster, &pods);
    for i in 1..=2 {
        let rules = weft_forward_rules(&cluster, i);
        assert_eq!(rules.len(), 2, "h{i}: {:?}", iptables_forward(&cluster, i));
        assert!(
            rules[0].starts_with("-A FORWARD -s 10.244.0.0/16") && rules[1].starts_with("-A FORWARD -d 10.244.0.0/16")
        );
    }

    // `weft status` in h1 (agent.listen from the config: the default address) counts the peer
    // the kernel carries and the objects installed for it.
    let status = cluster.weft_ok(&["status", "-o", "json"]);
    let status: weft::status::AgentStatus = serde_json::from_str(&status).unwrap();
    assert!(status.ready, "{status:#?}");
    assert_eq!((status.peers.known, status.peers.kernel), (1, 1), "{status:#?}");
    assert!(status.kernel.wanted >= 1 && status.kernel.installed == status.kernel.wanted, "{status:#?}");
    assert_eq!(status.backends.active.as_deref(), Some("host-gw"));
    assert!(status.conditions.iter().any(|c| c.name == "forward" && c.ok), "{status:#?}");

    // Stopping the agent leaves its kernel state (a restart must not cut pods off); the cleanup
    // takes the rules away, the policy stays.
    cluster.stop_agent(1);
    assert_eq!(weft_forward_rules(&cluster, 1).len(), 2);
    let out = cluster.weft_ok(&["agent", "--cleanup"]);
    assert!(out.contains("FORWARD rules: removed"), "{out}");
    assert_eq!(iptables_forward(&cluster, 1), ["-P FORWARD DROP"]);

    // Turned off on a running host: removed at the next pass.
    cluster.stop_agent(2);
    cluster.start_agent(2, &["--forward-rules", "false"]);
    wait_until("h2's forward rules removed", Duration::from_secs(10), || weft_forward_rules(&cluster, 2).is_empty());
}

/// `weft check connectivity` from h1: h2's subnet answers at its first address (cni0), a lease
/// of a host that is not there does not, and the exit code says so.
#[test]
fn check_connectivity_pings_every_peer_subnet_and_fails_on_a_dead_one() {
    let (cluster, infos, _pods) = cluster_with_pods(2, "type = \"host-gw\"");
    let subnet_file = cluster.subnet_file(1);
    let args = ["check", "connectivity", "-o", "json", "--subnet-file", subnet_file.to_str().unwrap()];
    let peer = infos[1].subnet.trunc().to_string();
    wait_until("h1's route to h2", Duration::from_secs(10), || weft_routes(&cluster, 1).contains(&peer));
    let out = cluster.weft(&args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<weft::commands::check::PeerProbe> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1, "our own subnet is left out: {rows:#?}");
    assert_eq!(rows[0].subnet, peer);
    assert_eq!(rows[0].target, infos[1].subnet.trunc().hosts().next().unwrap().to_string());
    assert!(rows[0].reachable && rows[0].rtt_ms.is_some(), "{rows:#?}");
    assert_eq!(rows[0].path, "host-gw");

    // A lease whose host does not exist.
    let attrs = r#"{"PublicIP":"198.51.100.99","PublicIPv6":null,"BackendType":"host-gw"}"#;
    cluster.etcdctl(&["put", "/coreos.com/network/subnets/10.244.20.0-24", attrs]);
    let out = cluster.weft(&args);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<weft::commands::check::PeerProbe> = serde_json::from_slice(&out.stdout).unwrap();
    let dead = rows.iter().find(|r| r.subnet == "10.244.20.0/24").expect("the dead lease is probed");
    assert!(!dead.reachable && dead.rtt_ms.is_none(), "{rows:#?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 peers unreachable"));
    let text = cluster
        .weft(&args[..2].iter().copied().chain(["--subnet-file", subnet_file.to_str().unwrap()]).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("10.244.20.0/24") && text.contains('✗') && text.contains('✓'), "{text}");
}
