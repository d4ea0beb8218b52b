//! The mirror layer: a volume replicated synchronously to a second site.
//!
//! Model: [`MirrorDevice`] wraps the local replica (any [`BlockDevice`]) and is the top of a
//! mirrored volume's stack. Its channel holds the volume's [`engine::Engine`]; reads go straight
//! to the local replica, every update (write, write-zeroes, unmap, flush) goes through the
//! engine, which completes it only when both sites have it. The link ([`link::LinkConn`]) is a
//! reactor connection that carries the engine's messages (docs/mirror-protocol.md).
//!
//! Invariant: a mirrored volume is served by one reactor per site (its engine lives there;
//! config validation refuses more cores while any volume is mirrored), so the engine needs no
//! lock.

pub mod engine;
pub mod link;
pub mod stats;
pub mod wire;

use crate::bdev::{BdevError, BlockDevice, Channel, DeviceInfo, ReadStart, Start};
use crate::uring::{IoCx, IoTag};
use engine::{Engine, EngineConfig, Role};
use stats::MirrorStats;
use std::net::SocketAddr;
use std::sync::Arc;

/// A mirrored volume's top layer.
pub struct MirrorDevice {
    inner: Arc<dyn BlockDevice>,
    cfg: EngineConfig,
    vol: usize,
    /// The leader's replication address (the follower dials it).
    pub peer: SocketAddr,
    /// Published counters.
    pub stats: Arc<MirrorStats>,
}

impl MirrorDevice {
    /// Mirror `inner` (volume index `vol`) with the peer at `peer`.
    pub fn new(
        inner: Arc<dyn BlockDevice>,
        cfg: EngineConfig,
        vol: usize,
        peer: SocketAddr,
    ) -> Self {
        Self {
            inner,
            cfg,
            vol,
            peer,
            stats: Arc::new(MirrorStats::default()),
        }
    }

    /// This site orders the volume's updates.
    pub fn is_leader(&self) -> bool {
        self.cfg.role == Role::Leader
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
        Ok(Box::new(MirrorChannel {
            engine: Engine::new(self.cfg.clone(), inner, self.vol, Arc::clone(&self.stats)),
            peer: self.peer,
        }))
    }
}

/// The home reactor's channel: the engine.
pub struct MirrorChannel {
    engine: Engine,
    /// Where the follower dials.
    pub peer: SocketAddr,
}

impl Channel for MirrorChannel {
    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        self.engine.inner().read(io, tag, offset, len)
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        self.engine.submit(io, tag, Some(data), None, offset, fua)
    }

    fn flush(&mut self, io: &mut IoCx, tag: IoTag) -> Start {
        self.engine.submit(io, tag, None, None, 0, false)
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
            .submit(io, tag, None, Some((len, false)), offset, fua)
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        self.engine
            .submit(io, tag, None, Some((len, true)), offset, fua)
    }

    fn mirror(&mut self) -> Option<(&mut Engine, SocketAddr)> {
        Some((&mut self.engine, self.peer))
    }
}
