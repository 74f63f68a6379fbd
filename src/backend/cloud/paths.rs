//! Which peers the cloud carries for this host, and the kernel mapping that sends every other
//! peer over vxlan (`overflow = "vxlan"`). A host decides by its *own* route table(s): those are
//! what the VPC applies to the packets it sends.

use std::collections::BTreeSet;
use std::sync::Arc;

use ipnet::Ipv4Net;
use tokio::sync::watch;

use crate::backend::route_sync::PeerObjects;
use crate::kernel::KernelState;
use crate::lease::Lease;

/// The peer subnets our own route table(s) route to a host, as the last pass saw them. Shared by
/// the engine (which writes it) and the kernel mapping and the data plane (which read it).
#[derive(Clone)]
pub struct CloudPaths {
    carried: Arc<watch::Sender<BTreeSet<Ipv4Net>>>,
}

impl Default for CloudPaths {
    fn default() -> Self {
        CloudPaths { carried: Arc::new(watch::Sender::new(BTreeSet::new())) }
    }
}

impl CloudPaths {
    pub fn carries(&self, subnet: Ipv4Net) -> bool {
        self.carried.borrow().contains(&subnet)
    }

    /// Replaces what the cloud carries; subscribers hear of it only when it changed.
    pub fn publish(&self, carried: BTreeSet<Ipv4Net>) {
        self.carried.send_if_modified(|current| {
            let changed = *current != carried;
            *current = carried;
            changed
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<BTreeSet<Ipv4Net>> {
        self.carried.subscribe()
    }
}

/// A peer the cloud carries needs nothing in our kernel (its packets follow our default route
/// into the VPC); any other goes through the overlay's mapping.
pub struct Overflow {
    pub paths: CloudPaths,
    pub overlay: Box<dyn PeerObjects>,
}

impl PeerObjects for Overflow {
    fn objects(&self, lease: &Lease) -> Result<KernelState, String> {
        if self.paths.carries(lease.subnet) {
            return Ok(KernelState::default());
        }
        // A peer without a VTEP (a cloud-only agent: flannel's aws-vpc, or weft without
        // overflow) can be reached only through the cloud; nothing to install for it.
        if lease.attrs.backend_data.str_field("VtepMAC").is_none() {
            return Ok(KernelState::default());
        }
        self.overlay.objects(lease)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::kernel::{MacAddr, NeighbourSpec};
    use crate::lease::{Expiry, LeaseAttrs};

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// An overlay that installs one neighbour per peer, so its use shows.
    struct OneNeighbour;

    impl PeerObjects for OneNeighbour {
        fn objects(&self, lease: &Lease) -> Result<KernelState, String> {
            let mut state = KernelState::default();
            state.add_neighbour(NeighbourSpec {
                ifindex: 9,
                ip: lease.subnet.network().into(),
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
            });
            Ok(state)
        }
    }

    fn lease(subnet: &str, data: serde_json::Value) -> Lease {
        Lease {
            subnet: net(subnet),
            subnet_v6: None,
            attrs: LeaseAttrs::new("192.0.2.7".parse().unwrap(), "aws-vpc", data),
            expiry: Expiry::At(SystemTime::now() + Duration::from_secs(60)),
        }
    }

    #[test]
    fn carried_peers_get_nothing_others_the_overlay() {
        let paths = CloudPaths::default();
        let mapping = Overflow { paths: paths.clone(), overlay: Box::new(OneNeighbour) };
        let hybrid = lease("10.244.2.0/24", serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:02"}));
        let cloud_only = lease("10.244.3.0/24", serde_json::Value::Null);
        assert!(!mapping.objects(&hybrid).unwrap().is_empty(), "no cloud route yet: overlay");
        assert!(mapping.objects(&cloud_only).unwrap().is_empty(), "no VTEP: nothing we can install");
        paths.publish([net("10.244.2.0/24")].into());
        assert!(mapping.objects(&hybrid).unwrap().is_empty(), "the cloud carries it now");
    }

    #[tokio::test]
    async fn subscribers_hear_only_of_changes() {
        let paths = CloudPaths::default();
        let mut seen = paths.subscribe();
        paths.publish(BTreeSet::new());
        assert!(!seen.has_changed().unwrap());
        paths.publish([net("10.244.2.0/24")].into());
        assert!(seen.has_changed().unwrap());
        let before = BTreeSet::new();
        let after = seen.borrow_and_update().clone();
        assert_eq!(crate::backend::cloud_paths_changed(&before, &after), vec![net("10.244.2.0/24")]);
    }
}
