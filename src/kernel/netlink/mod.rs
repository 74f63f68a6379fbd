//! The kernel over netlink: [`NetlinkKernel`].
//!
//! Peers' objects (routes, nexthops, neighbours, FDB entries) go through one raw socket in
//! batches — many requests per `sendmsg`, acks read after — because a cluster of 10,000 nodes is
//! 40,000 objects and a request/ack round trip each is most of the cost. Links and addresses,
//! a handful per start, use rtnetlink's request builders.

pub(crate) mod decode;
mod encode;
mod interfaces;
mod link;
pub mod monitor;
pub mod nexthop;
mod socket;

use std::io;
use std::time::Instant;

use futures::Stream;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use tokio::sync::{Mutex, OnceCell};

use self::socket::{AckError, BatchSocket};
use super::{
    sysctl, InterfaceInfo, Interfaces, IpFamily, Kernel, KernelError, KernelReading, KernelState, LinkHandle, Op,
    OpFailure, Ownership, VxlanSpec,
};

const RTM_NEWROUTE: u16 = libc::RTM_NEWROUTE;
const RTM_NEWNEIGH: u16 = libc::RTM_NEWNEIGH;

/// Whether to use nexthop objects when the kernel has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NexthopMode {
    /// Use them when the kernel has them (5.3+).
    #[default]
    Auto,
    /// Never: classic `via <gateway>` routes only (`WEFT_NO_NEXTHOP=1`).
    Disabled,
}

impl NexthopMode {
    /// `Disabled` when `WEFT_NO_NEXTHOP` is set to anything but `0` or empty.
    pub fn from_env() -> Self {
        Self::from_setting(std::env::var("WEFT_NO_NEXTHOP").ok().as_deref())
    }

    fn from_setting(no_nexthop: Option<&str>) -> Self {
        match no_nexthop {
            Some(v) if !v.is_empty() && v != "0" => NexthopMode::Disabled,
            _ => NexthopMode::Auto,
        }
    }
}

/// [`Kernel`] over netlink, in the network namespace of the thread that created it.
pub struct NetlinkKernel {
    handle: rtnetlink::Handle,
    batch: Mutex<BatchSocket>,
    /// Netlink port ids of both sockets: notifications caused by weft's own requests carry them.
    ports: Vec<u32>,
    mode: NexthopMode,
    has_nexthops: OnceCell<bool>,
}

impl NetlinkKernel {
    /// Opens the sockets in the current thread's network namespace and spawns rtnetlink's
    /// connection task on the current tokio runtime. Honours `WEFT_NO_NEXTHOP`.
    pub fn new() -> Result<Self, KernelError> {
        Self::with_nexthops(NexthopMode::from_env())
    }

    pub fn with_nexthops(mode: NexthopMode) -> Result<Self, KernelError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| KernelError::Netlink(format!("needs a tokio runtime: {e}")))?;
        let _entered = runtime.enter();
        let (mut connection, handle, _) = rtnetlink::new_connection().map_err(|e| open_failed("rtnetlink", e))?;
        let mut address = netlink_sys::SocketAddr::new(0, 0);
        use netlink_sys::AsyncSocket;
        connection.socket_mut().socket_ref().get_address(&mut address).map_err(|e| open_failed("rtnetlink", e))?;
        let batch = BatchSocket::open().map_err(|e| open_failed("batch", e))?;
        let ports = vec![batch.port(), address.port_number()];
        runtime.spawn(connection);
        Ok(NetlinkKernel { handle, batch: Mutex::new(batch), ports, mode, has_nexthops: OnceCell::new() })
    }

    /// Whether this kernel uses nexthop objects (`Auto` and the kernel has them).
    pub fn nexthop_mode(&self) -> NexthopMode {
        self.mode
    }

    /// Netlink port ids of this kernel's sockets (see [`monitor::watch_changes`]).
    pub fn ports(&self) -> &[u32] {
        &self.ports
    }

    /// A notification whenever something weft owns under `ownership` may have been changed or
    /// removed by someone else (weft's own changes are left out). Opens a socket in the current
    /// thread's namespace.
    pub fn watch_changes(&self, ownership: Ownership) -> io::Result<impl Stream<Item = ()>> {
        monitor::watch_changes(ownership, self.ports.clone())
    }

    async fn kernel_has_nexthops(&self, socket: &mut BatchSocket) -> bool {
        *self
            .has_nexthops
            .get_or_init(|| async {
                let probe = socket.dump(encode::dump_nexthops).await;
                if let Err(e) = &probe {
                    tracing::info!("no nexthop objects in this kernel: {}", e.reason());
                }
                probe.is_ok()
            })
            .await
    }

    async fn dump(
        socket: &mut BatchSocket,
        what: &str,
        encode: impl FnMut(u32, &mut Vec<u8>),
    ) -> Result<Vec<(u16, Vec<u8>)>, KernelError> {
        socket.dump(encode).await.map_err(|e| KernelError::Netlink(format!("dump {what}: {}", e.reason())))
    }

    /// Our routes into `reading.owned`, and those of others a put would replace beside them.
    async fn read_routes(
        socket: &mut BatchSocket,
        ownership: &Ownership,
        reading: &mut KernelReading,
    ) -> Result<(), KernelError> {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let request = |seq, out: &mut Vec<u8>| encode::dump_routes(family, seq, out);
            for (kind, payload) in Self::dump(socket, "routes", request).await? {
                if kind != RTM_NEWROUTE {
                    continue;
                }
                match decode::dumped_route(&payload, ownership) {
                    Some(decode::DumpedRoute::Owned(route)) => reading.owned.add_route(route),
                    // Two of them to one destination (two metrics): the first names the owner.
                    Some(decode::DumpedRoute::Foreign { dst, protocol }) => {
                        reading.foreign.routes.entry(dst).or_insert(protocol);
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    async fn read_nexthops(socket: &mut BatchSocket, reading: &mut KernelReading) -> Result<(), KernelError> {
        for (kind, payload) in Self::dump(socket, "nexthops", encode::dump_nexthops).await? {
            match decode::dumped_nexthop(kind, &payload) {
                Some(decode::DumpedNexthop::Owned(nexthop)) => reading.owned.add_nexthop(nexthop),
                Some(decode::DumpedNexthop::Foreign { id, protocol }) => {
                    reading.foreign.nexthops.insert(id, protocol);
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn read_neighbours(
        socket: &mut BatchSocket,
        family: AddressFamily,
        ownership: &Ownership,
        state: &mut KernelState,
    ) -> Result<(), KernelError> {
        let what = if family == AddressFamily::Bridge { "fdb" } else { "neighbours" };
        let request = |seq, out: &mut Vec<u8>| encode::dump_neighbours(family, seq, out);
        for (kind, payload) in Self::dump(socket, what, request).await? {
            if kind != RTM_NEWNEIGH {
                continue;
            }
            match decode::neighbour(&payload, ownership) {
                Some(decode::Neighbour::Arp(n)) => state.add_neighbour(n),
                Some(decode::Neighbour::Fdb(f)) => state.add_fdb(f),
                None => {}
            }
        }
        Ok(())
    }
}

fn open_failed(what: &str, e: io::Error) -> KernelError {
    KernelError::Netlink(format!("open {what} netlink socket: {e}"))
}

/// The failure of `op`, unless it is a delete of something already gone.
fn failure(op: &Op, error: AckError) -> Option<OpFailure> {
    if encode::already_gone(op, error.errno) {
        return None;
    }
    Some(OpFailure {
        op: op.clone(),
        error: KernelError::Rejected { op: encode::describe(op), reason: error.reason() },
    })
}

#[async_trait::async_trait]
impl Kernel for NetlinkKernel {
    async fn read(&self, ownership: &Ownership) -> Result<KernelReading, KernelError> {
        let mut socket = self.batch.lock().await;
        let mut reading = KernelReading::default();
        Self::read_routes(&mut socket, ownership, &mut reading).await?;
        // Read nexthops even when not using them: ones left from a run that did are removed.
        if self.kernel_has_nexthops(&mut socket).await {
            Self::read_nexthops(&mut socket, &mut reading).await?;
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6, AddressFamily::Bridge] {
            Self::read_neighbours(&mut socket, family, ownership, &mut reading.owned).await?;
        }
        Ok(reading)
    }

    async fn apply(&self, ops: &[Op]) -> Vec<OpFailure> {
        if ops.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let rejected = {
            let mut socket = self.batch.lock().await;
            let encode = |index: usize, seq, out: &mut Vec<u8>| encode::encode_op(&ops[index], seq, out);
            socket.transact(ops.len(), encode).await
        };
        let failures: Vec<_> = rejected.into_iter().filter_map(|(index, error)| failure(&ops[index], error)).collect();
        tracing::debug!(
            ops = ops.len(),
            failed = failures.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "applied kernel operations"
        );
        failures
    }

    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<LinkHandle, KernelError> {
        link::ensure_vxlan(&self.handle, spec).await
    }

    async fn ensure_address(&self, ifindex: u32, addr: IpNet) -> Result<(), KernelError> {
        link::ensure_address(&self.handle, ifindex, addr).await
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkHandle>, KernelError> {
        let message = link::message_by_name(&self.handle, name).await?;
        Ok(message.as_ref().map(link::link_handle))
    }

    async fn delete_link(&self, index: u32) -> Result<(), KernelError> {
        link::delete_link(&self.handle, index).await
    }

    async fn links(&self) -> Result<Vec<LinkHandle>, KernelError> {
        link::all(&self.handle).await
    }

    /// Through `/proc/sys`, on this thread: those files belong to the namespace of the thread that
    /// opens them, as the sockets do, so this must not move to a blocking pool (a tiny read/write).
    async fn enable_forwarding(&self, family: IpFamily) -> Result<bool, KernelError> {
        Ok(sysctl::enable_forwarding(family)?)
    }

    async fn supports_nexthops(&self) -> bool {
        if self.mode == NexthopMode::Disabled {
            return false;
        }
        let mut socket = self.batch.lock().await;
        self.kernel_has_nexthops(&mut socket).await
    }

    fn change_notifications(&self, ownership: Ownership) -> Option<futures::stream::BoxStream<'static, ()>> {
        use futures::StreamExt;
        match NetlinkKernel::watch_changes(self, ownership) {
            Ok(stream) => Some(stream.boxed()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow kernel changes; repairs wait for the resync");
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl Interfaces for NetlinkKernel {
    async fn interfaces(&self) -> Result<Vec<InterfaceInfo>, KernelError> {
        interfaces::all(&self.handle).await
    }

    async fn default_route_oif(&self) -> Result<Option<u32>, KernelError> {
        interfaces::default_route_oif(&self.handle).await
    }

    async fn route_oif_to(&self, target: std::net::IpAddr) -> Option<u32> {
        interfaces::route_oif_to(&self.handle, target).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weft_no_nexthop_forces_the_classic_path() {
        assert_eq!(NexthopMode::from_setting(None), NexthopMode::Auto);
        assert_eq!(NexthopMode::from_setting(Some("")), NexthopMode::Auto);
        assert_eq!(NexthopMode::from_setting(Some("0")), NexthopMode::Auto);
        assert_eq!(NexthopMode::from_setting(Some("1")), NexthopMode::Disabled);
        assert_eq!(NexthopMode::from_setting(Some("yes")), NexthopMode::Disabled);
    }
}
