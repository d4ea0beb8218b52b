//! Feeds arbitrary CDBs to the SCSI decoder in `twinblk::frontend::iscsi::scsi` and the page
//! builders in `pages`, and checks:
//!
//! - nothing panics, whatever the 16 bytes;
//! - every decoded command's Data-Out length is computed without overflow;
//! - every page a decoded command asks for builds (or is refused with sense), and pages state
//!   their own length correctly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::bdev::volume::PathState;
use twinblk::frontend::iscsi::pages::{self, LunInfo};
use twinblk::frontend::iscsi::scsi::{Cmd, data_out_len, decode};

fuzz_target!(|data: &[u8]| {
    let mut c = [0u8; 16];
    let n = data.len().min(16);
    c[..n].copy_from_slice(&data[..n]);
    let extra = data.get(16..).unwrap_or(&[]);
    let l = LunInfo {
        blocks: 1 << 21,
        block: 512,
        naa: [0x30, 1, 2, 3, 4, 5, 6, 7],
        serial: "00".into(),
        target: "iqn.x".into(),
        tpg: 1,
        path: PathState::Optimized,
        peer: None,
        read_only: false,
    };
    let Ok(cmd) = decode(&c) else {
        return;
    };
    let _ = data_out_len(&cmd, 512);
    let _ = data_out_len(&cmd, 4096);
    match cmd {
        Cmd::Inquiry {
            evpd: true, page, ..
        } => {
            if let Ok(p) = pages::vpd_page(&l, page) {
                assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len() - 4);
            }
        }
        Cmd::ModeSense {
            ten,
            dbd,
            pc,
            page,
            subpage,
            ..
        } => {
            if let Ok(p) = pages::mode_sense(&l, ten, dbd, pc, page, subpage) {
                let _ = pages::mode_select(&l, ten, &p);
            }
            let _ = pages::mode_select(&l, ten, extra);
        }
        Cmd::ReportOpcodes {
            options,
            rctd,
            op,
            sa,
            ..
        } => {
            let _ = pages::report_opcodes(options, rctd, op, sa);
        }
        Cmd::GetLbaStatus { lba, .. } => {
            let _ = pages::lba_status(&l, lba);
        }
        Cmd::ReportTpg { extended, .. } => {
            let _ = pages::report_tpg(&l, extended);
        }
        _ => {}
    }
    let mut f = [0u8; 8];
    let m = extra.len().min(8);
    f[..m].copy_from_slice(&extra[..m]);
    if let Some(lun) = pages::lun_of(&f) {
        assert_eq!(pages::lun_of(&pages::lun_field(lun)), Some(lun));
    }
});
