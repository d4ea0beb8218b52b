//! NBD fields at their edges: length 0 for every command, the largest legal payload, effect
//! lengths of 2^32-1, requests past the end, and the structured-reply chunk layouts at those
//! edges. Every expected byte and error value is the NBD protocol document's
//! (`NetworkBlockDevice/nbd`, doc/proto.md), written out here independently of the target's
//! code, so a client we do not run here (Linux `nbd`, qemu, libnbd) sees what the spec says.

use crate::harness::{in_process, pattern};
use crate::rawnbd::Client;
use std::io::Read;
use twinblk::frontend::nbd::proto::{cmd, err};

const VOL: &str = "[[volume]]\nname='vol0'\nbackend='malloc'\nsize='16MiB'\n";

/// Structured reply magic, `NBD_REPLY_FLAG_DONE`, chunk types (doc/proto.md, "Structured
/// reply chunk message", "Structured reply types").
const STRUCTURED_MAGIC: u32 = 0x668e_33ef;
const FLAG_DONE: u16 = 1;
const TYPE_NONE: u16 = 0;
const TYPE_OFFSET_DATA: u16 = 1;
const TYPE_ERROR: u16 = (1 << 15) + 1;

/// One structured chunk as it is on the wire.
#[derive(Debug)]
struct Chunk {
    flags: u16,
    kind: u16,
    cookie: u64,
    payload: Vec<u8>,
}

fn read_chunk(c: &mut Client) -> Chunk {
    let mut h = [0u8; 20];
    c.s.read_exact(&mut h).expect("chunk header");
    assert_eq!(
        u32::from_be_bytes(h[0..4].try_into().unwrap()),
        STRUCTURED_MAGIC,
        "not a structured chunk: {h:02x?}"
    );
    let n = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; n];
    c.s.read_exact(&mut payload).expect("chunk payload");
    Chunk {
        flags: u16::from_be_bytes([h[4], h[5]]),
        kind: u16::from_be_bytes([h[6], h[7]]),
        cookie: u64::from_be_bytes(h[8..16].try_into().unwrap()),
        payload,
    }
}

/// Check one chunk against the spec's per-type length rules.
fn check_chunk_layout(ch: &Chunk) {
    match ch.kind {
        TYPE_NONE => {
            assert!(ch.payload.is_empty(), "NONE with a payload: {ch:?}");
            assert_eq!(ch.flags & FLAG_DONE, FLAG_DONE, "NONE without DONE: {ch:?}");
        }
        TYPE_OFFSET_DATA => assert!(
            ch.payload.len() >= 9,
            "OFFSET_DATA length {} (the spec: MUST be at least 9)",
            ch.payload.len()
        ),
        TYPE_ERROR => {
            assert!(ch.payload.len() >= 6, "ERROR chunk too short: {ch:?}");
            let e = u32::from_be_bytes(ch.payload[0..4].try_into().unwrap());
            assert_ne!(e, 0, "ERROR chunk with error 0");
            let m = u16::from_be_bytes([ch.payload[4], ch.payload[5]]) as usize;
            assert!(m <= ch.payload.len() - 6);
        }
        k => panic!("unexpected chunk type {k:#x}"),
    }
}

#[test]
fn structured_read_of_length_zero_is_answered_with_a_valid_chunk() {
    let (_d, addr) = in_process(VOL);
    let mut c = Client::connect(addr, "vol0", true);
    for (cookie, offset) in [(0x1122_3344_5566_7788u64, 0u64), (2, c.size)] {
        c.send_request(cmd::READ, 0, cookie, offset, 0, &[]);
        let ch = read_chunk(&mut c);
        assert_eq!(ch.cookie, cookie);
        assert_eq!(ch.flags & FLAG_DONE, FLAG_DONE, "{ch:?}");
        check_chunk_layout(&ch);
        assert_eq!(ch.kind, TYPE_NONE, "{ch:?}");
    }
    // The stream is still in step.
    assert_eq!(c.read(0, 512).unwrap(), vec![0u8; 512]);
    c.disconnect();
}

#[test]
fn trim_past_the_end_is_einval_while_writes_and_zeroes_are_enospc() {
    let (_d, addr) = in_process(VOL);
    for structured in [false, true] {
        let mut c = Client::connect(addr, "vol0", structured);
        let size = c.size;
        // doc/proto.md, "Error values": EINVAL for a read or trim beyond the end, ENOSPC for a
        // write (and, under NBD_CMD_WRITE_ZEROES, for write zeroes).
        c.send_request(cmd::TRIM, 0, 1, size - 512, 1024, &[]);
        assert_eq!(
            c.read_reply(0),
            (1, err::EINVAL, vec![]),
            "TRIM past the end"
        );
        c.send_request(cmd::TRIM, 0, 2, u64::MAX, u32::MAX, &[]);
        assert_eq!(
            c.read_reply(0),
            (2, err::EINVAL, vec![]),
            "TRIM overflowing u64"
        );
        c.send_request(cmd::WRITE_ZEROES, 0, 3, size - 512, 1024, &[]);
        assert_eq!(c.read_reply(0), (3, err::ENOSPC, vec![]));
        c.send_request(cmd::WRITE, 0, 4, size, 512, &[7u8; 512]);
        assert_eq!(c.read_reply(0), (4, err::ENOSPC, vec![]));
        c.send_request(cmd::READ, 0, 5, size, 1, &[]);
        assert_eq!(c.read_reply(1), (5, err::EINVAL, vec![]));
        c.disconnect();
    }
}

#[test]
fn length_zero_requests_of_every_kind_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let file_vol = format!(
        "[[volume]]\nname='vol0'\nbackend='uring'\nsize='16MiB'\nblock_size=4096\npath='{}'\ncreate=true\n",
        dir.path().join("disk.img").display()
    );
    for vol in [VOL.to_string(), file_vol] {
        let (_d, addr) = in_process(&vol);
        for structured in [false, true] {
            let mut c = Client::connect(addr, "vol0", structured);
            let size = c.size;
            let data = pattern(3, 8192);
            assert_eq!(c.write(0, &data), 0);
            for (i, kind) in [cmd::WRITE, cmd::TRIM, cmd::WRITE_ZEROES, cmd::FLUSH]
                .into_iter()
                .enumerate()
            {
                for offset in [0, 4096, size] {
                    let cookie = 100 + i as u64 * 10 + offset % 7;
                    c.send_request(kind, 0, cookie, offset, 0, &[]);
                    let (k, e, _) = c.read_reply(0);
                    assert_eq!(k, cookie);
                    assert!(
                        e == 0 || e == err::EINVAL,
                        "kind {kind} offset {offset}: error {e}"
                    );
                }
            }
            if structured {
                c.send_request(cmd::READ, 0, 9, 4096, 0, &[]);
                check_chunk_layout(&read_chunk(&mut c));
            } else {
                c.send_request(cmd::READ, 0, 9, 4096, 0, &[]);
                assert_eq!(c.read_reply(0), (9, 0, vec![]));
            }
            assert_eq!(
                c.read(0, 8192).unwrap(),
                data,
                "zero-length requests changed data"
            );
            c.disconnect();
        }
    }
}

#[test]
fn the_largest_legal_payload_is_served_both_ways() {
    // 2^25 bytes: the advertised maximum, and the size the spec says no server should treat
    // as a denial of service.
    let (_d, addr) = in_process("[[volume]]\nname='vol0'\nbackend='malloc'\nsize='64MiB'\n");
    let big = pattern(9, 1 << 25);
    for structured in [false, true] {
        let mut c = Client::connect(addr, "vol0", structured);
        let at = if structured { 1 << 25 } else { 0 };
        assert_eq!(c.write(at, &big), 0);
        c.send_request(cmd::READ, 0, 77, at, 1 << 25, &[]);
        if structured {
            let ch = read_chunk(&mut c);
            check_chunk_layout(&ch);
            assert_eq!((ch.kind, ch.cookie), (TYPE_OFFSET_DATA, 77));
            assert_eq!(ch.flags & FLAG_DONE, FLAG_DONE);
            assert_eq!(ch.payload.len(), 8 + (1 << 25));
            assert_eq!(u64::from_be_bytes(ch.payload[0..8].try_into().unwrap()), at);
            assert!(ch.payload[8..] == big[..], "read back differs");
        } else {
            let (k, e, d) = c.read_reply(1 << 25);
            assert_eq!((k, e), (77, 0));
            assert!(d == big, "read back differs");
        }
        c.disconnect();
    }
}

#[test]
fn effect_lengths_of_u32_max_are_not_truncated() {
    // An export larger than 4 GiB on a sparse file; TRIM and WRITE_ZEROES of 2^32-1 bytes
    // (no payload: the maximum payload does not limit them) must cover exactly that range.
    let dir = tempfile::tempdir().unwrap();
    let vol = format!(
        "[[volume]]\nname='vol0'\nbackend='uring'\nsize='8GiB'\nblock_size=512\npath='{}'\ncreate=true\n",
        dir.path().join("big.img").display()
    );
    let (_d, addr) = in_process(&vol);
    let mut c = Client::connect(addr, "vol0", true);
    let ones = vec![0xa5u8; 512];
    let last = (1u64 << 32) - 512; // the block holding byte 2^32-1
    for kind in [cmd::WRITE_ZEROES, cmd::TRIM] {
        for at in [0, 1 << 31, last, 1 << 32] {
            assert_eq!(c.write(at, &ones), 0);
        }
        c.send_request(kind, 0, 5, 0, u32::MAX, &[]);
        assert_eq!(c.read_reply(0), (5, 0, vec![]), "kind {kind}");
        assert_eq!(c.read(0, 512).unwrap(), vec![0u8; 512], "kind {kind}");
        assert_eq!(c.read(1 << 31, 512).unwrap(), vec![0u8; 512], "kind {kind}");
        let mut want = vec![0u8; 511];
        want.push(0xa5);
        assert_eq!(c.read(last, 512).unwrap(), want, "kind {kind}: byte 2^32-1");
        assert_eq!(
            c.read(1 << 32, 512).unwrap(),
            ones,
            "kind {kind}: past the range"
        );
    }
    c.disconnect();
}

fn uring_vol(dir: &std::path::Path, block: u32) -> String {
    format!(
        "[[volume]]\nname='vol0'\nbackend='uring'\nsize='16MiB'\nblock_size={block}\npath='{}'\ncreate=true\n",
        dir.join("disk.img").display()
    )
}

#[test]
fn disc_answers_every_request_in_flight_before_closing() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, addr) = in_process(&uring_vol(dir.path(), 4096));
    let mut c = Client::connect(addr, "vol0", false);
    let data = pattern(11, 64 * 4096);
    let mut b = Vec::new();
    for i in 0..64u64 {
        let chunk = &data[i as usize * 4096..][..4096];
        for x in [
            &twinblk::frontend::nbd::proto::REQUEST_MAGIC.to_be_bytes()[..],
            &0u16.to_be_bytes(),
            &cmd::WRITE.to_be_bytes(),
            &(1000 + i).to_be_bytes(),
            &(i * 4096).to_be_bytes(),
            &4096u32.to_be_bytes(),
            chunk,
        ] {
            b.extend_from_slice(x);
        }
    }
    // DISC right behind the writes, in the same send.
    for x in [
        &twinblk::frontend::nbd::proto::REQUEST_MAGIC.to_be_bytes()[..],
        &0u16.to_be_bytes(),
        &cmd::DISC.to_be_bytes(),
        &1u64.to_be_bytes(),
        &0u64.to_be_bytes(),
        &0u32.to_be_bytes(),
    ] {
        b.extend_from_slice(x);
    }
    std::io::Write::write_all(&mut c.s, &b).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let (k, e, _) = c.read_reply(0);
        assert_eq!(e, 0);
        assert!((1000..1064).contains(&k) && seen.insert(k), "cookie {k}");
    }
    assert!(crate::rawnbd::closed_by_server(&mut c.s));
    let mut c = Client::connect(addr, "vol0", true);
    assert!(c.read(0, data.len() as u32).unwrap() == data);
    c.disconnect();
}

#[test]
fn info_without_block_size_on_an_aligned_export_says_the_sizes_before_refusing() {
    use crate::rawnbd::{fixed_newstyle, info_payload, read_option_reply, send_option};
    use twinblk::frontend::nbd::proto::{info, opt, rep};
    let dir = tempfile::tempdir().unwrap();
    let (_d, addr) = in_process(&uring_vol(dir.path(), 4096));
    let mut s = fixed_newstyle(addr);
    send_option(&mut s, opt::INFO, &info_payload("vol0", &[]));
    let mut sizes = None;
    let last = loop {
        let (o, t, d) = read_option_reply(&mut s);
        assert_eq!(o, opt::INFO);
        if t != rep::INFO {
            break t;
        }
        if u16::from_be_bytes([d[0], d[1]]) == info::BLOCK_SIZE {
            assert_eq!(d.len(), 14);
            let v = |at: usize| u32::from_be_bytes(d[at..at + 4].try_into().unwrap());
            sizes = Some((v(2), v(6), v(10)));
        }
    };
    if last == rep::ERR_BLOCK_SIZE_REQD {
        // doc/proto.md, NBD_OPT_INFO: a server sending NBD_REP_ERR_BLOCK_SIZE_REQD SHOULD
        // first send an NBD_INFO_BLOCK_SIZE reply.
        assert_eq!(
            sizes,
            Some((4096, 4096, 1 << 25)),
            "no NBD_INFO_BLOCK_SIZE before the error"
        );
    } else {
        assert_eq!(last, rep::ACK);
    }
    // Asking for the sizes: ACK, and the same sizes.
    send_option(
        &mut s,
        opt::INFO,
        &info_payload("vol0", &[info::BLOCK_SIZE]),
    );
    let mut again = None;
    loop {
        let (_, t, d) = read_option_reply(&mut s);
        if t == rep::ACK {
            break;
        }
        assert_eq!(t, rep::INFO);
        if u16::from_be_bytes([d[0], d[1]]) == info::BLOCK_SIZE {
            let v = |at: usize| u32::from_be_bytes(d[at..at + 4].try_into().unwrap());
            again = Some((v(2), v(6), v(10)));
        }
    }
    assert_eq!(again, Some((4096, 4096, 1 << 25)));
}

#[test]
fn options_longer_than_the_server_keeps_are_skipped_and_answered() {
    // doc/proto.md: the option length lets the server skip what it does not take, and during
    // option haggling the server MUST error options rather than hang up (short of a denial of
    // service). An option of 100 KiB is answered (unknown: ERR_UNSUP; known but more than the
    // server holds: ERR_TOO_BIG) and negotiation goes on; 2^32-1 bytes still ends the session.
    use crate::rawnbd::{
        closed_by_server, fixed_newstyle, info_payload, option_header, read_option_reply,
        send_option,
    };
    use twinblk::frontend::nbd::proto::{opt, rep};
    let (_d, addr) = in_process(VOL);
    let mut s = fixed_newstyle(addr);
    let big = vec![0x5au8; 100 << 10];
    send_option(&mut s, 0x7777, &big);
    assert_eq!(read_option_reply(&mut s), (0x7777, rep::ERR_UNSUP, vec![]));
    let mut go = info_payload("vol0", &[]);
    go.resize(100 << 10, 0);
    send_option(&mut s, opt::GO, &go);
    assert_eq!(
        read_option_reply(&mut s),
        (opt::GO, rep::ERR_TOO_BIG, vec![])
    );
    send_option(&mut s, opt::LIST, &[]);
    assert_eq!(read_option_reply(&mut s).1, rep::SERVER);
    assert_eq!(read_option_reply(&mut s).1, rep::ACK);
    // ABORT with a large payload is still an ABORT (the server SHOULD ignore its data).
    send_option(&mut s, opt::ABORT, &big);
    assert_eq!(read_option_reply(&mut s), (opt::ABORT, rep::ACK, vec![]));
    assert!(closed_by_server(&mut s));

    let mut s = fixed_newstyle(addr);
    std::io::Write::write_all(&mut s, &option_header(0x7777, u32::MAX)).unwrap();
    assert!(closed_by_server(&mut s));
    // EXPORT_NAME cannot be answered with an error: a name that long closes.
    let mut s = fixed_newstyle(addr);
    send_option(&mut s, opt::EXPORT_NAME, &big);
    assert!(closed_by_server(&mut s));

    let mut c = Client::connect(addr, "vol0", true);
    assert_eq!(c.read(0, 512).unwrap(), vec![0u8; 512]);
    c.disconnect();
}

#[test]
fn command_flags_are_checked_per_command_and_cookies_echo_exactly() {
    // doc/proto.md, "Command flags" and "Error values": FUA is valid on every command once
    // SEND_FUA is offered; NO_HOLE only on WRITE_ZEROES; DF, REQ_ONE and FAST_ZERO were not
    // offered (no SEND_DF, no metadata context, no SEND_FAST_ZERO): EINVAL. With structured
    // replies a READ is never answered by a simple reply, not even an early EINVAL.
    use twinblk::frontend::nbd::proto::cflag;
    const DF: u16 = 1 << 2;
    const REQ_ONE: u16 = 1 << 3;
    const FAST_ZERO: u16 = 1 << 4;
    const BLOCK_STATUS: u16 = 7;
    let (_d, addr) = in_process(VOL);
    for structured in [false, true] {
        let mut c = Client::connect(addr, "vol0", structured);
        let cases: [(u16, u16, u32, u32); 9] = [
            (cmd::READ, cflag::FUA, 512, 0),
            (cmd::FLUSH, cflag::FUA, 0, 0),
            (cmd::WRITE_ZEROES, cflag::FUA | cflag::NO_HOLE, 4096, 0),
            (cmd::TRIM, cflag::FUA, 4096, 0),
            (cmd::WRITE_ZEROES, FAST_ZERO, 4096, err::EINVAL),
            (cmd::TRIM, cflag::NO_HOLE, 4096, err::EINVAL),
            (cmd::READ, DF, 512, err::EINVAL),
            (BLOCK_STATUS, REQ_ONE, 4096, err::EINVAL),
            (BLOCK_STATUS, 0, 4096, err::EINVAL),
        ];
        for (i, (kind, flags, len, want)) in cases.into_iter().enumerate() {
            let cookie = u64::MAX - i as u64;
            c.send_request(kind, flags, cookie, 0, len, &[]);
            if structured && kind == cmd::READ {
                let ch = read_chunk(&mut c);
                check_chunk_layout(&ch);
                assert_eq!(ch.cookie, cookie);
                let e = if ch.kind == TYPE_ERROR {
                    u32::from_be_bytes(ch.payload[0..4].try_into().unwrap())
                } else {
                    0
                };
                assert_eq!(e, want, "case {i}");
            } else {
                let rl = if kind == cmd::READ { len as usize } else { 0 };
                let (k, e, _) = c.read_reply(rl);
                assert_eq!((k, e), (cookie, want), "case {i}, structured {structured}");
            }
        }
        // A WRITE with a flag it may not carry: EINVAL, its payload skipped, nothing written.
        c.send_request(cmd::WRITE, cflag::NO_HOLE, 42, 0, 512, &[0xffu8; 512]);
        assert_eq!(c.read_reply(0), (42, err::EINVAL, vec![]));
        assert_eq!(c.read(0, 512).unwrap(), vec![0u8; 512]);
        c.disconnect();
    }
}

#[test]
fn export_name_sends_124_zero_bytes_unless_no_zeroes_was_negotiated() {
    use crate::rawnbd::{connect_raw, read_greeting, send_option};
    use twinblk::frontend::nbd::proto::{self, opt};
    let (_d, addr) = in_process(VOL);
    for client_flags in [
        proto::FLAG_C_FIXED_NEWSTYLE,
        proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES,
        0,
        proto::FLAG_C_NO_ZEROES,
    ] {
        let mut s = connect_raw(addr);
        read_greeting(&mut s);
        std::io::Write::write_all(&mut s, &client_flags.to_be_bytes()).unwrap();
        send_option(&mut s, opt::EXPORT_NAME, b"vol0");
        let zeroes = if client_flags & proto::FLAG_C_NO_ZEROES != 0 {
            0
        } else {
            124
        };
        let mut b = vec![0u8; 10 + zeroes];
        s.read_exact(&mut b).unwrap();
        assert_eq!(u64::from_be_bytes(b[0..8].try_into().unwrap()), 16 << 20);
        assert_eq!(u16::from_be_bytes([b[8], b[9]]) & 1, 1, "HAS_FLAGS");
        assert!(b[10..].iter().all(|&x| x == 0));
        // Transmission starts right after: the next bytes are the reply to this READ.
        let mut c = Client { s, size: 16 << 20 };
        c.send_request(cmd::READ, 0, 0xdead_beef, 0, 8, &[]);
        assert_eq!(c.read_reply(8), (0xdead_beef, 0, vec![0u8; 8]));
        c.disconnect();
    }
}

#[test]
fn unaligned_writes_on_an_aligned_export_fail_cleanly() {
    // GO without asking for the block sizes is served; the spec then requires commands outside
    // the constraints to be "cleanly errored ... without corrupting data".
    let dir = tempfile::tempdir().unwrap();
    let (_d, addr) = in_process(&uring_vol(dir.path(), 4096));
    let mut c = Client::connect(addr, "vol0", true);
    let data = pattern(21, 16384);
    assert_eq!(c.write(0, &data), 0);
    assert_eq!(c.write(512, &[1u8; 4096]), err::EINVAL);
    assert_eq!(c.write(4096, &[1u8; 1000]), err::EINVAL);
    assert_eq!(c.read(0, 16384).unwrap(), data);
    // Unaligned reads are served (reads of any alignment are safe).
    assert_eq!(c.read(100, 5000).unwrap(), data[100..5100]);
    c.disconnect();
}
