//! A started cloud backend as the data plane sees it: the engine's task, asked for passes from
//! `check`, stopped and its route removed on teardown. The same for every provider.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::engine::{Engine, Outcome, Provider, Request, Settings};
use crate::backend::{Active, BackendError, BackendKind, CloudError, LeaseData};
use crate::health::{Condition, Health};
use crate::lease::{Lease, LeaseKey, LeaseMap};

/// Teardown gives up on the cloud after this long: the agent has other work.
const TEARDOWN_DEADLINE: Duration = Duration::from_secs(60);

pub struct CloudActive<P: Provider> {
    kind: BackendKind,
    data: LeaseData,
    health: Arc<Health>,
    requests: watch::Sender<Option<Request>>,
    /// Each pass's outcome, as it also went to `/readyz`: tests wait on it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) outcomes: watch::Receiver<Outcome>,
    /// Taken by teardown, which gets the provider back.
    task: Option<JoinHandle<P>>,
    cancel: CancellationToken,
    /// Our subnets, for teardown.
    own: LeaseKey,
    /// Held by leases that do not parse: leased as far as staleness goes.
    unreadable: BTreeSet<LeaseKey>,
}

impl<P: Provider> CloudActive<P> {
    /// Starts the engine for `provider`; its first pass comes with the first `check`, which the
    /// agent makes once it has listed the leases. Until a pass confirms our route, `/readyz` says so.
    pub fn start(provider: P, settings: Settings, data: LeaseData, own: &Lease) -> Self {
        let kind = provider.kind();
        let health = settings.health.clone();
        health
            .fail(Condition::Cloud, format!("{kind}: route for {} not confirmed yet (first check running)", own.key()));
        let (requests, receiver) = watch::channel(None);
        let (engine, outcomes) = Engine::new(provider, settings);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(engine.run(receiver, cancel.clone()));
        let unreadable = BTreeSet::new();
        CloudActive { kind, data, health, requests, outcomes, task: Some(task), cancel, own: own.key(), unreadable }
    }

    fn ask(&self, request: Request, forced: bool) {
        if forced {
            // A pass now, even when nothing changed (after a renewal: our route is re-asserted).
            self.requests.send_replace(Some(request));
        } else {
            // The engine keeps its own pace; it only needs the latest view.
            self.requests.send_if_modified(|current| {
                let changed = current.as_ref() != Some(&request);
                *current = Some(request);
                changed
            });
        }
    }

    /// The last request's leases (for a request made without a fresh view).
    fn leased(&self) -> Option<BTreeSet<LeaseKey>> {
        self.requests.borrow().as_ref().and_then(|r| r.leased.clone())
    }
}

#[async_trait]
impl<P: Provider> Active for CloudActive<P> {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    async fn check(&mut self, own: &Lease, peers: &LeaseMap, forced: bool) -> Result<(), BackendError> {
        self.own = own.key();
        let leased = peers.values().map(Lease::key).chain(self.unreadable.iter().copied()).chain([self.own]).collect();
        self.ask(Request { own: Some(self.own), leased: Some(leased) }, forced);
        match &self.task {
            Some(task) if !task.is_finished() => Ok(()),
            _ => Err(BackendError::TaskStopped(self.kind)),
        }
    }

    fn unreadable_leases(&mut self, keys: &BTreeSet<LeaseKey>) {
        self.unreadable.clone_from(keys);
    }

    fn own_lease_lapsed(&mut self) {
        self.ask(Request { own: None, leased: self.leased() }, false);
    }

    /// Stops the engine after its current pass, then removes our route.
    async fn teardown(mut self: Box<Self>) -> Result<(), BackendError> {
        self.cancel.cancel();
        // Our route is no longer what readiness is about.
        self.health.ok(Condition::Cloud);
        let Some(task) = self.task.take() else { return Ok(()) };
        let provider = self.kind.as_str();
        let cloud_error = |context: String, e: Box<dyn std::error::Error + Send + Sync>| {
            BackendError::from(CloudError::new(provider, context, e))
        };
        let mut provider_task = task.await.map_err(|e| cloud_error("its route task".into(), e.into()))?;
        let own = self.own;
        match tokio::time::timeout(TEARDOWN_DEADLINE, provider_task.teardown(own)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(cloud_error(format!("removing our route for {own} (teardown)"), e.into())),
            Err(elapsed) => Err(cloud_error(format!("removing our route for {own} (teardown)"), elapsed.into())),
        }
    }
}

impl<P: Provider> Drop for CloudActive<P> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
