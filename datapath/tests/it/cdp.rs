//! Continuous data protection end to end: points in time of a volume group restored from the
//! journal, crash recovery (kill -9, torn and corrupt segments), through the real daemon.

use crate::harness::{PATIENCE, Server, in_process_with, pattern, wait_until};
use crate::rawnbd::Client;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use twinblk::layer::cdp::format::Op;
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, CdpError, Load};

pub(crate) const NBD_CMD_TRIM: u16 = 4;
pub(crate) const NBD_CMD_WRITE_ZEROES: u16 = 6;

pub(crate) fn volume(name: &str, size: u64, dir: &Path, seg: &str) -> String {
    format!(
        "[[volume]]\nname='{name}'\nbackend='malloc'\nsize={size}\nblock_size=4096\ngroup='g'\n\
         [volume.cdp]\ndir='{}'\nsegment_size='{seg}'\n",
        dir.display()
    )
}

/// Flip byte `k` of the payload of record `e` of segment `segno` in `dir`, in place, and
/// remove the segment's index (so the next start's recovery scans it and finds the damage).
pub(crate) fn damage_payload(
    dir: &Path,
    segno: u64,
    e: twinblk::layer::cdp::format::Entry,
    k: u64,
) {
    use std::os::unix::fs::FileExt;
    let path = store::seg_path(dir, segno);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let at = e.pos + twinblk::layer::cdp::format::REC_HEADER as u64 + k;
    let mut x = [0u8; 1];
    f.read_exact_at(&mut x, at).unwrap();
    f.write_all_at(&[!x[0]], at).unwrap();
    let _ = std::fs::remove_file(path.with_extension("idx"));
}

/// One update the workload made, as the model applies it.
#[derive(Clone)]
pub(crate) enum Upd {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
}

pub(crate) fn apply(model: &mut [u8], u: &Upd) {
    match u {
        Upd::Write(o, d) => model[*o as usize..*o as usize + d.len()].copy_from_slice(d),
        Upd::Zero(o, l) => model[*o as usize..(*o + *l) as usize].fill(0),
    }
}

/// The content volume `vol` had at `t`, from the workload's log of (volume, update, time).
pub(crate) fn expected(log: &[(usize, Upd, u64)], vol: usize, t: u64, size: usize) -> Vec<u8> {
    let mut m = vec![0u8; size];
    for (v, u, when) in log {
        if *v == vol && *when <= t {
            apply(&mut m, u);
        }
    }
    m
}

pub(crate) fn last(dir: &Path) -> (u64, u64) {
    let h = store::load(dir, Load::ReadOnly).expect("history");
    (h.last_seq, h.last_time)
}

/// Wait (at most [`PATIENCE`]: a loaded machine writes the marks late) until every history
/// in `dirs` reaches site time `t` (an idle journal's time marks, one a second, carry its
/// window to about now); `what` names the wait in the failure.
pub(crate) fn wait_window(dirs: &[&Path], t: u64, what: &str) {
    wait_until(
        PATIENCE,
        || dirs.iter().all(|d| last(d).1 >= t),
        || what.to_string(),
    );
}

pub(crate) fn restore_file(dir: &Path, p: Point, out: &Path) -> Result<Vec<u8>, CdpError> {
    let h = store::load(dir, Load::ReadOnly)?;
    let _ = std::fs::remove_file(out);
    pit::restore(&h, p, out, |_, _| {})?;
    Ok(std::fs::read(out).expect("restored file"))
}

#[test]
fn a_group_restores_to_every_chosen_point_with_the_content_it_had_then() {
    const SIZE: usize = 3 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dirs = [tmp.path().join("j-a"), tmp.path().join("j-b")];
    let (mut d, addr) = in_process_with(
        "cores=[0]\nwait='adaptive'",
        &format!(
            "{}{}",
            volume("a", SIZE as u64, &dirs[0], "4MiB"),
            volume("b", SIZE as u64, &dirs[1], "4MiB")
        ),
    );
    let mut c = [
        Client::connect(addr, "a", false),
        Client::connect(addr, "b", false),
    ];
    // The workload: writes of many sizes (one of 2 MiB: two records; enough data for several
    // 4 MiB segments), a trim and a write-zeroes, alternating between the two volumes, each
    // acknowledged before the next is sent (so every one has its own time).
    let mut log: Vec<(usize, Upd, u64)> = Vec::new();
    let mut seqs: Vec<(usize, u64)> = Vec::new();
    for i in 0..36u64 {
        let vol = (i % 2) as usize;
        let off = (i * 37 % 600) * 4096;
        let upd = match i {
            20 | 22 => Upd::Write(4096 * (i - 19), pattern(i, 2 << 20)),
            25 => Upd::Zero(off, 64 << 10),
            29 => Upd::Zero(8192, 3 * 4096),
            _ => Upd::Write(off, pattern(i + 1000, 4096 * (1 + (i as usize * 7) % 40))),
        };
        let err = match (&upd, i) {
            (Upd::Write(o, data), _) => c[vol].write(*o, data),
            (Upd::Zero(o, l), 25) => {
                c[vol].send_request(NBD_CMD_TRIM, 0, 9, *o, *l as u32, &[]);
                c[vol].read_reply(0).1
            }
            (Upd::Zero(o, l), _) => {
                c[vol].send_request(NBD_CMD_WRITE_ZEROES, 0, 9, *o, *l as u32, &[]);
                c[vol].read_reply(0).1
            }
        };
        assert_eq!(err, 0, "update {i}");
        let (seq, time) = last(&dirs[vol]);
        log.push((vol, upd, time));
        seqs.push((vol, seq));
    }
    let segs = segment_files(&dirs[0]).len();
    assert!(segs >= 2, "the workload spans several segments ({segs})");
    let hs: Vec<_> = dirs
        .iter()
        .map(|d| store::load(d, Load::ReadOnly).unwrap())
        .collect();
    // The points: right before and right after every fourth update, and the window's edges.
    let mut points: Vec<u64> = Vec::new();
    for (k, (_, _, t)) in log.iter().enumerate() {
        if k % 4 == 1 || k == 20 || k == 22 || k == 25 || k == 29 {
            points.push(t - 1);
            points.push(*t);
        }
    }
    let start = hs[0].meta.created.max(hs[1].meta.created);
    points.push(start);
    points.push(hs[0].last_time.min(hs[1].last_time));
    assert!(points.len() >= 20, "{} points", points.len());
    let out = tmp.path().join("restored");
    for &t in &points {
        for (vol, dir) in dirs.iter().enumerate() {
            let got = restore_file(dir, Point::Time(t), &out).unwrap();
            let want = expected(&log, vol, t, SIZE);
            assert!(
                got == want,
                "volume {vol} at time {t} differs from the workload's"
            );
        }
    }
    // Sequence points of one volume, and a range read without a copy.
    for (k, &(vol, seq)) in seqs.iter().enumerate().filter(|(k, _)| k % 5 == 0) {
        let t = log[k].2;
        let got = restore_file(&dirs[vol], Point::Seq(seq), &out).unwrap();
        assert!(
            got == expected(&log, vol, t, SIZE),
            "volume {vol} at sequence {seq}"
        );
        let part = pit::read_at(&hs[vol], Point::Seq(seq), 4096 * 7, 300_000).unwrap();
        assert_eq!(
            part,
            expected(&log, vol, t, SIZE)[4096 * 7..4096 * 7 + 300_000]
        );
    }
    // Outside the window: clear errors, nothing written.
    // (An idle journal's window grows by a time mark a second: an hour ahead is outside.)
    let late = store::load(&dirs[0], Load::ReadOnly).unwrap().last_time + 3_600_000_000_000;
    let Err(e) = restore_file(&dirs[0], Point::Time(late), &out) else {
        panic!("a time an hour after the window was restored");
    };
    assert!(matches!(e, CdpError::Outside { .. }), "{e}");
    assert!(e.to_string().contains("window"), "{e}");
    let early = restore_file(&dirs[0], Point::Time(hs[0].meta.created - 1), &out);
    assert!(
        matches!(early, Err(CdpError::Outside { .. })),
        "before the window"
    );
    // (Far beyond: the live daemon stamps a time mark, a sequence number, after a second
    // idle, so `last_seq + 1` can exist by the time the restore loads the history; it did in
    // a loaded parallel run.)
    let beyond = store::load(&dirs[0], Load::ReadOnly).unwrap().last_seq + 1_000_000;
    let after = restore_file(&dirs[0], Point::Seq(beyond), &out);
    assert!(
        matches!(after, Err(CdpError::Outside { .. })),
        "after the window"
    );
    // The newest point is the volume as it is now.
    let now = c[0].read(0, SIZE as u32).unwrap();
    assert!(restore_file(&dirs[0], Point::Seq(hs[0].last_seq), &out).unwrap() == now);
    for cl in c {
        cl.disconnect();
    }
    d.stop();
    // After a clean stop the same history reads the same.
    assert!(restore_file(&dirs[0], Point::Seq(hs[0].last_seq), &out).unwrap() == now);
}

/// The segment files in use (not the spare prepared ahead), in order.
/// Bytes of the segment files in use in `dir`: a file the daemon's retention retires between
/// the listing and its `stat` (renamed or deleted) counts nothing.
pub(crate) fn segment_bytes(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum()
}

pub(crate) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    store::segments_in_use(dir)
        .unwrap()
        .0
        .into_iter()
        .map(|n| store::seg_path(dir, n))
        .collect()
}

#[test]
fn a_torn_truncated_or_corrupt_journal_is_cut_and_the_volume_keeps_serving() {
    const SIZE: u64 = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let vols = volume("v", SIZE, &dir, "4MiB");
    let start = || in_process_with("cores=[0]\nwait='adaptive'", &vols);
    let (mut d, addr) = start();
    let mut c = Client::connect(addr, "v", false);
    for i in 0..10u64 {
        assert_eq!(c.write(i * 8192, &pattern(i, 8192)), 0);
    }
    c.disconnect();
    d.stop();
    // The start's unmap of a RAM volume, 10 writes, the stop's time mark.
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let writes: Vec<_> = h
        .entries()
        .filter(|(_, e)| e.op == Op::Write)
        .map(|(s, e)| (s, *e))
        .collect();
    assert_eq!(writes.len(), 10);
    assert!(h.cut.is_none(), "{:?}", h.cut);
    let good9 = pit::read_at(&h, Point::Seq(writes[8].1.seq), 0, SIZE).unwrap();

    // A torn last write (its payload damaged): cut at it, the history before it kept. A torn
    // write happens only in a crash, and a crash leaves no index of the last segment (a clean
    // stop seals one): remove it, as the crash would have.
    let (segno, e) = writes[9];
    let seg = store::seg_path(&dir, segno);
    let idx = seg.with_extension("idx");
    assert!(idx.exists(), "a clean stop seals the last segment's index");
    std::fs::remove_file(&idx).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0xAB; 100], e.pos + 64 + 50).unwrap();
    }
    let (mut d, addr) = start();
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let kept = &h
        .segments
        .iter()
        .find(|s| s.header.segno == segno)
        .unwrap()
        .index;
    assert_eq!(
        kept.entries.last().unwrap().seq,
        writes[8].1.seq,
        "the damaged record is cut"
    );
    assert_eq!(kept.end, e.pos);
    // The bytes behind the cut are zeroes now.
    let bytes = std::fs::read(&seg).unwrap();
    assert!(bytes[e.pos as usize..].iter().all(|&b| b == 0));
    assert_eq!(
        pit::read_at(&h, Point::Seq(writes[8].1.seq), 0, SIZE).unwrap(),
        good9
    );
    // The volume serves, and journals again after the cut (this start's unmap first).
    let mut c = Client::connect(addr, "v", false);
    assert_eq!(c.write(0, &pattern(77, 4096)), 0);
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let mut want = vec![0u8; SIZE as usize];
    want[..4096].copy_from_slice(&pattern(77, 4096));
    assert_eq!(
        pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE).unwrap(),
        want
    );
    c.disconnect();
    d.stop();

    // A truncated newest segment (a crash while the file grew): cut where it ends.
    let newest = segment_files(&dir).pop().unwrap();
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let (newest_no, e) = h.entries().last().map(|(s, e)| (s, *e)).unwrap();
    assert_eq!(newest, store::seg_path(&dir, newest_no));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(e.pos + 30)
        .unwrap();
    let (mut d, _) = start();
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let cut = &h
        .segments
        .iter()
        .find(|s| s.header.segno == newest_no)
        .unwrap()
        .index;
    assert_eq!(cut.end, e.pos, "cut where the truncated record starts");
    assert!(cut.entries.last().unwrap().seq < e.seq);
    assert!(h.damaged.is_empty());
    d.stop();

    // A missing and a damaged index: rebuilt, same history.
    let before: Vec<_> = store::load(&dir, Load::ReadOnly)
        .unwrap()
        .entries()
        .map(|(s, e)| (s, *e))
        .collect();
    let idx: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    assert!(idx.len() >= 2, "sealed segments have indexes: {idx:?}");
    std::fs::remove_file(&idx[0]).unwrap();
    std::fs::write(&idx[1], b"TBCDPIX1 but not an index").unwrap();
    let after: Vec<_> = store::load(&dir, Load::ReadOnly)
        .unwrap()
        .entries()
        .map(|(s, e)| (s, *e))
        .collect();
    assert_eq!(before, after);
    assert!(idx[0].exists(), "a missing index is written again");
    assert!(twinblk::layer::cdp::format::Index::decode(&std::fs::read(&idx[1]).unwrap()).is_ok());

    // A corrupt segment header in the middle: the history ends before it, later segments are
    // set aside, and the volume still starts and serves.
    let first = segment_files(&dir)[0].clone();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap();
        f.write_all_at(b"garbage!", 0).unwrap();
    }
    let (mut d, addr) = start();
    let damaged = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".damaged")
        })
        .count();
    assert!(damaged >= 2, "{damaged} segments set aside");
    let mut c = Client::connect(addr, "v", false);
    assert_eq!(c.write(4096, &pattern(5, 4096)), 0);
    assert_eq!(c.read(4096, 4096).unwrap(), pattern(5, 4096));
    c.disconnect();
    d.stop();
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(h.cut.is_none());
    let mut want = vec![0u8; SIZE as usize];
    want[4096..8192].copy_from_slice(&pattern(5, 4096));
    assert_eq!(
        pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE).unwrap(),
        want
    );

    // A directory of another volume size is refused with a clear error.
    let other = volume("v", SIZE * 2, &dir, "4MiB");
    let cfg = twinblk::Config::from_toml(&format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=[]\n[control]\nsocket=''\n{other}"
    ))
    .unwrap();
    let e = twinblk::Daemon::start(&cfg).err().expect("refused");
    let chain = format!("{:#}", anyhow::Error::from(e));
    assert!(chain.contains("another directory"), "{chain}");
}

#[test]
fn every_acknowledged_write_survives_kill_9_and_the_torn_tail_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(!twinblk::layer::cdp::journal::in_memory(tmp.path()));
    kill_9_keeps_every_acknowledged_write(tmp.path(), &tmp.path().join("j"), "");
}

/// The same with the journal in memory (tmpfs), whose appends the reactor writes itself in the
/// turn instead of through io_uring (docs/cdp-format.md, "Appends").
#[test]
fn an_in_memory_journal_keeps_every_acknowledged_write_across_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let shm = std::path::Path::new("/dev/shm");
    if !twinblk::layer::cdp::journal::in_memory(shm) {
        eprintln!("skipped: /dev/shm is not a tmpfs on this machine");
        return;
    }
    let jroot = tempfile::tempdir_in(shm).unwrap();
    kill_9_keeps_every_acknowledged_write(tmp.path(), &jroot.path().join("j"), "");
}

/// A journal in memory appends unpadded batches, so a killed daemon leaves its log ending off
/// a block boundary; the directory then moved to a disk, the O_DIRECT writer never appends
/// there (an unaligned O_DIRECT write fails, which would stop the journal): every start
/// begins a new segment, and the history goes on (docs/cdp-format.md, "Padding").
#[test]
fn an_in_memory_log_cut_off_a_block_boundary_goes_on_in_a_new_segment_on_disk() {
    const SIZE: u64 = 16 << 20;
    let shm = Path::new("/dev/shm");
    if !twinblk::layer::cdp::journal::in_memory(shm) {
        eprintln!("skipped: /dev/shm is not a tmpfs on this machine");
        return;
    }
    let jroot = tempfile::tempdir_in(shm).unwrap();
    let mem = jroot.path().join("j");
    let tmp = tempfile::tempdir().unwrap();
    let body = |dir: &Path| {
        format!(
            "[reactor]\ncores=[0]\npin=false\n{}",
            volume("v", SIZE, dir, "4MiB")
        )
    };
    let mut s = Server::start(tmp.path(), &body(&mem));
    let mut c = Client::connect(s.addr, "v", false);
    for b in 0..5u64 {
        assert_eq!(c.write(b * 4096, &pattern(b, 4096)), 0);
    }
    s.kill();
    let last_segment = |dir: &Path| *store::segments_in_use(dir).unwrap().0.last().unwrap();
    let segno = last_segment(&mem);
    let bytes = std::fs::read(store::seg_path(&mem, segno)).unwrap();
    let head = twinblk::layer::cdp::format::SegHeader::decode(&bytes).unwrap();
    let meta = store::read_meta(&mem).unwrap();
    let log = twinblk::layer::cdp::format::scan(&bytes, meta.vol_id, SIZE, head.first_seq - 1, 0);
    assert_ne!(
        log.end % 4096,
        0,
        "the in-memory log ends off a block boundary"
    );
    // Moved to a disk, as an operator would copy it.
    let disk = tmp.path().join("j");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&mem)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(cp.success());
    assert!(!twinblk::layer::cdp::journal::in_memory(tmp.path()));
    drop(c);
    let s = Server::start(tmp.path(), &body(&disk));
    let mut c = Client::connect(s.addr, "v", false);
    for b in 5..10u64 {
        assert_eq!(c.write(b * 4096, &pattern(b, 4096)), 0);
    }
    let st = s.rpc("cdp_status");
    assert_eq!(st[0]["journal"], "running", "{st}");
    assert!(
        last_segment(&disk) > segno,
        "the writes went to a new segment"
    );
    let h = store::load(&disk, Load::ReadOnly).unwrap();
    assert!(h.damaged.is_empty());
    let got = pit::read_at(&h, Point::Seq(h.last_seq), 5 * 4096, 5 * 4096).unwrap();
    let want: Vec<u8> = (5..10u64).flat_map(|b| pattern(b, 4096)).collect();
    assert!(got == want, "the writes after the move are in the history");
}

/// 32 writes in flight to a CDP volume whose journal is `dir` (`extra`: more `[volume.cdp]`
/// lines), the daemon (state in `root`) killed mid-run: every acknowledged write is in the
/// journal as it was left, and again after the restart's recovery cut the torn tail.
pub(crate) fn kill_9_keeps_every_acknowledged_write(root: &Path, dir: &Path, extra: &str) {
    kill_9_keeps_every_acknowledged_write_of(root, dir, extra, 64 << 20, 4096, |_| 4096);
}

/// [`kill_9_keeps_every_acknowledged_write`] on a `size`-byte volume whose write `i` puts
/// `len_of(i)` bytes at `i * slot` ([`acked_writer_of`]).
pub(crate) fn kill_9_keeps_every_acknowledged_write_of(
    root: &Path,
    dir: &Path,
    extra: &str,
    size: u64,
    slot: u64,
    len_of: fn(u64) -> usize,
) {
    let tmp = root;
    let dir = dir.to_path_buf();
    // Segments are prepared ahead and written with zeroes, so the kill may land while a
    // switch's header append is in flight.
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n{}prezero=true\n{extra}",
        volume("v", size, &dir, "4MiB")
    );
    let mut s = Server::start(tmp, &body);
    let writer = acked_writer_of(s.addr, size, slot, len_of);
    // At least 0.7 s of writes, and (on a machine busy with other work) until the journal
    // holds 200 records, for at most PATIENCE: the kill must land among acknowledged writes.
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    while s.rpc("cdp_status")[0]["records"].as_u64().unwrap_or(0) < 200 && t0.elapsed() < PATIENCE {
        std::thread::sleep(Duration::from_millis(50));
    }
    // On tmpfs, and on a disk with `sync = "flush"` and the segments mapped (the default),
    // the appends are copies into the segments' mappings (mapped.rs), the first segment's
    // made at the start; on a disk otherwise there are none.
    let st = s.rpc("cdp_status")[0].clone();
    let mapped = st["mapped_appends"].as_u64().unwrap();
    let on_tmpfs = std::fs::create_dir_all(&dir).is_ok()
        && twinblk::layer::cdp::journal::fs_type(&dir)
            == Some(twinblk::layer::cdp::journal::TMPFS_MAGIC);
    // (Mappings need birth times, which tmpfs gives from Linux 5.18.)
    let born = std::fs::metadata(&dir).and_then(|m| m.created()).is_ok();
    let disk_mapped = extra.contains("sync='flush'")
        && !extra.contains("map_segments=false")
        && twinblk::layer::cdp::mapped::populate_write_supported();
    if (on_tmpfs || disk_mapped) && born {
        assert!(mapped > 0, "no append went through a mapping: {st}");
    } else if !on_tmpfs && !disk_mapped {
        assert_eq!(mapped, 0, "{st}");
    }
    s.kill();
    let acked = writer.join().unwrap();
    assert!(
        acked.len() > 100,
        "only {} writes before the kill",
        acked.len()
    );
    // Read as the killed daemon left it (no recovery yet): every acknowledged write is there.
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let check = |h: &store::History| {
        let mut by_block = std::collections::HashMap::new();
        for (_, e) in h.entries() {
            if e.op == Op::Write {
                by_block.insert(e.offset / slot, e.seq);
            }
        }
        for &b in &acked {
            let seq = *by_block
                .get(&b)
                .unwrap_or_else(|| panic!("acknowledged write to block {b} is not in the journal"));
            let len = len_of(b);
            let got = pit::read_at(h, Point::Seq(seq), b * slot, len as u64).unwrap();
            assert!(got == pattern(b, len), "block {b}: journaled data differs");
        }
    };
    check(&h);
    // Restart: recovery cuts whatever tail was torn and the history continues.
    let s = s.respawn();
    let h2 = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(h2.damaged.is_empty());
    assert!(
        h2.last_seq > h.last_seq,
        "a new start journals its RAM volume's reset"
    );
    check(&h2);
    drop(s);
}

/// A client writing `pattern(b)` to block `b` (4 KiB) of volume `v` at `addr`, blocks 0, 1, 2,
/// ... of a `size`-byte volume once each, 32 in flight at a time, until the volume ends,
/// [`PATIENCE`] passes (a loaded machine writes slowly) or the server goes away; it returns
/// the blocks whose writes were acknowledged.
pub(crate) fn acked_writer(
    addr: std::net::SocketAddr,
    size: u64,
) -> std::thread::JoinHandle<Vec<u64>> {
    acked_writer_of(addr, size, 4096, |_| 4096)
}

/// [`acked_writer`] with write `b` putting `pattern(b, len_of(b))` at `b * slot`.
pub(crate) fn acked_writer_of(
    addr: std::net::SocketAddr,
    size: u64,
    slot: u64,
    len_of: fn(u64) -> usize,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut c = Client::connect(addr, "v", false);
        let mut acked: Vec<u64> = Vec::new();
        let mut next = 0u64;
        let start = Instant::now();
        while next + 32 <= size / slot && start.elapsed() < PATIENCE {
            for k in 0..32 {
                let b = next + k;
                // The kill may land while this sends: what was acknowledged is the record.
                if c.try_send_request(1, b, b * slot, &pattern(b, len_of(b)))
                    .is_err()
                {
                    return acked;
                }
            }
            for _ in 0..32 {
                let mut m = [0u8; 4];
                use std::io::Read;
                let s = c.stream();
                if s.read_exact(&mut m).is_err() {
                    return acked;
                }
                let mut h = [0u8; 12];
                if s.read_exact(&mut h).is_err() {
                    return acked;
                }
                let err = u32::from_be_bytes(h[0..4].try_into().unwrap());
                let cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
                assert_eq!(err, 0);
                acked.push(cookie);
            }
            next += 32;
        }
        acked
    })
}

/// Two sites, each mirroring two volumes (one homed on each of two reactors) of group `g` with
/// CDP under the mirror. Host writes at both sites (the follower's go through the leader); after
/// each acknowledgement both sites' journals hold it.
#[test]
fn under_the_mirror_each_site_journals_every_update_and_restores_on_its_own() {
    use crate::harness::free_port;
    const SIZE: usize = 4 << 20;
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("link.key");
    std::fs::write(&key, b"cdp-mirror-test-key-0123456789").unwrap();
    let (pa, pb) = (free_port(), free_port());
    let jdir = |site: &str, v: &str| root.path().join(format!("{site}-{v}.cdp"));
    let body = |me: &str, peer: &str, listen: u16, peer_port: u16| {
        let mut b = format!(
            "[reactor]\ncores=[0,1]\npin=false\n\
             [mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:{listen}']\n\
             peer='127.0.0.1:{peer_port}'\nwitness_key_file='{}'\n",
            key.display()
        );
        for v in ["a", "b"] {
            b += &format!(
                "[[volume]]\nname='{v}'\nbackend='uring'\nsize={SIZE}\nblock_size=4096\npath='{}'\n\
                 mirror=true\ngroup='g'\n[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
                root.path().join(format!("{me}-{v}.img")).display(),
                jdir(me, v).display()
            );
        }
        b
    };
    let mk = |me: &str, peer: &str, l: u16, p: u16| {
        let d = root.path().join(me);
        std::fs::create_dir_all(&d).unwrap();
        Server::start(&d, &body(me, peer, l, p))
    };
    let mut sa = mk("a", "b", pa, pb);
    let mut sb = mk("b", "a", pb, pa);
    let t = Instant::now();
    while !(0..2).all(|i| {
        sa.rpc("mirror_status")[i]["state"] == "up" && sb.rpc("mirror_status")[i]["state"] == "up"
    }) {
        assert!(t.elapsed() < Duration::from_secs(10), "links never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sites = [("a", sa.addr), ("b", sb.addr)];
    // (volume, update, time at site a, time at site b)
    let mut log: Vec<(usize, Upd, [u64; 2])> = Vec::new();
    for i in 0..24u64 {
        let vol = (i % 2) as usize;
        let site = ((i / 2) % 2) as usize;
        let name = ["a", "b"][vol];
        let data = pattern(i + 500, 4096 * (1 + (i as usize * 5) % 16));
        let off = (i * 13 % 900) * 4096;
        let mut c = Client::connect(sites[site].1, name, false);
        assert_eq!(
            c.write(off, &data),
            0,
            "write {i} at site {}",
            sites[site].0
        );
        c.disconnect();
        let times = [last(&jdir("a", name)).1, last(&jdir("b", name)).1];
        log.push((vol, Upd::Write(off, data), times));
    }
    // An idle volume's window reaches to about now by its time marks: wait until every
    // journal's window covers the last write's time.
    let newest = log.iter().map(|(_, _, t)| t[0].max(t[1])).max().unwrap();
    let t = Instant::now();
    for site in ["a", "b"] {
        for name in ["a", "b"] {
            while last(&jdir(site, name)).1 < newest {
                assert!(t.elapsed() < PATIENCE, "no time mark in {site}-{name}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let out = root.path().join("restored");
    for (s, site) in ["a", "b"].iter().enumerate() {
        let site_log: Vec<(usize, Upd, u64)> =
            log.iter().map(|(v, u, t)| (*v, u.clone(), t[s])).collect();
        // Every write is in this site's journal, at this site's time.
        for k in [0usize, 5, 11, 16, 23] {
            let t = site_log[k].2;
            for (vol, name) in ["a", "b"].iter().enumerate() {
                for p in [t - 1, t] {
                    let got = restore_file(&jdir(site, name), Point::Time(p), &out).unwrap();
                    assert!(
                        got == expected(&site_log, vol, p, SIZE),
                        "site {site}, volume {name} at time {p}"
                    );
                }
            }
        }
    }
    // The control socket shows each volume's journal and window.
    let st = sa.rpc("cdp_status");
    for (i, v) in st.as_array().unwrap().iter().enumerate() {
        assert_eq!(v["volume"], ["a", "b"][i], "{st}");
        assert_eq!(v["group"], "g");
        assert_eq!(v["journal"], "running");
        assert_eq!(v["home_reactor"], i as u64);
        assert!(v["durable_seq"].as_u64().unwrap() >= 12, "{st}");
        assert!(v["window_end_ns"].as_u64().unwrap() >= newest, "{st}");
        assert!(v["window_start_ns"].as_u64().unwrap() < v["window_end_ns"].as_u64().unwrap());
    }
    assert!(sa.stop() && sb.stop(), "clean stop failed");
    // The newest point at each site is that site's replica.
    for site in ["a", "b"] {
        for name in ["a", "b"] {
            let h = store::load(&jdir(site, name), Load::ReadOnly).unwrap();
            let got = restore_file(&jdir(site, name), Point::Seq(h.last_seq), &out).unwrap();
            let replica = std::fs::read(root.path().join(format!("{site}-{name}.img"))).unwrap();
            assert!(
                got == replica,
                "site {site} volume {name}: newest point is not the replica"
            );
        }
    }
}

/// Retention by size consolidates the oldest segments into the base copy while the volume is
/// written; every point from the new window start on still restores exactly, points before it
/// are refused, and space stays bounded. Then retention by age consolidates all but the
/// active segment.
#[test]
fn retention_consolidates_old_segments_and_every_later_point_stays_restorable() {
    use twinblk::layer::cdp::retain::{Retention, consolidate_once};
    const SIZE: usize = 2 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let vols = format!(
        "{}retention_bytes='8MiB'\n",
        volume("v", SIZE as u64, &dir, "4MiB")
    );
    let (mut d, addr) = in_process_with("cores=[0]\nwait='adaptive'", &vols);
    let mut c = Client::connect(addr, "v", false);
    let mut log: Vec<(usize, Upd, u64)> = Vec::new();
    for i in 0..130u64 {
        let off = (i * 7 % 15) * (128 << 10);
        let data = pattern(i + 9000, 128 << 10);
        assert_eq!(c.write(off, &data), 0);
        log.push((0, Upd::Write(off, data), last(&dir).1));
    }
    let seg_bytes = segment_bytes;
    let t = Instant::now();
    while seg_bytes(&dir) > 8 << 20 {
        assert!(t.elapsed() < PATIENCE, "not consolidated");
        std::thread::sleep(Duration::from_millis(100));
    }
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(h.meta.base_seq > 0, "the base point moved");
    let start = h.meta.window_start();
    assert!(
        start > log[0].2,
        "the window starts later than the first write"
    );
    let out = tmp.path().join("restored");
    let mut checked = 0;
    for (_, _, t) in log.iter().step_by(9).filter(|(_, _, t)| *t >= start) {
        let got = restore_file(&dir, Point::Time(*t), &out).unwrap();
        assert!(got == expected(&log, 0, *t, SIZE), "time {t}");
        checked += 1;
    }
    assert!(checked >= 3, "{checked} points checked");
    let before = restore_file(&dir, Point::Time(start - 1), &out);
    assert!(
        matches!(before, Err(CdpError::Outside { .. })),
        "before the window"
    );
    let now = c.read(0, SIZE as u32).unwrap();
    c.disconnect();
    d.stop();
    // By age: everything older than a nanosecond, seen ten seconds from now.
    let r = Retention {
        age_ns: Some(1),
        bytes: None,
    };
    let later = twinblk::layer::cdp::clock::now() + 10_000_000_000;
    while consolidate_once(&dir, &r, later).unwrap().is_some() {}
    assert_eq!(
        segment_files(&dir).len(),
        1,
        "only the active segment is left"
    );
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(restore_file(&dir, Point::Seq(h.last_seq), &out).unwrap() == now);
}

/// CDP enabled on a file volume that already holds data: the history starts from that data
/// (the base copy is the file at the first start, holes skipped), so the start of the window
/// restores it and later points add the journaled writes.
#[test]
fn enabling_cdp_on_a_volume_with_data_starts_the_history_from_that_data() {
    const SIZE: u64 = 4 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("v.img");
    let dir = tmp.path().join("j");
    let mut before = pattern(31, 1 << 20);
    before.resize(SIZE as usize, 0);
    std::fs::write(&img, &before[..1 << 20]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let vols = format!(
        "[[volume]]\nname='v'\nbackend='uring'\npath='{}'\nsize={SIZE}\nblock_size=4096\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        img.display(),
        dir.display()
    );
    let (mut d, addr) = in_process_with("cores=[0]\nwait='adaptive'", &vols);
    let mut c = Client::connect(addr, "v", false);
    assert_eq!(c.write(8192, &pattern(32, 4096)), 0);
    c.disconnect();
    d.stop();
    let out = tmp.path().join("restored");
    assert!(restore_file(&dir, Point::Seq(0), &out).unwrap() == before);
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let now = std::fs::read(&img).unwrap();
    assert!(now[8192..12288] == pattern(32, 4096)[..]);
    assert!(restore_file(&dir, Point::Seq(h.last_seq), &out).unwrap() == now);
}

/// A tmpfs of a few MiB mounted for the test, unmounted when dropped.
pub(crate) struct SmallFs(pub(crate) PathBuf);

impl SmallFs {
    pub(crate) fn mount(dir: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "mounting a small tmpfs needs root (the fault tests run as root)"
        );
        SmallFs(dir.to_path_buf())
    }

    /// Room again: the filesystem grown to 64 MiB in place (its files kept).
    pub(crate) fn grow(&self) {
        let ok = std::process::Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// The journal's filesystem fills up: the journal stops (its history ends at its last durable
/// record), and the volume keeps serving every write and read.
#[test]
fn a_full_journal_device_stops_the_journal_and_the_volume_keeps_serving() {
    const SIZE: usize = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let fs = SmallFs::mount(&tmp.path().join("small"), "6m");
    let dir = fs.0.join("j");
    let (mut d, addr) = in_process_with(
        "cores=[0]\nwait='adaptive'",
        &volume("v", SIZE as u64, &dir, "4MiB"),
    );
    let mut c = Client::connect(addr, "v", false);
    let mut log: Vec<(usize, Upd, u64)> = Vec::new();
    // 12 MiB of writes: twice what the filesystem holds.
    for i in 0..96u64 {
        let off = (i % 8) * (128 << 10);
        let data = pattern(i + 4000, 128 << 10);
        assert_eq!(
            c.write(off, &data),
            0,
            "write {i} failed: the volume must keep serving"
        );
        log.push((0, Upd::Write(off, data), 0));
    }
    let mut model = vec![0u8; SIZE];
    for (_, u, _) in &log {
        apply(&mut model, u);
    }
    assert!(
        c.read(0, SIZE as u32).unwrap() == model,
        "the volume holds every write"
    );
    c.disconnect();
    d.stop();
    // The history holds a prefix of the writes, and its newest point is exactly that prefix.
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let journaled = h.entries().filter(|(_, e)| e.op == Op::Write).count();
    assert!(
        journaled > 0 && journaled < log.len(),
        "{journaled} writes journaled"
    );
    let mut prefix = vec![0u8; SIZE];
    for (_, u, _) in &log[..journaled] {
        apply(&mut prefix, u);
    }
    let got = pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE as u64).unwrap();
    assert!(got == prefix, "the history ends at its last durable write");
    drop(fs);
}

/// Retention keeps up with a write rate above one segment per second: a backlog of several
/// releasable segments is consolidated at once, not one segment per pass of the retention
/// thread (which slept a second between passes, so a journal written faster than a segment a
/// second outgrew `retention_bytes` without bound: 6.1 GB for 512 MiB at 350 MB/s). The
/// backlog is made without retention (ten segments), then the daemon starts again with it.
#[test]
fn retention_consolidates_a_backlog_of_segments_without_waiting_a_pass_for_each() {
    const SIZE: usize = 2 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let seg_bytes = segment_bytes;
    let mut log: Vec<(usize, Upd, u64)> = Vec::new();
    {
        let (mut d, addr) = in_process_with(
            "cores=[0]\nwait='adaptive'",
            &volume("v", SIZE as u64, &dir, "4MiB"),
        );
        let mut c = Client::connect(addr, "v", false);
        for i in 0..320u64 {
            let off = (i * 7 % 15) * (128 << 10);
            let data = pattern(i, 128 << 10);
            assert_eq!(c.write(off, &data), 0);
            log.push((0, Upd::Write(off, data), last(&dir).1));
        }
        c.disconnect();
        d.stop();
    }
    let backlog = seg_bytes(&dir);
    assert!(backlog > 32 << 20, "a backlog of segments: {backlog}");
    let vols = format!(
        "{}retention_bytes='8MiB'\n",
        volume("v", SIZE as u64, &dir, "4MiB")
    );
    let t = Instant::now();
    let (mut d, addr) = in_process_with("cores=[0]\nwait='adaptive'", &vols);
    while seg_bytes(&dir) > 8 << 20 {
        // One segment a second (the first design) needs more than seven seconds here.
        assert!(
            t.elapsed() < Duration::from_millis(4500),
            "the backlog is consolidated at once: {} bytes left after {:?}",
            seg_bytes(&dir),
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{backlog} bytes within retention after {:?}", t.elapsed());
    let c = Client::connect(addr, "v", false);
    c.disconnect();
    d.stop();
    // Points after the new window start still restore exactly (the RAM volume's restart
    // journaled an unmap of the whole volume after the last write: points before it).
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let start = h.meta.window_start();
    let out = tmp.path().join("restored");
    let mut checked = 0;
    for (_, _, t) in log.iter().rev().step_by(3).filter(|(_, _, t)| *t >= start) {
        let got = restore_file(&dir, Point::Time(*t), &out).unwrap();
        assert!(got == expected(&log, 0, *t, SIZE), "time {t}");
        checked += 1;
    }
    assert!(checked >= 3, "{checked} points checked");
}

/// A bookmark set through the control socket holds consolidation back (it stays restorable
/// whatever retention says) until it is deleted; `twinblk cdp restore --bookmark` restores it.
#[test]
fn a_bookmark_stays_restorable_past_retention_until_deleted() {
    const SIZE: usize = 2 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n{}retention_bytes='8MiB'\n",
        volume("v", SIZE as u64, &dir, "4MiB")
    );
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    let first = pattern(1, 128 << 10);
    assert_eq!(c.write(0, &first), 0);
    let r = s.rpc_with(
        "cdp_bookmark",
        serde_json::json!({"group": "g", "name": "before-upgrade"}),
    );
    assert_eq!(r["result"]["volumes"][0], "v", "{r}");
    let t0 = r["result"]["time_ns"].clone();
    // A name in use is not moved silently; "replace" moves it (here to the same moment: the
    // test's content checks need the first).
    let again = s.rpc_with(
        "cdp_bookmark",
        serde_json::json!({"group": "g", "name": "before-upgrade"}),
    );
    assert!(
        again["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("exists")),
        "{again}"
    );
    let listed = s.rpc_with("cdp_bookmarks", serde_json::json!({"volume": "v"}));
    assert_eq!(listed["result"][0]["bookmarks"]["before-upgrade"], t0);
    let other = serde_json::json!({"group": "g", "name": "moved", "replace": true});
    assert!(s.rpc_with("cdp_bookmark", other.clone())["result"].is_object());
    let moved = s.rpc_with("cdp_bookmark", other);
    assert!(moved["result"].is_object(), "replace: {moved}");
    assert!(
        s.rpc_with(
            "cdp_bookmark_delete",
            serde_json::json!({"group": "g", "name": "moved"})
        )["result"]
            .is_object()
    );
    for (params, says) in [
        (
            serde_json::json!({"group": "g", "name": "bad/name"}),
            "bad bookmark name",
        ),
        (
            serde_json::json!({"volume": "nope", "name": "x"}),
            "no volume",
        ),
        (serde_json::json!({"name": "x"}), "one volume or one group"),
    ] {
        let e = s.rpc_with("cdp_bookmark", params.clone());
        assert!(
            e["error"]["message"].as_str().unwrap_or("").contains(says),
            "{params}: {e}"
        );
    }
    for i in 0..130u64 {
        let off = (i * 7 % 15) * (128 << 10);
        assert_eq!(c.write(off, &pattern(i + 50, 128 << 10)), 0);
    }
    let seg_bytes = || segment_bytes(&dir);
    assert!(seg_bytes() > 8 << 20);
    // The segments were prepared ahead, off the reactor.
    let st = s.rpc("cdp_status");
    assert!(st[0]["switches_prepared"].as_u64().unwrap() >= 2, "{st}");
    // Retention would consolidate now; the bookmark holds it (the retention pass runs every
    // second).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        store::read_meta(&dir).unwrap().base_seq,
        0,
        "held by the bookmark"
    );
    // cdp_status names what holds consolidation, and its point.
    let st = s.rpc("cdp_status");
    let held = &st[0]["consolidation_held_by"];
    assert_eq!(held["bookmark"], "before-upgrade", "{st}");
    assert_eq!(held["time_ns"], t0, "{st}");
    let listed = s.rpc_with("cdp_bookmarks", serde_json::json!({"volume": "v"}));
    assert!(
        listed["result"][0]["bookmarks"]["before-upgrade"]
            .as_u64()
            .is_some(),
        "{listed}"
    );
    let restore = |out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_twinblk"))
            .args(["cdp", "restore", "--bookmark", "before-upgrade", "--dir"])
            .arg(&dir)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let out = tmp.path().join("restored");
    let o = restore(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("records"),
        "progress is shown"
    );
    let mut want = vec![0u8; SIZE];
    want[..first.len()].copy_from_slice(&first);
    assert!(
        std::fs::read(&out).unwrap() == want,
        "the bookmark's content"
    );
    // Deleted: consolidation goes on, and the bookmark is gone.
    let d = s.rpc_with(
        "cdp_bookmark_delete",
        serde_json::json!({"volume": "v", "name": "before-upgrade"}),
    );
    assert!(d["result"].is_object(), "{d}");
    let t = Instant::now();
    while seg_bytes() > 8 << 20 {
        assert!(t.elapsed() < PATIENCE, "not consolidated after the delete");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        s.rpc("cdp_status")[0]["consolidation_held_by"].is_null(),
        "still held after the delete"
    );
    let o = restore(&tmp.path().join("again"));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no bookmark"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    c.disconnect();
    assert!(s.stop());
}

/// A bookmark names a site time no record reached yet (the daemon killed at once after it,
/// before an idle time mark), and the daemon restarts with a wall clock 3 s behind the one
/// that set it (a clock step back): the restarted site's records must still come after the
/// bookmark (site time never goes backwards across restarts), or the bookmark's point would
/// take in writes made after the restart.
#[test]
fn a_bookmark_keeps_its_content_across_a_restart_with_a_clock_behind_it() {
    const SIZE: usize = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n{}",
        volume("v", SIZE as u64, &dir, "4MiB")
    );
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    let first = pattern(1, 64 << 10);
    assert_eq!(c.write(0, &first), 0);
    let r = s.rpc_with(
        "cdp_bookmark",
        serde_json::json!({"volume": "v", "name": "before"}),
    );
    let t = r["result"]["time_ns"].as_u64().expect("bookmark time");
    s.kill();
    drop(c);
    // The clock that set the bookmark was 3 s ahead of the restarted daemon's.
    let ahead = t.max(last(&dir).1) + 3_000_000_000;
    std::fs::write(dir.join("bookmarks"), format!("before\t{ahead}\n")).unwrap();
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    assert_eq!(c.write(0, &pattern(2, 64 << 10)), 0);
    wait_window(&[&dir], ahead, "the window reaches the bookmark");
    let got = restore_file(&dir, Point::Time(ahead), &tmp.path().join("r")).unwrap();
    let mut want = vec![0u8; SIZE];
    want[..first.len()].copy_from_slice(&first);
    assert!(
        got == want,
        "the bookmark's point holds what the volume held then, not the restart's writes"
    );
    c.disconnect();
    assert!(s.stop());
}

/// Overlapping writes in flight at once (the host does not wait between them) reach a file
/// base in the journal's order, so the newest point is exactly the volume's content.
#[test]
fn overlapping_writes_in_flight_together_leave_the_base_as_the_journal_says() {
    const SIZE: u64 = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("v.img");
    let dir = tmp.path().join("j");
    let vols = format!(
        "[[volume]]\nname='v'\nbackend='uring'\npath='{}'\nsize={SIZE}\nblock_size=4096\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        img.display(),
        dir.display()
    );
    let (mut d, addr) = in_process_with("cores=[0]\nwait='adaptive'", &vols);
    let mut c = Client::connect(addr, "v", false);
    for r in 0..1000u64 {
        // Eight writes in one go, several to the same blocks, of different lengths.
        for k in 0..8u64 {
            let b = (r + k % 3) % 16;
            let len = 4096 * (1 + (k as usize % 4));
            c.send_request(1, 0, k, b * 4096, len as u32, &pattern(r * 8 + k, len));
        }
        for _ in 0..8 {
            assert_eq!(c.read_reply(0).1, 0);
        }
    }
    let live = c.read(0, SIZE as u32).unwrap();
    c.disconnect();
    d.stop();
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let newest = pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE).unwrap();
    assert!(
        newest == live,
        "the journal's newest point differs from the volume"
    );
}

/// An idle volume's window keeps reaching to about now while its journal does not grow: each
/// time mark rewrites the previous one in place.
#[test]
fn an_idle_journal_moves_its_window_without_growing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let (mut d, addr) = in_process_with(
        "cores=[0]\nwait='adaptive'",
        &volume("v", 1 << 20, &dir, "4MiB"),
    );
    let mut c = Client::connect(addr, "v", false);
    assert_eq!(c.write(0, &pattern(3, 4096)), 0);
    let tail = || {
        let h = store::load(&dir, Load::ReadOnly).unwrap();
        (
            h.segments.last().unwrap().index.end,
            h.last_time,
            h.last_seq,
        )
    };
    // The first time mark after the write is appended, the later ones rewrite it: waited for
    // (a loaded machine writes the marks late), then one at least a second later.
    let written = tail().1;
    wait_until(
        PATIENCE,
        || tail().1 > written,
        || format!("no time mark after the write at {written}"),
    );
    let (end1, t1, s1) = tail();
    wait_until(
        PATIENCE,
        || tail().1 >= t1 + 1_000_000_000,
        || format!("the window did not move on from {t1}: {:?}", tail()),
    );
    let (end2, _, s2) = tail();
    assert_eq!((end1, s1), (end2, s2), "the journal did not grow");
    // A write after the marks is journaled after them, and the history reads back.
    assert_eq!(c.write(4096, &pattern(4, 4096)), 0);
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(h.last_seq > s2);
    let got = pit::read_at(&h, Point::Seq(h.last_seq), 0, 8192).unwrap();
    assert_eq!(got, [pattern(3, 4096), pattern(4, 4096)].concat());
    c.disconnect();
    d.stop();
}

/// Without the mirror, a CDP volume's updates from connections on other reactors are handed
/// to its home reactor's journal (two reactors, two volumes homed one on each, connections
/// dealt round-robin), and every write of every connection is in the history.
#[test]
fn updates_from_other_reactors_are_journaled_at_the_volumes_home() {
    const SIZE: usize = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dirs = [tmp.path().join("j0"), tmp.path().join("j1")];
    let (mut d, addr) = in_process_with(
        "cores=[0,1]\nwait='adaptive'",
        &format!(
            "{}{}",
            volume("a", SIZE as u64, &dirs[0], "4MiB"),
            volume("b", SIZE as u64, &dirs[1], "4MiB")
        ),
    );
    let mut models = [vec![0u8; SIZE], vec![0u8; SIZE]];
    // Four connections per volume, one after the other: the reactors deal them round-robin,
    // so each volume is written from both reactors.
    for (v, name) in ["a", "b"].iter().enumerate() {
        for conn in 0..4u64 {
            let mut c = Client::connect(addr, name, false);
            for i in 0..16u64 {
                let off = ((conn * 16 + i) % 200) * 4096;
                let data = pattern(conn * 1000 + i * 10 + v as u64, 4096);
                assert_eq!(c.write(off, &data), 0);
                models[v][off as usize..off as usize + 4096].copy_from_slice(&data);
            }
            c.send_request(NBD_CMD_TRIM, 0, 9, 4096 * 7, 8192, &[]);
            assert_eq!(c.read_reply(0).1, 0);
            models[v][4096 * 7..4096 * 9].fill(0);
            c.disconnect();
        }
    }
    let msgs: Vec<u64> = d.shared().stats.iter().map(|s| s.snapshot().msgs).collect();
    assert!(
        msgs.iter().all(|&m| m >= 32),
        "updates crossed reactors both ways: {msgs:?}"
    );
    d.stop();
    for (v, dir) in dirs.iter().enumerate() {
        let h = store::load(dir, Load::ReadOnly).unwrap();
        let got = pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE as u64).unwrap();
        assert!(
            got == models[v],
            "volume {v}: the history differs from what was written"
        );
        assert_eq!(h.entries().filter(|(_, e)| e.op == Op::Write).count(), 64);
    }
}

/// Retention by size winning over retention by age is said, not hidden: `cdp_status` reports
/// the history achieved against its target ("history now X h, target Y h") once size has
/// consolidated records younger than the age target, and the journal keeps running.
#[test]
fn a_history_cut_short_by_size_is_reported_against_its_age_target() {
    const SIZE: usize = 2 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n{}retention_bytes='8MiB'\nretention_age='2h'\n",
        volume("v", SIZE as u64, &dir, "4MiB")
    );
    let s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    let st = s.rpc("cdp_status");
    assert_eq!(st[0]["history_short"], false, "{st}");
    assert_eq!(st[0]["history_target_s"], 7200.0, "{st}");
    assert!(st[0]["history_note"].is_null(), "{st}");
    for i in 0..130u64 {
        let off = (i * 7 % 15) * (128 << 10);
        assert_eq!(c.write(off, &pattern(i + 70, 128 << 10)), 0);
    }
    let t = Instant::now();
    let st = loop {
        let st = s.rpc("cdp_status");
        if st[0]["history_short"] == true {
            break st;
        }
        assert!(t.elapsed() < PATIENCE, "never reported: {st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let note = st[0]["history_note"].as_str().unwrap_or("");
    assert!(note.starts_with("history now 0.0 h, target 2.0 h"), "{st}");
    let h = st[0]["history_s"].as_f64().unwrap();
    assert!((0.0..7200.0).contains(&h), "{st}");
    assert_eq!(st[0]["journal"], "running", "{st}");
    assert!(store::read_meta(&dir).unwrap().base_seq > 0, "consolidated");
    // The journal still takes writes.
    assert_eq!(c.write(0, &pattern(999, 4096)), 0);
    c.disconnect();
}
