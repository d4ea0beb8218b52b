//! NBD for twinperf: the fixed-newstyle handshake with `NBD_OPT_GO` (blocking, once per
//! connection), then the transmission phase with simple replies as an [`engine::Wire`].
//!
//! Written from the NBD protocol document (`doc/proto.md` of the NBD project); all integers
//! are big-endian. Only simple replies are used (no `NBD_OPT_STRUCTURED_REPLY`), so a read's
//! reply is a 16-byte header followed by exactly the bytes asked for, or by nothing when its
//! error field is set. The request's cookie is its slot number.
//!
//! Invariants: every length the server sends is bounded before it is used; an option reply
//! larger than `MAX_OPTION_REPLY`, a reply magic other than the simple one, a cookie that is not
//! outstanding, or an export that lacks `NBD_INFO_EXPORT` is an error, never a panic.

use super::engine::{Link, Parsed, Req, Slots, Wire};
use super::{Connected, Opts};
use anyhow::{Context, Result, bail, ensure};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// "NBDMAGIC".
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT".
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Oldstyle servers send this instead of `IHAVEOPT`.
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Option reply magic.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Request magic.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply magic (never negotiated here).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag / client flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag / client flag: no zeroes after `EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Transmission flag: read-only export.
pub const FLAG_READ_ONLY: u16 = 1 << 1;

/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_REP_ACK`.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// `NBD_INFO_EXPORT`.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_BLOCK_SIZE`.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;

/// Option replies longer than this are refused (the server's answers to GO are tiny).
pub const MAX_OPTION_REPLY: u32 = 64 << 10;
/// Bytes of a simple reply's header.
pub const REPLY_HEADER: usize = 16;
/// Bytes of a request's header.
pub const REQUEST_HEADER: usize = 28;

/// What `NBD_OPT_GO` told about the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Minimum block size (1 when the server did not say).
    pub min_block: u32,
}

fn read_u64(s: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn read_u32(s: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn rep_error(t: u32) -> &'static str {
    match t & 0x7FFF_FFFF {
        1 => "NBD_REP_ERR_UNSUP",
        2 => "NBD_REP_ERR_POLICY",
        3 => "NBD_REP_ERR_INVALID",
        4 => "NBD_REP_ERR_PLATFORM",
        5 => "NBD_REP_ERR_TLS_REQD",
        6 => "NBD_REP_ERR_UNKNOWN (no such export)",
        7 => "NBD_REP_ERR_SHUTDOWN",
        8 => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        9 => "NBD_REP_ERR_TOO_BIG",
        _ => "an unknown error",
    }
}

/// Negotiate `name` on a fresh connection and enter transmission.
pub fn handshake(s: &mut TcpStream, name: &str) -> Result<Export> {
    let magic = read_u64(s).context("reading the NBD greeting")?;
    ensure!(magic == NBDMAGIC, "not an NBD server (greeting {magic:#x})");
    let second = read_u64(s).context("reading the NBD greeting")?;
    ensure!(
        second != OLDSTYLE_MAGIC,
        "oldstyle NBD server: only newstyle is supported"
    );
    ensure!(second == IHAVEOPT, "bad NBD greeting magic {second:#x}");
    let mut f = [0u8; 2];
    s.read_exact(&mut f)
        .context("reading the handshake flags")?;
    let hflags = u16::from_be_bytes(f);
    ensure!(
        hflags & FLAG_FIXED_NEWSTYLE != 0,
        "the server does not speak fixed newstyle NBD"
    );
    let cflags = u32::from(FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES));
    ensure!(name.len() <= 4096, "export name longer than 4096 bytes");
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&cflags.to_be_bytes());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&OPT_GO.to_be_bytes());
    m.extend_from_slice(&(4 + name.len() as u32 + 2 + 2).to_be_bytes());
    m.extend_from_slice(&(name.len() as u32).to_be_bytes());
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    s.write_all(&m).context("sending NBD_OPT_GO")?;
    let (mut size, mut flags, mut min_block) = (None, 0u16, 1u32);
    loop {
        let magic = read_u64(s).context("reading an option reply")?;
        ensure!(magic == REPLY_MAGIC, "bad option reply magic {magic:#x}");
        let opt = read_u32(s)?;
        let typ = read_u32(s)?;
        let len = read_u32(s)?;
        ensure!(opt == OPT_GO, "option reply for option {opt}, not GO");
        ensure!(
            len <= MAX_OPTION_REPLY,
            "option reply of {len} bytes (more than {MAX_OPTION_REPLY})"
        );
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).context("reading an option reply")?;
        if typ & 0x8000_0000 != 0 {
            let msg = String::from_utf8_lossy(&data);
            bail!("export {name:?} refused: {} {msg}", rep_error(typ));
        }
        match typ {
            REP_ACK => break,
            REP_INFO if data.len() >= 2 => {
                let info = u16::from_be_bytes([data[0], data[1]]);
                match info {
                    INFO_EXPORT => {
                        ensure!(data.len() >= 12, "NBD_INFO_EXPORT of {} bytes", data.len());
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&data[2..10]);
                        size = Some(u64::from_be_bytes(b));
                        flags = u16::from_be_bytes([data[10], data[11]]);
                    }
                    INFO_BLOCK_SIZE if data.len() >= 14 => {
                        let mut b = [0u8; 4];
                        b.copy_from_slice(&data[2..6]);
                        min_block = u32::from_be_bytes(b).max(1);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let size = size.context("the server acknowledged GO without NBD_INFO_EXPORT")?;
    Ok(Export {
        size,
        flags,
        min_block,
    })
}

/// The transmission-phase codec.
pub struct NbdWire {
    bs: u32,
}

impl NbdWire {
    /// A codec for `bs`-byte requests, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(bs: u32) -> NbdWire {
        NbdWire { bs }
    }
}

impl Wire for NbdWire {
    fn request(&mut self, r: &Req, payload: &[u8], out: &mut Vec<u8>) {
        let mut h = [0u8; REQUEST_HEADER];
        h[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        h[6..8].copy_from_slice(&(if r.write { CMD_WRITE } else { CMD_READ }).to_be_bytes());
        h[8..16].copy_from_slice(&u64::from(r.slot).to_be_bytes());
        h[16..24].copy_from_slice(&r.offset.to_be_bytes());
        h[24..28].copy_from_slice(&r.len.to_be_bytes());
        out.extend_from_slice(&h);
        if r.write {
            out.extend_from_slice(payload);
        }
    }

    fn parse(&mut self, inb: &[u8], slots: &Slots, _out: &mut Vec<u8>) -> Result<Option<Parsed>> {
        if inb.len() < REPLY_HEADER {
            return Ok(None);
        }
        let word = |at: usize| u32::from_be_bytes([inb[at], inb[at + 1], inb[at + 2], inb[at + 3]]);
        let magic = word(0);
        if magic != SIMPLE_REPLY_MAGIC {
            if magic == STRUCTURED_REPLY_MAGIC {
                bail!("the server sent a structured reply, which was not negotiated");
            }
            bail!("bad NBD reply magic {magic:#010x}");
        }
        let error = word(4);
        let cookie = (u64::from(word(8)) << 32) | u64::from(word(12));
        let slot = u16::try_from(cookie)
            .ok()
            .filter(|&s| slots.op(s).is_some())
            .with_context(|| {
                format!("NBD reply for cookie {cookie:#x}, which is not outstanding")
            })?;
        let (write, len) = slots.op(slot).unwrap_or((true, 0));
        if error != 0 || write {
            return Ok(Some(Parsed {
                used: REPLY_HEADER,
                slot: Some(slot),
                data: None,
                done: Some(error),
            }));
        }
        let end = REPLY_HEADER + len as usize;
        if inb.len() < end {
            return Ok(None);
        }
        Ok(Some(Parsed {
            used: end,
            slot: Some(slot),
            data: Some((0, REPLY_HEADER..end)),
            done: Some(0),
        }))
    }

    fn goodbye(&mut self, out: &mut Vec<u8>) {
        let mut h = [0u8; REQUEST_HEADER];
        h[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        h[6..8].copy_from_slice(&CMD_DISC.to_be_bytes());
        out.extend_from_slice(&h);
    }

    fn max_reply(&self) -> usize {
        REPLY_HEADER + self.bs as usize
    }
}

fn open(addr: SocketAddr, name: &str, timeout: Duration) -> Result<(TcpStream, Export)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let e = handshake(&mut s, name).with_context(|| format!("NBD handshake with {addr}"))?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok((s, e))
}

/// Open `o.conns` connections to the export and check they agree.
pub fn connect(o: &Opts) -> Result<Connected> {
    let mut conns = Vec::new();
    let mut first: Option<Export> = None;
    for _ in 0..o.conns {
        let (sock, e) = open(o.target.addr, &o.target.name, o.timeout)?;
        if let Some(f) = first {
            ensure!(
                f.size == e.size,
                "connections see different export sizes ({} and {})",
                f.size,
                e.size
            );
        }
        first = Some(e);
        conns.push(Link {
            sock,
            wire: Box::new(NbdWire { bs: o.bs }),
        });
    }
    let e = first.context("no connection")?;
    if o.rw.read_percent(o.rwmix) < 100 {
        ensure!(
            e.flags & FLAG_READ_ONLY == 0,
            "export {:?} is read-only",
            o.target.name
        );
    }
    Ok(Connected {
        conns,
        size: e.size,
        block: e.min_block,
        keep: None,
    })
}

/// A blocking, one-request-at-a-time NBD client (tests and tools that poke single blocks, the
/// drill's load). A write is reported done only when the server's simple reply with the same
/// cookie and error 0 was read; anything else is an error after which the connection must be
/// dropped.
pub struct Client {
    s: TcpStream,
    /// What the server said about the export.
    pub export: Export,
    cookie: u16,
}

impl Client {
    /// Connect and negotiate (10 s for each socket operation).
    pub fn connect(addr: SocketAddr, name: &str) -> Result<Client> {
        Self::connect_timeout(addr, name, Duration::from_secs(10))
    }

    /// Connect and negotiate; every later socket operation is bounded by `timeout` too (a
    /// server that stops answering shows as an error, never as a hang).
    pub fn connect_timeout(addr: SocketAddr, name: &str, timeout: Duration) -> Result<Client> {
        let (s, export) = open(addr, name, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Client {
            s,
            export,
            cookie: 0,
        })
    }

    fn call(&mut self, write: bool, offset: u64, len: u32, data: &[u8]) -> Result<Vec<u8>> {
        let mut w = NbdWire { bs: len };
        let mut out = Vec::new();
        self.cookie = self.cookie.wrapping_add(1);
        let r = Req {
            slot: self.cookie,
            write,
            offset,
            len,
        };
        w.request(&r, data, &mut out);
        self.s.write_all(&out)?;
        let mut h = [0u8; REPLY_HEADER];
        self.s.read_exact(&mut h)?;
        let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        ensure!(magic == SIMPLE_REPLY_MAGIC, "bad reply magic {magic:#x}");
        let cookie = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
        ensure!(
            cookie == u64::from(self.cookie),
            "a reply for another request (cookie {cookie})"
        );
        let err = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        ensure!(err == 0, "the server answered error {err}");
        let mut d = vec![0u8; if write { 0 } else { len as usize }];
        self.s.read_exact(&mut d)?;
        Ok(d)
    }

    /// Write `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let len = u32::try_from(data.len()).context("write too large")?;
        self.call(true, offset, len, data).map(|_| ())
    }

    /// Read `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.call(false, offset, len, &[])
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let mut out = Vec::new();
        NbdWire { bs: 0 }.goodbye(&mut out);
        let _ = self.s.write_all(&out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(magic: u32, error: u32, cookie: u64, data: &[u8]) -> Vec<u8> {
        let mut r = magic.to_be_bytes().to_vec();
        r.extend_from_slice(&error.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(data);
        r
    }

    #[test]
    fn requests_and_replies() {
        let mut w = NbdWire { bs: 512 };
        let mut out = Vec::new();
        let r = Req {
            slot: 2,
            write: true,
            offset: 4096,
            len: 512,
        };
        w.request(&r, &[7; 512], &mut out);
        assert_eq!(out.len(), REQUEST_HEADER + 512);
        assert_eq!(&out[0..4], &REQUEST_MAGIC.to_be_bytes());
        assert_eq!(&out[6..8], &CMD_WRITE.to_be_bytes());
        assert_eq!(&out[8..16], &2u64.to_be_bytes());
        assert_eq!(&out[16..24], &4096u64.to_be_bytes());
        let slots = Slots::with_busy(512, &[(1, false), (2, true)]);
        let rd = reply(SIMPLE_REPLY_MAGIC, 0, 1, &[5; 512]);
        assert_eq!(
            w.parse(&rd[..100], &slots, &mut out).unwrap(),
            None,
            "partial data"
        );
        let p = w.parse(&rd, &slots, &mut out).unwrap().unwrap();
        assert_eq!(
            (p.used, p.slot, p.data, p.done),
            (528, Some(1), Some((0, 16..528)), Some(0))
        );
        // A failed read carries no data; a write's reply never does.
        let p = w.parse(&reply(SIMPLE_REPLY_MAGIC, 5, 1, &[]), &slots, &mut out);
        assert_eq!(p.unwrap().unwrap().done, Some(5));
        let p = w.parse(&reply(SIMPLE_REPLY_MAGIC, 0, 2, &[]), &slots, &mut out);
        assert_eq!(p.unwrap().unwrap().used, 16);
        let mut e = |b: &[u8]| w.parse(b, &slots, &mut out).unwrap_err().to_string();
        assert!(e(&reply(SIMPLE_REPLY_MAGIC, 0, 3, &[])).contains("not outstanding"));
        assert!(e(&reply(SIMPLE_REPLY_MAGIC, 0, 1 << 40, &[])).contains("not outstanding"));
        assert!(e(&reply(STRUCTURED_REPLY_MAGIC, 0, 1, &[])).contains("structured"));
        assert!(e(&reply(1, 0, 1, &[])).contains("magic"));
    }
}
