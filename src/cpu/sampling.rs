//! CPU kernels for the sampling family (ops in `crate::graph::ops::sampling`): Resize and
//! Upsample, GridSample, AffineGrid, RoiAlign, NonMaxSuppression, Col2Im, the window
//! functions, DFT, STFT and MelWeightMatrix.
//!
//! Resize is separable: each resized axis gets a table of (input index, weight) taps per
//! output position, and the axes are processed one pass at a time with contiguous inner
//! loops. Nearest mode is a pure gather (any dtype) that copies repeated rows.

use crate::cpu::common::strides;
use crate::error::{Error, Result};
use crate::tensor::{alloc_vec, numel, DType, Elem, Num, Tensor};
use std::ops::{Add, Mul};

// ------------------------------------------------------------------------------------
// Resize / Upsample
// ------------------------------------------------------------------------------------

/// Interpolation mode of Resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterpMode {
    Nearest,
    Linear,
    Cubic,
}

/// `coordinate_transformation_mode` of Resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordMode {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
    TfCropAndResize,
}

/// `nearest_mode` of Resize; `Simple` is the rule of Resize-10 and Upsample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
    Simple,
}

/// `keep_aspect_ratio_policy` of Resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAspect {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// Validated Resize attributes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResizeCfg {
    pub mode: InterpMode,
    pub coord: CoordMode,
    pub nearest: NearestMode,
    pub cubic_a: f32,
    pub exclude_outside: bool,
    pub extrapolation: f32,
    pub antialias: bool,
}

/// Geometry of one axis of a resize.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AxisSpec {
    pub in_len: usize,
    pub out_len: usize,
    pub scale: f32,
    /// The output length as a real number (`scale * in_len` for scales, the size for sizes).
    pub out_len_f: f32,
    /// Region of interest (start, end), normalized; only used by tf_crop_and_resize.
    pub roi: (f32, f32),
}

impl AxisSpec {
    fn identity(n: usize) -> AxisSpec {
        AxisSpec {
            in_len: n,
            out_len: n,
            scale: 1.0,
            out_len_f: n as f32,
            roi: (0.0, 1.0),
        }
    }
}

/// Largest dimension we accept from a scale, before the budget check of the whole shape.
const MAX_DIM: f64 = 1e15;

/// Output geometry of a resize from `scales` or `sizes` over the given `axes` (both of
/// `axes.len()` entries). `roi` (tf_crop_and_resize only) has 2 * axes.len() entries.
pub fn resize_axes(
    in_shape: &[usize],
    scales: Option<&[f32]>,
    sizes: Option<&[i64]>,
    axes: &[usize],
    roi: Option<&[f32]>,
    policy: KeepAspect,
) -> Result<Vec<AxisSpec>> {
    let rank = in_shape.len();
    let mut specs: Vec<AxisSpec> = in_shape.iter().map(|&n| AxisSpec::identity(n)).collect();
    for &a in axes {
        if a >= rank {
            return Err(Error::shape(format!(
                "Resize axis {a} out of range for rank {rank}"
            )));
        }
    }
    match (scales, sizes) {
        (Some(sc), None) => {
            if sc.len() != axes.len() {
                return Err(Error::shape(format!(
                    "Resize: {} scales for {} axes",
                    sc.len(),
                    axes.len()
                )));
            }
            for (&a, &s) in axes.iter().zip(sc) {
                if !(s.is_finite() && s > 0.0) {
                    return Err(Error::runtime(format!(
                        "Resize: scale {s} must be a positive finite number"
                    )));
                }
                let n = in_shape[a];
                let p = s * n as f32;
                if !p.is_finite() || f64::from(p) >= MAX_DIM {
                    return Err(Error::memory(format!(
                        "Resize: scale {s} on a dim of {n} gives an output too large"
                    )));
                }
                specs[a] = AxisSpec {
                    in_len: n,
                    out_len: p.floor() as usize,
                    scale: s,
                    out_len_f: p,
                    roi: (0.0, 1.0),
                };
            }
        }
        (None, Some(sz)) => {
            if sz.len() != axes.len() {
                return Err(Error::shape(format!(
                    "Resize: {} sizes for {} axes",
                    sz.len(),
                    axes.len()
                )));
            }
            let mut outs = Vec::with_capacity(sz.len());
            for &v in sz {
                outs.push(usize::try_from(v).map_err(|_| {
                    Error::runtime(format!("Resize: size {v} must not be negative"))
                })?);
            }
            if policy == KeepAspect::Stretch {
                for (&a, &o) in axes.iter().zip(&outs) {
                    let n = in_shape[a];
                    let scale = if n == 0 {
                        if o != 0 {
                            return Err(Error::runtime(format!(
                                "Resize: cannot resize a dim of 0 to {o}"
                            )));
                        }
                        1.0
                    } else {
                        o as f32 / n as f32
                    };
                    specs[a] = AxisSpec {
                        in_len: n,
                        out_len: o,
                        scale,
                        out_len_f: o as f32,
                        roi: (0.0, 1.0),
                    };
                }
            } else {
                let mut s: Option<f32> = None;
                for (&a, &o) in axes.iter().zip(&outs) {
                    let n = in_shape[a];
                    if n == 0 {
                        continue;
                    }
                    let r = o as f32 / n as f32;
                    s = Some(match (s, policy) {
                        (None, _) => r,
                        (Some(c), KeepAspect::NotLarger) => c.min(r),
                        (Some(c), _) => c.max(r),
                    });
                }
                let s = s.unwrap_or(1.0);
                if !(s.is_finite() && s > 0.0) {
                    return Err(Error::runtime(
                        "Resize: sizes give a non-positive aspect-preserving scale",
                    ));
                }
                for &a in axes {
                    let n = in_shape[a];
                    let p = s * n as f32;
                    if f64::from(p) >= MAX_DIM {
                        return Err(Error::memory("Resize: output too large"));
                    }
                    specs[a] = AxisSpec {
                        in_len: n,
                        out_len: p.round() as usize,
                        scale: s,
                        out_len_f: p,
                        roi: (0.0, 1.0),
                    };
                }
            }
        }
        (Some(_), Some(_)) => {
            return Err(Error::input(
                "Resize: only one of 'scales' and 'sizes' may be given",
            ))
        }
        (None, None) => {
            return Err(Error::input(
                "Resize: one of 'scales' and 'sizes' must be given",
            ))
        }
    }
    if let Some(roi) = roi {
        if !roi.is_empty() {
            if roi.len() != 2 * axes.len() {
                return Err(Error::shape(format!(
                    "Resize: roi has {} values, expected {}",
                    roi.len(),
                    2 * axes.len()
                )));
            }
            let k = axes.len();
            for (i, &a) in axes.iter().enumerate() {
                specs[a].roi = (roi[i], roi[k + i]);
            }
        }
    }
    for s in &specs {
        if s.in_len == 0 && s.out_len != 0 {
            return Err(Error::runtime(format!(
                "Resize: cannot resize a dim of 0 to {}",
                s.out_len
            )));
        }
    }
    Ok(specs)
}

/// Axes with a scale of exactly 1 are copied unchanged, whatever the coordinate mode or
/// roi (onnxruntime does the same; the ONNX reference would crop or shift them).
fn is_identity(_cfg: &ResizeCfg, a: &AxisSpec) -> bool {
    a.in_len == a.out_len && a.scale == 1.0
}

/// Source coordinate of output position `o` (ONNX Resize coordinate transformations).
fn original_coord(cfg: &ResizeCfg, a: &AxisSpec, o: usize) -> f32 {
    let x = o as f32;
    let s = a.scale;
    let inl = a.in_len as f32;
    match cfg.coord {
        CoordMode::HalfPixel => (x + 0.5) / s - 0.5,
        CoordMode::HalfPixelSymmetric => {
            let adj = a.out_len as f32 / a.out_len_f;
            let center = inl / 2.0;
            center * (1.0 - adj) + (x + 0.5) / s - 0.5
        }
        CoordMode::PytorchHalfPixel => {
            if a.out_len > 1 {
                (x + 0.5) / s - 0.5
            } else {
                0.0
            }
        }
        // The integer output length, as onnxruntime and PyTorch use (the ONNX reference
        // uses scale * length, which differs when that is not a whole number).
        CoordMode::AlignCorners => {
            if a.out_len <= 1 {
                0.0
            } else {
                x * (inl - 1.0) / (a.out_len as f32 - 1.0)
            }
        }
        CoordMode::Asymmetric => x / s,
        CoordMode::TfHalfPixelForNn => (x + 0.5) / s,
        CoordMode::TfCropAndResize => {
            let (r0, r1) = (f64::from(a.roi.0), f64::from(a.roi.1));
            let inl = f64::from(inl);
            let v = if a.out_len > 1 {
                r0 * (inl - 1.0) + (o as f64 * (r1 - r0) * (inl - 1.0)) / (a.out_len as f64 - 1.0)
            } else {
                0.5 * (r0 + r1) * (inl - 1.0)
            };
            v as f32
        }
    }
}

fn out_of_crop(cfg: &ResizeCfg, a: &AxisSpec, x: f32) -> bool {
    cfg.coord == CoordMode::TfCropAndResize && (x < 0.0 || x > a.in_len as f32 - 1.0)
}

fn clamp_index(i: i64, len: usize) -> usize {
    if i <= 0 {
        0
    } else {
        usize::try_from(i).map_or(len.saturating_sub(1), |u| u.min(len.saturating_sub(1)))
    }
}

/// Nearest source index per output position; None where tf_crop_and_resize extrapolates.
pub(crate) fn nearest_map(cfg: &ResizeCfg, a: &AxisSpec) -> Result<Vec<Option<usize>>> {
    numel(&[a.out_len, 2], DType::U64)?;
    if is_identity(cfg, a) {
        return Ok((0..a.out_len).map(Some).collect());
    }
    Ok((0..a.out_len)
        .map(|o| {
            let x = original_coord(cfg, a, o);
            if out_of_crop(cfg, a, x) {
                return None;
            }
            let r = match cfg.nearest {
                NearestMode::RoundPreferFloor => {
                    if x == (x as i64) as f32 + 0.5 {
                        x.floor()
                    } else {
                        x.round()
                    }
                }
                NearestMode::RoundPreferCeil => x.round(),
                NearestMode::Floor => x.floor(),
                NearestMode::Ceil => x.ceil(),
                NearestMode::Simple => {
                    if a.scale < 1.0 {
                        x.ceil()
                    } else {
                        x.trunc()
                    }
                }
            };
            Some(clamp_index(r as i64, a.in_len))
        })
        .collect())
}

/// Interpolation taps of one axis: `taps` (index, weight) pairs per output position.
pub(crate) struct Table {
    pub(crate) taps: usize,
    pub(crate) idx: Vec<usize>,
    pub(crate) w: Vec<f32>,
    pub(crate) extrap: Vec<bool>,
}

fn cubic_coeffs(r: f32, a: f32) -> [f32; 4] {
    let s = r;
    [
        ((a * (s + 1.0) - 5.0 * a) * (s + 1.0) + 8.0 * a) * (s + 1.0) - 4.0 * a,
        ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0,
        ((a + 2.0) * (1.0 - s) - (a + 3.0)) * (1.0 - s) * (1.0 - s) + 1.0,
        ((a * (2.0 - s) - 5.0 * a) * (2.0 - s) + 8.0 * a) * (2.0 - s) - 4.0 * a,
    ]
}

fn keys_kernel(x: f32, a: f32) -> f32 {
    let x = x.abs();
    let x2 = x * x;
    let x3 = x2 * x;
    if x <= 1.0 {
        (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
    } else if x < 2.0 {
        a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
    } else {
        0.0
    }
}

pub(crate) fn interp_table(cfg: &ResizeCfg, a: &AxisSpec) -> Result<Table> {
    let aa = cfg.antialias && a.scale < 1.0;
    let s = a.scale.min(1.0);
    // Number of taps and the offset of the first tap from the left pixel.
    let taps: usize = match (cfg.mode, aa) {
        (InterpMode::Cubic, false) => 4,
        (InterpMode::Cubic, true) => {
            let start = (-2.0 / f64::from(s)).floor() + 1.0;
            let n = 2.0 - 2.0 * start;
            if !(1.0..MAX_DIM).contains(&n) {
                return Err(Error::memory("Resize: antialias filter too large"));
            }
            n as usize
        }
        (_, false) => 2,
        (_, true) => {
            let start = (-1.0 / f64::from(s)).floor() + 1.0;
            let n = 2.0 - 2.0 * start;
            if !(1.0..MAX_DIM).contains(&n) {
                return Err(Error::memory("Resize: antialias filter too large"));
            }
            n as usize
        }
    };
    let i_start = 1 - (taps / 2) as i64;
    let total = a
        .out_len
        .checked_mul(taps)
        .ok_or_else(|| Error::memory("Resize: filter table too large"))?;
    numel(&[total], DType::U64)?;
    let mut idx = vec![0usize; total];
    let mut w = alloc_vec::<f32>(total)?;
    let mut extrap = vec![false; a.out_len];
    let mut tw = vec![0f32; taps];
    for o in 0..a.out_len {
        let x = original_coord(cfg, a, o);
        if out_of_crop(cfg, a, x) {
            extrap[o] = true;
            continue;
        }
        let fl = x.floor();
        let (p0, r) = if x == fl {
            (fl as i64 - 1, 1.0f32)
        } else {
            (fl as i64, x - fl)
        };
        match (cfg.mode, aa) {
            (InterpMode::Cubic, false) => tw.copy_from_slice(&cubic_coeffs(r, cfg.cubic_a)),
            (InterpMode::Cubic, true) => {
                for (k, t) in tw.iter_mut().enumerate() {
                    let i = i_start + k as i64;
                    *t = keys_kernel(s * (i as f32 - r), cfg.cubic_a);
                }
            }
            (_, false) => {
                tw[0] = 1.0 - r;
                tw[1] = r;
            }
            (_, true) => {
                for (k, t) in tw.iter_mut().enumerate() {
                    let i = i_start + k as i64;
                    *t = (1.0 - ((i as f32 - r) * s).abs()).clamp(0.0, 1.0);
                }
            }
        }
        if aa {
            let sum: f32 = tw.iter().sum();
            if sum != 0.0 {
                tw.iter_mut().for_each(|t| *t /= sum);
            }
        }
        let first = p0.saturating_add(i_start);
        if cfg.exclude_outside {
            for (k, t) in tw.iter_mut().enumerate() {
                let i = first.saturating_add(k as i64);
                if i < 0 || i >= a.in_len as i64 {
                    *t = 0.0;
                }
            }
            let sum: f32 = tw.iter().sum();
            if sum != 0.0 {
                tw.iter_mut().for_each(|t| *t /= sum);
            }
        }
        for k in 0..taps {
            idx[o * taps + k] = clamp_index(first.saturating_add(k as i64), a.in_len);
            w[o * taps + k] = tw[k];
        }
    }
    Ok(Table {
        taps,
        idx,
        w,
        extrap,
    })
}

/// Gathers `src` (shape `in_shape`) through per-axis index maps; repeated rows are copied.
fn gather_nearest<T: Elem>(
    src: &[T],
    in_shape: &[usize],
    out_shape: &[usize],
    maps: &[Vec<Option<usize>>],
    fill: T,
) -> Result<Vec<T>> {
    let n = numel(out_shape, T::DTYPE)?;
    let rank = in_shape.len();
    if rank == 0 {
        return Ok(src.to_vec());
    }
    let mut out: Vec<T> = alloc_vec::<T>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let st = strides(in_shape);
    let last = rank - 1;
    let out_w = out_shape[last];
    let in_w = in_shape[last];
    // Integer upsampling factor of the last axis (each source repeated `rep` times).
    let rep = if in_w > 0 && out_w.is_multiple_of(in_w) {
        let k = out_w / in_w;
        let ok = maps[last]
            .iter()
            .enumerate()
            .all(|(o, m)| *m == Some(o / k));
        if ok {
            k
        } else {
            0
        }
    } else {
        0
    };
    let mut counter = vec![0usize; last];
    let mut prev: Option<Option<usize>> = None;
    for (r, dst_start) in (0..n).step_by(out_w).enumerate() {
        let mut off = Some(0usize);
        for d in 0..last {
            off = match (off, maps[d][counter[d]]) {
                (Some(o), Some(i)) => Some(o + i * st[d]),
                _ => None,
            };
        }
        let (before, after) = out.split_at_mut(dst_start);
        let dst = &mut after[..out_w];
        if prev == Some(off) && r > 0 {
            dst.clone_from_slice(&before[dst_start - out_w..]);
        } else {
            match off {
                None => dst.fill(fill.clone()),
                Some(o) => {
                    let row = src
                        .get(o..o + in_w)
                        .ok_or_else(|| Error::runtime("Resize: source row out of range"))?;
                    if rep == 1 {
                        dst.clone_from_slice(row);
                    } else if rep > 1 {
                        for (d, v) in dst.chunks_exact_mut(rep).zip(row) {
                            d.fill(v.clone());
                        }
                    } else {
                        for (d, m) in dst.iter_mut().zip(&maps[last]) {
                            *d = match m {
                                Some(i) => row[*i].clone(),
                                None => fill.clone(),
                            };
                        }
                    }
                }
            }
        }
        prev = Some(off);
        for d in (0..last).rev() {
            counter[d] += 1;
            if counter[d] < out_shape[d] {
                break;
            }
            counter[d] = 0;
        }
    }
    Ok(out)
}

/// One separable interpolation pass along `axis`.
fn interp_pass<A>(src: &[A], shape: &[usize], axis: usize, t: &Table, fill: A) -> Result<Vec<A>>
where
    A: Num + Add<Output = A> + Mul<Output = A>,
{
    let outer: usize = shape[..axis].iter().product();
    let in_len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let out_len = t.extrap.len();
    let total = outer
        .checked_mul(out_len)
        .and_then(|v| v.checked_mul(inner))
        .ok_or_else(|| Error::memory("Resize: intermediate too large"))?;
    let mut out = alloc_vec::<A>(total)?;
    if total == 0 || in_len == 0 {
        return Ok(out);
    }
    let n = t.taps;
    let w: Vec<A> = t.w.iter().map(|&v| A::from_f32(v)).collect();
    if inner == 1 && n == 2 {
        for (orow, irow) in out.chunks_exact_mut(out_len).zip(src.chunks_exact(in_len)) {
            for (((dst, ix), wx), &ex) in orow
                .iter_mut()
                .zip(t.idx.chunks_exact(2))
                .zip(w.chunks_exact(2))
                .zip(&t.extrap)
            {
                *dst = if ex {
                    fill
                } else {
                    wx[0] * irow[ix[0]] + wx[1] * irow[ix[1]]
                };
            }
        }
    } else if inner == 1 {
        for (orow, irow) in out.chunks_exact_mut(out_len).zip(src.chunks_exact(in_len)) {
            for (o, dst) in orow.iter_mut().enumerate() {
                if t.extrap[o] {
                    *dst = fill;
                    continue;
                }
                let ix = &t.idx[o * n..o * n + n];
                let wx = &w[o * n..o * n + n];
                let mut acc = A::zero();
                for (&i, &wk) in ix.iter().zip(wx) {
                    acc = acc + wk * irow[i];
                }
                *dst = acc;
            }
        }
    } else {
        for (oblk, iblk) in out
            .chunks_exact_mut(out_len * inner)
            .zip(src.chunks_exact(in_len * inner))
        {
            for (o, dst) in oblk.chunks_exact_mut(inner).enumerate() {
                if t.extrap[o] {
                    dst.fill(fill);
                    continue;
                }
                if n == 2 {
                    let (i0, i1) = (t.idx[o * 2], t.idx[o * 2 + 1]);
                    let (w0, w1) = (w[o * 2], w[o * 2 + 1]);
                    let s0 = &iblk[i0 * inner..(i0 + 1) * inner];
                    let s1 = &iblk[i1 * inner..(i1 + 1) * inner];
                    for ((d, &a), &b) in dst.iter_mut().zip(s0).zip(s1) {
                        *d = w0 * a + w1 * b;
                    }
                    continue;
                }
                for k in 0..n {
                    let i = t.idx[o * n + k];
                    let wk = w[o * n + k];
                    let s = &iblk[i * inner..(i + 1) * inner];
                    if k == 0 {
                        for (d, &v) in dst.iter_mut().zip(s) {
                            *d = wk * v;
                        }
                    } else {
                        for (d, &v) in dst.iter_mut().zip(s) {
                            *d = *d + wk * v;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The order of the separable passes: shrinking axes first, growing axes last; among
/// equals the innermost first, so the strided (vectorized) passes produce the largest
/// intermediates. Identity axes are skipped.
pub(crate) fn pass_order(cfg: &ResizeCfg, specs: &[AxisSpec]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..specs.len())
        .filter(|&a| !is_identity(cfg, &specs[a]))
        .collect();
    order.sort_by(|&a, &b| {
        let ra = specs[a].out_len as f64 / specs[a].in_len.max(1) as f64;
        let rb = specs[b].out_len as f64 / specs[b].in_len.max(1) as f64;
        ra.total_cmp(&rb).then(b.cmp(&a))
    });
    order
}

fn interp_all<A>(src: &[A], cfg: &ResizeCfg, specs: &[AxisSpec]) -> Result<Vec<A>>
where
    A: Num + Add<Output = A> + Mul<Output = A>,
{
    let fill = A::from_f32(cfg.extrapolation);
    let mut shape: Vec<usize> = specs.iter().map(|s| s.in_len).collect();
    let mut cur: Option<Vec<A>> = None;
    for axis in pass_order(cfg, specs) {
        let spec = &specs[axis];
        let table = interp_table(cfg, spec)?;
        let next = interp_pass(cur.as_deref().unwrap_or(src), &shape, axis, &table, fill)?;
        shape[axis] = spec.out_len;
        cur = Some(next);
    }
    Ok(cur.unwrap_or_else(|| src.to_vec()))
}

/// Resize of `x` with per-axis geometry `specs` (one per dim).
pub fn resize(x: &Tensor, cfg: &ResizeCfg, specs: &[AxisSpec]) -> Result<Tensor> {
    let in_shape: Vec<usize> = specs.iter().map(|s| s.in_len).collect();
    if in_shape != x.shape() {
        return Err(Error::shape(format!(
            "Resize: geometry for {in_shape:?} applied to {:?}",
            x.shape()
        )));
    }
    let out_shape: Vec<usize> = specs.iter().map(|s| s.out_len).collect();
    let dt = x.dtype();
    if numel(&out_shape, dt)? == 0 {
        return Tensor::zeros(dt, out_shape);
    }
    if cfg.mode == InterpMode::Nearest {
        let maps: Vec<Vec<Option<usize>>> = specs
            .iter()
            .map(|a| nearest_map(cfg, a))
            .collect::<Result<_>>()?;
        let fill_t = Tensor::scalar(cfg.extrapolation).cast(dt)?;
        return crate::dispatch!(all dt, "Resize", T => {
            let fill: T = fill_t.as_slice::<T>()?.first().cloned().unwrap_or_default();
            let out = gather_nearest(x.as_slice::<T>()?, &in_shape, &out_shape, &maps, fill)?;
            Tensor::from_vec(out_shape, out)
        });
    }
    match dt {
        DType::F32 => {
            let out = interp_all(x.as_slice::<f32>()?, cfg, specs)?;
            Tensor::from_vec(out_shape, out)
        }
        DType::F64 => {
            let out = interp_all(x.as_slice::<f64>()?, cfg, specs)?;
            Tensor::from_vec(out_shape, out)
        }
        DType::F16
        | DType::BF16
        | DType::I8
        | DType::U8
        | DType::I16
        | DType::U16
        | DType::I32
        | DType::U32 => {
            let src = x.to_f32_vec()?;
            let out = interp_all(&src, cfg, specs)?;
            let out = if dt.is_int() { snap_ints(out) } else { out };
            // Integers truncate (saturating), like onnxruntime.
            Tensor::from_vec(out_shape, out)?.cast(dt)
        }
        DType::I64 | DType::U64 => {
            let src = x.to_f64_vec()?;
            let out = snap_ints(interp_all(&src, cfg, specs)?);
            Tensor::from_vec(out_shape, out)?.cast(dt)
        }
        other => Err(Error::unsupported_dtype(format!(
            "Resize in linear/cubic mode does not support {other}"
        ))),
    }
}

/// Snaps values within rounding error of a whole number onto it, so that the truncating
/// cast to an integer dtype does not turn an exact 123 computed as 122.99999 into 122.
fn snap_ints<A: Num>(mut v: Vec<A>) -> Vec<A> {
    for x in v.iter_mut() {
        let f = x.to_f64();
        let r = f.round();
        if (f - r).abs() <= 1e-3 {
            *x = A::from_f64(r);
        }
    }
    v
}

// ------------------------------------------------------------------------------------
// GridSample / AffineGrid
// ------------------------------------------------------------------------------------

/// Interpolation mode of GridSample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GridMode {
    Nearest,
    Linear,
    Cubic,
}

/// Padding mode of GridSample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GridPad {
    Zeros,
    Border,
    Reflection,
}

fn reflect(x: f32, lo: f32, hi: f32) -> f32 {
    let rng = hi - lo;
    if rng <= 0.0 || !x.is_finite() {
        return lo;
    }
    if x < lo {
        let dx = lo - x;
        let n = (dx / rng).trunc();
        let r = dx - n * rng;
        if n % 2.0 == 0.0 {
            lo + r
        } else {
            hi - r
        }
    } else if x > hi {
        let dx = x - hi;
        let n = (dx / rng).trunc();
        let r = dx - n * rng;
        if n % 2.0 == 0.0 {
            hi - r
        } else {
            lo + r
        }
    } else {
        x
    }
}

/// Taps (index or padding zero, weight) of one grid coordinate along one dim.
fn grid_taps(
    g: f32,
    len: usize,
    mode: GridMode,
    pad: GridPad,
    align: bool,
    out: &mut Vec<(Option<usize>, f32)>,
) {
    out.clear();
    let lf = len as f32;
    let (lo, hi) = if align {
        (0.0, lf - 1.0)
    } else {
        (-0.5, lf - 0.5)
    };
    let mut x = if align {
        (g + 1.0) / 2.0 * (lf - 1.0)
    } else {
        ((g + 1.0) * lf - 1.0) / 2.0
    };
    if mode == GridMode::Nearest {
        x = x.round_ties_even();
    }
    // Cubic taps are bounded one by one (like PyTorch and onnxruntime); the other modes
    // first bring the coordinate inside.
    if mode != GridMode::Cubic && (x < lo || x > hi) {
        match pad {
            GridPad::Border => x = x.max(0.0).min(lf - 1.0),
            GridPad::Reflection => x = reflect(x, lo, hi),
            GridPad::Zeros => {}
        }
    }
    let pix = |i: i64| -> Option<usize> {
        match pad {
            GridPad::Zeros => usize::try_from(i).ok().filter(|&u| u < len),
            GridPad::Border => Some(clamp_index(i, len)),
            GridPad::Reflection => Some(clamp_index(reflect(i as f32, lo, hi) as i64, len)),
        }
    };
    match mode {
        GridMode::Nearest => out.push((pix(x as i64), 1.0)),
        GridMode::Linear => {
            let x0 = x.floor();
            let t = x - x0;
            let i = x0 as i64;
            out.push((pix(i), 1.0 - t));
            out.push((pix(i.saturating_add(1)), t));
        }
        GridMode::Cubic => {
            let x0 = x.floor();
            let c = cubic_coeffs(x - x0, -0.75);
            let i = x0 as i64;
            for (k, &w) in c.iter().enumerate() {
                out.push((pix(i.saturating_add(k as i64 - 1)), w));
            }
        }
    }
}

/// GridSample over N-D spatial inputs: `x` is (N, C, D1..Dr), `grid` is (N, O1..Or, r).
pub fn grid_sample(
    x: &Tensor,
    grid: &Tensor,
    mode: GridMode,
    pad: GridPad,
    align: bool,
) -> Result<Tensor> {
    let xs = x.shape();
    let gs = grid.shape();
    if xs.len() < 3 || gs.len() != xs.len() {
        return Err(Error::shape(format!(
            "GridSample: input {xs:?} and grid {gs:?} must have the same rank, at least 3"
        )));
    }
    let r = xs.len() - 2;
    if gs[0] != xs[0] || gs[r + 1] != r {
        return Err(Error::shape(format!(
            "GridSample: grid {gs:?} does not fit input {xs:?}"
        )));
    }
    let (n, c) = (xs[0], xs[1]);
    let dims = &xs[2..];
    let mut out_shape = vec![n, c];
    out_shape.extend_from_slice(&gs[1..=r]);
    let total = numel(&out_shape, x.dtype())?;
    let pts: usize = gs[1..=r].iter().product();
    let sp: usize = dims.iter().product();
    if total > 0 && sp == 0 {
        return Err(Error::shape("GridSample: input has an empty spatial dim"));
    }
    let g = grid.to_f32_vec()?;
    let dst = strides(dims);
    crate::dispatch!(num x.dtype(), "GridSample", T => {
        let src = x.as_slice::<T>()?;
        let mut out = alloc_vec::<T>(total)?;
        let mut taps: Vec<Vec<(Option<usize>, f32)>> = vec![Vec::new(); r];
        let mut combos: Vec<(usize, f64)> = Vec::new();
        for b in 0..n {
            for p in 0..pts {
                let gp = &g[(b * pts + p) * r..(b * pts + p + 1) * r];
                for d in 0..r {
                    grid_taps(gp[r - 1 - d], dims[d], mode, pad, align, &mut taps[d]);
                }
                // Tensor product of the per-dim taps, dropping padding zeros.
                combos.clear();
                let mut ctr = vec![0usize; r];
                'outer: loop {
                    let mut off = 0usize;
                    let mut w = 1f64;
                    let mut valid = true;
                    for d in 0..r {
                        let (i, wd) = taps[d][ctr[d]];
                        match i {
                            Some(i) => off += i * dst[d],
                            None => valid = false,
                        }
                        w *= f64::from(wd);
                    }
                    if valid {
                        combos.push((off, w));
                    }
                    for d in (0..r).rev() {
                        ctr[d] += 1;
                        if ctr[d] < taps[d].len() {
                            continue 'outer;
                        }
                        ctr[d] = 0;
                    }
                    break;
                }
                for ch in 0..c {
                    let base = (b * c + ch) * sp;
                    let plane = &src[base..base + sp];
                    let mut acc = 0f64;
                    for &(off, w) in &combos {
                        acc += w * plane[off].to_f64();
                    }
                    out[(b * c + ch) * pts + p] = T::from_f64(acc);
                }
            }
        }
        Tensor::from_vec(out_shape, out)
    })
}

fn base_coords(n: usize, align: bool) -> Vec<f64> {
    (0..n)
        .map(|i| {
            if n <= 1 {
                0.0
            } else if align {
                -1.0 + 2.0 * i as f64 / (n - 1) as f64
            } else {
                -1.0 + (2 * i + 1) as f64 / n as f64
            }
        })
        .collect()
}

/// AffineGrid: `theta` (N, 2, 3) or (N, 3, 4), `size` [N, C, H, W] or [N, C, D, H, W].
pub fn affine_grid(theta: &Tensor, size: &[i64], align: bool) -> Result<Tensor> {
    let dims: Vec<usize> = size
        .iter()
        .map(|&v| {
            usize::try_from(v).map_err(|_| Error::runtime(format!("AffineGrid: negative size {v}")))
        })
        .collect::<Result<_>>()?;
    let r = match dims.len() {
        4 => 2,
        5 => 3,
        k => {
            return Err(Error::shape(format!(
                "AffineGrid: size must have 4 or 5 values, got {k}"
            )))
        }
    };
    let ts = theta.shape();
    if ts.len() != 3 || ts[0] != dims[0] || ts[1] != r || ts[2] != r + 1 {
        return Err(Error::shape(format!(
            "AffineGrid: theta {ts:?} does not fit size {size:?}"
        )));
    }
    let n = dims[0];
    let sp = &dims[2..];
    let mut out_shape = vec![n];
    out_shape.extend_from_slice(sp);
    out_shape.push(r);
    let total = numel(&out_shape, theta.dtype())?;
    if total == 0 {
        return Tensor::zeros(theta.dtype(), out_shape);
    }
    let th = theta.to_f64_vec()?;
    // Base coordinates per spatial dim; the homogeneous vector is (x=last, y, [z=first], 1).
    let coords: Vec<Vec<f64>> = sp.iter().map(|&d| base_coords(d, align)).collect();
    let mut out = alloc_vec::<f64>(total)?;
    let pts: usize = sp.iter().product();
    let mut k = 0;
    for b in 0..n {
        let t = &th[b * r * (r + 1)..(b + 1) * r * (r + 1)];
        let mut ctr = vec![0usize; r];
        for _ in 0..pts {
            // h = (x, y[, z], 1) with x the last spatial dim.
            let mut h = [0f64; 4];
            for d in 0..r {
                h[d] = coords[r - 1 - d][ctr[r - 1 - d]];
            }
            h[r] = 1.0;
            for row in 0..r {
                let mut acc = 0.0;
                for col in 0..=r {
                    acc += t[row * (r + 1) + col] * h[col];
                }
                out[k] = acc;
                k += 1;
            }
            for d in (0..r).rev() {
                ctr[d] += 1;
                if ctr[d] < sp[d] {
                    break;
                }
                ctr[d] = 0;
            }
        }
    }
    Tensor::from_vec(out_shape, out)?.cast(theta.dtype())
}

// ------------------------------------------------------------------------------------
// RoiAlign
// ------------------------------------------------------------------------------------

/// RoiAlign attributes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiAlignCfg {
    pub max_mode: bool,
    pub output_height: usize,
    pub output_width: usize,
    pub sampling_ratio: i64,
    pub spatial_scale: f32,
    pub half_pixel: bool,
}

/// RoiAlign: `x` (N, C, H, W), `rois` (R, 4) as (x1, y1, x2, y2), `batch` (R).
pub fn roi_align(x: &Tensor, rois: &Tensor, batch: &Tensor, cfg: &RoiAlignCfg) -> Result<Tensor> {
    let xs = x.shape();
    if xs.len() != 4 {
        return Err(Error::shape(format!(
            "RoiAlign: input must be 4-D, got {xs:?}"
        )));
    }
    let rs = rois.shape();
    if rs.len() != 2 || rs[1] != 4 {
        return Err(Error::shape(format!(
            "RoiAlign: rois must be (R, 4), got {rs:?}"
        )));
    }
    let nr = rs[0];
    let bi = batch.to_i64_vec()?;
    if bi.len() != nr {
        return Err(Error::shape(format!(
            "RoiAlign: {} batch indices for {nr} rois",
            bi.len()
        )));
    }
    let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let (ph, pw) = (cfg.output_height, cfg.output_width);
    let out_shape = vec![nr, c, ph, pw];
    let total = numel(&out_shape, x.dtype())?;
    let rv = rois.to_f64_vec()?;
    crate::dispatch!(float x.dtype(), "RoiAlign", T => {
        let src = x.as_slice::<T>()?;
        let mut out = alloc_vec::<T>(total)?;
        if h == 0 || w == 0 {
            return Tensor::from_vec(out_shape, out);
        }
        let (hf, wf) = (h as f64, w as f64);
        let scale = f64::from(cfg.spatial_scale);
        let offset = if cfg.half_pixel { 0.5 } else { 0.0 };
        for r in 0..nr {
            let b = usize::try_from(bi[r]).ok().filter(|&b| b < n).ok_or_else(|| {
                Error::runtime(format!("RoiAlign: batch index {} out of range", bi[r]))
            })?;
            let roi = &rv[r * 4..r * 4 + 4];
            let sw = roi[0] * scale - offset;
            let sh = roi[1] * scale - offset;
            let ew = roi[2] * scale - offset;
            let eh = roi[3] * scale - offset;
            let (mut rw, mut rh) = (ew - sw, eh - sh);
            if !cfg.half_pixel {
                rw = rw.max(1.0);
                rh = rh.max(1.0);
            }
            let bh = rh / ph as f64;
            let bw = rw / pw as f64;
            let grid = |len: f64, pooled: usize| -> Result<usize> {
                if cfg.sampling_ratio > 0 {
                    return usize::try_from(cfg.sampling_ratio)
                        .map_err(|_| Error::attr("RoiAlign: bad sampling_ratio"));
                }
                let g = (len / pooled as f64).ceil();
                if g.is_nan() || g <= 0.0 {
                    Ok(0)
                } else if g > 1e6 {
                    Err(Error::memory("RoiAlign: roi too large for adaptive sampling"))
                } else {
                    Ok(g as usize)
                }
            };
            let gh = grid(rh, ph)?;
            let gw = grid(rw, pw)?;
            let count = gh.saturating_mul(gw).max(1) as f64;
            let ns = gh
                .checked_mul(gw)
                .and_then(|v| v.checked_mul(ph))
                .and_then(|v| v.checked_mul(pw))
                .ok_or_else(|| Error::memory("RoiAlign: too many samples"))?;
            // Precomputed bilinear samples: 4 positions and 4 weights each.
            let mut pos = alloc_vec::<u64>(ns.checked_mul(4).ok_or_else(|| Error::memory("RoiAlign: too many samples"))?)?;
            let mut wts = alloc_vec::<f64>(ns * 4)?;
            let mut k = 0;
            for py in 0..ph {
                for px in 0..pw {
                    for iy in 0..gh {
                        let yy = sh + py as f64 * bh + (iy as f64 + 0.5) * bh / gh as f64;
                        for ix in 0..gw {
                            let xx = sw + px as f64 * bw + (ix as f64 + 0.5) * bw / gw as f64;
                            let (mut y, mut x) = (yy, xx);
                            if !(y >= -1.0 && y <= hf && x >= -1.0 && x <= wf) {
                                k += 1;
                                continue;
                            }
                            y = y.max(0.0);
                            x = x.max(0.0);
                            let mut yl = y as usize;
                            let mut xl = x as usize;
                            let yhi;
                            let xhi;
                            if yl >= h - 1 {
                                yl = h - 1;
                                yhi = yl;
                                y = yl as f64;
                            } else {
                                yhi = yl + 1;
                            }
                            if xl >= w - 1 {
                                xl = w - 1;
                                xhi = xl;
                                x = xl as f64;
                            } else {
                                xhi = xl + 1;
                            }
                            let ly = y - yl as f64;
                            let lx = x - xl as f64;
                            let (hy, hx) = (1.0 - ly, 1.0 - lx);
                            pos[k * 4] = (yl * w + xl) as u64;
                            pos[k * 4 + 1] = (yl * w + xhi) as u64;
                            pos[k * 4 + 2] = (yhi * w + xl) as u64;
                            pos[k * 4 + 3] = (yhi * w + xhi) as u64;
                            wts[k * 4] = hy * hx;
                            wts[k * 4 + 1] = hy * lx;
                            wts[k * 4 + 2] = ly * hx;
                            wts[k * 4 + 3] = ly * lx;
                            k += 1;
                        }
                    }
                }
            }
            let per = gh * gw;
            for ch in 0..c {
                let plane = &src[(b * c + ch) * h * w..(b * c + ch + 1) * h * w];
                for bin in 0..ph * pw {
                    let mut acc = 0f64;
                    let mut first = true;
                    for s in bin * per..(bin + 1) * per {
                        let v = |j: usize| plane[pos[s * 4 + j] as usize].to_f64() * wts[s * 4 + j];
                        if cfg.max_mode {
                            let m = v(0).max(v(1)).max(v(2)).max(v(3));
                            if first || m > acc {
                                acc = m;
                            }
                            first = false;
                        } else {
                            acc += v(0) + v(1) + v(2) + v(3);
                        }
                    }
                    if !cfg.max_mode {
                        acc /= count;
                    }
                    out[((r * c + ch) * ph * pw) + bin] = T::from_f64(acc);
                }
            }
        }
        Tensor::from_vec(out_shape, out)
    })
}

// ------------------------------------------------------------------------------------
// NonMaxSuppression
// ------------------------------------------------------------------------------------

fn suppress(a: &[f32], b: &[f32], center: bool, iou_threshold: f32) -> bool {
    let (ax0, ax1, ay0, ay1, bx0, bx1, by0, by1);
    if center {
        (ax0, ax1) = (a[0] - a[2] / 2.0, a[0] + a[2] / 2.0);
        (ay0, ay1) = (a[1] - a[3] / 2.0, a[1] + a[3] / 2.0);
        (bx0, bx1) = (b[0] - b[2] / 2.0, b[0] + b[2] / 2.0);
        (by0, by1) = (b[1] - b[3] / 2.0, b[1] + b[3] / 2.0);
    } else {
        (ay0, ay1) = (a[0].min(a[2]), a[0].max(a[2]));
        (ax0, ax1) = (a[1].min(a[3]), a[1].max(a[3]));
        (by0, by1) = (b[0].min(b[2]), b[0].max(b[2]));
        (bx0, bx1) = (b[1].min(b[3]), b[1].max(b[3]));
    }
    let ix0 = ax0.max(bx0);
    let ix1 = ax1.min(bx1);
    if ix1 <= ix0 {
        return false;
    }
    let iy0 = ay0.max(by0);
    let iy1 = ay1.min(by1);
    if iy1 <= iy0 {
        return false;
    }
    let inter = (ix1 - ix0) * (iy1 - iy0);
    if inter <= 0.0 {
        return false;
    }
    let area_a = (ax1 - ax0) * (ay1 - ay0);
    let area_b = (bx1 - bx0) * (by1 - by0);
    let union = area_a + area_b - inter;
    if area_a <= 0.0 || area_b <= 0.0 || union <= 0.0 {
        return false;
    }
    inter / union > iou_threshold
}

/// NonMaxSuppression: `boxes` (B, N, 4), `scores` (B, C, N); returns (K, 3) int64 rows
/// (batch, class, box) in batch, class, descending-score order, like onnxruntime.
pub fn non_max_suppression(
    boxes: &Tensor,
    scores: &Tensor,
    max_per_class: i64,
    iou_threshold: f32,
    score_threshold: Option<f32>,
    center: bool,
) -> Result<Tensor> {
    let bs = boxes.shape();
    let ss = scores.shape();
    if bs.len() != 3 || bs[2] != 4 {
        return Err(Error::shape(format!(
            "NonMaxSuppression: boxes must be (B, N, 4), got {bs:?}"
        )));
    }
    if ss.len() != 3 || ss[0] != bs[0] || ss[2] != bs[1] {
        return Err(Error::shape(format!(
            "NonMaxSuppression: scores {ss:?} do not fit boxes {bs:?}"
        )));
    }
    if !(0.0..=1.0).contains(&iou_threshold) {
        return Err(Error::runtime(format!(
            "NonMaxSuppression: iou_threshold {iou_threshold} must be in [0, 1]"
        )));
    }
    let (nb, nc, nbox) = (ss[0], ss[1], ss[2]);
    let bx = boxes.to_f32_vec()?;
    let sc = scores.to_f32_vec()?;
    let limit = usize::try_from(max_per_class.max(0)).unwrap_or(usize::MAX);
    let mut sel: Vec<i64> = Vec::new();
    if limit == 0 {
        return Tensor::from_vec(vec![0, 3], sel);
    }
    let mut cand: Vec<(f32, usize)> = Vec::with_capacity(nbox);
    let mut kept: Vec<usize> = Vec::new();
    for b in 0..nb {
        let bb = &bx[b * nbox * 4..(b + 1) * nbox * 4];
        for c in 0..nc {
            let s = &sc[(b * nc + c) * nbox..(b * nc + c + 1) * nbox];
            cand.clear();
            cand.extend(
                s.iter()
                    .enumerate()
                    .filter(|(_, &v)| score_threshold.is_none_or(|t| v > t))
                    .map(|(i, &v)| (v, i)),
            );
            cand.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            kept.clear();
            for &(_, i) in &cand {
                if kept.len() >= limit {
                    break;
                }
                let bi = &bb[i * 4..i * 4 + 4];
                if kept
                    .iter()
                    .all(|&k| !suppress(bi, &bb[k * 4..k * 4 + 4], center, iou_threshold))
                {
                    kept.push(i);
                    sel.extend_from_slice(&[b as i64, c as i64, i as i64]);
                }
            }
        }
    }
    let k = sel.len() / 3;
    Tensor::from_vec(vec![k, 3], sel)
}

// ------------------------------------------------------------------------------------
// Col2Im
// ------------------------------------------------------------------------------------

/// Col2Im: `x` (N, C * prod(block), L) to (N, C, *image).
pub fn col2im(
    x: &Tensor,
    image: &[i64],
    block: &[i64],
    dilations: &[i64],
    pads: &[i64],
    strides_: &[i64],
) -> Result<Tensor> {
    let r = image.len();
    if r == 0
        || block.len() != r
        || dilations.len() != r
        || strides_.len() != r
        || pads.len() != 2 * r
    {
        return Err(Error::shape(format!(
            "Col2Im: image_shape {image:?}, block_shape {block:?}, dilations {dilations:?}, \
             pads {pads:?} and strides {strides_:?} do not agree"
        )));
    }
    let pos = |v: i64, what: &str| -> Result<usize> {
        usize::try_from(v)
            .ok()
            .filter(|&u| u > 0)
            .ok_or_else(|| Error::runtime(format!("Col2Im: {what} must be positive, got {v}")))
    };
    let img: Vec<usize> = image
        .iter()
        .map(|&v| pos(v, "image_shape"))
        .collect::<Result<_>>()?;
    let blk: Vec<usize> = block
        .iter()
        .map(|&v| pos(v, "block_shape"))
        .collect::<Result<_>>()?;
    let dil: Vec<usize> = dilations
        .iter()
        .map(|&v| pos(v, "dilations"))
        .collect::<Result<_>>()?;
    let st: Vec<usize> = strides_
        .iter()
        .map(|&v| pos(v, "strides"))
        .collect::<Result<_>>()?;
    let pb: Vec<i64> = pads[..r].to_vec();
    for &p in pads {
        if p < 0 {
            return Err(Error::runtime(format!("Col2Im: negative pad {p}")));
        }
    }
    let xs = x.shape();
    if xs.len() != 3 {
        return Err(Error::shape(format!(
            "Col2Im: input must be 3-D, got {xs:?}"
        )));
    }
    let ksize = blk
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| Error::shape("Col2Im: block too large"))?;
    if !xs[1].is_multiple_of(ksize) {
        return Err(Error::shape(format!(
            "Col2Im: input dim 1 ({}) is not a multiple of the block size {ksize}",
            xs[1]
        )));
    }
    let c = xs[1] / ksize;
    let mut nblocks = Vec::with_capacity(r);
    for i in 0..r {
        let span = (dil[i] as i128) * (blk[i] as i128 - 1) + 1;
        let full = img[i] as i128 + pads[i] as i128 + pads[i + r] as i128 - span;
        if full < 0 {
            return Err(Error::shape("Col2Im: block larger than the padded image"));
        }
        nblocks.push(
            usize::try_from(full / st[i] as i128 + 1)
                .map_err(|_| Error::shape("Col2Im: too many blocks"))?,
        );
    }
    let l: usize = nblocks
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| Error::shape("Col2Im: too many blocks"))?;
    if l != xs[2] {
        return Err(Error::shape(format!(
            "Col2Im: input has {} blocks, the geometry gives {l}",
            xs[2]
        )));
    }
    let mut out_shape = vec![xs[0], c];
    out_shape.extend_from_slice(&img);
    let total = numel(&out_shape, x.dtype())?;
    let isz: usize = img.iter().product();
    let ist = strides(&img);
    crate::dispatch!(num x.dtype(), "Col2Im", T => {
        let src = x.as_slice::<T>()?;
        let mut out = alloc_vec::<T>(total)?;
        let mut koff = vec![0usize; r];
        let mut bpos = vec![0usize; r];
        for n in 0..xs[0] {
            for ch in 0..c {
                let dst = &mut out[(n * c + ch) * isz..(n * c + ch + 1) * isz];
                koff.iter_mut().for_each(|v| *v = 0);
                for kk in 0..ksize {
                    let row = &src[((n * c + ch) * ksize + kk) * l..((n * c + ch) * ksize + kk + 1) * l];
                    bpos.iter_mut().for_each(|v| *v = 0);
                    for &v in row {
                        let mut off = 0usize;
                        let mut inside = true;
                        for d in 0..r {
                            let p = (bpos[d] * st[d] + koff[d] * dil[d]) as i64 - pb[d];
                            match usize::try_from(p).ok().filter(|&u| u < img[d]) {
                                Some(u) => off += u * ist[d],
                                None => {
                                    inside = false;
                                    break;
                                }
                            }
                        }
                        if inside {
                            dst[off] = Num::add(dst[off], v);
                        }
                        for d in (0..r).rev() {
                            bpos[d] += 1;
                            if bpos[d] < nblocks[d] {
                                break;
                            }
                            bpos[d] = 0;
                        }
                    }
                    for d in (0..r).rev() {
                        koff[d] += 1;
                        if koff[d] < blk[d] {
                            break;
                        }
                        koff[d] = 0;
                    }
                }
            }
        }
        Tensor::from_vec(out_shape, out)
    })
}

// ------------------------------------------------------------------------------------
// Windows, MelWeightMatrix
// ------------------------------------------------------------------------------------

/// Which window function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Hann,
    Hamming,
    Blackman,
}

/// Builds a window of `size` values in dtype `dt`.
pub fn window(kind: WindowKind, size: i64, periodic: bool, dt: DType) -> Result<Tensor> {
    let n = usize::try_from(size)
        .map_err(|_| Error::runtime(format!("window size {size} must not be negative")))?;
    numel(&[n], DType::F64)?;
    numel(&[n], dt)?;
    let n1 = if periodic { n as f64 } else { n as f64 - 1.0 };
    let pi = std::f64::consts::PI;
    let v: Vec<f64> = (0..n)
        .map(|i| {
            if n1 <= 0.0 {
                return 1.0;
            }
            let i = i as f64;
            match kind {
                WindowKind::Hann => (pi * i / n1).sin().powi(2),
                WindowKind::Hamming => {
                    let a = 25.0 / 46.0;
                    a - (1.0 - a) * (2.0 * pi * i / n1).cos()
                }
                WindowKind::Blackman => {
                    0.42 - 0.5 * (2.0 * pi * i / n1).cos() + 0.08 * (4.0 * pi * i / n1).cos()
                }
            }
        })
        .collect();
    Tensor::vector(v).cast(dt)
}

/// MelWeightMatrix: (dft_length / 2 + 1, num_mel_bins) triangular filters.
pub fn mel_weight_matrix(
    num_mel_bins: i64,
    dft_length: i64,
    sample_rate: i64,
    lower_hz: f64,
    upper_hz: f64,
    dt: DType,
) -> Result<Tensor> {
    let mel = usize::try_from(num_mel_bins)
        .map_err(|_| Error::runtime("MelWeightMatrix: num_mel_bins must not be negative"))?;
    let dl = usize::try_from(dft_length)
        .ok()
        .filter(|&d| d > 0)
        .ok_or_else(|| Error::runtime("MelWeightMatrix: dft_length must be positive"))?;
    if sample_rate <= 0 {
        return Err(Error::runtime(
            "MelWeightMatrix: sample_rate must be positive",
        ));
    }
    let nspec = dl / 2 + 1;
    let shape = vec![nspec, mel];
    let total = numel(&shape, DType::F64)?;
    numel(&shape, dt)?;
    let lo = 2595.0 * (1.0 + lower_hz / 700.0).log10();
    let hi = 2595.0 * (1.0 + upper_hz / 700.0).log10();
    let step = (hi - lo) / (mel + 2) as f64;
    let bins: Vec<i64> = (0..mel + 2)
        .map(|i| {
            let m = i as f64 * step + lo;
            let f = 700.0 * (10f64.powf(m / 2595.0) - 1.0);
            (((dl + 1) as f64 * f) / sample_rate as f64).floor() as i64
        })
        .collect();
    let mut out = alloc_vec::<f64>(total)?;
    let idx = |j: i64| -> Result<usize> {
        usize::try_from(j)
            .ok()
            .filter(|&u| u < nspec)
            .ok_or_else(|| {
                Error::runtime(format!("MelWeightMatrix: frequency bin {j} out of range"))
            })
    };
    for i in 0..mel {
        let (l, c, h) = (bins[i], bins[i + 1], bins[i + 2]);
        let lc = c - l;
        if lc == 0 {
            out[idx(c)? * mel + i] = 1.0;
        } else {
            for j in l..=c {
                out[idx(j)? * mel + i] = (j - l) as f64 / lc as f64;
            }
        }
        let ch = h - c;
        if ch > 0 {
            for j in c..h {
                out[idx(j)? * mel + i] = (h - j) as f64 / ch as f64;
            }
        }
    }
    Tensor::from_vec(shape, out)?.cast(dt)
}

// ------------------------------------------------------------------------------------
// DFT / STFT
// ------------------------------------------------------------------------------------

type C64 = (f64, f64);

/// A transform of one length: radix-2 for powers of two, a direct O(n^2) sum with a
/// twiddle table for small other lengths, Bluestein's chirp-z (through a radix-2 transform)
/// for large other lengths. Unnormalized; `inverse` flips the sign of the exponent.
struct Fft {
    n: usize,
    /// exp(-2 pi i k / n) for k < n (empty for Bluestein).
    tw: Vec<C64>,
    scratch: Vec<C64>,
    blue: Option<Box<Bluestein>>,
}

struct Bluestein {
    m: usize,
    sub: Fft,
    /// exp(-pi i j^2 / n) for j < n.
    chirp: Vec<C64>,
    /// Transform of the conjugated chirp, wrapped to length m.
    bfft: Vec<C64>,
    work: Vec<C64>,
}

/// Lengths up to this use the direct sum when they are not powers of two.
const DIRECT_MAX: usize = 64;

fn cmul(a: C64, b: C64) -> C64 {
    (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0)
}

impl Fft {
    fn new(n: usize) -> Result<Fft> {
        numel(&[n, 4], DType::F64)?;
        if n > DIRECT_MAX && !n.is_power_of_two() {
            let m = (2 * n - 1)
                .checked_next_power_of_two()
                .ok_or_else(|| Error::memory("DFT length too large"))?;
            numel(&[m, 8], DType::F64)?;
            let sub = Fft::new(m)?;
            let two_n = 2 * n as u128;
            let chirp: Vec<C64> = (0..n)
                .map(|j| {
                    let q = ((j as u128 * j as u128) % two_n) as f64;
                    let a = -std::f64::consts::PI * q / n as f64;
                    (a.cos(), a.sin())
                })
                .collect();
            let mut bfft = vec![(0.0, 0.0); m];
            for (j, &(re, im)) in chirp.iter().enumerate() {
                bfft[j] = (re, -im);
                if j > 0 {
                    bfft[m - j] = (re, -im);
                }
            }
            let mut sub = sub;
            sub.run(&mut bfft, false);
            return Ok(Fft {
                n,
                tw: Vec::new(),
                scratch: Vec::new(),
                blue: Some(Box::new(Bluestein {
                    m,
                    sub,
                    chirp,
                    bfft,
                    work: vec![(0.0, 0.0); m],
                })),
            });
        }
        let tw = (0..n)
            .map(|k| {
                let a = -2.0 * std::f64::consts::PI * k as f64 / n as f64;
                (a.cos(), a.sin())
            })
            .collect();
        Ok(Fft {
            n,
            tw,
            scratch: vec![(0.0, 0.0); n],
            blue: None,
        })
    }

    fn run(&mut self, buf: &mut [C64], inverse: bool) {
        let n = self.n;
        if let Some(b) = self.blue.as_deref_mut() {
            // The inverse is the conjugate of the forward transform of the conjugate.
            if inverse {
                buf.iter_mut().for_each(|v| v.1 = -v.1);
            }
            b.work.iter_mut().for_each(|v| *v = (0.0, 0.0));
            for ((w, &x), &c) in b.work.iter_mut().zip(buf.iter()).zip(&b.chirp) {
                *w = cmul(x, c);
            }
            b.sub.run(&mut b.work, false);
            for (w, &f) in b.work.iter_mut().zip(&b.bfft) {
                *w = cmul(*w, f);
            }
            b.sub.run(&mut b.work, true);
            let scale = 1.0 / b.m as f64;
            for ((x, &w), &c) in buf.iter_mut().zip(&b.work).zip(&b.chirp) {
                let v = cmul(w, c);
                *x = (v.0 * scale, v.1 * scale);
            }
            if inverse {
                buf.iter_mut().for_each(|v| v.1 = -v.1);
            }
            return;
        }
        let sign = if inverse { -1.0 } else { 1.0 };
        if n.is_power_of_two() {
            // Bit-reversal permutation.
            let mut j = 0usize;
            for i in 1..n {
                let mut bit = n >> 1;
                while j & bit != 0 {
                    j ^= bit;
                    bit >>= 1;
                }
                j |= bit;
                if i < j {
                    buf.swap(i, j);
                }
            }
            let mut len = 2;
            while len <= n {
                let step = n / len;
                for start in (0..n).step_by(len) {
                    for k in 0..len / 2 {
                        let (wr, wi) = self.tw[k * step];
                        let wi = wi * sign;
                        let (ar, ai) = buf[start + k];
                        let (br, bi) = buf[start + k + len / 2];
                        let (tr, ti) = (br * wr - bi * wi, br * wi + bi * wr);
                        buf[start + k] = (ar + tr, ai + ti);
                        buf[start + k + len / 2] = (ar - tr, ai - ti);
                    }
                }
                len <<= 1;
            }
        } else {
            for k in 0..n {
                let mut acc = (0.0, 0.0);
                let mut t = 0usize;
                for &(xr, xi) in buf.iter() {
                    let (wr, wi) = self.tw[t];
                    let wi = wi * sign;
                    acc.0 += xr * wr - xi * wi;
                    acc.1 += xr * wi + xi * wr;
                    t += k;
                    if t >= n {
                        t -= n;
                    }
                }
                self.scratch[k] = acc;
            }
            buf.copy_from_slice(&self.scratch);
        }
    }
}

/// DFT along `axis` of `x` whose last dim (1 = real, 2 = complex) holds the components.
/// `n` is the transform length (signal padded with zeros or truncated).
pub fn dft(
    x: &Tensor,
    axis: usize,
    n: Option<usize>,
    inverse: bool,
    onesided: bool,
) -> Result<Tensor> {
    let xs = x.shape();
    let rank = xs.len();
    if rank < 2 {
        return Err(Error::shape(format!(
            "DFT: input rank must be at least 2, got {xs:?}"
        )));
    }
    if axis >= rank - 1 {
        return Err(Error::shape(format!(
            "DFT: axis {axis} must not be the last (component) axis of {xs:?}"
        )));
    }
    let comp = xs[rank - 1];
    if comp != 1 && comp != 2 {
        return Err(Error::shape(format!(
            "DFT: last dim must be 1 (real) or 2 (complex), got {comp}"
        )));
    }
    let len = xs[axis];
    let irfft = inverse && onesided;
    let n = match n {
        Some(v) => v,
        None if irfft => 2 * len.saturating_sub(1),
        None => len,
    };
    if n == 0 {
        return Err(Error::runtime("DFT: dft_length must be positive"));
    }
    let out_len = if onesided && !inverse { n / 2 + 1 } else { n };
    let out_comp = if irfft { 1 } else { 2 };
    let mut out_shape = xs.to_vec();
    out_shape[axis] = out_len;
    out_shape[rank - 1] = out_comp;
    let total = numel(&out_shape, x.dtype())?;
    let outer: usize = xs[..axis].iter().product();
    let inner: usize = xs[axis + 1..rank - 1].iter().product();
    let src = x.to_f64_vec()?;
    let mut out = alloc_vec::<f64>(total)?;
    let mut fft = Fft::new(n)?;
    let mut buf = vec![(0f64, 0f64); n];
    let norm = if inverse { 1.0 / n as f64 } else { 1.0 };
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| -> C64 {
                let base = ((o * len + j) * inner + i) * comp;
                if comp == 2 {
                    (src[base], src[base + 1])
                } else {
                    (src[base], 0.0)
                }
            };
            if irfft {
                // Hermitian extension of the one-sided spectrum.
                for (k, b) in buf.iter_mut().enumerate() {
                    *b = if k <= n / 2 {
                        if k < len {
                            at(k)
                        } else {
                            (0.0, 0.0)
                        }
                    } else if n - k < len {
                        let (re, im) = at(n - k);
                        (re, -im)
                    } else {
                        (0.0, 0.0)
                    };
                }
            } else {
                for (j, b) in buf.iter_mut().enumerate() {
                    *b = if j < len { at(j) } else { (0.0, 0.0) };
                }
            }
            fft.run(&mut buf, inverse);
            for (k, &(re, im)) in buf.iter().take(out_len).enumerate() {
                let base = ((o * out_len + k) * inner + i) * out_comp;
                out[base] = re * norm;
                if out_comp == 2 {
                    out[base + 1] = im * norm;
                }
            }
        }
    }
    Tensor::from_vec(out_shape, out)?.cast(x.dtype())
}
/// STFT's geometry, checked (shared with the GPU kernel): batch, signal length,
/// components (1 real, 2 complex), frame step, frame length, frames, bins.
pub(crate) fn stft_geometry(
    ss: &[usize],
    step: i64,
    window: Option<&[usize]>,
    frame_length: Option<i64>,
    onesided: bool,
) -> Result<[usize; 7]> {
    if ss.len() != 3 || (ss[2] != 1 && ss[2] != 2) {
        return Err(Error::shape(format!(
            "STFT: signal must be (batch, length, 1 or 2), got {ss:?}"
        )));
    }
    let (nb, len, comp) = (ss[0], ss[1], ss[2]);
    if onesided && comp == 2 {
        return Err(Error::runtime("STFT: onesided output needs a real signal"));
    }
    let step = usize::try_from(step)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| Error::runtime(format!("STFT: frame_step {step} must be positive")))?;
    let win_len = match window {
        Some(w) if w.len() != 1 => return Err(Error::shape("STFT: window must be 1-D")),
        Some(w) => Some(w[0]),
        None => None,
    };
    let fl = match (frame_length, win_len) {
        (Some(f), _) => usize::try_from(f)
            .ok()
            .filter(|&f| f > 0)
            .ok_or_else(|| Error::runtime(format!("STFT: frame_length {f} must be positive")))?,
        (None, Some(w)) => w,
        (None, None) => len,
    };
    if let Some(w) = win_len {
        if w != fl {
            return Err(Error::shape(format!(
                "STFT: window of {w} values for frame_length {fl}"
            )));
        }
    }
    if fl == 0 || fl > len {
        return Err(Error::shape(format!(
            "STFT: frame_length {fl} does not fit a signal of {len}"
        )));
    }
    let frames = 1 + (len - fl) / step;
    let bins = if onesided { fl / 2 + 1 } else { fl };
    Ok([nb, len, comp, step, fl, frames, bins])
}

/// STFT: `signal` (B, L, 1|2) framed every `step` samples into frames of `frame_length`,
/// weighted by `window`, transformed; output (B, frames, bins, 2).
pub fn stft(
    signal: &Tensor,
    step: i64,
    window: Option<&Tensor>,
    frame_length: Option<i64>,
    onesided: bool,
) -> Result<Tensor> {
    let [nb, len, comp, step, fl, frames, bins] = stft_geometry(
        signal.shape(),
        step,
        window.map(|w| w.shape()),
        frame_length,
        onesided,
    )?;
    let win: Option<Vec<f64>> = window.map(|w| w.to_f64_vec()).transpose()?;
    let out_shape = vec![nb, frames, bins, 2];
    let total = numel(&out_shape, signal.dtype())?;
    let src = signal.to_f64_vec()?;
    let mut out = alloc_vec::<f64>(total)?;
    let mut fft = Fft::new(fl)?;
    let mut buf = vec![(0f64, 0f64); fl];
    for b in 0..nb {
        for f in 0..frames {
            for (j, v) in buf.iter_mut().enumerate() {
                let base = (b * len + f * step + j) * comp;
                let wj = win.as_ref().map_or(1.0, |w| w[j]);
                let im = if comp == 2 { src[base + 1] } else { 0.0 };
                *v = (src[base] * wj, im * wj);
            }
            fft.run(&mut buf, false);
            for (k, &(re, im)) in buf.iter().take(bins).enumerate() {
                let base = ((b * frames + f) * bins + k) * 2;
                out[base] = re;
                out[base + 1] = im;
            }
        }
    }
    Tensor::from_vec(out_shape, out)?.cast(signal.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: InterpMode, coord: CoordMode) -> ResizeCfg {
        ResizeCfg {
            mode,
            coord,
            nearest: NearestMode::RoundPreferFloor,
            cubic_a: -0.75,
            exclude_outside: false,
            extrapolation: 0.0,
            antialias: false,
        }
    }

    #[test]
    fn resize_nearest_2x() {
        let x = Tensor::from_vec(vec![1, 1, 2, 2], vec![1f32, 2., 3., 4.]).unwrap();
        let specs = resize_axes(
            x.shape(),
            Some(&[1., 1., 2., 2.]),
            None,
            &[0, 1, 2, 3],
            None,
            KeepAspect::Stretch,
        )
        .unwrap();
        let c = cfg(InterpMode::Nearest, CoordMode::Asymmetric);
        let y = resize(&x, &c, &specs).unwrap();
        assert_eq!(y.shape(), &[1, 1, 4, 4]);
        assert_eq!(
            y.as_slice::<f32>().unwrap(),
            &[1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
        );
    }

    #[test]
    fn resize_linear_half_pixel() {
        let x = Tensor::from_vec(vec![1, 1, 2, 2], vec![1f32, 2., 3., 4.]).unwrap();
        let specs = resize_axes(
            x.shape(),
            Some(&[1., 1., 2., 2.]),
            None,
            &[0, 1, 2, 3],
            None,
            KeepAspect::Stretch,
        )
        .unwrap();
        let y = resize(&x, &cfg(InterpMode::Linear, CoordMode::HalfPixel), &specs).unwrap();
        let v = y.as_slice::<f32>().unwrap();
        let want = [1.0f32, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
    }

    #[test]
    fn resize_huge_scale_is_an_error() {
        let shape = [1usize, 1, 4, 4];
        let specs = resize_axes(
            &shape,
            Some(&[1., 1., 1e9, 1e9]),
            None,
            &[0, 1, 2, 3],
            None,
            KeepAspect::Stretch,
        )
        .unwrap();
        let x = Tensor::zeros(DType::F32, shape.to_vec()).unwrap();
        assert!(resize(&x, &cfg(InterpMode::Nearest, CoordMode::HalfPixel), &specs).is_err());
        assert!(resize_axes(
            &shape,
            Some(&[1., 1., 1e30, 1.]),
            None,
            &[0, 1, 2, 3],
            None,
            KeepAspect::Stretch
        )
        .is_err());
        assert!(resize_axes(
            &shape,
            Some(&[1., 1., -1., 1.]),
            None,
            &[0, 1, 2, 3],
            None,
            KeepAspect::Stretch
        )
        .is_err());
    }

    /// Timing of the PP-OCR style 2x upsampling paths (run with --ignored --nocapture).
    #[test]
    #[ignore]
    fn bench_resize_2x() {
        let shape = vec![1usize, 96, 160, 160];
        let x = Tensor::zeros(DType::F32, shape.clone()).unwrap();
        let specs = resize_axes(
            &shape,
            Some(&[1., 1., 2., 2.]),
            None,
            &[0, 1, 2, 3],
            None,
            KeepAspect::Stretch,
        )
        .unwrap();
        for (mode, coord) in [
            (InterpMode::Nearest, CoordMode::Asymmetric),
            (InterpMode::Linear, CoordMode::HalfPixel),
            (InterpMode::Linear, CoordMode::AlignCorners),
        ] {
            let c = cfg(mode, coord);
            let t = std::time::Instant::now();
            for _ in 0..5 {
                resize(&x, &c, &specs).unwrap();
            }
            println!("{mode:?} {coord:?}: {:?} per call", t.elapsed() / 5);
        }
        let t = std::time::Instant::now();
        for _ in 0..5 {
            let mut v = vec![0f32; 4 * 96 * 160 * 160];
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            std::hint::black_box(&v);
        }
        println!(
            "baseline fill of the output size: {:?} per call",
            t.elapsed() / 5
        );
    }

    #[test]
    fn no_panics_on_hostile_inputs() {
        let x = Tensor::from_vec(vec![1, 1, 3, 3], (0..9).map(|v| v as f32).collect()).unwrap();
        let all = [0usize, 1, 2, 3];
        for mode in [InterpMode::Nearest, InterpMode::Linear, InterpMode::Cubic] {
            for coord in [
                CoordMode::HalfPixel,
                CoordMode::HalfPixelSymmetric,
                CoordMode::PytorchHalfPixel,
                CoordMode::AlignCorners,
                CoordMode::Asymmetric,
                CoordMode::TfHalfPixelForNn,
                CoordMode::TfCropAndResize,
            ] {
                for aa in [false, true] {
                    let mut c = cfg(mode, coord);
                    c.antialias = aa;
                    c.exclude_outside = aa;
                    for sc in [1e-9f32, 0.01, 0.34, 1.0, 2.5, f32::NAN, 1e9] {
                        let roi = [0.0, 0.0, f32::NAN, -5.0, 1.0, 1.0, 1e30, 0.5];
                        if let Ok(specs) = resize_axes(
                            x.shape(),
                            Some(&[1., 1., sc, 1. / sc]),
                            None,
                            &all,
                            Some(&roi),
                            KeepAspect::Stretch,
                        ) {
                            let _ = resize(&x, &c, &specs);
                        }
                    }
                    for sz in [
                        [1i64, 1, 0, 5],
                        [1, 1, 1, 1],
                        [1, 1, -1, 2],
                        [1, 1, 1 << 40, 1],
                    ] {
                        for pol in [
                            KeepAspect::Stretch,
                            KeepAspect::NotLarger,
                            KeepAspect::NotSmaller,
                        ] {
                            if let Ok(specs) =
                                resize_axes(x.shape(), None, Some(&sz), &all, None, pol)
                            {
                                let _ = resize(&x, &c, &specs);
                            }
                        }
                    }
                }
            }
        }
        let g = Tensor::from_vec(
            vec![1, 2, 2, 2],
            vec![
                f32::NAN,
                f32::INFINITY,
                -1e30,
                1e30,
                0.5,
                -7.0,
                3.0,
                f32::NEG_INFINITY,
            ],
        )
        .unwrap();
        for mode in [GridMode::Nearest, GridMode::Linear, GridMode::Cubic] {
            for pad in [GridPad::Zeros, GridPad::Border, GridPad::Reflection] {
                for align in [false, true] {
                    assert!(grid_sample(&x, &g, mode, pad, align).is_ok());
                }
            }
        }
        let rois = Tensor::from_vec(
            vec![2, 4],
            vec![f32::NAN, 0., 1e30, 2., -5., -5., 100., 100.],
        )
        .unwrap();
        let cfg_r = RoiAlignCfg {
            max_mode: true,
            output_height: 2,
            output_width: 2,
            sampling_ratio: 0,
            spatial_scale: 1.0,
            half_pixel: true,
        };
        let _ = roi_align(&x, &rois, &Tensor::vector(vec![0i64, 0]), &cfg_r);
        assert!(roi_align(&x, &rois, &Tensor::vector(vec![0i64, 5]), &cfg_r).is_err());
        let boxes = Tensor::from_vec(
            vec![1, 2, 4],
            vec![f32::NAN, 0., 1., 1., 0., 0., f32::INFINITY, 1.],
        )
        .unwrap();
        let scores = Tensor::from_vec(vec![1, 1, 2], vec![f32::NAN, 0.5]).unwrap();
        assert!(non_max_suppression(&boxes, &scores, i64::MAX, 0.5, Some(0.1), false).is_ok());
        assert!(non_max_suppression(&boxes, &scores, -3, 0.5, None, true).is_ok());
        let c = Tensor::from_vec(vec![1, 4, 1], vec![1f32; 4]).unwrap();
        assert!(col2im(&c, &[1, 1], &[2, 2], &[i64::MAX, 1], &[0, 0, 0, 0], &[1, 1]).is_err());
        assert!(col2im(&c, &[2, 2], &[2, 2], &[1, 1], &[0, 0, 0, 0], &[i64::MAX, 1]).is_ok());
        let s = Tensor::from_vec(vec![1, 8, 1], vec![1f32; 8]).unwrap();
        assert!(stft(&s, i64::MAX, None, Some(4), true).is_ok());
        assert!(stft(&s, 0, None, Some(4), true).is_err());
        assert!(dft(&s, 1, Some(1), true, true).is_ok());
        assert!(dft(&s, 1, Some(usize::MAX / 2), false, false).is_err());
        assert!(mel_weight_matrix(8, 16, 8192, 0.0, 1e9, DType::F32).is_err());
        assert!(affine_grid(
            &Tensor::zeros(DType::F32, vec![1, 2, 3]).unwrap(),
            &[1, 1, i64::MAX, 2],
            false
        )
        .is_err());
        let empty = Tensor::zeros(DType::F32, vec![0, 2, 3]).unwrap();
        assert!(affine_grid(&empty, &[0, 1, 1 << 40, 2], false).is_ok());
        let z = Tensor::zeros(DType::F32, vec![0, 1, 3, 3]).unwrap();
        let specs = resize_axes(
            z.shape(),
            Some(&[1., 1., 1e9, 1e9]),
            None,
            &all,
            None,
            KeepAspect::Stretch,
        )
        .unwrap();
        assert!(resize(&z, &cfg(InterpMode::Nearest, CoordMode::HalfPixel), &specs).is_ok());
    }

    #[test]
    fn dft_roundtrip() {
        for n in [4usize, 6] {
            let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
            let x = Tensor::from_vec(vec![1, n, 1], v.clone()).unwrap();
            let f = dft(&x, 1, None, false, false).unwrap();
            let back = dft(&f, 1, None, true, false).unwrap();
            let b = back.as_slice::<f32>().unwrap();
            for i in 0..n {
                assert!((b[2 * i] - v[i]).abs() < 1e-5);
                assert!(b[2 * i + 1].abs() < 1e-5);
            }
        }
        let x = Tensor::from_vec(vec![1, 4, 3], vec![0f32; 12]).unwrap();
        assert!(dft(&x, 1, None, false, false).is_err());
        // Bluestein (n = 100) against the direct sum.
        let n = 100usize;
        let sig: Vec<C64> = (0..n)
            .map(|i| ((i as f64 * 0.37).sin(), (i as f64 * 0.11).cos()))
            .collect();
        for inverse in [false, true] {
            let mut a = sig.clone();
            Fft::new(n).unwrap().run(&mut a, inverse);
            let sign = if inverse { 1.0 } else { -1.0 };
            for (k, got) in a.iter().enumerate() {
                let mut want = (0.0, 0.0);
                for (j, &x) in sig.iter().enumerate() {
                    let ang = sign * 2.0 * std::f64::consts::PI * ((j * k) % n) as f64 / n as f64;
                    want = (
                        want.0 + cmul(x, (ang.cos(), ang.sin())).0,
                        want.1 + cmul(x, (ang.cos(), ang.sin())).1,
                    );
                }
                assert!((got.0 - want.0).abs() < 1e-9 && (got.1 - want.1).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn nms_basic() {
        let boxes = Tensor::from_vec(
            vec![1, 3, 4],
            vec![0f32, 0., 1., 1., 0., 0.1, 1., 1.1, 0., 10., 1., 11.],
        )
        .unwrap();
        let scores = Tensor::from_vec(vec![1, 1, 3], vec![0.9f32, 0.75, 0.6]).unwrap();
        let y = non_max_suppression(&boxes, &scores, 3, 0.5, None, false).unwrap();
        assert_eq!(y.as_slice::<i64>().unwrap(), &[0, 0, 0, 0, 0, 2]);
        assert!(non_max_suppression(&boxes, &scores, 3, 1.5, None, false).is_err());
    }

    #[test]
    fn windows_and_col2im() {
        let w = window(WindowKind::Hann, 4, true, DType::F32).unwrap();
        let v = w.as_slice::<f32>().unwrap();
        assert!((v[2] - 1.0).abs() < 1e-6 && v[0].abs() < 1e-6);
        assert!(window(WindowKind::Hann, -1, true, DType::F32).is_err());
        let x = Tensor::from_vec(vec![1, 1, 4], vec![1f32, 2., 3., 4.]).unwrap();
        let y = col2im(&x, &[2, 2], &[1, 1], &[1, 1], &[0, 0, 0, 0], &[1, 1]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        assert!(col2im(&x, &[3, 3], &[1, 1], &[1, 1], &[0, 0, 0, 0], &[1, 1]).is_err());
    }
}
