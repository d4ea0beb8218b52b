//! CDP site time: the cost of one reading (`clock::now`, taken for every journal record on
//! the reactor) against a plain monotonic reading plus an offset (what a reading cost before
//! site time looked for steps of the wall clock: layer/cdp/clock.rs).
//!
//! - `site_time/now`: `twinblk::layer::cdp::clock::now()`.
//! - `site_time/monotonic_plus_offset`: `clock_gettime(CLOCK_MONOTONIC)` plus a relaxed
//!   atomic load, the floor.
//!
//! Run: `cargo bench -p twinblk-benches --bench cdp_clock`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

static OFFSET: AtomicU64 = AtomicU64::new(1);

fn monotonic_plus_offset() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64 + OFFSET.load(Ordering::Relaxed)
}

fn site_time(c: &mut Criterion) {
    let mut g = c.benchmark_group("site_time");
    g.bench_function("now", |b| {
        b.iter(|| black_box(twinblk::layer::cdp::clock::now()))
    });
    g.bench_function("monotonic_plus_offset", |b| {
        b.iter(|| black_box(monotonic_plus_offset()))
    });
    g.finish();
}

criterion_group!(benches, site_time);
criterion_main!(benches);
