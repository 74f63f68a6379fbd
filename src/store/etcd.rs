//! etcd v3 store in flannel's layout: `<prefix>/config` holds the network JSON and
//! `<prefix>/subnets/<a.b.c.d>-<len>` one lease each, every leased key attached to an etcd lease
//! of its own. flanneld and weft can share one etcd during a migration.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, KeyValue, PutOptions,
    ResponseHeader, TlsOptions, Txn, TxnOp, WatchOptions, WatchResponse, WatchStream,
};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::etcd_members::{Member, Members};
use super::{
    expiry_after, receiver_stream, Leadership, LeaseListing, LeaseStore, LeaseUpdate, LeaseWrite, NetworkSource,
    RawLease, Revision, StoreError, WriteOutcome,
};
use crate::backoff::Backoff;
use crate::lease::{subnet_key, Expiry, LeaseKey};

/// How long one request may take before etcd counts as unavailable. The client's balancer waits
/// for a healthy endpoint instead of failing, so without this a request could hang forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings notice a dead connection under a long-lived watch.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A listing of 10,000 leases is a few MB; tonic's default limit is 4 MB.
const MAX_LIST_BYTES: usize = 256 * 1024 * 1024;
/// Leases read per range request of a listing. Pages of one snapshot (one revision) keep the
/// decoded response small for the agent and for etcd: 10,000 leases in one answer cost the agent
/// 5 MB of buffers at start-up, in pages of 1,000 a tenth of that, for 9 more round trips.
const LIST_PAGE: i64 = 1_000;
/// Tries of one page of a listing. A read changes nothing, so a page etcd did not answer in
/// time is asked again by itself: under a fleet's start-up (every agent lists every lease at
/// once) the pages already read are kept rather than the whole listing failing and starting over.
const PAGE_ATTEMPTS: u32 = 3;
/// The first pause before a page is asked again (jittered, growing): an overloaded etcd gets a
/// moment rather than the same request at once.
const PAGE_RETRY: Duration = Duration::from_millis(250);
/// Up to this many unknown expiries are resolved key by key; more take one range read.
const KEY_BY_KEY_LOOKUPS: usize = 32;
/// TTL lookups in flight at once.
const TTL_LOOKUP_CONCURRENCY: usize = 16;
/// Updates a watch buffers for a slow consumer before it stops reading from etcd.
const WATCH_BUFFER: usize = 256;
/// A broken watch is opened again after 100 ms, growing to 5 s, jittered: the agents of a cluster
/// whose etcd restarted come back spread out, not in one burst.
const WATCH_RETRY_FIRST: Duration = Duration::from_millis(100);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

// gRPC status codes (tonic's `Code` is not re-exported by etcd-client).
const GRPC_CANCELLED: i32 = 1;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_NOT_FOUND: i32 = 5;
const GRPC_UNAVAILABLE: i32 = 14;

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    /// Key prefix, flannel's default is `/coreos.com/network`.
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Password>,
    pub dial_timeout: Duration,
}

/// A password that never reaches a log: its `Debug` is `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Password {
    fn from(password: &str) -> Self {
        Password(password.to_string())
    }
}

impl From<String> for Password {
    fn from(password: String) -> Self {
        Password(password)
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "/coreos.com/network".to_string(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            dial_timeout: Duration::from_secs(5),
        }
    }
}

/// The etcd v3 store. Cheap to clone: clones share the members' connections.
#[derive(Clone)]
pub struct EtcdStore {
    members: Arc<Members>,
    keys: Keys,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Builds the clients. etcd is dialled lazily: an unreachable etcd shows on the first
    /// request. With auth, one member is signed in to now, so a refused password is told here.
    pub async fn connect(opts: EtcdOptions) -> Result<Self, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::config("no etcd endpoints given"));
        }
        let options = connect_options(&opts)?;
        let context = format!("connect to etcd at {}", opts.endpoints.join(","));
        let store =
            EtcdStore { members: Arc::new(Members::new(opts.endpoints, options)), keys: Keys::new(&opts.prefix) };
        let mut tries = store.members.len();
        loop {
            match store.request(&context, |_| async { Ok(()) }).await {
                Ok(()) => return Ok(store),
                Err(err @ StoreError::Unavailable { .. }) if tries > 1 => {
                    tries -= 1;
                    tracing::debug!(%err, "signing in to an etcd member failed; trying the next one");
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Runs one request with a deadline on the member in use; a member found unavailable is
    /// left for the next one. When that member certainly never ran the request (it is down, or
    /// has no leader) the same request goes to the next member at once, each member once at
    /// most: a dead member costs the caller no backoff step, so agents come back as soon as etcd
    /// has a leader again. A request that may have run (it timed out) is never sent twice.
    async fn request<T, Fut>(&self, context: &str, call: impl Fn(Client) -> Fut) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut untried = self.members.len();
        loop {
            let (member, client) = self.members.client().await;
            let answer = match client {
                Ok(client) => tokio::time::timeout(REQUEST_TIMEOUT, call(client)).await,
                Err(err) => Ok(Err(err)),
            };
            let err = match answer {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) => err,
                Err(_elapsed) => {
                    self.members.failed(member);
                    return Err(timeout_error(context));
                }
            };
            let not_run = never_ran(&err);
            let err = store_error(context, err);
            if let StoreError::Unavailable { .. } = &err {
                self.members.failed(member);
            }
            untried -= 1;
            if !not_run || untried == 0 {
                return Err(err);
            }
            tracing::debug!(%err, "the etcd member did not run the request; sending it to the next one");
        }
    }

    /// Grants an etcd lease for `ttl`; none for a reservation.
    async fn grant(&self, ttl: Option<Duration>, context: &str) -> Result<Option<Grant>, StoreError> {
        let Some(ttl) = ttl else { return Ok(None) };
        let context = format!("{context}: grant lease");
        let secs = ttl_secs(ttl);
        let resp = self.request(&context, |mut client| async move { client.lease_grant(secs, None).await }).await?;
        if !resp.error().is_empty() {
            return Err(StoreError::request(format!("{context}: etcd refused: {}", resp.error())));
        }
        // etcd may lengthen short TTLs to its minimum; its answer is what it enforces.
        let granted = u64::try_from(resp.ttl()).ok().filter(|s| *s > 0).map(Duration::from_secs);
        Ok(Some(Grant { id: resp.id(), ttl: granted.unwrap_or(ttl) }))
    }

    /// Best effort: a lease we fail to revoke runs out on its own.
    async fn revoke(&self, grant: Option<Grant>) {
        let Some(grant) = grant else { return };
        let result =
            self.request("revoke lease", |mut client| async move { client.lease_revoke(grant.id).await }).await;
        if let Err(err) = result {
            tracing::debug!(lease = grant.id, %err, "could not revoke unused etcd lease");
        }
    }

    /// Puts `key` attached to `grant` if `condition` holds. The grant is revoked when the put
    /// certainly did not happen, and when its outcome is unknown only if `write` says so.
    async fn conditional_put(
        &self,
        key: String,
        value: &str,
        condition: Compare,
        grant: Option<Grant>,
        write: WriteKind,
        context: &str,
    ) -> Result<WriteOutcome, StoreError> {
        let put_options = grant.map(|g| PutOptions::new().with_lease(g.id));
        let txn = Txn::new().when([condition]).and_then([TxnOp::put(key, value, put_options)]);
        match self
            .request(context, |mut client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await
        {
            Ok(resp) if resp.succeeded() => {
                let revision = header_revision(resp.header(), context)?;
                let expiry = expiry_after(grant.map(|g| g.ttl));
                Ok(WriteOutcome::Written { revision, expiry })
            }
            Ok(_) => {
                self.revoke(grant).await;
                Ok(WriteOutcome::Conflict)
            }
            Err(err) => {
                if write.revoke_when_unknown() {
                    self.revoke(grant).await;
                }
                Err(err)
            }
        }
    }

    /// The etcd lease id of each of `names` that still exists (0: no lease).
    async fn lease_ids(&self, names: &[&str]) -> Result<HashMap<String, i64>, StoreError> {
        let kvs = if names.len() <= KEY_BY_KEY_LOOKUPS {
            let lookups = names.iter().map(|name| self.get_keys_only(self.keys.subnet_name(name)));
            futures::future::try_join_all(lookups).await?.into_iter().flatten().collect()
        } else {
            let prefix = GetOptions::new().with_prefix().with_keys_only();
            self.get_kvs(self.keys.subnets.clone(), prefix, "look up lease ids").await?
        };
        Ok(kvs.into_iter().filter_map(|kv| Some((self.keys.lease_name(kv.key())?, kv.lease()))).collect())
    }

    async fn get_keys_only(&self, key: String) -> Result<Vec<KeyValue>, StoreError> {
        let context = format!("look up lease id of {key}");
        self.get_kvs(key, GetOptions::new().with_keys_only(), &context).await
    }

    /// One key's value as text (`what` names it in errors); `None` when the key is absent.
    async fn get_text(&self, key: String, what: &str) -> Result<Option<String>, StoreError> {
        let kvs = self.get_kvs(key, GetOptions::new(), &format!("read {what}")).await?;
        let Some(kv) = kvs.into_iter().next() else { return Ok(None) };
        String::from_utf8(kv.into_key_value().1).map(Some).map_err(|e| StoreError::corrupt(what).because(e))
    }

    async fn get_kvs(&self, key: String, options: GetOptions, context: &str) -> Result<Vec<KeyValue>, StoreError> {
        let mut resp = self
            .request(context, |client| {
                let (key, options) = (key.clone(), options.clone());
                async move { client.kv_client().max_decoding_message_size(MAX_LIST_BYTES).get(key, Some(options)).await }
            })
            .await?;
        Ok(resp.take_kvs())
    }

    /// Remaining TTL of each lease; `None` for one that has run out.
    async fn lease_ttls(&self, ids: HashSet<i64>) -> Result<HashMap<i64, Option<Duration>>, StoreError> {
        stream::iter(ids)
            .map(|id| async move { Ok((id, self.lease_ttl(id).await?)) })
            .buffer_unordered(TTL_LOOKUP_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn lease_ttl(&self, id: i64) -> Result<Option<Duration>, StoreError> {
        let context = format!("look up TTL of etcd lease {id:x}");
        let resp = self
            .request(&context, |mut client| async move {
                match client.lease_time_to_live(id, None).await {
                    Ok(resp) => Ok(Some(resp)),
                    Err(etcd_client::Error::GRpcStatus(status)) if status.code() as i32 == GRPC_NOT_FOUND => Ok(None),
                    Err(err) => Err(err),
                }
            })
            .await?;
        Ok(resp.and_then(|resp| u64::try_from(resp.ttl()).ok().map(Duration::from_secs)))
    }

    /// Streams watch updates into `tx` until the consumer goes away. Every broken watch is
    /// reported once, then the leases are listed again (`Resync`) and watched from there.
    async fn watch_loop(&self, mut after: Revision, tx: &mpsc::Sender<WatchItem>) {
        let mut backoff = watch_backoff();
        loop {
            let Some(err) = self.follow(after, tx, &mut backoff).await else {
                return;
            };
            if tx.send(Err(err)).await.is_err() {
                return;
            }
            let listing = self.relist(&mut backoff).await;
            after = listing.revision;
            let resync = LeaseUpdate::Resync(listing.leases, listing.revision);
            if tx.send(Ok(resync)).await.is_err() {
                return;
            }
        }
    }

    /// Reads the config key, then watches it from that revision; reads again after any break.
    /// Sends only changes of value.
    async fn config_loop(&self, tx: &mpsc::Sender<Result<Option<String>, StoreError>>) {
        let context = format!("watch network config {}", self.keys.config);
        let mut backoff = watch_backoff();
        let mut last: Option<Option<String>> = None;
        loop {
            match self.follow_config(&context, &mut last, tx, &mut backoff).await {
                None => return,
                Some(err) => {
                    if tx.send(Err(err)).await.is_err() {
                        return;
                    }
                }
            }
            tokio::time::sleep(backoff.step()).await;
        }
    }

    /// One read-then-watch of the config key; returns why it broke, `None` when the consumer left.
    async fn follow_config(
        &self,
        context: &str,
        last: &mut Option<Option<String>>,
        tx: &mpsc::Sender<Result<Option<String>, StoreError>>,
        backoff: &mut Backoff,
    ) -> Option<StoreError> {
        let key = self.keys.config.clone();
        let get = key.clone();
        let resp = match self
            .request(context, |mut client| {
                let get = get.clone();
                async move { client.get(get, None).await }
            })
            .await
        {
            Ok(resp) => resp,
            Err(err) => return Some(err),
        };
        let revision = match header_revision(resp.header(), context) {
            Ok(revision) => revision,
            Err(err) => return Some(err),
        };
        let value = resp.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
        if !send_config_change(last, value, tx).await {
            return None;
        }
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let mut watch = match self.open_watch(key, options, context).await {
            Ok(watch) => watch,
            Err(err) => return Some(err),
        };
        loop {
            let resp = match self.next_response(&mut watch, context).await {
                Ok(resp) => resp,
                Err(err) => return Some(err),
            };
            if resp.canceled() {
                return Some(StoreError::unavailable(format!(
                    "{context}: etcd cancelled the watch: {}",
                    resp.cancel_reason()
                )));
            }
            if resp.created() {
                backoff.reset();
            }
            for event in resp.events() {
                let value = match event.event_type() {
                    EventType::Put => event.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                    EventType::Delete => None,
                };
                if !send_config_change(last, value, tx).await {
                    return None;
                }
            }
        }
    }

    /// Opens a watch on the member in use; any failure is `Unavailable` (the caller starts over).
    async fn open_watch(&self, key: String, options: WatchOptions, context: &str) -> Result<MemberWatch, StoreError> {
        let (member, client) = self.members.client().await;
        let opened = timed(context, async move { client?.watch(key, Some(options)).await }).await;
        match opened {
            Ok(stream) => Ok(MemberWatch { member, stream }),
            Err(err) => {
                self.members.failed(member);
                Err(err.into_unavailable())
            }
        }
    }

    /// The next response of a watch; a watch that broke leaves its member for the next one.
    async fn next_response(&self, watch: &mut MemberWatch, context: &str) -> Result<WatchResponse, StoreError> {
        let next = next_response(&mut watch.stream, context).await;
        if next.is_err() {
            self.members.failed(watch.member);
        }
        next
    }

    /// Lists the leases, retrying with backoff until etcd answers.
    async fn relist(&self, backoff: &mut Backoff) -> LeaseListing {
        loop {
            tokio::time::sleep(backoff.step()).await;
            match self.list_leases().await {
                Ok(listing) => return listing,
                Err(err) => tracing::debug!(%err, "etcd watch: listing leases again failed"),
            }
        }
    }

    /// Forwards one etcd watch from `after + 1`. Returns why it broke, or `None` when the
    /// consumer is gone.
    async fn follow(&self, after: Revision, tx: &mpsc::Sender<WatchItem>, backoff: &mut Backoff) -> Option<StoreError> {
        let start = after.saturating_add(1);
        let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(start);
        let context = format!("watch leases from revision {start}");
        let mut watch = match self.open_watch(self.keys.subnets.clone(), options, &context).await {
            Ok(watch) => watch,
            Err(err) => return Some(err),
        };
        loop {
            let resp = match self.next_response(&mut watch, &context).await {
                Ok(resp) => resp,
                Err(err) => return Some(err),
            };
            if let Some(err) = watch_broken(&resp, start) {
                return Some(err);
            }
            if resp.created() {
                backoff.reset();
            }
            for update in self.updates(&resp) {
                if tx.send(Ok(update)).await.is_err() {
                    return None;
                }
            }
        }
    }

    fn updates(&self, resp: &WatchResponse) -> Vec<LeaseUpdate> {
        resp.events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                match event.event_type() {
                    EventType::Put => self.keys.raw_lease(kv.clone()).map(LeaseUpdate::Put),
                    // A delete's kv carries the deletion's revision.
                    EventType::Delete => self
                        .keys
                        .lease_name(kv.key())
                        .map(|key| LeaseUpdate::Deleted { key, revision: kv.mod_revision() }),
                }
            })
            .collect()
    }
}

#[async_trait]
impl LeaseStore for EtcdStore {
    async fn list_leases(&self) -> Result<LeaseListing, StoreError> {
        let context = "list leases";
        let end = prefix_end(self.keys.subnets.as_bytes());
        let mut from = self.keys.subnets.clone().into_bytes();
        let mut revision = None;
        let mut leases = Vec::new();
        loop {
            let options = GetOptions::new().with_range(end.clone()).with_limit(LIST_PAGE);
            // The first page fixes the snapshot; the others are read at its revision. If etcd
            // compacts it away in between, the listing fails and is retried whole.
            let options = match revision {
                Some(revision) => options.with_revision(revision),
                None => options,
            };
            let key = from.clone();
            let (mut attempt, mut pause) = (1, Backoff::exponential(PAGE_RETRY, PAGE_RETRY * 8));
            let mut resp = loop {
                let answer = self
                    .request(context, |client| {
                        let (key, options) = (key.clone(), options.clone());
                        async move {
                            client.kv_client().max_decoding_message_size(MAX_LIST_BYTES).get(key, Some(options)).await
                        }
                    })
                    .await;
                match answer {
                    Err(StoreError::Unavailable { .. }) if attempt < PAGE_ATTEMPTS => {
                        attempt += 1;
                        tokio::time::sleep(pause.step()).await;
                    }
                    answer => break answer?,
                }
            };
            if revision.is_none() {
                revision = Some(header_revision(resp.header(), context)?);
            }
            let more = resp.more();
            let page = resp.take_kvs();
            if let Some(last) = page.last() {
                // The next page starts just after the last key of this one.
                from = last.key().to_vec();
                from.push(0);
            }
            let read = page.len();
            // Values are moved out of the response, not copied.
            leases.extend(page.into_iter().filter_map(|kv| self.keys.raw_lease(kv)));
            if !more || read == 0 {
                break;
            }
        }
        Ok(LeaseListing { leases, revision: revision.expect("the first page was read") })
    }

    async fn create_lease(&self, write: LeaseWrite<'_>) -> Result<WriteOutcome, StoreError> {
        let key = self.keys.subnet(write.key);
        let context = format!("create lease {key}");
        let grant = self.grant(write.ttl, &context).await?;
        // flannel's rule: only a key that does not exist yet may be taken. A dual-stack key
        // (`10.244.3.0-24&…`) differs from any other key of its IPv4 subnet, so the compare
        // covers every key that starts with that subnet's: none may exist. (The IPv6 subnet
        // cannot be compared in the same way; weft picks it from the IPv4 one, so two agents
        // that cannot share an IPv4 subnet do not pick one IPv6 subnet either.) An IPv6-only
        // key (`0.0.0.0-0&…`) is compared whole: its IPv6 subnet is all that names it.
        let naming = write.key.subnet.map_or(write.key, LeaseKey::from);
        let absent = Compare::version(self.keys.subnet(naming), CompareOp::Equal, 0).with_prefix();
        self.conditional_put(key, write.attrs_json, absent, grant, WriteKind::Create, &context).await
    }

    async fn update_lease(&self, write: LeaseWrite<'_>, expected: Revision) -> Result<WriteOutcome, StoreError> {
        let key = self.keys.subnet(write.key);
        let context = format!("renew lease {key}");
        // Like flannel, renewal re-puts the key with a new etcd lease; the old one runs out
        // unused (it may hold other keys, so it is not revoked).
        let grant = self.grant(write.ttl, &context).await?;
        let unchanged = Compare::mod_revision(key.clone(), CompareOp::Equal, expected);
        self.conditional_put(key, write.attrs_json, unchanged, grant, WriteKind::Rewrite, &context).await
    }

    async fn delete_lease(&self, lease: LeaseKey) -> Result<bool, StoreError> {
        let key = self.keys.subnet(lease);
        let context = format!("delete lease {key}");
        let resp = self
            .request(&context, |mut client| {
                let key = key.clone();
                async move { client.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn delete_lease_at(&self, lease: LeaseKey, revision: Revision) -> Result<bool, StoreError> {
        let key = self.keys.subnet(lease);
        let context = format!("delete orphaned lease {key}");
        let unchanged = Compare::mod_revision(key.clone(), CompareOp::Equal, revision);
        let txn = Txn::new().when([unchanged]).and_then([TxnOp::delete(key, None)]);
        let resp = self
            .request(&context, |mut client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
    }

    /// Runs the watch on a task of the current Tokio runtime; dropping the stream ends it.
    fn watch_leases(&self, after: Revision) -> BoxStream<'static, Result<LeaseUpdate, StoreError>> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let store = self.clone();
        tokio::spawn(async move {
            // Dropping the stream drops `rx`: stop wherever the loop is waiting.
            tokio::select! {
                _ = tx.closed() => {}
                _ = store.watch_loop(after, &tx) => {}
            }
        });
        receiver_stream(rx)
    }

    async fn resolve_expiry(&self, leases: &mut [RawLease]) -> Result<(), StoreError> {
        let unknown: Vec<&str> =
            leases.iter().filter(|l| l.expiry == Expiry::Unknown).map(|l| l.key.as_str()).collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let ids = self.lease_ids(&unknown).await?;
        let ttls = self.lease_ttls(ids.values().copied().filter(|id| *id != 0).collect()).await?;
        let now = SystemTime::now();
        for lease in leases.iter_mut().filter(|l| l.expiry == Expiry::Unknown) {
            lease.expiry = match ids.get(&lease.key) {
                Some(0) => Expiry::Never,
                // A TTL past what the clock can say is no expiry we can state.
                Some(id) => now
                    .checked_add(ttls.get(id).copied().flatten().unwrap_or_default())
                    .map_or(Expiry::Unknown, Expiry::At),
                // Deleted since it was listed: it has run out.
                None => Expiry::At(now),
            };
        }
        Ok(())
    }
}

#[async_trait]
impl NetworkSource for EtcdStore {
    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        let what = format!("network config {}", self.keys.config);
        self.get_text(self.keys.config.clone(), &what).await
    }

    async fn put_network_config(&self, json: &str) -> Result<(), StoreError> {
        let context = format!("write network config {}", self.keys.config);
        let (key, json) = (self.keys.config.clone(), json.to_string());
        self.request(&context, |mut client| {
            let (key, json) = (key.clone(), json.clone());
            async move { client.put(key, json, None).await }
        })
        .await?;
        Ok(())
    }

    fn watch_network_config(&self) -> BoxStream<'static, Result<Option<String>, StoreError>> {
        let (tx, rx) = mpsc::channel(4);
        let store = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => {}
                _ = store.config_loop(&tx) => {}
            }
        });
        receiver_stream(rx)
    }
}

#[async_trait]
impl Leadership for EtcdStore {
    async fn lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.keys.leader(name);
        let context = format!("lead {key}");
        let grant = self.grant(Some(ttl), &context).await?;
        let vacant = Compare::version(key.clone(), CompareOp::Equal, 0);
        let taken = self.conditional_put(key.clone(), holder, vacant, grant, WriteKind::Create, &context).await?;
        if let WriteOutcome::Written { .. } = taken {
            return Ok(true);
        }
        // Held: by us, the turn is extended; by another agent, we wait for it to lapse.
        let grant = self.grant(Some(ttl), &context).await?;
        let ours = Compare::value(key.clone(), CompareOp::Equal, holder);
        let outcome = self.conditional_put(key, holder, ours, grant, WriteKind::Rewrite, &context).await?;
        Ok(matches!(outcome, WriteOutcome::Written { .. }))
    }

    async fn share_view(&self, name: &str, holder: &str, view: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.keys.view(name);
        let context = format!("share {key}");
        let grant = self.grant(Some(ttl), &context).await?;
        // A leader whose turn went in the meantime writes nothing.
        let leads = Compare::value(self.keys.leader(name), CompareOp::Equal, holder);
        let outcome = self.conditional_put(key, view, leads, grant, WriteKind::Rewrite, &context).await?;
        Ok(matches!(outcome, WriteOutcome::Written { .. }))
    }

    async fn shared_view(&self, name: &str) -> Result<Option<String>, StoreError> {
        let key = self.keys.view(name);
        let what = key.clone();
        self.get_text(key, &what).await
    }
}

type WatchItem = Result<LeaseUpdate, StoreError>;

/// A watch and the member it runs on.
struct MemberWatch {
    member: Member,
    stream: WatchStream,
}

/// An etcd lease granted for one write.
#[derive(Debug, Clone, Copy)]
struct Grant {
    id: i64,
    ttl: Duration,
}

/// What a conditional put does, which decides what to do with its new grant when etcd's answer
/// never came (a timeout, a broken connection: the put may or may not have landed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    /// Creates a key that did not exist: revoking removes it again if the put landed, so "not
    /// written" stays true for the caller, who tries again.
    Create,
    /// Rewrites a key we hold (a renewal): if the put landed, the key now hangs on the new grant
    /// and revoking it would delete our own lease. Left alone, an unused grant runs out.
    Rewrite,
}

impl WriteKind {
    fn revoke_when_unknown(self) -> bool {
        self == WriteKind::Create
    }
}

/// The store's key names under one prefix.
#[derive(Debug, Clone)]
struct Keys {
    config: String,
    /// Ends with `/`.
    leaders: String,
    /// What a leader shares with the others (`share_view`). Ends with `/`.
    views: String,
    /// Ends with `/`.
    subnets: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        Keys {
            config: format!("{prefix}/config"),
            leaders: format!("{prefix}/leaders/"),
            views: format!("{prefix}/views/"),
            subnets: format!("{prefix}/subnets/"),
        }
    }

    fn subnet(&self, lease: LeaseKey) -> String {
        self.subnet_name(&subnet_key(lease))
    }

    fn leader(&self, name: &str) -> String {
        format!("{}{name}", self.leaders)
    }

    fn view(&self, name: &str) -> String {
        format!("{}{name}", self.views)
    }

    fn subnet_name(&self, name: &str) -> String {
        format!("{}{name}", self.subnets)
    }

    /// The part of a subnet key after `subnets/`, as stored (parsed later, by the caller).
    fn lease_name(&self, key: &[u8]) -> Option<String> {
        let name = key.strip_prefix(self.subnets.as_bytes())?;
        Some(String::from_utf8_lossy(name).into_owned())
    }

    fn raw_lease(&self, kv: KeyValue) -> Option<RawLease> {
        let expiry = if kv.lease() == 0 { Expiry::Never } else { Expiry::Unknown };
        let (key, mod_revision) = (self.lease_name(kv.key())?, kv.mod_revision());
        Some(RawLease { key, value: kv.into_key_value().1, expiry, mod_revision })
    }
}

fn watch_backoff() -> Backoff {
    Backoff::exponential(WATCH_RETRY_FIRST, WATCH_RETRY_MAX)
}

fn connect_options(opts: &EtcdOptions) -> Result<ConnectOptions, StoreError> {
    let mut options = ConnectOptions::new()
        // A member cut off from its cluster refuses requests and ends its watches at once
        // (instead of serving stale reads and watches that never fire), so weft moves on.
        .with_require_leader(true)
        .with_connect_timeout(opts.dial_timeout)
        .with_keep_alive(KEEPALIVE_INTERVAL, opts.dial_timeout.max(Duration::from_secs(1)));
    if let Some(tls) = tls_options(opts)? {
        options = options.with_tls(tls);
    }
    match (&opts.username, &opts.password) {
        // etcd's tokens lapse (simple tokens after `--auth-token-ttl` idle, 5 min by default; all
        // of them when a member restarts): the client signs in again when one is refused.
        (Some(user), Some(password)) => Ok(options.with_user(user, password.expose()).with_auto_token_refresh(true)),
        (None, None) => Ok(options),
        (Some(_), None) => Err(StoreError::config("etcd username given without a password")),
        (None, Some(_)) => Err(StoreError::config("etcd password given without a username")),
    }
}

fn tls_options(opts: &EtcdOptions) -> Result<Option<TlsOptions>, StoreError> {
    if opts.ca_file.is_none() && opts.cert_file.is_none() && opts.key_file.is_none() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &opts.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read_file(ca, "CA certificate")?));
    }
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => {
            let cert = read_file(cert, "client certificate")?;
            let key = read_file(key, "client key")?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => return Err(StoreError::config("etcd client certificate and key must be given together")),
    }
    Ok(Some(tls))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::config(format!("read etcd {what} {}", path.display())).because(e))
}

/// etcd leases count whole seconds: round up, at least 1.
fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// The next response of a watch; a watch etcd closed or broke is `Unavailable`.
async fn next_response(watch: &mut WatchStream, context: &str) -> Result<WatchResponse, StoreError> {
    match watch.message().await {
        Ok(Some(resp)) => Ok(resp),
        Ok(None) => Err(StoreError::unavailable(format!("{context}: etcd closed the watch"))),
        Err(err) => Err(StoreError::unavailable(context).because(err)),
    }
}

/// Sends `value` if it differs from the last one sent; false when the consumer is gone.
async fn send_config_change(
    last: &mut Option<Option<String>>,
    value: Option<String>,
    tx: &mpsc::Sender<Result<Option<String>, StoreError>>,
) -> bool {
    if last.as_ref() == Some(&value) {
        return true;
    }
    *last = Some(value.clone());
    tx.send(Ok(value)).await.is_ok()
}

/// The end of the key range of everything under `prefix` (etcd's `--prefix`): the prefix with its
/// last byte below 0xff incremented, the bytes after it dropped.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: everything from the prefix on.
    vec![0]
}

fn header_revision(header: Option<&ResponseHeader>, context: &str) -> Result<Revision, StoreError> {
    header
        .map(ResponseHeader::revision)
        .ok_or_else(|| StoreError::corrupt(format!("{context}: etcd answered without a header")))
}

/// Why a watch response ends the watch, if it does.
fn watch_broken(resp: &WatchResponse, start: Revision) -> Option<StoreError> {
    if resp.compact_revision() > 0 {
        return Some(StoreError::unavailable(format!(
            "watch from revision {start} lost: etcd compacted history up to revision {}",
            resp.compact_revision()
        )));
    }
    resp.canceled().then(|| StoreError::unavailable(format!("etcd cancelled the watch: {}", resp.cancel_reason())))
}

/// Runs one etcd request with a deadline.
async fn timed<T>(context: &str, call: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result.map_err(|err| store_error(context, err)),
        Err(_) => Err(timeout_error(context)),
    }
}

fn timeout_error(context: &str) -> StoreError {
    StoreError::unavailable(format!("{context}: no answer from etcd within {REQUEST_TIMEOUT:?}"))
}

/// Sorts etcd errors into "try again later" and "this request is wrong".
fn store_error(context: &str, err: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    let kind = match &err {
        E::TransportError(_) | E::IoError(_) => StoreError::unavailable,
        // A request etcd gave up on (its leader changed, it is shutting down) is tried again, as
        // flannel does.
        E::GRpcStatus(status)
            if matches!(status.code() as i32, GRPC_CANCELLED | GRPC_DEADLINE_EXCEEDED | GRPC_UNAVAILABLE) =>
        {
            StoreError::unavailable
        }
        E::InvalidArgs(_) | E::InvalidUri(_) => StoreError::config,
        _ => StoreError::request,
    };
    kind(context).because(err)
}

/// What etcd answers, as `Unavailable`, to a request that needs a leader (weft asks for one)
/// while the member has none. The text is the error's identity: etcd's own client tells its
/// errors apart by their text too.
const ETCD_NO_LEADER: &str = "etcdserver: no leader";

/// Whether etcd certainly never ran the request: the member has no leader, or no connection to
/// it ever came up (refused, unreachable).
fn never_ran(err: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match err {
        E::GRpcStatus(status) if status.code() as i32 == GRPC_UNAVAILABLE && status.message() == ETCD_NO_LEADER => true,
        E::GRpcStatus(status) => std::error::Error::source(status).is_some_and(never_connected),
        E::TransportError(err) => never_connected(err),
        E::IoError(err) => never_connected(err),
        _ => false,
    }
}

/// Whether `err`, or an error under it, is a connection that never came up.
fn never_connected(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{AddrNotAvailable, ConnectionRefused, HostUnreachable, NetworkUnreachable};
    std::iter::successors(Some(err), |err| err.source()).any(|err| {
        err.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(io.kind(), ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_member_without_leader_or_connection_never_ran_the_request() {
        let no_leader = etcd_client::Error::GRpcStatus(tonic::Status::unavailable(ETCD_NO_LEADER));
        assert!(never_ran(&no_leader));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let status = tonic::Status::from_error(Box::new(refused));
        assert!(never_ran(&etcd_client::Error::GRpcStatus(status)), "a refused connection under the status");
        assert!(never_ran(&etcd_client::Error::IoError(std::io::ErrorKind::HostUnreachable.into())));
        // Anything that may have reached etcd is not sent twice.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_ran(&etcd_client::Error::GRpcStatus(tonic::Status::from_error(Box::new(reset)))));
        assert!(!never_ran(&etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
            "etcdserver: request timed out"
        ))));
        assert!(!never_ran(&etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(ETCD_NO_LEADER))));
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/coreos.com/network/subnets"), b"/coreos.com/network/subnett");
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn debug_hides_the_password() {
        let opts =
            EtcdOptions { username: Some("flannel".into()), password: Some("s3cret".into()), ..EtcdOptions::default() };
        let shown = format!("{opts:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("***") && shown.contains("flannel"), "{shown}");
    }

    #[test]
    fn unreadable_tls_files_are_named() {
        let opts = EtcdOptions { ca_file: Some("/nonexistent/weft-ca.pem".into()), ..EtcdOptions::default() };
        let err = connect_options(&opts).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/weft-ca.pem"), "{err}");
    }

    #[test]
    fn half_given_credentials_are_rejected() {
        let opts = EtcdOptions { username: Some("u".into()), ..EtcdOptions::default() };
        assert!(matches!(connect_options(&opts), Err(StoreError::Config { .. })));
        let opts = EtcdOptions { cert_file: Some("/c.pem".into()), ..EtcdOptions::default() };
        assert!(matches!(connect_options(&opts), Err(StoreError::Config { .. })));
    }

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::from_secs(86400)), 86400);
    }

    #[test]
    fn keys_follow_flannel_layout() {
        let keys = Keys::new("/coreos.com/network/");
        assert_eq!(keys.config, "/coreos.com/network/config");
        let net: ipnet::Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(keys.subnet(net.into()), "/coreos.com/network/subnets/10.244.3.0-24");
        let name = keys.lease_name(b"/coreos.com/network/subnets/10.244.3.0-24");
        assert_eq!(name.as_deref(), Some("10.244.3.0-24"));
        assert_eq!(keys.lease_name(b"/other/subnets/10.244.3.0-24"), None);
    }

    #[test]
    fn a_renewal_of_unknown_outcome_keeps_its_grant() {
        // Revoking the grant of a renewal that landed would delete our own lease.
        assert!(!WriteKind::Rewrite.revoke_when_unknown());
        // A creation that may have landed is undone, so it counts as not written.
        assert!(WriteKind::Create.revoke_when_unknown());
    }
}
