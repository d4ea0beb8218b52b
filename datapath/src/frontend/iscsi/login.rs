//! Login and text keys (RFC 7143 §6, §13): the key=value parser and the target's side of the
//! operational parameter negotiation, as pure functions (`docs/iscsi.md` lists the defaults).
//!
//! Model: a login or text request's data segment is a list of `key=value` strings, each ended
//! by a NUL. [`parse_keys`] splits it (refusing malformed text); [`Negotiation::offer`] answers
//! every key the initiator sent, updating the session's [`Params`], and records keys that must
//! be answered once per login. The connection (`conn.rs`) drives the login phases and decides
//! when the login is complete.
//!
//! Invariants:
//! - Every key the initiator offered gets exactly one answer (a value, `NotUnderstood`,
//!   `Irrelevant` or `Reject`); a key offered twice in one login fails the login.
//! - Negotiated values never exceed what the target supports (`Params::target()`): a
//!   "minimum" key answers the smaller value, a boolean "and"/"or" key follows RFC 7143 §13.
//! - Nothing here panics on any input; values are bounded before they are converted.

/// Longest key name (RFC 7143 §6.1: 63 bytes).
pub const MAX_KEY: usize = 63;
/// Longest value accepted (RFC 7143 §6.1: 8192 bytes for text values).
pub const MAX_VALUE: usize = 8192;
/// Bytes of key text accepted in one login or text exchange (accumulated over continued
/// PDUs): far more than any real login needs, small enough to bound the buffer.
pub const MAX_TEXT: usize = 64 << 10;

/// The target's MaxRecvDataSegmentLength: the largest data segment it accepts in one PDU.
pub const TARGET_MAX_RECV_DSL: u32 = 256 << 10;
/// The largest MaxBurstLength the target agrees to.
pub const TARGET_MAX_BURST: u32 = 1 << 20;
/// The largest FirstBurstLength the target agrees to.
pub const TARGET_FIRST_BURST: u32 = 256 << 10;
/// The most connections a session may have by default (`[iscsi] max_connections`;
/// MaxConnections is the lower of the initiator's offer and the configured maximum).
pub const TARGET_MAX_CONNECTIONS: u32 = 4;

/// Login status (class, detail), RFC 7143 §11.13.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginStatus(pub u8, pub u8);

impl LoginStatus {
    /// Success.
    pub const OK: Self = Self(0, 0);
    /// Initiator error (a malformed or contradicting request).
    pub const INITIATOR_ERROR: Self = Self(2, 0);
    /// Authentication failed.
    pub const AUTH_FAILED: Self = Self(2, 1);
    /// The initiator may not access this target.
    pub const NOT_AUTHORIZED: Self = Self(2, 2);
    /// No such target.
    pub const NOT_FOUND: Self = Self(2, 3);
    /// Unsupported version.
    pub const UNSUPPORTED_VERSION: Self = Self(2, 5);
    /// Too many connections in the session.
    pub const TOO_MANY_CONNECTIONS: Self = Self(2, 6);
    /// A required key is missing.
    pub const MISSING_PARAMETER: Self = Self(2, 7);
    /// The connection cannot be added to the session.
    pub const CANNOT_INCLUDE: Self = Self(2, 8);
    /// The session type is not supported.
    pub const SESSION_TYPE: Self = Self(2, 9);
    /// The session named by the TSIH does not exist.
    pub const NO_SESSION: Self = Self(2, 10);
    /// A request that is invalid during login.
    pub const INVALID_DURING_LOGIN: Self = Self(2, 11);
    /// Target error.
    pub const TARGET_ERROR: Self = Self(3, 0);
}

/// A text exchange that cannot be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// A string without `=`, an empty or too long key, or a too long value.
    Malformed,
    /// Not UTF-8.
    NotUtf8,
}

/// Split a text data segment into `(key, value)` pairs (RFC 7143 §6.1). A final string
/// without its NUL is accepted (some initiators omit it); empty strings between NULs are
/// skipped.
pub fn parse_keys(data: &[u8]) -> Result<Vec<(&str, &str)>, KeyError> {
    let mut out = Vec::new();
    for s in data.split(|&b| b == 0) {
        if s.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(s).map_err(|_| KeyError::NotUtf8)?;
        let (k, v) = s.split_once('=').ok_or(KeyError::Malformed)?;
        if k.is_empty() || k.len() > MAX_KEY || v.len() > MAX_VALUE {
            return Err(KeyError::Malformed);
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Append `key=value\0` to `out`.
pub fn put_key(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// The kind of session a login opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    /// SendTargets only.
    Discovery,
    /// SCSI commands to a target.
    Normal,
}

/// Operational parameters of a session and connection (RFC 7143 §13), with their defaults
/// until negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// CRC32C on headers.
    pub header_digest: bool,
    /// CRC32C on data segments.
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength: the largest data segment the target may send.
    pub send_dsl: u32,
    /// MaxBurstLength.
    pub max_burst: u32,
    /// FirstBurstLength.
    pub first_burst: u32,
    /// ImmediateData.
    pub immediate_data: bool,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// MaxOutstandingR2T (the target sends one R2T at a time per task either way).
    pub max_outstanding_r2t: u32,
    /// MaxConnections.
    pub max_connections: u32,
    /// DefaultTime2Wait.
    pub time2wait: u32,
    /// DefaultTime2Retain.
    pub time2retain: u32,
}

impl Default for Params {
    /// RFC 7143 defaults.
    fn default() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            send_dsl: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            max_connections: 1,
            time2wait: 2,
            time2retain: 20,
        }
    }
}

/// What the initiator declared about itself and the session it wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declared {
    /// InitiatorName.
    pub initiator_name: Option<String>,
    /// InitiatorAlias.
    pub initiator_alias: Option<String>,
    /// TargetName.
    pub target_name: Option<String>,
    /// SessionType (`None`: not sent, which means Normal).
    pub session_type: Option<SessionType>,
    /// AuthMethod values offered, in the initiator's order.
    pub auth_methods: Vec<String>,
}

/// One login's negotiation state.
#[derive(Clone, Debug, Default)]
pub struct Negotiation {
    /// The negotiated parameters so far.
    pub params: Params,
    /// What the initiator declared.
    pub declared: Declared,
    /// Keys seen in this login (a second offer of the same key fails the login).
    seen: Vec<String>,
    /// MaxRecvDataSegmentLength has been declared to the initiator.
    pub sent_max_recv: bool,
    /// FirstBurstLength was answered (its value may no longer change).
    first_burst_answered: bool,
    /// The target requires CHAP (AuthMethod must become CHAP).
    pub chap_required: bool,
    /// The target's most connections per session (0: [`TARGET_MAX_CONNECTIONS`]).
    pub max_connections: u32,
}

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yn(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

/// A numeric value in `lo..=hi` (decimal, or hex with `0x`; RFC 7143 §6.1). Leading zeros
/// are taken at any length (a hex-constant may have them); what is left must fit a u32.
pub(super) fn number(v: &str, lo: u32, hi: u32) -> Option<u32> {
    let (digits, radix) = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (v, 10),
    };
    // Digits only: Rust's integer parsing would take a leading `+` too.
    if digits.is_empty() || !digits.bytes().all(|c| char::from(c).is_digit(radix)) {
        return None;
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 10 {
        // Past any u32 in either base (and bounded before it is parsed).
        return None;
    }
    let n = if significant.is_empty() {
        0
    } else {
        u64::from_str_radix(significant, radix).ok()?
    };
    let n = u32::try_from(n).ok()?;
    (lo..=hi).contains(&n).then_some(n)
}

/// Pick the first digest of the initiator's list the target supports.
fn digest(v: &str) -> Option<bool> {
    v.split(',').find_map(|d| match d {
        "CRC32C" => Some(true),
        "None" => Some(false),
        _ => None,
    })
}

impl Negotiation {
    /// A login's negotiation for a target allowing `max` connections per session.
    pub fn with_max_connections(max: u32) -> Self {
        Self {
            max_connections: max,
            ..Self::default()
        }
    }

    /// Answer the keys of one request, in order, into `out`. `security`: the request is in
    /// the security negotiation stage (only security and declarative keys are answered).
    /// Errors: the login fails with that status.
    pub fn offer(
        &mut self,
        keys: &[(&str, &str)],
        security: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), LoginStatus> {
        for &(k, v) in keys {
            if self.seen.iter().any(|s| s == k) {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            self.seen.push(k.to_string());
            self.one(k, v, security, out)?;
        }
        Ok(())
    }

    fn one(
        &mut self,
        k: &str,
        v: &str,
        security: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), LoginStatus> {
        let p = &mut self.params;
        let bad = LoginStatus::INITIATOR_ERROR;
        match k {
            "InitiatorName" => {
                if v.is_empty() || v.len() > 223 {
                    return Err(bad);
                }
                self.declared.initiator_name = Some(v.to_string());
            }
            "InitiatorAlias" => self.declared.initiator_alias = Some(v.to_string()),
            "TargetName" => {
                if v.is_empty() || v.len() > 223 {
                    return Err(bad);
                }
                self.declared.target_name = Some(v.to_string());
            }
            "SessionType" => {
                self.declared.session_type = Some(match v {
                    "Discovery" => SessionType::Discovery,
                    "Normal" => SessionType::Normal,
                    _ => return Err(LoginStatus::SESSION_TYPE),
                });
            }
            "AuthMethod" => {
                self.declared.auth_methods = v.split(',').map(str::to_string).collect();
                // CHAP when the target has a secret, else None; the initiator must offer it.
                let want = if self.chap_required { "CHAP" } else { "None" };
                let choice = if self.declared.auth_methods.iter().any(|m| m == want) {
                    want
                } else {
                    "Reject"
                };
                put_key(out, k, choice);
            }
            _ if security => {
                // Operational keys are negotiated in the operational stage only; an unknown
                // key is answered as such in either stage.
                put_key(out, k, "NotUnderstood");
            }
            "HeaderDigest" | "DataDigest" => {
                let d = digest(v).ok_or(bad)?;
                if k == "HeaderDigest" {
                    p.header_digest = d;
                } else {
                    p.data_digest = d;
                }
                put_key(out, k, if d { "CRC32C" } else { "None" });
            }
            "MaxRecvDataSegmentLength" => {
                p.send_dsl = number(v, 512, 0x00FF_FFFF).ok_or(bad)?;
                // Declarative: the target declares its own once per login.
                if !self.sent_max_recv {
                    self.sent_max_recv = true;
                    put_key(out, k, &TARGET_MAX_RECV_DSL.to_string());
                }
            }
            "MaxBurstLength" => {
                p.max_burst = number(v, 512, 0x00FF_FFFF)
                    .ok_or(bad)?
                    .min(TARGET_MAX_BURST);
                if self.first_burst_answered {
                    // FirstBurstLength MUST NOT exceed MaxBurstLength (RFC 7143 §13.14): an
                    // answered FirstBurstLength above it was an offer larger than the
                    // initiator's own MaxBurstLength; the login fails rather than enforce a
                    // value other than the one answered.
                    if p.first_burst > p.max_burst {
                        return Err(bad);
                    }
                } else {
                    // Not negotiated (yet): the default is kept within MaxBurstLength, and a
                    // later offer is answered within it.
                    p.first_burst = p.first_burst.min(p.max_burst);
                }
                put_key(out, k, &p.max_burst.to_string());
            }
            "FirstBurstLength" => {
                p.first_burst = number(v, 512, 0x00FF_FFFF)
                    .ok_or(bad)?
                    .min(TARGET_FIRST_BURST)
                    .min(p.max_burst);
                self.first_burst_answered = true;
                put_key(out, k, &p.first_burst.to_string());
            }
            "ImmediateData" => {
                // AND: the target agrees to immediate data.
                p.immediate_data = yes_no(v).ok_or(bad)?;
                put_key(out, k, yn(p.immediate_data));
            }
            "InitialR2T" => {
                // OR: the target accepts unsolicited data, so the initiator decides.
                p.initial_r2t = yes_no(v).ok_or(bad)?;
                put_key(out, k, yn(p.initial_r2t));
            }
            "MaxOutstandingR2T" => {
                number(v, 1, 65535).ok_or(bad)?;
                p.max_outstanding_r2t = 1;
                put_key(out, k, "1");
            }
            "MaxConnections" => {
                // min (RFC 7143 §13.2); a connection joining a session keeps the session's.
                let ours = match self.max_connections {
                    0 => TARGET_MAX_CONNECTIONS,
                    n => n,
                };
                let n = number(v, 1, 65535).ok_or(bad)?.min(ours);
                p.max_connections = n;
                put_key(out, k, &n.to_string());
            }
            "DataPDUInOrder" | "DataSequenceInOrder" => {
                // OR: the target wants data in order, so the result is Yes.
                yes_no(v).ok_or(bad)?;
                put_key(out, k, "Yes");
            }
            "ErrorRecoveryLevel" => {
                number(v, 0, 2).ok_or(bad)?;
                put_key(out, k, "0");
            }
            "DefaultTime2Wait" => {
                p.time2wait = number(v, 0, 3600).ok_or(bad)?.max(2);
                put_key(out, k, &p.time2wait.to_string());
            }
            "DefaultTime2Retain" => {
                number(v, 0, 3600).ok_or(bad)?;
                // Nothing is retained at ErrorRecoveryLevel 0.
                p.time2retain = 0;
                put_key(out, k, "0");
            }
            "IFMarker" | "OFMarker" => {
                yes_no(v).ok_or(bad)?;
                put_key(out, k, "No");
            }
            "IFMarkInt" | "OFMarkInt" => put_key(out, k, "Irrelevant"),
            "iSCSIProtocolLevel" => {
                let n = number(v, 0, 31).ok_or(bad)?;
                put_key(out, k, &n.min(1).to_string());
            }
            "TaskReporting" => {
                // A list key (RFC 7143 §13.23, §6.2.1): the first value offered that the target
                // supports, RFC 3720 semantics only; none: Reject (never a value not offered).
                let v = if v.split(',').any(|x| x == "RFC3720") {
                    "RFC3720"
                } else {
                    "Reject"
                };
                put_key(out, k, v);
            }
            _ => put_key(out, k, "NotUnderstood"),
        }
        Ok(())
    }

    /// Keys the target states itself before the login completes, when the initiator did not
    /// offer them (so both sides hold the same values).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.sent_max_recv {
            self.sent_max_recv = true;
            put_key(
                out,
                "MaxRecvDataSegmentLength",
                &TARGET_MAX_RECV_DSL.to_string(),
            );
        }
    }

    /// Whether `key` was offered in this login.
    pub fn offered(&self, key: &str) -> bool {
        self.seen.iter().any(|s| s == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(keys: &[(&str, &str)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, val) in keys {
            put_key(&mut v, k, val);
        }
        v
    }

    #[test]
    fn keys_parse_and_malformed_text_is_refused() {
        let t = text(&[("A", "1"), ("B", "")]);
        assert_eq!(parse_keys(&t).unwrap(), vec![("A", "1"), ("B", "")]);
        assert_eq!(parse_keys(b"A=1").unwrap(), vec![("A", "1")]);
        assert_eq!(parse_keys(b"nokey\0"), Err(KeyError::Malformed));
        assert_eq!(parse_keys(b"=v\0"), Err(KeyError::Malformed));
        assert_eq!(parse_keys(b"A=\xff\0"), Err(KeyError::NotUtf8));
        let long = format!("{}=1", "k".repeat(64));
        assert_eq!(parse_keys(long.as_bytes()), Err(KeyError::Malformed));
    }

    #[test]
    fn max_connections_is_the_lower_of_the_offer_and_the_targets() {
        for (offer, want) in [("1", 1), ("2", 2), ("4", 4), ("65535", 4)] {
            let mut n = Negotiation::default();
            let mut out = Vec::new();
            let t = text(&[("MaxConnections", offer)]);
            n.offer(&parse_keys(&t).unwrap(), false, &mut out).unwrap();
            let ans = parse_keys(&out).unwrap();
            assert_eq!(ans, vec![("MaxConnections", want.to_string().as_str())]);
            assert_eq!(n.params.max_connections, want);
        }
        // A configured maximum.
        let mut n = Negotiation {
            max_connections: 2,
            ..Negotiation::default()
        };
        let t = text(&[("MaxConnections", "8")]);
        n.offer(&parse_keys(&t).unwrap(), false, &mut Vec::new())
            .unwrap();
        assert_eq!(n.params.max_connections, 2);
        // Not offered: the RFC default, one connection.
        assert_eq!(Negotiation::default().params.max_connections, 1);
        let mut n = Negotiation::default();
        let t = text(&[("MaxConnections", "0")]);
        assert!(
            n.offer(&parse_keys(&t).unwrap(), false, &mut Vec::new())
                .is_err()
        );
    }

    #[test]
    fn operational_keys_follow_the_rfc_functions() {
        let mut n = Negotiation::default();
        let mut out = Vec::new();
        let t = text(&[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "None,CRC32C"),
            ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "16776192"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("ErrorRecoveryLevel", "2"),
            ("MaxConnections", "8"),
            ("X-com.example.Foo", "1"),
        ]);
        n.offer(&parse_keys(&t).unwrap(), false, &mut out).unwrap();
        let ans = parse_keys(&out).unwrap();
        let get = |k: &str| ans.iter().find(|(a, _)| *a == k).map(|(_, v)| *v);
        assert_eq!(get("HeaderDigest"), Some("CRC32C"));
        assert_eq!(get("DataDigest"), Some("None"));
        assert_eq!(get("MaxBurstLength"), Some("1048576"));
        assert_eq!(get("FirstBurstLength"), Some("262144"));
        assert_eq!(get("ErrorRecoveryLevel"), Some("0"));
        assert_eq!(get("MaxConnections"), Some("4"));
        assert_eq!(n.params.max_connections, 4);
        assert_eq!(get("X-com.example.Foo"), Some("NotUnderstood"));
        assert_eq!(get("MaxRecvDataSegmentLength"), Some("262144"));
        assert!(n.params.header_digest && !n.params.data_digest);
        assert_eq!(n.params.send_dsl, 65536);
        assert!(!n.params.initial_r2t);
        // The same key again contradicts the first offer.
        let again = text(&[("MaxBurstLength", "512")]);
        assert_eq!(
            n.offer(&parse_keys(&again).unwrap(), false, &mut out),
            Err(LoginStatus::INITIATOR_ERROR)
        );
        let mut n = Negotiation::default();
        let bad = text(&[("MaxBurstLength", "12x")]);
        assert!(
            n.offer(&parse_keys(&bad).unwrap(), false, &mut out)
                .is_err()
        );
    }

    /// The FirstBurstLength answered is the one enforced, and never above MaxBurstLength (RFC
    /// 7143 §13.14), whatever the order of the two keys.
    #[test]
    fn first_burst_length_answered_is_the_one_enforced() {
        let answer = |n: &mut Negotiation, keys: &[(&str, &str)]| {
            let mut out = Vec::new();
            let t = text(keys);
            n.offer(&parse_keys(&t).unwrap(), false, &mut out)
                .map(|()| {
                    let a = parse_keys(&out).unwrap();
                    a.iter()
                        .find(|(k, _)| *k == "FirstBurstLength")
                        .map(|(_, v)| v.parse::<u32>().unwrap())
                })
        };
        // MaxBurstLength first: FirstBurstLength is answered within it.
        let mut n = Negotiation::default();
        let a = answer(
            &mut n,
            &[("MaxBurstLength", "16384"), ("FirstBurstLength", "65536")],
        );
        assert_eq!(a, Ok(Some(16384)));
        assert_eq!(n.params.first_burst, 16384);
        // FirstBurstLength first, a consistent MaxBurstLength after (same PDU, then a later one).
        let mut n = Negotiation::default();
        let a = answer(
            &mut n,
            &[("FirstBurstLength", "8192"), ("MaxBurstLength", "16384")],
        );
        assert_eq!(a, Ok(Some(8192)));
        assert_eq!((n.params.first_burst, n.params.max_burst), (8192, 16384));
        let mut n = Negotiation::default();
        assert_eq!(
            answer(&mut n, &[("FirstBurstLength", "65536")]),
            Ok(Some(65536))
        );
        assert_eq!(answer(&mut n, &[("MaxBurstLength", "65536")]), Ok(None));
        assert_eq!(n.params.first_burst, 65536);
        // An answered FirstBurstLength above the MaxBurstLength offered after it: the
        // initiator's own offers contradict each other; the login fails.
        let mut n = Negotiation::default();
        assert_eq!(
            answer(
                &mut n,
                &[("FirstBurstLength", "65536"), ("MaxBurstLength", "16384")],
            ),
            Err(LoginStatus::INITIATOR_ERROR)
        );
        let mut n = Negotiation::default();
        assert_eq!(
            answer(&mut n, &[("FirstBurstLength", "65536")]),
            Ok(Some(65536))
        );
        assert_eq!(
            answer(&mut n, &[("MaxBurstLength", "4096")]),
            Err(LoginStatus::INITIATOR_ERROR)
        );
        // FirstBurstLength not offered: the default (64 KiB) is kept within MaxBurstLength.
        let mut n = Negotiation::default();
        assert_eq!(answer(&mut n, &[("MaxBurstLength", "4096")]), Ok(None));
        assert_eq!(n.params.first_burst, 4096);
    }

    /// TaskReporting is a list key (RFC 7143 §13.23): the answer is the first value of the
    /// initiator's list the target supports (RFC3720 only), never a value it did not offer
    /// (§6.2.1: the originator takes that as a protocol error); none supported: `Reject`.
    #[test]
    fn task_reporting_answers_only_a_value_the_initiator_offered() {
        for (offer, want) in [
            ("RFC3720", "RFC3720"),
            ("FastAbort,RFC3720", "RFC3720"),
            ("ResponseFence,FastAbort", "Reject"),
            ("FastAbort", "Reject"),
        ] {
            let mut n = Negotiation::default();
            let mut out = Vec::new();
            let t = text(&[("TaskReporting", offer)]);
            n.offer(&parse_keys(&t).unwrap(), false, &mut out).unwrap();
            assert_eq!(
                parse_keys(&out).unwrap(),
                vec![("TaskReporting", want)],
                "{offer}"
            );
        }
    }

    /// RFC 7143 §6.1: a hex-constant is `0x` followed by one or more hex digits, so leading
    /// zeros make a valid value of any length; garbage, signs, an empty digit string and a
    /// value past the key's range are still refused.
    #[test]
    fn numbers_take_leading_zeros_and_refuse_garbage() {
        assert_eq!(number("0x0000000000040000", 512, 0xFF_FFFF), Some(0x40000));
        assert_eq!(number("0X00000000000000000000001", 0, 2), Some(1));
        assert_eq!(number("0000000000000262144", 512, 0xFF_FFFF), Some(262_144));
        assert_eq!(number("0", 0, 2), Some(0));
        assert_eq!(number("0x0", 0, 2), Some(0));
        for bad in ["", "0x", "+1", "-1", "1 ", "0x1g", "12x", "0x1_0", "1e3"] {
            assert_eq!(number(bad, 0, u32::MAX), None, "{bad:?}");
        }
        assert_eq!(number("0x1000000", 512, 0xFF_FFFF), None);
        assert_eq!(number("99999999999999999999999", 0, u32::MAX), None);
        assert_eq!(number("0x100000000", 0, u32::MAX), None);
        let mut n = Negotiation::default();
        let t = text(&[("MaxBurstLength", "0x0000000000010000")]);
        n.offer(&parse_keys(&t).unwrap(), false, &mut Vec::new())
            .unwrap();
        assert_eq!(n.params.max_burst, 65536);
    }

    #[test]
    fn a_malformed_burst_length_is_refused() {
        let mut out = Vec::new();
        let mut n = Negotiation::default();
        let bad = text(&[("MaxBurstLength", "12x")]);
        assert!(
            n.offer(&parse_keys(&bad).unwrap(), false, &mut out)
                .is_err()
        );
    }
}
