//! CDP rollback in place (`twinblk cdp rollback`, docs/cdp-rollback.md):
//! volumes written with known patterns at recorded times through the real daemon, then put
//! back to a point, undone, confirmed, refused while served or outside the window, completed
//! after an interruption, and a mirrored pair whose sites end with the rolled-back content.

use crate::harness::{Server, free_port, pattern, sha, wait_mirror_state};
use crate::rawnbd::Client;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use twinblk::layer::cdp::store::{self, Load};

const SIZE: usize = 4 << 20;
const NBD_CMD_WRITE_ZEROES: u16 = 6;

fn last(dir: &Path) -> (u64, u64) {
    let h = store::load(dir, Load::ReadOnly).expect("history");
    (h.last_seq, h.last_time)
}

/// `twinblk cdp rollback --config CFG ARGS...`.
fn rollback(cfg: &str, args: &[&str]) -> Output {
    let mut all = vec!["cdp", "rollback", "--config", cfg];
    all.extend_from_slice(args);
    twinblk(&all)
}

fn twinblk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twinblk"))
        .args(args)
        .output()
        .expect("run twinblk")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: &Output, want: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "not refused: {err}");
    assert!(err.contains(want), "refused without {want:?}: {err}");
}

/// One update: (volume, offset, data; an empty data vector is 64 KiB of write-zeroes).
type Update = (usize, u64, Vec<u8>);

/// The content of volume `vol` after the updates of `log` up to `n` (exclusive).
fn model(log: &[(Update, u64)], vol: usize, upto: impl Fn(u64) -> bool) -> Vec<u8> {
    let mut m = vec![0u8; SIZE];
    for ((v, off, data), t) in log {
        if *v == vol && upto(*t) {
            let o = *off as usize;
            if data.is_empty() {
                m[o..o + (64 << 10)].fill(0);
            } else {
                m[o..o + data.len()].copy_from_slice(data);
            }
        }
    }
    m
}

/// Write `n` updates spread over the volumes at `addr`, recording each one's journal time.
fn workload(
    addr: std::net::SocketAddr,
    names: &[&str],
    dirs: &[PathBuf],
    seed: u64,
    n: u64,
) -> Vec<(Update, u64)> {
    let mut log = Vec::new();
    for i in 0..n {
        let vol = (i % names.len() as u64) as usize;
        let off = ((i * 37 + seed) % 60) * 65536;
        let data = if i % 7 == 3 {
            Vec::new()
        } else {
            pattern(seed * 1000 + i, 4096 * (1 + (i as usize * 5) % 24))
        };
        let mut c = Client::connect(addr, names[vol], false);
        let err = if data.is_empty() {
            c.send_request(NBD_CMD_WRITE_ZEROES, 0, 9, off, 64 << 10, &[]);
            c.read_reply(0).1
        } else {
            c.write(off, &data)
        };
        assert_eq!(err, 0, "update {i}");
        c.disconnect();
        log.push(((vol, off, data), last(&dirs[vol]).1));
    }
    log
}

fn body(root: &Path, me: &str, names: &[&str], extra: &str) -> String {
    let mut b = format!("[reactor]\ncores=[0]\npin=false\n{extra}");
    for v in names {
        b += &format!(
            "[[volume]]\nname='{v}'\nbackend='uring'\nsize={SIZE}\nblock_size=4096\npath='{}'\n\
             group='g'\n{}[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
            root.join(format!("{me}-{v}.img")).display(),
            if extra.is_empty() {
                ""
            } else {
                "mirror=true\n"
            },
            root.join(format!("{me}-{v}.cdp")).display()
        );
    }
    b
}

/// Site "a" of `root` serving one volume, `v`, with its history: the server, its config
/// path and the history's directory.
fn one_volume(root: &Path) -> (Server, String, Vec<PathBuf>) {
    let sdir = root.join("a");
    std::fs::create_dir_all(&sdir).unwrap();
    let s = Server::start(&sdir, &body(root, "a", &["v"], ""));
    let cfg = s.config.display().to_string();
    (s, cfg, vec![root.join("a-v.cdp")])
}

fn digest(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        // The lock file holds its last holder's pid.
        .filter(|e| e.path().is_file() && e.file_name() != "daemon.lock")
        .map(|e| (e.file_name().to_string_lossy().into_owned(), sha(&e.path())))
        .collect();
    v.sort();
    v
}

/// A two-volume group written at recorded times is rolled back to one time: each volume then
/// holds exactly its content at that time; the daemon serves it (status says "not
/// confirmed"); undo returns to the content before the rollback; a second rollback is
/// confirmed. Refused while the daemon runs and for a time outside the window, changing
/// nothing.
#[test]
fn a_group_rolls_back_in_place_and_the_rollback_is_undone_or_confirmed() {
    let root = tempfile::tempdir().unwrap();
    let names = ["v", "w"];
    let img = |v: &str| root.path().join(format!("a-{v}.img"));
    let dirs: Vec<PathBuf> = names
        .iter()
        .map(|v| root.path().join(format!("a-{v}.cdp")))
        .collect();
    let sdir = root.path().join("a");
    std::fs::create_dir_all(&sdir).unwrap();
    let mut s = Server::start(&sdir, &body(root.path(), "a", &names, ""));
    let cfg = s.config.display().to_string();
    let log = workload(s.addr, &names, &dirs, 1, 30);
    let t = log[17].1;
    wait_marks(&dirs, &log);
    let ts = t.to_string();
    // The daemon holds the volumes: refused, nothing changed.
    let before: Vec<String> = names.iter().map(|v| sha(&img(v))).collect();
    refused(
        &rollback(&cfg, &["--group", "g", "--time", &ts]),
        "stop it first",
    );
    // Below the control socket's check: the daemon's lock on the directory.
    {
        use twinblk::layer::cdp::rollback::{self, Goal, Target};
        let target = Target {
            name: "v".into(),
            dir: dirs[0].clone(),
            volume: img("v"),
            segment_size: 4 << 20,
            mirror_state: None,
            all: false,
        };
        match rollback::prepare(target, Goal::To(twinblk::layer::cdp::pit::Point::Time(t))) {
            Err(store::CdpError::Refused(why)) => assert!(why.contains("stop it first"), "{why}"),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a rollback was prepared while the daemon holds the volume"),
        }
    }
    assert!(s.stop(), "clean stop failed");
    let now: Vec<Vec<u8>> = names
        .iter()
        .map(|v| std::fs::read(img(v)).unwrap())
        .collect();
    for (i, v) in names.iter().enumerate() {
        assert_eq!(sha(&img(v)), before[i]);
        assert!(now[i] == model(&log, i, |_| true), "volume {v} before");
    }
    // Outside the window: refused with the window named, nothing changed.
    let dir_before: Vec<_> = dirs.iter().map(|d| digest(d)).collect();
    refused(
        &rollback(&cfg, &["--group", "g", "--time", "5"]),
        "outside the restorable window",
    );
    refused(
        &rollback(&cfg, &["--volume", "v", "--seq", "999999"]),
        "outside the restorable window",
    );
    refused(
        &rollback(&cfg, &["--volume", "nope", "--time", &ts]),
        "no volume",
    );
    refused(
        &rollback(&cfg, &["--volume", "v", "--undo"]),
        "no rollback to undo",
    );
    for (i, d) in dirs.iter().enumerate() {
        assert_eq!(digest(d), dir_before[i], "{} changed", d.display());
        assert_eq!(sha(&img(names[i])), before[i]);
    }
    // The group to one time.
    let out = ok(&rollback(&cfg, &["--group", "g", "--time", &ts]));
    assert!(out.contains("not confirmed"), "{out}");
    for (i, v) in names.iter().enumerate() {
        let got = std::fs::read(img(v)).unwrap();
        assert!(got == model(&log, i, |w| w <= t), "volume {v} at {t}");
        assert!(
            got != now[i],
            "volume {v}: the point should differ from now"
        );
        let w = ok(&twinblk(&[
            "cdp",
            "window",
            "--dir",
            &dirs[i].display().to_string(),
        ]));
        assert!(w.contains("not confirmed"), "{w}");
    }
    // Another point while not confirmed: refused.
    refused(
        &rollback(&cfg, &["--group", "g", "--time", &log[3].1.to_string()]),
        "not confirmed",
    );
    // The daemon serves the rolled-back content and says so.
    let s = s.respawn();
    let st = s.rpc("cdp_status");
    assert!(
        st[0]["rollback"]
            .as_str()
            .is_some_and(|r| r.contains("not confirmed")),
        "{st}"
    );
    let mut c = Client::connect(s.addr, "v", false);
    assert!(c.read(0, SIZE as u32).unwrap() == model(&log, 0, |w| w <= t));
    c.disconnect();
    let mut s = s;
    assert!(s.stop());
    // Undo: back to the content before the rollback, no marker left.
    ok(&rollback(&cfg, &["--group", "g", "--undo"]));
    for (i, v) in names.iter().enumerate() {
        assert!(
            std::fs::read(img(v)).unwrap() == now[i],
            "volume {v} after undo"
        );
        assert!(!dirs[i].join("rollback").exists());
    }
    // The history reads the same: its newest point is the volume.
    // Roll back by sequence, then confirm: the content stays, the marker goes.
    let seq = store::load(&dirs[0], Load::ReadOnly)
        .unwrap()
        .entries()
        .find(|(_, e)| e.time == log[8].1)
        .map(|(_, e)| e.seq)
        .expect("record of update 8");
    ok(&rollback(
        &cfg,
        &["--volume", "v", "--seq", &seq.to_string()],
    ));
    let want = model(&log, 0, |w| w <= log[8].1);
    assert!(std::fs::read(img("v")).unwrap() == want);
    assert!(std::fs::read(img("w")).unwrap() == now[1], "w untouched");
    ok(&rollback(&cfg, &["--volume", "v", "--confirm"]));
    assert!(!dirs[0].join("rollback").exists());
    assert!(std::fs::read(img("v")).unwrap() == want);
    // Every rollback was journaled: the newest point of the history is the volume.
    let h = store::load(&dirs[0], Load::ReadOnly).unwrap();
    let restored = root.path().join("restored");
    twinblk::layer::cdp::pit::restore(
        &h,
        twinblk::layer::cdp::pit::Point::Seq(h.last_seq),
        &restored,
        |_, _| {},
    )
    .unwrap();
    assert!(std::fs::read(&restored).unwrap() == want);
}

/// What [`rewritten_after_a_point`] leaves.
struct Rewritten {
    root: tempfile::TempDir,
    /// The daemon, stopped.
    s: Server,
    cfg: String,
    dirs: Vec<PathBuf>,
    log: Vec<(Update, u64)>,
    /// The point.
    t: u64,
    /// The rollback's target: the volume.
    target: twinblk::layer::cdp::rollback::Target,
}

/// Site "a" with one volume `v` and its history: ten writes, then, after the point `t` of
/// the sixth, the whole volume rewritten (several batches to roll back); the daemon stopped.
fn rewritten_after_a_point() -> Rewritten {
    use twinblk::layer::cdp::rollback::Target;
    let root = tempfile::tempdir().unwrap();
    let names = ["v"];
    let (mut s, cfg, dirs) = one_volume(root.path());
    let mut log = workload(s.addr, &names, &dirs, 2, 10);
    let t = log[5].1;
    // The whole volume rewritten after the point: several batches to roll back.
    for k in 0..4u64 {
        let data = pattern(900 + k, 1 << 20);
        let mut c = Client::connect(s.addr, "v", false);
        assert_eq!(c.write(k << 20, &data), 0);
        c.disconnect();
        log.push(((0, k << 20, data), last(&dirs[0]).1));
    }
    assert!(s.stop());
    let target = Target {
        name: "v".into(),
        dir: dirs[0].clone(),
        volume: root.path().join("a-v.img"),
        segment_size: 4 << 20,
        mirror_state: None,
        all: false,
    };
    Rewritten {
        root,
        s,
        cfg,
        dirs,
        log,
        t,
        target,
    }
}

/// A rollback interrupted after it began (its journal partly written) leaves the volume
/// unserved (the daemon refuses to start) until the same command is run again, which
/// completes it.
#[test]
fn an_interrupted_rollback_blocks_the_daemon_until_rerun() {
    use twinblk::layer::cdp::pit::Point;
    use twinblk::layer::cdp::rollback::{self, Goal};
    let Rewritten {
        root,
        s,
        cfg,
        dirs,
        log,
        t,
        target,
    } = rewritten_after_a_point();
    // Stop once a first batch is journaled and its blocks written, with more to compare (a
    // crash there): the volume is partly rolled back.
    let img = root.path().join("a-v.img");
    let before = std::fs::read(&img).unwrap();
    let p = rollback::prepare(target, Goal::To(Point::Time(t))).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rollback::run(p, |g| {
            if g.batches > 0 && g.compared < g.total {
                panic!("interrupted");
            }
        })
    }));
    assert!(r.is_err(), "the run was not interrupted");
    let partial = std::fs::read(&img).unwrap();
    assert!(
        partial != before,
        "nothing was written before the interruption"
    );
    assert!(
        partial != model(&log, 0, |w| w <= t),
        "the run had finished"
    );
    let m = rollback::load_marker(&dirs[0]).unwrap().expect("marker");
    assert!(!m.done);
    // The daemon refuses to serve a half rolled-back volume.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let cfgv = twinblk::control::config::Config::from_toml(&text).unwrap();
    match twinblk::Daemon::start(&cfgv) {
        Ok(_) => panic!("the daemon started over an interrupted rollback"),
        Err(e) => {
            let msg = format!("{e:#} {:?}", e);
            assert!(msg.contains("did not finish"), "{msg}");
        }
    }
    // Another point is refused; the same one completes it.
    refused(
        &rollback(&cfg, &["--volume", "v", "--time", &log[9].1.to_string()]),
        "did not finish",
    );
    ok(&rollback(
        &cfg,
        &["--volume", "v", "--time", &t.to_string()],
    ));
    assert!(std::fs::read(root.path().join("a-v.img")).unwrap() == model(&log, 0, |w| w <= t));
    assert!(rollback::load_marker(&dirs[0]).unwrap().unwrap().done);
    let mut s = s.respawn();
    let mut c = Client::connect(s.addr, "v", false);
    assert!(c.read(0, SIZE as u32).unwrap() == model(&log, 0, |w| w <= t));
    c.disconnect();
    assert!(s.stop());
}

/// A rollback interrupted part way whose own journal is then found cut ahead of records that
/// follow (a batch torn by a power loss, pages of it written out of order, or a record of it
/// damaged): the rerun's recovery says the history is not whole after the cut (degraded.map),
/// which is after the history the run began from, and the rerun is interrupted in turn. The
/// next rerun must still complete the rollback (its candidates are the records after the
/// point, which the cut leaves whole), and the daemon then start with the history's newest
/// point the volume. Before, that rerun (and an undo) was refused until the daemon had
/// started once, while the daemon refused to start until the rollback was rerun: the volume
/// could not be served again without removing the marker by hand.
#[test]
fn an_interrupted_rollback_whose_own_records_are_cut_is_still_completed() {
    use twinblk::layer::cdp::format::Op;
    use twinblk::layer::cdp::pit::Point;
    use twinblk::layer::cdp::rollback::{self, Goal, Target};
    let Rewritten {
        root,
        s,
        cfg,
        dirs,
        log,
        t,
        target,
    } = rewritten_after_a_point();
    let p = rollback::prepare(target, Goal::To(Point::Time(t))).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rollback::run(p, |g| {
            if g.batches > 1 && g.compared < g.total {
                panic!("interrupted");
            }
        })
    }));
    assert!(r.is_err(), "the run was not interrupted");
    let m = rollback::load_marker(&dirs[0]).unwrap().expect("marker");
    assert!(!m.done);
    // The run's first record damaged, with records of the run after it in its segment.
    let h = store::load(&dirs[0], Load::ReadOnly).unwrap();
    let mine: Vec<(u64, twinblk::layer::cdp::format::Entry)> = h
        .entries()
        .filter(|(_, e)| e.seq > m.before && e.op == Op::Write)
        .map(|(n, e)| (n, *e))
        .collect();
    assert!(
        mine.len() >= 2 && mine[0].0 == mine[1].0,
        "the run journaled one record: {mine:?}"
    );
    let (segno, e) = mine[0];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(store::seg_path(&dirs[0], segno))
            .unwrap();
        let at = e.pos + 64 + 10;
        let mut x = [0u8; 1];
        f.read_exact_at(&mut x, at).unwrap();
        f.write_all_at(&[!x[0]], at).unwrap();
    }
    // The rerun's recovery cuts there (the history not whole after the cut), and the rerun is
    // interrupted in turn.
    let target = Target {
        name: "v".into(),
        dir: dirs[0].clone(),
        volume: root.path().join("a-v.img"),
        segment_size: 4 << 20,
        mirror_state: None,
        all: false,
    };
    let p = rollback::prepare(target, Goal::To(Point::Time(t))).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rollback::run(p, |g| {
            if g.batches > 0 && g.compared < g.total {
                panic!("interrupted");
            }
        })
    }));
    assert!(r.is_err(), "the rerun was not interrupted");
    ok(&rollback(
        &cfg,
        &["--volume", "v", "--time", &t.to_string()],
    ));
    assert!(std::fs::read(root.path().join("a-v.img")).unwrap() == model(&log, 0, |w| w <= t));
    assert!(rollback::load_marker(&dirs[0]).unwrap().unwrap().done);
    let mut s = s.respawn();
    let mut c = Client::connect(s.addr, "v", false);
    assert!(c.read(0, SIZE as u32).unwrap() == model(&log, 0, |w| w <= t));
    c.disconnect();
    assert!(s.stop());
    // Its history's newest point is the volume, and the rollback's target still reads.
    let h = store::load(&dirs[0], Load::ReadOnly).unwrap();
    let newest =
        twinblk::layer::cdp::pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE as u64).unwrap();
    assert!(newest == model(&log, 0, |w| w <= t));
}

/// Flip a byte of the payload of the record `e` (segment `segno`) of `dir`.
fn damage(dir: &Path, segno: u64, e: &twinblk::layer::cdp::format::Entry) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(store::seg_path(dir, segno))
        .unwrap();
    let at = e.pos + 64 + 10;
    let mut x = [0u8; 1];
    f.read_exact_at(&mut x, at).unwrap();
    f.write_all_at(&[!x[0]], at).unwrap();
}

/// A rollback interrupted part way whose rerun's recovery cuts the history **before** the
/// run's `before` (a record of the history it began from damaged since): the records after
/// the cut, and the regions they changed, are set aside. With its point still readable (the
/// cut after it) the rerun completes it comparing the whole volume; with its point cut away,
/// the rerun is refused naming the way out, and `--all` to a point before the cut completes
/// it there. The daemon then starts. Before session 28 every rerun and undo was refused ("its
/// journal stopped ... start the daemon once") while the daemon refused to start over the
/// interrupted run: the volume could not be served without removing the marker by hand.
#[test]
fn an_interrupted_rollback_whose_history_is_cut_before_it_began_is_still_completed() {
    use twinblk::layer::cdp::format::Op;
    use twinblk::layer::cdp::pit::Point;
    use twinblk::layer::cdp::rollback::{self, Goal};
    for point_cut_away in [false, true] {
        let Rewritten {
            root,
            s,
            cfg,
            dirs,
            log,
            t,
            target,
        } = rewritten_after_a_point();
        let p = rollback::prepare(target.clone(), Goal::To(Point::Time(t))).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rollback::run(p, |g| {
                if g.batches > 0 && g.compared < g.total {
                    panic!("interrupted");
                }
            })
        }));
        assert!(r.is_err(), "the run was not interrupted");
        let m = rollback::load_marker(&dirs[0]).unwrap().expect("marker");
        let h = store::load(&dirs[0], Load::ReadOnly).unwrap();
        // A write record before `before`: after the point (one of the rewrites), or before it.
        let (segno, e) = h
            .entries()
            .filter(|(_, e)| e.op == Op::Write && e.seq < m.before)
            .filter(|(_, e)| {
                if point_cut_away {
                    e.time < t
                } else {
                    e.time > t
                }
            })
            .map(|(n, e)| (n, *e))
            .nth(usize::from(point_cut_away))
            .expect("a record to damage");
        damage(&dirs[0], segno, &e);
        // Its segment's index (a cache) gone too, as a consolidation pass that meets the
        // damage deletes it: recovery scans the segment and cuts there.
        let _ = std::fs::remove_file(store::seg_path(&dirs[0], segno).with_extension("idx"));
        let want_at = if point_cut_away {
            // The point before the damaged record.
            let h = store::load(&dirs[0], Load::ReadOnly).unwrap();
            h.entries()
                .filter(|(_, x)| x.seq < e.seq)
                .map(|(_, x)| x.time)
                .last()
                .unwrap_or(h.meta.created)
        } else {
            t
        };
        let again = ["--volume", "v", "--time", &t.to_string()];
        if point_cut_away {
            refused(&rollback(&cfg, &again), "--all");
            ok(&rollback(
                &cfg,
                &["--volume", "v", "--time", &want_at.to_string(), "--all"],
            ));
        } else {
            ok(&rollback(&cfg, &again));
        }
        let want = model(&log, 0, |w| w <= want_at);
        let img = root.path().join("a-v.img");
        assert!(
            std::fs::read(&img).unwrap() == want,
            "rolled back (point cut away: {point_cut_away})"
        );
        assert!(rollback::load_marker(&dirs[0]).unwrap().unwrap().done);
        let mut s = s.respawn();
        let mut c = Client::connect(s.addr, "v", false);
        assert!(
            c.read(0, SIZE as u32).unwrap() == want,
            "the daemon serves it"
        );
        c.disconnect();
        assert!(s.stop());
        let h = store::load(&dirs[0], Load::ReadOnly).unwrap();
        let newest =
            twinblk::layer::cdp::pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE as u64).unwrap();
        assert!(newest == want, "the newest point is the volume");
    }
}

/// A mirrored pair: the volume is rolled back at site a, site b yields; after both restart
/// they mirror again ("up" at both) and both replicas hold the rolled-back content. Without
/// the yield the peer's newer copy wins at both sites: never two replicas "in sync" that
/// differ.
#[test]
fn a_mirrored_volume_rolled_back_at_one_site_ends_with_that_content_at_both() {
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("link.key");
    std::fs::write(&key, b"cdp-rollback-test-key-0123456789").unwrap();
    let (pa, pb) = (free_port(), free_port());
    let names = ["v"];
    let mk = |me: &str, peer: &str, l: u16, p: u16| {
        let d = root.path().join(me);
        let st = root.path().join(format!("state-{me}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::create_dir_all(&st).unwrap();
        let extra = format!(
            "[mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:{l}']\n\
             peer='127.0.0.1:{p}'\nwitness_key_file='{}'\nstate_dir='{}'\n",
            key.display(),
            st.display()
        );
        Server::start(&d, &body(root.path(), me, &names, &extra))
    };
    let img = |site: &str| root.path().join(format!("{site}-v.img"));
    let dir_a = root.path().join("a-v.cdp");
    let a = mk("a", "b", pa, pb);
    let b = mk("b", "a", pb, pa);
    wait_mirror_state(&a, "up", Duration::from_secs(10));
    wait_mirror_state(&b, "up", Duration::from_secs(10));
    let (cfg_a, cfg_b) = (
        a.config.display().to_string(),
        b.config.display().to_string(),
    );
    let log = workload(a.addr, &names, std::slice::from_ref(&dir_a), 3, 16);
    let now = model(&log, 0, |_| true);
    let t = log[7].1;
    let want = model(&log, 0, |w| w <= t);
    let (mut a, mut b) = (a, b);
    assert!(b.stop() && a.stop(), "clean stop failed");
    assert!(std::fs::read(img("a")).unwrap() == now && std::fs::read(img("b")).unwrap() == now);

    // 1. Rolled back at a, no yield at b: b's (newer) copy wins, both in sync and identical.
    ok(&rollback(
        &cfg_a,
        &["--volume", "v", "--time", &t.to_string()],
    ));
    assert!(std::fs::read(img("a")).unwrap() == want);
    let a = a.respawn();
    let b = b.respawn();
    wait_mirror_state(&a, "up", Duration::from_secs(20));
    wait_mirror_state(&b, "up", Duration::from_secs(20));
    for s in [&a, &b] {
        let mut c = Client::connect(s.addr, "v", false);
        assert!(
            c.read(0, SIZE as u32).unwrap() == now,
            "not the peer's copy"
        );
        c.disconnect();
    }
    let (mut a, mut b) = (a, b);
    assert!(b.stop() && a.stop());
    ok(&rollback(&cfg_a, &["--volume", "v", "--confirm"]));

    // 2. Rolled back at a, b yields: both end with the rolled-back content.
    ok(&rollback(&cfg_b, &["--volume", "v", "--yield-to-peer"]));
    ok(&rollback(
        &cfg_a,
        &["--volume", "v", "--time", &t.to_string()],
    ));
    let b = b.respawn();
    let a = a.respawn();
    wait_mirror_state(&a, "up", Duration::from_secs(20));
    wait_mirror_state(&b, "up", Duration::from_secs(20));
    for s in [&a, &b] {
        let st = s.rpc("mirror_status")[0].clone();
        assert_eq!(st["dirty_bytes"], 0, "{st}");
        let mut c = Client::connect(s.addr, "v", false);
        assert!(
            c.read(0, SIZE as u32).unwrap() == want,
            "not the rolled-back copy"
        );
        c.disconnect();
    }
    let (mut a, mut b) = (a, b);
    assert!(a.stop() && b.stop());
    assert!(std::fs::read(img("a")).unwrap() == want);
    assert!(std::fs::read(img("b")).unwrap() == want);
}

/// Stop `s` once every volume's window reaches the newest update of `log` (a group is cut at
/// one time every member's window reaches).
fn wait_marks(dirs: &[PathBuf], log: &[(Update, u64)]) {
    let newest = log.iter().map(|(_, t)| *t).max().unwrap();
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    crate::cdp::wait_window(&dirs, newest, "no time mark after the newest update");
}

/// `--all` for a volume whose file holds data its journal lacks: the undo returns to what the
/// file really held (the run journals those blocks' current content before overwriting them),
/// not to what the history said.
#[test]
fn an_all_rollback_is_undone_to_what_the_volume_really_held() {
    let root = tempfile::tempdir().unwrap();
    let names = ["v"];
    let (mut s, cfg, dirs) = one_volume(root.path());
    let img = root.path().join("a-v.img");
    let log = workload(s.addr, &names, &dirs, 4, 12);
    let t = log[5].1;
    assert!(s.stop());
    // Written behind the journal's back: a block never journaled, and one the history wrote
    // after the point.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&pattern(4242, 8192), 63 * 65536).unwrap();
        f.write_all_at(&pattern(4343, 4096), log[9].0.1 + 4096)
            .unwrap();
        f.sync_all().unwrap();
    }
    let held = std::fs::read(&img).unwrap();
    assert!(held != model(&log, 0, |_| true));
    let newest = last(&dirs[0]).0;
    let out = ok(&rollback(
        &cfg,
        &["--volume", "v", "--all", "--time", &t.to_string()],
    ));
    assert!(out.contains("not confirmed"), "{out}");
    // The first pass's records are pieces of what the volume held, no moment of it: refused
    // up to the gap after them, whose own point is the volume as it was.
    {
        use twinblk::layer::cdp::pit::{self, Point};
        use twinblk::layer::cdp::store::{self, Load};
        let h = store::load(&dirs[0], Load::ReadOnly).unwrap();
        let (_, gap) = h
            .entries()
            .find(|(_, e)| e.op == twinblk::layer::cdp::format::Op::Gap && e.seq > newest)
            .expect("a gap after the first pass");
        assert_eq!(gap.offset, newest);
        assert!(
            gap.seq > newest + 2,
            "two runs of blocks were journaled first"
        );
        for q in newest + 1..gap.seq {
            assert!(pit::resolve(&h, Point::Seq(q)).is_err(), "point {q}");
        }
        let at_gap = pit::read_at(&h, Point::Seq(gap.seq), 0, held.len() as u64).unwrap();
        assert!(at_gap == held, "the gap's point is the volume as it was");
    }
    assert!(std::fs::read(&img).unwrap() == model(&log, 0, |w| w <= t));
    ok(&rollback(&cfg, &["--volume", "v", "--undo"]));
    assert!(
        std::fs::read(&img).unwrap() == held,
        "the undo did not return to what the volume held"
    );
    assert!(!dirs[0].join("rollback").exists());
}

/// A rollback not confirmed keeps its undo point through retention: consolidation (the
/// daemon's, by age or size) stops short of `before`; the undo then also reverts the writes
/// served since the rollback, and the status and the undo say so.
#[test]
fn an_unconfirmed_rollback_keeps_its_undo_point_through_retention() {
    use twinblk::layer::cdp::retain::{self, Retention};
    let root = tempfile::tempdir().unwrap();
    let names = ["v"];
    let (mut s, cfg, dirs) = one_volume(root.path());
    let img = root.path().join("a-v.img");
    let log = workload(s.addr, &names, &dirs, 5, 12);
    let t = log[5].1;
    assert!(s.stop());
    let now = std::fs::read(&img).unwrap();
    ok(&rollback(
        &cfg,
        &["--volume", "v", "--time", &t.to_string()],
    ));
    // The daemon serves writes (several segments of them) over the rollback.
    let s = s.respawn();
    for k in 0..6u64 {
        let mut c = Client::connect(s.addr, "v", false);
        assert_eq!(c.write((k % 4) << 20, &pattern(700 + k, 1 << 20)), 0);
        c.disconnect();
    }
    let st = s.rpc("cdp_status");
    let status = st[0]["rollback"].as_str().unwrap_or_default().to_string();
    let mut s = s;
    assert!(s.stop());
    // The volume is no longer at t: the same command again is refused, not "already done".
    let again = rollback(&cfg, &["--volume", "v", "--time", &t.to_string()]);
    assert!(
        !again.status.success(),
        "a rerun over served writes: {}",
        String::from_utf8_lossy(&again.stdout)
    );
    // Retention releases everything it may.
    let keep = Retention {
        age_ns: Some(1),
        bytes: Some(1),
    };
    for _ in 0..100 {
        if retain::consolidate_once(&dirs[0], &keep, u64::MAX / 2)
            .unwrap()
            .is_none()
        {
            break;
        }
    }
    let out = ok(&rollback(&cfg, &["--volume", "v", "--undo"]));
    assert!(std::fs::read(&img).unwrap() == now, "volume after undo");
    assert!(out.contains("revert"), "{out}");
    assert!(
        status.contains("not confirmed") && status.contains("revert"),
        "{status}"
    );
    // Confirmed (or undone), retention goes on.
    assert!(
        retain::consolidate_once(&dirs[0], &keep, u64::MAX / 2)
            .unwrap()
            .is_some()
    );
}

/// The state a crash part way through a group rollback to `t` leaves: the first volume
/// rolled back ("done"), the second interrupted ("running"), the third untouched.
fn group_stopped_part_way(root: &Path, names: &[&str], t: u64) {
    use twinblk::layer::cdp::pit::Point;
    use twinblk::layer::cdp::rollback::{self, Goal, Target};
    let target = |v: &str| Target {
        name: v.into(),
        dir: root.join(format!("a-{v}.cdp")),
        volume: root.join(format!("a-{v}.img")),
        segment_size: 4 << 20,
        mirror_state: None,
        all: false,
    };
    let p = rollback::prepare(target(names[0]), Goal::To(Point::Time(t))).unwrap();
    rollback::run(p, |_| {}).unwrap();
    let p = rollback::prepare(target(names[1]), Goal::To(Point::Time(t))).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rollback::run(p, |g| {
            if g.batches > 0 && g.compared < g.total {
                panic!("interrupted");
            }
        })
    }));
    assert!(r.is_err(), "the run was not interrupted");
    let m = |v: &str| rollback::load_marker(&root.join(format!("a-{v}.cdp"))).unwrap();
    assert!(m(names[0]).unwrap().done);
    assert!(!m(names[1]).unwrap().done);
    assert!(m(names[2]).is_none());
}

/// A group rollback stopped part way (one volume done, one interrupted, one untouched):
/// `--confirm` is refused and confirms none; `--undo` undoes the volumes rolled back; the
/// same command run again completes it (the volume already done is skipped); then the group
/// is confirmed.
#[test]
fn a_group_rollback_stopped_part_way_is_undone_or_completed_as_a_group() {
    let root = tempfile::tempdir().unwrap();
    let names = ["v", "w", "x"];
    let img = |v: &str| root.path().join(format!("a-{v}.img"));
    let dirs: Vec<PathBuf> = names
        .iter()
        .map(|v| root.path().join(format!("a-{v}.cdp")))
        .collect();
    let sdir = root.path().join("a");
    std::fs::create_dir_all(&sdir).unwrap();
    let mut s = Server::start(&sdir, &body(root.path(), "a", &names, ""));
    let cfg = s.config.display().to_string();
    let mut log = workload(s.addr, &names, &dirs, 6, 24);
    let t = log[13].1;
    // w rewritten whole after the point: several batches to roll back.
    for k in 0..4u64 {
        let data = pattern(800 + k, 1 << 20);
        let mut c = Client::connect(s.addr, "w", false);
        assert_eq!(c.write(k << 20, &data), 0);
        c.disconnect();
        log.push(((1, k << 20, data), last(&dirs[1]).1));
    }
    wait_marks(&dirs, &log);
    assert!(s.stop());
    let now: Vec<Vec<u8>> = names
        .iter()
        .map(|v| std::fs::read(img(v)).unwrap())
        .collect();
    let ts = t.to_string();
    let group = |extra: &[&str]| {
        let mut a = vec!["--group", "g"];
        a.extend_from_slice(extra);
        rollback(&cfg, &a)
    };

    group_stopped_part_way(root.path(), &names, t);
    // Confirm: all or nothing.
    refused(&group(&["--confirm"]), "did not finish");
    assert!(
        dirs[0].join("rollback").exists(),
        "a partial confirm removed v's marker"
    );
    // Undo: the volumes rolled back (or partly) are undone, the untouched one skipped.
    ok(&group(&["--undo"]));
    for (i, v) in names.iter().enumerate() {
        assert!(
            std::fs::read(img(v)).unwrap() == now[i],
            "volume {v} after undo"
        );
        assert!(!dirs[i].join("rollback").exists(), "{v}: marker left");
    }
    refused(&group(&["--undo"]), "no rollback to undo");

    group_stopped_part_way(root.path(), &names, t);
    // The same command again completes it.
    let out = ok(&group(&["--time", &ts]));
    assert!(out.contains("already"), "{out}");
    for (i, v) in names.iter().enumerate() {
        assert!(
            std::fs::read(img(v)).unwrap() == model(&log, i, |w| w <= t),
            "volume {v} at {t}"
        );
        let m = twinblk::layer::cdp::rollback::load_marker(&dirs[i]).unwrap();
        assert!(m.is_some_and(|m| m.done), "{v}: {m:?}");
    }
    // Another point is still refused.
    refused(&group(&["--time", &log[3].1.to_string()]), "not confirmed");
    ok(&group(&["--confirm"]));
    for d in &dirs {
        assert!(!d.join("rollback").exists());
    }
    refused(&group(&["--confirm"]), "no rollback to confirm");
}

/// A finished rollback lets the daemon start; it is confirmed while the daemon serves (the
/// status it shows asks for exactly that).
#[test]
fn a_rollback_is_confirmed_while_the_daemon_serves() {
    let root = tempfile::tempdir().unwrap();
    let names = ["v"];
    let (mut s, cfg, dirs) = one_volume(root.path());
    let log = workload(s.addr, &names, &dirs, 5, 12);
    let t = log[5].1;
    assert!(s.stop());
    ok(&rollback(
        &cfg,
        &["--volume", "v", "--time", &t.to_string()],
    ));
    let s = s.respawn();
    assert!(s.rpc("cdp_status")[0]["rollback"].is_string());
    let out = ok(&rollback(&cfg, &["--volume", "v", "--confirm"]));
    assert!(out.contains("confirmed"), "{out}");
    assert!(s.rpc("cdp_status")[0]["rollback"].is_null());
}

/// A rollback whose point reads a record damaged after it was written (bit rot in a sealed
/// segment) is refused before anything changes: no marker, the volume untouched, the daemon
/// starts and serves. (Before, the run wrote its "running" marker, then failed at the damaged
/// record part way through the volume: the daemon refused to start over the half rolled-back
/// volume, and a rerun met the same record, so neither the rollback nor its undo could finish.)
#[test]
fn a_rollback_through_a_damaged_record_is_refused_before_anything_changes() {
    let root = tempfile::tempdir().unwrap();
    let names = ["v"];
    let (mut s, cfg, dirs) = one_volume(root.path());
    let log = workload(s.addr, &names, &dirs, 2, 10);
    let t = log[5].1;
    // The whole volume rewritten after the point: every block is to roll back.
    for k in 0..4u64 {
        let mut c = Client::connect(s.addr, "v", false);
        assert_eq!(c.write(k << 20, &pattern(950 + k, 1 << 20)), 0);
        c.disconnect();
    }
    assert!(s.stop());
    // The sealed segments' indexes written (as any reader writes them)...
    store::load(&dirs[0], Load::Recover).expect("history");
    // ...then update 2 (before the point, its blocks overwritten by no other update up to
    // it) rots in its sealed segment: a byte of its payload flipped.
    let ((_, _, data), _) = &log[2];
    let probe = &data[..64];
    let mut damaged = false;
    for e in std::fs::read_dir(&dirs[0]).unwrap().flatten() {
        let p = e.path();
        if !p.to_string_lossy().ends_with(".cdp") {
            continue;
        }
        let mut seg = std::fs::read(&p).unwrap();
        if let Some(at) = seg.windows(probe.len()).position(|w| w == probe) {
            seg[at + 100] ^= 0x40;
            std::fs::write(&p, &seg).unwrap();
            damaged = true;
            break;
        }
    }
    assert!(damaged, "update 2's record not found in a segment");
    let img = root.path().join("a-v.img");
    let before = std::fs::read(&img).unwrap();
    refused(
        &rollback(&cfg, &["--volume", "v", "--time", &t.to_string()]),
        "damaged",
    );
    assert!(
        twinblk::layer::cdp::rollback::load_marker(&dirs[0])
            .unwrap()
            .is_none(),
        "a marker was written"
    );
    assert!(std::fs::read(&img).unwrap() == before, "the volume changed");
    let mut s = s.respawn();
    let mut c = Client::connect(s.addr, "v", false);
    assert!(
        c.read(0, SIZE as u32).unwrap() == before,
        "the daemon serves the volume as it was"
    );
    c.disconnect();
    assert!(s.stop());
}
