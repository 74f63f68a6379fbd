//! The diff between the kernel state weft wants and the one it owns: a plan of operations in an
//! order the kernel accepts (what routes point at exists before them, and goes after them).

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

use super::{FdbSpec, Foreign, KernelState, NeighbourSpec, NexthopSpec, Object, RouteSpec, WEFT_PROTOCOL};

/// One kernel change. `Put` creates or replaces in place (no delete + add, so no flap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutNeighbour(NeighbourSpec),
    PutFdb(FdbSpec),
    PutNexthop(NexthopSpec),
    PutRoute(RouteSpec),
    DeleteRoute(RouteSpec),
    DeleteNexthop(NexthopSpec),
    DeleteNeighbour(NeighbourSpec),
    DeleteFdb(FdbSpec),
}

/// The operations to turn `actual` into `desired`, in apply order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// Computes the plan. Objects equal on both sides are left alone, which is what lets a restarted
/// agent adopt what it installed before without touching it.
pub fn diff(desired: &KernelState, actual: &KernelState) -> Plan {
    diff_all(desired.objects(), actual.clone())
}

/// The plan for everything at once, without a second picture of the kernel: `desired` is walked
/// (once per kind of object) and `actual` shrinks as its objects are matched; what is left of it
/// at the end is what nobody wants any more. An object wanted twice (two peers claiming the same
/// FDB entry) is put twice, the last one winning, as the kernel would have it anyway.
pub fn diff_all(desired: impl Iterator<Item = Object> + Clone, actual: KernelState) -> Plan {
    let mut phases = Phases::new(desired, actual);
    let mut ops = Vec::new();
    while let Some(phase) = phases.next_phase() {
        ops.extend(phase);
    }
    Plan { ops }
}

/// [`diff_all`] one step at a time, in the same order: the puts of each kind of object, then every
/// delete. A caller that applies each step before asking for the next never holds the whole plan:
/// a first sync of 10,000 vxlan peers is 40,000 operations, 2 MB at once.
pub struct Phases<I> {
    desired: I,
    actual: KernelState,
    next: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    // Neighbours and FDB entries first so the first packet routed finds its way.
    Neighbours,
    Fdb,
    Nexthops,
    // A route whose nexthop object changed id must be re-pointed; one still pointing at a nexthop
    // that goes away is deleted with it by the kernel, so puts come before deletes.
    Routes,
    Deletes,
    Done,
}

impl<I: Iterator<Item = Object> + Clone> Phases<I> {
    pub fn new(desired: I, actual: KernelState) -> Self {
        Phases { desired, actual, next: Phase::Neighbours }
    }

    /// The operations of the next step (possibly none); `None` once every step was taken.
    pub fn next_phase(&mut self) -> Option<Vec<Op>> {
        let mut ops = Vec::new();
        let actual = &mut self.actual;
        let desired = self.desired.clone();
        self.next = match self.next {
            Phase::Neighbours => {
                for object in desired {
                    if let Object::Neighbour(n) = object {
                        put(&mut actual.neighbours, (n.ifindex, n.ip), n, Op::PutNeighbour, &mut ops);
                    }
                }
                Phase::Fdb
            }
            Phase::Fdb => {
                for object in desired {
                    if let Object::Fdb(f) = object {
                        put(&mut actual.fdb, (f.ifindex, f.mac), f, Op::PutFdb, &mut ops);
                    }
                }
                Phase::Nexthops
            }
            Phase::Nexthops => {
                for object in desired {
                    if let Object::Nexthop(n) = object {
                        put(&mut actual.nexthops, n.id, n, Op::PutNexthop, &mut ops);
                    }
                }
                Phase::Routes
            }
            Phase::Routes => {
                for object in desired {
                    if let Object::Route(r) = object {
                        put(&mut actual.routes, r.dst, r, Op::PutRoute, &mut ops);
                    }
                }
                Phase::Deletes
            }
            Phase::Deletes => {
                let left = std::mem::take(actual);
                ops.extend(left.routes.into_values().map(Op::DeleteRoute));
                ops.extend(left.nexthops.into_values().map(Op::DeleteNexthop));
                ops.extend(left.neighbours.into_values().map(Op::DeleteNeighbour));
                ops.extend(left.fdb.into_values().map(Op::DeleteFdb));
                Phase::Done
            }
            Phase::Done => return None,
        };
        Some(ops)
    }
}

/// A place in the kernel weft wants that an object of someone else already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Claimed {
    /// The main table's route to this destination.
    Route(IpNet),
    /// The nexthop object with this id.
    Nexthop(u32),
}

/// An object weft wants where the kernel already has one of someone else's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Conflict {
    pub claimed: Claimed,
    /// The protocol of the object in the way (`proto static` is 4).
    pub protocol: u8,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.claimed {
            Claimed::Route(dst) => write!(f, "route to {dst}")?,
            Claimed::Nexthop(id) => write!(f, "nexthop {id}")?,
        }
        write!(f, " owned by proto {}; not replaced", ProtocolName(self.protocol))
    }
}

/// A route protocol as `ip route` names it (`/etc/iproute2/rt_protos`), or its number.
struct ProtocolName(u8);

impl fmt::Display for ProtocolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            0 => "unspec",
            1 => "redirect",
            2 => "kernel",
            3 => "boot",
            4 => "static",
            8 => "gated",
            9 => "ra",
            10 => "mrt",
            11 => "zebra",
            12 => "bird",
            13 => "dnrouted",
            14 => "xorp",
            15 => "ntk",
            16 => "dhcp",
            42 => "babel",
            186 => "bgp",
            187 => "isis",
            188 => "ospf",
            189 => "rip",
            192 => "eigrp",
            other => return write!(f, "{other}"),
        };
        f.write_str(name)
    }
}

/// The objects among `wanted` that would replace one weft does not own: a put is
/// `NLM_F_REPLACE`, which takes over any route to the same destination, or any nexthop object
/// with the same id, whoever put it there. weft never does; the caller leaves out the peer these
/// objects belong to. Only the exact destination counts: a route of others that covers it (a /16)
/// or lies inside it (a /25) is not replaced by ours and stays as it is. Neighbours and FDB
/// entries never conflict: weft puts them only on its own devices, where everything is weft's.
/// An entry with weft's own protocol is never in the way.
pub fn foreign_conflicts(wanted: impl IntoIterator<Item = Object>, foreign: &Foreign) -> Vec<Conflict> {
    if foreign.is_empty() {
        return Vec::new();
    }
    wanted
        .into_iter()
        .filter_map(|object| match object {
            Object::Route(route) => foreign
                .routes
                .get(&route.dst)
                .map(|&protocol| Conflict { claimed: Claimed::Route(route.dst), protocol }),
            Object::Nexthop(nexthop) => foreign
                .nexthops
                .get(&nexthop.id)
                .map(|&protocol| Conflict { claimed: Claimed::Nexthop(nexthop.id), protocol }),
            Object::Neighbour(_) | Object::Fdb(_) => None,
        })
        .filter(|conflict| conflict.protocol != WEFT_PROTOCOL)
        .collect()
}

/// Puts `want` unless the kernel has exactly it; either way it is no longer a leftover.
fn put<K: Ord, V: PartialEq>(actual: &mut BTreeMap<K, V>, key: K, want: V, op: fn(V) -> Op, ops: &mut Vec<Op>) {
    if actual.remove(&key).as_ref() != Some(&want) {
        ops.push(op(want));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MacAddr, RouteTarget};
    use super::*;

    fn peer(state: &mut KernelState, n: u8, mac_byte: u8) {
        let subnet = format!("10.244.{n}.0/24").parse().unwrap();
        let gw = std::net::Ipv4Addr::new(10, 244, n, 0).into();
        let mac = MacAddr([2, 0, 0, 0, 0, mac_byte]);
        state.add_neighbour(NeighbourSpec { ifindex: 5, ip: gw, mac });
        state.add_fdb(FdbSpec { ifindex: 5, mac, dst: std::net::Ipv4Addr::new(198, 51, 100, n).into() });
        state.add_nexthop(NexthopSpec { id: n as u32, gateway: gw, oif: 5, onlink: true });
        state.add_route(RouteSpec { dst: subnet, target: RouteTarget::Nexthop(n as u32) });
    }

    #[test]
    fn nothing_to_do_when_equal() {
        let mut s = KernelState::default();
        peer(&mut s, 1, 1);
        assert!(diff(&s, &s.clone()).is_empty());
    }

    #[test]
    fn phases_come_one_kind_at_a_time_in_the_plans_order() {
        let (mut want, mut have) = (KernelState::default(), KernelState::default());
        peer(&mut want, 1, 1);
        peer(&mut want, 2, 2);
        peer(&mut have, 3, 3);
        let mut phases = Phases::new(want.objects(), have.clone());
        let mut steps = Vec::new();
        while let Some(ops) = phases.next_phase() {
            steps.push(ops);
        }
        assert!(phases.next_phase().is_none());
        let kind = |o: &Op| format!("{o:?}").split('(').next().unwrap().to_string();
        let kinds: Vec<Vec<String>> = steps.iter().map(|ops| ops.iter().map(kind).collect()).collect();
        assert_eq!(kinds[0], ["PutNeighbour", "PutNeighbour"]);
        assert_eq!(kinds[1], ["PutFdb", "PutFdb"]);
        assert_eq!(kinds[2], ["PutNexthop", "PutNexthop"]);
        assert_eq!(kinds[3], ["PutRoute", "PutRoute"]);
        assert_eq!(kinds[4], ["DeleteRoute", "DeleteNexthop", "DeleteNeighbour", "DeleteFdb"]);
        assert_eq!(steps.concat(), diff(&want, &have).ops);
    }

    #[test]
    fn adds_in_dependency_order() {
        let mut want = KernelState::default();
        peer(&mut want, 1, 1);
        let plan = diff(&want, &KernelState::default());
        let kinds: Vec<_> = plan.ops.iter().map(|o| format!("{o:?}").split('(').next().unwrap().to_string()).collect();
        assert_eq!(kinds, ["PutNeighbour", "PutFdb", "PutNexthop", "PutRoute"]);
    }

    #[test]
    fn removes_what_is_no_longer_wanted_routes_first() {
        let mut have = KernelState::default();
        peer(&mut have, 1, 1);
        let plan = diff(&KernelState::default(), &have);
        let kinds: Vec<_> = plan.ops.iter().map(|o| format!("{o:?}").split('(').next().unwrap().to_string()).collect();
        assert_eq!(kinds, ["DeleteRoute", "DeleteNexthop", "DeleteNeighbour", "DeleteFdb"]);
    }

    #[test]
    fn a_rebooted_peer_is_replaced_not_duplicated() {
        let mut have = KernelState::default();
        peer(&mut have, 1, 1);
        let mut want = KernelState::default();
        peer(&mut want, 1, 9); // new VtepMAC
        let plan = diff(&want, &have);
        // Neighbour replaced in place; the FDB entry is keyed by MAC: new one put, old one deleted.
        assert_eq!(plan.ops.len(), 3, "{plan:?}");
        assert!(matches!(plan.ops[0], Op::PutNeighbour(n) if n.mac.0[5] == 9));
        assert!(matches!(plan.ops[1], Op::PutFdb(f) if f.mac.0[5] == 9));
        assert!(matches!(plan.ops[2], Op::DeleteFdb(f) if f.mac.0[5] == 1));
    }

    #[test]
    fn diff_all_matches_diff_whatever_the_order_of_peers() {
        let mut have = KernelState::default();
        for n in [1, 2, 3] {
            peer(&mut have, n, n);
        }
        let mut want = KernelState::default();
        for (n, mac) in [(3, 3), (2, 7), (4, 4)] {
            peer(&mut want, n, mac);
        }
        // Each peer's objects in turn, peers in reverse: the kinds still come in apply order.
        let per_peer: Vec<Vec<Object>> =
            [4u8, 3, 2].iter().map(|&n| want.objects().filter(|o| object_peer(o) == n).collect()).collect();
        let streamed = diff_all(per_peer.iter().flatten().copied(), have.clone());
        let mut sorted = streamed.ops.clone();
        let mut expected = diff(&want, &have).ops;
        let key = |op: &Op| format!("{op:?}");
        sorted.sort_by_key(key);
        expected.sort_by_key(key);
        assert_eq!(sorted, expected);
        let rank = |op: &Op| match op {
            Op::PutNeighbour(_) => 0,
            Op::PutFdb(_) => 1,
            Op::PutNexthop(_) => 2,
            Op::PutRoute(_) => 3,
            Op::DeleteRoute(_) => 4,
            Op::DeleteNexthop(_) => 5,
            Op::DeleteNeighbour(_) => 6,
            Op::DeleteFdb(_) => 7,
        };
        assert!(streamed.ops.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])), "{streamed:?}");
        // Peer 1 gone (4 deletes), peer 2's MAC changed (neighbour + FDB put, old FDB deleted),
        // peer 4 new (4 puts), peer 3 untouched.
        assert_eq!(streamed.len(), 4 + 3 + 4, "{streamed:?}");
    }

    fn v4(ip: std::net::IpAddr) -> std::net::Ipv4Addr {
        match ip {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(ip) => panic!("{ip} in an IPv4 test"),
        }
    }

    /// The peer number an object of `peer()` belongs to.
    fn object_peer(object: &Object) -> u8 {
        match object {
            Object::Nexthop(n) => n.id as u8,
            Object::Route(r) => v4(r.dst.network()).octets()[2],
            Object::Neighbour(n) => v4(n.ip).octets()[2],
            Object::Fdb(f) => v4(f.dst).octets()[3],
        }
    }

    #[test]
    fn only_a_route_to_the_very_destination_of_someone_else_is_in_the_way() {
        let mut want = KernelState::default();
        peer(&mut want, 3, 3);
        peer6(&mut want, 3, 3);
        let foreign = |entries: &[(&str, u8)]| Foreign {
            routes: entries.iter().map(|(dst, protocol)| (dst.parse().unwrap(), *protocol)).collect(),
            nexthops: BTreeMap::new(),
        };
        let conflict = |dst: &str, protocol| Conflict { claimed: Claimed::Route(dst.parse().unwrap()), protocol };
        let nexthop = |id: u32, protocol| Foreign { routes: BTreeMap::new(), nexthops: [(id, protocol)].into() };
        let cases: [(&str, Foreign, Vec<Conflict>); 11] = [
            ("nothing of others", foreign(&[]), vec![]),
            ("proto static to it", foreign(&[("10.244.3.0/24", 4)]), vec![conflict("10.244.3.0/24", 4)]),
            ("proto boot to it", foreign(&[("10.244.3.0/24", 3)]), vec![conflict("10.244.3.0/24", 3)]),
            ("proto kernel to it", foreign(&[("10.244.3.0/24", 2)]), vec![conflict("10.244.3.0/24", 2)]),
            ("an IPv6 one", foreign(&[("2001:db8:3::/64", 4)]), vec![conflict("2001:db8:3::/64", 4)]),
            ("a route covering it", foreign(&[("10.244.0.0/16", 4)]), vec![]),
            ("a route inside it", foreign(&[("10.244.3.0/25", 4)]), vec![]),
            ("another peer's", foreign(&[("10.244.4.0/24", 4)]), vec![]),
            ("weft's own protocol", foreign(&[("10.244.3.0/24", WEFT_PROTOCOL)]), vec![]),
            // peer(3) uses nexthop id 3.
            (
                "a nexthop object with its id",
                nexthop(3, 11),
                vec![Conflict { claimed: Claimed::Nexthop(3), protocol: 11 }],
            ),
            ("a nexthop object with another id", nexthop(4, 11), vec![]),
        ];
        for (what, foreign, expected) in cases {
            assert_eq!(foreign_conflicts(want.objects(), &foreign), expected, "{what}");
        }
    }

    #[test]
    fn a_conflict_says_what_is_in_the_way_and_whose_it_is() {
        let conflict = |protocol| Conflict { claimed: Claimed::Route("10.244.3.0/24".parse().unwrap()), protocol };
        assert_eq!(conflict(4).to_string(), "route to 10.244.3.0/24 owned by proto static; not replaced");
        assert_eq!(conflict(3).to_string(), "route to 10.244.3.0/24 owned by proto boot; not replaced");
        assert_eq!(conflict(200).to_string(), "route to 10.244.3.0/24 owned by proto 200; not replaced");
        let nexthop = Conflict { claimed: Claimed::Nexthop(183_763_712), protocol: 11 };
        assert_eq!(nexthop.to_string(), "nexthop 183763712 owned by proto zebra; not replaced");
    }

    #[test]
    fn mac_parsing() {
        let mac: MacAddr = "aa:bb:cc:dd:ee:0f".parse().unwrap();
        assert_eq!(mac.to_string(), "aa:bb:cc:dd:ee:0f");
        assert!("aa:bb".parse::<MacAddr>().is_err());
        assert!("aa:bb:cc:dd:ee:ff:00".parse::<MacAddr>().is_err());
        assert!("zz:bb:cc:dd:ee:ff".parse::<MacAddr>().is_err());
    }

    /// Peer `n` of an IPv6 cluster: subnet 2001:db8:n::/64 behind VTEP 2001:db8:ff::n.
    fn peer6(state: &mut KernelState, n: u16, mac_byte: u8) {
        let subnet: ipnet::IpNet = format!("2001:db8:{n:x}::/64").parse().unwrap();
        let gw = subnet.network();
        let mac = MacAddr([2, 0, 0, 0, 1, mac_byte]);
        state.add_neighbour(NeighbourSpec { ifindex: 5, ip: gw, mac });
        state.add_fdb(FdbSpec { ifindex: 5, mac, dst: format!("2001:db8:ff::{n:x}").parse().unwrap() });
        state.add_nexthop(NexthopSpec { id: 1000 + u32::from(n), gateway: gw, oif: 5, onlink: true });
        state.add_route(RouteSpec { dst: subnet, target: RouteTarget::Nexthop(1000 + u32::from(n)) });
    }

    #[test]
    fn ipv6_peers_diff_like_ipv4_ones() {
        let mut have = KernelState::default();
        peer(&mut have, 1, 1);
        peer6(&mut have, 1, 1);
        peer6(&mut have, 2, 2);
        assert!(diff(&have, &have.clone()).is_empty());
        let mut want = KernelState::default();
        peer(&mut want, 1, 1);
        peer6(&mut want, 1, 9); // new VtepMAC
        peer6(&mut want, 3, 3); // new peer; peer 2 gone
        let plan = diff(&want, &have);
        let kinds: Vec<_> = plan.ops.iter().map(|o| format!("{o:?}").split('(').next().unwrap().to_string()).collect();
        assert_eq!(
            kinds,
            [
                "PutNeighbour",
                "PutNeighbour",
                "PutFdb",
                "PutFdb",
                "PutNexthop",
                "PutRoute",
                "DeleteRoute",
                "DeleteNexthop",
                "DeleteNeighbour",
                "DeleteFdb",
                "DeleteFdb"
            ],
            "{plan:?}"
        );
        assert!(plan.ops.iter().all(|op| !format!("{op:?}").contains("10.244.")), "the IPv4 peer is untouched");
    }
}
