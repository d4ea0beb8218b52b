//! Feeds arbitrary text to the iSCSI login/text key parser and the target's negotiation in
//! `twinblk::frontend::iscsi::login` and checks:
//!
//! - nothing panics, whatever the bytes, in either login stage;
//! - every key offered gets exactly one answer, and the answers parse back as keys;
//! - negotiated values never exceed what the target supports.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::frontend::iscsi::login::{
    Negotiation, TARGET_FIRST_BURST, TARGET_MAX_BURST, TARGET_MAX_CONNECTIONS, parse_keys,
};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(keys) = parse_keys(rest) else {
        return;
    };
    for (k, v) in &keys {
        assert!(!k.is_empty() && k.len() <= 63 && v.len() <= 8192);
    }
    // A configured maximum of 1..=4 connections per session (from the selector byte).
    let max_conns = u32::from(sel >> 1) % TARGET_MAX_CONNECTIONS + 1;
    let mut n = Negotiation::with_max_connections(max_conns);
    let mut out = Vec::new();
    let security = sel & 1 != 0;
    if n.offer(&keys, security, &mut out).is_ok() {
        let answers = parse_keys(&out).expect("answers parse");
        for (k, _) in &keys {
            assert!(
                answers.iter().filter(|(a, _)| a == k).count() <= 1,
                "key {k} answered twice"
            );
        }
        n.finish(&mut out);
        assert!(parse_keys(&out).is_ok());
    }
    let p = &n.params;
    assert!(p.max_burst <= TARGET_MAX_BURST.max(262_144));
    assert!(p.first_burst <= TARGET_FIRST_BURST.max(65_536));
    assert!(p.first_burst <= p.max_burst.max(65_536));
    assert!((1..=max_conns).contains(&p.max_connections));
});
