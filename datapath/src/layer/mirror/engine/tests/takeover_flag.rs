//! An operator's takeover request (`MirrorStats::takeover`, set by `mirror_takeover`) at a
//! site that asks the witness for nothing in its state: dropped, never kept for later.

use super::*;

/// A survivor already holds the grant: a takeover request there was kept (`takeover_pending`)
/// for as long as it served alone, until the site mirrored again (then dropped in session, or
/// asked as a takeover had the link just failed). The control socket refuses it at a survivor
/// now, but one set in the moment the site became the survivor (the control thread read its
/// state just before) is dropped by the engine too.
#[test]
fn a_takeover_request_at_a_survivor_is_dropped_not_kept_pending() {
    use crate::layer::mirror::failover::GRANTED;
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, _sb) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    break_link(&mut a, &mut b);
    let now = Instant::now();
    a.engine.tick(&mut io, now);
    sa.epoch.store(1, SeqCst);
    sa.outcome.store(GRANTED, SeqCst);
    a.engine.tick(&mut io, now);
    assert_eq!(a.engine.mode(), Mode::Survivor);
    a.engine.stats().takeover.store(true, SeqCst);
    for _ in 0..3 {
        a.engine.tick(&mut io, Instant::now());
    }
    assert_eq!(a.engine.mode(), Mode::Survivor);
    assert!(
        !a.engine.stats().takeover.load(SeqCst),
        "a takeover request stays pending at a survivor"
    );
    assert!(
        !sa.takeover.load(SeqCst),
        "asked of the witness as a takeover"
    );
}
