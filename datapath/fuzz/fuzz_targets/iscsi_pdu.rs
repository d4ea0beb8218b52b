//! Feeds arbitrary bytes to the iSCSI PDU parser in `twinblk::frontend::iscsi::pdu` and checks
//! what the connection relies on:
//!
//! - nothing panics, whatever the bytes and the negotiated digests;
//! - a parsed PDU never claims more bytes than the input holds, its data lies inside the input,
//!   and `needs` agrees with what `parse` consumes;
//! - the data segment never exceeds the limit given (so a lying length cannot grow the buffer);
//! - every prefix of an input is undecided or decided the same way as a longer one (except a
//!   data digest error, which is only known once the whole PDU is there);
//! - a server-style loop over back-to-back PDUs makes progress and stays inside the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::frontend::iscsi::pdu::{Digests, Req, Violation, needs, parse};

const MAX_DATA: usize = 64 << 10;

fn check(b: &[u8], dg: Digests) {
    let full = parse(b, dg, MAX_DATA);
    if let Ok(Some((p, n))) = &full {
        assert!(*n <= b.len());
        assert_eq!(*n, needs(b, dg));
        assert!(p.data.len() <= MAX_DATA);
        let base = b.as_ptr() as usize;
        let d = p.data.as_ptr() as usize;
        assert!(p.data.is_empty() || (d >= base + 48 && d + p.data.len() <= base + n));
        let r = Req(p.bhs);
        let _ = (
            r.opcode(),
            r.itt(),
            r.cmd_sn(),
            r.exp_stat_sn(),
            r.cdb(),
            r.lun(),
            r.data_len(),
        );
    }
    if let Err(Violation::DataDigest { len }) = full {
        assert_eq!(len, needs(b, dg));
        assert!(len <= b.len());
    }
    for cut in 0..b.len().min(512) {
        let r = parse(&b[..cut], dg, MAX_DATA);
        match (&r, &full) {
            (Ok(None), _) => {}
            (_, Err(Violation::DataDigest { .. })) => {}
            _ => assert_eq!(r, full, "prefix {cut} differs"),
        }
    }
}

fn serve(b: &[u8], dg: Digests) {
    let mut at = 0;
    let mut steps = 0;
    loop {
        match parse(&b[at..], dg, MAX_DATA) {
            Ok(Some((_, n))) | Err(Violation::DataDigest { len: n }) => {
                assert!(n >= 48 && n <= b.len() - at);
                at += n;
            }
            _ => break,
        }
        steps += 1;
        assert!(steps <= b.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let dg = Digests {
        header: sel & 1 != 0,
        data: sel & 2 != 0,
    };
    check(rest, dg);
    serve(rest, dg);
});
