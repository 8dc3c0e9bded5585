//! f32 matrix multiply used by MatMul, Gemm, Conv (im2col), Einsum and the RNNs.
//!
//! `sgemm` is the simple entry point; [`sgemm_ex`] takes strides (so transposed operands
//! need no copy), `alpha` and `beta`; [`sgemm_op`] also takes operands pre-packed at load
//! ([`Packed`], for constant weights). Behind them is a cache-blocked GEMM in the style
//! of Goto/BLIS: B is packed into `KC×NR` column panels, A into `MR×KC` row panels, and
//! an `MR×NR` register-tile micro-kernel ([`crate::cpu::simd::f32k`]) chosen by
//! instruction set: AVX2+FMA (runtime-detected on x86-64), wasm simd128 or relaxed SIMD
//! (chosen when the module is built), or portable Rust. Small or skinny products take
//! axpy/dot loops, which are faster there than packing.

use crate::cpu::simd::{self, f32k, Isa};
use crate::error::{Error, Result};

pub use crate::cpu::simd::f32k::{MR, NR};
/// Depth of one packed block (the B micro-panel, KC×NR floats, stays in L1).
const KC: usize = 256;
/// Rows of A packed at once (MC×KC floats stay in L2).
const MC: usize = MR * 16;
/// Columns of B packed at once (KC×NC floats stay in L3). A multiple of NR.
const NC: usize = 2048;

/// C (m×n) = A (m×k) · B (k×n) [+ C if `accumulate`], all row-major and contiguous.
/// Slices must have at least m*k, k*n and m*n elements (checked by callers' shape logic;
/// debug-asserted here; if they are short in a release build nothing is computed).
pub fn sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    let beta = if accumulate { 1.0 } else { 0.0 };
    let r = sgemm_ex(
        m,
        k,
        n,
        1.0,
        Mat::row_major(a, k),
        Mat::row_major(b, n),
        beta,
        c,
        n,
    );
    debug_assert!(r, "sgemm: slices too short for {m}x{k}x{n}");
}

/// A read-only strided matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major view with leading dimension `ld`.
    pub fn row_major(data: &'a [f32], ld: usize) -> Self {
        Mat {
            data,
            rs: ld,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with leading dimension `ld` (i.e. a
    /// column-major view).
    pub fn col_major(data: &'a [f32], ld: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: ld,
        }
    }
    /// Same data, rows and columns swapped.
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
    /// True if every element of a `rows×cols` view lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1).checked_mul(self.rs).and_then(|r| {
            (cols - 1)
                .checked_mul(self.cs)
                .and_then(|c| r.checked_add(c))
        });
        last.is_some_and(|l| l < self.data.len())
    }
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// Which side of the product a packed operand is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Left operand, m×k.
    A,
    /// Right operand, k×n.
    B,
}

/// A constant operand packed once (at model load) into the micro-kernel's panels, so
/// that runs skip the packing. The layout is private: per depth block of KC, the MR-row
/// (A) or NR-column (B) panels of the whole matrix, zero-padded.
#[derive(Clone, Debug)]
pub struct Packed {
    pub side: Side,
    pub rows: usize,
    pub cols: usize,
    data: Vec<f32>,
}

impl Packed {
    /// Packs a rows×cols view for `side` (A: rows = m, cols = k; B: rows = k, cols = n).
    pub fn new(side: Side, rows: usize, cols: usize, v: Mat) -> Result<Packed> {
        if !v.fits(rows, cols) {
            return Err(Error::shape(format!(
                "sgemm: a {rows}x{cols} operand does not fit its {} values",
                v.data.len()
            )));
        }
        let (depth, width, w) = match side {
            Side::A => (cols, rows, MR),
            Side::B => (rows, cols, NR),
        };
        let len = width
            .div_ceil(w)
            .checked_mul(w)
            .and_then(|x| x.checked_mul(depth))
            .ok_or_else(|| Error::shape("sgemm: operand too large to pack"))?;
        let mut data = crate::tensor::alloc_vec::<f32>(len)?;
        let mut block = Vec::new();
        for p0 in (0..depth).step_by(KC) {
            let kc = KC.min(depth - p0);
            match side {
                Side::A => pack_a(&v, 0, rows, p0, kc, &mut block),
                Side::B => pack_b(&v, p0, kc, 0, cols, &mut block),
            }
            let off = p0 * width.div_ceil(w) * w;
            data[off..off + block.len()].copy_from_slice(&block);
        }
        Ok(Packed {
            side,
            rows,
            cols,
            data,
        })
    }

    /// The panels of depth block `p0..p0+kc` covering rows (A) / columns (B)
    /// `x0..x0+len`; `x0` is a multiple of the panel width.
    fn block(&self, p0: usize, kc: usize, x0: usize, len: usize) -> &[f32] {
        let (width, w) = match self.side {
            Side::A => (self.rows, MR),
            Side::B => (self.cols, NR),
        };
        let off = p0 * width.div_ceil(w) * w + x0 * kc;
        &self.data[off..off + len.div_ceil(w) * w * kc]
    }
}

/// An operand of [`sgemm_op`]: a strided view or a pre-packed constant.
#[derive(Clone, Copy, Debug)]
pub enum Operand<'a> {
    Mat(Mat<'a>),
    Packed(&'a Packed),
}

/// C (m×n, row-major with leading dimension `ldc`) = alpha · A·B + beta · C.
/// With `beta == 0` C is only written (NaNs in it do not propagate).
/// Returns false (and computes nothing) if a view does not fit its slice.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_ex(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) -> bool {
    sgemm_op(
        m,
        k,
        n,
        alpha,
        Operand::Mat(a),
        Operand::Mat(b),
        beta,
        c,
        ldc,
    )
}

/// [`sgemm_ex`] with operands that may be pre-packed. A packed operand must have been
/// packed for its side with the same dims, else this returns false.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_op(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Operand,
    b: Operand,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) -> bool {
    sgemm_with(simd::isa(), m, k, n, alpha, a, b, beta, c, ldc)
}

/// [`sgemm_op`] with an explicit kernel family (tests and benchmarks; a family this
/// machine lacks runs the portable kernels).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with(
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Operand,
    b: Operand,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) -> bool {
    let isa = f32k::usable(isa);
    if m == 0 || n == 0 {
        return true;
    }
    let fits = |o: &Operand, side: Side, rows: usize, cols: usize| match o {
        Operand::Mat(v) => v.fits(rows, cols),
        Operand::Packed(p) => p.side == side && p.rows == rows && p.cols == cols,
    };
    if !fits(&a, Side::A, m, k) || !fits(&b, Side::B, k, n) || ldc < n {
        return false;
    }
    match (m - 1).checked_mul(ldc).and_then(|x| x.checked_add(n)) {
        Some(need) if need <= c.len() => {}
        _ => return false,
    }
    if k == 0 || alpha == 0.0 {
        scale_c(m, n, beta, c, ldc);
        return true;
    }
    match (a, b) {
        (Operand::Mat(a), Operand::Mat(b)) => {
            // Few rows against a column-major B (Linear layers, `transB`): dot products.
            if b.rs == 1 && m < MR {
                dot_gemm(isa, m, k, n, alpha, a, b, beta, c, ldc);
                return true;
            }
            // Skinny or tiny products: packing costs more than it saves.
            if b.cs == 1 && (m < MR || n < NR / 2 || m * n * k < 8 * 1024) {
                small_gemm(isa, m, k, n, alpha, a, b, beta, c, ldc);
                return true;
            }
        }
        (Operand::Mat(a), Operand::Packed(pb)) if m < MR => {
            rows_gemm(isa, m, k, n, alpha, a, pb, beta, c, ldc);
            return true;
        }
        _ => {}
    }
    blocked_gemm(isa, m, k, n, alpha, a, b, beta, c, ldc);
    true
}

fn scale_c(m: usize, n: usize, beta: f32, c: &mut [f32], ldc: usize) {
    for i in 0..m {
        let row = &mut c[i * ldc..i * ldc + n];
        if beta == 0.0 {
            row.fill(0.0);
        } else if beta != 1.0 {
            row.iter_mut().for_each(|x| *x *= beta);
        }
    }
}

/// Row-by-row axpy: C[i,:] += alpha·A[i,p]·B[p,:]; B rows must be contiguous.
#[allow(clippy::too_many_arguments)]
fn small_gemm(
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    scale_c(m, n, beta, c, ldc);
    for i in 0..m {
        let crow = &mut c[i * ldc..i * ldc + n];
        for p in 0..k {
            let av = alpha * a.at(i, p);
            if av == 0.0 {
                continue;
            }
            let brow = &b.data[p * b.rs..p * b.rs + n];
            f32k::axpy(isa, av, brow, crow);
        }
    }
}

/// C[i,j] = alpha·dot(A[i,:], B[:,j]) + beta·C[i,j] for a column-major B.
#[allow(clippy::too_many_arguments)]
fn dot_gemm(
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let mut row = vec![0f32; k];
    for i in 0..m {
        for (p, r) in row.iter_mut().enumerate() {
            *r = a.at(i, p);
        }
        let crow = &mut c[i * ldc..i * ldc + n];
        for (j, cv) in crow.iter_mut().enumerate() {
            let col = &b.data[j * b.cs..j * b.cs + k];
            let v = alpha * f32k::dot(isa, &row, col);
            *cv = if beta == 0.0 { v } else { v + beta * *cv };
        }
    }
}

/// Packs rows `i0..i0+mc`, depth `p0..p0+kc` of A into MR-row panels (zero-padded):
/// panel r holds, for each p, the MR values A[i0+r*MR .. +MR, p].
fn pack_a(a: &Mat, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut Vec<f32>) {
    let panels = mc.div_ceil(MR);
    out.clear();
    out.resize(panels * MR * kc, 0.0);
    for (r, panel) in out.chunks_exact_mut(MR * kc).enumerate() {
        let rows = MR.min(mc - r * MR);
        let base = i0 + r * MR;
        if a.cs == 1 && rows == MR {
            // Row-major A: gather MR rows at a time.
            for ii in 0..MR {
                let row = &a.data[(base + ii) * a.rs + p0..(base + ii) * a.rs + p0 + kc];
                for (p, &v) in row.iter().enumerate() {
                    panel[p * MR + ii] = v;
                }
            }
        } else if a.rs == 1 && rows == MR {
            // Column-major A (transposed operand): each p is contiguous.
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let s = (p0 + p) * a.cs + base;
                dst.copy_from_slice(&a.data[s..s + MR]);
            }
        } else {
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                for (ii, d) in dst.iter_mut().enumerate().take(rows) {
                    *d = a.at(base + ii, p0 + p);
                }
            }
        }
    }
}

/// Packs depth `p0..p0+kc`, columns `j0..j0+nc` of B into NR-column panels (zero-padded).
fn pack_b(b: &Mat, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut Vec<f32>) {
    let panels = nc.div_ceil(NR);
    out.clear();
    out.resize(panels * NR * kc, 0.0);
    for (r, panel) in out.chunks_exact_mut(NR * kc).enumerate() {
        let cols = NR.min(nc - r * NR);
        let base = j0 + r * NR;
        if b.cs == 1 {
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let s = (p0 + p) * b.rs + base;
                dst[..cols].copy_from_slice(&b.data[s..s + cols]);
            }
        } else if b.rs == 1 && cols == NR {
            for jj in 0..NR {
                let col = &b.data[(base + jj) * b.cs + p0..(base + jj) * b.cs + p0 + kc];
                for (p, &v) in col.iter().enumerate() {
                    panel[p * NR + jj] = v;
                }
            }
        } else {
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                for (jj, d) in dst.iter_mut().enumerate().take(cols) {
                    *d = b.at(p0 + p, base + jj);
                }
            }
        }
    }
}

/// One row at a time against a packed B (m < MR): each panel is read once per row.
#[allow(clippy::too_many_arguments)]
fn rows_gemm(
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Mat,
    b: &Packed,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let mut arow = vec![0f32; KC.min(k)];
    for i in 0..m {
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let ar = &mut arow[..kc];
            for (p, v) in ar.iter_mut().enumerate() {
                *v = a.at(i, p0 + p);
            }
            let bblock = b.block(p0, kc, 0, n);
            for (jr, bp) in bblock.chunks_exact(NR * kc).enumerate() {
                let jj = jr * NR;
                let cols = NR.min(n - jj);
                let acc = f32k::row_panel(isa, ar, bp);
                let off = i * ldc + jj;
                store_row(&mut c[off..off + cols], &acc[..cols], alpha, beta, p0 == 0);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn blocked_gemm(
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Operand,
    b: Operand,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let mut bpack = Vec::new();
    let mut apack = Vec::new();
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            // The first depth block applies beta; later ones accumulate.
            let first = p0 == 0;
            let bblock: &[f32] = match &b {
                Operand::Mat(bm) => {
                    pack_b(bm, p0, kc, j0, nc, &mut bpack);
                    &bpack
                }
                Operand::Packed(pb) => pb.block(p0, kc, j0, nc),
            };
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                let ablock: &[f32] = match &a {
                    Operand::Mat(am) => {
                        pack_a(am, i0, mc, p0, kc, &mut apack);
                        &apack
                    }
                    Operand::Packed(pa) => pa.block(p0, kc, i0, mc),
                };
                for (jr, bp) in bblock.chunks_exact(NR * kc).enumerate() {
                    let jj = j0 + jr * NR;
                    let cols = NR.min(n - jj);
                    for (ir, ap) in ablock.chunks_exact(MR * kc).enumerate() {
                        let ii = i0 + ir * MR;
                        let rows = MR.min(m - ii);
                        let acc = f32k::tile(isa, kc, ap, bp);
                        for (r, accr) in acc.iter().enumerate().take(rows) {
                            let off = (ii + r) * ldc + jj;
                            let crow = &mut c[off..off + cols];
                            store_row(crow, &accr[..cols], alpha, beta, first);
                        }
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn store_row(crow: &mut [f32], acc: &[f32], alpha: f32, beta: f32, first: bool) {
    if !first || beta == 1.0 {
        if alpha == 1.0 {
            for (cv, &v) in crow.iter_mut().zip(acc) {
                *cv += v;
            }
        } else {
            for (cv, &v) in crow.iter_mut().zip(acc) {
                *cv += alpha * v;
            }
        }
    } else if beta == 0.0 {
        for (cv, &v) in crow.iter_mut().zip(acc) {
            *cv = alpha * v;
        }
    } else {
        for (cv, &v) in crow.iter_mut().zip(acc) {
            *cv = beta * *cv + alpha * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward triple loop in f64, the reference.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: Mat,
        b: Mat,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    s += a.at(i, p) as f64 * b.at(p, j) as f64;
                }
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c[i * ldc + j] as f64
                };
                c[i * ldc + j] = (alpha as f64 * s + old) as f32;
            }
        }
    }

    /// Deterministic pseudo-random values in [-1, 1).
    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn close(x: &[f32], y: &[f32], k: usize) {
        let tol = 1e-5 * (k as f32 + 1.0);
        for (i, (a, b)) in x.iter().zip(y).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "at {i}: {a} vs {b}");
        }
    }

    #[test]
    fn small() {
        let a = [1., 2., 3., 4., 5., 6.]; // 2x3
        let b = [1., 0., 0., 1., 1., 1.]; // 3x2
        let mut c = [0f32; 4];
        sgemm(2, 3, 2, &a, &b, &mut c, false);
        assert_eq!(c, [4., 5., 10., 11.]);
        sgemm(2, 3, 2, &a, &b, &mut c, true);
        assert_eq!(c, [8., 10., 20., 22.]);
    }

    #[test]
    fn odd_sizes_match_naive() {
        let sizes = [
            (1, 1, 1),
            (1, 7, 33),
            (3, 5, 2),
            (5, 300, 17),
            (7, 1, 19),
            (13, 17, 31),
            (MR + 1, 257, NR + 3),
            (2 * MR - 1, 513, 3 * NR - 1),
            (MC + 5, 70, 40),
            (97, 33, NC + 21),
            (64, 64, 64),
            (33, 1000, 9),
            (120, 6, 200),
            (1, 300, 70),
            (2, 37, 5),
        ];
        for (t, &(m, k, n)) in sizes.iter().enumerate() {
            let a = rand_vec(m * k, t as u64);
            let b = rand_vec(k * n, 100 + t as u64);
            let c0 = rand_vec(m * n, 200 + t as u64);
            for &(alpha, beta) in &[(1.0f32, 0.0f32), (1.0, 1.0), (0.5, -2.0)] {
                let mut want = c0.clone();
                naive(
                    m,
                    k,
                    n,
                    alpha,
                    Mat::row_major(&a, k),
                    Mat::row_major(&b, n),
                    beta,
                    &mut want,
                    n,
                );
                let mut got = c0.clone();
                let ok = sgemm_ex(
                    m,
                    k,
                    n,
                    alpha,
                    Mat::row_major(&a, k),
                    Mat::row_major(&b, n),
                    beta,
                    &mut got,
                    n,
                );
                assert!(ok);
                close(&got, &want, k);
                // Transposed operands: A stored k×m, B stored n×k.
                let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
                let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
                let mut got = c0.clone();
                assert!(sgemm_ex(
                    m,
                    k,
                    n,
                    alpha,
                    Mat::col_major(&at, m),
                    Mat::col_major(&bt, k),
                    beta,
                    &mut got,
                    n,
                ));
                close(&got, &want, k);
            }
        }
    }

    #[test]
    fn every_kernel_and_packing_matches_naive() {
        let sizes = [
            (1, 1, 1),
            (1, 300, 70),
            (2, 37, 5),
            (MR - 1, 513, NR + 1),
            (MR, KC + 1, 2 * NR - 1),
            (2 * MR + 1, 2 * KC + 7, 3 * NR + 2),
            (MC + 3, 33, NC + 5),
            (40, 1, 9),
        ];
        for (t, &(m, k, n)) in sizes.iter().enumerate() {
            let a = rand_vec(m * k, 10 + t as u64);
            let b = rand_vec(k * n, 20 + t as u64);
            let c0 = rand_vec(m * n, 30 + t as u64);
            let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
            let views = [
                (Mat::row_major(&a, k), Mat::row_major(&b, n)),
                (Mat::row_major(&a, k), Mat::col_major(&bt, k)),
            ];
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, -2.0)] {
                let mut want = c0.clone();
                naive(m, k, n, alpha, views[0].0, views[0].1, beta, &mut want, n);
                for isa in simd::available() {
                    for &(am, bm) in &views {
                        let pa = Packed::new(Side::A, m, k, am).unwrap();
                        let pb = Packed::new(Side::B, k, n, bm).unwrap();
                        let ops = [
                            (Operand::Mat(am), Operand::Mat(bm)),
                            (Operand::Mat(am), Operand::Packed(&pb)),
                            (Operand::Packed(&pa), Operand::Mat(bm)),
                            (Operand::Packed(&pa), Operand::Packed(&pb)),
                        ];
                        let mut first: Option<Vec<f32>> = None;
                        for (oa, ob) in ops {
                            let mut got = c0.clone();
                            assert!(sgemm_with(isa, m, k, n, alpha, oa, ob, beta, &mut got, n));
                            close(&got, &want, k);
                            // Where both take the blocked path, packing at load or at run
                            // time gives the same bits.
                            if m >= MR && m * n * k >= 8 * 1024 && n >= NR / 2 {
                                match &first {
                                    None => first = Some(got),
                                    Some(f) => assert_eq!(f, &got, "{isa:?} {m}x{k}x{n}"),
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn packed_operand_must_match_its_dims() {
        let a = rand_vec(12, 1);
        let p = Packed::new(Side::B, 3, 4, Mat::row_major(&a, 4)).unwrap();
        let mut c = [0f32; 8];
        let am = Operand::Mat(Mat::row_major(&a, 3));
        assert!(sgemm_op(
            2,
            3,
            4,
            1.0,
            am,
            Operand::Packed(&p),
            0.0,
            &mut c,
            4
        ));
        assert!(!sgemm_op(
            2,
            4,
            3,
            1.0,
            am,
            Operand::Packed(&p),
            0.0,
            &mut c,
            3
        ));
        assert!(!sgemm_op(
            3,
            4,
            2,
            1.0,
            Operand::Packed(&p),
            am,
            0.0,
            &mut c,
            2
        ));
        assert!(Packed::new(Side::A, 4, 4, Mat::row_major(&a, 4)).is_err());
    }

    #[test]
    fn beta_zero_ignores_nan_and_leading_dim() {
        let a = rand_vec(40 * 30, 1);
        let b = rand_vec(30 * 50, 2);
        let ldc = 53;
        let mut got = vec![f32::NAN; 40 * ldc];
        let mut want = vec![0f32; 40 * ldc];
        naive(
            40,
            30,
            50,
            1.0,
            Mat::row_major(&a, 30),
            Mat::row_major(&b, 50),
            0.0,
            &mut want,
            ldc,
        );
        assert!(sgemm_ex(
            40,
            30,
            50,
            1.0,
            Mat::row_major(&a, 30),
            Mat::row_major(&b, 50),
            0.0,
            &mut got,
            ldc
        ));
        for i in 0..40 {
            close(
                &got[i * ldc..i * ldc + 50],
                &want[i * ldc..i * ldc + 50],
                30,
            );
        }
    }

    #[test]
    fn short_slices_are_refused() {
        let a = [1f32; 5];
        let b = [1f32; 6];
        let mut c = [0f32; 4];
        assert!(!sgemm_ex(
            2,
            3,
            2,
            1.0,
            Mat::row_major(&a, 3),
            Mat::row_major(&b, 2),
            0.0,
            &mut c,
            2
        ));
    }

    /// `cargo test --lib gemm_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn gemm_speed() {
        for &(m, k, n, reps) in &[
            (256usize, 256usize, 256usize, 50),
            (1024, 1024, 1024, 3),
            (128, 384, 384, 50),
            (384, 3 * 3 * 32, 96 * 48, 5),
            (24, 96, 12800, 10),
            (1, 1024, 1024, 50),
        ] {
            let a = rand_vec(m * k, 1);
            let b = rand_vec(k * n, 2);
            let mut c = vec![0f32; m * n];
            sgemm(m, k, n, &a, &b, &mut c, false);
            let t = std::time::Instant::now();
            for _ in 0..reps {
                sgemm(m, k, n, &a, &b, &mut c, false);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "sgemm {m}x{k}x{n}: {:.3} ms, {:.1} GFLOP/s",
                s * 1e3,
                2.0 * (m * k * n) as f64 / s / 1e9
            );
        }
    }
}
