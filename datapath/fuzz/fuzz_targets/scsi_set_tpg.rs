//! Feeds arbitrary SET TARGET PORT GROUPS parameter lists to
//! `twinblk::frontend::iscsi::alua::parse_set_tpg`, for a logical unit with one group or two
//! (ids 1 and 2, this site's first) and every current optimised group (none, 1, 2), and checks:
//!
//! - nothing panics, whatever the bytes (and whatever prefix of them);
//! - the length rule (SPC-4 §6.40): an empty list asks for nothing; a list that is not the
//!   4-byte header plus whole 4-byte descriptors is PARAMETER LIST LENGTH ERROR, and only
//!   such a list;
//! - every other refusal is INVALID FIELD IN PARAMETER LIST;
//! - a request names a group of the logical unit other than the current optimised one, and
//!   the list names it active/optimised or names the optimised group active/non-optimised;
//! - the answer does not depend on the reserved bytes (header, descriptor bytes 0 bits 7..4
//!   and byte 1) nor on the order of the descriptors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::frontend::iscsi::alua::{self, DESC_LEN, HEADER_LEN, Want};
use twinblk::frontend::iscsi::scsi::Sense;

/// `p` with every reserved bit cleared.
fn clean(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    for b in v.iter_mut().take(HEADER_LEN) {
        *b = 0;
    }
    if v.len() > HEADER_LEN {
        for d in v[HEADER_LEN..].chunks_exact_mut(DESC_LEN) {
            d[0] &= 0x0F;
            d[1] = 0;
        }
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let shapes: [&[u16]; 2] = [&[1], &[1, 2]];
    for groups in shapes {
        for optimized in [None, Some(1), Some(2)] {
            for k in [data.len() / 2, data.len().saturating_sub(1)] {
                let _ = alua::parse_set_tpg(&data[..k], groups, optimized);
            }
            let r = alua::parse_set_tpg(data, groups, optimized);
            let whole =
                data.len() >= HEADER_LEN && (data.len() - HEADER_LEN).is_multiple_of(DESC_LEN);
            match r {
                _ if data.is_empty() => assert_eq!(r, Ok(Want::Nothing)),
                Err(s) if s == Sense::PARAM_LIST_LENGTH => assert!(!whole),
                Err(s) => {
                    assert!(whole);
                    assert_eq!(s, Sense::INVALID_FIELD_PARAM);
                }
                Ok(w) => {
                    assert!(whole);
                    if let Want::Optimized(g) = w {
                        assert!(groups.contains(&g) && optimized != Some(g));
                        let named = data[HEADER_LEN..].chunks_exact(DESC_LEN).any(|d| {
                            let (state, group) = (d[0] & 0x0F, u16::from_be_bytes([d[2], d[3]]));
                            (group == g && state == alua::AO)
                                || (Some(group) == optimized && state == alua::AN)
                        });
                        assert!(named, "a move nobody asked for");
                    }
                }
            }
            if whole {
                assert_eq!(alua::parse_set_tpg(&clean(data), groups, optimized), r);
                let mut rev = data[..HEADER_LEN].to_vec();
                for d in data[HEADER_LEN..].chunks_exact(DESC_LEN).rev() {
                    rev.extend_from_slice(d);
                }
                assert_eq!(alua::parse_set_tpg(&rev, groups, optimized), r);
            }
        }
    }
});
