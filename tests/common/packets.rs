//! Real packets between pods of a test cluster: single pings, pings until an answer, every pair,
//! and which peers a host reaches over weft's vxlan routes.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};
use weft::lab::PodAddrs;
use weft::netns::Netns;

use super::cluster::Cluster;

/// One ping (IPv4 or IPv6), one second to answer.
pub fn ping_once(from_ns: &str, to: impl Into<IpAddr>) -> bool {
    Command::new("ip")
        .args(["netns", "exec", from_ns, "ping", "-c1", "-W1", "-q", &to.into().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pings until an answer comes or `within` passes.
pub fn reaches(from_ns: &str, to: impl Into<IpAddr>, within: Duration) -> bool {
    let (to, deadline) = (to.into(), Instant::now() + within);
    loop {
        if ping_once(from_ns, to) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// Every pod pings every other pod (host i's pod at index i - 1); the pairs that did not answer.
pub fn unreachable_pairs(cluster: &Cluster, pods: &[PodAddrs], within: Duration) -> Vec<(usize, usize)> {
    let addrs: Vec<Ipv4Addr> = pods.iter().map(|p| p.pod.addr()).collect();
    unreachable_addrs(cluster, &addrs, within)
}

/// Every pod pings every other pod at `addrs` (host i's pod's address, IPv4 or IPv6, at index
/// i - 1); the pairs that did not answer.
pub fn unreachable_addrs(
    cluster: &Cluster,
    addrs: &[impl Into<IpAddr> + Copy],
    within: Duration,
) -> Vec<(usize, usize)> {
    let n = addrs.len();
    let mut failed = Vec::new();
    for from in 1..=n {
        for to in (1..=n).filter(|to| *to != from) {
            if !reaches(&cluster.pod_ns(from), addrs[to - 1], within) {
                failed.push((from, to));
            }
        }
    }
    failed
}

/// weft's vxlan routes (`dev flannel.1`, proto 87) on host i: the peers it reaches by overlay.
pub fn overlay_routes(cluster: &Cluster, i: usize) -> BTreeSet<Ipv4Net> {
    weft_routes(cluster, i, "-4", "flannel.1")
}

/// weft's IPv6 vxlan routes (`dev flannel-v6.1`, proto 87) on host i.
pub fn overlay_routes_v6(cluster: &Cluster, i: usize) -> BTreeSet<Ipv6Net> {
    weft_routes(cluster, i, "-6", "flannel-v6.1")
}

/// weft's routes (proto 87) of one family (`-4`, `-6`) through `dev` on host i, by destination.
fn weft_routes<T: std::str::FromStr + Ord>(cluster: &Cluster, i: usize, family: &str, dev: &str) -> BTreeSet<T> {
    let routes = cluster.ip_json(&cluster.host(i).ns, &[family, "route", "show", "proto", "87"]);
    routes
        .as_array()
        .expect("a list")
        .iter()
        .filter(|r| r["dev"] == dev)
        .filter_map(|r| r["dst"].as_str()?.parse().ok())
        .collect()
}

/// Pings every 10 ms from one pod to another, `count` of them, counting what comes back. A fixed
/// count (not an interrupt) so the last ping's reply is waited for, not counted as lost.
pub struct Flow {
    child: Child,
    pub name: String,
}

impl Flow {
    pub fn start(cluster: &Cluster, from: usize, to: impl Into<std::net::IpAddr>, count: u32) -> Flow {
        let to = to.into();
        let ns = Netns::open(&cluster.pod_ns(from)).expect("pod namespace");
        let child = ns
            .command("ping")
            .expect("enter pod")
            .args(["-i", "0.01", "-c", &count.to_string(), "-W", "1", "-q", &to.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ping");
        Flow { child, name: format!("pod h{from} → {to}") }
    }

    /// Waits for the flow to end and returns (sent, received).
    pub fn finish(self) -> (u64, u64) {
        let out = self.child.wait_with_output().expect("ping output");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{text}"));
        let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
        (numbers[0], numbers[1])
    }
}
