//! The etcd store against a real etcd (Debian's etcd 3.4), in flannel's layout.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use common::etcd::EtcdServer;
use futures::stream::BoxStream;
use futures::StreamExt;
use ipnet::Ipv4Net;
use weft::lease::{Expiry, LeaseAttrs};
use weft::store::etcd::{EtcdOptions, EtcdStore};
use weft::store::{
    Leadership, LeaseStore, LeaseUpdate, LeaseWrite, NetworkSource, RawLease, Revision, StoreError, WriteOutcome,
};

/// A lease exactly as flanneld writes it.
const FLANNEL_JSON: &str = r#"{"PublicIP":"192.0.2.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#;
const SUBNETS: &str = "/coreos.com/network/subnets";
const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

type Updates = BoxStream<'static, Result<LeaseUpdate, StoreError>>;

async fn connect(server: &EtcdServer) -> EtcdStore {
    let opts = EtcdOptions { endpoints: vec![server.endpoint.clone()], ..EtcdOptions::default() };
    EtcdStore::connect(opts).await.expect("connect to test etcd")
}

fn net(cidr: &str) -> Ipv4Net {
    cidr.parse().expect("test CIDR")
}

fn attrs(host: u8) -> String {
    let data = serde_json::json!({"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"});
    LeaseAttrs::new(Ipv4Addr::new(192, 0, 2, host), "vxlan", data).to_json()
}

fn written(outcome: WriteOutcome) -> Revision {
    match outcome {
        WriteOutcome::Written { revision, .. } => revision,
        WriteOutcome::Conflict => panic!("write conflicted"),
    }
}

async fn create(store: &EtcdStore, cidr: &str, ttl: Option<Duration>) -> Revision {
    written(store.create_lease(LeaseWrite::new(net(cidr), &attrs(1), ttl)).await.expect("create lease"))
}

async fn next_within(updates: &mut Updates, limit: Duration) -> Result<LeaseUpdate, StoreError> {
    tokio::time::timeout(limit, updates.next())
        .await
        .unwrap_or_else(|_| panic!("no watch update within {limit:?}"))
        .expect("the watch stream never ends")
}

async fn next(updates: &mut Updates) -> Result<LeaseUpdate, StoreError> {
    next_within(updates, Duration::from_secs(10)).await
}

fn find<'a>(leases: &'a [RawLease], key: &str) -> &'a RawLease {
    leases.iter().find(|l| l.key == key).unwrap_or_else(|| panic!("{key} not listed"))
}

fn etcd_lease_count(server: &EtcdServer) -> usize {
    let out = server.etcdctl(&["lease", "list"]);
    let count = out.split_whitespace().nth(1).and_then(|n| n.parse().ok());
    count.unwrap_or_else(|| panic!("unexpected `etcdctl lease list` output: {out}"))
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

#[tokio::test]
async fn second_create_of_a_subnet_conflicts() {
    let server = EtcdServer::start();
    let store = connect(&server).await;

    let outcome = store.create_lease(LeaseWrite::new(net("10.244.3.0/24"), &attrs(1), HOUR)).await.unwrap();
    let WriteOutcome::Written { revision, expiry } = outcome else { panic!("{outcome:?}") };
    assert!(revision > 1);
    assert!(matches!(expiry, Expiry::At(t) if t > SystemTime::now() + Duration::from_secs(3500)));

    let again = store.create_lease(LeaseWrite::new(net("10.244.3.0/24"), &attrs(2), HOUR)).await.unwrap();
    assert_eq!(again, WriteOutcome::Conflict);
    // The loser's etcd lease is revoked, not left behind.
    assert_eq!(etcd_lease_count(&server), 1);
    let listing = store.list_leases().await.unwrap();
    assert_eq!(listing.leases.len(), 1);
    assert_eq!(listing.leases[0].value, attrs(1).as_bytes());
    assert_eq!(listing.leases[0].mod_revision, revision);
}

/// A dual-stack key names its IPv4 subnet too: no second key may take that subnet, whatever
/// IPv6 subnet (or none) it pairs it with. (Two hosts started together picked one /24 with two
/// different /64s before the compare covered the subnet's keys.)
#[tokio::test]
async fn a_dual_stack_key_holds_its_ipv4_subnet_against_every_other_key() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    let key = |text: &str| weft::lease::parse_lease_key(text).unwrap();
    let create = |text: &'static str, host: u8| {
        let store = &store;
        async move { store.create_lease(LeaseWrite::new(key(text), &attrs(host), HOUR)).await.unwrap() }
    };
    assert!(matches!(create("10.244.8.0-24&2001:db8:42:d5::-64", 1).await, WriteOutcome::Written { .. }));
    assert_eq!(create("10.244.8.0-24&2001:db8:42:e1::-64", 2).await, WriteOutcome::Conflict);
    assert_eq!(create("10.244.8.0-24", 3).await, WriteOutcome::Conflict);
    // The other way round: an IPv4 key holds its subnet against a dual-stack one.
    assert!(matches!(create("10.244.9.0-24", 4).await, WriteOutcome::Written { .. }));
    assert_eq!(create("10.244.9.0-24&2001:db8:42:9::-64", 5).await, WriteOutcome::Conflict);
    // A longer subnet starting with the same digits is another subnet.
    assert!(matches!(create("10.244.8.0-25", 6).await, WriteOutcome::Written { .. }));
    let keys: Vec<String> = store.list_leases().await.unwrap().leases.into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["10.244.8.0-24&2001:db8:42:d5::-64", "10.244.8.0-25", "10.244.9.0-24"]);
}

/// flannel's IPv6-only keys all start `0.0.0.0-0&`: each is compared whole, so one IPv6 subnet
/// is taken once and the others stay free.
#[tokio::test]
async fn an_ipv6_only_key_holds_its_ipv6_subnet_and_no_other() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    let key = |text: &str| weft::lease::parse_lease_key(text).unwrap();
    let create = |text: &'static str, host: u8| {
        let store = &store;
        async move { store.create_lease(LeaseWrite::new(key(text), &attrs(host), HOUR)).await.unwrap() }
    };
    assert!(matches!(create("0.0.0.0-0&2001:db8:42:1::-64", 1).await, WriteOutcome::Written { .. }));
    assert!(matches!(create("0.0.0.0-0&2001:db8:42:2::-64", 2).await, WriteOutcome::Written { .. }));
    assert_eq!(create("0.0.0.0-0&2001:db8:42:1::-64", 3).await, WriteOutcome::Conflict);
    // flannel's own IPv6-only lease reads back as one, named by its IPv6 subnet.
    let flannel = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::9","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:09"}}"#;
    server.etcdctl(&["put", &format!("{SUBNETS}/0.0.0.0-0&2001:db8:42:9::-64"), flannel]);
    let listing = store.list_leases().await.unwrap();
    let lease = find(&listing.leases, "0.0.0.0-0&2001:db8:42:9::-64").parse().expect("flannel's lease parses");
    assert_eq!((lease.subnet, lease.id().to_string()), (None, "2001:db8:42:9::/64".to_string()));
    assert_eq!(lease.attrs.public_ipv6(), Some("2001:db8::9".parse().unwrap()));
    assert_eq!(lease.attrs.to_json(), flannel, "written back byte for byte");
    assert_eq!(listing.leases.len(), 3);
}

#[tokio::test]
async fn reservations_never_expire_and_leases_resolve_their_ttl() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    let outcome = store.create_lease(LeaseWrite::new(net("10.244.9.0/24"), &attrs(9), None)).await.unwrap();
    assert!(matches!(outcome, WriteOutcome::Written { expiry: Expiry::Never, .. }));
    create(&store, "10.244.3.0/24", HOUR).await;

    let mut leases = store.list_leases().await.unwrap().leases;
    assert_eq!(find(&leases, "10.244.9.0-24").expiry, Expiry::Never);
    assert_eq!(find(&leases, "10.244.3.0-24").expiry, Expiry::Unknown);

    store.resolve_expiry(&mut leases).await.unwrap();
    assert_eq!(find(&leases, "10.244.9.0-24").expiry, Expiry::Never);
    let Expiry::At(at) = find(&leases, "10.244.3.0-24").expiry else { panic!("unresolved") };
    let left = at.duration_since(SystemTime::now()).expect("expiry in the future");
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600), "{left:?}");
}

#[tokio::test]
async fn many_expiries_resolve_with_one_listing() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    for i in 0..40 {
        create(&store, &format!("10.244.{i}.0/24"), HOUR).await;
    }
    let mut leases = store.list_leases().await.unwrap().leases;
    store.resolve_expiry(&mut leases).await.unwrap();
    assert_eq!(leases.len(), 40);
    assert!(leases.iter().all(|l| matches!(l.expiry, Expiry::At(_))), "{leases:?}");
}

#[tokio::test]
async fn update_needs_the_current_revision() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    let first = create(&store, "10.244.3.0/24", HOUR).await;

    let outcome = store.update_lease(LeaseWrite::new(net("10.244.3.0/24"), &attrs(1), HOUR), first).await.unwrap();
    let second = written(outcome);
    assert!(second > first);

    let stale = store.update_lease(LeaseWrite::new(net("10.244.3.0/24"), &attrs(1), HOUR), first).await.unwrap();
    assert_eq!(stale, WriteOutcome::Conflict);
    let listing = store.list_leases().await.unwrap();
    assert_eq!(find(&listing.leases, "10.244.3.0-24").mod_revision, second);
}

#[tokio::test]
async fn a_lease_disappears_after_its_ttl() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    create(&store, "10.244.3.0/24", Some(Duration::from_secs(2))).await;
    assert_eq!(store.list_leases().await.unwrap().leases.len(), 1);

    let deadline = Instant::now() + Duration::from_secs(15);
    while !store.list_leases().await.unwrap().leases.is_empty() {
        assert!(Instant::now() < deadline, "lease still there after 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn delete_reports_whether_there_was_a_key() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    create(&store, "10.244.3.0/24", HOUR).await;
    assert!(store.delete_lease(net("10.244.3.0/24").into()).await.unwrap());
    assert!(!store.delete_lease(net("10.244.3.0/24").into()).await.unwrap());
}

#[tokio::test]
async fn network_config_round_trips() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    assert_eq!(store.network_config().await.unwrap(), None);
    let json = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    store.put_network_config(json).await.unwrap();
    assert_eq!(store.network_config().await.unwrap().as_deref(), Some(json));
    let stored = server.etcdctl(&["get", "--print-value-only", "/coreos.com/network/config"]);
    assert_eq!(stored.trim_end(), json);
}

#[tokio::test]
async fn watch_sees_puts_and_deletes_in_order() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    let start = store.list_leases().await.unwrap().revision;
    let mut updates = store.watch_leases(start);

    let a = create(&store, "10.244.1.0/24", HOUR).await;
    let b = create(&store, "10.244.2.0/24", None).await;
    assert!(store.delete_lease(net("10.244.1.0/24").into()).await.unwrap());

    let Ok(LeaseUpdate::Put(put_a)) = next(&mut updates).await else { panic!("expected put") };
    assert_eq!((put_a.key.as_str(), put_a.mod_revision), ("10.244.1.0-24", a));
    assert_eq!(put_a.expiry, Expiry::Unknown);
    let Ok(LeaseUpdate::Put(put_b)) = next(&mut updates).await else { panic!("expected put") };
    assert_eq!((put_b.key.as_str(), put_b.expiry), ("10.244.2.0-24", Expiry::Never));
    assert_eq!(put_b.mod_revision, b);
    let deleted = next(&mut updates).await.unwrap();
    let LeaseUpdate::Deleted { key, revision } = deleted else { panic!("{deleted:?}") };
    assert_eq!(key, "10.244.1.0-24");
    assert!(revision > b);
}

#[tokio::test]
async fn watch_from_a_compacted_revision_resyncs() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    let start = store.list_leases().await.unwrap().revision;
    for cidr in ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"] {
        create(&store, cidr, HOUR).await;
    }
    assert!(store.delete_lease(net("10.244.2.0/24").into()).await.unwrap());
    let current = store.list_leases().await.unwrap();
    server.etcdctl(&["compact", &current.revision.to_string()]);

    let mut updates = store.watch_leases(start);
    let lost = next(&mut updates).await;
    assert!(matches!(lost, Err(StoreError::Unavailable { .. })), "{lost:?}");
    let resync = next(&mut updates).await.unwrap();
    assert_eq!(resync, LeaseUpdate::Resync(current.leases, current.revision));

    // The watch goes on from the resync's revision.
    let later = create(&store, "10.244.4.0/24", HOUR).await;
    let Ok(LeaseUpdate::Put(put)) = next(&mut updates).await else { panic!("expected put") };
    assert_eq!((put.key.as_str(), put.mod_revision), ("10.244.4.0-24", later));
}

#[tokio::test]
async fn watch_resyncs_after_etcd_restarts() {
    let mut server = EtcdServer::start();
    let store = connect(&server).await;
    create(&store, "10.244.1.0/24", None).await;
    let start = store.list_leases().await.unwrap().revision;
    let mut updates = store.watch_leases(start);
    assert!(eventually(Duration::from_secs(5), || server.watchers() == 1).await);

    server.stop();
    let lost = next(&mut updates).await;
    assert!(matches!(lost, Err(StoreError::Unavailable { .. })), "{lost:?}");
    server.restart();

    let resync = next_within(&mut updates, Duration::from_secs(30)).await.unwrap();
    let LeaseUpdate::Resync(leases, revision) = resync else { panic!("{resync:?}") };
    assert_eq!(revision, start);
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].key, "10.244.1.0-24");
}

#[tokio::test]
async fn dropping_the_watch_stops_it() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    let updates = store.watch_leases(0);
    assert!(eventually(Duration::from_secs(5), || server.watchers() == 1).await);
    drop(updates);
    assert!(
        eventually(Duration::from_secs(5), || server.watchers() == 0).await,
        "etcd still serves the watch after the stream was dropped"
    );
}

#[tokio::test]
async fn reads_a_lease_written_by_flannel() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    server.etcdctl(&["put", &format!("{SUBNETS}/10.244.3.0-24"), FLANNEL_JSON]);

    let listing = store.list_leases().await.unwrap();
    let raw = find(&listing.leases, "10.244.3.0-24");
    assert_eq!(raw.expiry, Expiry::Never);
    let lease = raw.parse().expect("flannel's lease parses");
    assert_eq!(lease.subnet, Some(net("10.244.3.0/24")));
    assert_eq!(lease.attrs.public_ip, Ipv4Addr::new(192, 0, 2, 10));
    assert_eq!(lease.attrs.backend_data.str_field("VtepMAC").as_deref(), Some("aa:bb:cc:dd:ee:ff"));
}

#[tokio::test]
async fn writes_the_bytes_flannel_writes() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    let attrs: LeaseAttrs = serde_json::from_str(FLANNEL_JSON).unwrap();
    let outcome = store.create_lease(LeaseWrite::new(net("10.244.3.0/24"), &attrs.to_json(), HOUR)).await.unwrap();
    written(outcome);

    let key = format!("{SUBNETS}/10.244.3.0-24");
    let stored = server.etcdctl(&["get", "--print-value-only", &key]);
    assert_eq!(stored.strip_suffix('\n'), Some(FLANNEL_JSON));
}

#[tokio::test]
async fn malformed_entries_are_listed_raw() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    create(&store, "10.244.1.0/24", HOUR).await;
    server.etcdctl(&["put", &format!("{SUBNETS}/not-a-subnet"), FLANNEL_JSON]);
    server.etcdctl(&["put", &format!("{SUBNETS}/10.244.5.0-24"), "{not json"]);

    let listing = store.list_leases().await.unwrap();
    assert_eq!(listing.leases.len(), 3);
    assert!(find(&listing.leases, "10.244.1.0-24").parse().is_ok());
    assert!(find(&listing.leases, "not-a-subnet").parse().is_err());
    let bad_json = find(&listing.leases, "10.244.5.0-24");
    assert_eq!(bad_json.value, b"{not json");
    assert!(bad_json.parse().is_err());
}

/// Read in pages of one snapshot: every lease once, none lost or doubled at a page boundary.
#[tokio::test]
async fn lists_ten_thousand_leases() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    bulk_load(&server, 10_000).await;

    let started = Instant::now();
    let listing = store.list_leases().await.unwrap();
    let took = started.elapsed();
    assert_eq!(listing.leases.len(), 10_000);
    assert!(listing.leases.iter().all(|l| l.parse().is_ok()));
    let distinct: std::collections::HashSet<&str> = listing.leases.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(distinct.len(), 10_000);
    assert!(took < Duration::from_secs(5), "listing took {took:?}");
}

/// Writes `count` flannel leases, 100 per transaction (etcd allows 128 operations per txn).
async fn bulk_load(server: &EtcdServer, count: u32) {
    use etcd_client::{Client, Txn, TxnOp};
    let mut client = Client::connect([&server.endpoint], None).await.unwrap();
    let keys: Vec<String> = (0..count).map(|i| format!("{SUBNETS}/10.{}.{}.0-24", 100 + i / 256, i % 256)).collect();
    for chunk in keys.chunks(100) {
        let puts: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::put(k.as_str(), FLANNEL_JSON, None)).collect();
        client.txn(Txn::new().and_then(puts)).await.unwrap();
    }
}

#[tokio::test]
async fn leadership_is_held_by_one_and_lapses_with_its_ttl() {
    let server = EtcdServer::start();
    let (a, b) = (connect(&server).await, connect(&server).await);
    let ttl = Duration::from_secs(2);
    assert!(a.lead("routes", "host-a", ttl).await.unwrap());
    assert!(!b.lead("routes", "host-b", ttl).await.unwrap(), "two leaders at once");
    // The leader keeps leading by calling again.
    assert!(a.lead("routes", "host-a", ttl).await.unwrap());
    // A leader that stops calling loses its turn when the TTL runs out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(b.lead("routes", "host-b", ttl).await.unwrap());
    assert!(!a.lead("routes", "host-a", ttl).await.unwrap());
}

/// What the leader shares of the cloud (issue 17): written only while it leads, read by the
/// others, gone with the leader's turn; flannel's keys untouched.
#[tokio::test]
async fn the_leaders_view_is_shared_while_it_leads() {
    let server = EtcdServer::start();
    let (a, b) = (connect(&server).await, connect(&server).await);
    let ttl = Duration::from_secs(2);
    assert!(!a.share_view("aws-vpc-routes", "host-a", "tables", ttl).await.unwrap(), "nobody leads");
    assert!(a.lead("aws-vpc-routes", "host-a", ttl).await.unwrap());
    assert!(!b.share_view("aws-vpc-routes", "host-b", "forged", ttl).await.unwrap(), "b does not lead");
    assert!(a.share_view("aws-vpc-routes", "host-a", "tables", ttl).await.unwrap());
    assert_eq!(b.shared_view("aws-vpc-routes").await.unwrap().as_deref(), Some("tables"));
    assert_eq!(b.shared_view("gce-routes").await.unwrap(), None);
    assert!(server
        .etcdctl(&["get", "--prefix", "--keys-only", "/coreos.com/network/views/"])
        .contains("aws-vpc-routes"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(b.shared_view("aws-vpc-routes").await.unwrap(), None, "a dead leader's view lapses");
}

#[tokio::test]
async fn network_config_watch_sends_current_then_changes() {
    let server = EtcdServer::start();
    let store = connect(&server).await;
    let mut configs = store.watch_network_config();
    assert_eq!(configs.next().await.unwrap().unwrap(), None);
    store.put_network_config(r#"{"Network":"10.244.0.0/16"}"#).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), configs.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.as_deref(), Some(r#"{"Network":"10.244.0.0/16"}"#));
    server.etcdctl(&["del", "/coreos.com/network/config"]);
    let gone = tokio::time::timeout(Duration::from_secs(5), configs.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(gone, None);
}

/// etcd serving clients over TLS with client certificates (`--client-cert-auth`): with the
/// store's `ca_file`, `cert_file` and `key_file` the agent reads and writes; without its client
/// certificate, or trusting another CA, it gets an error, not a hang.
#[tokio::test]
async fn tls_with_client_certificates() {
    let server = EtcdServer::start_tls();
    let certs = server.tls.as_ref().expect("a TLS server");
    assert!(server.endpoint.starts_with("https://"));
    let opts = EtcdOptions {
        endpoints: vec![server.endpoint.clone()],
        ca_file: Some(certs.ca.clone()),
        cert_file: Some(certs.client_cert.clone()),
        key_file: Some(certs.client_key.clone()),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(opts.clone()).await.expect("connect over TLS");
    store.put_network_config(r#"{"Network":"10.244.0.0/16"}"#).await.expect("write over TLS");
    assert_eq!(store.network_config().await.unwrap().as_deref(), Some(r#"{"Network":"10.244.0.0/16"}"#));
    let outcome = store.create_lease(LeaseWrite::new(net("10.244.7.0/24"), FLANNEL_JSON, HOUR)).await.unwrap();
    assert!(matches!(outcome, WriteOutcome::Written { .. }), "{outcome:?}");
    // etcdctl with the same certificates sees what the store wrote.
    assert!(server.etcdctl(&["get", "--prefix", SUBNETS, "--keys-only"]).contains("10.244.7.0-24"));

    let refused = |opts: EtcdOptions| async move {
        let started = Instant::now();
        let result = match EtcdStore::connect(opts).await {
            Ok(store) => store.network_config().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
        result.expect_err("etcd must refuse this client").to_string()
    };
    // The server's refusal reaches the client as a TLS alert or a closed connection (TLS 1.3).
    refused(EtcdOptions { cert_file: None, key_file: None, ..opts.clone() }).await;
    // Trusting another CA (the client certificate is no CA): the server is not believed.
    let error = refused(EtcdOptions { ca_file: Some(certs.client_cert.clone()), ..opts }).await;
    assert!(error.contains("UnknownIssuer"), "{error}");
}

/// etcd with authentication on and simple tokens lapsing after 2 s idle: an agent's store that
/// sat idle for three times that still renews its lease (the client signs in again when etcd
/// says its token is no longer valid), and a wrong password is an error, not a hang.
#[tokio::test]
async fn an_idle_client_renews_after_its_auth_token_lapsed() {
    const TOKEN_TTL_SECS: u32 = 2;
    let server = EtcdServer::start_with_auth("s3cret", TOKEN_TTL_SECS);
    let opts = EtcdOptions {
        endpoints: vec![server.endpoint.clone()],
        username: Some("root".into()),
        password: Some("s3cret".into()),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(opts.clone()).await.expect("connect with a password");
    let revision = create(&store, "10.244.9.0/24", HOUR).await;
    tokio::time::sleep(Duration::from_secs(3 * u64::from(TOKEN_TTL_SECS) + 1)).await;
    let renewed = store
        .update_lease(LeaseWrite::new(net("10.244.9.0/24"), &attrs(1), HOUR), revision)
        .await
        .expect("renewal after the token lapsed");
    assert!(written(renewed) > revision);
    let listed = store.list_leases().await.expect("list after the token lapsed");
    assert_eq!(listed.leases.len(), 1);

    let wrong = EtcdOptions { password: Some("wrong".into()), ..opts };
    let started = Instant::now();
    let error = EtcdStore::connect(wrong).await.expect_err("a wrong password is refused");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(error.to_string().contains("authentication failed"), "{error}");
}

/// One member of the configured ones is down (nothing listens on its port): a request refused by
/// it goes on to the member that answers, so no request fails, and the store stays there.
/// tonic's balancer kept sending a third to a half of the requests to such a member for as long
/// as it was down, and before in-request failover the first request failed.
#[tokio::test]
async fn a_member_that_is_down_costs_no_request() {
    let server = EtcdServer::start();
    let down = format!("http://127.0.0.1:{}", common::weft::free_port());
    let opts = EtcdOptions { endpoints: vec![down.clone(), server.endpoint.clone()], ..EtcdOptions::default() };
    let store = EtcdStore::connect(opts).await.expect("connect with one member down");
    const REQUESTS: usize = 40;
    let mut failed = 0;
    for _ in 0..REQUESTS {
        match store.list_leases().await {
            Ok(_) => {}
            Err(StoreError::Unavailable { .. }) => failed += 1,
            Err(other) => panic!("{other}"),
        }
    }
    println!("one of two members down ({down}): {failed} of {REQUESTS} requests failed");
    assert_eq!(failed, 0, "{failed} of {REQUESTS} requests failed with {down} down");
    // A watch opened now runs on the member that answers.
    let mut updates = store.watch_leases(store.list_leases().await.expect("list").revision);
    create(&store, "10.244.9.0/24", HOUR).await;
    assert!(matches!(next(&mut updates).await, Ok(LeaseUpdate::Put(_))));
}
