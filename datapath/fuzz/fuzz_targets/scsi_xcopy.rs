//! Feeds arbitrary EXTENDED COPY parameter lists to `twinblk::frontend::iscsi::xcopy::parse`
//! and `resolve`, and checks:
//!
//! - nothing panics, whatever the bytes (and whatever prefix of them);
//! - a parsed list keeps to the advertised limits (CSCD and segment descriptor counts);
//! - every resolved extent lies inside both of its logical units, has the length its segment
//!   gives, and runs backwards only when its destination overlaps its source from above;
//! - the RECEIVE COPY RESULTS pages build and state their own length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::frontend::iscsi::xcopy::{self, Held, Unit};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the logical units the CSCD descriptors may name: the NAA in the
    // first descriptor, sized from the byte.
    let (sel, p) = data.split_first().map_or((0, data), |(a, b)| (*a, b));
    for k in [p.len() / 2, p.len().saturating_sub(1)] {
        let _ = xcopy::parse(&p[..k]);
    }
    let Ok(Some(l)) = xcopy::parse(p) else {
        return;
    };
    assert!(l.cscds.len() <= xcopy::MAX_CSCD);
    assert!(l.segments.len() <= xcopy::MAX_SEGMENTS);
    let known = l.cscds.first().and_then(|c| c.naa());
    let blocks = u64::from(sel) * 97 + 1;
    let unit = |n: &[u8; 8]| {
        (Some(*n) == known).then_some(Unit {
            lun_idx: 0,
            vol: usize::from(sel & 1),
            blocks,
            block: 512,
        })
    };
    if let Ok(extents) = xcopy::resolve(&l, unit) {
        assert_eq!(extents.len(), l.segments.len());
        for (e, s) in extents.iter().zip(&l.segments) {
            assert_eq!(e.len, u64::from(s.blocks) * 512);
            assert!(e.src_off + e.len <= blocks * 512);
            assert!(e.dst_off + e.len <= blocks * 512);
            if e.backward {
                assert!(e.src.vol == e.dst.vol && e.dst_off > e.src_off);
                assert!(e.dst_off < e.src_off + e.len);
            }
        }
    }
    let op = xcopy::operating_parameters(512 << (sel & 3));
    assert_eq!(
        u32::from_be_bytes([op[0], op[1], op[2], op[3]]) as usize,
        op.len() - 4
    );
    let h = Held {
        list_id: l.list_id,
        status: sel % 3,
        segments: l.segments.len() as u16,
        bytes: u64::from(sel) << 30,
        sense: Some(xcopy::sense::NOT_REACHABLE),
    };
    assert_eq!(xcopy::copy_status(&h).len(), 12);
    let f = xcopy::failed_segment_details(&h);
    assert_eq!(
        u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize,
        f.len() - 4
    );
});
