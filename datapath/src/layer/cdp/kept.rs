//! Files of a history that must be there and must be its own (docs/cdp-integrity.md): the
//! mark "kept" in the segments' headers, and the base copy's identity after the volume's bytes.
//!
//! Model: every segment this version creates carries [`MARK`] at [`MARK_AT`] of its header
//! (format.rs writes it); a recovery of a history none of whose segments does first creates
//! `degraded.map` and appends the base copy's identity ([`upgrade`]). So in a history whose
//! newest valid segment header is marked ([`is_kept`]) a missing map was deleted and a base
//! copy without its identity was replaced.
//!
//! Invariants:
//! - The identity names the meta's base point, or the `to` of a consolidation pass under way
//!   (written after the pass's records are synced, before the meta names `to`).
//! - Decoding never panics on any bytes; a load of a kept history whose base copy does not
//!   check is refused before anything changes.

use super::error::{CdpError, io_err};
use super::format::{self, Meta, Moving};
pub use super::format::{MARK, MARK_AT};
pub use super::names::{dir_is_kept, is_kept, marked};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The identity's length (after the volume's bytes in `base.img`).
pub const ID_LEN: usize = 4096;
const ID_MAGIC: &[u8; 8] = b"TBCDPBI1";

/// The identity block of the base copy of history `vol_id` holding every record up to
/// `base_seq`.
pub fn encode_id(vol_id: u64, base_seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; ID_LEN];
    b[..8].copy_from_slice(ID_MAGIC);
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    format::put64(&mut b, 16, vol_id);
    format::put64(&mut b, 24, base_seq);
    let crc = crate::checksum::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// (volume id, base point) of an identity block, or why it is not one.
pub fn decode_id(b: &[u8]) -> Result<(u64, u64), String> {
    if b.len() < 64 || &b[..8] != ID_MAGIC {
        return Err("no identity of a base copy after the volume's bytes".into());
    }
    if crate::checksum::crc32c(&b[..60]).to_le_bytes() != b[60..64] {
        return Err("its identity's CRC does not check".into());
    }
    if b[8..12] != 1u32.to_le_bytes() {
        return Err("its identity is of an unknown version".into());
    }
    Ok((format::le64(b, 16), format::le64(b, 24)))
}

/// Write the base copy's identity (history `vol_id`, base point `base_seq`) after the
/// volume's `size` bytes, synced.
pub fn write_id(dir: &Path, size: u64, vol_id: u64, base_seq: u64) -> Result<(), CdpError> {
    let p = super::names::base_path(dir);
    let f = OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(io_err("open", &p))?;
    f.write_all_at(&encode_id(vol_id, base_seq), size)
        .map_err(io_err("write the identity of", &p))?;
    f.sync_data().map_err(io_err("sync", &p))
}

/// Refuse a base copy that is not this history's at its base point (`meta`'s, or `moving`'s
/// `to`): another file put in its place.
pub fn check_base(dir: &Path, meta: &Meta, moving: Option<&Moving>) -> Result<(), CdpError> {
    let p = super::names::base_path(dir);
    let refuse = |why: String| CdpError::Meta {
        path: p.clone(),
        why: format!(
            "{why}: this is not the base copy of the history in {} (replaced by another file?); refused: put its base copy back, or move the directory's files away to start a new history",
            dir.display()
        ),
    };
    let f = File::open(&p).map_err(io_err("open", &p))?;
    let mut b = vec![0u8; ID_LEN];
    match f.read_exact_at(&mut b, meta.size) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(refuse(
                "no identity of a base copy after the volume's bytes".into(),
            ));
        }
        Err(e) => return Err(io_err("read", &p)(e)),
    }
    let (vol_id, base_seq) = decode_id(&b).map_err(refuse)?;
    if vol_id != meta.vol_id {
        return Err(refuse(format!(
            "it belongs to the history of volume id {vol_id:#x}, cdp.meta names {:#x}",
            meta.vol_id
        )));
    }
    if base_seq != meta.base_seq && moving.is_none_or(|m| m.to != base_seq) {
        return Err(refuse(format!(
            "it holds the records up to sequence {base_seq}, cdp.meta names {}",
            meta.base_seq
        )));
    }
    Ok(())
}

/// A recovery of a history not kept: create `degraded.map` if missing (whole, as a missing one
/// read until now) and give the base copy its identity, before this run creates a marked
/// segment. A base copy missing or shorter than the volume is left as it is (readers refuse it).
pub fn upgrade(dir: &Path, meta: &Meta) -> Result<(), CdpError> {
    drop(super::degraded::RegionMap::open(dir, meta.size)?);
    let p = super::names::base_path(dir);
    let len = match std::fs::metadata(&p) {
        Ok(m) => m.len(),
        Err(_) => return Ok(()),
    };
    if len < meta.size {
        return Ok(());
    }
    let mut b = vec![0u8; ID_LEN];
    let has = File::open(&p)
        .and_then(|f| f.read_exact_at(&mut b, meta.size))
        .is_ok()
        && decode_id(&b).is_ok_and(|(v, _)| v == meta.vol_id);
    if !has {
        write_id(dir, meta.size, meta.vol_id, meta.base_seq)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
