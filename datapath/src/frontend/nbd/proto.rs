//! NBD wire format: constants, parsers and encoders (pure functions, no I/O).
//!
//! Everything is big-endian. Parsers take the bytes received so far and return
//! `Ok(None)` when more bytes are needed, `Ok(Some((value, consumed)))` for a whole message,
//! or `Err` for a message that breaks the protocol. No parser allocates or panics on any
//! input; lengths are checked before any slice is taken (the fuzz target `nbd_request`
//! holds them to that).
//!
//! Layouts are in docs/nbd.md; numbers follow the NBD protocol document.

/// `NBDMAGIC`, the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, the newstyle magic (server greeting and every client option).
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Option reply magic.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Request magic.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply chunk magic.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zeroes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub mod tflag {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// FLUSH supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// FUA supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// TRIM supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// WRITE_ZEROES supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// Flush and FUA are visible across connections.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Options.
pub mod opt {
    /// Choose an export and enter transmission (no error possible).
    pub const EXPORT_NAME: u32 = 1;
    /// Abort negotiation.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Start TLS.
    pub const STARTTLS: u32 = 5;
    /// Describe an export.
    pub const INFO: u32 = 6;
    /// Describe an export and enter transmission.
    pub const GO: u32 = 7;
    /// Use structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types.
pub mod rep {
    /// Accepted / end of list.
    pub const ACK: u32 = 1;
    /// One export (for LIST).
    pub const SERVER: u32 = 2;
    /// One piece of export information (for INFO/GO).
    pub const INFO: u32 = 3;
    /// Option unknown.
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    /// Option known but malformed.
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// Server shutting down.
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
    /// Block size information must be requested to use this export.
    pub const ERR_BLOCK_SIZE_REQD: u32 = (1 << 31) + 8;
    /// Option too big.
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// INFO types.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Canonical name.
    pub const NAME: u16 = 1;
    /// Description.
    pub const DESCRIPTION: u16 = 2;
    /// Block size constraints.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Commands.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write (payload follows the header).
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Trim (deallocate).
    pub const TRIM: u16 = 4;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
}

/// Command flags.
pub mod cflag {
    /// Force unit access.
    pub const FUA: u16 = 1 << 0;
    /// Do not punch holes (for WRITE_ZEROES).
    pub const NO_HOLE: u16 = 1 << 1;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    /// Last chunk of a reply.
    pub const FLAG_DONE: u16 = 1;
    /// No payload.
    pub const NONE: u16 = 0;
    /// Data at an offset.
    pub const OFFSET_DATA: u16 = 1;
    /// Error.
    pub const ERROR: u16 = (1 << 15) + 1;
}

/// NBD error values (the protocol's, not the host's).
pub mod err {
    /// Not permitted (write to a read-only export).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid request.
    pub const EINVAL: u32 = 22;
    /// No space (write beyond the end).
    pub const ENOSPC: u32 = 28;
    /// Value too large.
    pub const EOVERFLOW: u32 = 75;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
    /// Server shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// Size of a request header.
pub const REQUEST_LEN: usize = 28;
/// Size of an option header.
pub const OPTION_HEADER_LEN: usize = 16;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Largest option payload kept and parsed; NBD names are at most 4096 bytes, so this is
/// generous. The connection skips (and answers) longer options rather than buffering them.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Largest READ/WRITE payload accepted (advertised as the maximum block size).
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;

/// A protocol violation that ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A magic number was wrong.
    BadMagic,
    /// The client set a flag it must not set.
    BadClientFlags,
    /// An option length beyond [`MAX_OPTION_LEN`] (the connection may skip the option).
    OptionTooLong,
    /// A WRITE payload beyond [`MAX_PAYLOAD`].
    PayloadTooLong,
}

/// One transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// Client's handle, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u32,
}

impl Request {
    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> usize {
        if self.kind == cmd::WRITE {
            self.len as usize
        } else {
            0
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Parse the client's 4-byte flags. Returns `(flags, consumed)`.
pub fn parse_client_flags(b: &[u8]) -> Result<Option<(u32, usize)>, Violation> {
    if b.len() < 4 {
        return Ok(None);
    }
    let flags = be32(b, 0);
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(Violation::BadClientFlags);
    }
    Ok(Some((flags, 4)))
}

/// An option: its code and its payload (a sub-slice of the input).
#[derive(Debug, PartialEq, Eq)]
pub struct OptionMsg<'a> {
    /// Option code.
    pub code: u32,
    /// Payload.
    pub data: &'a [u8],
}

/// Parse one option (header and payload).
pub fn parse_option(b: &[u8]) -> Result<Option<(OptionMsg<'_>, usize)>, Violation> {
    if b.len() < OPTION_HEADER_LEN {
        return Ok(None);
    }
    if be64(b, 0) != IHAVEOPT {
        return Err(Violation::BadMagic);
    }
    let code = be32(b, 8);
    let len = be32(b, 12);
    if len > MAX_OPTION_LEN {
        return Err(Violation::OptionTooLong);
    }
    let total = OPTION_HEADER_LEN + len as usize;
    if b.len() < total {
        return Ok(None);
    }
    Ok(Some((
        OptionMsg {
            code,
            data: &b[OPTION_HEADER_LEN..total],
        },
        total,
    )))
}

/// Bytes a pending option still needs before it is whole (for growing the receive buffer).
pub fn option_needs(b: &[u8]) -> usize {
    if b.len() < OPTION_HEADER_LEN {
        return OPTION_HEADER_LEN;
    }
    OPTION_HEADER_LEN + (be32(b, 12).min(MAX_OPTION_LEN)) as usize
}

/// The payload of NBD_OPT_INFO / NBD_OPT_GO.
#[derive(Debug, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Export name.
    pub name: &'a [u8],
    /// Requested information types (2 bytes each, big-endian).
    pub requests: &'a [u8],
}

impl InfoRequest<'_> {
    /// Iterate the requested information types.
    pub fn types(&self) -> impl Iterator<Item = u16> + '_ {
        self.requests
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }
}

/// Parse an INFO/GO payload; `None` when its lengths do not add up (ERR_INVALID).
pub fn parse_info_request(d: &[u8]) -> Option<InfoRequest<'_>> {
    if d.len() < 4 {
        return None;
    }
    let name_len = be32(d, 0) as usize;
    let rest = d.len() - 4;
    if name_len > rest || rest - name_len < 2 {
        return None;
    }
    let name = &d[4..4 + name_len];
    let n = be16(d, 4 + name_len) as usize;
    let reqs = &d[4 + name_len + 2..];
    if reqs.len() != n * 2 {
        return None;
    }
    Some(InfoRequest {
        name,
        requests: reqs,
    })
}

/// Parse a LIST_META_CONTEXT / SET_META_CONTEXT payload: export name and the number of
/// queries; `None` when malformed.
pub fn parse_meta_request(d: &[u8]) -> Option<(&[u8], u32)> {
    if d.len() < 8 {
        return None;
    }
    let name_len = be32(d, 0) as usize;
    if name_len > d.len() - 4 || d.len() - 4 - name_len < 4 {
        return None;
    }
    let name = &d[4..4 + name_len];
    let mut at = 4 + name_len;
    let n = be32(d, at);
    at += 4;
    for _ in 0..n {
        if d.len() - at < 4 {
            return None;
        }
        let q = be32(d, at) as usize;
        at += 4;
        if d.len() - at < q {
            return None;
        }
        at += q;
    }
    if at != d.len() {
        return None;
    }
    Some((name, n))
}

/// Parse one request header. The payload (for WRITE) is not included in `consumed`.
pub fn parse_request(b: &[u8]) -> Result<Option<(Request, usize)>, Violation> {
    if b.len() < REQUEST_LEN {
        return Ok(None);
    }
    if be32(b, 0) != REQUEST_MAGIC {
        return Err(Violation::BadMagic);
    }
    let r = Request {
        flags: be16(b, 4),
        kind: be16(b, 6),
        cookie: be64(b, 8),
        offset: be64(b, 16),
        len: be32(b, 24),
    };
    if r.kind == cmd::WRITE && r.len > MAX_PAYLOAD {
        return Err(Violation::PayloadTooLong);
    }
    Ok(Some((r, REQUEST_LEN)))
}

/// Append the server greeting.
pub fn put_greeting(out: &mut Vec<u8>) {
    out.extend_from_slice(&NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
}

/// Append an option reply header followed by `data`.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, kind: u32, data: &[&[u8]]) {
    let len: usize = data.iter().map(|d| d.len()).sum();
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for d in data {
        out.extend_from_slice(d);
    }
}

/// Append a simple reply header (the caller appends read data).
pub fn put_simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    let mut h = [0u8; SIMPLE_REPLY_LEN];
    h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&h);
}

/// Append a structured chunk header with `len` payload bytes (the caller appends them).
pub fn put_chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, len: u32) {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..20].copy_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&h);
}

/// Append a final structured ERROR chunk with no message.
pub fn put_chunk_error(out: &mut Vec<u8>, cookie: u64, error: u32) {
    put_chunk_header(out, chunk::FLAG_DONE, chunk::ERROR, cookie, 6);
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: u16, len: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&cflag::FUA.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&4096u64.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b
    }

    #[test]
    fn request_round_trip_and_partial_input() {
        let b = request(cmd::WRITE, 512);
        for cut in 0..REQUEST_LEN {
            assert_eq!(parse_request(&b[..cut]), Ok(None));
        }
        let (r, n) = parse_request(&b).unwrap().unwrap();
        assert_eq!(n, REQUEST_LEN);
        assert_eq!(
            r,
            Request {
                flags: cflag::FUA,
                kind: cmd::WRITE,
                cookie: 7,
                offset: 4096,
                len: 512
            }
        );
        assert_eq!(r.payload_len(), 512);
    }

    #[test]
    fn request_rejects_bad_magic_and_huge_writes() {
        let mut b = request(cmd::READ, 512);
        b[0] ^= 1;
        assert_eq!(parse_request(&b), Err(Violation::BadMagic));
        let b = request(cmd::WRITE, MAX_PAYLOAD + 1);
        assert_eq!(parse_request(&b), Err(Violation::PayloadTooLong));
        // A huge READ is not a violation: it gets an EINVAL reply instead.
        let b = request(cmd::READ, u32::MAX);
        assert!(parse_request(&b).unwrap().is_some());
    }

    #[test]
    fn option_lengths_are_checked() {
        let mut b = Vec::new();
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt::GO.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(b"ab");
        assert_eq!(parse_option(&b), Ok(None));
        assert_eq!(option_needs(&b), 19);
        b.push(b'c');
        let (o, n) = parse_option(&b).unwrap().unwrap();
        assert_eq!((o.code, o.data, n), (opt::GO, &b"abc"[..], 19));
        b[12..16].copy_from_slice(&(MAX_OPTION_LEN + 1).to_be_bytes());
        assert_eq!(parse_option(&b), Err(Violation::OptionTooLong));
    }

    #[test]
    fn info_request_lengths_must_add_up() {
        let mut d = Vec::new();
        d.extend_from_slice(&4u32.to_be_bytes());
        d.extend_from_slice(b"vol0");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        let r = parse_info_request(&d).unwrap();
        assert_eq!(r.name, b"vol0");
        assert_eq!(r.types().collect::<Vec<_>>(), vec![info::BLOCK_SIZE]);
        assert!(parse_info_request(&d[..d.len() - 1]).is_none());
        let mut lying = d.clone();
        lying[0..4].copy_from_slice(&1000u32.to_be_bytes());
        assert!(parse_info_request(&lying).is_none());
        assert!(parse_info_request(&[0, 0, 0]).is_none());
    }

    #[test]
    fn meta_request_parses_queries() {
        let mut d = Vec::new();
        d.extend_from_slice(&0u32.to_be_bytes());
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&15u32.to_be_bytes());
        d.extend_from_slice(b"base:allocation");
        assert_eq!(parse_meta_request(&d), Some((&b""[..], 1)));
        assert_eq!(parse_meta_request(&d[..d.len() - 1]), None);
    }

    #[test]
    fn client_flags_reject_unknown_bits() {
        assert_eq!(parse_client_flags(&[0, 0, 0, 3]), Ok(Some((3, 4))));
        assert_eq!(
            parse_client_flags(&[0, 0, 0, 4]),
            Err(Violation::BadClientFlags)
        );
        assert_eq!(parse_client_flags(&[0, 0]), Ok(None));
    }
}
