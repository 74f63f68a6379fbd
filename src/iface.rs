//! Which interface other hosts reach us on, and our public IP. Selection is pure
//! ([`select`]); [`discover`] reads links, addresses and routes over netlink.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::RouteMessageBuilder;

use crate::config::AgentSection;

/// A link as netlink shows it, with its IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub addrs: Vec<Ipv4Net>,
}

/// The interface weft runs the cluster over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The interface's own address and on-link prefix.
    pub addr: Ipv4Net,
    /// What other hosts use to reach this one (`agent.public_ip`, else `addr`).
    pub public_ip: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("agent.iface: none of {0:?} is an interface with an IPv4 address")]
    NoMatch(Vec<String>),
    #[error("agent.iface_regex: no interface name or address matches {0:?}")]
    NoRegexMatch(Vec<String>),
    #[error("agent.iface_can_reach: no route to {0}")]
    Unreachable(IpAddr),
    #[error("no default route: set agent.iface, agent.iface_regex or agent.iface_can_reach")]
    NoDefaultRoute,
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
}

/// What the kernel says about routes, for the choices that need it.
#[derive(Debug, Clone, Default)]
pub struct RouteFacts {
    pub default_oif: Option<u32>,
    pub can_reach_oif: Option<u32>,
}

/// Picks the external interface as flannel does: explicit names/addresses in order, then regexes,
/// then the interface routing to `iface_can_reach`, then the default route's.
pub fn select(links: &[LinkInfo], agent: &AgentSection, routes: &RouteFacts) -> Result<ExternalInterface, IfaceError> {
    let with_addr = |link: &LinkInfo, want: Option<Ipv4Addr>| -> Option<ExternalInterface> {
        let addr = match want {
            Some(ip) => *link.addrs.iter().find(|a| a.addr() == ip)?,
            None => *link.addrs.first()?,
        };
        Some(external(link, addr, agent))
    };
    if !agent.iface.is_empty() {
        return agent
            .iface
            .iter()
            .find_map(|wanted| match wanted.parse::<Ipv4Addr>() {
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
                if let Some(a) = link.addrs.iter().find(|a| pattern.is_match(&a.addr().to_string())) {
                    return Ok(external(link, *a, agent));
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

fn external(link: &LinkInfo, addr: Ipv4Net, agent: &AgentSection) -> ExternalInterface {
    ExternalInterface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        addr,
        public_ip: agent.public_ip.parse().unwrap_or(addr.addr()),
    }
}

/// Reads the host's links and routes and selects the external interface.
pub async fn discover(agent: &AgentSection) -> Result<ExternalInterface, IfaceError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(connection);
    let result = async {
        let links = read_links(&handle).await?;
        let mut facts = RouteFacts { default_oif: default_route_oif(&handle).await?, ..Default::default() };
        if let Ok(target) = agent.iface_can_reach.parse::<Ipv4Addr>() {
            facts.can_reach_oif = route_oif_to(&handle, target).await;
        }
        select(&links, agent, &facts)
    }
    .await;
    task.abort();
    result
}

/// Every link with its IPv4 addresses.
pub async fn read_links(handle: &rtnetlink::Handle) -> Result<Vec<LinkInfo>, IfaceError> {
    let mut links = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await? {
        let mut link = LinkInfo { index: msg.header.index, name: String::new(), mtu: 0, addrs: Vec::new() };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                _ => {}
            }
        }
        links.push(link);
    }
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream.try_next().await? {
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let (Some(ip), Some(link)) = (local, links.iter_mut().find(|l| l.index == msg.header.index)) else {
            continue;
        };
        if let Ok(net) = Ipv4Net::new(ip, msg.header.prefix_len) {
            link.addrs.push(net);
        }
    }
    Ok(links)
}

async fn default_route_oif(handle: &rtnetlink::Handle) -> Result<Option<u32>, IfaceError> {
    let mut routes = handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    while let Some(route) = routes.try_next().await? {
        if route.header.destination_prefix_length != 0 || route.header.table != 254 {
            continue;
        }
        if let Some(oif) = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(oif) => Some(*oif),
            _ => None,
        }) {
            return Ok(Some(oif));
        }
    }
    Ok(None)
}

async fn route_oif_to(handle: &rtnetlink::Handle, target: Ipv4Addr) -> Option<u32> {
    let query = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(target, 32).build();
    let mut routes = handle.route().get(query).execute();
    let route = routes.try_next().await.ok()??;
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(oif) => Some(*oif),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<LinkInfo> {
        vec![
            LinkInfo { index: 1, name: "lo".into(), mtu: 65536, addrs: vec!["127.0.0.1/8".parse().unwrap()] },
            LinkInfo { index: 2, name: "eth0".into(), mtu: 9001, addrs: vec!["192.0.2.10/24".parse().unwrap()] },
            LinkInfo { index: 3, name: "eth1".into(), mtu: 1500, addrs: vec!["198.51.100.7/24".parse().unwrap()] },
            LinkInfo { index: 4, name: "dummy0".into(), mtu: 1500, addrs: vec![] },
        ]
    }

    fn agent() -> AgentSection {
        AgentSection::default()
    }

    #[test]
    fn default_route_interface() {
        let facts = RouteFacts { default_oif: Some(2), ..Default::default() };
        let ext = select(&links(), &agent(), &facts).unwrap();
        assert_eq!((ext.name.as_str(), ext.mtu), ("eth0", 9001));
        assert_eq!(ext.public_ip, Ipv4Addr::new(192, 0, 2, 10));
        assert!(matches!(select(&links(), &agent(), &RouteFacts::default()), Err(IfaceError::NoDefaultRoute)));
    }

    #[test]
    fn explicit_names_and_addresses_in_order() {
        let facts = RouteFacts { default_oif: Some(2), ..Default::default() };
        let a = AgentSection { iface: vec!["dummy0".into(), "nope".into(), "198.51.100.7".into()], ..agent() };
        assert_eq!(select(&links(), &a, &facts).unwrap().name, "eth1");
        let a = AgentSection { iface: vec!["nope".into()], ..agent() };
        assert!(select(&links(), &a, &facts).unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn regex_and_can_reach() {
        let a = AgentSection { iface_regex: vec!["^eth1$".into()], ..agent() };
        assert_eq!(select(&links(), &a, &RouteFacts::default()).unwrap().name, "eth1");
        let a = AgentSection { iface_regex: vec![r"^192\.0\.2\.".into()], ..agent() };
        assert_eq!(select(&links(), &a, &RouteFacts::default()).unwrap().name, "eth0");
        let a = AgentSection { iface_can_reach: "198.51.100.99".into(), ..agent() };
        let facts = RouteFacts { default_oif: Some(2), can_reach_oif: Some(3) };
        assert_eq!(select(&links(), &a, &facts).unwrap().name, "eth1");
    }

    #[test]
    fn public_ip_overrides() {
        let a = AgentSection { public_ip: "203.0.113.5".into(), ..agent() };
        let facts = RouteFacts { default_oif: Some(2), ..Default::default() };
        let ext = select(&links(), &a, &facts).unwrap();
        assert_eq!(ext.public_ip, Ipv4Addr::new(203, 0, 113, 5));
        assert_eq!(ext.addr.addr(), Ipv4Addr::new(192, 0, 2, 10));
    }
}
