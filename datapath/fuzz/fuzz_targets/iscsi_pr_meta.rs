//! Feeds arbitrary bytes, as the mirror carries them from the other site, to the SCSI
//! persistent reservation replicator (`twinblk::frontend::iscsi::prs::PrReplicator`) and the
//! metadata router in front of it, and checks:
//!
//! - nothing panics, whatever the command or state;
//! - a command that decodes re-encodes to the same bytes, and a state that installs is
//!   reported back (full state) as a state that decodes to the same content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use twinblk::frontend::iscsi::prs::{self, PrCmd, PrReplicator, PrState};
use twinblk::layer::mirror::engine::{Install, MetaHandler, MetaRouter};

fuzz_target!(|data: &[u8]| {
    let pr = Arc::new(PrState::default());
    let r = Arc::new(PrReplicator::new(vec![(
        "iqn.t".into(),
        0,
        0,
        Arc::clone(&pr),
    )]));
    let mut router = MetaRouter::new();
    router.add(prs::META_KIND, r.clone());
    if let Some(c) = PrCmd::decode(data) {
        assert_eq!(c.encode(), data);
    }
    let _ = router.execute(0, data);
    let _ = r.execute(0, data);
    if r.install(0, data) == Install::Done {
        let full = r.full_state(0);
        assert_eq!(full.len(), 1);
        assert_eq!(prs::decode_state(&full[0]), prs::decode_state(data));
    }
    let _ = router.install(0, data);
});
