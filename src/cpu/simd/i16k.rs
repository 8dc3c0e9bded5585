//! Integer micro-kernels for the 8-bit GEMM: operands are centered (value − zero point,
//! which always fits i16) and stored with pairs of depth steps interleaved, so one
//! `_mm256_madd_epi16` (AVX2) or `i32x4_dot_i16x8` (wasm simd128) multiplies two depth
//! steps and adds them into i32 lanes exactly: |product| ≤ 255², so a pair sum never
//! reaches i32's range and the instruction's one saturating case (two −32768² products)
//! cannot occur. Accumulation wraps like the portable `wrapping_add`, so every path
//! returns the same bits.

use super::f32k::{MR, NR};
use super::Isa;

pub type QTile = [[i32; NR]; MR];

/// acc[i][j] = Σ_q Σ_h ap[(q·MR+i)·2+h] · bp[(q·NR+j)·2+h] over `kq` depth pairs.
#[inline]
pub fn tile(isa: Isa, kq: usize, ap: &[i16], bp: &[i16]) -> QTile {
    if ap.len() < kq * MR * 2 || bp.len() < kq * NR * 2 {
        return [[0; NR]; MR];
    }
    match super::f32k::usable(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` returned Avx2, so AVX2 was detected; lengths checked above.
        Isa::Avx2 => unsafe { avx2::tile(kq, ap, bp) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        // SAFETY: lengths checked above.
        Isa::Simd128 | Isa::Relaxed => unsafe { wasm::tile(kq, ap, bp) },
        _ => tile_portable(kq, ap, bp),
    }
}

#[inline(always)]
fn tile_portable(kq: usize, ap: &[i16], bp: &[i16]) -> QTile {
    let mut acc = [[0i32; NR]; MR];
    for (a, b) in ap[..kq * MR * 2]
        .chunks_exact(MR * 2)
        .zip(bp[..kq * NR * 2].chunks_exact(NR * 2))
    {
        let mut b0 = [0i32; NR];
        let mut b1 = [0i32; NR];
        for j in 0..NR {
            b0[j] = b[2 * j] as i32;
            b1[j] = b[2 * j + 1] as i32;
        }
        for i in 0..MR {
            let (a0, a1) = (a[2 * i] as i32, a[2 * i + 1] as i32);
            let row = &mut acc[i];
            for j in 0..NR {
                row[j] = row[j].wrapping_add(a0 * b0[j] + a1 * b1[j]);
            }
        }
    }
    acc
}

/// Register-only loop of the tile's arithmetic (12 independent pair-dot + add chains);
/// returns the integer operations done (a multiply-add counts two) and a value the
/// caller must consume.
pub fn peak(isa: Isa, iters: usize) -> (f64, i32) {
    match super::f32k::usable(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` returned Avx2, so AVX2 was detected.
        Isa::Avx2 => (iters as f64 * 12.0 * 32.0, unsafe { avx2::peak(iters) }),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128 | Isa::Relaxed => (iters as f64 * 12.0 * 16.0, wasm::peak(iters)),
        _ => {
            let mut acc = [[1i32; 8]; 12];
            let b = std::hint::black_box([3i16; 16]);
            for _ in 0..iters {
                for r in acc.iter_mut() {
                    for (l, v) in r.iter_mut().enumerate() {
                        // The chain feeds back into the multiplicand so that nothing
                        // is loop-invariant.
                        let a = *v as i16 as i32;
                        *v = v.wrapping_add(a * b[2 * l] as i32 + a * b[2 * l + 1] as i32);
                    }
                }
            }
            (
                iters as f64 * 12.0 * 32.0,
                acc.iter().flatten().fold(0, |s, v| s ^ v),
            )
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{QTile, MR, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 must be available; `ap` holds kq·MR·2 and `bp` kq·NR·2 values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(kq: usize, ap: &[i16], bp: &[i16]) -> QTile {
        const { assert!(MR == 6 && NR == 16) };
        let mut c = [[_mm256_setzero_si256(); 2]; 6];
        let mut a = ap.as_ptr();
        let mut b = bp.as_ptr();
        for _ in 0..kq {
            let b0 = _mm256_loadu_si256(b as *const __m256i);
            let b1 = _mm256_loadu_si256(b.add(16) as *const __m256i);
            for (i, ci) in c.iter_mut().enumerate() {
                let pair = (a.add(2 * i) as *const i32).read_unaligned();
                let av = _mm256_set1_epi32(pair);
                ci[0] = _mm256_add_epi32(ci[0], _mm256_madd_epi16(av, b0));
                ci[1] = _mm256_add_epi32(ci[1], _mm256_madd_epi16(av, b1));
            }
            a = a.add(MR * 2);
            b = b.add(NR * 2);
        }
        let mut out = [[0i32; NR]; MR];
        for (o, ci) in out.iter_mut().zip(&c) {
            _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, ci[0]);
            _mm256_storeu_si256(o.as_mut_ptr().add(8) as *mut __m256i, ci[1]);
        }
        out
    }

    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn peak(iters: usize) -> i32 {
        let b = _mm256_set1_epi16(std::hint::black_box(3));
        let mut c = [_mm256_set1_epi32(1); 12];
        for _ in 0..iters {
            for ci in c.iter_mut() {
                *ci = _mm256_add_epi32(*ci, _mm256_madd_epi16(*ci, b));
            }
        }
        let mut s = _mm256_setzero_si256();
        for ci in c {
            s = _mm256_xor_si256(s, ci);
        }
        _mm256_extract_epi32::<0>(s) ^ _mm256_extract_epi32::<7>(s)
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::{QTile, MR, NR};
    use core::arch::wasm32::*;

    /// # Safety
    /// `ap` holds kq·MR·2 and `bp` kq·NR·2 values.
    #[inline(always)]
    pub unsafe fn tile(kq: usize, ap: &[i16], bp: &[i16]) -> QTile {
        const { assert!(MR == 6 && NR == 8) };
        let mut c = [[i32x4_splat(0); 2]; 6];
        let mut a = ap.as_ptr();
        let mut b = bp.as_ptr();
        for _ in 0..kq {
            let b0 = v128_load(b as *const v128);
            let b1 = v128_load(b.add(8) as *const v128);
            for (i, ci) in c.iter_mut().enumerate() {
                let av = v128_load32_splat(a.add(2 * i) as *const u32);
                ci[0] = i32x4_add(ci[0], i32x4_dot_i16x8(av, b0));
                ci[1] = i32x4_add(ci[1], i32x4_dot_i16x8(av, b1));
            }
            a = a.add(MR * 2);
            b = b.add(NR * 2);
        }
        let mut out = [[0i32; NR]; MR];
        for (o, ci) in out.iter_mut().zip(&c) {
            v128_store(o.as_mut_ptr() as *mut v128, ci[0]);
            v128_store(o.as_mut_ptr().add(4) as *mut v128, ci[1]);
        }
        out
    }

    pub fn peak(iters: usize) -> i32 {
        let b = i16x8_splat(std::hint::black_box(3));
        let mut c = [i32x4_splat(1); 12];
        for _ in 0..iters {
            for ci in c.iter_mut() {
                *ci = i32x4_add(*ci, i32x4_dot_i16x8(*ci, b));
            }
        }
        let mut s = i32x4_splat(0);
        for ci in c {
            s = v128_xor(s, ci);
        }
        i32x4_extract_lane::<0>(s) ^ i32x4_extract_lane::<3>(s)
    }
}
