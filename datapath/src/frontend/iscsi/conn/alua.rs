//! SET TARGET PORT GROUPS on a connection: explicit ALUA as a planned switchover.
//!
//! Model: the parameter list is parsed on the reactor (`iscsi::alua::parse_set_tpg`). A request
//! for the other site's group to be active/optimised (or for this site's optimised group to be
//! non-optimised) is the control socket's `mirror_switchover` of the logical unit's volume to
//! that site, run with the same steps (`layer::mirror::switch_request`: refused unless up and in sync,
//! the request handed to the engine through its published stats, followed until the term
//! moved, a failure was recorded or [`WAIT`] passed). Those steps poll and sleep, so they run
//! on a helper thread (at most [`MAX_RUNNING`] in the daemon; beyond, BUSY), which then waits
//! up to [`SETTLE`] for both published path states (this site's and the peer's) to be the new
//! roles' and posts a [`StpgDone`] note to the connection, which answers the task.
//!
//! Where hosts are (`bdev::host_path`): a session whose initiator the host list places at a
//! site reports the states [`IscsiConn::host_paths`] gives (its site's group optimised, the
//! other non-optimised, whichever site leads, or the serving group optimised when its own
//! site's is inaccessible); the I/O checks read the same view (it is
//! inaccessible or transitioning exactly when the published state is). For such a session the
//! host list, not the leadership, decides which group is optimised: a SET TARGET PORT GROUPS
//! asking for what it already sees changes nothing (GOOD), one asking for anything else is
//! an invalid combination (ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST), never a
//! switchover. Its unit attentions follow its view: ASYMMETRIC ACCESS STATE CHANGED is
//! reported when the states it sees differ from those it last saw (a switchover between two
//! sites that are both up changes nothing it sees, and reports nothing); an unlisted
//! session's are reported whenever a published state changed, as before.
//!
//! Invariants:
//! - While it waits the task counts as at a device (`parts` = 1), so its slot is not reused,
//!   the connection does not close and a task management function aborting it waits for the
//!   note (an aborted task sends nothing).
//! - Unit attentions (SPC-4 §6.40): every other I_T nexus, at both sites, sees the path-state
//!   changes and reports ASYMMETRIC ACCESS STATE CHANGED once; the nexus that sent the
//!   command does not: while one of its SET TARGET PORT GROUPS waits, the changes it sees on
//!   that logical unit are taken as seen, and a successful answer marks everything published
//!   until then as seen. A failed one leaves them to be reported (the states may have moved).

use super::IscsiConn;
use crate::bdev::host_path::{self, Site};
use crate::bdev::volume::{PathState, Volume};
use crate::frontend::iscsi::MirrorHandle;
use crate::frontend::iscsi::alua::{self, Want};
use crate::frontend::iscsi::scsi::{Cmd, Sense, status};
use crate::runtime::{Env, Msg, NoteTo};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How long a switchover may take (the control socket's default wait).
pub const WAIT: Duration = Duration::from_secs(10);
/// How long after the move the published path states may take to show it.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Switchovers waited for at once in the daemon.
pub const MAX_RUNNING: u32 = 4;

/// The outcome of a SET TARGET PORT GROUPS, for the connection that runs it.
pub(super) struct StpgDone {
    slot: u32,
    result: Result<(), Sense>,
}

/// The other site's group id, for a site whose group is `own` (1 or 2).
pub fn other_group(own: u16) -> u16 {
    if own == 1 { 2 } else { 1 }
}

/// What a session last saw of a logical unit, for its unit attentions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    /// Path-state changes of both sites' groups ([`IscsiConn::path_changes`]).
    pub changes: u64,
    /// Logical unit resets.
    pub resets: u64,
    /// The states of this site's group and the other site's, as this session sees them.
    pub view: (PathState, Option<PathState>),
}

impl IscsiConn {
    /// Both port groups of volume `v` as this session's host sees them (this site's, the
    /// other site's: `bdev::host_path::host_views`). No lock, no allocation.
    pub(super) fn host_paths(&self, v: &Volume) -> (PathState, Option<PathState>) {
        host_path::host_views(
            v.path.get(),
            v.peer_path.as_ref().map(|p| p.get()),
            self.host_site,
        )
    }

    /// This site's port group of volume `v` as this session's host sees it (the I/O checks).
    pub(super) fn host_path(&self, v: &Volume) -> PathState {
        let host = if v.peer_path.is_some() {
            self.host_site
        } else {
            None
        };
        let other = v
            .peer_path
            .as_ref()
            .map_or(PathState::Inaccessible, |p| p.get());
        host_path::host_view(v.path.get(), Site::Here, host, other)
    }

    /// Execute SET TARGET PORT GROUPS (its parameter list is whole).
    pub(super) fn set_tpg(&mut self, env: &mut Env<'_>, slot: u32) {
        let (vol, lun_idx) = {
            let t = &self.tasks[slot as usize];
            (t.vol, t.lun_idx)
        };
        let Some(v) = env.vols[vol].clone() else {
            // Deleted under the session (never while a LUN names it): nothing to move.
            return self.complete(slot, Err(Sense::INVALID_FIELD_PARAM));
        };
        let own = self.sh.tpg;
        // The states this session sees (a listed host's view, else the published ones).
        let (mine, theirs) = self.host_paths(&v);
        let peer = theirs.map(|s| (other_group(own), s));
        let mut groups = vec![own];
        groups.extend(peer.map(|(g, _)| g));
        let optimized = if mine == PathState::Optimized {
            Some(own)
        } else {
            peer.and_then(|(g, s)| (s == PathState::Optimized).then_some(g))
        };
        let want = alua::parse_set_tpg(&self.tasks[slot as usize].buf, &groups, optimized);
        let g = match want {
            Err(s) => return self.complete(slot, Err(s)),
            Ok(Want::Nothing) => return self.complete(slot, Ok(())),
            Ok(Want::Optimized(g)) => g,
        };
        if self.host_site.is_some() && v.peer_path.is_some() {
            // The host list fixes which group this host sees optimised: a switchover would
            // change nothing it sees.
            tracing::info!(volume = %v.name, initiator = %self.initiator, to_group = g,
                "iscsi: SET TARGET PORT GROUPS refused: the host list places this initiator");
            return self.complete(slot, Err(Sense::INVALID_FIELD_PARAM));
        }
        let Some(m) = self.sh.mirrors.get(vol).and_then(Option::as_ref).cloned() else {
            // One group only: the parser never asks for a move (kept for safety).
            return self.complete(slot, Err(Sense::INVALID_FIELD_PARAM));
        };
        let running = &self.sh.switchovers;
        if running.fetch_add(1, Relaxed) >= MAX_RUNNING {
            running.fetch_sub(1, Relaxed);
            return self.busy(slot);
        }
        let to_me = g == own;
        let mailbox = Arc::clone(&env.shared.mailboxes[env.io.reactor]);
        let key = env.key;
        let sh = Arc::clone(&self.sh);
        let lun = self.target.luns[lun_idx].lun;
        let initiator = self.initiator.clone();
        let spawned = std::thread::Builder::new()
            .name("iscsi-stpg".into())
            .spawn(move || {
                tracing::info!(volume = %v.name, lun, %initiator, to_group = g,
                    "iscsi: SET TARGET PORT GROUPS: switchover asked");
                let result = switch_to(&m, &v, to_me);
                sh.switchovers.fetch_sub(1, Relaxed);
                mailbox.send(Msg::Note {
                    to: NoteTo::Conn(key),
                    note: Box::new(StpgDone { slot, result }),
                });
            });
        if let Err(e) = spawned {
            self.sh.switchovers.fetch_sub(1, Relaxed);
            tracing::warn!(error = %e, "iscsi: SET TARGET PORT GROUPS: no helper thread");
            return self.busy(slot);
        }
        let t = &mut self.tasks[slot as usize];
        t.parts = 1;
        t.stage = super::Stage::Device;
        self.stpg_waiting += 1;
    }

    /// The switchover of a SET TARGET PORT GROUPS ended.
    pub(super) fn set_tpg_done(&mut self, env: &Env<'_>, d: StpgDone) {
        self.stpg_waiting = self.stpg_waiting.saturating_sub(1);
        let Some(t) = self.tasks.get_mut(d.slot as usize) else {
            return;
        };
        if !matches!(t.cmd, Cmd::SetTpg { .. }) {
            tracing::error!(
                slot = d.slot,
                "iscsi: SET TARGET PORT GROUPS outcome for another task"
            );
            return;
        }
        t.parts = 0;
        let i = t.lun_idx;
        if d.result.is_ok() {
            // This nexus asked for the change: no unit attention for it (SPC-4 §6.40).
            let changes = self.path_changes(env, i);
            let view = self.lun_view(env, i);
            self.with_sess(|s| {
                if let Some(Some(seen)) = s.path_seen.get_mut(i) {
                    seen.changes = changes;
                    seen.view = view;
                }
            });
        }
        self.complete(d.slot, d.result);
    }

    /// A SET TARGET PORT GROUPS of this nexus waits on LUN index `i` (its path-state changes
    /// are then its own doing).
    pub(super) fn stpg_waits(&self, i: usize) -> bool {
        self.stpg_waiting > 0
            && self
                .tasks
                .iter()
                .any(|(_, t)| t.lun_idx == i && t.parts > 0 && matches!(t.cmd, Cmd::SetTpg { .. }))
    }

    /// Answer BUSY (no sense data).
    fn busy(&mut self, slot: u32) {
        let Some(t) = self.tasks.try_remove(slot as usize) else {
            return;
        };
        if !t.aborted {
            let h = crate::frontend::iscsi::pdu::Bhs::new(
                crate::frontend::iscsi::pdu::op::SCSI_RSP,
                0x80,
            )
            .byte(3, status::BUSY)
            .itt(t.itt);
            self.put_status(h, &[]);
        }
        self.put_buf(t.buf);
    }
}

/// On the helper thread: move the leadership of `m`'s volume here (`to_me`) or to the peer,
/// then wait for the published path states to show it.
fn switch_to(m: &MirrorHandle, v: &Volume, to_me: bool) -> Result<(), Sense> {
    use crate::layer::mirror::switch_request::{
        Progress, progress, refuse_unless_in_sync, request,
    };
    if let Err(why) = refuse_unless_in_sync(&m.stats, &v.name, m.leader) {
        tracing::warn!(volume = %v.name, %why, "iscsi: SET TARGET PORT GROUPS refused");
        return Err(alua::STPG_FAILED);
    }
    if let Some(r) = request(&m.stats, m.leader, to_me) {
        let deadline = Instant::now() + WAIT;
        loop {
            let expired = Instant::now() >= deadline;
            match progress(&m.stats, &r, &v.name, m.leader, expired, WAIT) {
                Progress::Waiting => std::thread::sleep(Duration::from_millis(5)),
                Progress::Moved { term } => {
                    tracing::info!(volume = %v.name, term, to_me,
                        "iscsi: SET TARGET PORT GROUPS: switchover done");
                    break;
                }
                Progress::Failed(why) => {
                    tracing::warn!(volume = %v.name, %why,
                        "iscsi: SET TARGET PORT GROUPS: switchover not completed");
                    return Err(alua::STPG_FAILED);
                }
            }
        }
    }
    let (mine, theirs) = if to_me {
        (PathState::Optimized, PathState::NonOptimized)
    } else {
        (PathState::NonOptimized, PathState::Optimized)
    };
    let until = Instant::now() + SETTLE;
    while Instant::now() < until
        && (v.path.get() != mine || v.peer_path.as_ref().is_some_and(|p| p.get() != theirs))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
