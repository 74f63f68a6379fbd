//! Turns the node watcher's events into the lease updates every store yields. Pure: the watcher
//! (list, watch, relist on 410 Gone) is kube-rs'; this only keeps which node yielded which key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::Event;
use tracing::{debug, warn};

use super::annotations::AnnotationNames;
use super::node::{self, NodeLease, NodeSkip};
use crate::lease::LeaseKey;
use crate::store::{LeaseUpdate, RawLease};

/// This agent's node, and the lease the agent last wrote on it.
#[derive(Debug, Default)]
pub struct OwnNode {
    pub name: String,
    /// The agent's own key and attribute JSON. Our node is reported with these rather than with
    /// what the annotations say: `public-ip-overwrite` makes the stored address differ from the
    /// agent's on purpose, and an IPv6 annotation left by an earlier dual-stack run would make the
    /// key differ; the agent must take neither for someone else holding its subnet.
    pub written: Mutex<Option<(LeaseKey, String)>>,
}

impl OwnNode {
    pub fn new(name: &str) -> Self {
        OwnNode { name: name.to_string(), written: Mutex::new(None) }
    }

    fn written(&self) -> Option<(LeaseKey, String)> {
        self.written.lock().map(|w| w.clone()).unwrap_or_default()
    }

    pub fn remember(&self, key: LeaseKey, attrs_json: &str) {
        if let Ok(mut w) = self.written.lock() {
            *w = Some((key, attrs_json.to_string()));
        }
    }
}

/// Reads one node as a raw lease; `Ok(None)` for nodes nobody manages.
pub fn lease_of(names: &AnnotationNames, own: &OwnNode, node: &Node) -> Result<Option<RawLease>, NodeSkip> {
    let NodeLease::Lease { key, attrs } = node::read(names, node)? else {
        return Ok(None);
    };
    let (key, json) = match own.written() {
        // Our node's naming subnet is the one we wrote for, or it was reassigned: then it is read.
        Some((written, json)) if node::name(node) == own.name && written.id() == key.id() => (written, json),
        _ => (key, attrs.to_json()),
    };
    let revision = node::revision(node.metadata.resource_version.as_deref());
    Ok(Some(node::raw(key, json, revision)))
}

/// Follows the watcher's events.
pub struct NodeTracker {
    names: AnnotationNames,
    own: Arc<OwnNode>,
    /// Node name → the key its lease has, to remove it when the node goes or changes subnet.
    known: HashMap<String, String>,
    /// Node name → the last warning about it: a broken node warns when it breaks, not on every
    /// heartbeat update of its status.
    warned: HashMap<String, String>,
    /// Nodes of a (re)list in progress.
    listing: Option<Vec<(String, RawLease)>>,
}

impl NodeTracker {
    pub fn new(names: AnnotationNames, own: Arc<OwnNode>) -> Self {
        NodeTracker { names, own, known: HashMap::new(), warned: HashMap::new(), listing: None }
    }

    pub fn on_event(&mut self, event: Event<Node>) -> Vec<LeaseUpdate> {
        match event {
            Event::Init => {
                debug!("listing nodes");
                self.listing = Some(Vec::new());
                Vec::new()
            }
            Event::InitApply(node) => {
                let name = node::name(&node).to_string();
                if let Some(lease) = self.read(&node) {
                    self.listing.get_or_insert_with(Vec::new).push((name, lease));
                }
                Vec::new()
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let revision = listed.iter().map(|(_, l)| l.mod_revision).max().unwrap_or(0);
                self.known = listed.iter().map(|(name, lease)| (name.clone(), lease.key.clone())).collect();
                let leases = listed.into_iter().map(|(_, lease)| lease).collect();
                vec![LeaseUpdate::Resync(leases, revision)]
            }
            Event::Apply(node) => self.apply(&node),
            Event::Delete(node) => {
                let name = node::name(&node);
                self.warned.remove(name);
                let revision = node::revision(node.metadata.resource_version.as_deref());
                self.known.remove(name).map(|key| LeaseUpdate::Deleted { key, revision }).into_iter().collect()
            }
        }
    }

    fn apply(&mut self, node: &Node) -> Vec<LeaseUpdate> {
        let name = node::name(node).to_string();
        let revision = node::revision(node.metadata.resource_version.as_deref());
        let lease = self.read(node);
        let old = match &lease {
            Some(lease) => self.known.insert(name, lease.key.clone()),
            None => self.known.remove(&name),
        };
        let mut updates = Vec::new();
        // A node whose subnet changed, or that turned unreadable, no longer holds its old key.
        if let Some(old) = old.filter(|old| Some(old) != lease.as_ref().map(|l| &l.key)) {
            updates.push(LeaseUpdate::Deleted { key: old, revision });
        }
        updates.extend(lease.map(LeaseUpdate::Put));
        updates
    }

    fn read(&mut self, node: &Node) -> Option<RawLease> {
        let name = node::name(node).to_string();
        match lease_of(&self.names, &self.own, node) {
            Ok(lease) => {
                self.warned.remove(&name);
                lease
            }
            Err(skip) => {
                let message = skip.to_string();
                if self.warned.get(&name) != Some(&message) {
                    warn!(node = %name, reason = %message, "skipping node: not a usable lease");
                    self.warned.insert(name, message);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::kube::node::tests::{flannel_ipv6_only_node, flannel_node, ipv6_only_node, node};

    fn tracker() -> NodeTracker {
        let names = AnnotationNames::new("flannel.alpha.coreos.com").unwrap();
        NodeTracker::new(names, Arc::new(OwnNode::new("me")))
    }

    fn keys(updates: &[LeaseUpdate]) -> Vec<String> {
        updates
            .iter()
            .map(|u| match u {
                LeaseUpdate::Put(raw) => format!("put {}", raw.key),
                LeaseUpdate::Deleted { key, .. } => format!("del {key}"),
                LeaseUpdate::Resync(all, _) => {
                    let keys: Vec<_> = all.iter().map(|r| r.key.as_str()).collect();
                    format!("resync {}", keys.join(","))
                }
            })
            .collect()
    }

    #[test]
    fn a_listing_becomes_one_resync_without_broken_nodes() {
        let mut t = tracker();
        assert!(t.on_event(Event::Init).is_empty());
        t.on_event(Event::InitApply(flannel_node("a", "10.244.1.0/24", "198.51.100.1")));
        t.on_event(Event::InitApply(node("b", None, &[("kube-subnet-manager", "true")])));
        t.on_event(Event::InitApply(node("c", Some("10.244.3.0/24"), &[])));
        assert_eq!(keys(&t.on_event(Event::InitDone)), ["resync 10.244.1.0-24"]);
    }

    #[test]
    fn changes_and_deletions_follow_the_node() {
        let mut t = tracker();
        let a = flannel_node("a", "10.244.1.0/24", "198.51.100.1");
        assert_eq!(keys(&t.on_event(Event::Apply(a.clone()))), ["put 10.244.1.0-24"]);
        let moved = flannel_node("a", "10.244.9.0/24", "198.51.100.1");
        assert_eq!(keys(&t.on_event(Event::Apply(moved.clone()))), ["del 10.244.1.0-24", "put 10.244.9.0-24"]);
        assert_eq!(keys(&t.on_event(Event::Delete(moved))), ["del 10.244.9.0-24"]);
        // A deletion of a node we never saw as a lease says nothing.
        assert!(t.on_event(Event::Delete(a)).is_empty());
    }

    #[test]
    fn a_node_that_turns_broken_loses_its_lease() {
        let mut t = tracker();
        t.on_event(Event::Apply(flannel_node("a", "10.244.1.0/24", "198.51.100.1")));
        let broken = node("a", Some("10.244.1.0/24"), &[("kube-subnet-manager", "true"), ("public-ip", "nope")]);
        assert_eq!(keys(&t.on_event(Event::Apply(broken.clone()))), ["del 10.244.1.0-24"]);
        assert!(t.on_event(Event::Apply(broken)).is_empty());
    }

    #[test]
    fn ipv6_only_nodes_are_leases_once_they_publish_their_address() {
        let mut t = tracker();
        t.on_event(Event::Init);
        t.on_event(Event::InitApply(flannel_ipv6_only_node("a", "2001:db8:42:1::/64", "2001:db8::1")));
        // Its agent has not written public-ipv6 yet: skipped, not a lease.
        let early = ipv6_only_node("b", "2001:db8:42:2::/64", &[("kube-subnet-manager", "true")]);
        t.on_event(Event::InitApply(early));
        assert_eq!(keys(&t.on_event(Event::InitDone)), ["resync 0.0.0.0-0&2001:db8:42:1::-64"]);
        let b = flannel_ipv6_only_node("b", "2001:db8:42:2::/64", "2001:db8::2");
        assert_eq!(keys(&t.on_event(Event::Apply(b.clone()))), ["put 0.0.0.0-0&2001:db8:42:2::-64"]);
        // Reassigned: the old key goes.
        let moved = flannel_ipv6_only_node("b", "2001:db8:42:9::/64", "2001:db8::2");
        assert_eq!(
            keys(&t.on_event(Event::Apply(moved.clone()))),
            ["del 0.0.0.0-0&2001:db8:42:2::-64", "put 0.0.0.0-0&2001:db8:42:9::-64"]
        );
        assert_eq!(keys(&t.on_event(Event::Delete(moved))), ["del 0.0.0.0-0&2001:db8:42:9::-64"]);
        // Its address annotation removed: it no longer is a lease.
        let mut gone = flannel_ipv6_only_node("a", "2001:db8:42:1::/64", "2001:db8::1");
        gone.metadata.annotations.get_or_insert_with(Default::default).remove("flannel.alpha.coreos.com/public-ipv6");
        assert_eq!(keys(&t.on_event(Event::Apply(gone))), ["del 0.0.0.0-0&2001:db8:42:1::-64"]);
    }

    #[test]
    fn our_ipv6_only_node_is_reported_with_what_we_wrote() {
        let names = AnnotationNames::new("flannel.alpha.coreos.com").unwrap();
        let own = Arc::new(OwnNode::new("me"));
        let key = LeaseKey::ipv6_only("2001:db8:42:5::/64".parse().unwrap());
        let written = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::9","BackendType":"host-gw"}"#;
        own.remember(key, written);
        // The annotation says another address (an operator's change); the agent sees its own.
        let me = flannel_ipv6_only_node("me", "2001:db8:42:5::/64", "2001:db8::50");
        let raw = lease_of(&names, &own, &me).unwrap().unwrap();
        assert_eq!(raw.key, "0.0.0.0-0&2001:db8:42:5::-64");
        assert_eq!(raw.parse().unwrap().attrs.public_ipv6(), Some("2001:db8::9".parse().unwrap()));
        // Reassigned to another IPv6 subnet: then the node is read as it is.
        let moved = flannel_ipv6_only_node("me", "2001:db8:42:6::/64", "2001:db8::50");
        let raw = lease_of(&names, &own, &moved).unwrap().unwrap();
        assert_eq!(raw.key, "0.0.0.0-0&2001:db8:42:6::-64");
        assert_eq!(raw.parse().unwrap().attrs.public_ipv6(), Some("2001:db8::50".parse().unwrap()));
    }

    #[test]
    fn our_node_is_reported_with_what_we_wrote() {
        let names = AnnotationNames::new("flannel.alpha.coreos.com").unwrap();
        let own = Arc::new(OwnNode::new("me"));
        let key = "10.244.5.0/24".parse::<ipnet::Ipv4Net>().unwrap().into();
        own.remember(key, r#"{"PublicIP":"198.51.100.9","PublicIPv6":null,"BackendType":"vxlan"}"#);
        // The overwrite put another address in the annotation; the agent still sees its own.
        let me = flannel_node("me", "10.244.5.0/24", "203.0.113.50");
        let raw = lease_of(&names, &own, &me).unwrap().unwrap();
        assert_eq!(raw.parse().unwrap().attrs.public_ip.to_string(), "198.51.100.9");
        let other = flannel_node("other", "10.244.6.0/24", "203.0.113.51");
        let raw = lease_of(&names, &own, &other).unwrap().unwrap();
        assert_eq!(raw.parse().unwrap().attrs.public_ip.to_string(), "203.0.113.51");
        // An IPv6 annotation left from a dual-stack run does not change the key we hold.
        let mut stale = flannel_node("me", "10.244.5.0/24", "203.0.113.50");
        if let Some(spec) = stale.spec.as_mut() {
            spec.pod_cidrs = Some(vec!["10.244.5.0/24".into(), "2001:db8:42:5::/64".into()]);
        }
        let notes = stale.metadata.annotations.get_or_insert_with(Default::default);
        notes.insert("flannel.alpha.coreos.com/public-ipv6".into(), "2001:db8::50".into());
        assert_eq!(lease_of(&names, &own, &stale).unwrap().unwrap().key, "10.244.5.0-24");
        assert_eq!(
            lease_of(&names, &Arc::new(OwnNode::new("x")), &stale).unwrap().unwrap().key,
            "10.244.5.0-24&2001:db8:42:5::-64"
        );
    }
}
