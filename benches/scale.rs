//! The store-scale benchmark of issue 17: `cargo bench --bench scale` (no root; Debian's etcd on
//! loopback). `-- --agents 5000` runs another size; `WEFT_BENCH_QUICK=1` or `--quick`: 200.
//!
//! N agents start at once against one etcd. An agent here is what an agent does with the store,
//! in one process: its own `EtcdStore` (its own connection), weft's own lease acquisition
//! (`leasing::acquire_listed`: the listing, the create-if-absent transaction, the retries when
//! another host took the subnet first) and a lease watch from the listing's revision, as the
//! agent runs them. There is no kernel work and no agent process: 1,000 processes of the agent
//! would measure this machine's two cores, not weft's use of etcd.
//!
//! Printed: the time until every agent holds a lease, duplicates (must be 0), etcd's CPU time
//! and memory; then 100 leases are rewritten (a new public IP each, as a host whose address
//! changed) and the time until each other agent's watch delivered each change (p50/p99/max);
//! the benchmark process's memory per agent (a bound for the store side of an agent, not its
//! RSS). `tests/scale_bench_smoke.rs` runs the quick mode.
#![allow(dead_code)] // Also compiled as a module of tests/scale_bench_smoke.rs, which uses `run` only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use weft::backoff::Backoff;
use weft::lease::{subnet_key, LeaseAttrs};
use weft::leasing::{acquire_listed, LeaseRequest};
use weft::network::{Network, NetworkSection};
use weft::store::etcd::{EtcdOptions, EtcdStore};
use weft::store::{LeaseStore, LeaseUpdate, LeaseWrite, WriteOutcome};

#[path = "../tests/common/etcd.rs"]
mod etcd;

const CHANGES: usize = 100;
const LEASE_TTL: Duration = Duration::from_secs(3600);
/// An agent retries for ever; the benchmark gives up after this many failed attempts.
const MAX_ATTEMPTS: usize = 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = std::env::var_os("WEFT_BENCH_QUICK").is_some() || args.iter().any(|a| a == "--quick");
    let agents = args
        .windows(2)
        .find(|w| w[0] == "--agents")
        .map(|w| w[1].parse().expect("--agents takes a number"))
        .unwrap_or(if quick { 200 } else { 1000 });
    raise_open_files(agents);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let report = runtime.block_on(run(agents));
    report.print();
}

/// What one run measured.
pub struct Report {
    pub agents: usize,
    /// Until every agent's client connected (part of `converged`).
    pub connected: Duration,
    pub converged: Duration,
    pub duplicates: usize,
    /// Acquisitions that failed (a store timeout under the load) and were retried.
    pub retried: usize,
    pub etcd_cpu: Duration,
    pub etcd_rss_kib: u64,
    pub etcd_hwm_kib: u64,
    /// Change → seen by one agent, over every (change, other agent).
    pub seen: Vec<Duration>,
    pub unseen: usize,
    pub bench_rss_per_agent: u64,
}

impl Report {
    fn percentile(&self, p: f64) -> Duration {
        let mut seen = self.seen.clone();
        seen.sort();
        seen.get(((seen.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
    }

    pub fn print(&self) {
        println!("scale: {} agents (weft's store client, lease acquisition and watch each) on one etcd", self.agents);
        println!(
            "  all hold a lease after {:.2} s from start (all connected after {:.2} s); {} duplicate subnets; {} \
             attempts failed and retried",
            self.converged.as_secs_f64(),
            self.connected.as_secs_f64(),
            self.duplicates,
            self.retried
        );
        println!(
            "  etcd: {:.2} s of CPU until then, RSS {} MiB (peak {} MiB)",
            self.etcd_cpu.as_secs_f64(),
            self.etcd_rss_kib / 1024,
            self.etcd_hwm_kib / 1024
        );
        println!(
            "  {CHANGES} leases rewritten: seen by every other agent in p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
             ({} deliveries, {} missing)",
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.percentile(1.0).as_secs_f64() * 1e3,
            self.seen.len(),
            self.unseen
        );
        println!(
            "  this process: {} KiB RSS per agent (store client, connection, watch; the agent's own RSS is in \
             `cargo bench --bench dataplane`)",
            self.bench_rss_per_agent
        );
    }
}

/// When each agent's watch first delivered each changed lease (by subnet).
type Sightings = Arc<Mutex<Vec<HashMap<IpNet, Instant>>>>;

/// The benchmark with `count` agents; panics on a duplicate subnet.
pub async fn run(count: usize) -> Report {
    let server = etcd::EtcdServer::start();
    let pid = server.pid().expect("etcd runs");
    let section = NetworkSection { cidr: "10.0.0.0/8".into(), subnet_len: 24, ..Default::default() };
    let network = Arc::new(Network::new(&section).expect("the benchmark's network"));
    let options = EtcdOptions { endpoints: vec![server.endpoint.clone()], ..EtcdOptions::default() };
    let etcd_cpu_before = cpu_time(pid);
    let rss_before = status_kib(std::process::id(), "VmRSS:");
    let sightings: Sightings = Arc::new(Mutex::new(vec![HashMap::new(); count]));
    // A rewritten lease names an address of 198.19.0.0/16: one scan of each delivered value
    // tells (the bench's own cost stays out of the agents' way).
    let rewritten = "\"PublicIP\":\"198.19.";

    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        let (options, network, sightings) = (options.clone(), network.clone(), sightings.clone());
        tasks.push(tokio::spawn(async move {
            let store = EtcdStore::connect(options).await.expect("connect to etcd");
            let connected = Instant::now();
            let attrs = LeaseAttrs::new(public_ip(i), "alloc", serde_json::Value::Null);
            let request = LeaseRequest::new(&network, &attrs, LEASE_TTL);
            // As the agent's acquire_until_held: a failed attempt is retried on its backoff.
            let mut backoff = Backoff::new();
            let mut failed = 0;
            let (own, listing) = loop {
                match acquire_listed(&store, &request).await {
                    Ok(acquired) => break acquired,
                    Err(_) if failed < MAX_ATTEMPTS => failed += 1,
                    Err(e) => return Err(e.to_string()),
                }
                tokio::time::sleep(backoff.step()).await;
            };
            let held = Instant::now();
            let after = listing.map(|l| l.revision).unwrap_or(own.revision);
            let mut watch = store.watch_leases(after);
            tokio::spawn(async move {
                while let Some(update) = watch.next().await {
                    let Ok(LeaseUpdate::Put(raw)) = update else { continue };
                    if raw.value.windows(rewritten.len()).any(|w| w == rewritten.as_bytes()) {
                        let Ok(subnet) = weft::lease::parse_subnet_key(&raw.key) else { continue };
                        sightings.lock().unwrap()[i].entry(subnet).or_insert_with(Instant::now);
                    }
                }
            });
            Ok((store, own, (connected, held), failed))
        }));
    }
    let mut agents = Vec::new();
    let mut gave_up = Vec::new();
    for task in tasks {
        match task.await.expect("an agent task") {
            Ok(agent) => agents.push(agent),
            Err(e) => gave_up.push(e),
        }
    }
    assert!(
        gave_up.is_empty(),
        "{} of {count} agents had no lease after {MAX_ATTEMPTS} attempts on the agent's backoff (after {:.0?}); \
         the last: {}",
        gave_up.len(),
        start.elapsed(),
        gave_up.last().map(String::as_str).unwrap_or_default()
    );
    let connected = agents.iter().map(|(_, _, (connected, _), _)| *connected).max().expect("agents") - start;
    let converged = agents.iter().map(|(_, _, (_, held), _)| *held).max().expect("agents") - start;
    let retried = agents.iter().map(|(.., failed)| *failed).sum();
    let etcd_cpu = cpu_time(pid).saturating_sub(etcd_cpu_before);
    let subnets: Vec<IpNet> = agents.iter().map(|(_, own, ..)| own.id()).collect();
    let distinct: HashSet<&IpNet> = subnets.iter().collect();
    let duplicates = subnets.len() - distinct.len();
    assert_eq!(duplicates, 0, "two agents hold one subnet");
    let listed = agents[0].0.list_leases().await.expect("a listing").leases.len();
    assert_eq!(listed, count, "every agent's lease is in etcd");

    // Let every watch start, then rewrite CHANGES leases, each as its own host would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut written = BTreeMap::new();
    for (i, (store, own, ..)) in agents.iter().take(CHANGES).enumerate() {
        let attrs = LeaseAttrs::new(changed_ip(i), "alloc", serde_json::Value::Null);
        let json = attrs.to_json();
        let write = LeaseWrite::new(own.key(), &json, Some(LEASE_TTL));
        let at = Instant::now();
        match store.update_lease(write, own.revision).await.expect("a rewrite") {
            WriteOutcome::Written { .. } => {}
            WriteOutcome::Conflict => panic!("{} was rewritten by someone else", subnet_key(own.key())),
        }
        written.insert(own.id(), (i, at));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // Every agent's watch delivers every rewrite, its own included.
    let expected = CHANGES.min(count) * count;
    while sightings.lock().unwrap().iter().map(HashMap::len).sum::<usize>() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = Vec::new();
    let mut unseen = 0;
    let sightings = sightings.lock().unwrap().clone();
    for (agent, seen_by) in sightings.iter().enumerate() {
        for (subnet, (writer, at)) in &written {
            if *writer == agent {
                continue;
            }
            match seen_by.get(subnet) {
                Some(when) => seen.push(when.saturating_duration_since(*at)),
                None => unseen += 1,
            }
        }
    }
    let rss_after = status_kib(std::process::id(), "VmRSS:");
    Report {
        agents: count,
        connected,
        converged,
        duplicates,
        retried,
        etcd_cpu,
        etcd_rss_kib: status_kib(pid, "VmRSS:"),
        etcd_hwm_kib: status_kib(pid, "VmHWM:"),
        seen,
        unseen,
        bench_rss_per_agent: rss_after.saturating_sub(rss_before) / count as u64,
    }
}

/// Agent `i`'s public IP, in 198.18.0.0/15 (RFC 2544's benchmarking range): only a value in
/// etcd, never an address traffic goes to.
fn public_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xc612_0000 + i as u32)
}

/// The public IP lease `i` is rewritten with (the upper half of the same range).
fn changed_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xc613_0000 + i as u32)
}

/// A process's user + system CPU time, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// A `/proc/<pid>/status` line's value in KiB (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Each agent holds a connection (and etcd, our child, one per agent): lift the soft limit of
/// open files to the hard one when the agents need more.
fn raise_open_files(agents: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct handed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && (limit.rlim_cur as usize) < agents * 2 + 256 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
