//! CRC32C (Castagnoli), the checksum of every format and wire this crate defines and of the
//! NVMe/TCP and iSCSI digests.
//!
//! Model: two functions over `crc-fast`, which folds with carry-less multiplication (PCLMULQDQ,
//! and VPCLMULQDQ where the CPU has it) and picks its code path once per process. It replaced
//! the `crc32c` crate because a 4 KiB payload, checksummed at both ends of every mirrored write
//! and twice per journaled write, costs about a quarter of the time (benches/RESULTS.md,
//! session 10). Invariant: the values are CRC32C's (RFC 3720, appendix B.4), unchanged by the
//! switch: every format written before reads the same.

/// The CRC32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// The CRC32C of the bytes whose CRC32C is `crc` followed by `data`.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    let mut d =
        crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    d.update(data);
    d.finalize() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_value_and_the_rfc_example_are_crc32c() {
        // The catalogue's check value for CRC-32/ISCSI, and RFC 3720 B.4's 32 bytes of zeroes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[]), 0);
    }

    #[test]
    fn appending_equals_the_checksum_of_the_whole() {
        let whole: Vec<u8> = (0..10_000u32).map(|i| (i * 131 + 7) as u8).collect();
        for cut in [0, 1, 3, 36, 64, 4096, 9_999, 10_000] {
            let (a, b) = whole.split_at(cut);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&whole), "cut at {cut}");
        }
        assert_eq!(crc32c_append(crc32c(b"12345"), b""), crc32c(b"12345"));
    }
}
