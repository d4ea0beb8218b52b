//! Updates too long for one mirror message, split into parts that each fit one.
//!
//! Model: the mirror channel hands every update to the engine through [`Splits::submit`]. A
//! write-zeroes or unmap longer than [`MAX_UPDATE`] (the wire's `count` is 32 bits), or a write
//! longer than [`wire::MAX_PAYLOAD`], becomes several engine updates over consecutive ranges,
//! each sequenced, mirrored and applied like any update, so the follower applies exactly the
//! ranges the leader applied. The parts complete to a *join* ([`SPLIT_FROM`], the join's index
//! as the tag's slot); [`Splits::join`] folds their completions, before the engine's
//! completions go to the initiators, into one answer for the initiator: the first error of a
//! part, else success, once every part is done.
//!
//! Invariant: every part is at most [`MAX_UPDATE`] bytes (a multiple of every block size) and
//! starts on the original's block alignment, so the wire's header never truncates a count.

use super::engine::{Engine, Update};
use super::wire;
use crate::bdev::Start;
use crate::uring::{Errno, IoCx, IoTag};
use slab::Slab;

/// Most bytes of one write-zeroes or unmap message: the largest multiple of 1 MiB below 2^32.
pub const MAX_UPDATE: u64 = (1 << 32) - (1 << 20);
/// Most bytes of one write message.
pub const MAX_WRITE: usize = wire::MAX_PAYLOAD as usize;
/// The `from` of a part's completion (no reactor has this index).
pub const SPLIT_FROM: u32 = u32::MAX;

struct Join {
    from: u32,
    tag: IoTag,
    left: u64,
    err: Option<Errno>,
}

/// The joins of split updates in flight.
#[derive(Default)]
pub struct Splits {
    joins: Slab<Join>,
}

impl Splits {
    /// Start `update` at `offset`: as one engine update when it fits one message, else in
    /// parts (answered through [`Splits::join`]).
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &mut self,
        e: &mut Engine,
        io: &mut IoCx,
        from: u32,
        tag: IoTag,
        update: Update<'_>,
        offset: u64,
        fua: bool,
    ) -> Start {
        let (len, max) = match update {
            Update::Zeroes(l) | Update::Unmap(l) => (l, MAX_UPDATE),
            Update::Write(d) => (d.len() as u64, MAX_WRITE as u64),
            _ => return e.submit(io, from, tag, update, offset, fua),
        };
        if len <= max {
            return e.submit(io, from, tag, update, offset, fua);
        }
        // Off the block size: refused whole (split, its aligned parts would be applied and its
        // last refused).
        if let Some(r) = e.unsendable(offset, len) {
            return Start::Done(r);
        }
        let parts = len.div_ceil(max);
        let j = self.joins.insert(Join {
            from,
            tag,
            left: parts,
            err: None,
        });
        let part_tag = IoTag {
            conn: 0,
            slot: j as u32,
        };
        let mut answer = None;
        for i in 0..parts {
            let (at, n) = (i * max, max.min(len - i * max));
            let part = match update {
                Update::Zeroes(_) => Update::Zeroes(n),
                Update::Unmap(_) => Update::Unmap(n),
                Update::Write(d) => Update::Write(&d[at as usize..(at + n) as usize]),
                _ => unreachable!("only these are split"),
            };
            if let Start::Done(r) = e.submit(io, SPLIT_FROM, part_tag, part, offset + at, fua) {
                answer = self.part_done(j, r);
            }
        }
        match answer {
            // Every part answered at once: so is the update.
            Some((_, _, r)) => Start::Done(r),
            None => Start::Pending,
        }
    }

    /// One part of join `j` is done; the original's answer once it was the last.
    fn part_done(
        &mut self,
        j: usize,
        r: Result<(), Errno>,
    ) -> Option<(u32, IoTag, Result<(), Errno>)> {
        let join = self.joins.get_mut(j)?;
        join.left -= 1;
        if let Err(err) = r {
            join.err.get_or_insert(err);
        }
        if join.left > 0 {
            return None;
        }
        let join = self.joins.remove(j);
        Some((join.from, join.tag, join.err.map_or(Ok(()), Err)))
    }

    /// Fold the parts' completions in `done` into their originals' answers.
    pub fn join(&mut self, done: &mut Vec<(u32, IoTag, Result<(), Errno>)>) {
        if self.joins.is_empty() {
            return;
        }
        let mut i = 0;
        while i < done.len() {
            if done[i].0 != SPLIT_FROM {
                i += 1;
                continue;
            }
            let (_, tag, r) = done.swap_remove(i);
            if let Some(answer) = self.part_done(tag.slot as usize, r) {
                done.push(answer);
            }
        }
    }

    /// Split updates still waiting for parts.
    pub fn pending(&self) -> usize {
        self.joins.len()
    }
}
