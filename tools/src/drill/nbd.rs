//! A minimal blocking NBD client for the drill's load: fixed newstyle negotiation with
//! `NBD_OPT_GO`, then simple replies only (no structured replies), one request at a time.
//!
//! Model: one TCP connection per writer; a request is sent and its reply awaited before the
//! next (queue depth 1), so a reply's cookie must be the request's. Every read and write on
//! the socket has the timeout given at connect: a site that stops answering (cut off, or a
//! held write) shows as an error after at most that long, never as a hang.
//!
//! Invariant: a write is reported acknowledged only when the server's simple reply with the
//! same cookie and error 0 was read; anything else (an error number, a timeout, a closed
//! connection, a malformed reply) is an error, and the connection must then be dropped.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
/// Option replies read at most before the `ACK` (a server sends a handful of `INFO`s).
const MAX_OPTION_REPLIES: usize = 64;
/// Largest option reply payload accepted.
const MAX_OPTION_REPLY: u32 = 64 << 10;

/// Why an NBD operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed or timed out.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server said something this client does not expect.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server answered the request with an NBD error number.
    #[error("the server answered error {0}")]
    Errno(u32),
}

/// A connection in transmission phase.
pub struct NbdClient {
    s: TcpStream,
    size: u64,
    cookie: u64,
}

impl NbdClient {
    /// Connect to `addr` (`HOST:PORT`) and open `export`; every socket operation is bounded
    /// by `timeout`.
    pub fn connect(addr: &str, export: &str, timeout: Duration) -> Result<NbdClient, NbdError> {
        let sa = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| NbdError::Protocol(format!("{addr}: no address")))?;
        let mut s = TcpStream::connect_timeout(&sa, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let _ = s.set_nodelay(true);
        let mut hdr = [0u8; 18];
        s.read_exact(&mut hdr)?;
        if be64(&hdr[0..8]) != NBDMAGIC || be64(&hdr[8..16]) != IHAVEOPT {
            return Err(NbdError::Protocol("not a newstyle NBD server".into()));
        }
        let flags = u16::from_be_bytes([hdr[16], hdr[17]]);
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(NbdError::Protocol(
                "the server is not fixed newstyle".into(),
            ));
        }
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
        let name = export.as_bytes();
        let name_len = u32::try_from(name.len())
            .ok()
            .filter(|n| *n <= 4096)
            .ok_or_else(|| NbdError::Protocol("export name too long".into()))?;
        let mut req = Vec::with_capacity(32 + name.len());
        req.extend_from_slice(&client_flags.to_be_bytes());
        req.extend_from_slice(&IHAVEOPT.to_be_bytes());
        req.extend_from_slice(&OPT_GO.to_be_bytes());
        req.extend_from_slice(&(4 + name_len + 2).to_be_bytes());
        req.extend_from_slice(&name_len.to_be_bytes());
        req.extend_from_slice(name);
        req.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&req)?;
        let mut size = None;
        for _ in 0..MAX_OPTION_REPLIES {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            if be64(&h[0..8]) != OPT_REPLY_MAGIC {
                return Err(NbdError::Protocol("bad option reply magic".into()));
            }
            let kind = be32(&h[12..16]);
            let len = be32(&h[16..20]);
            if len > MAX_OPTION_REPLY {
                return Err(NbdError::Protocol(format!("option reply of {len} bytes")));
            }
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data)?;
            if kind & 0x8000_0000 != 0 {
                return Err(NbdError::Protocol(format!(
                    "export {export:?} refused (option error {kind:#x}): {}",
                    String::from_utf8_lossy(&data)
                )));
            }
            match kind {
                REP_INFO
                    if data.len() >= 12
                        && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT =>
                {
                    size = Some(be64(&data[2..10]));
                }
                REP_ACK => {
                    let size = size.ok_or_else(|| {
                        NbdError::Protocol("GO acknowledged without the export's size".into())
                    })?;
                    return Ok(NbdClient { s, size, cookie: 0 });
                }
                _ => {}
            }
        }
        Err(NbdError::Protocol("no ACK to GO".into()))
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn request(&mut self, cmd: u16, offset: u64, len: u32, data: &[u8]) -> Result<u64, NbdError> {
        self.cookie = self.cookie.wrapping_add(1);
        let mut r = Vec::with_capacity(28 + data.len());
        r.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&cmd.to_be_bytes());
        r.extend_from_slice(&self.cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(data);
        self.s.write_all(&r)?;
        Ok(self.cookie)
    }

    fn reply(&mut self, cookie: u64) -> Result<(), NbdError> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        if be32(&h[0..4]) != SIMPLE_REPLY_MAGIC {
            return Err(NbdError::Protocol("bad reply magic".into()));
        }
        if be64(&h[8..16]) != cookie {
            return Err(NbdError::Protocol("reply for another request".into()));
        }
        match be32(&h[4..8]) {
            0 => Ok(()),
            e => Err(NbdError::Errno(e)),
        }
    }

    /// Write `data` at `offset`; Ok only when the server acknowledged it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        let len =
            u32::try_from(data.len()).map_err(|_| NbdError::Protocol("write too long".into()))?;
        let c = self.request(CMD_WRITE, offset, len, data)?;
        self.reply(c)
    }

    /// Read `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, NbdError> {
        let c = self.request(CMD_READ, offset, len, &[])?;
        self.reply(c)?;
        let mut buf = vec![0u8; len as usize];
        self.s.read_exact(&mut buf)?;
        Ok(buf)
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        // A polite disconnect; the server may already be gone.
        let _ = self.request(CMD_DISC, 0, 0, &[]);
    }
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}
