//! Flushes of this site's initiators waiting for the peer's FLUSH_DONE ([`Flushes`]).
//!
//! Model: a flush is applied here and sent to the peer (FLUSH, whose `id` is the op's key);
//! it completes once both are done. [`Flushes`] owns the list of op keys still waiting for
//! FLUSH_DONE; it says whether an answer is for one of them and which to send again at the
//! next session. The engine sends, applies and settles.
//!
//! Invariants:
//! - A key is listed at most once, and exactly while its op's stage is `Flushing`.
//! - While the link is up a flush stays listed even past its timeout: its FLUSH_DONE will
//!   come and must find it (its id, the op's key, must not be reused meanwhile).

/// The flushes waiting for FLUSH_DONE (see the module doc).
#[derive(Default)]
pub(super) struct Flushes {
    list: Vec<usize>,
}

impl Flushes {
    /// Flush `k` waits for the peer.
    pub(super) fn push(&mut self, k: usize) {
        debug_assert!(!self.list.contains(&k), "flush {k} listed twice");
        self.list.push(k);
    }

    /// The flushes waiting, in list order (to send again at a session start).
    pub(super) fn waiting(&self) -> Vec<usize> {
        self.list.clone()
    }

    /// Take `k` off the list (its FLUSH_DONE came, or its timeout passed while the link was
    /// down); false when it was not listed.
    pub(super) fn remove(&mut self, k: usize) -> bool {
        match self.list.iter().position(|&f| f == k) {
            Some(p) => {
                self.list.swap_remove(p);
                true
            }
            None => false,
        }
    }

    /// Every flush, taken off the list.
    pub(super) fn take_all(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_finds_its_flush_once() {
        let mut f = Flushes::default();
        f.push(3);
        f.push(5);
        f.push(7);
        assert!(f.remove(3));
        assert!(!f.remove(3), "answered twice");
        assert_eq!(f.waiting(), vec![7, 5]);
        assert_eq!(f.take_all(), vec![7, 5]);
        assert!(f.waiting().is_empty());
    }
}
