//! A history cut in the middle by a damaged record in a sealed segment, on a volume that keeps
//! its content across a restart (a file): the later segments are set aside, so their writes
//! are in the volume but not in the history. Every point the history serves afterwards must
//! be the content the volume had at that moment, or be refused. The same holds for a volume
//! written while its CDP directory was not journaling it (the directory put back from an older
//! copy after a clean stop).

use crate::harness::{Server, pattern};
use crate::rawnbd::Client;
use std::path::PathBuf;
use twinblk::layer::cdp::format::Op;
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, Load};

const SIZE: u64 = 4 << 20;

/// A temporary directory with a file-backed volume `v` (its image `v.img`) journaled in `dir`
/// with 4 MiB segments, and the daemon's configuration for it.
fn file_volume() -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let img = tmp.path().join("v.img");
    std::fs::File::create(&img).unwrap().set_len(SIZE).unwrap();
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n[[volume]]\nname='v'\nbackend='uring'\npath='{}'\n\
         size={SIZE}\nblock_size=4096\n[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        img.display(),
        dir.display()
    );
    (tmp, dir, body)
}

#[test]
fn after_a_cut_in_a_sealed_segment_the_newest_point_is_still_the_volume() {
    let (tmp, dir, body) = file_volume();
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    // About 12 MiB of 256 KiB writes: several 4 MiB segments.
    for i in 0..48u64 {
        assert_eq!(
            c.write((i % 16) * (256 << 10), &pattern(i + 1, 256 << 10)),
            0
        );
    }
    c.disconnect();
    assert!(s.stop(), "clean stop");
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(h.segments.len() >= 3, "{} segments", h.segments.len());
    // Damage the payload of a write in the first sealed segment, its index removed (so the
    // start's recovery scans it and cuts there).
    let (segno, e) = h
        .entries()
        .find(|(_, e)| e.op == Op::Write)
        .map(|(s, e)| (s, *e))
        .unwrap();
    crate::cdp::damage_payload(&dir, segno, e, 10);
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    assert_eq!(c.write(0, &pattern(999, 4096)), 0);
    let volume = c.read(0, SIZE as u32).unwrap();
    c.disconnect();
    assert!(s.stop(), "clean stop");
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    match pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE) {
        Ok(newest) => assert!(
            newest == volume,
            "the newest point after the cut is not the volume (first difference at byte {:?})",
            newest.iter().zip(&volume).position(|(a, b)| a != b)
        ),
        Err(e) => panic!("the newest point is refused: {e}"),
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The CDP directory put back from a copy taken after an earlier clean stop (a backup
/// restored), while the volume kept the writes of the runs since: the directory's last
/// segment is sealed clean, so the start trusts that the volume is its newest point. It is
/// not: the later writes are in the volume only. Every point the history serves after the
/// start must still be the volume (the start must journal the volume again, as after a stopped
/// journal), or be refused. Before, the start journaled on from the copy's end, and the newest
/// point served the blocks of the later writes as they were in the copy.
#[test]
fn a_directory_put_back_from_an_older_copy_never_serves_the_volume_as_it_was_then() {
    let (tmp, dir, body) = file_volume();
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    for i in 0..8u64 {
        assert_eq!(c.write(i * 65536, &pattern(i + 1, 65536)), 0);
    }
    c.disconnect();
    assert!(s.stop(), "clean stop");
    let copy = tmp.path().join("copy");
    copy_dir(&dir, &copy);
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    for i in 0..8u64 {
        assert_eq!(c.write(i * 65536 + 4096, &pattern(i + 100, 8192)), 0);
    }
    c.disconnect();
    assert!(s.stop(), "clean stop");
    // A start after a clean stop with the base as the stop left it journals nothing again.
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(
        h.entries().all(|(_, e)| e.op != Op::Gap) && h.open_gap.is_none(),
        "a plain restart journaled the volume again"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(&copy, &dir);
    // A rollback in place over the copy would compare only the copy's records' regions.
    let cfg = tmp.path().join("rb.toml");
    std::fs::write(&cfg, &body).unwrap();
    let last = store::load(&dir, Load::ReadOnly).unwrap().last_seq;
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_twinblk"))
        .args(["cdp", "rollback", "--config"])
        .arg(&cfg)
        .args(["--volume", "v", "--seq", &(last - 1).to_string()])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("written since"),
        "a rollback over the older copy: {o:?}"
    );
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    assert_eq!(c.write(SIZE - 4096, &pattern(999, 4096)), 0);
    let volume = c.read(0, SIZE as u32).unwrap();
    c.disconnect();
    assert!(s.stop(), "clean stop");
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(
        h.entries().any(|(_, e)| e.op == Op::Gap),
        "no gap record: the points between the copy's end and this start are not refused"
    );
    match pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE) {
        Ok(newest) => assert!(
            newest == volume,
            "the newest point is not the volume (first difference at byte {:?})",
            newest.iter().zip(&volume).position(|(a, b)| a != b)
        ),
        Err(e) => panic!("the newest point is refused: {e}"),
    }
}

/// The same with a journal that had stopped in the last run (degraded.map: the regions
/// changed since the stop): the clean stop sealed the log and recorded the base, and the
/// volume was written since without the layer. The start journaled again only the regions
/// the map names, and the newest point served the blocks written since as they were in the
/// history. The base stamp is checked whatever the map says (a changed base then counts every
/// region as changed).
#[test]
fn a_base_written_after_a_degraded_clean_stop_is_journaled_whole_again() {
    use twinblk::layer::cdp::degraded::RegionMap;
    let (tmp, dir, body) = file_volume();
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    for i in 0..4u64 {
        assert_eq!(c.write(i << 20, &pattern(i + 1, 65536)), 0);
    }
    c.disconnect();
    assert!(s.stop(), "clean stop");
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(h.sealed);
    // As a clean stop while degraded leaves it: stopped after the last record, region 0
    // changed since.
    let (mut m, _) = RegionMap::open(&dir, SIZE).unwrap();
    m.stopped(h.last_seq, h.last_time, h.last_time + 1).unwrap();
    m.mark(0, 4096);
    m.persist().unwrap();
    drop(m);
    // The volume written without the layer, in region 2.
    std::thread::sleep(std::time::Duration::from_millis(20));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(tmp.path().join("v.img"))
            .unwrap();
        f.write_all_at(&pattern(77, 65536), 2 << 20).unwrap();
        f.sync_all().unwrap();
    }
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    assert_eq!(c.write(SIZE - 4096, &pattern(999, 4096)), 0);
    let volume = c.read(0, SIZE as u32).unwrap();
    c.disconnect();
    assert!(s.stop(), "clean stop");
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    match pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE) {
        Ok(newest) => assert!(
            newest == volume,
            "the newest point is not the volume (first difference at byte {:?})",
            newest.iter().zip(&volume).position(|(a, b)| a != b)
        ),
        Err(e) => panic!("the newest point is refused: {e}"),
    }
}

/// The CDP directory put back from a copy taken **while the daemon ran** (its log not sealed:
/// the start compares only the tail from the newest segment's mark, as after a crash), over a
/// volume written since in regions that tail does not name. The base file was modified well
/// after the copy's last record (stamp::written_after): the start journals the whole volume
/// again behind a gap record. Before session 28 the newest point served those regions as they
/// were in the copy.
#[test]
fn a_directory_put_back_from_a_copy_taken_while_running_never_serves_the_volume_as_it_was_then() {
    let (tmp, dir, body) = file_volume();
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    for i in 0..8u64 {
        assert_eq!(c.write(i * 65536, &pattern(i + 1, 65536)), 0);
    }
    let copy = tmp.path().join("copy");
    copy_dir(&dir, &copy);
    // Later than the copy's last record by more than the slack (a time mark a second keeps
    // it within about a second of the copy).
    std::thread::sleep(
        std::time::Duration::from_nanos(twinblk::layer::cdp::stamp::WRITTEN_AFTER_SLACK_NS)
            + std::time::Duration::from_secs(2),
    );
    assert_eq!(c.write(SIZE - 65536, &pattern(500, 65536)), 0);
    c.disconnect();
    assert!(s.stop(), "clean stop");
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(&copy, &dir);
    assert!(!store::load(&dir, Load::ReadOnly).unwrap().sealed);
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    let volume = c.read(0, SIZE as u32).unwrap();
    c.disconnect();
    assert!(s.stop(), "clean stop");
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    match pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE) {
        Ok(newest) => assert!(
            newest == volume,
            "the newest point is not the volume (first difference at byte {:?})",
            newest.iter().zip(&volume).position(|(a, b)| a != b)
        ),
        Err(e) => panic!("the newest point is refused: {e}"),
    }
}
