//! NBD wire-format micro-benchmarks: request parsing and reply encoding.
//!
//! - `nbd_parse/*`: `parse_request` run the way a connection runs it over its receive buffer
//!   (parse a header, skip the WRITE payload, repeat) across many back-to-back requests;
//!   throughput is requests parsed per second.
//! - `nbd_encode/*`: `put_simple_reply` / `put_chunk_header` appended to a reused `Vec`
//!   (cleared, never reallocated); throughput is headers encoded per second.
//!
//! Run: `cargo bench -p twinblk-benches --bench nbd_parser`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use twinblk::frontend::nbd::proto::{
    CHUNK_HEADER_LEN, REQUEST_MAGIC, SIMPLE_REPLY_LEN, chunk, cmd, parse_request, put_chunk_header,
    put_simple_reply,
};

/// Requests in each parse buffer.
const REQUESTS: usize = 1024;
/// Replies encoded per iteration.
const REPLIES: usize = 1024;
/// I/O size of every request.
const IO_SIZE: u32 = 4096;

fn put_request(out: &mut Vec<u8>, kind: u16, cookie: u64, offset: u64, len: u32) {
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    if kind == cmd::WRITE {
        out.resize(out.len() + len as usize, 0xa5);
    }
}

/// `REQUESTS` back-to-back 4 KiB requests; `write_every` = 2 alternates WRITE and READ,
/// 0 makes them all READs (headers only, densely packed).
fn request_stream(write_every: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for i in 0..REQUESTS {
        let kind = if write_every != 0 && i % write_every == 0 {
            cmd::WRITE
        } else {
            cmd::READ
        };
        put_request(&mut b, kind, i as u64, (i as u64) * IO_SIZE as u64, IO_SIZE);
    }
    b
}

/// Parse every request in `b` as a server would; returns (requests, sum of lengths).
fn parse_all(b: &[u8]) -> (usize, u64) {
    let mut at = 0;
    let mut n = 0;
    let mut sum = 0u64;
    while let Ok(Some((req, used))) = parse_request(&b[at..]) {
        at += used + req.payload_len();
        sum = sum.wrapping_add(req.len as u64 ^ req.cookie);
        n += 1;
    }
    (n, sum)
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("nbd_parse");
    g.throughput(Throughput::Elements(REQUESTS as u64));
    for (name, write_every) in [("write_read_4k", 2), ("read_4k", 0)] {
        let buf = request_stream(write_every);
        assert_eq!(parse_all(&buf).0, REQUESTS);
        g.bench_function(name, |b| b.iter(|| parse_all(black_box(&buf))));
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("nbd_encode");
    g.throughput(Throughput::Elements(REPLIES as u64));
    let mut out = Vec::with_capacity(REPLIES * CHUNK_HEADER_LEN.max(SIMPLE_REPLY_LEN));
    g.bench_function("put_simple_reply", |b| {
        b.iter(|| {
            out.clear();
            for i in 0..REPLIES as u64 {
                put_simple_reply(&mut out, black_box(0), black_box(i));
            }
            black_box(out.len())
        })
    });
    g.bench_function("put_chunk_header", |b| {
        b.iter(|| {
            out.clear();
            for i in 0..REPLIES as u64 {
                put_chunk_header(
                    &mut out,
                    black_box(chunk::FLAG_DONE),
                    black_box(chunk::OFFSET_DATA),
                    black_box(i),
                    black_box(IO_SIZE + 8),
                );
            }
            black_box(out.len())
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = parse, encode
}
criterion_main!(benches);
