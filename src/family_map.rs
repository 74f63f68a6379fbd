//! A map keyed by subnets of either family, kept as one map per family: an agent keeps an entry
//! for every peer of the cluster, and a key of its own family is 5 bytes (IPv4) or 17 (IPv6)
//! where an [`IpNet`] is 18 for both. In a network of 10,000 IPv4 leases that is about 28 bytes
//! a peer over the two maps the agent keeps (the leases and what it installed for each).

use std::collections::btree_map::{self, BTreeMap};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Subnets to values, IPv4 subnets first (as [`IpNet`] orders them), each family in its own
/// B-tree.
#[derive(Clone, PartialEq, Eq)]
pub struct FamilyMap<V> {
    v4: BTreeMap<Ipv4Net, V>,
    v6: BTreeMap<Ipv6Net, V>,
}

impl<V> Default for FamilyMap<V> {
    fn default() -> Self {
        FamilyMap { v4: BTreeMap::new(), v6: BTreeMap::new() }
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for FamilyMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> FamilyMap<V> {
    pub fn new() -> Self {
        FamilyMap::default()
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn get(&self, key: &IpNet) -> Option<&V> {
        match key {
            IpNet::V4(net) => self.v4.get(net),
            IpNet::V6(net) => self.v6.get(net),
        }
    }

    pub fn contains_key(&self, key: &IpNet) -> bool {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: IpNet, value: V) -> Option<V> {
        match key {
            IpNet::V4(net) => self.v4.insert(net, value),
            IpNet::V6(net) => self.v6.insert(net, value),
        }
    }

    pub fn remove(&mut self, key: &IpNet) -> Option<V> {
        match key {
            IpNet::V4(net) => self.v4.remove(net),
            IpNet::V6(net) => self.v6.remove(net),
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(IpNet, &mut V) -> bool) {
        self.v4.retain(|net, value| keep(IpNet::V4(*net), value));
        self.v6.retain(|net, value| keep(IpNet::V6(*net), value));
    }

    /// Every entry in key order, the key by value (it is stored as its own family's).
    pub fn iter<'a>(&'a self) -> Iter<'a, V> {
        let v4: fn((&Ipv4Net, &'a V)) -> (IpNet, &'a V) = |(net, value)| (IpNet::V4(*net), value);
        let v6: fn((&Ipv6Net, &'a V)) -> (IpNet, &'a V) = |(net, value)| (IpNet::V6(*net), value);
        self.v4.iter().map(v4).chain(self.v6.iter().map(v6))
    }

    pub fn keys(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.iter().map(|(key, _)| key)
    }

    /// Every value in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.v4.values().chain(self.v6.values())
    }
}

/// [`FamilyMap::iter`]'s iterator.
pub type Iter<'a, V> = std::iter::Chain<
    std::iter::Map<btree_map::Iter<'a, Ipv4Net, V>, fn((&Ipv4Net, &'a V)) -> (IpNet, &'a V)>,
    std::iter::Map<btree_map::Iter<'a, Ipv6Net, V>, fn((&Ipv6Net, &'a V)) -> (IpNet, &'a V)>,
>;

impl<'a, V> IntoIterator for &'a FamilyMap<V> {
    type Item = (IpNet, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

/// `map[&key]`, panicking when the key is absent, as a `BTreeMap`'s.
impl<V> std::ops::Index<&IpNet> for FamilyMap<V> {
    type Output = V;

    fn index(&self, key: &IpNet) -> &V {
        self.get(key).expect("no entry for the key")
    }
}

/// Built from a run of entries: each family's B-tree is built in one go (from a sorted run its
/// nodes are full, built by inserts about half empty).
impl<V> FromIterator<(IpNet, V)> for FamilyMap<V> {
    fn from_iter<I: IntoIterator<Item = (IpNet, V)>>(entries: I) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (key, value) in entries {
            match key {
                IpNet::V4(net) => v4.push((net, value)),
                IpNet::V6(net) => v6.push((net, value)),
            }
        }
        FamilyMap { v4: v4.into_iter().collect(), v6: v6.into_iter().collect() }
    }
}

impl<V, const N: usize> From<[(IpNet, V); N]> for FamilyMap<V> {
    fn from(entries: [(IpNet, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn both_families_in_ipnet_order() {
        let mut map: FamilyMap<u8> =
            [(net("2001:db8:42:1::/64"), 3), (net("10.244.2.0/24"), 2), (net("10.244.1.0/24"), 1)].into();
        assert_eq!(map.len(), 3);
        let keys: Vec<String> = map.keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["10.244.1.0/24", "10.244.2.0/24", "2001:db8:42:1::/64"]);
        assert_eq!(map.get(&net("2001:db8:42:1::/64")), Some(&3));
        assert_eq!(map.insert(net("10.244.1.0/24"), 7), Some(1));
        assert_eq!(map.remove(&net("2001:db8:42:1::/64")), Some(3));
        assert!(!map.contains_key(&net("2001:db8:42:1::/64")));
        map.retain(|key, _| key != net("10.244.2.0/24"));
        assert_eq!(map.values().copied().collect::<Vec<_>>(), [7]);
        assert!(!map.is_empty());
    }

    /// The point of the type: an IPv4 key costs its own 5 bytes, not an `IpNet`'s 18.
    #[test]
    fn keys_take_their_familys_size() {
        assert_eq!(std::mem::size_of::<Ipv4Net>(), 5);
        assert_eq!(std::mem::size_of::<IpNet>(), 18);
    }
}
