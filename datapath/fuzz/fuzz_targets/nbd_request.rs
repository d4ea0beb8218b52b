//! Feeds arbitrary bytes to every NBD parser in `twinblk::frontend::nbd::proto` and checks the
//! properties the connection code relies on:
//!
//! - no parser panics (indexing out of range, arithmetic overflow in debug builds);
//! - `consumed` never exceeds the input;
//! - a parsed WRITE never announces more than `MAX_PAYLOAD` bytes of payload;
//! - a parser given a prefix of the input answers `Ok(None)` or exactly what it answers for the
//!   whole input (never a different message or a different error), and once a prefix is
//!   decided every longer prefix gives the same answer;
//! - `option_needs` agrees with `parse_option` (the receive buffer grows until the option is
//!   whole, never past it);
//! - `InfoRequest::types()` yields `requests.len() / 2` items;
//! - a server-style loop over back-to-back requests (header, then `payload_len()` bytes of
//!   WRITE payload) always makes progress and stays inside the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::frontend::nbd::proto::{
    MAX_OPTION_LEN, MAX_PAYLOAD, OPTION_HEADER_LEN, REQUEST_LEN, cmd, option_needs,
    parse_client_flags, parse_info_request, parse_meta_request, parse_option, parse_request,
};

/// Result of a streaming parser, as the fuzz target compares them.
type Parsed<T> = Result<Option<(T, usize)>, twinblk::frontend::nbd::proto::Violation>;

/// Every prefix of `b` parses to `Ok(None)` or to the whole input's answer, and once a prefix
/// is decided (not `Ok(None)`) all longer prefixes agree with it.
fn check_prefixes<'a, T: PartialEq + std::fmt::Debug>(
    b: &'a [u8],
    parse: impl Fn(&'a [u8]) -> Parsed<T>,
) {
    let full = parse(b);
    let mut decided = false;
    for cut in 0..b.len() {
        let p = parse(&b[..cut]);
        match &p {
            Ok(None) => assert!(
                !decided,
                "prefix of {cut} bytes is undecided after a shorter one was decided"
            ),
            _ => {
                decided = true;
                assert_eq!(p, full, "prefix of {cut} bytes parsed differently");
            }
        }
    }
    if decided {
        assert!(
            !matches!(full, Ok(None)),
            "whole input undecided, prefix decided"
        );
    }
}

fn check_request(b: &[u8]) {
    let r = parse_request(b);
    match &r {
        Ok(Some((req, n))) => {
            assert!(*n <= b.len(), "consumed {n} > input {}", b.len());
            assert_eq!(*n, REQUEST_LEN);
            if req.kind == cmd::WRITE {
                assert!(req.payload_len() <= MAX_PAYLOAD as usize);
                assert_eq!(req.payload_len(), req.len as usize);
            } else {
                assert_eq!(req.payload_len(), 0);
            }
        }
        Ok(None) => assert!(b.len() < REQUEST_LEN),
        Err(_) => assert!(b.len() >= REQUEST_LEN),
    }
    check_prefixes(b, parse_request);
}

/// What a server does on its receive buffer: parse a header, skip the WRITE payload, repeat.
fn serve_requests(b: &[u8]) {
    let mut at = 0usize;
    let mut steps = 0usize;
    while let Ok(Some((req, n))) = parse_request(&b[at..]) {
        assert!(n > 0, "no progress at {at}");
        assert!(n <= b.len() - at, "consumed {n} past the end at {at}");
        at += n;
        let p = req.payload_len();
        if req.kind == cmd::WRITE {
            assert!(p <= MAX_PAYLOAD as usize, "WRITE payload {p} > MAX_PAYLOAD");
        }
        if b.len() - at < p {
            break; // a server would wait for the rest of the payload
        }
        at += p;
        steps += 1;
    }
    assert!(at <= b.len());
    assert!(steps <= b.len() / REQUEST_LEN);
}

fn check_info(d: &[u8]) {
    if let Some(r) = parse_info_request(d) {
        assert_eq!(r.types().count(), r.requests.len() / 2);
        assert_eq!(r.requests.len() % 2, 0);
        assert_eq!(4 + r.name.len() + 2 + r.requests.len(), d.len());
        let name_len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
        assert_eq!(r.name, &d[4..4 + name_len]);
    }
}

fn check_meta(d: &[u8]) {
    if let Some((name, n)) = parse_meta_request(d) {
        assert!(4 + name.len() + 4 <= d.len());
        // Every query takes at least its 4-byte length.
        assert!((n as usize).saturating_mul(4) <= d.len() - 8 - name.len());
    }
}

fn check_option(b: &[u8]) {
    let needs = option_needs(b);
    assert!((OPTION_HEADER_LEN..=OPTION_HEADER_LEN + MAX_OPTION_LEN as usize).contains(&needs));
    match parse_option(b) {
        Ok(Some((o, n))) => {
            assert!(n <= b.len(), "consumed {n} > input {}", b.len());
            assert_eq!(n, OPTION_HEADER_LEN + o.data.len());
            assert!(o.data.len() <= MAX_OPTION_LEN as usize);
            assert_eq!(needs, n, "option_needs disagrees with parse_option");
            check_info(o.data);
            check_meta(o.data);
        }
        Ok(None) => assert!(
            needs > b.len(),
            "needs {needs} <= have {} but undecided",
            b.len()
        ),
        Err(_) => assert!(b.len() >= OPTION_HEADER_LEN),
    }
    check_prefixes(b, parse_option);
}

/// Handshake phase as a server runs it: client flags, then options back to back.
fn serve_options(b: &[u8]) {
    let mut at = match parse_client_flags(b) {
        Ok(Some((flags, n))) => {
            assert_eq!(n, 4);
            assert_eq!(flags & !3, 0);
            n
        }
        Ok(None) | Err(_) => return,
    };
    while let Ok(Some((_, n))) = parse_option(&b[at..]) {
        assert!(n >= OPTION_HEADER_LEN && n <= b.len() - at);
        at += n;
    }
    assert!(at <= b.len());
}

fuzz_target!(|data: &[u8]| {
    check_request(data);
    serve_requests(data);
    check_option(data);
    serve_options(data);
    check_prefixes(data, parse_client_flags);
    check_info(data);
    check_meta(data);
});
