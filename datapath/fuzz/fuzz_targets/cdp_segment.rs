//! Feeds arbitrary bytes to the CDP journal's decoders (docs/cdp-format.md) as a segment, an
//! index file, `cdp.meta` and a record header, and checks:
//!
//! - nothing panics;
//! - a scan never reports a log end beyond the input, its entries are in sequence order (+1),
//!   with times that never go backwards and updates' ranges inside the volume, and every entry's
//!   record decodes again at its position;
//! - what follows a scan's end is judged without panicking: a record of this use found there
//!   lies after the end and decodes as one (`later_record`, how recovery tells a cut from an
//!   earlier use's bytes);
//! - an index that decodes re-encodes to the same bytes; so do `cdp.meta` and `consolidating`,
//!   and so does a bookmarks file that parses.
//!
//! The first input byte picks the mode: 0 mod 3 = the rest is used as it is; 1 = the rest
//! follows a valid segment header; 2 = the rest describes records field by field, sealed with
//! correct checksums (a payload checksum sometimes wrong), after a valid header, so the scan's
//! sequence, time, range and payload checks are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::layer::cdp::format::{self, Index, Meta, Moving, Op, RecHeader, SegHeader};

const VOL: u64 = 7;
const SIZE: u64 = 1 << 20;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut seg;
    let bytes: &[u8] = if mode % 3 == 0 {
        rest
    } else {
        seg = SegHeader {
            vol_id: VOL,
            segno: 1,
            first_seq: 1,
            created: 1,
            size: SIZE,
            low: None,
        }
        .encode();
        if mode % 3 == 1 {
            seg.extend_from_slice(rest);
        } else {
            records(&mut seg, rest);
        }
        &seg
    };
    let s = format::scan(bytes, VOL, SIZE, 0, 0);
    assert!(s.end as usize <= bytes.len().max(format::SEG_HEADER));
    let mut prev = (0u64, 0u64);
    for e in &s.entries {
        assert_eq!(e.seq, prev.0 + 1);
        assert!(e.time >= prev.1);
        if matches!(e.op, Op::Write | Op::Zeroes | Op::Unmap) {
            assert!(e.offset.checked_add(e.len).is_some_and(|x| x <= SIZE));
        }
        let h = RecHeader::decode(&bytes[e.pos as usize..], VOL).expect("entry decodes");
        assert_eq!((h.seq, h.offset, h.len), (e.seq, e.offset, e.len));
        prev = (e.seq, e.time);
    }
    if let Some(at) = format::later_record(bytes, s.end as usize, VOL, s.last_seq + 1, s.last_time)
    {
        assert!(at >= s.end as usize);
        let h = RecHeader::decode(&bytes[at..], VOL).expect("a later record decodes");
        assert!(h.op != Op::Pad && h.seq > s.last_seq && h.time >= s.last_time);
    }
    if let Ok(i) = Index::decode(rest) {
        assert_eq!(i.encode(), rest);
    }
    if let Ok(m) = Meta::decode(rest) {
        assert_eq!(&m.encode()[..], &rest[..format::META_LEN]);
    }
    if let Ok(m) = Moving::decode(rest) {
        assert_eq!(&m.encode()[..], &rest[..format::META_LEN]);
    }
    if let Ok(text) = std::str::from_utf8(rest)
        && let Ok(b) = twinblk::layer::cdp::bookmark::parse(text)
    {
        assert_eq!(
            twinblk::layer::cdp::bookmark::parse(&twinblk::layer::cdp::bookmark::encode(&b)),
            Ok(b)
        );
    }
    let _ = SegHeader::decode(rest);
    let _ = RecHeader::decode(rest, VOL);
});

/// Sealed records from descriptors of 8 bytes: op, sequence step, time step, offset, length,
/// payload checksum right or wrong.
fn records(out: &mut Vec<u8>, mut d: &[u8]) {
    let (mut seq, mut time) = (0u64, 0u64);
    while d.len() >= 8 {
        let op = [Op::Write, Op::Zeroes, Op::Unmap, Op::Pad, Op::Mark][d[0] as usize % 5];
        seq = seq.wrapping_add(d[1] as u64 % 3);
        time = time.wrapping_add(d[2] as u64 % 4).wrapping_sub(1);
        let offset = u16::from_le_bytes([d[3], d[4]]) as u64 * 512;
        let len = (d[5] as u64 % 9) * 512;
        let good_crc = d[6] % 8 != 0;
        let fill = d[7];
        d = &d[8..];
        let payload: Vec<u8> = match op {
            Op::Write | Op::Pad => vec![fill; len as usize],
            _ => Vec::new(),
        };
        let crc = if payload.is_empty() || op == Op::Pad {
            0
        } else {
            twinblk::checksum::crc32c(&payload) ^ u32::from(!good_crc)
        };
        let mut h = [0u8; format::REC_HEADER];
        RecHeader {
            op,
            seq: if op == Op::Pad { 0 } else { seq },
            time,
            offset: if op == Op::Mark { 0 } else { offset },
            len: if op == Op::Mark { 0 } else { len },
            payload_len: payload.len() as u32,
            payload_crc: crc,
            vol_id: VOL,
        }
        .encode(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(&payload);
    }
}
