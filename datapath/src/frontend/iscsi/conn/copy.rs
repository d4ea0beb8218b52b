//! EXTENDED COPY execution and RECEIVE COPY RESULTS (the parser and pages: `iscsi::xcopy`).
//!
//! Model: a checked parameter list becomes a [`Run`] in its task: the extents to copy (every
//! segment resolved and range-checked before the first byte moves, so a refused copy changes
//! nothing) and a cursor. The run moves one chunk of at most `xcopy::CHUNK_BYTES` at a time,
//! read from the source volume's channel into the run's one buffer and written from it to the
//! destination's, the calls READ and WRITE use (a mirrored destination's write goes through its
//! mirror to both sites, like any write). One operation of a run is in flight at a time:
//!
//! ```text
//!  Idle ──read──> Reading ──data──> Read ──write──> Writing ──done──> Idle (next chunk)
//!    └── last extent done, an error, an abort: the task is answered (or, aborted, not) ──┘
//! ```
//! - Idle / Read: nothing in flight; the run is stepped by [`IscsiConn::copy_step`] (from
//!   `execute`, and from `flush` for the runs whose operation completed).
//! - Reading / Writing: one device operation in flight (`parts` is 1); its completion comes to
//!   `device_done` (no runtime access there), which records it and queues the run in
//!   `copy_ready` for the next `flush`.
//!
//! Each operation enters its volume's atomic section (`excl.rs`) for itself and leaves it when
//! it completes, so a COMPARE AND WRITE waits for at most one chunk of a copy, and a chunk met
//! by a pending COMPARE AND WRITE is diverted to the volume's home behind it.
//!
//! Invariants:
//! - At most one device operation per run is in flight; the run's buffer is not touched while
//!   it is (a channel that finishes a write later has taken its own copy: `Channel::write`).
//! - Synchronous devices (RAM) complete a chunk inside the call: a run moves at most
//!   [`CHUNKS_PER_TURN`] chunks per reactor turn, then asks for another turn with a note to
//!   itself, so one copy never holds the reactor for long.
//! - An aborted run stops at its next step (after the operation in flight) and is never
//!   answered; a run counts in `IscsiShared::copies` until its task is dropped.

use super::{IscsiConn, Stage};
use crate::bdev::{ReadStart, Start};
use crate::frontend::iscsi::IscsiShared;
use crate::frontend::iscsi::scsi::{Sense, sense_of};
use crate::frontend::iscsi::xcopy::{self, Extent, Held, ListUsage, Unit};
use crate::frontend::nvmf::Note as NvNote;
use crate::frontend::nvmf::atomic::{OpKind, OpReq, Origin};
use crate::runtime::{Env, Msg, NoteTo};
use crate::uring::{Errno, IoTag};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Chunks a run moves in one reactor turn when its devices complete at once.
pub(super) const CHUNKS_PER_TURN: usize = 8;

/// A note a connection sends itself for another turn (a run yielded the reactor).
pub(super) struct Kick;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Idle,
    Reading,
    Read,
    Writing,
}

/// One place in the daemon's count of running copies, given back when dropped.
struct CopySlot(Arc<IscsiShared>);

impl Drop for CopySlot {
    fn drop(&mut self) {
        self.0.copies.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running EXTENDED COPY.
pub(super) struct Run {
    list_id: u8,
    usage: ListUsage,
    extents: Vec<Extent>,
    /// The extent being copied (= segments processed).
    seg: usize,
    /// Bytes of it copied.
    done: u64,
    /// Bytes written to destinations so far.
    bytes: u64,
    step: Step,
    /// Bytes of the chunk in flight.
    want: u64,
    /// The chunk's data between its read and its write.
    chunk: Vec<u8>,
    /// The volume whose section the operation in flight counts in.
    entered: Option<usize>,
    _slot: CopySlot,
}

impl Run {
    /// Offset in the current extent of the chunk in flight (`want` bytes, after `done`
    /// copied): from the end of a backward extent.
    fn at(&self) -> u64 {
        let e = &self.extents[self.seg];
        if e.backward {
            e.len - self.done - self.want
        } else {
            self.done
        }
    }
}

impl IscsiConn {
    /// EXTENDED COPY: parse, resolve and check the parameter list, then start the copy.
    pub(super) fn extended_copy(&mut self, env: &mut Env<'_>, slot: u32) {
        let buf = std::mem::take(&mut self.tasks[slot as usize].buf);
        let parsed = xcopy::parse(&buf);
        self.tasks[slot as usize].buf = buf;
        let list = match parsed {
            Err(s) => return self.complete(slot, Err(s)),
            Ok(None) => return self.complete(slot, Ok(())),
            Ok(Some(l)) => l,
        };
        let held = list.usage != ListUsage::NoList;
        let mut n = 0;
        let mut in_use = false;
        for (_, t) in &self.tasks {
            if let Some(r) = &t.copy {
                n += 1;
                in_use |= held && r.usage != ListUsage::NoList && r.list_id == list.list_id;
            }
        }
        if in_use {
            return self.complete(slot, Err(xcopy::sense::OPERATION_IN_PROGRESS));
        }
        if n >= xcopy::MAX_CONCURRENT {
            return self.complete(slot, Err(xcopy::sense::INSUFFICIENT_RESOURCES));
        }
        let sh = Arc::clone(&self.sh);
        let t = &std::sync::Arc::clone(&self.target);
        let unit = |naa: &[u8; 8]| -> Option<Unit> {
            let lun_idx = t.luns.iter().position(|l| &l.naa == naa)?;
            let vol = t.luns[lun_idx].volume;
            let info = &env.vols[vol]
                .as_deref()
                .expect("a session\'s volumes are served while it is registered")
                .info;
            let block = info.block_size.max(1);
            Some(Unit {
                lun_idx,
                vol,
                blocks: info.size / u64::from(block),
                block,
            })
        };
        let extents = match xcopy::resolve(&list, unit) {
            Ok(e) => e,
            Err((seg, s)) => {
                if list.usage == ListUsage::Hold {
                    self.hold(Held {
                        list_id: list.list_id,
                        status: xcopy::status::ERROR,
                        segments: seg as u16,
                        bytes: 0,
                        sense: Some(s),
                    });
                }
                return self.complete(slot, Err(s));
            }
        };
        // The copy reads its sources and writes its destinations for this I_T nexus: the
        // reservations and path states of every logical unit it touches apply.
        for e in &extents {
            for (u, write) in [(e.src, false), (e.dst, true)] {
                if self.reserve_view(u.lun_idx) == crate::frontend::iscsi::spc2::View::Other
                    || !self.pr_allows(u.lun_idx, write)
                {
                    return self.conflict(slot);
                }
                match self.host_path(
                    env.vols[u.vol]
                        .as_deref()
                        .expect("a session\'s volumes are served while it is registered"),
                ) {
                    crate::bdev::volume::PathState::Inaccessible => {
                        return self.complete(slot, Err(Sense::ALUA_UNAVAILABLE));
                    }
                    crate::bdev::volume::PathState::Transitioning => {
                        return self.complete(slot, Err(Sense::ALUA_TRANSITION));
                    }
                    _ => {}
                }
            }
        }
        if sh.copies.fetch_add(1, Ordering::AcqRel) >= xcopy::TOTAL_CONCURRENT {
            sh.copies.fetch_sub(1, Ordering::AcqRel);
            return self.complete(slot, Err(xcopy::sense::INSUFFICIENT_RESOURCES));
        }
        let chunk = self.get_buf(0);
        let t = &mut self.tasks[slot as usize];
        t.stage = Stage::Device;
        t.copy = Some(Box::new(Run {
            list_id: list.list_id,
            usage: list.usage,
            extents,
            seg: 0,
            done: 0,
            bytes: 0,
            step: Step::Idle,
            want: 0,
            chunk,
            entered: None,
            _slot: CopySlot(Arc::clone(&self.sh)),
        }));
        self.copy_step(env, slot);
    }

    /// Move run `slot` on: start its next operation, or answer it.
    pub(super) fn copy_step(&mut self, env: &mut Env<'_>, slot: u32) {
        for _ in 0..CHUNKS_PER_TURN {
            let closing = self.life.closing;
            let Some(t) = self.tasks.get_mut(slot as usize) else {
                return;
            };
            let Some(run) = t.copy.as_mut() else {
                return;
            };
            if t.parts > 0 || matches!(run.step, Step::Reading | Step::Writing) {
                return;
            }
            if t.aborted || closing {
                // Not answered when aborted; a closing connection answers nobody.
                return self.copy_finish(slot, Err(Sense::INTERNAL));
            }
            if let Err(s) = t.result {
                return self.copy_finish(slot, Err(s));
            }
            if run.step == Step::Read {
                self.copy_write(env, slot);
                continue;
            }
            while run.seg < run.extents.len() && run.done == run.extents[run.seg].len {
                run.seg += 1;
                run.done = 0;
            }
            if run.seg == run.extents.len() {
                return self.copy_finish(slot, Ok(()));
            }
            self.copy_read(env, slot);
        }
        if !self
            .tasks
            .get(slot as usize)
            .is_some_and(|t| t.copy.is_some() && t.parts == 0)
        {
            return;
        }
        // Devices that complete at once: another turn for the rest.
        self.copy_ready.push(slot);
        if let Some(m) = env.shared.mailboxes.get(env.io.reactor) {
            m.send(Msg::Note {
                to: NoteTo::Conn(env.key),
                note: Box::new(Kick),
            });
        }
    }

    /// Enter `vol`'s atomic section for one operation of run `slot` (false: divert it).
    fn copy_enter(&mut self, env: &Env<'_>, slot: u32, vol: usize) -> bool {
        let Some(sec) = self.sh.nvmf.sections(env.shared).and_then(|s| s.get(vol)) else {
            return true;
        };
        if !sec.enter(env.io.reactor) {
            return false;
        }
        if let Some(r) = self
            .tasks
            .get_mut(slot as usize)
            .and_then(|t| t.copy.as_mut())
        {
            r.entered = Some(vol);
        }
        true
    }

    /// The operation in flight of a run left its section (when it entered one).
    fn copy_leave(&mut self, slot: u32) {
        if let Some(v) = self
            .tasks
            .get_mut(slot as usize)
            .and_then(|t| t.copy.as_mut())
            .and_then(|r| r.entered.take())
        {
            self.leaves.push(v);
        }
    }

    /// Hand one operation of run `slot` to `vol`'s home (a COMPARE AND WRITE is pending).
    fn copy_divert(&mut self, env: &Env<'_>, slot: u32, vol: usize, op: OpKind, r: (u64, u64)) {
        let Some(sections) = self.sh.nvmf.sections(env.shared) else {
            return;
        };
        let Some(t) = self.tasks.get_mut(slot as usize) else {
            return;
        };
        let Some(run) = t.copy.as_mut() else {
            return;
        };
        let data = if op == OpKind::Write {
            std::mem::take(&mut run.chunk)
        } else {
            Vec::new()
        };
        run.step = if op == OpKind::Write {
            Step::Writing
        } else {
            Step::Reading
        };
        t.parts = 1;
        let from = Origin {
            reactor: env.io.reactor,
            key: env.key,
            slot,
        };
        sections.to_home(
            vol,
            NvNote::Op(Box::new(OpReq {
                vol,
                from,
                kind: op,
                ranges: vec![r],
                data,
                fua: false,
            })),
        );
    }

    fn copy_read(&mut self, env: &mut Env<'_>, slot: u32) {
        let Some(run) = self.tasks[slot as usize].copy.as_mut() else {
            return;
        };
        let e = run.extents[run.seg];
        let n = xcopy::CHUNK_BYTES.min(e.len - run.done);
        run.want = n;
        let off = e.src_off + run.at();
        let vol = e.src.vol;
        env.counters.ios += 1;
        env.counters.read_bytes += n;
        env.vol_counters[vol].ops += 1;
        env.vol_counters[vol].read_bytes += n;
        if !self.copy_enter(env, slot, vol) {
            return self.copy_divert(env, slot, vol, OpKind::Read, (off, n));
        }
        let tag = IoTag {
            conn: env.key,
            slot,
        };
        let started = env.chans[vol].read(env.io, tag, off, n as u32);
        let t = &mut self.tasks[slot as usize];
        let Some(run) = t.copy.as_mut() else {
            return;
        };
        match started {
            ReadStart::Ready(d) => {
                run.chunk.clear();
                run.chunk.extend_from_slice(d);
                run.step = Step::Read;
                if d.len() as u64 != n {
                    t.result = Err(Sense::READ_ERROR);
                }
                self.copy_leave(slot);
            }
            ReadStart::Failed(e) => {
                t.result = Err(sense_of(e, false));
                self.copy_leave(slot);
            }
            ReadStart::Pending => {
                run.step = Step::Reading;
                t.parts = 1;
            }
        }
    }

    fn copy_write(&mut self, env: &mut Env<'_>, slot: u32) {
        let Some(run) = self.tasks[slot as usize].copy.as_mut() else {
            return;
        };
        let e = run.extents[run.seg];
        let off = e.dst_off + run.at();
        let n = run.want;
        let vol = e.dst.vol;
        env.counters.ios += 1;
        env.counters.write_bytes += n;
        env.vol_counters[vol].ops += 1;
        env.vol_counters[vol].write_bytes += n;
        if !self.copy_enter(env, slot, vol) {
            return self.copy_divert(env, slot, vol, OpKind::Write, (off, n));
        }
        let tag = IoTag {
            conn: env.key,
            slot,
        };
        let t = &mut self.tasks[slot as usize];
        let Some(run) = t.copy.as_mut() else {
            return;
        };
        match env.chans[vol].write(env.io, tag, off, &run.chunk, false) {
            Start::Done(Ok(())) => {
                run.done += n;
                run.bytes += n;
                run.step = Step::Idle;
                self.copy_leave(slot);
            }
            Start::Done(Err(e)) => {
                t.result = Err(sense_of(e, true));
                self.copy_leave(slot);
            }
            Start::Pending => {
                run.step = Step::Writing;
                t.parts = 1;
            }
        }
    }

    /// The device operation of run `slot` finished (`data`: what a read produced).
    pub(super) fn copy_io_done(&mut self, slot: u32, result: Result<(), Errno>, data: &[u8]) {
        self.copy_leave(slot);
        let Some(t) = self.tasks.get_mut(slot as usize) else {
            return;
        };
        t.parts = t.parts.saturating_sub(1);
        let Some(run) = t.copy.as_mut() else {
            return;
        };
        match (run.step, result) {
            (Step::Reading, Ok(())) if data.len() as u64 == run.want => {
                run.chunk.clear();
                run.chunk.extend_from_slice(data);
                run.step = Step::Read;
            }
            (Step::Reading, Ok(())) => t.result = Err(Sense::READ_ERROR),
            (Step::Writing, Ok(())) => {
                run.done += run.want;
                run.bytes += run.want;
                run.step = Step::Idle;
            }
            (s, Err(e)) => t.result = Err(sense_of(e, s == Step::Writing)),
            _ => {}
        }
        self.copy_ready.push(slot);
    }

    /// A diverted operation of run `slot` came back from the volume's home (read data in
    /// `data`, taken as the chunk: no copy).
    pub(super) fn copy_home_done(&mut self, slot: u32, r: Result<(), Sense>, data: Vec<u8>) {
        let Some(t) = self.tasks.get_mut(slot as usize) else {
            return;
        };
        t.parts = 0;
        let Some(run) = t.copy.as_mut() else {
            return;
        };
        match (run.step, r) {
            (_, Err(s)) => t.result = Err(s),
            (Step::Reading, Ok(())) if data.len() as u64 == run.want => {
                run.chunk = data;
                run.step = Step::Read;
            }
            (Step::Reading, Ok(())) => t.result = Err(Sense::READ_ERROR),
            (Step::Writing, Ok(())) => {
                run.done += run.want;
                run.bytes += run.want;
                run.step = Step::Idle;
            }
            _ => {}
        }
        self.copy_ready.push(slot);
    }

    /// Answer run `slot` (unless aborted) and keep its status when its list identifier is held.
    fn copy_finish(&mut self, slot: u32, r: Result<(), Sense>) {
        let Some(t) = self.tasks.get_mut(slot as usize) else {
            return;
        };
        let aborted = t.aborted;
        if let Some(run) = t.copy.take() {
            if run.usage == ListUsage::Hold && !aborted {
                self.hold(Held {
                    list_id: run.list_id,
                    status: if r.is_ok() {
                        xcopy::status::GOOD
                    } else {
                        xcopy::status::ERROR
                    },
                    segments: run.seg as u16,
                    bytes: run.bytes,
                    sense: r.err(),
                });
            }
            self.put_buf(run.chunk);
        }
        self.complete(slot, r);
    }

    /// Keep a finished copy's status (replacing one with the same list identifier; the oldest
    /// goes past `xcopy::HELD_RESULTS`).
    fn hold(&mut self, h: Held) {
        self.copy_results.retain(|x| x.list_id != h.list_id);
        if self.copy_results.len() >= xcopy::HELD_RESULTS {
            self.copy_results.remove(0);
        }
        self.copy_results.push(h);
    }

    /// RECEIVE COPY RESULTS data for a logical unit with blocks of `block` bytes.
    pub(super) fn copy_results(&self, sa: u8, list_id: u8, block: u32) -> Result<Vec<u8>, Sense> {
        if sa == xcopy::rcr::OPERATING_PARAMETERS {
            return Ok(xcopy::operating_parameters(block));
        }
        let running = self.tasks.iter().find_map(|(_, t)| {
            t.copy
                .as_ref()
                .filter(|r| r.usage == ListUsage::Hold && r.list_id == list_id)
                .map(|r| Held {
                    list_id,
                    status: xcopy::status::IN_PROGRESS,
                    segments: r.seg as u16,
                    bytes: r.bytes,
                    sense: None,
                })
        });
        let h = running
            .or_else(|| {
                self.copy_results
                    .iter()
                    .find(|h| h.list_id == list_id)
                    .copied()
            })
            .ok_or(Sense::INVALID_FIELD_CDB.at_cdb_byte(2))?;
        Ok(if sa == xcopy::rcr::COPY_STATUS {
            xcopy::copy_status(&h)
        } else {
            xcopy::failed_segment_details(&h)
        })
    }

    /// Step the runs whose operation completed since the last turn.
    pub(super) fn drive_copies(&mut self, env: &mut Env<'_>) {
        if self.copy_ready.is_empty() {
            return;
        }
        let mut ready = std::mem::take(&mut self.copy_ready);
        for slot in ready.drain(..) {
            self.copy_step(env, slot);
        }
        if self.copy_ready.is_empty() {
            self.copy_ready = ready;
        }
    }
}
