//! The hosts registry: which initiator connections the reactors serve, for the control
//! socket's `host_list` (docs/control.md).
//!
//! Model: a front end's connection registers one [`HostRecord`] once its host is known (NBD:
//! an export was chosen; NVMe/TCP: a Connect was accepted; iSCSI: a normal session's login
//! completed) and keeps the [`HostHandle`]; the record leaves the registry when the handle is
//! dropped (the connection drops it when it closes, or the reactor drops the connection once
//! it is done). The runtime never interprets a record: the front end names its protocol and
//! identities.
//!
//! Invariants:
//! - The registry's mutex is taken at registration, at removal and by the control thread's
//!   listing, never per I/O; a poisoned lock is recovered, never a panic.
//! - The one value that changes per I/O, the requests in flight, is an atomic the connection
//!   stores at most once per reactor turn (relaxed): a listing may trail the connection by a
//!   turn, and a record is only ever read whole by the control thread.
//! - The volumes a connection reaches change only by a run-time change of what it connected
//!   to (an NVMe namespace added or removed while hosts stay connected): the control thread
//!   sets them under the record's own mutex, which no I/O path takes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a connection says about itself (fixed at registration, except the requests in flight
/// and the volumes it reaches).
#[derive(Debug)]
pub struct HostRecord {
    /// Protocol: `nbd`, `nvmf`, `iscsi`.
    pub proto: &'static str,
    /// The reactor serving the connection.
    pub reactor: usize,
    /// The connection's key on that reactor.
    pub conn: u32,
    /// The initiator's address (`None`: the socket had none to give).
    pub peer: Option<SocketAddr>,
    /// The host's identity, where the protocol carries one: the NVMe host NQN, the iSCSI
    /// initiator name (NBD has none).
    pub host: Option<String>,
    /// What the host connected to: the NVMe subsystem NQN, the iSCSI target name, the NBD
    /// export name.
    pub target: String,
    /// The volumes the connection reaches (indexes into the runtime's volumes): see
    /// [`HostRecord::volumes`].
    volumes: Mutex<Vec<usize>>,
    /// NVMe/TCP: the queue id (0: the admin queue).
    pub queue: Option<u16>,
    /// NVMe/TCP: the controller id the queue belongs to.
    pub controller: Option<u16>,
    /// The site the configuration's host list places the host at (`None`: not listed).
    pub site: Option<String>,
    /// Requests in flight, as last published by the connection.
    inflight: AtomicU32,
}

impl HostRecord {
    /// A record with nothing in flight.
    pub fn new(proto: &'static str, reactor: usize, conn: u32, target: String) -> Self {
        Self {
            proto,
            reactor,
            conn,
            peer: None,
            host: None,
            target,
            volumes: Mutex::new(Vec::new()),
            queue: None,
            controller: None,
            site: None,
            inflight: AtomicU32::new(0),
        }
    }

    /// Requests in flight, as last published.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// The volumes the connection reaches now (indexes into the runtime's volumes).
    pub fn volumes(&self) -> Vec<usize> {
        lock_vols(&self.volumes).clone()
    }

    /// Whether the connection reaches volume index `vol` now.
    pub fn reaches(&self, vol: usize) -> bool {
        lock_vols(&self.volumes).contains(&vol)
    }

    /// Set the volumes the connection reaches: at registration, and when a run-time change
    /// of its target moved them (never per I/O).
    pub fn set_volumes(&self, vols: Vec<usize>) {
        *lock_vols(&self.volumes) = vols;
    }
}

fn lock_vols(m: &Mutex<Vec<usize>>) -> MutexGuard<'_, Vec<usize>> {
    // One assignment per change: a poisoned list is still whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The daemon's registry of connected hosts.
#[derive(Default)]
pub struct Hosts {
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, Arc<HostRecord>>>,
}

impl Hosts {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<HostRecord>>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole (every
        // change is one insert or one remove): keep using it.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register `rec`; it stays listed until the handle is dropped.
    pub fn register(self: &Arc<Self>, rec: HostRecord) -> HostHandle {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let rec = Arc::new(rec);
        self.lock().insert(id, Arc::clone(&rec));
        HostHandle {
            hosts: Arc::clone(self),
            id,
            rec,
        }
    }

    /// Every record, by registration id (ascending: oldest first).
    pub fn list(&self) -> Vec<(u64, Arc<HostRecord>)> {
        self.lock()
            .iter()
            .map(|(&id, r)| (id, Arc::clone(r)))
            .collect()
    }

    /// Records listed.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No record is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's registration: dropping it removes the record.
pub struct HostHandle {
    hosts: Arc<Hosts>,
    id: u64,
    rec: Arc<HostRecord>,
}

impl HostHandle {
    /// Publish the requests now in flight (call at most once per turn, e.g. in `flush`).
    pub fn set_inflight(&self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if self.rec.inflight.load(Ordering::Relaxed) != n {
            self.rec.inflight.store(n, Ordering::Relaxed);
        }
    }

    /// The registration id (the `id` of `host_list`).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for HostHandle {
    fn drop(&mut self) {
        self.hosts.lock().remove(&self.id);
    }
}

impl std::fmt::Debug for HostHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostHandle").field("id", &self.id).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_listed_until_its_handle_is_dropped() {
        let hosts = Arc::new(Hosts::default());
        let r = HostRecord::new("nbd", 1, 7, "vol0".into());
        r.set_volumes(vec![0]);
        let a = hosts.register(r);
        let b = hosts.register(HostRecord::new("nvmf", 0, 3, "nqn.x".into()));
        a.set_inflight(5);
        let l = hosts.list();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].0, a.id());
        assert_eq!(l[0].1.proto, "nbd");
        assert_eq!(l[0].1.inflight(), 5);
        assert_eq!(l[1].1.proto, "nvmf");
        drop(a);
        let l = hosts.list();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0, b.id());
        drop(b);
        assert!(hosts.is_empty());
    }
}
