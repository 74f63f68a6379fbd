//! Masquerade against the real kernel, each test in network namespaces of its own: the table weft
//! writes (as `nft -j` shows it), replacement, removal, repair, other tables left alone, and real
//! packets being masqueraded. Needs root; fails loudly without it.

use std::net::{SocketAddr, UdpSocket};
use std::process::Output;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;
use weft::masq::{self, Masquerade, Status};
use weft::netns::Netns;

const NETWORK: &str = "10.244.0.0/16";
const OWN: &str = "10.244.3.0/24";

fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("the masquerade tests need root (network namespaces, nftables); run them as root");
    }
}

fn v4(net: &str) -> Ipv4Net {
    net.parse().unwrap()
}

/// A namespace of the test's own, deleted when the test ends, passed or failed.
struct Ns(Netns);

impl Ns {
    fn new(tag: &str) -> Ns {
        require_root();
        let name = format!("weft-m-{}-{tag}", std::process::id());
        Ns(Netns::create(&name).unwrap_or_else(|e| panic!("create namespace {name}: {e}")))
    }

    /// Runs `f` inside the namespace (netlink sockets it opens belong there).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.0.run(f).unwrap()
    }

    fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut command = self.0.command(program).unwrap();
        command.args(args).output().unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
    }

    /// Runs a command inside the namespace that must succeed; returns its stdout.
    fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.exec(program, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{program} {args:?} in {}: {stderr}", self.0.name);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn nft(&self, args: &str) -> String {
        self.ok("nft", &args.split_whitespace().collect::<Vec<_>>())
    }

    /// `nft -j list table <family> <name>`, or None when there is no such table.
    fn table_json(&self, family: &str, name: &str) -> Option<Vec<Value>> {
        let out = self.exec("nft", &["-j", "list", "table", family, name]);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("No such file"), "nft list table {family} {name}: {stderr}");
            return None;
        }
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        Some(json["nftables"].as_array().unwrap().clone())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Err(e) = self.0.delete() {
            eprintln!("cannot delete namespace {}: {e}", self.0.name);
        }
    }
}

/// One `nft -j` expression, as `nft list` would write it (enough for weft's rules).
fn expr_text(expr: &Value) -> String {
    if let Some(m) = expr.get("match") {
        let payload = &m["left"]["payload"];
        let right = &m["right"];
        let value = match right.get("prefix") {
            Some(p) => format!("{}/{}", p["addr"].as_str().unwrap(), p["len"]),
            None => right.as_str().map_or(right.to_string(), str::to_string),
        };
        let op = if m["op"] == "!=" { "!= " } else { "" };
        return format!("{} {} {op}{value}", payload["protocol"].as_str().unwrap(), payload["field"].as_str().unwrap());
    }
    if expr.get("return").is_some() {
        return "return".to_string();
    }
    if let Some(masq) = expr.get("masquerade") {
        return format!("masquerade {}", masq["flags"].as_str().unwrap_or(""));
    }
    format!("unexpected {expr}")
}

/// The rules of weft's chain as `ip saddr 10.244.0.0/16 ... return` lines (comment last).
fn rule_lines(table: &[Value]) -> Vec<String> {
    let rules = table.iter().filter_map(|item| item.get("rule"));
    rules
        .map(|rule| {
            assert_eq!(rule["chain"], "postrouting", "{rule}");
            let exprs: Vec<String> = rule["expr"].as_array().unwrap().iter().map(expr_text).collect();
            format!("{} # {}", exprs.join(" "), rule["comment"].as_str().unwrap_or(""))
        })
        .collect()
}

fn flannel_rules(network: &str, own: &str) -> Vec<String> {
    vec![
        format!("ip saddr {network} ip daddr {network} return # weft: pod to pod keeps its source"),
        format!("ip saddr != {network} ip daddr {own} return # weft: outside to own pods keeps its source"),
        format!(
            "ip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random # weft: pods to outside the network"
        ),
        format!("ip saddr != {network} ip daddr {network} masquerade fully-random # weft: host to remote pods"),
    ]
}

fn install(ns: &Ns, network: &str, own: &str) {
    let (network, own) = (v4(network), v4(own));
    ns.run(move || masq::install(network, own)).unwrap();
}

#[test]
fn install_writes_flannels_rules_into_a_table_of_weft_s_own() {
    let ns = Ns::new("install");
    ns.nft("add table ip other");
    ns.nft("add chain ip other post { type nat hook postrouting priority 50 ; }");
    ns.nft("add rule ip other post ip saddr 192.0.2.0/24 masquerade");
    let other_before = ns.table_json("ip", "other");

    install(&ns, NETWORK, OWN);

    let table = ns.table_json("ip", "weft").expect("table ip weft after install");
    let chains: Vec<&Value> = table.iter().filter_map(|item| item.get("chain")).collect();
    assert_eq!(chains.len(), 1, "{chains:?}");
    let chain = chains[0];
    assert_eq!(
        (&chain["name"], &chain["type"], &chain["hook"], &chain["prio"], &chain["policy"]),
        (&"postrouting".into(), &"nat".into(), &"postrouting".into(), &100.into(), &"accept".into()),
        "{chain}"
    );
    assert_eq!(rule_lines(&table), flannel_rules(NETWORK, OWN));
    assert_eq!(ns.table_json("ip", "other"), other_before, "someone else's table changed");

    // What weft reads back is what it wrote.
    let m = Masquerade::v4(v4(NETWORK), v4(OWN)).unwrap();
    assert_eq!(ns.run(move || m.check()).unwrap(), Status::Current);
}

#[test]
fn install_again_replaces_and_remove_leaves_nothing() {
    let ns = Ns::new("replace");
    ns.nft("add table ip other");
    ns.nft("add chain ip other keep");
    let other_before = ns.table_json("ip", "other");

    install(&ns, NETWORK, OWN);
    install(&ns, NETWORK, "10.244.7.0/24");
    let table = ns.table_json("ip", "weft").unwrap();
    assert_eq!(rule_lines(&table), flannel_rules(NETWORK, "10.244.7.0/24"), "replaced, not appended");
    assert_eq!(table.iter().filter(|item| item.get("chain").is_some()).count(), 1);

    // Installing the same again still leaves exactly one set of rules.
    install(&ns, NETWORK, "10.244.7.0/24");
    assert_eq!(rule_lines(&ns.table_json("ip", "weft").unwrap()).len(), 4);

    assert!(ns.run(masq::remove).unwrap(), "remove finds the table");
    assert_eq!(ns.table_json("ip", "weft"), None, "table gone after remove");
    assert!(!ns.run(masq::remove).unwrap(), "a second remove finds nothing");
    assert_eq!(ns.run(masq::read).unwrap(), None);
    assert_eq!(ns.table_json("ip", "other"), other_before, "someone else's table changed");
}

#[test]
fn check_sees_hand_edits_and_ensure_repairs_them() {
    let ns = Ns::new("repair");
    let m = Masquerade::v4(v4(NETWORK), v4(OWN)).unwrap();
    let check = |ns: &Ns| {
        let m = m.clone();
        ns.run(move || m.check()).unwrap()
    };
    assert_eq!(check(&ns), Status::Missing);
    let ensure = |ns: &Ns| {
        let m = m.clone();
        ns.run(move || m.ensure()).unwrap()
    };
    assert!(ensure(&ns), "ensure installs a missing table");
    assert!(!ensure(&ns), "ensure leaves a correct table alone");

    // Someone deletes the first rule and appends one of their own.
    let table = ns.table_json("ip", "weft").unwrap();
    let first = table.iter().find_map(|item| item.get("rule")).unwrap()["handle"].to_string();
    ns.nft(&format!("delete rule ip weft postrouting handle {first}"));
    ns.nft("add rule ip weft postrouting counter");
    let Status::Differs(differences) = check(&ns) else { panic!("hand edits not seen") };
    assert!(differences.iter().any(|d| d.contains("does not write")), "{differences:#?}");

    assert!(ensure(&ns), "ensure rewrites an edited table");
    assert_eq!(check(&ns), Status::Current);
    assert_eq!(rule_lines(&ns.table_json("ip", "weft").unwrap()), flannel_rules(NETWORK, OWN));
}

#[test]
fn each_family_has_its_own_table() {
    let ns = Ns::new("families");
    let v6 = Masquerade::new("fd00:10::/56".parse::<IpNet>().unwrap(), "fd00:10:0:3::/64".parse().unwrap()).unwrap();
    let v6_check = v6.clone();
    ns.run(move || v6.install()).unwrap();
    install(&ns, NETWORK, OWN);
    assert!(ns.run(|| masq::remove_family(masq::Family::V4)).unwrap());
    let table = ns.table_json("ip6", "weft").expect("ip6 weft survives removing ip weft");
    assert_eq!(rule_lines(&table).len(), 4);
    assert!(rule_lines(&table)[2].contains("ip6 daddr != ff00::/8 masquerade fully-random"), "{table:?}");
    assert_eq!(ns.run(move || v6_check.check()).unwrap(), Status::Current);
    // `remove` (the agent's `--cleanup`) takes the tables of both families: here the one left.
    assert!(ns.run(masq::remove).unwrap());
    assert!(ns.table_json("ip6", "weft").is_none(), "ip6 weft is gone");
    assert!(!ns.run(masq::remove).unwrap(), "nothing left to remove");
}

/// pod (10.244.3.2) ── host (10.244.3.1 | 198.51.100.1) ── outside (198.51.100.2), in three
/// namespaces joined by two veth pairs; the host forwards.
struct Topology {
    pod: Ns,
    host: Ns,
    outside: Ns,
}

impl Topology {
    fn new() -> Topology {
        let (pod, host, outside) = (Ns::new("pod"), Ns::new("host"), Ns::new("outside"));
        link(&host, "to-pod", &pod, "eth0");
        link(&host, "to-out", &outside, "eth0");
        host.ok("ip", &["addr", "add", "10.244.3.1/24", "dev", "to-pod"]);
        host.ok("ip", &["addr", "add", "198.51.100.1/24", "dev", "to-out"]);
        pod.ok("ip", &["addr", "add", "10.244.3.2/24", "dev", "eth0"]);
        pod.ok("ip", &["route", "add", "default", "via", "10.244.3.1"]);
        outside.ok("ip", &["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
        // A way back to the pods, so an unmasqueraded packet would arrive too (and show up).
        outside.ok("ip", &["route", "add", "10.244.0.0/16", "via", "198.51.100.1"]);
        host.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")).unwrap();
        Topology { pod, host, outside }
    }
}

/// A veth pair from `a` (named `a_name`) to `b` (named `b_name`), both up.
fn link(a: &Ns, a_name: &str, b: &Ns, b_name: &str) {
    let peer_ns = b.0.name.as_str();
    a.ok("ip", &["link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", peer_ns]);
    a.ok("ip", &["link", "set", a_name, "up"]);
    b.ok("ip", &["link", "set", b_name, "up"]);
}

/// A UDP socket bound inside `ns` (a socket stays in the namespace it was made in).
fn udp(ns: &Ns, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = ns.run(move || UdpSocket::bind(addr)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    socket
}

/// Sends one datagram from a fresh socket in `from` (a fresh source port: a new conntrack flow,
/// which is when NAT decides) to `to`; returns the source address the receiver saw.
fn source_seen(from: &Ns, to: &UdpSocket) -> std::net::IpAddr {
    let sender = udp(from, "0.0.0.0:0");
    sender.send_to(b"weft", to.local_addr().unwrap()).unwrap();
    let mut buffer = [0u8; 16];
    let (len, source) = to.recv_from(&mut buffer).expect("the datagram arrives");
    assert_eq!(&buffer[..len], b"weft");
    source.ip()
}

#[test]
fn pod_traffic_leaving_the_network_is_masqueraded() {
    let topology = Topology::new();
    let server = udp(&topology.outside, "198.51.100.2:0");
    let pod_server = udp(&topology.pod, "10.244.3.2:0");

    // Without weft's rules the pod's own address arrives: the check below can tell.
    assert_eq!(source_seen(&topology.pod, &server).to_string(), "10.244.3.2");

    install(&topology.host, NETWORK, OWN);
    assert_eq!(source_seen(&topology.pod, &server).to_string(), "198.51.100.1", "pod → outside");
    assert_eq!(source_seen(&topology.outside, &pod_server).to_string(), "198.51.100.2", "outside → own pod");

    assert!(topology.host.run(masq::remove).unwrap());
    assert_eq!(source_seen(&topology.pod, &server).to_string(), "10.244.3.2", "after remove");
}

/// `iptables -S FORWARD` in the namespace (iptables-nft: table `ip filter`).
fn iptables_forward(ns: &Ns) -> Vec<String> {
    ns.ok("iptables", &["-S", "FORWARD"]).lines().map(str::to_string).collect()
}

/// Under iptables' FORWARD DROP policy weft's accept rules go into iptables' own chain, in a shape
/// iptables lists and goes on editing; anyone else's rules there are left alone; removal takes
/// exactly weft's. Without that chain nothing is written.
#[test]
fn forward_rules_go_into_iptables_forward_chain_and_only_ours_are_removed() {
    use weft::masq::forward::{self, ForwardChange};
    let ns = Ns::new("fwd");
    let network = v4(NETWORK);
    assert_eq!(ns.run(move || forward::sync(Some(network))).unwrap(), ForwardChange::NoChain);
    assert!(ns.table_json("ip", "filter").is_none(), "weft created iptables' table");

    ns.ok("iptables", &["-P", "FORWARD", "DROP"]);
    ns.ok("iptables", &["-A", "FORWARD", "-s", "192.0.2.0/24", "-j", "ACCEPT"]);
    assert_eq!(ns.run(move || forward::sync(Some(network))).unwrap(), ForwardChange::Installed);
    let listed = iptables_forward(&ns);
    assert_eq!(listed[0], "-P FORWARD DROP", "{listed:#?}");
    assert_eq!(listed[1], "-A FORWARD -s 192.0.2.0/24 -j ACCEPT", "{listed:#?}");
    assert!(listed[2].starts_with("-A FORWARD -s 10.244.0.0/16") && listed[2].ends_with("-j ACCEPT"), "{listed:#?}");
    assert!(listed[3].starts_with("-A FORWARD -d 10.244.0.0/16") && listed[3].ends_with("-j ACCEPT"), "{listed:#?}");
    assert_eq!(listed.len(), 4, "{listed:#?}");
    let nft = ns.nft("list chain ip filter FORWARD");
    assert!(nft.contains("comment \"weft: forward from the cluster network\""), "{nft}");
    // iptables (Docker) still edits the chain with weft's rules in it.
    ns.ok("iptables", &["-I", "FORWARD", "1", "-j", "DROP", "-i", "nothing0"]);
    assert_eq!(ns.run(move || forward::sync(Some(network))).unwrap(), ForwardChange::None);

    // A hand-deleted rule of ours is put back.
    // (By number: 1 the DROP, 2 the foreign accept, 3 and 4 ours.)
    ns.ok("iptables", &["-D", "FORWARD", "4"]);
    assert_eq!(iptables_forward(&ns).len(), 4);
    assert_eq!(ns.run(move || forward::sync(Some(network))).unwrap(), ForwardChange::Installed);
    assert_eq!(iptables_forward(&ns).len(), 5);

    assert_eq!(ns.run(move || forward::sync(None)).unwrap(), ForwardChange::Removed);
    assert_eq!(
        iptables_forward(&ns),
        ["-P FORWARD DROP", "-A FORWARD -i nothing0 -j DROP", "-A FORWARD -s 192.0.2.0/24 -j ACCEPT"]
    );
    assert_eq!(ns.run(move || forward::sync(None)).unwrap(), ForwardChange::None);
    assert!(!ns.run(forward::remove).unwrap(), "nothing of weft's left to remove");
}
