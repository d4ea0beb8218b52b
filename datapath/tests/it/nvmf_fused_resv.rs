//! NVMe/TCP fused Compare and Write, reservations and Abort, end to end through the userspace
//! initiator: atomicity of compare-and-write under two hosts racing on one block from
//! different reactors, reservation types blocking other hosts (and surviving a daemon
//! restart), and Abort of a command still waiting for its data.

use crate::harness::{Server, in_process_with, nvmf_addr, pattern};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use twinblk_tools::nvmf::{Controller, Host, Opts, ResvReport, Sqe, racqa, rrega, sc, t};

const NQN: &str = "nqn.2026-11.io.twinblk:vol0";
const RAM: &str = "[[volume]]\nname='vol0'\nbackend='malloc'\nsize='16MiB'\n";

pub fn host(n: u8) -> Opts {
    Opts {
        host: Host {
            nqn: format!("nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000000{n}"),
            id: [n; 16],
        },
        ..Opts::default()
    }
}

/// A block that says (counter, writer) in every byte, so a torn block cannot decode.
pub fn encode(counter: u64, writer: u8, bs: usize) -> Vec<u8> {
    let mut b = vec![0u8; bs];
    b[..8].copy_from_slice(&counter.to_le_bytes());
    b[8] = writer;
    for (i, x) in b.iter_mut().enumerate().skip(9) {
        *x = (counter as u8) ^ writer ^ (i as u8);
    }
    b
}

pub fn decode(b: &[u8]) -> Option<(u64, u8)> {
    let counter = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let writer = *b.get(8)?;
    (encode(counter, writer, b.len()) == b).then_some((counter, writer))
}

#[test]
fn nvmf_fused_compare_and_write_is_atomic_under_two_racing_hosts() {
    let (d, _) = in_process_with("cores=[0,1]\nwait='adaptive'", RAM);
    let addr = nvmf_addr(&d);
    let mut c0 = Controller::connect(addr, NQN, &host(1)).unwrap();
    let bs = c0.ns_info(1).unwrap().block_size as usize;
    let mut q0 = c0.io_queue(1, 32).unwrap();
    q0.write(1, 0, &encode(0, 0, bs), bs as u32, false).unwrap();

    // Statuses: a miscompare fails the compare (SCT 2h, SC 85h) and aborts the write
    // ("failed fused command"), leaving the block alone; a lone second half is "missing".
    let (a, b) = q0
        .compare_and_write(1, 0, &encode(7, 7, bs), &encode(8, 8, bs), bs as u32)
        .unwrap();
    assert_eq!((a, b), (sc::COMPARE_FAILURE, sc::FUSED_FAILED));
    assert_eq!(decode(&q0.read(1, 0, 1, bs as u32).unwrap()), Some((0, 0)));
    let lone = Sqe::new(0x01).nsid(1).lba(0, 1).fuse(2);
    assert_eq!(
        q0.cmd(lone, &encode(9, 9, bs), 0).unwrap().status,
        sc::FUSED_MISSING
    );
    // A first half followed by an unfused command is answered "missing fused" too.
    let first = Sqe::new(0x05).nsid(1).lba(0, 1).fuse(1);
    let cid = q0.submit(first, &encode(0, 0, bs), 0).unwrap();
    let flush = q0.submit(Sqe::new(0x00).nsid(1), &[], 0).unwrap();
    let mut got: Vec<(u16, u16)> = (0..2)
        .map(|_| q0.complete().unwrap())
        .map(|c| (c.cid, c.status))
        .collect();
    got.sort_unstable();
    let mut want = vec![(cid, sc::FUSED_MISSING), (flush, 0)];
    want.sort_unstable();
    assert_eq!(got, want);
    let (a, b) = q0
        .compare_and_write(1, 0, &encode(0, 0, bs), &encode(0, 0, bs), bs as u32)
        .unwrap();
    assert_eq!((a, b), (0, 0));

    // Two hosts, each with its I/O queue on a different reactor (connections are dealt
    // round-robin: host 1's admin 0, its queue 1; host 2's admin 0, queue 1 on reactor 1,
    // queue 2 on reactor 0), race compare-and-write on block 0; a third queue reads it and
    // a fourth keeps writing block 1 so plain writes meet pending pairs.
    let c1 = Controller::connect(addr, NQN, &host(2)).unwrap();
    let q1_hold = c1.io_queue(1, 32).unwrap();
    let q1 = c1.io_queue(2, 32).unwrap();
    let reader = c1.io_queue(3, 32).unwrap();
    let writer = c0.io_queue(2, 32).unwrap();
    // At least ROUNDS each, and on until the reader and the writer have each done one I/O
    // (on a machine busy with other work their threads may start late), at most 20x ROUNDS.
    const ROUNDS: usize = 150;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(4));
    let (read_n, write_n) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut racers = Vec::new();
    for (id, mut q) in [(1u8, q0), (2u8, q1)] {
        let start = Arc::clone(&start);
        let (read_n, write_n) = (Arc::clone(&read_n), Arc::clone(&write_n));
        racers.push(std::thread::spawn(move || {
            start.wait();
            let mut won = Vec::new();
            let mut lost = 0;
            let mut rounds = 0;
            let others_ran =
                || read_n.load(Ordering::Relaxed) > 0 && write_n.load(Ordering::Relaxed) > 0;
            while rounds < ROUNDS || (!others_ran() && rounds < 20 * ROUNDS) {
                rounds += 1;
                let old = q.read(1, 0, 1, bs as u32).unwrap();
                let (n, _) = decode(&old).expect("a torn block read");
                let (a, b) = q
                    .compare_and_write(1, 0, &old, &encode(n + 1, id, bs), bs as u32)
                    .unwrap();
                match (a, b) {
                    (0, 0) => won.push(n + 1),
                    (sc::COMPARE_FAILURE, sc::FUSED_FAILED) => lost += 1,
                    other => panic!("unexpected compare-and-write statuses {other:x?}"),
                }
            }
            (won, lost, rounds)
        }));
    }
    let reads = {
        let (stop, start, done) = (Arc::clone(&stop), Arc::clone(&start), Arc::clone(&read_n));
        let mut q = reader;
        std::thread::spawn(move || {
            start.wait();
            let (mut last, mut n) = (0, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let b = q.read(1, 0, 1, bs as u32).unwrap();
                let (c, _) = decode(&b).expect("a plain read saw a torn block");
                assert!(c >= last, "counter went back: {c} after {last}");
                last = c;
                n += 1;
                done.store(n, Ordering::Relaxed);
            }
            n
        })
    };
    let writes = {
        let (stop, start, done) = (Arc::clone(&stop), Arc::clone(&start), Arc::clone(&write_n));
        let mut q = writer;
        std::thread::spawn(move || {
            start.wait();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let b = pattern(n, bs);
                q.write(1, 1, &b, bs as u32, false).unwrap();
                assert_eq!(q.read(1, 1, 1, bs as u32).unwrap(), b);
                n += 1;
                done.store(n, Ordering::Relaxed);
            }
            n
        })
    };
    let mut all = Vec::new();
    let mut losses = 0;
    let mut rounds = 0;
    for r in racers {
        let (won, lost, n) = r.join().unwrap();
        all.extend(won);
        losses += lost;
        rounds += n;
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reads.join().unwrap();
    let writes = writes.join().unwrap();
    drop(q1_hold);
    // Every success saw the value the previous success wrote: the values written are exactly
    // 1..=successes, each once (a lost update would write one value twice).
    all.sort_unstable();
    let n = all.len() as u64;
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "lost or duplicated updates"
    );
    assert_eq!(n as usize + losses, rounds);
    let mut q = c0.io_queue(3, 8).unwrap();
    let (last, _) = decode(&q.read(1, 0, 1, bs as u32).unwrap()).unwrap();
    assert_eq!(last, n, "final block holds the last successful update");
    assert!(reads > 0 && writes > 0);
    eprintln!(
        "compare-and-write: {n} successes, {losses} miscompares, {reads} reads, {writes} plain writes"
    );
}

#[test]
fn nvmf_reservations_block_other_hosts_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let body = format!(
        "[reactor]\ncores=[0,1]\nwait='adaptive'\npin=false\n[[volume]]\nname='vol0'\nbackend='uring'\nsize='8MiB'\nblock_size=4096\npath='{}'\n",
        dir.path().join("disk.img").display()
    );
    let nvmf = format!("state_dir='{}'", state.display());
    let server = Server::start_nvmf(dir.path(), &nvmf, &body);
    let addr = server.nvmf_addr;
    let blk = pattern(5, 4096);
    let (ka, kb) = (0xAAAA_0001u64, 0xBBBB_0002u64);
    {
        let (mut ca, cb, cc) = (
            Controller::connect(addr, NQN, &host(1)).unwrap(),
            Controller::connect(addr, NQN, &host(2)).unwrap(),
            Controller::connect(addr, NQN, &host(3)).unwrap(),
        );
        let (mut a, mut b, mut c) = (
            ca.io_queue(1, 16).unwrap(),
            cb.io_queue(1, 16).unwrap(),
            cc.io_queue(1, 16).unwrap(),
        );
        // Get Features Host Identifier returns the Connect host id; Set is refused.
        let hid = ca
            .admin
            .cmd_ok(Sqe::new(0x0A).cdw(10, 0x81).cdw(11, 1), &[], 16)
            .unwrap();
        assert_eq!(hid.data, vec![1u8; 16]);
        assert_eq!(
            ca.admin
                .cmd(Sqe::new(0x09).cdw(10, 0x81).cdw(11, 1), &[], 0)
                .unwrap()
                .status,
            0x00C
        );
        assert_eq!(
            a.resv_register(1, rrega::REGISTER, false, 0, ka).unwrap(),
            0
        );
        assert_eq!(
            b.resv_register(1, rrega::REGISTER, false, 0, kb).unwrap(),
            0
        );
        // Registering again with another key conflicts; acquiring with a wrong key too.
        assert_eq!(
            b.resv_register(1, rrega::REGISTER, false, 0, 1).unwrap(),
            sc::RESERVATION_CONFLICT
        );
        assert_eq!(
            a.resv_acquire(1, racqa::ACQUIRE, 1, kb, 0).unwrap(),
            sc::RESERVATION_CONFLICT
        );
        // Write Exclusive held by A: only A writes, everybody reads.
        assert_eq!(a.resv_acquire(1, racqa::ACQUIRE, 1, ka, 0).unwrap(), 0);
        a.write(1, 0, &blk, 4096, false).unwrap();
        for q in [&mut b, &mut c] {
            let w = q.cmd(Sqe::new(0x01).nsid(1).lba(0, 1), &blk, 0).unwrap();
            assert_eq!(w.status, sc::RESERVATION_CONFLICT);
            let z = q.cmd(Sqe::new(0x08).nsid(1).lba(0, 1), &[], 0).unwrap();
            assert_eq!(z.status, sc::RESERVATION_CONFLICT);
            assert_eq!(q.read(1, 0, 1, 4096).unwrap(), blk);
        }
        assert_eq!(
            b.resv_acquire(1, racqa::ACQUIRE, 1, kb, 0).unwrap(),
            sc::RESERVATION_CONFLICT
        );
        // Report (extended format only: fabrics host ids are 128-bit).
        assert_eq!(
            b.resv_report(1, false, 4096).unwrap().0,
            sc::HOST_ID_INCONSISTENT
        );
        let (s, d) = c.resv_report(1, true, 4096).unwrap();
        assert_eq!(s, 0);
        let r = ResvReport::parse(&d).unwrap();
        assert_eq!(r.rtype, 1);
        assert!(r.ptpls);
        assert_eq!(
            r.registrants,
            vec![([1; 16], ka, true), ([2; 16], kb, false)]
        );
        // Release with the wrong type is refused; then Exclusive Access - Registrants Only:
        // registrants read and write, the unregistered host does neither.
        assert_eq!(a.resv_release(1, 0, 2, ka).unwrap(), 0x002);
        assert_eq!(a.resv_release(1, 0, 1, ka).unwrap(), 0);
        assert_eq!(a.resv_acquire(1, racqa::ACQUIRE, 4, ka, 0).unwrap(), 0);
        b.write(1, 1, &blk, 4096, false).unwrap();
        assert_eq!(b.read(1, 1, 1, 4096).unwrap(), blk);
        let r = c.cmd(Sqe::new(0x02).nsid(1).lba(0, 1), &[], 4096).unwrap();
        assert_eq!(r.status, sc::RESERVATION_CONFLICT);
        let w = c.cmd(Sqe::new(0x01).nsid(1).lba(2, 1), &blk, 0).unwrap();
        assert_eq!(w.status, sc::RESERVATION_CONFLICT);
    }

    // The daemon restarts: registrations and the reservation are still there.
    let server = server.restart();
    let addr = server.nvmf_addr;
    let (ca, cb, cc) = (
        Controller::connect(addr, NQN, &host(1)).unwrap(),
        Controller::connect(addr, NQN, &host(2)).unwrap(),
        Controller::connect(addr, NQN, &host(3)).unwrap(),
    );
    let (mut a, mut b, mut c) = (
        ca.io_queue(1, 16).unwrap(),
        cb.io_queue(1, 16).unwrap(),
        cc.io_queue(1, 16).unwrap(),
    );
    let r = ResvReport::parse(&c.resv_report(1, true, 4096).unwrap().1).unwrap();
    assert_eq!(r.rtype, 4);
    assert_eq!(
        r.registrants,
        vec![([1; 16], ka, true), ([2; 16], kb, false)]
    );
    let w = c.cmd(Sqe::new(0x01).nsid(1).lba(0, 1), &blk, 0).unwrap();
    assert_eq!(w.status, sc::RESERVATION_CONFLICT);
    // B preempts A (Write Exclusive): A is no longer registered and cannot write.
    assert_eq!(b.resv_acquire(1, racqa::PREEMPT, 1, kb, ka).unwrap(), 0);
    let w = a.cmd(Sqe::new(0x01).nsid(1).lba(0, 1), &blk, 0).unwrap();
    assert_eq!(w.status, sc::RESERVATION_CONFLICT);
    b.write(1, 0, &blk, 4096, true).unwrap();
    let r = ResvReport::parse(&a.resv_report(1, true, 4096).unwrap().1).unwrap();
    assert_eq!((r.rtype, r.registrants.len()), (1, 1));
    assert!(r.generation >= 3);
    // Clear: no reservation, nobody registered, everybody writes again.
    assert_eq!(b.resv_release(1, 1, 0, kb).unwrap(), 0);
    c.write(1, 3, &blk, 4096, false).unwrap();
    a.write(1, 3, &blk, 4096, false).unwrap();
    let r = ResvReport::parse(&a.resv_report(1, true, 4096).unwrap().1).unwrap();
    assert_eq!((r.rtype, r.registrants.len()), (0, 0));
    drop((a, b, c, ca, cb, cc));
    let mut server = server;
    assert!(server.stop(), "clean stop");
}

#[test]
fn nvmf_abort_drops_a_command_waiting_for_data_and_reports_the_rest() {
    let (d, _) = in_process_with("cores=[0,1]\nwait='adaptive'", RAM);
    let addr = nvmf_addr(&d);
    let mut c = Controller::connect(addr, NQN, &Opts::default()).unwrap();
    let bs = c.ns_info(1).unwrap().block_size;
    let mut q = c.io_queue(1, 32).unwrap();
    // 16 KiB is beyond the in-capsule limit: the target asks for the data with an R2T and
    // waits. Take the R2T without answering it, then abort the command.
    let big = pattern(3, 16 << 10);
    let cid = q
        .submit(
            Sqe::new(0x01)
                .nsid(1)
                .lba(64, (big.len() / bs as usize) as u32),
            &big,
            0,
        )
        .unwrap();
    let r2t = q.read_pdu().unwrap();
    assert_eq!(r2t.kind, t::R2T);
    assert_eq!(u16::from_le_bytes([r2t.header[8], r2t.header[9]]), cid);
    let a = c.abort(1, cid).unwrap();
    assert_eq!((a.status, a.result & 1), (0, 0), "aborted");
    let rsp = q.read_pdu().unwrap();
    assert_eq!(rsp.kind, t::RSP);
    let cqe = &rsp.header[8..24];
    assert_eq!(u16::from_le_bytes([cqe[12], cqe[13]]), cid);
    assert_eq!(
        (u16::from_le_bytes([cqe[14], cqe[15]]) >> 1) & 0x7FF,
        sc::ABORT_REQUESTED
    );
    q.forget(cid);
    // Nothing was written, and the queue still works.
    assert!(q.read(1, 64, 4, bs).unwrap().iter().all(|&b| b == 0));
    let small = pattern(4, bs as usize);
    q.write(1, 64, &small, bs, false).unwrap();
    assert_eq!(q.read(1, 64, 1, bs).unwrap(), small);
    // A command that already completed, an unknown cid and an unknown queue: "not aborted".
    let done = q.submit(Sqe::new(0x00).nsid(1), &[], 0).unwrap();
    assert_eq!(q.complete().unwrap().cid, done);
    for (sqid, cid) in [(1, done), (1, 0x7777), (9, 1)] {
        let a = c.abort(sqid, cid).unwrap();
        assert_eq!((a.status, a.result & 1), (0, 1), "sqid {sqid} cid {cid}");
    }
    // A held Async Event Request is aborted on the admin queue itself.
    let aer = c.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    let ab = c
        .admin
        .submit(Sqe::new(0x08).cdw(10, u32::from(aer) << 16), &[], 0)
        .unwrap();
    let (x, y) = (c.admin.complete().unwrap(), c.admin.complete().unwrap());
    let (aer_c, ab_c) = if x.cid == aer { (x, y) } else { (y, x) };
    assert_eq!((aer_c.cid, aer_c.status), (aer, sc::ABORT_REQUESTED));
    assert_eq!((ab_c.cid, ab_c.status, ab_c.result & 1), (ab, 0, 0));
}

/// An H2CData PDU (no digests) for command `cid`, transfer tag `ttag`: all of `data`, last.
fn h2c(cid: u16, ttag: u16, data: &[u8]) -> Vec<u8> {
    let mut b = vec![t::H2C_DATA, 4, 24, 24];
    b.extend_from_slice(&(24 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(&cid.to_le_bytes());
    b.extend_from_slice(&ttag.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(data);
    b
}

/// The fused halves are paired by the order their capsules arrive (NVMe Base 2.0 §3.4.2),
/// not by when their data completes: a pair whose data comes by R2T with another command's
/// capsule between the two H2CData runs (before, both halves were answered Missing Fused
/// Command); a Compare whose data comes by R2T and a Write with in-capsule data are answered
/// together (before, the Write was answered Missing at once and the Compare never).
#[test]
fn fused_halves_are_paired_by_capsule_order_whatever_order_their_data_completes_in() {
    let (d, _) = in_process_with("cores=[0]\nwait='adaptive'", RAM);
    let addr = nvmf_addr(&d);
    let mut c = Controller::connect(addr, NQN, &host(1)).unwrap();
    let bs = c.ns_info(1).unwrap().block_size;
    let mut q = c.io_queue(1, 32).unwrap();
    let zero = vec![0u8; bs as usize];
    // A: both halves by R2T; a Read's capsule arrives between their data.
    q.set_incapsule(0);
    let cmp = q
        .submit(Sqe::new(0x05).nsid(1).lba(8, 1).fuse(1), &zero, 0)
        .unwrap();
    let new_a = pattern(11, bs as usize);
    let wr = q
        .submit(Sqe::new(0x01).nsid(1).lba(8, 1).fuse(2), &new_a, 0)
        .unwrap();
    let mut r2ts = std::collections::HashMap::new();
    while r2ts.len() < 2 {
        let p = q.read_pdu().unwrap();
        assert_eq!(p.kind, t::R2T, "an R2T for each half");
        let cid = u16::from_le_bytes([p.header[8], p.header[9]]);
        r2ts.insert(cid, u16::from_le_bytes([p.header[10], p.header[11]]));
    }
    q.send_raw(&h2c(cmp, r2ts[&cmp], &zero)).unwrap();
    let rd = q
        .submit(Sqe::new(0x02).nsid(1).lba(100, 1), &[], bs)
        .unwrap();
    q.send_raw(&h2c(wr, r2ts[&wr], &new_a)).unwrap();
    let mut got = std::collections::HashMap::new();
    for _ in 0..3 {
        let cq = q.complete().unwrap();
        got.insert(cq.cid, cq.status);
    }
    assert_eq!((got[&cmp], got[&wr], got[&rd]), (0, 0, 0), "{got:?}");
    q.set_incapsule(8192);
    assert_eq!(q.read(1, 8, 1, bs).unwrap(), new_a, "the pair wrote");
    // B: the Compare's data by R2T, the Write's in the capsule.
    q.set_incapsule(0);
    let cmp = q
        .submit(Sqe::new(0x05).nsid(1).lba(8, 1).fuse(1), &new_a, 0)
        .unwrap();
    q.set_incapsule(8192);
    let new_b = pattern(12, bs as usize);
    let wr = q
        .submit(Sqe::new(0x01).nsid(1).lba(8, 1).fuse(2), &new_b, 0)
        .unwrap();
    let mut got = std::collections::HashMap::new();
    for _ in 0..2 {
        let cq = q.complete().unwrap();
        got.insert(cq.cid, cq.status);
    }
    assert_eq!((got[&cmp], got[&wr]), (0, 0), "{got:?}");
    assert_eq!(q.read(1, 8, 1, bs).unwrap(), new_b);
}
