//! Copies into memory that is not read again soon: a RAM volume larger than the CPU's caches,
//! a CDP base copy.
//!
//! Model: an ordinary copy into a cache line that is not in the cache first reads the line
//! from memory (read for ownership), then overwrites it and writes it back later: twice the
//! memory traffic of the bytes, and the copy waits for the reads. A block written at a random
//! place of a region many times the size of the caches is such a copy (the host keeps what it
//! reads back in its own page cache). Non-temporal stores write whole lines without reading
//! them: on the machine of benches/RESULTS.md, a 4 KiB block into a random place of 1 GiB
//! took about 310 ns against 620 ns with `memcpy`; into a region of 1 MiB, which stays
//! cached, 234 ns against 97 ns. So streaming is for regions at least [`REGION_PER_CACHE`]
//! times the largest cache ([`worth_streaming`]).
//!
//! Invariants:
//! - [`copy`] leaves exactly the bytes `copy_nonoverlapping` would; the edges not on a 32-byte
//!   boundary (16 without AVX) or not a whole 64 bytes are copied the ordinary way.
//! - Its stores are fenced (`sfence`) before it returns: a later store (a completion another
//!   thread reads) is never seen before them. The same thread reads its own stores back as
//!   with any store.
//! - With AVX (asked of the CPU at run time) the pieces move in 32-byte loads and stores, half
//!   the instructions of SSE2's 16-byte ones; the bytes and the fence are the same.
//! - On targets without the SSE2 stores (not x86_64) it is `copy_nonoverlapping`.

use std::sync::OnceLock;

/// A region is streamed into when it is at least this many times the largest CPU cache.
pub const REGION_PER_CACHE: u64 = 4;

/// Copies shorter than this are ordinary (a few lines: the fence costs more than it saves).
pub const MIN_LEN: usize = 4096;

/// The largest CPU cache's size in bytes, from sysfs (cpu0's cache with the highest level);
/// 32 MiB when none can be read.
pub fn largest_cache() -> u64 {
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(|| {
        largest_cache_in(std::path::Path::new("/sys/devices/system/cpu/cpu0/cache"))
            .unwrap_or(32 << 20)
    })
}

/// The size of the highest-level cache listed under `dir` (`index*/level`, `index*/size` as
/// sysfs writes them: "32768K").
fn largest_cache_in(dir: &std::path::Path) -> Option<u64> {
    let mut best: Option<(u32, u64)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let level: u32 = match std::fs::read_to_string(p.join("level")) {
            Ok(s) => match s.trim().parse() {
                Ok(l) => l,
                Err(_) => continue,
            },
            Err(_) => continue,
        };
        let Some(size) = std::fs::read_to_string(p.join("size"))
            .ok()
            .and_then(|s| parse_cache_size(s.trim()))
        else {
            continue;
        };
        if best.is_none_or(|(l, _)| level > l) {
            best = Some((level, size));
        }
    }
    best.map(|(_, s)| s)
}

/// "32768K", "1M", "512" (bytes).
fn parse_cache_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Whether copies into a region of `bytes` should stream: it is at least
/// [`REGION_PER_CACHE`] times the largest cache.
pub fn worth_streaming(bytes: u64) -> bool {
    bytes / REGION_PER_CACHE >= largest_cache()
}

/// Copy `len` bytes from `src` to `dst` with non-temporal stores for the 64-byte pieces from
/// `dst`'s first 32-byte boundary (16-byte without AVX; see the module's invariants).
///
/// # Safety
/// As `std::ptr::copy_nonoverlapping`: `src` readable and `dst` writable for `len` bytes, the
/// two not overlapping.
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the caller's contract; the CPU has AVX (checked just above).
            unsafe { copy_avx(dst, src, len) }
        } else {
            // SAFETY: the caller's contract.
            unsafe { copy_sse2(dst, src, len) }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's contract is copy_nonoverlapping's.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, len)
    }
}

/// [`copy`] with SSE2's 16-byte stores.
///
/// # Safety
/// As [`copy`].
#[cfg(target_arch = "x86_64")]
unsafe fn copy_sse2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    let head = ((16 - (dst as usize & 15)) & 15).min(len);
    let body = (len - head) & !63;
    // SAFETY: every access below stays within [0, len) of both buffers (the caller's
    // contract): the head, then whole 64-byte pieces up to head + body <= len, then the
    // rest. The streamed stores' addresses are 16-byte aligned (dst + head is, and the
    // pieces step by 64); SSE2 is part of x86_64.
    unsafe {
        if head > 0 {
            std::ptr::copy_nonoverlapping(src, dst, head);
        }
        let mut i = head;
        while i < head + body {
            let s = src.add(i).cast::<__m128i>();
            let d = dst.add(i).cast::<__m128i>();
            let a = _mm_loadu_si128(s);
            let b = _mm_loadu_si128(s.add(1));
            let c = _mm_loadu_si128(s.add(2));
            let e = _mm_loadu_si128(s.add(3));
            _mm_stream_si128(d, a);
            _mm_stream_si128(d.add(1), b);
            _mm_stream_si128(d.add(2), c);
            _mm_stream_si128(d.add(3), e);
            i += 64;
        }
        if i < len {
            std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
        }
        _mm_sfence();
    }
}

/// [`copy`] with AVX's 32-byte stores.
///
/// # Safety
/// As [`copy`], and the CPU must have AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn copy_avx(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm_sfence, _mm256_loadu_si256, _mm256_stream_si256};
    let head = ((32 - (dst as usize & 31)) & 31).min(len);
    let body = (len - head) & !63;
    // SAFETY: every access below stays within [0, len) of both buffers (the caller's
    // contract): the head, then whole 64-byte pieces up to head + body <= len, then the
    // rest. The streamed stores' addresses are 32-byte aligned (dst + head is, and the
    // pieces step by 64), as VMOVNTDQ requires; the caller checked that the CPU has AVX.
    unsafe {
        if head > 0 {
            std::ptr::copy_nonoverlapping(src, dst, head);
        }
        let mut i = head;
        while i < head + body {
            let s = src.add(i).cast::<__m256i>();
            let d = dst.add(i).cast::<__m256i>();
            let a = _mm256_loadu_si256(s);
            let b = _mm256_loadu_si256(s.add(1));
            _mm256_stream_si256(d, a);
            _mm256_stream_si256(d.add(1), b);
            i += 64;
        }
        if i < len {
            std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
        }
        _mm_sfence();
    }
}

/// Copy `len` bytes from `src` to `dst`: streamed ([`copy`]) into a region that is `worth`
/// it ([`worth_streaming`]) when the copy is at least [`MIN_LEN`], else an ordinary copy.
///
/// # Safety
/// As [`copy`].
pub unsafe fn put(dst: *mut u8, src: *const u8, len: usize, worth: bool) {
    // SAFETY: the caller's contract, which both copies share.
    unsafe {
        if worth && len >= MIN_LEN {
            copy(dst, src, len)
        } else {
            std::ptr::copy_nonoverlapping(src, dst, len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every offset of the destination within a line and every length around the pieces'
    /// edges leaves the bytes an ordinary copy leaves, and nothing outside them, with the
    /// stores the CPU chooses and with each kind it has.
    #[test]
    fn a_streamed_copy_leaves_exactly_the_bytes_of_an_ordinary_one() {
        type Copy = unsafe fn(*mut u8, *const u8, usize);
        let mut kinds: Vec<(&str, Copy)> = vec![("chosen", copy)];
        #[cfg(target_arch = "x86_64")]
        {
            kinds.push(("sse2", copy_sse2));
            if std::arch::is_x86_feature_detected!("avx") {
                kinds.push(("avx", copy_avx_checked));
            }
        }
        let src: Vec<u8> = (0..9000u32).map(|i| (i * 31 + 7) as u8).collect();
        for (kind, f) in kinds {
            for dst_off in 0..65 {
                for len in [
                    0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 200, 4095, 4096, 4097, 8192,
                ] {
                    for src_off in [0, 1, 5] {
                        let mut a = vec![0xEEu8; 8400];
                        let mut b = a.clone();
                        let s = &src[src_off..src_off + len];
                        // SAFETY: both ranges are inside their vectors, which do not overlap.
                        unsafe { f(a.as_mut_ptr().add(dst_off), s.as_ptr(), len) };
                        b[dst_off..dst_off + len].copy_from_slice(s);
                        assert!(
                            a == b,
                            "{kind}: dst_off {dst_off} len {len} src_off {src_off}"
                        );
                    }
                }
            }
        }
    }

    /// `copy_avx` for a CPU checked to have AVX (the test only takes it then).
    #[cfg(target_arch = "x86_64")]
    unsafe fn copy_avx_checked(dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: the caller's contract; the test pushed this only where the CPU has AVX.
        unsafe { copy_avx(dst, src, len) }
    }

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("32768K"), Some(32 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("x"), None);
        assert_eq!(parse_cache_size(""), None);
        let d = tempfile::tempdir().unwrap();
        for (i, level, size) in [(0, "1", "32K"), (2, "2", "1024K"), (3, "3", "32768K")] {
            let p = d.path().join(format!("index{i}"));
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("level"), format!("{level}\n")).unwrap();
            std::fs::write(p.join("size"), format!("{size}\n")).unwrap();
        }
        assert_eq!(largest_cache_in(d.path()), Some(32 << 20));
        assert!(worth_streaming(4 * largest_cache()));
        assert!(!worth_streaming(4 * largest_cache() - 4));
    }
}
