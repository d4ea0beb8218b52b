//! The history store's tests: recycling, recovery's cuts, indexes.
use super::*;
use std::os::unix::fs::MetadataExt;

/// A consolidated segment's file becomes a later spare segment (same inode, so the same
/// blocks), its header zeroed and the rest kept; at most `RECYCLED_MAX` wait, more are
/// deleted; a file of another size is not reused.
#[test]
fn a_retired_segment_file_is_reused_as_a_later_spare_with_its_header_zeroed() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let size = 1 << 20;
    let max = RECYCLED_MAX as u64;
    for n in 1..=max + 2 {
        let f = File::create(seg_path(dir, n)).unwrap();
        f.write_all_at(&vec![0xAB; size as usize], 0).unwrap();
    }
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let inodes: Vec<u64> = (1..=max).map(|n| ino(&seg_path(dir, n))).collect();
    for n in 1..=max + 1 {
        recycle_segment(dir, n).unwrap();
    }
    assert_eq!(recycled(dir).len(), RECYCLED_MAX, "one more is deleted");
    assert!(!seg_path(dir, max + 1).exists() && !recycled_path(dir, max + 1).exists());
    // Idle: the oldest beyond RECYCLED_KEEP give their space back.
    assert_eq!(
        trim_recycled(dir, RECYCLED_KEEP),
        RECYCLED_MAX - RECYCLED_KEEP
    );
    assert_eq!(trim_recycled(dir, RECYCLED_KEEP), 0);
    let left: Vec<PathBuf> = recycled(dir).into_iter().map(|(p, _)| p).collect();
    let newest: Vec<PathBuf> = (max - RECYCLED_KEEP as u64 + 1..=max)
        .map(|n| recycled_path(dir, n))
        .collect();
    assert_eq!(left, newest, "the newest are kept");
    prepare_spare(dir, max + 3, size, false).unwrap();
    let p = seg_path(dir, max + 3);
    assert_eq!(
        ino(&p),
        inodes[RECYCLED_MAX - RECYCLED_KEEP],
        "the oldest waiting file is the new spare"
    );
    let b = std::fs::read(&p).unwrap();
    assert!(
        b[..format::SEG_HEADER].iter().all(|&b| b == 0),
        "header zeroed"
    );
    assert!(
        b[format::SEG_HEADER..].iter().all(|&b| b == 0xAB),
        "the rest kept"
    );
    assert!(is_spare(dir, max + 3));
    assert_eq!(recycled(dir).len(), RECYCLED_KEEP - 1);
    // Another segment size: the waiting file is deleted, a new one made.
    prepare_spare(dir, max + 4, size * 2, false).unwrap();
    assert!(recycled(dir).is_empty());
    let len = std::fs::metadata(seg_path(dir, max + 4)).unwrap().len();
    assert_eq!(len, size * 2);
}

/// The retention thread's trim: nothing while the volume consolidates and its filesystem
/// has room; down to RECYCLED_KEEP once it is idle, or as soon as the filesystem is short
/// of room (the room rule at retirement alone let files kept earlier stay while another
/// volume ran out of space).
#[test]
fn waiting_files_are_trimmed_when_idle_or_short_of_room() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let size: u64 = 1 << 20;
    let fill = |from: u64| {
        for n in from..from + 5 {
            std::fs::write(recycled_path(dir, n), vec![0u8; size as usize]).unwrap();
        }
    };
    fill(1);
    let never = || -> u64 { panic!("free space asked for while idle") };
    assert_eq!(trim_recycled_if(dir, false, || size * RECYCLED_ROOM), 0);
    assert_eq!(recycled(dir).len(), 5, "busy, with room: all kept");
    assert_eq!(trim_recycled_if(dir, false, || size * RECYCLED_ROOM - 1), 3);
    assert_eq!(recycled(dir).len(), RECYCLED_KEEP, "short of room");
    assert_eq!(trim_recycled_if(dir, true, never), 0, "two kept anyway");
    fill(10);
    assert_eq!(trim_recycled_if(dir, true, never), 5);
    assert_eq!(recycled(dir).len(), RECYCLED_KEEP, "idle");
}

/// A waiting file deleted between the listing and its reuse (the retention thread's trim
/// racing the helper) is skipped for the next one, not an error that fails the spare.
#[test]
fn a_waiting_file_trimmed_after_the_listing_is_skipped() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let size = 1 << 20;
    for n in 1..=2u64 {
        std::fs::write(seg_path(dir, n), vec![0xCD; size as usize]).unwrap();
        recycle_segment(dir, n).unwrap();
    }
    let listed = recycled(dir);
    let second = std::fs::metadata(recycled_path(dir, 2)).unwrap().ino();
    std::fs::remove_file(recycled_path(dir, 1)).unwrap();
    assert!(reuse_listed(dir, 3, size, listed).unwrap());
    assert_eq!(std::fs::metadata(seg_path(dir, 3)).unwrap().ino(), second);
    assert!(recycled(dir).is_empty());
    // Every listed file gone: no reuse, no error (a new file is made instead).
    std::fs::write(seg_path(dir, 4), vec![0xCD; size as usize]).unwrap();
    recycle_segment(dir, 4).unwrap();
    let listed = recycled(dir);
    assert_eq!(trim_recycled(dir, 0), 1);
    assert!(!reuse_listed(dir, 5, size, listed).unwrap());
}

/// Beyond RECYCLED_KEEP waiting files a retired segment is kept only while its filesystem
/// has RECYCLED_ROOM segments' worth free; never beyond RECYCLED_MAX.
#[test]
fn a_retired_segment_beyond_the_two_kept_needs_room_on_its_filesystem() {
    let seg = 64 << 20;
    let room = seg * RECYCLED_ROOM;
    let never = || -> u64 { panic!("free space asked for below RECYCLED_KEEP") };
    for w in 0..RECYCLED_KEEP {
        assert!(keep_retired(w, seg, never), "{w} waiting");
    }
    assert!(keep_retired(RECYCLED_KEEP, seg, || room));
    assert!(!keep_retired(RECYCLED_KEEP, seg, || room - 1));
    assert!(
        !keep_retired(RECYCLED_KEEP, seg, || 0),
        "free space unknown"
    );
    assert!(keep_retired(RECYCLED_MAX - 1, seg, || u64::MAX));
    assert!(!keep_retired(RECYCLED_MAX, seg, || u64::MAX));
    assert!(
        !keep_retired(RECYCLED_KEEP, u64::MAX, || u64::MAX),
        "length unknown, no overflow"
    );
}

/// Two segments written by hand after records 1..=100 were consolidated, the first a
/// reused file whose earlier use (records 1..=100, below its first sequence number as
/// every consolidated record is) follows its own records: the history reads whole, with
/// no cut; a damaged record in the middle of the reused one cuts the history there (a
/// record of this use follows the end) and sets the second aside; and a reused last
/// segment's earlier bytes are zeroed by recovery, not reported as a cut.
#[test]
fn an_earlier_use_behind_a_reused_segment_is_no_cut_and_a_damaged_record_in_it_is() {
    use format::testing::{put_header, put_records};
    const SEG: u64 = 1 << 20;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = Meta {
        block_size: 4096,
        vol_id: 0x5eed,
        size: 1 << 30,
        created: 1,
        base_seq: 100,
        base_time: 100,
    };
    write_meta(dir, &meta).unwrap();
    let records = |img: &mut Vec<u8>, seqs| put_records(img, meta.vol_id, seqs);
    let header = |img: &mut Vec<u8>, segno, first| put_header(img, meta.vol_id, segno, first);
    // Segment 2 is the file that held records 1..=100 (consolidated since).
    let mut s2 = vec![0u8; SEG as usize];
    records(&mut s2, 1..=100);
    header(&mut s2, 2, 101);
    let end2 = records(&mut s2, 101..=150);
    let mut s3 = vec![0u8; SEG as usize];
    header(&mut s3, 3, 151);
    records(&mut s3, 151..=160);
    for (n, img) in [(2, &s2), (3, &s3)] {
        std::fs::write(seg_path(dir, n), img).unwrap();
    }
    let h = load(dir, Load::ReadOnly).unwrap();
    assert!(
        h.cut.is_none() && h.damaged.is_empty(),
        "{:?} {:?}",
        h.cut,
        h.damaged
    );
    assert_eq!(h.last_seq, 160);
    assert_eq!(h.segments[0].index.end, end2 as u64);
    // Record 120's payload damaged (the indexes just written removed: as after a crash).
    let mut bad = s2.clone();
    let at120 = format::SEG_HEADER + 19 * (format::REC_HEADER + 4096);
    bad[at120 + format::REC_HEADER + 7] ^= 0xff;
    std::fs::write(seg_path(dir, 2), &bad).unwrap();
    for n in 2..=3 {
        let _ = std::fs::remove_file(idx_path(dir, n));
    }
    let h = load(dir, Load::ReadOnly).unwrap();
    assert_eq!(
        h.last_seq, 119,
        "the history ends before the damaged record"
    );
    assert!(
        h.cut
            .as_deref()
            .is_some_and(|c| c.starts_with("segment 2:")),
        "{:?}",
        h.cut
    );
    assert_eq!(h.damaged, vec![3]);
    // The reused segment as the last one (segment 3 gone), undamaged: recovery finds no
    // cut and zeroes what follows its log.
    std::fs::write(seg_path(dir, 2), &s2).unwrap();
    std::fs::remove_file(seg_path(dir, 3)).unwrap();
    let _ = std::fs::remove_file(idx_path(dir, 2));
    let h = load(dir, Load::Recover).unwrap();
    assert!(h.cut.is_none() && h.damaged.is_empty(), "{:?}", h.cut);
    assert_eq!(h.last_seq, 150);
    let after = std::fs::read(seg_path(dir, 2)).unwrap();
    assert!(
        after[end2..].iter().all(|&b| b == 0),
        "the earlier use's bytes are zeroed"
    );
    assert_eq!(after[..end2], s2[..end2]);
}

/// A read error on a segment's header (the device's, maybe passing: here the name is a
/// directory) fails the recovery instead of cutting the history there and setting the
/// later segments' acknowledged records aside for good; a file too short for its header is
/// damage and is cut.
#[test]
fn a_read_error_on_a_header_fails_the_recovery_and_sets_nothing_aside() {
    use format::testing::segment_image;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = Meta {
        block_size: 4096,
        vol_id: 0xe10,
        size: 1 << 20,
        created: 1,
        base_seq: 0,
        base_time: 0,
    };
    write_meta(dir, &meta).unwrap();
    for (segno, seqs) in [(1, 1..=10), (3, 21..=30)] {
        std::fs::write(
            seg_path(dir, segno),
            segment_image(meta.vol_id, segno, seqs),
        )
        .unwrap();
    }
    std::fs::create_dir(seg_path(dir, 2)).unwrap();
    let e = load(dir, Load::Recover).unwrap_err().to_string();
    assert!(
        e.contains("read") && e.contains(&format!("{:016x}", 2)),
        "{e}"
    );
    assert!(seg_path(dir, 3).exists(), "segment 3 is not set aside");
    // Too short for a header: damage, cut there; segment 3 goes aside.
    std::fs::remove_dir(seg_path(dir, 2)).unwrap();
    std::fs::write(seg_path(dir, 2), [0u8; 100]).unwrap();
    let h = load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 10);
    assert!(
        h.cut.as_deref().is_some_and(|c| c.contains("segment 2")),
        "{:?}",
        h.cut
    );
    assert_eq!(h.damaged, vec![2, 3]);
}

/// A segment created where no spare was prepared (at a start, or on the reactor) takes a
/// waiting consolidated segment's file first, as a prepared spare does: on a full journal
/// device that file is the only space there is.
#[test]
fn a_created_segment_takes_a_recycled_file_first() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let size = 1 << 20;
    let meta = Meta {
        block_size: 4096,
        vol_id: 0xc0de,
        size: 1 << 20,
        created: 1,
        base_seq: 0,
        base_time: 0,
    };
    std::fs::write(seg_path(dir, 1), vec![7u8; size]).unwrap();
    let ino = std::fs::metadata(seg_path(dir, 1)).unwrap().ino();
    recycle_segment(dir, 1).unwrap();
    drop(create_segment(dir, &meta, 5, 42, 42, size as u64).unwrap());
    let md = std::fs::metadata(seg_path(dir, 5)).unwrap();
    assert_eq!(md.ino(), ino, "the recycled file, not a new one");
    assert!(recycled(dir).is_empty());
    let h = segment_header(dir, 5).unwrap();
    assert_eq!((h.segno, h.first_seq, h.vol_id), (5, 42, meta.vol_id));
}

/// A damaged record in a sealed segment cuts the history there and recovery zeroes what
/// follows it; the acknowledged records after the damage are kept in a copy of the file
/// for an operator (`*.cut.damaged`), the later segments set aside as before.
#[test]
fn a_cut_before_later_records_keeps_a_copy_of_the_segment() {
    use format::testing::{put_header, put_records};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = Meta {
        block_size: 4096,
        vol_id: 0xc07,
        size: 1 << 20,
        created: 1,
        base_seq: 0,
        base_time: 0,
    };
    write_meta(dir, &meta).unwrap();
    let mut s1 = vec![0u8; 1 << 20];
    put_header(&mut s1, meta.vol_id, 1, 1);
    put_records(&mut s1, meta.vol_id, 1..=50);
    s1[format::SEG_HEADER + 19 * (format::REC_HEADER + 4096) + format::REC_HEADER + 9] ^= 1;
    std::fs::write(seg_path(dir, 1), &s1).unwrap();
    let mut s2 = vec![0u8; 1 << 20];
    put_header(&mut s2, meta.vol_id, 2, 51);
    put_records(&mut s2, meta.vol_id, 51..=60);
    std::fs::write(seg_path(dir, 2), &s2).unwrap();
    let h = load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 19);
    let copy = seg_path(dir, 1).with_extension("cdp.cut.damaged");
    assert!(std::fs::read(&copy).unwrap() == s1, "the segment as it was");
    assert!(seg_path(dir, 2).with_extension("cdp.damaged").exists());
    // The cut is zeroed in the segment itself, and the history ends there next time too.
    let again = load(dir, Load::Recover).unwrap();
    assert_eq!(again.last_seq, 19);
    assert!(again.cut.is_none(), "{:?}", again.cut);
}

/// A recovery that could not write `degraded.map` (a full device; or killed before it did)
/// after it had cached the index of a sealed segment cut ahead of journaled records: the next
/// start took the cached index (the log ending at the cut, no scan) and, the next segment
/// holding no record yet, saw no records left out, so it journaled on from the cut as if the
/// history were whole. The map is written before the index now.
#[test]
fn a_recovery_failed_before_its_map_still_marks_the_cut_history_not_whole_next_time() {
    use format::testing::{put_header, put_records};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = Meta {
        block_size: 4096,
        vol_id: 0xc08,
        size: 1 << 20,
        created: 1,
        base_seq: 0,
        base_time: 0,
    };
    write_meta(dir, &meta).unwrap();
    let mut s1 = vec![0u8; 1 << 20];
    put_header(&mut s1, meta.vol_id, 1, 1);
    put_records(&mut s1, meta.vol_id, 1..=50);
    s1[format::SEG_HEADER + 19 * (format::REC_HEADER + 4096) + format::REC_HEADER + 9] ^= 1;
    std::fs::write(seg_path(dir, 1), &s1).unwrap();
    // The run after it had started its segment and journaled nothing yet.
    let mut s2 = vec![0u8; 1 << 20];
    put_header(&mut s2, meta.vol_id, 2, 51);
    std::fs::write(seg_path(dir, 2), &s2).unwrap();
    // degraded.map cannot be written: the recovery fails, having changed nothing it relies on.
    let map = dir.join(super::super::degraded::FILE);
    std::fs::create_dir(&map).unwrap();
    assert!(load(dir, Load::Recover).is_err());
    std::fs::remove_dir(&map).unwrap();
    let h = load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 19);
    assert_eq!(
        h.open_gap.map(|g| g.0),
        Some(19),
        "the records the cut left out are still missing from the history"
    );
}

/// A sealed segment whose last record's header is damaged (so no record is seen after the
/// damage) before a newest segment holding no record yet: that segment's header, valid and of
/// this history, starts after the lost record, which was durable before the header was written
/// (`Journal::next_segment` starts a segment at the durable end). Before, the header's sequence
/// mismatch counted as a cut of nothing acknowledged and the start journaled on from the cut
/// as if the history were whole.
#[test]
fn a_newest_header_starting_after_the_recovered_end_marks_the_records_between_lost() {
    use format::testing::{put_header, put_records};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = Meta {
        block_size: 4096,
        vol_id: 0xc09,
        size: 1 << 20,
        created: 1,
        base_seq: 0,
        base_time: 0,
    };
    write_meta(dir, &meta).unwrap();
    let mut s1 = vec![0u8; 1 << 20];
    put_header(&mut s1, meta.vol_id, 1, 1);
    put_records(&mut s1, meta.vol_id, 1..=50);
    s1[format::SEG_HEADER + 49 * (format::REC_HEADER + 4096) + 9] ^= 1;
    std::fs::write(seg_path(dir, 1), &s1).unwrap();
    let mut s2 = vec![0u8; 1 << 20];
    put_header(&mut s2, meta.vol_id, 2, 51);
    std::fs::write(seg_path(dir, 2), &s2).unwrap();
    let h = load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 49);
    assert!(h.lost, "{:?}", h.cut);
    assert_eq!(h.open_gap.map(|g| g.0), Some(49));
}

/// A reader of a history whose writer runs takes its records only up to the writer's done
/// watermark (the records after it wait for their base writes, or failed): the history ends
/// there, at a time just before the first record left out, and every point after it is
/// outside the window; once the writer is gone (stopped, or killed: its lock goes with it)
/// the reader takes every record again. A recovery (a writer) is never bounded.
#[test]
fn a_running_writers_history_is_read_only_up_to_its_done_watermark() {
    use super::super::done::Published;
    use super::super::pit::{self, Point};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = testing::history(dir, 9, 64 * 4096, 0, &[(1, 1..=10), (2, 11..=20)]);
    let w = Published::create(dir, meta.vol_id, 6).unwrap();
    let h = load(dir, Load::ReadOnly).unwrap();
    assert_eq!(h.running, Some(6));
    // (Records are stamped time = sequence.)
    assert_eq!((h.last_seq, h.last_time), (6, 6));
    assert_eq!(h.entries().last().map(|(_, e)| e.seq), Some(6));
    assert_eq!(h.segments.len(), 2, "the segments stay listed");
    assert!(matches!(
        pit::resolve(&h, Point::Seq(7)),
        Err(CdpError::Outside { .. })
    ));
    assert!(matches!(
        pit::resolve(&h, Point::Time(7)),
        Err(CdpError::Outside { .. })
    ));
    assert_eq!(pit::resolve(&h, Point::Seq(6)).unwrap(), 6);
    let got = pit::read_at(&h, Point::Seq(h.last_seq), 0, 64 * 4096).unwrap();
    assert_eq!(got[6 * 4096], 6, "record 6 is read");
    assert_eq!(got[7 * 4096], 0, "record 7 is not");
    // A watermark past the records read bounds nothing.
    drop(w);
    let mut w = Published::create(dir, meta.vol_id, 6).unwrap();
    w.set(25);
    let h = load(dir, Load::ReadOnly).unwrap();
    assert_eq!((h.running, h.last_seq, h.last_time), (Some(25), 20, 20));
    w.set(6);
    drop(w);
    let h = load(dir, Load::ReadOnly).unwrap();
    assert_eq!((h.running, h.last_seq), (None, 20), "no writer runs");
    let w = Published::create(dir, meta.vol_id, 6).unwrap();
    let h = load(dir, Load::Recover).unwrap();
    assert_eq!((h.running, h.last_seq), (None, 20), "a recovery reads all");
    drop(w);
}

/// A sealed segment whose last record's header is damaged (none of this use follows it: the
/// scan's end looks like a clean one) ends before the records the next segment's header, or
/// the segment's own index, says it held: acknowledged records. Before, recovery zeroed the
/// damaged record with no copy kept (and a reader cached the index of the cut log, so the
/// next recovery zeroed it without scanning); now a copy is kept (`*.cut.damaged`) and the
/// history is not whole after the cut.
#[test]
fn a_sealed_segments_damaged_last_record_header_is_kept_in_a_copy() {
    use format::testing::{put_header, put_records};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = testing::history(dir, 0xc0b, 1 << 20, 0, &[]);
    let mut s1 = vec![0u8; 1 << 20];
    put_header(&mut s1, meta.vol_id, 1, 1);
    put_records(&mut s1, meta.vol_id, 1..=50);
    // Record 50's header (its sequence field).
    s1[format::SEG_HEADER + 49 * (format::REC_HEADER + 4096) + 9] ^= 1;
    std::fs::write(seg_path(dir, 1), &s1).unwrap();
    let mut s2 = vec![0u8; 1 << 20];
    put_header(&mut s2, meta.vol_id, 2, 51);
    put_records(&mut s2, meta.vol_id, 51..=60);
    std::fs::write(seg_path(dir, 2), &s2).unwrap();
    // A reader first: it must not cache the index of the cut log.
    let r = load(dir, Load::ReadOnly).unwrap();
    assert_eq!(r.last_seq, 49);
    let h = load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 49);
    assert!(h.lost, "{:?}", h.cut);
    let copy = seg_path(dir, 1).with_extension("cdp.cut.damaged");
    assert!(
        std::fs::read(&copy).is_ok_and(|c| c == s1),
        "the segment as it was is kept"
    );

    // The newest segment, sealed by a clean stop (its index), its last record's header
    // damaged since.
    let e = tempfile::tempdir().unwrap();
    let dir = e.path();
    let meta = testing::history(dir, 0xc0c, 1 << 20, 0, &[(1, 1..=20)]);
    let used = (format::SEG_HEADER + 20 * (format::REC_HEADER + 4096)) as u64;
    seal_index(dir, &meta, 1, used).unwrap();
    let mut s1 = std::fs::read(seg_path(dir, 1)).unwrap();
    s1[format::SEG_HEADER + 19 * (format::REC_HEADER + 4096) + 9] ^= 1;
    std::fs::write(seg_path(dir, 1), &s1).unwrap();
    let h = load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 19);
    assert!(h.lost, "{:?}", h.cut);
    assert_eq!(h.open_gap.map(|g| g.0), Some(19));
    let copy = seg_path(dir, 1).with_extension("cdp.cut.damaged");
    assert!(
        std::fs::read(&copy).is_ok_and(|c| c == s1),
        "the sealed segment as it was is kept"
    );
}

/// A history whose records carry times at the top of the range (`u64::MAX`), and requests at
/// it: read, resolved, restored, bounded by a watermark and held by a bookmark without a panic
/// or a wrapped time.
#[test]
fn times_at_the_top_of_the_range_are_read_and_requested_without_overflow() {
    use super::super::pit::{self, Point};
    use format::testing::put_header;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = testing::history(dir, 0xc0d, 64 * 4096, 0, &[]);
    let mut s1 = vec![0u8; 1 << 20];
    put_header(&mut s1, meta.vol_id, 1, 1);
    let mut at = format::SEG_HEADER;
    for (q, t) in [(1u64, u64::MAX - 1), (2, u64::MAX), (3, u64::MAX)] {
        format::RecHeader::write_record(
            &mut s1[at..],
            format::Op::Write,
            q,
            t,
            q * 4096,
            4096,
            &[q as u8; 4096],
            meta.vol_id,
        );
        at += format::REC_HEADER + 4096;
    }
    std::fs::write(seg_path(dir, 1), &s1).unwrap();
    let h = load(dir, Load::ReadOnly).unwrap();
    assert_eq!((h.last_seq, h.last_time), (3, u64::MAX));
    assert_eq!(pit::resolve(&h, Point::Time(u64::MAX)).unwrap(), 3);
    assert_eq!(pit::resolve(&h, Point::Time(u64::MAX - 1)).unwrap(), 1);
    let b = pit::read_at(&h, Point::Time(u64::MAX), 2 * 4096, 4096).unwrap();
    assert!(b.iter().all(|&x| x == 2));
    let o = tempfile::tempdir().unwrap(); // outside the history
    let out = o.path().join("r.img");
    pit::restore(&h, Point::Time(u64::MAX), &out, |_, _| {}).unwrap();
    let mut k = load(dir, Load::ReadOnly).unwrap();
    k.keep_until(1);
    assert_eq!((k.last_seq, k.last_time), (1, u64::MAX - 1));
    super::super::bookmark::set(dir, "top", u64::MAX, false).unwrap();
    assert_eq!(super::super::bookmark::hold(dir), Some(u64::MAX));
    let _ = super::super::retain::consolidate_once(
        dir,
        &super::super::retain::Retention {
            age_ns: Some(1),
            bytes: None,
        },
        u64::MAX,
    );
}
