//! The route-sync engine shared by every backend that programs the kernel: each peer's lease maps
//! to a few kernel objects, by the mapper of the peer's backend type; events change only that
//! peer's objects (fast path), and a periodic full pass diffs everything weft wants against
//! everything it owns in the kernel (repair). Several mappers at once let a cluster move from one
//! backend to another peer by peer, each route replaced in place. A peer whose route would replace
//! a route of someone else (`proto static`...) gets nothing installed: see [`RouteSync::conflicts`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing::{debug, info, warn};

use super::peer_trust::PeerTrust;
use super::{BackendError, BackendKind};
use crate::family_map::FamilyMap;
use crate::health::PeerRejectedLabels;
use crate::kernel::packed::{self, PackedObjects};
use crate::kernel::{
    diff_all, foreign_conflicts, Conflict, Foreign, Kernel, KernelReading, KernelState, Op, OpFailure, Ownership,
    Phases,
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
    /// What we installed per peer, as of the last successful sync. A B-tree, rebuilt from a
    /// sorted run by [`RouteSync::reconcile`] so its nodes are full: a hash table would hold a
    /// third again as many slots as peers.
    installed: FamilyMap<PeerEntries>,
    /// Failed operations of the last sync.
    last_failed: usize,
    /// False until a full pass has seen the kernel: the first sync must adopt what is there.
    synced: bool,
    /// Whose public IPs we install objects towards (every mapper's: written once, here).
    trust: PeerTrust,
    /// `weft_peers_rejected_total` (unregistered until the agent hands its own in).
    rejected_total: Family<PeerRejectedLabels, Counter>,
    /// Peers refused, by the address refused: each is warned about and counted once.
    rejected: HashMap<IpNet, IpAddr>,
    /// What of others was in the way at the last full pass; the fast path checks against it.
    foreign: Foreign,
    /// Peers left out because their objects would replace some of someone else's, with those.
    conflicts: BTreeMap<IpNet, Vec<Conflict>>,
}

impl RouteSync {
    pub fn new(kernel: Arc<dyn Kernel>) -> Self {
        RouteSync {
            kernel,
            ownership: Ownership::default(),
            mappers: Vec::new(),
            installed: FamilyMap::new(),
            last_failed: 0,
            synced: false,
            trust: PeerTrust::default(),
            rejected_total: Family::default(),
            rejected: HashMap::new(),
            foreign: Foreign::default(),
            conflicts: BTreeMap::new(),
        }
    }

    /// Installs peers only towards public IPs `trust` accepts; counts the others in
    /// `rejected_total`. Without it, only non-unicast addresses are refused.
    pub fn set_trust(&mut self, trust: PeerTrust, rejected_total: Family<PeerRejectedLabels, Counter>) {
        self.trust = trust;
        self.rejected_total = rejected_total;
        self.rejected.clear();
        self.synced = false;
    }

    /// The routes and nexthop objects of others that keep peers out of the kernel, peer by peer:
    /// weft never replaces or deletes them. For readiness and the metrics.
    pub fn conflicts(&self) -> impl Iterator<Item = &Conflict> {
        self.conflicts.values().flatten()
    }

    /// `objects` for the peer on `subnet`, or nothing when one of them would replace an object
    /// of someone else; a conflict is logged when it starts and when it ends, not at
    /// every pass.
    fn admit(&mut self, subnet: IpNet, objects: KernelState) -> KernelState {
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
    /// type (yet). A peer whose public IP we do not trust gets none (and a warning).
    fn objects(&mut self, lease: &Lease) -> Option<Result<KernelState, String>> {
        let (_, mapper) = self.mappers.iter().find(|(t, _)| t.as_str() == lease.attrs.backend_type)?;
        let objects = mapper.objects(lease);
        // A peer with nothing to install (a cloud backend's) sends nothing to its public IP. A
        // mapper's complaint about an untrusted address is that address's fault: reported as such.
        let sends = !matches!(&objects, Ok(state) if state.is_empty());
        if sends && !self.trusted(lease) {
            return Some(Ok(KernelState::default()));
        }
        Some(objects)
    }

    /// Whether `lease`'s public IP may be sent to; a refusal is logged and counted once for each
    /// address a peer announces.
    fn trusted(&mut self, lease: &Lease) -> bool {
        // Each family's public address is where that family's subnet's traffic goes (IPv6-only
        // peers publish 0.0.0.0, which carries nothing).
        let v4 = lease.subnet.map(|_| IpAddr::V4(lease.attrs.public_ip));
        let v6 = lease.subnet_v6.and(lease.attrs.public_ipv6()).map(IpAddr::V6);
        let refusal = v4.into_iter().chain(v6).find_map(|ip| self.trust.check(ip).err().map(|why| (ip, why)));
        let id = lease.id();
        let Some((ip, why)) = refusal else {
            self.rejected.remove(&id);
            return true;
        };
        if self.rejected.insert(id, ip) != Some(ip) {
            warn!(lease = %id, public_ip = %ip, reason = why.reason(), "skipping peer: its public IP is {why}");
            self.rejected_total.get_or_create(&PeerRejectedLabels { reason: why.reason().to_string() }).inc();
        }
        false
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
                LeaseEvent::Removed(_) => {
                    self.rejected.remove(&subnet);
                    None
                }
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
        self.last_failed = report.failed;
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
        let mut per_peer = Vec::with_capacity(peers.len());
        self.rejected.retain(|subnet, _| peers.contains_key(subnet));
        for (id, lease) in peers {
            let objects = match self.objects(lease) {
                Some(Ok(objects)) => objects,
                Some(Err(problem)) => {
                    problems.push(format!("{id}: {problem}"));
                    self.conflicts.remove(&id);
                    continue;
                }
                None => match self.installed.get(&id) {
                    Some(kept) => kept.state(),
                    None => continue,
                },
            };
            let admitted = self.admit(id, objects);
            if !admitted.is_empty() {
                per_peer.push((id, PeerEntries::of(&admitted)));
            }
        }
        // Applied step by step (puts of each kind, then deletes), as the plan would be in one go.
        let mut phases = Phases::new(per_peer.iter().flat_map(|(_, entries)| entries.objects()), actual);
        let mut report = SyncReport::default();
        while let Some(ops) = phases.next_phase() {
            let step = self.apply(&ops).await;
            report.applied += step.applied;
            report.failed += step.failed;
        }
        let changes = report.applied + report.failed;
        if changes > 0 {
            info!(changes, peers = peers.len(), "brought the kernel in line with the leases");
        }
        // In the leases' order, so the map is built full.
        self.installed = per_peer.into_iter().collect();
        self.synced = report.failed == 0;
        self.last_failed = report.failed;
        finish(report, problems)
    }

    /// Peers with kernel objects, and how many objects they want, as of the last sync.
    pub fn counts(&self) -> (usize, usize) {
        (self.installed.len(), self.installed.values().map(|e| e.objects().count()).sum())
    }

    /// Operations of the last sync the kernel refused (those objects are wanted, not installed).
    pub fn last_failed(&self) -> usize {
        self.last_failed
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

/// One peer's objects as installed, packed: a [`KernelState`] of one peer is four one-entry
/// B-trees (about 1 KiB of nodes), and even a slice of [`Object`]s is sized for IPv6 addresses;
/// at 10,000 peers either would be a good part of the agent's memory.
#[derive(Debug, Clone)]
struct PeerEntries(PackedObjects);

impl PeerEntries {
    fn of(state: &KernelState) -> Self {
        PeerEntries(PackedObjects::pack(state.objects()))
    }

    fn objects(&self) -> packed::Iter<'_> {
        self.0.iter()
    }

    fn state(&self) -> KernelState {
        let mut state = KernelState::default();
        self.objects().for_each(|object| state.add(object));
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
            let Some(subnet) = lease.subnet else { return Err("an IPv4 peer only".into()) };
            let id = u32::from(subnet.network());
            state.add_nexthop(NexthopSpec { id, gateway: lease.attrs.public_ip.into(), oif: 2, onlink: false });
            state.add_route(RouteSpec { dst: subnet.into(), target: RouteTarget::Nexthop(id) });
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

    fn lease(backend: &str) -> Lease {
        Lease {
            subnet: Some("10.244.2.0/24".parse().unwrap()),
            subnet_v6: None,
            attrs: LeaseAttrs::new("198.51.100.2".parse().unwrap(), backend, serde_json::Value::Null),
            expiry: Expiry::Unknown,
        }
    }

    fn lease_at(subnet: &str, public_ip: &str, backend: &str) -> Lease {
        Lease {
            subnet: Some(subnet.parse().unwrap()),
            subnet_v6: None,
            attrs: LeaseAttrs::new(public_ip.parse().unwrap(), backend, serde_json::Value::Null),
            expiry: Expiry::Unknown,
        }
    }

    fn map(leases: &[Lease]) -> LeaseMap {
        leases.iter().map(|l| (l.id(), l.clone())).collect()
    }

    fn rejected(family: &Family<PeerRejectedLabels, Counter>, reason: &str) -> u64 {
        family.get_or_create(&PeerRejectedLabels { reason: reason.into() }).get()
    }

    #[tokio::test]
    async fn peers_with_untrusted_public_ips_get_no_kernel_objects() {
        let kernel = Arc::new(MemoryKernel::default());
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, Box::new(ViaPublicIp), &[]);
        sync.add_mapper(BackendKind::AwsVpc, Box::new(NoneToInstall), &[]);
        let family = Family::<PeerRejectedLabels, Counter>::default();
        let underlay = vec!["198.51.100.0/24".parse().unwrap()];
        sync.set_trust(
            PeerTrust::new(["198.51.100.1".parse::<std::net::Ipv4Addr>().unwrap()], underlay),
            family.clone(),
        );

        let good = lease_at("10.244.2.0/24", "198.51.100.2", "vxlan");
        let ours = lease_at("10.244.3.0/24", "198.51.100.1", "vxlan");
        let multicast = lease_at("10.244.4.0/24", "224.0.0.1", "vxlan");
        let outside = lease_at("10.244.5.0/24", "203.0.113.5", "vxlan");
        // A cloud peer has nothing installed for it: its address is nobody's concern here.
        let cloud = lease_at("10.244.6.0/24", "0.0.0.0", "aws-vpc");
        let mut peers = map(&[good.clone(), ours.clone(), multicast.clone(), outside.clone(), cloud.clone()]);
        sync.reconcile(&peers).await.unwrap();
        let routes: Vec<_> = kernel.snapshot().routes.keys().map(|dst| dst.to_string()).collect();
        assert_eq!(routes, ["10.244.2.0/24"]);
        // Every repair pass refuses them again, but they are counted (and warned about) once.
        sync.reconcile(&peers).await.unwrap();
        let events: Vec<_> = peers.keys().map(LeaseEvent::Changed).collect();
        sync.on_events(&peers, &events).await.unwrap();
        assert_eq!(kernel.snapshot().routes.len(), 1);
        assert_eq!(rejected(&family, "own_address"), 1);
        assert_eq!(rejected(&family, "multicast"), 1);
        assert_eq!(rejected(&family, "outside_underlay"), 1);
        assert_eq!(rejected(&family, "unspecified"), 0, "a cloud peer is not checked");

        // A trusted peer turning untrusted loses what it had; a refused one fixed is installed.
        let hijacked = lease_at("10.244.2.0/24", "127.0.0.1", "vxlan");
        let fixed = lease_at("10.244.4.0/24", "198.51.100.4", "vxlan");
        peers.insert(hijacked.id(), hijacked.clone());
        peers.insert(fixed.id(), fixed.clone());
        let changes = [LeaseEvent::Changed(hijacked.id()), LeaseEvent::Changed(fixed.id())];
        sync.on_events(&peers, &changes).await.unwrap();
        let routes: Vec<_> = kernel.snapshot().routes.keys().map(|dst| dst.to_string()).collect();
        assert_eq!(routes, ["10.244.4.0/24"]);
        assert_eq!(rejected(&family, "loopback"), 1);
        // Refused again with the same address after it was accepted in between: counted again.
        peers.insert(multicast.id(), multicast.clone());
        sync.on_events(&peers, &[LeaseEvent::Changed(multicast.id())]).await.unwrap();
        assert_eq!(rejected(&family, "multicast"), 2);
        sync.reconcile(&peers).await.unwrap();
        assert!(kernel.snapshot().routes.is_empty());
    }

    #[tokio::test]
    async fn without_a_trust_set_non_unicast_peers_are_still_refused() {
        let kernel = Arc::new(MemoryKernel::default());
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, Box::new(ViaPublicIp), &[]);
        let peers = map(&[
            lease_at("10.244.2.0/24", "0.0.0.0", "vxlan"),
            lease_at("10.244.3.0/24", "255.255.255.255", "vxlan"),
            lease_at("10.244.4.0/24", "169.254.169.254", "vxlan"),
            lease_at("10.244.5.0/24", "192.0.2.5", "vxlan"),
        ]);
        sync.reconcile(&peers).await.unwrap();
        let routes: Vec<_> = kernel.snapshot().routes.keys().map(|dst| dst.to_string()).collect();
        assert_eq!(routes, ["10.244.5.0/24"]);
    }

    /// A mapper like a cloud backend's: nothing in the kernel.
    struct NoneToInstall;

    impl PeerObjects for NoneToInstall {
        fn objects(&self, _lease: &Lease) -> Result<KernelState, String> {
            Ok(KernelState::default())
        }
    }

    #[tokio::test]
    async fn a_peer_on_a_type_we_do_not_run_yet_keeps_its_objects() {
        let kernel = Arc::new(MemoryKernel::default());
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, Box::new(ViaPublicIp), &[]);
        let old = lease("vxlan");
        let peers: LeaseMap = [(old.id(), old.clone())].into();
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.snapshot().routes.len(), 1);
        // The peer switched before we learnt of the new backend: nothing is torn down.
        let new = lease("host-gw");
        let peers: LeaseMap = [(new.id(), new.clone())].into();
        sync.on_events(&peers, &[LeaseEvent::Changed(old.id())]).await.unwrap();
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.snapshot().routes.len(), 1);
        // Once we run it, the peer's objects are the new backend's.
        sync.add_mapper(BackendKind::HostGw, Box::new(ViaPublicIp), &[]);
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.snapshot().routes.len(), 1);
        // A peer gone is removed whatever its type.
        sync.on_events(&LeaseMap::new(), &[LeaseEvent::Removed(new.id())]).await.unwrap();
        assert!(kernel.snapshot().is_empty());
    }

    /// A peer on 10.244.2.0/24 while `proto static` (4) routes there.
    fn kernel_with_a_static_route() -> Arc<MemoryKernel> {
        let kernel = Arc::new(MemoryKernel::default());
        kernel.foreign.lock().unwrap().routes.insert("10.244.2.0/24".parse().unwrap(), 4);
        kernel
    }

    /// A vxlan peer whose subnet a `proto static` route already takes, and a sync not run yet.
    fn one_peer_over_a_static_route() -> (Arc<MemoryKernel>, RouteSync, Lease, LeaseMap) {
        let kernel = kernel_with_a_static_route();
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, Box::new(ViaPublicIp), &[]);
        let peer = lease("vxlan");
        let peers: LeaseMap = [(peer.id(), peer.clone())].into();
        (kernel, sync, peer, peers)
    }

    fn conflicts(sync: &RouteSync) -> Vec<String> {
        sync.conflicts().map(ToString::to_string).collect()
    }

    #[tokio::test]
    async fn a_route_of_someone_else_is_neither_replaced_nor_deleted() {
        let (kernel, mut sync, peer, peers) = one_peer_over_a_static_route();
        sync.reconcile(&peers).await.unwrap();
        sync.on_events(&peers, &[LeaseEvent::Changed(peer.id())]).await.unwrap();
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.applied_count(), 0, "{:?}", kernel.applied.lock().unwrap());
        assert_eq!(conflicts(&sync), ["route to 10.244.2.0/24 owned by proto static; not replaced"]);
        // The peer leaves: still nothing of ours to delete there, and the conflict ends with it.
        sync.on_events(&LeaseMap::new(), &[LeaseEvent::Removed(peer.id())]).await.unwrap();
        sync.reconcile(&LeaseMap::new()).await.unwrap();
        assert_eq!(kernel.applied_count(), 0);
        assert!(conflicts(&sync).is_empty());
        assert_eq!(kernel.foreign.lock().unwrap().routes.get(&peer.id()), Some(&4));
    }

    #[tokio::test]
    async fn a_new_peer_on_the_fast_path_yields_to_a_route_seen_by_the_last_pass() {
        let kernel = kernel_with_a_static_route();
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, Box::new(ViaPublicIp), &[]);
        sync.reconcile(&LeaseMap::new()).await.unwrap();
        let peer = lease("vxlan");
        let peers: LeaseMap = [(peer.id(), peer.clone())].into();
        sync.on_events(&peers, &[LeaseEvent::Added(peer.id())]).await.unwrap();
        assert_eq!(kernel.applied_count(), 0, "{:?}", kernel.applied.lock().unwrap());
        assert_eq!(conflicts(&sync).len(), 1);
    }

    #[tokio::test]
    async fn a_nexthop_object_of_someone_else_with_our_id_is_not_replaced() {
        let kernel = Arc::new(MemoryKernel::default());
        let peer = lease("vxlan");
        // ViaPublicIp names the peer's nexthop after its subnet's address; a routing daemon's
        // object (proto zebra, 11) already has that id.
        let id = u32::from(peer.subnet.unwrap().network());
        kernel.foreign.lock().unwrap().nexthops.insert(id, 11);
        let mut sync = RouteSync::new(kernel.clone());
        sync.add_mapper(BackendKind::Vxlan, Box::new(ViaPublicIp), &[]);
        let peers: LeaseMap = [(peer.id(), peer.clone())].into();
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.applied_count(), 0, "{:?}", kernel.applied.lock().unwrap());
        assert_eq!(conflicts(&sync), [format!("nexthop {id} owned by proto zebra; not replaced")]);
        assert_eq!(kernel.foreign.lock().unwrap().nexthops.get(&id), Some(&11));
    }

    #[tokio::test]
    async fn once_the_route_of_someone_else_is_gone_the_peer_is_installed() {
        let (kernel, mut sync, _, peers) = one_peer_over_a_static_route();
        sync.reconcile(&peers).await.unwrap();
        kernel.foreign.lock().unwrap().routes.clear();
        sync.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.snapshot().routes.len(), 1);
        assert!(conflicts(&sync).is_empty());
    }
}
