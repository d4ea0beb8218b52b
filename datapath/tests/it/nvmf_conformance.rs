//! NVMe/TCP behaviour an audit against the specifications found wrong (NVMe/TCP transport 1.0,
//! NVM Express Base 2.0): each test sends what a host may send and checks the exact answer
//! the specification requires (FES and FEI of a C2HTermReq, status and DNR, completion
//! Dword 0), and each failed before its fix.

use crate::harness::{Alive, in_process, in_process_with, nvmf_addr, pattern, retry_if_silent};
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use twinblk_tools::nvmf::{Controller, Host, Opts, Queue, Sqe, TermReq, t};

const NQN: &str = "nqn.2026-11.io.twinblk:vol0";
const RAM: &str = "[[volume]]\nname='vol0'\nbackend='malloc'\nsize='64MiB'\n";

/// The connection is closed by the target: EOF (or a reset) within a few seconds.
fn closed_by_target(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// The next PDU is a C2HTermReq whose data is the offending PDU header `offending`, and the
/// target closes the connection after it.
fn expect_term(q: &mut Queue, offending: &[u8]) -> TermReq {
    let p = q.read_pdu().expect("a PDU from the target");
    assert_eq!(p.kind, t::C2H_TERM, "expected C2HTermReq, got {p:?}");
    assert_eq!(
        p.data, offending,
        "the TermReq carries the offending header"
    );
    let got = TermReq {
        fes: u16::from_le_bytes([p.header[8], p.header[9]]),
        fei: u32::from_le_bytes(p.header[10..14].try_into().unwrap()),
    };
    assert!(
        closed_by_target(q.stream()),
        "connection left open after TermReq"
    );
    got
}

/// A Write of `len` bytes at LBA 0 whose data is asked for by R2T; returns its transfer tag.
fn write_by_r2t(q: &mut Queue, cid: u16, len: u32) -> u16 {
    let sqe = Sqe::new(0x01)
        .nsid(1)
        .lba(0, len / 512)
        .bytes(2, &cid.to_le_bytes())
        .bytes(32, &len.to_le_bytes())
        .bytes(39, &[0x5A]);
    q.send_raw(&q.capsule(&sqe.0, &[])).unwrap();
    let r2t = q.read_pdu().unwrap();
    assert_eq!(r2t.kind, t::R2T);
    assert_eq!(
        u32::from_le_bytes(r2t.header[16..20].try_into().unwrap()),
        len,
        "one R2T for the whole transfer"
    );
    u16::from_le_bytes([r2t.header[10], r2t.header[11]])
}

/// An H2CData PDU (no digests): its 24-byte header and the whole PDU.
fn h2c(flags: u8, cid: u16, ttag: u16, offset: u32, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let pdo = if data.is_empty() { 0 } else { 24 };
    let mut b = vec![t::H2C_DATA, flags, 24, pdo];
    b.extend_from_slice(&(24 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(&cid.to_le_bytes());
    b.extend_from_slice(&ttag.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    let header = b.clone();
    b.extend_from_slice(data);
    (header, b)
}

const LAST_PDU: u8 = 0x04;

/// NVMe/TCP 1.0 §3.3.2.2: the LAST_PDU flag is set only in the H2CData PDU that completes
/// the data an R2T asked for; an H2CData PDU whose LAST_PDU says the R2T is satisfied while
/// data is still owed for it is an unexpected PDU: a fatal transport error, C2HTermReq with
/// FES 02h (PDU Sequence Error; FEI reserved, 0) carrying the offending header, then the
/// connection closes; nothing is written. Before, the flag was ignored and the transfer
/// carried on.
#[test]
fn nvmf_h2cdata_last_pdu_before_the_r2t_is_satisfied_is_a_pdu_sequence_error() {
    let (d, _) = in_process(RAM);
    let c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut good = c.io_queue(1, 8).unwrap();
    let mut q = c.io_queue(2, 8).unwrap();
    let cid = 0x21;
    let ttag = write_by_r2t(&mut q, cid, 32768);
    // The first half of the data, flagged as the last PDU of the R2T.
    let (header, pdu) = h2c(LAST_PDU, cid, ttag, 0, &pattern(1, 16384));
    q.send_raw(&pdu).unwrap();
    let tr = expect_term(&mut q, &header);
    assert_eq!((tr.fes, tr.fei), (0x02, 0), "{tr:?}");
    assert!(good.read(1, 0, 64, 512).unwrap().iter().all(|&b| b == 0));
    // The same data split correctly (LAST_PDU only on the second half) is written.
    let data = pattern(2, 32768);
    let ttag = write_by_r2t(&mut good, cid, 32768);
    good.send_raw(&h2c(0, cid, ttag, 0, &data[..16384]).1)
        .unwrap();
    good.send_raw(&h2c(LAST_PDU, cid, ttag, 16384, &data[16384..]).1)
        .unwrap();
    let p = good.read_pdu().unwrap();
    assert_eq!(p.kind, t::RSP, "{p:?}");
    assert_eq!(u16::from_le_bytes([p.header[22], p.header[23]]) >> 1, 0);
    assert_eq!(good.read(1, 0, 64, 512).unwrap(), data);
}

/// NVMe/TCP 1.0 §3.3.2.2: "The LAST_PDU flag is set to '1' in the last H2CData PDU that
/// satisfies a R2T request" and cleared in all others (Figure 26: LAST_PDU marks the last of
/// the PDUs of one R2T). A PDU that completes the R2T's data with the flag cleared is not the
/// PDU the sequence calls for: a fatal transport error, C2HTermReq with FES 02h (PDU Sequence
/// Error, FEI reserved) carrying the offending header; nothing is written; the same holds for
/// a transfer in one PDU. Before, such a PDU was accepted and the command executed.
#[test]
fn nvmf_h2cdata_completing_the_r2t_without_last_pdu_is_a_pdu_sequence_error() {
    let (d, _) = in_process(RAM);
    let c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut good = c.io_queue(1, 8).unwrap();
    let data = pattern(4, 32768);
    // Two PDUs, the second (which satisfies the R2T) without LAST_PDU.
    let mut q = c.io_queue(2, 8).unwrap();
    let cid = 0x23;
    let ttag = write_by_r2t(&mut q, cid, 32768);
    q.send_raw(&h2c(0, cid, ttag, 0, &data[..16384]).1).unwrap();
    let (header, pdu) = h2c(0, cid, ttag, 16384, &data[16384..]);
    q.send_raw(&pdu).unwrap();
    let tr = expect_term(&mut q, &header);
    assert_eq!((tr.fes, tr.fei), (0x02, 0), "{tr:?}");
    // The whole transfer in one PDU without LAST_PDU.
    let mut q = c.io_queue(3, 8).unwrap();
    let ttag = write_by_r2t(&mut q, cid, 32768);
    let (header, pdu) = h2c(0, cid, ttag, 0, &data);
    q.send_raw(&pdu).unwrap();
    let tr = expect_term(&mut q, &header);
    assert_eq!((tr.fes, tr.fei), (0x02, 0), "{tr:?}");
    assert!(good.read(1, 0, 64, 512).unwrap().iter().all(|&b| b == 0));
}

/// NVMe/TCP 1.0 §3.6.2.8, Figure 26: DATAO and DATAL of an H2CData PDU "shall be a multiple
/// of dwords" (every transfer this target asks for is a whole number of dwords, so only a
/// host splitting it against that rule sends another). Such a field is invalid: a fatal
/// transport error, C2HTermReq with FES 01h (Invalid PDU Header Field) and FEI the field's
/// offset (12 DATAO, 16 DATAL). Before, a DATAL of 4094 was taken (and a DATAO of 2 was
/// reported as a PDU Sequence Error only because it did not continue the data).
#[test]
fn nvmf_h2cdata_datao_and_datal_not_multiples_of_dwords_are_invalid_header_fields() {
    let (d, _) = in_process(RAM);
    let c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut good = c.io_queue(1, 8).unwrap();
    let data = pattern(5, 8192 + 512);
    let cid = 0x24;
    // DATAL 4094 at offset 0.
    let mut q = c.io_queue(2, 8).unwrap();
    let ttag = write_by_r2t(&mut q, cid, 8192 + 512);
    let (header, pdu) = h2c(0, cid, ttag, 0, &data[..4094]);
    q.send_raw(&pdu).unwrap();
    let tr = expect_term(&mut q, &header);
    assert_eq!((tr.fes, tr.fei), (0x01, 16), "DATAL: {tr:?}");
    // DATAO 2 (and DATAL 6, the lowest offset is named).
    let mut q = c.io_queue(3, 8).unwrap();
    let ttag = write_by_r2t(&mut q, cid, 8192 + 512);
    let (header, pdu) = h2c(0, cid, ttag, 2, &data[..6]);
    q.send_raw(&pdu).unwrap();
    let tr = expect_term(&mut q, &header);
    assert_eq!((tr.fes, tr.fei), (0x01, 12), "DATAO: {tr:?}");
    assert!(good.read(1, 0, 17, 512).unwrap().iter().all(|&b| b == 0));
    // Dword multiples of any size are fine: 4 bytes, then the rest.
    let ttag = write_by_r2t(&mut good, cid, 8192 + 512);
    good.send_raw(&h2c(0, cid, ttag, 0, &data[..4]).1).unwrap();
    good.send_raw(&h2c(LAST_PDU, cid, ttag, 4, &data[4..]).1)
        .unwrap();
    let p = good.read_pdu().unwrap();
    assert_eq!(p.kind, t::RSP, "{p:?}");
    assert_eq!(u16::from_le_bytes([p.header[22], p.header[23]]) >> 1, 0);
    assert_eq!(good.read(1, 0, 17, 512).unwrap(), data);
}

/// An H2CData PDU exists to carry PDU-Data for an R2T (NVMe/TCP 1.0 §3.3.2.2: the H2CData
/// PDUs transfer the data contiguously until R2TL is reached; §3.6.2.8: DATAL is the length
/// of the PDU-Data field); one whose DATAL is 0 carries nothing: a fatal transport error,
/// C2HTermReq with FES 01h (Invalid PDU Header Field) and FEI 16, the offset of DATAL, as
/// for a DATAL that does not match the PDU's data. Before, it was accepted and ignored.
#[test]
fn nvmf_h2cdata_with_datal_zero_is_an_invalid_header_field_at_datal() {
    let (d, _) = in_process(RAM);
    let c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut good = c.io_queue(1, 8).unwrap();
    for (qid, flags) in [(2, 0), (3, LAST_PDU)] {
        let mut q = c.io_queue(qid, 8).unwrap();
        let cid = 0x22;
        let ttag = write_by_r2t(&mut q, cid, 8192 + 512);
        let (header, pdu) = h2c(flags, cid, ttag, 0, &[]);
        assert_eq!(pdu.len(), 24);
        q.send_raw(&pdu).unwrap();
        let tr = expect_term(&mut q, &header);
        assert_eq!((tr.fes, tr.fei), (0x01, 16), "flags {flags:#x}: {tr:?}");
    }
    good.write(1, 0, &pattern(3, 4096), 512, false).unwrap();
}

/// NVM Express Base 2.0 §3.9 (Keep Alive) and the Keep Alive command: a controller that does
/// not support Traffic Based Keep Alive (Identify Controller CTRATT bit 6, TBKAS, cleared)
/// restarts its Keep Alive Timer when it processes a Keep Alive command (or a Set Features
/// that sets KATO), and only then; other admin commands and I/O do not count. A host that
/// sends Get Features and I/O for longer than KATO but no Keep Alive is torn down; one that
/// sends Keep Alive commands is not. Before, any byte received on the admin queue restarted
/// the timer (traffic based, without TBKAS advertised), so the first host was kept.
#[test]
fn nvmf_only_keep_alive_commands_restart_the_keep_alive_timer() {
    // The busy host's association runs its 500 ms timer from its Connect, the live one's
    // 1 s timer from its last Keep Alive: a test stalled that long ended one (rightly).
    retry_if_silent(Duration::from_millis(500), only_keep_alive_restarts);
}

/// [`nvmf_only_keep_alive_commands_restart_the_keep_alive_timer`] once, `alive` set at each
/// Connect and each Keep Alive of the live host.
fn only_keep_alive_restarts(alive: &Alive) {
    let (d, _) = in_process_with("cores=[0,1]\nwait='adaptive'", RAM);
    let addr = nvmf_addr(&d);
    let opts = |name: &str, kato_ms| Opts {
        kato_ms,
        host: Host {
            nqn: format!("nqn.2014-08.test:{name}"),
            ..Default::default()
        },
        ..Default::default()
    };
    alive.set(Some(Instant::now()));
    let mut busy = Controller::connect(addr, NQN, &opts("busy", 500)).unwrap();
    let mut busy_q = busy.io_queue(1, 8).unwrap();
    let ctratt = u32::from_le_bytes(busy.identify(0x01, 0).unwrap()[96..100].try_into().unwrap());
    assert_eq!(ctratt & (1 << 6), 0, "TBKAS not advertised");
    // Generous for the live host (ten Keep Alives per KATO), so a loaded machine cannot
    // expire it by accident.
    alive.set(Some(Instant::now()));
    let mut live = Controller::connect(addr, NQN, &opts("live", 1000)).unwrap();
    let mut keep_alive = || {
        alive.set(Some(Instant::now()));
        live.keep_alive()
    };
    let get_kato = Sqe::new(0x0A).cdw(10, 0x0F);
    let t0 = Instant::now();
    let mut busy_alive = true;
    while t0.elapsed() < Duration::from_millis(2500) {
        keep_alive().unwrap();
        if busy_alive {
            // A completion, or the connection is gone (torn down).
            busy_alive = busy
                .admin
                .cmd(get_kato, &[], 0)
                .is_ok_and(|r| r.status == 0)
                && busy_q.read(1, 0, 8, 512).is_ok();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !busy_alive,
        "a host without Keep Alive commands outlived KATO"
    );
    assert!(closed_by_target(busy.admin.stream()));
    assert!(closed_by_target(busy_q.stream()));
    keep_alive().unwrap();
    assert_eq!(d.nvmf().registry.len(), 1);
}

/// Get Features, Select (CDW10 bits 10:8; NVM Express Base 2.0, Get Features): 000b the
/// current value, 001b the default, 010b the saved one (a Feature that cannot be saved
/// answers its default), 011b the Feature's capabilities in Dword 0 (bit 0 saveable, bit 1
/// namespace specific, bit 2 changeable), 100b to 111b reserved: Invalid Field in Command.
/// Identify Controller ONCS bit 4 (Save and Select Feature Support) announces it. Before, SEL
/// was ignored: every select answered the current value, reserved ones too.
#[test]
fn nvmf_get_features_select_answers_current_default_saved_and_capabilities() {
    let (d, _) = in_process(RAM);
    let opts = Opts {
        kato_ms: 30_000,
        ..Opts::default()
    };
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &opts).unwrap();
    let oncs = u16::from_le_bytes(c.identify(0x01, 0).unwrap()[520..522].try_into().unwrap());
    assert_eq!(oncs & (1 << 4), 1 << 4, "ONCS: SSFS");
    assert_eq!(c.set_num_queues(4).unwrap(), 4);
    c.admin
        .cmd_ok(Sqe::new(0x09).cdw(10, 0x0B).cdw(11, 1 << 11), &[], 0)
        .unwrap();
    let mut get = |fid: u32, sel: u32| {
        // The namespace-specific ones (05h, 82h, 83h) name namespace 1.
        let nsid = u32::from(matches!(fid, 0x05 | 0x82 | 0x83));
        let r = c
            .admin
            .cmd(Sqe::new(0x0A).nsid(nsid).cdw(10, fid | (sel << 8)), &[], 0)
            .unwrap();
        (r.status, r.result as u32)
    };
    // (FID, current, default, capabilities)
    let q = |n: u32| ((n - 1) << 16) | (n - 1);
    for (fid, current, default, caps) in [
        (0x07, q(4), q(64), 0b100),     // number of queues: set to 4, default 64
        (0x0F, 30_000, 120_000, 0b100), // KATO: from Connect, default 2 minutes
        (0x0B, 1 << 11, 0, 0b100),      // async event configuration
        (0x01, 0x7, 0x7, 0b100),        // arbitration
        (0x02, 0, 0, 0b100),            // power management
        (0x04, 0x157, 0x157, 0b100),    // temperature threshold
        (0x05, 0, 0, 0b110),            // error recovery: namespace specific
        (0x06, 1, 1, 0),                // volatile write cache (always on)
        (0x82, 0, 0, 0b110),            // reservation notification mask
        (0x83, 0, 0, 0b010),            // reservation persistence (no state_dir: PTPL 0)
    ] {
        assert_eq!(get(fid, 0), (0, current), "FID {fid:#x} current");
        assert_eq!(get(fid, 1), (0, default), "FID {fid:#x} default");
        assert_eq!(
            get(fid, 2),
            (0, default),
            "FID {fid:#x} saved: not saveable"
        );
        assert_eq!(get(fid, 3), (0, caps), "FID {fid:#x} capabilities");
        for sel in 4..=7 {
            assert_eq!(get(fid, sel).0, 0x002, "FID {fid:#x} reserved SEL {sel}");
        }
    }
    // An unsupported Feature has no capabilities either.
    assert_eq!(get(0x10, 3).0, 0x002);
    // Host Identifier: its capabilities in Dword 0, no data.
    let r = c
        .admin
        .cmd(Sqe::new(0x0A).cdw(10, 0x81 | (3 << 8)).cdw(11, 1), &[], 16)
        .unwrap();
    assert_eq!((r.status, r.result, r.data.len()), (0, 0, 0));
    let r = c
        .admin
        .cmd(Sqe::new(0x0A).cdw(10, 0x81 | (1 << 8)).cdw(11, 1), &[], 16)
        .unwrap();
    assert_eq!((r.status, r.data.len()), (0, 16));
    // Nothing is saveable: Set Features with SV is refused.
    let r = c
        .admin
        .cmd(
            Sqe::new(0x09).cdw(10, 0x0F | (1 << 31)).cdw(11, 10_000),
            &[],
            0,
        )
        .unwrap();
    assert_eq!(r.status, 0x10D);
    // A Feature that is not supported is Invalid Field in Command, SV or not (Base, Feature
    // Values); before, SV made it Feature Identifier Not Saveable.
    let r = c
        .admin
        .cmd(Sqe::new(0x09).cdw(10, 0x10 | (1 << 31)), &[], 0)
        .unwrap();
    assert_eq!(r.status, 0x002, "unsupported FID 10h with SV");
    c.keep_alive().unwrap();
}

/// Connect Controller Busy (SCT 1h, SC 81h) says no controller can be had now (Base 2.0,
/// Connect command status values): here, every controller id of this site's range is in use.
/// It is transient, so DNR stays clear (Base 2.0, Completion Queue Entry Status: DNR set means
/// the same command, re-submitted, is expected to fail; Linux's host stops reconnecting on
/// a status with DNR): once the controller holding the id goes, the same Connect succeeds.
/// Before, it was answered with DNR.
#[test]
fn nvmf_connect_controller_busy_is_retryable() {
    let text = format!(
        "[reactor]\ncores=[0]\nwait='adaptive'\npin=false\n[nbd]\nlisten=[]\n\
         [nvmf]\nlisten=['127.0.0.1:0']\nmin_cntlid=7\nmax_cntlid=7\n[control]\nsocket=''\n{RAM}"
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let addr = nvmf_addr(&d);
    let first = Controller::connect(addr, NQN, &Opts::default()).unwrap();
    assert_eq!(first.cntlid, 7);
    let connect = || {
        let mut q = Queue::open(addr, Default::default()).unwrap();
        q.connect(0, 32, NQN, &Host::default(), 0xFFFF, 0, false)
            .unwrap()
    };
    let busy = connect();
    assert_eq!(
        (busy.status, busy.dnr),
        (0x181, false),
        "Busy, worth retrying"
    );
    drop(first);
    let t0 = Instant::now();
    loop {
        let r = connect();
        if r.status == 0 {
            assert_eq!(r.result & 0xFFFF, 7);
            break;
        }
        assert_eq!((r.status, r.dnr), (0x181, false));
        assert!(
            t0.elapsed() < crate::harness::PATIENCE,
            "the id never came free"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Discovery Log Page Entry ASQSZ (bytes 09:08) is the largest Admin Submission Queue the
/// subsystem's controllers take, and for a message-based controller that is what limits
/// it (NVM Express Base 2.0, Queue Size; Discovery Log Page Entry): the controllers take
/// 4096 entries (Connect SQSIZE up to FFFh) and refuse more, so ASQSZ says 4096. Before, it
/// said 32 while larger admin queues were taken. (The discovery controller has no entry of
/// its own in this log, so nothing there limits its admin queue below the 4096 of every
/// Admin Queue.)
#[test]
fn nvmf_discovery_asqsz_is_the_admin_queue_size_the_controllers_take() {
    let (d, _) = in_process(RAM);
    let addr = nvmf_addr(&d);
    let mut disc = Controller::connect(
        addr,
        "nqn.2014-08.org.nvmexpress.discovery",
        &Opts::default(),
    )
    .unwrap();
    let log = disc.log(0x70, 0, 0, 2048).unwrap();
    assert_eq!(u64::from_le_bytes(log[8..16].try_into().unwrap()), 1);
    let asqsz = u16::from_le_bytes([log[1024 + 8], log[1024 + 9]]);
    assert_eq!(asqsz, 4096);
    let opts = Opts {
        admin_qsize: asqsz,
        ..Opts::default()
    };
    let mut c = Controller::connect(addr, NQN, &opts).expect("an admin queue of ASQSZ entries");
    c.keep_alive().unwrap();
    let mut q = Queue::open(addr, Default::default()).unwrap();
    let sqe = Sqe::fabrics(0x01).bytes(44, &asqsz.to_le_bytes());
    let host = Host::default();
    let mut data = vec![0u8; 1024];
    data[..16].copy_from_slice(&host.id);
    data[16..18].copy_from_slice(&0xFFFFu16.to_le_bytes());
    data[256..256 + NQN.len()].copy_from_slice(NQN.as_bytes());
    data[512..512 + host.nqn.len()].copy_from_slice(host.nqn.as_bytes());
    let r = q.cmd(sqe, &data, 0).unwrap();
    assert_eq!(
        (r.status, r.result & 0xFFFF),
        (0x182, 44),
        "ASQSZ + 1 entries"
    );
}

/// Set Features then Get Features of `fid` on `nsid`: (Set status, Get status, Get Dword 0).
/// The Get asks for the same temperature threshold (THSEL; TMPSEL, the composite one for Fh).
fn set_get(c: &mut Controller, fid: u32, nsid: u32, value: u32) -> (u16, u16, u32) {
    let tmpsel = match (value >> 16) & 0xF {
        0xF => 0,
        t => t,
    };
    let thsel = (value >> 20) & 0x3;
    let s = c
        .admin
        .cmd(
            Sqe::new(0x09).nsid(nsid).cdw(10, fid).cdw(11, value),
            &[],
            0,
        )
        .unwrap()
        .status;
    let g = c
        .admin
        .cmd(
            Sqe::new(0x0A)
                .nsid(nsid)
                .cdw(10, fid)
                .cdw(11, (thsel << 20) | (tmpsel << 16)),
            &[],
            0,
        )
        .unwrap();
    (s, g.status, g.result as u32)
}

/// Arbitration (01h), Power Management (02h), Temperature Threshold (04h) and Error Recovery
/// (05h) are mandatory Features of an I/O controller (Base 2.0, Feature Identifiers; NVM
/// Command Set 1.0 for 05h): Set Features changes them and Get Features reports what was set
/// (PS must be a supported power state, 0 only; a temperature sensor that is not implemented
/// has no threshold; DULBE needs NSFEAT DAE, 0 here: Invalid Field in Command). A composite
/// temperature at or beyond a threshold sets the SMART / Health log's Critical Warning bit 1.
/// A Feature that is not changeable (Get Features SEL 011b bit 2 clear: the volatile write
/// cache) answers another value with Feature Not Changeable (010Eh), its current one with
/// success. Before, all four were refused with Invalid Field, as was turning the write cache
/// off.
#[test]
fn nvmf_set_features_changes_the_mandatory_features_and_refuses_fixed_ones_as_not_changeable() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    // Arbitration: AB 011b, LPW 1, MPW 2, HPW 3 (reserved bits 7:3 dropped).
    assert_eq!(set_get(&mut c, 0x01, 0, 0x0302_01FB), (0, 0, 0x0302_0103));
    // Power management: WH 010b in state 0; state 1 does not exist.
    assert_eq!(set_get(&mut c, 0x02, 0, 0x40), (0, 0, 0x40));
    assert_eq!(set_get(&mut c, 0x02, 0, 0x41), (0x002, 0, 0x40));
    // Temperature threshold of the composite temperature (0x141 K in the SMART log).
    let warning = |c: &mut Controller| c.log(0x02, 0, 0, 512).unwrap()[0] & 0x02 != 0;
    assert!(!warning(&mut c));
    assert_eq!(
        set_get(&mut c, 0x04, 0, 0x130),
        (0, 0, 0x130),
        "over 0x130 K"
    );
    assert!(
        warning(&mut c),
        "composite temperature above its over threshold"
    );
    assert_eq!(
        set_get(&mut c, 0x04, 0, 0xF_0157),
        (0, 0, 0x157),
        "TMPSEL Fh: every sensor"
    );
    assert!(!warning(&mut c));
    assert_eq!(
        set_get(&mut c, 0x04, 0, 0x10_0141),
        (0, 0, 0x141),
        "under 0x141 K"
    );
    assert!(
        warning(&mut c),
        "composite temperature at its under threshold"
    );
    assert_eq!(set_get(&mut c, 0x04, 0, 0x10_0000), (0, 0, 0));
    assert_eq!(
        set_get(&mut c, 0x04, 0, 0x1_0100).0,
        0x002,
        "sensor 1 is not implemented"
    );
    assert_eq!(
        set_get(&mut c, 0x04, 0, 0x20_0100).0,
        0x002,
        "reserved THSEL"
    );
    // Error recovery of namespace 1: TLER 5 s; DULBE refused.
    assert_eq!(set_get(&mut c, 0x05, 1, 50), (0, 0, 50));
    assert_eq!(set_get(&mut c, 0x05, 1, 1 << 16), (0x002, 0, 50));
    // The volatile write cache is not changeable: on stays on, off is Not Changeable.
    assert_eq!(set_get(&mut c, 0x06, 0, 1), (0, 0, 1));
    assert_eq!(set_get(&mut c, 0x06, 0, 0), (0x10E, 0, 1));
    c.keep_alive().unwrap();
}

/// Get/Set Features check the NSID against the Feature's scope (Base 2.0, Feature Values;
/// Common Command Format for the NSIDs that are neither valid nor the broadcast value).
/// Namespace-specific Features (05h error recovery, 82h reservation notification mask, 83h
/// reservation persistence): an active NSID names that namespace; FFFFFFFFh is every
/// namespace for Set Features and Invalid Namespace or Format (000Bh) for Get Features; 0h
/// and an NSID above NN are Invalid Namespace or Format. Controller-scope Features: 0h and
/// FFFFFFFFh name the controller; a valid NSID is Feature Not Namespace Specific (010Fh) for
/// Set Features and the controller's value for Get Features; any other is Invalid Namespace
/// or Format. Before, the NSID was ignored.
#[test]
fn nvmf_features_check_the_nsid_against_the_features_scope() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut status = |opc: u8, fid: u32, nsid: u32, v: u32| {
        c.admin
            .cmd(Sqe::new(opc).nsid(nsid).cdw(10, fid).cdw(11, v), &[], 0)
            .unwrap()
            .status
    };
    for (fid, v) in [(0x05, 10), (0x82, 0x4), (0x83, 0)] {
        for nsid in [0, 2, 0xFFFF_FFFE] {
            assert_eq!(
                status(0x09, fid, nsid, v),
                0x00B,
                "Set {fid:#x} NSID {nsid:#x}"
            );
            assert_eq!(
                status(0x0A, fid, nsid, 0),
                0x00B,
                "Get {fid:#x} NSID {nsid:#x}"
            );
        }
        // Get with the broadcast NSID: Invalid Namespace or Format, but Invalid Field in
        // Command for the reservation Features (Base 2.0, Reservation Notification Mask and
        // Reservation Persistence).
        let want = if fid == 0x05 { 0x00B } else { 0x002 };
        assert_eq!(
            status(0x0A, fid, 0xFFFF_FFFF, 0),
            want,
            "Get {fid:#x} broadcast"
        );
        assert_eq!(
            status(0x09, fid, 0xFFFF_FFFF, v),
            0,
            "Set {fid:#x} broadcast"
        );
        assert_eq!(status(0x0A, fid, 1, 0), 0, "Get {fid:#x} NSID 1");
    }
    // Set with the broadcast NSID reached namespace 1.
    let r = c
        .admin
        .cmd(Sqe::new(0x0A).nsid(1).cdw(10, 0x82), &[], 0)
        .unwrap();
    assert_eq!((r.status, r.result), (0, 0x4));
    let mut status = |opc: u8, fid: u32, nsid: u32, v: u32| {
        c.admin
            .cmd(Sqe::new(opc).nsid(nsid).cdw(10, fid).cdw(11, v), &[], 0)
            .unwrap()
            .status
    };
    // Async event configuration (controller scope).
    assert_eq!(status(0x09, 0x0B, 1, 0), 0x10F, "Set naming namespace 1");
    assert_eq!(status(0x0A, 0x0B, 1, 0), 0, "Get naming namespace 1");
    assert_eq!(status(0x09, 0x0B, 2, 0), 0x00B, "an NSID above NN");
    assert_eq!(status(0x0A, 0x0B, 2, 0), 0x00B);
    assert_eq!(
        status(0x09, 0x0B, 0xFFFF_FFFF, 0),
        0,
        "broadcast: the controller"
    );
    assert_eq!(status(0x09, 0x0B, 0, 0), 0);
}

/// Persist Through Power Loss (Base 2.0, Reservations; Reservation Register CPTPL: 00b no
/// change, 01b reserved, 10b PTPL 0, 11b PTPL 1): reservations persist only when the daemon
/// keeps them in a state file (`[nvmf] state_dir`). With one: Identify Namespace RESCAP bit 0
/// (PTPLC) 1, Reservation Report PTPLS 1, Get Features 83h PTPL 1, CPTPL 11b accepted and 10b
/// (stop persisting) Invalid Field. Without one: PTPLC 0, PTPLS 0, PTPL 0, CPTPL 10b accepted,
/// 11b accepted though nothing persists (Linux's host asks 11b on every Register). CPTPL 01b is
/// Invalid Field either way. Before, every daemon claimed PTPL 1, with or without a state
/// file.
#[test]
fn nvmf_reservation_persistence_is_what_the_state_dir_gives() {
    let dir = tempfile::tempdir().unwrap();
    let with = format!(
        "[reactor]\ncores=[0]\nwait='adaptive'\npin=false\n[nbd]\nlisten=[]\n\
         [nvmf]\nlisten=['127.0.0.1:0']\nstate_dir='{}'\n[control]\nsocket=''\n{RAM}",
        dir.path().display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&with).expect("test config");
    let persisted = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let (memory, _) = in_process(RAM);
    for (d, ptpl) in [(&persisted, true), (&memory, false)] {
        let mut c = Controller::connect(nvmf_addr(d), NQN, &Opts::default()).unwrap();
        let rescap = c.identify(0x00, 1).unwrap()[31];
        assert_eq!(rescap, 0xFE | u8::from(ptpl), "RESCAP, PTPL {ptpl}");
        let r = c
            .admin
            .cmd(Sqe::new(0x0A).nsid(1).cdw(10, 0x83), &[], 0)
            .unwrap();
        assert_eq!(
            (r.status, r.result),
            (0, u64::from(ptpl)),
            "Get Features 83h"
        );
        let mut q = c.io_queue(1, 8).unwrap();
        let mut register = |action: u32, cptpl: u32, crkey: u64, nrkey: u64| {
            let mut data = crkey.to_le_bytes().to_vec();
            data.extend_from_slice(&nrkey.to_le_bytes());
            let sqe = Sqe::new(0x0D).nsid(1).cdw(10, action | (cptpl << 30));
            q.cmd(sqe, &data, 0).unwrap().status
        };
        assert_eq!(register(0, 0b01, 0, 7), 0x002, "CPTPL 01b is reserved");
        assert_eq!(register(0, 0b00, 0, 7), 0, "CPTPL 00b (register 7)");
        let want = if ptpl { 0x002 } else { 0 };
        assert_eq!(register(2, 0b10, 7, 7), want, "CPTPL 10b (replace 7 by 7)");
        assert_eq!(register(2, 0b11, 7, 8), 0, "CPTPL 11b (replace 7 by 8)");
        assert_eq!(register(2, 0b00, 8, 9), 0, "CPTPL 00b");
        let (status, report) = q.resv_report(1, true, 128).unwrap();
        assert_eq!(status, 0);
        assert_eq!(report[9], u8::from(ptpl), "PTPLS");
    }
}

/// A header digest error is a fatal transport error whose C2HTermReq carries FES 03h (Header
/// Digest Error) and, in FEI, "the HDGST that was received" (NVMe/TCP 1.0 §3.6.2.5, Figure 23),
/// with the offending PDU header as its data. Before, FEI was 0.
#[test]
fn nvmf_header_digest_error_names_the_received_digest() {
    let (d, _) = in_process(RAM);
    let dg = twinblk_tools::nvmf::Digests {
        header: true,
        data: false,
    };
    let mut q = Queue::open(nvmf_addr(&d), dg).unwrap();
    let mut b = q.capsule(&Sqe::new(0x18).0, &[]);
    b[10] ^= 0xFF;
    let received = u32::from_le_bytes(b[72..76].try_into().unwrap());
    q.send_raw(&b).unwrap();
    let tr = expect_term(&mut q, &b[..72]);
    assert_eq!((tr.fes, tr.fei), (0x03, received), "{tr:?}");
}

/// Get Features Host Identifier returns the 16-byte identifier (EXHID = 1) as data, and its
/// SGL must describe exactly those 16 bytes, as for every other admin data here (and Linux's
/// nvmet): another length is Data SGL Length Invalid (000Fh). Before, a shorter SGL took part
/// of it with a success, in a C2HData PDU whose DATAL (5) was no multiple of dwords, which
/// NVMe/TCP 1.0 §3.6.2.9 forbids.
#[test]
fn nvmf_get_features_host_identifier_needs_an_sgl_of_its_16_bytes() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let get = || Sqe::new(0x0A).cdw(10, 0x81).cdw(11, 1);
    for len in [5u32, 8, 32] {
        let r = c.admin.cmd(get(), &[], len).unwrap();
        assert_eq!(
            (r.status, r.data.len()),
            (0x00F, 0),
            "an SGL of {len} bytes"
        );
    }
    let r = c.admin.cmd(get(), &[], 16).unwrap();
    assert_eq!((r.status, r.data), (0, Host::default().id.to_vec()));
}

/// The Keep Alive Timer is active only while the controller is enabled and not shut down
/// (NVM Express Base, Keep Alive Timer Activation: CC.EN = 1, CSTS.RDY = 1, CC.SHN = 00b,
/// CSTS.SHST = 00b): a host that shut its controller down (CC.SHN = 01b) or disabled it
/// (CC.EN 1 to 0) and sends no Keep Alive for longer than KATO keeps its association;
/// enabling the controller again starts the timer again. Before, the timer kept running and
/// the association was torn down KATO after the last Keep Alive.
#[test]
fn nvmf_keep_alive_timer_stops_while_the_controller_is_shut_down_or_disabled() {
    // Each association runs its 500 ms timer from its Connect until the test stops it.
    retry_if_silent(Duration::from_millis(500), keep_alive_timer_stops);
}

/// [`nvmf_keep_alive_timer_stops_while_the_controller_is_shut_down_or_disabled`] once, `alive`
/// set at each Connect and cleared once both timers are stopped.
fn keep_alive_timer_stops(alive: &Alive) {
    let (d, _) = in_process(RAM);
    let addr = nvmf_addr(&d);
    let opts = Opts {
        kato_ms: 500,
        ..Opts::default()
    };
    let (cc_reg, csts_reg) = (0x14, 0x1C);
    // Shut down: CC.SHN = 01b (normal shutdown), CSTS.SHST = 10b (complete).
    alive.set(Some(Instant::now()));
    let mut down = Controller::connect(addr, NQN, &opts).unwrap();
    let cc = down.prop_get(cc_reg, false).unwrap() as u32;
    down.prop_set(cc_reg, cc | (1 << 14)).unwrap();
    // Disabled: CC.EN 1 to 0 (a Controller Level Reset).
    alive.set(Some(Instant::now()));
    let mut off = Controller::connect(addr, NQN, &opts).unwrap();
    off.prop_set(cc_reg, cc & !1).unwrap();
    alive.set(None);
    std::thread::sleep(Duration::from_millis(1500));
    let csts = down
        .prop_get(csts_reg, false)
        .expect("shut down, still associated");
    assert_eq!((csts >> 2) & 3, 2, "shutdown complete");
    assert_eq!(
        off.prop_get(csts_reg, false)
            .expect("disabled, still associated")
            & 1,
        0
    );
    // Enabled again: the timer runs again and expires without Keep Alive.
    off.prop_set(cc_reg, cc).unwrap();
    assert!(
        closed_by_target(off.admin.stream()),
        "KATO after enabling again"
    );
    assert_eq!(d.nvmf().registry.len(), 1);
}

/// Before the controller's first enabling the Keep Alive Timer runs from Connect (so an
/// association that is never enabled does not stay for ever, docs/nvmf.md), and a Property
/// Set of CC with EN = 0 (hosts write CC's fields before they set EN) does not stop it: only
/// disabling or shutting down a controller that was enabled does. Before, any CC write with
/// EN = 0 stopped the timer, so such an association was never torn down.
#[test]
fn nvmf_keep_alive_timer_runs_until_the_first_enabling_whatever_cc_says() {
    let (d, _) = in_process(RAM);
    let mut q = Queue::open(nvmf_addr(&d), Opts::default().digests).unwrap();
    let c = q
        .connect(0, 32, NQN, &Host::default(), 0xFFFF, 500, false)
        .unwrap();
    assert_eq!(c.status, 0);
    // CC: IOSQES 6, IOCQES 4, EN = 0.
    let cc = Sqe::fabrics(0x00)
        .bytes(44, &0x14u32.to_le_bytes())
        .bytes(48, &u64::from((6u32 << 16) | (4 << 20)).to_le_bytes());
    assert_eq!(q.cmd(cc, &[], 0).unwrap().status, 0);
    assert!(
        closed_by_target(q.stream()),
        "KATO after Connect, the controller never enabled"
    );
}

/// No Feature is saveable, so a Controller Level Reset (CC.EN 1 to 0) puts each one the host
/// changed back to its default (Base 2.0, Feature Values: the current value after a reset of
/// a Feature that is neither saveable nor persistent is the default): arbitration and the
/// async event configuration read as their defaults once the controller is enabled again.
/// Before, the async event configuration kept its value.
#[test]
fn nvmf_controller_level_reset_puts_features_back_to_their_defaults() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    assert_eq!(set_get(&mut c, 0x01, 0, 0x0302_0103), (0, 0, 0x0302_0103));
    assert_eq!(set_get(&mut c, 0x0B, 0, 1 << 11), (0, 0, 1 << 11));
    let cc = c.prop_get(0x14, false).unwrap() as u32;
    c.prop_set(0x14, cc & !1).unwrap();
    c.prop_set(0x14, cc).unwrap();
    for (fid, default) in [(0x01, 0x7), (0x0B, 0)] {
        let r = c.admin.cmd(Sqe::new(0x0A).cdw(10, fid), &[], 0).unwrap();
        assert_eq!(
            (r.status, r.result),
            (0, default),
            "FID {fid:#x} after the reset"
        );
    }
    c.keep_alive().unwrap();
}

/// R2TL "shall be dword aligned" (NVMe/TCP 1.0 §3.6.2.10), as the host's DATAL (§3.6.2.8):
/// a command whose transport SGL asks for a length that is no multiple of dwords cannot be
/// served by R2T, and no command here takes such data, so it is answered Data SGL Length
/// Invalid (000Fh) at once, without an R2T. Before, an R2T of 4094 bytes was sent (and the
/// host that followed it was then cut off for its DATAL).
#[test]
fn nvmf_no_r2t_asks_for_a_length_that_is_not_whole_dwords() {
    let (d, _) = in_process(RAM);
    let c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut q = c.io_queue(1, 8).unwrap();
    let cid = 0x25u16;
    let sqe = Sqe::new(0x01)
        .nsid(1)
        .lba(0, 8)
        .bytes(2, &cid.to_le_bytes())
        .bytes(32, &4094u32.to_le_bytes())
        .bytes(39, &[0x5A]);
    q.send_raw(&q.capsule(&sqe.0, &[])).unwrap();
    let p = q.read_pdu().unwrap();
    assert_eq!(p.kind, t::RSP, "a response, not an R2T: {p:?}");
    assert_eq!(u16::from_le_bytes([p.header[20], p.header[21]]), cid);
    let status = u16::from_le_bytes([p.header[22], p.header[23]]);
    assert_eq!((status >> 1) & 0x7FF, 0x00F, "Data SGL Length Invalid");
    q.write(1, 0, &pattern(6, 4096), 512, false).unwrap();
}
