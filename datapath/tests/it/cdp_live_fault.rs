//! Faults while CDP is switched on at run time (`cdp_enable`'s catch-up: the whole volume
//! journaled again under load, then a gap record; docs/cdp-format.md, "Enabling and
//! disabling at run time"), against the real daemon with two reactors and a verified load
//! (writers that also read their own part back and check it):
//! - the daemon killed (SIGKILL) mid catch-up: the directory as left refuses every point
//!   after the old end `X` and keeps every earlier point exactly; a start with `[volume.cdp]`
//!   catches up again and the history is whole from its gap record;
//! - the journal's filesystem filling during the catch-up: the volume keeps serving, the
//!   journal is reported degraded, no point after `X` is served, the base is intact;
//! - `cdp_disable` sent during a catch-up: answered (never a hang), the volume serves
//!   throughout, and every point the history serves has the content the volume had then;
//!   sent after `cdp_enable` answered with the catch-up still running, it abandons it.

use crate::cdp::SmallFs;
use crate::harness::{Progress, Server, pattern, wait_progress};
use crate::rawnbd::Client;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twinblk::layer::cdp::format::Op;
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, CdpError, Load};

/// Writers of the load (connections over both reactors), each in its own part.
const WRITERS: usize = 4;

/// One control-socket call; `None` when the daemon went away before answering.
fn rpc(sock: &Path, method: &str, params: serde_json::Value) -> Option<serde_json::Value> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).ok()?;
    let req = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(s, "{req}").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// What one writer did: its acknowledged writes in order, the write it had sent when the
/// connection broke (not acknowledged: either content may be on the volume), reads checked.
struct Part {
    acked: Vec<(u64, Vec<u8>)>,
    pending: Option<(u64, Vec<u8>)>,
    reads: usize,
}

/// A write or read on a raw NBD connection; `None` when the connection broke.
fn request(c: &mut Client, kind: u16, off: u64, data: &[u8], len: usize) -> Option<Vec<u8>> {
    c.send_request(kind, 0, 9, off, len as u32, data);
    let s = c.stream();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    assert_eq!(
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
        0,
        "NBD error"
    );
    let mut d = vec![0u8; if kind == 0 { len } else { 0 }];
    s.read_exact(&mut d).ok()?;
    Some(d)
}

/// A verified load: each writer writes 4 KiB patterns in its part (one request at a time) and
/// every third turn reads one of its part's blocks back and checks it against its own model
/// (its part of `model` plus its acknowledged writes).
struct LoadRun {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Part>>,
    /// Writes acknowledged so far, all writers.
    acked: Progress,
}

/// Writes acknowledged before a test acts under the load ([`LoadRun::running`]).
const BEFORE: usize = 24;

impl LoadRun {
    fn start(addr: SocketAddr, model: &[u8], seed: u64) -> LoadRun {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Progress::default();
        let part = model.len() / WRITERS;
        let threads = (0..WRITERS)
            .map(|w| {
                let stop = Arc::clone(&stop);
                let acked = acked.clone();
                let mut mine = model[w * part..(w + 1) * part].to_vec();
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr, "v", false);
                    let mut p = Part {
                        acked: Vec::new(),
                        pending: None,
                        reads: 0,
                    };
                    let base = (w * part) as u64;
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let rel = (i * 7919 * 4096) % part as u64;
                        let data = pattern(seed + w as u64 * 1_000_000 + i, 4096);
                        p.pending = Some((base + rel, data.clone()));
                        if request(&mut c, 1, base + rel, &data, 4096).is_none() {
                            return p;
                        }
                        p.pending = None;
                        mine[rel as usize..rel as usize + 4096].copy_from_slice(&data);
                        p.acked.push((base + rel, data));
                        acked.tick();
                        if i % 3 == 2 {
                            let r = (i * 104729 * 4096) % part as u64;
                            let Some(got) = request(&mut c, 0, base + r, &[], 4096) else {
                                return p;
                            };
                            assert!(
                                got[..] == mine[r as usize..r as usize + 4096],
                                "writer {w}: a read at {} differs from the acknowledged writes",
                                base + r
                            );
                            p.reads += 1;
                        }
                        i += 1;
                    }
                    c.disconnect();
                    p
                })
            })
            .collect();
        LoadRun {
            stop,
            threads,
            acked,
        }
    }

    /// Wait until the writers have [`BEFORE`] writes acknowledged (a loaded machine makes
    /// them slow: the load is counted, not timed; at most 60 s).
    fn running(self) -> LoadRun {
        let acked = std::slice::from_ref(&self.acked);
        wait_progress(acked, &[0], BEFORE, "before the test acts under load");
        self
    }

    /// Stop (or, after a kill, collect) the writers; their acknowledged writes go into
    /// `model`; the writes sent but not acknowledged are returned.
    fn finish(self, model: &mut [u8]) -> Vec<(u64, Vec<u8>)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut pending = Vec::new();
        let (mut writes, mut reads) = (0, 0);
        for t in self.threads {
            let p = t.join().unwrap();
            writes += p.acked.len();
            reads += p.reads;
            for (o, d) in &p.acked {
                model[*o as usize..*o as usize + d.len()].copy_from_slice(d);
            }
            pending.extend(p.pending);
        }
        assert!(writes >= BEFORE, "the load ran ({writes} writes)");
        eprintln!("load: {writes} writes acknowledged, {reads} reads checked");
        pending
    }
}

/// A volume image of `size` bytes, every 4 KiB block different and none zero; its content.
fn image(path: &Path, size: usize) -> Vec<u8> {
    let base = pattern(77, 1 << 20);
    let mut model = Vec::with_capacity(size);
    for _ in 0..size >> 20 {
        model.extend_from_slice(&base);
    }
    for (b, block) in model.chunks_mut(4096).enumerate() {
        block[..8].copy_from_slice(&(b as u64 + 1).to_le_bytes());
    }
    std::fs::write(path, &model).unwrap();
    model
}

fn config(img: &Path, size: usize) -> String {
    format!(
        "[reactor]\ncores=[0,1]\npin=false\n[[volume]]\nname='v'\nbackend='uring'\npath='{}'\n\
         size={size}\nblock_size=4096\n",
        img.display()
    )
}

/// Write `n` 64 KiB patterns (into the model too).
fn writes(c: &mut Client, model: &mut [u8], seed: u64, n: u64) {
    let stride = model.len() as u64 / n;
    for i in 0..n {
        let off = i * stride + 8192;
        let data = pattern(seed + i, 65536);
        assert_eq!(c.write(off, &data), 0);
        model[off as usize..off as usize + 65536].copy_from_slice(&data);
    }
}

/// The whole volume, read in 16 MiB requests.
pub(crate) fn read_all(c: &mut Client, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    for o in (0..size).step_by(16 << 20) {
        let n = (size - o).min(16 << 20);
        v.extend_from_slice(&c.read(o as u64, n as u32).unwrap());
    }
    v
}

/// A bookmark now; returned once the window reaches it.
fn bookmark(sock: &Path, name: &str) -> u64 {
    let r = rpc(
        sock,
        "cdp_bookmark",
        serde_json::json!({"volume": "v", "name": name}),
    )
    .unwrap();
    let t = r["result"]["time_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("{r}"));
    let start = Instant::now();
    while status(sock)["window_end_ns"].as_u64().unwrap_or(0) < t {
        assert!(
            start.elapsed() < crate::harness::PATIENCE,
            "the window does not reach {t}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t
}

fn status(sock: &Path) -> serde_json::Value {
    rpc(sock, "cdp_status", serde_json::Value::Null).unwrap()["result"][0].clone()
}

fn at(dir: &Path, p: Point, size: usize) -> Result<Vec<u8>, CdpError> {
    let h = store::load(dir, Load::ReadOnly)?;
    pit::read_at(&h, p, 0, size as u64)
}

/// `cdp_enable` on its own thread (it answers once the catch-up ended).
fn enable_async(sock: &Path, dir: &Path) -> JoinHandle<Option<serde_json::Value>> {
    let sock = sock.to_path_buf();
    let d = dir.display().to_string();
    std::thread::spawn(move || {
        rpc(
            &sock,
            "cdp_enable",
            serde_json::json!({"volume": "v", "dir": d, "segment_size": "16MiB"}),
        )
    })
}

/// Wait until the catch-up has journaled at least `bytes` (status `journal_bytes`) while
/// still catching up; false if `cdp_enable` answered first (at most [`PATIENCE`]: a loaded
/// machine journals slowly, and a catch-up cut short by the deadline is not one that ended).
///
/// [`PATIENCE`]: crate::harness::PATIENCE
fn wait_catching_up(sock: &Path, bytes: u64, en: &JoinHandle<Option<serde_json::Value>>) -> bool {
    let t = Instant::now();
    while t.elapsed() < crate::harness::PATIENCE && !en.is_finished() {
        let st = status(sock);
        if st["catching_up"] == true && st["journal_bytes"].as_u64().unwrap_or(0) >= bytes {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// `twinblk cdp restore --dir DIR POINT.. --out OUT`.
fn restore_cli(dir: &Path, point: &[&str], out: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_twinblk"))
        .args(["cdp", "restore"])
        .args(point)
        .arg("--dir")
        .arg(dir)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// Every point after `x` is refused as "not whole", naming `x`.
fn refused_after(dir: &Path, x: u64, size: usize) {
    let h = store::load(dir, Load::ReadOnly).unwrap();
    assert_eq!(h.open_gap.map(|g| g.0), Some(x), "degraded.map names X");
    // A time after the history's last record is outside its window (refused too).
    let now = twinblk::layer::cdp::clock::now();
    let r = pit::read_at(&h, Point::Time(now), 0, 4096);
    assert!(r.is_err(), "now: {:?}", r.map(|_| "served"));
    let mut points = vec![Point::Seq(x + 1)];
    if h.last_seq > x {
        points.extend([Point::Seq(h.last_seq), Point::Time(h.last_time)]);
    }
    for p in points {
        match pit::read_at(&h, p, 0, size as u64) {
            Err(e @ CdpError::NotWhole { .. }) => {
                assert!(e.to_string().contains(&format!("sequence {x}")), "{e}")
            }
            r => panic!("{p:?} after X={x}: {:?}", r.map(|_| "served")),
        }
    }
}

/// The daemon killed mid catch-up, then started with `[volume.cdp]`: see the module's list.
#[test]
fn a_kill_during_the_catch_up_refuses_points_after_x_and_the_restart_makes_it_whole() {
    const SIZE: usize = 256 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("v.img");
    let dir = tmp.path().join("j");
    let mut model = image(&img, SIZE);
    let s = Server::start(tmp.path(), &config(&img, SIZE));
    let sock = s.socket.clone();
    let mut c = Client::connect(s.addr, "v", false);
    // A history with points before X: on (a first catch-up), written, bookmarked, off.
    let t = Instant::now();
    let r = enable_async(&sock, &dir).join().unwrap().unwrap();
    assert!(r["error"].is_null(), "{r}");
    eprintln!("first catch-up of {} MiB: {:?}", SIZE >> 20, t.elapsed());
    writes(&mut c, &mut model, 100, 8);
    let t1 = bookmark(&sock, "b1");
    let at_t1 = model.clone();
    writes(&mut c, &mut model, 200, 8);
    let r = rpc(&sock, "cdp_disable", serde_json::json!({"volume": "v"})).unwrap();
    assert!(r["error"].is_null(), "{r}");
    let x = r["result"]["last_seq"].as_u64().unwrap();
    let end = r["result"]["window_end_ns"].as_u64().unwrap();
    let at_end = model.clone();
    let before: Vec<(Point, u32)> = [
        (Point::Time(t1), &at_t1),
        (Point::Time(end), &at_end),
        (Point::Seq(x), &at_end),
    ]
    .into_iter()
    .map(|(p, want)| {
        let got = at(&dir, p, SIZE).unwrap();
        assert!(got == *want, "{p:?} before the enable");
        (p, twinblk::checksum::crc32c(&got))
    })
    .collect();
    writes(&mut c, &mut model, 300, 8);
    // On again under load; killed mid catch-up.
    let load = LoadRun::start(s.addr, &model, 5000).running();
    let en = enable_async(&sock, &dir);
    let mid = wait_catching_up(&sock, (SIZE / 4) as u64, &en);
    let mut s = s;
    s.kill();
    assert!(
        mid,
        "the catch-up ended before the kill: make the volume larger"
    );
    let pending = load.finish(&mut model);
    let r = en.join().unwrap();
    assert!(r.is_none(), "cdp_enable answered before the kill: {r:?}");
    // The directory as the kill left it.
    refused_after(&dir, x, SIZE);
    for (p, crc) in &before {
        let got = at(&dir, *p, SIZE).unwrap();
        assert_eq!(twinblk::checksum::crc32c(&got), *crc, "{p:?} changed");
    }
    // The same through `twinblk cdp restore`: after X refused, nothing written; X exact.
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let out = tmp.path().join("restored");
    let o = restore_cli(&dir, &["--seq", &h.last_seq.to_string()], &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(&format!("whole only up to sequence {x}")),
        "{err}"
    );
    assert!(!out.exists(), "a refused restore wrote {}", out.display());
    let o = restore_cli(&dir, &["--seq", &x.to_string()], &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == at_end, "restored X");
    std::fs::remove_file(&out).unwrap();
    // A start with [volume.cdp]: caught up again, whole from its gap record.
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!(
            "{text}[volume.cdp]\ndir='{}'\nsegment_size='16MiB'\n",
            dir.display()
        ),
    )
    .unwrap();
    let t = Instant::now();
    let s = s.respawn();
    eprintln!("restart with the catch-up: {:?}", t.elapsed());
    let st = status(&s.socket);
    assert_eq!(st["journal"], "running", "{st}");
    assert_eq!(st["catching_up"], false, "{st}");
    let mut c = Client::connect(s.addr, "v", false);
    let vol = read_all(&mut c, SIZE);
    for (o, d) in &pending {
        let r = *o as usize..*o as usize + d.len();
        assert!(
            vol[r.clone()] == model[r.clone()] || vol[r.clone()] == d[..],
            "the write at {o} in flight at the kill left other content"
        );
        model[r.clone()].copy_from_slice(&vol[r]);
    }
    assert!(vol == model, "the volume holds every acknowledged write");
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert_eq!(h.open_gap, None, "whole again");
    let gaps: Vec<_> = h.entries().filter(|(_, e)| e.op == Op::Gap).collect();
    let (gap, last) = (gaps.last().unwrap().1.seq, gaps.last().unwrap().1.offset);
    assert_eq!(last, x, "the restart's gap record names X");
    assert!(pit::read_at(&h, Point::Seq(gap), 0, SIZE as u64).unwrap() == model);
    assert!(matches!(
        pit::read_at(&h, Point::Seq(x + 1), 0, 4096),
        Err(CdpError::InGap { .. })
    ));
    for (p, crc) in &before {
        let got = pit::read_at(&h, *p, 0, SIZE as u64).unwrap();
        assert_eq!(
            twinblk::checksum::crc32c(&got),
            *crc,
            "{p:?} changed by the restart"
        );
    }
    writes(&mut c, &mut model, 400, 8);
    let t3 = bookmark(&s.socket, "after");
    assert!(
        at(&dir, Point::Time(t3), SIZE).unwrap() == model,
        "after the restart"
    );
    c.disconnect();
}

/// The journal's filesystem fills during the catch-up: see the module's list.
#[test]
fn a_catch_up_that_fills_the_journal_device_degrades_and_the_volume_keeps_serving() {
    const SIZE: usize = 64 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let fs = SmallFs::mount(&tmp.path().join("small"), "24m");
    let dir = fs.0.join("j");
    let img = tmp.path().join("v.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(SIZE as u64)
        .unwrap();
    let mut model = vec![0u8; SIZE];
    let s = Server::start(tmp.path(), &config(&img, SIZE));
    let sock = s.socket.clone();
    let mut c = Client::connect(s.addr, "v", false);
    writes(&mut c, &mut model, 10, 8);
    // A first history (the volume mostly zeroes: its catch-up is small), then off.
    let r = enable_async(&sock, &dir).join().unwrap().unwrap();
    assert!(r["error"].is_null(), "{r}");
    writes(&mut c, &mut model, 20, 8);
    let t1 = bookmark(&sock, "b1");
    let at_t1 = model.clone();
    let r = rpc(&sock, "cdp_disable", serde_json::json!({"volume": "v"})).unwrap();
    assert!(r["error"].is_null(), "{r}");
    let x = r["result"]["last_seq"].as_u64().unwrap();
    assert!(at(&dir, Point::Seq(x), SIZE).unwrap() == model);
    let at_x = model.clone();
    // While off, the volume fills with data: its catch-up needs more than the filesystem.
    for i in 0..(SIZE >> 20) as u64 {
        let data = pattern(i + 900, 1 << 20);
        assert_eq!(c.write(i << 20, &data), 0);
        model[(i as usize) << 20..((i as usize) + 1) << 20].copy_from_slice(&data);
    }
    // Ballast, removed after the failure so that views and bookmarks find room.
    let ballast = fs.0.join("ballast");
    std::fs::write(&ballast, vec![1u8; 1 << 20]).unwrap();
    let load = LoadRun::start(s.addr, &model, 7000).running();
    let r = enable_async(&sock, &dir).join().unwrap().unwrap();
    let msg = r["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("journaling the volume again failed")
            && msg.contains(&format!("sequence {x}")),
        "{r}"
    );
    eprintln!("cdp_enable: {msg}");
    std::thread::sleep(Duration::from_millis(200));
    let pending = load.finish(&mut model);
    assert!(pending.is_empty());
    let st = status(&sock);
    assert_eq!(st["journal"], "degraded", "{st}");
    assert_eq!(st["catching_up"], false, "{st}");
    // The volume served every write and holds them; it still takes more.
    assert!(read_all(&mut c, SIZE) == model, "the volume");
    writes(&mut c, &mut model, 30, 8);
    assert!(read_all(&mut c, SIZE) == model, "the volume after");
    // The history: exact up to X, refused after.
    refused_after(&dir, x, SIZE);
    assert!(at(&dir, Point::Time(t1), SIZE).unwrap() == at_t1, "b1");
    assert!(at(&dir, Point::Seq(x), SIZE).unwrap() == at_x, "X");
    std::fs::remove_file(&ballast).unwrap();
    // Views through the daemon: after X refused, X served exactly.
    let last = store::load(&dir, Load::ReadOnly).unwrap().last_seq;
    assert!(
        last > x,
        "the catch-up journaled some chunks before the device filled"
    );
    let view = |seq: u64| {
        let port = crate::harness::free_port();
        let r = rpc(
            &sock,
            "cdp_view_open",
            serde_json::json!({"volume": "v", "seq": seq, "nbd": format!("127.0.0.1:{port}")}),
        )
        .unwrap();
        (r, port)
    };
    let (r, _) = view(last);
    let m = r["error"]["message"].as_str().unwrap_or("");
    assert!(m.contains(&format!("whole only up to sequence {x}")), "{r}");
    let (r, port) = view(x);
    assert!(r["error"].is_null(), "{r}");
    let va: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut vc = Client::connect(va, "view", false);
    assert!(read_all(&mut vc, SIZE) == at_x, "the view at X");
    vc.disconnect();
    let r = rpc(
        &sock,
        "cdp_view_close",
        serde_json::json!({"id": r["result"]["id"]}),
    )
    .unwrap();
    assert!(r["error"].is_null(), "{r}");
    let b = rpc(
        &sock,
        "cdp_bookmark",
        serde_json::json!({"volume": "v", "name": "late"}),
    );
    // The journal is stopped (degraded): a bookmark now would name a point after X, which
    // cannot be restored, so it is refused, saying why.
    eprintln!("a bookmark after the failure: {b:?}");
    let b = b.unwrap();
    let e = b["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        e.contains("is stopped") && e.contains("no point after its stop can be restored"),
        "a bookmark while the journal is stopped is refused: {b}"
    );
    {
        let out = tmp.path().join("late");
        let after_x = (x + 1).to_string();
        let o = restore_cli(&dir, &["--seq", &after_x], &out);
        let err = String::from_utf8_lossy(&o.stderr);
        eprintln!("restore --seq X+1: {err}");
        assert!(
            !o.status.success() && err.contains(&format!("whole only up to sequence {x}")),
            "{err}"
        );
        assert!(!out.exists());
    }
    // Switched off after the failure: answered, and nothing after X is served still.
    let r = rpc(&sock, "cdp_disable", serde_json::json!({"volume": "v"})).unwrap();
    eprintln!("cdp_disable after the failure: {r}");
    refused_after(&dir, x, SIZE);
    c.disconnect();
    let mut s = s;
    assert!(s.stop(), "clean stop");
    assert!(std::fs::read(&img).unwrap() == model, "the volume's file");
    drop(fs);
}

/// `cdp_disable` sent while a catch-up runs: see the module's list. Run-time changes are
/// one at a time (the admin lock) and `cdp_enable` holds it until its catch-up ends (or for
/// its `wait`, 120 s here), so here the disable is answered after the enable, once the history
/// is whole; a disable that reaches a catch-up still running (the enable answered first,
/// `wait: 0`) is the next test's.
#[test]
fn cdp_disable_during_a_catch_up_is_answered_and_every_served_point_is_exact() {
    const SIZE: usize = 256 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("v.img");
    let dir = tmp.path().join("j");
    let mut model = image(&img, SIZE);
    let s = Server::start(tmp.path(), &config(&img, SIZE));
    let sock = s.socket.clone();
    let load = LoadRun::start(s.addr, &model, 11000).running();
    let en = enable_async(&sock, &dir);
    let mid = wait_catching_up(&sock, (SIZE / 8) as u64, &en);
    assert!(
        mid,
        "the catch-up ended before the disable: make the volume larger"
    );
    let pending = load.finish(&mut model);
    assert!(pending.is_empty());
    // One writer to blocks never written before, in order, while the disable runs.
    let stop = Arc::new(AtomicBool::new(false));
    let region = (SIZE - (16 << 20)) as u64;
    let untouched = model[region as usize..].to_vec();
    let w = {
        let stop = Arc::clone(&stop);
        let addr = s.addr;
        std::thread::spawn(move || {
            let mut c = Client::connect(addr, "v", false);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && n < 4096 {
                assert_eq!(c.write(region + n * 4096, &pattern(n + 50_000, 4096)), 0);
                n += 1;
            }
            c.disconnect();
            n
        })
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let sock2 = sock.clone();
    let sent = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(rpc(
            &sock2,
            "cdp_disable",
            serde_json::json!({"volume": "v"}),
        ));
    });
    let dis = rx
        .recv_timeout(Duration::from_secs(25))
        .expect("cdp_disable answered within 25 s")
        .expect("an answer");
    eprintln!("cdp_disable answered after {:?}: {dis}", sent.elapsed());
    let en = en.join().unwrap().expect("cdp_enable answered");
    eprintln!("cdp_enable: {en}");
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let n = w.join().unwrap();
    for i in 0..n {
        let o = (region + i * 4096) as usize;
        model[o..o + 4096].copy_from_slice(&pattern(i + 50_000, 4096));
    }
    let mut c = Client::connect(s.addr, "v", false);
    assert!(read_all(&mut c, SIZE) == model, "the volume");
    c.disconnect();
    // Every point served: the writer's blocks are a prefix of its writes, the rest exact.
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let check = |p: Point| match pit::read_at(&h, p, 0, SIZE as u64) {
        Ok(got) => {
            let r = region as usize;
            assert!(got[..r] == model[..r], "{p:?} outside the writer's region");
            let k = (0..n as usize)
                .take_while(|&i| {
                    got[r + i * 4096..r + (i + 1) * 4096] == model[r + i * 4096..r + (i + 1) * 4096]
                })
                .count();
            assert!(
                got[r + k * 4096..] == untouched[k * 4096..],
                "{p:?}: the writer's blocks are not a prefix of its writes"
            );
            eprintln!("{p:?}: served, {k} of the writer's {n} writes in it");
        }
        Err(e) => eprintln!("{p:?}: refused: {e}"),
    };
    check(Point::Seq(h.last_seq));
    check(Point::Time(twinblk::layer::cdp::clock::now()));
    if let Some(g) = en["result"]["gap_seq"].as_u64() {
        check(Point::Seq(g));
    }
    drop(s);
}

/// `cdp_enable` with `wait: 0` answers at once, the catch-up still running under a verified
/// load; meanwhile a second enable and a bookmark are refused and `cdp_status` shows the
/// progress. `cdp_disable` then abandons the catch-up: answered, the volume keeps serving
/// every acknowledged write, the journal is off, and the new history (`X = 0`) serves no
/// point. Switched on again (waiting this time) it catches up whole and its point is the
/// volume. Bad `wait` values are refused first, changing nothing.
#[test]
fn a_cdp_disable_after_the_enable_answered_abandons_the_catch_up_and_refuses_its_points() {
    const SIZE: usize = 256 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("v.img");
    let dir = tmp.path().join("j");
    let d = dir.display().to_string();
    let mut model = image(&img, SIZE);
    let s = Server::start(tmp.path(), &config(&img, SIZE));
    let sock = s.socket.clone();
    for bad in [
        serde_json::json!(-1),
        serde_json::json!("1"),
        serde_json::json!(3601),
    ] {
        let r = rpc(
            &sock,
            "cdp_enable",
            serde_json::json!({"volume": "v", "dir": d, "wait": bad}),
        )
        .unwrap();
        let msg = r["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains("\"wait\" must be"), "wait {bad}: {r}");
    }
    assert!(status(&sock).is_null(), "nothing changed");
    let load = LoadRun::start(s.addr, &model, 21000).running();
    let r = rpc(
        &sock,
        "cdp_enable",
        serde_json::json!({"volume": "v", "dir": d, "segment_size": "16MiB", "wait": 0}),
    )
    .unwrap();
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(r["result"]["catching_up"], true, "{r}");
    assert!(
        r["result"]["note"]
            .as_str()
            .unwrap()
            .contains("still journaling the volume again"),
        "{r}"
    );
    let t = Instant::now();
    while status(&sock)["journal_bytes"].as_u64().unwrap_or(0) < (SIZE / 8) as u64 {
        assert!(t.elapsed() < Duration::from_secs(20), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = status(&sock);
    assert_eq!(
        st["catching_up"], true,
        "the catch-up ended before the disable: make the volume larger ({st})"
    );
    let again = rpc(
        &sock,
        "cdp_enable",
        serde_json::json!({"volume": "v", "dir": d}),
    )
    .unwrap();
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("already on"),
        "{again}"
    );
    let b = rpc(
        &sock,
        "cdp_bookmark",
        serde_json::json!({"volume": "v", "name": "early"}),
    )
    .unwrap();
    assert!(b["error"].is_object(), "a bookmark while catching up: {b}");
    let sent = Instant::now();
    let dis = rpc(&sock, "cdp_disable", serde_json::json!({"volume": "v"})).unwrap();
    eprintln!("cdp_disable answered after {:?}: {dis}", sent.elapsed());
    assert!(dis["error"].is_null(), "{dis}");
    assert_eq!(dis["result"]["whole_until_seq"], 0, "{dis}");
    assert!(
        dis["result"]["note"]
            .as_str()
            .unwrap()
            .contains("never whole"),
        "{dis}"
    );
    let st = status(&sock);
    assert_eq!(st["journal"], "off", "{st}");
    assert_eq!(st["catching_up"], false, "{st}");
    let pending = load.finish(&mut model);
    assert!(pending.is_empty());
    let mut c = Client::connect(s.addr, "v", false);
    assert!(read_all(&mut c, SIZE) == model, "the volume");
    // A new history whose catch-up was abandoned: whole only up to X = 0, so no point.
    refused_after(&dir, 0, SIZE);
    // On again, waiting for the catch-up: whole, and its point is the volume.
    writes(&mut c, &mut model, 22000, 16);
    let r = rpc(
        &sock,
        "cdp_enable",
        serde_json::json!({"volume": "v", "dir": d}),
    )
    .unwrap();
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(r["result"]["catching_up"], false, "{r}");
    let t = bookmark(&sock, "whole");
    assert!(
        at(&dir, Point::Time(t), SIZE).unwrap() == model,
        "the point after the catch-up"
    );
    c.disconnect();
    drop(s);
}
