//! A mirrored volume's counters and state, written by its home reactor with relaxed stores and
//! read by the control socket.

use super::mode::Mode;
use crate::uring::Errno;
use serde::Serialize;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Nanoseconds of `t` on a process-wide monotonic clock (0 for an instant before its
/// epoch, which is fixed at its first use).
pub fn mono_ns(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let e = *EPOCH.get_or_init(|| Instant::now() - std::time::Duration::from_secs(1));
    t.saturating_duration_since(e).as_nanos() as u64
}

/// Published mirror state of one volume.
#[derive(Default)]
pub struct MirrorStats {
    /// A session is up.
    pub up: AtomicBool,
    /// The replicas diverged (backlog overflow).
    pub diverged: AtomicBool,
    /// Sessions started.
    pub session: AtomicU32,
    /// Updates submitted by this site's initiators.
    pub updates: AtomicU64,
    /// Updates sent to the follower as WRITE/ZEROES/UNMAP (leader only).
    pub replicated: AtomicU64,
    /// Messages sent / received.
    pub msgs_sent: AtomicU64,
    /// Messages received.
    pub msgs_received: AtomicU64,
    /// ACK messages sent.
    pub acks_sent: AtomicU64,
    /// ACK messages received.
    pub acks_received: AtomicU64,
    /// Messages refused (the link was dropped for each).
    pub rejected: AtomicU64,
    /// Requests failed because the peer did not answer in time.
    pub timeouts: AtomicU64,
    /// Leader: bytes of update data kept for the follower.
    pub backlog_bytes: AtomicU64,
    /// Bytes marked dirty while serving alone.
    pub dirty_bytes: AtomicU64,
    /// Bytes copied to the peer by resyncs.
    pub resync_bytes: AtomicU64,
    /// The running resync's copy rate, bytes per second (0: none running).
    pub resync_rate: AtomicU64,
    /// The running resync's estimated time left, ms (0: none running).
    pub resync_eta_ms: AtomicU64,
    /// Bytes the running resync could not read from this replica (kept for the next
    /// retry; the resync does not end before they are copied).
    pub resync_unreadable_bytes: AtomicU64,
    /// Local device errors answered to the initiator without taking the replica out of
    /// service (a survivor or resync source: the volume's only current copy).
    pub local_errors: AtomicU64,
    /// Host reads held because the site had no read lease for a moment (then served or
    /// refused: `held.rs`).
    pub reads_held: AtomicU64,
    /// Of those, the ones refused in the end (the site came to serve nothing, or the read
    /// waited `peer_timeout`).
    pub reads_held_refused: AtomicU64,
    /// Leader: extents in the activity log.
    pub actlog_extents: AtomicU64,
    /// Leader: versions of the activity log handed to the persister since the start.
    pub actlog_writes: AtomicU64,
    /// The engine's mode, as `Mode as u8`.
    mode: std::sync::atomic::AtomicU8,
    /// Reads may be served until then ([`mono_ns`]); `u64::MAX`: always (survivor); 0:
    /// never (no lease, or a mode that serves nothing). Published by the home reactor's
    /// engine, read by the volume's channels on the other reactors.
    read_until: AtomicU64,
    /// An operator asked this site to take the volume over (ask the witness for a grant
    /// without a peer session); cleared when the witness has answered.
    pub takeover: AtomicBool,
    /// An operator paused this site's resync copies (`mirror_resync`); the last pass, which
    /// holds new writes, is never paused.
    pub resync_paused: AtomicBool,
    /// An operator's resync rate limit, bytes per second (0: the configured `resync_rate`).
    pub resync_rate_limit: AtomicU64,
    /// Why the replica state could not be persisted (set once: the volume is stopped at
    /// this site); read rarely (control path only).
    persist_error: Mutex<Option<String>>,
    /// Why the volume is stopped at this site (the state cannot be persisted, or the local
    /// replica failed); set once, read rarely (control path only).
    failure: Mutex<Option<String>>,
    /// `failure` is set (read on the I/O path).
    failed: AtomicBool,
    /// Why the last session with the peer was refused (cleared when one starts); control path
    /// only.
    refused: Mutex<Option<String>>,
    /// A host read that failed at the local device on a reactor other than the engine's
    /// (offset, length, errno), for the engine's next tick; error path only.
    read_failure: Mutex<Option<(u64, u64, i32)>>,
    /// The last of `local_errors`; control path only.
    last_local_error: Mutex<Option<String>>,
    /// Round-trip samples (ns) of PING/PONG, newest last; read rarely (control path only).
    rtts: Mutex<Vec<u64>>,
    /// Leadership as the engine last published it: 0 not yet, 1 this site leads, 2 the peer.
    leads: std::sync::atomic::AtomicU8,
    /// The leadership term (docs/mirror-protocol.md, "Leadership").
    pub term: AtomicU64,
    /// An operator's switchover request for the engine's next tick: 0 none,
    /// [`SWITCH_GIVE`], [`SWITCH_TAKE`] or [`SWITCH_CANCEL`] (taken by the engine).
    pub switch_req: std::sync::atomic::AtomicU8,
    /// Switchovers that failed or were rolled back since the start (the control socket
    /// waits for this or the term to change).
    pub switch_failures: AtomicU64,
    /// The last leadership change and the switchover under way; control path only.
    switch_info: Mutex<SwitchInfo>,
}

/// [`MirrorStats::switch_req`]: hand the leadership to the peer (this site leads).
pub const SWITCH_GIVE: u8 = 1;
/// [`MirrorStats::switch_req`]: ask the leader to hand the leadership to this site.
pub const SWITCH_TAKE: u8 = 2;
/// [`MirrorStats::switch_req`]: the asker's wait ran out: a drain under way is rolled back
/// (nothing else is: a handover already made stands).
pub const SWITCH_CANCEL: u8 = 3;

/// The last leadership change and the switchover under way.
#[derive(Default, Clone, Debug)]
struct SwitchInfo {
    /// Wall-clock time of the last change (ms since the Unix epoch; none: none since start).
    since_unix_ms: Option<u64>,
    /// Why the leadership is what it is.
    reason: String,
    /// The switchover step under way (`draining`, `handing`, `handed`, `taking`, `asked`), if any.
    phase: Option<&'static str>,
    /// Why the last switchover failed, if one did.
    error: Option<String>,
}

/// A snapshot for the control socket.
#[derive(Serialize, Debug, Clone)]
pub struct MirrorSnapshot {
    /// Volume name.
    pub volume: String,
    /// `leader` or `follower`.
    pub role: &'static str,
    /// `up`, `down` or `diverged`.
    pub state: &'static str,
    /// A session with the peer is up (in any mode: e.g. also while resyncing).
    pub link_up: bool,
    /// Sessions started so far.
    pub session: u32,
    /// Updates from this site's initiators.
    pub updates: u64,
    /// Updates replicated to the follower (leader).
    pub replicated: u64,
    /// Messages sent.
    pub msgs_sent: u64,
    /// Messages received.
    pub msgs_received: u64,
    /// ACKs sent.
    pub acks_sent: u64,
    /// ACKs received.
    pub acks_received: u64,
    /// Messages refused.
    pub rejected: u64,
    /// Requests failed on the peer timeout.
    pub timeouts: u64,
    /// Unacknowledged update bytes kept (leader).
    pub backlog_bytes: u64,
    /// Bytes written while serving alone, to copy to the peer when it returns.
    pub dirty_bytes: u64,
    /// Bytes copied to the peer by resyncs so far.
    pub resync_bytes: u64,
    /// A resync is running (this site sends).
    pub resync_running: bool,
    /// Its copy rate, bytes per second.
    pub resync_rate_bytes_per_s: u64,
    /// An operator paused the resync (`mirror_resync`).
    pub resync_paused: bool,
    /// An operator's rate limit for it, bytes per second (null: the configured one).
    pub resync_rate_limit_bytes_per_s: Option<u64>,
    /// Its estimated time left, seconds (dirty bytes left at the current rate).
    pub resync_eta_s: f64,
    /// Bytes the running resync could not read from this replica (retried every few
    /// seconds; the resync does not end before they are copied).
    pub resync_unreadable_bytes: u64,
    /// Local device errors answered to the initiator without taking the replica out of
    /// service (a survivor or resync source holds the volume's only current copy: as Linux
    /// md's last leg, it passes the error on and goes on serving).
    pub local_errors: u64,
    /// The last of them: what failed, where, and the errno (null: none since the start).
    pub last_local_error: Option<String>,
    /// Host reads held for want of a read lease (a late PONG, a survivor waiting out its
    /// peer's lease), since the start; each was then served or refused.
    pub reads_held: u64,
    /// Of those, the ones refused in the end (the site came to serve nothing, or the read
    /// waited the peer timeout).
    pub reads_held_refused: u64,
    /// Extents in the activity log (leader).
    pub actlog_extents: u64,
    /// Versions of the activity log written since the start (leader).
    pub actlog_writes: u64,
    /// Set when the replica state could not be persisted: why (the volume is stopped at
    /// this site, state `failed`; fix the state directory and restart the daemon).
    pub persist_error: Option<String>,
    /// Set when the volume is stopped at this site, state `failed`: why (the replica state
    /// cannot be persisted, or the local replica failed: an I/O error of the device; repair
    /// or replace it and restart the daemon, the peer then resyncs this site).
    pub failure: Option<String>,
    /// Why the last session with the peer was refused, with what an operator must do (null:
    /// the last session started, or none was tried).
    pub session_refused: Option<String>,
    /// Median PING round trip over the last samples, in microseconds (null: none yet).
    pub rtt_p50_us: Option<f64>,
    /// An operator's takeover (`mirror_takeover`) waits for the witness's answer.
    pub takeover_pending: bool,
    /// The leadership term (0: the configured leader; each switchover adds one).
    pub leader_term: u64,
    /// When the leadership last changed here (ms since the Unix epoch; null: not since the
    /// start).
    pub leader_since_unix_ms: Option<u64>,
    /// Why this site leads or follows (`configured`, `restored`, a switchover, ...).
    pub leader_reason: String,
    /// The switchover step under way at this site (`draining`, `handing`, `handed`, `taking`,
    /// `asked`), or null.
    pub switchover: Option<&'static str>,
    /// Why the last switchover requested or run here failed (null: none did).
    pub last_switchover_error: Option<String>,
}

impl MirrorStats {
    /// Count one (a counter only the home reactor's engine writes: a load and a store).
    pub fn inc(&self, c: &AtomicU64) {
        c.store(c.load(Relaxed) + 1, Relaxed);
    }

    /// Count one in a counter every reactor's channel of the volume writes (`reads_held`,
    /// `reads_held_refused`): an atomic add, so counts made at once on two reactors are
    /// not lost.
    pub fn inc_shared(&self, c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Publish the engine's mode.
    pub fn set_mode(&self, m: Mode) {
        self.mode.store(m as u8, Relaxed);
    }

    /// The engine's mode as last published.
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Relaxed)).unwrap_or(Mode::Mirroring)
    }

    /// Publish until when reads may be served (see `read_until`).
    pub fn set_read_until(&self, ns: u64) {
        self.read_until.store(ns, Release);
    }

    /// Reads may be served now (one load; one clock read only while a lease runs).
    pub fn may_read(&self) -> bool {
        match self.read_until.load(Acquire) {
            0 => false,
            u64::MAX => true,
            u => mono_ns(Instant::now()) < u,
        }
    }

    /// The replica state could not be persisted (the engine fail-stopped the volume).
    pub fn set_persist_error(&self, why: &str) {
        if let Ok(mut e) = self.persist_error.lock() {
            *e = Some(why.to_string());
        }
        self.set_failure(&format!("the replica state cannot be persisted: {why}"));
    }

    /// The volume is stopped at this site, for this reason (the first one is kept).
    pub fn set_failure(&self, why: &str) {
        if let Ok(mut e) = self.failure.lock()
            && e.is_none()
        {
            *e = Some(why.to_string());
        }
        self.failed.store(true, Relaxed);
    }

    /// The volume is stopped at this site (`set_failure`; one load).
    pub fn failed(&self) -> bool {
        self.failed.load(Relaxed)
    }

    /// A local device error was answered without taking the replica out of service
    /// (`local_errors`); `why` says which and where.
    pub fn note_local_error(&self, why: String) {
        self.local_errors.fetch_add(1, Relaxed);
        if let Ok(mut e) = self.last_local_error.lock() {
            *e = Some(why);
        }
    }

    /// A host read failed at the local device (another reactor): the engine fails the
    /// replica at its next tick.
    pub fn report_read_failure(&self, offset: u64, len: u64, e: Errno) {
        if let Ok(mut f) = self.read_failure.lock()
            && f.is_none()
        {
            *f = Some((offset, len, e.0));
        }
    }

    /// The host read failure reported, if any (taken).
    pub fn take_read_failure(&self) -> Option<(u64, u64, Errno)> {
        let f = self.read_failure.lock().ok()?.take()?;
        Some((f.0, f.1, Errno(f.2)))
    }

    /// The last session was refused for this reason (None: it started).
    pub fn set_refused(&self, why: Option<&str>) {
        if let Ok(mut r) = self.refused.lock() {
            *r = why.map(str::to_string);
        }
    }

    /// Session state.
    pub fn set_up(&self, up: bool, session: u32) {
        self.up.store(up, Relaxed);
        self.session.store(session, Relaxed);
    }

    /// One PING round trip (called a few times a second, off the I/O path).
    pub fn rtt_sample(&self, ns: u64) {
        if let Ok(mut v) = self.rtts.lock() {
            if v.len() >= 64 {
                v.remove(0);
            }
            v.push(ns);
        }
    }

    /// Publish the leadership: this site leads at `term` or not, and why (`changed`: a
    /// change now, its time is kept).
    pub fn set_leadership(&self, leads: bool, term: u64, reason: &str, changed: bool) {
        self.leads.store(if leads { 1 } else { 2 }, Relaxed);
        self.term.store(term, Relaxed);
        if let Ok(mut i) = self.switch_info.lock() {
            i.reason = reason.to_string();
            if changed {
                i.since_unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as u64);
            }
        }
    }

    /// Whether this site leads (`None`: not published yet).
    pub fn leads(&self) -> Option<bool> {
        match self.leads.load(Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    /// The switchover step under way (none: idle).
    pub fn set_switch_phase(&self, phase: Option<&'static str>) {
        if let Ok(mut i) = self.switch_info.lock() {
            i.phase = phase;
        }
    }

    /// A switchover failed (or was rolled back) for this reason.
    pub fn switch_failed(&self, why: &str) {
        if let Ok(mut i) = self.switch_info.lock() {
            i.error = Some(why.to_string());
            i.phase = None;
        }
        self.switch_failures.fetch_add(1, Relaxed);
    }

    /// Why the last switchover failed, if one did.
    pub fn switch_error(&self) -> Option<String> {
        self.switch_info.lock().ok().and_then(|i| i.error.clone())
    }

    /// Snapshot (`leader`: the configured role, until the engine publishes its own).
    pub fn snapshot(&self, volume: &str, leader: bool) -> MirrorSnapshot {
        let leader = self.leads().unwrap_or(leader);
        let info = self
            .switch_info
            .lock()
            .map(|i| i.clone())
            .unwrap_or_default();
        let rtt = self.rtts.lock().ok().and_then(|v| {
            let mut s = v.clone();
            s.sort_unstable();
            (!s.is_empty()).then(|| s[s.len() / 2] as f64 / 1000.0)
        });
        let persist_error = self.persist_error.lock().ok().and_then(|e| e.clone());
        let failure = self.failure.lock().ok().and_then(|e| e.clone());
        MirrorSnapshot {
            volume: volume.to_string(),
            role: if leader { "leader" } else { "follower" },
            state: if failure.is_some() {
                "failed"
            } else if self.diverged.load(Relaxed) {
                "diverged"
            } else {
                match self.mode() {
                    Mode::Survivor => "survivor",
                    Mode::Fenced => "fenced",
                    Mode::Resyncing => "resyncing",
                    Mode::Waiting => "waiting",
                    Mode::Mirroring if self.up.load(Relaxed) => "up",
                    Mode::Mirroring => "down",
                }
            },
            link_up: self.up.load(Relaxed),
            session: self.session.load(Relaxed),
            updates: self.updates.load(Relaxed),
            replicated: self.replicated.load(Relaxed),
            msgs_sent: self.msgs_sent.load(Relaxed),
            msgs_received: self.msgs_received.load(Relaxed),
            acks_sent: self.acks_sent.load(Relaxed),
            acks_received: self.acks_received.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            backlog_bytes: self.backlog_bytes.load(Relaxed),
            dirty_bytes: self.dirty_bytes.load(Relaxed),
            resync_bytes: self.resync_bytes.load(Relaxed),
            resync_running: self.resync_rate.load(Relaxed) > 0,
            resync_paused: self.resync_paused.load(Relaxed),
            resync_rate_limit_bytes_per_s: Some(self.resync_rate_limit.load(Relaxed))
                .filter(|&r| r > 0),
            resync_rate_bytes_per_s: self.resync_rate.load(Relaxed),
            resync_eta_s: self.resync_eta_ms.load(Relaxed) as f64 / 1000.0,
            resync_unreadable_bytes: self.resync_unreadable_bytes.load(Relaxed),
            local_errors: self.local_errors.load(Relaxed),
            last_local_error: self.last_local_error.lock().ok().and_then(|e| e.clone()),
            reads_held: self.reads_held.load(Relaxed),
            reads_held_refused: self.reads_held_refused.load(Relaxed),
            actlog_extents: self.actlog_extents.load(Relaxed),
            actlog_writes: self.actlog_writes.load(Relaxed),
            rtt_p50_us: rtt,
            takeover_pending: self.takeover.load(Relaxed),
            persist_error,
            failure,
            session_refused: self.refused.lock().ok().and_then(|r| r.clone()),
            leader_term: self.term.load(Relaxed),
            leader_since_unix_ms: info.since_unix_ms,
            leader_reason: if info.reason.is_empty() {
                "configured".into()
            } else {
                info.reason
            },
            switchover: info.phase,
            last_switchover_error: info.error,
        }
    }
}
