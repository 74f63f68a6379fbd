//! The netlink socket to nf_tables (libmnl): send a batch and wait for every acknowledgement, or
//! send a request and hand each answer to a callback. Blocking; one socket per operation.

use std::collections::BTreeSet;
use std::io;

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

pub struct NftSocket {
    socket: mnl::Socket,
    buffer: Vec<u8>,
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
        Ok(NftSocket { socket: mnl::Socket::new(mnl::Bus::Netfilter)?, buffer: receive_buffer() })
    }

    /// Sends `batch` and waits until the kernel acknowledged every message of it. The kernel
    /// applies a batch as one transaction: on error nothing of it took effect.
    pub fn apply(&mut self, batch: &FinalizedBatch) -> Result<(), BatchError> {
        self.socket.send_all(batch)?;
        let portid = self.socket.portid();
        let mut pending: BTreeSet<u32> = batch.sequence_numbers().collect();
        while !pending.is_empty() {
            for message in self.socket.recv(aligned(&mut self.buffer))? {
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
    /// (end of a dump, or the acknowledgement of a request sent with `NLM_F_ACK`).
    pub fn exchange<T>(
        &mut self,
        request: &[u8],
        sequence: u32,
        callback: mnl::Callback<T>,
        data: &mut T,
    ) -> io::Result<()> {
        self.socket.send(request)?;
        let portid = self.socket.portid();
        loop {
            for message in self.socket.recv(aligned(&mut self.buffer))? {
                if let mnl::CbResult::Stop = mnl::cb_run2(message?, sequence, portid, callback, data)? {
                    return Ok(());
                }
            }
        }
    }
}
