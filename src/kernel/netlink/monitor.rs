//! Kernel change notifications (`ip monitor`), so a backend repairs at once what someone else
//! deleted or changed instead of waiting for its periodic resync.
//!
//! Two views of one subscription: [`watch_changes`], a stream that says "something of weft's may
//! have changed", and [`ChangeCounter`], which counts notifications so tests can assert that an
//! agent restart changes nothing.

use std::io;

use futures::Stream;
use netlink_packet_core::Parseable;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::RouteMessage;
use std::os::fd::AsRawFd;

use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, Socket, TokioSocket};

use super::decode;
use super::nexthop::{NexthopMessage, RTM_DELNEXTHOP, RTM_NEWNEXTHOP, RTNLGRP_NEXTHOP};
use super::socket::{messages, set_buffer, RawMessage};
use crate::kernel::{Ownership, WEFT_PROTOCOL};

/// What [`watch_changes`] listens to: weft's objects of either family.
const GROUPS: &[u32] =
    &[libc::RTNLGRP_LINK, libc::RTNLGRP_NEIGH, libc::RTNLGRP_IPV4_ROUTE, libc::RTNLGRP_IPV6_ROUTE, RTNLGRP_NEXTHOP];
/// What [`ChangeCounter`] counts: as before IPv6 routes were modelled (IPv4 routes only), so the
/// kernel's own IPv6 link-local churn does not show as changes.
const COUNTER_GROUPS: &[u32] = &[libc::RTNLGRP_LINK, libc::RTNLGRP_NEIGH, libc::RTNLGRP_IPV4_ROUTE, RTNLGRP_NEXTHOP];
/// Room for a burst of notifications (each costs about 1 KiB of receive buffer).
const RECEIVE_BUFFER: usize = 4 << 20;
const RECV_BUFFER: usize = 64 << 10;
const NUD_PERMANENT: u16 = 0x80;

/// Subscribes `socket` to `groups` (link, neighbour, route and nexthop notifications).
fn subscribe(socket: &mut Socket, groups: &[u32]) -> io::Result<()> {
    socket.bind_auto()?;
    for &group in groups {
        socket.add_membership(group)?;
    }
    set_buffer(socket.as_raw_fd(), libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, RECEIVE_BUFFER);
    Ok(())
}

/// What one read from a subscribed socket brought.
enum Batch {
    /// Notifications (possibly none relevant).
    Messages,
    /// The receive buffer overflowed: some notifications were lost.
    Lost,
    /// Nothing queued (non-blocking reads only).
    Empty,
}

/// Reads one datagram into `buf` if one is queued, without waiting.
fn try_recv(socket: &Socket, buf: &mut Vec<u8>) -> io::Result<Batch> {
    buf.clear();
    match socket.recv(buf, libc::MSG_DONTWAIT) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Batch::Empty),
        other => classify(other.map(|_| ())),
    }
}

fn classify(read: io::Result<()>) -> io::Result<Batch> {
    match read {
        Ok(()) => Ok(Batch::Messages),
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(Batch::Lost),
        Err(e) => Err(e),
    }
}

/// A subscribed socket on the tokio reactor, for [`watch_changes`].
struct Subscription {
    socket: TokioSocket,
    buf: Vec<u8>,
}

impl Subscription {
    fn open() -> io::Result<Self> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
        subscribe(socket.socket_mut(), GROUPS)?;
        Ok(Subscription { socket, buf: Vec::with_capacity(RECV_BUFFER) })
    }

    async fn next(&mut self) -> io::Result<Batch> {
        self.buf.clear();
        classify(self.socket.recv(&mut self.buf).await)
    }

    fn try_next(&mut self) -> io::Result<Batch> {
        try_recv(self.socket.socket_ref(), &mut self.buf)
    }

    fn messages(&self) -> impl Iterator<Item = RawMessage<'_>> {
        messages(&self.buf)
    }
}

/// Which notifications concern weft.
struct Filter {
    ownership: Ownership,
    /// Netlink ports of weft's own sockets: their changes are not news.
    ignore_ports: Vec<u32>,
}

impl Filter {
    fn concerns(&self, message: &RawMessage) -> bool {
        if message.port != 0 && self.ignore_ports.contains(&message.port) {
            return false;
        }
        let deleted =
            matches!(message.kind, libc::RTM_DELROUTE | libc::RTM_DELNEIGH | libc::RTM_DELLINK | RTM_DELNEXTHOP);
        match message.kind {
            libc::RTM_NEWROUTE | libc::RTM_DELROUTE => self.route(message.payload),
            libc::RTM_NEWNEIGH | libc::RTM_DELNEIGH => self.neighbour(message, deleted),
            libc::RTM_NEWLINK | libc::RTM_DELLINK => self.link(message.payload),
            RTM_NEWNEXTHOP | RTM_DELNEXTHOP => {
                NexthopMessage::parse(message.payload).is_ok_and(|n| n.header.protocol == WEFT_PROTOCOL)
            }
            _ => false,
        }
    }

    fn route(&self, payload: &[u8]) -> bool {
        RouteMessage::parse(payload).is_ok_and(|route| decode::owned_route(&route, &self.ownership).is_some())
    }

    /// Neighbours and FDB entries on weft's devices that someone else changed, or that went.
    fn neighbour(&self, message: &RawMessage, deleted: bool) -> bool {
        let Ok(neighbour) = NeighbourMessage::parse(message.payload) else {
            return false;
        };
        if !self.ownership.links.contains(&neighbour.header.ifindex) {
            return false;
        }
        // Someone's request (weft's own were filtered out by port): an admin delete of an ARP
        // entry shows up as a NEWNEIGH in state FAILED carrying the requester's port.
        let requested = message.port != 0;
        // The vxlan driver reports every FDB change with port 0, weft's own puts included, so
        // only removals of permanent entries (FDB or ARP) are news; the kernel's own ARP
        // activity (resolution, garbage collection of learnt entries) is not.
        let permanent = u16::from(neighbour.header.state) & NUD_PERMANENT != 0;
        requested || (deleted && permanent)
    }

    /// Any change to a weft device (down, MTU, deleted): the kernel drops routes through a device
    /// that goes down without a notification per route.
    fn link(&self, payload: &[u8]) -> bool {
        // struct ifinfomsg: family, pad, type (u16), index (i32), ...
        let Some(index) = payload.get(4..8) else {
            return false;
        };
        let index = u32::from_ne_bytes([index[0], index[1], index[2], index[3]]);
        self.ownership.links.contains(&index)
    }
}

/// A stream that yields once whenever something weft owns under `ownership` may have been
/// changed or deleted by someone else; a burst of notifications yields once. Changes made
/// through the sockets in `ignore_ports` (see [`super::NetlinkKernel::ports`]) are
/// ignored. Lost notifications (a full receive buffer) count as a change. The stream ends on a
/// socket error, after one last item.
///
/// The socket is opened in the current thread's network namespace.
pub fn watch_changes(ownership: Ownership, ignore_ports: Vec<u32>) -> io::Result<impl Stream<Item = ()>> {
    let subscription = Subscription::open()?;
    if let Err(e) = attach_filter(subscription.socket.socket_ref(), &ignore_ports) {
        tracing::debug!("no in-kernel filter on the change notifications: {e}");
    }
    let filter = Filter { ownership, ignore_ports };
    Ok(futures::stream::unfold(Some((subscription, filter)), |state| async move {
        let (mut subscription, filter) = state?;
        match next_relevant(&mut subscription, &filter).await {
            Ok(()) => Some(((), Some((subscription, filter)))),
            Err(e) => {
                tracing::warn!("kernel change notifications stopped: {e}");
                Some(((), None))
            }
        }
    }))
}

/// `SO_ATTACH_FILTER` (asm-generic; the same on x86 and arm).
const SO_ATTACH_FILTER: libc::c_int = 26;
const NLMSG_PID_OFFSET: u32 = 12;
const NLMSG_TYPE_OFFSET: u32 = 4;

/// A classic BPF program that has the kernel drop, before they are queued, the notifications
/// that come in bursts and that [`Filter::concerns`] ignores anyway: those caused by the sockets
/// in `ignore_ports` (weft's own changes), and `RTM_NEWNEIGH` without a requester (the vxlan
/// driver's echo of every FDB put). Without it an agent installing 10,000 peers overflows this
/// socket with 40,000 notifications of its own changes, takes the overflow for a lost foreign
/// change and reads and diffs the whole kernel again right after converging.
fn own_notifications_filter(ignore_ports: &[u32]) -> Vec<libc::sock_filter> {
    // Absolute loads read big-endian; the header's fields are in host order.
    let be32 = |v: u32| u32::from_be_bytes(v.to_ne_bytes());
    let be16 = |v: u16| u32::from(u16::from_be_bytes(v.to_ne_bytes()));
    let op = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter { code: code as u16, jt, jf, k };
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ports = &ignore_ports[..ignore_ports.len().min(200)];
    let n = ports.len();
    // Layout: 0 load pid; 1..=n pid == port → drop; n+1 pid == 0 → check type, else accept;
    // n+2 load type; n+3 type == RTM_NEWNEIGH → drop, else accept; n+4 accept; n+5 drop.
    // Jump offsets count from the next instruction.
    let (accept, drop) = (n + 4, n + 5);
    let mut program = vec![op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NLMSG_PID_OFFSET, 0, 0)];
    for (i, port) in ports.iter().enumerate() {
        let at = i + 1;
        program.push(op(jeq, be32(*port), (drop - at - 1) as u8, 0));
    }
    program.push(op(jeq, 0, 0, (accept - (n + 1) - 1) as u8));
    program.push(op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, NLMSG_TYPE_OFFSET, 0, 0));
    program.push(op(jeq, be16(libc::RTM_NEWNEIGH), (drop - (n + 3) - 1) as u8, 0));
    program.push(op(libc::BPF_RET | libc::BPF_K, u32::MAX, 0, 0));
    program.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, 0));
    program
}

fn attach_filter(socket: &Socket, ignore_ports: &[u32]) -> io::Result<()> {
    let mut program = own_notifications_filter(ignore_ports);
    let fprog = libc::sock_fprog { len: program.len() as libc::c_ushort, filter: program.as_mut_ptr() };
    // SAFETY: a valid socket and a complete program; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits for a relevant notification, then drains what else is queued so a burst counts once.
async fn next_relevant(subscription: &mut Subscription, filter: &Filter) -> io::Result<()> {
    loop {
        let relevant = match subscription.next().await? {
            Batch::Lost => true,
            Batch::Messages => subscription.messages().any(|m| filter.concerns(&m)),
            Batch::Empty => false,
        };
        if relevant {
            while !matches!(subscription.try_next()?, Batch::Empty) {}
            return Ok(());
        }
    }
}

/// Notifications seen so far, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    /// `RTM_NEWROUTE` (an add or a replace) and `RTM_DELROUTE`, IPv4, any table.
    pub routes_added: u64,
    pub routes_deleted: u64,
    pub nexthops: u64,
    /// Neighbour and FDB notifications.
    pub neighbours: u64,
    pub links: u64,
    /// Whether notifications were lost (the counts are then lower bounds).
    pub lost: bool,
}

impl ChangeCounts {
    pub fn routes(&self) -> u64 {
        self.routes_added + self.routes_deleted
    }

    fn count(&mut self, message: &RawMessage) {
        match message.kind {
            libc::RTM_NEWROUTE => self.routes_added += 1,
            libc::RTM_DELROUTE => self.routes_deleted += 1,
            RTM_NEWNEXTHOP | RTM_DELNEXTHOP => self.nexthops += 1,
            libc::RTM_NEWNEIGH | libc::RTM_DELNEIGH => self.neighbours += 1,
            libc::RTM_NEWLINK | libc::RTM_DELLINK => self.links += 1,
            _ => {}
        }
    }
}

/// Counts kernel change notifications from the moment it is opened, in the network namespace
/// of the thread that opens it (it needs no runtime, and may be read from any thread after). The
/// kernel queues a notification inside the system call that made the change, so
/// [`ChangeCounter::counts`] right after a change returned already sees it.
pub struct ChangeCounter {
    socket: Socket,
    buf: Vec<u8>,
    counts: ChangeCounts,
}

impl ChangeCounter {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        subscribe(&mut socket, COUNTER_GROUPS)?;
        Ok(ChangeCounter { socket, buf: Vec::with_capacity(RECV_BUFFER), counts: ChangeCounts::default() })
    }

    /// Reads every queued notification and returns the totals since [`ChangeCounter::open`].
    pub fn counts(&mut self) -> io::Result<ChangeCounts> {
        loop {
            match try_recv(&self.socket, &mut self.buf)? {
                Batch::Empty => return Ok(self.counts),
                Batch::Lost => self.counts.lost = true,
                Batch::Messages => messages(&self.buf).for_each(|m| self.counts.count(&m)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the classic BPF subset the filter uses over one netlink message header.
    fn accepts(program: &[libc::sock_filter], port: u32, kind: u16) -> bool {
        let mut header = [0u8; 16];
        header[4..6].copy_from_slice(&kind.to_ne_bytes());
        header[12..16].copy_from_slice(&port.to_ne_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = program[pc];
            let code = u32::from(ins.code);
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from_be_bytes(header[k..k + 4].try_into().unwrap());
                }
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from(u16::from_be_bytes(header[k..k + 2].try_into().unwrap()));
                }
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if acc == ins.k { ins.jt } else { ins.jf });
                }
                c if c == libc::BPF_RET | libc::BPF_K => return ins.k != 0,
                other => panic!("unexpected instruction {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn the_kernel_filter_drops_only_our_own_and_unrequested_neighbour_news() {
        let program = own_notifications_filter(&[4001, 77]);
        assert!(!accepts(&program, 4001, libc::RTM_NEWROUTE), "our own route put");
        assert!(!accepts(&program, 77, libc::RTM_DELROUTE));
        assert!(!accepts(&program, 0, libc::RTM_NEWNEIGH), "the vxlan driver's FDB echo");
        assert!(accepts(&program, 0, libc::RTM_DELNEIGH), "an FDB entry that went");
        assert!(accepts(&program, 0, libc::RTM_NEWLINK));
        assert!(accepts(&program, 0, libc::RTM_DELROUTE), "the kernel dropping a route");
        assert!(accepts(&program, 5555, libc::RTM_NEWNEIGH), "someone's neighbour change");
        assert!(accepts(&program, 5555, libc::RTM_DELROUTE));
        assert!(accepts(&own_notifications_filter(&[]), 9, libc::RTM_DELROUTE));
    }
}
