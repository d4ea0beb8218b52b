//! A logical unit reset reaching every session of the logical unit at this site: the abort
//! fan-out (SAM-5: a LOGICAL UNIT RESET aborts every task of every I_T nexus on the logical
//! unit; a target reset, of each of its logical units).
//!
//! Model: a reset of a LUN is decided at one site (a TMF on one of its sessions) and, for a
//! mirrored volume, carried to the other as a `prs::RESET_EVENT`. Wherever the new reset
//! generation is decided or installed (`PrState::apply` / `install`), and at the deciding site
//! of a volume that is not mirrored, [`Fanout::abort`] sends an [`LuAbort`] note through the
//! runtime's mailboxes to every iSCSI session of the volume at this site (the hosts registry
//! names their reactor and connection key), but not to the sessions whose own reset of the LUN
//! is in flight (`PrState::origins`: they aborted their tasks themselves). A session aborts its
//! tasks of the LUN at once: a task not at a device is dropped, a task at a device finishes
//! there and is never answered (the Control mode page says TAS=0: "aborted commands shall be
//! terminated without any response"), and once the last of them has finished it releases the
//! note's [`Settle`]. The settle is done when every session released it; then the mirror
//! engine sends the held answer to the peer (META_STATE or META_ACK, `MetaHandler::settling`),
//! or the deciding session is told ([`Settled`]) and answers its TMF.
//!
//! Invariants: a settle is released exactly once per note sent plus once by the fan-out itself
//! (after the last note is sent), so it is never done early; a note that is never acted on (its
//! connection is gone, or the note is dropped) releases its share when dropped; nothing here
//! is on the I/O path (a reset takes the hosts registry's lock once, sends one note per session
//! and allocates one settle).

use crate::runtime::hosts::Hosts;
use crate::runtime::{Mailbox, Msg, NoteTo};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Sessions still aborting for one reset at this site (done at zero), and who to tell then.
pub struct Settle {
    remaining: AtomicUsize,
    /// The deciding session (its reactor's mailbox, its key), told with [`Settled`].
    waiter: Option<(Arc<Mailbox>, u32)>,
    /// Connections told too ([`Settle::also_wake`]: a login that inherited this wait from
    /// the held login whose session it reinstated).
    also: std::sync::Mutex<Vec<(Arc<Mailbox>, u32)>>,
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settle")
            .field("remaining", &self.remaining.load(Ordering::Relaxed))
            .field("waiter", &self.waiter.as_ref().map(|(_, k)| *k))
            .finish()
    }
}

impl Settle {
    /// One share held by the creator (released after the last note is out).
    pub fn new(waiter: Option<(Arc<Mailbox>, u32)>) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(1),
            waiter,
            also: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Tell connection `key` (on the reactor of mailbox `m`) with [`Settled`] too when done.
    /// A caller that finds the settle done after this call is not told (it looks itself).
    pub fn also_wake(&self, m: Arc<Mailbox>, key: u32) {
        self.also
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((m, key));
    }

    pub(crate) fn add(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }

    /// Release one share; the last tells the waiter.
    pub fn release(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let also = std::mem::take(&mut *self.also.lock().unwrap_or_else(|e| e.into_inner()));
        for (m, key) in self.waiter.iter().chain(also.iter()) {
            m.send(Msg::Note {
                to: NoteTo::Conn(*key),
                note: Box::new(Settled),
            });
        }
    }

    /// Every session has aborted.
    pub fn done(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }
}

impl crate::layer::mirror::engine::Settling for Settle {
    fn settled(&self) -> bool {
        self.done()
    }
}

/// The note telling the deciding session that a settle it waits for is done.
#[derive(Debug)]
pub struct Settled;

/// The note asking a session to abort its tasks of a logical unit (the one whose reservation
/// state is `pr`). Dropped without [`LuAbort::take`], it releases its share itself.
#[derive(Debug)]
pub struct LuAbort {
    /// The logical unit: its reservation state's address (`prs::PrState::id`).
    pub lu: usize,
    settle: Option<Arc<Settle>>,
    /// A CLEAR TASK SET of another I_T nexus, not a reset: a session that had tasks aborted
    /// reports COMMANDS CLEARED BY ANOTHER INITIATOR (SAM-5, TAS=0).
    pub clear: bool,
}

impl LuAbort {
    /// The share to release once the session's aborted tasks have finished.
    pub fn take(&mut self) -> Option<Arc<Settle>> {
        self.settle.take()
    }
}

impl Drop for LuAbort {
    fn drop(&mut self) {
        if let Some(s) = self.settle.take() {
            s.release();
        }
    }
}

/// What a fan-out needs of the runtime: every reactor's mailbox and the hosts registry.
pub struct Fanout {
    mailboxes: Vec<Arc<Mailbox>>,
    hosts: Arc<Hosts>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("reactors", &self.mailboxes.len())
            .finish()
    }
}

impl Fanout {
    /// Over these reactors and this registry.
    pub fn new(mailboxes: Vec<Arc<Mailbox>>, hosts: Arc<Hosts>) -> Self {
        Self { mailboxes, hosts }
    }

    /// Ask every iSCSI session of volume `vol` at this site to abort its tasks of the logical
    /// unit `lu` (its reservation state's `id`); the returned settle is done once they all have
    /// (`waiter` is then told).
    pub fn abort(&self, vol: usize, lu: usize, waiter: Option<(Arc<Mailbox>, u32)>) -> Arc<Settle> {
        self.abort_as(vol, lu, waiter, false)
    }

    /// [`Self::abort`] for a reset (`clear` false) or a CLEAR TASK SET (`clear`).
    pub fn abort_as(
        &self,
        vol: usize,
        lu: usize,
        waiter: Option<(Arc<Mailbox>, u32)>,
        clear: bool,
    ) -> Arc<Settle> {
        let settle = Settle::new(waiter);
        let mut sent = 0usize;
        for (_, rec) in self.hosts.list() {
            if rec.proto != "iscsi" || !rec.reaches(vol) {
                continue;
            }
            let Some(m) = self.mailboxes.get(rec.reactor) else {
                continue;
            };
            settle.add();
            sent += 1;
            m.send(Msg::Note {
                to: NoteTo::Conn(rec.conn),
                note: Box::new(LuAbort {
                    lu,
                    settle: Some(Arc::clone(&settle)),
                    clear,
                }),
            });
        }
        tracing::debug!(
            vol,
            sessions = sent,
            "iscsi: logical unit reset: aborting the tasks of this site's sessions"
        );
        settle.release();
        settle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::hosts::HostRecord;

    fn drain(m: &Mailbox) -> Vec<(u32, Box<dyn std::any::Any + Send>)> {
        let mut v = Vec::new();
        while let Some(msg) = m.pop() {
            if let Msg::Note {
                to: NoteTo::Conn(k),
                note,
            } = msg
            {
                v.push((k, note));
            }
        }
        v
    }

    #[test]
    fn a_settle_is_done_only_when_every_session_released_it_and_tells_its_waiter_once() {
        let hosts = Arc::new(Hosts::default());
        let boxes: Vec<Arc<Mailbox>> = (0..2)
            .map(|_| Arc::new(Mailbox::with_capacity(16).unwrap()))
            .collect();
        let rec = |reactor, conn, proto, vols: Vec<usize>| {
            let r = HostRecord::new(proto, reactor, conn, "iqn.t".into());
            r.set_volumes(vols);
            hosts.register(r)
        };
        // Two iSCSI sessions of volume 3, one of another volume, one NVMe/TCP queue.
        let _h = [
            rec(0, 7, "iscsi", vec![3]),
            rec(1, 9, "iscsi", vec![1, 3]),
            rec(1, 4, "iscsi", vec![1]),
            rec(0, 5, "nvmf", vec![3]),
        ];
        let f = Fanout::new(boxes.clone(), Arc::clone(&hosts));
        let lu = 0x5eed_usize;
        let waiter = Arc::new(Mailbox::with_capacity(4).unwrap());
        let s = f.abort(3, lu, Some((Arc::clone(&waiter), 42)));
        assert!(!s.done(), "two sessions still abort");
        let mut a = drain(&boxes[0]);
        let mut b = drain(&boxes[1]);
        assert_eq!(
            (a.len(), a[0].0, b.len(), b[0].0),
            (1, 7, 1, 9),
            "one note to each session of the volume, none elsewhere"
        );
        let mut na = a.pop().unwrap().1.downcast::<LuAbort>().unwrap();
        assert_eq!(na.lu, lu);
        let share = na.take().unwrap();
        drop(na); // taken: dropping the note releases nothing more
        assert!(!s.done());
        share.release();
        assert!(!s.done() && drain(&waiter).is_empty());
        // A note never acted on (its connection gone) releases its share when dropped.
        drop(b.pop());
        assert!(s.done());
        let told = drain(&waiter);
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].0, 42);
        assert!(told[0].1.is::<Settled>());
        // No session: done at once.
        assert!(f.abort(8, lu, None).done());
    }
}
