//! Mirror link wire-format micro-benchmarks: what each replicated 4 KiB write costs in framing.
//!
//! - `mirror_wire/encode_write_4k`: `wire::encode` of a WRITE header plus 4 KiB payload into a
//!   reused `Vec` (cleared, never reallocated), CRC32C over both included; throughput is bytes.
//! - `mirror_wire/decode_write_4k`: `wire::decode` of back-to-back 4 KiB WRITE messages as the
//!   link runs it over its receive buffer (checksum verified); throughput is bytes.
//! - `mirror_wire/decode_ack`: header-only ACK messages (what batching saves); throughput is
//!   messages.
//!
//! Run: `cargo bench -p twinblk-benches --bench mirror_wire`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use twinblk::layer::mirror::wire::{self, Decoded, Header, Type};

const MSGS: usize = 256;

fn write_header(seq: u64) -> Header {
    Header {
        seq,
        offset: seq * 4096,
        count: 4096,
        ..Header::new(Type::Write)
    }
}

fn stream(ty: Type, payload: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let data = vec![0xa5u8; payload];
    for i in 0..MSGS as u64 {
        let h = if ty == Type::Write {
            write_header(i + 1)
        } else {
            Header {
                seq: i + 1,
                ..Header::new(ty)
            }
        };
        wire::encode(&mut out, &h, &data);
    }
    out
}

fn decode_all(buf: &[u8]) -> usize {
    let mut at = 0;
    let mut n = 0;
    while at < buf.len() {
        match wire::decode(&buf[at..]) {
            Decoded::Msg(_, r) => {
                at += r.end;
                n += 1;
            }
            _ => unreachable!("benchmark stream is well formed"),
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("mirror_wire");
    g.measurement_time(Duration::from_secs(3));
    let data = vec![0x5au8; 4096];
    let mut out = Vec::with_capacity(MSGS * (wire::HEADER + 4096));
    g.throughput(Throughput::Bytes((MSGS * (wire::HEADER + 4096)) as u64));
    g.bench_function("encode_write_4k", |b| {
        b.iter(|| {
            out.clear();
            for i in 0..MSGS as u64 {
                wire::encode(&mut out, &write_header(i + 1), black_box(&data));
            }
            black_box(out.len())
        })
    });
    let writes = stream(Type::Write, 4096);
    g.throughput(Throughput::Bytes(writes.len() as u64));
    g.bench_function("decode_write_4k", |b| {
        b.iter(|| black_box(decode_all(black_box(&writes))))
    });
    let acks = stream(Type::Ack, 0);
    g.throughput(Throughput::Elements(MSGS as u64));
    g.bench_function("decode_ack", |b| {
        b.iter(|| black_box(decode_all(black_box(&acks))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
