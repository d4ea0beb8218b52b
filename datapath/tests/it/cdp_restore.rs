//! Restores that fail or are interrupted leave nothing that looks like a restored volume: the
//! file is written under a temporary name and named `out` only once it is whole and synced.

use crate::cdp::{segment_files, volume};
use crate::harness::{in_process_with, pattern};
use crate::rawnbd::Client;
use std::path::{Path, PathBuf};
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, Load};

const SIZE: usize = 2 << 20;

/// Two volumes of group `g` with histories of a few segments each, the daemon stopped.
fn two_histories(root: &Path) -> [PathBuf; 2] {
    let dirs = [root.join("a.cdp"), root.join("b.cdp")];
    let vols = format!(
        "{}{}",
        volume("a", SIZE as u64, &dirs[0], "4MiB"),
        volume("b", SIZE as u64, &dirs[1], "4MiB")
    );
    let (mut d, addr) = in_process_with("cores=[0]\nwait='adaptive'", &vols);
    for name in ["a", "b"] {
        let mut c = Client::connect(addr, name, false);
        for i in 0..40u64 {
            let off = (i * 7 % 15) * (128 << 10);
            assert_eq!(c.write(off, &pattern(i + 7, 128 << 10)), 0);
        }
        c.disconnect();
    }
    d.stop();
    dirs
}

/// The newest segment cut short: reading its records fails (an I/O error, not a retirement).
fn damage(dir: &Path) {
    let last = segment_files(dir).pop().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(8192)
        .unwrap();
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A restore that fails while applying records leaves no file at `out` (nor a partial one
/// beside it); a group restore whose second volume fails removes the first volume's file too;
/// the base copy's phase reports progress.
#[test]
fn a_failed_restore_leaves_no_file_that_looks_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = two_histories(tmp.path());
    let outs = tmp.path().join("out");
    std::fs::create_dir(&outs).unwrap();
    // One volume, through the library.
    let h = store::load(&dirs[1], Load::ReadOnly).unwrap();
    damage(&dirs[1]);
    let out = outs.join("b.img");
    let e = pit::restore(&h, Point::Seq(h.last_seq), &out, |_, _| {});
    eprintln!("failed restore: {e:?}");
    assert!(e.is_err(), "a damaged segment restored");
    assert!(
        names_in(&outs).is_empty(),
        "left behind: {:?}",
        names_in(&outs)
    );
    // A group, through the command: a restored, b fails (its file cannot be made).
    let t = store::load(&dirs[1], Load::ReadOnly)
        .unwrap()
        .last_time
        .min(store::load(&dirs[0], Load::ReadOnly).unwrap().last_time);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_twinblk"))
        .args(["cdp", "restore", "--time", &t.to_string()])
        .arg("--dir")
        .arg(&dirs[0])
        .arg("--dir")
        .arg(&dirs[1])
        .arg("--out")
        .arg(outs.join("a.img"))
        .arg("--out")
        .arg(outs.join("no-such-dir").join("b.img"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert!(!o.status.success(), "a damaged segment restored");
    assert!(
        names_in(&outs).is_empty(),
        "left behind: {:?}",
        names_in(&outs)
    );
    assert!(err.contains("base copy"), "no base copy progress: {err}");
}

/// A restore stopped by its caller (the command on SIGINT or SIGTERM) leaves nothing; one that
/// completes is named `out` only at the end, and the base copy's phase reports bytes.
#[test]
fn a_stopped_restore_leaves_nothing_and_a_finished_one_is_named_at_the_end() {
    use std::ops::ControlFlow;
    let tmp = tempfile::tempdir().unwrap();
    let dirs = two_histories(tmp.path());
    let outs = tmp.path().join("out");
    std::fs::create_dir(&outs).unwrap();
    let h = store::load(&dirs[0], Load::ReadOnly).unwrap();
    let out = outs.join("a.img");
    for stop_in_base in [true, false] {
        let e = pit::restore_unnamed(&h, Point::Seq(h.last_seq), &out, |p| match p {
            pit::Progress::Base { .. } if stop_in_base => ControlFlow::Break(()),
            pit::Progress::Records { .. } if !stop_in_base => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        });
        assert!(e.is_err(), "not stopped");
        assert!(names_in(&outs).is_empty(), "left: {:?}", names_in(&outs));
    }
    let mut base_seen = false;
    let r = pit::restore_unnamed(&h, Point::Seq(h.last_seq), &out, |p| {
        if let pit::Progress::Base { total, .. } = p {
            base_seen |= total > 0;
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(base_seen, "the base copy's progress");
    assert!(!out.exists(), "named before finish");
    assert_eq!(names_in(&outs), vec![".a.img.restore-partial".to_string()]);
    r.finish().unwrap();
    assert_eq!(names_in(&outs), vec!["a.img".to_string()]);
    let e = pit::restore(&h, Point::Seq(h.last_seq), &out, |_, _| {});
    assert!(e.is_err(), "an existing file replaced");
    assert_eq!(names_in(&outs), vec!["a.img".to_string()]);
}

/// A group restore never writes into one of the group's history directories: volume a's image
/// as b's `consolidating` was restored and named there, and b's history no longer loaded.
#[test]
fn a_group_restore_into_another_members_history_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = two_histories(tmp.path());
    let t = store::load(&dirs[1], Load::ReadOnly)
        .unwrap()
        .last_time
        .min(store::load(&dirs[0], Load::ReadOnly).unwrap().last_time);
    let into = dirs[1].join("consolidating");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_twinblk"))
        .args(["cdp", "restore", "--time", &t.to_string()])
        .arg("--dir")
        .arg(&dirs[0])
        .arg("--dir")
        .arg(&dirs[1])
        .arg("--out")
        .arg(&into)
        .arg("--out")
        .arg(tmp.path().join("b.img"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let loads = store::load(&dirs[1], Load::ReadOnly).map(|h| h.last_seq);
    assert!(
        !o.status.success(),
        "restored; b's history loads: {loads:?}"
    );
    assert!(err.contains("history's directory"), "{err}");
    assert!(!into.exists());
    loads.unwrap();
}
