//! Feeds arbitrary bytes to the metrics endpoint's request parser and checks it never panics
//! and accepts only `GET`/`HEAD` of `/metrics` over HTTP/1.x.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::control::metrics::{Request, parse_request};

fuzz_target!(|input: &[u8]| {
    let r = parse_request(input);
    if r == Request::Metrics {
        let line = input.split(|b| *b == b'\n').next().unwrap_or(&[]);
        assert!(line.starts_with(b"GET /metrics") || line.starts_with(b"HEAD /metrics"));
    }
});
