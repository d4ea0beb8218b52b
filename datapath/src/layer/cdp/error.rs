//! Errors of a CDP directory, and the two file helpers every module of the layer that writes
//! to the directory shares. Nothing here knows the directory's layout: the modules that do
//! ([`super::store`], [`super::degraded`], ...) all stand above it.

use std::fs::File;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors of a CDP directory.
#[derive(Debug, Error)]
pub enum CdpError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `cdp.meta` does not check, or names another volume.
    #[error("{path}: {why}")]
    Meta {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A command refused (nothing was changed): why, and what to do.
    #[error("{0}")]
    Refused(String),
    /// A point outside the restorable window.
    #[error("{what} is outside the restorable window: {window}")]
    Outside {
        /// The point asked for.
        what: String,
        /// The window.
        window: String,
    },
    /// A point inside a gap of the history (the journal had stopped, CDP was off, or the
    /// mirror did not vouch for this site's replica: docs/cdp-format.md, "Degraded mode",
    /// "Enabling and disabling at run time", "Under the mirror").
    #[error(
        "{what} is inside a gap of the history: it is whole up to sequence {after} (time {after_time} ns) and again from sequence {resumed} (time {resumed_time} ns); in between the journal had stopped, CDP was off, or this site's replica was not the volume (its peer wrote alone, or resynced it). Choose a point up to the first or from the second"
    )]
    InGap {
        /// The point asked for.
        what: String,
        /// Last sequence number before the gap.
        after: u64,
        /// Its time.
        after_time: u64,
        /// The gap record's sequence number (restorable from here on).
        resumed: u64,
        /// Its time.
        resumed_time: u64,
    },
    /// A point after the last whole point of a history whose journal is not whole yet
    /// (`degraded.map` says it stopped, or CDP was switched on at run time and is journaling
    /// the volume again, or the mirror does not vouch for the replica: docs/cdp-format.md,
    /// "Enabling and disabling at run time", "Under the mirror").
    #[error(
        "{what} is not restorable: the history is whole only up to sequence {after} (time {after_time} ns){start}; its journal stopped, or was switched on at run time and is journaling the volume again, or this site's replica is not vouched for by the mirror (its peer may write alone); a gap record names where it is whole again"
    )]
    NotWhole {
        /// The point asked for.
        what: String,
        /// Last whole sequence number (0 with `start` set: none).
        after: u64,
        /// Its time.
        after_time: u64,
        /// ", and not at its start" when the history began at run time (nothing is whole yet).
        start: &'static str,
    },
}

pub(super) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CdpError {
    let path = path.to_path_buf();
    move |source| CdpError::Io { what, path, source }
}

/// fsync a directory (its entries durable).
pub fn sync_dir(dir: &Path) -> Result<(), CdpError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}
