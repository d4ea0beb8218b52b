//! CDP switched on and off at run time through the control socket (`cdp_enable`,
//! `cdp_disable`), against the real daemon with two reactors: under a verified write load
//! from connections on both reactors, every point the history serves is exactly the
//! volume's content then, and the points it cannot vouch for (before the first catch-up of a
//! new history, while CDP was off) are refused with both ends named.

use crate::harness::{PATIENCE, Progress, Server, counts, pattern, wait_progress, wait_until};
use crate::rawnbd::Client;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use twinblk::layer::cdp::format::Op;
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, CdpError, Load};

const SIZE: usize = 16 << 20;

/// Writers of the load (connections, spread over both reactors and over the sites given),
/// each in its own part of the volume.
const WRITERS: usize = 4;

/// Writes of 4 KiB patterns to part `part` (of [`WRITERS`]) of volume `v` of `size` bytes
/// through `addr` until `stop`, one at a time, counting each acknowledged one in `done`; the
/// writes in completion order.
pub(crate) fn writer(
    addr: std::net::SocketAddr,
    size: usize,
    part: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    done: Progress,
) -> std::thread::JoinHandle<Vec<(u64, Vec<u8>)>> {
    std::thread::spawn(move || {
        let mut c = Client::connect(addr, "v", false);
        let mut log = Vec::new();
        let mut i = 0u64;
        let len = (size / WRITERS) as u64;
        while !stop.load(Ordering::SeqCst) {
            let off = part as u64 * len + (i * 7919 * 4096) % len;
            let data = pattern(seed + i, 4096);
            assert_eq!(c.write(off, &data), 0, "write {i} of part {part} failed");
            log.push((off, data));
            done.tick();
            i += 1;
        }
        c.disconnect();
        log
    })
}

/// Writes each writer does before the switch and again after it (a loaded machine makes
/// them slow: the load is counted, not timed).
const WRITES_EACH_SIDE: usize = 4;

/// `on` switches CDP on (`params` of `cdp_enable`) while [`WRITERS`] connections write volume
/// `v` (`size` bytes), spread over `sites`; the writers are stopped and `model` follows every
/// write. The answer's result.
pub(crate) fn enable_under_load(
    on: &Server,
    sites: &[std::net::SocketAddr],
    size: usize,
    params: serde_json::Value,
    model: &mut [u8],
    seed: u64,
) -> serde_json::Value {
    let stop = Arc::new(AtomicBool::new(false));
    let done: Vec<Progress> = (0..WRITERS).map(|_| Progress::default()).collect();
    let w: Vec<_> = (0..WRITERS)
        .map(|p| {
            let addr = sites[p % sites.len()];
            let seed = seed + p as u64 * 100_000;
            writer(addr, size, p, seed, Arc::clone(&stop), done[p].clone())
        })
        .collect();
    wait_progress(&done, &[0; WRITERS], WRITES_EACH_SIDE, "before cdp_enable");
    let r = on.rpc_with("cdp_enable", params);
    wait_progress(&done, &counts(&done), WRITES_EACH_SIDE, "after cdp_enable");
    stop.store(true, Ordering::SeqCst);
    for t in w {
        let log = t.join().unwrap();
        assert!(
            log.len() >= 2 * WRITES_EACH_SIDE,
            "the load ran ({} writes)",
            log.len()
        );
        for (o, d) in &log {
            model[*o as usize..*o as usize + d.len()].copy_from_slice(d);
        }
    }
    assert!(r["error"].is_null(), "{r}");
    eprintln!(
        "cdp_enable under load ({} sites): {} bytes journaled again, {} updates held behind the catch-up",
        sites.len(),
        r["result"]["journaled_again_bytes"],
        r["result"]["held_behind_catchup"]
    );
    r["result"].clone()
}

/// A bookmark of volume `v` at `s` now; returned once the window reaches it (the idle
/// journal's next time mark).
pub(crate) fn bookmark(s: &Server, name: &str) -> u64 {
    let r = s.rpc_with(
        "cdp_bookmark",
        serde_json::json!({"volume": "v", "name": name}),
    );
    let t = r["result"]["time_ns"].as_u64().expect("a bookmark");
    // (Marks come once a second; a loaded machine writes them late.)
    wait_until(
        PATIENCE,
        || {
            s.rpc("cdp_status")[0]["window_end_ns"]
                .as_u64()
                .unwrap_or(0)
                >= t
        },
        || format!("the window does not reach {t}"),
    );
    t
}

fn at(dir: &std::path::Path, p: Point) -> Result<Vec<u8>, CdpError> {
    let h = store::load(dir, Load::ReadOnly)?;
    pit::read_at(&h, p, 0, SIZE as u64)
}

/// A file-backed volume without CDP in its config: switched on under load (a new history:
/// nothing before the catch-up's gap record is served), written, switched off (the history
/// ends at its last mark and stays readable; later writes are in no point), switched on
/// again (resumed: the points while it was off are refused, naming both ends), each point
/// checked against the model. Bad requests are refused with their reason.
#[test]
fn cdp_switched_on_and_off_at_run_time_keeps_every_served_point_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("v.img");
    let dir = tmp.path().join("j");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(SIZE as u64)
        .unwrap();
    let body = format!(
        "[reactor]\ncores=[0,1]\npin=false\n[[volume]]\nname='v'\nbackend='uring'\npath='{}'\n\
         size={SIZE}\nblock_size=4096\n",
        img.display()
    );
    let s = Server::start(tmp.path(), &body);
    let mut model = vec![0u8; SIZE];
    let mut c = Client::connect(s.addr, "v", false);
    for i in 0..32u64 {
        let off = i * 65536;
        let data = pattern(i + 1, 65536);
        assert_eq!(c.write(off, &data), 0);
        model[off as usize..off as usize + 65536].copy_from_slice(&data);
    }
    // Refusals before anything is on.
    let d = dir.display().to_string();
    for (m, p, why) in [
        (
            "cdp_enable",
            serde_json::json!({"volume": "nope", "dir": d}),
            "no volume named",
        ),
        (
            "cdp_enable",
            serde_json::json!({"volume": "v"}),
            "params need \"dir\"",
        ),
        (
            "cdp_enable",
            serde_json::json!({"volume": "v", "dir": "rel/j"}),
            "absolute",
        ),
        (
            "cdp_enable",
            serde_json::json!({"volume": "v", "dir": d, "segment_size": "1M"}),
            "segment_size",
        ),
        ("cdp_disable", serde_json::json!({"volume": "v"}), "not on"),
        (
            "cdp_disable",
            serde_json::json!({"volume": "nope"}),
            "no volume named",
        ),
    ] {
        let r = s.rpc_with(m, p.clone());
        let msg = r["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(why), "{m} {p}: {r}");
    }
    assert!(s.rpc("cdp_status").as_array().unwrap().is_empty());
    // 1. On, under load: a new history.
    let r = enable_under_load(
        &s,
        &[s.addr],
        SIZE,
        serde_json::json!({"volume": "v", "dir": d, "segment_size": "4MiB"}),
        &mut model,
        1000,
    );
    assert_eq!(r["new_history"], true, "{r}");
    assert_eq!(r["catching_up"], false, "{r}");
    assert!(
        r["lasts"]
            .as_str()
            .unwrap()
            .contains("until the daemon stops")
    );
    let gap = r["gap_seq"].as_u64().unwrap();
    let whole_from = r["whole_from_ns"].as_u64().unwrap();
    let st = s.rpc("cdp_status")[0].clone();
    assert_eq!(st["journal"], "running", "{st}");
    assert_eq!(st["catching_up"], false, "{st}");
    let r2 = s.rpc_with("cdp_enable", serde_json::json!({"volume": "v", "dir": d}));
    assert!(
        r2["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("already on"),
        "{r2}"
    );
    assert!(c.read(0, SIZE as u32).unwrap() == model, "the volume");
    let t1 = bookmark(&s, "on");
    assert!(
        at(&dir, Point::Time(t1)).unwrap() == model,
        "the point after the catch-up is the volume"
    );
    assert!(at(&dir, Point::Seq(gap)).is_ok());
    assert!(at(&dir, Point::Time(whole_from)).is_ok());
    // Before the gap record of a new history: nothing is served, its start neither.
    for p in [
        Point::Seq(0),
        Point::Seq(gap - 1),
        Point::Time(whole_from - 1),
    ] {
        let r = at(&dir, p);
        assert!(
            matches!(r, Err(CdpError::InGap { .. })),
            "{p:?}: {:?}",
            r.map(|_| "served")
        );
    }
    // 2. Writes with known points.
    for i in 0..8u64 {
        let off = i * 131072 + 4096;
        let data = pattern(i + 5000, 8192);
        assert_eq!(c.write(off, &data), 0);
        model[off as usize..off as usize + 8192].copy_from_slice(&data);
    }
    let t2 = bookmark(&s, "mid");
    let at_t2 = model.clone();
    for i in 0..8u64 {
        let off = i * 262144;
        let data = pattern(i + 6000, 4096);
        assert_eq!(c.write(off, &data), 0);
        model[off as usize..off as usize + 4096].copy_from_slice(&data);
    }
    let at_off = model.clone();
    // 3. Off: the history ends at its last mark; writes after it are in no point.
    let r = s.rpc_with("cdp_disable", serde_json::json!({"volume": "v"}));
    assert!(r["error"].is_null(), "{r}");
    let end = r["result"]["window_end_ns"].as_u64().unwrap();
    assert_eq!(
        r["result"]["whole_until_seq"], r["result"]["last_seq"],
        "{r}"
    );
    let r = s.rpc_with("cdp_disable", serde_json::json!({"volume": "v"}));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not on"),
        "disabled twice: {r}"
    );
    assert_eq!(s.rpc("cdp_status")[0]["journal"], "off");
    for i in 0..8u64 {
        let off = i * 262144 + 65536;
        let data = pattern(i + 7000, 4096);
        assert_eq!(c.write(off, &data), 0);
        model[off as usize..off as usize + 4096].copy_from_slice(&data);
    }
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert_eq!(
        h.open_gap,
        Some((h.last_seq, end)),
        "degraded.map says the history is whole only up to its end"
    );
    assert_eq!(h.last_time, end);
    assert!(
        at(&dir, Point::Time(t2)).unwrap() == at_t2,
        "the point before"
    );
    assert!(
        at(&dir, Point::Time(end)).unwrap() == at_off,
        "the last point"
    );
    assert!(matches!(
        at(&dir, Point::Time(end + 1)),
        Err(CdpError::Outside { .. })
    ));
    let b = s.rpc_with(
        "cdp_bookmark",
        serde_json::json!({"volume": "v", "name": "late"}),
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("switched off"),
        "{b}"
    );
    // The history of a volume switched off is still viewed through the daemon.
    let port = crate::harness::free_port();
    let r = s.rpc_with(
        "cdp_view_open",
        serde_json::json!({"volume": "v", "bookmark": "mid", "nbd": format!("127.0.0.1:{port}")}),
    );
    assert!(r["error"].is_null(), "{r}");
    let va: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut vc = Client::connect(va, "view", false);
    assert!(vc.read(0, SIZE as u32).unwrap() == at_t2, "the view");
    vc.disconnect();
    let r = s.rpc_with(
        "cdp_view_close",
        serde_json::json!({"id": r["result"]["id"]}),
    );
    assert!(r["error"].is_null(), "{r}");
    // 4. On again, under load: the history resumes after a gap for the time it was off.
    let r = enable_under_load(
        &s,
        &[s.addr],
        SIZE,
        serde_json::json!({"volume": "v", "dir": d}),
        &mut model,
        9000,
    );
    assert_eq!(r["new_history"], false, "{r}");
    let after = r["whole_until_seq"].as_u64().unwrap();
    let gap2 = r["gap_seq"].as_u64().unwrap();
    assert_eq!(after, h.last_seq, "{r}");
    assert!(c.read(0, SIZE as u32).unwrap() == model, "the volume");
    let t3 = bookmark(&s, "again");
    assert!(
        at(&dir, Point::Time(t3)).unwrap() == model,
        "after the resume"
    );
    assert!(
        at(&dir, Point::Time(t2)).unwrap() == at_t2,
        "before the off"
    );
    assert!(
        at(&dir, Point::Time(end)).unwrap() == at_off,
        "the off's point"
    );
    let e = at(&dir, Point::Time(end + 1)).map(|_| ()).unwrap_err();
    match &e {
        CdpError::InGap {
            after: a, resumed, ..
        } => assert_eq!((*a, *resumed), (after, gap2), "{e}"),
        _ => panic!("{e}"),
    }
    let m = e.to_string();
    assert!(
        m.contains(&format!("sequence {after}")) && m.contains(&format!("sequence {gap2}")),
        "{m}"
    );
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert_eq!(
        h.entries().filter(|(_, e)| e.op == Op::Gap).count(),
        2,
        "one gap record per switch on"
    );
    // 5. Off again, written while off, then a restart with [volume.cdp] in the config: the
    // start resumes the history with the whole volume journaled again and a gap record.
    let r = s.rpc_with("cdp_disable", serde_json::json!({"volume": "v"}));
    assert!(r["error"].is_null(), "{r}");
    let end2 = r["result"]["window_end_ns"].as_u64().unwrap();
    let last2 = r["result"]["last_seq"].as_u64().unwrap();
    let at_off2 = model.clone();
    for i in 0..4u64 {
        let off = i * 1048576 + 8192;
        let data = pattern(i + 8000, 4096);
        assert_eq!(c.write(off, &data), 0);
        model[off as usize..off as usize + 4096].copy_from_slice(&data);
    }
    c.disconnect();
    let mut s = s;
    assert!(s.stop(), "clean stop");
    assert!(std::fs::read(&img).unwrap() == model, "the volume's file");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("{text}[volume.cdp]\ndir='{d}'\nsegment_size='4MiB'\n"),
    )
    .unwrap();
    let mut s = s.respawn();
    assert_eq!(s.rpc("cdp_status")[0]["journal"], "running");
    assert!(s.stop(), "clean stop");
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert_eq!(h.open_gap, None);
    let gaps: Vec<_> = h.entries().filter(|(_, e)| e.op == Op::Gap).collect();
    assert_eq!(gaps.len(), 3, "a gap record for the start too");
    assert_eq!(gaps[2].1.offset, last2, "it names the last disable's end");
    assert!(
        pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE as u64).unwrap() == model,
        "the newest point has what was written while CDP was off"
    );
    assert!(
        at(&dir, Point::Time(end2)).unwrap() == at_off2,
        "the last disable's point"
    );
    assert!(matches!(
        at(&dir, Point::Time(end2 + 1)),
        Err(CdpError::InGap { .. })
    ));
}

/// A RAM volume (its reads complete at once) switched on under load from both reactors: the
/// point after the catch-up is exactly the volume; switched off, the history ends at its last
/// mark with the content of that moment; a volume journaled cannot be deleted.
#[test]
fn a_ram_volume_switched_on_under_load_serves_exact_points() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let body = format!(
        "[reactor]\ncores=[0,1]\npin=false\n[[volume]]\nname='v'\nbackend='malloc'\n\
         size={SIZE}\nblock_size=4096\n"
    );
    let s = Server::start(tmp.path(), &body);
    let mut model = vec![0u8; SIZE];
    let mut c = Client::connect(s.addr, "v", false);
    for i in 0..16u64 {
        let off = i * 1048576;
        let data = pattern(i + 77, 65536);
        assert_eq!(c.write(off, &data), 0);
        model[off as usize..off as usize + 65536].copy_from_slice(&data);
    }
    let d = dir.display().to_string();
    let r = enable_under_load(
        &s,
        &[s.addr],
        SIZE,
        serde_json::json!({"volume": "v", "dir": d, "segment_size": "8MiB"}),
        &mut model,
        3000,
    );
    assert_eq!(r["new_history"], true, "{r}");
    assert!(c.read(0, SIZE as u32).unwrap() == model, "the volume");
    let t = bookmark(&s, "on");
    assert!(
        at(&dir, Point::Time(t)).unwrap() == model,
        "the point after the catch-up"
    );
    let r = s.rpc_with("volume_delete", serde_json::json!({"name": "v"}));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("switch it off first"),
        "{r}"
    );
    let data = pattern(4242, 4096);
    assert_eq!(c.write(8192, &data), 0);
    model[8192..8192 + 4096].copy_from_slice(&data);
    let r = s.rpc_with("cdp_disable", serde_json::json!({"volume": "v"}));
    assert!(r["error"].is_null(), "{r}");
    let end = r["result"]["window_end_ns"].as_u64().unwrap();
    assert!(
        at(&dir, Point::Time(end)).unwrap() == model,
        "the last point"
    );
    c.disconnect();
    // A volume created at run time: journaled, switched off, then deleted with its entry.
    let r = s.rpc_with(
        "volume_create",
        serde_json::json!({"name": "r", "backend": "malloc", "size": "4M", "block_size": 4096}),
    );
    assert!(r["error"].is_null(), "{r}");
    let d2 = tmp.path().join("j2").display().to_string();
    let r = s.rpc_with("cdp_enable", serde_json::json!({"volume": "r", "dir": d}));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("holds the history of volume \"v\""),
        "{r}"
    );
    let r = s.rpc_with("cdp_enable", serde_json::json!({"volume": "r", "dir": d2}));
    assert_eq!(r["result"]["new_history"], true, "{r}");
    let r = s.rpc_with("cdp_disable", serde_json::json!({"volume": "r"}));
    assert!(r["error"].is_null(), "{r}");
    let r = s.rpc_with("volume_delete", serde_json::json!({"name": "r"}));
    assert!(r["error"].is_null(), "{r}");
    let st = s.rpc("cdp_status");
    assert_eq!(st.as_array().unwrap().len(), 1, "{st}");
}
