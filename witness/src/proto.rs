//! The witness wire protocol, version 1: pure encoding and decoding of datagrams and their MAC.
//!
//! `docs/witness-protocol.md` is the contract; this module implements exactly it.
//!
//! Model: one UDP datagram is one message: a 48-byte header, `count` fixed-size body entries
//! (HEARTBEAT and VIEW only) and a 16-byte MAC (HMAC-SHA256 with the shared key, truncated to
//! 16 bytes) over everything before it. Requests go site → witness, answers witness → site; an
//! answer echoes its request's `site` and `counter`.
//!
//! Invariants:
//! - [`decode`] never panics and never allocates more than `MAX_ENTRIES` entries, whatever the
//!   input; it checks the MAC before it interprets anything but the magic and version.
//! - What [`decode`] accepts, [`encode`] turns back into exactly the same bytes (every field is
//!   either represented in [`Msg`] or required to be 0), so there is one encoding per message.
//! - Replay protection (counters rising per site) is not a property of a datagram; the witness
//!   (`state`) and the client (`client`) enforce it.

use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Protocol version a witness of this build speaks.
pub const VERSION: u8 = 1;
/// `T B W T` read little-endian.
pub const MAGIC: u32 = 0x5457_4254;
/// Fixed header bytes before the body.
pub const HEADER_LEN: usize = 48;
/// Truncated HMAC-SHA256 length: 128 bits, half the output (RFC 2104 §5 allows it).
pub const MAC_LEN: usize = 16;
/// Smallest datagram: a header and a MAC.
pub const MIN_LEN: usize = HEADER_LEN + MAC_LEN;
/// Entries per HEARTBEAT/VIEW: chosen so the largest VIEW (1408 bytes) fits a 1500-byte
/// Ethernet MTU with IPv6 and UDP headers, so no datagram is ever fragmented on a WAN.
pub const MAX_ENTRIES: usize = 56;
/// Bytes of a HEARTBEAT entry: `group u64 | flags u32`.
pub const CLAIM_LEN: usize = 12;
/// Bytes of a VIEW entry: `group u64 | epoch u64 | holder u32 | preferred u32`.
pub const VIEW_LEN: usize = 24;
/// Largest datagram (a full VIEW).
pub const MAX_LEN: usize = MIN_LEN + MAX_ENTRIES * VIEW_LEN;
/// Header/entry flag: the sender is the group's preferred site.
pub const FLAG_PREFERRED: u8 = 1;
/// RELEASE flag: the grant given back was never served on (docs/witness-protocol.md, "An
/// unused release"). An older witness drops a RELEASE with it (a flag the type does not allow).
pub const FLAG_UNUSED: u8 = 2;
/// GRANT_REQUEST flag: the sender serves alone on its grant of the group at the request's
/// epoch, which the witness's word no longer shows (docs/witness-protocol.md, "A witness
/// that forgot a grant"). An older witness drops a GRANT_REQUEST with it.
pub const FLAG_HOLDS: u8 = 4;
/// Shortest accepted key, in bytes.
pub const MIN_KEY_LEN: usize = 16;
/// Longest accepted key, in bytes (a key file larger than this is a mistake, not a key).
pub const MAX_KEY_LEN: usize = 1024;

const T_HEARTBEAT: u8 = 0x01;
const T_GRANT_REQUEST: u8 = 0x02;
const T_RELEASE: u8 = 0x03;
const T_VIEW: u8 = 0x81;
const T_GRANT: u8 = 0x82;
const T_DENY: u8 = 0x83;
const T_STATE: u8 = 0x84;
const T_BEHIND: u8 = 0x85;

/// A site's id: never 0 (0 means "no site" on the wire).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SiteId(NonZeroU32);

impl SiteId {
    /// `None` for 0.
    pub fn new(id: u32) -> Option<Self> {
        NonZeroU32::new(id).map(SiteId)
    }
    pub fn get(self) -> u32 {
        self.0.get()
    }
    fn wire(site: Option<SiteId>) -> u32 {
        site.map_or(0, SiteId::get)
    }
}

impl fmt::Debug for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "site{}", self.get())
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// A volume group's id (any u64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The id of a named group: the first 8 bytes of SHA-256(name), little-endian. Both sites
    /// and the witness get the same id from the same name.
    pub fn from_name(name: &str) -> Self {
        let d = Sha256::digest(name.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        GroupId(u64::from_le_bytes(b))
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// A group's epoch: 0 before its first grant, +1 per grant, never down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

/// The shared key, kept as a keyed HMAC state (the key's padding is hashed once).
#[derive(Clone)]
pub struct Key {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading key file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key is {0} bytes; at least {MIN_KEY_LEN} are required")]
    TooShort(usize),
    #[error("key is {0} bytes; at most {MAX_KEY_LEN} are accepted")]
    TooLong(usize),
}

impl Key {
    /// A key from its bytes (16 ..= 1024 of them).
    pub fn new(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort(bytes.len()));
        }
        if bytes.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong(bytes.len()));
        }
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(bytes)
            .map_err(|_| KeyError::TooShort(bytes.len()))?;
        Ok(Key { mac })
    }

    /// The key in a key file: its bytes with trailing ASCII whitespace removed.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        use std::io::Read;
        let read_err = |source| KeyError::Read {
            path: path.display().to_string(),
            source,
        };
        let f = std::fs::File::open(path).map_err(read_err)?;
        let mut raw = Vec::new();
        // Read at most one byte more than a key can be, so a huge file is refused cheaply.
        f.take(MAX_KEY_LEN as u64 + 64)
            .read_to_end(&mut raw)
            .map_err(read_err)?;
        let end = raw
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Key::new(&raw[..end])
    }

    /// The full HMAC-SHA256 of `data` under this key (for other protocols sharing the key,
    /// such as the mirror link's handshake; they prefix their own context string).
    pub fn mac256(&self, data: &[u8]) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is the full HMAC-SHA256 of `data` (constant-time comparison).
    pub fn verify256(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut m = self.mac.clone();
        m.update(data);
        m.verify_slice(tag).is_ok()
    }

    fn tag(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.mac.clone();
        m.update(data);
        let full = m.finalize().into_bytes();
        let mut t = [0u8; MAC_LEN];
        t.copy_from_slice(&full[..MAC_LEN]);
        t
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut m = self.mac.clone();
        m.update(data);
        // Constant-time comparison of the leftmost `tag.len()` bytes.
        m.verify_truncated_left(tag).is_ok()
    }
}

/// A HEARTBEAT entry: a group the site serves and whether it is that group's preferred site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub group: GroupId,
    pub preferred: bool,
}

/// The witness's view of one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub group: GroupId,
    pub epoch: Epoch,
    pub holder: Option<SiteId>,
    pub preferred: Option<SiteId>,
}

/// Why a GRANT_REQUEST was denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// Another site holds the group.
    Held,
    /// No holder, but the preferred site has the right of way a while longer.
    TieWait,
    /// The requester's known epoch is below the group's: its replica is older.
    Stale,
    /// The group is not recorded and the witness records no more groups.
    Full,
}

impl DenyReason {
    fn code(self) -> u8 {
        match self {
            DenyReason::Held => 1,
            DenyReason::TieWait => 2,
            DenyReason::Stale => 3,
            DenyReason::Full => 5,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(DenyReason::Held),
            2 => Some(DenyReason::TieWait),
            3 => Some(DenyReason::Stale),
            5 => Some(DenyReason::Full),
            _ => None,
        }
    }
}

/// The result of a RELEASE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseStatus {
    /// Released, or already released at that epoch.
    Ok,
    /// The sender did not hold the group at that epoch; nothing changed.
    NotHolder,
}

impl ReleaseStatus {
    fn code(self) -> u8 {
        match self {
            ReleaseStatus::Ok => 0,
            ReleaseStatus::NotHolder => 4,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(ReleaseStatus::Ok),
            4 => Some(ReleaseStatus::NotHolder),
            _ => None,
        }
    }
}

/// What a message says, by type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// site → witness: liveness, and the groups the site serves (0 ..= 56).
    Heartbeat { claims: Vec<Claim> },
    /// site → witness: make me the survivor of `group`; `holds` (flag `HOLDS`): I serve
    /// alone on my grant of it at `known`, which the witness's word no longer shows.
    GrantRequest {
        group: GroupId,
        known: Epoch,
        preferred: bool,
        holds: bool,
    },
    /// site → witness: I give back my grant of `group` at `epoch`; `unused`: no write was
    /// ever acknowledged on it (flag `UNUSED`).
    Release {
        group: GroupId,
        epoch: Epoch,
        unused: bool,
    },
    /// witness → site: answers HEARTBEAT, one view per claim, same order.
    View { views: Vec<GroupView> },
    /// witness → site: the requester holds the group at `view.epoch`.
    Grant { view: GroupView },
    /// witness → site: not granted; `wait_ms` is set (≥ 1) only for `TieWait`.
    Deny {
        reason: DenyReason,
        view: GroupView,
        wait_ms: u32,
    },
    /// witness → site: answers RELEASE with the group's new state.
    State {
        status: ReleaseStatus,
        view: GroupView,
    },
    /// witness → site: answers any request whose counter is not above `highest`, the highest
    /// accepted from the site; nothing was done.
    Behind { highest: u64 },
}

impl Body {
    /// Whether this is a site → witness message.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Body::Heartbeat { .. } | Body::GrantRequest { .. } | Body::Release { .. }
        )
    }
}

/// One datagram's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    /// The requesting site (echoed in answers).
    pub site: SiteId,
    /// The request's counter (echoed in answers).
    pub counter: u64,
    pub body: Body,
}

/// Why a datagram was refused. Plain data: no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram of {0} bytes is shorter than {MIN_LEN}")]
    TooShort(usize),
    #[error("datagram of {0} bytes is longer than {MAX_LEN}")]
    TooLong(usize),
    #[error("bad magic")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("bad MAC")]
    Mac,
    #[error("unknown message type {0:#04x}")]
    Type(u8),
    #[error("message type {0:#04x} not accepted in this direction")]
    Direction(u8),
    #[error("flags {0:#04x} not allowed")]
    Flags(u8),
    #[error("reason {0} not allowed")]
    Reason(u8),
    #[error("site id 0")]
    Site,
    #[error("field {0} must be 0")]
    NotZero(&'static str),
    #[error("field {0} out of range")]
    Range(&'static str),
    #[error("length does not match the entry count")]
    Length,
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0} entries; at most {MAX_ENTRIES} fit a datagram")]
    TooManyEntries(usize),
}

/// Header fields in wire form.
#[derive(Default)]
struct Raw {
    ty: u8,
    flags: u8,
    reason: u8,
    site: u32,
    holder: u32,
    counter: u64,
    group: u64,
    epoch: u64,
    preferred: u32,
    aux: u32,
}

fn view_fields(r: &mut Raw, v: &GroupView) {
    r.group = v.group.0;
    r.epoch = v.epoch.0;
    r.holder = SiteId::wire(v.holder);
    r.preferred = SiteId::wire(v.preferred);
}

/// Appends `msg`, sealed with `key`, to `out` (which is cleared first).
pub fn encode(out: &mut Vec<u8>, msg: &Msg, key: &Key) -> Result<(), EncodeError> {
    let mut r = Raw {
        site: msg.site.get(),
        counter: msg.counter,
        ..Raw::default()
    };
    out.clear();
    let mut body = [0u8; MAX_ENTRIES * VIEW_LEN];
    let mut blen = 0;
    match &msg.body {
        Body::Heartbeat { claims } => {
            if claims.len() > MAX_ENTRIES {
                return Err(EncodeError::TooManyEntries(claims.len()));
            }
            r.ty = T_HEARTBEAT;
            r.aux = claims.len() as u32;
            for c in claims {
                body[blen..blen + 8].copy_from_slice(&c.group.0.to_le_bytes());
                let fl = if c.preferred {
                    FLAG_PREFERRED as u32
                } else {
                    0
                };
                body[blen + 8..blen + 12].copy_from_slice(&fl.to_le_bytes());
                blen += CLAIM_LEN;
            }
        }
        Body::GrantRequest {
            group,
            known,
            preferred,
            holds,
        } => {
            r.ty = T_GRANT_REQUEST;
            r.group = group.0;
            r.epoch = known.0;
            r.flags =
                if *preferred { FLAG_PREFERRED } else { 0 } | if *holds { FLAG_HOLDS } else { 0 };
        }
        Body::Release {
            group,
            epoch,
            unused,
        } => {
            r.ty = T_RELEASE;
            r.group = group.0;
            r.epoch = epoch.0;
            r.flags = if *unused { FLAG_UNUSED } else { 0 };
        }
        Body::View { views } => {
            if views.len() > MAX_ENTRIES {
                return Err(EncodeError::TooManyEntries(views.len()));
            }
            r.ty = T_VIEW;
            r.aux = views.len() as u32;
            for v in views {
                body[blen..blen + 8].copy_from_slice(&v.group.0.to_le_bytes());
                body[blen + 8..blen + 16].copy_from_slice(&v.epoch.0.to_le_bytes());
                body[blen + 16..blen + 20].copy_from_slice(&SiteId::wire(v.holder).to_le_bytes());
                body[blen + 20..blen + 24]
                    .copy_from_slice(&SiteId::wire(v.preferred).to_le_bytes());
                blen += VIEW_LEN;
            }
        }
        Body::Grant { view } => {
            r.ty = T_GRANT;
            view_fields(&mut r, view);
        }
        Body::Deny {
            reason,
            view,
            wait_ms,
        } => {
            r.ty = T_DENY;
            r.reason = reason.code();
            r.aux = *wait_ms;
            view_fields(&mut r, view);
        }
        Body::State { status, view } => {
            r.ty = T_STATE;
            r.reason = status.code();
            view_fields(&mut r, view);
        }
        Body::Behind { highest } => {
            r.ty = T_BEHIND;
            r.epoch = *highest;
        }
    }
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(VERSION);
    out.push(r.ty);
    out.push(r.flags);
    out.push(r.reason);
    out.extend_from_slice(&r.site.to_le_bytes());
    out.extend_from_slice(&r.holder.to_le_bytes());
    out.extend_from_slice(&r.counter.to_le_bytes());
    out.extend_from_slice(&r.group.to_le_bytes());
    out.extend_from_slice(&r.epoch.to_le_bytes());
    out.extend_from_slice(&r.preferred.to_le_bytes());
    out.extend_from_slice(&r.aux.to_le_bytes());
    out.extend_from_slice(&body[..blen]);
    let tag = key.tag(out);
    out.extend_from_slice(&tag);
    Ok(())
}

/// Little-endian reads at fixed offsets of a slice already known to be long enough; a short
/// slice reads as zeros rather than panicking (it cannot happen after the length checks).
fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn zero(v: u64, name: &'static str) -> Result<(), DecodeError> {
    if v == 0 {
        Ok(())
    } else {
        Err(DecodeError::NotZero(name))
    }
}

/// Decodes and authenticates one datagram of either direction.
pub fn decode(buf: &[u8], key: &Key) -> Result<Msg, DecodeError> {
    if buf.len() < MIN_LEN {
        return Err(DecodeError::TooShort(buf.len()));
    }
    if buf.len() > MAX_LEN {
        return Err(DecodeError::TooLong(buf.len()));
    }
    if u32_at(buf, 0) != MAGIC {
        return Err(DecodeError::Magic);
    }
    let version = buf[4];
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let (signed, tag) = buf.split_at(buf.len() - MAC_LEN);
    if !key.verify(signed, tag) {
        return Err(DecodeError::Mac);
    }
    let r = Raw {
        ty: buf[5],
        flags: buf[6],
        reason: buf[7],
        site: u32_at(buf, 8),
        holder: u32_at(buf, 12),
        counter: u64_at(buf, 16),
        group: u64_at(buf, 24),
        epoch: u64_at(buf, 32),
        preferred: u32_at(buf, 40),
        aux: u32_at(buf, 44),
    };
    let body_bytes = &signed[HEADER_LEN..];
    if !matches!(
        r.ty,
        T_HEARTBEAT | T_GRANT_REQUEST | T_RELEASE | T_VIEW | T_GRANT | T_DENY | T_STATE | T_BEHIND
    ) {
        return Err(DecodeError::Type(r.ty));
    }
    let allowed_flags = match r.ty {
        T_GRANT_REQUEST => FLAG_PREFERRED | FLAG_HOLDS,
        T_RELEASE => FLAG_UNUSED,
        _ => 0,
    };
    if r.flags & !allowed_flags != 0 {
        return Err(DecodeError::Flags(r.flags));
    }
    let site = SiteId::new(r.site).ok_or(DecodeError::Site)?;
    let entries = |len: usize| -> Result<usize, DecodeError> {
        let n = r.aux as usize;
        if n > MAX_ENTRIES {
            return Err(DecodeError::Range("count"));
        }
        if body_bytes.len() != n * len {
            return Err(DecodeError::Length);
        }
        Ok(n)
    };
    let no_body = || {
        if body_bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Length)
        }
    };
    let view = GroupView {
        group: GroupId(r.group),
        epoch: Epoch(r.epoch),
        holder: SiteId::new(r.holder),
        preferred: SiteId::new(r.preferred),
    };
    let request_zeros = |r: &Raw| -> Result<(), DecodeError> {
        if r.reason != 0 {
            return Err(DecodeError::Reason(r.reason));
        }
        zero(r.holder.into(), "holder")?;
        zero(r.preferred.into(), "preferred")
    };
    let body = match r.ty {
        T_HEARTBEAT => {
            request_zeros(&r)?;
            zero(r.group, "group")?;
            zero(r.epoch, "epoch")?;
            let n = entries(CLAIM_LEN)?;
            let mut claims = Vec::with_capacity(n);
            for e in body_bytes.chunks_exact(CLAIM_LEN) {
                let fl = u32_at(e, 8);
                if fl & !(FLAG_PREFERRED as u32) != 0 {
                    return Err(DecodeError::Range("entry flags"));
                }
                claims.push(Claim {
                    group: GroupId(u64_at(e, 0)),
                    preferred: fl != 0,
                });
            }
            Body::Heartbeat { claims }
        }
        T_GRANT_REQUEST => {
            request_zeros(&r)?;
            zero(r.aux.into(), "aux")?;
            no_body()?;
            Body::GrantRequest {
                group: GroupId(r.group),
                known: Epoch(r.epoch),
                preferred: r.flags & FLAG_PREFERRED != 0,
                holds: r.flags & FLAG_HOLDS != 0,
            }
        }
        T_RELEASE => {
            request_zeros(&r)?;
            zero(r.aux.into(), "aux")?;
            no_body()?;
            Body::Release {
                group: GroupId(r.group),
                epoch: Epoch(r.epoch),
                unused: r.flags & FLAG_UNUSED != 0,
            }
        }
        T_VIEW => {
            if r.reason != 0 {
                return Err(DecodeError::Reason(r.reason));
            }
            zero(r.holder.into(), "holder")?;
            zero(r.preferred.into(), "preferred")?;
            zero(r.group, "group")?;
            zero(r.epoch, "epoch")?;
            let n = entries(VIEW_LEN)?;
            let mut views = Vec::with_capacity(n);
            for e in body_bytes.chunks_exact(VIEW_LEN) {
                views.push(GroupView {
                    group: GroupId(u64_at(e, 0)),
                    epoch: Epoch(u64_at(e, 8)),
                    holder: SiteId::new(u32_at(e, 16)),
                    preferred: SiteId::new(u32_at(e, 20)),
                });
            }
            Body::View { views }
        }
        T_GRANT => {
            if r.reason != 0 {
                return Err(DecodeError::Reason(r.reason));
            }
            zero(r.aux.into(), "aux")?;
            no_body()?;
            // A grant names the requester as holder, at an epoch a grant can have.
            if view.holder != Some(site) {
                return Err(DecodeError::Range("holder"));
            }
            if r.epoch == 0 {
                return Err(DecodeError::Range("epoch"));
            }
            Body::Grant { view }
        }
        T_DENY => {
            let reason = DenyReason::from_code(r.reason).ok_or(DecodeError::Reason(r.reason))?;
            no_body()?;
            match reason {
                DenyReason::TieWait if r.aux == 0 => return Err(DecodeError::Range("aux")),
                DenyReason::TieWait => {}
                _ => zero(r.aux.into(), "aux")?,
            }
            if reason == DenyReason::Held && (view.holder.is_none() || view.holder == Some(site)) {
                return Err(DecodeError::Range("holder"));
            }
            Body::Deny {
                reason,
                view,
                wait_ms: r.aux,
            }
        }
        T_STATE => {
            let status = ReleaseStatus::from_code(r.reason).ok_or(DecodeError::Reason(r.reason))?;
            zero(r.aux.into(), "aux")?;
            no_body()?;
            Body::State { status, view }
        }
        T_BEHIND => {
            if r.reason != 0 {
                return Err(DecodeError::Reason(r.reason));
            }
            zero(r.holder.into(), "holder")?;
            zero(r.preferred.into(), "preferred")?;
            zero(r.group, "group")?;
            zero(r.aux.into(), "aux")?;
            no_body()?;
            Body::Behind { highest: r.epoch }
        }
        other => return Err(DecodeError::Type(other)),
    };
    Ok(Msg {
        site,
        counter: r.counter,
        body,
    })
}

/// [`decode`], accepting only site → witness messages (what the witness reads).
pub fn decode_request(buf: &[u8], key: &Key) -> Result<Msg, DecodeError> {
    let m = decode(buf, key)?;
    if m.body.is_request() {
        Ok(m)
    } else {
        Err(DecodeError::Direction(buf[5]))
    }
}

/// [`decode`], accepting only witness → site messages (what a site reads).
pub fn decode_answer(buf: &[u8], key: &Key) -> Result<Msg, DecodeError> {
    let m = decode(buf, key)?;
    if m.body.is_request() {
        Err(DecodeError::Direction(buf[5]))
    } else {
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new(b"0123456789abcdef-test-key").expect("key")
    }

    fn site(n: u32) -> SiteId {
        SiteId::new(n).expect("nonzero")
    }

    fn view(holder: u32, preferred: u32) -> GroupView {
        GroupView {
            group: GroupId(0xDEAD_BEEF_0000_0001),
            epoch: Epoch(7),
            holder: SiteId::new(holder),
            preferred: SiteId::new(preferred),
        }
    }

    /// One message of every type and shape.
    fn samples() -> Vec<Msg> {
        let claims = (0..MAX_ENTRIES as u64)
            .map(|i| Claim {
                group: GroupId(i * 77),
                preferred: i % 3 == 0,
            })
            .collect();
        let views = (0..MAX_ENTRIES as u64)
            .map(|i| GroupView {
                group: GroupId(i),
                epoch: Epoch(i * 2),
                holder: SiteId::new((i % 3) as u32),
                preferred: SiteId::new((i % 2) as u32),
            })
            .collect();
        let bodies = vec![
            Body::Heartbeat { claims: vec![] },
            Body::Heartbeat { claims },
            Body::GrantRequest {
                group: GroupId(5),
                known: Epoch(3),
                preferred: true,
                holds: false,
            },
            Body::GrantRequest {
                group: GroupId(u64::MAX),
                known: Epoch(0),
                preferred: false,
                holds: false,
            },
            Body::Release {
                group: GroupId(5),
                epoch: Epoch(4),
                unused: false,
            },
            Body::Release {
                group: GroupId(5),
                epoch: Epoch(4),
                unused: true,
            },
            Body::View { views: vec![] },
            Body::View { views },
            Body::Grant { view: view(1, 2) },
            Body::Deny {
                reason: DenyReason::Held,
                view: view(2, 2),
                wait_ms: 0,
            },
            Body::Deny {
                reason: DenyReason::TieWait,
                view: view(0, 2),
                wait_ms: 250,
            },
            Body::Deny {
                reason: DenyReason::Stale,
                view: view(0, 0),
                wait_ms: 0,
            },
            Body::State {
                status: ReleaseStatus::Ok,
                view: view(0, 1),
            },
            Body::State {
                status: ReleaseStatus::NotHolder,
                view: view(2, 1),
            },
            Body::Deny {
                reason: DenyReason::Full,
                view: view(0, 0),
                wait_ms: 0,
            },
            Body::Behind { highest: 0 },
            Body::Behind { highest: u64::MAX },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Msg {
                site: site(1),
                counter: 1_700_000_000_000_000_000 + i as u64,
                body,
            })
            .collect()
    }

    #[test]
    fn every_type_round_trips_with_documented_sizes() {
        let k = key();
        let mut buf = Vec::new();
        for m in samples() {
            encode(&mut buf, &m, &k).expect("encode");
            let expect_len = match &m.body {
                Body::Heartbeat { claims } => MIN_LEN + claims.len() * CLAIM_LEN,
                Body::View { views } => MIN_LEN + views.len() * VIEW_LEN,
                _ => MIN_LEN,
            };
            assert_eq!(buf.len(), expect_len, "{m:?}");
            assert!(buf.len() <= MAX_LEN);
            assert_eq!(decode(&buf, &k), Ok(m.clone()));
            if m.body.is_request() {
                assert_eq!(decode_request(&buf, &k), Ok(m.clone()));
                assert!(matches!(
                    decode_answer(&buf, &k),
                    Err(DecodeError::Direction(_))
                ));
            } else {
                assert_eq!(decode_answer(&buf, &k), Ok(m.clone()));
                assert!(matches!(
                    decode_request(&buf, &k),
                    Err(DecodeError::Direction(_))
                ));
            }
        }
        assert_eq!(MAX_LEN, 1408);
    }

    #[test]
    fn header_layout_is_the_documented_one() {
        let m = Msg {
            site: site(0x0102_0304),
            counter: 0x1112_1314_1516_1718,
            body: Body::GrantRequest {
                group: GroupId(0x2122_2324_2526_2728),
                known: Epoch(0x3132_3334_3536_3738),
                preferred: true,
                holds: false,
            },
        };
        let mut b = Vec::new();
        encode(&mut b, &m, &key()).expect("encode");
        assert_eq!(&b[0..4], b"TBWT");
        assert_eq!(b[4], 1);
        assert_eq!(b[5], 0x02);
        assert_eq!(b[6], 1);
        assert_eq!(b[7], 0);
        assert_eq!(&b[8..12], &[4, 3, 2, 1]);
        assert_eq!(&b[16..24], &0x1112_1314_1516_1718u64.to_le_bytes());
        assert_eq!(&b[24..32], &0x2122_2324_2526_2728u64.to_le_bytes());
        assert_eq!(&b[32..40], &0x3132_3334_3536_3738u64.to_le_bytes());
        // The MAC is HMAC-SHA256 over bytes 0..48, first 16 bytes.
        let mut h =
            <Hmac<Sha256> as Mac>::new_from_slice(b"0123456789abcdef-test-key").expect("hmac");
        h.update(&b[..48]);
        assert_eq!(&b[48..64], &h.finalize().into_bytes()[..16]);
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let k = key();
        let mut buf = Vec::new();
        for m in samples() {
            encode(&mut buf, &m, &k).expect("encode");
            for i in 0..buf.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bad = buf.clone();
                    bad[i] ^= bit;
                    assert!(decode(&bad, &k).is_err(), "byte {i} bit {bit:#x} of {m:?}");
                }
            }
        }
    }

    #[test]
    fn wrong_key_truncation_and_extension_are_rejected() {
        let k = key();
        let other = Key::new(b"0123456789abcdef-test-kez").expect("key");
        let mut buf = Vec::new();
        for m in samples() {
            encode(&mut buf, &m, &k).expect("encode");
            assert_eq!(decode(&buf, &other), Err(DecodeError::Mac));
            for n in 0..buf.len() {
                assert!(decode(&buf[..n], &k).is_err(), "truncated to {n}");
            }
            let mut longer = buf.clone();
            longer.push(0);
            assert!(decode(&longer, &k).is_err());
        }
    }

    #[test]
    fn forged_fields_with_a_valid_mac_are_rejected() {
        // Someone holding the key but writing nonsense: the structural checks still hold.
        let k = key();
        let mut buf = Vec::new();
        let reseal = |b: &mut Vec<u8>| {
            b.truncate(b.len() - MAC_LEN);
            let t = k.tag(b);
            b.extend_from_slice(&t);
        };
        let grant_req = &samples()[2];
        let cases: &[(usize, u8, DecodeError)] = &[
            (5, 0x7f, DecodeError::Type(0x7f)),
            (6, 0x02, DecodeError::Flags(0x02)),
            (7, 0x01, DecodeError::Reason(0x01)),
            (12, 0x01, DecodeError::NotZero("holder")),
            (44, 0x01, DecodeError::NotZero("aux")),
        ];
        for (at, val, err) in cases {
            encode(&mut buf, grant_req, &k).expect("encode");
            buf[*at] = *val;
            reseal(&mut buf);
            assert_eq!(decode(&buf, &k), Err(*err));
        }
        encode(&mut buf, grant_req, &k).expect("encode");
        buf[8..12].copy_from_slice(&[0; 4]);
        reseal(&mut buf);
        assert_eq!(decode(&buf, &k), Err(DecodeError::Site));
        // A heartbeat whose count lies about its body.
        encode(&mut buf, &samples()[1], &k).expect("encode");
        buf[44] = 55;
        reseal(&mut buf);
        assert_eq!(decode(&buf, &k), Err(DecodeError::Length));
    }

    #[test]
    fn the_holds_flag_is_bit_2_of_a_grant_request_only() {
        // docs/witness-protocol.md, "A witness that forgot a grant": byte 6 bit 2, GRANT_REQUEST
        // only, beside PREFERRED.
        let k = key();
        let mut buf = Vec::new();
        let reseal = |b: &mut Vec<u8>| {
            b.truncate(b.len() - MAC_LEN);
            let t = k.tag(b);
            b.extend_from_slice(&t);
        };
        let ask = |preferred, holds| Msg {
            site: site(1),
            counter: 9,
            body: Body::GrantRequest {
                group: GroupId(5),
                known: Epoch(4),
                preferred,
                holds,
            },
        };
        for (p, h, byte) in [(false, true, 4), (true, true, 5), (true, false, 1)] {
            encode(&mut buf, &ask(p, h), &k).expect("encode");
            assert_eq!((buf[5], buf[6]), (0x02, byte));
            assert_eq!(decode(&buf, &k), Ok(ask(p, h)));
        }
        // On a release or a heartbeat: refused.
        for m in [&samples()[0], &samples()[4]] {
            encode(&mut buf, m, &k).expect("encode");
            buf[6] |= FLAG_HOLDS;
            reseal(&mut buf);
            assert!(
                matches!(decode(&buf, &k), Err(DecodeError::Flags(_))),
                "{m:?}"
            );
        }
    }

    #[test]
    fn the_unused_flag_is_bit_1_of_a_release_only() {
        // docs/witness-protocol.md, "An unused release": byte 6 bit 1, RELEASE only.
        let k = key();
        let mut buf = Vec::new();
        let reseal = |b: &mut Vec<u8>| {
            b.truncate(b.len() - MAC_LEN);
            let t = k.tag(b);
            b.extend_from_slice(&t);
        };
        let release = |unused| Msg {
            site: site(1),
            counter: 9,
            body: Body::Release {
                group: GroupId(5),
                epoch: Epoch(4),
                unused,
            },
        };
        encode(&mut buf, &release(true), &k).expect("encode");
        assert_eq!((buf[5], buf[6]), (0x03, 0x02));
        encode(&mut buf, &release(false), &k).expect("encode");
        assert_eq!(buf[6], 0);
        // PREFERRED on a release, UNUSED on a grant request or a heartbeat: refused (an older
        // witness refuses UNUSED on a release the same way: no answer).
        buf[6] = FLAG_PREFERRED;
        reseal(&mut buf);
        assert_eq!(decode(&buf, &k), Err(DecodeError::Flags(FLAG_PREFERRED)));
        for m in [&samples()[0], &samples()[2]] {
            encode(&mut buf, m, &k).expect("encode");
            buf[6] |= FLAG_UNUSED;
            reseal(&mut buf);
            assert!(
                matches!(decode(&buf, &k), Err(DecodeError::Flags(_))),
                "{m:?}"
            );
        }
    }

    #[test]
    fn keys_shorter_than_16_bytes_are_refused() {
        assert!(matches!(Key::new(b"short"), Err(KeyError::TooShort(5))));
        assert!(Key::new(&[7u8; 16]).is_ok());
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k");
        std::fs::write(&p, b"0123456789abcde\n\n").expect("write");
        assert!(matches!(Key::from_file(&p), Err(KeyError::TooShort(15))));
        std::fs::write(&p, b"0123456789abcdef\n").expect("write");
        let a = Key::from_file(&p).expect("key");
        let b = Key::new(b"0123456789abcdef").expect("key");
        assert_eq!(
            a.tag(b"x"),
            b.tag(b"x"),
            "trailing newline is not part of the key"
        );
    }

    #[test]
    fn group_names_hash_to_stable_ids() {
        assert_eq!(GroupId::from_name("vg-a"), GroupId::from_name("vg-a"));
        assert_ne!(GroupId::from_name("vg-a"), GroupId::from_name("vg-b"));
    }
}
