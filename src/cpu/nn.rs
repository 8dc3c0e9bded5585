//! CPU kernels for the nn family (ops in `crate::graph::ops::nn`): convolutions, pooling,
//! matrix products (MatMul, Gemm, Einsum). Integer/quantized variants are in `cpu::quant`.
//!
//! Spatial ops work on up to three spatial dims; 1-D and 2-D inputs are viewed as 3-D with
//! leading unit dims, so one set of loops covers them all. Float work happens in f32
//! (f16/bf16/f64 inputs are converted), through [`crate::cpu::gemm`].

use crate::cpu::gemm::{sgemm_ex, sgemm_op, Mat, Operand as GemmOp, Packed, Side};
use crate::cpu::simd::{self, f32k, Isa};
use crate::error::{Error, Result};
use crate::graph::Activation;
use crate::tensor::{alloc_vec, numel, DType, Elem, Num, Tensor};

// ---------------------------------------------------------------------------------------
// Window geometry (convs and pools)
// ---------------------------------------------------------------------------------------

/// The `auto_pad` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoPad {
    #[default]
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

impl AutoPad {
    pub fn parse(s: &str) -> Result<AutoPad> {
        Ok(match s {
            "NOTSET" | "" => AutoPad::NotSet,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            "VALID" => AutoPad::Valid,
            _ => return Err(Error::attr(format!("unknown auto_pad '{s}'"))),
        })
    }
}

/// Window attributes of a conv or pool, as written (per spatial dim; `None` = default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub auto_pad: AutoPad,
    pub kernel_shape: Option<Vec<usize>>,
    pub strides: Option<Vec<usize>>,
    pub dilations: Option<Vec<usize>>,
    /// `[begin_0, begin_1, …, end_0, end_1, …]`.
    pub pads: Option<Vec<usize>>,
    pub ceil_mode: bool,
}

/// Resolved geometry over (up to) three spatial dims, 1-D/2-D padded in front with
/// unit dims.
#[derive(Debug, Clone, PartialEq)]
pub struct Geom {
    /// Number of real spatial dims.
    pub rank: usize,
    pub input: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub dilation: [usize; 3],
    pub pad_begin: [usize; 3],
    pub pad_end: [usize; 3],
    pub output: [usize; 3],
}

impl Geom {
    /// The real output spatial dims.
    pub fn out_dims(&self) -> &[usize] {
        &self.output[3 - self.rank..]
    }
    pub fn in_size(&self) -> usize {
        self.input.iter().product()
    }
    pub fn out_size(&self) -> usize {
        self.output.iter().product()
    }
    pub fn k_size(&self) -> usize {
        self.kernel.iter().product()
    }
    fn is_pointwise(&self) -> bool {
        self.kernel == [1; 3]
            && self.stride == [1; 3]
            && self.pad_begin == [0; 3]
            && self.pad_end == [0; 3]
    }
}

fn per_dim(v: &Option<Vec<usize>>, rank: usize, default: usize, what: &str) -> Result<Vec<usize>> {
    match v {
        None => Ok(vec![default; rank]),
        Some(v) if v.len() == rank => Ok(v.clone()),
        Some(v) => Err(Error::attr(format!(
            "{what} has {} values, expected {rank}",
            v.len()
        ))),
    }
}

fn to3(v: &[usize], fill: usize) -> [usize; 3] {
    let mut o = [fill; 3];
    let off = 3 - v.len();
    o[off..].copy_from_slice(v);
    o
}

impl Window {
    /// Resolves pads and output size for `input` spatial dims and a `kernel`
    /// (from the weights, or `kernel_shape` for pools).
    pub fn resolve(&self, input: &[usize], kernel: &[usize]) -> Result<Geom> {
        let rank = input.len();
        if rank == 0 || rank > 3 {
            return Err(Error::unsupported_op(format!(
                "{rank} spatial dims (only 1 to 3 are supported)"
            )));
        }
        if kernel.len() != rank {
            return Err(Error::shape(format!(
                "kernel has {} dims, input has {rank} spatial dims",
                kernel.len()
            )));
        }
        if let Some(ks) = &self.kernel_shape {
            if ks.as_slice() != kernel {
                return Err(Error::shape(format!(
                    "kernel_shape {ks:?} does not match the weights' {kernel:?}"
                )));
            }
        }
        let strides = per_dim(&self.strides, rank, 1, "strides")?;
        let dil = per_dim(&self.dilations, rank, 1, "dilations")?;
        let pads = per_dim(&self.pads, 2 * rank, 0, "pads")?;
        let mut pb = vec![0; rank];
        let mut pe = vec![0; rank];
        let mut out = vec![0; rank];
        for d in 0..rank {
            let (i, k, s, dl) = (input[d], kernel[d], strides[d], dil[d]);
            if s == 0 || dl == 0 || k == 0 {
                return Err(Error::attr(
                    "kernel, strides and dilations must be positive",
                ));
            }
            let eff = (k - 1)
                .checked_mul(dl)
                .and_then(|x| x.checked_add(1))
                .ok_or_else(|| Error::attr("kernel extent overflows"))?;
            match self.auto_pad {
                AutoPad::SameUpper | AutoPad::SameLower => {
                    let o = i.div_ceil(s);
                    let need = ((o.max(1) - 1) * s)
                        .checked_add(eff)
                        .ok_or_else(|| Error::attr("kernel extent overflows"))?
                        .saturating_sub(i);
                    let b = if self.auto_pad == AutoPad::SameUpper {
                        need / 2
                    } else {
                        need - need / 2
                    };
                    pb[d] = b;
                    pe[d] = need - b;
                    out[d] = o;
                }
                AutoPad::Valid | AutoPad::NotSet => {
                    if self.auto_pad == AutoPad::NotSet {
                        pb[d] = pads[d];
                        pe[d] = pads[rank + d];
                    }
                    let span = i
                        .checked_add(pb[d])
                        .and_then(|x| x.checked_add(pe[d]))
                        .ok_or_else(|| Error::attr("pads are too large"))?;
                    if span < eff {
                        out[d] = 0;
                        if !self.ceil_mode || span + s <= eff {
                            return Err(Error::shape(format!(
                                "window of extent {eff} does not fit the padded input size {span}"
                            )));
                        }
                    }
                    let num = span.saturating_sub(eff);
                    out[d] = if self.ceil_mode {
                        let mut o = num.div_ceil(s) + 1;
                        // The last window must start inside the input or the left pad.
                        if (o - 1) * s >= i + pb[d] {
                            o -= 1;
                        }
                        o
                    } else {
                        num / s + 1
                    };
                }
            }
        }
        Ok(Geom {
            rank,
            input: to3(input, 1),
            kernel: to3(kernel, 1),
            stride: to3(&strides, 1),
            dilation: to3(&dil, 1),
            pad_begin: to3(&pb, 0),
            pad_end: to3(&pe, 0),
            output: to3(&out, 1),
        })
    }
}

/// Range of output indices `o` in `0..out` for which `o*s + off - pad` lies in `0..len`
/// (`off` = kernel tap offset).
#[inline]
fn valid_range(out: usize, s: usize, off: usize, pad: usize, len: usize) -> (usize, usize) {
    // need o*s + off >= pad  and  o*s + off < pad + len
    let lo = if off >= pad {
        0
    } else {
        (pad - off).div_ceil(s)
    };
    let hi = if pad + len > off {
        (pad + len - off).div_ceil(s)
    } else {
        0
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

// ---------------------------------------------------------------------------------------
// Float helpers
// ---------------------------------------------------------------------------------------

/// Values of a float tensor as f32 (borrowed when already f32).
fn f32_data(t: &Tensor) -> Result<std::borrow::Cow<'_, [f32]>> {
    if !t.dtype().is_float() {
        return Err(Error::dtype(format!(
            "expected a float tensor, got {}",
            t.dtype()
        )));
    }
    Ok(match t.as_slice::<f32>() {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => std::borrow::Cow::Owned(t.to_f32_vec()?),
    })
}

/// Builds an output of dtype `dt` from f32 results.
fn from_f32(dt: DType, shape: Vec<usize>, v: Vec<f32>) -> Result<Tensor> {
    let t = Tensor::from_vec(shape, v)?;
    if dt == DType::F32 {
        Ok(t)
    } else {
        t.cast(dt)
    }
}

fn apply_act(act: Option<Activation>, v: &mut [f32]) {
    if let Some(a) = act {
        a.apply_slice(v);
    }
}

// ---------------------------------------------------------------------------------------
// Conv
// ---------------------------------------------------------------------------------------

/// Shapes of a conv: batch, channels, groups (shared with the integer convs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvDims {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) m: usize,
    pub(crate) group: usize,
    pub(crate) cg: usize,
    pub(crate) mg: usize,
}

pub(crate) fn conv_dims(xs: &[usize], ws: &[usize], group: usize) -> Result<ConvDims> {
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(Error::shape(format!(
            "Conv input {xs:?} and weights {ws:?}: need rank >= 3 and equal ranks"
        )));
    }
    let (n, c, m, cg) = (xs[0], xs[1], ws[0], ws[1]);
    if group == 0 || cg.checked_mul(group) != Some(c) || m % group != 0 {
        return Err(Error::shape(format!(
            "Conv with {c} input channels, weights {ws:?} and group {group} do not fit"
        )));
    }
    Ok(ConvDims {
        n,
        c,
        m,
        group,
        cg,
        mg: m / group,
    })
}

/// Fills `col` (rows: channel × kernel taps; cols: output positions of output rows
/// `r0..r1`, where an output "row" is one (od, oh) pair) from one image's channel block.
fn im2col<T: Copy + Default>(
    x: &[T],
    channels: usize,
    g: &Geom,
    r0: usize,
    r1: usize,
    col: &mut [T],
) {
    let [_, ih, iw] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [_, oh, ow] = g.output;
    let plane = g.in_size();
    let ncols = (r1 - r0) * ow;
    let mut row = 0;
    for c in 0..channels {
        let xc = &x[c * plane..(c + 1) * plane];
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let dst = &mut col[row * ncols..(row + 1) * ncols];
                    row += 1;
                    let offw = e * g.dilation[2];
                    let (lo, hi) = valid_range(ow, g.stride[2], offw, g.pad_begin[2], iw);
                    for (ri, r) in (r0..r1).enumerate() {
                        let (od, ohh) = (r / oh, r % oh);
                        let dseg = &mut dst[ri * ow..(ri + 1) * ow];
                        let zd = od * g.stride[0] + a * g.dilation[0];
                        let zh = ohh * g.stride[1] + b * g.dilation[1];
                        let inside = zd >= g.pad_begin[0]
                            && zd - g.pad_begin[0] < g.input[0]
                            && zh >= g.pad_begin[1]
                            && zh - g.pad_begin[1] < ih;
                        if !inside || lo >= hi {
                            dseg.fill(T::default());
                            continue;
                        }
                        let base = ((zd - g.pad_begin[0]) * ih + (zh - g.pad_begin[1])) * iw;
                        let src = &xc[base..base + iw];
                        dseg[..lo].fill(T::default());
                        dseg[hi..].fill(T::default());
                        let s = g.stride[2];
                        let first = lo * s + offw - g.pad_begin[2];
                        if s == 1 {
                            dseg[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
                        } else {
                            for (k, d) in dseg[lo..hi].iter_mut().enumerate() {
                                *d = src[first + k * s];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Output rows per im2col chunk, keeping the column buffer near 4 MiB.
fn rows_per_chunk(krows: usize, ow: usize, total_rows: usize) -> usize {
    let per_row = (krows * ow).max(1);
    ((1usize << 20) / per_row).clamp(1, total_rows.max(1))
}

/// Depthwise-style conv (one input channel per group), direct loops, accumulating into
/// `y` (one output plane) from input plane `x` with weights `w` (kernel taps).
fn depthwise_plane(isa: Isa, x: &[f32], w: &[f32], g: &Geom, y: &mut [f32], phases: &mut Vec<f32>) {
    let [_, ih, iw] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [od_n, oh_n, ow] = g.output;
    let s = g.stride[2];
    // For strided convs each input row is split into `s` phases (x[r], x[r+s], …), laid
    // out one after another, so every tap reads a contiguous run.
    let plen = iw.div_ceil(s);
    if s > 1 {
        phases.clear();
        phases.resize(s * plen, 0.0);
    }
    for od in 0..od_n {
        for ohh in 0..oh_n {
            let yrow = &mut y[(od * oh_n + ohh) * ow..(od * oh_n + ohh + 1) * ow];
            for a in 0..kd {
                let zd = od * g.stride[0] + a * g.dilation[0];
                if zd < g.pad_begin[0] || zd - g.pad_begin[0] >= g.input[0] {
                    continue;
                }
                for b in 0..kh {
                    let zh = ohh * g.stride[1] + b * g.dilation[1];
                    if zh < g.pad_begin[1] || zh - g.pad_begin[1] >= ih {
                        continue;
                    }
                    let base = ((zd - g.pad_begin[0]) * ih + (zh - g.pad_begin[1])) * iw;
                    let src = &x[base..base + iw];
                    if s > 1 {
                        for r in 0..s {
                            let dst = &mut phases[r * plen..(r + 1) * plen];
                            for (d, &v) in dst.iter_mut().zip(src.iter().skip(r).step_by(s)) {
                                *d = v;
                            }
                        }
                    }
                    let data: &[f32] = if s == 1 { src } else { phases };
                    let wrow = &w[(a * kh + b) * kw..(a * kh + b + 1) * kw];
                    // Per tap: valid output range and where its input run starts.
                    let tap = |e: usize| -> (usize, usize, usize) {
                        let offw = e * g.dilation[2];
                        let (lo, hi) = valid_range(ow, s, offw, g.pad_begin[2], iw);
                        if lo >= hi {
                            return (0, 0, 0);
                        }
                        let first = lo * s + offw - g.pad_begin[2];
                        (lo, hi, (first % s) * plen + first / s)
                    };
                    if kw == 3 {
                        let t = [tap(0), tap(1), tap(2)];
                        let lo_all = t.iter().map(|x| x.0).max().unwrap_or(0);
                        let hi_all = t.iter().map(|x| x.1).min().unwrap_or(0);
                        if lo_all < hi_all {
                            // Edges tap by tap, the middle with all three taps fused.
                            for (e, &(lo, hi, st)) in t.iter().enumerate() {
                                for j in (lo..lo_all).chain(hi_all..hi) {
                                    yrow[j] += wrow[e] * data[st + j - lo];
                                }
                            }
                            let n = hi_all - lo_all;
                            let r0 = &data[t[0].2 + lo_all - t[0].0..][..n];
                            let r1 = &data[t[1].2 + lo_all - t[1].0..][..n];
                            let r2 = &data[t[2].2 + lo_all - t[2].0..][..n];
                            let w3 = [wrow[0], wrow[1], wrow[2]];
                            f32k::taps3(isa, w3, r0, r1, r2, &mut yrow[lo_all..hi_all]);
                            continue;
                        }
                    }
                    for (e, &wv) in wrow.iter().enumerate() {
                        let (lo, hi, st) = tap(e);
                        if lo >= hi {
                            continue;
                        }
                        f32k::axpy(isa, wv, &data[st..st + (hi - lo)], &mut yrow[lo..hi]);
                    }
                }
            }
        }
    }
}

/// Conv weights packed once at load into GEMM panels, one [`Packed`] left operand
/// (M/group × C/group·taps) per group. Depthwise convs (one channel per group) run
/// direct loops instead and are never packed.
#[derive(Debug, Clone)]
pub struct ConvPacked {
    ws: Vec<usize>,
    group: usize,
    groups: Vec<Packed>,
}

/// Packs f32 conv weights `w` [M, C/group, *k] for [`conv_with`]; None where the
/// kernel would not use them (depthwise).
pub fn pack_conv_weights(w: &Tensor, group: usize) -> Result<Option<ConvPacked>> {
    let ws = w.shape();
    if ws.len() < 3 || group == 0 || !ws[0].is_multiple_of(group) {
        return Err(Error::shape(format!(
            "Conv weights {ws:?} do not fit group {group}"
        )));
    }
    let (m, cg) = (ws[0], ws[1]);
    let mg = m / group;
    if cg == 1 && mg == 1 {
        return Ok(None);
    }
    let wv = f32_data(w)?;
    let krows = numel(&ws[1..], DType::F32)?;
    if wv.len() < m * krows {
        return Err(Error::shape("Conv weight data is shorter than its shape"));
    }
    let groups = (0..group)
        .map(|gi| {
            let wg = &wv[gi * mg * krows..(gi + 1) * mg * krows];
            Packed::new(Side::A, mg, krows, Mat::row_major(wg, krows))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(ConvPacked {
        ws: ws.to_vec(),
        group,
        groups,
    }))
}

/// f32 convolution: `x` [N, C, *in], `w` [M, C/group, *k], optional bias [M]; returns
/// the output shape and data, with `act` applied.
#[allow(clippy::too_many_arguments)]
pub fn conv_f32(
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    bias: Option<&[f32]>,
    win: &Window,
    group: usize,
    act: Option<Activation>,
) -> Result<(Vec<usize>, Vec<f32>)> {
    conv_f32_packed(x, xs, w, ws, bias, win, group, act, None)
}

/// [`conv_f32`] with the weights also given pre-packed (used when they were packed
/// from the same `w`, `ws` and `group`; ignored otherwise).
#[allow(clippy::too_many_arguments)]
pub fn conv_f32_packed(
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    bias: Option<&[f32]>,
    win: &Window,
    group: usize,
    act: Option<Activation>,
    packed: Option<&ConvPacked>,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let packed = packed.filter(|p| p.ws == ws && p.group == group);
    let isa = simd::isa();
    let d = conv_dims(xs, ws, group)?;
    let g = win.resolve(&xs[2..], &ws[2..])?;
    if let Some(b) = bias {
        if b.len() != d.m {
            return Err(Error::shape(format!(
                "Conv bias has {} values for {} output channels",
                b.len(),
                d.m
            )));
        }
    }
    let mut oshape = vec![d.n, d.m];
    oshape.extend_from_slice(g.out_dims());
    let total = numel(&oshape, DType::F32)?;
    let mut y = alloc_vec::<f32>(total)?;
    let (isz, osz, ksz) = (g.in_size(), g.out_size(), g.k_size());
    if x.len() < d.n * d.c * isz || w.len() < d.m * d.cg * ksz {
        return Err(Error::shape("Conv input data is shorter than its shape"));
    }
    if total == 0 {
        return Ok((oshape, y));
    }
    let krows = d.cg * ksz;
    if d.cg == 1 && d.mg == 1 {
        let mut phases = Vec::new();
        for n in 0..d.n {
            for m in 0..d.m {
                let xp = &x[(n * d.c + m) * isz..(n * d.c + m + 1) * isz];
                let yp = &mut y[(n * d.m + m) * osz..(n * d.m + m + 1) * osz];
                depthwise_plane(isa, xp, &w[m * ksz..(m + 1) * ksz], &g, yp, &mut phases);
            }
        }
    } else if g.is_pointwise() {
        for n in 0..d.n {
            for gi in 0..d.group {
                let xo = (n * d.c + gi * d.cg) * isz;
                let yo = (n * d.m + gi * d.mg) * osz;
                let wo = gi * d.mg * d.cg;
                let wop = match packed {
                    Some(p) => GemmOp::Packed(&p.groups[gi]),
                    None => GemmOp::Mat(Mat::row_major(&w[wo..wo + d.mg * d.cg], d.cg)),
                };
                sgemm_op(
                    d.mg,
                    d.cg,
                    osz,
                    1.0,
                    wop,
                    GemmOp::Mat(Mat::row_major(&x[xo..xo + d.cg * isz], isz)),
                    0.0,
                    &mut y[yo..yo + d.mg * osz],
                    osz,
                );
            }
        }
    } else {
        let out_rows = g.output[0] * g.output[1];
        let ow = g.output[2];
        let chunk = rows_per_chunk(krows, ow, out_rows);
        let mut col = alloc_vec::<f32>(krows * chunk * ow)?;
        for n in 0..d.n {
            for gi in 0..d.group {
                let xo = (n * d.c + gi * d.cg) * isz;
                let xg = &x[xo..xo + d.cg * isz];
                let wo = gi * d.mg * krows;
                let wg = &w[wo..wo + d.mg * krows];
                let yo = (n * d.m + gi * d.mg) * osz;
                let mut r0 = 0;
                while r0 < out_rows {
                    let r1 = (r0 + chunk).min(out_rows);
                    let ncols = (r1 - r0) * ow;
                    im2col(xg, d.cg, &g, r0, r1, &mut col);
                    let wop = match packed {
                        Some(p) => GemmOp::Packed(&p.groups[gi]),
                        None => GemmOp::Mat(Mat::row_major(wg, krows)),
                    };
                    sgemm_op(
                        d.mg,
                        krows,
                        ncols,
                        1.0,
                        wop,
                        GemmOp::Mat(Mat::row_major(&col[..krows * ncols], ncols)),
                        0.0,
                        &mut y[yo + r0 * ow..yo + d.mg * osz],
                        osz,
                    );
                    r0 = r1;
                }
            }
        }
    }
    if bias.is_some() || act.is_some() {
        for (p, plane) in y.chunks_exact_mut(osz).enumerate() {
            if let Some(b) = bias {
                let bv = b[p % d.m];
                plane.iter_mut().for_each(|v| *v += bv);
            }
            apply_act(act, plane);
        }
    }
    Ok((oshape, y))
}

/// Conv on tensors of any float dtype.
pub fn conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    win: &Window,
    group: usize,
    act: Option<Activation>,
) -> Result<Tensor> {
    conv_with(x, w, b, win, group, act, None)
}

/// [`conv`] with weights pre-packed by [`pack_conv_weights`] from `w`.
pub fn conv_with(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    win: &Window,
    group: usize,
    act: Option<Activation>,
    packed: Option<&ConvPacked>,
) -> Result<Tensor> {
    let dt = x.dtype();
    if w.dtype() != dt || b.is_some_and(|b| b.dtype() != dt) {
        return Err(Error::dtype("Conv inputs must share one float type"));
    }
    let xv = f32_data(x)?;
    let wv = f32_data(w)?;
    let bv = match b {
        Some(b) => Some(f32_data(b)?),
        None => None,
    };
    let (shape, y) = conv_f32_packed(
        &xv,
        x.shape(),
        &wv,
        w.shape(),
        bv.as_deref(),
        win,
        group,
        act,
        packed,
    )?;
    from_f32(dt, shape, y)
}

/// Bilinear sample of a plane at (h, w), zero outside (GridSample, align_corners=1).
#[inline]
fn bilinear(plane: &[f32], ih: usize, iw: usize, h: f32, w: f32) -> f32 {
    if !(h > -1.0 && w > -1.0 && h < ih as f32 && w < iw as f32) {
        return 0.0;
    }
    let (h0, w0) = (h.floor(), w.floor());
    let (dh, dw) = (h - h0, w - w0);
    let (h0, w0) = (h0 as i64, w0 as i64);
    let at = |y: i64, x: i64| -> f32 {
        if y >= 0 && x >= 0 && (y as usize) < ih && (x as usize) < iw {
            plane[y as usize * iw + x as usize]
        } else {
            0.0
        }
    };
    (1.0 - dh) * ((1.0 - dw) * at(h0, w0) + dw * at(h0, w0 + 1))
        + dh * ((1.0 - dw) * at(h0 + 1, w0) + dw * at(h0 + 1, w0 + 1))
}

/// `DeformConv` (2-D): conv whose taps are displaced by learned offsets (bilinear
/// sampling) and optionally scaled by a mask.
#[allow(clippy::too_many_arguments)]
pub fn deform_conv(
    x: &Tensor,
    w: &Tensor,
    offset: &Tensor,
    b: Option<&Tensor>,
    mask: Option<&Tensor>,
    win: &Window,
    group: usize,
    offset_group: usize,
) -> Result<Tensor> {
    let dt = x.dtype();
    let (xs, ws) = (x.shape(), w.shape());
    if xs.len() != 4 {
        return Err(Error::unsupported_op("DeformConv is only supported in 2-D"));
    }
    let d = conv_dims(xs, ws, group)?;
    let g = win.resolve(&xs[2..], &ws[2..])?;
    let (ih, iw) = (xs[2], xs[3]);
    let (kh, kw) = (ws[2], ws[3]);
    let (oh, ow) = (g.output[1], g.output[2]);
    let k = kh * kw;
    if offset_group == 0 || d.c % offset_group != 0 {
        return Err(Error::shape(
            "DeformConv channels must divide by offset_group",
        ));
    }
    if offset.shape() != [d.n, offset_group * 2 * k, oh, ow] {
        return Err(Error::shape(format!(
            "DeformConv offset {:?} should be {:?}",
            offset.shape(),
            [d.n, offset_group * 2 * k, oh, ow]
        )));
    }
    if let Some(m) = mask {
        if m.shape() != [d.n, offset_group * k, oh, ow] {
            return Err(Error::shape("DeformConv mask shape"));
        }
    }
    let xv = f32_data(x)?;
    let wv = f32_data(w)?;
    let ov = f32_data(offset)?;
    let mv = match mask {
        Some(m) => Some(f32_data(m)?),
        None => None,
    };
    let bv = match b {
        Some(b) => Some(f32_data(b)?),
        None => None,
    };
    if bv.as_ref().is_some_and(|b| b.len() != d.m) {
        return Err(Error::shape("DeformConv bias length"));
    }
    let osz = oh * ow;
    let oshape = vec![d.n, d.m, oh, ow];
    let mut y = alloc_vec::<f32>(numel(&oshape, DType::F32)?)?;
    let krows = d.cg * k;
    let mut col = alloc_vec::<f32>(krows * osz)?;
    let cpo = d.c / offset_group;
    for n in 0..d.n {
        for gi in 0..d.group {
            for ci in 0..d.cg {
                let c = gi * d.cg + ci;
                let og = c / cpo;
                let plane = &xv[(n * d.c + c) * ih * iw..(n * d.c + c + 1) * ih * iw];
                for i in 0..kh {
                    for j in 0..kw {
                        let kk = i * kw + j;
                        let row = &mut col[(ci * k + kk) * osz..(ci * k + kk + 1) * osz];
                        let ob = ((n * offset_group + og) * 2 * k + 2 * kk) * osz;
                        let mb = ((n * offset_group + og) * k + kk) * osz;
                        for a in 0..oh {
                            for e in 0..ow {
                                let p = a * ow + e;
                                let hh = (a * g.stride[1] + i * g.dilation[1]) as f32
                                    - g.pad_begin[1] as f32
                                    + ov[ob + p];
                                let ww = (e * g.stride[2] + j * g.dilation[2]) as f32
                                    - g.pad_begin[2] as f32
                                    + ov[ob + osz + p];
                                let mut v = bilinear(plane, ih, iw, hh, ww);
                                if let Some(m) = &mv {
                                    v *= m[mb + p];
                                }
                                row[p] = v;
                            }
                        }
                    }
                }
            }
            let wo = gi * d.mg * krows;
            let yo = (n * d.m + gi * d.mg) * osz;
            sgemm_ex(
                d.mg,
                krows,
                osz,
                1.0,
                Mat::row_major(&wv[wo..wo + d.mg * krows], krows),
                Mat::row_major(&col, osz),
                0.0,
                &mut y[yo..yo + d.mg * osz],
                osz,
            );
        }
    }
    if let Some(b) = &bv {
        for (p, plane) in y.chunks_exact_mut(osz.max(1)).enumerate() {
            let bb = b[p % d.m];
            plane.iter_mut().for_each(|v| *v += bb);
        }
    }
    from_f32(dt, oshape, y)
}

// ---------------------------------------------------------------------------------------
// ConvTranspose
// ---------------------------------------------------------------------------------------

/// Attributes of ConvTranspose beyond the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransposeAttrs {
    pub output_padding: Option<Vec<usize>>,
    pub output_shape: Option<Vec<usize>>,
}

/// Geometry of a transposed conv: `g.input` is the conv *output* (our input) and
/// `g.output` the conv input (our output), so the im2col geometry applies in reverse.
pub fn conv_transpose_geom(
    input: &[usize],
    kernel: &[usize],
    win: &Window,
    ta: &TransposeAttrs,
) -> Result<Geom> {
    let rank = input.len();
    if rank == 0 || rank > 3 || kernel.len() != rank {
        return Err(Error::unsupported_op(format!(
            "ConvTranspose with {rank} spatial dims and kernel {kernel:?}"
        )));
    }
    if let Some(ks) = &win.kernel_shape {
        if ks.as_slice() != kernel {
            return Err(Error::shape("kernel_shape does not match the weights"));
        }
    }
    let strides = per_dim(&win.strides, rank, 1, "strides")?;
    let dil = per_dim(&win.dilations, rank, 1, "dilations")?;
    let pads = per_dim(&win.pads, 2 * rank, 0, "pads")?;
    let opad = per_dim(&ta.output_padding, rank, 0, "output_padding")?;
    let oshape = match &ta.output_shape {
        Some(s) if s.len() == rank + 2 => Some(s[2..].to_vec()),
        Some(s) if s.len() == rank => Some(s.clone()),
        Some(_) => return Err(Error::attr("output_shape has the wrong length")),
        None => None,
    };
    let mut pb = vec![0; rank];
    let mut pe = vec![0; rank];
    let mut out = vec![0; rank];
    for d in 0..rank {
        let (i, k, s, dl) = (input[d], kernel[d], strides[d], dil[d]);
        if s == 0 || dl == 0 || k == 0 || i == 0 {
            return Err(Error::shape("ConvTranspose needs positive sizes"));
        }
        let full = (i - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(opad[d]))
            .and_then(|x| x.checked_add((k - 1).checked_mul(dl)?))
            .and_then(|x| x.checked_add(1))
            .ok_or_else(|| Error::attr("ConvTranspose output size overflows"))?;
        let same = matches!(win.auto_pad, AutoPad::SameUpper | AutoPad::SameLower);
        if oshape.is_some() || same {
            let target = match &oshape {
                Some(o) => o[d],
                None => i * s,
            };
            let total = full.saturating_sub(target);
            // SAME_LOWER puts the larger half at the start.
            let head = if win.auto_pad == AutoPad::SameLower {
                total - total / 2
            } else {
                total / 2
            };
            pb[d] = head;
            pe[d] = total - head;
            out[d] = target;
        } else {
            if win.auto_pad == AutoPad::NotSet {
                pb[d] = pads[d];
                pe[d] = pads[rank + d];
            }
            out[d] = full
                .checked_sub(pb[d].saturating_add(pe[d]))
                .ok_or_else(|| Error::shape("ConvTranspose pads exceed the output size"))?;
        }
    }
    Ok(Geom {
        rank,
        input: to3(input, 1),
        kernel: to3(kernel, 1),
        stride: to3(&strides, 1),
        dilation: to3(&dil, 1),
        pad_begin: to3(&pb, 0),
        pad_end: to3(&pe, 0),
        output: to3(&out, 1),
    })
}

/// Scatter-adds columns (rows: channel × taps; cols: input positions) into output
/// planes (the adjoint of `im2col`).
fn col2im(col: &[f32], channels: usize, g: &Geom, y: &mut [f32]) {
    // In this direction `g.input` indexes the columns and `g.output` the planes.
    let [id_n, ih_n, iw] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [od_n, oh_n, ow] = g.output;
    let plane = od_n * oh_n * ow;
    let ncols = g.in_size();
    let mut row = 0;
    for c in 0..channels {
        let yc = &mut y[c * plane..(c + 1) * plane];
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let src = &col[row * ncols..(row + 1) * ncols];
                    row += 1;
                    let offw = e * g.dilation[2];
                    // input index j maps to output j*s + offw - pad
                    let (lo, hi) = valid_range(iw, g.stride[2], offw, g.pad_begin[2], ow);
                    if lo >= hi {
                        continue;
                    }
                    for idd in 0..id_n {
                        let zd = idd * g.stride[0] + a * g.dilation[0];
                        if zd < g.pad_begin[0] || zd - g.pad_begin[0] >= od_n {
                            continue;
                        }
                        for ihh in 0..ih_n {
                            let zh = ihh * g.stride[1] + b * g.dilation[1];
                            if zh < g.pad_begin[1] || zh - g.pad_begin[1] >= oh_n {
                                continue;
                            }
                            let base = ((zd - g.pad_begin[0]) * oh_n + (zh - g.pad_begin[1])) * ow;
                            let srow = &src[(idd * ih_n + ihh) * iw..(idd * ih_n + ihh + 1) * iw];
                            let first = lo * g.stride[2] + offw - g.pad_begin[2];
                            let s = g.stride[2];
                            for (k, &v) in srow[lo..hi].iter().enumerate() {
                                yc[base + first + k * s] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// f32 transposed convolution: `x` [N, C, *in], `w` [C, M/group, *k].
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose_f32(
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    bias: Option<&[f32]>,
    win: &Window,
    ta: &TransposeAttrs,
    group: usize,
) -> Result<(Vec<usize>, Vec<f32>)> {
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(Error::shape(format!(
            "ConvTranspose input {xs:?} and weights {ws:?}: need rank >= 3 and equal ranks"
        )));
    }
    let (n, c) = (xs[0], xs[1]);
    if group == 0 || ws[0] != c || c % group != 0 || ws[1].checked_mul(group).is_none() {
        return Err(Error::shape(format!(
            "ConvTranspose with {c} input channels, weights {ws:?}, group {group}"
        )));
    }
    let cg = c / group;
    let mg = ws[1];
    let m = mg * group;
    let g = conv_transpose_geom(&xs[2..], &ws[2..], win, ta)?;
    if let Some(b) = bias {
        if b.len() != m {
            return Err(Error::shape("ConvTranspose bias length"));
        }
    }
    let mut oshape = vec![n, m];
    oshape.extend_from_slice(g.out_dims());
    let total = numel(&oshape, DType::F32)?;
    let mut y = alloc_vec::<f32>(total)?;
    let (isz, osz, ksz) = (g.in_size(), g.out_size(), g.k_size());
    if x.len() < n * c * isz || w.len() < c * mg * ksz {
        return Err(Error::shape("ConvTranspose data is shorter than its shape"));
    }
    let krows = mg * ksz;
    let mut col = alloc_vec::<f32>(krows * isz)?;
    for ni in 0..n {
        for gi in 0..group {
            let xo = (ni * c + gi * cg) * isz;
            let wo = gi * cg * krows;
            // col (krows × isz) = W_gᵀ (krows × cg) · X_g (cg × isz)
            sgemm_ex(
                krows,
                cg,
                isz,
                1.0,
                Mat::col_major(&w[wo..wo + cg * krows], krows),
                Mat::row_major(&x[xo..xo + cg * isz], isz),
                0.0,
                &mut col,
                isz,
            );
            let yo = (ni * m + gi * mg) * osz;
            col2im(&col, mg, &g, &mut y[yo..yo + mg * osz]);
        }
    }
    if let Some(b) = bias {
        for (p, plane) in y.chunks_exact_mut(osz.max(1)).enumerate() {
            let bv = b[p % m];
            plane.iter_mut().for_each(|v| *v += bv);
        }
    }
    Ok((oshape, y))
}

/// ConvTranspose on tensors of any float dtype.
pub fn conv_transpose(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    win: &Window,
    ta: &TransposeAttrs,
    group: usize,
) -> Result<Tensor> {
    let dt = x.dtype();
    if w.dtype() != dt || b.is_some_and(|b| b.dtype() != dt) {
        return Err(Error::dtype(
            "ConvTranspose inputs must share one float type",
        ));
    }
    let xv = f32_data(x)?;
    let wv = f32_data(w)?;
    let bv = match b {
        Some(b) => Some(f32_data(b)?),
        None => None,
    };
    let (shape, y) = conv_transpose_f32(
        &xv,
        x.shape(),
        &wv,
        w.shape(),
        bv.as_deref(),
        win,
        ta,
        group,
    )?;
    from_f32(dt, shape, y)
}

// ---------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------

/// Kind of pooling reduction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PoolKind {
    Average { count_include_pad: bool },
    Lp { p: f32 },
}

fn pool_geom(xs: &[usize], win: &Window) -> Result<Geom> {
    if xs.len() < 3 {
        return Err(Error::shape(format!(
            "pooling input {xs:?} needs rank >= 3"
        )));
    }
    let ks = win
        .kernel_shape
        .clone()
        .ok_or_else(|| Error::attr("pooling needs kernel_shape"))?;
    win.resolve(&xs[2..], &ks)
}

/// Valid input taps of one output index along one dim: (first tap, last tap + 1) in
/// kernel index space, plus the number of taps inside the padded extent.
#[inline]
fn taps(o: usize, g: &Geom, d: usize) -> (usize, usize, usize) {
    let (s, dl, k, pb, pe, len) = (
        g.stride[d],
        g.dilation[d],
        g.kernel[d],
        g.pad_begin[d],
        g.pad_end[d],
        g.input[d],
    );
    let start = o * s; // in padded coordinates
    let mut lo = k;
    let mut hi = 0;
    let mut padded = 0;
    for t in 0..k {
        let z = start + t * dl;
        if z < pb + len + pe {
            padded += 1;
        }
        if z >= pb && z - pb < len {
            lo = lo.min(t);
            hi = t + 1;
        }
    }
    (lo, hi.max(lo.min(hi)), padded)
}

/// Average or Lp pooling (f32 values).
pub fn pool_f32(
    x: &[f32],
    xs: &[usize],
    win: &Window,
    kind: PoolKind,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let g = pool_geom(xs, win)?;
    let mut oshape = xs[..2].to_vec();
    oshape.extend_from_slice(g.out_dims());
    let total = numel(&oshape, DType::F32)?;
    let mut y = alloc_vec::<f32>(total)?;
    let (isz, osz) = (g.in_size(), g.out_size());
    let planes = xs[0] * xs[1];
    if x.len() < planes * isz {
        return Err(Error::shape("pooling input is shorter than its shape"));
    }
    let tapd: Vec<Vec<(usize, usize, usize)>> = (0..3)
        .map(|d| (0..g.output[d]).map(|o| taps(o, &g, d)).collect())
        .collect();
    let [_, ih, iw] = g.input;
    for p in 0..planes {
        let xp = &x[p * isz..(p + 1) * isz];
        let yp = &mut y[p * osz..(p + 1) * osz];
        let mut idx = 0;
        for (od, &(a0, a1, pa)) in tapd[0].iter().enumerate() {
            for (oh, &(b0, b1, pbn)) in tapd[1].iter().enumerate() {
                for (ow, &(e0, e1, pc)) in tapd[2].iter().enumerate() {
                    let mut acc = 0f32;
                    let mut cnt = 0usize;
                    for a in a0..a1 {
                        let zd = od * g.stride[0] + a * g.dilation[0];
                        if zd < g.pad_begin[0] || zd - g.pad_begin[0] >= g.input[0] {
                            continue;
                        }
                        for b in b0..b1 {
                            let zh = oh * g.stride[1] + b * g.dilation[1];
                            if zh < g.pad_begin[1] || zh - g.pad_begin[1] >= ih {
                                continue;
                            }
                            let row = ((zd - g.pad_begin[0]) * ih + zh - g.pad_begin[1]) * iw;
                            for e in e0..e1 {
                                let zw = ow * g.stride[2] + e * g.dilation[2];
                                if zw < g.pad_begin[2] || zw - g.pad_begin[2] >= iw {
                                    continue;
                                }
                                let v = xp[row + zw - g.pad_begin[2]];
                                match kind {
                                    PoolKind::Average { .. } => acc += v,
                                    PoolKind::Lp { p } => acc += v.abs().powf(p),
                                }
                                cnt += 1;
                            }
                        }
                    }
                    yp[idx] = match kind {
                        PoolKind::Average { count_include_pad } => {
                            let div = if count_include_pad {
                                pa * pbn * pc
                            } else {
                                cnt
                            };
                            if div == 0 {
                                0.0
                            } else {
                                acc / div as f32
                            }
                        }
                        PoolKind::Lp { p } => acc.powf(1.0 / p),
                    };
                    idx += 1;
                }
            }
        }
    }
    Ok((oshape, y))
}

/// AveragePool / LpPool on any float dtype.
pub fn pool(x: &Tensor, win: &Window, kind: PoolKind) -> Result<Tensor> {
    let xv = f32_data(x)?;
    let (shape, y) = pool_f32(&xv, x.shape(), win, kind)?;
    from_f32(x.dtype(), shape, y)
}

/// MaxPool over any ordered dtype; also returns the flat argmax indices
/// (`storage_order` 1 = column-major within each plane).
fn max_pool_t<T: Num>(
    x: &[T],
    xs: &[usize],
    win: &Window,
    storage_order: i64,
    want_idx: bool,
) -> Result<(Vec<usize>, Vec<T>, Vec<i64>)> {
    let g = pool_geom(xs, win)?;
    let mut oshape = xs[..2].to_vec();
    oshape.extend_from_slice(g.out_dims());
    let total = numel(&oshape, T::DTYPE)?;
    let mut y = alloc_vec::<T>(total)?;
    let mut ind = if want_idx {
        alloc_vec::<i64>(total)?
    } else {
        Vec::new()
    };
    let (isz, osz) = (g.in_size(), g.out_size());
    let planes = xs[0] * xs[1];
    if x.len() < planes * isz {
        return Err(Error::shape("MaxPool input is shorter than its shape"));
    }
    let tapd: Vec<Vec<(usize, usize, usize)>> = (0..3)
        .map(|d| (0..g.output[d]).map(|o| taps(o, &g, d)).collect())
        .collect();
    let [id, ih, iw] = g.input;
    for p in 0..planes {
        let xp = &x[p * isz..(p + 1) * isz];
        let mut idx = p * osz;
        for (od, &(a0, a1, _)) in tapd[0].iter().enumerate() {
            for (oh, &(b0, b1, _)) in tapd[1].iter().enumerate() {
                for (ow, &(e0, e1, _)) in tapd[2].iter().enumerate() {
                    let mut best = T::min_value();
                    let mut arg: Option<(usize, usize, usize)> = None;
                    for a in a0..a1 {
                        let zd = od * g.stride[0] + a * g.dilation[0];
                        if zd < g.pad_begin[0] || zd - g.pad_begin[0] >= id {
                            continue;
                        }
                        let dd = zd - g.pad_begin[0];
                        for b in b0..b1 {
                            let zh = oh * g.stride[1] + b * g.dilation[1];
                            if zh < g.pad_begin[1] || zh - g.pad_begin[1] >= ih {
                                continue;
                            }
                            let hh = zh - g.pad_begin[1];
                            let row = (dd * ih + hh) * iw;
                            for e in e0..e1 {
                                let zw = ow * g.stride[2] + e * g.dilation[2];
                                if zw < g.pad_begin[2] || zw - g.pad_begin[2] >= iw {
                                    continue;
                                }
                                let ww = zw - g.pad_begin[2];
                                let v = xp[row + ww];
                                if arg.is_none() || v > best {
                                    best = v;
                                    arg = Some((dd, hh, ww));
                                }
                            }
                        }
                    }
                    y[idx] = best;
                    if want_idx {
                        let (dd, hh, ww) = arg.unwrap_or((0, 0, 0));
                        let flat = if storage_order == 1 {
                            dd + id * (hh + ih * ww)
                        } else {
                            (dd * ih + hh) * iw + ww
                        };
                        ind[idx] = (p * isz + flat) as i64;
                    }
                    idx += 1;
                }
            }
        }
    }
    Ok((oshape, y, ind))
}

/// `MaxPool`: values and (if asked) indices.
pub fn max_pool(
    x: &Tensor,
    win: &Window,
    storage_order: i64,
    want_idx: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    macro_rules! go {
        ($t:ty) => {{
            let (shape, y, ind) =
                max_pool_t::<$t>(x.as_slice::<$t>()?, x.shape(), win, storage_order, want_idx)?;
            let it = if want_idx {
                Some(Tensor::from_vec(shape.clone(), ind)?)
            } else {
                None
            };
            Ok((Tensor::from_vec(shape, y)?, it))
        }};
    }
    match x.dtype() {
        DType::F32 => go!(f32),
        DType::F64 => go!(f64),
        DType::I8 => go!(i8),
        DType::U8 => go!(u8),
        DType::F16 | DType::BF16 => {
            let (shape, y, ind) =
                max_pool_t::<f32>(&x.to_f32_vec()?, x.shape(), win, storage_order, want_idx)?;
            let it = if want_idx {
                Some(Tensor::from_vec(shape.clone(), ind)?)
            } else {
                None
            };
            Ok((from_f32(x.dtype(), shape, y)?, it))
        }
        dt => Err(Error::unsupported_dtype(format!(
            "MaxPool does not support {dt}"
        ))),
    }
}

/// Which global reduction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GlobalKind {
    Average,
    Max,
    Lp(f32),
}

/// GlobalAveragePool / GlobalMaxPool / GlobalLpPool: reduce all spatial dims to 1.
pub fn global_pool(x: &Tensor, kind: GlobalKind) -> Result<Tensor> {
    let xs = x.shape();
    if xs.len() < 2 {
        return Err(Error::shape(format!(
            "global pooling input {xs:?} needs rank >= 2"
        )));
    }
    let planes = xs[0] * xs[1];
    let sz: usize = xs[2..].iter().product();
    let xv = f32_data(x)?;
    let mut out = Vec::with_capacity(planes);
    for p in 0..planes {
        let s = &xv[p * sz..(p + 1) * sz];
        out.push(match kind {
            GlobalKind::Average => {
                if sz == 0 {
                    f32::NAN
                } else {
                    s.iter().sum::<f32>() / sz as f32
                }
            }
            GlobalKind::Max => s.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            GlobalKind::Lp(pw) => s
                .iter()
                .map(|v| v.abs().powf(pw))
                .sum::<f32>()
                .powf(1.0 / pw),
        });
    }
    let mut shape = xs.to_vec();
    shape[2..].iter_mut().for_each(|d| *d = 1);
    from_f32(x.dtype(), shape, out)
}

/// `MaxUnpool`: scatters values to the positions given by indices.
pub fn max_unpool(
    x: &Tensor,
    ind: &Tensor,
    output_shape: Option<&Tensor>,
    win: &Window,
) -> Result<Tensor> {
    let xs = x.shape();
    if xs.len() < 3 || ind.shape() != xs {
        return Err(Error::shape(
            "MaxUnpool needs rank >= 3 and indices shaped like X",
        ));
    }
    let rank = xs.len() - 2;
    let ks = win
        .kernel_shape
        .clone()
        .ok_or_else(|| Error::attr("MaxUnpool needs kernel_shape"))?;
    if ks.len() != rank {
        return Err(Error::attr("kernel_shape length"));
    }
    let strides = per_dim(&win.strides, rank, 1, "strides")?;
    let pads = per_dim(&win.pads, 2 * rank, 0, "pads")?;
    let mut shape = xs[..2].to_vec();
    for d in 0..rank {
        let full = (xs[2 + d].max(1) - 1)
            .checked_mul(strides[d])
            .and_then(|x| x.checked_add(ks[d]))
            .ok_or_else(|| Error::attr("MaxUnpool output size overflows"))?;
        shape.push(
            full.checked_sub(pads[d].saturating_add(pads[rank + d]))
                .ok_or_else(|| Error::shape("MaxUnpool pads exceed the output size"))?,
        );
    }
    if let Some(os) = output_shape {
        let v = os.to_i64_vec()?;
        if v.len() != xs.len() {
            return Err(Error::shape("MaxUnpool output_shape has the wrong rank"));
        }
        shape = v
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| Error::shape("negative output_shape")))
            .collect::<Result<_>>()?;
    }
    let idx = ind.to_i64_vec()?;
    crate::dispatch!(num x.dtype(), "MaxUnpool", T => {
        let n = numel(&shape, T::DTYPE)?;
        let mut out = alloc_vec::<T>(n)?;
        for (&i, &v) in idx.iter().zip(x.as_slice::<T>()?) {
            let k = usize::try_from(i)
                .ok()
                .filter(|&k| k < n)
                .ok_or_else(|| Error::runtime(format!("MaxUnpool index {i} is out of range")))?;
            out[k] = v;
        }
        Tensor::from_vec(shape, out)
    })
}

/// `MaxRoiPool`: max over `pooled` bins of each region of interest.
pub fn max_roi_pool(x: &Tensor, rois: &Tensor, pooled: [usize; 2], scale: f32) -> Result<Tensor> {
    let xs = x.shape();
    if xs.len() != 4 || rois.rank() != 2 || rois.shape()[1] != 5 {
        return Err(Error::shape("MaxRoiPool needs X [N,C,H,W] and rois [R,5]"));
    }
    let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let xv = f32_data(x)?;
    let rv = rois.to_f32_vec()?;
    let r = rois.shape()[0];
    let [ph, pw] = pooled;
    let shape = vec![r, c, ph, pw];
    let mut out = alloc_vec::<f32>(numel(&shape, DType::F32)?)?;
    for ri in 0..r {
        let roi = &rv[ri * 5..ri * 5 + 5];
        let b = roi[0];
        if !(b >= 0.0 && (b as usize) < n) {
            return Err(Error::runtime(format!(
                "MaxRoiPool batch index {b} is out of range"
            )));
        }
        let b = b as usize;
        let [x1, y1, x2, y2] = [roi[1], roi[2], roi[3], roi[4]].map(|v| (v * scale).round() as i64);
        let rw = (x2 - x1 + 1).max(1) as f32;
        let rh = (y2 - y1 + 1).max(1) as f32;
        let bw = rw / pw.max(1) as f32;
        let bh = rh / ph.max(1) as f32;
        for ci in 0..c {
            let plane = &xv[((b * c) + ci) * h * w..((b * c) + ci + 1) * h * w];
            for i in 0..ph {
                let hs = ((i as f32 * bh).floor() as i64 + y1).clamp(0, h as i64) as usize;
                let he = (((i + 1) as f32 * bh).ceil() as i64 + y1).clamp(0, h as i64) as usize;
                for j in 0..pw {
                    let ws = ((j as f32 * bw).floor() as i64 + x1).clamp(0, w as i64) as usize;
                    let we = (((j + 1) as f32 * bw).ceil() as i64 + x1).clamp(0, w as i64) as usize;
                    let mut m = f32::NEG_INFINITY;
                    for yy in hs..he {
                        for xx in ws..we {
                            m = m.max(plane[yy * w + xx]);
                        }
                    }
                    if hs >= he || ws >= we {
                        m = 0.0;
                    }
                    out[((ri * c + ci) * ph + i) * pw + j] = m;
                }
            }
        }
    }
    from_f32(x.dtype(), shape, out)
}

// ---------------------------------------------------------------------------------------
// MatMul / Gemm
// ---------------------------------------------------------------------------------------

/// Shape plan of a numpy-style matmul.
#[derive(Debug, Clone)]
pub struct MatMulPlan {
    pub out_shape: Vec<usize>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// For each batch index, the (A, B) matrix offsets in elements.
    pub offsets: Vec<(usize, usize)>,
    /// True if all batches of A are contiguous and B is shared (one big GEMM works).
    pub fold_batch: bool,
}

/// Numpy matmul shapes with batch broadcasting and 1-D operands.
pub fn matmul_plan(a: &[usize], b: &[usize]) -> Result<MatMulPlan> {
    if a.is_empty() || b.is_empty() {
        return Err(Error::shape("MatMul of a scalar"));
    }
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        return Err(Error::shape(format!(
            "MatMul of {a:?} and {b:?}: inner dims differ"
        )));
    }
    let ba = &a2[..a2.len() - 2];
    let bb = &b2[..b2.len() - 2];
    let r = ba.len().max(bb.len());
    let mut batch = vec![0; r];
    let get = |s: &[usize], i: usize| {
        if i + s.len() >= r {
            s[i + s.len() - r]
        } else {
            1
        }
    };
    for (i, bd) in batch.iter_mut().enumerate() {
        let (x, y) = (get(ba, i), get(bb, i));
        *bd = if x == y || y == 1 {
            x
        } else if x == 1 {
            y
        } else {
            return Err(Error::shape(format!(
                "MatMul of {a:?} and {b:?}: batch dims do not broadcast"
            )));
        };
    }
    let nb = numel_checked(&batch)?;
    let mut out_shape = batch.clone();
    if a.len() > 1 {
        out_shape.push(m);
    }
    if b.len() > 1 {
        out_shape.push(n);
    }
    // Budget check before building per-batch offsets (8 bytes per output element is
    // the most any dtype needs).
    if numel(&out_shape, DType::F64)? == 0 {
        return Ok(MatMulPlan {
            out_shape,
            m,
            k,
            n,
            offsets: Vec::new(),
            fold_batch: false,
        });
    }
    let b_shared = bb.iter().all(|&d| d == 1);
    let a_full = (0..r).all(|i| get(ba, i) == batch[i]);
    let mut offsets = Vec::with_capacity(nb.min(1 << 16));
    if !(b_shared && a_full) {
        // Strides of A and B batches (0 where broadcast).
        let bstr = |s: &[usize], mat: usize| -> Vec<usize> {
            let mut st = vec![0; r];
            let mut acc = mat;
            for i in (0..r).rev() {
                let d = get(s, i);
                st[i] = if d == 1 { 0 } else { acc };
                acc *= d;
            }
            st
        };
        let sa = bstr(ba, m * k);
        let sb = bstr(bb, k * n);
        let mut idx = vec![0; r];
        for _ in 0..nb {
            let oa = idx.iter().zip(&sa).map(|(i, s)| i * s).sum();
            let ob = idx.iter().zip(&sb).map(|(i, s)| i * s).sum();
            offsets.push((oa, ob));
            for i in (0..r).rev() {
                idx[i] += 1;
                if idx[i] < batch[i] {
                    break;
                }
                idx[i] = 0;
            }
        }
    }
    Ok(MatMulPlan {
        out_shape,
        m,
        k,
        n,
        offsets,
        fold_batch: b_shared && a_full,
    })
}

fn numel_checked(s: &[usize]) -> Result<usize> {
    crate::tensor::numel_unchecked(s)
}

/// Packs a constant MatMul right operand (2-D, [K, N]) for [`matmul_with`]; None for
/// other ranks, which the kernel would not use packed.
pub fn pack_matmul_b(b: &Tensor) -> Result<Option<Packed>> {
    let bs = b.shape();
    if bs.len() != 2 || !b.dtype().is_float() {
        return Ok(None);
    }
    let bv = f32_data(b)?;
    Packed::new(Side::B, bs[0], bs[1], Mat::row_major(&bv, bs[1])).map(Some)
}

/// Packs a constant Gemm B (honouring `transB`) for [`gemm_with`].
pub fn pack_gemm_b(b: &Tensor, at: &GemmAttrs) -> Result<Option<Packed>> {
    let bs = b.shape();
    if bs.len() != 2 || !b.dtype().is_float() {
        return Ok(None);
    }
    let bv = f32_data(b)?;
    let (k, n) = if at.trans_b {
        (bs[1], bs[0])
    } else {
        (bs[0], bs[1])
    };
    let bm = if at.trans_b {
        Mat::col_major(&bv, k)
    } else {
        Mat::row_major(&bv, n)
    };
    Packed::new(Side::B, k, n, bm).map(Some)
}

/// The right operand of a GEMM: `packed` when it was packed with these dims, else `b`.
fn b_operand<'a>(b: Mat<'a>, packed: Option<&'a Packed>, k: usize, n: usize) -> GemmOp<'a> {
    match packed {
        Some(p) if p.side == Side::B && p.rows == k && p.cols == n => GemmOp::Packed(p),
        _ => GemmOp::Mat(b),
    }
}

/// f32 MatMul with optional row bias (length n, added to every output row) and activation.
pub fn matmul_f32(
    a: &[f32],
    ashape: &[usize],
    b: &[f32],
    bshape: &[usize],
    bias: Option<&[f32]>,
    act: Option<Activation>,
) -> Result<(Vec<usize>, Vec<f32>)> {
    matmul_f32_packed(a, ashape, b, bshape, bias, act, None)
}

/// [`matmul_f32`] with a 2-D `b` also given pre-packed (by [`pack_matmul_b`]).
pub fn matmul_f32_packed(
    a: &[f32],
    ashape: &[usize],
    b: &[f32],
    bshape: &[usize],
    bias: Option<&[f32]>,
    act: Option<Activation>,
    packed_b: Option<&Packed>,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let p = matmul_plan(ashape, bshape)?;
    // A packed B is one matrix shared by every batch.
    let packed_b = packed_b.filter(|_| bshape.len() == 2);
    let total = numel(&p.out_shape, DType::F32)?;
    let mut y = alloc_vec::<f32>(total)?;
    if a.len() < numel_checked(ashape)? || b.len() < numel_checked(bshape)? {
        return Err(Error::shape("MatMul data is shorter than its shape"));
    }
    let (m, k, n) = (p.m, p.k, p.n);
    if p.fold_batch {
        let rows = total / n.max(1);
        if n > 0
            && !sgemm_op(
                rows,
                k,
                n,
                1.0,
                GemmOp::Mat(Mat::row_major(a, k)),
                b_operand(Mat::row_major(b, n), packed_b, k, n),
                0.0,
                &mut y,
                n,
            )
        {
            return Err(Error::shape("MatMul operands do not fit"));
        }
    } else {
        for (bi, &(oa, ob)) in p.offsets.iter().enumerate() {
            let ok = sgemm_op(
                m,
                k,
                n,
                1.0,
                GemmOp::Mat(Mat::row_major(&a[oa..], k)),
                b_operand(Mat::row_major(&b[ob..], n), packed_b, k, n),
                0.0,
                &mut y[bi * m * n..(bi + 1) * m * n],
                n,
            );
            if !ok {
                return Err(Error::shape("MatMul operands do not fit"));
            }
        }
    }
    if let Some(bv) = bias {
        if bv.len() != n {
            return Err(Error::shape(
                "MatMul bias length differs from the output width",
            ));
        }
        for row in y.chunks_exact_mut(n.max(1)) {
            row.iter_mut().zip(bv).for_each(|(v, b)| *v += b);
        }
    }
    apply_act(act, &mut y);
    Ok((p.out_shape, y))
}

/// Generic matmul over wrapping integer/float arithmetic (non-f32 paths).
fn matmul_generic<T: Num>(
    a: &[T],
    ashape: &[usize],
    b: &[T],
    bshape: &[usize],
) -> Result<(Vec<usize>, Vec<T>)> {
    let p = matmul_plan(ashape, bshape)?;
    let total = numel(&p.out_shape, T::DTYPE)?;
    let mut y = alloc_vec::<T>(total)?;
    if a.len() < numel_checked(ashape)? || b.len() < numel_checked(bshape)? {
        return Err(Error::shape("MatMul data is shorter than its shape"));
    }
    let (m, k, n) = (p.m, p.k, p.n);
    let nb = total / (m * n).max(1);
    for bi in 0..nb {
        let (oa, ob) = if p.fold_batch {
            (bi * m * k, 0)
        } else {
            p.offsets[bi]
        };
        let yb = &mut y[bi * m * n..(bi + 1) * m * n];
        for i in 0..m {
            let yr = &mut yb[i * n..(i + 1) * n];
            for kk in 0..k {
                let av = a[oa + i * k + kk];
                let br = &b[ob + kk * n..ob + (kk + 1) * n];
                for (yv, &bv) in yr.iter_mut().zip(br) {
                    *yv = yv.add(av.mul(bv));
                }
            }
        }
    }
    Ok((p.out_shape, y))
}

/// `MatMul` on tensors; f32/f16/bf16 go through sgemm, f64 and integers through a
/// generic loop.
pub fn matmul(
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    act: Option<Activation>,
) -> Result<Tensor> {
    matmul_with(a, b, bias, act, None)
}

/// [`matmul`] with `b` also given pre-packed by [`pack_matmul_b`].
pub fn matmul_with(
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    act: Option<Activation>,
    packed_b: Option<&Packed>,
) -> Result<Tensor> {
    let dt = a.dtype();
    if b.dtype() != dt {
        return Err(Error::dtype(format!("MatMul of {dt} and {}", b.dtype())));
    }
    match dt {
        DType::F32 | DType::F16 | DType::BF16 => {
            let av = f32_data(a)?;
            let bv = f32_data(b)?;
            let biasv = match bias {
                Some(t) => Some(f32_data(t)?),
                None => None,
            };
            let (s, y) = matmul_f32_packed(
                &av,
                a.shape(),
                &bv,
                b.shape(),
                biasv.as_deref(),
                act,
                packed_b,
            )?;
            from_f32(dt, s, y)
        }
        _ => {
            if bias.is_some() || act.is_some() {
                return Err(Error::unsupported_dtype(format!(
                    "fused MatMul on {dt} is not supported"
                )));
            }
            crate::dispatch!(num dt, "MatMul", T => {
                let (s, y) = matmul_generic::<T>(a.as_slice::<T>()?, a.shape(), b.as_slice::<T>()?, b.shape())?;
                Tensor::from_vec(s, y)
            })
        }
    }
}

/// Gemm attributes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmAttrs {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// Gemm output dims (M, K, N) from A and B shapes.
pub fn gemm_dims(a: &[usize], b: &[usize], at: &GemmAttrs) -> Result<(usize, usize, usize)> {
    if a.len() != 2 || b.len() != 2 {
        return Err(Error::shape(format!(
            "Gemm needs 2-D A and B, got {a:?} and {b:?}"
        )));
    }
    let (m, k) = if at.trans_a {
        (a[1], a[0])
    } else {
        (a[0], a[1])
    };
    let (k2, n) = if at.trans_b {
        (b[1], b[0])
    } else {
        (b[0], b[1])
    };
    if k != k2 {
        return Err(Error::shape(format!(
            "Gemm of {a:?} and {b:?}: inner dims differ"
        )));
    }
    Ok((m, k, n))
}

/// Fills an m×n buffer with C broadcast (unidirectionally) to (m, n).
fn broadcast_c<T: Copy>(c: &[T], cs: &[usize], m: usize, n: usize, out: &mut [T]) -> Result<()> {
    let (cm, cn) = match cs.len() {
        0 => (1, 1),
        1 => (1, cs[0]),
        2 => (cs[0], cs[1]),
        _ => return Err(Error::shape("Gemm C must have rank <= 2")),
    };
    if !(cm == 1 || cm == m) || !(cn == 1 || cn == n) || c.len() < cm * cn {
        return Err(Error::shape(format!(
            "Gemm C {cs:?} does not broadcast to [{m}, {n}]"
        )));
    }
    for i in 0..m {
        let ci = if cm == 1 { 0 } else { i };
        for j in 0..n {
            let cj = if cn == 1 { 0 } else { j };
            out[i * n + j] = c[ci * cn + cj];
        }
    }
    Ok(())
}

/// `Gemm`: Y = alpha·A'·B' + beta·C, then the fused activation.
pub fn gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    at: &GemmAttrs,
    act: Option<Activation>,
) -> Result<Tensor> {
    gemm_with(a, b, c, at, act, None)
}

/// [`gemm`] with `b` also given pre-packed by [`pack_gemm_b`].
pub fn gemm_with(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    at: &GemmAttrs,
    act: Option<Activation>,
    packed_b: Option<&Packed>,
) -> Result<Tensor> {
    let dt = a.dtype();
    if b.dtype() != dt || c.is_some_and(|c| c.dtype() != dt) {
        return Err(Error::dtype("Gemm inputs must share one type"));
    }
    let (m, k, n) = gemm_dims(a.shape(), b.shape(), at)?;
    let total = numel(&[m, n], dt)?;
    match dt {
        DType::F32 | DType::F16 | DType::BF16 => {
            let av = f32_data(a)?;
            let bv = f32_data(b)?;
            let mut y = alloc_vec::<f32>(total)?;
            let mut beta = 0.0;
            if let Some(c) = c {
                if at.beta != 0.0 {
                    broadcast_c(&f32_data(c)?, c.shape(), m, n, &mut y)?;
                    beta = at.beta;
                }
            }
            let am = if at.trans_a {
                Mat::col_major(&av, m)
            } else {
                Mat::row_major(&av, k)
            };
            let bm = if at.trans_b {
                Mat::col_major(&bv, k)
            } else {
                Mat::row_major(&bv, n)
            };
            let bop = b_operand(bm, packed_b, k, n);
            if !sgemm_op(m, k, n, at.alpha, GemmOp::Mat(am), bop, beta, &mut y, n) {
                return Err(Error::shape("Gemm operands do not fit"));
            }
            apply_act(act, &mut y);
            from_f32(dt, vec![m, n], y)
        }
        _ => {
            if act.is_some() {
                return Err(Error::unsupported_dtype(format!("fused Gemm on {dt}")));
            }
            crate::dispatch!(num dt, "Gemm", T => {
                let av = a.as_slice::<T>()?;
                let bv = b.as_slice::<T>()?;
                let mut y = alloc_vec::<T>(total)?;
                let (alpha, beta) = (T::from_f32(at.alpha), T::from_f32(at.beta));
                if let Some(c) = c {
                    broadcast_c(c.as_slice::<T>()?, c.shape(), m, n, &mut y)?;
                    y.iter_mut().for_each(|v| *v = v.mul(beta));
                }
                for i in 0..m {
                    for j in 0..n {
                        let mut s = T::zero();
                        for p in 0..k {
                            let x = if at.trans_a { av[p * m + i] } else { av[i * k + p] };
                            let w = if at.trans_b { bv[j * k + p] } else { bv[p * n + j] };
                            s = s.add(x.mul(w));
                        }
                        y[i * n + j] = y[i * n + j].add(alpha.mul(s));
                    }
                }
                Tensor::from_vec(vec![m, n], y)
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// Einsum
// ---------------------------------------------------------------------------------------

/// A parsed einsum equation: per input and for the output, a list of labels
/// (letters as bytes; the ellipsis is expanded at run time).
#[derive(Debug, Clone, PartialEq)]
pub struct EinsumSpec {
    pub inputs: Vec<Term>,
    /// None when implicit (`->` absent).
    pub output: Option<Term>,
}

/// One side of an einsum: labels before and after an optional ellipsis.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub labels: Vec<u8>,
    /// Position of `...` in `labels`, if any.
    pub ellipsis: Option<usize>,
}

fn parse_term(s: &str) -> Result<Term> {
    let mut labels = Vec::new();
    let mut ellipsis = None;
    let b = s.trim().as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                if b.get(i..i + 3) != Some(b"...") || ellipsis.is_some() {
                    return Err(Error::attr(format!("bad ellipsis in einsum term '{s}'")));
                }
                ellipsis = Some(labels.len());
                i += 3;
            }
            c if c.is_ascii_alphabetic() => {
                labels.push(c);
                i += 1;
            }
            b' ' => i += 1,
            _ => return Err(Error::attr(format!("bad character in einsum term '{s}'"))),
        }
    }
    Ok(Term { labels, ellipsis })
}

impl EinsumSpec {
    pub fn parse(eq: &str) -> Result<EinsumSpec> {
        let (lhs, rhs) = match eq.split_once("->") {
            Some((l, r)) => (l, Some(r)),
            None => (eq, None),
        };
        let inputs = lhs.split(',').map(parse_term).collect::<Result<Vec<_>>>()?;
        let output = rhs.map(parse_term).transpose()?;
        Ok(EinsumSpec { inputs, output })
    }
}

/// Ellipsis labels are mapped to bytes >= 128 (128 + dim index from the right).
fn expand_term(t: &Term, rank: usize, ell_rank: usize) -> Result<Vec<u8>> {
    match t.ellipsis {
        None => {
            if t.labels.len() != rank {
                return Err(Error::shape(format!(
                    "einsum term has {} labels for an input of rank {rank}",
                    t.labels.len()
                )));
            }
            Ok(t.labels.clone())
        }
        Some(p) => {
            let e = rank.checked_sub(t.labels.len()).ok_or_else(|| {
                Error::shape("einsum term has more labels than the input has dims")
            })?;
            if e > ell_rank || ell_rank > 100 {
                return Err(Error::shape("einsum ellipsis rank mismatch"));
            }
            let mut v = t.labels[..p].to_vec();
            for i in 0..e {
                v.push(128 + (e - 1 - i) as u8);
            }
            v.extend_from_slice(&t.labels[p..]);
            Ok(v)
        }
    }
}

/// A working operand: data with one label per dim (labels unique).
struct Operand<T> {
    labels: Vec<u8>,
    shape: Vec<usize>,
    data: Vec<T>,
}

fn permute<T: Copy + Default + Elem>(op: &Operand<T>, order: &[usize]) -> Result<Operand<T>> {
    let shape: Vec<usize> = order.iter().map(|&i| op.shape[i]).collect();
    let labels: Vec<u8> = order.iter().map(|&i| op.labels[i]).collect();
    if order.iter().enumerate().all(|(i, &o)| i == o) {
        return Ok(Operand {
            labels,
            shape,
            data: op.data.clone(),
        });
    }
    let n = numel(&shape, T::DTYPE)?;
    let st = crate::cpu::common::strides(&op.shape);
    let src_st: Vec<usize> = order.iter().map(|&i| st[i]).collect();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    let mut off = 0usize;
    for _ in 0..n {
        data.push(op.data[off]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            off += src_st[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= src_st[d] * shape[d];
            idx[d] = 0;
        }
    }
    Ok(Operand {
        labels,
        shape,
        data,
    })
}

/// Takes diagonals for repeated labels and sums out labels not in `keep`.
fn simplify<T: Num>(mut op: Operand<T>, keep: &dyn Fn(u8) -> bool) -> Result<Operand<T>> {
    // Diagonals.
    loop {
        let dup = (0..op.labels.len()).find_map(|i| {
            (i + 1..op.labels.len())
                .find(|&j| op.labels[j] == op.labels[i])
                .map(|j| (i, j))
        });
        let Some((i, j)) = dup else { break };
        if op.shape[i] != op.shape[j] {
            return Err(Error::shape("einsum repeated label with different sizes"));
        }
        let st = crate::cpu::common::strides(&op.shape);
        let mut shape = op.shape.clone();
        shape.remove(j);
        let mut labels = op.labels.clone();
        labels.remove(j);
        let mut sst = st.clone();
        sst[i] += st[j];
        sst.remove(j);
        let n = numel(&shape, T::DTYPE)?;
        let mut data = Vec::with_capacity(n);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..n {
            let off: usize = idx.iter().zip(&sst).map(|(a, b)| a * b).sum();
            data.push(op.data[off]);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        op = Operand {
            labels,
            shape,
            data,
        };
    }
    // Sum out unneeded labels (move them last, then reduce).
    let drop: Vec<usize> = (0..op.labels.len())
        .filter(|&i| !keep(op.labels[i]))
        .collect();
    if drop.is_empty() {
        return Ok(op);
    }
    let kept: Vec<usize> = (0..op.labels.len())
        .filter(|&i| keep(op.labels[i]))
        .collect();
    let order: Vec<usize> = kept.iter().chain(&drop).copied().collect();
    let p = permute(&op, &order)?;
    let inner: usize = drop.iter().map(|&i| op.shape[i]).product();
    let shape: Vec<usize> = kept.iter().map(|&i| op.shape[i]).collect();
    let labels: Vec<u8> = kept.iter().map(|&i| op.labels[i]).collect();
    let outer: usize = shape.iter().product();
    let mut data = Vec::with_capacity(outer);
    for o in 0..outer {
        let mut s = T::zero();
        for &v in &p.data[o * inner..(o + 1) * inner] {
            s = s.add(v);
        }
        data.push(s);
    }
    Ok(Operand {
        labels,
        shape,
        data,
    })
}

/// A batched matmul: (batches, m, k, n, a, b, c), all contiguous row-major.
type Bmm<'a, T> = &'a dyn Fn(usize, usize, usize, usize, &[T], &[T], &mut [T]);

/// Contracts two operands; `keep` says which labels are needed afterwards.
fn contract<T: Num>(
    a: Operand<T>,
    b: Operand<T>,
    keep: &dyn Fn(u8) -> bool,
    bmm: Bmm<T>,
) -> Result<Operand<T>> {
    let in_b = |l: u8| b.labels.contains(&l);
    let in_a = |l: u8| a.labels.contains(&l);
    let batch: Vec<u8> = a
        .labels
        .iter()
        .copied()
        .filter(|&l| in_b(l) && keep(l))
        .collect();
    let sum: Vec<u8> = a
        .labels
        .iter()
        .copied()
        .filter(|&l| in_b(l) && !keep(l))
        .collect();
    let a_only: Vec<u8> = a.labels.iter().copied().filter(|&l| !in_b(l)).collect();
    let b_only: Vec<u8> = b.labels.iter().copied().filter(|&l| !in_a(l)).collect();
    let pos = |labels: &[u8], l: u8| labels.iter().position(|&x| x == l).unwrap_or(0);
    let size = |op: &Operand<T>, l: u8| op.shape[pos(&op.labels, l)];
    for &l in batch.iter().chain(&sum) {
        if size(&a, l) != size(&b, l) {
            return Err(Error::shape(
                "einsum label has different sizes in two inputs",
            ));
        }
    }
    let order_a: Vec<usize> = batch
        .iter()
        .chain(&a_only)
        .chain(&sum)
        .map(|&l| pos(&a.labels, l))
        .collect();
    let order_b: Vec<usize> = batch
        .iter()
        .chain(&sum)
        .chain(&b_only)
        .map(|&l| pos(&b.labels, l))
        .collect();
    let pa = permute(&a, &order_a)?;
    let pb = permute(&b, &order_b)?;
    let nb: usize = batch.iter().map(|&l| size(&a, l)).product();
    let m: usize = a_only.iter().map(|&l| size(&a, l)).product();
    let k: usize = sum.iter().map(|&l| size(&a, l)).product();
    let n: usize = b_only.iter().map(|&l| size(&b, l)).product();
    let mut shape: Vec<usize> = batch.iter().map(|&l| size(&a, l)).collect();
    shape.extend(a_only.iter().map(|&l| size(&a, l)));
    shape.extend(b_only.iter().map(|&l| size(&b, l)));
    let total = numel(&shape, T::DTYPE)?;
    let mut data = alloc_vec::<T>(total)?;
    bmm(nb, m, k, n, &pa.data, &pb.data, &mut data);
    let labels: Vec<u8> = batch
        .iter()
        .chain(&a_only)
        .chain(&b_only)
        .copied()
        .collect();
    Ok(Operand {
        labels,
        shape,
        data,
    })
}

fn einsum_t<T: Num>(
    spec: &EinsumSpec,
    inputs: &[(&[usize], Vec<T>)],
    bmm: Bmm<T>,
) -> Result<(Vec<usize>, Vec<T>)> {
    if inputs.len() != spec.inputs.len() {
        return Err(Error::input(format!(
            "einsum equation has {} terms for {} inputs",
            spec.inputs.len(),
            inputs.len()
        )));
    }
    let ell_rank = spec
        .inputs
        .iter()
        .zip(inputs)
        .filter(|(t, _)| t.ellipsis.is_some())
        .map(|(t, (s, _))| s.len().saturating_sub(t.labels.len()))
        .max()
        .unwrap_or(0);
    let mut ops = Vec::new();
    let mut sizes: std::collections::BTreeMap<u8, usize> = Default::default();
    for (t, (s, d)) in spec.inputs.iter().zip(inputs) {
        let labels = expand_term(t, s.len(), ell_rank)?;
        for (&l, &dim) in labels.iter().zip(s.iter()) {
            let e = sizes.entry(l).or_insert(dim);
            if *e != dim {
                if *e == 1 && l >= 128 {
                    *e = dim;
                } else if !(dim == 1 && l >= 128) {
                    return Err(Error::shape(format!(
                        "einsum label '{}' has sizes {} and {dim}",
                        l as char, *e
                    )));
                }
            }
        }
        ops.push(Operand {
            labels,
            shape: s.to_vec(),
            data: d.clone(),
        });
    }
    // Broadcast ellipsis dims of size 1 up to the common size.
    for op in ops.iter_mut() {
        for i in 0..op.labels.len() {
            let want = sizes.get(&op.labels[i]).copied().unwrap_or(op.shape[i]);
            if op.shape[i] != want {
                let mut shape = op.shape.clone();
                shape[i] = want;
                let n = numel(&shape, T::DTYPE)?;
                let (outer, inner) = (
                    op.shape[..i].iter().product::<usize>(),
                    op.shape[i + 1..].iter().product::<usize>(),
                );
                let mut data = Vec::with_capacity(n);
                for o in 0..outer {
                    for _ in 0..want {
                        data.extend_from_slice(&op.data[o * inner..(o + 1) * inner]);
                    }
                }
                op.shape = shape;
                op.data = data;
            }
        }
    }
    let out_labels: Vec<u8> = match &spec.output {
        Some(t) => {
            let mut v = t.labels[..t.ellipsis.unwrap_or(t.labels.len())].to_vec();
            if t.ellipsis.is_some() {
                for i in 0..ell_rank {
                    v.push(128 + (ell_rank - 1 - i) as u8);
                }
                v.extend_from_slice(&t.labels[t.ellipsis.unwrap_or(0)..]);
            }
            for (i, &l) in v.iter().enumerate() {
                if v[..i].contains(&l) {
                    return Err(Error::shape("einsum output repeats a label"));
                }
                if !sizes.contains_key(&l) {
                    return Err(Error::shape(format!(
                        "einsum output label '{}' is not in any input",
                        l as char
                    )));
                }
            }
            v
        }
        None => {
            let mut v: Vec<u8> = (0..ell_rank)
                .map(|i| 128 + (ell_rank - 1 - i) as u8)
                .collect();
            let mut counts: std::collections::BTreeMap<u8, usize> = Default::default();
            for op in &ops {
                for &l in &op.labels {
                    if l < 128 {
                        *counts.entry(l).or_default() += 1;
                    }
                }
            }
            v.extend(counts.iter().filter(|(_, &c)| c == 1).map(|(&l, _)| l));
            v
        }
    };
    // Contract left to right.
    let n_ops = ops.len();
    let mut iter = ops.into_iter().enumerate();
    let Some((_, first)) = iter.next() else {
        return Err(Error::input("einsum needs at least one input"));
    };
    let rest: Vec<Operand<T>> = iter.map(|(_, o)| o).collect();
    let needed_after = |idx: usize, l: u8| -> bool {
        out_labels.contains(&l) || rest.iter().skip(idx).any(|o| o.labels.contains(&l))
    };
    let mut acc = simplify(first, &|l| needed_after(0, l))?;
    for (i, op) in rest.iter().enumerate() {
        let op = simplify(
            Operand {
                labels: op.labels.clone(),
                shape: op.shape.clone(),
                data: op.data.clone(),
            },
            &|l| needed_after(i + 1, l) || acc.labels.contains(&l),
        )?;
        acc = contract(acc, op, &|l| needed_after(i + 1, l), bmm)?;
        acc = simplify(acc, &|l| needed_after(i + 1, l))?;
    }
    let _ = n_ops;
    let acc = simplify(acc, &|l| out_labels.contains(&l))?;
    let order: Vec<usize> = out_labels
        .iter()
        .map(|l| {
            acc.labels
                .iter()
                .position(|x| x == l)
                .ok_or_else(|| Error::shape("einsum output label lost"))
        })
        .collect::<Result<_>>()?;
    let r = permute(&acc, &order)?;
    Ok((r.shape, r.data))
}

/// `Einsum` on tensors: floats in f32 (f64 in f64), integers in i64 with wrapping.
pub fn einsum(spec: &EinsumSpec, inputs: &[&Tensor]) -> Result<Tensor> {
    let dt = inputs
        .first()
        .map(|t| t.dtype())
        .ok_or_else(|| Error::input("einsum needs at least one input"))?;
    if inputs.iter().any(|t| t.dtype() != dt) {
        return Err(Error::dtype("Einsum inputs must share one type"));
    }
    match dt {
        DType::F32 | DType::F16 | DType::BF16 => {
            let ins: Vec<(&[usize], Vec<f32>)> = inputs
                .iter()
                .map(|t| Ok((t.shape(), t.to_f32_vec()?)))
                .collect::<Result<_>>()?;
            let bmm =
                |nb: usize, m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]| {
                    for i in 0..nb {
                        sgemm_ex(
                            m,
                            k,
                            n,
                            1.0,
                            Mat::row_major(&a[i * m * k..], k),
                            Mat::row_major(&b[i * k * n..], n),
                            0.0,
                            &mut c[i * m * n..(i + 1) * m * n],
                            n,
                        );
                    }
                };
            let (s, y) = einsum_t::<f32>(spec, &ins, &bmm)?;
            from_f32(dt, s, y)
        }
        DType::F64 => {
            let ins: Vec<(&[usize], Vec<f64>)> = inputs
                .iter()
                .map(|t| Ok((t.shape(), t.to_f64_vec()?)))
                .collect::<Result<_>>()?;
            let (s, y) = einsum_t::<f64>(spec, &ins, &generic_bmm::<f64>)?;
            Tensor::from_vec(s, y)
        }
        _ if dt.is_int() => {
            let ins: Vec<(&[usize], Vec<i64>)> = inputs
                .iter()
                .map(|t| Ok((t.shape(), t.to_i64_vec()?)))
                .collect::<Result<_>>()?;
            let (s, y) = einsum_t::<i64>(spec, &ins, &generic_bmm::<i64>)?;
            Tensor::from_vec(s, y)?.cast(dt)
        }
        _ => Err(Error::unsupported_dtype(format!(
            "Einsum does not support {dt}"
        ))),
    }
}

fn generic_bmm<T: Num>(nb: usize, m: usize, k: usize, n: usize, a: &[T], b: &[T], c: &mut [T]) {
    for bi in 0..nb {
        for i in 0..m {
            let cr = &mut c[(bi * m + i) * n..(bi * m + i + 1) * n];
            for p in 0..k {
                let av = a[(bi * m + i) * k + p];
                let br = &b[(bi * k + p) * n..(bi * k + p + 1) * n];
                for (cv, &bv) in cr.iter_mut().zip(br) {
                    *cv = cv.add(av.mul(bv));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn win(k: &[usize]) -> Window {
        Window {
            kernel_shape: Some(k.to_vec()),
            ..Window::default()
        }
    }

    /// Direct-definition conv for checking the fast paths.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv2d(
        x: &[f32],
        xs: &[usize],
        w: &[f32],
        ws: &[usize],
        group: usize,
        s: usize,
        p: usize,
        dl: usize,
    ) -> Vec<f32> {
        let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
        let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let oh = (h + 2 * p - ((kh - 1) * dl + 1)) / s + 1;
        let ow = (wd + 2 * p - ((kw - 1) * dl + 1)) / s + 1;
        let mg = m / group;
        let mut y = vec![0f32; n * m * oh * ow];
        for b in 0..n {
            for mm in 0..m {
                let g = mm / mg;
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = 0f32;
                        for ci in 0..cg {
                            for a in 0..kh {
                                for e in 0..kw {
                                    let y0 = (i * s + a * dl) as i64 - p as i64;
                                    let x0 = (j * s + e * dl) as i64 - p as i64;
                                    if y0 < 0 || x0 < 0 || y0 >= h as i64 || x0 >= wd as i64 {
                                        continue;
                                    }
                                    let xi = ((b * c + g * cg + ci) * h + y0 as usize) * wd
                                        + x0 as usize;
                                    let wi = ((mm * cg + ci) * kh + a) * kw + e;
                                    acc += x[xi] * w[wi];
                                }
                            }
                        }
                        y[((b * m + mm) * oh + i) * ow + j] = acc;
                    }
                }
            }
        }
        y
    }

    fn seq(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect()
    }

    #[test]
    fn conv_paths_match_naive() {
        // (c, m, group, k, stride, pad, dilation)
        for &(c, m, group, k, s, p, dl) in &[
            (3, 4, 1, 3, 1, 1, 1),
            (4, 6, 2, 3, 2, 1, 1),
            (8, 8, 8, 3, 1, 1, 1),
            (8, 8, 8, 5, 2, 2, 1),
            (8, 8, 8, 3, 3, 1, 2),
            (8, 8, 8, 3, 2, 1, 1),
            (8, 8, 8, 3, 1, 2, 3),
            (8, 8, 8, 3, 2, 0, 1),
            (6, 12, 6, 3, 1, 2, 2),
            (5, 7, 1, 1, 1, 0, 1),
            (5, 7, 1, 1, 2, 0, 1),
            (2, 3, 1, 2, 3, 0, 2),
        ] {
            let xs = [2, c, 9, 11];
            let ws = [m, c / group, k, k];
            let x = seq(xs.iter().product());
            let w = seq(ws.iter().product());
            let wn = Window {
                strides: Some(vec![s, s]),
                pads: Some(vec![p; 4]),
                dilations: Some(vec![dl, dl]),
                ..Window::default()
            };
            let (shape, y) = conv_f32(&x, &xs, &w, &ws, None, &wn, group, None).unwrap();
            let want = naive_conv2d(&x, &xs, &w, &ws, group, s, p, dl);
            assert_eq!(y.len(), want.len(), "{shape:?}");
            for (a, b) in y.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{a} vs {b} for c={c} m={m} g={group} k={k}"
                );
            }
            // Weights packed at load give the same result.
            let wt = Tensor::from_vec(ws.to_vec(), w.clone()).unwrap();
            let packed = pack_conv_weights(&wt, group).unwrap();
            assert_eq!(packed.is_none(), c == group && m == group);
            let (_, yp) =
                conv_f32_packed(&x, &xs, &w, &ws, None, &wn, group, None, packed.as_ref()).unwrap();
            for (a, b) in yp.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "packed: {a} vs {b}");
            }
        }
    }

    #[test]
    fn prepacked_weights_give_the_unpacked_bits() {
        // Sizes where the unpacked call also takes the blocked GEMM, so both run the
        // same panels through the same kernel.
        let xs = [1, 16, 12, 13];
        let ws = [24, 16, 3, 3];
        let x = seq(xs.iter().product());
        let w = seq(ws.iter().product());
        let wn = Window {
            pads: Some(vec![1; 4]),
            ..Window::default()
        };
        let wt = Tensor::from_vec(ws.to_vec(), w.clone()).unwrap();
        let packed = pack_conv_weights(&wt, 1).unwrap();
        let (_, y0) = conv_f32(&x, &xs, &w, &ws, None, &wn, 1, None).unwrap();
        let (_, y1) =
            conv_f32_packed(&x, &xs, &w, &ws, None, &wn, 1, None, packed.as_ref()).unwrap();
        assert_eq!(y0, y1);
        // MatMul and Gemm (transB) with a packed constant B.
        let a = Tensor::from_vec(vec![2, 40, 64], seq(2 * 40 * 64)).unwrap();
        let b = Tensor::from_vec(vec![64, 72], seq(64 * 72)).unwrap();
        let pb = pack_matmul_b(&b).unwrap();
        assert!(pb.is_some());
        let y0 = matmul(&a, &b, None, None).unwrap();
        let y1 = matmul_with(&a, &b, None, None, pb.as_ref()).unwrap();
        assert_eq!(y0.as_slice::<f32>().unwrap(), y1.as_slice::<f32>().unwrap());
        let a2 = Tensor::from_vec(vec![30, 64], seq(30 * 64)).unwrap();
        let bt = Tensor::from_vec(vec![72, 64], seq(64 * 72)).unwrap();
        let at = GemmAttrs {
            alpha: 0.5,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        };
        let cb = Tensor::from_vec(vec![72], seq(72)).unwrap();
        let pg = pack_gemm_b(&bt, &at).unwrap();
        let y0 = gemm(&a2, &bt, Some(&cb), &at, None).unwrap();
        let y1 = gemm_with(&a2, &bt, Some(&cb), &at, None, pg.as_ref()).unwrap();
        assert_eq!(y0.as_slice::<f32>().unwrap(), y1.as_slice::<f32>().unwrap());
        // A small-m product takes the row path when packed: equal within rounding.
        let a1 = Tensor::from_vec(vec![1, 64], seq(64)).unwrap();
        let y0 = matmul(&a1, &b, None, None).unwrap();
        let y1 = matmul_with(&a1, &b, None, None, pb.as_ref()).unwrap();
        for (p, q) in y0
            .as_slice::<f32>()
            .unwrap()
            .iter()
            .zip(y1.as_slice::<f32>().unwrap())
        {
            assert!((p - q).abs() <= 1e-4 * (1.0 + p.abs()), "{p} vs {q}");
        }
    }

    #[test]
    fn conv_errors() {
        let x = vec![0f32; 2 * 3 * 4 * 4];
        let w = vec![0f32; 4 * 2 * 3 * 3];
        assert!(conv_f32(
            &x,
            &[2, 3, 4, 4],
            &w,
            &[4, 2, 3, 3],
            None,
            &Window::default(),
            1,
            None
        )
        .is_err());
        let w = vec![0f32; 4 * 3 * 5 * 5];
        assert!(conv_f32(
            &x,
            &[2, 3, 4, 4],
            &w,
            &[4, 3, 5, 5],
            None,
            &Window::default(),
            1,
            None
        )
        .is_err());
    }

    #[test]
    fn same_padding_geometry() {
        let w = Window {
            auto_pad: AutoPad::SameUpper,
            strides: Some(vec![2]),
            ..Window::default()
        };
        let g = w.resolve(&[7], &[3]).unwrap();
        assert_eq!(g.out_dims(), &[4]);
        assert_eq!((g.pad_begin[2], g.pad_end[2]), (1, 1));
        let w = Window {
            auto_pad: AutoPad::SameLower,
            ..Window::default()
        };
        let g = w.resolve(&[5], &[4]).unwrap();
        assert_eq!((g.pad_begin[2], g.pad_end[2]), (2, 1));
    }

    #[test]
    fn pools() {
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let t = Tensor::from_vec(vec![1, 1, 4, 4], x).unwrap();
        let mut w = win(&[2, 2]);
        w.strides = Some(vec![2, 2]);
        let (y, i) = max_pool(&t, &w, 0, true).unwrap();
        assert_eq!(y.as_slice::<f32>().unwrap(), &[5., 7., 13., 15.]);
        assert_eq!(i.unwrap().as_slice::<i64>().unwrap(), &[5, 7, 13, 15]);
        let a = pool(
            &t,
            &w,
            PoolKind::Average {
                count_include_pad: false,
            },
        )
        .unwrap();
        assert_eq!(a.as_slice::<f32>().unwrap(), &[2.5, 4.5, 10.5, 12.5]);
        let g = global_pool(&t, GlobalKind::Max).unwrap();
        assert_eq!(g.shape(), &[1, 1, 1, 1]);
        assert!(pool(&t, &Window::default(), PoolKind::Lp { p: 2.0 }).is_err());
    }

    #[test]
    fn matmul_broadcast_and_1d() {
        let a = Tensor::from_vec(vec![2, 1, 2, 3], seq(12)).unwrap();
        let b = Tensor::from_vec(vec![3, 3, 2], seq(18)).unwrap();
        let y = matmul(&a, &b, None, None).unwrap();
        assert_eq!(y.shape(), &[2, 3, 2, 2]);
        let v = Tensor::from_vec(vec![3], vec![1f32, 2., 3.]).unwrap();
        let y = matmul(&v, &v, None, None).unwrap();
        assert_eq!(y.shape(), &[] as &[usize]);
        assert_eq!(y.as_slice::<f32>().unwrap(), &[14.0]);
        let bad = Tensor::from_vec(vec![2], vec![1f32, 2.]).unwrap();
        assert!(matmul(&v, &bad, None, None).is_err());
        let ai = Tensor::from_vec(vec![2, 2], vec![1i64, 2, 3, 4]).unwrap();
        let y = matmul(&ai, &ai, None, None).unwrap();
        assert_eq!(y.as_slice::<i64>().unwrap(), &[7, 10, 15, 22]);
    }

    #[test]
    fn fused_bias_and_activation() {
        let a = Tensor::from_vec(vec![2, 2], vec![1f32, -2., 3., 4.]).unwrap();
        let b = Tensor::from_vec(vec![2, 2], vec![1f32, 0., 0., 1.]).unwrap();
        let bias = Tensor::from_vec(vec![2], vec![0.5f32, -10.]).unwrap();
        let y = matmul(&a, &b, Some(&bias), Some(Activation::Relu)).unwrap();
        assert_eq!(y.as_slice::<f32>().unwrap(), &[1.5, 0., 3.5, 0.]);
        let at = GemmAttrs {
            alpha: 2.0,
            beta: 1.0,
            trans_a: true,
            trans_b: false,
        };
        let y = gemm(&a, &b, Some(&bias), &at, Some(Activation::Relu)).unwrap();
        // Aᵀ = [[1,3],[-2,4]] → 2·Aᵀ + bias = [[2.5,-4],[-3.5,-2]] → relu
        assert_eq!(y.as_slice::<f32>().unwrap(), &[2.5, 0., 0., 0.]);
        let bad = Tensor::from_vec(vec![3], vec![0f32; 3]).unwrap();
        assert!(gemm(&a, &b, Some(&bad), &at, None).is_err());
    }

    #[test]
    fn einsum_cases() {
        let a = Tensor::from_vec(vec![2, 3], seq(6)).unwrap();
        let b = Tensor::from_vec(vec![3, 4], seq(12)).unwrap();
        let y = einsum(&EinsumSpec::parse("ij,jk->ik").unwrap(), &[&a, &b]).unwrap();
        let want = matmul(&a, &b, None, None).unwrap();
        assert_eq!(y.shape(), want.shape());
        for (p, q) in y
            .as_slice::<f32>()
            .unwrap()
            .iter()
            .zip(want.as_slice::<f32>().unwrap())
        {
            assert!((p - q).abs() < 1e-5);
        }
        let t = einsum(&EinsumSpec::parse("ij").unwrap(), &[&a]).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        let tr = einsum(&EinsumSpec::parse("ji").unwrap(), &[&a]).unwrap();
        assert_eq!(tr.shape(), &[3, 2]);
        let sq = Tensor::from_vec(vec![3, 3], (0..9).map(|v| v as f32).collect()).unwrap();
        let d = einsum(&EinsumSpec::parse("ii->i").unwrap(), &[&sq]).unwrap();
        assert_eq!(d.as_slice::<f32>().unwrap(), &[0., 4., 8.]);
        let s = einsum(&EinsumSpec::parse("ij->").unwrap(), &[&sq]).unwrap();
        assert_eq!(s.as_slice::<f32>().unwrap(), &[36.]);
        assert!(einsum(&EinsumSpec::parse("ijk").unwrap(), &[&a]).is_err());
        assert!(einsum(&EinsumSpec::parse("ij->ii").unwrap(), &[&a]).is_err());
        // Ellipsis with broadcasting batch dims, checked against MatMul.
        let x = Tensor::from_vec(vec![2, 1, 2, 3], seq(12)).unwrap();
        let w = Tensor::from_vec(vec![3, 3, 4], seq(36)).unwrap();
        let e = einsum(&EinsumSpec::parse("...ij,...jk->...ik").unwrap(), &[&x, &w]).unwrap();
        let m = matmul(&x, &w, None, None).unwrap();
        assert_eq!(e.shape(), m.shape());
        for (p, q) in e
            .as_slice::<f32>()
            .unwrap()
            .iter()
            .zip(m.as_slice::<f32>().unwrap())
        {
            assert!((p - q).abs() < 1e-5);
        }
        // Three operands and an integer dtype.
        let i1 = Tensor::from_vec(vec![2, 2], vec![1i32, 2, 3, 4]).unwrap();
        let r = einsum(
            &EinsumSpec::parse("ij,jk,kl->il").unwrap(),
            &[&i1, &i1, &i1],
        )
        .unwrap();
        assert_eq!(r.as_slice::<i32>().unwrap(), &[37, 54, 81, 118]);
        let tr = einsum(&EinsumSpec::parse("ii").unwrap(), &[&i1]).unwrap();
        assert_eq!(tr.as_slice::<i32>().unwrap(), &[5]);
    }

    /// `cargo test --lib nn_speed -- --ignored --nocapture` (use opt-level 3 to judge).
    #[test]
    #[ignore]
    fn nn_speed() {
        let time = |name: &str, flops: f64, f: &mut dyn FnMut()| {
            f();
            let reps = 5;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                f();
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!("{name}: {:.2} ms, {:.1} GFLOP/s", s * 1e3, flops / s / 1e9);
        };
        // (name, input, weights, group, stride, pad)
        for &(name, xs, ws, group, s, p) in &[
            (
                "conv3x3 s2 3->16 @256x640",
                [1, 3, 256, 640],
                [16, 3, 3, 3],
                1,
                2,
                1,
            ),
            (
                "depthwise3x3 96 @48x160",
                [1, 96, 48, 160],
                [96, 1, 3, 3],
                96,
                1,
                1,
            ),
            (
                "depthwise3x3 s2 96 @48x160",
                [1, 96, 48, 160],
                [96, 1, 3, 3],
                96,
                2,
                1,
            ),
            (
                "pointwise 96->24 @48x160",
                [1, 96, 48, 160],
                [24, 96, 1, 1],
                1,
                1,
                0,
            ),
            (
                "conv3x3 64->64 @32x100",
                [1, 64, 32, 100],
                [64, 64, 3, 3],
                1,
                1,
                1,
            ),
        ] {
            let x = seq(xs.iter().product());
            let w = seq(ws.iter().product());
            let wn = Window {
                strides: Some(vec![s, s]),
                pads: Some(vec![p; 4]),
                ..Window::default()
            };
            let (shape, _) = conv_f32(&x, &xs, &w, &ws, None, &wn, group, None).unwrap();
            let flops =
                2.0 * shape.iter().product::<usize>() as f64 * (ws[1] * ws[2] * ws[3]) as f64;
            time(name, flops, &mut || {
                conv_f32(&x, &xs, &w, &ws, None, &wn, group, Some(Activation::Relu)).unwrap();
            });
        }
        let a = seq(4 * 128 * 384);
        let b = seq(384 * 384);
        time(
            "matmul [4,128,384]x[384,384]",
            2.0 * 512.0 * 384.0 * 384.0,
            &mut || {
                matmul_f32(&a, &[4, 128, 384], &b, &[384, 384], None, None).unwrap();
            },
        );
    }

    /// Degenerate shapes and attributes give results or errors, never panics.
    #[test]
    fn degenerate_inputs_do_not_panic() {
        let mk = |shape: Vec<usize>| {
            let n = shape.iter().product();
            Tensor::from_vec(shape, seq(n)).unwrap()
        };
        let wins = [
            Window::default(),
            Window {
                auto_pad: AutoPad::SameLower,
                strides: Some(vec![3, 3]),
                ..Window::default()
            },
            Window {
                pads: Some(vec![usize::MAX / 2; 4]),
                ..Window::default()
            },
            Window {
                strides: Some(vec![usize::MAX, 1]),
                dilations: Some(vec![usize::MAX, 1]),
                ..Window::default()
            },
        ];
        let xs = [
            vec![0, 2, 3, 3],
            vec![1, 2, 0, 3],
            vec![1, 2, 2, 2],
            vec![1, 2, 5, 5],
        ];
        let ws = [
            vec![2, 2, 3, 3],
            vec![0, 2, 1, 1],
            vec![2, 1, 3, 3],
            vec![4, 2, 1, 1],
        ];
        for w in &wins {
            for x in &xs {
                for wt in &ws {
                    let _ = conv(&mk(x.clone()), &mk(wt.clone()), None, w, 1, None);
                    let _ = conv(&mk(x.clone()), &mk(wt.clone()), None, w, 2, None);
                    let _ = conv_transpose(
                        &mk(x.clone()),
                        &mk(wt.clone()),
                        None,
                        w,
                        &TransposeAttrs::default(),
                        1,
                    );
                    let mut pw = w.clone();
                    pw.kernel_shape = Some(wt[2..].to_vec());
                    let _ = pool(
                        &mk(x.clone()),
                        &pw,
                        PoolKind::Average {
                            count_include_pad: true,
                        },
                    );
                    let _ = max_pool(&mk(x.clone()), &pw, 1, true);
                    pw.ceil_mode = true;
                    let _ = pool(&mk(x.clone()), &pw, PoolKind::Lp { p: 3.0 });
                }
                let _ = global_pool(&mk(x.clone()), GlobalKind::Average);
            }
        }
        for (a, b) in [
            (vec![0, 3], vec![3, 4]),
            (vec![2, 0], vec![0, 4]),
            (vec![5, 1, 2, 0], vec![0, 3]),
            (vec![3], vec![2, 3, 1]),
            (vec![2, 3], vec![4]),
        ] {
            let _ = matmul(&mk(a.clone()), &mk(b.clone()), None, None);
            let at = GemmAttrs {
                alpha: 1.0,
                beta: 1.0,
                trans_a: true,
                trans_b: true,
            };
            let _ = gemm(&mk(a), &mk(b), None, &at, None);
        }
    }
}
