//! Probes of an adversarial audit (session 27): points the history would serve that are not
//! the content the volume had then, after damage, lost state or fields at their limits. Each
//! test here failed before the fix it names.

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
