//! SPC-2 reservations (RESERVE(6)/(10), RELEASE(6)/(10)) of the iSCSI logical units: the
//! decision rules and the identity of their holder, kept with the LUN's persistent reservations
//! (`prs::PrState`) and decided, for a mirrored volume, by its leader site like them
//! (docs/iscsi.md, "RESERVE and RELEASE across the sites").
//!
//! Model: a LUN has at most one RESERVE holder, an I_T nexus named by its **reservation id**
//! ([`res_id`]): the target port group of the site the session is logged in at (1 or 2: the
//! target port, so the same initiator port through the other site is another I_T nexus), the
//! incarnation of that site's process (random at start) and the session's number there. The
//! rules are SPC-2's (§5.5.1, §7.21, §7.23), which SPC-4 keeps for a device server that reports
//! CRH 0 in REPORT CAPABILITIES (as this one does):
//! - RESERVE from the holder: GOOD; from another nexus while one holds it: RESERVATION CONFLICT;
//! - RELEASE from the holder releases it; from any other nexus: GOOD, nothing changes;
//! - while any I_T nexus is registered for persistent reservations, every RESERVE and RELEASE
//!   conflicts; while a RESERVE is held, every PERSISTENT RESERVE IN and OUT conflicts (from
//!   the holder too);
//! - while a RESERVE is held by another nexus, only INQUIRY, REPORT LUNS, REQUEST SENSE,
//!   RELEASE, REPORT TARGET PORT GROUPS and REPORT SUPPORTED OPERATION CODES are served to it;
//!   everything else conflicts;
//! - the reservation ends with its I_T nexus (logout, connection loss, a restart of the site
//!   process), a LOGICAL UNIT RESET or target reset, and power loss: it is never persisted.
//!
//! Invariants: the decision is a pure function of the holder, whether any nexus is registered
//! and the command ([`decide`]); a holder of the requester's own site with another incarnation
//! is an I_T nexus that no longer exists (its process restarted) and never blocks anybody.

/// RESERVE(6) or RESERVE(10), as a PERSISTENT RESERVE command's service action carried to the
/// volume's leader (`prs::PrCmd`; docs/mirror-protocol.md).
pub const SA_RESERVE: u8 = 0x11;
/// RELEASE(6) or RELEASE(10).
pub const SA_RELEASE: u8 = 0x12;
/// The I_T nexus is gone (logout, connection loss): release the reservation if it holds it.
pub const SA_NEXUS_LOSS: u8 = 0x13;

/// Whether service action `sa` is one of the SPC-2 reservation commands.
pub fn is_spc2(sa: u8) -> bool {
    matches!(sa, SA_RESERVE | SA_RELEASE | SA_NEXUS_LOSS)
}

/// The reservation id of session `session` of the site process `incarnation` (48 bits kept)
/// whose target port group is `tpg`.
pub fn res_id(tpg: u16, incarnation: u64, session: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0..2].copy_from_slice(&tpg.to_be_bytes());
    id[2..8].copy_from_slice(&incarnation.to_be_bytes()[2..8]);
    id[8..16].copy_from_slice(&session.to_be_bytes());
    id
}

/// A process incarnation for [`res_id`]: differs between processes of a site (clock and pid,
/// mixed so the 48 bits kept differ too).
pub fn new_incarnation() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // splitmix64's finaliser over the clock and the pid.
    let mut z = t ^ (u64::from(std::process::id())).rotate_left(40);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The target port group (site) of reservation id `id`.
pub fn site_of(id: &[u8; 16]) -> u16 {
    u16::from_be_bytes([id[0], id[1]])
}

/// Whether `holder` is an I_T nexus of `me`'s site that belonged to an earlier process of it
/// (so it is gone).
pub fn gone_for(holder: &[u8; 16], me: &[u8; 16]) -> bool {
    holder[0..2] == me[0..2] && holder[2..8] != me[2..8]
}

/// What a nexus sees of a LUN's RESERVE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Nobody holds it (or only a nexus that is gone).
    Free,
    /// This nexus holds it.
    Mine,
    /// Another nexus holds it.
    Other,
}

/// What nexus `me` sees of the RESERVE held by `holder`.
pub fn view(holder: Option<&[u8; 16]>, me: &[u8; 16]) -> View {
    match holder {
        None => View::Free,
        Some(h) if h == me => View::Mine,
        Some(h) if gone_for(h, me) => View::Free,
        Some(_) => View::Other,
    }
}

/// The decision on SPC-2 command `sa` ([`SA_RESERVE`], [`SA_RELEASE`], [`SA_NEXUS_LOSS`]) from
/// nexus `me` with the RESERVE held by `holder` and `registered` true when any I_T nexus is
/// registered for persistent reservations: (GOOD, else RESERVATION CONFLICT; the new holder).
pub fn decide(
    holder: Option<[u8; 16]>,
    registered: bool,
    sa: u8,
    me: &[u8; 16],
) -> (bool, Option<[u8; 16]>) {
    match sa {
        SA_NEXUS_LOSS => (true, holder.filter(|h| h != me)),
        _ if registered => (false, holder),
        SA_RESERVE => match view(holder.as_ref(), me) {
            View::Other => (false, holder),
            View::Free | View::Mine => (true, Some(*me)),
        },
        SA_RELEASE => (true, holder.filter(|h| h != me)),
        _ => (false, holder),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_release_and_conflicts_follow_spc2() {
        let a = res_id(1, 0xAAAA, 1);
        let b = res_id(2, 0xBBBB, 1);
        // A free LUN: a reserves; again is GOOD; b conflicts on RESERVE, its RELEASE does nothing.
        let (ok, h) = decide(None, false, SA_RESERVE, &a);
        assert!(ok);
        assert_eq!(h, Some(a));
        assert_eq!(decide(h, false, SA_RESERVE, &a), (true, Some(a)));
        assert_eq!(decide(h, false, SA_RESERVE, &b), (false, Some(a)));
        assert_eq!(decide(h, false, SA_RELEASE, &b), (true, Some(a)));
        assert_eq!(view(h.as_ref(), &a), View::Mine);
        assert_eq!(view(h.as_ref(), &b), View::Other);
        // a releases: b may reserve now.
        let (ok, h) = decide(h, false, SA_RELEASE, &a);
        assert!(ok && h.is_none());
        assert_eq!(decide(h, false, SA_RESERVE, &b), (true, Some(b)));
        // A RELEASE with nothing held is GOOD.
        assert_eq!(decide(None, false, SA_RELEASE, &a), (true, None));
    }

    #[test]
    fn registrations_make_every_reserve_and_release_conflict() {
        let a = res_id(1, 7, 1);
        assert_eq!(decide(None, true, SA_RESERVE, &a), (false, None));
        assert_eq!(decide(None, true, SA_RELEASE, &a), (false, None));
        // Even the holder's (a REGISTER cannot happen while it holds, but a state may say so).
        assert_eq!(decide(Some(a), true, SA_RELEASE, &a), (false, Some(a)));
        // The loss of the nexus releases regardless.
        assert_eq!(decide(Some(a), true, SA_NEXUS_LOSS, &a), (true, None));
    }

    #[test]
    fn a_nexus_loss_releases_only_its_own_reservation() {
        let a = res_id(1, 7, 1);
        let a2 = res_id(1, 7, 2);
        assert_eq!(decide(Some(a), false, SA_NEXUS_LOSS, &a2), (true, Some(a)));
        assert_eq!(decide(Some(a), false, SA_NEXUS_LOSS, &a), (true, None));
        assert_eq!(decide(None, false, SA_NEXUS_LOSS, &a), (true, None));
    }

    #[test]
    fn a_holder_of_an_earlier_process_of_the_same_site_is_gone() {
        let old = res_id(2, 0x1111, 5);
        let new = res_id(2, 0x2222, 1);
        let other_site = res_id(1, 0x2222, 5);
        assert!(gone_for(&old, &new));
        assert!(!gone_for(&old, &other_site), "the other site cannot tell");
        assert!(!gone_for(&old, &res_id(2, 0x1111, 9)), "same process");
        assert_eq!(view(Some(&old), &new), View::Free);
        assert_eq!(view(Some(&old), &other_site), View::Other);
        assert_eq!(
            decide(Some(old), false, SA_RESERVE, &new),
            (true, Some(new))
        );
        assert_eq!(
            decide(Some(old), false, SA_RESERVE, &other_site),
            (false, Some(old))
        );
    }

    #[test]
    fn ids_keep_site_incarnation_and_session_apart() {
        let id = res_id(2, 0xFFFF_1234_5678_9ABC, 0x0102_0304_0506_0708);
        assert_eq!(site_of(&id), 2);
        assert_eq!(&id[2..8], &[0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC]);
        assert_eq!(&id[8..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_ne!(res_id(1, 1, 1), res_id(2, 1, 1));
        assert!(is_spc2(SA_RESERVE) && is_spc2(SA_RELEASE) && is_spc2(SA_NEXUS_LOSS));
        assert!(!is_spc2(0x10) && !is_spc2(1));
    }
}

/// The rules as the replicated state applies them: decided at the leader, installed at the
/// other site, tied to the persistent reservations of the same LUN.
#[cfg(test)]
mod replicated_tests {
    use super::*;
    use crate::frontend::iscsi::prs::{
        self, Outcome, PrCmd, PrOut, PrReplicator, PrState, RESET_EVENT,
    };
    use crate::layer::mirror::engine::{Install, MetaHandler};
    use std::sync::Arc;

    fn cmd(me: [u8; 16], sa: u8) -> Vec<u8> {
        PrCmd {
            target: "iqn.t".into(),
            lun: 0,
            me,
            name: "iqn.host".into(),
            port: 1,
            out: PrOut {
                sa,
                nt: 0,
                key: 0,
                sa_key: 0,
                aptpl: false,
            },
        }
        .encode()
    }

    fn site(tpg: u16) -> (Arc<PrState>, PrReplicator) {
        let pr = Arc::new(PrState::default());
        let r = PrReplicator::new(vec![("iqn.t".into(), 0, 0, Arc::clone(&pr))]).for_site(tpg);
        (pr, r)
    }

    /// Decide `c` at `leader` and install any new state at `other`: the status.
    fn run(leader: &PrReplicator, other: &PrReplicator, c: &[u8]) -> u16 {
        let (st, state) = leader.execute(0, c);
        if let Some(s) = state {
            assert_eq!(other.install(0, &s), Install::Done);
        }
        st
    }

    #[test]
    fn a_reserve_decided_at_the_leader_is_enforced_at_both_sites_until_released() {
        let ((pa, la), (pb, lb)) = (site(1), site(2));
        let a = res_id(1, 0xA, 1);
        let b = res_id(2, 0xB, 1);
        assert_eq!(run(&la, &lb, &cmd(a, SA_RESERVE)), 0);
        // Both sites see a as the holder.
        for p in [&pa, &pb] {
            assert_eq!(p.reserve_view(&a), View::Mine);
            assert_eq!(p.reserve_view(&b), View::Other);
        }
        // b's RESERVE (sent through site b, decided at the leader) conflicts; its RELEASE is
        // GOOD and changes nothing.
        assert_eq!(run(&la, &lb, &cmd(b, SA_RESERVE)), 0x18);
        assert_eq!(run(&la, &lb, &cmd(b, SA_RELEASE)), 0);
        assert_eq!(pb.reserve_view(&a), View::Mine);
        // Every PERSISTENT RESERVE OUT conflicts while it is held, the holder's too.
        let reg = PrOut {
            sa: 0,
            nt: 0,
            key: 0,
            sa_key: 5,
            aptpl: false,
        };
        assert_eq!(pa.apply(&[9; 16], "iqn.x", 1, &reg), Outcome::Conflict);
        // a releases: b reserves, at both sites.
        assert_eq!(run(&la, &lb, &cmd(a, SA_RELEASE)), 0);
        assert_eq!(pb.reserve_view(&b), View::Free);
        assert_eq!(run(&la, &lb, &cmd(b, SA_RESERVE)), 0);
        assert_eq!(pa.reserve_view(&a), View::Other);
        // b's I_T nexus goes: released at both sites; a's loss (not the holder) does nothing.
        assert_eq!(run(&la, &lb, &cmd(a, SA_NEXUS_LOSS)), 0);
        assert_eq!(pb.reserve_view(&b), View::Mine);
        assert_eq!(run(&la, &lb, &cmd(b, SA_NEXUS_LOSS)), 0);
        assert_eq!(
            (pa.reserve_view(&a), pb.reserve_view(&a)),
            (View::Free, View::Free)
        );
    }

    #[test]
    fn registrations_refuse_reserve_and_release_and_a_reset_releases() {
        let ((pa, la), (pb, lb)) = (site(1), site(2));
        let a = res_id(1, 0xA, 1);
        // A registered nexus: RESERVE and RELEASE conflict (CRH 0).
        let reg = PrOut {
            sa: 0,
            nt: 0,
            key: 0,
            sa_key: 7,
            aptpl: false,
        };
        assert_eq!(pa.apply(&[3; 16], "iqn.r", 1, &reg), Outcome::Good);
        assert_eq!(run(&la, &lb, &cmd(a, SA_RESERVE)), 0x18);
        assert_eq!(run(&la, &lb, &cmd(a, SA_RELEASE)), 0x18);
        // Unregistered again: RESERVE works; a LUN reset decided at the leader releases it at
        // both sites.
        let unreg = PrOut {
            sa_key: 0,
            key: 7,
            ..reg
        };
        assert_eq!(pa.apply(&[3; 16], "iqn.r", 1, &unreg), Outcome::Good);
        assert_eq!(run(&la, &lb, &cmd(a, SA_RESERVE)), 0);
        assert_eq!(pb.reserve_view(&a), View::Mine);
        assert_eq!(run(&la, &lb, &cmd([0; 16], RESET_EVENT)), 0);
        assert_eq!(
            (pa.reserve_view(&a), pb.reserve_view(&a)),
            (View::Free, View::Free)
        );
        // A reset taken here releases it here at once.
        assert_eq!(run(&la, &lb, &cmd(a, SA_RESERVE)), 0);
        pb.clear_reserve();
        assert_eq!(pb.reserve_view(&a), View::Free);
    }

    #[test]
    fn a_restarted_peer_takes_its_sessions_reserves_with_it() {
        let ((pa, la), (pb, lb)) = (site(1), site(2));
        let b_old = res_id(2, 0xB0, 3);
        assert_eq!(run(&la, &lb, &cmd(b_old, SA_RESERVE)), 0);
        // Site a (tpg 1) learns that site b's process restarted: b's holder is gone.
        la.peer_restarted(0);
        assert_eq!(pa.reserve_view(&res_id(1, 0xA, 1)), View::Free);
        // The session's full state takes it from site b's copy too.
        assert_eq!(pb.reserve_view(&res_id(1, 0xA, 1)), View::Other);
        assert_eq!(lb.install(0, &la.full_state(0)[0]), Install::Done);
        assert_eq!(pb.reserve_view(&res_id(1, 0xA, 1)), View::Free);
        // A holder of a's own site is kept (its process did not restart).
        let a = res_id(1, 0xA, 1);
        assert_eq!(run(&la, &lb, &cmd(a, SA_RESERVE)), 0);
        la.peer_restarted(0);
        assert_eq!(pa.reserve_view(&b_old), View::Other);
        // The new process of site b sees its own old holder as gone, and may reserve over it.
        let (pc, lc) = site(2);
        assert_eq!(run(&la, &lb, &cmd(a, SA_RELEASE)), 0);
        assert_eq!(run(&la, &lb, &cmd(b_old, SA_RESERVE)), 0);
        assert_eq!(lc.install(0, &la.full_state(0)[0]), Install::Done);
        let b_new = res_id(2, 0xB1, 1);
        assert_eq!(pc.reserve_view(&b_new), View::Free);
        assert_eq!(run(&la, &lc, &cmd(b_new, SA_RESERVE)), 0);
        assert_eq!(pc.reserve_view(&b_new), View::Mine);
    }

    #[test]
    fn the_reserve_travels_in_the_state_but_never_in_the_aptpl_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("lun0.pr");
        let pr = Arc::new(PrState::default());
        pr.attach(path.clone(), "iqn.t", 0).unwrap();
        let r = PrReplicator::new(vec![("iqn.t".into(), 0, 0, Arc::clone(&pr))]).for_site(1);
        // An APTPL registration writes the file.
        let mut c = PrCmd::decode(&cmd([4; 16], 0)).unwrap();
        c.out.sa_key = 9;
        c.out.aptpl = true;
        assert_eq!(r.execute(0, &c.encode()).0, 0);
        let file = std::fs::read(&path).unwrap();
        assert!(prs::decode_state(&file).is_some());
        // With the APTPL registration present a RESERVE conflicts; the state and the file agree.
        let a = res_id(1, 1, 1);
        assert_eq!(r.execute(0, &cmd(a, SA_RESERVE)).0, 0x18);
        // A replicated state carries the holder after the persisted part.
        let other = Arc::new(PrState::default());
        let ro = PrReplicator::new(vec![("iqn.t".into(), 0, 0, Arc::clone(&other))]);
        let fresh = PrState::default();
        let rf = PrReplicator::new(vec![("iqn.t".into(), 0, 0, Arc::new(PrState::default()))]);
        assert_eq!(rf.execute(0, &cmd(a, SA_RESERVE)).0, 0);
        let st = rf.full_state(0)[0].clone();
        let ((.., reset), holder) = prs::decode_replicated(&st).unwrap();
        assert_eq!((reset, holder), (0, Some(a)));
        assert!(
            prs::decode_state(&st).is_none(),
            "a file is never read with a holder"
        );
        assert_eq!(ro.install(0, &st), Install::Done);
        assert_eq!(other.reserve_view(&a), View::Mine);
        // A holder flag other than 0 or 1, or an id without the flag: malformed.
        let mut bad = st.clone();
        let n = bad.len();
        bad[n - 17] = 2;
        assert_eq!(ro.install(0, &bad), Install::Malformed);
        bad[n - 17] = 0;
        assert_eq!(ro.install(0, &bad), Install::Malformed);
        assert_eq!(fresh.reserve_view(&a), View::Free);
    }

    #[test]
    fn spc2_commands_carry_nothing_else() {
        for sa in [SA_RESERVE, SA_RELEASE, SA_NEXUS_LOSS] {
            let good = cmd([1; 16], sa);
            assert!(PrCmd::decode(&good).is_some());
            let mut c = PrCmd::decode(&good).unwrap();
            c.out.key = 1;
            assert!(PrCmd::decode(&c.encode()).is_none(), "a key");
            let mut c = PrCmd::decode(&good).unwrap();
            c.out.nt = 1;
            assert!(PrCmd::decode(&c.encode()).is_none(), "a type");
        }
        assert!(
            PrCmd::decode(&cmd([1; 16], 0x14)).is_none(),
            "unknown action"
        );
    }
}
