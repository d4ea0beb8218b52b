//! NVMe/TCP end to end, driven by the userspace initiator in `twinblk-tools` (written from the
//! specs apart from the target's codec): discovery, identify, log pages, I/O through every data
//! path (in-capsule, R2T/H2CData, C2HData with and without SUCCESS), queue placement over
//! reactors, verified load, keep-alive expiry, ANA, and malformed input.

use crate::harness::{
    PATIENCE, Server, in_process, in_process_with, nvmf_addr, pattern, rounds_until,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use twinblk::bdev::volume::PathState;
use twinblk_tools::nvmf::perf::{self, PerfOpts, PerfReport, Rw};
use twinblk_tools::nvmf::{self, Controller, Digests, Host, Opts, Queue, Sqe, TermReq, t};

const NQN: &str = "nqn.2026-11.io.twinblk:vol0";

/// Verified load `o` (a fixed run time each) run again until `enough` holds for the runs'
/// sums, at most [`PATIENCE`]: a loaded machine does less I/O in a run's time, so the load is
/// counted, not timed. Every run must end without an error or a mismatch (the sums keep
/// them). The summed report.
fn perf_until(o: &PerfOpts, enough: impl Fn(&PerfReport) -> bool) -> PerfReport {
    let sum = std::cell::RefCell::new(PerfReport::default());
    let round = || {
        let r = perf::run(o).unwrap();
        assert!(r.errors == 0 && r.mismatches == 0, "{r}");
        let mut sum = sum.borrow_mut();
        sum.ios += r.ios;
        sum.reads += r.reads;
        sum.writes += r.writes;
        sum.bytes += r.bytes;
        sum.secs += r.secs;
        sum.verified += r.verified;
        sum.per_queue.resize(r.per_queue.len(), 0);
        for (s, n) in sum.per_queue.iter_mut().zip(&r.per_queue) {
            *s += n;
        }
    };
    rounds_until(round, || enough(&sum.borrow()));
    sum.into_inner()
}
const RAM: &str = "[[volume]]\nname='vol0'\nbackend='malloc'\nsize='64MiB'\n";

fn status(q: &mut Queue, sqe: Sqe, write: &[u8], read_len: u32) -> u16 {
    q.cmd(sqe, write, read_len).expect("a completion").status
}

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

fn expect_term(q: &mut Queue, fes: u16) -> TermReq {
    let p = q.read_pdu().expect("a PDU from the target");
    assert_eq!(p.kind, t::C2H_TERM, "expected C2HTermReq, got {p:?}");
    let got = TermReq {
        fes: u16::from_le_bytes([p.header[8], p.header[9]]),
        fei: u32::from_le_bytes(p.header[10..14].try_into().unwrap()),
    };
    assert_eq!(got.fes, fes, "{got:?}");
    assert!(
        closed_by_target(q.stream()),
        "connection left open after TermReq"
    );
    got
}

fn raw_icreq() -> Vec<u8> {
    let mut ic = vec![0u8; 128];
    ic[2] = 128;
    ic[4..8].copy_from_slice(&128u32.to_le_bytes());
    ic
}

#[test]
fn discovery_identify_logs_and_io_paths() {
    let (d, _) = in_process(RAM);
    let addr = nvmf_addr(&d);
    let opts = Opts::default();

    let entries = nvmf::discover(addr, &opts).unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].subnqn, NQN);
    assert_eq!(entries[0].trtype, 3);
    assert_eq!(entries[0].traddr, addr.ip().to_string());
    assert_eq!(entries[0].trsvcid, addr.port().to_string());

    let mut c = Controller::connect(addr, NQN, &opts).unwrap();
    let id = c.identify(0x01, 0).unwrap();
    assert_eq!(id[111], 1, "CNTRLTYPE: I/O controller");
    assert_eq!(u16::from_le_bytes([id[78], id[79]]), c.cntlid);
    assert_eq!(&id[768..768 + NQN.len()], NQN.as_bytes());
    assert_eq!(
        u32::from_le_bytes(id[516..520].try_into().unwrap()),
        1,
        "NN"
    );
    assert_eq!(id[76] & 0x08, 0x08, "CMIC: ANA reporting");
    assert_eq!(c.active_ns().unwrap(), vec![1]);
    let ns = c.ns_info(1).unwrap();
    assert_eq!(ns.blocks * u64::from(ns.block_size), 64 << 20);
    assert_eq!(ns.anagrpid, 1);
    let desc = c.identify(0x03, 1).unwrap();
    assert_eq!((desc[0], desc[1]), (1, 8), "EUI-64 descriptor first");
    assert_eq!((desc[12], desc[13]), (2, 16), "then the NGUID");
    // Command-set-specific identify (CSI 0): zeroes; another CSI: invalid field.
    assert!(c.identify(0x06, 0).unwrap().iter().all(|&b| b == 0));
    assert!(c.identify(0x05, 1).unwrap().iter().all(|&b| b == 0));
    assert_eq!(
        status(
            &mut c.admin,
            Sqe::new(0x06).cdw(10, 6).cdw(11, 2 << 24),
            &[],
            4096
        ),
        0x002
    );
    // Unknown namespace: Invalid Namespace or Format.
    assert_eq!(
        status(&mut c.admin, Sqe::new(0x06).nsid(9).cdw(10, 0), &[], 4096),
        0x00B
    );
    // Log pages.
    let ana = c.log(0x0C, 0, 0, 4096).unwrap();
    assert_eq!(u16::from_le_bytes([ana[8], ana[9]]), 1, "one ANA group");
    assert_eq!(
        u32::from_le_bytes(ana[16..20].try_into().unwrap()),
        1,
        "group id"
    );
    assert_eq!(
        u32::from_le_bytes(ana[20..24].try_into().unwrap()),
        1,
        "nsids"
    );
    assert_eq!(ana[32], 0x01, "optimised");
    assert_eq!(
        u32::from_le_bytes(ana[48..52].try_into().unwrap()),
        1,
        "nsid 1"
    );
    assert_eq!(c.log(0x02, 0, 0, 512).unwrap()[3], 100, "SMART spare");
    assert_eq!(
        c.log(0x03, 0, 0, 512).unwrap()[0],
        1,
        "active firmware slot"
    );
    assert!(c.log(0x04, 0, 0, 4096).unwrap().iter().all(|&b| b == 0));
    assert_eq!(c.log(0x01, 0, 0, 64).unwrap().len(), 64);
    assert_eq!(
        status(
            &mut c.admin,
            Sqe::new(0x02).cdw(10, 0x70 | (255 << 16)),
            &[],
            1024
        ),
        0x109,
        "discovery log on an I/O controller"
    );
    assert_eq!(c.set_num_queues(4).unwrap(), 4);
    c.keep_alive().unwrap();
    assert_eq!(status(&mut c.admin, Sqe::new(0xEE), &[], 0), 0x001);

    // I/O queue with SQ flow control disabled: reads arrive as C2HData with SUCCESS.
    let mut q = c.io_queue(1, 64).unwrap();
    let small = pattern(1, 4096);
    let big = pattern(2, 128 << 10);
    q.write(1, 8, &small, 512, false).unwrap(); // in-capsule
    q.write(1, 1000, &big, 512, true).unwrap(); // R2T + two H2CData (MAXH2CDATA 64 KiB)
    assert_eq!(q.read(1, 8, 8, 512).unwrap(), small);
    assert_eq!(q.read(1, 1000, 256, 512).unwrap(), big);
    q.submit(Sqe::new(0x02).nsid(1).lba(8, 8), &[], 4096)
        .unwrap();
    let p = q.read_pdu().unwrap();
    assert_eq!(p.kind, t::C2H_DATA);
    assert_eq!(p.flags & 0x0C, 0x0C, "LAST and SUCCESS");
    assert_eq!(p.data, small);
    // Write Zeroes, deallocate, flush.
    assert_eq!(status(&mut q, Sqe::new(0x00).nsid(1), &[], 0), 0);
    assert_eq!(status(&mut q, Sqe::new(0x08).nsid(1).lba(8, 8), &[], 0), 0);
    assert!(q.read(1, 8, 8, 512).unwrap().iter().all(|&b| b == 0));
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&256u32.to_le_bytes());
    range[8..16].copy_from_slice(&1000u64.to_le_bytes());
    let dsm = Sqe::new(0x09).nsid(1).cdw(10, 0).cdw(11, 1 << 2);
    assert_eq!(status(&mut q, dsm, &range, 0), 0);
    assert!(q.read(1, 1000, 256, 512).unwrap().iter().all(|&b| b == 0));
    // Compare: in-capsule and by R2T, matching and not.
    let cmp = |lba: u64, d: &[u8]| Sqe::new(0x05).nsid(1).lba(lba, (d.len() / 512) as u32);
    q.write(1, 3000, &big, 512, false).unwrap();
    assert_eq!(status(&mut q, cmp(3000, &big[..4096]), &big[..4096], 0), 0);
    assert_eq!(status(&mut q, cmp(3000, &big), &big, 0), 0);
    let mut other = big.clone();
    other[100_000] ^= 1;
    assert_eq!(status(&mut q, cmp(3000, &other), &other, 0), 0x285);
    assert_eq!(
        status(&mut q, cmp(3008, &big[..4096]), &big[..4096], 0),
        0x285
    );
    // Out of range, bad namespace, unknown opcode, transfer above MDTS.
    let end = ns.blocks - 4;
    assert_eq!(
        status(&mut q, Sqe::new(0x02).nsid(1).lba(end, 8), &[], 4096),
        0x080
    );
    assert_eq!(
        status(&mut q, Sqe::new(0x02).nsid(2).lba(0, 8), &[], 4096),
        0x00B
    );
    assert_eq!(status(&mut q, Sqe::new(0x7E).nsid(1), &[], 0), 0x001);
    assert_eq!(
        status(&mut q, Sqe::new(0x02).nsid(1).lba(0, 512), &[], 256 << 10),
        0x002
    );
    // Admin commands are not I/O commands.
    assert_eq!(status(&mut q, Sqe::new(0x06).cdw(10, 1), &[], 4096), 0x001);

    // A queue with SQ flow control on gets a response capsule after the data.
    let mut q2 = Queue::open(addr, Digests::default()).unwrap();
    let cc = q2
        .connect(2, 8, NQN, &Host::default(), c.cntlid, 0, false)
        .unwrap();
    assert_eq!(cc.status, 0);
    q2.submit(Sqe::new(0x02).nsid(1).lba(1000, 1), &[], 512)
        .unwrap();
    let p = q2.read_pdu().unwrap();
    assert_eq!((p.kind, p.flags & 0x08), (t::C2H_DATA, 0));
    assert_eq!(q2.read_pdu().unwrap().kind, t::RSP);
    // The same qid twice (a Command Sequence Error), and a qid above the granted count
    // (Connect Invalid Parameters), are refused.
    let mut q3 = Queue::open(addr, Digests::default()).unwrap();
    let r = q3
        .connect(2, 8, NQN, &Host::default(), c.cntlid, 0, true)
        .unwrap();
    assert_eq!(r.status, 0x00C);
    let r = q3
        .connect(5, 8, NQN, &Host::default(), c.cntlid, 0, true)
        .unwrap();
    assert_eq!(r.status, 0x182);
    let r = q3
        .connect(3, 8, NQN, &Host::default(), 0x7777, 0, true)
        .unwrap();
    assert_eq!(r.status, 0x182, "unknown cntlid");
    assert_eq!(d.nvmf().registry.len(), 1);
}

#[test]
fn digests_on_every_queue_round_trip() {
    let (d, _) = in_process(RAM);
    let opts = Opts {
        digests: Digests {
            header: true,
            data: true,
        },
        ..Default::default()
    };
    let c = Controller::connect(nvmf_addr(&d), NQN, &opts).unwrap();
    let mut q = c.io_queue(1, 16).unwrap();
    for (i, len) in [512usize, 8192, 8704, 131072].into_iter().enumerate() {
        let data = pattern(10 + i as u64, len);
        q.write(1, 4096 * i as u64, &data, 512, false).unwrap();
        assert_eq!(
            q.read(1, 4096 * i as u64, (len / 512) as u32, 512).unwrap(),
            data
        );
    }
}

#[test]
fn four_queues_spread_over_reactors_and_verify_at_qd128() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(
        dir.path(),
        "[reactor]\ncores=[0,1]\nwait='adaptive'\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize='256MiB'\n",
    );
    let o = PerfOpts {
        addr: srv.nvmf_addr,
        nqn: NQN.into(),
        opts: Opts::default(),
        nsid: 1,
        queues: 4,
        qd: 128,
        rw: Rw::RandRw,
        bs: 4096,
        duration: Duration::from_millis(1500),
        verify: true,
        region: 64 << 20,
    };
    let enough = |r: &PerfReport| {
        r.writes > 1000 && r.verified > 1000 && r.per_queue.iter().all(|&n| n > 100)
    };
    let r = perf_until(&o, enough);
    assert_eq!(r.errors, 0, "{r}");
    assert_eq!(r.mismatches, 0, "{r}");
    assert!(r.writes > 1000 && r.verified > 1000, "{r}");
    assert!(r.per_queue.iter().all(|&n| n > 100), "{r}");
    // Admin queue + 4 I/O queues dealt round-robin over two reactors: each reactor serves I/O
    // queues and did I/O of its own.
    let sub = srv.rpc("nvmf_subsystems");
    assert_eq!(sub["subsystems"][0]["nqn"], NQN, "{sub}");
    assert_eq!(
        sub["subsystems"][0]["namespaces"][0]["volume"], "vol0",
        "{sub}"
    );
    assert_eq!(
        sub["subsystems"][0]["namespaces"][0]["ana_state"], 1,
        "{sub}"
    );
    assert_eq!(sub["listen"][0], srv.nvmf_addr.to_string(), "{sub}");
    // perf disconnected: its controller goes once the admin queue's close is processed.
    let t0 = Instant::now();
    while srv.rpc("nvmf_subsystems")["controllers"] != 0 {
        assert!(t0.elapsed() < PATIENCE, "controller left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = srv.rpc("reactor_stats");
    let stats = stats.as_array().unwrap();
    assert_eq!(stats.len(), 2);
    for s in stats {
        assert!(s["conns_opened"].as_u64().unwrap() >= 2, "{s}");
        assert!(s["ios"].as_u64().unwrap() > 1000, "{s}");
    }
}

#[test]
fn keep_alive_expiry_tears_down_a_silent_host() {
    let (d, _) = in_process_with("cores=[0,1]\nwait='adaptive'", RAM);
    let addr = nvmf_addr(&d);
    let silent_opts = Opts {
        kato_ms: 400,
        host: Host {
            nqn: "nqn.2014-08.test:silent".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    // Generous for the live host, so a loaded machine cannot expire it by accident.
    let live_opts = Opts {
        kato_ms: 10_000,
        ..Default::default()
    };
    let mut silent = Controller::connect(addr, NQN, &silent_opts).unwrap();
    let mut silent_q = silent.io_queue(1, 8).unwrap();
    let mut live = Controller::connect(addr, NQN, &live_opts).unwrap();
    let mut live_q = live.io_queue(1, 8).unwrap();
    assert_eq!(d.nvmf().registry.len(), 2);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        live.keep_alive().unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    // The silent host's admin and I/O queues are both gone; the live one still works.
    assert!(closed_by_target(silent.admin.stream()));
    assert!(closed_by_target(silent_q.stream()));
    let data = pattern(3, 4096);
    live_q.write(1, 0, &data, 512, false).unwrap();
    assert_eq!(live_q.read(1, 0, 8, 512).unwrap(), data);
    live.keep_alive().unwrap();
    assert_eq!(d.nvmf().registry.len(), 1);
    // The torn-down controller's id no longer takes I/O queues.
    let mut q = Queue::open(addr, Digests::default()).unwrap();
    let r = q
        .connect(2, 8, NQN, &silent_opts.host, silent.cntlid, 0, true)
        .unwrap();
    assert_eq!(r.status, 0x182);
}

#[test]
fn ana_state_changes_reach_io_log_and_async_events() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut q = c.io_queue(1, 8).unwrap();
    // Enable ANA change notices, hold an AER.
    assert_eq!(
        status(
            &mut c.admin,
            Sqe::new(0x09).cdw(10, 0x0B).cdw(11, 1 << 11),
            &[],
            0
        ),
        0
    );
    let aer = c.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    // The volume's published path state is its ANA group's state (group 1: volume 0).
    let vol0 = d.shared().volumes.get(0).unwrap();
    let path = &vol0.path;
    assert!(path.set(PathState::Inaccessible));
    assert_eq!(
        status(&mut q, Sqe::new(0x02).nsid(1).lba(0, 1), &[], 512),
        0x302
    );
    // The next admin command lets the admin queue deliver the event.
    let ka = c.admin.submit(Sqe::new(0x18), &[], 0).unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(c.admin.complete().unwrap());
    }
    let ev = seen.iter().find(|x| x.cid == aer).expect("AER completed");
    assert_eq!(
        ev.result & 0xFF_FFFF,
        0x0C_03_02,
        "notice, ANA change, log 0x0C"
    );
    assert!(seen.iter().any(|x| x.cid == ka && x.status == 0));
    let ana = c.log(0x0C, 0, 0, 4096).unwrap();
    assert_eq!(ana[32], 0x03, "inaccessible");
    path.set(PathState::Transitioning);
    let c = q.cmd(Sqe::new(0x02).nsid(1).lba(0, 1), &[], 512).unwrap();
    assert_eq!((c.status, c.dnr), (0x303, false), "transition: retryable");
    path.set(PathState::Inaccessible);
    assert_eq!(
        status(&mut q, Sqe::new(0x01).nsid(1).lba(0, 1), &[0; 512], 0),
        0x302,
        "a write to an inaccessible group: a path error, not a media error"
    );
    path.set(PathState::NonOptimized);
    assert_eq!(
        status(&mut q, Sqe::new(0x02).nsid(1).lba(0, 1), &[], 512),
        0
    );
    path.set(PathState::Optimized);
    assert_eq!(
        status(&mut q, Sqe::new(0x02).nsid(1).lba(0, 1), &[], 512),
        0
    );
}

#[test]
fn allowed_hosts_are_enforced_and_filter_discovery() {
    let (d, _) = in_process(
        "[[nvmf.subsystem]]\nnqn='nqn.2026-11.test:locked'\nallowed_hosts=['nqn.2014-08.test:good']\nnamespaces=['vol0']\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize='16MiB'\n",
    );
    let addr = nvmf_addr(&d);
    let bad = Opts::default();
    let good = Opts {
        host: Host {
            nqn: "nqn.2014-08.test:good".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut q = Queue::open(addr, Digests::default()).unwrap();
    let r = q
        .connect(
            0,
            32,
            "nqn.2026-11.test:locked",
            &bad.host,
            0xFFFF,
            0,
            false,
        )
        .unwrap();
    assert_eq!(r.status, 0x184, "invalid host");
    let r = q
        .connect(0, 32, "nqn.2026-11.test:nope", &bad.host, 0xFFFF, 0, false)
        .unwrap();
    assert_eq!(r.status, 0x182, "unknown subsystem");
    assert!(nvmf::discover(addr, &bad).unwrap().is_empty());
    assert_eq!(nvmf::discover(addr, &good).unwrap().len(), 1);
    Controller::connect(addr, "nqn.2026-11.test:locked", &good).unwrap();
}

#[test]
fn malformed_pdus_get_termreq_or_status_and_others_keep_working() {
    let (d, _) = in_process(RAM);
    let addr = nvmf_addr(&d);
    let dg0 = Digests::default();
    let host = Host::default();

    // A healthy controller and I/O queue that must survive everything below.
    let c = Controller::connect(addr, NQN, &Opts::default()).unwrap();
    let mut good = c.io_queue(1, 8).unwrap();

    // 1. Bad PDU type as the very first PDU.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0x05, 0, 24, 0, 24, 0, 0, 0]).unwrap();
    let mut q = raw_queue(s);
    let tr = expect_term(&mut q, 0x01);
    assert_eq!(tr.fei, 0);

    // 2. A command capsule before ICReq: PDU sequence error.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut cap = vec![t::CMD, 0, 72, 0];
    cap.extend_from_slice(&72u32.to_le_bytes());
    cap.resize(72, 0);
    s.write_all(&cap).unwrap();
    expect_term(&mut raw_queue(s), 0x02);

    // 3. ICReq with a lying length.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut ic = raw_icreq();
    ic[4..8].copy_from_slice(&4000u32.to_le_bytes());
    s.write_all(&ic).unwrap();
    assert_eq!(expect_term(&mut raw_queue(s), 0x01).fei, 4);

    // 4. plen smaller than hlen, and plen far beyond any limit, after a good ICReq.
    for plen in [16u32, 1 << 30] {
        let mut q = Queue::open(addr, dg0).unwrap();
        let mut b = vec![t::CMD, 0, 72, 0];
        b.extend_from_slice(&plen.to_le_bytes());
        b.resize(72, 0);
        q.send_raw(&b).unwrap();
        assert_eq!(expect_term(&mut q, 0x01).fei, 4);
    }

    // 5. Bad header digest.
    let mut q = Queue::open(
        addr,
        Digests {
            header: true,
            data: false,
        },
    )
    .unwrap();
    let mut b = q.capsule(&Sqe::new(0x18).0, &[]);
    b[10] ^= 0xFF;
    q.send_raw(&b).unwrap();
    expect_term(&mut q, 0x03);

    // 6. Bad data digest: the command fails with Transient Transport Error (retryable), the
    // connection stays (NVMe/TCP: a data digest error is no fatal transport error).
    let mut q = Queue::open(
        addr,
        Digests {
            header: false,
            data: true,
        },
    )
    .unwrap();
    let mut b = q.capsule(
        &Sqe::fabrics(0x01).bytes(44, &7u16.to_le_bytes()).0,
        &[0u8; 1024],
    );
    let n = b.len();
    b[n - 1] ^= 0xFF;
    q.send_raw(&b).unwrap();
    let p = q.read_pdu().unwrap();
    assert_eq!(p.kind, t::RSP, "{p:?}");
    let st = u16::from_le_bytes([p.header[22], p.header[23]]);
    assert_eq!((st >> 1) & 0x7FF, 0x022, "Transient Transport Error");
    assert_eq!(st & 0x8000, 0, "no DNR: worth retrying");
    let r = q.connect(0, 32, NQN, &host, 0xFFFF, 0, false).unwrap();
    assert_eq!(r.status, 0, "the connection is still usable");

    // 7. I/O before Connect: an NVMe status, and the connection stays usable.
    let mut q = Queue::open(addr, dg0).unwrap();
    assert_eq!(
        status(&mut q, Sqe::new(0x02).nsid(1).lba(0, 1), &[], 512),
        0x00C
    );
    assert_eq!(
        status(&mut q, Sqe::fabrics(0x04), &[], 0),
        0x00C,
        "property before connect"
    );
    let r = q.connect(0, 32, NQN, &host, 0xFFFF, 0, false).unwrap();
    assert_eq!(r.status, 0);
    // Connect twice on one queue.
    let r = q.connect(0, 32, NQN, &host, 0xFFFF, 0, false).unwrap();
    assert_eq!(r.status, 0x00C);

    // 8. qid out of range and a queue size of zero or above MQES.
    let mut q = Queue::open(addr, dg0).unwrap();
    let r = q.connect(65, 8, NQN, &host, c.cntlid, 0, true).unwrap();
    assert_eq!((r.status, r.result & 0xFFFF), (0x182, 42));
    let r = q.connect(2, 2000, NQN, &host, c.cntlid, 0, true).unwrap();
    assert_eq!((r.status, r.result & 0xFFFF), (0x182, 44));

    // 9. H2CData beyond the R2T, with an unknown tag, and at the wrong offset.
    for case in 0..3 {
        let mut q = c.io_queue(2 + case, 8).unwrap();
        let cid: u16 = 0x42;
        let sqe = Sqe::new(0x01)
            .nsid(1)
            .lba(0, 64)
            .bytes(2, &cid.to_le_bytes())
            .bytes(32, &32768u32.to_le_bytes())
            .bytes(39, &[0x5A]);
        q.send_raw(&q.capsule(&sqe.0, &[])).unwrap();
        let r2t = q.read_pdu().unwrap();
        assert_eq!(r2t.kind, t::R2T);
        let ttag = u16::from_le_bytes([r2t.header[10], r2t.header[11]]);
        assert_eq!(
            u32::from_le_bytes(r2t.header[16..20].try_into().unwrap()),
            32768
        );
        let (tag, off, len) = match case {
            0 => (ttag, 0u32, 36864u32),
            1 => (ttag ^ 0x100, 0, 4096),
            _ => (ttag, 4096, 4096),
        };
        let mut b = vec![t::H2C_DATA, 0x04, 24, 24];
        b.extend_from_slice(&(24 + len).to_le_bytes());
        b.extend_from_slice(&cid.to_le_bytes());
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&off.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.resize(24 + len as usize, 0xAB);
        q.send_raw(&b).unwrap();
        // Beyond the R2T: data transfer out of range; unknown tag: invalid header field at
        // TTAG; not where the data must continue (a non-contiguous PDU): PDU sequence error
        // (NVMe/TCP 1.0 §3.3.2.2).
        let tr = expect_term(&mut q, [0x04, 0x01, 0x02][case as usize]);
        match case {
            1 => assert_eq!(tr.fei, 10),
            2 => assert_eq!(tr.fei, 0),
            _ => {}
        }
    }

    // 10. Garbage.
    let mut q = Queue::open(addr, dg0).unwrap();
    q.send_raw(&pattern(99, 4096)).unwrap();
    assert!(q.read_pdu().map(|p| p.kind == t::C2H_TERM).unwrap_or(true));
    assert!(closed_by_target(q.stream()));

    // 11. An H2CTermReq from the host closes its connection.
    let mut q = Queue::open(addr, dg0).unwrap();
    let mut b = vec![t::H2C_TERM, 0, 24, 0, 24, 0, 0, 0, 1, 0];
    b.resize(24, 0);
    q.send_raw(&b).unwrap();
    assert!(closed_by_target(q.stream()));

    // None of it touched the healthy queue or the data.
    let data = pattern(5, 8192);
    good.write(1, 64, &data, 512, false).unwrap();
    assert_eq!(good.read(1, 64, 16, 512).unwrap(), data);
    let v: u64 = d
        .shared()
        .stats
        .iter()
        .map(|s| s.snapshot().violations)
        .sum();
    assert!(v >= 10, "violations counted: {v}");
    // Discovery still answers.
    assert_eq!(nvmf::discover(addr, &Opts::default()).unwrap().len(), 1);
}

#[test]
fn file_volume_completions_arrive_later_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let vol = format!(
        "[[volume]]\nname='vol0'\nbackend='uring'\nsize='32MiB'\nblock_size=4096\npath='{}'\n",
        dir.path().join("disk.img").display()
    );
    let (d, _) = in_process_with("cores=[0,1]\nwait='adaptive'", &vol);
    let addr = nvmf_addr(&d);
    let mut c = Controller::connect(addr, NQN, &Opts::default()).unwrap();
    assert_eq!(c.ns_info(1).unwrap().block_size, 4096);
    let mut q = c.io_queue(1, 32).unwrap();
    let big = pattern(21, 64 << 10);
    q.write(1, 10, &big, 4096, true).unwrap();
    assert_eq!(q.read(1, 10, 16, 4096).unwrap(), big);
    let cmp = |d: &[u8]| Sqe::new(0x05).nsid(1).lba(10, (d.len() / 4096) as u32);
    assert_eq!(status(&mut q, cmp(&big), &big, 0), 0);
    let mut other = big.clone();
    other[5] ^= 1;
    assert_eq!(status(&mut q, cmp(&other), &other, 0), 0x285);
    let mut ranges = vec![0u8; 32];
    ranges[4..8].copy_from_slice(&4u32.to_le_bytes());
    ranges[8..16].copy_from_slice(&10u64.to_le_bytes());
    ranges[20..24].copy_from_slice(&4u32.to_le_bytes());
    ranges[24..32].copy_from_slice(&20u64.to_le_bytes());
    let dsm = Sqe::new(0x09).nsid(1).cdw(10, 1).cdw(11, 1 << 2);
    assert_eq!(status(&mut q, dsm, &ranges, 0), 0);
    let back = q.read(1, 10, 16, 4096).unwrap();
    assert!(back[..16384].iter().all(|&b| b == 0));
    assert_eq!(back[16384..40960], big[16384..40960]);
    assert!(back[40960..57344].iter().all(|&b| b == 0));
    assert_eq!(status(&mut q, Sqe::new(0x08).nsid(1).lba(0, 64), &[], 0), 0);
    assert_eq!(status(&mut q, Sqe::new(0x00).nsid(1), &[], 0), 0);
    drop(q);
    drop(c);
    let o = PerfOpts {
        addr,
        nqn: NQN.into(),
        opts: Opts::default(),
        nsid: 1,
        queues: 2,
        qd: 32,
        rw: Rw::RandRw,
        bs: 8192,
        duration: Duration::from_millis(700),
        verify: true,
        region: 16 << 20,
    };
    let r = perf_until(&o, |r| r.verified > 100);
    assert!(
        r.errors == 0 && r.mismatches == 0 && r.verified > 100,
        "{r}"
    );
}

#[test]
fn outstanding_r2ts_are_bounded_and_later_commands_wait_their_turn() {
    let (d, _) = in_process(RAM);
    let c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut q = c.io_queue(1, 128).unwrap();
    let len = 32768u32;
    for cid in 0..40u16 {
        let sqe = Sqe::new(0x01)
            .nsid(1)
            .lba(u64::from(cid) * 64, 64)
            .bytes(2, &cid.to_le_bytes())
            .bytes(32, &len.to_le_bytes())
            .bytes(39, &[0x5A]);
        q.send_raw(&q.capsule(&sqe.0, &[])).unwrap();
    }
    let mut r2ts = Vec::new();
    for _ in 0..32 {
        let p = q.read_pdu().unwrap();
        assert_eq!(p.kind, t::R2T);
        r2ts.push((
            u16::from_le_bytes([p.header[8], p.header[9]]),
            u16::from_le_bytes([p.header[10], p.header[11]]),
        ));
    }
    q.stream()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(q.read_pdu().is_err(), "a 33rd R2T was sent");
    q.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Answer every R2T as it comes: each finished transfer lets one waiting command in.
    let mut done = 0;
    let mut next = r2ts.into_iter().collect::<std::collections::VecDeque<_>>();
    while done < 40 {
        if let Some((cid, ttag)) = next.pop_front() {
            let mut b = vec![t::H2C_DATA, 0x04, 24, 24];
            b.extend_from_slice(&(24 + len).to_le_bytes());
            b.extend_from_slice(&cid.to_le_bytes());
            b.extend_from_slice(&ttag.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend(pattern(u64::from(cid), len as usize));
            q.send_raw(&b).unwrap();
        }
        let p = q.read_pdu().unwrap();
        match p.kind {
            t::RSP => {
                assert_eq!(u16::from_le_bytes([p.header[22], p.header[23]]) >> 1, 0);
                done += 1;
            }
            t::R2T => next.push_back((
                u16::from_le_bytes([p.header[8], p.header[9]]),
                u16::from_le_bytes([p.header[10], p.header[11]]),
            )),
            k => panic!("unexpected PDU {k}"),
        }
    }
    for cid in [0u16, 39] {
        let back = q.read(1, u64::from(cid) * 64, 64, 512).unwrap();
        assert_eq!(back, pattern(u64::from(cid), len as usize));
    }
}

#[test]
fn deep_queue_of_large_writes_keeps_flowing() {
    let (d, _) = in_process(RAM);
    let o = PerfOpts {
        addr: nvmf_addr(&d),
        nqn: NQN.into(),
        opts: Opts::default(),
        nsid: 1,
        queues: 1,
        qd: 1023,
        rw: Rw::RandRw,
        bs: 32768,
        duration: Duration::from_millis(800),
        verify: true,
        region: 48 << 20,
    };
    let r = perf_until(&o, |r| r.writes > 300 && r.verified > 100);
    assert!(r.errors == 0 && r.mismatches == 0, "{r}");
    assert!(r.writes > 300 && r.verified > 100, "{r}");
}

#[test]
fn stop_with_io_in_flight_answers_or_closes_and_returns() {
    let (mut d, _) = in_process_with("cores=[0,1]\nwait='adaptive'", RAM);
    let c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut q = c.io_queue(1, 128).unwrap();
    let data = pattern(8, 4096);
    for i in 0..64u64 {
        q.submit(Sqe::new(0x01).nsid(1).lba(i * 8, 8), &data, 0)
            .unwrap();
    }
    let t0 = Instant::now();
    d.stop();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t0.elapsed()
    );
    // Every write got a completion (success or retryable "not ready") before the close, or the
    // connection closed; nothing hangs.
    let mut got = 0;
    while let Ok(c) = q.complete() {
        assert!(c.status == 0 || c.status == 0x082, "status {:#x}", c.status);
        got += 1;
    }
    assert!(got <= 64);
    assert!(closed_by_target(q.stream()));
}

/// A [`Queue`] over a stream that has not done ICReq (for tests of what comes before it).
fn raw_queue(s: TcpStream) -> Queue {
    Queue::from_stream(s)
}

/// One site of a mirror, in this process: `[mirror]` only (no mirrored volume, so no link),
/// which is what the site's NVMe-oF identity derives from.
fn mirror_site(me: &str, peer: &str) -> twinblk::Daemon {
    // The sites' shared key (the replication links are authenticated; no link is made here).
    let key = std::env::temp_dir().join(format!("twinblk-nvmf-site-{}.key", std::process::id()));
    std::fs::write(&key, [7u8; 32]).expect("key file");
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=[]\n[nvmf]\nlisten=['127.0.0.1:0']\n\
         [control]\nsocket=''\n[mirror]\nsite='{me}'\npeer_site='{peer}'\n\
         listen=['127.0.0.1:0']\npeer='127.0.0.1:9'\nwitness_key_file='{}'\n{RAM}",
        key.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("site config");
    twinblk::Daemon::start(&cfg).expect("site starts")
}

/// What a multipath host (Linux) compares between two paths to one subsystem: the controller
/// ids must differ (it rejects a duplicate cntlid), the subsystem's and namespace's identity
/// must be the same, and the discovery logs of the two sites name two different ports.
#[test]
fn both_sites_present_one_subsystem_with_distinct_controller_ids_and_ports() {
    let (a, b) = (mirror_site("a", "b"), mirror_site("b", "a"));
    let (aa, ba) = (nvmf_addr(&a), nvmf_addr(&b));
    let opts = Opts::default();
    let mut ca = Controller::connect(aa, NQN, &opts).unwrap();
    let mut cb = Controller::connect(ba, NQN, &opts).unwrap();
    assert_ne!(ca.cntlid, cb.cntlid, "both sites hand out the same cntlid");
    assert!(
        (1..=0x7FF7).contains(&ca.cntlid),
        "site a: {:#x}",
        ca.cntlid
    );
    assert!(
        (0x7FF8..=0xFFEF).contains(&cb.cntlid),
        "site b: {:#x}",
        cb.cntlid
    );
    let (ia, ib) = (ca.identify(0x01, 0).unwrap(), cb.identify(0x01, 0).unwrap());
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    assert_eq!(u16_at(&ia, 78), ca.cntlid);
    assert_eq!(u16_at(&ib, 78), cb.cntlid);
    // Everything but CNTLID is the same at both sites: SN, MN, FR, CMIC, CTRATT, ANATT,
    // ANACAP, ANAGRPMAX, NANAGRPID, SUBNQN...
    let mut ia0 = ia.clone();
    ia0[78..80].copy_from_slice(&ib[78..80]);
    assert!(ia0 == ib, "Identify Controller differs beyond CNTLID");
    assert_eq!(
        ia[76] & 0x0B,
        0x0B,
        "CMIC: multi-port, multi-controller, ANA"
    );
    assert_eq!(ia[96] & 1, 1, "CTRATT: 128-bit host identifier");
    // The namespace's identifiers too.
    for cns in [0x00, 0x03] {
        let (na, nb) = (ca.identify(cns, 1).unwrap(), cb.identify(cns, 1).unwrap());
        assert!(na == nb, "Identify CNS {cns:#x} differs between the sites");
    }
    let desc = ca.identify(0x03, 1).unwrap();
    let nidts: Vec<u8> = [0, 12, 32, 52].iter().map(|&at| desc[at]).collect();
    assert_eq!(
        nidts,
        vec![1, 2, 3, 4],
        "EUI-64, NGUID, UUID, CSI descriptors"
    );
    // Discovery: distinct port ids.
    let (da, db) = (
        nvmf::discover(aa, &opts).unwrap(),
        nvmf::discover(ba, &opts).unwrap(),
    );
    assert_eq!((da.len(), db.len()), (1, 1));
    assert_ne!(
        da[0].portid, db[0].portid,
        "both sites call their port {}",
        da[0].portid
    );
}

/// Get Features for the features every controller must support (arbitration, power
/// management, temperature threshold, error recovery) is answered, not refused.
#[test]
fn get_features_answers_arbitration_power_temperature_and_error_recovery() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let mut get = |fid: u32, cdw11: u32| {
        // Error recovery is namespace specific: it names namespace 1.
        let nsid = u32::from(fid == 0x05);
        let r = c
            .admin
            .cmd(
                Sqe::new(0x0A).nsid(nsid).cdw(10, fid).cdw(11, cdw11),
                &[],
                0,
            )
            .unwrap();
        (r.status, r.result as u32)
    };
    assert_eq!(get(0x01, 0), (0, 0x7), "arbitration: no burst limit");
    assert_eq!(get(0x02, 0), (0, 0), "power management: state 0");
    assert_eq!(
        get(0x04, 0),
        (0, 0x157),
        "composite over-temperature = WCTEMP"
    );
    assert_eq!(get(0x04, 1 << 20), (0, 0), "composite under-temperature");
    assert_eq!(get(0x04, 3 << 20).0, 0x002, "reserved THSEL");
    assert_eq!(get(0x05, 0), (0, 0), "error recovery");
}

/// An ANA change event is not reported again until the host reads the ANA log page with RAE
/// clear (Base 2.0, Asynchronous Event Request): a second change before that read completes no
/// held AER; after it, the next change does. (Before, every change completed another AER.)
#[test]
fn ana_change_events_are_masked_until_the_log_page_is_read() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    assert_eq!(
        status(
            &mut c.admin,
            Sqe::new(0x09).cdw(10, 0x0B).cdw(11, 1 << 11),
            &[],
            0
        ),
        0
    );
    let path = &d.shared().volumes.get(0).unwrap().path;
    let aer1 = c.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    let aer2 = c.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    // A change, then a keep alive for the admin queue to run: the first AER completes.
    assert!(path.set(PathState::Inaccessible));
    let ka = c.admin.submit(Sqe::new(0x18), &[], 0).unwrap();
    let mut seen: Vec<u16> = (0..2).map(|_| c.admin.complete().unwrap().cid).collect();
    seen.sort_unstable();
    let mut want = vec![aer1, ka];
    want.sort_unstable();
    assert_eq!(seen, want);
    // Another change before the log is read: masked, the keep alive alone answers.
    assert!(path.set(PathState::NonOptimized));
    let ka = c.admin.submit(Sqe::new(0x18), &[], 0).unwrap();
    assert_eq!(
        c.admin.complete().unwrap().cid,
        ka,
        "a masked event was reported"
    );
    // The log read (RAE clear) unmasks (and reports the state now): the next change is
    // reported.
    c.log(0x0C, 0, 0, 4096).unwrap();
    assert!(path.set(PathState::Optimized));
    let ka = c.admin.submit(Sqe::new(0x18), &[], 0).unwrap();
    let mut seen: Vec<u16> = (0..2).map(|_| c.admin.complete().unwrap().cid).collect();
    seen.sort_unstable();
    let mut want = vec![aer2, ka];
    want.sort_unstable();
    assert_eq!(seen, want, "the event after the log read");
}
