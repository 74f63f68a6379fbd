//! `overflow = "vxlan"`: a cloud backend and a vxlan device side by side. Every host still
//! writes its route into every table where it fits and also runs `flannel.<vni>`, publishing its
//! VtepMAC beside its cloud data. Each peer the host's own route table(s) carry is reached
//! through the cloud and gets nothing in the kernel; any other (a full table, a quota reached,
//! another VPC, a route not written yet) is reached over vxlan — decided per peer, as the
//! cloud's routes change, by [`super::paths::Overflow`].

use async_trait::async_trait;

use super::paths::{CloudPaths, Overflow};
use crate::backend::{Active, Backend, BackendError, LeaseData, PeerMapping, Registered, StartFailed, Started};
use crate::lease::Lease;

/// A cloud backend with vxlan for the peers the cloud does not carry.
pub struct Hybrid {
    cloud: Box<dyn Backend>,
    overlay: Box<dyn Backend>,
    paths: CloudPaths,
}

impl Hybrid {
    /// `paths` must be the one the cloud backend's engine publishes to.
    pub fn new(cloud: Box<dyn Backend>, overlay: Box<dyn Backend>, paths: CloudPaths) -> Self {
        Hybrid { cloud, overlay, paths }
    }
}

#[async_trait]
impl Backend for Hybrid {
    /// The device first (it is what a failed cloud lookup must not leave behind), then the cloud.
    async fn register(self: Box<Self>) -> Result<Box<dyn Registered>, BackendError> {
        let Hybrid { cloud, overlay, paths } = *self;
        let overlay = overlay.register().await?;
        let cloud = match cloud.register().await {
            Ok(cloud) => cloud,
            Err(e) => {
                if let Err(undo) = overlay.abandon().await {
                    tracing::warn!(error = %undo, "removing the vxlan device of a cloud backend that did not register");
                }
                return Err(e);
            }
        };
        // Our lease says the cloud's type, with the VTEP peers need to reach us over vxlan; pods
        // get the vxlan MTU, since some of their packets are encapsulated.
        let vtep = overlay.lease_data();
        let data = LeaseData { kind: cloud.kind(), backend_data: vtep.backend_data.clone(), ..vtep.clone() };
        Ok(Box::new(HybridRegistered { cloud: Some(cloud), overlay, paths, data }))
    }
}

struct HybridRegistered {
    /// `None` once started and stopped again after the overlay failed to start.
    cloud: Option<Box<dyn Registered>>,
    overlay: Box<dyn Registered>,
    paths: CloudPaths,
    data: LeaseData,
}

#[async_trait]
impl Registered for HybridRegistered {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    fn links(&self) -> Vec<u32> {
        self.overlay.links()
    }

    async fn start(self: Box<Self>, own: &Lease) -> Result<Started, StartFailed> {
        let HybridRegistered { cloud, overlay, paths, data } = *self;
        let overlay = match overlay.start(own).await {
            Ok(started) => started,
            Err(failed) => {
                let backend = Box::new(HybridRegistered { cloud, overlay: failed.backend, paths, data });
                return Err(StartFailed { error: failed.error, backend });
            }
        };
        let Some(cloud) = cloud else {
            unreachable!("a hybrid backend is started at most once");
        };
        let cloud = match cloud.start(own).await {
            Ok(started) => started,
            Err(failed) => {
                // What the overlay made is removed again; the cloud side is handed back.
                if let Err(e) = overlay.backend.teardown().await {
                    tracing::warn!(error = %e, "removing the vxlan side of a cloud backend that did not start");
                }
                return Err(failed);
            }
        };
        let Some(mapping) = overlay.peers else {
            unreachable!("vxlan always maps its peers to kernel objects");
        };
        let peers = PeerMapping {
            mapper: Box::new(Overflow { paths: paths.clone(), overlay: mapping.mapper }),
            links: mapping.links,
            remap: Some(paths.subscribe()),
        };
        let backend = Box::new(HybridActive { cloud: cloud.backend, overlay: overlay.backend, data });
        Ok(Started { backend, peers: Some(peers) })
    }

    async fn abandon(self: Box<Self>) -> Result<(), BackendError> {
        if let Some(cloud) = self.cloud {
            cloud.abandon().await?;
        }
        self.overlay.abandon().await
    }
}

struct HybridActive {
    cloud: Box<dyn Active>,
    overlay: Box<dyn Active>,
    data: LeaseData,
}

#[async_trait]
impl Active for HybridActive {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    async fn own_lease_changed(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.overlay.own_lease_changed(own).await?;
        self.cloud.own_lease_changed(own).await
    }

    async fn check(&mut self, own: &Lease, peers: &crate::lease::LeaseMap, forced: bool) -> Result<(), BackendError> {
        self.cloud.check(own, peers, forced).await
    }

    fn unreadable_leases(&mut self, keys: &std::collections::BTreeSet<crate::lease::LeaseKey>) {
        self.cloud.unreadable_leases(keys);
    }

    fn own_lease_lapsed(&mut self) {
        self.cloud.own_lease_lapsed();
    }

    /// Our cloud route first, so that peers still sending to us move to vxlan, then the device.
    async fn teardown(self: Box<Self>) -> Result<(), BackendError> {
        let HybridActive { cloud, overlay, .. } = *self;
        let cloud = cloud.teardown().await;
        let overlay = overlay.teardown().await;
        cloud.and(overlay)
    }
}
