//! A mirrored volume's persisted replica state: which mode this site was in (in sync,
//! survivor, fenced, resyncing), the witness epoch it holds, and the dirty-region bitmap.
//!
//! Format (little-endian), one small file per volume, `<state_dir>/<volume>.mirror-state`:
//! `"TBMS"` | version u8 = 1 | mode u8 (0 in sync, 1 survivor, 2 fenced, 3 resyncing, 4 new
//! replica never in sync) |
//! clean u8 (1: written at a clean stop, the bitmap is exact) | reserved u8 = 0 |
//! epoch u64 | volume size u64 | granularity u64 | dirty words u32 | words u64 ... |
//! written words u32 | words u64 ... | CRC32C u32 of everything before it. The dirty bitmap
//! holds the regions written while the peer was away; the written bitmap every region ever
//! written (a new, empty replica is sent only those).
//!
//! Invariants: the file is replaced atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves the old or the new state, never a torn one; a file that fails
//! its checks is an error (the daemon does not start), never silently ignored.

use std::io::Write;
use std::path::Path;

/// What is persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persisted {
    /// 0 in sync, 1 survivor, 2 fenced, 3 resyncing, 4 new (never in sync yet).
    pub mode: u8,
    /// Written at a clean stop: the bitmap is exact.
    pub clean: bool,
    /// The witness epoch held as survivor.
    pub epoch: u64,
    /// Volume size (a file for another size is refused).
    pub size: u64,
    /// Bytes per bitmap bit.
    pub granularity: u64,
    /// Dirty bitmap.
    pub bitmap: Vec<u64>,
    /// Regions ever written.
    pub written: Vec<u64>,
}

const MAGIC: &[u8; 4] = b"TBMS";

/// Write `p` to `path` atomically.
pub fn save(path: &Path, p: &Persisted) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(40 + p.bitmap.len() * 8);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&[1, p.mode, p.clean as u8, 0]);
    b.extend_from_slice(&p.epoch.to_le_bytes());
    b.extend_from_slice(&p.size.to_le_bytes());
    b.extend_from_slice(&p.granularity.to_le_bytes());
    b.extend_from_slice(&(p.bitmap.len() as u32).to_le_bytes());
    for w in &p.bitmap {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&(p.written.len() as u32).to_le_bytes());
    for w in &p.written {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&b)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Read the state at `path`; `Ok(None)` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<Persisted>, String> {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let bad = |why: &str| {
        Err(format!(
            "{} is not a valid mirror state file: {why}",
            path.display()
        ))
    };
    if b.len() < 40 || &b[..4] != MAGIC {
        return bad("bad magic or too short");
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return bad("checksum mismatch");
    }
    if body[4] != 1 || body[5] > 4 || body[6] > 1 || body[7] != 0 {
        return bad("unknown version or field value");
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let words = u32::from_le_bytes(body[32..36].try_into().expect("4 bytes")) as usize;
    let w_at = 36usize.saturating_add(words.saturating_mul(8));
    if body.len() < w_at.saturating_add(4) {
        return bad("bitmap length");
    }
    let written = u32::from_le_bytes(body[w_at..w_at + 4].try_into().expect("4 bytes")) as usize;
    if body.len() != w_at + 4 + written.saturating_mul(8) {
        return bad("bitmap length");
    }
    Ok(Some(Persisted {
        mode: body[5],
        clean: body[6] == 1,
        epoch: u64_at(8),
        size: u64_at(16),
        granularity: u64_at(24),
        bitmap: (0..words).map(|i| u64_at(36 + i * 8)).collect(),
        written: (0..written).map(|i| u64_at(w_at + 4 + i * 8)).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mirror-state");
        assert_eq!(load(&path), Ok(None));
        let p = Persisted {
            mode: 1,
            clean: true,
            epoch: 7,
            size: 1 << 20,
            granularity: 65536,
            bitmap: vec![0b1011],
            written: vec![0b1111, 1],
        };
        save(&path, &p).unwrap();
        assert_eq!(load(&path), Ok(Some(p)));
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x10;
            std::fs::write(&path, &b).unwrap();
            assert!(load(&path).is_err(), "corruption at byte {i} accepted");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(load(&path).is_err());
    }
}
