//! The witness's loop: one thread, one std `UdpSocket`, no async runtime.
//!
//! Model: each turn waits up to [`POLL_INTERVAL`] for one datagram, decodes and authenticates it
//! (`proto`), lets the [`Arbiter`] decide, makes the state as durable as the answer needs, and
//! sends the answer back to the datagram's source. Between datagrams it writes coalesced
//! heartbeat counters once they are [`COUNTER_FLUSH`] old.
//!
//! Invariants:
//! - An answer that needs `Durability::Now` is sent only after the state file is fsync'd.
//! - A failed state write stops the loop with an error (fail-stop); the answer is not sent.
//! - Nothing from a datagram that fails a check is acted on or answered.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::proto::{self, Body, Key, Msg};
use crate::state::{Arbiter, Durability, Outcome, StateError, Table};

/// How long one turn blocks in `recv_from`: bounds how late a stop request or a coalesced
/// counter write is noticed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Heartbeat counters are written at most this late (a replay window after a crash, see the
/// protocol doc).
pub const COUNTER_FLUSH: Duration = Duration::from_secs(1);
/// Default `tie_grace_ms`.
pub const DEFAULT_TIE_GRACE: Duration = Duration::from_millis(1000);

/// What the witness needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub state: PathBuf,
    pub key: Key,
    pub tie_grace: Duration,
    /// After a start, plain grant requests for a group without a holder wait this long: a
    /// holder the state does not show (restored from an older copy, or `init`) claims its
    /// grant back meanwhile (docs/witness-protocol.md, "A witness that forgot a grant").
    pub start_grace: Duration,
    /// Allow a missing state file (a new witness).
    pub init: bool,
}

/// Why the witness could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lock(#[from] crate::operator::OperatorError),
    #[error("receiving a datagram")]
    Recv(#[source] std::io::Error),
}

/// Datagram counters, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub answered: u64,
    pub rejected: u64,
    pub replays: u64,
    pub writes: u64,
}

/// A running witness (in-process: tests drive it with [`Witness::run_once`] or
/// [`Witness::serve`]).
pub struct Witness {
    sock: UdpSocket,
    arbiter: Arbiter,
    path: PathBuf,
    key: Key,
    /// Heartbeat counters not yet written, since when.
    pending_since: Option<Instant>,
    stats: Stats,
    /// The state file's lock, held while this witness runs (operator.rs).
    _lock: std::fs::File,
    rx: Box<[u8; proto::MAX_LEN + 1]>,
    tx: Vec<u8>,
}

impl Witness {
    /// Loads the state (refusing a corrupt or, without `init`, missing file), writes it once
    /// (so a new witness has its file from the start) and binds the socket.
    pub fn open(cfg: Config) -> Result<Self, WitnessError> {
        let lock = crate::operator::lock(&cfg.state)?;
        let mut table = Table::load(&cfg.state, cfg.init)?;
        table.save(&cfg.state)?;
        let sock = UdpSocket::bind(cfg.listen).map_err(|source| WitnessError::Bind {
            addr: cfg.listen,
            source,
        })?;
        sock.set_read_timeout(Some(POLL_INTERVAL))
            .map_err(|source| WitnessError::Bind {
                addr: cfg.listen,
                source,
            })?;
        tracing::info!(
            listen = %sock.local_addr().map_or(cfg.listen, |a| a),
            state = %cfg.state.display(),
            groups = table.groups.len(),
            sites = table.counters.len(),
            tie_grace_ms = cfg.tie_grace.as_millis() as u64,
            start_grace_ms = cfg.start_grace.as_millis() as u64,
            "witness started"
        );
        Ok(Witness {
            sock,
            arbiter: Arbiter::new(table, cfg.tie_grace, Instant::now())
                .with_start_grace(cfg.start_grace),
            path: cfg.state,
            key: cfg.key,
            pending_since: None,
            stats: Stats::default(),
            _lock: lock,
            rx: Box::new([0u8; proto::MAX_LEN + 1]),
            tx: Vec::with_capacity(proto::MAX_LEN),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    pub fn table(&self) -> &Table {
        self.arbiter.table()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn save(&mut self) -> Result<(), WitnessError> {
        self.arbiter.save(&self.path)?;
        self.stats.writes += 1;
        self.pending_since = None;
        Ok(())
    }

    /// One turn: waits up to [`POLL_INTERVAL`] for a datagram and handles it. Returns whether a
    /// datagram was answered.
    pub fn run_once(&mut self) -> Result<bool, WitnessError> {
        if self
            .pending_since
            .is_some_and(|t| t.elapsed() >= COUNTER_FLUSH)
        {
            self.save()?;
        }
        let (n, from) = match self.sock.recv_from(&mut self.rx[..]) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(WitnessError::Recv(e)),
        };
        let msg = match proto::decode_request(&self.rx[..n], &self.key) {
            Ok(m) => m,
            Err(e) => {
                self.stats.rejected += 1;
                tracing::debug!(%from, error = %e, "datagram rejected");
                return Ok(false);
            }
        };
        let (body, durability) = match self.arbiter.handle(Instant::now(), &msg) {
            Outcome::Answer { body, durability } => (body, durability),
            Outcome::Replay { highest } => {
                // Nothing is done; the answer tells a site whose clock is behind where to
                // continue (docs/witness-protocol.md, "Authentication and replay protection").
                self.stats.replays += 1;
                tracing::debug!(
                    %from, site = msg.site.get(), counter = msg.counter, highest,
                    "stale counter (replay, duplicate or a site clock behind): answered BEHIND"
                );
                (Body::Behind { highest }, Durability::None)
            }
            Outcome::NotRequest | Outcome::TooManySites => {
                self.stats.rejected += 1;
                return Ok(false);
            }
        };
        match durability {
            Durability::Now => self.save()?,
            Durability::Coalesce => {
                self.pending_since.get_or_insert_with(Instant::now);
            }
            Durability::None => {}
        }
        let answer = Msg {
            site: msg.site,
            counter: msg.counter,
            body,
        };
        if let Err(e) = proto::encode(&mut self.tx, &answer, &self.key) {
            // Cannot happen: a VIEW has as many entries as the HEARTBEAT it answers.
            tracing::error!(error = %e, "answer not encodable");
            return Ok(false);
        }
        if let Err(e) = self.sock.send_to(&self.tx, from) {
            // The client retransmits; its next request gets a new answer.
            tracing::debug!(%from, error = %e, "answer not sent");
            return Ok(false);
        }
        self.stats.answered += 1;
        Ok(true)
    }

    /// Runs turns until `stop` is set, then writes pending counters.
    pub fn serve(&mut self, stop: &AtomicBool) -> Result<(), WitnessError> {
        while !stop.load(Ordering::Relaxed) {
            self.run_once()?;
        }
        if self.pending_since.is_some() {
            self.save()?;
        }
        tracing::info!(
            answered = self.stats.answered,
            rejected = self.stats.rejected,
            replays = self.stats.replays,
            "witness stopped"
        );
        Ok(())
    }
}
