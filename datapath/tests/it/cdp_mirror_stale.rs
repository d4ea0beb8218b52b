//! A site's history under the mirror never serves a moment at which its replica was not the
//! volume: while the site is down, fenced or being resynced its peer acknowledges writes alone,
//! so a point of that stretch from this site's journal would be older than an acknowledged
//! write (or a mixture, during the resync). Those points are refused naming both ends; points
//! before the site lost its peer and from the resync's end on are exact.

use crate::failover::{KEY, WitnessProc};
use crate::harness::{PATIENCE, Server, free_port, pattern, wait_mirror_state, wait_until};
use crate::rawnbd::Client;
use std::path::Path;
use std::time::Duration;
use twinblk::layer::cdp::clock;
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, CdpError, Load};

pub(crate) const VOL: usize = 16 << 20;

/// A site with its volume mirrored and journaled (CDP under the mirror), its state kept.
pub(crate) fn site(
    root: &Path,
    me: &str,
    peer: &str,
    listen: u16,
    peer_port: u16,
    w: std::net::SocketAddr,
) -> Server {
    let d = root.join(me);
    std::fs::create_dir_all(d.join("state")).unwrap();
    let key = root.join("witness.key");
    std::fs::write(&key, KEY).unwrap();
    Server::start(
        &d,
        &format!(
            "[reactor]\ncores=[0]\npin=false\n\
             [mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:{listen}']\n\
             peer='127.0.0.1:{peer_port}'\npeer_timeout_ms=10000\npeer_dead_ms=400\n\
             witness='{w}'\nwitness_key_file='{}'\nwitness_timeout_ms=1500\n\
             state_dir='{}'\nresync_rate='1MiB'\n\
             [[volume]]\nname='vol0'\nbackend='uring'\nsize={VOL}\npath='{}'\nmirror=true\nleader='a'\n\
             [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
            key.display(),
            d.join("state").display(),
            root.join(format!("{me}.img")).display(),
            root.join(format!("{me}.cdp")).display(),
        ),
    )
}

/// Sites a (leader) and b of [`site`], both up.
pub(crate) fn up_pair(root: &Path, w: std::net::SocketAddr) -> (Server, Server) {
    let (pa, pb) = (free_port(), free_port());
    let a = site(root, "a", "b", pa, pb, w);
    let b = site(root, "b", "a", pb, pa, w);
    wait_mirror_state(&a, "up", Duration::from_secs(10));
    wait_mirror_state(&b, "up", Duration::from_secs(10));
    (a, b)
}

/// Wait up to `within` until `s`'s `cdp_status` says `vouched` is `want` (`what`: the failure).
pub(crate) fn wait_vouched(s: &Server, want: bool, within: Duration, what: &str) {
    let t = std::time::Instant::now();
    while s.rpc("cdp_status")[0]["vouched"] != want {
        assert!(t.elapsed() < within, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn at(dir: &Path, p: Point) -> Result<Vec<u8>, CdpError> {
    let h = store::load(dir, Load::ReadOnly)?;
    pit::read_at(&h, p, 0, VOL as u64)
}

/// Write `n` 64 KiB patterns at `s` (into the model too), one region of 64 KiB apart each.
fn writes(s: &Server, model: &mut [u8], seed: u64, n: u64) {
    let mut c = Client::connect(s.addr, "vol0", false);
    for i in 0..n {
        let off = (seed % 7 + i * 3) * 65536;
        let data = pattern(seed + i, 65536);
        assert_eq!(c.write(off, &data), 0, "write {i}");
        model[off as usize..off as usize + 65536].copy_from_slice(&data);
    }
    c.disconnect();
}

/// The follower is killed; the leader goes on alone (survivor) and is written; the follower
/// returns and is resynced, slowly, while the survivor is written again. The returned site's
/// history refuses every moment from its loss to the resync's end (the volume then had writes
/// its replica did not), serves the moments before exactly, and after the resync its newest
/// point is the volume. The survivor's history serves every moment.
#[test]
fn a_returning_sites_history_refuses_the_moments_its_peer_wrote_alone() {
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (a, mut b) = up_pair(root.path(), w.addr);
    let mut model = vec![0u8; VOL];
    writes(&a, &mut model, 1, 8);
    let before = model.clone();
    std::thread::sleep(Duration::from_millis(30));
    let t_before = clock::now();
    let jb = root.path().join("b.cdp");
    let ja = root.path().join("a.cdp");
    // Both windows reach t_before (the idle journals' time marks) before the loss.
    crate::cdp::wait_window(&[&jb, &ja], t_before, "no time mark");
    b.kill();
    wait_mirror_state(&a, "survivor", PATIENCE);
    // Written by the survivor alone: 32 regions (2 MiB to resync at 1 MiB/s).
    writes(&a, &mut model, 100, 32);
    let t_alone = clock::now();
    std::thread::sleep(Duration::from_millis(200));
    let b = b.respawn();
    wait_mirror_state(&b, "resyncing", Duration::from_secs(10));
    // Its history's start recovered (waited for instead of a fixed 300 ms, which a loaded
    // machine may overrun and which only shortens what is left of the 2 s resync).
    let status = || b.rpc("cdp_status")[0].clone();
    wait_until(
        PATIENCE,
        || status()["whole_until_seq"].as_u64().is_some(),
        || format!("{}", status()),
    );
    let st = status();
    assert_eq!(st["vouched"], false, "while resynced: {st}");
    assert!(st["whole_until_seq"].as_u64().is_some(), "{st}");
    let t_resync = clock::now();
    writes(&a, &mut model, 200, 4);
    wait_mirror_state(&a, "up", Duration::from_secs(30));
    wait_mirror_state(&b, "up", Duration::from_secs(10));
    wait_vouched(&b, true, PATIENCE, "vouched for once resynced");
    assert_eq!(a.rpc("cdp_status")[0]["vouched"], true);
    let t_after = clock::now();
    // The newest moments reach past t_after once the idle journals mark time.
    crate::cdp::wait_window(&[&jb, &ja], t_after, "no time mark after the resync");
    // The survivor's history: every moment is the volume's.
    assert!(
        at(&ja, Point::Time(t_before)).unwrap() == before,
        "a before"
    );
    assert!(at(&ja, Point::Time(t_after)).unwrap() == model, "a after");
    // The returned site's: before its loss exact, during refused, after exact.
    assert!(
        at(&jb, Point::Time(t_before)).unwrap() == before,
        "b before its loss"
    );
    for (what, t) in [("alone", t_alone), ("resyncing", t_resync)] {
        match at(&jb, Point::Time(t)) {
            Err(e @ (CdpError::InGap { .. } | CdpError::NotWhole { .. })) => {
                eprintln!("b at {what}: refused: {e}")
            }
            Err(e) => panic!("b at {what}: refused for another reason: {e}"),
            Ok(got) => panic!(
                "b at {what} ({t}): served a moment its peer wrote alone (the volume then: {})",
                if got == model {
                    "same, by chance"
                } else {
                    "different"
                }
            ),
        }
    }
    assert!(
        at(&jb, Point::Time(t_after)).unwrap() == model,
        "b after the resync"
    );
    // Site b loses its peer with no witness to grant it the volume: without its lease, its
    // history is whole only up to then; stopped so, a rollback in place there is refused
    // saying why.
    drop(w);
    let (mut a, mut b) = (a, b);
    assert!(a.stop(), "clean stop failed");
    wait_vouched(&b, false, Duration::from_secs(10), "b's lease never lapsed");
    assert!(b.stop(), "clean stop failed");
    let h = store::load(&jb, Load::ReadOnly).unwrap();
    let x = h.open_gap.map(|g| g.0).expect("b's history ends unvouched");
    assert!(
        at(&jb, Point::Seq(x)).unwrap() == model,
        "b's last vouched point"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twinblk"))
        .args(["cdp", "rollback", "--config"])
        .arg(&b.config)
        .args(["--volume", "vol0", "--time"])
        .arg(t_before.to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the mirror did not vouch"),
        "{err}"
    );
}

/// The follower stays up but loses its link (separate network namespaces, the A-B link set
/// down): the leader is granted the volume and written alone while the fenced follower's
/// journal sits idle. The follower's history must not stretch over those moments (its idle
/// time marks would say nothing changed): refused while fenced, and after the link returns and
/// the resync ends, refused as a gap; the moments before and after are exact.
#[test]
fn a_fenced_sites_idle_history_does_not_cover_what_its_peer_wrote_alone() {
    use crate::netns::{A, B, Hosts};
    let mut h = Hosts::new();
    h.start_witness();
    let cdp = |me: &str| {
        format!(
            "[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
            h.root().join(format!("{me}.cdp")).display()
        )
    };
    let vol = format!("backend='uring'\nsize={VOL}");
    let a = h.site_tail(A, "", &vol, &cdp("a"));
    let b = h.site_tail(B, "", &vol, &cdp("b"));
    wait_mirror_state(&a, "up", Duration::from_secs(10));
    wait_mirror_state(&b, "up", Duration::from_secs(10));
    let (ja, jb) = (h.root().join("a.cdp"), h.root().join("b.cdp"));
    let mut model = vec![0u8; VOL];
    writes(&a, &mut model, 1, 8);
    let before = model.clone();
    let t_before = clock::now();
    crate::cdp::wait_window(&[&jb], t_before, "no time mark");
    // (a, the leader, survives the cut only once the witness recorded it as the preferred
    // site: until then the first request wins.)
    crate::failover::wait_preferred_recorded(h.root());
    h.link_ab(false);
    wait_mirror_state(&a, "survivor", PATIENCE);
    wait_mirror_state(&b, "fenced", PATIENCE);
    writes(&a, &mut model, 100, 8);
    let t_alone = clock::now();
    // Long enough for idle time marks at b (one a second).
    std::thread::sleep(Duration::from_millis(2500));
    let st = b.rpc("cdp_status")[0].clone();
    assert_eq!(st["vouched"], false, "fenced: {st}");
    match at(&jb, Point::Time(t_alone)) {
        Err(e @ (CdpError::NotWhole { .. } | CdpError::Outside { .. })) => {
            eprintln!("b while fenced, at a moment a wrote alone: refused: {e}")
        }
        r => panic!(
            "b while fenced: {:?}",
            r.map(|_| "served its stale replica")
        ),
    }
    assert!(
        at(&jb, Point::Time(t_before)).unwrap() == before,
        "b before the cut"
    );
    h.link_ab(true);
    wait_mirror_state(&a, "up", Duration::from_secs(30));
    wait_mirror_state(&b, "up", Duration::from_secs(10));
    wait_vouched(&b, true, PATIENCE, "vouched for once resynced");
    let t_after = clock::now();
    crate::cdp::wait_window(&[&jb, &ja], t_after, "no time mark after the resync");
    match at(&jb, Point::Time(t_alone)) {
        Err(e @ CdpError::InGap { .. }) => eprintln!("b after the resync, at t_alone: {e}"),
        r => panic!("b after the resync: {:?}", r.map(|_| "served")),
    }
    assert!(
        at(&jb, Point::Time(t_after)).unwrap() == model,
        "b after the resync"
    );
    assert!(at(&ja, Point::Time(t_alone)).unwrap() == model, "a alone");
    assert!(
        at(&ja, Point::Time(t_before)).unwrap() == before,
        "a before"
    );
    let (mut a, mut b) = (a, b);
    assert!(a.stop() && b.stop(), "clean stop failed");
}

/// `cdp_disable` at a fenced, idle follower: its history's last record is a lone time mark,
/// which is the map's last vouched point X. The disable's last mark must not rewrite that
/// record with a later time (an idle journal rewrites its last lone mark in place): after the
/// history resumes (`cdp_enable`, once the follower is resynced) its gap record would start
/// at that later time, and the moments the leader wrote alone would be served stale.
#[test]
fn a_disable_at_a_fenced_site_does_not_move_its_last_vouched_moment() {
    use crate::netns::{A, B, Hosts};
    let mut h = Hosts::new();
    h.start_witness();
    let vol = format!("backend='uring'\nsize={VOL}");
    let jb = h.root().join("b.cdp");
    let tail = format!(
        "[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        jb.display()
    );
    let a = h.site_vol(A, "", &vol);
    let b = h.site_tail(B, "", &vol, &tail);
    wait_mirror_state(&a, "up", Duration::from_secs(10));
    wait_mirror_state(&b, "up", Duration::from_secs(10));
    let mut model = vec![0u8; VOL];
    writes(&a, &mut model, 1, 4);
    // Idle: the follower's journal ends with a lone time mark (rewritten in place each second),
    // waited for (a loaded machine writes it late).
    crate::cdp::wait_window(&[&jb], clock::now(), "no time mark after the writes");
    // (a, the leader, survives the cut only once the witness recorded it as the preferred
    // site: until then the first request wins.)
    crate::failover::wait_preferred_recorded(h.root());
    h.link_ab(false);
    wait_mirror_state(&a, "survivor", PATIENCE);
    wait_mirror_state(&b, "fenced", PATIENCE);
    writes(&a, &mut model, 100, 4);
    let t_alone = clock::now();
    std::thread::sleep(Duration::from_millis(1200));
    let r = b.rpc_with("cdp_disable", serde_json::json!({"volume": "vol0"}));
    assert!(r["error"].is_null(), "{r}");
    h.link_ab(true);
    wait_mirror_state(&a, "up", Duration::from_secs(30));
    wait_mirror_state(&b, "up", Duration::from_secs(10));
    let r = b.rpc_with(
        "cdp_enable",
        serde_json::json!({"volume": "vol0", "dir": jb.display().to_string()}),
    );
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(r["result"]["catching_up"], false, "{r}");
    match at(&jb, Point::Time(t_alone)) {
        Err(e @ (CdpError::InGap { .. } | CdpError::NotWhole { .. })) => {
            eprintln!("b at a moment a wrote alone: refused: {e}")
        }
        r => panic!(
            "b's resumed history at a moment a wrote alone: {:?}",
            r.map(|_| "served its stale replica")
        ),
    }
    let t_now = clock::now();
    crate::cdp::wait_window(&[&jb], t_now, "no time mark");
    assert!(at(&jb, Point::Time(t_now)).unwrap() == model, "b now");
    let (mut a, mut b) = (a, b);
    assert!(a.stop() && b.stop(), "clean stop failed");
}

/// Both sites are killed together (no grant is taken); site a restarts alone and waits, and an
/// operator's takeover (`mirror_takeover`, accepting that its peer may have acknowledged writes
/// it lacks) makes it survivor. Its history must not vouch for the moments from its loss to the
/// takeover (its replica may then not have been the volume): refused, while the moments
/// before the loss and after the takeover are exact.
#[test]
fn a_takeover_refuses_the_moments_before_it_at_the_site_taken_over() {
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (mut a, mut b) = up_pair(root.path(), w.addr);
    let mut model = vec![0u8; VOL];
    writes(&a, &mut model, 1, 8);
    let before = model.clone();
    std::thread::sleep(Duration::from_millis(30));
    let t_before = clock::now();
    let ja = root.path().join("a.cdp");
    crate::cdp::wait_window(&[&ja], t_before, "no time mark");
    // Together: neither site lives long enough after the other to be granted (b, asking
    // once a is gone, waits the tie grace for a, once the witness recorded a as the
    // preferred site: until then b's first request would be granted at once).
    crate::failover::wait_preferred_recorded(root.path());
    a.kill();
    b.kill();
    drop(b);
    let a = a.respawn();
    wait_mirror_state(&a, "waiting", Duration::from_secs(10));
    let mut c = Client::connect(a.addr, "vol0", false);
    assert_eq!(
        c.write(0, &pattern(1, 4096)),
        twinblk::frontend::nbd::proto::err::EIO
    );
    c.disconnect();
    std::thread::sleep(Duration::from_millis(200));
    let t_waiting = clock::now();
    std::thread::sleep(Duration::from_millis(200));
    let r = a.rpc_with("mirror_takeover", serde_json::json!({"volume": "vol0"}));
    assert_eq!(r["result"]["asked"], true, "{r}");
    wait_mirror_state(&a, "survivor", PATIENCE);
    writes(&a, &mut model, 100, 4);
    wait_vouched(&a, true, PATIENCE, "vouched for as survivor");
    let t_after = clock::now();
    crate::cdp::wait_window(&[&ja], t_after, "no time mark after the takeover");
    assert!(
        at(&ja, Point::Time(t_before)).unwrap() == before,
        "before the loss"
    );
    match at(&ja, Point::Time(t_waiting)) {
        Err(e @ (CdpError::InGap { .. } | CdpError::NotWhole { .. })) => {
            eprintln!("a while waiting: refused: {e}")
        }
        Err(e) => panic!("a while waiting: refused for another reason: {e}"),
        Ok(_) => panic!("a served a moment before the takeover (its peer may have written alone)"),
    }
    assert!(
        at(&ja, Point::Time(t_after)).unwrap() == model,
        "after the takeover"
    );
}

/// While the mirror does not vouch for a site's replica (it is being resynced), its history is
/// not whole: a bookmark there would name a point inside the gap (never restorable) and hold
/// retention for ever, so `cdp_bookmark` is refused, saying why; once vouched for, accepted.
#[test]
fn a_bookmark_is_refused_while_the_replica_is_not_vouched_for() {
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (a, mut b) = up_pair(root.path(), w.addr);
    let mut model = vec![0u8; VOL];
    b.kill();
    wait_mirror_state(&a, "survivor", PATIENCE);
    // 2 MiB to resync at 1 MiB/s.
    writes(&a, &mut model, 100, 32);
    let b = b.respawn();
    wait_mirror_state(&b, "resyncing", Duration::from_secs(10));
    wait_vouched(&b, false, PATIENCE, "vouched for while resynced");
    let p = serde_json::json!({"volume": "vol0", "name": "mid-resync"});
    let r = b.rpc_with("cdp_bookmark", p.clone());
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not vouched for")),
        "a bookmark while resynced: {r}"
    );
    let listed = b.rpc_with("cdp_bookmarks", serde_json::json!({"volume": "vol0"}));
    assert_eq!(
        listed["result"][0]["bookmarks"],
        serde_json::json!({}),
        "{listed}"
    );
    wait_mirror_state(&b, "up", Duration::from_secs(30));
    wait_vouched(&b, true, PATIENCE, "vouched for once resynced");
    let r = b.rpc_with("cdp_bookmark", p);
    assert!(r["result"].is_object(), "once vouched for: {r}");
}
