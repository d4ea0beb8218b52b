//! Degraded mode: which regions of a volume changed while its journal was stopped
//! (docs/cdp-format.md, "Degraded mode", where `degraded.map` is laid out).
//!
//! Model: [`RegionMap`] is the file `degraded.map` and an in-memory bitmap of 1 MiB regions.
//! The file is created at full size when the layer opens (so rewriting it later needs no
//! space, even on a full journal device) and rewritten in place with `fdatasync`.
//!
//! Invariants:
//! - State 1 ("stopped, regions unknown") is on disk before any update completes without its
//!   record ([`RegionMap::stopped`] is called first); so a crash while degraded makes the next
//!   start treat the whole volume as changed.
//! - The bitmap is a superset of the ranges changed without a record: every such update marks
//!   its range before it is issued, and the updates in flight when the journal stopped are
//!   marked then. A clean stop writes it as state 2.
//! - Decoding never panics on any bytes: a damaged file reads as state 1 (the safe answer).

use super::error::CdpError;
use super::error::io_err;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Name of the file in a volume's CDP directory.
pub const FILE: &str = "degraded.map";
/// log2 of the region size (1 MiB).
pub const REGION_SHIFT: u32 = 20;
const MAGIC: &[u8; 4] = b"CDPD";
const VERSION: u32 = 1;
const HEADER: usize = 4096;

/// What the file says about the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prior {
    /// The journal is whole (state 0, or no file).
    Whole,
    /// It stopped after sequence `after` (at `after_time`); `regions`: the changed regions'
    /// bitmap, `None` when unknown (every region counts as changed).
    Stopped {
        /// Last durable sequence number before the stop.
        after: u64,
        /// Its time.
        after_time: u64,
        /// One bit per region, or `None`: all.
        regions: Option<Vec<u8>>,
    },
}

impl Prior {
    /// Where the history is whole up to, given that recovery found it ending at `last_seq`
    /// (at `last_time`): where the journal stopped, but never past what was recovered (a cut
    /// may have removed records the map names; the gap then begins at the cut).
    pub fn whole_until(&self, last_seq: u64, last_time: u64) -> (u64, u64) {
        match self {
            Prior::Stopped {
                after, after_time, ..
            } if *after <= last_seq => (*after, *after_time),
            Prior::Stopped { .. } | Prior::Whole => (last_seq, last_time),
        }
    }
}

/// The header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    state: u32,
    after: u64,
    after_time: u64,
    stopped_at: u64,
    regions: u64,
    bitmap_crc: u32,
}

fn bitmap_bytes(regions: u64) -> usize {
    (regions.div_ceil(8) as usize)
        .next_multiple_of(4096)
        .max(4096)
}

/// Regions of a volume of `size` bytes.
pub fn regions_of(size: u64) -> u64 {
    size.div_ceil(1 << REGION_SHIFT)
}

impl Header {
    fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.state.to_le_bytes());
        b[12..16].copy_from_slice(&REGION_SHIFT.to_le_bytes());
        b[16..24].copy_from_slice(&self.after.to_le_bytes());
        b[24..32].copy_from_slice(&self.after_time.to_le_bytes());
        b[32..40].copy_from_slice(&self.stopped_at.to_le_bytes());
        b[40..48].copy_from_slice(&self.regions.to_le_bytes());
        b[48..52].copy_from_slice(&self.bitmap_crc.to_le_bytes());
        let crc = crate::checksum::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None`: not a valid header of a map of `regions` regions.
    fn decode(b: &[u8], regions: u64) -> Option<Header> {
        if b.len() < 64 || &b[..4] != MAGIC {
            return None;
        }
        let le32 = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let le64 = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if le32(60) != crate::checksum::crc32c(&b[..60]) || le32(4) != VERSION {
            return None;
        }
        let h = Header {
            state: le32(8),
            after: le64(16),
            after_time: le64(24),
            stopped_at: le64(32),
            regions: le64(40),
            bitmap_crc: le32(48),
        };
        (h.state <= 2 && le32(12) == REGION_SHIFT && h.regions == regions).then_some(h)
    }
}

/// Read what `bytes` (a whole `degraded.map`) says, for a volume of `regions` regions.
/// Damaged or foreign bytes read as "stopped, regions unknown" after sequence 0.
pub fn decode(bytes: &[u8], regions: u64) -> Prior {
    let unknown = Prior::Stopped {
        after: 0,
        after_time: 0,
        regions: None,
    };
    let Some(h) = Header::decode(bytes, regions) else {
        return unknown;
    };
    match h.state {
        0 => Prior::Whole,
        1 => Prior::Stopped {
            after: h.after,
            after_time: h.after_time,
            regions: None,
        },
        _ => {
            let len = regions.div_ceil(8) as usize;
            let map = bytes.get(HEADER..HEADER + len);
            match map {
                Some(m) if crate::checksum::crc32c(m) == h.bitmap_crc => Prior::Stopped {
                    after: h.after,
                    after_time: h.after_time,
                    regions: Some(m.to_vec()),
                },
                _ => Prior::Stopped {
                    after: h.after,
                    after_time: h.after_time,
                    regions: None,
                },
            }
        }
    }
}

/// What `dir`'s map says, read only (no file: the journal is whole, unless the history is
/// kept, docs/cdp-integrity.md: then the map was deleted).
pub fn read_prior(dir: &Path, size: u64) -> Prior {
    match std::fs::read(dir.join(FILE)) {
        Ok(b) => decode(&b, regions_of(size)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing_map(dir),
        Err(_) => Prior::Stopped {
            after: 0,
            after_time: 0,
            regions: None,
        },
    }
}

/// Whether region `i` is marked in `bits`.
pub fn is_set(bits: &[u8], i: u64) -> bool {
    bits.get((i / 8) as usize)
        .is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// `degraded.map` of one volume and the regions changed since its journal stopped.
pub struct RegionMap {
    file: File,
    path: PathBuf,
    regions: u64,
    bits: Vec<u8>,
    marked: u64,
    header: Header,
    /// The journal stopped (state 1 or 2 on disk).
    pub active: bool,
    /// Writes left to fail with EIO ([`RegionMap::fail_writes`]).
    fail_writes: u32,
    /// Where the journal stopped (after, its time, when), kept even when writing it failed:
    /// a clean stop's [`RegionMap::persist`] names it, not what the file said before.
    stop: Option<(u64, u64, u64)>,
}

impl RegionMap {
    /// Open `dir`'s map for a volume of `size` bytes, creating it (state 0) when missing;
    /// returns it with what it said before.
    pub fn open(dir: &Path, size: u64) -> Result<(RegionMap, Prior), CdpError> {
        let path = dir.join(FILE);
        let regions = regions_of(size);
        let len = HEADER + bitmap_bytes(regions);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let prior = if existed {
            let mut b = vec![0u8; len];
            let n = file.read_at(&mut b, 0).map_err(io_err("read", &path))?;
            b.truncate(n);
            decode(&b, regions)
        } else {
            missing_map(dir)
        };
        let header = Header {
            state: 0,
            after: 0,
            after_time: 0,
            stopped_at: 0,
            regions,
            bitmap_crc: 0,
        };
        let mut m = RegionMap {
            file,
            path,
            regions,
            bits: vec![0u8; regions.div_ceil(8) as usize],
            marked: 0,
            header,
            active: false,
            fail_writes: 0,
            stop: None,
        };
        if !existed || m.file.metadata().map(|md| md.len()).unwrap_or(0) < len as u64 {
            // Allocate every byte now (written, not only reserved), so rewriting later needs
            // no space on the device.
            m.file
                .write_all_at(&vec![0u8; len], 0)
                .map_err(io_err("write", &m.path))?;
            if prior == Prior::Whole {
                m.write_header()?;
            }
            super::error::sync_dir(dir)?;
        }
        Ok((m, prior))
    }

    fn write_header(&mut self) -> Result<(), CdpError> {
        self.put(self.header)
    }

    /// Write `h` (with `fdatasync`) and keep it as the header once it is written. A failed
    /// write keeps the header the map had (what the file is known to say), so a request that
    /// failed on it and is asked again starts from where it was.
    /// Make the next `n` writes of the map fail with EIO (tests, drills).
    pub fn fail_writes(&mut self, n: u32) {
        self.fail_writes = n;
    }

    fn put(&mut self, h: Header) -> Result<(), CdpError> {
        if self.fail_writes > 0 {
            self.fail_writes -= 1;
            return Err(io_err("write", &self.path)(
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        self.file
            .write_all_at(&h.encode(), 0)
            .map_err(io_err("write", &self.path))?;
        self.file.sync_data().map_err(io_err("sync", &self.path))?;
        self.header = h;
        Ok(())
    }

    /// The journal stopped after `after` (at `after_time`): write state 1, then count every
    /// update from now on as a change. Called before any update completes without its record.
    pub fn stopped(&mut self, after: u64, after_time: u64, now: u64) -> Result<(), CdpError> {
        self.active = true;
        self.stop = Some((after, after_time, now));
        self.put(Header {
            state: 1,
            after,
            after_time,
            stopped_at: now,
            regions: self.regions,
            bitmap_crc: 0,
        })
    }

    /// CDP is switched on at run time after sequence `after` (at `after_time`; 0: a new
    /// history): write state 1 (every region unknown) before the first update is journaled,
    /// so readers refuse points after `after` and a crash before the catch-up's gap record
    /// is durable makes the next start journal the whole volume again. Updates are journaled
    /// meanwhile, so nothing is marked (`active` stays false).
    /// A failed write changes nothing ([`RegionMap::stopped_after`] still says what the file
    /// said before).
    pub fn unknown(&mut self, after: u64, after_time: u64, now: u64) -> Result<(), CdpError> {
        self.put(Header {
            state: 1,
            after,
            after_time,
            stopped_at: now,
            regions: self.regions,
            bitmap_crc: 0,
        })
    }

    /// Recovery is about to cut the history after sequence `after` (at `after_time`) ahead of
    /// records that were journaled (acknowledged writes the volume holds and the history will
    /// not: a damaged record in a sealed segment, and the segments after it set aside): write
    /// state 1 (every region unknown) from there, so readers refuse the points after the cut
    /// and the start journals the whole volume again behind a gap record, as after a crash
    /// while degraded. An earlier stop the file already names keeps its earlier `after`.
    /// Returns where the history is whole up to.
    /// Written before recovery changes a byte of the segments, so a crash in between finds the
    /// cut again and the same answer.
    pub fn cut_before_journaled(
        dir: &Path,
        size: u64,
        after: u64,
        after_time: u64,
    ) -> Result<(u64, u64), CdpError> {
        let (mut m, prior) = RegionMap::open(dir, size)?;
        let (after, after_time) = prior.whole_until(after, after_time);
        m.unknown(after, after_time, super::clock::now())?;
        Ok((after, after_time))
    }

    /// The layer above (the mirror) no longer vouches that the replica is the volume after
    /// `after` (at `after_time`; [`crate::bdev::Vouch`]): every update is still journaled, so
    /// no region is marked. Written as state 2 with an empty bitmap: readers refuse every point
    /// after `after`, and a start journals no region again (its gap record, or the layer's once
    /// the replica is vouched for again, ends the refused stretch). Nothing is written while
    /// the journal is stopped (the map says so already, with an earlier or equal `after`).
    pub fn unvouched(&mut self, after: u64, after_time: u64, now: u64) -> Result<(), CdpError> {
        if self.active {
            return Ok(());
        }
        self.bits.fill(0);
        self.marked = 0;
        self.file
            .write_all_at(&self.bits, HEADER as u64)
            .map_err(io_err("write", &self.path))?;
        self.file.sync_data().map_err(io_err("sync", &self.path))?;
        self.put(Header {
            state: 2,
            after,
            after_time,
            stopped_at: now,
            regions: self.regions,
            bitmap_crc: crate::checksum::crc32c(&self.bits),
        })
    }

    /// A base update whose record lies at or before where the file says the history is whole
    /// failed after the history had ended there (the journal stopped, or CDP switched off):
    /// the end comes down to `after` (at `after_time`), the state and the stop's time kept
    /// (also the stop a clean stop's [`RegionMap::persist`] names). `None`: the file has
    /// nothing to lower (state 0, whose stop is still to be written, or an end at or before
    /// `after` already); a failed write keeps the file as it was.
    pub fn lower(&mut self, after: u64, after_time: u64) -> Option<Result<(), CdpError>> {
        if let Some(st) = &mut self.stop
            && after < st.0
        {
            st.0 = after;
            st.1 = after_time;
        }
        if self.header.state == 0 || after >= self.header.after {
            return None;
        }
        let mut h = self.header;
        h.after = after;
        h.after_time = after_time;
        Some(self.put(h))
    }

    /// Where the history is whole up to (sequence, time) when the file says the journal is
    /// not whole (state 1 or 2 written by this map), else `None`.
    pub fn stopped_after(&self) -> Option<(u64, u64)> {
        (self.header.state != 0).then_some((self.header.after, self.header.after_time))
    }

    /// Mark `[offset, offset + len)` changed.
    pub fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset >> REGION_SHIFT;
        let last = ((offset.saturating_add(len) - 1) >> REGION_SHIFT).min(self.regions - 1);
        for i in first..=last {
            let (byte, bit) = ((i / 8) as usize, 1u8 << (i % 8));
            if let Some(b) = self.bits.get_mut(byte)
                && *b & bit == 0
            {
                *b |= bit;
                self.marked += 1;
            }
        }
    }

    /// Regions marked so far.
    pub fn marked(&self) -> u64 {
        self.marked
    }

    /// A clean stop while degraded: write the bitmap, then state 2, after where the journal
    /// stopped (also when writing that stop failed and was not written again yet: the file
    /// then still says what it said before the stop, state 0 or an unvouched X, whose "after"
    /// is no end of the history).
    pub fn persist(&mut self) -> Result<(), CdpError> {
        if !self.active {
            return Ok(());
        }
        self.file
            .write_all_at(&self.bits, HEADER as u64)
            .map_err(io_err("write", &self.path))?;
        self.file.sync_data().map_err(io_err("sync", &self.path))?;
        let mut h = self.header;
        if let Some((after, after_time, stopped_at)) = self.stop {
            h.after = after;
            h.after_time = after_time;
            h.stopped_at = stopped_at;
        }
        h.state = 2;
        h.bitmap_crc = crate::checksum::crc32c(&self.bits);
        self.put(h)
    }

    /// The changed regions were journaled again and the gap record is durable: state 0.
    pub fn whole(&mut self) -> Result<(), CdpError> {
        self.active = false;
        self.stop = None;
        self.bits.fill(0);
        self.marked = 0;
        self.header.state = 0;
        self.header.bitmap_crc = 0;
        self.write_header()
    }
}

/// What a missing `degraded.map` of `dir` says: a directory of an earlier version (its history
/// not kept) is whole; in a kept history the map was deleted, and where the journal may have
/// stopped is not known: not whole after the base point, every region unknown (logged).
pub fn missing_map(dir: &Path) -> Prior {
    if !super::names::dir_is_kept(dir) {
        return Prior::Whole;
    }
    let (after, after_time) =
        super::names::read_meta(dir).map_or((0, 0), |m| (m.base_seq, m.window_start()));
    tracing::error!(dir = %dir.display(), after,
        "cdp: degraded.map is missing from a history that had one (deleted): the history is not whole after its base point (the next start journals the whole volume again)");
    Prior::Stopped {
        after,
        after_time,
        regions: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Not vouched for after X": readers see "stopped after X, no region changed"; a clean
    /// stop keeps it; whole again clears it.
    #[test]
    fn an_unvouched_map_reads_as_stopped_with_no_region_changed() {
        let d = tempfile::tempdir().unwrap();
        let size = 5 << 20;
        let (mut m, _) = RegionMap::open(d.path(), size).unwrap();
        m.unvouched(7, 70, 700).unwrap();
        assert!(!m.active);
        m.persist().unwrap();
        let want = Prior::Stopped {
            after: 7,
            after_time: 70,
            regions: Some(vec![0u8; regions_of(size).div_ceil(8) as usize]),
        };
        assert_eq!(read_prior(d.path(), size), want);
        let (mut m, prior) = RegionMap::open(d.path(), size).unwrap();
        assert_eq!(prior, want);
        assert_eq!(
            m.stopped_after(),
            None,
            "a new map knows only what it wrote"
        );
        m.whole().unwrap();
        assert_eq!(read_prior(d.path(), size), Prior::Whole);
    }

    /// The write of "the journal stopped" fails and the layer stops cleanly before writing it
    /// again: the clean stop names the stop's X, not the X the file held before (0).
    #[test]
    fn a_clean_stop_after_a_failed_stop_write_names_the_stops_x() {
        let d = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        let (mut m, _) = RegionMap::open(d.path(), size).unwrap();
        m.whole().unwrap();
        m.fail_writes(1);
        assert!(m.stopped(7, 70, 700).is_err());
        m.mark(1 << 20, 4096);
        m.persist().unwrap();
        match read_prior(d.path(), size) {
            Prior::Stopped {
                after: 7,
                after_time: 70,
                regions: Some(b),
            } if is_set(&b, 1) && !is_set(&b, 0) => {}
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn states_round_trip_and_damage_reads_as_unknown_regions() {
        let d = tempfile::tempdir().unwrap();
        let size = 5 << 20;
        let (mut m, prior) = RegionMap::open(d.path(), size).unwrap();
        assert_eq!(prior, Prior::Whole);
        m.stopped(41, 1000, 2000).unwrap();
        let read = || {
            let b = std::fs::read(d.path().join(FILE)).unwrap();
            decode(&b, regions_of(size))
        };
        assert_eq!(
            read(),
            Prior::Stopped {
                after: 41,
                after_time: 1000,
                regions: None
            }
        );
        m.mark(3 << 20, 1);
        m.mark((1 << 20) - 4096, 8192); // regions 0 and 1
        m.mark(4 << 20, 1 << 20);
        assert_eq!(m.marked(), 4);
        m.persist().unwrap();
        let Prior::Stopped {
            regions: Some(bits),
            after: 41,
            ..
        } = read()
        else {
            panic!("state 2 expected: {:?}", read())
        };
        let set: Vec<u64> = (0..5).filter(|&i| is_set(&bits, i)).collect();
        assert_eq!(set, vec![0, 1, 3, 4]);
        // Reopened: the prior says the same.
        drop(m);
        let (mut m, prior) = RegionMap::open(d.path(), size).unwrap();
        assert!(matches!(
            prior,
            Prior::Stopped {
                regions: Some(_),
                ..
            }
        ));
        m.whole().unwrap();
        assert_eq!(read(), Prior::Whole);
        // Any damage: unknown regions (the whole volume), never a panic, never "whole".
        let good = std::fs::read(d.path().join(FILE)).unwrap();
        for i in [0usize, 5, 9, 20, 45, 61] {
            let mut b = good.clone();
            b[i] ^= 0x40;
            assert!(
                matches!(
                    decode(&b, regions_of(size)),
                    Prior::Stopped { regions: None, .. }
                ),
                "byte {i}"
            );
        }
        for n in [0usize, 3, 63] {
            assert!(matches!(
                decode(&good[..n], regions_of(size)),
                Prior::Stopped { regions: None, .. }
            ));
        }
        // A map of another volume size is not trusted either.
        assert!(matches!(
            decode(&good, regions_of(size) + 1),
            Prior::Stopped { regions: None, .. }
        ));
        // A damaged bitmap under a good state-2 header: unknown regions.
        m.stopped(7, 8, 9).unwrap();
        m.mark(0, 1);
        m.persist().unwrap();
        let mut b = std::fs::read(d.path().join(FILE)).unwrap();
        b[HEADER] ^= 0x02;
        assert_eq!(
            decode(&b, regions_of(size)),
            Prior::Stopped {
                after: 7,
                after_time: 8,
                regions: None
            }
        );
    }
}
