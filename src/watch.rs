//! Turns what the store says (single changes, or whole snapshots after a resync) into the lease
//! events a backend consumes: added, changed, removed — each exactly once, in order. Pure logic:
//! malformed entries and leases outside the network are dropped here, with a reason.

use std::collections::BTreeSet;

use ipnet::IpNet;
use tracing::debug;

use crate::lease::{self, Lease, LeaseMap};
use crate::network::{Network, SubnetSpace};
use crate::store::{LeaseUpdate, RawLease};

/// One lease (by its [`Lease::id`]) came, changed or went. The lease itself is in the watcher's
/// map ([`LeaseWatcher::leases`]), so a first listing of 10,000 leases copies none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    Added(IpNet),
    Changed(IpNet),
    Removed(IpNet),
}

impl LeaseEvent {
    pub fn subnet(&self) -> IpNet {
        match *self {
            LeaseEvent::Added(subnet) | LeaseEvent::Changed(subnet) | LeaseEvent::Removed(subnet) => subnet,
        }
    }
}

/// Why an entry from the store was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

/// The other hosts' leases as last delivered.
#[derive(Debug, Clone)]
pub struct LeaseWatcher {
    network: Network,
    /// Our lease's [`Lease::id`].
    own: Option<IpNet>,
    known: LeaseMap,
    /// Keys in the store whose value does not parse: not installed, yet held by someone, so
    /// nothing of theirs (a cloud route of either family) is judged stale.
    unreadable: BTreeSet<lease::LeaseKey>,
}

/// The result of feeding one update.
#[derive(Debug, Default)]
pub struct Delivery {
    pub events: Vec<LeaseEvent>,
    pub skipped: Vec<Skipped>,
}

impl LeaseWatcher {
    /// Watches `network`'s leases other than `own`.
    pub fn new(network: Network, own: Option<IpNet>) -> Self {
        LeaseWatcher { network, own, known: LeaseMap::new(), unreadable: BTreeSet::new() }
    }

    /// Our subnet changed (lease lost and acquired again): stop delivering the new one.
    pub fn set_own(&mut self, own: IpNet) {
        self.own = Some(own);
        self.known.remove(&own);
    }

    pub fn leases(&self) -> &LeaseMap {
        &self.known
    }

    /// Keys held by an entry that does not parse (see [`LeaseWatcher::apply`]'s skipped).
    pub fn unreadable(&self) -> &BTreeSet<lease::LeaseKey> {
        &self.unreadable
    }

    pub fn apply(&mut self, update: LeaseUpdate) -> Delivery {
        let mut delivery = Delivery::default();
        match update {
            LeaseUpdate::Put(raw) => {
                let key = lease::parse_lease_key(&raw.key).ok();
                if let Some(lease) = self.accept(&raw, &mut delivery.skipped) {
                    self.unreadable.retain(|held| held.id() != lease.id());
                    delivery.events.extend(self.upsert(lease));
                } else if let Some(key) = key {
                    // A lease we knew turned unreadable: it is gone as far as the backend knows.
                    let subnet = self.as_kept(key).id();
                    delivery.events.extend(self.known.remove(&subnet).map(|_| LeaseEvent::Removed(subnet)));
                    self.note_unreadable(key);
                }
            }
            LeaseUpdate::Deleted { key, .. } => {
                if let Ok(deleted) = lease::parse_lease_key(&key).map(|k| self.as_kept(k)) {
                    let subnet = deleted.id();
                    self.unreadable.remove(&deleted);
                    // Another key of the same IPv4 subnet (a dual-stack key beside an IPv4 one,
                    // written by someone else) is not what was deleted.
                    if self.known.get(&subnet).is_some_and(|held| held.key() == deleted) {
                        self.known.remove(&subnet);
                        delivery.events.push(LeaseEvent::Removed(subnet));
                    }
                }
            }
            LeaseUpdate::Resync(entries, _) => {
                self.unreadable.clear();
                // Consumed one by one, so each raw entry is freed once read. The map is built
                // in one go: built from a sorted run its nodes are full, built by inserts about
                // half empty, and an agent keeps it for every peer of the cluster.
                let mut fresh = Vec::with_capacity(entries.len());
                for raw in entries {
                    match self.accept(&raw, &mut delivery.skipped) {
                        Some(lease) => fresh.push((lease.id(), lease)),
                        None => {
                            if let Ok(key) = lease::parse_lease_key(&raw.key) {
                                self.note_unreadable(key);
                            }
                        }
                    }
                }
                delivery.events = self.replace_all(fresh.into_iter().collect());
            }
        }
        delivery
    }

    /// Our own subnet and subnets outside the network are not anyone's route to keep.
    fn note_unreadable(&mut self, key: lease::LeaseKey) {
        let kept = self.as_kept(key);
        if Some(kept.id()) != self.own && self.names_a_lease(&kept) {
            self.unreadable.insert(kept);
        }
    }

    fn accept(&self, raw: &RawLease, skipped: &mut Vec<Skipped>) -> Option<Lease> {
        let skip = |reason: String| Skipped { key: raw.key.clone(), reason };
        let mut lease = match raw.parse() {
            Ok(lease) => lease,
            Err(e) => {
                skipped.push(skip(e.to_string()));
                return None;
            }
        };
        let kept = self.as_kept(lease.key());
        if !self.names_a_lease(&kept) {
            let reason = format!("subnet {} is not inside the network {}", lease.key(), self.network);
            skipped.push(skip(reason));
            return None;
        }
        if Some(kept.id()) == self.own {
            return None;
        }
        // Its naming subnet is fine; a subnet of the other family outside the network's (or of
        // a family the network lacks) gets nothing installed. A dual-stack network's peer
        // without an IPv6 subnet is IPv4 only until it leases again.
        if kept != lease.key() {
            debug!(key = %raw.key, kept = %kept, "subnet outside the network's: ignored");
        }
        (lease.subnet, lease.subnet_v6) = (kept.subnet, kept.subnet_v6);
        Some(lease)
    }

    /// A key as its lease is kept: without the subnets this network does not route (see
    /// [`LeaseWatcher::accept`]).
    fn as_kept(&self, key: lease::LeaseKey) -> lease::LeaseKey {
        let routed = |space: Option<SubnetSpace>, subnet: IpNet| space.is_some_and(|s| s.contains_subnet(&subnet));
        lease::LeaseKey {
            subnet: key.subnet.filter(|s| routed(self.network.ipv4, (*s).into())),
            subnet_v6: key.subnet_v6.filter(|s| routed(self.network.ipv6, (*s).into())),
        }
    }

    /// Whether a kept key still has the subnet that names a lease in this network (its IPv4
    /// one, IPv6-only its IPv6 one).
    fn names_a_lease(&self, kept: &lease::LeaseKey) -> bool {
        self.network.lease_space().contains_subnet(&kept.id())
    }

    fn upsert(&mut self, lease: Lease) -> Option<LeaseEvent> {
        let subnet = lease.id();
        let unchanged = self.known.get(&subnet).map(|old| same_peer(old, &lease));
        self.known.insert(subnet, lease);
        match unchanged {
            None => Some(LeaseEvent::Added(subnet)),
            // A renewal changes only the expiry: nothing for the backend to do.
            Some(true) => None,
            Some(false) => Some(LeaseEvent::Changed(subnet)),
        }
    }

    fn replace_all(&mut self, fresh: LeaseMap) -> Vec<LeaseEvent> {
        let old = std::mem::replace(&mut self.known, fresh);
        let gone = old.keys().filter(|subnet| !self.known.contains_key(subnet)).map(LeaseEvent::Removed);
        let came = self.known.iter().filter_map(|(id, lease)| match old.get(&id) {
            None => Some(LeaseEvent::Added(id)),
            Some(prev) if !same_peer(prev, lease) => Some(LeaseEvent::Changed(id)),
            Some(_) => None,
        });
        gone.chain(came).collect()
    }
}

/// Whether `new` asks nothing more of the backend than `old`: a renewal changes only the expiry.
fn same_peer(old: &Lease, new: &Lease) -> bool {
    old.attrs == new.attrs && old.key() == new.key()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Expiry, LeaseAttrs};
    use crate::network::NetworkSection;
    use ipnet::Ipv4Net;

    fn network() -> Network {
        Network::new(&NetworkSection { cidr: "10.244.0.0/16".into(), ..Default::default() }).unwrap()
    }

    fn raw(key: &str, ip: &str) -> RawLease {
        let attrs = LeaseAttrs::new(ip.parse().unwrap(), "vxlan", serde_json::json!({"VNI": 1}));
        RawLease { key: key.into(), value: attrs.to_json().into_bytes(), expiry: Expiry::Unknown, mod_revision: 1 }
    }

    fn kinds(events: &[LeaseEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                LeaseEvent::Added(subnet) => format!("+{subnet}"),
                LeaseEvent::Changed(subnet) => format!("~{subnet}"),
                LeaseEvent::Removed(subnet) => format!("-{subnet}"),
            })
            .collect()
    }

    fn dual_stack() -> Network {
        crate::network::dual_stack_for_tests()
    }

    #[test]
    fn ipv6_subnets_are_kept_inside_the_network_and_their_changes_are_changes() {
        let mut w = LeaseWatcher::new(dual_stack(), None);
        let d = w.apply(LeaseUpdate::Put(raw("10.244.1.0-24&2001:db8:42:1::-64", "192.0.2.1")));
        assert_eq!(kinds(&d.events), ["+10.244.1.0/24"]);
        // The same host's lease with another IPv6 subnet (written again after a restart).
        let d = w.apply(LeaseUpdate::Put(raw("10.244.1.0-24&2001:db8:42:7::-64", "192.0.2.1")));
        assert_eq!(kinds(&d.events), ["~10.244.1.0/24"]);
        // The old key's deletion does not remove the lease that replaced it.
        let d = w.apply(LeaseUpdate::Deleted { key: "10.244.1.0-24&2001:db8:42:1::-64".into(), revision: 3 });
        assert!(d.events.is_empty(), "{:?}", kinds(&d.events));
        assert_eq!(
            w.leases()[&"10.244.1.0/24".parse().unwrap()].subnet_v6,
            Some("2001:db8:42:7::/64".parse().unwrap())
        );
        // An IPv6 subnet outside the network is dropped; the IPv4 side stays.
        w.apply(LeaseUpdate::Put(raw("10.244.2.0-24&2001:db8:99::-64", "192.0.2.2")));
        assert_eq!(w.leases()[&"10.244.2.0/24".parse().unwrap()].subnet_v6, None);
        // In an IPv4-only network, every IPv6 subnet is.
        let mut v4 = LeaseWatcher::new(network(), None);
        v4.apply(LeaseUpdate::Put(raw("10.244.1.0-24&2001:db8:42:1::-64", "192.0.2.1")));
        assert_eq!(v4.leases()[&"10.244.1.0/24".parse().unwrap()].subnet_v6, None);
        let d = v4.apply(LeaseUpdate::Deleted { key: "10.244.1.0-24&2001:db8:42:1::-64".into(), revision: 5 });
        assert_eq!(kinds(&d.events), ["-10.244.1.0/24"], "kept without its IPv6 side, still its key's lease");
    }

    /// IPv6-only: leases are named by their IPv6 subnet; one with an IPv4 subnet keeps only its
    /// IPv6 side, one of another IPv6 network or IPv6-less is skipped, and ours is not delivered.
    #[test]
    fn an_ipv6_only_network_names_leases_by_their_ipv6_subnet() {
        let section = NetworkSection { enable_ipv4: false, ipv6_cidr: "2001:db8:42::/56".into(), ..Default::default() };
        let own: IpNet = "2001:db8:42:5::/64".parse().unwrap();
        let mut w = LeaseWatcher::new(Network::new(&section).unwrap(), Some(own));
        let d = w.apply(LeaseUpdate::Resync(
            vec![
                raw("0.0.0.0-0&2001:db8:42:1::-64", "0.0.0.0"),
                raw("0.0.0.0-0&2001:db8:42:2::-64", "0.0.0.0"),
                raw("10.244.3.0-24&2001:db8:42:3::-64", "192.0.2.3"),
                raw("0.0.0.0-0&2001:db8:42:5::-64", "0.0.0.0"),
                raw("0.0.0.0-0&2001:db8:99:1::-64", "0.0.0.0"),
                raw("10.244.4.0-24", "192.0.2.4"),
            ],
            1,
        ));
        assert_eq!(kinds(&d.events), ["+2001:db8:42:1::/64", "+2001:db8:42:2::/64", "+2001:db8:42:3::/64"]);
        let skipped: Vec<&str> = d.skipped.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(skipped, ["0.0.0.0-0&2001:db8:99:1::-64", "10.244.4.0-24"]);
        let dual = &w.leases()[&"2001:db8:42:3::/64".parse().unwrap()];
        assert_eq!(dual.subnet, None, "no IPv4 subnet is routed in an IPv6-only network");
        // Deleting one IPv6-only key removes that lease only (they all start `0.0.0.0-0&`).
        let d = w.apply(LeaseUpdate::Deleted { key: "0.0.0.0-0&2001:db8:42:1::-64".into(), revision: 2 });
        assert_eq!(kinds(&d.events), ["-2001:db8:42:1::/64"]);
        assert_eq!(w.leases().len(), 2);
    }

    #[test]
    fn put_change_delete() {
        let mut w = LeaseWatcher::new(network(), None);
        let d = w.apply(LeaseUpdate::Put(raw("10.244.1.0-24", "192.0.2.1")));
        assert_eq!(kinds(&d.events), ["+10.244.1.0/24"]);
        // Same attributes again (a renewal): nothing.
        assert!(w.apply(LeaseUpdate::Put(raw("10.244.1.0-24", "192.0.2.1"))).events.is_empty());
        let d = w.apply(LeaseUpdate::Put(raw("10.244.1.0-24", "192.0.2.7")));
        assert_eq!(kinds(&d.events), ["~10.244.1.0/24"]);
        let d = w.apply(LeaseUpdate::Deleted { key: "10.244.1.0-24".into(), revision: 5 });
        assert_eq!(kinds(&d.events), ["-10.244.1.0/24"]);
        // Deleting what we never had: nothing.
        assert!(w.apply(LeaseUpdate::Deleted { key: "10.244.1.0-24".into(), revision: 6 }).events.is_empty());
    }

    #[test]
    fn resync_emits_only_the_difference() {
        let mut w = LeaseWatcher::new(network(), None);
        w.apply(LeaseUpdate::Resync(vec![raw("10.244.1.0-24", "192.0.2.1"), raw("10.244.2.0-24", "192.0.2.2")], 3));
        let d = w
            .apply(LeaseUpdate::Resync(vec![raw("10.244.2.0-24", "192.0.2.22"), raw("10.244.3.0-24", "192.0.2.3")], 9));
        assert_eq!(kinds(&d.events), ["-10.244.1.0/24", "~10.244.2.0/24", "+10.244.3.0/24"]);
        assert_eq!(w.leases().len(), 2);
    }

    #[test]
    fn skips_malformed_foreign_and_own() {
        let own: IpNet = "10.244.5.0/24".parse().unwrap();
        let mut w = LeaseWatcher::new(network(), Some(own));
        let mut bad_json = raw("10.244.1.0-24", "192.0.2.1");
        bad_json.value = b"{oops".to_vec();
        let d = w.apply(LeaseUpdate::Resync(
            vec![
                bad_json,
                raw("garbage", "192.0.2.1"),
                raw("10.99.0.0-24", "192.0.2.1"),
                raw("10.244.4.0-26", "192.0.2.1"),
                raw("10.244.5.0-24", "192.0.2.5"),
                raw("10.244.6.0-24", "192.0.2.6"),
            ],
            1,
        ));
        assert_eq!(kinds(&d.events), ["+10.244.6.0/24"]);
        let keys: Vec<_> = d.skipped.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["10.244.1.0-24", "garbage", "10.99.0.0-24", "10.244.4.0-26"]);
        // Held, though unreadable: its cloud route is not stale. Only that one: the others are
        // no subnet of the network.
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert_eq!(w.unreadable(), &BTreeSet::from([net("10.244.1.0/24").into()]));
    }

    #[test]
    fn unreadable_subnets_follow_puts_and_deletes() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let mut w = LeaseWatcher::new(network(), None);
        let mut bad = raw("10.244.7.0-24", "192.0.2.7");
        bad.value = b"null".to_vec();
        w.apply(LeaseUpdate::Put(bad.clone()));
        assert_eq!(w.unreadable(), &BTreeSet::from([net("10.244.7.0/24").into()]));
        w.apply(LeaseUpdate::Put(raw("10.244.7.0-24", "192.0.2.7")));
        assert!(w.unreadable().is_empty(), "readable again");
        w.apply(LeaseUpdate::Put(bad));
        assert_eq!(w.leases().len(), 0);
        w.apply(LeaseUpdate::Deleted { key: "10.244.7.0-24".into(), revision: 9 });
        assert!(w.unreadable().is_empty());
    }

    /// A key that only looks like a subnet's (another path, junk after the subnet) is skipped,
    /// and neither its arrival nor its deletion touches the real lease.
    #[test]
    fn aliasing_keys_do_not_touch_the_real_lease() {
        let mut w = LeaseWatcher::new(network(), None);
        w.apply(LeaseUpdate::Put(raw("10.244.5.0-24", "192.0.2.5")));
        for alias in ["x/10.244.5.0-24", "10.244.5.0-24&junk", "10.244.5.0-024"] {
            let d = w.apply(LeaseUpdate::Put(raw(alias, "192.0.2.66")));
            assert!(d.events.is_empty(), "{alias}: {:?}", d.events);
            assert_eq!(d.skipped.len(), 1, "{alias} skipped with a reason");
            let d = w.apply(LeaseUpdate::Deleted { key: alias.into(), revision: 9 });
            assert!(d.events.is_empty(), "deleting {alias}: {:?}", d.events);
        }
        let real = &w.leases()[&"10.244.5.0/24".parse().unwrap()];
        assert_eq!(real.attrs.public_ip.to_string(), "192.0.2.5");
    }

    #[test]
    fn a_lease_turning_unreadable_is_removed() {
        let mut w = LeaseWatcher::new(network(), None);
        w.apply(LeaseUpdate::Put(raw("10.244.1.0-24", "192.0.2.1")));
        let mut broken = raw("10.244.1.0-24", "192.0.2.1");
        broken.value = b"[]".to_vec();
        let d = w.apply(LeaseUpdate::Put(broken));
        assert_eq!(kinds(&d.events), ["-10.244.1.0/24"]);
        assert_eq!(d.skipped.len(), 1);
    }
}
