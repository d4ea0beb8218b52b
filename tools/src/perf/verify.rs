//! Data verification: what a written block carries and what a read must find.
//!
//! Model: every 512-byte sector of a block written with `--verify` starts with a 32-byte stamp
//! (little-endian): magic `STAMP_MAGIC`, the sector's byte offset on the device, the run id, and
//! the generation of the write (a per-connection counter, never 0). The rest of the block is a
//! fixed pseudo-random pattern. Each connection keeps, per unit of its slice, the generation of
//! the last write to that unit that completed successfully (0: never written by this run or its
//! state file, so anything may be there; `UNKNOWN`: a write failed, so the content is
//! undefined). A read of a unit with a known generation must find every sector's stamp equal to
//! (offset, run, generation); anything else is a mismatch, counted once per read.
//!
//! The state file (`--verify-state`) carries the run id and every unit's generation from one run
//! to the next (write in one run, corrupt or fail over, read and check in another). It is JSON:
//! `{"version":1,"run":..,"offset":..,"bs":..,"conns":..,"units_per_conn":..,"gens":[[..],..]}`.

use anyhow::{Context, Result, ensure};
use std::path::Path;

/// First 8 bytes of every stamped sector ("twinperf" read as a little-endian u64).
pub const STAMP_MAGIC: u64 = u64::from_le_bytes(*b"twinperf");
/// Bytes of a stamp.
pub const STAMP_LEN: usize = 32;
/// Stamps are placed every this many bytes.
pub const SECTOR: usize = 512;
/// Generation of a unit whose last write failed: its content is not checked.
pub const UNKNOWN: u32 = u32::MAX;
/// Mismatches kept in detail in the report (the count is always exact).
pub const MAX_REPORTED: usize = 16;

/// How the region is cut; a state file must match it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// First byte.
    pub offset: u64,
    /// Unit size.
    pub bs: u32,
    /// Connections (one slice each).
    pub conns: u32,
    /// Units in each slice.
    pub units_per_conn: u32,
}

/// Expected generations of a whole run.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct State {
    version: u32,
    /// Run id stamped into every written sector.
    pub run: u64,
    #[serde(flatten)]
    layout: Layout,
    gens: Vec<Vec<u32>>,
}

impl State {
    /// A fresh state: nothing written.
    pub fn new(layout: &Layout, run: u64) -> State {
        State {
            version: 1,
            run,
            layout: *layout,
            gens: vec![vec![0; layout.units_per_conn as usize]; layout.conns as usize],
        }
    }

    /// Rebuild from the per-connection maps at the end of a run.
    pub fn join(layout: Layout, run: u64, gens: Vec<Vec<u32>>) -> State {
        State {
            version: 1,
            run,
            layout,
            gens,
        }
    }

    /// Load a state file written by an earlier run with the same layout.
    pub fn load(path: &Path, layout: &Layout) -> Result<State> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let s: State = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a twinperf verify state", path.display()))?;
        ensure!(s.version == 1, "verify state version {} unknown", s.version);
        ensure!(
            s.layout == *layout,
            "{} was written with {:?}; this run has {:?} (use the same --offset, --size, --bs, \
             --conns)",
            path.display(),
            s.layout,
            layout
        );
        ensure!(
            s.gens.len() == layout.conns as usize
                && s.gens
                    .iter()
                    .all(|g| g.len() == layout.units_per_conn as usize),
            "{}: generation map does not match its layout",
            path.display()
        );
        Ok(s)
    }

    /// Write the state file (atomically: a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }

    /// One map per connection.
    pub fn split(self) -> Vec<Vec<u32>> {
        self.gens
    }
}

/// Stamp every sector of `buf` (a block written at device byte `offset`).
pub fn stamp(buf: &mut [u8], offset: u64, run: u64, generation: u32) {
    for (i, sector) in buf.chunks_mut(SECTOR).enumerate() {
        if sector.len() < STAMP_LEN {
            break;
        }
        let at = offset + (i * SECTOR) as u64;
        sector[0..8].copy_from_slice(&STAMP_MAGIC.to_le_bytes());
        sector[8..16].copy_from_slice(&at.to_le_bytes());
        sector[16..24].copy_from_slice(&run.to_le_bytes());
        sector[24..32].copy_from_slice(&u64::from(generation).to_le_bytes());
    }
}

/// A stamp as found on a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Found {
    /// Magic matched.
    pub magic: bool,
    /// Offset stamped.
    pub offset: u64,
    /// Run stamped.
    pub run: u64,
    /// Generation stamped.
    pub generation: u64,
}

/// One mismatching read, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// Device byte offset of the first bad sector.
    pub offset: u64,
    /// Generation expected.
    pub expected_generation: u32,
    /// What that sector held.
    pub found: Found,
}

/// Check data read for a block at device byte `block_offset`: `data` is the block's bytes from
/// `at` on (a whole block, or one chunk of it). Returns the first bad sector.
pub fn check(
    data: &[u8],
    at: u32,
    block_offset: u64,
    run: u64,
    generation: u32,
) -> Option<Mismatch> {
    let at = at as usize;
    // First sector boundary at or after `at`.
    let first = at.div_ceil(SECTOR) * SECTOR;
    let mut s = first;
    while s + STAMP_LEN <= at + data.len() {
        let b = &data[s - at..s - at + STAMP_LEN];
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let offset = block_offset + s as u64;
        let found = Found {
            magic: word(0) == STAMP_MAGIC,
            offset: word(8),
            run: word(16),
            generation: word(24),
        };
        if !found.magic
            || found.offset != offset
            || found.run != run
            || found.generation != u64::from(generation)
        {
            return Some(Mismatch {
                offset,
                expected_generation: generation,
                found,
            });
        }
        s += SECTOR;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_then_check_round_trips_and_catches_each_field() {
        let mut b = vec![0xAAu8; 4096];
        stamp(&mut b, 8192, 7, 3);
        assert_eq!(check(&b, 0, 8192, 7, 3), None);
        assert!(check(&b, 0, 8192, 7, 4).is_some(), "stale generation");
        assert!(check(&b, 0, 4096, 7, 3).is_some(), "misplaced block");
        assert!(check(&b, 0, 8192, 8, 3).is_some(), "other run");
        // Chunks of the block check their own sectors.
        assert_eq!(check(&b[1024..3072], 1024, 8192, 7, 3), None);
        let mut c = b.clone();
        c[2048 + 9] ^= 1;
        let m = check(&c, 0, 8192, 7, 3).unwrap();
        assert_eq!(m.offset, 8192 + 2048);
        assert!(m.found.magic);
        // A zeroed sector is reported with its magic missing.
        c[3584..3584 + 32].fill(0);
        let m = check(&c[3000..], 3000, 8192, 7, 3).unwrap();
        assert_eq!((m.offset, m.found.magic), (8192 + 3584, false));
    }
}
