//! iSCSI media accesses inside the volumes' atomic sections (`nvmf::atomic`), so a COMPARE AND
//! WRITE (iSCSI's or NVMe's fused pair) is atomic with respect to them too.
//!
//! Model: before a task's media access the connection enters the volume's section on its
//! reactor (`Section::enter`: one increment and one load, no lock). When a compare-and-write is
//! pending at the volume's home the access is *diverted* there instead (`Note::Op`), runs after
//! the pairs queued before it and is answered by a `Note::Done` (`task::home_done`). A task
//! that entered leaves once, when it is retired; the leave is made in `flush` (it needs the
//! runtime's shared state, which `on_io` does not get).
//!
//! Invariants: a task enters at most once (all of its device operations are covered by that
//! one count) and leaves exactly once; a diverted task never entered. The exception is an
//! EXTENDED COPY run (`copy.rs`): each of its operations enters (and leaves) for itself, in
//! the volume it touches, so a pair waits for at most one chunk of a copy.

use super::IscsiConn;
use crate::frontend::nvmf::Note as NvNote;
use crate::frontend::nvmf::atomic::{OpKind, OpReq, Origin};
use crate::runtime::Env;

impl IscsiConn {
    /// Enter volume `vol`'s atomic section for task `slot`: true to go to the device (the task
    /// now counts in the section), false when the access must be diverted to the home.
    pub(super) fn enter_section(&mut self, env: &Env<'_>, slot: u32, vol: usize) -> bool {
        let Some(sec) = self.sh.nvmf.sections(env.shared).and_then(|s| s.get(vol)) else {
            return true;
        };
        if !sec.enter(env.io.reactor) {
            return false;
        }
        if let Some(t) = self.tasks.get_mut(slot as usize) {
            t.entered = true;
        }
        true
    }

    /// Hand task `slot`'s access to the volume's home (a compare-and-write is pending there).
    pub(super) fn divert(
        &mut self,
        env: &Env<'_>,
        slot: u32,
        kind: OpKind,
        ranges: Vec<(u64, u64)>,
        data: Vec<u8>,
        fua: bool,
    ) {
        let Some(t) = self.tasks.get_mut(slot as usize) else {
            return;
        };
        let vol = t.vol;
        let Some(sections) = self.sh.nvmf.sections(env.shared) else {
            return;
        };
        t.parts = 1;
        t.stage = super::Stage::Device;
        let from = Origin {
            reactor: env.io.reactor,
            key: env.key,
            slot,
        };
        sections.to_home(
            vol,
            NvNote::Op(Box::new(OpReq {
                vol,
                from,
                kind,
                ranges,
                data,
                fua,
            })),
        );
    }

    /// Leave the sections of the tasks retired since the last turn.
    pub(super) fn leave_sections(&mut self, env: &Env<'_>) {
        if self.leaves.is_empty() {
            return;
        }
        if let Some(sections) = self.sh.nvmf.sections(env.shared) {
            for vol in self.leaves.drain(..) {
                sections.leave(vol, env.io.reactor);
            }
        }
        self.leaves.clear();
    }
}
