//! `alloc`: lease a subnet and install nothing (something else routes it).

use async_trait::async_trait;

use super::{Backend, BackendError, BackendKind, LeaseData, Passive, Registered, StartFailed, Started};
use crate::lease::Lease;

pub struct Alloc {
    data: LeaseData,
}

impl Alloc {
    pub fn new(mtu: u32) -> Self {
        Alloc { data: LeaseData::plain(BackendKind::Alloc, mtu) }
    }
}

#[async_trait]
impl Backend for Alloc {
    async fn register(self: Box<Self>) -> Result<Box<dyn Registered>, BackendError> {
        Ok(self)
    }
}

#[async_trait]
impl Registered for Alloc {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    async fn start(self: Box<Self>, _own: &Lease) -> Result<Started, StartFailed> {
        Ok(Started { backend: Box::new(Passive(self.data)), peers: None })
    }
}
