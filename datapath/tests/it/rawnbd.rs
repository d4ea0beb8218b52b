//! A deliberately small NBD client for tests: it speaks the protocol byte by byte so tests can
//! also break it on purpose.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use twinblk::frontend::nbd::proto::{self, cmd, opt, rep};

pub struct Client {
    pub s: TcpStream,
    pub size: u64,
}

pub fn connect_raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

pub fn read_greeting(s: &mut TcpStream) {
    let mut g = [0u8; 18];
    s.read_exact(&mut g).expect("greeting");
    assert_eq!(&g[0..8], &proto::NBDMAGIC.to_be_bytes());
    assert_eq!(&g[8..16], &proto::IHAVEOPT.to_be_bytes());
}

/// Connect, read the greeting and answer with fixed-newstyle client flags.
pub fn fixed_newstyle(addr: SocketAddr) -> TcpStream {
    let mut s = connect_raw(addr);
    read_greeting(&mut s);
    s.write_all(&proto::FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
        .unwrap();
    s
}

/// An option header claiming `len` payload bytes (the caller decides what follows).
pub fn option_header(code: u32, len: u32) -> Vec<u8> {
    let mut b = proto::IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&code.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

pub fn send_option(s: &mut TcpStream, code: u32, data: &[u8]) {
    let mut b = option_header(code, data.len() as u32);
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
}

/// Read one option reply: (option, type, data).
pub fn read_option_reply(s: &mut TcpStream) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).expect("option reply");
    assert_eq!(&h[0..8], &proto::REPLY_MAGIC.to_be_bytes());
    let o = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let t = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let n = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut d = vec![0u8; n];
    s.read_exact(&mut d).unwrap();
    (o, t, d)
}

pub fn info_payload(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// True when the server closed the connection (EOF or reset) within the read timeout.
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

impl Client {
    /// Fixed newstyle, optional structured replies, then GO to `export`.
    pub fn connect(addr: SocketAddr, export: &str, structured: bool) -> Client {
        let mut s = connect_raw(addr);
        read_greeting(&mut s);
        s.write_all(&(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).to_be_bytes())
            .unwrap();
        if structured {
            send_option(&mut s, opt::STRUCTURED_REPLY, &[]);
            let (_, t, _) = read_option_reply(&mut s);
            assert_eq!(t, rep::ACK);
        }
        send_option(&mut s, opt::GO, &info_payload(export, &[]));
        let mut size = 0;
        loop {
            let (_, t, d) = read_option_reply(&mut s);
            if t == rep::INFO && u16::from_be_bytes([d[0], d[1]]) == 0 {
                size = u64::from_be_bytes(d[2..10].try_into().unwrap());
            }
            if t == rep::ACK {
                break;
            }
            assert!(t == rep::INFO, "GO failed with reply type {t:#x}");
        }
        Client { s, size }
    }

    pub fn send_request(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut b = Vec::with_capacity(28 + payload.len());
        b.extend_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
    }

    /// [`Client::send_request`] that reports a failed send instead of panicking (the server
    /// may be killed while a test sends).
    pub fn try_send_request(
        &mut self,
        kind: u16,
        cookie: u64,
        offset: u64,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut b = Vec::with_capacity(28 + payload.len());
        b.extend_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b)
    }

    /// Read one reply (simple, or a single structured chunk); returns (cookie, error, data).
    /// `read_len` is the data length of a simple READ reply.
    pub fn read_reply(&mut self, read_len: usize) -> (u64, u32, Vec<u8>) {
        let mut m = [0u8; 4];
        self.s.read_exact(&mut m).expect("reply magic");
        let magic = u32::from_be_bytes(m);
        if magic == proto::SIMPLE_REPLY_MAGIC {
            let mut h = [0u8; 12];
            self.s.read_exact(&mut h).unwrap();
            let err = u32::from_be_bytes(h[0..4].try_into().unwrap());
            let cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
            let mut d = vec![0u8; if err == 0 { read_len } else { 0 }];
            self.s.read_exact(&mut d).unwrap();
            return (cookie, err, d);
        }
        assert_eq!(magic, proto::STRUCTURED_REPLY_MAGIC, "unknown reply magic");
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        let kind = u16::from_be_bytes([h[2], h[3]]);
        let cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
        let n = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
        let mut d = vec![0u8; n];
        self.s.read_exact(&mut d).unwrap();
        match kind {
            proto::chunk::OFFSET_DATA => (cookie, 0, d[8..].to_vec()),
            proto::chunk::ERROR => (
                cookie,
                u32::from_be_bytes(d[0..4].try_into().unwrap()),
                Vec::new(),
            ),
            _ => (cookie, 0, Vec::new()),
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.send_request(cmd::WRITE, 0, 1, offset, data.len() as u32, data);
        self.read_reply(0).1
    }

    /// Flush: the NBD error (0: done).
    pub fn flush(&mut self) -> u32 {
        self.send_request(cmd::FLUSH, 0, 3, 0, 0, &[]);
        self.read_reply(0).1
    }

    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.send_request(cmd::READ, 0, 2, offset, len, &[]);
        let (_, e, d) = self.read_reply(len as usize);
        if e == 0 { Ok(d) } else { Err(e) }
    }

    /// The socket (tests that pipeline requests read replies themselves).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.s
    }

    pub fn disconnect(mut self) {
        self.send_request(cmd::DISC, 0, 3, 0, 0, &[]);
        assert!(
            closed_by_server(&mut self.s),
            "server did not close after DISC"
        );
    }
}
