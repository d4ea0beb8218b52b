//! Get Features and Set Features (NVM Express Base 2.0, Get/Set Features and Feature Values;
//! NVM Command Set 1.0 for Error Recovery).
//!
//! Model: every supported Feature has a scope. Controller scope: number of queues, KATO,
//! async event configuration, volatile write cache, host identifier, arbitration, power
//! management, temperature threshold. Namespace scope: error recovery, reservation
//! notification mask, reservation persistence. The values a host can change live in the
//! admin queue's state ([`FeatureValues`], per namespace where namespace specific), the
//! number of queues and KATO in the [`Controller`], the async event configuration in the
//! admin state. None is saveable; a Controller Level Reset (CC.EN 1 to 0) puts the
//! [`FeatureValues`], the number of queues and the async event configuration back to their
//! defaults (KATO stays as set: it came with Connect).
//!
//! Invariants:
//! - Checked in this order: an unsupported Feature (Invalid Field in Command, SV or not), SV
//!   on a Feature that cannot be saved (Feature Identifier Not Saveable; none can), the NSID
//!   against the Feature's scope ([`target`]), then the value.
//! - NSID (Base 2.0, Feature Values): for a controller-scope Feature 0h and FFFFFFFFh name
//!   the controller, a valid NSID (1..=NN) is Feature Not Namespace Specific for Set and the
//!   controller's value for Get, anything else Invalid Namespace or Format. For a namespace
//!   Feature an active NSID names that namespace, FFFFFFFFh every namespace for Set (for Get
//!   Invalid Namespace or Format, but Invalid Field in Command for the reservation Features
//!   82h and 83h, whose sections say so), an inactive one Invalid Field, 0h or one above NN
//!   Invalid Namespace or Format.
//! - A Feature Get Features SEL 011b reports not changeable answers Set Features with another
//!   value than its current one with Feature Not Changeable (its current value: success),
//!   except the Host Identifier: Command Sequence Error, as it comes with Connect.

use super::{NvmfConn, Role};
use crate::frontend::nvmf::cmd::{self, Sqe, Status, feat};
use crate::frontend::nvmf::ctrl::{Controller, MAX_IO_QUEUES, Subsystem};
use std::sync::atomic::Ordering;

/// Arbitration: AB (bits 2:0) 111b, no burst limit; priority weights 0.
const ARBITRATION_DEFAULT: u32 = 0x7;

/// The Feature values a host has set on this controller (the defaults until it does).
#[derive(Clone, Debug)]
pub(super) struct FeatureValues {
    /// Arbitration (01h): AB, LPW, MPW, HPW as set (round robin is the only arbitration, so
    /// the weights are kept, not used).
    arbitration: u32,
    /// Power Management (02h): PS (always 0, the only power state) and WH.
    power: u32,
    /// Temperature Threshold (04h) of the composite temperature (the only sensor): over and
    /// under thresholds in Kelvin.
    temp_over: u16,
    temp_under: u16,
    /// Namespace-specific values, by NSID (absent: the defaults).
    ns: Vec<NsValues>,
}

#[derive(Clone, Copy, Debug, Default)]
struct NsValues {
    nsid: u32,
    /// Error Recovery (05h): TLER (bits 15:0); DULBE is never set (NSFEAT DAE is 0).
    error_recovery: u32,
    /// Reservation Notification Mask (82h): REGPRE, RESREL, RESPRE (bits 3:1); nothing is
    /// posted, so nothing is masked either way.
    resv_mask: u32,
}

impl Default for FeatureValues {
    fn default() -> Self {
        Self {
            arbitration: ARBITRATION_DEFAULT,
            power: 0,
            temp_over: cmd::WCTEMP,
            temp_under: 0,
            ns: Vec::new(),
        }
    }
}

impl FeatureValues {
    fn ns(&self, nsid: u32) -> NsValues {
        self.ns
            .iter()
            .find(|v| v.nsid == nsid)
            .copied()
            .unwrap_or(NsValues {
                nsid,
                ..NsValues::default()
            })
    }

    fn ns_mut(&mut self, nsid: u32) -> &mut NsValues {
        let at = match self.ns.iter().position(|v| v.nsid == nsid) {
            Some(at) => at,
            None => {
                self.ns.push(NsValues {
                    nsid,
                    ..NsValues::default()
                });
                self.ns.len() - 1
            }
        };
        &mut self.ns[at]
    }

    /// The composite temperature is at or beyond one of its thresholds: the SMART / Health
    /// log's Critical Warning bit 1 (Temperature Threshold Condition).
    pub(super) fn temperature_warning(&self) -> bool {
        cmd::COMPOSITE_TEMP >= self.temp_over || cmd::COMPOSITE_TEMP <= self.temp_under
    }
}

/// What a Get/Set Features names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Controller,
    Namespace(u32),
    /// Every active namespace (Set Features with NSID FFFFFFFFh).
    AllNamespaces,
}

const NS_SPECIFIC: u32 = 1 << 1;
const CHANGEABLE: u32 = 1 << 2;

/// A Feature's capabilities as Get Features with SEL 011b reports them in Dword 0 (Base 2.0,
/// Get Features): bit 0 saveable (none is: there is nothing to save them in), bit 1 namespace
/// specific, bit 2 changeable (Set Features can change its value); `None` for a Feature this
/// controller does not support (Invalid Field in Command).
pub(super) fn feature_caps(ctrl: &Controller, fid: u8) -> Option<u32> {
    let io = ctrl.subsys.is_some();
    match fid {
        feat::KATO | feat::ASYNC_EVENT => Some(CHANGEABLE),
        feat::NUM_QUEUES | feat::ARBITRATION | feat::POWER_MGMT | feat::TEMP_THRESHOLD if io => {
            Some(CHANGEABLE)
        }
        // Always on (a Flush decides durability).
        feat::VOLATILE_WC if io => Some(0),
        feat::ERROR_RECOVERY | feat::RESV_MASK if io => Some(NS_SPECIFIC | CHANGEABLE),
        // Whether reservations persist is the daemon's (a state directory or not).
        feat::RESV_PERSIST if io => Some(NS_SPECIFIC),
        // Given by Connect; Set Features refuses it.
        feat::HOST_ID => Some(0),
        _ => None,
    }
}

/// The scope check of Get/Set Features (Base 2.0, Feature Values; Figure 92 for the NSIDs
/// that are neither valid nor the broadcast value).
/// `sub`: the queue's copy of the subsystem (the namespaces it has now).
fn target(sub: Option<&Subsystem>, caps: u32, nsid: u32, set: bool) -> Result<Target, Status> {
    let nn = sub.map_or(0, |s| s.nn());
    if caps & NS_SPECIFIC == 0 {
        return match nsid {
            0 | 0xFFFF_FFFF => Ok(Target::Controller),
            n if n <= nn && set => Err(Status::FEAT_NOT_NS_SPECIFIC),
            n if n <= nn => Ok(Target::Controller),
            _ => Err(Status::INVALID_NS),
        };
    }
    match nsid {
        0xFFFF_FFFF if set => Ok(Target::AllNamespaces),
        0 | 0xFFFF_FFFF => Err(Status::INVALID_NS),
        n if n > nn => Err(Status::INVALID_NS),
        n if sub.and_then(|s| s.ns(n)).is_none() => Err(Status::INVALID_FIELD),
        n => Ok(Target::Namespace(n)),
    }
}

impl NvmfConn {
    /// Set Features; `ptpl`: reservations persist through a power loss (a state directory).
    pub(super) fn set_features(
        &mut self,
        ctrl: &Controller,
        sqe: Sqe<'_>,
        ptpl: bool,
    ) -> (Status, u64) {
        let Role::Admin(st) = &mut self.role else {
            return (Status::CMD_SEQ_ERROR, 0);
        };
        // A Feature this controller does not have is Invalid Field in Command whatever the
        // command asks of it (Base, Feature Values); SV on one it has: none is saveable.
        let fid = (sqe.cdw(10) & 0xFF) as u8;
        let Some(caps) = feature_caps(ctrl, fid) else {
            return (Status::INVALID_FIELD, 0);
        };
        if sqe.cdw(10) & (1 << 31) != 0 {
            return (Status::FEAT_NOT_SAVEABLE, 0);
        }
        let to = match target(self.subsys.as_deref(), caps, sqe.nsid(), true) {
            Ok(to) => to,
            Err(s) => return (s, 0),
        };
        let nsids: Vec<u32> = match to {
            Target::Controller => Vec::new(),
            Target::Namespace(n) => vec![n],
            Target::AllNamespaces => self
                .subsys
                .iter()
                .flat_map(|s| s.namespaces.iter().map(|n| n.nsid))
                .collect(),
        };
        let v = sqe.cdw(11);
        let f = &mut st.features;
        match fid {
            feat::NUM_QUEUES => {
                let (nsqr, ncqr) = (v & 0xFFFF, v >> 16);
                if nsqr == 0xFFFF || ncqr == 0xFFFF {
                    return (Status::INVALID_FIELD, 0);
                }
                if ctrl.attached() > 0 {
                    return (Status::CMD_SEQ_ERROR, 0);
                }
                let granted = (nsqr.max(ncqr) + 1).min(u32::from(MAX_IO_QUEUES));
                ctrl.io_queues.store(granted as u16, Ordering::Relaxed);
                let g = u64::from(granted - 1);
                (Status::SUCCESS, (g << 16) | g)
            }
            feat::KATO => {
                ctrl.kato_ms.store(cmd::kato_granular(v), Ordering::Relaxed);
                (Status::SUCCESS, 0)
            }
            feat::ASYNC_EVENT => {
                st.aec = v;
                (Status::SUCCESS, 0)
            }
            // Bits 7:3 reserved.
            feat::ARBITRATION => {
                f.arbitration = v & 0xFFFF_FF07;
                (Status::SUCCESS, 0)
            }
            // PS must be a supported power state: NPSS is 0, so only state 0 (Base 2.0, Power
            // Management: otherwise Invalid Field in Command). WH (bits 7:5) is kept.
            feat::POWER_MGMT if v & 0x1F != 0 => (Status::INVALID_FIELD, 0),
            feat::POWER_MGMT => {
                f.power = v & 0xE0;
                (Status::SUCCESS, 0)
            }
            // TMPTH bits 15:0, TMPSEL 19:16 (0 composite, 1..=8 sensors: none is implemented,
            // so none has a threshold to set; Fh every implemented sensor, the composite
            // one), THSEL 21:20 (0 over, 1 under; 2 and 3 reserved).
            feat::TEMP_THRESHOLD => {
                let (tmpth, tmpsel, thsel) = (v as u16, (v >> 16) & 0xF, (v >> 20) & 0x3);
                match (tmpsel, thsel) {
                    (0 | 0xF, 0) => f.temp_over = tmpth,
                    (0 | 0xF, 1) => f.temp_under = tmpth,
                    _ => return (Status::INVALID_FIELD, 0),
                }
                (Status::SUCCESS, 0)
            }
            // DULBE may be enabled only if Identify Namespace NSFEAT DAE is 1; it is 0 here.
            feat::ERROR_RECOVERY if v & (1 << 16) != 0 => (Status::INVALID_FIELD, 0),
            feat::ERROR_RECOVERY => {
                for n in nsids {
                    f.ns_mut(n).error_recovery = v & 0xFFFF;
                }
                (Status::SUCCESS, 0)
            }
            feat::RESV_MASK => {
                for n in nsids {
                    f.ns_mut(n).resv_mask = v & 0xE;
                }
                (Status::SUCCESS, 0)
            }
            // Not changeable: the volatile write cache stays on (so a host never takes its
            // writes for durable without a Flush), and whether reservations persist through
            // a power loss is the daemon's. The current value is accepted.
            feat::VOLATILE_WC if v & 1 == 1 => (Status::SUCCESS, 0),
            feat::RESV_PERSIST if (v & 1 == 1) == ptpl => (Status::SUCCESS, 0),
            feat::VOLATILE_WC | feat::RESV_PERSIST => (Status::FEAT_NOT_CHANGEABLE, 0),
            // The host identifier comes with Connect and cannot change afterwards.
            feat::HOST_ID => (Status::CMD_SEQ_ERROR, 0),
            _ => (Status::INVALID_FIELD, 0),
        }
    }

    /// Get Features: the scope check, then SEL 011b (capabilities) or the value of SEL 000b
    /// (current), 001b (default) or 010b (saved: no Feature is saveable, so the default);
    /// `Ok(None)` for the Host Identifier, whose value is data (sent by the caller).
    pub(super) fn get_features(
        &mut self,
        ctrl: &Controller,
        sqe: Sqe<'_>,
        ptpl: bool,
    ) -> Result<Option<u64>, Status> {
        let Role::Admin(st) = &self.role else {
            return Err(Status::CMD_SEQ_ERROR);
        };
        let fid = (sqe.cdw(10) & 0xFF) as u8;
        let sel = (sqe.cdw(10) >> 8) & 7;
        // SEL 100b to 111b are reserved.
        if sel > 0b011 {
            return Err(Status::INVALID_FIELD);
        }
        let caps = feature_caps(ctrl, fid).ok_or(Status::INVALID_FIELD)?;
        // The reservation Features name their own status for a Get Features with NSID
        // FFFFFFFFh (Base 2.0, Reservation Notification Mask and Reservation Persistence):
        // Invalid Field in Command, not the Invalid Namespace or Format of the other
        // namespace-scope Features (SPDK's target and QEMU's controller read it so too).
        if matches!(fid, feat::RESV_MASK | feat::RESV_PERSIST) && sqe.nsid() == 0xFFFF_FFFF {
            return Err(Status::INVALID_FIELD);
        }
        let to = target(self.subsys.as_deref(), caps, sqe.nsid(), false)?;
        if sel == 0b011 {
            return Ok(Some(u64::from(caps)));
        }
        let default = sel != 0;
        let cur = if default {
            &FeatureValues::default()
        } else {
            &st.features
        };
        let ns = match to {
            Target::Namespace(n) => cur.ns(n),
            _ => NsValues::default(),
        };
        let v = match fid {
            feat::NUM_QUEUES => {
                let n = if default {
                    MAX_IO_QUEUES
                } else {
                    ctrl.io_queues.load(Ordering::Relaxed)
                };
                let g = u32::from(n.max(1) - 1);
                (g << 16) | g
            }
            // The default on a transport that requires the Keep Alive Timer (TCP): 2 minutes,
            // rounded to KAS (the Keep Alive Timer feature).
            feat::KATO if default => cmd::KATO_DEFAULT_MS,
            feat::KATO => ctrl.kato_ms.load(Ordering::Relaxed),
            feat::ASYNC_EVENT if default => 0,
            feat::ASYNC_EVENT => st.aec,
            feat::VOLATILE_WC => 1,
            feat::ARBITRATION => cur.arbitration,
            feat::POWER_MGMT => cur.power,
            // TMPSEL cdw11 19:16 (Fh is for Set Features only), THSEL 21:20: the composite
            // thresholds; a sensor that is not implemented reports 0.
            feat::TEMP_THRESHOLD => {
                let (tmpsel, thsel) = ((sqe.cdw(11) >> 16) & 0xF, (sqe.cdw(11) >> 20) & 0x3);
                match (tmpsel, thsel) {
                    (0x9..=0xF, _) | (_, 2..) => return Err(Status::INVALID_FIELD),
                    (0, 0) => u32::from(cur.temp_over),
                    (0, _) => u32::from(cur.temp_under),
                    _ => 0,
                }
            }
            feat::ERROR_RECOVERY => ns.error_recovery,
            feat::RESV_MASK => ns.resv_mask,
            feat::RESV_PERSIST => u32::from(ptpl),
            feat::HOST_ID => return Ok(None),
            _ => return Err(Status::INVALID_FIELD),
        };
        Ok(Some(u64::from(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_warning_follows_the_thresholds() {
        let mut f = FeatureValues::default();
        assert!(!f.temperature_warning(), "defaults: WCTEMP over, 0 under");
        f.temp_over = cmd::COMPOSITE_TEMP;
        assert!(f.temperature_warning(), "at the over threshold");
        f.temp_over = cmd::WCTEMP;
        f.temp_under = cmd::COMPOSITE_TEMP;
        assert!(f.temperature_warning(), "at the under threshold");
    }

    #[test]
    fn namespace_values_default_until_set() {
        let mut f = FeatureValues::default();
        assert_eq!(f.ns(3).resv_mask, 0);
        f.ns_mut(3).resv_mask = 0x6;
        f.ns_mut(3).error_recovery = 7;
        assert_eq!((f.ns(3).resv_mask, f.ns(3).error_recovery), (0x6, 7));
        assert_eq!(f.ns(2).resv_mask, 0);
        assert_eq!(f.ns.len(), 1);
    }
}
