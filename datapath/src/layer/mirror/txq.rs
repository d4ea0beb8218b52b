//! The mirror's transmit side without copies: an update's data ([`Data`]) is one buffer that
//! its update owns and that the link's sends borrow; messages wait in a [`TxQueue`], headers
//! in a byte buffer and payloads by reference, and leave as one scatter list
//! ([`crate::uring::iov::SendList`]): header and payload of each message, several messages per
//! `sendmsg`.
//!
//! Model: the write data is copied once, into a [`Data`] taken from the engine's
//! [`DataPool`] (or moved there when a request arrives from another reactor with its bytes).
//! The update applies from it and keeps it for re-sends; a message carrying it holds a second
//! reference ([`Data::share`]) from [`TxQueue::push_data`] until the link's send of it
//! completed. A [`Data`] is read-only while shared: the only ways to change one
//! ([`Data::make_mut`], [`Data::clear`]) copy it first or drop the reference, so the bytes a
//! send points at cannot change under it; and the pool only keeps a buffer nobody else
//! references ([`DataPool::put`]), so a buffer in flight is never handed to a new update.
//!
//! Invariants:
//! - A [`Data`] referenced by a queued or in-flight message is neither reused nor changed
//!   until the message's send completed (the reference keeps it alive and read-only; it is
//!   dropped or given back to the pool only then, also when the link fails).
//! - A queue's referenced payloads sit at increasing positions of its byte buffer, each right
//!   after its message's header, whose checksum covers it ([`TxQueue::intact`] re-checks that;
//!   the link does so on every completed send in debug builds).

use super::wire::{self, Header};
use crate::uring::iov::SendList;
use std::sync::Arc;

/// An update's data (see the module doc). Empty costs nothing.
#[derive(Default, Debug)]
pub struct Data(Option<Arc<Vec<u8>>>);

impl Data {
    /// Wrap `v` (allocates the shared cell: for tests and cold paths; the engine takes its
    /// buffers from a [`DataPool`]).
    pub fn from_vec(v: Vec<u8>) -> Self {
        Self(Some(Arc::new(v)))
    }

    /// Another reference, for a message that carries these bytes.
    pub fn share(&self) -> Data {
        Data(self.0.clone())
    }

    /// Whether a message (queued or in flight) references these bytes too.
    pub fn shared(&self) -> bool {
        self.0.as_ref().is_some_and(|a| Arc::strong_count(a) > 1)
    }

    /// The bytes, to change: copied first when a message references them (a rare path: a
    /// compare-and-write decided while its forward is still in flight).
    pub fn make_mut(&mut self) -> &mut Vec<u8> {
        Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }

    /// Empty it: cleared in place when nobody else references it, else this reference is
    /// dropped (the message's stays intact).
    pub fn clear(&mut self) {
        match self.0.as_mut().and_then(Arc::get_mut) {
            Some(v) => v.clear(),
            None => self.0 = None,
        }
    }
}

impl From<Vec<u8>> for Data {
    /// `v` as an update's data (an empty vector without capacity costs no allocation).
    fn from(v: Vec<u8>) -> Self {
        if v.capacity() == 0 {
            Data(None)
        } else {
            Data::from_vec(v)
        }
    }
}

impl std::ops::Deref for Data {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], |v| v.as_slice())
    }
}

/// Spare data buffers of one engine, bounded in bytes of capacity (see the module doc).
pub struct DataPool {
    spare: Vec<Arc<Vec<u8>>>,
    bytes: usize,
    max: usize,
    /// Copies made by [`DataPool::fill`].
    fills: u64,
}

impl DataPool {
    /// A pool keeping at most `max` bytes of spare capacity.
    pub fn new(max: usize) -> Self {
        Self {
            spare: Vec::new(),
            bytes: 0,
            max,
            fills: 0,
        }
    }

    /// An empty buffer nobody else references (a kept one when there is).
    fn take(&mut self) -> Arc<Vec<u8>> {
        match self.spare.pop() {
            Some(a) => {
                self.bytes -= a.capacity();
                a
            }
            None => Arc::new(Vec::new()),
        }
    }

    /// `bytes` copied into a buffer of the update's own: the one copy of write data.
    pub fn fill(&mut self, bytes: &[u8]) -> Data {
        let mut a = self.take();
        let v = Arc::get_mut(&mut a).expect("spare buffers are referenced by nobody");
        v.clear();
        v.extend_from_slice(bytes);
        self.fills += 1;
        Data(Some(a))
    }

    /// The bytes of `v` moved into a buffer of the update's own (no copy); `v` gets an empty
    /// spare vector in exchange.
    pub fn adopt(&mut self, v: &mut Vec<u8>) -> Data {
        let mut a = self.take();
        let mine = Arc::get_mut(&mut a).expect("spare buffers are referenced by nobody");
        mine.clear();
        std::mem::swap(mine, v);
        Data(Some(a))
    }

    /// An empty vector with whatever capacity a spare buffer had (for a caller to reuse).
    pub fn take_vec(&mut self) -> Vec<u8> {
        let mut a = self.take();
        std::mem::take(Arc::get_mut(&mut a).expect("spare buffers are referenced by nobody"))
    }

    /// Give `d` back: kept for reuse when nobody else references it and there is room; a
    /// buffer a message still references is not kept (the message's reference frees it, or
    /// gives it back once its send completed).
    pub fn put(&mut self, d: Data) {
        if let Some(mut a) = d.0
            && let Some(v) = Arc::get_mut(&mut a)
        {
            v.clear();
            self.keep(a);
        }
    }

    fn keep(&mut self, a: Arc<Vec<u8>>) {
        let cap = a.capacity();
        if cap > 0 && self.bytes + cap <= self.max {
            self.bytes += cap;
            self.spare.push(a);
        }
    }

    /// Copies made into the pool's buffers so far.
    pub fn fills(&self) -> u64 {
        self.fills
    }

    /// Bytes of capacity kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Messages waiting to be sent, or being sent (see the module doc).
#[derive(Default)]
pub struct TxQueue {
    /// Headers and inline payloads, in order.
    bytes: Vec<u8>,
    /// Payloads sent from their update's buffer: each goes on the wire at this position of
    /// `bytes` (right after its header).
    refs: Vec<(usize, Data)>,
    /// Bytes of the referenced payloads.
    ref_bytes: usize,
}

impl TxQueue {
    /// A queue with room for `cap` bytes of headers and inline payloads.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(cap),
            refs: Vec::new(),
            ref_bytes: 0,
        }
    }

    /// Append a message with its payload copied (small payloads: handshakes, answers, resync
    /// copies read into a scratch buffer).
    pub fn push(&mut self, h: &Header, payload: &[u8]) {
        wire::encode(&mut self.bytes, h, payload);
    }

    /// Append a message whose payload is sent from `data` itself (no copy): the queue holds a
    /// reference until it is cleared.
    pub fn push_data(&mut self, h: &Header, data: &Data) {
        if data.is_empty() {
            return self.push(h, &[]);
        }
        wire::encode_header(&mut self.bytes, h, data);
        self.ref_bytes += data.len();
        self.refs.push((self.bytes.len(), data.share()));
    }

    /// The byte buffer, for encoders that append whole messages (inline payloads only).
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.ref_bytes
    }

    /// Move `other`'s messages after this queue's (no payload is copied).
    pub fn append(&mut self, other: &mut TxQueue) {
        if self.is_empty() {
            std::mem::swap(self, other);
            return;
        }
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.refs
            .extend(other.refs.drain(..).map(|(at, d)| (base + at, d)));
        self.ref_bytes += other.ref_bytes;
        other.bytes.clear();
        other.ref_bytes = 0;
    }

    /// Empty the queue; the payload references are handed to `release` (to drop, or to give
    /// back to a pool). Only once no send of the queue is in flight.
    pub fn clear(&mut self, mut release: impl FnMut(Data)) {
        self.bytes.clear();
        self.ref_bytes = 0;
        for (_, d) in self.refs.drain(..) {
            release(d);
        }
    }

    /// Every message, header and payload in wire order, as entries of `list`. The queue must
    /// not change until the list's sends completed (see [`SendList::push`]).
    pub fn fill(&self, list: &mut SendList) {
        let mut at = 0;
        for (pos, d) in &self.refs {
            list.push(&self.bytes[at..*pos]);
            list.push(d);
            at = *pos;
        }
        list.push(&self.bytes[at..]);
    }

    /// The wire bytes gathered into `out` (tests and the fuzz target read the stream as
    /// bytes; the link never gathers).
    pub fn gather(&self, out: &mut Vec<u8>) {
        let mut at = 0;
        for (pos, d) in &self.refs {
            out.extend_from_slice(&self.bytes[at..*pos]);
            out.extend_from_slice(d);
            at = *pos;
        }
        out.extend_from_slice(&self.bytes[at..]);
    }

    /// Whether every referenced payload still matches the checksum its header was encoded
    /// with (false: a buffer changed while a message referenced it).
    pub fn intact(&self) -> bool {
        self.refs.iter().all(|(pos, d)| {
            *pos >= wire::HEADER && wire::header_matches(&self.bytes[pos - wire::HEADER..*pos], d)
        })
    }

    /// Payload references held.
    pub fn refs(&self) -> usize {
        self.refs.len()
    }

    /// Payload references only this queue holds (their update was freed meanwhile).
    pub fn orphans(&self) -> usize {
        self.refs.iter().filter(|(_, d)| !d.shared()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::{Decoded, Type, decode};
    use super::*;

    fn write(seq: u64) -> Header {
        Header {
            seq,
            count: 4096,
            ..Header::new(Type::Write)
        }
    }

    #[test]
    fn a_queue_sends_headers_and_referenced_payloads_in_order_without_copying_them() {
        let mut pool = DataPool::new(1 << 20);
        let a = pool.fill(&[7u8; 4096]);
        let b = pool.fill(&[9u8; 4096]);
        let mut q = TxQueue::default();
        q.push(&Header::new(Type::Ping), &[]);
        q.push_data(&write(1), &a);
        let mut later = TxQueue::default();
        later.push_data(&write(2), &b);
        later.push(&Header::new(Type::Ack), &[]);
        q.append(&mut later);
        assert!(later.is_empty() && later.refs() == 0);
        assert_eq!(q.refs(), 2);
        assert!(a.shared() && b.shared());
        assert_eq!(q.len(), 4 * wire::HEADER + 2 * 4096);
        // The scatter list points at the update's own buffers.
        let mut list = SendList::default();
        q.fill(&mut list);
        assert_eq!((list.entries(), list.left()), (5, q.len()));
        // And the bytes decode as the messages, in order.
        let mut flat = Vec::new();
        q.gather(&mut flat);
        let mut seen = Vec::new();
        let mut at = 0;
        while let Decoded::Msg(h, r) = decode(&flat[at..]) {
            seen.push((h.ty, h.seq, flat[at + r.start..at + r.end].first().copied()));
            at += r.end;
        }
        assert_eq!(
            seen,
            [
                (Type::Ping, 0, None),
                (Type::Write, 1, Some(7)),
                (Type::Write, 2, Some(9)),
                (Type::Ack, 0, None)
            ]
        );
        assert!(q.intact());
        q.clear(drop);
        assert!(!a.shared() && !b.shared());
    }

    /// The engine frees an update while its message is in flight (the link dropped, the
    /// update was confirmed): its buffer is not reused for the next updates, and the message's
    /// bytes stay what its header's checksum says; once the send completed it is reused.
    #[test]
    fn a_buffer_in_flight_is_never_reused_nor_changed() {
        let mut pool = DataPool::new(1 << 20);
        let first = pool.fill(&[1u8; 4096]);
        let ptr = first.as_ptr();
        let mut inflight = TxQueue::default();
        inflight.push_data(&write(1), &first);
        pool.put(first);
        for i in 0..64u8 {
            let d = pool.fill(&[i; 4096]);
            assert_ne!(
                d.as_ptr(),
                ptr,
                "a buffer in flight was handed to a new update"
            );
            pool.put(d);
        }
        assert!(
            inflight.intact(),
            "a payload changed while its send was in flight"
        );
        inflight.clear(|d| pool.put(d));
        assert_eq!(
            pool.fill(&[5u8; 4096]).as_ptr(),
            ptr,
            "given back after the send"
        );
    }

    /// A shared buffer is copied before it changes (a compare-and-write decided while its
    /// forward is in flight drops its compare half).
    #[test]
    fn changing_a_shared_buffer_copies_it_first() {
        let mut pool = DataPool::new(1 << 20);
        let mut d = pool.fill(&[1u8; 4096]);
        let ptr = d.as_ptr();
        let mut inflight = TxQueue::default();
        inflight.push_data(&write(1), &d);
        d.make_mut().drain(..512);
        assert_eq!((d.len(), inflight.len()), (3584, wire::HEADER + 4096));
        assert_ne!(d.as_ptr(), ptr);
        assert!(inflight.intact());
        let mut e = pool.fill(&[2u8; 512]);
        let e_ptr = e.as_ptr();
        e.make_mut().drain(..256);
        assert_eq!(
            (e.len(), e.as_ptr()),
            (256, e_ptr),
            "changed in place when not shared"
        );
        let mut f = e.share();
        f.clear();
        assert_eq!(e.len(), 256, "clearing a shared reference leaves the bytes");
    }

    #[test]
    fn the_check_sees_a_payload_that_does_not_match_its_header() {
        let mut pool = DataPool::new(1 << 20);
        let d = pool.fill(&[3u8; 4096]);
        let mut q = TxQueue::default();
        q.push_data(&write(1), &d);
        assert!(q.intact());
        // The checksum is the header's last field: change it and the payload no longer
        // matches.
        q.bytes_mut()[wire::HEADER - 1] ^= 1;
        assert!(!q.intact());
    }

    #[test]
    fn the_pool_keeps_at_most_its_bytes_and_only_unreferenced_buffers() {
        let mut pool = DataPool::new(16 << 20);
        for _ in 0..4 {
            pool.put(Data::from_vec(Vec::with_capacity(8 << 20)));
        }
        assert_eq!(pool.bytes(), 16 << 20);
        let v = pool.take_vec();
        assert_eq!(v.capacity(), 8 << 20);
        assert_eq!(pool.bytes(), (16 << 20) - v.capacity());
        let mut req = vec![1u8; 4096];
        let d = pool.adopt(&mut req);
        assert_eq!(d.len(), 4096);
        assert!(req.is_empty());
        let shared = d.share();
        pool.put(d);
        assert_eq!(shared.len(), 4096, "a referenced buffer is not kept");
    }
}
