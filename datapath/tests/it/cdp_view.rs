//! Point-in-time views (`twinblk cdp view`, docs/cdp-format.md "Views"): a volume's or a
//! group's past served without a copy over NBD, NVMe/TCP and iSCSI, read-only or as a sandbox,
//! and how an open view holds consolidation.

use crate::cdp::{NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES, Upd, expected, last, segment_files, volume};
use crate::harness::{in_process_with, pattern};
use crate::rawnbd::Client;
use std::path::Path;
use std::time::{Duration, Instant};
use twinblk::layer::cdp::format::Op;
use twinblk::layer::cdp::pit::Point;
use twinblk::layer::cdp::store::{self, Load};

/// A view process (`twinblk cdp view`) and the time from its start to its endpoints printed.
struct View {
    child: std::process::Child,
    opened: Duration,
}

impl View {
    fn start(args: &[String]) -> View {
        use std::io::BufRead;
        let t = Instant::now();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_twinblk"))
            .arg("cdp")
            .arg("view")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("twinblk cdp view");
        let out = child.stdout.take().unwrap();
        for line in std::io::BufReader::new(out).lines() {
            let line = line.expect("the view's output");
            if line.contains("Ctrl-C") {
                return View {
                    child,
                    opened: t.elapsed(),
                };
            }
        }
        let st = child.wait().unwrap();
        panic!("the view stopped before serving: {st}");
    }

    fn stop(mut self) {
        // SIGTERM: the daemon stops cleanly (and drops its hold).
        // SAFETY: plain syscall on a child we spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        assert!(st.success(), "the view stopped with {st}");
    }
}

impl Drop for View {
    /// A test that fails with a view open must not leave the process behind (it would keep
    /// serving, and hold the test runner's output open). Stopped already: nothing to do.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A digest of a CDP directory, to show that a view changed nothing in it: each file's
/// CRC32C, but a segment's is the CRC32C of its length and of its records other than time
/// marks (the live daemon rewrites an idle journal's last mark in place every second,
/// `journal::MARK_EVERY`: a digest of the raw file failed the test whenever it ran longer).
fn dir_digest(dir: &Path) -> Vec<(String, u32)> {
    use twinblk::layer::cdp::format::REC_HEADER;
    let h = store::load(dir, Load::ReadOnly).expect("history");
    let mut v: Vec<(String, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        // The consolidation lock is an empty file a view may create (view.rs); `done` is the
        // running daemon's done watermark, which moves with its time marks (ignored below).
        .filter(|e| {
            e.file_type().unwrap().is_file()
                && e.file_name() != "consolidate.lock"
                && e.file_name() != twinblk::layer::cdp::done::FILE
        })
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            let seg = h
                .segments
                .iter()
                .find(|s| store::seg_path(dir, s.header.segno) == e.path());
            let crc = match seg {
                None => twinblk::checksum::crc32c(&bytes),
                Some(s) => s.index.entries.iter().filter(|r| r.op != Op::Mark).fold(
                    twinblk::checksum::crc32c(&(bytes.len() as u64).to_le_bytes()),
                    |c, r| {
                        let payload = if r.op == Op::Write { r.len as usize } else { 0 };
                        let at = r.pos as usize;
                        twinblk::checksum::crc32c_append(c, &bytes[at..at + REC_HEADER + payload])
                    },
                ),
            };
            (e.file_name().to_string_lossy().into_owned(), crc)
        })
        .collect();
    v.sort();
    v
}

/// A point in time is served, without a copy, by a view process over NBD, NVMe/TCP and iSCSI with
/// exactly the content the volume had then (the restore's content, checked against the
/// workload's log); a read-only view refuses writes; a sandbox takes writes and reads them back
/// while the history and the live volume stay untouched, and a new view of the same point
/// shows the original again. Consolidation does not pass an open view's point.
#[test]
fn a_view_serves_a_point_over_nbd_nvme_and_iscsi_and_a_sandbox_never_touches_the_history() {
    use twinblk_tools::nvmf::{Controller, Sqe};
    const SIZE: usize = 2 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let (mut d, addr) = in_process_with(
        "cores=[0]\nwait='adaptive'",
        &volume("v", SIZE as u64, &dir, "4MiB"),
    );
    let mut c = Client::connect(addr, "v", false);
    let mut log: Vec<(usize, Upd, u64)> = Vec::new();
    for i in 0..24u64 {
        let off = (i * 13 % 60) * 16384;
        let upd = if i == 9 {
            Upd::Zero(off, 64 << 10)
        } else {
            Upd::Write(off, pattern(i + 4000, 4096 * (1 + (i as usize * 5) % 12)))
        };
        let err = match &upd {
            Upd::Write(o, data) => c.write(*o, data),
            Upd::Zero(o, l) => {
                c.send_request(NBD_CMD_WRITE_ZEROES, 0, 9, *o, *l as u32, &[]);
                c.read_reply(0).1
            }
        };
        assert_eq!(err, 0, "update {i}");
        log.push((0, upd, last(&dir).1));
    }
    let t = log[15].2;
    let want = expected(&log, 0, t, SIZE);
    let live = c.read(0, SIZE as u32).unwrap();
    assert!(live != want, "the point differs from now");
    let before = dir_digest(&dir);
    let (nbd, nvmf, iscsi) = (
        crate::harness::free_port(),
        crate::harness::free_port(),
        crate::harness::free_port(),
    );
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--dir".into(),
            dir.display().to_string(),
            "--time".into(),
            t.to_string(),
            "--nbd".into(),
            format!("127.0.0.1:{nbd}"),
            "--nvmf".into(),
            format!("127.0.0.1:{nvmf}"),
            "--iscsi".into(),
            format!("127.0.0.1:{iscsi}"),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // Read-only: NBD and NVMe/TCP read the point; writes are refused.
    let v = View::start(&args(&[]));
    eprintln!("read-only view open in {:?}", v.opened);
    let holds = std::fs::read_dir(dir.join("view-holds")).unwrap().count();
    assert_eq!(holds, 1, "the view holds consolidation");
    let nbd_addr: std::net::SocketAddr = format!("127.0.0.1:{nbd}").parse().unwrap();
    let mut r = Client::connect(nbd_addr, "view", false);
    assert!(
        r.read(0, SIZE as u32).unwrap() == want,
        "NBD reads the point"
    );
    assert_ne!(
        r.write(0, &pattern(1, 4096)),
        0,
        "a read-only view refuses writes"
    );
    r.disconnect();
    let ctrl = Controller::connect(
        format!("127.0.0.1:{nvmf}").parse().unwrap(),
        "nqn.2026-11.io.twinblk:view",
        &crate::nvmf_fused_resv::host(7),
    )
    .unwrap();
    let mut q = ctrl.io_queue(1, 4).unwrap();
    let mut got = Vec::new();
    for blk in 0..(SIZE / (128 << 10)) as u64 {
        let lba = blk * (128 << 10) / 4096;
        let r = q
            .cmd(Sqe::new(0x02).nsid(1).lba(lba, 32), &[], 128 << 10)
            .unwrap();
        assert_eq!(r.status, 0);
        got.extend_from_slice(&r.data);
    }
    assert!(got == want, "NVMe/TCP reads the point");
    drop(q);
    drop(ctrl);
    // iSCSI: QEMU's initiator (libiscsi) copies the whole LUN out.
    let out = tmp.path().join("view-over-iscsi.img");
    crate::harness::run(
        crate::iscsi::qemu_with_iscsi("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(format!(
                "iscsi://127.0.0.1:{iscsi}/iqn.2026-11.io.twinblk:view/0"
            ))
            .arg(&out),
    );
    assert!(
        std::fs::read(&out).unwrap() == want,
        "iSCSI reads the point"
    );
    v.stop();
    assert_eq!(
        std::fs::read_dir(dir.join("view-holds")).unwrap().count(),
        0,
        "the hold is gone with the view"
    );
    // Sandbox: writes read back; the history and the live volume are untouched.
    let v = View::start(&args(&["--sandbox"]));
    let mut s = Client::connect(nbd_addr, "view", false);
    let mine = pattern(77, 64 << 10);
    assert_eq!(s.write(8192, &mine), 0);
    s.send_request(NBD_CMD_TRIM, 0, 9, 1 << 20, 32768, &[]);
    assert_eq!(s.read_reply(0).1, 0);
    let mut sandboxed = want.clone();
    sandboxed[8192..8192 + mine.len()].copy_from_slice(&mine);
    sandboxed[1 << 20..(1 << 20) + 32768].fill(0);
    assert!(
        s.read(0, SIZE as u32).unwrap() == sandboxed,
        "the sandbox's writes read back"
    );
    s.disconnect();
    v.stop();
    assert_eq!(dir_digest(&dir), before, "nothing of the history changed");
    assert!(
        c.read(0, SIZE as u32).unwrap() == live,
        "the live volume did not change"
    );
    let v = View::start(&args(&[]));
    let mut r = Client::connect(nbd_addr, "view", false);
    assert!(
        r.read(0, SIZE as u32).unwrap() == want,
        "a new view shows the point again"
    );
    r.disconnect();
    v.stop();
    c.disconnect();
    d.stop();
}

/// A group's view served by one `twinblk cdp view` process over NVMe/TCP and iSCSI: each
/// volume of a two-volume group is its own subsystem (`nqn.2026-11.io.twinblk:NAME`, its
/// namespace 1) and its own target (`iqn.2026-11.io.twinblk:NAME`, LUN 0); both show exactly
/// the content they had at the same moment (one volume's write at that time is in, the other
/// volume's next write, a moment later, is not), writes made afterwards (before and while the
/// view is open) are not seen, and the read-only view refuses an NVMe write.
#[test]
fn a_groups_view_serves_both_volumes_at_one_moment_over_nvme_and_iscsi() {
    use twinblk_tools::nvmf::Controller;
    const SIZES: [usize; 2] = [1 << 20, 2 << 20];
    let tmp = tempfile::tempdir().unwrap();
    let dirs = [tmp.path().join("ja"), tmp.path().join("jb")];
    let names = ["ga", "gb"];
    let (mut d, addr) = in_process_with(
        "cores=[0]\nwait='adaptive'",
        &format!(
            "{}{}",
            volume(names[0], SIZES[0] as u64, &dirs[0], "4MiB"),
            volume(names[1], SIZES[1] as u64, &dirs[1], "4MiB")
        ),
    );
    let mut cs = names.map(|n| Client::connect(addr, n, false));
    let mut log: Vec<(usize, Upd, u64)> = Vec::new();
    let write = |log: &mut Vec<(usize, Upd, u64)>, cs: &mut [Client; 2], v: usize, i: u64| {
        let off = (i * 7 % 15) * 65536 + v as u64 * (i % 3) * 4096;
        let data = pattern(i * 2 + v as u64 + 6000, 4096 * (1 + (i as usize % 8)));
        assert_eq!(cs[v].write(off, &data), 0, "volume {v}, write {i}");
        log.push((v, Upd::Write(off, data), last(&dirs[v]).1));
    };
    // Interleaved: a, b, a, b, ... The cut is the time of volume a's write 7: it holds a's
    // writes 0..=7 and b's writes 0..=6 (b's write 7 comes after it).
    let mut t = 0;
    for i in 0..12u64 {
        write(&mut log, &mut cs, 0, i);
        if i == 7 {
            t = log.last().unwrap().2;
        }
        write(&mut log, &mut cs, 1, i);
    }
    let want: Vec<Vec<u8>> = (0..2).map(|v| expected(&log, v, t, SIZES[v])).collect();
    for v in 0..2 {
        assert!(
            want[v] != expected(&log, v, u64::MAX, SIZES[v]),
            "later writes changed volume {v}"
        );
    }
    assert!(
        want[0] != expected(&log, 0, t - 1, SIZES[0]),
        "volume a's write at the cut changed it: the view must show it"
    );
    let (nvmf, iscsi) = (crate::harness::free_port(), crate::harness::free_port());
    let mut args: Vec<String> = Vec::new();
    for (dir, n) in dirs.iter().zip(names) {
        args.extend([
            "--dir".into(),
            dir.display().to_string(),
            "--name".into(),
            n.into(),
        ]);
    }
    args.extend([
        "--time".into(),
        t.to_string(),
        "--nbd".into(),
        String::new(),
        "--nvmf".into(),
        format!("127.0.0.1:{nvmf}"),
        "--iscsi".into(),
        format!("127.0.0.1:{iscsi}"),
    ]);
    let view = View::start(&args);
    // One more write to each live volume while the view is open: not seen either.
    for v in 0..2 {
        write(&mut log, &mut cs, v, 12);
    }
    for (v, n) in names.iter().enumerate() {
        // NVMe/TCP: the volume's own subsystem, namespace 1.
        let mut ctrl = Controller::connect(
            format!("127.0.0.1:{nvmf}").parse().unwrap(),
            &format!("nqn.2026-11.io.twinblk:{n}"),
            &crate::nvmf_fused_resv::host(8),
        )
        .unwrap();
        assert_eq!(ctrl.active_ns().unwrap(), vec![1], "{n}: one namespace");
        let ns = ctrl.ns_info(1).unwrap();
        assert_eq!(
            (ns.blocks * ns.block_size as u64, ns.block_size),
            (SIZES[v] as u64, 4096),
            "{n}: the namespace is the volume"
        );
        let mut q = ctrl.io_queue(1, 4).unwrap();
        let mut got = Vec::new();
        for blk in 0..(SIZES[v] / (128 << 10)) as u64 {
            got.extend(q.read(1, blk * 32, 32, 4096).unwrap());
        }
        assert!(got == want[v], "NVMe/TCP reads {n} at the group's moment");
        assert!(
            q.write(1, 0, &pattern(1, 4096), 4096, false).is_err(),
            "{n}: a read-only view refuses an NVMe write"
        );
        drop(q);
        drop(ctrl);
        // iSCSI: the volume's own target, LUN 0, copied out by QEMU's initiator (libiscsi).
        let out = tmp.path().join(format!("{n}-over-iscsi.img"));
        crate::harness::run(
            crate::iscsi::qemu_with_iscsi("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw"])
                .arg(format!(
                    "iscsi://127.0.0.1:{iscsi}/iqn.2026-11.io.twinblk:{n}/0"
                ))
                .arg(&out),
        );
        assert!(
            std::fs::read(&out).unwrap() == want[v],
            "iSCSI reads {n} at the group's moment"
        );
    }
    view.stop();
    for c in cs {
        c.disconnect();
    }
    d.stop();
}

/// An open view holds consolidation at its point (the base copy would otherwise be rewritten
/// under it); once the view is closed, retention consolidates again. A hold left by a process
/// that no longer runs is ignored.
#[test]
fn an_open_view_holds_consolidation_at_its_point() {
    use twinblk::layer::cdp::retain::{Retention, consolidate_once};
    use twinblk::layer::cdp::view::{ViewDevice, ViewSpec, holds_dir};
    const SIZE: usize = 2 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let (mut d, addr) = in_process_with(
        "cores=[0]\nwait='adaptive'",
        &volume("v", SIZE as u64, &dir, "4MiB"),
    );
    let mut c = Client::connect(addr, "v", false);
    let mut first = 0;
    for i in 0..100u64 {
        assert_eq!(c.write((i % 15) * (128 << 10), &pattern(i, 128 << 10)), 0);
        if i == 3 {
            first = last(&dir).0;
        }
    }
    c.disconnect();
    d.stop();
    assert!(segment_files(&dir).len() >= 3, "several segments");
    let r = Retention {
        age_ns: Some(1),
        bytes: None,
    };
    let later = twinblk::layer::cdp::clock::now() + 10_000_000_000;
    let v = ViewDevice::open(&ViewSpec {
        dir: dir.clone(),
        point: Point::Seq(first),
        sandbox: false,
    })
    .unwrap();
    assert_eq!(v.seq(), first);
    assert!(
        consolidate_once(&dir, &r, later).unwrap().is_none(),
        "the first segment holds the view's point: not consolidated"
    );
    drop(v);
    assert!(
        consolidate_once(&dir, &r, later).unwrap().is_some(),
        "released"
    );
    // A stale hold (no such process) holds nothing.
    std::fs::write(holds_dir(&dir).join("4194303-0"), "0\n").unwrap();
    assert!(
        consolidate_once(&dir, &r, later).unwrap().is_some(),
        "stale hold ignored"
    );
}

/// An open view keeps reading a consolidated segment's records through the file it opened
/// (its hold keeps only the segments after its point): while a view is open, consolidation
/// deletes the segment (the inode stays readable for the view) instead of recycling it, which
/// would reuse that inode as a later segment, its bytes written over under the view.
#[test]
fn an_open_view_still_reads_a_segment_consolidated_under_it() {
    use twinblk::layer::cdp::retain::{Retention, consolidate_once};
    use twinblk::layer::cdp::view::{ViewDevice, ViewSpec};
    const SIZE: usize = 2 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let (mut d, addr) = in_process_with(
        "cores=[0]\nwait='adaptive'",
        &volume("v", SIZE as u64, &dir, "4MiB"),
    );
    let mut c = Client::connect(addr, "v", false);
    // Slot 15 is written once, first: its latest record stays in the first segment.
    assert_eq!(c.write(15 * (128 << 10), &pattern(1000, 128 << 10)), 0);
    for i in 0..100u64 {
        assert_eq!(c.write((i % 15) * (128 << 10), &pattern(i, 128 << 10)), 0);
    }
    let lastseq = last(&dir).0;
    c.disconnect();
    d.stop();
    let nseg = segment_files(&dir).len();
    assert!(nseg >= 3, "several segments");
    let v = ViewDevice::open(&ViewSpec {
        dir: dir.clone(),
        point: Point::Seq(lastseq),
        sandbox: false,
    })
    .unwrap();
    let mut before = vec![0u8; 128 << 10];
    v.read_point(15 * (128 << 10), &mut before).unwrap();
    assert!(
        before == pattern(1000, 128 << 10),
        "view correct before consolidation"
    );
    let r = Retention {
        age_ns: Some(1),
        bytes: None,
    };
    let later = twinblk::layer::cdp::clock::now() + 10_000_000_000;
    let mut n = 0;
    while consolidate_once(&dir, &r, later).unwrap().is_some() {
        n += 1;
    }
    eprintln!("consolidated {n} segment(s) under the open view");
    // The spare thread's next preparation reuses a retired file if one waits, and appends
    // write over it (here: the whole file, at once).
    twinblk::layer::cdp::store::prepare_spare(&dir, 0x1000, 4 << 20, false).unwrap();
    let spare = twinblk::layer::cdp::store::seg_path(&dir, 0x1000);
    std::fs::write(&spare, vec![0xEE; 4 << 20]).unwrap();
    let mut after = vec![0u8; 128 << 10];
    v.read_point(15 * (128 << 10), &mut after).unwrap();
    eprintln!(
        "view after the spare was prepared and written: equal={} overwritten={}",
        after == pattern(1000, 128 << 10),
        after.iter().all(|&b| b == 0xEE)
    );
    assert!(
        after == pattern(1000, 128 << 10),
        "the open view serves the point's data"
    );
}
