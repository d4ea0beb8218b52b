//! NVMe commands and data structures: SQE fields, CQE encoding, status codes, and builders for
//! the Identify, log-page and discovery structures (layouts: `docs/nvmf.md`).
//!
//! Model: pure functions over byte slices; builders write into a caller-owned, zeroed buffer
//! of the structure's size, so the admin path reuses one scratch buffer per connection.
//!
//! Invariants: accessors never index past the 64-byte SQE; builders never write past the
//! buffer they are given (sizes are fixed by the spec and asserted by the tests); strings are
//! space-padded ASCII (identify) or NUL-padded (NQNs, discovery fields) and truncated to fit.

/// Size of a submission queue entry.
pub const SQE_LEN: usize = 64;
/// Size of a completion queue entry.
pub const CQE_LEN: usize = 16;
/// Size of Identify data and of the Connect data.
pub const IDENTIFY_LEN: usize = 4096;
/// Size of the Connect command's data.
pub const CONNECT_DATA_LEN: usize = 1024;
/// The discovery subsystem's NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Admin opcodes.
pub mod admin {
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0A;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT: u8 = 0x0C;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Fabrics command (fctype at byte 4).
    pub const FABRICS: u8 = 0x7F;
}

/// Fabrics command types.
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
}

/// NVM I/O opcodes.
pub mod io {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
    /// Reservation Register.
    pub const RESV_REGISTER: u8 = 0x0D;
    /// Reservation Report.
    pub const RESV_REPORT: u8 = 0x0E;
    /// Reservation Acquire.
    pub const RESV_ACQUIRE: u8 = 0x11;
    /// Reservation Release.
    pub const RESV_RELEASE: u8 = 0x15;
}

/// FUSE field values (SQE byte 1, bits 1:0).
pub mod fuse {
    /// Not fused.
    pub const NONE: u8 = 0;
    /// First command of a fused pair (Compare).
    pub const FIRST: u8 = 1;
    /// Second command of a fused pair (Write).
    pub const SECOND: u8 = 2;
}

/// Largest fused Compare and Write in blocks (Identify Controller ACWU is this minus one).
pub const ACWU_BLOCKS: u32 = 32;

/// Feature identifiers.
pub mod feat {
    /// Arbitration (mandatory).
    pub const ARBITRATION: u8 = 0x01;
    /// Power management (mandatory).
    pub const POWER_MGMT: u8 = 0x02;
    /// Temperature threshold (mandatory).
    pub const TEMP_THRESHOLD: u8 = 0x04;
    /// Error recovery (mandatory).
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile write cache.
    pub const VOLATILE_WC: u8 = 0x06;
    /// Number of queues.
    pub const NUM_QUEUES: u8 = 0x07;
    /// Asynchronous event configuration.
    pub const ASYNC_EVENT: u8 = 0x0B;
    /// Keep-alive timer.
    pub const KATO: u8 = 0x0F;
    /// Host identifier.
    pub const HOST_ID: u8 = 0x81;
    /// Reservation notification mask (namespace).
    pub const RESV_MASK: u8 = 0x82;
    /// Reservation persistence (namespace).
    pub const RESV_PERSIST: u8 = 0x83;
}

/// Log page identifiers.
pub mod lid {
    /// Error information.
    pub const ERROR: u8 = 0x01;
    /// SMART / health information.
    pub const SMART: u8 = 0x02;
    /// Firmware slot information.
    pub const FW_SLOT: u8 = 0x03;
    /// Changed namespace list.
    pub const CHANGED_NS: u8 = 0x04;
    /// Asymmetric namespace access.
    pub const ANA: u8 = 0x0C;
    /// Reservation notification.
    pub const RESV_NOTIFICATION: u8 = 0x80;
    /// Discovery.
    pub const DISCOVERY: u8 = 0x70;
}

/// Controller property offsets.
pub mod prop {
    /// Capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version.
    pub const VS: u32 = 0x08;
    /// Controller configuration.
    pub const CC: u32 = 0x14;
    /// Controller status.
    pub const CSTS: u32 = 0x1C;
}

/// A status: SCT in bits 10:8, SC in bits 7:0 (the CQE field is this shifted left by one,
/// plus DNR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// Success.
    pub const SUCCESS: Status = Status(0x000);
    /// Invalid command opcode.
    pub const INVALID_OPCODE: Status = Status(0x001);
    /// Invalid field in command.
    pub const INVALID_FIELD: Status = Status(0x002);
    /// Data transfer error.
    pub const DATA_XFER_ERROR: Status = Status(0x004);
    /// Internal error.
    pub const INTERNAL: Status = Status(0x006);
    /// Transient Transport Error (retryable): e.g. a data digest that did not match.
    pub const TRANSIENT_TRANSPORT: Status = Status(0x022);
    /// Invalid namespace or format.
    pub const INVALID_NS: Status = Status(0x00B);
    /// Command sequence error.
    pub const CMD_SEQ_ERROR: Status = Status(0x00C);
    /// Data SGL length invalid.
    pub const SGL_INVALID_DATA: Status = Status(0x00F);
    /// SGL descriptor type invalid.
    pub const SGL_INVALID_TYPE: Status = Status(0x011);
    /// SGL offset invalid (an in-capsule offset past the capsule's data).
    pub const SGL_OFFSET_INVALID: Status = Status(0x016);
    /// LBA out of range.
    pub const LBA_RANGE: Status = Status(0x080);
    /// Namespace not ready (retryable).
    pub const NS_NOT_READY: Status = Status(0x082);
    /// Invalid queue identifier / size (command specific).
    pub const INVALID_QUEUE_SIZE: Status = Status(0x102);
    /// Abort command limit exceeded (command specific): more Aborts outstanding than ACL + 1.
    pub const ABORT_LIMIT: Status = Status(0x103);
    /// Asynchronous event request limit exceeded.
    pub const AER_LIMIT: Status = Status(0x105);
    /// Invalid log page.
    pub const INVALID_LOG_PAGE: Status = Status(0x109);
    /// Feature identifier not saveable.
    pub const FEAT_NOT_SAVEABLE: Status = Status(0x10D);
    /// Feature not changeable: Set Features of another value than the current one of a
    /// Feature whose capabilities say it cannot be changed.
    pub const FEAT_NOT_CHANGEABLE: Status = Status(0x10E);
    /// Feature not namespace specific: Set Features of a controller-scope Feature naming a
    /// valid namespace.
    pub const FEAT_NOT_NS_SPECIFIC: Status = Status(0x10F);
    /// Connect: incompatible format.
    pub const CONNECT_FORMAT: Status = Status(0x180);
    /// Connect: controller busy (no controller to be had now: transient, so without DNR).
    pub const CONNECT_BUSY: Status = Status(0x181);
    /// Connect: invalid parameters.
    pub const CONNECT_INVALID_PARAM: Status = Status(0x182);
    /// Connect: invalid host.
    pub const CONNECT_INVALID_HOST: Status = Status(0x184);
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: Status = Status(0x007);
    /// Command Aborted due to Failed Fused Command.
    pub const ABORTED_FUSED_FAIL: Status = Status(0x009);
    /// Command Aborted due to Missing Fused Command.
    pub const ABORTED_FUSED_MISSING: Status = Status(0x00A);
    /// Namespace is Write Protected.
    pub const NS_WRITE_PROTECTED: Status = Status(0x020);
    /// Host Identifier Inconsistent Format (a 64-bit host id asked of a fabrics controller).
    pub const HOST_ID_INCONSISTENT: Status = Status(0x018);
    /// Reservation Conflict (generic, NVM command set specific).
    pub const RESERVATION_CONFLICT: Status = Status(0x083);
    /// Write fault (media).
    pub const WRITE_FAULT: Status = Status(0x280);
    /// Unrecovered read error (media).
    pub const READ_ERROR: Status = Status(0x281);
    /// Compare failure (media).
    pub const COMPARE_FAILED: Status = Status(0x285);
    /// ANA persistent loss (path related).
    pub const ANA_PERSISTENT_LOSS: Status = Status(0x301);
    /// ANA inaccessible (path related).
    pub const ANA_INACCESSIBLE: Status = Status(0x302);
    /// ANA transition (path related, retryable).
    pub const ANA_TRANSITION: Status = Status(0x303);

    /// The CQE status field (phase 0), with DNR unless the error is worth retrying (DNR: the
    /// same command re-submitted is expected to fail; Base 2.0, Completion Queue Entry).
    pub fn field(self) -> u16 {
        if self.0 == 0 {
            return 0;
        }
        let retry = matches!(
            self,
            Status::NS_NOT_READY
                | Status::ANA_INACCESSIBLE
                | Status::ANA_TRANSITION
                | Status::TRANSIENT_TRANSPORT
                | Status::CONNECT_BUSY
        );
        (self.0 << 1) | if retry { 0 } else { 0x8000 }
    }
}

/// Read-only view of a 64-byte SQE.
#[derive(Clone, Copy)]
pub struct Sqe<'a>(pub &'a [u8; SQE_LEN]);

impl<'a> Sqe<'a> {
    /// The SQE at the start of `b`, if 64 bytes are there.
    pub fn new(b: &'a [u8]) -> Option<Self> {
        b.get(..SQE_LEN)?.try_into().ok().map(Sqe)
    }
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from(self.u32(at)) | (u64::from(self.u32(at + 4)) << 32)
    }
    /// Opcode.
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }
    /// FUSE bits.
    pub fn fuse(&self) -> u8 {
        self.0[1] & 3
    }
    /// Command identifier.
    pub fn cid(&self) -> u16 {
        self.u16(2)
    }
    /// Namespace id.
    pub fn nsid(&self) -> u32 {
        self.u32(4)
    }
    /// Fabrics command type.
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }
    /// SGL address (in-capsule: offset into the capsule data).
    pub fn sgl_addr(&self) -> u64 {
        self.u64(24)
    }
    /// SGL length.
    pub fn sgl_len(&self) -> u32 {
        self.u32(32)
    }
    /// SGL descriptor type byte (type << 4 | subtype).
    pub fn sgl_type(&self) -> u8 {
        self.0[39]
    }
    /// Command dword `n` (10..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        debug_assert!((10..=15).contains(&n));
        self.u32(40 + (n.clamp(10, 15) - 10) * 4)
    }
    /// Starting LBA (cdw10-11).
    pub fn slba(&self) -> u64 {
        self.u64(40)
    }
    /// Number of logical blocks (1-based, from the 0-based NLB in cdw12).
    pub fn nlb(&self) -> u32 {
        (self.cdw(12) & 0xFFFF) + 1
    }
    /// Force unit access (cdw12 bit 30).
    pub fn fua(&self) -> bool {
        self.cdw(12) & (1 << 30) != 0
    }
    /// Connect: record format.
    pub fn connect_recfmt(&self) -> u16 {
        self.u16(40)
    }
    /// Connect: queue id.
    pub fn connect_qid(&self) -> u16 {
        self.u16(42)
    }
    /// Connect: SQ size (0's based).
    pub fn connect_sqsize(&self) -> u16 {
        self.u16(44)
    }
    /// Connect: attributes.
    pub fn connect_cattr(&self) -> u8 {
        self.0[46]
    }
    /// Connect: keep-alive timeout in ms.
    pub fn connect_kato(&self) -> u32 {
        self.u32(48)
    }
    /// Property Get/Set: size attribute (0: 4 bytes, 1: 8 bytes).
    pub fn prop_attrib(&self) -> u8 {
        self.0[40]
    }
    /// Property Get/Set: offset.
    pub fn prop_offset(&self) -> u32 {
        self.u32(44)
    }
    /// Property Set: value.
    pub fn prop_value(&self) -> u64 {
        self.u64(48)
    }
}

/// SGL descriptor types the TCP transport uses.
pub mod sgl {
    /// Data block, offset subtype: in-capsule data.
    pub const INCAPSULE: u8 = 0x01;
    /// Transport data block, transport-specific subtype: data by R2T/H2CData or C2HData.
    pub const TRANSPORT: u8 = 0x5A;
}

/// Connect command attributes: the host disables SQ flow control.
pub const CATTR_DISABLE_SQFLOW: u8 = 1 << 2;

/// Encode a CQE.
pub fn cqe(result: u64, sqhd: u16, sqid: u16, cid: u16, status: Status) -> [u8; CQE_LEN] {
    let mut c = [0u8; CQE_LEN];
    c[0..8].copy_from_slice(&result.to_le_bytes());
    c[8..10].copy_from_slice(&sqhd.to_le_bytes());
    c[10..12].copy_from_slice(&sqid.to_le_bytes());
    c[12..14].copy_from_slice(&cid.to_le_bytes());
    c[14..16].copy_from_slice(&status.field().to_le_bytes());
    c
}

/// The fields of the Connect data the target uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectData<'a> {
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Controller id (0xFFFF on the admin queue: dynamic).
    pub cntlid: u16,
    /// Subsystem NQN (up to the first NUL; all [`NQN_FIELD_LEN`] bytes when there is none).
    pub subnqn: &'a [u8],
    /// Host NQN (up to the first NUL; all [`NQN_FIELD_LEN`] bytes when there is none).
    pub hostnqn: &'a [u8],
}

/// Size of an NQN field of the Connect data. An NQN is NUL-terminated, so one that fills the
/// whole field is not an NQN.
pub const NQN_FIELD_LEN: usize = 256;

impl ConnectData<'_> {
    /// The Connect data offset of the first NQN field that has no terminating NUL (SUBNQN
    /// 256, HOSTNQN 512), for Connect Invalid Parameters.
    pub fn unterminated_nqn(&self) -> Option<u64> {
        if self.subnqn.len() >= NQN_FIELD_LEN {
            Some(256)
        } else if self.hostnqn.len() >= NQN_FIELD_LEN {
            Some(512)
        } else {
            None
        }
    }
}

fn nul_str(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

/// Decode Connect data (at least 1024 bytes).
pub fn connect_data(b: &[u8]) -> Option<ConnectData<'_>> {
    let b = b.get(..CONNECT_DATA_LEN)?;
    let mut hostid = [0u8; 16];
    hostid.copy_from_slice(&b[..16]);
    Some(ConnectData {
        hostid,
        cntlid: u16::from_le_bytes([b[16], b[17]]),
        subnqn: nul_str(&b[256..512]),
        hostnqn: nul_str(&b[512..768]),
    })
}

fn put_str(buf: &mut [u8], s: &[u8], pad: u8) {
    let n = s.len().min(buf.len());
    buf[..n].copy_from_slice(&s[..n]);
    buf[n..].fill(pad);
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// What Identify Controller reports.
pub struct CtrlIdentity<'a> {
    /// Controller id.
    pub cntlid: u16,
    /// Subsystem NQN.
    pub subnqn: &'a str,
    /// Serial number (ASCII, at most 20).
    pub serial: &'a str,
    /// Discovery controller (else an I/O controller).
    pub discovery: bool,
    /// Highest namespace id the subsystem may have (NN and MNAN; `Subsystem::nn`).
    pub nn: u32,
    /// MDTS (power of two of 4 KiB pages).
    pub mdts: u8,
    /// Most commands outstanding per queue.
    pub maxcmd: u16,
    /// In-capsule data bytes accepted.
    pub incapsule: u32,
    /// Highest ANA group id the subsystem may have (ANAGRPMAX).
    pub anagrpmax: u32,
    /// ANA groups the subsystem may have (NANAGRPID; one descriptor each in the ANA log).
    pub nanagrpid: u32,
}

/// Model number reported in Identify Controller.
pub const MODEL: &str = "twinblk";
/// Firmware revision reported.
pub const FIRMWARE: &str = env!("CARGO_PKG_VERSION");
/// NVMe version reported (1.4: ANA).
pub const VERSION: u32 = 0x0001_0400;

/// CMIC of an I/O controller: the subsystem has several ports (bit 0: both sites' listeners)
/// and several controllers (bit 1), and reports ANA (bit 3).
pub const CMIC: u8 = (1 << 0) | (1 << 1) | (1 << 3);
/// CTRATT: 128-bit host identifiers (bit 0; the only kind a fabrics controller has).
pub const CTRATT: u32 = 1;
/// ANA transition time, seconds.
pub const ANATT: u8 = 10;
/// ANACAP: optimised, non-optimised, inaccessible and change states reported (bits 0, 1, 2
/// and 4; never persistent loss, bit 3: no path state maps to it); the group id of a namespace
/// never changes while it is attached (bit 6).
pub const ANACAP: u8 = 0x17 | (1 << 6);
/// Keep Alive granularity reported in Identify Controller KAS, in 100 ms units.
pub const KAS: u16 = 1;
/// Abort Command Limit (Identify Controller ACL, 0's based): at most ACL + 1 Abort commands
/// outstanding at once; the controller refuses the excess (`Status::ABORT_LIMIT`).
pub const ACL: u8 = 3;

/// Admin Submission Queue entries every controller takes (Connect SQSIZE up to ASQSZ - 1),
/// the discovery log entries' ASQSZ: for a message-based controller the Admin Queue's limit
/// is what ASQSZ says (Base 2.0, Queue Size), here the 4096 of any Admin Queue.
pub const ASQSZ: u16 = 4096;

/// The Keep Alive Timer feature's default on a transport that requires it, as TCP does: 2
/// minutes, a multiple of the KAS granularity already (Get Features 0Fh with SEL default).
pub const KATO_DEFAULT_MS: u32 = 120_000;

/// A keep-alive timeout as the controller applies it: rounded up to a multiple of the KAS
/// granularity (NVM Express Base 2.0, Keep Alive Timer feature), 0 (disabled) kept. The few
/// values above the largest multiple of 100 ms in 32 bits (49.7 days) are kept as they are.
pub fn kato_granular(ms: u32) -> u32 {
    let unit = u32::from(KAS) * 100;
    ms.checked_next_multiple_of(unit).unwrap_or(ms)
}

/// Warning composite temperature threshold (K), also the default over-temperature threshold.
pub const WCTEMP: u16 = 0x157;
/// The composite temperature the SMART / Health log reports (Kelvin; there is no sensor).
pub const COMPOSITE_TEMP: u16 = 0x141;
/// Critical composite temperature threshold (K).
pub const CCTEMP: u16 = 0x175;

/// Fill Identify Controller (4096 bytes; `b` zeroed by the caller). Offsets: NVM Express Base
/// 2.0, Identify Controller data structure (checked field by field by the tests).
pub fn identify_ctrl(b: &mut [u8], c: &CtrlIdentity<'_>) {
    put_str(&mut b[4..24], c.serial.as_bytes(), b' ');
    put_str(&mut b[24..64], MODEL.as_bytes(), b' ');
    put_str(&mut b[64..72], FIRMWARE.as_bytes(), b' ');
    b[72] = 6; // RAB
    b[76] = if c.discovery { 0 } else { CMIC };
    b[77] = c.mdts;
    put16(b, 78, c.cntlid);
    put32(b, 80, VERSION);
    // OAES: Namespace Attribute Notices (bit 8), ANA change notices (bit 11).
    put32(b, 92, if c.discovery { 0 } else { (1 << 8) | (1 << 11) });
    put32(b, 96, CTRATT);
    b[111] = if c.discovery { 2 } else { 1 }; // CNTRLTYPE
    b[258] = ACL; // ACL (0's based)
    b[259] = 3; // AERL (0's based): 4 outstanding
    b[260] = 0x03; // FRMW: slot 1 read-only, 1 slot
    b[261] = 0x04; // LPA: extended data for Get Log Page (offsets)
    put16(b, 266, WCTEMP);
    put16(b, 268, CCTEMP);
    put16(b, 320, KAS); // KAS: 100 ms granularity
    if !c.discovery {
        b[342] = ANATT;
        b[343] = ANACAP;
        put32(b, 344, c.anagrpmax); // ANAGRPMAX
        put32(b, 348, c.nanagrpid); // NANAGRPID
    }
    b[512] = 0x66; // SQES
    b[513] = 0x44; // CQES
    put16(b, 514, c.maxcmd);
    put32(b, 516, c.nn);
    // ONCS: Compare (bit 0), Dataset Management (bit 2), Write Zeroes (bit 3), Save and
    // Select Feature Support (bit 4: Get Features SEL; Set Features SV answered Feature
    // Identifier Not Saveable), Reservations (bit 5).
    put16(
        b,
        520,
        if c.discovery {
            0
        } else {
            1 | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5)
        },
    );
    if !c.discovery {
        put16(b, 522, 1); // FUSES: Compare and Write
        // ACWU (0's based) is bytes 533:532; 535:534 is OCFS (no Copy formats: zero).
        put16(b, 532, (ACWU_BLOCKS - 1) as u16);
    }
    // VWC: present (bit 0); Flush with NSID FFFFFFFFh not supported (bits 2:1 = 10b: such a
    // Flush is answered Invalid Namespace or Format).
    b[525] = if c.discovery { 0 } else { 0b101 };
    // SGLS: supported (bits 1:0 = 01), address as offset (bit 20: in-capsule data by offset),
    // Transport SGL Data Block descriptor (bit 21: subtype Ah, the data of every R2T/H2CData
    // and C2HData transfer).
    put32(b, 536, 1 | (1 << 20) | (1 << 21));
    put32(b, 540, c.nn); // MNAN
    put_str(&mut b[768..1024], c.subnqn.as_bytes(), 0);
    put32(b, 1792, ((64 + c.incapsule) / 16).max(4)); // IOCCSZ
    put32(b, 1796, 1); // IORCSZ
    b[1803] = 1; // MSDBD
}

/// Logical block size exponent of `block_size` (512 → 9).
pub fn lbads(block_size: u32) -> u8 {
    block_size.max(1).trailing_zeros() as u8
}

/// Fill Identify Namespace (4096 bytes; `b` zeroed); `write_protected`: the namespace refuses
/// every update (its volume is read-only), so a host attaches it read-only; `ptpl`: its
/// reservations persist through a power loss (RESCAP PTPLC).
pub fn identify_ns(
    b: &mut [u8],
    blocks: u64,
    block_size: u32,
    ana_group: u32,
    ids: &NsIds,
    write_protected: bool,
    ptpl: bool,
) {
    put64(b, 0, blocks);
    put64(b, 8, blocks);
    put64(b, 16, blocks);
    b[25] = 0; // NLBAF: one format
    b[26] = 0; // FLBAS
    b[30] = 1; // NMIC: shared (multipath)
    // RESCAP: all six types, IEKEY semantics of NVMe 1.3+ (bits 7:1); bit 0 PTPLC: persist
    // through power loss, when the reservations are kept in a state file.
    b[31] = 0xFE | u8::from(ptpl);
    b[33] = 0x01; // DLFEAT: deallocated blocks read as zeroes
    put32(b, 92, ana_group);
    b[99] = u8::from(write_protected); // NSATTR bit 0: currently write protected
    b[104..120].copy_from_slice(&ids.nguid);
    b[120..128].copy_from_slice(&ids.eui64);
    b[128 + 2] = lbads(block_size);
}

/// Fill the active namespace list with ids above `after` (4096 bytes; `b` zeroed).
pub fn active_ns_list(b: &mut [u8], nsids: impl Iterator<Item = u32>, after: u32) {
    let mut at = 0;
    for id in nsids.filter(|&id| id > after) {
        if at + 4 > b.len().min(IDENTIFY_LEN) {
            break;
        }
        put32(b, at, id);
        at += 4;
    }
}

/// Fill the namespace identification descriptor list (4 bytes of header, NIDT @0, NIDL @1,
/// then the identifier): EUI-64, NGUID, UUID, CSI = NVM.
pub fn ns_descriptors(b: &mut [u8], ids: &NsIds) {
    let mut at = 0;
    for (nidt, id) in [
        (1u8, &ids.eui64[..]),
        (2, &ids.nguid[..]),
        (3, &ids.uuid[..]),
        (4, &[0]),
    ] {
        b[at] = nidt;
        b[at + 1] = id.len() as u8;
        b[at + 4..at + 4 + id.len()].copy_from_slice(id);
        at += 4 + id.len();
    }
}

/// A namespace's globally unique identifiers, as Identify Namespace and the namespace
/// identification descriptors report them. A multipath host checks that every path to a
/// namespace reports the same ones, so they depend on the subsystem NQN and nsid only (never on
/// the site).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsIds {
    /// NGUID.
    pub nguid: [u8; 16],
    /// EUI-64 (locally administered: first byte's bit 1 set, bit 0 clear).
    pub eui64: [u8; 8],
    /// UUID (RFC 9562 version 8, variant 10b).
    pub uuid: [u8; 16],
}

impl NsIds {
    /// The identifiers of namespace `nsid` of subsystem `subnqn`.
    pub fn derive(subnqn: &str, nsid: u32) -> Self {
        let nguid = nguid(subnqn, nsid);
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&nguid[8..16]);
        eui64[0] = (eui64[0] | 0x02) & !0x01;
        let h = crate::checksum::crc32c_append(crate::checksum::crc32c(&nguid), b"uuid");
        let mut uuid = nguid;
        uuid[0..4].copy_from_slice(&h.to_be_bytes());
        uuid[6] = (uuid[6] & 0x0F) | 0x80; // version 8
        uuid[8] = (uuid[8] & 0x3F) | 0x80; // variant 10b
        Self { nguid, eui64, uuid }
    }
}

/// A derived NGUID: stable for a (subsystem, namespace) pair.
pub fn nguid(subnqn: &str, nsid: u32) -> [u8; 16] {
    let a = crate::checksum::crc32c(subnqn.as_bytes());
    let b = crate::checksum::crc32c_append(a, &nsid.to_le_bytes());
    let c = crate::checksum::crc32c_append(b, b"twinblk");
    let d = crate::checksum::crc32c_append(c, &a.to_le_bytes());
    let mut g = [0u8; 16];
    g[0..4].copy_from_slice(&a.to_be_bytes());
    g[4..8].copy_from_slice(&b.to_be_bytes());
    g[8..12].copy_from_slice(&c.to_be_bytes());
    g[12..16].copy_from_slice(&d.to_be_bytes());
    g
}

/// Size of the SMART log, the firmware slot log and a discovery entry.
pub const LOG_512: usize = 512;
/// Size of one discovery log entry (and of the discovery log header).
pub const DISC_ENTRY_LEN: usize = 1024;

/// Fill the SMART / health log (512 bytes; `b` zeroed).
pub fn smart_log(b: &mut [u8], temperature_warning: bool) {
    // Critical Warning bit 1: a temperature at or beyond one of its thresholds.
    b[0] = u8::from(temperature_warning) << 1;
    put16(b, 1, COMPOSITE_TEMP);
    b[3] = 100; // available spare
    b[4] = 10; // spare threshold
}

/// Fill the firmware slot log (512 bytes; `b` zeroed).
pub fn fw_slot_log(b: &mut [u8]) {
    b[0] = 1; // active slot 1
    put_str(&mut b[8..16], FIRMWARE.as_bytes(), b' ');
}

/// ANA states.
pub mod ana {
    /// Optimised.
    pub const OPTIMIZED: u8 = 0x01;
    /// Non-optimised.
    pub const NON_OPTIMIZED: u8 = 0x02;
    /// Inaccessible.
    pub const INACCESSIBLE: u8 = 0x03;
    /// Persistent loss.
    pub const PERSISTENT_LOSS: u8 = 0x04;
    /// Change.
    pub const CHANGE: u8 = 0x0F;
}

/// One ANA group descriptor's content.
pub struct AnaDesc<'a> {
    /// ANAGRPID (non-zero).
    pub id: u32,
    /// The group's change count.
    pub chgcnt: u64,
    /// ANA state ([`ana`]).
    pub state: u8,
    /// Namespaces in the group, ascending.
    pub nsids: &'a [u32],
}

/// Append the ANA log page (NVMe base spec, Asymmetric Namespace Access log, 0Ch): a 16-byte
/// header (bytes 7:0 change count, 9:8 number of descriptors), then per group a 32-byte
/// descriptor (3:0 ANAGRPID, 7:4 NNSID, 15:8 change count, 16 ANA state in bits 3:0) followed
/// by its NNSID namespace ids. `rgo` (Return Groups Only): no namespace ids, NNSID 0.
pub fn ana_log(out: &mut Vec<u8>, chgcnt: u64, groups: &[AnaDesc<'_>], rgo: bool) {
    out.extend_from_slice(&chgcnt.to_le_bytes());
    out.extend_from_slice(&(groups.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0; 6]);
    for g in groups {
        let (id, state, nsids) = (g.id, g.state, g.nsids);
        out.extend_from_slice(&id.to_le_bytes());
        let n = if rgo { 0 } else { nsids.len() as u32 };
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&g.chgcnt.to_le_bytes());
        out.push(state);
        out.extend_from_slice(&[0; 15]);
        if !rgo {
            for id in nsids {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
    }
}

/// One discovery log entry.
pub struct DiscEntry<'a> {
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// Port id.
    pub portid: u16,
    /// TCP port as text.
    pub trsvcid: &'a str,
    /// Subsystem NQN.
    pub subnqn: &'a str,
    /// Address as text.
    pub traddr: &'a str,
}

/// Append the discovery log header (1024 bytes).
pub fn disc_header(out: &mut Vec<u8>, genctr: u64, numrec: u64) {
    let start = out.len();
    out.extend_from_slice(&genctr.to_le_bytes());
    out.extend_from_slice(&numrec.to_le_bytes());
    out.resize(start + DISC_ENTRY_LEN, 0);
}

/// Append one discovery log entry (1024 bytes).
pub fn disc_entry(out: &mut Vec<u8>, e: &DiscEntry<'_>) {
    let start = out.len();
    out.resize(start + DISC_ENTRY_LEN, 0);
    let b = &mut out[start..];
    b[0] = 3; // TRTYPE: TCP
    b[1] = if e.ipv6 { 2 } else { 1 }; // ADRFAM
    b[2] = 2; // SUBTYPE: NVMe subsystem
    b[3] = 1 << 2; // TREQ: secure channel not specified; SQ flow control disable supported
    put16(b, 4, e.portid);
    put16(b, 6, 0xFFFF); // CNTLID: dynamic
    put16(b, 8, ASQSZ);
    put_str(&mut b[32..64], e.trsvcid.as_bytes(), 0);
    put_str(&mut b[256..512], e.subnqn.as_bytes(), 0);
    put_str(&mut b[512..768], e.traddr.as_bytes(), 0);
    // TSAS for TCP: SECTYPE 0 (none) at 768, already zero.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cqe_status_field_has_dnr_and_phase_zero() {
        let c = cqe(0x1234, 5, 1, 0xBEEF, Status::LBA_RANGE);
        assert_eq!(u16::from_le_bytes([c[14], c[15]]), (0x080 << 1) | 0x8000);
        assert_eq!(u16::from_le_bytes([c[12], c[13]]), 0xBEEF);
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 5);
        let ok = cqe(0, 0, 0, 1, Status::SUCCESS);
        assert_eq!(&ok[14..16], &[0, 0]);
        // Retryable: no DNR.
        assert_eq!(Status::NS_NOT_READY.field() & 0x8000, 0);
        assert_eq!(Status::CONNECT_BUSY.field(), 0x181 << 1);
    }

    #[test]
    fn sqe_fields_sit_where_the_spec_puts_them() {
        let mut s = [0u8; 64];
        s[0] = io::WRITE;
        s[2..4].copy_from_slice(&7u16.to_le_bytes());
        s[4..8].copy_from_slice(&1u32.to_le_bytes());
        s[32..36].copy_from_slice(&8192u32.to_le_bytes());
        s[39] = sgl::TRANSPORT;
        s[40..48].copy_from_slice(&100u64.to_le_bytes());
        s[48..52].copy_from_slice(&(15u32 | (1 << 30)).to_le_bytes());
        let q = Sqe::new(&s).unwrap();
        assert_eq!((q.opcode(), q.cid(), q.nsid()), (io::WRITE, 7, 1));
        assert_eq!((q.slba(), q.nlb(), q.fua()), (100, 16, true));
        assert_eq!((q.sgl_len(), q.sgl_type()), (8192, sgl::TRANSPORT));
        assert!(Sqe::new(&s[..63]).is_none());
    }

    #[test]
    fn identify_controller_offsets() {
        let mut b = vec![0u8; IDENTIFY_LEN];
        identify_ctrl(
            &mut b,
            &CtrlIdentity {
                cntlid: 9,
                subnqn: "nqn.x",
                serial: "SN",
                discovery: false,
                nn: 3,
                mdts: 5,
                maxcmd: 1024,
                incapsule: 8192,
                anagrpmax: 7,
                nanagrpid: 2,
            },
        );
        assert_eq!(u16::from_le_bytes([b[78], b[79]]), 9);
        assert_eq!(
            u32::from_le_bytes(b[344..348].try_into().unwrap()),
            7,
            "ANAGRPMAX"
        );
        assert_eq!(
            u32::from_le_bytes(b[348..352].try_into().unwrap()),
            2,
            "NANAGRPID"
        );
        assert_eq!(&b[768..773], b"nqn.x");
        assert_eq!(u32::from_le_bytes(b[516..520].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(b[1792..1796].try_into().unwrap()), 516);
        assert_eq!(b[76] & 8, 8);
        assert_eq!(&b[4..8], b"SN  ");
    }

    /// One field of a structure: (name, byte offset, width, expected little-endian value or
    /// padded bytes).
    type Field = (&'static str, usize, usize, Vec<u8>);

    fn int(v: u64, width: usize) -> Vec<u8> {
        v.to_le_bytes()[..width.min(8)].to_vec()
    }

    fn text(s: &str, width: usize, pad: u8) -> Vec<u8> {
        let mut b = s.as_bytes().to_vec();
        b.resize(width, pad);
        b
    }

    /// Every field at its offset with its value, and every byte outside the table zero (so the
    /// table names every field the builder fills).
    fn check_fields(what: &str, b: &[u8], len: usize, table: &[Field]) {
        assert_eq!(b.len(), len, "{what}: size");
        let mut covered = vec![false; len];
        for (name, at, width, want) in table {
            assert_eq!(want.len(), *width, "{what} {name}: table entry width");
            assert_eq!(
                &b[*at..at + width],
                &want[..],
                "{what} {name} (bytes {}:{at})",
                at + width - 1
            );
            for c in &mut covered[*at..at + width] {
                assert!(!*c, "{what} {name}: overlaps another field");
                *c = true;
            }
        }
        for (i, (&v, &c)) in b.iter().zip(&covered).enumerate() {
            assert!(
                c || v == 0,
                "{what}: byte {i} = {v:#x} is set but in no field"
            );
        }
    }

    /// Identify Controller, Identify Namespace, the namespace identification descriptors, the
    /// ANA log and the discovery log against the byte offsets and widths of NVM Express Base
    /// 2.0 and NVMe over Fabrics 1.1.
    #[test]
    fn identify_logs_and_discovery_fields_sit_at_their_spec_offsets() {
        let mut b = vec![0u8; IDENTIFY_LEN];
        identify_ctrl(
            &mut b,
            &CtrlIdentity {
                cntlid: 0x7FF9,
                subnqn: "nqn.x",
                serial: "TB0123ABCD",
                discovery: false,
                nn: 3,
                mdts: 5,
                maxcmd: 1024,
                incapsule: 8192,
                anagrpmax: 7,
                nanagrpid: 2,
            },
        );
        let ctrl: Vec<Field> = vec![
            ("SN", 4, 20, text("TB0123ABCD", 20, b' ')),
            ("MN", 24, 40, text(MODEL, 40, b' ')),
            ("FR", 64, 8, text(FIRMWARE, 8, b' ')),
            ("RAB", 72, 1, int(6, 1)),
            (
                "CMIC: multi-port, multi-controller, ANA",
                76,
                1,
                int(0x0B, 1),
            ),
            ("MDTS", 77, 1, int(5, 1)),
            ("CNTLID", 78, 2, int(0x7FF9, 2)),
            ("VER", 80, 4, int(0x0001_0400, 4)),
            (
                "OAES: namespace attribute and ANA change notices",
                92,
                4,
                int((1 << 8) | (1 << 11), 4),
            ),
            ("CTRATT: 128-bit host id", 96, 4, int(1, 4)),
            ("CNTRLTYPE: I/O", 111, 1, int(1, 1)),
            ("ACL", 258, 1, int(3, 1)),
            ("AERL", 259, 1, int(3, 1)),
            ("FRMW", 260, 1, int(3, 1)),
            ("LPA", 261, 1, int(4, 1)),
            ("WCTEMP", 266, 2, int(0x157, 2)),
            ("CCTEMP", 268, 2, int(0x175, 2)),
            ("KAS", 320, 2, int(1, 2)),
            ("ANATT", 342, 1, int(10, 1)),
            ("ANACAP", 343, 1, int(0x57, 1)),
            ("ANAGRPMAX", 344, 4, int(7, 4)),
            ("NANAGRPID", 348, 4, int(2, 4)),
            ("SQES", 512, 1, int(0x66, 1)),
            ("CQES", 513, 1, int(0x44, 1)),
            ("MAXCMD", 514, 2, int(1024, 2)),
            ("NN", 516, 4, int(3, 4)),
            ("ONCS", 520, 2, int(0x3D, 2)),
            ("FUSES", 522, 2, int(1, 2)),
            ("VWC", 525, 1, int(0b101, 1)),
            ("ACWU", 532, 2, int(31, 2)),
            ("OCFS", 534, 2, int(0, 2)),
            ("SGLS", 536, 4, int(1 | (1 << 20) | (1 << 21), 4)),
            ("MNAN", 540, 4, int(3, 4)),
            ("SUBNQN", 768, 256, text("nqn.x", 256, 0)),
            ("IOCCSZ", 1792, 4, int(516, 4)),
            ("IORCSZ", 1796, 4, int(1, 4)),
            ("MSDBD", 1803, 1, int(1, 1)),
        ];
        check_fields("Identify Controller", &b, IDENTIFY_LEN, &ctrl);

        let ids = NsIds::derive("nqn.x", 2);
        let mut b = vec![0u8; IDENTIFY_LEN];
        identify_ns(&mut b, 1000, 4096, 5, &ids, false, true);
        let ns: Vec<Field> = vec![
            ("NSZE", 0, 8, int(1000, 8)),
            ("NCAP", 8, 8, int(1000, 8)),
            ("NUSE", 16, 8, int(1000, 8)),
            ("NLBAF", 25, 1, int(0, 1)),
            ("FLBAS", 26, 1, int(0, 1)),
            ("NMIC: shared", 30, 1, int(1, 1)),
            ("RESCAP", 31, 1, int(0xFF, 1)),
            ("DLFEAT", 33, 1, int(1, 1)),
            ("ANAGRPID", 92, 4, int(5, 4)),
            ("NGUID", 104, 16, ids.nguid.to_vec()),
            ("EUI64", 120, 8, ids.eui64.to_vec()),
            ("LBAF0: LBADS 12", 128, 4, int(12 << 16, 4)),
        ];
        check_fields("Identify Namespace", &b, IDENTIFY_LEN, &ns);
        let mut b = vec![0u8; IDENTIFY_LEN];
        identify_ns(&mut b, 1000, 4096, 5, &ids, true, true);
        let mut wp = ns.clone();
        wp.push(("NSATTR: write protected", 99, 1, int(1, 1)));
        check_fields("Identify Namespace, write protected", &b, IDENTIFY_LEN, &wp);

        let mut b = vec![0u8; IDENTIFY_LEN];
        ns_descriptors(&mut b, &ids);
        let desc: Vec<Field> = vec![
            ("NIDT EUI-64", 0, 1, int(1, 1)),
            ("NIDL", 1, 1, int(8, 1)),
            ("EUI-64", 4, 8, ids.eui64.to_vec()),
            ("NIDT NGUID", 12, 1, int(2, 1)),
            ("NIDL", 13, 1, int(16, 1)),
            ("NGUID", 16, 16, ids.nguid.to_vec()),
            ("NIDT UUID", 32, 1, int(3, 1)),
            ("NIDL", 33, 1, int(16, 1)),
            ("UUID", 36, 16, ids.uuid.to_vec()),
            ("NIDT CSI", 52, 1, int(4, 1)),
            ("NIDL", 53, 1, int(1, 1)),
            ("CSI: NVM", 56, 1, int(0, 1)),
        ];
        check_fields(
            "Namespace Identification Descriptors",
            &b,
            IDENTIFY_LEN,
            &desc,
        );

        let mut b = Vec::new();
        let g = AnaDesc {
            id: 5,
            chgcnt: 9,
            state: ana::NON_OPTIMIZED,
            nsids: &[2, 4],
        };
        ana_log(&mut b, 11, &[g], false);
        let log: Vec<Field> = vec![
            ("CHGCNT", 0, 8, int(11, 8)),
            ("NGRPS", 8, 2, int(1, 2)),
            ("ANAGRPID", 16, 4, int(5, 4)),
            ("NNSID", 20, 4, int(2, 4)),
            ("group CHGCNT", 24, 8, int(9, 8)),
            ("ANAS", 32, 1, int(2, 1)),
            ("NSID 0", 48, 4, int(2, 4)),
            ("NSID 1", 52, 4, int(4, 4)),
        ];
        check_fields("ANA log", &b, 56, &log);

        let mut b = Vec::new();
        disc_header(&mut b, 3, 1);
        disc_entry(
            &mut b,
            &DiscEntry {
                ipv6: false,
                portid: 0x101,
                trsvcid: "4421",
                subnqn: "nqn.y",
                traddr: "127.0.0.1",
            },
        );
        let e = DISC_ENTRY_LEN;
        let disc: Vec<Field> = vec![
            ("GENCTR", 0, 8, int(3, 8)),
            ("NUMREC", 8, 8, int(1, 8)),
            ("RECFMT", 16, 2, int(0, 2)),
            ("TRTYPE: TCP", e, 1, int(3, 1)),
            ("ADRFAM: IPv4", e + 1, 1, int(1, 1)),
            ("SUBTYPE: NVM subsystem", e + 2, 1, int(2, 1)),
            ("TREQ", e + 3, 1, int(4, 1)),
            ("PORTID", e + 4, 2, int(0x101, 2)),
            ("CNTLID: dynamic", e + 6, 2, int(0xFFFF, 2)),
            ("ASQSZ", e + 8, 2, int(4096, 2)),
            ("EFLAGS", e + 10, 2, int(0, 2)),
            ("TRSVCID", e + 32, 32, text("4421", 32, 0)),
            ("SUBNQN", e + 256, 256, text("nqn.y", 256, 0)),
            ("TRADDR", e + 512, 256, text("127.0.0.1", 256, 0)),
            ("TSAS: SECTYPE none", e + 768, 1, int(0, 1)),
        ];
        check_fields("discovery log", &b, 2 * DISC_ENTRY_LEN, &disc);
    }

    #[test]
    fn namespace_ids_depend_on_the_subsystem_and_nsid_only() {
        let a = NsIds::derive("nqn.2026-11.io.twinblk:vol0", 1);
        assert_eq!(a, NsIds::derive("nqn.2026-11.io.twinblk:vol0", 1));
        assert_ne!(a, NsIds::derive("nqn.2026-11.io.twinblk:vol0", 2));
        assert_ne!(a, NsIds::derive("nqn.2026-11.io.twinblk:vol1", 1));
        assert_eq!(
            a.eui64[0] & 0x03,
            0x02,
            "EUI-64 locally administered, unicast"
        );
        assert_eq!(a.uuid[6] >> 4, 8, "UUID version 8");
        assert_eq!(a.uuid[8] >> 6, 0b10, "UUID variant");
    }

    #[test]
    fn connect_data_and_logs() {
        let mut d = vec![0u8; 1024];
        d[16..18].copy_from_slice(&0xFFFFu16.to_le_bytes());
        d[256..260].copy_from_slice(b"nqn1");
        d[512..515].copy_from_slice(b"hst");
        let c = connect_data(&d).unwrap();
        assert_eq!(
            (c.cntlid, c.subnqn, c.hostnqn),
            (0xFFFF, &b"nqn1"[..], &b"hst"[..])
        );
        assert!(connect_data(&d[..1000]).is_none());
        assert_eq!(c.unterminated_nqn(), None);
        // 255 bytes and the NUL: terminated; all 256 bytes: not.
        d[512..767].fill(b'h');
        assert_eq!(connect_data(&d).unwrap().unterminated_nqn(), None);
        d[767] = b'h';
        assert_eq!(connect_data(&d).unwrap().unterminated_nqn(), Some(512));
        d[256..512].fill(b'n');
        assert_eq!(connect_data(&d).unwrap().unterminated_nqn(), Some(256));
        let mut out = Vec::new();
        let one = AnaDesc {
            id: 1,
            chgcnt: 3,
            state: ana::OPTIMIZED,
            nsids: &[1, 2],
        };
        ana_log(&mut out, 3, &[one], false);
        assert_eq!(out.len(), 16 + 32 + 8);
        assert_eq!(out[16 + 16], ana::OPTIMIZED);
        out.clear();
        disc_header(&mut out, 1, 1);
        disc_entry(
            &mut out,
            &DiscEntry {
                ipv6: false,
                portid: 1,
                trsvcid: "4420",
                subnqn: "nqn.y",
                traddr: "127.0.0.1",
            },
        );
        assert_eq!(out.len(), 2048);
        assert_eq!(&out[1024 + 32..1024 + 36], b"4420");
        assert_eq!(&out[1024 + 512..1024 + 521], b"127.0.0.1");
        assert_ne!(nguid("a", 1), nguid("a", 2));
    }

    #[test]
    fn ana_log_with_two_groups_byte_by_byte() {
        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let groups = [
            AnaDesc {
                id: 1,
                chgcnt: 2,
                state: ana::OPTIMIZED,
                nsids: &[1],
            },
            AnaDesc {
                id: 2,
                chgcnt: 5,
                state: ana::INACCESSIBLE,
                nsids: &[2, 3],
            },
        ];
        let mut out = Vec::new();
        ana_log(&mut out, 7, &groups, false);
        // Header: 16 bytes; group 1: 32 + 4; group 2: 32 + 8.
        assert_eq!(out.len(), 16 + 36 + 40);
        assert_eq!(u64_at(&out, 0), 7, "header CHGCNT");
        assert_eq!(u16::from_le_bytes([out[8], out[9]]), 2, "NGRPS");
        assert!(out[10..16].iter().all(|&b| b == 0), "reserved");
        let g1 = &out[16..52];
        assert_eq!(u32_at(g1, 0), 1, "ANAGRPID");
        assert_eq!(u32_at(g1, 4), 1, "NNSID");
        assert_eq!(u64_at(g1, 8), 2, "group CHGCNT");
        assert_eq!(g1[16], 0x01, "optimised");
        assert!(g1[17..32].iter().all(|&b| b == 0), "reserved");
        assert_eq!(u32_at(g1, 32), 1, "nsid 1");
        let g2 = &out[52..];
        assert_eq!(u32_at(g2, 0), 2, "ANAGRPID");
        assert_eq!(u32_at(g2, 4), 2, "NNSID");
        assert_eq!(u64_at(g2, 8), 5, "group CHGCNT");
        assert_eq!(g2[16], 0x03, "inaccessible");
        assert!(g2[17..32].iter().all(|&b| b == 0), "reserved");
        assert_eq!((u32_at(g2, 32), u32_at(g2, 36)), (2, 3), "nsids 2, 3");
        // Return Groups Only: descriptors without namespace ids.
        out.clear();
        ana_log(&mut out, 7, &groups, true);
        assert_eq!(out.len(), 16 + 32 + 32);
        assert_eq!(
            (u32_at(&out, 16 + 4), u32_at(&out, 48 + 4)),
            (0, 0),
            "NNSID 0"
        );
        assert_eq!((out[16 + 16], out[48 + 16]), (0x01, 0x03));
    }
}
