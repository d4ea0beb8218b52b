//! CDP switched on and off at run time on a mirrored volume, at each site on its own
//! (`cdp_enable`, `cdp_disable`; the layer goes under the mirror): two daemons mirroring one
//! file-backed volume over two reactors each, a verified write load at both sites while a
//! site switches its history on; every point that site's history serves is exactly the
//! volume's content then, the other site is not changed, and the mirror stays up throughout.

use crate::cdp_live::{bookmark, enable_under_load};
use crate::harness::{PATIENCE, Server, free_port, pattern};
use crate::rawnbd::Client;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, CdpError, Load};

const SIZE: usize = 8 << 20;

fn at(dir: &Path, p: Point) -> Result<Vec<u8>, CdpError> {
    let h = store::load(dir, Load::ReadOnly)?;
    pit::read_at(&h, p, 0, SIZE as u64)
}

fn stack(s: &Server) -> String {
    s.rpc("volume_list")[0]["stack"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn both_up(a: &Server, b: &Server) -> bool {
    a.rpc("mirror_status")[0]["state"] == "up" && b.rpc("mirror_status")[0]["state"] == "up"
}

/// Sequential writes at alternating sites, in the model.
fn writes(sites: [SocketAddr; 2], model: &mut [u8], seed: u64, n: u64) {
    for i in 0..n {
        let mut c = Client::connect(sites[(i % 2) as usize], "v", false);
        let off = (i * 131_072 + (seed % 16) * 4096) % SIZE as u64;
        let data = pattern(seed + i, 8192);
        assert_eq!(c.write(off, &data), 0, "write {i}");
        model[off as usize..off as usize + 8192].copy_from_slice(&data);
        c.disconnect();
    }
}

/// Site a switches its history on under load (a new history) and off, then on again
/// (resumed after a gap); site b switches its own on later. Each served point is the volume's
/// content then (checked against the model of every acknowledged write, which both replicas
/// also equal); the other site's stack is not touched; the mirror stays up.
#[test]
fn under_the_mirror_each_site_switches_its_own_history_on_and_off_at_run_time() {
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("link.key");
    std::fs::write(&key, b"cdp-live-mirror-test-key-0123456").unwrap();
    let (pa, pb) = (free_port(), free_port());
    let jdir = |site: &str| root.path().join(format!("{site}.cdp"));
    let img = |site: &str| root.path().join(format!("{site}.img"));
    for site in ["a", "b"] {
        std::fs::File::create(img(site))
            .unwrap()
            .set_len(SIZE as u64)
            .unwrap();
    }
    let body = |me: &str, peer: &str, listen: u16, peer_port: u16| {
        format!(
            "[reactor]\ncores=[0,1]\npin=false\n\
             [mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:{listen}']\n\
             peer='127.0.0.1:{peer_port}'\nwitness_key_file='{}'\n\
             [[volume]]\nname='v'\nbackend='uring'\nsize={SIZE}\nblock_size=4096\npath='{}'\n\
             mirror=true\n",
            key.display(),
            img(me).display()
        )
    };
    let mk = |me: &str, peer: &str, l: u16, p: u16| {
        let d = root.path().join(me);
        std::fs::create_dir_all(&d).unwrap();
        Server::start(&d, &body(me, peer, l, p))
    };
    let mut sa = mk("a", "b", pa, pb);
    let mut sb = mk("b", "a", pb, pa);
    let t = Instant::now();
    while !both_up(&sa, &sb) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the link never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sites = [sa.addr, sb.addr];
    let mut model = vec![0u8; SIZE];
    writes(sites, &mut model, 100, 16);
    assert_eq!(stack(&sa), "mirror>uring");
    // 1. Site a on, under load at both sites: a new history.
    let da = jdir("a").display().to_string();
    let r = enable_under_load(
        &sa,
        &sites,
        SIZE,
        serde_json::json!({"volume": "v", "dir": da, "segment_size": "4MiB"}),
        &mut model,
        1000,
    );
    assert_eq!(r["new_history"], true, "{r}");
    assert_eq!(r["catching_up"], false, "{r}");
    assert_eq!(r["journaled_again_bytes"], SIZE as u64, "{r}");
    let gap = r["gap_seq"].as_u64().unwrap();
    assert_eq!(
        stack(&sa),
        "mirror>cdp>uring",
        "the layer is under the mirror"
    );
    assert_eq!(stack(&sb), "mirror>uring", "the other site is not changed");
    assert!(sb.rpc("cdp_status").as_array().unwrap().is_empty());
    assert_eq!(sa.rpc("cdp_status")[0]["journal"], "running");
    assert!(both_up(&sa, &sb), "the mirror stayed up");
    for s in sites {
        let mut c = Client::connect(s, "v", false);
        assert!(
            c.read(0, SIZE as u32).unwrap() == model,
            "the replica at {s}"
        );
        c.disconnect();
    }
    let t1 = bookmark(&sa, "on");
    assert!(
        at(&jdir("a"), Point::Time(t1)).unwrap() == model,
        "the point after the catch-up is the volume"
    );
    let r = at(&jdir("a"), Point::Seq(gap - 1));
    assert!(
        matches!(r, Err(CdpError::InGap { .. })),
        "{:?}",
        r.map(|_| "served")
    );
    // 2. Writes at both sites (the follower's through the leader): site a journals them all.
    writes(sites, &mut model, 2000, 12);
    let t2 = bookmark(&sa, "mid");
    let at_t2 = model.clone();
    assert!(
        at(&jdir("a"), Point::Time(t2)).unwrap() == at_t2,
        "the point after writes at both sites"
    );
    // 3. Site a off: its history ends; later writes are in no point of it.
    let r = sa.rpc_with("cdp_disable", serde_json::json!({"volume": "v"}));
    assert!(r["error"].is_null(), "{r}");
    let end = r["result"]["window_end_ns"].as_u64().unwrap();
    assert_eq!(stack(&sa), "mirror>uring");
    assert_eq!(sa.rpc("cdp_status")[0]["journal"], "off");
    writes(sites, &mut model, 3000, 6);
    assert!(
        at(&jdir("a"), Point::Time(end)).unwrap() == at_t2,
        "the last point"
    );
    assert!(matches!(
        at(&jdir("a"), Point::Time(end + 1)),
        Err(CdpError::Outside { .. })
    ));
    // 4. Site a on again, under load: resumed after a gap for the time it was off.
    let r = enable_under_load(
        &sa,
        &sites,
        SIZE,
        serde_json::json!({"volume": "v", "dir": da}),
        &mut model,
        4000,
    );
    assert_eq!(r["new_history"], false, "{r}");
    let x = r["whole_until_seq"].as_u64().unwrap();
    let gap2 = r["gap_seq"].as_u64().unwrap();
    assert!(x > 0 && gap2 > x + 1, "{r}");
    assert!(
        at(&jdir("a"), Point::Time(t2)).unwrap() == at_t2,
        "a point before the gap"
    );
    let r = at(&jdir("a"), Point::Seq(x + 1));
    assert!(
        matches!(r, Err(CdpError::InGap { .. })),
        "{:?}",
        r.map(|_| "served")
    );
    let t3 = bookmark(&sa, "again");
    assert!(
        at(&jdir("a"), Point::Time(t3)).unwrap() == model,
        "the point after the gap"
    );
    // 5. Site b on, on its own (a new history there); site a keeps its own.
    let db = jdir("b").display().to_string();
    let r = enable_under_load(
        &sb,
        &sites,
        SIZE,
        serde_json::json!({"volume": "v", "dir": db, "segment_size": "4MiB"}),
        &mut model,
        5000,
    );
    assert_eq!(r["new_history"], true, "{r}");
    assert_eq!(stack(&sb), "mirror>cdp>uring");
    writes(sites, &mut model, 6000, 8);
    let tb = bookmark(&sb, "b-on");
    let ta = bookmark(&sa, "a-later");
    assert!(
        at(&jdir("b"), Point::Time(tb)).unwrap() == model,
        "site b's point"
    );
    assert!(
        at(&jdir("a"), Point::Time(ta)).unwrap() == model,
        "site a's point"
    );
    assert!(
        at(&jdir("a"), Point::Time(t3)).is_ok(),
        "site a's history stayed whole"
    );
    assert!(both_up(&sa, &sb), "the mirror stayed up");
    // 6. A clean stop: each site's newest point is its replica, which is the model.
    assert!(sa.stop() && sb.stop(), "clean stop failed");
    for site in ["a", "b"] {
        let h = store::load(&jdir(site), Load::ReadOnly).unwrap();
        let replica = std::fs::read(img(site)).unwrap();
        assert!(replica == model, "site {site}'s replica");
        assert!(
            at(&jdir(site), Point::Seq(h.last_seq)).unwrap() == replica,
            "site {site}: the newest point is not the replica"
        );
    }
}

/// CDP switched on at run time at both ends of a resync: at the survivor (the resync's
/// source) while its peer is down, and at the returning site (a new replica, the resync's
/// target) while the resync copies into it, slowly (1 MiB/s) and with host writes at the
/// survivor meanwhile. The resync's writes pass through the target's new layer like any
/// update, and its history is not whole until the resync ended (the mirror vouches for the
/// replica only then): once both sites are up, each site's newest point is the volume (the
/// model of every acknowledged write), and so are both replicas.
#[test]
fn a_history_switched_on_during_a_resync_holds_what_the_resync_wrote() {
    use crate::failover::{KEY, WitnessProc, site_with};
    use crate::harness::wait_mirror_state;
    const VOL: usize = 16 << 20;
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (pa, pb) = (free_port(), free_port());
    let rate = "resync_rate='1MiB'";
    let a = site_with(root.path(), "a", "b", pa, pb, w.addr, rate);
    let b = site_with(root.path(), "b", "a", pb, pa, w.addr, rate);
    wait_mirror_state(&a, "up", Duration::from_secs(10));
    wait_mirror_state(&b, "up", Duration::from_secs(10));
    let mut model = vec![0u8; VOL];
    let mut put = |c: &mut Client, off: u64, seed: u64, len: usize| {
        let data = pattern(seed, len);
        assert_eq!(c.write(off, &data), 0, "write at {off}");
        model[off as usize..off as usize + len].copy_from_slice(&data);
    };
    let mut c = Client::connect(a.addr, "vol0", false);
    for i in 0..48u64 {
        put(&mut c, i * 327_680, i + 1, 65536);
    }
    drop(c);
    let mut b = b;
    b.kill();
    wait_mirror_state(&a, "survivor", PATIENCE);
    let jdir = |s: &str| root.path().join(format!("{s}.cdp"));
    let on = |s: &Server, site: &str, wait: f64| {
        let r = s.rpc_with(
            "cdp_enable",
            serde_json::json!({"volume": "vol0", "dir": jdir(site).display().to_string(), "segment_size": "4MiB", "wait": wait}),
        );
        assert!(r["error"].is_null(), "site {site}: {r}");
        r["result"].clone()
    };
    // The survivor (the resync's source to be) switches its history on.
    let r = on(&a, "a", 120.0);
    assert_eq!(r["catching_up"], false, "{r}");
    let mut c = Client::connect(a.addr, "vol0", false);
    for i in 0..8u64 {
        put(&mut c, i * 1_048_576 + 8192, 100 + i, 16384);
    }
    // The site returns without state: a new replica, resynced with every region written.
    let b = b.respawn();
    wait_mirror_state(&b, "resyncing", Duration::from_secs(10));
    // The target: its catch-up ends, but its history is not whole while the resync runs (the
    // mirror does not vouch for the replica): the answer says it is still catching up.
    let r = on(&b, "b", 1.0);
    assert_eq!(r["catching_up"], true, "{r}");
    assert!(
        r["note"]
            .as_str()
            .unwrap()
            .contains("whole once the mirror vouches"),
        "the catch-up ended within the wait, the resync not: {r}"
    );
    let t = std::time::Instant::now();
    while b.rpc("cdp_status")[0]["catch_up_bytes"]
        .as_u64()
        .unwrap_or(0)
        < VOL as u64
    {
        assert!(t.elapsed() < PATIENCE, "the catch-up ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        b.rpc("mirror_status")[0]["state"],
        "resyncing",
        "switched on while the resync runs (slow it down if this fails)"
    );
    let st = b.rpc("cdp_status")[0].clone();
    assert_eq!(st["catching_up"], true, "not whole while resyncing: {st}");

    for i in 0..8u64 {
        put(&mut c, i * 1_048_576 + 40960, 200 + i, 4096);
    }
    drop(c);
    wait_mirror_state(&a, "up", Duration::from_secs(60));
    wait_mirror_state(&b, "up", Duration::from_secs(10));
    let t = std::time::Instant::now();
    while b.rpc("cdp_status")[0]["catching_up"] != false {
        assert!(t.elapsed() < PATIENCE, "whole once resynced");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = Client::connect(b.addr, "vol0", false);
    put(&mut c, 12288, 300, 4096);
    drop(c);
    let (mut a, mut b) = (a, b);
    assert!(a.stop() && b.stop(), "clean stop failed");
    for site in ["a", "b"] {
        let replica = std::fs::read(root.path().join(format!("{site}.img"))).unwrap();
        assert!(replica[..VOL] == model[..], "site {site}'s replica");
        let h = store::load(&jdir(site), Load::ReadOnly).unwrap();
        // The newest point the history vouches for: the first site to stop leaves the other
        // without its peer, hence without its lease (its history whole up to then).
        let newest = h.open_gap.map_or(h.last_seq, |g| g.0);
        let newest = pit::read_at(&h, Point::Seq(newest), 0, VOL as u64).unwrap();
        assert!(
            newest == model,
            "site {site}: the newest point is not the volume"
        );
    }
}
