//! `[volume.cdp] sync = "flush"` (docs/cdp-format.md, "Write path"): journal appends are plain
//! O_DIRECT writes, and the volume's flushes and FUA writes make them durable with a sync of
//! the segment. Shown here: an update is acknowledged once its record is written (kill -9 keeps
//! every acknowledged write), a flush and a FUA write answer only once a sync covers every
//! record before them, and a journal whose sync fails stops with the history whole only up to
//! the last sync and every acknowledged but unsynced write's region counted as changed.

use crate::cdp::{kill_9_keeps_every_acknowledged_write, volume};
use crate::harness::{PATIENCE, Server, pattern, wait_until};
use crate::rawnbd::Client;
use std::path::PathBuf;
use twinblk::frontend::nbd::proto::cmd;
use twinblk::layer::cdp::degraded::{Prior, RegionMap};

const FLAG_FUA: u16 = 1;
const MIB: u64 = 1 << 20;

fn status(s: &Server) -> serde_json::Value {
    s.rpc("cdp_status")[0].clone()
}

fn seq(st: &serde_json::Value, field: &str) -> u64 {
    st[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field}: {st}"))
}

/// A journal on a disk filesystem (tmpfs journals are written inline and are as durable as
/// their memory: `sync` does not apply there).
fn disk_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    assert!(
        !twinblk::layer::cdp::journal::in_memory(tmp.path()),
        "/var/tmp must be a disk filesystem for this test"
    );
    tmp
}

/// A daemon with one RAM volume `v` of `size` bytes, its journal in `tmp` (4 MiB segments,
/// `extra`: more `[volume.cdp]` lines), and a client of it; the journal's directory.
fn start(tmp: &tempfile::TempDir, size: u64, extra: &str) -> (PathBuf, Server, Client) {
    let dir = tmp.path().join("j");
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n{}{extra}",
        volume("v", size, &dir, "4MiB")
    );
    let s = Server::start(tmp.path(), &body);
    let c = Client::connect(s.addr, "v", false);
    (dir, s, c)
}

/// What `dir`'s degraded.map says after a stop: the journal stopped, whole up to `after`, with
/// its changed regions.
fn stopped_with_regions(dir: &std::path::Path, size: u64) -> (u64, Vec<u8>) {
    let (_, prior) = RegionMap::open(dir, size).unwrap();
    let Prior::Stopped {
        after,
        regions: Some(bits),
        ..
    } = prior
    else {
        panic!("degraded.map says the journal stopped, with its regions: {prior:?}");
    };
    (after, bits)
}

#[test]
fn with_sync_flush_every_acknowledged_write_survives_kill_9() {
    let tmp = disk_dir();
    kill_9_keeps_every_acknowledged_write(tmp.path(), &tmp.path().join("j"), "sync='flush'\n");
}

#[test]
fn with_sync_flush_a_flush_and_a_fua_write_answer_once_a_sync_covers_them() {
    let tmp = disk_dir();
    let (_, s, mut c) = start(&tmp, 64 * MIB, "sync='flush'\n");
    let st = status(&s);
    assert_eq!(st["sync"], "flush", "{st}");
    let start_synced = seq(&st, "synced_seq");
    for r in 0..8u64 {
        assert_eq!(c.write(r * MIB, &pattern(r, 4096)), 0);
    }
    // Acknowledged once written: the records are durable_seq's, not yet synced.
    let st = status(&s);
    let written = seq(&st, "durable_seq");
    assert!(written >= start_synced + 8, "{st}");
    assert_eq!(seq(&st, "synced_seq"), start_synced, "no sync yet: {st}");
    assert_eq!(seq(&st, "syncs"), 0, "{st}");

    // A flush answers once a sync covered every record before it.
    c.send_request(cmd::FLUSH, 0, 7, 0, 0, &[]);
    let (cookie, err, _) = c.read_reply(0);
    assert_eq!((cookie, err), (7, 0));
    let st = status(&s);
    assert!(
        seq(&st, "synced_seq") >= written,
        "flush answered before the sync: {st}"
    );
    assert_eq!(seq(&st, "syncs"), 1, "{st}");

    // A FUA write: its own record synced before the answer.
    c.send_request(cmd::WRITE, FLAG_FUA, 8, 9 * MIB, 4096, &pattern(9, 4096));
    let (cookie, err, _) = c.read_reply(0);
    assert_eq!((cookie, err), (8, 0));
    let st = status(&s);
    assert!(
        seq(&st, "synced_seq") > written,
        "FUA write answered before its record was synced: {st}"
    );
    assert_eq!(seq(&st, "syncs"), 2, "{st}");

    // Plain writes again: written, not synced; nothing else changed.
    assert_eq!(c.write(10 * MIB, &pattern(10, 4096)), 0);
    let st = status(&s);
    assert!(seq(&st, "durable_seq") > seq(&st, "synced_seq"), "{st}");
    assert_eq!(st["journal"], "running", "{st}");
    assert_eq!(c.read(9 * MIB, 4096).unwrap(), pattern(9, 4096));
    c.disconnect();
}

/// The default (`sync = "append"`): every append is durable by itself; a flush needs no sync.
#[test]
fn with_sync_append_every_written_record_is_synced() {
    let tmp = disk_dir();
    let (_, s, mut c) = start(&tmp, 8 * MIB, "");
    for r in 0..4u64 {
        assert_eq!(c.write(r * MIB, &pattern(r, 4096)), 0);
    }
    c.send_request(cmd::FLUSH, 0, 7, 0, 0, &[]);
    assert_eq!(c.read_reply(0).1, 0);
    let st = status(&s);
    assert_eq!(st["sync"], "append", "{st}");
    assert_eq!(seq(&st, "synced_seq"), seq(&st, "durable_seq"), "{st}");
    assert_eq!(seq(&st, "syncs"), 0, "{st}");
    c.disconnect();
}

/// A sync that fails stops the journal: the volume keeps serving (the flush answers on the
/// base's result), the history is whole only up to the last sync, and the regions of the
/// writes acknowledged since (written, never synced) count as changed, so the next start
/// journals them again instead of leaving a history that looks whole but misses them.
#[test]
fn a_failed_sync_counts_every_acknowledged_unsynced_write_as_changed() {
    let tmp = disk_dir();
    const SIZE: u64 = 64 * MIB;
    let (dir, mut s, mut c) = start(&tmp, SIZE, "sync='flush'\nfail_sync=true\n");
    let synced = seq(&status(&s), "synced_seq");
    let regions = [3u64, 5, 7, 40];
    for &r in &regions {
        assert_eq!(c.write(r * MIB + 8192, &pattern(r, 4096)), 0);
    }
    assert_eq!(status(&s)["journal"], "running");
    // The flush's sync fails: the journal stops, the flush still answers (the base flushed).
    c.send_request(cmd::FLUSH, 0, 7, 0, 0, &[]);
    assert_eq!(
        c.read_reply(0).1,
        0,
        "a failing journal never fails the volume"
    );
    let st = status(&s);
    assert_eq!(st["journal"], "degraded", "{st}");
    assert_eq!(
        seq(&st, "durable_seq"),
        synced,
        "the history is whole only up to the last sync: {st}"
    );
    assert_eq!(
        seq(&st, "changed_regions"),
        regions.len() as u64,
        "every acknowledged, unsynced write's region: {st}"
    );
    // Still serving, reads and writes.
    assert_eq!(c.write(9 * MIB, &pattern(9, 4096)), 0);
    assert_eq!(c.read(5 * MIB + 8192, 4096).unwrap(), pattern(5, 4096));
    c.disconnect();
    s.stop();
    let (after, bits) = stopped_with_regions(&dir, SIZE);
    assert_eq!(after, synced);
    let marked: Vec<u64> = (0..SIZE / MIB)
        .filter(|&r| twinblk::layer::cdp::degraded::is_set(&bits, r))
        .collect();
    assert_eq!(marked, vec![3, 5, 7, 9, 40]);
}

/// A site whose journal's sync fails and whose write of "it stopped" into the map fails once
/// (`fail_map_writes = 1`): a write at 3 MiB, a flush (the journal stops), and a write at 5 MiB
/// acknowledged without a record. With the sequence synced before them.
fn stopped_with_a_failed_map_write(
    tmp: &tempfile::TempDir,
    size: u64,
) -> (PathBuf, Server, Client, u64) {
    let (dir, s, mut c) = start(
        tmp,
        size,
        "sync='flush'\nfail_sync=true\nfail_map_writes=1\n",
    );
    let synced = seq(&status(&s), "synced_seq");
    assert_eq!(c.write(3 * MIB, &pattern(3, 4096)), 0);
    c.send_request(cmd::FLUSH, 0, 7, 0, 0, &[]);
    assert_eq!(c.read_reply(0).1, 0);
    assert_eq!(status(&s)["journal"], "degraded");
    // Acknowledged without a record.
    assert_eq!(c.write(5 * MIB, &pattern(5, 4096)), 0);
    (dir, s, c, synced)
}

/// The journal stops and the map's write of "it stopped" fails too (`fail_map_writes = 1`, a
/// journal device failing): the layer writes it again a second later, so a crash after that
/// finds the history not whole (the next start journals the volume again) instead of a map
/// that says whole over writes acknowledged without records.
#[test]
fn a_failed_write_of_the_stop_into_the_map_is_written_again() {
    let tmp = disk_dir();
    const SIZE: u64 = 8 * MIB;
    let (dir, mut s, c, synced) = stopped_with_a_failed_map_write(&tmp, SIZE);
    // The layer's write again, a second later: waited for on the disk (a fixed 1.6 s may pass
    // before it on a loaded machine), then the crash.
    wait_until(
        PATIENCE,
        || {
            matches!(
                twinblk::layer::cdp::degraded::read_prior(&dir, SIZE),
                Prior::Stopped { after, .. } if after == synced
            )
        },
        || "degraded.map was not written again".to_string(),
    );
    s.kill();
    let (_, prior) = RegionMap::open(&dir, SIZE).unwrap();
    let Prior::Stopped { after, .. } = prior else {
        panic!("after the crash degraded.map must say the journal stopped: {prior:?}");
    };
    assert_eq!(after, synced);
    drop(c);
}

/// The journal stops, the map's write of "it stopped" fails, and the daemon is stopped cleanly
/// before the layer writes it again: the clean stop's map must name where the history really
/// is whole (the last sync), not what the map said before the stop (state 0 "after 0"), which
/// would refuse every point of the history, its start too, for good.
#[test]
fn a_clean_stop_before_the_failed_stop_write_is_retried_keeps_the_whole_history() {
    let tmp = disk_dir();
    const SIZE: u64 = 8 * MIB;
    let (dir, mut s, c, synced) = stopped_with_a_failed_map_write(&tmp, SIZE);
    assert!(synced > 0, "the RAM base's reset is journaled at the start");
    c.disconnect();
    // Well before the retry a second after the failure.
    s.stop();
    let (after, bits) = stopped_with_regions(&dir, SIZE);
    assert_eq!(
        after, synced,
        "the history is whole up to the last sync, not only up to its start"
    );
    let marked: Vec<u64> = (0..SIZE / MIB)
        .filter(|&r| twinblk::layer::cdp::degraded::is_set(&bits, r))
        .collect();
    assert_eq!(marked, vec![3, 5]);
}

/// Switching CDP off at run time with `sync = "flush"`: the history the answer names (its
/// last mark) is synced before the answer, through the ring like any sync, not left to the
/// clean stop of the layer afterwards.
#[test]
fn with_sync_flush_cdp_disable_answers_once_its_last_mark_is_synced() {
    let tmp = disk_dir();
    let (_, s, mut c) = start(&tmp, 8 * MIB, "sync='flush'\n");
    for r in 0..4u64 {
        assert_eq!(c.write(r * MIB, &pattern(r, 4096)), 0);
    }
    let st = status(&s);
    assert_eq!(seq(&st, "syncs"), 0, "{st}");
    assert!(seq(&st, "durable_seq") > seq(&st, "synced_seq"), "{st}");
    let r = s.rpc_with("cdp_disable", serde_json::json!({"volume": "v"}));
    let last = r["result"]["last_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("{r}"));
    let st = status(&s);
    assert_eq!(st["journal"], "off", "{st}");
    assert_eq!(
        seq(&st, "syncs"),
        1,
        "the last mark was synced by the disable: {st}"
    );
    assert!(seq(&st, "synced_seq") >= last, "{st}");
    // Still serving, straight to the base now.
    assert_eq!(c.write(5 * MIB, &pattern(5, 4096)), 0);
    assert_eq!(c.read(2 * MIB, 4096).unwrap(), pattern(2, 4096));
    c.disconnect();
}

/// `cdp_enable`'s `"sync"` takes the config file's names: `"flush"` gives a journal synced on
/// flush, anything else is refused with the names it takes and changes nothing.
#[test]
fn cdp_enable_takes_sync_by_its_config_names() {
    let tmp = disk_dir();
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n[[volume]]\nname='v'\nbackend='malloc'\nsize={}\nblock_size=4096\n",
        8 * MIB
    );
    let s = Server::start(tmp.path(), &body);
    let dir = tmp.path().join("j");
    let bad = s.rpc_with(
        "cdp_enable",
        serde_json::json!({"volume": "v", "dir": dir, "sync": "always"}),
    );
    let msg = bad["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("\"append\" or \"flush\""), "{bad}");
    assert!(
        s.rpc("cdp_status").as_array().is_none_or(|a| a.is_empty()),
        "nothing changed"
    );
    let r = s.rpc_with(
        "cdp_enable",
        serde_json::json!({"volume": "v", "dir": dir, "sync": "flush"}),
    );
    assert!(r["result"]["volume"] == "v", "{r}");
    assert_eq!(status(&s)["sync"], "flush");
}

/// With `sync = "flush"` on a disk and `map_segments = false`, small batches go through the
/// page cache and large ones are O_DIRECT appends after a padding record (docs/cdp-format.md,
/// "Write path"): writes of both kinds, and pipelined small ones, across several segment
/// switches, then kill -9. Every acknowledged write is in the history at its own point and at
/// the last, before and after the restart's recovery, and the journal shows it took both ways.
#[test]
fn with_sync_flush_small_and_large_appends_interleaved_are_all_in_the_history() {
    small_and_large_appends_interleaved("sync='flush'\nmap_segments=false\n", |st| {
        // Each round: at least two batches of small writes (the lone one, the eight) through
        // the page cache and two large ones with O_DIRECT. (Segment headers and time marks,
        // under 15 here, are page-cache appends too.)
        let (appends, cached) = (seq(st, "appends"), seq(st, "cached_appends"));
        assert!(
            cached >= 2 * 48 && appends - cached >= 2 * 48,
            "both page-cache and O_DIRECT appends: {st}"
        );
        assert_eq!(seq(st, "mapped_appends"), 0, "{st}");
    });
}

/// The same with the segments mapped (the default): the first segments' batches, large ones
/// included, are copies into their mappings; since most of the bytes come in large batches,
/// the helper stops mapping the spares after the first switch, and later segments take
/// their large batches O_DIRECT (docs/cdp-format.md, "Which segments are mapped"). Every
/// acknowledged write is in the history after kill -9.
#[test]
fn with_sync_flush_appends_through_mappings_then_o_direct_are_all_in_the_history() {
    if !twinblk::layer::cdp::mapped::populate_write_supported() {
        eprintln!("skipped: no MADV_POPULATE_WRITE (Linux before 5.14): nothing mapped");
        return;
    }
    small_and_large_appends_interleaved("sync='flush'\n", |st| {
        let (appends, mapped) = (seq(st, "appends"), seq(st, "mapped_appends"));
        let direct = appends - mapped - seq(st, "cached_appends");
        assert!(
            mapped >= 48,
            "the first segments' batches through mappings: {st}"
        );
        assert!(seq(st, "switches_unmapped") >= 1, "{st}");
        assert!(direct >= 48, "later segments' large batches O_DIRECT: {st}");
    });
}

fn small_and_large_appends_interleaved(extra: &str, took: impl Fn(&serde_json::Value)) {
    use twinblk::layer::cdp::format::Op;
    use twinblk::layer::cdp::pit::{self, Point};
    use twinblk::layer::cdp::store::{self, Load};
    const SIZE: u64 = 16 * MIB;
    let tmp = disk_dir();
    let (dir, mut s, mut c) = start(&tmp, SIZE, extra);
    // (offset, data) of every acknowledged write, in order.
    let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut model = vec![0u8; SIZE as usize];
    let mut seed = 0u64;
    let mut next = |len: usize, at: u64| {
        seed += 1;
        (at % (SIZE - len as u64) / 4096 * 4096, pattern(seed, len))
    };
    for round in 0..48u64 {
        let at = round.wrapping_mul(0x9E37_79B9) % SIZE;
        let mut batch = vec![next(4096, at), next(128 * 1024, at + 3 * MIB)];
        // Eight small writes in flight together: one batch of several records.
        batch.extend((0..8).map(|k| next(4096, at + 7 * MIB + k * 8192)));
        batch.push(next(192 * 1024, at + 11 * MIB));
        for (i, (off, data)) in batch.iter().enumerate() {
            c.send_request(cmd::WRITE, 0, i as u64, *off, data.len() as u32, data);
        }
        for _ in 0..batch.len() {
            let (_, err, _) = c.read_reply(0);
            assert_eq!(err, 0);
        }
        for (off, data) in batch {
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
            acked.push((off, data));
        }
    }
    let st = status(&s);
    took(&st);
    assert!(seq(&st, "segment") >= 3, "several segment switches: {st}");
    drop(c);
    s.kill();
    // `last`: the last point before the kill (a restart journals the RAM volume's reset).
    let check = |h: &store::History, last: u64| {
        assert!(h.damaged.is_empty());
        // The writes' records in log order (the start's own records are not writes of 4 KiB
        // multiples at these offsets, and are skipped by matching).
        let writes: Vec<(u64, u64)> = h
            .entries()
            .filter(|(_, e)| e.op == Op::Write)
            .map(|(_, e)| (e.seq, e.offset))
            .collect();
        let mut it = writes.iter();
        for (n, (off, data)) in acked.iter().enumerate() {
            let &(seq, _) = it
                .by_ref()
                .find(|&&(_, o)| o == *off)
                .unwrap_or_else(|| panic!("acknowledged write {n} at {off} is not in the journal"));
            if n % 7 == 0 {
                let got = pit::read_at(h, Point::Seq(seq), *off, data.len() as u64).unwrap();
                assert!(
                    got == *data,
                    "write {n} at {off}: its own point reads other data"
                );
            }
        }
        for (n, (off, data)) in acked.iter().enumerate() {
            let len = data.len();
            let got = pit::read_at(h, Point::Seq(last), *off, len as u64).unwrap();
            assert!(
                got == model[*off as usize..*off as usize + len],
                "write {n} at {off}: the last point reads other data"
            );
        }
    };
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    check(&h, h.last_seq);
    let s = s.respawn();
    let h2 = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(h2.last_seq > h.last_seq, "the restart journals again");
    check(&h2, h.last_seq);
    drop(s);
}

/// kill -9 while 32 writes of mixed sizes are in flight (every other one 128 KiB: O_DIRECT
/// appends in flight next to page-cache ones), `sync = "flush"` on a disk, segments not
/// mapped (the mapped default is `with_sync_flush_every_acknowledged_write_survives_kill_9`): every acknowledged
/// write is in the journal with its data, as the killed daemon left it and after the
/// restart's recovery. (A kill cannot show an acknowledgement given before its append was
/// done: the killed process's O_DIRECT writes still land. Seen failing with the padding
/// record before an O_DIRECT batch left unwritten.)
#[test]
fn with_sync_flush_kill_9_with_o_direct_appends_in_flight_keeps_every_acknowledged_write() {
    let tmp = disk_dir();
    // A 1 GiB volume (its memory taken as written): the writer still runs at the kill.
    crate::cdp::kill_9_keeps_every_acknowledged_write_of(
        tmp.path(),
        &tmp.path().join("j"),
        "sync='flush'\nmap_segments=false\n",
        1 << 30,
        128 * 1024,
        |i| {
            if i.is_multiple_of(2) {
                4096
            } else {
                128 * 1024
            }
        },
    );
}

/// An idle volume's last lone mark, rewritten in place by `cdp_disable` (its sequence number
/// synced by an earlier flush, its newer time not): the disable answers once a sync covered
/// the rewrite too.
#[test]
fn with_sync_flush_cdp_disable_syncs_the_mark_it_rewrites_in_place() {
    let tmp = disk_dir();
    let (_, s, mut c) = start(&tmp, 8 * MIB, "sync='flush'\n");
    assert_eq!(c.write(0, &pattern(1, 4096)), 0);
    let written = seq(&status(&s), "durable_seq");
    // Idle: a lone mark is appended after about a second; a flush syncs it.
    let t = std::time::Instant::now();
    while seq(&status(&s), "durable_seq") == written {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "no time mark on an idle volume"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(c.flush(), 0);
    let st = status(&s);
    let (marked, syncs) = (seq(&st, "durable_seq"), seq(&st, "syncs"));
    assert_eq!(marked, written + 1, "one lone mark: {st}");
    assert_eq!(seq(&st, "synced_seq"), marked, "{st}");
    // The disable's own mark rewrites that one in place.
    let r = s.rpc_with("cdp_disable", serde_json::json!({"volume": "v"}));
    assert!(r["result"]["last_seq"].as_u64().is_some(), "{r}");
    let st = status(&s);
    assert_eq!(
        seq(&st, "durable_seq"),
        marked,
        "rewritten in place, not appended: {st}"
    );
    assert!(
        seq(&st, "syncs") > syncs,
        "the disable answered without syncing the mark it rewrote: {st}"
    );
    c.disconnect();
}
