//! The embedded store shared by several instances and processes on one machine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use ipnet::Ipv4Net;
use weft::lease::{Expiry, LeaseAttrs};
use weft::store::local::LocalStore;
use weft::store::{Leadership, LeaseStore, LeaseUpdate, LeaseWrite, NetworkSource, RawLease, StoreError, WriteOutcome};

/// Set in a re-executed copy of this test binary: the store directory to race in.
const CHILD_DIR_ENV: &str = "WEFT_LOCAL_STORE_CHILD_DIR";
const CHILD_ID_ENV: &str = "WEFT_LOCAL_STORE_CHILD_ID";
const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn attrs(host: u8) -> String {
    LeaseAttrs::new(Ipv4Addr::new(192, 0, 2, host), "vxlan", serde_json::json!({"VNI": 1})).to_json()
}

fn open(dir: &Path) -> LocalStore {
    LocalStore::open(dir).unwrap().with_poll_interval(Duration::from_millis(50))
}

fn written_revision(outcome: WriteOutcome) -> i64 {
    match outcome {
        WriteOutcome::Written { revision, .. } => revision,
        WriteOutcome::Conflict => panic!("unexpected conflict"),
    }
}

async fn keys(store: &LocalStore) -> Vec<String> {
    store.list_leases().await.unwrap().leases.into_iter().map(|l| l.key).collect()
}

/// The next Resync from `watch`, within `limit`.
async fn next_resync(
    watch: &mut (impl futures::Stream<Item = Result<LeaseUpdate, StoreError>> + Unpin),
    limit: Duration,
) -> (Vec<RawLease>, i64) {
    let update = tokio::time::timeout(limit, watch.next())
        .await
        .expect("no update in time")
        .expect("watch ended")
        .expect("watch error");
    match update {
        LeaseUpdate::Resync(leases, revision) => (leases, revision),
        other => panic!("expected a resync, got {other:?}"),
    }
}

#[tokio::test]
async fn open_creates_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/store");
    let store = LocalStore::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(store.list_leases().await.unwrap().revision, 0);
}

/// A directory that was there before (made by hand, open to everyone) is made private on every
/// open, not only when the store creates it.
#[tokio::test]
async fn open_makes_an_existing_directory_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    std::fs::create_dir(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(mode(&path), 0o777);
    let store = LocalStore::open(&path).unwrap();
    assert_eq!(mode(&path), 0o700);
    store.put_network_config("{}").await.unwrap();
    // Loosened again while the store holds data: the next open tightens it again.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let again = LocalStore::open(&path).unwrap();
    assert_eq!(mode(&path), 0o700);
    assert_eq!(again.network_config().await.unwrap().as_deref(), Some("{}"));
}

#[tokio::test]
async fn open_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = LocalStore::open(&file.join("store")).unwrap_err();
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[tokio::test]
async fn network_config_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.network_config().await.unwrap(), None);
    store.put_network_config(r#"{"Network":"10.244.0.0/16"}"#).await.unwrap();
    let other = open(dir.path());
    assert_eq!(other.network_config().await.unwrap().as_deref(), Some(r#"{"Network":"10.244.0.0/16"}"#));
}

#[tokio::test]
async fn create_conflicts_with_a_live_lease() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = store.create_lease(LeaseWrite::new(net("10.244.1.0/24"), &attrs(1), HOUR)).await.unwrap();
    assert_eq!(written_revision(first), 1);
    let second = store.create_lease(LeaseWrite::new(net("10.244.1.0/24"), &attrs(2), HOUR)).await.unwrap();
    assert_eq!(second, WriteOutcome::Conflict);

    let listing = store.list_leases().await.unwrap();
    assert_eq!(listing.revision, 1);
    assert_eq!(listing.leases.len(), 1);
    let lease = listing.leases[0].parse().unwrap();
    assert_eq!(lease.attrs.public_ip, Ipv4Addr::new(192, 0, 2, 1));
}

#[tokio::test]
async fn update_needs_the_current_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let subnet = net("10.244.1.0/24");
    let created = written_revision(store.create_lease(LeaseWrite::new(subnet, &attrs(1), HOUR)).await.unwrap());

    let updated = store.update_lease(LeaseWrite::new(subnet, &attrs(1), HOUR), created).await.unwrap();
    let renewed = written_revision(updated);
    assert!(renewed > created);
    let stale = store.update_lease(LeaseWrite::new(subnet, &attrs(2), HOUR), created).await.unwrap();
    assert_eq!(stale, WriteOutcome::Conflict);
    let missing = store.update_lease(LeaseWrite::new(net("10.244.9.0/24"), &attrs(2), HOUR), renewed).await.unwrap();
    assert_eq!(missing, WriteOutcome::Conflict);

    let listing = store.list_leases().await.unwrap();
    assert_eq!(listing.leases[0].mod_revision, renewed);
    assert_eq!(listing.revision, renewed);
}

#[tokio::test]
async fn listing_reports_the_written_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = SystemTime::now();
    let outcome = store.create_lease(LeaseWrite::new(net("10.244.1.0/24"), &attrs(1), HOUR)).await.unwrap();
    let WriteOutcome::Written { expiry, .. } = outcome else { panic!("conflict") };
    let Expiry::At(at) = expiry else { panic!("expected a deadline, got {expiry:?}") };
    assert!(at >= before + Duration::from_secs(3599) && at <= SystemTime::now() + HOUR.unwrap());
    assert_eq!(store.list_leases().await.unwrap().leases[0].expiry, expiry);
}

#[tokio::test]
async fn reservations_never_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let outcome = store.create_lease(LeaseWrite::new(net("10.244.7.0/24"), &attrs(7), None)).await.unwrap();
    assert!(matches!(outcome, WriteOutcome::Written { expiry: Expiry::Never, .. }));
    let listing = open(dir.path()).list_leases().await.unwrap();
    assert_eq!(listing.leases[0].expiry, Expiry::Never);
    let conflict = store.create_lease(LeaseWrite::new(net("10.244.7.0/24"), &attrs(8), HOUR)).await.unwrap();
    assert_eq!(conflict, WriteOutcome::Conflict);
}

#[tokio::test]
async fn delete_reports_whether_there_was_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_lease(LeaseWrite::new(net("10.244.1.0/24"), &attrs(1), HOUR)).await.unwrap();
    assert!(store.delete_lease(net("10.244.1.0/24").into()).await.unwrap());
    assert!(!store.delete_lease(net("10.244.1.0/24").into()).await.unwrap());
    assert!(keys(&store).await.is_empty());
}

#[tokio::test]
async fn expired_leases_vanish_and_free_their_subnet() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let short = Some(Duration::from_millis(700));
    store.create_lease(LeaseWrite::new(net("10.244.1.0/24"), &attrs(1), short)).await.unwrap();
    store.create_lease(LeaseWrite::new(net("10.244.2.0/24"), &attrs(2), None)).await.unwrap();
    assert_eq!(keys(&store).await, ["10.244.1.0-24", "10.244.2.0-24"]);

    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(keys(&store).await, ["10.244.2.0-24"]);
    let retaken = store.create_lease(LeaseWrite::new(net("10.244.1.0/24"), &attrs(3), HOUR)).await.unwrap();
    assert!(matches!(retaken, WriteOutcome::Written { .. }));
}

#[tokio::test]
async fn watcher_sees_expiry_without_any_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_lease(LeaseWrite::new(net("10.244.1.0/24"), &attrs(1), Some(Duration::from_millis(800))))
        .await
        .unwrap();
    store.create_lease(LeaseWrite::new(net("10.244.2.0/24"), &attrs(2), HOUR)).await.unwrap();
    let listing = store.list_leases().await.unwrap();

    let mut watch = store.watch_leases(listing.revision);
    let (leases, revision) = next_resync(&mut watch, Duration::from_secs(3)).await;
    let keys: Vec<_> = leases.into_iter().map(|l| l.key).collect();
    assert_eq!(keys, ["10.244.2.0-24"]);
    // Nobody wrote: the revision is the listing's.
    assert_eq!(revision, listing.revision);
}

#[tokio::test]
async fn watcher_sees_another_instance_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let watcher = open(dir.path());
    let writer = open(dir.path());
    let listing = watcher.list_leases().await.unwrap();
    let mut watch = watcher.watch_leases(listing.revision);

    let created = writer.create_lease(LeaseWrite::new(net("10.244.5.0/24"), &attrs(5), HOUR)).await.unwrap();
    let (leases, revision) = next_resync(&mut watch, Duration::from_secs(1)).await;
    assert_eq!(revision, written_revision(created));
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].key, "10.244.5.0-24");

    writer.delete_lease(net("10.244.5.0/24").into()).await.unwrap();
    let (leases, _) = next_resync(&mut watch, Duration::from_secs(1)).await;
    assert!(leases.is_empty());
}

#[tokio::test]
async fn watch_from_an_old_revision_resyncs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_lease(LeaseWrite::new(net("10.244.1.0/24"), &attrs(1), HOUR)).await.unwrap();
    let mut watch = store.watch_leases(0);
    let (leases, revision) = next_resync(&mut watch, Duration::from_millis(500)).await;
    assert_eq!((leases.len(), revision), (1, 1));
    // Nothing changed since: no further update.
    let quiet = tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
    assert!(quiet.is_err(), "unexpected update {quiet:?}");
}

#[tokio::test]
async fn corrupt_state_is_an_error_naming_the_file_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, "{ not json").unwrap();
    let store = open(dir.path());

    let err = store.list_leases().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&state.display().to_string()), "{err}");
    let err = store.create_lease(LeaseWrite::new(net("10.244.1.0/24"), &attrs(1), HOUR)).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "{ not json");

    // A watcher reports it and keeps polling: a repaired store is seen.
    let mut watch = store.watch_leases(0);
    let first = tokio::time::timeout(Duration::from_secs(1), watch.next()).await.unwrap().unwrap();
    assert!(matches!(first, Err(StoreError::Corrupt { .. })), "{first:?}");
    std::fs::remove_file(&state).unwrap();
    store.create_lease(LeaseWrite::new(net("10.244.1.0/24"), &attrs(1), HOUR)).await.unwrap();
    let (leases, _) = next_resync(&mut watch, Duration::from_secs(1)).await;
    assert_eq!(leases.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_instances_get_one_winner_per_subnet_and_lose_nothing() {
    const TASKS: u8 = 50;
    const SHARED: u8 = 5;
    let dir = tempfile::tempdir().unwrap();

    let mut tasks = Vec::new();
    for id in 0..TASKS {
        let store = open(dir.path());
        tasks.push(tokio::spawn(async move {
            let own = net(&format!("10.244.{id}.0/24"));
            let created = store.create_lease(LeaseWrite::new(own, &attrs(id), HOUR)).await.unwrap();
            assert!(matches!(created, WriteOutcome::Written { .. }), "lost {own}");
            let shared = net(&format!("10.245.{}.0/24", id % SHARED));
            let won = store.create_lease(LeaseWrite::new(shared, &attrs(id), HOUR)).await.unwrap();
            matches!(won, WriteOutcome::Written { .. }).then_some((shared, id))
        }));
    }
    let mut winners: BTreeMap<Ipv4Net, Vec<u8>> = BTreeMap::new();
    for task in tasks {
        if let Some((subnet, id)) = task.await.unwrap() {
            winners.entry(subnet).or_default().push(id);
        }
    }

    assert_eq!(winners.len(), usize::from(SHARED));
    let listing = open(dir.path()).list_leases().await.unwrap();
    assert_eq!(listing.leases.len(), usize::from(TASKS + SHARED));
    assert_eq!(listing.revision, i64::from(TASKS + SHARED));
    for (subnet, ids) in winners {
        assert_eq!(ids.len(), 1, "{subnet} won by {ids:?}");
        let stored = listing.leases.iter().find(|l| l.parse().unwrap().subnet == Some(subnet)).unwrap();
        assert_eq!(stored.parse().unwrap().attrs.public_ip, Ipv4Addr::new(192, 0, 2, ids[0]));
    }
}

/// Run by `processes_share_one_store` in child processes; does nothing in a normal test run.
#[tokio::test]
async fn child_creates_leases() {
    let (Ok(dir), Ok(id)) = (std::env::var(CHILD_DIR_ENV), std::env::var(CHILD_ID_ENV)) else {
        return;
    };
    let id: u8 = id.parse().unwrap();
    let store = LocalStore::open(Path::new(&dir)).unwrap();
    for n in 0..CHILD_LEASES {
        let subnet = net(&format!("10.{}.{n}.0/24", 100 + id));
        let own = store.create_lease(LeaseWrite::new(subnet, &attrs(id), HOUR)).await.unwrap();
        assert!(matches!(own, WriteOutcome::Written { .. }), "lost {subnet}");
        let shared = net(&format!("10.99.{n}.0/24"));
        if let WriteOutcome::Written { .. } =
            store.create_lease(LeaseWrite::new(shared, &attrs(id), HOUR)).await.unwrap()
        {
            println!("WON {shared}");
        }
    }
}

const CHILD_LEASES: u8 = 20;

#[test]
fn processes_share_one_store() {
    const CHILDREN: u8 = 4;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|id| {
            Command::new(&exe)
                .args(["--exact", "child_creates_leases", "--nocapture", "--test-threads=1"])
                .env(CHILD_DIR_ENV, dir.path())
                .env(CHILD_ID_ENV, id.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();

    let mut wins = Vec::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "child failed: {output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        // The harness may print its "test ... " header on the same line as ours.
        wins.extend(stdout.lines().filter_map(|l| l.split_once("WON ")).map(|(_, s)| net(s.trim())));
    }

    let unique: BTreeSet<_> = wins.iter().copied().collect();
    assert_eq!(wins.len(), usize::from(CHILD_LEASES), "each shared subnet won once: {wins:?}");
    assert_eq!(unique.len(), usize::from(CHILD_LEASES));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listing = runtime.block_on(LocalStore::open(dir.path()).unwrap().list_leases()).unwrap();
    assert_eq!(listing.leases.len(), usize::from(CHILD_LEASES) * usize::from(CHILDREN + 1));
}

#[tokio::test]
async fn leadership_is_held_by_one_and_lapses_with_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (open(dir.path()), open(dir.path()));
    let ttl = Duration::from_millis(600);
    assert!(a.lead("routes", "host-a", ttl).await.unwrap());
    assert!(!b.lead("routes", "host-b", ttl).await.unwrap(), "two leaders at once");
    assert!(a.lead("routes", "host-a", ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(b.lead("routes", "host-b", ttl).await.unwrap());
    assert!(!a.lead("routes", "host-a", ttl).await.unwrap());
}

#[tokio::test]
async fn network_config_watch_sends_current_then_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut configs = store.watch_network_config();
    assert_eq!(configs.next().await.unwrap().unwrap(), None);
    open(dir.path()).put_network_config(r#"{"Network":"10.244.0.0/16"}"#).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), configs.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.as_deref(), Some(r#"{"Network":"10.244.0.0/16"}"#));
}
