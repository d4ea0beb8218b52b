//! The names of a history directory's files and what the listing says about them: segment
//! and base copy paths, the meta, the segments in use (spares apart), and whether the history
//! is kept (docs/cdp-integrity.md). Below every module that reads or writes those files
//! (store.rs, kept.rs, degraded.rs): it reads headers and the meta, and changes nothing.

use super::error::{CdpError, io_err};
use super::format::{self, MARK, MARK_AT, Meta};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The file of segment `segno`.
pub fn seg_path(dir: &Path, segno: u64) -> PathBuf {
    dir.join(format!("seg-{segno:016x}.cdp"))
}

/// The base copy.
pub fn base_path(dir: &Path) -> PathBuf {
    dir.join("base.img")
}

/// The history's identity (`cdp.meta`).
pub fn meta_path(dir: &Path) -> PathBuf {
    dir.join("cdp.meta")
}

/// The daemon lock (`daemon.lock`: a daemon journaling here, or a rollback, holds it).
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("daemon.lock")
}

/// Refuse a directory that exists and holds files but no history (no `cdp.meta`): a new
/// history would take its files' names whatever is there (`base.img`, a file volume's file
/// perhaps, replaced by the empty base copy). Only a daemon's lock file may be there (a
/// `cdp_enable` or a start that failed before making the history leaves it). A directory that
/// is missing (it is made) or is not one (refused when it is opened) passes. Reads only:
/// `cdp_enable` and the daemon's start ask before anything is written there.
pub fn refuse_foreign_files(dir: &Path) -> Result<(), CdpError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    if meta_path(dir).exists() {
        return Ok(());
    }
    let lock = lock_path(dir);
    let mut foreign: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path() != lock)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let more = foreign.len().saturating_sub(5);
    foreign.truncate(5);
    let what = if segment_numbers(dir).is_ok_and(|v| !v.is_empty()) {
        "it holds a history's segments, so its cdp.meta was lost: put cdp.meta back, or move the directory's files away to start a new history"
    } else {
        "give an empty or new directory"
    };
    Err(CdpError::Refused(format!(
        "directory {} holds files but no CDP history (no cdp.meta): {}{}; a new history would write over files of these names (base.img, ...): {what}",
        dir.display(),
        foreign.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )))
}

/// Read the identity of an existing history.
pub fn read_meta(dir: &Path) -> Result<Meta, CdpError> {
    let mp = meta_path(dir);
    let b = std::fs::read(&mp).map_err(io_err("read", &mp))?;
    Meta::decode(&b).map_err(|e| CdpError::Meta {
        path: mp,
        why: e.to_string(),
    })
}

/// Every segment number in `dir`, in order (spares included).
pub fn segment_numbers(dir: &Path) -> Result<Vec<u64>, CdpError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let e = e.map_err(io_err("list", dir))?;
        let name = e.file_name();
        let Some(s) = name.to_str() else { continue };
        if let Some(hex) = s.strip_prefix("seg-").and_then(|r| r.strip_suffix(".cdp"))
            && let Ok(n) = u64::from_str_radix(hex, 16)
        {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// A prepared, unused segment (header all zeroes, or shorter than a header).
pub fn is_spare(dir: &Path, segno: u64) -> bool {
    let mut hb = vec![0u8; format::SEG_HEADER];
    match File::open(seg_path(dir, segno)).and_then(|f| f.read_exact_at(&mut hb, 0)) {
        Ok(()) => hb.iter().all(|&b| b == 0),
        Err(_) => false,
    }
}

/// The segment numbers of `dir` in order, without the trailing spares (returned apart): the
/// newest segment in use is the last of the first list.
pub fn segments_in_use(dir: &Path) -> Result<(Vec<u64>, Vec<u64>), CdpError> {
    let mut nums = segment_numbers(dir)?;
    let mut spares = Vec::new();
    while let Some(&n) = nums.last() {
        if !is_spare(dir, n) {
            break;
        }
        spares.push(nums.pop().expect("last exists"));
    }
    Ok((nums, spares))
}

/// Whether a segment header's bytes carry the mark.
pub fn marked(header: &[u8]) -> bool {
    header.get(MARK_AT..MARK_AT + MARK.len()) == Some(&MARK[..])
}

/// Whether `dir`'s history is kept: the newest of segments `nums` whose header checks is
/// marked (a spare, all zeroes, or a damaged header is passed over).
pub fn is_kept(dir: &Path, nums: &[u64]) -> bool {
    for &segno in nums.iter().rev() {
        let mut hb = vec![0u8; format::SEG_HEADER];
        let ok = File::open(seg_path(dir, segno))
            .and_then(|f| f.read_exact_at(&mut hb, 0))
            .is_ok();
        if ok && format::SegHeader::decode(&hb).is_ok() {
            return marked(&hb);
        }
    }
    false
}

/// Whether `dir`'s history is kept, listing its segments (false when they cannot be listed).
pub fn dir_is_kept(dir: &Path) -> bool {
    segments_in_use(dir).is_ok_and(|(nums, _)| is_kept(dir, &nums))
}
