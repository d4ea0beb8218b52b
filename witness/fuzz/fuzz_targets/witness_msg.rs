//! Feeds arbitrary bytes to the witness's datagram decoder and, for what it accepts, to the
//! witness's rules, and checks:
//!
//! - neither the decoder nor the rules panic;
//! - a decoded message re-encodes to exactly the bytes it was decoded from (one encoding per
//!   message, every field accounted for);
//! - what the rules answer encodes and decodes back to itself as an answer;
//! - the grant invariants hold after every message: at most one holder per group, a holder only
//!   at an epoch above 0, and no group's epoch ever goes down;
//! - the table written to the state file parses back to itself;
//! - the UNUSED rule (docs/witness-protocol.md, "An unused release"), against a model kept
//!   here from the answers: a request whose known epoch is below the group's (or `2^64 − 1`)
//!   with no holder is refused STALE unless the group is marked released unused at its epoch
//!   by another site and the request knows exactly the epoch before it, and then it is not
//!   refused STALE; a grant is at `max(epoch, known) + 1` and clears the mark; only the
//!   holder's own RELEASE with `UNUSED` at the group's epoch sets it; the witness's persisted
//!   marks are the model's, also across a restart of the witness from its state file (a step
//!   byte 255);
//! - forged and replayed datagrams change nothing: every accepted datagram fails to decode
//!   under another key and with any one bit flipped, every answer fails under another key,
//!   and every request handled a second time is answered BEHIND (no lower than its counter)
//!   with the table and the model unchanged;
//! - a header byte 255 puts its field at its largest value (site, holder, counter, group,
//!   epoch; `aux` 56 entries), which must be handled like any other.
//!
//! The first input byte picks the mode: even = the rest is one raw datagram (exercises the
//! length, magic, version and MAC checks; almost everything fails the MAC); odd = the rest is a
//! list of messages described field by field and sealed with the right key, so the structural
//! checks after the MAC and the rules themselves are reached.
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use twinblk_witness::proto::{self, Body, DenyReason, Epoch, GroupId, Key, Msg, SiteId};
use twinblk_witness::state::{Arbiter, Outcome, Table};

const KEY: &[u8] = b"fuzz-key-0123456789abcdef";
/// Another key: nothing sealed with `KEY` may decode under it.
const OTHER_KEY: &[u8] = b"fuzz-key-0123456789abcdeF";

static CHECK_MAC: std::sync::Once = std::sync::Once::new();

/// Datagrams built from a field-by-field description, sealed with the key: a header whose
/// fields come from a few input bytes each (small ranges, so collisions between sites, groups
/// and epochs are frequent), a body of `aux` entries, and a correct MAC.
///
/// Requests come more often than answers, and a counter byte below 128 takes the site's next
/// counter (so sequences of accepted requests are found), 128 to 254 a small one (replays),
/// 255 the largest.
fn sealed(key_bytes: &[u8], mut d: &[u8]) -> Vec<(Vec<u8>, u16)> {
    let mut out = Vec::new();
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    while d.len() >= 10 {
        let ty = [0x02, 0x03, 0x02, 0x03, 0x01, 0x81, 0x84, d[0]][(d[1] % 8) as usize];
        let mut h = vec![0u8; proto::HEADER_LEN];
        h[0..4].copy_from_slice(&proto::MAGIC.to_le_bytes());
        h[4] = proto::VERSION;
        h[5] = ty;
        // Flags: PREFERRED (bit 0) and UNUSED (bit 1) often, anything now and then.
        h[6] = if d[2] & 0x80 != 0 { d[2] } else { d[2] & 3 };
        h[7] = if d[3] & 0x80 != 0 { d[3] } else { d[3] % 5 };
        // A byte 255: the field at its largest value.
        let small = |b: u8, m: u8| if b == 255 { u64::MAX } else { u64::from(b % m) };
        let small32 = |b: u8, m: u8| if b == 255 { u32::MAX } else { u32::from(b % m) };
        h[8..12].copy_from_slice(&small32(d[4], 4).to_le_bytes());
        // (site 0 and the largest site id are refused, or recorded, like any other)
        h[12..16].copy_from_slice(&small32(d[5], 4).to_le_bytes());
        let site = small32(d[4], 4);
        let counter = match d[6] {
            255 => u64::MAX,
            c @ 128.. => u64::from(c - 128),
            _ => {
                let n = next.entry(site).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
        };
        h[16..24].copy_from_slice(&counter.to_le_bytes());
        h[24..32].copy_from_slice(&small(d[7], 4).to_le_bytes());
        h[32..40].copy_from_slice(&small(d[8], 8).to_le_bytes());
        let n = if d[9] == 255 {
            proto::MAX_ENTRIES
        } else {
            usize::from(d[9] % 4)
        };
        h[44..48].copy_from_slice(&(n as u32).to_le_bytes());
        let entry = if ty == 0x81 { 24 } else { 12 };
        d = &d[10..];
        for i in 0..n * entry {
            h.push(d.get(i).map_or(0, |b| b % 3));
        }
        let tag = mac(key_bytes, &h);
        h.extend_from_slice(&tag);
        // Time step for the rules, in ms: from the next byte.
        let step = d.first().map_or(0, |b| u16::from(*b) * 8);
        d = d.get(1..).unwrap_or(&[]);
        out.push((h, step));
    }
    out
}

/// HMAC-SHA256, first 16 bytes, computed here from its definition (RFC 2104) so the target does
/// not only check the implementation against itself.
fn mac(key: &[u8], data: &[u8]) -> [u8; 16] {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let ipad: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(data.iter().copied())
        .collect();
    let inner = sha256(&ipad);
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(inner).collect();
    let outer = sha256(&opad);
    let mut t = [0u8; 16];
    t.copy_from_slice(&outer[..16]);
    t
}

fn sha256(data: &[u8]) -> [u8; 32] {
    // Via the crate's public name hash would be circular; use a tiny SHA-256 (FIPS 180-4).
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut m = data.to_vec();
    m.push(0x80);
    while m.len() % 64 != 56 {
        m.push(0);
    }
    m.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in m.chunks_exact(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    let mut out = [0u8; 32];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Checks one answered request against the UNUSED rule and keeps the model of the marks
/// (`before`: the table before the request).
fn unused_rule(
    before: &Table,
    marks: &mut BTreeMap<GroupId, (SiteId, Epoch)>,
    msg: &Msg,
    answer: &Body,
) {
    let site = msg.site;
    match (&msg.body, answer) {
        (
            Body::GrantRequest {
                group,
                known,
                holds: true,
                ..
            },
            _,
        ) => {
            // A grant claimed back (docs/witness-protocol.md, "A witness that forgot a grant"):
            // recorded again at its own epoch only over a record without a holder below it.
            let rec = before.groups.get(group).copied().unwrap_or_default();
            if rec.holder.is_some() {
                return;
            }
            match answer {
                Body::Grant { view } => {
                    assert!(rec.epoch < *known, "claimed back over a later record: {msg:?}");
                    assert_eq!(view.epoch, *known, "claimed back at another epoch");
                    marks.remove(group);
                }
                Body::Deny {
                    reason: DenyReason::Stale,
                    ..
                } => assert!(rec.epoch >= *known, "a claim-back refused as stale: {msg:?}"),
                Body::Deny {
                    reason: DenyReason::Full,
                    ..
                } => {}
                other => panic!("a claim-back answered {other:?}"),
            }
        }
        (Body::GrantRequest { group, known, .. }, _) => {
            let rec = before.groups.get(group).copied().unwrap_or_default();
            if rec.holder.is_some() {
                // Held: re-answered to the holder, denied to the other; no epoch judged.
                return;
            }
            let applies = marks.get(group).is_some_and(|&(by, at)| {
                by != site && at == rec.epoch && known.0.checked_add(1) == Some(at.0)
            });
            let stale = known.0 < rec.epoch.0 || known.0 == u64::MAX;
            let refused_stale = matches!(
                answer,
                Body::Deny {
                    reason: DenyReason::Stale,
                    ..
                }
            );
            if stale && !applies {
                assert!(
                    refused_stale
                        || matches!(
                            answer,
                            Body::Deny {
                                reason: DenyReason::Full,
                                ..
                            }
                        ),
                    "a stale request not refused: {msg:?} -> {answer:?}"
                );
            }
            if !stale || applies {
                assert!(!refused_stale, "refused as stale: {msg:?} -> {answer:?}");
            }
            if let Body::Grant { view } = answer {
                let want = rec.epoch.0.max(known.0).checked_add(1).expect("not stale");
                assert_eq!(view.epoch.0, want, "granted at the wrong epoch");
                marks.remove(group);
            }
        }
        (
            Body::Release {
                group,
                epoch,
                unused,
            },
            Body::State { .. },
        ) => {
            let rec = before.groups.get(group).copied().unwrap_or_default();
            if *unused && rec.holder == Some(site) && rec.epoch == *epoch {
                marks.insert(*group, (site, *epoch));
            }
        }
        _ => {}
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let key = Key::new(KEY).expect("key");
    CHECK_MAC.call_once(|| {
        // The target's own HMAC must agree with the crate's, or the sealed mode reaches nothing.
        let m = Msg {
            site: twinblk_witness::SiteId::new(1).expect("site"),
            counter: 1,
            body: Body::Heartbeat { claims: vec![] },
        };
        let mut b = Vec::new();
        proto::encode(&mut b, &m, &key).expect("encode");
        assert_eq!(mac(KEY, &b[..proto::HEADER_LEN]), b[proto::HEADER_LEN..]);
    });
    let datagrams: Vec<(Vec<u8>, u16)> = if mode % 2 == 0 {
        vec![(rest.to_vec(), 0)]
    } else {
        sealed(KEY, rest)
    };
    let other = Key::new(OTHER_KEY).expect("other key");
    let grace = Duration::from_millis(500);
    let t0 = Instant::now();
    let mut now = t0;
    let mut arb = Arbiter::new(Table::default(), grace, t0);
    let mut epochs: BTreeMap<u64, u64> = BTreeMap::new();
    // The UNUSED marks as the rules must keep them: group -> (releasing site, epoch).
    let mut marks: BTreeMap<GroupId, (SiteId, Epoch)> = BTreeMap::new();
    let mut buf = Vec::new();
    for (dg, step) in &datagrams {
        if *step == 255 * 8 {
            // The witness restarted from its state file: the marks are in it.
            let back = Table::from_bytes(&arb.table().to_bytes()).expect("the state file parses");
            arb = Arbiter::new(back, grace, now);
        }
        now += Duration::from_millis(u64::from(*step));
        assert!(
            proto::decode(dg, &other).is_err(),
            "a datagram decodes under another key"
        );
        let Ok(msg) = proto::decode(dg, &key) else {
            continue;
        };
        proto::encode(&mut buf, &msg, &key).expect("a decoded message encodes");
        assert_eq!(&buf, dg, "re-encoding differs");
        // Any one bit flipped (the MAC covers every byte, and is itself checked).
        let bit = (usize::from(*step) * 31 + dg.len()) % (dg.len() * 8);
        let mut forged = dg.clone();
        forged[bit / 8] ^= 1 << (bit % 8);
        assert!(
            proto::decode(&forged, &key).is_err(),
            "a datagram with bit {bit} flipped decodes"
        );
        let before = arb.table().clone();
        let outcome = arb.handle(now, &msg);
        match &outcome {
            Outcome::Answer { body, .. } => {
                let answer = Msg {
                    site: msg.site,
                    counter: msg.counter,
                    body: body.clone(),
                };
                proto::encode(&mut buf, &answer, &key).expect("answers encode");
                let back = proto::decode_answer(&buf, &key).expect("answers decode");
                assert_eq!(back, answer);
                assert!(
                    proto::decode_answer(&buf, &other).is_err(),
                    "an answer decodes under another key"
                );
                if let (Body::GrantRequest { .. }, Body::Grant { view }) = (&msg.body, &answer.body)
                {
                    assert_eq!(view.holder, Some(msg.site));
                }
                unused_rule(&before, &mut marks, &msg, body);
            }
            Outcome::Replay { .. } | Outcome::NotRequest | Outcome::TooManySites => {}
        }
        assert_eq!(
            arb.table().unused,
            marks,
            "the persisted marks are not the rule's"
        );
        for (g, rec) in &arb.table().groups {
            assert!(rec.holder.is_none() || rec.epoch.0 > 0, "holder at epoch 0");
            let prev = epochs.insert(g.0, rec.epoch.0).unwrap_or(0);
            assert!(rec.epoch.0 >= prev, "epoch went down");
        }
        // The same datagram again (a replay, a duplicate): nothing changes.
        let after = arb.table().clone();
        match (arb.handle(now, &msg), &outcome) {
            (Outcome::Replay { highest }, Outcome::Answer { .. } | Outcome::Replay { .. }) => {
                assert!(highest >= msg.counter, "BEHIND below the replayed counter")
            }
            (Outcome::NotRequest, Outcome::NotRequest) => {}
            (Outcome::TooManySites, Outcome::TooManySites) => {}
            (again, first) => panic!("replayed: {again:?} after {first:?}"),
        }
        assert_eq!(arb.table(), &after, "a replay changed the table");
    }
    let bytes = arb.table().to_bytes();
    let back = Table::from_bytes(&bytes).expect("the state file parses");
    let mut expect = arb.table().clone();
    expect
        .groups
        .retain(|_, r| *r != twinblk_witness::state::GroupRec::default());
    assert_eq!(back, expect);
});
