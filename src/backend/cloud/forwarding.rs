//! A cloud backend installs no kernel route, but its host still forwards: the VPC hands it
//! packets for its pods, and its pods' packets leave through it. So forwarding goes on (IPv6
//! too in a dual-stack network) before the cloud backend registers, as the kernel backends do
//! for themselves.

use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::peer_route::enable_forwarding;
use crate::backend::{Backend, BackendError, Registered};
use crate::kernel::Kernel;
use crate::network::Families;

/// `inner`, registered once this host forwards.
pub struct Forwarding {
    inner: Box<dyn Backend>,
    kernel: Arc<dyn Kernel>,
    families: Families,
}

impl Forwarding {
    pub fn new(inner: Box<dyn Backend>, kernel: Arc<dyn Kernel>, families: Families) -> Forwarding {
        Forwarding { inner, kernel, families }
    }
}

#[async_trait]
impl Backend for Forwarding {
    async fn register(self: Box<Self>) -> Result<Box<dyn Registered>, BackendError> {
        enable_forwarding(self.kernel.as_ref(), self.families).await;
        self.inner.register().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::alloc::Alloc;
    use crate::kernel::memory::MemoryKernel;
    use crate::kernel::IpFamily;

    #[tokio::test]
    async fn forwarding_is_on_before_the_inner_backend_registers() {
        let kernel = Arc::new(MemoryKernel::default());
        let backend = Box::new(Forwarding::new(Box::new(Alloc::new(1500)), kernel.clone(), Families::DUAL_STACK));
        let registered = backend.register().await.expect("registers");
        assert_eq!(registered.lease_data().mtu, 1500);
        // Asking again reports "already on": the first call turned it on, for both families.
        assert!(!kernel.enable_forwarding(IpFamily::V4).await.unwrap());
        assert!(!kernel.enable_forwarding(IpFamily::V6).await.unwrap());
    }
}
