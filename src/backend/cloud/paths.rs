//! Which peers the cloud carries for this host, and the kernel mapping that sends every other
//! peer over vxlan (`overflow = "vxlan"`). A host decides by its *own* route table(s): those are
//! what the VPC applies to the packets it sends. A dual-stack peer rides the cloud only when the
//! cloud carries both of its subnets; otherwise vxlan takes both (one path per peer).

use std::collections::BTreeSet;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::watch;

use crate::backend::route_sync::PeerObjects;
use crate::kernel::KernelState;
use crate::lease::{BackendData, Lease, LeaseKey};

/// The peer subnets our own route table(s) route to a host, as the last pass saw them. Shared by
/// the engine (which writes it) and the kernel mapping and the data plane (which read it).
#[derive(Clone)]
pub struct CloudPaths {
    carried: Arc<watch::Sender<BTreeSet<IpNet>>>,
}

impl Default for CloudPaths {
    fn default() -> Self {
        CloudPaths { carried: Arc::new(watch::Sender::new(BTreeSet::new())) }
    }
}

impl CloudPaths {
    pub fn carries(&self, subnet: IpNet) -> bool {
        self.carried.borrow().contains(&subnet)
    }

    /// Whether the cloud carries every subnet of the peer holding `key`.
    pub fn carries_all(&self, key: &LeaseKey) -> bool {
        let carried = self.carried.borrow();
        key.subnets().all(|subnet| carried.contains(&subnet))
    }

    /// Replaces what the cloud carries; subscribers hear of it only when it changed.
    pub fn publish(&self, carried: BTreeSet<IpNet>) {
        self.carried.send_if_modified(|current| {
            let changed = *current != carried;
            *current = carried;
            changed
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<BTreeSet<IpNet>> {
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
        if self.paths.carries_all(&lease.key()) {
            return Ok(KernelState::default());
        }
        // A peer without a VTEP (a cloud-only agent: flannel's aws-vpc, or weft without
        // overflow) can be reached only through the cloud; nothing to install for it. An
        // IPv6-only peer's VTEP is in its `BackendV6Data` alone (its `BackendData` is null).
        let has_vtep = |data: &BackendData| data.str_field("VtepMAC").is_some();
        if !has_vtep(&lease.attrs.backend_data) && !has_vtep(lease.attrs.backend_v6_data()) {
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

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// An overlay that installs one neighbour per peer, so its use shows.
    struct OneNeighbour;

    impl PeerObjects for OneNeighbour {
        fn objects(&self, lease: &Lease) -> Result<KernelState, String> {
            let mut state = KernelState::default();
            state.add_neighbour(NeighbourSpec {
                ifindex: 9,
                ip: lease.id().network(),
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
            });
            Ok(state)
        }
    }

    fn lease(subnet: &str, data: serde_json::Value) -> Lease {
        Lease {
            subnet: Some(subnet.parse().unwrap()),
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
        let dual = Lease { subnet_v6: Some("2001:db8:42:2::/64".parse().unwrap()), ..hybrid };
        assert!(!mapping.objects(&dual).unwrap().is_empty(), "its IPv6 subnet is not carried: vxlan for both");
        paths.publish([net("10.244.2.0/24"), net("2001:db8:42:2::/64")].into());
        assert!(mapping.objects(&dual).unwrap().is_empty(), "both carried");
    }

    #[test]
    fn an_ipv6_only_peer_goes_over_the_overlay_by_its_ipv6_vtep() {
        let paths = CloudPaths::default();
        let mapping = Overflow { paths: paths.clone(), overlay: Box::new(OneNeighbour) };
        // As an IPv6-only hybrid host publishes it: `0.0.0.0`, no `BackendData`, the VTEP in
        // `BackendV6Data`.
        let attrs = LeaseAttrs::new(std::net::Ipv4Addr::UNSPECIFIED, "aws-vpc", serde_json::Value::Null)
            .with_v6("2001:db8::7".parse().unwrap(), serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:62"}));
        let peer = Lease {
            subnet: None,
            subnet_v6: Some("2001:db8:42:2::/64".parse().unwrap()),
            attrs,
            expiry: Expiry::At(SystemTime::now() + Duration::from_secs(60)),
        };
        assert!(!mapping.objects(&peer).unwrap().is_empty(), "not carried: over vxlan by its IPv6 VTEP");
        paths.publish([net("2001:db8:42:2::/64")].into());
        assert!(mapping.objects(&peer).unwrap().is_empty(), "the cloud carries its IPv6 subnet");
        let cloud_only = Lease {
            attrs: LeaseAttrs::new(std::net::Ipv4Addr::UNSPECIFIED, "aws-vpc", serde_json::Value::Null)
                .with_v6("2001:db8::8".parse().unwrap(), serde_json::Value::Null),
            subnet_v6: Some("2001:db8:42:3::/64".parse().unwrap()),
            ..peer
        };
        assert!(mapping.objects(&cloud_only).unwrap().is_empty(), "no VTEP of either family: nothing to install");
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
        let peer = lease("10.244.2.0/24", serde_json::Value::Null);
        let dual = Lease {
            subnet_v6: Some("2001:db8:42:3::/64".parse().unwrap()),
            ..lease("10.244.3.0/24", serde_json::Value::Null)
        };
        let peers = [(peer.id(), peer.clone()), (dual.id(), dual.clone())].into();
        let changed = crate::backend::cloud_paths_changed(&before, &after, &peers);
        assert_eq!(changed, vec![peer.id()], "a carried subnet nobody leases is no peer's change");
        let v6_only: BTreeSet<IpNet> = [net("2001:db8:42:3::/64"), net("2001:db8:42:9::/64")].into();
        let changed = crate::backend::cloud_paths_changed(&before, &v6_only, &peers);
        assert_eq!(changed, vec![dual.id()], "an IPv6 subnet's path changed: its holder is mapped again");
    }
}
