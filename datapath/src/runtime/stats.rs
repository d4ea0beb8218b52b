//! Per-reactor counters.
//!
//! Model: the reactor counts in plain integers ([`Counters`]) and publishes them once per loop
//! turn with relaxed stores into its [`ReactorStats`]; the control plane reads the atomics.
//! No read-modify-write atomics, no shared cache line written by two threads (the wait-policy
//! cell, which the control thread writes, has its own cache lines: [`super::wait`]).

use super::wait::WaitCell;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The reactor's own running totals.
#[derive(Default, Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Loop turns.
    pub turns: u64,
    /// Nanoseconds in turns that did work.
    pub busy_ns: u64,
    /// Nanoseconds in turns that did none (spinning or blocked).
    pub idle_ns: u64,
    /// SQEs queued.
    pub sqes: u64,
    /// io_uring_enter calls made to submit or wait.
    pub enters: u64,
    /// CQEs reaped.
    pub cqes: u64,
    /// Block I/Os started by front ends.
    pub ios: u64,
    /// Bytes read by front ends.
    pub read_bytes: u64,
    /// Bytes written by front ends.
    pub write_bytes: u64,
    /// Cross-reactor messages received.
    pub msgs: u64,
    /// Connections accepted onto this reactor.
    pub conns_opened: u64,
    /// Connections closed on this reactor.
    pub conns_closed: u64,
    /// Protocol violations that closed a connection.
    pub violations: u64,
    /// Bounce buffers allocated (pool empty or request larger than a pool buffer).
    pub bounces: u64,
    /// Nanoseconds blocked in the ring (asleep, off the CPU); part of `idle_ns`. The reactor
    /// thread was on the CPU for about `busy_ns + idle_ns - sleep_ns`.
    pub sleep_ns: u64,
}

/// One reactor's counts for one volume.
#[derive(Default, Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct VolCounters {
    /// Operations started.
    pub ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Operations that failed.
    pub errors: u64,
}

impl VolCounters {
    /// Sum of two.
    pub fn add(&self, o: &VolCounters) -> VolCounters {
        VolCounters {
            ops: self.ops + o.ops,
            read_bytes: self.read_bytes + o.read_bytes,
            write_bytes: self.write_bytes + o.write_bytes,
            errors: self.errors + o.errors,
        }
    }
}

/// The published copy, one per reactor, padded to its own cache lines.
#[repr(align(128))]
#[derive(Default)]
pub struct ReactorStats {
    v: [AtomicU64; 15],
    vols: Vec<[AtomicU64; 4]>,
    /// Connections open now.
    pub open_conns: AtomicU64,
    /// The reactor's wait policy, asked for and running (its own cache lines).
    pub wait: WaitCell,
}

impl ReactorStats {
    /// Stats with room for `volumes` volumes.
    pub fn new(volumes: usize) -> Self {
        Self {
            vols: (0..volumes).map(|_| Default::default()).collect(),
            ..Default::default()
        }
    }

    /// Publish per-volume counts (owner only).
    pub fn publish_volumes(&self, vols: &[VolCounters]) {
        for (slot, v) in self.vols.iter().zip(vols) {
            slot[0].store(v.ops, Relaxed);
            slot[1].store(v.read_bytes, Relaxed);
            slot[2].store(v.write_bytes, Relaxed);
            slot[3].store(v.errors, Relaxed);
        }
    }

    /// Read per-volume counts.
    pub fn volumes(&self) -> Vec<VolCounters> {
        self.vols
            .iter()
            .map(|s| VolCounters {
                ops: s[0].load(Relaxed),
                read_bytes: s[1].load(Relaxed),
                write_bytes: s[2].load(Relaxed),
                errors: s[3].load(Relaxed),
            })
            .collect()
    }

    /// Publish `c` (owner only).
    pub fn publish(&self, c: &Counters) {
        let a = [
            c.turns,
            c.busy_ns,
            c.idle_ns,
            c.sqes,
            c.enters,
            c.cqes,
            c.ios,
            c.read_bytes,
            c.write_bytes,
            c.msgs,
            c.conns_opened,
            c.conns_closed,
            c.violations,
            c.bounces,
            c.sleep_ns,
        ];
        for (slot, v) in self.v.iter().zip(a) {
            slot.store(v, Relaxed);
        }
    }

    /// Read the last published values.
    pub fn snapshot(&self) -> Counters {
        let g = |i: usize| self.v[i].load(Relaxed);
        Counters {
            turns: g(0),
            busy_ns: g(1),
            idle_ns: g(2),
            sqes: g(3),
            enters: g(4),
            cqes: g(5),
            ios: g(6),
            read_bytes: g(7),
            write_bytes: g(8),
            msgs: g(9),
            conns_opened: g(10),
            conns_closed: g(11),
            violations: g(12),
            bounces: g(13),
            sleep_ns: g(14),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_snapshot_round_trips_every_field() {
        let s = ReactorStats::default();
        let c = Counters {
            turns: 1,
            busy_ns: 2,
            idle_ns: 3,
            sqes: 4,
            enters: 5,
            cqes: 6,
            ios: 7,
            read_bytes: 8,
            write_bytes: 9,
            msgs: 10,
            conns_opened: 11,
            conns_closed: 12,
            violations: 13,
            bounces: 14,
            sleep_ns: 15,
        };
        s.publish(&c);
        assert_eq!(s.snapshot(), c);
    }
}
