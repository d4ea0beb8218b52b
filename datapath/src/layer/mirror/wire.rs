//! The mirror link's wire format (docs/mirror-protocol.md, version 7): a 40-byte header and a
//! payload per message, CRC32C over both, and the link's authentication handshake (HELLO,
//! WELCOME, AUTH: the payloads and the HMAC proofs over the handshake's transcript).
//!
//! Model: pure functions. [`decode`] looks at the front of a receive buffer and says whether a
//! whole, well-formed message is there ([`Decoded::Msg`]), more bytes are needed
//! ([`Decoded::Partial`]), or the stream is bad ([`Decoded::Bad`], with the reason to log).
//! [`encode`] appends one message to a send buffer.
//!
//! Invariants: `decode` never reads past the buffer and never trusts `len` before checking it
//! against [`MAX_PAYLOAD`]; a message is returned only when its checksum matched, its type is
//! known, its flags are allowed and its length is what its type permits. Range and sequence
//! checks need the volume and the session, so they are the engine's (`engine.rs`).

use twinblk_witness::Key;

/// `W R M T` on the wire.
pub const MAGIC: u32 = 0x544D_5257;
/// Protocol version (2: the handshake is authenticated; 3: the resync target confirms
/// RESYNC_DONE with RESYNC_DONE_ACK; 4: metadata payloads start with their kind byte; 5: the
/// leadership term in HELLO/WELCOME and SWITCH, SWITCH_ACK, SWITCH_ASK, and the SPC-2 RESERVE
/// holder in SCSI reservation states; 6: the relative target port id in SCSI reservation
/// commands and, per registrant, in their states; 7: RESYNC_DONE carries the source's grant
/// epoch).
pub const VERSION: u8 = 7;
/// Bytes of a handshake nonce.
pub const NONCE: usize = 32;
/// Bytes of a handshake proof (HMAC-SHA256).
pub const PROOF: usize = 32;
/// Longest volume name in a HELLO.
pub const MAX_NAME: usize = 255;
/// Header bytes.
pub const HEADER: usize = 40;
/// Largest payload.
pub const MAX_PAYLOAD: u32 = 8 << 20;
/// FUA flag bit.
pub const FLAG_FUA: u16 = 1;
/// WRITE/ZEROES/UNMAP flag: a re-send of a forwarded update from an earlier session; `id` is
/// the forward's.
pub const FLAG_RESENT: u16 = 2;

/// Message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Type {
    /// Follower opens a session.
    Hello = 1,
    /// Leader accepts it.
    Welcome = 2,
    /// Leader refuses it.
    Refuse = 3,
    /// Sequenced write with data.
    Write = 4,
    /// Sequenced write-zeroes.
    Zeroes = 5,
    /// Sequenced unmap.
    Unmap = 6,
    /// A forwarded request got a sequence number.
    Order = 7,
    /// Applied watermark.
    Ack = 8,
    /// Forwarded write with data.
    FwdWrite = 9,
    /// Forwarded write-zeroes.
    FwdZeroes = 10,
    /// Forwarded unmap.
    FwdUnmap = 11,
    /// Flush request.
    Flush = 12,
    /// Flush answer.
    FlushDone = 13,
    /// Liveness and round-trip probe (seq carries the sender's clock).
    Ping = 14,
    /// Answer to a ping (same seq).
    Pong = 15,
    /// Resync copy of a region, from the survivor to the returning site.
    Resync = 16,
    /// The resync is complete; mirroring resumes with the next message.
    ResyncDone = 17,
    /// Forwarded compare-and-write: compare data, then write data.
    FwdCaw = 18,
    /// The leader's answer to a forwarded compare-and-write that did not match.
    Miscompare = 19,
    /// A volume metadata command (reservations) for the leader to decide.
    Meta = 20,
    /// A metadata state to install (and a command's status).
    MetaState = 21,
    /// A metadata state was installed.
    MetaAck = 22,
    /// Resync target to source: regions the target may hold that the source must copy too
    /// (`count` ranges of `offset u64, length u64`); `count` 0 ends the list.
    ResyncAlso = 23,
    /// The leader's re-sends for the session are all sent.
    Resent = 25,
    /// The follower's half of the handshake (its proof of the key).
    Auth = 26,
    /// Resync target to source: RESYNC_DONE came and every copy is applied; the source stays
    /// the survivor (grant and state kept, copies of the attempt redone if lost) until this.
    ResyncDoneAck = 27,
    /// Leader to follower, drained: the receiver leads from now (`offset` = the new term,
    /// `seq` = the last seq given).
    Switch = 28,
    /// New leader to old leader: the new term (`offset`) is on disk; sequencing resumes.
    SwitchAck = 29,
    /// Follower to leader: an operator asked this site to lead (`offset` = its term).
    SwitchAsk = 30,
}

/// `id` of a META_STATE that answers no META.
pub const META_NO_ID: u32 = u32::MAX;
/// Largest META payload.
pub const MAX_META: u32 = 4096;
/// Largest META_STATE payload.
pub const MAX_META_STATE: u32 = 65536;
/// Most ranges in one RESYNC_ALSO.
pub const MAX_RESYNC_ALSO: u32 = 4096;
/// Bytes of one RESYNC_ALSO range (`offset u64, length u64`).
pub const RANGE: usize = 16;

impl Type {
    fn from_u8(v: u8) -> Option<Self> {
        use Type::*;
        Some(match v {
            1 => Hello,
            2 => Welcome,
            3 => Refuse,
            4 => Write,
            5 => Zeroes,
            6 => Unmap,
            7 => Order,
            8 => Ack,
            9 => FwdWrite,
            10 => FwdZeroes,
            11 => FwdUnmap,
            12 => Flush,
            13 => FlushDone,
            14 => Ping,
            15 => Pong,
            16 => Resync,
            17 => ResyncDone,
            18 => FwdCaw,
            19 => Miscompare,
            20 => Meta,
            21 => MetaState,
            22 => MetaAck,
            23 => ResyncAlso,
            25 => Resent,
            26 => Auth,
            27 => ResyncDoneAck,
            28 => Switch,
            29 => SwitchAck,
            30 => SwitchAsk,
            _ => return None,
        })
    }

    /// Updates carry an offset and a count (and data for writes).
    pub fn is_update(self) -> bool {
        use Type::*;
        matches!(
            self,
            Write | Zeroes | Unmap | FwdWrite | FwdZeroes | FwdUnmap | FwdCaw
        )
    }

    /// Which payload lengths the type allows, and which flags.
    fn allows(self, len: u32, count: u32, flags: u16) -> bool {
        use Type::*;
        let flags_ok = if matches!(self, Write | Zeroes | Unmap) {
            flags & !(FLAG_FUA | FLAG_RESENT) == 0
        } else if self.is_update() {
            flags & !FLAG_FUA == 0
        } else {
            flags == 0
        };
        let len_ok = match self {
            Hello => (13 + NONCE as u32..=12 + NONCE as u32 + MAX_NAME as u32).contains(&len),
            Welcome => len as usize == 12 + NONCE + PROOF,
            Auth => len as usize == PROOF,
            Refuse => (1..=1024).contains(&len),
            Write | FwdWrite | Resync => len == count,
            FwdCaw => len as u64 == 2 * count as u64,
            Meta => (1..=MAX_META).contains(&len),
            MetaState => len <= MAX_META_STATE,
            FlushDone => len == 0 || len == 4,
            ResyncAlso => count <= MAX_RESYNC_ALSO && len as usize == RANGE * count as usize,
            _ => len == 0,
        };
        flags_ok && len_ok
    }
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub ty: Type,
    /// Flags (FUA).
    pub flags: u16,
    /// Payload bytes.
    pub len: u32,
    /// Request id.
    pub id: u32,
    /// Sequence number or watermark.
    pub seq: u64,
    /// Byte offset.
    pub offset: u64,
    /// Bytes affected.
    pub count: u32,
}

impl Header {
    /// A header of type `ty` with every other field zero.
    pub fn new(ty: Type) -> Self {
        Self {
            ty,
            flags: 0,
            len: 0,
            id: 0,
            seq: 0,
            offset: 0,
            count: 0,
        }
    }

    /// FUA requested.
    pub fn fua(&self) -> bool {
        self.flags & FLAG_FUA != 0
    }
}

/// What the front of a receive buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Not enough bytes yet; at least this many are needed in all.
    Partial(usize),
    /// One message: its header and the payload's range in the buffer.
    Msg(Header, std::ops::Range<usize>),
    /// The stream is broken; the link must be dropped.
    Bad(&'static str),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decode the message at the front of `buf`.
pub fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < HEADER {
        return Decoded::Partial(HEADER);
    }
    if u32_at(buf, 0) != MAGIC {
        return Decoded::Bad("bad magic");
    }
    if buf[4] == 1 {
        return Decoded::Bad("peer speaks protocol version 1 (no link authentication): refused");
    }
    if buf[4] == 2 {
        return Decoded::Bad(
            "peer speaks protocol version 2 (no RESYNC_DONE confirmation): refused; run the same twinblk version at both sites",
        );
    }
    if buf[4] == 3 {
        return Decoded::Bad(
            "peer speaks protocol version 3 (metadata without a kind byte): refused; run the same twinblk version at both sites",
        );
    }
    if buf[4] == 4 {
        return Decoded::Bad(
            "peer speaks protocol version 4 (no leadership term, no SPC-2 RESERVE holder): refused; run the same twinblk version at both sites",
        );
    }
    if buf[4] == 5 {
        return Decoded::Bad(
            "peer speaks protocol version 5 (SCSI reservations without target ports): refused; run the same twinblk version at both sites",
        );
    }
    if buf[4] == 6 {
        return Decoded::Bad(
            "peer speaks protocol version 6 (RESYNC_DONE without the grant epoch): refused; run the same twinblk version at both sites",
        );
    }
    if buf[4] != VERSION {
        return Decoded::Bad("unsupported version");
    }
    let len = u32_at(buf, 8);
    if len > MAX_PAYLOAD {
        return Decoded::Bad("payload too long");
    }
    let total = HEADER + len as usize;
    if buf.len() < total {
        return Decoded::Partial(total);
    }
    let crc =
        crate::checksum::crc32c_append(crate::checksum::crc32c(&buf[..36]), &buf[HEADER..total]);
    if crc != u32_at(buf, 36) {
        return Decoded::Bad("checksum mismatch");
    }
    let Some(ty) = Type::from_u8(buf[5]) else {
        return Decoded::Bad("unknown message type");
    };
    let h = Header {
        ty,
        flags: u16::from_le_bytes([buf[6], buf[7]]),
        len,
        id: u32_at(buf, 12),
        seq: u64_at(buf, 16),
        offset: u64_at(buf, 24),
        count: u32_at(buf, 32),
    };
    if !ty.allows(len, h.count, h.flags) {
        return Decoded::Bad("length or flags not allowed for the message type");
    }
    if let Err(why) = check_fields(&h, &buf[HEADER..total]) {
        return Decoded::Bad(why);
    }
    Decoded::Msg(h, HEADER..total)
}

/// Largest replica state in HELLO / WELCOME `id` (6: in sync, stopped uncleanly, host
/// restarted).
pub const MAX_REPLICA_STATE: u32 = 6;
/// Largest status in META_STATE / META_ACK `count` (an NVMe status is 16 bits).
pub const MAX_META_STATUS: u32 = 0xFFFF;
/// Largest errno in a FLUSH_DONE payload.
pub const MAX_ERRNO: i32 = 4095;

/// Every header field checked against its meaning for the message's type
/// (docs/mirror-protocol.md, "Messages"): the fields a type does not use must be 0, counts of
/// updates must not be 0, statuses and states must be in range. (Ranges against the volume,
/// and sequence numbers against the session, are the engine's.)
pub fn check_fields(h: &Header, payload: &[u8]) -> Result<(), &'static str> {
    use Type::*;
    // Which fields the type carries: (id, seq, offset, count).
    let (id, seq, offset, count) = match h.ty {
        // `count`: the sender's read lease in ms (0: no witness, no lease enforced).
        // `offset`: the sender's leadership word (`term << 1 | leads`).
        Hello | Welcome => (true, true, true, true),
        Switch => (false, true, true, false),
        SwitchAck | SwitchAsk => (false, false, true, false),
        // RESYNC_DONE's `seq`: the source's witness grant epoch (0: none).
        ResyncDone => (false, true, false, false),
        Refuse | ResyncDoneAck | Resent | Auth => (false, false, false, false),
        // `id` only on a re-sent forward.
        Write | Zeroes | Unmap => (h.flags & FLAG_RESENT != 0, true, true, true),
        Order | Miscompare => (true, true, false, false),
        Ack | Ping | Pong => (false, true, false, false),
        FwdWrite | FwdZeroes | FwdUnmap | FwdCaw => (true, false, true, true),
        Flush | FlushDone | Meta => (true, false, false, false),
        Resync => (false, false, true, true),
        MetaState => (true, true, false, true),
        MetaAck => (false, true, false, true),
        ResyncAlso => (false, false, false, true),
    };
    if (!id && h.id != 0) || (!seq && h.seq != 0) || (!offset && h.offset != 0) {
        return Err("a field the message type does not use is not 0");
    }
    if !count && h.count != 0 {
        return Err("a field the message type does not use is not 0");
    }
    match h.ty {
        _ if (h.ty.is_update() || h.ty == Resync) && h.count == 0 => {
            return Err("update of 0 bytes");
        }
        Hello | Welcome if h.id > MAX_REPLICA_STATE => {
            return Err("unknown replica state");
        }
        MetaState | MetaAck if h.count > MAX_META_STATUS => {
            return Err("metadata status out of range");
        }
        FlushDone if payload.len() == 4 => {
            let e = i32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
            if !(1..=MAX_ERRNO).contains(&e) {
                return Err("FLUSH_DONE errno out of range");
            }
        }
        _ => {}
    }
    Ok(())
}

/// A byte count as the header's 32-bit `count`: refused (never truncated) when it does not fit
/// (4 GiB and more would wrap, exactly 4 GiB to 0).
pub fn count(len: u64) -> Result<u32, &'static str> {
    u32::try_from(len).map_err(|_| "count does not fit a message header (32 bits)")
}

/// Append one message (`h.len` is set from `payload`).
///
/// Panics when `payload` is longer than [`MAX_PAYLOAD`]: a peer would refuse it, so callers
/// split first (a silent truncation of `len` would corrupt the stream instead).
pub fn encode(out: &mut Vec<u8>, h: &Header, payload: &[u8]) {
    encode_header(out, h, payload);
    out.extend_from_slice(payload);
}

/// Append only the header of the message `h` with `payload` (its length and checksum cover
/// the payload): the payload goes on the wire right after it from wherever it is (a scatter
/// list, txq.rs), not copied here.
pub fn encode_header(out: &mut Vec<u8>, h: &Header, payload: &[u8]) {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n <= MAX_PAYLOAD)
        .expect("a payload longer than one message");
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(VERSION);
    out.push(h.ty as u8);
    out.extend_from_slice(&h.flags.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&h.id.to_le_bytes());
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.extend_from_slice(&h.offset.to_le_bytes());
    out.extend_from_slice(&h.count.to_le_bytes());
    let crc =
        crate::checksum::crc32c_append(crate::checksum::crc32c(&out[start..start + 36]), payload);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Whether `header` (a whole encoded header) carries the checksum of itself with `payload`.
pub fn header_matches(header: &[u8], payload: &[u8]) -> bool {
    header.len() == HEADER
        && crate::checksum::crc32c_append(crate::checksum::crc32c(&header[..36]), payload)
            == u32_at(header, 36)
}

/// A HELLO's payload: geometry, the follower's nonce and the volume's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Volume size, bytes.
    pub size: u64,
    /// Block size.
    pub block: u32,
    /// The follower's fresh nonce.
    pub nonce: [u8; NONCE],
    /// The volume's name (1 ..= 255 bytes).
    pub name: &'a str,
}

/// `size u64, block u32, nonce [32], name`.
pub fn encode_hello(size: u64, block: u32, nonce: &[u8; NONCE], name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + NONCE + name.len());
    p.extend_from_slice(&size.to_le_bytes());
    p.extend_from_slice(&block.to_le_bytes());
    p.extend_from_slice(nonce);
    p.extend_from_slice(name.as_bytes());
    p
}

/// Parse a HELLO payload: `None` if it is too short, the name is empty, longer than
/// [`MAX_NAME`] or not UTF-8.
pub fn decode_hello(p: &[u8]) -> Option<Hello<'_>> {
    if p.len() < 12 + NONCE + 1 || p.len() > 12 + NONCE + MAX_NAME {
        return None;
    }
    let name = std::str::from_utf8(&p[12 + NONCE..]).ok()?;
    Some(Hello {
        size: u64_at(p, 0),
        block: u32_at(p, 8),
        nonce: p[12..12 + NONCE].try_into().ok()?,
        name,
    })
}

/// A WELCOME's payload: geometry, the leader's nonce and its proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Volume size, bytes.
    pub size: u64,
    /// Block size.
    pub block: u32,
    /// The leader's fresh nonce.
    pub nonce: [u8; NONCE],
    /// The leader's proof of the key.
    pub proof: [u8; PROOF],
}

/// `size u64, block u32, nonce [32], proof [32]`.
pub fn encode_welcome(w: &Welcome) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + NONCE + PROOF);
    p.extend_from_slice(&w.size.to_le_bytes());
    p.extend_from_slice(&w.block.to_le_bytes());
    p.extend_from_slice(&w.nonce);
    p.extend_from_slice(&w.proof);
    p
}

/// Parse a WELCOME payload (`None` unless exactly 76 bytes).
pub fn decode_welcome(p: &[u8]) -> Option<Welcome> {
    if p.len() != 12 + NONCE + PROOF {
        return None;
    }
    Some(Welcome {
        size: u64_at(p, 0),
        block: u32_at(p, 8),
        nonce: p[12..12 + NONCE].try_into().ok()?,
        proof: p[12 + NONCE..].try_into().ok()?,
    })
}

/// Which end a proof is from (its label in the transcript).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthRole {
    /// The leader's proof, in WELCOME.
    Leader,
    /// The follower's proof, in AUTH.
    Follower,
}

/// Everything a handshake's proofs cover (docs/mirror-protocol.md, "Link authentication").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake<'a> {
    /// The follower's nonce (HELLO).
    pub nonce_f: [u8; NONCE],
    /// The leader's nonce (WELCOME).
    pub nonce_l: [u8; NONCE],
    /// Volume size.
    pub size: u64,
    /// Block size.
    pub block: u32,
    /// The follower's replica state (HELLO `id`).
    pub f_state: u32,
    /// The follower's incarnation (HELLO `seq`).
    pub f_inc: u64,
    /// The leader's replica state (WELCOME `id`).
    pub l_state: u32,
    /// The leader's incarnation (WELCOME `seq`).
    pub l_inc: u64,
    /// The follower's leadership word (HELLO `offset`: `term << 1 | leads`).
    pub f_lead: u64,
    /// The leader's leadership word (WELCOME `offset`).
    pub l_lead: u64,
    /// The volume's name (1 ..= 255 bytes).
    pub name: &'a str,
}

impl Handshake<'_> {
    /// The bytes the proofs are computed over, for `role`'s proof.
    pub fn transcript(&self, role: AuthRole) -> Vec<u8> {
        let mut t = Vec::with_capacity(141 + self.name.len());
        t.extend_from_slice(b"TWINBLK-LINKAUTH");
        t.extend_from_slice(match role {
            AuthRole::Leader => b"LEADER\0\0",
            AuthRole::Follower => b"FOLLOWER",
        });
        t.extend_from_slice(&self.nonce_f);
        t.extend_from_slice(&self.nonce_l);
        t.extend_from_slice(&self.size.to_le_bytes());
        t.extend_from_slice(&self.block.to_le_bytes());
        t.extend_from_slice(&self.f_state.to_le_bytes());
        t.extend_from_slice(&self.f_inc.to_le_bytes());
        t.extend_from_slice(&self.l_state.to_le_bytes());
        t.extend_from_slice(&self.l_inc.to_le_bytes());
        t.extend_from_slice(&self.f_lead.to_le_bytes());
        t.extend_from_slice(&self.l_lead.to_le_bytes());
        let name = &self.name.as_bytes()[..self.name.len().min(MAX_NAME)];
        t.push(name.len() as u8);
        t.extend_from_slice(name);
        t
    }

    /// `role`'s proof: HMAC-SHA256 under the shared key of `role`'s transcript.
    pub fn proof(&self, key: &Key, role: AuthRole) -> [u8; PROOF] {
        key.mac256(&self.transcript(role))
    }

    /// Whether `proof` is `role`'s proof (constant-time comparison).
    pub fn verify(&self, key: &Key, role: AuthRole, proof: &[u8]) -> bool {
        key.verify256(&self.transcript(role), proof)
    }
}

/// A fresh random nonce from the kernel (`getrandom(2)`).
pub fn nonce() -> std::io::Result<[u8; NONCE]> {
    let mut n = [0u8; NONCE];
    let mut at = 0;
    while at < NONCE {
        // SAFETY: writes at most `NONCE - at` bytes into the rest of `n`.
        let r = unsafe { libc::getrandom(n[at..].as_mut_ptr().cast(), NONCE - at, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        at += r as usize;
    }
    Ok(n)
}

/// Append RESYNC_ALSO messages listing `ranges` (`offset, length`), at most
/// [`MAX_RESYNC_ALSO`] per message, then the empty one that ends the list.
pub fn encode_resync_also(out: &mut Vec<u8>, ranges: &[(u64, u64)]) {
    let mut payload = Vec::new();
    for chunk in ranges
        .chunks(MAX_RESYNC_ALSO as usize)
        .chain(std::iter::once(&[][..]))
    {
        payload.clear();
        for &(offset, len) in chunk {
            payload.extend_from_slice(&offset.to_le_bytes());
            payload.extend_from_slice(&len.to_le_bytes());
        }
        let h = Header {
            count: count(chunk.len() as u64).expect("at most MAX_RESYNC_ALSO ranges"),
            ..Header::new(Type::ResyncAlso)
        };
        encode(out, &h, &payload);
    }
}

/// The ranges of a RESYNC_ALSO payload (length already checked by [`decode`]).
pub fn decode_resync_also(p: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    p.chunks_exact(RANGE).map(|r| (u64_at(r, 0), u64_at(r, 8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(h: &Header, p: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, h, p);
        v
    }

    #[test]
    fn round_trip_every_field() {
        let h = Header {
            ty: Type::Write,
            flags: FLAG_FUA | FLAG_RESENT,
            len: 4,
            id: 7,
            seq: 0x1122_3344_5566_7788,
            offset: 4096,
            count: 4,
        };
        let v = msg(&h, b"abcd");
        assert_eq!(v.len(), HEADER + 4);
        assert_eq!(&v[..4], b"WRMT");
        match decode(&v) {
            Decoded::Msg(got, r) => {
                assert_eq!(got, h);
                assert_eq!(&v[r], b"abcd");
            }
            other => panic!("{other:?}"),
        }
        for cut in 0..v.len() {
            assert!(
                matches!(decode(&v[..cut]), Decoded::Partial(_)),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn every_corruption_is_refused() {
        let h = Header {
            count: 8,
            ..Header::new(Type::FwdWrite)
        };
        let good = msg(&h, &[9; 8]);
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x40;
            match decode(&b) {
                Decoded::Bad(_) => {}
                // A flipped length bit can only make the message look longer.
                Decoded::Partial(n) => assert!(n > good.len() && (8..12).contains(&i)),
                Decoded::Msg(..) => panic!("corruption at byte {i} accepted"),
            }
        }
    }

    #[test]
    fn lengths_and_flags_follow_the_type() {
        let bad = [
            (Header::new(Type::Ack), vec![0u8; 1]),
            (
                Header {
                    count: 9,
                    ..Header::new(Type::Write)
                },
                vec![0; 8],
            ),
            (
                Header {
                    flags: FLAG_FUA,
                    ..Header::new(Type::Ack)
                },
                vec![],
            ),
            (
                Header {
                    flags: 4,
                    count: 0,
                    ..Header::new(Type::Zeroes)
                },
                vec![],
            ),
            // RESENT only on the leader's sequenced updates.
            (
                Header {
                    flags: FLAG_RESENT,
                    count: 8,
                    ..Header::new(Type::FwdWrite)
                },
                vec![0; 8],
            ),
            (Header::new(Type::Welcome), vec![0; 11]),
            // A forwarded compare-and-write carries exactly twice `count` bytes.
            (
                Header {
                    count: 8,
                    ..Header::new(Type::FwdCaw)
                },
                vec![0; 8],
            ),
            (
                Header {
                    id: 1,
                    ..Header::new(Type::Miscompare)
                },
                vec![0; 1],
            ),
        ];
        for (h, p) in bad {
            assert!(matches!(decode(&msg(&h, &p)), Decoded::Bad(_)), "{h:?}");
        }
        let caw = Header {
            count: 8,
            flags: FLAG_FUA,
            ..Header::new(Type::FwdCaw)
        };
        assert!(matches!(decode(&msg(&caw, &[0; 16])), Decoded::Msg(..)));
        let mut v = msg(&Header::new(Type::Ping), &[]);
        v[4] = 8;
        assert_eq!(decode(&v), Decoded::Bad("unsupported version"));
        // A version-6 peer (RESYNC_DONE without the grant epoch) is refused by name.
        v[4] = 6;
        assert!(matches!(decode(&v), Decoded::Bad(why) if why.contains("version 6")));
        // A version-5 peer (SCSI reservations without target ports) is refused by name.
        v[4] = 5;
        assert!(matches!(decode(&v), Decoded::Bad(why) if why.contains("version 5")));
        // A version-4 peer (no leadership term, no RESERVE holder) is refused by name.
        v[4] = 4;
        assert!(matches!(decode(&v), Decoded::Bad(why) if why.contains("version 4")));
        // A version-3 peer (metadata without a kind byte) is refused by name.
        v[4] = 3;
        assert!(matches!(decode(&v), Decoded::Bad(why) if why.contains("version 3")));
        // A version-2 peer (RESYNC_DONE unconfirmed) is refused by name.
        v[4] = 2;
        assert!(matches!(decode(&v), Decoded::Bad(why) if why.contains("version 2")));
        // A version-1 peer (no link authentication) is refused by name.
        v[4] = 1;
        assert!(matches!(decode(&v), Decoded::Bad(why) if why.contains("version 1")));
        let mut v = msg(&Header::new(Type::Ping), &[]);
        v[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert_eq!(decode(&v), Decoded::Bad("payload too long"));
        let mut v = msg(&Header::new(Type::Ping), &[]);
        v[5] = 99;
        // Re-seal the checksum so only the type is wrong.
        let crc = crate::checksum::crc32c(&v[..36]);
        v[36..40].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&v), Decoded::Bad("unknown message type"));
    }

    #[test]
    fn resync_also_lists_ranges_in_messages_and_ends_with_an_empty_one() {
        let ranges: Vec<(u64, u64)> = (0..MAX_RESYNC_ALSO as u64 + 3)
            .map(|i| (i << 20, 4096 + i))
            .collect();
        let mut v = Vec::new();
        encode_resync_also(&mut v, &ranges);
        let (mut got, mut counts, mut at) = (Vec::new(), Vec::new(), 0);
        while at < v.len() {
            let Decoded::Msg(h, r) = decode(&v[at..]) else {
                panic!("bad RESYNC_ALSO")
            };
            assert_eq!(h.ty, Type::ResyncAlso);
            counts.push(h.count);
            got.extend(decode_resync_also(&v[at + r.start..at + r.end]));
            at += r.end;
        }
        assert_eq!(counts, vec![MAX_RESYNC_ALSO, 3, 0]);
        assert_eq!(got, ranges);
        // Nothing to list: only the end marker.
        let mut v = Vec::new();
        encode_resync_also(&mut v, &[]);
        assert!(matches!(decode(&v), Decoded::Msg(h, _) if h.count == 0 && h.len == 0));
        assert_eq!(v.len(), HEADER);
        // The payload must be exactly `count` ranges, and `count` at most the limit.
        let over = MAX_RESYNC_ALSO + 1;
        for (count, len) in [(1, 15), (1, 17), (0, 16), (over, RANGE * over as usize)] {
            let h = Header {
                count,
                ..Header::new(Type::ResyncAlso)
            };
            let p = vec![0; len];
            assert!(
                matches!(decode(&msg(&h, &p)), Decoded::Bad(_)),
                "{count} {len}"
            );
        }
    }

    #[test]
    fn every_field_is_checked_against_its_meaning_per_type() {
        let h = |ty| Header::new(ty);
        let upd = |ty| Header {
            offset: 4096,
            count: 512,
            ..Header::new(ty)
        };
        let payload = |h: &Header| -> Vec<u8> {
            match h.ty {
                Type::Hello => encode_hello(1 << 20, 512, &[0; NONCE], "v"),
                Type::Welcome => vec![0; 12 + NONCE + PROOF],
                Type::Refuse => b"no".to_vec(),
                Type::Auth => vec![0; PROOF],
                Type::Meta => vec![1],
                Type::Write | Type::FwdWrite | Type::Resync => vec![0; h.count as usize],
                Type::FwdCaw => vec![0; 2 * h.count as usize],
                _ => vec![],
            }
        };
        // Each type's well-formed message, then each with one field it must not carry.
        let good = [
            Header {
                id: 4,
                seq: 9,
                offset: 3,
                ..h(Type::Hello)
            },
            Header {
                id: 1,
                seq: 9,
                offset: 2,
                ..h(Type::Welcome)
            },
            h(Type::Refuse),
            Header {
                seq: 1,
                ..upd(Type::Write)
            },
            Header {
                seq: 1,
                ..upd(Type::Zeroes)
            },
            Header {
                seq: 1,
                id: 3,
                flags: FLAG_RESENT,
                ..upd(Type::Unmap)
            },
            Header {
                seq: 1,
                id: 3,
                ..h(Type::Order)
            },
            Header {
                seq: 1,
                ..h(Type::Ack)
            },
            Header {
                id: 1,
                ..upd(Type::FwdWrite)
            },
            Header {
                id: 1,
                ..upd(Type::FwdZeroes)
            },
            Header {
                id: 1,
                ..upd(Type::FwdUnmap)
            },
            Header {
                id: 7,
                ..h(Type::Flush)
            },
            Header {
                id: 7,
                ..h(Type::FlushDone)
            },
            Header {
                seq: 5,
                ..h(Type::Ping)
            },
            Header {
                seq: 5,
                ..h(Type::Pong)
            },
            upd(Type::Resync),
            // (`seq`: the source's grant epoch.)
            Header {
                seq: 3,
                ..h(Type::ResyncDone)
            },
            Header {
                id: 1,
                ..upd(Type::FwdCaw)
            },
            Header {
                id: 1,
                seq: 3,
                ..h(Type::Miscompare)
            },
            Header {
                id: 1,
                ..h(Type::Meta)
            },
            Header {
                id: META_NO_ID,
                seq: 2,
                count: 2,
                ..h(Type::MetaState)
            },
            Header {
                seq: 2,
                count: 6,
                ..h(Type::MetaAck)
            },
            h(Type::ResyncAlso),
            h(Type::Resent),
            h(Type::Auth),
            h(Type::ResyncDoneAck),
            Header {
                seq: 9,
                offset: 3,
                ..h(Type::Switch)
            },
            Header {
                offset: 3,
                ..h(Type::SwitchAck)
            },
            Header {
                offset: 2,
                ..h(Type::SwitchAsk)
            },
        ];
        for g in good {
            assert!(
                matches!(decode(&msg(&g, &payload(&g))), Decoded::Msg(..)),
                "{g:?}"
            );
            let mut bad = Vec::new();
            if g.id == 0 && !(g.ty == Type::Write || g.ty == Type::Zeroes) {
                bad.push(Header { id: 1, ..g });
            }
            if g.seq == 0 {
                bad.push(Header { seq: 1, ..g });
            }
            if g.offset == 0 && g.ty != Type::FwdCaw {
                bad.push(Header { offset: 4096, ..g });
            }
            // (HELLO and WELCOME carry the read lease in `count`; 0 = no witness.)
            if g.count == 0
                && !matches!(
                    g.ty,
                    Type::MetaState | Type::MetaAck | Type::Hello | Type::Welcome
                )
            {
                // (RESYNC_ALSO's count is its number of ranges: checked with its length.)
                if g.ty != Type::ResyncAlso {
                    bad.push(Header { count: 512, ..g });
                }
            }
            for b in bad {
                let p = payload(&g);
                assert!(
                    matches!(decode(&msg(&b, &p)), Decoded::Bad(_)),
                    "accepted {b:?}"
                );
            }
        }
        // Out-of-range values.
        let flush_done = |e: i32| {
            msg(
                &Header {
                    id: 7,
                    ..h(Type::FlushDone)
                },
                &e.to_le_bytes(),
            )
        };
        assert!(matches!(decode(&flush_done(5)), Decoded::Msg(..)));
        for e in [0, -5, MAX_ERRNO + 1] {
            assert!(
                matches!(decode(&flush_done(e)), Decoded::Bad(_)),
                "errno {e}"
            );
        }
        let bad = [
            (
                Header {
                    id: 7,
                    ..h(Type::Hello)
                },
                payload(&h(Type::Hello)),
            ),
            (
                Header {
                    id: 9,
                    ..h(Type::Welcome)
                },
                payload(&h(Type::Welcome)),
            ),
            (
                Header {
                    count: 0x1_0000,
                    ..h(Type::MetaState)
                },
                vec![],
            ),
            (
                Header {
                    count: 0x1_0000,
                    ..h(Type::MetaAck)
                },
                vec![],
            ),
            // Updates of 0 bytes.
            (
                Header {
                    seq: 1,
                    ..h(Type::Zeroes)
                },
                vec![],
            ),
            (
                Header {
                    id: 1,
                    ..h(Type::FwdUnmap)
                },
                vec![],
            ),
            (h(Type::Resync), vec![]),
            // A FLUSH with an offset and a count (the overflow of finding 2).
            (
                Header {
                    offset: u64::MAX - 511,
                    count: 4096,
                    ..h(Type::Flush)
                },
                vec![],
            ),
        ];
        for (b, p) in bad {
            assert!(
                matches!(decode(&msg(&b, &p)), Decoded::Bad(_)),
                "accepted {b:?}"
            );
        }
    }

    #[test]
    fn counts_of_4_gib_and_more_are_refused_never_truncated() {
        assert_eq!(count((1 << 32) - 512), Ok(u32::MAX - 511));
        assert_eq!(count(u32::MAX as u64), Ok(u32::MAX));
        // Exactly 4 GiB would encode as 0, 4 GiB + 1 MiB as 1 MiB.
        assert!(count(1 << 32).is_err());
        assert!(count((1 << 32) + (1 << 20)).is_err());
        assert!(count(u64::MAX).is_err());
        // And a payload longer than a message is never encoded.
        let long = std::panic::catch_unwind(|| {
            encode(
                &mut Vec::new(),
                &Header::new(Type::Refuse),
                &vec![0; MAX_PAYLOAD as usize + 1],
            )
        });
        assert!(long.is_err());
    }

    #[test]
    fn handshake_payloads_round_trip_and_malformed_ones_are_refused() {
        let n = [7u8; NONCE];
        let p = encode_hello(1 << 30, 512, &n, "vol0");
        let h = decode_hello(&p).unwrap();
        assert_eq!(
            (h.size, h.block, h.nonce, h.name),
            (1 << 30, 512, n, "vol0")
        );
        // No name, a name too long, not UTF-8, too short.
        assert_eq!(decode_hello(&p[..12 + NONCE]), None);
        let long = "x".repeat(MAX_NAME + 1);
        assert_eq!(decode_hello(&encode_hello(1, 512, &n, &long)), None);
        let mut bad = p.clone();
        bad[12 + NONCE] = 0xFF;
        assert_eq!(decode_hello(&bad), None);
        assert_eq!(decode_hello(&p[..11]), None);
        let w = Welcome {
            size: 1 << 30,
            block: 4096,
            nonce: [1; NONCE],
            proof: [2; PROOF],
        };
        let p = encode_welcome(&w);
        assert_eq!(decode_welcome(&p), Some(w));
        assert_eq!(decode_welcome(&p[..p.len() - 1]), None);
        // And their lengths at the framing layer.
        let hello = |len: usize| msg(&Header::new(Type::Hello), &vec![b'a'; len]);
        assert!(matches!(decode(&hello(12 + NONCE)), Decoded::Bad(_)));
        assert!(matches!(decode(&hello(12 + NONCE + 1)), Decoded::Msg(..)));
        assert!(matches!(
            decode(&hello(12 + NONCE + MAX_NAME + 1)),
            Decoded::Bad(_)
        ));
        let auth = |len: usize| msg(&Header::new(Type::Auth), &vec![0; len]);
        assert!(matches!(decode(&auth(PROOF)), Decoded::Msg(..)));
        assert!(matches!(decode(&auth(PROOF - 1)), Decoded::Bad(_)));
        let welcome = |len: usize| msg(&Header::new(Type::Welcome), &vec![0; len]);
        assert!(matches!(
            decode(&welcome(12 + NONCE + PROOF)),
            Decoded::Msg(..)
        ));
        assert!(matches!(decode(&welcome(12)), Decoded::Bad(_)));
    }

    fn hs() -> Handshake<'static> {
        Handshake {
            nonce_f: [1; NONCE],
            nonce_l: [2; NONCE],
            size: 1 << 30,
            block: 512,
            f_state: 0,
            f_inc: 11,
            l_state: 0,
            l_inc: 22,
            f_lead: 0,
            l_lead: 1,
            name: "vol0",
        }
    }

    #[test]
    fn a_proof_holds_only_for_its_key_role_nonces_and_session_fields() {
        let key = Key::new(b"0123456789abcdef-link").unwrap();
        let other = Key::new(b"0123456789abcdef-other").unwrap();
        let h = hs();
        let p = h.proof(&key, AuthRole::Leader);
        assert!(h.verify(&key, AuthRole::Leader, &p));
        // Wrong key, reflected (the other role), truncated.
        assert!(!h.verify(&other, AuthRole::Leader, &p));
        assert!(!h.verify(&key, AuthRole::Follower, &p));
        assert!(!h.verify(&key, AuthRole::Leader, &p[..16]));
        // Any field changed (a replay into a session with other nonces, or an altered field).
        let changed = [
            Handshake {
                nonce_f: [9; NONCE],
                ..hs()
            },
            Handshake {
                nonce_l: [9; NONCE],
                ..hs()
            },
            Handshake {
                size: 1 << 31,
                ..hs()
            },
            Handshake {
                block: 4096,
                ..hs()
            },
            Handshake { f_state: 1, ..hs() },
            Handshake { f_inc: 12, ..hs() },
            Handshake { l_state: 3, ..hs() },
            Handshake { l_inc: 23, ..hs() },
            Handshake { f_lead: 3, ..hs() },
            Handshake { l_lead: 2, ..hs() },
            Handshake {
                name: "vol1",
                ..hs()
            },
        ];
        for c in changed {
            assert!(!c.verify(&key, AuthRole::Leader, &p), "{c:?}");
        }
        // Nonces are fresh.
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
