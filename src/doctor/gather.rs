//! Reads the facts the judges need from this host, in the network namespace the process runs
//! in, and runs every check that applies to the configuration. Nothing here changes the host.

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, StoreKind};
use crate::iface::{self, ExternalInterface, InterfaceChoice};
use crate::kernel::netlink::{NetlinkKernel, NexthopMode};
use crate::kernel::{vxlan_device_name, Interfaces, Kernel};
use crate::network::Network;
use crate::store::{self, FileNetworkSource};

use super::host::{self, PortState, RpFilter, VxlanModule};
use super::store::StoreProbe;
use super::{firewall, Check};

/// How long `nft -j list ruleset` may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the store may take to answer.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every check that applies to `config`, in the order shown.
pub async fn all(config: &Config) -> Vec<Check> {
    let (probe, stored) = probe_store(config).await;
    let mut checks = vec![super::store::judge(&config.store, &probe)];
    // Without a usable network config in the store, the backend checks judge weft.toml's
    // [network] (what `weft network apply` would publish).
    let network = stored.or_else(|| Network::new(&config.network).ok());
    let kernel = NetlinkKernel::new();
    let choice = InterfaceChoice::from(&config.agent);
    let ext = match &kernel {
        Ok(kernel) => iface::discover_with(kernel, &choice).await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("netlink: {e}")),
    };
    checks.push(host::interface(&choice.rule(), &ext, network.as_ref().map(Network::families)));
    let Some(network) = network else {
        return checks;
    };
    let backend = &network.backend;
    if host::forwards(backend) {
        for family in network.families().each() {
            let on = crate::kernel::sysctl::forwarding(family).map_err(|e| e.to_string());
            checks.push(host::ip_forward(family, &on));
        }
    }
    if let Some(vxlan) = host::vxlan_of(backend) {
        checks.push(host::vxlan_module(&vxlan_module(Path::new("/"), &vxlan_device_name(vxlan.vni))));
        let own_device = match &kernel {
            Ok(kernel) => kernel.link_by_name(&vxlan_device_name(vxlan.vni)).await.ok().flatten().map(|l| l.name),
            Err(_) => None,
        };
        checks.push(host::udp_port(vxlan.port, &udp_port(vxlan.port, own_device)));
    }
    if let (Ok(kernel), Ok(ext)) = (&kernel, &ext) {
        if host::forwards(backend) {
            checks.push(host::rp_filter(&rp_filter(kernel, ext).await));
        }
        if host::kernel_routes(backend) {
            let disabled = NexthopMode::from_env() == NexthopMode::Disabled;
            checks.push(host::nexthops(kernel.supports_nexthops().await, disabled));
        }
        checks.extend(host::mtu(ext, backend, network.families()));
    }
    if host::forwards(backend) {
        // iptables' FORWARD chain is IPv4's: an IPv6-only network is not judged there.
        if let Some(v4) = network.ipv4_network() {
            checks.push(firewall::judge(&nft_ruleset().await, v4, config.agent.forward_rules));
        }
    }
    // Our subnet, when an agent ran here: its cloud route needs no room.
    let own = crate::subnet_env::SubnetEnv::read(&config.agent.subnet_file).ok().map(|env| env.lease_id());
    checks.extend(cloud(config, &network, ext.as_ref().ok(), own).await);
    checks
}

/// The cloud backend's checks, when the backend is one and compiled in.
async fn cloud(
    config: &Config,
    network: &Network,
    ext: Option<&ExternalInterface>,
    own: Option<ipnet::IpNet>,
) -> Vec<Check> {
    match &network.backend {
        #[cfg(feature = "aws")]
        crate::network::backend::BackendConfig::AwsVpc(aws) => {
            super::aws::checks(aws, &config.cloud, network, ext, own).await
        }
        #[cfg(feature = "gce")]
        crate::network::backend::BackendConfig::Gce(gce) => super::gce::checks(gce, &config.cloud, network, own).await,
        _ => {
            let _ = (config, ext, own);
            Vec::new()
        }
    }
}

/// Asks the store for the network config; the network when it holds a usable one.
async fn probe_store(config: &Config) -> (StoreProbe, Option<Network>) {
    if config.store.kind == StoreKind::Local && !config.store.path.exists() {
        // Opening would create it; the first `weft network apply` does.
        return (StoreProbe::NoConfig, None);
    }
    let asked = tokio::time::timeout(STORE_TIMEOUT, async {
        let file = FileNetworkSource::new(&config.network);
        let store = store::open_with_network(&config.store, &file).await.map_err(|e| e.to_string())?;
        if config.store.kind == StoreKind::Kube {
            // The network comes from weft.toml; the API is asked for the leases (Nodes).
            store.list_leases().await.map_err(|e| e.to_string())?;
        }
        store.network_config().await.map_err(|e| e.to_string())
    })
    .await;
    match asked {
        Err(_) => (StoreProbe::Unreachable(format!("no answer within {STORE_TIMEOUT:?}")), None),
        Ok(Err(e)) => (StoreProbe::Unreachable(e), None),
        Ok(Ok(None)) => (StoreProbe::NoConfig, None),
        Ok(Ok(Some(text))) => match Network::from_flannel_json(&text) {
            Ok((network, _)) => {
                let shown = format!("network {network}, backend {}", network.backend.type_name());
                (StoreProbe::Ok { network: shown }, Some(network))
            }
            Err(e) => (StoreProbe::BadConfig(e.to_string()), None),
        },
    }
}

/// Where the vxlan driver is, under `root` (tests use a directory of their own); `device`
/// existing means it is loaded.
pub fn vxlan_module(root: &Path, device: &str) -> VxlanModule {
    if root.join("sys/module/vxlan").exists() || root.join("sys/class/net").join(device).exists() {
        return VxlanModule::Loaded;
    }
    let release = std::fs::read_to_string(root.join("proc/sys/kernel/osrelease")).unwrap_or_default();
    let release = release.trim().to_string();
    let modules = root.join("lib/modules").join(&release);
    let lists = |name: &str| {
        std::fs::read_to_string(modules.join(name))
            .map(|text| {
                text.lines()
                    .any(|l| l.split(':').next().is_some_and(|m| m.ends_with("/vxlan.ko") || m.contains("/vxlan.ko.")))
            })
            .unwrap_or(false)
    };
    if lists("modules.builtin") {
        VxlanModule::Loaded
    } else if lists("modules.dep") {
        VxlanModule::Loadable
    } else {
        VxlanModule::Missing { release }
    }
}

/// Binds the port as the vxlan device would (any address); taken by `own_device` when weft's
/// device exists.
fn udp_port(port: u16, own_device: Option<String>) -> PortState {
    match std::net::UdpSocket::bind(("0.0.0.0", port)) {
        Ok(_) => PortState::Free,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => PortState::Taken { own_device },
        Err(e) => PortState::Unknown(e.to_string()),
    }
}

fn read_u8(path: &str) -> u8 {
    std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

async fn rp_filter(kernel: &NetlinkKernel, ext: &ExternalInterface) -> RpFilter {
    let default_oif = kernel.default_route_oif().await.ok().flatten();
    RpFilter {
        iface: ext.name.clone(),
        all: read_u8("/proc/sys/net/ipv4/conf/all/rp_filter"),
        iface_value: read_u8(&format!("/proc/sys/net/ipv4/conf/{}/rp_filter", ext.name)),
        default_route_here: default_oif == Some(ext.index),
    }
}

/// The forward chains of `nft -j list ruleset`.
async fn nft_ruleset() -> Result<Vec<firewall::ForwardChain>, String> {
    let run = tokio::process::Command::new("nft").args(["-j", "list", "ruleset"]).kill_on_drop(true).output();
    let out = match tokio::time::timeout(NFT_TIMEOUT, run).await {
        Err(_) => return Err(format!("nft -j list ruleset: no answer within {NFT_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("nft: {e}")),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        return Err(format!("nft -j list ruleset: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    firewall::parse(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }

    #[test]
    fn the_vxlan_driver_is_found_loaded_built_in_or_as_a_module() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(root, "proc/sys/kernel/osrelease", "6.1.0-test\n");
        assert_eq!(vxlan_module(root, "flannel.1"), VxlanModule::Missing { release: "6.1.0-test".into() });
        write(
            root,
            "lib/modules/6.1.0-test/modules.dep",
            "kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz\n",
        );
        assert_eq!(vxlan_module(root, "flannel.1"), VxlanModule::Loadable);
        write(root, "lib/modules/6.1.0-test/modules.builtin", "kernel/drivers/net/vxlan/vxlan.ko\n");
        assert_eq!(vxlan_module(root, "flannel.1"), VxlanModule::Loaded);
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(other.path().join("sys/module/vxlan")).unwrap();
        assert_eq!(vxlan_module(other.path(), "flannel.1"), VxlanModule::Loaded);
    }
}
