//! What a write costs a mirror engine serving alone (survivor, no peer), on a 1 GiB and on a
//! 1 TiB volume: the survivor records every write's regions in its dirty map and publishes the
//! dirty byte count, which must not depend on the volume's size.
//!
//! The replica is a null device (every write completes at once, nothing is stored), so the
//! 1 TiB volume allocates only the engine's own dirty map (one bit per 4 KiB: 32 MiB, at the
//! first write). Writes of 4 KiB cycle over 4096 offsets spread across the volume, so each
//! iteration sets a bit that may or may not be set already, as in steady state.
//!
//! - `mirror_survivor/write_4k/1GiB` and `.../1TiB`: one `Engine::submit` of a 4 KiB write
//!   and its completion, the 4096 offsets spread over the whole volume (on 1 TiB 256 MiB
//!   apart: each write touches its own cache line and page of the 32 MiB map, a working set
//!   the caches and TLB of the machine do not hold; on 1 GiB they share 512 lines).
//! - `mirror_survivor/write_4k_first_gib/1GiB` and `.../1TiB`: the same write with the same
//!   4096 offsets (spread over the first GiB) on both volumes, so the two differ only in the
//!   volume's size: what the engine's cost per write owes to the size alone.
//! - `mirror_survivor/old_popcount/1TiB`: for reference, what every survivor write cost before
//!   the dirty count was kept incrementally (a popcount of the whole 1 TiB bitmap).
//!
//! Run: `cargo bench -p twinblk-benches --bench mirror_survivor`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use twinblk::bdev::{Channel, ReadStart, Start};
use twinblk::layer::mirror::engine::{Engine, EngineConfig, Mode, Role, Update};
use twinblk::layer::mirror::state::{Persisted, save};
use twinblk::layer::mirror::stats::MirrorStats;
use twinblk::uring::{IoCx, IoTag};

const G: u64 = 4096;

/// A replica that completes everything at once and stores nothing.
struct Null;

impl Channel for Null {
    fn read(&mut self, _: &mut IoCx, _: IoTag, _: u64, _: u32) -> ReadStart<'_> {
        ReadStart::Ready(&[])
    }
    fn write(&mut self, _: &mut IoCx, _: IoTag, _: u64, _: &[u8], _: bool) -> Start {
        Start::Done(Ok(()))
    }
    fn flush(&mut self, _: &mut IoCx, _: IoTag) -> Start {
        Start::Done(Ok(()))
    }
    fn write_zeroes(&mut self, _: &mut IoCx, _: IoTag, _: u64, _: u64, _: bool) -> Start {
        Start::Done(Ok(()))
    }
    fn unmap(&mut self, _: &mut IoCx, _: IoTag, _: u64, _: u64, _: bool) -> Start {
        Start::Done(Ok(()))
    }
}

/// A survivor engine over a null replica of `size` bytes (restored from a survivor's state
/// file, as after a restart while serving alone).
fn survivor(size: u64, dir: &std::path::Path) -> Engine {
    let path = dir.join(format!("s{size}.state"));
    let p = Persisted {
        mode: 1,
        clean: true,
        epoch: 1,
        size,
        granularity: G,
        bitmap: Vec::new(),
        written: Vec::new(),
        led: true,
        suspect: Some(Vec::new()),
        identity: 0,
        leads: None,
        boot: 0,
        host_restarted: false,
        fenced_unanswered: None,
        fenced_denied: false,
    };
    save(&path, &p).expect("state file");
    let cfg = EngineConfig {
        name: "bench".into(),
        role: Role::Leader,
        size,
        block: 512,
        peer_timeout: Duration::from_secs(60),
        max_backlog: 1 << 30,
        peer_dead: Duration::from_secs(60),
        heartbeat: Duration::from_secs(1),
        failover: None,
        dirty_granularity: G,
        resync_rate: 1 << 30,
        state_file: Some(path),
        replica_data: Default::default(),
        replica_path: None,
        meta: None,
        actlog: Default::default(),
        boot_id: 0,
    };
    let mut e = Engine::new(cfg, Box::new(Null), 0, Arc::new(MirrorStats::default()));
    e.restore().expect("restore");
    assert_eq!(e.mode(), Mode::Survivor);
    e
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("twinblk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let data = vec![0xa5u8; 4096];
    let mut g = c.benchmark_group("mirror_survivor");
    for (name, size) in [("1GiB", 1u64 << 30), ("1TiB", 1u64 << 40)] {
        for (bench, stride) in [
            ("write_4k", size / 4096),
            ("write_4k_first_gib", (1u64 << 30) / 4096),
        ] {
            let mut e = survivor(size, &dir);
            let (mut i, mut n) = (0u64, 0u64);
            g.bench_function(BenchmarkId::new(bench, name), |b| {
                b.iter(|| {
                    i = (i + 1) % 4096;
                    n += 1;
                    let tag = IoTag { conn: 1, slot: 0 };
                    let r = e.submit(&mut io, 0, tag, Update::Write(&data), i * stride, false);
                    black_box(r);
                    black_box(e.done.pop());
                })
            });
            assert!(e.idle());
            // Every offset written sets its own region (none when the bench was filtered out).
            assert_eq!(e.dirty_bytes(), n.min(4096) * G);
        }
    }
    let words = vec![0x0101_0101_0101_0101u64; ((1u64 << 40) / G / 64) as usize];
    g.bench_function(BenchmarkId::new("old_popcount", "1TiB"), |b| {
        b.iter(|| {
            let bits: u64 = black_box(&words)
                .iter()
                .map(|w| u64::from(w.count_ones()))
                .sum();
            black_box(bits * G)
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
