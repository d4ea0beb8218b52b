//! After a crash, the tail of a history against the base it journals (docs/cdp-format.md,
//! "After a crash: the tail against the base").
//!
//! Model: an update's record is journaled when it arrives, its base operation issued in the
//! same turn or, behind an earlier overlapping update, once that one's is done (mod.rs); a
//! base operation may also take any time (a stalling device) while the appends go on. A
//! crash (kill -9) between the two leaves a record the base never got: an update never
//! acknowledged, so a point before the crash may hold it or not, but from the restart on the
//! volume is what the base holds; so does a power loss that drops writes the device had not
//! flushed. Every segment's header names the first record whose update may not have been in
//! the base when the segment began (base operation not done, or not flushed:
//! [`SegHeader::low`]); every update still in flight at the crash, and every write the device
//! may have dropped, has its records at or after the newest segment's ([`compare_from`]).
//! So a start after a crash compares, for the ranges of the records from there on, the
//! history's newest content with the base's, and [`differences`] hands over the base's bytes
//! where they differ, a piece at a time, which the start journals as ordinary records before
//! anything else.
//!
//! Invariants: for every byte of those ranges the newest content is the last record covering
//! it, which lies among those records; bytes no record of them covers are not read, unless
//! the mark reaches back into what the base copy already holds (consolidated records whose
//! ranges are no longer known): then every other byte's newest content is the base copy's
//! and the whole volume is compared. Retention never consolidates a record at or after the
//! newest segment's mark (retain.rs), so that happens only for a mark too far back to keep.
//!
//! [`SegHeader::low`]: super::format::SegHeader::low

use super::error::io_err;
use super::format::{Op, REC_HEADER};
use super::ranges::{self, Ranges};
use super::store::{self, CdpError, History};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How much is compared at once.
const PIECE: u64 = 1 << 20;

/// The first sequence a start after a crash compares: the newest segment's mark, or for a
/// segment of an older version without one, the first of the last two segments (where the
/// updates in flight had their records when the base kept up). `None`: no segment.
pub fn compare_from(h: &History) -> Option<u64> {
    let last = h.segments.last()?;
    Some(last.header.low.unwrap_or_else(|| {
        h.segments[h.segments.len().saturating_sub(2)]
            .header
            .first_seq
    }))
}

/// Compare `[start, end)` of `base` with `newest` (a closure filling a piece with the
/// history's content there), emitting the base's bytes of each differing piece.
fn compare(
    base: (&File, &Path),
    (start, end): (u64, u64),
    bufs: &mut (Vec<u8>, Vec<u8>),
    mut newest: impl FnMut(&mut [u8], u64) -> Result<(), CdpError>,
    emit: &mut impl FnMut(u64, &[u8]) -> Result<(), CdpError>,
) -> Result<usize, CdpError> {
    let (journaled, held) = bufs;
    let mut pieces = 0;
    let mut at = start;
    while at < end {
        let n = (end - at).min(PIECE) as usize;
        journaled.clear();
        journaled.resize(n, 0);
        newest(journaled, at)?;
        held.resize(n, 0);
        base.0
            .read_exact_at(&mut held[..n], at)
            .map_err(io_err("read the base", base.1))?;
        if held[..n] != journaled[..] {
            emit(at, &held[..n])?;
            pieces += 1;
        }
        at += n as u64;
    }
    Ok(pieces)
}

/// Where the newest point of `h` differs from `base` (a file of the volume's content) over
/// the ranges of the records from [`compare_from`] on (the whole volume when that reaches
/// into the base copy): `emit(offset, the base's bytes)` for each differing piece (at most
/// [`PIECE`] bytes, disjoint, in no particular order) as it is found, so memory stays one
/// piece whatever differs; how many pieces.
pub fn differences(
    h: &History,
    base: &Path,
    mut emit: impl FnMut(u64, &[u8]) -> Result<(), CdpError>,
) -> Result<usize, CdpError> {
    let Some(from) = compare_from(h) else {
        return Ok(0);
    };
    let size = h.meta.size;
    let b = File::open(base).map_err(io_err("open the base", base))?;
    let mut covered = Ranges::new();
    let mut pieces = 0;
    let mut bufs = (Vec::new(), Vec::new());
    for s in h.segments.iter().rev() {
        if s.index.entries.last().is_some_and(|e| e.seq < from) {
            break;
        }
        let sp = store::seg_path(&h.dir, s.header.segno);
        let seg = File::open(&sp).map_err(io_err("open", &sp))?;
        for e in s.index.entries.iter().rev() {
            if e.seq < from {
                break;
            }
            if !matches!(e.op, Op::Write | Op::Zeroes | Op::Unmap) || e.len == 0 {
                continue;
            }
            let end = e.offset.saturating_add(e.len).min(size);
            if end <= e.offset {
                continue;
            }
            for gap in ranges::gaps(&covered, e.offset, end) {
                pieces += compare(
                    (&b, base),
                    gap,
                    &mut bufs,
                    |out, at| {
                        if e.op == Op::Write {
                            let pos = e.pos + REC_HEADER as u64 + (at - e.offset);
                            seg.read_exact_at(out, pos).map_err(io_err("read", &sp))?;
                        }
                        Ok(())
                    },
                    &mut emit,
                )?;
            }
            ranges::mark(&mut covered, e.offset, end);
        }
    }
    if from <= h.meta.base_seq {
        // Records at or after the mark are in the base copy already: their ranges are not
        // known any more, so every byte no later record covers is compared, its newest
        // content the base copy's.
        tracing::warn!(dir = %h.dir.display(), from, base_seq = h.meta.base_seq,
            "cdp: the crashed run's oldest update in flight is consolidated already: comparing the whole volume with the history");
        let copy_path = store::base_path(&h.dir);
        let copy = File::open(&copy_path).map_err(io_err("open", &copy_path))?;
        for gap in ranges::gaps(&covered, 0, size) {
            pieces += compare(
                (&b, base),
                gap,
                &mut bufs,
                |out, at| store::read_or_zero(&copy, out, at).map_err(io_err("read", &copy_path)),
                &mut emit,
            )?;
        }
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::super::format::{self, SegHeader};
    use super::super::store::{self, Load};
    use super::*;

    /// Records 51..=60 (block `q % 64` holds bytes `q`) after a base copy at sequence 50 whose
    /// block 5 holds 0xAA, a volume file that is the history's newest point except at block 5
    /// (zeroes: a consolidated record whose base write never ran), the newest segment's mark
    /// `low`; the pieces [`differences`] finds, as (offset, length, whether block 5 is in it
    /// with the volume's zeroes).
    fn pieces_with_mark(low: u64) -> Vec<(u64, usize, bool)> {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let size = 1u64 << 20;
        store::testing::history(dir, 0xbeef, size, 50, &[(2, 51..=60)]);
        let mut copy = vec![0u8; size as usize];
        copy[5 * 4096..6 * 4096].fill(0xAA);
        std::fs::write(store::base_path(dir), &copy).unwrap();
        let p = store::seg_path(dir, 2);
        let mut img = std::fs::read(&p).unwrap();
        let mut h = SegHeader::decode(&img).unwrap();
        h.low = Some(low);
        img[..format::SEG_HEADER].copy_from_slice(&h.encode());
        // Not kept, as the fixture's (its base copy, written above, has no identity).
        img[super::super::kept::MARK_AT..][..8].fill(0);
        std::fs::write(&p, img).unwrap();
        let mut volume = copy.clone();
        volume[5 * 4096..6 * 4096].fill(0);
        for q in 51..=60u64 {
            volume[(q as usize % 64) * 4096..][..4096].fill(q as u8);
        }
        let vol = dir.join("volume");
        std::fs::write(&vol, &volume).unwrap();
        let h = store::load(dir, Load::ReadOnly).unwrap();
        let mut found = Vec::new();
        let n = differences(&h, &vol, |off, bytes| {
            assert!(
                bytes == &volume[off as usize..][..bytes.len()],
                "the volume's bytes"
            );
            let has5 = off <= 5 * 4096 && off + bytes.len() as u64 >= 6 * 4096;
            found.push((off, bytes.len(), has5));
            Ok(())
        })
        .unwrap();
        assert_eq!(n, found.len());
        found
    }

    /// A mark at or before the base point (the crashed run's oldest update in flight was
    /// consolidated: its range is not known any more) compares the whole volume, the base
    /// copy standing for every byte no record covers; a mark inside the journal compares the
    /// records' ranges only.
    #[test]
    fn a_mark_reaching_into_the_base_copy_compares_the_whole_volume() {
        for low in [0, 10, 50] {
            let found = pieces_with_mark(low);
            assert_eq!(found.len(), 1, "mark {low}: {found:?}");
            assert!(found[0].2, "mark {low}: block 5 differs: {found:?}");
        }
        for low in [51, 55, 61] {
            assert_eq!(pieces_with_mark(low), vec![], "mark {low}");
        }
    }
}
