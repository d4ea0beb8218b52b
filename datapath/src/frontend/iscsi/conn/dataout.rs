//! Data-Out of SCSI tasks: R2Ts, the unsolicited burst and solicited sequences, and the
//! answer of a command refused while its Data-Out is still expected.
//!
//! Model: a task collecting data (`Stage::Collect`) takes Data-Out in order (DataPDUInOrder
//! and DataSequenceInOrder are Yes): unsolicited data (TTT FFFFFFFFh) up to
//! min(EDTL, FirstBurstLength) when the command's F bit was clear, then one R2T at a time of at
//! most MaxBurstLength. A command refused before it ran, or a task whose Data-Out broke its
//! sequence, is answered only once the initiator has sent the Data-Out it still owes (the F
//! bit of the unsolicited burst, and of the outstanding R2T's sequence): RFC 7143 §11.4.2 and
//! §11.17.1 forbid the SCSI Response while Data-Out is expected. Meanwhile the task is in
//! `Stage::Drain`: what arrives for it is read and dropped.
//!
//! The conditions RFC 7143 §11.4.7.2 names are answered with their sense (ABORTED COMMAND):
//! unexpected unsolicited data (0Ch/0Ch: immediate data with ImmediateData=No, unsolicited
//! Data-Out with InitialR2T=Yes or after the burst ended), incorrect amount of data (0Ch/0Dh:
//! an unsolicited burst ended short of min(EDTL, FirstBurstLength), a sequence ended before its
//! R2T was filled); any other break of a sequence (a wrong DataSN or offset, data past its
//! burst, an R2T filled without the F bit) is a data phase error (4Bh/00h). The offending PDU
//! is also rejected (Reject, protocol error) when it breaks the sequence (not when it is well
//! formed and only ends its sequence short).
//!
//! Invariants: a task in `Stage::Drain` holds no data and no device operation; it is answered
//! exactly once, when neither unsolicited data nor an R2T's sequence is outstanding.

use super::{IscsiConn, Stage};
use crate::frontend::iscsi::pdu::{Bhs, NO_TAG, Req, op, reject};
use crate::frontend::iscsi::scsi::{Sense, key};
use crate::runtime::Env;

/// ABORTED COMMAND / WRITE ERROR - UNEXPECTED UNSOLICITED DATA (RFC 7143 §11.4.7.2).
pub(super) const UNEXPECTED_UNSOLICITED: Sense = Sense::new(key::ABORTED_COMMAND, 0x0C, 0x0C);
/// ABORTED COMMAND / WRITE ERROR - NOT ENOUGH UNSOLICITED DATA: "incorrect amount of data"
/// (RFC 7143 §11.4.7.2).
pub(super) const INCORRECT_AMOUNT: Sense = Sense::new(key::ABORTED_COMMAND, 0x0C, 0x0D);

/// What a command refused before it ran answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// CHECK CONDITION with this sense; the command's own transfer length (for the residual).
    Check(Sense, u64),
    /// RESERVATION CONFLICT.
    Conflict,
}

/// The command a refusal answers: (ITT, LUN, EDTL, unsolicited Data-Out still to come).
pub(super) type Refused = (u32, [u8; 8], u32, bool);

impl IscsiConn {
    /// Answer a command refused before it ran: at once, or, when its unsolicited Data-Out is
    /// still to come (its F bit was clear), once the initiator has sent the last of it (see
    /// the module doc).
    pub(super) fn refuse(&mut self, (itt, lun, edtl, data_follows): Refused, answer: Refusal) {
        if !data_follows {
            return self.answer_refusal(itt, edtl, answer);
        }
        let (result, scsi_len, conflict) = match answer {
            Refusal::Check(s, len) => (Err(s), len, false),
            Refusal::Conflict => (Ok(()), 0, true),
        };
        // (In its LU's task set while it drains: a reset or CLEAR TASK SET of the LU aborts
        // it, as any other task of it.)
        let lun_idx = crate::frontend::iscsi::pages::lun_of(&lun)
            .and_then(|n| self.target.luns.iter().position(|l| l.lun == n))
            .unwrap_or(usize::MAX);
        let slot = self.placeholder_task(usize::MAX);
        let t = &mut self.tasks[slot];
        t.itt = itt;
        t.lun = lun;
        t.lun_idx = lun_idx;
        t.edtl = edtl;
        t.scsi_len = scsi_len;
        t.unsolicited = true;
        t.aborted = false;
        t.result = result;
        t.stage = Stage::Drain { conflict };
    }

    fn answer_refusal(&mut self, itt: u32, edtl: u32, answer: Refusal) {
        match answer {
            Refusal::Check(s, len) => self.respond(itt, Err(s), edtl, len, 0),
            Refusal::Conflict => self.put_conflict(itt),
        }
    }

    /// Collect more data (send an R2T) or execute.
    pub(super) fn advance(&mut self, env: &mut Env<'_>, slot: u32) {
        let max_burst = self.params.max_burst;
        let Some(t) = self.tasks.get_mut(slot as usize) else {
            return;
        };
        if let Stage::Drain { conflict } = t.stage {
            if !t.unsolicited && t.r2t.is_none() {
                // Nothing more is owed: answered now.
                if conflict {
                    self.conflict(slot);
                } else {
                    let r = t.result;
                    self.complete(slot, r);
                }
            }
            return;
        }
        let got = t.recv;
        if (t.buf.len() as u32) < t.want {
            if t.unsolicited || t.r2t.is_some() {
                return;
            }
            let len = (t.want - got).min(max_burst);
            let ttt = self.next_ttt;
            self.next_ttt = self.next_ttt.wrapping_add(1);
            if self.next_ttt == NO_TAG || self.next_ttt == 0 {
                self.next_ttt = 1;
            }
            t.r2t = Some((ttt, got, len));
            t.data_sn = 0;
            let sn = t.r2t_sn;
            t.r2t_sn += 1;
            let h = Bhs::new(op::R2T, 0x80)
                .lun(t.lun)
                .itt(t.itt)
                .u32(20, ttt)
                .u32(24, self.stat_sn)
                .u32(28, self.exp())
                .u32(32, self.max_cmd_sn())
                .u32(36, sn)
                .u32(40, got)
                .u32(44, len);
            self.put(h, &[]);
            return;
        }
        if t.unsolicited {
            // All the data came unsolicited but the F bit is still to come: wait for it.
            return;
        }
        self.execute(env, slot);
    }

    /// A Data-Out PDU.
    pub(super) fn data_out(&mut self, env: &mut Env<'_>, r: Req<'_>, data: &[u8]) {
        let itt = r.itt();
        let ttt = r.w20();
        let Some((slot, _)) = self.tasks.iter().find(|(_, t)| t.itt == itt) else {
            // The task is gone (answered, or aborted): its data is dropped.
            return;
        };
        let slot = slot as u32;
        let first_burst = self.params.first_burst;
        let t = &mut self.tasks[slot as usize];
        if let Stage::Drain { .. } = t.stage {
            // Read and dropped; only the end of what is owed matters.
            if r.fin() {
                t.sequence_ended(ttt);
            }
            return self.advance(env, slot);
        }
        if t.stage != Stage::Collect {
            return self.reject(env, reject::PROTOCOL, r.0);
        }
        let got = t.recv;
        let limit = match t.r2t {
            Some((tt, off, len)) if ttt == tt => off + len,
            None if ttt == NO_TAG && t.unsolicited => t.edtl.min(first_burst),
            _ if ttt == NO_TAG => {
                return self.sequence_error(
                    env,
                    slot,
                    r,
                    "unsolicited Data-Out not expected",
                    UNEXPECTED_UNSOLICITED,
                );
            }
            _ => return self.reject(env, reject::INVALID_FIELD, r.0),
        };
        let what = if r.u32_at(36) != t.data_sn {
            Some("Data-Out with a wrong DataSN")
        } else if r.u32_at(40) != got {
            Some("Data-Out out of order")
        } else if u64::from(got) + data.len() as u64 > u64::from(limit) {
            Some("Data-Out beyond the burst or the expected length")
        } else {
            None
        };
        if let Some(what) = what {
            return self.sequence_error(env, slot, r, what, Sense::DATA_PHASE_ERROR);
        }
        let keep = (t.want as usize)
            .saturating_sub(t.buf.len())
            .min(data.len());
        t.buf.extend_from_slice(&data[..keep]);
        t.recv += data.len() as u32;
        t.data_sn += 1;
        let now = t.recv;
        if r.fin() {
            if now != limit {
                let what = if ttt == NO_TAG {
                    "unsolicited burst ended before min(EDTL, FirstBurstLength)"
                } else {
                    "Data-Out sequence ended before its R2T was filled"
                };
                // (The PDU itself is well formed: no Reject, only the condition.)
                return self.end_task(env, slot, r, what, INCORRECT_AMOUNT);
            }
            t.sequence_ended(ttt);
            if ttt == NO_TAG {
                t.data_sn = 0;
            }
        } else if now == limit && ttt != NO_TAG {
            // Its R2T is filled: nothing more is owed for it (the task is answered now).
            t.r2t = None;
            return self.sequence_error(
                env,
                slot,
                r,
                "Data-Out filled its R2T without the F bit",
                Sense::DATA_PHASE_ERROR,
            );
        }
        self.advance(env, slot);
    }

    /// A Data-Out that breaks its sequence (`what`): at ErrorRecoveryLevel 0 the sequence
    /// cannot be recovered, so the PDU is rejected, and its task ends with CHECK CONDITION
    /// (`sense`) once the Data-Out still owed has come (later Data-Out of it is dropped).
    fn sequence_error(
        &mut self,
        env: &mut Env<'_>,
        slot: u32,
        r: Req<'_>,
        what: &str,
        sense: Sense,
    ) {
        self.reject(env, reject::PROTOCOL, r.0);
        self.end_task(env, slot, r, what, sense);
    }

    /// End task `slot` with CHECK CONDITION (`sense`, for `what`) once the Data-Out still
    /// owed has come (Data-Out PDU `r` was its latest).
    fn end_task(&mut self, env: &mut Env<'_>, slot: u32, r: Req<'_>, what: &str, sense: Sense) {
        tracing::debug!(conn = env.key, what, "iSCSI data sequence error");
        let t = &mut self.tasks[slot as usize];
        if r.fin() {
            t.sequence_ended(r.w20());
        }
        t.result = Err(sense);
        t.stage = Stage::Drain { conflict: false };
        let buf = std::mem::take(&mut t.buf);
        self.put_buf(buf);
        self.advance(env, slot);
    }
}
