//! What a discovery session may ask (RFC 7143 §4.3, RFC 3720 §3.3): the target accepts only
//! Text Requests with the SendTargets key and a Logout Request with the reason "close the
//! session"; every other request is rejected (Reject, reason protocol error), before its CmdSN
//! is taken (the CmdSN of a rejected command is not received: the initiator plugs the gap).
//!
//! Allowed besides: MaxRecvDataSegmentLength in a Text Request (declarative, Use: ALL, RFC
//! 7143 §13.12), and a NOP-Out with ITT FFFFFFFFh, which is no request but the answer to the
//! target's idle ping (NOP-In) and gets nothing back. A Login Request in full feature phase is
//! handled as in any session (Reject, the connection closes). A Text Request gathered over
//! several PDUs (C bit) is judged once whole, at its last PDU.

use super::IscsiConn;
use crate::frontend::iscsi::login;
use crate::frontend::iscsi::pdu::{NO_TAG, Req, op};

/// Keys a discovery session's Text Request may carry.
const KEYS: &[&str] = &["SendTargets", "MaxRecvDataSegmentLength"];

impl IscsiConn {
    /// May this PDU be acted on in a discovery session? `data`: its data segment.
    pub(super) fn discovery_allows(&self, r: Req<'_>, data: &[u8]) -> bool {
        match r.opcode() {
            op::TEXT_REQ => self.discovery_text_allowed(r, data),
            // Close the session (reason 0) only.
            op::LOGOUT_REQ => r.flags() & 0x7F == 0,
            op::NOP_OUT => r.itt() == NO_TAG,
            op::LOGIN_REQ => true,
            _ => false,
        }
    }

    /// A Text Request whose text (the parts gathered before and this one) holds only the keys
    /// a discovery session may send. A text still being gathered, or that does not parse (the
    /// exchange refuses it), is judged by `text_req`.
    fn discovery_text_allowed(&self, r: Req<'_>, data: &[u8]) -> bool {
        if r.flags() & 0x40 != 0 {
            return true;
        }
        let mut whole = Vec::new();
        if r.w20() != NO_TAG
            && let Some(t) = self.text_seq.as_ref().filter(|t| t.itt == r.itt())
        {
            whole.extend_from_slice(&t.req);
        }
        whole.extend_from_slice(data);
        match login::parse_keys(&whole) {
            Ok(keys) => keys.iter().all(|(k, _)| KEYS.contains(k)),
            Err(_) => true,
        }
    }
}
