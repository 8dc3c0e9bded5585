//! CPU kernels for the norm family (ops in `crate::graph::ops::norm`): batch, instance,
//! layer, group, RMS, Lp and mean-variance normalization, LRN, and the two loss ops.
//!
//! All kernels compute in f32 (other float inputs are converted in and out); rows are
//! contiguous so the mean/variance/scale loops vectorize.

use crate::error::{Error, Result};
use crate::tensor::{alloc_vec, numel, DType, Tensor};
use std::borrow::Cow;

/// The values of a float tensor as f32 (borrowed when already f32).
pub fn f32_data(t: &Tensor) -> Result<Cow<'_, [f32]>> {
    match t.dtype() {
        DType::F32 => Ok(Cow::Borrowed(t.as_slice::<f32>()?)),
        dt if dt.is_float() => Ok(Cow::Owned(t.cast(DType::F32)?.into_vec::<f32>()?)),
        dt => Err(Error::unsupported_dtype(format!(
            "normalization does not support {dt}"
        ))),
    }
}

/// Builds a tensor of `dt` from f32 values.
pub fn from_f32(shape: Vec<usize>, v: Vec<f32>, dt: DType) -> Result<Tensor> {
    let t = Tensor::from_vec(shape, v)?;
    if dt == DType::F32 {
        Ok(t)
    } else {
        t.cast(dt)
    }
}

/// Expands a parameter tensor to `target` (unidirectional, right-aligned broadcast).
pub fn expand_param(t: &Tensor, target: &[usize], what: &str) -> Result<Vec<f32>> {
    let v = f32_data(t)?;
    let n = numel(target, DType::F32)?;
    if t.shape() == target {
        return Ok(v.into_owned());
    }
    let bad = || {
        Error::shape(format!(
            "{what} of shape {:?} does not broadcast to {target:?}",
            t.shape()
        ))
    };
    // Leading extra dims of the parameter must be 1.
    let extra = t.rank().saturating_sub(target.len());
    if t.shape()[..extra].iter().any(|&d| d != 1) {
        return Err(bad());
    }
    let ps = &t.shape()[extra..];
    let off = target.len() - ps.len();
    for (k, &d) in ps.iter().enumerate() {
        if d != 1 && d != target[off + k] {
            return Err(bad());
        }
    }
    if v.len() == 1 {
        return Ok(vec![v[0]; n]);
    }
    // Parameter strides, 0 on broadcast dims, aligned to target.
    let pst = crate::cpu::common::strides(ps);
    let mut st = vec![0usize; target.len()];
    for (k, &d) in ps.iter().enumerate() {
        if d != 1 {
            st[off + k] = pst[k];
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; target.len()];
    let mut p = 0usize;
    for _ in 0..n {
        out.push(v[p]);
        for k in (0..target.len()).rev() {
            idx[k] += 1;
            p += st[k];
            if idx[k] < target[k] {
                break;
            }
            p -= st[k] * target[k];
            idx[k] = 0;
        }
    }
    Ok(out)
}

/// Sum with 8 accumulators (vectorizes).
#[inline(always)]
fn sum8(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + rem.iter().sum::<f32>()
}

/// Sum of squared deviations from `m` with 8 accumulators.
#[inline(always)]
fn sqdev8(v: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            let d = c[k] - m;
            acc[k] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rem.iter().map(|&x| (x - m) * (x - m)).sum::<f32>()
}

/// Mean and population variance of a row.
#[inline]
pub fn mean_var(v: &[f32]) -> (f32, f32) {
    if v.is_empty() {
        return (f32::NAN, f32::NAN);
    }
    let n = v.len() as f32;
    let m = sum8(v) / n;
    (m, sqdev8(v, m) / n)
}

fn channels(shape: &[usize], what: &str) -> Result<(usize, usize, usize)> {
    if shape.len() < 2 {
        return Err(Error::shape(format!(
            "{what} needs an input of rank >= 2, got {shape:?}"
        )));
    }
    Ok((shape[0], shape[1], shape[2..].iter().product()))
}

fn check_len(t: &[f32], n: usize, what: &str) -> Result<()> {
    if t.len() != n {
        return Err(Error::shape(format!(
            "{what} has {} elements, expected {n}",
            t.len()
        )));
    }
    Ok(())
}

/// BatchNormalization with given statistics: `y = (x - mean) / sqrt(var + eps) * scale + b`.
/// Parameters hold one value per channel, or (spatial = 0) one per element of a sample.
pub fn batch_norm_inference(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    epsilon: f32,
) -> Result<Tensor> {
    let (n, c, inner) = channels(x.shape(), "BatchNormalization")?;
    let xs = f32_data(x)?;
    let (s, b, m, v) = (
        f32_data(scale)?,
        f32_data(bias)?,
        f32_data(mean)?,
        f32_data(var)?,
    );
    if xs.is_empty() {
        return Ok(x.clone());
    }
    let per_elem = s.len() != c && s.len() == c * inner;
    let plen = if per_elem { c * inner } else { c };
    for (t, w) in [(&s, "scale"), (&b, "B"), (&m, "mean"), (&v, "var")] {
        check_len(t, plen, w)?;
    }
    // Fold into y = x * a + d.
    let a: Vec<f32> = (0..plen).map(|i| s[i] / (v[i] + epsilon).sqrt()).collect();
    let d: Vec<f32> = (0..plen).map(|i| b[i] - m[i] * a[i]).collect();
    let mut out = alloc_vec::<f32>(xs.len())?;
    for bn in 0..n {
        for ch in 0..c {
            let base = (bn * c + ch) * inner;
            let src = &xs[base..base + inner];
            let dst = &mut out[base..base + inner];
            if per_elem {
                let pa = &a[ch * inner..(ch + 1) * inner];
                let pd = &d[ch * inner..(ch + 1) * inner];
                for (((y, &xv), &av), &dv) in dst.iter_mut().zip(src).zip(pa).zip(pd) {
                    *y = xv * av + dv;
                }
            } else {
                let (av, dv) = (a[ch], d[ch]);
                for (y, &xv) in dst.iter_mut().zip(src) {
                    *y = xv * av + dv;
                }
            }
        }
    }
    from_f32(x.shape().to_vec(), out, x.dtype())
}

/// Outputs of BatchNormalization in training mode.
pub struct BatchNormTrainOut {
    pub y: Tensor,
    /// `mean * momentum + batch_mean * (1 - momentum)`.
    pub running_mean: Tensor,
    pub running_var: Tensor,
    /// Statistics of this batch (population variance).
    pub batch_mean: Tensor,
    pub batch_var: Tensor,
}

/// BatchNormalization in training mode: normalizes with the batch statistics and
/// updates the running ones.
pub fn batch_norm_training(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    epsilon: f32,
    momentum: f32,
) -> Result<BatchNormTrainOut> {
    let (n, c, inner) = channels(x.shape(), "BatchNormalization")?;
    let xs = f32_data(x)?;
    let (s, b, m, v) = (
        f32_data(scale)?,
        f32_data(bias)?,
        f32_data(mean)?,
        f32_data(var)?,
    );
    for (t, w) in [(&s, "scale"), (&b, "B"), (&m, "mean"), (&v, "var")] {
        check_len(t, c, w)?;
    }
    if xs.is_empty() {
        return Err(Error::shape(
            "BatchNormalization training on an empty batch",
        ));
    }
    let cnt = (n * inner) as f64;
    let mut bm = vec![0f64; c];
    let mut bv = vec![0f64; c];
    for bn in 0..n {
        for (ch, acc) in bm.iter_mut().enumerate() {
            let base = (bn * c + ch) * inner;
            *acc += xs[base..base + inner]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
    }
    bm.iter_mut().for_each(|v| *v /= cnt);
    for bn in 0..n {
        for (ch, acc) in bv.iter_mut().enumerate() {
            let base = (bn * c + ch) * inner;
            let mu = bm[ch];
            *acc += xs[base..base + inner]
                .iter()
                .map(|&v| (v as f64 - mu).powi(2))
                .sum::<f64>();
        }
    }
    bv.iter_mut().for_each(|v| *v /= cnt);
    let mut out = alloc_vec::<f32>(xs.len())?;
    for bn in 0..n {
        for ch in 0..c {
            let base = (bn * c + ch) * inner;
            let a = s[ch] / (bv[ch] as f32 + epsilon).sqrt();
            let d = b[ch] - bm[ch] as f32 * a;
            for (y, &xv) in out[base..base + inner]
                .iter_mut()
                .zip(&xs[base..base + inner])
            {
                *y = xv * a + d;
            }
        }
    }
    let rm: Vec<f32> = (0..c)
        .map(|i| m[i] * momentum + bm[i] as f32 * (1.0 - momentum))
        .collect();
    let rv: Vec<f32> = (0..c)
        .map(|i| v[i] * momentum + bv[i] as f32 * (1.0 - momentum))
        .collect();
    let bm: Vec<f32> = bm.iter().map(|&v| v as f32).collect();
    let bv: Vec<f32> = bv.iter().map(|&v| v as f32).collect();
    Ok(BatchNormTrainOut {
        y: from_f32(x.shape().to_vec(), out, x.dtype())?,
        running_mean: from_f32(mean.shape().to_vec(), rm, mean.dtype())?,
        running_var: from_f32(var.shape().to_vec(), rv, var.dtype())?,
        batch_mean: from_f32(mean.shape().to_vec(), bm, mean.dtype())?,
        batch_var: from_f32(var.shape().to_vec(), bv, var.dtype())?,
    })
}

/// Normalizes each of `groups` contiguous blocks per sample, then applies a per-channel
/// affine map. Shared by InstanceNormalization (groups = C) and GroupNormalization.
fn grouped_norm(
    x: &Tensor,
    groups: usize,
    scale: &[f32],
    bias: &[f32],
    epsilon: f32,
    what: &str,
) -> Result<Tensor> {
    let (n, c, inner) = channels(x.shape(), what)?;
    if groups == 0 || c % groups != 0 {
        return Err(Error::shape(format!(
            "{what}: {c} channels do not split into {groups} groups"
        )));
    }
    check_len(scale, c, "scale")?;
    check_len(bias, c, "bias")?;
    let xs = f32_data(x)?;
    if xs.is_empty() {
        return Ok(x.clone());
    }
    let cpg = c / groups;
    let blk = cpg * inner;
    let mut out = alloc_vec::<f32>(xs.len())?;
    for bn in 0..n {
        for g in 0..groups {
            let base = (bn * groups + g) * blk;
            let (m, v) = mean_var(&xs[base..base + blk]);
            let inv = 1.0 / (v + epsilon).sqrt();
            for k in 0..cpg {
                let ch = g * cpg + k;
                let a = inv * scale[ch];
                let d = bias[ch] - m * a;
                let o = base + k * inner;
                for (y, &xv) in out[o..o + inner].iter_mut().zip(&xs[o..o + inner]) {
                    *y = xv * a + d;
                }
            }
        }
    }
    from_f32(x.shape().to_vec(), out, x.dtype())
}

/// InstanceNormalization: per (sample, channel) over the spatial dims.
pub fn instance_norm(x: &Tensor, scale: &Tensor, bias: &Tensor, epsilon: f32) -> Result<Tensor> {
    let c = channels(x.shape(), "InstanceNormalization")?.1;
    grouped_norm(
        x,
        c,
        &f32_data(scale)?,
        &f32_data(bias)?,
        epsilon,
        "InstanceNormalization",
    )
}

/// GroupNormalization. `per_channel`: scale/bias have C values (opset 21), else
/// `num_groups` values (opset 18).
pub fn group_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    num_groups: usize,
    epsilon: f32,
    per_channel: bool,
) -> Result<Tensor> {
    let c = channels(x.shape(), "GroupNormalization")?.1;
    let (s, b) = (f32_data(scale)?, f32_data(bias)?);
    let (s, b) = if per_channel {
        (s.into_owned(), b.into_owned())
    } else {
        check_len(&s, num_groups, "scale")?;
        check_len(&b, num_groups, "bias")?;
        if num_groups == 0 || c % num_groups != 0 {
            return Err(Error::shape(format!(
                "GroupNormalization: {c} channels do not split into {num_groups} groups"
            )));
        }
        let cpg = c / num_groups;
        (
            (0..c).map(|ch| s[ch / cpg]).collect(),
            (0..c).map(|ch| b[ch / cpg]).collect(),
        )
    };
    grouped_norm(x, num_groups, &s, &b, epsilon, "GroupNormalization")
}

/// Outputs of LayerNormalization.
pub struct LayerNormOut {
    pub y: Tensor,
    /// Mean and inverse standard deviation per row, shape `X.shape[..axis] + [1]*`.
    pub mean: Tensor,
    pub inv_std: Tensor,
}

/// LayerNormalization over the dims from `axis` on. `stats_dtype` is the dtype of the
/// Mean/InvStdDev outputs.
// Indexed inner loops: equal-length slices let the compiler drop bounds checks and
// vectorize, which the four-way zip did not.
#[allow(clippy::needless_range_loop)]
pub fn layer_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    axis: usize,
    epsilon: f32,
    stats_dtype: DType,
) -> Result<LayerNormOut> {
    if axis >= x.rank() {
        return Err(Error::shape(format!(
            "LayerNormalization axis {axis} out of range for rank {}",
            x.rank()
        )));
    }
    let norm_shape = &x.shape()[axis..];
    let cols: usize = norm_shape.iter().product();
    let rows: usize = x.shape()[..axis].iter().product();
    let s = expand_param(scale, norm_shape, "scale")?;
    let b = match bias {
        Some(b) => Some(expand_param(b, norm_shape, "B")?),
        None => None,
    };
    let xs = f32_data(x)?;
    let mut out = alloc_vec::<f32>(xs.len())?;
    let mut means = alloc_vec::<f32>(rows)?;
    let mut invs = alloc_vec::<f32>(rows)?;
    if cols > 0 {
        for (r, (src, dst)) in xs
            .chunks_exact(cols)
            .zip(out.chunks_exact_mut(cols))
            .enumerate()
        {
            let (m, v) = mean_var(src);
            let inv = 1.0 / (v + epsilon).sqrt();
            means[r] = m;
            invs[r] = inv;
            let (src, s) = (&src[..cols], &s[..cols]);
            match &b {
                Some(b) => {
                    let b = &b[..cols];
                    for j in 0..cols {
                        dst[j] = (src[j] - m) * inv * s[j] + b[j];
                    }
                }
                None => {
                    for j in 0..cols {
                        dst[j] = (src[j] - m) * inv * s[j];
                    }
                }
            }
        }
    } else {
        means.iter_mut().for_each(|v| *v = f32::NAN);
        invs.iter_mut().for_each(|v| *v = f32::NAN);
    }
    let mut sshape = x.shape()[..axis].to_vec();
    sshape.resize(x.rank(), 1);
    Ok(LayerNormOut {
        y: from_f32(x.shape().to_vec(), out, x.dtype())?,
        mean: from_f32(sshape.clone(), means, stats_dtype)?,
        inv_std: from_f32(sshape, invs, stats_dtype)?,
    })
}

/// RMSNormalization over the dims from `axis` on.
pub fn rms_norm(x: &Tensor, scale: &Tensor, axis: usize, epsilon: f32) -> Result<Tensor> {
    if axis >= x.rank() {
        return Err(Error::shape(format!(
            "RMSNormalization axis {axis} out of range for rank {}",
            x.rank()
        )));
    }
    let norm_shape = &x.shape()[axis..];
    let cols: usize = norm_shape.iter().product();
    let s = expand_param(scale, norm_shape, "scale")?;
    let xs = f32_data(x)?;
    let mut out = alloc_vec::<f32>(xs.len())?;
    if cols > 0 {
        for (src, dst) in xs.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
            let ms = sqdev8(src, 0.0) / cols as f32;
            let inv = 1.0 / (ms + epsilon).sqrt();
            for ((y, &xv), &sv) in dst.iter_mut().zip(src).zip(&s) {
                *y = xv * inv * sv;
            }
        }
    }
    from_f32(x.shape().to_vec(), out, x.dtype())
}

/// LpNormalization (p = 1 or 2) along `axis`; a zero norm gives zeros.
pub fn lp_norm(x: &Tensor, axis: usize, p: i64) -> Result<Tensor> {
    if axis >= x.rank() {
        return Err(Error::shape(format!(
            "LpNormalization axis {axis} out of range for rank {}",
            x.rank()
        )));
    }
    let (outer, n, inner) = crate::cpu::common::split_at_axis(x.shape(), axis);
    let xs = f32_data(x)?;
    if xs.is_empty() {
        return Ok(x.clone());
    }
    let mut out = alloc_vec::<f32>(xs.len())?;
    let mut norm = vec![0f32; inner];
    for o in 0..outer {
        norm.iter_mut().for_each(|v| *v = 0.0);
        let base = o * n * inner;
        for j in 0..n {
            let row = &xs[base + j * inner..base + (j + 1) * inner];
            for (a, &v) in norm.iter_mut().zip(row) {
                *a += if p == 1 { v.abs() } else { v * v };
            }
        }
        if p == 2 {
            norm.iter_mut().for_each(|v| *v = v.sqrt());
        }
        for j in 0..n {
            let o2 = base + j * inner;
            for ((y, &v), &nv) in out[o2..o2 + inner]
                .iter_mut()
                .zip(&xs[o2..o2 + inner])
                .zip(&norm)
            {
                *y = if nv == 0.0 { 0.0 } else { v / nv };
            }
        }
    }
    from_f32(x.shape().to_vec(), out, x.dtype())
}

/// MeanVarianceNormalization over sorted, distinct `axes`:
/// `(x - mean) / (sqrt(E[x^2] - mean^2) + 1e-9)`, or only `x - mean` when
/// `normalize_variance` is false.
pub fn mean_variance_norm(x: &Tensor, axes: &[usize], normalize_variance: bool) -> Result<Tensor> {
    use crate::cpu::reduce::{reduce, ReduceKind};
    let xf = Tensor::from_vec(x.shape().to_vec(), f32_data(x)?.into_owned())?;
    let mean = reduce(&xf, axes, true, ReduceKind::Mean)?;
    let sq: Vec<f32> = xf.as_slice::<f32>()?.iter().map(|v| v * v).collect();
    let sq = Tensor::from_vec(x.shape().to_vec(), sq)?;
    let msq = reduce(&sq, axes, true, ReduceKind::Mean)?;
    let (mv, sv) = (mean.as_slice::<f32>()?, msq.as_slice::<f32>()?);
    let den: Vec<f32> = mv
        .iter()
        .zip(sv)
        .map(|(&m, &s)| (s - m * m).max(0.0).sqrt() + 1e-9)
        .collect();
    // Walk x with the reduced tensor's strides (0 on reduced axes).
    let shape = x.shape();
    let rst = crate::cpu::common::strides(mean.shape());
    let st: Vec<usize> = (0..shape.len())
        .map(|k| if axes.contains(&k) { 0 } else { rst[k] })
        .collect();
    let xs = xf.as_slice::<f32>()?;
    let mut out = alloc_vec::<f32>(xs.len())?;
    let mut idx = vec![0usize; shape.len()];
    let mut p = 0usize;
    for (y, &v) in out.iter_mut().zip(xs) {
        *y = if normalize_variance {
            (v - mv[p]) / den[p]
        } else {
            v - mv[p]
        };
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            p += st[k];
            if idx[k] < shape[k] {
                break;
            }
            p -= st[k] * shape[k];
            idx[k] = 0;
        }
    }
    from_f32(shape.to_vec(), out, x.dtype())
}

/// Local response normalization across channels.
pub fn lrn(x: &Tensor, size: usize, alpha: f32, beta: f32, bias: f32) -> Result<Tensor> {
    let (n, c, inner) = channels(x.shape(), "LRN")?;
    if size == 0 {
        return Err(Error::attr("LRN size must be positive"));
    }
    let xs = f32_data(x)?;
    if xs.is_empty() {
        return Ok(x.clone());
    }
    let lo = (size - 1) / 2;
    let hi = size - 1 - lo;
    let k = alpha / size as f32;
    let mut out = alloc_vec::<f32>(xs.len())?;
    let mut acc = vec![0f32; inner];
    for bn in 0..n {
        let base = bn * c * inner;
        for ch in 0..c {
            acc.iter_mut().for_each(|v| *v = 0.0);
            let begin = ch.saturating_sub(lo);
            let end = (ch + hi + 1).min(c);
            for j in begin..end {
                let row = &xs[base + j * inner..base + (j + 1) * inner];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v * v;
                }
            }
            let o = base + ch * inner;
            for ((y, &v), &s) in out[o..o + inner]
                .iter_mut()
                .zip(&xs[o..o + inner])
                .zip(&acc)
            {
                *y = v / (bias + k * s).powf(beta);
            }
        }
    }
    from_f32(x.shape().to_vec(), out, x.dtype())
}

/// Loss reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReduction {
    None,
    Sum,
    Mean,
}

impl LossReduction {
    pub fn parse(s: &str) -> Result<LossReduction> {
        match s {
            "none" => Ok(LossReduction::None),
            "sum" => Ok(LossReduction::Sum),
            "mean" => Ok(LossReduction::Mean),
            _ => Err(Error::attr(format!("unknown reduction '{s}'"))),
        }
    }
}

/// NegativeLogLikelihoodLoss on log-probabilities `logp` (`[N, C, d…]`, as f32) with
/// integer `target` (`[N, d…]`).
pub fn nll_loss(
    logp: &[f32],
    shape: &[usize],
    target: &Tensor,
    weight: Option<&Tensor>,
    ignore_index: Option<i64>,
    reduction: LossReduction,
    out_dtype: DType,
) -> Result<Tensor> {
    let (n, c, inner) = channels(shape, "loss")?;
    if logp.len() != n * c * inner {
        return Err(Error::shape("loss: input data does not match its shape"));
    }
    let mut tshape = vec![n];
    tshape.extend_from_slice(&shape[2..]);
    if target.shape() != tshape.as_slice() {
        return Err(Error::shape(format!(
            "target shape {:?} does not match input shape {shape:?}",
            target.shape()
        )));
    }
    if !matches!(target.dtype(), DType::I32 | DType::I64) {
        return Err(Error::dtype(format!(
            "target must be int32 or int64, got {}",
            target.dtype()
        )));
    }
    let t = target.to_i64_vec()?;
    let w = match weight {
        Some(w) => {
            let v = f32_data(w)?.into_owned();
            check_len(&v, c, "weight")?;
            Some(v)
        }
        None => None,
    };
    let mut loss = alloc_vec::<f32>(n * inner)?;
    let mut wsum = 0f64;
    for (idx, &lbl) in t.iter().enumerate() {
        if Some(lbl) == ignore_index {
            continue;
        }
        let (bn, i) = (idx / inner, idx % inner);
        let cls = usize::try_from(lbl)
            .ok()
            .filter(|&v| v < c)
            .ok_or_else(|| {
                Error::runtime(format!("target value {lbl} is out of range [0, {c})"))
            })?;
        let wv = w.as_ref().map_or(1.0, |w| w[cls]);
        loss[idx] = -logp[(bn * c + cls) * inner + i] * wv;
        wsum += wv as f64;
    }
    match reduction {
        LossReduction::None => from_f32(tshape, loss, out_dtype),
        LossReduction::Sum => {
            let s: f64 = loss.iter().map(|&v| v as f64).sum();
            from_f32(vec![], vec![s as f32], out_dtype)
        }
        LossReduction::Mean => {
            let s: f64 = loss.iter().map(|&v| v as f64).sum();
            from_f32(vec![], vec![(s / wsum) as f32], out_dtype)
        }
    }
}

/// SoftmaxCrossEntropyLoss: returns (loss, log_prob).
pub fn softmax_cross_entropy(
    scores: &Tensor,
    labels: &Tensor,
    weight: Option<&Tensor>,
    ignore_index: Option<i64>,
    reduction: LossReduction,
) -> Result<(Tensor, Tensor)> {
    let (n, c, inner) = channels(scores.shape(), "SoftmaxCrossEntropyLoss")?;
    let mut lp = f32_data(scores)?.into_owned();
    crate::cpu::reduce::softmax_f32(
        &mut lp,
        (n, c, inner),
        crate::cpu::reduce::SoftmaxKind::LogSoftmax,
    );
    let loss = nll_loss(
        &lp,
        scores.shape(),
        labels,
        weight,
        ignore_index,
        reduction,
        scores.dtype(),
    )?;
    Ok((loss, from_f32(scores.shape().to_vec(), lp, scores.dtype())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap()
    }

    #[test]
    fn layer_and_batch_norm() {
        let x = t(&[2, 2], &[1., 3., 2., 6.]);
        let s = t(&[2], &[1., 2.]);
        let o = layer_norm(&x, &s, None, 1, 0.0, DType::F32).unwrap();
        assert_eq!(o.y.as_slice::<f32>().unwrap(), &[-1., 2., -1., 2.]);
        assert_eq!(o.mean.shape(), &[2, 1]);
        assert_eq!(o.mean.as_slice::<f32>().unwrap(), &[2., 4.]);
        let one = t(&[2], &[1., 1.]);
        let zero = t(&[2], &[0., 0.]);
        let y = batch_norm_inference(&x, &one, &zero, &one, &one, 0.0).unwrap();
        assert_eq!(y.as_slice::<f32>().unwrap(), &[0., 2., 1., 5.]);
        let xb = t(&[2, 1], &[1., 3.]);
        let (o1, z1) = (t(&[1], &[1.]), t(&[1], &[0.]));
        let o = batch_norm_training(&xb, &o1, &z1, &z1, &o1, 0.0, 0.9).unwrap();
        assert_eq!(o.y.as_slice::<f32>().unwrap(), &[-1., 1.]);
        assert!((o.running_mean.as_slice::<f32>().unwrap()[0] - 0.2).abs() < 1e-6);
        assert!((o.running_var.as_slice::<f32>().unwrap()[0] - 1.0).abs() < 1e-6);
        assert_eq!(o.batch_var.as_slice::<f32>().unwrap(), &[1.0]);
        let bad = t(&[3], &[1., 1., 1.]);
        assert!(batch_norm_inference(&x, &bad, &zero, &one, &one, 0.0).is_err());
        assert!(layer_norm(&x, &bad, None, 1, 0.0, DType::F32).is_err());
    }

    #[test]
    fn losses() {
        let x = t(&[2, 3], &[0., 0., 0., 1., 2., 3.]);
        let y = Tensor::from_vec(vec![2], vec![0i64, 9]).unwrap();
        let (l, _) = softmax_cross_entropy(&x, &y, None, Some(9), LossReduction::Mean).unwrap();
        let v = l.as_slice::<f32>().unwrap()[0];
        assert!((v - 3f32.ln()).abs() < 1e-6);
        assert!(softmax_cross_entropy(&x, &y, None, None, LossReduction::Sum).is_err());
    }

    #[test]
    fn lrn_and_mvn() {
        let x = t(&[1, 2, 1, 1], &[1., 2.]);
        let y = lrn(&x, 3, 3.0, 1.0, 0.0).unwrap();
        let y = y.as_slice::<f32>().unwrap();
        assert!((y[0] - 0.2).abs() < 1e-6 && (y[1] - 0.4).abs() < 1e-6);
        let z = mean_variance_norm(&x, &[1], true).unwrap();
        let z = z.as_slice::<f32>().unwrap();
        assert!((z[0] + 1.0).abs() < 1e-6 && (z[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn empty_inputs_with_huge_dims() {
        let big = 1usize << 40;
        let e = Tensor::from_vec(vec![big, 2, 0], Vec::<f32>::new()).unwrap();
        let p = t(&[2], &[1., 1.]);
        assert_eq!(instance_norm(&e, &p, &p, 1e-5).unwrap().len(), 0);
        assert_eq!(lp_norm(&e, 0, 2).unwrap().len(), 0);
        assert_eq!(lrn(&e, 3, 1e-4, 0.75, 1.0).unwrap().len(), 0);
        assert_eq!(
            batch_norm_inference(&e, &p, &p, &p, &p, 1e-5)
                .unwrap()
                .len(),
            0
        );
        let l = Tensor::from_vec(vec![big, 0], Vec::<i64>::new()).unwrap();
        let r = nll_loss(
            &[],
            e.shape(),
            &l,
            None,
            None,
            LossReduction::Sum,
            DType::F32,
        );
        assert_eq!(r.unwrap().as_slice::<f32>().unwrap(), &[0.0]);
        // Rows with no columns: statistics allocation is budget-checked.
        let z = Tensor::from_vec(vec![big, 1 << 20, 0], Vec::<f32>::new()).unwrap();
        let s0 = Tensor::from_vec(vec![0], Vec::<f32>::new()).unwrap();
        assert!(layer_norm(&z, &s0, None, 2, 1e-5, DType::F32).is_err());
    }
}
