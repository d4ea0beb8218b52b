//! TCP: the helpers every TCP user of the runtime shares (front ends' listeners and
//! connections, the mirror's replication links). Sockets are driven by io_uring on the
//! reactors; this module creates and configures them, and keeps a connection's outgoing
//! bytes ([`SendQueue`]).

use crate::uring::IoCx;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Turn Nagle off on a connection's socket (replies and messages leave at once; failure only
/// costs latency).
pub fn set_nodelay(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live local.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
}

/// The address of a connected socket's peer (`None` when the socket has none, e.g. it was
/// reset). Costs a `dup` and a `close`: for connection setup, not the I/O path.
pub fn peer_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    let dup = fd.try_clone().ok()?;
    std::net::TcpStream::from(dup).peer_addr().ok()
}

/// A new stream socket (blocking mode: io_uring drives it) of `peer`'s family, to connect.
pub fn stream_socket(peer: SocketAddr) -> std::io::Result<OwnedFd> {
    let family = if peer.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Bind and listen on `addr`; returns the socket and the address it is bound to (the port
/// chosen when `addr` asked for port 0).
pub fn listen(addr: SocketAddr) -> std::io::Result<(OwnedFd, SocketAddr)> {
    let l = TcpListener::bind(addr)?;
    let bound = l.local_addr()?;
    Ok((OwnedFd::from(l), bound))
}

/// `addr` as a `sockaddr_storage` for connect(2), with its length.
pub fn sockaddr(addr: SocketAddr) -> (Box<libc::sockaddr_storage>, u32) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) value.
    let mut ss: Box<libc::sockaddr_storage> = Box::new(unsafe { std::mem::zeroed() });
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut *ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut *ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as u32)
}

/// A connection's outgoing bytes: what the connection produces goes to [`SendQueue::pending`]
/// and leaves in one io_uring send per reactor turn ([`SendQueue::start`]), a short send
/// continuing from where it stopped ([`SendQueue::on_send`]).
///
/// Invariant: the bytes being sent (`sending`) are modified only while no send is armed, so
/// the kernel reads a stable buffer; the owner keeps the queue alive (its connection is not
/// `done`) while [`SendQueue::armed`].
pub struct SendQueue {
    /// Bytes queued for the next send (append here).
    pub pending: Vec<u8>,
    sending: Vec<u8>,
    sent: usize,
    armed: bool,
}

impl SendQueue {
    /// An empty queue with room for `cap` bytes each side.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            pending: Vec::with_capacity(cap),
            sending: Vec::with_capacity(cap),
            sent: 0,
            armed: false,
        }
    }

    /// A send is in flight.
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// Bytes held, sent or not (for a high-water mark).
    pub fn held(&self) -> usize {
        self.pending.len() + self.sending.len()
    }

    /// Bytes not yet sent.
    pub fn unsent(&self) -> usize {
        self.pending.len() + self.sending.len() - self.sent
    }

    /// Send what is pending, if no send is in flight (completion kind `Send` for `key`).
    ///
    /// # Safety
    /// The queue must not be dropped while [`Self::armed`] (the kernel reads `sending` until
    /// the completion is reaped).
    pub unsafe fn start(&mut self, io: &mut IoCx, fd: RawFd, key: u32) {
        // SAFETY: forwarded from the caller.
        unsafe { self.start_quiet(io, fd, key, false) };
    }

    /// As [`Self::start`]; with `quiet`, as a quiet send ([`IoCx::push_send_quiet`]): the
    /// caller says its connection needs the completion for nothing else (its receive is
    /// armed, nothing else waits for the send). Everything pending goes in the one send.
    ///
    /// # Safety
    /// As for [`Self::start`].
    pub unsafe fn start_quiet(&mut self, io: &mut IoCx, fd: RawFd, key: u32, quiet: bool) {
        if self.armed || self.pending.is_empty() {
            return;
        }
        std::mem::swap(&mut self.sending, &mut self.pending);
        self.pending.clear();
        self.sent = 0;
        if quiet {
            // SAFETY: `sending` is not modified while the send is armed (the type's
            // invariant) and the caller keeps the queue alive until the completion.
            unsafe { io.push_send_quiet(fd, &self.sending, key) };
            self.armed = true;
        } else {
            // SAFETY: forwarded from the caller.
            unsafe { self.arm(io, fd, key) };
        }
    }

    /// The send in flight completed with `res`: go on with the rest of a short send, or be
    /// ready for the next. `Err(res)` when the socket failed (nothing more will leave).
    ///
    /// # Safety
    /// As for [`Self::start`].
    pub unsafe fn on_send(
        &mut self,
        io: &mut IoCx,
        fd: RawFd,
        key: u32,
        res: i32,
    ) -> Result<(), i32> {
        self.armed = false;
        if res <= 0 {
            return Err(res);
        }
        self.sent += res as usize;
        if self.sent < self.sending.len() {
            // SAFETY: forwarded from the caller.
            unsafe { self.arm(io, fd, key) };
        } else {
            self.sending.clear();
            self.sent = 0;
        }
        Ok(())
    }

    /// Forget what is pending (the connection is broken).
    pub fn drop_pending(&mut self) {
        self.pending.clear();
    }

    /// # Safety
    /// As for [`Self::start`].
    unsafe fn arm(&mut self, io: &mut IoCx, fd: RawFd, key: u32) {
        let rest = &self.sending[self.sent..];
        // SAFETY: `sending` is not modified while the send is armed (the type's invariant)
        // and the caller keeps the queue alive until the completion.
        unsafe { io.push_send(fd, rest, key) };
        self.armed = true;
    }
}

/// Where a front end's TCP connection is in its life (the same for NBD, NVMe/TCP and iSCSI):
/// whether a receive is armed, whether it is closing (no new request acted on), broken (the
/// socket failed or was aborted: nothing more is sent), stopping with the daemon, whether its
/// receive was cancelled already, and whether it is closed (the runtime may drop it).
///
/// Invariant: a receive is cancelled at most once per stop (`cancel_sent`); `closed` is set by
/// the owner only once nothing it armed is in flight.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// A receive is in flight.
    pub recv_armed: bool,
    /// No new request is acted on; the connection closes once idle.
    pub closing: bool,
    /// The socket failed or was aborted: nothing more is sent.
    pub broken: bool,
    /// The daemon is stopping.
    pub shutting_down: bool,
    /// The armed receive was cancelled.
    pub cancel_sent: bool,
    /// Nothing is in flight any more: the runtime may drop the connection.
    pub closed: bool,
}

impl Lifecycle {
    /// The daemon stops: finish what is in flight, take nothing new (the receive is cancelled
    /// once).
    pub fn stop(&mut self, io: &mut IoCx, key: u32) {
        self.shutting_down = true;
        self.closing = true;
        if self.recv_armed && !self.cancel_sent {
            self.cancel_sent = true;
            Self::cancel(io, key, crate::uring::Kind::Recv);
        }
    }

    /// Give the socket up: cancel the receive and, when one is armed, the send.
    pub fn abort(&mut self, io: &mut IoCx, key: u32, send_armed: bool) {
        self.broken = true;
        self.closing = true;
        if self.recv_armed {
            self.cancel_sent = true;
            Self::cancel(io, key, crate::uring::Kind::Recv);
        }
        if send_armed {
            Self::cancel(io, key, crate::uring::Kind::Send);
        }
    }

    /// Cancel connection `key`'s operation of `kind` (its completion comes as `-ECANCELED`).
    pub fn cancel(io: &mut IoCx, key: u32, kind: crate::uring::Kind) {
        use crate::uring::{Kind, UserData};
        let sqe = io_uring::opcode::AsyncCancel::new(UserData::new(kind, key).0)
            .build()
            .user_data(UserData::new(Kind::Cancel, key).0);
        // SAFETY: a cancel references no user memory.
        unsafe { io.push(&sqe) };
    }
}
