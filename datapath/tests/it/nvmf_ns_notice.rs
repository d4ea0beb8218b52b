//! Namespaces added to and removed from a run-time subsystem while a host is connected
//! (docs/nvmf.md, "Namespace changes"; docs/control.md): no `force`, no disconnection; the
//! connected controllers see the new namespace set, and each one that enabled Namespace
//! Attribute Notices (Set Features 0Bh bit 8) hears of it by an Asynchronous Event (notice,
//! Namespace Attribute Changed, log page 04h) and reads the changed NSIDs in the Changed
//! Namespace List log page (NVMe Base 2.0); malformed requests for that log are refused.

use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use twinblk_tools::nvmf::{Completion, Controller, Opts, Queue, Sqe};

const NQN: &str = "nqn.2026-11.io.twinblk:live";
/// Asynchronous event completion dword 0: type Notice (2h), information Namespace Attribute
/// Changed (00h), log page Changed Namespace List (04h).
const NS_CHANGED: u64 = 0x04_00_02;
const INVALID_FIELD: u16 = 0x002;
const INVALID_NS: u16 = 0x00B;
const SGL_INVALID_DATA: u16 = 0x00F;

fn daemon(dir: &Path) -> (twinblk::Daemon, PathBuf, SocketAddr) {
    let sock = dir.join("ctl.sock");
    let text = format!(
        "[reactor]\ncores=[0,1]\npin=false\nwait='adaptive'\n[nbd]\nlisten=[]\n[nvmf]\nlisten=['127.0.0.1:0']\n[control]\nsocket='{}'\n[runtime]\nmax_volumes=8\n[[volume]]\nname='base'\nbackend='malloc'\nsize='16MiB'\n",
        sock.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let nv = crate::harness::nvmf_addr(&d);
    (d, sock, nv)
}

use crate::harness::{rpc_at as rpc, rpc_ok as ok};

/// A run-time subsystem with volume `n1` as namespace 1, and volumes `n2`, `n3` not in it.
fn setup(sock: &Path) {
    for v in ["n1", "n2", "n3"] {
        ok(
            sock,
            "volume_create",
            json!({"name": v, "backend": "malloc", "size": "8M"}),
        );
    }
    ok(sock, "nvmf_subsystem_add", json!({"nqn": NQN}));
    ok(
        sock,
        "nvmf_namespace_add",
        json!({"nqn": NQN, "volume": "n1", "nsid": 1}),
    );
}

/// Set Features, Asynchronous Event Configuration (FID 0Bh).
fn set_aec(c: &mut Controller, v: u32) {
    let s = Sqe::new(0x09).cdw(10, 0x0B).cdw(11, v);
    assert_eq!(
        c.admin.cmd(s, &[], 0).unwrap().status,
        0,
        "Set Features 0Bh"
    );
}

/// A Get Log Page of the Changed Namespace List: `len` bytes at `offset`, RAE as given.
fn changed_log_sqe(rae: bool, offset: u64, len: u32) -> Sqe {
    let numd = len / 4 - 1;
    Sqe::new(0x02)
        .nsid(0xFFFF_FFFF)
        .cdw(10, 0x04 | (u32::from(rae) << 15) | ((numd & 0xFFFF) << 16))
        .cdw(11, numd >> 16)
        .cdw(12, offset as u32)
        .cdw(13, (offset >> 32) as u32)
}

/// The Changed Namespace List (the whole 4 KiB), as its non-zero entries; every entry after
/// the first zero must be zero too.
fn changed_log(c: &mut Controller, rae: bool) -> Vec<u32> {
    let r = c
        .admin
        .cmd(changed_log_sqe(rae, 0, 4096), &[], 4096)
        .unwrap();
    assert_eq!(r.status, 0, "Get Log Page 04h");
    assert_eq!(r.data.len(), 4096, "the whole log");
    let ids: Vec<u32> = r
        .data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let n = ids.iter().position(|&x| x == 0).unwrap_or(ids.len());
    assert!(
        ids[n..].iter().all(|&x| x == 0),
        "zero-filled after the list"
    );
    ids[..n].to_vec()
}

/// Wait (the queue's read timeout bounds it) for the completion of `aer`; nothing else may be
/// outstanding on the admin queue.
fn event(c: &mut Controller, aer: u16, what: &str) -> Completion {
    let ev = c
        .admin
        .complete()
        .unwrap_or_else(|e| panic!("{what}: no event came: {e}"));
    assert_eq!(
        ev.cid, aer,
        "{what}: only the event request was outstanding"
    );
    assert_eq!(ev.status, 0, "{what}");
    ev
}

fn rw(q: &mut Queue, nsid: u32, seed: u8) -> (u16, u16) {
    let data = vec![seed; 4096];
    let w = q
        .cmd(Sqe::new(0x01).nsid(nsid).lba(8, 8), &data, 0)
        .unwrap()
        .status;
    let r = q
        .cmd(Sqe::new(0x02).nsid(nsid).lba(8, 8), &[], 4096)
        .unwrap();
    if w == 0 && r.status == 0 {
        assert_eq!(r.data, data, "namespace {nsid} reads back what was written");
    }
    (w, r.status)
}

/// A host stays connected while namespace 2 is added and removed: each change completes its
/// held event request (notice, Namespace Attribute Changed, log 04h), the Changed Namespace
/// List names namespace 2 (kept by a read with RAE set, cleared by one with RAE clear), the
/// controller's Identify and its existing I/O queue follow the change (namespace 2 serves
/// I/O once added and answers Invalid Namespace once removed), namespace 1 serves throughout,
/// and the removed namespace's volume can be deleted while the host stays connected.
#[test]
fn a_namespace_added_and_removed_under_a_connected_host_is_announced_and_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock, nv) = daemon(dir.path());
    setup(&sock);
    let mut c = Controller::connect(nv, NQN, &Opts::default()).unwrap();
    let id = c.identify(0x01, 0).unwrap();
    let oaes = u32::from_le_bytes(id[92..96].try_into().unwrap());
    assert_eq!(
        oaes & (1 << 8),
        1 << 8,
        "OAES {oaes:#x}: Namespace Attribute Notices"
    );
    set_aec(&mut c, 1 << 8);
    let g = c.admin.cmd(Sqe::new(0x0A).cdw(10, 0x0B), &[], 0).unwrap();
    assert_eq!(
        (g.status, g.result & (1 << 8)),
        (0, 1 << 8),
        "Get Features 0Bh"
    );
    let mut q = c.io_queue(1, 16).unwrap();
    assert_eq!(rw(&mut q, 1, 0x11), (0, 0), "namespace 1");
    assert_eq!(
        rw(&mut q, 2, 0x22),
        (INVALID_NS, INVALID_NS),
        "no namespace 2 yet"
    );
    assert!(changed_log(&mut c, false).is_empty(), "no change yet");

    // Added while connected: no force, nobody disconnected.
    let aer = c.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    let r = ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": NQN, "volume": "n2", "nsid": 2}),
    );
    assert_eq!(r["closed_connections"], 0, "{r}");
    let ev = event(&mut c, aer, "namespace 2 added");
    assert_eq!(
        ev.result & 0xFF_FFFF,
        NS_CHANGED,
        "notice, NS attribute changed, log 04h"
    );
    assert_eq!(changed_log(&mut c, true), vec![2], "RAE set: read, kept");
    assert_eq!(
        changed_log(&mut c, false),
        vec![2],
        "RAE clear: read, then cleared"
    );
    assert!(
        changed_log(&mut c, false).is_empty(),
        "cleared by the read with RAE clear"
    );
    assert_eq!(c.active_ns().unwrap(), vec![1, 2]);
    assert_eq!(
        c.ns_info(2).unwrap().blocks * 512,
        8 << 20,
        "namespace 2's size"
    );
    let nn = |c: &mut Controller| {
        let id = c.identify(0x01, 0).unwrap();
        u32::from_le_bytes(id[516..520].try_into().unwrap())
    };
    assert_eq!(
        nn(&mut c),
        1024,
        "NN: the highest NSID it may have, whatever it has"
    );
    assert_eq!(
        rw(&mut q, 2, 0x22),
        (0, 0),
        "namespace 2 on the queue opened before it"
    );
    assert_eq!(rw(&mut q, 1, 0x12), (0, 0), "namespace 1 still");
    // A queue opened now reaches both namespaces; its volume is in use.
    let mut q2 = c.io_queue(2, 16).unwrap();
    assert_eq!(rw(&mut q2, 2, 0x23), (0, 0), "a new queue, namespace 2");
    let r = rpc(&sock, "volume_delete", json!({"name": "n2"}));
    assert!(r.get("error").is_some(), "n2 is a namespace: {r}");

    // Removed while connected.
    let aer = c.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    let r = ok(
        &sock,
        "nvmf_namespace_remove",
        json!({"nqn": NQN, "nsid": 2}),
    );
    assert_eq!(r["closed_connections"], 0, "{r}");
    let ev = event(&mut c, aer, "namespace 2 removed");
    assert_eq!(ev.result & 0xFF_FFFF, NS_CHANGED);
    assert_eq!(changed_log(&mut c, false), vec![2]);
    assert_eq!(c.active_ns().unwrap(), vec![1]);
    assert_eq!(
        rw(&mut q, 2, 0x24),
        (INVALID_NS, INVALID_NS),
        "removed, queue 1"
    );
    assert_eq!(
        rw(&mut q2, 2, 0x24),
        (INVALID_NS, INVALID_NS),
        "removed, queue 2"
    );
    let r = c
        .admin
        .cmd(Sqe::new(0x06).nsid(2).cdw(10, 0), &[], 4096)
        .unwrap();
    assert_eq!(r.status, 0, "Identify Namespace 2: inactive now");
    assert!(
        r.data.iter().all(|&b| b == 0),
        "Identify Namespace 2: zero-filled, inactive"
    );
    assert_eq!(nn(&mut c), 1024, "NN unchanged");
    assert_eq!(rw(&mut q, 1, 0x13), (0, 0), "namespace 1 serves on");
    assert_eq!(
        rw(&mut q2, 1, 0x14),
        (0, 0),
        "namespace 1 serves on, queue 2"
    );
    // Nothing reaches n2 any more: it can go while the host stays connected.
    ok(&sock, "volume_delete", json!({"name": "n2"}));
    assert_eq!(rw(&mut q, 1, 0x15), (0, 0), "the host is still connected");
    let hosts = ok(&sock, "host_list", json!({}));
    assert!(
        hosts.to_string().contains(NQN),
        "the host is still listed: {hosts}"
    );
}

/// With Namespace Attribute Notices disabled (bit 8 of Feature 0Bh clear) a change completes
/// no held event request, yet the Changed Namespace List records it; enabled afterwards, the
/// next change is announced, one event until the log is read, and one made while no event
/// request is held is reported on the next one the host posts. Malformed requests for the log
/// are refused and clear nothing.
#[test]
fn namespace_notices_disabled_send_no_event_and_malformed_log_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock, nv) = daemon(dir.path());
    setup(&sock);
    let mut c = Controller::connect(nv, NQN, &Opts::default()).unwrap();
    // ANA change notices only.
    set_aec(&mut c, 1 << 11);
    let aer = c.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": NQN, "volume": "n2", "nsid": 2}),
    );
    // Keep Alives answer; the event request does not.
    for _ in 0..5 {
        let ka = c.admin.submit(Sqe::new(0x18), &[], 0).unwrap();
        let r = c.admin.complete().unwrap();
        assert_eq!(r.cid, ka, "only the Keep Alive completes (AER cid {aer})");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        c.active_ns().unwrap(),
        vec![1, 2],
        "the change is seen all the same"
    );

    // Malformed log requests: answered with their status, the log left as it is.
    let cases: [(&str, Sqe, u32, u16); 4] = [
        (
            "offset beyond the log",
            changed_log_sqe(false, 4100, 4),
            4,
            INVALID_FIELD,
        ),
        (
            "offset not dword aligned",
            changed_log_sqe(false, 2, 4),
            4,
            INVALID_FIELD,
        ),
        (
            "data length not NUMD's",
            changed_log_sqe(false, 0, 4096),
            4095,
            SGL_INVALID_DATA,
        ),
        (
            "odd data length",
            changed_log_sqe(false, 0, 8),
            7,
            SGL_INVALID_DATA,
        ),
    ];
    for (what, sqe, len, want) in cases {
        let r = c.admin.cmd(sqe, &[], len).unwrap();
        assert_eq!(r.status, want, "{what}");
    }
    // The end of the log is a valid offset: the last entry, then nothing.
    let r = c.admin.cmd(changed_log_sqe(true, 4092, 4), &[], 4).unwrap();
    assert_eq!((r.status, r.data), (0, vec![0; 4]), "the last entry");
    let r = c.admin.cmd(changed_log_sqe(true, 4, 4), &[], 4).unwrap();
    assert_eq!((r.status, r.data), (0, vec![0; 4]), "the second entry");
    assert_eq!(
        changed_log(&mut c, false),
        vec![2],
        "logged though not announced"
    );

    // Enabled now: the next change is announced on the request held all along.
    set_aec(&mut c, (1 << 8) | (1 << 11));
    ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": NQN, "volume": "n3", "nsid": 7}),
    );
    let ev = event(&mut c, aer, "namespace 7 added");
    assert_eq!(ev.result & 0xFF_FFFF, NS_CHANGED);
    // A change while the event is not yet acknowledged is logged, not announced again.
    ok(
        &sock,
        "nvmf_namespace_remove",
        json!({"nqn": NQN, "nsid": 2}),
    );
    let aer = c.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    let ka = c.admin.submit(Sqe::new(0x18), &[], 0).unwrap();
    assert_eq!(
        c.admin.complete().unwrap().cid,
        ka,
        "no second event before the log is read"
    );
    assert_eq!(
        changed_log(&mut c, false),
        vec![2, 7],
        "both changes, ascending"
    );
    assert_eq!(c.active_ns().unwrap(), vec![1, 7]);
    // Acknowledged: the next change is announced on the request held since.
    ok(
        &sock,
        "nvmf_namespace_remove",
        json!({"nqn": NQN, "nsid": 7}),
    );
    let ev = event(&mut c, aer, "namespace 7 removed");
    assert_eq!(ev.result & 0xFF_FFFF, NS_CHANGED);
    assert_eq!(changed_log(&mut c, false), vec![7]);
    // A change while no event request is held: queued, reported on the next one posted.
    ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": NQN, "volume": "n3", "nsid": 3}),
    );
    let ka = c.admin.submit(Sqe::new(0x18), &[], 0).unwrap();
    assert_eq!(c.admin.complete().unwrap().cid, ka, "the change is taken");
    let aer = c.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    let ev = event(&mut c, aer, "namespace 3 added before the request");
    assert_eq!(ev.result & 0xFF_FFFF, NS_CHANGED);
    assert_eq!(changed_log(&mut c, false), vec![3]);
}

/// Reservations are the namespaces': adding and removing another namespace while the holder
/// is connected keeps namespace 1's registration and reservation (another host's write is
/// still refused), and a namespace removed and added again starts with none.
#[test]
fn reservations_of_the_namespaces_that_stay_are_kept_across_namespace_changes() {
    use twinblk_tools::nvmf::{Host, ResvReport, racqa, rrega, sc};
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock, nv) = daemon(dir.path());
    setup(&sock);
    let c = Controller::connect(nv, NQN, &Opts::default()).unwrap();
    let mut q = c.io_queue(1, 16).unwrap();
    let other = Opts {
        host: Host {
            nqn: "nqn.2014-08.org.example:other".into(),
            id: [9; 16],
        },
        ..Opts::default()
    };
    let c2 = Controller::connect(nv, NQN, &other).unwrap();
    let mut q2 = c2.io_queue(1, 16).unwrap();
    let report = |q: &mut Queue, nsid: u32| {
        let (s, d) = q.resv_report(nsid, true, 4096).unwrap();
        assert_eq!(s, 0, "report of namespace {nsid}");
        ResvReport::parse(&d).unwrap()
    };
    assert_eq!(
        q.resv_register(1, rrega::REGISTER, false, 0, 0xAA).unwrap(),
        0
    );
    // Write Exclusive: only the holder writes.
    assert_eq!(q.resv_acquire(1, racqa::ACQUIRE, 1, 0xAA, 0).unwrap(), 0);
    assert_eq!(rw(&mut q2, 1, 0x31).0, sc::RESERVATION_CONFLICT, "before");
    ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": NQN, "volume": "n2", "nsid": 2}),
    );
    assert_eq!(
        q.resv_register(2, rrega::REGISTER, false, 0, 0xBB).unwrap(),
        0
    );
    assert_eq!(
        report(&mut q, 2).registrants.len(),
        1,
        "namespace 2 registered"
    );
    let r1 = report(&mut q, 1);
    assert_eq!(
        (r1.rtype, r1.registrants.len()),
        (1, 1),
        "namespace 1 kept: {r1:?}"
    );
    assert!(r1.registrants[0].2, "and its holder");
    assert_eq!(
        rw(&mut q2, 1, 0x32).0,
        sc::RESERVATION_CONFLICT,
        "after an add"
    );
    ok(
        &sock,
        "nvmf_namespace_remove",
        json!({"nqn": NQN, "nsid": 2}),
    );
    ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": NQN, "volume": "n2", "nsid": 2}),
    );
    assert_eq!(
        report(&mut q, 2),
        ResvReport::default(),
        "a new namespace 2: none"
    );
    assert_eq!(report(&mut q, 1), r1, "namespace 1 unchanged");
    assert_eq!(
        rw(&mut q2, 1, 0x33).0,
        sc::RESERVATION_CONFLICT,
        "after a removal"
    );
    assert_eq!(rw(&mut q2, 2, 0x34), (0, 0), "namespace 2 is free");
}

/// What Identify Controller says of a run-time subsystem holds for every namespace set it can
/// come to, since a host reads it once, at connect (Linux sizes its ANA log buffer from it then,
/// `16 + NANAGRPID * 32 + MNAN * 4` bytes, and drops an ANA log whose groups overflow that
/// buffer or whose group id is above ANAGRPMAX, so an added namespace in a new group never
/// became usable in a Linux guest: `linux_guest`'s read-only view test). NN and MNAN are the
/// highest NSID `nvmf_namespace_add` accepts (1024), ANAGRPMAX and NANAGRPID cover every
/// group a volume slot can make (`max_volumes`, 8 here); none of them moves when namespaces
/// in new groups come and go, and the ANA log of the larger set fits what they promise.
/// Identify Namespace of an inactive NSID up to NN is zero-filled (success), above NN
/// Invalid Namespace.
#[test]
fn identify_controller_of_a_run_time_subsystem_covers_every_namespace_set_it_can_have() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock, nv) = daemon(dir.path());
    setup(&sock);
    let mut c = Controller::connect(nv, NQN, &Opts::default()).unwrap();
    let limits = |c: &mut Controller| {
        let id = c.identify(0x01, 0).unwrap();
        let at = |o: usize| u32::from_le_bytes(id[o..o + 4].try_into().unwrap());
        // NN, MNAN, ANAGRPMAX, NANAGRPID
        (at(516), at(540), at(344), at(348))
    };
    let at_connect = limits(&mut c);
    assert_eq!(
        at_connect,
        (1024, 1024, 8, 8),
        "NN, MNAN, ANAGRPMAX, NANAGRPID of a run-time subsystem with one namespace"
    );
    // Namespaces on two more volumes: two more ANA groups.
    for (v, nsid) in [("n2", 2), ("n3", 7)] {
        ok(
            &sock,
            "nvmf_namespace_add",
            json!({"nqn": NQN, "volume": v, "nsid": nsid}),
        );
    }
    assert_eq!(c.active_ns().unwrap(), vec![1, 2, 7]);
    assert_eq!(limits(&mut c), at_connect, "unchanged by the additions");
    // The ANA log read as Linux reads it, in the size it took at connect.
    let (nn, mnan, grpmax, ngrps_max) = at_connect;
    assert!(nn >= 7 && mnan <= nn);
    let size = 16 + ngrps_max as usize * 32 + mnan as usize * 4;
    let log = c.log(0x0C, 0, 0, size as u32).unwrap();
    let ngrps = u16::from_le_bytes(log[8..10].try_into().unwrap());
    assert_eq!(ngrps, 3, "one group per volume");
    let mut off = 16;
    let mut seen = Vec::new();
    for _ in 0..ngrps {
        assert!(off + 32 <= size, "a descriptor past the promised size");
        let grpid = u32::from_le_bytes(log[off..off + 4].try_into().unwrap());
        let n = u32::from_le_bytes(log[off + 4..off + 8].try_into().unwrap()) as usize;
        assert!(
            (1..=grpmax).contains(&grpid),
            "group {grpid} above ANAGRPMAX"
        );
        off += 32;
        assert!(off + 4 * n <= size, "NSIDs past the promised size");
        for k in 0..n {
            seen.push(u32::from_le_bytes(
                log[off + 4 * k..off + 4 * k + 4].try_into().unwrap(),
            ));
        }
        off += 4 * n;
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2, 7], "every namespace in the ANA log");
    // Inactive NSIDs up to NN: zero-filled; above NN: Invalid Namespace.
    for nsid in [3, 1024] {
        let r = c
            .admin
            .cmd(Sqe::new(0x06).nsid(nsid).cdw(10, 0), &[], 4096)
            .unwrap();
        assert_eq!(r.status, 0, "Identify Namespace {nsid}: inactive");
        assert!(r.data.iter().all(|&b| b == 0), "inactive {nsid}: all zero");
    }
    let r = c
        .admin
        .cmd(Sqe::new(0x06).nsid(1025).cdw(10, 0), &[], 4096)
        .unwrap();
    assert_eq!(r.status, INVALID_NS, "Identify Namespace 1025: above NN");
    let r = rpc(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": NQN, "volume": "n2", "nsid": 1025}),
    );
    assert!(r.get("error").is_some(), "no NSID above NN: {r}");
    for nsid in [2, 7] {
        ok(
            &sock,
            "nvmf_namespace_remove",
            json!({"nqn": NQN, "nsid": nsid}),
        );
    }
    assert_eq!(limits(&mut c), at_connect, "unchanged by the removals");
}
