//! Multi-host clusters for integration tests: hosts are network namespaces joined to a bridge in
//! a switch namespace (weft's own lab topology, `weft::lab`), each running `weft agent` as a
//! separate process, with an optional real etcd in a service namespace on the same bridge
//! (agents in host namespaces cannot reach the machine's loopback).
//!
//! Every name carries a prefix unique to the cluster (`wt<pid>-<n>-`), so tests run in parallel,
//! and Drop removes everything, also when the test panics. Agents and etcd die with the test
//! thread even on SIGKILL (parent-death signal); namespaces left by a killed test run are removed
//! by the next one.
//!
//! Only documentation-range addresses (198.51.100.0/24, and 2001:db8::/64 on a dual-stack
//! underlay, [`Underlay`]) on the underlay; nothing is ever changed in the machine's own namespace.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::net::{Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipnet::Ipv6Net;
use tempfile::TempDir;
use weft::lab::pods::{self, SubnetInfo};
use weft::lab::report::Probe;
use weft::lab::{agents, probe, wire, Node, PodAddrs, Topology};
use weft::netns::Netns;
use weft::subnet_env::SubnetEnv;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");
/// Each host namespace has its own loopback: every agent listens on the same address.
pub const AGENT_LISTEN: &str = "127.0.0.1:9810";
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_START_DEADLINE: Duration = Duration::from_secs(20);
const SUBNET_DEADLINE: Duration = Duration::from_secs(20);

static NEXT_CLUSTER: AtomicUsize = AtomicUsize::new(0);

/// The pods' IPv6 network of the dual-stack cloud tests (`ipv6_cidr`), beside 10.244.0.0/16: a
/// documentation range, as in tests/dual_stack.rs.
pub const POD_NETWORK_V6: &str = "2001:db8:42::/56";

/// The underlay a test world builds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Underlay {
    /// IPv4 only: every test's default.
    #[default]
    Ipv4,
    /// Every host and the service namespace have an IPv6 address too
    /// ([`Cluster::add_ipv6_underlay`]), and the VPC router forwards IPv6.
    DualStack,
    /// The dual-stack underlay carrying an IPv6-only pod network (`enable_ipv4 = false`): the
    /// hosts keep their IPv4 addresses, the pods have none.
    Ipv6Only,
}

impl Underlay {
    /// Whether the hosts and the router have IPv6 addresses.
    pub fn has_ipv6(self) -> bool {
        self != Underlay::Ipv4
    }

    /// Whether the pods' network has IPv4 (`cidr`).
    pub fn pods_ipv4(self) -> bool {
        self != Underlay::Ipv6Only
    }

    /// What `[network]` says for this underlay's pods beyond IPv4: `ipv6_cidr` on a dual-stack
    /// one (with `enable_ipv4 = false` for IPv6-only pods), nothing otherwise.
    pub fn network_lines(self) -> String {
        match self {
            Underlay::Ipv4 => String::new(),
            Underlay::DualStack => format!("ipv6_cidr = \"{POD_NETWORK_V6}\"\n"),
            Underlay::Ipv6Only => format!("enable_ipv4 = false\nipv6_cidr = \"{POD_NETWORK_V6}\"\n"),
        }
    }
}

/// Namespace tests need root; CI runs as root. Never skip: a skipped test proves nothing.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test builds network namespaces and needs root (CI={}): run it as root, e.g. \
             `sudo -E cargo test`",
            std::env::var("CI").unwrap_or_default()
        );
    }
}

/// A runtime whose every thread (workers and blocking pool) entered `netns` first: sockets made
/// by its tasks belong there, never to the machine's own namespace.
pub fn runtime_in(netns: &Netns) -> tokio::runtime::Runtime {
    let file = std::sync::Arc::new(std::fs::File::open(&netns.path).expect("open the namespace"));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            nix::sched::setns(file.as_ref(), nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace")
        })
        .build()
        .expect("a runtime")
}

pub struct Cluster {
    pub topology: Topology,
    /// Configs, subnet.env files, logs and etcd's data.
    pub dir: TempDir,
    etcd: Option<Child>,
    /// Host i's agent at index i - 1.
    agents: Vec<Option<Child>>,
    /// Agents reach etcd at [`Cluster::etcd_endpoint_v6`] (hosts without IPv4).
    pub etcd_over_ipv6: bool,
}

impl Cluster {
    /// `hosts` hosts on a switch, nothing running yet.
    pub fn new(hosts: usize) -> Cluster {
        require_root();
        remove_stale_clusters();
        let prefix = format!("wt{}-{}-", std::process::id(), NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed));
        let topology = Topology::new(&prefix, hosts).expect("a valid host count");
        // Exists before anything is built, so Drop cleans up a half-built cluster as well.
        let cluster = Cluster {
            topology,
            dir: tempfile::tempdir().expect("create a temp dir"),
            etcd: None,
            agents: (0..hosts).map(|_| None).collect(),
            etcd_over_ipv6: false,
        };
        if let Err(e) = wire::build(&cluster.topology) {
            panic!("building the cluster {prefix}: {e}");
        }
        cluster
    }

    /// `hosts` hosts and an etcd in the service namespace, answering.
    pub fn with_etcd(hosts: usize) -> Cluster {
        let mut cluster = Cluster::new(hosts);
        cluster.start_etcd();
        cluster
    }

    pub fn host(&self, i: usize) -> Node {
        self.topology.host(i)
    }

    pub fn host_ns(&self, i: usize) -> Netns {
        ns(&self.host(i).ns)
    }

    pub fn pod_ns(&self, i: usize) -> String {
        self.topology.pod_ns(&self.host(i))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    // ---- etcd ----

    /// Starts etcd in the service namespace and waits until it is healthy.
    pub fn start_etcd(&mut self) {
        assert!(self.etcd.is_none(), "etcd already runs");
        let service = self.topology.service();
        // Started again after `stop_etcd`: the namespace, and etcd's data, are still there.
        if !Netns::exists(&service.ns) {
            if let Err(e) = wire::join(&self.topology, &service) {
                panic!("joining the service namespace: {e}");
            }
        }
        let client = self.etcd_endpoint();
        let peer = "http://127.0.0.1:2380";
        let log = std::fs::File::create(self.path("etcd.log")).expect("create etcd.log");
        let mut command = ns(&service.ns).command(etcd_binary()).expect("enter svc ns");
        command
            .arg("--name=weft-test")
            .arg(format!("--data-dir={}", self.path("etcd-data").display()))
            // Every address of the namespace, so hosts with only an IPv6 underlay reach it too
            // (`etcd_endpoint_v6`); a dual-stack socket takes the IPv4 clients as before.
            .arg(format!("--listen-client-urls=http://[::]:{ETCD_CLIENT_PORT}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=weft-test={peer}"))
            .args(["--logger=zap", "--log-outputs=stderr", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut command);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot run etcd ({}): {e}; install Debian's etcd-server or set WEFT_TEST_ETCD", etcd_binary())
        });
        self.etcd = Some(child);
        let deadline = Instant::now() + ETCD_START_DEADLINE;
        while !self.etcd_healthy() {
            if let Some(status) = self.etcd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("etcd exited ({status}): {}", self.read("etcd.log"));
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within {ETCD_START_DEADLINE:?}: {}",
                self.read("etcd.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd (SIGKILL, as a crash), keeping its data: `start_etcd` brings it back.
    pub fn stop_etcd(&mut self) {
        let mut etcd = self.etcd.take().expect("etcd runs");
        let _ = etcd.kill();
        let _ = etcd.wait();
    }

    /// Where agents reach etcd: the service namespace's underlay address.
    pub fn etcd_endpoint(&self) -> String {
        format!("http://{}:{ETCD_CLIENT_PORT}", self.topology.service().addr)
    }

    /// The same over the IPv6 underlay (given by [`Cluster::add_ipv6_underlay`]), for hosts
    /// without IPv4.
    pub fn etcd_endpoint_v6(&self) -> String {
        format!("http://[{}]:{ETCD_CLIENT_PORT}", self.service_v6())
    }

    /// `etcdctl <args>` (API v3) from the service namespace; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        super::etcd::run_etcdctl(self.etcdctl_command(args), args)
    }

    /// Sets `Backend.<key>` of the stored network config, as someone who can write etcd would.
    pub fn set_backend_key(&self, key: &str, value: &str) {
        let path = "/coreos.com/network/config";
        let text = self.etcdctl(&["get", "--print-value-only", path]);
        let mut config: serde_json::Value = serde_json::from_str(text.trim()).expect("the stored config is JSON");
        config["Backend"][key] = serde_json::Value::String(value.to_string());
        self.etcdctl(&["put", path, &config.to_string()]);
    }

    fn etcdctl_command(&self, args: &[&str]) -> Command {
        let mut command = ns(&self.topology.service().ns).command("etcdctl").expect("enter svc ns");
        command.env("ETCDCTL_API", "3").arg("--endpoints").arg(self.etcd_endpoint()).args(args).stdin(Stdio::null());
        command
    }

    fn etcd_healthy(&self) -> bool {
        super::etcd::etcd_answers(self.etcdctl_command(super::etcd::HEALTH_ARGS))
    }

    // ---- weft ----

    /// Writes the agents' weft.toml: the cluster's etcd if it runs, else a local store in the
    /// temp dir; `network` is the body of the `[network]` table. Returns its path.
    pub fn write_config(&self, network: &str) -> PathBuf {
        self.write_config_with("lease_ttl = \"30s\"\nrenew_margin = \"10s\"\nresync = \"2s\"", network)
    }

    /// Like [`Cluster::write_config`], with `agent` as the body of the `[agent]` table (timers).
    pub fn write_config_with(&self, agent: &str, network: &str) -> PathBuf {
        let store = if self.etcd.is_some() {
            let endpoint = if self.etcd_over_ipv6 { self.etcd_endpoint_v6() } else { self.etcd_endpoint() };
            format!("kind = \"etcd\"\nendpoints = [\"{endpoint}\"]")
        } else {
            format!("kind = \"local\"\npath = \"{}\"", self.path("store").display())
        };
        let text = format!("[agent]\n{agent}\n\n[store]\n{store}\n\n[network]\n{network}\n");
        let path = self.path("weft.toml");
        std::fs::write(&path, text).expect("write weft.toml");
        path
    }

    /// `weft --config <weft.toml> <args>` in host 1's namespace (it reaches the store).
    pub fn weft(&self, args: &[&str]) -> Output {
        self.host_ns(1)
            .command(WEFT)
            .expect("enter host 1")
            .arg("--config")
            .arg(self.path("weft.toml"))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run weft")
    }

    /// Like [`Cluster::weft`], and it must succeed; its stdout.
    pub fn weft_ok(&self, args: &[&str]) -> String {
        let out = self.weft(args);
        assert!(out.status.success(), "weft {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn subnet_file(&self, i: usize) -> PathBuf {
        self.path(&format!("h{i}.env"))
    }

    pub fn agent_log_path(&self, i: usize) -> PathBuf {
        self.path(&format!("h{i}.log"))
    }

    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.agent_log_path(i)).unwrap_or_default()
    }

    /// Starts `weft agent` in host i's namespace on `eth0` with the cluster's weft.toml.
    pub fn start_agent(&mut self, i: usize, extra: &[&str]) {
        self.start_agent_with_env(i, extra, &[]);
    }

    /// [`Cluster::start_agent`] with `env` added to the agent's environment (a cloud backend's
    /// metadata endpoint and credentials).
    pub fn start_agent_with_env(&mut self, i: usize, extra: &[&str], env: &[(&str, &str)]) {
        assert!(self.agents[i - 1].is_none(), "h{i}'s agent already runs");
        let log = std::fs::File::create(self.agent_log_path(i)).expect("create agent log");
        let mut command = self.host_ns(i).command(WEFT).expect("enter host");
        command
            .arg("--config")
            .arg(self.path("weft.toml"))
            .args(["agent", "--iface", "eth0", "--listen", AGENT_LISTEN])
            .arg("--subnet-file")
            .arg(self.subnet_file(i))
            .args(extra)
            .env("RUST_LOG", "info,weft=debug")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        die_with_parent(&mut command);
        self.agents[i - 1] = Some(command.spawn().expect("start weft agent"));
    }

    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.agents[i - 1].as_ref().map(Child::id)
    }

    /// Waits for host i's subnet.env; panics with the agent's log when it does not come.
    pub fn wait_subnet(&mut self, i: usize) -> SubnetInfo {
        let deadline = Instant::now() + SUBNET_DEADLINE;
        loop {
            if let Some(info) = pods::read_subnet_env(&self.subnet_file(i)) {
                return info;
            }
            if let Some(status) = self.agents[i - 1].as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("h{i}'s agent exited ({status}):\n{}", self.agent_log(i));
            }
            assert!(Instant::now() < deadline, "h{i}: no subnet.env after {SUBNET_DEADLINE:?}:\n{}", self.agent_log(i));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for host i's subnet.env to name an IPv6 subnet ([`Cluster::wait_subnet`] wants the
    /// IPv4 lines an IPv6-only file has not got); panics with the agent's log when it does not.
    pub fn wait_subnet_v6(&mut self, i: usize) -> SubnetEnv {
        let deadline = Instant::now() + SUBNET_DEADLINE;
        loop {
            if let Some(env) = SubnetEnv::read(&self.subnet_file(i)).ok().filter(|env| env.ipv6.is_some()) {
                return env;
            }
            if let Some(status) = self.agents[i - 1].as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("h{i}'s agent exited ({status}):\n{}", self.agent_log(i));
            }
            assert!(
                Instant::now() < deadline,
                "h{i}: no subnet.env with an IPv6 subnet after {SUBNET_DEADLINE:?}:\n{}",
                self.agent_log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to host i's agent, then wait (SIGKILL after 10 s).
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(child) = self.agents[i - 1].take() {
            agents::stop_all(&[child.id()], Duration::from_secs(10));
            reap(child);
        }
    }

    /// SIGKILL: the agent dies as on a crash, leaving what it installed.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// host i's `/readyz` status, asked from inside its namespace (`None`: no answer).
    pub fn readyz(&self, i: usize) -> Option<u16> {
        let addr: SocketAddr = AGENT_LISTEN.parse().expect("valid address");
        probe::http_status(&self.host_ns(i), addr, "/readyz").expect("enter host")
    }

    /// `path` of host i's agent: status and body, asked from inside its namespace.
    pub fn agent_get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let addr: SocketAddr = AGENT_LISTEN.parse().expect("valid address");
        probe::http_get(&self.host_ns(i), addr, path).expect("enter host")
    }

    // ---- IPv6 underlay ----

    /// Host i's IPv6 underlay address (given by [`Cluster::add_ipv6_underlay`]):
    /// 2001:db8::<the last octet of its IPv4 address>, as `weft lab` gives it.
    pub fn host_v6(&self, i: usize) -> Ipv6Addr {
        self.host(i).addr_v6().addr()
    }

    /// The service namespace's IPv6 underlay address (the VPC router's), likewise.
    pub fn service_v6(&self) -> Ipv6Addr {
        self.topology.service().addr_v6().addr()
    }

    /// Gives every host and the service namespace (it must exist: etcd started) its IPv6
    /// underlay address on `eth0`, a /64 without duplicate address detection, then waits until
    /// no address on those links is tentative: the link-local ones still run DAD, and until it
    /// ends neighbour discovery across the bridge may go unanswered.
    pub fn add_ipv6_underlay(&self) {
        let mut nodes = self.topology.host_nodes();
        nodes.push(self.topology.service());
        for node in &nodes {
            wire::add_ipv6(&ns(&node.ns), "eth0", node.addr_v6())
                .unwrap_or_else(|e| panic!("the IPv6 underlay address of {}: {e}", node.name));
        }
        for node in &nodes {
            wire::wait_ipv6_settled(&ns(&node.ns), "eth0")
                .unwrap_or_else(|e| panic!("the IPv6 underlay of {}: {e}", node.name));
        }
    }

    /// Whether `hosts` hosts run `kind` for their IPv6 peers: every lease says so and names an
    /// IPv6 subnet, vxlan's IPv6 device is there exactly with vxlan, and each host has a weft
    /// IPv6 route to every peer. What a live switch waits for, dual-stack or IPv6-only.
    pub fn runs_ipv6_backend(&self, hosts: usize, kind: &str) -> bool {
        let list: serde_json::Value = serde_json::from_str(&self.weft_ok(&["leases", "list", "--json"])).unwrap();
        let leases = list.as_array().unwrap();
        let device = |i: usize| {
            let links = self.ip_json(&self.host(i).ns, &["link", "show"]);
            links.as_array().unwrap().iter().any(|l| l["ifname"] == "flannel-v6.1")
        };
        leases.len() == hosts
            && leases.iter().all(|l| l["backend_type"] == kind && l["subnet_v6"].is_string())
            && (1..=hosts).all(|i| device(i) == (kind == "vxlan"))
            && (1..=hosts).all(|i| {
                let routes = self.ip_json(&self.host(i).ns, &["-6", "route", "show", "proto", "87"]);
                routes.as_array().unwrap().len() == hosts - 1
            })
    }

    /// Gives host i's pod (made by [`Cluster::make_pod`]) an address of the host's IPv6 subnet,
    /// as its subnet.env names it (`::1` on the bridge, `::2` in the pod, the pod's IPv6 default
    /// route through the bridge). Returns the subnet and the pod's address.
    pub fn add_pod_ipv6(&self, i: usize) -> (Ipv6Net, Ipv6Addr) {
        let env = SubnetEnv::read(&self.subnet_file(i)).unwrap_or_else(|e| panic!("h{i}'s subnet.env: {e}"));
        let v6 = env.ipv6.unwrap_or_else(|| panic!("h{i}'s subnet.env has no IPv6 subnet:\n{}", self.agent_log(i)));
        let pod = pods::add_ipv6(&self.topology, &self.host(i), v6.subnet)
            .unwrap_or_else(|e| panic!("h{i}'s pod IPv6 address: {e}"));
        (v6.subnet, pod)
    }

    /// Host i's pod with no IPv4 address anywhere, as the bridge plugin makes it on an IPv6-only
    /// network ([`pods::create_ipv6_only`]: `cni0` bare, the pod's veth into it at `mtu`, `::1` on
    /// the bridge, `::2` in the pod and its default route via `::1`). Returns the subnet and the
    /// pod's address.
    pub fn make_ipv6_only_pod(&self, i: usize, mtu: u32) -> (Ipv6Net, Ipv6Addr) {
        let env = SubnetEnv::read(&self.subnet_file(i)).unwrap_or_else(|e| panic!("h{i}'s subnet.env: {e}"));
        let v6 = env.ipv6.unwrap_or_else(|| panic!("h{i}'s subnet.env has no IPv6 subnet:\n{}", self.agent_log(i)));
        let pod = pods::create_ipv6_only(&self.topology, &self.host(i), v6.subnet, mtu)
            .unwrap_or_else(|e| panic!("making h{i}'s IPv6-only pod: {e}"));
        (v6.subnet, pod)
    }

    // ---- pods and traffic ----

    /// A bridge `cni0` and a pod namespace behind host i, in `info`'s subnet.
    pub fn make_pod(&self, i: usize, info: SubnetInfo) -> PodAddrs {
        pods::create(&self.topology, &self.host(i), info).unwrap_or_else(|e| panic!("making h{i}'s pod: {e}"))
    }

    /// Three pings from namespace `from` to `to`: the average round trip, or `None`.
    pub fn ping(&self, from: &str, to: impl Into<std::net::IpAddr>) -> Option<Duration> {
        let job = probe::PingJob { from_ns: from.to_string(), to: to.into() };
        match probe::ping_all(&[job]).expect("run ping").pop() {
            Some(Probe::Rtt(rtt)) => Some(rtt),
            _ => None,
        }
    }

    /// Pings until one answers or `within` passes (routes take a moment to appear).
    pub fn wait_ping(&self, from: &str, to: impl Into<std::net::IpAddr> + Copy, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.ping(from, to).is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// `ip -j <args>` inside namespace `name`, parsed.
    pub fn ip_json(&self, name: &str, args: &[&str]) -> serde_json::Value {
        self.tool_json(name, "ip", args)
    }

    /// `<program> -j <args>` (iproute2's `ip` or `bridge`) inside namespace `name`, parsed.
    pub fn tool_json(&self, name: &str, program: &str, args: &[&str]) -> serde_json::Value {
        let out = ns(name)
            .command(program)
            .expect("enter namespace")
            .arg("-j")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} -j {args:?} in {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        // `ip -j` prints nothing at all for an empty list.
        if text.trim().is_empty() {
            return serde_json::Value::Array(Vec::new());
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{program} -j {args:?}: {e}: {text}"))
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 1..=self.topology.hosts {
                let log = self.agent_log(i);
                if !log.is_empty() {
                    eprintln!("---- h{i}'s agent log ----\n{log}");
                }
            }
        }
        for child in self.agents.iter_mut().filter_map(Option::take) {
            agents::stop_all(&[child.id()], Duration::from_secs(3));
            reap(child);
        }
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
        if let Err(failures) = wire::teardown(&self.topology.prefix) {
            eprintln!("cleaning up {}: {}", self.topology.prefix, failures.join("; "));
        }
    }
}

fn ns(name: &str) -> Netns {
    Netns::open(name).unwrap_or_else(|e| panic!("open namespace {name}: {e}"))
}

fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn etcd_binary() -> String {
    std::env::var("WEFT_TEST_ETCD").unwrap_or_else(|_| "etcd".to_string())
}

/// The child gets SIGKILL when the test thread that started it ends, even if the test process
/// is killed and Drop never runs.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and nothing is allocated.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// Removes namespaces of clusters whose test process is gone (killed before Drop could run).
fn remove_stale_clusters() {
    let Ok(names) = wire::namespaces_with_prefix("wt") else {
        return;
    };
    let mut stale: Vec<String> = names
        .iter()
        .filter_map(|name| {
            let rest = name.strip_prefix("wt")?;
            let (pid, rest) = rest.split_once('-')?;
            let (n, _) = rest.split_once('-')?;
            let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            let pid: u32 = pid.parse().ok().filter(|_| numeric(n))?;
            (!agents::is_alive(pid)).then(|| format!("wt{pid}-{n}-"))
        })
        .collect();
    stale.dedup();
    for prefix in stale {
        let _ = wire::teardown(&prefix);
    }
}
