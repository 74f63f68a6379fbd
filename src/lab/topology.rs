//! The lab's shape as pure data: which namespaces exist, what they are called and which addresses
//! they carry. Nothing here touches the kernel, so names and addresses are unit-tested.
//!
//! Every name starts with the topology's prefix (`weft-lab-` for `weft lab`, a per-test prefix
//! for the integration harness): teardown removes exactly the namespaces with that prefix.
//! Interface names never carry the prefix: each namespace has its own, so they stay short.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The prefix of everything `weft lab` makes.
pub const LAB_PREFIX: &str = "weft-lab-";
/// The underlay every host sits on: a documentation range (RFC 5737), never routed anywhere.
pub const UNDERLAY: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 0), 24) {
    Ok(net) => net,
    Err(_) => panic!("a /24 is a valid prefix"),
};
/// Host `i` (1-based) gets `198.51.100.(HOST_BASE + i)`.
const HOST_BASE: u8 = 10;
/// The service namespace (etcd and the like for tests) sits at the top of the underlay.
const SERVICE_HOST: u8 = 250;
/// Enough for a demo and far from the service address.
pub const MAX_HOSTS: usize = 200;
/// The underlay's MTU: an ordinary Ethernet, so vxlan's MTU is the familiar 1450.
pub const UNDERLAY_MTU: u32 = 1500;
/// The bridge in the switch namespace that joins every host.
pub const SWITCH_BRIDGE: &str = "br0";
/// A host's interface to the switch, inside the host's namespace.
pub const HOST_IFACE: &str = "eth0";

/// A namespace joined to the switch: a host or the service namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Short name used in output and state paths: `h1`, `svc`.
    pub name: String,
    /// The network namespace: `<prefix>h1`.
    pub ns: String,
    /// Its address on the underlay.
    pub addr: Ipv4Addr,
    /// Its veth end in the switch namespace (unique there, at most 15 bytes).
    pub switch_port: String,
}

impl Node {
    /// The address with the underlay's prefix length, as configured on `eth0`.
    pub fn addr_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.addr, UNDERLAY.prefix_len()).expect("underlay prefix is valid")
    }

    /// The node's IPv6 underlay address in a dual-stack lab: 2001:db8::<its IPv4 last octet>/64
    /// (a documentation prefix, as 198.51.100.0/24 is).
    pub fn addr_v6(&self) -> ipnet::Ipv6Net {
        let last = u16::from(self.addr.octets()[3]);
        ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last), 64).expect("a /64")
    }
}

/// N hosts and a switch, all named with one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub prefix: String,
    pub hosts: usize,
}

impl Topology {
    /// A topology of `hosts` hosts; the count must be between 1 and [`MAX_HOSTS`].
    pub fn new(prefix: &str, hosts: usize) -> Result<Topology, String> {
        if hosts == 0 || hosts > MAX_HOSTS {
            return Err(format!("hosts = {hosts}: must be between 1 and {MAX_HOSTS}"));
        }
        Ok(Topology { prefix: prefix.to_string(), hosts })
    }

    /// The topology of `weft lab`.
    pub fn lab(hosts: usize) -> Result<Topology, String> {
        Topology::new(LAB_PREFIX, hosts)
    }

    /// The namespace holding the bridge.
    pub fn switch_ns(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// Host `i`, counted from 1.
    pub fn host(&self, i: usize) -> Node {
        assert!((1..=self.hosts).contains(&i), "host {i} of a {}-host topology", self.hosts);
        let name = format!("h{i}");
        Node {
            ns: format!("{}{name}", self.prefix),
            addr: Ipv4Addr::new(198, 51, 100, HOST_BASE + i as u8),
            switch_port: format!("port-{name}"),
            name,
        }
    }

    pub fn host_nodes(&self) -> Vec<Node> {
        (1..=self.hosts).map(|i| self.host(i)).collect()
    }

    /// The namespace for services the hosts need (an etcd for tests): on the same switch.
    pub fn service(&self) -> Node {
        Node {
            name: "svc".into(),
            ns: format!("{}svc", self.prefix),
            addr: Ipv4Addr::new(198, 51, 100, SERVICE_HOST),
            switch_port: "port-svc".into(),
        }
    }

    /// The pod namespace behind host `node`.
    pub fn pod_ns(&self, node: &Node) -> String {
        format!("{}-pod", node.ns)
    }

    /// Which host a namespace name is, if it is one of this prefix's hosts (`weft-lab-h2` → 2).
    pub fn host_index(prefix: &str, ns: &str) -> Option<usize> {
        let digits = ns.strip_prefix(prefix)?.strip_prefix('h')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().filter(|i| (1..=MAX_HOSTS).contains(i))
    }
}

/// A pod's addresses inside a host's subnet: the bridge takes the first address (what
/// subnet.env's `FLANNEL_SUBNET` names), the pod the second and routes through the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddrs {
    /// On `cni0` in the host namespace: `<subnet>.1/len`.
    pub gateway: Ipv4Net,
    /// On `eth0` in the pod namespace: `<subnet>.2/len`.
    pub pod: Ipv4Net,
}

impl PodAddrs {
    /// The addresses for `subnet`; it needs room for both (a /30 or larger).
    pub fn for_subnet(subnet: Ipv4Net) -> Result<PodAddrs, String> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(format!("{subnet}: too small for a bridge and a pod"));
        }
        let first = u32::from(subnet.network());
        let at = |offset: u32| {
            Ipv4Net::new(Ipv4Addr::from(first + offset), subnet.prefix_len())
                .expect("prefix length taken from a valid subnet")
        };
        Ok(PodAddrs { gateway: at(1), pod: at(2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_and_addresses() {
        let t = Topology::lab(3).unwrap();
        assert_eq!(t.switch_ns(), "weft-lab-sw");
        let h1 = t.host(1);
        assert_eq!(h1.ns, "weft-lab-h1");
        assert_eq!(h1.name, "h1");
        assert_eq!(h1.addr, Ipv4Addr::new(198, 51, 100, 11));
        assert_eq!(h1.addr_net().to_string(), "198.51.100.11/24");
        assert_eq!(t.host(3).addr, Ipv4Addr::new(198, 51, 100, 13));
        assert_eq!(t.pod_ns(&h1), "weft-lab-h1-pod");
        assert_eq!(t.service().addr, Ipv4Addr::new(198, 51, 100, 250));
        let names: Vec<_> = t.host_nodes().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["h1", "h2", "h3"]);
    }

    #[test]
    fn every_address_stays_in_the_documentation_range_and_apart() {
        let t = Topology::lab(MAX_HOSTS).unwrap();
        let mut seen = std::collections::HashSet::new();
        for node in t.host_nodes().into_iter().chain([t.service()]) {
            assert!(UNDERLAY.contains(&node.addr), "{node:?}");
            assert_ne!(node.addr, UNDERLAY.network());
            assert_ne!(node.addr, UNDERLAY.broadcast());
            assert!(seen.insert(node.addr), "{} twice", node.addr);
            assert!(node.switch_port.len() <= 15, "{}", node.switch_port);
        }
    }

    #[test]
    fn host_counts_are_bounded() {
        assert!(Topology::lab(0).is_err());
        assert!(Topology::lab(MAX_HOSTS + 1).is_err());
        assert!(Topology::lab(1).is_ok());
    }

    #[test]
    fn host_namespaces_are_recognised() {
        assert_eq!(Topology::host_index(LAB_PREFIX, "weft-lab-h2"), Some(2));
        assert_eq!(Topology::host_index(LAB_PREFIX, "weft-lab-h12"), Some(12));
        for other in ["weft-lab-sw", "weft-lab-h2-pod", "weft-lab-h", "weft-lab-h0", "weft-lab-hx", "other-h1"] {
            assert_eq!(Topology::host_index(LAB_PREFIX, other), None, "{other}");
        }
        assert_eq!(Topology::host_index("wt7-1-", "wt7-1-h3"), Some(3));
    }

    #[test]
    fn pod_addresses() {
        let p = PodAddrs::for_subnet("10.244.7.0/24".parse().unwrap()).unwrap();
        assert_eq!(p.gateway.to_string(), "10.244.7.1/24");
        assert_eq!(p.pod.to_string(), "10.244.7.2/24");
        // subnet.env writes the subnet as its first address: accepted as well.
        let p = PodAddrs::for_subnet("10.244.7.1/24".parse().unwrap()).unwrap();
        assert_eq!(p.pod.to_string(), "10.244.7.2/24");
        let p = PodAddrs::for_subnet("10.9.0.16/28".parse().unwrap()).unwrap();
        assert_eq!(p.gateway.to_string(), "10.9.0.17/28");
        assert!(PodAddrs::for_subnet("10.9.0.4/31".parse().unwrap()).is_err());
    }
}
