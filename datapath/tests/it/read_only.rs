//! Read-only volumes and exports are advertised as such on the wire, so an initiator attaches
//! them read-only (a file system then mounts without replaying its journal) instead of
//! finding out write by write: NBD's transmission flags (READ_ONLY, and no TRIM or
//! WRITE_ZEROES), NVMe's Identify Namespace (NSATTR, byte 99, bit 0: write protected), SCSI's
//! MODE SENSE header (device-specific parameter, bit 7: WP). A read-only point-in-time view is
//! the read-only volume; a writable volume, a sandbox view and a writable export say nothing.
//! Every offset here is the specifications', written out independently of the target's code.

use crate::cdp::{last, volume};
use crate::harness::{in_process, pattern};
use crate::iscsi::Raw;
use crate::rawnbd::{Client, fixed_newstyle, info_payload, read_option_reply, send_option};
use std::net::SocketAddr;
use std::path::Path;
use twinblk::daemon::Proto;
use twinblk_tools::nvmf::{Controller, Opts};

const SIZE: u64 = 1 << 20;

/// NBD transmission flags (the NBD protocol, "Transmission flags"), by bit.
const NBD_READ_ONLY: u16 = 1 << 1;
const NBD_SEND_TRIM: u16 = 1 << 5;
const NBD_SEND_WRITE_ZEROES: u16 = 1 << 6;

/// A CDP history of one write, and the time at which it holds that write.
fn history(dir: &Path) -> u64 {
    let (mut d, addr) = in_process(&volume("v", SIZE, dir, "4MiB"));
    let mut c = Client::connect(addr, "v", false);
    assert_eq!(c.write(0, &pattern(5, 4096)), 0);
    c.disconnect();
    let t = last(dir).1;
    d.stop();
    t
}

/// A daemon serving `vol0`, a view of the history in `dir` at `t` (a sandbox or read-only),
/// and `plain`, a RAM volume, over NBD, NVMe/TCP and iSCSI, with the default exports,
/// subsystems and targets (one per volume, under its name).
fn view_daemon(dir: &Path, t: u64, sandbox: bool) -> twinblk::Daemon {
    let text = format!(
        "[reactor]\ncores=[0]\nwait='adaptive'\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n\
         [nvmf]\nlisten=['127.0.0.1:0']\n[iscsi]\nlisten=['127.0.0.1:0']\n[control]\nsocket=''\n\
         [[volume]]\nname='vol0'\nbackend='cdp-view'\nsize={SIZE}\nblock_size=4096\n\
         [volume.view]\ndir='{}'\ntime={t}\nsandbox={sandbox}\n\
         [[volume]]\nname='plain'\nbackend='malloc'\nsize={SIZE}\nblock_size=4096\n",
        dir.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    twinblk::Daemon::start(&cfg).expect("daemon starts")
}

pub(crate) fn listener(d: &twinblk::Daemon, proto: Proto) -> SocketAddr {
    d.listeners()
        .into_iter()
        .find(|(p, _)| *p == proto)
        .expect("a listener")
        .1
}

/// The transmission flags export `name` announces in its NBD_INFO_EXPORT reply to NBD_OPT_GO.
fn nbd_flags(addr: SocketAddr, name: &str) -> u16 {
    let mut s = fixed_newstyle(addr);
    send_option(&mut s, 7, &info_payload(name, &[])); // NBD_OPT_GO
    let mut flags = None;
    loop {
        let (_, t, d) = read_option_reply(&mut s);
        match t {
            // NBD_REP_INFO, NBD_INFO_EXPORT: u16 type, u64 size, u16 transmission flags.
            3 if u16::from_be_bytes([d[0], d[1]]) == 0 => {
                flags = Some(u16::from_be_bytes([d[10], d[11]]));
            }
            3 => {}
            1 => break, // NBD_REP_ACK
            _ => panic!("NBD_OPT_GO to {name} failed with reply type {t:#x}"),
        }
    }
    flags.expect("an NBD_INFO_EXPORT reply")
}

fn assert_nbd_read_only(f: u16, what: &str) {
    assert_ne!(f & NBD_READ_ONLY, 0, "{what}: READ_ONLY in {f:#06x}");
    assert_eq!(
        f & (NBD_SEND_TRIM | NBD_SEND_WRITE_ZEROES),
        0,
        "{what}: neither SEND_TRIM nor SEND_WRITE_ZEROES in {f:#06x}"
    );
}

fn assert_nbd_writable(f: u16, what: &str) {
    assert_eq!(f & NBD_READ_ONLY, 0, "{what}: no READ_ONLY in {f:#06x}");
    assert_eq!(
        f & (NBD_SEND_TRIM | NBD_SEND_WRITE_ZEROES),
        NBD_SEND_TRIM | NBD_SEND_WRITE_ZEROES,
        "{what}: SEND_TRIM and SEND_WRITE_ZEROES in {f:#06x}"
    );
}

/// NBD: a read-only view's export (an export of the volume, not configured read-only) and a
/// configured `read_only` export announce READ_ONLY and neither TRIM nor WRITE_ZEROES; a
/// writable volume's export, a sandbox view's and a writable export of the same volume do not.
#[test]
fn nbd_announces_read_only_views_and_exports_in_the_transmission_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let t = history(&dir);
    let mut d = view_daemon(&dir, t, false);
    let addr = listener(&d, Proto::Nbd);
    assert_nbd_read_only(nbd_flags(addr, "vol0"), "a read-only view");
    assert_nbd_writable(nbd_flags(addr, "plain"), "a RAM volume");
    d.stop();
    let mut d = view_daemon(&dir, t, true);
    assert_nbd_writable(
        nbd_flags(listener(&d, Proto::Nbd), "vol0"),
        "a sandbox view",
    );
    d.stop();
    let (mut d, addr) = in_process(
        "[[volume]]\nname='a'\nbackend='malloc'\nsize='1MiB'\n\
         [[nbd.export]]\nname='a'\nvolume='a'\n\
         [[nbd.export]]\nname='a-ro'\nvolume='a'\nread_only=true\n",
    );
    assert_nbd_read_only(nbd_flags(addr, "a-ro"), "a read_only export");
    assert_nbd_writable(nbd_flags(addr, "a"), "a writable export of the same volume");
    d.stop();
}

/// The Namespace Attributes (NSATTR) of namespace 1 of `subsystem`: byte 99 of the Identify
/// Namespace data structure (CNS 00h).
fn nsattr(addr: SocketAddr, subsystem: &str) -> u8 {
    let mut c = Controller::connect(addr, subsystem, &Opts::default()).unwrap();
    c.identify(0x00, 1).unwrap()[99]
}

/// NVMe/TCP: a read-only view's namespace is reported write protected (NSATTR bit 0); a RAM
/// volume's and a sandbox view's are not.
#[test]
fn nvme_identify_namespace_reports_a_read_only_view_write_protected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let t = history(&dir);
    let mut d = view_daemon(&dir, t, false);
    let addr = listener(&d, Proto::Nvmf);
    let view = nsattr(addr, "nqn.2026-11.io.twinblk:vol0");
    assert_eq!(view & 1, 1, "a read-only view: NSATTR {view:#04x}");
    let plain = nsattr(addr, "nqn.2026-11.io.twinblk:plain");
    assert_eq!(plain & 1, 0, "a RAM volume: NSATTR {plain:#04x}");
    d.stop();
    let mut d = view_daemon(&dir, t, true);
    let sandbox = nsattr(listener(&d, Proto::Nvmf), "nqn.2026-11.io.twinblk:vol0");
    assert_eq!(sandbox & 1, 0, "a sandbox view: NSATTR {sandbox:#04x}");
    d.stop();
}

/// The data of a SCSI command that reads at most `alloc` bytes (Data-In, then GOOD status).
fn scsi_in(r: &mut Raw, itt: u32, cdb: &[u8], alloc: u32) -> Vec<u8> {
    r.scsi(itt, cdb, alloc, 0xC0, &[]);
    let mut out = Vec::new();
    loop {
        let (h, d) = r.read_pdu().expect("a response");
        match h[0] & 0x3F {
            0x25 => {
                out.extend_from_slice(&d);
                if h[1] & 0x01 == 0 {
                    continue;
                }
            }
            0x21 => {}
            op => panic!("unexpected PDU opcode {op:#x}"),
        }
        assert_eq!(h[3], 0, "status GOOD for {:#04x}", cdb[0]);
        return out;
    }
}

/// The device-specific parameter of the MODE SENSE(6) and MODE SENSE(10) headers (all pages,
/// current values) of LUN 0 of `target`: byte 2 of the first, byte 3 of the second.
fn mode_sense_dsp(addr: SocketAddr, target: &str) -> (u8, u8) {
    let mut r = Raw::login_target(addr, "iqn.2026-11.test:ro", target, false, false);
    // MODE SENSE(6): page code 3Fh, allocation length 255.
    let six = scsi_in(&mut r, 1, &[0x1A, 0, 0x3F, 0, 255, 0], 255);
    // MODE SENSE(10): page code 3Fh, allocation length 1024.
    let ten = scsi_in(&mut r, 2, &[0x5A, 0, 0x3F, 0, 0, 0, 0, 0x04, 0x00, 0], 1024);
    assert!(six.len() >= 4 && ten.len() >= 8, "MODE SENSE headers");
    (six[2], ten[3])
}

/// iSCSI: a read-only view's LUN sets WP (bit 7 of the device-specific parameter) in both
/// MODE SENSE headers; a RAM volume's and a sandbox view's do not.
#[test]
fn scsi_mode_sense_reports_a_read_only_view_write_protected() {
    const WP: u8 = 0x80;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let t = history(&dir);
    let mut d = view_daemon(&dir, t, false);
    let addr = listener(&d, Proto::Iscsi);
    let (six, ten) = mode_sense_dsp(addr, "iqn.2026-11.io.twinblk:vol0");
    assert_eq!(six & WP, WP, "a read-only view, MODE SENSE(6): {six:#04x}");
    assert_eq!(ten & WP, WP, "a read-only view, MODE SENSE(10): {ten:#04x}");
    let (six, ten) = mode_sense_dsp(addr, "iqn.2026-11.io.twinblk:plain");
    assert_eq!(six & WP, 0, "a RAM volume, MODE SENSE(6): {six:#04x}");
    assert_eq!(ten & WP, 0, "a RAM volume, MODE SENSE(10): {ten:#04x}");
    d.stop();
    let mut d = view_daemon(&dir, t, true);
    let (six, ten) = mode_sense_dsp(listener(&d, Proto::Iscsi), "iqn.2026-11.io.twinblk:vol0");
    assert_eq!(six & WP, 0, "a sandbox view, MODE SENSE(6): {six:#04x}");
    assert_eq!(ten & WP, 0, "a sandbox view, MODE SENSE(10): {ten:#04x}");
    d.stop();
}

/// libiscsi's read-only suite (`ALL.ReadOnly`) against a read-only view's LUN: every
/// medium-modifying command (WRITE, WRITE SAME, UNMAP, COMPARE AND WRITE, ...) ends in CHECK
/// CONDITION, DATA PROTECT, WRITE PROTECTED (SBC-4), no assertion failing; its one skip is
/// ORWRITE, which the target does not implement. Write protection is judged before the CDB's
/// fields and transfer length (Linux's target does the same): a WRITE (10) with WRPROTECT set
/// and a WRITE SAME (10) without its block of data get WRITE PROTECTED on the view, and their
/// field errors on a writable volume.
#[test]
fn libiscsi_read_only_suite_passes_on_a_read_only_view() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let t = history(&dir);
    let mut d = view_daemon(&dir, t, false);
    let addr = listener(&d, Proto::Iscsi);
    let url = format!("iscsi://{addr}/iqn.2026-11.io.twinblk:vol0/0");
    let (_, skipped) = crate::iscsi::conformance("ALL.ReadOnly", &[url]);
    assert_eq!(
        skipped,
        [(
            "ReadOnly.ReadOnlySBC".to_string(),
            "ORWRITE is not implemented.".to_string()
        )]
    );
    // WRITE (10), WRPROTECT 001b; WRITE SAME (10) of one block, no Data-Out.
    let write = [0x2A, 0x20, 0, 0, 0, 0, 0, 0, 1, 0];
    let same = [0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let mut r = Raw::login_target(
        addr,
        "iqn.2026-11.test:ro",
        "iqn.2026-11.io.twinblk:vol0",
        false,
        false,
    );
    for (itt, cdb) in [(1, &write), (2, &same)] {
        let (st, key, asc, ascq, _) = crate::iscsi::status_of(&mut r, itt, cdb, 0);
        assert_eq!(
            (st, key, asc, ascq),
            (2, 0x07, 0x27, 0x00),
            "{:#04x} on a read-only view: DATA PROTECT / WRITE PROTECTED",
            cdb[0]
        );
    }
    let mut r = Raw::login_target(
        addr,
        "iqn.2026-11.test:ro",
        "iqn.2026-11.io.twinblk:plain",
        false,
        false,
    );
    let (st, key, asc, ascq, _) = crate::iscsi::status_of(&mut r, 3, &write, 0);
    assert_eq!(
        (st, key, asc, ascq),
        (2, 0x05, 0x24, 0x00),
        "WRPROTECT on a RAM volume"
    );
    let (st, key, asc, ascq, _) = crate::iscsi::status_of(&mut r, 4, &same, 0);
    assert_eq!(
        (st, key, asc, ascq),
        (2, 0x05, 0x0E, 0x03),
        "no data on a RAM volume"
    );
    d.stop();
}
