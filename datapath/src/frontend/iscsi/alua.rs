//! Explicit ALUA: the SET TARGET PORT GROUPS parameter list (SPC-4 §6.40), pure.
//!
//! Model: a logical unit has one target port group per site (ids 1 and 2; one group when the
//! volume is not mirrored), and exactly one of them is active/optimised: the site that leads
//! the volume; the other is active/non-optimised. An initiator can therefore ask for one thing
//! only: which group is to be active/optimised. [`parse_set_tpg`] turns a parameter list into
//! that request ([`Want`]) or the sense to refuse it with; the connection (`conn/alua.rs`)
//! turns a [`Want::Optimized`] of the other site's group into a planned switchover.
//!
//! Parameter list: 4 reserved bytes, then 4-byte set target port group descriptors (byte 0
//! bits 3..0 the ASYMMETRIC ACCESS STATE, bytes 2..3 the TARGET PORT GROUP OR TARGET PORT).
//!
//! Invariants: never panics, whatever the bytes; a refusal asks for nothing. States that can
//! be set: active/optimised (0h) and active/non-optimised (1h); standby, unavailable, offline
//! and the reserved values are "an unsupported target port asymmetric access state", a group
//! that is not the logical unit's, a group named twice with two states, both groups
//! optimised or both non-optimised are "an invalid combination": ILLEGAL REQUEST / INVALID
//! FIELD IN PARAMETER LIST. A list whose length is not 4 + a multiple of 4 (a truncated
//! descriptor): PARAMETER LIST LENGTH ERROR. An empty list (length 0) or a header without
//! descriptors changes nothing and is not an error.

use super::scsi::Sense;

/// SET TARGET PORT GROUPS header length (reserved bytes).
pub const HEADER_LEN: usize = 4;
/// One set target port group descriptor.
pub const DESC_LEN: usize = 4;
/// ASYMMETRIC ACCESS STATE: active/optimised.
pub const AO: u8 = 0x0;
/// ASYMMETRIC ACCESS STATE: active/non-optimised.
pub const AN: u8 = 0x1;

/// What a SET TARGET PORT GROUPS asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// No change (no descriptor, or the states asked are the current ones).
    Nothing,
    /// Make this group active/optimised (and the other one active/non-optimised).
    Optimized(u16),
}

/// Parse a SET TARGET PORT GROUPS parameter list for a logical unit whose groups are
/// `groups` (this site's first; one or two) and whose active/optimised group is now
/// `optimized` (`None`: none is, e.g. a site serving nothing).
pub fn parse_set_tpg(p: &[u8], groups: &[u16], optimized: Option<u16>) -> Result<Want, Sense> {
    if p.is_empty() {
        return Ok(Want::Nothing);
    }
    if p.len() < HEADER_LEN || !(p.len() - HEADER_LEN).is_multiple_of(DESC_LEN) {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    // (group, state) asked, one entry per group.
    let mut asked: Vec<(u16, u8)> = Vec::with_capacity(2);
    for d in p[HEADER_LEN..].chunks_exact(DESC_LEN) {
        let state = d[0] & 0x0F;
        let group = u16::from_be_bytes([d[2], d[3]]);
        if state != AO && state != AN {
            return Err(Sense::INVALID_FIELD_PARAM);
        }
        if !groups.contains(&group) {
            return Err(Sense::INVALID_FIELD_PARAM);
        }
        match asked.iter().find(|(g, _)| *g == group) {
            Some(&(_, s)) if s != state => return Err(Sense::INVALID_FIELD_PARAM),
            Some(_) => {}
            None => asked.push((group, state)),
        }
    }
    let ao: Vec<u16> = asked
        .iter()
        .filter(|(_, s)| *s == AO)
        .map(|&(g, _)| g)
        .collect();
    let an: Vec<u16> = asked
        .iter()
        .filter(|(_, s)| *s == AN)
        .map(|&(g, _)| g)
        .collect();
    match (ao.as_slice(), an.as_slice()) {
        ([], []) => Ok(Want::Nothing),
        ([g], _) => Ok(if optimized == Some(*g) {
            Want::Nothing
        } else {
            Want::Optimized(*g)
        }),
        ([], [g]) => {
            if optimized != Some(*g) {
                return Ok(Want::Nothing);
            }
            // The optimised group is to be non-optimised: the other one takes its place; a
            // logical unit with one group always has it optimised.
            match groups.iter().find(|&&o| o != *g) {
                Some(&o) => Ok(Want::Optimized(o)),
                None => Err(Sense::INVALID_FIELD_PARAM),
            }
        }
        // Two groups optimised, or every group non-optimised: one group is always optimised.
        _ => Err(Sense::INVALID_FIELD_PARAM),
    }
}

/// SET TARGET PORT GROUPS could not be completed (the switchover was refused, rolled back or
/// not answered in time): HARDWARE ERROR / SET TARGET PORT GROUPS COMMAND FAILED (SPC-4
/// §6.40; the states are then those RTPG reports).
pub const STPG_FAILED: Sense = Sense {
    key: super::scsi::key::HARDWARE_ERROR,
    asc: 0x67,
    ascq: 0x0A,
    info: None,
    field: None,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn list(descs: &[(u8, u16)]) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_LEN];
        for &(state, group) in descs {
            v.extend_from_slice(&[state, 0, (group >> 8) as u8, group as u8]);
        }
        v
    }

    const BOTH: &[u16] = &[2, 1];

    #[test]
    fn asking_for_the_other_group_optimised_is_a_move_and_the_current_one_is_nothing() {
        assert_eq!(
            parse_set_tpg(&list(&[(AO, 2)]), BOTH, Some(1)),
            Ok(Want::Optimized(2))
        );
        assert_eq!(
            parse_set_tpg(&list(&[(AO, 1)]), BOTH, Some(1)),
            Ok(Want::Nothing)
        );
        // Both descriptors, consistent, in either order.
        assert_eq!(
            parse_set_tpg(&list(&[(AN, 1), (AO, 2)]), BOTH, Some(1)),
            Ok(Want::Optimized(2))
        );
        assert_eq!(
            parse_set_tpg(&list(&[(AO, 2), (AN, 1)]), BOTH, Some(1)),
            Ok(Want::Optimized(2))
        );
        // The optimised group made non-optimised: the other takes over.
        assert_eq!(
            parse_set_tpg(&list(&[(AN, 1)]), BOTH, Some(1)),
            Ok(Want::Optimized(2))
        );
        // A non-optimised group asked non-optimised: nothing.
        assert_eq!(
            parse_set_tpg(&list(&[(AN, 2)]), BOTH, Some(1)),
            Ok(Want::Nothing)
        );
        // Reserved bits of byte 0 (bits 7..4) and byte 1 are ignored.
        let mut l = list(&[(AO, 2)]);
        l[4] |= 0xF0;
        l[5] = 0xFF;
        l[0] = 0xFF;
        assert_eq!(parse_set_tpg(&l, BOTH, Some(1)), Ok(Want::Optimized(2)));
        // The same descriptor twice is one request.
        assert_eq!(
            parse_set_tpg(&list(&[(AO, 2), (AO, 2)]), BOTH, Some(1)),
            Ok(Want::Optimized(2))
        );
    }

    #[test]
    fn empty_lists_change_nothing() {
        assert_eq!(parse_set_tpg(&[], BOTH, Some(1)), Ok(Want::Nothing));
        assert_eq!(parse_set_tpg(&[0; 4], BOTH, Some(1)), Ok(Want::Nothing));
    }

    #[test]
    fn truncated_lists_are_a_parameter_list_length_error() {
        for n in [1, 2, 3, 5, 6, 7, 9, 11] {
            let mut l = list(&[(AO, 2), (AN, 1)]);
            l.truncate(n);
            assert_eq!(
                parse_set_tpg(&l, BOTH, Some(1)),
                Err(Sense::PARAM_LIST_LENGTH),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn unsupported_states_unknown_groups_and_invalid_combinations_are_invalid_fields() {
        let bad = Err(Sense::INVALID_FIELD_PARAM);
        // Standby, unavailable, the reserved codes, offline, transitioning.
        for state in 2..=0x0F {
            assert_eq!(
                parse_set_tpg(&list(&[(state, 2)]), BOTH, Some(1)),
                bad,
                "{state}"
            );
        }
        assert_eq!(parse_set_tpg(&list(&[(AO, 3)]), BOTH, Some(1)), bad);
        assert_eq!(parse_set_tpg(&list(&[(AO, 0)]), BOTH, Some(1)), bad);
        assert_eq!(parse_set_tpg(&list(&[(AO, 0x0102)]), BOTH, Some(1)), bad);
        assert_eq!(
            parse_set_tpg(&list(&[(AO, 1), (AO, 2)]), BOTH, Some(1)),
            bad
        );
        assert_eq!(
            parse_set_tpg(&list(&[(AN, 1), (AN, 2)]), BOTH, Some(1)),
            bad
        );
        assert_eq!(
            parse_set_tpg(&list(&[(AO, 2), (AN, 2)]), BOTH, Some(1)),
            bad
        );
        // One group (a volume that is not mirrored): it stays optimised.
        assert_eq!(parse_set_tpg(&list(&[(AN, 1)]), &[1], Some(1)), bad);
        assert_eq!(
            parse_set_tpg(&list(&[(AO, 1)]), &[1], Some(1)),
            Ok(Want::Nothing)
        );
        assert_eq!(parse_set_tpg(&list(&[(AO, 2)]), &[1], Some(1)), bad);
        // A valid descriptor does not excuse a bad one after it.
        assert_eq!(parse_set_tpg(&list(&[(AO, 2), (3, 1)]), BOTH, Some(1)), bad);
    }

    #[test]
    fn any_bytes_parse_without_panicking() {
        let mut x = 0x1234_5678u32;
        for len in 0..64 {
            for _ in 0..64 {
                let p: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect();
                let _ = parse_set_tpg(&p, BOTH, Some(1));
                let _ = parse_set_tpg(&p, &[1], None);
            }
        }
    }
}
