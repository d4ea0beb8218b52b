//! Feeds arbitrary bytes to the NVMe/TCP PDU parser and the command decoders in
//! `twinblk::frontend::nvmf::{pdu, cmd}` and checks what the connection relies on:
//!
//! - nothing panics, whatever the bytes and the negotiated digests;
//! - a parsed PDU never claims more bytes than the input holds, its header is `hlen` bytes of
//!   the input, and its data lies inside the input after the header;
//! - `plen` never exceeds `max_plen` for the type, so the receive buffer stays bounded;
//! - every prefix of an input parses to `Ok(None)` or to the whole input's answer; once
//!   decided, longer prefixes agree (the parser never needs bytes it then ignores);
//! - `needs` agrees with what `parse` consumes;
//! - a server-style loop over back-to-back PDUs makes progress and stays inside the buffer;
//! - the SQE, connect-data and data-header decoders accept any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::frontend::nvmf::cmd::{Sqe, connect_data};
use twinblk::frontend::nvmf::pdu::{Digests, data_hdr, ic_req, max_plen, needs, parse, term_req};

const MAX_DATA: u32 = 64 << 10;

fn check(b: &[u8], dg: Digests) {
    let full = parse(b, dg, MAX_DATA);
    if let Ok(Some((p, n))) = &full {
        assert!(*n <= b.len(), "consumed {n} > {}", b.len());
        assert_eq!(*n, needs(b));
        assert!(*n <= max_plen(p.ch.kind, MAX_DATA));
        assert_eq!(p.header.len(), p.ch.hlen as usize);
        assert!(p.data.len() <= MAX_DATA as usize || p.ch.kind == 0x02);
        let base = b.as_ptr() as usize;
        let d = p.data.as_ptr() as usize;
        assert!(p.data.is_empty() || (d >= base + p.header.len() && d + p.data.len() <= base + n));
        let _ = ic_req(p.header);
        let _ = data_hdr(p.header);
        let _ = term_req(p.header);
        if p.header.len() >= 72 {
            if let Some(s) = Sqe::new(&p.header[8..]) {
                let _ = (
                    s.opcode(),
                    s.cid(),
                    s.nsid(),
                    s.slba(),
                    s.nlb(),
                    s.sgl_len(),
                );
                let _ = (s.cdw(10), s.cdw(15), s.connect_kato(), s.prop_value());
            }
        }
        let _ = connect_data(p.data);
    }
    let mut decided = false;
    for cut in 0..b.len().min(512) {
        let r = parse(&b[..cut], dg, MAX_DATA);
        match &r {
            Ok(None) => assert!(!decided, "undecided at {cut} after a decision"),
            _ => {
                decided = true;
                // A shorter prefix can only decide by an error found in the fixed header (the
                // same error as the whole input) or by the same whole PDU.
                assert_eq!(r, full, "prefix {cut} differs");
            }
        }
    }
}

fn serve(b: &[u8], dg: Digests) {
    let mut at = 0;
    let mut steps = 0;
    while let Ok(Some((_, n))) = parse(&b[at..], dg, MAX_DATA) {
        assert!(n > 0 && n <= b.len() - at);
        at += n;
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
