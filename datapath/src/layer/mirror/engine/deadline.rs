//! Requests that wait past their deadline, and a stop's: the peer timeout fails an
//! initiator's held request (never acknowledged on one site only), a stopping daemon stops
//! taking forwarded updates, and its deadline answers whatever still waits.
//!
//! Invariant: each request is answered once (its `initiator` taken), and an op dropped here
//! was applied nowhere (it waited for a survivor state on disk, in a resync's last pass, or
//! unsequenced in the leader's barrier).

use super::*;

impl Engine {
    /// The daemon is stopping. A leader stops taking the follower's new forwarded updates (the
    /// follower holds them and fails them on its timeout; neither replica applies them), so
    /// its engine can become idle and its link close while the follower keeps writing.
    pub fn begin_drain(&mut self) {
        if !self.draining {
            self.draining = true;
            tracing::info!(volume = %self.cfg.name, "mirror: stopping; no new forwarded updates are taken");
        }
    }

    /// The stop deadline passed: answer every request still waiting with EIO (the data may or
    /// may not be on the replicas, as for any failed write), so the reactor can exit.
    pub fn abort_requests(&mut self) {
        let keys: Vec<usize> = self.ops.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some((from, tag)) = self.ops[k].initiator.take() {
                self.done.push((from, tag, Err(Errno::IO)));
            }
        }
        if let Some(r) = self.resync.as_mut() {
            r.drop_deferred();
        }
        for (from, tag, _) in std::mem::take(&mut self.alone_held) {
            self.done.push((from, tag, Err(Errno::IO)));
        }
        self.fail_metas();
    }

    /// Fail initiators whose requests waited longer than the peer timeout.
    pub fn expire(&mut self, now: Instant) {
        for (from, tag) in self.metas.expire(now) {
            // A wait's entry stays for the answer; a held command is dropped (see `MetaRepl`).
            self.stats.inc(&self.stats.timeouts);
            self.done.push((from, tag, Err(Errno::IO)));
        }
        let mut expired = Vec::new();
        for (k, op) in self.ops.iter() {
            if op.initiator.is_some() && op.deadline <= now && op.origin == Origin::Local {
                expired.push(k);
            }
        }
        if expired.is_empty() {
            return;
        }
        if !self.held_logged {
            self.held_logged = true;
            tracing::error!(volume = %self.cfg.name, failed = expired.len(),
                timeout_ms = self.cfg.peer_timeout.as_millis() as u64,
                "mirror: peer unreachable; failing held requests (never acknowledged on one site only)");
        }
        for k in expired {
            self.stats.inc(&self.stats.timeouts);
            if self.expire_held(k) {
                continue;
            }
            let (from, tag) = self.ops[k].initiator.take().expect("checked");
            self.done.push((from, tag, Err(Errno::IO)));
            if self.al.unwait_alone(k) {
                // Waited for the survivor state on disk: applied nowhere, dropped.
                let op = self.ops.remove(k);
                self.recycle(op.data);
                continue;
            }
            if self.resync.as_mut().is_some_and(|r| r.undefer(k)) {
                // Deferred by a resync's last pass: applied nowhere, dropped (the resync's
                // end must not start a key that may be another op's by then).
                let op = self.ops.remove(k);
                self.recycle(op.data);
                continue;
            }
            if self.role == Role::Leader && self.leader.unwait(k) {
                // Never sequenced (it waited in the barrier, e.g. for room in the backlog):
                // applied nowhere, dropped, so a follower that stays slow does not make
                // the waiting updates pile up.
                let op = self.ops.remove(k);
                self.recycle(op.data);
                continue;
            }
            if self.role == Role::Follower && !self.sess.up && self.follower.remove(k) {
                // Not re-sent: if the leader sequenced it, the leader re-sends it itself.
                self.ops[k].stage.abandon();
            }
            // A flush stays outstanding while the link is up: its FLUSH_DONE will come and must
            // find it (its id must not be reused meanwhile). A new session re-sends it.
            if !self.sess.up && self.flushes.remove(k) {
                self.ops[k].stage.abandon();
            }
            self.settle(k);
        }
    }
}
