//! f32 micro-kernels: the MR×NR register tile of the packed GEMM, one-row panel
//! products, dot/axpy for the unpacked small-matrix paths, and a register-only peak
//! loop for the micro-benchmark. Every kernel has a portable body; the SIMD ones
//! compute the same sums in the same order per lane (FMA may round differently).

use super::Isa;

/// Rows of the register tile. x86-64: 6×16 is 12 AVX accumulators (of 16 registers).
/// wasm: 6×8 is 12 f32x4 accumulators, which V8 keeps in the 16 xmm registers of an
/// x86 host (and in the 32 of an ARM one).
#[cfg(any(target_arch = "x86_64", target_arch = "wasm32"))]
pub const MR: usize = 6;
#[cfg(not(any(target_arch = "x86_64", target_arch = "wasm32")))]
pub const MR: usize = 4;
/// Columns of the register tile.
#[cfg(target_arch = "wasm32")]
pub const NR: usize = 8;
#[cfg(not(target_arch = "wasm32"))]
pub const NR: usize = 16;

pub type Tile = [[f32; NR]; MR];

/// Maps a kernel family to one that can run here (unavailable ones fall back to
/// portable, so a caller can never reach an instruction the CPU lacks).
#[inline]
pub fn usable(isa: Isa) -> Isa {
    if isa == Isa::Portable || super::available().contains(&isa) {
        isa
    } else {
        Isa::Portable
    }
}

/// acc[i][j] = Σ_p ap[p*MR+i] · bp[p*NR+j] over `kc` steps.
#[inline]
pub fn tile(isa: Isa, kc: usize, ap: &[f32], bp: &[f32]) -> Tile {
    if ap.len() < kc * MR || bp.len() < kc * NR {
        return [[0.0; NR]; MR];
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only reported by `isa()`/`available()` after runtime detection
        // of AVX2 and FMA; the slice lengths were checked above.
        Isa::Avx2 if super::isa() == Isa::Avx2 => unsafe { avx2::tile(kc, ap, bp) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128 | Isa::Relaxed => wasm::tile(isa, kc, ap, bp),
        _ => tile_portable(kc, ap, bp),
    }
}

#[inline(always)]
fn tile_portable(kc: usize, ap: &[f32], bp: &[f32]) -> Tile {
    let mut acc = [[0f32; NR]; MR];
    for (a, b) in ap[..kc * MR]
        .chunks_exact(MR)
        .zip(bp[..kc * NR].chunks_exact(NR))
    {
        let mut bv = [0f32; NR];
        bv.copy_from_slice(b);
        for i in 0..MR {
            let ai = a[i];
            let row = &mut acc[i];
            for j in 0..NR {
                row[j] += ai * bv[j];
            }
        }
    }
    acc
}

/// One row against a packed panel: out[j] = Σ_p a[p] · bp[p*NR+j].
#[inline]
pub fn row_panel(isa: Isa, a: &[f32], bp: &[f32]) -> [f32; NR] {
    let kc = a.len();
    if bp.len() < kc * NR {
        return [0.0; NR];
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA detected (see `tile`); lengths checked above.
        Isa::Avx2 if super::isa() == Isa::Avx2 => unsafe { avx2::row_panel(a, bp) },
        _ => row_panel_portable(a, bp),
    }
}

#[inline(always)]
fn row_panel_portable(a: &[f32], bp: &[f32]) -> [f32; NR] {
    // Two partial sums so that consecutive steps do not wait on each other.
    let mut acc = [[0f32; NR]; 2];
    let pairs = a.len() / 2;
    for q in 0..pairs {
        for (h, accr) in acc.iter_mut().enumerate() {
            let p = 2 * q + h;
            let av = a[p];
            let b = &bp[p * NR..p * NR + NR];
            for j in 0..NR {
                accr[j] += av * b[j];
            }
        }
    }
    if a.len() % 2 == 1 {
        let p = a.len() - 1;
        let b = &bp[p * NR..p * NR + NR];
        for j in 0..NR {
            acc[0][j] += a[p] * b[j];
        }
    }
    let mut out = [0f32; NR];
    for j in 0..NR {
        out[j] = acc[0][j] + acc[1][j];
    }
    out
}

/// Σ x[i]·y[i] over the shorter length, with eight partial sums.
#[inline]
pub fn dot(isa: Isa, x: &[f32], y: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA detected (see `tile`).
        Isa::Avx2 if super::isa() == Isa::Avx2 => unsafe { avx2::dot(x, y) },
        _ => dot_portable(x, y),
    }
}

#[inline(always)]
fn dot_portable(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0f32; 8];
    let xc = x.chunks_exact(8);
    let yc = y.chunks_exact(8);
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// y += alpha·x over the shorter length.
#[inline]
pub fn axpy(isa: Isa, alpha: f32, x: &[f32], y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA detected (see `tile`).
        Isa::Avx2 if super::isa() == Isa::Avx2 => unsafe { avx2::axpy(alpha, x, y) },
        _ => axpy_portable(alpha, x, y),
    }
}

#[inline(always)]
fn axpy_portable(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}

/// y[j] += w0·x0[j] + w1·x1[j] + w2·x2[j] (the middle of a 3-tap depthwise row).
#[inline]
pub fn taps3(isa: Isa, w: [f32; 3], x0: &[f32], x1: &[f32], x2: &[f32], y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA detected (see `tile`).
        Isa::Avx2 if super::isa() == Isa::Avx2 => unsafe { avx2::taps3(w, x0, x1, x2, y) },
        _ => taps3_portable(w, x0, x1, x2, y),
    }
}

#[inline(always)]
fn taps3_portable(w: [f32; 3], x0: &[f32], x1: &[f32], x2: &[f32], y: &mut [f32]) {
    for (((yv, &a), &b), &c) in y.iter_mut().zip(x0).zip(x1).zip(x2) {
        *yv += w[0] * a + w[1] * b + w[2] * c;
    }
}

/// Register-only loop of the GEMM tile's arithmetic (12 independent vector
/// multiply-add chains, no memory traffic); returns the floating-point operations done
/// (a multiply-add counts two) and a value the caller must consume.
pub fn peak(isa: Isa, iters: usize) -> (f64, f32) {
    match usable(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` returned Avx2, so AVX2+FMA were detected.
        Isa::Avx2 => (iters as f64 * 12.0 * 16.0, unsafe { avx2::peak(iters) }),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128 | Isa::Relaxed => (iters as f64 * 12.0 * 8.0, wasm::peak(isa, iters)),
        _ => {
            // Scalar-looking chains that LLVM vectorizes for the baseline target.
            let mut acc = [[1f32; 8]; 12];
            let (a, b) = (
                std::hint::black_box(0.999_999f32),
                std::hint::black_box(1e-7f32),
            );
            for _ in 0..iters {
                for r in acc.iter_mut() {
                    for v in r.iter_mut() {
                        *v = *v * a + b;
                    }
                }
            }
            (
                iters as f64 * 12.0 * 16.0,
                acc.iter().flatten().sum::<f32>(),
            )
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, MR, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 and FMA must be available; `ap` holds kc·MR and `bp` kc·NR values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(kc: usize, ap: &[f32], bp: &[f32]) -> Tile {
        const { assert!(MR == 6 && NR == 16) };
        let mut c = [[_mm256_setzero_ps(); 2]; 6];
        let mut a = ap.as_ptr();
        let mut b = bp.as_ptr();
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (i, ci) in c.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(i));
                ci[0] = _mm256_fmadd_ps(av, b0, ci[0]);
                ci[1] = _mm256_fmadd_ps(av, b1, ci[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        let mut out = [[0f32; NR]; MR];
        for (o, ci) in out.iter_mut().zip(&c) {
            _mm256_storeu_ps(o.as_mut_ptr(), ci[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), ci[1]);
        }
        out
    }

    /// # Safety
    /// AVX2 and FMA must be available; `bp` holds a.len()·NR values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_panel(a: &[f32], bp: &[f32]) -> [f32; NR] {
        let mut c = [_mm256_setzero_ps(); 8];
        let b = bp.as_ptr();
        let quads = a.len() / 4;
        for q in 0..quads {
            for h in 0..4 {
                let p = 4 * q + h;
                let av = _mm256_set1_ps(*a.get_unchecked(p));
                c[2 * h] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b.add(p * NR)), c[2 * h]);
                c[2 * h + 1] =
                    _mm256_fmadd_ps(av, _mm256_loadu_ps(b.add(p * NR + 8)), c[2 * h + 1]);
            }
        }
        for p in 4 * quads..a.len() {
            let av = _mm256_set1_ps(*a.get_unchecked(p));
            c[0] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b.add(p * NR)), c[0]);
            c[1] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b.add(p * NR + 8)), c[1]);
        }
        let lo = _mm256_add_ps(_mm256_add_ps(c[0], c[2]), _mm256_add_ps(c[4], c[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(c[1], c[3]), _mm256_add_ps(c[5], c[7]));
        let mut out = [0f32; NR];
        _mm256_storeu_ps(out.as_mut_ptr(), lo);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), hi);
        out
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(x: &[f32], y: &[f32]) -> f32 {
        let n = x.len().min(y.len());
        let (xp, yp) = (x.as_ptr(), y.as_ptr());
        let mut c = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (h, ch) in c.iter_mut().enumerate() {
                let o = i + 8 * h;
                *ch = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(o)), _mm256_loadu_ps(yp.add(o)), *ch);
            }
            i += 32;
        }
        while i + 8 <= n {
            c[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(yp.add(i)), c[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(c[0], c[1]),
            _mm256_add_ps(c[2], c[3]),
        ));
        while i < n {
            s += x[i] * y[i];
            i += 1;
        }
        s
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        let av = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(yp.add(i)));
            _mm256_storeu_ps(yp.add(i), v);
            i += 8;
        }
        while i < n {
            y[i] += alpha * x[i];
            i += 1;
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn taps3(w: [f32; 3], x0: &[f32], x1: &[f32], x2: &[f32], y: &mut [f32]) {
        let n = y.len().min(x0.len()).min(x1.len()).min(x2.len());
        let (w0, w1, w2) = (
            _mm256_set1_ps(w[0]),
            _mm256_set1_ps(w[1]),
            _mm256_set1_ps(w[2]),
        );
        let yp = y.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            let mut v = _mm256_loadu_ps(yp.add(i));
            v = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0.as_ptr().add(i)), v);
            v = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x1.as_ptr().add(i)), v);
            v = _mm256_fmadd_ps(w2, _mm256_loadu_ps(x2.as_ptr().add(i)), v);
            _mm256_storeu_ps(yp.add(i), v);
            i += 8;
        }
        while i < n {
            y[i] += w[0] * x0[i] + w[1] * x1[i] + w[2] * x2[i];
            i += 1;
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn peak(iters: usize) -> f32 {
        let a = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut c = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            for ci in c.iter_mut() {
                *ci = _mm256_fmadd_ps(*ci, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for ci in c {
            s = _mm256_add_ps(s, ci);
        }
        hsum(s)
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::{Isa, Tile, MR, NR};
    use core::arch::wasm32::*;

    /// a·b + c: one fused instruction with relaxed SIMD, else multiply then add.
    #[inline(always)]
    fn madd(_isa: Isa, a: v128, b: v128, c: v128) -> v128 {
        #[cfg(target_feature = "relaxed-simd")]
        if _isa == Isa::Relaxed {
            return f32x4_relaxed_madd(a, b, c);
        }
        f32x4_add(f32x4_mul(a, b), c)
    }

    /// # Safety
    /// `ap` holds kc·MR and `bp` kc·NR values (checked by `super::tile`).
    #[inline(always)]
    unsafe fn tile_body(isa: Isa, kc: usize, ap: &[f32], bp: &[f32]) -> Tile {
        const { assert!(MR == 6 && NR == 8) };
        let mut c = [[f32x4_splat(0.0); 2]; 6];
        let mut a = ap.as_ptr();
        let mut b = bp.as_ptr();
        for _ in 0..kc {
            let b0 = v128_load(b as *const v128);
            let b1 = v128_load(b.add(4) as *const v128);
            for (i, ci) in c.iter_mut().enumerate() {
                let av = v128_load32_splat(a.add(i) as *const u32);
                ci[0] = madd(isa, av, b0, ci[0]);
                ci[1] = madd(isa, av, b1, ci[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        let mut out = [[0f32; NR]; MR];
        for (o, ci) in out.iter_mut().zip(&c) {
            v128_store(o.as_mut_ptr() as *mut v128, ci[0]);
            v128_store(o.as_mut_ptr().add(4) as *mut v128, ci[1]);
        }
        out
    }

    pub fn tile(isa: Isa, kc: usize, ap: &[f32], bp: &[f32]) -> Tile {
        // SAFETY: lengths checked by `super::tile`.
        unsafe {
            if isa == Isa::Relaxed {
                tile_body(Isa::Relaxed, kc, ap, bp)
            } else {
                tile_body(Isa::Simd128, kc, ap, bp)
            }
        }
    }

    pub fn peak(isa: Isa, iters: usize) -> f32 {
        let a = f32x4_splat(std::hint::black_box(0.999_999));
        let b = f32x4_splat(std::hint::black_box(1e-7));
        let mut c = [f32x4_splat(1.0); 12];
        for _ in 0..iters {
            for ci in c.iter_mut() {
                *ci = madd(isa, *ci, a, b);
            }
        }
        let mut s = f32x4_splat(0.0);
        for ci in c {
            s = f32x4_add(s, ci);
        }
        f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<3>(s)
    }
}
