//! The activity log's file: a mirrored volume's persisted set of hot extents
//! (docs/mirror-protocol.md, "Activity log and reconciliation after a crash").
//!
//! Format: `<state_dir>/<volume>.mirror-al`, two slots of `slot_bytes` each ([`slot_bytes`]),
//! the file exactly `2 × slot_bytes` long. A slot (little-endian): `"TBAL"` | version u8 = 1 |
//! flags u8 (bit 0: clean, written at a clean stop) | 0 u16 | generation u64 | extent bytes
//! u64 | volume size u64 | n u32 | n × extent index u64 | CRC32C u32 of everything before it
//! in the slot; the rest of the slot is zero.
//!
//! Who writes it: [`save`] runs on the persister thread (`persist.rs`), never on a reactor.
//! Generation `g` goes in place into slot `g mod 2` (one `pwrite`, one `fdatasync`); a file
//! that is missing or of another length is created anew atomically (temporary file, fsync,
//! rename, fsync of the directory).
//!
//! Invariants: a torn write of one slot leaves the other, the previous version, valid;
//! [`load`] takes the valid slot with the highest generation, and reports a file with no
//! valid slot as [`AlLoad::Invalid`] (the caller then assumes the worst), never as empty.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 4] = b"TBAL";
const VERSION: u8 = 1;
/// Bytes of a slot before the extents.
const HEAD: usize = 36;

/// One version of the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlSnapshot {
    /// Generation (at least 1; higher is newer, across restarts).
    pub generation: u64,
    /// Written at a clean stop.
    pub clean: bool,
    /// Bytes per extent (a power of two).
    pub extent: u64,
    /// Volume size in bytes.
    pub size: u64,
    /// Indexes of the extents in the set.
    pub extents: Vec<u64>,
    /// Bytes per slot (the file is two of them).
    pub slot_bytes: u64,
}

/// What [`load`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlLoad {
    /// No file.
    Missing,
    /// The newest valid version.
    Valid(AlSnapshot),
    /// A file without a valid slot (or unreadable): why.
    Invalid(String),
}

/// Slot size for a set of at most `max` extents: 40 + 8 × `max` + 4 bytes, rounded up to
/// 4096.
pub fn slot_bytes(max: u32) -> u64 {
    (40 + 8 * u64::from(max) + 4).div_ceil(4096) * 4096
}

fn encode(s: &AlSnapshot) -> Vec<u8> {
    let mut b = Vec::with_capacity(s.slot_bytes as usize);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&[VERSION, s.clean as u8, 0, 0]);
    b.extend_from_slice(&s.generation.to_le_bytes());
    b.extend_from_slice(&s.extent.to_le_bytes());
    b.extend_from_slice(&s.size.to_le_bytes());
    b.extend_from_slice(&(s.extents.len() as u32).to_le_bytes());
    for e in &s.extents {
        b.extend_from_slice(&e.to_le_bytes());
    }
    let crc = crate::checksum::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.resize(s.slot_bytes as usize, 0);
    b
}

/// Write `s` to `path` (see the module doc). The set must fit a slot.
pub fn save(path: &Path, s: &AlSnapshot) -> std::io::Result<()> {
    if (HEAD + 8 * s.extents.len() + 4) as u64 > s.slot_bytes || s.generation == 0 {
        return Err(std::io::Error::other(
            "activity log snapshot does not fit its slot",
        ));
    }
    let slot = encode(s);
    let at = (s.generation % 2) * s.slot_bytes;
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) if f.metadata()?.len() == 2 * s.slot_bytes => {
            f.write_all_at(&slot, at)?;
            return f.sync_data();
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Created anew, atomically: the other slot empty (invalid).
    let mut whole = vec![0u8; 2 * s.slot_bytes as usize];
    whole[at as usize..(at + s.slot_bytes) as usize].copy_from_slice(&slot);
    let tmp = path.with_extension("al-tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&whole)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Parse one slot (`None`: not a valid slot).
fn parse(b: &[u8], slot_bytes: u64) -> Option<AlSnapshot> {
    if b.len() < HEAD + 4 || &b[..4] != MAGIC || b[4] != VERSION || b[5] & !1 != 0 {
        return None;
    }
    if b[6] != 0 || b[7] != 0 {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let n = u32::from_le_bytes(b[32..36].try_into().expect("4 bytes")) as usize;
    let end = HEAD.checked_add(n.checked_mul(8)?)?;
    if end + 4 > b.len() {
        return None;
    }
    let crc = u32::from_le_bytes(b[end..end + 4].try_into().expect("4 bytes"));
    if crate::checksum::crc32c(&b[..end]) != crc {
        return None;
    }
    let (generation, extent, size) = (u64_at(8), u64_at(16), u64_at(24));
    if generation == 0 || !extent.is_power_of_two() || extent < 4096 || size == 0 {
        return None;
    }
    let count = size.div_ceil(extent);
    let extents: Vec<u64> = (0..n).map(|i| u64_at(HEAD + 8 * i)).collect();
    if extents.iter().any(|&e| e >= count) {
        return None;
    }
    Some(AlSnapshot {
        generation,
        clean: b[5] & 1 != 0,
        extent,
        size,
        extents,
        slot_bytes,
    })
}

/// Read the log at `path` (see [`AlLoad`]).
pub fn load(path: &Path) -> AlLoad {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return AlLoad::Missing,
        Err(e) => return AlLoad::Invalid(format!("reading {}: {e}", path.display())),
    };
    match decode(&b) {
        Ok(s) => AlLoad::Valid(s),
        Err(why) => AlLoad::Invalid(format!("{}: {why}", path.display())),
    }
}

/// The newest valid version in a whole file's bytes `b` (fuzzed: `datapath/fuzz`, target
/// `mirror_actlog`); never panics.
pub fn decode(b: &[u8]) -> Result<AlSnapshot, String> {
    if b.is_empty() || !b.len().is_multiple_of(2) {
        return Err(format!("length {}", b.len()));
    }
    let half = b.len() / 2;
    [&b[..half], &b[half..]]
        .into_iter()
        .filter_map(|s| parse(s, half as u64))
        .max_by_key(|s| s.generation)
        .ok_or_else(|| "no valid slot".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(generation: u64, extents: Vec<u64>) -> AlSnapshot {
        AlSnapshot {
            generation,
            clean: false,
            extent: 1 << 22,
            size: 1 << 30,
            extents,
            slot_bytes: slot_bytes(4),
        }
    }

    #[test]
    fn slots_alternate_and_the_newest_valid_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mirror-al");
        assert_eq!(load(&path), AlLoad::Missing);
        save(&path, &snap(1, vec![3, 7])).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * 4096);
        assert_eq!(load(&path), AlLoad::Valid(snap(1, vec![3, 7])));
        save(&path, &snap(2, vec![7])).unwrap();
        assert_eq!(load(&path), AlLoad::Valid(snap(2, vec![7])));
        // A torn write of generation 3 (slot 1): generation 2 is still there.
        let mut b = std::fs::read(&path).unwrap();
        b[4096 + 40] ^= 1;
        std::fs::write(&path, &b).unwrap();
        save(&path, &snap(3, vec![1, 2, 5])).unwrap();
        let mut b = std::fs::read(&path).unwrap();
        b[4096 + 40] ^= 0x40;
        std::fs::write(&path, &b).unwrap();
        assert_eq!(load(&path), AlLoad::Valid(snap(2, vec![7])));
        // Too many extents for the slot: refused, nothing written.
        assert!(save(&path, &snap(4, vec![0; 600])).is_err());
        // Another slot size (configuration changed): created anew.
        let mut big = snap(5, vec![9]);
        big.slot_bytes = slot_bytes(1024);
        save(&path, &big).unwrap();
        assert_eq!(load(&path), AlLoad::Valid(big));
    }

    #[test]
    fn every_corruption_of_a_lone_slot_is_invalid_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mirror-al");
        save(&path, &snap(1, vec![3, 7])).unwrap();
        let good = std::fs::read(&path).unwrap();
        // Slot 1 holds generation 1; slot 0 is empty.
        for i in 4096..4096 + HEAD + 16 + 4 {
            let mut b = good.clone();
            b[i] ^= 0x10;
            std::fs::write(&path, &b).unwrap();
            assert!(
                matches!(load(&path), AlLoad::Invalid(_)),
                "corruption at byte {i} accepted"
            );
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(matches!(load(&path), AlLoad::Invalid(_)));
        std::fs::write(&path, []).unwrap();
        assert!(matches!(load(&path), AlLoad::Invalid(_)));
        // An extent past the volume's end is refused even with a good CRC.
        let mut s = snap(1, vec![256]);
        s.slot_bytes = 4096;
        let mut b = encode(&s);
        b.extend(vec![0u8; 4096]);
        std::fs::write(&path, &b).unwrap();
        assert!(matches!(load(&path), AlLoad::Invalid(_)));
    }
}
