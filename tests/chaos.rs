//! Trust under faults (issue 15): real agents against a real etcd while it loses members,
//! quorum, its whole self, its tokens; agents killed in a loop; a host's wall clock stepped back.
//! Each test prints its figures (`--nocapture`). Needs root: fails, never skips, without it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{die_with_parent, require_root, Cluster, WEFT};
use common::etcd::EtcdServer;
use common::etcd_cluster::EtcdCluster;
use common::monitor::Monitor;
use common::secrets;
use common::wait::{until, until_every};
use common::weft::{read_subnet, Agent, Setup};

/// Where flannel's layout keeps the leases.
const SUBNETS: &str = "/coreos.com/network/subnets/";
/// What `/readyz` says while the store cannot be reached (`Condition::Store`).
const STORE_UNREACHABLE: &str = "store: unreachable";
/// An alloc network with room for many hosts (so 200 leases are not a lottery on 256 slots).
const ALLOC_NETWORK: &str = "cidr = \"10.128.0.0/12\"\n[network.backend]\ntype = \"alloc\"";
/// A vxlan network whose leases stay in 10.244.1–9.0/24.
const VXLAN_NETWORK: &str = "cidr = \"10.244.0.0/16\"\nsubnet_min = \"10.244.1.0\"\nsubnet_max = \"10.244.9.0\"\n\
                             [network.backend]\ntype = \"vxlan\"";
const VXLAN_DEVICE: &str = "flannel.1";

// ---- 1. a 3-member etcd loses one member and then quorum while 200 agents acquire ----

/// How many agents acquire at once.
const FLEET: usize = 200;

/// Agents of the fleet, all in one namespace; killed on drop.
struct Fleet {
    agents: Vec<FleetAgent>,
}

struct FleetAgent {
    child: Child,
    public_ip: Ipv4Addr,
    subnet_file: PathBuf,
}

impl Fleet {
    fn held(&self) -> usize {
        self.agents.iter().filter(|a| read_subnet(&a.subnet_file).is_some()).count()
    }

    /// The log tails of up to three agents without a lease, for a failure message.
    fn waiting_logs(&self, net: &Cluster) -> String {
        let waiting = self.agents.iter().enumerate().filter(|(_, a)| read_subnet(&a.subnet_file).is_none());
        waiting
            .take(3)
            .map(|(i, a)| {
                let log = std::fs::read_to_string(net.path(&format!("a{}.log", i + 1))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("---- agent {} ----\n{}", a.public_ip, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How many lines of all the agents' logs contain `text`.
    fn log_lines_with(&self, net: &Cluster, text: &str) -> usize {
        (1..=self.agents.len())
            .map(|n| std::fs::read_to_string(net.path(&format!("a{n}.log"))).unwrap_or_default())
            .map(|log| log.lines().filter(|line| line.contains(text)).count())
            .sum()
    }

    fn exited(&mut self) -> Vec<String> {
        self.agents
            .iter_mut()
            .filter_map(|a| a.child.try_wait().ok().flatten().map(|status| format!("{}: {status}", a.public_ip)))
            .collect()
    }

    /// Each agent's own resident memory (anonymous: heap and stacks, not the binary's pages
    /// the fleet shares), in KiB.
    fn anon_kib(&self) -> Vec<u64> {
        self.agents.iter().filter_map(|a| anon_kib(a.child.id())).collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            let _ = agent.child.kill();
        }
        for agent in &mut self.agents {
            let _ = agent.child.wait();
        }
    }
}

fn anon_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("RssAnon:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Starts agent `n` of the fleet (public IP 203.0.113.n) in the clients' namespace.
fn start_fleet_agent(etcd: &EtcdCluster, config: &Path, n: usize) -> FleetAgent {
    let public_ip = Ipv4Addr::new(203, 0, 113, n as u8);
    let subnet_file = etcd.net.path(&format!("a{n}.env"));
    let log = std::fs::File::create(etcd.net.path(&format!("a{n}.log"))).expect("agent log");
    let mut command = etcd.client_ns().command(WEFT).expect("enter the clients' namespace");
    command
        .arg("--config")
        .arg(config)
        .args(["agent", "--iface", "eth0", "--public-ip", &public_ip.to_string(), "--listen", ""])
        .arg("--subnet-file")
        .arg(&subnet_file)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log);
    die_with_parent(&mut command);
    FleetAgent { child: command.spawn().expect("start weft agent"), public_ip, subnet_file }
}

/// The leases in the store: subnet → PublicIP, and how many keys there are.
fn stored_leases(etcdctl: impl Fn(&[&str]) -> String) -> (BTreeMap<String, String>, usize) {
    let text = etcdctl(&["get", "--prefix", SUBNETS]);
    let lines: Vec<&str> = text.lines().collect();
    let mut leases = BTreeMap::new();
    for pair in lines.chunks(2) {
        let [key, value] = pair else { panic!("a key without a value in {text}") };
        let subnet = key.strip_prefix(SUBNETS).unwrap_or_else(|| panic!("not a lease key: {key}")).replace('-', "/");
        let attrs: serde_json::Value = serde_json::from_str(value).unwrap_or_else(|e| panic!("{key}: {e}: {value}"));
        let public_ip = attrs["PublicIP"].as_str().unwrap_or_else(|| panic!("{key}: no PublicIP: {value}"));
        leases.insert(subnet, public_ip.to_string());
    }
    (leases, lines.len() / 2)
}

#[test]
fn two_hundred_agents_lease_without_duplicates_while_etcd_loses_a_member_and_quorum() {
    require_root();
    let mut etcd = EtcdCluster::start();
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
    let config = etcd.net.path("fleet.toml");
    let toml = format!(
        "[agent]\nlease_ttl = \"10m\"\nrenew_margin = \"1m\"\nresync = \"60s\"\nip_masq = false\nforward_rules = false\n\n\
         [store]\nkind = \"etcd\"\nendpoints = [{}]\n\n[network]\n{ALLOC_NETWORK}\n",
        endpoints.join(", ")
    );
    std::fs::write(&config, toml).expect("write fleet.toml");
    let apply = etcd
        .client_ns()
        .command(WEFT)
        .expect("enter the clients' namespace")
        .arg("--config")
        .arg(&config)
        .args(["network", "apply"])
        .output()
        .expect("run weft network apply");
    assert!(apply.status.success(), "weft network apply: {}", String::from_utf8_lossy(&apply.stderr));

    // Half the fleet starts, member 1 dies, the other half starts: they acquire at once, some
    // from a member that is gone.
    let start = Instant::now();
    let mut fleet = Fleet { agents: Vec::with_capacity(FLEET) };
    for n in 1..=FLEET / 2 {
        fleet.agents.push(start_fleet_agent(&etcd, &config, n));
    }
    etcd.kill(1);
    for n in FLEET / 2 + 1..=FLEET {
        fleet.agents.push(start_fleet_agent(&etcd, &config, n));
    }
    let spawned = start.elapsed();
    // Then member 2 is cut off: member 3 alone has no quorum, nobody can write.
    etcd.partition(2);
    let held_at_partition = fleet.held();
    std::thread::sleep(Duration::from_secs(10));
    let held_during_partition = fleet.held();
    etcd.heal(2);
    let healed = Instant::now();
    // etcd's own election after the heal is not the agents' to shorten (2-5 s here, more on a
    // loaded machine): the agents are timed from when it takes writes again.
    let etcd_back = until_every(
        "etcd taking writes again after the heal",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || etcd.writable(),
        || etcd.logs(),
    );
    let within = Duration::from_secs(30);
    until_every(
        "every agent holding a lease once etcd took writes again",
        within,
        Duration::from_millis(200),
        || fleet.held() == FLEET,
        || format!("{} of {FLEET} hold a lease\n{}\n{}", fleet.held(), fleet.waiting_logs(&etcd.net), etcd.logs()),
    );
    let after_heal = healed.elapsed();
    let total = start.elapsed();

    let exited = fleet.exited();
    assert!(exited.is_empty(), "agents exited: {exited:?}");
    // A create whose answer was lost may land late, beside the lease its agent then took: the
    // agent deletes that orphan when it sees it. One lease per agent, soon.
    until_every(
        "one lease per agent in the store",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || stored_leases(|args| etcd.etcdctl(args)).1 == FLEET,
        || format!("{} leases in the store for {FLEET} agents", stored_leases(|args| etcd.etcdctl(args)).1),
    );
    let orphans_deleted = fleet.log_lines_with(&etcd.net, "deleted an orphaned lease");
    // Every agent's subnet is its own, and the store says so too.
    let (stored, keys) = stored_leases(|args| etcd.etcdctl(args));
    let mut held: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for agent in &fleet.agents {
        let subnet = read_subnet(&agent.subnet_file).expect("checked above");
        held.entry(subnet).or_default().push(agent.public_ip);
    }
    let duplicates: Vec<_> = held.iter().filter(|(_, ips)| ips.len() > 1).collect();
    let wrong: Vec<_> = held
        .iter()
        .filter(|(subnet, ips)| stored.get(*subnet) != Some(&ips[0].to_string()))
        .map(|(subnet, ips)| format!("{subnet}: held by {ips:?}, stored for {:?}", stored.get(subnet)))
        .collect();
    let rss = fleet.anon_kib();
    let rss_avg = rss.iter().sum::<u64>() / rss.len().max(1) as u64;
    println!(
        "chaos fleet: {FLEET} agents spawned in {spawned:.1?}; holding a lease when member 2 was cut off: \
         {held_at_partition}, after 10 s without quorum: {held_during_partition}; etcd took writes again \
         {etcd_back:.1?} after the heal; all {FLEET} held a lease within {after_heal:.1?} of the heal ({total:.1?} from the first start); duplicate subnets: {}; \
         leases in the store: {keys} (orphans of lost creates deleted by their agents: {orphans_deleted}); agents' own memory (RssAnon, debug build): {rss_avg} KiB average, {} KiB max",
        duplicates.len(),
        rss.iter().max().unwrap_or(&0)
    );
    assert!(duplicates.is_empty(), "subnets held by more than one agent: {duplicates:?}");
    assert!(wrong.is_empty(), "agents' subnets the store does not give them: {wrong:?}");
    assert_eq!(keys, FLEET, "one lease per agent in the store");
    assert!(after_heal.saturating_sub(etcd_back) <= within);
}

// ---- 2. etcd gone for a minute under a vxlan cluster ----

/// What weft installed on a host, each entry as its JSON text: routes, and the vxlan device's
/// neighbours and FDB entries.
fn kernel_entries(cluster: &Cluster, i: usize) -> BTreeSet<String> {
    let ns = cluster.host(i).ns;
    let routes = cluster.ip_json(&ns, &["-4", "route", "show"]);
    let neigh = cluster.ip_json(&ns, &["-4", "neigh", "show", "dev", VXLAN_DEVICE]);
    let fdb = cluster.tool_json(&ns, "bridge", &["fdb", "show", "dev", VXLAN_DEVICE]);
    [("route", routes), ("neigh", neigh), ("fdb", fdb)]
        .into_iter()
        .flat_map(|(kind, list)| {
            list.as_array().cloned().unwrap_or_default().into_iter().map(move |entry| format!("{kind} {entry}"))
        })
        .collect()
}

/// Entries of `before` that `now` lacks.
fn removed(before: &BTreeSet<String>, now: &BTreeSet<String>) -> Vec<String> {
    before.difference(now).cloned().collect()
}

/// `hosts` vxlan hosts with a pod each, every pod reaching the next one, every agent ready.
fn vxlan_cluster(hosts: usize, agent: &str) -> (Cluster, Vec<String>, Vec<Ipv4Addr>) {
    let mut cluster = Cluster::with_etcd(hosts);
    cluster.write_config_with(agent, VXLAN_NETWORK);
    cluster.weft_ok(&["network", "apply"]);
    for i in 1..=hosts {
        cluster.start_agent(i, &[]);
    }
    let infos: Vec<_> = (1..=hosts).map(|i| cluster.wait_subnet(i)).collect();
    let pods: Vec<Ipv4Addr> = (1..=hosts).map(|i| cluster.make_pod(i, infos[i - 1]).pod.addr()).collect();
    for i in 1..=hosts {
        let (from, to) = (cluster.pod_ns(i), pods[i % hosts]);
        assert!(cluster.wait_ping(&from, to, Duration::from_secs(10)), "pod h{i} cannot reach {to}");
        until(&format!("h{i} ready"), Duration::from_secs(10), || cluster.readyz(i) == Some(200));
    }
    let subnets = (1..=hosts).map(|i| read_subnet(&cluster.subnet_file(i)).expect("subnet.env")).collect();
    (cluster, subnets, pods)
}

/// How long etcd stays away: longer than the first renewal (20 s in) and its retries, thirty
/// resyncs, and the lease watch's longest retry, shorter than the lease.
const OUTAGE: Duration = Duration::from_secs(60);

#[test]
fn a_minute_without_etcd_removes_nothing_and_traffic_flows() {
    // The first renewal falls due 20 s after the lease is taken, inside the outage; the lease
    // (2 min) outlives it.
    let agent = "lease_ttl = \"2m\"\nrenew_margin = \"100s\"\nresync = \"2s\"";
    let (mut cluster, subnets, pods) = vxlan_cluster(3, agent);
    let hosts = subnets.len();
    let before: Vec<BTreeSet<String>> = (1..=hosts).map(|i| kernel_entries(&cluster, i)).collect();
    let (stored_before, _) = stored_leases(|args| cluster.etcdctl(args));

    cluster.stop_etcd();
    let down = Instant::now();
    for i in 1..=hosts {
        until_every(
            &format!("h{i}'s /readyz saying the store is unreachable"),
            Duration::from_secs(15),
            Duration::from_millis(200),
            || cluster.agent_get(i, "/readyz").is_some_and(|(s, body)| s == 503 && body.contains(STORE_UNREACHABLE)),
            || format!("{:?}", cluster.agent_get(i, "/readyz")),
        );
    }
    let reported = down.elapsed();
    let (mut rounds, mut pings) = (0, 0);
    while down.elapsed() < OUTAGE {
        rounds += 1;
        for i in 1..=hosts {
            let (from, to) = (cluster.pod_ns(i), pods[i % hosts]);
            assert!(cluster.ping(&from, to).is_some(), "pod h{i} lost {to} {:?} into the outage", down.elapsed());
            pings += 1;
            let (status, body) = cluster.agent_get(i, "/readyz").expect("the agent answers");
            assert!(status == 503 && body.contains(STORE_UNREACHABLE), "h{i}'s /readyz: {status} {body}");
            let gone = removed(&before[i - 1], &kernel_entries(&cluster, i));
            assert!(gone.is_empty(), "h{i} lost kernel entries {:?} into the outage: {gone:#?}", down.elapsed());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let outage = down.elapsed();

    cluster.start_etcd();
    let back = Instant::now();
    let within = Duration::from_secs(5);
    for i in 1..=hosts {
        until_every(
            &format!("h{i} ready after etcd returned"),
            within.saturating_sub(back.elapsed()),
            Duration::from_millis(100),
            || cluster.readyz(i) == Some(200),
            || format!("{:?}\n{}", cluster.agent_get(i, "/readyz"), cluster.agent_log(i)),
        );
    }
    let recovery = back.elapsed();
    println!(
        "chaos etcd outage: {outage:.1?} without etcd, /readyz said {STORE_UNREACHABLE:?} after {reported:.1?}; \
         {pings} pings in {rounds} rounds all answered; kernel entries removed: 0; ready again {recovery:.1?} after \
         etcd returned"
    );
    for i in 1..=hosts {
        assert_eq!(read_subnet(&cluster.subnet_file(i)).as_ref(), Some(&subnets[i - 1]), "h{i}'s subnet");
        let gone = removed(&before[i - 1], &kernel_entries(&cluster, i));
        assert!(gone.is_empty(), "h{i} lost kernel entries after the outage: {gone:#?}");
    }
    let (stored_after, _) = stored_leases(|args| cluster.etcdctl(args));
    assert_eq!(stored_after, stored_before, "the same leases in the store");
}

// ---- 3. an idle agent and etcd's lapsing auth tokens ----

const PASSWORD: &str = "chaos-Pa55word-7f3e";

/// The etcd lease id and mod revision of `key`.
fn key_lease_and_revision(etcd: &EtcdServer, key: &str) -> (i64, i64) {
    let text = etcd.etcdctl(&["get", "-w", "json", key]);
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let kv = &doc["kvs"][0];
    let lease = kv["lease"].as_i64().unwrap_or_else(|| panic!("{key} has no lease: {text}"));
    (lease, kv["mod_revision"].as_i64().expect("a mod revision"))
}

#[test]
fn an_idle_agent_renews_after_its_etcd_token_lapsed_and_never_logs_the_password() {
    const TOKEN_TTL: u32 = 5;
    let etcd = EtcdServer::start_with_auth(PASSWORD, TOKEN_TTL);
    // The first renewal falls due 18 s after the lease is taken: over 3 token lifetimes idle.
    let setup = Setup::new(&format!(
        "[agent]\nlease_ttl = \"22s\"\nrenew_margin = \"4s\"\n\n[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\n\
         username = \"root\"\npassword = \"{PASSWORD}\"\n\n[network]\ncidr = \"10.244.0.0/16\"\n\
         [network.backend]\ntype = \"alloc\"\n",
        etcd.endpoint
    ));
    setup.ok(&["network", "apply"]);
    let mut a = setup.agent("a", "198.51.100.1", &[]);
    let subnet = a.wait_subnet();
    let key = format!("{SUBNETS}{}", subnet.replace('/', "-"));
    let (lease, revision) = key_lease_and_revision(&etcd, &key);
    let taken = Instant::now();
    a.wait_for("a renewal", 30, |ag| ag.metric("weft_lease_renewals_total") >= 1.0);
    let idle = taken.elapsed();
    let (renewed_lease, renewed_revision) = key_lease_and_revision(&etcd, &key);
    let errors = a.metric("weft_store_errors_total");
    println!(
        "chaos auth: renewed {idle:.1?} after the lease was taken (token TTL {TOKEN_TTL} s); etcd lease \
         {lease:x} -> {renewed_lease:x}, revision {revision} -> {renewed_revision}; store errors: {errors}"
    );
    assert!(idle > Duration::from_secs(3 * u64::from(TOKEN_TTL)), "renewed after only {idle:?} idle");
    assert_ne!(renewed_lease, lease, "the renewal grants a new etcd lease");
    assert!(renewed_revision > revision, "the renewal rewrote the key");
    assert_eq!(a.get("/readyz").0, 200, "{}", a.log_text());
    assert_eq!(errors, 0.0, "the lapsed token cost a failed request:\n{}", a.log_text());
    assert!(!a.log_text().contains("invalid auth token"), "{}", a.log_text());
    assert_eq!(read_subnet(&a.subnet_file).as_deref(), Some(subnet.as_str()));
    a.stop();
    secrets::assert_absent_under(setup.dir.path(), PASSWORD, &[setup.config.as_path()]);
}

// ---- 4. one host killed and restarted 50 times ----

const RESTARTS: usize = 50;

#[test]
fn fifty_sigkills_keep_the_subnet_and_delete_no_route_on_the_peers() {
    let (mut cluster, subnets, pods) = vxlan_cluster(3, "lease_ttl = \"30s\"\nrenew_margin = \"10s\"\nresync = \"2s\"");
    let h1 = cluster.host(1);
    // Deletions on the peers naming h1's subnet (routes, neighbours: its first address) or its
    // underlay address (FDB entries).
    let network = subnets[0].split('/').next().expect("a subnet").to_string();
    let mut monitors: Vec<(usize, Monitor, Monitor)> = (2..=3)
        .map(|i| {
            let ns = cluster.host(i).ns;
            (
                i,
                Monitor::start(&ns, "ip", &["-4", "monitor", "route", "neigh"]),
                Monitor::start(&ns, "bridge", &["monitor", "fdb"]),
            )
        })
        .collect();
    let start = Instant::now();
    let mut kept = 0;
    for round in 1..=RESTARTS {
        cluster.kill_agent(1);
        cluster.start_agent(1, &[]);
        until_every(
            &format!("h1 ready after restart {round}"),
            Duration::from_secs(20),
            Duration::from_millis(20),
            || cluster.readyz(1) == Some(200),
            || cluster.agent_log(1),
        );
        if read_subnet(&cluster.subnet_file(1)).as_ref() == Some(&subnets[0]) {
            kept += 1;
        }
    }
    let looped = start.elapsed();
    // Whatever the last restart set off has time to show.
    std::thread::sleep(Duration::from_secs(1));
    assert!(cluster.ping(&cluster.pod_ns(2), pods[0]).is_some(), "h2's pod cannot reach h1's");
    let mut deletions = Vec::new();
    for (i, ip, bridge) in &mut monitors {
        let (ip, bridge) = (ip.stop(), bridge.stop());
        let ours = |line: &&str| {
            line.starts_with("Deleted") && (line.contains(&network) || line.contains(&h1.addr.to_string()))
        };
        deletions.extend(ip.lines().chain(bridge.lines()).filter(ours).map(|l| format!("h{i}: {l}")));
    }
    println!(
        "chaos restarts: {RESTARTS} SIGKILL + restart of h1 in {looped:.1?} ({:.0?} each); kept its subnet \
         {kept}/{RESTARTS}; deletions of h1's routes, neighbours, FDB entries seen on its peers: {}",
        looped / RESTARTS as u32,
        deletions.len()
    );
    assert_eq!(kept, RESTARTS, "restarts that kept the subnet");
    assert!(deletions.is_empty(), "the peers deleted h1's entries:\n{}", deletions.join("\n"));
}

// ---- 5. the wall clock stepped back ----

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[test]
fn a_wall_clock_stepped_back_past_the_renew_margin_keeps_the_lease() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} missing: install Debian's faketime (scripts/setup.sh --tests)"
    );
    let etcd = EtcdServer::start();
    let setup = Setup::new(&format!(
        "[agent]\nlease_ttl = \"20s\"\nrenew_margin = \"5s\"\n\n[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\n\n\
         [network]\ncidr = \"10.244.0.0/16\"\n[network.backend]\ntype = \"alloc\"\n",
        etcd.endpoint
    ));
    setup.ok(&["network", "apply"]);
    // libfaketime fakes the agent's CLOCK_REALTIME only, read from this file on every call.
    let clock = setup.path("faketime");
    std::fs::write(&clock, "+0\n").expect("write the fake clock");
    let clock_path = clock.to_string_lossy().into_owned();
    let env = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_TIMESTAMP_FILE", clock_path.as_str()),
    ];
    let mut a: Agent = setup.agent_with_env("a", "198.51.100.1", &env);
    let subnet = a.wait_subnet();
    let taken = Instant::now();
    a.wait_for("readiness", 10, |ag| ag.get("/readyz").0 == 200);
    let key = format!("{SUBNETS}{}", subnet.replace('/', "-"));
    let (lease, revision) = key_lease_and_revision(&etcd, &key);

    // Back by a minute: past the renew margin (5 s), past the whole lease (20 s).
    const STEP: u64 = 60;
    std::fs::write(&clock, format!("-{STEP}\n")).expect("step the fake clock");
    let stepped_at = taken.elapsed();
    until_every(
        "a renewal",
        Duration::from_secs(25),
        Duration::from_millis(100),
        || {
            let (status, body) = a.get("/readyz");
            assert_eq!(status, 200, "not ready after the step: {body}");
            a.metric("weft_lease_renewals_total") >= 1.0
        },
        || a.log_text(),
    );
    let renewed_after = taken.elapsed();
    let (renewed_lease, renewed_revision) = key_lease_and_revision(&etcd, &key);
    // The agent's wall clock was really stepped: the expiry it reports is by that clock.
    let real_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let expiry = a.metric("weft_lease_expiry_timestamp_seconds");
    println!(
        "chaos clock: stepped back {STEP} s at {stepped_at:.1?}; renewed {renewed_after:.1?} after the lease was \
         taken (due at 15 s); reported expiry {:.0} s from real now",
        expiry - real_now
    );
    assert!(expiry > 0.0 && expiry < real_now, "the agent's clock was not stepped: expiry {expiry}, now {real_now}");
    // Due 15 s after the lease was taken, by the monotonic clock: not at once, not late.
    assert!(renewed_after >= Duration::from_secs(13) && renewed_after <= Duration::from_secs(19), "{renewed_after:?}");
    assert_ne!(renewed_lease, lease);
    assert!(renewed_revision > revision);
    let (stored, keys) = stored_leases(|args| etcd.etcdctl(args));
    assert_eq!((keys, stored.get(&subnet).map(String::as_str)), (1, Some("198.51.100.1")), "one lease, ours");
    assert_eq!(read_subnet(&a.subnet_file).as_deref(), Some(subnet.as_str()));
    assert_eq!(a.get("/readyz").0, 200, "{}", a.log_text());
    a.stop();
}
