//! `weft leases list|reserve|release`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde::Serialize;

use crate::commands::output::OutputArgs;
use crate::commands::{CommandError, GlobalArgs};
use crate::config::Flags;
use crate::lease::{BackendData, Expiry, Lease, LeaseAttrs, LeaseKey};
use crate::network::Network;
use crate::store::{self, LeaseStore, LeaseWrite, Store, WriteOutcome};

#[derive(Subcommand, Debug)]
pub enum LeasesCommand {
    /// List every lease in the store.
    List {
        /// The same as `-o json`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Reserve a subnet for a host: a lease that never expires and no other host takes.
    Reserve(ReserveArgs),
    /// Remove a lease or reservation.
    Release {
        /// Either subnet of the lease, e.g. 10.244.3.0/24 or 2001:db8:42:3::/64.
        subnet: IpNet,
    },
}

#[derive(Args, Debug)]
pub struct ReserveArgs {
    /// The subnet, e.g. 10.244.3.0/24 (in an IPv6-only network an IPv6 one, 2001:db8:42:3::/64).
    pub subnet: IpNet,
    /// The public IP of the host the subnet is for (an IPv6 address for an IPv6-only host).
    #[arg(long)]
    pub public_ip: IpAddr,
}

pub async fn run(global: &GlobalArgs, command: LeasesCommand) -> Result<(), CommandError> {
    let config = global.load_config(Flags::default())?.config;
    let store = store::open(&config.store).await?;
    match command {
        LeasesCommand::List { json, output } => list(store.as_ref(), json || output.is_json()).await,
        LeasesCommand::Reserve(args) => reserve(store.as_ref(), args).await,
        LeasesCommand::Release { subnet } => release(store.as_ref(), subnet).await,
    }
}

#[derive(Serialize)]
struct LeaseRow {
    subnet: String,
    /// A dual-stack lease's IPv6 subnet and public address.
    #[serde(skip_serializing_if = "Option::is_none")]
    subnet_v6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_ipv6: Option<std::net::Ipv6Addr>,
    public_ip: Ipv4Addr,
    backend_type: String,
    /// Printed as the store holds it, never parsed: a peer's data may be nested deeper than
    /// serde_json reads (128 levels).
    backend_data: BackendData,
    reservation: bool,
    expires: Option<String>,
    #[serde(skip)]
    expiry: Expiry,
}

impl From<&Lease> for LeaseRow {
    fn from(lease: &Lease) -> Self {
        LeaseRow {
            subnet: lease.id().to_string(),
            subnet_v6: lease.subnet_v6.map(|s| s.to_string()),
            public_ipv6: lease.attrs.public_ipv6(),
            public_ip: lease.attrs.public_ip,
            backend_type: lease.attrs.backend_type.to_string(),
            backend_data: lease.attrs.backend_data.clone(),
            reservation: lease.is_reservation(),
            expires: match lease.expiry {
                Expiry::At(when) => Some(rfc3339(when)),
                Expiry::Never | Expiry::Unknown => None,
            },
            expiry: lease.expiry,
        }
    }
}

/// The last second RFC 3339 (a four-digit year) can write: 9999-12-31T23:59:59Z.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// `when` in RFC 3339, clamped to what the format can write: humantime fails (and `to_string`
/// panics) on a time before 1970 or after year 9999, and a store may hold either.
fn rfc3339(when: SystemTime) -> String {
    let last = UNIX_EPOCH + Duration::from_secs(LAST_RFC3339_SECOND);
    humantime::format_rfc3339_seconds(when.clamp(UNIX_EPOCH, last)).to_string()
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
        let expires = match (row.reservation, row.expiry) {
            (true, _) => "never (reserved)".to_string(),
            (false, Expiry::At(at)) => in_words(at, SystemTime::now()),
            (false, _) => "unknown".to_string(),
        };
        // An IPv6-only lease publishes 0.0.0.0 for IPv4 (flannel's spelling): its IPv6 address
        // is the one shown.
        let public = match (row.public_ip.is_unspecified(), row.public_ipv6) {
            (true, Some(v6)) => v6.to_string(),
            _ => row.public_ip.to_string(),
        };
        println!("{:<20} {:<16} {:<10} {expires}", row.subnet, public, row.backend_type);
        // A dual-stack lease's IPv6 side on a line of its own: the addresses are too wide.
        if let Some(v6) = row.subnet_v6.as_ref().filter(|v6| **v6 != row.subnet) {
            let ip = row.public_ipv6.map(|ip| ip.to_string()).unwrap_or_else(|| "-".into());
            println!("  {v6} via {ip}");
        }
    }
    Ok(())
}

fn in_words(at: SystemTime, now: SystemTime) -> String {
    let left = at
        .duration_since(now)
        .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
        .unwrap_or_else(|_| "now".into());
    let when = rfc3339(at);
    let later = at.duration_since(UNIX_EPOCH).is_ok_and(|d| d.as_secs() > LAST_RFC3339_SECOND);
    let or_later = if later { " or later" } else { "" };
    format!("{when}{or_later} (in {left})")
}

async fn reserve(store: &dyn Store, args: ReserveArgs) -> Result<(), CommandError> {
    let subnet = args.subnet;
    if subnet.trunc() != subnet {
        return Err(CommandError::Input(format!("{subnet}: host bits set, did you mean {}?", subnet.trunc())));
    }
    let mut key = LeaseKey::from(subnet);
    if let Some(text) = store.network_config().await? {
        if let Ok((network, _)) = Network::from_flannel_json(&text) {
            let space = network.lease_space();
            if !space.contains_subnet(&subnet) {
                return Err(CommandError::Input(format!(
                    "{subnet} is not a /{} inside the network {} (whose leases are named by their {} subnet)",
                    space.subnet_len,
                    space.network,
                    if network.is_ipv6_only() { "IPv6" } else { "IPv4" }
                )));
            }
            // Dual-stack: the reservation holds an IPv6 subnet too, or its host could not use it.
            if let (Some(v4), Some(_)) = (key.subnet, network.ipv6) {
                let listing = store.list_leases().await?;
                let taken = listing
                    .leases
                    .iter()
                    .filter_map(|raw| crate::lease::parse_lease_key(&raw.key).ok()?.subnet_v6)
                    .map(IpNet::from)
                    .collect();
                key.subnet_v6 = crate::leasing::ipv6_for(&network, v4, &taken, None);
            }
        }
    }
    // An IPv6-only host publishes 0.0.0.0 as its IPv4 address, as flannel writes it.
    let attrs = match args.public_ip {
        IpAddr::V4(ip) => LeaseAttrs::new(ip, "", serde_json::Value::Null),
        IpAddr::V6(ip) => {
            LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, "", serde_json::Value::Null).with_v6(ip, serde_json::Value::Null)
        }
    };
    let json = attrs.to_json();
    match store.create_lease(LeaseWrite::new(key, &json, None)).await? {
        WriteOutcome::Written { .. } => {
            println!("reserved {key} for {}", args.public_ip);
            Ok(())
        }
        WriteOutcome::Conflict => make_existing_permanent(store, subnet, &attrs).await,
    }
}

/// The subnet is already leased: by the same host, the lease becomes a reservation (its attributes
/// kept); by another host, that is an error.
async fn make_existing_permanent(store: &dyn LeaseStore, subnet: IpNet, host: &LeaseAttrs) -> Result<(), CommandError> {
    let listing = store.list_leases().await?;
    let Some(raw) = listing.leases.iter().find(|r| crate::lease::parse_subnet_key(&r.key) == Ok(subnet)) else {
        return Err(CommandError::Runtime(format!("{subnet} changed while reserving it; try again")));
    };
    let holder = raw.parse().map_err(|e| CommandError::Runtime(e.to_string()))?;
    let public = host.public_addr().map(|ip| ip.to_string()).unwrap_or_default();
    if !holder.attrs.is_same_host(host) {
        let holder_ip = holder.attrs.public_addr().map(|ip| ip.to_string()).unwrap_or_else(|| "nobody".into());
        return Err(CommandError::Runtime(format!("{subnet} is held by {holder_ip}")));
    }
    let value = String::from_utf8_lossy(&raw.value);
    match store.update_lease(LeaseWrite::new(holder.key(), &value, None), raw.mod_revision).await? {
        WriteOutcome::Written { .. } => {
            println!("reserved {subnet} for {public} (its lease no longer expires)");
            Ok(())
        }
        WriteOutcome::Conflict => Err(CommandError::Runtime(format!("{subnet} changed while reserving it; try again"))),
    }
}

async fn release(store: &dyn LeaseStore, subnet: IpNet) -> Result<(), CommandError> {
    // A lease's key may name two subnets: the lease is found by either.
    let listing = store.list_leases().await?;
    let key = listing
        .leases
        .iter()
        .filter_map(|raw| crate::lease::parse_lease_key(&raw.key).ok())
        .find(|key| key.subnets().any(|s| s == subnet))
        .unwrap_or(subnet.into());
    if store.delete_lease(key).await? {
        println!("released {subnet}");
        Ok(())
    } else {
        Err(CommandError::Runtime(format!("no lease for {subnet}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_with(backend_data: &str, expiry: Expiry) -> Lease {
        let json = format!(r#"{{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{backend_data}}}"#);
        crate::lease::parse_lease("10.244.1.0-24", json.as_bytes(), expiry).expect("a readable lease")
    }

    /// Deeper than serde_json parses into a `Value` (128): the row must not parse it.
    #[test]
    fn deeply_nested_backend_data_is_printed_as_stored() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let row = LeaseRow::from(&lease_with(&deep, Expiry::Unknown));
        let json = serde_json::to_string_pretty(&[row]).unwrap();
        assert!(json.contains(&deep));
        let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
        let row = LeaseRow::from(&lease_with(&deep_objects, Expiry::Unknown));
        assert!(serde_json::to_string(&row).unwrap().contains(&deep_objects));
    }

    #[test]
    fn expiries_rfc3339_cannot_write_are_clamped() {
        let far = UNIX_EPOCH + Duration::from_secs(LAST_RFC3339_SECOND * 1000);
        let row = LeaseRow::from(&lease_with("null", Expiry::At(far)));
        assert_eq!(row.expires.as_deref(), Some("9999-12-31T23:59:59Z"));
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(in_words(far, now).starts_with("9999-12-31T23:59:59Z or later (in "), "{}", in_words(far, now));
        let last = UNIX_EPOCH + Duration::from_secs(LAST_RFC3339_SECOND);
        assert_eq!(in_words(last, last), "9999-12-31T23:59:59Z (in 0s)");
        let soon = now + Duration::from_secs(90);
        assert_eq!(in_words(soon, now), "2023-11-14T22:14:50Z (in 1m 30s)");
        assert_eq!(in_words(now, soon), "2023-11-14T22:13:20Z (in now)");
    }
}
