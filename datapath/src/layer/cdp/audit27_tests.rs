//! Probes of an adversarial audit (session 27): points the history would serve that are not
//! the content the volume had then, after damage, lost state or fields at their limits. A
//! test that names what happened "before" failed before its fix; those marked "probe; held"
//! passed as they are and stay as regression tests.

use super::degraded::{self, Prior};
use super::format::{SEG_HEADER, testing::segment_image};
use super::store::{self, Load};

const VOL: u64 = 0xa0d2;
const SIZE: u64 = 64 * 4096;

/// The newest segment's header damaged (a bit flipped on the journal's device) while records
/// of it follow: those records were acknowledged (a record is acknowledged only once the
/// header before it is durable), and the volume holds their writes. Recovery cuts the history
/// before the segment, so it must say the history is not whole after the cut (the start then
/// journals the whole volume again), as for a cut in a sealed segment. Before, only a damaged
/// header of a segment before the newest counted as records lost (a newest segment's header
/// was taken for one torn while it was created), and the start journaled on from the cut:
/// every later point served the lost records' blocks as they were before them.
#[test]
fn a_damaged_header_of_the_newest_segment_with_records_after_it_is_not_taken_for_a_torn_one() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, SIZE, 0, &[(1, 1..=50)]);
    let mut s2 = segment_image(VOL, 2, 51..=60);
    s2[30] ^= 0x04;
    std::fs::write(store::seg_path(dir, 2), &s2).unwrap();
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 50);
    assert!(
        matches!(
            degraded::read_prior(dir, SIZE),
            Prior::Stopped { after: 50, .. }
        ),
        "the history must not be whole after the cut: records 51..=60 were acknowledged"
    );
    // A header torn while the segment was created (nothing after it) holds nothing
    // acknowledged: no stop.
    let e = tempfile::tempdir().unwrap();
    let dir = e.path();
    store::testing::history(dir, VOL, SIZE, 0, &[(1, 1..=50)]);
    let mut s2 = vec![0u8; 1 << 20];
    s2[..SEG_HEADER / 2].copy_from_slice(&segment_image(VOL, 2, 51..=51)[..SEG_HEADER / 2]);
    std::fs::write(store::seg_path(dir, 2), &s2).unwrap();
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 50);
    assert!(matches!(degraded::read_prior(dir, SIZE), Prior::Whole));
}

/// The newest segment's header zeroed (a block of the journal's device lost) while records of
/// it follow: it looks like a spare prepared ahead (header all zeroes), which recovery deletes.
/// Its records were acknowledged (each only once the header before it was durable) and the
/// volume holds their writes: the segment must be set aside, not deleted, and the history
/// said not whole after the cut. Before, it was deleted with its records, and the start
/// journaled on as if the history were whole.
#[test]
fn a_zeroed_header_with_records_after_it_is_set_aside_not_deleted_as_a_spare() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, SIZE, 0, &[(1, 1..=50)]);
    let mut s2 = segment_image(VOL, 2, 51..=60);
    s2[..SEG_HEADER].fill(0);
    std::fs::write(store::seg_path(dir, 2), &s2).unwrap();
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!(h.last_seq, 50);
    assert!(
        std::fs::read(store::seg_path(dir, 2).with_extension("cdp.damaged")).is_ok_and(|x| x == s2),
        "the segment is kept aside"
    );
    assert!(
        matches!(
            degraded::read_prior(dir, SIZE),
            Prior::Stopped { after: 50, .. }
        ),
        "the history must not be whole after the cut: records 51..=60 were acknowledged"
    );
    // A spare prepared ahead from a consolidated file (old records below the history's
    // end behind a zeroed header) is still a spare.
    let e = tempfile::tempdir().unwrap();
    let dir = e.path();
    store::testing::history(dir, VOL, SIZE, 0, &[(1, 1..=50)]);
    let mut s2 = segment_image(VOL, 2, 1..=20);
    s2[..SEG_HEADER].fill(0);
    std::fs::write(store::seg_path(dir, 2), &s2).unwrap();
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!((h.last_seq, h.cut.is_none()), (50, true));
    assert!(!store::seg_path(dir, 2).exists());
    assert!(matches!(degraded::read_prior(dir, SIZE), Prior::Whole));
}

/// `cdp.meta` replaced by another history's (same volume size; an operator's copy, a restore
/// of the wrong file): every segment's header names another volume id. The history must not
/// be extended as if its base copy were that meta's base point (before, with one segment the
/// cut passed for a torn newest header, nothing was marked, and the start journaled on from
/// the other meta's base point over this history's base copy: every later point served the
/// base copy's bytes where the volume held others). Refused, as a missing `cdp.meta` is, with
/// nothing changed.
#[test]
fn a_meta_of_another_history_is_refused_not_extended() {
    for segs in [&[(1, 1..=50)][..], &[(1, 1..=50), (2, 51..=60)][..]] {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        store::testing::history(dir, VOL, SIZE, 0, segs);
        let before: Vec<Vec<u8>> = segs
            .iter()
            .map(|(n, _)| std::fs::read(store::seg_path(dir, *n)).unwrap())
            .collect();
        let e = tempfile::tempdir().unwrap();
        store::testing::history(e.path(), VOL + 1, SIZE, 0, &[]);
        std::fs::copy(e.path().join("cdp.meta"), dir.join("cdp.meta")).unwrap();
        let r = store::load(dir, Load::Recover);
        assert!(
            r.is_err(),
            "{} segments: {:?}",
            segs.len(),
            r.map(|h| h.last_seq)
        );
        assert!(matches!(degraded::read_prior(dir, SIZE), Prior::Whole));
        for ((n, _), b) in segs.iter().zip(&before) {
            assert!(
                std::fs::read(store::seg_path(dir, *n)).is_ok_and(|x| &x == b),
                "segment {n} is untouched"
            );
        }
        assert!(store::load(dir, Load::ReadOnly).is_err());
    }
}

/// Reads, not just writes: a random history of writes, write-zeroes and unmaps over several
/// segments on a base copy of random bytes, every point read through a view and a point read
/// (and one restored) against a model of the records applied in order, before and after
/// consolidation moves the base point forward segment by segment (probe; held).
#[test]
fn every_point_read_through_a_view_is_the_model_before_and_after_consolidation() {
    use super::format::{Op, REC_HEADER, RecHeader};
    use super::pit::{self, Point};
    use super::retain::{Retention, consolidate_once};
    use super::view::{ViewDevice, ViewSpec};
    use crate::layer::testing::Rng;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = store::testing::history(dir, VOL, SIZE, 0, &[]);
    let mut r = Rng(0x51ed_2701_aa55_0f0f);
    let mut base = vec![0u8; SIZE as usize];
    base.iter_mut().for_each(|b| *b = r.below(256) as u8);
    std::fs::write(store::base_path(dir), &base).unwrap();
    // states[p] = the volume at point p.
    let mut states = vec![base.clone()];
    let mut seq = 0u64;
    for segno in 1..=5u64 {
        let mut img = vec![0u8; 1 << 20];
        super::format::testing::put_header(&mut img, VOL, segno, seq + 1);
        let mut at = SEG_HEADER;
        loop {
            let blocks = 1 + r.below(16);
            let off = r.below(64 - blocks + 1) * 4096;
            let len = blocks * 4096;
            let op = match r.below(8) {
                0 => Op::Zeroes,
                1 => Op::Unmap,
                _ => Op::Write,
            };
            let payload: Vec<u8> = if op == Op::Write {
                (0..len).map(|_| r.below(256) as u8).collect()
            } else {
                Vec::new()
            };
            if at + REC_HEADER + payload.len() > img.len() {
                break;
            }
            seq += 1;
            RecHeader::write_record(
                &mut img[at..],
                op,
                seq,
                seq,
                off,
                len,
                &payload,
                meta.vol_id,
            );
            at += REC_HEADER + payload.len();
            let mut v = states.last().unwrap().clone();
            let range = off as usize..(off + len) as usize;
            if op == Op::Write {
                v[range].copy_from_slice(&payload);
            } else {
                v[range].fill(0);
            }
            states.push(v);
        }
        std::fs::write(store::seg_path(dir, segno), &img).unwrap();
    }
    let check = |from: u64, why: &str| {
        let h = store::load(dir, Load::ReadOnly).unwrap();
        assert_eq!(h.last_seq, seq);
        let mut points: Vec<u64> = (0..12).map(|_| from + r_below(seq - from + 1)).collect();
        points.extend([from, seq]);
        for p in points {
            let want = &states[p as usize];
            let v = ViewDevice::open(&ViewSpec {
                dir: dir.to_path_buf(),
                point: Point::Seq(p),
                sandbox: false,
            })
            .unwrap();
            let mut got = vec![0u8; SIZE as usize];
            v.read_point(0, &mut got).unwrap();
            assert!(&got == want, "{why}: view at {p}");
            // A piece across extents, off block boundaries.
            let mut piece = vec![0u8; 12345];
            v.read_point(4097, &mut piece).unwrap();
            assert!(
                piece[..] == want[4097..4097 + 12345],
                "{why}: view piece at {p}"
            );
            drop(v);
            let got = pit::read_at(&h, Point::Seq(p), 0, SIZE).unwrap();
            assert!(&got == want, "{why}: point read at {p}");
        }
        let o = tempfile::tempdir().unwrap(); // outside the history
        let out = o.path().join(format!("r-{from}.img"));
        pit::restore(&h, Point::Seq(seq - 1), &out, |_, _| {}).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == states[seq as usize - 1],
            "{why}: restore"
        );
    };
    fn r_below(n: u64) -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static X: AtomicU64 = AtomicU64::new(0x1234_5678_9abc_def1);
        let mut r = Rng(X.load(Ordering::Relaxed));
        let v = r.below(n);
        X.store(r.0, Ordering::Relaxed);
        v
    }
    check(0, "before consolidation");
    let ret = Retention {
        age_ns: None,
        bytes: Some(1),
    };
    let mut from = 0;
    while let Some(c) = consolidate_once(dir, &ret, 1000).unwrap() {
        from = c.base_seq;
        assert!(
            std::fs::read(store::base_path(dir)).unwrap()[..states[from as usize].len()]
                == states[from as usize],
            "the base copy is the point it names"
        );
        check(from, "after a pass");
    }
    assert!(from > 0, "consolidated nothing");
}

/// Sequence numbers and times near `u64::MAX` (a base point just below it): loading,
/// points by sequence and time, a view, a restore and a consolidation pass neither panic
/// (debug builds check every addition) nor serve a wrong point (probe).
#[test]
fn sequences_and_times_near_the_largest_value_read_and_consolidate_exactly() {
    use super::format::{Op, REC_HEADER, RecHeader};
    use super::pit::{self, Point};
    use super::view::{ViewDevice, ViewSpec};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let first = u64::MAX - 40;
    let meta = store::testing::history(dir, VOL, SIZE, first - 1, &[]);
    for (segno, seqs) in [(1u64, first..=first + 19), (2, first + 20..=first + 29)] {
        let mut img = vec![0u8; 1 << 20];
        super::format::testing::put_header(&mut img, VOL, segno, *seqs.start());
        let mut at = SEG_HEADER;
        for q in seqs {
            RecHeader::write_record(
                &mut img[at..],
                Op::Write,
                q,
                q,
                (q % 64) * 4096,
                4096,
                &[q as u8; 4096],
                meta.vol_id,
            );
            at += REC_HEADER + 4096;
        }
        std::fs::write(store::seg_path(dir, segno), &img).unwrap();
    }
    // (Read-only: a writer's recovery would raise this process's site time, shared by every
    // test of the binary, to the records' times.)
    let h = store::load(dir, Load::ReadOnly).unwrap();
    assert_eq!(h.last_seq, first + 29);
    let p = first + 25;
    let want = |b: u64| -> u8 {
        (first..=p)
            .rev()
            .find(|q| q % 64 == b)
            .map_or(0, |q| q as u8)
    };
    assert_eq!(pit::resolve(&h, Point::Time(p)).unwrap(), p);
    let got = pit::read_at(&h, Point::Seq(p), 0, SIZE).unwrap();
    let v = ViewDevice::open(&ViewSpec {
        dir: dir.to_path_buf(),
        point: Point::Time(p),
        sandbox: false,
    })
    .unwrap();
    let mut seen = vec![0u8; SIZE as usize];
    v.read_point(0, &mut seen).unwrap();
    drop(v);
    for b in 0..64u64 {
        let r = b as usize * 4096..(b as usize + 1) * 4096;
        assert!(
            got[r.clone()].iter().all(|&x| x == want(b)),
            "point read, block {b}"
        );
        assert!(seen[r].iter().all(|&x| x == want(b)), "view, block {b}");
    }
    let o = tempfile::tempdir().unwrap(); // outside the history
    let out = o.path().join("r.img");
    pit::restore(&h, Point::Seq(p), &out, |_, _| {}).unwrap();
    assert!(std::fs::read(&out).unwrap() == got);
    let r = super::retain::Retention {
        age_ns: None,
        bytes: Some(1),
    };
    let c = super::retain::consolidate_once(dir, &r, u64::MAX).unwrap();
    assert_eq!(c.map(|c| c.base_seq), Some(first + 19));
    let h = store::load(dir, Load::ReadOnly).unwrap();
    assert!(pit::read_at(&h, Point::Seq(p), 0, SIZE).unwrap() == got);
}

/// `cdp.meta` put back from an older copy while the base copy and the segments moved on (or
/// the oldest segments deleted): its base point is before the first segment's first record,
/// so the base copy is not the point the meta names (it holds the records in between, or
/// they are lost). Before, the history was cut before the first segment and the window
/// start, the meta's base point, was served as the base copy: the content of a later point.
/// Refused, as a meta of another history is, with nothing changed; a meta whose base point
/// the first segment continues still loads.
#[test]
fn a_meta_older_than_the_first_segment_is_refused_not_served_as_its_base_point() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    store::testing::history(dir, VOL, SIZE, 10, &[(3, 21..=30), (4, 31..=40)]);
    let r = store::load(dir, Load::Recover);
    assert!(
        r.as_ref().is_err_and(|_| true)
            || super::pit::resolve(r.as_ref().unwrap(), super::pit::Point::Seq(10)).is_err(),
        "point 10 served from a base copy that is not point 10"
    );
    assert!(r.is_err());
    assert!(store::load(dir, Load::ReadOnly).is_err());
    assert!(store::seg_path(dir, 3).exists() && store::seg_path(dir, 4).exists());
    assert!(matches!(degraded::read_prior(dir, SIZE), Prior::Whole));
    let e = tempfile::tempdir().unwrap();
    let dir = e.path();
    store::testing::history(
        dir,
        VOL,
        SIZE,
        20,
        &[(2, 11..=20), (3, 21..=30), (4, 31..=40)],
    );
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!((h.first_seq(), h.last_seq), (20, 40));
}

/// A consolidation pass killed after each of its steps (marker written, base copy written,
/// meta written, marker removed, segment not yet retired), the history then recovered by a
/// start and the next pass run: every point the history accepts at each stage reads what
/// the volume held then (record q writes block q % 64 with bytes q; the base copy starts
/// zero), and the history ends consolidated with every later point exact (probe; held).
#[test]
fn a_pass_killed_after_any_step_leaves_every_accepted_point_exact() {
    use super::format::Moving;
    use super::pit::{self, Point};
    use super::retain::{Retention, consolidate_once};
    let volume_at = |p: u64| -> Vec<u8> {
        let mut v = vec![0u8; SIZE as usize];
        for q in 1..=p {
            let b = (q % 64) as usize * 4096;
            v[b..b + 4096].fill(q as u8);
        }
        v
    };
    let all_exact = |dir: &std::path::Path, why: &str| {
        let h = store::load(dir, Load::ReadOnly).unwrap();
        let mut n = 0;
        for p in 0..=70u64 {
            if pit::resolve(&h, Point::Seq(p)).is_err() {
                continue;
            }
            n += 1;
            let got = pit::read_at(&h, Point::Seq(p), 0, SIZE).unwrap();
            assert!(got == volume_at(p), "{why}: point {p}");
        }
        n
    };
    let r = Retention {
        age_ns: None,
        bytes: Some(1),
    };
    // Step 0: marker only; 1: marker and base copy; 2: + meta; 3: + marker removed.
    for step in 0..4 {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let meta = store::testing::history(dir, VOL, SIZE, 0, &[(1, 1..=50), (2, 51..=70)]);
        let seg1 = std::fs::read(store::seg_path(dir, 1)).unwrap();
        let base0 = std::fs::read(store::base_path(dir)).unwrap();
        // The pass done whole, then its later steps undone as a kill would have left them.
        assert_eq!(
            consolidate_once(dir, &r, 1000).unwrap().map(|c| c.base_seq),
            Some(50)
        );
        let mv = Moving {
            vol_id: meta.vol_id,
            from: 0,
            to: 50,
            to_time: 50,
        };
        std::fs::write(store::seg_path(dir, 1), &seg1).unwrap();
        if step < 3 {
            store::write_moving(dir, &mv).unwrap();
        }
        if step < 2 {
            store::write_meta(dir, &meta).unwrap();
        }
        if step < 1 {
            std::fs::write(store::base_path(dir), &base0).unwrap();
        }
        let why = format!("killed after step {step}");
        all_exact(dir, &why);
        let h = store::load(dir, Load::Recover).unwrap();
        assert_eq!(h.last_seq, 70, "{why}");
        all_exact(dir, &why);
        while consolidate_once(dir, &Retention::default(), 1000)
            .unwrap()
            .is_some()
        {}
        assert!(!dir.join("consolidating").exists() || step >= 2, "{why}");
        let n = all_exact(dir, &why);
        assert!(n >= 21, "{why}: points 50..=70 readable, {n}");
        assert_eq!(store::read_meta(dir).unwrap().base_seq, 50, "{why}");
    }
}

/// Segments filled to their last byte (the last record ends at the file's end, no room for a
/// padding record or zeroes after it), sealed and newest, with a sealed index and without:
/// recovery cuts nothing, and every point reads exactly through a view, a point read and
/// consolidation (probe; held).
#[test]
fn segments_filled_to_their_last_byte_are_whole() {
    use super::format::{Op, REC_HEADER, RecHeader};
    use super::pit::{self, Point};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = store::testing::history(dir, VOL, SIZE, 0, &[]);
    let per = 7u64;
    for segno in 1..=3u64 {
        let first = (segno - 1) * per + 1;
        let mut img = vec![0u8; SEG_HEADER + per as usize * (REC_HEADER + 4096)];
        super::format::testing::put_header(&mut img, VOL, segno, first);
        let mut at = SEG_HEADER;
        for q in first..first + per {
            RecHeader::write_record(
                &mut img[at..],
                Op::Write,
                q,
                q,
                (q % 64) * 4096,
                4096,
                &[q as u8; 4096],
                meta.vol_id,
            );
            at += REC_HEADER + 4096;
        }
        assert_eq!(at, img.len());
        std::fs::write(store::seg_path(dir, segno), &img).unwrap();
    }
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!((h.last_seq, h.cut.clone()), (21, None));
    let h = store::load(dir, Load::ReadOnly).unwrap();
    for p in [0, 7, 8, 14, 20, 21] {
        let got = pit::read_at(&h, Point::Seq(p), 0, SIZE).unwrap();
        for b in 0..64u64 {
            let want = if (1..=p).contains(&b) { b as u8 } else { 0 };
            assert!(
                got[b as usize * 4096..(b as usize + 1) * 4096]
                    .iter()
                    .all(|&x| x == want),
                "point {p} block {b}"
            );
        }
        let v = super::view::ViewDevice::open(&super::view::ViewSpec {
            dir: dir.to_path_buf(),
            point: Point::Seq(p),
            sandbox: false,
        })
        .unwrap();
        let mut seen = vec![0u8; SIZE as usize];
        v.read_point(0, &mut seen).unwrap();
        assert!(seen == got, "view at {p}");
    }
    let r = super::retain::Retention {
        age_ns: None,
        bytes: Some(1),
    };
    while super::retain::consolidate_once(dir, &r, 1000)
        .unwrap()
        .is_some()
    {}
    assert_eq!(store::read_meta(dir).unwrap().base_seq, 14);
    let h = store::load(dir, Load::ReadOnly).unwrap();
    let got = pit::read_at(&h, Point::Seq(21), 0, SIZE).unwrap();
    assert!((1..=21u64).all(|b| got[b as usize * 4096] == b as u8));
}

/// A history whose last record has the largest sequence number (or time) a record can carry:
/// the next start has no number for its next record. Opened as a journal, it is refused by
/// name (never a panic of `last + 1`, never numbers that wrap to 0 and end the log there).
#[test]
fn a_history_at_the_largest_sequence_number_is_refused_by_the_journal_not_wrapped() {
    use super::format::{Op, REC_HEADER, RecHeader};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("j");
    std::fs::create_dir(&dir).unwrap();
    let first = u64::MAX - 3;
    let meta = store::testing::history(&dir, VOL, SIZE, first - 1, &[]);
    // Small times: a writer's recovery raises this process's site time, shared by every test
    // of the binary, to the records' times.
    let meta = super::format::Meta {
        base_time: 1,
        ..meta
    };
    std::fs::write(super::names::meta_path(&dir), meta.encode()).unwrap();
    let mut img = vec![0u8; 1 << 20];
    super::format::testing::put_header(&mut img, VOL, 1, first);
    let mut at = SEG_HEADER;
    for q in first..=u64::MAX {
        let t = q - first + 2;
        RecHeader::write_record(
            &mut img[at..],
            Op::Write,
            q,
            t,
            0,
            4096,
            &[7; 4096],
            meta.vol_id,
        );
        at += REC_HEADER + 4096;
    }
    // And a record after it (no sequence number follows u64::MAX: it ends the log).
    RecHeader::write_record(&mut img[at..], Op::Write, 1, 9, 0, 4096, &[8; 4096], VOL);
    std::fs::write(store::seg_path(&dir, 1), &img).unwrap();
    let r = std::panic::catch_unwind(|| store::load(&dir, Load::ReadOnly).map(|h| h.last_seq));
    assert!(matches!(r, Ok(Ok(u64::MAX))), "{r:?}");
    let base: std::sync::Arc<dyn crate::bdev::BlockDevice> =
        std::sync::Arc::new(crate::bdev::malloc::MallocDevice::new(SIZE, 4096).unwrap());
    let s = super::CdpSettings {
        dir: dir.clone(),
        segment_size: 4 << 20,
        seed: None,
        volatile: false,
        base_cache: false,
        prezero: false,
        sync: super::journal::SyncPolicy::default(),
        vouched: false,
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        super::CdpDevice::open(base.clone(), &s, 0, 0).map(|_| ())
    }));
    match r {
        Ok(Err(e)) => assert!(e.to_string().contains("sequence"), "{e}"),
        Ok(Ok(())) => panic!("opened a journal with no next sequence number"),
        Err(p) => panic!(
            "panicked: {:?}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or(p.downcast_ref::<&str>().copied())
        ),
    }
}

/// The same for segment numbers: a history whose newest segment is numbered `u64::MAX` has
/// no number for the segment a writer starts; it is refused by name, not a panic of
/// `segno + 1`.
#[test]
fn a_history_at_the_largest_segment_number_is_refused_by_the_journal_not_wrapped() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("j");
    std::fs::create_dir(&dir).unwrap();
    store::testing::history(&dir, VOL, SIZE, 0, &[(u64::MAX, 1..=5)]);
    assert_eq!(store::load(&dir, Load::ReadOnly).unwrap().last_seq, 5);
    let base: std::sync::Arc<dyn crate::bdev::BlockDevice> =
        std::sync::Arc::new(crate::bdev::malloc::MallocDevice::new(SIZE, 4096).unwrap());
    let s = super::CdpSettings {
        dir: dir.clone(),
        segment_size: 4 << 20,
        seed: None,
        volatile: false,
        base_cache: false,
        prezero: false,
        sync: super::journal::SyncPolicy::default(),
        vouched: false,
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        super::CdpDevice::open(base.clone(), &s, 0, 0).map(|_| ())
    }));
    match r {
        Ok(Err(e)) => assert!(e.to_string().contains("segment number"), "{e}"),
        Ok(Ok(())) => panic!("opened a journal with no next segment number"),
        Err(p) => panic!(
            "panicked: {:?}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or(p.downcast_ref::<&str>().copied())
        ),
    }
}
