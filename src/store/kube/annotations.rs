//! flannel's node annotations: their names under a prefix, and what an agent writes on its own
//! node. Pure, so the byte-for-byte compatibility with flannel is checked by unit tests.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use crate::lease::LeaseAttrs;

/// The value flannel gives `kube-subnet-manager` on every node it manages.
const MANAGED: &str = "true";

/// The annotation names under one prefix, as flannel derives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationNames {
    pub subnet_kube_managed: String,
    pub backend_data: String,
    pub backend_type: String,
    pub public_ip: String,
    pub public_ip_overwrite: String,
    /// Dual-stack: the IPv6 public address and the backend's IPv6 data.
    pub public_ipv6: String,
    pub backend_v6_data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation_prefix {prefix:?}: {reason}")]
pub struct PrefixError {
    pub prefix: String,
    pub reason: &'static str,
}

/// Kubernetes' annotation key shape: a DNS name, one slash, then an optional name stem.
static PREFIX_SHAPE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$").expect("valid regex"));

impl AnnotationNames {
    /// flannel's rules: `example.com` becomes `example.com/`, `example.com/weft` becomes
    /// `example.com/weft-`; anything else must already end in `/` or `-`.
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        let error = |reason| PrefixError { prefix: prefix.to_string(), reason };
        let mut full = prefix.to_string();
        match prefix.matches('/').count() {
            0 => full.push('/'),
            1 => {}
            _ => return Err(error("may contain at most one slash")),
        }
        if !full.ends_with('/') && !full.ends_with('-') {
            full.push('-');
        }
        if !PREFIX_SHAPE.is_match(&full) {
            return Err(error("must look like a DNS name, a slash and an optional lowercase stem (fqdn/[0-9a-z_-]*)"));
        }
        Ok(AnnotationNames {
            subnet_kube_managed: format!("{full}kube-subnet-manager"),
            backend_data: format!("{full}backend-data"),
            backend_type: format!("{full}backend-type"),
            public_ip: format!("{full}public-ip"),
            public_ip_overwrite: format!("{full}public-ip-overwrite"),
            public_ipv6: format!("{full}public-ipv6"),
            backend_v6_data: format!("{full}backend-v6-data"),
        })
    }

    /// Whether flannel (or weft) manages this node's lease.
    pub fn is_managed(&self, annotations: &BTreeMap<String, String>) -> bool {
        annotations.get(&self.subnet_kube_managed).map(String::as_str) == Some(MANAGED)
    }

    /// The annotations to change on our own node so that it carries `attrs`, as flannel's
    /// `AcquireLease` would write them; empty when the node is already up to date (flannel then
    /// sends no patch either).
    pub fn own_patch(&self, current: &BTreeMap<String, String>, attrs: &LeaseAttrs) -> BTreeMap<String, String> {
        let get = |key: &String| current.get(key).map(String::as_str).unwrap_or("");
        // Go's json.RawMessage of a missing value is `null`, and that is what flannel stores.
        let data = attrs.backend_data.to_string();
        let ip = attrs.public_ip.to_string();
        let overwrite = get(&self.public_ip_overwrite);
        // A dual-stack node's IPv6 side, as flannel writes it: the address, and the v6 data
        // (vxlan's once its IPv6 VTEP is known, `null` for the others).
        let v6: Vec<(&String, String)> = match attrs.public_ipv6() {
            Some(ip6) => {
                vec![(&self.public_ipv6, ip6.to_string()), (&self.backend_v6_data, attrs.backend_v6_data().to_string())]
            }
            None => Vec::new(),
        };
        // An IPv6-only node (0.0.0.0 for its IPv4 address) carries no IPv4 annotations, as
        // flannel writes it with EnableIPv4 off.
        let ipv6_only = attrs.public_ip.is_unspecified();
        let v4_stale =
            get(&self.backend_data) != data || get(&self.public_ip) != ip || (!overwrite.is_empty() && overwrite != ip);
        let stale = v6.iter().any(|(key, value)| get(key) != value)
            || (!ipv6_only && v4_stale)
            || get(&self.backend_type) != attrs.backend_type
            || get(&self.subnet_kube_managed) != MANAGED;
        let mut wanted = BTreeMap::new();
        if !stale {
            return wanted;
        }
        wanted.insert(self.backend_type.clone(), attrs.backend_type.to_string());
        // flannel leaves a vxlan node's data and address alone until the VTEP is known (its
        // data is `null` before then); every other backend writes them at once.
        let vtep_known = if ipv6_only { attrs.backend_v6_data().to_string() != "null" } else { data != "null" };
        if attrs.backend_type != "vxlan" || vtep_known {
            if !ipv6_only {
                wanted.insert(self.backend_data.clone(), data);
                // An operator's overwrite wins: it is the address other hosts must use for us
                // (behind NAT, or a second interface).
                let public = if overwrite.is_empty() { ip } else { overwrite.to_string() };
                wanted.insert(self.public_ip.clone(), public);
            }
            wanted.extend(v6.into_iter().map(|(key, value)| (key.clone(), value)));
        }
        wanted.insert(self.subnet_kube_managed.clone(), MANAGED.to_string());
        // Send only what changes, as flannel's two-way strategic merge patch does.
        wanted.retain(|key, value| current.get(key) != Some(value));
        wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn names() -> AnnotationNames {
        AnnotationNames::new("flannel.alpha.coreos.com").unwrap()
    }

    fn vxlan() -> LeaseAttrs {
        LeaseAttrs::new(
            Ipv4Addr::new(198, 51, 100, 7),
            "vxlan",
            serde_json::json!({"VNI": 1, "VtepMAC": "6e:0b:1c:3a:9f:01"}),
        )
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn prefixes_follow_flannels_rules() {
        let n = names();
        assert_eq!(n.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(n.subnet_kube_managed, "flannel.alpha.coreos.com/kube-subnet-manager");
        assert_eq!(n.public_ip_overwrite, "flannel.alpha.coreos.com/public-ip-overwrite");
        let stem = AnnotationNames::new("example.com/weft").unwrap();
        assert_eq!(stem.public_ip, "example.com/weft-public-ip");
        let dash = AnnotationNames::new("example.com/weft-").unwrap();
        assert_eq!(dash.public_ip, "example.com/weft-public-ip");
        for bad in ["a/b/c", "nodots", "Example.com", "example.com/UP"] {
            assert!(AnnotationNames::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_dual_stack_node_gets_flannels_ipv6_annotations_too() {
        let attrs = vxlan()
            .with_v6("2001:db8::7".parse().unwrap(), serde_json::json!({"VNI": 1, "VtepMAC": "6e:0b:1c:3a:9f:61"}));
        let patch = names().own_patch(&BTreeMap::new(), &attrs);
        assert_eq!(patch.get("flannel.alpha.coreos.com/public-ipv6").map(String::as_str), Some("2001:db8::7"));
        assert_eq!(
            patch.get("flannel.alpha.coreos.com/backend-v6-data").map(String::as_str),
            Some(r#"{"VNI":1,"VtepMAC":"6e:0b:1c:3a:9f:61"}"#)
        );
        assert_eq!(patch.len(), 6);
        // Written: nothing more to send.
        assert!(names().own_patch(&patch, &attrs).is_empty());
    }

    /// An IPv6-only host's attributes: 0.0.0.0 for its IPv4 address, as flannel leases it.
    fn ipv6_only(backend: &str, v6_data: serde_json::Value) -> LeaseAttrs {
        LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, backend, serde_json::Value::Null)
            .with_v6("2001:db8::7".parse().unwrap(), v6_data)
    }

    #[test]
    fn an_ipv6_only_node_gets_only_flannels_ipv6_annotations() {
        let n = names();
        for backend in ["host-gw", "alloc"] {
            let attrs = ipv6_only(backend, serde_json::Value::Null);
            let patch = n.own_patch(&BTreeMap::new(), &attrs);
            assert_eq!(
                patch,
                map(&[
                    ("flannel.alpha.coreos.com/backend-type", backend),
                    ("flannel.alpha.coreos.com/backend-v6-data", "null"),
                    ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
                    ("flannel.alpha.coreos.com/public-ipv6", "2001:db8::7"),
                ]),
                "{backend}"
            );
            // Written: nothing more to send, though public-ip and backend-data are absent.
            assert!(n.own_patch(&patch, &attrs).is_empty(), "{backend}");
        }
    }

    #[test]
    fn an_ipv6_only_node_leaves_ipv4_annotations_alone() {
        let n = names();
        let attrs = ipv6_only("host-gw", serde_json::Value::Null);
        // Left from an earlier IPv4 run, and an operator's overwrite: neither is written nor
        // makes the node stale.
        let mut current = n.own_patch(&BTreeMap::new(), &attrs);
        current.insert(n.public_ip.clone(), "198.51.100.7".into());
        current.insert(n.backend_data.clone(), r#"{"VNI":1}"#.into());
        current.insert(n.public_ip_overwrite.clone(), "203.0.113.50".into());
        assert!(n.own_patch(&current, &attrs).is_empty());
        // A change on the IPv6 side is sent alone, still without public-ip.
        current.insert(n.public_ipv6.clone(), "2001:db8::99".into());
        assert_eq!(n.own_patch(&current, &attrs), map(&[("flannel.alpha.coreos.com/public-ipv6", "2001:db8::7")]));
    }

    #[test]
    fn ipv6_only_vxlan_waits_for_its_ipv6_vtep() {
        let n = names();
        let early = ipv6_only("vxlan", serde_json::Value::Null);
        let patch = n.own_patch(&BTreeMap::new(), &early);
        assert_eq!(
            patch.keys().collect::<Vec<_>>(),
            ["flannel.alpha.coreos.com/backend-type", "flannel.alpha.coreos.com/kube-subnet-manager"]
        );
        assert!(n.own_patch(&patch, &early).is_empty(), "nothing more until the VTEP is known");
        // The IPv6 VTEP is known (the IPv4 data stays null: there is no flannel.1).
        let ready = ipv6_only("vxlan", serde_json::json!({"VNI": 1, "VtepMAC": "6e:0b:1c:3a:9f:61"}));
        assert_eq!(
            n.own_patch(&patch, &ready),
            map(&[
                ("flannel.alpha.coreos.com/backend-v6-data", r#"{"VNI":1,"VtepMAC":"6e:0b:1c:3a:9f:61"}"#),
                ("flannel.alpha.coreos.com/public-ipv6", "2001:db8::7"),
            ])
        );
        let fresh = n.own_patch(&BTreeMap::new(), &ready);
        assert_eq!(fresh.len(), 4, "{fresh:?}");
        assert!(!fresh.contains_key(&n.public_ip) && !fresh.contains_key(&n.backend_data), "{fresh:?}");
    }

    #[test]
    fn a_fresh_node_gets_flannels_four_annotations() {
        let patch = names().own_patch(&BTreeMap::new(), &vxlan());
        assert_eq!(
            patch,
            map(&[
                ("flannel.alpha.coreos.com/backend-data", r#"{"VNI":1,"VtepMAC":"6e:0b:1c:3a:9f:01"}"#),
                ("flannel.alpha.coreos.com/backend-type", "vxlan"),
                ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
                ("flannel.alpha.coreos.com/public-ip", "198.51.100.7"),
            ])
        );
    }

    #[test]
    fn backends_without_data_write_null() {
        let alloc = LeaseAttrs::new(Ipv4Addr::new(198, 51, 100, 7), "alloc", serde_json::Value::Null);
        let patch = names().own_patch(&BTreeMap::new(), &alloc);
        assert_eq!(patch["flannel.alpha.coreos.com/backend-data"], "null");
        assert_eq!(patch["flannel.alpha.coreos.com/public-ip"], "198.51.100.7");
    }

    #[test]
    fn vxlan_without_a_vtep_leaves_data_and_address_alone() {
        let early = LeaseAttrs::new(Ipv4Addr::new(198, 51, 100, 7), "vxlan", serde_json::Value::Null);
        let patch = names().own_patch(&BTreeMap::new(), &early);
        assert_eq!(
            patch.keys().collect::<Vec<_>>(),
            ["flannel.alpha.coreos.com/backend-type", "flannel.alpha.coreos.com/kube-subnet-manager"]
        );
    }

    #[test]
    fn an_up_to_date_node_is_not_patched() {
        let n = names();
        let current = n.own_patch(&BTreeMap::new(), &vxlan());
        assert!(n.own_patch(&current, &vxlan()).is_empty());
    }

    #[test]
    fn only_changed_annotations_are_sent() {
        let n = names();
        let mut current = n.own_patch(&BTreeMap::new(), &vxlan());
        current.insert(n.public_ip.clone(), "198.51.100.99".into());
        assert_eq!(n.own_patch(&current, &vxlan()), map(&[("flannel.alpha.coreos.com/public-ip", "198.51.100.7")]));
    }

    #[test]
    fn public_ip_overwrite_wins() {
        let n = names();
        let current = map(&[("flannel.alpha.coreos.com/public-ip-overwrite", "203.0.113.50")]);
        let patch = n.own_patch(&current, &vxlan());
        assert_eq!(patch["flannel.alpha.coreos.com/public-ip"], "203.0.113.50");
        // flannel keeps patching while the overwrite differs from its own address; the values
        // stay the same, so nothing but the (idempotent) patch repeats.
        let mut applied = current.clone();
        applied.extend(patch);
        assert!(n.own_patch(&applied, &vxlan()).is_empty());
    }

    #[test]
    fn managed_means_exactly_true() {
        let n = names();
        assert!(n.is_managed(&map(&[("flannel.alpha.coreos.com/kube-subnet-manager", "true")])));
        assert!(!n.is_managed(&map(&[("flannel.alpha.coreos.com/kube-subnet-manager", "yes")])));
        assert!(!n.is_managed(&BTreeMap::new()));
    }
}
