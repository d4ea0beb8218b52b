//! SCSI command layer, part one: the CDB decoder and sense data (SPC-4, SBC-3), pure.
//!
//! Model: [`decode`] turns a 16-byte CDB into a [`Cmd`] or the [`Sense`] to answer with
//! (an unknown opcode is ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE, a bad field
//! INVALID FIELD IN CDB). Ranges are checked against the volume later, by the connection,
//! which knows its size. [`Sense`] encodes fixed-format sense data.
//!
//! Invariants: the decoder never panics and never reads past 16 bytes; every opcode it
//! accepts is executed by the connection (and listed by REPORT SUPPORTED OPERATION CODES from
//! the same table, [`SUPPORTED`]), so no capability is claimed that is not there.

/// SCSI status codes.
pub mod status {
    /// GOOD.
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// CONDITION MET.
    pub const CONDITION_MET: u8 = 0x04;
    /// BUSY.
    pub const BUSY: u8 = 0x08;
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// TASK SET FULL.
    pub const TASK_SET_FULL: u8 = 0x28;
}

/// Opcodes the target executes.
pub mod opc {
    #![allow(missing_docs)]
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW: u8 = 0x1E;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const PREFETCH_10: u8 = 0x34;
    pub const RESERVE_10: u8 = 0x56;
    pub const PR_IN: u8 = 0x5E;
    pub const PR_OUT: u8 = 0x5F;
    pub const RELEASE_10: u8 = 0x57;
    pub const PREFETCH_16: u8 = 0x90;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const SYNC_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8A;
    pub const WRITE_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const SYNC_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const MAINTENANCE_OUT: u8 = 0xA4;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    /// SERVICE ACTION IN (16): READ CAPACITY (16).
    pub const SA_READ_CAPACITY_16: u16 = 0x10;
    /// SERVICE ACTION IN (16): GET LBA STATUS.
    pub const SA_GET_LBA_STATUS: u16 = 0x12;
    /// MAINTENANCE IN: REPORT TARGET PORT GROUPS.
    pub const SA_REPORT_TPG: u16 = 0x0A;
    /// MAINTENANCE OUT: SET TARGET PORT GROUPS.
    pub const SA_SET_TPG: u16 = 0x0A;
    /// MAINTENANCE IN: REPORT SUPPORTED OPERATION CODES.
    pub const SA_REPORT_OPCODES: u16 = 0x0C;
}

/// One supported command: opcode, service action (if it has one), CDB length, and the CDB
/// usage map (the bits the device server evaluates; SPC-4 §6.35.3).
pub struct Supported {
    /// Opcode.
    pub op: u8,
    /// Service action.
    pub sa: Option<u16>,
    /// CDB usage map (its length is the CDB length).
    pub usage: &'static [u8],
}

const fn s(op: u8, usage: &'static [u8]) -> Supported {
    Supported {
        op,
        sa: None,
        usage,
    }
}

/// Every command the target executes, for REPORT SUPPORTED OPERATION CODES. The CDB usage maps
/// (SPC-4 §6.35.3) have a 1 for every bit the device server evaluates: the decoder takes a value
/// from it or refuses some values of it, or the command honours it with nothing to do (DPO, as
/// MODE SENSE's DPOFUA says: no cache to keep pages out of; WRITE AND VERIFY's BYTCHK: the data
/// written is the data sent); and a 0 for bits it ignores (GROUP NUMBER, IMMED, the fields of
/// START STOP UNIT, MODE SELECT's PF, the CONTROL byte's FLAG) or treats as reserved, refusing
/// any value but zero (RDPROTECT and the like, ANCHOR, LBDATA / PBDATA, SP, DESC, NACA, LINK);
/// a service action field holds the service action.
/// `tests::cdb_usage_maps_are_the_bits_the_decoder_evaluates` checks every row against
/// [`decode`].
pub const SUPPORTED: &[Supported] = &[
    s(opc::TEST_UNIT_READY, &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
    s(opc::REQUEST_SENSE, &[0x03, 0x00, 0x00, 0x00, 0xFF, 0x00]),
    s(opc::READ_6, &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x00]),
    s(opc::WRITE_6, &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x00]),
    s(opc::INQUIRY, &[0x12, 0x01, 0xFF, 0xFF, 0xFF, 0x00]),
    s(opc::MODE_SELECT_6, &[0x15, 0x00, 0x00, 0x00, 0xFF, 0x00]),
    s(opc::RESERVE_6, &[0x16, 0x00, 0x00, 0x00, 0x00, 0x00]),
    s(opc::RELEASE_6, &[0x17, 0x00, 0x00, 0x00, 0x00, 0x00]),
    s(opc::MODE_SENSE_6, &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x00]),
    s(opc::START_STOP_UNIT, &[0x1B, 0x00, 0x00, 0x00, 0x00, 0x00]),
    s(opc::PREVENT_ALLOW, &[0x1E, 0x00, 0x00, 0x00, 0x03, 0x00]),
    s(
        opc::READ_CAPACITY_10,
        &[0x25, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x01, 0x00],
    ),
    s(
        opc::READ_10,
        &[0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00],
    ),
    s(
        opc::WRITE_10,
        &[0x2A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00],
    ),
    s(
        opc::WRITE_VERIFY_10,
        &[0x2E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00],
    ),
    s(
        opc::VERIFY_10,
        &[0x2F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00],
    ),
    s(
        opc::PREFETCH_10,
        &[0x34, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00],
    ),
    s(
        opc::SYNC_CACHE_10,
        &[0x35, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00],
    ),
    s(
        opc::WRITE_SAME_10,
        &[0x41, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00],
    ),
    s(
        opc::UNMAP,
        &[0x42, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00],
    ),
    s(
        opc::RESERVE_10,
        &[0x56, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    ),
    s(
        opc::RELEASE_10,
        &[0x57, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    ),
    Supported {
        op: opc::PR_IN,
        sa: Some(0),
        usage: &[0x5E, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00],
    },
    Supported {
        op: opc::PR_IN,
        sa: Some(1),
        usage: &[0x5E, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00],
    },
    Supported {
        op: opc::PR_IN,
        sa: Some(2),
        usage: &[0x5E, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00],
    },
    Supported {
        op: opc::PR_IN,
        sa: Some(3),
        usage: &[0x5E, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00],
    },
    Supported {
        op: opc::PR_OUT,
        sa: Some(0),
        usage: &[0x5F, 0x00, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00],
    },
    Supported {
        op: opc::PR_OUT,
        sa: Some(1),
        usage: &[0x5F, 0x01, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00],
    },
    Supported {
        op: opc::PR_OUT,
        sa: Some(2),
        usage: &[0x5F, 0x02, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00],
    },
    Supported {
        op: opc::PR_OUT,
        sa: Some(3),
        usage: &[0x5F, 0x03, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00],
    },
    Supported {
        op: opc::PR_OUT,
        sa: Some(4),
        usage: &[0x5F, 0x04, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00],
    },
    Supported {
        op: opc::PR_OUT,
        sa: Some(5),
        usage: &[0x5F, 0x05, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00],
    },
    Supported {
        op: opc::PR_OUT,
        sa: Some(6),
        usage: &[0x5F, 0x06, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00],
    },
    s(
        opc::MODE_SELECT_10,
        &[0x55, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00],
    ),
    s(
        opc::MODE_SENSE_10,
        &[0x5A, 0x08, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00],
    ),
    Supported {
        op: opc::EXTENDED_COPY,
        sa: Some(0x00),
        usage: &[
            0x83, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    },
    Supported {
        op: opc::RECEIVE_COPY_RESULTS,
        sa: Some(0x00),
        usage: &[
            0x84, 0x00, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    },
    Supported {
        op: opc::RECEIVE_COPY_RESULTS,
        sa: Some(0x03),
        usage: &[
            0x84, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    },
    Supported {
        op: opc::RECEIVE_COPY_RESULTS,
        sa: Some(0x04),
        usage: &[
            0x84, 0x04, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    },
    s(
        opc::READ_16,
        &[
            0x88, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    ),
    s(
        opc::COMPARE_AND_WRITE,
        &[
            0x89, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xFF,
            0x00, 0x00,
        ],
    ),
    s(
        opc::WRITE_16,
        &[
            0x8A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    ),
    s(
        opc::WRITE_VERIFY_16,
        &[
            0x8E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    ),
    s(
        opc::VERIFY_16,
        &[
            0x8F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    ),
    s(
        opc::PREFETCH_16,
        &[
            0x90, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    ),
    s(
        opc::SYNC_CACHE_16,
        &[
            0x91, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    ),
    s(
        opc::WRITE_SAME_16,
        &[
            0x93, 0x09, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    ),
    Supported {
        op: opc::SERVICE_IN_16,
        sa: Some(opc::SA_READ_CAPACITY_16),
        usage: &[
            0x9E, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    },
    Supported {
        op: opc::SERVICE_IN_16,
        sa: Some(opc::SA_GET_LBA_STATUS),
        usage: &[
            0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    },
    s(
        opc::REPORT_LUNS,
        &[
            0xA0, 0x00, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
        ],
    ),
    Supported {
        op: opc::MAINTENANCE_IN,
        sa: Some(opc::SA_REPORT_TPG),
        // (Byte 1: PARAMETER DATA FORMAT, bits 7..5, read; the service action.)
        usage: &[
            0xA3, 0xEA, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
        ],
    },
    Supported {
        op: opc::MAINTENANCE_OUT,
        sa: Some(opc::SA_SET_TPG),
        usage: &[
            0xA4, 0x0A, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
        ],
    },
    Supported {
        op: opc::MAINTENANCE_IN,
        sa: Some(opc::SA_REPORT_OPCODES),
        usage: &[
            0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
        ],
    },
    s(
        opc::READ_12,
        &[
            0xA8, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
        ],
    ),
    s(
        opc::WRITE_12,
        &[
            0xAA, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
        ],
    ),
    s(
        opc::WRITE_VERIFY_12,
        &[
            0xAE, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
        ],
    ),
    s(
        opc::VERIFY_12,
        &[
            0xAF, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
        ],
    ),
];

/// Sense keys.
pub mod key {
    #![allow(missing_docs)]
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const COPY_ABORTED: u8 = 0xA;
    pub const ABORTED_COMMAND: u8 = 0xB;
    pub const MISCOMPARE: u8 = 0xE;
}

/// Sense data: key, additional sense code and qualifier, and the INFORMATION field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// ASC.
    pub asc: u8,
    /// ASCQ.
    pub ascq: u8,
    /// INFORMATION (valid when `Some`).
    pub info: Option<u32>,
    /// Sense-key specific field pointer: the CDB byte in error (valid when `Some`).
    pub field: Option<u16>,
}

impl Sense {
    pub(crate) const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Self {
            key,
            asc,
            ascq,
            info: None,
            field: None,
        }
    }
    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Self = Self::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
    /// ILLEGAL REQUEST / INVALID FIELD IN CDB.
    pub const INVALID_FIELD_CDB: Self = Self::new(key::ILLEGAL_REQUEST, 0x24, 0x00);
    /// ILLEGAL REQUEST / INVALID FIELD IN INFORMATION UNIT (the transport's fields disagree
    /// with the CDB).
    pub const INVALID_FIELD_IU: Self = Self::new(key::ILLEGAL_REQUEST, 0x0E, 0x03);
    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_PARAM: Self = Self::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR.
    pub const PARAM_LIST_LENGTH: Self = Self::new(key::ILLEGAL_REQUEST, 0x1A, 0x00);
    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Self = Self::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
    /// ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: Self = Self::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
    /// ILLEGAL REQUEST / SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_NOT_SUPPORTED: Self = Self::new(key::ILLEGAL_REQUEST, 0x39, 0x00);
    /// MEDIUM ERROR / UNRECOVERED READ ERROR.
    pub const READ_ERROR: Self = Self::new(key::MEDIUM_ERROR, 0x11, 0x00);
    /// MEDIUM ERROR / WRITE ERROR.
    pub const WRITE_ERROR: Self = Self::new(key::MEDIUM_ERROR, 0x0C, 0x00);
    /// HARDWARE ERROR / INTERNAL TARGET FAILURE.
    pub const INTERNAL: Self = Self::new(key::HARDWARE_ERROR, 0x44, 0x00);
    /// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE: Self = Self::new(key::MISCOMPARE, 0x1D, 0x00);
    /// DATA PROTECT / WRITE PROTECTED.
    pub const WRITE_PROTECTED: Self = Self::new(key::DATA_PROTECT, 0x27, 0x00);
    /// NOT READY / LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION.
    pub const ALUA_TRANSITION: Self = Self::new(key::NOT_READY, 0x04, 0x0A);
    /// NOT READY / LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE.
    pub const ALUA_UNAVAILABLE: Self = Self::new(key::NOT_READY, 0x04, 0x0C);
    /// UNIT ATTENTION / ASYMMETRIC ACCESS STATE CHANGED.
    pub const ALUA_CHANGED: Self = Self::new(key::UNIT_ATTENTION, 0x2A, 0x06);
    /// UNIT ATTENTION / BUS DEVICE RESET FUNCTION OCCURRED (a LUN or target reset).
    pub const RESET_OCCURRED: Self = Self::new(key::UNIT_ATTENTION, 0x29, 0x03);
    /// UNIT ATTENTION / COMMANDS CLEARED BY ANOTHER INITIATOR (a CLEAR TASK SET of another
    /// I_T nexus aborted this one's tasks; SAM-5, TAS=0).
    pub const COMMANDS_CLEARED: Self = Self::new(key::UNIT_ATTENTION, 0x2F, 0x00);
    /// I_T NEXUS LOSS OCCURRED (29h/07h).
    pub const NEXUS_LOSS: Self = Self::new(key::UNIT_ATTENTION, 0x29, 0x07);
    /// ABORTED COMMAND / DATA PHASE ERROR (a data transfer the target cannot accept).
    pub const DATA_PHASE_ERROR: Self = Self::new(key::ABORTED_COMMAND, 0x4B, 0x00);
    /// NO SENSE / NO ADDITIONAL SENSE INFORMATION.
    pub const NONE: Self = Self::new(key::NO_SENSE, 0, 0);

    /// With the INFORMATION field set.
    pub fn with_info(mut self, info: u32) -> Self {
        self.info = Some(info);
        self
    }

    /// With the field pointer set to CDB byte `byte`.
    pub fn at_cdb_byte(mut self, byte: u16) -> Self {
        self.field = Some(byte);
        self
    }

    /// Fixed-format sense data (SPC-4 §4.5.3), 18 bytes.
    pub fn fixed(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key;
        if let Some(i) = self.info {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&i.to_be_bytes());
        }
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(f) = self.field {
            b[15] = 0xC0; // SKSV, C/D: the field is in the CDB
            b[16..18].copy_from_slice(&f.to_be_bytes());
        }
        b
    }
}

/// What a data command addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rw {
    /// First logical block.
    pub lba: u64,
    /// Logical blocks.
    pub blocks: u32,
    /// Force unit access.
    pub fua: bool,
}

/// A decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// Allocation length.
        alloc: u32,
    },
    /// INQUIRY.
    Inquiry {
        /// Vital product data page requested.
        evpd: bool,
        /// Page code.
        page: u8,
        /// Allocation length.
        alloc: u32,
    },
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT 01h: the well known logical units only (the target has none).
        well_known: bool,
        /// Allocation length.
        alloc: u32,
    },
    /// READ CAPACITY (10).
    ReadCapacity10,
    /// READ CAPACITY (16).
    ReadCapacity16 {
        /// Allocation length.
        alloc: u32,
    },
    /// GET LBA STATUS.
    GetLbaStatus {
        /// Starting LBA.
        lba: u64,
        /// Allocation length.
        alloc: u32,
    },
    /// READ (6/10/12/16).
    Read(Rw),
    /// WRITE (6/10/12/16).
    Write(Rw),
    /// WRITE AND VERIFY (10/12/16): executed as a write (the medium is RAM or a file).
    WriteVerify(Rw),
    /// VERIFY (10/12/16): `bytchk` 0: the medium is read; 1: compared with the Data-Out.
    Verify {
        /// Range.
        rw: Rw,
        /// BYTCHK field.
        bytchk: u8,
    },
    /// SYNCHRONIZE CACHE (10/16): its range (blocks 0: to the end of the medium) is checked.
    SyncCache(Rw),
    /// WRITE SAME (10/16).
    WriteSame {
        /// Range (blocks 0: to the end of the medium).
        rw: Rw,
        /// UNMAP bit.
        unmap: bool,
        /// NDOB: no data-out buffer (zeroes).
        ndob: bool,
    },
    /// UNMAP.
    Unmap {
        /// Parameter list length.
        len: u32,
    },
    /// COMPARE AND WRITE.
    CompareAndWrite(Rw),
    /// MODE SENSE (6/10).
    ModeSense {
        /// The 10-byte form.
        ten: bool,
        /// Disable block descriptors.
        dbd: bool,
        /// Page control.
        pc: u8,
        /// Page code.
        page: u8,
        /// Subpage code.
        subpage: u8,
        /// Allocation length.
        alloc: u32,
    },
    /// MODE SELECT (6/10).
    ModeSelect {
        /// The 10-byte form.
        ten: bool,
        /// Parameter list length.
        len: u32,
    },
    /// START STOP UNIT.
    StartStop,
    /// PRE-FETCH (10/16): checked and answered GOOD (nothing is cached ahead).
    Prefetch(Rw),
    /// RESERVE (6/10): an exclusive reservation for this I_T nexus.
    Reserve,
    /// RELEASE (6/10).
    Release,
    /// PERSISTENT RESERVE IN.
    PrIn {
        /// Service action.
        sa: u8,
        /// Allocation length.
        alloc: u32,
    },
    /// PERSISTENT RESERVE OUT.
    PrOut {
        /// Service action.
        sa: u8,
        /// Scope and type (CDB byte 2).
        scope_type: u8,
        /// Parameter list length.
        len: u32,
    },
    /// PREVENT ALLOW MEDIUM REMOVAL.
    PreventAllow,
    /// REPORT SUPPORTED OPERATION CODES.
    ReportOpcodes {
        /// Reporting options.
        options: u8,
        /// Return command timeouts descriptors.
        rctd: bool,
        /// Requested opcode.
        op: u8,
        /// Requested service action.
        sa: u16,
        /// Allocation length.
        alloc: u32,
    },
    /// REPORT TARGET PORT GROUPS.
    ReportTpg {
        /// Extended header format requested.
        extended: bool,
        /// Allocation length.
        alloc: u32,
    },
    /// SET TARGET PORT GROUPS (explicit ALUA: a planned switchover, `alua.rs`).
    SetTpg {
        /// Parameter list length.
        len: u32,
    },
    /// EXTENDED COPY (LID1).
    ExtendedCopy {
        /// Parameter list length.
        len: u32,
    },
    /// RECEIVE COPY RESULTS (LID1 service actions: COPY STATUS, OPERATING PARAMETERS, FAILED
    /// SEGMENT DETAILS).
    ReceiveCopyResults {
        /// Service action.
        sa: u8,
        /// LIST IDENTIFIER.
        list_id: u8,
        /// Allocation length.
        alloc: u32,
    },
}

fn be16(b: &[u8]) -> u32 {
    u32::from(u16::from_be_bytes([b[0], b[1]]))
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The CDB length of an opcode (by its group code), SPC-4 §4.2.5.1.
pub fn cdb_len(op: u8) -> usize {
    match op >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

/// Decode a CDB.
pub fn decode(c: &[u8; 16]) -> Result<Cmd, Sense> {
    use opc::*;
    let op = c[0];
    let len = cdb_len(op);
    // CONTROL byte: NACA (bit 2) is not supported; linked commands (bit 0) are obsolete.
    if c[len - 1] & 0x05 != 0 {
        return Err(Sense::INVALID_FIELD_CDB);
    }
    let fua = c[1] & 0x08 != 0;
    let rw10 = || Rw {
        lba: u64::from(be32(&c[2..6])),
        blocks: be16(&c[7..9]),
        fua,
    };
    let rw12 = || Rw {
        lba: u64::from(be32(&c[2..6])),
        blocks: be32(&c[6..10]),
        fua,
    };
    let rw16 = || Rw {
        lba: be64(&c[2..10]),
        blocks: be32(&c[10..14]),
        fua,
    };
    // RDPROTECT / WRPROTECT / VRPROTECT (bits 5..7 of byte 1): no protection information.
    let no_prot = || {
        if c[1] & 0xE0 != 0 {
            Err(Sense::INVALID_FIELD_CDB)
        } else {
            Ok(())
        }
    };
    Ok(match op {
        TEST_UNIT_READY => Cmd::TestUnitReady,
        REQUEST_SENSE => {
            if c[1] & 0x01 != 0 {
                // Descriptor-format sense is not supported.
                return Err(Sense::INVALID_FIELD_CDB);
            }
            Cmd::RequestSense {
                alloc: u32::from(c[4]),
            }
        }
        INQUIRY => {
            let evpd = c[1] & 0x01 != 0;
            if c[1] & 0xFE != 0 || (!evpd && c[2] != 0) {
                return Err(Sense::INVALID_FIELD_CDB);
            }
            Cmd::Inquiry {
                evpd,
                page: c[2],
                alloc: be16(&c[3..5]),
            }
        }
        REPORT_LUNS => {
            let alloc = be32(&c[6..10]);
            if alloc < 16 || c[2] > 2 {
                return Err(Sense::INVALID_FIELD_CDB);
            }
            Cmd::ReportLuns {
                well_known: c[2] == 1,
                alloc,
            }
        }
        READ_CAPACITY_10 => {
            // PMI (byte 8 bit 0) is obsolete; an LBA without PMI is an error.
            if c[8] & 0x01 == 0 && be32(&c[2..6]) != 0 {
                return Err(Sense::INVALID_FIELD_CDB);
            }
            Cmd::ReadCapacity10
        }
        SERVICE_IN_16 => match u16::from(c[1] & 0x1F) {
            SA_READ_CAPACITY_16 => Cmd::ReadCapacity16 {
                alloc: be32(&c[10..14]),
            },
            SA_GET_LBA_STATUS => Cmd::GetLbaStatus {
                lba: be64(&c[2..10]),
                alloc: be32(&c[10..14]),
            },
            _ => return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1)),
        },
        READ_6 | WRITE_6 => {
            let lba = (u64::from(c[1] & 0x1F) << 16) | u64::from(be16(&c[2..4]));
            let blocks = if c[4] == 0 { 256 } else { u32::from(c[4]) };
            let rw = Rw {
                lba,
                blocks,
                fua: false,
            };
            if op == READ_6 {
                Cmd::Read(rw)
            } else {
                Cmd::Write(rw)
            }
        }
        READ_10 | READ_12 | READ_16 | WRITE_10 | WRITE_12 | WRITE_16 => {
            no_prot()?;
            let rw = match op {
                READ_10 | WRITE_10 => rw10(),
                READ_12 | WRITE_12 => rw12(),
                _ => rw16(),
            };
            if matches!(op, READ_10 | READ_12 | READ_16) {
                Cmd::Read(rw)
            } else {
                Cmd::Write(rw)
            }
        }
        WRITE_VERIFY_10 | WRITE_VERIFY_12 | WRITE_VERIFY_16 => {
            no_prot()?;
            // BYTCHK (bit 1) of WRITE AND VERIFY: the data is checked after writing.
            let mut rw = match op {
                WRITE_VERIFY_10 => rw10(),
                WRITE_VERIFY_12 => rw12(),
                _ => rw16(),
            };
            rw.fua = true;
            Cmd::WriteVerify(rw)
        }
        VERIFY_10 | VERIFY_12 | VERIFY_16 => {
            no_prot()?;
            let bytchk = (c[1] >> 1) & 0x03;
            if bytchk == 2 || bytchk == 3 {
                // 10b reserved; 11b (one block compared against every block) not supported.
                return Err(Sense::INVALID_FIELD_CDB);
            }
            let rw = match op {
                VERIFY_10 => rw10(),
                VERIFY_12 => rw12(),
                _ => rw16(),
            };
            Cmd::Verify {
                rw: Rw { fua: false, ..rw },
                bytchk,
            }
        }
        SYNC_CACHE_10 => Cmd::SyncCache(Rw {
            fua: false,
            ..rw10()
        }),
        SYNC_CACHE_16 => Cmd::SyncCache(Rw {
            fua: false,
            ..rw16()
        }),
        WRITE_SAME_10 | WRITE_SAME_16 => {
            no_prot()?;
            let anchor = c[1] & 0x10 != 0;
            let unmap = c[1] & 0x08 != 0;
            let ndob = op == WRITE_SAME_16 && c[1] & 0x01 != 0;
            if anchor || (c[1] & 0x06) != 0 {
                // ANCHOR is not supported; LBDATA/PBDATA are obsolete.
                return Err(Sense::INVALID_FIELD_CDB);
            }
            let rw = if op == WRITE_SAME_10 { rw10() } else { rw16() };
            Cmd::WriteSame {
                rw: Rw { fua: false, ..rw },
                unmap,
                ndob,
            }
        }
        UNMAP => {
            if c[1] & 0x01 != 0 {
                // ANCHOR.
                return Err(Sense::INVALID_FIELD_CDB);
            }
            Cmd::Unmap {
                len: be16(&c[7..9]),
            }
        }
        COMPARE_AND_WRITE => {
            no_prot()?;
            Cmd::CompareAndWrite(Rw {
                lba: be64(&c[2..10]),
                blocks: u32::from(c[13]),
                fua,
            })
        }
        MODE_SENSE_6 | MODE_SENSE_10 => {
            let ten = op == MODE_SENSE_10;
            Cmd::ModeSense {
                ten,
                dbd: c[1] & 0x08 != 0,
                pc: c[2] >> 6,
                page: c[2] & 0x3F,
                subpage: c[3],
                alloc: if ten { be16(&c[7..9]) } else { u32::from(c[4]) },
            }
        }
        MODE_SELECT_6 | MODE_SELECT_10 => {
            let ten = op == MODE_SELECT_10;
            if c[1] & 0x01 != 0 {
                // SP: saved pages are not supported.
                return Err(Sense::INVALID_FIELD_CDB);
            }
            Cmd::ModeSelect {
                ten,
                len: if ten { be16(&c[7..9]) } else { u32::from(c[4]) },
            }
        }
        START_STOP_UNIT => Cmd::StartStop,
        PR_IN => {
            let sa = c[1] & 0x1F;
            if sa > 3 {
                return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1));
            }
            Cmd::PrIn {
                sa,
                alloc: be16(&c[7..9]),
            }
        }
        PR_OUT => {
            let sa = c[1] & 0x1F;
            if sa > 6 {
                return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1));
            }
            Cmd::PrOut {
                sa,
                scope_type: c[2],
                len: be32(&c[5..9]),
            }
        }
        // (Byte 1 bit 3 is reserved here, not FUA.)
        PREFETCH_10 => Cmd::Prefetch(Rw {
            fua: false,
            ..rw10()
        }),
        PREFETCH_16 => Cmd::Prefetch(Rw {
            fua: false,
            ..rw16()
        }),
        RESERVE_6 | RELEASE_6 | RESERVE_10 | RELEASE_10 => {
            // Third-party and long-id reservations (RESERVE/RELEASE 10) are not supported.
            if matches!(op, RESERVE_10 | RELEASE_10) && c[1] & 0x12 != 0 {
                return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1));
            }
            if matches!(op, RESERVE_6 | RESERVE_10) {
                Cmd::Reserve
            } else {
                Cmd::Release
            }
        }
        PREVENT_ALLOW => {
            if c[4] & 0x03 > 1 {
                // Persistent prevention (the medium changer's) is not supported.
                return Err(Sense::INVALID_FIELD_CDB);
            }
            Cmd::PreventAllow
        }
        MAINTENANCE_IN => match u16::from(c[1] & 0x1F) {
            SA_REPORT_OPCODES => {
                let options = c[2] & 0x07;
                if options > 3 {
                    return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(2));
                }
                Cmd::ReportOpcodes {
                    options,
                    rctd: c[2] & 0x80 != 0,
                    op: c[3],
                    sa: be16(&c[4..6]) as u16,
                    alloc: be32(&c[6..10]),
                }
            }
            SA_REPORT_TPG => {
                // PARAMETER DATA FORMAT (bits 7..5): 000b length only, 001b extended header;
                // the others are reserved (SPC-4 §6.37).
                let format = c[1] >> 5;
                if format > 1 {
                    return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1));
                }
                Cmd::ReportTpg {
                    extended: format == 1,
                    alloc: be32(&c[6..10]),
                }
            }
            _ => return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1)),
        },
        MAINTENANCE_OUT => match u16::from(c[1] & 0x1F) {
            SA_SET_TPG => Cmd::SetTpg {
                len: be32(&c[6..10]),
            },
            _ => return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1)),
        },
        EXTENDED_COPY => {
            // LID1 only (service action 00h); LID4 and the token commands are not supported.
            if c[1] & 0x1F != 0 {
                return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1));
            }
            Cmd::ExtendedCopy {
                len: be32(&c[10..14]),
            }
        }
        RECEIVE_COPY_RESULTS => {
            let sa = c[1] & 0x1F;
            if !matches!(
                sa,
                rcr::COPY_STATUS | rcr::OPERATING_PARAMETERS | rcr::FAILED_SEGMENT_DETAILS
            ) {
                return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1));
            }
            Cmd::ReceiveCopyResults {
                sa,
                // Reserved for OPERATING PARAMETERS.
                list_id: if sa == rcr::OPERATING_PARAMETERS {
                    0
                } else {
                    c[2]
                },
                alloc: be32(&c[10..14]),
            }
        }
        _ => return Err(Sense::INVALID_OPCODE),
    })
}

/// Whether a command with opcode `op` modifies the medium (SBC-4 §4.10, write protection:
/// WRITE, WRITE AND VERIFY, WRITE SAME, UNMAP, COMPARE AND WRITE; FORMAT UNIT and the other
/// writing commands of SBC are not implemented, so they are refused as unknown opcodes). A
/// write-protected logical unit terminates these with DATA PROTECT / WRITE PROTECTED, judged by
/// the opcode alone, before any other field of the CDB.
pub fn modifies_medium(op: u8) -> bool {
    use opc::*;
    matches!(
        op,
        WRITE_6
            | WRITE_10
            | WRITE_12
            | WRITE_16
            | WRITE_VERIFY_10
            | WRITE_VERIFY_12
            | WRITE_VERIFY_16
            | WRITE_SAME_10
            | WRITE_SAME_16
            | UNMAP
            | COMPARE_AND_WRITE
    )
}

/// Data-Out bytes a command expects (its SCSI transfer length towards the target).
pub fn data_out_len(cmd: &Cmd, block: u32) -> u64 {
    let b = u64::from(block);
    match *cmd {
        Cmd::Write(rw) | Cmd::WriteVerify(rw) => u64::from(rw.blocks) * b,
        Cmd::Verify { rw, bytchk: 1 } => u64::from(rw.blocks) * b,
        Cmd::WriteSame { ndob: false, .. } => b,
        Cmd::CompareAndWrite(rw) => 2 * u64::from(rw.blocks) * b,
        Cmd::Unmap { len }
        | Cmd::ModeSelect { len, .. }
        | Cmd::PrOut { len, .. }
        | Cmd::ExtendedCopy { len }
        | Cmd::SetTpg { len } => u64::from(len),
        _ => 0,
    }
}

/// The block descriptors of an UNMAP parameter list `d` (the Data-Out received) as (LBA,
/// blocks), checked against a medium of `capacity` blocks (SBC-3 §5.28.2):
/// - an empty list is no error (PARAMETER LIST LENGTH 0); 1 to 7 bytes: PARAMETER LIST LENGTH
///   ERROR;
/// - the descriptors are the UNMAP BLOCK DESCRIPTOR DATA LENGTH's bytes after the 8-byte
///   header, or as many as arrived when the list is shorter (a parameter list length that
///   truncates the data is no error); a last descriptor that is incomplete (a length that is
///   no multiple of 16, or cut by the list's end) is ignored; UNMAP DATA LENGTH is not used;
/// - more than `max_descriptors`: INVALID FIELD IN PARAMETER LIST; a range past the end of
///   the medium (or whose end overflows): LOGICAL BLOCK ADDRESS OUT OF RANGE.
pub fn unmap_descriptors(
    d: &[u8],
    capacity: u64,
    max_descriptors: usize,
) -> Result<Vec<(u64, u64)>, Sense> {
    if d.is_empty() {
        return Ok(Vec::new());
    }
    if d.len() < 8 {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let bdl = usize::from(u16::from_be_bytes([d[2], d[3]]));
    let descs = &d[8..d.len().min(8 + bdl)];
    if descs.len() / 16 > max_descriptors {
        return Err(Sense::INVALID_FIELD_PARAM);
    }
    let mut out = Vec::with_capacity(descs.len() / 16);
    for c in descs.chunks_exact(16) {
        let lba = be64(&c[0..8]);
        let n = u64::from(be32(&c[8..12]));
        match lba.checked_add(n) {
            Some(end) if end <= capacity => out.push((lba, n)),
            _ => return Err(Sense::LBA_OUT_OF_RANGE),
        }
    }
    Ok(out)
}

/// RECEIVE COPY RESULTS service actions.
pub mod rcr {
    /// COPY STATUS.
    pub const COPY_STATUS: u8 = 0x00;
    /// OPERATING PARAMETERS.
    pub const OPERATING_PARAMETERS: u8 = 0x03;
    /// FAILED SEGMENT DETAILS.
    pub const FAILED_SEGMENT_DETAILS: u8 = 0x04;
}

/// The sense a device error becomes.
pub fn sense_of(e: crate::uring::Errno, write: bool) -> Sense {
    use crate::uring::Errno;
    match e {
        Errno::MISCOMPARE => Sense::MISCOMPARE,
        Errno::NOSPC => Sense::LBA_OUT_OF_RANGE,
        Errno::INVAL => Sense::INVALID_FIELD_CDB,
        Errno::NOTSUP => Sense::INVALID_OPCODE,
        Errno::PERM => Sense::WRITE_PROTECTED,
        // This site cannot serve it (no read lease, fenced, refused): another path may, so
        // the path's state, never a medium error (multipath does not fail over on those).
        Errno::SHUTDOWN | Errno::UNAVAILABLE => Sense::ALUA_UNAVAILABLE,
        // The leadership moved while it waited: not done, to be sent again.
        Errno::TRANSITION => Sense::ALUA_TRANSITION,
        _ if write => Sense::WRITE_ERROR,
        _ => Sense::READ_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uring::Errno;

    fn cdb(b: &[u8]) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..b.len()].copy_from_slice(b);
        c
    }

    /// Fields the device server evaluates that take other values to the same command: (opcode,
    /// byte, mask). PREVENT (the unit is not removable), SELECT REPORT (no well-known logical
    /// units), PMI (obsolete, the capacity either way), DPO and BYTCHK (honoured with nothing to
    /// do).
    const SAME_FOR_OTHER_VALUES: &[(u8, usize, u8)] = &[
        (opc::PREVENT_ALLOW, 4, 0x03),
        (opc::REPORT_LUNS, 2, 0xFF),
        (opc::READ_CAPACITY_10, 8, 0x01),
        // DPO (MODE SENSE's DPOFUA), and WRITE AND VERIFY's BYTCHK.
        (opc::READ_10, 1, 0x10),
        (opc::READ_12, 1, 0x10),
        (opc::READ_16, 1, 0x10),
        (opc::WRITE_10, 1, 0x10),
        (opc::WRITE_12, 1, 0x10),
        (opc::WRITE_16, 1, 0x10),
        (opc::VERIFY_10, 1, 0x10),
        (opc::VERIFY_12, 1, 0x10),
        (opc::VERIFY_16, 1, 0x10),
        (opc::COMPARE_AND_WRITE, 1, 0x10),
        (opc::WRITE_VERIFY_10, 1, 0x12),
        (opc::WRITE_VERIFY_12, 1, 0x12),
        (opc::WRITE_VERIFY_16, 1, 0x12),
    ];

    /// REPORT SUPPORTED OPERATION CODES' CDB usage maps (SPC-4 §6.35.3) have a 1 for every bit
    /// the decoder evaluates and a 0 for every bit it ignores or treats as reserved (refused
    /// whenever set): each bit alone set in a valid CDB must change the decoded command or
    /// refuse it when its map bit is 1, and must not change the decoded command when it is 0.
    /// Byte 0 is the opcode and a service action field holds the service action.
    #[test]
    fn cdb_usage_maps_are_the_bits_the_decoder_evaluates() {
        for row in SUPPORTED {
            let mut base = [0u8; 16];
            base[0] = row.op;
            if let Some(sa) = row.sa {
                base[1] = sa as u8;
            }
            if row.op == opc::REPORT_LUNS {
                base[9] = 16;
            }
            let want = decode(&base);
            assert!(
                want.is_ok(),
                "{:02x}: the base CDB decodes: {want:?}",
                row.op
            );
            let mut fails = Vec::new();
            for (byte, &map) in row.usage.iter().enumerate().skip(1) {
                for bit in 0..8 {
                    let m = 1u8 << bit;
                    if row.sa.is_some() && byte == 1 && m & 0x1F != 0 {
                        continue;
                    }
                    let mut c = base;
                    c[byte] ^= m;
                    let got = decode(&c);
                    let same_for_others = SAME_FOR_OTHER_VALUES
                        .iter()
                        .any(|&(o, b, f)| o == row.op && b == byte && f & m != 0);
                    if map & m != 0 {
                        if !(got != want || same_for_others) {
                            fails.push(format!(
                                "byte {byte} bit {bit} is in the usage map but ignored"
                            ));
                        }
                    } else if !(got == want || got.is_err()) {
                        fails.push(format!(
                            "byte {byte} bit {bit} is evaluated but not in the usage map"
                        ));
                    }
                }
            }
            assert!(fails.is_empty(), "{:02x} {:?}: {fails:#?}", row.op, row.sa);
        }
    }

    #[test]
    fn reads_and_writes_decode_in_every_size() {
        assert_eq!(
            decode(&cdb(&[0x08, 0x01, 0x02, 0x03, 0, 0])),
            Ok(Cmd::Read(Rw {
                lba: 0x010203,
                blocks: 256,
                fua: false
            }))
        );
        assert_eq!(
            decode(&cdb(&[0x2A, 0x08, 0, 0, 0, 9, 0, 0, 2, 0])),
            Ok(Cmd::Write(Rw {
                lba: 9,
                blocks: 2,
                fua: true
            }))
        );
        let mut r16 = cdb(&[0x88]);
        r16[9] = 5;
        r16[13] = 1;
        assert_eq!(
            decode(&r16),
            Ok(Cmd::Read(Rw {
                lba: 5,
                blocks: 1,
                fua: false
            }))
        );
        assert_eq!(decode(&cdb(&[0x28, 0x20])), Err(Sense::INVALID_FIELD_CDB));
    }

    #[test]
    fn unknown_opcodes_and_bad_fields_are_refused() {
        assert_eq!(decode(&cdb(&[0xC0])), Err(Sense::INVALID_OPCODE));
        assert_eq!(
            decode(&cdb(&[0x12, 0, 0x80, 0, 0xFF, 0])),
            Err(Sense::INVALID_FIELD_CDB)
        );
        assert_eq!(
            decode(&cdb(&[0x00, 0, 0, 0, 0, 0x04])),
            Err(Sense::INVALID_FIELD_CDB)
        );
        for s in SUPPORTED {
            assert_eq!(s.usage.len(), cdb_len(s.op), "opcode {:#x}", s.op);
            assert_eq!(s.usage[0], s.op);
        }
    }

    /// SPC-4 6.35.3: a command's CDB USAGE DATA holds its service action where the CDB's
    /// SERVICE ACTION field is (byte 1, bits 4..0, for every command here), and elsewhere a
    /// map of the bits the device server reads: so every bit the decoder reads is set (and
    /// none of a reserved field: the PR commands' byte 1 used to read 1Fh for every service
    /// action, REPORT SUPPORTED OPERATION CODES' bytes 1 and 2 8Ch 07h, its RCTD bit moved
    /// into the reserved bits of byte 1).
    #[test]
    fn the_cdb_usage_data_holds_each_service_action_in_its_field() {
        for s in SUPPORTED {
            if let Some(sa) = s.sa {
                assert_eq!(
                    u16::from(s.usage[1] & 0x1F),
                    sa,
                    "opcode {:#x} service action {sa:#x}: byte 1 {:#x}",
                    s.op,
                    s.usage[1]
                );
            }
        }
        let row = |op: u8, sa: u16| {
            SUPPORTED
                .iter()
                .find(|s| s.op == op && s.sa == Some(sa))
                .expect("listed")
                .usage
        };
        assert_eq!(&row(0xA3, 0x0C)[..3], &[0xA3, 0x0C, 0x87]);
        assert_eq!(&row(0xA3, 0x0A)[..2], &[0xA3, 0xEA]);
        for sa in 0..4 {
            assert_eq!(row(0x5E, sa)[1], sa as u8);
        }
        for sa in 0..7 {
            assert_eq!(&row(0x5F, sa)[1..3], &[sa as u8, 0xFF]);
        }
    }

    /// REPORT TARGET PORT GROUPS: PARAMETER DATA FORMAT 000b and 001b are served; 010b to
    /// 111b are reserved: INVALID FIELD IN CDB pointing at byte 1.
    #[test]
    fn report_target_port_groups_refuses_a_reserved_parameter_data_format() {
        for format in 0..8u8 {
            let got = decode(&cdb(&[
                0xA3,
                0x0A | format << 5,
                0,
                0,
                0,
                0,
                0,
                0,
                1,
                0,
                0,
                0,
            ]));
            if format < 2 {
                assert_eq!(
                    got,
                    Ok(Cmd::ReportTpg {
                        extended: format == 1,
                        alloc: 256
                    })
                );
            } else {
                assert_eq!(
                    got,
                    Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1)),
                    "{format}"
                );
                assert_eq!(&got.unwrap_err().fixed()[15..18], &[0xC0, 0, 1]);
            }
        }
    }

    #[test]
    fn set_target_port_groups_decodes_its_parameter_list_length() {
        // MAINTENANCE OUT, service action 0Ah, PARAMETER LIST LENGTH in bytes 6..9.
        let c = cdb(&[
            0xA4, 0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x01, 0x02, 0x08, 0, 0,
        ]);
        let cmd = decode(&c);
        assert_eq!(cmd, Ok(Cmd::SetTpg { len: 0x0001_0208 }));
        assert_eq!(data_out_len(&cmd.unwrap(), 512), 0x0001_0208);
        // Any other MAINTENANCE OUT service action: INVALID FIELD IN CDB at byte 1.
        assert_eq!(
            decode(&cdb(&[0xA4, 0x06, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0])),
            Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(1))
        );
        // NACA in the CONTROL byte (byte 11 of a 12-byte CDB).
        assert_eq!(
            decode(&cdb(&[0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0x04])),
            Err(Sense::INVALID_FIELD_CDB)
        );
        // Listed by REPORT SUPPORTED OPERATION CODES.
        assert!(
            SUPPORTED
                .iter()
                .any(|s| s.op == opc::MAINTENANCE_OUT && s.sa == Some(opc::SA_SET_TPG))
        );
    }

    #[test]
    fn only_commands_that_write_the_medium_are_write_protected() {
        for op in [
            0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x41, 0x93, 0x42, 0x89,
        ] {
            assert!(modifies_medium(op), "{op:#04x}");
        }
        // READ, VERIFY, SYNCHRONIZE CACHE, MODE SELECT, PERSISTENT RESERVE OUT, PRE-FETCH,
        // EXTENDED COPY (its target descriptors name the LUN written, checked as it writes).
        for op in [
            0x08, 0x28, 0xA8, 0x88, 0x2F, 0x8F, 0x35, 0x91, 0x15, 0x55, 0x5F, 0x34, 0x83,
        ] {
            assert!(!modifies_medium(op), "{op:#04x}");
        }
    }
    #[test]
    fn unmap_parameter_lists_follow_sbc3_lengths() {
        fn list(bdl: u16, descs: &[(u64, u32)], extra: &[u8]) -> Vec<u8> {
            let mut d = vec![0u8; 8];
            d[2..4].copy_from_slice(&bdl.to_be_bytes());
            for &(lba, n) in descs {
                d.extend_from_slice(&lba.to_be_bytes());
                d.extend_from_slice(&n.to_be_bytes());
                d.extend_from_slice(&[0; 4]);
            }
            d.extend_from_slice(extra);
            let udl = (d.len() - 2) as u16;
            d[0..2].copy_from_slice(&udl.to_be_bytes());
            d
        }
        let cap = 1000;
        // Whole descriptors; a NUMBER OF LOGICAL BLOCKS of 0 is no error.
        assert_eq!(
            unmap_descriptors(&list(32, &[(0, 8), (992, 8)], &[]), cap, 256),
            Ok(vec![(0, 8), (992, 8)])
        );
        assert_eq!(unmap_descriptors(&[], cap, 256), Ok(vec![]));
        assert_eq!(unmap_descriptors(&list(0, &[], &[]), cap, 256), Ok(vec![]));
        assert_eq!(
            unmap_descriptors(&[0, 6, 0, 0, 0, 0, 0], cap, 256),
            Err(Sense::PARAM_LIST_LENGTH)
        );
        // A descriptor data length that is no multiple of 16: the incomplete last one is
        // ignored, not an error.
        assert_eq!(
            unmap_descriptors(&list(24, &[(0, 8)], &[0xAA; 8]), cap, 256),
            Ok(vec![(0, 8)])
        );
        assert_eq!(
            unmap_descriptors(&list(8, &[], &[0xAA; 8]), cap, 256),
            Ok(vec![])
        );
        // A descriptor data length beyond the list received (the PARAMETER LIST LENGTH cut
        // it): the complete descriptors that arrived are used.
        assert_eq!(
            unmap_descriptors(&list(48, &[(0, 8), (16, 8)], &[1, 2, 3]), cap, 256),
            Ok(vec![(0, 8), (16, 8)])
        );
        // A descriptor data length shorter than the list: the descriptors beyond it are not
        // part of the list.
        assert_eq!(
            unmap_descriptors(&list(16, &[(0, 8), (2000, 8)], &[]), cap, 256),
            Ok(vec![(0, 8)])
        );
        // Limits: too many descriptors, a range past the end or overflowing u64, the largest
        // NUMBER OF LOGICAL BLOCKS (2^32 - 1) on a large enough medium.
        assert_eq!(
            unmap_descriptors(&list(48, &[(0, 1), (1, 1), (2, 1)], &[]), cap, 2),
            Err(Sense::INVALID_FIELD_PARAM)
        );
        assert_eq!(
            unmap_descriptors(&list(16, &[(993, 8)], &[]), cap, 256),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            unmap_descriptors(&list(16, &[(u64::MAX, 2)], &[]), cap, 256),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            unmap_descriptors(&list(16, &[(1, u32::MAX)], &[]), 1 << 33, 256),
            Ok(vec![(1, u64::from(u32::MAX))])
        );
    }

    #[test]
    fn sense_is_fixed_format() {
        let b = Sense::MISCOMPARE.with_info(3).fixed();
        assert_eq!(b[0], 0xF0);
        assert_eq!(b[2], key::MISCOMPARE);
        assert_eq!(&b[3..7], &[0, 0, 0, 3]);
        assert_eq!((b[7], b[12], b[13]), (10, 0x1D, 0));
    }
    #[test]
    fn a_refusal_another_path_may_serve_answers_the_path_state_never_a_medium_error() {
        for e in [Errno::UNAVAILABLE, Errno::SHUTDOWN] {
            assert_eq!(sense_of(e, true), Sense::ALUA_UNAVAILABLE, "{e:?} write");
            assert_eq!(sense_of(e, false), Sense::ALUA_UNAVAILABLE, "{e:?} read");
        }
        assert_eq!(sense_of(Errno::TRANSITION, true), Sense::ALUA_TRANSITION);
        assert_eq!(sense_of(Errno::IO, true), Sense::WRITE_ERROR);
        assert_eq!(sense_of(Errno::IO, false), Sense::READ_ERROR);
    }
}
