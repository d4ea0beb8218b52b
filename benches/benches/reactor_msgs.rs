//! Cross-reactor message throughput: a daemon with two pinned reactors (cores 0 and 1), no
//! listeners, no volumes, no control socket; the bench thread sends `Msg::Nop` to reactor 1's
//! mailbox, `batch` at a time, and waits until reactor 1's published `msgs` counter has grown
//! by `batch` (counters are published once per loop turn, so each batch also includes up to one
//! turn of publication delay). Throughput is messages per second.
//!
//! Variants: wait policy `poll`, `adaptive` and `interrupt` (the latter measures the eventfd
//! wake-up path: the reactor blocks in `io_uring_enter` between batches and the first send of a
//! batch writes its eventfd), each with a batch of 1 (one round trip per message) and 256.
//!
//! The bench thread is not pinned; with `poll` both reactors spin on both cores of a 2-core
//! machine, so the sender time-shares a core with a spinning reactor.
//!
//! Run: `cargo bench -p twinblk-benches --bench reactor_msgs`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use twinblk::control::config::Wait;
use twinblk::runtime::Msg;
use twinblk::{Config, Daemon};

/// Reactor the messages go to.
const TARGET: usize = 1;
/// Give up on a batch after this long (a lost wake-up would otherwise hang the bench).
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

fn start(wait: Wait) -> Daemon {
    let mut cfg = Config::default();
    cfg.nbd.listen = vec![];
    cfg.nvmf.listen = vec![];
    cfg.volumes = vec![];
    cfg.control.socket = PathBuf::new();
    cfg.reactor.cores = vec![0, 1];
    cfg.reactor.wait = wait;
    cfg.reactor.pin = true;
    cfg.validate().expect("bench config is valid");
    Daemon::start(&cfg).expect("daemon starts (needs io_uring and cores 0 and 1)")
}

/// Send `batch` Nops to reactor `TARGET` and wait until it has counted all of them.
fn send_batch(d: &Daemon, batch: u64, expected: &mut u64) {
    let shared = d.shared();
    let mailbox = &shared.mailboxes[TARGET];
    for _ in 0..batch {
        mailbox.send(Msg::Nop);
    }
    *expected += batch;
    let stats = &shared.stats[TARGET];
    let t0 = Instant::now();
    while stats.snapshot().msgs < *expected {
        // Yield rather than spin: on two cores the reactors need the CPU more than we do.
        std::thread::yield_now();
        assert!(
            t0.elapsed() < BATCH_TIMEOUT,
            "reactor {TARGET} counted {} of {} messages after {BATCH_TIMEOUT:?}",
            stats.snapshot().msgs,
            *expected
        );
    }
}

fn msgs(c: &mut Criterion) {
    let mut g = c.benchmark_group("reactor_msgs");
    for (name, wait) in [
        ("poll", Wait::Poll),
        ("adaptive", Wait::Adaptive),
        ("interrupt", Wait::Interrupt),
    ] {
        let d = start(wait);
        let mut expected = d.shared().stats[TARGET].snapshot().msgs;
        for batch in [1u64, 256] {
            g.throughput(Throughput::Elements(batch));
            g.bench_function(BenchmarkId::new(name, batch), |b| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        send_batch(&d, batch, &mut expected);
                    }
                    t0.elapsed()
                })
            });
        }
        drop(d); // stops and joins both reactors before the next policy starts
    }
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
    targets = msgs
}
criterion_main!(benches);
