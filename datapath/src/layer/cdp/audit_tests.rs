//! Probes of an adversarial audit (session 26): damage in the middle of sealed segments, and
//! fields at their largest values. Each test here failed before the fix it names.

use super::format::{self, REC_HEADER, SEG_HEADER, testing::segment_image};
use super::retain::{Retention, consolidate_once};
use super::store::{self, Load};

const VOL: u64 = 0xa0d1;

/// Byte `k` of the payload of record `seq` in a [`segment_image`] whose first record is
/// `first` (4 KiB writes back to back).
fn payload_byte(first: u64, seq: u64, k: usize) -> usize {
    SEG_HEADER + (seq - first) as usize * (REC_HEADER + 4096) + REC_HEADER + k
}

/// A sealed segment damaged in the middle, read first by a reader (a view, a restore, `cdp
/// window`: each writes the segment's index as a cache), then recovered by a start: the
/// records of the segment after the damaged one are acknowledged writes, so recovery keeps a
/// copy of the segment as it was (`*.cut.damaged`) before it zeroes them. Before, the reader's
/// index (its end at the damage) was taken by recovery as the segment's log, and the records
/// after it were zeroed with no copy kept.
#[test]
fn a_cut_a_reader_indexed_first_still_keeps_the_copy_of_the_records_after_it() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, 64 * 4096, 0, &[(2, 51..=60)]);
    let mut s1 = segment_image(VOL, 1, 1..=50);
    s1[payload_byte(1, 20, 9)] ^= 1;
    std::fs::write(store::seg_path(dir, 1), &s1).unwrap();
    let h = store::load(dir, Load::ReadOnly).unwrap();
    assert_eq!(h.last_seq, 19, "a reader's history ends before the damage");
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 19);
    let copy = store::seg_path(dir, 1).with_extension("cdp.cut.damaged");
    assert!(
        std::fs::read(&copy).is_ok_and(|c| c == s1),
        "the segment as it was is kept before its records 21..=50 are zeroed"
    );
}

/// A sealed segment indexed while whole (every start indexes the sealed segments), then
/// damaged in the middle of a record's payload: consolidation must not copy the damaged bytes
/// into the base copy (every later point would serve them, and the segment, the only other
/// copy, is retired). Before, it applied the records through the index without checking
/// their CRCs.
#[test]
fn consolidation_never_applies_a_record_damaged_after_its_segment_was_indexed() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, 64 * 4096, 0, &[(1, 1..=50), (2, 51..=60)]);
    // Indexed while whole.
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 60);
    let mut s1 = std::fs::read(store::seg_path(dir, 1)).unwrap();
    // Record 50 writes block 50 (and is the last write of it in the segment).
    s1[payload_byte(1, 50, 100)] ^= 0xff;
    std::fs::write(store::seg_path(dir, 1), &s1).unwrap();
    let r = Retention {
        age_ns: None,
        bytes: Some(1),
    };
    let res = consolidate_once(dir, &r, 1000);
    let base = std::fs::read(store::base_path(dir)).unwrap();
    let block50 = &base[50 * 4096..51 * 4096];
    assert!(
        block50.iter().all(|&b| b == 0 || b == 50),
        "damaged bytes in the base copy (pass: {res:?})"
    );
    assert!(res.is_err(), "the pass fails naming the damage: {res:?}");
    assert_eq!(store::read_meta(dir).unwrap().base_seq, 0);
    assert!(
        store::seg_path(dir, 1).exists(),
        "the segment is not retired"
    );
    // The next start's recovery cuts the history at the damage (no index hides it).
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 49, "{:?}", h.cut);
}

/// A restore of a point whose record was damaged after its segment was indexed fails rather
/// than write the damaged bytes into a file that looks restored.
#[test]
fn a_restore_never_writes_a_record_damaged_after_its_segment_was_indexed() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, 64 * 4096, 0, &[(1, 1..=50), (2, 51..=60)]);
    store::load(dir, Load::Recover).unwrap();
    let mut s1 = std::fs::read(store::seg_path(dir, 1)).unwrap();
    s1[payload_byte(1, 30, 5)] ^= 0x10;
    std::fs::write(store::seg_path(dir, 1), &s1).unwrap();
    let h = store::load(dir, Load::ReadOnly).unwrap();
    let out = d.path().join("r.img");
    let res = super::pit::restore(&h, super::pit::Point::Seq(60), &out, |_, _| {});
    if res.is_ok() {
        let img = std::fs::read(&out).unwrap();
        assert!(
            img[30 * 4096..31 * 4096].iter().all(|&b| b == 30),
            "the restored file holds damaged bytes"
        );
    }
    assert!(res.is_err(), "{res:?}");
}

/// A view (and so a rollback in place, which compares through one) of a point whose record
/// was damaged after its segment was indexed fails the read of that record's range (EIO to
/// the host) rather than serve the damaged bytes; the other ranges still read.
#[test]
fn a_view_never_serves_a_record_damaged_after_its_segment_was_indexed() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, 64 * 4096, 0, &[(1, 1..=50), (2, 51..=60)]);
    store::load(dir, Load::Recover).unwrap();
    let mut s1 = std::fs::read(store::seg_path(dir, 1)).unwrap();
    s1[payload_byte(1, 30, 4000)] ^= 0x01;
    std::fs::write(store::seg_path(dir, 1), &s1).unwrap();
    let v = super::view::ViewDevice::open(&super::view::ViewSpec {
        dir: dir.to_path_buf(),
        point: super::pit::Point::Seq(60),
        sandbox: false,
    })
    .unwrap();
    let mut b = vec![0u8; 4096];
    let r = v.read_point(30 * 4096, &mut b);
    assert!(
        r.is_err() || b.iter().all(|&x| x == 30),
        "the view served damaged bytes"
    );
    assert!(r.is_err());
    // A piece of the damaged record is refused too; an undamaged record reads.
    assert!(v.read_point(30 * 4096 + 8, &mut b[..8]).is_err());
    v.read_point(31 * 4096, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 31));
}

/// The newest segment damaged in the middle of a record's payload (its header intact), with
/// acknowledged records after it: recovery cuts there, and keeps the segment as it was first
/// (`*.cut.damaged`), as for a damaged header. Before, the damaged record's own intact header
/// counted as the "record of this use" found at the end, which in the newest segment reads as
/// a torn tail: records 21..=50 were zeroed with no copy kept.
#[test]
fn a_payload_damaged_in_the_middle_of_the_newest_segment_keeps_the_records_after_it() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, 64 * 4096, 0, &[]);
    let mut s1 = segment_image(VOL, 1, 1..=50);
    s1[payload_byte(1, 20, 9)] ^= 1;
    std::fs::write(store::seg_path(dir, 1), &s1).unwrap();
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 19);
    let copy = store::seg_path(dir, 1).with_extension("cdp.cut.damaged");
    assert!(
        std::fs::read(&copy).is_ok_and(|c| c == s1),
        "the segment as it was is kept before its records 21..=50 are zeroed"
    );
}

/// A torn tail (the newest segment's last record cut short by a crash, nothing after it) is
/// cut with no copy kept: nothing after it was acknowledged.
#[test]
fn a_torn_last_record_is_cut_without_a_copy() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, 64 * 4096, 0, &[]);
    let mut s1 = segment_image(VOL, 1, 1..=50);
    // Record 50's payload half written.
    let at = payload_byte(1, 50, 2048);
    s1[at..at + 2048].fill(0);
    std::fs::write(store::seg_path(dir, 1), &s1).unwrap();
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 49);
    assert!(h.cut.is_some());
    assert!(
        !store::seg_path(dir, 1)
            .with_extension("cdp.cut.damaged")
            .exists()
    );
}

/// Points at and past the window's edges (probe; held before the audit): `u64::MAX` and 0 as
/// sequence or time, the first and last points, and a time several records share (a split
/// write's pieces) names all of them.
#[test]
fn points_at_the_edges_of_the_window_are_exact_or_refused() {
    use super::pit::{Point, resolve};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // Records 11..=30 after a base point of 10 (time 10); records 21..=23 share time 21.
    let meta = store::testing::history(dir, VOL, 64 * 4096, 10, &[]);
    let mut img = vec![0u8; 1 << 20];
    format::testing::put_header(&mut img, VOL, 1, 11);
    let mut at = SEG_HEADER;
    for q in 11..=30u64 {
        let t = if (21..=23).contains(&q) { 21 } else { q };
        format::RecHeader::write_record(
            &mut img[at..],
            format::Op::Write,
            q,
            t,
            (q % 64) * 4096,
            4096,
            &[q as u8; 4096],
            meta.vol_id,
        );
        at += REC_HEADER + 4096;
    }
    std::fs::write(store::seg_path(dir, 1), &img).unwrap();
    let h = store::load(dir, Load::ReadOnly).unwrap();
    assert_eq!(
        (h.first_seq(), h.last_seq, h.first_time(), h.last_time),
        (10, 30, 10, 30)
    );
    for p in [
        Point::Seq(u64::MAX),
        Point::Seq(0),
        Point::Seq(9),
        Point::Seq(31),
        Point::Time(u64::MAX),
        Point::Time(0),
        Point::Time(9),
        Point::Time(31),
    ] {
        assert!(resolve(&h, p).is_err(), "{p:?} is outside");
    }
    assert_eq!(resolve(&h, Point::Seq(10)).unwrap(), 10);
    assert_eq!(resolve(&h, Point::Time(10)).unwrap(), 10);
    assert_eq!(resolve(&h, Point::Seq(30)).unwrap(), 30);
    assert_eq!(resolve(&h, Point::Time(30)).unwrap(), 30);
    assert_eq!(resolve(&h, Point::Time(20)).unwrap(), 20);
    assert_eq!(
        resolve(&h, Point::Time(21)).unwrap(),
        23,
        "every record of time 21"
    );
    assert_eq!(resolve(&h, Point::Time(23)).unwrap(), 23);
    assert_eq!(resolve(&h, Point::Time(24)).unwrap(), 24);
}

/// A record header whose range overflows `offset + len`, or lies past the volume, ends the
/// log there (probe; held before the audit): no panic, nothing after it served.
#[test]
fn a_record_whose_range_overflows_or_leaves_the_volume_ends_the_log() {
    for (off, len) in [
        (u64::MAX - 10, 4096),
        (64 * 4096, 4096),
        (u64::MAX, u64::MAX),
    ] {
        let mut img = segment_image(VOL, 1, 1..=5);
        let at = SEG_HEADER + 5 * (REC_HEADER + 4096);
        let op = if len == 4096 {
            format::Op::Write
        } else {
            format::Op::Zeroes
        };
        let payload = vec![6u8; if op == format::Op::Write { 4096 } else { 0 }];
        format::RecHeader::write_record(&mut img[at..], op, 6, 6, off, len, &payload, VOL);
        let s = format::scan(&img, VOL, 64 * 4096, 0, 0);
        assert_eq!(s.last_seq, 5, "{off} {len}");
        assert!(s.stopped.is_some());
    }
}

/// A view open at point P while retention consolidates (probe; held before the audit): the
/// segments wholly before P's time are consolidated, the one holding P is not, and the view
/// still reads exactly the point (restored before, compared after).
#[test]
fn a_view_reads_its_point_while_consolidation_runs_up_to_it() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(
        dir,
        VOL,
        64 * 4096,
        0,
        &[(1, 1..=50), (2, 51..=60), (3, 61..=70)],
    );
    let h = store::load(dir, Load::ReadOnly).unwrap();
    let o = tempfile::tempdir().unwrap(); // outside the history
    let want = o.path().join("want.img");
    super::pit::restore(&h, super::pit::Point::Seq(55), &want, |_, _| {}).unwrap();
    let want = std::fs::read(&want).unwrap();
    let v = super::view::ViewDevice::open(&super::view::ViewSpec {
        dir: dir.to_path_buf(),
        point: super::pit::Point::Seq(55),
        sandbox: false,
    })
    .unwrap();
    let r = Retention {
        age_ns: None,
        bytes: Some(1),
    };
    let c = consolidate_once(dir, &r, 1000).unwrap();
    assert_eq!(c.map(|c| c.base_seq), Some(50));
    assert_eq!(consolidate_once(dir, &r, 1000).unwrap(), None, "held at 55");
    let mut got = vec![0u8; want.len()];
    v.read_point(0, &mut got).unwrap();
    assert!(got == want, "the view's point changed under it");
}

/// Segments set aside by one recovery keep their files through a later recovery that sets
/// aside segments of the same numbers (the writer numbers its next segment after the cut one,
/// so the numbers of those set aside are used again). Before, the second rename (and the
/// second `*.cut.damaged` copy) replaced the first: the acknowledged records set aside the
/// first time were lost.
#[test]
fn a_second_cut_never_replaces_what_the_first_set_aside() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, 64 * 4096, 0, &[(2, 51..=60), (3, 61..=70)]);
    let mut s1 = segment_image(VOL, 1, 1..=50);
    s1[payload_byte(1, 40, 9)] ^= 1;
    std::fs::write(store::seg_path(dir, 1), &s1).unwrap();
    let first: Vec<Vec<u8>> = [1, 2, 3]
        .iter()
        .map(|&n| std::fs::read(store::seg_path(dir, n)).unwrap())
        .collect();
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!((h.last_seq, h.damaged.clone()), (39, vec![2, 3]));
    // The next runs wrote segments 2 and 3 again, and segment 2 is damaged in turn.
    let mut s2 = segment_image(VOL, 2, 40..=60);
    s2[payload_byte(40, 45, 9)] ^= 1;
    std::fs::write(store::seg_path(dir, 2), &s2).unwrap();
    std::fs::write(store::seg_path(dir, 3), segment_image(VOL, 3, 61..=75)).unwrap();
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 44);
    let kept: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".damaged"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    for (n, f) in [1, 2, 3].iter().zip(&first) {
        assert!(
            kept.contains(f),
            "segment {n} as the first recovery set it aside is kept"
        );
    }
    assert!(kept.contains(&s2), "and the second cut's copy");
}

/// A directory holding a history's segments but no `cdp.meta` (lost or deleted: it is only
/// ever replaced by a rename, never missing after a crash) is refused, as a damaged
/// `cdp.meta` is, rather than made a new history: before, a new identity and base copy were
/// written over the old base copy (the only copy of every consolidated record) and every
/// segment then belonged to "another history" and was set aside.
#[test]
fn a_history_whose_meta_is_missing_is_refused_not_made_again() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, 64 * 4096, 0, &[(1, 1..=50), (2, 51..=60)]);
    std::fs::write(store::base_path(dir), vec![7u8; 64 * 4096]).unwrap();
    std::fs::remove_file(dir.join("cdp.meta")).unwrap();
    let r = store::open_or_create(dir, 64 * 4096, 4096, None);
    assert!(r.is_err(), "{r:?}");
    assert!(
        std::fs::read(store::base_path(dir)).unwrap() == vec![7u8; 64 * 4096],
        "the base copy is untouched"
    );
    assert!(store::seg_path(dir, 1).exists() && store::seg_path(dir, 2).exists());
    // A directory with no segment (a creation that stopped before its cdp.meta) is made.
    let e = tempfile::tempdir().unwrap();
    std::fs::write(store::base_path(e.path()), b"x").unwrap();
    store::open_or_create(e.path(), 64 * 4096, 4096, None).unwrap();
}

/// A recovery killed between setting a segment aside and deleting its index leaves that
/// index behind; the next run makes a segment of the same number (numbered after the cut)
/// which may start at the same sequence (a cut at a segment's header): its old index must
/// not be taken for it. Before, an index of the set-aside segment whose last entry's position
/// held a record of the same sequence in the new one passed the checks, and reads took the
/// old records' ranges with the new payloads.
#[test]
fn an_index_left_by_a_segment_set_aside_is_never_taken_for_a_new_one() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = store::testing::history(dir, VOL, 64 * 4096, 0, &[(1, 1..=50), (2, 51..=60)]);
    store::load(dir, Load::Recover).unwrap();
    assert!(store::seg_path(dir, 2).with_extension("idx").exists());
    // Killed after the rename, before the index was deleted.
    std::fs::rename(
        store::seg_path(dir, 2),
        store::seg_path(dir, 2).with_extension("cdp.damaged"),
    )
    .unwrap();
    // The next run's segment 2 from 51 on: the same sizes, other blocks (one block on).
    drop(store::create_segment(dir, &meta, 2, 51, 51, 1 << 20).unwrap());
    let mut img = std::fs::read(store::seg_path(dir, 2)).unwrap();
    let mut at = SEG_HEADER;
    for q in 51..=60u64 {
        format::RecHeader::write_record(
            &mut img[at..],
            format::Op::Write,
            q,
            q,
            (q % 64 + 1) * 4096,
            4096,
            &[q as u8; 4096],
            VOL,
        );
        at += REC_HEADER + 4096;
    }
    std::fs::write(store::seg_path(dir, 2), &img).unwrap();
    std::fs::write(store::seg_path(dir, 3), segment_image(VOL, 3, 61..=62)).unwrap();
    let h = store::load(dir, Load::ReadOnly).unwrap();
    let e = h.entries().find(|(_, e)| e.seq == 60).unwrap().1;
    assert_eq!(
        e.offset,
        61 * 4096,
        "segment 2's entries are its own records'"
    );
}

/// A view checks only the records its point still reads: one overwritten before the point
/// (here damaged) does not fail a read, and the view reads exactly what a restore writes.
#[test]
fn a_view_checks_only_the_records_its_point_reads() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, 64 * 4096, 0, &[(1, 1..=50), (2, 51..=70)]);
    let h = store::load(dir, Load::Recover).unwrap();
    let o = tempfile::tempdir().unwrap(); // outside the history
    let want = o.path().join("want.img");
    super::pit::restore(&h, super::pit::Point::Seq(70), &want, |_, _| {}).unwrap();
    let want = std::fs::read(&want).unwrap();
    // Record 2 (block 2) is overwritten by record 66 before the point.
    let mut s1 = std::fs::read(store::seg_path(dir, 1)).unwrap();
    s1[payload_byte(1, 2, 77)] ^= 0x40;
    std::fs::write(store::seg_path(dir, 1), &s1).unwrap();
    let v = super::view::ViewDevice::open(&super::view::ViewSpec {
        dir: dir.to_path_buf(),
        point: super::pit::Point::Seq(70),
        sandbox: false,
    })
    .unwrap();
    let mut got = vec![0u8; want.len()];
    v.read_point(0, &mut got).unwrap();
    assert!(got == want);
}

/// A base copy shorter than the volume (it is made at the volume's size and only ever
/// written in place: short, it was damaged) is refused by a view and a restore. Before, both
/// read what lies past its end as zeroes and served them as the point's content (a point
/// read refused it already).
#[test]
fn a_base_copy_shorter_than_the_volume_is_refused_not_read_as_zeroes() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, 64 * 4096, 0, &[(1, 1..=10)]);
    std::fs::write(store::base_path(dir), vec![9u8; 64 * 4096]).unwrap();
    let h = store::load(dir, Load::ReadOnly).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(store::base_path(dir))
        .unwrap()
        .set_len(32 * 4096)
        .unwrap();
    let v = super::view::ViewDevice::open(&super::view::ViewSpec {
        dir: dir.to_path_buf(),
        point: super::pit::Point::Seq(10),
        sandbox: false,
    });
    if let Ok(v) = &v {
        let mut b = vec![0u8; 4096];
        v.read_point(40 * 4096, &mut b).unwrap();
        assert!(
            b.iter().all(|&x| x == 9),
            "the view served zeroes for the base copy's bytes"
        );
    }
    assert!(v.is_err());
    let out = d.path().join("r.img");
    let r = super::pit::restore(&h, super::pit::Point::Seq(10), &out, |_, _| {});
    assert!(r.is_err(), "{r:?}");
    assert!(super::pit::read_at(&h, super::pit::Point::Seq(10), 40 * 4096, 4096).is_err());
}
