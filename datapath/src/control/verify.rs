//! `volume_checksums`: a CRC32C per region of this site's own replica of a mirrored volume,
//! for `twinblk-ctl verify` (docs/control.md), which asks both sites and compares.
//!
//! Model: the control thread hands a [`Job`] to the [`ChecksumService`]'s connection on the
//! volume's home reactor (a runtime note to a service) and waits for its answer on a channel.
//! On the reactor the job reads the layer under the mirror (the local replica's stack:
//! `Channel::lower` of the mirror's channel, so never the mirror's read path, which refuses
//! reads without a lease and never reads the peer) in pieces of at most one pool buffer, one
//! piece in flight at a time, and folds each piece into its region's CRC32C. Jobs run one
//! after another in arrival order.
//!
//! Invariants:
//! - Nothing blocks the reactor: a file replica's reads go through the ring; a RAM replica
//!   answers at once, so a turn reads at most [`TURN_BUDGET`] bytes synchronously and the job
//!   goes on at the next turn (a note to itself).
//! - No lock per I/O and no write: the replica is only read; the mirror engine keeps
//!   applying updates meanwhile (a region written during its read may checksum as neither
//!   version; the tool re-checks differing regions, see docs/control.md).
//! - Every job is answered exactly once: with its checksums, with the read's error, or with
//!   "stopping" when the reactor stops (a job dropped unanswered closes its channel, which the
//!   control thread also reports).
//! - Parameters are checked on the control thread ([`check`]): a job always names a volume,
//!   a non-zero region and a range inside the volume, aligned to its block size.

use crate::bdev::ReadStart;
use crate::runtime::{Conn, Env, Msg, NoteTo, Service};
use crate::uring::{Errno, IoTag};
use std::collections::VecDeque;
use std::sync::mpsc::SyncSender;

/// Largest read issued at once: one registered pool buffer (`RingSizes::default`), so a
/// piece never needs a bounce allocation.
pub const PIECE: u64 = 128 * 1024;

/// Bytes a job reads synchronously (a RAM replica) in one reactor turn before it yields.
pub const TURN_BUDGET: u64 = 1 << 20;

/// Most bytes one `volume_checksums` call covers (the call answers within a few seconds even
/// from a slow disk; the tool asks chunk by chunk).
pub const MAX_CALL_BYTES: u64 = 256 << 20;

/// Most regions one call answers (bounds the answer's size).
pub const MAX_CALL_REGIONS: u64 = 1 << 16;

/// One checksum request, answered on `reply`.
pub struct Job {
    /// Volume index.
    pub vol: usize,
    /// First byte.
    pub offset: u64,
    /// Bytes covered (the last region may be shorter than `region`).
    pub length: u64,
    /// Region size in bytes (non-zero).
    pub region: u64,
    /// Where the answer goes: one CRC32C per region, or why not.
    pub reply: SyncSender<Result<Vec<u32>, String>>,
}

/// A job's range, checked: what [`check`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
    /// Region size.
    pub region: u64,
}

/// Check a request's range against a volume of `size` bytes and block size `block`; the
/// error says what is wrong in the operator's terms. `length` `None`: to the end.
pub fn check(
    size: u64,
    block: u64,
    offset: u64,
    length: Option<u64>,
    region: u64,
) -> Result<Range, String> {
    let block = block.max(1);
    if region == 0 {
        return Err("\"region\" must be at least one block".into());
    }
    if !region.is_multiple_of(block) {
        return Err(format!(
            "\"region\" {region} is not a multiple of the volume's block size {block}"
        ));
    }
    if !offset.is_multiple_of(block) {
        return Err(format!(
            "\"offset\" {offset} is not a multiple of the volume's block size {block}"
        ));
    }
    if offset >= size {
        return Err(format!(
            "\"offset\" {offset} is past the end of the volume ({size} bytes)"
        ));
    }
    let length = length.unwrap_or(size - offset);
    if length == 0 {
        return Err("\"length\" must be at least one block".into());
    }
    if !length.is_multiple_of(block) {
        return Err(format!(
            "\"length\" {length} is not a multiple of the volume's block size {block}"
        ));
    }
    if !crate::bdev::in_range(offset, length, size) {
        return Err(format!(
            "offset {offset} + length {length} is past the end of the volume ({size} bytes)"
        ));
    }
    if length > MAX_CALL_BYTES {
        return Err(format!(
            "\"length\" {length} is more than one call covers ({MAX_CALL_BYTES} bytes); ask in parts"
        ));
    }
    if length.div_ceil(region) > MAX_CALL_REGIONS {
        return Err(format!(
            "{} regions is more than one call answers ({MAX_CALL_REGIONS}); ask for less or use larger regions",
            length.div_ceil(region)
        ));
    }
    Ok(Range {
        offset,
        length,
        region,
    })
}

/// The checksum executors: one connection per reactor, reached by notes (a [`Job`]).
pub struct ChecksumService {
    /// This service's index in the runtime's services (its notes' address).
    pub index: u32,
}

impl Service for ChecksumService {
    fn start_on(&self, _reactor: usize) -> Box<dyn Conn> {
        Box::new(ChecksumConn {
            index: self.index,
            queue: VecDeque::new(),
            cur: None,
            reading: false,
            stopping: false,
            nudged: false,
        })
    }
}

/// Go on with the current job at the next turn (a RAM replica's job used its turn's budget).
struct Continue;

/// The job being read.
struct Running {
    job: Job,
    /// Next byte to read.
    pos: u64,
    /// The CRC32C of the current region so far.
    crc: u32,
    /// The finished regions' CRC32Cs.
    crcs: Vec<u32>,
    /// Bytes of the piece in flight.
    want: u64,
}

impl Running {
    fn end(&self) -> u64 {
        self.job.offset + self.job.length
    }

    /// The end of the region `pos` is in.
    fn region_end(&self) -> u64 {
        let k = (self.pos - self.job.offset) / self.job.region;
        (self.job.offset + (k + 1) * self.job.region).min(self.end())
    }

    fn absorb(&mut self, data: &[u8]) {
        self.crc = crate::checksum::crc32c_append(self.crc, data);
        let region_end = self.region_end();
        self.pos += data.len() as u64;
        if self.pos == region_end {
            self.crcs.push(std::mem::take(&mut self.crc));
        }
    }
}

/// One reactor's checksum executor.
struct ChecksumConn {
    index: u32,
    queue: VecDeque<Job>,
    cur: Option<Running>,
    /// A piece is in flight (its completion names this connection).
    reading: bool,
    stopping: bool,
    /// A [`Continue`] note is on its way.
    nudged: bool,
}

fn errno_text(e: Errno) -> String {
    std::io::Error::from_raw_os_error(e.0).to_string()
}

impl ChecksumConn {
    fn fail(&mut self, why: String) {
        if let Some(r) = self.cur.take() {
            let _ = r.job.reply.send(Err(why));
        }
    }

    /// Read what the current job needs next, starting jobs in order, until a read is in
    /// flight, the turn's budget is spent or nothing is left.
    fn advance(&mut self, env: &mut Env<'_>) {
        let mut budget = TURN_BUDGET;
        loop {
            if self.reading || self.stopping {
                return;
            }
            let Some(r) = &mut self.cur else {
                match self.queue.pop_front() {
                    Some(job) => {
                        let n = job.length.div_ceil(job.region) as usize;
                        self.cur = Some(Running {
                            pos: job.offset,
                            job,
                            crc: 0,
                            crcs: Vec::with_capacity(n),
                            want: 0,
                        });
                        continue;
                    }
                    None => return,
                }
            };
            if r.pos >= r.end() {
                let r = self.cur.take().expect("running");
                let _ = r.job.reply.send(Ok(r.crcs));
                continue;
            }
            if budget == 0 {
                if !self.nudged {
                    self.nudged = true;
                    env.shared.mailboxes[env.io.reactor].send(Msg::Note {
                        to: NoteTo::Service(self.index),
                        note: Box::new(Continue),
                    });
                }
                return;
            }
            let want = PIECE.min(r.region_end() - r.pos);
            r.want = want;
            let (vol, pos) = (r.job.vol, r.pos);
            // The replica: the layer under the volume's top (the mirror).
            let Some(replica) = env.chans.get_mut(vol).and_then(|c| c.lower()) else {
                self.fail("the volume has no replica layer under its top".into());
                continue;
            };
            match replica.read(env.io, IoTag::conn(env.key, 0), pos, want as u32) {
                ReadStart::Ready(data) if data.len() as u64 == want => {
                    r.absorb(data);
                    budget = budget.saturating_sub(want);
                }
                ReadStart::Ready(data) => {
                    let got = data.len();
                    self.fail(format!(
                        "reading the local replica at {pos}: {got} bytes instead of {want}"
                    ));
                }
                ReadStart::Failed(e) => {
                    self.fail(format!(
                        "reading the local replica at {pos} failed: {}",
                        errno_text(e)
                    ));
                }
                ReadStart::Pending => self.reading = true,
            }
        }
    }
}

impl Conn for ChecksumConn {
    fn start(&mut self, _env: &mut Env<'_>) {}

    fn on_recv(&mut self, _env: &mut Env<'_>, _res: i32) {}

    fn on_send(&mut self, _env: &mut Env<'_>, _res: i32) {}

    fn on_io(&mut self, _slot: u32, result: Result<(), Errno>, data: &[u8]) {
        self.reading = false;
        let Some(r) = &mut self.cur else {
            return;
        };
        let (pos, want) = (r.pos, r.want);
        match result {
            Ok(()) if data.len() as u64 == want => r.absorb(data),
            Ok(()) => self.fail(format!(
                "reading the local replica at {pos}: {} bytes instead of {want}",
                data.len()
            )),
            Err(e) => self.fail(format!(
                "reading the local replica at {pos} failed: {}",
                errno_text(e)
            )),
        }
        if self.stopping {
            self.fail("the daemon is stopping".into());
        }
    }

    fn flush(&mut self, env: &mut Env<'_>) {
        if env.stopping && !self.stopping {
            self.stop(env);
        }
        self.advance(env);
    }

    fn stop(&mut self, _env: &mut Env<'_>) {
        self.stopping = true;
        for job in self.queue.drain(..) {
            let _ = job.reply.send(Err("the daemon is stopping".into()));
        }
        if !self.reading {
            self.fail("the daemon is stopping".into());
        }
    }

    fn abort(&mut self, env: &mut Env<'_>) {
        self.stop(env);
    }

    fn done(&self) -> bool {
        self.stopping && !self.reading
    }

    fn describe(&self) -> String {
        format!(
            "checksums: {} job(s) queued, running {}, read in flight {}",
            self.queue.len(),
            self.cur.is_some(),
            self.reading
        )
    }

    fn on_note(&mut self, _env: &mut Env<'_>, note: crate::runtime::Note) {
        match note.downcast::<Job>() {
            Ok(job) => {
                if self.stopping {
                    let _ = job.reply.send(Err("the daemon is stopping".into()));
                } else {
                    self.queue.push_back(*job);
                }
            }
            Err(note) => {
                if note.is::<Continue>() {
                    self.nudged = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_in_the_operators_terms() {
        let mib = 1 << 20;
        assert_eq!(
            check(4 * mib, 4096, 0, None, 65536),
            Ok(Range {
                offset: 0,
                length: 4 * mib,
                region: 65536
            })
        );
        // The last region may be short.
        assert!(check(4 * mib, 4096, 4096, None, 65536).is_ok());
        assert!(
            check(4 * mib, 4096, 0, None, 0)
                .unwrap_err()
                .contains("at least one block")
        );
        assert!(
            check(4 * mib, 4096, 0, None, 1000)
                .unwrap_err()
                .contains("multiple")
        );
        assert!(
            check(4 * mib, 4096, 512, None, 4096)
                .unwrap_err()
                .contains("offset")
        );
        assert!(
            check(4 * mib, 4096, 4 * mib, None, 4096)
                .unwrap_err()
                .contains("past the end")
        );
        assert!(
            check(4 * mib, 4096, 0, Some(8 * mib), 4096)
                .unwrap_err()
                .contains("past the end")
        );
        assert!(check(4 * mib, 4096, 0, Some(0), 4096).is_err());
        assert!(check(u64::MAX - 4095, 4096, u64::MAX - 8191, Some(8192), 4096).is_err());
        assert!(
            check(1 << 40, 4096, 0, None, 4096)
                .unwrap_err()
                .contains("in parts")
        );
        assert!(
            check(256 * mib, 512, 0, None, 512)
                .unwrap_err()
                .contains("regions")
        );
    }

    #[test]
    fn a_job_folds_pieces_into_one_crc_per_region() {
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut r = Running {
            job: Job {
                vol: 0,
                offset: 0,
                length: 10_000,
                region: 4_000,
                reply: tx,
            },
            pos: 0,
            crc: 0,
            crcs: Vec::new(),
            want: 0,
        };
        // Pieces never cross a region's end.
        while r.pos < r.end() {
            let n = 1_500.min(r.region_end() - r.pos) as usize;
            let p = r.pos as usize;
            r.absorb(&data[p..p + n]);
        }
        let want: Vec<u32> = data.chunks(4_000).map(crate::checksum::crc32c).collect();
        assert_eq!(r.crcs, want);
    }
}
