//! The agent: find our interface, read the network, lease a subnet, bring up the backend, write
//! subnet.env, then renew, watch the other hosts and repair until cancelled.
//!
//! - [`lease_loop`]: acquiring, renewing and watching leases, handing peers to the data plane;
//! - [`network_change`]: following the stored network config (live backend switches);
//! - [`host`]: the host's side effects (`subnet.env`, masquerade, systemd notification).
//!
//! The backend itself is the data plane's ([`crate::dataplane`]): the agent sees only the lease
//! data a backend publishes.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backend::peer_trust::PeerTrust;
use crate::backend::{self, BackendContext, LeaseData};
use crate::config::Config;
use crate::dataplane::Dataplane;
use crate::health::{Condition, Health};
use crate::iface;
use crate::lease::LeaseAttrs;
use crate::leasing::{LeaseRequest, OwnLease};
use crate::network::Network;
use crate::store::{LeaseListing, Store};
use crate::subnet_env;

mod host;
mod lease_loop;
mod network_change;
mod orphans;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("external interface: {0}")]
    Iface(#[from] iface::IfaceError),
    #[error("backend: {0}")]
    Backend(#[from] backend::BackendError),
    #[error("writing {path}: {source}")]
    SubnetEnv {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("publishing the new backend in our lease: {0}")]
    Publish(#[source] crate::leasing::LeaseError),
    /// Stopped before the work was done; not a failure of the agent.
    #[error("cancelled")]
    Cancelled,
}

/// Everything the loop works with once started.
struct Running {
    store: Arc<dyn Store>,
    health: Arc<Health>,
    config: Config,
    network: Network,
    ext: iface::ExternalInterface,
    dataplane: Dataplane,
    /// What the active backend publishes in our lease.
    data: LeaseData,
    attrs: LeaseAttrs,
    own: OwnLease,
    /// When to renew `own` next.
    renewal: lease_loop::Renewal,
    /// Every lease as listed while acquiring ours: the first delivery to the backend, saving a
    /// second listing of the whole cluster at start.
    listing: Option<LeaseListing>,
}

/// Runs the agent until `cancel`. The lease and whatever the backend installed stay in place when
/// it returns: a restarted agent takes them back without disturbing traffic. `handover` is the
/// lease a previous run in this process held (a reload); the lease held at the end is returned
/// for the next one.
pub async fn run(
    config: Config,
    store: Arc<dyn Store>,
    health: Arc<Health>,
    handover: Option<OwnLease>,
    cancel: CancellationToken,
) -> Result<Option<OwnLease>, AgentError> {
    run_with(config, store, health, Dataplane::netlink(), handover, cancel).await
}

/// [`run`] with the data plane supplied (tests use an in-memory kernel).
pub async fn run_with(
    config: Config,
    store: Arc<dyn Store>,
    health: Arc<Health>,
    dataplane: Dataplane,
    handover: Option<OwnLease>,
    cancel: CancellationToken,
) -> Result<Option<OwnLease>, AgentError> {
    match start_and_run(config, store, health, dataplane, handover.clone(), &cancel).await {
        Ok(own) => Ok(Some(own)),
        // Stopped before a lease was held (or while acquiring it again): what was handed over
        // is still the best guess for the next run.
        Err(AgentError::Cancelled) => Ok(handover),
        Err(e) => Err(e),
    }
}

async fn start_and_run(
    config: Config,
    store: Arc<dyn Store>,
    health: Arc<Health>,
    mut dataplane: Dataplane,
    handover: Option<OwnLease>,
    cancel: &CancellationToken,
) -> Result<OwnLease, AgentError> {
    let ext = iface::discover(&config.agent).await?;
    let public_ipv6 = ext.public_ipv6.map(|ip| ip.to_string()).unwrap_or_default();
    info!(iface = %ext.name, addr = ?ext.addr, public_ip = ?ext.public_ip, public_ipv6, mtu = ext.mtu, "external interface");
    // Read once: what a peer must not announce as its public IP (ours) and where it must be.
    let ours = (ext.addr.map(|a| a.addr()).into_iter().chain(ext.public_ip).map(std::net::IpAddr::V4))
        .chain(ext.public_ipv6.map(std::net::IpAddr::V6));
    let own = iface::host_addresses().await?.into_iter().chain(ours);
    let trust = PeerTrust::new(own, config.agent.underlay());
    dataplane.trust_peers(trust, health.metrics.peers_rejected.clone());
    let network = lease_loop::wait_for_network(store.as_ref(), &health, cancel).await?;
    let ctx = BackendContext {
        network: network.clone(),
        ext: ext.clone(),
        store: store.clone(),
        health: health.clone(),
        cloud: config.cloud.clone(),
    };
    let prepared = dataplane.prepare(&ctx).await?;
    let data = prepared.lease_data().clone();
    let attrs = data.attrs(&ext, &network)?;
    let previous = subnet_env::previous_subnet(&config.agent.subnet_file);
    let previous_v6 = subnet_env::previous_subnet_v6(&config.agent.subnet_file);
    let handover = handover.map(|own| (own.key(), own.revision));
    let request =
        LeaseRequest { previous, previous_v6, handover, ..LeaseRequest::new(&network, &attrs, config.agent.lease_ttl) };
    let (own, listing) = lease_loop::acquire_until_held(store.as_ref(), &request, &health, cancel).await?;
    let ready = dataplane.start(prepared, &own.lease).await?;
    dataplane.activate(ready).await;
    health.ok(Condition::Backend);
    let renewal = lease_loop::Renewal::new();
    let mut running = Running { store, health, config, network, ext, dataplane, data, attrs, own, renewal, listing };
    running.take_up_lease().await?;
    running.watch_and_renew(cancel).await?;
    Ok(running.own)
}
