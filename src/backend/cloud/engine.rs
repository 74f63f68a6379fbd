//! The cloud engine: one task per cloud backend that brings the cloud's routes in line with the
//! leases, so that the agent loop never waits on a cloud API. It decides *when* (a pass per
//! request, one every `recheck`, retries on a jittered backoff), *who* removes other nodes' stale
//! routes (one agent at a time, elected through the store), and what readiness and the metrics
//! say; the [`Provider`] decides *what* against its own API.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::paths::CloudPaths;
use crate::backend::BackendKind;
use crate::backoff::Backoff;
use crate::health::{Condition, Health, PathLabels};
use crate::lease::LeaseKey;
use crate::store::Leadership;

/// The first retry of a failed pass; later ones grow up to `recheck`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// A leadership turn lasts this many rechecks (at least [`MIN_LEAD_TTL`]): a leader that died
/// is replaced within that, a live one renews it in time.
const LEAD_TURN_RECHECKS: u32 = 3;
const MIN_LEAD_TTL: Duration = Duration::from_secs(15);

/// What the backend wants the cloud to reflect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Our subnets; `None` while our lease has run out (cut off from the store): another host
    /// may hold them by now, so our routes are not asserted until we hold a lease again.
    pub own: Option<LeaseKey>,
    /// Every lease, ours included; `None` until the agent has listed the leases (and until then
    /// nothing is judged stale).
    pub leased: Option<BTreeSet<LeaseKey>>,
}

/// One pass's input: the request and whether this agent removes stale routes this time.
#[derive(Debug, Clone)]
pub struct PassInput<'a> {
    /// Our subnets, one route each (IPv4, and IPv6 in a dual-stack network).
    pub own: Option<LeaseKey>,
    /// Every leased subnet of either family, ours included.
    pub leased: Option<&'a BTreeSet<IpNet>>,
    /// Our subnets at the previous pass that we no longer hold: their routes to us go.
    pub retired: Vec<IpNet>,
    pub lead: bool,
    /// What the leader last read from the cloud and shares through the store (never given to
    /// the leader itself): a provider may decide from it instead of asking the cloud again.
    pub shared: Option<&'a str>,
}

/// Why a pass fell short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A route table (or project quota) has no room for our route. With overflow on, peers
    /// reach us over vxlan instead: not a readiness problem.
    NoRoom(String),
    Failed(String),
}

impl Problem {
    fn message(&self) -> &str {
        match self {
            Problem::NoRoom(m) | Problem::Failed(m) => m,
        }
    }
}

/// What a pass found and could not do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    pub problems: Vec<Problem>,
    /// The peer subnets (either family) our own route table(s) send to a host, when the pass
    /// read them.
    pub carried: Option<BTreeSet<IpNet>>,
    /// What a leading pass read from the cloud, for the engine to share with the others.
    pub view: Option<String>,
}

impl Pass {
    pub fn failed(message: impl Into<String>) -> Pass {
        Pass { problems: vec![Problem::Failed(message.into())], ..Pass::default() }
    }
}

/// A cloud's route API as the engine drives it.
#[async_trait]
pub trait Provider: Send + 'static {
    fn kind(&self) -> BackendKind;
    /// This node's name in the cleanup leadership (its instance).
    fn holder(&self) -> String;
    /// Puts our route where it belongs and, when `input.lead`, removes what is provably stale
    /// (candidates go through a [`super::StaleTracker`] of the provider's own).
    async fn pass(&mut self, input: &PassInput<'_>) -> Pass;
    /// Leadership went to someone else: forget what was suspected stale.
    fn lost_leadership(&mut self) {}
    /// Removes our routes for `own`'s subnets wherever they still point at us.
    async fn teardown(&mut self, own: LeaseKey) -> Result<(), String>;
}

/// How the engine runs, from the backend's config and the agent.
#[derive(Clone)]
pub struct Settings {
    pub recheck: Duration,
    /// `overflow = "vxlan"`: peers without a cloud route are reached over vxlan.
    pub overflow: bool,
    pub store: Arc<dyn Leadership>,
    pub health: Arc<Health>,
    pub paths: CloudPaths,
}

impl Settings {
    fn lead_ttl(&self) -> Duration {
        self.recheck.saturating_mul(LEAD_TURN_RECHECKS).max(MIN_LEAD_TTL)
    }
}

/// A pass's outcome as `/readyz` shows it: `Err` carries the cloud condition's problem.
pub type Outcome = Result<(), String>;

/// A provider and its engine state; runs until cancelled and hands the provider back.
pub struct Engine<P> {
    provider: P,
    settings: Settings,
    leading: bool,
    last_own: Option<LeaseKey>,
    outcomes: watch::Sender<Outcome>,
}

impl<P: Provider> Engine<P> {
    /// The engine and where each pass's outcome is told.
    pub fn new(provider: P, settings: Settings) -> (Self, watch::Receiver<Outcome>) {
        let (outcomes, receiver) = watch::channel(Ok(()));
        (Engine { provider, settings, leading: false, last_own: None, outcomes }, receiver)
    }

    /// The leadership's name in the store (`aws-vpc-routes`, `gce-routes`: as before the engine).
    fn leadership(&self) -> String {
        format!("{}-routes", self.provider.kind())
    }

    /// Serves requests until `cancel` (checked between passes, never in the middle of one): a
    /// pass for each new request, one every `recheck` without, a failed one retried sooner.
    pub async fn run(mut self, mut requests: watch::Receiver<Option<Request>>, cancel: CancellationToken) -> P {
        let mut retry = Backoff::exponential(FIRST_RETRY, self.settings.recheck.max(FIRST_RETRY));
        let mut next: Option<Instant> = None;
        loop {
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return self.provider,
                changed = requests.changed() => if changed.is_err() { return self.provider },
                _ = due => {}
            }
            let Some(request) = requests.borrow_and_update().clone() else { continue };
            let ok = self.pass(&request).await;
            let pause = if ok {
                retry.reset();
                self.settings.recheck
            } else {
                retry.step()
            };
            next = Some(Instant::now() + pause);
        }
    }

    /// One pass, its outcome published; whether it did all it should.
    pub async fn pass(&mut self, request: &Request) -> bool {
        let lead = match (&request.own, &request.leased) {
            (Some(_), Some(_)) => self.lead().await,
            _ => false,
        };
        let retired = retired(self.last_own, request.own);
        let shared = if lead { None } else { self.shared_view().await };
        let leased: Option<BTreeSet<IpNet>> =
            request.leased.as_ref().map(|keys| keys.iter().flat_map(LeaseKey::subnets).collect());
        let input = PassInput { own: request.own, leased: leased.as_ref(), retired, lead, shared: shared.as_deref() };
        let pass = self.provider.pass(&input).await;
        if request.own.is_some() {
            self.last_own = request.own;
        }
        if let (true, Some(view)) = (lead, &pass.view) {
            self.share_view(view).await;
        }
        self.publish(request, &pass)
    }

    /// The leader's view, if the store holds a fresh one; a store error means "ask the cloud".
    /// (`&mut self`, as [`Self::lead`]: the engine is `Send`, not `Sync`.)
    async fn shared_view(&mut self) -> Option<String> {
        let name = self.leadership();
        match self.settings.store.shared_view(&name).await {
            Ok(view) => view,
            Err(e) => {
                debug!(error = %e, leadership = %name, "shared cloud view unavailable; asking the cloud");
                None
            }
        }
    }

    /// Shares what this leading pass read, for as long as a leadership turn lasts: a leader that
    /// dies leaves nothing stale behind for longer than its turn.
    async fn share_view(&mut self, view: &str) {
        let name = self.leadership();
        let holder = self.provider.holder();
        match self.settings.store.share_view(&name, &holder, view, self.settings.lead_ttl()).await {
            Ok(shared) => debug!(leadership = %name, shared, bytes = view.len(), "cloud view shared"),
            Err(e) => warn!(error = %e, leadership = %name, "sharing the cloud view; the others ask the cloud"),
        }
    }

    /// Readiness, metrics and the paths: what `pass` found, written by this engine alone.
    fn publish(&self, request: &Request, pass: &Pass) -> bool {
        let kind = self.provider.kind();
        let counts = |p: &&Problem| !(self.settings.overflow && matches!(p, Problem::NoRoom(_)));
        let problems: Vec<&str> = pass.problems.iter().filter(counts).map(Problem::message).collect();
        let failed = pass.problems.iter().any(|p| matches!(p, Problem::Failed(_)));
        let problem = match (&request.own, problems.is_empty()) {
            (None, _) => Some(format!(
                "{kind}: our lease ran out while the store could not be reached; our route is not asserted until we hold one again"
            )),
            (Some(_), true) => None,
            (Some(_), false) => Some(format!("{kind}: {}", problems.join("; "))),
        };
        match &problem {
            None => debug!(backend = %kind, "cloud routes checked"),
            Some(problem) => warn!(%problem, "cloud routes"),
        }
        self.settings.health.set(Condition::Cloud, problem.clone());
        let _previous = self.outcomes.send_replace(problem.map_or(Ok(()), Err));
        if let Some(carried) = &pass.carried {
            self.settings.paths.publish(carried.clone());
        }
        if let Some(leased) = &request.leased {
            self.count_paths(request.own, leased);
        }
        !failed
    }

    /// `weft_peers{path}`: peers the cloud carries, and (with overflow) those reached over vxlan.
    fn count_paths(&self, own: Option<LeaseKey>, leased: &BTreeSet<LeaseKey>) {
        // Told apart by their ids: on an IPv6-only network every key's IPv4 half is `None`.
        let peers = leased.iter().filter(|key| own.is_none_or(|own| own.id() != key.id()));
        let (mut cloud, mut overlay) = (0, 0);
        for key in peers {
            if self.settings.paths.carries_all(key) {
                cloud += 1;
            } else {
                overlay += 1;
            }
        }
        let gauge = |path: &str| {
            self.settings.health.metrics.peers_by_path.get_or_create(&PathLabels { path: path.into() }).clone()
        };
        gauge("cloud").set(cloud);
        if self.settings.overflow {
            gauge("overlay").set(overlay);
        }
    }

    /// Takes or keeps the cleanup leadership; a store error means "not now".
    async fn lead(&mut self) -> bool {
        let name = self.leadership();
        let holder = self.provider.holder();
        let lead = match self.settings.store.lead(&name, &holder, self.settings.lead_ttl()).await {
            Ok(lead) => lead,
            Err(e) => {
                warn!(error = %e, leadership = %name, "cloud route cleanup: store unavailable; not cleaning up this time");
                false
            }
        };
        if lead != self.leading {
            if lead {
                info!(leadership = %name, %holder, "leading the removal of stale cloud routes");
            } else {
                info!(leadership = %name, "another agent removes stale cloud routes now");
            }
        }
        if !lead {
            self.provider.lost_leadership();
        }
        self.leading = lead;
        lead
    }
}

/// Our subnets of the previous pass that the current request no longer holds.
fn retired(previous: Option<LeaseKey>, current: Option<LeaseKey>) -> Vec<IpNet> {
    let current: Vec<IpNet> = current.iter().flat_map(LeaseKey::subnets).collect();
    previous.iter().flat_map(LeaseKey::subnets).filter(|subnet| !current.contains(subnet)).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::local::LocalStore;

    /// What the fake provider was asked, and what its next passes answer.
    #[derive(Default)]
    struct Script {
        inputs: Vec<(Option<LeaseKey>, bool)>,
        /// The shared view each pass was given.
        shared: Vec<Option<String>>,
        answers: Vec<Pass>,
    }

    struct Fake {
        script: Arc<Mutex<Script>>,
        holder: &'static str,
    }

    #[async_trait]
    impl Provider for Fake {
        fn kind(&self) -> BackendKind {
            BackendKind::AwsVpc
        }
        fn holder(&self) -> String {
            self.holder.into()
        }
        async fn pass(&mut self, input: &PassInput<'_>) -> Pass {
            let mut script = self.script.lock().unwrap();
            script.inputs.push((input.own, input.lead));
            script.shared.push(input.shared.map(str::to_string));
            if script.answers.is_empty() {
                Pass::default()
            } else {
                script.answers.remove(0)
            }
        }
        async fn teardown(&mut self, _own: LeaseKey) -> Result<(), String> {
            Ok(())
        }
    }

    fn net(s: &str) -> LeaseKey {
        LeaseKey::from(s.parse::<ipnet::Ipv4Net>().unwrap())
    }

    fn subnet(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    struct Rig {
        script: Arc<Mutex<Script>>,
        settings: Settings,
        _dir: tempfile::TempDir,
    }

    fn rig(overflow: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        rig_on(overflow, Arc::new(LocalStore::open(dir.path()).unwrap()), dir)
    }

    fn rig_on(overflow: bool, store: Arc<dyn Leadership>, dir: tempfile::TempDir) -> Rig {
        let settings = Settings {
            recheck: Duration::from_secs(10),
            overflow,
            store,
            health: Arc::new(Health::default()),
            paths: CloudPaths::default(),
        };
        Rig { script: Default::default(), settings, _dir: dir }
    }

    impl Rig {
        fn engine(&self, holder: &'static str) -> (Engine<Fake>, watch::Receiver<Outcome>) {
            Engine::new(Fake { script: self.script.clone(), holder }, self.settings.clone())
        }
        fn passes(&self) -> usize {
            self.script.lock().unwrap().inputs.len()
        }
        fn answer(&self, pass: Pass) {
            self.script.lock().unwrap().answers.push(pass);
        }
    }

    fn request(own: &str, leased: &[&str]) -> Request {
        Request { own: Some(net(own)), leased: Some(leased.iter().map(|s| net(s)).collect()) }
    }

    /// Without any new request, a pass runs every `recheck`: stale routes go within a few rechecks
    /// of start even when the agent has nothing new to say (the bug: passes ran only when the agent
    /// asked, on its 60 s resync).
    #[tokio::test(start_paused = true)]
    async fn passes_every_recheck_without_being_asked() {
        let rig = rig(false);
        let (engine, _outcomes) = rig.engine("i-1");
        let (tx, rx) = watch::channel(Some(request("10.244.1.0/24", &["10.244.1.0/24"])));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(engine.run(rx, cancel.clone()));
        // The first request was there before the engine: it waits for the next one or the timer.
        tx.send_modify(|_| {});
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(rig.passes(), 1);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(rig.passes(), 4, "one pass per 10 s recheck");
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_pass_is_retried_before_the_recheck() {
        let rig = rig(false);
        rig.answer(Pass::failed("throttled"));
        let (engine, mut outcomes) = rig.engine("i-1");
        let (tx, rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(engine.run(rx, cancel.clone()));
        tx.send_replace(Some(request("10.244.1.0/24", &[])));
        outcomes.changed().await.unwrap();
        assert_eq!(outcomes.borrow_and_update().clone(), Err("aws-vpc: throttled".into()));
        // The retry comes after 1 s at the earliest and well before the 10 s recheck.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(rig.passes(), 1);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(rig.passes(), 2);
        assert_eq!(*outcomes.borrow(), Ok(()));
        assert_eq!(rig.settings.health.readiness().problem(Condition::Cloud), None);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn no_room_is_a_problem_only_without_overflow() {
        for overflow in [false, true] {
            let rig = rig(overflow);
            let carried: BTreeSet<IpNet> = [subnet("10.244.2.0/24")].into();
            rig.answer(Pass {
                problems: vec![Problem::NoRoom("rtb-a is full".into())],
                carried: Some(carried.clone()),
                view: None,
            });
            let (mut engine, _) = rig.engine("i-1");
            let ok = engine.pass(&request("10.244.1.0/24", &["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"])).await;
            assert!(ok, "no room is not retried sooner: only a recheck can free a slot");
            let problem = rig.settings.health.readiness().problem(Condition::Cloud).map(str::to_string);
            if overflow {
                assert_eq!(problem, None);
            } else {
                assert_eq!(problem.as_deref(), Some("aws-vpc: rtb-a is full"));
            }
            assert!(rig.settings.paths.carries(subnet("10.244.2.0/24")));
            let metrics = rig.settings.health.metrics.encode();
            assert!(metrics.contains(r#"weft_peers{path="cloud"} 1"#), "{metrics}");
            assert_eq!(metrics.contains(r#"weft_peers{path="overlay"} 1"#), overflow, "{metrics}");
        }
    }

    /// IPv6-only: every key's IPv4 half is `None`, so the peers are told from us by their IPv6
    /// subnets (the bug: all of them were taken for ourselves, `weft_peers{path="cloud"} 0`).
    #[tokio::test]
    async fn ipv6_only_peers_are_counted() {
        let rig = rig(true);
        let key = |s: &str| LeaseKey::ipv6_only(s.parse().unwrap());
        let carried: BTreeSet<IpNet> = [subnet("2001:db8:42:2::/64")].into();
        rig.answer(Pass { problems: vec![], carried: Some(carried), view: None });
        let (mut engine, _) = rig.engine("i-1");
        let leased = ["2001:db8:42:1::/64", "2001:db8:42:2::/64", "2001:db8:42:3::/64"].map(key).into();
        engine.pass(&Request { own: Some(key("2001:db8:42:1::/64")), leased: Some(leased) }).await;
        let metrics = rig.settings.health.metrics.encode();
        assert!(metrics.contains(r#"weft_peers{path="cloud"} 1"#), "{metrics}");
        assert!(metrics.contains(r#"weft_peers{path="overlay"} 1"#), "{metrics}");
    }

    #[test]
    fn only_subnets_we_no_longer_hold_are_retired() {
        let dual =
            |v4: &str, v6: &str| LeaseKey { subnet: Some(v4.parse().unwrap()), subnet_v6: Some(v6.parse().unwrap()) };
        let before = dual("10.244.1.0/24", "2001:db8:42:1::/64");
        assert_eq!(retired(Some(before), Some(before)), []);
        assert_eq!(retired(None, Some(before)), []);
        assert_eq!(
            retired(Some(before), Some(net("10.244.1.0/24"))),
            [subnet("2001:db8:42:1::/64")],
            "IPv6 turned off"
        );
        let moved = dual("10.244.2.0/24", "2001:db8:42:1::/64");
        assert_eq!(retired(Some(before), Some(moved)), [subnet("10.244.1.0/24")]);
        assert_eq!(retired(Some(before), None).len(), 2, "lapsed: nothing is ours");
    }

    #[tokio::test]
    async fn a_lapsed_lease_asserts_nothing_and_says_so() {
        let rig = rig(false);
        let (mut engine, _) = rig.engine("i-1");
        engine.pass(&request("10.244.1.0/24", &["10.244.1.0/24"])).await;
        let lapsed = Request { own: None, leased: Some([net("10.244.1.0/24")].into()) };
        engine.pass(&lapsed).await;
        let inputs = rig.script.lock().unwrap().inputs.clone();
        assert_eq!(inputs, [(Some(net("10.244.1.0/24")), true), (None, false)], "no route, no cleanup");
        let problem = rig.settings.health.readiness().problem(Condition::Cloud).unwrap().to_string();
        assert!(problem.contains("lease ran out"), "{problem}");
        engine.pass(&request("10.244.1.0/24", &["10.244.1.0/24"])).await;
        assert_eq!(rig.settings.health.readiness().problem(Condition::Cloud), None);
    }

    #[tokio::test]
    async fn one_leader_at_a_time_and_only_with_the_leases_known() {
        let rig = rig(false);
        let (mut first, _) = rig.engine("i-1");
        let (mut second, _) = rig.engine("i-2");
        first.pass(&Request { own: Some(net("10.244.1.0/24")), leased: None }).await;
        first.pass(&request("10.244.1.0/24", &[])).await;
        second.pass(&request("10.244.2.0/24", &[])).await;
        let leads: Vec<bool> = rig.script.lock().unwrap().inputs.iter().map(|(_, lead)| *lead).collect();
        assert_eq!(leads, [false, true, false]);
    }

    /// The leader's reading of the cloud reaches the others through the store, so that only one
    /// agent asks the cloud in the steady state; the leader itself always asks.
    #[tokio::test]
    async fn the_leader_shares_what_it_read_and_the_others_get_it() {
        let store = Arc::new(crate::store::memory::MemoryStore::new());
        let rig = rig_on(false, store, tempfile::tempdir().unwrap());
        let (mut leader, _) = rig.engine("i-1");
        let (mut follower, _) = rig.engine("i-2");
        rig.answer(Pass { view: Some("tables as i-1 read them".into()), ..Pass::default() });
        leader.pass(&request("10.244.1.0/24", &["10.244.1.0/24", "10.244.2.0/24"])).await;
        follower.pass(&request("10.244.2.0/24", &["10.244.1.0/24", "10.244.2.0/24"])).await;
        rig.answer(Pass { view: Some("newer".into()), ..Pass::default() });
        leader.pass(&request("10.244.1.0/24", &["10.244.1.0/24", "10.244.2.0/24"])).await;
        follower.pass(&request("10.244.2.0/24", &["10.244.1.0/24", "10.244.2.0/24"])).await;
        let script = rig.script.lock().unwrap();
        let leads: Vec<bool> = script.inputs.iter().map(|(_, lead)| *lead).collect();
        assert_eq!(leads, [true, false, true, false]);
        let shared: Vec<Option<&str>> = script.shared.iter().map(Option::as_deref).collect();
        assert_eq!(shared, [None, Some("tables as i-1 read them"), None, Some("newer")]);
    }
}
