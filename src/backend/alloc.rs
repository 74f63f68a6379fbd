//! `alloc`: lease a subnet and install nothing (something else routes it).

use async_trait::async_trait;

use super::{Backend, BackendError, LeaseData};
use crate::lease::{Lease, LeaseMap};
use crate::watch::LeaseEvent;

pub struct Alloc {
    mtu: u32,
}

impl Alloc {
    pub fn new(mtu: u32) -> Self {
        Alloc { mtu }
    }
}

#[async_trait]
impl Backend for Alloc {
    async fn prepare(&mut self) -> Result<LeaseData, BackendError> {
        Ok(LeaseData {
            backend_type: "alloc",
            backend_data: serde_json::Value::Null,
            mtu: self.mtu,
        })
    }

    async fn start(&mut self, _own: &Lease) -> Result<(), BackendError> {
        Ok(())
    }

    async fn apply(
        &mut self,
        _peers: &LeaseMap,
        _events: &[LeaseEvent],
    ) -> Result<(), BackendError> {
        Ok(())
    }

    async fn reconcile(&mut self, _peers: &LeaseMap) -> Result<(), BackendError> {
        Ok(())
    }
}
