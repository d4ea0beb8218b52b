//! The base as a clean stop left it (`base.stamp`; docs/cdp-format.md, "The base at a clean
//! stop"): a start whose last segment a clean stop sealed trusts that the volume is the
//! history's newest point and compares nothing (tail.rs). That holds only if nothing wrote the
//! base since: not a daemon run without the layer, not the runs of a directory the operator
//! later put back from an older copy (a backup restored: its last segment is sealed clean too,
//! and every write since is in the volume only).
//!
//! Model: the clean stop, after its `fsync` of a file base (so its modification time is
//! durable too) and before it seals the
//! segment, records the base file's identity and modification time with the segment it seals
//! ([`record`]). A start that finds its last segment sealed clean asks [`changed`]: the
//! stamp names that segment and the base's inode, size or modification time differs (not its
//! device number: a reboot may number the device anew), or the stamp is damaged. Then the history is not whole after its end, or after where the journal
//! had stopped in that run (the start journals the whole volume again, behind a gap record, as
//! after a stopped journal: not only the changed regions `degraded.map` names).
//!
//! Invariants: a stamp counts only for the segment it names (number, first sequence, creation
//! time): a later run's segment of the same number (after a cut) is not its. Without a stamp
//! for the sealed segment (a directory of an earlier version, a block device whose counters
//! cannot be read, a stamp that could not be written) the start trusts the seal as before. A
//! block device's stamp holds the boot and its count of sectors written instead of times
//! (docs/cdp-integrity.md): another count in the same boot is a write since; another boot
//! tells nothing. A write after the stop stamps
//! another modification time: the stop returns only once the coarse clock passed the one it
//! recorded (before session 28, on kernels without multigrain timestamps, a write in the same
//! clock tick as the last one before the stop kept it, and was not seen).

use super::error::{io_err, sync_dir};
use super::format::{self, Meta, SegHeader};
use super::store::{self, CdpError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TBCDPBS1";
const LEN: usize = 96;

/// The file's name in the directory.
pub const FILE: &str = "base.stamp";

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// What a stamp holds: (vol id, segno, first seq, created) and the base's (dev, ino, size,
/// mtime s, mtime ns).
fn encode(meta: &Meta, seg: &SegHeader, m: &std::fs::Metadata) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    let words = [
        meta.vol_id,
        seg.segno,
        seg.first_seq,
        seg.created,
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
    ];
    for (i, w) in words.iter().enumerate() {
        format::put64(&mut b, 16 + 8 * i, *w);
    }
    let crc = crate::checksum::crc32c(&b[..LEN - 4]);
    b[LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Bytes 12..16 of a stamp of a block device base (0: a file; docs/cdp-integrity.md).
const KIND_BLOCK: u32 = 1;

/// A block device's state in this boot: (the boot's id folded to 64 bits, the sectors written
/// to it since the boot, `/sys/dev/block/MAJ:MIN/stat`), or `None` when they cannot be read.
fn block_state(m: &std::fs::Metadata) -> Option<(u64, u64)> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = u128::from_str_radix(&boot.trim().replace('-', ""), 16).ok()?;
    let rdev = m.rdev();
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    let sectors = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(((id as u64) ^ ((id >> 64) as u64), sectors))
}

/// Record `base` (a file or a block device, just synced) as the clean stop of `dir` sealing
/// segment `segno` leaves it. Written before the seal: a seal without its stamp is trusted as
/// before.
pub fn record(dir: &Path, meta: &Meta, segno: u64, base: &Path) -> Result<(), CdpError> {
    record_with(dir, meta, segno, base, block_state)
}

fn record_with(
    dir: &Path,
    meta: &Meta,
    segno: u64,
    base: &Path,
    state: impl Fn(&std::fs::Metadata) -> Option<(u64, u64)>,
) -> Result<(), CdpError> {
    use std::os::unix::fs::FileTypeExt;
    let m = std::fs::metadata(base).map_err(io_err("stat", base))?;
    let block = m.file_type().is_block_device().then(|| state(&m)).flatten();
    if !m.is_file() && block.is_none() {
        // Another kind of file, or a block device whose write counters cannot be read.
        let _ = std::fs::remove_file(path(dir));
        return sync_dir(dir);
    }
    let seg = store::segment_header(dir, segno)?;
    let mut b = encode(meta, &seg, &m);
    if let Some((boot, sectors)) = block {
        // Its times say nothing of writes: this boot and its count of sectors written do
        // (words 4, 5 and 7: boot, device number, sectors; 6 and 8 zero).
        let words = [(4, boot), (5, m.rdev()), (6, 0), (7, sectors), (8, 0)];
        for (i, w) in words {
            format::put64(&mut b, 16 + 8 * i, w);
        }
        b[12..16].copy_from_slice(&KIND_BLOCK.to_le_bytes());
        let crc = crate::checksum::crc32c(&b[..LEN - 4]);
        b[LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    store::write_atomic(dir, &path(dir), &b)?;
    if block.is_none() {
        past_tick(&m);
    }
    Ok(())
}

/// Return once the coarse wall clock (the one a write stamps a file with, on kernels without
/// multigrain timestamps, before Linux 6.13, and their file systems) has passed `m`'s
/// modification time, so that a write after the stop stamps another (at most a clock tick,
/// a few ms; not when that time is further ahead, a clock stepped back: then any write stamps
/// an earlier time, another one too).
fn past_tick(m: &std::fs::Metadata) {
    let mtime = (m.mtime() as i128) * 1_000_000_000 + i128::from(m.mtime_nsec());
    let coarse = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through the pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    let until = std::time::Instant::now() + std::time::Duration::from_millis(50);
    while coarse() <= mtime && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Whether `base` was changed since the clean stop that sealed `seg` (the history's last
/// segment) recorded it: `false` when no stamp names that segment (nothing to tell).
pub fn changed(dir: &Path, meta: &Meta, seg: &SegHeader, base: &Path) -> bool {
    changed_with(dir, meta, seg, base, block_state)
}

fn changed_with(
    dir: &Path,
    meta: &Meta,
    seg: &SegHeader,
    base: &Path,
    state: impl Fn(&std::fs::Metadata) -> Option<(u64, u64)>,
) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let b = match std::fs::read(path(dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    let ok = b.len() == LEN
        && &b[..8] == MAGIC
        && crate::checksum::crc32c(&b[..LEN - 4]).to_le_bytes() == b[LEN - 4..];
    if !ok {
        return true;
    }
    let word = |i: usize| format::le64(&b, 16 + 8 * i);
    if (word(0), word(1), word(2), word(3)) != (meta.vol_id, seg.segno, seg.first_seq, seg.created)
    {
        return false;
    }
    let kind = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
    if kind == KIND_BLOCK {
        // A block device: the same device, and in the same boot the same count of sectors
        // written; in another boot the counters began again: nothing to tell (trusted, as
        // before session 28).
        return match std::fs::metadata(base) {
            Ok(m) if m.file_type().is_block_device() && m.rdev() == word(5) => match state(&m) {
                Some((boot, sectors)) if boot == word(4) => sectors != word(7),
                _ => false,
            },
            _ => true,
        };
    }
    if kind != 0 {
        return true;
    }
    // Not the device number (word 4): that of the filesystem's device may change from one boot
    // to the next (device-mapper and NVMe numbering, btrfs's anonymous devices), and a clean
    // stop followed by a reboot is the most usual restart; another file has another inode.
    match std::fs::metadata(base) {
        Ok(m) if m.is_file() => {
            let now = encode(meta, seg, &m);
            now[16 + 8 * 5..16 + 8 * 9] != b[16 + 8 * 5..16 + 8 * 9]
        }
        _ => true,
    }
}

/// How long after a history's last record a base file may still have been written by the
/// updates of that run: their records are stamped as they arrive, a time mark every idle
/// second keeps the last record's time within about a second of a crash, and a base write
/// may complete some seconds after its record on a loaded or slow device.
pub const WRITTEN_AFTER_SLACK_NS: u64 = 10_000_000_000;

/// Whether `base`, a file, was modified well after `last_time` (site time of a history's last
/// record, a log not sealed clean): by something other than the run that journaled it (a
/// directory put back from a copy taken while a daemon ran, the volume written since). Not
/// for a block device (its times say nothing of writes), nor a file that cannot be read.
pub fn written_after(base: &Path, last_time: u64) -> bool {
    std::fs::metadata(base).is_ok_and(|m| {
        let mtime = (m.mtime().max(0) as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(m.mtime_nsec().max(0) as u64);
        m.is_file() && mtime > last_time.saturating_add(WRITTEN_AFTER_SLACK_NS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamp counts only for the segment it names; a base written since, a damaged stamp,
    /// or another base file tells the start the seal is not to be trusted.
    #[test]
    fn a_stamp_tells_a_base_written_since_and_only_for_its_segment() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let meta = store::testing::history(dir, 7, 64 * 4096, 0, &[(1, 1..=5)]);
        let base = d.path().join("v.img");
        std::fs::write(&base, vec![1u8; 4096]).unwrap();
        let seg = store::segment_header(dir, 1).unwrap();
        assert!(!changed(dir, &meta, &seg, &base), "no stamp: trusted");
        record(dir, &meta, 1, &base).unwrap();
        assert!(!changed(dir, &meta, &seg, &base));
        let other = SegHeader {
            created: seg.created + 1,
            ..seg
        };
        assert!(
            !changed(dir, &meta, &other, &base),
            "another segment's stamp"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&base, vec![2u8; 4096]).unwrap();
        assert!(changed(dir, &meta, &seg, &base), "written since");
        record(dir, &meta, 1, &base).unwrap();
        // The same file after a reboot that numbered its filesystem's device anew.
        let mut b = std::fs::read(path(dir)).unwrap();
        b[16 + 8 * 4] ^= 1;
        let crc = crate::checksum::crc32c(&b[..LEN - 4]);
        b[LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(path(dir), &b).unwrap();
        assert!(!changed(dir, &meta, &seg, &base), "the device renumbered");
        record(dir, &meta, 1, &base).unwrap();
        let mut b = std::fs::read(path(dir)).unwrap();
        b[70] ^= 1;
        std::fs::write(path(dir), &b).unwrap();
        assert!(changed(dir, &meta, &seg, &base), "a damaged stamp");
    }

    /// A write right after the stop (within the file system's timestamp granularity, a clock
    /// tick: the time a write stamps is the coarse clock's) is seen: the stop returns only once
    /// the coarse clock has passed the modification time it recorded, so any later write
    /// stamps another one. Before session 28 a write in the same tick as the last write before
    /// the stop kept the time, and the start trusted the seal.
    #[test]
    fn a_write_right_after_the_stop_is_seen() {
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let dir = d.path();
        let meta = store::testing::history(dir, 7, 64 * 4096, 0, &[(1, 1..=5)]);
        let base = d.path().join("v.img");
        let seg = store::segment_header(dir, 1).unwrap();
        for round in 0..20 {
            std::fs::write(&base, vec![1u8; 4096]).unwrap();
            std::fs::File::open(&base).unwrap().sync_all().unwrap();
            record(dir, &meta, 1, &base).unwrap();
            std::fs::write(&base, vec![2u8; 4096]).unwrap();
            assert!(
                changed(dir, &meta, &seg, &base),
                "round {round}: written since"
            );
        }
    }

    /// A block device base written between two runs in one boot is seen: the stop records the
    /// boot and the device's count of sectors written (its times say nothing). Before session
    /// 28 no stamp was kept for a block device and the seal was trusted. In another boot the
    /// counters began again: nothing to tell, trusted as before. (The counters are faked here:
    /// a test cannot write a block device of this machine.)
    #[test]
    fn a_block_device_written_since_the_stop_is_seen_in_the_same_boot() {
        use std::cell::Cell;
        use std::os::unix::fs::FileTypeExt;
        let Some(dev) = ["/dev/loop0", "/dev/vda", "/dev/sda", "/dev/nvme0n1"]
            .into_iter()
            .map(Path::new)
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device()))
        else {
            eprintln!("skipped: no block device node here");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let meta = store::testing::history(dir, 7, 64 * 4096, 0, &[(1, 1..=5)]);
        let seg = store::segment_header(dir, 1).unwrap();
        let (boot, sectors) = (Cell::new(7u64), Cell::new(1000u64));
        let st = |_: &std::fs::Metadata| Some((boot.get(), sectors.get()));
        record_with(dir, &meta, 1, dev, st).unwrap();
        assert!(!changed_with(dir, &meta, &seg, dev, st), "nothing written");
        sectors.set(1008);
        assert!(changed_with(dir, &meta, &seg, dev, st), "written since");
        boot.set(8);
        assert!(
            !changed_with(dir, &meta, &seg, dev, st),
            "another boot: nothing to tell"
        );
        let file = d.path().join("v.img");
        std::fs::write(&file, [1u8; 4096]).unwrap();
        assert!(
            changed_with(dir, &meta, &seg, &file, st),
            "a file put in the device's place"
        );
        // Counters that cannot be read: no stamp, the seal trusted as before.
        record_with(dir, &meta, 1, dev, |_| None).unwrap();
        assert!(!path(dir).exists());
    }
}
