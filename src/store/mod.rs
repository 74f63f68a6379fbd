//! Where leases and the network config live. One trait, several stores: etcd v3 (flannel's layout)
//! and an embedded store for one machine. Stores move raw keys and bytes; reading them into leases
//! is shared (`lease::parse_lease`) so every store skips malformed data the same way.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::BoxStream;
use ipnet::Ipv4Net;

use crate::lease::{self, Expiry, Lease, LeaseParseError};

pub mod etcd;
#[cfg(feature = "kube")]
pub mod kube;
pub mod local;
pub mod open;

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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store request failed: {0}")]
    Request(String),
    #[error("store data: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Config(String),
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

#[async_trait]
pub trait Store: Send + Sync {
    /// The cluster network config (flannel's JSON), if published.
    async fn network_config(&self) -> Result<Option<String>, StoreError>;
    async fn put_network_config(&self, json: &str) -> Result<(), StoreError>;

    async fn list_leases(&self) -> Result<LeaseListing, StoreError>;

    /// Creates `subnet`'s key only if it does not exist (flannel's `version(key) == 0`
    /// transaction). `ttl: None` writes a reservation.
    async fn create_lease(
        &self,
        subnet: Ipv4Net,
        attrs_json: &str,
        ttl: Option<Duration>,
    ) -> Result<WriteOutcome, StoreError>;

    /// Rewrites `subnet`'s key with a fresh TTL, only if it is still at `expected` (still ours).
    async fn update_lease(
        &self,
        subnet: Ipv4Net,
        attrs_json: &str,
        ttl: Option<Duration>,
        expected: Revision,
    ) -> Result<WriteOutcome, StoreError>;

    /// Deletes `subnet`'s key; false when there was none.
    async fn delete_lease(&self, subnet: Ipv4Net) -> Result<bool, StoreError>;

    /// Changes to leases after `after`. The stream never ends on its own: it reconnects and
    /// yields `Resync` when it had to start over; errors are reported and the watch goes on.
    fn watch_leases(&self, after: Revision) -> BoxStream<'static, Result<LeaseUpdate, StoreError>>;

    /// Takes, or keeps, the leadership `name` for `holder` during `ttl`; true while `holder`
    /// leads. Cluster-wide chores (removing stale cloud routes) run on one agent at a time: the
    /// leader calls again before `ttl` runs out to keep leading; a dead leader's turn expires.
    async fn lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// The network config now, then again each time it changes (`None`: removed). Never ends on
    /// its own; errors are reported and the watch goes on. Agents follow it to switch backends.
    fn watch_network_config(&self) -> BoxStream<'static, Result<Option<String>, StoreError>>;

    /// Looks up when leases of `Expiry::Unknown` run out (etcd lists without TTLs).
    async fn resolve_expiry(&self, _leases: &mut [RawLease]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The subnet this host must hold when the store assigns it (Kubernetes: the node's
    /// `spec.podCIDR`); `None` when hosts pick their own (etcd, local). A store that assigns
    /// subnets but has not assigned one yet returns an error, and the agent retries.
    async fn assigned_subnet(&self) -> Result<Option<Ipv4Net>, StoreError> {
        Ok(None)
    }
}

/// The network config as the agent's own file has it (`[network]` as flannel JSON), for a store
/// that keeps none in the cluster (Kubernetes: every agent reads the ConfigMap). The agent's reload
/// loop sends each edit, and the store serves it like etcd serves its `config` key: an edit of
/// `[network.backend]` then switches live on every store alike.
pub type FileNetwork = tokio::sync::watch::Receiver<Option<String>>;

/// A [`FileNetwork`] starting at `section`, and the sender that keeps it current.
pub fn file_network(
    section: &crate::network::NetworkSection,
) -> Result<(tokio::sync::watch::Sender<Option<String>>, FileNetwork), StoreError> {
    let json = file_network_json(section)?;
    Ok(tokio::sync::watch::channel(Some(json)))
}

/// `section` as the flannel JSON a [`FileNetwork`] carries.
pub fn file_network_json(section: &crate::network::NetworkSection) -> Result<String, StoreError> {
    let network = crate::network::Network::new(section).map_err(|e| StoreError::Config(e.to_string()))?;
    Ok(network.to_flannel_json())
}

/// [`Store::watch_network_config`] over a [`FileNetwork`]: the current value, then each change.
/// It never ends, also when the sender is gone (the config simply stops changing).
pub fn follow_file_network(mut network: FileNetwork) -> BoxStream<'static, Result<Option<String>, StoreError>> {
    use futures::StreamExt;
    let current = network.borrow_and_update().clone();
    let changes = futures::stream::unfold(network, |mut network| async move {
        if network.changed().await.is_err() {
            return std::future::pending().await;
        }
        let current = network.borrow_and_update().clone();
        Some((Ok(current), network))
    });
    futures::stream::once(async move { Ok(current) }).chain(changes).boxed()
}

/// Turns a TTL into the moment it runs out.
pub fn expiry_after(ttl: Option<Duration>) -> Expiry {
    match ttl {
        None => Expiry::Never,
        Some(ttl) => Expiry::At(SystemTime::now() + ttl),
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_file_network_serves_the_current_config_then_each_edit_and_never_ends() {
        let (edits, network) = tokio::sync::watch::channel(Some("one".to_string()));
        let mut watch = follow_file_network(network);
        assert_eq!(watch.next().await.unwrap().unwrap().as_deref(), Some("one"));
        edits.send_replace(Some("two".into()));
        assert_eq!(watch.next().await.unwrap().unwrap().as_deref(), Some("two"));
        drop(edits);
        let more = tokio::time::timeout(std::time::Duration::from_millis(50), watch.next()).await;
        assert!(more.is_err(), "the watch goes on (pending) after the sender is gone");
    }
}
