//! `weft check connectivity [-o json]`: from this host, one ping to every peer's subnet, to its
//! first address (the `cni0` bridge's, the pods' gateway, as the bridge CNI plugin and `weft lab`
//! set it), through whatever path weft installed. A matrix of peer, subnet, reachable, round trip
//! and path (the peer's backend type); exit 1 on any ✗.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::output::{print_json, OutputArgs};
use super::{CommandError, GlobalArgs};
use crate::config::Flags;
use crate::lab::probe;
use crate::lab::report::{format_rtt, Probe};
use crate::lease::Lease;
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
    // Without a subnet.env (no agent here yet) every lease is probed.
    let own = SubnetEnv::read(&subnet_file).ok().map(|env| env.subnet.trunc());
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
    let targets: Vec<Ipv4Addr> = peers.iter().map(|lease| first_address(lease.subnet)).collect();
    let probes = tokio::task::spawn_blocking(move || probe::ping_here(&targets))
        .await
        .map_err(|e| CommandError::Runtime(format!("the ping task failed: {e}")))?
        .map_err(|e| CommandError::Runtime(e.to_string()))?;
    let rows: Vec<PeerProbe> = peers.iter().zip(probes).map(|(lease, probe)| row(lease, probe)).collect();
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

/// Every lease but our own, by subnet.
fn peers(leases: &[Lease], own: Option<Ipv4Net>) -> Vec<&Lease> {
    let mut peers: Vec<&Lease> = leases.iter().filter(|l| Some(l.subnet.trunc()) != own).collect();
    peers.sort_by_key(|l| l.subnet);
    peers
}

/// The subnet's first address: where the bridge CNI plugin puts the pods' gateway (`cni0`).
fn first_address(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

fn row(lease: &Lease, probe: Probe) -> PeerProbe {
    let rtt = match probe {
        Probe::Rtt(rtt) => Some(rtt),
        Probe::Failed | Probe::Itself => None,
    };
    PeerProbe {
        peer: lease.attrs.public_ip.to_string(),
        subnet: lease.subnet.to_string(),
        target: first_address(lease.subnet).to_string(),
        reachable: rtt.is_some(),
        rtt_ms: rtt.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
        path: lease.attrs.backend_type.to_string(),
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
        Lease { subnet: subnet.parse().unwrap(), subnet_v6: None, attrs, expiry: Expiry::Unknown }
    }

    #[test]
    fn our_own_subnet_is_left_out_and_peers_are_probed_at_their_first_address() {
        let leases =
            [lease("10.244.7.0/24", "198.51.100.7", "vxlan"), lease("10.244.3.0/24", "198.51.100.3", "host-gw")];
        let own = Some("10.244.7.0/24".parse().unwrap());
        let peers = peers(&leases, own);
        assert_eq!(peers.len(), 1);
        assert_eq!(first_address(peers[0].subnet), "10.244.3.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(super::peers(&leases, None).len(), 2, "no subnet.env: every lease");
    }

    #[test]
    fn the_matrix_marks_each_peer() {
        let rows = vec![
            row(&lease("10.244.3.0/24", "198.51.100.3", "host-gw"), Probe::Rtt(Duration::from_micros(52))),
            row(&lease("10.244.9.0/24", "198.51.100.9", "vxlan"), Probe::Failed),
        ];
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
