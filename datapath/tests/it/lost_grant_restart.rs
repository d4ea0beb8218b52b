//! A site killed while its request for a grant is unanswered: the link lost, the witness
//! grants the volume to the site (its preferred one) but the answer is lost on the way back,
//! and the site dies before its request's deadline, so before it saved the fence for want of
//! an answer: its state file still says "in sync". The witness holds the group for it, the
//! peer is denied while it is held. Restarted, the site must give that grant back (it never
//! served on it), so that the peer serves, every acknowledged write in place; before, it
//! waited for the link as any site restarted in sync, and neither site served until the link
//! returned (seen as a flaky `failover::the_peer_of_a_site_whose_host_restarted_after_a_lost_answer_serves`
//! on a loaded machine, where the kill came before the fence was saved).

use crate::failover::RelayedPair;
use crate::harness::{PATIENCE, mirror_state, pattern, wait_mirror_state, wait_until};
use crate::rawnbd::Client;
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
    // (a is the preferred site: the witness grants it first.)
    let mut p = RelayedPair::start(false);
    let mut c = Client::connect(p.a.addr, "vol0", false);
    let data = pattern(23, 4096);
    assert_eq!(c.write(0, &data), 0);
    assert_eq!(c.flush(), 0);
    drop(c);
    // The witness's answers to a are lost from now; the link goes.
    p.lossy.drop_replies.store(true, Ordering::SeqCst);
    p.cut_link();
    // The witness grants a (its state file written before the answer, which is lost); a is
    // killed before its request's deadline (1.5 s), so before it fences.
    wait_until(
        PATIENCE,
        || witness_holder(p.root.path(), "vol0").is_some(),
        || "the witness never granted the volume".to_string(),
    );
    let st = mirror_state(&p.a);
    p.a.kill();
    assert_ne!(
        st, "fenced",
        "the premise: a is killed before its fence for want of an answer"
    );
    wait_mirror_state(&p.b, "fenced", PATIENCE);
    if host_restarts {
        p.restart_as_another_boot("0b9e3c11-5a2f-4d7e-8c40-7e1a2b3c4d5e");
    }
    p.lossy.drop_replies.store(false, Ordering::SeqCst);
    p.a.respawn_in_place();
    let t = Instant::now();
    wait_mirror_state(&p.b, "survivor", PATIENCE);
    eprintln!("b survivor {:?} after a's restart", t.elapsed());
    // a never serves alone: its grant given back, it waits for the link.
    for _ in 0..20 {
        let st = mirror_state(&p.a);
        assert!(
            st != "survivor" && st != "up",
            "a serves ({st}) while b is the survivor"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut c = Client::connect(p.b.addr, "vol0", false);
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
