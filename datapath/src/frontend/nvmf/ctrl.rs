//! Subsystems, controllers and ANA groups: the daemon-wide NVMe-oF state.
//!
//! Model: a [`Subsystem`] is immutable; the daemon's table holds `Arc<Subsystem>`s and a
//! change made at run time (a namespace, an allowed host) replaces the subsystem with a
//! changed copy. A queue keeps a copy, so it never takes a lock to find a namespace. The
//! copies of one subsystem share its namespace generation (an atomic, [`Subsystem::stale`]):
//! a namespace change numbers its copy one more and publishes that number once the copy is in
//! the table, so a queue holding an older copy sees, by one atomic load per command, that it
//! must fetch the new one (under the table's read lock, once per change); the changed NSIDs
//! are the difference of the two copies ([`changed_nsids`]). Controllers come and go with admin queues: the [`Registry`] maps cntlid to a
//! [`Controller`] behind a `Mutex` taken only on Connect, queue close and teardown, never on
//! the I/O path (an I/O queue holds its own `Arc<Controller>` and its subsystem's index).
//!
//! ANA: one group per volume, id = volume index + 1, so two volumes' path states never
//! share a group. A group's state is not kept here: it is the volume's published
//! [`PathState`](crate::bdev::volume::PathState) (a lock-free `PathCell` written by the
//! volume's top layer, e.g. the mirror), read per I/O and per ANA log page; a subsystem's ANA
//! change count is the sum of its groups' volumes' change counts ([`Subsystem::ana_changes`]).
//! Where hosts are: a controller whose host NQN the host list places at a site
//! ([`Controller::host_site`], looked up once at Connect) is told the states
//! [`host_group_state`] gives (`bdev::host_path`: for a mirrored volume, optimised where the
//! host is and non-optimised at the other site while the volume is served; inaccessible and
//! transitioning as published); other controllers are told the published states.
//!
//! Invariants:
//! - A controller's I/O queues are registered only while it is alive; [`Controller::teardown`]
//!   marks it dead under the same lock, so no queue attaches after teardown has run.
//! - Teardown never closes another reactor's socket: it `shutdown(2)`s a duplicate of it, so the
//!   owning reactor sees end of file, finishes its in-flight I/O and closes the socket itself.

use super::cmd;
use crate::bdev::host_path::{self, Site};
use crate::bdev::volume::{PathState, Volume};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Highest controller id of the dynamic controller model (NVMe base spec: FFF0h..FFFFh are
/// reserved).
pub const MAX_CNTLID: u16 = 0xFFEF;
/// Default number of I/O queues a controller may create (Set Features can lower it).
pub const MAX_IO_QUEUES: u16 = 64;
/// Highest namespace id of a run-time subsystem (its reservation table has a slot for each).
pub const MAX_NSID: u32 = 1024;

/// One namespace of a subsystem.
#[derive(Clone, Debug)]
pub struct Namespace {
    /// Namespace id (1-based; equals the index in the subsystem's list plus one).
    pub nsid: u32,
    /// Index into the daemon's volumes.
    pub volume: usize,
    /// ANA group: the volume's ([`ana_group_of`]).
    pub ana_group: u32,
    /// The namespace's identifiers (NGUID, EUI-64, UUID): derived from the subsystem NQN and
    /// the nsid only, so both sites report the same ones for the same namespace.
    pub ids: cmd::NsIds,
    /// The namespace generation of the subsystem when this namespace was added (0: from the
    /// start): a namespace removed and added again is another namespace to a host.
    pub since: u64,
}

/// An NVM subsystem.
#[derive(Clone, Debug)]
pub struct Subsystem {
    /// NQN.
    pub nqn: String,
    /// Serial number reported by its controllers.
    pub serial: String,
    /// Host NQNs allowed in (empty: any host).
    pub allowed_hosts: Vec<String>,
    /// Namespaces, nsid = index + 1.
    pub namespaces: Vec<Namespace>,
    /// Reservations of the namespaces (shared by every controller of the subsystem).
    pub resv: Arc<super::resv::ResvTable>,
    /// The ANA groups its namespaces are in, by ascending id.
    pub ana_groups: Vec<AnaGroup>,
    /// Added through the control socket (lasts until the daemon stops), not from the config.
    pub runtime: bool,
    /// A run-time subsystem's ANA group ids may be 1 to this (the daemon's volume slots,
    /// `[runtime] max_volumes`: a group is a volume's, [`ana_group_of`]); 0 for a configured
    /// one. See [`Subsystem::nn`].
    pub group_slots: u32,
    /// The namespace generation of the subsystem's newest copy, shared by all its copies
    /// ([`Subsystem::stale`]).
    pub ns_live: Arc<AtomicU64>,
    /// This copy's namespace generation.
    pub ns_gen: u64,
}

/// An ANA group of a subsystem: one volume's namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnaGroup {
    /// Group id ([`ana_group_of`] the volume).
    pub id: u32,
    /// Index into the daemon's volumes: its path state is the group's.
    pub volume: usize,
    /// The subsystem's namespaces in the group, ascending (hosts walk them in order).
    pub nsids: Vec<u32>,
}

/// The ANA group id of volume index `volume` (group ids start at 1).
pub fn ana_group_of(volume: usize) -> u32 {
    volume as u32 + 1
}

impl Subsystem {
    /// A subsystem with `volumes` as namespaces 1, 2, ...
    pub fn new(nqn: String, allowed_hosts: Vec<String>, volumes: &[usize]) -> Self {
        let numbered: Vec<(u32, usize)> = volumes
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32 + 1, v))
            .collect();
        Self::with_namespaces(nqn, allowed_hosts, &numbered)
    }

    /// A subsystem with the namespaces `(nsid, volume)` (nsids distinct and non-zero; kept
    /// in ascending order). Its reservations start empty.
    pub fn with_namespaces(nqn: String, allowed_hosts: Vec<String>, ns: &[(u32, usize)]) -> Self {
        let mut ns = ns.to_vec();
        ns.sort_by_key(|&(nsid, _)| nsid);
        let namespaces: Vec<Namespace> = ns
            .iter()
            .map(|&(nsid, volume)| Namespace {
                nsid,
                volume,
                ana_group: ana_group_of(volume),
                ids: cmd::NsIds::derive(&nqn, nsid),
                since: 0,
            })
            .collect();
        let mut ana_groups: Vec<AnaGroup> = Vec::new();
        for &(nsid, volume) in &ns {
            match ana_groups.iter_mut().find(|g| g.volume == volume) {
                Some(g) => g.nsids.push(nsid),
                None => ana_groups.push(AnaGroup {
                    id: ana_group_of(volume),
                    volume,
                    nsids: vec![nsid],
                }),
            }
        }
        ana_groups.sort_by_key(|g| g.id);
        let serial = format!("TB{:08X}", crate::checksum::crc32c(nqn.as_bytes()));
        // A namespace's reservations are in slot nsid - 1 ([`Subsystem::resv_slot`]).
        let slots = namespaces.last().map_or(0, |n| n.nsid as usize);
        let resv = Arc::new(super::resv::ResvTable::new(slots));
        Self {
            nqn,
            serial,
            allowed_hosts,
            namespaces,
            resv,
            ana_groups,
            runtime: false,
            group_slots: 0,
            ns_live: Arc::new(AtomicU64::new(0)),
            ns_gen: 0,
        }
    }

    /// A subsystem added through the control socket: no namespace yet, and a reservation
    /// slot for every namespace id it may have (1 to [`MAX_NSID`]), so its table is kept
    /// across namespace changes. `volume_slots`: the daemon's (its namespaces' ANA groups are
    /// 1 to that).
    pub fn at_runtime(nqn: String, allowed_hosts: Vec<String>, volume_slots: usize) -> Self {
        let mut s = Self::with_namespaces(nqn, allowed_hosts, &[]);
        s.resv = Arc::new(super::resv::ResvTable::new(MAX_NSID as usize));
        s.runtime = true;
        s.group_slots = u32::try_from(volume_slots).unwrap_or(u32::MAX).max(1);
        s
    }

    /// A copy with the namespaces `(nsid, volume)` instead (a namespace change, for the
    /// table; [`Subsystem::publish`] once it is there): its generation is one more; the
    /// namespaces that stay keep their generation and their reservations (the table is
    /// shared when it has a slot for each nsid), the ones added or removed start with none.
    pub fn with_changed_namespaces(&self, ns: &[(u32, usize)]) -> Self {
        let next = self.ns_gen + 1;
        let mut s = Self::with_namespaces(self.nqn.clone(), self.allowed_hosts.clone(), ns);
        for n in &mut s.namespaces {
            n.since = match self.ns(n.nsid) {
                Some(o) if o.volume == n.volume => o.since,
                _ => next,
            };
        }
        s.runtime = self.runtime;
        s.group_slots = self.group_slots;
        s.ns_live = Arc::clone(&self.ns_live);
        s.ns_gen = next;
        if self.resv.slots() >= s.resv.slots() {
            s.resv = Arc::clone(&self.resv);
            for nsid in changed_nsids(self, &s) {
                s.resv.reset(nsid as usize - 1);
            }
        }
        s
    }

    /// Make this copy's generation the subsystem's: call once it is in the table (under the
    /// table's write lock), so a queue that sees the new generation finds this copy there.
    pub fn publish(&self) {
        self.ns_live.store(self.ns_gen, Ordering::Release);
    }

    /// Whether a newer copy of this subsystem (another namespace set) is in the table: one
    /// atomic load, read by a queue per command.
    pub fn stale(&self) -> bool {
        self.ns_live.load(Ordering::Acquire) != self.ns_gen
    }

    /// The reservation table slot of namespace index `idx`: nsid - 1 (the index itself in a
    /// configured subsystem, numbered 1, 2, ...).
    pub fn resv_slot(&self, idx: usize) -> usize {
        self.namespaces
            .get(idx)
            .map_or(usize::MAX, |n| n.nsid as usize - 1)
    }

    /// `(nsid, volume)` of every namespace.
    pub fn numbered(&self) -> Vec<(u32, usize)> {
        self.namespaces.iter().map(|n| (n.nsid, n.volume)).collect()
    }

    /// Whether `host` may connect.
    pub fn allows(&self, host: &[u8]) -> bool {
        self.allowed_hosts.is_empty() || self.allowed_hosts.iter().any(|h| h.as_bytes() == host)
    }

    /// The namespace `nsid`, if active.
    pub fn ns(&self, nsid: u32) -> Option<&Namespace> {
        self.ns_index(nsid).map(|i| &self.namespaces[i])
    }

    /// The index of namespace `nsid` in [`Subsystem::namespaces`] (also its index in the
    /// reservation table), if active. Configured subsystems number their namespaces 1, 2, ...
    /// so the index is `nsid - 1` at once; a run-time subsystem may have gaps.
    pub fn ns_index(&self, nsid: u32) -> Option<usize> {
        let guess = (nsid as usize).checked_sub(1)?;
        if self.namespaces.get(guess).is_some_and(|n| n.nsid == nsid) {
            return Some(guess);
        }
        self.namespaces.iter().position(|n| n.nsid == nsid)
    }

    /// Identify Controller NN (and MNAN): the highest NSID the subsystem may have. A host
    /// reads it once, at connect, and sizes by it (Linux: its ANA log buffer, with MNAN), so
    /// it must hold for every namespace set the subsystem can come to: a configured
    /// subsystem's highest NSID (its set never changes), a run-time one's [`MAX_NSID`] (the
    /// highest `nvmf_namespace_add` accepts). NSIDs up to it without a namespace are
    /// inactive, above it invalid.
    pub fn nn(&self) -> u32 {
        if self.runtime {
            return MAX_NSID;
        }
        self.namespaces.last().map_or(0, |n| n.nsid)
    }

    /// Highest ANA group id of the subsystem (Identify Controller ANAGRPMAX; 0: none): like
    /// [`Subsystem::nn`], for every set it can come to (a run-time subsystem's: the highest
    /// group a volume slot makes; Linux drops an ANA log with a group above it).
    pub fn ana_grpmax(&self) -> u32 {
        if self.runtime {
            return self.group_slots;
        }
        self.ana_groups.last().map_or(0, |g| g.id)
    }

    /// How many ANA groups the subsystem may have (Identify Controller NANAGRPID; one
    /// descriptor each in the ANA log): a configured subsystem's groups; for a run-time one,
    /// one per volume slot, at most one per NSID (Linux sizes its ANA log buffer by it).
    pub fn ana_groups_max(&self) -> u32 {
        if self.runtime {
            return self.group_slots.min(MAX_NSID);
        }
        self.ana_groups.len() as u32
    }

    /// The subsystem's ANA change count: the sum of its groups' volumes' path changes at this
    /// site and at the other (a listed host's view of a group depends on both:
    /// `bdev::host_path`), so it moves whenever one of them changes state, and only then.
    pub fn ana_changes(&self, volumes: &[Option<Arc<Volume>>]) -> u64 {
        self.ana_groups
            .iter()
            .filter_map(|g| volumes.get(g.volume)?.as_ref())
            .map(|v| v.path.changes() + v.peer_path.as_ref().map_or(0, |p| p.changes()))
            .sum()
    }
}

/// The namespace ids whose attributes differ between two copies of a subsystem, ascending:
/// added, removed, or removed and added again (another volume or generation). One walk of
/// both lists (each ascending by nsid, each nsid once).
pub fn changed_nsids(old: &Subsystem, new: &Subsystem) -> Vec<u32> {
    let key = |n: &Namespace| (n.nsid, n.volume, n.since);
    let (mut a, mut b) = (
        old.namespaces.iter().peekable(),
        new.namespaces.iter().peekable(),
    );
    let mut out = Vec::new();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(o), Some(n)) if o.nsid == n.nsid => {
                if key(o) != key(n) {
                    out.push(o.nsid);
                }
                a.next();
                b.next();
            }
            (Some(o), Some(n)) if o.nsid < n.nsid => {
                out.push(o.nsid);
                a.next();
            }
            (Some(o), None) => {
                out.push(o.nsid);
                a.next();
            }
            (_, Some(n)) => {
                out.push(n.nsid);
                b.next();
            }
        }
    }
}

/// The state of volume index `volume`'s ANA group as a host at `host` (`None`: not listed)
/// sees it: the host list applies to mirrored volumes only (`bdev::host_path`). `None`: no
/// such volume.
pub fn host_group_state(
    volumes: &[Option<Arc<Volume>>],
    volume: usize,
    host: Option<Site>,
) -> Option<PathState> {
    let v = volumes.get(volume)?.as_ref()?;
    let host = if v.peer_path.is_some() { host } else { None };
    let other = v
        .peer_path
        .as_ref()
        .map_or(PathState::Inaccessible, |p| p.get());
    Some(host_path::host_view(v.path.get(), Site::Here, host, other))
}

/// A controller: an admin queue plus the I/O queues attached to it.
pub struct Controller {
    /// Controller id.
    pub cntlid: u16,
    /// Its subsystem, as it was when the controller was created (`None`: the discovery
    /// controller).
    pub subsys: Option<Arc<Subsystem>>,
    /// Host NQN that created it.
    pub hostnqn: String,
    /// Where that host is, from the host list (`None`: not listed): the ANA states it is
    /// told ([`host_group_state`]).
    pub host_site: Option<Site>,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// I/O queues granted (Set Features, Number of Queues).
    pub io_queues: AtomicU16,
    /// CC.EN as last set by the host.
    pub enabled: AtomicBool,
    /// Keep-alive timeout in ms (0: none).
    pub kato_ms: AtomicU32,
    queues: Mutex<Queues>,
}

#[derive(Default)]
struct Queues {
    dead: bool,
    /// I/O queues attached.
    io: Vec<IoQueue>,
}

/// An attached I/O queue.
struct IoQueue {
    qid: u16,
    /// Duplicate of the queue's socket (for teardown).
    fd: OwnedFd,
    /// Where the queue lives: (reactor, connection key).
    at: (usize, u32),
}

/// Why an I/O queue cannot attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachError {
    /// The controller is being torn down.
    Dead,
    /// qid 0 or beyond the granted number of queues.
    BadQid,
    /// qid already connected on this controller.
    InUse,
    /// The socket could not be duplicated.
    NoFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these plain maps inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    /// Register I/O queue `qid` on `fd`, served by connection `at` = (reactor, key).
    pub fn attach_queue(
        &self,
        qid: u16,
        fd: &OwnedFd,
        at: (usize, u32),
    ) -> Result<(), AttachError> {
        let mut q = lock(&self.queues);
        if q.dead {
            return Err(AttachError::Dead);
        }
        if qid == 0 || qid > self.io_queues.load(Ordering::Relaxed) {
            return Err(AttachError::BadQid);
        }
        if q.io.iter().any(|e| e.qid == qid) {
            return Err(AttachError::InUse);
        }
        let dup = fd.try_clone().map_err(|_| AttachError::NoFd)?;
        q.io.push(IoQueue { qid, fd: dup, at });
        Ok(())
    }

    /// Where I/O queue `qid` lives: (reactor, connection key).
    pub fn queue_at(&self, qid: u16) -> Option<(usize, u32)> {
        lock(&self.queues)
            .io
            .iter()
            .find(|e| e.qid == qid)
            .map(|e| e.at)
    }

    /// Forget I/O queue `qid` (it closed).
    pub fn detach_queue(&self, qid: u16) {
        lock(&self.queues).io.retain(|e| e.qid != qid);
    }

    /// Number of I/O queues attached now.
    pub fn attached(&self) -> usize {
        lock(&self.queues).io.len()
    }

    /// Whether the controller has been torn down.
    pub fn is_dead(&self) -> bool {
        lock(&self.queues).dead
    }

    /// A controller reset (CC.EN from 1 to 0): every I/O queue is deleted (its socket shut
    /// down: each closes on its own reactor, its outstanding commands unanswered); the
    /// controller lives on and may be enabled again, and its queues connected anew.
    pub fn reset_queues(&self) {
        let io = std::mem::take(&mut lock(&self.queues).io);
        for e in io {
            // SAFETY: shutdown on a descriptor we own (a duplicate); no memory is passed.
            unsafe { libc::shutdown(e.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.io_queues.store(
            if self.subsys.is_some() {
                MAX_IO_QUEUES
            } else {
                0
            },
            Ordering::Relaxed,
        );
    }

    /// Mark dead and shut every I/O queue's socket down (each closes on its own reactor).
    pub fn teardown(&self) {
        let io = {
            let mut q = lock(&self.queues);
            q.dead = true;
            std::mem::take(&mut q.io)
        };
        for e in io {
            // SAFETY: shutdown on a descriptor we own (a duplicate); no memory is passed.
            unsafe { libc::shutdown(e.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

/// The daemon's controllers by cntlid.
pub struct Registry {
    inner: Mutex<RegistryInner>,
    /// Live controllers, readable without the lock (control socket).
    live: std::sync::atomic::AtomicUsize,
    /// The ids this site hands out (each site of a mirror has its own range: controller ids
    /// are unique within a subsystem, and both sites present the same subsystems).
    ids: std::ops::RangeInclusive<u16>,
}

#[derive(Default)]
struct RegistryInner {
    ctrls: HashMap<u16, Arc<Controller>>,
    last: Option<u16>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(1..=MAX_CNTLID)
    }
}

impl Registry {
    /// A registry handing out controller ids in `ids` (within `1..=MAX_CNTLID`; clamped).
    pub fn new(ids: std::ops::RangeInclusive<u16>) -> Self {
        let lo = (*ids.start()).clamp(1, MAX_CNTLID);
        let hi = (*ids.end()).clamp(lo, MAX_CNTLID);
        Self {
            inner: Mutex::new(RegistryInner::default()),
            live: std::sync::atomic::AtomicUsize::new(0),
            ids: lo..=hi,
        }
    }

    /// The controller ids this registry hands out.
    pub fn ids(&self) -> std::ops::RangeInclusive<u16> {
        self.ids.clone()
    }

    /// Create a controller with a fresh cntlid (`None` when all ids are in use).
    pub fn create(
        &self,
        subsys: Option<Arc<Subsystem>>,
        hostnqn: &str,
        host_site: Option<Site>,
        hostid: [u8; 16],
        kato_ms: u32,
    ) -> Option<Arc<Controller>> {
        let mut r = lock(&self.inner);
        let (lo, hi) = (*self.ids.start(), *self.ids.end());
        let mut id = r.last.unwrap_or(hi);
        for _ in lo..=hi {
            id = if id >= hi || id < lo { lo } else { id + 1 };
            if let std::collections::hash_map::Entry::Vacant(slot) = r.ctrls.entry(id) {
                let c = Arc::new(Controller {
                    cntlid: id,
                    hostnqn: hostnqn.to_owned(),
                    host_site,
                    hostid,
                    io_queues: AtomicU16::new(if subsys.is_some() { MAX_IO_QUEUES } else { 0 }),
                    subsys,
                    enabled: AtomicBool::new(false),
                    kato_ms: AtomicU32::new(kato_ms),
                    queues: Mutex::new(Queues::default()),
                });
                slot.insert(Arc::clone(&c));
                r.last = Some(id);
                self.live.store(r.ctrls.len(), Ordering::Relaxed);
                return Some(c);
            }
        }
        None
    }

    /// The controller `cntlid`, if alive.
    pub fn get(&self, cntlid: u16) -> Option<Arc<Controller>> {
        lock(&self.inner).ctrls.get(&cntlid).cloned()
    }

    /// Remove `cntlid` and tear it down.
    pub fn remove(&self, cntlid: u16) {
        let c = {
            let mut r = lock(&self.inner);
            let c = r.ctrls.remove(&cntlid);
            self.live.store(r.ctrls.len(), Ordering::Relaxed);
            c
        };
        if let Some(c) = c {
            c.teardown();
        }
    }

    /// Number of live controllers (a relaxed read: no lock).
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// True when no controller is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_allocates_ids_and_teardown_blocks_attach() {
        let r = Registry::default();
        let a = r
            .create(
                Some(Arc::new(Subsystem::new("nqn.t:x".into(), vec![], &[0]))),
                "h",
                None,
                [0; 16],
                0,
            )
            .unwrap();
        let b = r
            .create(
                Some(Arc::new(Subsystem::new("nqn.t:x".into(), vec![], &[0]))),
                "h",
                None,
                [0; 16],
                0,
            )
            .unwrap();
        assert_ne!(a.cntlid, b.cntlid);
        let (s1, _s2) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = OwnedFd::from(s1);
        assert_eq!(a.attach_queue(0, &fd, (0, 0)), Err(AttachError::BadQid));
        assert_eq!(
            a.attach_queue(MAX_IO_QUEUES + 1, &fd, (0, 0)),
            Err(AttachError::BadQid)
        );
        a.attach_queue(1, &fd, (1, 7)).unwrap();
        assert_eq!(a.attach_queue(1, &fd, (0, 0)), Err(AttachError::InUse));
        assert_eq!(a.attached(), 1);
        assert_eq!(a.queue_at(1), Some((1, 7)));
        assert_eq!(a.queue_at(2), None);
        r.remove(a.cntlid);
        assert!(a.is_dead());
        assert_eq!(a.attach_queue(2, &fd, (0, 0)), Err(AttachError::Dead));
        assert!(r.get(a.cntlid).is_none());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_registry_hands_out_only_the_ids_of_its_range_and_wraps_within_it() {
        let r = Registry::new(0x7FF8..=0x7FFA);
        let ids: Vec<u16> = (0..3)
            .map(|_| {
                r.create(
                    Some(Arc::new(Subsystem::new("nqn.t:x".into(), vec![], &[0]))),
                    "h",
                    None,
                    [0; 16],
                    0,
                )
                .unwrap()
                .cntlid
            })
            .collect();
        assert_eq!(ids, vec![0x7FF8, 0x7FF9, 0x7FFA]);
        assert!(
            r.create(
                Some(Arc::new(Subsystem::new("nqn.t:x".into(), vec![], &[0]))),
                "h",
                None,
                [0; 16],
                0
            )
            .is_none(),
            "range full"
        );
        r.remove(0x7FF9);
        assert_eq!(
            r.create(
                Some(Arc::new(Subsystem::new("nqn.t:x".into(), vec![], &[0]))),
                "h",
                None,
                [0; 16],
                0
            )
            .unwrap()
            .cntlid,
            0x7FF9
        );
        // The default range is the whole dynamic range, starting at 1.
        let d = Registry::default();
        assert_eq!(d.ids(), 1..=MAX_CNTLID);
        assert_eq!(d.create(None, "h", None, [0; 16], 0).unwrap().cntlid, 1);
    }

    #[test]
    fn subsystem_hosts_and_namespaces() {
        let s = Subsystem::new("nqn.a".into(), vec!["host1".into()], &[3, 4]);
        assert!(s.allows(b"host1"));
        assert!(!s.allows(b"host2"));
        assert_eq!(s.ns(2).map(|n| n.volume), Some(4));
        assert!(s.ns(0).is_none() && s.ns(3).is_none());
        assert_eq!(s.nn(), 2);
    }

    #[test]
    fn a_namespace_change_numbers_its_copy_and_names_what_changed() {
        let a = Subsystem::at_runtime("nqn.a".into(), vec![], 8);
        let b = a.with_changed_namespaces(&[(1, 4), (3, 5)]);
        assert_eq!((a.ns_gen, b.ns_gen), (0, 1));
        assert!(!a.stale(), "not published yet");
        b.publish();
        assert!(a.stale() && !b.stale());
        assert_eq!(changed_nsids(&a, &b), vec![1, 3]);
        assert_eq!(b.resv_slot(1), 2, "nsid 3's slot");
        assert!(Arc::ptr_eq(&a.resv, &b.resv), "reservations kept");
        // Namespace 3 removed, 2 added: 1 stays as it was.
        let c = b.with_changed_namespaces(&[(1, 4), (2, 6)]);
        assert_eq!(changed_nsids(&b, &c), vec![2, 3]);
        assert_eq!(c.ns(1).map(|n| n.since), Some(1));
        // Removed and added again (same volume): changed all the same.
        let d = c.with_changed_namespaces(&[(2, 6)]);
        let e = d.with_changed_namespaces(&[(1, 4), (2, 6)]);
        assert_eq!(changed_nsids(&c, &e), vec![1]);
        assert_eq!(changed_nsids(&c, &c), Vec::<u32>::new());
        // Interleaved: 3 stays, 1 and 5 go, 2 and 6 come.
        let f = a.with_changed_namespaces(&[(1, 1), (3, 3), (5, 5)]);
        let g = f.with_changed_namespaces(&[(2, 2), (3, 3), (6, 6)]);
        assert_eq!(changed_nsids(&f, &g), vec![1, 2, 5, 6]);
        assert_eq!(changed_nsids(&g, &f), vec![1, 2, 5, 6]);
        // What Identify Controller reports does not move with the set.
        for s in [&a, &f, &g] {
            assert_eq!(
                (s.nn(), s.ana_grpmax(), s.ana_groups_max()),
                (MAX_NSID, 8, 8)
            );
        }
    }

    #[test]
    fn each_volume_is_its_own_ana_group() {
        // Namespaces 1 and 3 share volume 4; namespace 2 is volume 0.
        let s = Subsystem::new("nqn.a".into(), vec![], &[4, 0, 4]);
        let ids: Vec<u32> = s.namespaces.iter().map(|n| n.ana_group).collect();
        assert_eq!(ids, vec![5, 1, 5]);
        assert_eq!(
            s.ana_groups,
            vec![
                AnaGroup {
                    id: 1,
                    volume: 0,
                    nsids: vec![2]
                },
                AnaGroup {
                    id: 5,
                    volume: 4,
                    nsids: vec![1, 3]
                },
            ]
        );
        assert_eq!(s.ana_grpmax(), 5);
        assert_eq!(Subsystem::new("nqn.b".into(), vec![], &[]).ana_grpmax(), 0);
    }
}
