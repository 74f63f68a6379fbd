//! A store in memory, for unit tests: create-if-absent and update-if-revision like etcd's
//! transactions, watches fed by a broadcast of every change, TTLs and leaderships on
//! `tokio::time`, so a test under `tokio::time::pause()` lets a lease run out in no time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::network_source::follow;
use super::{
    Leadership, LeaseListing, LeaseStore, LeaseUpdate, LeaseWrite, NetworkSource, RawLease, Revision, StoreError,
    WriteOutcome,
};
use crate::lease::{parse_lease_key, subnet_key, Expiry, LeaseKey};

/// Changes a watch may fall behind by before it is resynced.
const WATCH_BUFFER: usize = 1024;

/// The in-memory store. Cheap to clone: clones share the data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Every change, sent while the state is locked: a watch subscribed under the lock misses none.
    updates: broadcast::Sender<LeaseUpdate>,
    config: Arc<watch::Sender<Option<String>>>,
}

#[derive(Default)]
struct State {
    revision: Revision,
    leases: BTreeMap<String, Entry>,
    /// Leaderships by name: holder and until when.
    leaders: HashMap<String, (String, Instant)>,
    /// Shared views by leadership name: the view and until when.
    views: HashMap<String, (String, Instant)>,
}

struct Entry {
    value: String,
    /// `None`: a reservation.
    expires: Option<Instant>,
    mod_revision: Revision,
}

impl Entry {
    fn raw(&self, key: &str, now: Instant) -> RawLease {
        let expiry = match self.expires {
            None => Expiry::Never,
            Some(at) => Expiry::At(SystemTime::now() + at.saturating_duration_since(now)),
        };
        RawLease {
            key: key.to_string(),
            value: self.value.clone().into_bytes(),
            expiry,
            mod_revision: self.mod_revision,
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("revision", &self.lock().revision).finish_non_exhaustive()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        let (updates, _) = broadcast::channel(WATCH_BUFFER);
        let inner = Inner { state: Mutex::default(), updates, config: Arc::new(watch::Sender::new(None)) };
        MemoryStore { inner: Arc::new(inner) }
    }

    /// The state, its expired leases removed (each removal a change watches see, as in etcd).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }

    /// Writes `write` at the next revision, and removes it again when its TTL runs out.
    fn put(&self, state: &mut State, write: LeaseWrite<'_>) -> WriteOutcome {
        state.revision += 1;
        let now = Instant::now();
        let expires = write.ttl.map(|ttl| now + ttl);
        let key = subnet_key(write.key);
        let entry = Entry { value: write.attrs_json.to_string(), expires, mod_revision: state.revision };
        let raw = entry.raw(&key, now);
        state.leases.insert(key, entry);
        let _ = self.inner.updates.send(LeaseUpdate::Put(raw.clone()));
        if let Some(at) = expires {
            let inner = Arc::downgrade(&self.inner);
            tokio::spawn(expire_at(inner, at));
        }
        WriteOutcome::Written { revision: state.revision, expiry: raw.expiry }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; the data is still whole.
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let expired: Vec<String> = state
            .leases
            .iter()
            .filter(|(_, entry)| entry.expires.is_some_and(|at| at <= now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            state.leases.remove(&key);
            state.revision += 1;
            let _ = self.updates.send(LeaseUpdate::Deleted { key, revision: state.revision });
        }
        state
    }

    /// Everything as of now, and a subscription to every change after it.
    fn snapshot(&self) -> (LeaseListing, broadcast::Receiver<LeaseUpdate>) {
        let state = self.lock();
        let now = Instant::now();
        let leases = state.leases.iter().map(|(key, entry)| entry.raw(key, now)).collect();
        (LeaseListing { leases, revision: state.revision }, self.updates.subscribe())
    }
}

/// Lets a lease run out on time even when nobody calls the store.
async fn expire_at(inner: Weak<Inner>, at: Instant) {
    tokio::time::sleep_until(at).await;
    if let Some(inner) = inner.upgrade() {
        drop(inner.lock());
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn list_leases(&self) -> Result<LeaseListing, StoreError> {
        Ok(self.inner.snapshot().0)
    }

    async fn create_lease(&self, write: LeaseWrite<'_>) -> Result<WriteOutcome, StoreError> {
        let mut state = self.lock();
        // A dual-stack key differs from an IPv4 one of the same subnet: what must be absent is
        // any key holding either subnet.
        let taken =
            state.leases.keys().filter_map(|k| parse_lease_key(k).ok()).any(|k| k.shares_a_subnet_with(&write.key));
        if taken {
            return Ok(WriteOutcome::Conflict);
        }
        Ok(self.put(&mut state, write))
    }

    async fn update_lease(&self, write: LeaseWrite<'_>, expected: Revision) -> Result<WriteOutcome, StoreError> {
        let mut state = self.lock();
        let ours = state.leases.get(&subnet_key(write.key)).is_some_and(|e| e.mod_revision == expected);
        if !ours {
            return Ok(WriteOutcome::Conflict);
        }
        Ok(self.put(&mut state, write))
    }

    async fn delete_lease(&self, key: LeaseKey) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let key = subnet_key(key);
        if state.leases.remove(&key).is_none() {
            return Ok(false);
        }
        state.revision += 1;
        let _ = self.inner.updates.send(LeaseUpdate::Deleted { key, revision: state.revision });
        Ok(true)
    }

    async fn delete_lease_at(&self, key: LeaseKey, revision: Revision) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let key = subnet_key(key);
        if state.leases.get(&key).is_none_or(|e| e.mod_revision != revision) {
            return Ok(false);
        }
        state.leases.remove(&key);
        state.revision += 1;
        let _ = self.inner.updates.send(LeaseUpdate::Deleted { key, revision: state.revision });
        Ok(true)
    }

    /// Changes after `after`; when the store has moved on since (or the watch falls behind), a
    /// `Resync` of everything first.
    fn watch_leases(&self, after: Revision) -> BoxStream<'static, Result<LeaseUpdate, StoreError>> {
        let (listing, rx) = self.inner.snapshot();
        let first = (listing.revision != after).then_some(LeaseUpdate::Resync(listing.leases, listing.revision));
        let inner = self.inner.clone();
        let changes = stream::unfold((rx, inner), |(mut rx, inner)| async move {
            let update = match rx.recv().await {
                Ok(update) => update,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let (listing, fresh) = inner.snapshot();
                    rx = fresh;
                    LeaseUpdate::Resync(listing.leases, listing.revision)
                }
                // The sender lives in `inner`, which this stream holds.
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(update), (rx, inner)))
        });
        stream::iter(first.map(Ok)).chain(changes).boxed()
    }
}

#[async_trait]
impl NetworkSource for MemoryStore {
    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        Ok(self.inner.config.borrow().clone())
    }

    async fn put_network_config(&self, json: &str) -> Result<(), StoreError> {
        self.inner.config.send_if_modified(|current| {
            let changed = current.as_deref() != Some(json);
            *current = Some(json.to_string());
            changed
        });
        Ok(())
    }

    fn watch_network_config(&self) -> BoxStream<'static, Result<Option<String>, StoreError>> {
        follow(self.inner.config.clone(), |json| Ok(json.clone()))
    }
}

#[async_trait]
impl Leadership for MemoryStore {
    async fn lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let now = Instant::now();
        if let Some((current, until)) = state.leaders.get(name) {
            if current != holder && *until > now {
                return Ok(false);
            }
        }
        state.leaders.insert(name.to_string(), (holder.to_string(), now + ttl));
        Ok(true)
    }

    async fn share_view(&self, name: &str, holder: &str, view: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let now = Instant::now();
        let leads = state.leaders.get(name).is_some_and(|(current, until)| current == holder && *until > now);
        if leads {
            state.views.insert(name.to_string(), (view.to_string(), now + ttl));
        }
        Ok(leads)
    }

    async fn shared_view(&self, name: &str) -> Result<Option<String>, StoreError> {
        let state = self.lock();
        let now = Instant::now();
        Ok(state.views.get(name).filter(|(_, until)| *until > now).map(|(view, _)| view.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

    fn net(cidr: &str) -> ipnet::Ipv4Net {
        cidr.parse().unwrap()
    }

    fn write(cidr: &str, ttl: Option<Duration>) -> LeaseWrite<'static> {
        LeaseWrite::new(net(cidr), r#"{"PublicIP":"192.0.2.1"}"#, ttl)
    }

    fn revision(outcome: WriteOutcome) -> Revision {
        match outcome {
            WriteOutcome::Written { revision, .. } => revision,
            WriteOutcome::Conflict => panic!("conflict"),
        }
    }

    async fn next(watch: &mut BoxStream<'static, Result<LeaseUpdate, StoreError>>) -> LeaseUpdate {
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap()
    }

    /// As etcd's create: a key holding either subnet of the new one makes it a conflict.
    #[tokio::test]
    async fn a_subnet_of_either_family_is_held_by_one_key() {
        let store = MemoryStore::new();
        let create = |text: &str| {
            let key = parse_lease_key(text).unwrap();
            let store = store.clone();
            async move { store.create_lease(LeaseWrite::new(key, "{}", None)).await.unwrap() }
        };
        assert!(matches!(create("10.244.8.0-24&2001:db8:42:1::-64").await, WriteOutcome::Written { .. }));
        assert_eq!(create("10.244.8.0-24&2001:db8:42:2::-64").await, WriteOutcome::Conflict);
        assert_eq!(create("10.244.9.0-24&2001:db8:42:1::-64").await, WriteOutcome::Conflict);
        assert_eq!(create("10.244.8.0-24").await, WriteOutcome::Conflict);
        assert!(matches!(create("10.244.9.0-24").await, WriteOutcome::Written { .. }));
    }

    #[tokio::test]
    async fn writes_are_conditional() {
        let store = MemoryStore::new();
        let first = revision(store.create_lease(write("10.244.1.0/24", HOUR)).await.unwrap());
        assert_eq!(store.create_lease(write("10.244.1.0/24", HOUR)).await.unwrap(), WriteOutcome::Conflict);
        let second = revision(store.update_lease(write("10.244.1.0/24", HOUR), first).await.unwrap());
        assert!(second > first);
        assert_eq!(store.update_lease(write("10.244.1.0/24", HOUR), first).await.unwrap(), WriteOutcome::Conflict);
        assert!(store.delete_lease(net("10.244.1.0/24").into()).await.unwrap());
        assert!(!store.delete_lease(net("10.244.1.0/24").into()).await.unwrap());
        assert!(store.list_leases().await.unwrap().leases.is_empty());
    }

    #[tokio::test]
    async fn watches_see_every_change_and_expiry() {
        tokio::time::pause();
        let store = MemoryStore::new();
        let start = store.list_leases().await.unwrap().revision;
        let mut watch = store.watch_leases(start);
        let created =
            revision(store.create_lease(write("10.244.1.0/24", Some(Duration::from_secs(10)))).await.unwrap());
        let LeaseUpdate::Put(put) = next(&mut watch).await else { panic!("expected a put") };
        assert_eq!((put.key.as_str(), put.mod_revision), ("10.244.1.0-24", created));
        // Nobody calls the store: the lease runs out on its own, and the watch hears of it.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(next(&mut watch).await, LeaseUpdate::Deleted { key: "10.244.1.0-24".into(), revision: created + 1 });
        assert!(store.list_leases().await.unwrap().leases.is_empty());
    }

    #[tokio::test]
    async fn a_watch_from_an_old_revision_starts_with_a_resync() {
        let store = MemoryStore::new();
        store.create_lease(write("10.244.1.0/24", None)).await.unwrap();
        let mut watch = store.watch_leases(0);
        let LeaseUpdate::Resync(leases, revision) = next(&mut watch).await else { panic!("expected a resync") };
        assert_eq!((leases.len(), revision), (1, 1));
        assert_eq!(leases[0].expiry, Expiry::Never);
    }

    #[tokio::test]
    async fn the_network_config_is_watched_by_value() {
        let store = MemoryStore::new();
        let mut watch = store.watch_network_config();
        assert_eq!(watch.next().await.unwrap().unwrap(), None);
        store.put_network_config("{\"Network\":\"10.244.0.0/16\"}").await.unwrap();
        store.put_network_config("{\"Network\":\"10.244.0.0/16\"}").await.unwrap();
        store.put_network_config("{\"Network\":\"10.245.0.0/16\"}").await.unwrap();
        let seen = watch.next().await.unwrap().unwrap();
        // A watch reads the latest value: it may skip one it was slow to read, never repeat one.
        assert_eq!(seen.as_deref(), Some("{\"Network\":\"10.245.0.0/16\"}"));
        assert_eq!(store.network_config().await.unwrap(), seen);
    }

    #[tokio::test]
    async fn leadership_lapses_after_its_ttl() {
        tokio::time::pause();
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(30);
        assert!(store.lead("routes", "a", ttl).await.unwrap());
        assert!(!store.lead("routes", "b", ttl).await.unwrap());
        assert!(store.lead("routes", "a", ttl).await.unwrap(), "the leader keeps its turn");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(store.lead("routes", "b", ttl).await.unwrap());
        assert!(!store.lead("routes", "a", ttl).await.unwrap());
    }

    #[tokio::test]
    async fn only_the_leader_shares_a_view_and_it_lapses() {
        tokio::time::pause();
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(30);
        assert!(!store.share_view("routes", "a", "seen by a", ttl).await.unwrap(), "nobody leads yet");
        assert!(store.lead("routes", "a", ttl).await.unwrap());
        assert!(!store.share_view("routes", "b", "seen by b", ttl).await.unwrap(), "b does not lead");
        assert!(store.share_view("routes", "a", "seen by a", ttl).await.unwrap());
        assert_eq!(store.shared_view("routes").await.unwrap().as_deref(), Some("seen by a"));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(store.shared_view("routes").await.unwrap(), None, "a view outlives its ttl never");
    }
}
