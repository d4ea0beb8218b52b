//! The activity log: the leader's persisted, bounded set of hot extents, and the
//! reconciliation of a site that did not stop cleanly (docs/mirror-protocol.md, "Activity
//! log and reconciliation after a crash").
//!
//! Model: [`ActLog`] owns the set (extent index -> the persister generation that first holds
//! it, and a use clock for eviction), the unclean mark restored from disk, and the log's
//! persister handle. The engine asks it, before the leader sequences an update
//! ([`Engine::al_admit`], called from `leader_take` and the barrier's release), whether every
//! extent the update touches is in the set *and on disk*; an update that must wait goes into
//! the compare-and-write barrier's queue (so everything taken after it waits too, in order),
//! and [`Engine::poll_actlog`] (every reactor turn) hands the changed set to the persister
//! thread once per turn and releases the queue when the disk has it. Extents leave the set
//! only when it is full and a new one is needed ([`Engine::al_evict`]): the least recently
//! used ones with no update tracked on them.
//!
//! At a restart ([`Engine::restore_actlog`]), a site in sync whose log holds extents (or
//! that cannot tell; or, keeping no log now, whose state file says it did not stop cleanly)
//! is *unclean*: it announces replica state 5, its log's extents become
//! suspect regions, and [`decide_session`] turns its session into a reconciliation (a resync
//! whose source is the site that kept running, or the leader when both restarted).
//!
//! Invariants:
//! - Leader, mirroring: no update is sequenced (sent, applied, or read for a compare) before
//!   every extent it touches is in a durable version of the log; an extent on which an update
//!   is tracked (sequenced or applied, not yet settled), or whose addition is not durable yet,
//!   is never dropped. So the log on disk covers every update this site may have applied or
//!   sent and the follower not confirmed.
//! - The unclean mark is cleared only when the site mirrors again (after its reconciliation);
//!   until then the log file is left as it was, even at a clean stop.
//! - Writes to extents already in the set cost one hash lookup; nothing here waits on the
//!   reactor for a disk.

use super::*;
use crate::layer::mirror::alfile::{self, AlLoad, AlSnapshot};
use crate::layer::mirror::persist::PersistHandle;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The activity log's settings (`[mirror] activity_log*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActLogConfig {
    /// Track hot extents; false: the whole volume is one extent (a crash reconciles every
    /// region ever written).
    pub enabled: bool,
    /// Bytes per extent (a power of two, at least the dirty granularity).
    pub extent: u64,
    /// Most extents in the set.
    pub extents: u32,
}

impl Default for ActLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            extent: 4 << 20,
            extents: 1024,
        }
    }
}

/// A multiplicative hash for extent numbers (no allocation, a few cycles per lookup).
#[derive(Default)]
pub(super) struct ExtentHasher(u64);

impl Hasher for ExtentHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The persister generation that first holds this extent (0: on disk before this
    /// process's first write).
    generation: u64,
    /// Use clock of the last update admitted on it.
    last: u64,
    /// An update admitted on it may not be durable on this replica yet (no flush that
    /// started after it finished has completed).
    unflushed: bool,
    /// The local flush expected to make it durable (0: none yet).
    flush: u64,
}

/// The activity log (see the module doc).
pub(super) struct ActLog {
    /// This site keeps a log (a leader with a state file).
    pub(super) enabled: bool,
    /// log2 of the extent size.
    shift: u32,
    /// Most extents in the set.
    max: usize,
    set: HashMap<u64, Entry, BuildHasherDefault<ExtentHasher>>,
    /// The set changed since it was last handed to the persister.
    pub(super) changed: bool,
    handle: Option<Arc<PersistHandle>>,
    /// The generation on disk at the start (the file's generations continue from it).
    base: u64,
    clock: u64,
    slot_bytes: u64,
    /// An update waits in the barrier for the log.
    pub(super) blocked: bool,
    /// Restored in sync from a site that did not stop cleanly: replica state 5 until the
    /// site mirrors again.
    pub(super) unclean: bool,
    /// With `unclean`: the host restarted since the unclean stop (replica state 6).
    pub(super) host_restarted: bool,
    /// Sets written (handed to the persister) by this process.
    pub(super) writes: u64,
    /// A log file was found at the start (a follower clears one it no longer keeps).
    loaded: bool,
    /// Updates to apply alone once the survivor state is on disk ([`Engine::survivor_enqueue`]).
    after_durable: Vec<usize>,
    /// Scratch: the extents tracked updates touch ([`Engine::al_fill_used`]).
    used: std::collections::HashSet<u64, BuildHasherDefault<ExtentHasher>>,
    /// Local flushes under way: (op key, flush number, use clock at its start).
    flushes: Vec<(usize, u64, u64)>,
    /// Flushes started (numbers them).
    flush_count: u64,
    /// The set is full of extents that only a local flush would let go: start one.
    pub(super) flush_wanted: bool,
}

impl ActLog {
    /// The log of a site with this configuration (`leader`: only the leader keeps one).
    pub(super) fn new(cfg: &EngineConfig) -> Self {
        let enabled = cfg.role == Role::Leader && cfg.state_file.is_some();
        let (extent, max) = if cfg.actlog.enabled {
            (
                cfg.actlog.extent.max(4096).next_power_of_two(),
                cfg.actlog.extents.max(1),
            )
        } else {
            // One extent over the whole volume: written once, never dropped.
            (cfg.size.max(4096).next_power_of_two(), 1)
        };
        Self {
            enabled,
            shift: extent.trailing_zeros(),
            max: max as usize,
            set: HashMap::with_capacity_and_hasher(max as usize + 1, Default::default()),
            changed: false,
            handle: None,
            base: 0,
            clock: 0,
            slot_bytes: alfile::slot_bytes(max),
            blocked: false,
            unclean: false,
            host_restarted: false,
            writes: 0,
            loaded: false,
            after_durable: Vec::new(),
            used: Default::default(),
            flushes: Vec::new(),
            flush_count: 0,
            flush_wanted: false,
        }
    }

    /// Updates wait to be applied alone until the survivor state is on disk (a resync must
    /// not finish meanwhile).
    pub(super) fn waiting_alone(&self) -> bool {
        !self.after_durable.is_empty()
    }

    /// Update `k` no longer waits for the survivor state (its initiator's timeout passed);
    /// false when it did not wait. Its slot must not be found here once it is freed: a later
    /// update in the same slot would be applied from this list too.
    pub(super) fn unwait_alone(&mut self, k: usize) -> bool {
        match self.after_durable.iter().position(|&x| x == k) {
            Some(i) => {
                self.after_durable.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Bytes per extent.
    pub(super) fn extent(&self) -> u64 {
        1 << self.shift
    }

    /// Extents in the set.
    pub(super) fn len(&self) -> usize {
        self.set.len()
    }

    /// The extents of `(offset, len)`.
    fn extents_of(&self, offset: u64, len: u64) -> std::ops::RangeInclusive<u64> {
        (offset >> self.shift)..=((offset + len.max(1) - 1) >> self.shift)
    }

    fn persisted(&self) -> u64 {
        self.handle.as_ref().map_or(0, |h| h.persisted())
    }

    /// The generation the next set handed to the persister gets.
    fn next_generation(&self) -> u64 {
        self.handle.as_ref().map_or(1, |h| h.submitted() + 1)
    }
}

/// The path of the activity log next to the state file `state`.
pub fn actlog_path(state: &std::path::Path) -> std::path::PathBuf {
    state.with_extension("mirror-al")
}

/// The session of a site in replica state `me` whose peer is in state `peer`, with state 5
/// (in sync, stopped uncleanly) or 6 (the same, and its host restarted since: its device may
/// have dropped writes it had not flushed); `leader`: this site leads the volume (the source
/// when both restarted alike). Pairs without states 5 and 6 are [`decide`]'s.
pub fn decide_session(me: u32, peer: u32, leader: bool) -> Session {
    match (me, peer) {
        (5, 5) | (6, 6) if leader => Session::Reconcile,
        (5, 5) | (6, 6) => Session::Receive,
        // Only the peer's host restarted: this disk kept what it acknowledged.
        (5, 6) => Session::Reconcile,
        (6, 5) => Session::Receive,
        // The peer kept running (or restarted cleanly), or is the survivor: its copy wins.
        (5 | 6, 0 | 1) => Session::Receive,
        (0, 5 | 6) => Session::Reconcile,
        // The peer fenced (denied, so nobody acknowledged alone): this copy wins, unless this
        // host restarted (its disk may have dropped acknowledged writes the fenced peer
        // holds; a fenced peer whose own device failed then loses its failed regions: two
        // failures).
        (5, 2) => Session::Reconcile,
        (2, 5) => Session::Receive,
        (6, 2) => Session::Receive,
        (2, 6) => Session::Reconcile,
        // As a site in sync would with a peer resyncing or new.
        (5 | 6, 3 | 4) => Session::SendAll,
        (3 | 4, 5 | 6) => Session::Receive,
        (1, 5 | 6) => decide(1, 0, leader),
        (5 | 6, _) | (_, 5 | 6) => Session::Refuse,
        _ => decide(me, peer, leader),
    }
}

impl Engine {
    /// Leader, mirroring: whether update `k` may be sequenced now (every extent it touches in
    /// a durable version of the log). Adds the extents it lacks (they are written with this
    /// turn's set); false: it must wait (in the barrier).
    pub(super) fn al_admit(&mut self, k: usize) -> bool {
        if !self.al.enabled || self.mode != Mode::Mirroring {
            return true;
        }
        let op = &self.ops[k];
        if matches!(op.upd, Upd::Flush | Upd::ResyncRead) {
            return true;
        }
        let range = self.al.extents_of(op.offset, op.len);
        let persisted = self.al.persisted();
        self.al.clock += 1;
        let clock = self.al.clock;
        let (mut ready, mut missing) = (true, 0usize);
        for e in range.clone() {
            match self.al.set.get_mut(&e) {
                Some(en) => {
                    en.last = clock;
                    en.unflushed = true;
                    ready &= en.generation <= persisted;
                }
                None => missing += 1,
            }
        }
        if missing == 0 {
            return ready;
        }
        if self.al.set.len() + missing > self.al.max {
            self.al_evict(missing, &range);
            let others = self.al.set.keys().any(|e| !range.contains(e));
            if self.al.set.len() + missing > self.al.max && others {
                // Full of extents in use: wait until updates on them settle.
                return false;
            }
        }
        let generation = self.al.next_generation();
        for e in range {
            let en = self.al.set.entry(e).or_insert(Entry {
                generation,
                last: clock,
                unflushed: true,
                flush: 0,
            });
            en.last = clock;
            en.unflushed = true;
        }
        self.al.changed = true;
        false
    }

    /// Fill `al.used` with the extents some tracked update touches (sequenced, or applied or
    /// being applied here, and not settled). (Its memory is kept: no allocation per flush.)
    fn al_fill_used(&mut self) {
        self.al.used.clear();
        for (_, op) in self.ops.iter() {
            let tracked = op.applied || op.applying > 0 || op.seq != 0;
            if tracked && !matches!(op.upd, Upd::Flush | Upd::ResyncRead) {
                let range = self.al.extents_of(op.offset, op.len);
                self.al.used.extend(range);
            }
        }
    }

    /// The set is full: drop the least recently used extents that no tracked update touches,
    /// that are on disk and whose updates a local flush made durable, at least `need` of them
    /// and up to an eighth of the set, never those of `own` (the update being admitted). When
    /// too few qualify and some lack only the flush, one is asked for
    /// ([`ActLog::flush_wanted`]).
    fn al_evict(&mut self, need: usize, own: &std::ops::RangeInclusive<u64>) {
        self.al_fill_used();
        let persisted = self.al.persisted();
        let mut unflushed = 0;
        let mut idle: Vec<(u64, u64)> = Vec::new();
        for (&e, en) in &self.al.set {
            if self.al.used.contains(&e) || own.contains(&e) || en.generation > persisted {
                continue;
            }
            if en.unflushed {
                unflushed += 1;
            } else {
                idle.push((en.last, e));
            }
        }
        idle.sort_unstable();
        let over = (self.al.set.len() + need).saturating_sub(self.al.max);
        let n = over.max(self.al.max / 8).min(idle.len());
        for &(_, e) in &idle[..n] {
            self.al.set.remove(&e);
        }
        if n > 0 {
            self.al.changed = true;
        }
        if n < over && unflushed > 0 {
            self.al.flush_wanted = true;
        }
    }

    /// A local flush (op `k`) starts: it will make durable every extent in the set whose
    /// updates are all finished now (those no tracked update touches).
    pub(super) fn al_flush_started(&mut self, k: usize) {
        if !self.al.enabled || self.mode != Mode::Mirroring {
            return;
        }
        self.al_fill_used();
        self.al.flush_count += 1;
        let n = self.al.flush_count;
        for (e, en) in self.al.set.iter_mut() {
            if en.unflushed && !self.al.used.contains(e) {
                en.flush = n;
            }
        }
        self.al.flushes.push((k, n, self.al.clock));
    }

    /// Local flush `k` finished (`ok`): the extents it covered, with no update admitted on
    /// them since it started, are durable here.
    pub(super) fn al_flush_done(&mut self, k: usize, ok: bool) {
        let Some(i) = self.al.flushes.iter().position(|f| f.0 == k) else {
            return;
        };
        let (_, n, clock) = self.al.flushes.swap_remove(i);
        if !ok {
            return;
        }
        for en in self.al.set.values_mut() {
            if en.flush == n && en.last <= clock {
                en.unflushed = false;
            }
        }
    }

    /// The set is full of extents that only a flush lets go: flush the replica (once at a
    /// time).
    fn al_own_flush(&mut self, io: &mut IoCx) {
        if !self.al.flush_wanted || !self.al.flushes.is_empty() {
            return;
        }
        self.al.flush_wanted = false;
        let k = self.own_flush_op(Origin::Own, Stage::Confirmed);
        self.enqueue_apply(io, k, 0, 0);
    }

    /// Apply update `k` alone (survivor, or reconciliation source), once the survivor state
    /// is on disk: a site that crashed before it would restart in sync (state 0 or 5), and
    /// neither its activity log (not used while serving alone) nor its suspect regions would
    /// cover an update applied alone. Its answer waited for that state anyway (durable.rs).
    pub(super) fn survivor_enqueue(&mut self, io: &mut IoCx, k: usize) {
        if self.durable.waiting() {
            self.al.after_durable.push(k);
        } else {
            self.enqueue_apply(io, k, 0, 0);
        }
    }

    /// Every reactor turn: hand a changed set to the persister, and let the updates that
    /// waited for it (or for the survivor state) go once it is on disk. (Inline: without a
    /// log and with nothing waiting, two loads.)
    #[inline]
    pub fn poll_actlog(&mut self, io: &mut IoCx) {
        if self.al.enabled || !self.al.after_durable.is_empty() {
            self.poll_actlog_now(io);
        }
    }

    fn poll_actlog_now(&mut self, io: &mut IoCx) {
        if !self.al.after_durable.is_empty() && !self.durable.waiting() {
            for k in std::mem::take(&mut self.al.after_durable) {
                // Still waiting (not failed, expired or fenced meanwhile).
                let waits = self.ops.get(k).is_some_and(|op| {
                    op.initiator.is_some()
                        && op.applying == 0
                        && !op.applied
                        && op.apply_err.is_none()
                });
                if !waits {
                    continue;
                }
                if self.mode != Mode::Survivor {
                    // (Not reached: a resync does not finish while updates wait here, and a
                    // fence fails them.) Never applied anywhere: fail it.
                    let (from, tag) = self.ops[k].initiator.take().expect("checked");
                    self.done.push((from, tag, Err(Errno::IO)));
                    self.settle(k);
                    continue;
                }
                // A resync copy of its region may have been read before it is applied: dirty
                // again, so a later copy (through the apply queue, after it) carries it.
                let (o, l, upd) = (self.ops[k].offset, self.ops[k].len, self.ops[k].upd);
                if upd != Upd::Flush {
                    self.mark_dirty(o, l);
                }
                self.enqueue_apply(io, k, 0, 0);
            }
        }
        if !self.al.enabled {
            return;
        }
        if let Some(h) = &self.al.handle
            && h.failed() != 0
            && !self.durable.failed
        {
            // Updates wait for a log that cannot be written: stop, as for the state file.
            let why = format!("the activity log cannot be written: {}", h.error());
            return self.fail_stop(&why);
        }
        if self.al.changed && self.mode == Mode::Mirroring && !self.durable.failed {
            self.al.changed = false;
            self.al_submit(false, None);
        }
        if self.al.flush_wanted && self.mode == Mode::Mirroring {
            self.al_own_flush(io);
        }
        if self.al.blocked {
            if self.mode == Mode::Mirroring {
                self.release_barrier(io);
            } else {
                self.al.blocked = false;
            }
        }
    }

    /// Hand the set (or `extents` instead) to the persister; its generation (0: none).
    fn al_submit(&mut self, clean: bool, extents: Option<Vec<u64>>) -> u64 {
        if self.al.handle.is_none() {
            let (Some(state), Some(p)) = (self.cfg.state_file.clone(), self.persister()) else {
                return 0;
            };
            let name = format!("{} (activity log)", self.cfg.name);
            self.al.handle = Some(p.register(&name, actlog_path(&state)));
        }
        let h = Arc::clone(self.al.handle.as_ref().expect("registered"));
        let mut extents = extents.unwrap_or_else(|| self.al.set.keys().copied().collect());
        extents.sort_unstable();
        let snap = AlSnapshot {
            generation: self.al.base + h.submitted() + 1,
            clean,
            extent: self.al.extent(),
            size: self.cfg.size,
            extents,
            slot_bytes: self.al.slot_bytes,
        };
        self.al.writes += 1;
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.actlog_writes.store(self.al.writes, Relaxed);
        self.stats
            .actlog_extents
            .store(snap.extents.len() as u64, Relaxed);
        h.submit(snap)
    }

    /// The activity log has work for the poller's next turn: a set to hand to the persister,
    /// a flush to start, updates waiting for the log or for the survivor state.
    pub(super) fn actlog_pending(&self) -> bool {
        self.al.changed
            || self.al.flush_wanted
            || self.al.blocked
            || !self.al.after_durable.is_empty()
    }

    /// When the poller must look again (an update waits for the log's write).
    pub fn actlog_deadline(&self, now: Instant) -> Option<Instant> {
        self.al.blocked.then(|| now + Duration::from_micros(200))
    }

    /// The site mirrors (again): its reconciliation is done, and the log file must exist
    /// (with the current set) so that a crash from now on is told apart from a clean stop.
    pub(super) fn al_mirroring(&mut self) {
        self.al.unclean = false;
        self.al.host_restarted = false;
        if self.al.enabled && self.al.handle.is_none() {
            self.al.changed = true;
        } else if !self.al.enabled && std::mem::take(&mut self.al.loaded) {
            // A log this site no longer keeps (it led the volume before): reconciled, so
            // emptied, lest every later start counts as unclean.
            self.al_submit(true, Some(Vec::new()));
        }
    }

    /// Whether this site's mode lets it announce state 5 or 6 when unclean: in sync, waiting
    /// for its first session; or fenced with its host restarted since (restore.rs: its device
    /// may have dropped writes its peer kept, so it receives, state 6).
    pub(super) fn al_state_mode(&self) -> bool {
        self.mode == Mode::Waiting || (self.mode == Mode::Fenced && self.al.host_restarted)
    }

    /// [`decide_session`] for this site in state `me`, the peer in `peer`: a fenced site whose
    /// host restarted (state 6) never sends to a new replica (as state 2: the fenced copy may
    /// lack what a survivor, since lost, acknowledged alone), which state 6 of a site stopped
    /// in sync would.
    pub(super) fn al_decide_session(&self, me: u32, peer: u32) -> Result<Session, String> {
        if me == 6 && self.mode == Mode::Fenced && peer == 4 {
            return Err(
                "this site is fenced (its host restarted since) and the peer is a new \
                 replica: neither holds every acknowledged write for sure; refusing"
                    .into(),
            );
        }
        Ok(decide_session(me, peer, self.role == Role::Leader))
    }

    /// A clean stop: write the extents of the updates still tracked (normally none: an empty
    /// set, marked clean) and wait until it is on disk. An unclean site (not reconciled yet)
    /// leaves its log as it was.
    pub(super) fn actlog_clean_stop(&mut self) {
        if !self.al.enabled || self.al.unclean || self.al.handle.is_none() || self.durable.failed {
            return;
        }
        let mut left: Vec<u64> = Vec::new();
        if self.mode == Mode::Mirroring {
            for (_, op) in self.ops.iter() {
                if !matches!(op.upd, Upd::Flush | Upd::ResyncRead) {
                    left.extend(self.al.extents_of(op.offset, op.len));
                }
            }
            left.sort_unstable();
            left.dedup();
            if left.len() > (self.al.slot_bytes as usize - 44) / 8 {
                // More than a slot holds: the log on disk already covers them (every update
                // sequenced was logged first), so it stays.
                return;
            }
        }
        let g = self.al_submit(left.is_empty(), Some(left));
        let h = self.al.handle.as_ref().expect("submitted");
        if g != 0 && !h.wait(g, Duration::from_secs(60)) {
            tracing::error!(volume = %self.cfg.name, error = %h.error(),
                "mirror: the activity log could not be written at the stop; the next start \
                 reconciles the extents it held");
        }
    }

    /// At the restore of a site in sync (its state file written at a clean stop: `clean`;
    /// `led`: it led the volume): read the log; whether the site stopped uncleanly, and the
    /// regions its log covers (`None`: unknown, every region ever written is suspect).
    pub(super) fn restore_actlog(&mut self, clean: bool, led: bool) -> (bool, Option<RegionMap>) {
        let (size, g) = (self.cfg.size, self.cfg.dirty_granularity);
        let Some(state) = &self.cfg.state_file else {
            return (false, Some(RegionMap::new(size, g)));
        };
        let path = actlog_path(state);
        let found = alfile::load(&path);
        self.al.loaded = found != AlLoad::Missing;
        match found {
            AlLoad::Valid(s) if s.size == size => {
                self.al.base = s.generation;
                let mut m = RegionMap::new(size, g);
                for e in &s.extents {
                    let off = e * s.extent;
                    m.set_range(off, s.extent.min(size - off));
                }
                // A site that keeps no log now (it follows) left this file from when it led:
                // emptied once reconciled (`al_mirroring`), it says nothing of what the site
                // applied since, so the state file's flag says whether it stopped cleanly, as
                // without a file. (Before, a follower so emptied that lost its power announced
                // state 0, and mirrored without the acknowledged writes its device dropped.)
                (
                    !s.extents.is_empty() || (!clean && !self.al.enabled),
                    Some(m),
                )
            }
            AlLoad::Valid(s) => {
                tracing::warn!(volume = %self.cfg.name, path = %path.display(), size = s.size,
                    "mirror: the activity log is for another volume size; every region ever \
                     written will be reconciled");
                self.al.base = s.generation;
                (true, None)
            }
            AlLoad::Invalid(why) => {
                tracing::warn!(volume = %self.cfg.name, why,
                    "mirror: the activity log cannot be read; every region ever written will be \
                     reconciled");
                (true, None)
            }
            // No log (none written yet, or a version without one): the state file's flag
            // says whether the site stopped cleanly; a leader's updates are then unknown.
            AlLoad::Missing => {
                let unknown = !clean && led;
                (!clean, (!unknown).then(|| RegionMap::new(size, g)))
            }
        }
    }

    /// Extents in the activity log (tests, status).
    pub fn actlog_len(&self) -> usize {
        self.al.len()
    }

    /// Wait until every set handed to the persister is on disk (tests).
    #[cfg(test)]
    pub(super) fn wait_actlog_persisted(&self) -> bool {
        self.al
            .handle
            .as_ref()
            .is_none_or(|h| h.wait(h.submitted(), Duration::from_secs(10)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Session::*;

    /// Every pair with state 5 or 6 (rows: this site 0..=7, columns: the peer), for the
    /// leader and the follower; both sides always agree (one source, or both mirroring).
    #[test]
    fn the_session_after_an_unclean_stop_has_one_source() {
        for me in 0..8 {
            for peer in 0..8 {
                for leader in [true, false] {
                    let (a, b) = (
                        decide_session(me, peer, leader),
                        decide_session(peer, me, !leader),
                    );
                    let source = matches!(a, SendAll | Resync { .. } | Reconcile);
                    assert_eq!(source, b == Receive, "{me} {peer} {leader}: {a:?} / {b:?}");
                    assert_eq!(a == InSync, b == InSync, "{me} {peer}");
                    assert_eq!(a == SplitBrain, b == SplitBrain, "{me} {peer}");
                    if ![5, 6].contains(&me) && ![5, 6].contains(&peer) {
                        assert_eq!(a, decide(me, peer, leader));
                    }
                }
            }
        }
        assert_eq!(decide_session(5, 0, true), Receive);
        assert_eq!(decide_session(0, 5, false), Reconcile);
        assert_eq!(decide_session(5, 5, true), Reconcile);
        assert_eq!(decide_session(5, 5, false), Receive);
        assert_eq!(
            decide_session(1, 5, false),
            Resync {
                everything_written: false
            }
        );
        assert_eq!(decide_session(5, 4, true), SendAll);
        assert_eq!(decide_session(5, 2, true), Reconcile);
        assert_eq!(decide_session(2, 5, true), Receive);
        assert_eq!(decide_session(5, 7, true), Refuse);
        // A host restart: the other site's copy wins wherever it kept running, fenced or
        // restarted its process only.
        for (me, peer) in [(6, 0), (6, 1), (6, 2), (6, 5)] {
            for leader in [true, false] {
                assert_eq!(decide_session(me, peer, leader), Receive, "{me} {peer}");
            }
        }
        assert_eq!(decide_session(6, 6, true), Reconcile);
        assert_eq!(decide_session(6, 6, false), Receive);
        assert_eq!(decide_session(6, 3, false), SendAll);
        assert_ne!(
            decide_session(5, 0, true),
            InSync,
            "a crash is never ignored"
        );
    }
}
