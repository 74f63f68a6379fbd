//! An IPv6-only network on hosts with no IPv4 address at all: real agents in network namespaces
//! (common::cluster) whose only underlay is 2001:db8::/64, a real etcd reached over IPv6, pods on
//! 2001:db8:42::/56 with IPv6 only (documentation ranges). The agents choose `eth0` without an
//! IPv4 address, publish 0.0.0.0 as flannel does, run vxlan over IPv6, and switch live to
//! host-gw and back with pods pinging all along: the lost packets are counted. Needs root:
//! fails, never skips, without it.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use common::cluster::Cluster;
use common::packets::Flow;
use common::wait;
use weft::subnet_env::SubnetEnv;

const HOSTS: usize = 3;

/// The IPv6-only network with `backend` (the `[network.backend]` body).
fn network(backend: &str) -> String {
    format!("enable_ipv4 = false\nipv6_cidr = \"2001:db8:42::/56\"\n[network.backend]\ntype = \"{backend}\"")
}

/// Runs `ip <args>` in namespace `ns`; panics with its error.
fn ip(ns: &str, args: &[&str]) {
    let out = weft::netns::Netns::open(ns).unwrap().command("ip").unwrap().args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Host i's subnet.env once the agent wrote it (IPv6 lines only, on an IPv6-only network).
fn subnet_env(cluster: &Cluster, i: usize) -> SubnetEnv {
    let read = || SubnetEnv::read(&cluster.subnet_file(i)).ok();
    let what = format!("h{i}'s subnet.env");
    wait::until_every(&what, Duration::from_secs(20), wait::POLL, || read().is_some(), || cluster.agent_log(i));
    read().expect("read a moment ago")
}

/// `HOSTS` hosts whose `eth0` has only its IPv6 address, agents on `backend`, an IPv6-only pod
/// on each; every pod reaches every other. Returns the cluster and the pods' addresses.
fn cluster_without_ipv4(backend: &str) -> (Cluster, Vec<Ipv6Addr>) {
    let mut cluster = Cluster::with_etcd(HOSTS);
    cluster.add_ipv6_underlay();
    for i in 1..=HOSTS {
        ip(&cluster.host(i).ns, &["-4", "addr", "flush", "dev", "eth0"]);
    }
    cluster.etcd_over_ipv6 = true;
    cluster.write_config(&network(backend));
    cluster.weft_ok(&["network", "apply"]);
    for i in 1..=HOSTS {
        cluster.start_agent(i, &[]);
    }
    let mut pods = Vec::new();
    for i in 1..=HOSTS {
        let env = subnet_env(&cluster, i);
        assert!(env.ipv4.is_none(), "h{i}: {env:?}");
        let (_, pod) = cluster.make_ipv6_only_pod(i, env.mtu);
        pods.push(pod);
    }
    for from in 1..=HOSTS {
        for to in (1..=HOSTS).filter(|to| *to != from) {
            assert!(
                cluster.wait_ping(&cluster.pod_ns(from), pods[to - 1], Duration::from_secs(5)),
                "pod h{from} cannot reach pod h{to}; h{from}'s IPv6 routes: {}\nh{from}'s log:\n{}",
                cluster.ip_json(&cluster.host(from).ns, &["-6", "route"]),
                cluster.agent_log(from)
            );
        }
    }
    (cluster, pods)
}

#[test]
fn hosts_without_ipv4_run_an_ipv6_only_network_and_switch_backends_live() {
    const PINGS: u32 = 500;
    let (cluster, pods) = cluster_without_ipv4("vxlan");

    // Nothing IPv4 anywhere: no address on the underlay, the device over IPv6, 0.0.0.0 published.
    for i in 1..=HOSTS {
        let v4 = cluster.ip_json(&cluster.host(i).ns, &["-4", "addr", "show", "dev", "eth0"]);
        let v4_addrs: usize =
            v4.as_array().unwrap().iter().map(|l| l["addr_info"].as_array().map_or(0, Vec::len)).sum();
        assert_eq!(v4_addrs, 0, "h{i} has an IPv4 address: {v4}");
        let links = cluster.ip_json(&cluster.host(i).ns, &["-d", "link", "show", "flannel-v6.1"]);
        assert_eq!(links[0]["linkinfo"]["info_data"]["local6"], cluster.host_v6(i).to_string(), "h{i}");
    }
    let list: serde_json::Value = serde_json::from_str(&cluster.weft_ok(&["leases", "list", "--json"])).unwrap();
    let publics: BTreeSet<String> =
        list.as_array().unwrap().iter().map(|l| l["public_ipv6"].as_str().unwrap_or("-").to_string()).collect();
    let hosts: BTreeSet<String> = (1..=HOSTS).map(|i| cluster.host_v6(i).to_string()).collect();
    assert_eq!(publics, hosts, "{list}");
    assert!(list.as_array().unwrap().iter().all(|l| l["public_ip"] == "0.0.0.0"), "{list}");

    // vxlan → host-gw → vxlan with every pod pinging the next all along.
    let before: Vec<SubnetEnv> = (1..=HOSTS).map(|i| subnet_env(&cluster, i)).collect();
    let mut report = Vec::new();
    for kind in ["host-gw", "vxlan"] {
        let flows: Vec<Flow> = [(1, 2), (2, 3), (3, 1)]
            .into_iter()
            .map(|(from, to)| Flow::start(&cluster, from, IpAddr::V6(pods[to - 1]), PINGS))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        cluster.write_config(&network(kind));
        cluster.weft_ok(&["network", "apply"]);
        let took = wait::until(&format!("every host on {kind}"), Duration::from_secs(20), || {
            cluster.runs_ipv6_backend(HOSTS, kind)
        });
        for flow in flows {
            let label = flow.name.clone();
            let (sent, received) = flow.finish();
            report.push(format!("to {kind}: {label}: {sent} sent, {} lost (switched in {took:?})", sent - received));
            assert!(sent > 50, "{label}: the flow did not run");
            assert_eq!(sent - received, 0, "{label}: packets lost switching to {kind}\n{}", report.join("\n"));
        }
        let now: Vec<SubnetEnv> = (1..=HOSTS).map(|i| subnet_env(&cluster, i)).collect();
        let subnets = |envs: &[SubnetEnv]| envs.iter().map(|e| e.ipv6.map(|v6| v6.subnet)).collect::<Vec<_>>();
        assert_eq!(subnets(&now), subnets(&before), "a switch moved a host's IPv6 subnet");
    }
    eprintln!("{}", report.join("\n"));
}
