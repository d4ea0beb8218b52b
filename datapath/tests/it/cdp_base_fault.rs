//! A base device that fails an update (EIO) under the CDP layer of a volume without the
//! mirror: the update fails to its host, the volume keeps what it held, and the history must
//! not serve the failed update's record as the volume's content: a point after it either is
//! refused or reads what the volume reads.

use crate::cdp::wait_window;
use crate::harness::{Progress, Server, pattern, wait_progress};
use crate::rawnbd::Client;
use std::path::Path;
use std::time::Duration;
use twinblk::layer::cdp::clock;
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, CdpError, Load};

const SIZE: u64 = 4 << 20;
const BAD: u64 = 1 << 20;

fn at(dir: &Path, p: Point) -> Result<Vec<u8>, CdpError> {
    let h = store::load(dir, Load::ReadOnly)?;
    pit::read_at(&h, p, 0, SIZE)
}

#[test]
fn a_base_write_that_fails_is_not_served_as_the_volumes_content() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n\
         [[volume]]\nname='v'\nbackend='uring'\nsize={SIZE}\nblock_size=4096\npath='{}'\n\
         fail_range=[{BAD}, 4096]\nfail_writes_only=true\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        tmp.path().join("v.img").display(),
        dir.display()
    );
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    let first = pattern(1, 8192);
    assert_eq!(c.write(0, &first), 0);
    std::thread::sleep(Duration::from_millis(5));
    let t_before = clock::now();
    // The idle journal's time mark carries the window past it.
    wait_window(&[&dir], t_before, "a time mark before the failure");
    // The device refuses the write: the host gets an error, the block keeps its zeroes.
    assert_ne!(c.write(BAD, &pattern(2, 4096)), 0, "the write fails");
    assert_eq!(c.read(BAD, 4096).unwrap(), vec![0u8; 4096]);
    let second = pattern(3, 8192);
    assert_eq!(c.write(8192, &second), 0);
    std::thread::sleep(Duration::from_millis(5));
    let t_after = clock::now();
    let volume = c.read(0, SIZE as u32).unwrap();
    let mut want = vec![0u8; SIZE as usize];
    want[..8192].copy_from_slice(&first);
    want[8192..16384].copy_from_slice(&second);
    assert!(
        volume == want,
        "the volume holds the acknowledged writes only"
    );
    // While the daemon runs, readers never even take the failed write's record: the done
    // watermark stays below it, the writes after it notwithstanding.
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(h.running.is_some(), "the daemon's watermark is read");
    assert!(
        h.entries().all(|(_, e)| e.offset != BAD),
        "a reader of the running history takes the failed write's record"
    );
    let journal = s.rpc("cdp_status")[0]["journal"].clone();
    if journal == "running" {
        wait_window(&[&dir], t_after, "the window reaches the last write");
    }
    let mut before = vec![0u8; SIZE as usize];
    before[..8192].copy_from_slice(&first);
    assert!(
        at(&dir, Point::Time(t_before)).unwrap() == before,
        "the point before the failure"
    );
    match at(&dir, Point::Time(t_after)) {
        Ok(got) => assert!(
            got == volume,
            "the history serves the failed write's record as the volume's content (block at {BAD}: {:?}..)",
            &got[BAD as usize..BAD as usize + 8]
        ),
        Err(
            e @ (CdpError::NotWhole { .. } | CdpError::InGap { .. } | CdpError::Outside { .. }),
        ) => {
            assert_eq!(journal, "degraded", "{e}");
            eprintln!("after the failure: refused: {e}")
        }
        Err(e) => panic!("{e}"),
    }
    // A restart makes the history the volume again.
    c.disconnect();
    assert!(s.stop());
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    let third = pattern(4, 4096);
    assert_eq!(c.write(3 << 20, &third), 0);
    std::thread::sleep(Duration::from_millis(5));
    let t_end = clock::now();
    let volume = c.read(0, SIZE as u32).unwrap();
    wait_window(&[&dir], t_end, "the window after the restart");
    assert!(
        at(&dir, Point::Time(t_end)).unwrap() == volume,
        "the newest point after the restart"
    );
    c.disconnect();
    assert!(s.stop());
}

/// Overlapping writes pipelined to one block (each held behind the one before it until that
/// one's base write finishes, its record journaled at once), the journal in memory (written
/// in the reactor's turn) and the base on a disk, the daemon killed: after the restart the
/// history's newest point must be what the volume holds.
#[test]
fn after_a_kill_the_newest_point_is_the_volume_at_overlapping_writes_in_flight() {
    kill_rounds("/dev/shm", 4);
}

/// The same with the journal on a disk and writes spread over 1,000 blocks: appends
/// (`RWF_DSYNC`) and base writes in flight together at the kill, some base writes never
/// done.
#[test]
fn after_a_kill_the_newest_point_is_the_volume_with_a_journal_on_disk() {
    kill_rounds("/var/tmp", 1000);
}

/// Eight rounds of pipelined 8 KiB writes over `blocks` blocks, the daemon killed in each,
/// the journal in a directory under `journal_in`; after each restart the history's newest
/// point must be the volume.
fn kill_rounds(journal_in: &str, blocks: u64) {
    use twinblk::frontend::nbd::proto::cmd;
    let shm = tempfile::tempdir_in(journal_in).unwrap();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let dir = shm.path().join("j");
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n\
         [[volume]]\nname='v'\nbackend='uring'\nsize={SIZE}\nblock_size=4096\npath='{}'\n\
         [volume.cdp]\ndir='{}'\nsegment_size='64MiB'\n",
        tmp.path().join("v.img").display(),
        dir.display()
    );
    let mut s = Server::start(tmp.path(), &body);
    for round in 0..8u64 {
        let addr = s.addr;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = std::sync::Arc::clone(&stop);
        let batches = Progress::default();
        let batch_done = batches.clone();
        let w = std::thread::spawn(move || {
            let Ok(mut c) = std::panic::catch_unwind(|| Client::connect(addr, "v", false)) else {
                return;
            };
            let mut n = 0u64;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    for i in 0..32u64 {
                        let d = pattern(round * 1_000_000 + n + i, 8192);
                        c.send_request(cmd::WRITE, 0, n + i, ((n + i) % blocks) * 4096, 8192, &d);
                    }
                    for _ in 0..32 {
                        c.read_reply(0);
                    }
                }));
                if r.is_err() {
                    return;
                }
                batch_done.tick();
                n += 32;
            }
        });
        std::thread::sleep(Duration::from_millis(150 + round * 37));
        // And at least a batch answered (on a loaded machine the fixed time may pass before
        // any): the kill lands among writes that went through.
        wait_progress(&[batches], &[0], 1, "before the kill");
        s.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = w.join();
        s = s.respawn();
        let mut c = Client::connect(s.addr, "v", false);
        let volume = c.read(0, SIZE as u32).unwrap();
        c.disconnect();
        let h = store::load(&dir, Load::ReadOnly).unwrap();
        let newest = pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE).unwrap();
        let differ = (0..SIZE as usize / 4096)
            .filter(|&b| newest[b * 4096..(b + 1) * 4096] != volume[b * 4096..(b + 1) * 4096])
            .count();
        eprintln!(
            "round {round}: last_seq {} blocks differing {differ}",
            h.last_seq
        );
        assert_eq!(
            differ, 0,
            "round {round}: the history's newest point is not the volume after the restart"
        );
    }
    assert!(s.stop());
}

/// The volume of [`hung_and_killed`]: 16 MiB in a file, segments of 4 MiB.
const HUNG_SIZE: u64 = 16 << 20;
/// Where its write hangs.
const HUNG: u64 = 14 << 20;

/// A base write that hangs (the device never answers it) while the appends go on: its record
/// is journaled, and 12 MiB of acknowledged writes after it (none over its block) fill three
/// segments more, so at the kill that record lies further back than the last two segments.
/// Returns the killed server, the CDP directory and what the volume holds.
fn hung_and_killed(root: &Path) -> (Server, std::path::PathBuf, Vec<u8>) {
    use twinblk::frontend::nbd::proto::cmd;
    let (mut s, dir, _) = file_volume(root, &format!("stall_range=[{HUNG}, 4096]"));
    let mut hung = Client::connect(s.addr, "v", false);
    hung.send_request(cmd::WRITE, 0, 1, HUNG, 4096, &pattern(7, 4096));
    let mut c = Client::connect(s.addr, "v", false);
    let mut want = vec![0u8; HUNG_SIZE as usize];
    for i in 0..96u64 {
        let off = i * (128 << 10);
        let d = pattern(100 + i, 128 << 10);
        assert_eq!(c.write(off, &d), 0);
        want[off as usize..][..d.len()].copy_from_slice(&d);
    }
    s.kill();
    drop((hung, c));
    // (Read after the kill: while the daemon runs, readers stop before the hung write's record.)
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(h.segments.len() >= 4, "segments: {}", h.segments.len());
    let hung_rec = h.entries().find(|(_, e)| e.offset == HUNG).map(|(n, _)| n);
    assert!(
        hung_rec.is_some_and(|n| n + 2 < h.segments.last().unwrap().header.segno),
        "the hung write's record lies before the last two segments: {hung_rec:?}"
    );
    (s, dir, want)
}

/// The history's newest point of `dir` must be `want` (the volume), at the hung block too.
fn newest_is(dir: &Path, want: &[u8]) {
    let h = store::load(dir, Load::ReadOnly).unwrap();
    let newest = pit::read_at(&h, Point::Seq(h.last_seq), 0, HUNG_SIZE).unwrap();
    let hung_block = &newest[HUNG as usize..][..4096];
    assert!(
        hung_block == &want[HUNG as usize..][..4096],
        "the newest point holds the hung write's record, which the volume never got: {:?}..",
        &hung_block[..8]
    );
    assert!(newest == want, "the newest point is the volume");
}

/// After the kill of [`hung_and_killed`] and a restart, the newest point must still be what
/// the volume holds at the hung block (its zeroes), and every acknowledged write must be in
/// it (the crash comparison starts at the newest segment's mark, not two segments back).
#[test]
fn after_a_kill_a_record_whose_base_write_hung_segments_ago_is_not_the_newest_content() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (s, dir, want) = hung_and_killed(tmp.path());
    let mut s = s.respawn();
    newest_is(&dir, &want);
    let mut c = Client::connect(s.addr, "v", false);
    assert!(c.read(0, HUNG_SIZE as u32).unwrap() == want, "the volume");
    c.disconnect();
    s.kill();
}

/// A start whose recovery was killed after it indexed the crashed segment (as recovery does
/// before it compares) must still compare: only a clean stop's index says nothing is left
/// to compare.
#[test]
fn a_start_after_a_recovery_killed_part_way_still_compares() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (s, dir, want) = hung_and_killed(tmp.path());
    // What the killed recovery left: the last segment's index, written from a scan.
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let n = h.segments.len();
    let prev = h.segments[n - 2].index.entries.last().unwrap();
    store::segment_index(
        &dir,
        &h.meta,
        h.segments[n - 1].header.segno,
        prev.seq,
        prev.time,
    )
    .unwrap();
    let mut s = s.respawn();
    newest_is(&dir, &want);
    s.kill();
}

/// `twinblk cdp rollback` straight after the kill (no start in between) compares as a start
/// would: rolled back to the history's newest point, the volume must then be that point,
/// the hung block included.
#[test]
fn a_rollback_straight_after_a_kill_compares_first() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (_s, dir, _) = hung_and_killed(tmp.path());
    let last = store::load(&dir, Load::ReadOnly).unwrap().last_seq;
    let cfg = tmp.path().join("twinblk.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twinblk"))
        .args(["cdp", "rollback", "--config"])
        .arg(&cfg)
        .args(["--volume", "v", "--seq", &last.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let volume = std::fs::read(tmp.path().join("v.img")).unwrap();
    newest_is(&dir, &volume[..HUNG_SIZE as usize]);
}

/// Where [`late_failure`]'s slow write lands; the write held behind it fails late over the
/// block after it.
const SLOW: u64 = 1 << 20;

/// A volume whose block at [`SLOW`] answers after 300 ms and whose next three blocks refuse
/// updates. Write `a` (that block, slow, then done) is followed at once by `b` (both blocks:
/// held by the layer behind `a`, its record journaled and durable), then, 50 ms later, by
/// `c` (a refused block alone) whose failure stops the journal while `b`'s base write has not
/// even started; `b` then fails once `a` is done. `between` runs after `b`'s record is durable
/// (before `c`). Returns the server, the CDP directory, a time after `b`'s record and what the
/// volume holds.
fn late_failure(
    root: &Path,
    between: impl FnOnce(&Server),
) -> (Server, std::path::PathBuf, u64, Vec<u8>) {
    use twinblk::frontend::nbd::proto::cmd;
    let dir = root.join("j");
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n\
         [[volume]]\nname='v'\nbackend='uring'\nsize={SIZE}\nblock_size=4096\npath='{}'\n\
         slow_range=[{SLOW}, 4096]\nslow_ms=300\n\
         fail_range=[{}, 12288]\nfail_writes_only=true\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        root.join("v.img").display(),
        SLOW + 4096,
        dir.display()
    );
    let s = Server::start(root, &body);
    let mut c = Client::connect(s.addr, "v", false);
    assert_eq!(c.write(0, &pattern(1, 8192)), 0);
    c.send_request(cmd::WRITE, 0, 10, SLOW, 4096, &pattern(2, 4096));
    c.send_request(cmd::WRITE, 0, 11, SLOW, 8192, &pattern(3, 8192));
    std::thread::sleep(Duration::from_millis(50));
    let t_b = clock::now();
    between(&s);
    c.send_request(cmd::WRITE, 0, 12, SLOW + 8192, 4096, &pattern(4, 4096));
    let mut replies: Vec<(u64, u32)> = (0..3)
        .map(|_| c.read_reply(0))
        .map(|r| (r.0, r.1))
        .collect();
    replies.sort();
    assert_eq!(replies[0], (10, 0), "a is done");
    assert_ne!(replies[1].1, 0, "b fails");
    assert_ne!(replies[2].1, 0, "c fails");
    let volume = c.read(0, SIZE as u32).unwrap();
    let mut want = vec![0u8; SIZE as usize];
    want[..8192].copy_from_slice(&pattern(1, 8192));
    want[SLOW as usize..][..4096].copy_from_slice(&pattern(2, 4096));
    assert!(volume == want, "the volume holds what was acknowledged");
    c.disconnect();
    (s, dir, t_b, volume)
}

/// The point of `b`'s record (and a time after it) must be refused or read what the volume
/// reads: the volume never held `b`'s bytes. (While the daemon that journaled `b` runs, its
/// done watermark stays below the failed `b`: readers do not even see its record.)
fn not_served(dir: &Path, t_b: u64, volume: &[u8]) {
    let h = store::load(dir, Load::ReadOnly).unwrap();
    let b = h
        .entries()
        .find(|(_, e)| e.offset == SLOW && e.len == 8192)
        .map(|(_, e)| e.seq);
    match b {
        Some(b) => not_served_at(dir, Point::Seq(b), volume),
        None => assert!(
            h.running.is_some_and(|d| d == h.last_seq),
            "b's record is missing, and no running writer's watermark left it out"
        ),
    }
    not_served_at(dir, Point::Time(t_b), volume);
}

fn not_served_at(dir: &Path, p: Point, volume: &[u8]) {
    match at(dir, p) {
        Ok(got) => assert!(
            got == volume,
            "the history serves the failed write's record as the volume's content (block at {}: {:?}..)",
            SLOW + 4096,
            &got[SLOW as usize + 4096..][..8]
        ),
        Err(
            e @ (CdpError::NotWhole { .. } | CdpError::InGap { .. } | CdpError::Outside { .. }),
        ) => {
            eprintln!("after the late failure: {p:?} refused: {e}")
        }
        Err(e) => panic!("{e}"),
    }
}

/// Two base failures close together, the later update's first: its failure stops the journal
/// with the history whole up to the record before it, which is the earlier update's, whose
/// base write then fails too. The history must not stay whole past that record.
#[test]
fn a_base_write_that_fails_after_the_journal_stopped_is_not_served_either() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (s, dir, t_b, volume) = late_failure(tmp.path(), |_| {});
    assert_eq!(s.rpc("cdp_status")[0]["journal"], "degraded");
    not_served(&dir, t_b, &volume);
    // The restart journals the changed regions again: the newest point is the volume.
    let mut s = s.restart();
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let newest = pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE).unwrap();
    assert!(newest == volume, "the newest point after the restart");
    not_served(&dir, t_b, &volume);
    assert!(s.stop());
}

/// The same with CDP switched off at run time while `b` waits: `b`'s base write fails after
/// the switch's first step stopped journaling. The history the switch leaves must not be whole
/// past `b`'s record.
#[test]
fn a_base_write_that_fails_while_cdp_is_switched_off_is_not_served() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let disable = std::cell::RefCell::new(None);
    let (mut s, dir, t_b, volume) = late_failure(tmp.path(), |s| {
        let socket = s.socket.clone();
        *disable.borrow_mut() = Some(std::thread::spawn(move || {
            crate::harness::rpc_at(&socket, "cdp_disable", serde_json::json!({"volume": "v"}))
        }));
        // The switch's first step has stopped journaling (it waits for `b` to end the rest),
        // so `c` reaches the base unjournaled and `b` fails with CDP switched off.
        let t = std::time::Instant::now();
        while s.rpc("cdp_status")[0]["journal"] != "off" {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the journal never went off"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let r = disable.into_inner().unwrap().join().unwrap();
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(s.rpc("cdp_status")[0]["journal"], "off");
    not_served(&dir, t_b, &volume);
    assert!(s.stop());
}

/// A flush the base fails: the writes acknowledged since the last completed flush may not be
/// durable in the volume's device (a power loss may take them), and which they were is not
/// kept. The journal stops with the history whole only up to what the last completed flush
/// covered (a first write, flushed while the device's flushes still worked: the point of its
/// record stays readable), and the restart journals the whole volume again.
#[test]
fn a_flush_the_base_fails_ends_the_whole_history_at_the_last_completed_flush() {
    use twinblk::frontend::nbd::proto::cmd;
    const WORKS_MS: u64 = 5000;
    // The device's flushes work for WORKS_MS from the daemon's start: the start, a write and
    // its flush must fit in that window. A start too slow for it (a loaded machine) is tried
    // again in a new directory, at most 3 times.
    let mut tries = 0;
    let (_tmp, dir, mut s, mut c, started, first, w0) = loop {
        tries += 1;
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let dir = tmp.path().join("j");
        let body = format!(
            "[reactor]\ncores=[0]\npin=false\n\
             [[volume]]\nname='v'\nbackend='uring'\nsize={SIZE}\nblock_size=4096\npath='{}'\n\
             fail_flush_after_ms={WORKS_MS}\n\
             [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
            tmp.path().join("v.img").display(),
            dir.display()
        );
        let started = std::time::Instant::now();
        let s = Server::start(tmp.path(), &body);
        let mut c = Client::connect(s.addr, "v", false);
        let first = pattern(1, 8192);
        assert_eq!(c.write(0, &first), 0);
        let w0 = store::load(&dir, Load::ReadOnly).unwrap().last_seq;
        c.send_request(cmd::FLUSH, 0, 4, 0, 0, &[]);
        let e = c.read_reply(0).1;
        if started.elapsed() < Duration::from_millis(WORKS_MS) {
            assert_eq!(e, 0, "the first flush works");
            break (tmp, dir, s, c, started, first, w0);
        }
        assert!(
            tries < 3,
            "too slow a start for the test's window, {tries} times"
        );
        eprintln!(
            "too slow a start for the test's window ({:?}): again",
            started.elapsed()
        );
    };
    std::thread::sleep(Duration::from_millis(WORKS_MS + 200).saturating_sub(started.elapsed()));
    assert_eq!(c.write(8192, &pattern(2, 8192)), 0);
    // (The done watermark's helper stores it in the file up to about a millisecond after.)
    let t = std::time::Instant::now();
    let w1 = loop {
        let w1 = store::load(&dir, Load::ReadOnly).unwrap().last_seq;
        if w1 > w0 || t.elapsed() > Duration::from_secs(30) {
            break w1;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(w1 > w0);
    c.send_request(cmd::FLUSH, 0, 5, 0, 0, &[]);
    assert_ne!(c.read_reply(0).1, 0, "the flush fails");
    assert_eq!(s.rpc("cdp_status")[0]["journal"], "degraded");
    match at(&dir, Point::Seq(w1)) {
        Err(CdpError::NotWhole { .. }) => {}
        r => panic!("the write not known durable is served as history: {r:?}"),
    }
    let mut then = vec![0u8; SIZE as usize];
    then[..8192].copy_from_slice(&first);
    match at(&dir, Point::Seq(w0)) {
        Ok(got) => assert!(got == then, "the flushed write's point"),
        Err(e) => panic!("the flushed write's point ({w0}) is refused: {e}"),
    }
    let volume = c.read(0, SIZE as u32).unwrap();
    c.disconnect();
    s = s.restart();
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let newest = pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE).unwrap();
    assert!(newest == volume, "the newest point after the restart");
    assert!(s.stop());
}

/// A file volume `v` of [`HUNG_SIZE`] in `root` with the device lines `device`, CDP in 4 MiB
/// segments; the server, the CDP directory and the volume's file.
fn file_volume(root: &Path, device: &str) -> (Server, std::path::PathBuf, std::path::PathBuf) {
    let dir = root.join("j");
    let img = root.join("v.img");
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n\
         [[volume]]\nname='v'\nbackend='uring'\nsize={HUNG_SIZE}\nblock_size=4096\npath='{}'\n\
         {device}\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        img.display(),
        dir.display()
    );
    (Server::start(root, &body), dir, img)
}

/// A file volume whose device takes its flushes very long (none completes in a test)
/// ([`file_volume`]).
fn never_flushing(root: &Path) -> (Server, std::path::PathBuf, std::path::PathBuf) {
    file_volume(root, "slow_flush=true\nslow_ms=600000")
}

/// 6 MiB of acknowledged writes from the volume's start (a segment and a half), recorded in
/// `want`.
fn six_mib(c: &mut Client, want: &mut [u8]) {
    for i in 0..48u64 {
        let off = i * (128 << 10);
        let d = pattern(100 + i, 128 << 10);
        assert_eq!(c.write(off, &d), 0);
        want[off as usize..][..d.len()].copy_from_slice(&d);
    }
}

/// What a power loss may do to the write at [`HUNG`], which no completed flush covers: the
/// device drops it (it held zeroes there).
fn drop_unflushed(img: &Path, want: &mut [u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&[0u8; 4096], HUNG).unwrap();
    want[HUNG as usize..][..4096].fill(0);
}

/// A power loss drops writes the volume's device had not flushed while their records, durable
/// in the journal, survive. Emulated ([`never_flushing`]): a write at [`HUNG`] is
/// acknowledged, 6 MiB more fill the first 4 MiB segment and start the next, the daemon is
/// killed and the device drops that write. After the restart the newest point must be what
/// the volume holds: the mark in the segment headers starts at the first record no completed
/// flush covers, not only at the first write still in flight.
#[test]
fn after_a_power_loss_a_write_the_device_never_flushed_is_not_the_newest_content() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (mut s, dir, img) = never_flushing(tmp.path());
    let mut c = Client::connect(s.addr, "v", false);
    assert_eq!(c.write(HUNG, &pattern(7, 4096)), 0);
    let mut want = vec![0u8; HUNG_SIZE as usize];
    six_mib(&mut c, &mut want);
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert_eq!(
        h.segments.len(),
        2,
        "the write's record is in the first of two segments"
    );
    s.kill();
    c.disconnect();
    drop_unflushed(&img, &mut want);
    let mut s = s.respawn();
    newest_is(&dir, &want);
    s.kill();
}

/// A power loss in the run after a kill: the killed run's last write may still sit in the
/// device's cache when the next run starts (its flushes here never complete), and must not
/// drop out of the mark at that run's first segment switch (found by review: the start took
/// the base as flushed; it now takes it as flushed only up to the crashed run's mark, until
/// a flush of its own completes).
#[test]
fn a_power_loss_in_the_run_after_a_kill_is_compared_too() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (mut s, dir, img) = never_flushing(tmp.path());
    let mut c = Client::connect(s.addr, "v", false);
    assert_eq!(c.write(HUNG, &pattern(7, 4096)), 0);
    s.kill();
    c.disconnect();
    let mut s = s.respawn();
    let mut c = Client::connect(s.addr, "v", false);
    let mut want = vec![0u8; HUNG_SIZE as usize];
    six_mib(&mut c, &mut want);
    assert!(store::load(&dir, Load::ReadOnly).unwrap().segments.len() >= 3);
    s.kill();
    c.disconnect();
    drop_unflushed(&img, &mut want);
    let mut s = s.respawn();
    newest_is(&dir, &want);
    s.kill();
}

/// `twinblk cdp rollback --all` straight after a kill, stopped part way through its first
/// pass (which journals the volume's own content where it differs from the newest point)
/// before it reached the record whose base write never ran, then a start: the start must
/// still compare that record (found by review: the run's segments did not keep the crashed
/// run's mark).
#[test]
fn an_all_rollback_stopped_part_way_after_a_kill_leaves_the_tail_compared() {
    use twinblk::layer::cdp::rollback::{self, Goal, Target};
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (s, dir, _) = hung_and_killed(tmp.path());
    let img = tmp.path().join("v.img");
    // Data the history lacks (so the first pass journals it), well before the hung block.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&pattern(999, 4 << 20), 0).unwrap();
    }
    let last = store::load(&dir, Load::ReadOnly).unwrap().last_seq;
    let target = Target {
        name: "v".into(),
        dir: dir.clone(),
        volume: img.clone(),
        segment_size: 4 << 20,
        mirror_state: None,
        all: true,
    };
    let p = rollback::prepare(target, Goal::To(Point::Seq(last))).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rollback::run(p, |g| {
            if g.batches > 0 && g.compared < HUNG {
                panic!("stopped part way");
            }
        })
    }));
    assert!(r.is_err(), "the run was not stopped part way");
    assert!(
        !dir.join("rollback").exists(),
        "stopped before its marker: the daemon may start"
    );
    let mut s = s.respawn();
    let volume = std::fs::read(&img).unwrap();
    newest_is(&dir, &volume[..HUNG_SIZE as usize]);
    s.kill();
}

/// The same with a device that really loses what it did not flush (`volatile_cache`, which
/// CDP now takes): one write flushed, then 6 MiB more acknowledged that the host never
/// flushes, across a segment switch (where the layer flushes the base itself), then a power
/// loss (SIGKILL). After the restart the volume lacks what was written after the last flush;
/// the history still holds every acknowledged write at its own point (its
/// records were durable when they were acknowledged), and the newest point is the volume.
/// Then a clean stop: behind such a cache it does not seal the log clean (the cache is
/// written back only after the layer is gone), so the next start compares again.
#[test]
fn behind_a_volatile_cache_a_power_loss_keeps_every_write_at_its_point_and_the_newest_is_the_volume()
 {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (mut s, dir, img) = file_volume(tmp.path(), "volatile_cache=true");
    let mut c = Client::connect(s.addr, "v", false);
    let flushed = pattern(7, 4096);
    assert_eq!(c.write(HUNG, &flushed), 0);
    assert_eq!(c.flush(), 0);
    let mut all = vec![0u8; HUNG_SIZE as usize];
    all[HUNG as usize..][..4096].copy_from_slice(&flushed);
    six_mib(&mut c, &mut all);
    let before = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(before.segments.len() >= 2, "a segment switch in between");
    let last = before.last_seq;
    s.kill();
    c.disconnect();
    let on_disk = std::fs::read(&img).unwrap();
    assert!(
        on_disk[HUNG as usize..][..4096] == flushed[..],
        "the flushed write survived the power loss"
    );
    // (The layer flushes the base itself at a segment switch, so the writes before the
    // switch may be there; those after it are not.)
    assert!(
        on_disk != all,
        "the writes after the last flush were lost with the cache (the test device works)"
    );
    let mut s = s.respawn();
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let at_last = pit::read_at(&h, Point::Seq(last), 0, HUNG_SIZE).unwrap();
    assert!(
        at_last == all,
        "every acknowledged write is at the point of the last one before the power loss"
    );
    let mut c = Client::connect(s.addr, "v", false);
    let volume = crate::cdp_live_fault::read_all(&mut c, HUNG_SIZE as usize);
    assert!(volume == on_disk, "the volume is what the device kept");
    newest_is(&dir, &volume);
    c.disconnect();
    s.stop();
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let newest = h.segments.last().unwrap().header.segno;
    assert!(
        !store::sealed_clean(&dir, &h.meta, newest),
        "a clean stop behind a volatile cache does not seal the log clean"
    );
}

/// A reader of the history while the daemon runs (a restore, a view, `cdp window`) must not
/// take a record whose base write is still to come as part of the history: here `b` (held
/// behind the slow `a`, its record durable), whose base write then fails. A restore of the
/// newest point made in between must not hold `b`'s bytes, which the volume never held: once
/// `b` fails the history ends before it, but the restored file is already made. Until session
/// 28 readers went by the records alone (session 27's audit); they now stop at the running
/// writer's done watermark (docs/cdp-format.md, "Readers of a running history").
#[test]
fn a_point_read_while_a_write_is_in_flight_never_holds_bytes_the_volume_never_had() {
    let root = tempfile::tempdir().unwrap();
    let restored = root.path().join("r.img");
    let (s, _dir, _t_b, volume) = late_failure(root.path(), |_| {
        let h = store::load(&root.path().join("j"), Load::ReadOnly).unwrap();
        let _ = pit::restore(&h, Point::Seq(h.last_seq), &restored, |_, _| {});
    });
    drop(s);
    // (A restore refused in between is right too.)
    let Ok(got) = std::fs::read(&restored) else {
        return;
    };
    let b_block = SLOW as usize + 4096..SLOW as usize + 8192;
    assert!(
        got[b_block.clone()] == volume[b_block],
        "a restore of the newest point made while b was in flight holds b's bytes (block at {}: {:?}..), which the volume never held",
        SLOW + 4096,
        &got[SLOW as usize + 4096..][..8]
    );
}

/// The same with a view (as `twinblk cdp view` and `cdp_view_open` open one) of the newest
/// point opened while `b` waits for its base write: read after `b` failed, the view must not
/// serve `b`'s bytes either (a view's point is fixed when it opens).
#[test]
fn a_view_opened_while_a_write_is_in_flight_never_serves_it() {
    use twinblk::layer::cdp::view::{ViewDevice, ViewSpec};
    let root = tempfile::tempdir().unwrap();
    let view = std::cell::RefCell::new(None);
    let (s, _dir, _t_b, volume) = late_failure(root.path(), |_| {
        let dir = root.path().join("j");
        let h = store::load(&dir, Load::ReadOnly).unwrap();
        assert!(h.running.is_some(), "the daemon's watermark is read");
        let v = ViewDevice::open(&ViewSpec {
            dir,
            point: Point::Seq(h.last_seq),
            sandbox: false,
        });
        *view.borrow_mut() = Some(v);
    });
    let v = view.into_inner().unwrap().unwrap();
    let mut got = vec![0u8; 4096];
    v.read_point(SLOW + 4096, &mut got).unwrap();
    assert!(
        got[..] == volume[SLOW as usize + 4096..][..4096],
        "a view opened while b was in flight serves b's bytes (block at {}: {:?}..), which the volume never held",
        SLOW + 4096,
        &got[..8]
    );
    drop((v, s));
}

/// A base write stalled in the device (it never completes) while acknowledged writes go on
/// after it: while the daemon runs, readers stop before its record (its bytes, which the
/// volume does not hold, are in no point they serve, and nor are the later writes: the window
/// waits for it); after a kill (its lock gone) every acknowledged write is at the newest point
/// again; after the restart the newest point is the volume.
#[test]
fn a_write_stalled_in_the_device_is_not_read_until_a_kill_then_every_acknowledged_write_is() {
    use twinblk::frontend::nbd::proto::cmd;
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (mut s, dir, _) = file_volume(tmp.path(), &format!("stall_range=[{HUNG}, 4096]"));
    let mut c = Client::connect(s.addr, "v", false);
    let mut want = vec![0u8; HUNG_SIZE as usize];
    let first = pattern(1, 8192);
    assert_eq!(c.write(0, &first), 0);
    want[..8192].copy_from_slice(&first);
    let mut hung = Client::connect(s.addr, "v", false);
    hung.send_request(cmd::WRITE, 0, 1, HUNG, 4096, &pattern(7, 4096));
    let mut later = Vec::new();
    for i in 1..=4u64 {
        let off = i * (128 << 10);
        let d = pattern(100 + i, 128 << 10);
        assert_eq!(c.write(off, &d), 0);
        want[off as usize..][..d.len()].copy_from_slice(&d);
        later.push(off);
    }
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(h.running.is_some(), "the daemon's watermark is read");
    assert!(
        h.entries().all(|(_, e)| e.offset != HUNG),
        "the stalled write's record is taken while its base write is in flight"
    );
    let newest = pit::read_at(&h, Point::Seq(h.last_seq), 0, HUNG_SIZE).unwrap();
    assert!(
        newest[HUNG as usize..][..4096] == want[HUNG as usize..][..4096],
        "the newest point while the daemon runs holds the stalled write's bytes: {:?}..",
        &newest[HUNG as usize..][..8]
    );
    assert!(newest[..8192] == first[..], "the write before it is read");
    // `cdp_status` says where readers stop: the watermark, its window end the reader's.
    let st = s.rpc("cdp_status")[0].clone();
    assert_eq!(st["done_seq"].as_u64(), h.running, "{st}");
    assert!(
        st["done_seq"].as_u64() < st["durable_seq"].as_u64(),
        "the acknowledged writes after the stalled one are durable: {st}"
    );
    assert_eq!(st["window_end_ns"].as_u64(), Some(h.last_time), "{st}");
    s.kill();
    drop((hung, c));
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert_eq!(h.running, None, "no writer runs after the kill");
    let newest = pit::read_at(&h, Point::Seq(h.last_seq), 0, HUNG_SIZE).unwrap();
    for off in later {
        let r = off as usize..off as usize + (128 << 10);
        assert!(
            newest[r.clone()] == want[r],
            "an acknowledged write at {off} is not at the newest point after the kill"
        );
    }
    let mut s = s.respawn();
    newest_is(&dir, &want);
    s.kill();
}

/// A failed write's record that consolidation folds into `base.img` (review of session 28:
/// "consolidation may be able to fold a failed write's record into base.img; readers are
/// protected by degraded.map"). `b` (held behind the slow `a`, failing once `a` is done) has its
/// record in a segment before the newest (5 MiB of acknowledged writes follow it while `a` is
/// slow). While the daemon runs, consolidation leaves that segment alone (the newest segment's
/// mark is at or before `b`); after the clean stop the newest segment is sealed clean and the
/// mark no longer holds it, so a pass folds `b`'s bytes into the base copy. No point served, then
/// or after the restart, holds them (`degraded.map`, then the restart's gap record, refuse the
/// points after the record before `b` until its range is journaled again from the base), and
/// after the restart the newest point is the volume.
#[test]
fn a_failed_writes_record_folded_into_the_base_copy_is_never_served() {
    use twinblk::frontend::nbd::proto::cmd;
    use twinblk::layer::cdp::retain::{Retention, consolidate_once};
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = root.path();
    let dir = root.join("j");
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n\
         [[volume]]\nname='v'\nbackend='uring'\nsize={SIZE}\nblock_size=4096\npath='{}'\n\
         slow_range=[{SLOW}, 4096]\nslow_ms=5000\n\
         fail_range=[{}, 4096]\nfail_writes_only=true\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        root.join("v.img").display(),
        SLOW + 4096,
        dir.display()
    );
    let mut s = Server::start(root, &body);
    let mut c = Client::connect(s.addr, "v", false);
    assert_eq!(c.write(0, &pattern(1, 8192)), 0);
    c.send_request(cmd::WRITE, 0, 10, SLOW, 4096, &pattern(2, 4096));
    c.send_request(cmd::WRITE, 0, 11, SLOW, 8192, &pattern(3, 8192));
    let mut bulk = Client::connect(s.addr, "v", false);
    for i in 0..40u64 {
        let off = (2 << 20) + (i % 8) * (128 << 10);
        assert_eq!(bulk.write(off, &pattern(20 + i, 128 << 10)), 0);
    }
    let mut replies: Vec<(u64, u32)> = (0..2)
        .map(|_| c.read_reply(0))
        .map(|r| (r.0, r.1))
        .collect();
    replies.sort();
    assert_eq!(replies[0], (10, 0), "a is done");
    assert_ne!(replies[1].1, 0, "b fails");
    let volume = c.read(0, SIZE as u32).unwrap();
    assert!(
        volume[SLOW as usize + 4096..][..4096] == [0u8; 4096],
        "the volume never held b's bytes"
    );
    // b's bytes, which no served point may hold.
    let b_bytes = pattern(3, 8192)[4096..].to_vec();
    let check = |when: &str| {
        let h = store::load(&dir, Load::ReadOnly).unwrap();
        let mut served = 0;
        for seq in h.first_seq()..=h.last_seq {
            match pit::read_at(&h, Point::Seq(seq), SLOW + 4096, 4096) {
                Ok(got) => {
                    served += 1;
                    assert!(
                        got != b_bytes,
                        "{when}: point {seq} holds the failed write's bytes (window {})",
                        pit::window(&h)
                    );
                }
                Err(
                    CdpError::NotWhole { .. } | CdpError::InGap { .. } | CdpError::Outside { .. },
                ) => {}
                Err(e) => panic!("{when}: point {seq}: {e}"),
            }
        }
        eprintln!("{when}: {served} points served, window {}", pit::window(&h));
        h
    };
    let fold = || {
        let r = Retention {
            age_ns: None,
            bytes: Some(1),
        };
        while let Some(done) = consolidate_once(&dir, &r, clock::now()).unwrap() {
            eprintln!("consolidated up to {}", done.base_seq);
        }
    };
    fold();
    check("while the daemon that failed b runs");
    c.disconnect();
    bulk.disconnect();
    assert!(s.stop());
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    let (seg, b) = h
        .entries()
        .find(|(_, e)| e.offset == SLOW && e.len == 8192)
        .map(|(g, e)| (g, e.seq))
        .expect("b's record is durable");
    assert!(
        seg < h.segments.last().unwrap().header.segno,
        "b's record is in a segment before the newest (a was not slow enough here)"
    );
    fold();
    let h = check("after the clean stop and a consolidation");
    assert!(
        h.meta.base_seq >= b,
        "the scenario folds b's record into the base copy (base point {}, b {b})",
        h.meta.base_seq
    );
    let mut s = Server::start(root, &body);
    let mut c = Client::connect(s.addr, "v", false);
    assert!(c.read(0, SIZE as u32).unwrap() == volume, "the volume");
    fold();
    let h = check("after the restart");
    assert!(
        pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE).unwrap() == volume,
        "the newest point is the volume"
    );
    c.disconnect();
    assert!(s.stop());
}

/// A base write that fails late (`b`, held behind the slow `a`: its record is durable first)
/// while `degraded.map` cannot be written either (the journal's device failing too:
/// `fail_map_writes`), then a clean stop, whose write of the map fails as well, and a restart
/// once the map can be written: no map says the history ends before `b`'s record, so the
/// newest point after the restart must still be the volume (which never held `b`'s bytes),
/// or be refused.
#[test]
fn a_failed_write_no_map_recorded_is_not_the_newest_point_after_a_clean_stop() {
    use twinblk::frontend::nbd::proto::cmd;
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let dir = root.path().join("j");
    let body = |map: &str| {
        format!(
            "[reactor]\ncores=[0]\npin=false\n\
             [[volume]]\nname='v'\nbackend='uring'\nsize={SIZE}\nblock_size=4096\npath='{}'\n\
             slow_range=[{SLOW}, 4096]\nslow_ms=300\n\
             fail_range=[{}, 4096]\nfail_writes_only=true\n\
             [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n{map}",
            root.path().join("v.img").display(),
            SLOW + 4096,
            dir.display()
        )
    };
    let mut s = Server::start(root.path(), &body("fail_map_writes=1000\n"));
    let mut c = Client::connect(s.addr, "v", false);
    assert_eq!(c.write(0, &pattern(1, 8192)), 0);
    c.send_request(cmd::WRITE, 0, 10, SLOW, 4096, &pattern(2, 4096));
    c.send_request(cmd::WRITE, 0, 11, SLOW, 8192, &pattern(3, 8192));
    let mut replies: Vec<(u64, u32)> = (0..2)
        .map(|_| c.read_reply(0))
        .map(|r| (r.0, r.1))
        .collect();
    replies.sort();
    assert_eq!(replies[0], (10, 0), "a is done");
    assert_ne!(replies[1].1, 0, "b fails");
    let volume = c.read(0, SIZE as u32).unwrap();
    assert!(
        volume[SLOW as usize + 4096..][..4096] == [0u8; 4096],
        "the volume never held b's bytes"
    );
    c.disconnect();
    assert!(s.stop());
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(
        h.entries().any(|(_, e)| e.offset == SLOW && e.len == 8192),
        "b's record reached the journal"
    );
    let mut s = Server::start(root.path(), &body(""));
    let mut c = Client::connect(s.addr, "v", false);
    assert!(c.read(0, SIZE as u32).unwrap() == volume, "the volume");
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    match pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE) {
        Ok(got) => assert!(
            got == volume,
            "the newest point after the restart holds b's bytes (block at {}: {:?}..; window {})",
            SLOW + 4096,
            &got[SLOW as usize + 4096..][..8],
            pit::window(&h)
        ),
        Err(e @ (CdpError::NotWhole { .. } | CdpError::InGap { .. })) => {
            eprintln!("the newest point is refused: {e}")
        }
        Err(e) => panic!("{e}"),
    }
    c.disconnect();
    assert!(s.stop());
}

/// A stop whose deadline passes with a base write still in flight (a device that hangs on it,
/// `stall_range`: never completed, not even failed) fails that update to its host and aborts; its record is durable (a write after it
/// was acknowledged), the volume never got its bytes. Before session 28 the history then read
/// it as after a crash: the newest point served the failed write's bytes, no map saying where
/// the history was whole. Now the stop counts it as a failed base update: `degraded.map` says
/// the history is whole only up to the record before it, and after the restart the newest
/// point is the volume.
#[test]
fn a_stop_that_gives_up_on_an_update_in_flight_never_serves_its_record() {
    use twinblk::frontend::nbd::proto::cmd;
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = root.path();
    let dir = root.join("j");
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n\
         [[volume]]\nname='v'\nbackend='uring'\nsize={SIZE}\nblock_size=4096\npath='{}'\n\
         stall_range=[{SLOW}, 4096]\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        root.join("v.img").display(),
        dir.display()
    );
    let mut s = Server::start(root, &body);
    let mut c = Client::connect(s.addr, "v", false);
    assert_eq!(c.write(0, &pattern(1, 8192)), 0);
    let slow = pattern(2, 4096);
    c.send_request(cmd::WRITE, 0, 10, SLOW, 4096, &slow);
    // Acknowledged once its record and every record before it (the slow write's) are durable.
    let mut d = Client::connect(s.addr, "v", false);
    assert_eq!(d.write(8192, &pattern(3, 8192)), 0);
    d.disconnect();
    // The stop waits its deadline (10 s) for the hung write, then fails it and aborts; the
    // process cannot exit while the device holds the write, so it is killed then.
    s.signal(libc::SIGTERM);
    let t = std::time::Instant::now();
    while twinblk::layer::cdp::degraded::read_prior(&dir, SIZE)
        == twinblk::layer::cdp::degraded::Prior::Whole
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "degraded.map never says the stop failed the hung write"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.kill();
    drop(c);
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(
        h.entries().any(|(_, e)| e.offset == SLOW),
        "the slow write's record is durable"
    );
    for seq in h.first_seq()..=h.last_seq {
        match pit::read_at(&h, Point::Seq(seq), SLOW, 4096) {
            Ok(got) => assert!(
                got != slow,
                "point {seq} holds the bytes of a write the volume never got (window {})",
                pit::window(&h)
            ),
            Err(CdpError::NotWhole { .. } | CdpError::InGap { .. } | CdpError::Outside { .. }) => {}
            Err(e) => panic!("point {seq}: {e}"),
        }
    }
    let img = std::fs::read(root.join("v.img")).unwrap();
    assert!(img[SLOW as usize..][..4096] == [0u8; 4096], "never written");
    // (Restarted without the hung sector.)
    let body = body.replace(&format!("stall_range=[{SLOW}, 4096]\n"), "");
    let mut s = Server::start(root, &body);
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(
        pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE).unwrap() == img[..SIZE as usize],
        "the newest point is the volume"
    );
    assert!(s.stop());
}
