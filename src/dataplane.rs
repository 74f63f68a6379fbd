//! The host's data plane: the active backend, backends being retired after a switch, and the one
//! route-sync engine that installs every peer's kernel objects by the peer's backend type.
//!
//! A switch (say vxlan → host-gw) starts the new backend beside the old one. Each peer moves when
//! its lease shows the new type — its route replaced in place — and the old backend is torn down
//! (its device, its cloud route) once no peer uses it any more.

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use tracing::{info, warn};

use crate::backend::route_sync::{PeerObjects, RouteSync};
use crate::backend::{self, Backend, BackendContext, BackendError};
use crate::kernel::{Kernel, KernelState};
use crate::lease::{Lease, LeaseMap};
use crate::watch::LeaseEvent;

/// The peer mapping of a backend that installs nothing in the kernel.
struct NoObjects;

impl PeerObjects for NoObjects {
    fn objects(&self, _lease: &Lease) -> Result<KernelState, String> {
        Ok(KernelState::default())
    }
}

pub type KernelFactory = Box<dyn Fn() -> Result<Arc<dyn Kernel>, BackendError> + Send + Sync>;

/// How long a retiring backend stays after its last peer moved: peers may still send to us the
/// old way until they have seen our own lease change.
const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// A started backend and the devices the route-sync engine manages for it.
struct Started {
    backend: Box<dyn Backend>,
    links: Vec<u32>,
    /// Retiring: since when no peer uses it.
    unused_since: Option<std::time::Instant>,
}

pub struct Dataplane {
    kernel_factory: KernelFactory,
    kernel: Option<Arc<dyn Kernel>>,
    sync: Option<RouteSync>,
    active: Option<Started>,
    retiring: Vec<Started>,
    /// Kernel changes made by someone else to what weft owns. In a mutex only to make the data
    /// plane `Sync`; it is only ever used through `&mut self` (`get_mut`, no locking).
    changes: std::sync::Mutex<Option<BoxStream<'static, ()>>>,
}

impl Dataplane {
    pub fn new(kernel_factory: KernelFactory) -> Self {
        Dataplane {
            kernel_factory,
            kernel: None,
            sync: None,
            active: None,
            retiring: Vec::new(),
            changes: Default::default(),
        }
    }

    /// A data plane on this process's network namespace, through netlink.
    pub fn netlink() -> Self {
        Dataplane::new(Box::new(|| {
            let kernel =
                crate::kernel::netlink::NetlinkKernel::new().map_err(|e| BackendError::Setup(e.to_string()))?;
            Ok(Arc::new(kernel) as Arc<dyn Kernel>)
        }))
    }

    /// One kernel connection for every backend, opened when the first kernel backend needs it.
    fn kernel(&mut self) -> Result<Arc<dyn Kernel>, BackendError> {
        if let Some(kernel) = &self.kernel {
            return Ok(kernel.clone());
        }
        let kernel = (self.kernel_factory)()?;
        self.kernel = Some(kernel.clone());
        Ok(kernel)
    }

    /// Builds (but does not start) the backend the network asks for.
    pub fn create_backend(&mut self, ctx: &BackendContext) -> Result<Box<dyn Backend>, BackendError> {
        backend::create_with_kernel(ctx, || self.kernel())
    }

    /// Starts `backend` on our lease and makes it the active one. A previously active backend of
    /// another kind keeps serving the peers still on it until none is left.
    pub async fn start(&mut self, mut backend: Box<dyn Backend>, own: &Lease) -> Result<(), BackendError> {
        let mapping = backend.start(own).await?;
        let mut links = Vec::new();
        if let Some(mapping) = mapping {
            links = mapping.links.clone();
            let kernel = self.kernel()?;
            let sync = self.sync.get_or_insert_with(|| RouteSync::new(kernel));
            sync.add_mapper(backend.type_name(), mapping.mapper, &mapping.links);
        } else if let Some(sync) = &mut self.sync {
            // A backend without kernel objects (the cloud routes traffic: aws-vpc, gce) after one
            // with: a peer on it needs none here. Without this mapper its old backend's objects
            // would be kept as for a type we do not run yet — for good.
            sync.add_mapper(backend.type_name(), Box::new(NoObjects), &[]);
        }
        let kind = backend.type_name();
        let started = Started { backend, links, unused_since: None };
        if let Some(previous) = self.active.replace(started) {
            self.retire(previous).await;
        }
        // Back to a kind still retiring (a switch undone within the grace): the new backend
        // replaces it as a new one of the same kind does. Retired later, it would take the new
        // one's mapper (and devices) with it.
        while let Some(at) = self.retiring.iter().position(|r| r.backend.type_name() == kind) {
            let old = self.retiring.remove(at);
            self.replace_same_kind(old).await;
        }
        self.follow_kernel_changes();
        Ok(())
    }

    /// (Re)subscribes to kernel changes for what we own now (devices come and go on a switch).
    fn follow_kernel_changes(&mut self) {
        let changes = match (&self.kernel, &self.sync) {
            (Some(kernel), Some(sync)) => kernel.change_notifications(sync.ownership().clone()),
            _ => None,
        };
        *self.changes.get_mut().unwrap_or_else(|e| e.into_inner()) = changes;
    }

    /// Resolves when the kernel changed under us (a route deleted by hand); never without a kernel.
    pub async fn next_kernel_change(&mut self) {
        let slot = self.changes.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(changes) = slot else {
            return std::future::pending().await;
        };
        if changes.next().await.is_none() {
            *slot = None;
            std::future::pending::<()>().await;
        }
    }

    pub fn active_type(&self) -> Option<&'static str> {
        self.active.as_ref().map(|s| s.backend.type_name())
    }

    async fn retire(&mut self, previous: Started) {
        let new_type = self.active_type();
        if new_type == Some(previous.backend.type_name()) {
            self.replace_same_kind(previous).await;
            return;
        }
        info!(from = previous.backend.type_name(), to = ?new_type, "switching backend: peers move as their leases change");
        self.retiring.push(previous);
    }

    /// `previous` is of the active backend's kind, with other options (a VNI, direct routing):
    /// the new mapping replaced the old one; only a device the new one does not use goes away.
    async fn replace_same_kind(&mut self, previous: Started) {
        let active_links = self.active.as_ref().map(|a| a.links.clone()).unwrap_or_default();
        let stale: Vec<u32> = previous.links.iter().copied().filter(|l| !active_links.contains(l)).collect();
        if !stale.is_empty() {
            self.tear_down(previous, &stale).await;
        }
    }

    async fn tear_down(&mut self, mut old: Started, links: &[u32]) {
        if let Some(sync) = &mut self.sync {
            sync.forget_links(links);
        }
        match old.backend.teardown().await {
            Ok(()) => info!(backend = old.backend.type_name(), "old backend removed"),
            Err(e) => warn!(backend = old.backend.type_name(), error = %e, "removing the old backend"),
        }
        self.follow_kernel_changes();
    }

    /// Retires old backends no peer has used for [`RETIRE_GRACE`].
    async fn retire_unused(&mut self, peers: &LeaseMap) {
        let mut i = 0;
        while i < self.retiring.len() {
            let kind = self.retiring[i].backend.type_name();
            let unused_since = if peers.values().any(|l| l.attrs.backend_type == kind) {
                None
            } else {
                Some(self.retiring[i].unused_since.unwrap_or_else(std::time::Instant::now))
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

    /// The active backend's own checks (cloud routes); see [`Backend::check`].
    pub async fn check(&mut self, own: &Lease, peers: &LeaseMap, forced: bool) -> Result<(), BackendError> {
        match &mut self.active {
            Some(active) => active.backend.check(own, peers, forced).await,
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
    use async_trait::async_trait;

    use super::*;
    use crate::backend::route_sync::test_support::ViaPublicIp;
    use crate::backend::{LeaseData, PeerMapping};
    use crate::kernel::memory::MemoryKernel;
    use crate::lease::{BackendData, Expiry, LeaseAttrs};

    /// A backend of kind `kind`: with kernel objects (like host-gw) or without (like aws-vpc).
    struct Fake {
        kind: &'static str,
        kernel: bool,
    }

    #[async_trait]
    impl Backend for Fake {
        fn type_name(&self) -> &'static str {
            self.kind
        }

        async fn prepare(&mut self) -> Result<LeaseData, BackendError> {
            Ok(LeaseData { backend_type: self.kind, backend_data: BackendData::null(), mtu: 1500 })
        }

        async fn start(&mut self, _own: &Lease) -> Result<Option<PeerMapping>, BackendError> {
            Ok(self.kernel.then(|| PeerMapping { mapper: Box::new(ViaPublicIp), links: Vec::new() }))
        }
    }

    fn lease(subnet: &str, backend: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            attrs: LeaseAttrs::new("198.51.100.2".parse().unwrap(), backend, BackendData::null()),
            expiry: Expiry::Unknown,
        }
    }

    /// Moves the one peer to `backend`.
    async fn peer_moves(dataplane: &mut Dataplane, peer: &mut Lease, backend: &str) -> LeaseMap {
        *peer = lease("10.244.2.0/24", backend);
        let peers: LeaseMap = [(peer.subnet, peer.clone())].into();
        dataplane.apply(&peers, &[LeaseEvent::Changed(peer.subnet)]).await.unwrap();
        peers
    }

    #[tokio::test]
    async fn to_a_backend_without_kernel_objects_and_back() {
        let kernel = Arc::new(MemoryKernel::default());
        let factory = kernel.clone();
        let mut dataplane = Dataplane::new(Box::new(move || Ok(factory.clone() as Arc<dyn Kernel>)));
        let own = lease("10.244.1.0/24", "host-gw");
        dataplane.start(Box::new(Fake { kind: "host-gw", kernel: true }), &own).await.unwrap();
        let mut peer = lease("10.244.2.0/24", "host-gw");
        dataplane.reconcile(&[(peer.subnet, peer.clone())].into()).await.unwrap();
        assert_eq!(kernel.snapshot().routes.len(), 1);

        // The peer on the cloud backend we run too: its route goes, now and on every repair.
        dataplane.start(Box::new(Fake { kind: "aws-vpc", kernel: false }), &own).await.unwrap();
        let peers = peer_moves(&mut dataplane, &mut peer, "aws-vpc").await;
        assert!(kernel.snapshot().routes.is_empty());
        dataplane.reconcile(&peers).await.unwrap();
        assert!(kernel.snapshot().routes.is_empty());

        // Back within the grace: the retiring host-gw is replaced, not retired later with the
        // new one's mapper.
        dataplane.start(Box::new(Fake { kind: "host-gw", kernel: true }), &own).await.unwrap();
        assert_eq!(dataplane.retiring.len(), 1, "only aws-vpc retires");
        let peers = peer_moves(&mut dataplane, &mut peer, "host-gw").await;
        assert_eq!(kernel.snapshot().routes.len(), 1);
        dataplane.reconcile(&peers).await.unwrap();
        assert_eq!(kernel.snapshot().routes.len(), 1);
        assert!(dataplane.sync.as_ref().unwrap().handles("host-gw"));
    }
}
