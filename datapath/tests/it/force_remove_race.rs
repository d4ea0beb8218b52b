//! Control calls that cut hosts off a volume with `force` (closing their connections) while
//! writes of theirs are at a slow device and more race the call (docs/control.md):
//! `nbd_export_remove`, `iscsi_lun_remove`, `iscsi_lun_add`, `iscsi_target_remove`,
//! `nvmf_subsystem_remove`, `nvmf_host_disallow` and `nvmf_namespace_remove` (which closes
//! nothing), each with `force`. (`volume_delete` closes no connection: it is refused while an
//! export names the volume or a host reaches it.)
//!
//! What must hold: once the call has answered, nothing sent through the path it removed
//! reaches the volume any more (its content, read through another export of the same volume,
//! does not change from the reply on, also after the slow device's delay has passed), and
//! every write the host saw acknowledged is in that content; the writes that were at the device
//! when the call came are answered (the connection closes cleanly).

use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use twinblk::daemon::Proto;
use twinblk::frontend::nbd::proto::cmd;

use crate::iscsi::{Raw, write10};
use crate::rawnbd::Client;
use twinblk_tools::nvmf::{Controller, Opts, Sqe};

const MIB: u64 = 1 << 20;
/// [1 MiB, +64 KiB): updates wait `SLOW_MS` at the device.
const SLOW_AT: u64 = MIB;
const SLOW_LEN: u64 = 64 << 10;
const SLOW_MS: u64 = 800;
/// [2 MiB, +2 MiB): the racing writes (not slow), one 4 KiB block each.
const RACE_AT: u64 = 2 * MIB;
const RACE_MAX: u64 = 512;
const BLK: usize = 4096;
/// What the checks read through the other path: the slow and the racing areas.
const AREA: u64 = SLOW_AT;
const AREA_LEN: u64 = 3 * MIB;
const NQN: &str = "nqn.2026-11.io.twinblk:force";
/// Allowed in `NQN` besides the test's host (a host list may not become empty).
const OTHER_HOST: &str = "nqn.2026-11.io.twinblk:other-host";
const TARGET: &str = "iqn.2026-11.io.twinblk:force";

/// The daemon, its control socket and its NBD, iSCSI and NVMe/TCP listeners.
fn daemon(dir: &Path) -> (twinblk::Daemon, PathBuf, SocketAddr, SocketAddr, SocketAddr) {
    let sock = dir.join("ctl.sock");
    let text = format!(
        "[reactor]\ncores=[0,1]\npin=false\nwait='adaptive'\n[nbd]\nlisten=['127.0.0.1:0']\n\
         [[nbd.export]]\nname='side'\nvolume='v'\n\
         [nvmf]\nlisten=['127.0.0.1:0']\n[iscsi]\nlisten=['127.0.0.1:0']\n\
         [control]\nsocket='{}'\n[runtime]\nmax_volumes=8\n\
         [[volume]]\nname='v'\nbackend='malloc'\nsize='32MiB'\nslow_range=[{SLOW_AT}, {SLOW_LEN}]\nslow_ms={SLOW_MS}\n\
         [[volume]]\nname='w'\nbackend='malloc'\nsize='32MiB'\n",
        sock.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let l = d.listeners();
    let nbd = l.iter().find(|(x, _)| *x == Proto::Nbd).unwrap().1;
    let iscsi = l.iter().find(|(x, _)| *x == Proto::Iscsi).unwrap().1;
    let nvmf = l.iter().find(|(x, _)| *x == Proto::Nvmf).unwrap().1;
    (d, sock, nbd, iscsi, nvmf)
}

use crate::harness::rpc_ok as ok;

/// [`ok`], and when it answered (how long it took goes to the test's output).
fn timed(sock: &Path, method: &str, params: Value) -> (Value, Instant) {
    let called = Instant::now();
    let r = ok(sock, method, params);
    let answered = Instant::now();
    eprintln!("{method} took {:?}", answered - called);
    (r, answered)
}

/// `len` bytes for byte offset `off` written by write `tag`: every 16 bytes the tag, the
/// offset and the tag again.
fn pattern(tag: u32, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    for (i, c) in b.chunks_exact_mut(16).enumerate() {
        c[..4].copy_from_slice(&tag.to_le_bytes());
        c[4..12].copy_from_slice(&(off + i as u64 * 16).to_le_bytes());
        c[12..].copy_from_slice(&tag.to_le_bytes());
    }
    b
}

/// Where write `tag` goes: tags below 16 in the slow area, the others in the racing area.
fn place(tag: u32) -> u64 {
    if tag < 16 {
        SLOW_AT + u64::from(tag) * BLK as u64
    } else {
        RACE_AT + u64::from(tag - 16) * BLK as u64
    }
}

/// The checked area of the volume, read through the other path.
fn snapshot(side: &mut Client) -> Vec<u8> {
    let mut v = Vec::with_capacity(AREA_LEN as usize);
    for off in (AREA..AREA + AREA_LEN).step_by(MIB as usize) {
        v.extend(
            side.read(off, MIB as u32)
                .expect("read through the other path"),
        );
    }
    v
}

/// The checked area read right after the call answered (at `answered`), and how long after.
fn at_reply(side: &mut Client, answered: Instant) -> (Vec<u8>, Duration) {
    let first = snapshot(side);
    (first, answered.elapsed())
}

/// After the call answered (`first`, `took`: [`at_reply`]): the volume does not change through
/// the delay of the slow device, and every write in `acked` is there.
fn check(side: &mut Client, (first, took): (Vec<u8>, Duration), acked: &HashSet<u32>, call: &str) {
    eprintln!(
        "{call}: first read {took:?} after the reply; slow write 0 there: {}",
        first[..BLK] == pattern(0, SLOW_AT, BLK)[..]
    );
    std::thread::sleep(Duration::from_millis(SLOW_MS + 500));
    let later = snapshot(side);
    let changed: Vec<u64> = (0..AREA_LEN / BLK as u64)
        .filter(|b| {
            let r = (*b * BLK as u64) as usize..((*b + 1) * BLK as u64) as usize;
            first[r.clone()] != later[r]
        })
        .map(|b| AREA + b * BLK as u64)
        .collect();
    assert!(
        changed.is_empty(),
        "{call}: the volume changed after the reply (read {took:?} after it): blocks at {changed:?}"
    );
    let slow: Vec<u32> = (0..16).filter(|t| !acked.contains(t)).collect();
    assert!(
        slow.is_empty(),
        "{call}: writes at the device when the call came were not answered: {slow:?}"
    );
    for &t in acked {
        let at = place(t);
        let i = (at - AREA) as usize;
        assert_eq!(
            later[i..i + BLK],
            pattern(t, at, BLK)[..],
            "{call}: write {t} at {at} was acknowledged but is not on the volume"
        );
    }
}

#[test]
fn nbd_export_remove_with_force_answers_only_once_no_write_of_the_export_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock, nbd, _, _) = daemon(dir.path());
    ok(
        &sock,
        "nbd_export_add",
        json!({"name": "gone", "volume": "v"}),
    );
    let mut side = Client::connect(nbd, "side", false);
    let mut c = Client::connect(nbd, "gone", false);
    for t in 0..16u32 {
        c.send_request(
            cmd::WRITE,
            0,
            t.into(),
            place(t),
            BLK as u32,
            &pattern(t, place(t), BLK),
        );
    }
    // A read answered first: the server has taken the slow writes.
    c.send_request(cmd::READ, 0, 9999, 0, 512, &[]);
    let (cookie, e, _) = c.read_reply(512);
    assert_eq!(
        (cookie, e),
        (9999, 0),
        "the read after the slow writes answered first"
    );
    let mut s = c.stream().try_clone().unwrap();
    let racer = std::thread::spawn(move || {
        let mut r = Client {
            s: s.try_clone().unwrap(),
            size: 0,
        };
        let mut sent = 0;
        for t in 16..16 + RACE_MAX as u32 {
            if r.try_send_request(cmd::WRITE, t.into(), place(t), &pattern(t, place(t), BLK))
                .is_err()
            {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = s.flush();
        sent
    });
    std::thread::sleep(Duration::from_millis(30));
    let (r, answered) = timed(
        &sock,
        "nbd_export_remove",
        json!({"name": "gone", "force": true}),
    );
    let first = at_reply(&mut side, answered);
    assert_eq!(r["closed_connections"], 1, "{r}");
    let sent = racer.join().unwrap();
    let mut acked = HashSet::new();
    c.s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut m = [0u8; 16];
        if std::io::Read::read_exact(&mut c.s, &mut m).is_err() {
            break;
        }
        let e = u32::from_be_bytes(m[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(m[8..16].try_into().unwrap());
        if e == 0 {
            acked.insert(cookie as u32);
        }
    }
    eprintln!(
        "nbd: {sent} racing writes sent, {} writes acknowledged",
        acked.len()
    );
    check(&mut side, first, &acked, "nbd_export_remove");
    drop(d);
}

/// A session of run-time target `TARGET` (LUN 0: `v`) keeps writes at the slow device and
/// more racing while `method` (`params`) closes it.
fn iscsi_case(method: &str, params: Value) {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock, nbd, iscsi, _) = daemon(dir.path());
    ok(&sock, "iscsi_target_add", json!({"iqn": TARGET}));
    ok(
        &sock,
        "iscsi_lun_add",
        json!({"iqn": TARGET, "volume": "v", "lun": 0}),
    );
    let mut side = Client::connect(nbd, "side", false);
    let mut r = Raw::login_target(iscsi, "iqn.2026-11.test:raw", TARGET, false, false);
    let blocks = (BLK / 512) as u16;
    for t in 0..15u32 {
        let at = place(t);
        r.scsi(
            t,
            &write10((at / 512) as u32, blocks),
            BLK as u32,
            0xA0,
            &pattern(t, at, BLK),
        );
    }
    let at = place(15);
    r.write_taken(
        15,
        &write10((at / 512) as u32, blocks),
        &pattern(15, at, BLK),
    );
    let mut racer_raw = Raw {
        s: r.s.try_clone().unwrap(),
        cmd_sn: r.cmd_sn,
        hd: false,
        dd: false,
    };
    let racer = std::thread::spawn(move || {
        let mut sent = 0;
        for t in 17..17 + RACE_MAX as u32 - 1 {
            let at = place(t);
            let mut h = crate::iscsi::bhs(0x01, 0xA0);
            crate::iscsi::put32(&mut h, 16, t);
            crate::iscsi::put32(&mut h, 20, BLK as u32);
            crate::iscsi::put32(&mut h, 24, racer_raw.cmd_sn);
            racer_raw.cmd_sn += 1;
            h[32..42].copy_from_slice(&write10((at / 512) as u32, blocks));
            let f = crate::iscsi::frame(h, &pattern(t, at, BLK), false);
            if racer_raw.s.write_all(&f).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(30));
    let (out, answered) = timed(&sock, method, params);
    let first = at_reply(&mut side, answered);
    assert_eq!(out["closed_connections"], 1, "{out}");
    let sent = racer.join().unwrap();
    r.s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut acked = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Some((h, _)) = r.read_pdu() else { break };
        if h[0] & 0x3F == 0x21 && h[2] == 0 && h[3] == 0 {
            let itt = u32::from_be_bytes(h[16..20].try_into().unwrap());
            if itt != 16 {
                acked.insert(itt);
            }
        }
    }
    eprintln!(
        "iscsi: {sent} racing writes sent, {} writes acknowledged",
        acked.len()
    );
    check(&mut side, first, &acked, method);
    drop(d);
}

#[test]
fn iscsi_lun_remove_with_force_answers_only_once_no_write_of_the_lun_is_left() {
    iscsi_case(
        "iscsi_lun_remove",
        json!({"iqn": TARGET, "lun": 0, "force": true}),
    );
}

#[test]
fn iscsi_lun_add_with_force_answers_only_once_no_write_of_the_closed_sessions_is_left() {
    iscsi_case(
        "iscsi_lun_add",
        json!({"iqn": TARGET, "volume": "w", "lun": 1, "force": true}),
    );
}

#[test]
fn iscsi_target_remove_with_force_answers_only_once_no_write_of_the_target_is_left() {
    iscsi_case("iscsi_target_remove", json!({"iqn": TARGET, "force": true}));
}

/// The command id of write `t` is `CID0 + t` (the client's own commands have low ones).
const CID0: u16 = 2000;

/// An NVMe/TCP command capsule (no digests) for a write of `data` in the capsule as `cid`.
fn write_capsule(cid: u16, at: u64, data: &[u8]) -> Vec<u8> {
    let mut s = Sqe::new(0x01)
        .nsid(1)
        .lba(at / 512, (data.len() / 512) as u32)
        .0;
    s[2..4].copy_from_slice(&cid.to_le_bytes());
    s[24..32].fill(0);
    s[32..36].copy_from_slice(&(data.len() as u32).to_le_bytes());
    s[36..39].fill(0);
    s[39] = 0x01;
    let mut b = vec![4, 0, 72, 72];
    b.extend_from_slice(&((72 + data.len()) as u32).to_le_bytes());
    b.extend_from_slice(&s);
    b.extend_from_slice(data);
    b
}

/// An I/O queue of a controller of run-time subsystem `NQN` (NSID 1: `v`) keeps writes at the
/// slow device and more racing while `method` (`params`) cuts it off `v`, closing
/// `closes` connections.
fn nvmf_case(method: &str, params: Value, closes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock, nbd, _, nvmf) = daemon(dir.path());
    let host = Opts::default().host.nqn;
    ok(
        &sock,
        "nvmf_subsystem_add",
        json!({"nqn": NQN, "allowed_hosts": [host, OTHER_HOST]}),
    );
    ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": NQN, "volume": "v", "nsid": 1}),
    );
    let mut side = Client::connect(nbd, "side", false);
    let ctrl = Controller::connect(nvmf, NQN, &Opts::default()).expect("controller");
    let mut q = ctrl.io_queue(1, 1024).expect("I/O queue");
    let mut s = q.stream().try_clone().unwrap();
    for t in 0..16u32 {
        s.write_all(&write_capsule(
            CID0 + t as u16,
            place(t),
            &pattern(t, place(t), BLK),
        ))
        .unwrap();
    }
    // A read answered first: the target has taken the slow writes.
    let cid = q
        .submit(Sqe::new(0x02).nsid(1).lba(0, 1), &[], 512)
        .unwrap();
    let c = q.complete().expect("the read after the slow writes");
    assert_eq!((c.cid, c.status), (cid, 0), "the read answered first");
    let racer = std::thread::spawn(move || {
        let mut sent = 0;
        for t in 16..16 + RACE_MAX as u32 {
            if let Err(e) = s.write_all(&write_capsule(
                CID0 + t as u16,
                place(t),
                &pattern(t, place(t), BLK),
            )) {
                eprintln!("nvmf: racing write {t} not sent: {e}");
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(30));
    let (out, answered) = timed(&sock, method, params);
    let first = at_reply(&mut side, answered);
    assert_eq!(out["closed_connections"], closes, "{out}");
    let sent = racer.join().unwrap();
    q.stream()
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut acked = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let p = match q.read_pdu() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("nvmf: read ends: {e:#}");
                break;
            }
        };
        if p.kind == 5 {
            let c = &p.header[8..24];
            let cid = u16::from_le_bytes([c[12], c[13]]);
            let st = (u16::from_le_bytes([c[14], c[15]]) >> 1) & 0x7FF;
            if st == 0
                && let Some(t) = cid.checked_sub(CID0)
            {
                acked.insert(u32::from(t));
            }
        }
    }
    eprintln!(
        "nvmf: {sent} racing writes sent, {} writes acknowledged",
        acked.len()
    );
    check(&mut side, first, &acked, method);
    drop(ctrl);
    drop(d);
}

#[test]
fn nvmf_subsystem_remove_with_force_answers_only_once_no_write_of_the_subsystem_is_left() {
    nvmf_case(
        "nvmf_subsystem_remove",
        json!({"nqn": NQN, "force": true}),
        2,
    );
}

#[test]
fn nvmf_namespace_remove_with_force_answers_only_once_no_write_of_the_namespace_is_left() {
    nvmf_case(
        "nvmf_namespace_remove",
        json!({"nqn": NQN, "nsid": 1, "force": true}),
        0,
    );
}

#[test]
fn nvmf_host_disallow_with_force_answers_only_once_no_write_of_the_host_is_left() {
    nvmf_case(
        "nvmf_host_disallow",
        json!({"nqn": NQN, "host": Opts::default().host.nqn, "force": true}),
        2,
    );
}
