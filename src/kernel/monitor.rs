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

use super::netlink::decode;
use super::netlink::{messages, set_buffer, RawMessage};
use super::nexthop::{NexthopMessage, RTM_DELNEXTHOP, RTM_NEWNEXTHOP, RTNLGRP_NEXTHOP};
use super::{Ownership, WEFT_PROTOCOL};

const GROUPS: [u32; 4] = [libc::RTNLGRP_LINK, libc::RTNLGRP_NEIGH, libc::RTNLGRP_IPV4_ROUTE, RTNLGRP_NEXTHOP];
/// Room for a burst of notifications (each costs about 1 KiB of receive buffer).
const RECEIVE_BUFFER: usize = 4 << 20;
const RECV_BUFFER: usize = 64 << 10;
const NUD_PERMANENT: u16 = 0x80;

/// Subscribes `socket` to link, neighbour, IPv4 route and nexthop notifications.
fn subscribe(socket: &mut Socket) -> io::Result<()> {
    socket.bind_auto()?;
    for group in GROUPS {
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
        subscribe(socket.socket_mut())?;
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
/// through the sockets in `ignore_ports` (see [`super::netlink::NetlinkKernel::ports`]) are
/// ignored. Lost notifications (a full receive buffer) count as a change. The stream ends on a
/// socket error, after one last item.
///
/// The socket is opened in the current thread's network namespace.
pub fn watch_changes(ownership: Ownership, ignore_ports: Vec<u32>) -> io::Result<impl Stream<Item = ()>> {
    let subscription = Subscription::open()?;
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
        subscribe(&mut socket)?;
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
