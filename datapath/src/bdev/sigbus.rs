//! Copies into a file's shared mapping that a failing file turns into an error, not a SIGBUS
//! that ends the daemon.
//!
//! Model: a store through a shared mapping of a file faults when its page is not there or not
//! writable; the kernel then reads the page in or asks the filesystem to make it writable. If
//! that fails (a disk's read error, a journal the filesystem aborted, a page past the end of a
//! file someone shrank, a tmpfs page that cannot come back from swap) the thread gets SIGBUS,
//! whose default is to end the process. A `pwrite` of the same bytes would return an error.
//! [`put`] makes the copy behave like the `pwrite`: while it runs, this thread's *guard* names
//! the destination range. The process's SIGBUS handler (installed once, [`install`]) looks at
//! the faulting address: inside the running thread's guard, it puts a private anonymous page
//! over the faulting page (so the store, taken again, lands in memory of no file), notes the
//! fault, and returns; [`put`] then answers false. Anywhere else, it hands the signal to the
//! handler installed before it (the Rust runtime's, which tells a stack overflow from other
//! faults) or to the default action, so every other SIGBUS still ends the process as before.
//!
//! Invariants:
//! - After [`put`] answered false the mapping holds pages that are not the file's: its owner
//!   must never use it again (neither to write nor to read the file's bytes); it may only be
//!   unmapped. The bytes of the failed copy that reached the file are the caller's to treat as
//!   torn (the CDP journal stops and its recovery cuts a torn record).
//! - The guard is per thread and set only around the copy; the handler reads it with plain
//!   thread-local loads (constant-initialised cells without destructors: no allocation nor
//!   lock in the handler), and calls only `mmap` and `sigaction`.

use std::cell::Cell;
use std::sync::Once;
use std::sync::atomic::{Ordering, compiler_fence};

thread_local! {
    /// The range `[start, end)` this thread is copying into under guard; (0, 0) when none.
    static GUARD: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// A fault inside the guard was caught since the guard was set.
    static HIT: Cell<bool> = const { Cell::new(false) };
}

/// The SIGBUS action in place before [`install`] (the Rust runtime's stack-overflow handler,
/// or the default).
static mut PREVIOUS: Option<libc::sigaction> = None;
static INSTALL: Once = Once::new();

/// The system's page size.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

/// Install the process's SIGBUS handler (once; later calls do nothing).
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid value to fill; the handler has the
        // SA_SIGINFO signature; PREVIOUS is written once here, before the handler that reads
        // it is installed (the Once orders it before any use).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) == 0 {
                *std::ptr::addr_of_mut!(PREVIOUS) = Some(old);
                libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut());
            }
        }
        let _ = page_size();
    });
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, end) = GUARD.with(|g| g.get());
    if start <= addr && addr < end {
        let page = addr & !(page_size() - 1);
        // SAFETY: the page is inside the destination of this thread's running copy, a
        // mapping its owner gives up after the failure (the module's invariants); replacing it
        // with an anonymous page lets the faulting store complete harmlessly.
        let p = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                page_size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            HIT.with(|h| h.set(true));
            return;
        }
    }
    // Not ours: the handler before ours, or the default action (the fault is taken again on
    // return and ends the process).
    // SAFETY: PREVIOUS was set before this handler was installed and is never written again.
    let prev = unsafe { *std::ptr::addr_of!(PREVIOUS) };
    match prev {
        Some(p)
            if p.sa_sigaction != libc::SIG_DFL
                && p.sa_sigaction != libc::SIG_IGN
                && p.sa_flags & libc::SA_SIGINFO != 0 =>
        {
            // SAFETY: the previous action was installed with the SA_SIGINFO signature.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(p.sa_sigaction) };
            f(sig, info, ctx);
        }
        _ => {
            // SAFETY: resetting SIGBUS to its default action with a zeroed sigaction.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// Copy `len` bytes from `src` to `dst` (`super::stream::put`'s choice of stores, `worth`);
/// false when a page of the destination faulted with SIGBUS, the copy then incomplete and the
/// destination's mapping not to be used again (the module's invariants). [`install`] must
/// have run, or a fault still ends the process.
///
/// # Safety
/// As `super::stream::put`: `dst..dst + len` is writable memory of a mapping (of a file)
/// that no one else reads or writes during the copy, and `src..src + len` is readable and does
/// not overlap it.
pub unsafe fn put(dst: *mut u8, src: *const u8, len: usize, worth: bool) -> bool {
    GUARD.with(|g| g.set((dst as usize, dst as usize + len)));
    HIT.with(|h| h.set(false));
    compiler_fence(Ordering::SeqCst);
    // SAFETY: the caller's contract.
    unsafe { super::stream::put(dst, src, len, worth) };
    compiler_fence(Ordering::SeqCst);
    GUARD.with(|g| g.set((0, 0)));
    !HIT.with(|h| h.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    fn map(f: &std::fs::File, len: usize) -> *mut u8 {
        // SAFETY: a new shared mapping of an open file, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    }

    #[test]
    fn a_copy_into_a_page_past_the_files_end_is_an_error_not_a_crash() {
        install();
        let f = tempfile::tempfile().unwrap();
        let len = 4 * 4096;
        f.set_len(len as u64).unwrap();
        let p = map(&f, len);
        let src = vec![0x5au8; 8192];
        // Within the file: written, and a read of the file sees it.
        // SAFETY: inside the mapping, no overlap.
        assert!(unsafe { put(p, src.as_ptr(), 8192, false) });
        let mut back = vec![0u8; 8192];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, src);
        // The file shrunk under the mapping (a failing disk's stand-in): pages past its end
        // raise SIGBUS; the copy answers false and the process goes on.
        f.set_len(4096).unwrap();
        // SAFETY: as above (the pages past the end fault).
        assert!(!unsafe { put(p.add(8192), src.as_ptr(), 8192, true) });
        // The file's own page is untouched by the failed copy, and its size unchanged.
        f.read_exact_at(&mut back[..4096], 0).unwrap();
        assert_eq!(&back[..4096], &src[..4096]);
        assert_eq!(f.metadata().unwrap().len(), 4096);
        // A later good copy elsewhere in the same thread is not reported as failed.
        // SAFETY: as above (the first page is still the file's).
        assert!(unsafe { put(p, src.as_ptr(), 4096, false) });
        // SAFETY: the mapping made above, unmapped once.
        unsafe { libc::munmap(p.cast(), len) };
    }

    #[test]
    fn a_fault_outside_a_guard_still_ends_the_process_with_sigbus() {
        install();
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        let p = map(&f, 8192);
        // SAFETY: the child calls only system calls (ftruncate, a store, _exit) before it
        // ends; the parent waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: in the child: shrink the file, then store into the page past its end
            // without a guard (it faults); exit 3 if it did not.
            unsafe {
                libc::ftruncate(f.as_raw_fd(), 0);
                std::ptr::write_volatile(p, 1u8);
                libc::_exit(3);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS,
            "the child's status: {status:#x}"
        );
        // SAFETY: the mapping made above, unmapped once.
        unsafe { libc::munmap(p.cast(), 8192) };
    }
}
