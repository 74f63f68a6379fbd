//! A raw `NETLINK_ROUTE` socket that sends many requests in one `sendmsg` and reads the acks after.
//!
//! The kernel handles the messages of one `sendmsg` one after the other, in order, inside the
//! system call, and queues its answers (an `NLMSG_ERROR` per failed message, and an ack with code
//! 0 per message that asked for one) before it returns. So a batch keeps the order of its
//! operations, costs one system call per chunk instead of a round trip per object, and every
//! answer is already waiting when `send` returns. The only way to lose one is a full receive
//! buffer, which is sized for the chunk (and detected: `ENOBUFS`).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{NetlinkBuffer, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP_INTR};
use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, TokioSocket};

/// `NLM_F_CAPPED` / `NLM_F_ACK_TLVS` in an ack's header: payload trimmed / extended ack TLVs follow.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's human-readable reason (extended ack).
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Upper bound of what one ack costs in the receive buffer (its skb's truesize).
const ACK_TRUESIZE: usize = 1024;
const RECEIVE_BUFFER: usize = 4 << 20;
const SEND_BUFFER: usize = 1 << 20;
/// Most messages per `sendmsg`; past a few hundred the system call overhead is noise.
const MAX_CHUNK: usize = 1024;
/// Most bytes per `sendmsg` (the kernel refuses a message larger than the send buffer).
const MAX_CHUNK_BYTES: usize = 128 << 10;
const RECV_BUFFER: usize = 64 << 10;
/// How long to wait for an ack that is not already queued; only a lost ack waits this long.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const DUMP_TIMEOUT: Duration = Duration::from_secs(30);
/// A dump that races with changes is flagged `NLM_F_DUMP_INTR` and redone this many times.
const DUMP_ATTEMPTS: usize = 5;

/// Why the kernel refused one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckError {
    /// Positive errno; 0 when the ack never came.
    pub errno: i32,
    /// The extended-ack message, or what went wrong on our side.
    pub detail: Option<String>,
}

impl AckError {
    fn lost(detail: &str) -> Self {
        AckError { errno: 0, detail: Some(detail.to_string()) }
    }

    fn io(error: &io::Error) -> Self {
        AckError { errno: error.raw_os_error().unwrap_or(0), detail: Some(error.to_string()) }
    }

    /// "Network is unreachable (Nexthop device is not up)".
    pub fn reason(&self) -> String {
        let base =
            if self.errno > 0 { nix::errno::Errno::from_raw(self.errno).desc().to_string() } else { String::new() };
        match (&self.detail, base.is_empty()) {
            (Some(detail), true) => detail.clone(),
            (Some(detail), false) => format!("{base} ({detail})"),
            (None, _) => base,
        }
    }
}

/// One netlink message in a received buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawMessage<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub port: u32,
    pub payload: &'a [u8],
}

/// The netlink messages in `buf`, stopping at the first malformed one.
pub(crate) fn messages(buf: &[u8]) -> impl Iterator<Item = RawMessage<'_>> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let rest = buf.get(offset..)?;
        let message = NetlinkBuffer::new_checked(rest).ok()?;
        let length = message.length() as usize;
        if length < 16 {
            return None;
        }
        offset += (length + 3) & !3;
        Some(RawMessage {
            kind: message.message_type(),
            flags: message.flags(),
            seq: message.sequence_number(),
            port: message.port_number(),
            payload: message.payload(),
        })
    })
}

/// The error code of an `NLMSG_ERROR` (0 = success) and its extended-ack message.
fn parse_ack(message: &RawMessage) -> AckError {
    let payload = message.payload;
    let Some(code) = payload.get(..4) else {
        return AckError::lost("truncated acknowledgement");
    };
    let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    let detail = ack_message(message).filter(|m| !m.is_empty());
    AckError { errno: code.saturating_neg(), detail }
}

fn ack_message(message: &RawMessage) -> Option<String> {
    if message.flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // After the code comes the request's header, or the whole request unless capped.
    let original = NetlinkBuffer::new_checked(message.payload.get(4..)?).ok()?;
    let echoed = if message.flags & NLM_F_CAPPED != 0 { 16 } else { (original.length() as usize + 3) & !3 };
    let tlvs = message.payload.get(4 + echoed..)?;
    netlink_packet_core::NlasIterator::new(tlvs)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| String::from_utf8_lossy(nla.value()).trim_end_matches('\0').to_string())
}

/// The batch socket. Not shared: callers hold it behind a lock for a whole batch or dump.
pub(crate) struct BatchSocket {
    socket: TokioSocket,
    port: u32,
    seq: u32,
    chunk: usize,
    recv_buf: Vec<u8>,
}

impl BatchSocket {
    /// Opens the socket in the calling thread's network namespace (it stays bound to it).
    pub fn open() -> io::Result<Self> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
        let port = socket.socket_mut().bind_auto()?.port_number();
        let raw = socket.socket_ref();
        // Best effort: both only make errors smaller and clearer (Linux 4.2 / 4.12).
        let _ = raw.set_cap_ack(true);
        let _ = raw.set_ext_ack(true);
        set_buffer(raw.as_raw_fd(), libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, RECEIVE_BUFFER);
        set_buffer(raw.as_raw_fd(), libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, SEND_BUFFER);
        let receive = raw.get_rx_buf_sz()?;
        Ok(BatchSocket {
            socket,
            port,
            seq: 0,
            chunk: (receive / ACK_TRUESIZE).clamp(16, MAX_CHUNK),
            recv_buf: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// The socket's netlink port id: notifications caused by its requests carry it.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Sends `count` requests in order, each encoded by `encode(index, seq, out)` as one complete
    /// netlink message with `NLM_F_ACK`, and returns the requests that failed: index and error.
    /// (Only the failures: at 40,000 requests a result per request would be over a megabyte.)
    ///
    /// Only the last message of a chunk keeps `NLM_F_ACK`: the kernel answers every failed
    /// message whatever its flags, and handles a chunk's messages in order, so once the last one
    /// is acknowledged every message without an error has succeeded. That saves the kernel an
    /// ack and us a `recv` per object — about a third of the time of a large batch.
    pub async fn transact(
        &mut self,
        count: usize,
        mut encode: impl FnMut(usize, u32, &mut Vec<u8>),
    ) -> Vec<(usize, AckError)> {
        let mut failures = Vec::new();
        let mut buf = Vec::with_capacity(MAX_CHUNK_BYTES + 4096);
        let mut start = 0;
        while start < count {
            buf.clear();
            let base = self.seq.wrapping_add(1);
            let mut end = start;
            let mut last_at = 0;
            while end < count && end - start < self.chunk && buf.len() < MAX_CHUNK_BYTES {
                if end > start {
                    clear_ack_flag(&mut buf[last_at..]);
                }
                last_at = buf.len();
                encode(end, base.wrapping_add((end - start) as u32), &mut buf);
                end += 1;
            }
            self.seq = base.wrapping_add((end - start - 1) as u32);
            let outcomes = self.send_chunk(&buf, base, end - start).await;
            failures.extend(outcomes.into_iter().enumerate().filter_map(|(i, o)| Some((start + i, o.err()?))));
            start = end;
            // Let other tasks of a single-threaded runtime breathe between chunks.
            tokio::task::yield_now().await;
        }
        failures
    }

    async fn send_chunk(&mut self, buf: &[u8], base: u32, count: usize) -> Vec<Result<(), AckError>> {
        if let Err(e) = self.socket.send(buf).await {
            return vec![Err(AckError::io(&e)); count];
        }
        self.collect_acks(base, count).await
    }

    /// Reads errors and the chunk's final ack; the messages with neither succeeded.
    async fn collect_acks(&mut self, base: u32, count: usize) -> Vec<Result<(), AckError>> {
        let mut outcomes: Vec<Option<Result<(), AckError>>> = vec![None; count];
        let last = count - 1;
        let mut lost = false;
        let mut timeout = ACK_TIMEOUT;
        while outcomes[last].is_none() {
            match tokio::time::timeout(timeout, self.recv()).await {
                Err(_) => break,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // Some answers were dropped: what is still queued comes; then stop waiting.
                    lost = true;
                    timeout = Duration::from_millis(50);
                }
                Ok(Err(e)) => {
                    fill(&mut outcomes, Err(AckError::io(&e)));
                    return unwrap_outcomes(outcomes);
                }
                Ok(Ok(())) => self.record_acks(base, &mut outcomes),
            }
        }
        let silent = if outcomes[last].is_some() && !lost {
            Ok(())
        } else {
            Err(AckError::lost("outcome unknown: acknowledgements lost (netlink receive buffer overflow)"))
        };
        fill(&mut outcomes, silent);
        unwrap_outcomes(outcomes)
    }

    /// Records the acks in the receive buffer that belong to this chunk.
    fn record_acks(&self, base: u32, outcomes: &mut [Option<Result<(), AckError>>]) {
        for message in messages(&self.recv_buf) {
            let index = message.seq.wrapping_sub(base) as usize;
            if message.kind != NLMSG_ERROR || index >= outcomes.len() || outcomes[index].is_some() {
                continue; // a late ack of an earlier batch, or not an ack
            }
            let ack = parse_ack(&message);
            // Code 0 is success, even with an extended-ack warning attached.
            outcomes[index] = Some(if ack.errno == 0 { Ok(()) } else { Err(ack) });
        }
    }

    /// Sends one dump request, encoded by `encode(seq, out)`, and returns the payload bytes of
    /// every message of the answer (`(message type, payload)`), redoing an interrupted dump.
    pub async fn dump(&mut self, mut encode: impl FnMut(u32, &mut Vec<u8>)) -> Result<Vec<(u16, Vec<u8>)>, AckError> {
        for _ in 0..DUMP_ATTEMPTS {
            match tokio::time::timeout(DUMP_TIMEOUT, self.dump_once(&mut encode)).await {
                Err(_) => return Err(AckError::lost("dump timed out")),
                Ok(Ok(Some(messages))) => return Ok(messages),
                Ok(Ok(None)) => continue, // interrupted by concurrent changes: redo it
                Ok(Err(e)) => return Err(e),
            }
        }
        Err(AckError::lost("dump kept being interrupted by changes"))
    }

    async fn dump_once(
        &mut self,
        encode: &mut impl FnMut(u32, &mut Vec<u8>),
    ) -> Result<Option<Vec<(u16, Vec<u8>)>>, AckError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut request = Vec::new();
        encode(seq, &mut request);
        self.socket.send(&request).await.map_err(|e| AckError::io(&e))?;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            self.recv().await.map_err(|e| AckError::io(&e))?;
            for message in messages(&self.recv_buf).filter(|m| m.seq == seq) {
                interrupted |= message.flags & NLM_F_DUMP_INTR != 0;
                match message.kind {
                    NLMSG_DONE => return Ok((!interrupted).then_some(out)),
                    NLMSG_ERROR => {
                        let ack = parse_ack(&message);
                        return Err(ack);
                    }
                    kind => out.push((kind, message.payload.to_vec())),
                }
            }
        }
    }

    async fn recv(&mut self) -> io::Result<()> {
        self.recv_buf.clear();
        self.socket.recv(&mut self.recv_buf).await
    }
}

/// Clears `NLM_F_ACK` in the header of the netlink message at the start of `message`.
fn clear_ack_flag(message: &mut [u8]) {
    if let Some(flags) = message.get_mut(6..8) {
        let value = u16::from_ne_bytes([flags[0], flags[1]]) & !NLM_F_ACK;
        flags.copy_from_slice(&value.to_ne_bytes());
    }
}

fn fill(outcomes: &mut [Option<Result<(), AckError>>], with: Result<(), AckError>) {
    for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
        *outcome = Some(with.clone());
    }
}

fn unwrap_outcomes(outcomes: Vec<Option<Result<(), AckError>>>) -> Vec<Result<(), AckError>> {
    outcomes.into_iter().map(|o| o.unwrap_or_else(|| Err(AckError::lost("no acknowledgement")))).collect()
}

/// Sets a socket buffer size, past `rmem_max`/`wmem_max` when privileged (`*BUFFORCE`).
pub(crate) fn set_buffer(fd: i32, force: i32, normal: i32, size: usize) {
    let value = size as libc::c_int;
    for option in [force, normal] {
        // SAFETY: a valid socket and a c_int option value of the right length.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seq: u32, code: i32, flags: u16, tlv_msg: Option<&str>) -> Vec<u8> {
        let mut payload = code.to_ne_bytes().to_vec();
        // The echoed request header (capped).
        payload.extend_from_slice(&[16, 0, 0, 0, 24, 0, 5, 5]);
        payload.extend_from_slice(&seq.to_ne_bytes());
        payload.extend_from_slice(&0u32.to_ne_bytes());
        if let Some(text) = tlv_msg {
            let mut value = text.as_bytes().to_vec();
            value.push(0);
            let len = 4 + value.len();
            payload.extend_from_slice(&(len as u16).to_ne_bytes());
            payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            payload.extend_from_slice(&value);
            payload.resize((payload.len() + 3) & !3, 0);
        }
        let mut out = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        out.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&77u32.to_ne_bytes());
        out.extend(payload);
        out
    }

    #[test]
    fn parses_acks_with_and_without_extended_messages() {
        let mut buf = ack(1, 0, NLM_F_CAPPED, None);
        buf.extend(ack(2, -libc::ENETUNREACH, NLM_F_CAPPED | NLM_F_ACK_TLVS, Some("Nexthop device is not up")));
        let parsed: Vec<_> = messages(&buf).map(|m| (m.seq, parse_ack(&m))).collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].1.errno, 0);
        assert_eq!(parsed[1].0, 2);
        assert_eq!(parsed[1].1.reason(), "Network is unreachable (Nexthop device is not up)");
    }

    #[test]
    fn clears_only_the_ack_flag() {
        let mut message = ack(1, 0, NLM_F_CAPPED, None);
        message[6..8].copy_from_slice(&0x0505u16.to_ne_bytes());
        clear_ack_flag(&mut message);
        assert_eq!(&message[6..8], &0x0501u16.to_ne_bytes());
        clear_ack_flag(&mut [0u8; 3]); // too short: left alone
    }

    #[test]
    fn stops_at_garbage() {
        let mut buf = ack(1, 0, NLM_F_CAPPED, None);
        buf.extend_from_slice(&[200, 0, 0, 0, 1, 2]);
        assert_eq!(messages(&buf).count(), 1);
        assert_eq!(messages(&[1, 2, 3]).count(), 0);
    }
}
