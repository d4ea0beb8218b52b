use super::*;
use crate::layer::cdp::degraded::{self, Prior};
use crate::layer::cdp::pit::{self, Point};
use crate::layer::cdp::store::{self, Load};
use crate::layer::cdp::{CdpError, format};

const VOL: u64 = 0x6e9;
const SIZE: u64 = 64 * 4096;

/// A history as this version leaves it: segments marked, `degraded.map` there (whole), the
/// base copy with its identity.
fn kept_history(dir: &Path, base_seq: u64, segs: &[(u64, std::ops::RangeInclusive<u64>)]) -> Meta {
    let meta = store::testing::history(dir, VOL, SIZE, base_seq, segs);
    upgrade(dir, &meta).unwrap();
    for (segno, _) in segs {
        let p = store::seg_path(dir, *segno);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(MARK, MARK_AT as u64).unwrap();
    }
    assert!(dir_is_kept(dir));
    meta
}

/// `degraded.map` deleted from a kept history: points after the base point are refused (a
/// reader, a recovery, the writer's map), and the next start journals the whole volume again.
/// Before, a missing map read as whole: every point after a stop it named was served.
/// A history of an earlier version (no segment marked) still reads a missing map as whole.
#[test]
fn a_deleted_map_of_a_kept_history_reads_as_not_whole() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    kept_history(dir, 0, &[(1, 1..=10), (2, 11..=20)]);
    let h = store::load(dir, Load::ReadOnly).unwrap();
    assert_eq!(h.open_gap, None);
    pit::read_at(&h, Point::Seq(20), 0, 4096).unwrap();
    std::fs::remove_file(dir.join(degraded::FILE)).unwrap();
    let h = store::load(dir, Load::ReadOnly).unwrap();
    assert_eq!(
        h.open_gap.map(|g| g.0),
        Some(0),
        "not whole after the base point"
    );
    assert!(matches!(
        pit::read_at(&h, Point::Seq(20), 0, 4096),
        Err(CdpError::NotWhole { .. })
    ));
    assert!(matches!(
        degraded::read_prior(dir, SIZE),
        Prior::Stopped { regions: None, .. }
    ));
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!(h.open_gap.map(|g| g.0), Some(0));
    let (_, prior) = degraded::RegionMap::open(dir, SIZE).unwrap();
    assert!(
        matches!(prior, Prior::Stopped { regions: None, .. }),
        "the start journals the whole volume again: {prior:?}"
    );
    // Made again by the writer's open, it still says so.
    assert!(matches!(
        degraded::read_prior(dir, SIZE),
        Prior::Stopped { regions: None, .. }
    ));

    // A history of an earlier version: whole, and its recovery makes it kept.
    let e = tempfile::tempdir().unwrap();
    let dir = e.path();
    store::testing::history(dir, VOL, SIZE, 0, &[(1, 1..=10)]);
    assert!(!dir_is_kept(dir));
    assert_eq!(degraded::read_prior(dir, SIZE), Prior::Whole);
    let h = store::load(dir, Load::Recover).unwrap();
    assert_eq!(h.open_gap, None);
    assert!(
        dir.join(degraded::FILE).exists(),
        "the recovery made the map"
    );
}

/// `base.img` replaced by another file (the volume's own image, another history's base copy, an
/// older copy of this one) is refused by every load, nothing changed; a consolidation pass
/// stopped between the identity and the meta is not. Before, every point was read from the
/// other file.
#[test]
fn a_base_copy_replaced_by_another_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let meta = kept_history(dir, 0, &[(1, 1..=10), (2, 11..=20)]);
    store::load(dir, Load::ReadOnly).unwrap();
    let bp = store::base_path(dir);
    let good = std::fs::read(&bp).unwrap();
    assert_eq!(good.len() as u64, SIZE + ID_LEN as u64);
    let mut other = vec![5u8; SIZE as usize];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("the volume's image", other.clone()),
        ("another history's base copy", {
            other.extend(encode_id(VOL + 1, 0));
            other.clone()
        }),
        ("an older copy", {
            let mut b = good.clone();
            b[SIZE as usize..].copy_from_slice(&encode_id(VOL, 7));
            b
        }),
        (
            "nothing after the volume's bytes",
            good[..SIZE as usize].to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        std::fs::write(&bp, &bytes).unwrap();
        for mode in [Load::ReadOnly, Load::Recover] {
            match store::load(dir, mode) {
                Err(CdpError::Meta { path, .. }) => assert_eq!(path, bp, "{what}"),
                r => panic!("{what}: {mode:?}: {r:?}"),
            }
        }
        // Nor does a consolidation pass write into it (or give it this history's identity).
        let r = crate::layer::cdp::retain::consolidate_once(
            dir,
            &crate::layer::cdp::retain::Retention {
                age_ns: None,
                bytes: Some(1),
            },
            u64::MAX,
        );
        assert!(r.is_err(), "{what}: consolidated: {r:?}");
        assert!(std::fs::read(&bp).unwrap() == bytes, "{what}: untouched");
        assert!(store::seg_path(dir, 1).exists() && store::seg_path(dir, 2).exists());
    }
    // The right one back: consolidation goes on, and the identity follows the base point.
    std::fs::write(&bp, &good).unwrap();
    let c = crate::layer::cdp::retain::consolidate_once(
        dir,
        &crate::layer::cdp::retain::Retention {
            age_ns: None,
            bytes: Some(1),
        },
        u64::MAX,
    )
    .unwrap()
    .expect("a pass");
    assert_eq!(c.base_seq, 10);
    store::load(dir, Load::ReadOnly).unwrap();
    let b = std::fs::read(&bp).unwrap();
    assert_eq!(decode_id(&b[SIZE as usize..]).unwrap(), (VOL, 10));
    // A pass that wrote the identity of its `to`, not the meta yet.
    let mut b = std::fs::read(&bp).unwrap();
    b[SIZE as usize..].copy_from_slice(&encode_id(VOL, 20));
    std::fs::write(&bp, &b).unwrap();
    assert!(store::load(dir, Load::ReadOnly).is_err());
    store::write_moving(
        dir,
        &format::Moving {
            vol_id: meta.vol_id,
            from: 10,
            to: 20,
            to_time: 20,
        },
    )
    .unwrap();
    store::load(dir, Load::ReadOnly).unwrap();
}
