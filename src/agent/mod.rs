//! The agent loop: find our interface, read the network, lease a subnet, bring up the backend,
//! write subnet.env, then renew, watch the other hosts and repair until cancelled.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backend::{self, BackendContext, LeaseData};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::dataplane::Dataplane;
use crate::health::{EventKind, EventLabels, Health};
use crate::heap;
use crate::iface;
use crate::lease::{self, Expiry, LeaseAttrs};
use crate::leasing::{self, LeaseError, LeaseRequest, OwnLease};
use crate::masq;
use crate::network::Network;
use crate::store::{LeaseListing, LeaseUpdate, Store};
use crate::subnet_env::{self, SubnetEnv};
use crate::watch::{LeaseEvent, LeaseWatcher};

mod network_change;

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
}

/// How long to let a burst of kernel changes settle before repairing.
const KERNEL_CHANGE_SETTLE: Duration = Duration::from_millis(50);

/// Everything the loop works with once started.
struct Running {
    store: Arc<dyn Store>,
    health: Arc<Health>,
    config: Config,
    network: Network,
    ext: iface::ExternalInterface,
    dataplane: Dataplane,
    /// The backend prepared but not started yet (until our lease is held).
    pending: Option<Box<dyn backend::Backend>>,
    data: LeaseData,
    attrs: LeaseAttrs,
    own: OwnLease,
    /// Every lease as listed while acquiring ours: the first delivery to the backend, saving a
    /// second listing of the whole cluster at start.
    listing: Option<LeaseListing>,
}

/// Runs the agent until `cancel`. The lease and whatever the backend installed stay in place when
/// it returns: a restarted agent takes them back without disturbing traffic.
pub async fn run(
    config: Config,
    store: Arc<dyn Store>,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    run_with(config, store, health, Dataplane::netlink(), cancel).await
}

/// [`run`] with the data plane supplied (tests use an in-memory kernel).
pub async fn run_with(
    config: Config,
    store: Arc<dyn Store>,
    health: Arc<Health>,
    mut dataplane: Dataplane,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let ext = iface::discover(&config.agent).await?;
    info!(iface = %ext.name, addr = %ext.addr, public_ip = %ext.public_ip, mtu = ext.mtu, "external interface");
    let Some(network) = wait_for_network(store.as_ref(), &health, &cancel).await else {
        return Ok(());
    };
    let ctx =
        BackendContext { network: network.clone(), ext: ext.clone(), store: store.clone(), health: health.clone() };
    let mut backend = dataplane.create_backend(&ctx)?;
    let data = backend.prepare().await?;
    let attrs = LeaseAttrs::new(ext.public_ip, data.backend_type, data.backend_data.clone());
    let previous = subnet_env::previous_subnet(&config.agent.subnet_file);
    let request = LeaseRequest { network: &network, attrs: &attrs, ttl: config.agent.lease_ttl, previous };
    let Some((own, listing)) = acquire_until_held(store.as_ref(), &request, &health, &cancel).await else {
        return Ok(());
    };
    let pending = Some(backend);
    let mut running = Running { store, health, config, network, ext, dataplane, pending, data, attrs, own, listing };
    running.take_up_lease().await?;
    running.watch_and_renew(cancel).await
}

async fn wait_for_network(store: &dyn Store, health: &Health, cancel: &CancellationToken) -> Option<Network> {
    let mut backoff = Backoff::new();
    loop {
        let problem = match store.network_config().await {
            Ok(Some(text)) => match Network::from_flannel_json(&text) {
                Ok((network, ignored)) => {
                    if !ignored.is_empty() {
                        warn!(keys = ?ignored, "ignoring unknown keys in the stored network config");
                    }
                    info!(network = %network.network, subnet_len = network.subnet_len, backend = network.backend.type_name(), "network config");
                    return Some(network);
                }
                Err(e) => format!("{e}"),
            },
            Ok(None) => "no network config in the store yet: publish one with `weft network apply`".to_string(),
            Err(e) => {
                health.metrics.store_errors.inc();
                format!("reading the network config: {e}")
            }
        };
        warn!("{problem}");
        health.update(|r| r.problem = Some(problem));
        if sleep_or_cancel(backoff.step().max(Duration::from_secs(1)), cancel).await {
            return None;
        }
    }
}

async fn acquire_until_held(
    store: &dyn Store,
    request: &LeaseRequest<'_>,
    health: &Health,
    cancel: &CancellationToken,
) -> Option<(OwnLease, Option<LeaseListing>)> {
    let mut backoff = Backoff::new();
    loop {
        match leasing::acquire_listed(store, request).await {
            Ok(acquired) => {
                health.update(|r| r.problem = None);
                return Some(acquired);
            }
            Err(e) => {
                if matches!(e, LeaseError::Store(_)) {
                    health.metrics.store_errors.inc();
                }
                error!(error = %e, "cannot acquire a lease; retrying");
                health.update(|r| {
                    r.lease_held = false;
                    r.problem = Some(e.to_string());
                });
            }
        }
        if sleep_or_cancel(backoff.step(), cancel).await {
            return None;
        }
    }
}

/// Sleeps; true when cancelled first.
async fn sleep_or_cancel(duration: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

impl Running {
    /// Our lease is (newly) held: start the backend on it and tell the host's CNI about it.
    async fn take_up_lease(&mut self) -> Result<(), AgentError> {
        self.note_expiry();
        if let Some(backend) = self.pending.take() {
            self.dataplane.start(backend, &self.own.lease).await?;
        }
        self.write_subnet_env()?;
        self.sync_masquerade().await;
        info!(subnet = %self.own.subnet(), file = %self.config.agent.subnet_file.display(), "lease held, subnet.env written");
        // systemd (Type=notify) starts dependants only now; without NOTIFY_SOCKET this does nothing.
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            debug!(error = %e, "sd_notify READY");
        }
        self.health.update(|r| {
            r.lease_held = true;
            r.subnet_env_written = true;
            r.backend_ready = true;
            r.problem = None;
        });
        Ok(())
    }

    /// `agent.ip_masq`: weft's nftables table installed (or repaired) when on, removed when off.
    async fn sync_masquerade(&self) {
        let (network, own, wanted) = (self.network.network, self.own.subnet(), self.config.agent.ip_masq);
        let result = tokio::task::spawn_blocking(move || masq::sync(wanted, network, own)).await;
        match result {
            Ok(Ok(masq::Change::Installed)) => info!(network = %network, "masquerade rules installed"),
            Ok(Ok(masq::Change::Removed)) => info!("masquerade rules removed (agent.ip_masq = false)"),
            Ok(Ok(masq::Change::None)) => {}
            Ok(Err(e)) => {
                error!(error = %e, "masquerade");
                self.health.update(|r| r.backend_problem = Some(format!("masquerade: {e}")));
            }
            Err(e) => error!(error = %e, "masquerade task failed"),
        }
    }

    fn write_subnet_env(&self) -> Result<(), AgentError> {
        let env = SubnetEnv {
            network: self.network.network,
            subnet: self.own.subnet(),
            mtu: self.data.mtu,
            ip_masq: self.config.agent.ip_masq,
        };
        let path = &self.config.agent.subnet_file;
        env.write(path).map_err(|source| AgentError::SubnetEnv { path: path.display().to_string(), source })
    }

    fn note_expiry(&self) {
        let seconds = match self.own.lease.expiry {
            Expiry::At(when) => when.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            Expiry::Never | Expiry::Unknown => 0.0,
        };
        self.health.metrics.lease_expiry_seconds.set(seconds);
    }

    async fn watch_and_renew(&mut self, cancel: CancellationToken) -> Result<(), AgentError> {
        let mut watcher = LeaseWatcher::new(self.network.clone(), Some(self.own.subnet()));
        let revision = self.initial_listing(&mut watcher, &cancel).await;
        let Some(revision) = revision else {
            return Ok(());
        };
        let mut updates = self.store.watch_leases(revision);
        let mut network_configs = self.store.watch_network_config();
        let mut resync = tokio::time::interval(self.config.agent.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            let renew_in = leasing::renew_in(&self.own.lease, self.config.agent.renew_margin);
            let renew_at = tokio::time::sleep(renew_in.unwrap_or(Duration::from_secs(86400 * 365)));
            tokio::select! {
                _ = cancel.cancelled() => {
                    info!(subnet = %self.own.subnet(), "stopping; the lease and installed state stay in place");
                    return Ok(());
                }
                update = updates.next() => match update {
                    Some(Ok(update)) => self.handle_update(&mut watcher, update, &cancel).await?,
                    Some(Err(e)) => {
                        self.health.metrics.store_errors.inc();
                        warn!(error = %e, "lease watch interrupted; it resumes by itself");
                    }
                    None => {
                        warn!("lease watch ended; starting a new one");
                        updates = self.store.watch_leases(revision);
                    }
                },
                _ = renew_at, if renew_in.is_some() => self.renew(&mut watcher, &cancel).await?,
                _ = resync.tick() => self.reconcile(&watcher).await,
                _ = self.dataplane.next_kernel_change() => {
                    // Let a burst of changes settle, then repair everything at once.
                    tokio::time::sleep(KERNEL_CHANGE_SETTLE).await;
                    debug!("kernel changed under us; repairing");
                    self.reconcile(&watcher).await;
                }
                Some(config) = network_configs.next() => match config {
                    Ok(text) => self.on_network_config(text, &mut watcher, &cancel).await,
                    Err(e) => {
                        self.health.metrics.store_errors.inc();
                        debug!(error = %e, "network config watch interrupted; it resumes by itself");
                    }
                },
            }
        }
    }

    /// Lists every lease once and hands them to the backend; returns the revision to watch from.
    async fn initial_listing(&mut self, watcher: &mut LeaseWatcher, cancel: &CancellationToken) -> Option<i64> {
        let mut backoff = Backoff::new();
        loop {
            let listed = match self.listing.take() {
                Some(listing) => Ok(listing),
                None => self.store.list_leases().await,
            };
            match listed {
                Ok(listing) => {
                    let revision = listing.revision;
                    if let Err(e) = self.deliver(watcher, LeaseUpdate::Resync(listing.leases, revision)).await {
                        warn!(error = %e, "backend could not install every peer");
                    }
                    self.check_backend(watcher, true).await;
                    return Some(revision);
                }
                Err(e) => {
                    self.health.metrics.store_errors.inc();
                    warn!(error = %e, "listing leases; retrying");
                }
            }
            if sleep_or_cancel(backoff.step(), cancel).await {
                return None;
            }
        }
    }

    async fn handle_update(
        &mut self,
        watcher: &mut LeaseWatcher,
        update: LeaseUpdate,
        cancel: &CancellationToken,
    ) -> Result<(), AgentError> {
        if self.lost_our_lease(&update) {
            warn!(subnet = %self.own.subnet(), "our lease was removed or taken in the store; acquiring again");
            return self.reacquire(watcher, cancel).await;
        }
        if let Err(e) = self.deliver(watcher, update).await {
            warn!(error = %e, "backend could not install every peer");
        }
        Ok(())
    }

    /// Whether `update` shows our key gone or holding someone else's lease.
    fn lost_our_lease(&self, update: &LeaseUpdate) -> bool {
        let own_key = lease::subnet_key(self.own.subnet());
        match update {
            LeaseUpdate::Deleted { key, .. } => *key == own_key,
            LeaseUpdate::Put(raw) if raw.key == own_key => {
                raw.parse().map(|l| l.attrs.public_ip != self.attrs.public_ip).unwrap_or(true)
            }
            LeaseUpdate::Resync(entries, _) => match entries.iter().find(|r| r.key == own_key) {
                None => true,
                Some(raw) => raw.parse().map(|l| l.attrs.public_ip != self.attrs.public_ip).unwrap_or(true),
            },
            LeaseUpdate::Put(_) => false,
        }
    }

    async fn deliver(&mut self, watcher: &mut LeaseWatcher, update: LeaseUpdate) -> Result<(), backend::BackendError> {
        let full_listing = matches!(update, LeaseUpdate::Resync(..));
        let result = self.deliver_events(watcher, update).await;
        if full_listing {
            // Every lease was read and, when something changed, the kernel synced in full.
            heap::release_free_memory();
        }
        result
    }

    async fn deliver_events(
        &mut self,
        watcher: &mut LeaseWatcher,
        update: LeaseUpdate,
    ) -> Result<(), backend::BackendError> {
        let delivery = watcher.apply(update);
        for skipped in &delivery.skipped {
            self.health.metrics.malformed_leases.inc();
            warn!(key = %skipped.key, reason = %skipped.reason, "skipping lease");
        }
        self.health.metrics.leases_watched.set(watcher.leases().len() as i64);
        if delivery.events.is_empty() {
            return Ok(());
        }
        for event in &delivery.events {
            let kind = match event {
                LeaseEvent::Added(_) => EventKind::Added,
                LeaseEvent::Changed(_) => EventKind::Changed,
                LeaseEvent::Removed(_) => EventKind::Removed,
            };
            if tracing::enabled!(tracing::Level::DEBUG) {
                match watcher.leases().get(&event.subnet()) {
                    Some(lease) => debug!(?kind, %lease, "lease event"),
                    None => debug!(?kind, subnet = %event.subnet(), "lease event"),
                }
            }
            self.health.metrics.events.get_or_create(&EventLabels { kind }).inc();
        }
        self.dataplane.apply(watcher.leases(), &delivery.events).await
    }

    async fn reconcile(&mut self, watcher: &LeaseWatcher) {
        if let Err(e) = self.dataplane.reconcile(watcher.leases()).await {
            warn!(error = %e, "repairing the data plane");
        }
        heap::release_free_memory();
        self.sync_masquerade().await;
        self.check_backend(watcher, false).await;
    }

    /// The backend's own checks; their outcome shows in `/readyz`.
    async fn check_backend(&mut self, watcher: &LeaseWatcher, forced: bool) {
        let result = self.dataplane.check(&self.own.lease, watcher.leases(), forced).await;
        if let Err(e) = &result {
            warn!(error = %e, "backend check failed");
        }
        self.health.update(|r| r.backend_problem = result.err().map(|e| e.to_string()));
    }

    async fn renew(&mut self, watcher: &mut LeaseWatcher, cancel: &CancellationToken) -> Result<(), AgentError> {
        match leasing::renew(self.store.as_ref(), &self.own, &self.attrs, self.config.agent.lease_ttl).await {
            Ok(own) => {
                debug!(subnet = %own.subnet(), "lease renewed");
                self.own = own;
                self.health.metrics.renewals.inc();
                self.note_expiry();
                self.check_backend(watcher, true).await;
                Ok(())
            }
            Err(LeaseError::Lost(subnet)) => {
                warn!(%subnet, "our lease changed in the store before renewal; acquiring again");
                self.reacquire(watcher, cancel).await
            }
            Err(e) => {
                // Try again shortly: the lease is still valid for the renew margin.
                self.health.metrics.store_errors.inc();
                warn!(error = %e, "renewing the lease; retrying");
                sleep_or_cancel(Duration::from_secs(1), cancel).await;
                Ok(())
            }
        }
    }

    async fn reacquire(&mut self, watcher: &mut LeaseWatcher, cancel: &CancellationToken) -> Result<(), AgentError> {
        self.health.update(|r| r.lease_held = false);
        let previous = Some(self.own.subnet());
        let request =
            LeaseRequest { network: &self.network, attrs: &self.attrs, ttl: self.config.agent.lease_ttl, previous };
        let Some((own, listing)) = acquire_until_held(self.store.as_ref(), &request, &self.health, cancel).await else {
            return Ok(());
        };
        self.listing = listing;
        if own.subnet() != self.own.subnet() {
            warn!(old = %self.own.subnet(), new = %own.subnet(), "our subnet changed: pods on the old one must be recreated");
        }
        self.own = own;
        watcher.set_own(self.own.subnet());
        self.take_up_lease().await?;
        // Our old subnet may be someone else's now: bring the backend up to date at once.
        self.initial_listing(watcher, cancel).await;
        Ok(())
    }
}
