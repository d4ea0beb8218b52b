//! The mirror layer: a volume replicated synchronously to a second site.
//!
//! Model: [`MirrorDevice`] wraps the local replica (any [`BlockDevice`]) and is the top of a
//! mirrored volume's stack. Its channel holds the volume's [`engine::Engine`]; reads go straight
//! to the local replica, every update (write, write-zeroes, unmap, flush) goes through the
//! engine, which completes it only when both sites have it. A compare-and-write is decided by
//! the leader alone (docs/mirror-protocol.md), so it is atomic across the sites. The link ([`link::LinkConn`]) is a
//! reactor connection that carries the engine's messages (docs/mirror-protocol.md).
//!
//! Invariant: a mirrored volume's engine lives on one reactor per site, its *home* (volume
//! index modulo the number of reactors), so the engine needs no lock. On the other reactors
//! the volume's channel ([`RemoteChannel`]) serves reads from the local replica directly and
//! hands every update to the home reactor by message ([`RemoteIo`]), which answers with
//! `MirrorDone`; the byte vectors travel back and forth and are reused, so steady state
//! allocates nothing.

pub mod engine;
pub mod failover;
pub mod link;
pub mod state;
pub mod stats;
pub mod wire;

use crate::bdev::{BdevError, BlockDevice, Channel, DeviceInfo, ReadStart, Start};
use crate::runtime::{Mailbox, Msg};
use crate::uring::{IoCx, IoTag};
use engine::{Engine, EngineConfig, Update};
use stats::MirrorStats;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// What a [`RemoteIo`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteOp {
    /// Write `data`.
    Write,
    /// Write zeroes over `len`.
    Zeroes,
    /// Unmap `len`.
    Unmap,
    /// Flush.
    Flush,
    /// A metadata command (`data`).
    Meta,
}

/// An update handed from a connection's reactor to the volume's home reactor.
pub struct RemoteIo {
    /// Volume index.
    pub vol: u32,
    /// The connection's reactor.
    pub from: u32,
    /// The connection's tag.
    pub tag: IoTag,
    /// What to do.
    pub op: RemoteOp,
    /// Byte offset.
    pub offset: u64,
    /// Bytes (zeroes, unmap).
    pub len: u64,
    /// Force unit access.
    pub fua: bool,
    /// Write data.
    pub data: Vec<u8>,
}

/// A mirrored volume's top layer.
pub struct MirrorDevice {
    inner: Arc<dyn BlockDevice>,
    cfg: EngineConfig,
    vol: usize,
    /// The reactor that runs this volume's engine.
    pub home: usize,
    /// Every reactor's mailbox (set once the reactors' mailboxes exist).
    pub mailboxes: OnceLock<Vec<Arc<Mailbox>>>,
    /// The leader's replication address (the follower dials it).
    pub peer: SocketAddr,
    /// Published counters.
    pub stats: Arc<MirrorStats>,
    /// The volume's replicated metadata (set once the front ends exist).
    pub meta: OnceLock<Arc<dyn engine::MetaHandler>>,
}

impl MirrorDevice {
    /// Mirror `inner` (volume index `vol`) with the peer at `peer`.
    pub fn new(
        inner: Arc<dyn BlockDevice>,
        cfg: EngineConfig,
        vol: usize,
        home: usize,
        peer: SocketAddr,
    ) -> Self {
        Self {
            inner,
            cfg,
            vol,
            home,
            mailboxes: OnceLock::new(),
            peer,
            stats: Arc::new(MirrorStats::default()),
            meta: OnceLock::new(),
        }
    }
}

impl BlockDevice for MirrorDevice {
    fn info(&self) -> DeviceInfo {
        let mut i = self.inner.info();
        i.kind = format!("mirror>{}", i.kind);
        i
    }

    fn open_channel(&self, io: &mut IoCx) -> Result<Box<dyn Channel>, BdevError> {
        let inner = self.inner.open_channel(io)?;
        if io.reactor != self.home {
            let home = self
                .mailboxes
                .get()
                .and_then(|m| m.get(self.home))
                .cloned()
                .ok_or_else(|| {
                    BdevError::Register(std::io::Error::other("mirror: reactor mailboxes not set"))
                })?;
            return Ok(Box::new(RemoteChannel {
                inner,
                stats: Arc::clone(&self.stats),
                home,
                vol: self.vol as u32,
                from: io.reactor as u32,
            }));
        }
        let mut cfg = self.cfg.clone();
        cfg.meta = self.meta.get().cloned();
        let mut engine = Engine::new(cfg, inner, self.vol, Arc::clone(&self.stats));
        engine
            .restore()
            .map_err(|e| BdevError::Register(std::io::Error::other(e)))?;
        Ok(Box::new(MirrorChannel {
            reactor: io.reactor as u32,
            engine,
            peer: self.peer,
        }))
    }
}

/// The home reactor's channel: the engine.
pub struct MirrorChannel {
    engine: Engine,
    reactor: u32,
    /// Where the follower dials.
    pub peer: SocketAddr,
}

impl Channel for MirrorChannel {
    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        if self.engine.no_io() {
            return ReadStart::Failed(crate::uring::Errno::IO);
        }
        self.engine.inner().read(io, tag, offset, len)
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        self.engine
            .submit(io, self.reactor, tag, Update::Write(data), offset, fua)
    }

    fn flush(&mut self, io: &mut IoCx, tag: IoTag) -> Start {
        self.engine
            .submit(io, self.reactor, tag, Update::Flush, 0, false)
    }

    fn write_zeroes(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Start {
        self.engine
            .submit(io, self.reactor, tag, Update::Zeroes(len), offset, fua)
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        self.engine
            .submit(io, self.reactor, tag, Update::Unmap(len), offset, fua)
    }

    fn compare_and_write(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        cmp: &[u8],
        data: &[u8],
        fua: bool,
    ) -> Option<Start> {
        Some(self.engine.submit(
            io,
            self.reactor,
            tag,
            Update::CompareWrite { cmp, data },
            offset,
            fua,
        ))
    }

    fn meta(&mut self, io: &mut IoCx, tag: IoTag, cmd: &[u8]) -> Option<Start> {
        Some(
            self.engine
                .submit(io, self.reactor, tag, Update::Meta(cmd), 0, false),
        )
    }

    fn mirror(&mut self) -> Option<(&mut Engine, SocketAddr)> {
        Some((&mut self.engine, self.peer))
    }
}

/// A mirrored volume's channel on a reactor other than its home.
pub struct RemoteChannel {
    inner: Box<dyn Channel>,
    stats: Arc<MirrorStats>,
    home: Arc<Mailbox>,
    vol: u32,
    from: u32,
}

impl RemoteChannel {
    fn hand_over(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        update: Update<'_>,
        offset: u64,
        fua: bool,
    ) -> Start {
        let mut data = io.spare_vecs.pop().unwrap_or_default();
        data.clear();
        let (op, len) = match update {
            Update::Write(d) => {
                data.extend_from_slice(d);
                (RemoteOp::Write, d.len() as u64)
            }
            Update::Zeroes(len) => (RemoteOp::Zeroes, len),
            Update::Unmap(len) => (RemoteOp::Unmap, len),
            Update::Flush => (RemoteOp::Flush, 0),
            Update::Meta(cmd) => {
                data.extend_from_slice(cmd);
                (RemoteOp::Meta, 0)
            }
            // Never handed over: the NVMe atomic section runs on the home reactor.
            Update::CompareWrite { .. } => {
                io.spare_vecs.push(data);
                return Start::Done(Err(crate::uring::Errno::NOTSUP));
            }
        };
        self.home.send(Msg::MirrorIo(RemoteIo {
            vol: self.vol,
            from: self.from,
            tag,
            op,
            offset,
            len,
            fua,
            data,
        }));
        Start::Pending
    }
}

impl Channel for RemoteChannel {
    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        if self.stats.fenced() {
            return ReadStart::Failed(crate::uring::Errno::IO);
        }
        self.inner.read(io, tag, offset, len)
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        self.hand_over(io, tag, Update::Write(data), offset, fua)
    }

    fn flush(&mut self, io: &mut IoCx, tag: IoTag) -> Start {
        self.hand_over(io, tag, Update::Flush, 0, false)
    }

    fn write_zeroes(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Start {
        self.hand_over(io, tag, Update::Zeroes(len), offset, fua)
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        self.hand_over(io, tag, Update::Unmap(len), offset, fua)
    }

    fn meta(&mut self, io: &mut IoCx, tag: IoTag, cmd: &[u8]) -> Option<Start> {
        Some(self.hand_over(io, tag, Update::Meta(cmd), 0, false))
    }
}
