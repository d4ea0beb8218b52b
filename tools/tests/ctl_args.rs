//! `twinblk-ctl` command lines that are wrong: exit 2 (usage) with a message, never a panic,
//! and nothing sent.

use std::process::Command;

#[test]
fn seconds_that_are_not_a_finite_non_negative_number_are_a_usage_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let sock = sock.to_str().unwrap();
    for args in [
        vec!["takeover", "v", "--accept-data-loss", "--wait", "inf"],
        vec!["takeover", "v", "--accept-data-loss", "--wait", "1e300"],
        vec!["switchover", "v", "--to", "a", "--wait", "nan"],
        vec!["status", "--watch", "NaN", "--count", "2"],
        vec!["status", "--watch", "-1", "--count", "2"],
        vec!["cdp", "enable", "v", "--wait", "inf"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_twinblk-ctl"))
            .args(["--socket", sock])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `call METHOD PARAMS` (and `--params`) with a key given twice sent the last value only
/// (the text was parsed and sent again): `"read_only": true, "read_only": false` reached the
/// daemon as `false`, which it could then not refuse. A usage error now, nothing sent.
#[test]
fn call_parameters_with_a_key_given_twice_are_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let sock = sock.to_str().unwrap();
    let p = r#"{"name":"e","volume":"v","read_only":true,"read_only":false}"#;
    for args in [
        vec!["call", "nbd_export_add", p],
        vec!["nbd_export_add", "--params", p],
        vec!["call", "x", r#"{"a":{"b":1,"b":1}}"#],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_twinblk-ctl"))
            .args(["--socket", sock])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        // 4 would be: sent (tried to reach the socket).
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("given twice"), "{args:?}: {err}");
    }
}

/// `volume create --path` that is not UTF-8 was sent as its lossy text (U+FFFD for each bad
/// byte): with `--create`, the daemon made a file of another name than the one asked for.
/// A usage error now, nothing sent.
#[test]
fn a_volume_path_that_is_not_utf8_is_a_usage_error_not_another_path() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let mut bad = dir.path().as_os_str().as_bytes().to_vec();
    bad.extend_from_slice(b"/v\xff.img");
    let bad = std::ffi::OsStr::from_bytes(&bad);
    let o = Command::new(env!("CARGO_BIN_EXE_twinblk-ctl"))
        .arg("--socket")
        .arg(&sock)
        .args([
            "volume",
            "create",
            "v",
            "--size",
            "1M",
            "--backend",
            "uring",
        ])
        .arg("--path")
        .arg(bad)
        .arg("--create")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // 4 would be: sent (tried to reach the socket).
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("UTF-8"), "{err}");
}
