//! Test helpers shared by the layers' unit tests.

/// A seeded xorshift generator, for every randomised test of the layers (the mirror engine
/// and its parts, CDP's consolidation models).
pub struct Rng(pub u64);

impl Rng {
    /// The next value (never ends: not an iterator).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
