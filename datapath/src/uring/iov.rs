//! Scatter lists for socket sends: one `sendmsg` carries several buffers (a message's header
//! from one place, its payload from another, several messages in a row) without gathering
//! them into one buffer first. The same list is what an RDMA transport posts as a work
//! request's scatter/gather elements.
//!
//! Model: a [`SendList`] is a `msghdr` and its `iovec`s, kept in place (boxed and owned by the
//! connection) from [`IoCx::push_sendmsg`] until the send's completion is reaped. A short send
//! is continued with [`SendList::advance`], which drops what went out from the front.
//!
//! Invariants: the list is never changed while its send is armed; every buffer it points at
//! stays valid and unmodified until the completion (the caller's contract, see
//! [`IoCx::push_sendmsg`]); at most [`MAX_IOV`] entries go in one `sendmsg` (the kernel's
//! `UIO_MAXIOV`), the rest after the completion.

use super::{IoCx, Kind, UserData};

/// Most iovecs one `sendmsg` takes (Linux `UIO_MAXIOV`).
pub const MAX_IOV: usize = 1024;

/// A `msghdr` and its `iovec`s (see the module doc).
pub struct SendList {
    hdr: Box<libc::msghdr>,
    iov: Vec<libc::iovec>,
    /// The first entry not yet sent.
    head: usize,
    /// Bytes not yet sent.
    left: usize,
}

// SAFETY: the raw pointers are only addresses of buffers whose owner (the connection holding
// the list and the buffers) moves with it; nothing is shared between threads through them.
unsafe impl Send for SendList {}

impl Default for SendList {
    fn default() -> Self {
        Self {
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            hdr: Box::new(unsafe { std::mem::zeroed() }),
            iov: Vec::with_capacity(64),
            head: 0,
            left: 0,
        }
    }
}

impl SendList {
    /// Forget every entry (only while no send of the list is armed).
    pub fn clear(&mut self) {
        self.iov.clear();
        self.head = 0;
        self.left = 0;
    }

    /// Append `buf` (skipped when empty). The caller keeps it valid and unmodified until the
    /// list is cleared or every send of it completed.
    pub fn push(&mut self, buf: &[u8]) {
        if buf.is_empty() {
            return;
        }
        self.iov.push(libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        });
        self.left += buf.len();
    }

    /// Bytes not yet sent.
    pub fn left(&self) -> usize {
        self.left
    }

    /// Entries not yet sent.
    pub fn entries(&self) -> usize {
        self.iov.len() - self.head
    }

    /// `n` more bytes went out (a send's result): drop them from the front.
    pub fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.left, "sent more than the list holds");
        n = n.min(self.left);
        self.left -= n;
        while n > 0 {
            let e = &mut self.iov[self.head];
            if n >= e.iov_len {
                n -= e.iov_len;
                self.head += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the same buffer.
                e.iov_base = unsafe { e.iov_base.cast::<u8>().add(n) }.cast();
                e.iov_len -= n;
                n = 0;
            }
        }
    }
}

impl IoCx {
    /// Queue a `sendmsg` of what is left of `list` (at most [`MAX_IOV`] entries) for
    /// connection `key` (completion kind `Send`, its result the bytes sent).
    ///
    /// # Safety
    /// `list` and every buffer it points at must stay valid, in place and unmodified until the
    /// completion is reaped.
    pub unsafe fn push_sendmsg(&mut self, fd: i32, list: &mut SendList, key: u32) {
        // SAFETY: forwarded from the caller.
        unsafe { self.sendmsg(fd, list, key, false) };
    }

    /// As [`IoCx::push_sendmsg`], as a quiet send ([`IoCx::push_send_quiet`]) when the whole
    /// rest of `list` fits in one `sendmsg` and `quiet` says the connection needs its
    /// completion for nothing else. True when it went as a quiet send.
    ///
    /// # Safety
    /// As for [`IoCx::push_sendmsg`].
    pub unsafe fn push_sendmsg_quiet(
        &mut self,
        fd: i32,
        list: &mut SendList,
        key: u32,
        quiet: bool,
    ) -> bool {
        let quiet = quiet && list.entries() <= MAX_IOV;
        // SAFETY: forwarded from the caller.
        unsafe { self.sendmsg(fd, list, key, quiet) };
        quiet
    }

    /// # Safety
    /// As for [`IoCx::push_sendmsg`].
    unsafe fn sendmsg(&mut self, fd: i32, list: &mut SendList, key: u32, quiet: bool) {
        let n = list.entries().min(MAX_IOV);
        list.hdr.msg_iov = list.iov[list.head..].as_mut_ptr();
        list.hdr.msg_iovlen = n as _;
        let flags = if quiet {
            libc::MSG_NOSIGNAL | libc::MSG_WAITALL
        } else {
            libc::MSG_NOSIGNAL
        };
        let sqe = io_uring::opcode::SendMsg::new(io_uring::types::Fd(fd), &*list.hdr)
            .flags(flags as u32)
            .build()
            .user_data(UserData::new(Kind::Send, key).0);
        // SAFETY: the caller keeps the header, the iovecs (in the list, not changed while
        // armed) and the buffers valid until the completion.
        unsafe { self.push(&sqe) };
        if quiet {
            self.quiet_pushed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More entries than one `sendmsg` takes, through the ring: every byte arrives, in order.
    #[test]
    fn a_list_longer_than_one_sendmsg_goes_out_whole_and_in_order() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (tx, mut rx) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let bufs: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| (0..7).map(|j| (i * 7 + j) as u8).collect())
            .collect();
        let mut l = SendList::default();
        bufs.iter().for_each(|b| l.push(b));
        let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
        let mut sends = 0;
        while l.left() > 0 {
            // SAFETY: `l` and `bufs` outlive the completion, reaped below before either
            // changes.
            unsafe { io.push_sendmsg(tx.as_raw_fd(), &mut l, 9) };
            io.ring.submit_and_wait(1).expect("submit");
            let cqe = io.ring.completion().next().expect("a completion");
            assert_eq!(UserData(cqe.user_data()), UserData::new(Kind::Send, 9));
            assert!(cqe.result() > 0, "sendmsg failed: {}", cqe.result());
            l.advance(cqe.result() as usize);
            sends += 1;
        }
        assert!(sends >= 3, "at most {MAX_IOV} entries per sendmsg");
        drop(tx);
        let mut got = Vec::new();
        rx.read_to_end(&mut got).expect("read");
        assert_eq!(got, bufs.concat());
    }

    #[test]
    fn advancing_drops_whole_entries_and_trims_a_partial_one() {
        let (a, b, c) = ([1u8; 40], [2u8; 4096], [3u8; 40]);
        let mut l = SendList::default();
        l.push(&a);
        l.push(&[]);
        l.push(&b);
        l.push(&c);
        assert_eq!((l.entries(), l.left()), (3, 4176));
        l.advance(100);
        assert_eq!((l.entries(), l.left()), (2, 4076));
        // SAFETY: the entry points into `b`, alive here.
        let first = unsafe {
            std::slice::from_raw_parts(l.iov[l.head].iov_base.cast::<u8>(), l.iov[l.head].iov_len)
        };
        assert_eq!(first.len(), 4036);
        assert!(first.iter().all(|&x| x == 2));
        l.advance(4036);
        assert_eq!((l.entries(), l.left()), (1, 40));
        l.advance(40);
        assert_eq!((l.entries(), l.left()), (0, 0));
        l.clear();
        assert_eq!(l.entries(), 0);
    }
}
