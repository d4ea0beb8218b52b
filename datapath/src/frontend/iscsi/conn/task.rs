//! SCSI tasks: data transfer (immediate and unsolicited data, R2T / Data-Out, Data-In with the
//! status in the last PDU, SCSI Response with residuals) and execution against the volume's
//! channel.
//!
//! Model: every SCSI Command becomes a [`Task`] in the connection's slab (its slot is the I/O
//! tag's slot). A command that carries data towards the target collects it in order: immediate
//! data, then unsolicited Data-Out up to FirstBurstLength (when InitialR2T=No), then one R2T at
//! a time for at most MaxBurstLength each. Once the data is whole the task executes: pages are
//! built at once; media commands go to the channel (several device operations for UNMAP and
//! WRITE SAME, counted in `parts`); COMPARE AND WRITE goes to the volume's home executor, the
//! path NVMe fused Compare+Write takes (atomic across both sites for a mirrored volume);
//! EXTENDED COPY runs chunk by chunk in its task (`copy.rs`).
//!
//! Invariants:
//! - A task whose operations are at a device stays in the slab (its slot cannot be reused)
//!   until the last completes, even when aborted; an aborted task sends nothing.
//! - Data-Out must arrive in order (DataPDUInOrder=Yes, DataSequenceInOrder=Yes): its buffer
//!   offset equals the bytes collected, its DataSN counts from 0 in each sequence, and it never
//!   goes past the burst it belongs to; anything else is rejected and ends the task with CHECK
//!   CONDITION (ErrorRecoveryLevel 0 cannot recover a sequence) once the Data-Out still owed
//!   has come (`dataout.rs`).
//! - A command PDU that is rejected does not take its CmdSN; a command refused after it was
//!   admitted (unknown LUN, CDB, unit attention, conflict, path state, lengths) is answered
//!   only once its unsolicited Data-Out has all come (`dataout.rs`).
//! - A command that carries blocks other than WRITE / WRITE AND VERIFY whose Expected Data
//!   Transfer Length differs from its CDB's transfer length is refused (ILLEGAL REQUEST /
//!   INVALID FIELD IN INFORMATION UNIT, with the residual), never partly written; so is any
//!   command whose CDB wants data without the W bit (overflow residual: all of it).
//! - Data a task collects comes only with the W bit; without it `want` is 0.

use super::dataout::{self, Refusal};
use super::{IscsiConn, Stage, alua};
use crate::bdev::volume::PathState;
use crate::bdev::{ReadStart, Start, in_range};
use crate::frontend::iscsi::pages::{self, LunInfo};
use crate::frontend::iscsi::pdu::{Bhs, NO_TAG, Req, op, reject};
use crate::frontend::iscsi::scsi::{self, Cmd, Sense, sense_of, status};
use crate::frontend::iscsi::{prs, spc2};
use crate::frontend::nvmf::Note as NvNote;
use crate::frontend::nvmf::atomic::{FusedReq, OpKind, Origin};
use crate::frontend::nvmf::cmd::Status as NvStatus;
use crate::runtime::Env;
use crate::uring::{Errno, IoTag};

/// One SCSI command in progress.
pub(super) struct Task {
    pub(super) itt: u32,
    pub(super) lun: [u8; 8],
    /// Index of the LUN in the target's list.
    pub(super) lun_idx: usize,
    pub(super) vol: usize,
    pub(super) cmd: Cmd,
    pub(super) edtl: u32,
    /// The R bit: data may go to the initiator (without it, read data is not sent and is
    /// reported as residual overflow).
    pub(super) rd: bool,
    /// Bytes the command moves in its data direction (SCSI's own length).
    pub(super) scsi_len: u64,
    /// Data-Out bytes to collect.
    pub(super) want: u32,
    /// Collected Data-Out (at most `want` bytes).
    pub(super) buf: Vec<u8>,
    /// Data-Out bytes received (more than `want` when the EDTL is larger: dropped).
    pub(super) recv: u32,
    /// Unsolicited data may still arrive (F bit not seen yet).
    pub(super) unsolicited: bool,
    /// The outstanding R2T: (TTT, offset, length).
    pub(super) r2t: Option<(u32, u32, u32)>,
    pub(super) r2t_sn: u32,
    /// DataSN expected on the next Data-Out of the current sequence.
    pub(super) data_sn: u32,
    pub(super) stage: Stage,
    /// Device operations in flight.
    pub(super) parts: u32,
    pub(super) result: Result<(), Sense>,
    pub(super) aborted: bool,
    /// The task counts in its volume's atomic section (left when it is retired).
    pub(super) entered: bool,
    /// A running EXTENDED COPY (`copy.rs`).
    pub(super) copy: Option<Box<super::copy::Run>>,
}

impl Task {
    /// A Data-Out PDU with TTT `ttt` carried the F bit: the unsolicited burst (FFFFFFFFh) or
    /// the outstanding R2T's sequence it belongs to is over (`dataout.rs`).
    pub(super) fn sequence_ended(&mut self, ttt: u32) {
        if ttt == NO_TAG {
            self.unsolicited = false;
        } else if self.r2t.is_some_and(|(tt, _, _)| tt == ttt) {
            self.r2t = None;
        }
    }
}

/// The sense of an NVMe status the volume's home executor answers (COMPARE AND WRITE, and
/// accesses diverted behind one).
fn nv_sense(s: NvStatus) -> Result<(), Sense> {
    match s {
        NvStatus::SUCCESS => Ok(()),
        NvStatus::COMPARE_FAILED => Err(Sense::MISCOMPARE),
        NvStatus::LBA_RANGE => Err(Sense::LBA_OUT_OF_RANGE),
        // A path this site cannot serve now (another may), or the leadership moving: the
        // ALUA sense, on which multipath hosts retry, never a medium error.
        NvStatus::NS_NOT_READY | NvStatus::ANA_INACCESSIBLE => Err(Sense::ALUA_UNAVAILABLE),
        NvStatus::ANA_TRANSITION => Err(Sense::ALUA_TRANSITION),
        NvStatus::NS_WRITE_PROTECTED => Err(Sense::WRITE_PROTECTED),
        NvStatus::READ_ERROR => Err(Sense::READ_ERROR),
        NvStatus::INVALID_FIELD | NvStatus::SGL_INVALID_DATA => Err(Sense::INVALID_FIELD_CDB),
        _ => Err(Sense::WRITE_ERROR),
    }
}

/// Residual flags (byte 1) and count of a transfer of `edtl` expected and `scsi` wanted.
fn residual(edtl: u32, scsi: u64) -> (u8, u32) {
    let e = u64::from(edtl);
    if scsi > e {
        (0x04, u32::try_from(scsi - e).unwrap_or(u32::MAX))
    } else if scsi < e {
        (0x02, (e - scsi) as u32)
    } else {
        (0, 0)
    }
}

/// Commands served on a path in the unavailable or transitioning ALUA state (SPC-4
/// §5.15.2.4.4-5); everything else, TEST UNIT READY included (multipath path checkers rely on
/// it), gets NOT READY with the state's sense.
fn allowed_when_unavailable(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Inquiry { .. }
            | Cmd::ReportLuns { .. }
            | Cmd::RequestSense { .. }
            | Cmd::ReportTpg { .. }
            | Cmd::SetTpg { .. }
            | Cmd::ReportOpcodes { .. }
    )
}

/// Commands a RESERVE (6/10) held by another I_T nexus does not block (SPC-2 §5.5.1). RESERVE
/// itself goes to the decision (the volume's leader), which answers the conflict; PERSISTENT
/// RESERVE IN and OUT conflict while any nexus holds a RESERVE ([`reserve_conflict`]).
fn allowed_when_reserved(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Inquiry { .. }
            | Cmd::ReportLuns { .. }
            | Cmd::RequestSense { .. }
            | Cmd::Reserve
            | Cmd::Release
            | Cmd::ReportTpg { .. }
            | Cmd::ReportOpcodes { .. }
    )
}

/// Whether `cmd` conflicts with the RESERVE as nexus sees it (`view`): SPC-2 §5.5.1, every
/// PERSISTENT RESERVE IN and OUT while any nexus holds one, and anything but
/// [`allowed_when_reserved`] while another nexus holds it.
pub(super) fn reserve_conflict(view: spc2::View, cmd: &Cmd) -> bool {
    match view {
        spc2::View::Free => false,
        spc2::View::Mine => matches!(cmd, Cmd::PrIn { .. } | Cmd::PrOut { .. }),
        spc2::View::Other => {
            matches!(cmd, Cmd::PrIn { .. } | Cmd::PrOut { .. }) || !allowed_when_reserved(cmd)
        }
    }
}

/// Under a persistent reservation: `Some(true)` for a write-class command, `Some(false)` for a
/// read-class one, `None` for commands every nexus may issue (SPC-4 §5.13.1).
fn pr_class(cmd: &Cmd) -> Option<bool> {
    match cmd {
        Cmd::Read(_)
        | Cmd::Verify { .. }
        | Cmd::Prefetch(_)
        | Cmd::GetLbaStatus { .. }
        | Cmd::ReceiveCopyResults { .. } => Some(false),
        Cmd::Write(_)
        | Cmd::WriteVerify(_)
        | Cmd::WriteSame { .. }
        | Cmd::Unmap { .. }
        | Cmd::CompareAndWrite(_)
        | Cmd::ExtendedCopy { .. }
        | Cmd::SyncCache(_)
        | Cmd::ModeSelect { .. }
        | Cmd::Reserve
        | Cmd::Release
        | Cmd::SetTpg { .. } => Some(true),
        _ => None,
    }
}

/// Is the command a block write, whose EDTL must equal its transfer length?
fn block_write(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Write(_)
            | Cmd::WriteVerify(_)
            | Cmd::CompareAndWrite(_)
            | Cmd::WriteSame { ndob: false, .. }
            | Cmd::Verify { bytchk: 1, .. }
    )
}

impl IscsiConn {
    /// Facts about LUN index `i` of this session's target, for the pages.
    fn lun_info(&self, env: &Env<'_>, i: usize) -> LunInfo {
        let t = &std::sync::Arc::clone(&self.target);
        let l = &t.luns[i];
        let v = env.vols[l.volume]
            .as_deref()
            .expect("a session\'s volumes are served while it is registered");
        let block = v.info.block_size.max(1);
        let (path, peer) = self.host_paths(v);
        LunInfo {
            blocks: v.info.size / u64::from(block),
            block,
            naa: l.naa,
            serial: l.serial.clone(),
            target: t.iqn.clone(),
            tpg: self.sh.tpg,
            path,
            peer,
            read_only: v.read_only(),
        }
    }

    /// Whether LUN index `i`'s volume refuses updates (the LUN is write protected).
    fn lun_read_only(&self, env: &Env<'_>, i: usize) -> bool {
        env.vols[self.target.luns[i].volume]
            .as_deref()
            .is_some_and(|v| v.read_only())
    }

    /// Send a SCSI Response.
    pub(super) fn respond(
        &mut self,
        itt: u32,
        result: Result<(), Sense>,
        edtl: u32,
        scsi_len: u64,
        exp_data_sn: u32,
    ) {
        let (flags, res) = residual(edtl, scsi_len);
        let (st, data): (u8, Vec<u8>) = match result {
            Ok(()) => (status::GOOD, Vec::new()),
            Err(s) => {
                let f = s.fixed();
                let mut d = Vec::with_capacity(20);
                d.extend_from_slice(&(f.len() as u16).to_be_bytes());
                d.extend_from_slice(&f);
                (status::CHECK_CONDITION, d)
            }
        };
        let h = Bhs::new(op::SCSI_RSP, 0x80 | flags)
            .byte(3, st)
            .itt(itt)
            .u32(36, exp_data_sn)
            .u32(44, res);
        self.put_status(h, &data);
    }

    /// Send read data as Data-In PDUs, the status in the last one (or a SCSI Response when
    /// nothing is transferred).
    pub(super) fn send_data_in(
        &mut self,
        itt: u32,
        lun: [u8; 8],
        data: &[u8],
        edtl: u32,
        scsi_len: u64,
    ) {
        let n = data.len().min(edtl as usize);
        if n == 0 {
            return self.respond(itt, Ok(()), edtl, scsi_len, 0);
        }
        let (flags, res) = residual(edtl, scsi_len);
        // Each PDU at most the initiator's MaxRecvDataSegmentLength, each sequence (F bit) at
        // most MaxBurstLength (RFC 7143 §13.13), whichever of the two is larger.
        let seg = (self.params.send_dsl as usize).max(512);
        let burst = (self.params.max_burst as usize).max(512);
        let mut off = 0;
        let mut sn = 0u32;
        while off < n {
            let len = seg.min(n - off).min(burst - off % burst);
            let last = off + len == n;
            let end_of_seq = last || (off + len).is_multiple_of(burst);
            let mut h = Bhs::new(op::DATA_IN, if end_of_seq { 0x80 } else { 0 })
                .lun(lun)
                .itt(itt)
                .u32(20, NO_TAG)
                .u32(36, sn)
                .u32(40, off as u32);
            let chunk = &data[off..off + len];
            if last {
                h.0[1] |= 0x01 | flags;
                h = h.u32(44, res);
                self.put_status(h, chunk);
            } else {
                let (exp, max) = self.window();
                h = h.u32(28, exp).u32(32, max);
                self.put(h, chunk);
            }
            off += len;
            sn += 1;
        }
    }

    /// A SCSI Command PDU.
    pub(super) fn scsi_cmd(&mut self, env: &mut Env<'_>, r: Req<'_>, ahs: &[u8], data: &[u8]) {
        if self.session != crate::frontend::iscsi::login::SessionType::Normal {
            return self.reject(env, reject::PROTOCOL, r.0);
        }
        if !ahs.is_empty() {
            // Extended CDBs and bidirectional commands are not supported.
            return self.reject(env, reject::NOT_SUPPORTED, r.0);
        }
        if !r.immediate() && self.cmd_sn_ignored(r.cmd_sn()) {
            // A retransmission or a CmdSN outside the window: silently ignored (`admit`
            // counts it), never rejected.
            let _ = self.admit(env, r, data);
            return;
        }
        let itt = r.itt();
        let edtl = r.w20();
        let flags = r.flags();
        let (rd, wr, fin) = (flags & 0x40 != 0, flags & 0x20 != 0, flags & 0x80 != 0);
        // A command PDU rejected is not received: its CmdSN is not taken (RFC 7143 §11.17.1),
        // so these checks come before `admit`.
        if rd && wr {
            return self.reject(env, reject::NOT_SUPPORTED, r.0);
        }
        if itt == NO_TAG || (!wr && (!data.is_empty() || !fin)) {
            return self.reject(env, reject::PROTOCOL, r.0);
        }
        if data.len() as u64 > u64::from(edtl) || data.len() > self.params.first_burst as usize {
            return self.reject(env, reject::PROTOCOL, r.0);
        }
        if self.tasks.iter().any(|(_, t)| t.itt == itt) {
            // A task tag in use (RFC 7143 §11.17.1: Task in progress).
            return self.reject(env, 0x07, r.0);
        }
        if self.admit(env, r, data) != Some(true) {
            return;
        }
        let lun = r.lun();
        if !r.immediate()
            && self
                .with_sess(|s| s.aborted_before(r.cmd_sn(), &lun))
                .unwrap_or(false)
        {
            // A task-set TMF with a higher CmdSN came first (see `Session::abort_prior`):
            // aborted on arrival, never answered (TAS=0); its Data-Out is dropped.
            return;
        }
        // Answered once the unsolicited Data-Out still owed has come (`dataout.rs`).
        let refused: dataout::Refused = (itt, lun, edtl, wr && !fin);
        if (!data.is_empty() && !self.params.immediate_data) || (!fin && self.params.initial_r2t) {
            // Unsolicited data the session does not allow (RFC 7143 §13.11, §11.4.7.2).
            return self.refuse(refused, Refusal::Check(dataout::UNEXPECTED_UNSOLICITED, 0));
        }
        // No reference count is taken on the target per command: it is shared by every session
        // on every reactor (an atomic on it per command would bounce its cache line).
        let lun_idx =
            pages::lun_of(&lun).and_then(|n| self.target.luns.iter().position(|l| l.lun == n));
        let cmd = scsi::decode(&r.cdb());
        // INQUIRY and REPORT LUNS answer for any LUN; REQUEST SENSE too.
        let lun_idx = match (lun_idx, &cmd) {
            (Some(i), _) => i,
            (
                None,
                Ok(Cmd::Inquiry {
                    evpd: false, alloc, ..
                }),
            ) => {
                let page = pages::inquiry(false, false);
                let n = page.len().min(*alloc as usize);
                return self.send_data_in(itt, lun, &page[..n], edtl, n as u64);
            }
            (None, Ok(Cmd::ReportLuns { .. } | Cmd::RequestSense { .. })) => usize::MAX,
            (None, _) => {
                return self.refuse(refused, Refusal::Check(Sense::LUN_NOT_SUPPORTED, 0));
            }
        };
        // A write-protected logical unit (a volume that refuses updates) terminates a command
        // that would modify its medium with DATA PROTECT / WRITE PROTECTED before anything
        // else about it is judged: its CDB fields, its transfer length, the compare of COMPARE
        // AND WRITE (the order of Linux's target, which checks right after the LUN lookup).
        if lun_idx != usize::MAX
            && scsi::modifies_medium(r.cdb()[0])
            && self.lun_read_only(env, lun_idx)
        {
            return self.refuse(refused, Refusal::Check(Sense::WRITE_PROTECTED, 0));
        }
        let cmd = match cmd {
            Ok(c) => c,
            Err(s) => return self.refuse(refused, Refusal::Check(s, 0)),
        };
        let vol = self
            .target
            .luns
            .get(lun_idx)
            .map_or(usize::MAX, |l| l.volume);
        if lun_idx != usize::MAX {
            if let Some(s) = self.unit_attention(env, lun_idx, &cmd) {
                return self.refuse(refused, Refusal::Check(s, 0));
            }
            if reserve_conflict(self.reserve_view(lun_idx), &cmd) {
                return self.refuse(refused, Refusal::Conflict);
            }
            if let Some(write) = pr_class(&cmd)
                && !self.pr_allows(lun_idx, write)
            {
                return self.refuse(refused, Refusal::Conflict);
            }
            if !allowed_when_unavailable(&cmd) {
                match self.host_path(
                    env.vols[vol]
                        .as_deref()
                        .expect("a session\'s volumes are served while it is registered"),
                ) {
                    PathState::Inaccessible => {
                        return self.refuse(refused, Refusal::Check(Sense::ALUA_UNAVAILABLE, 0));
                    }
                    PathState::Transitioning => {
                        return self.refuse(refused, Refusal::Check(Sense::ALUA_TRANSITION, 0));
                    }
                    _ => {}
                }
            }
        }
        let block = if vol == usize::MAX {
            512
        } else {
            env.vols[vol]
                .as_deref()
                .expect("a session\'s volumes are served while it is registered")
                .info
                .block_size
                .max(1)
        };
        let out_len = scsi::data_out_len(&cmd, block);
        if let Cmd::CompareAndWrite(rw) = cmd
            && rw.blocks > u32::from(pages::MAX_CAW_BLOCKS)
        {
            return self.refuse(refused, Refusal::Check(Sense::INVALID_FIELD_CDB, 0));
        }
        if out_len > 0 && !wr {
            // The CDB wants data but the W bit says none will come (RFC 7143 §11.3.1): refused,
            // never run on data that was not received; none of it was expected (overflow).
            return self.respond(itt, Err(Sense::INVALID_FIELD_IU), 0, out_len, 0);
        }
        // A WRITE whose EDTL differs from its transfer length writes the whole blocks both
        // cover and reports the residual (RFC 7143 §11.4.5.2); other commands that carry
        // blocks are refused.
        let partial_ok = matches!(cmd, Cmd::Write(_) | Cmd::WriteVerify(_));
        if block_write(&cmd) && !partial_ok && out_len != u64::from(edtl) {
            if matches!(cmd, Cmd::CompareAndWrite(_)) {
                // Its NUMBER OF LOGICAL BLOCKS disagrees with the data sent (e.g. 256 blocks
                // wrapped to 0 in the one-byte field).
                return self.refuse(refused, Refusal::Check(Sense::INVALID_FIELD_CDB, out_len));
            }
            return self.refuse(refused, Refusal::Check(Sense::INVALID_FIELD_IU, out_len));
        }
        let want = out_len.min(u64::from(edtl)) as u32;
        // Data-Out is gathered in memory: more than one transfer's worth is refused before any
        // of it is asked for (a lying EDTL cannot make the target allocate gigabytes).
        if want > pages::MAX_XFER_BYTES {
            return self.refuse(refused, Refusal::Check(Sense::INVALID_FIELD_CDB, out_len));
        }
        let scsi_len = out_len;
        // Data beyond what the command takes (up to the EDTL) is received and dropped.
        let mut buf = self.get_buf(want as usize);
        buf.extend_from_slice(&data[..data.len().min(want as usize)]);
        let task = Task {
            itt,
            lun,
            lun_idx,
            vol,
            cmd,
            edtl,
            rd,
            scsi_len,
            want,
            buf,
            recv: data.len() as u32,
            unsolicited: !fin,
            r2t: None,
            r2t_sn: 0,
            data_sn: 0,
            stage: Stage::Collect,
            parts: 0,
            result: Ok(()),
            aborted: false,
            entered: false,
            copy: None,
        };
        let slot = self.tasks.insert(task) as u32;
        self.advance(env, slot);
    }

    /// A task that answers nothing (aborted from the start) and holds one operation of volume
    /// `vol` a task management answer waits for (`session.rs`, resets carried to the other
    /// site). Its slot; the caller sets `parts` once the operation is pending, or removes it.
    pub(super) fn placeholder_task(&mut self, vol: usize) -> usize {
        self.tasks.insert(Task {
            itt: NO_TAG,
            lun: [0; 8],
            lun_idx: usize::MAX,
            vol,
            cmd: Cmd::TestUnitReady,
            edtl: 0,
            rd: false,
            scsi_len: 0,
            want: 0,
            buf: Vec::new(),
            recv: 0,
            unsolicited: false,
            r2t: None,
            r2t_sn: 0,
            data_sn: 0,
            stage: Stage::Device,
            parts: 0,
            result: Ok(()),
            aborted: true,
            entered: false,
            copy: None,
        })
    }

    /// Finish a task at once (no device operation in flight).
    pub(super) fn complete(&mut self, slot: u32, result: Result<(), Sense>) {
        let Some(t) = self.tasks.try_remove(slot as usize) else {
            return;
        };
        if t.entered {
            self.leaves.push(t.vol);
        }
        if !t.aborted {
            if result.is_err() {
                self.errors += 1;
            }
            self.respond(t.itt, result, t.edtl, t.scsi_len, 0);
        }
        self.put_buf(t.buf);
    }

    fn complete_data(&mut self, slot: u32, data: &[u8]) {
        let Some(t) = self.tasks.try_remove(slot as usize) else {
            return;
        };
        if t.entered {
            self.leaves.push(t.vol);
        }
        if !t.aborted {
            let edtl = if t.rd { t.edtl } else { 0 };
            self.send_data_in(t.itt, t.lun, data, edtl, data.len() as u64);
        }
        self.put_buf(t.buf);
    }

    /// Execute a task whose data is whole.
    pub(super) fn execute(&mut self, env: &mut Env<'_>, slot: u32) {
        let Some(t) = self.tasks.get(slot as usize) else {
            return;
        };
        let cmd = t.cmd;
        let (vol, lun_idx) = (t.vol, t.lun_idx);
        let info = if lun_idx == usize::MAX {
            None
        } else {
            Some(self.lun_info(env, lun_idx))
        };
        let page = |p: Result<Vec<u8>, Sense>, alloc: u32| {
            p.map(|mut v| {
                v.truncate(alloc as usize);
                v
            })
        };
        let built: Option<Result<Vec<u8>, Sense>> = match (cmd, &info) {
            (Cmd::ReportLuns { well_known, alloc }, _) => {
                // SELECT REPORT 01h lists the well known logical units: none here (SPC-4
                // §6.33); 00h and 02h every LUN of the target.
                let luns: Vec<u16> = if well_known {
                    Vec::new()
                } else {
                    self.target.luns.iter().map(|l| l.lun).collect()
                };
                Some(page(Ok(pages::report_luns(&luns)), alloc))
            }
            (Cmd::RequestSense { alloc }, _) => {
                let s = if lun_idx == usize::MAX {
                    Sense::LUN_NOT_SUPPORTED
                } else {
                    self.with_sess(|s| s.ua.get_mut(lun_idx).and_then(Option::take))
                        .flatten()
                        .unwrap_or(Sense::NONE)
                };
                Some(page(Ok(s.fixed().to_vec()), alloc))
            }
            (_, None) => Some(Err(Sense::LUN_NOT_SUPPORTED)),
            (
                Cmd::Inquiry {
                    evpd: false, alloc, ..
                },
                Some(l),
            ) => Some(page(Ok(pages::inquiry(true, l.peer.is_some())), alloc)),
            (Cmd::Inquiry { page: p, alloc, .. }, Some(l)) => {
                Some(page(pages::vpd_page(l, p), alloc))
            }
            (Cmd::ReadCapacity10, Some(l)) => Some(Ok(pages::read_capacity10(l))),
            (Cmd::ReadCapacity16 { alloc }, Some(l)) => {
                Some(page(Ok(pages::read_capacity16(l)), alloc))
            }
            (Cmd::GetLbaStatus { lba, alloc }, Some(l)) => {
                Some(page(pages::lba_status(l, lba), alloc))
            }
            (
                Cmd::ModeSense {
                    ten,
                    dbd,
                    pc,
                    page: p,
                    subpage,
                    alloc,
                },
                Some(l),
            ) => Some(page(pages::mode_sense(l, ten, dbd, pc, p, subpage), alloc)),
            (
                Cmd::ReportOpcodes {
                    options,
                    rctd,
                    op,
                    sa,
                    alloc,
                },
                _,
            ) => Some(page(pages::report_opcodes(options, rctd, op, sa), alloc)),
            (Cmd::ReportTpg { extended, alloc }, Some(l)) => {
                Some(page(Ok(pages::report_tpg(l, extended)), alloc))
            }
            (Cmd::ReceiveCopyResults { sa, list_id, alloc }, Some(l)) => {
                Some(page(self.copy_results(sa, list_id, l.block), alloc))
            }
            _ => None,
        };
        if let Some(b) = built {
            return match b {
                Ok(d) => self.complete_data(slot, &d),
                Err(s) => self.complete(slot, Err(s)),
            };
        }
        let Some(l) = info else {
            return self.complete(slot, Err(Sense::LUN_NOT_SUPPORTED));
        };
        let bs = u64::from(l.block);
        let range = |lba: u64, blocks: u64| -> Result<(u64, u64), Sense> {
            let off = lba.checked_mul(bs).ok_or(Sense::LBA_OUT_OF_RANGE)?;
            let len = blocks * bs;
            if lba > l.blocks || !in_range(off, len, l.blocks * bs) {
                return Err(Sense::LBA_OUT_OF_RANGE);
            }
            Ok((off, len))
        };
        let r = match cmd {
            Cmd::TestUnitReady | Cmd::StartStop | Cmd::PreventAllow => Ok(()),
            Cmd::ExtendedCopy { .. } => return self.extended_copy(env, slot),
            Cmd::SetTpg { .. } => return self.set_tpg(env, slot),
            Cmd::Prefetch(rw) => range(rw.lba, u64::from(rw.blocks)).map(|_| ()),
            Cmd::PrIn { sa, alloc } => {
                let pr =
                    std::sync::Arc::clone(&std::sync::Arc::clone(&self.target).luns[lun_idx].pr);
                return match pr.read(sa) {
                    Ok(mut d) => {
                        d.truncate(alloc as usize);
                        self.complete_data(slot, &d)
                    }
                    Err(s) => self.complete(slot, Err(s)),
                };
            }
            Cmd::PrOut { sa, scope_type, .. } => {
                let p = std::mem::take(&mut self.tasks[slot as usize].buf);
                let parsed = prs::parse_out(sa, scope_type, &p);
                self.tasks[slot as usize].buf = p;
                let o = match parsed {
                    Err(s) => prs::Outcome::Check(s),
                    Ok(out) => match self.pr_out(env, slot, vol, lun_idx, self.me, out) {
                        Some(o) => o,
                        None => return,
                    },
                };
                return self.pr_done(slot, o);
            }
            Cmd::Reserve | Cmd::Release => {
                // Decided like a PERSISTENT RESERVE OUT (by a mirrored volume's leader, for
                // both sites), by the rules of `spc2::decide`.
                let sa = if cmd == Cmd::Reserve {
                    self.with_sess(|s| {
                        if !s.reserved_luns.contains(&lun_idx) {
                            s.reserved_luns.push(lun_idx);
                        }
                    });
                    spc2::SA_RESERVE
                } else {
                    spc2::SA_RELEASE
                };
                let out = spc2_out(sa);
                if let Some(o) = self.pr_out(env, slot, vol, lun_idx, self.res, out) {
                    self.pr_done(slot, o);
                }
                return;
            }
            Cmd::ModeSelect { ten, .. } => {
                let buf = std::mem::take(&mut self.tasks[slot as usize].buf);
                let r = pages::mode_select(&l, ten, &buf);
                self.tasks[slot as usize].buf = buf;
                r
            }
            Cmd::Read(rw) | Cmd::Verify { rw, .. } => match range(rw.lba, u64::from(rw.blocks)) {
                Err(s) => Err(s),
                Ok((_, 0)) => Ok(()),
                Ok((_, len)) if len > u64::from(pages::MAX_XFER_BYTES) => {
                    Err(Sense::INVALID_FIELD_CDB)
                }
                Ok((off, len)) => return self.start_read(env, slot, off, len as u32),
            },
            Cmd::Write(rw) | Cmd::WriteVerify(rw) => match range(rw.lba, u64::from(rw.blocks)) {
                Err(s) => Err(s),
                Ok((_, 0)) => Ok(()),
                Ok((_, len)) if len > u64::from(pages::MAX_XFER_BYTES) => {
                    Err(Sense::INVALID_FIELD_CDB)
                }
                Ok((off, _)) => {
                    let tag = IoTag {
                        conn: env.key,
                        slot,
                    };
                    let buf = std::mem::take(&mut self.tasks[slot as usize].buf);
                    // Whole blocks only (less than the CDB's when the EDTL was smaller).
                    let n = buf.len() / l.block as usize * l.block as usize;
                    if n == 0 {
                        self.tasks[slot as usize].buf = buf;
                        return self.complete(slot, Ok(()));
                    }
                    env.counters.ios += 1;
                    env.counters.write_bytes += n as u64;
                    env.vol_counters[vol].ops += 1;
                    env.vol_counters[vol].write_bytes += n as u64;
                    if !self.enter_section(env, slot, vol) {
                        let mut buf = buf;
                        buf.truncate(n);
                        let ranges = vec![(off, n as u64)];
                        return self.divert(env, slot, OpKind::Write, ranges, buf, rw.fua);
                    }
                    let s = env.chans[vol].write(env.io, tag, off, &buf[..n], rw.fua);
                    self.tasks[slot as usize].buf = buf;
                    return self.started(slot, s, true);
                }
            },
            Cmd::SyncCache(rw) => {
                // SBC-3 §5.22: LBA + NUMBER OF LOGICAL BLOCKS within the medium (0 blocks: from
                // the LBA to the end); the whole volume is flushed either way.
                if let Err(s) = range(rw.lba, u64::from(rw.blocks)) {
                    return self.complete(slot, Err(s));
                }
                let tag = IoTag {
                    conn: env.key,
                    slot,
                };
                let s = env.chans[vol].flush(env.io, tag);
                return self.started(slot, s, true);
            }
            Cmd::WriteSame { rw, unmap, ndob } => {
                match self.write_same(env, slot, &l, rw, unmap, ndob) {
                    Ok(()) => return self.settle(slot),
                    Err(s) => Err(s),
                }
            }
            Cmd::Unmap { .. } => match self.unmap(env, slot, &l) {
                Ok(()) => return self.settle(slot),
                Err(s) => Err(s),
            },
            Cmd::CompareAndWrite(rw) => {
                if rw.blocks == 0 {
                    Ok(())
                } else if rw.blocks > u32::from(pages::MAX_CAW_BLOCKS) {
                    Err(Sense::INVALID_FIELD_CDB)
                } else {
                    match range(rw.lba, u64::from(rw.blocks)) {
                        Err(s) => Err(s),
                        Ok((off, len)) => {
                            return self.compare_and_write(env, slot, off, len, rw.fua);
                        }
                    }
                }
            }
            _ => Err(Sense::INVALID_OPCODE),
        };
        self.complete(slot, r);
    }

    /// Account for a started device operation.
    fn started(&mut self, slot: u32, s: Start, write: bool) {
        match s {
            Start::Done(r) => {
                let done = {
                    let t = &mut self.tasks[slot as usize];
                    if let Err(e) = r {
                        t.result = Err(sense_of(e, write));
                    }
                    t.parts == 0
                };
                if done {
                    let r = self.tasks[slot as usize].result;
                    self.complete(slot, r);
                }
            }
            Start::Pending => {
                let t = &mut self.tasks[slot as usize];
                t.parts += 1;
                t.stage = Stage::Device;
            }
        }
    }

    fn start_read(&mut self, env: &mut Env<'_>, slot: u32, off: u64, len: u32) {
        let vol = self.tasks[slot as usize].vol;
        if !self.enter_section(env, slot, vol) {
            let ranges = vec![(off, u64::from(len))];
            return self.divert(env, slot, OpKind::Read, ranges, Vec::new(), false);
        }
        let tag = IoTag {
            conn: env.key,
            slot,
        };
        env.counters.ios += 1;
        env.counters.read_bytes += u64::from(len);
        env.vol_counters[vol].ops += 1;
        env.vol_counters[vol].read_bytes += u64::from(len);
        match env.chans[vol].read(env.io, tag, off, len) {
            ReadStart::Ready(d) => self.read_done(slot, d),
            ReadStart::Failed(e) => self.complete(slot, Err(sense_of(e, false))),
            ReadStart::Pending => {
                let t = &mut self.tasks[slot as usize];
                t.parts = 1;
                t.stage = Stage::Device;
            }
        }
    }

    /// Read data arrived: send it (READ), or check it (VERIFY).
    fn read_done(&mut self, slot: u32, data: &[u8]) {
        let Some(t) = self.tasks.get(slot as usize) else {
            return;
        };
        match t.cmd {
            Cmd::Verify { bytchk: 1, .. } => {
                let r = match t.buf.iter().zip(data).position(|(a, b)| a != b) {
                    None if t.buf.len() == data.len() => Ok(()),
                    None => Err(Sense::MISCOMPARE),
                    Some(i) => Err(Sense::MISCOMPARE.with_info(i as u32)),
                };
                self.complete(slot, r);
            }
            Cmd::Verify { .. } => self.complete(slot, Ok(())),
            _ => {
                let Some(t) = self.tasks.try_remove(slot as usize) else {
                    return;
                };
                if t.entered {
                    self.leaves.push(t.vol);
                }
                if !t.aborted {
                    let edtl = if t.rd { t.edtl } else { 0 };
                    self.send_data_in(t.itt, t.lun, data, edtl, data.len() as u64);
                }
                self.put_buf(t.buf);
            }
        }
    }

    fn write_same(
        &mut self,
        env: &mut Env<'_>,
        slot: u32,
        l: &LunInfo,
        rw: scsi::Rw,
        unmap: bool,
        ndob: bool,
    ) -> Result<(), Sense> {
        let bs = u64::from(l.block);
        let blocks = if rw.blocks == 0 {
            l.blocks.saturating_sub(rw.lba)
        } else {
            u64::from(rw.blocks)
        };
        if rw.lba > l.blocks || rw.lba + blocks > l.blocks {
            return Err(Sense::LBA_OUT_OF_RANGE);
        }
        if blocks > pages::MAX_WRITE_SAME_BLOCKS {
            return Err(Sense::INVALID_FIELD_CDB);
        }
        if blocks == 0 {
            return Ok(());
        }
        let (off, len) = (rw.lba * bs, blocks * bs);
        let vol = self.tasks[slot as usize].vol;
        let tag = IoTag {
            conn: env.key,
            slot,
        };
        let pattern = std::mem::take(&mut self.tasks[slot as usize].buf);
        // Unmapped blocks read back as zeroes (LBPRZ): with UNMAP a block of zeroes (or none,
        // NDOB) may be unmapped, any other block is written (SBC-3 §5.45, §5.46), so the blocks
        // always read back as the block sent.
        let zero = ndob || pattern.iter().all(|&b| b == 0);
        env.counters.ios += 1;
        env.vol_counters[vol].ops += 1;
        if !self.enter_section(env, slot, vol) {
            let (kind, data) = if zero {
                let k = if unmap { OpKind::Unmap } else { OpKind::Zeroes };
                (k, Vec::new())
            } else {
                let mut d = Vec::with_capacity(len as usize);
                for _ in 0..blocks {
                    d.extend_from_slice(&pattern);
                }
                (OpKind::Write, d)
            };
            self.tasks[slot as usize].buf = pattern;
            self.divert(env, slot, kind, vec![(off, len)], data, rw.fua);
            return Ok(());
        }
        if zero {
            let s = if unmap {
                env.chans[vol].unmap(env.io, tag, off, len, false)
            } else {
                env.chans[vol].write_zeroes(env.io, tag, off, len, false)
            };
            self.tasks[slot as usize].buf = pattern;
            self.started(slot, s, true);
            return Ok(());
        }
        // A non-zero pattern: written in chunks of up to 1 MiB of repeated blocks.
        let per = (u64::from(pages::MAX_XFER_BYTES) / bs).max(1);
        let mut chunk = self.get_buf((per.min(blocks) * bs) as usize);
        for _ in 0..per.min(blocks) {
            chunk.extend_from_slice(&pattern);
        }
        let mut at = 0;
        while at < blocks {
            let n = per.min(blocks - at);
            let data = &chunk[..(n * bs) as usize];
            let s = env.chans[vol].write(env.io, tag, off + at * bs, data, rw.fua);
            if let Start::Done(Err(e)) = s {
                self.tasks[slot as usize].result = Err(sense_of(e, true));
                break;
            }
            if s == Start::Pending {
                self.tasks[slot as usize].parts += 1;
                self.tasks[slot as usize].stage = Stage::Device;
            }
            at += n;
        }
        self.put_buf(chunk);
        self.tasks[slot as usize].buf = pattern;
        Ok(())
    }

    /// After the operations of a multi-part command started (their errors are in the task's
    /// result): complete it now unless some are still at a device.
    fn settle(&mut self, slot: u32) {
        if let Some(t) = self.tasks.get(slot as usize)
            && t.parts == 0
        {
            let r = t.result;
            self.complete(slot, r);
        }
    }

    fn unmap(&mut self, env: &mut Env<'_>, slot: u32, l: &LunInfo) -> Result<(), Sense> {
        let d = std::mem::take(&mut self.tasks[slot as usize].buf);
        let r = self.unmap_list(env, slot, l, &d);
        if let Some(t) = self.tasks.get_mut(slot as usize) {
            t.buf = d;
        }
        r
    }

    fn unmap_list(
        &mut self,
        env: &mut Env<'_>,
        slot: u32,
        l: &LunInfo,
        d: &[u8],
    ) -> Result<(), Sense> {
        let descs = scsi::unmap_descriptors(d, l.blocks, pages::MAX_UNMAP_DESCRIPTORS as usize)?;
        if descs.is_empty() {
            return Ok(());
        }
        let bs = u64::from(l.block);
        let vol = self.tasks[slot as usize].vol;
        let tag = IoTag {
            conn: env.key,
            slot,
        };
        env.counters.ios += 1;
        env.vol_counters[vol].ops += 1;
        if !self.enter_section(env, slot, vol) {
            let ranges = descs
                .iter()
                .filter(|&&(_, n)| n > 0)
                .map(|&(lba, n)| (lba * bs, n * bs))
                .collect();
            self.divert(env, slot, OpKind::Unmap, ranges, Vec::new(), false);
            return Ok(());
        }
        for (lba, n) in descs {
            if n == 0 {
                continue;
            }
            let s = env.chans[vol].unmap(env.io, tag, lba * bs, n * bs, false);
            match s {
                Start::Done(Ok(())) => {}
                Start::Done(Err(e)) => {
                    self.tasks[slot as usize].result = Err(sense_of(e, true));
                    break;
                }
                Start::Pending => {
                    self.tasks[slot as usize].parts += 1;
                    self.tasks[slot as usize].stage = Stage::Device;
                }
            }
        }
        Ok(())
    }

    /// COMPARE AND WRITE: handed to the volume's home executor as a fused pair.
    fn compare_and_write(&mut self, env: &mut Env<'_>, slot: u32, off: u64, len: u64, fua: bool) {
        let Some(sections) = self.sh.nvmf.sections(env.shared) else {
            return self.complete(slot, Err(Sense::INTERNAL));
        };
        let t = &mut self.tasks[slot as usize];
        let vol = t.vol;
        let Some(sec) = sections.get(vol) else {
            return self.complete(slot, Err(Sense::INTERNAL));
        };
        let mut buf = std::mem::take(&mut t.buf);
        let data = buf.split_off(len as usize);
        let cmp = buf;
        t.parts = 1;
        t.stage = Stage::Device;
        env.counters.ios += 2;
        env.vol_counters[vol].ops += 2;
        env.counters.write_bytes += len;
        env.vol_counters[vol].write_bytes += len;
        sec.begin_fused();
        let from = Origin {
            reactor: env.io.reactor,
            key: env.key,
            slot,
        };
        sections.to_home(
            vol,
            NvNote::Fused(Box::new(FusedReq {
                locate: true,
                vol,
                from,
                off,
                cmp,
                data,
                fua,
            })),
        );
    }

    /// A checked PERSISTENT RESERVE OUT (or a RESERVE / RELEASE: [`spc2_out`]) from nexus `me`
    /// (its registrant id, or its reservation id for RESERVE / RELEASE): on a mirrored volume
    /// sent through its channel to the volume's leader site, which decides it for both sites
    /// (`None`: pending, answered in [`Self::device_done`]); on any other volume decided here.
    fn pr_out(
        &mut self,
        env: &mut Env<'_>,
        slot: u32,
        vol: usize,
        lun_idx: usize,
        me: [u8; 16],
        out: prs::PrOut,
    ) -> Option<prs::Outcome> {
        let t = &std::sync::Arc::clone(&self.target);
        let pr = std::sync::Arc::clone(&t.luns[lun_idx].pr);
        // Registrations are reported by initiator port (name and ISID), SPC-4 §6.15.5.
        let port_name = prs::initiator_port(&self.initiator, &self.isid);
        let cmd = prs::PrCmd {
            target: t.iqn.clone(),
            lun: t.luns[lun_idx].lun,
            me,
            name: port_name.clone(),
            port: self.sh.tpg,
            out,
        };
        let bytes = crate::layer::mirror::engine::tagged(prs::META_KIND, &cmd.encode());
        let tag = IoTag {
            conn: env.key,
            slot,
        };
        match env.chans[vol].meta(env.io, tag, &bytes) {
            None => Some(pr.apply(&me, &port_name, self.sh.tpg, &out)),
            Some(Start::Done(r)) => Some(prs::outcome_of(r)),
            Some(Start::Pending) => {
                let t = &mut self.tasks[slot as usize];
                t.parts += 1;
                t.stage = Stage::Device;
                None
            }
        }
    }

    /// Answer a PERSISTENT RESERVE OUT.
    fn pr_done(&mut self, slot: u32, o: prs::Outcome) {
        match o {
            prs::Outcome::Good => self.complete(slot, Ok(())),
            prs::Outcome::Check(s) => self.complete(slot, Err(s)),
            prs::Outcome::Conflict => self.conflict(slot),
        }
    }

    /// Answer RESERVATION CONFLICT (a status without sense data).
    pub(super) fn conflict(&mut self, slot: u32) {
        let Some(t) = self.tasks.try_remove(slot as usize) else {
            return;
        };
        if t.entered {
            self.leaves.push(t.vol);
        }
        if !t.aborted {
            self.errors += 1;
            self.put_conflict(t.itt);
        }
        self.put_buf(t.buf);
    }

    /// Send RESERVATION CONFLICT (a SCSI Response without sense data) for task `itt`.
    pub(super) fn put_conflict(&mut self, itt: u32) {
        let h = Bhs::new(op::SCSI_RSP, 0x80)
            .byte(3, status::RESERVATION_CONFLICT)
            .itt(itt);
        self.put_status(h, &[]);
    }

    pub(super) fn device_done(&mut self, slot: u32, result: Result<(), Errno>, data: &[u8]) {
        let Some(t) = self.tasks.get_mut(slot as usize) else {
            tracing::error!(slot, "completion for an unknown iSCSI task slot");
            return;
        };
        if t.copy.is_some() {
            return self.copy_io_done(slot, result, data);
        }
        t.parts = t.parts.saturating_sub(1);
        if matches!(t.cmd, Cmd::PrOut { .. } | Cmd::Reserve | Cmd::Release) {
            return self.pr_done(slot, prs::outcome_of(result));
        }
        let write = !matches!(t.cmd, Cmd::Read(_) | Cmd::Verify { .. });
        if let Err(e) = result {
            t.result = Err(sense_of(e, write));
        }
        if t.parts > 0 {
            return;
        }
        let r = t.result;
        if !write && r.is_ok() {
            return self.read_done(slot, data);
        }
        self.complete(slot, r);
    }

    /// The home executor answered a COMPARE AND WRITE or a diverted access (read data in
    /// `data`).
    pub(super) fn home_done(&mut self, n: NvNote) {
        if let NvNote::Done {
            slot,
            status,
            status2,
            data,
            ..
        } = n
        {
            let mut r = nv_sense(status).and(nv_sense(status2));
            if status == NvStatus::COMPARE_FAILED
                && let Ok(at) = <[u8; 8]>::try_from(&data[..])
            {
                // The offset of the first byte that differs (SBC-3 §5.2: INFORMATION).
                let at = u64::from_le_bytes(at);
                r = Err(Sense::MISCOMPARE.with_info(u32::try_from(at).unwrap_or(u32::MAX)));
            }
            let Some(t) = self.tasks.get_mut(slot as usize) else {
                return;
            };
            if t.copy.is_some() {
                return self.copy_home_done(slot, r, data);
            }
            t.parts = 0;
            if r.is_ok() && matches!(t.cmd, Cmd::Read(_) | Cmd::Verify { .. }) {
                return self.read_done(slot, &data);
            }
            self.complete(slot, r);
        }
    }

    /// Tasks with operations at a device.
    pub(super) fn tasks_at_device(&self) -> usize {
        self.tasks.iter().filter(|(_, t)| t.parts > 0).count()
    }

    /// What this nexus may do at LUN index `i` under the persistent reservation, and what it
    /// sees of the RESERVE: one atomic load, the lock only when the state changed.
    fn reservations(&mut self, i: usize) -> (crate::frontend::nvmf::resv::Access, spc2::View) {
        let pr = &self.target.luns[i].pr;
        let v = pr.version.load(std::sync::atomic::Ordering::Acquire);
        if self.pr_cache.len() <= i {
            self.pr_cache.resize(i + 1, None);
        }
        match self.pr_cache[i] {
            Some((cv, a, r)) if cv == v => (a, r),
            _ => {
                let (v, a, r) = pr.access(&self.me, &self.res);
                self.pr_cache[i] = Some((v, a, r));
                (a, r)
            }
        }
    }

    /// Whether this nexus may issue a read- (`write` false) or write-class command to LUN
    /// index `i` under its persistent reservation.
    pub(super) fn pr_allows(&mut self, i: usize, write: bool) -> bool {
        let acc = self.reservations(i).0;
        if write { acc.write } else { acc.read }
    }

    /// What this nexus sees of the RESERVE of LUN index `i`.
    pub(super) fn reserve_view(&mut self, i: usize) -> spc2::View {
        self.reservations(i).1
    }

    /// Carry this session's I_T nexus loss for LUN index `i` (its RESERVE released, decided
    /// like a RELEASE): true while it is on its way (a placeholder task holds the connection).
    pub(super) fn carry_nexus_loss(&mut self, env: &mut Env<'_>, i: usize) -> bool {
        let t = &std::sync::Arc::clone(&self.target);
        let (vol, lun) = (t.luns[i].volume, t.luns[i].lun);
        let pr = std::sync::Arc::clone(&t.luns[i].pr);
        let out = spc2_out(spc2::SA_NEXUS_LOSS);
        let cmd = prs::PrCmd {
            target: t.iqn.clone(),
            lun,
            me: self.res,
            name: self.initiator.clone(),
            port: self.sh.tpg,
            out,
        };
        let bytes = crate::layer::mirror::engine::tagged(prs::META_KIND, &cmd.encode());
        let slot = self.placeholder_task(vol) as u32;
        let tag = IoTag {
            conn: env.key,
            slot,
        };
        match env.chans[vol].meta(env.io, tag, &bytes) {
            Some(Start::Pending) => {
                self.tasks[slot as usize].parts = 1;
                return true;
            }
            Some(Start::Done(Err(e))) => {
                tracing::warn!(lun, errno = e.0, initiator = %self.initiator,
                    "iscsi: the loss of an I_T nexus holding a RESERVE could not be carried to the volume's decision; the reservation stays until a LUN reset");
            }
            Some(Start::Done(Ok(()))) => {}
            None => {
                pr.apply(&self.res, &self.initiator, self.sh.tpg, &out);
            }
        }
        self.tasks.remove(slot as usize);
        false
    }

    /// Path-state changes of either site's port group of LUN index `i` so far (RTPG lists
    /// both).
    pub(super) fn path_changes(&self, env: &Env<'_>, i: usize) -> u64 {
        let l = &self.target.luns[i];
        env.vols[l.volume].as_deref().map_or(0, |v| {
            v.path.changes() + v.peer_path.as_ref().map_or(0, |p| p.changes())
        })
    }

    /// Both port groups of LUN index `i` as this session sees them (`alua.rs`).
    pub(super) fn lun_view(&self, env: &Env<'_>, i: usize) -> (PathState, Option<PathState>) {
        let l = &self.target.luns[i];
        env.vols[l.volume]
            .as_deref()
            .map_or((PathState::Inaccessible, None), |v| self.host_paths(v))
    }

    /// A new session's reference for its unit attentions: every logical unit's reset count
    /// and path states as they are at its login, so a reset or a path change after it is
    /// reported at the session's next command to that unit, whether or not it has used it
    /// before (SAM-5: a logical unit reset sets a unit attention for every I_T nexus).
    pub(super) fn baseline_unit_attentions(&mut self, env: &Env<'_>) {
        let seen: Vec<alua::Seen> = (0..self.target.luns.len())
            .map(|i| alua::Seen {
                changes: self.path_changes(env, i),
                resets: self.target.luns[i]
                    .resets
                    .load(std::sync::atomic::Ordering::Acquire),
                view: self.lun_view(env, i),
            })
            .collect();
        self.with_sess(|s| {
            s.path_seen = seen.into_iter().map(Some).collect();
            s.ua.resize(s.path_seen.len(), None);
        });
    }

    /// A pending unit attention for LUN index `i` (reported once), unless the command is one
    /// that never reports it (INQUIRY, REPORT LUNS, REQUEST SENSE). A path-state change is
    /// one for a session the host list places only when the states it sees changed
    /// (`alua.rs`); the states are read only when a change count moved.
    fn unit_attention(&mut self, env: &Env<'_>, i: usize, cmd: &Cmd) -> Option<Sense> {
        let resets = self.target.luns[i]
            .resets
            .load(std::sync::atomic::Ordering::Acquire);
        let changes = self.path_changes(env, i);
        let stpg = self.stpg_waits(i);
        let report = !matches!(
            cmd,
            Cmd::Inquiry { .. } | Cmd::ReportLuns { .. } | Cmd::RequestSense { .. }
        );
        // The unit attentions are the session's (one I_T nexus for all its connections). The
        // states are looked at again only when the change count moved.
        let seen = self
            .with_sess(|s| s.path_seen.get(i).copied().flatten())
            .flatten();
        let view = match seen {
            Some(seen) if seen.changes == changes => seen.view,
            _ => self.lun_view(env, i),
        };
        let listed = self.host_site.is_some();
        self.with_sess(|s| {
            s.grow_luns(i);
            if let Some(seen) = s.path_seen[i] {
                // A listed host hears of a change only when what it sees changed.
                let changed = seen.changes != changes && (!listed || seen.view != view);
                if seen.resets != resets {
                    s.ua[i] = Some(Sense::RESET_OCCURRED);
                } else if changed && s.ua[i].is_none() && !stpg {
                    s.ua[i] = Some(Sense::ALUA_CHANGED);
                }
            }
            s.path_seen[i] = Some(alua::Seen {
                changes,
                resets,
                view,
            });
            if report { s.ua[i].take() } else { None }
        })
        .flatten()
    }
}

/// SPC-2 command `sa` (`spc2::SA_*`) as the PERSISTENT RESERVE OUT shape the decision takes.
fn spc2_out(sa: u8) -> prs::PrOut {
    prs::PrOut {
        sa,
        nt: 0,
        key: 0,
        sa_key: 0,
        aptpl: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A COMPARE AND WRITE (or an access diverted behind one) that the volume's home executor
    /// answers with an NVMe path status (the mirror refused it at this site, or the leadership
    /// moved) is answered with the ALUA sense, so a multipath host retries it on a path, never
    /// with a medium error, which ESXi takes as a failed ATS (SPC-4 §5.15.2.4); the NVMe statuses
    /// come from the errno table (`nvmf::status::status_of`).
    #[test]
    fn path_statuses_of_the_home_executor_become_alua_senses() {
        use crate::frontend::nvmf::status::status_of;
        use crate::uring::Errno;
        let w = crate::frontend::nvmf::cmd::io::WRITE;
        assert_eq!(
            nv_sense(status_of(Errno::UNAVAILABLE, w)),
            Err(Sense::ALUA_UNAVAILABLE)
        );
        assert_eq!(
            nv_sense(status_of(Errno::TRANSITION, w)),
            Err(Sense::ALUA_TRANSITION)
        );
        assert_eq!(
            nv_sense(status_of(Errno::SHUTDOWN, w)),
            Err(Sense::ALUA_UNAVAILABLE)
        );
        assert_eq!(nv_sense(status_of(Errno::IO, w)), Err(Sense::WRITE_ERROR));
    }
}
