//! The drill's write load: one writer per site speaking NBD at queue depth 1, every block
//! stamped so it can be read back and checked, every write logged with its times.
//!
//! Model: writer `i` owns blocks `[first + i*n, first + (i+1)*n)` and writes them in turn with
//! a sequence number that grows by one per write (`block = first + i*n + seq % n`), so the
//! newest write of a block is the one with the highest sequence number, and the two writers
//! never race on a block (which would make "newest" depend on the mirror's ordering of two
//! clients). A writer writes at its home site; when a write or a connect fails it moves to
//! the other site (as a host with multipath would), and moves back home only when told to
//! (after the drill saw both sites in sync again).
//!
//! Regions (a disruptive drill): until the fault the writers write the first half of their
//! ranges; from the fault on, the second half, each block once (a failed write's block is
//! taken by the next write), then they wait; once the read-back at the survivor is done
//! ([`paused`]) they go round the whole range. So the writes at risk from the fault (the ones
//! acknowledged before it, and those sent since) are still on their blocks when the survivor
//! is read: a lost one cannot be hidden by a newer write of the same block. A read-back runs
//! with the load paused ([`paused`]) for the same reason. The sandbox drill writes the whole
//! range throughout.
//!
//! Invariants: a write is logged `ok` only when the server acknowledged it ([`super::nbd`]);
//! a write that failed or timed out is logged as failed: its block may hold it or the
//! previous version (both are legal afterwards; neither is a lost acknowledged write). The
//! read-back check ([`check`]) counts an acknowledged write as lost when its block holds an
//! older sequence number than the newest acknowledged one, or anything that is not a valid
//! stamp of this run (wrong magic, run, writer, block or checksum, or a sequence number that
//! was never issued).

use super::nbd::NbdClient;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes at the start of every drill block.
const MAGIC: &[u8; 8] = b"TWBDRILL";
/// Bytes of the stamp's header (magic, run, writer, site, seq, block, generation).
const HEADER: usize = 48;
/// Pause after a failed connect or write before trying the other site (keeps a loop against
/// two dead sites from spinning).
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Distinct error messages kept per writer (the rest are only counted).
const MAX_ERRORS_KEPT: usize = 16;

/// One write as the writer saw it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WriteRec {
    /// Sequence number (per writer).
    pub seq: u64,
    /// Block written.
    pub block: u64,
    /// Index of the site it was sent to.
    pub site: usize,
    /// Microseconds since the drill's start when it was sent.
    pub issued_us: u64,
    /// When its answer (or failure) came.
    pub done_us: u64,
    /// The server acknowledged it.
    pub ok: bool,
}

/// A writer's log.
#[derive(Debug, Default)]
pub struct WriterLog {
    /// Next sequence number to issue (every lower one was issued).
    pub next_seq: u64,
    /// Every write, in issue order.
    pub writes: Vec<WriteRec>,
    /// Connects that failed.
    pub connect_failures: u64,
    /// The first distinct error messages, with their time.
    pub errors: Vec<(u64, String)>,
    /// The writer waits with no write in flight ([`paused`], or its fresh blocks used up).
    pub parked: bool,
}

/// What a writer needs.
#[derive(Clone)]
pub struct WriterSpec {
    /// Writer id (its home site's index).
    pub id: usize,
    /// `(HOST:PORT, EXPORT)` per site index.
    pub targets: Vec<(String, String)>,
    /// Bytes per write.
    pub block_size: u32,
    /// First block of the drill's range.
    pub first_block: u64,
    /// Blocks per writer.
    pub blocks: u64,
    /// This run's id (in every stamp).
    pub run: u64,
    /// Timeout of each write and connect.
    pub timeout: Duration,
}

impl WriterSpec {
    /// The block of sequence number `seq` (the whole range in turn).
    pub fn block_of(&self, seq: u64) -> u64 {
        self.block_in(seq, REGION_WHOLE, 0)
    }

    /// The block of sequence number `seq` in `region`; in [`REGION_FRESH`], the block after
    /// the `fresh_used` ones holding an acknowledged write of that region.
    fn block_in(&self, seq: u64, region: u8, fresh_used: u64) -> u64 {
        let base = self.first_block + self.id as u64 * self.blocks;
        let half = self.blocks / 2;
        match region {
            REGION_FIRST if half > 0 => base + seq % half,
            REGION_FRESH if half > 0 => base + half + fresh_used % (self.blocks - half),
            _ => base + seq % self.blocks,
        }
    }
}

/// A running writer.
pub struct Writer {
    /// Its spec.
    pub spec: WriterSpec,
    /// Its log (shared with the thread).
    pub log: Arc<Mutex<WriterLog>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Switches shared by the drill and its writers.
#[derive(Default)]
pub struct LoadControl {
    /// Stop writing.
    pub stop: AtomicBool,
    /// Writers away from home may go back.
    pub home_ok: AtomicBool,
    /// Which part of its range a writer writes (`REGION_*`).
    region: AtomicU8,
    /// Writers send nothing more (a read-back runs): [`paused`].
    pause: AtomicBool,
}

/// Where a writer writes in its range (the drill's RPO check needs the writes at risk from
/// a fault left untouched until they are read back: see [`LoadControl::fault_begins`]).
const REGION_WHOLE: u8 = 0;
/// The first half only (a disruptive drill, until the fault).
const REGION_FIRST: u8 = 1;
/// The second half, each block at most once, then the writer waits (from the fault on).
const REGION_FRESH: u8 = 2;

impl LoadControl {
    /// A disruptive drill starts: the writers write the first half of their ranges only, so
    /// the second half is free for the writes sent from the fault on.
    pub fn drill_begins(&self) {
        self.region.store(REGION_FIRST, Ordering::SeqCst);
    }

    /// The fault begins: from their next write on, the writers write the second half of their
    /// ranges, each block at most once, and then wait for [`paused`]'s end. So no block that
    /// held an acknowledged write at the fault, and no block written since, is written again
    /// before the read-back at the survivor: a write the failed site acknowledged and the
    /// survivor never got stays visible as lost (before, the load went on round the range
    /// for `observe_s` first and overwrote it, and RPO read "0 (verified)").
    pub fn fault_begins(&self) {
        self.region.store(REGION_FRESH, Ordering::SeqCst);
    }
}

/// Run `f` (a read-back) with the load paused: the writers finish the write they are in (at
/// most `timeout`, the write timeout, plus a second), write nothing while `f` runs, and then
/// go on over their whole ranges. A block's newest acknowledged write is thus not overwritten
/// while it is being looked for.
pub fn paused<T>(
    ctl: &LoadControl,
    writers: &[Writer],
    timeout: Duration,
    f: impl FnOnce() -> T,
) -> T {
    ctl.pause.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + timeout + Duration::from_secs(1);
    while Instant::now() < deadline
        && !writers
            .iter()
            .all(|w| w.log.lock().unwrap_or_else(|p| p.into_inner()).parked)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = f();
    ctl.region.store(REGION_WHOLE, Ordering::SeqCst);
    ctl.pause.store(false, Ordering::SeqCst);
    r
}

/// The stamp of `(run, writer, site, seq, block)`: `len` bytes.
pub fn stamp(
    len: usize,
    run: u64,
    writer: usize,
    site: usize,
    seq: u64,
    block: u64,
    blocks: u64,
) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[0..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&run.to_le_bytes());
    b[16..20].copy_from_slice(&(writer as u32).to_le_bytes());
    b[20..24].copy_from_slice(&(site as u32).to_le_bytes());
    b[24..32].copy_from_slice(&seq.to_le_bytes());
    b[32..40].copy_from_slice(&block.to_le_bytes());
    b[40..48].copy_from_slice(&(seq / blocks.max(1)).to_le_bytes());
    // Filler that differs per write, so a stale copy of a neighbour never passes.
    let mut x = run ^ seq.rotate_left(17) ^ (writer as u64).rotate_left(41) ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in b[HEADER..len - 4].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let crc = crc_fast::crc32_iscsi(&b[..len - 4]);
    b[len - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The sequence number in `data` if it is a valid stamp of `run`, `writer` and `block`.
pub fn parse_stamp(data: &[u8], run: u64, writer: usize, block: u64) -> Option<u64> {
    let len = data.len();
    if len < HEADER + 4 || &data[0..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(data[len - 4..].try_into().ok()?);
    if crc_fast::crc32_iscsi(&data[..len - 4]) != crc {
        return None;
    }
    let u64_at = |o: usize| data[o..o + 8].try_into().ok().map(u64::from_le_bytes);
    let w = u32::from_le_bytes(data[16..20].try_into().ok()?);
    if u64_at(8)? != run || w as usize != writer || u64_at(32)? != block {
        return None;
    }
    u64_at(24)
}

impl Writer {
    /// Start writing (home: site `spec.id`).
    pub fn start(spec: WriterSpec, t0: Instant, ctl: Arc<LoadControl>) -> std::io::Result<Writer> {
        let log = Arc::new(Mutex::new(WriterLog::default()));
        let (s2, l2) = (spec.clone(), Arc::clone(&log));
        let thread = std::thread::Builder::new()
            .name(format!("drill-writer-{}", spec.id))
            .spawn(move || run_writer(&s2, t0, &ctl, &l2))?;
        Ok(Writer {
            spec,
            log,
            thread: Some(thread),
        })
    }

    /// Wait for the thread (after [`LoadControl::stop`]).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn us(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn note_error(log: &Mutex<WriterLog>, t: u64, msg: String) {
    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
    if l.errors.len() < MAX_ERRORS_KEPT && !l.errors.iter().any(|(_, m)| *m == msg) {
        l.errors.push((t, msg));
    }
}

fn run_writer(spec: &WriterSpec, t0: Instant, ctl: &LoadControl, log: &Mutex<WriterLog>) {
    let home = spec.id;
    let sites = spec.targets.len().max(1);
    let mut cur = home;
    let mut conn: Option<NbdClient> = None;
    // Blocks of the fresh half holding a write acknowledged since the fault (a failed write's
    // block is written again by the next write, so failures use up no fresh block).
    let (mut region, mut fresh_used) = (REGION_WHOLE, 0u64);
    let fresh_blocks = spec.blocks - spec.blocks / 2;
    while !ctl.stop.load(Ordering::SeqCst) {
        if cur != home && ctl.home_ok.load(Ordering::SeqCst) {
            cur = home;
            conn = None;
        }
        {
            // Every write of a region is judged by the read-back that ends it: wait rather
            // than write a block of the fresh half twice, or anything while paused.
            let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
            let now = ctl.region.load(Ordering::SeqCst);
            if now != region {
                region = now;
                fresh_used = 0;
            }
            let wait = ctl.pause.load(Ordering::SeqCst)
                || (region == REGION_FRESH && fresh_used >= fresh_blocks);
            l.parked = wait;
            if wait {
                drop(l);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        }
        let c = match &mut conn {
            Some(c) => c,
            None => {
                let (addr, export) = &spec.targets[cur];
                match NbdClient::connect(addr, export, spec.timeout) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        let t = us(t0);
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .connect_failures += 1;
                        note_error(log, t, format!("connect to site {cur}: {e}"));
                        cur = (cur + 1) % sites;
                        std::thread::sleep(RETRY_PAUSE);
                        continue;
                    }
                }
            }
        };
        let seq = {
            let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
            l.next_seq += 1;
            l.next_seq - 1
        };
        let block = spec.block_in(seq, region, fresh_used);
        let data = stamp(
            spec.block_size as usize,
            spec.run,
            spec.id,
            cur,
            seq,
            block,
            spec.blocks,
        );
        let issued_us = us(t0);
        let r = c.write(block * u64::from(spec.block_size), &data);
        let done_us = us(t0);
        let ok = r.is_ok();
        if ok && region == REGION_FRESH {
            fresh_used += 1;
        }
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .writes
            .push(WriteRec {
                seq,
                block,
                site: cur,
                issued_us,
                done_us,
                ok,
            });
        if let Err(e) = r {
            note_error(log, done_us, format!("write at site {cur}: {e}"));
            conn = None;
            cur = (cur + 1) % sites;
            std::thread::sleep(RETRY_PAUSE);
        }
    }
}

/// An acknowledged write found missing.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Lost {
    /// Writer.
    pub writer: usize,
    /// Its sequence number.
    pub seq: u64,
    /// Block.
    pub block: u64,
    /// When it was acknowledged (µs since the drill's start).
    pub acked_us: u64,
    /// What the block held instead (`seq N`, or `not a stamp of this write's block`).
    pub found: String,
}

/// The outcome of reading back every acknowledged write at one site.
#[derive(Debug, Clone, Serialize)]
pub struct Readback {
    /// The site read.
    pub site: String,
    /// Acknowledged writes checked (each block's newest acknowledged one stands for the older).
    pub acked_writes: u64,
    /// Blocks read.
    pub blocks_read: u64,
    /// Acknowledged writes missing.
    pub lost: Vec<Lost>,
    /// Every block holding an acknowledged write was read (else why not).
    pub complete: bool,
    /// Why the read-back stopped early.
    pub error: Option<String>,
}

/// Per block, its acknowledged writes: (sequence number, acknowledged at µs).
type AckedBlocks = std::collections::BTreeMap<u64, Vec<(u64, u64)>>;

/// Read back, at the site `(addr, export)` named `site`, every block the writers had
/// acknowledged a write to when called; judge each block against its newest acknowledged
/// write (see the module's invariants).
pub fn check(
    site: &str,
    addr: &str,
    export: &str,
    writers: &[Writer],
    timeout: Duration,
) -> Readback {
    // Snapshot: per writer, per block, the acknowledged sequence numbers and their times.
    let mut per: Vec<(usize, AckedBlocks)> = Vec::new();
    let mut acked_writes = 0;
    for w in writers {
        let l = w.log.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = AckedBlocks::new();
        for r in l.writes.iter().filter(|r| r.ok) {
            m.entry(r.block).or_default().push((r.seq, r.done_us));
            acked_writes += 1;
        }
        per.push((w.spec.id, m));
    }
    let mut out = Readback {
        site: site.to_string(),
        acked_writes,
        blocks_read: 0,
        lost: Vec::new(),
        complete: false,
        error: None,
    };
    let mut c = match NbdClient::connect(addr, export, timeout) {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
    };
    for (wi, (id, blocks)) in per.iter().enumerate() {
        let spec = &writers[wi].spec;
        for (&block, acks) in blocks {
            let data = match c.read(block * u64::from(spec.block_size), spec.block_size) {
                Ok(d) => d,
                Err(e) => {
                    out.error = Some(format!("read of block {block}: {e}"));
                    return out;
                }
            };
            out.blocks_read += 1;
            // Issued sequence numbers are read after the block, so a write issued meanwhile counts.
            let issued = writers[wi]
                .log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .next_seq;
            let found = parse_stamp(&data, spec.run, *id, block).filter(|s| *s < issued);
            let newest = acks.iter().map(|a| a.0).max().unwrap_or(0);
            let (missing, what): (Vec<&(u64, u64)>, String) = match found {
                Some(s) if s >= newest => (Vec::new(), String::new()),
                Some(s) => (
                    acks.iter().filter(|a| a.0 > s).collect(),
                    format!("seq {s}"),
                ),
                None => (
                    acks.iter().collect(),
                    "not a stamp of this write's block".into(),
                ),
            };
            for &&(seq, acked_us) in &missing {
                out.lost.push(Lost {
                    writer: *id,
                    seq,
                    block,
                    acked_us,
                    found: what.clone(),
                });
            }
        }
    }
    out.complete = true;
    out
}

#[cfg(test)]
mod rpo_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_and_any_change_is_refused() {
        let s = stamp(4096, 7, 1, 0, 300, 44, 256);
        assert_eq!(parse_stamp(&s, 7, 1, 44), Some(300));
        assert_eq!(parse_stamp(&s, 8, 1, 44), None, "another run");
        assert_eq!(parse_stamp(&s, 7, 0, 44), None, "another writer");
        assert_eq!(parse_stamp(&s, 7, 1, 45), None, "another block");
        for i in [0, 30, 100, 4095] {
            let mut t = s.clone();
            t[i] ^= 1;
            assert_eq!(parse_stamp(&t, 7, 1, 44), None, "flip at {i}");
        }
        assert_eq!(parse_stamp(&[0u8; 4096], 7, 1, 44), None);
        assert_eq!(parse_stamp(&[], 7, 1, 44), None);
        assert_eq!(parse_stamp(&s[..20], 7, 1, 44), None);
        assert_ne!(stamp(512, 7, 1, 0, 301, 44, 256)[48..508], s[48..508]);
    }

    #[test]
    fn blocks_of_two_writers_never_overlap() {
        let spec = |id| WriterSpec {
            id,
            targets: vec![],
            block_size: 4096,
            first_block: 10,
            blocks: 4,
            run: 1,
            timeout: Duration::from_secs(1),
        };
        let a: Vec<u64> = (0..8).map(|s| spec(0).block_of(s)).collect();
        let b: Vec<u64> = (0..8).map(|s| spec(1).block_of(s)).collect();
        assert_eq!(a, [10, 11, 12, 13, 10, 11, 12, 13]);
        assert_eq!(b, [14, 15, 16, 17, 14, 15, 16, 17]);
    }
}
