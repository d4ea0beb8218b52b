//! The volume table: a fixed number of slots, sized at start (`[runtime] max_volumes`), so a
//! volume's index (its channel index on every reactor, its counters' index, its NVMe ANA
//! group) never changes while it exists, and volumes can be added and deleted at run time.
//!
//! Model: two copies of the table.
//! - This one, in [`super::Shared`], for threads that are not reactors (the control socket,
//!   metrics, the layers' helper threads): a `RwLock` over the slots, taken only off the I/O
//!   path (a listing, a lookup by name, a creation or a deletion).
//! - Each reactor's own copy (`Env::vols`), next to its channel table, changed only by the
//!   reactor itself when it handles [`super::Msg::OpenVolume`] / [`super::Msg::CloseVolume`]:
//!   front ends read it per I/O without any lock or atomic.
//!
//! Invariants:
//! - A slot is filled here ([`VolumeTable::reserve`]) before any reactor opens its channel,
//!   and emptied ([`VolumeTable::release`]) only after every reactor closed it, so an index
//!   found here is never handed to a new volume while a reactor still serves the old one.
//! - A reserved slot is not listed ([`VolumeTable::list`], [`VolumeTable::find`]) until it
//!   is published ([`VolumeTable::publish`]), once every reactor has its channel.

use crate::bdev::volume::Volume;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Default number of volume slots (`[runtime] max_volumes`).
pub const DEFAULT_MAX_VOLUMES: usize = 64;

#[derive(Clone)]
enum Slot {
    Free,
    /// Taken by a volume whose channels are being opened or closed.
    Busy(Arc<Volume>),
    /// Served on every reactor.
    Live(Arc<Volume>),
}

/// The daemon's volume slots.
pub struct VolumeTable {
    slots: RwLock<Vec<Slot>>,
}

impl VolumeTable {
    /// `capacity` slots (at least the volumes given), the first ones holding `volumes`.
    pub fn new(volumes: Vec<Arc<Volume>>, capacity: usize) -> Self {
        let cap = capacity.max(volumes.len()).max(1);
        let mut slots: Vec<Slot> = volumes.into_iter().map(Slot::Live).collect();
        slots.resize(cap, Slot::Free);
        Self {
            slots: RwLock::new(slots),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<Slot>> {
        // Every change is one slot assignment: a poisoned table is still whole.
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Slot>> {
        self.slots.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of slots (fixed at start).
    pub fn capacity(&self) -> usize {
        self.read().len()
    }

    /// The volume served in slot `i` (`None`: free, or being created or deleted).
    pub fn get(&self, i: usize) -> Option<Arc<Volume>> {
        match self.read().get(i) {
            Some(Slot::Live(v)) => Some(Arc::clone(v)),
            _ => None,
        }
    }

    /// The volume in slot `i`, also while it is being created or deleted.
    pub fn get_any(&self, i: usize) -> Option<Arc<Volume>> {
        match self.read().get(i) {
            Some(Slot::Live(v)) | Some(Slot::Busy(v)) => Some(Arc::clone(v)),
            _ => None,
        }
    }

    /// The name of the volume in slot `i` (also while created or deleted), or `"?"`.
    pub fn name(&self, i: usize) -> String {
        self.get_any(i)
            .map_or_else(|| "?".into(), |v| v.name.clone())
    }

    /// The slot of the served volume named `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.read()
            .iter()
            .position(|s| matches!(s, Slot::Live(v) if v.name == name))
    }

    /// Every served volume with its slot, by slot.
    pub fn list(&self) -> Vec<(usize, Arc<Volume>)> {
        self.read()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Live(v) => Some((i, Arc::clone(v))),
                _ => None,
            })
            .collect()
    }

    /// Served volumes.
    pub fn len(&self) -> usize {
        self.read()
            .iter()
            .filter(|s| matches!(s, Slot::Live(_)))
            .count()
    }

    /// No volume is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take a free slot for `v` (not listed yet). Errors: the name is taken (by a served
    /// volume or one being created or deleted), or every slot is used.
    pub fn reserve(&self, v: Arc<Volume>) -> Result<usize, String> {
        let mut s = self.write();
        if s.iter()
            .any(|x| matches!(x, Slot::Live(o) | Slot::Busy(o) if o.name == v.name))
        {
            return Err(format!("a volume named {:?} exists already", v.name));
        }
        let cap = s.len();
        let i = s.iter().position(|x| matches!(x, Slot::Free)).ok_or_else(|| {
            format!(
                "every volume slot is used ({cap}; raise [runtime] max_volumes and restart, or delete a volume)"
            )
        })?;
        s[i] = Slot::Busy(v);
        Ok(i)
    }

    /// List the volume reserved in slot `i` (its channels are open on every reactor).
    pub fn publish(&self, i: usize) {
        let mut s = self.write();
        if let Some(slot) = s.get_mut(i)
            && let Slot::Busy(v) = slot
        {
            *slot = Slot::Live(Arc::clone(v));
        }
    }

    /// Stop listing the volume in slot `i` (its channels are about to be closed); it keeps
    /// the slot (and its name) until [`VolumeTable::release`].
    pub fn retire(&self, i: usize) -> Option<Arc<Volume>> {
        let mut s = self.write();
        let slot = s.get_mut(i)?;
        match slot {
            Slot::Live(v) => {
                let v = Arc::clone(v);
                *slot = Slot::Busy(Arc::clone(&v));
                Some(v)
            }
            _ => None,
        }
    }

    /// The served volume in slot `i` is now `v` (its stack changed in place on every
    /// reactor: [`super::Msg::Restack`]); false when the slot serves no volume.
    pub fn replace(&self, i: usize, v: Arc<Volume>) -> bool {
        let mut s = self.write();
        match s.get_mut(i) {
            Some(slot @ Slot::Live(_)) => {
                *slot = Slot::Live(v);
                true
            }
            _ => false,
        }
    }

    /// Free slot `i` (every reactor closed its channel).
    pub fn release(&self, i: usize) {
        if let Some(slot) = self.write().get_mut(i) {
            *slot = Slot::Free;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::malloc::MallocDevice;

    fn vol(name: &str) -> Arc<Volume> {
        Arc::new(Volume::new(
            name,
            Arc::new(MallocDevice::new(4096, 512).unwrap()),
        ))
    }

    #[test]
    fn slots_are_stable_and_names_unique() {
        let t = VolumeTable::new(vec![vol("a")], 3);
        assert_eq!(t.capacity(), 3);
        let b = t.reserve(vol("b")).unwrap();
        assert_eq!(b, 1);
        assert_eq!(t.find("b"), None, "not listed before it is published");
        assert!(t.reserve(vol("b")).unwrap_err().contains("exists"));
        t.publish(b);
        assert_eq!(t.find("b"), Some(1));
        let c = t.reserve(vol("c")).unwrap();
        assert!(t.reserve(vol("d")).unwrap_err().contains("max_volumes"));
        t.publish(c);
        assert!(t.retire(0).is_some());
        assert_eq!(t.find("a"), None);
        assert!(
            t.reserve(vol("a")).is_err(),
            "a name being deleted is still taken"
        );
        t.release(0);
        assert_eq!(t.reserve(vol("e")).unwrap(), 0, "a freed slot is reused");
        assert_eq!(t.find("c"), Some(2), "other volumes keep their slot");
        assert_eq!(t.len(), 2);
    }
}
