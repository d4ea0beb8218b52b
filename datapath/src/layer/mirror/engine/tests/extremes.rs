//! Every message type, with its fields at their extremes (0, 1, the largest value, the
//! volume's end, offsets whose sum with the count overflows), delivered in every phase of a
//! session (leader and follower mirroring, a follower before RESENT, a resync's source and
//! target): the engine refuses it or takes it, never panics, never applies anything outside
//! the volume (docs/mirror-protocol.md, "Framing", checks 4 to 7).
//!
//! Model: each message is built, encoded and decoded as the link would (what the decoder
//! refuses never reaches the engine), then handed to a fresh engine in the phase under test.
//! Invariants checked: no panic; every local write, zeroing or read the engine starts lies
//! inside the volume.

use super::*;

/// A phase of a session, built fresh for each message.
#[derive(Clone, Copy, Debug)]
enum Phase {
    Leader,
    FollowerBeforeResent,
    Follower,
    /// (the site, whether it is the resync's source)
    Resync(bool),
}

const PHASES: [Phase; 5] = [
    Phase::Leader,
    Phase::FollowerBeforeResent,
    Phase::Follower,
    Phase::Resync(true),
    Phase::Resync(false),
];

/// A site in `phase` (and the io context it was built with).
fn in_phase(phase: Phase) -> (Site, IoCx) {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    match phase {
        Phase::Leader => {
            let mut s = site(Role::Leader, Duration::from_secs(10));
            s.engine.link_up(&mut io);
            (s, io)
        }
        Phase::FollowerBeforeResent | Phase::Follower => {
            let mut s = site(Role::Follower, Duration::from_secs(10));
            s.engine.link_up(&mut io);
            if matches!(phase, Phase::Follower) {
                let resent = Header::new(Type::Resent);
                s.engine.on_msg(&mut io, &resent, &[]).expect("RESENT");
            }
            (s, io)
        }
        Phase::Resync(source) => {
            let (mut a, mut b, mut io, _) = fenced_leader_with_unconfirmed_updates();
            redial(&mut a, &mut b, &mut io);
            (if source { b } else { a }, io)
        }
    }
}

/// The values each header field takes.
const IDS: [u32; 3] = [0, 1, u32::MAX];
const SEQS: [u64; 4] = [0, 1, 2, u64::MAX];
const OFFSETS: [u64; 5] = [0, SIZE - 512, SIZE, u64::MAX - 511, u64::MAX];
const COUNTS: [u32; 5] = [0, 512, 4096, u32::MAX - 511, u32::MAX];

/// Payloads for a message of type `ty` with `count` (none: the type's length is fixed by
/// something else, or the decoder refuses every length for this count).
fn payloads(ty: Type, count: u32) -> Vec<Vec<u8>> {
    use Type::*;
    let ranges = |r: &[(u64, u64)]| {
        r.iter()
            .flat_map(|(o, l)| o.to_le_bytes().into_iter().chain(l.to_le_bytes()))
            .collect::<Vec<u8>>()
    };
    match ty {
        Write | FwdWrite | Resync if count <= wire::MAX_PAYLOAD => {
            vec![vec![0x5A; count as usize]]
        }
        FwdCaw if 2 * count as u64 <= wire::MAX_PAYLOAD as u64 => {
            vec![vec![0x5A; 2 * count as usize]]
        }
        Write | FwdWrite | Resync | FwdCaw => vec![],
        FlushDone => vec![vec![], 5i32.to_le_bytes().to_vec()],
        Meta => vec![vec![1], vec![0xFF; wire::MAX_META as usize]],
        MetaState => vec![vec![], vec![0xFF; wire::MAX_META_STATE as usize]],
        Refuse => vec![b"no".to_vec()],
        Auth => vec![vec![0; wire::PROOF]],
        Welcome => vec![vec![0; 12 + wire::NONCE + wire::PROOF]],
        Hello => vec![wire::encode_hello(SIZE, BLOCK, &[0; wire::NONCE], "t")],
        ResyncAlso => {
            let n = count.min(wire::MAX_RESYNC_ALSO) as usize;
            let odd = [
                (u64::MAX - 511, 1024),
                (0, u64::MAX),
                (SIZE, 512),
                (0, 0),
                (SIZE - 512, 512),
            ];
            let mut v: Vec<Vec<u8>> = odd.iter().map(|&r| ranges(&vec![r; n])).collect::<Vec<_>>();
            v.dedup();
            v
        }
        _ => vec![vec![]],
    }
}

/// Every message the decoder lets through, built from the field values above.
fn messages() -> Vec<(Header, Vec<u8>)> {
    let mut out = Vec::new();
    use Type::*;
    let types = [
        Refuse,
        Write,
        Zeroes,
        Unmap,
        Order,
        Ack,
        FwdWrite,
        FwdZeroes,
        FwdUnmap,
        Flush,
        FlushDone,
        Ping,
        Pong,
        Resync,
        ResyncDone,
        FwdCaw,
        Miscompare,
        Meta,
        MetaState,
        MetaAck,
        ResyncAlso,
        Resent,
        Auth,
        ResyncDoneAck,
        Switch,
        SwitchAck,
        SwitchAsk,
        Hello,
        Welcome,
    ];
    for ty in types {
        for flags in [0, wire::FLAG_FUA, wire::FLAG_RESENT] {
            for id in IDS {
                for seq in SEQS {
                    for offset in OFFSETS {
                        for count in COUNTS.into_iter().chain([1, wire::MAX_RESYNC_ALSO]) {
                            for p in payloads(ty, count) {
                                let h = Header {
                                    flags,
                                    id,
                                    seq,
                                    offset,
                                    count,
                                    ..Header::new(ty)
                                };
                                let mut raw = Vec::new();
                                wire::encode(&mut raw, &h, &p);
                                if let wire::Decoded::Msg(h, r) = wire::decode(&raw) {
                                    out.push((h, raw[r].to_vec()));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Every local operation the engine started lies inside the volume.
fn inside(s: &Site) -> bool {
    s.disk
        .borrow()
        .pending
        .iter()
        .all(|&(_, off, _, len)| off.checked_add(len as u64).is_some_and(|e| e <= SIZE))
}

#[test]
fn every_message_with_extreme_fields_in_every_phase_is_refused_or_taken_without_panic() {
    let msgs = messages();
    assert!(msgs.len() > 200, "only {} messages decoded", msgs.len());
    let mut failures = Vec::new();
    for phase in PHASES {
        for (h, p) in &msgs {
            let (mut s, mut io) = in_phase(phase);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // Refused or taken: either is fine; what follows must not panic either.
                let _ = s.engine.on_msg(&mut io, h, p);
                s.engine.tick(&mut io, Instant::now());
                s.engine.take_outbox(&mut s.wire);
            }));
            match r {
                Err(_) => failures.push(format!("{phase:?}: {h:?}: panicked")),
                Ok(_) if !inside(&s) => {
                    failures.push(format!("{phase:?}: {h:?}: applied outside the volume"))
                }
                Ok(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The largest term a leadership word (`term << 1 | leads`) carries. A peer's HELLO or
/// WELCOME word of `u64::MAX` makes a site adopt it; a switchover from there would create a
/// term whose word wraps to term 0 (and a later agreement could then let both sites lead):
/// the SWITCH is refused, and a leader at that term starts no switchover.
#[test]
fn no_switchover_creates_a_term_a_leadership_word_cannot_carry() {
    use std::sync::atomic::Ordering::Relaxed;
    let max_term = u64::MAX >> 1;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    // A follower that adopted the largest term from its peer's word.
    let mut b = site(Role::Follower, Duration::from_secs(10));
    b.engine.start_session(&mut io, 0, u64::MAX).unwrap();
    assert_eq!((b.engine.term(), b.engine.leads()), (max_term, false));
    let resent = Header::new(Type::Resent);
    b.engine.on_msg(&mut io, &resent, &[]).unwrap();
    let switch = Header {
        offset: max_term + 1,
        ..Header::new(Type::Switch)
    };
    assert_eq!(
        b.engine.on_msg(&mut io, &switch, &[]),
        Err("SWITCH for a term a leadership word cannot carry")
    );
    assert_eq!(b.engine.leadership() >> 1, b.engine.term());
    assert!(!b.engine.leads());
    // A leader at the largest term refuses to start a switchover.
    let mut a = site(Role::Leader, Duration::from_secs(10));
    a.engine.start_session(&mut io, 0, u64::MAX - 1).unwrap();
    assert_eq!((a.engine.term(), a.engine.leads()), (max_term, true));
    a.engine
        .stats()
        .switch_req
        .store(super::super::super::stats::SWITCH_GIVE, Relaxed);
    a.engine.tick(&mut io, Instant::now());
    a.engine.take_outbox(&mut a.wire);
    assert!(
        !matches!(wire::decode(&a.wire), wire::Decoded::Msg(h, _) if h.ty == Type::Switch)
            && a.engine.sw.phase == super::super::switchover::Phase::Idle,
        "a switchover started at the largest term"
    );
}
