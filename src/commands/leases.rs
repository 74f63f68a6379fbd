//! `weft leases list|reserve|release`.

use std::net::Ipv4Addr;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::commands::{CommandError, GlobalArgs};
use crate::config::Flags;
use crate::lease::{Expiry, Lease, LeaseAttrs};
use crate::network::Network;
use crate::store::{self, LeaseStore, LeaseWrite, Store, WriteOutcome};

#[derive(Subcommand, Debug)]
pub enum LeasesCommand {
    /// List every lease in the store.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Reserve a subnet for a host: a lease that never expires and no other host takes.
    Reserve(ReserveArgs),
    /// Remove a lease or reservation.
    Release {
        /// The subnet, e.g. 10.244.3.0/24.
        subnet: Ipv4Net,
    },
}

#[derive(Args, Debug)]
pub struct ReserveArgs {
    /// The subnet, e.g. 10.244.3.0/24.
    pub subnet: Ipv4Net,
    /// The public IP of the host the subnet is for.
    #[arg(long)]
    pub public_ip: Ipv4Addr,
}

pub async fn run(global: &GlobalArgs, command: LeasesCommand) -> Result<(), CommandError> {
    let config = global.load_config(Flags::default())?.config;
    let store = store::open(&config.store).await?;
    match command {
        LeasesCommand::List { json } => list(store.as_ref(), json).await,
        LeasesCommand::Reserve(args) => reserve(store.as_ref(), args).await,
        LeasesCommand::Release { subnet } => release(store.as_ref(), subnet).await,
    }
}

#[derive(Serialize)]
struct LeaseRow {
    subnet: String,
    public_ip: Ipv4Addr,
    backend_type: String,
    backend_data: serde_json::Value,
    reservation: bool,
    expires: Option<String>,
}

impl From<&Lease> for LeaseRow {
    fn from(lease: &Lease) -> Self {
        LeaseRow {
            subnet: lease.subnet.to_string(),
            public_ip: lease.attrs.public_ip,
            backend_type: lease.attrs.backend_type.clone(),
            backend_data: lease.attrs.backend_data.value(),
            reservation: lease.is_reservation(),
            expires: match lease.expiry {
                Expiry::At(when) => Some(humantime::format_rfc3339_seconds(when).to_string()),
                Expiry::Never | Expiry::Unknown => None,
            },
        }
    }
}

async fn list(store: &dyn LeaseStore, json: bool) -> Result<(), CommandError> {
    let mut listing = store.list_leases().await?;
    store.resolve_expiry(&mut listing.leases).await?;
    let mut leases = Vec::new();
    for raw in &listing.leases {
        match raw.parse() {
            Ok(lease) => leases.push(lease),
            Err(e) => eprintln!("warning: skipping {}: {e}", raw.key),
        }
    }
    let rows: Vec<LeaseRow> = leases.iter().map(LeaseRow::from).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialize"));
        return Ok(());
    }
    println!("{:<20} {:<16} {:<10} EXPIRES", "SUBNET", "PUBLIC IP", "BACKEND");
    for row in rows {
        let expires = match (row.reservation, &row.expires) {
            (true, _) => "never (reserved)".to_string(),
            (false, Some(at)) => in_words(at),
            (false, None) => "unknown".to_string(),
        };
        println!("{:<20} {:<16} {:<10} {expires}", row.subnet, row.public_ip, row.backend_type);
    }
    Ok(())
}

fn in_words(rfc3339: &str) -> String {
    let left = humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .map(|d| humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string())
        .unwrap_or_else(|| "now".into());
    format!("{rfc3339} (in {left})")
}

async fn reserve(store: &dyn Store, args: ReserveArgs) -> Result<(), CommandError> {
    let subnet = args.subnet;
    if subnet.trunc() != subnet {
        return Err(CommandError::Input(format!("{subnet}: host bits set, did you mean {}?", subnet.trunc())));
    }
    if let Some(text) = store.network_config().await? {
        if let Ok((network, _)) = Network::from_flannel_json(&text) {
            if !network.contains_subnet(&subnet) {
                return Err(CommandError::Input(format!(
                    "{subnet} is not a /{} inside the network {}",
                    network.subnet_len, network.network
                )));
            }
        }
    }
    let attrs = LeaseAttrs::new(args.public_ip, "", serde_json::Value::Null);
    let json = attrs.to_json();
    match store.create_lease(LeaseWrite::new(subnet, &json, None)).await? {
        WriteOutcome::Written { .. } => {
            println!("reserved {subnet} for {}", args.public_ip);
            Ok(())
        }
        WriteOutcome::Conflict => make_existing_permanent(store, subnet, args.public_ip).await,
    }
}

/// The subnet is already leased: by the same host, the lease becomes a reservation (its attributes
/// kept); by another host, that is an error.
async fn make_existing_permanent(
    store: &dyn LeaseStore,
    subnet: Ipv4Net,
    public_ip: Ipv4Addr,
) -> Result<(), CommandError> {
    let listing = store.list_leases().await?;
    let key = crate::lease::subnet_key(subnet);
    let Some(raw) = listing.leases.iter().find(|r| r.key == key) else {
        return Err(CommandError::Runtime(format!("{subnet} changed while reserving it; try again")));
    };
    let holder = raw.parse().map_err(|e| CommandError::Runtime(e.to_string()))?;
    if holder.attrs.public_ip != public_ip {
        return Err(CommandError::Runtime(format!("{subnet} is held by {}", holder.attrs.public_ip)));
    }
    let value = String::from_utf8_lossy(&raw.value);
    match store.update_lease(LeaseWrite::new(subnet, &value, None), raw.mod_revision).await? {
        WriteOutcome::Written { .. } => {
            println!("reserved {subnet} for {public_ip} (its lease no longer expires)");
            Ok(())
        }
        WriteOutcome::Conflict => Err(CommandError::Runtime(format!("{subnet} changed while reserving it; try again"))),
    }
}

async fn release(store: &dyn LeaseStore, subnet: Ipv4Net) -> Result<(), CommandError> {
    if store.delete_lease(subnet).await? {
        println!("released {subnet}");
        Ok(())
    } else {
        Err(CommandError::Runtime(format!("no lease for {subnet}")))
    }
}
