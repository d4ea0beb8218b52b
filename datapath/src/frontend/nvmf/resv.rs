//! Reservations (NVMe base spec, "Reservations"): per namespace, shared by every controller of
//! the subsystem, persisted across restarts in one state file per subsystem when `[nvmf]
//! state_dir` is set (in memory only otherwise; `docs/nvmf.md`).
//!
//! Model: a subsystem's [`ResvTable`] keeps every namespace's registrants and reservation
//! behind one `Mutex`, taken only by the reservation commands and by a queue re-evaluating its
//! permission. The I/O path reads one atomic per namespace, the *version*, bumped after every
//! change: a queue caches (version, may read, may write) per namespace and takes the lock only
//! when the version moved.
//!
//! Hosts are identified by the 128-bit Host Identifier of their Connect data (NVMe over
//! Fabrics); every controller of a host shares its registration.
//!
//! Invariants:
//! - A change is applied to a copy, written to the state file (write, fsync, rename, fsync of
//!   the directory) and only then made visible; a failed write leaves the old state in force
//!   and the command fails with "internal error".
//! - The version is bumped (Release) after the new state is in place under the lock, so a
//!   queue that sees the new version and then takes the lock reads the new state.

use super::cmd::Status;
use crate::transport::cursor::Cursor;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use thiserror::Error;

/// Reservation types (RTYPE).
pub mod rtype {
    /// Write Exclusive.
    pub const WRITE_EXCLUSIVE: u8 = 1;
    /// Exclusive Access.
    pub const EXCLUSIVE_ACCESS: u8 = 2;
    /// Write Exclusive - Registrants Only.
    pub const WE_REGISTRANTS_ONLY: u8 = 3;
    /// Exclusive Access - Registrants Only.
    pub const EA_REGISTRANTS_ONLY: u8 = 4;
    /// Write Exclusive - All Registrants.
    pub const WE_ALL_REGISTRANTS: u8 = 5;
    /// Exclusive Access - All Registrants.
    pub const EA_ALL_REGISTRANTS: u8 = 6;
}

/// Most registrants per namespace (a new registration beyond it fails with Internal Error).
pub const MAX_REGISTRANTS: usize = 1024;

/// Version of the state file format.
pub const FILE_VERSION: u32 = 1;
/// Size of the extended Reservation Report header and of each registrant entry.
pub const REPORT_EXT_LEN: usize = 64;

/// Errors loading or saving the state.
#[derive(Debug, Error)]
pub enum ResvError {
    /// Reading, writing or syncing a state file failed.
    #[error("reservation state {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A state file that does not parse or belongs to another subsystem.
    #[error("reservation state {path} is invalid")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A state file of another format version or subsystem.
    #[error("reservation state {path} is for {what}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What it is for instead.
        what: String,
    },
}

/// A registered host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registrant {
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Reservation key.
    pub rkey: u64,
}

/// One namespace's reservation state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NsResv {
    /// Persistent Reservation Generation (PRGEN): counts registration changes and preemptions.
    pub generation: u32,
    /// Reservation type (0: no reservation).
    pub rtype: u8,
    /// Holder (for the All Registrants types every registrant holds it; this is who took it).
    pub holder: Option<[u8; 16]>,
    /// Registrants in registration order.
    pub registrants: Vec<Registrant>,
}

/// What a host may do on a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Read-class commands (Read, Compare).
    pub read: bool,
    /// Write-class commands (Write, Write Zeroes, Dataset Management, Flush).
    pub write: bool,
}

const CONFLICT: Status = Status::RESERVATION_CONFLICT;

fn all_registrants(t: u8) -> bool {
    matches!(t, rtype::WE_ALL_REGISTRANTS | rtype::EA_ALL_REGISTRANTS)
}

impl NsResv {
    fn reg(&self, host: &[u8; 16]) -> Option<&Registrant> {
        self.registrants.iter().find(|r| &r.hostid == host)
    }

    fn is_holder(&self, host: &[u8; 16]) -> bool {
        match self.rtype {
            0 => false,
            t if all_registrants(t) => self.reg(host).is_some(),
            _ => self.holder.as_ref() == Some(host),
        }
    }

    /// What `host` may do now.
    pub fn access(&self, host: &[u8; 16]) -> Access {
        if self.rtype == 0 || self.is_holder(host) {
            return Access {
                read: true,
                write: true,
            };
        }
        let registered = self.reg(host).is_some();
        match self.rtype {
            rtype::WRITE_EXCLUSIVE => Access {
                read: true,
                write: false,
            },
            rtype::EXCLUSIVE_ACCESS => Access {
                read: false,
                write: false,
            },
            rtype::WE_REGISTRANTS_ONLY | rtype::WE_ALL_REGISTRANTS => Access {
                read: true,
                write: registered,
            },
            _ => Access {
                read: registered,
                write: registered,
            },
        }
    }

    fn remove(&mut self, host: &[u8; 16]) {
        self.registrants.retain(|r| &r.hostid != host);
        if self.holder.as_ref() != Some(host) {
            return;
        }
        if all_registrants(self.rtype)
            && let Some(next) = self.registrants.first()
        {
            self.holder = Some(next.hostid);
        } else {
            self.holder = None;
            self.rtype = 0;
        }
    }

    /// Remove every registrant with key `key` (except `keep`); false when none had it.
    fn remove_key(&mut self, key: u64, keep: Option<&[u8; 16]>) -> bool {
        let victims: Vec<[u8; 16]> = self
            .registrants
            .iter()
            .filter(|r| r.rkey == key && Some(&r.hostid) != keep)
            .map(|r| r.hostid)
            .collect();
        for h in &victims {
            self.remove(h);
        }
        !victims.is_empty()
    }

    /// Reservation Register. `action`: 0 register, 1 unregister, 2 replace.
    pub fn register(
        &mut self,
        host: &[u8; 16],
        action: u8,
        iekey: bool,
        crkey: u64,
        nrkey: u64,
    ) -> Result<(), Status> {
        let current = self.reg(host).map(|r| r.rkey);
        match (action, current) {
            (0, Some(k)) if k == nrkey => return Ok(()),
            (0, Some(_)) => return Err(CONFLICT),
            // Bounded, so a namespace's state always fits one replication message.
            (0, None) if self.registrants.len() >= MAX_REGISTRANTS => {
                return Err(Status::INTERNAL);
            }
            (0, None) => self.registrants.push(Registrant {
                hostid: *host,
                rkey: nrkey,
            }),
            (1 | 2, None) => return Err(CONFLICT),
            (1 | 2, Some(k)) if !iekey && k != crkey => return Err(CONFLICT),
            (1, Some(_)) => self.remove(host),
            (2, Some(_)) => {
                for r in self.registrants.iter_mut().filter(|r| &r.hostid == host) {
                    r.rkey = nrkey;
                }
            }
            _ => return Err(Status::INVALID_FIELD),
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    /// Reservation Acquire. `action`: 0 acquire, 1 preempt, 2 preempt and abort (no command
    /// is aborted: the preempted hosts' commands at the device finish).
    pub fn acquire(
        &mut self,
        host: &[u8; 16],
        action: u8,
        t: u8,
        crkey: u64,
        prkey: u64,
    ) -> Result<(), Status> {
        if !(rtype::WRITE_EXCLUSIVE..=rtype::EA_ALL_REGISTRANTS).contains(&t) {
            return Err(Status::INVALID_FIELD);
        }
        if self.reg(host).map(|r| r.rkey) != Some(crkey) {
            return Err(CONFLICT);
        }
        match action {
            0 => {
                if self.rtype == 0 {
                    self.rtype = t;
                    self.holder = Some(*host);
                    Ok(())
                } else if self.is_holder(host) && self.rtype == t {
                    Ok(())
                } else {
                    Err(CONFLICT)
                }
            }
            1 | 2 => {
                let ok = if self.rtype == 0 {
                    if prkey == 0 {
                        return Err(Status::INVALID_FIELD);
                    }
                    self.remove_key(prkey, None)
                } else if all_registrants(self.rtype) {
                    if prkey == 0 {
                        self.rtype = t;
                        self.holder = Some(*host);
                        let others: Vec<[u8; 16]> = self
                            .registrants
                            .iter()
                            .filter(|r| &r.hostid != host)
                            .map(|r| r.hostid)
                            .collect();
                        for h in &others {
                            self.remove(h);
                        }
                        true
                    } else {
                        self.remove_key(prkey, None)
                    }
                } else if self
                    .holder
                    .and_then(|h| self.reg(&h).map(|r| r.rkey))
                    .is_some_and(|k| k == prkey)
                {
                    self.rtype = t;
                    self.holder = Some(*host);
                    self.remove_key(prkey, Some(host));
                    true
                } else if prkey != 0 {
                    self.remove_key(prkey, None)
                } else {
                    return Err(Status::INVALID_FIELD);
                };
                if !ok {
                    return Err(CONFLICT);
                }
                self.generation = self.generation.wrapping_add(1);
                Ok(())
            }
            _ => Err(Status::INVALID_FIELD),
        }
    }

    /// Reservation Release. `action`: 0 release, 1 clear.
    pub fn release(
        &mut self,
        host: &[u8; 16],
        action: u8,
        t: u8,
        crkey: u64,
    ) -> Result<(), Status> {
        if self.reg(host).map(|r| r.rkey) != Some(crkey) {
            return Err(CONFLICT);
        }
        match action {
            0 => {
                if !self.is_holder(host) {
                    return Ok(());
                }
                if self.rtype != t {
                    return Err(Status::INVALID_FIELD);
                }
                self.rtype = 0;
                self.holder = None;
                Ok(())
            }
            1 => {
                self.rtype = 0;
                self.holder = None;
                self.registrants.clear();
                self.generation = self.generation.wrapping_add(1);
                Ok(())
            }
            _ => Err(Status::INVALID_FIELD),
        }
    }

    /// The extended Reservation Status data structure (EDS = 1) into `out`; `ptpls`: the
    /// state persists through a power loss (it is kept in a state file).
    pub fn report_ext(&self, out: &mut Vec<u8>, ptpls: bool) {
        out.clear();
        out.resize(REPORT_EXT_LEN * (1 + self.registrants.len()), 0);
        out[0..4].copy_from_slice(&self.generation.to_le_bytes());
        out[4] = self.rtype;
        out[5..7].copy_from_slice(&(self.registrants.len() as u16).to_le_bytes());
        out[9] = u8::from(ptpls);
        for (i, r) in self.registrants.iter().enumerate() {
            let e = &mut out[REPORT_EXT_LEN * (i + 1)..REPORT_EXT_LEN * (i + 2)];
            // Dynamic controller model: no single controller id stands for the host.
            e[0..2].copy_from_slice(&0xFFFFu16.to_le_bytes());
            e[2] = u8::from(self.is_holder(&r.hostid));
            e[8..16].copy_from_slice(&r.rkey.to_le_bytes());
            e[16..32].copy_from_slice(&r.hostid);
        }
    }
}

#[derive(Serialize, Deserialize)]
struct FileRegistrant {
    hostid: String,
    rkey: u64,
}

#[derive(Serialize, Deserialize)]
struct FileNs {
    nsid: u32,
    generation: u32,
    rtype: u8,
    holder: Option<String>,
    registrants: Vec<FileRegistrant>,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    nqn: String,
    namespaces: Vec<FileNs>,
}

fn hex(b: &[u8; 16]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The state file of subsystem `nqn` in `dir`.
pub fn state_path(dir: &Path, nqn: &str) -> PathBuf {
    dir.join(format!(
        "resv-{:08x}.json",
        crate::checksum::crc32c(nqn.as_bytes())
    ))
}

struct Inner {
    ns: Vec<NsResv>,
    nqn: String,
    path: Option<PathBuf>,
}

/// A subsystem's reservations.
pub struct ResvTable {
    versions: Vec<AtomicU64>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ResvTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResvTable")
            .field("namespaces", &self.versions.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change is applied to a copy and swapped in whole: a panic cannot leave it half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ResvError + '_ {
    move |source| ResvError::Io {
        path: path.to_owned(),
        source,
    }
}

impl ResvTable {
    /// No registrants and no reservation on `namespaces` namespaces; not persisted.
    pub fn new(namespaces: usize) -> Self {
        Self {
            versions: (0..namespaces).map(|_| AtomicU64::new(0)).collect(),
            inner: Mutex::new(Inner {
                ns: vec![NsResv::default(); namespaces],
                nqn: String::new(),
                path: None,
            }),
        }
    }

    /// The namespace slots of the table.
    pub fn slots(&self) -> usize {
        self.versions.len()
    }

    /// Forget slot `i`'s registrants and reservation (its namespace was removed from or added
    /// to a subsystem at run time: a new namespace starts with none); persisted like a
    /// command's change when the table is (a failed write is logged: the state in memory is
    /// what counts, as the namespace is not the one the file knew).
    pub fn reset(&self, i: usize) {
        let mut g = lock(&self.inner);
        let Some(cur) = g.ns.get_mut(i) else {
            return;
        };
        if *cur == NsResv::default() {
            return;
        }
        *cur = NsResv::default();
        if let Some(path) = g.path.clone()
            && let Err(e) = save(&path, &g.nqn, &g.ns)
        {
            tracing::error!(error = %e, "cannot persist the reservation state of a changed namespace");
        }
        self.versions[i].fetch_add(1, Ordering::Release);
    }

    /// Version of namespace index `i` (changes whenever its state does).
    pub fn version(&self, i: usize) -> u64 {
        self.versions
            .get(i)
            .map_or(0, |v| v.load(Ordering::Acquire))
    }

    /// (version, access) of `host` on namespace index `i`, read under the lock.
    pub fn access(&self, i: usize, host: &[u8; 16]) -> (u64, Access) {
        let g = lock(&self.inner);
        let a = g.ns.get(i).map_or(
            Access {
                read: false,
                write: false,
            },
            |n| n.access(host),
        );
        (self.version(i), a)
    }

    /// A copy of namespace index `i`'s state.
    pub fn snapshot(&self, i: usize) -> Option<NsResv> {
        lock(&self.inner).ns.get(i).cloned()
    }

    /// Load the state of subsystem `nqn` from `dir` (a missing file: empty) and persist there.
    pub fn load(&self, dir: &Path, nqn: &str) -> Result<(), ResvError> {
        let path = state_path(dir, nqn);
        let mut g = lock(&self.inner);
        g.nqn = nqn.to_owned();
        match std::fs::read(&path) {
            Ok(b) => {
                let f: File = serde_json::from_slice(&b).map_err(|source| ResvError::Invalid {
                    path: path.clone(),
                    source,
                })?;
                if f.version != FILE_VERSION || f.nqn != nqn {
                    return Err(ResvError::Mismatch {
                        path,
                        what: format!("version {} of {}", f.version, f.nqn),
                    });
                }
                for n in f.namespaces {
                    let Some(slot) = (n.nsid as usize)
                        .checked_sub(1)
                        .and_then(|i| g.ns.get_mut(i))
                    else {
                        tracing::warn!(
                            nqn,
                            nsid = n.nsid,
                            "reservation state for a namespace that no longer exists; ignored"
                        );
                        continue;
                    };
                    let registrants = n
                        .registrants
                        .iter()
                        .filter_map(|r| {
                            Some(Registrant {
                                hostid: unhex(&r.hostid)?,
                                rkey: r.rkey,
                            })
                        })
                        .collect();
                    *slot = NsResv {
                        generation: n.generation,
                        rtype: n.rtype,
                        holder: n.holder.as_deref().and_then(unhex),
                        registrants,
                    };
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        g.path = Some(path);
        for v in &self.versions {
            v.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    /// Apply `f` to namespace index `i` for a command; persist and publish when it changed.
    pub fn update(&self, i: usize, f: impl FnOnce(&mut NsResv) -> Result<(), Status>) -> Status {
        let mut g = lock(&self.inner);
        let Some(cur) = g.ns.get(i) else {
            return Status::INVALID_NS;
        };
        let mut next = cur.clone();
        if let Err(s) = f(&mut next) {
            return s;
        }
        if next == *cur {
            return Status::SUCCESS;
        }
        let old = std::mem::replace(&mut g.ns[i], next);
        if let Some(path) = g.path.clone()
            && let Err(e) = save(&path, &g.nqn, &g.ns)
        {
            tracing::error!(error = %e, "cannot persist the reservation state; change refused");
            g.ns[i] = old;
            return Status::INTERNAL;
        }
        self.versions[i].fetch_add(1, Ordering::Release);
        Status::SUCCESS
    }
}

/// Write the whole state of a subsystem atomically: temporary file, fsync, rename, fsync dir.
fn save(path: &Path, nqn: &str, ns: &[NsResv]) -> Result<(), ResvError> {
    let f = File {
        version: FILE_VERSION,
        nqn: nqn.to_owned(),
        namespaces: ns
            .iter()
            .enumerate()
            .map(|(i, n)| FileNs {
                nsid: i as u32 + 1,
                generation: n.generation,
                rtype: n.rtype,
                holder: n.holder.as_ref().map(hex),
                registrants: n
                    .registrants
                    .iter()
                    .map(|r| FileRegistrant {
                        hostid: hex(&r.hostid),
                        rkey: r.rkey,
                    })
                    .collect(),
            })
            .collect(),
    };
    let body = serde_json::to_vec_pretty(&f).map_err(|source| ResvError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&body).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

// ---- replication of a mirrored volume's reservations (docs/nvmf.md) ----------------------

/// A Register, Acquire or Release as the mirror carries it to the leader site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResvCmd {
    /// Subsystem NQN.
    pub nqn: String,
    /// Namespace id.
    pub nsid: u32,
    /// Opcode (0x0D, 0x11 or 0x15).
    pub opcode: u8,
    /// Command dword 10.
    pub cdw10: u32,
    /// The host's identifier.
    pub host: [u8; 16],
    /// CRKEY.
    pub key1: u64,
    /// NRKEY (Register), PRKEY (Acquire), 0 (Release).
    pub key2: u64,
}

fn put_nqn(out: &mut Vec<u8>, nqn: &str) {
    let b = &nqn.as_bytes()[..nqn.len().min(1024)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

impl ResvCmd {
    /// The wire payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.nqn.len());
        put_nqn(&mut v, &self.nqn);
        v.extend_from_slice(&self.nsid.to_le_bytes());
        v.push(self.opcode);
        v.extend_from_slice(&self.cdw10.to_le_bytes());
        v.extend_from_slice(&self.host);
        v.extend_from_slice(&self.key1.to_le_bytes());
        v.extend_from_slice(&self.key2.to_le_bytes());
        v
    }

    /// Parse a payload (`None`: malformed, or bytes left over).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut c = Cursor(b);
        let cmd = Self {
            nqn: c.str16()?,
            nsid: c.u32()?,
            opcode: c.u8()?,
            cdw10: c.u32()?,
            host: c.id()?,
            key1: c.u64()?,
            key2: c.u64()?,
        };
        c.is_empty().then_some(cmd)
    }

    /// Decide it on `n`.
    pub fn apply(&self, n: &mut NsResv) -> Result<(), Status> {
        let action = (self.cdw10 & 7) as u8;
        let iekey = self.cdw10 & (1 << 3) != 0;
        let t = ((self.cdw10 >> 8) & 0xFF) as u8;
        match self.opcode {
            0x0D => n.register(&self.host, action, iekey, self.key1, self.key2),
            0x11 => n.acquire(&self.host, action, t, self.key1, self.key2),
            0x15 => n.release(&self.host, action, t, self.key1),
            _ => Err(Status::INVALID_OPCODE),
        }
    }
}

/// The replicated form of a namespace's state.
pub fn encode_state(nqn: &str, nsid: u32, n: &NsResv) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + nqn.len() + 24 * n.registrants.len());
    put_nqn(&mut v, nqn);
    v.extend_from_slice(&nsid.to_le_bytes());
    v.extend_from_slice(&n.generation.to_le_bytes());
    v.push(n.rtype);
    v.push(n.holder.is_some() as u8);
    v.extend_from_slice(&n.holder.unwrap_or([0; 16]));
    let count = n.registrants.len().min(u16::MAX as usize);
    v.extend_from_slice(&(count as u16).to_le_bytes());
    for r in &n.registrants[..count] {
        v.extend_from_slice(&r.hostid);
        v.extend_from_slice(&r.rkey.to_le_bytes());
    }
    v
}

/// Parse a replicated state (`None`: malformed).
pub fn decode_state(b: &[u8]) -> Option<(String, u32, NsResv)> {
    let mut c = Cursor(b);
    let nqn = c.str16()?;
    let nsid = c.u32()?;
    let generation = c.u32()?;
    let rtype = c.u8()?;
    if rtype > rtype::EA_ALL_REGISTRANTS {
        return None;
    }
    let has_holder = c.u8()?;
    let holder = c.id()?;
    let count = c.u16()?;
    if count as usize > MAX_REGISTRANTS {
        return None;
    }
    let mut registrants = Vec::with_capacity(count as usize);
    for _ in 0..count {
        registrants.push(Registrant {
            hostid: c.id()?,
            rkey: c.u64()?,
        });
    }
    if !c.is_empty() || has_holder > 1 {
        return None;
    }
    let n = NsResv {
        generation,
        rtype,
        holder: (has_holder == 1).then_some(holder),
        registrants,
    };
    Some((nqn, nsid, n))
}

impl ResvTable {
    /// Replace namespace index `i`'s state with one decided elsewhere (persisted, then
    /// published); false when it could not be persisted.
    pub fn install(&self, i: usize, n: NsResv) -> bool {
        self.update(i, |cur| {
            *cur = n;
            Ok(())
        }) == Status::SUCCESS
    }
}

/// Kind byte of NVMe reservation commands and states among a mirrored volume's metadata
/// (`layer::mirror::engine::MetaRouter`).
pub const META_KIND: u8 = 1;

/// A subsystem as the replicator sees it: NQN, reservation table, (nsid, volume) of each
/// namespace, in the subsystem's order (the table's).
pub type ReplicatedSubsystem = (String, std::sync::Arc<ResvTable>, Vec<(u32, usize)>);

/// The reservations of every namespace, for the mirror engines of the volumes behind them:
/// decides commands at the leader site and installs the leader's states at the other.
#[derive(Debug)]
pub struct ResvReplicator {
    /// (subsystem NQN, its table, (nsid, volume) of each namespace).
    subs: Vec<ReplicatedSubsystem>,
}

impl ResvReplicator {
    /// Over the subsystems' tables.
    pub fn new(subs: Vec<ReplicatedSubsystem>) -> Self {
        Self { subs }
    }

    /// The table and namespace index of (`nqn`, `nsid`), which must map volume `vol`.
    fn find(&self, vol: usize, nqn: &str, nsid: u32) -> Option<(&ResvTable, usize)> {
        let (_, table, nss) = self.subs.iter().find(|(n, _, _)| n == nqn)?;
        // A namespace's index in the table is its position among the subsystem's namespaces
        // (`Subsystem::ns_index`), which is nsid - 1 only while the nsids have no gaps.
        let i = nss.iter().position(|&(id, v)| id == nsid && v == vol)?;
        Some((&**table, i))
    }
}

use crate::layer::mirror::engine::Install;

impl crate::layer::mirror::engine::MetaHandler for ResvReplicator {
    fn execute(&self, vol: usize, cmd: &[u8]) -> (u16, Option<Vec<u8>>) {
        let Some(c) = ResvCmd::decode(cmd) else {
            return (Status::INVALID_FIELD.0, None);
        };
        let Some((table, idx)) = self.find(vol, &c.nqn, c.nsid) else {
            return (Status::INVALID_NS.0, None);
        };
        // Every change of a mirrored namespace is decided here, on the volume's home reactor,
        // so nothing changes the table between the update and the snapshot.
        let before = table.version(idx);
        let status = table.update(idx, |n| c.apply(n));
        let state = (table.version(idx) != before)
            .then(|| table.snapshot(idx))
            .flatten()
            .map(|n| encode_state(&c.nqn, c.nsid, &n));
        (status.0, state)
    }

    fn install(&self, vol: usize, state: &[u8]) -> Install {
        let Some((nqn, nsid, n)) = decode_state(state) else {
            tracing::error!(vol, "mirror: malformed reservation state from the peer");
            return Install::Malformed;
        };
        let Some((table, idx)) = self.find(vol, &nqn, nsid) else {
            tracing::error!(
                vol,
                nqn,
                nsid,
                "mirror: the peer's reservation state is for a namespace not here (the sites' subsystems differ)"
            );
            return Install::Failed;
        };
        if table.install(idx, n) {
            Install::Done
        } else {
            Install::Failed
        }
    }

    fn full_state(&self, vol: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (nqn, table, nss) in &self.subs {
            for (i, &(nsid, v)) in nss.iter().enumerate() {
                if v == vol
                    && let Some(n) = table.snapshot(i)
                {
                    out.push(encode_state(nqn, nsid, &n));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];
    const C: [u8; 16] = [3; 16];

    #[test]
    fn types_decide_access() {
        let mut n = NsResv::default();
        n.register(&A, 0, false, 0, 10).unwrap();
        n.register(&B, 0, false, 0, 20).unwrap();
        assert_eq!(n.generation, 2);
        n.acquire(&A, 0, rtype::WRITE_EXCLUSIVE, 10, 0).unwrap();
        assert!(n.access(&A).write);
        assert_eq!(
            n.access(&B),
            Access {
                read: true,
                write: false
            }
        );
        assert_eq!(
            n.access(&C),
            Access {
                read: true,
                write: false
            }
        );
        // B cannot take it, nor A with another type.
        assert_eq!(
            n.acquire(&B, 0, rtype::WRITE_EXCLUSIVE, 20, 0),
            Err(CONFLICT)
        );
        assert_eq!(
            n.acquire(&A, 0, rtype::EXCLUSIVE_ACCESS, 10, 0),
            Err(CONFLICT)
        );
        // Wrong type on release: invalid field; right type: released.
        assert_eq!(n.release(&A, 0, 2, 10), Err(Status::INVALID_FIELD));
        n.release(&A, 0, 1, 10).unwrap();
        n.acquire(&A, 0, rtype::EA_REGISTRANTS_ONLY, 10, 0).unwrap();
        assert_eq!(
            n.access(&B),
            Access {
                read: true,
                write: true
            }
        );
        assert_eq!(
            n.access(&C),
            Access {
                read: false,
                write: false
            }
        );
        n.release(&A, 0, rtype::EA_REGISTRANTS_ONLY, 10).unwrap();
        n.acquire(&B, 0, rtype::WE_ALL_REGISTRANTS, 20, 0).unwrap();
        assert!(n.is_holder(&A) && n.is_holder(&B));
        // The taker leaves: the reservation stays with the other registrant.
        n.register(&B, 1, false, 20, 0).unwrap();
        assert_eq!(n.rtype, rtype::WE_ALL_REGISTRANTS);
        assert_eq!(n.holder, Some(A));
        assert_eq!(
            n.access(&B),
            Access {
                read: true,
                write: false
            }
        );
    }

    #[test]
    fn keys_are_checked_and_preempt_removes_the_holder() {
        let mut n = NsResv::default();
        n.register(&A, 0, false, 0, 10).unwrap();
        assert_eq!(n.register(&A, 0, false, 0, 11), Err(CONFLICT));
        assert_eq!(n.register(&A, 0, false, 0, 10), Ok(()));
        assert_eq!(n.register(&A, 2, false, 9, 12), Err(CONFLICT));
        n.register(&A, 2, true, 9, 12).unwrap();
        assert_eq!(n.register(&C, 1, false, 0, 0), Err(CONFLICT));
        n.register(&B, 0, false, 0, 20).unwrap();
        n.acquire(&A, 0, rtype::EXCLUSIVE_ACCESS, 12, 0).unwrap();
        assert_eq!(
            n.acquire(&B, 1, rtype::EXCLUSIVE_ACCESS, 21, 12),
            Err(CONFLICT)
        );
        let g = n.generation;
        n.acquire(&B, 1, rtype::EXCLUSIVE_ACCESS, 20, 12).unwrap();
        assert_eq!(n.holder, Some(B));
        assert!(n.reg(&A).is_none(), "preempted registrant removed");
        assert_eq!(n.generation, g + 1);
        assert_eq!(n.acquire(&A, 0, 7, 12, 0), Err(Status::INVALID_FIELD));
        n.release(&B, 1, 0, 20).unwrap();
        assert!(n.registrants.is_empty() && n.rtype == 0);
    }

    /// SPC-4 §5.13.11.4.3 (NVMe 2.0 §8.19.7 likewise): a PREEMPT whose key is not the
    /// holder's removes the registrants with that key and leaves the reservation alone, also
    /// when the holder itself sends it (a Windows failover cluster's owner node removes the
    /// keys of nodes that left the cluster so); one whose key is the holder's own changes the
    /// type and removes the other registrants with that key (not the sender).
    #[test]
    fn the_holder_preempting_another_key_removes_that_registrant() {
        let mut n = NsResv::default();
        n.register(&A, 0, false, 0, 10).unwrap();
        n.register(&B, 0, false, 0, 20).unwrap();
        n.register(&C, 0, false, 0, 30).unwrap();
        n.acquire(&A, 0, rtype::WE_REGISTRANTS_ONLY, 10, 0).unwrap();
        let g = n.generation;
        n.acquire(&A, 1, rtype::WE_REGISTRANTS_ONLY, 10, 20)
            .unwrap();
        assert!(
            n.reg(&B).is_none(),
            "the preempted key's registrant is gone"
        );
        assert!(n.reg(&C).is_some() && n.reg(&A).is_some());
        assert_eq!((n.holder, n.rtype), (Some(A), rtype::WE_REGISTRANTS_ONLY));
        assert_eq!(n.generation, g + 1);
        assert!(!n.access(&B).write);
        // A key nobody has: conflict, nothing changes.
        assert_eq!(
            n.acquire(&A, 1, rtype::WE_REGISTRANTS_ONLY, 10, 99),
            Err(CONFLICT)
        );
        assert_eq!(n.generation, g + 1);
        // The holder preempts its own key: new type; another nexus with that key goes.
        n.register(&B, 0, false, 0, 10).unwrap();
        n.acquire(&A, 1, rtype::EXCLUSIVE_ACCESS, 10, 10).unwrap();
        assert_eq!((n.holder, n.rtype), (Some(A), rtype::EXCLUSIVE_ACCESS));
        assert!(n.reg(&B).is_none() && n.reg(&A).is_some() && n.reg(&C).is_some());
    }

    #[test]
    fn state_survives_a_reload_and_report_lists_registrants() {
        let dir = tempfile::tempdir().unwrap();
        let t = ResvTable::new(2);
        t.load(dir.path(), "nqn.x").unwrap();
        assert_eq!(
            t.update(1, |n| n.register(&A, 0, false, 0, 10)),
            Status::SUCCESS
        );
        assert_eq!(
            t.update(1, |n| n.acquire(&A, 0, rtype::WRITE_EXCLUSIVE, 10, 0)),
            Status::SUCCESS
        );
        let v = t.version(1);
        let t2 = ResvTable::new(2);
        t2.load(dir.path(), "nqn.x").unwrap();
        assert_eq!(t2.snapshot(1), t.snapshot(1));
        assert_eq!(t2.snapshot(0), Some(NsResv::default()));
        assert!(
            t2.access(1, &B).1
                == Access {
                    read: true,
                    write: false
                }
        );
        // A refused change leaves the version alone.
        assert_eq!(t.update(1, |n| n.register(&A, 0, false, 0, 99)), CONFLICT);
        assert_eq!(t.version(1), v);
        let mut out = Vec::new();
        t.snapshot(1).unwrap().report_ext(&mut out, true);
        assert_eq!(out[9], 1, "PTPLS");
        assert_eq!(out.len(), 128);
        assert_eq!(out[4], rtype::WRITE_EXCLUSIVE);
        assert_eq!(u16::from_le_bytes([out[5], out[6]]), 1);
        assert_eq!(out[64 + 2], 1);
        assert_eq!(&out[64 + 16..64 + 32], &A);
        // Another subsystem's file is refused.
        std::fs::copy(
            state_path(dir.path(), "nqn.x"),
            state_path(dir.path(), "nqn.y"),
        )
        .unwrap();
        assert!(ResvTable::new(2).load(dir.path(), "nqn.y").is_err());
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&hex(&C)), Some(C));
    }

    #[test]
    fn replicated_commands_and_states_round_trip_and_malformed_ones_are_refused() {
        let cmd = ResvCmd {
            nqn: "nqn.x".into(),
            nsid: 1,
            opcode: 0x11,
            cdw10: 1 << 8,
            host: A,
            key1: 10,
            key2: 0,
        };
        let b = cmd.encode();
        assert_eq!(ResvCmd::decode(&b), Some(cmd.clone()));
        for n in 0..b.len() {
            assert_eq!(ResvCmd::decode(&b[..n]), None, "truncated at {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(ResvCmd::decode(&long), None);
        // Applied like the local command: A acquires Write Exclusive with its key.
        let mut n = NsResv::default();
        n.register(&A, 0, false, 0, 10).unwrap();
        cmd.apply(&mut n).unwrap();
        assert_eq!((n.rtype, n.holder), (rtype::WRITE_EXCLUSIVE, Some(A)));
        let bad_op = ResvCmd {
            opcode: 0x01,
            ..cmd
        };
        assert_eq!(bad_op.apply(&mut n), Err(Status::INVALID_OPCODE));

        n.register(&B, 0, false, 0, 20).unwrap();
        let st = encode_state("nqn.x", 1, &n);
        assert_eq!(decode_state(&st), Some(("nqn.x".to_string(), 1, n.clone())));
        for k in 0..st.len() {
            assert_eq!(decode_state(&st[..k]), None, "truncated at {k}");
        }
        let mut bad_type = st.clone();
        bad_type[2 + 5 + 4 + 4] = 7;
        assert_eq!(decode_state(&bad_type), None);
        let mut bad_flag = st.clone();
        bad_flag[2 + 5 + 4 + 4 + 1] = 2;
        assert_eq!(decode_state(&bad_flag), None);
        // Installing replaces the state and moves the version.
        let t = ResvTable::new(1);
        let v = t.version(0);
        assert!(t.install(0, n.clone()));
        assert_eq!(t.snapshot(0), Some(n));
        assert_ne!(t.version(0), v);
    }

    /// The replicator finds a namespace by its nsid among the subsystem's namespaces (the
    /// table's index is the namespace's position), not at `nsid - 1`: with namespaces 1 and 3,
    /// a command for namespace 3 is decided on the table's second entry, and its state is
    /// sent and installed as namespace 3's; nsid 2 (no such namespace), 0 and FFFFFFFFh, or a
    /// volume that is not the namespace's, are Invalid Namespace.
    #[test]
    fn the_replicator_maps_nsids_to_table_entries_when_namespace_ids_have_gaps() {
        use crate::layer::mirror::engine::{Install, MetaHandler};
        let table = std::sync::Arc::new(ResvTable::new(2));
        let r = ResvReplicator::new(vec![(
            "nqn.g".into(),
            std::sync::Arc::clone(&table),
            vec![(1, 0), (3, 1)],
        )]);
        let register = |nsid: u32| ResvCmd {
            nqn: "nqn.g".into(),
            nsid,
            opcode: 0x0D,
            cdw10: 0,
            host: A,
            key1: 0,
            key2: 30,
        };
        let (status, state) = r.execute(1, &register(3).encode());
        assert_eq!(status, Status::SUCCESS.0, "namespace 3 on volume 1");
        assert_eq!(table.snapshot(1).unwrap().registrants.len(), 1);
        assert!(table.snapshot(0).unwrap().registrants.is_empty());
        let state = state.expect("a changed state to send");
        assert_eq!(decode_state(&state).map(|s| s.1), Some(3));
        assert_eq!(r.full_state(1), vec![state.clone()]);
        // The other site installs it on its namespace 3.
        let other = std::sync::Arc::new(ResvTable::new(2));
        let r2 = ResvReplicator::new(vec![(
            "nqn.g".into(),
            std::sync::Arc::clone(&other),
            vec![(1, 0), (3, 1)],
        )]);
        assert_eq!(r2.install(1, &state), Install::Done);
        assert_eq!(other.snapshot(1), table.snapshot(1));
        for (nsid, vol) in [(2, 1), (0, 0), (0xFFFF_FFFF, 1), (3, 0), (1, 1)] {
            let (status, state) = r.execute(vol, &register(nsid).encode());
            assert_eq!(
                (status, state),
                (Status::INVALID_NS.0, None),
                "nsid {nsid:#x} on volume {vol}"
            );
        }
    }
}
