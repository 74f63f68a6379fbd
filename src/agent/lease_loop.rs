//! The lease loop: wait for the network config, acquire our lease, then renew it, watch the other
//! hosts' leases and hand every change to the data plane, repairing on a timer and whenever the
//! kernel changed under us.

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{orphans, AgentError, Running};
use crate::backend::BackendError;
use crate::backoff::Backoff;
use crate::dataplane::Change;
use crate::health::{Condition, EventKind, EventLabels, Health};
use crate::heap;
use crate::lease;
use crate::leasing::{self, LeaseError, LeaseRequest, OwnLease};
use crate::network::backend::agent_only_key;
use crate::network::Network;
use crate::store::{LeaseListing, LeaseStore, LeaseUpdate, NetworkSource};
use crate::watch::{LeaseEvent, LeaseWatcher};

/// How long to let a burst of kernel changes settle before repairing.
const KERNEL_CHANGE_SETTLE: Duration = Duration::from_millis(50);

/// The network config from the store, once there is a valid one. The one writer of the network
/// condition.
pub(super) async fn wait_for_network(
    store: &dyn NetworkSource,
    health: &Health,
    cancel: &CancellationToken,
) -> Result<Network, AgentError> {
    let mut backoff = Backoff::new();
    loop {
        let read = store.network_config().await;
        if read.is_ok() {
            health.store_ok();
        }
        let problem = match read {
            Ok(Some(text)) => match Network::from_flannel_json(&text) {
                Ok((network, ignored)) => {
                    if !ignored.is_empty() {
                        warn!(keys = ?ignored, "ignoring unknown keys in the stored network config");
                    }
                    for (key, own) in ignored.iter().filter_map(|k| Some((k, agent_only_key(k)?))) {
                        warn!(key = %key, instead = own, "the stored network config names a cloud endpoint: ignored, only this host's own config sets it");
                    }
                    info!(network = %network, backend = network.backend.type_name(), "network config");
                    health.ok(Condition::Network);
                    return Ok(network);
                }
                Err(e) => format!("{e}"),
            },
            Ok(None) => "no network config in the store yet: publish one with `weft network apply`".to_string(),
            Err(e) => {
                health.store_error(format!("reading the network config: {e}"));
                format!("reading the network config: {e}")
            }
        };
        warn!("{problem}");
        health.fail(Condition::Network, problem);
        sleep_or_cancel(backoff.step().max(Duration::from_secs(1)), cancel).await?;
    }
}

/// Our lease, retried until held. Readiness says why while it is not; the lease condition is
/// cleared once `subnet.env` is written too ([`Running::take_up_lease`]).
pub(super) async fn acquire_until_held(
    store: &dyn LeaseStore,
    request: &LeaseRequest<'_>,
    health: &Health,
    cancel: &CancellationToken,
) -> Result<(OwnLease, Option<LeaseListing>), AgentError> {
    let mut backoff = Backoff::new();
    loop {
        match leasing::acquire_listed(store, request).await {
            Ok(acquired) => {
                health.store_ok();
                return Ok(acquired);
            }
            Err(e) => {
                if matches!(e, LeaseError::Store(_)) {
                    health.store_error(&e);
                }
                error!(error = %e, "cannot acquire a lease; retrying");
                health.fail(Condition::Lease, &e);
            }
        }
        sleep_or_cancel(backoff.step(), cancel).await?;
    }
}

/// When to renew our lease: `renew_margin` before it runs out, or, after a failed attempt, at the
/// next step of a jittered backoff.
#[derive(Debug)]
pub(super) struct Renewal {
    backoff: Backoff,
    retry_at: Option<tokio::time::Instant>,
}

impl Renewal {
    const RETRY_FIRST: Duration = Duration::from_secs(1);

    pub(super) fn new() -> Self {
        Renewal { backoff: Backoff::exponential(Self::RETRY_FIRST, Backoff::MAX), retry_at: None }
    }

    /// How long until the next attempt; `None`: never (a reservation).
    fn due_in(&self, own: &OwnLease, margin: Duration) -> Option<Duration> {
        match self.retry_at {
            Some(at) => Some(at.saturating_duration_since(tokio::time::Instant::now())),
            None => leasing::renew_in(own, margin),
        }
    }

    /// Schedules the next attempt; returns how far off it is.
    fn failed(&mut self) -> Duration {
        let delay = self.backoff.step();
        self.retry_at = Some(tokio::time::Instant::now() + delay);
        delay
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
        self.retry_at = None;
    }
}

/// Sleeps; [`AgentError::Cancelled`] when cancelled first.
async fn sleep_or_cancel(duration: Duration, cancel: &CancellationToken) -> Result<(), AgentError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(AgentError::Cancelled),
        _ = tokio::time::sleep(duration) => Ok(()),
    }
}

/// Resolves at `at`; never when `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Running {
    pub(super) async fn watch_and_renew(&mut self, cancel: &CancellationToken) -> Result<(), AgentError> {
        let mut watcher = LeaseWatcher::new(self.network.clone(), Some(self.own.id()));
        let revision = self.initial_listing(&mut watcher, cancel).await?;
        let mut updates = self.store.watch_leases(revision);
        let mut network_configs = self.store.watch_network_config();
        let mut resync = tokio::time::interval(self.config.agent.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            let renew_in = self.renewal.due_in(&self.own, self.config.agent.renew_margin);
            let renew_at = tokio::time::sleep(renew_in.unwrap_or(Duration::from_secs(86400 * 365)));
            tokio::select! {
                _ = cancel.cancelled() => {
                    info!(subnet = %self.own.key(), "stopping; the lease and installed state stay in place");
                    return Ok(());
                }
                update = updates.next() => match update {
                    Some(Ok(update)) => {
                        self.health.store_ok();
                        self.handle_update(&mut watcher, update, cancel).await?
                    }
                    Some(Err(e)) => {
                        self.health.store_error(format!("lease watch: {e}"));
                        warn!(error = %e, "lease watch interrupted; it resumes by itself");
                    }
                    None => {
                        warn!("lease watch ended; starting a new one");
                        updates = self.store.watch_leases(revision);
                    }
                },
                _ = renew_at, if renew_in.is_some() => self.renew(&mut watcher, cancel).await?,
                _ = resync.tick() => self.reconcile(&watcher).await,
                // A backend switched away from is torn down once its last peer moved, without
                // waiting for the next resync.
                _ = sleep_until(self.dataplane.retirement_due()) => {
                    self.dataplane.retire_unused(watcher.leases()).await;
                }
                change = self.dataplane.next_change() => match change {
                    Change::Kernel => {
                        // Let a burst of changes settle, then repair everything at once.
                        tokio::time::sleep(KERNEL_CHANGE_SETTLE).await;
                        debug!("kernel changed under us; repairing");
                        self.reconcile(&watcher).await;
                    }
                    // A cloud route came or went (overflow): only the peers it concerns move.
                    Change::Paths => {
                        if let Err(e) = self.dataplane.remap(watcher.leases()).await {
                            warn!(error = %e, "backend could not install every peer");
                        }
                        self.report_kernel_conflicts();
                    }
                },
                Some(config) = network_configs.next() => match config {
                    Ok(text) => self.on_network_config(text, &mut watcher, cancel).await?,
                    Err(e) => {
                        self.health.config_watch_error(format!("network config watch: {e}"));
                        debug!(error = %e, "network config watch interrupted; it resumes by itself");
                    }
                },
            }
        }
    }

    /// Lists every lease once and hands them to the backend; returns the revision to watch from.
    async fn initial_listing(
        &mut self,
        watcher: &mut LeaseWatcher,
        cancel: &CancellationToken,
    ) -> Result<i64, AgentError> {
        let mut backoff = Backoff::new();
        loop {
            let listed = match self.listing.take() {
                Some(listing) => Ok(listing),
                None => self.store.list_leases().await,
            };
            match listed {
                Ok(listing) => {
                    self.health.store_ok();
                    let revision = listing.revision;
                    if let Err(e) = self.deliver(watcher, LeaseUpdate::Resync(listing.leases, revision)).await {
                        warn!(error = %e, "backend could not install every peer");
                    }
                    self.check_backend(watcher, true).await;
                    return Ok(revision);
                }
                Err(e) => {
                    self.health.store_error(format!("listing leases: {e}"));
                    warn!(error = %e, "listing leases; retrying");
                }
            }
            sleep_or_cancel(backoff.step(), cancel).await?;
        }
    }

    async fn handle_update(
        &mut self,
        watcher: &mut LeaseWatcher,
        update: LeaseUpdate,
        cancel: &CancellationToken,
    ) -> Result<(), AgentError> {
        if self.lost_our_lease(&update) {
            warn!(subnet = %self.own.key(), "our lease was removed or taken in the store; acquiring again");
            return self.reacquire(watcher, cancel).await;
        }
        if let Err(e) = self.deliver(watcher, update).await {
            warn!(error = %e, "backend could not install every peer");
        }
        Ok(())
    }

    /// Deletes a lease of ours beside the one we hold (see [`orphans`]), if nobody wrote it
    /// since. Failing is no harm: it runs out on its own, and the next listing finds it again.
    async fn delete_orphan(&self, subnet: crate::lease::LeaseKey, revision: crate::store::Revision) {
        match self.store.delete_lease_at(subnet, revision).await {
            Ok(true) => warn!(
                %subnet,
                held = %self.own.key(),
                "deleted an orphaned lease of this host (a create whose answer was lost landed late)"
            ),
            Ok(false) => debug!(%subnet, "orphaned lease changed or gone before it was deleted"),
            Err(e) => {
                warn!(%subnet, error = %e, "could not delete an orphaned lease of this host; it runs out by itself")
            }
        }
    }

    /// Whether `update` shows our key gone or holding someone else's lease.
    fn lost_our_lease(&self, update: &LeaseUpdate) -> bool {
        let own_key = lease::subnet_key(self.own.key());
        match update {
            LeaseUpdate::Deleted { key, .. } => *key == own_key,
            LeaseUpdate::Put(raw) if raw.key == own_key => {
                raw.parse().map(|l| !l.attrs.is_same_host(&self.attrs)).unwrap_or(true)
            }
            LeaseUpdate::Resync(entries, _) => match entries.iter().find(|r| r.key == own_key) {
                None => true,
                Some(raw) => raw.parse().map(|l| !l.attrs.is_same_host(&self.attrs)).unwrap_or(true),
            },
            LeaseUpdate::Put(_) => false,
        }
    }

    async fn deliver(&mut self, watcher: &mut LeaseWatcher, update: LeaseUpdate) -> Result<(), BackendError> {
        let full_listing = matches!(update, LeaseUpdate::Resync(..));
        let orphans = orphans::orphans(&update, self.own.key(), &self.attrs);
        let result = self.deliver_events(watcher, update).await;
        for (subnet, revision) in orphans {
            self.delete_orphan(subnet, revision).await;
        }
        if full_listing {
            // Every lease was read and, when something changed, the kernel synced in full.
            heap::release_free_memory();
        }
        result
    }

    async fn deliver_events(&mut self, watcher: &mut LeaseWatcher, update: LeaseUpdate) -> Result<(), BackendError> {
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
        let applied = self.dataplane.apply(watcher.leases(), &delivery.events).await;
        self.report_kernel_conflicts();
        self.report_dataplane();
        // A cloud backend judges routes stale by the leases it was last told of: keep them current
        // (cheap: it only hands its engine the latest view).
        self.check_backend(watcher, false).await;
        applied
    }

    async fn reconcile(&mut self, watcher: &LeaseWatcher) {
        if let Err(e) = self.dataplane.reconcile(watcher.leases()).await {
            warn!(error = %e, "repairing the data plane");
        }
        self.report_kernel_conflicts();
        self.report_dataplane();
        heap::release_free_memory();
        self.sync_masquerade().await;
        self.sync_forward_rules().await;
        self.check_backend(watcher, false).await;
    }

    /// The data plane as `/status` shows it, after each sync of it.
    pub(super) fn report_dataplane(&self) {
        let view = self.dataplane.status_view();
        let backends = crate::status::Backends {
            active: view.active.map(|k| k.to_string()),
            retiring: view.retiring.iter().map(ToString::to_string).collect(),
        };
        let kernel = crate::status::KernelObjects { wanted: view.wanted as u64, installed: view.installed as u64 };
        self.health.set_dataplane(backends, view.kernel_peers as u64, kernel);
    }

    /// What of others keeps peers out of the kernel, after each sync of it: the one writer
    /// of the kernel condition and of `weft_kernel_conflicts`. (The data plane logs each conflict
    /// once, when it starts.)
    pub(super) fn report_kernel_conflicts(&self) {
        let conflicts = self.dataplane.kernel_conflicts();
        self.health.metrics.kernel_conflicts.set(conflicts.len() as i64);
        let problem =
            (!conflicts.is_empty()).then(|| conflicts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
        self.health.set(Condition::Kernel, problem);
    }

    /// The backend's own checks; the one writer of the backend condition once started.
    pub(super) async fn check_backend(&mut self, watcher: &LeaseWatcher, forced: bool) {
        match self.dataplane.check(&self.own.lease, watcher.leases(), watcher.unreadable(), forced).await {
            Ok(()) => self.health.ok(Condition::Backend),
            Err(e) => {
                warn!(error = %e, "backend check failed");
                self.health.fail(Condition::Backend, e);
            }
        }
    }

    async fn renew(&mut self, watcher: &mut LeaseWatcher, cancel: &CancellationToken) -> Result<(), AgentError> {
        match leasing::renew(self.store.as_ref(), &self.own, &self.attrs, self.config.agent.lease_ttl).await {
            Ok(own) => {
                debug!(subnet = %own.key(), "lease renewed");
                self.own = own;
                self.renewal.succeeded();
                self.health.store_ok();
                self.health.ok(Condition::Lease);
                self.health.metrics.renewals.inc();
                self.note_expiry();
                self.check_backend(watcher, true).await;
                Ok(())
            }
            Err(LeaseError::Lost(subnet)) => {
                self.renewal.succeeded();
                warn!(%subnet, "our lease changed in the store before renewal; acquiring again");
                self.reacquire(watcher, cancel).await
            }
            Err(e) => {
                // Tried again on a jittered backoff, without holding up the watch: the lease is
                // still valid for the renew margin, and hosts cut off together do not retry in
                // step.
                self.health.store_error(format!("renewing the lease: {e}"));
                let retry_in = self.renewal.failed();
                warn!(error = %e, ?retry_in, "renewing the lease; retrying");
                if self.own.has_run_out() {
                    let problem = format!(
                        "our lease on {} ran out while the store could not be reached; another host may be given the subnet ({e})",
                        self.own.key()
                    );
                    error!("{problem}");
                    self.health.fail(Condition::Lease, problem);
                    self.dataplane.own_lease_lapsed();
                }
                Ok(())
            }
        }
    }

    pub(super) async fn reacquire(
        &mut self,
        watcher: &mut LeaseWatcher,
        cancel: &CancellationToken,
    ) -> Result<(), AgentError> {
        self.health.fail(Condition::Lease, format!("our lease on {} was lost; acquiring again", self.own.key()));
        let (previous, previous_v6) = (self.own.subnet(), self.own.subnet_v6());
        let request = LeaseRequest {
            previous,
            previous_v6,
            ..LeaseRequest::new(&self.network, &self.attrs, self.config.agent.lease_ttl)
        };
        let (own, listing) = acquire_until_held(self.store.as_ref(), &request, &self.health, cancel).await?;
        self.listing = listing;
        let moved = own.key() != self.own.key();
        if moved {
            warn!(old = %self.own.key(), new = %own.key(), "our subnet changed: pods on the old one must be recreated");
        }
        self.own = own;
        watcher.set_own(self.own.id());
        if moved {
            self.dataplane.own_lease_changed(&self.own.lease).await?;
        }
        self.take_up_lease().await?;
        // Our old subnet may be someone else's now: bring the backend up to date at once.
        self.initial_listing(watcher, cancel).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Expiry, Lease, LeaseAttrs};

    fn held_for(ttl: Duration) -> OwnLease {
        let attrs = LeaseAttrs::new("192.0.2.1".parse().unwrap(), "alloc", serde_json::Value::Null);
        let lease =
            Lease { subnet: Some("10.244.1.0/24".parse().unwrap()), subnet_v6: None, attrs, expiry: Expiry::Unknown };
        OwnLease { lease, revision: 1, runs_out: Some(tokio::time::Instant::now() + ttl) }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_renewals_back_off_with_jitter_and_a_success_resumes_the_schedule() {
        let (own, margin) = (held_for(Duration::from_secs(3600)), Duration::from_secs(600));
        let mut renewal = Renewal::new();
        assert_eq!(renewal.due_in(&own, margin), Some(Duration::from_secs(3000)));
        let delays: Vec<Duration> = (0..8).map(|_| renewal.failed()).collect();
        assert_eq!(delays[0], Renewal::RETRY_FIRST, "the first retry comes after a second");
        assert!(delays.iter().all(|d| *d >= Renewal::RETRY_FIRST && *d <= Backoff::MAX), "{delays:?}");
        assert_eq!(renewal.due_in(&own, margin), Some(delays[7]), "the watch is not held up: a timer");
        // Hosts that failed together draw different delays.
        let mut other = Renewal::new();
        let theirs: Vec<Duration> = (0..8).map(|_| other.failed()).collect();
        assert_ne!(delays, theirs);
        renewal.succeeded();
        assert_eq!(renewal.due_in(&own, margin), Some(Duration::from_secs(3000)));
    }
}
