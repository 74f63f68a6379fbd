//! IPv6-only vxlan and host-gw across hosts (`enable_ipv4 = false`): real agents in network
//! namespaces (common::cluster), a real etcd, real packets over IPv6 between pods that have no
//! IPv4 address at all. The hosts keep their IPv4 underlay (198.51.100.0/24) beside an IPv6 one,
//! 2001:db8::/64; the pods' network is 2001:db8:42::/56 (documentation ranges). Proves that
//! nothing IPv4 is made for the pods (no `flannel.1`, no IPv4 route of weft's, no IPv4 lines in
//! subnet.env) and that the store holds flannel's IPv6-only leases
//! (`0.0.0.0-0&<IPv6 subnet>`, `PublicIP` 0.0.0.0). Needs root: fails, never skips, without it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::time::Duration;

use common::cluster::Cluster;
use common::wait;
use ipnet::Ipv6Net;
use weft::subnet_env::{Ipv6Pair, SubnetEnv};

/// Where flannel keeps the leases.
const SUBNETS: &str = "/coreos.com/network/subnets/";
/// A lease as flanneld writes it for an IPv6-only host-gw node (Go's encoding/json: no
/// BackendData), outside the agents' subnet range so no agent can hold it.
const FLANNEL_KEY: &str = "/coreos.com/network/subnets/0.0.0.0-0&2001:db8:42:99::-64";
const FLANNEL_LEASE: &str = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::99","BackendType":"host-gw"}"#;

/// The IPv6-only network with `backend` (the `[network.backend]` body); the agents lease between
/// :1:: and :9::, as dual_stack.rs keeps them below 10.244.99.0, so 2001:db8:42:99::/64 is free
/// for flanneld's lease.
fn network(backend: &str) -> String {
    format!(
        "enable_ipv4 = false\nipv6_cidr = \"2001:db8:42::/56\"\n\
         ipv6_subnet_min = \"2001:db8:42:1::\"\nipv6_subnet_max = \"2001:db8:42:9::\"\n\
         [network.backend]\n{backend}"
    )
}

/// Host i's IPv6 underlay address, beside its IPv4 one (198.51.100.10+i).
fn host_ipv6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10 + i as u16)
}

/// Runs `ip <args>` in namespace `ns`; panics with its error.
fn ip(ns: &str, args: &[&str]) {
    let out = weft::netns::Netns::open(ns).unwrap().command("ip").unwrap().args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Host i's subnet.env once it names an IPv6 subnet (`Cluster::wait_subnet_v6`), and that pair.
fn ipv6_subnet_env(cluster: &mut Cluster, i: usize) -> (SubnetEnv, Ipv6Pair) {
    let env = cluster.wait_subnet_v6(i);
    let v6 = env.ipv6.expect("waited for it");
    (env, v6)
}

/// The file as flanneld writes it for an IPv6-only host: the IPv6 lines, none of the IPv4 ones
/// (a CNI plugin reading `FLANNEL_SUBNET` would give pods IPv4 addresses).
fn assert_ipv6_only_subnet_env(cluster: &Cluster, i: usize, v6: &Ipv6Pair) {
    let text = std::fs::read_to_string(cluster.subnet_file(i)).expect("read subnet.env");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"FLANNEL_IPV6_NETWORK=2001:db8:42::/56"), "h{i}'s subnet.env:\n{text}");
    let subnet_line = format!("FLANNEL_IPV6_SUBNET={}/64", v6.gateway());
    assert!(subnet_line.ends_with("::1/64") && lines.contains(&subnet_line.as_str()), "h{i}'s subnet.env:\n{text}");
    let ipv4 = |l: &&str| l.starts_with("FLANNEL_NETWORK=") || l.starts_with("FLANNEL_SUBNET=");
    assert!(!lines.iter().any(ipv4), "h{i}'s IPv6-only subnet.env has IPv4 lines:\n{text}");
    let env = SubnetEnv::read(&cluster.subnet_file(i)).expect("subnet.env parses");
    assert!(env.ipv4.is_none(), "h{i}: {env:?}");
}

/// Every pod reaches every other over IPv6, the only family there is.
fn assert_full_mesh(cluster: &Cluster, pods: &[Ipv6Addr]) {
    for from in 1..=pods.len() {
        for to in (1..=pods.len()).filter(|to| *to != from) {
            let target = pods[to - 1];
            assert!(
                cluster.wait_ping(&cluster.pod_ns(from), target, Duration::from_secs(5)),
                "pod h{from} cannot reach pod h{to} at {target}; h{from}'s IPv6 routes: {}\nh{from}'s log:\n{}",
                cluster.ip_json(&cluster.host(from).ns, &["-6", "route"]),
                cluster.agent_log(from)
            );
        }
    }
}

/// `hosts` IPv6-only hosts running `backend`, h1 with masquerade on (only its IPv6 table may
/// come), each with an IPv6-only pod; every pod reaches every other.
fn ipv6_only_cluster(hosts: usize, backend: &str) -> (Cluster, Vec<SubnetEnv>, Vec<Ipv6Addr>) {
    let mut cluster = Cluster::with_etcd(hosts);
    for i in 1..=hosts {
        ip(&cluster.host(i).ns, &["-6", "addr", "add", &format!("{}/64", host_ipv6(i)), "dev", "eth0", "nodad"]);
    }
    cluster.write_config(&network(backend));
    cluster.weft_ok(&["network", "apply"]);
    cluster.start_agent(1, &["--ip-masq", "true"]);
    for i in 2..=hosts {
        cluster.start_agent(i, &[]);
    }
    let mut envs = Vec::new();
    let mut pods = Vec::new();
    for i in 1..=hosts {
        let (env, v6) = ipv6_subnet_env(&mut cluster, i);
        assert!(env.ipv4.is_none(), "h{i} has IPv4 lines in an IPv6-only network: {env:?}");
        assert_eq!(v6.network.to_string(), "2001:db8:42::/56");
        assert_eq!(v6.subnet.prefix_len(), 64, "flannel's default IPv6 subnet length");
        pods.push(cluster.make_ipv6_only_pod(i, env.mtu).1);
        envs.push(env);
    }
    assert_full_mesh(&cluster, &pods);
    (cluster, envs, pods)
}

/// Each env's IPv6 pair (every env of an IPv6-only cluster has one).
fn ipv6_pairs(envs: &[SubnetEnv]) -> Vec<Ipv6Pair> {
    envs.iter().map(|env| env.ipv6.expect("an IPv6 pair")).collect()
}

/// flannel's key of an IPv6-only lease: the IPv4 half is the zero network.
fn ipv6_only_key(v6: &Ipv6Pair) -> String {
    format!("{SUBNETS}0.0.0.0-0&{}-{}", v6.subnet.network(), v6.subnet.prefix_len())
}

/// The leases in etcd, key to JSON: `etcdctl get` prints each key on a line, then its value.
fn stored_leases(cluster: &Cluster) -> BTreeMap<String, serde_json::Value> {
    let out = cluster.etcdctl(&["get", "--prefix", SUBNETS]);
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len() % 2, 0, "keys and values do not pair up:\n{out}");
    let lease = |text: &str| serde_json::from_str(text).unwrap_or_else(|e| panic!("lease JSON {text}: {e}"));
    lines.chunks(2).map(|kv| (kv[0].to_string(), lease(kv[1]))).collect()
}

/// The store holds exactly one flannel IPv6-only lease per host, with `PublicIP` 0.0.0.0 and
/// the host's `PublicIPv6`. Returns them, host 1 first.
fn assert_ipv6_only_leases(cluster: &Cluster, subnets: &[Ipv6Pair], backend: &str) -> Vec<serde_json::Value> {
    let mut leases = stored_leases(cluster);
    let want: BTreeSet<String> = subnets.iter().map(ipv6_only_key).collect();
    assert_eq!(leases.keys().cloned().collect::<BTreeSet<_>>(), want, "the store's leases: {leases:?}");
    let mut ordered = Vec::new();
    for (i, v6) in subnets.iter().enumerate() {
        let lease = leases.remove(&ipv6_only_key(v6)).expect("checked above");
        assert_eq!(lease["PublicIP"], "0.0.0.0", "h{}: {lease}", i + 1);
        assert_eq!(lease["PublicIPv6"], host_ipv6(i + 1).to_string(), "h{}: {lease}", i + 1);
        assert_eq!(lease["BackendType"], backend, "h{}: {lease}", i + 1);
        ordered.push(lease);
    }
    ordered
}

/// weft's IPv4 routes (proto 87, any table) on host i: an IPv6-only host must have none, not
/// even one for the leases' `0.0.0.0-0` half.
fn weft_ipv4_routes(cluster: &Cluster, i: usize) -> serde_json::Value {
    cluster.ip_json(&cluster.host(i).ns, &["-4", "route", "show", "table", "all", "proto", "87"])
}

/// weft's IPv6 routes (proto 87) on host i as (destination, gateway): host-gw's next hops.
fn weft_ipv6_next_hops(cluster: &Cluster, i: usize) -> BTreeSet<(String, String)> {
    let routes = cluster.ip_json(&cluster.host(i).ns, &["-6", "route", "show", "proto", "87"]);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("(none)").to_string();
    routes.as_array().expect("a list").iter().map(|r| (text(&r["dst"]), text(&r["gateway"]))).collect()
}

/// The gateway of host i's route to exactly `dst`, if it has one.
fn gateway_of(cluster: &Cluster, i: usize, dst: &str) -> Option<String> {
    let routes = cluster.ip_json(&cluster.host(i).ns, &["-6", "route", "show", dst]);
    routes.as_array()?.first()?["gateway"].as_str().map(str::to_string)
}

/// The names of host i's links.
fn link_names(cluster: &Cluster, i: usize) -> BTreeSet<String> {
    let links = cluster.ip_json(&cluster.host(i).ns, &["link", "show"]);
    links.as_array().expect("a list").iter().filter_map(|l| l["ifname"].as_str()).map(str::to_string).collect()
}

/// `nft -j list table <family> weft` on host i: the table as JSON, `None` when there is none.
fn weft_table(cluster: &Cluster, i: usize, family: &str) -> Option<String> {
    let mut nft = cluster.host_ns(i).command("nft").expect("enter host");
    let out = nft.args(["-j", "list", "table", family, "weft"]).output().expect("run nft");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// vxlan over IPv6 only: `flannel-v6.1` and no `flannel.1`, flannel's IPv6-only leases, config
/// and subnet.env (this is also where the subnet.env's text is checked), and h1's masquerade,
/// which has only an IPv6 network to cover.
#[test]
fn pods_talk_over_ipv6_only_with_vxlan() {
    let hosts = 3;
    let (cluster, envs, _) = ipv6_only_cluster(hosts, "type = \"vxlan\"");
    let subnets = ipv6_pairs(&envs);

    // `weft network apply` stored flannel's IPv6-only config: IPv4 off, no `Network`.
    let text = cluster.etcdctl(&["get", "--print-value-only", "/coreos.com/network/config"]);
    let config: serde_json::Value = serde_json::from_str(text.trim()).expect("the stored config is JSON");
    assert_eq!(config["EnableIPv4"], false, "{config}");
    assert_eq!(config["EnableIPv6"], true, "{config}");
    assert_eq!(config["IPv6Network"], "2001:db8:42::/56", "{config}");
    assert!(config.get("Network").is_none(), "an IPv4 network in an IPv6-only config: {config}");

    let leases = assert_ipv6_only_leases(&cluster, &subnets, "vxlan");
    for i in 1..=hosts {
        let (env, lease) = (&envs[i - 1], &leases[i - 1]);
        assert_ipv6_only_subnet_env(&cluster, i, &subnets[i - 1]);
        // flannel's IPv6 device alone, over the host's IPv6 underlay; pods get its MTU.
        let links = cluster.ip_json(&cluster.host(i).ns, &["-d", "link", "show", "flannel-v6.1"]);
        let link = &links[0];
        assert_eq!(link["linkinfo"]["info_data"]["local6"], host_ipv6(i).to_string(), "h{i}: {link}");
        assert_eq!(link["mtu"], 1430, "h{i}: {link}");
        assert_eq!(env.mtu, 1430, "h{i}: pods get the IPv6 device's MTU");
        assert!(!link_names(&cluster, i).contains("flannel.1"), "h{i} made the IPv4 vxlan device");
        assert_eq!(weft_ipv4_routes(&cluster, i), serde_json::json!([]), "h{i} has IPv4 routes of weft's");
        // Its lease carries the IPv6 VTEP only.
        assert_eq!(lease["BackendV6Data"]["VNI"], 1, "h{i}: {lease}");
        assert_eq!(lease["BackendV6Data"]["VtepMAC"], link["address"], "h{i}: {lease}");
        assert!(lease.get("BackendData").is_none_or(serde_json::Value::is_null), "h{i}: {lease}");
        // The peers' IPv6 subnets go through the device.
        let peers: BTreeSet<Ipv6Net> =
            subnets.iter().enumerate().filter(|(j, _)| j + 1 != i).map(|(_, v6)| v6.subnet.trunc()).collect();
        assert_eq!(common::packets::overlay_routes_v6(&cluster, i), peers, "h{i}'s routes through flannel-v6.1");
    }

    // h1's masquerade: `ip6 weft` names the IPv6 network and h1's subnet; no IPv4 table.
    let v6_table = weft_table(&cluster, 1, "ip6").expect("h1 has a table ip6 weft");
    let own_v6 = subnets[0].subnet.network().to_string();
    assert!(v6_table.contains("2001:db8:42::") && v6_table.contains(&own_v6), "{v6_table}");
    assert!(v6_table.contains("masquerade"), "{v6_table}");
    assert_eq!(weft_table(&cluster, 1, "ip"), None, "an IPv4 masquerade table with no IPv4 network");
}

/// host-gw over IPv6 only: routes via the peers' IPv6 addresses and none over IPv4, flanneld's
/// IPv6-only lease routed and unrouted, and a restart that finds its lease by `PublicIPv6`.
#[test]
fn pods_talk_over_ipv6_only_with_host_gw() {
    let hosts = 3;
    let (mut cluster, envs, pods) = ipv6_only_cluster(hosts, "type = \"host-gw\"");
    let subnets = ipv6_pairs(&envs);
    assert_ipv6_only_leases(&cluster, &subnets, "host-gw");

    // h1 routes each peer's IPv6 subnet via the peer's IPv6 address, as weft's routes, and
    // no host has an IPv4 route of weft's.
    let want: BTreeSet<(String, String)> =
        (2..=hosts).map(|i| (subnets[i - 1].subnet.trunc().to_string(), host_ipv6(i).to_string())).collect();
    assert_eq!(weft_ipv6_next_hops(&cluster, 1), want, "h1's IPv6 routes");
    for i in 1..=hosts {
        assert_eq!(weft_ipv4_routes(&cluster, i), serde_json::json!([]), "h{i} has IPv4 routes of weft's");
    }

    // A lease as flanneld writes it for an IPv6-only host: routed like weft's own, and only
    // over IPv6; its route goes with it.
    let h1 = cluster.host(1).ns;
    cluster.etcdctl(&["put", FLANNEL_KEY, FLANNEL_LEASE]);
    let via_flannel = || gateway_of(&cluster, 1, "2001:db8:42:99::/64").as_deref() == Some("2001:db8::99");
    let routes = || format!("{}\n{}", cluster.ip_json(&h1, &["-6", "route"]), cluster.agent_log(1));
    wait::until_every("h1 routes flanneld's IPv6-only lease", Duration::from_secs(10), wait::POLL, via_flannel, routes);
    assert_eq!(weft_ipv4_routes(&cluster, 1), serde_json::json!([]), "flanneld's lease made an IPv4 route");
    cluster.etcdctl(&["del", FLANNEL_KEY]);
    let gone = || gateway_of(&cluster, 1, "2001:db8:42:99::/64").is_none();
    wait::until_every("h1 drops the deleted lease's route", Duration::from_secs(10), wait::POLL, gone, routes);

    // A restart without subnet.env finds h2's lease by its public IPv6 address (every lease
    // here has PublicIP 0.0.0.0) and keeps its subnet.
    cluster.stop_agent(2);
    std::fs::remove_file(cluster.subnet_file(2)).unwrap();
    cluster.start_agent(2, &[]);
    let (_, again) = ipv6_subnet_env(&mut cluster, 2);
    assert_eq!(again, subnets[1], "h2 leased another IPv6 subnet after a restart:\n{}", cluster.agent_log(2));
    assert_ipv6_only_subnet_env(&cluster, 2, &again);
    assert_ipv6_only_leases(&cluster, &subnets, "host-gw");
    assert_full_mesh(&cluster, &pods);
}
