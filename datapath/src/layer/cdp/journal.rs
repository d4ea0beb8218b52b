//! The journal writer on a volume's home reactor: records copied into batch buffers as updates
//! arrive, each batch appended to the active segment with one O_DIRECT `RWF_DSYNC` write at
//! the end of the reactor turn (group commit), the durable watermark advanced in log order.
//!
//! Invariants:
//! - Records get sequence numbers in arrival order, +1 each; batches are appended at
//!   increasing positions in sequence order; `durable` is the last sequence such that it and
//!   every record before it are on disk. An update is acknowledged only when `durable` covers
//!   its records (or the journal stopped), so a crash loses no record of an acknowledged update
//!   and the log's first invalid record is after every acknowledged one.
//! - Batch buffers are the reactor's registered pool buffers (a batch larger than one takes a
//!   counted bounce buffer); each is owned by this writer until handed to the in-flight table,
//!   which gives it back after the completion. No allocation in the steady state.
//! - A segment switch happens only with no append in flight and none queued, so no queued SQE
//!   can name the fixed-file slot after it points at the next segment.
//! - A failed append stops the journal for good (until a restart): updates then complete on
//!   their base result alone, and the history ends at `durable`; the layer above it tracks
//!   the changed regions (degraded mode, [`super::degraded`]).
//! - With `sync = "flush"` ([`Journal::new`]'s `sync_on_flush`) appends are not synced: a
//!   batch under [`DIRECT_MIN`] is copied into the page cache by the reactor in the turn
//!   (`cached`, a buffered descriptor of the active segment; unpadded), a larger one is a
//!   plain O_DIRECT write (no `RWF_DSYNC`), after a padding record written the first way when
//!   the position is off a block boundary; nothing goes through the page cache while an
//!   O_DIRECT append is in flight; when the segment thread mapped the active segment
//!   (mapped.rs) every batch, large ones included, is instead a copy into that mapping (no
//!   O_DIRECT append nor padding in that segment). The helper maps a disk spare only when
//!   most of the bytes of the segment full at the last switch came in small batches
//!   ([`Spare::direct_next`]); an unmapped one that then takes small batches in a row is
//!   mapped part way on the writer's request ([`Journal::ask_map`]), and from that request
//!   on none of its batches is O_DIRECT. An update is acknowledged once its record is *written*
//!   (it survives kill -9, not a power loss nor a kernel crash), and the journal is made
//!   durable the way the volume is, by a flush or a FUA write: such an update waits until a
//!   `fdatasync` of the segment issued after its record was written has completed
//!   (`synced`). A lone mark rewritten in place (same sequence number) after the last sync is
//!   synced by a clean stop and by a run-time disable. A segment is synced
//!   before the next one is started, so one sync covers every unsynced record. The ranges of
//!   written but unsynced records are kept ([`Journal::unsynced`]); if the journal stops, the
//!   history is whole only up to `synced` and those ranges count as changed (degraded mode).
//!   With the default `sync = "append"`, `synced` is `durable`.
//! - A journal in memory (its directory on tmpfs or ramfs) is appended by the reactor itself,
//!   one positioned write per batch in the same turn (`inline`): io_uring has no non-blocking
//!   write on those filesystems and hands every such write to a worker thread, whose wake-ups
//!   cost more than the copy the write is. Order, watermark and failure rules are the same.
//!   Its batches are not padded to whole blocks (that is O_DIRECT's need): a lone 4 KiB write
//!   appends 4,160 bytes, not 8,192. (A writer never appends to a log an earlier run left:
//!   every start begins a new segment, whose start records are padded, so an in-memory log
//!   moved to a disk is never written off a block boundary.)

use super::clock;
use super::format::{self, MAX_PAYLOAD, Meta, Op, REC_HEADER, RecHeader, SegHeader};
use super::store;
use crate::bdev::LOWER_SLOT;
use crate::uring::{BdevOp, Errno, IoCx, IoTag, OpBuf, OpKind};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Own-I/O slot bit of a journal append (with [`LOWER_SLOT`]); the low 30 bits are its id.
pub const JOURNAL_SLOT: u32 = 1 << 30;
/// The id of the journal's `fdatasync` (`sync = "flush"`); appends use the ids below it.
const SYNC_ID: u32 = 1 << 29;
const ID_MASK: u32 = SYNC_ID - 1;
/// Room kept free in a batch for its padding record.
const PAD_MAX: usize = format::ALIGN + REC_HEADER;

/// A volume's CDP counters, published for the control plane and tests.
#[derive(Debug, Default)]
pub struct CdpStats {
    /// Under the mirror, the replica is not vouched for ([`super::vouch`]): the history is
    /// whole only up to this sequence number plus one (0: whole).
    pub unvouched: AtomicU64,
    /// Last durable sequence number (every record up to it is on disk).
    pub durable_seq: AtomicU64,
    /// The done watermark readers of the running history stop at (super::done): every update
    /// with a record up to it had its base operation complete successfully.
    pub done_seq: AtomicU64,
    /// A time before the record after it (the window's end while it is below `durable_seq`).
    pub done_time: AtomicU64,
    /// Time of that record.
    pub durable_time: AtomicU64,
    /// Records appended since start.
    pub records: AtomicU64,
    /// Journal bytes written since start (records and padding).
    pub journal_bytes: AtomicU64,
    /// Journal appends (batches) since start.
    pub batches: AtomicU64,
    /// Of them, appended with `pwrite` through the page cache (`sync = "flush"` on a disk, a
    /// segment without a mapping: batches under 64 KiB, and larger ones while the segment
    /// thread has the writer's request to map the segment part way, time marks and segment
    /// headers included; not the padding records written before an O_DIRECT batch, which are not
    /// appends).
    pub cached_appends: AtomicU64,
    /// Of them, copied into the active segment's mapping (a journal on tmpfs, or on a disk
    /// with `sync = "flush"`: mapped.rs); the other appends of a journal in memory are
    /// `pwrite`s.
    pub mapped_appends: AtomicU64,
    /// Active segment number.
    pub segment: AtomicU64,
    /// The journal stopped after a failed append (history ends at `durable_seq`); the layer
    /// tracks changed regions (degraded mode).
    pub stopped: AtomicBool,
    /// Regions (1 MiB) changed since the journal stopped.
    pub changed_regions: AtomicU64,
    /// When it stopped (site time, ns; 0: running).
    pub stopped_at: AtomicU64,
    /// Where the restorable window starts (site time, ns; moved by consolidation).
    pub window_start: Arc<AtomicU64>,
    /// Segment switches to a segment prepared ahead (off the reactor).
    pub switches_prepared: AtomicU64,
    /// Segment switches that created the segment on the reactor (no spare was ready).
    pub switches_created: AtomicU64,
    /// Segment switches on a disk with `sync = "flush"` and mappings on to a segment without
    /// a mapping (the one two before it took most of its bytes in large batches, or it could not
    /// be mapped): its large batches are O_DIRECT writes.
    pub switches_unmapped: AtomicU64,
    /// Waits for the helper to unmap a full disk segment that [`UNMAP_WAIT`] ended (the
    /// segment's sync then ran with the mapping still there: a helper busy elsewhere).
    pub unmap_waits_expired: AtomicU64,
    /// Disk segments started without a mapping that the segment thread mapped part way, once
    /// small batches came in a row ([`Journal::ask_map`]).
    pub mapped_late: AtomicU64,
    /// Retention by size consolidated a segment that retention by age would have kept: the
    /// history is shorter than its age target (set by the retention thread, never cleared
    /// while the daemon runs: the history only recovers as time passes).
    pub short_by_size: AtomicBool,
    /// What held the retention thread's last pass back (a bookmark or an open view inside
    /// or before the segment retention released), if one did (`cdp_status`).
    pub held: std::sync::Mutex<HeldBy>,
    /// CDP was switched off at run time: the history ended at its last time mark.
    pub off: AtomicBool,
    /// Last sequence covered by a completed sync of the journal (`sync = "flush"`; with
    /// `"append"` every durable record is synced).
    pub synced_seq: AtomicU64,
    /// Syncs of the journal issued for flushes, FUA writes and segment switches
    /// (`sync = "flush"`).
    pub syncs: AtomicU64,
}

impl CdpStats {
    /// The done watermark moved to `seq` (`time`: before the record after it).
    pub fn published(&self, seq: u64, time: u64) {
        self.done_time.store(time, Relaxed);
        self.done_seq.store(seq, Relaxed);
    }

    /// Where the window ends for readers of the running history (site time, ns): the last
    /// durable record's time, or, while the done watermark is below it, the watermark's time.
    pub fn window_end(&self) -> u64 {
        let durable = self.durable_time.load(Relaxed);
        if self.done_seq.load(Relaxed) >= self.durable_seq.load(Relaxed) {
            durable
        } else {
            durable.min(self.done_time.load(Relaxed))
        }
    }
}

/// What held a volume's consolidation back at the retention thread's last pass (published in
/// its [`CdpStats`] for `cdp_status` by [`super::retain`]), and when that was last logged.
#[derive(Debug, Default)]
pub struct HeldBy {
    /// The hold (`{"bookmark": NAME, "time_ns": T}`, `{"view_pid": PID, "time_ns": T}`, a
    /// rollback's undo point), or none when the last pass was not held.
    pub what: Option<serde_json::Value>,
    /// When it was last logged.
    pub logged: Option<std::time::Instant>,
}

/// Where the writer starts (from recovery).
pub struct Start {
    /// The directory.
    pub dir: PathBuf,
    /// The history's identity.
    pub meta: Meta,
    /// The active segment, created empty (or holding the start's records).
    pub segno: u64,
    /// Its O_DIRECT descriptor.
    pub file: File,
    /// Next append position in it.
    pub pos: u64,
    /// Next sequence number.
    pub next_seq: u64,
    /// Last record's time.
    pub last_time: u64,
    /// Segment size.
    pub seg_size: u64,
    /// The next segment, prepared off the reactor.
    pub spare: Arc<Spare>,
}

/// The next segment of a volume, prepared by the helper thread ([`spare_thread`]) so a
/// segment switch on the reactor only opens a file and queues its header.
#[derive(Debug, Default)]
pub struct Spare {
    /// The segment number the writer will need next (0: none).
    pub want: AtomicU64,
    /// The segment number prepared (0: none).
    pub ready: AtomicU64,
    /// Write the spare's blocks once (zeroes) before use.
    pub zero: AtomicBool,
    /// The helper is preparing a spare's file ([`store::stage_spare`]): a writer that finds
    /// no spare ready waits for it, at most [`SPARE_WAIT`].
    pub staging: AtomicBool,
    /// Held by the helper only while it installs its prepared file as the segment `want`
    /// names (a rename and a directory sync, [`store::install_spare`]), and by the writer
    /// at a switch; the writer only try-locks it, so the two never create the same segment
    /// and the writer never waits for a preparation.
    pub lock: std::sync::Mutex<()>,
    /// The volume's mappings of its segment files (mapped.rs): the helper maps each spare,
    /// the writer appends through the active segment's, the retention thread reads sealed
    /// segments in memory through them.
    pub maps: Arc<super::mapped::SegMaps>,
    /// Map segments on a disk too (`sync = "flush"`: the writer's appends are copies into the
    /// page cache; on tmpfs segments are always mapped).
    pub map_disk: AtomicBool,
    /// The writer's last full segment took most of its bytes in large batches (at least
    /// [`DIRECT_MIN`]): the next spare on a disk is not mapped, and its large batches are
    /// O_DIRECT writes instead of copies into a mapping ([`Journal::next_segment`]).
    pub direct_next: AtomicBool,
    /// The last spare the helper mapped (0: none). On a disk the writer appends through a
    /// mapping only of that spare, not through one an earlier use of a recycled file left.
    pub mapped_segno: AtomicU64,
    /// The active segment the writer asks the helper to map part way (0: none; the helper
    /// swaps it out when it takes the request, [`Journal::ask_map`]).
    pub map_active: AtomicU64,
    /// From which byte of it (the append position when asked).
    pub map_from: AtomicU64,
    /// The last active segment the helper mapped so.
    pub active_mapped: AtomicU64,
    /// The last active segment the helper could not map part way (the writer may then write
    /// O_DIRECT to it again: the helper is done with it).
    pub active_failed: AtomicU64,
    /// A full disk segment's mapping the writer gave up before its last sync, with its
    /// ticket, for the helper to unmap ([`Journal::disk_map_gone`]).
    pub retired: std::sync::Mutex<Option<(u64, Arc<super::mapped::Mapped>)>>,
    /// The helper thread, woken when a mapping is retired.
    pub helper: std::sync::OnceLock<std::thread::Thread>,
    /// The last ticket given to a retired mapping.
    pub tickets: AtomicU64,
    /// The highest ticket of a retired mapping the helper has unmapped.
    pub unmapped: AtomicU64,
}

impl Spare {
    /// Unmap the retired mapping waiting in the slot, if any (the helper thread; the control
    /// thread at a run-time disable).
    pub fn unmap_retired(&self) {
        let retired = self
            .retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((ticket, m)) = retired {
            drop(m);
            self.unmapped.fetch_max(ticket, Ordering::Release);
        }
    }
}

/// Unmap the retired mappings of every volume the helper serves (at each volume's turn and
/// between a spare's preparation and its mapping, the steps that can take long, so one
/// volume's spare never holds another's switch).
fn unmap_all_retired(vols: &[SpareOf]) {
    for v in vols {
        v.spare.unmap_retired();
    }
}

struct Batch {
    buf: OpBuf,
    used: usize,
    cap: usize,
    last_seq: u64,
    last_time: u64,
    /// It holds one record, a time mark.
    lone_mark: bool,
    /// Written over the previous lone mark at this position instead of appended.
    rewrite_at: Option<u64>,
}

struct InFlight {
    id: u32,
    last_seq: u64,
    last_time: u64,
    done: bool,
}

/// When appends are durable ([`Journal::new`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncPolicy {
    /// `sync = "flush"`: appends are plain writes; flushes and FUA writes sync the segment.
    pub on_flush: bool,
    /// Every sync fails with EIO at once (`[volume.cdp] fail_sync`: tests, drills).
    pub fail: bool,
    /// The first this many writes of `degraded.map` after the start fail with EIO
    /// (`[volume.cdp] fail_map_writes`: tests, drills).
    pub fail_map_writes: u32,
    /// `[volume.cdp] map_segments = false`: with `on_flush` on a disk, appends never go
    /// through the segments' mappings (`pwrite`s and O_DIRECT writes, as without a mapping).
    pub unmapped: bool,
}

impl SyncPolicy {
    /// Segments on a disk are mapped for the writer ([`Spare::map_disk`]).
    pub fn maps_disk(&self) -> bool {
        self.on_flush && !self.unmapped
    }
}

/// The writer.
pub struct Journal {
    dir: PathBuf,
    meta: Meta,
    seg_size: u64,
    segno: u64,
    file: File,
    slot: u32,
    pos: u64,
    vol: u32,
    next_seq: u64,
    last_time: u64,
    open: Option<Batch>,
    ready: VecDeque<Batch>,
    inflight: VecDeque<InFlight>,
    next_id: u32,
    durable: u64,
    stopped: bool,
    stats: Arc<CdpStats>,
    /// When the last record was stamped (for time marks).
    last_record: Instant,
    /// Position and sequence of the last append when it was a lone time mark.
    last_mark: Option<(u64, u64)>,
    /// Time of the last durable record.
    last_durable_time: u64,
    spare: Arc<Spare>,
    /// Appends are written in the turn by the reactor (the directory is in memory).
    inline: bool,
    /// The active segment's writable mapping (inline on tmpfs, or with `sync_on_flush` on a
    /// disk, when the segment thread mapped it): appends are copies into it instead of
    /// `pwrite`s or O_DIRECT writes (mapped.rs).
    map: Option<Arc<super::mapped::Mapped>>,
    /// With `sync_on_flush` on a disk: the active segment opened without O_DIRECT, through
    /// which the reactor writes small batches into the page cache in the turn (see the
    /// module's invariants).
    cached: Option<File>,
    /// An inline append moved `durable` since [`Journal::take_moved`] was last asked.
    moved: bool,
    /// Appends are not durable by themselves: flushes and FUA writes sync the segment.
    sync_on_flush: bool,
    /// Syncs fail at once (fault tests).
    fail_sync: bool,
    /// Every record up to this one is durable (synced); `durable` with `sync_on_flush` off.
    synced: u64,
    /// A lone mark was rewritten in place (same sequence number, newer time) since the last
    /// sync started (`sync_on_flush`): a clean stop syncs it too.
    mark_unsynced: bool,
    /// A sync is wanted for such a rewrite too ([`Journal::want_sync_marks`]).
    sync_marks: bool,
    /// The highest sequence a flush or FUA update waits to see synced.
    sync_want: u64,
    /// A sync in flight, covering records up to this sequence (and its time).
    sync_inflight: Option<(u64, u64)>,
    /// The active segment's mapping was given to the helper to unmap: the count of unmapped
    /// mappings that says it is done, and since when the writer waits
    /// ([`Journal::disk_map_gone`]).
    await_unmap: Option<(u64, Instant)>,
    /// Time of the record `synced` names.
    synced_time: u64,
    /// `(seq, offset, len)` of the records not yet synced, oldest first (`sync_on_flush`).
    unsynced: VecDeque<(u64, u64, u64)>,
    /// Bytes of batches appended to the active segment, and of them those in batches of at
    /// least [`DIRECT_MIN`] (whether the next spare is mapped: [`Spare::direct_next`]).
    seg_bytes: u64,
    seg_large: u64,
    /// Bytes of small batches appended in a row to the active segment, without a mapping.
    small_run: u64,
    /// When this switch first found no spare ready while the helper was preparing one
    /// ([`SPARE_WAIT`]).
    spare_wait: Option<Instant>,
    /// Whether the writer asked the helper to map the active segment part way.
    map_ask: MapAsk,
}

/// The writer's request that the helper map the active disk segment part way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MapAsk {
    /// Not asked (the segment has a mapping, or small batches have not come in a row yet).
    No,
    /// Asked: every batch is a page-cache write (no O_DIRECT: the helper's populate brings
    /// pages of the file into the cache, which must never be pages an O_DIRECT write is
    /// writing) until the helper is done with the request, or until a large batch withdraws
    /// a request the helper has not taken yet.
    Asked,
    /// The helper is done with it: the mapping taken, or none made (then large batches are
    /// O_DIRECT again: the kernel writes back and drops the cached pages of a direct write's
    /// range first). As it is until the next switch.
    Done,
}

/// `statfs`'s `f_type` of tmpfs (defined with the mappings, which need no more of this module).
pub use super::mapped::TMPFS_MAGIC;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// The type of the filesystem `path` is on (`statfs`'s `f_type`); `None` when it cannot be
/// told.
pub fn fs_type(path: &std::path::Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed struct it is given; `c` is a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers are valid for the call.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// Whether `dir` is on a filesystem kept in memory (tmpfs, ramfs), where a write is a copy.
pub fn in_memory(dir: &std::path::Path) -> bool {
    matches!(fs_type(dir), Some(TMPFS_MAGIC | RAMFS_MAGIC))
}

/// Clear `O_DIRECT` on a segment written in memory: its appends are unpadded copies, at any
/// byte (tmpfs takes O_DIRECT only as a formality, and would be within its rights to ask for
/// whole blocks).
fn without_direct_io(f: &File) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor this File owns; F_GETFL takes no argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL takes the flags as an int.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The active segment `segno` of `dir` opened for writes through the page cache (a new open
/// file description: clearing O_DIRECT on a duplicate of the registered one would clear it
/// there too).
fn open_cached(dir: &std::path::Path, segno: u64) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(store::seg_path(dir, segno))
}

/// With `sync = "flush"` on a disk, a batch of at least this many bytes is appended with
/// O_DIRECT through the ring; a smaller one is copied into the page cache by the reactor.
pub const DIRECT_MIN: usize = 64 * 1024;

/// An idle journal appends a time mark this often, so its window reaches to about now.
pub const MARK_EVERY: Duration = Duration::from_secs(1);

impl Journal {
    /// The writer of volume `vol` on this reactor, appending to `s`'s segment; with
    /// `sync.on_flush`, appends are made durable by flushes and FUA writes only (see the
    /// module doc). A journal in memory ignores it (its appends are as durable as its memory).
    pub fn new(
        io: &mut IoCx,
        vol: u32,
        s: Start,
        stats: Arc<CdpStats>,
        sync: SyncPolicy,
    ) -> std::io::Result<Self> {
        let slot = io.register_file(s.file.as_raw_fd())?;
        let inline = in_memory(&s.dir);
        if inline {
            without_direct_io(&s.file)?;
        }
        let sync_on_flush = sync.on_flush && !inline;
        let cached = if sync_on_flush {
            Some(open_cached(&s.dir, s.segno)?)
        } else {
            None
        };
        let map = if inline || cached.is_some() {
            s.spare.maps.cached(&s.file)
        } else {
            None
        };
        stats.durable_seq.store(s.next_seq - 1, Relaxed);
        stats.synced_seq.store(s.next_seq - 1, Relaxed);
        stats.durable_time.store(s.last_time, Relaxed);
        stats.segment.store(s.segno, Relaxed);
        Ok(Self {
            dir: s.dir,
            meta: s.meta,
            seg_size: s.seg_size,
            segno: s.segno,
            file: s.file,
            slot,
            pos: s.pos,
            vol,
            next_seq: s.next_seq,
            last_time: s.last_time,
            open: None,
            ready: VecDeque::new(),
            inflight: VecDeque::new(),
            next_id: 0,
            durable: s.next_seq - 1,
            stopped: false,
            stats,
            last_record: Instant::now(),
            last_mark: None,
            last_durable_time: s.last_time,
            inline,
            map,
            cached,
            spare: s.spare,
            moved: false,
            sync_on_flush,
            fail_sync: sync.fail,
            synced: s.next_seq - 1,
            mark_unsynced: false,
            sync_marks: false,
            synced_time: s.last_time,
            sync_want: 0,
            sync_inflight: None,
            await_unmap: None,
            unsynced: VecDeque::new(),
            seg_bytes: 0,
            seg_large: 0,
            small_run: 0,
            spare_wait: None,
            map_ask: MapAsk::No,
        })
    }

    /// Every record up to this sequence is durable (synced).
    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// The last synced record and its time: how far the history is whole should the journal
    /// stop now (with `sync = "append"`, the durable watermark).
    pub fn whole_until(&self) -> (u64, u64) {
        (self.synced, self.synced_time)
    }

    /// The last sequence number given out.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// A flush or FUA update waits until `seq` is synced: ask for a sync once it is written.
    pub fn want_sync(&mut self, seq: u64) {
        self.sync_want = self.sync_want.max(seq);
    }

    /// Also sync a lone mark rewritten in place (same sequence number, newer time) once it is
    /// written ([`Journal::marks_synced`] says when it is): a run-time disable's last mark.
    pub fn want_sync_marks(&mut self) {
        self.want_sync(self.last_seq());
        let rewrite = self.ready.back().is_some_and(|b| b.rewrite_at.is_some());
        self.sync_marks = self.sync_on_flush && (rewrite || self.mark_unsynced);
    }

    /// No rewritten mark waits for the sync [`Journal::want_sync_marks`] asked for.
    pub fn marks_synced(&self) -> bool {
        !self.sync_marks && self.sync_inflight.is_none()
    }

    /// `(offset, len)` of the written records not yet synced (`sync = "flush"`).
    pub fn unsynced(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.unsynced.iter().map(|&(_, o, l)| (o, l))
    }

    /// Sync the active segment now, blocking (a clean stop, nothing in flight); true when
    /// there was something to sync (a record, or a lone mark rewritten in place since the
    /// last sync: its sequence number was synced, its newer time not).
    pub fn sync_now(&mut self) -> std::io::Result<bool> {
        if self.sync_on_flush && !self.stopped && (self.synced < self.durable || self.mark_unsynced)
        {
            self.file.sync_data()?;
            self.mark_unsynced = false;
            self.synced_to(self.durable, self.last_durable_time);
            return Ok(true);
        }
        Ok(false)
    }

    fn synced_to(&mut self, seq: u64, time: u64) {
        if seq > self.synced {
            self.synced = seq;
            self.synced_time = time;
        }
        while self
            .unsynced
            .front()
            .is_some_and(|&(q, _, _)| q <= self.synced)
        {
            self.unsynced.pop_front();
        }
        self.stats.synced_seq.store(self.synced, Relaxed);
    }

    /// Start a sync of the active segment covering every written record, if one is wanted
    /// (`min`: at least up to it) and none is in flight. True when it started one.
    fn start_sync(&mut self, io: &mut IoCx, min: u64) -> bool {
        let mark = self.sync_marks && self.mark_unsynced;
        if !self.sync_on_flush
            || self.stopped
            || self.sync_inflight.is_some()
            || self.synced >= min && !mark
            || self.durable < min
        {
            return false;
        }
        self.sync_inflight = Some((self.durable, self.last_durable_time));
        self.mark_unsynced = false;
        if mark {
            self.sync_marks = false;
        }
        self.stats.syncs.fetch_add(1, Relaxed);
        if self.fail_sync {
            self.moved |= self.finished(io, SYNC_ID, Err(Errno::IO));
            return true;
        }
        // Only the written part of the segment: the rest of a mapped one is pages made
        // present (dirty) ahead, which a sync of the whole file would write out and leave
        // write-protected for the writer to fault on (mapped.rs). A segment past 4 GiB is
        // synced whole (len 0).
        io.start_bdev(BdevOp {
            tag: IoTag::channel(self.vol, LOWER_SLOT | JOURNAL_SLOT | SYNC_ID),
            file: self.slot,
            offset: 0,
            len: u32::try_from(self.pos).unwrap_or(0),
            done: 0,
            kind: OpKind::Flush,
            buf: OpBuf::None,
        });
        true
    }

    /// Whether an inline append moved the durable watermark since the last call (the layer
    /// then answers the updates it covers).
    pub fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// Whether appends are written inline (the journal is in memory).
    pub fn inline(&self) -> bool {
        self.inline
    }

    /// Last durable sequence number.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Write the active segment's index (a clean stop, nothing in flight: the next start
    /// begins a new segment, so this one is sealed).
    pub fn seal(&self) -> Result<(), store::CdpError> {
        store::seal_index(&self.dir, &self.meta, self.segno, self.pos)
    }

    /// Record the base file `base` (just synced) as this clean stop leaves it, before the
    /// seal ([`super::stamp`]).
    pub fn stamp(&self, base: &std::path::Path) -> Result<(), store::CdpError> {
        super::stamp::record(&self.dir, &self.meta, self.segno, base)
    }

    /// The active segment's number.
    pub fn segno(&self) -> u64 {
        self.segno
    }

    /// Time of the last durable record.
    pub fn durable_time(&self) -> u64 {
        self.last_durable_time
    }

    /// The journal stopped (a failed append): updates complete on their base result alone.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Give back the segment's fixed-file slot (CDP switched off at run time, nothing in
    /// flight).
    pub fn close(&mut self, io: &mut IoCx) {
        if let Err(e) = io.unregister_file(self.slot) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cdp: cannot unregister the journal's segment");
        }
    }

    /// Time of the last record stamped (durable or not).
    pub fn last_time(&self) -> u64 {
        self.last_time
    }

    /// Records waiting for their append.
    pub fn has_queued(&self) -> bool {
        !self.ready.is_empty() || self.open.as_ref().is_some_and(|b| b.used > 0)
    }

    /// Appends (and the sync) in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len() + usize::from(self.sync_inflight.is_some())
    }

    /// Journal an update of `len` bytes at `offset` (`data`: a write's payload); returns the
    /// sequence number of its last record (0 when the journal is stopped).
    pub fn record(
        &mut self,
        io: &mut IoCx,
        op: Op,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
    ) -> u64 {
        if self.stopped {
            return 0;
        }
        let time = clock::now().max(self.last_time);
        self.last_time = time;
        self.last_record = Instant::now();
        match data {
            Some(d) => {
                for (i, chunk) in d.chunks(MAX_PAYLOAD).enumerate() {
                    let off = offset + (i * MAX_PAYLOAD) as u64;
                    self.append(io, op, off, chunk.len() as u64, chunk, time);
                }
            }
            None => self.append(io, op, offset, len, &[], time),
        }
        self.next_seq - 1
    }

    fn append(&mut self, io: &mut IoCx, op: Op, offset: u64, len: u64, payload: &[u8], time: u64) {
        let need = REC_HEADER + payload.len();
        if self
            .open
            .as_ref()
            .is_none_or(|b| b.used + need + PAD_MAX > b.cap)
        {
            if let Some(b) = self.open.take() {
                self.ready.push_back(b);
            }
            let cap = io
                .pool
                .buf_size()
                .max((need + PAD_MAX).next_multiple_of(format::ALIGN));
            self.open = Some(Batch {
                buf: io.take_buf(cap),
                used: 0,
                cap,
                last_seq: 0,
                last_time: 0,
                lone_mark: false,
                rewrite_at: None,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if op != Op::Mark {
            self.last_mark = None;
        }
        let b = self.open.as_mut().expect("opened above");
        b.lone_mark = b.used == 0 && op == Op::Mark;
        let bytes = io.buf_mut(&mut b.buf, b.cap);
        let rec = &mut bytes[b.used..b.used + need];
        RecHeader::write_record(rec, op, seq, time, offset, len, payload, self.meta.vol_id);
        b.used += need;
        b.last_seq = seq;
        b.last_time = time;
        self.stats.records.fetch_add(1, Relaxed);
        if self.sync_on_flush && matches!(op, Op::Write | Op::Zeroes | Op::Unmap) {
            self.unsynced.push_back((seq, offset, len));
        }
    }

    /// When the next time mark is due.
    pub fn mark_due(&self) -> Option<Instant> {
        (!self.stopped).then_some(self.last_record + MARK_EVERY)
    }

    /// Stamp a time mark: nothing changed from the last record up to now.
    /// When the last append was a lone mark and nothing is queued or in flight, the new mark
    /// rewrites that block in place with the same sequence number (an idle volume's journal
    /// does not grow; a torn rewrite loses only that mark: the acknowledgement order keeps
    /// every later record waiting for it).
    pub fn mark(&mut self, io: &mut IoCx) {
        if let Some((pos, seq)) = self.last_mark
            && !self.stopped
            && !self.has_queued()
            && self.inflight.is_empty()
        {
            let time = clock::now().max(self.last_time);
            self.last_time = time;
            self.last_record = Instant::now();
            let cap = io.pool.buf_size();
            let mut buf = io.take_buf(cap);
            RecHeader {
                op: Op::Mark,
                seq,
                time,
                offset: 0,
                len: 0,
                payload_len: 0,
                payload_crc: 0,
                vol_id: self.meta.vol_id,
            }
            .encode(io.buf_mut(&mut buf, cap));
            self.ready.push_back(Batch {
                buf,
                used: REC_HEADER,
                cap,
                last_seq: seq,
                last_time: time,
                lone_mark: true,
                rewrite_at: Some(pos),
            });
            return;
        }
        self.record(io, Op::Mark, 0, 0, None);
    }

    /// Append every filled batch (called by the poller at the end of each turn). True when it
    /// started an append. `low` answers, when a segment switch needs it, the first sequence
    /// whose update's base operation is not done (the next record's when none is), which the
    /// new segment's header keeps ([`SegHeader::low`]).
    pub fn issue(&mut self, io: &mut IoCx, low: &dyn Fn(u64) -> u64) -> bool {
        if let Some(b) = self.open.take_if(|b| b.used > 0) {
            self.ready.push_back(b);
        }
        if self.stopped {
            while let Some(b) = self.ready.pop_front() {
                io.put_buf(b.buf);
            }
            return false;
        }
        let mut started = self.start_sync(io, self.sync_want);
        if self.map_ask == MapAsk::Asked {
            if self.spare.active_mapped.load(Ordering::Acquire) == self.segno {
                // The helper mapped the active segment: appends are copies into it from here
                // on (or, if the cache did not keep the mapping, as before the request).
                self.map = self.spare.maps.cached(&self.file);
                self.map_ask = MapAsk::Done;
                if self.map.is_some() {
                    self.stats.mapped_late.fetch_add(1, Relaxed);
                }
            } else if self.spare.active_failed.load(Ordering::Acquire) == self.segno {
                self.map_ask = MapAsk::Done; // the helper is done with the segment
            }
        }
        while let Some(b) = self.ready.front() {
            if self.map_ask == MapAsk::Asked
                && b.used >= DIRECT_MIN
                && b.rewrite_at.is_none()
                && self
                    .spare
                    .map_active
                    .compare_exchange(self.segno, 0, Ordering::AcqRel, Relaxed)
                    .is_ok()
            {
                // A large batch while the helper has not taken the request yet: withdrawn,
                // so the batch may be an O_DIRECT write (no populate can be running).
                self.map_ask = MapAsk::No;
                self.small_run = 0;
            }
            // Written in the turn (in memory, or a small batch into the page cache): as it
            // is. An O_DIRECT write needs whole blocks (padding), from a block boundary (a
            // padding record first when cached batches left the position off one).
            // (With a mapping every batch is a copy into it: nothing is O_DIRECT.)
            let cached = self.cached.is_some()
                && (b.used < DIRECT_MIN
                    || b.rewrite_at.is_some()
                    || self.map.is_some()
                    || self.map_ask == MapAsk::Asked);
            let (lead, len) = if self.inline || cached {
                (0, b.used)
            } else {
                let lead = if b.rewrite_at.is_none() {
                    format::pad_len((self.pos % format::ALIGN as u64) as usize)
                } else {
                    0
                };
                (lead, b.used + format::pad_len(b.used))
            };
            // Nothing goes through the page cache while an O_DIRECT append is in flight: the
            // kernel drops the cached pages of a direct write's range when it is done, and a
            // folio (which may span more than 4 KiB) dirtied meanwhile could not be dropped
            // (an EIO on the file and stale pages). Such a write waits for the next turn
            // after the completion. (Every entry not done is an O_DIRECT one: page-cache
            // writes are done when issued.)
            if (cached || lead > 0) && self.inflight.iter().any(|f| !f.done) {
                break;
            }
            if b.rewrite_at.is_none() && self.pos + (lead + len) as u64 > self.seg_size {
                if !self.inflight.is_empty() || self.sync_inflight.is_some() {
                    // Switch once the appends to this segment are done, and its sync (one
                    // started for a rewritten mark alone may be in flight): the slot then
                    // names the next segment.
                    break;
                }
                if self.sync_on_flush && self.synced < self.durable {
                    if !self.disk_map_gone() {
                        break; // the helper is unmapping it
                    }
                    // The segment is synced before the next one starts (one sync then covers
                    // every unsynced record, all in the active segment).
                    started |= self.start_sync(io, self.durable);
                    break;
                }
                match self.next_segment(io, low(self.next_seq)) {
                    Ok(true) => continue, // the new segment's header (if any) goes first
                    Ok(false) => break,   // the helper is finishing it
                    Err(e) => {
                        self.stop(io, &format!("cannot start the next segment: {e}"));
                        return started;
                    }
                }
            }
            if lead > 0 {
                if let Err(e) = self.write_lead(lead) {
                    self.stop(io, &format!("cannot pad the segment: {e}"));
                    return started;
                }
                self.pos += lead as u64;
                self.stats.journal_bytes.fetch_add(lead as u64, Relaxed);
            }
            let mut b = self.ready.pop_front().expect("front exists");
            let pad = len - b.used;
            if pad > 0 {
                let vol_id = self.meta.vol_id;
                let bytes = io.buf_mut(&mut b.buf, b.cap);
                format::encode_pad(&mut bytes[b.used..], pad, vol_id);
            }
            let id = self.next_id;
            self.next_id = (self.next_id + 1) & ID_MASK;
            let at = b.rewrite_at.unwrap_or(self.pos);
            self.last_mark = b.lone_mark.then_some((at, b.last_seq));
            let written = if self.inline || cached {
                // In memory or the page cache: the write is a copy, done here (see the
                // module's invariants); through the segment's mapping when it has one.
                let bytes = io.buf_mut(&mut b.buf, len);
                let r = match &self.map {
                    Some(m) => m.write(at, &bytes[..len]).then_some(()).ok_or(Errno::IO),
                    None => {
                        let f = self.cached.as_ref().unwrap_or(&self.file);
                        std::os::unix::fs::FileExt::write_all_at(f, &bytes[..len], at)
                            .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))
                    }
                };
                io.put_buf(b.buf);
                Some(r)
            } else {
                io.start_bdev(BdevOp {
                    tag: IoTag::channel(self.vol, LOWER_SLOT | JOURNAL_SLOT | id),
                    file: self.slot,
                    offset: at,
                    len: len as u32,
                    done: 0,
                    kind: OpKind::Write {
                        fua: !self.sync_on_flush,
                    },
                    buf: b.buf,
                });
                None
            };
            if b.rewrite_at.is_none() {
                self.pos += len as u64;
                self.seg_bytes += b.used as u64;
                if b.used >= DIRECT_MIN {
                    self.seg_large += b.used as u64;
                }
                self.ask_map(b.used);
            } else if self.sync_on_flush {
                self.mark_unsynced = true;
            }
            self.inflight.push_back(InFlight {
                id,
                last_seq: b.last_seq,
                last_time: b.last_time,
                done: false,
            });
            self.stats.journal_bytes.fetch_add(len as u64, Relaxed);
            self.stats.batches.fetch_add(1, Relaxed);
            if self.map.is_some() {
                self.stats.mapped_appends.fetch_add(1, Relaxed);
            } else if cached {
                self.stats.cached_appends.fetch_add(1, Relaxed);
            }
            started = true;
            if let Some(r) = written {
                self.moved |= self.finished(io, id, r);
                if self.stopped {
                    return started;
                }
            }
        }
        started
    }

    /// The active segment is full: true once its last sync may start. On a disk, its mapping
    /// goes first: the writer gives it to the helper thread to unmap (about 2 ms for 64 MiB,
    /// never on the reactor) and waits for that, at most [`UNMAP_WAIT`]. Written back under a
    /// mapping, each page is write-protected in every CPU's TLB, an interrupt to the reactor's
    /// core per page in a VM: 80,000-92,000 TLB shootdowns in 5 s of 128 KiB writes here,
    /// 12,000-15,000 with the mapping unmapped first (benches/RESULTS.md, session 21). No wait
    /// (the mapping kept through the sync, as before) where there is no helper, where the
    /// helper has not taken the previous one yet or the slot is busy, or where the segment is
    /// fully synced already (no sync to come): the reactor never blocks on it. Whatever the
    /// segment still takes (a lone mark rewritten in place) is written with `pwrite`.
    fn disk_map_gone(&mut self) -> bool {
        if let Some((ticket, since)) = self.await_unmap {
            let done = self.spare.unmapped.load(Ordering::Acquire) >= ticket;
            if done || since.elapsed() >= UNMAP_WAIT {
                self.stats
                    .unmap_waits_expired
                    .fetch_add(u64::from(!done), Relaxed);
                self.await_unmap = None;
                return true;
            }
            return false;
        }
        let Some(helper) = self.spare.helper.get() else {
            return true;
        };
        let Some(m) = self.map.take_if(|m| m.on_disk()) else {
            return true;
        };
        let Ok(mut slot) = self.spare.retired.try_lock() else {
            self.map = Some(m);
            return true;
        };
        if slot.is_some() {
            drop(slot);
            self.map = Some(m);
            return true;
        }
        self.spare.maps.forget(&m);
        let ticket = self.spare.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        *slot = Some((ticket, m));
        drop(slot);
        self.await_unmap = Some((ticket, Instant::now()));
        helper.unpark();
        false
    }

    /// After a batch of `used` bytes appended to an unmapped disk segment (`sync = "flush"`,
    /// mappings on): once small batches have come in a row for an eighth of a segment (at
    /// most 1 MiB) with a quarter of it left, ask the helper to map the segment from the
    /// append position on, so the rest of it is appended with copies instead of `pwrite`s
    /// (the segment was left unmapped for the large batches of the one two before it). Only
    /// with no O_DIRECT append in flight, and none is issued to the segment after the
    /// request: the helper's populate brings pages of the file into the cache, which must
    /// never be pages an O_DIRECT write is writing.
    fn ask_map(&mut self, used: usize) {
        if self.map.is_some()
            || self.map_ask != MapAsk::No
            || self.cached.is_none()
            || !self.spare.map_disk.load(Relaxed)
        {
            return;
        }
        if used >= DIRECT_MIN {
            self.small_run = 0;
            return;
        }
        self.small_run += used as u64;
        if self.small_run < (self.seg_size / 8).min(1 << 20)
            || self.seg_size.saturating_sub(self.pos) < self.seg_size / 4
            || self.inflight.iter().any(|f| !f.done)
            || !super::mapped::populate_write_supported()
        {
            return;
        }
        let Some(helper) = self.spare.helper.get() else {
            return;
        };
        self.spare.map_from.store(self.pos, Relaxed);
        self.spare.map_active.store(self.segno, Ordering::Release);
        self.map_ask = MapAsk::Asked;
        helper.unpark();
    }

    /// A padding record of `lead` bytes at the append position, through the page cache, so
    /// the O_DIRECT batch after it starts on a block boundary.
    fn write_lead(&self, lead: usize) -> std::io::Result<()> {
        let mut pad = [0u8; 2 * format::ALIGN];
        format::encode_pad(&mut pad[..lead], lead, self.meta.vol_id);
        let f = self.cached.as_ref().unwrap_or(&self.file);
        std::os::unix::fs::FileExt::write_all_at(f, &pad[..lead], self.pos)
    }

    /// Close the active segment and start the next one (no append in flight or queued for it),
    /// its header naming `low` ([`Journal::issue`]). False: the helper is installing it right
    /// now, or preparing it for less than [`SPARE_WAIT`]; try again next turn.
    fn next_segment(&mut self, io: &mut IoCx, low: u64) -> Result<bool, store::CdpError> {
        let first = self.durable + 1;
        let segno = self.segno + 1;
        let spare_slot = Arc::clone(&self.spare);
        let _guard = match spare_slot.lock.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
        };
        let spare = spare_slot.ready.load(Ordering::Acquire) == segno;
        if !spare && spare_slot.staging.load(Ordering::Acquire) {
            let since = *self.spare_wait.get_or_insert_with(Instant::now);
            if since.elapsed() < SPARE_WAIT {
                return Ok(false);
            }
        }
        self.spare_wait = None;
        let file = if spare {
            store::open_spare(&self.dir, segno)?
        } else {
            // No helper, or it failed: create it here (a few ms on the reactor).
            store::create_segment(&self.dir, &self.meta, segno, first, low, self.seg_size)?
        };
        // Large batches are cheaper as O_DIRECT writes than as copies into a mapping (the
        // reactor's copy, and the page cache's writeback at the sync), small ones the other
        // way round (benches/RESULTS.md, session 22): the spare the helper prepares next is
        // mapped unless most of this segment's bytes came in large batches.
        spare_slot
            .direct_next
            .store(self.seg_large * 2 > self.seg_bytes, Relaxed);
        (self.seg_bytes, self.seg_large, self.small_run) = (0, 0, 0);
        if self.map_ask == MapAsk::Asked {
            // Withdrawn if the helper has not taken it (it checks the writer is still on the
            // segment before and after mapping it).
            let _ =
                self.spare
                    .map_active
                    .compare_exchange(self.segno, 0, Ordering::AcqRel, Relaxed);
        }
        self.map_ask = MapAsk::No;
        spare_slot.want.store(segno + 1, Ordering::Release);
        if spare {
            self.stats.switches_prepared.fetch_add(1, Relaxed);
        } else {
            self.stats.switches_created.fetch_add(1, Relaxed);
        }
        // Opened before the slot moves, so a failure leaves the writer on one segment.
        let cached = self
            .cached
            .as_ref()
            .map(|_| open_cached(&self.dir, segno))
            .transpose()
            .map_err(|source| store::CdpError::Io {
                what: "open",
                path: store::seg_path(&self.dir, segno),
                source,
            })?;
        io.replace_file(self.slot, file.as_raw_fd())
            .map_err(|source| store::CdpError::Io {
                what: "register",
                path: store::seg_path(&self.dir, segno),
                source,
            })?;
        self.cached = cached;
        if self.inline {
            without_direct_io(&file).map_err(|source| store::CdpError::Io {
                what: "clear O_DIRECT on",
                path: store::seg_path(&self.dir, segno),
                source,
            })?;
        }
        // A spare the helper mapped, or a recycled file mapped in an earlier use (a new file
        // created here has no mapping: `pwrite`s, or O_DIRECT writes for large batches).
        // On a disk only the spare the helper mapped for this use: a mapping an earlier use
        // of a recycled file left would override its choice (`direct_next`).
        let mapped_here = spare && self.spare.mapped_segno.load(Ordering::Acquire) == segno;
        self.map = if self.inline || self.cached.is_some() && mapped_here {
            self.spare.maps.cached(&file)
        } else {
            None
        };
        if self.map.is_none() && self.cached.is_some() && self.spare.map_disk.load(Relaxed) {
            self.stats.switches_unmapped.fetch_add(1, Relaxed);
        }
        self.file = file;
        self.segno = segno;
        self.last_mark = None;
        self.pos = format::SEG_HEADER as u64;
        self.stats.segment.store(segno, Relaxed);
        if spare {
            // The header is the segment's first append: every record after it is
            // acknowledged only once it is durable (log order).
            let header = SegHeader {
                vol_id: self.meta.vol_id,
                segno,
                first_seq: first,
                created: clock::now(),
                size: self.seg_size,
                low: Some(low.min(first)),
            }
            .encode();
            let cap = io.pool.buf_size();
            let mut buf = io.take_buf(cap);
            io.buf_mut(&mut buf, format::SEG_HEADER)
                .copy_from_slice(&header);
            self.ready.push_front(Batch {
                buf,
                used: format::SEG_HEADER,
                cap,
                last_seq: self.durable,
                last_time: self.last_durable_time,
                lone_mark: false,
                rewrite_at: Some(0),
            });
        }
        Ok(true)
    }

    /// Stop journaling (a failed append, or a run-time start whose catch-up failed):
    /// updates complete on their base result alone from now on.
    pub fn stop(&mut self, io: &mut IoCx, why: &str) {
        if self.sync_on_flush && !self.stopped {
            // Written but unsynced records may not survive a power loss: the history is whole
            // up to the last sync (their ranges are [`Journal::unsynced`]).
            self.durable = self.synced;
            self.last_durable_time = self.synced_time;
            self.stats.durable_seq.store(self.durable, Relaxed);
            self.stats.durable_time.store(self.synced_time, Relaxed);
        }
        if !self.stopped {
            tracing::error!(dir = %self.dir.display(), durable = self.durable, why,
                "cdp: the journal stopped; the volume keeps serving, its history ends here and the layer tracks changed regions until the next start");
        }
        self.stopped = true;
        self.stats.stopped.store(true, Relaxed);
        if let Some(b) = self.open.take() {
            io.put_buf(b.buf);
        }
        while let Some(b) = self.ready.pop_front() {
            io.put_buf(b.buf);
        }
    }

    /// Append `id` finished with `result`; true when the durable watermark moved. After a
    /// failure the watermark stays where it was (the journal is stopped; updates no longer
    /// wait for it).
    pub fn finished(&mut self, io: &mut IoCx, id: u32, result: Result<(), Errno>) -> bool {
        if id == SYNC_ID {
            let (covered, time) = self.sync_inflight.take().unwrap_or_default();
            match result {
                Ok(()) if !self.stopped => {
                    self.synced_to(covered, time);
                    return true;
                }
                Ok(()) => return false,
                Err(e) => {
                    self.stop(io, &format!("sync failed: errno {}", e.0));
                    return true;
                }
            }
        }
        if let Err(e) = result {
            self.stop(io, &format!("append failed: errno {}", e.0));
        }
        if let Some(f) = self.inflight.iter_mut().find(|f| f.id == id) {
            f.done = true;
        }
        let mut moved = false;
        while let Some(f) = self.inflight.front() {
            if !f.done {
                break;
            }
            if !self.stopped {
                self.durable = self.durable.max(f.last_seq);
                self.stats.durable_seq.store(self.durable, Relaxed);
                self.stats.durable_time.store(f.last_time, Relaxed);
                self.last_durable_time = f.last_time;
                if !self.sync_on_flush {
                    self.synced = self.durable;
                    self.synced_time = f.last_time;
                    self.stats.synced_seq.store(self.synced, Relaxed);
                }
                moved = true;
            }
            self.inflight.pop_front();
        }
        moved
    }
}

/// A volume whose next segment the helper thread prepares.
#[derive(Clone)]
pub struct SpareOf {
    /// Its directory.
    pub dir: PathBuf,
    /// Segment size.
    pub size: u64,
    /// The slot shared with its writer.
    pub spare: Arc<Spare>,
}

/// How long a writer waits for the helper to unmap a full disk segment before it syncs the
/// segment anyway ([`Journal::disk_map_gone`]): a helper busy elsewhere or gone never stalls
/// the journal for longer.
const UNMAP_WAIT: Duration = Duration::from_millis(50);

/// How long the helper waits before preparing a directory's segment again after a failure.
const SPARE_RETRY: Duration = Duration::from_secs(1);

/// How long a writer that needs the next segment waits for the helper preparing it before
/// it creates the segment itself on the reactor ([`Journal::next_segment`]): a helper that
/// is slow (starved of CPU, a slow device) never holds the journal, and so the production
/// writes, for longer.
pub const SPARE_WAIT: Duration = Duration::from_millis(5);

/// Whether the writer of `spare`'s volume appends to segments in `dir` through mappings
/// (mapped.rs): on tmpfs always, on a disk with `sync = "flush"` ([`Spare::map_disk`]).
pub fn mappable(dir: &std::path::Path, spare: &Spare) -> bool {
    match fs_type(dir) {
        Some(TMPFS_MAGIC) => true,
        _ => {
            spare.map_disk.load(Relaxed)
                && !spare.direct_next.load(Relaxed)
                && !in_memory(dir)
                && super::mapped::populate_write_supported()
        }
    }
}

/// Map the spare just prepared for `v` under the staging name when its writer appends
/// through mappings ([`mappable`]; the mapping follows the file to its segment name); a file
/// that cannot be mapped (sparse: the filesystem was full; or a page that could not be made
/// writable) is appended with `pwrite`. True if mapped.
fn map_spare(v: &SpareOf) -> bool {
    let maps = &v.spare.maps;
    if !mappable(&v.dir, &v.spare) {
        return false;
    }
    let path = store::staged_path(&v.dir);
    match maps.map_path(&path, 0) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cdp: spare segment not mapped; appended with pwrite");
            false
        }
    }
}

/// Map `v`'s active segment `segno` part way, its pages made present from byte `from` on
/// ([`Journal::ask_map`]); the writer takes the mapping once `active_mapped` names it.
fn map_active(v: &SpareOf, segno: u64, from: u64) {
    let s = &v.spare;
    let path = store::seg_path(&v.dir, segno);
    match s.maps.map_path(&path, from) {
        // The writer moved on meanwhile: a full segment's mapping is not kept.
        Ok(m) if s.want.load(Ordering::Acquire) != segno + 1 => s.maps.forget(&m),
        Ok(_) => s.active_mapped.store(segno, Ordering::Release),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cdp: active segment not mapped part way; appended as before");
            s.active_failed.store(segno, Ordering::Release);
        }
    }
}

/// Prepare `v`'s next segment (the helper thread): its file under the staging name with no
/// lock held (the long part: allocation, zeroes, mapping, sync), then, under the spare's lock,
/// installed as the segment the writer wants now; a writer that created a segment itself
/// meanwhile wants the one after it, and gets this file.
fn prepare(v: &SpareOf, vols: &[SpareOf]) -> Result<(), store::CdpError> {
    let s = &v.spare;
    s.staging.store(true, Ordering::Release);
    let staged = store::stage_spare(&v.dir, v.size, s.zero.load(Relaxed));
    let mapped = staged.is_ok() && {
        unmap_all_retired(vols);
        map_spare(v)
    };
    let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
    s.staging.store(false, Ordering::Release);
    staged?;
    let want = s.want.load(Ordering::Acquire);
    if want == 0 || s.ready.load(Ordering::Acquire) == want {
        return Ok(()); // switched off meanwhile: the staged file waits for the next use
    }
    store::install_spare(&v.dir, want)?;
    if mapped {
        s.mapped_segno.store(want, Ordering::Release);
    }
    s.ready.store(want, Ordering::Release);
    Ok(())
}

/// Start the thread that prepares each volume's next segment off the reactors; it stops when
/// `stop` is set.
pub fn spare_thread(
    list: Arc<std::sync::Mutex<Vec<SpareOf>>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cdp-segments".into())
        .spawn(move || {
            // When each directory whose preparation failed is tried again (a full or failing
            // device may recover; until then the writer creates its own segments).
            let mut retry: std::collections::HashMap<PathBuf, Instant> = Default::default();
            while !stop.load(Ordering::SeqCst) {
                // The list changes at run time (CDP switched on or off): a copy per pass.
                let vols = list.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for v in &vols {
                    let s = &v.spare;
                    s.helper.get_or_init(std::thread::current);
                    // Full disk segments' mappings the writers gave up: unmapped here.
                    unmap_all_retired(&vols);
                    // The active segment its writer asks to have mapped part way, if the
                    // writer is still on it.
                    let ask = s.map_active.swap(0, Ordering::AcqRel);
                    if ask != 0 && s.want.load(Ordering::Acquire) == ask + 1 {
                        map_active(v, ask, s.map_from.load(Relaxed));
                    }
                    // A spare to prepare: first the mappings of deleted segment files go
                    // (mapped.rs), before the lock the writer try-locks at a switch.
                    let want = s.want.load(Ordering::Acquire);
                    if want != 0 && s.ready.load(Ordering::Acquire) != want {
                        s.maps.sweep(&v.dir);
                    }
                    let want = s.want.load(Ordering::Acquire);
                    if want == 0
                        || s.ready.load(Ordering::Acquire) == want
                        || retry.get(&v.dir).is_some_and(|&at| Instant::now() < at)
                    {
                        continue;
                    }
                    match prepare(v, &vols) {
                        Ok(()) => {
                            if retry.remove(&v.dir).is_some() {
                                tracing::info!(dir = %v.dir.display(),
                                    "cdp: the next segment is prepared ahead again");
                            }
                        }
                        Err(e) => {
                            if !retry.contains_key(&v.dir) {
                                tracing::warn!(dir = %v.dir.display(), error = %e,
                                    "cdp: cannot prepare the next segment; the writer creates its own until it can (tried again every second)");
                            }
                            retry.insert(v.dir.clone(), Instant::now() + SPARE_RETRY);
                        }
                    }
                }
                // Woken early by a writer that retires a mapping.
                std::thread::park_timeout(Duration::from_millis(20));
            }
        })
}

#[cfg(test)]
mod tests;
