//! Retention's tests: consolidation passes, their plans, holds and the thread's turns.
use super::*;
use crate::layer::cdp::format::Entry;

/// A directory on the test's filesystem and, where the machine has one, one in memory
/// (`/dev/shm`), where consolidation reads segments through a mapping (mapped.rs).
fn on_disk_and_in_memory() -> Vec<tempfile::TempDir> {
    let mut v = vec![tempfile::tempdir().unwrap()];
    if let Ok(m) = tempfile::tempdir_in("/dev/shm") {
        assert!(super::super::journal::in_memory(m.path()));
        v.push(m);
    }
    v
}

use crate::layer::testing::Rng;

/// A random segment's entries (1 to 40: writes, write-zeroes, unmaps and marks), each
/// data entry's `(offset, len)` from `range`.
fn random_log(r: &mut Rng, mut range: impl FnMut(&mut Rng) -> (u64, u64)) -> Vec<Entry> {
    let n = 1 + r.below(40) as usize;
    (0..n)
        .map(|i| {
            let op = [Op::Write, Op::Write, Op::Zeroes, Op::Unmap, Op::Mark][r.below(5) as usize];
            let (offset, len) = if op == Op::Mark { (0, 0) } else { range(r) };
            Entry {
                seq: i as u64 + 1,
                time: i as u64,
                offset,
                len,
                pos: 0,
                op,
            }
        })
        .collect()
}

/// Against a model of which entry wrote each byte last: an entry is skipped exactly when
/// none of its bytes is last written by it, so applying the rest in order leaves every
/// byte as applying all would.
#[test]
fn an_entry_is_skipped_exactly_when_later_ones_overwrite_all_of_it() {
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..300 {
        let entries = random_log(&mut r, |r| {
            (
                r.below(64),
                1 + r.below(if round % 2 == 0 { 8 } else { 40 }),
            )
        });
        let mut last = vec![None; 128];
        for (i, e) in entries.iter().enumerate() {
            for b in e.offset..e.offset + e.len {
                last[b as usize] = Some(i);
            }
        }
        let skip = superseded(&entries);
        for (i, e) in entries.iter().enumerate() {
            let lasts_somewhere = (e.offset..e.offset + e.len).any(|b| last[b as usize] == Some(i));
            let data = e.op != Op::Mark;
            assert_eq!(
                skip[i],
                data && !lasts_somewhere,
                "round {round}, entry {i}: {e:?}"
            );
        }
    }
}

/// Applying [`plan`]'s entries in its order leaves every byte as applying all entries in
/// log order does, whether the segment's ranges are disjoint but for exact repeats (block
/// writes: then sorted by offset when asked) or overlap in part (log order); an entry is
/// left out only when none of its bytes lasts.
#[test]
fn a_plan_applied_in_its_order_gives_the_base_copy_of_the_whole_log() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut sorted_seen, mut overlap_seen) = (0, 0);
    for round in 0..600 {
        let blocks = round % 3 != 2; // two rounds in three: whole 8-byte "blocks"
        let entries = random_log(&mut r, |r| {
            if blocks {
                (
                    8 * r.below(12),
                    8 * (1 + r.below(if round % 2 == 0 { 1 } else { 2 })),
                )
            } else {
                (r.below(64), 1 + r.below(20))
            }
        });
        let n = entries.len();
        let run = |order: &[usize]| {
            let mut bytes = vec![0usize; 128];
            for &i in order {
                let e = &entries[i];
                for b in e.offset..e.offset + e.len {
                    bytes[b as usize] = i + 1;
                }
            }
            bytes
        };
        let all: Vec<usize> = (0..n).filter(|&i| entries[i].op != Op::Mark).collect();
        let want = run(&all);
        for by_offset in [false, true] {
            let (order, left_out) = plan(&entries, by_offset);
            assert_eq!(
                run(&order),
                want,
                "round {round}, by_offset {by_offset}: {entries:?} -> {order:?}"
            );
            assert_eq!(order.len() + left_out, all.len(), "round {round}");
            for i in all.iter().filter(|i| !order.contains(i)) {
                assert!(
                    !want.contains(&(i + 1)),
                    "round {round}: entry {i} left out, yet some byte lasts from it"
                );
            }
            if order.windows(2).any(|w| w[0] > w[1]) {
                assert!(by_offset, "round {round}: log order asked");
                assert!(
                    order
                        .windows(2)
                        .all(|w| entries[w[0]].offset < entries[w[1]].offset)
                );
                sorted_seen += 1;
            }
        }
        if !blocks && plan(&entries, true).0.windows(2).all(|w| w[0] < w[1]) {
            overlap_seen += 1;
        }
    }
    assert!(
        sorted_seen > 50 && overlap_seen > 50,
        "{sorted_seen} sorted, {overlap_seen} in log order"
    );
}

/// A sealed segment whose log stops early (a damaged record, no index) is not
/// consolidated: the pass fails naming it, the base point stays, the file stays a segment
/// (never recycled with records above the base point). Undamaged, it is consolidated.
#[test]
fn a_segment_with_a_damaged_record_is_not_consolidated_or_recycled() {
    use crate::layer::cdp::format::{self, testing::segment_image};
    for d in on_disk_and_in_memory() {
        let dir = d.path();
        store::testing::history(dir, 0xd00d, 1 << 20, 0, &[(2, 51..=60)]);
        let good = segment_image(0xd00d, 1, 1..=50);
        let mut bad = good.clone();
        bad[format::SEG_HEADER + 19 * (REC_HEADER + 4096) + REC_HEADER + 9] ^= 1;
        std::fs::write(store::seg_path(dir, 1), &bad).unwrap();
        let r = Retention {
            age_ns: None,
            bytes: Some(1),
        };
        let e = consolidate_once(dir, &r, 100).unwrap_err().to_string();
        assert!(
            e.contains("damaged record") && e.contains("after sequence 19"),
            "{e}"
        );
        assert_eq!(store::read_meta(dir).unwrap().base_seq, 0);
        assert!(store::seg_path(dir, 1).exists());
        assert!(!std::fs::read_dir(dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("recycled-")
        }));
        // Undamaged (the index the failed pass wrote removed with it): consolidated.
        std::fs::write(store::seg_path(dir, 1), &good).unwrap();
        let _ = std::fs::remove_file(store::seg_path(dir, 1).with_extension("idx"));
        let c = consolidate_once(dir, &r, 100)
            .unwrap()
            .expect("consolidated");
        assert_eq!(c.base_seq, 50);
        assert!(!store::seg_path(dir, 1).exists());
    }
}

/// A sealed segment on a disk is consolidated through a mapping (its pages present at once),
/// and one that cannot be mapped (sparse: a hole punched in its unused tail) through reads
/// into a buffer: either way the base copy holds every record's bytes after the pass.
#[test]
fn a_disk_segment_consolidates_mapped_and_when_sparse_read_into_a_buffer() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    for sparse in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        if super::super::journal::in_memory(dir) {
            eprintln!("skipped: the test's directory is not on a disk");
            return;
        }
        store::testing::history(dir, 0xd15c, 1 << 20, 0, &[(1, 1..=50), (2, 51..=60)]);
        let p = store::seg_path(dir, 1);
        if sparse {
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            // SAFETY: plain syscall on an open descriptor.
            let r = unsafe {
                libc::fallocate(
                    f.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    512 << 10,
                    512 << 10,
                )
            };
            let m = std::fs::metadata(&p).unwrap();
            if r != 0 || m.blocks() * 512 >= m.len() {
                eprintln!("skipped: this filesystem made no hole");
                continue;
            }
            let ro = File::open(&p).unwrap();
            assert!(
                Mapped::open_populated(&ro).is_err(),
                "a sparse file is not mapped"
            );
        } else {
            assert!(Mapped::open_populated(&File::open(&p).unwrap()).is_ok());
        }
        let r = Retention {
            age_ns: None,
            bytes: Some(1),
        };
        let c = consolidate_once(dir, &r, 100)
            .unwrap()
            .expect("consolidated");
        assert_eq!(c.base_seq, 50);
        let base = std::fs::read(store::base_path(dir)).unwrap();
        for q in 1..=50u64 {
            let b = &base[(q as usize % 64) * 4096..][..4096];
            assert!(
                b.iter().all(|&x| x == q as u8),
                "sparse {sparse}: block of record {q}"
            );
        }
        assert!(
            base[..4096].iter().all(|&x| x == 0),
            "block 0 never written"
        );
    }
}

/// A record at or after the newest segment's mark (an update whose base operation was
/// not done when that segment began) is never consolidated, whatever retention says: a
/// crash comparison needs it. Once the mark has moved past the segment, it is.
#[test]
fn a_segment_with_a_record_at_or_after_the_newest_mark_is_not_consolidated() {
    use crate::layer::cdp::format::{self, SegHeader};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(
        dir,
        0xd00d,
        1 << 20,
        0,
        &[(1, 1..=50), (2, 51..=60), (3, 61..=70)],
    );
    let r = Retention {
        age_ns: None,
        bytes: Some(1),
    };
    let mark = |low: u64| {
        let p = store::seg_path(dir, 3);
        let mut img = std::fs::read(&p).unwrap();
        let mut h = SegHeader::decode(&img).unwrap();
        h.low = Some(low);
        img[..format::SEG_HEADER].copy_from_slice(&h.encode());
        // Not kept, as the fixture's (docs/cdp-integrity.md: its base copy has no identity).
        img[super::super::kept::MARK_AT..][..8].fill(0);
        std::fs::write(&p, img).unwrap();
    };
    for low in [50, 7, 1, 0] {
        mark(low);
        assert_eq!(consolidate_once(dir, &r, 100).unwrap(), None, "mark {low}");
        assert_eq!(store::read_meta(dir).unwrap().base_seq, 0);
        assert!(store::seg_path(dir, 1).exists());
    }
    mark(51);
    let c = consolidate_once(dir, &r, 100)
        .unwrap()
        .expect("consolidated");
    assert_eq!(c.base_seq, 50);
    // The next segment holds the mark now.
    mark(58);
    assert_eq!(consolidate_once(dir, &r, 100).unwrap(), None);
    assert!(store::seg_path(dir, 2).exists());
    // Sealed by a clean stop (nothing is compared then): the mark holds nothing back.
    let meta = store::read_meta(dir).unwrap();
    let used = (format::SEG_HEADER + 10 * (format::REC_HEADER + 4096)) as u64;
    store::seal_index(dir, &meta, 3, used).unwrap();
    assert!(store::sealed_clean(dir, &meta, 3));
    let c = consolidate_once(dir, &r, 100)
        .unwrap()
        .expect("consolidated");
    assert_eq!(c.base_seq, 60);
}

/// Point `p` of a [`store::testing::history`] (record q writes block q with bytes q, so
/// block b holds b from point b on) reads what the volume held then.
fn point_is_the_volume(h: &store::History, p: u64, size: u64, why: &str) {
    use crate::layer::cdp::pit::{Point, read_at};
    let got = read_at(h, Point::Seq(p), 0, size).unwrap();
    for b in 0..size / 4096 {
        let want = if b >= 1 && b <= p { b as u8 } else { 0 };
        let at = (b * 4096) as usize;
        assert!(
            got[at..at + 4096].iter().all(|&x| x == want),
            "{why}: point {p}, block {b}: read {}, the volume held {want}",
            got[at]
        );
    }
}

/// A pass cut part way (EIO on the base copy after 25 of a segment's 50 records) leaves
/// `base.img` holding some of the segment's records: no point before the segment's end may
/// be read from it until a later pass has applied the whole segment; every point the
/// history accepts reads exactly what the volume held then, before and after that pass.
#[test]
fn a_pass_cut_part_way_leaves_no_readable_point_with_wrong_bytes() {
    use crate::layer::cdp::pit::{self, Point};
    for d in on_disk_and_in_memory() {
        let dir = d.path();
        let meta = store::testing::history(dir, 0xfeed, 64 * 4096, 0, &[(1, 1..=50), (2, 51..=60)]);
        // Record q writes block q with bytes q (put_records), so block b holds b from point b on.
        let check = |why: &str| -> usize {
            let h = store::load(dir, store::Load::ReadOnly).unwrap();
            let mut readable = 0;
            for p in 0..=60u64 {
                if pit::resolve(&h, Point::Seq(p)).is_err() {
                    continue;
                }
                readable += 1;
                point_is_the_volume(&h, p, meta.size, why);
            }
            readable
        };
        let r = Retention {
            age_ns: None,
            bytes: Some(1),
        };
        WRITES_BEFORE_EIO.set(Some(25));
        let e = consolidate_once(dir, &r, 100).unwrap_err().to_string();
        WRITES_BEFORE_EIO.set(None);
        assert!(e.contains("write"), "{e}");
        assert_eq!(store::read_meta(dir).unwrap().base_seq, 0);
        // The cut pass's first records are in the base copy (on a disk written with
        // O_DIRECT, staged ones too), its last not.
        let base = std::fs::read(store::base_path(dir)).unwrap();
        let block = |b: usize| &base[b * 4096..(b + 1) * 4096];
        assert!(block(1).iter().all(|&x| x == 1), "record 1 applied");
        assert!(block(50).iter().all(|&x| x == 0), "record 50 not applied");
        assert_eq!(
            check("after the cut pass"),
            11,
            "points 50..=60 stay readable, the ones before refused"
        );
        // Finished by the next pass even when retention no longer releases the segment.
        let c = consolidate_once(dir, &Retention::default(), 100)
            .unwrap()
            .expect("the cut pass finished");
        assert_eq!(c.base_seq, 50);
        assert!(!dir.join("consolidating").exists());
        assert_eq!(check("after the whole pass"), 11);
    }
}

/// The base copy on a full tmpfs is written through a mapping (base_map.rs), where a write
/// into a hole would raise SIGBUS: the pass fails with ENOSPC instead, and finishes once
/// there is room.
#[test]
fn a_pass_into_a_full_tmpfs_fails_with_an_error_and_finishes_once_there_is_room() {
    use std::os::fd::AsRawFd;
    let mnt = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "mounting a small tmpfs needs root (the tests run as root)"
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(mnt.path());
    let dir = mnt.path().join("vol");
    std::fs::create_dir(&dir).unwrap();
    let meta = store::testing::history(&dir, 0xfeed, 64 * 4096, 0, &[(1, 1..=50), (2, 51..=60)]);
    // Fill the filesystem, then leave 8 pages: room for the pass's small files, not for
    // a piece of the base copy.
    let filler = mnt.path().join("filler");
    let f = File::create(&filler).unwrap();
    let mut len = 0u64;
    // SAFETY: plain syscall on an open descriptor.
    while unsafe { libc::fallocate(f.as_raw_fd(), 0, len as i64, 4096) } == 0 {
        len += 4096;
    }
    f.set_len(len - 8 * 4096).unwrap();
    let r = Retention {
        age_ns: None,
        bytes: Some(1),
    };
    let mut map = None;
    let mut bytes = Vec::new();
    let mut pass = |map: &mut Option<BaseMap>| {
        consolidate_once_in(&dir, &r, 100, &mut bytes, &mut Notes::default(), map, None)
    };
    let e = pass(&mut map).unwrap_err().to_string();
    assert!(map.is_some(), "the base copy was mapped");
    assert!(e.contains("write") && e.contains("space"), "{e}");
    assert_eq!(store::read_meta(&dir).unwrap().base_seq, 0);
    drop(f);
    std::fs::remove_file(&filler).unwrap();
    let c = pass(&mut map).unwrap().expect("the pass finished");
    assert_eq!(c.base_seq, 50);
    // Record q wrote block q with bytes q: the base copy is point 50, and so is every
    // point read from it.
    let h = store::load(&dir, store::Load::ReadOnly).unwrap();
    for p in [50u64, 55, 60] {
        point_is_the_volume(&h, p, meta.size, "after the pass");
    }
}

/// A look that retention does not release the oldest segment at reads no more than a few
/// headers: the segment's records are scanned (every CRC) only by the pass that applies
/// them, and once more at most when only its newest time can say whether retention by age
/// releases it (then remembered). Before, every look scanned the whole segment, ten
/// times a second on a busy volume: CDP in memory lost about a fifth of its IOPS at QD32.
#[test]
fn a_look_that_releases_nothing_scans_nothing_and_a_pass_scans_once() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // Records q = 1..=60 at time q; both segments' headers say created at time 1.
    store::testing::history(dir, 0xfeed, 64 * 4096, 0, &[(1, 1..=50), (2, 51..=60)]);
    let look = |r: Retention, now: u64, notes: &mut Notes| {
        let mut map = None;
        consolidate_once_in(dir, &r, now, &mut Vec::new(), notes, &mut map, None).unwrap()
    };
    let scans = || SCANS.get();
    SCANS.set(0);
    let mut notes = Notes::default();
    // No retention: nothing to decide, nothing read.
    for _ in 0..5 {
        assert_eq!(look(Retention::default(), 10, &mut notes), None);
    }
    assert_eq!(
        scans(),
        0,
        "a look that releases nothing scanned the segment"
    );
    // Under the size limit: the same.
    let small = Retention {
        age_ns: None,
        bytes: Some(100 << 20),
    };
    for _ in 0..5 {
        assert_eq!(look(small, 10, &mut notes), None);
    }
    assert_eq!(
        scans(),
        0,
        "a look under the size limit scanned the segment"
    );
    // By age, where the headers cannot say (the next segment's creation is not old
    // enough): one scan, remembered by the later looks.
    let age = Retention {
        age_ns: Some(1000),
        bytes: None,
    };
    for _ in 0..5 {
        assert_eq!(look(age, 1040, &mut notes), None, "record 50 is 990 ns old");
    }
    assert_eq!(scans(), 1, "the newest time is scanned for once");
    // Old enough now: the pass scans once more (its check before it applies) and applies.
    let c = look(age, 1051, &mut notes).expect("released by age");
    assert_eq!((c.base_seq, c.by_age, c.by_size), (50, true, false));
    assert_eq!(scans(), 2);
    // Over the size limit: a single scan, the pass's own.
    store::testing::history(
        d.path(),
        0xfeed,
        64 * 4096,
        50,
        &[(2, 51..=60), (3, 61..=70)],
    );
    SCANS.set(0);
    let big = Retention {
        age_ns: None,
        bytes: Some(1),
    };
    let c = look(big, 10, &mut Notes::default()).expect("released by size");
    assert_eq!(c.base_seq, 60);
    assert_eq!(scans(), 1);
}

/// What a volume's turn comes to, which decides when the thread looks again: a failing
/// pass and a held segment are looked at once a second, not ten times (each failing pass
/// logs, and writes its marker and part of the segment again).
#[test]
fn a_turn_says_whether_it_worked_found_nothing_or_is_stuck() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, 0xfeed, 64 * 4096, 0, &[(1, 1..=50), (2, 51..=60)]);
    let v = |bytes| Retained {
        dir: dir.to_path_buf(),
        retention: Retention {
            age_ns: None,
            bytes,
        },
        stats: Arc::new(Default::default()),
        maps: None,
    };
    let turn = |r: &Retained| {
        consolidate_backlog(
            r,
            &AtomicBool::new(false),
            &mut None,
            &mut Vec::new(),
            &mut None,
            &mut Notes::default(),
        )
    };
    assert_eq!(turn(&v(None)), Turn::Nothing, "retention releases nothing");
    WRITES_BEFORE_EIO.set(Some(3));
    assert_eq!(turn(&v(Some(1))), Turn::Stuck, "the pass failed");
    WRITES_BEFORE_EIO.set(None);
    // A bookmark at the segment's first record holds it.
    let first = store::load(dir, store::Load::ReadOnly).unwrap().segments[0]
        .index
        .entries[0]
        .time;
    crate::layer::cdp::bookmark::set(dir, "keep", first, false).unwrap();
    assert_eq!(
        turn(&v(Some(1))),
        Turn::Stuck,
        "a bookmark holds the segment"
    );
    crate::layer::cdp::bookmark::set(dir, "keep", u64::MAX - 1, true).unwrap();
    assert_eq!(turn(&v(Some(1))), Turn::Worked);
}

/// When the thread looks at a volume again: at once after work, ten times a second for ten
/// seconds after its last work, once a second otherwise and whenever it is stuck.
#[test]
fn a_volume_is_looked_at_often_only_while_it_works() {
    let t0 = std::time::Instant::now();
    let mut k = Kept {
        next: t0,
        worked: None,
        last_log: None,
        map: None,
        notes: Notes::default(),
    };
    assert!(!k.after(Turn::Nothing, t0));
    assert_eq!(k.next, t0 + LOOK_IDLE, "never worked");
    assert!(
        k.idle(t0),
        "never worked: idle (its waiting files are trimmed)"
    );
    assert!(k.after(Turn::Worked, t0));
    assert_eq!(k.next, t0, "its backlog, at once");
    assert!(!k.idle(t0));
    let t1 = t0 + Duration::from_secs(5);
    assert!(!k.after(Turn::Nothing, t1));
    assert_eq!(k.next, t1 + LOOK_EVERY, "worked 5 s ago");
    assert!(!k.idle(t1), "worked 5 s ago: its waiting files are kept");
    assert!(!k.after(Turn::Stuck, t1));
    assert_eq!(k.next, t1 + LOOK_IDLE, "stuck");
    let t2 = t0 + ACTIVE_FOR;
    assert!(!k.after(Turn::Nothing, t2));
    assert_eq!(k.next, t2 + LOOK_IDLE, "idle for ten seconds");
    assert!(k.idle(t2));
}

/// A segment a pass consolidated (the meta names its end) but did not retire (the rename
/// failed, or a crash came first) is retired by the next pass instead of stopping every
/// later one.
#[test]
fn a_consolidated_segment_left_in_place_is_retired_by_the_next_pass() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(
        dir,
        0xbeef,
        64 * 4096,
        50,
        &[(1, 1..=50), (2, 51..=60), (3, 61..=70)],
    );
    let r = Retention {
        age_ns: None,
        bytes: Some(1),
    };
    assert_eq!(consolidate_once(dir, &r, 100).unwrap(), None);
    assert!(!store::seg_path(dir, 1).exists(), "segment 1 retired");
    let c = consolidate_once(dir, &r, 100)
        .unwrap()
        .expect("segment 2 consolidated");
    assert_eq!(c.base_seq, 60);
}

/// A held pass is described by its hold: the bookmark's name or the view's process.
#[test]
fn a_hold_is_named_with_its_point() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    super::super::bookmark::set(dir, "keep", 50, false).unwrap();
    let hd = super::super::view::holds_dir(dir);
    std::fs::create_dir_all(&hd).unwrap();
    let me = std::process::id();
    std::fs::write(hd.join(format!("{me}-0")), "40\n").unwrap();
    assert_eq!(
        describe_hold(dir, 50),
        serde_json::json!({"bookmark": "keep", "time_ns": 50})
    );
    assert_eq!(
        describe_hold(dir, 40),
        serde_json::json!({"view_pid": me, "time_ns": 40})
    );
}
