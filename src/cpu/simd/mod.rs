//! Instruction-set dispatch for the GEMM and convolution micro-kernels.
//!
//! On wasm the set is fixed when the module is built (`simd128`, `relaxed-simd`: a wasm
//! module cannot probe its host), so [`isa`] is a constant there. On x86-64 AVX2+FMA is
//! detected at first use and the answer cached. Everything else takes the portable
//! kernels, which are plain Rust that LLVM vectorizes for whatever the target enables.
//! Kernels for every set compiled in stay callable through [`available`], so tests can
//! check each one against the portable result.

pub mod bench;
pub(crate) mod f32k;
pub(crate) mod i16k;

/// A family of micro-kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust, any target.
    Portable,
    /// x86-64 AVX2 with FMA (runtime-detected).
    Avx2,
    /// wasm `simd128`.
    Simd128,
    /// wasm `simd128` plus relaxed SIMD (`f32x4_relaxed_madd`, `relaxed_dot`).
    Relaxed,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2+fma",
            Isa::Simd128 => "wasm simd128",
            Isa::Relaxed => "wasm relaxed-simd",
        }
    }
}

/// The best kernel family for this build and machine.
#[inline]
pub fn isa() -> Isa {
    #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
    return Isa::Relaxed;
    #[cfg(all(
        target_arch = "wasm32",
        target_feature = "simd128",
        not(target_feature = "relaxed-simd")
    ))]
    return Isa::Simd128;
    #[cfg(target_arch = "x86_64")]
    return x86::detected();
    #[allow(unreachable_code)]
    Isa::Portable
}

/// Every kernel family usable here, the portable one first.
pub fn available() -> Vec<Isa> {
    // Mutated only on targets with a SIMD family (not on plain wasm32).
    #[allow(unused_mut)]
    let mut v = vec![Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    if x86::detected() == Isa::Avx2 {
        v.push(Isa::Avx2);
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    v.push(Isa::Simd128);
    #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
    v.push(Isa::Relaxed);
    v
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Isa;
    use std::sync::atomic::{AtomicU8, Ordering};

    /// 0 = not probed yet, 1 = portable, 2 = AVX2+FMA.
    static DETECTED: AtomicU8 = AtomicU8::new(0);

    #[inline]
    pub fn detected() -> Isa {
        match DETECTED.load(Ordering::Relaxed) {
            1 => Isa::Portable,
            2 => Isa::Avx2,
            _ => {
                let avx2 =
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
                DETECTED.store(if avx2 { 2 } else { 1 }, Ordering::Relaxed);
                if avx2 {
                    Isa::Avx2
                } else {
                    Isa::Portable
                }
            }
        }
    }
}

/// Register-only f32 peak loop of `isa`'s GEMM tile instructions: (flops done, a value
/// to consume). See the micro-benchmark (`examples/gemm_micro.rs`).
pub fn peak_f32(isa: Isa, iters: usize) -> (f64, f32) {
    f32k::peak(isa, iters)
}

/// Register-only int8 GEMM peak loop (i16 pair dot + add): (integer ops done, a value
/// to consume).
pub fn peak_i8(isa: Isa, iters: usize) -> (f64, i32) {
    i16k::peak(isa, iters)
}
