//! The host's data plane: the backend's whole life (prepared, started, active, retired), backends
//! being retired after a switch, and the one route-sync engine that installs every peer's kernel
//! objects by the peer's backend type.
//!
//! A switch (say vxlan → host-gw) starts the new backend beside the old one. Each peer moves when
//! its lease shows the new type — its route replaced in place — and the old backend is torn down
//! (its device, its cloud route) once no peer has used it for [`RETIRE_GRACE`].
//!
//! The agent sees a backend only as the lease data it publishes: [`Prepared`] and [`Ready`] are
//! opaque, and each step consumes the previous one, so the order cannot go wrong.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backend::peer_trust::PeerTrust;
use crate::backend::route_sync::{PeerObjects, RouteSync};
use crate::backend::{
    self, Active, BackendContext, BackendError, BackendKind, LeaseData, PeerMapping, Registered, StartFailed, Started,
};
use crate::health::PeerRejectedLabels;
use crate::kernel::{Conflict, Kernel, KernelState};
use crate::lease::{Lease, LeaseKey, LeaseMap};
use crate::watch::LeaseEvent;

/// The peer mapping of a backend that installs nothing in the kernel.
struct NoObjects;

impl PeerObjects for NoObjects {
    fn objects(&self, _lease: &Lease) -> Result<KernelState, String> {
        Ok(KernelState::default())
    }
}

/// Why peers must be installed again without a lease event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Someone changed what weft owns in the kernel: repair everything.
    Kernel,
    /// The cloud started or stopped carrying some peers (overflow): map those again.
    Paths,
}

pub type KernelFactory = Box<dyn Fn() -> Result<Arc<dyn Kernel>, BackendError> + Send + Sync>;

/// How long a retiring backend stays after its last peer moved: peers may still send to us the
/// old way until they have seen our own lease change.
pub const RETIRE_GRACE: Duration = Duration::from_secs(3);

/// A backend set up on the host, not started: what it would publish in our lease.
pub struct Prepared {
    backend: Box<dyn Registered>,
}

impl Prepared {
    pub fn lease_data(&self) -> &LeaseData {
        self.backend.lease_data()
    }
}

/// A started backend, not yet the active one: peers are not installed through it yet.
pub struct Ready {
    backend: Box<dyn Active>,
    peers: Option<PeerMapping>,
}

impl Ready {
    pub fn lease_data(&self) -> &LeaseData {
        self.backend.lease_data()
    }
}

/// A backend serving peers, and the devices the route-sync engine manages for it.
struct Live {
    backend: Box<dyn Active>,
    links: Vec<u32>,
    /// Retiring: since when no peer uses it.
    unused_since: Option<Instant>,
}

/// The data plane at a glance (`weft status`), as of the last sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneView {
    pub active: Option<BackendKind>,
    pub retiring: Vec<BackendKind>,
    /// Peers the kernel backends installed objects for.
    pub kernel_peers: usize,
    /// weft's kernel objects the peers want, and how many of them are in (wanted less the
    /// operations the kernel refused).
    pub wanted: usize,
    pub installed: usize,
}

pub struct Dataplane {
    kernel_factory: KernelFactory,
    kernel: Option<Arc<dyn Kernel>>,
    sync: Option<RouteSync>,
    active: Option<Live>,
    retiring: Vec<Live>,
    /// Whose public IPs peers' objects may point at, for the engine once it exists.
    trust: (PeerTrust, Family<PeerRejectedLabels, Counter>),
    /// Kernel changes made by someone else to what weft owns. In a mutex only to make the data
    /// plane `Sync`; it is only ever used through `&mut self` (`get_mut`, no locking).
    changes: std::sync::Mutex<Option<BoxStream<'static, ()>>>,
    /// The active backend's word on peers to map again (which peers the cloud carries), with
    /// what it said last.
    remap: Option<(watch::Receiver<BTreeSet<IpNet>>, BTreeSet<IpNet>)>,
}

impl Dataplane {
    pub fn new(kernel_factory: KernelFactory) -> Self {
        Dataplane {
            kernel_factory,
            kernel: None,
            sync: None,
            active: None,
            retiring: Vec::new(),
            trust: Default::default(),
            changes: Default::default(),
            remap: None,
        }
    }

    /// Peers are installed only towards public IPs `trust` accepts; refusals are counted in
    /// `rejected_total` (the agent's `weft_peers_rejected_total`).
    pub fn trust_peers(&mut self, trust: PeerTrust, rejected_total: Family<PeerRejectedLabels, Counter>) {
        if let Some(sync) = &mut self.sync {
            sync.set_trust(trust.clone(), rejected_total.clone());
        }
        self.trust = (trust, rejected_total);
    }

    /// A data plane on this process's network namespace, through netlink.
    pub fn netlink() -> Self {
        Dataplane::new(Box::new(|| {
            let kernel =
                crate::kernel::netlink::NetlinkKernel::new().map_err(|e| BackendError::kernel("opening netlink", e))?;
            Ok(Arc::new(kernel) as Arc<dyn Kernel>)
        }))
    }

    /// One kernel connection and one route-sync engine for every backend, opened when the first
    /// kernel backend needs them.
    fn kernel(&mut self) -> Result<Arc<dyn Kernel>, BackendError> {
        if let Some(kernel) = &self.kernel {
            return Ok(kernel.clone());
        }
        let kernel = (self.kernel_factory)()?;
        self.kernel = Some(kernel.clone());
        let mut sync = RouteSync::new(kernel.clone());
        sync.set_trust(self.trust.0.clone(), self.trust.1.clone());
        self.sync = Some(sync);
        Ok(kernel)
    }

    /// Builds the backend the network asks for and sets the host up for it.
    pub async fn prepare(&mut self, ctx: &BackendContext) -> Result<Prepared, BackendError> {
        let backend = backend::create(ctx, || self.kernel())?;
        Ok(Prepared { backend: backend.register().await? })
    }

    /// Starts `prepared` on our lease, beside the active backend. On failure what it set up is
    /// removed again.
    pub async fn start(&mut self, prepared: Prepared, own: &Lease) -> Result<Ready, BackendError> {
        match prepared.backend.start(own).await {
            Ok(Started { backend, peers }) => Ok(Ready { backend, peers }),
            Err(StartFailed { error, backend }) => {
                self.discard(Prepared { backend }).await;
                Err(error)
            }
        }
    }

    /// Makes `ready` the active backend. A previously active backend of another kind keeps
    /// serving the peers still on it until none is left.
    pub async fn activate(&mut self, ready: Ready) {
        let kind = ready.backend.kind();
        let links = ready.peers.as_ref().map(|m| m.links.clone()).unwrap_or_default();
        let mut peers = ready.peers;
        self.remap = peers.as_mut().and_then(|m| m.remap.take()).map(|mut rx| {
            let seen = rx.borrow_and_update().clone();
            (rx, seen)
        });
        if let Some(sync) = &mut self.sync {
            match peers {
                Some(mapping) => sync.add_mapper(kind, mapping.mapper, &mapping.links),
                // A backend without kernel objects (the cloud routes traffic: aws-vpc, gce) after
                // one with: a peer on it needs none here. Without this mapper its old backend's
                // objects would be kept as for a type we do not run yet — for good.
                None => sync.add_mapper(kind, Box::new(NoObjects), &[]),
            }
        }
        let live = Live { backend: ready.backend, links, unused_since: None };
        if let Some(previous) = self.active.replace(live) {
            self.retire(previous).await;
        }
        // Back to a kind still retiring (a switch undone within the grace): the new backend
        // replaces it as a new one of the same kind does. Retired later, it would take the new
        // one's mapper (and devices) with it.
        while let Some(at) = self.retiring.iter().position(|r| r.backend.kind() == kind) {
            let old = self.retiring.remove(at);
            self.replace_same_kind(old).await;
        }
        self.follow_kernel_changes();
    }

    /// Undoes a prepared backend that will not be started (a switch that did not go through).
    pub async fn discard(&mut self, prepared: Prepared) {
        let (kind, links) = (prepared.backend.kind(), prepared.backend.links());
        if self.shares_everything(kind, &links) {
            return;
        }
        if let Err(e) = prepared.backend.abandon().await {
            warn!(backend = %kind, error = %e, "removing the backend that was not started");
        }
    }

    /// Stops a started backend that never became active (a switch rolled back).
    pub async fn stop(&mut self, ready: Ready) {
        let kind = ready.backend.kind();
        let links = ready.peers.map(|m| m.links).unwrap_or_default();
        if self.shares_everything(kind, &links) {
            return;
        }
        if let Err(e) = ready.backend.teardown().await {
            warn!(backend = %kind, error = %e, "removing the backend that was not activated");
        }
    }

    /// Whether a live backend of `kind` uses every one of `links`: the candidate made nothing of
    /// its own (the same device, the same cloud route), so removing it would break the live one.
    fn shares_everything(&self, kind: BackendKind, links: &[u32]) -> bool {
        let mut live = self.active.iter().chain(&self.retiring);
        live.any(|l| l.backend.kind() == kind && links.iter().all(|link| l.links.contains(link)))
    }

    /// (Re)subscribes to kernel changes for what we own now (devices come and go on a switch).
    fn follow_kernel_changes(&mut self) {
        let changes = match (&self.kernel, &self.sync) {
            (Some(kernel), Some(sync)) => kernel.change_notifications(sync.ownership().clone()),
            _ => None,
        };
        *self.changes.get_mut().unwrap_or_else(|e| e.into_inner()) = changes;
    }

    /// The next thing that asks for peers to be installed again without a lease event.
    pub async fn next_change(&mut self) -> Change {
        let Dataplane { changes, remap, .. } = self;
        tokio::select! {
            _ = Self::kernel_change(changes) => Change::Kernel,
            _ = Self::remap_due(remap) => Change::Paths,
        }
    }

    /// Resolves when the kernel changed under us (a route deleted by hand); never without a kernel.
    async fn kernel_change(changes: &mut std::sync::Mutex<Option<BoxStream<'static, ()>>>) {
        let slot = changes.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(changes) = slot else {
            return std::future::pending().await;
        };
        if changes.next().await.is_none() {
            *slot = None;
            std::future::pending::<()>().await;
        }
    }

    /// Resolves when the active backend changed its mind about some peers' mapping; never for a
    /// backend without such a say.
    async fn remap_due(remap: &mut Option<(watch::Receiver<BTreeSet<IpNet>>, BTreeSet<IpNet>)>) {
        let Some((rx, _)) = remap else {
            return std::future::pending().await;
        };
        if rx.changed().await.is_err() {
            *remap = None;
            std::future::pending::<()>().await;
        }
    }

    /// Maps again the peers whose path changed since the last call (a cloud route came or went).
    pub async fn remap(&mut self, peers: &LeaseMap) -> Result<(), BackendError> {
        let Some((rx, seen)) = &mut self.remap else { return Ok(()) };
        let now = rx.borrow_and_update().clone();
        let events: Vec<LeaseEvent> =
            crate::backend::cloud_paths_changed(seen, &now, peers).into_iter().map(LeaseEvent::Changed).collect();
        *seen = now;
        if events.is_empty() {
            return Ok(());
        }
        info!(peers = events.len(), "peers changed path (cloud route came or went)");
        match &mut self.sync {
            Some(sync) => sync.on_events(peers, &events).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Our lease ran out while cut off from the store: every live backend hears of it.
    pub fn own_lease_lapsed(&mut self) {
        for live in self.active.iter_mut().chain(self.retiring.iter_mut()) {
            live.backend.own_lease_lapsed();
        }
    }

    /// What `/status` shows of the data plane.
    pub fn status_view(&self) -> DataplaneView {
        let (kernel_peers, wanted, failed) = match &self.sync {
            Some(sync) => {
                let (peers, objects) = sync.counts();
                (peers, objects, sync.last_failed())
            }
            None => (0, 0, 0),
        };
        DataplaneView {
            active: self.active_kind(),
            retiring: self.retiring_kinds(),
            kernel_peers,
            wanted,
            installed: wanted.saturating_sub(failed),
        }
    }

    pub fn active_kind(&self) -> Option<BackendKind> {
        self.active.as_ref().map(|s| s.backend.kind())
    }

    /// The kinds still serving peers that have not moved to the active one.
    pub fn retiring_kinds(&self) -> Vec<BackendKind> {
        self.retiring.iter().map(|r| r.backend.kind()).collect()
    }

    async fn retire(&mut self, previous: Live) {
        let new_kind = self.active_kind();
        if new_kind == Some(previous.backend.kind()) {
            self.replace_same_kind(previous).await;
            return;
        }
        info!(from = %previous.backend.kind(), to = ?new_kind.map(BackendKind::as_str), "switching backend: peers move as their leases change");
        self.retiring.push(previous);
    }

    /// `previous` is of the active backend's kind, with other options (a VNI, direct routing):
    /// the new mapping replaced the old one; only a device the new one does not use goes away.
    async fn replace_same_kind(&mut self, previous: Live) {
        let active_links = self.active.as_ref().map(|a| a.links.clone()).unwrap_or_default();
        let stale: Vec<u32> = previous.links.iter().copied().filter(|l| !active_links.contains(l)).collect();
        if !stale.is_empty() {
            self.tear_down(previous, &stale).await;
        }
    }

    async fn tear_down(&mut self, old: Live, links: &[u32]) {
        if let Some(sync) = &mut self.sync {
            sync.forget_links(links);
        }
        let kind = old.backend.kind();
        match old.backend.teardown().await {
            Ok(()) => info!(backend = %kind, "old backend removed"),
            Err(e) => warn!(backend = %kind, error = %e, "removing the old backend"),
        }
        self.follow_kernel_changes();
    }

    /// When the next retiring backend's grace runs out; `None` while every retiring backend
    /// still has peers (or there is none). The agent calls [`Dataplane::retire_unused`] then.
    pub fn retirement_due(&self) -> Option<Instant> {
        self.retiring.iter().filter_map(|r| r.unused_since).map(|since| since + RETIRE_GRACE).min()
    }

    /// Retires old backends no peer has used for [`RETIRE_GRACE`].
    pub async fn retire_unused(&mut self, peers: &LeaseMap) {
        let mut i = 0;
        while i < self.retiring.len() {
            let kind = self.retiring[i].backend.kind();
            let unused_since = if peers.values().any(|l| l.attrs.backend_type == kind.as_str()) {
                None
            } else {
                Some(self.retiring[i].unused_since.unwrap_or_else(Instant::now))
            };
            self.retiring[i].unused_since = unused_since;
            if unused_since.is_none_or(|since| since.elapsed() < RETIRE_GRACE) {
                i += 1;
                continue;
            }
            let old = self.retiring.remove(i);
            if let Some(sync) = &mut self.sync {
                sync.remove_mapper(kind);
            }
            let links = old.links.clone();
            self.tear_down(old, &links).await;
        }
    }

    /// Peers changed: install, replace and remove their kernel objects.
    pub async fn apply(&mut self, peers: &LeaseMap, events: &[LeaseEvent]) -> Result<(), BackendError> {
        let result = match &mut self.sync {
            Some(sync) => sync.on_events(peers, events).await.map(|_| ()),
            None => Ok(()),
        };
        self.retire_unused(peers).await;
        result
    }

    /// Full repair pass: the kernel made to match the leases again.
    pub async fn reconcile(&mut self, peers: &LeaseMap) -> Result<(), BackendError> {
        let result = match &mut self.sync {
            Some(sync) => sync.reconcile(peers).await.map(|_| ()),
            None => Ok(()),
        };
        self.retire_unused(peers).await;
        result
    }

    /// Routes and nexthop objects of others that keep peers out of the kernel (weft never
    /// replaces them), as of the last sync.
    pub fn kernel_conflicts(&self) -> Vec<Conflict> {
        self.sync.as_ref().map(|sync| sync.conflicts().copied().collect()).unwrap_or_default()
    }

    /// Our lease moved to another subnet: every live backend follows.
    pub async fn own_lease_changed(&mut self, own: &Lease) -> Result<(), BackendError> {
        for live in self.active.iter_mut().chain(self.retiring.iter_mut()) {
            live.backend.own_lease_changed(own).await?;
        }
        Ok(())
    }

    /// The active backend's own checks (cloud routes); see [`Active::check`].
    pub async fn check(
        &mut self,
        own: &Lease,
        peers: &LeaseMap,
        unreadable: &BTreeSet<LeaseKey>,
        forced: bool,
    ) -> Result<(), BackendError> {
        match &mut self.active {
            Some(active) => {
                active.backend.unreadable_leases(unreadable);
                active.backend.check(own, peers, forced).await
            }
            None => Ok(()),
        }
    }

    /// The next full pass must read the kernel (it changed under us).
    pub fn invalidate(&mut self) {
        if let Some(sync) = &mut self.sync {
            sync.invalidate();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::backend::route_sync::test_support::ViaPublicIp;
    use crate::kernel::memory::MemoryKernel;
    use crate::lease::{Expiry, LeaseAttrs};

    /// What the fake backends did, in order.
    type Journal = Arc<Mutex<Vec<String>>>;

    /// A backend of kind `kind`: with kernel objects (like host-gw) or without (like aws-vpc).
    struct Fake {
        kind: BackendKind,
        kernel: bool,
        data: LeaseData,
        journal: Journal,
        fail_start: bool,
    }

    fn fake_failing(kind: BackendKind, kernel: bool, journal: &Journal, fail_start: bool) -> Prepared {
        let data = LeaseData::plain(kind, 1500);
        Prepared { backend: Box::new(Fake { kind, kernel, data, journal: journal.clone(), fail_start }) }
    }

    impl Fake {
        fn note(&self, what: &str) {
            self.journal.lock().unwrap().push(format!("{what} {}", self.kind));
        }
    }

    #[async_trait]
    impl Registered for Fake {
        fn lease_data(&self) -> &LeaseData {
            &self.data
        }

        async fn start(self: Box<Self>, _own: &Lease) -> Result<Started, StartFailed> {
            if self.fail_start {
                let error = BackendError::Config { backend: self.kind, problem: "refused by test".into() };
                return Err(StartFailed { error, backend: self });
            }
            self.note("start");
            let peers =
                self.kernel.then(|| PeerMapping { mapper: Box::new(ViaPublicIp), links: Vec::new(), remap: None });
            Ok(Started { backend: self, peers })
        }

        async fn abandon(self: Box<Self>) -> Result<(), BackendError> {
            self.note("abandon");
            Ok(())
        }
    }

    #[async_trait]
    impl Active for Fake {
        fn lease_data(&self) -> &LeaseData {
            &self.data
        }

        async fn teardown(self: Box<Self>) -> Result<(), BackendError> {
            self.note("teardown");
            Ok(())
        }
    }

    fn lease(subnet: &str, backend: BackendKind) -> Lease {
        Lease {
            subnet: Some(subnet.parse().unwrap()),
            subnet_v6: None,
            attrs: LeaseAttrs::new("198.51.100.2".parse().unwrap(), backend.as_str(), serde_json::Value::Null),
            expiry: Expiry::Unknown,
        }
    }

    /// A data plane on a memory kernel, its fakes' journal, and our lease.
    struct Rig {
        kernel: Arc<MemoryKernel>,
        journal: Journal,
        dataplane: Dataplane,
        own: Lease,
    }

    impl Rig {
        /// Running `kind` (with kernel objects or not), with one peer on it installed.
        async fn running(kind: BackendKind, kernel_objects: bool) -> (Rig, Lease) {
            let kernel = Arc::new(MemoryKernel::default());
            let factory = kernel.clone();
            let mut dataplane = Dataplane::new(Box::new(move || Ok(factory.clone() as Arc<dyn Kernel>)));
            dataplane.kernel().unwrap();
            let own = lease("10.244.1.0/24", kind);
            let mut rig = Rig { kernel, journal: Journal::default(), dataplane, own };
            rig.switch_to(kind, kernel_objects).await;
            let peer = lease("10.244.2.0/24", kind);
            rig.dataplane.reconcile(&[(peer.id(), peer.clone())].into()).await.unwrap();
            (rig, peer)
        }

        fn fake(&self, kind: BackendKind, kernel_objects: bool) -> Prepared {
            fake_failing(kind, kernel_objects, &self.journal, false)
        }

        async fn switch_to(&mut self, kind: BackendKind, kernel_objects: bool) {
            let ready = self.dataplane.start(self.fake(kind, kernel_objects), &self.own).await.unwrap();
            self.dataplane.activate(ready).await;
        }

        fn journal(&self) -> Vec<String> {
            self.journal.lock().unwrap().clone()
        }
    }

    /// Moves the one peer to `backend`.
    async fn peer_moves(dataplane: &mut Dataplane, peer: &mut Lease, backend: BackendKind) -> LeaseMap {
        *peer = lease("10.244.2.0/24", backend);
        let peers: LeaseMap = [(peer.id(), peer.clone())].into();
        dataplane.apply(&peers, &[LeaseEvent::Changed(peer.id())]).await.unwrap();
        peers
    }

    /// Routes a peer through the public IP unless `carried` names it (as overflow does).
    struct UnlessCarried(watch::Receiver<BTreeSet<IpNet>>);

    impl PeerObjects for UnlessCarried {
        fn objects(&self, lease: &Lease) -> Result<KernelState, String> {
            if self.0.borrow().contains(&lease.id()) {
                return Ok(KernelState::default());
            }
            ViaPublicIp.objects(lease)
        }
    }

    struct Remapping(watch::Receiver<BTreeSet<IpNet>>, LeaseData);

    #[async_trait]
    impl Registered for Remapping {
        fn lease_data(&self) -> &LeaseData {
            &self.1
        }
        async fn start(self: Box<Self>, _own: &Lease) -> Result<Started, StartFailed> {
            let mapper = Box::new(UnlessCarried(self.0.clone()));
            let peers = PeerMapping { mapper, links: Vec::new(), remap: Some(self.0.clone()) };
            Ok(Started { backend: Box::new(crate::backend::Passive(self.1.clone())), peers: Some(peers) })
        }
    }

    /// A cloud route came for one peer and went again: only that peer's kernel route follows,
    /// with no lease event, and no other peer is touched.
    #[tokio::test]
    async fn peers_whose_path_changed_are_mapped_again() {
        let kernel = Arc::new(MemoryKernel::default());
        let factory = kernel.clone();
        let mut dataplane = Dataplane::new(Box::new(move || Ok(factory.clone() as Arc<dyn Kernel>)));
        dataplane.kernel().unwrap();
        let (carried, rx) = watch::channel(BTreeSet::new());
        let data = LeaseData::plain(BackendKind::AwsVpc, 1450);
        let own = lease("10.244.1.0/24", BackendKind::AwsVpc);
        let prepared = Prepared { backend: Box::new(Remapping(rx, data)) };
        let ready = dataplane.start(prepared, &own).await.unwrap();
        dataplane.activate(ready).await;
        let (a, b) = (lease("10.244.2.0/24", BackendKind::AwsVpc), lease("10.244.3.0/24", BackendKind::AwsVpc));
        let peers: LeaseMap = [(a.id(), a.clone()), (b.id(), b.clone())].into();
        dataplane.reconcile(&peers).await.unwrap();
        let routes = |k: &MemoryKernel| k.snapshot().routes.keys().map(|r| r.to_string()).collect::<Vec<_>>();
        assert_eq!(routes(&kernel).len(), 2);

        carried.send_replace([a.id()].into());
        assert_eq!(dataplane.next_change().await, Change::Paths);
        dataplane.remap(&peers).await.unwrap();
        let left = routes(&kernel);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].contains("10.244.3.0"), "{left:?}");

        carried.send_replace(BTreeSet::new());
        assert_eq!(dataplane.next_change().await, Change::Paths);
        dataplane.remap(&peers).await.unwrap();
        assert_eq!(routes(&kernel).len(), 2, "back over the kernel path");
    }

    #[tokio::test]
    async fn to_a_backend_without_kernel_objects_and_back() {
        let (mut rig, mut peer) = Rig::running(BackendKind::HostGw, true).await;
        assert_eq!(rig.kernel.snapshot().routes.len(), 1);

        // The peer on the cloud backend we run too: its route goes, now and on every repair.
        rig.switch_to(BackendKind::AwsVpc, false).await;
        let peers = peer_moves(&mut rig.dataplane, &mut peer, BackendKind::AwsVpc).await;
        assert!(rig.kernel.snapshot().routes.is_empty());
        rig.dataplane.reconcile(&peers).await.unwrap();
        assert!(rig.kernel.snapshot().routes.is_empty());

        // Back within the grace: the retiring host-gw is replaced, not retired later with the
        // new one's mapper.
        rig.switch_to(BackendKind::HostGw, true).await;
        assert_eq!(rig.dataplane.retiring_kinds(), [BackendKind::AwsVpc], "only aws-vpc retires");
        let peers = peer_moves(&mut rig.dataplane, &mut peer, BackendKind::HostGw).await;
        assert_eq!(rig.kernel.snapshot().routes.len(), 1);
        rig.dataplane.reconcile(&peers).await.unwrap();
        assert_eq!(rig.kernel.snapshot().routes.len(), 1);
        assert!(rig.dataplane.sync.as_ref().unwrap().handles(BackendKind::HostGw));
    }

    #[tokio::test(start_paused = true)]
    async fn the_old_backend_is_torn_down_a_grace_after_its_last_peer_left_without_more_events() {
        let (mut rig, mut peer) = Rig::running(BackendKind::Vxlan, true).await;
        rig.switch_to(BackendKind::HostGw, true).await;
        assert_eq!(rig.dataplane.retirement_due(), None, "not known to be unused before the peers were looked at");
        // The last peer moves: from then on nothing happens but the clock.
        let peers = peer_moves(&mut rig.dataplane, &mut peer, BackendKind::HostGw).await;
        let due = rig.dataplane.retirement_due().expect("a retirement is due once the last peer left");
        assert_eq!(due.duration_since(Instant::now()), RETIRE_GRACE);
        tokio::time::sleep_until(due).await;
        rig.dataplane.retire_unused(&peers).await;
        assert!(rig.dataplane.retiring_kinds().is_empty());
        assert_eq!(rig.journal(), ["start vxlan", "start host-gw", "teardown vxlan"]);
        assert_eq!(rig.dataplane.retirement_due(), None);
    }

    #[tokio::test]
    async fn a_failed_start_removes_what_was_prepared_and_keeps_the_active_backend() {
        let (mut rig, _) = Rig::running(BackendKind::Vxlan, true).await;
        let failing = fake_failing(BackendKind::HostGw, true, &rig.journal, true);
        assert!(rig.dataplane.start(failing, &rig.own).await.is_err());
        assert_eq!(rig.journal(), ["start vxlan", "abandon host-gw"]);
        assert_eq!(rig.dataplane.active_kind(), Some(BackendKind::Vxlan));
    }

    #[tokio::test]
    async fn a_rolled_back_candidate_of_the_active_kind_leaves_the_active_one_alone() {
        let (mut rig, _) = Rig::running(BackendKind::AwsVpc, false).await;
        // Same kind, other options (say another recheck): its teardown would remove the route the
        // active one keeps.
        let ready = rig.dataplane.start(rig.fake(BackendKind::AwsVpc, false), &rig.own).await.unwrap();
        rig.dataplane.stop(ready).await;
        // Another kind: it goes.
        let ready = rig.dataplane.start(rig.fake(BackendKind::Gce, false), &rig.own).await.unwrap();
        rig.dataplane.stop(ready).await;
        assert_eq!(rig.journal(), ["start aws-vpc", "start aws-vpc", "start gce", "teardown gce"]);
        assert_eq!(rig.dataplane.active_kind(), Some(BackendKind::AwsVpc));
    }
}
