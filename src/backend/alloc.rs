//! `alloc`: lease a subnet and install nothing (something else routes it).

use async_trait::async_trait;

use super::{Backend, BackendError, LeaseData, PeerMapping};
use crate::lease::{BackendData, Lease};

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
    fn type_name(&self) -> &'static str {
        "alloc"
    }

    async fn prepare(&mut self) -> Result<LeaseData, BackendError> {
        Ok(LeaseData { backend_type: "alloc", backend_data: BackendData::null(), mtu: self.mtu })
    }

    async fn start(&mut self, _own: &Lease) -> Result<Option<PeerMapping>, BackendError> {
        Ok(None)
    }
}
