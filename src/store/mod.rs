//! Where leases, the network config and leaderships live. Three jobs, one trait each:
//! [`LeaseStore`] (this host's lease and everyone else's), [`NetworkSource`] (the cluster network
//! config: from the store for etcd and local, from the agent's own config file for kube) and
//! [`Leadership`] (cluster-wide chores one agent at a time). [`Store`] is all three, the handle
//! the agent holds; functions take the narrowest trait they need.
//!
//! Stores: etcd v3 (flannel's layout), an embedded store for one machine, the Kubernetes API, and
//! an in-memory one for tests. Stores move raw keys and bytes; reading them into leases is shared
//! (`lease::parse_lease`) so every store skips malformed data the same way.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;

use crate::lease::{self, Expiry, Lease, LeaseKey, LeaseParseError};

pub mod etcd;
mod etcd_members;
#[cfg(feature = "kube")]
pub mod kube;
pub mod local;
pub mod memory;
pub mod network_source;
pub mod open;

pub use network_source::{FileNetworkSource, WithNetwork};
pub use open::{open, open_with_network};

/// Store revision: increases with every write. Used to watch from a listing and to update a key
/// only if nobody else wrote it since we did.
pub type Revision = i64;

/// A subnet key and its value as the store holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLease {
    /// Last path element of the key, e.g. `10.244.3.0-24`.
    pub key: String,
    pub value: Vec<u8>,
    pub expiry: Expiry,
    /// Revision of the last write to this key.
    pub mod_revision: Revision,
}

impl RawLease {
    pub fn parse(&self) -> Result<Lease, LeaseParseError> {
        lease::parse_lease(&self.key, &self.value, self.expiry)
    }
}

/// All leases at one revision.
#[derive(Debug, Clone, Default)]
pub struct LeaseListing {
    pub leases: Vec<RawLease>,
    pub revision: Revision,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseUpdate {
    Put(RawLease),
    Deleted {
        key: String,
        revision: Revision,
    },
    /// The watch lost track (disconnect, compaction, a store that only polls): here is everything,
    /// as of `revision`; the consumer works out what changed.
    Resync(Vec<RawLease>, Revision),
}

/// What a lease write puts in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseWrite<'a> {
    /// The subnets, which make the key.
    pub key: LeaseKey,
    /// The lease attributes, flannel's JSON.
    pub attrs_json: &'a str,
    /// How long the lease lives; `None` writes a reservation, which never expires.
    pub ttl: Option<Duration>,
}

impl<'a> LeaseWrite<'a> {
    pub fn new(key: impl Into<LeaseKey>, attrs_json: &'a str, ttl: Option<Duration>) -> Self {
        LeaseWrite { key: key.into(), attrs_json, ttl }
    }
}

/// What a conditional write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written {
        revision: Revision,
        expiry: Expiry,
    },
    /// Someone else holds the key (create) or wrote it since (update).
    Conflict,
}

/// The underlying error of a store error: etcd's, the file system's, JSON's, Kubernetes'.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed. `context` says what was being done (and on which key or file);
/// `source`, when there is one, is the error underneath, kept whole.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Try again later: the store did not answer, the connection or a watch broke.
    #[error("store unavailable: {context}{}", because(source))]
    Unavailable {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// The store answered, and refused.
    #[error("store request failed: {context}{}", because(source))]
    Request {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// What the store holds (or answered) cannot be read.
    #[error("store data: {context}{}", because(source))]
    Corrupt {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// The store is configured wrong, or asked for something it cannot do: retrying will not help.
    #[error("{context}{}", because(source))]
    Config {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// The operation was given up before it finished (the runtime is shutting down).
    #[error("store operation cancelled: {context}")]
    Cancelled { context: String },
}

/// The kind of a [`StoreError`] and what was being done: two errors with the same `Failure` are
/// the same problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    kind: std::mem::Discriminant<StoreError>,
    context: String,
}

/// `": <source>"`, so that a message read alone (a log line, a CLI error) says everything.
fn because(source: &Option<Cause>) -> String {
    source.as_ref().map(|s| format!(": {s}")).unwrap_or_default()
}

impl StoreError {
    pub fn unavailable(context: impl Into<String>) -> Self {
        StoreError::Unavailable { context: context.into(), source: None }
    }

    pub fn request(context: impl Into<String>) -> Self {
        StoreError::Request { context: context.into(), source: None }
    }

    pub fn corrupt(context: impl Into<String>) -> Self {
        StoreError::Corrupt { context: context.into(), source: None }
    }

    pub fn config(context: impl Into<String>) -> Self {
        StoreError::Config { context: context.into(), source: None }
    }

    /// The same error, caused by `cause`.
    pub fn because(mut self, cause: impl Into<Cause>) -> Self {
        match &mut self {
            StoreError::Unavailable { source, .. }
            | StoreError::Request { source, .. }
            | StoreError::Corrupt { source, .. }
            | StoreError::Config { source, .. } => *source = Some(cause.into()),
            StoreError::Cancelled { .. } => {}
        }
        self
    }

    /// What was being done.
    pub fn context(&self) -> &str {
        match self {
            StoreError::Unavailable { context, .. }
            | StoreError::Request { context, .. }
            | StoreError::Corrupt { context, .. }
            | StoreError::Config { context, .. }
            | StoreError::Cancelled { context } => context,
        }
    }

    /// What failed, without why: a watch that polls reports a lasting problem once, not on every
    /// poll, however its cause words it this time.
    pub fn failure(&self) -> Failure {
        Failure { kind: std::mem::discriminant(self), context: self.context().to_string() }
    }

    /// This error as unavailability: a watch that breaks, whatever the reason, starts over.
    pub fn into_unavailable(self) -> Self {
        match self {
            StoreError::Request { context, source }
            | StoreError::Corrupt { context, source }
            | StoreError::Config { context, source } => StoreError::Unavailable { context, source },
            StoreError::Cancelled { context } => StoreError::Unavailable { context, source: None },
            unavailable @ StoreError::Unavailable { .. } => unavailable,
        }
    }

    /// A blocking store task that did not finish.
    pub(crate) fn join(context: impl Into<String>, error: tokio::task::JoinError) -> Self {
        if error.is_cancelled() {
            StoreError::Cancelled { context: context.into() }
        } else {
            StoreError::unavailable(context).because(error)
        }
    }
}

/// Leases: this host's own (create, renew, release) and everyone's (list, watch).
#[async_trait]
pub trait LeaseStore: Send + Sync {
    async fn list_leases(&self) -> Result<LeaseListing, StoreError>;

    /// Creates the subnet's key only if it does not exist (flannel's `version(key) == 0`
    /// transaction).
    async fn create_lease(&self, write: LeaseWrite<'_>) -> Result<WriteOutcome, StoreError>;

    /// Rewrites the subnet's key with a fresh TTL, only if it is still at `expected` (still ours).
    async fn update_lease(&self, write: LeaseWrite<'_>, expected: Revision) -> Result<WriteOutcome, StoreError>;

    /// Deletes the lease of `key`; false when there was none.
    async fn delete_lease(&self, key: LeaseKey) -> Result<bool, StoreError>;

    /// Deletes the lease of `key` only if nobody wrote it since `revision`; false when it was not
    /// deleted. For orphans of our own (a create whose answer was lost and that landed after we
    /// had taken another subnet): etcd's writes can be in doubt, the local store's and
    /// Kubernetes' (one lease per node) cannot, so they have none and keep this default.
    async fn delete_lease_at(&self, _key: LeaseKey, _revision: Revision) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Changes to leases after `after`. The stream never ends on its own: it reconnects and
    /// yields `Resync` when it had to start over; errors are reported and the watch goes on.
    fn watch_leases(&self, after: Revision) -> BoxStream<'static, Result<LeaseUpdate, StoreError>>;

    /// Looks up when leases of `Expiry::Unknown` run out (etcd lists without TTLs).
    async fn resolve_expiry(&self, _leases: &mut [RawLease]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The subnet this host must hold when the store assigns it (Kubernetes: the node's
    /// `spec.podCIDR`); `None` when hosts pick their own (etcd, local). A store that assigns
    /// subnets but has not assigned one yet returns an error, and the agent retries.
    async fn assigned_subnet(&self) -> Result<Option<LeaseKey>, StoreError> {
        Ok(None)
    }
}

/// The cluster network config (flannel's JSON): in the store for etcd and local (`weft network
/// apply` publishes it), the `[network]` table of the agent's own config file for kube.
#[async_trait]
pub trait NetworkSource: Send + Sync {
    /// The network config, if published.
    async fn network_config(&self) -> Result<Option<String>, StoreError>;

    async fn put_network_config(&self, json: &str) -> Result<(), StoreError>;

    /// The network config now, then again each time it changes (`None`: removed). Never ends on
    /// its own; errors are reported and the watch goes on. Agents follow it to switch backends.
    fn watch_network_config(&self) -> BoxStream<'static, Result<Option<String>, StoreError>>;
}

/// Cluster-wide chores (removing stale cloud routes) run on one agent at a time.
#[async_trait]
pub trait Leadership: Send + Sync {
    /// Takes, or keeps, the leadership `name` for `holder` during `ttl`; true while `holder`
    /// leads. The leader calls again before `ttl` runs out to keep leading; a dead leader's turn
    /// expires.
    async fn lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Shares `view` (what the leader of `name` read from the cloud) with the other agents, so
    /// that they need not ask the cloud the same question: written only while `holder` leads,
    /// gone `ttl` after its last write. `Ok(false)`: not shared (not leading, or a store that
    /// cannot share; every agent then asks the cloud itself).
    async fn share_view(&self, _name: &str, _holder: &str, _view: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// The view the leader of `name` shares, while it is fresh.
    async fn shared_view(&self, _name: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

/// All three jobs behind one handle: what the agent holds. Every type that does the three is one.
pub trait Store: LeaseStore + NetworkSource + Leadership {}

impl<T: LeaseStore + NetworkSource + Leadership + ?Sized> Store for T {}

/// A channel's receiving end as a stream, for stores that produce a watch on a task of their own:
/// dropping the stream drops the receiver, which tells the task to stop.
pub fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> BoxStream<'static, T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

/// Turns a TTL into the moment it runs out. A TTL past what the clock can hold (a store's
/// answer is not ours to trust) gives an unknown expiry rather than a panic.
pub fn expiry_after(ttl: Option<Duration>) -> Expiry {
    match ttl {
        None => Expiry::Never,
        Some(ttl) => SystemTime::now().checked_add(ttl).map_or(Expiry::Unknown, Expiry::At),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_past_the_clock_gives_an_unknown_expiry() {
        assert_eq!(expiry_after(Some(Duration::MAX)), Expiry::Unknown);
        assert!(matches!(expiry_after(Some(Duration::from_secs(60))), Expiry::At(_)));
        assert_eq!(expiry_after(None), Expiry::Never);
    }
}
