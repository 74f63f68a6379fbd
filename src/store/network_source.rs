//! The network config of stores that keep none (Kubernetes): the `[network]` table of the agent's
//! own config file. The agent's reload loop hands every new version of the file to
//! [`FileNetworkSource::set`], and the agent follows it through `watch_network_config`, as it
//! follows etcd's key: an edit of `[network.backend]` switches the backend live on every store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

use super::{
    Leadership, LeaseListing, LeaseStore, LeaseUpdate, LeaseWrite, NetworkSource, RawLease, Revision, StoreError,
    WriteOutcome,
};
use crate::lease::LeaseKey;
use crate::network::{Network, NetworkSection};

/// The `[network]` table of the config file, as the network source. Cheap to clone: clones see
/// the same table. `Default`: no table (commands that need no network config).
#[derive(Debug, Clone)]
pub struct FileNetworkSource {
    section: Arc<watch::Sender<Option<NetworkSection>>>,
}

impl Default for FileNetworkSource {
    fn default() -> Self {
        FileNetworkSource { section: Arc::new(watch::Sender::new(None)) }
    }
}

impl FileNetworkSource {
    pub fn new(section: &NetworkSection) -> Self {
        FileNetworkSource { section: Arc::new(watch::Sender::new(Some(section.clone()))) }
    }

    /// The config file was read again: watchers hear of the table if it changed. True when it did.
    pub fn set(&self, section: &NetworkSection) -> bool {
        self.section.send_if_modified(|current| {
            if current.as_ref() == Some(section) {
                return false;
            }
            *current = Some(section.clone());
            true
        })
    }
}

/// flannel's JSON of the table; a table that is no network is the file's mistake.
fn flannel_json(section: Option<&NetworkSection>) -> Result<Option<String>, StoreError> {
    let Some(section) = section else { return Ok(None) };
    let network =
        Network::new(section).map_err(|e| StoreError::config("the [network] table of the config file").because(e))?;
    Ok(Some(network.to_flannel_json()))
}

#[async_trait]
impl NetworkSource for FileNetworkSource {
    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        flannel_json(self.section.borrow().as_ref())
    }

    async fn put_network_config(&self, _json: &str) -> Result<(), StoreError> {
        Err(StoreError::config(
            "store.kind = \"kube\" keeps no network config in the cluster: every agent reads the [network] table of its weft.toml (the ConfigMap)",
        ))
    }

    /// The table now, then each new one [`set`](Self::set) hands in.
    fn watch_network_config(&self) -> BoxStream<'static, Result<Option<String>, StoreError>> {
        follow(self.section.clone(), |section| flannel_json(section.as_ref()))
    }
}

/// The value `tx` holds now, then each new one, through `read`. The stream holds the sender: it
/// never ends, even when everything else that held it is gone.
pub(crate) fn follow<T, U>(tx: Arc<watch::Sender<T>>, read: fn(&T) -> U) -> BoxStream<'static, U>
where
    T: Send + Sync + 'static,
    U: Send + 'static,
{
    let rx = tx.subscribe();
    stream::unfold((rx, tx, true), move |(mut rx, tx, first)| async move {
        if !first {
            // Only fails when the sender is gone, and the stream holds it.
            rx.changed().await.ok()?;
        }
        let item = read(&rx.borrow_and_update());
        Some((item, (rx, tx, false)))
    })
    .boxed()
}

/// A store that keeps leases and leaderships, with the network config from another source.
pub struct WithNetwork<S> {
    store: S,
    network: FileNetworkSource,
}

impl<S> WithNetwork<S> {
    pub fn new(store: S, network: FileNetworkSource) -> Self {
        WithNetwork { store, network }
    }
}

#[async_trait]
impl<S: LeaseStore> LeaseStore for WithNetwork<S> {
    async fn list_leases(&self) -> Result<LeaseListing, StoreError> {
        self.store.list_leases().await
    }

    async fn create_lease(&self, write: LeaseWrite<'_>) -> Result<WriteOutcome, StoreError> {
        self.store.create_lease(write).await
    }

    async fn update_lease(&self, write: LeaseWrite<'_>, expected: Revision) -> Result<WriteOutcome, StoreError> {
        self.store.update_lease(write, expected).await
    }

    async fn delete_lease(&self, key: LeaseKey) -> Result<bool, StoreError> {
        self.store.delete_lease(key).await
    }

    fn watch_leases(&self, after: Revision) -> BoxStream<'static, Result<LeaseUpdate, StoreError>> {
        self.store.watch_leases(after)
    }

    async fn resolve_expiry(&self, leases: &mut [RawLease]) -> Result<(), StoreError> {
        self.store.resolve_expiry(leases).await
    }

    async fn assigned_subnet(&self) -> Result<Option<LeaseKey>, StoreError> {
        self.store.assigned_subnet().await
    }
}

#[async_trait]
impl<S: Send + Sync> NetworkSource for WithNetwork<S> {
    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        self.network.network_config().await
    }

    async fn put_network_config(&self, json: &str) -> Result<(), StoreError> {
        self.network.put_network_config(json).await
    }

    fn watch_network_config(&self) -> BoxStream<'static, Result<Option<String>, StoreError>> {
        self.network.watch_network_config()
    }
}

#[async_trait]
impl<S: Leadership> Leadership for WithNetwork<S> {
    async fn lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.store.lead(name, holder, ttl).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(cidr: &str, backend: &str) -> NetworkSection {
        let text = format!("cidr = \"{cidr}\"\n[backend]\ntype = \"{backend}\"\n");
        toml::from_str(&text).unwrap()
    }

    async fn next(watch: &mut BoxStream<'static, Result<Option<String>, StoreError>>) -> String {
        let item = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("an item in time");
        item.expect("the watch goes on").expect("a valid network").expect("a network")
    }

    #[tokio::test]
    async fn a_reloaded_table_reaches_the_watch() {
        let source = FileNetworkSource::new(&section("10.244.0.0/16", "vxlan"));
        let mut watch = source.watch_network_config();
        assert!(next(&mut watch).await.contains("vxlan"));
        assert!(!source.set(&section("10.244.0.0/16", "vxlan")), "an unchanged table is no change");
        assert!(source.set(&section("10.244.0.0/16", "host-gw")));
        let switched = next(&mut watch).await;
        assert!(switched.contains("host-gw"), "{switched}");
        assert_eq!(source.network_config().await.unwrap(), Some(switched));
    }

    #[tokio::test]
    async fn the_watch_outlives_the_source() {
        let source = FileNetworkSource::new(&section("10.244.0.0/16", "vxlan"));
        let mut watch = source.watch_network_config();
        drop(source);
        next(&mut watch).await;
        let more = tokio::time::timeout(Duration::from_millis(50), watch.next()).await;
        assert!(more.is_err(), "the watch ended or yielded: {more:?}");
    }

    #[tokio::test]
    async fn a_bad_table_is_a_config_error_and_no_table_is_none() {
        let source = FileNetworkSource::new(&section("banana", "vxlan"));
        let err = source.network_config().await.unwrap_err();
        assert!(matches!(err, StoreError::Config { source: Some(_), .. }), "{err:?}");
        assert_eq!(FileNetworkSource::default().network_config().await.unwrap(), None);
        let refused = FileNetworkSource::default().put_network_config("{}").await.unwrap_err();
        assert!(matches!(refused, StoreError::Config { .. }), "{refused:?}");
    }
}
