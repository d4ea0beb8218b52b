//! Namespace changes at run time: a queue follows its subsystem's newest copy, and an admin
//! queue keeps the Changed Namespace List log page and reports the Namespace Attribute Changed
//! event (NVMe Base 2.0: Asynchronous Event Request, event type Notice, information 00h;
//! Changed Namespace List, log page 04h; Asynchronous Event Configuration, Feature 0Bh bit 8).
//!
//! Model: the control socket puts a changed copy of a subsystem in the table and publishes its
//! generation (`ctrl::Subsystem::stale`); a queue sees that by one atomic load per command
//! (and an admin queue in every turn, woken by the control thread's `Note::NsChanged`) and
//! takes the new copy under the table's read lock, once per change. An admin queue adds the
//! NSIDs that differ between its old and new copy ([`ctrl::changed_nsids`]) to its
//! [`ChangedNs`], and owes an event when the notice is enabled at that moment.
//!
//! Commands racing a change (docs/nvmf.md, "Namespace changes"): a command names the namespace
//! set its queue has when its capsule arrives (`NvmfConn::cmd_gen`, kept with a command that
//! waits for its data); it runs on the newest set, where a namespace added after its arrival
//! (`Namespace::since`) is not the one it named: Invalid Namespace or Format. A request at the
//! device records its namespace (NSID, `since`); after a removal the control thread asks
//! every I/O queue (`Note::NsDrain`) and [`NvmfConn::settle_drains`] answers once none of the
//! queue's requests runs through a namespace its copy no longer has.
//!
//! Invariants:
//! - The log lists at most [`MAX_CHANGED`] NSIDs, ascending, each once; past that its first
//!   entry is FFFFFFFFh and the rest zero, until it is read with RAE clear.
//! - One event per acknowledgement: once reported, no further Namespace Attribute Changed event
//!   until the log page is read with RAE clear (changes meanwhile are listed in it); an
//!   event is reported only while bit 8 of Feature 0Bh is set, on a held Asynchronous Event
//!   Request (a change with none held waits for the next one the host posts).
//! - The ANA change count and states an admin queue last reported are carried over to the new
//!   copy by group id, so a namespace change is not taken for an ANA change.
//! - A command never executes on a namespace added after it arrived; once a queue answered a
//!   `Note::NsDrain`, it has no request of a namespace missing from its copy and starts none.

use super::{NvmfConn, Role};
use crate::bdev::volume::Volume;
use crate::frontend::nvmf::cmd::Status;
use crate::frontend::nvmf::ctrl;
use std::sync::Arc;

/// Most NSIDs the Changed Namespace List holds (4 bytes each: the 4 KiB log page).
pub const MAX_CHANGED: usize = 1024;
/// Asynchronous Event Configuration (Feature 0Bh) bit 8: Namespace Attribute Notices.
pub const AEC_NS_ATTR: u32 = 1 << 8;
/// Completion Dword 0 of the event: type Notice (bits 2:0 = 2h), information Namespace
/// Attribute Changed (bits 15:8 = 00h), log page Changed Namespace List (bits 23:16 = 04h).
pub const NS_CHANGED_EVENT: u64 = 0x2 | ((NS_ATTR_CHANGED as u64) << 8) | (0x04 << 16);
/// Asynchronous Event Information of the Notice type: Namespace Attribute Changed.
const NS_ATTR_CHANGED: u8 = 0x00;

/// An admin queue's Changed Namespace List and the state of its event.
#[derive(Debug, Default)]
pub(crate) struct ChangedNs {
    /// NSIDs changed since the log page was last read with RAE clear, ascending.
    list: Vec<u32>,
    /// More than [`MAX_CHANGED`] changed since then.
    overflow: bool,
    /// A change happened while the notice was enabled and has not been reported.
    owed: bool,
    /// An event was reported and not acknowledged yet (the log not read with RAE clear).
    masked: bool,
}

impl ChangedNs {
    /// `nsids` changed; `notify`: the notice is enabled now.
    pub(crate) fn note(&mut self, nsids: &[u32], notify: bool) {
        if nsids.is_empty() {
            return;
        }
        for &id in nsids {
            if self.overflow {
                break;
            }
            if let Err(at) = self.list.binary_search(&id) {
                if self.list.len() == MAX_CHANGED {
                    self.overflow = true;
                    self.list.clear();
                    break;
                }
                self.list.insert(at, id);
            }
        }
        self.owed |= notify;
    }

    /// The log page (4 KiB) into `out`.
    pub(crate) fn log(&self, out: &mut Vec<u8>) {
        out.clear();
        if self.overflow {
            out.extend_from_slice(&u32::MAX.to_le_bytes());
        } else {
            for id in &self.list {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        out.resize(MAX_CHANGED * 4, 0);
    }

    /// The log page was read with RAE clear: it starts over, and the event may be reported
    /// again (what was owed is in what the host just read).
    pub(crate) fn acknowledge(&mut self) {
        self.list.clear();
        self.overflow = false;
        self.owed = false;
        self.masked = false;
    }

    /// A controller reset: its event requests are gone, so is the event owed or reported.
    pub(crate) fn reset_events(&mut self) {
        self.owed = false;
        self.masked = false;
    }

    /// Report the event now if one is owed and not masked (`enabled`: the notice is on).
    fn take_event(&mut self, enabled: bool) -> bool {
        if self.owed && !self.masked && enabled {
            self.owed = false;
            self.masked = true;
            return true;
        }
        false
    }
}

impl NvmfConn {
    /// Take the subsystem's newest copy (its namespace set changed): under the table's read
    /// lock, once per change. An admin queue lists the changed NSIDs and owes an event if the
    /// notice is enabled; the ANA state it last reported is carried over by group id.
    pub(super) fn follow_subsys(&mut self, vols: &[Option<Arc<Volume>>]) {
        let Some(old) = self.subsys.clone() else {
            return;
        };
        // Gone (removed with its connections being closed): keep serving the old copy.
        let Some(new) = self
            .nv
            .find(old.nqn.as_bytes())
            .filter(|n| Arc::ptr_eq(&n.ns_live, &old.ns_live))
        else {
            return;
        };
        let host = self.ctrl.as_ref().and_then(|c| c.host_site);
        if let Role::Admin(st) = &mut self.role {
            let changed = ctrl::changed_nsids(&old, &new);
            st.ns_changed.note(&changed, st.aec & AEC_NS_ATTR != 0);
            st.ana_seen = st
                .ana_seen
                .wrapping_add(new.ana_changes(vols))
                .wrapping_sub(old.ana_changes(vols));
            let view = new
                .ana_groups
                .iter()
                .map(|g| match old.ana_groups.iter().position(|o| o.id == g.id) {
                    Some(i) => st.ana_view.get(i).copied().flatten(),
                    None => ctrl::host_group_state(vols, g.volume, host),
                })
                .collect();
            st.ana_view = view;
        }
        self.resv_cache.clear();
        self.subsys = Some(new);
    }

    /// Answer the namespace removals waiting for this queue (`Note::NsDrain`) once none of
    /// its requests at the device (or at a volume's home) runs through a namespace that is not
    /// in its copy: from then on nothing this queue started reaches a removed namespace's
    /// volume, and the removal may return.
    pub(super) fn settle_drains(&mut self) {
        if self.ns_drains.is_empty() {
            return;
        }
        let sub = self.subsys.as_deref();
        let gone = self.reqs.iter().any(|(_, r)| {
            r.ns.0 != 0
                && sub
                    .and_then(|s| s.ns(r.ns.0))
                    .is_none_or(|n| n.since != r.ns.1)
        });
        if !gone {
            for d in self.ns_drains.drain(..) {
                // The control thread may have stopped waiting: nothing to do then.
                let _ = d.send(());
            }
        }
    }

    /// Complete one held Asynchronous Event Request with the Namespace Attribute Changed
    /// notice when one is owed, enabled and not masked.
    pub(super) fn namespace_event(&mut self) {
        let Role::Admin(st) = &mut self.role else {
            return;
        };
        if st.aers.is_empty() || !st.ns_changed.take_event(st.aec & AEC_NS_ATTR != 0) {
            return;
        }
        let cid = st.aers.remove(0);
        self.respond(cid, Status::SUCCESS, NS_CHANGED_EVENT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(c: &ChangedNs) -> Vec<u32> {
        let mut b = Vec::new();
        c.log(&mut b);
        assert_eq!(b.len(), 4096);
        b.chunks_exact(4)
            .map(|x| u32::from_le_bytes(x.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn the_list_is_ascending_once_each_and_overflows_to_ffffffff() {
        let mut c = ChangedNs::default();
        c.note(&[7, 2], false);
        c.note(&[2, 5], false);
        let e = entries(&c);
        assert_eq!(&e[..4], &[2, 5, 7, 0]);
        assert!(e[3..].iter().all(|&x| x == 0));
        // 1,024 distinct fit; the 1,025th overflows the list.
        let all: Vec<u32> = (1..=1024).collect();
        c.note(&all, false);
        assert_eq!(entries(&c), all, "1,024 entries, the whole page");
        c.note(&[2000], false);
        let e = entries(&c);
        assert_eq!(e[0], 0xFFFF_FFFF);
        assert!(e[1..].iter().all(|&x| x == 0), "the rest zero");
        c.note(&[3], false);
        assert_eq!(entries(&c)[0], 0xFFFF_FFFF, "stays overflowed until read");
        c.acknowledge();
        assert!(
            entries(&c).iter().all(|&x| x == 0),
            "read with RAE clear: empty"
        );
    }

    #[test]
    fn one_event_per_acknowledgement_and_only_when_enabled() {
        let mut c = ChangedNs::default();
        c.note(&[1], false);
        assert!(!c.take_event(true), "changed while disabled: nothing owed");
        c.note(&[2], true);
        assert!(!c.take_event(false), "disabled when it could be reported");
        assert!(c.take_event(true));
        c.note(&[3], true);
        assert!(!c.take_event(true), "masked until acknowledged");
        c.acknowledge();
        assert!(!c.take_event(true), "what was owed was read");
        c.note(&[4], true);
        assert!(c.take_event(true));
        c.reset_events();
        c.note(&[5], false);
        assert!(!c.take_event(true));
        assert_eq!(
            NS_CHANGED_EVENT, 0x0004_0002,
            "Notice, NS Attribute Changed, log 04h"
        );
    }
}
