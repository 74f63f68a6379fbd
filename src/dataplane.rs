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

use crate::backend::route_sync::RouteSync;
use crate::backend::{self, Backend, BackendContext, BackendError};
use crate::kernel::Kernel;
use crate::lease::{Lease, LeaseMap};
use crate::watch::LeaseEvent;

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
        }
        let started = Started { backend, links, unused_since: None };
        if let Some(previous) = self.active.replace(started) {
            self.retire(previous).await;
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
            // Same kind, new options (a VNI, direct routing): the new mapping replaced the old one;
            // only a device the new one does not use goes away.
            let active_links = self.active.as_ref().map(|a| a.links.clone()).unwrap_or_default();
            let stale: Vec<u32> = previous.links.iter().copied().filter(|l| !active_links.contains(l)).collect();
            if !stale.is_empty() {
                self.tear_down(previous, &stale).await;
            }
            return;
        }
        info!(from = previous.backend.type_name(), to = ?new_type, "switching backend: peers move as their leases change");
        self.retiring.push(previous);
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
