//! Per-reactor pools of aligned I/O buffers.
//!
//! Model: one reactor owns one [`BufPool`]: `count` buffers of `size` bytes carved from a
//! single 4 KiB-aligned allocation, so every buffer is O_DIRECT-safe and the whole pool can be
//! registered with the reactor's io_uring as fixed buffers (buffer index == pool index).
//!
//! Invariants:
//! - A buffer is either on the free list or owned by exactly one in-flight operation; the
//!   in-flight table returns it only after the operation's completion has been reaped.
//! - The backing allocation never moves or shrinks while the pool lives, so addresses handed to
//!   the kernel stay valid until the ring is dropped (the reactor drains the ring first).
//! - Requests larger than `size` or arriving while the pool is empty use a [`Bounce`] buffer
//!   (one aligned allocation, counted), never a shared buffer.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

/// Alignment of every I/O buffer: the largest logical block size O_DIRECT asks for.
pub const IO_ALIGN: usize = 4096;

/// A pool of equally sized, aligned buffers owned by one reactor.
pub struct BufPool {
    base: NonNull<u8>,
    layout: Layout,
    size: usize,
    free: Vec<u16>,
}

/// A buffer taken from the pool; give it back with [`BufPool::put`].
#[derive(Debug, PartialEq, Eq)]
pub struct BufId(pub u16);

impl BufPool {
    /// Allocate `count` buffers of `size` bytes (`size` a multiple of [`IO_ALIGN`]).
    pub fn new(count: u16, size: usize) -> Self {
        assert!(size.is_multiple_of(IO_ALIGN) && size > 0 && count > 0);
        let layout = Layout::from_size_align(size * count as usize, IO_ALIGN).expect("pool layout");
        // SAFETY: the layout has a non-zero size (checked above).
        let ptr = unsafe { alloc_zeroed(layout) };
        let base = NonNull::new(ptr).expect("buffer pool allocation failed");
        Self {
            base,
            layout,
            size,
            free: (0..count).rev().collect(),
        }
    }

    /// Bytes in each buffer.
    pub fn buf_size(&self) -> usize {
        self.size
    }

    /// Number of buffers in the pool.
    pub fn count(&self) -> usize {
        self.layout.size() / self.size
    }

    /// Free buffers right now.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Take a free buffer, if any.
    pub fn get(&mut self) -> Option<BufId> {
        self.free.pop().map(BufId)
    }

    /// Return a buffer taken with [`BufPool::get`].
    pub fn put(&mut self, id: BufId) {
        debug_assert!(!self.free.contains(&id.0), "buffer {} returned twice", id.0);
        self.free.push(id.0);
    }

    /// Address of buffer `id` (stable for the pool's life).
    pub fn ptr(&self, id: &BufId) -> *mut u8 {
        assert!((id.0 as usize) < self.count());
        // SAFETY: id < count, so the offset stays inside the allocation.
        unsafe { self.base.as_ptr().add(id.0 as usize * self.size) }
    }

    /// The first `len` bytes of buffer `id`.
    pub fn slice(&self, id: &BufId, len: usize) -> &[u8] {
        assert!(len <= self.size);
        // SAFETY: in bounds (asserted); the caller owns `id`, and no operation writes to it
        // while the caller holds it outside the ring (invariant of the in-flight table).
        unsafe { std::slice::from_raw_parts(self.ptr(id), len) }
    }

    /// The first `len` bytes of buffer `id`, writable.
    pub fn slice_mut(&mut self, id: &BufId, len: usize) -> &mut [u8] {
        assert!(len <= self.size);
        // SAFETY: as in `slice`, and `&mut self` excludes other slices of the pool.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(id), len) }
    }

    /// iovecs describing every buffer, for `register_buffers`.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count())
            .map(|i| libc::iovec {
                // SAFETY: i < count, inside the allocation.
                iov_base: unsafe { self.base.as_ptr().add(i * self.size) }.cast(),
                iov_len: self.size,
            })
            .collect()
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the reactor drops the pool only after
        // its ring has no operation in flight.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// An aligned one-off buffer for requests the pool cannot serve.
pub struct Bounce {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Bounce {
    /// A zeroed buffer of at least `len` bytes, aligned to [`IO_ALIGN`].
    pub fn new(len: usize) -> Self {
        let size = len.max(1).next_multiple_of(IO_ALIGN);
        let layout = Layout::from_size_align(size, IO_ALIGN).expect("bounce layout");
        // SAFETY: size is non-zero.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("bounce allocation failed");
        Self { ptr, layout }
    }

    /// Its size in bytes (at least the `len` it was made for).
    pub fn size(&self) -> usize {
        self.layout.size()
    }

    /// Start of the buffer.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The first `len` bytes.
    pub fn slice(&self, len: usize) -> &[u8] {
        assert!(len <= self.layout.size());
        // SAFETY: in bounds; owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }

    /// The first `len` bytes, writable.
    pub fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.layout.size());
        // SAFETY: in bounds; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: the pool and bounce buffers are plain memory owned by one value; moving that value to
// another thread moves the ownership with it (reactors are built on their own thread anyway).
unsafe impl Send for BufPool {}
// SAFETY: as above.
unsafe impl Send for Bounce {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_distinct_and_recycled() {
        let mut pool = BufPool::new(4, 8192);
        let a = pool.get().unwrap();
        let b = pool.get().unwrap();
        assert_ne!(a, b);
        assert_eq!(pool.ptr(&a) as usize % IO_ALIGN, 0);
        assert_eq!(pool.ptr(&b) as usize % IO_ALIGN, 0);
        pool.slice_mut(&a, 8192).fill(0xaa);
        assert!(pool.slice(&b, 8192).iter().all(|&x| x == 0));
        pool.put(a);
        pool.put(b);
        assert_eq!(pool.available(), 4);
        let all: Vec<_> = (0..4).map(|_| pool.get().unwrap()).collect();
        assert!(pool.get().is_none());
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn bounce_rounds_up_and_aligns() {
        let mut b = Bounce::new(5000);
        assert_eq!(b.ptr() as usize % IO_ALIGN, 0);
        b.slice_mut(8192).fill(1);
    }
}
