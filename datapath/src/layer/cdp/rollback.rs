//! Rollback in place: a volume's own file or device put back to a point of its CDP history,
//! while the daemon that serves it is stopped (docs/cdp-rollback.md).
//!
//! Model: the *candidate regions* are the ranges of every record after the point `P` (outside
//! them the content at `P` is the content now), or the whole volume (`all`). They are read
//! from the volume chunk by chunk and compared with the content at `P` (read through a view,
//! [`super::view::ViewDevice::read_point`], which holds consolidation); each run of differing
//! blocks is journaled as an ordinary record (new sequence numbers after the history's last)
//! and then written into the volume. The run is described by the marker file `rollback`
//! ([`Marker`]): written "running" before anything else changes, "done" once the volume is
//! synced; `--confirm` removes it, `--undo` rolls back to the point before the rollback and
//! removes it. A mirrored volume's replica state is marked first (`mirror::rollback`).
//! A new `--all` run first journals the volume's own content wherever it differs from the
//! history's newest point (data the journal lacked), before the marker: `before` is then
//! the volume as it really was, and `--undo` returns to it.
//!
//! A group is prepared volume by volume, then run one after the other; after a run stopped
//! part way, the same command passes over the volumes already rolled back to the same point
//! ([`Skip::Done`]), an undo passes over those without a rollback ([`Skip::NoRollback`]), and
//! [`confirm`] checks every marker under every lock before it removes any.
//!
//! Invariants:
//! - Nothing changes (directory, volume, mirror state) before every check has passed: the
//!   daemon lock is held, the point is in the window, the marker allows this run, the
//!   volume was not written since a clean stop sealed its history (without `--all`:
//!   [`super::stamp`]), and the mirror state allows it ([`prepare`]), and every record the run and its undo read over
//!   the candidate regions is intact (`verify_readable`: a damaged one refuses the run).
//!   Then only an `--all` run's records of the volume's own content may precede the marker
//!   (true records: the volume is not written yet).
//! - Every block written into the volume is in a durable journal record first (journal
//!   before data), so a crash leaves the history covering the volume, the marker "running"
//!   (the daemon then refuses to start) and a rerun completes the rollback: blocks already
//!   rolled back compare equal and are skipped.
//! - The daemon and a rollback never run on one volume together: both hold `daemon.lock`
//!   ([`lock_daemon`]) exclusively while they run.

use super::clock;
use super::error::io_err;
use super::format::{self, Meta, Op, REC_HEADER, RecHeader};
use super::pit::{self, Point};
use super::store::{self, CdpError};
use super::view::{ViewDevice, ViewSpec};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of the marker file.
pub const MARKER_LEN: usize = 64;
const MAGIC: &[u8; 8] = b"TBCDPRB1";
const VERSION: u32 = 1;
/// Most bytes compared (and written) per step.
const CHUNK: u64 = 1 << 20;
/// A journal batch is appended once it holds this many bytes.
const BATCH: usize = 1 << 20;

/// The marker of a rollback under way or not confirmed (file `rollback`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The run finished (the volume holds the target's content and is synced).
    pub done: bool,
    /// This run takes the volume back to `before` of an earlier rollback (an undo).
    pub undo: bool,
    /// The sequence the volume is taken to.
    pub target: u64,
    /// That point's time (site time, ns).
    pub target_time: u64,
    /// The history's last sequence when the run began (what an undo returns to).
    pub before: u64,
    /// Site time the run began (ns).
    pub started: u64,
    /// The last sequence the run journaled (0 while running).
    pub end: u64,
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Marker {
    /// The 64 bytes.
    pub fn encode(&self) -> [u8; MARKER_LEN] {
        let mut b = [0u8; MARKER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12] = if self.done { 2 } else { 1 };
        b[13] = u8::from(self.undo);
        put64(&mut b, 16, self.target);
        put64(&mut b, 24, self.target_time);
        put64(&mut b, 32, self.before);
        put64(&mut b, 40, self.started);
        put64(&mut b, 48, self.end);
        let crc = crate::checksum::crc32c(&b[..60]);
        b[60..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check (never panics).
    pub fn decode(b: &[u8]) -> Result<Marker, String> {
        if b.len() != MARKER_LEN {
            return Err(format!("{} bytes, not {MARKER_LEN}", b.len()));
        }
        if &b[..8] != MAGIC {
            return Err("bad magic".into());
        }
        if crate::checksum::crc32c(&b[..60]).to_le_bytes() != b[60..64] {
            return Err("checksum mismatch".into());
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != VERSION {
            return Err(format!("unsupported version {version}"));
        }
        if !matches!(b[12], 1 | 2) || b[13] > 1 || b[14] != 0 || b[15] != 0 || b[56..60] != [0; 4] {
            return Err("bad field".into());
        }
        Ok(Marker {
            done: b[12] == 2,
            undo: b[13] == 1,
            target: le64(b, 16),
            target_time: le64(b, 24),
            before: le64(b, 32),
            started: le64(b, 40),
            end: le64(b, 48),
        })
    }

    /// What an operator reads (`cdp window`, `cdp_status`, the daemon's log).
    pub fn describe(&self) -> String {
        match (self.done, self.undo) {
            (true, _) => format!(
                "rolled back to sequence {} (time {}) at {}, not confirmed; --undo returns to sequence {} (and so also reverts every write served since the rollback), --confirm keeps it",
                self.target, self.target_time, self.started, self.before
            ),
            (false, false) => format!(
                "a rollback to sequence {} (time {}) begun at {} did not finish: rerun it (same point) or --undo",
                self.target, self.target_time, self.started
            ),
            (false, true) => format!(
                "an undo (back to sequence {}) begun at {} did not finish: rerun --undo",
                self.target, self.started
            ),
        }
    }
}

/// The marker file of `dir`.
pub fn marker_path(dir: &Path) -> PathBuf {
    dir.join("rollback")
}

/// The daemon lock of `dir` ([`super::names::lock_path`]).
pub fn lock_path(dir: &Path) -> PathBuf {
    super::names::lock_path(dir)
}

/// A writer's load of `dir`'s history ([`store::Load::Recover`]), with site time also raised
/// above a rollback marker's start (a restart with a wall clock behind the one that started
/// the rollback must not stamp records before it).
pub fn load_for_writing(dir: &Path) -> Result<store::History, CdpError> {
    let h = store::load(dir, store::Load::Recover)?;
    // A writer numbers its records on from the last (docs/cdp-format.md, "Time and sequence
    // numbers"): a history numbered near the top of the range has no numbers left for them.
    if h.last_seq > u64::MAX - (1 << 48) {
        return Err(CdpError::Refused(format!(
            "{}: the history's last record has sequence number {}, too near the largest ({}) to journal on: a history numbered from 1 never gets there (made or damaged so); journal into a new directory",
            dir.display(),
            h.last_seq,
            u64::MAX
        )));
    }
    // Likewise its segments: the writer's first is numbered one past the newest.
    if let Some(g) = h
        .segments
        .last()
        .filter(|g| g.header.segno > u64::MAX - (1 << 48))
    {
        return Err(CdpError::Refused(format!(
            "{}: the history's newest segment has segment number {}, too near the largest ({}) to journal on: a history numbered from 1 never gets there (made or damaged so); journal into a new directory",
            dir.display(),
            g.header.segno,
            u64::MAX
        )));
    }
    if let Ok(Some(m)) = load_marker(dir) {
        super::clock::not_before(m.started);
    }
    Ok(h)
}

/// The marker of `dir`, if there is one. A marker that does not check is an error (nothing
/// may roll back or serve over a rollback whose state is unknown).
pub fn load_marker(dir: &Path) -> Result<Option<Marker>, CdpError> {
    let p = marker_path(dir);
    match std::fs::read(&p) {
        Ok(b) => Marker::decode(&b)
            .map(Some)
            .map_err(|why| CdpError::Meta { path: p, why }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &p)(e)),
    }
}

fn write_marker(dir: &Path, m: &Marker) -> Result<(), CdpError> {
    store::write_atomic(dir, &marker_path(dir), &m.encode())
}

fn remove_marker(dir: &Path) -> Result<(), CdpError> {
    let p = marker_path(dir);
    std::fs::remove_file(&p).map_err(io_err("remove", &p))?;
    store::sync_dir(dir)
}

/// The time consolidation must not pass while `dir` has a rollback marker (a rollback not
/// confirmed, or not finished): every record after its `before` is younger than the run's
/// start, so keeping records from just before it keeps `before` in the window and `--undo`
/// possible. An unreadable marker holds everything (`Some(0)`).
pub fn hold(dir: &Path) -> Option<u64> {
    match load_marker(dir) {
        Ok(m) => m.map(|m| m.started.saturating_sub(1)),
        Err(e) => {
            tracing::warn!(error = %e, "cdp: rollback marker unreadable; consolidation held");
            Some(0)
        }
    }
}

/// Claim `dir` for a daemon's CDP layer: the directory created if missing, its daemon lock
/// taken ([`lock_daemon`]); with the rollback marker found there, if any (the caller decides
/// whether a rollback not done refuses it).
pub fn claim_dir(dir: &Path) -> Result<(File, Option<Marker>), CdpError> {
    std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let lock = lock_daemon(dir)?;
    Ok((lock, load_marker(dir)?))
}

/// Take `dir`'s daemon lock (exclusive, without waiting) and write this process's pid into
/// it; the lock lasts as long as the returned file. Refused, naming the holder's pid, while
/// another process holds it (a daemon serving the volume, or a rollback).
pub fn lock_daemon(dir: &Path) -> Result<File, CdpError> {
    let p = lock_path(dir);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .map_err(io_err("open", &p))?;
    // SAFETY: plain syscall on an open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err("lock", &p)(e));
        }
        let pid = std::fs::read_to_string(&p).unwrap_or_default();
        return Err(CdpError::Refused(format!(
            "{} is held by process {} (a twinblk daemon serving the volume, or a rollback): stop it first",
            p.display(),
            match pid.trim() {
                "" => "unknown",
                s => s,
            }
        )));
    }
    f.set_len(0).map_err(io_err("write", &p))?;
    f.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
        .map_err(io_err("write", &p))?;
    let _ = f.flush();
    Ok(f)
}

/// One volume to roll back.
#[derive(Clone, Debug)]
pub struct Target {
    /// The volume's name (messages).
    pub name: String,
    /// Its CDP directory.
    pub dir: PathBuf,
    /// Its file or block device.
    pub volume: PathBuf,
    /// Bytes per journal segment.
    pub segment_size: u64,
    /// A mirrored volume's replica state file.
    pub mirror_state: Option<PathBuf>,
    /// Compare the whole volume, not only the regions of records after the point.
    pub all: bool,
}

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Roll back to a point (or rerun an interrupted rollback to it).
    To(Point),
    /// Take the volume back to what it held before the rollback (or rerun an interrupted undo).
    Undo,
}

/// Why a prepared volume has nothing to do (a group's rerun or undo goes on with the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Already rolled back to the same point (a group's rerun after it stopped part way).
    Done(Marker),
    /// An undo, and the volume has no rollback (a group's volume the rollback never reached).
    NoRollback,
}

/// A checked rollback, holding the volume's daemon lock: nothing has changed yet.
pub struct Prepared {
    t: Target,
    _lock: File,
    /// The sequence the volume is taken to.
    pub seq: u64,
    time: u64,
    undo: bool,
    /// An interrupted run of the same rollback is completed: its `before`.
    resume_before: Option<u64>,
    /// The marker found (an undo removes the marker of the rollback it undoes).
    pub found: Option<Marker>,
    /// An undo of a finished rollback: the data records journaled after it (writes the
    /// daemon served since), which the undo reverts too.
    pub reverts: u64,
    /// Nothing to do for this volume ([`run`] changes nothing; the lock is held all the same).
    pub skip: Option<Skip>,
    /// Compare the whole volume: an interrupted run whose history a recovery cut before its
    /// `before` (the records after the cut, which named regions the volume changed in, are
    /// set aside).
    whole: bool,
}

/// Check everything, change nothing: the daemon lock, the marker, the point and, for a
/// mirrored volume, its replica state.
pub fn prepare(t: Target, goal: Goal) -> Result<Prepared, CdpError> {
    let lock = lock_daemon(&t.dir)?;
    let h = store::load(&t.dir, store::Load::ReadOnly)?;
    let found = load_marker(&t.dir)?;
    let refuse = |why: String| Err(CdpError::Refused(format!("volume {}: {why}", t.name)));
    let skip = match (goal, found) {
        (Goal::Undo, None) => Some(Skip::NoRollback),
        // Done to the same point, and nothing written since (after a daemon served writes
        // the volume is no longer at that point: the rerun is refused below, as any rollback
        // over one not confirmed).
        (Goal::To(p), Some(m))
            if m.done
                && !m.undo
                && pit::resolve(&h, p).ok() == Some(m.target)
                && !h.entries().any(|(_, e)| {
                    e.seq > m.end && matches!(e.op, Op::Write | Op::Zeroes | Op::Unmap)
                }) =>
        {
            Some(Skip::Done(m))
        }
        _ => None,
    };
    if let Some(skip) = skip {
        let (seq, time) = match skip {
            Skip::Done(m) => (m.target, m.target_time),
            Skip::NoRollback => (0, 0),
        };
        return Ok(Prepared {
            t,
            _lock: lock,
            seq,
            time,
            undo: goal == Goal::Undo,
            resume_before: None,
            found,
            reverts: 0,
            skip: Some(skip),
            whole: false,
        });
    }
    let prior = super::degraded::read_prior(&t.dir, h.meta.size);
    // A run interrupted part way whose own records a recovery (its rerun's, or an undo's)
    // then cut ahead of records that follow (a batch torn by a power loss, a damaged record):
    // the map says not whole after the cut, which is at or after the history the run began
    // from (`before`). Its rerun or undo reads no point after that, and journals again what
    // it writes, so it goes on (the daemon then journals the whole volume again). Refused
    // like the others, the volume could not be served again: the daemon refuses to start
    // over the interrupted run, and the run asked for a daemon start first (before session
    // 27, test `cdp_rollback::an_interrupted_rollback_whose_own_records_are_cut_is_still_completed`).
    let own_cut = matches!(
        (&found, &prior),
        (Some(m), super::degraded::Prior::Stopped { after, regions: None, .. })
            if !m.done && *after >= m.before
    );
    // The same, the cut before `before` (a record of the history the run began from damaged):
    // the records after the cut are set aside, so the regions they changed are not known: the
    // run goes on comparing the whole volume, to its point if that is still readable (at or
    // before the cut), else, with `--all`, to another point that is (it replaces the
    // interrupted run's target). Refused, the volume could not be served again (the daemon
    // refuses to start over the interrupted run): before session 28 it was.
    // (Found by this read when no recovery ran since the damage: the history ends there.)
    let cut_before = match (&found, &prior) {
        (
            Some(m),
            super::degraded::Prior::Stopped {
                after,
                regions: None,
                ..
            },
        ) if !m.done => *after < m.before,
        (Some(m), _) => !m.done && h.lost && h.last_seq < m.before,
        _ => false,
    };
    if own_cut || cut_before {
        tracing::warn!(dir = %t.dir.display(),
            "cdp: the interrupted rollback's history was cut by recovery; it is completed, and the daemon's next start journals the whole volume again");
    } else if let super::degraded::Prior::Stopped {
        after,
        regions: Some(bits),
        ..
    } = &prior
        && bits.iter().all(|&b| b == 0)
    {
        // No region to journal again: the mirror did not vouch for this site's replica after
        // `after` when the daemon stopped (its peer may have written alone).
        return refuse(format!(
            "its history is whole only up to sequence {after}: when the daemon stopped, the mirror did not vouch for this site's replica after it (its peer may have written alone; or the journal had stopped); start this site so it rejoins its peer (the history is whole again once the replica is current), stop it, then roll back"
        ));
    }
    if prior != super::degraded::Prior::Whole && !own_cut && !cut_before {
        return refuse(
            "its journal stopped in the daemon's last run and has not caught up (degraded.map): start the daemon once, which journals the changed regions again, stop it, then roll back".into(),
        );
    }
    // A log sealed clean whose volume was written since (stamp.rs): its records do not name
    // every region that differs from a point (`--all` compares the whole volume).
    // So is a log not sealed (a crash, or a copy taken while a daemon ran) whose volume file
    // was written well after its last record (stamp::written_after), for a new run.
    if !t.all
        && let Some(last) = h.segments.last()
        && if h.sealed {
            super::stamp::changed(&t.dir, &h.meta, &last.header, &t.volume)
        } else {
            found.is_none() && super::stamp::written_after(&t.volume, h.last_time)
        }
    {
        return refuse(
            "the volume was written since the clean stop that sealed its history (without its journal, or the directory is an older copy): start the daemon once, which journals the whole volume again, stop it, then roll back (or roll back with --all)".into(),
        );
    }
    let (point, undo, resume_before) = match (goal, found) {
        (Goal::Undo, None) => return refuse("no rollback to undo".into()),
        // Undo a finished rollback: back to its `before`.
        (Goal::Undo, Some(m)) if m.done => (Point::Seq(m.before), true, None),
        // Rerun an interrupted undo.
        (Goal::Undo, Some(m)) if m.undo => (Point::Seq(m.target), true, Some(m.before)),
        // Undo an interrupted rollback: back to what it began from.
        (Goal::Undo, Some(m)) => (Point::Seq(m.before), true, None),
        (Goal::To(p), None) => (p, false, None),
        (Goal::To(_), Some(m)) if m.done || m.undo => return refuse(m.describe()),
        (Goal::To(p), Some(m)) => {
            // Only the same rollback may be rerun; or, its target cut away, with `--all`
            // another point (the whole volume is compared).
            let target_gone = cut_before && pit::resolve(&h, Point::Seq(m.target)).is_err();
            if pit::resolve(&h, p).ok() != Some(m.target) && !(target_gone && t.all) {
                if target_gone {
                    return refuse(format!(
                        "{}; its target is no longer in the history (a recovery cut it after sequence {}): roll back with --all to a point at or before that, which completes the interrupted rollback there",
                        m.describe(),
                        h.open_gap.map_or(0, |g| g.0)
                    ));
                }
                return refuse(m.describe());
            }
            (p, false, Some(m.before))
        }
    };
    let seq = pit::resolve(&h, point)?;
    let time = h
        .entries()
        .find(|(_, e)| e.seq == seq)
        .map_or(h.meta.window_start(), |(_, e)| e.time);
    if let Some(s) = &t.mirror_state {
        crate::layer::mirror::rollback::check(s)
            .map_err(|why| CdpError::Refused(format!("volume {}: {why}", t.name)))?;
    }
    let f = File::open(&t.volume).map_err(io_err("open", &t.volume))?;
    let len = f.metadata().map_err(io_err("stat", &t.volume))?.len();
    let is_dev = {
        use std::os::unix::fs::FileTypeExt;
        f.metadata()
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false)
    };
    if !is_dev && len < h.meta.size {
        return refuse(format!(
            "{} holds {len} bytes, the history is of a volume of {}",
            t.volume.display(),
            h.meta.size
        ));
    }
    let reverts = match found {
        Some(m) if undo && m.done && !m.undo => h
            .entries()
            .filter(|(_, e)| e.seq > m.end && matches!(e.op, Op::Write | Op::Zeroes | Op::Unmap))
            .count() as u64,
        _ => 0,
    };
    Ok(Prepared {
        t,
        _lock: lock,
        seq,
        time,
        undo,
        resume_before,
        found,
        reverts,
        skip: None,
        whole: cut_before,
    })
}

/// How far a run is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Candidate bytes compared so far.
    pub compared: u64,
    /// Candidate bytes in all.
    pub total: u64,
    /// Bytes rewritten so far.
    pub written: u64,
    /// Journal batches appended (each durable before its blocks are written).
    pub batches: u64,
    /// Bytes of the volume's own content journaled before the rollback (`--all`: blocks
    /// where the volume differs from the history's newest point).
    pub preserved: u64,
}

/// What a run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The sequence the volume now holds the content of.
    pub seq: u64,
    /// The history's last sequence before the run.
    pub before: u64,
    /// Records journaled (the closing time mark included).
    pub records: u64,
    /// Bytes compared and rewritten.
    pub progress: Progress,
}

/// Appends records as new segments after a recovered history (the daemon is stopped).
struct Appender {
    dir: PathBuf,
    meta: Meta,
    seg_size: u64,
    /// The segment being appended to (`None`: the next append creates one).
    cur: Option<u64>,
    last_segno: u64,
    pos: u64,
    next_seq: u64,
    last_time: u64,
    batch: Vec<u8>,
    batch_first: u64,
    records: u64,
    /// The header mark of the segments it creates while it journals a crash comparison
    /// (the crashed run's, tail.rs); `None`: each segment's first sequence.
    low: Option<u64>,
    /// The run's done watermark (done.rs): readers of the history while it runs stop at the
    /// last record whose block is in the volume (before session 28 they took every durable
    /// record, the rolled-back content before the volume held it).
    done: super::done::Published,
}

impl Appender {
    fn push(&mut self, op: Op, offset: u64, len: u64, payload: Option<&[u8]>) {
        let time = clock::now().max(self.last_time);
        self.last_time = time;
        if self.batch.is_empty() {
            self.batch_first = self.next_seq;
        }
        let data = payload.unwrap_or(&[]);
        let mut h = [0u8; REC_HEADER];
        RecHeader {
            op,
            seq: self.next_seq,
            time,
            offset,
            len,
            payload_len: data.len() as u32,
            payload_crc: if data.is_empty() {
                0
            } else {
                crate::checksum::crc32c(data)
            },
            vol_id: self.meta.vol_id,
        }
        .encode(&mut h);
        self.batch.extend_from_slice(&h);
        self.batch.extend_from_slice(data);
        self.next_seq += 1;
        self.records += 1;
    }

    /// Every record appended so far is durable and its block (if any) in the volume: readers
    /// may take them.
    fn done(&mut self) {
        if self.batch.is_empty() {
            self.done.set(self.next_seq - 1);
        }
    }

    /// Append the batch (padded) and make it durable.
    fn flush(&mut self) -> Result<(), CdpError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let used = self.batch.len();
        let pad = format::pad_len(used);
        self.batch.resize(used + pad, 0);
        if pad > 0 {
            format::encode_pad(&mut self.batch[used..], pad, self.meta.vol_id);
        }
        let need = self.batch.len() as u64;
        if self.cur.is_none() || self.pos + need > self.seg_size {
            let segno = self.last_segno + 1;
            drop(store::create_segment(
                &self.dir,
                &self.meta,
                segno,
                self.batch_first,
                self.low.unwrap_or(self.batch_first),
                self.seg_size,
            )?);
            self.cur = Some(segno);
            self.last_segno = segno;
            self.pos = format::SEG_HEADER as u64;
        }
        let segno = self.cur.expect("a segment is open");
        store::append_sync(&self.dir, segno, self.pos, &self.batch)?;
        self.pos += need;
        self.batch.clear();
        #[cfg(test)]
        tests::AFTER_DURABLE.with(|f| {
            if let Some(f) = f.borrow_mut().as_mut() {
                f(&self.dir);
            }
        });
        Ok(())
    }
}

/// The candidate regions: every range of a record after `seq`, merged, sorted.
fn candidates(h: &store::History, seq: u64) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = h
        .entries()
        .filter(|(_, e)| e.seq > seq && matches!(e.op, Op::Write | Op::Zeroes | Op::Unmap))
        .map(|(_, e)| (e.offset, (e.offset + e.len).min(h.meta.size)))
        .filter(|(s, e)| s < e)
        .collect();
    merge(&mut v);
    v
}

/// Sort and merge overlapping or touching ranges `(start, end)`.
pub fn merge(v: &mut Vec<(u64, u64)>) {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for &(s, e) in v.iter() {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    *v = out;
}

/// What a sweep journals for each run of blocks where the volume and the point differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sweep {
    /// The point's content, then written into the volume (the rollback proper).
    Rollback,
    /// The volume's current content, nothing written (an `--all` run's first pass: the
    /// history's newest point then is what the volume holds).
    Preserve,
}

/// Compare `ranges` of `vol` with `view`'s point, block by block, and journal every run of
/// differing blocks as `how` says (journal before data: a batch's blocks are written only
/// once the batch is durable).
/// Read `ranges` at each of `points` through a view (which checks each record it takes from
/// whole, header and payload CRC): a refusal naming the first that cannot be read.
fn verify_readable(t: &Target, ranges: &[(u64, u64)], points: &[u64]) -> Result<(), CdpError> {
    let mut buf = vec![0u8; CHUNK as usize];
    for &seq in points {
        let view = ViewDevice::open(&ViewSpec {
            dir: t.dir.clone(),
            point: Point::Seq(seq),
            sandbox: false,
        })?;
        for &(start, end) in ranges {
            let mut at = start;
            while at < end {
                let n = (end - at).min(CHUNK) as usize;
                view.read_point(at, &mut buf[..n]).map_err(|e| {
                    CdpError::Refused(format!(
                        "volume {}: its history cannot be read at sequence {seq} between bytes {at} and {} ({e}): a damaged record (docs/cdp-rollback.md); nothing was changed",
                        t.name,
                        at + n as u64
                    ))
                })?;
                at += n as u64;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn sweep(
    t: &Target,
    vol: &File,
    view: &ViewDevice,
    ranges: &[(u64, u64)],
    block: u64,
    app: &mut Appender,
    how: Sweep,
    prog: &mut Progress,
    progress: &mut impl FnMut(&Progress),
) -> Result<(), CdpError> {
    // The batch's blocks, written into the volume once the batch is durable.
    let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
    let write_pending = |pending: &mut Vec<(u64, Vec<u8>)>| -> Result<(), CdpError> {
        for (off, data) in pending.drain(..) {
            vol.write_all_at(&data, off)
                .map_err(io_err("write", &t.volume))?;
        }
        Ok(())
    };
    let mut now = vec![0u8; CHUNK as usize];
    let mut then = vec![0u8; CHUNK as usize];
    for &(start, end) in ranges {
        let mut at = start;
        while at < end {
            let n = (end - at).min(CHUNK) as usize;
            store::read_or_zero(vol, &mut now[..n], at).map_err(io_err("read", &t.volume))?;
            view.read_point(at, &mut then[..n])
                .map_err(io_err("read the history of", &t.dir))?;
            // Runs of differing blocks.
            let mut b = 0;
            while b < n {
                let bs = block as usize;
                let differs = |i: usize| now[i..i + bs] != then[i..i + bs];
                if !differs(b) {
                    b += bs;
                    continue;
                }
                let s = b;
                while b < n && differs(b) {
                    b += bs;
                }
                let run = match how {
                    Sweep::Rollback => &then[s..b],
                    Sweep::Preserve => &now[s..b],
                };
                let off = at + s as u64;
                if run.iter().all(|&x| x == 0) {
                    app.push(Op::Zeroes, off, run.len() as u64, None);
                } else {
                    app.push(Op::Write, off, run.len() as u64, Some(run));
                }
                match how {
                    Sweep::Rollback => {
                        pending.push((off, run.to_vec()));
                        prog.written += run.len() as u64;
                    }
                    Sweep::Preserve => prog.preserved += run.len() as u64,
                }
            }
            if app.batch.len() >= BATCH {
                app.flush()?;
                write_pending(&mut pending)?;
                app.done();
                prog.batches += 1;
            }
            at += n as u64;
            prog.compared += n as u64;
            progress(prog);
        }
    }
    app.flush()?;
    write_pending(&mut pending)?;
    app.done();
    Ok(())
}

/// Run a prepared rollback (see the module doc); `progress` is told as it goes.
pub fn run(p: Prepared, mut progress: impl FnMut(&Progress)) -> Result<Outcome, CdpError> {
    let t = &p.t;
    let dir = &t.dir;
    if let Some(skip) = p.skip {
        return Ok(Outcome {
            seq: p.seq,
            before: match skip {
                Skip::Done(m) => m.before,
                Skip::NoRollback => 0,
            },
            records: 0,
            progress: Progress::default(),
        });
    }
    // As a daemon's start would: cut a torn tail (an interrupted run's), drop spares.
    let h = load_for_writing(dir)?;
    let block = u64::from(h.meta.block_size.max(1));
    // (A rerun whose recovery just cut the history before its `before`: as in `prepare`.)
    let whole = p.whole
        || p.resume_before
            .is_some_and(|b| h.open_gap.is_some_and(|g| g.0 < b));
    let mut ranges = if t.all || whole {
        vec![(0, h.meta.size)]
    } else {
        candidates(&h, p.seq)
    };
    let vol = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&t.volume)
        .map_err(io_err("open", &t.volume))?;
    let preserve = t.all && !p.undo && p.resume_before.is_none();
    // After a crash of the daemon (its log not sealed by a clean stop), as its start would:
    // records of updates in flight whose base writes never ran are made the volume's content
    // again first (tail.rs), and their ranges are rolled back too (the point may hold those
    // records). Not for a rerun (its first run did it) nor an `--all` run (its first pass
    // compares the whole volume).
    let crashed = (!h.sealed && p.resume_before.is_none())
        .then(|| super::tail::compare_from(&h))
        .flatten();
    let compare = crashed.filter(|_| !preserve);
    let mut app = Appender {
        dir: dir.clone(),
        meta: h.meta,
        seg_size: t.segment_size.max(super::MIN_SEGMENT),
        cur: None,
        last_segno: h.segments.last().map_or(0, |s| s.header.segno),
        pos: 0,
        next_seq: h.last_seq + 1,
        last_time: h.last_time,
        batch: Vec::with_capacity(2 * BATCH),
        batch_first: 0,
        records: 0,
        // Until the comparison (or an `--all` run's first pass) is durable, the segments it
        // creates keep the crashed run's mark: a run stopped part way leaves the next start
        // comparing from there.
        low: crashed,
        // Readers stop at the history's end until blocks reach the volume.
        done: super::done::Published::create(dir, h.meta.vol_id, h.last_seq)?,
    };
    if compare.is_some() {
        let pieces = super::tail::differences(&h, &t.volume, |off, bytes| {
            if bytes.iter().all(|&b| b == 0) {
                app.push(Op::Zeroes, off, bytes.len() as u64, None);
            } else {
                app.push(Op::Write, off, bytes.len() as u64, Some(bytes));
            }
            ranges.push((off, off + bytes.len() as u64));
            if app.batch.len() >= BATCH {
                app.flush()?;
            }
            Ok(())
        })?;
        app.flush()?;
        // (The volume's own content: nothing to write.)
        app.done();
        app.low = None;
        if pieces > 0 {
            tracing::warn!(volume = %t.name, pieces,
                "cdp: after a crash, the volume differs from the history's newest records (updates in flight, never acknowledged); its content is journaled first");
        }
    }
    for r in ranges.iter_mut() {
        r.0 -= r.0 % block;
        r.1 = r.1.div_ceil(block).saturating_mul(block).min(h.meta.size);
    }
    merge(&mut ranges);
    // A new `--all` rollback first journals what the volume holds where it differs from the
    // history's newest point (data the journal lacks): the point `before` is then the volume
    // as it was, and `--undo` returns to it. Nothing else has changed yet (no marker: a
    // crash here leaves true records and an untouched volume).
    let passes = if preserve { 2 } else { 1 };
    let mut prog = Progress {
        total: passes * ranges.iter().map(|(s, e)| e - s).sum::<u64>(),
        ..Progress::default()
    };
    if preserve {
        let newest = ViewDevice::open(&ViewSpec {
            dir: dir.clone(),
            point: Point::Seq(h.last_seq),
            sandbox: false,
        })?;
        sweep(
            t,
            &vol,
            &newest,
            &ranges,
            block,
            &mut app,
            Sweep::Preserve,
            &mut prog,
            &mut progress,
        )?;
        if app.next_seq > h.last_seq + 1 {
            // The records between are pieces of what the volume held, no moment of it: a gap
            // after the history's newest point refuses them; its own point is the volume.
            app.push(Op::Gap, h.last_seq, 0, None);
            app.flush()?;
            app.done();
        }
        app.low = None;
    }
    let before = p.resume_before.unwrap_or(app.next_seq - 1);
    if p.resume_before.is_none() {
        // Before the marker: every record the run (the point) and its undo (`before`) read
        // over these ranges is intact, so a damaged one refuses the run with nothing changed
        // rather than stop it part way with the daemon refusing to start (a rerun or an undo
        // would meet the same record).
        verify_readable(t, &ranges, &[p.seq, before])?;
    }
    // A rerun keeps the interrupted run's start: retention holds every record after it.
    let started = match (p.resume_before, p.found) {
        (Some(_), Some(m)) => m.started,
        _ => clock::now(),
    };
    let mut marker = Marker {
        done: false,
        undo: p.undo,
        target: p.seq,
        target_time: p.time,
        before,
        started,
        end: 0,
    };
    write_marker(dir, &marker)?;
    if let Some(s) = &t.mirror_state {
        crate::layer::mirror::rollback::mark(s, &ranges)
            .map_err(|why| CdpError::Refused(format!("volume {}: {why}", t.name)))?;
    }
    let view = ViewDevice::open(&ViewSpec {
        dir: dir.clone(),
        point: Point::Seq(p.seq),
        sandbox: false,
    })?;
    sweep(
        t,
        &vol,
        &view,
        &ranges,
        block,
        &mut app,
        Sweep::Rollback,
        &mut prog,
        &mut progress,
    )?;
    vol.sync_all().map_err(io_err("sync", &t.volume))?;
    // A time mark: the window reaches the end of the run.
    app.push(Op::Mark, 0, 0, None);
    app.flush()?;
    drop(view);
    marker.done = true;
    marker.end = app.next_seq - 1;
    if p.undo {
        remove_marker(dir)?;
    } else {
        write_marker(dir, &marker)?;
    }
    progress(&prog);
    Ok(Outcome {
        seq: p.seq,
        before,
        records: app.records,
        progress: prog,
    })
}

/// End the finished rollbacks of a volume or a group, all or nothing: every marker is checked
/// before any is removed. Refused when a volume's rollback did not finish (naming it), or no
/// volume has one; a volume without a marker is passed over (`None`: never rolled back, or
/// confirmed by an earlier run that stopped part way). The history keeps every record. It
/// takes no daemon lock: a finished rollback lets the daemon start and serve, and is confirmed
/// while it does (only the marker goes; consolidation then goes on past its undo point).
pub fn confirm(vols: &[(String, PathBuf)]) -> Result<Vec<(String, Option<Marker>)>, CdpError> {
    let mut found = Vec::new();
    for (name, dir) in vols {
        let m = load_marker(dir)?;
        if let Some(m) = m.filter(|m| !m.done) {
            return Err(CdpError::Refused(format!(
                "volume {name}: {}; nothing confirmed",
                m.describe()
            )));
        }
        found.push((name.clone(), m));
    }
    if found.iter().all(|(_, m)| m.is_none()) {
        return Err(CdpError::Refused(format!(
            "no rollback to confirm ({})",
            vols.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    for ((_, dir), (_, m)) in vols.iter().zip(&found) {
        if m.is_some() {
            remove_marker(dir)?;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished, unconfirmed rollback to sequence 7.
    fn marker() -> Marker {
        Marker {
            done: true,
            undo: false,
            target: 7,
            target_time: 1_000,
            before: 19,
            started: 2_000,
            end: 25,
        }
    }

    #[test]
    fn a_marker_round_trips_and_damage_is_refused() {
        let m = marker();
        let b = m.encode();
        assert_eq!(Marker::decode(&b), Ok(m));
        for i in 0..MARKER_LEN {
            let mut d = b;
            d[i] ^= 0x40;
            assert!(Marker::decode(&d).is_err(), "byte {i}");
        }
        assert!(Marker::decode(&b[..10]).is_err());
        assert!(m.describe().contains("not confirmed"));
    }

    #[test]
    fn a_marker_holds_consolidation_before_its_start() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(hold(d.path()), None);
        let m = marker();
        write_marker(d.path(), &m).unwrap();
        assert_eq!(hold(d.path()), Some(1_999));
        std::fs::write(marker_path(d.path()), b"damaged").unwrap();
        assert_eq!(hold(d.path()), Some(0));
    }

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        let mut v = vec![(10, 20), (0, 5), (5, 8), (15, 30), (40, 41)];
        merge(&mut v);
        assert_eq!(v, vec![(0, 8), (10, 30), (40, 41)]);
    }

    #[test]
    fn the_daemon_lock_is_exclusive_and_names_its_holder() {
        let d = tempfile::tempdir().unwrap();
        let held = lock_daemon(d.path()).unwrap();
        match lock_daemon(d.path()) {
            Err(CdpError::Refused(why)) => {
                assert!(why.contains(&std::process::id().to_string()), "{why}")
            }
            other => panic!("{other:?}"),
        }
        drop(held);
        lock_daemon(d.path()).unwrap();
    }

    /// A hook given a rollback's directory.
    type Hook = Box<dyn FnMut(&Path)>;

    thread_local! {
        /// Called after each batch a rollback on this thread made durable (its directory).
        pub(super) static AFTER_DURABLE: std::cell::RefCell<Option<Hook>> =
            const { std::cell::RefCell::new(None) };
    }

    /// A reader of the history while a rollback runs (a view, a restore) takes no record of
    /// the rollback's whose block the volume does not hold yet: at each batch made durable,
    /// before its blocks are written, the newest point a reader sees is the volume. Before
    /// session 28 it saw the batch's records (the rolled-back content) at once.
    #[test]
    fn a_reader_during_a_rollback_never_takes_a_record_before_its_block_is_in_the_volume() {
        const SIZE: u64 = 64 * 4096;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cdp");
        std::fs::create_dir(&dir).unwrap();
        store::testing::history(&dir, 0x70b, SIZE, 0, &[(1, 1..=40)]);
        let h = store::load(&dir, store::Load::ReadOnly).unwrap();
        let vol = d.path().join("volume");
        std::fs::write(&vol, pit::read_at(&h, Point::Seq(40), 0, SIZE).unwrap()).unwrap();
        // The fixture's records are stamped at time = sequence (1970): a volume file modified
        // after them would be one written since (stamp::written_after).
        File::options()
            .write(true)
            .open(&vol)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH)
            .unwrap();
        let want = pit::read_at(&h, Point::Seq(5), 0, SIZE).unwrap();
        let checks = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let (c, v) = (std::rc::Rc::clone(&checks), vol.clone());
        AFTER_DURABLE.with(|f| {
            *f.borrow_mut() = Some(Box::new(move |dir: &Path| {
                let h = store::load(dir, store::Load::ReadOnly).unwrap();
                let seen = pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE).unwrap();
                assert!(
                    seen == std::fs::read(&v).unwrap(),
                    "a reader's newest point (sequence {}) is not the volume",
                    h.last_seq
                );
                c.set(c.get() + 1);
            }));
        });
        let t = Target {
            name: "v".into(),
            dir: dir.clone(),
            volume: vol.clone(),
            segment_size: 1 << 20,
            mirror_state: None,
            all: false,
        };
        let r = prepare(t, Goal::To(Point::Seq(5))).and_then(|p| run(p, |_| {}));
        AFTER_DURABLE.with(|f| f.borrow_mut().take());
        r.unwrap();
        assert!(checks.get() >= 2, "{} batches", checks.get());
        assert!(std::fs::read(&vol).unwrap() == want);
        let h = store::load(&dir, store::Load::ReadOnly).unwrap();
        assert_eq!(h.running, None, "the run's watermark is gone with it");
        assert!(pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE).unwrap() == want);
    }
}
