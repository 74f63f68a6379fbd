//! The route-sync engine shared by every backend that programs the kernel: each peer's lease maps
//! to a few kernel objects, by the mapper of the peer's backend type; events change only that
//! peer's objects (fast path), and a periodic full pass diffs everything weft wants against
//! everything it owns in the kernel (repair). Several mappers at once let a cluster move from one
//! backend to another peer by peer, each route replaced in place. A peer whose route would replace
//! a route of someone else (`proto static`...) gets nothing installed: see [`RouteSync::conflicts`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ipnet::Ipv4Net;
use tracing::{debug, info, warn};

use super::{BackendError, BackendKind};
use crate::kernel::{
    diff_all, foreign_conflicts, Conflict, Foreign, Kernel, KernelReading, KernelState, Object, Op, OpFailure,
    Ownership,
};
use crate::lease::{Lease, LeaseMap};
use crate::watch::LeaseEvent;

/// Turns one peer's lease into the kernel objects that make its subnet reachable.
pub trait PeerObjects: Send + Sync {
    /// The objects for `lease`, or why this peer cannot be installed (the others still are).
    fn objects(&self, lease: &Lease) -> Result<KernelState, String>;
}

/// What a sync did, for logs and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub applied: usize,
    pub failed: usize,
}

pub struct RouteSync {
    kernel: Arc<dyn Kernel>,
    ownership: Ownership,
    /// By backend type (`vxlan`, `host-gw`): peers of other types get no kernel objects.
    mappers: Vec<(BackendKind, Box<dyn PeerObjects>)>,
    /// What we installed per peer, as of the last successful sync.
    installed: HashMap<Ipv4Net, PeerEntries>,
    /// False until a full pass has seen the kernel: the first sync must adopt what is there.
    synced: bool,
    /// What of others was in the way at the last full pass; the fast path checks against it.
    foreign: Foreign,
    /// Peers left out because their objects would replace some of someone else's, with those.
    conflicts: BTreeMap<Ipv4Net, Vec<Conflict>>,
}

impl RouteSync {
    pub fn new(kernel: Arc<dyn Kernel>) -> Self {
        RouteSync {
            kernel,
            ownership: Ownership::default(),
            mappers: Vec::new(),
            installed: HashMap::new(),
            synced: false,
            foreign: Foreign::default(),
            conflicts: BTreeMap::new(),
        }
    }

    /// The routes and nexthop objects of others that keep peers out of the kernel, peer by peer:
    /// weft never replaces or deletes them. For readiness and the metrics.
    pub fn conflicts(&self) -> impl Iterator<Item = &Conflict> {
        self.conflicts.values().flatten()
    }

    /// `objects` for the peer on `subnet`, or nothing when one of them would replace an object
    /// of someone else; a conflict is logged when it starts and when it ends, not at
    /// every pass.
    fn admit(&mut self, subnet: Ipv4Net, objects: KernelState) -> KernelState {
        let conflicts = foreign_conflicts(objects.objects(), &self.foreign);
        if conflicts.is_empty() {
            if let Some(ended) = self.conflicts.remove(&subnet) {
                info!(peer = %subnet, ?ended, "what of someone else was in the way is gone; installing this peer");
            }
            return objects;
        }
        if self.conflicts.get(&subnet) != Some(&conflicts) {
            for conflict in &conflicts {
                warn!(peer = %subnet, "{conflict}: another program routes there, so this peer gets nothing installed");
            }
        }
        self.conflicts.insert(subnet, conflicts);
        KernelState::default()
    }

    /// Installs peers of `backend_type` with `mapper`; `links` are devices whose entries it owns.
    pub fn add_mapper(&mut self, backend_type: BackendKind, mapper: Box<dyn PeerObjects>, links: &[u32]) {
        self.remove_mapper(backend_type);
        self.mappers.push((backend_type, mapper));
        self.ownership.links.extend_from_slice(links);
        self.synced = false;
    }

    /// Stops installing peers of `backend_type`; its devices' entries are no longer ours to manage.
    pub fn remove_mapper(&mut self, backend_type: BackendKind) {
        self.mappers.retain(|(t, _)| *t != backend_type);
        self.synced = false;
    }

    /// Forgets the devices in `links` (they are about to be deleted with their entries).
    pub fn forget_links(&mut self, links: &[u32]) {
        self.ownership.links.retain(|l| !links.contains(l));
        self.synced = false;
    }

    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    pub fn handles(&self, backend_type: BackendKind) -> bool {
        self.mappers.iter().any(|(t, _)| *t == backend_type)
    }

    /// The peer's objects by its backend type's mapper; `None` when no mapper here handles that
    /// type (yet).
    fn objects(&self, lease: &Lease) -> Option<Result<KernelState, String>> {
        let (_, mapper) = self.mappers.iter().find(|(t, _)| t.as_str() == lease.attrs.backend_type)?;
        Some(mapper.objects(lease))
    }

    /// Applies lease events: only the peers they name are touched.
    pub async fn on_events(&mut self, peers: &LeaseMap, events: &[LeaseEvent]) -> Result<SyncReport, BackendError> {
        if !self.synced {
            return self.reconcile(peers).await;
        }
        let mut problems = Vec::new();
        let mut ops = Vec::new();
        for event in events {
            let subnet = event.subnet();
            let lease = match event {
                LeaseEvent::Added(_) | LeaseEvent::Changed(_) => peers.get(&subnet),
                LeaseEvent::Removed(_) => None,
            };
            let old = self.installed.remove(&subnet).map(|e| e.state()).unwrap_or_default();
            let new = match lease.map(|l| self.objects(l)) {
                Some(Some(Ok(objects))) => self.admit(subnet, objects),
                Some(Some(Err(problem))) => {
                    problems.push(format!("{subnet}: {problem}"));
                    self.conflicts.remove(&subnet);
                    KernelState::default()
                }
                // A backend type we do not run (yet — a switch reaches peers in any order): what
                // the peer had keeps working until we do.
                Some(None) => self.admit(subnet, old.clone()),
                None => {
                    self.conflicts.remove(&subnet);
                    KernelState::default()
                }
            };
            // `old` is this peer's own copy: the diff consumes it rather than cloning it.
            ops.extend(diff_all(new.objects(), old).ops);
            if !new.is_empty() {
                self.installed.insert(subnet, PeerEntries::of(&new));
            }
        }
        let report = self.apply(&ops).await;
        finish(report, problems)
    }

    /// Makes the kernel match `peers` exactly: adds, replaces, and removes what weft owns and no
    /// longer wants — including leftovers from before a restart.
    pub async fn reconcile(&mut self, peers: &LeaseMap) -> Result<SyncReport, BackendError> {
        let KernelReading { owned: actual, foreign } = self
            .kernel
            .read(&self.ownership)
            .await
            .map_err(|e| BackendError::kernel("reading the kernel's routes", e))?;
        self.foreign = foreign;
        // Conflicts of peers that are gone end with them.
        self.conflicts.retain(|subnet, _| peers.contains_key(subnet));
        let mut problems = Vec::new();
        // What each peer wants, kept for its next event; the plan is made from these directly, with
        // no second picture of the whole kernel.
        let mut per_peer = HashMap::with_capacity(peers.len());
        for lease in peers.values() {
            let objects = match self.objects(lease) {
                Some(Ok(objects)) => objects,
                Some(Err(problem)) => {
                    problems.push(format!("{}: {problem}", lease.subnet));
                    self.conflicts.remove(&lease.subnet);
                    continue;
                }
                None => match self.installed.get(&lease.subnet) {
                    Some(kept) => kept.state(),
                    None => continue,
                },
            };
            let admitted = self.admit(lease.subnet, objects);
            if !admitted.is_empty() {
                per_peer.insert(lease.subnet, PeerEntries::of(&admitted));
            }
        }
        let plan = diff_all(per_peer.values().flat_map(|entries: &PeerEntries| entries.0.iter().copied()), actual);
        if !plan.is_empty() {
            info!(changes = plan.len(), peers = peers.len(), "bringing the kernel in line with the leases");
        }
        self.installed = per_peer;
        let report = self.apply(&plan.ops).await;
        self.synced = report.failed == 0;
        finish(report, problems)
    }

    /// Forgets what was installed: the next sync reads the kernel again.
    pub fn invalidate(&mut self) {
        self.synced = false;
    }

    async fn apply(&mut self, ops: &[Op]) -> SyncReport {
        if ops.is_empty() {
            return SyncReport::default();
        }
        let failures = self.kernel.apply(ops).await;
        for OpFailure { op, error } in &failures {
            warn!(?op, %error, "kernel refused a change");
        }
        if !failures.is_empty() {
            // Our picture of the kernel is off: the next pass reads it again.
            self.synced = false;
        }
        debug!(applied = ops.len() - failures.len(), failed = failures.len(), "kernel changes");
        SyncReport { applied: ops.len() - failures.len(), failed: failures.len() }
    }
}

/// One peer's objects as installed, in a flat slice: a [`KernelState`] of one peer is four
/// one-entry B-trees (about 1 KiB of nodes), which at 10,000 peers is most of the agent's memory.
#[derive(Debug, Clone)]
struct PeerEntries(Box<[Object]>);

impl PeerEntries {
    fn of(state: &KernelState) -> Self {
        PeerEntries(state.objects().collect())
    }

    fn state(&self) -> KernelState {
        let mut state = KernelState::default();
        self.0.iter().for_each(|object| state.add(*object));
        state
    }
}

fn finish(report: SyncReport, problems: Vec<String>) -> Result<SyncReport, BackendError> {
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(BackendError::Peers(problems))
    }
}

/// A mapper for tests of the engine and of the data plane.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::kernel::{NexthopSpec, RouteSpec, RouteTarget};

    /// Maps every peer to one route via its public IP.
    pub(crate) struct ViaPublicIp;

    impl PeerObjects for ViaPublicIp {
        fn objects(&self, lease: &Lease) -> Result<KernelState, String> {
            let mut state = KernelState::default();
            let id = u32::from(lease.subnet.network());
            state.add_nexthop(NexthopSpec { id, gateway: lease.attrs.public_ip.into(), oif: 2, onlink: false });
            state.add_route(RouteSpec { dst: lease.subnet.into(), target: RouteTarget::Nexthop(id) });
            Ok(state)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::ViaPublicIp;
    use super::*;
    use crate::kernel::memory::MemoryKernel;
    use crate::lease::{Expiry, LeaseAttrs};
    use ipnet::IpNet;

    fn lease(backend: &str) -> Lease {
        Lease {
            subnet: "10.244.2.0/24".parse().unwrap(),
            attrs: LeaseAttrs::new("198.51.100.2".parse().unwrap(), backend, serde_json::Value::Null),
            expiry: Expiry::Unknown,
        }
    }

    #[tokio::test]
    async fn a_peer_on_a_type_we_do_not_run_yet_keeps_its_objects() {
        let kernel = Arc::new(MemoryKernel::default());
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, Box::new(ViaPublicIp), &[]);
        let old = lease("vxlan");
        let peers: LeaseMap = [(old.subnet, old.clone())].into();
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.snapshot().routes.len(), 1);
        // The peer switched before we learnt of the new backend: nothing is torn down.
        let new = lease("host-gw");
        let peers: LeaseMap = [(new.subnet, new.clone())].into();
        sync.on_events(&peers, &[LeaseEvent::Changed(old.subnet)]).await.unwrap();
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.snapshot().routes.len(), 1);
        // Once we run it, the peer's objects are the new backend's.
        sync.add_mapper(BackendKind::HostGw, Box::new(ViaPublicIp), &[]);
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.snapshot().routes.len(), 1);
        // A peer gone is removed whatever its type.
        sync.on_events(&LeaseMap::new(), &[LeaseEvent::Removed(new.subnet)]).await.unwrap();
        assert!(kernel.snapshot().is_empty());
    }

    /// A peer on 10.244.2.0/24 while `proto static` (4) routes there.
    fn kernel_with_a_static_route() -> Arc<MemoryKernel> {
        let kernel = Arc::new(MemoryKernel::default());
        kernel.foreign.lock().unwrap().routes.insert("10.244.2.0/24".parse().unwrap(), 4);
        kernel
    }

    fn conflicts(sync: &RouteSync) -> Vec<String> {
        sync.conflicts().map(ToString::to_string).collect()
    }

    #[tokio::test]
    async fn a_route_of_someone_else_is_neither_replaced_nor_deleted() {
        let kernel = kernel_with_a_static_route();
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, Box::new(ViaPublicIp), &[]);
        let peer = lease("vxlan");
        let peers: LeaseMap = [(peer.subnet, peer.clone())].into();
        sync.reconcile(&peers).await.unwrap();
        sync.on_events(&peers, &[LeaseEvent::Changed(peer.subnet)]).await.unwrap();
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.applied_count(), 0, "{:?}", kernel.applied.lock().unwrap());
        assert_eq!(conflicts(&sync), ["route to 10.244.2.0/24 owned by proto static; not replaced"]);
        // The peer leaves: still nothing of ours to delete there, and the conflict ends with it.
        sync.on_events(&LeaseMap::new(), &[LeaseEvent::Removed(peer.subnet)]).await.unwrap();
        sync.reconcile(&LeaseMap::new()).await.unwrap();
        assert_eq!(kernel.applied_count(), 0);
        assert!(conflicts(&sync).is_empty());
        assert_eq!(kernel.foreign.lock().unwrap().routes.get(&IpNet::V4(peer.subnet)), Some(&4));
    }

    #[tokio::test]
    async fn a_new_peer_on_the_fast_path_yields_to_a_route_seen_by_the_last_pass() {
        let kernel = kernel_with_a_static_route();
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, Box::new(ViaPublicIp), &[]);
        sync.reconcile(&LeaseMap::new()).await.unwrap();
        let peer = lease("vxlan");
        let peers: LeaseMap = [(peer.subnet, peer.clone())].into();
        sync.on_events(&peers, &[LeaseEvent::Added(peer.subnet)]).await.unwrap();
        assert_eq!(kernel.applied_count(), 0, "{:?}", kernel.applied.lock().unwrap());
        assert_eq!(conflicts(&sync).len(), 1);
    }

    #[tokio::test]
    async fn a_nexthop_object_of_someone_else_with_our_id_is_not_replaced() {
        let kernel = Arc::new(MemoryKernel::default());
        let peer = lease("vxlan");
        // ViaPublicIp names the peer's nexthop after its subnet's address; a routing daemon's
        // object (proto zebra, 11) already has that id.
        let id = u32::from(peer.subnet.network());
        kernel.foreign.lock().unwrap().nexthops.insert(id, 11);
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, Box::new(ViaPublicIp), &[]);
        let peers: LeaseMap = [(peer.subnet, peer.clone())].into();
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.applied_count(), 0, "{:?}", kernel.applied.lock().unwrap());
        assert_eq!(conflicts(&sync), [format!("nexthop {id} owned by proto zebra; not replaced")]);
        assert_eq!(kernel.foreign.lock().unwrap().nexthops.get(&id), Some(&11));
    }

    #[tokio::test]
    async fn once_the_route_of_someone_else_is_gone_the_peer_is_installed() {
        let kernel = kernel_with_a_static_route();
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, Box::new(ViaPublicIp), &[]);
        let peer = lease("vxlan");
        let peers: LeaseMap = [(peer.subnet, peer.clone())].into();
        sync.reconcile(&peers).await.unwrap();
        kernel.foreign.lock().unwrap().routes.clear();
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.snapshot().routes.len(), 1);
        assert!(conflicts(&sync).is_empty());
    }
}
