//! Which commands of a queue form fused pairs, decided by the order their capsules arrive.
//!
//! Model (NVMe Base 2.0 §3.4.2, fused operations): the two halves of a fused pair "shall be
//! inserted next to each other in the same Submission Queue"; on NVMe/TCP that order is the
//! order the command capsules arrive. A half's data may come later (R2T / H2CData), and the
//! halves' data may complete in either order, with other commands' in between: so adjacency
//! is judged at arrival ([`Fusing::arrived`]) and the pair runs once both halves have their
//! data ([`Fusing::ready`]). A first half whose next capsule is not its second half, or a
//! second half not right after a first, is answered Missing Fused Command when it would run.
//!
//! Invariants: every half is answered exactly once (the pair together, or each alone with
//! Missing / Failed Fused Command); at most `MAX_PAIRS` pairs wait for data (one queue's
//! commands are bounded by the same limits as the transfers themselves).

use crate::frontend::nvmf::cmd::{SQE_LEN, fuse};

/// One half, its data complete: the SQE, the data and the namespace generation its capsule
/// arrived in (`NvmfConn::cmd_gen`).
pub(super) type Half = ([u8; SQE_LEN], Vec<u8>, u64);

/// A fused pair known from its capsules' arrival.
struct Pair {
    first: u16,
    /// The second half's CID once its capsule came right after the first's; `None`: not yet.
    second: Option<u16>,
    /// The first's capsule was followed by another command: Missing Fused Command.
    missing: bool,
    /// A half was answered before it ran (refused, aborted): the other is Failed Fused.
    failed: bool,
    first_data: Option<Half>,
    second_data: Option<Half>,
}

/// What to do with a half whose data is complete.
pub(super) enum Ready {
    /// Both halves are whole: run the pair (first, second).
    Run(Half, Half),
    /// Wait for the other half's data.
    Wait,
    /// Answer this half alone with Missing Fused Command.
    Missing,
    /// Answer this half alone with Failed Fused Command (its partner was answered already).
    Failed,
}

/// The fused pairs of one queue.
#[derive(Default)]
pub(super) struct Fusing {
    pairs: Vec<Pair>,
    /// A first half's capsule was the last to arrive: its CID.
    open: Option<u16>,
    /// Second halves whose capsule did not follow a first's.
    orphans: Vec<u16>,
}

impl Fusing {
    /// A command capsule arrived (CID `cid`, FUSE `f`): pair it by order. Returns the CID of
    /// a first half already whole that this arrival leaves without its second (to answer
    /// Missing Fused Command now).
    pub(super) fn arrived(&mut self, cid: u16, f: u8) -> Option<u16> {
        let mut answer_now = None;
        if let Some(first) = self.open.take()
            && let Some(i) = self.pairs.iter().position(|p| p.first == first)
        {
            if f == fuse::SECOND {
                self.pairs[i].second = Some(cid);
                return None;
            }
            self.pairs[i].missing = true;
            if self.pairs[i].first_data.is_some() {
                answer_now = Some(first);
                self.pairs.remove(i);
            }
        }
        match f {
            fuse::FIRST => {
                self.pairs.push(Pair {
                    first: cid,
                    second: None,
                    missing: false,
                    failed: false,
                    first_data: None,
                    second_data: None,
                });
                self.open = Some(cid);
            }
            fuse::SECOND => self.orphans.push(cid),
            _ => {}
        }
        answer_now
    }

    /// Half `cid` (FUSE `f`) has its data (`half`): what to do with it.
    pub(super) fn ready(&mut self, cid: u16, f: u8, half: Half) -> Ready {
        if f == fuse::SECOND {
            if let Some(i) = self.orphans.iter().position(|&c| c == cid) {
                self.orphans.swap_remove(i);
                return Ready::Missing;
            }
            let Some(i) = self.pairs.iter().position(|p| p.second == Some(cid)) else {
                return Ready::Missing;
            };
            if self.pairs[i].failed {
                self.pairs.remove(i);
                return Ready::Failed;
            }
            if self.pairs[i].first_data.is_some() {
                let p = self.pairs.remove(i);
                return Ready::Run(p.first_data.expect("checked"), half);
            }
            self.pairs[i].second_data = Some(half);
            return Ready::Wait;
        }
        let Some(i) = self.pairs.iter().position(|p| p.first == cid) else {
            return Ready::Missing;
        };
        if self.pairs[i].missing {
            self.pairs.remove(i);
            return Ready::Missing;
        }
        if self.pairs[i].failed {
            self.pairs.remove(i);
            return Ready::Failed;
        }
        if let Some(second) = self.pairs[i].second_data.take() {
            self.pairs.remove(i);
            return Ready::Run(half, second);
        }
        self.pairs[i].first_data = Some(half);
        Ready::Wait
    }

    /// Half `cid` (FUSE `f`) was answered before it ran (refused, aborted): its partner, if
    /// it is already whole and waiting, is returned (to answer Failed Fused Command now);
    /// otherwise it will be answered so when it is whole.
    pub(super) fn answered(&mut self, cid: u16, f: u8) -> Option<u16> {
        let i = match f {
            fuse::FIRST => self.pairs.iter().position(|p| p.first == cid)?,
            fuse::SECOND => {
                if let Some(o) = self.orphans.iter().position(|&c| c == cid) {
                    self.orphans.swap_remove(o);
                    return None;
                }
                self.pairs.iter().position(|p| p.second == Some(cid))?
            }
            _ => return None,
        };
        let p = &mut self.pairs[i];
        let waiting = if f == fuse::FIRST {
            p.second_data
                .as_ref()
                .map(|_| p.second.expect("whole second has a CID"))
        } else {
            p.first_data.as_ref().map(|_| p.first)
        };
        if waiting.is_some() || (f == fuse::SECOND && p.missing) {
            self.pairs.remove(i);
            if self.open == Some(cid) {
                self.open = None;
            }
        } else {
            // (A first half still open pairs with its second by order; that one then fails.)
            p.failed = true;
        }
        waiting
    }

    /// A whole half waiting for its partner, by CID (an Abort names it): taken out; its
    /// partner, when whole, is answered Failed Fused Command. True if it was there.
    pub(super) fn abort_waiting(&mut self, cid: u16) -> bool {
        for p in &mut self.pairs {
            if p.first == cid && p.first_data.take().is_some() {
                p.failed = true;
                return true;
            }
            if p.second == Some(cid) && p.second_data.take().is_some() {
                p.failed = true;
                return true;
            }
        }
        false
    }

    /// Pairs known (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pairs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(cid: u16) -> Half {
        let mut s = [0u8; SQE_LEN];
        s[2..4].copy_from_slice(&cid.to_le_bytes());
        (s, vec![cid as u8], 0)
    }

    #[test]
    fn a_pair_adjacent_on_arrival_runs_whatever_order_its_data_completes_in() {
        let mut f = Fusing::default();
        assert_eq!(f.arrived(1, fuse::FIRST), None);
        assert_eq!(f.arrived(2, fuse::SECOND), None);
        // Another command arrives and completes between the halves' data.
        assert_eq!(f.arrived(3, fuse::NONE), None);
        assert!(matches!(f.ready(2, fuse::SECOND, half(2)), Ready::Wait));
        match f.ready(1, fuse::FIRST, half(1)) {
            Ready::Run(a, b) => assert_eq!((a.1, b.1), (vec![1], vec![2])),
            _ => panic!("not run"),
        }
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn halves_not_adjacent_on_arrival_are_missing() {
        let mut f = Fusing::default();
        assert_eq!(f.arrived(1, fuse::FIRST), None);
        // The first is already whole (in-capsule) when a plain command arrives.
        assert!(matches!(f.ready(1, fuse::FIRST, half(1)), Ready::Wait));
        assert_eq!(f.arrived(3, fuse::NONE), Some(1), "answered Missing now");
        assert_eq!(f.arrived(4, fuse::SECOND), None);
        assert!(matches!(f.ready(4, fuse::SECOND, half(4)), Ready::Missing));
        // A first not yet whole when the next capsule is not its second: Missing when whole.
        assert_eq!(f.arrived(5, fuse::FIRST), None);
        assert_eq!(f.arrived(6, fuse::NONE), None);
        assert!(matches!(f.ready(5, fuse::FIRST, half(5)), Ready::Missing));
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn a_half_answered_early_fails_its_partner_once() {
        let mut f = Fusing::default();
        f.arrived(1, fuse::FIRST);
        f.arrived(2, fuse::SECOND);
        assert!(matches!(f.ready(1, fuse::FIRST, half(1)), Ready::Wait));
        assert_eq!(
            f.answered(2, fuse::SECOND),
            Some(1),
            "the waiting first fails now"
        );
        assert_eq!(f.len(), 0);
        f.arrived(3, fuse::FIRST);
        f.arrived(4, fuse::SECOND);
        assert_eq!(f.answered(3, fuse::FIRST), None);
        assert!(matches!(f.ready(4, fuse::SECOND, half(4)), Ready::Failed));
        assert_eq!(f.len(), 0);
        // An aborted waiting half: its partner fails when whole.
        f.arrived(5, fuse::FIRST);
        f.arrived(6, fuse::SECOND);
        assert!(matches!(f.ready(5, fuse::FIRST, half(5)), Ready::Wait));
        assert!(f.abort_waiting(5));
        assert!(matches!(f.ready(6, fuse::SECOND, half(6)), Ready::Failed));
        assert_eq!(f.len(), 0);
    }
}
