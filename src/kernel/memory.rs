//! An in-memory kernel for unit tests of the backends and the sync engine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use ipnet::IpNet;

use super::{
    Foreign, InterfaceInfo, Interfaces, IpFamily, Kernel, KernelError, KernelReading, KernelState, LinkHandle, MacAddr,
    Op, OpFailure, Ownership, VxlanSpec,
};

/// Decides which ops a [`MemoryKernel`] refuses.
pub type RefuseOp = fn(&Op) -> bool;

#[derive(Default)]
pub struct MemoryKernel {
    pub state: Mutex<KernelState>,
    /// Routes and nexthop objects of others (`proto static`...). A put to one of their places
    /// takes it over, as `NLM_F_REPLACE` does in the kernel.
    pub foreign: Mutex<Foreign>,
    pub links: Mutex<Vec<LinkHandle>>,
    pub addresses: Mutex<Vec<(u32, IpNet)>>,
    /// Every op applied, in order, to count changes.
    pub applied: Mutex<Vec<Op>>,
    /// Ops matching this are refused, to test partial failures.
    pub refuse: Mutex<Option<RefuseOp>>,
    /// Families whose forwarding is on: recorded here, never written to the machine's `/proc/sys`.
    pub forwarding: Mutex<BTreeSet<IpFamily>>,
    /// What [`Interfaces`] reports: links with addresses, the default route's link, and the link
    /// a route to each address leaves by.
    pub interfaces: Mutex<Vec<InterfaceInfo>>,
    pub default_oif: Mutex<Option<u32>>,
    pub reach_oif: Mutex<BTreeMap<std::net::IpAddr, u32>>,
}

impl MemoryKernel {
    pub fn snapshot(&self) -> KernelState {
        self.state.lock().expect("lock").clone()
    }

    pub fn applied_count(&self) -> usize {
        self.applied.lock().expect("lock").len()
    }
}

#[async_trait]
impl Kernel for MemoryKernel {
    async fn read(&self, _ownership: &Ownership) -> Result<KernelReading, KernelError> {
        let foreign = self.foreign.lock().expect("lock").clone();
        Ok(KernelReading { owned: self.snapshot(), foreign })
    }

    async fn apply(&self, ops: &[Op]) -> Vec<OpFailure> {
        let refuse = *self.refuse.lock().expect("lock");
        let mut state = self.state.lock().expect("lock");
        let mut failures = Vec::new();
        for op in ops {
            if refuse.is_some_and(|f| f(op)) {
                failures.push(OpFailure {
                    op: op.clone(),
                    error: KernelError::Rejected { op: format!("{op:?}"), reason: "refused by test".into() },
                });
                continue;
            }
            self.applied.lock().expect("lock").push(op.clone());
            match *op {
                Op::PutNeighbour(n) => state.add_neighbour(n),
                Op::PutFdb(f) => state.add_fdb(f),
                Op::PutNexthop(n) => {
                    self.foreign.lock().expect("lock").nexthops.remove(&n.id);
                    state.add_nexthop(n);
                }
                Op::PutRoute(r) => {
                    self.foreign.lock().expect("lock").routes.remove(&r.dst);
                    state.add_route(r);
                }
                Op::DeleteRoute(r) => {
                    state.routes.remove(&r.dst);
                }
                Op::DeleteNexthop(n) => {
                    state.nexthops.remove(&n.id);
                }
                Op::DeleteNeighbour(n) => {
                    state.neighbours.remove(&(n.ifindex, n.ip));
                }
                Op::DeleteFdb(f) => {
                    state.fdb.remove(&(f.ifindex, f.mac));
                }
            }
        }
        failures
    }

    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<LinkHandle, KernelError> {
        let mut links = self.links.lock().expect("lock");
        if let Some(link) = links.iter().find(|l| l.name == spec.name) {
            return Ok(link.clone());
        }
        let link = LinkHandle {
            index: 100 + links.len() as u32,
            name: spec.name.clone(),
            mac: spec.mac.unwrap_or(MacAddr([2, 0, 0, 0, 0, 1])),
            mtu: spec.mtu,
        };
        links.push(link.clone());
        Ok(link)
    }

    async fn ensure_address(&self, ifindex: u32, addr: IpNet) -> Result<(), KernelError> {
        let mut addresses = self.addresses.lock().expect("lock");
        addresses.retain(|(i, a)| *i != ifindex || a.addr().is_ipv4() != addr.addr().is_ipv4());
        addresses.push((ifindex, addr));
        Ok(())
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkHandle>, KernelError> {
        Ok(self.links.lock().expect("lock").iter().find(|l| l.name == name).cloned())
    }

    async fn delete_link(&self, index: u32) -> Result<(), KernelError> {
        self.links.lock().expect("lock").retain(|l| l.index != index);
        Ok(())
    }

    async fn links(&self) -> Result<Vec<LinkHandle>, KernelError> {
        Ok(self.links.lock().expect("lock").clone())
    }

    async fn supports_nexthops(&self) -> bool {
        true
    }

    async fn enable_forwarding(&self, family: IpFamily) -> Result<bool, KernelError> {
        Ok(self.forwarding.lock().expect("lock").insert(family))
    }
}

#[async_trait]
impl Interfaces for MemoryKernel {
    async fn interfaces(&self) -> Result<Vec<InterfaceInfo>, KernelError> {
        Ok(self.interfaces.lock().expect("lock").clone())
    }

    async fn default_route_oif(&self) -> Result<Option<u32>, KernelError> {
        Ok(*self.default_oif.lock().expect("lock"))
    }

    async fn route_oif_to(&self, target: std::net::IpAddr) -> Option<u32> {
        self.reach_oif.lock().expect("lock").get(&target).copied()
    }
}
