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
//! Both families, one path: a destination is an [`IpNet`]; an IPv6 one goes via the hop host's
//! IPv6 underlay address ([`RoutedHost::addr_v6`]) when the router has one too
//! ([`RouterAddrs::v6`]): then IPv6 is forwarded, each host's IPv6 default route is the router
//! and the check covers IPv6 as well. Without, the router is IPv4 only, as before.
//!
//! It follows moto every 100 ms (so a change shows within 200 ms) and applies only what changed.
//! ICMP redirects are off on both sides (IPv6 has no `send_redirects`: nftables drops the
//! router's), so the router stays in the path. It changes only the namespaces it is given.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aws_sdk_ec2::Client;
use ipnet::IpNet;

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
    /// Its IPv6 underlay address, on a dual-stack underlay: only then is it a next hop for IPv6.
    pub addr_v6: Option<Ipv6Addr>,
    pub cloud: Identity,
}

/// The router's own addresses on the underlay, each its family's default gateway of every host.
/// Without `v6` the router forwards IPv4 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterAddrs {
    pub v4: Ipv4Addr,
    pub v6: Option<Ipv6Addr>,
}

impl From<Ipv4Addr> for RouterAddrs {
    fn from(v4: Ipv4Addr) -> RouterAddrs {
        RouterAddrs { v4, v6: None }
    }
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
    /// Its underlay address of `destination`'s family: where the router sends what this host is
    /// the next hop of. None for IPv6 without an IPv6 address.
    fn via(&self, destination: &IpNet) -> Option<IpAddr> {
        match destination {
            IpNet::V4(_) => Some(self.addr.into()),
            IpNet::V6(_) => self.addr_v6.map(IpAddr::from),
        }
    }

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
    pub routes: Vec<BTreeMap<IpNet, Hop>>,
    pub checked: BTreeSet<usize>,
}

impl Forwarding {
    /// The host that `from` reaches `destination` (an IPv4 or IPv6 subnet) through, if any.
    pub fn hop(&self, from: usize, destination: impl Into<IpNet>) -> Option<Hop> {
        self.routes.get(from).and_then(|routes| routes.get(&destination.into())).copied()
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
    /// Makes `router_ns` (at `router` on the underlay: an IPv4 address, or [`RouterAddrs`] with
    /// an IPv6 one) every host's router and starts following moto's VPCs (each host's own).
    /// `runtime` runs the EC2 calls (its threads must be where moto can be reached).
    pub fn start_aws(
        router_ns: &str,
        router: impl Into<RouterAddrs>,
        runtime: tokio::runtime::Handle,
        ec2: Client,
        hosts: Vec<RoutedHost>,
    ) -> VpcRouter {
        set_up(router_ns, router.into(), &hosts);
        let read_hosts = hosts.clone();
        let read = move || {
            let (ec2, hosts) = (ec2.clone(), read_hosts.clone());
            runtime.block_on(runtime.spawn(async move { read_moto(&ec2, &hosts).await })).map_err(|e| e.to_string())?
        };
        VpcRouter::follow(router_ns, hosts, read)
    }

    /// Likewise for the GCE test server's routes: network-wide, next hop instance → that host;
    /// an instance without `canIpForward` is treated as EC2 treats the source/dest check.
    pub fn start_gce(
        router_ns: &str,
        router: impl Into<RouterAddrs>,
        api: GceApi,
        hosts: Vec<RoutedHost>,
    ) -> VpcRouter {
        set_up(router_ns, router.into(), &hosts);
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
/// default route through the router; for IPv6 as well when the router has an IPv6 address (then
/// the hosts with one get their IPv6 default route through it).
fn set_up(router_ns: &str, router: RouterAddrs, hosts: &[RoutedHost]) {
    sysctl(router_ns, "net.ipv4.ip_forward", "1");
    for scope in ["all", "default", "eth0"] {
        sysctl(router_ns, &format!("net.ipv4.conf.{scope}.send_redirects"), "0");
        // Pod sources have no route back here but through the tables: not a spoof.
        sysctl(router_ns, &format!("net.ipv4.conf.{scope}.rp_filter"), "0");
    }
    if router.v6.is_some() {
        // IPv6 has neither send_redirects (the output chain drops them) nor rp_filter.
        sysctl(router_ns, "net.ipv6.conf.all.forwarding", "1");
    }
    let mut marks = String::new();
    for (i, host) in hosts.iter().enumerate() {
        marks.push_str(&format!("    ether saddr {} meta mark set {}\n", mac_of(&host.ns), TABLE_BASE + i as u32));
        let table = (TABLE_BASE + i as u32).to_string();
        // The router's address of each family it forwards for this host: IPv4, and IPv6 when
        // both have an IPv6 address.
        let v6 = router.v6.filter(|_| host.addr_v6.is_some()).map(IpAddr::from);
        for gateway in [Some(IpAddr::from(router.v4)), v6].into_iter().flatten() {
            let (flag, family) = if gateway.is_ipv4() { ("-4", "ipv4") } else { ("-6", "ipv6") };
            must("ip", &["-n", router_ns, flag, "rule", "add", "fwmark", &table, "lookup", &table, "priority", &table]);
            for scope in ["all", "default", "eth0"] {
                sysctl(&host.ns, &format!("net.{family}.conf.{scope}.accept_redirects"), "0");
            }
            must("ip", &["-n", &host.ns, flag, "route", "replace", "default", "via", &gateway.to_string()]);
        }
    }
    // `inet`: the marks and the check rules see both families.
    let script = format!(
        "table inet {NFT_TABLE} {{\n  chain prerouting {{\n    type filter hook prerouting priority -150; policy accept;\n{marks}  }}\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n  }}\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    icmpv6 type nd-redirect drop\n  }}\n}}\n"
    );
    nft(router_ns, &script).unwrap_or_else(|e| panic!("VPC router setup: {e}"));
}

/// `ip`'s flag for `destination`'s family: a route is added and deleted in its own family.
fn family_flag(destination: &IpNet) -> &'static str {
    match destination {
        IpNet::V4(_) => "-4",
        IpNet::V6(_) => "-6",
    }
}

/// Brings the router's tables and check rules from `installed` to `wanted`.
fn apply(ns: &str, hosts: &[RoutedHost], installed: &mut Forwarding, wanted: &Forwarding) -> Result<(), String> {
    for (i, routes) in wanted.routes.iter().enumerate() {
        let table = (TABLE_BASE + i as u32).to_string();
        let have = &mut installed.routes[i];
        // A host without an IPv6 underlay address cannot be an IPv6 destination's next hop here:
        // the router has no address to send it to. Such a route is left out (not forwarded, and
        // not in `forwarding()`), as if the VPC had none.
        let routes: BTreeMap<IpNet, Hop> = routes
            .iter()
            .filter(|(destination, hop)| match hop {
                Hop::Host(j) => hosts[*j].via(destination).is_some(),
                Hop::Drop => true,
            })
            .map(|(destination, hop)| (*destination, *hop))
            .collect();
        for (destination, hop) in &routes {
            if have.get(destination) == Some(hop) {
                continue;
            }
            let (dest, flag) = (destination.to_string(), family_flag(destination));
            match hop {
                Hop::Host(j) => {
                    let via = hosts[*j].via(destination).expect("kept only with an address").to_string();
                    run("ip", &["-n", ns, flag, "route", "replace", &dest, "via", &via, "table", &table])?
                }
                Hop::Drop => run("ip", &["-n", ns, flag, "route", "replace", "blackhole", &dest, "table", &table])?,
            }
            have.insert(*destination, *hop);
        }
        let gone: Vec<IpNet> = have.keys().filter(|d| !routes.contains_key(d)).copied().collect();
        for destination in gone {
            run(
                "ip",
                &["-n", ns, family_flag(&destination), "route", "del", &destination.to_string(), "table", &table],
            )?;
            have.remove(&destination);
        }
    }
    if installed.checked != wanted.checked {
        let mut script = format!("flush chain inet {NFT_TABLE} forward\n");
        for i in &wanted.checked {
            let (addr, mac) = (hosts[*i].addr, mac_of(&hosts[*i].ns));
            let rule = |rule: String| format!("add rule inet {NFT_TABLE} forward {rule} drop\n");
            script.push_str(&rule(format!("rt ip nexthop {addr} ip daddr != {addr}")));
            script.push_str(&rule(format!("ether saddr {mac} ip saddr != {addr}")));
            match hosts[*i].addr_v6 {
                Some(v6) => {
                    script.push_str(&rule(format!("rt ip6 nexthop {v6} ip6 daddr != {v6}")));
                    script.push_str(&rule(format!("ether saddr {mac} ip6 saddr != {v6}")));
                }
                // Never a next hop of IPv6; anything IPv6 it sends is from an address not its own.
                None => script.push_str(&rule(format!("ether saddr {mac} meta nfproto ipv6"))),
            }
        }
        nft(ns, &script)?;
        installed.checked = wanted.checked.clone();
    }
    Ok(())
}

/// What the VPC forwards, read from moto: each host's table (association, else its VPC's main),
/// its IPv4 and IPv6 routes, and each host's source/dest check. A route in one VPC's table to
/// another VPC's instance is followed as if the VPCs were peered; the tests do not write such
/// routes.
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
            let destination = route.destination_cidr_block().or(route.destination_ipv6_cidr_block());
            let Some(destination) = destination.and_then(|d| d.parse::<IpNet>().ok()) else {
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
            // IPv4 or IPv6.
            let Some(destination) = route["destRange"].as_str().and_then(|d| d.parse::<IpNet>().ok()) else {
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
