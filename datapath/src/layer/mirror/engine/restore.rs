//! Restoring a mirrored volume's replica state at a start (docs/architecture.md, "Replica
//! state"): the persisted mode, epoch and bitmaps, the leadership, whether the site stopped
//! uncleanly in sync (state 5) and whether its host restarted since (state 6: the boot id),
//! and, for a survivor holding a witness grant, the wait for the witness's first word
//! (alone.rs, `check_grant`).
//!
//! Model: [`Engine::restore`] runs once, before any I/O; it only reads files (the state file
//! through `state::load`, the activity log through `restore_actlog`) and sets the engine's
//! fields; what it must write goes through the persister like any mode change.
//!
//! Invariants: a state file of another size is an error (the daemon does not start); one that
//! does not describe this replica's data makes the replica new (`state_not_of_this_data`); a
//! site that did not stop cleanly never restarts claiming less than it may hold (its suspect
//! regions: its log's extents, or every region ever written when unknown).

use super::*;

impl Engine {
    /// Load the persisted replica state (called once, before any I/O), the leadership with it.
    pub fn restore(&mut self) -> Result<(), String> {
        let r = self.restore_state();
        // Restored fenced: counted out of sync before `restored`, so the group is not taken as
        // in sync, its epoch learned, while this volume is fenced.
        self.publish_sync_mode();
        let reason = if self.term > 0 {
            "restored (a switchover before the restart)"
        } else {
            "configured"
        };
        self.publish_restored_role(reason);
        r
    }

    fn restore_state(&mut self) -> Result<(), String> {
        let Some(path) = self.cfg.state_file.clone() else {
            // No state kept: nothing says what this replica holds (durable.rs).
            self.start_new_replica(Some("no state_dir is configured"));
            return Ok(());
        };
        let Some(p) = crate::layer::mirror::state::load(&path)? else {
            // A new, empty replica: the first session gives it the peer's data.
            self.start_new_replica(None);
            return Ok(());
        };
        if p.size != self.cfg.size {
            return Err(format!(
                "{} is for a volume of {} bytes, this one has {}",
                path.display(),
                p.size,
                self.cfg.size
            ));
        }
        if let Some(why) = self.state_not_of_this_data(&p) {
            self.start_new_replica(Some(why));
            return Ok(());
        }
        // A grant is held only by a survivor. (A source's state saved in sync at its resync's
        // end carried the grant it was about to give back, by files of earlier versions too:
        // restarted, the site took itself for the holder, never gave the grant back, and
        // followed the rules of a source holding one.)
        self.grant_epoch = if p.mode == 1 { p.epoch } else { 0 };
        self.witness.complete_at(self.grant_epoch);
        if let Some((term, leads)) = p.leads
            && term > 0
        {
            // A switchover moved the leadership (term 0: the configuration decides).
            self.term = term;
            self.role = if leads { Role::Leader } else { Role::Follower };
            self.al.enabled = leads && self.cfg.state_file.is_some();
        }
        let same_geometry = p.granularity == self.cfg.dirty_granularity;
        let (size, g) = (self.cfg.size, self.cfg.dirty_granularity);
        self.written = if p.clean && same_geometry {
            RegionMap::from_words(size, g, p.written)
        } else {
            RegionMap::all(size, g)
        };
        // Suspect regions (docs/mirror-protocol.md, "Suspect regions"), and whether a site in
        // sync stopped uncleanly, from its activity log (actlog.rs).
        let led = p.led || self.role == Role::Leader;
        self.led = led;
        // A fenced site whose host restarted since it stopped uncleanly (another boot id, or
        // flags bit 2 kept from an earlier start): its device may have dropped writes both
        // sites acknowledged before the fence, which the peer kept. Two fenced sites reconcile
        // from the leader; so its copy must not win (docs/mirror-protocol.md, "Power loss": it
        // announces state 6 as a site stopped in sync does, and receives), and its regions
        // that may have lost writes (its activity log's, or every region ever written when
        // unknown) are suspect, listed to the peer, which copies them here.
        let fenced_power_loss = p.mode == 2
            && !p.clean
            && (p.host_restarted
                || (p.boot != 0 && self.cfg.boot_id != 0 && p.boot != self.cfg.boot_id));
        let (unclean, logged) = if p.mode == 0 || fenced_power_loss {
            let (u, l) = self.restore_actlog(p.clean, led);
            (u || fenced_power_loss, l)
        } else {
            (false, None)
        };
        let suspect = match (p.mode, p.suspect) {
            // A new replica has applied nothing; a survivor's own dirty bitmap covers them.
            (4, _) => Vec::new(),
            (1, s) if same_geometry => s.unwrap_or_default(),
            (1, _) => Vec::new(),
            // Exact: written at a clean stop, or at the fence (a fenced or resyncing site
            // applies nothing of its own after it).
            (m, Some(s)) if same_geometry && (p.clean || m != 0 || !led) => s,
            // A leader that did not stop cleanly: as recorded, plus its activity log's
            // extents (below).
            (0, Some(s)) if same_geometry && logged.is_some() => s,
            // A follower applies only what its leader ordered, which the leader (or the
            // survivor that resyncs it) has.
            (_, None) if !led => Vec::new(),
            // Unknown (a leader that did not stop cleanly, a version-1 file): every region
            // ever written ("everything" after a crash, see above).
            _ => self.written.words().to_vec(),
        };
        self.suspect = RegionMap::from_words(size, g, suspect);
        if let Some(m) = &logged {
            self.suspect.or_with(m);
        } else if fenced_power_loss && led {
            // (Its log unknown: whatever it applied may be gone.)
            self.suspect.or_with(&self.written);
        }
        self.al.unclean = unclean;
        // Its host restarted since (or had, at an earlier start not reconciled since): a power
        // loss may have dropped what its device had not flushed (docs/mirror-protocol.md,
        // "Power loss"). Unknown boot ids (an older file, an unreadable id) say nothing.
        self.al.host_restarted = unclean
            && (p.host_restarted
                || (p.boot != 0 && self.cfg.boot_id != 0 && p.boot != self.cfg.boot_id));
        if unclean {
            tracing::warn!(volume = %self.cfg.name, suspect_bytes = self.suspect.bytes(),
                "mirror: this site did not stop cleanly while in sync; its next session \
                 reconciles the regions it or its peer may hold alone");
        }
        let mode = match p.mode {
            0 => Mode::Waiting,
            4 => {
                self.new_replica = true;
                Mode::Waiting
            }
            1 => Mode::Survivor,
            _ => Mode::Fenced,
        };
        // Cut in the middle of a resync it received: restored fenced (serving nothing, an
        // operator's takeover possible as before), its half-copied replica announced as state 3
        // again, so every session makes it receive. Announced 2, it was the source of the session
        // of two fenced sites when it led, and copied its stale regions over the acknowledged
        // writes of its fenced source (test
        // `actlog::a_leader_restarted_in_the_middle_of_its_resync_is_never_the_source_of_the_next`).
        self.target.half_copied = p.mode == 3;
        if mode == Mode::Survivor {
            if p.clean && same_geometry {
                self.dirty = RegionMap::from_words(size, g, p.bitmap);
            } else {
                // Not stopped cleanly: what was written last is unknown; resync everything.
                self.dirty = RegionMap::all(size, g);
                tracing::warn!(volume = %self.cfg.name,
                    "mirror: the survivor did not stop cleanly; the whole volume will be resynced");
            }
            self.absorb_suspect();
            self.stats
                .dirty_bytes
                .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
        }
        // (A survivor without a grant, the source of a full copy or of a reconciliation, holds
        // nothing at the witness: it is not counted, as `become_survivor` does not count it.)
        if mode == Mode::Survivor
            && p.epoch != 0
            && let Some(slot) = &self.cfg.failover
        {
            slot.survivors
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            slot.serving_alone();
            // The witness's answers are judged against the grant held (failover::verdict).
            slot.epoch
                .store(p.epoch, std::sync::atomic::Ordering::SeqCst);
        }
        // Its device still holds what it applied before the fence: saved at a clean stop (which
        // flushed it), or the same boot (a process restarted on a running host keeps its
        // device's cache). A power loss since (another boot id, or one unknown) may have dropped
        // acknowledged writes it never flushed, which the peer kept: serving alone on the grant
        // would read without them and copy the stale regions over the peer's (test
        // `restart_grant::a_site_whose_host_restarted_after_a_fence_for_want_of_an_answer_never_adopts_the_grant`).
        let device_kept =
            p.clean || (p.boot != 0 && self.cfg.boot_id != 0 && p.boot == self.cfg.boot_id);
        if mode == Mode::Fenced
            && p.mode == 2
            && device_kept
            && let Some(takeover) = p.fenced_unanswered
        {
            // Fenced for want of the witness's answer, its replica then holding every
            // acknowledged write: the witness may have granted that request. Adopted from the
            // witness's first word naming this site (any word of this process is newer than
            // the fence), as without the restart (alone.rs, `adopt_lost_grant`). Before, the
            // restart forgot it: the grant sat at the witness as this site's, the peer denied,
            // and neither site served until the link returned.
            self.fenced_unanswered = Some((0, takeover));
            // And asked again when that word names nobody (`adopt_lost_grant`), as without the
            // restart: at the group's epoch it knew then (saved with the fence, one more; 0:
            // not known), which the failover thread takes as known (`learned_epoch`). A request
            // persisted as a takeover's (bit 4: an operator's, or one asked again after a
            // give-back; which, unknown here) is asked again plain, its grant a takeover.
            let complete = p.epoch.checked_sub(1);
            self.unanswered_epoch = complete.unwrap_or(0);
            self.unanswered_retried = takeover;
            self.witness.restored_unanswered();
            self.witness.complete_at(complete.unwrap_or(0));
            if complete.is_none() {
                // (Not saved: a version-6 file's 0, written before 1166a25 or at epoch 0. Its
                // lost grant is adopted whatever its epoch, as those versions did: refused, a
                // grant of its own would sit at the witness, the peer denied, and neither site
                // serve. A version-7 file says which: a fence at 0 adopts no grant above 1.)
                self.witness.complete_not_known();
            }
            if let Some(slot) = &self.cfg.failover {
                slot.learned_epoch
                    .fetch_max(complete.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
            }
        } else if mode == Mode::Fenced
            && p.mode == 2
            && device_kept
            && p.fenced_denied
            && p.epoch != 0
        {
            // Denied while the peer held the group (flags bit 5), its replica then holding
            // every acknowledged write, complete at the saved epoch less one. Without the
            // restart it asked the witness once more when a word showed that grant given back
            // (alone.rs, `ask_again_if_released`); restarted with the link still down it was a
            // plain fence that never asked (no session in its process), and with the holder
            // stopped (its grant given back unused, say) nobody served until the link
            // returned. So the denial is restored: the grant watched for is the one right after
            // the epoch its replica was complete at (a later one the witness refuses a request
            // at that epoch as stale anyway), any word of this process newer than the fence,
            // the request asked at that epoch (`learned_epoch`) without a session of its own,
            // its grant a takeover as before the restart, and answered only after the read lease
            // the old process may have given the peer (`become_survivor`).
            let complete = p.epoch - 1;
            self.denied_by = Some((p.epoch, 0));
            self.witness.restored_denied();
            self.witness.complete_at(complete);
            if let Some(slot) = &self.cfg.failover {
                slot.learned_epoch
                    .fetch_max(complete, std::sync::atomic::Ordering::SeqCst);
            }
        } else if mode == Mode::Fenced && p.fenced_unanswered.is_some() {
            // Never served on; the grant it may hold is given back at the witness's first word
            // naming it (`give_back_unadoptable`), so the peer, denied while it was held, asks
            // again and serves (its replica holds every acknowledged write).
            self.unadoptable = true;
            if let Some(slot) = &self.cfg.failover {
                slot.unadoptable
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        } else if p.mode == 0 && !p.clean && !self.new_replica {
            // Killed in sync, perhaps while its request for a grant was unanswered (the link
            // lost, the witness's answer lost or not come yet: the fence for want of an answer
            // is saved at the request's deadline, a second later). The witness may hold the
            // group for this site on a grant this replica never recorded, so never served on
            // (a survivor's state is durable before its first write acknowledged alone); the
            // peer, denied while it is held, would wait for the link with this site, and
            // neither serve (test `lost_grant_restart`). Given back at the witness's first word
            // naming this site, as a fence for want of an answer after a host restart
            // (`give_back_unadoptable`); a session with the peer first gives it back as a
            // site in sync again (alone.rs, `adopt_lost_grant`).
            self.unadoptable = true;
            if let Some(slot) = &self.cfg.failover {
                slot.unadoptable
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.mode = mode;
        self.stats.set_mode(mode);
        if let Some(slot) = self.cfg.failover.clone() {
            // Counted as watching from now (a fence for want of an answer restored above), so
            // a volume of the group mirroring again never gives back the grant this one may
            // still adopt (`adopt_lost_grant`), however late this engine's first tick.
            self.publish_watching(&slot);
        }
        self.publish_withdrawn();
        if mode == Mode::Survivor && !p.clean {
            // It may have crashed during its wait for the peer's read lease and restarted at
            // once: wait again. (A clean stop waits for every held answer, so for the lease.)
            let l = self.sess.lease();
            self.alone_after = Some(Instant::now() + l + lease_margin(l));
        }
        // A survivor's grant may have been released by an operator since (a survivor lost
        // for good, docs/witness-protocol.md): it serves once the witness confirms it.
        if mode == Mode::Survivor && p.epoch != 0 && self.cfg.failover.is_some() {
            self.grant_check = alone::GrantCheck::Waiting(Instant::now());
        }
        self.publish_lease();
        tracing::info!(volume = %self.cfg.name, mode = ?mode, epoch = p.epoch, clean = p.clean,
            suspect_bytes = self.suspect_bytes(), "mirror: replica state restored");
        Ok(())
    }
}
