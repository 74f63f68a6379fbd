//! A Kubernetes node read as a lease: the subnet is its `spec.podCIDR`, the attributes are
//! flannel's annotations on it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;

use super::annotations::AnnotationNames;
use crate::lease::{self, BackendData, Expiry, LeaseAttrs, LeaseKey};
use crate::store::{RawLease, Revision};

/// Why a node managed by flannel or weft cannot be read as a lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeSkip {
    #[error("node {node:?} has no spec.podCIDR")]
    NoPodCidr { node: String },
    #[error("node {node:?}: spec.podCIDR {value:?} is not a CIDR")]
    BadPodCidr { node: String, value: String },
    #[error("node {node:?}: annotation {key} = {value:?} is not an IP address of its family")]
    BadPublicIp { node: String, key: String, value: String },
    #[error("node {node:?}: annotation {key} is not JSON: {reason}")]
    BadBackendData { node: String, key: String, reason: String },
}

/// What a node says about leases.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeLease {
    /// Neither flannel nor weft has annotated it yet: not a lease, nothing to warn about.
    Unmanaged,
    Lease {
        /// The IPv4 pod subnet and, on a dual-stack node that publishes its IPv6 address, the
        /// IPv6 one.
        key: LeaseKey,
        attrs: LeaseAttrs,
    },
}

pub fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

pub fn annotations(node: &Node) -> BTreeMap<String, String> {
    node.metadata.annotations.clone().unwrap_or_default()
}

/// The API server's resourceVersion as a revision. It is opaque by contract, but every real API
/// server hands out etcd revisions; anything else reads as 0, which only weakens ordering hints.
pub fn revision(resource_version: Option<&str>) -> Revision {
    resource_version.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The node's pod subnets of each family, as flannel reads them: by family, not by position in
/// `spec.podCIDRs` (else `spec.podCIDR`). `None` while the controller manager has not assigned
/// one.
pub fn pod_cidrs(node: &Node) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), NodeSkip> {
    let spec = node.spec.as_ref();
    let listed = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    let single = spec.and_then(|s| s.pod_cidr.clone()).filter(|c| !c.is_empty());
    let candidates = if listed.is_empty() { single.into_iter().collect() } else { listed };
    let (mut v4, mut v6) = (None, None);
    for value in candidates {
        let net: IpNet =
            value.parse().map_err(|_| NodeSkip::BadPodCidr { node: name(node).to_string(), value: value.clone() })?;
        match net {
            IpNet::V4(net) => v4 = v4.or(Some(net.trunc())),
            IpNet::V6(net) => v6 = v6.or(Some(net.trunc())),
        }
    }
    Ok((v4, v6))
}

/// Reads a node as flannel's `nodeToLease` does.
pub fn read(names: &AnnotationNames, node: &Node) -> Result<NodeLease, NodeSkip> {
    let notes = annotations(node);
    if !names.is_managed(&notes) {
        return Ok(NodeLease::Unmanaged);
    }
    let node_name = name(node).to_string();
    let (subnet, subnet_v6) = pod_cidrs(node)?;
    if subnet.is_none() && subnet_v6.is_none() {
        return Err(NodeSkip::NoPodCidr { node: node_name });
    }
    // The IPv4 side needs the node's public IPv4 address; an IPv6-only node (no IPv4 pod CIDR)
    // publishes none, and is 0.0.0.0 to the lease as flannel reads it.
    let public_ip = match subnet {
        Some(_) => {
            let ip_text = notes.get(&names.public_ip).cloned().unwrap_or_default();
            ip_text.parse().map_err(|_| NodeSkip::BadPublicIp {
                node: node_name.clone(),
                key: names.public_ip.clone(),
                value: ip_text.clone(),
            })?
        }
        None => Ipv4Addr::UNSPECIFIED,
    };
    let backend_data = data_annotation(&notes, &names.backend_data, &node_name)?;
    let backend_type = notes.get(&names.backend_type).cloned().unwrap_or_default();
    let mut attrs = LeaseAttrs::new(public_ip, &backend_type, backend_data);
    // The IPv6 side counts once the node publishes its IPv6 address.
    let mut key = LeaseKey { subnet, subnet_v6: None };
    if let (Some(v6), Some(text)) = (subnet_v6, notes.get(&names.public_ipv6)) {
        let public_ipv6: Ipv6Addr = text.parse().map_err(|_| NodeSkip::BadPublicIp {
            node: node_name.clone(),
            key: names.public_ipv6.clone(),
            value: text.clone(),
        })?;
        let data = data_annotation(&notes, &names.backend_v6_data, &node_name)?;
        attrs = attrs.with_v6(public_ipv6, data);
        key.subnet_v6 = Some(v6);
    }
    if key.subnet.is_none() && key.subnet_v6.is_none() {
        // IPv6-only, and its agent has not published its address yet.
        let value = String::new();
        return Err(NodeSkip::BadPublicIp { node: node_name, key: names.public_ipv6.clone(), value });
    }
    Ok(NodeLease::Lease { key, attrs })
}

/// A backend data annotation (`backend-data`, `backend-v6-data`). A vxlan node without its VTEP
/// yet carries none: that reads as `null`.
fn data_annotation(notes: &BTreeMap<String, String>, key: &str, node: &str) -> Result<BackendData, NodeSkip> {
    match notes.get(key) {
        None => Ok(BackendData::null()),
        Some(text) => serde_json::from_str::<BackendData>(text).map_err(|e| NodeSkip::BadBackendData {
            node: node.to_string(),
            key: key.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The lease as the store trait carries it. Kubernetes leases never expire: the node is the
/// lease, and it goes when the node goes.
pub fn raw(key: LeaseKey, attrs_json: String, revision: Revision) -> RawLease {
    RawLease {
        key: lease::subnet_key(key),
        value: attrs_json.into_bytes(),
        expiry: Expiry::Never,
        mod_revision: revision,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub(crate) fn node(name: &str, pod_cidr: Option<&str>, notes: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some("42".into()),
                annotations: Some(
                    notes.iter().map(|(k, v)| (format!("flannel.alpha.coreos.com/{k}"), v.to_string())).collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec { pod_cidr: pod_cidr.map(String::from), ..Default::default() }),
            ..Default::default()
        }
    }

    pub(crate) fn flannel_node(name: &str, pod_cidr: &str, ip: &str) -> Node {
        node(
            name,
            Some(pod_cidr),
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("backend-data", r#"{"VNI":1,"VtepMAC":"6e:0b:1c:3a:9f:01"}"#),
                ("public-ip", ip),
            ],
        )
    }

    /// A node whose only pod CIDR is `v6` (an IPv6-only cluster's), with `notes`.
    pub(crate) fn ipv6_only_node(name: &str, v6: &str, notes: &[(&str, &str)]) -> Node {
        let mut n = node(name, Some(v6), notes);
        if let Some(spec) = n.spec.as_mut() {
            spec.pod_cidrs = Some(vec![v6.into()]);
        }
        n
    }

    /// The annotations flannel writes on an IPv6-only vxlan node: no `public-ip`, no
    /// `backend-data`.
    pub(crate) fn flannel_ipv6_only_node(name: &str, v6: &str, ip6: &str) -> Node {
        ipv6_only_node(
            name,
            v6,
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("backend-v6-data", r#"{"VNI":1,"VtepMAC":"6e:0b:1c:3a:9f:61"}"#),
                ("public-ipv6", ip6),
            ],
        )
    }

    fn names() -> AnnotationNames {
        AnnotationNames::new("flannel.alpha.coreos.com").unwrap()
    }

    #[test]
    fn reads_a_flannel_node() {
        let lease = read(&names(), &flannel_node("n1", "10.244.3.0/24", "198.51.100.3")).unwrap();
        let NodeLease::Lease { key, attrs } = lease else {
            panic!("not a lease: {lease:?}");
        };
        assert_eq!(key, "10.244.3.0/24".parse::<Ipv4Net>().unwrap().into());
        assert_eq!(attrs.public_ip, Ipv4Addr::new(198, 51, 100, 3));
        assert_eq!(attrs.backend_type, "vxlan");
        assert_eq!(attrs.backend_data.str_field("VtepMAC").as_deref(), Some("6e:0b:1c:3a:9f:01"));
    }

    #[test]
    fn unmanaged_nodes_are_not_leases() {
        let plain = node("n1", Some("10.244.3.0/24"), &[]);
        assert_eq!(read(&names(), &plain), Ok(NodeLease::Unmanaged));
    }

    #[test]
    fn broken_nodes_name_the_node_and_the_problem() {
        let cases = [
            node("a", None, &[("kube-subnet-manager", "true"), ("public-ip", "198.51.100.1")]),
            node("b", Some("banana"), &[("kube-subnet-manager", "true")]),
            node("c", Some("10.244.1.0/24"), &[("kube-subnet-manager", "true"), ("public-ip", "x")]),
            node(
                "d",
                Some("10.244.1.0/24"),
                &[("kube-subnet-manager", "true"), ("public-ip", "198.51.100.1"), ("backend-data", "{")],
            ),
        ];
        for (node, needle) in cases.iter().zip(["podCIDR", "banana", "public-ip", "backend-data"]) {
            let err = read(&names(), node).unwrap_err().to_string();
            assert!(err.contains(&format!("{:?}", name(node))), "{err}");
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn dual_stack_nodes_use_their_ipv4_cidr() {
        let mut n = flannel_node("n1", "fd00:10:244:3::/64", "198.51.100.3");
        if let Some(spec) = n.spec.as_mut() {
            spec.pod_cidrs = Some(vec!["fd00:10:244:3::/64".into(), "10.244.3.0/24".into()]);
        }
        assert_eq!(pod_cidrs(&n).map(|c| c.0), Ok(Some("10.244.3.0/24".parse().unwrap())));
        let v6_only = flannel_node("n2", "fd00:10:244:3::/64", "198.51.100.3");
        assert_eq!(pod_cidrs(&v6_only).map(|c| c.0), Ok(None));
    }

    #[test]
    fn a_dual_stack_node_as_flannel_annotates_it_is_a_dual_stack_lease() {
        let mut n = node(
            "n1",
            None,
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("backend-data", r#"{"VNI":1,"VtepMAC":"6e:0b:1c:3a:9f:01"}"#),
                ("backend-v6-data", r#"{"VNI":1,"VtepMAC":"6e:0b:1c:3a:9f:61"}"#),
                ("public-ip", "198.51.100.3"),
                ("public-ipv6", "2001:db8::3"),
            ],
        );
        n.spec = Some(NodeSpec {
            pod_cidrs: Some(vec!["10.244.3.0/24".into(), "2001:db8:42:3::/64".into()]),
            ..Default::default()
        });
        let NodeLease::Lease { key, attrs } = read(&names(), &n).unwrap() else { panic!("a lease") };
        assert_eq!(key.to_string(), "10.244.3.0-24&2001:db8:42:3::-64");
        assert_eq!(attrs.public_ipv6(), Some("2001:db8::3".parse().unwrap()));
        assert_eq!(attrs.backend_v6_data().str_field("VtepMAC").as_deref(), Some("6e:0b:1c:3a:9f:61"));
        // Without its IPv6 address published, the node is an IPv4 lease (flannel's IPv4-only peers).
        let mut notes = n.metadata.annotations.take().unwrap();
        notes.remove("flannel.alpha.coreos.com/public-ipv6");
        n.metadata.annotations = Some(notes);
        let NodeLease::Lease { key, .. } = read(&names(), &n).unwrap() else { panic!("a lease") };
        assert_eq!(key.subnet_v6, None);
    }

    #[test]
    fn an_ipv6_only_node_is_an_ipv6_only_lease() {
        let n = flannel_ipv6_only_node("n1", "2001:db8:42:3::/64", "2001:db8::3");
        assert_eq!(pod_cidrs(&n), Ok((None, Some("2001:db8:42:3::/64".parse().unwrap()))));
        let NodeLease::Lease { key, attrs } = read(&names(), &n).unwrap() else { panic!("a lease") };
        assert_eq!(key, LeaseKey::ipv6_only("2001:db8:42:3::/64".parse().unwrap()));
        assert_eq!(key.to_string(), "0.0.0.0-0&2001:db8:42:3::-64", "flannel's IPv6-only key");
        assert_eq!(attrs.public_ip, Ipv4Addr::UNSPECIFIED, "flannel reads no public-ip with IPv4 off");
        assert_eq!(attrs.public_ipv6(), Some("2001:db8::3".parse().unwrap()));
        assert_eq!(attrs.backend_type, "vxlan");
        assert_eq!(attrs.backend_v6_data().str_field("VtepMAC").as_deref(), Some("6e:0b:1c:3a:9f:61"));
        assert_eq!(attrs.backend_data.to_string(), "null", "no IPv4 backend data");
        // As the store hands it on: flannel's key, PublicIP 0.0.0.0.
        let raw = raw(key, attrs.to_json(), 42);
        assert_eq!(raw.key, "0.0.0.0-0&2001:db8:42:3::-64");
        let lease = raw.parse().unwrap();
        assert_eq!((lease.subnet, lease.subnet_v6), (None, Some("2001:db8:42:3::/64".parse().unwrap())));
        assert_eq!(lease.attrs.public_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(lease.attrs.public_ipv6(), Some("2001:db8::3".parse().unwrap()));
    }

    #[test]
    fn an_ipv6_only_node_with_a_single_pod_cidr_field_is_ipv6_only_too() {
        // Older API servers (or hand-made nodes) fill spec.podCIDR alone.
        let mut n = flannel_ipv6_only_node("n1", "2001:db8:42:4::/64", "2001:db8::4");
        if let Some(spec) = n.spec.as_mut() {
            spec.pod_cidrs = None;
        }
        let NodeLease::Lease { key, .. } = read(&names(), &n).unwrap() else { panic!("a lease") };
        assert_eq!(key.to_string(), "0.0.0.0-0&2001:db8:42:4::-64");
    }

    #[test]
    fn an_ipv6_only_node_needs_no_public_ip_but_its_public_ipv6() {
        // A public-ip left from an earlier run is not read: the lease says 0.0.0.0.
        let mut n = flannel_ipv6_only_node("n1", "2001:db8:42:3::/64", "2001:db8::3");
        n.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("flannel.alpha.coreos.com/public-ip".into(), "198.51.100.3".into());
        let NodeLease::Lease { attrs, .. } = read(&names(), &n).unwrap() else { panic!("a lease") };
        assert_eq!(attrs.public_ip, Ipv4Addr::UNSPECIFIED);
        // Its agent has not published its IPv6 address yet: skipped, naming the node and the
        // annotation it waits for.
        let early = ipv6_only_node(
            "n2",
            "2001:db8:42:5::/64",
            &[("kube-subnet-manager", "true"), ("backend-type", "host-gw"), ("public-ip", "198.51.100.5")],
        );
        let err = read(&names(), &early).unwrap_err();
        assert!(matches!(&err, NodeSkip::BadPublicIp { key, .. } if key == "flannel.alpha.coreos.com/public-ipv6"));
        let text = err.to_string();
        assert!(text.contains("\"n2\"") && text.contains("flannel.alpha.coreos.com/public-ipv6"), "{text}");
        // An address of the wrong family is no better.
        let wrong = ipv6_only_node(
            "n3",
            "2001:db8:42:6::/64",
            &[("kube-subnet-manager", "true"), ("public-ipv6", "198.51.100.6")],
        );
        let text = read(&names(), &wrong).unwrap_err().to_string();
        assert!(text.contains("\"n3\"") && text.contains("public-ipv6") && text.contains("198.51.100.6"), "{text}");
    }

    #[test]
    fn revisions_are_parsed_when_numeric() {
        assert_eq!(revision(Some("1234")), 1234);
        assert_eq!(revision(Some("opaque")), 0);
        assert_eq!(revision(None), 0);
    }
}
