//! Local I/O failures at one site of a mirrored pair: one site's journal device fills up
//! while the other's does not (the follower's, then the leader's). Production writes keep being
//! acknowledged, that site's history refuses every point after where its journal stopped and
//! serves those before it exactly, the other site's serves every point, and a restart with
//! room again journals the changed regions and a gap record, after which its newest point is
//! the volume's again.

use crate::cdp::{SmallFs, Upd, expected, wait_window};
use crate::cdp_mirror_stale::{VOL, up_pair, wait_vouched};
use crate::failover::{KEY, WitnessProc};
use crate::harness::{pattern, wait_mirror_state};
use crate::rawnbd::Client;
use std::path::Path;
use std::time::Duration;
use twinblk::layer::cdp::clock;
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, CdpError, Load};

fn at(dir: &Path, p: Point) -> Result<Vec<u8>, CdpError> {
    let h = store::load(dir, Load::ReadOnly)?;
    pit::read_at(&h, p, 0, VOL as u64)
}

#[test]
fn a_full_journal_device_at_the_follower_only_keeps_the_pair_serving_and_its_history_exact() {
    full_journal_at_one_site(false);
}

#[test]
fn a_full_journal_device_at_the_leader_only_keeps_the_pair_serving_and_its_history_exact() {
    full_journal_at_one_site(true);
}

/// Site b's journal device (with `leader`, site a's: the sites swap names here) fills up.
fn full_journal_at_one_site(leader: bool) {
    let root = tempfile::tempdir().unwrap();
    let (full, other) = if leader { ("a", "b") } else { ("b", "a") };
    let jb = root.path().join(format!("{full}.cdp"));
    // Two 4 MiB segments fit, the third does not.
    let fs = SmallFs::mount(&jb, "10m");
    let w = WitnessProc::start(root.path(), KEY, None);
    let (a, b) = up_pair(root.path(), w.addr);
    let (mut a, b) = if leader { (b, a) } else { (a, b) };
    let ja = root.path().join(format!("{other}.cdp"));
    let mut log: Vec<(usize, Upd, u64)> = Vec::new();
    let mut c = Client::connect(a.addr, "vol0", false);
    // 16 MiB of 64 KiB writes: more than b's device holds.
    let mut times = Vec::new();
    for i in 0..256u64 {
        let off = (i * 37 % 256) * 65536;
        let d = pattern(i + 1, 65536);
        assert_eq!(c.write(off, &d), 0, "write {i} acknowledged");
        std::thread::sleep(Duration::from_millis(2));
        let t = clock::now();
        log.push((0, Upd::Write(off, d), t));
        times.push(t);
        std::thread::sleep(Duration::from_millis(2));
    }
    let sb = b.rpc("cdp_status")[0].clone();
    assert_eq!(sb["journal"], "degraded", "b's journal filled up: {sb}");
    assert_eq!(a.rpc("cdp_status")[0]["journal"], "running");
    assert_eq!(a.rpc("mirror_status")[0]["state"], "up");
    let model = expected(&log, 0, u64::MAX, VOL);
    assert!(
        c.read(0, VOL as u32).unwrap() == model,
        "reads are the acknowledged writes"
    );
    // The leader's history holds every moment; the follower's those before its stop.
    wait_window(&[&ja], *times.last().unwrap(), "a's window");
    let mut served = 0;
    for (k, &t) in times.iter().enumerate().step_by(15) {
        let want = expected(&log, 0, t, VOL);
        assert!(at(&ja, Point::Time(t)).unwrap() == want, "a at write {k}");
        match at(&jb, Point::Time(t)) {
            Ok(got) => {
                assert!(
                    got == want,
                    "b served write {k}'s moment with other content"
                );
                served += 1;
            }
            Err(CdpError::NotWhole { .. } | CdpError::Outside { .. }) => {}
            Err(e) => panic!("b at write {k}: {e}"),
        }
    }
    assert!(
        served > 2,
        "b serves the moments before its journal stopped"
    );
    let h = store::load(&jb, Load::ReadOnly).unwrap();
    let (x, _) = h
        .open_gap
        .expect("b's history says where it is whole up to");
    assert!(at(&jb, Point::Seq(x)).is_ok());
    // b stops cleanly (its changed regions kept), gets room and returns.
    let mut b = b;
    assert!(b.stop(), "b's clean stop");
    fs.grow();
    let b = b.respawn();
    wait_mirror_state(&b, "up", Duration::from_secs(20));
    wait_vouched(&b, true, Duration::from_secs(10), "b vouched for again");
    assert_eq!(b.rpc("cdp_status")[0]["journal"], "running");
    for i in 0..4u64 {
        let off = i * 3 * 65536;
        let d = pattern(i + 1000, 65536);
        assert_eq!(c.write(off, &d), 0);
        log.push((0, Upd::Write(off, d), clock::now()));
    }
    std::thread::sleep(Duration::from_millis(20));
    let t_end = clock::now();
    wait_window(&[&jb, &ja], t_end, "windows after b's return");
    let model = expected(&log, 0, u64::MAX, VOL);
    assert!(at(&jb, Point::Time(t_end)).unwrap() == model, "b's newest");
    assert!(at(&ja, Point::Time(t_end)).unwrap() == model, "a's newest");
    for &t in times.iter().rev().take(3) {
        match at(&jb, Point::Time(t)) {
            Err(CdpError::InGap { .. } | CdpError::NotWhole { .. }) => {}
            Ok(got) => assert!(
                got == expected(&log, 0, t, VOL),
                "b served a moment after its journal stopped"
            ),
            Err(e) => panic!("{e}"),
        }
    }
    c.disconnect();
    assert!(a.stop());
    let mut b = b;
    assert!(b.stop());
    drop(fs);
}
