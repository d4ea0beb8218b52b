//! Volumes: a named stack of block-device layers.
//!
//! Model: a volume names the top of its stack (`device`); each layer wraps the one below it
//! and implements the same [`BlockDevice`] trait. Front ends only ever talk to `device`, so a
//! layer (error injection today; mirror and CDP later) is inserted by building the stack
//! differently, never by touching a front end.

use crate::bdev::{BlockDevice, DeviceInfo};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// How this site serves a volume to hosts, as its top layer publishes it. Front ends map it
/// to their own vocabulary (NVMe ANA states, SCSI ALUA target port group states); a volume
/// without such a layer is always [`PathState::Optimized`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PathState {
    /// The best path: I/O is served here at full speed.
    Optimized = 1,
    /// Served, but another path is better (e.g. writes take a round trip to the other site).
    NonOptimized = 2,
    /// Not served here: I/O fails with a path error, hosts use another path.
    Inaccessible = 3,
    /// Changing: hosts retry after a short while.
    Transitioning = 4,
}

impl PathState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Optimized,
            2 => Self::NonOptimized,
            4 => Self::Transitioning,
            _ => Self::Inaccessible,
        }
    }
}

/// A volume's published [`PathState`] and a count of its changes (lock-free: written by the
/// layer that decides it, read by every front end's queues), and who wants to be woken when it
/// changes ([`PathCell::watch`]: a front end whose hosts hear of changes without asking, as
/// NVMe's ANA change notice; the cell knows nothing of who they are).
pub struct PathCell {
    state: AtomicU8,
    changes: AtomicU64,
    /// Called after each change (under this lock only on a change or a (un)registration,
    /// never per I/O).
    watchers: Mutex<Vec<(u64, Wake)>>,
    next_watch: AtomicU64,
}

/// What a watcher of a [`PathCell`] runs after each change: quick, never blocking (it runs on
/// the thread that published the change, usually a reactor).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for PathCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathCell")
            .field("state", &self.get())
            .field("changes", &self.changes())
            .finish_non_exhaustive()
    }
}

/// A registration made by [`PathCell::watch`]; dropping it ends it.
#[derive(Debug)]
pub struct PathWatch {
    cell: Weak<PathCell>,
    id: u64,
}

impl PathWatch {
    /// Whether this watches `cell`.
    pub fn watches(&self, cell: &Arc<PathCell>) -> bool {
        std::ptr::eq(self.cell.as_ptr(), Arc::as_ptr(cell))
    }
}

impl Drop for PathWatch {
    fn drop(&mut self) {
        if let Some(c) = self.cell.upgrade() {
            c.lock_watchers().retain(|(id, _)| *id != self.id);
        }
    }
}

impl PathCell {
    /// A cell starting in `state`.
    pub fn new(state: PathState) -> Self {
        Self {
            state: AtomicU8::new(state as u8),
            changes: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            next_watch: AtomicU64::new(0),
        }
    }

    fn lock_watchers(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Wake)>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `wake` after every change of `cell` from now on, until the returned registration
    /// is dropped.
    pub fn watch(cell: &Arc<PathCell>, wake: Wake) -> PathWatch {
        let id = cell.next_watch.fetch_add(1, Ordering::Relaxed);
        cell.lock_watchers().push((id, wake));
        PathWatch {
            cell: Arc::downgrade(cell),
            id,
        }
    }

    /// The current state.
    pub fn get(&self) -> PathState {
        PathState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Publish `state`; true (and the change count moves) when it differs from the last one.
    /// One writer (the layer that decides the state, every reactor turn): a load first, so an
    /// unchanged state costs no locked instruction and leaves the line shared with readers.
    pub fn set(&self, state: PathState) -> bool {
        if self.state.load(Ordering::Acquire) == state as u8 {
            return false;
        }
        self.state.store(state as u8, Ordering::Release);
        self.changes.fetch_add(1, Ordering::Release);
        // Woken outside the lock (a watcher may register or drop a registration meanwhile).
        let wakes: Vec<Wake> = self
            .lock_watchers()
            .iter()
            .map(|(_, w)| Arc::clone(w))
            .collect();
        for w in wakes {
            w();
        }
        true
    }

    /// How many times the state changed (front ends compare it to tell hosts of changes).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }
}

/// A named volume.
pub struct Volume {
    /// Name (unique in the daemon).
    pub name: String,
    /// Top of the stack.
    pub device: Arc<dyn BlockDevice>,
    /// Facts of the top of the stack, read once.
    pub info: DeviceInfo,
    /// How this site serves the volume (published by its top layer).
    pub path: Arc<PathCell>,
    /// How the volume's other site serves it, as this site knows it (a two-site layer
    /// publishes it; `None`: the volume has no other site). Transitioning when not known.
    pub peer_path: Option<Arc<PathCell>>,
}

impl Volume {
    /// A volume over `device`, always served optimised.
    pub fn new(name: impl Into<String>, device: Arc<dyn BlockDevice>) -> Self {
        Self::with_path(name, device, Arc::new(PathCell::new(PathState::Optimized)))
    }

    /// A volume over `device` whose path state its top layer publishes in `path`.
    pub fn with_path(
        name: impl Into<String>,
        device: Arc<dyn BlockDevice>,
        path: Arc<PathCell>,
    ) -> Self {
        let info = device.info();
        Self {
            name: name.into(),
            device,
            info,
            path,
            peer_path: None,
        }
    }

    /// Whether the volume refuses every update (its stack's top says so): front ends
    /// advertise it read-only, whatever the layer that decides it.
    pub fn read_only(&self) -> bool {
        self.info.read_only
    }

    /// With the other site's path state as this site knows it, published in `peer`.
    pub fn with_peer_path(mut self, peer: Arc<PathCell>) -> Self {
        self.peer_path = Some(peer);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::{PathCell, PathState};

    #[test]
    fn a_path_cell_counts_only_real_changes() {
        let c = PathCell::new(PathState::Inaccessible);
        assert_eq!(c.get(), PathState::Inaccessible);
        assert!(c.set(PathState::Optimized));
        assert!(!c.set(PathState::Optimized));
        assert!(c.set(PathState::Transitioning));
        assert_eq!(c.get(), PathState::Transitioning);
        assert_eq!(c.changes(), 2);
    }

    #[test]
    fn a_watcher_is_woken_at_each_change_until_its_registration_is_dropped() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let c = Arc::new(PathCell::new(PathState::Optimized));
        let woken = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&woken);
        let watch = PathCell::watch(
            &c,
            Arc::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
            }),
        );
        assert!(watch.watches(&c));
        assert!(!watch.watches(&Arc::new(PathCell::new(PathState::Optimized))));
        assert!(!c.set(PathState::Optimized));
        assert_eq!(woken.load(Ordering::SeqCst), 0, "no change, no wake");
        assert!(c.set(PathState::Inaccessible));
        assert!(c.set(PathState::Transitioning));
        assert_eq!(woken.load(Ordering::SeqCst), 2);
        drop(watch);
        assert!(c.set(PathState::Optimized));
        assert_eq!(woken.load(Ordering::SeqCst), 2, "not after the drop");
        // A registration outliving its cell drops quietly.
        let c2 = Arc::new(PathCell::new(PathState::Optimized));
        let late = PathCell::watch(&c2, Arc::new(|| {}));
        drop(c2);
        drop(late);
    }
}
