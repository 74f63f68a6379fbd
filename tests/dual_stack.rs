//! Dual-stack vxlan and host-gw across hosts: real agents in network namespaces (common::cluster), a real
//! etcd, real packets over IPv4 and IPv6 between pods. The hosts' IPv6 underlay is 2001:db8::/64,
//! the pods' IPv6 network 2001:db8:42::/56 (documentation ranges). Needs root: fails, never
//! skips, without it.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use common::cluster::Cluster;
use common::packets::Flow;
use common::wait::until as wait_until;
use weft::subnet_env::{Ipv6Pair, SubnetEnv};

/// The dual-stack network with `backend` (the `[network.backend]` body).
fn network(backend: &str) -> String {
    format!(
        "cidr = \"10.244.0.0/16\"\nsubnet_min = \"10.244.1.0\"\nsubnet_max = \"10.244.9.0\"\n\
         ipv6_cidr = \"2001:db8:42::/56\"\n[network.backend]\n{backend}"
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

/// Host i's subnet.env once it names both subnets.
fn dual_subnet_env(cluster: &mut Cluster, i: usize) -> (SubnetEnv, Ipv6Pair) {
    cluster.wait_subnet(i);
    let env = SubnetEnv::read(&cluster.subnet_file(i)).expect("subnet.env reads");
    let v6 = env.ipv6.unwrap_or_else(|| panic!("h{i}'s subnet.env has no IPv6 lines:\n{}", cluster.agent_log(i)));
    (env, v6)
}

/// Gives host i's pod (made by `make_pod`) an IPv6 address in `v6`'s subnet: `::1` on the bridge,
/// `::2` in the pod with a default route to `::1`. Returns the pod's address.
fn add_pod_ipv6(cluster: &Cluster, i: usize, v6: &Ipv6Pair) -> Ipv6Addr {
    let gateway = v6.gateway();
    let pod = Ipv6Addr::from(u128::from(gateway) + 1);
    let len = v6.subnet.prefix_len();
    let host = cluster.host(i).ns;
    ip(&host, &["-6", "addr", "add", &format!("{gateway}/{len}"), "dev", "cni0", "nodad"]);
    let pod_ns = cluster.pod_ns(i);
    ip(&pod_ns, &["-6", "addr", "add", &format!("{pod}/{len}"), "dev", "eth0", "nodad"]);
    ip(&pod_ns, &["-6", "route", "add", "default", "via", &gateway.to_string()]);
    pod
}

/// Every pod reaches every other over both families.
fn assert_full_mesh(cluster: &Cluster, pods: &[(IpAddr, IpAddr)]) {
    for from in 1..=pods.len() {
        for to in (1..=pods.len()).filter(|to| *to != from) {
            let (v4, v6) = pods[to - 1];
            for target in [v4, v6] {
                assert!(
                    cluster.wait_ping(&cluster.pod_ns(from), target, Duration::from_secs(5)),
                    "pod h{from} cannot reach pod h{to} at {target}; h{from}'s IPv6 routes: {}\nh{from}'s log:\n{}",
                    cluster.ip_json(&cluster.host(from).ns, &["-6", "route"]),
                    cluster.agent_log(from)
                );
            }
        }
    }
}

/// `hosts` dual-stack hosts running `backend`, h1 with masquerade on (its IPv6 table must leave
/// pod-to-pod traffic alone like the IPv4 one), each with a dual-stack pod; every pod reaches
/// every other over both families.
fn dual_stack_cluster(hosts: usize, backend: &str) -> (Cluster, Vec<SubnetEnv>, Vec<(IpAddr, IpAddr)>) {
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
    let mut pods = Vec::new();
    let mut envs = Vec::new();
    for i in 1..=hosts {
        let (env, v6) = dual_subnet_env(&mut cluster, i);
        assert_eq!(v6.network.to_string(), "2001:db8:42::/56");
        assert_eq!(v6.subnet.prefix_len(), 64, "flannel's default IPv6 subnet length");
        let addrs = cluster.make_pod(i, weft::lab::pods::SubnetInfo::of(env.clone()).expect("an IPv4 subnet"));
        let pod_v6 = add_pod_ipv6(&cluster, i, &v6);
        pods.push((IpAddr::V4(addrs.pod.addr()), IpAddr::V6(pod_v6)));
        envs.push(env);
    }
    assert_full_mesh(&cluster, &pods);
    (cluster, envs, pods)
}

#[test]
fn pods_talk_over_ipv4_and_ipv6_with_vxlan() {
    let (cluster, envs, _) = dual_stack_cluster(3, "type = \"vxlan\"");
    // flannel's second device, over the IPv6 underlay; pods get the MTU that fits both.
    let links = cluster.ip_json(&cluster.host(1).ns, &["-d", "link", "show", "flannel-v6.1"]);
    let link = &links[0];
    assert_eq!(link["mtu"], 1430, "{link}");
    assert_eq!(link["linkinfo"]["info_data"]["local6"], host_ipv6(1).to_string(), "{link}");
    assert_eq!(envs[0].mtu, 1430);
    let keys = cluster.etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]);
    assert_eq!(keys.matches("\"BackendV6Data\":{\"VNI\":1,\"VtepMAC\":").count(), 3, "{keys}");
    // /status names both subnets and both public addresses.
    let (code, body) = cluster.agent_get(1, "/status").expect("h1's /status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status as JSON");
    let v6 = envs[0].ipv6.as_ref().expect("an IPv6 pair").subnet.trunc().to_string();
    assert_eq!(
        status["lease"]["subnets"],
        serde_json::json!([envs[0].ipv4.unwrap().subnet.trunc().to_string(), v6]),
        "{body}"
    );
    assert_eq!(status["lease"]["public_ipv6"], host_ipv6(1).to_string(), "{body}");
}

/// vxlan with `direct_routing`: hosts on one IPv6 segment route each other's IPv6 subnets
/// through the underlay, unencapsulated, as they do the IPv4 ones; pods still reach each other
/// over both families (checked by `dual_stack_cluster`).
#[test]
fn vxlan_direct_routing_carries_ipv6_peers_on_the_segment_unencapsulated() {
    let (cluster, envs, _) = dual_stack_cluster(2, "type = \"vxlan\"\ndirect_routing = true");
    let peer_v6 = envs[1].ipv6.as_ref().expect("h2's IPv6 pair").subnet.trunc().to_string();
    let routes = cluster.ip_json(&cluster.host(1).ns, &["-6", "route", "show", &peer_v6]);
    let text = routes.to_string();
    assert!(!text.contains("flannel-v6.1"), "h2's IPv6 subnet still goes through the device: {text}");
    assert!(text.contains(&host_ipv6(2).to_string()), "not via h2's IPv6 address: {text}");
    let fdb = cluster.ip_json(&cluster.host(1).ns, &["neigh", "show", "dev", "flannel-v6.1"]);
    assert_eq!(fdb, serde_json::json!([]), "no IPv6 VTEP neighbour for a direct peer");
}

#[test]
fn pods_talk_over_ipv4_and_ipv6_with_host_gw() {
    let hosts = 3;
    let (mut cluster, envs, pods) = dual_stack_cluster(hosts, "type = \"host-gw\"");

    // The store holds flannel's dual-stack keys and attributes.
    let keys = cluster.etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]);
    for (i, env) in envs.iter().enumerate() {
        let v6 = env.ipv6.unwrap();
        let key = format!(
            "/coreos.com/network/subnets/{}-{}&{}-{}",
            env.ipv4.unwrap().subnet.network(),
            env.ipv4.unwrap().subnet.prefix_len(),
            v6.subnet.network(),
            v6.subnet.prefix_len()
        );
        assert!(keys.contains(&key), "no key {key} in:\n{keys}");
        assert!(keys.contains(&format!("\"PublicIPv6\":\"{}\"", host_ipv6(i + 1))), "{keys}");
    }
    // Each host routes the others' IPv6 subnets via their IPv6 addresses, as weft's routes.
    let routes = cluster.ip_json(&cluster.host(1).ns, &["-6", "route", "show", "proto", "87"]);
    let dsts: Vec<&str> = routes.as_array().unwrap().iter().filter_map(|r| r["dst"].as_str()).collect();
    assert_eq!(dsts.len(), hosts - 1, "h1's IPv6 routes: {routes}");

    // h1's masquerade covers both families: `ip6 weft` names the IPv6 network and h1's subnet.
    let nft = |family: &str| {
        let out = weft::netns::Netns::open(&cluster.host(1).ns)
            .unwrap()
            .command("nft")
            .unwrap()
            .args(["-j", "list", "table", family, "weft"])
            .output()
            .unwrap();
        assert!(out.status.success(), "no table {family} weft on h1: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let v6_table = nft("ip6");
    let own_v6 = envs[0].ipv6.unwrap().subnet.network().to_string();
    assert!(v6_table.contains("2001:db8:42::") && v6_table.contains(&own_v6), "{v6_table}");
    assert!(v6_table.contains("masquerade"), "{v6_table}");
    assert!(nft("ip").contains("10.244.0.0"));

    // A lease as flanneld writes it (Go's encoding/json: BackendData left out for host-gw) for a
    // host that runs flannel: routed like weft's own.
    let flannel = r#"{"PublicIP":"198.51.100.99","PublicIPv6":"2001:db8::99","BackendType":"host-gw"}"#;
    cluster.etcdctl(&["put", "/coreos.com/network/subnets/10.244.99.0-24&2001:db8:42:99::-64", flannel]);
    wait_until("h1 routes flannel's IPv6 subnet", Duration::from_secs(10), || {
        let routes = cluster.ip_json(&cluster.host(1).ns, &["-6", "route", "show", "2001:db8:42:99::/64"]);
        routes.to_string().contains("2001:db8::99")
    });
    cluster.etcdctl(&["del", "/coreos.com/network/subnets/10.244.99.0-24&2001:db8:42:99::-64"]);

    // A restart keeps both subnets.
    cluster.stop_agent(2);
    std::fs::remove_file(cluster.subnet_file(2)).unwrap();
    cluster.start_agent(2, &[]);
    let (again, _) = dual_subnet_env(&mut cluster, 2);
    assert_eq!(again, envs[1], "h2 leased other subnets after a restart");
    assert_full_mesh(&cluster, &pods);
}

/// A live switch vxlan → host-gw → vxlan with pods pinging over both families all along: no
/// packet lost, both subnets kept.
#[test]
fn a_live_switch_keeps_both_families_flowing() {
    const HOSTS: usize = 3;
    const PINGS: u32 = 500;
    let (cluster, envs, pods) = dual_stack_cluster(HOSTS, "type = \"vxlan\"");
    let mut report = Vec::new();
    for kind in ["host-gw", "vxlan"] {
        let mut flows = Vec::new();
        for (from, to) in [(1, 2), (2, 3), (3, 1)] {
            let (v4, v6) = pods[to - 1];
            flows.push(Flow::start(&cluster, from, v4, PINGS));
            flows.push(Flow::start(&cluster, from, v6, PINGS));
        }
        std::thread::sleep(Duration::from_millis(300));
        cluster.write_config(&network(&format!("type = \"{kind}\"")));
        cluster.weft_ok(&["network", "apply"]);
        let took = wait_until(&format!("every host on {kind}"), Duration::from_secs(20), || {
            cluster.runs_ipv6_backend(HOSTS, kind)
        });
        for flow in flows {
            let label = flow.name.clone();
            let (sent, received) = flow.finish();
            report.push(format!("to {kind}: {label}: {sent} sent, {} lost (switched in {took:?})", sent - received));
            assert!(sent > 50, "{label}: the flow did not run");
            assert_eq!(sent - received, 0, "{label}: packets lost switching to {kind}\n{}", report.join("\n"));
        }
        for (i, env) in envs.iter().enumerate() {
            let now = SubnetEnv::read(&cluster.subnet_file(i + 1)).unwrap();
            assert_eq!((now.ipv4, now.ipv6), (env.ipv4, env.ipv6));
        }
    }
    eprintln!("{}", report.join("\n"));
}
