//! GEMM micro-benchmark: f32 sgemm and int8 qgemm throughput on shapes from the real
//! models, per kernel family, as a fraction of a register-only peak loop.
//!
//! `cargo run --release --example gemm_micro --no-default-features [budget_ms]`
//! (wasm: see `gemm_microbench` in `src/api/wasm.rs`).

fn main() {
    let budget = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(400.0);
    print!("{}", edgepredict::cpu::simd::bench::report(budget));
}
