//! Volumes: a named stack of block-device layers.
//!
//! Model: a volume names the top of its stack (`device`); each layer wraps the one below it
//! and implements the same [`BlockDevice`] trait. Front ends only ever talk to `device`, so a
//! layer (error injection today; mirror and CDP later) is inserted by building the stack
//! differently, never by touching a front end.

use crate::bdev::{BlockDevice, DeviceInfo};
use std::sync::Arc;

/// A named volume.
pub struct Volume {
    /// Name (unique in the daemon).
    pub name: String,
    /// Top of the stack.
    pub device: Arc<dyn BlockDevice>,
    /// Facts of the top of the stack, read once.
    pub info: DeviceInfo,
    /// For a mirrored volume: where its engine runs and its published state.
    pub mirror: Option<MirrorInfo>,
}

/// A mirrored volume's facts for the rest of the daemon.
pub struct MirrorInfo {
    /// Published counters and state.
    pub stats: Arc<crate::layer::mirror::stats::MirrorStats>,
    /// This site orders the volume's updates.
    pub leader: bool,
    /// The reactor running the volume's engine.
    pub home: usize,
}

impl Volume {
    /// A volume over `device`.
    pub fn new(name: impl Into<String>, device: Arc<dyn BlockDevice>) -> Self {
        let info = device.info();
        Self {
            name: name.into(),
            device,
            info,
            mirror: None,
        }
    }
}
