//! Feeds arbitrary bytes to the CDP journal's decoders (docs/cdp-format.md) as a segment, an
//! index file, `cdp.meta` and a record header, and checks:
//!
//! - nothing panics;
//! - a scan never reports a log end beyond the input, its entries are in sequence order (+1),
//!   with times that never go backwards and ranges inside the volume, and every entry's
//!   record decodes again at its position;
//! - an index that decodes re-encodes to the same bytes; so does `cdp.meta`, and so does a
//!   bookmarks file that parses.
//!
//! The first input byte picks the mode: even = the rest is used as it is; odd = the rest
//! follows a valid segment header, so records are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::layer::cdp::format::{self, Index, Meta, RecHeader, SegHeader};

const VOL: u64 = 7;
const SIZE: u64 = 1 << 20;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut seg;
    let bytes: &[u8] = if mode % 2 == 0 {
        rest
    } else {
        seg = SegHeader {
            vol_id: VOL,
            segno: 1,
            first_seq: 1,
            created: 1,
            size: SIZE,
        }
        .encode();
        seg.extend_from_slice(rest);
        &seg
    };
    let s = format::scan(bytes, VOL, SIZE, 0, 0);
    assert!(s.end as usize <= bytes.len().max(format::SEG_HEADER));
    let mut prev = (0u64, 0u64);
    for e in &s.entries {
        assert_eq!(e.seq, prev.0 + 1);
        assert!(e.time >= prev.1);
        assert!(e.offset.checked_add(e.len).is_some_and(|x| x <= SIZE));
        let h = RecHeader::decode(&bytes[e.pos as usize..], VOL).expect("entry decodes");
        assert_eq!((h.seq, h.offset, h.len), (e.seq, e.offset, e.len));
        prev = (e.seq, e.time);
    }
    if let Ok(i) = Index::decode(rest) {
        assert_eq!(i.encode(), rest);
    }
    if let Ok(m) = Meta::decode(rest) {
        assert_eq!(&m.encode()[..], &rest[..format::META_LEN]);
    }
    if let Ok(text) = std::str::from_utf8(rest)
        && let Ok(b) = twinblk::layer::cdp::bookmark::parse(text)
    {
        assert_eq!(twinblk::layer::cdp::bookmark::parse(&twinblk::layer::cdp::bookmark::encode(&b)), Ok(b));
    }
    let _ = SegHeader::decode(rest);
    let _ = RecHeader::decode(rest, VOL);
});
