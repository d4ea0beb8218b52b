//! Acceptors and services: how front ends and layers put connections on the reactors.
//!
//! Model: each listening socket is registered with an [`Acceptor`], which turns an accepted
//! socket into a connection (an NBD session, an NVMe/TCP queue, a mirror link). Reactor 0
//! accepts and hands sockets round-robin to the reactors, each of which asks the listener's
//! acceptor for the connection. A [`Service`] is a connection without a socket that every
//! reactor starts with (a front end's per-reactor executor), reached by notes addressed to it.
//! Front ends and layers give their acceptors and services their own shared state when they
//! build them; the runtime hands them nothing but the socket.

use super::conn::Conn;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Turns accepted sockets into connections.
pub trait Acceptor: Send + Sync {
    /// Short protocol name, for logs and listings ("nbd", "nvmf", "mirror").
    fn proto(&self) -> &'static str;
    /// The connection for a socket accepted on this acceptor's listener.
    fn accept(&self, fd: OwnedFd) -> Box<dyn Conn>;
}

/// A listening socket and its acceptor.
pub struct Listener {
    /// The socket (listening).
    pub fd: OwnedFd,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// What accepted sockets become.
    pub acceptor: Arc<dyn Acceptor>,
}

/// A connection every reactor runs from its start, without a socket.
pub trait Service: Send + Sync {
    /// This service's connection on reactor `reactor`.
    fn start_on(&self, reactor: usize) -> Box<dyn Conn>;
}
