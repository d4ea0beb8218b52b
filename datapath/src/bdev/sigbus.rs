//! Copies into (and reads of) a file's shared mapping that a failing file turns into an
//! error, not a SIGBUS that ends the daemon.
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
//! fault, and returns; [`put`] then answers false. A [`ReadGuard`] names a range this thread
//! reads the same way (a second slot, so a guarded copy may read from a guarded range): a
//! faulting read sees zeroes and the guard reports it. Anywhere else, it hands the signal to the
//! handler installed before it (the Rust runtime's, which tells a stack overflow from other
//! faults) or to the default action, so every other SIGBUS still ends the process as before.
//!
//! Invariants:
//! - After [`put`] answered false the mapping holds pages that are not the file's: its owner
//!   must never use it again (neither to write nor to read the file's bytes); it may only be
//!   unmapped. The bytes of the failed copy that reached the file are the caller's to treat as
//!   torn (the CDP journal stops and its recovery cuts a torn record).
//! - The guard is per thread and set only around the copy; the handler reads it with
//!   thread-local atomic loads (constant-initialised, without destructors: no allocation nor
//!   lock in the handler), and calls only `mmap`, `sigaction` and `raise`, keeping `errno`.
//! - Only a fault the kernel raised (`si_code` > 0) at the faulting instruction is caught; a
//!   SIGBUS another process sent (`kill`, `sigqueue`) or a memory error reported ahead
//!   (`BUS_MCEERR_AO`) ends the process, as the default action does, and leaves no handler
//!   changed for a later fault of ours. If the anonymous page cannot be mapped (no memory, the
//!   map count's limit) the fault ends the process as before.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, compiler_fence};

/// One guarded range of a thread: `[start, end)` (start 0: none), and whether a fault in it
/// was caught since it was set.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    hit: AtomicBool,
}

/// What a slot held, to put back ([`Slot::restore`]).
type Saved = (usize, usize, bool);

impl Slot {
    const fn new() -> Slot {
        Slot {
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            hit: AtomicBool::new(false),
        }
    }

    /// Guard `[start, start + len)`, no fault seen yet; what the slot held before.
    fn set(&self, start: usize, len: usize) -> Saved {
        let saved = (
            self.start.load(Ordering::Relaxed),
            self.end.load(Ordering::Relaxed),
            self.hit.load(Ordering::Relaxed),
        );
        self.hit.store(false, Ordering::Relaxed);
        self.end.store(start + len, Ordering::Relaxed);
        self.start.store(start, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        saved
    }

    /// Whether a fault was caught since [`Slot::set`].
    fn hit(&self) -> bool {
        compiler_fence(Ordering::SeqCst);
        self.hit.load(Ordering::Relaxed)
    }

    /// Put back what [`Slot::set`] found.
    fn restore(&self, (start, end, hit): Saved) {
        compiler_fence(Ordering::SeqCst);
        self.start.store(start, Ordering::Relaxed);
        self.end.store(end, Ordering::Relaxed);
        self.hit.store(hit, Ordering::Relaxed);
    }

    /// `addr` is inside the guarded range (in the handler).
    fn covers(&self, addr: usize) -> bool {
        let start = self.start.load(Ordering::Relaxed);
        start != 0 && start <= addr && addr < self.end.load(Ordering::Relaxed)
    }
}

thread_local! {
    /// The range this thread is copying into ([`put`]).
    static WRITE: Slot = const { Slot::new() };
    /// The range this thread reads under a [`ReadGuard`].
    static READ: Slot = const { Slot::new() };
}

/// `si_code` of a machine-check memory error reported ahead of any access (action optional).
const BUS_MCEERR_AO: libc::c_int = 5;

/// The page size, read once by [`install`] (the handler calls no `sysconf`).
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// The SIGBUS action in place before [`install`] (the Rust runtime's stack-overflow handler,
/// or the default).
static mut PREVIOUS: Option<libc::sigaction> = None;
static INSTALL: Once = Once::new();

/// Install the process's SIGBUS handler (once; later calls do nothing).
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE.store(page as usize, Ordering::Relaxed);
        }
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
    });
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is this thread's; saved here and restored before returning.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel hands a valid siginfo for a SA_SIGINFO handler; `si_addr` is the
    // faulting address when `si_code` > 0 (raised by the kernel, not sent).
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // (BUS_MCEERR_AO, a memory error reported ahead, is not a fault of the running
    // instruction: not ours, and it takes the default action like a sent signal.)
    let fault = code > 0 && code != BUS_MCEERR_AO;
    let in_write = WRITE.with(|w| w.covers(addr));
    if fault && (in_write || READ.with(|r| r.covers(addr))) {
        let page_size = PAGE.load(Ordering::Relaxed);
        let page = addr & !(page_size - 1);
        // SAFETY: the page is inside the destination of this thread's running copy, or of
        // the range it reads under a guard, a mapping its owner gives up after the failure
        // (the module's invariants); replacing it with an anonymous page lets the faulting
        // access complete harmlessly (a read then sees zeroes).
        let p = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            let slot = |x: &Slot| x.hit.store(true, Ordering::Relaxed);
            if in_write {
                WRITE.with(slot);
            } else {
                READ.with(slot);
            }
            // SAFETY: as above.
            unsafe { *libc::__errno_location() = errno };
            return;
        }
    }
    // SAFETY: PREVIOUS was set before this handler was installed and is never written again.
    let prev = unsafe { *std::ptr::addr_of!(PREVIOUS) };
    let handler = prev.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    if fault && handler != libc::SIG_DFL && handler != libc::SIG_IGN {
        // A fault not ours: the handler before ours (the Rust runtime's tells a stack
        // overflow from other faults; for those it restores the default action and returns,
        // so the fault, taken again, ends the process).
        let siginfo = prev.is_some_and(|p| p.sa_flags & libc::SA_SIGINFO != 0);
        if siginfo {
            // SAFETY: the previous action was installed with the SA_SIGINFO signature.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(handler) };
            f(sig, info, ctx);
        } else {
            // SAFETY: the previous action was installed with the plain signature.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            f(sig);
        }
    } else {
        // The default action: a fault taken again on return ends the process; a sent
        // signal (code <= 0) is raised again, delivered once this handler returns.
        // SAFETY: resetting SIGBUS to its default action with a zeroed sigaction.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            if !fault {
                libc::raise(libc::SIGBUS);
            }
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
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
    let saved = WRITE.with(|w| w.set(dst as usize, len));
    // SAFETY: the caller's contract.
    unsafe { super::stream::put(dst, src, len, worth) };
    let hit = WRITE.with(|w| {
        let hit = w.hit();
        w.restore(saved);
        hit
    });
    !hit
}

/// Store `v` into `dst`, an aligned 8-byte word of a file's shared mapping, with one atomic
/// store (`Release`: another process's atomic load of the same page of the file sees the whole
/// value or the one before) under this thread's write guard; false when its page faulted with
/// SIGBUS (the store then landed in an anonymous page, and the mapping must only be unmapped:
/// the module's invariants). [`install`] must have run, or a fault still ends the process.
///
/// # Safety
/// `dst` is an aligned, writable word of a live shared mapping of a file, written by no one
/// else during the call other than with atomic stores.
pub unsafe fn store_u64(dst: *mut u64, v: u64) -> bool {
    let saved = WRITE.with(|w| w.set(dst as usize, 8));
    // SAFETY: the caller's contract (aligned, writable, accessed only atomically).
    unsafe { std::sync::atomic::AtomicU64::from_ptr(dst) }.store(v, Ordering::Release);
    let hit = WRITE.with(|w| {
        let hit = w.hit();
        w.restore(saved);
        hit
    });
    !hit
}

/// Reads of a mapping (of a file) under guard while the value lives: a page of it that faults
/// with SIGBUS reads as zeroes instead of ending the process, and [`ReadGuard::faulted`] says
/// so; whatever was read is then not to be trusted, and the mapping not to be used again (the
/// module's invariants). One per thread at a time (a second one replaces it until dropped).
pub struct ReadGuard {
    saved: Saved,
}

impl ReadGuard {
    /// Guard this thread's reads of `range` (installing the handler if it is not yet).
    pub fn new(range: &[u8]) -> ReadGuard {
        install();
        ReadGuard {
            saved: READ.with(|r| r.set(range.as_ptr() as usize, range.len())),
        }
    }

    /// A read of the range faulted since the guard was made.
    pub fn faulted(&self) -> bool {
        READ.with(|r| r.hit())
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        READ.with(|r| r.restore(self.saved));
    }
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

    /// A guarded atomic store of a word (the CDP done watermark's): into the file's page it
    /// lands in the file; into a page past the file's end it answers false, no SIGBUS.
    #[test]
    fn a_guarded_word_store_past_the_files_end_is_an_error_not_a_crash() {
        install();
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        let p = map(&f, 8192);
        // SAFETY: an aligned word of the mapping's first page, written only here.
        assert!(unsafe { store_u64(p.add(64).cast(), 0x1122_3344_5566_7788) });
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, 64).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_7788);
        f.set_len(4096).unwrap();
        // SAFETY: an aligned word of the mapping's second page, now past the file's end (the
        // guard catches the fault; the mapping is only unmapped after).
        assert!(!unsafe { store_u64(p.add(4096 + 64).cast(), 1) });
        // SAFETY: the mapping made above, unmapped once.
        unsafe { libc::munmap(p.cast(), 8192) };
    }

    /// Fork a child that runs `child` on a file of 8 KiB mapped shared (its descriptor and
    /// the mapping) and must die of SIGBUS (it exits 3 if `child` returns; no core file);
    /// assert it did.
    fn child_dies_of_sigbus(child: impl FnOnce(&std::fs::File, *mut u8)) {
        install();
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        let p = map(&f, 8192);
        // SAFETY: the child makes only system calls and plain stores before it ends (the
        // closures below); the parent waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: setrlimit with a valid struct (no core file of the child).
            unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
            child(&f, p);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(3) };
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

    #[test]
    fn a_fault_outside_a_guard_still_ends_the_process_with_sigbus() {
        child_dies_of_sigbus(|f, p| {
            // SAFETY: shrink the file, then store into the page past its end without a guard
            // (it faults).
            unsafe {
                libc::ftruncate(f.as_raw_fd(), 0);
                std::ptr::write_volatile(p, 1u8);
            }
        });
    }

    /// Send SIGBUS to this thread with `code` and an address 100 bytes into `p`.
    fn send_sigbus(code: libc::c_int, p: *mut u8) {
        // SAFETY: a zeroed siginfo filled as `sigqueue` would, its address field (at byte 16
        // on Linux, over si_pid and si_uid) set; sent to this thread, delivered before the
        // call returns.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            info.si_signo = libc::SIGBUS;
            info.si_code = code;
            std::ptr::write_unaligned(
                (&mut info as *mut libc::siginfo_t)
                    .cast::<u8>()
                    .add(16)
                    .cast::<usize>(),
                p as usize + 100,
            );
            assert_eq!(info.si_addr() as usize, p as usize + 100);
            libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                libc::getpid(),
                libc::gettid(),
                libc::SIGBUS,
                &info,
            );
        }
    }

    /// A SIGBUS another process sends (not a fault) ends the process, as the default action
    /// does, also while a copy is guarded and the signal names an address inside the guard:
    /// the guard covers only faults the kernel raises.
    #[test]
    fn a_sent_sigbus_still_ends_the_process() {
        child_dies_of_sigbus(|_, p| {
            WRITE.with(|w| w.set(p as usize, 8192));
            send_sigbus(libc::SI_QUEUE, p);
        });
    }

    /// A memory error reported ahead of any access (`BUS_MCEERR_AO`) at an address inside the
    /// guard is not a fault of the copy: it ends the process, as the default action does.
    #[test]
    fn an_early_memory_error_report_still_ends_the_process() {
        child_dies_of_sigbus(|_, p| {
            READ.with(|r| r.set(p as usize, 8192));
            send_sigbus(BUS_MCEERR_AO, p);
        });
    }

    /// A read of a page gone from under a guarded mapping reads zeroes and is reported, and
    /// the process goes on; a guarded copy from that mapping into another reads under both.
    #[test]
    fn a_guarded_read_of_a_page_past_the_files_end_reads_zeroes_and_is_reported() {
        install();
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&[9u8; 8192], 0).unwrap();
        let p = map(&f, 8192);
        // SAFETY: the mapping made above, 8 KiB, alive until the unmap below.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, 8192) };
        {
            let g = ReadGuard::new(bytes);
            // SAFETY: reads inside the mapping.
            assert_eq!(unsafe { std::ptr::read_volatile(p.add(4096)) }, 9);
            assert!(!g.faulted());
            f.set_len(4096).unwrap();
            // SAFETY: as above; the page past the end faults.
            assert_eq!(unsafe { std::ptr::read_volatile(p.add(4096)) }, 0);
            assert!(g.faulted(), "the fault is reported");
            // A guarded copy out of the guarded range into another file's mapping.
            let g2 = tempfile::tempfile().unwrap();
            g2.set_len(8192).unwrap();
            let q = map(&g2, 8192);
            // SAFETY: `q` is writable for 8 KiB, `p` readable (the gone page reads zeroes).
            let copied = unsafe { put(q, p, 8192, false) };
            assert!(copied, "the destination did not fault");
            // SAFETY: the mapping made above, unmapped once.
            unsafe { libc::munmap(q.cast(), 8192) };
        }
        // SAFETY: the mapping made above, unmapped once.
        unsafe { libc::munmap(p.cast(), 8192) };
    }
}
