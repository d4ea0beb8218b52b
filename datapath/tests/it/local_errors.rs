//! Local I/O errors at either site of a mirrored volume. At the site that serves it alone
//! (the survivor holds its only current copy): the failed request gets the error, everything
//! else goes on being served, the status counts the errors, and a resync that cannot read a
//! region waits for it instead of stopping the volume or telling the peer it is in sync. At
//! a site that mirrors: a read its device fails in the io_uring completion (not refused at
//! once) takes the replica out of service, as any other local failure, so the peer serves
//! the volume. Two `twinblk serve` processes on loopback, an in-process witness, the fault
//! layer's `fail_range`, or a replica file cut short under the running daemon.

use crate::harness::{mirror_state, pattern, same_files, wait_mirror_state};
use crate::rawnbd::Client;
use crate::slow_local::{kill_and_free_port, pair, repair};
use std::time::{Duration, Instant};

/// The failing 4 KiB block (in the 64 KiB region at 1 MiB).
const X: u64 = 1 << 20;
/// A block elsewhere.
const Z: u64 = 4 << 20;

fn status(s: &crate::harness::Server) -> serde_json::Value {
    s.rpc("mirror_status")[0].clone()
}

/// Write `data` at `off` through a new connection until it is acknowledged (a site just
/// restarted serves once the witness confirmed its grant).
fn write_until_acknowledged(s: &crate::harness::Server, off: u64, data: &[u8]) {
    let t = Instant::now();
    loop {
        let mut c = Client::connect(s.addr, "vol0", false);
        let e = c.write(off, data);
        if e == 0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "writes refused for 10 s (error {e}), state {}",
            mirror_state(s)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Site a's replica file cut short to 8 MiB under the running daemon (its device now fails
/// reads past that in their io_uring completion).
fn cut_replica_a(p: &crate::slow_local::Pair) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p.root.path().join("a.img"))
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
}

/// A survivor whose device fails a write and a read answers those two with EIO and serves
/// the rest; restarted peer, its resync cannot read the failed region: the peer stays
/// `resyncing` (never in sync without it), the survivor still acknowledges writes and says
/// how much it could not read; repaired and restarted, the survivor finishes the resync and
/// both replicas are identical. (Before, the survivor took its replica out of service at the
/// first error: the volume stopped at both sites until a restart.)
#[test]
fn a_survivor_passes_its_device_errors_on_and_a_resync_waits_for_the_unreadable_region() {
    let mut p = pair(true, "", "");
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(X, &pattern(1, 4096)), 0);
    assert_eq!(c.write(Z, &pattern(2, 4096)), 0);
    drop(c);
    // b is lost: a is granted the volume.
    kill_and_free_port(&mut p.b);
    wait_mirror_state(&p.a, "survivor", Duration::from_secs(10));
    // a's device fails over X from now on (reads too).
    assert!(p.a.stop(), "a's clean stop failed");
    let mut cfg = std::fs::read_to_string(&p.a.config).unwrap();
    cfg.push_str(&format!("fail_range=[{X}, 4096]\n"));
    std::fs::write(&p.a.config, cfg).unwrap();
    p.a.respawn_in_place();
    wait_mirror_state(&p.a, "survivor", Duration::from_secs(10));

    write_until_acknowledged(&p.a, Z, &pattern(4, 4096));
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(
        c.write(X, &pattern(3, 4096)),
        libc::EIO as u32,
        "write of the bad block"
    );
    assert_eq!(
        c.read(X, 4096),
        Err(libc::EIO as u32),
        "read of the bad block"
    );
    assert_eq!(c.write(Z + 4096, &pattern(5, 4096)), 0, "a write elsewhere");
    assert_eq!(c.read(Z, 4096).unwrap(), pattern(4, 4096));
    assert_eq!(c.read(Z + 4096, 4096).unwrap(), pattern(5, 4096));
    // (The read's error is counted at the engine's next tick.)
    let t = Instant::now();
    let st = loop {
        let st = status(&p.a);
        if st["local_errors"].as_u64() == Some(2) || t.elapsed() > Duration::from_secs(2) {
            break st;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(st["state"], "survivor", "{st}");
    assert_eq!(st["local_errors"], 2, "{st}");
    assert!(st["last_local_error"].as_str().is_some(), "{st}");
    assert!(st["failure"].is_null(), "{st}");
    drop(c);

    // b returns: the copy of X's region cannot be read at a.
    p.b.respawn_in_place();
    let t = Instant::now();
    loop {
        let st = status(&p.a);
        if st["resync_unreadable_bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the resync never met the unreadable region: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Writes go on at a, alone, while the copy waits; b never says it is in sync.
    let mut c = Client::connect(p.a.addr, "vol0", false);
    for i in 0..20u64 {
        assert_eq!(c.write(Z + 4096 * (i % 4), &pattern(10 + i, 4096)), 0);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(mirror_state(&p.b), "resyncing");
        assert_eq!(mirror_state(&p.a), "survivor");
    }
    drop(c);

    // The device repaired: a's resync finishes, both identical.
    assert!(p.a.stop(), "a's clean stop failed");
    repair(&p.a);
    p.a.respawn_in_place();
    wait_mirror_state(&p.a, "up", Duration::from_secs(30));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.read(Z + 4096 * 3, 4096).unwrap(), pattern(10 + 19, 4096));
    drop(c);
    assert!(p.a.stop() && p.b.stop(), "clean stops");
    same_files(
        &p.root.path().join("a.img"),
        &p.root.path().join("b.img"),
        "after the repaired survivor's resync",
    );
}

/// A mirroring site's device fails a host read in its completion (the replica file cut short
/// under the running daemon: the kernel reads nothing past its end, an EIO at completion):
/// the site takes its replica out of service (`failed`), the peer is granted and serves that
/// read with the acknowledged data. (Before, only reads the device refused at once did so:
/// this one answered EIO and the site went on "up", its replica unreadable there while the
/// peer held the data.)
#[test]
fn a_read_failing_in_its_completion_at_a_mirroring_site_hands_the_volume_to_the_peer() {
    let mut p = pair(true, "", "");
    const FAR: u64 = 12 << 20;
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(FAR, &pattern(7, 4096)), 0);
    assert_eq!(c.read(FAR, 4096).unwrap(), pattern(7, 4096));
    // a's replica loses its tail (its device now fails reads past 8 MiB).
    cut_replica_a(&p);
    let e = c
        .read(FAR, 4096)
        .expect_err("a read past the cut end served");
    assert_eq!(e, libc::EIO as u32);
    drop(c);
    wait_mirror_state(&p.a, "failed", Duration::from_secs(5));
    let st = status(&p.a);
    assert!(
        st["failure"].as_str().is_some_and(|f| f.contains("read")),
        "{st}"
    );
    wait_mirror_state(&p.b, "survivor", Duration::from_secs(10));
    let d = crate::slow_local::read_at(&p.b, FAR, 4096);
    assert_eq!(
        d,
        pattern(7, 4096),
        "the peer's copy of the acknowledged write"
    );
    kill_and_free_port(&mut p.a);
}

/// The same over NVMe/TCP: the read failing in its completion at a mirroring site is answered
/// with the ANA Inaccessible path status (SCT 3h, SC 02h), on which a host's multipath
/// retries on the other path, never with a media error, on which it does not; the peer then
/// serves the acknowledged data.
#[test]
fn over_nvme_a_read_failing_in_its_completion_answers_ana_inaccessible_not_a_media_error() {
    use twinblk_tools::nvmf::{Controller, Opts, Sqe};
    let mut p = pair(true, "", "");
    const FAR: u64 = 12 << 20;
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(FAR, &pattern(8, 4096)), 0);
    drop(c);
    let nqn = format!("{}vol0", twinblk::frontend::nvmf::DEFAULT_NQN_PREFIX);
    let n = Controller::connect(p.a.nvmf_addr, &nqn, &Opts::default())
        .expect("an NVMe/TCP controller at a");
    let mut q = n.io_queue(1, 8).unwrap();
    let lba = FAR / 512;
    let r = q
        .cmd(Sqe::new(0x02).nsid(1).lba(lba, 8), &[], 4096)
        .unwrap();
    assert_eq!(r.status, 0, "the read before the cut");
    cut_replica_a(&p);
    let r = q
        .cmd(Sqe::new(0x02).nsid(1).lba(lba, 8), &[], 4096)
        .unwrap();
    assert_eq!(
        r.status, 0x302,
        "a read failing at a mirroring site: ANA Inaccessible expected, got status {:#x}",
        r.status
    );
    drop((q, n));
    wait_mirror_state(&p.b, "survivor", Duration::from_secs(10));
    assert_eq!(
        crate::slow_local::read_at(&p.b, FAR, 4096),
        pattern(8, 4096),
        "the peer's copy of the acknowledged write"
    );
    kill_and_free_port(&mut p.a);
}
