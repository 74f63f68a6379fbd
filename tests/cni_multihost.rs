//! Pods attached by `weft-cni` (delegating to Debian's real bridge and host-local plugins) on two
//! hosts in network namespaces reach each other over weft's vxlan. Needs root: fails, never
//! skips, without it.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::cluster::Cluster;
use common::cni::{self, Attachment};
use weft::netns::Netns;

#[test]
fn pods_added_by_weft_cni_reach_each_other_over_vxlan() {
    cni::ensure_plugins();
    let mut cluster = Cluster::with_etcd(2);
    cluster.write_config(
        "cidr = \"10.244.0.0/16\"\nsubnet_min = \"10.244.1.0\"\nsubnet_max = \"10.244.9.0\"\n[network.backend]\ntype = \"vxlan\"",
    );
    cluster.weft_ok(&["network", "apply"]);
    let mut pods = Vec::new();
    for i in 1..=2 {
        cluster.start_agent(i, &[]);
        let subnet = cluster.wait_subnet(i).ipv4().expect("an IPv4 subnet");
        // Named with the cluster's prefix: the cluster removes it, also when the test fails.
        let pod = Netns::create(&format!("{}cni{i}", cluster.topology.prefix)).expect("pod namespace");
        let conf = cni::plugin_conf("weft", &cluster.subnet_file(i), &cluster.path(&format!("cni-h{i}")));
        let attachment =
            Attachment { container_id: format!("pod-h{i}"), netns: pod.path.clone(), ifname: "eth0".into() };
        let result = cni::call(&cluster.host_ns(i), "ADD", &conf, &attachment).ok();
        let address: ipnet::Ipv4Net =
            result["ips"][0]["address"].as_str().expect("an address in the ADD result").parse().unwrap();
        assert!(subnet.contains(&address.addr()), "{address} is not in h{i}'s subnet {subnet}");
        let mtu = cluster.ip_json(&pod.name, &["link", "show", "eth0"])[0]["mtu"].as_u64();
        assert_eq!(mtu, Some(1450), "the pod's MTU leaves room for vxlan's headers");
        pods.push((pod, conf, attachment, address.addr()));
    }
    let (to_h2, to_h1): (Ipv4Addr, Ipv4Addr) = (pods[1].3, pods[0].3);
    assert!(cluster.wait_ping(&pods[0].0.name, to_h2, Duration::from_secs(10)), "h1's pod cannot reach h2's");
    assert!(cluster.wait_ping(&pods[1].0.name, to_h1, Duration::from_secs(10)), "h2's pod cannot reach h1's");
    for (i, (_, conf, attachment, _)) in pods.iter().enumerate() {
        assert!(cni::call(&cluster.host_ns(i + 1), "DEL", conf, attachment).success);
    }
    assert!(cluster.ping(&pods[0].0.name, to_h2).is_none(), "the pod still answers after DEL");
}
