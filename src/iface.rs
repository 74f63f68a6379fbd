//! Which interface other hosts reach us on, and our public IP. Selection is pure
//! ([`select`]); [`discover`] reads links, addresses and routes through [`Interfaces`] (netlink
//! on a host, memory in unit tests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::kernel::{Interfaces, KernelError};

/// A link with its addresses (the kernel's [`crate::kernel::InterfaceInfo`]).
pub use crate::kernel::InterfaceInfo as LinkInfo;

/// How to choose the external interface: the `agent` settings interface choice reads (see
/// `impl From<&AgentSection>` in `config.rs`). Empty means "not set".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceChoice {
    /// Interface names or addresses (IPv4 or IPv6), tried in order (`agent.iface`).
    pub iface: Vec<String>,
    /// Patterns over interface names and addresses (`agent.iface_regex`).
    pub iface_regex: Vec<String>,
    /// The interface that routes to this address (`agent.iface_can_reach`).
    pub iface_can_reach: String,
    /// What other hosts reach us on, when not the interface's address (`agent.public_ip`).
    pub public_ip: String,
    /// The same for IPv6, in a dual-stack network (`agent.public_ipv6`).
    pub public_ipv6: String,
}

impl InterfaceChoice {
    /// The rule [`select`] applies, in words: why the interface it picks is the one.
    pub fn rule(&self) -> String {
        if !self.iface.is_empty() {
            format!("agent.iface = {:?}", self.iface)
        } else if !self.iface_regex.is_empty() {
            format!("agent.iface_regex = {:?}", self.iface_regex)
        } else if !self.iface_can_reach.is_empty() {
            format!("the route to agent.iface_can_reach = {}", self.iface_can_reach)
        } else {
            "the default route".to_string()
        }
    }
}

/// The interface weft runs the cluster over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The interface's IPv4 address and on-link prefix, unless the host has no IPv4 there (an
    /// IPv6-only underlay).
    pub addr: Option<Ipv4Net>,
    /// Its global IPv6 address and on-link prefix, when it has one (the one `agent.iface`
    /// named, else the first).
    pub addr_v6: Option<Ipv6Net>,
    /// What other hosts use to reach this one over IPv4 (`agent.public_ip`, else `addr`).
    pub public_ip: Option<Ipv4Addr>,
    /// The same over IPv6: `agent.public_ipv6`, else the interface's first global IPv6 address.
    pub public_ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("agent.iface: none of {0:?} is an interface with an address")]
    NoMatch(Vec<String>),
    #[error("agent.iface_regex: no interface name or address matches {0:?}")]
    NoRegexMatch(Vec<String>),
    #[error("agent.iface_can_reach: no route to {0}")]
    Unreachable(IpAddr),
    #[error("no default route: set agent.iface, agent.iface_regex or agent.iface_can_reach")]
    NoDefaultRoute,
    #[error("interface {0} has no address")]
    NoAddress(String),
    #[error("reading interfaces: {0}")]
    Kernel(#[from] KernelError),
}

/// What the kernel says about routes, for the choices that need it.
#[derive(Debug, Clone, Default)]
pub struct RouteFacts {
    pub default_oif: Option<u32>,
    pub can_reach_oif: Option<u32>,
}

/// Picks the external interface as flannel does: explicit names/addresses in order, then regexes,
/// then the interface routing to `iface_can_reach`, then the default route's.
pub fn select(
    links: &[LinkInfo],
    agent: &InterfaceChoice,
    routes: &RouteFacts,
) -> Result<ExternalInterface, IfaceError> {
    // The link's address of each family: the one `want` names, else its first. A link with
    // neither is no way to other hosts; which family the network needs is judged later, by the
    // backend (an IPv6-only network needs no IPv4 address).
    let with_addr = |link: &LinkInfo, want: Option<IpAddr>| -> Option<ExternalInterface> {
        let addr = match want {
            Some(IpAddr::V4(ip)) => Some(*link.addrs.iter().find(|a| a.addr() == ip)?),
            _ => link.addrs.first().copied(),
        };
        let addr_v6 = match want {
            Some(IpAddr::V6(ip)) => Some(*link.addrs_v6.iter().find(|a| a.addr() == ip)?),
            _ => link.addrs_v6.first().copied(),
        };
        (addr.is_some() || addr_v6.is_some()).then(|| external(link, addr, addr_v6, agent))
    };
    if !agent.iface.is_empty() {
        return agent
            .iface
            .iter()
            .find_map(|wanted| match wanted.parse::<IpAddr>() {
                Ok(ip) => links.iter().find_map(|l| with_addr(l, Some(ip))),
                Err(_) => links.iter().filter(|l| &l.name == wanted).find_map(|l| with_addr(l, None)),
            })
            .ok_or_else(|| IfaceError::NoMatch(agent.iface.clone()));
    }
    if !agent.iface_regex.is_empty() {
        let patterns: Vec<regex::Regex> = agent.iface_regex.iter().filter_map(|p| regex::Regex::new(p).ok()).collect();
        for pattern in &patterns {
            for link in links {
                if pattern.is_match(&link.name) {
                    if let Some(found) = with_addr(link, None) {
                        return Ok(found);
                    }
                }
                let named = link.addrs.iter().map(|a| IpAddr::V4(a.addr()));
                let named = named.chain(link.addrs_v6.iter().map(|a| IpAddr::V6(a.addr())));
                if let Some(found) =
                    named.filter(|ip| pattern.is_match(&ip.to_string())).find_map(|ip| with_addr(link, Some(ip)))
                {
                    return Ok(found);
                }
            }
        }
        return Err(IfaceError::NoRegexMatch(agent.iface_regex.clone()));
    }
    let oif = if !agent.iface_can_reach.is_empty() {
        let target = agent.iface_can_reach.parse().map_err(|_| IfaceError::NoDefaultRoute)?;
        routes.can_reach_oif.ok_or(IfaceError::Unreachable(target))?
    } else {
        routes.default_oif.ok_or(IfaceError::NoDefaultRoute)?
    };
    let link = links.iter().find(|l| l.index == oif).ok_or(IfaceError::NoDefaultRoute)?;
    with_addr(link, None).ok_or_else(|| IfaceError::NoAddress(link.name.clone()))
}

fn external(
    link: &LinkInfo,
    addr: Option<Ipv4Net>,
    addr_v6: Option<Ipv6Net>,
    agent: &InterfaceChoice,
) -> ExternalInterface {
    ExternalInterface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        addr,
        addr_v6,
        public_ip: agent.public_ip.parse().ok().or(addr.map(|a| a.addr())),
        public_ipv6: agent.public_ipv6.parse().ok().or(addr_v6.map(|a| a.addr())),
    }
}

impl ExternalInterface {
    /// The on-link prefix of the interface in `ip`'s family: peers there are one hop away.
    /// `None` when unknown: no IPv6 address, or a /128 one (as DHCPv6 hands out, the prefix
    /// coming from router advertisements) that says nothing of the segment.
    pub fn segment_of(&self, ip: IpAddr) -> Option<IpNet> {
        match ip {
            IpAddr::V4(_) => self.addr.map(IpNet::from),
            IpAddr::V6(_) => self.addr_v6.filter(|a| a.prefix_len() < 128).map(IpNet::from),
        }
    }

    /// The public IPv4 address a network with IPv4 needs, or why there is none.
    pub fn require_public_ip(&self) -> Result<Ipv4Addr, String> {
        self.public_ip.ok_or_else(|| {
            format!(
                "the network has IPv4 but interface {} has no IPv4 address: set agent.public_ip, or agent.iface to an interface with one",
                self.name
            )
        })
    }

    /// The public IPv6 address a network with IPv6 needs, or why there is none.
    pub fn require_public_ipv6(&self) -> Result<Ipv6Addr, String> {
        self.public_ipv6.ok_or_else(|| {
            format!(
                "the network has IPv6 but interface {} has no global IPv6 address: set agent.public_ipv6",
                self.name
            )
        })
    }
}

/// Reads the host's links and routes over netlink and selects the external interface.
pub async fn discover(choice: impl Into<InterfaceChoice>) -> Result<ExternalInterface, IfaceError> {
    let kernel = crate::kernel::netlink::NetlinkKernel::new()?;
    discover_with(&kernel, &choice.into()).await
}

/// Reads links and routes from `interfaces` and selects the external interface.
pub async fn discover_with(
    interfaces: &dyn Interfaces,
    choice: &InterfaceChoice,
) -> Result<ExternalInterface, IfaceError> {
    let links = interfaces.interfaces().await?;
    let mut facts = RouteFacts { default_oif: interfaces.default_route_oif().await?, ..Default::default() };
    if let Ok(target) = choice.iface_can_reach.parse::<IpAddr>() {
        facts.can_reach_oif = interfaces.route_oif_to(target).await;
    }
    select(&links, choice, &facts)
}

/// Every address on this host's links, of both families: a peer announcing one of them as its
/// public IP would have us send its subnet's traffic to ourselves.
pub async fn host_addresses() -> Result<Vec<IpAddr>, IfaceError> {
    let kernel = crate::kernel::netlink::NetlinkKernel::new()?;
    host_addresses_with(&kernel).await
}

/// [`host_addresses`] read from `interfaces`.
pub async fn host_addresses_with(interfaces: &dyn Interfaces) -> Result<Vec<IpAddr>, IfaceError> {
    let links = interfaces.interfaces().await?;
    let v4 = links.iter().flat_map(|link| link.addrs.iter().map(|net| IpAddr::V4(net.addr())));
    let v6 = links.iter().flat_map(|link| link.addrs_v6.iter().map(|net| IpAddr::V6(net.addr())));
    Ok(v4.chain(v6).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<LinkInfo> {
        vec![
            LinkInfo {
                index: 1,
                name: "lo".into(),
                mtu: 65536,
                addrs: vec!["127.0.0.1/8".parse().unwrap()],
                addrs_v6: vec![],
            },
            LinkInfo {
                index: 2,
                name: "eth0".into(),
                mtu: 9001,
                addrs: vec!["192.0.2.10/24".parse().unwrap()],
                addrs_v6: vec![],
            },
            LinkInfo {
                index: 3,
                name: "eth1".into(),
                mtu: 1500,
                addrs: vec!["198.51.100.7/24".parse().unwrap()],
                addrs_v6: vec![],
            },
            LinkInfo { index: 4, name: "dummy0".into(), mtu: 1500, addrs: vec![], addrs_v6: vec![] },
        ]
    }

    fn agent() -> InterfaceChoice {
        InterfaceChoice::default()
    }

    #[test]
    fn default_route_interface() {
        let facts = RouteFacts { default_oif: Some(2), ..Default::default() };
        let ext = select(&links(), &agent(), &facts).unwrap();
        assert_eq!((ext.name.as_str(), ext.mtu), ("eth0", 9001));
        assert_eq!(ext.public_ip, Some(Ipv4Addr::new(192, 0, 2, 10)));
        assert!(matches!(select(&links(), &agent(), &RouteFacts::default()), Err(IfaceError::NoDefaultRoute)));
    }

    #[test]
    fn the_public_ipv6_is_the_interfaces_first_global_one_unless_configured() {
        let facts = RouteFacts { default_oif: Some(2), ..Default::default() };
        let mut links = links();
        links[1].addrs_v6 = vec!["2001:db8::10/64".parse().unwrap(), "2001:db8::11/64".parse().unwrap()];
        let ext = select(&links, &agent(), &facts).unwrap();
        assert_eq!(ext.public_ipv6, Some("2001:db8::10".parse().unwrap()));
        let set = InterfaceChoice { public_ipv6: "2001:db8::99".into(), ..agent() };
        assert_eq!(select(&links, &set, &facts).unwrap().public_ipv6, Some("2001:db8::99".parse().unwrap()));
        let none = select(&self::links(), &agent(), &facts).unwrap();
        assert!(none.require_public_ipv6().unwrap_err().contains("agent.public_ipv6"));
    }

    #[test]
    fn explicit_names_and_addresses_in_order() {
        let facts = RouteFacts { default_oif: Some(2), ..Default::default() };
        let a = InterfaceChoice { iface: vec!["dummy0".into(), "nope".into(), "198.51.100.7".into()], ..agent() };
        assert_eq!(select(&links(), &a, &facts).unwrap().name, "eth1");
        let a = InterfaceChoice { iface: vec!["nope".into()], ..agent() };
        assert!(select(&links(), &a, &facts).unwrap_err().to_string().contains("nope"));
    }

    /// An IPv6 address names its link too; the link's IPv4 address still carries the cluster,
    /// and the named IPv6 address is the one published.
    #[test]
    fn an_ipv6_address_names_its_interface() {
        let facts = RouteFacts { default_oif: Some(2), ..Default::default() };
        let mut links = links();
        links[2].addrs_v6 = vec!["2001:db8:1::7/64".parse().unwrap(), "2001:db8:2::7/64".parse().unwrap()];
        let a = InterfaceChoice { iface: vec!["2001:db8:2::7".into()], ..agent() };
        let ext = select(&links, &a, &facts).unwrap();
        assert_eq!((ext.name.as_str(), ext.addr), ("eth1", Some("198.51.100.7/24".parse().unwrap())));
        assert_eq!(ext.addr_v6, Some("2001:db8:2::7/64".parse().unwrap()));
        assert_eq!(ext.public_ipv6, Some("2001:db8:2::7".parse().unwrap()));
        assert_eq!(ext.segment_of("2001:db8:2::9".parse().unwrap()), Some("2001:db8:2::7/64".parse().unwrap()));
        let lone = ExternalInterface { addr_v6: Some("2001:db8:2::7/128".parse().unwrap()), ..ext };
        assert_eq!(lone.segment_of("2001:db8:2::9".parse().unwrap()), None, "a /128 tells no segment");
        let a = InterfaceChoice { iface: vec!["2001:db8:9::1".into()], ..agent() };
        assert!(select(&links, &a, &facts).is_err(), "no link holds it");
    }

    #[test]
    fn regex_and_can_reach() {
        let a = InterfaceChoice { iface_regex: vec!["^eth1$".into()], ..agent() };
        assert_eq!(select(&links(), &a, &RouteFacts::default()).unwrap().name, "eth1");
        let a = InterfaceChoice { iface_regex: vec![r"^192\.0\.2\.".into()], ..agent() };
        assert_eq!(select(&links(), &a, &RouteFacts::default()).unwrap().name, "eth0");
        let a = InterfaceChoice { iface_can_reach: "198.51.100.99".into(), ..agent() };
        let facts = RouteFacts { default_oif: Some(2), can_reach_oif: Some(3) };
        assert_eq!(select(&links(), &a, &facts).unwrap().name, "eth1");
    }

    #[test]
    fn public_ip_overrides() {
        let a = InterfaceChoice { public_ip: "203.0.113.5".into(), ..agent() };
        let facts = RouteFacts { default_oif: Some(2), ..Default::default() };
        let ext = select(&links(), &a, &facts).unwrap();
        assert_eq!(ext.public_ip, Some(Ipv4Addr::new(203, 0, 113, 5)));
        assert_eq!(ext.addr.map(|a| a.addr()), Some(Ipv4Addr::new(192, 0, 2, 10)));
    }

    /// A host whose underlay is IPv6 only: its interface is chosen by the default route (IPv6's
    /// when there is no IPv4 one), by name, by a pattern over its IPv6 address; it has no IPv4
    /// address to publish, and says so to a network that needs one.
    #[test]
    fn an_interface_with_only_ipv6_is_chosen_and_publishes_no_ipv4() {
        let mut links = links();
        links.push(LinkInfo {
            index: 5,
            name: "v6only".into(),
            mtu: 1500,
            addrs: vec![],
            addrs_v6: vec!["2001:db8:7::5/64".parse().unwrap()],
        });
        let facts = RouteFacts { default_oif: Some(5), ..Default::default() };
        let ext = select(&links, &agent(), &facts).unwrap();
        assert_eq!((ext.name.as_str(), ext.addr, ext.public_ip), ("v6only", None, None));
        assert_eq!(ext.public_ipv6, Some("2001:db8:7::5".parse().unwrap()));
        assert_eq!(ext.segment_of("198.51.100.1".parse().unwrap()), None, "no IPv4 segment to judge by");
        assert!(ext.require_public_ip().unwrap_err().contains("no IPv4 address"));
        let by_name = InterfaceChoice { iface: vec!["v6only".into()], ..agent() };
        assert_eq!(select(&links, &by_name, &RouteFacts::default()).unwrap().index, 5);
        let by_pattern = InterfaceChoice { iface_regex: vec![r"^2001:db8:7::".into()], ..agent() };
        assert_eq!(select(&links, &by_pattern, &RouteFacts::default()).unwrap().index, 5);
        // A link with no address at all is still no choice.
        let none = InterfaceChoice { iface: vec!["dummy0".into()], ..agent() };
        assert!(select(&links, &none, &RouteFacts::default()).is_err());
    }

    #[tokio::test]
    async fn discovers_through_the_interfaces_seam() {
        let kernel = crate::kernel::memory::MemoryKernel::default();
        *kernel.interfaces.lock().unwrap() = links();
        let err = discover_with(&kernel, &agent()).await.unwrap_err();
        assert!(matches!(err, IfaceError::NoDefaultRoute), "{err}");
        *kernel.default_oif.lock().unwrap() = Some(2);
        assert_eq!(discover_with(&kernel, &agent()).await.unwrap().name, "eth0");
        let reach = InterfaceChoice { iface_can_reach: "198.51.100.99".into(), ..agent() };
        let err = discover_with(&kernel, &reach).await.unwrap_err();
        assert!(matches!(err, IfaceError::Unreachable(_)), "{err}");
        kernel.reach_oif.lock().unwrap().insert("198.51.100.99".parse().unwrap(), 3);
        assert_eq!(discover_with(&kernel, &reach).await.unwrap().name, "eth1");
    }

    #[test]
    fn the_rule_is_the_first_setting_select_honours() {
        assert_eq!(agent().rule(), "the default route");
        let a = InterfaceChoice { iface: vec!["eth1".into()], iface_regex: vec!["^e".into()], ..agent() };
        assert_eq!(a.rule(), "agent.iface = [\"eth1\"]");
        let a = InterfaceChoice { iface_regex: vec!["^e".into()], iface_can_reach: "192.0.2.1".into(), ..agent() };
        assert_eq!(a.rule(), "agent.iface_regex = [\"^e\"]");
        let a = InterfaceChoice { iface_can_reach: "192.0.2.1".into(), ..agent() };
        assert_eq!(a.rule(), "the route to agent.iface_can_reach = 192.0.2.1");
    }

    #[tokio::test]
    async fn host_addresses_are_every_links() {
        let kernel = crate::kernel::memory::MemoryKernel::default();
        *kernel.interfaces.lock().unwrap() = links();
        let mut want: Vec<Ipv4Addr> = links().iter().flat_map(|l| l.addrs.iter().map(|a| a.addr())).collect();
        let mut got = host_addresses_with(&kernel).await.unwrap();
        want.sort();
        got.sort();
        assert_eq!(got, want);
        assert!(got.len() >= 2, "{got:?}");
    }
}
