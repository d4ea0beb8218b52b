//! The witness's state: the persisted table, its file, and the rules that decide grants.
//!
//! Model: [`Table`] is everything that must survive a restart: per group `{epoch, holder,
//! preferred}`, per site the highest request counter accepted, and the groups released unused
//! ([`Table::unused`]). [`Arbiter`] wraps it with
//! what may be forgotten on a restart (when each site was last seen, whether a preferred site
//! asked and lost) and applies the rules of `docs/witness-protocol.md` to one request at a time.
//! It does no I/O: it tells the caller, per answer, how durable the table must be before the
//! answer leaves ([`Durability`]).
//!
//! Invariants:
//! - A group has at most one holder; every grant raises the group's epoch by at least one, so two
//!   grants never share an epoch; epochs never go down. A grant claimed back by its holder
//!   (`HOLDS`, a state older than the grant) is recorded at its own epoch, not a new one, and
//!   no other grant of a group nobody holds is made within the start grace, while it may come.
//! - Answers that reveal a grant or a release are produced only with `Durability::Now`, and the
//!   server sends them only after [`Table::save`] returned (fsync'd file and directory).
//! - A site's accepted counters strictly increase; a request at or below the highest is a
//!   replay and changes nothing.
//! - [`Table::load`] refuses any file that fails a check; it never substitutes an empty table
//!   for a damaged one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::proto::{
    Body, Claim, DenyReason, Epoch, GroupId, GroupView, Msg, ReleaseStatus, SiteId,
};

/// State file magic.
pub const STATE_MAGIC: &[u8; 8] = b"TBWSTATE";
/// State file version this build writes while no group is marked released unused (and reads).
pub const STATE_VERSION: u32 = 1;
/// State file version written while a group is marked released unused: version 1 plus those
/// marks ([`Table::unused`]); read too. An older witness refuses it (unsupported version).
pub const STATE_VERSION_UNUSED: u32 = 2;
const STATE_HEADER: usize = 32;
const SITE_REC: usize = 16;
const GROUP_REC: usize = 24;
const UNUSED_REC: usize = 24;
const CRC_LEN: usize = 4;

/// One group's persisted record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GroupRec {
    pub epoch: Epoch,
    pub holder: Option<SiteId>,
    pub preferred: Option<SiteId>,
}

impl GroupRec {
    /// A record equal to a group never seen: not written to the file.
    fn is_blank(&self) -> bool {
        *self == GroupRec::default()
    }
}

/// Why the state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state file {0} does not exist; start with --init to create a new, empty state \
         (this forgets every grant a previous witness made)"
    )]
    Missing(PathBuf),
    #[error("reading state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({what}); refusing to start")]
    Corrupt { path: PathBuf, what: Corruption },
    #[error("writing state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The check a state file failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("shorter than its header")]
    Short,
    #[error("bad magic")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u32),
    #[error("reserved bytes not zero")]
    Reserved,
    #[error("length does not match the record counts")]
    Length,
    #[error("checksum mismatch")]
    Checksum,
    #[error("site records out of order, duplicated or site 0")]
    Sites,
    #[error("group records out of order or duplicated")]
    Groups,
    #[error("a group has a holder but epoch 0")]
    Holder,
    #[error("an unused-release mark out of order, or not of a released group at its epoch")]
    Unused,
}

/// The persisted table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub groups: BTreeMap<GroupId, GroupRec>,
    /// Highest request counter accepted per site.
    pub counters: BTreeMap<SiteId, u64>,
    /// Groups released unused (RELEASE with `UNUSED`) since their last grant: the site that
    /// released and the epoch it released (the group's epoch, no holder). A request at the
    /// epoch before it from another site is not stale, once (docs/witness-protocol.md, "An
    /// unused release"). Persisted with the rest: before, kept in memory only, a witness
    /// restarted between the release and the peer's request refused the peer as stale, and
    /// the releasing site (its host restarted) could not serve either.
    pub unused: BTreeMap<GroupId, (SiteId, Epoch)>,
    /// How many times this state has been written (diagnostic).
    pub writes: u64,
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

impl Table {
    /// The file image (documented in docs/witness-protocol.md, "State file").
    pub fn to_bytes(&self) -> Vec<u8> {
        let groups: Vec<_> = self.groups.iter().filter(|(_, r)| !r.is_blank()).collect();
        let mut b = Vec::with_capacity(
            STATE_HEADER + SITE_REC * self.counters.len() + GROUP_REC * groups.len() + CRC_LEN,
        );
        b.extend_from_slice(STATE_MAGIC);
        // Version 1 (as before the marks) while none stands, so an older witness reads it.
        let version = if self.unused.is_empty() {
            STATE_VERSION
        } else {
            STATE_VERSION_UNUSED
        };
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&(self.counters.len() as u32).to_le_bytes());
        b.extend_from_slice(&(groups.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.unused.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.writes.to_le_bytes());
        for (site, counter) in &self.counters {
            b.extend_from_slice(&site.get().to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&counter.to_le_bytes());
        }
        for (g, r) in groups {
            b.extend_from_slice(&g.0.to_le_bytes());
            b.extend_from_slice(&r.epoch.0.to_le_bytes());
            b.extend_from_slice(&r.holder.map_or(0, SiteId::get).to_le_bytes());
            b.extend_from_slice(&r.preferred.map_or(0, SiteId::get).to_le_bytes());
        }
        for (g, (site, epoch)) in &self.unused {
            b.extend_from_slice(&g.0.to_le_bytes());
            b.extend_from_slice(&site.get().to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&epoch.0.to_le_bytes());
        }
        let crc = crc_fast::crc32_iscsi(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a file image; every check of the format is made.
    pub fn from_bytes(b: &[u8]) -> Result<Table, Corruption> {
        let u32_at = |at: usize| {
            b.get(at..at + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or(Corruption::Length)
        };
        let u64_at = |at: usize| {
            b.get(at..at + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or(Corruption::Length)
        };
        if b.len() < STATE_HEADER + CRC_LEN {
            return Err(Corruption::Short);
        }
        if &b[..8] != STATE_MAGIC {
            return Err(Corruption::Magic);
        }
        let version = u32_at(8)?;
        if version != STATE_VERSION && version != STATE_VERSION_UNUSED {
            return Err(Corruption::Version(version));
        }
        let sites = u32_at(12)? as u64;
        let groups = u32_at(16)? as u64;
        // Version 1: reserved, 0; version 2: the number of unused-release marks, at least one
        // (a table without one is written as version 1).
        let unused = u32_at(20)? as u64;
        if (version == STATE_VERSION) != (unused == 0) {
            return Err(Corruption::Reserved);
        }
        let want = (STATE_HEADER + CRC_LEN) as u64
            + sites * SITE_REC as u64
            + groups * GROUP_REC as u64
            + unused * UNUSED_REC as u64;
        if b.len() as u64 != want {
            return Err(Corruption::Length);
        }
        let body_end = b.len() - CRC_LEN;
        if crc_fast::crc32_iscsi(&b[..body_end]) != u32_at(body_end)? {
            return Err(Corruption::Checksum);
        }
        let mut t = Table {
            writes: u64_at(24)?,
            ..Table::default()
        };
        let mut at = STATE_HEADER;
        let mut prev_site = 0u32;
        for _ in 0..sites {
            let id = u32_at(at)?;
            if u32_at(at + 4)? != 0 {
                return Err(Corruption::Reserved);
            }
            let site = SiteId::new(id).ok_or(Corruption::Sites)?;
            if id <= prev_site {
                return Err(Corruption::Sites);
            }
            prev_site = id;
            t.counters.insert(site, u64_at(at + 8)?);
            at += SITE_REC;
        }
        let mut prev_group: Option<u64> = None;
        for _ in 0..groups {
            let g = u64_at(at)?;
            if prev_group.is_some_and(|p| g <= p) {
                return Err(Corruption::Groups);
            }
            prev_group = Some(g);
            let rec = GroupRec {
                epoch: Epoch(u64_at(at + 8)?),
                holder: SiteId::new(u32_at(at + 16)?),
                preferred: SiteId::new(u32_at(at + 20)?),
            };
            if rec.holder.is_some() && rec.epoch.0 == 0 {
                return Err(Corruption::Holder);
            }
            t.groups.insert(GroupId(g), rec);
            at += GROUP_REC;
        }
        let mut prev_group: Option<u64> = None;
        for _ in 0..unused {
            let g = u64_at(at)?;
            if prev_group.is_some_and(|p| g <= p) || u32_at(at + 12)? != 0 {
                return Err(Corruption::Unused);
            }
            prev_group = Some(g);
            let site = SiteId::new(u32_at(at + 8)?).ok_or(Corruption::Unused)?;
            let epoch = Epoch(u64_at(at + 16)?);
            // Only a released group at the epoch released (a grant clears the mark).
            match t.groups.get(&GroupId(g)) {
                Some(r) if r.holder.is_none() && r.epoch == epoch && epoch.0 > 0 => {}
                _ => return Err(Corruption::Unused),
            }
            t.unused.insert(GroupId(g), (site, epoch));
            at += UNUSED_REC;
        }
        Ok(t)
    }

    /// Reads the state file. A missing file is an empty table only when `init` is set.
    pub fn load(path: &Path, init: bool) -> Result<Table, StateError> {
        match std::fs::read(path) {
            Ok(b) => Table::from_bytes(&b).map_err(|what| StateError::Corrupt {
                path: path.to_owned(),
                what,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if init {
                    Ok(Table::default())
                } else {
                    Err(StateError::Missing(path.to_owned()))
                }
            }
            Err(source) => Err(StateError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes the table durably: `PATH.tmp`, fsync, rename over `PATH`, fsync the directory.
    /// On error the caller must stop (fail-stop): what is on disk is unknown.
    pub fn save(&mut self, path: &Path) -> Result<(), StateError> {
        self.writes += 1;
        let bytes = self.to_bytes();
        let tmp = tmp_path(path);
        let werr = |source| StateError::Write {
            path: path.to_owned(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(werr)?;
        f.write_all(&bytes).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(werr)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(werr)?;
        Ok(())
    }
}

/// How durable the table must be before an answer may be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Nothing changed that must persist.
    None,
    /// Only heartbeat counters advanced: write within a second, no need to wait.
    Coalesce,
    /// Write and fsync before the answer leaves.
    Now,
}

/// What to do with one accepted datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The counter was not above the site's highest: answered BEHIND, nothing done.
    Replay { highest: u64 },
    /// A site id not recorded while [`MAX_SITES`] are: dropped without an answer.
    TooManySites,
    /// Not a request (an answer type sent to the witness): drop.
    NotRequest,
    /// Send `body` (echoing the request's site and counter) once the table is `durability`.
    Answer { body: Body, durability: Durability },
}

/// The table plus the rules, and what the rules may forget on a restart.
#[derive(Debug)]
pub struct Arbiter {
    table: Table,
    tie_grace: Duration,
    /// After the start, plain requests for a group without a holder wait this long
    /// ([`Arbiter::with_start_grace`]; `tie_grace` unless set).
    start_grace: Duration,
    started: Instant,
    /// Last accepted request of any type per site (monotonic clock; memory only).
    last_seen: HashMap<SiteId, Instant>,
    /// Groups whose preferred site asked since the last grant or release and was told STALE.
    pref_lost: HashSet<GroupId>,
    /// Preferred-site conflicts already logged (once per group and site per run).
    conflicts_logged: HashSet<(GroupId, SiteId)>,
    /// When a full group table was last logged.
    full_logged: Option<Instant>,
    /// When a full site table was last logged.
    sites_full_logged: Option<Instant>,
}

/// Site ids the witness records at most (their counters): docs/witness-protocol.md, "Limits".
pub const MAX_SITES: usize = 1024;
/// Groups the witness records at most. Groups are never forgotten (a granted group keeps its
/// epoch), so this is what a witness can serve over its whole life: volumes created and
/// deleted, every pair sharing it.
pub const MAX_GROUPS: usize = 1 << 18;

fn ms_ceil(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

impl Arbiter {
    /// `now` is the start: every site counts as last seen then.
    pub fn new(table: Table, tie_grace: Duration, now: Instant) -> Self {
        Arbiter {
            table,
            tie_grace,
            start_grace: tie_grace,
            started: now,
            last_seen: HashMap::new(),
            pref_lost: HashSet::new(),
            conflicts_logged: HashSet::new(),
            full_logged: None,
            sites_full_logged: None,
        }
    }

    /// How long after the start a plain GRANT_REQUEST for a group without a holder is
    /// answered TIE_WAIT (docs/witness-protocol.md, "A witness that forgot a grant"): the time a
    /// holder this witness forgot has to claim its grant back.
    pub fn with_start_grace(mut self, start_grace: Duration) -> Self {
        self.start_grace = start_grace;
        self
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Writes the table durably (see [`Table::save`]).
    pub fn save(&mut self, path: &Path) -> Result<(), StateError> {
        self.table.save(path)
    }

    /// The current view of a group (a never-seen group: epoch 0, no holder, no preference).
    pub fn view(&self, group: GroupId) -> GroupView {
        let r = self.table.groups.get(&group).copied().unwrap_or_default();
        GroupView {
            group,
            epoch: r.epoch,
            holder: r.holder,
            preferred: r.preferred,
        }
    }

    /// Whether `group` is recorded or may be (the table not full); logs a full table at most
    /// once a minute.
    fn room_for(&mut self, now: Instant, group: GroupId, site: SiteId) -> bool {
        if self.table.groups.contains_key(&group) || self.table.groups.len() < MAX_GROUPS {
            return true;
        }
        if self
            .full_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60))
        {
            self.full_logged = Some(now);
            tracing::warn!(group = %group, site = site.get(), max = MAX_GROUPS,
                "the witness records no more groups: a new group is not created (check the sites' group ids)");
        }
        false
    }

    /// Applies a preferred claim (or, from a heartbeat, its absence). True if the record changed.
    /// An unknown group is recorded only when the claim records a preferred site (an empty
    /// record is what an unknown group reads as) and there is room.
    fn claim(
        &mut self,
        now: Instant,
        group: GroupId,
        site: SiteId,
        preferred: bool,
        heartbeat: bool,
    ) -> bool {
        if !self.table.groups.contains_key(&group)
            && (!preferred || !self.room_for(now, group, site))
        {
            return false;
        }
        let rec = self.table.groups.entry(group).or_default();
        match (rec.preferred, preferred) {
            (None, true) => {
                rec.preferred = Some(site);
                tracing::debug!(group = %group, site = site.get(), "preferred site recorded");
                true
            }
            (Some(p), false) if p == site && heartbeat => {
                rec.preferred = None;
                tracing::debug!(group = %group, site = site.get(), "preferred site withdrew");
                true
            }
            (Some(p), true) if p != site => {
                if self.conflicts_logged.insert((group, site)) {
                    tracing::warn!(
                        group = %group,
                        site = site.get(),
                        recorded = p.get(),
                        "preferred-site conflict: both sites claim the group; the recorded \
                         one stays preferred (check the sites' configuration)"
                    );
                }
                false
            }
            _ => false,
        }
    }

    /// Applies one authenticated request at `now`.
    pub fn handle(&mut self, now: Instant, msg: &Msg) -> Outcome {
        if !msg.body.is_request() {
            return Outcome::NotRequest;
        }
        let site = msg.site;
        let highest = self.table.counters.get(&site).copied().unwrap_or(0);
        if msg.counter <= highest {
            return Outcome::Replay { highest };
        }
        if highest == 0
            && !self.table.counters.contains_key(&site)
            && self.table.counters.len() >= MAX_SITES
        {
            if self
                .sites_full_logged
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60))
            {
                self.sites_full_logged = Some(now);
                tracing::warn!(
                    site = site.get(),
                    max = MAX_SITES,
                    "the witness records no more site ids: a request from a new one is dropped (check the sites' ids)"
                );
            }
            return Outcome::TooManySites;
        }
        self.table.counters.insert(site, msg.counter);
        self.last_seen.insert(site, now);
        match &msg.body {
            Body::Heartbeat { claims } => self.heartbeat(now, site, claims),
            Body::GrantRequest {
                group,
                known,
                preferred,
                holds,
            } => {
                let body = if *holds {
                    self.reclaim(now, site, *group, *known)
                } else {
                    self.grant_request(now, site, *group, *known, *preferred)
                };
                Outcome::Answer {
                    body,
                    durability: Durability::Now,
                }
            }
            Body::Release {
                group,
                epoch,
                unused,
            } => {
                let body = self.release(site, *group, *epoch, *unused);
                Outcome::Answer {
                    body,
                    durability: Durability::Now,
                }
            }
            _ => Outcome::NotRequest,
        }
    }

    fn heartbeat(&mut self, now: Instant, site: SiteId, claims: &[Claim]) -> Outcome {
        let mut changed = false;
        let mut views = Vec::with_capacity(claims.len());
        for c in claims {
            changed |= self.claim(now, c.group, site, c.preferred, true);
            views.push(self.view(c.group));
        }
        Outcome::Answer {
            body: Body::View { views },
            durability: if changed {
                Durability::Now
            } else {
                Durability::Coalesce
            },
        }
    }

    fn grant_request(
        &mut self,
        now: Instant,
        site: SiteId,
        group: GroupId,
        known: Epoch,
        preferred: bool,
    ) -> Body {
        if !self.room_for(now, group, site) {
            return Body::Deny {
                reason: DenyReason::Full,
                view: self.view(group),
                wait_ms: 0,
            };
        }
        self.claim(now, group, site, preferred, false);
        let rec = self.table.groups.get(&group).copied().unwrap_or_default();
        let view = self.view(group);
        let deny = |reason, wait_ms| Body::Deny {
            reason,
            view,
            wait_ms,
        };
        match rec.holder {
            Some(h) if h == site => return Body::Grant { view },
            Some(h) => {
                tracing::debug!(group = %group, site = site.get(), holder = h.get(), "denied: held");
                return deny(DenyReason::Held, 0);
            }
            None => {}
        }
        let is_preferred = rec.preferred == Some(site);
        let new_epoch = rec.epoch.0.max(known.0).checked_add(1);
        // Released unused at the group's epoch by another site: the epoch before it is as
        // current as any acknowledged write.
        let unused_before = self.table.unused.get(&group).is_some_and(|&(by, at)| {
            by != site && at == rec.epoch && known.0.checked_add(1) == Some(at.0)
        });
        let Some(new_epoch) = new_epoch.filter(|_| known >= rec.epoch || unused_before) else {
            if is_preferred {
                self.pref_lost.insert(group);
            }
            tracing::info!(
                group = %group, site = site.get(), known = known.0, epoch = rec.epoch.0,
                "denied: stale (the site missed a failover)"
            );
            return deny(DenyReason::Stale, 0);
        };
        // The start grace: a holder this witness does not know of (restarted from an older
        // state: a backup restored, or `--init`) claims its grant back within it (`reclaim`).
        let up = now.saturating_duration_since(self.started);
        if up < self.start_grace {
            tracing::debug!(group = %group, site = site.get(), "denied: the witness's start grace");
            return deny(DenyReason::TieWait, ms_ceil(self.start_grace - up));
        }
        if let Some(p) = rec.preferred
            && !is_preferred
            && !self.pref_lost.contains(&group)
        {
            let seen = self.last_seen.get(&p).copied().unwrap_or(self.started);
            let silent = now.saturating_duration_since(seen);
            if silent < self.tie_grace {
                return deny(DenyReason::TieWait, ms_ceil(self.tie_grace - silent));
            }
        }
        let rec = self.table.groups.entry(group).or_default();
        rec.epoch = Epoch(new_epoch);
        rec.holder = Some(site);
        self.pref_lost.remove(&group);
        self.table.unused.remove(&group);
        tracing::info!(group = %group, site = site.get(), epoch = new_epoch, unused_before,
            "granted");
        Body::Grant {
            view: self.view(group),
        }
    }

    /// GRANT_REQUEST with `HOLDS`: `site` serves alone on its grant of `group` at `held`, which
    /// this witness's record does not show (docs/witness-protocol.md, "A witness that forgot a
    /// grant"). With no holder recorded and an epoch below `held`, the record is older than
    /// that grant (the state restored from an older copy, or started anew): the grant is
    /// recorded again as it was (epoch `held`, holder `site`; not a new grant, so the epoch
    /// does not rise), persisted before the answer. Otherwise nothing changes: the holder's
    /// GRANT, another holder's HELD, and a record at `held` or later without a holder (the
    /// grant was released) STALE.
    fn reclaim(&mut self, now: Instant, site: SiteId, group: GroupId, held: Epoch) -> Body {
        if !self.room_for(now, group, site) {
            return Body::Deny {
                reason: DenyReason::Full,
                view: self.view(group),
                wait_ms: 0,
            };
        }
        let rec = self.table.groups.get(&group).copied().unwrap_or_default();
        let deny = |reason, view| Body::Deny {
            reason,
            view,
            wait_ms: 0,
        };
        match rec.holder {
            Some(h) if h == site => {
                return Body::Grant {
                    view: self.view(group),
                };
            }
            Some(h) => {
                tracing::error!(group = %group, site = site.get(), held = held.0, holder = h.get(),
                    epoch = rec.epoch.0,
                    "a site serving alone on a grant this witness forgot (restarted from an older state?) finds the group granted to another site since: both may have served alone");
                return deny(DenyReason::Held, self.view(group));
            }
            None if rec.epoch >= held => {
                tracing::info!(group = %group, site = site.get(), held = held.0, epoch = rec.epoch.0,
                    "denied: a grant claimed back that was released");
                return deny(DenyReason::Stale, self.view(group));
            }
            None => {}
        }
        let rec = self.table.groups.entry(group).or_default();
        rec.epoch = held;
        rec.holder = Some(site);
        self.pref_lost.remove(&group);
        self.table.unused.remove(&group);
        tracing::warn!(group = %group, site = site.get(), epoch = held.0,
            "a grant this witness did not know (its state older than the grant: a backup restored, or started with --init) claimed back by its holder: recorded again");
        Body::Grant {
            view: self.view(group),
        }
    }

    fn release(&mut self, site: SiteId, group: GroupId, epoch: Epoch, unused: bool) -> Body {
        let Some(rec) = self.table.groups.get_mut(&group) else {
            // Never recorded: nothing to release (epoch 0 reads as released already).
            let status = if epoch == Epoch(0) {
                ReleaseStatus::Ok
            } else {
                ReleaseStatus::NotHolder
            };
            return Body::State {
                status,
                view: self.view(group),
            };
        };
        let status = if rec.epoch != epoch {
            ReleaseStatus::NotHolder
        } else if rec.holder == Some(site) {
            rec.holder = None;
            self.pref_lost.remove(&group);
            if unused {
                self.table.unused.insert(group, (site, epoch));
            }
            tracing::info!(group = %group, site = site.get(), epoch = epoch.0, unused, "released");
            ReleaseStatus::Ok
        } else if rec.holder.is_none() {
            ReleaseStatus::Ok
        } else {
            ReleaseStatus::NotHolder
        };
        Body::State {
            status,
            view: self.view(group),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u32) -> SiteId {
        SiteId::new(n).expect("nonzero")
    }

    struct Rig {
        a: Arbiter,
        t0: Instant,
        counter: u64,
    }

    impl Rig {
        /// A witness up for its start grace already at the rig's time 0 (the tests of a
        /// restart make their own `Arbiter`).
        fn new(grace_ms: u64) -> Self {
            let started = Instant::now();
            let grace = Duration::from_millis(grace_ms);
            Rig {
                a: Arbiter::new(Table::default(), grace, started),
                t0: started + grace,
                counter: 100,
            }
        }
        fn send(&mut self, at_ms: u64, site: u32, body: Body) -> Body {
            self.counter += 1;
            let m = Msg {
                site: s(site),
                counter: self.counter,
                body,
            };
            match self.a.handle(self.t0 + Duration::from_millis(at_ms), &m) {
                Outcome::Answer { body, .. } => body,
                other => panic!("no answer: {other:?}"),
            }
        }
        fn ask(&mut self, at_ms: u64, site: u32, known: u64, preferred: bool) -> Body {
            let body = Body::GrantRequest {
                group: GroupId(1),
                known: Epoch(known),
                preferred,
                holds: false,
            };
            self.send(at_ms, site, body)
        }
    }

    fn granted(b: &Body) -> Option<u64> {
        match b {
            Body::Grant { view } => Some(view.epoch.0),
            _ => None,
        }
    }

    fn denied(b: &Body) -> Option<DenyReason> {
        match b {
            Body::Deny { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// At most MAX_GROUPS groups and MAX_SITES site ids are recorded: past that a new group
    /// is denied FULL or read as empty and a new site id gets no answer, and nothing about the
    /// recorded ones changes; a heartbeat without PREFERRED records nothing.
    #[test]
    fn records_are_bounded_and_a_full_table_changes_nothing() {
        let mut r = Rig::new(0);
        let hb = |group: u64, preferred: bool| Body::Heartbeat {
            claims: vec![Claim {
                group: GroupId(group),
                preferred,
            }],
        };
        r.send(0, 1, hb(1_000_000, false));
        assert!(
            r.a.table().groups.is_empty(),
            "a plain claim records nothing"
        );
        for g in 0..MAX_GROUPS as u64 {
            r.send(0, 1, hb(g, true));
        }
        assert_eq!(r.a.table().groups.len(), MAX_GROUPS);
        let full = GroupId(MAX_GROUPS as u64);
        let grant = Body::GrantRequest {
            group: full,
            known: Epoch(0),
            preferred: true,
            holds: false,
        };
        assert_eq!(denied(&r.send(1, 2, grant)), Some(DenyReason::Full));
        match r.send(2, 2, hb(full.0, true)) {
            Body::View { views } => assert_eq!(
                views[0],
                GroupView {
                    group: full,
                    epoch: Epoch(0),
                    holder: None,
                    preferred: None
                }
            ),
            other => panic!("{other:?}"),
        }
        match r.send(
            3,
            2,
            Body::Release {
                group: full,
                epoch: Epoch(4),
                unused: false,
            },
        ) {
            Body::State { status, .. } => assert_eq!(status, ReleaseStatus::NotHolder),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.a.table().groups.len(), MAX_GROUPS, "nothing created");
        // A recorded group is still granted.
        assert_eq!(granted(&r.ask(4, 1, 0, true)), Some(1));
        // Site ids: sites 1 and 2 are recorded; fill to MAX_SITES, then a new one is dropped.
        for site in 3..=MAX_SITES as u32 {
            r.send(5, site, hb(1, false));
        }
        assert_eq!(r.a.table().counters.len(), MAX_SITES);
        r.counter += 1;
        let m = Msg {
            site: s(MAX_SITES as u32 + 1),
            counter: r.counter,
            body: hb(1, false),
        };
        assert!(matches!(
            r.a.handle(r.t0 + Duration::from_millis(6), &m),
            Outcome::TooManySites
        ));
        assert_eq!(r.a.table().counters.len(), MAX_SITES);
        // A recorded site still gets answers.
        assert!(matches!(r.send(7, 2, hb(1, false)), Body::View { .. }));
    }

    #[test]
    fn first_request_wins_and_holder_is_reanswered_same_epoch() {
        let mut r = Rig::new(1000);
        assert_eq!(granted(&r.ask(0, 1, 0, false)), Some(1));
        assert_eq!(denied(&r.ask(1, 2, 0, false)), Some(DenyReason::Held));
        assert_eq!(granted(&r.ask(2, 1, 0, false)), Some(1));
        assert_eq!(r.a.table().groups[&GroupId(1)].holder, Some(s(1)));
    }

    #[test]
    fn tie_rule_waits_for_a_live_preferred_site() {
        let mut r = Rig::new(1000);
        // Site 2 is preferred and heartbeats.
        let hb = Body::Heartbeat {
            claims: vec![Claim {
                group: GroupId(1),
                preferred: true,
            }],
        };
        r.send(0, 2, hb.clone());
        match r.ask(300, 1, 0, false) {
            Body::Deny {
                reason: DenyReason::TieWait,
                wait_ms,
                view,
            } => {
                assert_eq!(wait_ms, 700);
                assert_eq!(view.preferred, Some(s(2)));
            }
            other => panic!("{other:?}"),
        }
        r.send(900, 2, Body::Heartbeat { claims: vec![] });
        assert_eq!(denied(&r.ask(1800, 1, 0, false)), Some(DenyReason::TieWait));
        // Silent for the full grace since 900: site 1 wins.
        assert_eq!(granted(&r.ask(1900, 1, 0, false)), Some(1));
        assert_eq!(denied(&r.ask(1901, 2, 0, true)), Some(DenyReason::Held));
    }

    #[test]
    fn preferred_site_asking_wins_the_tie() {
        let mut r = Rig::new(1000);
        r.ask(0, 2, 0, true); // records 2 as preferred and grants it
        r.send(
            1,
            2,
            Body::Release {
                group: GroupId(1),
                epoch: Epoch(1),
                unused: false,
            },
        );
        assert_eq!(denied(&r.ask(10, 1, 1, false)), Some(DenyReason::TieWait));
        assert_eq!(granted(&r.ask(20, 2, 1, true)), Some(2));
        assert_eq!(denied(&r.ask(30, 1, 1, false)), Some(DenyReason::Held));
    }

    #[test]
    fn stale_preferred_site_loses_and_releases_the_tie() {
        let mut r = Rig::new(1000);
        r.ask(0, 1, 0, false); // epoch 1 to site 1 (no preference yet)
        r.send(
            1,
            1,
            Body::Release {
                group: GroupId(1),
                epoch: Epoch(1),
                unused: false,
            },
        );
        // Site 2 (preferred) never learned epoch 1.
        assert_eq!(denied(&r.ask(10, 2, 0, true)), Some(DenyReason::Stale));
        // Preferred asked and lost: no need to wait for its silence.
        assert_eq!(granted(&r.ask(20, 1, 1, false)), Some(2));
    }

    /// Site 1 holds the group at epoch 2 and serves alone; the witness is restarted from an
    /// older state (a backup taken at epoch 1, released; or none at all, `--init`), which does
    /// not know that grant. Site 2, in sync at epoch 1, asks: it must not be granted at once
    /// (epoch 2 again: two sites serving alone); the holder gets the start grace to claim its
    /// grant back. Failed before: site 2 was granted epoch 2 at once.
    #[test]
    fn a_witness_restarted_from_an_older_state_grants_nobody_during_its_start_grace() {
        let mut r = Rig::new(1000);
        assert_eq!(granted(&r.ask(0, 1, 0, false)), Some(1));
        r.send(1, 1, release(1, false));
        let backup = r.a.table().clone();
        assert_eq!(granted(&r.ask(2000, 1, 1, false)), Some(2));
        for older in [backup, Table::default()] {
            let t1 = r.t0 + Duration::from_secs(10);
            let mut a = Arbiter::new(older, Duration::from_millis(1000), t1);
            let m = Msg {
                site: s(2),
                counter: 10_000,
                body: Body::GrantRequest {
                    group: GroupId(1),
                    known: Epoch(1),
                    preferred: false,
                    holds: false,
                },
            };
            match a.handle(t1 + Duration::from_millis(100), &m) {
                Outcome::Answer {
                    body:
                        Body::Deny {
                            reason: DenyReason::TieWait,
                            wait_ms,
                            ..
                        },
                    ..
                } => assert_eq!(wait_ms, 900),
                other => panic!("site 2 answered at once after a restart: {other:?}"),
            }
            // The holder claims its grant back (it saw the word: no holder, an older epoch):
            // recorded as it was, epoch 2; site 2 is then denied, within the grace or after.
            let ask = |a: &mut Arbiter, at: u64, site: u32, counter: u64, known: u64, holds| {
                let m = Msg {
                    site: s(site),
                    counter,
                    body: Body::GrantRequest {
                        group: GroupId(1),
                        known: Epoch(known),
                        preferred: false,
                        holds,
                    },
                };
                match a.handle(t1 + Duration::from_millis(at), &m) {
                    Outcome::Answer { body, durability } => {
                        assert_eq!(durability, Durability::Now);
                        body
                    }
                    other => panic!("{other:?}"),
                }
            };
            assert_eq!(granted(&ask(&mut a, 300, 1, 10_000, 2, true)), Some(2));
            assert_eq!(a.view(GroupId(1)).holder, Some(s(1)));
            assert_eq!(
                denied(&ask(&mut a, 400, 2, 10_001, 1, false)),
                Some(DenyReason::Held)
            );
            assert_eq!(
                denied(&ask(&mut a, 1500, 2, 10_002, 1, false)),
                Some(DenyReason::Held)
            );
            assert_eq!(
                granted(&ask(&mut a, 1600, 1, 10_003, 2, true)),
                Some(2),
                "the holder re-answered"
            );
            // A claim back is no grant: another site's, or once released, it changes nothing.
            assert_eq!(
                denied(&ask(&mut a, 1700, 2, 10_004, 5, true)),
                Some(DenyReason::Held)
            );
            r_release(&mut a, t1 + Duration::from_millis(1800), 1, 2);
            assert_eq!(
                denied(&ask(&mut a, 1900, 1, 15_001, 2, true)),
                Some(DenyReason::Stale)
            );
            assert_eq!(a.view(GroupId(1)).holder, None);
            assert_eq!(granted(&ask(&mut a, 2000, 2, 15_002, 2, false)), Some(3));
        }
    }

    fn r_release(a: &mut Arbiter, at: Instant, site: u32, epoch: u64) {
        let m = Msg {
            site: s(site),
            counter: 15_000,
            body: release(epoch, false),
        };
        match a.handle(at, &m) {
            Outcome::Answer {
                body: Body::State { status, .. },
                ..
            } => assert_eq!(status, ReleaseStatus::Ok),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn restarted_witness_gives_the_preferred_site_a_full_grace() {
        let mut r = Rig::new(500);
        r.ask(0, 2, 0, true);
        r.send(
            1,
            2,
            Body::Release {
                group: GroupId(1),
                epoch: Epoch(1),
                unused: false,
            },
        );
        let table = r.a.table().clone();
        let t1 = r.t0 + Duration::from_secs(10);
        let mut a = Arbiter::new(table, Duration::from_millis(500), t1);
        let m = |c, at| {
            (
                Msg {
                    site: s(1),
                    counter: c,
                    body: Body::GrantRequest {
                        group: GroupId(1),
                        known: Epoch(1),
                        preferred: false,
                        holds: false,
                    },
                },
                t1 + Duration::from_millis(at),
            )
        };
        let (msg, at) = m(1000, 100);
        assert!(matches!(
            a.handle(at, &msg),
            Outcome::Answer {
                body: Body::Deny {
                    reason: DenyReason::TieWait,
                    wait_ms: 400,
                    ..
                },
                ..
            }
        ));
        let (msg, at) = m(1001, 500);
        assert!(matches!(
            a.handle(at, &msg),
            Outcome::Answer {
                body: Body::Grant { .. },
                durability: Durability::Now
            }
        ));
    }

    #[test]
    fn replayed_and_older_counters_are_dropped() {
        let mut r = Rig::new(0);
        let m = Msg {
            site: s(1),
            counter: 500,
            body: Body::Heartbeat { claims: vec![] },
        };
        assert!(matches!(r.a.handle(r.t0, &m), Outcome::Answer { .. }));
        assert_eq!(r.a.handle(r.t0, &m), Outcome::Replay { highest: 500 });
        let older = Msg {
            counter: 499,
            ..m.clone()
        };
        assert_eq!(r.a.handle(r.t0, &older), Outcome::Replay { highest: 500 });
        // Another site has its own counter.
        let other = Msg { site: s(2), ..m };
        assert!(matches!(r.a.handle(r.t0, &other), Outcome::Answer { .. }));
    }

    #[test]
    fn release_rules() {
        let mut r = Rig::new(0);
        r.ask(0, 1, 0, false);
        let rel = |e| Body::Release {
            group: GroupId(1),
            epoch: Epoch(e),
            unused: false,
        };
        let status = |b: Body| match b {
            Body::State { status, view } => (status, view.holder, view.epoch.0),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            status(r.send(1, 2, rel(1))),
            (ReleaseStatus::NotHolder, Some(s(1)), 1)
        );
        assert_eq!(
            status(r.send(2, 1, rel(0))),
            (ReleaseStatus::NotHolder, Some(s(1)), 1)
        );
        assert_eq!(status(r.send(3, 1, rel(1))), (ReleaseStatus::Ok, None, 1));
        assert_eq!(status(r.send(4, 1, rel(1))), (ReleaseStatus::Ok, None, 1));
        assert_eq!(granted(&r.ask(5, 2, 1, false)), Some(2));
    }

    fn release(epoch: u64, unused: bool) -> Body {
        Body::Release {
            group: GroupId(1),
            epoch: Epoch(epoch),
            unused,
        }
    }

    fn released(b: Body) -> (ReleaseStatus, Option<SiteId>, u64) {
        match b {
            Body::State { status, view } => (status, view.holder, view.epoch.0),
            other => panic!("{other:?}"),
        }
    }

    /// Both sites in sync at epoch 1; site 1 then granted epoch 2 (its answer lost, the peer
    /// denied while it holds the group), and gives it back, `unused` or not.
    fn given_back_after_a_lost_answer(unused: bool) -> Rig {
        let mut r = Rig::new(0);
        assert_eq!(granted(&r.ask(0, 1, 0, false)), Some(1));
        assert_eq!(
            released(r.send(1, 1, release(1, false))).0,
            ReleaseStatus::Ok
        );
        assert_eq!(granted(&r.ask(2, 1, 1, false)), Some(2));
        assert_eq!(denied(&r.ask(3, 2, 1, false)), Some(DenyReason::Held));
        assert_eq!(
            released(r.send(4, 1, release(2, unused))),
            (ReleaseStatus::Ok, None, 2)
        );
        r
    }

    #[test]
    fn an_unused_release_lets_the_peer_ask_at_the_epoch_before_it_once() {
        let mut r = given_back_after_a_lost_answer(true);
        // Below the epoch before the grant: it missed a grant that may have been served on.
        assert_eq!(denied(&r.ask(5, 2, 0, false)), Some(DenyReason::Stale));
        assert_eq!(granted(&r.ask(6, 2, 1, false)), Some(3));
        assert_eq!(
            granted(&r.ask(7, 2, 1, false)),
            Some(3),
            "the holder re-answered"
        );
        assert_eq!(denied(&r.ask(8, 1, 1, false)), Some(DenyReason::Held));
        // That grant consumed the mark: given back plain, nobody is let through below 3.
        assert_eq!(
            released(r.send(9, 2, release(3, false))).0,
            ReleaseStatus::Ok
        );
        assert_eq!(denied(&r.ask(10, 2, 2, false)), Some(DenyReason::Stale));
        assert_eq!(denied(&r.ask(11, 1, 2, false)), Some(DenyReason::Stale));
        assert_eq!(granted(&r.ask(12, 1, 3, false)), Some(4));
    }

    #[test]
    fn a_plain_release_lets_no_stale_request_through() {
        let mut r = given_back_after_a_lost_answer(false);
        assert_eq!(denied(&r.ask(5, 2, 1, false)), Some(DenyReason::Stale));
        // An unused release retransmitted after it (the group released already): nothing set.
        assert_eq!(
            released(r.send(6, 1, release(2, true))).0,
            ReleaseStatus::Ok
        );
        assert_eq!(denied(&r.ask(7, 2, 1, false)), Some(DenyReason::Stale));
        // An unused release from a site that does not hold the group: nothing set.
        let mut r = Rig::new(0);
        r.ask(0, 1, 0, false);
        r.send(1, 1, release(1, false));
        r.ask(2, 1, 1, false);
        assert_eq!(
            released(r.send(3, 2, release(2, true))),
            (ReleaseStatus::NotHolder, Some(s(1)), 2)
        );
        r.send(4, 1, release(2, false));
        assert_eq!(denied(&r.ask(5, 2, 1, false)), Some(DenyReason::Stale));
    }

    #[test]
    fn the_site_that_released_unused_is_stale_at_the_epoch_before_it() {
        // Its host restarted: its replica may lack writes the peer kept; the witness cannot
        // tell whether it is in sync, so it is refused, and the peer's way stays open.
        let mut r = given_back_after_a_lost_answer(true);
        assert_eq!(denied(&r.ask(5, 1, 1, false)), Some(DenyReason::Stale));
        assert_eq!(granted(&r.ask(6, 2, 1, false)), Some(3));
    }

    /// The mark is in the state file: a witness restarted between the unused release and the
    /// peer's request (a crash, an upgrade) still lets that one request through. Failed before
    /// (the mark was in memory only): the peer was refused as stale, and the releasing site,
    /// whose host restarted, cannot serve either: both sites stopped until the link returned or
    /// an operator took over.
    #[test]
    fn a_restarted_witness_keeps_an_unused_release() {
        let mut r = given_back_after_a_lost_answer(true);
        let bytes = r.a.table().to_bytes();
        r.a = Arbiter::new(
            Table::from_bytes(&bytes).expect("state file"),
            Duration::ZERO,
            r.t0 + Duration::from_millis(5),
        );
        // The releasing site is still refused; the peer is granted, once.
        assert_eq!(denied(&r.ask(6, 1, 1, false)), Some(DenyReason::Stale));
        assert_eq!(granted(&r.ask(7, 2, 1, false)), Some(3));
        r.send(8, 2, release(3, false));
        let bytes = r.a.table().to_bytes();
        r.a = Arbiter::new(
            Table::from_bytes(&bytes).expect("state file"),
            Duration::ZERO,
            r.t0 + Duration::from_millis(9),
        );
        assert_eq!(denied(&r.ask(10, 1, 2, false)), Some(DenyReason::Stale));
    }

    #[test]
    fn the_tie_rule_still_holds_after_an_unused_release() {
        // Site 2 preferred and alive: site 1's request at the epoch before is not stale but
        // waits the tie out like any other.
        let mut r = Rig::new(1000);
        assert_eq!(granted(&r.ask(0, 2, 0, true)), Some(1));
        r.send(1, 2, release(1, false));
        assert_eq!(granted(&r.ask(2000, 2, 1, true)), Some(2));
        r.send(2001, 2, release(2, true));
        assert_eq!(denied(&r.ask(2002, 1, 1, false)), Some(DenyReason::TieWait));
        assert_eq!(granted(&r.ask(3100, 1, 1, false)), Some(3));
    }

    #[test]
    fn known_epoch_above_the_witness_keeps_epochs_rising() {
        let mut r = Rig::new(0);
        assert_eq!(granted(&r.ask(0, 1, 41, false)), Some(42));
        assert_eq!(denied(&r.ask(1, 1, u64::MAX, false)), None); // holder: re-granted
        r.send(
            2,
            1,
            Body::Release {
                group: GroupId(1),
                epoch: Epoch(42),
                unused: false,
            },
        );
        assert_eq!(
            denied(&r.ask(3, 2, u64::MAX, false)),
            Some(DenyReason::Stale)
        );
    }

    #[test]
    fn preferred_conflicts_keep_the_first_and_withdrawal_clears() {
        let mut r = Rig::new(1000);
        let hb = |p| Body::Heartbeat {
            claims: vec![Claim {
                group: GroupId(1),
                preferred: p,
            }],
        };
        r.send(0, 1, hb(true));
        match r.send(1, 2, hb(true)) {
            Body::View { views } => assert_eq!(views[0].preferred, Some(s(1))),
            other => panic!("{other:?}"),
        }
        r.send(2, 1, hb(false));
        assert_eq!(r.a.view(GroupId(1)).preferred, None);
    }

    #[test]
    fn state_file_round_trips_and_every_corruption_is_refused() {
        let mut t = Table::default();
        t.counters.insert(s(1), 17);
        t.counters.insert(s(9), u64::MAX);
        for g in 0..50u64 {
            t.groups.insert(
                GroupId(g * 3),
                GroupRec {
                    epoch: Epoch(g + 1),
                    holder: SiteId::new((g % 3) as u32),
                    preferred: SiteId::new((g % 2) as u32 + 1),
                },
            );
        }
        t.groups.insert(GroupId(1000), GroupRec::default()); // blank: not written
        let b = t.to_bytes();
        assert_eq!(b.len(), 36 + 2 * 16 + 50 * 24);
        let back = Table::from_bytes(&b).expect("parse");
        t.groups.remove(&GroupId(1000));
        assert_eq!(back, t);
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(Table::from_bytes(&bad).is_err(), "flip at {i}");
        }
        for n in 0..b.len() {
            assert!(Table::from_bytes(&b[..n]).is_err(), "truncated to {n}");
        }
    }

    /// A table with unused-release marks is written as version 2 (and read back); without
    /// one, as version 1, byte for byte as before the marks, so an older witness reads it.
    /// A mark of a group held, at another epoch, or unknown is refused.
    #[test]
    fn unused_marks_are_a_version_2_file_and_checked() {
        let mut t = Table::default();
        t.counters.insert(s(1), 7);
        for g in 1..=3u64 {
            t.groups.insert(
                GroupId(g),
                GroupRec {
                    epoch: Epoch(g + 1),
                    holder: None,
                    preferred: Some(s(2)),
                },
            );
        }
        let v1 = t.to_bytes();
        assert_eq!(v1[8..12], 1u32.to_le_bytes());
        assert_eq!(v1[20..24], [0; 4]);
        t.unused.insert(GroupId(1), (s(1), Epoch(2)));
        t.unused.insert(GroupId(3), (s(2), Epoch(4)));
        let b = t.to_bytes();
        assert_eq!(b[8..12], 2u32.to_le_bytes());
        assert_eq!(b.len(), 36 + 16 + 3 * 24 + 2 * 24);
        assert_eq!(Table::from_bytes(&b), Ok(t.clone()));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(Table::from_bytes(&bad).is_err(), "flip at {i}");
        }
        let reseal = |mut b: Vec<u8>| {
            let n = b.len() - CRC_LEN;
            let crc = crc_fast::crc32_iscsi(&b[..n]);
            b[n..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let mark_at = 36 + 16 + 3 * 24 - CRC_LEN;
        // The mark's epoch not the group's.
        let mut bad = b.clone();
        bad[mark_at + 16] = 3;
        assert_eq!(Table::from_bytes(&reseal(bad)), Err(Corruption::Unused));
        // A mark of a group not recorded.
        let mut bad = b.clone();
        bad[mark_at] = 9;
        assert!(Table::from_bytes(&reseal(bad)).is_err());
        // A mark of a held group.
        let mut held = t.clone();
        held.groups.get_mut(&GroupId(1)).expect("group").holder = Some(s(2));
        assert_eq!(Table::from_bytes(&held.to_bytes()), Err(Corruption::Unused));
        // Version 2 without a mark, or version 1 with one.
        let mut bad = v1.clone();
        bad[8] = 2;
        assert_eq!(Table::from_bytes(&reseal(bad)), Err(Corruption::Reserved));
    }

    #[test]
    fn save_then_load_and_missing_file_needs_init() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("w.state");
        assert!(matches!(
            Table::load(&p, false),
            Err(StateError::Missing(_))
        ));
        let mut t = Table::load(&p, true).expect("init");
        t.counters.insert(s(3), 5);
        t.save(&p).expect("save");
        assert_eq!(Table::load(&p, false).expect("load"), t);
        assert!(!tmp_path(&p).exists());
    }
}
