//! Lists an operator gives the control socket (allowed hosts and initiators): an entry given
//! twice is refused, and a disallow never leaves a subsystem open to every host.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// An in-process daemon with NVMe/TCP and iSCSI front ends and a control socket in `dir`; its
/// configured subsystem `nqn.2026-11.io.test:conf` names its one allowed host twice (the
/// config file takes that).
fn daemon(dir: &Path) -> (twinblk::Daemon, PathBuf) {
    let sock = dir.join("ctl.sock");
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\nwait='adaptive'\n[nbd]\nlisten=['127.0.0.1:0']\n\
         [nvmf]\nlisten=['127.0.0.1:0']\n[[nvmf.subsystem]]\nnqn='nqn.2026-11.io.test:conf'\n\
         allowed_hosts=['nqn.h1', 'nqn.h1']\nnamespaces=['base']\n[iscsi]\nlisten=['127.0.0.1:0']\n\
         [control]\nsocket='{}'\n[[volume]]\nname='base'\nbackend='malloc'\nsize='4MiB'\n",
        sock.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    (twinblk::Daemon::start(&cfg).expect("daemon starts"), sock)
}

use crate::harness::rpc_at as rpc;

/// `allowed_hosts` `["h", "h"]` was taken as given; `nvmf_host_disallow` of `h` then passed
/// the "last allowed host" check (two entries) and removed both, leaving the list empty,
/// which lets every host in: disallowing the only host opened the subsystem to all (also for
/// a configured subsystem whose list names it twice).
#[test]
fn a_host_given_twice_is_refused_and_a_disallow_never_empties_the_list() {
    let tmp = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(tmp.path());
    // The configured list names its one host twice: disallowing it is refused all the same.
    let conf = "nqn.2026-11.io.test:conf";
    let r = rpc(
        &sock,
        "nvmf_host_disallow",
        json!({"nqn": conf, "host": "nqn.h1"}),
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("last allowed host"),
        "{r}"
    );
    let nqn = "nqn.2026-11.io.test:dup";
    for (method, p, key) in [
        (
            "nvmf_subsystem_add",
            json!({"nqn": nqn, "allowed_hosts": ["nqn.h1", "nqn.h1"]}),
            "nqn.h1",
        ),
        (
            "iscsi_target_add",
            json!({"iqn": "iqn.2026-11.io.test:dup", "allowed_initiators": ["iqn.i", "iqn.i"]}),
            "iqn.i",
        ),
    ] {
        let r = rpc(&sock, method, p.clone());
        let e = r
            .get("error")
            .unwrap_or_else(|| panic!("{method} {p}: accepted: {r}"));
        assert_eq!(e["code"], -32602, "{method} {p}: {r}");
        let m = e["message"].as_str().unwrap();
        assert!(m.contains(key) && m.contains("twice"), "{method} {p}: {m}");
    }
    let subs = rpc(&sock, "nvmf_subsystems", Value::Null)["result"]["subsystems"].clone();
    assert!(!subs.to_string().contains(nqn), "{subs}");
    // One host: disallowing it is refused, and the list keeps it.
    let r = rpc(
        &sock,
        "nvmf_subsystem_add",
        json!({"nqn": nqn, "allowed_hosts": ["nqn.h1"]}),
    );
    assert!(r.get("error").is_none(), "{r}");
    let r = rpc(
        &sock,
        "nvmf_host_allow",
        json!({"nqn": nqn, "host": "nqn.h1"}),
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r = rpc(
        &sock,
        "nvmf_host_disallow",
        json!({"nqn": nqn, "host": "nqn.h1"}),
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let subs = rpc(&sock, "nvmf_subsystems", Value::Null)["result"]["subsystems"].clone();
    let sub = subs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["nqn"] == nqn)
        .unwrap();
    assert_eq!(sub["allowed_hosts"], json!(["nqn.h1"]), "{sub}");
}

use crate::harness::raw_at as raw;

/// A key given twice in a request (`"read_only": true, "read_only": false`) was taken as its
/// last value without a word: the export above was served writable. Refused now, at any
/// level, and nothing changed.
#[test]
fn a_key_given_twice_in_a_request_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(tmp.path());
    for line in [
        r#"{"jsonrpc":"2.0","id":1,"method":"nbd_export_add","params":{"name":"e","volume":"base","read_only":true,"read_only":false}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"nbd_export_add","params":{"name":"e","volume":"base","name":"f"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"export_list","method":"nbd_export_add","params":{"name":"e","volume":"base"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"nbd_export_add","params":{"name":"e","volume":"base"},"params":{"name":"f","volume":"base"}}"#,
    ] {
        let r = raw(&sock, line);
        let e = r
            .get("error")
            .unwrap_or_else(|| panic!("{line}: accepted: {r}"));
        assert_eq!(e["code"], -32600, "{line}: {r}");
        assert!(
            e["message"].as_str().unwrap().contains("twice"),
            "{line}: {r}"
        );
    }
    let exports = rpc(&sock, "export_list", Value::Null)["result"].clone();
    assert_eq!(exports.as_array().unwrap().len(), 1, "{exports}");
    // Keys repeated in different objects are not the same key.
    let r = raw(
        &sock,
        r#"{"jsonrpc":"2.0","id":{"name":1},"method":"nbd_export_add","params":{"name":"e","volume":"base","read_only":true}}"#,
    );
    assert_eq!(r["result"]["read_only"], true, "{r}");
}
