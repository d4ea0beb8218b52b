//! The drill's NBD client: twinperf's blocking client (`perf::nbd::Client`: fixed newstyle
//! negotiation with `NBD_OPT_GO`, simple replies, one request at a time), reached by
//! `HOST:PORT`, with every socket operation bounded by the drill's timeout.
//!
//! Model: one TCP connection per writer; a request is sent and its reply awaited before the
//! next (queue depth 1), and the reply's cookie must be the request's. A site that stops
//! answering (cut off, or a held write) shows as an error after at most the timeout, never as
//! a hang.
//!
//! Invariant: a write is reported acknowledged only when the server's reply with the same
//! cookie and error 0 was read; anything else (an error number, a timeout, a closed
//! connection, a malformed reply) is an error, and the connection must then be dropped.

use crate::perf::nbd::Client;
use anyhow::{Context, Result};
use std::net::ToSocketAddrs;
use std::time::Duration;

/// A connection in transmission phase.
pub struct NbdClient(Client);

impl NbdClient {
    /// Connect to `addr` (`HOST:PORT`) and open `export`; every socket operation is bounded
    /// by `timeout`.
    pub fn connect(addr: &str, export: &str, timeout: Duration) -> Result<NbdClient> {
        let sa = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
            .next()
            .with_context(|| format!("{addr}: no address"))?;
        Ok(NbdClient(Client::connect_timeout(sa, export, timeout)?))
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.0.export.size
    }

    /// Write `data` at `offset`; Ok only when the server acknowledged it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.0.write(offset, data)
    }

    /// Read `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.0.read(offset, len)
    }
}
