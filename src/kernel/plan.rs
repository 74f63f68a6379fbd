//! The diff between the kernel state weft wants and the one it owns: a plan of operations in an
//! order the kernel accepts (what routes point at exists before them, and goes after them).

use super::{FdbSpec, KernelState, NeighbourSpec, NexthopSpec, RouteSpec};

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
    let mut ops = Vec::new();
    // Puts, per peer: neighbour and FDB first so the first packet routed finds its way.
    puts(&desired.neighbours, &actual.neighbours, Op::PutNeighbour, &mut ops);
    puts(&desired.fdb, &actual.fdb, Op::PutFdb, &mut ops);
    puts(&desired.nexthops, &actual.nexthops, Op::PutNexthop, &mut ops);
    // A route whose nexthop object changed id must be re-pointed; one still pointing at a
    // nexthop that goes away is deleted with it by the kernel, so puts come before deletes.
    puts(&desired.routes, &actual.routes, Op::PutRoute, &mut ops);
    deletes(&desired.routes, &actual.routes, Op::DeleteRoute, &mut ops);
    deletes(&desired.nexthops, &actual.nexthops, Op::DeleteNexthop, &mut ops);
    deletes(&desired.neighbours, &actual.neighbours, Op::DeleteNeighbour, &mut ops);
    deletes(&desired.fdb, &actual.fdb, Op::DeleteFdb, &mut ops);
    Plan { ops }
}

fn puts<K: Ord, V: PartialEq + Copy>(
    desired: &std::collections::BTreeMap<K, V>,
    actual: &std::collections::BTreeMap<K, V>,
    op: fn(V) -> Op,
    ops: &mut Vec<Op>,
) {
    for (key, want) in desired {
        if actual.get(key) != Some(want) {
            ops.push(op(*want));
        }
    }
}

fn deletes<K: Ord, V: Copy>(
    desired: &std::collections::BTreeMap<K, V>,
    actual: &std::collections::BTreeMap<K, V>,
    op: fn(V) -> Op,
    ops: &mut Vec<Op>,
) {
    for (key, have) in actual {
        if !desired.contains_key(key) {
            ops.push(op(*have));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MacAddr, RouteTarget};
    use super::*;

    fn peer(state: &mut KernelState, n: u8, mac_byte: u8) {
        let subnet = format!("10.244.{n}.0/24").parse().unwrap();
        let gw = std::net::Ipv4Addr::new(10, 244, n, 0);
        let mac = MacAddr([2, 0, 0, 0, 0, mac_byte]);
        state.add_neighbour(NeighbourSpec { ifindex: 5, ip: gw, mac });
        state.add_fdb(FdbSpec { ifindex: 5, mac, dst: std::net::Ipv4Addr::new(198, 51, 100, n) });
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
    fn mac_parsing() {
        let mac: MacAddr = "aa:bb:cc:dd:ee:0f".parse().unwrap();
        assert_eq!(mac.to_string(), "aa:bb:cc:dd:ee:0f");
        assert!("aa:bb".parse::<MacAddr>().is_err());
        assert!("aa:bb:cc:dd:ee:ff:00".parse::<MacAddr>().is_err());
        assert!("zz:bb:cc:dd:ee:ff".parse::<MacAddr>().is_err());
    }
}
