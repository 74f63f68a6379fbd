//! `weft lab up|status|down`: a cluster of hosts made of network namespaces on this machine,
//! each running a real `weft agent` against the embedded store, with a pod behind every host.
//!
//! Everything here is blocking (namespaces are entered by threads, agents and pings are
//! processes), so the command runs on tokio's blocking pool; the few store calls get a small
//! runtime of their own.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};

use crate::commands::check::PeerProbe;
use crate::commands::output::{print_json, OutputArgs};
use crate::commands::{CommandError, GlobalArgs};
use crate::config::{self, Config, Flags, StoreKind, StoreSection};
use crate::lab::agents::{self, AgentSpec, Waiting};
use crate::lab::pods::{self, SubnetInfo};
use crate::lab::report::{self, HostLine, LeaseLine, Probe, ProbeLine};
use crate::lab::state::{self, LabDir, AGENT_LISTEN};
use crate::lab::{probe, wire, LabError, Node, Topology, LAB_PREFIX};
use crate::netns::Netns;
use crate::network::backend::{BackendConfig, BackendKind, NoOptions, VxlanConfig};
use crate::network::Network;
use crate::store::{self, Store};
use crate::subnet_env::SubnetEnv;

/// How long agents may take to lease their subnets.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long agents may take to learn about each other once they all hold leases.
const PEERS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an agent gets to remove what it installed before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Lines of an agent's log shown when it fails.
const LOG_TAIL: usize = 15;

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build the lab and show it working: hosts, agents, leases, pod-to-pod pings. With the global
    /// --config FILE, the lab starts from that file's [network] and [agent] tables.
    Up(UpArgs),
    /// Show the lab's hosts, agents, leases and pod-to-pod pings; exits 1 when a ping fails
    /// (except with the alloc backend, which installs no routes).
    Status(OutputArgs),
    /// Switch the running lab's backend live, as `weft network apply` does in a cluster: every
    /// agent keeps its subnet and moves its peers over; pods keep talking.
    Switch {
        #[arg(value_enum)]
        backend: LabBackend,
    },
    /// Remove everything `weft lab up` made, from any shell; running it again is harmless.
    Down,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Number of hosts.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub hosts: u16,
    /// Backend for the hosts (default: the config file's, else vxlan).
    #[arg(long, value_enum)]
    pub backend: Option<LabBackend>,
    /// When something fails, leave what was built for inspection instead of removing it.
    #[arg(long)]
    pub keep_on_failure: bool,
    /// Dual-stack: hosts get IPv6 underlay addresses (2001:db8::/64), the network an IPv6 side
    /// (2001:db8:42::/56, unless the config file names one) and pods an address of each family.
    #[arg(long, conflicts_with = "ipv6_only")]
    pub ipv6: bool,
    /// IPv6-only: as --ipv6, with IPv4 turned off in the network (`enable_ipv4 = false`); pods
    /// get an IPv6 address alone (the hosts keep their IPv4 underlay beside the IPv6 one).
    #[arg(long)]
    pub ipv6_only: bool,
}

/// The pods' IPv6 network of `weft lab up --ipv6` (a documentation prefix).
const LAB_IPV6_PODS: &str = "2001:db8:42::/56";

/// The backends that make sense between namespaces on one machine.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LabBackend {
    Vxlan,
    HostGw,
    /// Leases only: no traffic between hosts' pods.
    Alloc,
}

impl LabBackend {
    fn config(self) -> BackendConfig {
        match self {
            LabBackend::Vxlan => BackendConfig::Vxlan(VxlanConfig::default()),
            LabBackend::HostGw => BackendConfig::HostGw(NoOptions {}),
            LabBackend::Alloc => BackendConfig::Alloc(NoOptions {}),
        }
    }
}

pub async fn run(global: &GlobalArgs, command: LabCommand) -> Result<(), CommandError> {
    let global = global.clone();
    tokio::task::spawn_blocking(move || match command {
        LabCommand::Up(args) => up(&global, args),
        LabCommand::Status(output) => status(output),
        LabCommand::Switch { backend } => switch(backend),
        LabCommand::Down => down(),
    })
    .await
    .map_err(|e| CommandError::Runtime(format!("weft lab failed: {e}")))?
}

fn up(global: &GlobalArgs, args: UpArgs) -> Result<(), CommandError> {
    crate::lab::require_root("weft lab up").map_err(input)?;
    let dir = LabDir::default();
    refuse_existing_lab(&dir)?;
    let topology = Topology::lab(usize::from(args.hosts)).map_err(CommandError::Input)?;
    let base = match &global.config {
        Some(file) => Some(config::load(file, true, Flags::default())?.config),
        None => None,
    };
    let mut lab = state::lab_config(base.as_ref(), args.backend.map(LabBackend::config), &dir);
    if (args.ipv6 || args.ipv6_only) && lab.network.ipv6_cidr.is_empty() {
        lab.network.ipv6_cidr = LAB_IPV6_PODS.into();
    }
    if args.ipv6_only {
        lab.network.enable_ipv4 = false;
    }
    let network = Network::new(&lab.network).map_err(|e| CommandError::Input(e.to_string()))?;
    println!(
        "weft lab: {} hosts, network {}, backend {}, state in {}",
        topology.hosts,
        network,
        network.backend.type_name(),
        dir.root.display()
    );
    let result = build(&topology, &dir, &lab, &network);
    if let Err(e) = result {
        if args.keep_on_failure {
            eprintln!("kept the half-built lab for inspection; `weft lab down` removes it");
        } else {
            let _ = remove_lab(&dir);
        }
        return Err(e);
    }
    let shown = measure(&topology, &dir)?;
    shown.print();
    if network.backend.kind() == BackendKind::Alloc {
        println!("\nBackend alloc leases subnets and installs no routes: ✗ between pods is expected.");
    }
    let h1 = topology.host(1);
    println!(
        "\nA shell on {}:  ip netns exec {} bash     (its pod: ip netns exec {} bash)",
        h1.name,
        h1.ns,
        topology.pod_ns(&h1)
    );
    println!("Leases:         weft --config {} leases list", dir.config().display());
    println!("Agent logs:     {}/<host>/agent.log", dir.root.display());
    println!("Remove it all:  weft lab down");
    shown.verdict()
}

/// A lab, or what is left of one, is in the way.
fn refuse_existing_lab(dir: &LabDir) -> Result<(), CommandError> {
    let namespaces = wire::namespaces_with_prefix(LAB_PREFIX).map_err(runtime)?;
    if namespaces.is_empty() && !dir.root.exists() {
        return Ok(());
    }
    let mut found = Vec::new();
    if !namespaces.is_empty() {
        found.push(format!("namespaces {}", namespaces.join(", ")));
    }
    if dir.root.exists() {
        found.push(dir.root.display().to_string());
    }
    Err(CommandError::Input(format!(
        "a lab already exists ({}): remove it first with `weft lab down`",
        found.join("; ")
    )))
}

/// Topology, configs, network, agents, pods. Progress goes to stdout as it happens.
fn build(topology: &Topology, dir: &LabDir, lab: &Config, network: &Network) -> Result<(), CommandError> {
    let start = Instant::now();
    wire::build(topology).map_err(runtime)?;
    if network.ipv6.is_some() {
        for node in topology.host_nodes() {
            let ns = Netns::open(&node.ns).map_err(|e| CommandError::Runtime(format!("open {}: {e}", node.ns)))?;
            wire::add_ipv6(&ns, crate::lab::topology::HOST_IFACE, node.addr_v6()).map_err(runtime)?;
        }
        for node in topology.host_nodes() {
            let ns = Netns::open(&node.ns).map_err(|e| CommandError::Runtime(format!("open {}: {e}", node.ns)))?;
            wire::wait_ipv6_settled(&ns, crate::lab::topology::HOST_IFACE).map_err(runtime)?;
        }
    }
    let last = topology.host(topology.hosts);
    println!(
        "  built    switch {} and hosts {}..{} on 198.51.100.0/24{} ({:.2}s)",
        topology.switch_ns(),
        topology.host(1).ns,
        last.name,
        if network.ipv6.is_some() { " and 2001:db8::/64" } else { "" },
        start.elapsed().as_secs_f64()
    );
    write_configs(topology, dir, lab)?;
    let json = network.to_flannel_json();
    with_store(&lab.store, |store| async move { store.put_network_config(&json).await })?;
    println!("  network  {network} published to the local store");
    let exe = std::env::current_exe().map_err(|e| CommandError::Runtime(format!("find the weft binary: {e}")))?;
    let mut children = Vec::new();
    for node in topology.host_nodes() {
        let ns = Netns::open(&node.ns).map_err(|e| CommandError::Runtime(format!("open {}: {e}", node.ns)))?;
        let spec =
            AgentSpec { exe: exe.clone(), config: dir.host_config(&node), log: dir.log(&node), args: Vec::new() };
        let child = agents::spawn(&ns, &spec).map_err(runtime)?;
        dir.write_pid(&node, child.id()).map_err(runtime)?;
        children.push((node, child));
    }
    println!("  started  {} agents; waiting for their leases", children.len());
    let infos = wait_for_agents(dir, &mut children)?;
    for (node, info) in topology.host_nodes().iter().zip(infos) {
        let pod_ns = topology.pod_ns(node);
        let Some(v4) = info.ipv4() else {
            let v6 =
                subnet_v6(dir, node).ok_or_else(|| CommandError::Runtime(format!("{}: no IPv6 subnet", node.name)))?;
            let pod = pods::create_ipv6_only(topology, node, v6, info.mtu).map_err(runtime)?;
            println!("  pod      {pod_ns} {pod}/{} (IPv6 only, mtu {})", v6.prefix_len(), info.mtu);
            continue;
        };
        let addrs = pods::create(topology, node, SubnetInfo { subnet: v4.into(), ..info }).map_err(runtime)?;
        if let Some(v6) = subnet_v6(dir, node) {
            let pod = pods::add_ipv6(topology, node, v6).map_err(runtime)?;
            println!("  pod      {pod_ns} {pod}/{} (IPv6)", v6.prefix_len());
        }
        println!("  pod      {pod_ns} {} (via cni0 {}, mtu {})", addrs.pod, addrs.gateway.addr(), info.mtu);
    }
    wait_for_peers(topology);
    Ok(())
}

/// Waits (a little) until every agent is ready and knows every other host, so the matrix shows
/// the converged lab rather than a race. Not converging is shown, not fatal: the matrix tells.
fn wait_for_peers(topology: &Topology) {
    let start = Instant::now();
    let peers = topology.hosts - 1;
    let addr: SocketAddr = AGENT_LISTEN.parse().expect("a valid constant");
    let mut lagging: Vec<String> = Vec::new();
    while start.elapsed() < PEERS_TIMEOUT {
        lagging = topology
            .host_nodes()
            .into_iter()
            .filter(|node| {
                let answer = Netns::open(&node.ns).ok().and_then(|ns| probe::http_get(&ns, addr, "/metrics").ok()?);
                let known = answer.as_ref().and_then(|(_, body)| probe::metric(body, "weft_leases_watched"));
                let ready = answer.as_ref().and_then(|(_, body)| probe::metric(body, "weft_ready"));
                known != Some(peers as f64) || ready != Some(1.0)
            })
            .map(|node| node.name)
            .collect();
        if lagging.is_empty() {
            println!(
                "  ready    every agent is ready and knows its {peers} peer(s) after {:.2}s",
                start.elapsed().as_secs_f64()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "  waiting  gave up after {}s: not ready or missing peers on {} (see their agent.log)",
        PEERS_TIMEOUT.as_secs(),
        lagging.join(", ")
    );
}

fn write_configs(topology: &Topology, dir: &LabDir, lab: &Config) -> Result<(), CommandError> {
    let comment = "weft lab: the lab's store and network (weft lab down removes it)";
    dir.write(&dir.config(), &state::render(lab, comment).map_err(runtime)?).map_err(runtime)?;
    for node in topology.host_nodes() {
        let host = state::host_config(lab, &node, dir);
        let comment = format!("weft lab: the agent of {} (namespace {})", node.name, node.ns);
        let text = state::render(&host, &comment).map_err(runtime)?;
        dir.write(&dir.host_config(&node), &text).map_err(runtime)?;
    }
    Ok(())
}

/// Waits for every agent's subnet.env, printing a line per host; on failure shows their logs.
fn wait_for_agents(
    dir: &LabDir,
    children: &mut [(Node, std::process::Child)],
) -> Result<Vec<SubnetInfo>, CommandError> {
    let names: Vec<String> = children.iter().map(|(n, _)| n.name.clone()).collect();
    let mut waiting: Vec<Waiting<'_>> = children
        .iter_mut()
        .map(|(node, child)| Waiting { name: node.name.clone(), subnet_file: dir.subnet_file(node), child })
        .collect();
    let result = agents::wait_for_subnets(&mut waiting, CONVERGE_TIMEOUT, |i, info, elapsed| {
        println!("  {:<8} leased {} after {:.2}s", names[i], info.subnet, elapsed.as_secs_f64());
    });
    result.map_err(|failed| {
        let mut message = String::from("the agents did not all lease a subnet:");
        for (name, why) in &failed.hosts {
            let log = dir.root.join(name).join("agent.log");
            message.push_str(&format!(
                "\n  {name}: {why}; last lines of {}:\n{}",
                log.display(),
                indent(&agents::log_tail(&log, LOG_TAIL))
            ));
        }
        CommandError::Runtime(message)
    })
}

fn status(output: OutputArgs) -> Result<(), CommandError> {
    crate::lab::require_root("weft lab status").map_err(input)?;
    let dir = LabDir::default();
    let topology = current_lab(&dir)?;
    let mut hosts = Vec::new();
    for node in topology.host_nodes() {
        let subnet = pods::read_subnet_env(&dir.subnet_file(&node));
        let agent = dir.read_pid(&node).map(|pid| (pid, agents::is_alive(pid)));
        let ready = match Netns::open(&node.ns) {
            Ok(ns) => {
                let addr: SocketAddr = AGENT_LISTEN.parse().expect("a valid constant");
                probe::http_status(&ns, addr, "/readyz").map_err(runtime)?
            }
            Err(_) => None,
        };
        hosts.push(HostLine {
            name: node.name.clone(),
            ns: node.ns.clone(),
            agent,
            subnet: subnet.map(|s| s.subnet.to_string()),
            ready,
        });
    }
    let shown = measure(&topology, &dir)?;
    if output.is_json() {
        #[derive(serde::Serialize)]
        struct Status<'a> {
            hosts: &'a [HostLine],
            leases: &'a [LeaseLine],
            #[serde(skip_serializing_if = "Option::is_none")]
            pings: Option<Vec<ProbeLine>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pings_v6: Option<Vec<ProbeLine>>,
            checks: &'a [HostCheck],
            ok: bool,
        }
        let pings = shown.probes.as_ref().map(|probes| report::probe_lines(&shown.names, probes));
        let pings_v6 = shown.probes_v6.as_ref().map(|probes| report::probe_lines(&shown.names, probes));
        let ok = shown.verdict().is_ok();
        print_json(&Status { hosts: &hosts, leases: &shown.leases, pings, pings_v6, checks: &shown.checks, ok })?;
    } else {
        print!("{}", report::render_hosts(&hosts));
        shown.print();
    }
    shown.verdict()
}

/// How long `lab switch` waits for every host's lease to show the new backend.
const SWITCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

fn switch(backend: LabBackend) -> Result<(), CommandError> {
    crate::lab::require_root("weft lab switch").map_err(input)?;
    let dir = LabDir::default();
    let topology = current_lab(&dir)?;
    let mut lab = config::load(&dir.config(), true, Flags::default())?.config;
    lab.network.backend = backend.config();
    let network = Network::new(&lab.network).map_err(|e| CommandError::Input(e.to_string()))?;
    let comment = "weft lab: the lab's store and network (weft lab down removes it)";
    dir.write(&dir.config(), &state::render(&lab, comment).map_err(runtime)?).map_err(runtime)?;
    let json = network.to_flannel_json();
    with_store(&lab.store, |store| async move { store.put_network_config(&json).await })?;
    let kind = network.backend.type_name();
    println!("switching the lab to {kind}: published; each agent keeps its subnet and moves its peers");
    let start = Instant::now();
    let nodes = topology.host_nodes();
    loop {
        let leases = read_leases(&dir, &nodes)?;
        let moved = leases.iter().filter(|l| l.backend == kind).count();
        if moved == nodes.len() {
            println!("  moved    every host's lease shows {kind} after {:.2}s", start.elapsed().as_secs_f64());
            break;
        }
        if start.elapsed() > SWITCH_DEADLINE {
            return Err(CommandError::Runtime(format!(
                "only {moved} of {} hosts moved to {kind} within {SWITCH_DEADLINE:?}: see {}/<host>/agent.log",
                nodes.len(),
                dir.root.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    wait_for_peers(&topology);
    measure(&topology, &dir)?.print();
    Ok(())
}

/// The hosts of the running lab, from its namespaces.
fn current_lab(dir: &LabDir) -> Result<Topology, CommandError> {
    let namespaces = wire::namespaces_with_prefix(LAB_PREFIX).map_err(runtime)?;
    let hosts = namespaces.iter().filter_map(|ns| Topology::host_index(LAB_PREFIX, ns)).max();
    match hosts {
        Some(n) => Topology::lab(n).map_err(CommandError::Runtime),
        None if dir.root.exists() => Err(CommandError::Runtime(format!(
            "{} exists but no lab host namespace does: remove it with `weft lab down`",
            dir.root.display()
        ))),
        None => Err(CommandError::Runtime("no lab is running; start one with `weft lab up`".into())),
    }
}

/// The leases, the pod-to-pod matrix and each host's own connectivity check, as measured.
struct Shown {
    leases: Vec<LeaseLine>,
    names: Vec<String>,
    /// Pod to pod over IPv4, unless the lab is IPv6-only.
    probes: Option<Vec<Vec<Probe>>>,
    /// The same over IPv6, in a dual-stack or IPv6-only lab.
    probes_v6: Option<Vec<Vec<Probe>>>,
    checks: Vec<HostCheck>,
}

/// One host's `weft check connectivity`, run by this binary in the host's namespace with the
/// host's own config: what an operator on that host would see.
#[derive(Debug, Clone, serde::Serialize)]
struct HostCheck {
    host: String,
    /// The peers' lines, as `check connectivity -o json` prints them.
    peers: Vec<PeerProbe>,
    /// Why the check gave no answer at all.
    error: Option<String>,
}

impl HostCheck {
    fn failed(&self) -> bool {
        self.error.is_some() || self.peers.iter().any(|p| !p.reachable)
    }

    fn line(&self) -> String {
        let reachable = self.peers.iter().filter(|p| p.reachable).count();
        let mark = if self.failed() { "✗" } else { "✓" };
        let mut line = format!("  {:<8} {mark} {reachable}/{} peer subnets", self.host, self.peers.len());
        let missed: Vec<&str> = self.peers.iter().filter(|p| !p.reachable).map(|p| p.subnet.as_str()).collect();
        if !missed.is_empty() {
            line.push_str(&format!(", no answer from {}", missed.join(", ")));
        }
        if let Some(error) = &self.error {
            line.push_str(&format!(" ({error})"));
        }
        line
    }
}

impl Shown {
    fn print(&self) {
        println!("\nLeases");
        print!("{}", report::render_leases(&self.leases));
        if let Some(probes) = &self.probes {
            println!("\nPod to pod ping, average round trip (✗: no answer)");
            print!("{}", report::render_matrix(&self.names, probes));
        }
        if let Some(probes) = &self.probes_v6 {
            println!("\nPod to pod ping over IPv6");
            print!("{}", report::render_matrix(&self.names, probes));
        }
        println!("\nEach host to its peers' subnets (`weft check connectivity` on the host)");
        for check in &self.checks {
            println!("{}", check.line());
        }
    }

    /// A ✗ fails the command, except when every lease is alloc's (no routes: ✗ is the point).
    fn verdict(&self) -> Result<(), CommandError> {
        let alloc = BackendKind::Alloc.as_str();
        let unreachable_expected = !self.leases.is_empty() && self.leases.iter().all(|l| l.backend == alloc);
        let matrices = self.probes.iter().chain(self.probes_v6.as_ref());
        let failed: usize = matrices.map(|m| report::matrix_verdict(m, unreachable_expected).err().unwrap_or(0)).sum();
        (failed == 0).then_some(()).ok_or(failed).map_err(|failed| {
            CommandError::Runtime(format!(
                "{failed} pod-to-pod ping(s) got no answer (✗ in the matrix); the lab is left running for inspection"
            ))
        })?;
        let failed: Vec<&str> = self.checks.iter().filter(|c| c.failed()).map(|c| c.host.as_str()).collect();
        if failed.is_empty() || unreachable_expected {
            return Ok(());
        }
        Err(CommandError::Runtime(format!(
            "`weft check connectivity` failed on {}; the lab is left running for inspection",
            failed.join(", ")
        )))
    }
}

/// Runs `weft check connectivity -o json` on every host, as that host.
fn host_checks(topology: &Topology, dir: &LabDir) -> Vec<HostCheck> {
    topology
        .host_nodes()
        .into_iter()
        .map(|node| {
            let (peers, error) = match check_on(&node, dir) {
                Ok(peers) => (peers, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            HostCheck { host: node.name.clone(), peers, error }
        })
        .collect()
}

fn check_on(node: &Node, dir: &LabDir) -> Result<Vec<PeerProbe>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let ns = Netns::open(&node.ns).map_err(|e| format!("namespace {}: {e}", node.ns))?;
    let out = ns
        .command(exe)
        .map_err(|e| format!("entering {}: {e}", node.ns))?
        .arg("--config")
        .arg(dir.host_config(node))
        .args(["check", "connectivity", "-o", "json", "--subnet-file"])
        .arg(dir.subnet_file(node))
        .env("NO_COLOR", "1")
        .output()
        .map_err(|e| format!("running weft check connectivity: {e}"))?;
    // Exit 1 with a full answer is a ✗ in the rows, not a failure to check.
    serde_json::from_slice(&out.stdout).map_err(|_| String::from_utf8_lossy(&out.stderr).trim().to_string())
}

/// Host `node`'s IPv6 subnet, in a dual-stack lab.
fn subnet_v6(dir: &LabDir, node: &Node) -> Option<ipnet::Ipv6Net> {
    Some(SubnetEnv::read(&dir.subnet_file(node)).ok()?.ipv6?.subnet)
}

fn measure(topology: &Topology, dir: &LabDir) -> Result<Shown, CommandError> {
    let nodes = topology.host_nodes();
    let leases = read_leases(dir, &nodes)?;
    let pod_at = |node: &Node, addr: std::net::IpAddr| {
        let pod_ns = topology.pod_ns(node);
        Netns::exists(&pod_ns).then_some((pod_ns, addr))
    };
    let envs: Vec<Option<SubnetEnv>> = nodes.iter().map(|node| SubnetEnv::read(&dir.subnet_file(node)).ok()).collect();
    let pods: Vec<probe::Pod> = nodes
        .iter()
        .zip(&envs)
        .map(|(node, env)| {
            let addrs = crate::lab::PodAddrs::for_subnet(env.as_ref()?.ipv4?.subnet).ok()?;
            pod_at(node, addrs.pod.addr().into())
        })
        .collect();
    let pods_v6: Vec<probe::Pod> = nodes
        .iter()
        .zip(&envs)
        .map(|(node, env)| pod_at(node, pods::ipv6_addrs(env.as_ref()?.ipv6?.subnet).1.into()))
        .collect();
    // A family no host has is not probed (IPv4 in an IPv6-only lab, IPv6 in an IPv4 one); an
    // IPv4 lab whose agents have not written subnet.env yet still shows its matrix of ✗.
    let ipv6_only = envs.iter().flatten().next().is_some_and(|env| env.ipv4.is_none());
    let probes = if ipv6_only { None } else { Some(probe::pod_matrix(&pods).map_err(runtime)?) };
    let probes_v6 =
        if pods_v6.iter().any(Option::is_some) { Some(probe::pod_matrix(&pods_v6).map_err(runtime)?) } else { None };
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let checks = host_checks(topology, dir);
    Ok(Shown { leases, names, probes, probes_v6, checks })
}

fn read_leases(dir: &LabDir, nodes: &[Node]) -> Result<Vec<LeaseLine>, CommandError> {
    let section = StoreSection { kind: StoreKind::Local, path: dir.store(), ..StoreSection::default() };
    let listing = with_store(&section, |store| async move { store.list_leases().await })?;
    // A host by either underlay address (IPv6-only hosts publish only their IPv6 one).
    let v4 = nodes.iter().map(|n| (IpAddr::V4(n.addr), n.name.as_str()));
    let host_of: HashMap<IpAddr, &str> =
        v4.chain(nodes.iter().map(|n| (IpAddr::V6(n.addr_v6().addr()), n.name.as_str()))).collect();
    let mut lines: Vec<LeaseLine> = listing
        .leases
        .iter()
        .filter_map(|raw| raw.parse().ok())
        .filter_map(|lease| {
            let public_ip = lease.attrs.public_addr()?;
            Some(LeaseLine {
                host: host_of.get(&public_ip).map(|h| h.to_string()),
                subnet: lease.id().to_string(),
                public_ip,
                backend: lease.attrs.backend_type.to_string(),
            })
        })
        .collect();
    lines.sort_by_key(|l| l.public_ip);
    Ok(lines)
}

fn down() -> Result<(), CommandError> {
    crate::lab::require_root("weft lab down").map_err(input)?;
    let dir = LabDir::default();
    let (agents, namespaces) = remove_lab(&dir)?;
    if agents == 0 && namespaces == 0 {
        println!("no lab to remove");
    } else {
        println!("lab removed: stopped {agents} agent(s), deleted {namespaces} namespace(s)");
    }
    Ok(())
}

/// Stops the lab's agents, deletes every `weft-lab-*` namespace and the state directory; keeps
/// going past failures and reports them all. Returns (agents stopped, namespaces deleted).
fn remove_lab(dir: &LabDir) -> Result<(usize, usize), CommandError> {
    let pids = recorded_agents(dir);
    let killed = agents::stop_all(&pids, STOP_GRACE);
    for pid in &killed {
        eprintln!("agent {pid} did not stop within {STOP_GRACE:?}: killed");
    }
    let mut failures = Vec::new();
    let namespaces = match wire::teardown(LAB_PREFIX) {
        Ok(names) => names.len(),
        Err(errors) => {
            failures.extend(errors);
            0
        }
    };
    match std::fs::remove_dir_all(&dir.root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            failures.push(format!("remove {}: {e}", dir.root.display()))
        }
        _ => {}
    }
    if failures.is_empty() {
        Ok((pids.len(), namespaces))
    } else {
        Err(CommandError::Runtime(failures.join("; ")))
    }
}

/// The pids in `<state>/*/pid` that are still weft agents of this lab.
fn recorded_agents(dir: &LabDir) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(&dir.root) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let path: PathBuf = entry.ok()?.path().join("pid");
            std::fs::read_to_string(path).ok()?.trim().parse().ok()
        })
        .filter(|pid| agents::is_agent_under(*pid, &dir.root))
        .collect()
}

/// Runs a store call on a runtime of its own (the lab's commands run on blocking threads).
fn with_store<T, F, Fut>(section: &StoreSection, call: F) -> Result<T, CommandError>
where
    F: FnOnce(std::sync::Arc<dyn Store>) -> Fut,
    Fut: Future<Output = Result<T, store::StoreError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::Runtime(format!("start a runtime for the store: {e}")))?;
    runtime.block_on(async {
        let store = store::open(section).await?;
        Ok(call(store).await?)
    })
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

fn runtime(e: LabError) -> CommandError {
    CommandError::Runtime(e.to_string())
}

fn input(e: LabError) -> CommandError {
    CommandError::Input(e.to_string())
}
