//! Resync, source side: a survivor (or the sender of a first sync) copies its dirty regions to
//! the returning peer within the rate limit, then sends RESYNC_DONE and mirrors again.
//!
//! Model: the source walks the dirty [`RegionMap`] with a cursor, one region read at a time
//! through the apply queue (so a copy holds every write acknowledged before it), clears each
//! bit as it is read and records it in the attempt's `copied` map. Updates that arrive during
//! the last pass wait (deferred) so the dirty set drains to empty.
//!
//! Invariants: a region copied by an attempt that ends before RESYNC_DONE is dirty again
//! (`abandon_resync`); the last pass starts only once the target's suspect list has ended
//! (RESYNC_ALSO with no range).

use super::*;

impl Engine {
    /// Mark every region ever written dirty (for a new, empty peer).
    pub(super) fn dirty_everything_written(&mut self) {
        self.dirty.or_with(&self.written);
        self.stats
            .dirty_bytes
            .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn session_start_source(&mut self, io: &mut IoCx) {
        // An attempt whose end no tick saw yet.
        self.abandon_resync(io);
        // This replica wins: its own suspect regions are copied to the peer too.
        self.absorb_suspect();
        self.link_up(io);
        let now = Instant::now();
        self.resync = Some(ResyncSource {
            cursor: 0,
            reads: 0,
            last_pass: false,
            deferred: VecDeque::new(),
            budget: 0.0,
            last_refill: now,
            started: now,
            total: 0,
            also_done: false,
            copied: RegionMap::new(self.cfg.size, self.cfg.dirty_granularity),
        });
    }

    /// A resync attempt ended with its session: every region it copied is dirty again (the
    /// copies may not have arrived), and the deferred updates go ahead alone.
    pub(super) fn abandon_resync(&mut self, io: &mut IoCx) {
        let Some(r) = self.resync.take() else {
            return;
        };
        self.dirty.or_with(&r.copied);
        self.stats
            .dirty_bytes
            .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
        self.stats
            .resync_rate
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .resync_eta_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
        for k in r.deferred {
            self.survivor_apply(io, k);
        }
    }

    /// Resync target: list the suspect regions for the source (RESYNC_ALSO), then end the
    /// list; the source copies them too and does not finish before the end of the list.
    pub(super) fn send_suspect(&mut self) {
        let mut map = self.take_suspect();
        self.unconfirmed_into(&mut map);
        let ranges = map.ranges();
        self.suspect = map;
        self.sess.send_resync_also(&ranges);
        if !ranges.is_empty() {
            tracing::warn!(volume = %self.cfg.name, suspect_bytes = self.suspect_bytes(),
                "mirror: this replica may hold updates the peer never confirmed; asking the peer to copy those regions too");
        }
    }

    /// Survivor: copy dirty regions to the returning peer within the rate budget; switch
    /// back to mirroring once nothing is left.
    pub(super) fn resync_step(&mut self, io: &mut IoCx, now: Instant) {
        let Some(r) = self.resync.as_mut() else {
            return;
        };
        if !self.sess.up {
            // The peer left again: keep every region dirty for the next attempt.
            return self.abandon_resync(io);
        }
        let rate = self.cfg.resync_rate as f64;
        let dt = now.duration_since(r.last_refill).as_secs_f64();
        r.last_refill = now;
        r.budget = (r.budget + rate * dt).min(rate * 0.05 + self.cfg.dirty_granularity as f64);
        let g = self.cfg.dirty_granularity;
        while self
            .resync
            .as_ref()
            .is_some_and(|r| r.budget > 0.0 && r.reads < 16)
        {
            let r = self.resync.as_mut().expect("checked");
            let found = self.dirty.next_set(r.cursor);
            let Some(b) = found else {
                // End of a pass.
                r.cursor = 0;
                if !r.also_done {
                    // The target's suspect regions are still coming: no last pass yet.
                    break;
                }
                let empty = self.dirty.none();
                if !empty || r.reads > 0 {
                    if !r.last_pass && empty {
                        // Wait for the reads; the next tick starts over.
                    } else if !r.last_pass {
                        r.last_pass = true;
                    }
                    break;
                }
                let writes_in_flight = self
                    .ops
                    .iter()
                    .any(|(_, op)| op.origin == Origin::Local && op.applying > 0);
                if !r.last_pass {
                    r.last_pass = true;
                    break;
                }
                if !writes_in_flight {
                    self.finish_resync(io);
                }
                break;
            };
            r.cursor = b + 1;
            self.dirty.clear_bit(b);
            let offset = b * g;
            let len = g.min(self.cfg.size - offset);
            r.copied.set_range(offset, len);
            r.reads += 1;
            r.budget -= len as f64;
            r.total += len;
            let mut op = Op::new(
                Origin::Resync,
                Upd::ResyncRead,
                (offset, len),
                false,
                Vec::new(),
                Stage::Confirmed,
                now,
            );
            op.session = self.sess.number;
            let k = self.ops.insert(op);
            // Through the apply queue: it waits for overlapping writes still in flight, and
            // later ones wait for it, so the copy holds every write acknowledged before it.
            self.enqueue_apply(io, k, 0, 0);
        }
        let dirty = self.dirty_bytes();
        self.stats
            .dirty_bytes
            .store(dirty, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = &self.resync {
            let secs = r.started.elapsed().as_secs_f64().max(1e-3);
            let rate = ((r.total as f64 / secs) as u64).max(1);
            self.stats
                .resync_rate
                .store(rate, std::sync::atomic::Ordering::Relaxed);
            self.stats.resync_eta_ms.store(
                dirty.saturating_mul(1000) / rate,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    pub(super) fn finish_resync(&mut self, io: &mut IoCx) {
        let Some(r) = self.resync.take() else {
            return;
        };
        self.sess.queue(&Header::new(Type::ResyncDone), &[]);
        self.stats
            .resync_rate
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .resync_eta_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.set_mode(Mode::Mirroring);
        self.dirty.clear();
        self.stats
            .dirty_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
        if let Some(slot) = &self.cfg.failover
            && self.grant_epoch != 0
        {
            // The last volume of the group back in sync gives the group's grant back.
            if slot
                .survivors
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
                <= 1
            {
                slot.release
                    .store(self.grant_epoch, std::sync::atomic::Ordering::SeqCst);
            }
            self.grant_epoch = 0;
        }
        tracing::warn!(volume = %self.cfg.name, copied_bytes = r.total,
            seconds = r.started.elapsed().as_secs_f64(), deferred = r.deferred.len(),
            "mirror: resync complete; both replicas in sync, mirroring again");
        for k in r.deferred {
            self.start_mirrored(io, k);
        }
    }
}
