//! The runtime: reactors (one pinned thread per core, each owning an io_uring, run to
//! completion), the connections they drive, layers' pollers, acceptors and the mailboxes
//! between reactors.
//!
//! - [`reactor`]: the loop (reap, deliver mail, run pollers, flush, submit or sleep).
//! - [`conn`]: the [`Conn`] trait and the [`Env`] a connection sees.
//! - [`poller`]: layers' per-reactor work ([`Poller`], [`PollerSource`]).
//! - [`acceptor`]: listeners with their [`Acceptor`]s, and per-reactor [`Service`]s.
//! - [`mailbox`]: cross-reactor messages in the runtime's own vocabulary ([`Msg`]).
//! - [`hosts`]: the registry of connected hosts (front ends register, the control socket lists).
//! - [`stats`]: per-reactor counters.
//! - [`wait`]: a reactor's wait policy, changeable at run time (`reactor_set_wait`).
//! - [`volumes`]: the volume slots (stable indexes; volumes added and deleted at run time).
//! - [`restack`]: a served volume's stack changed at run time ([`Restack`], [`Msg::Restack`]).
//!
//! What the runtime knows nothing about: any protocol (NBD, NVMe-oF, iSCSI, the mirror's wire
//! format), any layer (mirror, CDP), path states (ANA/ALUA), reservations. A front end or layer
//! plugs in by registering an acceptor, a service or a poller source in [`Shared`] before the
//! reactors start, never by editing this module. Volumes are the one thing that changes after
//! the start: the control socket fills a free slot of the [`VolumeTable`] and asks every
//! reactor to open its channel ([`Msg::OpenVolume`]), and closes them the same way
//! ([`Msg::CloseVolume`]) before it frees the slot; a served volume's stack can change in
//! place ([`Msg::Restack`]: a layer's own [`Restack`] wraps or unwraps each reactor's
//! channel). It sits above the ring and the block devices and below transports, layers and
//! front ends, and imports nothing from them.

pub mod acceptor;
pub mod conn;
pub mod hosts;
pub mod mailbox;
pub mod poller;
pub mod reactor;
pub mod restack;
pub mod stats;
pub mod volumes;
pub mod wait;

pub use acceptor::{Acceptor, Listener, Service};
pub use conn::{Conn, Env, Note};
pub use mailbox::{Mailbox, Msg, NoteTo};
pub use poller::{AfterWork, Completion, PollCx, Poller, PollerSource, ReadData};
pub use reactor::{Reactor, RingSizes, STOP_DEADLINE, WaitPolicy};
pub use restack::{Restack, Restacked, restack_at};
pub use stats::{Counters, ReactorStats, VolCounters};
pub use volumes::VolumeTable;
pub use wait::WaitCell;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

/// Daemon-wide runtime state, complete before the first reactor starts and read-only after,
/// except the volume table (changed off the I/O path, see [`volumes`]).
pub struct Shared {
    /// Volume slots (index = channel index on every reactor). Reactors and front ends on
    /// them read their own copy ([`Env::vols`]), never this table, per I/O.
    pub volumes: VolumeTable,
    /// Listening sockets (accepted on reactor 0), each with its acceptor.
    pub listeners: Vec<Listener>,
    /// Services every reactor starts (index = [`NoteTo::Service`]).
    pub services: Vec<Arc<dyn Service>>,
    /// Layers' poller sources, asked by every reactor at start.
    pub pollers: Vec<Arc<dyn PollerSource>>,
    /// Every reactor's mailbox (index = reactor id).
    pub mailboxes: Vec<Arc<Mailbox>>,
    /// Every reactor's published counters.
    pub stats: Vec<Arc<ReactorStats>>,
    /// Reactors that have not yet drained their own connections while stopping; a reactor
    /// with a busy poller keeps serving other reactors' requests until this is zero.
    pub running: AtomicUsize,
    /// Connected hosts, registered by the front ends' connections (off the I/O path).
    pub hosts: Arc<hosts::Hosts>,
}

/// Pin the calling thread to `core`.
pub fn pin_to_core(core: usize) -> std::io::Result<()> {
    // (A core past CPU_SETSIZE gives no set: refused as the kernel refuses an empty one.)
    let set =
        Housekeeping::on(&[core]).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: passes a valid pointer to a cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set.0) };
    if rc != 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The CPUs a daemon's other threads (control socket, metrics, CDP helpers, the mirror's
/// persister and witness client) run on: those the calling thread may use less the reactors'
/// `cores`, so a pinned reactor's core is its own (SPDK's model: background work never
/// preempts a reactor). None when that leaves nothing (every CPU has a reactor): the threads
/// then run anywhere, as before.
#[derive(Clone, Copy)]
pub struct Housekeeping(libc::cpu_set_t);

impl Housekeeping {
    /// The calling thread's CPUs less `cores`; None if empty or if the affinity cannot be read.
    pub fn off(cores: &[usize]) -> Option<Housekeeping> {
        // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: fills the set of the size given for the calling thread.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return None;
        }
        for &c in cores {
            if c < libc::CPU_SETSIZE as usize {
                // SAFETY: writes inside `set`, `c` below CPU_SETSIZE.
                unsafe { libc::CPU_CLR(c, &mut set) };
            }
        }
        // SAFETY: reads `set`.
        (unsafe { libc::CPU_COUNT(&set) } > 0).then_some(Housekeeping(set))
    }

    /// Exactly `cpus` (`[reactor] background_cores`, validated against the machine's CPUs;
    /// or one reactor's core, [`pin_to_core`]); None if none of them is below `CPU_SETSIZE`.
    pub fn on(cpus: &[usize]) -> Option<Housekeeping> {
        // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cpus {
            if c < libc::CPU_SETSIZE as usize {
                // SAFETY: writes inside `set`, `c` below CPU_SETSIZE.
                unsafe { libc::CPU_SET(c, &mut set) };
            }
        }
        // SAFETY: reads `set`.
        (unsafe { libc::CPU_COUNT(&set) } > 0).then_some(Housekeeping(set))
    }

    /// Move the thread `t` (a running thread of this process) onto these CPUs.
    pub fn place(&self, t: libc::pthread_t) -> std::io::Result<()> {
        // SAFETY: `t` names a live thread (its JoinHandle is held by the caller); the set is
        // valid for the size given.
        let rc = unsafe {
            libc::pthread_setaffinity_np(t, std::mem::size_of::<libc::cpu_set_t>(), &self.0)
        };
        if rc != 0 {
            Err(std::io::Error::from_raw_os_error(rc))
        } else {
            Ok(())
        }
    }

    /// The CPUs, ascending.
    pub fn cpus(&self) -> Vec<usize> {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: reads `self.0`, the index below CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &self.0) })
            .collect()
    }
}

#[cfg(test)]
mod housekeeping_tests {
    use super::Housekeeping;
    use std::os::unix::thread::JoinHandleExt;

    /// The set leaves the reactors' cores out; a thread placed on it runs only there; with
    /// every CPU taken by reactors there is no set.
    #[test]
    fn housekeeping_leaves_the_reactor_cores_out_and_places_a_thread() {
        let all = Housekeeping::off(&[]).expect("this thread's CPUs").cpus();
        assert!(Housekeeping::off(&all).is_none(), "every CPU a reactor's");
        if all.len() < 2 {
            return; // one CPU: nothing to leave out
        }
        let h = Housekeeping::off(&all[..1]).unwrap();
        assert_eq!(h.cpus(), all[1..].to_vec());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _ = rx.recv();
            Housekeeping::off(&[]).unwrap().cpus()
        });
        h.place(t.as_pthread_t()).unwrap();
        tx.send(()).unwrap();
        assert_eq!(t.join().unwrap(), all[1..].to_vec());
    }
}
