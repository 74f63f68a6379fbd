//! A VPC's router for the namespace world: what a real VPC does with a packet for a pod subnet,
//! so that aws-vpc (and its overflow) is proven by packets, not by API state alone.
//!
//! Topology. The hosts sit on the cluster's bridge (the underlay); the router is a namespace on
//! the same bridge (the cluster's service namespace, where moto runs) and every host's default
//! route. A packet a host sends to a pod subnet it has no kernel route for (aws-vpc installs
//! none) goes to the router, which forwards it as the VPC would:
//! - by the route table the VPC applies to the sending host: the table associated with the
//!   host's EC2 subnet, else the VPC's main table. The router tells hosts apart by their MAC
//!   (nftables marks each host's frames; `ip rule fwmark` picks that host's kernel table);
//! - a route to an interface or instance becomes "via that host's underlay address"; a blackhole
//!   drops; no route drops (the router has no default route);
//! - the source/dest check: nothing is delivered to a host whose interface still has the check
//!   on unless it is addressed to the host itself, and nothing it sends from another source
//!   address is forwarded.
//!
//! The same router follows the GCE test server ([`VpcRouter::start_gce`]): routes apply to the
//! whole network, a next-hop instance is that host, `canIpForward` off acts as the check.
//!
//! It follows moto every 100 ms (so a change shows within 200 ms) and applies only what changed.
//! ICMP redirects are off on both sides, so the router stays in the path. It changes only the
//! namespaces it is given.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aws_sdk_ec2::Client;
use ipnet::Ipv4Net;

use super::gce_api::GceApi;

/// How often the router reads the VPC's state.
const POLL: Duration = Duration::from_millis(100);
/// Kernel table (and fwmark) of host `i` is `TABLE_BASE + i`.
const TABLE_BASE: u32 = 100;
const NFT_TABLE: &str = "weft_test_vpc";

/// A host as the router knows it: its namespace and underlay address, and who it is in the cloud.
#[derive(Debug, Clone)]
pub struct RoutedHost {
    pub ns: String,
    pub addr: Ipv4Addr,
    pub cloud: Identity,
}

/// Who a host is to the VPC.
#[derive(Debug, Clone)]
pub enum Identity {
    /// EC2: the route table that applies is its subnet's, else its VPC's main table.
    Aws { vpc_id: String, subnet_id: String, instance_id: String, interface_id: String },
    /// GCE: routes apply network-wide; both are selfLinks.
    Gce { network: String, instance: String },
}

impl RoutedHost {
    fn aws(&self) -> Option<(&str, &str, &str)> {
        match &self.cloud {
            Identity::Aws { subnet_id, instance_id, interface_id, .. } => Some((subnet_id, instance_id, interface_id)),
            Identity::Gce { .. } => None,
        }
    }

    fn aws_vpc(&self) -> Option<&str> {
        match &self.cloud {
            Identity::Aws { vpc_id, .. } => Some(vpc_id),
            Identity::Gce { .. } => None,
        }
    }

    fn gce(&self) -> Option<(&str, &str)> {
        match &self.cloud {
            Identity::Gce { network, instance } => Some((network, instance)),
            Identity::Aws { .. } => None,
        }
    }
}

/// Where the router sends a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hop {
    /// To host `i` (an index into the hosts given).
    Host(usize),
    Drop,
}

/// What the router forwards: per sending host, destination → hop; and the hosts whose
/// source/dest check is on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    pub routes: Vec<BTreeMap<Ipv4Net, Hop>>,
    pub checked: BTreeSet<usize>,
}

impl Forwarding {
    /// The host that `from` reaches `destination` through, if any.
    pub fn hop(&self, from: usize, destination: Ipv4Net) -> Option<Hop> {
        self.routes.get(from).and_then(|routes| routes.get(&destination)).copied()
    }
}

pub struct VpcRouter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    installed: Arc<Mutex<Forwarding>>,
    router_ns: String,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out =
        Command::new(program).args(args).stderr(Stdio::piped()).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(program: &str, args: &[&str]) {
    run(program, args).unwrap_or_else(|e| panic!("VPC router setup: {e}"));
}

fn sysctl(ns: &str, key: &str, value: &str) {
    must("ip", &["netns", "exec", ns, "sysctl", "-qw", &format!("{key}={value}")]);
}

fn nft(ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft: {}\n{script}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The MAC of `eth0` in `ns`.
fn mac_of(ns: &str) -> String {
    let out = Command::new("ip").args(["-n", ns, "-j", "link", "show", "eth0"]).output().expect("ip link");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j link");
    links[0]["address"].as_str().expect("a MAC on eth0").to_string()
}

impl VpcRouter {
    /// Makes `router_ns` (at `router_addr` on the underlay) every host's router and starts
    /// following moto's VPCs (each host's own). `runtime` runs the EC2 calls (its threads must be where
    /// moto can be reached).
    pub fn start_aws(
        router_ns: &str,
        router_addr: Ipv4Addr,
        runtime: tokio::runtime::Handle,
        ec2: Client,
        hosts: Vec<RoutedHost>,
    ) -> VpcRouter {
        set_up(router_ns, router_addr, &hosts);
        let read_hosts = hosts.clone();
        let read = move || {
            let (ec2, hosts) = (ec2.clone(), read_hosts.clone());
            runtime.block_on(runtime.spawn(async move { read_moto(&ec2, &hosts).await })).map_err(|e| e.to_string())?
        };
        VpcRouter::follow(router_ns, hosts, read)
    }

    /// Likewise for the GCE test server's routes: network-wide, next hop instance → that host;
    /// an instance without `canIpForward` is treated as EC2 treats the source/dest check.
    pub fn start_gce(router_ns: &str, router_addr: Ipv4Addr, api: GceApi, hosts: Vec<RoutedHost>) -> VpcRouter {
        set_up(router_ns, router_addr, &hosts);
        let read_hosts = hosts.clone();
        VpcRouter::follow(router_ns, hosts, move || Ok(read_gce(&api, &read_hosts)))
    }

    fn follow(
        router_ns: &str,
        hosts: Vec<RoutedHost>,
        mut read: impl FnMut() -> Result<Forwarding, String> + Send + 'static,
    ) -> VpcRouter {
        let stop = Arc::new(AtomicBool::new(false));
        let installed =
            Arc::new(Mutex::new(Forwarding { routes: vec![BTreeMap::new(); hosts.len()], ..Default::default() }));
        let first = read().unwrap_or_else(|e| panic!("VPC router: reading the VPC: {e}"));
        apply(router_ns, &hosts, &mut installed.lock().unwrap(), &first).unwrap_or_else(|e| panic!("VPC router: {e}"));
        let thread = {
            let (stop, installed, ns) = (stop.clone(), installed.clone(), router_ns.to_string());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                    let wanted = match read() {
                        Ok(wanted) => wanted,
                        Err(e) => {
                            eprintln!("VPC router: reading the VPC: {e}");
                            continue;
                        }
                    };
                    if let Err(e) = apply(&ns, &hosts, &mut installed.lock().unwrap(), &wanted) {
                        eprintln!("VPC router: {e}");
                    }
                }
            })
        };
        VpcRouter { stop, thread: Some(thread), installed, router_ns: router_ns.to_string() }
    }

    /// What the router forwards now.
    pub fn forwarding(&self) -> Forwarding {
        self.installed.lock().unwrap().clone()
    }
}

impl Drop for VpcRouter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Forwarding on, redirects off, each host's frames marked, each mark its table, each host's
/// default route through the router.
fn set_up(router_ns: &str, router_addr: Ipv4Addr, hosts: &[RoutedHost]) {
    sysctl(router_ns, "net.ipv4.ip_forward", "1");
    for scope in ["all", "default", "eth0"] {
        sysctl(router_ns, &format!("net.ipv4.conf.{scope}.send_redirects"), "0");
        // Pod sources have no route back here but through the tables: not a spoof.
        sysctl(router_ns, &format!("net.ipv4.conf.{scope}.rp_filter"), "0");
    }
    let mut marks = String::new();
    for (i, host) in hosts.iter().enumerate() {
        marks.push_str(&format!("    ether saddr {} meta mark set {}\n", mac_of(&host.ns), TABLE_BASE + i as u32));
        let table = (TABLE_BASE + i as u32).to_string();
        must("ip", &["-n", router_ns, "rule", "add", "fwmark", &table, "lookup", &table, "priority", &table]);
        for scope in ["all", "default", "eth0"] {
            sysctl(&host.ns, &format!("net.ipv4.conf.{scope}.accept_redirects"), "0");
        }
        must("ip", &["-n", &host.ns, "route", "replace", "default", "via", &router_addr.to_string()]);
    }
    let script = format!(
        "table ip {NFT_TABLE} {{\n  chain prerouting {{\n    type filter hook prerouting priority -150; policy accept;\n{marks}  }}\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n  }}\n}}\n"
    );
    nft(router_ns, &script).unwrap_or_else(|e| panic!("VPC router setup: {e}"));
}

/// Brings the router's tables and check rules from `installed` to `wanted`.
fn apply(ns: &str, hosts: &[RoutedHost], installed: &mut Forwarding, wanted: &Forwarding) -> Result<(), String> {
    for (i, routes) in wanted.routes.iter().enumerate() {
        let table = (TABLE_BASE + i as u32).to_string();
        let have = &mut installed.routes[i];
        for (destination, hop) in routes {
            if have.get(destination) == Some(hop) {
                continue;
            }
            let dest = destination.to_string();
            match hop {
                Hop::Host(j) => {
                    let via = hosts[*j].addr.to_string();
                    run("ip", &["-n", ns, "route", "replace", &dest, "via", &via, "table", &table])?
                }
                Hop::Drop => run("ip", &["-n", ns, "route", "replace", "blackhole", &dest, "table", &table])?,
            }
            have.insert(*destination, *hop);
        }
        let gone: Vec<Ipv4Net> = have.keys().filter(|d| !routes.contains_key(d)).copied().collect();
        for destination in gone {
            run("ip", &["-n", ns, "route", "del", &destination.to_string(), "table", &table])?;
            have.remove(&destination);
        }
    }
    if installed.checked != wanted.checked {
        let mut script = format!("flush chain ip {NFT_TABLE} forward\n");
        for i in &wanted.checked {
            let (addr, mac) = (hosts[*i].addr, mac_of(&hosts[*i].ns));
            script.push_str(&format!("add rule ip {NFT_TABLE} forward rt ip nexthop {addr} ip daddr != {addr} drop\n"));
            script.push_str(&format!("add rule ip {NFT_TABLE} forward ether saddr {mac} ip saddr != {addr} drop\n"));
        }
        nft(ns, &script)?;
        installed.checked = wanted.checked.clone();
    }
    Ok(())
}

/// What the VPC forwards, read from moto: each host's table (association, else its VPC's main)
/// and each host's source/dest check. A route in one VPC's table to another VPC's instance is
/// followed as if the VPCs were peered; the tests do not write such routes.
async fn read_moto(ec2: &Client, hosts: &[RoutedHost]) -> Result<Forwarding, String> {
    let tables = ec2.describe_route_tables().send().await.map_err(|e| format!("{e:?}"))?;
    let tables = tables.route_tables();
    let main_of = |vpc: Option<&str>| {
        tables.iter().find(|t| t.vpc_id() == vpc && t.associations().iter().any(|a| a.main() == Some(true)))
    };
    let host_by_target = |eni: Option<&str>, instance: Option<&str>| {
        hosts.iter().position(|h| h.aws().is_some_and(|(_, i, n)| Some(n) == eni || Some(i) == instance))
    };
    let mut routes = Vec::new();
    for host in hosts {
        let subnet = host.aws().map(|(subnet, _, _)| subnet);
        let associated = tables.iter().find(|t| t.associations().iter().any(|a| a.subnet_id() == subnet));
        let mut seen = BTreeMap::new();
        let applies = associated.or_else(|| main_of(host.aws_vpc()));
        for route in applies.map(|t| t.routes()).unwrap_or_default() {
            let Some(destination) = route.destination_cidr_block().and_then(|d| d.parse::<Ipv4Net>().ok()) else {
                continue;
            };
            let blackhole = route.state().is_some_and(|s| s.as_str() == "blackhole");
            let hop = match host_by_target(route.network_interface_id(), route.instance_id()) {
                _ if blackhole => Hop::Drop,
                Some(j) => Hop::Host(j),
                // The VPC's local route, gateways, interfaces of no host: not the router's business.
                None => continue,
            };
            seen.insert(destination, hop);
        }
        routes.push(seen);
    }
    let ids: Vec<String> = hosts.iter().filter_map(|h| h.aws()).map(|(_, _, eni)| eni.to_string()).collect();
    let interfaces = ec2
        .describe_network_interfaces()
        .set_network_interface_ids(Some(ids))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let checked = interfaces
        .network_interfaces()
        .iter()
        .filter(|n| n.source_dest_check() != Some(false))
        .filter_map(|n| hosts.iter().position(|h| h.aws().map(|(_, _, eni)| eni) == n.network_interface_id()))
        .collect();
    Ok(Forwarding { routes, checked })
}

/// A GCE link without what comes before `projects/`: links are written with and without the
/// API's base URL.
fn resource(link: &str) -> &str {
    link.find("projects/").map_or(link, |at| &link[at..])
}

/// What the GCE network forwards: each host gets its network's routes; an instance whose
/// `canIpForward` is off is "checked".
fn read_gce(api: &GceApi, hosts: &[RoutedHost]) -> Forwarding {
    let all = api.routes();
    let host_of =
        |instance: &str| hosts.iter().position(|h| h.gce().is_some_and(|(_, i)| resource(i) == resource(instance)));
    let mut routes = Vec::new();
    for host in hosts {
        let network = host.gce().map(|(network, _)| resource(network)).unwrap_or_default();
        let mut seen = BTreeMap::new();
        for route in all.values().filter(|r| r["network"].as_str().map(resource) == Some(network)) {
            let Some(destination) = route["destRange"].as_str().and_then(|d| d.parse::<Ipv4Net>().ok()) else {
                continue;
            };
            if let Some(j) = route["nextHopInstance"].as_str().and_then(host_of) {
                seen.entry(destination).or_insert(Hop::Host(j));
            }
        }
        routes.push(seen);
    }
    let forwarding = api.instances_forwarding();
    let checked = hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            h.gce().is_some_and(|(_, i)| !forwarding.iter().any(|(link, on)| *on && resource(link) == resource(i)))
        })
        .map(|(j, _)| j)
        .collect();
    Forwarding { routes, checked }
}
