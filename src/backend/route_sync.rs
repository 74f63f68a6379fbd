//! The route-sync engine shared by every backend that programs the kernel: each peer's lease maps
//! to a few kernel objects, by the mapper of the peer's backend type; events change only that
//! peer's objects (fast path), and a periodic full pass diffs everything weft wants against
//! everything it owns in the kernel (repair). Several mappers at once let a cluster move from one
//! backend to another peer by peer, each route replaced in place.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::Ipv4Net;
use tracing::{debug, info, warn};

use super::BackendError;
use crate::kernel::{diff, Kernel, KernelState, Op, OpFailure, Ownership};
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
    mappers: Vec<(&'static str, Box<dyn PeerObjects>)>,
    /// What we installed per peer, as of the last successful sync.
    installed: HashMap<Ipv4Net, KernelState>,
    /// False until a full pass has seen the kernel: the first sync must adopt what is there.
    synced: bool,
}

impl RouteSync {
    pub fn new(kernel: Arc<dyn Kernel>) -> Self {
        RouteSync {
            kernel,
            ownership: Ownership::default(),
            mappers: Vec::new(),
            installed: HashMap::new(),
            synced: false,
        }
    }

    /// Installs peers of `backend_type` with `mapper`; `links` are devices whose entries it owns.
    pub fn add_mapper(&mut self, backend_type: &'static str, mapper: Box<dyn PeerObjects>, links: &[u32]) {
        self.remove_mapper(backend_type);
        self.mappers.push((backend_type, mapper));
        self.ownership.links.extend_from_slice(links);
        self.synced = false;
    }

    /// Stops installing peers of `backend_type`; its devices' entries are no longer ours to manage.
    pub fn remove_mapper(&mut self, backend_type: &str) {
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

    pub fn handles(&self, backend_type: &str) -> bool {
        self.mappers.iter().any(|(t, _)| *t == backend_type)
    }

    fn objects(&self, lease: &Lease) -> Result<KernelState, String> {
        match self.mappers.iter().find(|(t, _)| *t == lease.attrs.backend_type) {
            Some((_, mapper)) => mapper.objects(lease),
            None => Ok(KernelState::default()),
        }
    }

    /// Applies lease events: only the peers they name are touched.
    pub async fn on_events(&mut self, peers: &LeaseMap, events: &[LeaseEvent]) -> Result<SyncReport, BackendError> {
        if !self.synced {
            return self.reconcile(peers).await;
        }
        let mut problems = Vec::new();
        let mut ops = Vec::new();
        for event in events {
            let (subnet, lease) = match event {
                LeaseEvent::Added(lease) | LeaseEvent::Changed { new: lease, .. } => (lease.subnet, Some(lease)),
                LeaseEvent::Removed(lease) => (lease.subnet, None),
            };
            let old = self.installed.remove(&subnet).unwrap_or_default();
            let new = match lease.map(|l| self.objects(l)) {
                Some(Ok(objects)) => objects,
                Some(Err(problem)) => {
                    problems.push(format!("{subnet}: {problem}"));
                    KernelState::default()
                }
                None => KernelState::default(),
            };
            ops.extend(diff(&new, &old).ops);
            if !new.is_empty() {
                self.installed.insert(subnet, new);
            }
        }
        let report = self.apply(&ops).await;
        finish(report, problems)
    }

    /// Makes the kernel match `peers` exactly: adds, replaces, and removes what weft owns and no
    /// longer wants — including leftovers from before a restart.
    pub async fn reconcile(&mut self, peers: &LeaseMap) -> Result<SyncReport, BackendError> {
        let mut problems = Vec::new();
        let mut desired = KernelState::default();
        let mut per_peer = HashMap::with_capacity(peers.len());
        for lease in peers.values() {
            match self.objects(lease) {
                Ok(objects) => {
                    merge(&mut desired, &objects);
                    per_peer.insert(lease.subnet, objects);
                }
                Err(problem) => problems.push(format!("{}: {problem}", lease.subnet)),
            }
        }
        let actual = self
            .kernel
            .read_owned(&self.ownership)
            .await
            .map_err(|e| BackendError::Setup(format!("reading the kernel's routes: {e}")))?;
        let plan = diff(&desired, &actual);
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

fn merge(into: &mut KernelState, from: &KernelState) {
    into.nexthops.extend(from.nexthops.iter().map(|(k, v)| (*k, *v)));
    into.routes.extend(from.routes.iter().map(|(k, v)| (*k, *v)));
    into.neighbours.extend(from.neighbours.iter().map(|(k, v)| (*k, *v)));
    into.fdb.extend(from.fdb.iter().map(|(k, v)| (*k, *v)));
}

fn finish(report: SyncReport, problems: Vec<String>) -> Result<SyncReport, BackendError> {
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(BackendError::Peers(problems))
    }
}
