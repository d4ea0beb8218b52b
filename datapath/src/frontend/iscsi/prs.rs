//! Persistent reservations (SPC-4 PERSISTENT RESERVE IN / OUT) of the iSCSI logical units.
//!
//! Model: every LUN has one [`PrState`]: the NVMe front end's per-namespace reservation model
//! (`nvmf::resv::NsResv`: registrants with keys, a holder, a type, a generation), whose rules
//! are SCSI's own (NVMe took them from SPC), behind a `Mutex` taken only by PERSISTENT RESERVE
//! commands and by a session re-evaluating its access after the state's `version` moved. A
//! registrant is an I_T nexus: its 16-byte id hashes the initiator name, the ISID and the
//! site's target port ([`nexus_id`]).
//!
//! Types map one to one (SCSI 1 WE, 3 EA, 5 WE-RO, 6 EA-RO, 7 WE-AR, 8 EA-AR → NVMe 1..6).
//! Not supported (refused with sense, and not advertised by REPORT CAPABILITIES): ALL_TG_PT
//! set in a REGISTER or REGISTER AND IGNORE EXISTING KEY (the other actions ignore the bit,
//! SPC-4 §6.16.3), SPEC_I_PT, REGISTER AND MOVE, REPLACE LOST RESERVATION.
//!
//! Each registrant keeps its initiator port name (name and ISID) and the relative target port
//! id (the site's target port group, as VPD page 83h reports it) its last registration came
//! through: READ FULL STATUS reports them (TransportID, RELATIVE TARGET PORT IDENTIFIER).
//!
//! The LUN's SPC-2 RESERVE holder lives in the same state (`spc2.rs` has its rules), so the
//! rules that tie the two kinds together (SPC-2 §5.5.1: no RESERVE or RELEASE while any nexus is
//! registered, no PERSISTENT RESERVE command while a RESERVE is held) are decided under one
//! lock, at one site. The holder is replicated with the state but never persisted (APTPL keeps
//! persistent reservations only).
//!
//! Limits (docs/iscsi.md): not shared with NVMe reservations of the same volume; PREEMPT AND
//! ABORT does not abort the preempted nexuses' tasks.
//!
//! Invariants: the version is bumped after every change, under the lock, so a session that
//! sees the new version and then takes the lock reads the new state; nothing here panics on
//! any parameter list.

use super::scsi::Sense;
use super::spc2;
use crate::frontend::nvmf::cmd::Status;
use crate::frontend::nvmf::resv::{Access, NsResv};
use crate::transport::cursor::Cursor;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One LUN's persistent reservation state.
#[derive(Debug, Default)]
pub struct PrState {
    /// Bumped after every change (sessions cache their access by it).
    pub version: AtomicU64,
    inner: Mutex<Inner>,
    /// Where the state persists (with APTPL), and the LUN it is of: set once at start
    /// ([`PrState::attach`]); unset: APTPL is refused.
    file: std::sync::OnceLock<(std::path::PathBuf, String, u16)>,
    /// The LUN's reset counter (its sessions report a change once as a unit attention):
    /// bumped when a reset decided for both sites reaches this one ([`RESET_EVENT`]).
    lu_resets: std::sync::OnceLock<std::sync::Arc<AtomicU64>>,
    /// Where a reset reaches this site's sessions (`reset.rs`), and the LUN's volume: set once
    /// at start; unset (unit tests): a reset only raises the unit attention.
    fanout: std::sync::OnceLock<(std::sync::Arc<super::reset::Fanout>, usize)>,
    /// Reservation ids of this site's sessions whose own reset of the LUN is in flight: they
    /// abort their tasks themselves, a fan-out leaves them alone.
    origins: Mutex<Vec<[u8; 16]>>,
    /// Fan-outs started by the last decisions or installs, for the mirror engine to wait for
    /// before answering (`PrReplicator::settling`).
    settles: Mutex<Vec<std::sync::Arc<super::reset::Settle>>>,
}

/// Not a PERSISTENT RESERVE OUT service action: a LOGICAL UNIT RESET (or target reset) taken
/// at one site, carried through the volume's leader so the other site's sessions report it as
/// a unit attention too (docs/iscsi.md, "Resets across the sites").
pub const RESET_EVENT: u8 = 0x10;

/// A registrant's id, initiator port name ([`initiator_port`], its READ FULL STATUS TransportID)
/// and the relative target port id its registration came through.
pub type Registered = ([u8; 16], String, u16);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Inner {
    ns: NsResv,
    /// Initiator names and target ports of the registrants (READ FULL STATUS).
    names: Vec<Registered>,
    /// Activate Persist Through Power Loss: the last REGISTER asked for it; the state is then
    /// in its file and survives a restart (without it the file is removed).
    aptpl: bool,
    /// Resets of the logical unit decided for both sites so far.
    reset_gen: u64,
    /// The SPC-2 RESERVE holder's reservation id (`spc2::res_id`): replicated, not persisted.
    reserve: Option<[u8; 16]>,
}

impl Inner {
    /// The part that persists (everything but the RESERVE holder).
    fn persisted_eq(&self, o: &Self) -> bool {
        self.ns == o.ns
            && self.names == o.names
            && self.aptpl == o.aptpl
            && self.reset_gen == o.reset_gen
    }
}

/// The iSCSI initiator port name of initiator `name` with ISID `isid` (SPC-4 §7.6.4.6,
/// RFC 7143 §4.2.7.1): `name,i,0x` and the ISID's 12 hex digits. A registrant is reported by it
/// (READ FULL STATUS), so two sessions of one initiator name are two initiator ports there too.
pub fn initiator_port(name: &str, isid: &[u8; 6]) -> String {
    let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{name},i,0x{hex}")
}

/// The registrant id of an I_T nexus: the initiator port (name and ISID) with the target port
/// (the site's target portal group tag, `tpg`), so one initiator port logged in at both sites
/// is two nexuses, each registered on its own (SAM-5 4.6).
pub fn nexus_id(initiator: &str, isid: &[u8; 6], tpg: u16) -> [u8; 16] {
    let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
    crate::frontend::nvmf::cmd::nguid(&format!("{initiator},i,0x{hex},t,{tpg}"), 0)
}

fn scsi_type(t: u8) -> Option<u8> {
    Some(match t {
        1 => 1,
        3 => 2,
        5 => 3,
        6 => 4,
        7 => 5,
        8 => 6,
        _ => return None,
    })
}

fn nvme_to_scsi_type(t: u8) -> u8 {
    match t {
        1 => 1,
        2 => 3,
        3 => 5,
        4 => 6,
        5 => 7,
        6 => 8,
        _ => 0,
    }
}

/// The outcome of a PERSISTENT RESERVE OUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// GOOD.
    Good,
    /// RESERVATION CONFLICT.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

fn outcome(r: Result<(), Status>, bad: Sense) -> Outcome {
    match r {
        Ok(()) => Outcome::Good,
        Err(Status::RESERVATION_CONFLICT) => Outcome::Conflict,
        Err(Status::INVALID_FIELD) => Outcome::Check(bad),
        Err(_) => Outcome::Check(Sense::INTERNAL),
    }
}

/// ILLEGAL REQUEST / INVALID RELEASE OF PERSISTENT RESERVATION.
const INVALID_RELEASE: Sense = Sense {
    key: super::scsi::key::ILLEGAL_REQUEST,
    asc: 0x26,
    ascq: 0x04,
    info: None,
    field: None,
};

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]))
}

/// A PERSISTENT RESERVE OUT checked against its CDB and parameter list (everything that does
/// not depend on the reservation state): what [`PrState::apply`] decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrOut {
    /// Service action (0 REGISTER, 1 RESERVE, 2 RELEASE, 3 CLEAR, 4 PREEMPT, 5 PREEMPT AND
    /// ABORT, 6 REGISTER AND IGNORE EXISTING KEY).
    pub sa: u8,
    /// The reservation type in NVMe's numbering (0: none given).
    pub nt: u8,
    /// RESERVATION KEY.
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY.
    pub sa_key: u64,
    /// APTPL of a REGISTER (or REGISTER AND IGNORE EXISTING KEY); false for the others, which
    /// ignore the bit (SPC-4).
    pub aptpl: bool,
}

/// Check PERSISTENT RESERVE OUT service action `sa`, `scope_type` (CDB byte 2) and the
/// parameter list `p`.
pub fn parse_out(sa: u8, scope_type: u8, p: &[u8]) -> Result<PrOut, Sense> {
    if matches!(sa, 7 | 8) || sa > 8 {
        return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1));
    }
    if p.len() != 24 {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let key = be64(&p[0..8]);
    let sa_key = be64(&p[8..16]);
    let flags = p[20];
    // SPC-4 §6.16.3: SPEC_I_PT (0x08) is invalid but for REGISTER, which does not support it;
    // ALL_TG_PT (0x04) is valid for REGISTER and REGISTER AND IGNORE EXISTING KEY (not
    // supported: ATP_C 0) and ignored for the other actions.
    if flags & 0x08 != 0 || (matches!(sa, 0 | 6) && flags & 0x04 != 0) {
        return Err(Sense::INVALID_FIELD_PARAM);
    }
    let aptpl = matches!(sa, 0 | 6) && flags & 0x01 != 0;
    let t = scope_type & 0x0F;
    let needs_type = matches!(sa, 1 | 2 | 4 | 5);
    if needs_type && scope_type >> 4 != 0 {
        return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(2));
    }
    let nt = if needs_type {
        scsi_type(t).ok_or(Sense::INVALID_FIELD_CDB.at_cdb_byte(2))?
    } else {
        0
    };
    Ok(PrOut {
        sa,
        nt,
        key,
        sa_key,
        aptpl,
    })
}

impl PrState {
    /// What nexus `me` (reservation id `res`) may do under the persistent reservation and the
    /// RESERVE, and the version it was computed at.
    pub fn access(&self, me: &[u8; 16], res: &[u8; 16]) -> (u64, Access, spc2::View) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (
            self.version.load(Ordering::Acquire),
            g.ns.access(me),
            spc2::view(g.reserve.as_ref(), res),
        )
    }

    /// What the session with reservation id `res` sees of the RESERVE.
    pub fn reserve_view(&self, res: &[u8; 16]) -> spc2::View {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        spc2::view(g.reserve.as_ref(), res)
    }

    /// A reset of the logical unit taken at this site releases the RESERVE here at once (the
    /// volume's leader decides it for both sites: [`RESET_EVENT`]).
    pub fn clear_reserve(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.reserve.take().is_some() {
            self.version.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The other site's process restarted: a RESERVE held by a nexus of a site other than
    /// `site` (target port group) is gone with it.
    pub fn drop_reserve_not_of(&self, site: u16) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.reserve.is_some_and(|h| spc2::site_of(&h) != site) {
            g.reserve = None;
            self.version.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// PERSISTENT RESERVE OUT service action `sa` with `scope_type` (CDB byte 2) and the
    /// parameter list `p`, from nexus `me` (initiator `name`, through relative target port
    /// `port`), decided here.
    pub fn out(
        &self,
        me: &[u8; 16],
        name: &str,
        port: u16,
        sa: u8,
        scope_type: u8,
        p: &[u8],
    ) -> Outcome {
        match parse_out(sa, scope_type, p) {
            Ok(o) => self.apply(me, name, port, &o),
            Err(s) => Outcome::Check(s),
        }
    }

    /// Apply a checked PERSISTENT RESERVE OUT from nexus `me` (initiator `name`, through
    /// relative target port `port`).
    pub fn apply(&self, me: &[u8; 16], name: &str, port: u16, o: &PrOut) -> Outcome {
        let PrOut {
            sa,
            nt,
            key,
            sa_key,
            aptpl,
        } = *o;
        if spc2::is_spc2(sa) {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let (good, holder) = spc2::decide(g.reserve, !g.ns.registrants.is_empty(), sa, me);
            if holder != g.reserve {
                g.reserve = holder;
                self.version.fetch_add(1, Ordering::AcqRel);
            }
            return if good {
                Outcome::Good
            } else {
                Outcome::Conflict
            };
        }
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if sa != RESET_EVENT && guard.reserve.is_some() {
            // SPC-2 §5.5.1: while a RESERVE is held, every PERSISTENT RESERVE OUT conflicts.
            return Outcome::Conflict;
        }
        if aptpl && self.file.get().is_none() {
            // Nowhere to persist it: refused rather than promised (REPORT CAPABILITIES says
            // PTPL_C 0).
            return Outcome::Check(Sense::INVALID_FIELD_PARAM);
        }
        // Decided on a copy: it takes effect only once persisted (when it must be).
        let mut g = guard.clone();
        if sa == RESET_EVENT {
            g.reset_gen = g.reset_gen.wrapping_add(1);
            // A reset releases the RESERVE (SPC-2 §5.5.1).
            g.reserve = None;
            if let Err(e) = self.persist(&g) {
                tracing::error!(error = %e, "iscsi: cannot persist the reservation state; reset not carried");
                return Outcome::Check(Sense::INTERNAL);
            }
            *guard = g;
            self.version.fetch_add(1, Ordering::AcqRel);
            self.lu_reset();
            return Outcome::Good;
        }
        let before = g.ns.clone();
        let registered =
            g.ns.registrants
                .iter()
                .find(|r| &r.hostid == me)
                .map(|r| r.rkey);
        if registered.is_none()
            && sa_key != 0
            && matches!(sa, 0 | 6)
            && g.ns.registrants.len() >= MAX_PR_REGISTRANTS
        {
            return Outcome::Check(NO_REGISTRATION_RESOURCES);
        }
        let r = match sa {
            0 | 6 => {
                let ignore = sa == 6;
                match registered {
                    None if !ignore && key != 0 => Err(Status::RESERVATION_CONFLICT),
                    None if sa_key == 0 => Ok(()),
                    None => g.ns.register(me, 0, false, 0, sa_key),
                    Some(k) if !ignore && k != key => Err(Status::RESERVATION_CONFLICT),
                    Some(_) if sa_key == 0 => g.ns.register(me, 1, true, 0, 0),
                    Some(_) => g.ns.register(me, 2, true, 0, sa_key),
                }
            }
            1 => g.ns.acquire(me, 0, nt, key, 0),
            2 => g.ns.release(me, 0, nt, key),
            3 => g.ns.release(me, 1, 0, key),
            _ => {
                if sa_key == 0 && !matches!(g.ns.rtype, 5 | 6) {
                    Err(Status::INVALID_FIELD)
                } else {
                    g.ns.acquire(me, sa - 3, nt, key, sa_key)
                }
            }
        };
        let bad = if sa == 2 {
            INVALID_RELEASE
        } else {
            Sense::INVALID_FIELD_PARAM
        };
        if r.is_ok() && matches!(sa, 0 | 6) {
            g.aptpl = aptpl;
        }
        let registered_here = r.is_ok() && matches!(sa, 0 | 6);
        if g.ns != before || registered_here {
            let live: Vec<[u8; 16]> = g.ns.registrants.iter().map(|r| r.hostid).collect();
            g.names.retain(|(h, _, _)| live.contains(h));
            if live.contains(me) {
                // A registration (or a new key) through this port: it is reported with it.
                match g.names.iter_mut().find(|(h, _, _)| h == me) {
                    Some(n) if registered_here => (n.1, n.2) = (name.to_string(), port),
                    Some(_) => {}
                    None => g.names.push((*me, name.to_string(), port)),
                }
            }
        }
        if g != *guard {
            if !g.persisted_eq(&guard)
                && let Err(e) = self.persist(&g)
            {
                tracing::error!(error = %e, "iscsi: cannot persist the reservation state; change refused");
                return Outcome::Check(Sense::INTERNAL);
            }
            *guard = g;
            self.version.fetch_add(1, Ordering::AcqRel);
        }
        outcome(r, bad)
    }

    /// Connect the LUN's reset counter (once, when the LUN is built).
    pub fn set_lu_resets(&self, resets: std::sync::Arc<AtomicU64>) {
        let _ = self.lu_resets.set(resets);
    }

    fn lu_reset(&self) {
        if let Some(r) = self.lu_resets.get() {
            r.fetch_add(1, Ordering::AcqRel);
        }
        // SAM-5: every task of every I_T nexus of the logical unit is aborted, at this site
        // by a fan-out the mirror engine waits for before it answers the peer.
        if let Some((f, vol)) = self.fanout.get() {
            let s = f.abort(*vol, self.id(), None);
            self.settles
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(s);
        }
    }

    /// Connect the fan-out of resets to this site's sessions of volume `vol` (once, at start).
    pub fn set_fanout(&self, f: std::sync::Arc<super::reset::Fanout>, vol: usize) {
        let _ = self.fanout.set((f, vol));
    }

    /// Ask this site's sessions to abort their tasks of this LUN (a reset decided here and not
    /// carried through a mirror); `waiter` is told when they all have. `None`: no fan-out set.
    pub fn abort_here(
        &self,
        waiter: Option<(std::sync::Arc<crate::runtime::Mailbox>, u32)>,
    ) -> Option<std::sync::Arc<super::reset::Settle>> {
        self.fanout
            .get()
            .map(|(f, vol)| f.abort(*vol, self.id(), waiter))
    }

    /// [`Self::abort_here`] for a CLEAR TASK SET (this site's sessions only).
    pub fn clear_here(
        &self,
        waiter: Option<(std::sync::Arc<crate::runtime::Mailbox>, u32)>,
    ) -> Option<std::sync::Arc<super::reset::Settle>> {
        self.fanout
            .get()
            .map(|(f, vol)| f.abort_as(*vol, self.id(), waiter, true))
    }

    /// The fan-outs started since the last call (the mirror engine waits for them).
    pub fn take_settles(&self) -> Vec<std::sync::Arc<super::reset::Settle>> {
        std::mem::take(&mut *self.settles.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// This LUN's identity in reset notes (the state's address: one state per LUN).
    pub fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Session `res` has a reset of this LUN in flight (`on`) or no longer (`!on`).
    pub fn set_origin(&self, res: &[u8; 16], on: bool) {
        let mut o = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        match o.iter().position(|r| r == res) {
            Some(i) if !on => {
                o.swap_remove(i);
            }
            None if on => o.push(*res),
            _ => {}
        }
    }

    /// Whether session `res` has a reset of this LUN in flight.
    pub fn is_origin(&self, res: &[u8; 16]) -> bool {
        self.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(res)
    }

    /// Make `g` the persisted state: its file written atomically when APTPL is active (write,
    /// fsync, rename, fsync of the directory), removed otherwise. Nothing without a file.
    fn persist(&self, g: &Inner) -> std::io::Result<()> {
        let Some((path, target, lun)) = self.file.get() else {
            return Ok(());
        };
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        if g.aptpl {
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &encode(g, target, *lun))?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)?;
        } else {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                r => r?,
            }
        }
        std::fs::File::open(dir)?.sync_all()
    }

    /// Persist this LUN's state (APTPL) in `path`: load what a previous run persisted there
    /// (it must be of the same target and LUN), and keep every later change there. Called
    /// once, before any session.
    pub fn attach(&self, path: std::path::PathBuf, target: &str, lun: u16) -> Result<(), String> {
        match std::fs::read(&path) {
            Ok(b) => {
                let Some((t, l, ns, names, aptpl, reset_gen)) = decode_state(&b) else {
                    return Err(format!(
                        "{}: not a reservation state file (malformed)",
                        path.display()
                    ));
                };
                if t != target || l != lun {
                    return Err(format!(
                        "{}: holds the reservations of {t} LUN {l}, not of {target} LUN {lun}",
                        path.display()
                    ));
                }
                let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                *g = Inner {
                    ns,
                    names,
                    aptpl,
                    reset_gen,
                    reserve: None,
                };
                self.version.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        self.file
            .set((path, target.to_string(), lun))
            .map_err(|_| "attached twice".to_string())
    }

    /// The whole state as a replicated state of LUN `lun` of `target` (see
    /// [`decode_replicated`]): the persisted part, then the RESERVE holder.
    pub fn encode_state(&self, target: &str, lun: u16) -> Vec<u8> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = encode(&g, target, lun);
        v.push(u8::from(g.reserve.is_some()));
        v.extend_from_slice(&g.reserve.unwrap_or([0; 16]));
        v
    }

    /// Replace the state with one decided by the other site (persisted here too, as there);
    /// false when it could not be persisted (the old state stays).
    pub fn install(
        &self,
        ns: NsResv,
        names: Vec<Registered>,
        aptpl: bool,
        reset_gen: u64,
        reserve: Option<[u8; 16]>,
    ) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let next = Inner {
            ns,
            names,
            aptpl,
            reset_gen,
            reserve,
        };
        if !next.persisted_eq(&g)
            && let Err(e) = self.persist(&next)
        {
            tracing::error!(error = %e, "iscsi: cannot persist the peer's reservation state");
            return false;
        }
        let reset = next.reset_gen != g.reset_gen;
        *g = next;
        self.version.fetch_add(1, Ordering::AcqRel);
        if reset {
            self.lu_reset();
        }
        true
    }

    /// PERSISTENT RESERVE IN service action `sa` (the whole data; the caller cuts it to the
    /// allocation length).
    pub fn read(&self, sa: u8) -> Result<Vec<u8>, Sense> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let ns = &g.ns;
        let mut b = Vec::with_capacity(64);
        match sa {
            0 => {
                b.extend_from_slice(&ns.generation.to_be_bytes());
                b.extend_from_slice(&((ns.registrants.len() * 8) as u32).to_be_bytes());
                for r in &ns.registrants {
                    b.extend_from_slice(&r.rkey.to_be_bytes());
                }
            }
            1 => {
                b.extend_from_slice(&ns.generation.to_be_bytes());
                if ns.rtype == 0 {
                    b.extend_from_slice(&0u32.to_be_bytes());
                } else {
                    b.extend_from_slice(&16u32.to_be_bytes());
                    // All-registrants types report key 0 (SPC-4 §6.16.3).
                    let key = if matches!(ns.rtype, 5 | 6) {
                        0
                    } else {
                        ns.holder
                            .and_then(|h| ns.registrants.iter().find(|r| r.hostid == h))
                            .map_or(0, |r| r.rkey)
                    };
                    b.extend_from_slice(&key.to_be_bytes());
                    b.extend_from_slice(&[0; 4]);
                    b.push(0);
                    b.push(nvme_to_scsi_type(ns.rtype));
                    b.extend_from_slice(&[0; 2]);
                }
            }
            2 => {
                // REPORT CAPABILITIES: no CRH, SIP_C, ATP_C; PTPL_C when the state can persist,
                // PTPL_A when it does; TMV with the six types.
                let ptpl_c = u8::from(self.file.get().is_some());
                let ptpl_a = u8::from(g.aptpl);
                b.extend_from_slice(&[0, 8, ptpl_c, 0x80 | ptpl_a, 0xEA, 0x01, 0, 0]);
            }
            3 => {
                b.extend_from_slice(&ns.generation.to_be_bytes());
                b.extend_from_slice(&0u32.to_be_bytes());
                for r in &ns.registrants {
                    let (name, port) = g
                        .names
                        .iter()
                        .find(|(h, _, _)| *h == r.hostid)
                        .map_or(("", 0), |(_, n, p)| (n.as_str(), *p));
                    // iSCSI TransportID (SPC-4 §7.6.4.6): protocol 5, length, the NUL-ended
                    // name padded to a multiple of 4; format 01b for an initiator port name
                    // (with the ISID: [`initiator_port`]), 00b for a bare name (a registration
                    // recorded by a version that kept no ISID).
                    let format = if name.contains(",i,0x") { 0x40 } else { 0 };
                    let mut tid = vec![format | 0x05, 0, 0, 0];
                    tid.extend_from_slice(name.as_bytes());
                    tid.push(0);
                    while tid.len() % 4 != 0 || tid.len() < 24 {
                        tid.push(0);
                    }
                    let n = (tid.len() - 4) as u16;
                    tid[2..4].copy_from_slice(&n.to_be_bytes());
                    let holder =
                        ns.rtype != 0 && (matches!(ns.rtype, 5 | 6) || ns.holder == Some(r.hostid));
                    b.extend_from_slice(&r.rkey.to_be_bytes());
                    b.extend_from_slice(&[0; 4]);
                    b.push(u8::from(holder));
                    b.push(if holder {
                        nvme_to_scsi_type(ns.rtype)
                    } else {
                        0
                    });
                    b.extend_from_slice(&[0; 4]);
                    // ALL_TG_PT is 0 (byte 12): the port the registration came through.
                    b.extend_from_slice(&port.to_be_bytes());
                    b.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    b.extend_from_slice(&tid);
                }
                let n = (b.len() - 8) as u32;
                b[4..8].copy_from_slice(&n.to_be_bytes());
            }
            _ => return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1)),
        }
        Ok(b)
    }

    /// A LUN reset or an I_T nexus loss does not change persistent reservations (SPC-4
    /// §5.13.11); only CLEAR, PREEMPT and unregistering do.
    pub fn registered(&self, me: &[u8; 16]) -> bool {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.ns.registrants.iter().any(|r| &r.hostid == me)
    }
}

/// The format of [`encode`]'s states: after a 0 byte (where a state without it, the first
/// format, starts with its target's length, never 0), each registrant's name is followed by
/// its relative target port id. A state in the first format is read with ports 0 (unknown).
const STATE_FORMAT: u8 = 2;

/// `g` as a replicated (and persisted) state of LUN `lun` of `target`.
fn encode(g: &Inner, target: &str, lun: u16) -> Vec<u8> {
    let n = &g.ns;
    let mut v = Vec::with_capacity(64 + target.len() + n.registrants.len() * 64);
    v.extend_from_slice(&[0, STATE_FORMAT]);
    put_str(&mut v, target);
    v.extend_from_slice(&lun.to_le_bytes());
    v.push(u8::from(g.aptpl));
    v.extend_from_slice(&g.reset_gen.to_le_bytes());
    v.extend_from_slice(&n.generation.to_le_bytes());
    v.push(n.rtype);
    v.push(u8::from(n.holder.is_some()));
    v.extend_from_slice(&n.holder.unwrap_or([0; 16]));
    let count = n.registrants.len().min(MAX_PR_REGISTRANTS);
    v.extend_from_slice(&(count as u16).to_le_bytes());
    for r in &n.registrants[..count] {
        v.extend_from_slice(&r.hostid);
        v.extend_from_slice(&r.rkey.to_le_bytes());
        let (name, port) = g
            .names
            .iter()
            .find(|(h, _, _)| *h == r.hostid)
            .map_or(("", 0), |(_, n, p)| (n.as_str(), *p));
        put_str(&mut v, name);
        v.extend_from_slice(&port.to_le_bytes());
    }
    v
}

/// Registrants per logical unit at most (each registration is replicated with its initiator
/// port name, up to 240 bytes: a 223-byte iSCSI name, `,i,0x` and the ISID; this many keep one
/// state under the mirror's 64 KiB limit).
pub const MAX_PR_REGISTRANTS: usize = 200;

/// ILLEGAL REQUEST / INSUFFICIENT REGISTRATION RESOURCES.
const NO_REGISTRATION_RESOURCES: Sense = Sense {
    key: super::scsi::key::ILLEGAL_REQUEST,
    asc: 0x55,
    ascq: 0x04,
    info: None,
    field: None,
};

// ----- replication through a mirrored volume's leader (docs/iscsi.md, "Reservations") -----

/// Kind byte of SCSI persistent reservation commands and states among a mirrored volume's
/// metadata (`layer::mirror::engine::MetaRouter`).
pub const META_KIND: u8 = 2;

/// Outcomes as the metadata status the mirror carries (never 6: the engine's own Internal
/// Error; never 0 but for GOOD).
mod code {
    pub const CONFLICT: u16 = 0x18;
    pub const INVALID_RELEASE: u16 = 0x101;
    pub const INVALID_PARAM: u16 = 0x102;
    pub const NO_RESOURCES: u16 = 0x103;
    pub const INTERNAL: u16 = 0x104;
}

/// The metadata status of `o`.
pub fn outcome_code(o: Outcome) -> u16 {
    match o {
        Outcome::Good => 0,
        Outcome::Conflict => code::CONFLICT,
        Outcome::Check(s) if s == INVALID_RELEASE => code::INVALID_RELEASE,
        Outcome::Check(s) if s == Sense::INVALID_FIELD_PARAM => code::INVALID_PARAM,
        Outcome::Check(s) if s == NO_REGISTRATION_RESOURCES => code::NO_RESOURCES,
        Outcome::Check(_) => code::INTERNAL,
    }
}

/// The outcome of a PERSISTENT RESERVE OUT sent through a mirrored volume's channel, from its
/// completion: a decided status, or why it was not decided (this site cannot reach the volume's
/// decision: another path may; the leadership moved while it waited: to be sent again;
/// anything else: an internal error, never a decided answer).
pub fn outcome_of(r: Result<(), crate::uring::Errno>) -> Outcome {
    use crate::layer::mirror::engine::META_STATUS;
    use crate::uring::Errno;
    let e = match r {
        Ok(()) => return Outcome::Good,
        Err(e) => e,
    };
    if e.0 & META_STATUS != 0 {
        return match (e.0 & 0xFFFF) as u16 {
            code::CONFLICT => Outcome::Conflict,
            code::INVALID_RELEASE => Outcome::Check(INVALID_RELEASE),
            code::INVALID_PARAM => Outcome::Check(Sense::INVALID_FIELD_PARAM),
            code::NO_RESOURCES => Outcome::Check(NO_REGISTRATION_RESOURCES),
            _ => Outcome::Check(Sense::INTERNAL),
        };
    }
    if e == Errno::UNAVAILABLE || e == Errno::SHUTDOWN {
        Outcome::Check(Sense::ALUA_UNAVAILABLE)
    } else if e == Errno::TRANSITION {
        // Not decided: the leadership moved while it waited (a switchover); the host sends
        // it again (SPC-4 §5.15.2.6: a transition's commands are retried).
        Outcome::Check(Sense::ALUA_TRANSITION)
    } else {
        Outcome::Check(Sense::INTERNAL)
    }
}

/// A PERSISTENT RESERVE OUT of LUN `lun` of `target` from nexus `me` (initiator `name`), as
/// the mirror carries it to the volume's leader site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrCmd {
    /// Target IQN.
    pub target: String,
    /// LUN.
    pub lun: u16,
    /// The nexus.
    pub me: [u8; 16],
    /// Its initiator port name ([`initiator_port`]; READ FULL STATUS).
    pub name: String,
    /// The relative target port id it came through (READ FULL STATUS).
    pub port: u16,
    /// What it asks.
    pub out: PrOut,
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    // iSCSI names are at most 223 bytes (RFC 7143 §4.2.7.1): the cut never happens to one.
    let b = &s.as_bytes()[..s.len().min(255)];
    v.push(b.len() as u8);
    v.extend_from_slice(b);
}

impl PrCmd {
    /// The command's bytes (without the kind byte).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.target.len() + self.name.len());
        put_str(&mut v, &self.target);
        v.extend_from_slice(&self.lun.to_le_bytes());
        v.extend_from_slice(&self.me);
        put_str(&mut v, &self.name);
        v.extend_from_slice(&self.port.to_le_bytes());
        v.push(self.out.sa);
        v.push(self.out.nt);
        v.push(u8::from(self.out.aptpl));
        v.extend_from_slice(&self.out.key.to_le_bytes());
        v.extend_from_slice(&self.out.sa_key.to_le_bytes());
        v
    }

    /// Parse [`Self::encode`]'s bytes (`None`: malformed, or a service action or type no
    /// PERSISTENT RESERVE OUT check lets through).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut c = Cursor(b);
        let cmd = Self {
            target: c.str8()?,
            lun: c.u16()?,
            me: c.id()?,
            name: c.str8()?,
            port: c.u16()?,
            out: PrOut {
                sa: c.u8()?,
                nt: c.u8()?,
                aptpl: match c.u8()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
                key: c.u64()?,
                sa_key: c.u64()?,
            },
        };
        let type_ok = if matches!(cmd.out.sa, 1 | 2 | 4 | 5) {
            (1..=6).contains(&cmd.out.nt)
        } else {
            cmd.out.nt == 0
        };
        let aptpl_ok = !cmd.out.aptpl || matches!(cmd.out.sa, 0 | 6);
        let reset = cmd.out.sa == RESET_EVENT || spc2::is_spc2(cmd.out.sa);
        let reset_ok = !reset
            || (cmd.out.nt == 0 && !cmd.out.aptpl && cmd.out.key == 0 && cmd.out.sa_key == 0);
        let sa_ok = cmd.out.sa <= 6 || reset;
        (c.is_empty() && sa_ok && type_ok && aptpl_ok && reset_ok).then_some(cmd)
    }
}

/// A replicated state: (target, LUN, the reservation state, the registrants' names, APTPL,
/// the reset generation).
pub type PrStateParts = (String, u16, NsResv, Vec<Registered>, bool, u64);

/// Parse a persisted state (an APTPL file: [`PrState::encode_state`]'s bytes without the
/// RESERVE holder; `None`: malformed).
pub fn decode_state(b: &[u8]) -> Option<PrStateParts> {
    let mut c = Cursor(b);
    let parts = decode_parts(&mut c)?;
    c.is_empty().then_some(parts)
}

/// Parse [`PrState::encode_state`]'s bytes: the state and the RESERVE holder (`None`:
/// malformed).
pub fn decode_replicated(b: &[u8]) -> Option<(PrStateParts, Option<[u8; 16]>)> {
    let mut c = Cursor(b);
    let parts = decode_parts(&mut c)?;
    let present = c.u8()?;
    let holder = c.id()?;
    if !c.is_empty() || present > 1 || (present == 0 && holder != [0; 16]) {
        return None;
    }
    Some((parts, (present == 1).then_some(holder)))
}

fn decode_parts(c: &mut Cursor<'_>) -> Option<PrStateParts> {
    use crate::frontend::nvmf::resv::Registrant;
    let ports = c.0.first() == Some(&0);
    if ports && (c.u8()?, c.u8()?) != (0, STATE_FORMAT) {
        return None;
    }
    let target = c.str8()?;
    let lun = c.u16()?;
    let aptpl = match c.u8()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let reset_gen = c.u64()?;
    let generation = c.u32()?;
    let rtype = c.u8()?;
    let has_holder = c.u8()?;
    let holder = c.id()?;
    let count = c.u16()? as usize;
    if rtype > 6 || has_holder > 1 || count > MAX_PR_REGISTRANTS {
        return None;
    }
    let mut registrants = Vec::with_capacity(count);
    let mut names = Vec::new();
    for _ in 0..count {
        let hostid = c.id()?;
        let rkey = c.u64()?;
        let name = c.str8()?;
        let port = if ports { c.u16()? } else { 0 };
        if registrants.iter().any(|r: &Registrant| r.hostid == hostid) {
            return None;
        }
        registrants.push(Registrant { hostid, rkey });
        if !name.is_empty() {
            names.push((hostid, name, port));
        }
    }
    let ns = NsResv {
        generation,
        rtype,
        holder: (has_holder == 1).then_some(holder),
        registrants,
    };
    Some((target, lun, ns, names, aptpl, reset_gen))
}

/// One logical unit as the replicator sees it: (target IQN, LUN, volume index, its state).
pub type ReplicatedLun = (String, u16, usize, std::sync::Arc<PrState>);

/// The persistent reservations of every LUN, for the mirror engines of the volumes behind
/// them: decides PERSISTENT RESERVE OUT at the volume's leader site (or a survivor) and
/// installs the decided states at the other, so both sites enforce one reservation.
#[derive(Debug)]
pub struct PrReplicator {
    luns: Vec<ReplicatedLun>,
    /// This site's target port group (the site part of its sessions' reservation ids).
    site: u16,
}

impl PrReplicator {
    /// Over these logical units (at site 0 until [`Self::for_site`]).
    pub fn new(luns: Vec<ReplicatedLun>) -> Self {
        Self { luns, site: 0 }
    }

    /// At the site whose target port group is `tpg`.
    pub fn for_site(mut self, tpg: u16) -> Self {
        self.site = tpg;
        self
    }

    fn find(&self, vol: usize, target: &str, lun: u16) -> Option<&PrState> {
        self.luns
            .iter()
            .find(|(t, l, v, _)| t == target && *l == lun && *v == vol)
            .map(|(_, _, _, pr)| &**pr)
    }
}

impl crate::layer::mirror::engine::MetaHandler for PrReplicator {
    fn execute(&self, vol: usize, cmd: &[u8]) -> (u16, Option<Vec<u8>>) {
        let Some(c) = PrCmd::decode(cmd) else {
            return (code::INTERNAL, None);
        };
        let Some(pr) = self.find(vol, &c.target, c.lun) else {
            tracing::error!(
                vol,
                target = c.target,
                lun = c.lun,
                "mirror: a reservation command for a logical unit not here (the sites' targets differ)"
            );
            return (code::INTERNAL, None);
        };
        // Every change of a mirrored LUN's state is decided here, on the volume's home reactor,
        // so nothing changes it between the decision and the snapshot.
        let before = pr.version.load(Ordering::Acquire);
        let o = pr.apply(&c.me, &c.name, c.port, &c.out);
        let state = (pr.version.load(Ordering::Acquire) != before)
            .then(|| pr.encode_state(&c.target, c.lun));
        (outcome_code(o), state)
    }

    fn install(&self, vol: usize, state: &[u8]) -> crate::layer::mirror::engine::Install {
        use crate::layer::mirror::engine::Install;
        let Some(((target, lun, ns, names, aptpl, reset_gen), reserve)) = decode_replicated(state)
        else {
            tracing::error!(
                vol,
                "mirror: malformed SCSI reservation state from the peer"
            );
            return Install::Malformed;
        };
        match self.find(vol, &target, lun) {
            Some(pr) if pr.install(ns, names, aptpl, reset_gen, reserve) => Install::Done,
            Some(_) => Install::Failed,
            None => {
                tracing::error!(
                    vol,
                    target,
                    lun,
                    "mirror: the peer's SCSI reservation state is for a logical unit not here (the sites' targets differ)"
                );
                Install::Failed
            }
        }
    }

    fn full_state(&self, vol: usize) -> Vec<Vec<u8>> {
        self.luns
            .iter()
            .filter(|(_, _, v, _)| *v == vol)
            .map(|(t, l, _, pr)| pr.encode_state(t, *l))
            .collect()
    }

    fn peer_restarted(&self, vol: usize) {
        for (_, _, v, pr) in &self.luns {
            if *v == vol {
                pr.drop_reserve_not_of(self.site);
            }
        }
    }

    fn settling(&self, vol: usize) -> Vec<crate::layer::mirror::engine::Settle> {
        let mut out: Vec<crate::layer::mirror::engine::Settle> = Vec::new();
        for (_, _, v, pr) in &self.luns {
            if *v == vol {
                out.extend(pr.take_settles().into_iter().map(|s| s as _));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(key: u64, sa_key: u64) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p
    }

    #[test]
    fn register_reserve_preempt_and_access() {
        let s = PrState::default();
        let a = nexus_id("iqn.a", &[0x80, 0, 0, 0, 0, 1], 1);
        let b = nexus_id("iqn.b", &[0x80, 0, 0, 0, 0, 1], 1);
        assert_ne!(a, b);
        assert_eq!(s.out(&a, "iqn.a", 1, 0, 0, &params(0, 0xA)), Outcome::Good);
        assert_eq!(s.out(&b, "iqn.b", 1, 0, 0, &params(0, 0xB)), Outcome::Good);
        assert_eq!(
            s.out(&a, "iqn.a", 1, 0, 0, &params(1, 2)),
            Outcome::Conflict
        );
        // Write Exclusive held by a: b reads, does not write.
        assert_eq!(s.out(&a, "iqn.a", 1, 1, 1, &params(0xA, 0)), Outcome::Good);
        let (_, acc, _) = s.access(&b, &[0; 16]);
        assert!(acc.read && !acc.write);
        let keys = s.read(0).unwrap();
        assert_eq!(u32::from_be_bytes(keys[4..8].try_into().unwrap()), 16);
        let res = s.read(1).unwrap();
        assert_eq!(
            (res[21], u64::from_be_bytes(res[8..16].try_into().unwrap())),
            (1, 0xA)
        );
        // b preempts a: a is no longer registered, b holds it.
        assert_eq!(
            s.out(&b, "iqn.b", 1, 4, 1, &params(0xB, 0xA)),
            Outcome::Good
        );
        assert!(!s.registered(&a));
        assert!(s.access(&a, &[0; 16]).1.read && !s.access(&a, &[0; 16]).1.write);
        // Release with the wrong type: INVALID RELEASE.
        assert_eq!(
            s.out(&b, "iqn.b", 1, 2, 3, &params(0xB, 0)),
            Outcome::Check(INVALID_RELEASE)
        );
        assert_eq!(s.out(&b, "iqn.b", 1, 3, 0, &params(0xB, 0)), Outcome::Good);
        assert_eq!(s.read(0).unwrap()[4..8], [0, 0, 0, 0]);
        assert!(s.read(3).is_ok() && s.read(4).is_err());
        assert_eq!(
            s.out(&b, "iqn.b", 1, 0, 0, &[0; 8]),
            Outcome::Check(Sense::PARAM_LIST_LENGTH)
        );
    }

    fn cmd(me: [u8; 16], name: &str, sa: u8, nt: u8, key: u64, sa_key: u64) -> Vec<u8> {
        PrCmd {
            target: "iqn.t".into(),
            lun: 0,
            me,
            name: name.into(),
            port: 1,
            out: PrOut {
                sa,
                nt,
                key,
                sa_key,
                aptpl: false,
            },
        }
        .encode()
    }

    #[test]
    fn the_leader_decides_and_the_other_site_installs_the_same_state() {
        use crate::layer::mirror::engine::{Install, MetaHandler};
        let site = || {
            let pr = std::sync::Arc::new(PrState::default());
            let r = PrReplicator::new(vec![("iqn.t".into(), 0, 3, std::sync::Arc::clone(&pr))]);
            (pr, r)
        };
        let ((pa, la), (pb, lb)) = (site(), site());
        let a = nexus_id("iqn.a", &[0x80, 0, 0, 0, 0, 1], 1);
        let b = nexus_id("iqn.b", &[0x80, 0, 0, 0, 0, 1], 1);
        // a registers and reserves Write Exclusive at the leader; b's reserve conflicts.
        for (c, want) in [
            (cmd(a, "iqn.a", 0, 0, 0, 0xA), 0),
            (cmd(b, "iqn.b", 0, 0, 0, 0xB), 0),
            (cmd(a, "iqn.a", 1, 1, 0xA, 0), 0),
            (cmd(b, "iqn.b", 1, 1, 0xB, 0), code::CONFLICT),
            (cmd(a, "iqn.a", 2, 2, 0xA, 0), code::INVALID_RELEASE),
        ] {
            let (status, state) = la.execute(3, &c);
            assert_eq!(status, want);
            assert_eq!(state.is_some(), want == 0, "a change carries the new state");
            if let Some(st) = state {
                assert_eq!(lb.install(3, &st), Install::Done);
            }
        }
        // The other site enforces and reports the same.
        assert!(!pb.access(&b, &[0; 16]).1.write && pb.access(&a, &[0; 16]).1.write);
        assert_eq!(pb.read(0).unwrap(), pa.read(0).unwrap());
        assert_eq!(pb.read(1).unwrap(), pa.read(1).unwrap());
        assert_eq!(pb.read(3).unwrap(), pa.read(3).unwrap(), "names travel too");
        // A session's cached access sees the install (the version moved).
        assert!(pb.version.load(Ordering::Acquire) > 0);
        // The whole state of the volume, for a peer that comes back empty.
        let full = la.full_state(3);
        assert_eq!(full.len(), 1);
        let (pc, lc) = site();
        assert_eq!(lc.install(3, &full[0]), Install::Done);
        assert_eq!(pc.read(3).unwrap(), pa.read(3).unwrap());
        assert!(la.full_state(4).is_empty(), "another volume has none");
        // A LUN not here, or another volume: refused, nothing changes.
        assert_eq!(lb.install(4, &full[0]), Install::Failed);
        assert_eq!(
            la.execute(4, &cmd(a, "iqn.a", 3, 0, 0xA, 0)),
            (code::INTERNAL, None)
        );
    }

    #[test]
    fn malformed_commands_and_states_are_refused_never_a_panic() {
        use crate::layer::mirror::engine::{Install, MetaHandler};
        let pr = std::sync::Arc::new(PrState::default());
        let r = PrReplicator::new(vec![("iqn.t".into(), 0, 0, pr)]);
        let good = cmd([1; 16], "iqn.a", 1, 1, 5, 0);
        assert!(PrCmd::decode(&good).is_some());
        for n in 0..good.len() {
            assert!(PrCmd::decode(&good[..n]).is_none(), "cut at {n}");
        }
        assert!(
            PrCmd::decode(&[good.clone(), vec![0]].concat()).is_none(),
            "trailing"
        );
        // A type where none belongs, none where one does, an unknown action.
        assert!(PrCmd::decode(&cmd([1; 16], "x", 0, 1, 0, 0)).is_none());
        assert!(PrCmd::decode(&cmd([1; 16], "x", 1, 0, 0, 0)).is_none());
        assert!(PrCmd::decode(&cmd([1; 16], "x", 7, 0, 0, 0)).is_none());
        assert!(PrCmd::decode(&cmd([1; 16], "x", 4, 9, 0, 0)).is_none());
        assert_eq!(r.execute(0, &good[..5]).0, code::INTERNAL);
        let st = PrState::default();
        st.out(&[1; 16], "iqn.a", 1, 0, 0, &params(0, 7));
        let state = st.encode_state("iqn.t", 0);
        assert!(decode_replicated(&state).is_some());
        for n in 0..state.len() {
            assert_eq!(r.install(0, &state[..n]), Install::Malformed, "cut at {n}");
        }
        let mut bad = state.clone();
        bad[2 + 1 + 5 + 2 + 1 + 8 + 4] = 7; // reservation type 7
        assert!(decode_replicated(&bad).is_none());
        // Pseudo-random bytes: never a panic.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..2000 {
            let b: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = r.execute(0, &b);
            let _ = r.install(0, &b);
        }
    }

    #[test]
    fn outcomes_survive_the_trip_as_a_status() {
        use crate::layer::mirror::engine::meta_result;
        for o in [
            Outcome::Good,
            Outcome::Conflict,
            Outcome::Check(INVALID_RELEASE),
            Outcome::Check(Sense::INVALID_FIELD_PARAM),
            Outcome::Check(NO_REGISTRATION_RESOURCES),
            Outcome::Check(Sense::INTERNAL),
        ] {
            assert_eq!(outcome_of(meta_result(outcome_code(o))), o);
        }
        // The engine's own Internal Error (6), and a site that cannot reach the decision.
        assert_eq!(outcome_of(meta_result(6)), Outcome::Check(Sense::INTERNAL));
        assert_eq!(
            outcome_of(Err(crate::uring::Errno::UNAVAILABLE)),
            Outcome::Check(Sense::ALUA_UNAVAILABLE)
        );
        assert_eq!(
            outcome_of(Err(crate::uring::Errno::IO)),
            Outcome::Check(Sense::INTERNAL)
        );
    }

    #[test]
    fn registrations_stop_at_the_limit_with_insufficient_resources() {
        let s = PrState::default();
        for i in 0..MAX_PR_REGISTRANTS {
            let id = nexus_id(
                "iqn.x",
                &(i as u64).to_be_bytes()[2..].try_into().unwrap(),
                1,
            );
            assert_eq!(
                s.out(&id, "iqn.x", 1, 0, 0, &params(0, 1 + i as u64)),
                Outcome::Good
            );
        }
        let one_more = nexus_id("iqn.y", &[0; 6], 1);
        assert_eq!(
            s.out(&one_more, "iqn.y", 1, 0, 0, &params(0, 9)),
            Outcome::Check(NO_REGISTRATION_RESOURCES)
        );
        // A full state still fits one META_STATE with the longest names (initiator port
        // names: the 223-byte iSCSI name with its ISID).
        let long = "i".repeat(223);
        let t = PrState::default();
        for i in 0..MAX_PR_REGISTRANTS {
            let isid = (i as u64).to_be_bytes()[2..].try_into().unwrap();
            let id = nexus_id(&long, &isid, 1);
            let port = initiator_port(&long, &isid);
            assert_eq!(
                t.out(&id, &port, 1, 0, 0, &params(0, 1 + i as u64)),
                Outcome::Good
            );
        }
        // Reported as initiator ports (format 01b) with the ISID, the whole name kept.
        let f = t.read(3).unwrap();
        assert_eq!(f[8 + 24], 0x45);
        let want = format!("{long},i,0x000000000000");
        assert_eq!(&f[8 + 28..8 + 28 + want.len()], want.as_bytes());
        let st = t.encode_state(&"t".repeat(223), u16::MAX);
        assert!(st.len() < crate::layer::mirror::wire::MAX_META_STATE as usize - 1);
        assert!(decode_replicated(&st).is_some());
    }

    fn aptpl_params(key: u64, sa_key: u64) -> Vec<u8> {
        let mut p = params(key, sa_key);
        p[20] = 0x01;
        p
    }

    #[test]
    fn aptpl_persists_the_state_through_a_restart_and_plain_register_forgets_it() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("lun0.pr");
        let a = nexus_id("iqn.a", &[0x80, 0, 0, 0, 0, 1], 1);
        // Nowhere to persist: APTPL refused, PTPL_C 0.
        let s = PrState::default();
        assert_eq!(
            s.out(&a, "iqn.a", 1, 0, 0, &aptpl_params(0, 5)),
            Outcome::Check(Sense::INVALID_FIELD_PARAM)
        );
        assert_eq!(s.read(2).unwrap()[2] & 1, 0);
        // Attached: APTPL register persists; a new run (attach again) has the registration and
        // the reservation.
        let s = PrState::default();
        s.attach(path.clone(), "iqn.t", 0).unwrap();
        assert_eq!(s.read(2).unwrap()[2] & 1, 1, "PTPL_C");
        assert_eq!(
            s.out(&a, "iqn.a", 1, 0, 0, &aptpl_params(0, 5)),
            Outcome::Good
        );
        assert_eq!(s.read(2).unwrap()[3] & 1, 1, "PTPL_A");
        assert_eq!(s.out(&a, "iqn.a", 1, 1, 1, &params(5, 0)), Outcome::Good);
        assert!(path.exists());
        let again = PrState::default();
        again.attach(path.clone(), "iqn.t", 0).unwrap();
        assert_eq!(again.read(0).unwrap(), s.read(0).unwrap());
        assert_eq!(again.read(1).unwrap(), s.read(1).unwrap());
        assert_eq!(again.read(3).unwrap(), s.read(3).unwrap(), "names too");
        assert!(
            again.version.load(Ordering::Acquire) > 0,
            "sessions re-read it"
        );
        // A REGISTER without APTPL: the file goes, the next run starts empty.
        assert_eq!(
            again.out(&a, "iqn.a", 1, 0, 0, &params(5, 6)),
            Outcome::Good
        );
        assert!(!path.exists());
        let third = PrState::default();
        third.attach(path.clone(), "iqn.t", 0).unwrap();
        assert_eq!(third.read(0).unwrap()[4..8], [0, 0, 0, 0], "no registrant");
        // Another LUN's file, or a damaged one, is refused at start.
        let s = PrState::default();
        s.attach(path.clone(), "iqn.t", 0).unwrap();
        assert_eq!(
            s.out(&a, "iqn.a", 1, 0, 0, &aptpl_params(0, 5)),
            Outcome::Good
        );
        let e = PrState::default()
            .attach(path.clone(), "iqn.t", 1)
            .unwrap_err();
        assert!(e.contains("not of iqn.t LUN 1"), "{e}");
        std::fs::write(&path, b"garbage").unwrap();
        let e = PrState::default()
            .attach(path.clone(), "iqn.t", 0)
            .unwrap_err();
        assert!(e.contains("malformed"), "{e}");
    }

    #[test]
    fn an_installed_state_is_persisted_like_a_decided_one() {
        use crate::layer::mirror::engine::{Install, MetaHandler};
        let d = tempfile::tempdir().unwrap();
        let leader = std::sync::Arc::new(PrState::default());
        leader.attach(d.path().join("a.pr"), "iqn.t", 0).unwrap();
        let follower = std::sync::Arc::new(PrState::default());
        follower.attach(d.path().join("b.pr"), "iqn.t", 0).unwrap();
        let la = PrReplicator::new(vec![("iqn.t".into(), 0, 0, std::sync::Arc::clone(&leader))]);
        let lb = PrReplicator::new(vec![(
            "iqn.t".into(),
            0,
            0,
            std::sync::Arc::clone(&follower),
        )]);
        let a = nexus_id("iqn.a", &[0x80, 0, 0, 0, 0, 1], 1);
        let mut c = PrCmd::decode(&cmd(a, "iqn.a", 0, 0, 0, 9)).unwrap();
        c.out.aptpl = true;
        let (st, state) = la.execute(0, &c.encode());
        assert_eq!(st, 0);
        assert_eq!(lb.install(0, &state.unwrap()), Install::Done);
        let back = PrState::default();
        back.attach(d.path().join("b.pr"), "iqn.t", 0).unwrap();
        assert_eq!(back.read(0).unwrap(), leader.read(0).unwrap());
    }

    #[test]
    fn a_reset_decided_at_the_leader_raises_the_unit_attention_at_both_sites() {
        use crate::layer::mirror::engine::{Install, MetaHandler};
        use std::sync::Arc;
        let site = || {
            let resets = Arc::new(AtomicU64::new(0));
            let pr = Arc::new(PrState::default());
            pr.set_lu_resets(Arc::clone(&resets));
            let r = PrReplicator::new(vec![("iqn.t".into(), 0, 0, pr)]);
            (resets, r)
        };
        let ((ra, la), (rb, lb)) = (site(), site());
        let reset = cmd([1; 16], "iqn.a", RESET_EVENT, 0, 0, 0);
        assert!(PrCmd::decode(&reset).is_some());
        let (st, state) = la.execute(0, &reset);
        assert_eq!(st, 0);
        assert_eq!(
            ra.load(Ordering::Acquire),
            1,
            "the leader's sessions see it"
        );
        assert_eq!(lb.install(0, &state.unwrap()), Install::Done);
        assert_eq!(rb.load(Ordering::Acquire), 1, "and the other site's");
        // The same state again (a session's full state) raises nothing new.
        assert_eq!(lb.install(0, &la.full_state(0)[0]), Install::Done);
        assert_eq!(rb.load(Ordering::Acquire), 1);
        // A reset event carries nothing else.
        assert!(PrCmd::decode(&cmd([1; 16], "x", RESET_EVENT, 1, 0, 0)).is_none());
        assert!(PrCmd::decode(&cmd([1; 16], "x", RESET_EVENT, 0, 5, 0)).is_none());
    }

    /// SPC-4 §6.16.3 (table 216): ALL_TG_PT is valid for REGISTER and REGISTER AND IGNORE
    /// EXISTING KEY only (refused there: not supported) and ignored by the other actions;
    /// SPEC_I_PT is refused with every action (invalid, or not supported for REGISTER).
    #[test]
    fn all_tg_pt_is_refused_by_register_only_and_spec_i_pt_by_every_action() {
        let with = |flags: u8| {
            let mut p = params(1, 2);
            p[20] = flags;
            p
        };
        for (sa, scope_type) in [(0, 0), (6, 0)] {
            assert_eq!(
                parse_out(sa, scope_type, &with(0x04)),
                Err(Sense::INVALID_FIELD_PARAM),
                "ALL_TG_PT with service action {sa}"
            );
        }
        for (sa, scope_type) in [(1, 1), (2, 1), (3, 0), (4, 1), (5, 1)] {
            assert_eq!(
                parse_out(sa, scope_type, &with(0x04)),
                parse_out(sa, scope_type, &with(0)),
                "ALL_TG_PT ignored by service action {sa}"
            );
            assert!(parse_out(sa, scope_type, &with(0x04)).is_ok());
        }
        for (sa, scope_type) in [(0, 0), (1, 1), (2, 1), (3, 0), (4, 1), (5, 1), (6, 0)] {
            assert_eq!(
                parse_out(sa, scope_type, &with(0x08)),
                Err(Sense::INVALID_FIELD_PARAM),
                "SPEC_I_PT with service action {sa}"
            );
        }
    }

    /// The RELATIVE TARGET PORT IDENTIFIER (bytes 18..20 of each READ FULL STATUS descriptor)
    /// is the port the registration came through, a new registration's port replacing it; it
    /// travels with replicated and persisted states, and a state of the first format (no
    /// ports) is still read, with ports 0.
    #[test]
    fn read_full_status_reports_the_port_each_registration_came_through() {
        let s = PrState::default();
        let a = nexus_id("iqn.a", &[0x80, 0, 0, 0, 0, 1], 1);
        let b = nexus_id("iqn.b", &[0x80, 0, 0, 0, 0, 1], 1);
        assert_eq!(s.out(&a, "iqn.a", 1, 0, 0, &params(0, 0xA)), Outcome::Good);
        assert_eq!(s.out(&b, "iqn.b", 2, 0, 0, &params(0, 0xB)), Outcome::Good);
        // Other actions through another port do not move a registration.
        assert_eq!(s.out(&a, "iqn.a", 2, 1, 1, &params(0xA, 0)), Outcome::Good);
        let ports = |s: &PrState| {
            let f = s.read(3).unwrap();
            let mut at = 8;
            let mut out = Vec::new();
            while at < f.len() {
                let key = u64::from_be_bytes(f[at..at + 8].try_into().unwrap());
                out.push((
                    key,
                    f[at + 12],
                    u16::from_be_bytes([f[at + 18], f[at + 19]]),
                ));
                at += 24 + u32::from_be_bytes(f[at + 20..at + 24].try_into().unwrap()) as usize;
            }
            out
        };
        assert_eq!(ports(&s), [(0xA, 0x01, 1), (0xB, 0, 2)]);
        // A new key registered through port 2: reported with port 2.
        assert_eq!(
            s.out(&a, "iqn.a", 2, 0, 0, &params(0xA, 0xC)),
            Outcome::Good
        );
        assert_eq!(ports(&s), [(0xC, 0x01, 2), (0xB, 0, 2)]);
        // Replicated: the other site reports the same ports.
        let ((_, _, ns, names, aptpl, gen_), reserve) =
            decode_replicated(&s.encode_state("iqn.t", 0)).unwrap();
        let other = PrState::default();
        assert!(other.install(ns, names, aptpl, gen_, reserve));
        assert_eq!(ports(&other), ports(&s));
        // A state of the first format: no leading 0 and no ports.
        let mut old = vec![5];
        old.extend_from_slice(b"iqn.t");
        old.extend_from_slice(&0u16.to_le_bytes());
        old.push(1);
        old.extend_from_slice(&0u64.to_le_bytes());
        old.extend_from_slice(&3u32.to_le_bytes());
        old.extend_from_slice(&[0, 0]);
        old.extend_from_slice(&[0; 16]);
        old.extend_from_slice(&1u16.to_le_bytes());
        old.extend_from_slice(&a);
        old.extend_from_slice(&7u64.to_le_bytes());
        old.push(5);
        old.extend_from_slice(b"iqn.a");
        let (t, lun, ns, names, aptpl, _) = decode_state(&old).expect("the first format");
        assert_eq!(
            (t.as_str(), lun, aptpl, ns.registrants.len()),
            ("iqn.t", 0, true, 1)
        );
        assert_eq!(names, [(a, "iqn.a".to_string(), 0)]);
        // Its bare initiator name (no ISID) is reported as it is, in a format 00b TransportID.
        let was = PrState::default();
        assert!(was.install(ns, names, aptpl, 0, None));
        let f = was.read(3).unwrap();
        assert_eq!((f[8 + 24], &f[8 + 28..8 + 34]), (0x05, &b"iqn.a\0"[..]));
        // An unknown format is refused.
        let mut new = s.encode_state("iqn.t", 0);
        new[1] = 3;
        assert!(decode_replicated(&new).is_none());
    }
}
