//! The host's own checks: kernel, interface, MTU, the vxlan port. Pure: each judge takes the
//! facts [`super::gather`] read.

use crate::backend::vxlan::{VXLAN_OVERHEAD, VXLAN_V6_OVERHEAD};
use crate::iface::ExternalInterface;
use crate::kernel::IpFamily;
use crate::network::backend::{BackendConfig, VxlanConfig};
use crate::network::Families;

use super::Check;

/// The smallest MTU IPv4 promises every host can take (RFC 791): pods below it break.
const MIN_POD_MTU: u32 = 576;
/// IPv6's minimum link MTU (RFC 8200).
const MIN_POD_MTU_V6: u32 = 1280;

/// The vxlan device this backend runs, if any: vxlan itself, or a cloud backend's overflow
/// (which runs vxlan's defaults).
pub fn vxlan_of(backend: &BackendConfig) -> Option<VxlanConfig> {
    match backend {
        BackendConfig::Vxlan(config) => Some(config.clone()),
        other if other.overflow().is_some() => Some(VxlanConfig::default()),
        _ => None,
    }
}

/// Whether weft installs peer routes in the kernel (vxlan, host-gw, a cloud's overflow).
pub fn kernel_routes(backend: &BackendConfig) -> bool {
    matches!(backend, BackendConfig::HostGw(_)) || vxlan_of(backend).is_some()
}

/// Whether weft routes peers through the kernel on this backend (not `alloc`).
pub fn forwards(backend: &BackendConfig) -> bool {
    !matches!(backend, BackendConfig::Alloc(_))
}

/// Where the kernel's vxlan driver is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VxlanModule {
    /// In the running kernel (loaded or built in).
    Loaded,
    /// Not loaded, but the kernel has it as a module: creating the device loads it.
    Loadable,
    /// Neither: `release` is the running kernel's.
    Missing { release: String },
}

pub fn vxlan_module(module: &VxlanModule) -> Check {
    const NAME: &str = "kernel.vxlan";
    match module {
        VxlanModule::Loaded => Check::pass(NAME, "the vxlan driver is in the running kernel"),
        VxlanModule::Loadable => Check::pass(NAME, "the vxlan module is installed (loaded when weft makes its device)"),
        VxlanModule::Missing { release } => Check::fail(
            NAME,
            format!("kernel {release} has no vxlan module"),
            format!("install the kernel's extra modules (Debian/Ubuntu: apt install linux-modules-extra-{release}), then `modprobe vxlan`"),
        ),
    }
}

/// `net.ipv4.ip_forward`, or why it could not be read.
pub fn ip_forward(family: IpFamily, on: &Result<bool, String>) -> Check {
    let (name, key) = match family {
        IpFamily::V4 => ("kernel.ip_forward", "net.ipv4.ip_forward"),
        IpFamily::V6 => ("kernel.ipv6_forwarding", "net.ipv6.conf.all.forwarding"),
    };
    match on {
        Ok(true) => Check::pass(name, format!("{key} = 1")),
        Ok(false) => Check::fail(
            name,
            format!("{key} = 0: this host does not forward {family} pod traffic (the agent turns it on at start, if it may)"),
            format!("sysctl -w {key}=1 (and {key} = 1 in /etc/sysctl.d/ to keep it)"),
        ),
        Err(e) => Check::fail(name, format!("cannot read {key}: {e}"), "run weft doctor as root on the host"),
    }
}

/// Reverse-path filtering on the chosen interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpFilter {
    pub iface: String,
    /// `net.ipv4.conf.all.rp_filter`.
    pub all: u8,
    /// `net.ipv4.conf.<iface>.rp_filter`.
    pub iface_value: u8,
    /// Whether the default route leaves by this interface.
    pub default_route_here: bool,
}

/// Strict (1) reverse-path filtering drops a packet whose source the host would reach by another
/// interface. The kernel applies the larger of `all` and the interface's value. It matters when
/// the default route leaves by another interface than the chosen one: packets of peers' pods
/// arrive on the chosen interface while their reverse path is the default route's.
pub fn rp_filter(facts: &RpFilter) -> Check {
    const NAME: &str = "kernel.rp_filter";
    let effective = facts.all.max(facts.iface_value);
    let shown = format!(
        "rp_filter on {} is {effective} ({}; all = {}, {} = {})",
        facts.iface,
        match effective {
            0 => "off",
            1 => "strict",
            _ => "loose",
        },
        facts.all,
        facts.iface,
        facts.iface_value
    );
    if effective != 1 {
        return Check::pass(NAME, shown);
    }
    if facts.default_route_here {
        return Check::pass(NAME, format!("{shown}; harmless while {} carries the default route", facts.iface));
    }
    Check::fail(
        NAME,
        format!(
            "{shown} and the default route does not leave by {}: packets from peers' pods may be dropped",
            facts.iface
        ),
        format!(
            "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{}.rp_filter=2 (loose), and keep it in /etc/sysctl.d/",
            facts.iface
        ),
    )
}

/// Nexthop objects: weft uses them for peer routes where the kernel has them (5.3+), and plain
/// routes otherwise, so either answer passes; the detail says which this host gets.
pub fn nexthops(supported: bool, disabled: bool) -> Check {
    const NAME: &str = "kernel.nexthops";
    let detail = match (disabled, supported) {
        (true, _) => "not used: WEFT_NO_NEXTHOP is set, peers get plain routes",
        (false, true) => "supported: peer routes go through nexthop objects",
        (false, false) => "not supported by this kernel (5.3+ has them): peers get plain routes",
    };
    Check::pass(NAME, detail)
}

/// The interface's addresses, each family it has.
fn addresses(ext: &ExternalInterface) -> String {
    let v4 = ext.addr.map(|a| a.to_string());
    let all: Vec<String> = v4.into_iter().chain(ext.addr_v6.map(|a| a.to_string())).collect();
    all.join(", ")
}

/// What the host publishes, each family it has.
fn publics(ext: &ExternalInterface) -> String {
    let v4 = ext.public_ip.map(|ip| ip.to_string());
    let all: Vec<String> = v4.into_iter().chain(ext.public_ipv6.map(|ip| ip.to_string())).collect();
    all.join(", ")
}

/// The interface weft would choose, and the rule that chose it; `Err` is why none was found.
/// With the network's `families` known, an interface without an address of one of them fails:
/// the agent would refuse to start there.
pub fn interface(rule: &str, found: &Result<ExternalInterface, String>, families: Option<Families>) -> Check {
    const NAME: &str = "interface";
    match found {
        Ok(ext) => {
            let shown = format!(
                "{} ({}, public IP {}, MTU {}), chosen by {rule}",
                ext.name,
                addresses(ext),
                publics(ext),
                ext.mtu
            );
            let missing = match families {
                Some(f) if f.ipv4 && ext.public_ip.is_none() => Some(("IPv4", "agent.public_ip")),
                Some(f) if f.ipv6 && ext.public_ipv6.is_none() => Some(("IPv6", "agent.public_ipv6")),
                _ => None,
            };
            match missing {
                Some((family, key)) => Check::fail(
                    NAME,
                    format!("{shown}: the network has {family} but the interface has no {family} address"),
                    format!("set {key}, or agent.iface to an interface with an {family} address"),
                ),
                None => Check::pass(NAME, shown),
            }
        }
        Err(e) => Check::fail(
            NAME,
            format!("no interface found by {rule}: {e}"),
            "set agent.iface (an interface name or address), agent.iface_regex or agent.iface_can_reach",
        ),
    }
}

/// The pods' MTU against the interface's: vxlan takes 50 bytes of each packet (70 over its IPv6
/// device, which a network with IPv6 has: pods get what fits both); host-gw and the cloud
/// backends carry packets as they are. `None` for alloc (it moves no packet).
pub fn mtu(ext: &ExternalInterface, backend: &BackendConfig, families: Families) -> Option<Check> {
    const NAME: &str = "mtu";
    if !forwards(backend) {
        return None;
    }
    let vxlan = vxlan_of(backend);
    let overhead = match vxlan {
        Some(_) if families.ipv6 => VXLAN_V6_OVERHEAD,
        Some(_) => VXLAN_OVERHEAD,
        None => 0,
    };
    let (least, least_of) = if families.ipv6 { (MIN_POD_MTU_V6, "IPv6") } else { (MIN_POD_MTU, "IPv4") };
    let configured = vxlan.as_ref().map(|v| v.mtu).filter(|mtu| *mtu > 0);
    let pod_mtu = configured.unwrap_or(ext.mtu.saturating_sub(overhead));
    let most = ext.mtu.saturating_sub(overhead);
    let shown = format!(
        "{} MTU {}, {} overhead {overhead} bytes: pods get MTU {pod_mtu}",
        ext.name,
        ext.mtu,
        backend.type_name()
    );
    Some(if configured.is_some_and(|mtu| mtu > most) {
        Check::fail(
            NAME,
            format!("{shown}, more than the {most} that fit: packets are fragmented or dropped"),
            format!("set network.backend.mtu = {most} (or 0: the interface's MTU less {overhead})"),
        )
    } else if pod_mtu < least {
        Check::fail(
            NAME,
            format!("{shown}, below {least_of}'s minimum of {least}"),
            format!("raise the MTU of {} (ip link set {} mtu 1500) or choose another agent.iface", ext.name, ext.name),
        )
    } else {
        Check::pass(NAME, shown)
    })
}

/// Who holds the vxlan UDP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    Free,
    /// Taken: by weft's own device `own_device` when it exists (it holds the port while it runs).
    Taken {
        own_device: Option<String>,
    },
    /// Binding failed otherwise (permissions...).
    Unknown(String),
}

pub fn udp_port(port: u16, state: &PortState) -> Check {
    const NAME: &str = "udp_port";
    match state {
        PortState::Free => Check::pass(NAME, format!("UDP {port} is free for the vxlan device")),
        PortState::Taken { own_device: Some(device) } => {
            Check::pass(NAME, format!("UDP {port} is held by weft's own {device}"))
        }
        PortState::Taken { own_device: None } => Check::fail(
            NAME,
            format!("UDP {port} is taken by another socket or vxlan device: weft's device cannot bind it"),
            format!(
                "stop what holds it (`ss -ulpn 'sport = :{port}'`, `ip -d link show type vxlan`) or set network.backend.port"
            ),
        ),
        PortState::Unknown(e) => Check::fail(
            NAME,
            format!("cannot tell whether UDP {port} is free: {e}"),
            "run weft doctor as root on the host",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::backend::{AwsVpcConfig, NoOptions, Overflow};

    fn ext(mtu: u32) -> ExternalInterface {
        ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu,
            addr: Some("192.0.2.10/24".parse().unwrap()),
            addr_v6: None,
            public_ip: Some("192.0.2.10".parse().unwrap()),
            public_ipv6: None,
        }
    }

    fn vxlan(mtu: u32) -> BackendConfig {
        BackendConfig::Vxlan(VxlanConfig { mtu, ..VxlanConfig::default() })
    }

    #[test]
    fn vxlan_runs_for_vxlan_and_the_cloud_overflow_only() {
        assert_eq!(vxlan_of(&vxlan(0)).map(|v| v.port), Some(8472));
        let aws = |overflow| BackendConfig::AwsVpc(AwsVpcConfig { overflow, ..AwsVpcConfig::default() });
        assert!(vxlan_of(&aws(None)).is_none());
        assert_eq!(vxlan_of(&aws(Some(Overflow::Vxlan))), Some(VxlanConfig::default()));
        assert!(vxlan_of(&BackendConfig::HostGw(NoOptions {})).is_none());
    }

    #[test]
    fn vxlan_module() {
        assert!(super::vxlan_module(&VxlanModule::Loaded).ok);
        assert!(super::vxlan_module(&VxlanModule::Loadable).ok);
        let missing = super::vxlan_module(&VxlanModule::Missing { release: "6.1.0-9-cloud-amd64".into() });
        assert!(!missing.ok);
        assert!(missing.fix.unwrap().contains("linux-modules-extra-6.1.0-9-cloud-amd64"));
    }

    #[test]
    fn ip_forward() {
        assert!(super::ip_forward(IpFamily::V4, &Ok(true)).ok);
        let off = super::ip_forward(IpFamily::V4, &Ok(false));
        assert!(!off.ok && off.fix.unwrap().starts_with("sysctl -w net.ipv4.ip_forward=1"));
        assert!(!super::ip_forward(IpFamily::V4, &Err("permission denied".into())).ok);
        let off6 = super::ip_forward(IpFamily::V6, &Ok(false));
        assert_eq!(off6.name, "kernel.ipv6_forwarding");
        assert!(!off6.ok && off6.fix.unwrap().starts_with("sysctl -w net.ipv6.conf.all.forwarding=1"));
    }

    #[test]
    fn strict_rp_filter_fails_only_off_the_default_route() {
        let facts = |all, iface_value, default_route_here| RpFilter {
            iface: "eth1".into(),
            all,
            iface_value,
            default_route_here,
        };
        assert!(rp_filter(&facts(0, 0, false)).ok);
        assert!(rp_filter(&facts(2, 1, false)).ok, "loose wins: the larger value applies");
        assert!(rp_filter(&facts(1, 0, true)).ok);
        let strict = rp_filter(&facts(0, 1, false));
        assert!(!strict.ok, "{strict:?}");
        assert!(strict.detail.contains("strict"), "{}", strict.detail);
        assert!(strict.fix.unwrap().contains("net.ipv4.conf.eth1.rp_filter=2"));
    }

    #[test]
    fn nexthops_pass_either_way_and_say_which() {
        assert!(nexthops(true, false).detail.starts_with("supported"));
        assert!(nexthops(false, false).ok);
        assert!(nexthops(true, true).detail.starts_with("not used"));
    }

    #[test]
    fn interface_says_why() {
        let found = interface("the default route", &Ok(ext(1500)), Some(Families::IPV4));
        assert!(found.ok);
        assert_eq!(found.detail, "eth0 (192.0.2.10/24, public IP 192.0.2.10, MTU 1500), chosen by the default route");
        let none = interface("agent.iface = [\"eth9\"]", &Err("no match".into()), None);
        assert!(!none.ok && none.fix.unwrap().contains("agent.iface"));
        // A host without IPv4: fine for an IPv6-only network, not for one with IPv4.
        let v6_only = ExternalInterface {
            addr: None,
            public_ip: None,
            addr_v6: Some("2001:db8::10/64".parse().unwrap()),
            public_ipv6: Some("2001:db8::10".parse().unwrap()),
            ..ext(1500)
        };
        assert!(interface("the default route", &Ok(v6_only.clone()), Some(Families::IPV6)).ok);
        let refused = interface("the default route", &Ok(v6_only), Some(Families::DUAL_STACK));
        assert!(!refused.ok && refused.detail.contains("no IPv4 address"), "{refused:?}");
        assert!(refused.fix.unwrap().contains("agent.public_ip"));
        let no_v6 = interface("the default route", &Ok(ext(1500)), Some(Families::IPV6));
        assert!(!no_v6.ok && no_v6.detail.contains("no IPv6 address"), "{no_v6:?}");
    }

    #[test]
    fn mtu_against_the_overhead() {
        let v4 = Families::IPV4;
        let ok = mtu(&ext(1500), &vxlan(0), v4).unwrap();
        assert!(ok.ok && ok.detail.contains("pods get MTU 1450"), "{ok:?}");
        let too_big = mtu(&ext(1500), &vxlan(1500), v4).unwrap();
        assert!(!too_big.ok);
        assert_eq!(too_big.fix.as_deref(), Some("set network.backend.mtu = 1450 (or 0: the interface's MTU less 50)"));
        assert!(mtu(&ext(1500), &vxlan(1450), v4).unwrap().ok);
        let host_gw = mtu(&ext(1500), &BackendConfig::HostGw(NoOptions {}), v4).unwrap();
        assert!(host_gw.ok && host_gw.detail.contains("pods get MTU 1500"));
        assert!(!mtu(&ext(600), &vxlan(0), v4).unwrap().ok, "550 is below IPv4's minimum");
        assert!(mtu(&ext(1500), &BackendConfig::Alloc(NoOptions {}), v4).is_none());
        // With IPv6, vxlan's IPv6 device takes 70 bytes, and IPv6 needs 1280.
        let v6 = mtu(&ext(1500), &vxlan(0), Families::IPV6).unwrap();
        assert!(v6.ok && v6.detail.contains("pods get MTU 1430"), "{v6:?}");
        assert!(!mtu(&ext(1500), &vxlan(1450), Families::DUAL_STACK).unwrap().ok, "1450 does not fit the IPv6 device");
        let small = mtu(&ext(1300), &vxlan(0), Families::IPV6).unwrap();
        assert!(!small.ok && small.detail.contains("below IPv6's minimum of 1280"), "{small:?}");
    }

    #[test]
    fn udp_port_taken_by_weft_itself_passes() {
        assert!(udp_port(8472, &PortState::Free).ok);
        assert!(udp_port(8472, &PortState::Taken { own_device: Some("flannel.1".into()) }).ok);
        let taken = udp_port(8472, &PortState::Taken { own_device: None });
        assert!(!taken.ok && taken.fix.unwrap().contains("network.backend.port"));
        assert!(!udp_port(8472, &PortState::Unknown("EACCES".into())).ok);
    }
}
