//! Embedded store for one machine (`[store] kind = "local"`): several agents on one host (the lab
//! runs one per network namespace) share a directory instead of etcd.
//!
//! Layout: `state.json` holds everything (revision, network config, leases with their expiry);
//! `lock` exists only to be `flock`ed. A writer locks exclusively, reads the state, drops expired
//! leases, applies its change, bumps the revision and replaces `state.json` atomically (temp file,
//! fsync, rename). Readers lock shared. Watchers poll the file and the clock.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fs4::FileExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::warn;

use super::{
    receiver_stream, Failure, Leadership, LeaseListing, LeaseStore, LeaseUpdate, LeaseWrite, NetworkSource, RawLease,
    Revision, StoreError, WriteOutcome,
};
use crate::lease::{parse_lease_key, subnet_key, Expiry, LeaseKey};

const STATE_FILE: &str = "state.json";
const TEMP_FILE: &str = "state.json.tmp";
const LOCK_FILE: &str = "lock";
/// Only this host's root reads or writes the leases.
const DIR_MODE: u32 = 0o700;
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Updates a watcher may queue before it waits for its consumer.
const WATCH_QUEUE: usize = 16;

/// The embedded store. Cheap to clone; every operation opens the files it needs, so any number
/// of instances (in one process or many) can share a directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    files: Arc<Files>,
    poll_interval: Duration,
}

impl LocalStore {
    /// Opens (creating it if needed) the store in `dir`, and makes sure its mode is 0700.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| io_error("create store directory", dir, e))?;
        make_private(dir)?;
        let files = Files::new(dir);
        // Fail now, not on the first lease, when the directory is not usable.
        files.open_lock_file()?;
        Ok(LocalStore { files: Arc::new(files), poll_interval: DEFAULT_POLL_INTERVAL })
    }

    /// How often watchers look at the state file (default 100 ms).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Runs `change` as one locked read-modify-write on a blocking thread.
    async fn write<T, F>(&self, change: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut State, Revision) -> Applied<T> + Send + 'static,
    {
        let files = self.files.clone();
        blocking(move || files.transact(change)).await
    }

    /// The current state, read under a shared lock on a blocking thread.
    async fn read(&self) -> Result<State, StoreError> {
        let files = self.files.clone();
        blocking(move || files.read_locked().map(|snapshot| snapshot.state)).await
    }
}

#[async_trait]
impl LeaseStore for LocalStore {
    async fn list_leases(&self) -> Result<LeaseListing, StoreError> {
        let state = self.read().await?;
        Ok(LeaseListing { leases: state.visible_leases(now_unix_ms()), revision: state.revision })
    }

    async fn create_lease(&self, write: LeaseWrite<'_>) -> Result<WriteOutcome, StoreError> {
        let wanted = write.key;
        let (key, value, ttl) = owned(write);
        self.write(move |state, next| {
            // Expired leases are already gone, so an existing key is a live holder. A dual-stack
            // key differs from an IPv4 one of the same subnet: what must be absent is any key
            // holding either subnet.
            let taken =
                state.leases.keys().filter_map(|k| parse_lease_key(k).ok()).any(|k| k.shares_a_subnet_with(&wanted));
            if taken {
                return Applied::Unchanged(WriteOutcome::Conflict);
            }
            Applied::Changed(state.put(key, value, ttl, next))
        })
        .await
    }

    async fn update_lease(&self, write: LeaseWrite<'_>, expected: Revision) -> Result<WriteOutcome, StoreError> {
        let (key, value, ttl) = owned(write);
        self.write(move |state, next| {
            let ours = state.leases.get(&key).is_some_and(|lease| lease.mod_revision == expected);
            if !ours {
                return Applied::Unchanged(WriteOutcome::Conflict);
            }
            Applied::Changed(state.put(key, value, ttl, next))
        })
        .await
    }

    async fn delete_lease(&self, key: LeaseKey) -> Result<bool, StoreError> {
        let key = subnet_key(key);
        self.write(move |state, _| match state.leases.remove(&key) {
            Some(_) => Applied::Changed(true),
            None => Applied::Unchanged(false),
        })
        .await
    }

    /// Polls the state file; yields `Resync` whenever the visible leases change (a write by
    /// anyone, or a TTL running out). Must be called inside a tokio runtime: it spawns the poller,
    /// which stops when the stream is dropped.
    fn watch_leases(&self, after: Revision) -> BoxStream<'static, Result<LeaseUpdate, StoreError>> {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let watcher = Watcher::new(self.files.clone(), after);
        tokio::spawn(watcher.run(tx, self.poll_interval));
        receiver_stream(rx)
    }
}

#[async_trait]
impl NetworkSource for LocalStore {
    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        Ok(self.read().await?.config)
    }

    async fn put_network_config(&self, json: &str) -> Result<(), StoreError> {
        let json = json.to_string();
        self.write(move |state, _| {
            state.config = Some(json);
            Applied::Changed(())
        })
        .await
    }

    /// Polls the state file; yields the config when it changes, a lasting error once. Must be
    /// called inside a tokio runtime: it spawns the poller, which stops when the stream is dropped.
    fn watch_network_config(&self) -> BoxStream<'static, Result<Option<String>, StoreError>> {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let (store, interval) = (self.clone(), self.poll_interval);
        tokio::spawn(async move {
            let mut last: Option<Result<Option<String>, Failure>> = None;
            loop {
                let now = store.network_config().await;
                // Report a change of value, or an error once, not every poll.
                let seen = now.as_ref().map(Clone::clone).map_err(StoreError::failure);
                if last.as_ref() != Some(&seen) {
                    last = Some(seen);
                    if tx.send(now).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
        receiver_stream(rx)
    }
}

#[async_trait]
impl Leadership for LocalStore {
    async fn lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.write(move |state, _| {
            let now = now_unix_ms();
            let until = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            match state.leaders.get(&name) {
                Some((current, expires)) if *current != holder && *expires > now => Applied::Unchanged(false),
                _ => {
                    state.leaders.insert(name, (holder, until));
                    Applied::Changed(true)
                }
            }
        })
        .await
    }
}

/// Everything the store holds, as `state.json` spells it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    revision: Revision,
    #[serde(default)]
    config: Option<String>,
    /// By subnet key (`10.244.3.0-24`).
    #[serde(default)]
    leases: BTreeMap<String, StoredLease>,
    /// Leaderships by name: holder and until when (wall clock, ms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    leaders: BTreeMap<String, (String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredLease {
    /// The lease attributes (JSON text).
    value: String,
    /// Wall clock; `None` is a reservation.
    expires_unix_ms: Option<u64>,
    mod_revision: Revision,
}

impl StoredLease {
    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_unix_ms.is_some_and(|at| at <= now_ms)
    }

    fn expiry(&self) -> Expiry {
        match self.expires_unix_ms {
            None => Expiry::Never,
            Some(ms) => Expiry::At(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    fn to_raw(&self, key: &str) -> RawLease {
        RawLease {
            key: key.to_string(),
            value: self.value.clone().into_bytes(),
            expiry: self.expiry(),
            mod_revision: self.mod_revision,
        }
    }
}

impl State {
    /// Leases whose TTL has not run out at `now_ms`, in key order.
    fn visible_leases(&self, now_ms: u64) -> Vec<RawLease> {
        self.leases
            .iter()
            .filter(|(_, lease)| !lease.is_expired(now_ms))
            .map(|(key, lease)| lease.to_raw(key))
            .collect()
    }

    /// Every lease in the file, expired or not, in key order.
    fn stored_leases(&self) -> Vec<RawLease> {
        self.leases.iter().map(|(key, lease)| lease.to_raw(key)).collect()
    }

    fn drop_expired(&mut self, now_ms: u64) {
        self.leases.retain(|_, lease| !lease.is_expired(now_ms));
    }

    /// Writes `key` at revision `next` with a fresh TTL.
    fn put(&mut self, key: String, value: String, ttl: Option<Duration>, next: Revision) -> WriteOutcome {
        let lease = StoredLease { value, expires_unix_ms: ttl.map(expires_unix_ms), mod_revision: next };
        // Report the expiry as listings will (millisecond precision), not as computed.
        let expiry = lease.expiry();
        self.leases.insert(key, lease);
        WriteOutcome::Written { revision: next, expiry }
    }
}

/// What a change did to the state: only a changed state is saved (and gets a new revision).
enum Applied<T> {
    Changed(T),
    Unchanged(T),
}

/// The store's paths and the blocking file work on them.
#[derive(Debug)]
struct Files {
    dir: PathBuf,
    state: PathBuf,
    temp: PathBuf,
    lock: PathBuf,
}

/// The state file as read, and enough to tell whether it changed since.
struct Snapshot {
    state: State,
    /// `None` when there is no state file yet.
    fingerprint: Option<Fingerprint>,
    /// Kept open so the file's inode cannot be reused by a later write while we compare
    /// against it (writers replace the file, so a new version always has a new inode).
    _file: Option<File>,
}

/// Identity and shape of one version of the state file, from `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Self {
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

impl Files {
    fn new(dir: &Path) -> Self {
        Files {
            dir: dir.to_path_buf(),
            state: dir.join(STATE_FILE),
            temp: dir.join(TEMP_FILE),
            lock: dir.join(LOCK_FILE),
        }
    }

    /// A fresh descriptor for the lock file. flock belongs to the open file description, so
    /// every operation needs its own for concurrent tasks of one process to exclude each other.
    fn open_lock_file(&self) -> Result<File, StoreError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock)
            .map_err(|e| io_error("open lock file", &self.lock, e))
    }

    /// Takes the store lock; it is released when the returned file is closed.
    fn lock(&self, exclusive: bool) -> Result<File, StoreError> {
        let file = self.open_lock_file()?;
        let locked = if exclusive { FileExt::lock(&file) } else { FileExt::lock_shared(&file) };
        locked.map_err(|e| io_error("lock", &self.lock, e))?;
        Ok(file)
    }

    fn read_locked(&self) -> Result<Snapshot, StoreError> {
        let _lock = self.lock(false)?;
        self.read_state()
    }

    /// One locked read-modify-write. Expired leases are dropped first, so `change` never sees
    /// them; it gets the revision its write will have.
    fn transact<T>(&self, change: impl FnOnce(&mut State, Revision) -> Applied<T>) -> Result<T, StoreError> {
        let _lock = self.lock(true)?;
        let mut state = self.read_state()?.state;
        state.drop_expired(now_unix_ms());
        let next = state.revision + 1;
        match change(&mut state, next) {
            Applied::Unchanged(result) => Ok(result),
            Applied::Changed(result) => {
                state.revision = next;
                self.save(&state)?;
                Ok(result)
            }
        }
    }

    /// Reads the state file; a missing file is an empty store, an unreadable one an error (never
    /// silently reset: it holds other hosts' leases).
    fn read_state(&self) -> Result<Snapshot, StoreError> {
        let mut file = match File::open(&self.state) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Snapshot { state: State::default(), fingerprint: None, _file: None })
            }
            Err(e) => return Err(io_error("open", &self.state, e)),
        };
        let meta = file.metadata().map_err(|e| io_error("stat", &self.state, e))?;
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes).map_err(|e| io_error("read", &self.state, e))?;
        let state = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::corrupt(format!("{}: not a weft store state file", self.state.display())).because(e)
        })?;
        Ok(Snapshot { state, fingerprint: Some(Fingerprint::of(&meta)), _file: Some(file) })
    }

    /// The state file's current fingerprint, `None` when it does not exist.
    fn fingerprint(&self) -> Result<Option<Fingerprint>, StoreError> {
        match fs::metadata(&self.state) {
            Ok(meta) => Ok(Some(Fingerprint::of(&meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("stat", &self.state, e)),
        }
    }

    /// Replaces the state file atomically and durably: readers see the old or the new version,
    /// and a crash leaves one of them.
    fn save(&self, state: &State) -> Result<(), StoreError> {
        let bytes =
            serde_json::to_vec_pretty(state).map_err(|e| StoreError::request("encode store state").because(e))?;
        let mut temp = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.temp)
            .map_err(|e| io_error("create", &self.temp, e))?;
        temp.write_all(&bytes).map_err(|e| io_error("write", &self.temp, e))?;
        temp.sync_all().map_err(|e| io_error("fsync", &self.temp, e))?;
        fs::rename(&self.temp, &self.state).map_err(|e| io_error("rename into", &self.state, e))?;
        File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(|e| io_error("fsync", &self.dir, e))
    }
}

/// Polls the state file for one `watch_leases` stream.
struct Watcher {
    files: Arc<Files>,
    /// The revision the consumer listed at, until the first successful read.
    after: Option<Revision>,
    snapshot: Option<Snapshot>,
    /// The leases the consumer was last told about (or listed itself).
    sent: Option<Vec<RawLease>>,
    /// The last error yielded, so a lasting problem is reported once, not every poll.
    last_error: Option<Failure>,
}

type WatchItem = Result<LeaseUpdate, StoreError>;

impl Watcher {
    fn new(files: Arc<Files>, after: Revision) -> Self {
        Watcher { files, after: Some(after), snapshot: None, sent: None, last_error: None }
    }

    async fn run(mut self, tx: mpsc::Sender<WatchItem>, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = ticker.tick() => {}
            }
            let polled = tokio::task::spawn_blocking(move || {
                let update = self.tick();
                (self, update)
            })
            .await;
            // Only a panic or a runtime shutting down gets here; neither leaves a watcher to run.
            let Ok((watcher, update)) = polled else {
                return;
            };
            self = watcher;
            if let Some(update) = update {
                if tx.send(update).await.is_err() {
                    return;
                }
            }
        }
    }

    /// One poll: what, if anything, the consumer must hear.
    fn tick(&mut self) -> Option<WatchItem> {
        match self.refresh() {
            Ok(()) => {
                self.last_error = None;
                self.adopt_baseline();
                self.resync_if_changed(now_unix_ms())
            }
            Err(e) => self.report(e),
        }
    }

    /// Rereads the state file if it changed since the last read.
    fn refresh(&mut self) -> Result<(), StoreError> {
        let current = self.files.fingerprint()?;
        if self.snapshot.as_ref().is_some_and(|s| s.fingerprint == current) {
            return Ok(());
        }
        self.snapshot = Some(self.files.read_locked()?);
        Ok(())
    }

    /// On the first successful read: if the store is still at the revision the consumer listed,
    /// it knows these leases already. Expired ones still in the file count as known, so a lease
    /// that ran out since the listing is reported. Otherwise `sent` stays empty: resync at once.
    fn adopt_baseline(&mut self) {
        let (Some(after), Some(snapshot)) = (self.after, &self.snapshot) else {
            return;
        };
        self.after = None;
        if snapshot.state.revision == after {
            self.sent = Some(snapshot.state.stored_leases());
        }
    }

    fn resync_if_changed(&mut self, now_ms: u64) -> Option<WatchItem> {
        let state = &self.snapshot.as_ref()?.state;
        let visible = state.visible_leases(now_ms);
        if self.sent.as_ref() == Some(&visible) {
            return None;
        }
        self.sent = Some(visible.clone());
        Some(Ok(LeaseUpdate::Resync(visible, state.revision)))
    }

    fn report(&mut self, error: StoreError) -> Option<WatchItem> {
        let failure = error.failure();
        if self.last_error.as_ref() == Some(&failure) {
            return None;
        }
        self.last_error = Some(failure);
        Some(Err(error))
    }
}

/// A write's key, value and TTL, owned, for a blocking thread.
fn owned(write: LeaseWrite<'_>) -> (String, String, Option<Duration>) {
    (subnet_key(write.key), write.attrs_json.to_string(), write.ttl)
}

/// Runs file work off the async threads.
async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::join("local store task", e))?
}

/// `DirBuilder`'s mode applies only to a directory it creates: one that was there already (made
/// by hand, by a package, restored from a backup) is set to 0700 too, on every open.
fn make_private(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(dir).map_err(|e| io_error("stat store directory", dir, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| io_error("set mode 0700 on store directory", dir, e))?;
        warn!(path = %dir.display(), was = %format!("{mode:04o}"), "store directory mode set to 0700");
    }
    Ok(())
}

fn io_error(action: &str, path: &Path, error: io::Error) -> StoreError {
    StoreError::unavailable(format!("{action} {}", path.display())).because(error)
}

fn unix_ms(time: SystemTime) -> u64 {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// When a lease written now with `ttl` runs out; an absurd TTL saturates instead of panicking.
fn expires_unix_ms(ttl: Duration) -> u64 {
    now_unix_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(expires_unix_ms: Option<u64>, mod_revision: Revision) -> StoredLease {
        StoredLease { value: "{}".to_string(), expires_unix_ms, mod_revision }
    }

    fn state_with(leases: &[(&str, StoredLease)]) -> State {
        let leases = leases.iter().map(|(k, l)| (k.to_string(), l.clone())).collect();
        State { revision: 3, leases, ..State::default() }
    }

    #[test]
    fn expired_leases_are_invisible_and_dropped() {
        let mut state = state_with(&[
            ("10.244.1.0-24", lease(Some(1_000), 1)),
            ("10.244.2.0-24", lease(Some(3_000), 2)),
            ("10.244.3.0-24", lease(None, 3)),
        ]);
        let keys = |leases: Vec<RawLease>| leases.into_iter().map(|l| l.key).collect::<Vec<_>>();
        assert_eq!(keys(state.visible_leases(1_000)), ["10.244.2.0-24", "10.244.3.0-24"]);
        assert_eq!(keys(state.visible_leases(u64::MAX)), ["10.244.3.0-24"]);
        state.drop_expired(2_000);
        assert_eq!(state.leases.len(), 2);
    }

    #[test]
    fn expiry_is_reported_at_millisecond_precision() {
        let raw = lease(Some(1_234), 1).to_raw("10.244.1.0-24");
        assert_eq!(raw.expiry, Expiry::At(UNIX_EPOCH + Duration::from_millis(1_234)));
        assert_eq!(lease(None, 1).expiry(), Expiry::Never);
    }

    #[test]
    fn state_file_format_is_stable() {
        let state = state_with(&[("10.244.1.0-24", lease(Some(5), 2))]);
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "revision": 3,
                "config": null,
                "leases": {"10.244.1.0-24": {"value": "{}", "expires_unix_ms": 5, "mod_revision": 2}}
            })
        );
    }

    #[test]
    fn huge_ttl_saturates() {
        assert_eq!(expires_unix_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn watcher_reports_a_lasting_error_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut watcher = Watcher::new(Arc::new(Files::new(dir.path())), 0);
        fs::write(dir.path().join(STATE_FILE), "garbage").unwrap();
        assert!(matches!(watcher.tick(), Some(Err(StoreError::Corrupt { .. }))));
        assert!(watcher.tick().is_none());
    }

    #[test]
    fn watcher_at_the_listed_revision_stays_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let mut watcher = Watcher::new(Arc::new(Files::new(dir.path())), 0);
        assert!(watcher.tick().is_none());
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_poller() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap().with_poll_interval(Duration::from_millis(10));
        let stream = store.watch_leases(0);
        assert_eq!(Arc::strong_count(&store.files), 2);
        drop(stream);
        for _ in 0..100 {
            if Arc::strong_count(&store.files) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("watch task still running after its stream was dropped");
    }
}
