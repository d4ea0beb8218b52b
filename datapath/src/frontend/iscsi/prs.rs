//! Persistent reservations (SPC-4 PERSISTENT RESERVE IN / OUT) of the iSCSI logical units.
//!
//! Model: every LUN has one [`PrState`]: the NVMe front end's per-namespace reservation model
//! (`nvmf::resv::NsResv`: registrants with keys, a holder, a type, a generation), whose rules
//! are SCSI's own (NVMe took them from SPC), behind a `Mutex` taken only by PERSISTENT RESERVE
//! commands and by a session re-evaluating its access after the state's `version` moved. A
//! registrant is an I_T nexus: its 16-byte id hashes the initiator name and the ISID.
//!
//! Types map one to one (SCSI 1 WE, 3 EA, 5 WE-RO, 6 EA-RO, 7 WE-AR, 8 EA-AR → NVMe 1..6).
//! Not supported (refused with sense, and not advertised by REPORT CAPABILITIES): APTPL,
//! ALL_TG_PT, SPEC_I_PT, REGISTER AND MOVE, REPLACE LOST RESERVATION.
//!
//! Limits (docs/iscsi.md): the state is this site's, in memory (not decided by a mirrored
//! volume's leader, not persisted, not shared with NVMe reservations of the same volume);
//! PREEMPT AND ABORT does not abort the preempted nexuses' tasks.
//!
//! Invariants: the version is bumped after every change, under the lock, so a session that
//! sees the new version and then takes the lock reads the new state; nothing here panics on
//! any parameter list.

use super::scsi::Sense;
use crate::frontend::nvmf::cmd::Status;
use crate::frontend::nvmf::resv::{Access, NsResv};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One LUN's persistent reservation state.
#[derive(Debug, Default)]
pub struct PrState {
    /// Bumped after every change (sessions cache their access by it).
    pub version: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ns: NsResv,
    /// Initiator names and ISIDs of the registrants (READ FULL STATUS transport ids).
    names: Vec<([u8; 16], String)>,
}

/// The registrant id of an I_T nexus.
pub fn nexus_id(initiator: &str, isid: &[u8; 6]) -> [u8; 16] {
    let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
    crate::frontend::nvmf::cmd::nguid(&format!("{initiator},i,0x{hex}"), 0)
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

impl PrState {
    /// What nexus `me` may do, and the version it was computed at.
    pub fn access(&self, me: &[u8; 16]) -> (u64, Access) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (self.version.load(Ordering::Acquire), g.ns.access(me))
    }

    /// PERSISTENT RESERVE OUT service action `sa` with `scope_type` (CDB byte 2) and the
    /// parameter list `p`, from nexus `me` (initiator `name`).
    pub fn out(&self, me: &[u8; 16], name: &str, sa: u8, scope_type: u8, p: &[u8]) -> Outcome {
        if matches!(sa, 7 | 8) || sa > 8 {
            return Outcome::Check(Sense::INVALID_FIELD_CDB.at_cdb_byte(1));
        }
        if p.len() != 24 {
            return Outcome::Check(Sense::PARAM_LIST_LENGTH);
        }
        let key = be64(&p[0..8]);
        let sa_key = be64(&p[8..16]);
        let flags = p[20];
        // SPEC_I_PT (0x08), ALL_TG_PT (0x04) and APTPL (0x01) are not supported.
        if flags & 0x0D != 0 {
            return Outcome::Check(Sense::INVALID_FIELD_PARAM);
        }
        let t = scope_type & 0x0F;
        let needs_type = matches!(sa, 1 | 2 | 4 | 5);
        if needs_type && scope_type >> 4 != 0 {
            return Outcome::Check(Sense::INVALID_FIELD_CDB.at_cdb_byte(2));
        }
        let nt = if needs_type {
            match scsi_type(t) {
                Some(nt) => nt,
                None => return Outcome::Check(Sense::INVALID_FIELD_CDB.at_cdb_byte(2)),
            }
        } else {
            0
        };
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = g.ns.clone();
        let registered =
            g.ns.registrants
                .iter()
                .find(|r| &r.hostid == me)
                .map(|r| r.rkey);
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
        if g.ns != before {
            let live: Vec<[u8; 16]> = g.ns.registrants.iter().map(|r| r.hostid).collect();
            g.names.retain(|(h, _)| live.contains(h));
            if live.contains(me) && !g.names.iter().any(|(h, _)| h == me) {
                g.names.push((*me, name.to_string()));
            }
            self.version.fetch_add(1, Ordering::AcqRel);
        }
        outcome(r, bad)
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
                // REPORT CAPABILITIES: no CRH, SIP_C, ATP_C, PTPL_C; TMV with the six types.
                b.extend_from_slice(&[0, 8, 0, 0x80, 0xEA, 0x01, 0, 0]);
            }
            3 => {
                b.extend_from_slice(&ns.generation.to_be_bytes());
                b.extend_from_slice(&0u32.to_be_bytes());
                for r in &ns.registrants {
                    let name = g
                        .names
                        .iter()
                        .find(|(h, _)| *h == r.hostid)
                        .map_or("", |(_, n)| n.as_str());
                    // iSCSI TransportID, format 00b: protocol 5, length, the NUL-ended name
                    // padded to a multiple of 4.
                    let mut tid = vec![0x05, 0, 0, 0];
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
                    b.extend_from_slice(&[0; 2]); // relative target port (ALL_TG_PT=0)
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
        let a = nexus_id("iqn.a", &[0x80, 0, 0, 0, 0, 1]);
        let b = nexus_id("iqn.b", &[0x80, 0, 0, 0, 0, 1]);
        assert_ne!(a, b);
        assert_eq!(s.out(&a, "iqn.a", 0, 0, &params(0, 0xA)), Outcome::Good);
        assert_eq!(s.out(&b, "iqn.b", 0, 0, &params(0, 0xB)), Outcome::Good);
        assert_eq!(s.out(&a, "iqn.a", 0, 0, &params(1, 2)), Outcome::Conflict);
        // Write Exclusive held by a: b reads, does not write.
        assert_eq!(s.out(&a, "iqn.a", 1, 1, &params(0xA, 0)), Outcome::Good);
        let (_, acc) = s.access(&b);
        assert!(acc.read && !acc.write);
        let keys = s.read(0).unwrap();
        assert_eq!(u32::from_be_bytes(keys[4..8].try_into().unwrap()), 16);
        let res = s.read(1).unwrap();
        assert_eq!(
            (res[21], u64::from_be_bytes(res[8..16].try_into().unwrap())),
            (1, 0xA)
        );
        // b preempts a: a is no longer registered, b holds it.
        assert_eq!(s.out(&b, "iqn.b", 4, 1, &params(0xB, 0xA)), Outcome::Good);
        assert!(!s.registered(&a));
        assert!(s.access(&a).1.read && !s.access(&a).1.write);
        // Release with the wrong type: INVALID RELEASE.
        assert_eq!(
            s.out(&b, "iqn.b", 2, 3, &params(0xB, 0)),
            Outcome::Check(INVALID_RELEASE)
        );
        assert_eq!(s.out(&b, "iqn.b", 3, 0, &params(0xB, 0)), Outcome::Good);
        assert_eq!(s.read(0).unwrap()[4..8], [0, 0, 0, 0]);
        assert!(s.read(3).is_ok() && s.read(4).is_err());
        assert_eq!(
            s.out(&b, "iqn.b", 0, 0, &[0; 8]),
            Outcome::Check(Sense::PARAM_LIST_LENGTH)
        );
    }
}
