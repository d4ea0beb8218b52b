//! A namespace removed, and its NSID added again onto another volume, while commands are in
//! flight on the connected queues of a host (docs/nvmf.md, "Namespace changes", "A command
//! racing a removal"): four I/O queues on two reactors keep reads and writes (small ones in the
//! capsule, large ones by R2T and H2CData), Flushes, writes waiting at a slow device and large
//! writes whose H2CData is held back outstanding while `nvmf_namespace_remove` runs, then
//! while `nvmf_namespace_add` puts NSID 1 on another volume.
//!
//! What must hold: every command is answered exactly once (no duplicate, no lost one); no write
//! reaches the old volume after the removal returned (its content, read through another
//! subsystem, does not change from then on); a command sent before the re-add never reaches the
//! new volume (a write whose data came after the removal fails with Invalid Namespace or Format,
//! with DNR, and is on neither volume); a command sent after the removal returned never reaches the old
//! one; after the re-add NSID 1 is the new volume; the reservation held on the old namespace is
//! gone from the new one.

use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use twinblk_tools::nvmf::{Controller, Host, Opts, Queue, ResvReport, Sqe, racqa, rrega, sc};

const LIVE: &str = "nqn.2026-11.io.twinblk:race";
/// A configured subsystem with both volumes (`old` NSID 1, `new` NSID 2): the other path.
const SIDE: &str = "nqn.2026-11.io.twinblk:side";
const INVALID_NS: u16 = 0x00B;
const MIB: u64 = 1 << 20;
const VOL: u64 = 32 * MIB;
/// [0, 1 MiB): read by the racing queues, never written.
const READ_AREA: u64 = MIB;
/// [1 MiB, +64 KiB): updates of `old` there wait `SLOW_MS` (at the device during the removal).
const SLOW_AT: u64 = MIB;
const SLOW_LEN: u64 = 64 << 10;
const SLOW_MS: u64 = 600;
/// [2 MiB, end): every write has a region of its own.
const WRITE_AREA: u64 = 2 * MIB;
const QUEUES: u16 = 4;
const BIG: usize = 128 << 10;
const SMALL: usize = 4096;
/// The target's MAXH2CDATA.
const CHUNK: usize = 64 << 10;
/// Commands a racing queue keeps outstanding (besides its opening batch).
const QD: usize = 24;
const OLD: [u8; 4] = *b"OLD!";
const NEW: [u8; 4] = *b"NEW!";

// Phases of the test, as a command's sender saw them when it sent it.
const BEFORE: u8 = 0;
const REMOVING: u8 = 1;
const REMOVED: u8 = 2;
const ADDING: u8 = 3;
const ADDED: u8 = 4;

fn daemon(dir: &Path) -> (twinblk::Daemon, PathBuf, SocketAddr) {
    let sock = dir.join("ctl.sock");
    let text = format!(
        "[reactor]\ncores=[0,1]\npin=false\nwait='adaptive'\n[nbd]\nlisten=[]\n[nvmf]\nlisten=['127.0.0.1:0']\n\
         [[nvmf.subsystem]]\nnqn='{SIDE}'\nnamespaces=['old','new']\n\
         [control]\nsocket='{}'\n[runtime]\nmax_volumes=8\n\
         [[volume]]\nname='old'\nbackend='malloc'\nsize='32MiB'\nslow_range=[{SLOW_AT}, {SLOW_LEN}]\nslow_ms={SLOW_MS}\n\
         [[volume]]\nname='new'\nbackend='malloc'\nsize='32MiB'\n",
        sock.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let nv = crate::harness::nvmf_addr(&d);
    (d, sock, nv)
}

use crate::harness::rpc_ok as ok;

/// `len` bytes at byte offset `off` of a volume filled with `tag`: every 16 bytes the tag, the
/// offset and the tag again, so a block is recognisable wherever it is read.
fn pattern(tag: [u8; 4], off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    for (i, c) in b.chunks_exact_mut(16).enumerate() {
        c[..4].copy_from_slice(&tag);
        c[4..12].copy_from_slice(&(off + i as u64 * 16).to_le_bytes());
        c[12..].copy_from_slice(&tag);
    }
    b
}

/// A command capsule (no digests) with `cid`, describing `len` bytes of data, carrying
/// `incap` in the capsule when it is not empty (else a transport SGL: R2T or C2HData).
fn capsule(sqe: Sqe, cid: u16, len: usize, incap: &[u8]) -> Vec<u8> {
    let mut s = sqe.0;
    s[2..4].copy_from_slice(&cid.to_le_bytes());
    if len > 0 {
        s[24..32].fill(0);
        s[32..36].copy_from_slice(&(len as u32).to_le_bytes());
        s[36..39].fill(0);
        s[39] = if incap.is_empty() { 0x5A } else { 0x01 };
    }
    let pdo = if incap.is_empty() { 0 } else { 72 };
    let plen = 72 + incap.len();
    let mut b = vec![4, 0, 72, pdo];
    b.extend_from_slice(&(plen as u32).to_le_bytes());
    b.extend_from_slice(&s);
    b.extend_from_slice(incap);
    b
}

/// An H2CData PDU (no digests).
fn h2c(cid: u16, ttag: u16, off: usize, data: &[u8], last: bool) -> Vec<u8> {
    let mut b = vec![6, if last { 4 } else { 0 }, 24, 24];
    b.extend_from_slice(&(24 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(&cid.to_le_bytes());
    b.extend_from_slice(&ttag.to_le_bytes());
    b.extend_from_slice(&(off as u32).to_le_bytes());
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(data);
    b
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
    Flush,
    /// A 128 KiB write whose second H2CData PDU is held back until the namespace is removed
    /// (`late`: until NSID 1 is on the new volume).
    Held {
        late: bool,
    },
    /// A write at the slow range of `old`: at the device while the removal runs.
    Slow,
}

#[derive(Debug)]
struct Cmd {
    kind: Kind,
    off: u64,
    len: usize,
    /// Write data.
    data: Vec<u8>,
    /// The phase when it was sent.
    sent: u8,
    status: Option<u16>,
    /// Do Not Retry, in its response capsule.
    dnr: bool,
    answers: u32,
    read: Vec<u8>,
}

#[derive(Default)]
struct QState {
    cmds: HashMap<u16, Cmd>,
    answered: usize,
    /// Held writes whose R2T came and first PDU went: (cid, ttag, late).
    held: Vec<(u16, u16, bool)>,
    errors: Vec<String>,
    /// The sender sent its last command (a Flush sent after the stop).
    finished: bool,
}

struct Racer {
    qid: u16,
    st: Arc<Mutex<QState>>,
    w: Arc<Mutex<TcpStream>>,
}

fn send(w: &Mutex<TcpStream>, b: &[u8]) {
    w.lock()
        .unwrap()
        .write_all(b)
        .expect("sending to the target");
}

fn answer(st: &mut QState, cid: u16, status: u16, dnr: bool) {
    match st.cmds.get_mut(&cid) {
        None => st
            .errors
            .push(format!("a completion for cid {cid}, never sent")),
        Some(c) => {
            c.answers += 1;
            if c.answers > 1 {
                st.errors.push(format!(
                    "cid {cid} ({:?}) answered twice (status {status:#05x})",
                    c.kind
                ));
            } else {
                c.status = Some(status);
                c.dnr = dnr;
                st.answered += 1;
            }
        }
    }
}

/// Read every PDU of a racing queue until the sender finished and everything is answered:
/// R2Ts are answered with all the data, or for a held write with its first PDU only.
fn reader(mut rq: Queue, st: Arc<Mutex<QState>>, w: Arc<Mutex<TcpStream>>) -> Result<(), String> {
    loop {
        {
            let s = st.lock().unwrap();
            if s.finished && s.answered == s.cmds.len() {
                return Ok(());
            }
        }
        let p = rq.read_pdu().map_err(|e| {
            let s = st.lock().unwrap();
            let mut lost: Vec<_> = s
                .cmds
                .iter()
                .filter(|(_, c)| c.answers == 0)
                .map(|(cid, c)| (*cid, c.kind))
                .collect();
            lost.sort_by_key(|x| x.0);
            format!("{e:#}: unanswered after 10 s: {lost:?}")
        })?;
        let u16at = |i: usize| u16::from_le_bytes([p.header[i], p.header[i + 1]]);
        let u32at = |i: usize| u32::from_le_bytes(p.header[i..i + 4].try_into().unwrap());
        match p.kind {
            9 => {
                let (cid, ttag, off, len) = (u16at(8), u16at(10), u32at(12), u32at(16));
                let (data, kind) = {
                    let s = st.lock().unwrap();
                    let Some(c) = s.cmds.get(&cid) else {
                        return Err(format!("R2T for cid {cid}, never sent"));
                    };
                    (c.data.clone(), c.kind)
                };
                if off != 0 || len as usize != data.len() {
                    return Err(format!("R2T for cid {cid}: {off}+{len}"));
                }
                if let Kind::Held { late } = kind {
                    send(&w, &h2c(cid, ttag, 0, &data[..CHUNK], false));
                    st.lock().unwrap().held.push((cid, ttag, late));
                } else {
                    let mut at = 0;
                    while at < data.len() {
                        let n = (data.len() - at).min(CHUNK);
                        send(
                            &w,
                            &h2c(cid, ttag, at, &data[at..at + n], at + n == data.len()),
                        );
                        at += n;
                    }
                }
            }
            7 => {
                let (cid, off) = (u16at(8), u32at(12) as usize);
                let mut s = st.lock().unwrap();
                let Some(c) = s.cmds.get_mut(&cid) else {
                    return Err(format!("C2HData for cid {cid}, never sent"));
                };
                if c.read.len() < off + p.data.len() {
                    c.read.resize(off + p.data.len(), 0);
                }
                c.read[off..off + p.data.len()].copy_from_slice(&p.data);
                if p.flags & 0x08 != 0 {
                    answer(&mut s, cid, 0, false);
                }
            }
            5 => {
                let st16 = u16at(8 + 14);
                answer(
                    &mut st.lock().unwrap(),
                    u16at(8 + 12),
                    (st16 >> 1) & 0x7FF,
                    st16 & 0x8000 != 0,
                );
            }
            k => return Err(format!("unexpected PDU type {k}")),
        }
    }
}

/// Send commands on a racing queue: its opening batch (a slow write, four held writes), then,
/// once the held writes' first PDUs went (`ready`), a paced stream of reads, writes and
/// Flushes to NSID 1 until `stop`, then one last Flush.
fn sender(
    r: &Racer,
    phase: &AtomicU8,
    stop: &AtomicBool,
    ready: mpsc::Sender<u16>,
) -> Result<(), String> {
    let q = u64::from(r.qid - 1);
    let per_queue = (VOL - WRITE_AREA) / u64::from(QUEUES);
    let (mut write_at, write_end) = (WRITE_AREA + q * per_queue, WRITE_AREA + (q + 1) * per_queue);
    let mut cid: u16 = 0;
    let mut seq: u16 = 0;
    let mut submit = |kind: Kind, off: u64, len: usize, last: bool| {
        let sqe = match kind {
            Kind::Flush => Sqe::new(0x00).nsid(1),
            Kind::Read => Sqe::new(0x02).nsid(1).lba(off / 512, (len / 512) as u32),
            _ => Sqe::new(0x01).nsid(1).lba(off / 512, (len / 512) as u32),
        };
        let data = match kind {
            Kind::Flush | Kind::Read => Vec::new(),
            _ => {
                seq += 1;
                let [a, b] = seq.to_le_bytes();
                pattern([b'W', r.qid as u8, a, b], off, len)
            }
        };
        let incap = if !data.is_empty() && data.len() <= 8192 {
            data.clone()
        } else {
            Vec::new()
        };
        let c = cid;
        cid += 1;
        let sent = phase.load(Ordering::SeqCst);
        let wire = capsule(sqe, c, if kind == Kind::Flush { 0 } else { len }, &incap);
        let mut st = r.st.lock().unwrap();
        // The last command and the end are one step, so the reader never waits for more.
        st.finished = last;
        st.cmds.insert(
            c,
            Cmd {
                kind,
                off,
                len,
                data,
                sent,
                status: None,
                dnr: false,
                answers: 0,
                read: Vec::new(),
            },
        );
        drop(st);
        send(&r.w, &wire);
    };
    submit(Kind::Slow, SLOW_AT + q * SMALL as u64, SMALL, false);
    for late in [false, false, true, true] {
        submit(Kind::Held { late }, write_at, BIG, false);
        write_at += BIG as u64;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.st.lock().unwrap().held.len() < 4 {
        if Instant::now() > deadline {
            return Err(format!("queue {}: no R2T for the held writes", r.qid));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    ready.send(r.qid).unwrap();
    let mut i: u64 = 0;
    while !stop.load(Ordering::SeqCst) && i < 20_000 {
        let outstanding = {
            let s = r.st.lock().unwrap();
            s.cmds.len() - s.answered
        };
        // Quiet while the namespace is added (`quiet_for_the_add`).
        if outstanding >= QD + 5 || phase.load(Ordering::SeqCst) == ADDING {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let room = |n: usize| write_at + n as u64 <= write_end;
        match i % 24 {
            5 if room(BIG) => {
                submit(Kind::Write, write_at, BIG, false);
                write_at += BIG as u64;
            }
            0 | 3 | 8 | 11 | 16 | 19 if room(SMALL) => {
                submit(Kind::Write, write_at, SMALL, false);
                write_at += SMALL as u64;
            }
            2 | 14 => submit(Kind::Read, (i * BIG as u64) % READ_AREA, BIG, false),
            4 | 12 | 20 => submit(Kind::Flush, 0, 0, false),
            _ => submit(Kind::Read, (i * SMALL as u64) % READ_AREA, SMALL, false),
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    submit(Kind::Flush, 0, 0, true);
    Ok(())
}

/// Send the rest of the held writes' data (`late` ones or the others).
fn release_held(racers: &[Racer], late: bool) {
    for r in racers {
        let held: Vec<_> = r.st.lock().unwrap().held.clone();
        for (cid, ttag, _) in held.into_iter().filter(|x| x.2 == late) {
            let data = r.st.lock().unwrap().cmds[&cid].data.clone();
            send(&r.w, &h2c(cid, ttag, CHUNK, &data[CHUNK..], true));
        }
    }
}

/// Wait until every racing queue has nothing outstanding but its late held writes: what the
/// host sent before the re-add has reached the target and been answered, so only the late
/// held writes can meet the new namespace (the host cannot tell when the target reads a
/// capsule still on its way, so a command sent just before the add could lawfully be taken
/// for the new namespace).
fn quiet_for_the_add(racers: &[Racer]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in racers {
        loop {
            let busy: Vec<(u16, Kind)> = {
                let s = r.st.lock().unwrap();
                s.cmds
                    .iter()
                    .filter(|(_, c)| c.answers == 0 && c.kind != Kind::Held { late: true })
                    .map(|(cid, c)| (*cid, c.kind))
                    .collect()
            };
            if busy.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "queue {}: still unanswered after the removal: {busy:?}",
                r.qid
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The whole of volume NSID `nsid` of the side subsystem.
fn read_all(q: &mut Queue, nsid: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(VOL as usize);
    for off in (0..VOL).step_by(BIG) {
        v.extend_from_slice(&q.read(nsid, off / 512, (BIG / 512) as u32, 512).unwrap());
    }
    v
}

fn write_all(q: &mut Queue, nsid: u32, tag: [u8; 4]) {
    for off in (0..VOL).step_by(BIG) {
        q.write(nsid, off / 512, &pattern(tag, off, BIG), 512, false)
            .unwrap();
    }
}

/// Several queues on both reactors have reads, writes (in the capsule, by R2T, at a slow
/// device, with H2CData held back) and Flushes outstanding on NSID 1 while it is removed and
/// then added again on another volume: each is answered once; nothing reaches the old volume
/// after the removal returned, nothing sent before the re-add reaches the new volume, and the
/// held writes whose data came after the removal fail with Invalid Namespace or Format and are
/// on neither volume; NSID 1 then serves the new volume, without the old one's reservation.
#[test]
fn commands_racing_a_namespace_removal_and_re_add_are_answered_once_and_stay_on_their_volume() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock, nv) = daemon(dir.path());
    let side = Controller::connect(nv, SIDE, &Opts::default()).unwrap();
    let mut sq = side.io_queue(1, 16).unwrap();
    write_all(&mut sq, 1, OLD);
    write_all(&mut sq, 2, NEW);
    ok(&sock, "nvmf_subsystem_add", json!({"nqn": LIVE}));
    ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": LIVE, "volume": "old", "nsid": 1}),
    );
    let mut c = Controller::connect(nv, LIVE, &Opts::default()).unwrap();
    // The host holds a Write Exclusive reservation on the old namespace.
    let mut rq = c.io_queue(QUEUES + 1, 16).unwrap();
    assert_eq!(
        rq.resv_register(1, rrega::REGISTER, false, 0, 0xAA)
            .unwrap(),
        0
    );
    assert_eq!(rq.resv_acquire(1, racqa::ACQUIRE, 1, 0xAA, 0).unwrap(), 0);
    let other = Opts {
        host: Host {
            nqn: "nqn.2014-08.org.example:other".into(),
            id: [7; 16],
        },
        ..Opts::default()
    };
    let c2 = Controller::connect(nv, LIVE, &other).unwrap();
    let mut oq = c2.io_queue(1, 16).unwrap();
    let spare = VOL - BIG as u64;
    let other_data = pattern(*b"OTH!", spare, SMALL);
    let w = oq
        .cmd(Sqe::new(0x01).nsid(1).lba(spare / 512, 8), &other_data, 0)
        .unwrap();
    assert_eq!(w.status, sc::RESERVATION_CONFLICT, "the reservation holds");

    let phase = Arc::new(AtomicU8::new(BEFORE));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut racers = Vec::new();
    let mut threads = Vec::new();
    for qid in 1..=QUEUES {
        let s = c.io_queue(qid, 128).unwrap().into_stream();
        let w = Arc::new(Mutex::new(s.try_clone().unwrap()));
        let st = Arc::new(Mutex::new(QState::default()));
        let rd = {
            let (st, w) = (Arc::clone(&st), Arc::clone(&w));
            std::thread::spawn(move || reader(Queue::from_stream(s), st, w))
        };
        let racer = Racer {
            qid,
            st: Arc::clone(&st),
            w: Arc::clone(&w),
        };
        let sd = {
            let (phase, stop, ready) = (Arc::clone(&phase), Arc::clone(&stop), ready_tx.clone());
            let r = Racer {
                qid,
                st,
                w: Arc::clone(&w),
            };
            std::thread::spawn(move || sender(&r, &phase, &stop, ready))
        };
        racers.push(racer);
        threads.push((qid, rd, sd));
    }
    for _ in 0..QUEUES {
        ready_rx
            .recv_timeout(Duration::from_secs(15))
            .expect("every racing queue has its held writes half sent");
    }
    // Removed while every queue has commands outstanding, slow writes at the device and held
    // writes half received.
    phase.store(REMOVING, Ordering::SeqCst);
    let r = ok(
        &sock,
        "nvmf_namespace_remove",
        json!({"nqn": LIVE, "nsid": 1}),
    );
    phase.store(REMOVED, Ordering::SeqCst);
    assert_eq!(r["closed_connections"], 0, "{r}");
    let old_at_removal = read_all(&mut sq, 1);
    release_held(&racers, false);
    std::thread::sleep(Duration::from_millis(50));
    phase.store(ADDING, Ordering::SeqCst);
    quiet_for_the_add(&racers);
    ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": LIVE, "volume": "new", "nsid": 1}),
    );
    phase.store(ADDED, Ordering::SeqCst);
    release_held(&racers, true);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for (qid, rd, sd) in threads {
        if let Err(e) = sd.join().unwrap() {
            failures.push(format!("queue {qid} sender: {e}"));
        }
        if let Err(e) = rd.join().unwrap() {
            failures.push(format!("queue {qid} reader: {e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // The daemon serves on: NSID 1 is the new volume, without the old one's reservation.
    assert_eq!(c.active_ns().unwrap(), vec![1], "NSID 1 is active again");
    assert_eq!(
        ResvReport::parse(&rq.resv_report(1, true, 4096).unwrap().1).unwrap(),
        ResvReport::default(),
        "the new namespace 1 has no registrant and no reservation"
    );
    let w = oq
        .cmd(Sqe::new(0x01).nsid(1).lba(spare / 512, 8), &other_data, 0)
        .unwrap();
    assert_eq!(w.status, 0, "another host writes the new namespace 1");
    let got = rq.read(1, 0, 8, 512).unwrap();
    assert_eq!(got, pattern(NEW, 0, SMALL), "NSID 1 reads the new volume");

    let old = read_all(&mut sq, 1);
    let new = read_all(&mut sq, 2);
    assert_eq!(
        &new[spare as usize..spare as usize + SMALL],
        &other_data[..],
        "the other host's write is on the new volume"
    );
    let changed: Vec<usize> = (0..old.len())
        .step_by(512)
        .filter(|&i| old[i..i + 512] != old_at_removal[i..i + 512])
        .collect();
    let mut bad = Vec::new();
    if let Some(first) = changed.first() {
        bad.push(format!(
            "the old volume changed after the removal returned: {} blocks, the first at byte {first}",
            changed.len()
        ));
    }
    let (mut refused_while_removed, mut new_reads) = (0, 0);
    let mut total = 0;
    for r in &racers {
        let st = r.st.lock().unwrap();
        bad.extend(st.errors.iter().map(|e| format!("queue {}: {e}", r.qid)));
        for (cid, cmd) in &st.cmds {
            total += 1;
            let who = format!(
                "queue {} cid {cid} {:?} at {} sent in phase {}",
                r.qid, cmd.kind, cmd.off, cmd.sent
            );
            let Some(status) = cmd.status else {
                bad.push(format!("{who}: never answered"));
                continue;
            };
            if status == INVALID_NS && cmd.sent == REMOVED {
                refused_while_removed += 1;
            }
            if status == INVALID_NS && !cmd.dnr {
                bad.push(format!("{who}: Invalid Namespace or Format without DNR"));
            }
            let range = cmd.off as usize..cmd.off as usize + cmd.len;
            match cmd.kind {
                Kind::Flush => {
                    if status != 0 && status != INVALID_NS {
                        bad.push(format!("{who}: status {status:#05x}"));
                    }
                }
                Kind::Read => match status {
                    0 if cmd.read == pattern(OLD, cmd.off, cmd.len) => {
                        if cmd.sent > REMOVING {
                            bad.push(format!("{who}: read the old volume"));
                        }
                    }
                    0 if cmd.read == pattern(NEW, cmd.off, cmd.len) => {
                        new_reads += 1;
                        if cmd.sent < ADDING {
                            bad.push(format!("{who}: read the new volume"));
                        }
                    }
                    0 => bad.push(format!("{who}: read neither volume's data")),
                    INVALID_NS => {}
                    s => bad.push(format!("{who}: status {s:#05x}")),
                },
                Kind::Write | Kind::Slow | Kind::Held { .. } => {
                    let in_old = old[range.clone()] == cmd.data[..];
                    let in_new = new[range.clone()] == cmd.data[..];
                    let untouched = old[range.clone()] == pattern(OLD, cmd.off, cmd.len)[..]
                        && new[range.clone()] == pattern(NEW, cmd.off, cmd.len)[..];
                    let must_fail = matches!(cmd.kind, Kind::Held { .. });
                    match status {
                        0 if must_fail => {
                            bad.push(format!("{who}: succeeded (old {in_old}, new {in_new})"))
                        }
                        0 if cmd.kind == Kind::Slow && !in_old => {
                            bad.push(format!("{who}: not on the old volume"))
                        }
                        0 if in_old && !in_new && cmd.sent > REMOVING => {
                            bad.push(format!("{who}: reached the old volume"))
                        }
                        0 if in_new && !in_old && cmd.sent < ADDING => {
                            bad.push(format!("{who}: reached the new volume"))
                        }
                        0 if in_old == in_new => bad.push(format!(
                            "{who}: succeeded, on the old volume {in_old}, on the new {in_new}"
                        )),
                        0 => {}
                        INVALID_NS if !untouched => bad.push(format!(
                            "{who}: refused but applied (old {in_old}, new {in_new})"
                        )),
                        INVALID_NS => {}
                        s => bad.push(format!("{who}: status {s:#05x}")),
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {total} commands went wrong:\n{}",
        bad.len(),
        bad.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(
        refused_while_removed > 0,
        "no command reached the target while NSID 1 was gone"
    );
    assert!(new_reads > 0, "no read reached the new volume");
    drop(c);
}

/// A fused Compare and Write whose first half arrived while NSID 1 was the old volume and
/// whose second half arrives after NSID 1 was removed and added again on the new volume names
/// the old namespace (a pair counts from its first half's arrival): the Compare is answered
/// Invalid Namespace or Format and the Write Failed Fused Command, and neither volume is
/// written, though the new volume holds what the Compare expects.
#[test]
fn a_fused_pair_split_by_a_removal_and_re_add_runs_on_neither_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock, nv) = daemon(dir.path());
    let side = Controller::connect(nv, SIDE, &Opts::default()).unwrap();
    let mut sq = side.io_queue(1, 16).unwrap();
    let at = WRITE_AREA;
    sq.write(1, at / 512, &pattern(OLD, at, SMALL), 512, false)
        .unwrap();
    sq.write(2, at / 512, &pattern(NEW, at, SMALL), 512, false)
        .unwrap();
    ok(&sock, "nvmf_subsystem_add", json!({"nqn": LIVE}));
    ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": LIVE, "volume": "old", "nsid": 1}),
    );
    let c = Controller::connect(nv, LIVE, &Opts::default()).unwrap();
    let mut q = c.io_queue(1, 16).unwrap();
    let nlb = (SMALL / 512) as u32;
    let compare = q
        .submit(
            Sqe::new(0x05).nsid(1).lba(at / 512, nlb).fuse(1),
            &pattern(NEW, at, SMALL),
            0,
        )
        .unwrap();
    ok(
        &sock,
        "nvmf_namespace_remove",
        json!({"nqn": LIVE, "nsid": 1}),
    );
    ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": LIVE, "volume": "new", "nsid": 1}),
    );
    let write = q
        .submit(
            Sqe::new(0x01).nsid(1).lba(at / 512, nlb).fuse(2),
            &pattern(*b"FUS!", at, SMALL),
            0,
        )
        .unwrap();
    let mut got = HashMap::new();
    for _ in 0..2 {
        let r = q.complete().unwrap();
        assert!(
            got.insert(r.cid, r.status).is_none(),
            "cid {} answered twice",
            r.cid
        );
    }
    assert_eq!(
        got[&compare], INVALID_NS,
        "the Compare named the old namespace"
    );
    assert_eq!(got[&write], sc::FUSED_FAILED, "its Write fails with it");
    assert_eq!(
        sq.read(1, at / 512, nlb, 512).unwrap(),
        pattern(OLD, at, SMALL),
        "the old volume is as it was"
    );
    assert_eq!(
        sq.read(2, at / 512, nlb, 512).unwrap(),
        pattern(NEW, at, SMALL),
        "the new volume is as it was"
    );
    // A pair sent now serves on the new namespace.
    let (a, b) = q
        .compare_and_write(
            1,
            at / 512,
            &pattern(NEW, at, SMALL),
            &pattern(*b"FUS!", at, SMALL),
            512,
        )
        .unwrap();
    assert_eq!((a, b), (0, 0), "a pair on the new namespace");
    assert_eq!(
        sq.read(2, at / 512, nlb, 512).unwrap(),
        pattern(*b"FUS!", at, SMALL)
    );
}
