//! What the randomised soak injects besides kills, cuts and freezes (netfault.rs): a forged
//! peer at a site's replication port, oversize requests (5 GiB of write-zeroes and unmap
//! as NBD requests of the largest size one can carry), and the bursts over a failing range.

use crate::netfault::{
    ERR_LEN, ERR_OFF, Rd, Wr, block, classify, nbd_io, site_name, try_connect, xorshift,
};
use crate::netns::{A, Hosts, sh};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use twinblk::frontend::nbd::proto::cmd;

/// A forged peer at site `x`'s replication port (reached from the test's namespace through
/// the site's front link): a random HELLO (sometimes for the real volume and geometry), a
/// random AUTH, or random bytes. Returns what it got back; panics if the site keeps the
/// connection open.
pub(crate) fn forge(h: &Hosts, x: usize, rnd: &mut u64) -> String {
    use twinblk::layer::mirror::wire;
    let (ip, via) = if x == A {
        (h.ip(3, 1), h.ip(1, 2))
    } else {
        (h.ip(3, 2), h.ip(2, 2))
    };
    sh(&["ip", "route", "replace", &format!("{ip}/32"), "via", &via]);
    let addr: SocketAddr = format!("{ip}:7789").parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .expect("connect to the replication port");
    let mut out = Vec::new();
    let r = xorshift(rnd);
    let what = if r.is_multiple_of(5) {
        for _ in 0..(r >> 8) % 300 {
            out.push(xorshift(rnd) as u8);
        }
        "random bytes"
    } else {
        let mut nonce = [0u8; wire::NONCE];
        for b in &mut nonce {
            *b = xorshift(rnd) as u8;
        }
        let size = if r.is_multiple_of(3) {
            xorshift(rnd)
        } else {
            32 << 20
        };
        let name = if r.is_multiple_of(7) { "volX" } else { "vol0" };
        let mut hd = wire::Header::new(wire::Type::Hello);
        hd.id = (xorshift(rnd) % 8) as u32;
        hd.seq = xorshift(rnd);
        wire::encode(&mut out, &hd, &wire::encode_hello(size, 4096, &nonce, name));
        let proof: Vec<u8> = (0..wire::PROOF).map(|_| xorshift(rnd) as u8).collect();
        wire::encode(&mut out, &wire::Header::new(wire::Type::Auth), &proof);
        "HELLO + AUTH"
    };
    let _ = s.write_all(&out);
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let mut types = Vec::new();
    let mut at = 0;
    while let wire::Decoded::Msg(hd, p) = wire::decode(&got[at..]) {
        types.push(format!("{:?}", hd.ty));
        at += p.end;
    }
    assert!(
        closed,
        "site {} kept a forged peer's connection ({what}) open for {:?}; it sent {types:?}",
        site_name(x),
        t.elapsed()
    );
    assert!(
        !types.iter().any(|t| t != "Welcome" && t != "Refuse"),
        "site {} sent a forged peer {types:?}",
        site_name(x)
    );
    format!("{what}: answered {types:?}, closed after {:?}", t.elapsed())
}

/// Oversize requests at `addr`: write-zeroes and unmap of 5 GiB each, as two NBD requests
/// (4 GiB - 4 KiB, the most one request can carry, and the rest), in random order.
pub(crate) fn oversize(addr: SocketAddr, rnd: &mut u64) -> String {
    let mut s = try_connect(addr).expect("connect for the oversize requests");
    let start = 64u64 << 20;
    let first = 0xFFFF_F000u32;
    let rest = ((5u64 << 30) - first as u64) as u32;
    let mut kinds = [cmd::WRITE_ZEROES, cmd::TRIM];
    if xorshift(rnd).is_multiple_of(2) {
        kinds.reverse();
    }
    let mut said = Vec::new();
    for k in kinds {
        for (off, len) in [(start, first), (start + first as u64, rest)] {
            let t = Instant::now();
            let e = nbd_io(&mut s, k, off, len, &[], None).expect("oversize request answered");
            assert_eq!(
                e,
                0,
                "{} of {len} bytes at {off} failed",
                if k == cmd::TRIM {
                    "trim"
                } else {
                    "write-zeroes"
                }
            );
            said.push(format!(
                "{}:{:?}",
                if k == cmd::TRIM { "trim" } else { "zero" },
                t.elapsed()
            ));
        }
    }
    said.join(" ")
}

/// The markers the oversize requests must clear (written before them).
pub(crate) const MARKERS: [u64; 3] = [64 << 20, (2 << 30) + 8192, (64 << 20) + (5 << 30) - 4096];

/// A burst of 4 KiB writes over the DiskErr/ReadErr range at `addr` (seeds from `seed`),
/// logged in `log`: how many were acknowledged and how many failed.
pub(crate) fn write_burst(addr: SocketAddr, seed: u64, log: &mut Vec<Wr>) -> (usize, usize) {
    let mut c = try_connect(addr).unwrap();
    let (mut ok, mut failed) = (0, 0);
    for i in 0..(ERR_LEN / 4096) {
        let off = ERR_OFF + i * 4096;
        let seed = seed + i;
        let issued = Instant::now();
        let e = nbd_io(&mut c, cmd::WRITE, off, 4096, &block(seed, off), None)
            .expect("write over the failing range answered");
        let acked = (e == 0).then(Instant::now);
        if e == 0 {
            ok += 1;
        } else {
            failed += 1;
        }
        log.push(Wr {
            off,
            seed,
            issued,
            acked,
        });
    }
    (ok, failed)
}

/// The range read back at site `site` (`addr`): the reads that returned data logged in `log`
/// (checked with the readers'); how many returned data and how many failed.
pub(crate) fn read_burst(addr: SocketAddr, site: usize, log: &mut Vec<Rd>) -> (usize, usize) {
    let (mut got, mut failed) = (0, 0);
    let mut d = vec![0u8; 4096];
    let Some(mut c) = try_connect(addr) else {
        return (0, 0);
    };
    for i in 0..(ERR_LEN / 4096) {
        let off = ERR_OFF + i * 4096;
        let issued = Instant::now();
        match nbd_io(&mut c, cmd::READ, off, 4096, &[], Some(&mut d)) {
            Ok(0) => {
                got += 1;
                log.push(Rd {
                    site,
                    off,
                    seed: classify(&d, off),
                    issued,
                    done: Instant::now(),
                });
            }
            Ok(_) => failed += 1,
            Err(_) => break,
        }
    }
    (got, failed)
}
