//! The netlink socket to nf_tables (libmnl): send a batch and wait for every acknowledgement, or
//! send a request and hand each answer to a callback. Blocking; one socket per operation. Every
//! wait for an answer has a deadline, [`REPLY_TIMEOUT`].

use std::collections::BTreeSet;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nftnl::FinalizedBatch;

/// Room for the largest message nf_tables sends, with slack to align the start.
fn receive_buffer() -> Vec<u8> {
    vec![0; nftnl::nft_nlmsg_maxsize() as usize + 8]
}

/// libmnl reads netlink headers in place: the buffer must start aligned for them.
fn aligned(buffer: &mut [u8]) -> &mut [u8] {
    let offset = buffer.as_ptr().align_offset(std::mem::align_of::<libc::nlmsghdr>());
    &mut buffer[offset..]
}

/// The sequence number in a netlink message's header.
fn sequence_of(message: &[u8]) -> Option<u32> {
    let bytes = message.get(8..12)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

/// How long nf_tables may take to send the next answer. It answers at once unless something is
/// stuck; the calls run on the agent loop, which must not hang while the watchdog keeps pinging.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct NftSocket {
    socket: mnl::Socket,
    buffer: Vec<u8>,
    timeout: Duration,
}

/// A failed batch: the kernel's error and, when the answer says, which message it refused.
#[derive(Debug)]
pub struct BatchError {
    pub sequence: Option<u32>,
    pub error: io::Error,
}

impl From<io::Error> for BatchError {
    fn from(error: io::Error) -> BatchError {
        BatchError { sequence: None, error }
    }
}

impl NftSocket {
    pub fn open() -> io::Result<NftSocket> {
        NftSocket::open_with_timeout(REPLY_TIMEOUT)
    }

    fn open_with_timeout(timeout: Duration) -> io::Result<NftSocket> {
        let socket = mnl::Socket::new(mnl::Bus::Netfilter)?;
        set_receive_timeout(&socket, timeout)?;
        Ok(NftSocket { socket, buffer: receive_buffer(), timeout })
    }

    /// The next answers from the kernel; an error of kind `TimedOut` naming `operation` when
    /// none came within the timeout.
    fn receive(&mut self, operation: &str) -> io::Result<mnl::NlMessages<'_>> {
        let buffer = aligned(&mut self.buffer);
        let received = loop {
            match self.socket.recv_raw(buffer) {
                // A signal was handled meanwhile: with SO_RCVTIMEO set, the kernel does not restart
                // the call by itself (signal(7)).
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                received => break received,
            }
        };
        match received {
            Ok(length) => Ok(mnl::NlMessages::new(&buffer[..length])),
            // SO_RCVTIMEO ran out: the kernel's EAGAIN.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from nf_tables within {:?} while {operation}", self.timeout),
            )),
            Err(e) => Err(e),
        }
    }

    /// Sends `batch` and waits until the kernel acknowledged every message of it. The kernel
    /// applies a batch as one transaction: on error nothing of it took effect.
    pub fn apply(&mut self, batch: &FinalizedBatch) -> Result<(), BatchError> {
        self.socket.send_all(batch)?;
        let portid = self.socket.portid();
        let mut pending: BTreeSet<u32> = batch.sequence_numbers().collect();
        while !pending.is_empty() {
            for message in self.receive("waiting for the acknowledgements of a batch")? {
                let message = message?;
                let sequence = sequence_of(message);
                if let Some(sequence) = sequence {
                    pending.remove(&sequence);
                }
                // Sequence 0: acknowledgements may come in any order and, after an error, not
                // at all for the rest of the batch; the set above tracks them instead.
                mnl::cb_run(message, 0, portid).map_err(|error| BatchError { sequence, error })?;
            }
        }
        Ok(())
    }

    /// Sends one request and feeds every answer to `callback` until the kernel says it is done
    /// (end of a dump, or the acknowledgement of a request sent with `NLM_F_ACK`). `operation`
    /// names the request in a timeout's error.
    pub fn exchange<T>(
        &mut self,
        operation: &str,
        request: &[u8],
        sequence: u32,
        callback: mnl::Callback<T>,
        data: &mut T,
    ) -> io::Result<()> {
        self.socket.send(request)?;
        let portid = self.socket.portid();
        loop {
            for message in self.receive(operation)? {
                if let mnl::CbResult::Stop = mnl::cb_run2(message?, sequence, portid, callback, data)? {
                    return Ok(());
                }
            }
        }
    }
}

/// Makes every receive on `socket` give up after `timeout` (`SO_RCVTIMEO`).
fn set_receive_timeout(socket: &mnl::Socket, timeout: Duration) -> io::Result<()> {
    let timeval = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros().into(),
    };
    // SAFETY: a live socket, and a timeval of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeval as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket nf_tables is never asked anything on: the wait for an answer must end, with an
    /// error that says what was waited for. Run on a thread so a hang fails the test rather
    /// than stalling it.
    #[test]
    fn a_kernel_that_never_answers_times_out_naming_the_operation() {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut socket = NftSocket::open_with_timeout(Duration::from_millis(200)).expect("open a netfilter socket");
            let started = std::time::Instant::now();
            let error = socket.receive("listing the rules").map(|_| ()).expect_err("nothing was sent, nothing comes");
            let _ = done.send((error.kind(), error.to_string(), started.elapsed()));
        });
        let (kind, message, waited) =
            result.recv_timeout(Duration::from_secs(10)).expect("the receive hung: no deadline on it");
        assert_eq!(kind, io::ErrorKind::TimedOut, "{message}");
        assert_eq!(message, "no answer from nf_tables within 200ms while listing the rules");
        assert!(waited >= Duration::from_millis(150), "gave up after {waited:?}");
    }

    extern "C" fn ignore(_: libc::c_int) {}

    /// A signal handled during the wait (SIGHUP for a reload, say) neither ends it early nor
    /// turns into an error: the wait goes on to its deadline.
    #[test]
    fn a_signal_during_the_wait_does_not_end_it() {
        // SAFETY: a handler that does nothing, for a signal no other test uses.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            assert_eq!(libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()), 0);
        }
        let (thread_id, receiver_thread) = std::sync::mpsc::channel();
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut socket = NftSocket::open_with_timeout(Duration::from_millis(600)).expect("open a netfilter socket");
            // SAFETY: pthread_self has no preconditions.
            let _ = thread_id.send(unsafe { libc::pthread_self() });
            let started = std::time::Instant::now();
            let error = socket.receive("reading the chain").map(|_| ()).expect_err("nothing was sent, nothing comes");
            let _ = done.send((error.kind(), started.elapsed()));
        });
        let receiving = receiver_thread.recv().unwrap();
        std::thread::sleep(Duration::from_millis(150));
        // SAFETY: the thread is alive: it waits up to 600 ms and reports before ending.
        assert_eq!(unsafe { libc::pthread_kill(receiving, libc::SIGUSR2) }, 0);
        let (kind, waited) = result.recv_timeout(Duration::from_secs(10)).expect("the receive hung");
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(waited >= Duration::from_millis(500), "the signal ended the wait after {waited:?}");
    }
}
