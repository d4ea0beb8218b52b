//! A site killed while its request for a grant is unanswered: the link lost, the witness
//! grants the volume to the site (its preferred one) but the answer is lost on the way back,
//! and the site dies before its request's deadline, so before it saved the fence for want of
//! an answer: its state file still says "in sync". The witness holds the group for it, the
//! peer is denied while it is held. Restarted, the site must give that grant back (it never
//! served on it), so that the peer serves, every acknowledged write in place; before, it
//! waited for the link as any site restarted in sync, and neither site served until the link
//! returned (seen as a flaky `failover::the_peer_of_a_site_whose_host_restarted_after_a_lost_answer_serves`
//! on a loaded machine, where the kill came before the fence was saved).

use crate::failover::{KEY, LossyRelay, WitnessProc, site_with, witness_preferred};
use crate::harness::{PATIENCE, free_port, mirror_state, pattern, wait_mirror_state, wait_until};
use crate::mirror::Relay;
use crate::rawnbd::Client;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The site the witness (started in `dir`) holds group `name` for, read from its state file
/// (written before a grant is answered).
fn witness_holder(dir: &Path, name: &str) -> Option<twinblk_witness::SiteId> {
    let group = twinblk_witness::GroupId::from_name(name);
    let table = twinblk_witness::state::Table::load(&dir.join("witness.state"), false).ok()?;
    table.groups.get(&group).and_then(|r| r.holder)
}

fn killed_while_asking(host_restarts: bool) {
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let lossy = LossyRelay::start(w.addr);
    let (pa, pb) = (free_port(), free_port());
    let (la, lb) = (
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let (to_b, to_a) = (
        la.local_addr().unwrap().port(),
        lb.local_addr().unwrap().port(),
    );
    let (mut ra, mut rb) = (
        Relay::start(&la, format!("127.0.0.1:{pb}").parse().unwrap()),
        Relay::start(&lb, format!("127.0.0.1:{pa}").parse().unwrap()),
    );
    let state = |me: &str| {
        let d = root.path().join(format!("state-{me}"));
        std::fs::create_dir_all(&d).unwrap();
        format!("state_dir='{}'", d.display())
    };
    let mut a = site_with(root.path(), "a", "b", pa, to_b, lossy.addr, &state("a"));
    let b = site_with(root.path(), "b", "a", pb, to_a, w.addr, &state("b"));
    wait_mirror_state(&a, "up", PATIENCE);
    wait_mirror_state(&b, "up", PATIENCE);
    // a is the preferred site: the witness grants it first.
    wait_until(
        PATIENCE,
        || witness_preferred(root.path(), "vol0").is_some(),
        || "the witness never recorded a as the preferred site".to_string(),
    );
    let mut c = Client::connect(a.addr, "vol0", false);
    let data = pattern(23, 4096);
    assert_eq!(c.write(0, &data), 0);
    assert_eq!(c.flush(), 0);
    drop(c);
    // The witness's answers to a are lost from now; the link goes.
    lossy.drop_replies.store(true, Ordering::SeqCst);
    drop((la, lb));
    ra.cut();
    rb.cut();
    drop((ra, rb));
    // The witness grants a (its state file written before the answer, which is lost); a is
    // killed before its request's deadline (1.5 s), so before it fences.
    wait_until(
        PATIENCE,
        || witness_holder(root.path(), "vol0").is_some(),
        || "the witness never granted the volume".to_string(),
    );
    let st = mirror_state(&a);
    a.kill();
    assert_ne!(
        st, "fenced",
        "the premise: a is killed before its fence for want of an answer"
    );
    wait_mirror_state(&b, "fenced", PATIENCE);
    if host_restarts {
        let boot = root.path().join("boot_id-a");
        std::fs::write(&boot, "0b9e3c11-5a2f-4d7e-8c40-7e1a2b3c4d5e\n").unwrap();
        let text = std::fs::read_to_string(&a.config).unwrap();
        let text = text.replacen(
            "[mirror]\n",
            &format!("[mirror]\nboot_id_file='{}'\n", boot.display()),
            1,
        );
        std::fs::write(&a.config, text).unwrap();
    }
    lossy.drop_replies.store(false, Ordering::SeqCst);
    a.respawn_in_place();
    let t = Instant::now();
    wait_mirror_state(&b, "survivor", PATIENCE);
    eprintln!("b survivor {:?} after a's restart", t.elapsed());
    // a never serves alone: its grant given back, it waits for the link.
    for _ in 0..20 {
        let st = mirror_state(&a);
        assert!(
            st != "survivor" && st != "up",
            "a serves ({st}) while b is the survivor"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut c = Client::connect(b.addr, "vol0", false);
    assert_eq!(c.read(0, 4096).unwrap(), data, "an acknowledged write lost");
}

/// The process was killed, its host kept running.
#[test]
fn a_site_killed_while_its_grant_answer_is_lost_gives_the_grant_back() {
    killed_while_asking(false);
}

/// Its host restarted too (another boot id): its device may have lost writes.
#[test]
fn a_site_whose_host_restarted_while_its_grant_answer_is_lost_gives_the_grant_back() {
    killed_while_asking(true);
}
