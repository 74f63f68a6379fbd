//! `weft check connectivity [-o json]`: from this host, one ping to every peer's subnet, to its
//! first address (the `cni0` bridge's, the pods' gateway, as the bridge CNI plugin and `weft lab`
//! set it), through whatever path weft installed. A matrix of peer, subnet, reachable, round trip
//! and path (the peer's backend type); exit 1 on any ✗.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::output::{print_json, OutputArgs};
use super::{CommandError, GlobalArgs};
use crate::config::Flags;
use crate::lab::probe;
use crate::lab::report::{format_rtt, Probe};
use crate::lease::Lease;
use crate::network::Families;
use crate::store;
use crate::subnet_env::SubnetEnv;

#[derive(Subcommand, Debug)]
pub enum CheckCommand {
    /// Ping every peer's subnet from this host (exit 1 when one does not answer).
    Connectivity(ConnectivityArgs),
}

#[derive(Args, Debug)]
pub struct ConnectivityArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// This host's subnet.env, to leave our own subnet out (default: agent.subnet_file).
    #[arg(long, value_name = "FILE")]
    pub subnet_file: Option<PathBuf>,
}

/// One peer's line of the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerProbe {
    /// The peer's public IP.
    pub peer: String,
    pub subnet: String,
    /// The address pinged: the subnet's first.
    pub target: String,
    pub reachable: bool,
    /// The average round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The peer's backend type: how weft carries traffic to it.
    pub path: String,
}

pub async fn run(global: &GlobalArgs, command: CheckCommand) -> Result<(), CommandError> {
    let CheckCommand::Connectivity(args) = command;
    let config = global.load_config(Flags::default())?.config;
    let subnet_file = args.subnet_file.unwrap_or_else(|| config.agent.subnet_file.clone());
    // Without a subnet.env (no agent here yet) every lease is probed, over every family it has.
    let env = SubnetEnv::read(&subnet_file).ok();
    let own = env.as_ref().map(SubnetEnv::lease_id);
    let families = env
        .as_ref()
        .map_or(Families::DUAL_STACK, |env| Families { ipv4: env.ipv4.is_some(), ipv6: env.ipv6.is_some() });
    let store = store::open(&config.store).await?;
    let listing = store.list_leases().await.map_err(|e| CommandError::Runtime(format!("listing leases: {e}")))?;
    let mut leases = Vec::new();
    for raw in &listing.leases {
        match raw.parse() {
            Ok(lease) => leases.push(lease),
            Err(e) => eprintln!("warning: skipping {}: {e}", raw.key),
        }
    }
    let peers = peers(&leases, own);
    let targets = targets(&peers, families);
    let addrs: Vec<IpAddr> = targets.iter().map(|t| first_address(t.subnet)).collect();
    let probes = tokio::task::spawn_blocking(move || probe::ping_here(&addrs))
        .await
        .map_err(|e| CommandError::Runtime(format!("the ping task failed: {e}")))?
        .map_err(|e| CommandError::Runtime(e.to_string()))?;
    let rows: Vec<PeerProbe> = targets.iter().zip(probes).map(|(target, probe)| row(target, probe)).collect();
    if args.output.is_json() {
        print_json(&rows)?;
    } else {
        print!("{}", render(&rows));
    }
    let failed = rows.iter().filter(|r| !r.reachable).count();
    if failed > 0 {
        return Err(CommandError::Runtime(format!("{failed} of {} peers unreachable", rows.len())));
    }
    Ok(())
}

/// Every lease but our own (`own`: its [`Lease::id`]), by subnet.
fn peers(leases: &[Lease], own: Option<IpNet>) -> Vec<&Lease> {
    let mut peers: Vec<&Lease> = leases.iter().filter(|l| Some(l.id()) != own).collect();
    peers.sort_by_key(|l| l.key());
    peers
}

/// One subnet of a peer to probe: one of each family this host runs.
struct Target<'a> {
    lease: &'a Lease,
    subnet: IpNet,
    /// The peer's public address of the subnet's family.
    peer: String,
}

fn targets<'a>(peers: &[&'a Lease], families: Families) -> Vec<Target<'a>> {
    let mut targets = Vec::new();
    for lease in peers {
        if let (true, Some(subnet)) = (families.ipv4, lease.subnet) {
            targets.push(Target { lease, subnet: subnet.into(), peer: lease.attrs.public_ip.to_string() });
        }
        if let (true, Some(subnet)) = (families.ipv6, lease.subnet_v6) {
            let peer = lease.attrs.public_ipv6().map(|ip| ip.to_string()).unwrap_or_else(|| "-".into());
            targets.push(Target { lease, subnet: subnet.into(), peer });
        }
    }
    targets
}

/// The subnet's first address: where the bridge CNI plugin puts the pods' gateway (`cni0`).
fn first_address(subnet: IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(net) => Ipv4Addr::from(u32::from(net.network()).saturating_add(1)).into(),
        IpNet::V6(net) => Ipv6Addr::from(u128::from(net.network()).saturating_add(1)).into(),
    }
}

fn row(target: &Target<'_>, probe: Probe) -> PeerProbe {
    let rtt = match probe {
        Probe::Rtt(rtt) => Some(rtt),
        Probe::Failed | Probe::Itself => None,
    };
    PeerProbe {
        peer: target.peer.clone(),
        subnet: target.subnet.to_string(),
        target: first_address(target.subnet).to_string(),
        reachable: rtt.is_some(),
        rtt_ms: rtt.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
        path: target.lease.attrs.backend_type.to_string(),
    }
}

/// The matrix as text: a header and a line per peer.
fn render(rows: &[PeerProbe]) -> String {
    if rows.is_empty() {
        return "no peers in the store\n".to_string();
    }
    let mut out = format!("{:<16} {:<18} {:<16} {:<9} {:<10} PATH\n", "PEER", "SUBNET", "TARGET", "REACHABLE", "RTT");
    for r in rows {
        let mark = if r.reachable { "✓" } else { "✗" };
        let rtt = r.rtt_ms.map(|ms| format_rtt(std::time::Duration::from_secs_f64(ms / 1000.0))).unwrap_or("-".into());
        let line = format!("{:<16} {:<18} {:<16} {mark:<9} {rtt:<10} {}", r.peer, r.subnet, r.target, r.path);
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lease::{Expiry, LeaseAttrs};

    fn lease(subnet: &str, ip: &str, backend: &str) -> Lease {
        let attrs = LeaseAttrs::new(ip.parse().unwrap(), backend, serde_json::Value::Null);
        Lease { subnet: Some(subnet.parse().unwrap()), subnet_v6: None, attrs, expiry: Expiry::Unknown }
    }

    #[test]
    fn our_own_subnet_is_left_out_and_peers_are_probed_at_their_first_address() {
        let leases =
            [lease("10.244.7.0/24", "198.51.100.7", "vxlan"), lease("10.244.3.0/24", "198.51.100.3", "host-gw")];
        let own = Some("10.244.7.0/24".parse().unwrap());
        let peers = peers(&leases, own);
        assert_eq!(peers.len(), 1);
        assert_eq!(first_address(peers[0].id()).to_string(), "10.244.3.1");
        assert_eq!(super::peers(&leases, None).len(), 2, "no subnet.env: every lease");
    }

    #[test]
    fn a_dual_stack_host_probes_each_family_of_a_dual_stack_peer() {
        let mut dual = lease("10.244.3.0/24", "198.51.100.3", "vxlan");
        dual.subnet_v6 = Some("2001:db8:42:3::/64".parse().unwrap());
        dual.attrs = dual.attrs.with_v6("2001:db8::3".parse().unwrap(), serde_json::Value::Null);
        let v4_only = lease("10.244.4.0/24", "198.51.100.4", "vxlan");
        let peers = [&dual, &v4_only];
        let rows: Vec<PeerProbe> =
            targets(&peers, Families::DUAL_STACK).iter().map(|t| row(t, Probe::Failed)).collect();
        let seen: Vec<(&str, &str, &str)> =
            rows.iter().map(|r| (r.peer.as_str(), r.subnet.as_str(), r.target.as_str())).collect();
        assert_eq!(
            seen,
            [
                ("198.51.100.3", "10.244.3.0/24", "10.244.3.1"),
                ("2001:db8::3", "2001:db8:42:3::/64", "2001:db8:42:3::1"),
                ("198.51.100.4", "10.244.4.0/24", "10.244.4.1"),
            ]
        );
        assert_eq!(targets(&peers, Families::IPV4).len(), 2, "an IPv4-only host probes IPv4 only");
    }

    #[test]
    fn the_matrix_marks_each_peer() {
        let (a, b) =
            (lease("10.244.3.0/24", "198.51.100.3", "host-gw"), lease("10.244.9.0/24", "198.51.100.9", "vxlan"));
        let targets = targets(&[&a, &b], Families::IPV4);
        let rows = vec![row(&targets[0], Probe::Rtt(Duration::from_micros(52))), row(&targets[1], Probe::Failed)];
        assert_eq!(rows[0].rtt_ms, Some(0.052));
        assert_eq!(
            render(&rows),
            "PEER             SUBNET             TARGET           REACHABLE RTT        PATH\n\
             198.51.100.3     10.244.3.0/24      10.244.3.1       ✓         0.052 ms   host-gw\n\
             198.51.100.9     10.244.9.0/24      10.244.9.1       ✗         -          vxlan\n"
        );
        assert_eq!(render(&[]), "no peers in the store\n");
    }
}
