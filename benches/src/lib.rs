//! Benchmarks live in `benches/` (criterion) and in the comparison scripts beside them.
