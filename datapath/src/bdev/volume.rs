//! Volumes: a named stack of block-device layers.
//!
//! Model: a volume names the top of its stack (`device`); each layer wraps the one below it
//! and implements the same [`BlockDevice`] trait. Front ends only ever talk to `device`, so a
//! layer (error injection today; mirror and CDP later) is inserted by building the stack
//! differently, never by touching a front end.

use crate::bdev::{BlockDevice, DeviceInfo};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

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
/// layer that decides it, read by every front end's queues).
#[derive(Debug)]
pub struct PathCell {
    state: AtomicU8,
    changes: AtomicU64,
}

impl PathCell {
    /// A cell starting in `state`.
    pub fn new(state: PathState) -> Self {
        Self {
            state: AtomicU8::new(state as u8),
            changes: AtomicU64::new(0),
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
}
