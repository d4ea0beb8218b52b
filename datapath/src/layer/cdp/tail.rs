//! After a crash, the tail of a history against the base it journals (docs/cdp-format.md,
//! "After a crash: the tail against the base").
//!
//! Model: an update's record is journaled when it arrives, its base operation issued in the
//! same turn or, behind an earlier overlapping update, once that one's is done (mod.rs). A
//! crash (kill -9) between the two leaves a record the base never got: an update never
//! acknowledged, so a point before the crash may hold it or not, but from the restart on the
//! volume is what the base holds. So a start after a crash compares, for the ranges of the
//! records of the last two segments (where every update still in flight at the crash has its
//! records), the history's newest content with the base's, and [`differences`] hands over
//! the base's bytes where they differ, a piece at a time, which the start journals as ordinary
//! records before anything else.
//!
//! Invariant: for every byte of those ranges the newest content is the last record covering
//! it, which lies in those segments; bytes no record of them covers are not read.

use super::error::io_err;
use super::format::{Op, REC_HEADER};
use super::ranges::{self, Ranges};
use super::store::{self, CdpError, History};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How much is compared at once.
const PIECE: u64 = 1 << 20;

/// Where the newest point of `h` differs from `base` (a file of the volume's content) over
/// the ranges of the last two segments' records: `emit(offset, the base's bytes)` for each
/// differing piece (at most [`PIECE`] bytes, disjoint, in no particular order) as it is
/// found, so memory stays one piece whatever differs; how many pieces.
pub fn differences(
    h: &History,
    base: &Path,
    mut emit: impl FnMut(u64, &[u8]) -> Result<(), CdpError>,
) -> Result<usize, CdpError> {
    let size = h.meta.size;
    let b = File::open(base).map_err(io_err("open the base", base))?;
    let mut covered = Ranges::new();
    let mut pieces = 0;
    let (mut journaled, mut held) = (Vec::new(), Vec::new());
    let tail = h.segments.len().saturating_sub(2);
    for s in h.segments[tail..].iter().rev() {
        let sp = store::seg_path(&h.dir, s.header.segno);
        let seg = File::open(&sp).map_err(io_err("open", &sp))?;
        for e in s.index.entries.iter().rev() {
            if !matches!(e.op, Op::Write | Op::Zeroes | Op::Unmap) || e.len == 0 {
                continue;
            }
            let end = e.offset.saturating_add(e.len).min(size);
            if end <= e.offset {
                continue;
            }
            for (gs, ge) in ranges::gaps(&covered, e.offset, end) {
                let mut at = gs;
                while at < ge {
                    let n = (ge - at).min(PIECE) as usize;
                    journaled.clear();
                    journaled.resize(n, 0);
                    if e.op == Op::Write {
                        let pos = e.pos + REC_HEADER as u64 + (at - e.offset);
                        seg.read_exact_at(&mut journaled, pos)
                            .map_err(io_err("read", &sp))?;
                    }
                    held.resize(n, 0);
                    b.read_exact_at(&mut held[..n], at)
                        .map_err(io_err("read the base", base))?;
                    if held[..n] != journaled[..] {
                        emit(at, &held[..n])?;
                        pieces += 1;
                    }
                    at += n as u64;
                }
            }
            ranges::mark(&mut covered, e.offset, end);
        }
    }
    Ok(pieces)
}
