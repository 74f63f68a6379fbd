//! The data-plane benchmark of issue 3: `cargo bench --bench dataplane` (needs root).
//!
//! Everything happens in network namespaces this program creates (`wbench<pid>-…`) and removes
//! again, also when it panics; namespaces left by a killed run are removed by the next one.
//! Nothing is changed in the machine's own namespace and no packet leaves the namespaces.
//!
//! - A switch namespace with a bridge, a service namespace on it running Debian's `etcd`
//!   (198.51.100.250), and one fresh host namespace per agent run (198.51.100.1x). Each host's
//!   `eth0` also carries 198.18.0.1/15 (the benchmarking range, RFC 2544): the peers' PublicIPs
//!   are in there, so host-gw peers are on-link. Peer subnets are /24s of 10.0.0.0/8, which only
//!   ever exist inside the namespaces.
//! - etcd is filled with flannel-format leases (one store prefix per lease set) before any
//!   agent starts; each run starts the release `weft agent` in a fresh host namespace and times,
//!   with the kernel's own notifications received inside that namespace, the first and the last
//!   of the peers' kernel objects (routes, nexthops, neighbours, FDB entries).
//! - Each size also has a dual-stack and an IPv6-only vxlan lease set (IPv6 pod network
//!   2001:db8:100::/48, peers' PublicIPv6 in 2001:db8:ffff::/64 beside the host's
//!   2001:db8:ffff::1), run with nexthops: IPv6 figures beside the IPv4 ones of the same run.
//! - The floor: the same objects through `ip -batch` and `bridge -batch`, and through weft's
//!   netlink code called directly (no agent, no etcd), each in a fresh namespace.
//! - Event latency: with an agent converged on every lease, one new lease written to etcd, until
//!   its route shows up in the agent's kernel.
//!
//! Quick mode (`WEFT_BENCH_QUICK=1` or `--quick`): 1,000 leases only and fewer event samples,
//! for the smoke test. Headline mode (`--headline`): only the agent on 10,000 vxlan leases with
//! nexthops, its event latency, RSS and CPU (no floor, no other variant), to iterate on those.
//! The release build of this tree is measured, and the same built without the cloud and
//! Kubernetes SDKs (`--no-default-features`, in `target/kernel-only`) on the 10,000 vxlan leases.
//! Memory mode (`--memory`): the vxlan nexthop agent alone on 0, 1,000, 10,000 and 50,000
//! leases (`WEFT_BENCH_SIZES=0,10000` for others), its RSS peak and settled RSS at each, and
//! what one more peer costs in bytes.
//! `WEFT_BENCH_AGENT=/path/to/weft` measures that binary alone;
//! `WEFT_BENCH_AGENT_WRAPPER="heaptrack -o /tmp/weft"` runs the agents under that command. `WEFT_BENCH_KEEP=1` keeps the agents' logs (their path is printed);
//! `RUST_LOG` is passed on to the agents (default `info`).
#![allow(dead_code)] // Also compiled as a module of tests/bench_smoke.rs, which uses `run` only.

use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use ipnet::Ipv4Net;
use weft::backend::route_sync::PeerObjects;
use weft::backend::vxlan::VxlanPeers;
use weft::iface::ExternalInterface;
use weft::kernel::netlink::{NetlinkKernel, NexthopMode};
use weft::kernel::{diff, Kernel, KernelState, Ownership};
use weft::lab::{agents, wire, Topology};
use weft::lease::{Expiry, Lease, LeaseAttrs, LeaseKey};
use weft::netns::Netns;

const PREFIX_BASE: &str = "wbench";
/// The cluster network; peer `i` leases `10.(i / 256).(i % 256).0/24`.
const NETWORK: &str = "10.0.0.0/8";
/// The address on each host's `eth0` that the agent uses, and its on-link prefix.
const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The agent's IPv6 underlay address in the dual-stack and IPv6-only runs (documentation range).
const HOST_ADDR_V6: &str = "2001:db8:ffff::1/64";
/// The IPv6 pod network of the dual-stack and IPv6-only runs: room for 65,536 /64s.
const NETWORK_V6: &str = "2001:db8:100::/48";
const HOST_PREFIX_LEN: u8 = 15;
const ETCD_PORT: u16 = 2379;
/// etcd's default `--max-txn-ops`.
const TXN_OPS: usize = 128;
const CONVERGE_DEADLINE: Duration = Duration::from_secs(120);
const EVENT_DEADLINE: Duration = Duration::from_secs(10);
/// Peers of the event-latency leases are numbered from here (10.195.80.0/24 on).
const EVENT_BASE: u32 = 50_000;
const WEFT_PROTOCOL: u8 = 87;
/// How long after converging the agent's settled RSS is read.
const SETTLE: Duration = Duration::from_secs(3);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// 1,000 leases only, 20 event samples.
    pub quick: bool,
    /// Only the 10,000-lease vxlan nexthop agent: no floor, no other variant.
    pub headline: bool,
    /// The `weft` binary to run as the agent.
    pub agent: PathBuf,
    /// How the agent binary came to be, for the header.
    pub agent_note: String,
    /// The agent built without the cloud and Kubernetes SDKs: its memory on the largest vxlan
    /// set is measured too (the code of the SDKs alone is a few MB of the other's RSS).
    pub lean_agent: Option<PathBuf>,
}

impl Options {
    fn sizes(&self) -> Vec<u32> {
        if self.quick {
            vec![1_000]
        } else if self.headline {
            vec![10_000]
        } else {
            vec![1_000, 10_000]
        }
    }

    fn event_samples(&self) -> usize {
        if self.quick {
            20
        } else {
            200
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("WEFT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let headline = std::env::args().any(|a| a == "--headline");
    let (agent, agent_note) = release_agent();
    if std::env::args().any(|a| a == "--memory") {
        match memory_curve(&agent) {
            Ok(points) => print!("{}", memory_table(&agent_note, &points)),
            Err(e) => {
                eprintln!("benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let lean_agent = if quick || std::env::var_os("WEFT_BENCH_AGENT").is_some() { None } else { lean_agent() };
    match run(&Options { quick, headline, agent, agent_note, lean_agent }) {
        Ok(report) => {
            if !report.complete() {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}

/// `WEFT_BENCH_AGENT` if set (e.g. a build without the cloud SDKs), else `target/release/weft`:
/// cargo builds it for a benchmark (`CARGO_BIN_EXE_weft`, next to the bench executable's `deps/`
/// directory); if it is missing, `cargo build --release --bin weft`.
fn release_agent() -> (PathBuf, String) {
    if let Some(path) = std::env::var_os("WEFT_BENCH_AGENT").filter(|p| !p.is_empty()) {
        return (PathBuf::from(path), "from WEFT_BENCH_AGENT".into());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|dir| dir.join("weft")))
        .filter(|p| p.exists());
    if let Some(path) = beside.or_else(|| Some(PathBuf::from(env!("CARGO_BIN_EXE_weft"))).filter(|p| p.exists())) {
        return (path, "built by cargo for this benchmark, release profile".into());
    }
    eprintln!("target/release/weft is missing: running `cargo build --release --bin weft`");
    assert!(cargo_build_release(&[]), "cargo build --release --bin weft failed");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/weft");
    (path, "built just now with `cargo build --release --bin weft`".into())
}

/// `target/kernel-only/release/weft`, built now with `--no-default-features` (a minute or two
/// the first time); `None`, with a note, if that build fails.
fn lean_agent() -> Option<PathBuf> {
    let target_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/kernel-only");
    eprintln!("building the agent without the SDKs: cargo build --release --no-default-features --bin weft …");
    let target_arg = target_dir.to_string_lossy();
    if !cargo_build_release(&["--no-default-features", "--target-dir", &target_arg]) {
        eprintln!("that build failed: the agent without the SDKs is not measured");
        return None;
    }
    Some(target_dir.join("release/weft"))
}

/// `cargo build --release --bin weft <extra>` in this tree; whether it succeeded.
fn cargo_build_release(extra: &[&str]) -> bool {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--bin", "weft"])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// Leases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendKind {
    Vxlan,
    HostGw,
}

impl BackendKind {
    fn name(self) -> &'static str {
        match self {
            BackendKind::Vxlan => "vxlan",
            BackendKind::HostGw => "host-gw",
        }
    }
}

fn peer_subnet(i: u32) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i << 8)), 24).expect("a /24")
}

fn peer_public_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 16 + i)
}

/// Peer `i`'s IPv6 subnet in the dual-stack and IPv6-only runs.
fn peer_subnet_v6(i: u32) -> ipnet::Ipv6Net {
    let base = u128::from("2001:db8:100::".parse::<std::net::Ipv6Addr>().expect("an address"));
    ipnet::Ipv6Net::new((base + (u128::from(i) << 64)).into(), 64).expect("a /64")
}

fn peer_public_ipv6(i: u32) -> std::net::Ipv6Addr {
    let base = u128::from("2001:db8:ffff::".parse::<std::net::Ipv6Addr>().expect("an address"));
    (base + 0x1000 + u128::from(i)).into()
}

fn peer_mac(i: u32) -> String {
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

/// flannel's JSON for peer `i`'s lease (dual-stack: with its IPv6 address and, for vxlan, the
/// IPv6 device's MAC, as flanneld writes them; IPv6-only: `PublicIP` 0.0.0.0 and no IPv4 backend
/// data).
fn lease_json(set: &LeaseSet, i: u32) -> String {
    let ip = if set.stack.has_ipv4() { peer_public_ip(i) } else { Ipv4Addr::UNSPECIFIED };
    let ip6 = if set.stack.has_ipv6() { format!("\"{}\"", peer_public_ipv6(i)) } else { "null".into() };
    match set.kind {
        BackendKind::Vxlan => {
            let mac = peer_mac(i);
            let v4_data = if set.stack.has_ipv4() {
                format!(r#","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}"#)
            } else {
                String::new()
            };
            let v6_data = if set.stack.has_ipv6() {
                // The v6 device's MAC differs from the v4 one's in its second byte.
                format!(r#","BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}"#, mac.replacen("02:42", "02:66", 1))
            } else {
                String::new()
            };
            format!(r#"{{"PublicIP":"{ip}","PublicIPv6":{ip6},"BackendType":"vxlan"{v4_data}{v6_data}}}"#)
        }
        BackendKind::HostGw => format!(r#"{{"PublicIP":"{ip}","PublicIPv6":{ip6},"BackendType":"host-gw"}}"#),
    }
}

fn network_json(set: &LeaseSet) -> String {
    let backend = match set.kind {
        BackendKind::Vxlan => r#"{"Type":"vxlan","VNI":1,"Port":8472}"#,
        BackendKind::HostGw => r#"{"Type":"host-gw"}"#,
    };
    let v6 = format!(r#""EnableIPv6":true,"IPv6Network":"{NETWORK_V6}""#);
    match set.stack {
        Stack::Ipv4 => format!(r#"{{"Network":"{NETWORK}","SubnetLen":24,"Backend":{backend}}}"#),
        Stack::Dual => format!(r#"{{"Network":"{NETWORK}","SubnetLen":24,{v6},"Backend":{backend}}}"#),
        Stack::Ipv6Only => format!(r#"{{"EnableIPv4":false,{v6},"Backend":{backend}}}"#),
    }
}

/// The address families of a lease set's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    Ipv4,
    /// Every lease has an IPv6 subnet beside its IPv4 one, and the network says so.
    Dual,
    /// `EnableIPv4: false`: leases are named by their IPv6 subnet alone (`0.0.0.0-0&…`).
    Ipv6Only,
}

impl Stack {
    fn has_ipv4(self) -> bool {
        self != Stack::Ipv6Only
    }

    fn has_ipv6(self) -> bool {
        self != Stack::Ipv4
    }

    /// How many families an agent installs every peer's objects for.
    fn families(self) -> u64 {
        u64::from(self.has_ipv4()) + u64::from(self.has_ipv6())
    }

    /// For labels: "", "dual-stack ", "IPv6-only ".
    fn label(self) -> &'static str {
        match self {
            Stack::Ipv4 => "",
            Stack::Dual => "dual-stack ",
            Stack::Ipv6Only => "IPv6-only ",
        }
    }

    /// For store prefixes and file names: "", "-dual", "-v6only".
    fn tag(self) -> &'static str {
        match self {
            Stack::Ipv4 => "",
            Stack::Dual => "-dual",
            Stack::Ipv6Only => "-v6only",
        }
    }
}

/// One store prefix holding `count` leases of one backend type.
#[derive(Debug, Clone)]
struct LeaseSet {
    kind: BackendKind,
    count: u32,
    prefix: String,
    /// IPv4, dual-stack or IPv6-only.
    stack: Stack,
}

impl LeaseSet {
    fn new(kind: BackendKind, count: u32) -> Self {
        LeaseSet::with_stack(kind, count, Stack::Ipv4)
    }

    fn with_stack(kind: BackendKind, count: u32, stack: Stack) -> Self {
        LeaseSet { kind, count, prefix: format!("/weft-bench/{}{}-{count}", kind.name(), stack.tag()), stack }
    }

    /// Peer `i`'s key.
    fn key(&self, i: u32) -> String {
        let v4 = self.stack.has_ipv4().then(|| peer_subnet(i));
        let v6 = self.stack.has_ipv6().then(|| peer_subnet_v6(i));
        self.key_of(v4, v6)
    }

    /// flannel's key: `10.0.1.0-24`, `10.0.1.0-24&2001:db8:100:1::-64` or, IPv6-only,
    /// `0.0.0.0-0&2001:db8:100:1::-64`.
    fn key_of(&self, subnet: Option<Ipv4Net>, subnet_v6: Option<ipnet::Ipv6Net>) -> String {
        format!("{}/subnets/{}", self.prefix, LeaseKey { subnet, subnet_v6 })
    }

    /// The kernel objects an agent installs for every lease (once per family: twice over,
    /// dual-stack).
    fn expected(&self, nexthops: bool) -> Counts {
        let n = u64::from(self.count) * self.stack.families();
        let (neighbours, fdb) = if self.kind == BackendKind::Vxlan { (n, n) } else { (0, 0) };
        Counts { routes: n, nexthops: if nexthops { n } else { 0 }, neighbours, fdb }
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel notifications

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    routes: u64,
    nexthops: u64,
    neighbours: u64,
    fdb: u64,
}

impl Counts {
    fn covers(&self, want: &Counts) -> bool {
        self.routes >= want.routes
            && self.nexthops >= want.nexthops
            && self.neighbours >= want.neighbours
            && self.fdb >= want.fdb
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Object {
    /// A route of weft's protocol, by destination.
    Route(std::net::IpAddr),
    Nexthop,
    /// A permanent ARP entry.
    Neighbour,
    /// A vxlan FDB entry with a remote.
    Fdb,
    /// The receive buffer overflowed: notifications were lost.
    Lost,
}

struct Seen {
    at: Instant,
    object: Object,
}

/// Notifications of new peer objects in one namespace, timestamped as they are received, by a
/// thread blocked on a subscribed netlink socket (no polling of `ip`).
struct Monitor {
    events: mpsc::Receiver<Seen>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const RTNLGRP_NEXTHOP: u32 = 32;
const RTM_NEWNEXTHOP: u16 = 104;
const NUD_PERMANENT: u16 = 0x80;
const NDA_DST: u16 = 1;
const RTA_DST: u16 = 1;

impl Monitor {
    /// Subscribes inside `ns` (the socket stays in that namespace whichever thread reads it).
    fn open(ns: &Netns) -> io::Result<Monitor> {
        let socket = ns.run(|| -> io::Result<netlink_sys::Socket> {
            let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
            socket.bind_auto()?;
            for group in [libc::RTNLGRP_NEIGH, libc::RTNLGRP_IPV4_ROUTE, libc::RTNLGRP_IPV6_ROUTE, RTNLGRP_NEXTHOP] {
                socket.add_membership(group)?;
            }
            let fd = socket.as_raw_fd();
            // Room for every notification of a 10,000-peer run should this thread fall behind.
            set_int_option(fd, libc::SO_RCVBUFFORCE, 256 << 20)?;
            let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
            set_option(fd, libc::SO_RCVTIMEO, &timeout)?;
            Ok(socket)
        })??;
        let (tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = Vec::with_capacity(1 << 20);
            while !stopping.load(Ordering::Relaxed) {
                buf.clear();
                match socket.recv(&mut buf, 0) {
                    Ok(_) => {
                        let at = Instant::now();
                        for object in parse_notifications(&buf) {
                            if tx.send(Seen { at, object }).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        let _ = tx.send(Seen { at: Instant::now(), object: Object::Lost });
                    }
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                    Err(e) => {
                        eprintln!("monitor: {e}");
                        return;
                    }
                }
            }
        });
        Ok(Monitor { events, stop, thread: Some(thread) })
    }

    /// Waits until `want` objects have appeared; the first and last arrival.
    fn converge(&self, want: Counts, deadline: Duration) -> Convergence {
        let until = Instant::now() + deadline;
        let mut result = Convergence::default();
        while !result.counts.covers(&want) {
            let Some(left) = until.checked_duration_since(Instant::now()) else { break };
            let Ok(seen) = self.events.recv_timeout(left) else { break };
            match seen.object {
                Object::Route(_) => result.counts.routes += 1,
                Object::Nexthop => result.counts.nexthops += 1,
                Object::Neighbour => result.counts.neighbours += 1,
                Object::Fdb => result.counts.fdb += 1,
                Object::Lost => {
                    result.lost = true;
                    continue;
                }
            }
            result.first.get_or_insert(seen.at);
            result.last = Some(seen.at);
        }
        result.complete = result.counts.covers(&want);
        result
    }

    /// Drops what has queued up (notifications of earlier changes).
    fn drain(&self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Waits for the route to `dst` to appear.
    fn route(&self, dst: std::net::IpAddr, deadline: Duration) -> Option<Instant> {
        let until = Instant::now() + deadline;
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            let seen = self.events.recv_timeout(left).ok()?;
            if seen.object == Object::Route(dst) {
                return Some(seen.at);
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Convergence {
    first: Option<Instant>,
    last: Option<Instant>,
    counts: Counts,
    complete: bool,
    lost: bool,
}

fn set_int_option(fd: i32, option: i32, value: libc::c_int) -> io::Result<()> {
    set_option(fd, option, &value)
}

fn set_option<T>(fd: i32, option: i32, value: &T) -> io::Result<()> {
    // SAFETY: a valid socket, and a value of the size the option expects.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The peer objects announced in one datagram of notifications.
fn parse_notifications(buf: &[u8]) -> Vec<Object> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(header) = buf.get(offset..offset + 16) {
        let length = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        if length < 16 || offset + length > buf.len() {
            break;
        }
        let payload = &buf[offset + 16..offset + length];
        if let Some(object) = classify(kind, payload) {
            out.push(object);
        }
        offset += (length + 3) & !3;
    }
    out
}

fn classify(kind: u16, payload: &[u8]) -> Option<Object> {
    match kind {
        libc::RTM_NEWROUTE => {
            // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
            let header = payload.get(..12)?;
            if header[5] != WEFT_PROTOCOL {
                return None;
            }
            let dst = attributes(&payload[12..]).find(|(t, _)| *t == RTA_DST)?.1;
            match i32::from(header[0]) {
                libc::AF_INET => Some(Object::Route(Ipv4Addr::from(<[u8; 4]>::try_from(dst.get(..4)?).ok()?).into())),
                libc::AF_INET6 => {
                    Some(Object::Route(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(dst.get(..16)?).ok()?).into()))
                }
                _ => None,
            }
        }
        RTM_NEWNEXTHOP => {
            // struct nhmsg: family, scope, protocol, resvd, flags.
            (payload.get(2) == Some(&WEFT_PROTOCOL)).then_some(Object::Nexthop)
        }
        libc::RTM_NEWNEIGH => {
            // struct ndmsg: family, pad[3], ifindex, state (u16), flags, type.
            let header = payload.get(..12)?;
            let state = u16::from_ne_bytes([header[8], header[9]]);
            if state & NUD_PERMANENT == 0 {
                return None;
            }
            match i32::from(header[0]) {
                libc::AF_INET | libc::AF_INET6 => Some(Object::Neighbour),
                libc::AF_BRIDGE if attributes(&payload[12..]).any(|(t, _)| t == NDA_DST) => Some(Object::Fdb),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `(type, value)` of each netlink attribute in `buf`.
fn attributes(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let header = buf.get(offset..offset + 4)?;
        let length = u16::from_ne_bytes([header[0], header[1]]) as usize;
        let kind = u16::from_ne_bytes([header[2], header[3]]) & 0x3fff;
        let value = buf.get(offset + 4..offset + length.max(4))?;
        offset += (length.max(4) + 3) & !3;
        Some((kind, value))
    })
}

// ---------------------------------------------------------------------------------------------
// etcd

/// A thread inside the service namespace with an etcd client, running jobs for the bench.
struct Store {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime, &mut Client) + Send>;

impl Store {
    /// Connects from inside `ns`, waiting up to 20 s for etcd to answer.
    fn connect(ns: &Netns, endpoint: String) -> io::Result<Store> {
        let file = std::fs::File::open(&ns.path)?;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let thread = std::thread::spawn(move || {
            if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                let _ = ready_tx.send(Err(format!("enter the service namespace: {e}")));
                return;
            }
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut client = loop {
                let attempt = runtime.block_on(async {
                    let mut client = Client::connect([endpoint.as_str()], None).await?;
                    client.status().await?;
                    Ok::<_, etcd_client::Error>(client)
                });
                match attempt {
                    Ok(client) => break client,
                    Err(e) if Instant::now() > deadline => {
                        let _ = ready_tx.send(Err(format!("etcd at {endpoint} does not answer: {e}")));
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            let _ = ready_tx.send(Ok(()));
            for job in job_rx {
                job(&runtime, &mut client);
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Store { jobs: Some(jobs), thread: Some(thread) }),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::other("the etcd client thread died")),
        }
    }

    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&tokio::runtime::Runtime, &mut Client) -> T + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |runtime, client| {
            let _ = tx.send(job(runtime, client));
        });
        self.jobs.as_ref().expect("open").send(job).map_err(|_| io::Error::other("etcd client thread gone"))?;
        rx.recv().map_err(|_| io::Error::other("etcd client thread gone"))
    }

    /// Writes the network config and every lease of `set`, under one etcd lease (1 h).
    fn fill(&self, set: &LeaseSet) -> io::Result<()> {
        let set = set.clone();
        self.call(move |runtime, client| {
            runtime.block_on(async {
                client.put(format!("{}/config", set.prefix), network_json(&set), None).await?;
                let lease = client.lease_grant(3600, None).await?.id();
                let kvs: Vec<(String, String)> = (1..=set.count).map(|i| (set.key(i), lease_json(&set, i))).collect();
                for chunk in kvs.chunks(TXN_OPS) {
                    let ops: Vec<TxnOp> = chunk
                        .iter()
                        .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), Some(PutOptions::new().with_lease(lease))))
                        .collect();
                    client.txn(Txn::new().and_then(ops)).await?;
                }
                Ok::<_, etcd_client::Error>(())
            })
        })?
        .map_err(io::Error::other)
    }

    /// Puts one key; when the write was sent and when etcd acknowledged it.
    fn put(&self, key: String, value: String) -> io::Result<(Instant, Instant)> {
        self.call(move |runtime, client| {
            let sent = Instant::now();
            runtime.block_on(client.put(key, value, None)).map(|_| (sent, Instant::now()))
        })?
        .map_err(io::Error::other)
    }

    fn delete(&self, key: String) -> io::Result<()> {
        self.call(move |runtime, client| runtime.block_on(client.delete(key, None)).map(|_| ()))?
            .map_err(io::Error::other)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The lab: switch, etcd, host namespaces

struct Lab {
    prefix: String,
    topology: Topology,
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    store: Option<Store>,
    /// Host namespaces handed out so far.
    hosts_used: usize,
    /// The `weft` binary.
    agent: PathBuf,
}

impl Lab {
    fn new(hosts: usize, agent: PathBuf) -> io::Result<Lab> {
        remove_stale();
        let prefix = format!("{PREFIX_BASE}{}-", std::process::id());
        let topology = Topology::new(&prefix, hosts).map_err(io::Error::other)?;
        let lab = Lab {
            prefix,
            topology,
            dir: tempfile::Builder::new().prefix("weft-bench-").tempdir()?,
            etcd: None,
            store: None,
            hosts_used: 0,
            agent,
        };
        wire::build_switch(&lab.topology).map_err(io::Error::other)?;
        Ok(lab)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn etcd_endpoint(&self) -> String {
        format!("http://{}:{ETCD_PORT}", self.topology.service().addr)
    }

    fn start_etcd(&mut self) -> io::Result<()> {
        let service = self.topology.service();
        let ns = wire::join(&self.topology, &service).map_err(io::Error::other)?;
        let client = self.etcd_endpoint();
        let peer = "http://127.0.0.1:2380";
        let log = std::fs::File::create(self.path("etcd.log"))?;
        let mut command = ns.command(std::env::var("WEFT_TEST_ETCD").unwrap_or_else(|_| "etcd".into()))?;
        command
            .arg("--name=weft-bench")
            .arg(format!("--data-dir={}", self.path("etcd-data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=weft-bench={peer}"))
            .args(["--logger=zap", "--log-outputs=stderr", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut command);
        self.etcd = Some(command.spawn().map_err(|e| io::Error::other(format!("run etcd (etcd-server): {e}")))?);
        self.store = Some(Store::connect(&ns, client)?);
        Ok(())
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("etcd started")
    }

    /// A fresh host namespace on the switch, with the benchmark's underlay address on `eth0`.
    fn new_host(&mut self) -> io::Result<Netns> {
        self.hosts_used += 1;
        let node = self.topology.host(self.hosts_used);
        let ns = wire::join(&self.topology, &node).map_err(io::Error::other)?;
        let underlay = Ipv4Net::new(HOST_ADDR, HOST_PREFIX_LEN).expect("valid prefix");
        wire::configure(&ns, "eth0", Some(underlay), None).map_err(io::Error::other)?;
        Ok(ns)
    }

    /// A namespace of the lab's, not on the switch.
    fn new_isolated(&self, name: &str) -> io::Result<Netns> {
        Netns::create(&format!("{}{name}", self.prefix))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.store.take();
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
        if let Err(failures) = wire::teardown(&self.prefix) {
            eprintln!("cleaning up {}: {}", self.prefix, failures.join("; "));
        }
        if std::env::var("WEFT_BENCH_KEEP").is_ok_and(|v| !v.is_empty() && v != "0") {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("agent and etcd logs kept in {}", dir.keep().display());
        }
    }
}

/// Removes namespaces of benchmark runs whose process is gone.
fn remove_stale() {
    let Ok(names) = wire::namespaces_with_prefix(PREFIX_BASE) else { return };
    let mut stale: Vec<String> = names
        .iter()
        .filter_map(|name| {
            let pid: u32 = name.strip_prefix(PREFIX_BASE)?.split_once('-')?.0.parse().ok()?;
            (!agents::is_alive(pid)).then(|| format!("{PREFIX_BASE}{pid}-"))
        })
        .collect();
    stale.dedup();
    for prefix in stale {
        let _ = wire::teardown(&prefix);
    }
}

/// The child gets SIGKILL when this thread ends, even if the benchmark is killed.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and nothing is allocated.
    unsafe {
        command.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from));
    }
}

/// Deletes a namespace and gives the kernel a moment to free what was in it (that work would
/// otherwise run during the next measurement).
fn delete_ns(ns: &Netns, objects: u64) {
    if let Err(e) = ns.delete() {
        eprintln!("delete {}: {e}", ns.name);
    }
    std::thread::sleep(Duration::from_millis(100 + objects / 40));
}

// ---------------------------------------------------------------------------------------------
// Agent runs

/// An agent converging on a lease set.
#[derive(Debug, Clone)]
struct AgentRun {
    label: String,
    set_count: u32,
    kind: BackendKind,
    nexthops: bool,
    /// Dual-stack leases have twice the objects and IPv6-only ones other objects, so the IPv4
    /// targets apply to IPv4 runs only.
    stack: Stack,
    convergence: Convergence,
    started: Instant,
    usage: Option<Usage>,
    /// Why it did not converge (with the agent's log tail).
    problem: Option<String>,
}

impl AgentRun {
    fn first(&self) -> Option<Duration> {
        self.convergence.first.map(|t| t - self.started)
    }

    fn full(&self) -> Option<Duration> {
        self.convergence.complete.then_some(self.convergence.last).flatten().map(|t| t - self.started)
    }
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    /// VmHWM.
    rss_kib: u64,
    /// RssAnon and RssFile now (VmHWM is the peak of their sum, and of RssShmem).
    anon_kib: u64,
    file_kib: u64,
    /// utime + stime.
    cpu: Duration,
}

fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(name))?.trim().trim_end_matches("kB").trim().parse().ok()
    };
    let (rss_kib, anon_kib, file_kib) = (field("VmHWM:")?, field("RssAnon:")?, field("RssFile:")?);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Usage { rss_kib, anon_kib, file_kib, cpu: Duration::from_micros(ticks * 1_000_000 / hz) })
}

/// A running agent in its own host namespace, watched by a monitor there.
struct Agent {
    ns: Netns,
    child: Child,
    monitor: Monitor,
    subnet_file: PathBuf,
    log: PathBuf,
    set: LeaseSet,
}

impl Agent {
    fn start(lab: &mut Lab, set: &LeaseSet, nexthops: bool, tag: &str) -> io::Result<(Agent, Instant)> {
        let ns = lab.new_host()?;
        if set.stack.has_ipv6() {
            // The same underlay for dual-stack and IPv6-only runs: eth0 keeps its IPv4 address
            // (`--iface` names it by that), the IPv6 network takes its public IPv6 from here.
            let out = ns.command("ip")?.args(["-6", "addr", "add", HOST_ADDR_V6, "dev", "eth0", "nodad"]).output()?;
            if !out.status.success() {
                return Err(io::Error::other(format!("ip -6 addr add: {}", String::from_utf8_lossy(&out.stderr))));
            }
        }
        let config = lab.path(&format!("{tag}.toml"));
        std::fs::write(
            &config,
            format!(
                "[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"{}\"\n",
                lab.etcd_endpoint(),
                set.prefix
            ),
        )?;
        let subnet_file = lab.path(&format!("{tag}.env"));
        let log = lab.path(&format!("{tag}.log"));
        let log_file = std::fs::File::create(&log)?;
        let monitor = Monitor::open(&ns)?;
        // A profiler around the agent (`WEFT_BENCH_AGENT_WRAPPER="heaptrack -o /tmp/weft"`).
        let wrapper = std::env::var("WEFT_BENCH_AGENT_WRAPPER").unwrap_or_default();
        let mut wrapper = wrapper.split_whitespace();
        let mut command = match wrapper.next() {
            Some(program) => {
                let mut command = ns.command(program)?;
                command.args(wrapper).arg(&lab.agent);
                command
            }
            None => ns.command(&lab.agent)?,
        };
        command
            .arg("--config")
            .arg(&config)
            .args(["agent", "--iface"])
            .arg(HOST_ADDR.to_string())
            .args(["--listen", ""])
            .arg("--subnet-file")
            .arg(&subnet_file)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .env_remove("WEFT_NO_NEXTHOP")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if !nexthops {
            command.env("WEFT_NO_NEXTHOP", "1");
        }
        die_with_parent(&mut command);
        let started = Instant::now();
        let child = command.spawn()?;
        Ok((Agent { ns, child, monitor, subnet_file, log, set: set.clone() }, started))
    }

    fn log_tail(&self) -> String {
        agents::log_tail(&self.log, 15)
    }

    /// The agent's own subnet, once subnet.env is written.
    fn own_subnet(&self) -> Option<Ipv4Net> {
        weft::lab::pods::read_subnet_env(&self.subnet_file).and_then(|info| info.ipv4())
    }

    /// The agent's own lease key, once subnet.env is written (IPv6-only: named by its IPv6
    /// subnet alone).
    fn own_key(&self) -> Option<String> {
        let env = weft::subnet_env::SubnetEnv::read(&self.subnet_file).ok()?;
        let (v4, v6) = (env.ipv4.map(|v4| v4.subnet), env.ipv6.map(|v6| v6.subnet));
        if v4.is_none() && v6.is_none() {
            return None;
        }
        Some(self.set.key_of(v4, v6))
    }

    /// Stops the agent, removes its lease from the store and its namespace.
    fn finish(mut self, store: &Store) {
        agents::stop_all(&[self.child.id()], Duration::from_secs(5));
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(own) = self.own_key() {
            if let Err(e) = store.delete(own.clone()) {
                eprintln!("removing the agent's lease {own}: {e}");
            }
        }
        drop(self.monitor);
        delete_ns(&self.ns, self.set.expected(true).routes * 4);
    }
}

fn converge(lab: &mut Lab, set: &LeaseSet, nexthops: bool) -> io::Result<(AgentRun, Agent)> {
    let label = format!(
        "agent {}{}, {} {}leases",
        set.kind.name(),
        if nexthops { " nexthops" } else { " classic" },
        thousands(u64::from(set.count)),
        set.stack.label()
    );
    let tag =
        format!("{}-{}-{}{}", set.kind.name(), if nexthops { "nh" } else { "classic" }, set.count, set.stack.tag());
    eprintln!("running {label} …");
    let (mut agent, started) = Agent::start(lab, set, nexthops, &tag)?;
    let convergence = agent.monitor.converge(set.expected(nexthops), CONVERGE_DEADLINE);
    let usage = usage(agent.child.id());
    let mut problem = None;
    if !convergence.complete {
        let exited = agent.child.try_wait().ok().flatten();
        problem = Some(format!(
            "{label}: saw {:?} of {:?} after {CONVERGE_DEADLINE:?}{}:\n{}",
            convergence.counts,
            set.expected(nexthops),
            exited.map(|s| format!(" (agent exited: {s})")).unwrap_or_default(),
            agent.log_tail()
        ));
    }
    if convergence.lost {
        problem.get_or_insert_with(|| format!("{label}: the monitor lost notifications"));
    }
    let (set_count, kind, stack) = (set.count, set.kind, set.stack);
    let run = AgentRun { label, set_count, kind, nexthops, stack, convergence, started, usage, problem };
    Ok((run, agent))
}

// ---------------------------------------------------------------------------------------------
// Memory per peer

/// The lease counts of memory mode: the agent alone, then up to five times the headline.
const MEMORY_SIZES: [u32; 4] = [0, 1_000, 10_000, 50_000];

/// The vxlan nexthop agent on each of [`MEMORY_SIZES`]: its usage `SETTLE` after it converged
/// and wrote `subnet.env` (VmHWM keeps the start-up peak, RssAnon/RssFile are what it keeps).
fn memory_curve(agent: &Path) -> io::Result<Vec<(u32, Usage)>> {
    if !nix::unistd::geteuid().is_root() {
        return Err(io::Error::other("the benchmark builds network namespaces: run it as root"));
    }
    let sizes: Vec<u32> = match std::env::var("WEFT_BENCH_SIZES") {
        Ok(list) => list.split(',').map(|n| n.trim().parse().map_err(io::Error::other)).collect::<io::Result<_>>()?,
        Err(_) => MEMORY_SIZES.to_vec(),
    };
    let mut lab = Lab::new(sizes.len(), agent.to_path_buf())?;
    eprintln!("starting etcd …");
    lab.start_etcd()?;
    let mut points = Vec::new();
    for size in sizes {
        let set = LeaseSet::new(BackendKind::Vxlan, size);
        eprintln!("writing {} leases …", thousands(u64::from(size)));
        lab.store().fill(&set)?;
        let (run, agent) = converge(&mut lab, &set, true)?;
        let leased = Instant::now() + CONVERGE_DEADLINE;
        while agent.own_subnet().is_none() && Instant::now() < leased {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(problem) = run.problem.filter(|_| !run.convergence.complete) {
            return Err(io::Error::other(problem));
        }
        if agent.own_subnet().is_none() {
            return Err(io::Error::other(format!("{}: no subnet.env within {CONVERGE_DEADLINE:?}", run.label)));
        }
        std::thread::sleep(SETTLE);
        let settled = usage(agent.child.id()).ok_or_else(|| io::Error::other("the agent's /proc entry is gone"))?;
        points.push((size, settled));
        agent.finish(lab.store());
    }
    Ok(points)
}

/// RSS at each size, and the bytes one more peer costs between neighbouring sizes.
fn memory_table(agent_note: &str, points: &[(u32, Usage)]) -> String {
    let mb = |kib: u64| format!("{:.1} MB", kib as f64 / 1024.0);
    let mut out = format!("agent: vxlan with nexthops ({agent_note})\n");
    let _ = writeln!(
        out,
        "{:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>16}",
        "peers", "VmHWM", "RSS", "anon", "file", "B/peer (anon)"
    );
    for (i, (size, usage)) in points.iter().enumerate() {
        let per_peer = i
            .checked_sub(1)
            .map(|j| points[j])
            .map(|(before, was)| (usage.anon_kib as f64 - was.anon_kib as f64) * 1024.0 / f64::from(size - before))
            .map_or_else(|| "—".to_string(), |b| format!("{b:.0}"));
        let _ = writeln!(
            out,
            "{:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>16}",
            thousands(u64::from(*size)),
            mb(usage.rss_kib),
            mb(usage.anon_kib + usage.file_kib),
            mb(usage.anon_kib),
            mb(usage.file_kib),
            per_peer
        );
    }
    if let (Some((_, none)), Some((most, last))) = (points.first(), points.last()) {
        let per_peer = (last.anon_kib as f64 - none.anon_kib as f64) * 1024.0 / f64::from(*most);
        let peak = (last.rss_kib as f64 - none.rss_kib as f64) * 1024.0 / f64::from(*most);
        let _ = writeln!(
            out,
            "one peer costs {per_peer:.0} B settled (target ≤ 200: {}), {peak:.0} B at the start-up peak",
            verdict(per_peer <= 200.0)
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Event latency

#[derive(Debug, Clone, Default)]
struct Latency {
    /// Lease written → route in the kernel.
    total: Vec<Duration>,
    /// Lease written → etcd's acknowledgement.
    put: Vec<Duration>,
    missed: usize,
}

fn event_latency(store: &Store, agent: &Agent, samples: usize) -> io::Result<Latency> {
    let own = agent.own_subnet();
    let mut latency = Latency::default();
    let mut n = EVENT_BASE;
    for _ in 0..samples {
        n += 1;
        if Some(peer_subnet(n)) == own {
            n += 1;
        }
        let subnet = peer_subnet(n);
        std::thread::sleep(Duration::from_millis(5));
        agent.monitor.drain();
        let (sent, acked) = store.put(agent.set.key(n), lease_json(&agent.set, n))?;
        match agent.monitor.route(subnet.network().into(), EVENT_DEADLINE) {
            Some(at) => latency.total.push(at.saturating_duration_since(sent)),
            None => latency.missed += 1,
        }
        latency.put.push(acked - sent);
    }
    Ok(latency)
}

fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
    sorted.get(index.min(sorted.len().saturating_sub(1))).copied()
}

// ---------------------------------------------------------------------------------------------
// Floors

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Install {
    /// One nexthop object per peer, routes with `nhid`.
    Nexthops,
    /// `via <gateway> … [onlink]` routes.
    Classic,
}

#[derive(Debug, Clone)]
struct Floor {
    label: String,
    kind: BackendKind,
    install: Install,
    count: u32,
    ip: Duration,
    bridge: Duration,
}

impl Floor {
    fn total(&self) -> Duration {
        self.ip + self.bridge
    }
}

/// A veth underlay `under0` with the host address, and `flannel.1` on it, like the agent's.
const FLOOR_SETUP: &str = "link add under0 type veth peer name under0p
link set under0p up
link set under0 up
address add 198.18.0.1/15 dev under0
link add flannel.1 address 02:aa:00:00:00:01 type vxlan id 1 local 198.18.0.1 dev under0 dstport 8472 nolearning
link set flannel.1 mtu 1450 up
address add 10.0.0.0/32 dev flannel.1
";

fn batch(ns: &Netns, program: &str, file: &Path) -> io::Result<Duration> {
    let started = Instant::now();
    let out = ns.command(program)?.arg("-batch").arg(file).stdin(Stdio::null()).output()?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{program} -batch {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(elapsed)
}

/// `ip -batch` and `bridge -batch` installing what the agent installs for `count` peers.
fn floor(lab: &Lab, kind: BackendKind, install: Install, count: u32) -> io::Result<Floor> {
    let tag = format!("f-{}-{}-{count}", kind.name(), if install == Install::Nexthops { "nh" } else { "classic" });
    let ns = lab.new_isolated(&tag)?;
    let result = (|| -> io::Result<Floor> {
        let setup = lab.path(&format!("{tag}.setup"));
        std::fs::write(&setup, FLOOR_SETUP)?;
        batch(&ns, "ip", &setup)?;
        let (mut ip, mut bridge) = (String::new(), String::new());
        for i in 1..=count {
            let subnet = peer_subnet(i);
            let vtep = subnet.network();
            let public = peer_public_ip(i);
            let id = u32::from(vtep);
            let (gateway, dev, onlink) = match kind {
                BackendKind::Vxlan => {
                    let mac = peer_mac(i);
                    writeln!(ip, "neigh replace {vtep} lladdr {mac} dev flannel.1 nud permanent").unwrap();
                    writeln!(bridge, "fdb replace {mac} dev flannel.1 dst {public} self permanent").unwrap();
                    (vtep, "flannel.1", " onlink")
                }
                BackendKind::HostGw => (public, "under0", ""),
            };
            match install {
                Install::Nexthops => {
                    writeln!(ip, "nexthop replace id {id} via {gateway} dev {dev}{onlink} proto 87").unwrap();
                }
                Install::Classic => {
                    writeln!(ip, "route replace {subnet} via {gateway} dev {dev}{onlink} proto 87").unwrap();
                }
            }
        }
        if install == Install::Nexthops {
            for i in 1..=count {
                let subnet = peer_subnet(i);
                writeln!(ip, "route replace {subnet} nhid {} proto 87", u32::from(subnet.network())).unwrap();
            }
        }
        let (ip_file, bridge_file) = (lab.path(&format!("{tag}.ip")), lab.path(&format!("{tag}.bridge")));
        std::fs::write(&ip_file, ip)?;
        std::fs::write(&bridge_file, &bridge)?;
        // FDB first, as the agent does (neighbour, FDB, then what routes through them).
        let bridge = if bridge.is_empty() { Duration::ZERO } else { batch(&ns, "bridge", &bridge_file)? };
        let ip = batch(&ns, "ip", &ip_file)?;
        let label = format!(
            "floor {} {}, {}",
            kind.name(),
            if install == Install::Nexthops { "nexthops" } else { "classic" },
            thousands(u64::from(count))
        );
        Ok(Floor { label, kind, install, count, ip, bridge })
    })();
    delete_ns(&ns, u64::from(count) * 4);
    result
}

/// weft's own netlink code installing the same vxlan peers, without an agent or a store (the
/// kernel side of the agent's work alone): (apply, read back).
fn library_apply(lab: &Lab, nexthops: bool, count: u32) -> io::Result<(Duration, Duration)> {
    let tag = format!("lib-{}-{count}", if nexthops { "nh" } else { "classic" });
    let ns = lab.new_isolated(&tag)?;
    let result = (|| -> io::Result<(Duration, Duration)> {
        let setup = lab.path(&format!("{tag}.setup"));
        std::fs::write(&setup, FLOOR_SETUP)?;
        batch(&ns, "ip", &setup)?;
        ns.block_on(move || async move {
            let mode = if nexthops { NexthopMode::Auto } else { NexthopMode::Disabled };
            let kernel = NetlinkKernel::with_nexthops(mode).map_err(io::Error::other)?;
            let link = kernel.link_by_name("flannel.1").await.map_err(io::Error::other)?.expect("flannel.1");
            let under = kernel.link_by_name("under0").await.map_err(io::Error::other)?.expect("under0");
            let ext = ExternalInterface {
                index: under.index,
                name: under.name,
                mtu: 1500,
                addr: Some(Ipv4Net::new(HOST_ADDR, HOST_PREFIX_LEN).expect("valid")),
                addr_v6: None,
                public_ip: Some(HOST_ADDR),
                public_ipv6: None,
            };
            let peers =
                VxlanPeers { link: Some(link.index), link6: None, ext, direct_routing: false, use_nexthops: nexthops };
            let mut want = KernelState::default();
            for i in 1..=count {
                let attrs =
                    LeaseAttrs::new(peer_public_ip(i), "vxlan", serde_json::json!({"VNI": 1, "VtepMAC": peer_mac(i)}));
                let lease = Lease { subnet: Some(peer_subnet(i)), subnet_v6: None, attrs, expiry: Expiry::Unknown };
                let objects = peers.objects(&lease).map_err(io::Error::other)?;
                want.nexthops.extend(objects.nexthops);
                want.routes.extend(objects.routes);
                want.neighbours.extend(objects.neighbours);
                want.fdb.extend(objects.fdb);
            }
            let plan = diff(&want, &KernelState::default());
            let started = Instant::now();
            let failures = kernel.apply(&plan.ops).await;
            let applied = started.elapsed();
            if !failures.is_empty() {
                return Err(io::Error::other(format!("{} failures, first: {}", failures.len(), failures[0].error)));
            }
            let started = Instant::now();
            let have = kernel.read_owned(&Ownership { links: vec![link.index] }).await.map_err(io::Error::other)?;
            let read = started.elapsed();
            if have != want {
                return Err(io::Error::other("read back differs from what was applied"));
            }
            Ok((applied, read))
        })?
    })();
    delete_ns(&ns, u64::from(count) * 4);
    result
}

// ---------------------------------------------------------------------------------------------
// The run and its table

/// Everything measured.
#[derive(Debug, Default)]
pub struct Report {
    agents: Vec<AgentRun>,
    floors: Vec<Floor>,
    library: Vec<(String, Duration, Duration)>,
    latency: Option<(u32, Latency)>,
    /// Usage after converging on the largest vxlan set (nexthops).
    usage: Option<(u32, Usage)>,
    /// The same agent `SETTLE` later.
    settled: Option<Usage>,
    /// The agent without the SDKs on the same set: at convergence and `SETTLE` later.
    lean: Option<(Usage, Usage)>,
    pub problems: Vec<String>,
}

impl Report {
    /// Whether every run converged and every sample arrived.
    pub fn complete(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs the whole benchmark and prints its table to stdout.
pub fn run(options: &Options) -> io::Result<Report> {
    if !nix::unistd::geteuid().is_root() {
        return Err(io::Error::other("the benchmark builds network namespaces: run it as root"));
    }
    let sizes = options.sizes();
    let all_variants = [
        (BackendKind::Vxlan, true),
        (BackendKind::Vxlan, false),
        (BackendKind::HostGw, true),
        (BackendKind::HostGw, false),
    ];
    let variants = if options.headline { &all_variants[..1] } else { &all_variants[..] };
    // Each size once more dual-stack and once IPv6-only (vxlan, nexthops): IPv6 beside IPv4 in
    // the same run.
    let v6_stacks = [Stack::Dual, Stack::Ipv6Only];
    let hosts = sizes.len() * (variants.len() + v6_stacks.len()) + usize::from(options.lean_agent.is_some());
    let mut lab = Lab::new(hosts, options.agent.clone())?;
    let mut report = Report::default();
    let started = Instant::now();

    eprintln!("starting etcd and writing leases …");
    lab.start_etcd()?;
    let mut sets = Vec::new();
    for &size in &sizes {
        for kind in [BackendKind::Vxlan, BackendKind::HostGw] {
            if !variants.iter().any(|&(k, _)| k == kind) {
                continue;
            }
            let set = LeaseSet::new(kind, size);
            lab.store().fill(&set)?;
            sets.push(set);
        }
        for stack in v6_stacks {
            let set = LeaseSet::with_stack(BackendKind::Vxlan, size, stack);
            lab.store().fill(&set)?;
            sets.push(set);
        }
    }

    eprintln!("measuring the floor …");
    for &size in sizes.iter().filter(|_| !options.headline) {
        for &(kind, nexthops) in variants {
            let install = if nexthops { Install::Nexthops } else { Install::Classic };
            report.floors.push(floor(&lab, kind, install, size)?);
        }
        for nexthops in [true, false] {
            let (apply, read) = library_apply(&lab, nexthops, size)?;
            let label = format!(
                "weft netlink apply, vxlan {}, {}",
                if nexthops { "nexthops" } else { "classic" },
                thousands(u64::from(size))
            );
            report.library.push((label, apply, read));
        }
    }

    let largest = *sizes.last().expect("a size");
    for &size in &sizes {
        for &(kind, nexthops) in variants {
            let set = sets
                .iter()
                .find(|s| s.kind == kind && s.count == size && s.stack == Stack::Ipv4)
                .expect("filled")
                .clone();
            let (run, agent) = converge(&mut lab, &set, nexthops)?;
            if let Some(problem) = &run.problem {
                report.problems.push(problem.clone());
            }
            let headline = kind == BackendKind::Vxlan && nexthops && size == largest;
            if headline && run.convergence.complete {
                if let Some(usage) = run.usage {
                    report.usage = Some((size, usage));
                }
                // What the agent keeps once the start-up is over (VmHWM keeps the start-up peak).
                std::thread::sleep(SETTLE);
                report.settled = usage(agent.child.id());
                eprintln!("measuring event latency ({} samples) …", options.event_samples());
                let latency = event_latency(lab.store(), &agent, options.event_samples())?;
                if latency.missed > 0 {
                    report.problems.push(format!("event latency: {} routes never came", latency.missed));
                }
                report.latency = Some((size, latency));
            }
            report.agents.push(run);
            agent.finish(lab.store());
        }
        for stack in v6_stacks {
            let set = sets.iter().find(|s| s.stack == stack && s.count == size).expect("filled").clone();
            let (run, agent) = converge(&mut lab, &set, true)?;
            if let Some(problem) = &run.problem {
                report.problems.push(problem.clone());
            }
            report.agents.push(run);
            agent.finish(lab.store());
        }
    }
    if let Some(lean) = &options.lean_agent {
        let set = sets
            .iter()
            .find(|s| s.kind == BackendKind::Vxlan && s.count == largest && s.stack == Stack::Ipv4)
            .expect("filled")
            .clone();
        lab.agent = lean.clone();
        let (mut run, agent) = converge(&mut lab, &set, true)?;
        run.label.push_str(", no SDKs");
        if let Some(problem) = &run.problem {
            report.problems.push(problem.clone());
        }
        if run.convergence.complete {
            std::thread::sleep(SETTLE);
            report.lean = run.usage.zip(usage(agent.child.id()));
        }
        report.agents.push(run);
        agent.finish(lab.store());
    }
    drop(lab);
    print!("{}", table(options, &report, started.elapsed()));
    for problem in &report.problems {
        eprintln!("PROBLEM: {problem}");
    }
    Ok(report)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map(ms).unwrap_or_else(|| "—".into())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn table(options: &Options, report: &Report, elapsed: Duration) -> String {
    let mut out = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let _ =
        writeln!(out, "\nweft data-plane benchmark{}", if options.quick { " (quick mode: 1,000 leases)" } else { "" });
    let _ = writeln!(
        out,
        "kernel {}, {cpus} CPUs, load average {}; agent {} ({}, {:.1} MB); {:.0} s in all",
        kernel.trim(),
        load.join(" "),
        options.agent.display(),
        options.agent_note,
        std::fs::metadata(&options.agent).map_or(0.0, |m| m.len() as f64 / 1e6),
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "Times: from `weft agent` process start, to the kernel's notification of the first / last peer object."
    );
    let _ = writeln!(out);
    let w = 46;
    let _ = writeln!(
        out,
        "{:<w$} {:>10} {:>10} {:>8} {:>8}  {:<26} flanneld v0.10 (quoted)",
        "", "first", "full", "RSS", "CPU", "target"
    );
    let floor_of = |kind: BackendKind, install: Install, count: u32| {
        report.floors.iter().find(|f| f.kind == kind && f.install == install && f.count == count).map(Floor::total)
    };
    for run in &report.agents {
        let mut target = String::new();
        let mut flannel = "";
        if run.kind == BackendKind::Vxlan && run.nexthops && run.stack == Stack::Ipv4 {
            match run.set_count {
                1_000 => {
                    let ok = run.full().is_some_and(|d| d <= Duration::from_millis(60));
                    target = format!("full ≤ 60 ms: {}", verdict(ok));
                    flannel = "0.16 s";
                }
                10_000 => {
                    let limit = floor_of(BackendKind::Vxlan, Install::Nexthops, 10_000).map(|f| f.mul_f64(1.3));
                    let full_ok = matches!((run.full(), limit), (Some(d), Some(l)) if d <= l);
                    let first_ok = run.first().is_some_and(|d| d <= Duration::from_millis(100));
                    let full_target = match limit {
                        Some(limit) => format!("full ≤ 1.3× floor = {}: {}", ms(limit), verdict(full_ok)),
                        None => "full: floor not measured".into(),
                    };
                    target = format!("{full_target}; first ≤ 100 ms: {}", verdict(first_ok));
                    flannel = "2.3 s (first entry 0.22 s)";
                }
                _ => {}
            }
        }
        let (rss, cpu) = match run.usage {
            Some(u) => (format!("{:.1} MB", u.rss_kib as f64 / 1024.0), ms(u.cpu)),
            None => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            out,
            "{:<w$} {:>10} {:>10} {:>8} {:>8}  {:<26} {}",
            run.label,
            opt_ms(run.first()),
            if run.convergence.complete { ms(run.full().unwrap_or_default()) } else { "incomplete".into() },
            rss,
            cpu,
            target,
            flannel
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<w$} {:>10} {:>10} {:>10}",
        "floor (same objects, fresh namespace)", "ip -batch", "bridge", "total"
    );
    for floor in &report.floors {
        let _ = writeln!(
            out,
            "{:<w$} {:>10} {:>10} {:>10}",
            floor.label,
            ms(floor.ip),
            if floor.bridge.is_zero() { "—".into() } else { ms(floor.bridge) },
            ms(floor.total())
        );
    }
    for (label, apply, read) in &report.library {
        let _ = writeln!(out, "{:<w$} {:>10} {:>10} {:>10}", label, "", "", ms(*apply));
        let _ = writeln!(out, "{:<w$} {:>10} {:>10} {:>10}", "  (its read_owned dump of the same)", "", "", ms(*read));
    }
    let _ = writeln!(out);
    if let Some((size, latency)) = &report.latency {
        let p50 = percentile(&latency.total, 0.50);
        let p99 = percentile(&latency.total, 0.99);
        let ok = p99.is_some_and(|d| d <= Duration::from_micros(2700)) && latency.missed == 0;
        let _ = writeln!(
            out,
            "event latency, lease put → route in the agent's kernel ({} samples, agent on {} vxlan leases):",
            latency.total.len(),
            thousands(u64::from(*size))
        );
        let _ = writeln!(
            out,
            "  p50 {}  p99 {}  max {}   target p99 ≤ 2.7 ms: {}   flanneld p99 2.7 ms (with the etcd write)",
            opt_ms(p50),
            opt_ms(p99),
            opt_ms(percentile(&latency.total, 1.0)),
            verdict(ok)
        );
        let _ = writeln!(
            out,
            "  of which etcd's put round trip: p50 {}  p99 {}",
            opt_ms(percentile(&latency.put, 0.50)),
            opt_ms(percentile(&latency.put, 0.99))
        );
    }
    if let Some((size, usage)) = report.usage {
        let mb = |kib: u64| kib as f64 / 1024.0;
        let _ = writeln!(
            out,
            "agent converged on {} vxlan leases: RSS peak (VmHWM) {:.1} MB, target ≤ 12 MB: {}, flanneld 38 MB; \
             CPU (utime+stime) {}, target ≤ 0.3 s: {}, flanneld 2.3 s",
            thousands(u64::from(size)),
            mb(usage.rss_kib),
            verdict(mb(usage.rss_kib) <= 12.0),
            ms(usage.cpu),
            verdict(usage.cpu <= Duration::from_millis(300)),
        );
        let settled_line = |settled: Usage| {
            format!(
                "RSS {} s later: {:.1} MB ({:.1} MB anonymous, {:.1} MB file-backed: code and data of the binary and its libraries)",
                SETTLE.as_secs(),
                mb(settled.anon_kib + settled.file_kib),
                mb(settled.anon_kib),
                mb(settled.file_kib),
            )
        };
        if let Some(settled) = report.settled {
            let _ = writeln!(out, "  {}", settled_line(settled));
        }
        if let (Some(lean), Some((peak, settled))) = (&options.lean_agent, report.lean) {
            let _ = writeln!(
                out,
                "the same agent built without the cloud and Kubernetes SDKs (--no-default-features, {:.1} MB): \
                 RSS peak {:.1} MB, target ≤ 12 MB: {}; CPU {}",
                std::fs::metadata(lean).map_or(0.0, |m| m.len() as f64 / 1e6),
                mb(peak.rss_kib),
                verdict(mb(peak.rss_kib) <= 12.0),
                ms(peak.cpu),
            );
            let _ = writeln!(out, "  {}", settled_line(settled));
        }
    }
    out
}
