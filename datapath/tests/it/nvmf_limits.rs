//! NVMe/TCP fields at their largest, smallest and reserved values: each test sends one
//! command (or PDU) whose field sits at an edge and checks the exact answer the specifications
//! require (NVM Express Base 2.0, NVMe over Fabrics 1.1, NVMe/TCP transport 1.0), and that the
//! controller keeps working afterwards.

use crate::harness::{Alive, in_process, nvmf_addr, retry_if_silent};
use twinblk_tools::nvmf::{Controller, Digests, Opts, Queue, Sqe};

const NQN: &str = "nqn.2026-11.io.twinblk:vol0";
const RAM: &str = "[[volume]]\nname='vol0'\nbackend='malloc'\nsize='64MiB'\n";

/// Get Log Page with NUMDU:NUMDL = FFFFh:FFFFh asks for 2^32 dwords (NUMD is 0's based): far
/// beyond MDTS, so Invalid Field in Command (Base 2.0, MDTS), never a silent empty success
/// (the u32 dword count wrapped to 0) or a panic.
#[test]
fn get_log_page_with_the_largest_dword_count_is_an_invalid_field() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let sqe = Sqe::new(0x02)
        .nsid(0xFFFF_FFFF)
        .cdw(10, 0x02 | (0xFFFF << 16))
        .cdw(11, 0xFFFF);
    let r = c.admin.cmd(sqe, &[], 512).unwrap();
    assert_eq!((r.status, r.dnr), (0x002, true), "NUMD = 2^32 dwords");
    // Just above MDTS (128 KiB + 4 bytes) is refused too; at MDTS it is answered.
    let numd = (128u32 << 10) / 4; // 0's based: one dword more than 128 KiB
    let sqe = Sqe::new(0x02)
        .cdw(10, 0x02 | ((numd & 0xFFFF) << 16))
        .cdw(11, numd >> 16);
    assert_eq!(c.admin.cmd(sqe, &[], 512).unwrap().status, 0x002);
    assert_eq!(c.log(0x02, 0, 0, 512).unwrap()[3], 100, "still answering");
}

/// Property Get/Set size (ATTRIB bits 2:0: 0 four bytes, 1 eight, the rest reserved) against
/// every offset of the 8-byte CAP and its 4-byte neighbours: an 8-byte access must be CAP
/// itself; a 4-byte access reads either half of CAP (as SPDK's target and PCIe register reads
/// do), or a whole 4-byte property; reserved sizes and accesses that straddle two properties
/// are Invalid Field.
#[test]
fn property_access_sizes_at_every_offset_of_cap_and_its_neighbours() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut get = |attrib: u8, offset: u32| {
        let sqe = Sqe::fabrics(0x04)
            .bytes(40, &[attrib])
            .bytes(44, &offset.to_le_bytes());
        let r = c.admin.cmd(sqe, &[], 0).unwrap();
        (r.status, r.result)
    };
    let (s, cap) = get(1, 0x00);
    assert_eq!(s, 0);
    assert_eq!(get(0, 0x00), (0, cap & 0xFFFF_FFFF), "CAP, lower half");
    assert_eq!(get(0, 0x04), (0, cap >> 32), "CAP, upper half (CSS)");
    assert_eq!(cap >> 37 & 1, 1, "CAP.CSS: NVM command set");
    for off in [0x02, 0x04, 0x08, 0x14, 0x1C] {
        assert_eq!(get(1, off).0, 0x002, "8-byte access at {off:#x}");
    }
    for off in [0x01, 0x02, 0x03, 0x05, 0x06, 0x07] {
        assert_eq!(get(0, off).0, 0x002, "4-byte access at {off:#x}");
    }
    for attrib in 2..=7u8 {
        assert_eq!(get(attrib, 0x08).0, 0x002, "reserved size {attrib}");
        assert_eq!(get(attrib, 0x00).0, 0x002, "reserved size {attrib}");
    }
    assert_eq!(get(0, 0x08).0, 0, "VS");
    assert_eq!(get(0, 0x1C), (0, 1), "CSTS.RDY");
    // Set: only CC, four bytes; a reserved size does not set it.
    let set = |c: &mut Controller, attrib: u8, offset: u32, v: u64| {
        let sqe = Sqe::fabrics(0x00)
            .bytes(40, &[attrib])
            .bytes(44, &offset.to_le_bytes())
            .bytes(48, &v.to_le_bytes());
        c.admin.cmd(sqe, &[], 0).unwrap().status
    };
    assert_eq!(set(&mut c, 2, 0x14, 0), 0x002, "reserved size");
    assert_eq!(set(&mut c, 1, 0x14, 0), 0x002, "8-byte CC");
    assert_eq!(set(&mut c, 0, 0x04, 0), 0x002, "CAP is read-only");
    assert_eq!(c.prop_get(0x1C, false).unwrap() & 1, 1, "still enabled");
}

/// KATO below the Keep Alive granularity (Identify Controller KAS = 1: 100 ms) is rounded up
/// to it (Base 2.0, Keep Alive Timer feature), both from Connect and from Set Features: a host
/// asking for 1 ms gets 100 ms, and is not torn down after a millisecond of silence.
#[test]
fn kato_smaller_than_the_keep_alive_granularity_is_rounded_up() {
    let (d, _) = in_process(RAM);
    // Until the KATO is raised, the association lives 100 ms past the Connect or the last Keep
    // Alive sent.
    retry_if_silent(std::time::Duration::from_millis(100), |alive| {
        kato_rounding(&d, alive)
    });
}

/// [`kato_smaller_than_the_keep_alive_granularity_is_rounded_up`] once, `alive` set when the
/// Connect and each Keep Alive are sent.
fn kato_rounding(d: &twinblk::Daemon, alive: &Alive) {
    let opts = Opts {
        kato_ms: 1,
        ..Opts::default()
    };
    alive.set(Some(std::time::Instant::now()));
    let mut c = Controller::connect(nvmf_addr(d), NQN, &opts).unwrap();
    let keep_alive = |c: &mut Controller| {
        alive.set(Some(std::time::Instant::now()));
        c.keep_alive()
    };
    let id = c.identify(0x01, 0).unwrap();
    assert_eq!(u16::from_le_bytes([id[320], id[321]]), 1, "KAS: 100 ms");
    let get = |c: &mut Controller| {
        let r = c.admin.cmd(Sqe::new(0x0A).cdw(10, 0x0F), &[], 0).unwrap();
        (r.status, r.result as u32)
    };
    assert_eq!(get(&mut c), (0, 100), "Connect KATO 1 ms");
    // Only Keep Alive commands restart the timer (Base 2.0 §3.9): one now, then 30 ms of
    // silence.
    keep_alive(&mut c).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    keep_alive(&mut c).expect("alive after 30 ms of a 100 ms KATO");
    for (set, want) in [(1, 100), (100, 100), (101, 200), (0, 0), (60_000, 60_000)] {
        let r = c
            .admin
            .cmd(Sqe::new(0x09).cdw(10, 0x0F).cdw(11, set), &[], 0)
            .unwrap();
        assert_eq!(r.status, 0);
        assert_eq!(get(&mut c), (0, want), "Set Features KATO {set}");
    }
    // A minute now: silence is no longer a cause.
    alive.set(None);
    // The largest KATO has no multiple of 100 ms within 32 bits: kept as it is (49.7 days).
    c.admin
        .cmd_ok(Sqe::new(0x09).cdw(10, 0x0F).cdw(11, u32::MAX), &[], 0)
        .unwrap();
    assert_eq!(get(&mut c), (0, u32::MAX));
    keep_alive(&mut c).unwrap();
}

/// Connect data whose SUBNQN (bytes 511:256) or HOSTNQN (767:512) fills all 256 bytes has no
/// terminating NUL, so it is no NQN (NVMe over Fabrics, Connect data; NQNs are NUL-terminated,
/// at most 223 bytes): Connect Invalid Parameters with IATTR 1 and IPO at the field, not a
/// controller for a host named by 256 bytes of whatever followed.
#[test]
fn connect_nqns_without_a_terminating_nul_are_invalid_parameters() {
    let (d, _) = in_process(RAM);
    let addr = nvmf_addr(&d);
    let connect = |subnqn: &[u8], hostnqn: &[u8]| {
        let mut data = vec![0u8; 1024];
        data[..16].copy_from_slice(b"twinblk-host-id\0");
        data[16..18].copy_from_slice(&0xFFFFu16.to_le_bytes());
        data[256..256 + subnqn.len()].copy_from_slice(subnqn);
        data[512..512 + hostnqn.len()].copy_from_slice(hostnqn);
        let mut q = Queue::open(addr, Digests::default()).unwrap();
        let sqe = Sqe::fabrics(0x01).bytes(44, &31u16.to_le_bytes());
        let r = q.cmd(sqe, &data, 0).unwrap();
        (r.status, r.result as u32)
    };
    let host = b"nqn.2014-08.org.nvmexpress:uuid:0000-limits";
    let mut long_host = host.to_vec();
    long_host.resize(256, b'x');
    assert_eq!(
        connect(NQN.as_bytes(), &long_host),
        (0x182, (1 << 16) | 512),
        "HOSTNQN without NUL"
    );
    let mut long_sub = NQN.as_bytes().to_vec();
    long_sub.resize(256, b'x');
    assert_eq!(
        connect(&long_sub, host),
        (0x182, (1 << 16) | 256),
        "SUBNQN without NUL"
    );
    // 255 bytes and a NUL is a terminated string (refused by the length rules elsewhere, or
    // not, but never read past its field); a proper pair connects.
    assert_eq!(connect(NQN.as_bytes(), host).0, 0);
}

/// NLB at its largest (FFFFh, 0's based: 65536 blocks, 32 MiB of 512-byte blocks, inside the
/// 64 MiB volume) is far above MDTS (128 KiB): Invalid Field in Command (Base 2.0, MDTS) for a
/// Write as for a Read, before any R2T; and the data is untouched.
#[test]
fn the_largest_nlb_exceeds_mdts_for_writes_as_for_reads() {
    let (d, _) = in_process(RAM);
    let c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut q = c.io_queue(1, 8).unwrap();
    let before = q.read(1, 0, 8, 512).unwrap();
    let len = 65536u32 * 512;
    for op in [0x02u8, 0x01, 0x05] {
        let sqe = Sqe::new(op)
            .nsid(1)
            .cdw(12, 0xFFFF)
            .bytes(32, &len.to_le_bytes())
            .bytes(39, &[0x5A]);
        let cid = 0x77;
        let sqe = sqe.bytes(2, &u16::to_le_bytes(cid));
        q.send_raw(&q.capsule(&sqe.0, &[])).unwrap();
        let p = q.read_pdu().unwrap();
        assert_eq!(p.kind, 0x05, "opcode {op:#x}: a response, not an R2T");
        let st = u16::from_le_bytes([p.header[22], p.header[23]]);
        assert_eq!((st >> 1) & 0x7FF, 0x002, "opcode {op:#x}");
        assert_ne!(st & 0x8000, 0, "DNR");
    }
    // A one-block Write whose SGL claims u32::MAX bytes is within MDTS; its SGL is too long:
    // Data SGL Length Invalid, still before any R2T.
    let sqe = Sqe::new(0x01)
        .nsid(1)
        .cdw(12, 0)
        .bytes(2, &0x78u16.to_le_bytes())
        .bytes(32, &u32::MAX.to_le_bytes())
        .bytes(39, &[0x5A]);
    q.send_raw(&q.capsule(&sqe.0, &[])).unwrap();
    let p = q.read_pdu().unwrap();
    assert_eq!(p.kind, 0x05, "a response, not an R2T");
    let st = u16::from_le_bytes([p.header[22], p.header[23]]);
    assert_eq!((st >> 1) & 0x7FF, 0x00F, "SGL length u32::MAX");
    assert_eq!(q.read(1, 0, 8, 512).unwrap(), before);
}

/// Connect SQSIZE (0's based): 0 is invalid on any queue; CAP.MQES bounds only the I/O
/// submission queues on a fabric (Base 2.0, CAP.MQES), so an admin queue may have up to 4096
/// entries (the Admin Queue's limit, as SPDK's initiator allows) while an I/O queue stops at
/// MQES + 1 = 1024.
#[test]
fn connect_queue_sizes_at_their_limits() {
    let (d, _) = in_process(RAM);
    let addr = nvmf_addr(&d);
    let host = twinblk_tools::nvmf::Host::default();
    let admin = |entries: u32| {
        let mut q = Queue::open(addr, Digests::default()).unwrap();
        let sqsize = (entries.wrapping_sub(1) & 0xFFFF) as u16;
        let sqe = Sqe::fabrics(0x01).bytes(44, &sqsize.to_le_bytes());
        let mut data = vec![0u8; 1024];
        data[..16].copy_from_slice(&host.id);
        data[16..18].copy_from_slice(&0xFFFFu16.to_le_bytes());
        data[256..256 + NQN.len()].copy_from_slice(NQN.as_bytes());
        data[512..512 + host.nqn.len()].copy_from_slice(host.nqn.as_bytes());
        let r = q.cmd(sqe, &data, 0).unwrap();
        (r.status, r.result as u32 & 0x1_FFFF)
    };
    assert_eq!(admin(1), (0x182, 44), "SQSIZE 0");
    assert_eq!(admin(2).0, 0, "two entries");
    assert_eq!(admin(1024).0, 0, "MQES + 1");
    assert_eq!(admin(4096).0, 0, "4096 admin entries");
    assert_eq!(admin(4097), (0x182, 44), "above the admin queue's 4096");
    assert_eq!(admin(65536), (0x182, 44), "SQSIZE FFFFh");
    let c = Controller::connect(addr, NQN, &Opts::default()).unwrap();
    let mut q = Queue::open(addr, Digests::default()).unwrap();
    let r = q.connect(1, 1025, NQN, &host, c.cntlid, 0, true).unwrap();
    assert_eq!(
        (r.status, r.result & 0xFFFF),
        (0x182, 44),
        "I/O queue above MQES"
    );
    c.io_queue(1, 1024)
        .expect("an I/O queue of MQES + 1 entries");
}

/// An H2CData PDU whose data digest does not match (DDGSTF set, digest wrong) is no fatal
/// transport error: its command fails with Transient Transport Error (SCT 0, SC 22h, no DNR),
/// the rest of the transfer is received and dropped, nothing is written, and the queue keeps
/// working (NVMe/TCP transport, data digest).
#[test]
fn an_h2cdata_data_digest_error_fails_the_command_not_the_connection() {
    let (_d, _c, mut q) = with_digests();
    let before = q.read(1, 0, 256, 512).unwrap();
    let cid: u16 = 0x31;
    let total = 128u32 << 10;
    let sqe = Sqe::new(0x01)
        .nsid(1)
        .lba(0, 256)
        .bytes(2, &cid.to_le_bytes())
        .bytes(32, &total.to_le_bytes())
        .bytes(39, &[0x5A]);
    q.send_raw(&q.capsule(&sqe.0, &[])).unwrap();
    let r2t = q.read_pdu().unwrap();
    assert_eq!(r2t.kind, 0x09);
    let ttag = u16::from_le_bytes([r2t.header[10], r2t.header[11]]);
    // Two H2CData PDUs of 64 KiB with both digests; the first one's data digest is wrong.
    // Nothing is answered while the host is still sending the transfer's data.
    let half = 64u32 << 10;
    for (i, off) in [0u32, half].into_iter().enumerate() {
        if i == 1 {
            let s = q.stream();
            s.set_read_timeout(Some(std::time::Duration::from_millis(300)))
                .unwrap();
            let mut b = [0u8; 1];
            assert!(
                s.peek(&mut b).is_err(),
                "an answer came before the rest of the transfer's data"
            );
            s.set_read_timeout(None).unwrap();
        }
        let data = vec![0xA5u8; half as usize];
        let mut b = vec![0x06, 0x01 | 0x02 | if i == 1 { 0x04 } else { 0 }, 24, 28];
        b.extend_from_slice(&(28 + half + 4).to_le_bytes());
        b.extend_from_slice(&cid.to_le_bytes());
        b.extend_from_slice(&ttag.to_le_bytes());
        b.extend_from_slice(&off.to_le_bytes());
        b.extend_from_slice(&half.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        let h = crc32c(&b);
        b.extend_from_slice(&h.to_le_bytes());
        b.extend_from_slice(&data);
        let dd = crc32c(&data) ^ u32::from(i == 0);
        b.extend_from_slice(&dd.to_le_bytes());
        q.send_raw(&b).unwrap();
    }
    let p = q.read_pdu().unwrap();
    assert_eq!(p.kind, 0x05, "a response capsule, not a TermReq: {p:?}");
    let cqe = &p.header[8..24];
    assert_eq!(u16::from_le_bytes([cqe[12], cqe[13]]), cid);
    let st = u16::from_le_bytes([cqe[14], cqe[15]]);
    assert_eq!((st >> 1) & 0x7FF, 0x022, "Transient Transport Error");
    assert_eq!(st & 0x8000, 0, "no DNR");
    // Nothing was written, and the queue (and its next transfer) works.
    assert_eq!(q.read(1, 0, 256, 512).unwrap(), before);
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    q.write(1, 0, &data, 512, false).unwrap();
    assert_eq!(q.read(1, 0, 256, 512).unwrap(), data);
}

/// A daemon, a controller that asked for header and data digests, and its I/O queue 1.
fn with_digests() -> (twinblk::Daemon, Controller, Queue) {
    let (d, _) = in_process(RAM);
    let opts = Opts {
        digests: Digests {
            header: true,
            data: true,
        },
        ..Opts::default()
    };
    let c = Controller::connect(nvmf_addr(&d), NQN, &opts).unwrap();
    let q = c.io_queue(1, 8).unwrap();
    (d, c, q)
}

fn crc32c(b: &[u8]) -> u32 {
    twinblk::checksum::crc32c(b)
}

/// In-capsule data addressed by an offset (SGL Data Block, Offset subtype; Identify
/// Controller SGLS bit 20 says the Address field may be an offset, ICDOFF 0): data at a
/// non-zero offset inside the capsule's data is the command's data; an offset or an
/// offset + length past the capsule's data is SGL Offset Invalid (0x016), not a descriptor
/// type error.
#[test]
fn in_capsule_data_at_an_offset_is_honoured_and_a_bad_offset_is_sgl_offset_invalid() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let id = c.identify(0x01, 0).unwrap();
    assert_ne!(id[536 + 2] & 0x10, 0, "SGLS bit 20: address as offset");
    assert_eq!(u16::from_le_bytes([id[1800], id[1801]]), 0, "ICDOFF");
    let mut q = c.io_queue(1, 8).unwrap();
    let block: Vec<u8> = (0..512u32).map(|i| (i * 7) as u8).collect();
    let send = |q: &mut Queue, off: u64, len: u32, capsule: &[u8]| {
        let sqe = Sqe::new(0x01)
            .nsid(1)
            .lba(40, 1)
            .bytes(2, &0x55u16.to_le_bytes())
            .bytes(24, &off.to_le_bytes())
            .bytes(32, &len.to_le_bytes())
            .bytes(39, &[0x01]);
        q.send_raw(&q.capsule(&sqe.0, capsule)).unwrap();
        let p = q.read_pdu().unwrap();
        assert_eq!(p.kind, 0x05);
        (u16::from_le_bytes([p.header[22], p.header[23]]) >> 1) & 0x7FF
    };
    let mut capsule = vec![0xEEu8; 64];
    capsule.extend_from_slice(&block);
    assert_eq!(send(&mut q, 64, 512, &capsule), 0, "data at offset 64");
    assert_eq!(q.read(1, 40, 1, 512).unwrap(), block);
    assert_eq!(
        send(&mut q, 65, 512, &capsule),
        0x016,
        "offset + length past the data"
    );
    assert_eq!(
        send(&mut q, 4096, 512, &capsule),
        0x016,
        "offset past the data"
    );
    assert_eq!(
        send(&mut q, u64::MAX, 512, &capsule),
        0x016,
        "offset u64::MAX"
    );
    assert_eq!(
        send(&mut q, 32, 512, &capsule),
        0x00F,
        "data left after the described"
    );
    assert_eq!(
        q.read(1, 40, 1, 512).unwrap(),
        block,
        "nothing else written"
    );
}

/// Reservation Report's NUMD (cdw10, 0's based) at its largest asks for 2^32 dwords: above
/// MDTS, so Invalid Field in Command, as for Get Log Page; a NUMD within MDTS is answered.
#[test]
fn reservation_report_with_the_largest_dword_count_is_an_invalid_field() {
    let (d, _) = in_process(RAM);
    let c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut q = c.io_queue(1, 8).unwrap();
    let report = |q: &mut Queue, numd: u32| {
        let sqe = Sqe::new(0x0E).nsid(1).cdw(10, numd).cdw(11, 1);
        let r = q.cmd(sqe, &[], 4096).unwrap();
        (r.status, r.dnr, r.data.len())
    };
    assert_eq!(
        report(&mut q, u32::MAX),
        (0x002, true, 0),
        "NUMD 2^32 dwords"
    );
    assert_eq!(report(&mut q, 128 << 8).0, 0x002, "one dword above 128 KiB");
    assert_eq!(report(&mut q, 1023), (0, false, 4096), "4 KiB");
}

/// A Get Log Page of the ANA log that fails (an LPO that is not dword aligned, or past the
/// log) returns no log, so it must not count as the host having seen the ANA change: the held
/// Async Event Request still reports it.
#[test]
fn a_failed_ana_log_read_does_not_swallow_the_ana_change_event() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    c.admin
        .cmd_ok(Sqe::new(0x09).cdw(10, 0x0B).cdw(11, 1 << 11), &[], 0)
        .unwrap();
    let aer = c.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    let vol0 = d.shared().volumes.get(0).unwrap();
    assert!(
        vol0.path
            .set(twinblk::bdev::volume::PathState::Inaccessible)
    );
    c.admin
        .stream()
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut bad = Vec::new();
    for lpo in [2u32, 1 << 20] {
        let sqe = Sqe::new(0x02).cdw(10, 0x0C | (1023 << 16)).cdw(12, lpo);
        bad.push(c.admin.submit(sqe, &[], 4096).unwrap());
    }
    let ka = c.admin.submit(Sqe::new(0x18), &[], 0).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match c.admin.complete() {
            Ok(x) => seen.push((x.cid, x.status)),
            Err(e) => panic!("only {seen:?} completed (AER {aer}, keep alive {ka}): {e}"),
        }
    }
    for cid in bad {
        assert!(seen.contains(&(cid, 0x002)), "bad LPO: {seen:?}");
    }
    let aer = seen.iter().find(|x| x.0 == aer).copied();
    assert_eq!(
        aer.map(|x| x.1),
        Some(0),
        "the AER reported the change: {seen:?}"
    );
    assert!(seen.contains(&(ka, 0)), "{seen:?}");
}

/// A Write whose in-capsule descriptor (Data Block, Offset subtype) describes 512 bytes while
/// the capsule carries none: the descriptor type is fine, its length is not (0x00F Data SGL
/// Length Invalid), and nothing is written.
#[test]
fn an_in_capsule_descriptor_without_capsule_data_is_a_length_error() {
    let (d, _) = in_process(RAM);
    let c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut q = c.io_queue(1, 8).unwrap();
    let before = q.read(1, 9, 1, 512).unwrap();
    let sqe = Sqe::new(0x01)
        .nsid(1)
        .lba(9, 1)
        .bytes(2, &0x66u16.to_le_bytes())
        .bytes(32, &512u32.to_le_bytes())
        .bytes(39, &[0x01]);
    q.send_raw(&q.capsule(&sqe.0, &[])).unwrap();
    let p = q.read_pdu().unwrap();
    assert_eq!(p.kind, 0x05);
    let st = u16::from_le_bytes([p.header[22], p.header[23]]);
    assert_eq!((st >> 1) & 0x7FF, 0x00F);
    assert_eq!(q.read(1, 9, 1, 512).unwrap(), before);
}

/// SQHD counts the submission queue entries the controller took, the Connect's included (it
/// is the queue's first entry), wrapping at the queue size (SQSIZE + 1): a queue of 4
/// entries reports 1 for the Connect, then 2, 3, 0, 1, 2. (The Connect used to be counted
/// before the queue had its size, so every later SQHD lagged one entry behind.)
#[test]
fn sqhd_counts_the_connect_as_the_queues_first_entry() {
    let (d, _) = in_process(RAM);
    let addr = nvmf_addr(&d);
    let c = Controller::connect(addr, NQN, &Opts::default()).unwrap();
    let host = twinblk_tools::nvmf::Host::default();
    let mut q = Queue::open(addr, Digests::default()).unwrap();
    let r = q.connect(1, 4, NQN, &host, c.cntlid, 0, false).unwrap();
    assert_eq!(r.status, 0);
    let mut heads = vec![r.sqhd];
    for _ in 0..5 {
        heads.push(q.cmd(Sqe::new(0x00).nsid(1), &[], 0).unwrap().sqhd);
    }
    assert_eq!(heads, vec![1, 2, 3, 0, 1, 2]);
}

/// With SQ flow control disabled by Connect (CATTR bit 2) the host does not track the SQ
/// head, and every completion's SQHD is FFFFh, from the Connect response on (NVMe over
/// Fabrics, SQ flow control disable, TP 8005; Linux's target does the same).
#[test]
fn sqhd_is_ffffh_when_sq_flow_control_is_disabled() {
    let (d, _) = in_process(RAM);
    let addr = nvmf_addr(&d);
    let c = Controller::connect(addr, NQN, &Opts::default()).unwrap();
    let host = twinblk_tools::nvmf::Host::default();
    let mut q = Queue::open(addr, Digests::default()).unwrap();
    let r = q.connect(1, 4, NQN, &host, c.cntlid, 0, true).unwrap();
    assert_eq!(r.status, 0);
    let mut heads = vec![r.sqhd];
    for _ in 0..5 {
        heads.push(q.cmd(Sqe::new(0x00).nsid(1), &[], 0).unwrap().sqhd);
    }
    assert_eq!(heads, vec![0xFFFF; 6]);
}

/// Identify Controller's VWC says what a Flush with NSID FFFFFFFFh gets: bits 2:1 = 10b, not
/// supported (Base 2.0, VWC), and such a Flush is answered Invalid Namespace or Format, while
/// the namespace's own Flush succeeds.
#[test]
fn flush_of_every_namespace_is_refused_as_vwc_announces() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    assert_eq!(c.identify(1, 0).unwrap()[525], 0b101, "VWC");
    let mut q = c.io_queue(1, 8).unwrap();
    let r = q.cmd(Sqe::new(0x00).nsid(0xFFFF_FFFF), &[], 0).unwrap();
    assert_eq!(r.status, 0x00B, "Flush of NSID FFFFFFFFh");
    assert_eq!(q.cmd(Sqe::new(0x00).nsid(1), &[], 0).unwrap().status, 0);
}

/// A fused Compare + Write (in-capsule data, digests on) one half of which arrives with a
/// damaged data digest: that half fails with Transient Transport Error and its partner is
/// answered too, Failed Fused Command (Base 2.0, fused operations), never left waiting (the
/// Compare used to stay held until another command came) nor called Missing Fused Command;
/// nothing is written, and a good pair then works.
#[test]
fn a_fused_half_with_a_damaged_data_digest_takes_its_partner_with_it() {
    let (_d, _c, mut q) = with_digests();
    let before = q.read(1, 0, 1, 512).unwrap();
    let new = vec![0x3Cu8; 512];
    let half = |q: &Queue, op: u8, fuse: u8, cid: u16, data: &[u8], bad: bool| {
        let sqe = Sqe::new(op)
            .nsid(1)
            .lba(0, 1)
            .fuse(fuse)
            .bytes(2, &cid.to_le_bytes())
            .bytes(32, &512u32.to_le_bytes())
            .bytes(39, &[0x01]);
        let mut b = q.capsule(&sqe.0, data);
        if bad {
            let n = b.len();
            b[n - 1] ^= 1;
        }
        b
    };
    let answers = |q: &mut Queue, n: usize| {
        let mut v: Vec<(u16, u16)> = (0..n)
            .map(|_| {
                let p = q.read_pdu().unwrap();
                assert_eq!(p.kind, 0x05, "a response: {p:?}");
                let cqe = &p.header[8..24];
                let st = u16::from_le_bytes([cqe[14], cqe[15]]);
                (u16::from_le_bytes([cqe[12], cqe[13]]), (st >> 1) & 0x7FF)
            })
            .collect();
        v.sort();
        v
    };
    for (bad_compare, (a, b)) in [(false, (0x41u16, 0x42u16)), (true, (0x51, 0x52))] {
        let mut wire = half(&q, 0x05, 1, a, &before, bad_compare);
        wire.extend(half(&q, 0x01, 2, b, &new, !bad_compare));
        q.send_raw(&wire).unwrap();
        let (ca, cb) = if bad_compare {
            (0x022, 0x009)
        } else {
            (0x009, 0x022)
        };
        assert_eq!(
            answers(&mut q, 2),
            [(a, ca), (b, cb)],
            "bad digest on the {}",
            if bad_compare { "Compare" } else { "Write" }
        );
    }
    assert_eq!(q.read(1, 0, 1, 512).unwrap(), before, "nothing written");
    assert_eq!(
        q.compare_and_write(1, 0, &before, &new, 512).unwrap(),
        (0, 0)
    );
    assert_eq!(q.read(1, 0, 1, 512).unwrap(), new);
}

/// Identify Controller ACL (byte 258, 0's based) is the most Abort commands the controller
/// executes at once (Base 2.0, Abort command): beyond ACL + 1 outstanding, the excess Aborts
/// complete with Abort Command Limit Exceeded (SCT 1h, SC 03h). An Abort of an I/O queue's
/// command is outstanding until that queue's reactor answers; a burst sent in one write is
/// taken in one go, so the first ACL + 1 are still outstanding when the others are read. Once
/// they are answered, Aborts are accepted again.
#[test]
fn aborts_beyond_the_abort_command_limit_are_refused() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let acl = usize::from(c.identify(0x01, 0).unwrap()[258]);
    let _q = c.io_queue(1, 8).unwrap();
    let n = acl + 1 + 4;
    let mut wire = Vec::new();
    for i in 0..n as u16 {
        // Abort of cid 7000h + i of queue 1 (no such command: "not aborted" when executed).
        let sqe = Sqe::new(0x08)
            .cdw(10, 1 | (u32::from(0x7000 + i) << 16))
            .bytes(2, &(0x100 + i).to_le_bytes());
        wire.extend(c.admin.capsule(&sqe.0, &[]));
    }
    c.admin.send_raw(&wire).unwrap();
    let mut answers: Vec<(u16, u16, u64)> = (0..n)
        .map(|_| {
            let p = c.admin.read_pdu().unwrap();
            assert_eq!(p.kind, 0x05, "a response: {p:?}");
            let cqe = &p.header[8..24];
            let st = u16::from_le_bytes([cqe[14], cqe[15]]);
            let result = u64::from_le_bytes(cqe[0..8].try_into().unwrap());
            (
                u16::from_le_bytes([cqe[12], cqe[13]]),
                (st >> 1) & 0x7FF,
                result,
            )
        })
        .collect();
    answers.sort();
    let executed: Vec<_> = answers.iter().filter(|a| a.1 == 0).collect();
    let refused: Vec<_> = answers.iter().filter(|a| a.1 == 0x103).collect();
    assert_eq!(executed.len(), acl + 1, "ACL + 1 executed: {answers:x?}");
    assert_eq!(
        refused.len(),
        n - (acl + 1),
        "the rest refused: {answers:x?}"
    );
    assert!(
        executed.iter().all(|a| a.2 & 1 == 1),
        "not aborted: {answers:x?}"
    );
    // The outstanding ones were answered: the limit is free again.
    for _ in 0..=acl {
        let a = c.abort(1, 0x7FFF).unwrap();
        assert_eq!((a.status, a.result & 1), (0, 1));
    }
}

/// A Connect for an I/O queue ID already in use on the controller is a Command Sequence Error
/// (SCT 0h, SC 0Ch, DNR: the queue already exists, as Linux's target answers too); one beyond
/// the number of queues Set Features granted is Connect Invalid Parameters (SCT 1h, SC 82h)
/// whose dword 0 names the QID field: IATTR (bits 23:16) 0, in the command, IPO (bits 15:0)
/// 42, its byte offset in the Connect SQE. The queues that exist keep working, and a free
/// granted qid connects.
#[test]
fn connect_on_a_queue_id_in_use_is_a_sequence_error_and_beyond_the_granted_count_names_the_qid_field()
 {
    let (d, _) = in_process(RAM);
    let addr = nvmf_addr(&d);
    let mut c = Controller::connect(addr, NQN, &Opts::default()).unwrap();
    assert_eq!(c.set_num_queues(2).unwrap(), 2);
    let mut q1 = c.io_queue(1, 8).unwrap();
    let host = twinblk_tools::nvmf::Host::default();
    for (qid, what, want) in [
        (1u16, "in use", (0x00C, true, 0)),
        (3, "beyond the 2 granted", (0x182, true, 42)),
        (0xFFFF, "FFFFh", (0x182, true, 42)),
    ] {
        let mut q = Queue::open(addr, Digests::default()).unwrap();
        let r = q.connect(qid, 8, NQN, &host, c.cntlid, 0, true).unwrap();
        assert_eq!((r.status, r.dnr, r.result), want, "qid {what}");
    }
    assert_eq!(q1.cmd(Sqe::new(0x00).nsid(1), &[], 0).unwrap().status, 0);
    c.io_queue(2, 8).expect("qid 2 is free and granted");
}

/// Warnings of the NVMe/TCP front end logged in this process, by every test's daemons (a
/// process-wide subscriber, installed once).
fn nvmf_warnings() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    Arc::clone(LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let w = Arc::clone(&log);
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "twinblk::frontend::nvmf=warn",
            ))
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&w)))
            .finish();
        tracing::subscriber::set_global_default(sub).expect("no other subscriber in this process");
        log
    }))
}

/// Only the first data digest error of a connection is logged (so a host cannot flood the
/// log; all are counted): three damaged capsules on one queue give one warning naming that
/// queue's peer, each command failing with Transient Transport Error; another queue's first
/// error is logged again.
#[test]
fn only_the_first_data_digest_error_of_a_connection_is_logged() {
    let log = nvmf_warnings();
    let (_d, c, mut q) = with_digests();
    let mut q2 = c.io_queue(2, 8).unwrap();
    let lines = |q: &mut Queue| {
        let peer = format!("peer={}", q.stream().local_addr().unwrap());
        let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains("data digest mismatch") && l.contains(&peer))
            .count()
    };
    let damaged = |q: &mut Queue, cid: u16| {
        let sqe = Sqe::new(0x01)
            .nsid(1)
            .lba(0, 1)
            .bytes(2, &cid.to_le_bytes())
            .bytes(32, &512u32.to_le_bytes())
            .bytes(39, &[0x01]);
        let mut b = q.capsule(&sqe.0, &[0x5Au8; 512]);
        let n = b.len();
        b[n - 1] ^= 1;
        q.send_raw(&b).unwrap();
        let p = q.read_pdu().unwrap();
        assert_eq!(p.kind, 0x05, "a response: {p:?}");
        let st = u16::from_le_bytes([p.header[22], p.header[23]]);
        assert_eq!((st >> 1) & 0x7FF, 0x022, "Transient Transport Error");
    };
    for cid in 0x21..0x24 {
        damaged(&mut q, cid);
    }
    assert_eq!(lines(&mut q), 1, "one warning for three errors on a queue");
    damaged(&mut q2, 0x31);
    assert_eq!(lines(&mut q2), 1, "another queue's first error is logged");
    assert_eq!(lines(&mut q), 1);
    q.write(1, 0, &[0x11; 512], 512, false).unwrap();
}

/// Reservation commands name their namespace by NSID like any I/O command: 0, FFFFFFFFh
/// (reservations are per namespace; no broadcast) and an nsid beyond the subsystem's one
/// namespace are Invalid Namespace or Format (SCT 0h, SC 0Bh), with nothing registered; the
/// namespace itself then registers and reports its registrant.
#[test]
fn reservation_commands_for_nsid_zero_broadcast_or_beyond_are_invalid_namespace() {
    let (d, _) = in_process(RAM);
    let c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut q = c.io_queue(1, 8).unwrap();
    for nsid in [0, 0xFFFF_FFFF, 2] {
        assert_eq!(
            q.resv_register(nsid, 0, false, 0, 7).unwrap(),
            0x00B,
            "{nsid:#x}"
        );
        assert_eq!(
            q.resv_report(nsid, true, 4096).unwrap().0,
            0x00B,
            "{nsid:#x}"
        );
        assert_eq!(
            q.resv_acquire(nsid, 0, 1, 7, 0).unwrap(),
            0x00B,
            "{nsid:#x}"
        );
        assert_eq!(q.resv_release(nsid, 0, 1, 7).unwrap(), 0x00B, "{nsid:#x}");
    }
    let (s, data) = q.resv_report(1, true, 4096).unwrap();
    assert_eq!(s, 0);
    let r = twinblk_tools::nvmf::ResvReport::parse(&data).unwrap();
    assert!(r.registrants.is_empty(), "nothing registered");
    assert_eq!(q.resv_register(1, 0, false, 0, 7).unwrap(), 0);
    let r = twinblk_tools::nvmf::ResvReport::parse(&q.resv_report(1, true, 4096).unwrap().1);
    assert_eq!(r.unwrap().registrants.len(), 1);
}

/// Identify, Get Log Page and Reservation Report answer their data whole, and their SGL must
/// describe exactly that length: another is Data SGL Length Invalid (0Fh; NVM Express Base
/// 2.0, "Generic Command Status Values"), as Linux's nvmet answers (its
/// `nvmet_check_transfer_len`) and as this target's I/O commands do. Before, a shorter SGL got
/// part of the data and a success, a longer one its data and a success.
#[test]
fn admin_data_with_an_sgl_of_another_length_is_data_sgl_length_invalid() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let identify = || Sqe::new(0x06).cdw(10, 0x01);
    for len in [512u32, 4092, 8192] {
        let r = c.admin.cmd(identify(), &[], len).unwrap();
        assert_eq!(
            (r.status, r.data.len()),
            (0x00F, 0),
            "Identify Controller with an SGL of {len} bytes"
        );
    }
    let r = c.admin.cmd(identify(), &[], 4096).unwrap();
    assert_eq!((r.status, r.data.len()), (0, 4096));
    // Get Log Page, SMART (02h): NUMD 127 (512 bytes).
    let log = || Sqe::new(0x02).nsid(0xFFFF_FFFF).cdw(10, 0x02 | (127 << 16));
    for len in [256u32, 1024] {
        let r = c.admin.cmd(log(), &[], len).unwrap();
        assert_eq!(
            (r.status, r.data.len()),
            (0x00F, 0),
            "Get Log Page of 512 bytes with an SGL of {len}"
        );
    }
    assert_eq!(c.admin.cmd(log(), &[], 512).unwrap().status, 0);
    // Reservation Report: NUMD 15 (64 bytes).
    let mut q = c.io_queue(1, 8).unwrap();
    for (len, want) in [(32u32, 0x00F), (128, 0x00F), (64, 0)] {
        let sqe = Sqe::new(0x0E).nsid(1).cdw(10, 15).cdw(11, 1);
        assert_eq!(
            q.cmd(sqe, &[], len).unwrap().status,
            want,
            "Reservation Report of 64 bytes with an SGL of {len}"
        );
    }
}

/// Before CC.EN = 1 only Fabrics commands run (Base 2.0 §3.5, controller initialisation):
/// Identify on a connected but not yet enabled admin queue is Command Sequence Error, and
/// works once the controller is enabled. (Before, it was executed.)
#[test]
fn admin_commands_wait_for_the_controller_to_be_enabled() {
    let (d, _) = in_process(RAM);
    let addr = nvmf_addr(&d);
    let opts = Opts::default();
    let mut q = Queue::open(addr, Digests::default()).unwrap();
    let c = q.connect(0, 32, NQN, &opts.host, 0xFFFF, 0, false).unwrap();
    assert_eq!(c.status, 0, "Connect");
    let identify = Sqe::new(0x06).cdw(10, 1);
    let r = q.cmd(identify, &[], 4096).unwrap();
    assert_eq!(r.status, 0x0C, "Identify before CC.EN = 1");
    // Enabled: served.
    let en = Sqe::fabrics(0x00)
        .bytes(40, &[0])
        .bytes(44, &0x14u32.to_le_bytes())
        .bytes(48, &(1u64 | (6 << 16) | (4 << 20)).to_le_bytes());
    assert_eq!(q.cmd(en, &[], 0).unwrap().status, 0, "Property Set CC.EN");
    let t = std::time::Instant::now();
    loop {
        let r = q.cmd(identify, &[], 4096).unwrap();
        if r.status == 0 {
            break;
        }
        assert!(t.elapsed() < crate::harness::PATIENCE, "{:#x}", r.status);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// CC.EN from 1 to 0 resets the controller (Base 2.0 §3.7.2): its I/O queues are deleted (the
/// old queue's connection closes), and once enabled again the same queue id connects anew
/// and serves. (Before, the old I/O queue kept serving and a new Connect of its qid was
/// refused as in use.)
#[test]
fn disabling_the_controller_deletes_its_io_queues() {
    let (d, _) = in_process(RAM);
    let addr = nvmf_addr(&d);
    let mut c = Controller::connect(addr, NQN, &Opts::default()).unwrap();
    let mut q = c.io_queue(1, 16).unwrap();
    let data = vec![0x5Au8; 4096];
    q.write(1, 0, &data, 512, false).unwrap();
    c.prop_set(0x14, (6 << 16) | (4 << 20)).unwrap();
    let t = std::time::Instant::now();
    while c.prop_get(0x1C, false).unwrap() & 1 != 0 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "CSTS.RDY stays 1"
        );
    }
    assert!(
        q.read(1, 0, 8, 512).is_err(),
        "the I/O queue still serves after the controller reset"
    );
    c.prop_set(0x14, 1 | (6 << 16) | (4 << 20)).unwrap();
    while c.prop_get(0x1C, false).unwrap() & 1 == 0 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "CSTS.RDY never 1"
        );
    }
    let mut q = c.io_queue(1, 16).unwrap();
    assert_eq!(q.read(1, 0, 8, 512).unwrap(), data);
}

/// A controller that advertises reservations (ONCS bit 5) supports what Base 2.0 §8.19 asks
/// of it: Reservation Persistence (83h: PTPL 0 here, without a state_dir nothing persists;
/// setting it is refused with Feature Not Changeable), Reservation Notification Mask (82h: kept and reported back; no notification is
/// posted) and the Reservation Notification log page (80h: the empty page). (Before, all
/// three were refused.)
#[test]
fn reservation_features_and_log_page_are_supported() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let get = |c: &mut Controller, fid: u32| {
        let r = c
            .admin
            .cmd(Sqe::new(0x0A).nsid(1).cdw(10, fid), &[], 0)
            .unwrap();
        (r.status, r.result as u32)
    };
    let set = |c: &mut Controller, fid: u32, v: u32| {
        c.admin
            .cmd(Sqe::new(0x09).nsid(1).cdw(10, fid).cdw(11, v), &[], 0)
            .unwrap()
            .status
    };
    assert_eq!(
        get(&mut c, 0x83),
        (0, 0),
        "PTPL: no state_dir, nothing persists"
    );
    assert_eq!(set(&mut c, 0x83, 0), 0);
    assert_eq!(
        set(&mut c, 0x83, 1),
        0x10E,
        "persisting cannot be honoured: Feature Not Changeable"
    );
    assert_eq!(get(&mut c, 0x82), (0, 0));
    assert_eq!(set(&mut c, 0x82, 0x6), 0);
    assert_eq!(get(&mut c, 0x82), (0, 0x6), "the mask as set");
    let log = c.log(0x80, 0, 0, 64).unwrap();
    assert_eq!(log, vec![0; 64], "the empty reservation notification page");
}
