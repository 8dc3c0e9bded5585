//! CPU kernels for the layout family (ops in `crate::graph::ops::layout`).
//!
//! Most data movement goes through two engines: [`strided_copy`] (a view given by an
//! offset and per-dim (length, stride) pairs, used by Transpose, Slice, Expand, Tile,
//! DepthToSpace, SpaceToDepth; contiguous runs copy as slices, transposes go through
//! cache tiles) and [`index_map_copy`] (per-axis source maps with a fill value, used by
//! Pad and CenterCropPad). Gather/Concat/Split copy contiguous blocks.

// Kernels are generic over every element type, strings included, so they clone.
#![allow(clippy::clone_on_copy)]

use crate::cpu::common::{split_at_axis, strides};
use crate::dispatch;
use crate::error::{Error, Result};
use crate::tensor::{alloc_filled, alloc_vec, numel, DType, Elem, Num, Tensor};
use std::cmp::Ordering;

// ---------------------------------------------------------------------------------------
// Small helpers

/// Normalizes an index into a dimension of `len` (negative indices wrap once).
pub fn norm_index(i: i64, len: usize, what: &str) -> Result<usize> {
    let l = i64::try_from(len).map_err(|_| Error::runtime("dimension too large"))?;
    let j = if i < 0 { i + l } else { i };
    if j < 0 || j >= l {
        return Err(Error::runtime(format!(
            "{what}: index {i} is out of range for a dimension of {len}"
        )));
    }
    usize::try_from(j).map_err(|_| Error::runtime(format!("{what}: bad index {i}")))
}

/// Normalizes an axis in `[-rank, rank)`.
pub fn norm_axis(axis: i64, rank: usize, what: &str) -> Result<usize> {
    crate::graph::attrs::norm_axis(axis, rank)
        .map_err(|e| Error::shape(format!("{what}: {}", e.message())))
}

fn to_usize(v: i64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::runtime(format!("{what}: negative size {v}")))
}

/// Converts a shape given as i64 values (all must be ≥ 0).
pub fn shape_from_i64(v: &[i64], what: &str) -> Result<Vec<usize>> {
    v.iter().map(|&d| to_usize(d, what)).collect()
}

/// A copy of `t` with a new shape of the same element count.
pub fn with_shape(t: &Tensor, shape: Vec<usize>) -> Result<Tensor> {
    let n = crate::tensor::numel_unchecked(&shape)?;
    if n != t.len() {
        return Err(Error::shape(format!(
            "cannot view a tensor of shape {:?} as {shape:?}",
            t.shape()
        )));
    }
    Tensor::new(shape, t.data().clone())
}

/// Total order used by Unique and sorting: NaNs equal each other and sort last.
fn cmp_elem<T: PartialOrd>(a: &T, b: &T) -> Ordering {
    match a.partial_cmp(b) {
        Some(o) => o,
        None => {
            #[allow(clippy::eq_op)]
            let (an, bn) = (a != a, b != b);
            match (an, bn) {
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                _ => Ordering::Equal,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Strided copy engine

/// Drops length-1 dims and merges dims that are contiguous with each other.
fn coalesce(dims: &[(usize, isize)]) -> Vec<(usize, isize)> {
    let mut c: Vec<(usize, isize)> = Vec::with_capacity(dims.len());
    for &(len, st) in dims {
        if len == 1 {
            continue;
        }
        if let Some(last) = c.last_mut() {
            if let Ok(l) = isize::try_from(len) {
                if last.1 == st.wrapping_mul(l) {
                    last.0 *= len;
                    last.1 = st;
                    continue;
                }
            }
        }
        c.push((len, st));
    }
    c
}

const TILE: usize = 16;

fn strided_gen<T: Elem>(
    src: &[T],
    offset: usize,
    dims: &[(usize, isize)],
    n: usize,
) -> Result<Vec<T>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    // Every reachable position must lie inside `src`.
    let mut lo = isize::try_from(offset).map_err(|_| Error::shape("offset too large"))?;
    let mut hi = lo;
    for &(len, st) in dims {
        let l = isize::try_from(len).map_err(|_| Error::shape("dim too large"))?;
        let ext = st
            .checked_mul(l - 1)
            .ok_or_else(|| Error::shape("strided view overflows"))?;
        if ext < 0 {
            lo += ext;
        } else {
            hi += ext;
        }
    }
    if lo < 0 || usize::try_from(hi).map_or(true, |h| h >= src.len()) {
        return Err(Error::shape("strided view reaches outside its tensor"));
    }
    let c = coalesce(dims);
    let base = offset as isize;
    let Some(&(ilen, ist)) = c.last() else {
        return Ok(vec![src[offset].clone()]);
    };
    let outer = &c[..c.len() - 1];
    // Transpose-like: some outer dim is contiguous in the source; copy through tiles.
    if ist != 1 && ist != 0 && c.iter().all(|d| d.1 > 0) {
        if let Some(k) = outer.iter().position(|d| d.1 == 1) {
            return tiled(src, base as usize, &c, k, n);
        }
    }
    let mut out: Vec<T> = Vec::with_capacity(n);
    let mut idx = vec![0usize; outer.len()];
    let mut pos = base;
    loop {
        let p = pos as usize;
        if ist == 1 {
            out.extend_from_slice(&src[p..p + ilen]);
        } else if ist == 0 {
            out.extend(std::iter::repeat_n(src[p].clone(), ilen));
        } else {
            let mut q = pos;
            for _ in 0..ilen {
                out.push(src[q as usize].clone());
                q += ist;
            }
        }
        // Odometer over the outer dims.
        let mut d = outer.len();
        loop {
            if d == 0 {
                return Ok(out);
            }
            d -= 1;
            idx[d] += 1;
            pos += outer[d].1;
            if idx[d] < outer[d].0 {
                break;
            }
            pos -= outer[d].1 * outer[d].0 as isize;
            idx[d] = 0;
        }
    }
}

/// Strided copy where dim `k` (not the last) has source stride 1: 2-D tiles over (k, last).
fn tiled<T: Elem>(
    src: &[T],
    base: usize,
    c: &[(usize, isize)],
    k: usize,
    n: usize,
) -> Result<Vec<T>> {
    let r = c.len();
    let mut out: Vec<T> = alloc_vec(n)?;
    // Output strides (row-major over c).
    let mut ostr = vec![1usize; r];
    for i in (0..r - 1).rev() {
        ostr[i] = ostr[i + 1] * c[i + 1].0;
    }
    let (klen, _) = c[k];
    let (llen, lst) = c[r - 1];
    let lst = lst as usize;
    let kost = ostr[k];
    let others: Vec<usize> = (0..r - 1).filter(|&i| i != k).collect();
    let mut idx = vec![0usize; others.len()];
    let (mut ipos, mut opos) = (base, 0usize);
    loop {
        let mut i0 = 0;
        while i0 < klen {
            let i1 = (i0 + TILE).min(klen);
            let mut j0 = 0;
            while j0 < llen {
                let j1 = (j0 + TILE).min(llen);
                for i in i0..i1 {
                    let orow = opos + i * kost;
                    let irow = ipos + i;
                    for j in j0..j1 {
                        out[orow + j] = src[irow + j * lst].clone();
                    }
                }
                j0 = j1;
            }
            i0 = i1;
        }
        let mut d = others.len();
        loop {
            if d == 0 {
                return Ok(out);
            }
            d -= 1;
            let a = others[d];
            idx[d] += 1;
            ipos += c[a].1 as usize;
            opos += ostr[a];
            if idx[d] < c[a].0 {
                break;
            }
            ipos -= c[a].1 as usize * c[a].0;
            opos -= ostr[a] * c[a].0;
            idx[d] = 0;
        }
    }
}

/// Copies the view of `t` starting at element `offset` with per-dim (length, stride in
/// elements) into a new tensor of shape `out_shape` (whose element count must equal the
/// product of the lengths).
pub fn strided_copy(
    t: &Tensor,
    offset: usize,
    dims: &[(usize, isize)],
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let n = numel(&out_shape, t.dtype())?;
    let m = crate::tensor::numel_unchecked(&dims.iter().map(|d| d.0).collect::<Vec<_>>())?;
    if n != m {
        return Err(Error::shape("strided view and output sizes differ"));
    }
    dispatch!(all t.dtype(), "strided copy", T => {
        let v = strided_gen(t.as_slice::<T>()?, offset, dims, n)?;
        Tensor::from_vec(out_shape, v)
    })
}

fn istride(s: usize) -> Result<isize> {
    isize::try_from(s).map_err(|_| Error::shape("stride too large"))
}

/// Transposes `t` viewed with `view` (same element count) by `perm`, giving shape
/// `out_shape` (defaults to the permuted view).
pub fn permute(
    t: &Tensor,
    view: &[usize],
    perm: &[usize],
    out_shape: Option<Vec<usize>>,
) -> Result<Tensor> {
    let n = crate::tensor::numel_unchecked(view)?;
    if n != t.len() || perm.len() != view.len() {
        return Err(Error::shape(format!(
            "cannot permute {:?} viewed as {view:?} by {perm:?}",
            t.shape()
        )));
    }
    let mut seen = vec![false; perm.len()];
    for &p in perm {
        if p >= perm.len() || seen[p] {
            return Err(Error::attr(format!("invalid permutation {perm:?}")));
        }
        seen[p] = true;
    }
    let st = strides(view);
    let dims: Vec<(usize, isize)> = perm
        .iter()
        .map(|&p| Ok((view[p], istride(st[p])?)))
        .collect::<Result<_>>()?;
    let shape = out_shape.unwrap_or_else(|| perm.iter().map(|&p| view[p]).collect());
    strided_copy(t, 0, &dims, shape)
}

/// Transpose with a permutation (default: reversed axes).
pub fn transpose(t: &Tensor, perm: Option<&[usize]>) -> Result<Tensor> {
    let r = t.rank();
    let default: Vec<usize> = (0..r).rev().collect();
    let perm = perm.unwrap_or(&default);
    if perm.len() != r {
        return Err(Error::shape(format!(
            "Transpose: perm {perm:?} does not match rank {r}"
        )));
    }
    permute(t, t.shape(), perm, None)
}

// ---------------------------------------------------------------------------------------
// Reshape family

/// The output shape of Reshape: 0 copies the input dim (unless `allowzero`), one -1 is
/// inferred.
pub fn reshape_shape(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &d) in spec.iter().enumerate() {
        if d == -1 {
            if infer_at.is_some() {
                return Err(Error::shape("Reshape: more than one -1 in the shape"));
            }
            infer_at = Some(i);
            out.push(1);
        } else if d == 0 && !allowzero {
            let v = *input.get(i).ok_or_else(|| {
                Error::shape(format!(
                    "Reshape: 0 at position {i} but the input has rank {}",
                    input.len()
                ))
            })?;
            out.push(v);
        } else {
            out.push(
                usize::try_from(d)
                    .map_err(|_| Error::shape(format!("Reshape: invalid dim {d}")))?,
            );
        }
    }
    let n_in = crate::tensor::numel_unchecked(input)?;
    let n_out = crate::tensor::numel_unchecked(&out)?;
    if let Some(i) = infer_at {
        if n_out == 0 {
            if n_in != 0 {
                return Err(Error::shape(format!(
                    "Reshape: cannot infer -1 of {spec:?} for {input:?}"
                )));
            }
            out[i] = 0;
        } else {
            if n_in % n_out != 0 {
                return Err(Error::shape(format!(
                    "Reshape: cannot reshape {input:?} to {spec:?}"
                )));
            }
            out[i] = n_in / n_out;
        }
    } else if n_in != n_out {
        return Err(Error::shape(format!(
            "Reshape: cannot reshape {input:?} to {spec:?}"
        )));
    }
    Ok(out)
}

/// Output shape of Squeeze (axes normalized or None for all 1-dims).
pub fn squeeze_shape(input: &[usize], axes: Option<&[i64]>) -> Result<Vec<usize>> {
    match axes {
        None => Ok(input.iter().copied().filter(|&d| d != 1).collect()),
        Some(axes) => {
            let mut drop = vec![false; input.len()];
            for &a in axes {
                let k = norm_axis(a, input.len(), "Squeeze")?;
                if input[k] != 1 {
                    return Err(Error::shape(format!(
                        "Squeeze: dim {k} of {input:?} is not 1"
                    )));
                }
                drop[k] = true;
            }
            Ok(input
                .iter()
                .zip(drop)
                .filter(|(_, d)| !d)
                .map(|(&x, _)| x)
                .collect())
        }
    }
}

/// Positions (in the output) of the new axes of Unsqueeze, sorted and checked.
pub fn unsqueeze_axes(rank: usize, axes: &[i64]) -> Result<Vec<bool>> {
    let r = rank + axes.len();
    let mut new = vec![false; r];
    for &a in axes {
        let k = norm_axis(a, r, "Unsqueeze")?;
        if new[k] {
            return Err(Error::shape(format!("Unsqueeze: axis {a} repeated")));
        }
        new[k] = true;
    }
    Ok(new)
}

pub fn unsqueeze_shape(input: &[usize], axes: &[i64]) -> Result<Vec<usize>> {
    let new = unsqueeze_axes(input.len(), axes)?;
    let mut it = input.iter();
    Ok(new
        .iter()
        .map(|&n| {
            if n {
                1
            } else {
                it.next().copied().unwrap_or(1)
            }
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Slice

/// (start, length) for one sliced axis, following the ONNX clamping rules.
pub fn slice_axis(dim: usize, start: i64, end: i64, step: i64) -> Result<(usize, usize)> {
    if step == 0 {
        return Err(Error::runtime("Slice: step cannot be 0"));
    }
    if dim == 0 {
        return Ok((0, 0));
    }
    let d = dim as i128;
    let (mut s, mut e, st) = (start as i128, end as i128, step as i128);
    if s < 0 {
        s += d;
    }
    if e < 0 {
        e += d;
    }
    let len = if st > 0 {
        s = s.clamp(0, d);
        e = e.clamp(0, d);
        if e > s {
            (e - s + st - 1) / st
        } else {
            0
        }
    } else {
        s = s.clamp(0, d - 1);
        e = e.clamp(-1, d - 1);
        if s > e {
            (s - e + (-st) - 1) / (-st)
        } else {
            0
        }
    };
    if len == 0 {
        return Ok((0, 0));
    }
    Ok((s as usize, len as usize))
}

/// Slice with per-axis starts/ends/steps (axes already normalized and distinct).
pub fn slice(
    t: &Tensor,
    starts: &[i64],
    ends: &[i64],
    axes: &[usize],
    steps: &[i64],
) -> Result<Tensor> {
    let shape = t.shape();
    let n = axes.len();
    if starts.len() != n || ends.len() != n || steps.len() != n {
        return Err(Error::shape("Slice: parameter lists differ in length"));
    }
    let st = strides(shape);
    let mut dims: Vec<(usize, isize)> = shape
        .iter()
        .zip(&st)
        .map(|(&d, &s)| Ok((d, istride(s)?)))
        .collect::<Result<_>>()?;
    let mut offset = 0usize;
    for (k, &a) in axes.iter().enumerate() {
        let (s, e, stp) = (starts[k], ends[k], steps[k]);
        if a >= shape.len() {
            return Err(Error::shape("Slice: axis out of range"));
        }
        let (b, len) = slice_axis(shape[a], s, e, stp)?;
        offset += b * st[a];
        let stp_i = isize::try_from(stp).map_err(|_| Error::runtime("Slice: step too large"))?;
        dims[a] = (
            len,
            if len > 1 {
                dims[a].1 * stp_i
            } else {
                dims[a].1
            },
        );
    }
    let out_shape: Vec<usize> = dims.iter().map(|d| d.0).collect();
    if out_shape.contains(&0) {
        return Tensor::zeros(t.dtype(), out_shape);
    }
    strided_copy(t, offset, &dims, out_shape)
}

// ---------------------------------------------------------------------------------------
// Broadcasting copies

/// Numpy broadcast of two concrete shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let x = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let y = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            if x == y || y == 1 {
                Ok(x)
            } else if x == 1 {
                Ok(y)
            } else {
                Err(Error::shape(format!("cannot broadcast {a:?} with {b:?}")))
            }
        })
        .collect()
}

/// Expand: broadcast `t` against `shape`.
pub fn expand(t: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let out = broadcast_shape(t.shape(), shape)?;
    broadcast_to(t, &out)
}

/// Broadcasts `t` to `out` (which must be a broadcast of its shape).
pub fn broadcast_to(t: &Tensor, out: &[usize]) -> Result<Tensor> {
    let r = out.len();
    let ts = t.shape();
    if ts.len() > r {
        return Err(Error::shape("broadcast to a lower rank"));
    }
    let st = strides(ts);
    let off = r - ts.len();
    let dims: Vec<(usize, isize)> = (0..r)
        .map(|i| {
            if i < off {
                return Ok((out[i], 0));
            }
            let d = ts[i - off];
            if d == out[i] {
                Ok((d, istride(st[i - off])?))
            } else if d == 1 {
                Ok((out[i], 0))
            } else {
                Err(Error::shape(format!("cannot broadcast {ts:?} to {out:?}")))
            }
        })
        .collect::<Result<_>>()?;
    if out.contains(&0) {
        return Tensor::zeros(t.dtype(), out.to_vec());
    }
    strided_copy(t, 0, &dims, out.to_vec())
}

/// Tile: repeats each axis `reps[i]` times.
pub fn tile(t: &Tensor, reps: &[i64]) -> Result<Tensor> {
    let shape = t.shape();
    if reps.len() != shape.len() {
        return Err(Error::shape(format!(
            "Tile: {} repeats for rank {}",
            reps.len(),
            shape.len()
        )));
    }
    let st = strides(shape);
    let mut dims = Vec::with_capacity(2 * shape.len());
    let mut out = Vec::with_capacity(shape.len());
    for i in 0..shape.len() {
        let r = to_usize(reps[i], "Tile")?;
        dims.push((r, 0));
        dims.push((shape[i], istride(st[i])?));
        out.push(
            r.checked_mul(shape[i])
                .ok_or_else(|| Error::memory("Tile: output too large"))?,
        );
    }
    if out.contains(&0) {
        return Tensor::zeros(t.dtype(), out);
    }
    strided_copy(t, 0, &dims, out)
}

// ---------------------------------------------------------------------------------------
// Index-map copy (Pad, CenterCropPad)

fn index_map_gen<T: Elem>(
    src: &[T],
    shape: &[usize],
    maps: &[Vec<Option<usize>>],
    fill: &T,
    n: usize,
) -> Result<Vec<T>> {
    let r = shape.len();
    if r == 0 {
        return Ok(src.to_vec());
    }
    let st = strides(shape);
    let mut out: Vec<T> = Vec::with_capacity(n);
    if n == 0 {
        return Ok(out);
    }
    // Runs of the last axis: (source start or None, length).
    let last = &maps[r - 1];
    let mut runs: Vec<(Option<usize>, usize)> = Vec::new();
    for &m in last {
        if let Some(s) = m {
            if s >= shape[r - 1] {
                return Err(Error::shape("index map out of range"));
            }
        }
        match (runs.last_mut(), m) {
            (Some((None, l)), None) => *l += 1,
            (Some((Some(s0), l)), Some(s)) if *s0 + *l == s => *l += 1,
            _ => runs.push((m, 1)),
        }
    }
    for (a, map) in maps.iter().enumerate().take(r - 1) {
        if map.iter().flatten().any(|&s| s >= shape[a]) {
            return Err(Error::shape("index map out of range"));
        }
    }
    let outer = &maps[..r - 1];
    let mut idx = vec![0usize; outer.len()];
    let row = last.len();
    loop {
        let mut base = Some(0usize);
        for (a, &i) in idx.iter().enumerate() {
            base = match (base, outer[a][i]) {
                (Some(b), Some(s)) => Some(b + s * st[a]),
                _ => None,
            };
        }
        match base {
            None => out.extend(std::iter::repeat_n(fill.clone(), row)),
            Some(b) => {
                for &(s, l) in &runs {
                    match s {
                        Some(s) => out.extend_from_slice(&src[b + s..b + s + l]),
                        None => out.extend(std::iter::repeat_n(fill.clone(), l)),
                    }
                }
            }
        }
        let mut d = outer.len();
        loop {
            if d == 0 {
                return Ok(out);
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < outer[d].len() {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Builds the output by mapping each output index on each axis to a source index (None:
/// the fill value `fill`, a scalar tensor of `t`'s dtype).
pub fn index_map_copy(t: &Tensor, maps: &[Vec<Option<usize>>], fill: &Tensor) -> Result<Tensor> {
    if maps.len() != t.rank() {
        return Err(Error::shape("index map rank mismatch"));
    }
    let out_shape: Vec<usize> = maps.iter().map(|m| m.len()).collect();
    let n = numel(&out_shape, t.dtype())?;
    if fill.dtype() != t.dtype() {
        return Err(Error::dtype(format!(
            "pad value of type {} for a {} tensor",
            fill.dtype(),
            t.dtype()
        )));
    }
    dispatch!(all t.dtype(), "Pad", T => {
        let f = fill.as_slice::<T>()?.first().cloned().unwrap_or_default();
        let v = index_map_gen(t.as_slice::<T>()?, t.shape(), maps, &f, n)?;
        Tensor::from_vec(out_shape, v)
    })
}

/// Pad modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// The source map of one padded axis.
pub fn pad_map(d: usize, begin: i64, end: i64, mode: PadMode) -> Result<Vec<Option<usize>>> {
    let di = d as i64;
    let out = di
        .checked_add(begin)
        .and_then(|x| x.checked_add(end))
        .ok_or_else(|| Error::runtime("Pad: pads overflow"))?;
    let out = usize::try_from(out)
        .map_err(|_| Error::runtime(format!("Pad: negative output dim for pads {begin}, {end}")))?;
    crate::tensor::numel(&[out], DType::U8)?;
    if d == 0 && out > 0 && mode != PadMode::Constant {
        return Err(Error::runtime(
            "Pad: cannot pad an empty axis in reflect/edge/wrap mode",
        ));
    }
    let mut m = Vec::with_capacity(out);
    let (di, begin) = (di as i128, begin as i128);
    for o in 0..out as i128 {
        let i = o - begin;
        let s = if (0..di).contains(&i) {
            Some(i)
        } else {
            match mode {
                PadMode::Constant => None,
                PadMode::Edge => Some(i.clamp(0, di - 1)),
                PadMode::Wrap => Some(i.rem_euclid(di)),
                PadMode::Reflect => {
                    if di == 1 {
                        Some(0)
                    } else {
                        let p = 2 * (di - 1);
                        let j = i.rem_euclid(p);
                        Some(if j < di { j } else { p - j })
                    }
                }
            }
        };
        m.push(s.and_then(|v| usize::try_from(v).ok()));
    }
    Ok(m)
}

/// Pad with per-axis (begin, end) pads (negative pads crop).
pub fn pad(t: &Tensor, pads: &[(i64, i64)], mode: PadMode, value: &Tensor) -> Result<Tensor> {
    if pads.len() != t.rank() {
        return Err(Error::shape("Pad: pads do not match the rank"));
    }
    let maps: Vec<Vec<Option<usize>>> = t
        .shape()
        .iter()
        .zip(pads)
        .map(|(&d, &(b, e))| pad_map(d, b, e, mode))
        .collect::<Result<_>>()?;
    index_map_copy(t, &maps, value)
}

/// CenterCropPad: crops or pads (with zeros) each listed axis to `sizes` around the center.
pub fn center_crop_pad(t: &Tensor, axes: &[usize], sizes: &[usize]) -> Result<Tensor> {
    let maps = center_crop_maps(t.shape(), axes, sizes)?;
    let zero = Tensor::zeros(t.dtype(), vec![])?;
    index_map_copy(t, &maps, &zero)
}

/// CenterCropPad's source index along each axis of the output (None: zero padding).
pub fn center_crop_maps(
    shape: &[usize],
    axes: &[usize],
    sizes: &[usize],
) -> Result<Vec<Vec<Option<usize>>>> {
    let mut maps: Vec<Vec<Option<usize>>> =
        shape.iter().map(|&d| (0..d).map(Some).collect()).collect();
    for (&a, &target) in axes.iter().zip(sizes) {
        let d = *shape
            .get(a)
            .ok_or_else(|| Error::shape("CenterCropPad: axis out of range"))?;
        numel(&[target], DType::U8)?;
        maps[a] = if d >= target {
            let s = (d - target) / 2;
            (s..s + target).map(Some).collect()
        } else {
            let b = (target - d) / 2;
            (0..target)
                .map(|o| {
                    if o >= b && o < b + d {
                        Some(o - b)
                    } else {
                        None
                    }
                })
                .collect()
        };
    }
    Ok(maps)
}

// ---------------------------------------------------------------------------------------
// Gather / Scatter

fn gather_rows<T: Elem>(
    src: &[T],
    outer: usize,
    len: usize,
    inner: usize,
    idx: &[usize],
    n: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    for o in 0..outer {
        let base = o * len * inner;
        for &i in idx {
            let s = base + i * inner;
            out.extend_from_slice(&src[s..s + inner]);
        }
    }
    out
}

/// Selects `idx` (already checked < the axis length) along `axis`; the gathered axis is
/// replaced by `idx_shape`.
pub fn take(data: &Tensor, axis: usize, idx: &[usize], idx_shape: &[usize]) -> Result<Tensor> {
    let shape = data.shape();
    if axis >= shape.len() {
        return Err(Error::shape("gather axis out of range"));
    }
    let (outer, len, inner) = split_at_axis(shape, axis);
    if idx.iter().any(|&i| i >= len) {
        return Err(Error::runtime("gather index out of range"));
    }
    let mut out_shape = shape[..axis].to_vec();
    out_shape.extend_from_slice(idx_shape);
    out_shape.extend_from_slice(&shape[axis + 1..]);
    let n = numel(&out_shape, data.dtype())?;
    dispatch!(all data.dtype(), "Gather", T => {
        let v = gather_rows(data.as_slice::<T>()?, outer, len, inner, idx, n);
        Tensor::from_vec(out_shape, v)
    })
}

/// Gather along `axis` (negative indices wrap once).
pub fn gather(data: &Tensor, indices: &Tensor, axis: usize) -> Result<Tensor> {
    let len = *data
        .shape()
        .get(axis)
        .ok_or_else(|| Error::shape("Gather: axis out of range"))?;
    let idx: Vec<usize> = indices
        .to_i64_vec()?
        .iter()
        .map(|&i| norm_index(i, len, "Gather"))
        .collect::<Result<_>>()?;
    take(data, axis, &idx, indices.shape())
}

/// For each position of `shape` in row-major order, calls `f(flat, coords)`.
fn for_each_coord(shape: &[usize], mut f: impl FnMut(usize, &[usize]) -> Result<()>) -> Result<()> {
    let n = crate::tensor::numel_unchecked(shape)?;
    let mut c = vec![0usize; shape.len()];
    for flat in 0..n {
        f(flat, &c)?;
        for d in (0..shape.len()).rev() {
            c[d] += 1;
            if c[d] < shape[d] {
                break;
            }
            c[d] = 0;
        }
    }
    Ok(())
}

/// Flat source offsets for GatherElements/ScatterElements: `indices` positions with the
/// axis coordinate replaced by the (checked) index value.
fn element_offsets(
    data_shape: &[usize],
    indices: &Tensor,
    axis: usize,
    what: &str,
) -> Result<Vec<usize>> {
    let ishape = indices.shape();
    if ishape.len() != data_shape.len() {
        return Err(Error::shape(format!(
            "{what}: indices rank {} != data rank {}",
            ishape.len(),
            data_shape.len()
        )));
    }
    if axis >= data_shape.len() {
        return Err(Error::shape(format!("{what}: axis out of range")));
    }
    for (k, (&a, &b)) in ishape.iter().zip(data_shape).enumerate() {
        if k != axis && a > b {
            return Err(Error::shape(format!(
                "{what}: indices shape {ishape:?} exceeds data shape {data_shape:?}"
            )));
        }
    }
    let idx = indices.to_i64_vec()?;
    let st = strides(data_shape);
    let len = data_shape[axis];
    let mut offs = Vec::with_capacity(idx.len());
    for_each_coord(ishape, |flat, c| {
        let i = norm_index(idx[flat], len, what)?;
        let mut o = 0;
        for (k, &ck) in c.iter().enumerate() {
            o += if k == axis { i } else { ck } * st[k];
        }
        offs.push(o);
        Ok(())
    })?;
    Ok(offs)
}

pub fn gather_elements(data: &Tensor, indices: &Tensor, axis: usize) -> Result<Tensor> {
    let offs = element_offsets(data.shape(), indices, axis, "GatherElements")?;
    dispatch!(all data.dtype(), "GatherElements", T => {
        let src = data.as_slice::<T>()?;
        let v: Vec<T> = offs.iter().map(|&o| src[o].clone()).collect();
        Tensor::from_vec(indices.shape().to_vec(), v)
    })
}

/// Scatter reductions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

impl Reduction {
    pub fn parse(s: &str) -> Result<Reduction> {
        Ok(match s {
            "none" => Reduction::None,
            "add" => Reduction::Add,
            "mul" => Reduction::Mul,
            "max" => Reduction::Max,
            "min" => Reduction::Min,
            _ => return Err(Error::attr(format!("unknown reduction '{s}'"))),
        })
    }
}

fn combine<T: Num>(r: Reduction, a: T, b: T) -> T {
    match r {
        Reduction::None => b,
        Reduction::Add => a.add(b),
        Reduction::Mul => a.mul(b),
        Reduction::Max => {
            if b > a {
                b
            } else {
                a
            }
        }
        Reduction::Min => {
            if b < a {
                b
            } else {
                a
            }
        }
    }
}

/// Applies updates at flat target offsets; each target block has `block` elements.
fn scatter_apply(
    data: &Tensor,
    updates: &Tensor,
    targets: &[usize],
    block: usize,
    r: Reduction,
) -> Result<Tensor> {
    if data.dtype() != updates.dtype() {
        return Err(Error::dtype(format!(
            "scatter of {} updates into {} data",
            updates.dtype(),
            data.dtype()
        )));
    }
    if targets.len().checked_mul(block) != Some(updates.len()) {
        return Err(Error::shape(
            "scatter: updates shape does not match indices",
        ));
    }
    if targets.iter().any(|&t| t + block > data.len()) {
        return Err(Error::runtime("scatter: target out of range"));
    }
    let mut out = data.clone();
    if r == Reduction::None {
        dispatch!(all data.dtype(), "Scatter", T => {
            let u = updates.as_slice::<T>()?;
            let o = out.as_mut_slice::<T>()?;
            for (k, &t) in targets.iter().enumerate() {
                o[t..t + block].clone_from_slice(&u[k * block..(k + 1) * block]);
            }
            Ok(())
        })?;
    } else {
        dispatch!(num data.dtype(), "Scatter with reduction", T => {
            let u = updates.as_slice::<T>()?;
            let o = out.as_mut_slice::<T>()?;
            for (k, &t) in targets.iter().enumerate() {
                for (x, &y) in o[t..t + block].iter_mut().zip(&u[k * block..(k + 1) * block]) {
                    *x = combine(r, *x, y);
                }
            }
            Ok(())
        })?;
    }
    Ok(out)
}

pub fn scatter_elements(
    data: &Tensor,
    indices: &Tensor,
    updates: &Tensor,
    axis: usize,
    r: Reduction,
) -> Result<Tensor> {
    if updates.shape() != indices.shape() {
        return Err(Error::shape(
            "ScatterElements: updates and indices shapes differ",
        ));
    }
    let offs = element_offsets(data.shape(), indices, axis, "ScatterElements")?;
    scatter_apply(data, updates, &offs, 1, r)
}

/// Offsets of the index tuples of GatherND/ScatterND within one batch, with the block size.
fn nd_offsets(
    data_shape: &[usize],
    indices: &Tensor,
    batch_dims: usize,
    what: &str,
) -> Result<(Vec<usize>, usize, usize)> {
    let ishape = indices.shape();
    let q = ishape.len();
    let r = data_shape.len();
    if q < 1 || batch_dims >= q || batch_dims > r {
        return Err(Error::shape(format!(
            "{what}: bad ranks (data {r}, indices {q}, batch_dims {batch_dims})"
        )));
    }
    if data_shape[..batch_dims] != ishape[..batch_dims] {
        return Err(Error::shape(format!("{what}: batch dims differ")));
    }
    let k = ishape[q - 1];
    if batch_dims + k > r {
        return Err(Error::shape(format!(
            "{what}: index tuples of length {k} for rank {r}"
        )));
    }
    let st = strides(data_shape);
    let idx = indices.to_i64_vec()?;
    let batch_size: usize = data_shape[batch_dims..].iter().product();
    let block: usize = data_shape[batch_dims + k..].iter().product();
    let tuples = crate::tensor::numel_unchecked(&ishape[..q - 1])?;
    let per_batch: usize = ishape[batch_dims..q - 1].iter().product();
    let mut offs = Vec::with_capacity(tuples);
    for t in 0..tuples {
        let b = t.checked_div(per_batch).unwrap_or(0);
        let mut o = b * batch_size;
        for j in 0..k {
            let a = batch_dims + j;
            o += norm_index(idx[t * k + j], data_shape[a], what)? * st[a];
        }
        offs.push(o);
    }
    Ok((offs, block, k))
}

pub fn gather_nd(data: &Tensor, indices: &Tensor, batch_dims: usize) -> Result<Tensor> {
    let (offs, block, k) = nd_offsets(data.shape(), indices, batch_dims, "GatherND")?;
    let ishape = indices.shape();
    let mut out_shape = ishape[..ishape.len() - 1].to_vec();
    out_shape.extend_from_slice(&data.shape()[batch_dims + k..]);
    let n = numel(&out_shape, data.dtype())?;
    dispatch!(all data.dtype(), "GatherND", T => {
        let src = data.as_slice::<T>()?;
        let mut v = Vec::with_capacity(n);
        for &o in &offs {
            v.extend_from_slice(&src[o..o + block]);
        }
        Tensor::from_vec(out_shape, v)
    })
}

pub fn scatter_nd(
    data: &Tensor,
    indices: &Tensor,
    updates: &Tensor,
    r: Reduction,
) -> Result<Tensor> {
    let (offs, block, k) = nd_offsets(data.shape(), indices, 0, "ScatterND")?;
    let ishape = indices.shape();
    let mut ushape = ishape[..ishape.len() - 1].to_vec();
    ushape.extend_from_slice(&data.shape()[k..]);
    if updates.shape() != ushape.as_slice() {
        return Err(Error::shape(format!(
            "ScatterND: updates shape {:?}, expected {ushape:?}",
            updates.shape()
        )));
    }
    scatter_apply(data, updates, &offs, block, r)
}

/// TensorScatter: writes `update` into a copy of `past` along `axis` at per-batch offsets.
pub fn tensor_scatter(
    past: &Tensor,
    update: &Tensor,
    write: Option<&Tensor>,
    axis: usize,
    circular: bool,
) -> Result<Tensor> {
    let write = write.map(|t| t.to_i64_vec()).transpose()?;
    let (targets, inner) =
        tensor_scatter_targets(past.shape(), update.shape(), write, axis, circular)?;
    scatter_apply(past, update, &targets, inner, Reduction::None)
}

/// TensorScatter's target block offsets (one per updated block) and the block size;
/// shared with the GPU kernel.
pub fn tensor_scatter_targets(
    ps: &[usize],
    us: &[usize],
    write: Option<Vec<i64>>,
    axis: usize,
    circular: bool,
) -> Result<(Vec<usize>, usize)> {
    if ps.len() != us.len() || axis >= ps.len() || ps.is_empty() {
        return Err(Error::shape("TensorScatter: rank mismatch"));
    }
    for i in 0..ps.len() {
        if (i != axis && ps[i] != us[i]) || (i == axis && us[i] > ps[i]) {
            return Err(Error::shape(format!(
                "TensorScatter: update {us:?} does not fit cache {ps:?}"
            )));
        }
    }
    let batch = ps[0];
    let w = write.unwrap_or_else(|| vec![0; batch]);
    if w.len() < batch {
        return Err(Error::shape(
            "TensorScatter: write_indices shorter than the batch",
        ));
    }
    let outer: usize = ps[..axis].iter().product();
    let maxlen = ps[axis];
    let inner: usize = ps[axis + 1..].iter().product();
    let seq = us[axis];
    let per_batch = outer.checked_div(batch).unwrap_or(1);
    let mut targets = Vec::with_capacity(outer * seq);
    for o in 0..outer {
        let b = if axis == 0 { 0 } else { o / per_batch.max(1) };
        let wb = if axis == 0 {
            w.first().copied().unwrap_or(0)
        } else {
            w[b]
        };
        for s in 0..seq {
            let pos = wb
                .checked_add(s as i64)
                .ok_or_else(|| Error::runtime("TensorScatter: index overflow"))?;
            let p = if circular {
                pos.rem_euclid(maxlen.max(1) as i64)
            } else {
                pos
            };
            let p = usize::try_from(p)
                .ok()
                .filter(|&p| p < maxlen)
                .ok_or_else(|| {
                    Error::runtime(format!(
                        "TensorScatter: write index {pos} out of range for {maxlen}"
                    ))
                })?;
            targets.push((o * maxlen + p) * inner);
        }
    }
    Ok((targets, inner))
}

// ---------------------------------------------------------------------------------------
// Split / concat

/// Splits along `axis` into pieces of the given sizes (must sum to the axis length).
pub fn split(t: &Tensor, axis: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
    let shape = t.shape();
    if axis >= shape.len() {
        return Err(Error::shape("Split: axis out of range"));
    }
    let total = sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s));
    if total != Some(shape[axis]) {
        return Err(Error::shape(format!(
            "Split: sizes {sizes:?} do not sum to dim {}",
            shape[axis]
        )));
    }
    let (outer, len, inner) = split_at_axis(shape, axis);
    dispatch!(all t.dtype(), "Split", T => {
        let src = t.as_slice::<T>()?;
        let mut outs = Vec::with_capacity(sizes.len());
        let mut start = 0;
        for &s in sizes {
            let mut v = Vec::with_capacity(outer * s * inner);
            for o in 0..outer {
                let b = (o * len + start) * inner;
                v.extend_from_slice(&src[b..b + s * inner]);
            }
            let mut sh = shape.to_vec();
            sh[axis] = s;
            outs.push(Tensor::from_vec(sh, v)?);
            start += s;
        }
        Ok(outs)
    })
}

/// Equal split sizes: `n` pieces of ceil(len/n), the last one smaller.
pub fn even_split(len: usize, n: usize) -> Result<Vec<usize>> {
    if n == 0 {
        return Err(Error::attr("Split into 0 outputs"));
    }
    let chunk = len.div_ceil(n);
    let mut v = Vec::with_capacity(n);
    let mut left = len;
    for _ in 0..n {
        let s = chunk.min(left);
        v.push(s);
        left -= s;
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------
// Generators

pub fn constant_of_shape(shape: &[i64], value: &Tensor) -> Result<Tensor> {
    let shape = shape_from_i64(shape, "ConstantOfShape")?;
    let n = numel(&shape, value.dtype())?;
    dispatch!(all value.dtype(), "ConstantOfShape", T => {
        let v = value.as_slice::<T>()?.first().cloned().unwrap_or_default();
        Tensor::from_vec(shape, alloc_filled(n, v)?)
    })
}

pub fn range(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<Tensor> {
    let dt = start.dtype();
    if limit.dtype() != dt || delta.dtype() != dt {
        return Err(Error::dtype("Range: inputs have different types"));
    }
    if dt.is_int() {
        let (s, l, d) = (
            start.scalar_i64()?,
            limit.scalar_i64()?,
            delta.scalar_i64()?,
        );
        if d == 0 {
            return Err(Error::runtime("Range: delta is 0"));
        }
        let (s1, l1, d1) = (s as i128, l as i128, d as i128);
        let n = ((l1 - s1) + d1 - d1.signum()) / d1;
        let n = usize::try_from(n.max(0)).map_err(|_| Error::memory("Range: too many elements"))?;
        numel(&[n], dt)?;
        dispatch!(int dt, "Range", T => {
            let v: Vec<T> = (0..n).map(|i| T::from_i128(s1 + i as i128 * d1)).collect();
            Tensor::from_vec(vec![n], v)
        })
    } else {
        let (s, l, d) = (
            start.scalar_f64()?,
            limit.scalar_f64()?,
            delta.scalar_f64()?,
        );
        if d == 0.0 || !d.is_finite() || !s.is_finite() || !l.is_finite() {
            return Err(Error::runtime("Range: delta must be finite and nonzero"));
        }
        let n = ((l - s) / d).ceil().max(0.0);
        if n > usize::MAX as f64 / 2.0 {
            return Err(Error::memory("Range: too many elements"));
        }
        let n = n as usize;
        numel(&[n], dt)?;
        dispatch!(float dt, "Range", T => {
            let (s, d) = (T::from_f64(s), T::from_f64(d));
            // Accumulate in the element type like onnxruntime.
            let mut v: Vec<T> = Vec::with_capacity(n);
            let mut x = s;
            for _ in 0..n {
                v.push(x);
                x = x.add(d);
            }
            Tensor::from_vec(vec![n], v)
        })
    }
}

pub fn eye_like(shape: &[usize], k: i64, dt: DType) -> Result<Tensor> {
    if shape.len() != 2 {
        return Err(Error::shape("EyeLike needs a 2-D input"));
    }
    let (r, c) = (shape[0], shape[1]);
    let n = numel(shape, dt)?;
    dispatch!(all dt, "EyeLike", T => {
        let one = one_of::<T>()?;
        let mut v: Vec<T> = alloc_vec(n)?;
        for i in 0..r {
            let j = i as i64 + k;
            if j >= 0 && (j as u64) < c as u64 {
                v[i * c + j as usize] = one.clone();
            }
        }
        Tensor::from_vec(shape.to_vec(), v)
    })
}

/// The value 1 of an element type (via a cast from i64).
fn one_of<T: Elem>() -> Result<T> {
    Tensor::scalar(1i64)
        .cast(T::DTYPE)?
        .into_vec::<T>()?
        .into_iter()
        .next()
        .ok_or_else(|| Error::runtime("empty"))
}

pub fn one_hot(indices: &Tensor, depth: &Tensor, values: &Tensor, axis: i64) -> Result<Tensor> {
    let depth_v = depth.cast(DType::F64)?.scalar_f64()?;
    if !(1.0..=1e15).contains(&depth_v) {
        return Err(Error::runtime(format!("OneHot: invalid depth {depth_v}")));
    }
    let depth_n = usize::try_from(depth_v as u64)
        .map_err(|_| Error::memory(format!("OneHot: depth {depth_v} too large")))?;
    if values.len() != 2 {
        return Err(Error::shape("OneHot: values must have two elements"));
    }
    let r = indices.rank();
    let a = norm_axis(axis, r + 1, "OneHot")?;
    let idx: Vec<i64> = if indices.dtype().is_float() {
        indices.cast(DType::I64)?.to_i64_vec()?
    } else {
        indices.to_i64_vec()?
    };
    let mut out_shape = indices.shape().to_vec();
    out_shape.insert(a, depth_n);
    let n = numel(&out_shape, values.dtype())?;
    let outer: usize = indices.shape()[..a].iter().product();
    let inner: usize = indices.shape()[a..].iter().product();
    let d = depth_n as i64;
    dispatch!(all values.dtype(), "OneHot", T => {
        let vs = values.as_slice::<T>()?;
        let mut v = alloc_filled(n, vs[0].clone())?;
        for o in 0..outer {
            for i in 0..inner {
                let mut x = idx[o * inner + i];
                if x < 0 {
                    x += d;
                }
                if (0..d).contains(&x) {
                    v[(o * depth_n + x as usize) * inner + i] = vs[1].clone();
                }
            }
        }
        Tensor::from_vec(out_shape, v)
    })
}

// ---------------------------------------------------------------------------------------
// Selection

pub fn non_zero(t: &Tensor) -> Result<Tensor> {
    let shape = t.shape().to_vec();
    let r = shape.len();
    let flat: Vec<usize> = dispatch!(all t.dtype(), "NonZero", T => {
        let zero = T::default();
        Ok::<Vec<usize>, Error>(t.as_slice::<T>()?.iter().enumerate().filter(|(_, x)| **x != zero).map(|(i, _)| i).collect())
    })?;
    let m = flat.len();
    let mut v: Vec<i64> = alloc_vec(r * m)?;
    let st = strides(&shape);
    for (j, &f) in flat.iter().enumerate() {
        let mut rem = f;
        for k in 0..r {
            v[k * m + j] = (rem / st[k]) as i64;
            rem %= st[k];
        }
    }
    Tensor::from_vec(vec![r, m], v)
}

pub fn trilu(t: &Tensor, k: i64, upper: bool) -> Result<Tensor> {
    let shape = t.shape();
    if shape.len() < 2 {
        return Err(Error::shape("Trilu needs rank >= 2"));
    }
    let r = shape.len();
    let (rows, cols) = (shape[r - 2], shape[r - 1]);
    let mut out = t.clone();
    let mats = t.len().checked_div(rows * cols).unwrap_or(0);
    dispatch!(all t.dtype(), "Trilu", T => {
        let o = out.as_mut_slice::<T>()?;
        for m in 0..mats {
            for i in 0..rows {
                for j in 0..cols {
                    let diff = j as i64 - i as i64;
                    let keep = if upper { diff >= k } else { diff <= k };
                    if !keep {
                        o[(m * rows + i) * cols + j] = T::default();
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(out)
}

pub fn reverse_sequence(
    t: &Tensor,
    lens: &Tensor,
    batch_axis: usize,
    time_axis: usize,
) -> Result<Tensor> {
    let shape = t.shape();
    if shape.len() < 2 || batch_axis > 1 || time_axis > 1 || batch_axis == time_axis {
        return Err(Error::shape(
            "ReverseSequence: needs rank >= 2 and batch/time axes 0 and 1",
        ));
    }
    let (nb, nt) = (shape[batch_axis], shape[time_axis]);
    let lens = lens.to_i64_vec()?;
    if lens.len() != nb {
        return Err(Error::shape(
            "ReverseSequence: sequence_lens does not match the batch",
        ));
    }
    let inner: usize = shape[2..].iter().product();
    let off = |b: usize, s: usize| {
        if time_axis == 0 {
            (s * nb + b) * inner
        } else {
            (b * nt + s) * inner
        }
    };
    let mut out = t.clone();
    dispatch!(all t.dtype(), "ReverseSequence", T => {
        let src = t.as_slice::<T>()?;
        let o = out.as_mut_slice::<T>()?;
        for (b, &l) in lens.iter().enumerate() {
            let l = usize::try_from(l).ok().filter(|&l| l <= nt).ok_or_else(|| {
                Error::runtime(format!("ReverseSequence: sequence length {l} out of range"))
            })?;
            for s in 0..l {
                let (d, sr) = (off(b, s), off(b, l - 1 - s));
                o[d..d + inner].clone_from_slice(&src[sr..sr + inner]);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

pub fn compress(t: &Tensor, cond: &Tensor, axis: Option<usize>) -> Result<Tensor> {
    let (view, axis) = match axis {
        Some(a) => (t.clone(), a),
        None => (with_shape(t, vec![t.len()])?, 0),
    };
    let len = *view
        .shape()
        .get(axis)
        .ok_or_else(|| Error::shape("Compress: axis out of range"))?;
    let idx = compress_indices(cond, len)?;
    take(&view, axis, &idx, &[idx.len()])
}

/// The indices Compress keeps along an axis of `len` (shared with the GPU kernel).
pub fn compress_indices(cond: &Tensor, len: usize) -> Result<Vec<usize>> {
    let c = cond.cast(DType::Bool)?.into_vec::<bool>()?;
    let idx: Vec<usize> = c
        .iter()
        .enumerate()
        .filter(|(_, &b)| b)
        .map(|(i, _)| i)
        .collect();
    if idx.iter().any(|&i| i >= len) {
        return Err(Error::runtime(
            "Compress: condition selects beyond the axis length",
        ));
    }
    Ok(idx)
}

/// Unique: (Y, indices, inverse_indices, counts).
pub fn unique(t: &Tensor, axis: Option<usize>, sorted: bool) -> Result<[Tensor; 4]> {
    let (view, axis) = match axis {
        Some(a) => (t.clone(), a),
        None => (with_shape(t, vec![t.len()])?, 0),
    };
    let shape = view.shape().to_vec();
    if axis >= shape.len() {
        return Err(Error::shape("Unique: axis out of range"));
    }
    let (outer, len, inner) = split_at_axis(&shape, axis);
    let (order, firsts): (Vec<usize>, Vec<usize>) = dispatch!(all view.dtype(), "Unique", T => {
        let src = view.as_slice::<T>()?;
        let cmp = |a: usize, b: usize| -> Ordering {
            for o in 0..outer {
                for i in 0..inner {
                    let x = &src[(o * len + a) * inner + i];
                    let y = &src[(o * len + b) * inner + i];
                    let c = cmp_elem(x, y);
                    if c != Ordering::Equal {
                        return c;
                    }
                }
            }
            Ordering::Equal
        };
        let mut ids: Vec<usize> = (0..len).collect();
        ids.sort_by(|&a, &b| cmp(a, b));
        // Group starts in sorted order.
        let mut group_of = vec![0usize; len];
        let mut firsts = Vec::new();
        for (k, &i) in ids.iter().enumerate() {
            if k == 0 || cmp(ids[k - 1], i) != Ordering::Equal {
                firsts.push(i);
            }
            group_of[i] = firsts.len() - 1;
        }
        Ok::<(Vec<usize>, Vec<usize>), Error>((group_of, firsts))
    })?;
    let group_of = order;
    let g = firsts.len();
    // Output order of groups.
    let mut out_order: Vec<usize> = (0..g).collect();
    if !sorted {
        out_order.sort_by_key(|&k| firsts[k]);
    }
    let mut rank_of = vec![0usize; g];
    for (pos, &k) in out_order.iter().enumerate() {
        rank_of[k] = pos;
    }
    let sel: Vec<usize> = out_order.iter().map(|&k| firsts[k]).collect();
    let y = take(&view, axis, &sel, &[g])?;
    let mut counts = vec![0i64; g];
    let inverse: Vec<i64> = (0..len)
        .map(|i| {
            let r = rank_of[group_of[i]];
            counts[r] += 1;
            r as i64
        })
        .collect();
    let indices: Vec<i64> = sel.iter().map(|&i| i as i64).collect();
    Ok([
        y,
        Tensor::vector(indices),
        Tensor::vector(inverse),
        Tensor::vector(counts),
    ])
}

// ---------------------------------------------------------------------------------------
// Depth/space

pub fn depth_to_space(t: &Tensor, b: usize, crd: bool) -> Result<Tensor> {
    let s = t.shape();
    let bb = b.checked_mul(b).unwrap_or(0);
    if s.len() != 4 || bb == 0 || !s[1].is_multiple_of(bb) {
        return Err(Error::shape(format!(
            "DepthToSpace: bad input {s:?} for blocksize {b}"
        )));
    }
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let c2 = c / bb;
    let out = vec![n, c2, h * b, w * b];
    if crd {
        permute(t, &[n, c2, b, b, h, w], &[0, 1, 4, 2, 5, 3], Some(out))
    } else {
        permute(t, &[n, b, b, c2, h, w], &[0, 3, 4, 1, 5, 2], Some(out))
    }
}

pub fn space_to_depth(t: &Tensor, b: usize) -> Result<Tensor> {
    let s = t.shape();
    if s.len() != 4
        || b == 0
        || !s[2].is_multiple_of(b)
        || !s[3].is_multiple_of(b)
        || b.checked_mul(b).is_none()
    {
        return Err(Error::shape(format!(
            "SpaceToDepth: bad input {s:?} for blocksize {b}"
        )));
    }
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let out = vec![n, c * b * b, h / b, w / b];
    permute(
        t,
        &[n, c, h / b, b, w / b, b],
        &[0, 3, 5, 1, 2, 4],
        Some(out),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(shape: Vec<usize>) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec(shape, (0..n as i32).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn transpose_tiles_match_naive() {
        let t = iota(vec![3, 37, 21]);
        let y = transpose(&t, Some(&[2, 0, 1])).unwrap();
        assert_eq!(y.shape(), &[21, 3, 37]);
        let v = y.as_slice::<i32>().unwrap();
        for a in 0..3 {
            for b in 0..37 {
                for c in 0..21 {
                    assert_eq!(v[(c * 3 + a) * 37 + b], ((a * 37 + b) * 21 + c) as i32);
                }
            }
        }
    }

    #[test]
    fn slice_negative_step_and_clamp() {
        let t = iota(vec![2, 5]);
        let y = slice(&t, &[i64::MAX, 0], &[i64::MIN, 10], &[0, 1], &[-1, 2]).unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(y.as_slice::<i32>().unwrap(), &[5, 7, 9, 0, 2, 4]);
    }

    #[test]
    fn gather_bounds_and_pad_modes() {
        let t = iota(vec![3, 2]);
        let idx = Tensor::vector(vec![-1i64, 0]);
        let y = gather(&t, &idx, 0).unwrap();
        assert_eq!(y.as_slice::<i32>().unwrap(), &[4, 5, 0, 1]);
        let bad = Tensor::vector(vec![3i64]);
        assert!(gather(&t, &bad, 0).is_err());
        let v = Tensor::vector(vec![1i32, 2, 3]);
        let z = Tensor::scalar(0i32);
        let r = pad(&v, &[(2, 2)], PadMode::Reflect, &z).unwrap();
        assert_eq!(r.as_slice::<i32>().unwrap(), &[3, 2, 1, 2, 3, 2, 1]);
        let w = pad(&v, &[(1, -1)], PadMode::Wrap, &z).unwrap();
        assert_eq!(w.as_slice::<i32>().unwrap(), &[3, 1, 2]);
    }

    #[test]
    fn reshape_and_budget() {
        assert_eq!(
            reshape_shape(&[2, 3, 4], &[0, -1], false).unwrap(),
            vec![2, 12]
        );
        assert!(reshape_shape(&[2, 3], &[-1, -1], false).is_err());
        let v = Tensor::scalar(1.0f32);
        assert!(constant_of_shape(&[1 << 40, 1 << 20], &v).is_err());
        assert!(constant_of_shape(&[-1], &v).is_err());
    }

    #[test]
    fn unique_unsorted() {
        let t = Tensor::vector(vec![2.0f32, 1.0, 1.0, 3.0, 4.0, 3.0]);
        let [y, i, inv, c] = unique(&t, None, false).unwrap();
        assert_eq!(y.as_slice::<f32>().unwrap(), &[2.0, 1.0, 3.0, 4.0]);
        assert_eq!(i.as_slice::<i64>().unwrap(), &[0, 1, 3, 4]);
        assert_eq!(inv.as_slice::<i64>().unwrap(), &[0, 1, 1, 2, 3, 2]);
        assert_eq!(c.as_slice::<i64>().unwrap(), &[1, 2, 2, 1]);
    }

    /// Tiny deterministic generator for randomized checks.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n.max(1)
        }
    }

    fn coords(mut f: usize, shape: &[usize]) -> Vec<usize> {
        let mut c = vec![0; shape.len()];
        for k in (0..shape.len()).rev() {
            c[k] = f % shape[k];
            f /= shape[k];
        }
        c
    }

    fn flat(c: &[usize], shape: &[usize]) -> usize {
        c.iter().zip(shape).fold(0, |a, (&x, &d)| a * d + x)
    }

    #[test]
    fn randomized_transpose_slice_expand() {
        let mut g = Lcg(7);
        for _ in 0..300 {
            let r = 1 + g.next(5) as usize;
            let shape: Vec<usize> = (0..r).map(|_| g.next(5) as usize).collect();
            let t = iota(shape.clone());
            // Transpose: random permutation.
            let mut perm: Vec<usize> = (0..r).collect();
            for i in (1..r).rev() {
                perm.swap(i, g.next(i as u64 + 1) as usize);
            }
            let y = transpose(&t, Some(&perm)).unwrap();
            let ys: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            assert_eq!(y.shape(), ys.as_slice());
            let yv = y.as_slice::<i32>().unwrap();
            for (f, &v) in yv.iter().enumerate() {
                let oc = coords(f, &ys);
                let mut ic = vec![0; r];
                for (k, &p) in perm.iter().enumerate() {
                    ic[p] = oc[k];
                }
                assert_eq!(v as usize, flat(&ic, &shape));
            }
            // Slice: random start/end/step per axis.
            let axes: Vec<usize> = (0..r).collect();
            let starts: Vec<i64> = (0..r).map(|_| g.next(9) as i64 - 4).collect();
            let ends: Vec<i64> = (0..r).map(|_| g.next(9) as i64 - 4).collect();
            let steps: Vec<i64> = (0..r)
                .map(|_| {
                    let s = g.next(3) as i64 + 1;
                    if g.next(2) == 0 {
                        s
                    } else {
                        -s
                    }
                })
                .collect();
            let y = slice(&t, &starts, &ends, &axes, &steps).unwrap();
            // Naive: per-axis index lists.
            let lists: Vec<Vec<usize>> = (0..r)
                .map(|a| {
                    let (b, len) = slice_axis(shape[a], starts[a], ends[a], steps[a]).unwrap();
                    (0..len)
                        .map(|i| (b as i64 + i as i64 * steps[a]) as usize)
                        .collect()
                })
                .collect();
            let ys: Vec<usize> = lists.iter().map(|l| l.len()).collect();
            assert_eq!(y.shape(), ys.as_slice());
            for (f, &v) in y.as_slice::<i32>().unwrap().iter().enumerate() {
                let oc = coords(f, &ys);
                let ic: Vec<usize> = oc.iter().enumerate().map(|(a, &i)| lists[a][i]).collect();
                assert_eq!(v as usize, flat(&ic, &shape));
            }
            // Expand: broadcast dims of size 1 to a random size.
            let target: Vec<usize> = shape
                .iter()
                .map(|&d| if d == 1 { 1 + g.next(3) as usize } else { d })
                .collect();
            let e = expand(&t, &target).unwrap();
            for (f, &v) in e.as_slice::<i32>().unwrap().iter().enumerate() {
                let oc = coords(f, &target);
                let ic: Vec<usize> = oc
                    .iter()
                    .zip(&shape)
                    .map(|(&c, &d)| if d == 1 { 0 } else { c })
                    .collect();
                assert_eq!(v as usize, flat(&ic, &shape));
            }
        }
    }

    #[test]
    fn hostile_inputs_give_errors() {
        let t = iota(vec![2, 3]);
        let z = Tensor::scalar(0i32);
        let big = i64::MAX;
        assert!(pad(&t, &[(i64::MIN, 0), (0, 0)], PadMode::Constant, &z).is_err());
        assert!(pad(&t, &[(big, big), (0, 0)], PadMode::Edge, &z).is_err());
        assert!(pad(&t, &[(-3, 0), (0, 0)], PadMode::Reflect, &z).is_err());
        let e = Tensor::zeros(DType::I32, vec![0, 3]).unwrap();
        assert!(pad(&e, &[(1, 0), (0, 0)], PadMode::Wrap, &z).is_err());
        assert!(tile(&t, &[big, big]).is_err());
        assert!(tile(&t, &[-1, 1]).is_err());
        assert!(expand(&t, &[usize::MAX, 3]).is_err());
        let r = |a: i64, b: i64, c: i64| {
            range(&Tensor::scalar(a), &Tensor::scalar(b), &Tensor::scalar(c))
        };
        assert!(r(i64::MIN, i64::MAX, 1).is_err());
        assert!(r(0, 10, 0).is_err());
        assert_eq!(
            r(10, 0, -3).unwrap().as_slice::<i64>().unwrap(),
            &[10, 7, 4, 1]
        );
        let idx = Tensor::from_vec(vec![1, 2], vec![5i64, 0]).unwrap();
        assert!(gather_nd(&t, &idx, 0).is_err());
        assert!(gather_nd(&t, &idx, 3).is_err());
        let upd = Tensor::vector(vec![1i32]);
        assert!(scatter_nd(&t, &idx, &upd, Reduction::Add).is_err());
        let depth = Tensor::scalar(1e300f64);
        let vals = Tensor::vector(vec![0f32, 1.0]);
        assert!(one_hot(&Tensor::vector(vec![0i64]), &depth, &vals, 0).is_err());
        assert!(one_hot(
            &Tensor::vector(vec![0i64]),
            &Tensor::scalar(f64::NAN),
            &vals,
            0
        )
        .is_err());
        assert!(split(&t, 1, &[2, 2]).is_err());
        assert!(split(&t, 1, &[usize::MAX, 4]).is_err());
        assert!(reshape_shape(&[2, 3], &[i64::MIN], false).is_err());
        assert!(reshape_shape(&[2, 3], &[0, 0, 0], false).is_err());
        assert!(center_crop_pad(&t, &[0], &[usize::MAX]).is_err());
        assert!(depth_to_space(&iota(vec![1, 4, 1, 1]), usize::MAX, false).is_err());
        assert!(slice(&t, &[0], &[1], &[5], &[1]).is_err());
        let lens = Tensor::vector(vec![7i64, -1, 0]);
        assert!(reverse_sequence(&t, &lens, 1, 0).is_err());
        let w = Tensor::vector(vec![i64::MAX, 0]);
        let past = iota(vec![2, 4]);
        let u = iota(vec![2, 1]);
        assert!(tensor_scatter(&past, &u, Some(&w), 1, false).is_err());
        assert!(tensor_scatter(&past, &u, Some(&w), 1, true).is_ok());
    }

    mod infer {
        use crate::graph::ops::layout::{Gather, Reshape, Shape, Slice, Unsqueeze};
        use crate::graph::{Dim, Fact, InferCx, Op, Value};
        use crate::tensor::{DType, Tensor};

        fn sym(s: &str) -> Dim {
            Dim::Sym(s.into())
        }
        fn cst(t: Tensor) -> Fact {
            Fact::from_value(&Value::from(t))
        }
        fn infer(op: &dyn Op, inputs: &[Fact]) -> Vec<Fact> {
            op.infer(&InferCx { inputs, opset: 17 }).unwrap()
        }

        #[test]
        fn reshape_symbolic() {
            let x = Fact::new(
                Some(DType::F32),
                Some(vec![sym("N"), Dim::Known(128), Dim::Known(768)]),
            );
            let op = Reshape { allowzero: false };
            let spec = |v: Vec<i64>| cst(Tensor::vector(v));
            let f = infer(&op, &[x.clone(), spec(vec![0, -1, 12, 64])]);
            assert_eq!(
                f[0].shape.as_deref().unwrap(),
                &[sym("N"), Dim::Known(128), Dim::Known(12), Dim::Known(64)]
            );
            let f = infer(&op, &[x.clone(), spec(vec![-1, 128, 768])]);
            assert_eq!(f[0].shape.as_deref().unwrap()[0], sym("N"));
            let f = infer(&op, &[x.clone(), spec(vec![-1, 768])]);
            assert_eq!(
                f[0].shape.as_deref().unwrap(),
                &[Dim::Unknown, Dim::Known(768)]
            );
            let bad = op.infer(&InferCx {
                inputs: &[x, spec(vec![-1, -1])],
                opset: 17,
            });
            assert!(bad.is_err());
        }

        #[test]
        fn shape_chain_folds() {
            let x = Fact::new(Some(DType::F32), Some(vec![Dim::Known(2), Dim::Known(3)]));
            let s = infer(
                &Shape {
                    start: 0,
                    end: None,
                },
                &[x],
            );
            assert_eq!(s[0].const_i64(), Some(vec![2, 3]));
            let g = infer(
                &Gather { axis: 0 },
                &[s[0].clone(), cst(Tensor::scalar(-1i64))],
            );
            assert_eq!(g[0].const_i64(), Some(vec![3]));
            let u = infer(
                &Unsqueeze {
                    axes: Some(vec![0]),
                },
                &[g[0].clone()],
            );
            assert_eq!(u[0].value.as_ref().unwrap().shape(), &[1]);
            // Symbolic input: Shape is rank-known but not constant; Slice keeps dims.
            let y = Fact::new(Some(DType::F32), Some(vec![sym("B"), Dim::Known(8)]));
            let s = infer(
                &Shape {
                    start: 0,
                    end: None,
                },
                std::slice::from_ref(&y),
            );
            assert!(s[0].value.is_none());
            assert_eq!(s[0].shape.as_deref().unwrap(), &[Dim::Known(2)]);
            let sl = infer(
                &Slice { attrs: None },
                &[
                    y,
                    cst(Tensor::vector(vec![2i64])),
                    cst(Tensor::vector(vec![i64::MAX])),
                    cst(Tensor::vector(vec![1i64])),
                    Fact::absent(),
                ],
            );
            assert_eq!(sl[0].shape.as_deref().unwrap(), &[sym("B"), Dim::Known(6)]);
        }
    }
}
