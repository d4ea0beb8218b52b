//! Feeds arbitrary bytes to the mirror link's decoder and, message by message, to a follower's
//! and a leader's engine, as a peer would, and checks:
//!
//! - neither the decoder nor the engines panic;
//! - `decode` never claims more bytes than it was given, and a `Partial(n)` asks for more than
//!   it has;
//! - a decoded message re-encodes to exactly the bytes it was decoded from;
//! - once an engine refuses a message (the link would be dropped), nothing more is fed to it;
//! - reservation commands and states (META, META_STATE) reach the reservation decoders through
//!   the engines' metadata handler without a panic;
//! - the handshake's payload decoders (HELLO, WELCOME) never panic, what they accept re-encodes
//!   to the same bytes, and a proof made of input bytes never verifies (both roles); every
//!   decoded message passes `check_fields` (the decoder ran it), and the rest of the input is
//!   also fed to the payload decoders directly.
//!
//! The first input byte picks the mode: even = the rest is a raw byte stream (exercises the
//! decoder and its checksum); odd = the rest is a list of messages described field by field and
//! sealed with a correct checksum before decoding, so the engines' own checks are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::Duration;
use twinblk::bdev::BlockDevice;
use twinblk::bdev::malloc::MallocDevice;
use twinblk::frontend::nvmf::resv::{ResvReplicator, ResvTable};
use twinblk::layer::mirror::engine::{Engine, EngineConfig, Role};
use twinblk::layer::mirror::stats::MirrorStats;
use twinblk::layer::mirror::wire::{
    self, AuthRole, Decoded, Handshake, Type, decode, decode_hello, decode_welcome, encode,
};
use twinblk::uring::IoCx;

const SIZE: u64 = 1 << 20;

fn engine(io: &mut IoCx, role: Role) -> Engine {
    let dev = MallocDevice::new(SIZE, 512).expect("malloc");
    let inner = dev.open_channel(io).expect("channel");
    let cfg = EngineConfig {
        name: "f".into(),
        role,
        size: SIZE,
        block: 512,
        peer_timeout: Duration::from_secs(60),
        max_backlog: 1 << 20,
        peer_dead: Duration::from_millis(400),
        heartbeat: Duration::from_millis(100),
        failover: None,
        dirty_granularity: 4096,
        resync_rate: 1 << 30,
        state_file: None,
        replica_data: Default::default(),
        meta: Some(Arc::new(ResvReplicator::new(vec![(
            "nqn.f".into(),
            Arc::new(ResvTable::new(1)),
            vec![(1, 0)],
        )]))),
        actlog: Default::default(),
        boot_id: 0,
        replica_path: None,
    };
    let mut e = Engine::new(cfg, inner, 0, Arc::new(MirrorStats::default()));
    e.link_up(io);
    e
}

/// Build well-sealed messages from a field-by-field description.
fn sealed(mut d: &[u8]) -> Vec<u8> {
    use twinblk::layer::mirror::wire::Header;
    let mut out = Vec::new();
    while d.len() >= 12 {
        let ty = d[0] % 28;
        let fua = d[1] & 1;
        let id = d[2] as u32;
        let seq = d[3] as u64;
        let offset = u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as u64 * 512 % (SIZE + 4096);
        let count = (u16::from_le_bytes([d[8], d[9]]) as u32 % 64) * 512 + (d[10] as u32 % 2);
        let plen = d[11] as usize % 6;
        d = &d[12..];
        let mut raw = Vec::new();
        let h = Header {
            flags: fua as u16,
            id,
            seq,
            offset,
            count,
            ..Header::new(twinblk::layer::mirror::wire::Type::Ping)
        };
        encode(&mut raw, &h, &[]);
        raw[5] = ty;
        let payload = match plen {
            0 => vec![],
            1 => vec![0xA5; count as usize],
            2 => d.iter().take(16).copied().collect(),
            // A reservation command or state for the one namespace, then the input's bytes.
            3 => {
                let mut p = vec![5, 0];
                p.extend_from_slice(b"nqn.f");
                p.extend_from_slice(&1u32.to_le_bytes());
                p.extend(d.iter().take(64).copied());
                p
            }
            // HELLO-shaped: geometry, nonce, then a name from the input.
            4 => {
                let mut p =
                    wire::encode_hello(SIZE, 512, &[d.first().copied().unwrap_or(0); 32], "");
                p.extend(d.iter().take(40).copied());
                p
            }
            // WELCOME-shaped: geometry, then nonce and proof from the input.
            _ => {
                let mut p = Vec::with_capacity(76);
                p.extend_from_slice(&SIZE.to_le_bytes());
                p.extend_from_slice(&512u32.to_le_bytes());
                p.extend(d.iter().copied().cycle().take(64));
                p.resize(76, 0);
                p
            }
        };
        raw[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        raw.truncate(36);
        let crc = crc32c_of(&raw, &payload);
        raw.extend_from_slice(&crc.to_le_bytes());
        raw.extend_from_slice(&payload);
        out.extend_from_slice(&raw);
    }
    out
}

fn crc32c_of(header36: &[u8], payload: &[u8]) -> u32 {
    // The same CRC32C (Castagnoli) the protocol uses; computed bitwise here so the fuzz target
    // does not depend on the implementation it checks.
    let mut crc = !0u32;
    for &b in header36.iter().chain(payload) {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

thread_local! {
    static IO: std::cell::RefCell<IoCx> =
        std::cell::RefCell::new(IoCx::new(8, 2, 4096, 4).expect("ring"));
}

/// The handshake payload decoders on `p`, as a HELLO's and as a WELCOME's payload.
fn handshake_payloads(p: &[u8], id: u32, seq: u64) {
    let key = twinblk_witness::Key::new(b"fuzz-link-key-0123456789").expect("key");
    if let Some(h) = decode_hello(p) {
        assert!(!h.name.is_empty() && h.name.len() <= wire::MAX_NAME);
        assert_eq!(wire::encode_hello(h.size, h.block, &h.nonce, h.name), p);
    }
    if let Some(w) = decode_welcome(p) {
        assert_eq!(wire::encode_welcome(&w), p);
        let hs = Handshake {
            nonce_f: w.nonce,
            nonce_l: w.nonce,
            size: w.size,
            block: w.block,
            f_state: id,
            f_inc: seq,
            l_state: id,
            l_inc: seq,
            f_lead: seq,
            l_lead: seq,
            name: "f",
        };
        for role in [AuthRole::Leader, AuthRole::Follower] {
            assert!(
                !hs.verify(&key, role, &w.proof),
                "a proof made of input bytes verified"
            );
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    handshake_payloads(rest, 0, 0);
    let built;
    let data: &[u8] = if mode % 2 == 0 {
        rest
    } else {
        built = sealed(rest);
        &built
    };
    IO.with(|io| run(&mut io.borrow_mut(), data));
});

fn run(io: &mut IoCx, data: &[u8]) {
    let io = &mut *io;
    let mut engines = [engine(io, Role::Follower), engine(io, Role::Leader)];
    let mut alive = [true, true];
    let mut at = 0;
    while at < data.len() {
        match decode(&data[at..]) {
            Decoded::Partial(n) => {
                assert!(n > data.len() - at, "Partial with enough bytes");
                break;
            }
            Decoded::Bad(_) => break,
            Decoded::Msg(h, r) => {
                assert!(
                    r.end <= data.len() - at && r.start == twinblk::layer::mirror::wire::HEADER
                );
                let bytes = &data[at..at + r.end];
                let payload = &bytes[r.start..];
                let mut again = Vec::new();
                encode(&mut again, &h, payload);
                assert_eq!(again, bytes, "re-encoding differs");
                assert_eq!(wire::check_fields(&h, payload), Ok(()));
                if h.ty == Type::Welcome {
                    // The decoder allowed its length: the payload decoder takes it.
                    assert!(decode_welcome(payload).is_some());
                }
                handshake_payloads(payload, h.id, h.seq);
                for (e, ok) in engines.iter_mut().zip(alive.iter_mut()) {
                    if *ok {
                        *ok = e.on_msg(io, &h, payload).is_ok();
                    }
                }
                at += r.end;
            }
        }
    }
    for e in &mut engines {
        let mut out = Vec::new();
        e.take_outbox(&mut out);
        // Whatever an engine answers must itself decode cleanly.
        let mut p = 0;
        while p < out.len() {
            match decode(&out[p..]) {
                Decoded::Msg(_, r) => p += r.end,
                other => panic!("engine produced {other:?}"),
            }
        }
    }
}
