//! CPU kernels for the reduce family (ops in `crate::graph::ops::reduce`): the Reduce*
//! ops, ArgMax/ArgMin, Softmax/LogSoftmax/Hardmax, CumSum/CumProd and TopK.
//!
//! Reductions view the input as `(outer, r, inner)` around a block of reduced axes (after
//! moving the reduced axes last when they are not adjacent), so the hot loops run over
//! contiguous memory: a row fold when `inner == 1`, a vector accumulator otherwise.

use crate::error::{Error, Result};
use crate::tensor::{alloc_vec, numel, DType, Num, Tensor};

/// The reduction of a `Reduce*` op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

impl ReduceKind {
    pub fn op_name(self) -> &'static str {
        match self {
            ReduceKind::Sum => "ReduceSum",
            ReduceKind::Mean => "ReduceMean",
            ReduceKind::Max => "ReduceMax",
            ReduceKind::Min => "ReduceMin",
            ReduceKind::Prod => "ReduceProd",
            ReduceKind::L1 => "ReduceL1",
            ReduceKind::L2 => "ReduceL2",
            ReduceKind::LogSum => "ReduceLogSum",
            ReduceKind::LogSumExp => "ReduceLogSumExp",
            ReduceKind::SumSquare => "ReduceSumSquare",
        }
    }
}

/// Normalizes axes against a rank: negative axes count from the end; duplicates are an
/// error. Returns them sorted.
pub fn normalize_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = crate::graph::attrs::norm_axis(a, rank)?;
        if out.contains(&n) {
            return Err(Error::shape(format!("axis {a} is repeated in {axes:?}")));
        }
        out.push(n);
    }
    out.sort_unstable();
    Ok(out)
}

/// Output shape of a reduction over sorted, distinct `axes`.
pub fn reduced_shape(shape: &[usize], axes: &[usize], keepdims: bool) -> Vec<usize> {
    let mut out = Vec::with_capacity(shape.len());
    for (i, &d) in shape.iter().enumerate() {
        if axes.contains(&i) {
            if keepdims {
                out.push(1);
            }
        } else {
            out.push(d);
        }
    }
    out
}

/// How a reduction walks memory.
enum Layout {
    /// Reduced axes form one block: `(outer, r, inner)`.
    Block(usize, usize, usize),
    /// Reduced axes are scattered: permute with `perm` to `[kept…, reduced…]`, then
    /// reduce rows of `r`.
    Permute(Vec<usize>, usize, usize),
}

fn layout(shape: &[usize], axes: &[usize]) -> Layout {
    // Drop size-1 dims (they can be neither reduced nor kept without changing memory).
    let dims: Vec<(usize, bool)> = shape
        .iter()
        .enumerate()
        .filter(|(_, &d)| d != 1)
        .map(|(i, &d)| (d, axes.contains(&i)))
        .collect();
    let first = dims.iter().position(|d| d.1);
    let last = dims.iter().rposition(|d| d.1);
    let (Some(f), Some(l)) = (first, last) else {
        let n = shape.iter().product();
        return Layout::Block(n, 1, 1);
    };
    if dims[f..=l].iter().all(|d| d.1) {
        let outer = dims[..f].iter().map(|d| d.0).product();
        let r = dims[f..=l].iter().map(|d| d.0).product();
        let inner = dims[l + 1..].iter().map(|d| d.0).product();
        return Layout::Block(outer, r, inner);
    }
    let mut perm: Vec<usize> = (0..shape.len()).filter(|i| !axes.contains(i)).collect();
    perm.extend(axes.iter().copied());
    let outer = shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .product();
    let r = axes.iter().map(|&a| shape[a]).product();
    Layout::Permute(perm, outer, r)
}

/// Transposes `src` (of `shape`) so that output axis `k` is input axis `perm[k]`.
pub fn permute<T: Copy + Default>(src: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let rank = shape.len();
    let st = crate::cpu::common::strides(shape);
    let oshape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let ost: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let n = src.len();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let mut idx = vec![0usize; rank];
    let mut off = 0usize;
    for _ in 0..n {
        out.push(src[off]);
        for k in (0..rank).rev() {
            idx[k] += 1;
            off += ost[k];
            if idx[k] < oshape[k] {
                break;
            }
            off -= ost[k] * oshape[k];
            idx[k] = 0;
        }
    }
    out
}

/// Folds one contiguous row with 8 independent accumulators (vectorizes).
#[inline(always)]
fn fold_row<T: Copy>(row: &[T], id: T, pre: impl Fn(T) -> T, comb: impl Fn(T, T) -> T) -> T {
    let mut acc = [id; 8];
    let chunks = row.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] = comb(acc[k], pre(c[k]));
        }
    }
    let mut a = id;
    for v in acc {
        a = comb(a, v);
    }
    for &x in rem {
        a = comb(a, pre(x));
    }
    a
}

/// Reduces `(outer, r, inner)` data to `outer * inner` values.
#[inline(always)]
fn fold_block<T: Copy>(
    src: &[T],
    (outer, r, inner): (usize, usize, usize),
    id: T,
    pre: impl Fn(T) -> T + Copy,
    comb: impl Fn(T, T) -> T + Copy,
    out: &mut [T],
) {
    if inner == 1 {
        for (o, dst) in out.iter_mut().enumerate().take(outer) {
            *dst = fold_row(&src[o * r..(o + 1) * r], id, pre, comb);
        }
        return;
    }
    for o in 0..outer {
        let acc = &mut out[o * inner..(o + 1) * inner];
        acc.iter_mut().for_each(|a| *a = id);
        for j in 0..r {
            let base = (o * r + j) * inner;
            for (a, &x) in acc.iter_mut().zip(&src[base..base + inner]) {
                *a = comb(*a, pre(x));
            }
        }
    }
}

#[inline(always)]
fn max_of<T: Num>(a: T, b: T) -> T {
    if b > a || b.is_nan() {
        b
    } else {
        a
    }
}
#[inline(always)]
fn min_of<T: Num>(a: T, b: T) -> T {
    if b < a || b.is_nan() {
        b
    } else {
        a
    }
}

fn reduce_typed<T: Num>(src: &[T], dims: (usize, usize, usize), kind: ReduceKind, out: &mut [T]) {
    let r = dims.1;
    // Empty input: every output is an empty-set reduction. Walk the output only (the
    // dims of an empty tensor may be huge).
    let dims = if src.is_empty() {
        (out.len(), 0, 1)
    } else {
        dims
    };
    match kind {
        ReduceKind::Sum | ReduceKind::Mean => {
            fold_block(src, dims, T::zero(), |x| x, T::add, out);
            if kind == ReduceKind::Mean {
                let n = T::from_i64(i64::try_from(r).unwrap_or(i64::MAX));
                out.iter_mut().for_each(|v| *v = v.div(n));
            }
        }
        ReduceKind::Prod => fold_block(src, dims, T::one(), |x| x, T::mul, out),
        ReduceKind::Max => fold_block(src, dims, T::min_value(), |x| x, max_of, out),
        ReduceKind::Min => fold_block(src, dims, T::max_value(), |x| x, min_of, out),
        ReduceKind::L1 => fold_block(src, dims, T::zero(), |x: T| x.abs(), T::add, out),
        ReduceKind::SumSquare | ReduceKind::L2 => {
            fold_block(src, dims, T::zero(), |x: T| x.mul(x), T::add, out);
            if kind == ReduceKind::L2 {
                out.iter_mut()
                    .for_each(|v| *v = T::from_f64(v.to_f64().sqrt()));
            }
        }
        ReduceKind::LogSum => {
            fold_block(src, dims, T::zero(), |x| x, T::add, out);
            out.iter_mut()
                .for_each(|v| *v = T::from_f64(v.to_f64().ln()));
        }
        ReduceKind::LogSumExp => {
            let (outer, r, inner) = dims;
            fold_block(src, dims, T::min_value(), |x| x, max_of, out);
            let mut sums = vec![0f64; outer * inner];
            for o in 0..outer {
                for j in 0..r {
                    let base = (o * r + j) * inner;
                    let ms = &out[o * inner..(o + 1) * inner];
                    let ss = &mut sums[o * inner..(o + 1) * inner];
                    for ((s, &m), &x) in ss.iter_mut().zip(ms).zip(&src[base..base + inner]) {
                        let m = m.to_f64();
                        if m.is_finite() {
                            *s += (x.to_f64() - m).exp();
                        }
                    }
                }
            }
            for (v, s) in out.iter_mut().zip(sums) {
                let m = v.to_f64();
                *v = if m.is_finite() {
                    T::from_f64(m + s.ln())
                } else if m.is_nan() || m > 0.0 {
                    *v
                } else {
                    T::from_f64(f64::NEG_INFINITY)
                };
            }
        }
    }
}

fn reduce_num<T: Num>(
    x: &[T],
    shape: &[usize],
    axes: &[usize],
    kind: ReduceKind,
    n_out: usize,
) -> Result<Vec<T>> {
    let mut out = alloc_vec::<T>(n_out)?;
    match layout(shape, axes) {
        Layout::Block(o, r, i) => reduce_typed(x, (o, r, i), kind, &mut out),
        Layout::Permute(perm, o, r) => {
            let p = permute(x, shape, &perm);
            reduce_typed(&p, (o, r, 1), kind, &mut out)
        }
    }
    Ok(out)
}

/// Reduces `x` over sorted, distinct `axes` (all axes when empty).
pub fn reduce(x: &Tensor, axes: &[usize], keepdims: bool, kind: ReduceKind) -> Result<Tensor> {
    let all: Vec<usize>;
    let axes = if axes.is_empty() {
        all = (0..x.rank()).collect();
        &all[..]
    } else {
        axes
    };
    if axes.iter().any(|&a| a >= x.rank()) {
        return Err(Error::shape(format!(
            "{}: axes {axes:?} out of range for rank {}",
            kind.op_name(),
            x.rank()
        )));
    }
    let oshape = reduced_shape(x.shape(), axes, keepdims);
    let n_out = numel(&oshape, x.dtype())?;
    match x.dtype() {
        DType::F16 | DType::BF16 => {
            let f = x.cast(DType::F32)?;
            let v = reduce_num(f.as_slice::<f32>()?, x.shape(), axes, kind, n_out)?;
            Tensor::from_vec(oshape, v)?.cast(x.dtype())
        }
        DType::Bool if matches!(kind, ReduceKind::Max | ReduceKind::Min) => {
            let b: Vec<u8> = x.as_slice::<bool>()?.iter().map(|&b| b as u8).collect();
            let v = reduce_num(&b, x.shape(), axes, kind, n_out)?;
            Tensor::from_vec(oshape, v.into_iter().map(|v| v != 0).collect::<Vec<bool>>())
        }
        dt => crate::dispatch!(num dt, kind.op_name(), T => {
            let v = reduce_num(x.as_slice::<T>()?, x.shape(), axes, kind, n_out)?;
            Tensor::from_vec(oshape, v)
        }),
    }
}

/// (outer, axis length, inner) around `axis`, checked.
fn split(shape: &[usize], axis: usize) -> Result<(usize, usize, usize)> {
    if axis >= shape.len() {
        return Err(Error::shape(format!(
            "axis {axis} out of range for rank {}",
            shape.len()
        )));
    }
    Ok(crate::cpu::common::split_at_axis(shape, axis))
}

/// ArgMax (`max = true`) or ArgMin along `axis`; int64 indices.
pub fn arg_extreme(
    x: &Tensor,
    axis: usize,
    keepdims: bool,
    select_last: bool,
    max: bool,
) -> Result<Tensor> {
    let (outer, r, inner) = split(x.shape(), axis)?;
    let what = if max { "ArgMax" } else { "ArgMin" };
    if r == 0 {
        return Err(Error::shape(format!("{what} over an empty axis")));
    }
    let oshape = reduced_shape(x.shape(), &[axis], keepdims);
    let n = numel(&oshape, DType::I64)?;
    let x = match x.dtype() {
        DType::F16 | DType::BF16 | DType::Bool => std::borrow::Cow::Owned(x.cast(DType::F32)?),
        _ => std::borrow::Cow::Borrowed(x),
    };
    crate::dispatch!(num x.dtype(), what, T => {
        let src = x.as_slice::<T>()?;
        let mut out = alloc_vec::<i64>(n)?;
        let dims = (outer, r, inner);
        match (max, select_last) {
            (true, false) => arg_scan(src, dims, |v: T, b: T| v > b, &mut out),
            (true, true) => arg_scan(src, dims, |v: T, b: T| v >= b, &mut out),
            (false, false) => arg_scan(src, dims, |v: T, b: T| v < b, &mut out),
            (false, true) => arg_scan(src, dims, |v: T, b: T| v <= b, &mut out),
        }
        Tensor::from_vec(oshape, out)
    })
}

/// Index of the best element along `r` for `(outer, r, inner)` data (r >= 1).
#[inline(always)]
fn arg_scan<T: Copy + Default>(
    src: &[T],
    (outer, r, inner): (usize, usize, usize),
    better: impl Fn(T, T) -> bool,
    out: &mut [i64],
) {
    if src.is_empty() || out.is_empty() {
        return;
    }
    if inner == 1 {
        for (o, d) in out.iter_mut().enumerate().take(outer) {
            let row = &src[o * r..(o + 1) * r];
            let (mut b, mut bi) = (row[0], 0usize);
            for (j, &v) in row.iter().enumerate().skip(1) {
                if better(v, b) {
                    b = v;
                    bi = j;
                }
            }
            *d = bi as i64;
        }
        return;
    }
    let mut best = vec![T::default(); inner];
    for o in 0..outer {
        let dst = &mut out[o * inner..(o + 1) * inner];
        best.copy_from_slice(&src[o * r * inner..o * r * inner + inner]);
        dst.iter_mut().for_each(|d| *d = 0);
        for j in 1..r {
            let row = &src[(o * r + j) * inner..(o * r + j + 1) * inner];
            for ((b, d), &v) in best.iter_mut().zip(dst.iter_mut()).zip(row) {
                if better(v, *b) {
                    *b = v;
                    *d = j as i64;
                }
            }
        }
    }
}

/// Which of the softmax family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftmaxKind {
    Softmax,
    LogSoftmax,
    Hardmax,
}

/// exp(x) for f32, branch-free so loops over it vectorize (Cephes polynomial, relative
/// error about 2e-7; inputs below -87.3 give 0).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.3, 88.3);
    let t = xc * LOG2E;
    // Round to nearest with the 1.5*2^23 trick; the integer lands in the low mantissa
    // bits, so no float-to-int conversion is needed (keeps the loop vectorized).
    let kf = t + 12_582_912.0;
    let n = kf - 12_582_912.0;
    let ni = (kf.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = xc - n * C1 - n * C2;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    // NaN propagates through the arithmetic.
    if x < -87.3 {
        0.0
    } else {
        y * scale
    }
}

/// Sum of a row with 8 accumulators.
#[inline(always)]
fn sum8(row: &[f32]) -> f32 {
    fold_row(row, 0.0, |x| x, |a, b| a + b)
}
#[inline(always)]
fn max8(row: &[f32]) -> f32 {
    // Select form (no NaN bookkeeping) so it compiles to plain maxss/maxps; NaN
    // inputs still reach the output through exp().
    fold_row(
        row,
        f32::NEG_INFINITY,
        |x| x,
        |a, b| if b > a { b } else { a },
    )
}

/// Softmax / LogSoftmax / Hardmax of one contiguous row, in place.
fn softmax_row(row: &mut [f32], kind: SoftmaxKind) {
    if row.is_empty() {
        return;
    }
    let m = max8(row);
    match kind {
        SoftmaxKind::Softmax => {
            if m == f32::INFINITY || m.is_nan() {
                return softmax_row_slow(row, kind);
            }
            if m == f32::NEG_INFINITY {
                // All -inf: every exp(x - m) is NaN in the reference.
                row.iter_mut().for_each(|v| *v = f32::NAN);
                return;
            }
            row.iter_mut().for_each(|v| *v = fast_exp(*v - m));
            let s = sum8(row);
            let inv = 1.0 / s;
            row.iter_mut().for_each(|v| *v *= inv);
        }
        SoftmaxKind::LogSoftmax => {
            if !m.is_finite() {
                return softmax_row_slow(row, kind);
            }
            let s = fold_row(row, 0.0, |x| fast_exp(x - m), |a, b| a + b);
            let l = m + s.ln();
            row.iter_mut().for_each(|v| *v -= l);
        }
        SoftmaxKind::Hardmax => {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            row.iter_mut().for_each(|v| *v = 0.0);
            row[best] = 1.0;
        }
    }
}

/// Exact (libm) path for rows holding infinities or NaN.
fn softmax_row_slow(row: &mut [f32], kind: SoftmaxKind) {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let s: f32 = row.iter().map(|&v| (v - m).exp()).sum();
    match kind {
        SoftmaxKind::Softmax => row.iter_mut().for_each(|v| *v = (*v - m).exp() / s),
        _ => {
            let l = m + s.ln();
            row.iter_mut().for_each(|v| *v -= l);
        }
    }
}

/// Softmax family over `(outer, n, inner)` f32 data, in place.
pub fn softmax_f32(data: &mut [f32], (outer, n, inner): (usize, usize, usize), kind: SoftmaxKind) {
    if data.is_empty() {
        return;
    }
    if inner == 1 {
        if n == 0 {
            return;
        }
        for row in data.chunks_exact_mut(n).take(outer) {
            softmax_row(row, kind);
        }
        return;
    }
    if n == 0 {
        return;
    }
    let mut m = vec![0f32; inner];
    let mut s = vec![0f32; inner];
    let mut col = vec![0f32; n];
    for o in 0..outer {
        let blk = &mut data[o * n * inner..(o + 1) * n * inner];
        if kind != SoftmaxKind::Hardmax {
            // Column-wise over contiguous rows of `inner` (vectorizes).
            m.copy_from_slice(&blk[..inner]);
            for row in blk.chunks_exact(inner).skip(1) {
                for (a, &v) in m.iter_mut().zip(row) {
                    *a = if v > *a { v } else { *a };
                }
            }
            if m.iter().all(|v| v.is_finite()) {
                s.iter_mut().for_each(|v| *v = 0.0);
                let store = kind == SoftmaxKind::Softmax;
                for row in blk.chunks_exact_mut(inner) {
                    for ((v, &mv), sv) in row.iter_mut().zip(&m).zip(s.iter_mut()) {
                        let e = fast_exp(*v - mv);
                        *sv += e;
                        if store {
                            *v = e;
                        }
                    }
                }
                if store {
                    s.iter_mut().for_each(|v| *v = 1.0 / *v);
                    for row in blk.chunks_exact_mut(inner) {
                        for (v, &iv) in row.iter_mut().zip(&s) {
                            *v *= iv;
                        }
                    }
                } else {
                    for (sv, &mv) in s.iter_mut().zip(&m) {
                        *sv = mv + sv.ln();
                    }
                    for row in blk.chunks_exact_mut(inner) {
                        for (v, &l) in row.iter_mut().zip(&s) {
                            *v -= l;
                        }
                    }
                }
                continue;
            }
        }
        // Gather each column into a scratch row (Hardmax, infinities, NaN).
        for i in 0..inner {
            for (j, c) in col.iter_mut().enumerate() {
                *c = blk[j * inner + i];
            }
            softmax_row(&mut col, kind);
            for (j, &c) in col.iter().enumerate() {
                blk[j * inner + i] = c;
            }
        }
    }
}

/// Softmax family over `(outer, n, inner)` f64 data, in place (exact libm path).
fn softmax_f64(data: &mut [f64], (outer, n, inner): (usize, usize, usize), kind: SoftmaxKind) {
    if data.is_empty() || n == 0 {
        return;
    }
    let mut col = vec![0f64; n];
    for o in 0..outer {
        let blk = &mut data[o * n * inner..(o + 1) * n * inner];
        for i in 0..inner {
            for (j, c) in col.iter_mut().enumerate() {
                *c = blk[j * inner + i];
            }
            let m = col.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            match kind {
                SoftmaxKind::Hardmax => {
                    let best = col.iter().position(|&v| v == m).unwrap_or(0);
                    col.iter_mut().for_each(|v| *v = 0.0);
                    col[best] = 1.0;
                }
                SoftmaxKind::Softmax => {
                    let s: f64 = col.iter().map(|&v| (v - m).exp()).sum();
                    col.iter_mut().for_each(|v| *v = (*v - m).exp() / s);
                }
                SoftmaxKind::LogSoftmax => {
                    let s: f64 = col.iter().map(|&v| (v - m).exp()).sum();
                    let l = m + s.ln();
                    col.iter_mut().for_each(|v| *v -= l);
                }
            }
            for (j, &c) in col.iter().enumerate() {
                blk[j * inner + i] = c;
            }
        }
    }
}

/// Softmax family of a float tensor over `(outer, n, inner)`; f16/bf16 inputs are
/// computed in f32, f64 in f64.
pub fn softmax(x: &Tensor, dims: (usize, usize, usize), kind: SoftmaxKind) -> Result<Tensor> {
    let dt = x.dtype();
    if !dt.is_float() {
        return Err(Error::unsupported_dtype(format!(
            "{kind:?} does not support {dt}"
        )));
    }
    if dims
        .0
        .checked_mul(dims.1)
        .and_then(|v| v.checked_mul(dims.2))
        != Some(x.len())
    {
        return Err(Error::shape("softmax: dims do not match the input"));
    }
    if dt == DType::F64 {
        let mut v = x.as_slice::<f64>()?.to_vec();
        softmax_f64(&mut v, dims, kind);
        return Tensor::from_vec(x.shape().to_vec(), v);
    }
    let mut v = if dt == DType::F32 {
        x.as_slice::<f32>()?.to_vec()
    } else {
        x.cast(DType::F32)?.into_vec::<f32>()?
    };
    softmax_f32(&mut v, dims, kind);
    let t = Tensor::from_vec(x.shape().to_vec(), v)?;
    if dt == DType::F32 {
        Ok(t)
    } else {
        t.cast(dt)
    }
}

/// CumSum (`prod = false`) or CumProd along `axis`.
pub fn cumulative(
    x: &Tensor,
    axis: usize,
    exclusive: bool,
    reverse: bool,
    prod: bool,
) -> Result<Tensor> {
    let (outer, n, inner) = split(x.shape(), axis)?;
    let what = if prod { "CumProd" } else { "CumSum" };
    let half = matches!(x.dtype(), DType::F16 | DType::BF16);
    let xf;
    let src_t = if half {
        xf = x.cast(DType::F32)?;
        &xf
    } else {
        x
    };
    if x.is_empty() {
        return Ok(x.clone());
    }
    let out = crate::dispatch!(num src_t.dtype(), what, T => {
        let src = src_t.as_slice::<T>()?;
        let mut out = alloc_vec::<T>(src.len())?;
        let id = if prod { T::one() } else { T::zero() };
        let comb = |a: T, b: T| if prod { a.mul(b) } else { a.add(b) };
        let mut acc = vec![id; inner];
        for o in 0..outer {
            acc.iter_mut().for_each(|a| *a = id);
            for step in 0..n {
                let j = if reverse { n - 1 - step } else { step };
                let base = (o * n + j) * inner;
                let s = &src[base..base + inner];
                let d = &mut out[base..base + inner];
                if exclusive {
                    for ((a, dv), &sv) in acc.iter_mut().zip(d.iter_mut()).zip(s) {
                        *dv = *a;
                        *a = comb(*a, sv);
                    }
                } else {
                    for ((a, dv), &sv) in acc.iter_mut().zip(d.iter_mut()).zip(s) {
                        *a = comb(*a, sv);
                        *dv = *a;
                    }
                }
            }
        }
        Tensor::from_vec(x.shape().to_vec(), out)
    })?;
    if half {
        out.cast(x.dtype())
    } else {
        Ok(out)
    }
}

/// TopK along `axis`: (values, int64 indices). Ties keep the lower index first.
pub fn top_k(x: &Tensor, k: usize, axis: usize, largest: bool) -> Result<(Tensor, Tensor)> {
    let (outer, n, inner) = split(x.shape(), axis)?;
    if k > n {
        return Err(Error::runtime(format!(
            "TopK: k = {k} is larger than the axis length {n}"
        )));
    }
    let mut oshape = x.shape().to_vec();
    oshape[axis] = k;
    let total = numel(&oshape, DType::I64)?;
    if total == 0 {
        return Ok((
            Tensor::zeros(x.dtype(), oshape.clone())?,
            Tensor::zeros(DType::I64, oshape)?,
        ));
    }
    let half = matches!(x.dtype(), DType::F16 | DType::BF16);
    let xf;
    let src_t = if half {
        xf = x.cast(DType::F32)?;
        &xf
    } else {
        x
    };
    let (vals, idxs) = crate::dispatch!(num src_t.dtype(), "TopK", T => {
        let src = src_t.as_slice::<T>()?;
        let mut vals = alloc_vec::<T>(total)?;
        let mut idxs = alloc_vec::<i64>(total)?;
        let mut order: Vec<usize> = Vec::with_capacity(n);
        let mut col: Vec<T> = Vec::with_capacity(n);
        // NaN sorts as the largest value (numpy order).
        let cmp = |a: &(T, usize), b: &(T, usize)| -> std::cmp::Ordering {
            use std::cmp::Ordering;
            let (va, ia) = *a;
            let (vb, ib) = *b;
            let o = match (va.is_nan(), vb.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                _ => va.partial_cmp(&vb).unwrap_or(Ordering::Equal),
            };
            let o = if largest { o.reverse() } else { o };
            o.then(ia.cmp(&ib))
        };
        for o in 0..outer {
            for i in 0..inner {
                col.clear();
                col.extend((0..n).map(|j| src[(o * n + j) * inner + i]));
                order.clear();
                order.extend(0..n);
                let key = |j: &usize| (col[*j], *j);
                if k < n && k > 0 {
                    order.select_nth_unstable_by(k - 1, |a, b| cmp(&key(a), &key(b)));
                }
                order.truncate(k);
                order.sort_unstable_by(|a, b| cmp(&key(a), &key(b)));
                for (t, &j) in order.iter().enumerate() {
                    let d = (o * k + t) * inner + i;
                    vals[d] = col[j];
                    idxs[d] = j as i64;
                }
            }
        }
        Ok((Tensor::from_vec(oshape.clone(), vals)?, Tensor::from_vec(oshape.clone(), idxs)?))
    })?;
    let vals = if half { vals.cast(x.dtype())? } else { vals };
    Ok((vals, idxs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_block_and_scattered() {
        let x = Tensor::from_vec(vec![2, 3, 2], (0..12).map(|v| v as f32).collect()).unwrap();
        let s = reduce(&x, &[1], false, ReduceKind::Sum).unwrap();
        assert_eq!(s.shape(), &[2, 2]);
        assert_eq!(s.as_slice::<f32>().unwrap(), &[6., 9., 24., 27.]);
        let s = reduce(&x, &[0, 2], true, ReduceKind::Max).unwrap();
        assert_eq!(s.shape(), &[1, 3, 1]);
        assert_eq!(s.as_slice::<f32>().unwrap(), &[7., 9., 11.]);
        let e = Tensor::from_vec(vec![2, 0], Vec::<f32>::new()).unwrap();
        let s = reduce(&e, &[1], false, ReduceKind::LogSumExp).unwrap();
        assert_eq!(s.as_slice::<f32>().unwrap(), &[f32::NEG_INFINITY; 2]);
        let i = Tensor::from_vec(vec![3], vec![100i8, 100, 100]).unwrap();
        let s = reduce(&i, &[], false, ReduceKind::Sum).unwrap();
        assert_eq!(s.as_slice::<i8>().unwrap(), &[44]);
        assert!(reduce(&x, &[3], false, ReduceKind::Sum).is_err());
        assert!(normalize_axes(&[1, -2], 3).is_err());
    }

    #[test]
    fn softmax_and_exp() {
        for &v in &[-80.0f32, -3.3, 0.0, 1.0, 20.5, 88.0] {
            let (a, b) = (fast_exp(v), v.exp());
            assert!(((a - b) / b).abs() < 1e-6, "{v}: {a} vs {b}");
        }
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        let x = Tensor::from_vec(vec![2, 2], vec![1f32, 2., 3., 4.]).unwrap();
        let y = softmax(&x, (1, 2, 2), SoftmaxKind::Softmax).unwrap();
        let y = y.as_slice::<f32>().unwrap();
        assert!((y[0] - 0.119_202_92).abs() < 1e-6 && (y[2] - 0.880_797).abs() < 1e-6);
        let i = Tensor::from_vec(vec![2], vec![1i32, 2]).unwrap();
        assert!(softmax(&i, (1, 2, 1), SoftmaxKind::Softmax).is_err());
        let d = Tensor::from_vec(vec![2, 2], vec![1f64, 2., 3., 4.]).unwrap();
        let y = softmax(&d, (1, 2, 2), SoftmaxKind::LogSoftmax).unwrap();
        let y = y.as_slice::<f64>().unwrap();
        assert!((y[0] - (0.119_202_922_022_117_57f64).ln()).abs() < 1e-12);
        let h = softmax(&d, (2, 2, 1), SoftmaxKind::Hardmax).unwrap();
        assert_eq!(h.as_slice::<f64>().unwrap(), &[0., 1., 0., 1.]);
    }

    #[test]
    fn argmax_cumsum_topk() {
        let x = Tensor::from_vec(vec![2, 3], vec![1f32, 5., 5., 7., 0., 7.]).unwrap();
        let a = arg_extreme(&x, 1, false, true, true).unwrap();
        assert_eq!(a.as_slice::<i64>().unwrap(), &[2, 2]);
        let a = arg_extreme(&x, 1, true, false, true).unwrap();
        assert_eq!(a.shape(), &[2, 1]);
        assert_eq!(a.as_slice::<i64>().unwrap(), &[1, 0]);
        let c = cumulative(&x, 1, true, true, false).unwrap();
        assert_eq!(c.as_slice::<f32>().unwrap(), &[10., 5., 0., 7., 7., 0.]);
        let (v, i) = top_k(&x, 2, 1, true).unwrap();
        assert_eq!(v.as_slice::<f32>().unwrap(), &[5., 5., 7., 7.]);
        assert_eq!(i.as_slice::<i64>().unwrap(), &[1, 2, 0, 2]);
        assert!(top_k(&x, 4, 1, true).is_err());
    }

    #[test]
    fn empty_tensors_with_huge_dims_return_fast() {
        let big = 1usize << 40;
        let e = Tensor::from_vec(vec![big, 0, big], Vec::<f32>::new()).unwrap();
        assert_eq!(reduce(&e, &[0], false, ReduceKind::Sum).unwrap().len(), 0);
        assert!(reduce(&e, &[1], false, ReduceKind::Sum).is_err()); // over budget
        assert_eq!(arg_extreme(&e, 0, true, false, true).unwrap().len(), 0);
        assert_eq!(cumulative(&e, 2, false, false, true).unwrap().len(), 0);
        assert_eq!(top_k(&e, 0, 1, true).unwrap().0.len(), 0);
        assert_eq!(
            softmax(&e, (big, 0, big), SoftmaxKind::Softmax)
                .unwrap()
                .len(),
            0
        );
    }
}
