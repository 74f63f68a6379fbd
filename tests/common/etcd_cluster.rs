//! A 3-member etcd cluster for the chaos tests: each member (Debian's `etcd`) in a host namespace
//! of a [`Cluster`] (h1–h3, on its switch), the clients in one more (h4). A member can be killed
//! and started again, or cut off the switch and joined back, while the clients keep running.
//!
//! Everything is the [`Cluster`]'s: its Drop kills what runs and removes the namespaces, also when
//! the test panics; members die with the test thread (parent-death signal).
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft::lab::wire;
use weft::netns::Netns;

use super::cluster::{die_with_parent, Cluster};

/// Members are hosts 1..=MEMBERS of the cluster; the clients' namespace is the host after them.
pub const MEMBERS: usize = 3;
pub const CLIENT_HOST: usize = MEMBERS + 1;
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
const START_DEADLINE: Duration = Duration::from_secs(30);

pub struct EtcdCluster {
    /// The namespaces: members on h1–h3, clients on h4.
    pub net: Cluster,
    /// Member m's process at index m - 1 (`None`: killed).
    members: Vec<Option<Child>>,
}

impl EtcdCluster {
    /// Three members, started together and answering (every one healthy).
    pub fn start() -> EtcdCluster {
        let mut cluster = EtcdCluster { net: Cluster::new(CLIENT_HOST), members: (0..MEMBERS).map(|_| None).collect() };
        for m in 1..=MEMBERS {
            cluster.launch(m);
        }
        let deadline = Instant::now() + START_DEADLINE;
        while !cluster.healthy(&cluster.endpoints()) {
            assert!(
                Instant::now() < deadline,
                "etcd cluster not healthy within {START_DEADLINE:?}:\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster
    }

    /// Member m's client URL.
    pub fn endpoint(&self, m: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.net.host(m).addr)
    }

    /// Every member's client URL, as a client is configured with them.
    pub fn endpoints(&self) -> Vec<String> {
        (1..=MEMBERS).map(|m| self.endpoint(m)).collect()
    }

    /// The namespace clients run in: it reaches every member over the switch.
    pub fn client_ns(&self) -> Netns {
        self.net.host_ns(CLIENT_HOST)
    }

    /// SIGKILL to member m, as a crash; its data stays for [`EtcdCluster::restart`].
    pub fn kill(&mut self, m: usize) {
        let mut child = self.members[m - 1].take().unwrap_or_else(|| panic!("member {m} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts member m again on its data.
    pub fn restart(&mut self, m: usize) {
        assert!(self.members[m - 1].is_none(), "member {m} still runs");
        self.launch(m);
    }

    /// Cuts member m off the switch (its port on the bridge goes down): the process runs on, and
    /// neither the other members nor the clients reach it.
    pub fn partition(&self, m: usize) {
        self.set_port(m, "down");
    }

    /// Joins member m back to the switch; returns once its link carries traffic again.
    pub fn heal(&self, m: usize) {
        self.set_port(m, "up");
        let node = self.net.host(m);
        let switch = Netns::open(&self.net.topology.switch_ns()).expect("open the switch namespace");
        wire::wait_up(&switch, &node.switch_port).unwrap_or_else(|e| panic!("member {m}'s port: {e}"));
        wire::wait_up(&self.net.host_ns(m), weft::lab::topology::HOST_IFACE)
            .unwrap_or_else(|e| panic!("member {m}'s link: {e}"));
    }

    /// `etcdctl <args>` (API v3) from the clients' namespace against every member; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        super::etcd::run_etcdctl(self.etcdctl_command(&self.endpoints(), args), args)
    }

    /// Whether every member of `endpoints` answers a health check.
    pub fn healthy(&self, endpoints: &[String]) -> bool {
        super::etcd::etcd_answers(self.etcdctl_command(endpoints, super::etcd::HEALTH_ARGS))
    }

    /// Whether the cluster takes a write now (a leader and a quorum), asked of every member.
    pub fn writable(&self) -> bool {
        let args = ["--dial-timeout=1s", "--command-timeout=1s", "put", "/weft-chaos/probe", "x"];
        super::etcd::etcd_answers(self.etcdctl_command(&self.endpoints(), &args))
    }

    /// Every member's log, for a failure message.
    pub fn logs(&self) -> String {
        (1..=MEMBERS)
            .map(|m| {
                format!("---- etcd member {m} ----\n{}", std::fs::read_to_string(self.log_path(m)).unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn etcdctl_command(&self, endpoints: &[String], args: &[&str]) -> Command {
        let mut command = self.client_ns().command("etcdctl").expect("enter the clients' namespace");
        command.env("ETCDCTL_API", "3").arg("--endpoints").arg(endpoints.join(",")).args(args).stdin(Stdio::null());
        command
    }

    fn set_port(&self, m: usize, state: &str) {
        let node = self.net.host(m);
        let switch = self.net.topology.switch_ns();
        let out =
            Command::new("ip").args(["-n", &switch, "link", "set", &node.switch_port, state]).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip link set {} {state}: {}",
            node.switch_port,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn log_path(&self, m: usize) -> std::path::PathBuf {
        self.net.path(&format!("etcd-m{m}.log"))
    }

    fn launch(&mut self, m: usize) {
        let peer = |m: usize| format!("http://{}:{PEER_PORT}", self.net.host(m).addr);
        let initial: Vec<String> = (1..=MEMBERS).map(|m| format!("m{m}={}", peer(m))).collect();
        let client = self.endpoint(m);
        // Appended to: a restarted member's log follows its first life's.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(m)).expect("etcd log");
        let mut command = self.net.host_ns(m).command(etcd_binary()).expect("enter the member's namespace");
        command
            .arg(format!("--name=m{m}"))
            .arg(format!("--data-dir={}", self.net.path(&format!("etcd-m{m}")).display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={}", peer(m)))
            .arg(format!("--initial-advertise-peer-urls={}", peer(m)))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .args(["--initial-cluster-state=new", "--initial-cluster-token=weft-chaos"])
            .args(["--logger=zap", "--log-outputs=stderr", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcd ({}): {e}; install Debian's etcd-server", etcd_binary()));
        self.members[m - 1] = Some(child);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for mut child in self.members.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The namespaces go with `net`.
    }
}

fn etcd_binary() -> String {
    std::env::var("WEFT_TEST_ETCD").unwrap_or_else(|_| "etcd".to_string())
}
