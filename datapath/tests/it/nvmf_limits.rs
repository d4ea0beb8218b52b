//! NVMe/TCP fields at their largest, smallest and reserved values: each test sends one
//! command (or PDU) whose field sits at an edge and checks the exact answer the specifications
//! require (NVM Express Base 2.0, NVMe over Fabrics 1.1, NVMe/TCP transport 1.0), and that the
//! controller keeps working afterwards.

use crate::harness::{in_process, nvmf_addr};
use twinblk_tools::nvmf::{Controller, Opts, Sqe};

const NQN: &str = "nqn.2026-11.io.twinblk:vol0";
const RAM: &str = "[[volume]]\nname='vol0'\nbackend='malloc'\nsize='64MiB'\n";

/// Get Log Page with NUMDU:NUMDL = FFFFh:FFFFh asks for 2^32 dwords (NUMD is 0's based): far
/// beyond MDTS, so Invalid Field in Command (Base 2.0, MDTS), never a silent empty success
/// (the u32 dword count wrapped to 0) or a panic.
#[test]
fn get_log_page_with_the_largest_dword_count_is_an_invalid_field() {
    let (d, _) = in_process(RAM);
    let mut c = Controller::connect(nvmf_addr(&d), NQN, &Opts::default()).unwrap();
    let sqe = Sqe::new(0x02)
        .nsid(0xFFFF_FFFF)
        .cdw(10, 0x02 | (0xFFFF << 16))
        .cdw(11, 0xFFFF);
    let r = c.admin.cmd(sqe, &[], 512).unwrap();
    assert_eq!((r.status, r.dnr), (0x002, true), "NUMD = 2^32 dwords");
    // Just above MDTS (128 KiB + 4 bytes) is refused too; at MDTS it is answered.
    let numd = (128u32 << 10) / 4; // 0's based: one dword more than 128 KiB
    let sqe = Sqe::new(0x02)
        .cdw(10, 0x02 | ((numd & 0xFFFF) << 16))
        .cdw(11, numd >> 16);
    assert_eq!(c.admin.cmd(sqe, &[], 512).unwrap().status, 0x002);
    assert_eq!(c.log(0x02, 0, 0, 512).unwrap()[3], 100, "still answering");
}
