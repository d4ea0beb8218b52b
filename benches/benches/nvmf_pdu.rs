//! NVMe/TCP wire-format micro-benchmarks: PDU parsing and response encoding.
//!
//! - `nvmf_parse/*`: `pdu::parse` run the way a queue runs it over its receive buffer (parse
//!   a PDU, step over it, repeat) across many back-to-back command capsules: 4 KiB READ
//!   capsules (header only) and 4 KiB WRITE capsules (in-capsule data), with and without
//!   header and data digests (CRC32C); throughput is capsules parsed per second.
//! - `nvmf_encode/*`: a CapsuleResp, and a 4 KiB C2HData with SUCCESS, appended to a reused
//!   `Vec` (cleared, never reallocated), with and without digests; throughput is PDUs encoded
//!   per second.
//!
//! Run: `cargo bench -p twinblk-benches --bench nvmf_pdu`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use twinblk::frontend::nvmf::cmd::{Status, cqe};
use twinblk::frontend::nvmf::pdu::{Digests, parse, put_c2h_data, put_rsp};

/// Capsules in each parse buffer.
const CAPSULES: usize = 1024;
/// PDUs encoded per iteration.
const PDUS: usize = 1024;
/// I/O size.
const IO_SIZE: usize = 4096;

fn capsule(out: &mut Vec<u8>, write: bool, dg: Digests) {
    let hd = if dg.header { 4 } else { 0 };
    let data = if write { IO_SIZE } else { 0 };
    let dd = if dg.data && write { 4 } else { 0 };
    let pdo = if write { 72 + hd } else { 0 };
    let mut flags = 0u8;
    if dg.header {
        flags |= 1;
    }
    if dd != 0 {
        flags |= 2;
    }
    let start = out.len();
    out.extend_from_slice(&[4, flags, 72, pdo as u8]);
    out.extend_from_slice(&((72 + hd + data + dd) as u32).to_le_bytes());
    out.resize(start + 72, 0);
    out[start + 8] = if write { 0x01 } else { 0x02 };
    if dg.header {
        let c = twinblk::checksum::crc32c(&out[start..start + 72]);
        out.extend_from_slice(&c.to_le_bytes());
    }
    if write {
        let d = start + 72 + hd;
        out.resize(d + IO_SIZE, 0xa5);
        if dd != 0 {
            let c = twinblk::checksum::crc32c(&out[d..d + IO_SIZE]);
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
}

fn stream(write: bool, dg: Digests) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..CAPSULES {
        capsule(&mut b, write, dg);
    }
    b
}

fn parse_all(b: &[u8], dg: Digests) -> usize {
    let mut at = 0;
    let mut n = 0;
    while let Ok(Some((p, used))) = parse(&b[at..], dg, 65536) {
        black_box(p.data.len());
        at += used;
        n += 1;
    }
    n
}

fn bench(c: &mut Criterion) {
    let plain = Digests::default();
    let digests = Digests {
        header: true,
        data: true,
    };
    let mut g = c.benchmark_group("nvmf_parse");
    g.throughput(Throughput::Elements(CAPSULES as u64));
    for (name, write, dg) in [
        ("read_capsules", false, plain),
        ("read_capsules_hdgst", false, digests),
        ("write_4k_capsules", true, plain),
        ("write_4k_capsules_digests", true, digests),
    ] {
        let b = stream(write, dg);
        assert_eq!(parse_all(&b, dg), CAPSULES);
        g.bench_function(name, |bn| bn.iter(|| parse_all(black_box(&b), dg)));
    }
    g.finish();

    let mut g = c.benchmark_group("nvmf_encode");
    g.throughput(Throughput::Elements(PDUS as u64));
    let data = vec![0x5au8; IO_SIZE];
    let mut out = Vec::with_capacity(PDUS * (IO_SIZE + 64));
    for (name, dg) in [("plain", plain), ("digests", digests)] {
        g.bench_function(format!("rsp_{name}"), |bn| {
            bn.iter(|| {
                out.clear();
                for i in 0..PDUS {
                    let c = cqe(0, i as u16, 1, i as u16, Status::SUCCESS);
                    put_rsp(&mut out, &c, dg);
                }
                black_box(out.len())
            })
        });
        g.bench_function(format!("c2h_4k_{name}"), |bn| {
            bn.iter(|| {
                out.clear();
                for i in 0..PDUS {
                    put_c2h_data(&mut out, i as u16, 0, &data, true, dg, 4);
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
