//! CPU kernels for the quant family (ops in `crate::graph::ops::quant`): Quantize /
//! Dequantize, the integer matmuls and convolutions, the QLinear* elementwise, pooling,
//! concat and softmax ops of the com.microsoft domain, and MatMulNBits.
//!
//! Semantics follow onnxruntime's CPU kernels: scales are f32, rounding is round half to
//! even, results saturate to the output type. Integer products go through
//! [`crate::cpu::qgemm`] (exact i32 accumulation), with constant weights packed once at
//! load ([`QPacked`]); convolutions are im2col (padded with the input zero point) + one
//! qgemm per group with the weights as the A operand.

use crate::cpu::gemm::{sgemm_ex, Mat};
use crate::cpu::nn::{conv_dims, matmul_plan, Geom, Window};
use crate::cpu::qgemm::{qgemm, QMat, QOperand, QPacked, Side};
use crate::error::{Error, Result};
use crate::tensor::small::{CastOptions, SmallElem};
use crate::tensor::{alloc_vec, numel, DType, Num, Tensor};

fn internal() -> Error {
    Error::runtime("quantized kernel index out of range (internal error)")
}

// ---------------------------------------------------------------------------------------
// Quantization
// ---------------------------------------------------------------------------------------

/// How a scale / zero point maps onto x: `param(o, a)` for outer index `o` and axis
/// index `a` gives the parameter index; x runs of `inner` elements share it.
struct QParams {
    outer: usize,
    len: usize,
    inner: usize,
    /// 0 = per tensor, 1 = per axis, 2 = blocked.
    mode: u8,
    block: usize,
    n_blocks: usize,
}

impl QParams {
    fn new(x: &[usize], scale: &[usize], axis: i64, block: usize) -> Result<QParams> {
        let n_scale: usize = scale.iter().product();
        if x.is_empty() || n_scale == 1 && scale.len() <= 1 {
            let n: usize = x.iter().product();
            return Ok(QParams {
                outer: 1,
                len: 1,
                inner: n,
                mode: 0,
                block: 1,
                n_blocks: 1,
            });
        }
        let ax = crate::graph::attrs::norm_axis(axis, x.len())?;
        let (outer, len, inner) = crate::cpu::common::split_at_axis(x, ax);
        if block == 0 {
            if scale.len() != 1 || scale[0] != len {
                return Err(Error::shape(format!(
                    "scale of shape {scale:?} does not fit axis {axis} of input {x:?}"
                )));
            }
            return Ok(QParams {
                outer,
                len,
                inner,
                mode: 1,
                block: 1,
                n_blocks: len,
            });
        }
        let n_blocks = len.div_ceil(block);
        let ok = scale.len() == x.len()
            && scale
                .iter()
                .zip(x)
                .enumerate()
                .all(|(i, (&s, &d))| if i == ax { s == n_blocks } else { s == d });
        if !ok {
            return Err(Error::shape(format!(
                "blocked scale of shape {scale:?} does not fit input {x:?} (axis {axis}, block {block})"
            )));
        }
        Ok(QParams {
            outer,
            len,
            inner,
            mode: 2,
            block,
            n_blocks,
        })
    }

    /// Calls `f(x_range_start, run_len, param_index)` for every run of x.
    fn for_each(&self, mut f: impl FnMut(usize, usize, usize) -> Result<()>) -> Result<()> {
        let mut start = 0;
        for o in 0..self.outer {
            for a in 0..self.len {
                match self.mode {
                    0 => f(start, self.inner, 0)?,
                    1 => f(start, self.inner, a)?,
                    _ => {
                        // One run per inner element block: params vary with the inner index.
                        let base = (o * self.n_blocks + a / self.block) * self.inner;
                        for i in 0..self.inner {
                            f(start + i, 1, base + i)?;
                        }
                    }
                }
                start += self.inner;
            }
        }
        Ok(())
    }
}

/// Round half to even without a libm call (x86-64 baseline has no roundeven
/// instruction), so quantization loops vectorize. Exact for every f32: values of
/// magnitude >= 2^22 are already integers (or half-integers only below 2^23, where the
/// magic-number sum rounds them correctly as well).
#[inline(always)]
pub fn round_even_f32(v: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    if v.abs() < 4_194_304.0 {
        (v + ROUND) - ROUND
    } else {
        v
    }
}

fn check_zp(scale: &Tensor, zp: Option<&Tensor>) -> Result<Option<Vec<i64>>> {
    match zp {
        None => Ok(None),
        Some(z) => {
            if z.shape() != scale.shape() && !(z.len() == 1 && scale.len() == 1) {
                return Err(Error::shape(format!(
                    "zero point shape {:?} differs from scale shape {:?}",
                    z.shape(),
                    scale.shape()
                )));
            }
            Ok(Some(z.to_i64_vec()?))
        }
    }
}

/// Zero point values as f32 (any integer or narrow type), shape-checked against scale.
fn check_zp_f32(scale: &Tensor, zp: Option<&Tensor>) -> Result<Option<Vec<f32>>> {
    match zp {
        None => Ok(None),
        Some(z) => {
            if z.shape() != scale.shape() && !(z.len() == 1 && scale.len() == 1) {
                return Err(Error::shape(format!(
                    "zero point shape {:?} differs from scale shape {:?}",
                    z.shape(),
                    scale.shape()
                )));
            }
            Ok(Some(z.to_f32_vec()?))
        }
    }
}

/// Whether QuantizeLinear can produce `dt`.
pub fn is_quant_type(dt: DType) -> bool {
    matches!(
        dt,
        DType::U8
            | DType::I8
            | DType::U16
            | DType::I16
            | DType::U4
            | DType::I4
            | DType::U2
            | DType::I2
            | DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ
            | DType::F4E2M1
    )
}

/// The integer range of a quantized type (shared with the GPU kernels).
pub(crate) fn qrange(dt: DType) -> Result<(f32, f32)> {
    Ok(match dt {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U16 => (0.0, 65535.0),
        DType::I16 => (-32768.0, 32767.0),
        DType::U4 => (0.0, 15.0),
        DType::I4 => (-8.0, 7.0),
        DType::U2 => (0.0, 3.0),
        DType::I2 => (-2.0, 1.0),
        other => {
            return Err(Error::unsupported_dtype(format!(
                "quantization to {other} is not supported"
            )))
        }
    })
}

/// `QuantizeLinear`: y = clamp(round_half_even(x / scale) + zp) in `out_dt`; float8
/// outputs saturate.
pub fn quantize_linear(
    x: &Tensor,
    scale: &Tensor,
    zp: Option<&Tensor>,
    axis: i64,
    block: usize,
    out_dt: DType,
) -> Result<Tensor> {
    quantize_linear_sat(x, scale, zp, axis, block, out_dt, true)
}

/// `QuantizeLinear`: integer outputs are clamp(round_half_even(x / scale) + zp); narrow
/// float outputs are x / scale + zp rounded to the format, saturating when `saturate`
/// (otherwise out-of-range values become NaN, or infinity for float8e5m2).
pub fn quantize_linear_sat(
    x: &Tensor,
    scale: &Tensor,
    zp: Option<&Tensor>,
    axis: i64,
    block: usize,
    out_dt: DType,
    saturate: bool,
) -> Result<Tensor> {
    if !is_quant_type(out_dt) {
        return Err(Error::unsupported_dtype(format!(
            "quantization to {out_dt} is not supported"
        )));
    }
    let float_out = out_dt.is_low_float();
    let (lo, hi) = if float_out {
        (f32::NEG_INFINITY, f32::INFINITY)
    } else {
        qrange(out_dt)?
    };
    if !matches!(
        x.dtype(),
        DType::F32 | DType::F16 | DType::BF16 | DType::I32
    ) {
        return Err(Error::unsupported_dtype(format!(
            "QuantizeLinear of {}",
            x.dtype()
        )));
    }
    if !scale.dtype().is_float() && !matches!(scale.dtype(), DType::I32 | DType::F8E8M0) {
        return Err(Error::dtype(format!(
            "QuantizeLinear scale of {}",
            scale.dtype()
        )));
    }
    if let Some(z) = zp {
        if z.dtype() != out_dt {
            return Err(Error::dtype(format!(
                "QuantizeLinear zero point is {} but the output is {out_dt}",
                z.dtype()
            )));
        }
    }
    let qp = QParams::new(x.shape(), scale.shape(), axis, block)?;
    let s = scale.to_f32_vec()?;
    let z = check_zp_f32(scale, zp)?;
    let xs_owned;
    let xs: &[f32] = if x.dtype() == DType::F32 {
        x.as_slice::<f32>()?
    } else {
        xs_owned = x.to_f32_vec()?;
        &xs_owned
    };
    let n = numel(x.shape(), DType::F32)?;
    let mut q = vec![0f32; n];
    qp.for_each(|start, len, p| {
        let sc = *s.get(p).ok_or_else(internal)?;
        let zz = match &z {
            Some(z) => *z.get(p).ok_or_else(internal)?,
            None => 0.0,
        };
        let src = xs.get(start..start + len).ok_or_else(internal)?;
        let dst = q.get_mut(start..start + len).ok_or_else(internal)?;
        if float_out {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v / sc + zz;
            }
        } else {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = (round_even_f32(v / sc) + zz).clamp(lo, hi);
            }
        }
        Ok(())
    })?;
    let shape = x.shape().to_vec();
    // NaN inputs clamp to NaN; `as` maps them to 0.
    match out_dt {
        DType::U8 => Tensor::from_vec(shape, q.iter().map(|&v| v as u8).collect::<Vec<_>>()),
        DType::I8 => Tensor::from_vec(shape, q.iter().map(|&v| v as i8).collect::<Vec<_>>()),
        DType::U16 => Tensor::from_vec(shape, q.iter().map(|&v| v as u16).collect::<Vec<_>>()),
        DType::I16 => Tensor::from_vec(shape, q.iter().map(|&v| v as i16).collect::<Vec<_>>()),
        other => {
            // Integers are already rounded and clamped; floats round to the format.
            let opts = CastOptions {
                saturate,
                ..CastOptions::default()
            };
            crate::dispatch!(small other, "QuantizeLinear", T => {
                let v: Vec<T> = q.iter().map(|&v| T::from_f64(f64::from(v), opts)).collect();
                Tensor::from_vec(shape, v)
            })
        }
    }
}

/// `DequantizeLinear`: y = (x - zp) * scale in `out_dt`.
pub fn dequantize_linear(
    x: &Tensor,
    scale: &Tensor,
    zp: Option<&Tensor>,
    axis: i64,
    block: usize,
    out_dt: DType,
) -> Result<Tensor> {
    let small_x = x.dtype().is_small() && x.dtype() != DType::F8E8M0;
    if !x.dtype().is_int() && !small_x {
        return Err(Error::unsupported_dtype(format!(
            "DequantizeLinear of {}",
            x.dtype()
        )));
    }
    if !out_dt.is_float() {
        return Err(Error::dtype(format!(
            "DequantizeLinear output must be a float type, got {out_dt}"
        )));
    }
    if let Some(z) = zp {
        if z.dtype() != x.dtype() {
            return Err(Error::dtype(format!(
                "DequantizeLinear zero point is {} but x is {}",
                z.dtype(),
                x.dtype()
            )));
        }
    }
    if !scale.dtype().is_float() && scale.dtype() != DType::F8E8M0 {
        return Err(Error::dtype(format!(
            "DequantizeLinear scale of {}",
            scale.dtype()
        )));
    }
    let qp = QParams::new(x.shape(), scale.shape(), axis, block)?;
    let s = scale.to_f32_vec()?;
    let n = numel(x.shape(), DType::F32)?;
    if small_x {
        // Narrow types decode exactly to f32: y = (x - zp) * scale.
        let z = check_zp_f32(scale, zp)?;
        let xs = x.to_f32_vec()?;
        let mut out = vec![0f32; n];
        qp.for_each(|start, len, p| {
            let sc = *s.get(p).ok_or_else(internal)?;
            let zz = match &z {
                Some(z) => *z.get(p).ok_or_else(internal)?,
                None => 0.0,
            };
            let src = xs.get(start..start + len).ok_or_else(internal)?;
            let dst = out.get_mut(start..start + len).ok_or_else(internal)?;
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = (v - zz) * sc;
            }
            Ok(())
        })?;
        let t = Tensor::from_vec(x.shape().to_vec(), out)?;
        return if out_dt == DType::F32 {
            Ok(t)
        } else {
            t.cast(out_dt)
        };
    }
    let z = check_zp(scale, zp)?;
    let mut out = vec![0f32; n];
    crate::dispatch!(int x.dtype(), "DequantizeLinear", T => {
        let xs = x.as_slice::<T>()?;
        qp.for_each(|start, len, p| {
            let sc = *s.get(p).ok_or_else(internal)?;
            let zz = match &z {
                Some(z) => *z.get(p).ok_or_else(internal)?,
                None => 0,
            };
            let src = xs.get(start..start + len).ok_or_else(internal)?;
            let dst = out.get_mut(start..start + len).ok_or_else(internal)?;
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = (v.to_i64() - zz) as f32 * sc;
            }
            Ok(())
        })
    })?;
    let t = Tensor::from_vec(x.shape().to_vec(), out)?;
    if out_dt == DType::F32 {
        Ok(t)
    } else {
        t.cast(out_dt)
    }
}

/// onnxruntime's dynamic uint8 parameters of a float tensor: the range widened to hold 0,
/// scale = range / 255 (1 for an all-zero range), zero point rounded half to even.
pub fn dynamic_qparams(xs: &[f32]) -> (f32, u8) {
    let mut mx = 0f32;
    let mut mn = 0f32;
    for &v in xs {
        mx = mx.max(v);
        mn = mn.min(v);
    }
    let scale = if mx == mn { 1.0 } else { (mx - mn) / 255.0 };
    let zp = (0.0 - mn / scale).clamp(0.0, 255.0).round_ties_even();
    (scale, zp as u8)
}

/// uint8 quantization with one scale and zero point: clamp(round(x / scale) + zp).
pub fn quantize_u8(xs: &[f32], scale: f32, zp: u8) -> Result<Vec<u8>> {
    let mut y = alloc_vec::<u8>(xs.len())?;
    let z = f32::from(zp);
    for (d, &v) in y.iter_mut().zip(xs) {
        *d = (round_even_f32(v / scale) + z).clamp(0.0, 255.0) as u8;
    }
    Ok(y)
}

/// `DynamicQuantizeLinear`: (y uint8, scale f32 scalar, zero point uint8 scalar).
pub fn dynamic_quantize_linear(x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let xs = x.as_slice::<f32>()?;
    let (scale, zp) = dynamic_qparams(xs);
    let y = quantize_u8(xs, scale, zp)?;
    Ok((
        Tensor::from_vec(x.shape().to_vec(), y)?,
        Tensor::scalar(scale),
        Tensor::scalar(zp),
    ))
}

// ---------------------------------------------------------------------------------------
// 8-bit operands, scales and zero points
// ---------------------------------------------------------------------------------------

/// A borrowed uint8 or int8 buffer.
#[derive(Clone, Copy, Debug)]
pub enum Q8<'a> {
    U8(&'a [u8]),
    I8(&'a [i8]),
}

impl<'a> Q8<'a> {
    /// The data of an 8-bit tensor; `what` names it in the error.
    pub fn of(t: &'a Tensor, what: &str) -> Result<Q8<'a>> {
        match t.dtype() {
            DType::U8 => Ok(Q8::U8(t.as_slice()?)),
            DType::I8 => Ok(Q8::I8(t.as_slice()?)),
            dt => Err(Error::dtype(format!(
                "{what} must be uint8 or int8, got {dt}"
            ))),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Q8::U8(d) => d.len(),
            Q8::I8(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The sub-buffer `start..start + len`, checked.
    pub fn part(&self, start: usize, len: usize) -> Result<Q8<'a>> {
        let r = start..start.checked_add(len).ok_or_else(internal)?;
        Ok(match self {
            Q8::U8(d) => Q8::U8(d.get(r).ok_or_else(internal)?),
            Q8::I8(d) => Q8::I8(d.get(r).ok_or_else(internal)?),
        })
    }
    #[inline]
    pub fn get(&self, i: usize) -> i32 {
        match self {
            Q8::U8(d) => i32::from(d[i]),
            Q8::I8(d) => i32::from(d[i]),
        }
    }
    /// As a qgemm operand with zero points `zps`.
    pub fn mat(self, zps: &'a [i32]) -> QMat<'a> {
        match self {
            Q8::U8(d) => QMat::U8(d, zps),
            Q8::I8(d) => QMat::I8(d, zps),
        }
    }
}

/// Integer range of an 8-bit (or 16-bit) quantized type.
pub fn int_range(dt: DType) -> Result<(i32, i32)> {
    Ok(match dt {
        DType::U8 => (0, 255),
        DType::I8 => (-128, 127),
        DType::U16 => (0, 65535),
        DType::I16 => (-32768, 32767),
        other => {
            return Err(Error::unsupported_dtype(format!(
                "quantized type {other} (expected uint8 or int8)"
            )))
        }
    })
}

/// Zero point values as i32, `[0]` when absent; the dtype must be the data's.
pub fn zero_points(zp: Option<&Tensor>, data_dt: DType, what: &str) -> Result<Vec<i32>> {
    let Some(z) = zp else { return Ok(vec![0]) };
    if z.dtype() != data_dt {
        return Err(Error::dtype(format!(
            "{what} is {} but the data is {data_dt}",
            z.dtype()
        )));
    }
    let v: Vec<i32> = match z.dtype() {
        DType::U8 => z.as_slice::<u8>()?.iter().map(|&v| i32::from(v)).collect(),
        DType::I8 => z.as_slice::<i8>()?.iter().map(|&v| i32::from(v)).collect(),
        DType::U16 => z.as_slice::<u16>()?.iter().map(|&v| i32::from(v)).collect(),
        DType::I16 => z.as_slice::<i16>()?.iter().map(|&v| i32::from(v)).collect(),
        dt => {
            return Err(Error::dtype(format!(
                "{what} must be an 8- or 16-bit integer, got {dt}"
            )))
        }
    };
    if v.is_empty() {
        return Err(Error::shape(format!("{what} is empty")));
    }
    Ok(v)
}

/// A zero point that must hold one value.
pub fn scalar_zp(zp: Option<&Tensor>, data_dt: DType, what: &str) -> Result<i32> {
    let v = zero_points(zp, data_dt, what)?;
    match v.as_slice() {
        [z] => Ok(*z),
        _ => Err(Error::shape(format!(
            "{what} must be a scalar, got {} values",
            v.len()
        ))),
    }
}

/// Scale values as f32 (any float type), at least one.
pub fn scales(t: &Tensor, what: &str) -> Result<Vec<f32>> {
    if !t.dtype().is_float() {
        return Err(Error::dtype(format!(
            "{what} must be a float tensor, got {}",
            t.dtype()
        )));
    }
    let v = t.to_f32_vec()?;
    if v.is_empty() {
        return Err(Error::shape(format!("{what} is empty")));
    }
    Ok(v)
}

/// A scale that must hold one value.
pub fn scalar_scale(t: &Tensor, what: &str) -> Result<f32> {
    let v = scales(t, what)?;
    match v.as_slice() {
        [s] => Ok(*s),
        _ => Err(Error::shape(format!(
            "{what} must be a scalar, got {} values",
            v.len()
        ))),
    }
}

/// Checks that a per-channel parameter has 1 or `n` values.
fn per_channel(len: usize, n: usize, what: &str) -> Result<()> {
    if len == 1 || len == n {
        Ok(())
    } else {
        Err(Error::shape(format!(
            "{what} has {len} values; expected 1 or {n}"
        )))
    }
}

#[inline(always)]
fn pick<T: Copy>(v: &[T], i: usize) -> T {
    if v.len() == 1 {
        v[0]
    } else {
        v[i]
    }
}

/// onnxruntime's requantization of an i32 accumulator: round half to even of
/// `acc * mult` (in f32), plus the zero point, saturated to `[lo, hi]`.
#[inline(always)]
pub fn requant(acc: i32, mult: f32, zp: i32, lo: i32, hi: i32) -> i32 {
    (round_to_int(acc as f32 * mult) + zp).clamp(lo, hi)
}

/// Round half to even to an integer, limited to ±2^22, for values that are then saturated
/// to an 8/16-bit range (|zero point|, |limits| ≤ 65535, so the limit changes nothing).
/// Written with integer ops only, so loops over it vectorize (a float→int `as` is
/// saturating and stays scalar): adding 1.5·2^23 leaves the rounded integer in the low
/// mantissa bits. (NaN lands on a limit.)
#[inline(always)]
pub fn round_to_int(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    const MAGIC_BITS: i32 = 0x4B40_0000;
    let x = v.clamp(-4_194_304.0, 4_194_304.0);
    (x + MAGIC).to_bits() as i32 - MAGIC_BITS
}

/// Builds a uint8/int8/uint16/int16 tensor from values already in range.
pub fn int_tensor(dt: DType, shape: Vec<usize>, v: &[i32]) -> Result<Tensor> {
    match dt {
        DType::U8 => Tensor::from_vec(shape, v.iter().map(|&x| x as u8).collect::<Vec<_>>()),
        DType::I8 => Tensor::from_vec(shape, v.iter().map(|&x| x as i8).collect::<Vec<_>>()),
        DType::U16 => Tensor::from_vec(shape, v.iter().map(|&x| x as u16).collect::<Vec<_>>()),
        DType::I16 => Tensor::from_vec(shape, v.iter().map(|&x| x as i16).collect::<Vec<_>>()),
        other => Err(Error::unsupported_dtype(format!(
            "quantized output of type {other}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Integer matmul (MatMulInteger, QLinearMatMul, MatMulIntegerToFloat, DynamicQuantizeMatMul)
// ---------------------------------------------------------------------------------------

/// Packs a constant 2-D B (K×N) of an integer matmul with its zero points (scalar or
/// per column). Returns None where B is not 2-D (batched B runs raw).
pub fn pack_matmul_b(b: &Tensor, b_zp: Option<&Tensor>) -> Result<Option<QPacked>> {
    let [k, n] = *b.shape() else { return Ok(None) };
    let zps = zero_points(b_zp, b.dtype(), "b_zero_point")?;
    per_channel(zps.len(), n, "b_zero_point")?;
    let q = Q8::of(b, "B")?;
    Ok(Some(QPacked::new(Side::B, k, n, q.mat(&zps))?))
}

/// The B operand of [`int_matmul`]: raw data with its zero points, or packed at load.
#[derive(Clone, Copy, Debug)]
pub enum MatB<'a> {
    Raw(&'a Tensor, &'a [i32]),
    Packed(&'a QPacked),
}

impl<'a> MatB<'a> {
    /// `packed` when it is B as given (2-D, same dims), else the raw tensor.
    pub fn pick(b: &'a Tensor, zps: &'a [i32], packed: Option<&'a QPacked>) -> MatB<'a> {
        match packed {
            Some(p) if b.shape() == [p.rows, p.cols] => MatB::Packed(p),
            _ => MatB::Raw(b, zps),
        }
    }
}

/// i32 accumulators of (A − a_zp)·(B − b_zp) with numpy matmul broadcasting. A's zero
/// points are one or one per row of each matrix; raw B's are one, one per column, or one
/// per column of each matrix of a batched B. Returns (output shape, accumulators, n).
pub fn int_matmul(a: &Tensor, a_zps: &[i32], b: MatB) -> Result<(Vec<usize>, Vec<i32>, usize)> {
    let qa = Q8::of(a, "A")?;
    let b_shape = match b {
        MatB::Raw(t, _) => t.shape().to_vec(),
        MatB::Packed(p) => vec![p.rows, p.cols],
    };
    let p = matmul_plan(a.shape(), &b_shape)?;
    let (m, k, n) = (p.m, p.k, p.n);
    per_channel(a_zps.len(), m, "a_zero_point")?;
    let raw = match b {
        MatB::Raw(t, zps) => {
            let b_mats = if t.rank() >= 2 {
                t.len() / (k * n).max(1)
            } else {
                1
            };
            if zps.len() != 1 && zps.len() != n && zps.len() != n * b_mats {
                return Err(Error::shape(format!(
                    "b_zero_point has {} values; expected 1, {n} or {}",
                    zps.len(),
                    n * b_mats
                )));
            }
            Some((Q8::of(t, "B")?, zps))
        }
        MatB::Packed(_) => None,
    };
    let total = numel(&p.out_shape, DType::I32)?;
    let mut acc = alloc_vec::<i32>(total)?;
    if total == 0 {
        return Ok((p.out_shape, acc, n));
    }
    let b_op = |ob: usize| -> Result<QOperand> {
        match (b, raw) {
            (MatB::Packed(pb), _) => Ok(QOperand::Packed(pb)),
            (_, Some((qb, zps))) => {
                // One zero point row per matrix of a batched B.
                let zs = if zps.len() > n && n > 0 {
                    let mi = ob / (k * n).max(1);
                    zps.get(mi * n..(mi + 1) * n).ok_or_else(internal)?
                } else {
                    zps
                };
                Ok(QOperand::Raw(qb.part(ob, k * n)?.mat(zs)))
            }
            _ => Err(internal()),
        }
    };
    if p.fold_batch && a_zps.len() == 1 {
        let rows = total / n.max(1);
        let am = qa.part(0, rows * k)?.mat(a_zps);
        qgemm(rows, k, n, QOperand::Raw(am), b_op(0)?, &mut acc)?;
    } else if p.fold_batch {
        for bi in 0..total / (m * n).max(1) {
            let am = qa.part(bi * m * k, m * k)?.mat(a_zps);
            let c = acc
                .get_mut(bi * m * n..(bi + 1) * m * n)
                .ok_or_else(internal)?;
            qgemm(m, k, n, QOperand::Raw(am), b_op(0)?, c)?;
        }
    } else {
        for (bi, &(oa, ob)) in p.offsets.iter().enumerate() {
            let am = qa.part(oa, m * k)?.mat(a_zps);
            let c = acc
                .get_mut(bi * m * n..(bi + 1) * m * n)
                .ok_or_else(internal)?;
            qgemm(m, k, n, QOperand::Raw(am), b_op(ob)?, c)?;
        }
    }
    Ok((p.out_shape, acc, n))
}

/// `MatMulInteger`: i32 output.
pub fn matmul_integer(
    a: &Tensor,
    b: &Tensor,
    a_zp: Option<&Tensor>,
    b_zp: Option<&Tensor>,
    packed: Option<&QPacked>,
) -> Result<Tensor> {
    let az = zero_points(a_zp, a.dtype(), "a_zero_point")?;
    let bz = zero_points(b_zp, b.dtype(), "b_zero_point")?;
    let (shape, acc, _) = int_matmul(a, &az, MatB::pick(b, &bz, packed))?;
    Tensor::from_vec(shape, acc)
}

/// `QLinearMatMul`: per-tensor or per-row A, per-tensor or per-column B, per-tensor Y.
#[allow(clippy::too_many_arguments)]
pub fn qlinear_matmul(
    a: &Tensor,
    a_scale: &Tensor,
    a_zp: Option<&Tensor>,
    b: &Tensor,
    b_scale: &Tensor,
    b_zp: Option<&Tensor>,
    y_scale: &Tensor,
    y_zp: Option<&Tensor>,
    packed: Option<&QPacked>,
) -> Result<Tensor> {
    let az = zero_points(a_zp, a.dtype(), "a_zero_point")?;
    let bz = zero_points(b_zp, b.dtype(), "b_zero_point")?;
    let ydt = y_zp.map_or(a.dtype(), |z| z.dtype());
    let yz = scalar_zp(y_zp, ydt, "y_zero_point")?;
    let asc = scales(a_scale, "a_scale")?;
    let bsc = scales(b_scale, "b_scale")?;
    let ys = scalar_scale(y_scale, "y_scale")?;
    let (shape, acc, n) = int_matmul(a, &az, MatB::pick(b, &bz, packed))?;
    let m = if a.rank() >= 2 {
        a.shape()[a.rank() - 2]
    } else {
        1
    };
    per_channel(asc.len(), m, "a_scale")?;
    per_channel(bsc.len(), n, "b_scale")?;
    let (lo, hi) = int_range(ydt)?;
    let mut out = acc;
    for (r, row) in out.chunks_mut(n.max(1)).enumerate() {
        let sa = pick(&asc, r % m.max(1));
        for (j, v) in row.iter_mut().enumerate() {
            *v = requant(*v, sa * pick(&bsc, j) / ys, yz, lo, hi);
        }
    }
    int_tensor(ydt, shape, &out)
}

/// Float output of an integer matmul: acc · (a_scale · b_scale[j]) + bias[j].
/// `b_scale` is one value or one per column.
fn scale_bias_output(
    acc: &[i32],
    n: usize,
    a_scale: f32,
    b_scale: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    per_channel(b_scale.len(), n, "b_scale")?;
    if let Some(bv) = bias {
        if bv.len() != n {
            return Err(Error::shape(format!(
                "bias has {} values for {n} columns",
                bv.len()
            )));
        }
    }
    let mult: Vec<f32> = b_scale.iter().map(|&s| a_scale * s).collect();
    let mut y = alloc_vec::<f32>(acc.len())?;
    for (yr, ar) in y.chunks_mut(n.max(1)).zip(acc.chunks(n.max(1))) {
        for (j, (d, &a)) in yr.iter_mut().zip(ar).enumerate() {
            let v = a as f32 * pick(&mult, j);
            *d = match bias {
                Some(b) => v + b[j],
                None => v,
            };
        }
    }
    Ok(y)
}

fn float_bias(bias: Option<&Tensor>) -> Result<Option<Vec<f32>>> {
    bias.map(|b| scales(b, "bias")).transpose()
}

/// `MatMulIntegerToFloat` (com.microsoft): float output.
#[allow(clippy::too_many_arguments)]
pub fn matmul_integer_to_float(
    a: &Tensor,
    b: &Tensor,
    a_scale: &Tensor,
    b_scale: &Tensor,
    a_zp: Option<&Tensor>,
    b_zp: Option<&Tensor>,
    bias: Option<&Tensor>,
    packed: Option<&QPacked>,
) -> Result<Tensor> {
    let az = scalar_zp(a_zp, a.dtype(), "a_zero_point")?;
    let bz = zero_points(b_zp, b.dtype(), "b_zero_point")?;
    let sa = scalar_scale(a_scale, "a_scale")?;
    let sb = scales(b_scale, "b_scale")?;
    let bias_v = float_bias(bias)?;
    let (shape, acc, n) = int_matmul(a, &[az], MatB::pick(b, &bz, packed))?;
    let y = scale_bias_output(&acc, n, sa, &sb, bias_v.as_deref())?;
    let out_dt = a_scale.dtype();
    let t = Tensor::from_vec(shape, y)?;
    if out_dt == DType::F32 {
        Ok(t)
    } else {
        t.cast(out_dt)
    }
}

/// `DynamicQuantizeMatMul` (com.microsoft): A is quantized to uint8 with its own range
/// (as DynamicQuantizeLinear), then multiplied as MatMulIntegerToFloat.
pub fn dynamic_quantize_matmul(
    a: &Tensor,
    b: &Tensor,
    b_scale: &Tensor,
    b_zp: Option<&Tensor>,
    bias: Option<&Tensor>,
    packed: Option<&QPacked>,
) -> Result<Tensor> {
    if a.dtype() != DType::F32 {
        return Err(Error::dtype(format!(
            "DynamicQuantizeMatMul A must be float32, got {}",
            a.dtype()
        )));
    }
    let xs = a.as_slice::<f32>()?;
    let (sa, za) = dynamic_qparams(xs);
    let qa = Tensor::from_vec(a.shape().to_vec(), quantize_u8(xs, sa, za)?)?;
    let bz = zero_points(b_zp, b.dtype(), "b_zero_point")?;
    let sb = scales(b_scale, "b_scale")?;
    let bias_v = float_bias(bias)?;
    let (shape, acc, n) = int_matmul(&qa, &[i32::from(za)], MatB::pick(b, &bz, packed))?;
    let y = scale_bias_output(&acc, n, sa, &sb, bias_v.as_deref())?;
    Tensor::from_vec(shape, y)
}

// ---------------------------------------------------------------------------------------
// QGemm
// ---------------------------------------------------------------------------------------

/// Row-major 8-bit matrix, transposed if `trans` (rows×cols as stored).
fn transpose_q8(t: &Tensor, trans: bool) -> Result<Tensor> {
    if !trans {
        return Ok(t.clone());
    }
    crate::cpu::layout::transpose(t, Some(&[1, 0]))
}

/// The packed B of QGemm (after `transB`), K×N with scalar or per-column zero points.
pub fn pack_qgemm_b(b: &Tensor, b_zp: Option<&Tensor>, trans_b: bool) -> Result<Option<QPacked>> {
    if b.rank() != 2 {
        return Err(Error::shape(format!(
            "QGemm B must be 2-D, got {:?}",
            b.shape()
        )));
    }
    pack_matmul_b(&transpose_q8(b, trans_b)?, b_zp)
}

/// QGemm attributes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QGemmAttrs {
    pub alpha: f32,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// Adds an int32 bias C broadcast to (m, n): shapes (), (1), (n), (1, n), (m, 1), (m, n).
fn add_c(acc: &mut [i32], m: usize, n: usize, c: &Tensor) -> Result<()> {
    let cv = c
        .as_slice::<i32>()
        .map_err(|_| Error::dtype(format!("QGemm C must be int32, got {}", c.dtype())))?;
    let s = c.shape();
    let idx: Box<dyn Fn(usize, usize) -> usize> = match (s.len(), cv.len()) {
        (_, 1) => Box::new(|_, _| 0),
        (1, l) if l == n => Box::new(|_, j| j),
        (2, l) if s[0] == 1 && l == n => Box::new(|_, j| j),
        (2, l) if s[1] == 1 && l == m => Box::new(|i, _| i),
        (2, l) if l == m * n && s[0] == m => Box::new(move |i, j| i * n + j),
        _ => {
            return Err(Error::shape(format!(
                "QGemm C of shape {s:?} does not broadcast to [{m}, {n}]"
            )))
        }
    };
    for i in 0..m {
        for j in 0..n {
            let v = acc.get_mut(i * n + j).ok_or_else(internal)?;
            *v = v.wrapping_add(*cv.get(idx(i, j)).ok_or_else(internal)?);
        }
    }
    Ok(())
}

/// `QGemm` (com.microsoft): Y = alpha · (A − a_zp)(B − b_zp) · a_scale · b_scale (+ C in
/// the accumulator scale), requantized to y's type when `y_zero_point` is given, else float.
#[allow(clippy::too_many_arguments)]
pub fn qgemm_op(
    a: &Tensor,
    a_scale: &Tensor,
    a_zp: &Tensor,
    b: &Tensor,
    b_scale: &Tensor,
    b_zp: &Tensor,
    c: Option<&Tensor>,
    y_scale: Option<&Tensor>,
    y_zp: Option<&Tensor>,
    attrs: &QGemmAttrs,
    packed: Option<&QPacked>,
) -> Result<Tensor> {
    if a.rank() != 2 || b.rank() != 2 {
        return Err(Error::shape(format!(
            "QGemm needs 2-D A and B, got {:?} and {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let at = transpose_q8(a, attrs.trans_a)?;
    let az = scalar_zp(Some(a_zp), a.dtype(), "a_zero_point")?;
    let bz = zero_points(Some(b_zp), b.dtype(), "b_zero_point")?;
    let sa = scalar_scale(a_scale, "a_scale")?;
    let sb = scales(b_scale, "b_scale")?;
    let (kb, nb) = if attrs.trans_b {
        (b.shape()[1], b.shape()[0])
    } else {
        (b.shape()[0], b.shape()[1])
    };
    let bt;
    let bm = match packed {
        Some(p) if p.rows == kb && p.cols == nb => MatB::Packed(p),
        _ => {
            bt = transpose_q8(b, attrs.trans_b)?;
            MatB::Raw(&bt, &bz)
        }
    };
    let (shape, mut acc, n) = int_matmul(&at, &[az], bm)?;
    let m = shape.first().copied().unwrap_or(0);
    per_channel(sb.len(), n, "b_scale")?;
    if let Some(c) = c {
        add_c(&mut acc, m, n, c)?;
    }
    let ys = y_scale.map(|t| scalar_scale(t, "y_scale")).transpose()?;
    let mult: Vec<f32> = sb
        .iter()
        .map(|&s| {
            let v = attrs.alpha * sa * s;
            match ys {
                Some(y) => v / y,
                None => v,
            }
        })
        .collect();
    match y_zp {
        Some(z) => {
            if ys.is_none() {
                return Err(Error::input("QGemm y_zero_point needs y_scale"));
            }
            let ydt = z.dtype();
            let yz = scalar_zp(Some(z), ydt, "y_zero_point")?;
            let (lo, hi) = int_range(ydt)?;
            for row in acc.chunks_mut(n.max(1)) {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = requant(*v, pick(&mult, j), yz, lo, hi);
                }
            }
            int_tensor(ydt, shape, &acc)
        }
        None => {
            let y = scale_bias_output(&acc, n, 1.0, &mult, None)?;
            Tensor::from_vec(shape, y)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Integer convolution (ConvInteger, QLinearConv)
// ---------------------------------------------------------------------------------------

/// Packs constant conv weights [M, C/group, k…] as one A operand per group
/// (M/group rows of C/group·k taps), with scalar or per-output-channel zero points.
pub fn pack_conv_weights(w: &Tensor, w_zp: Option<&Tensor>, group: usize) -> Result<Vec<QPacked>> {
    let ws = w.shape();
    if ws.len() < 3 || group == 0 || !ws[0].is_multiple_of(group) {
        return Err(Error::shape(format!(
            "conv weights {ws:?} do not fit group {group}"
        )));
    }
    let m = ws[0];
    let mg = m / group;
    let krows: usize = ws[1..].iter().product();
    let zps = zero_points(w_zp, w.dtype(), "w_zero_point")?;
    per_channel(zps.len(), m, "w_zero_point")?;
    let q = Q8::of(w, "W")?;
    (0..group)
        .map(|g| {
            let zs = if zps.len() == 1 {
                &zps[..]
            } else {
                zps.get(g * mg..(g + 1) * mg).ok_or_else(internal)?
            };
            QPacked::new(
                Side::A,
                mg,
                krows,
                q.part(g * mg * krows, mg * krows)?.mat(zs),
            )
        })
        .collect()
}

/// Output indices `o` in `0..out` for which `o*s + off - pad` lies in `0..len`.
fn valid_range(out: usize, s: usize, off: usize, pad: usize, len: usize) -> (usize, usize) {
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

/// im2col of `channels` planes of x: rows = channel × kernel tap, columns = output
/// positions; taps that fall in the padding get `pad` (the input zero point, so that
/// they contribute nothing once it is subtracted).
fn im2col_q<T: Copy>(x: &[T], channels: usize, g: &Geom, pad: T, col: &mut [T]) -> Result<()> {
    let [idd, ih, iw] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [odn, ohn, ow] = g.output;
    let plane = g.in_size();
    let ncols = g.out_size();
    let mut row = 0;
    for c in 0..channels {
        let xc = x.get(c * plane..(c + 1) * plane).ok_or_else(internal)?;
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let dst = col
                        .get_mut(row * ncols..(row + 1) * ncols)
                        .ok_or_else(internal)?;
                    row += 1;
                    let offw = e * g.dilation[2];
                    let (lo, hi) = valid_range(ow, g.stride[2], offw, g.pad_begin[2], iw);
                    for od in 0..odn {
                        for oh in 0..ohn {
                            let r = od * ohn + oh;
                            let seg = &mut dst[r * ow..(r + 1) * ow];
                            let zd = od * g.stride[0] + a * g.dilation[0];
                            let zh = oh * g.stride[1] + b * g.dilation[1];
                            let inside = zd >= g.pad_begin[0]
                                && zd - g.pad_begin[0] < idd
                                && zh >= g.pad_begin[1]
                                && zh - g.pad_begin[1] < ih;
                            if !inside || lo >= hi {
                                seg.fill(pad);
                                continue;
                            }
                            let base = ((zd - g.pad_begin[0]) * ih + (zh - g.pad_begin[1])) * iw;
                            let src = xc.get(base..base + iw).ok_or_else(internal)?;
                            seg[..lo].fill(pad);
                            seg[hi..].fill(pad);
                            let first = lo * g.stride[2] + offw - g.pad_begin[2];
                            for (j, d) in seg[lo..hi].iter_mut().enumerate() {
                                *d = *src.get(first + j * g.stride[2]).ok_or_else(internal)?;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// i32 accumulators of an integer conv: Σ (x − x_zp)(w − w_zp[m]) over each window.
/// `packed` are the weights from [`pack_conv_weights`]. Returns (output shape, acc).
pub fn int_conv(
    x: &Tensor,
    x_zp: i32,
    w: &Tensor,
    w_zps: &[i32],
    packed: Option<&[QPacked]>,
    win: &Window,
    group: usize,
) -> Result<(Vec<usize>, Vec<i32>)> {
    let qx = Q8::of(x, "X")?;
    let qw = Q8::of(w, "W")?;
    let d = conv_dims(x.shape(), w.shape(), group)?;
    per_channel(w_zps.len(), d.m, "w_zero_point")?;
    let g = win.resolve(&x.shape()[2..], &w.shape()[2..])?;
    let mut oshape = vec![d.n, d.m];
    oshape.extend_from_slice(g.out_dims());
    let total = numel(&oshape, DType::I32)?;
    let mut acc = alloc_vec::<i32>(total)?;
    if total == 0 {
        return Ok((oshape, acc));
    }
    let (isz, osz) = (g.in_size(), g.out_size());
    let krows = d.cg * g.k_size();
    let packed = packed
        .filter(|p| p.len() == d.group && p.iter().all(|q| q.rows == d.mg && q.cols == krows));
    // A 1×1 kernel with unit strides and no padding reads x as it is.
    let direct =
        g.kernel == [1; 3] && g.stride == [1; 3] && g.pad_begin == [0; 3] && g.pad_end == [0; 3];
    let ncol = if direct { 0 } else { krows * osz };
    let mut col_u8 = Vec::new();
    let mut col_i8 = Vec::new();
    match qx {
        Q8::U8(_) => col_u8 = alloc_vec::<u8>(ncol)?,
        Q8::I8(_) => col_i8 = alloc_vec::<i8>(ncol)?,
    }
    let xz = [x_zp];
    // One input channel per group (depthwise): a direct kernel beats a GEMM with one
    // row of depth k².
    if d.cg == 1 && d.group == d.c && d.group > 1 {
        crate::cpu::qconv::qdepthwise(qx.mat(&xz), d.n, d.c, qw.mat(w_zps), d.m, &g, &mut acc)?;
        return Ok((oshape, acc));
    }
    for n in 0..d.n {
        for gi in 0..d.group {
            let xg = qx.part((n * d.c + gi * d.cg) * isz, d.cg * isz)?;
            let b = if direct {
                xg
            } else {
                match xg {
                    Q8::U8(v) => {
                        let pad = u8::try_from(x_zp)
                            .map_err(|_| Error::input("x_zero_point out of range"))?;
                        im2col_q(v, d.cg, &g, pad, &mut col_u8)?;
                        Q8::U8(&col_u8)
                    }
                    Q8::I8(v) => {
                        let pad = i8::try_from(x_zp)
                            .map_err(|_| Error::input("x_zero_point out of range"))?;
                        im2col_q(v, d.cg, &g, pad, &mut col_i8)?;
                        Q8::I8(&col_i8)
                    }
                }
            };
            let a = match packed {
                Some(p) => QOperand::Packed(&p[gi]),
                None => {
                    let zs = if w_zps.len() == 1 {
                        w_zps
                    } else {
                        w_zps.get(gi * d.mg..(gi + 1) * d.mg).ok_or_else(internal)?
                    };
                    QOperand::Raw(qw.part(gi * d.mg * krows, d.mg * krows)?.mat(zs))
                }
            };
            let c0 = (n * d.m + gi * d.mg) * osz;
            let c = acc.get_mut(c0..c0 + d.mg * osz).ok_or_else(internal)?;
            qgemm(d.mg, krows, osz, a, QOperand::Raw(b.mat(&xz)), c)?;
        }
    }
    Ok((oshape, acc))
}

/// `ConvInteger`: i32 output.
pub fn conv_integer(
    x: &Tensor,
    w: &Tensor,
    x_zp: Option<&Tensor>,
    w_zp: Option<&Tensor>,
    win: &Window,
    group: usize,
    packed: Option<&[QPacked]>,
) -> Result<Tensor> {
    let xz = scalar_zp(x_zp, x.dtype(), "x_zero_point")?;
    let wz = zero_points(w_zp, w.dtype(), "w_zero_point")?;
    let (shape, acc) = int_conv(x, xz, w, &wz, packed, win, group)?;
    Tensor::from_vec(shape, acc)
}

/// `QLinearConv`: integer conv, int32 bias, requantized per output channel with
/// x_scale · w_scale[m] / y_scale.
#[allow(clippy::too_many_arguments)]
pub fn qlinear_conv(
    x: &Tensor,
    x_scale: &Tensor,
    x_zp: Option<&Tensor>,
    w: &Tensor,
    w_scale: &Tensor,
    w_zp: Option<&Tensor>,
    y_scale: &Tensor,
    y_zp: Option<&Tensor>,
    bias: Option<&Tensor>,
    win: &Window,
    group: usize,
    packed: Option<&[QPacked]>,
) -> Result<Tensor> {
    let xz = scalar_zp(x_zp, x.dtype(), "x_zero_point")?;
    let wz = zero_points(w_zp, w.dtype(), "w_zero_point")?;
    let ydt = y_zp.map_or(x.dtype(), |z| z.dtype());
    let yz = scalar_zp(y_zp, ydt, "y_zero_point")?;
    let xs = scalar_scale(x_scale, "x_scale")?;
    let wsc = scales(w_scale, "w_scale")?;
    let ys = scalar_scale(y_scale, "y_scale")?;
    let (shape, mut acc) = int_conv(x, xz, w, &wz, packed, win, group)?;
    let m = shape[1];
    per_channel(wsc.len(), m, "w_scale")?;
    let bv = match bias {
        Some(b) => {
            let v = b.as_slice::<i32>().map_err(|_| {
                Error::dtype(format!("QLinearConv bias must be int32, got {}", b.dtype()))
            })?;
            if v.len() != m {
                return Err(Error::shape(format!(
                    "QLinearConv bias has {} values for {m} channels",
                    v.len()
                )));
            }
            Some(v)
        }
        None => None,
    };
    let (lo, hi) = int_range(ydt)?;
    let mult: Vec<f32> = wsc.iter().map(|&s| xs * s / ys).collect();
    let osz: usize = shape[2..].iter().product();
    for (p, plane) in acc.chunks_mut(osz.max(1)).enumerate() {
        let ch = p % m.max(1);
        let b = bv.map_or(0, |b| b[ch]);
        let mu = pick(&mult, ch);
        for v in plane.iter_mut() {
            *v = requant(v.wrapping_add(b), mu, yz, lo, hi);
        }
    }
    int_tensor(ydt, shape, &acc)
}

/// NHWC → NCHW (`to_first`) or back, for the channels_last variants.
pub fn channels_move(t: &Tensor, to_first: bool) -> Result<Tensor> {
    let r = t.rank();
    if r < 3 {
        return Err(Error::shape(format!(
            "channels_last input needs rank >= 3, got {:?}",
            t.shape()
        )));
    }
    let perm: Vec<usize> = if to_first {
        std::iter::once(0)
            .chain(std::iter::once(r - 1))
            .chain(1..r - 1)
            .collect()
    } else {
        std::iter::once(0)
            .chain(2..r)
            .chain(std::iter::once(1))
            .collect()
    };
    crate::cpu::layout::transpose(t, Some(&perm))
}

// ---------------------------------------------------------------------------------------
// Elementwise (QLinearAdd, QLinearMul, lookup tables)
// ---------------------------------------------------------------------------------------

/// Per-tensor quantization parameters of one operand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParam {
    pub scale: f32,
    pub zp: i32,
}

impl QParam {
    /// Reads a scalar scale and an optional scalar zero point of type `dt`.
    pub fn read(scale: &Tensor, zp: Option<&Tensor>, dt: DType, what: &str) -> Result<QParam> {
        Ok(QParam {
            scale: scalar_scale(scale, &format!("{what} scale"))?,
            zp: scalar_zp(zp, dt, &format!("{what} zero point"))?,
        })
    }
}

/// Which QLinear binary op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QBinOp {
    Add,
    Mul,
}

/// `QLinearAdd` / `QLinearMul` with numpy broadcasting. Add computes
/// `zc − (ra·za + rb·zb) + a·ra + b·rb` with ra = sa/sc, rb = sb/sc in f32, as
/// onnxruntime's x86 kernel does (its other kernels differ in float rounding, so results
/// can be one unit apart); Mul computes `zc + (a − za)(b − zb) · sa·sb/sc`.
pub fn qlinear_binary(
    op: QBinOp,
    a: &Tensor,
    pa: QParam,
    b: &Tensor,
    pb: QParam,
    pc: QParam,
) -> Result<Tensor> {
    if a.dtype() != b.dtype() {
        return Err(Error::dtype(format!(
            "QLinear{op:?} inputs are {} and {}",
            a.dtype(),
            b.dtype()
        )));
    }
    let (lo, hi) = int_range(a.dtype())?;
    let zc = pc.zp as f32;
    match op {
        QBinOp::Add => {
            let ra = pa.scale / pc.scale;
            let rb = pb.scale / pc.scale;
            let fixed = zc - (ra * pa.zp as f32 + rb * pb.zp as f32);
            qbin_dispatch(a, b, lo, hi, op, move |x, y| {
                fixed + x as f32 * ra + y as f32 * rb
            })
        }
        QBinOp::Mul => {
            let r = pa.scale * pb.scale / pc.scale;
            let (za, zb) = (pa.zp, pb.zp);
            qbin_dispatch(a, b, lo, hi, op, move |x, y| {
                zc + r * ((x - za) * (y - zb)) as f32
            })
        }
    }
}

/// Binds the 8/16-bit type; `f` maps the two integer inputs to the unrounded output.
fn qbin_dispatch<F: Fn(i32, i32) -> f32 + Copy>(
    a: &Tensor,
    b: &Tensor,
    lo: i32,
    hi: i32,
    op: QBinOp,
    f: F,
) -> Result<Tensor> {
    let q = move |v: f32| round_to_int(v).clamp(lo, hi);
    match a.dtype() {
        DType::U8 => qbin_apply::<u8>(a, b, move |x, y| q(f(i32::from(x), i32::from(y))) as u8),
        DType::I8 => qbin_apply::<i8>(a, b, move |x, y| q(f(i32::from(x), i32::from(y))) as i8),
        DType::U16 => qbin_apply::<u16>(a, b, move |x, y| q(f(i32::from(x), i32::from(y))) as u16),
        dt => Err(Error::unsupported_dtype(format!("QLinear{op:?} of {dt}"))),
    }
}

/// Elementwise `g` with the common layouts (same shape, one side a single value) done
/// in one tight loop; other broadcasts take the general path (same arithmetic, so the
/// same bits).
fn qbin_apply<T: crate::tensor::Elem + Copy>(
    a: &Tensor,
    b: &Tensor,
    g: impl Fn(T, T) -> T + Copy,
) -> Result<Tensor> {
    let (xa, xb) = (a.as_slice::<T>()?, b.as_slice::<T>()?);
    let (sa, sb) = (a.shape(), b.shape());
    let out = if sa == sb {
        let mut o = alloc_vec::<T>(xa.len())?;
        for ((d, &x), &y) in o.iter_mut().zip(xa).zip(xb) {
            *d = g(x, y);
        }
        Some((sa, o))
    } else if xb.len() == 1 && sb.len() <= sa.len() {
        let y = xb[0];
        let mut o = alloc_vec::<T>(xa.len())?;
        for (d, &x) in o.iter_mut().zip(xa) {
            *d = g(x, y);
        }
        Some((sa, o))
    } else if xa.len() == 1 && sa.len() <= sb.len() {
        let x = xa[0];
        let mut o = alloc_vec::<T>(xb.len())?;
        for (d, &y) in o.iter_mut().zip(xb) {
            *d = g(x, y);
        }
        Some((sb, o))
    } else {
        None
    };
    match out {
        Some((shape, o)) => Tensor::from_vec(shape.to_vec(), o),
        None => crate::cpu::elementwise::binary::<T, T, T>(a, b, |&x, &y| g(x, y)),
    }
}

/// A 256-entry table mapping every 8-bit input byte to its output byte:
/// y = quantize(f(dequantize(x))), as onnxruntime's lookup-table ops build it.
pub fn lookup_table(
    dt: DType,
    px: QParam,
    py: QParam,
    f: impl Fn(f32) -> f32,
) -> Result<[u8; 256]> {
    let (lo, hi) = int_range(dt)?;
    let mut t = [0u8; 256];
    for (i, e) in t.iter_mut().enumerate() {
        let x = if dt == DType::I8 {
            i32::from(i as u8 as i8)
        } else {
            i as i32
        };
        let v = f(px.scale * (x - px.zp) as f32);
        let q = (round_even_f32(v / py.scale) + py.zp as f32).clamp(lo as f32, hi as f32) as i32;
        *e = q as u8;
    }
    Ok(t)
}

/// Maps an 8-bit tensor through a 256-entry byte table.
pub fn apply_table(x: &Tensor, table: &[u8; 256]) -> Result<Tensor> {
    match x.dtype() {
        DType::U8 => {
            let v: Vec<u8> = x
                .as_slice::<u8>()?
                .iter()
                .map(|&b| table[usize::from(b)])
                .collect();
            Tensor::from_vec(x.shape().to_vec(), v)
        }
        DType::I8 => {
            let v: Vec<i8> = x
                .as_slice::<i8>()?
                .iter()
                .map(|&b| table[usize::from(b as u8)] as i8)
                .collect();
            Tensor::from_vec(x.shape().to_vec(), v)
        }
        dt => Err(Error::dtype(format!("expected uint8 or int8, got {dt}"))),
    }
}

/// y[i] = table[byte of x[i]] for an 8-bit `x` and a 256-entry `table` of any of the
/// types the lookup-table pass produces; the shape is `x`'s, left-padded with 1s to
/// `rank`.
pub fn gather_table(x: &Tensor, table: &Tensor, rank: usize) -> Result<Tensor> {
    if table.len() != 256 {
        return Err(Error::shape(format!(
            "a lookup table needs 256 entries, has {}",
            table.len()
        )));
    }
    let mut shape = vec![1; rank.saturating_sub(x.rank())];
    shape.extend_from_slice(x.shape());
    match table.dtype() {
        DType::U8 => gather_as::<u8>(x, table, shape),
        DType::I8 => gather_as::<i8>(x, table, shape),
        DType::U16 => gather_as::<u16>(x, table, shape),
        DType::I16 => gather_as::<i16>(x, table, shape),
        DType::I32 => gather_as::<i32>(x, table, shape),
        DType::F32 => gather_as::<f32>(x, table, shape),
        dt => Err(Error::unsupported_dtype(format!("a lookup table of {dt}"))),
    }
}

fn gather_as<T: crate::tensor::Elem + Copy>(
    x: &Tensor,
    table: &Tensor,
    shape: Vec<usize>,
) -> Result<Tensor> {
    let t: &[T; 256] = table
        .as_slice::<T>()?
        .try_into()
        .map_err(|_| Error::shape("a lookup table needs 256 entries"))?;
    let mut out = alloc_vec::<T>(x.len())?;
    match x.dtype() {
        DType::U8 => {
            for (o, &b) in out.iter_mut().zip(x.as_slice::<u8>()?) {
                *o = t[usize::from(b)];
            }
        }
        DType::I8 => {
            for (o, &b) in out.iter_mut().zip(x.as_slice::<i8>()?) {
                *o = t[usize::from(b as u8)];
            }
        }
        dt => return Err(Error::dtype(format!("expected uint8 or int8, got {dt}"))),
    }
    Tensor::from_vec(shape, out)
}

/// `QLinearConcat` (com.microsoft): inputs whose scale and zero point differ from the
/// output's are requantized through a lookup table, then concatenated.
pub fn qlinear_concat(
    py: QParam,
    ydt: DType,
    inputs: &[(&Tensor, QParam)],
    axis: i64,
) -> Result<Tensor> {
    let first = inputs
        .first()
        .ok_or_else(|| Error::input("QLinearConcat needs at least one input"))?;
    let ax = crate::graph::attrs::norm_axis(axis, first.0.rank())?;
    let mut owned = Vec::with_capacity(inputs.len());
    for (t, p) in inputs {
        if t.dtype() != ydt {
            return Err(Error::dtype(format!(
                "QLinearConcat input is {} but the output is {ydt}",
                t.dtype()
            )));
        }
        if *p == py {
            owned.push((*t).clone());
        } else {
            let table = lookup_table(ydt, *p, py, |v| v)?;
            owned.push(apply_table(t, &table)?);
        }
    }
    let refs: Vec<&Tensor> = owned.iter().collect();
    crate::cpu::common::concat(&refs, ax)
}

// ---------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------

/// `QLinearGlobalAveragePool` on NCHW…: the integer sum minus zp·size, times
/// x_scale / (y_scale · size), rounded half to even, plus the output zero point.
pub fn qlinear_global_avg_pool(x: &Tensor, px: QParam, py: QParam) -> Result<Tensor> {
    let xs = x.shape();
    if xs.len() < 3 {
        return Err(Error::shape(format!(
            "QLinearGlobalAveragePool input {xs:?} needs rank >= 3"
        )));
    }
    let q = Q8::of(x, "X")?;
    let img: usize = xs[2..].iter().product();
    let planes = xs[0] * xs[1];
    let (lo, hi) = int_range(x.dtype())?;
    let mut out = alloc_vec::<i32>(planes)?;
    if img > 0 {
        let scale = px.scale / (py.scale * img as f32);
        let bias = -(px.zp as i64) * img as i64;
        for (p, o) in out.iter_mut().enumerate() {
            let part = q.part(p * img, img)?;
            let s: i64 = (0..img).map(|i| i64::from(part.get(i))).sum::<i64>() + bias;
            *o = requant(s as i32, scale, py.zp, lo, hi);
        }
    }
    let mut shape = xs.to_vec();
    shape[2..].iter_mut().for_each(|d| *d = 1);
    int_tensor(x.dtype(), shape, &out)
}

/// `QLinearAveragePool` on NCHW…: dequantize, average in f32 (window summed in
/// row-major order, divided by the kernel size with `count_include_pad`, else by the taps
/// inside the input), quantize as round(avg / y_scale + y_zp). A window covering the
/// whole unpadded input goes through the global pool formula, as in onnxruntime.
pub fn qlinear_avg_pool(
    x: &Tensor,
    px: QParam,
    py: QParam,
    win: &Window,
    count_include_pad: bool,
) -> Result<Tensor> {
    let xs = x.shape();
    if xs.len() < 3 {
        return Err(Error::shape(format!(
            "QLinearAveragePool input {xs:?} needs rank >= 3"
        )));
    }
    if win
        .dilations
        .as_ref()
        .is_some_and(|d| d.iter().any(|&v| v != 1))
    {
        return Err(Error::unsupported_op("QLinearAveragePool with dilations"));
    }
    let kernel = win
        .kernel_shape
        .clone()
        .ok_or_else(|| Error::attr("QLinearAveragePool needs kernel_shape"))?;
    let g = win.resolve(&xs[2..], &kernel)?;
    let no_pad = g.pad_begin == [0; 3] && g.pad_end == [0; 3];
    if no_pad && kernel.as_slice() == &xs[2..] {
        return qlinear_global_avg_pool(x, px, py);
    }
    let q = Q8::of(x, "X")?;
    let deq: Vec<f32> = (0..q.len())
        .map(|i| px.scale * (q.get(i) - px.zp) as f32)
        .collect();
    let mut oshape = vec![xs[0], xs[1]];
    oshape.extend_from_slice(g.out_dims());
    let total = numel(&oshape, DType::F32)?;
    let mut out = alloc_vec::<i32>(total)?;
    let (lo, hi) = int_range(x.dtype())?;
    let [id, ih, iw] = g.input;
    let [od, oh, ow] = g.output;
    let (isz, osz) = (g.in_size(), g.out_size());
    let ksize = g.k_size() as f32;
    // Window [start, end) along one dim, clipped to the input.
    let span = |o: usize, d: usize, len: usize| -> (usize, usize) {
        let start = (o * g.stride[d]) as i64 - g.pad_begin[d] as i64;
        let end = (start + g.kernel[d] as i64).min(len as i64);
        (start.max(0) as usize, end.max(0) as usize)
    };
    for p in 0..xs[0] * xs[1] {
        let plane = deq.get(p * isz..(p + 1) * isz).ok_or_else(internal)?;
        for a in 0..od {
            let (d0, d1) = span(a, 0, id);
            for b in 0..oh {
                let (h0, h1) = span(b, 1, ih);
                for c in 0..ow {
                    let (w0, w1) = span(c, 2, iw);
                    let mut sum = 0f32;
                    for dd in d0..d1 {
                        for hh in h0..h1 {
                            for ww in w0..w1 {
                                sum += plane[(dd * ih + hh) * iw + ww];
                            }
                        }
                    }
                    let count = if count_include_pad {
                        ksize
                    } else {
                        ((d1.saturating_sub(d0))
                            * (h1.saturating_sub(h0))
                            * (w1.saturating_sub(w0))) as f32
                    };
                    let avg = sum / count;
                    let v =
                        round_even_f32(avg / py.scale + py.zp as f32).clamp(lo as f32, hi as f32);
                    *out.get_mut(p * osz + (a * oh + b) * ow + c)
                        .ok_or_else(internal)? = v as i32;
                }
            }
        }
    }
    int_tensor(x.dtype(), oshape, &out)
}

// ---------------------------------------------------------------------------------------
// QLinearSoftmax
// ---------------------------------------------------------------------------------------

/// `QLinearSoftmax` (com.microsoft), as onnxruntime computes it: exp((x − max + shift) ·
/// x_scale) from a table (shift keeps the row sum in f32 range), the row summed in f32,
/// y = round(e · floor(1 / y_scale) / sum) + y_zp, saturated. The input zero point
/// cancels out. Rows are `axis` (opset >= 13) or all dims from `axis` (older opsets).
pub fn qlinear_softmax(
    x: &Tensor,
    x_scale: f32,
    py: QParam,
    axis: i64,
    opset: i64,
) -> Result<Tensor> {
    let rank = x.rank();
    let ax = crate::graph::attrs::norm_axis(axis, rank.max(1))?;
    let moved;
    let (xt, perm) = if opset >= 13 && rank > 0 && ax != rank - 1 {
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(ax, rank - 1);
        moved = crate::cpu::layout::transpose(x, Some(&perm))?;
        (&moved, Some(perm))
    } else {
        (x, None)
    };
    let shape = xt.shape();
    let d: usize = if opset >= 13 {
        shape.last().copied().unwrap_or(1)
    } else {
        shape[ax.min(shape.len())..].iter().product()
    };
    let q = Q8::of(xt, "X")?;
    let (lo, hi) = int_range(xt.dtype())?;
    // ORT divides in f32, takes the log in f64.
    let headroom = f64::from(f32::MAX / d.max(1) as f32).ln();
    let bit_shift = (headroom - 5.0).max(0.0) / f64::from(x_scale);
    // table[j] = exp((j - 255 + shift) · x_scale) for j = x - max + 255.
    let table: Vec<f32> = (0..256)
        .map(|j| ((f64::from(j) - 255.0 + bit_shift) * f64::from(x_scale)).exp() as f32)
        .collect();
    let ys = (1.0 / py.scale).floor();
    let mut out = alloc_vec::<i32>(q.len())?;
    // A row length of zero means no rows.
    let rows = q.len().checked_div(d).unwrap_or(0);
    for r in 0..rows {
        let row = q.part(r * d, d)?;
        let mx = (0..d).map(|i| row.get(i)).max().unwrap_or(0);
        let idx = |i: usize| (row.get(i) - mx + 255).clamp(0, 255) as usize;
        let mut sum = 0f32;
        for i in 0..d {
            sum += table[idx(i)];
        }
        for i in 0..d {
            let v = round_even_f32(table[idx(i)] * ys / sum) + py.zp as f32;
            *out.get_mut(r * d + i).ok_or_else(internal)? = v.clamp(lo as f32, hi as f32) as i32;
        }
    }
    let y = int_tensor(xt.dtype(), shape.to_vec(), &out)?;
    match perm {
        Some(p) => crate::cpu::layout::transpose(&y, Some(&p)),
        None => Ok(y),
    }
}

// ---------------------------------------------------------------------------------------
// MatMulNBits
// ---------------------------------------------------------------------------------------

/// MatMulNBits attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NBitsAttrs {
    pub k: usize,
    pub n: usize,
    pub bits: usize,
    pub block_size: usize,
}

/// Dequantizes MatMulNBits weights into an N×K f32 matrix (row n = output column n).
/// B is uint8 [N, blocks, block_size·bits/8] with values packed from the low bits up;
/// scales have N·blocks values; zero points are packed uint8 (N rows of
/// ceil(blocks·bits/8) bytes) or floats (N·blocks), 2^(bits−1) when absent; `g_idx`
/// ([K] int32) gives each row's block when the rows were reordered.
/// w = q · s − s · zp, as onnxruntime's dequantization computes it.
pub fn dequantize_nbits(
    b: &Tensor,
    scales_t: &Tensor,
    zp: Option<&Tensor>,
    g_idx: Option<&Tensor>,
    at: &NBitsAttrs,
) -> Result<Vec<f32>> {
    let NBitsAttrs {
        k,
        n,
        bits,
        block_size,
    } = *at;
    if !matches!(bits, 2 | 4 | 8) || block_size == 0 || (block_size * bits) % 8 != 0 {
        return Err(Error::unsupported_op(format!(
            "MatMulNBits with bits={bits}, block_size={block_size}"
        )));
    }
    let blocks = k.div_ceil(block_size);
    let blob = block_size * bits / 8;
    if b.dtype() != DType::U8 {
        return Err(Error::dtype(format!(
            "MatMulNBits B must be uint8, got {}",
            b.dtype()
        )));
    }
    if b.shape() != [n, blocks, blob] {
        return Err(Error::shape(format!(
            "MatMulNBits B is {:?}, expected [{n}, {blocks}, {blob}]",
            b.shape()
        )));
    }
    let bv = b.as_slice::<u8>()?;
    let sv = scales(scales_t, "scales")?;
    if sv.len() != n * blocks {
        return Err(Error::shape(format!(
            "MatMulNBits scales have {} values, expected {}",
            sv.len(),
            n * blocks
        )));
    }
    let mask = (1u32 << bits) - 1;
    let zp_row = (blocks * bits).div_ceil(8);
    let zps: Vec<f32> = match zp {
        None => vec![(1u32 << (bits - 1)) as f32; n * blocks],
        Some(z) if z.dtype() == DType::U8 => {
            let zv = z.as_slice::<u8>()?;
            if zv.len() != n * zp_row {
                return Err(Error::shape(format!(
                    "MatMulNBits packed zero points have {} bytes, expected {}",
                    zv.len(),
                    n * zp_row
                )));
            }
            let mut v = Vec::with_capacity(n * blocks);
            for r in 0..n {
                for bl in 0..blocks {
                    let bit = bl * bits;
                    let byte = u32::from(zv[r * zp_row + bit / 8]);
                    v.push(((byte >> (bit % 8)) & mask) as f32);
                }
            }
            v
        }
        Some(z) => {
            let v = scales(z, "zero_points")?;
            if v.len() != n * blocks {
                return Err(Error::shape(format!(
                    "MatMulNBits zero points have {} values, expected {}",
                    v.len(),
                    n * blocks
                )));
            }
            v
        }
    };
    let groups: Option<Vec<usize>> = match g_idx {
        None => None,
        Some(gt) => {
            let gv = gt.as_slice::<i32>().map_err(|_| {
                Error::dtype(format!(
                    "MatMulNBits g_idx must be int32, got {}",
                    gt.dtype()
                ))
            })?;
            if gv.len() != k {
                return Err(Error::shape(format!(
                    "MatMulNBits g_idx has {} values for K = {k}",
                    gv.len()
                )));
            }
            Some(
                gv.iter()
                    .map(|&g| {
                        usize::try_from(g)
                            .ok()
                            .filter(|&g| g < blocks)
                            .ok_or_else(|| {
                                Error::input(format!("MatMulNBits g_idx value {g} out of range"))
                            })
                    })
                    .collect::<Result<_>>()?,
            )
        }
    };
    let mut w = alloc_vec::<f32>(
        n.checked_mul(k)
            .ok_or_else(|| Error::memory("MatMulNBits too large"))?,
    )?;
    for r in 0..n {
        let row = &mut w[r * k..(r + 1) * k];
        for (kk, out) in row.iter_mut().enumerate() {
            let bit = (kk % block_size) * bits;
            let byte = u32::from(bv[(r * blocks + kk / block_size) * blob + bit / 8]);
            let qv = ((byte >> (bit % 8)) & mask) as f32;
            let bl = groups.as_ref().map_or(kk / block_size, |g| g[kk]);
            let s = sv[r * blocks + bl];
            let z = zps[r * blocks + bl];
            *out = qv * s + (-(s * z));
        }
    }
    Ok(w)
}

/// `MatMulNBits` (com.microsoft): Y[…, N] = A[…, K] · Wᵀ (+ bias), W from
/// [`dequantize_nbits`] (or the same matrix made once at load, `packed`). Computed in
/// f32; onnxruntime's accuracy_level 4 path instead quantizes A to int8 per block, so
/// its results differ from these by A's quantization error.
#[allow(clippy::too_many_arguments)]
pub fn matmul_nbits(
    a: &Tensor,
    b: &Tensor,
    scales_t: &Tensor,
    zp: Option<&Tensor>,
    g_idx: Option<&Tensor>,
    bias: Option<&Tensor>,
    at: &NBitsAttrs,
    packed: Option<&[f32]>,
) -> Result<Tensor> {
    if !a.dtype().is_float() {
        return Err(Error::dtype(format!(
            "MatMulNBits A must be float, got {}",
            a.dtype()
        )));
    }
    let (k, n) = (at.k, at.n);
    if a.shape().last() != Some(&k) {
        return Err(Error::shape(format!(
            "MatMulNBits A is {:?}, its last dim must be K = {k}",
            a.shape()
        )));
    }
    let owned;
    let w: &[f32] = match packed {
        Some(p) if p.len() == n * k => p,
        _ => {
            owned = dequantize_nbits(b, scales_t, zp, g_idx, at)?;
            &owned
        }
    };
    let av = a.to_f32_vec()?;
    let rows = av.len() / k.max(1);
    let mut shape = a.shape().to_vec();
    if let Some(l) = shape.last_mut() {
        *l = n;
    }
    let mut y = alloc_vec::<f32>(numel(&shape, DType::F32)?)?;
    if !sgemm_ex(
        rows,
        k,
        n,
        1.0,
        Mat::row_major(&av, k),
        Mat::col_major(w, k),
        0.0,
        &mut y,
        n,
    ) {
        return Err(Error::shape("MatMulNBits operands do not fit"));
    }
    if let Some(bt) = bias {
        let bv = scales(bt, "bias")?;
        if bv.len() != n {
            return Err(Error::shape(format!(
                "MatMulNBits bias has {} values for N = {n}",
                bv.len()
            )));
        }
        for row in y.chunks_mut(n.max(1)) {
            row.iter_mut().zip(&bv).for_each(|(v, b)| *v += b);
        }
    }
    let t = Tensor::from_vec(shape, y)?;
    if a.dtype() == DType::F32 {
        Ok(t)
    } else {
        t.cast(a.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t32(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap()
    }

    #[test]
    fn narrow_quantization() {
        let x = t32(&[4], &[-20., -3., 2.6, 40.]);
        let s = Tensor::scalar(2f32);
        let q = quantize_linear(&x, &s, None, 1, 0, DType::I4).unwrap();
        assert_eq!(q.to_i64_vec().unwrap(), vec![-8, -2, 1, 7]);
        let y = dequantize_linear(&q, &s, None, 1, 0, DType::F32).unwrap();
        assert_eq!(y.as_slice::<f32>().unwrap(), &[-16., -4., 2., 14.]);
        let f = quantize_linear_sat(&x, &s, None, 1, 0, DType::F8E4M3FN, true).unwrap();
        let back = dequantize_linear(&f, &s, None, 1, 0, DType::F32).unwrap();
        assert_eq!(back.as_slice::<f32>().unwrap(), &[-20., -3., 2.5, 40.]);
        let big = t32(&[1], &[1e6]);
        let n = quantize_linear_sat(&big, &s, None, 1, 0, DType::F8E5M2, false).unwrap();
        let n = n.to_f32_vec().unwrap();
        assert!(n[0].is_infinite());
        // A zero point of another type is refused.
        let zp = Tensor::scalar(0u8);
        assert!(quantize_linear(&x, &s, Some(&zp), 1, 0, DType::I4).is_err());
        assert!(dequantize_linear(&q, &s, None, 1, 0, DType::I8).is_err());
    }

    #[test]
    fn quantize_roundtrip() {
        let x = t32(&[1, 2, 2], &[0.0, 1.0, 2.5, -3.0]);
        let s = t32(&[2], &[0.5, 1.0]);
        let z = Tensor::from_vec(vec![2], vec![10i8, -1]).unwrap();
        let q = quantize_linear(&x, &s, Some(&z), 1, 0, DType::I8).unwrap();
        assert_eq!(q.as_slice::<i8>().unwrap(), &[10, 12, 1, -4]);
        let d = dequantize_linear(&q, &s, Some(&z), 1, 0, DType::F32).unwrap();
        assert_eq!(d.as_slice::<f32>().unwrap(), &[0.0, 1.0, 2.0, -3.0]);
        let bad = t32(&[3], &[1., 1., 1.]);
        assert!(quantize_linear(&x, &bad, None, 1, 0, DType::U8).is_err());
    }
    #[test]
    fn requant_rounds_half_to_even_and_saturates() {
        let q: Vec<i32> = [5, 15, -3, 1000]
            .iter()
            .map(|&a| requant(a, 0.1, 10, 0, 255))
            .collect();
        // 0.5 -> 0 (even), 1.5 -> 2, -0.3 -> 0, saturate
        assert_eq!(q, vec![10, 12, 10, 110]);
        assert_eq!(requant(-10000, 1.0, 0, -128, 127), -128);
    }

    #[test]
    fn dynamic_params_follow_onnxruntime() {
        assert_eq!(dynamic_qparams(&[0.0, 0.0]), (1.0, 0));
        let (s, z) = dynamic_qparams(&[-1.0, 3.0]);
        assert_eq!(s, 4.0 / 255.0);
        assert_eq!(z, 64); // 63.75 -> 64
    }

    /// Direct integer convolution for checking the im2col + qgemm path.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv(
        x: &[u8],
        xs: [usize; 4],
        xz: i32,
        w: &[i8],
        ws: [usize; 4],
        wz: &[i32],
        g: &Geom,
        group: usize,
    ) -> Vec<i32> {
        let [n, c, ih, iw] = xs;
        let [m, cg, kh, kw] = ws;
        let [_, oh, ow] = g.output;
        let mg = m / group;
        let mut y = vec![0; n * m * oh * ow];
        for b in 0..n {
            for o in 0..m {
                let gi = o / mg;
                for p in 0..oh {
                    for q in 0..ow {
                        let mut s = 0;
                        for ci in 0..cg {
                            for a in 0..kh {
                                for e in 0..kw {
                                    let hh = (p * g.stride[1] + a * g.dilation[1]) as i64
                                        - g.pad_begin[1] as i64;
                                    let ww = (q * g.stride[2] + e * g.dilation[2]) as i64
                                        - g.pad_begin[2] as i64;
                                    let cc = gi * cg + ci;
                                    let xv =
                                        if hh < 0 || ww < 0 || hh >= ih as i64 || ww >= iw as i64 {
                                            xz
                                        } else {
                                            i32::from(
                                                x[((b * c + cc) * ih + hh as usize) * iw
                                                    + ww as usize],
                                            )
                                        };
                                    let wv = i32::from(w[((o * cg + ci) * kh + a) * kw + e]);
                                    s += (xv - xz) * (wv - pick(wz, o));
                                }
                            }
                        }
                        y[((b * m + o) * oh + p) * ow + q] = s;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn int_conv_matches_direct_loops() {
        for (group, cg, pads, stride, dil) in [
            (1, 3, [1, 2, 0, 1], [1, 2], [1, 1]),
            (3, 1, [1, 1, 1, 1], [1, 1], [2, 1]),
            (2, 2, [0, 0, 0, 0], [1, 1], [1, 1]),
        ] {
            let c = cg * group;
            let m = 2 * group;
            let xs = [2, c, 6, 5];
            let ws = [m, cg, 3, 2];
            let x: Vec<u8> = (0..xs.iter().product::<usize>())
                .map(|i| (i * 37 % 251) as u8)
                .collect();
            let w: Vec<i8> = (0..ws.iter().product::<usize>())
                .map(|i| (i * 53 % 255) as u8 as i8)
                .collect();
            let wz: Vec<i32> = (0..m as i32).map(|i| i - 2).collect();
            let wzt =
                Tensor::from_vec(vec![m], wz.iter().map(|&v| v as i8).collect::<Vec<_>>()).unwrap();
            let xt = Tensor::from_vec(xs.to_vec(), x.clone()).unwrap();
            let wt = Tensor::from_vec(ws.to_vec(), w.clone()).unwrap();
            let win = Window {
                pads: Some(pads.to_vec()),
                strides: Some(stride.to_vec()),
                dilations: Some(dil.to_vec()),
                ..Window::default()
            };
            let g = win.resolve(&xs[2..], &ws[2..]).unwrap();
            let want = naive_conv(&x, xs, 7, &w, ws, &wz, &g, group);
            let (_, raw) = int_conv(&xt, 7, &wt, &wz, None, &win, group).unwrap();
            assert_eq!(raw, want);
            let packed = pack_conv_weights(&wt, Some(&wzt), group).unwrap();
            let (_, pk) = int_conv(&xt, 7, &wt, &wz, Some(&packed), &win, group).unwrap();
            assert_eq!(pk, want);
        }
    }

    #[test]
    fn nbits_dequantization_unpacks_low_bits_first() {
        // K = 16, one block; 4-bit values 0..15 in order, packed zero point 3, scale 0.5.
        let at = NBitsAttrs {
            k: 16,
            n: 1,
            bits: 4,
            block_size: 16,
        };
        let b: Vec<u8> = (0..8u8).map(|i| (2 * i) | ((2 * i + 1) << 4)).collect();
        let bt = Tensor::from_vec(vec![1, 1, 8], b).unwrap();
        let s = Tensor::from_vec(vec![1], vec![0.5f32]).unwrap();
        let z = Tensor::from_vec(vec![1], vec![3u8]).unwrap();
        let w = dequantize_nbits(&bt, &s, Some(&z), None, &at).unwrap();
        let want: Vec<f32> = (0..16).map(|q| (q as f32 - 3.0) * 0.5).collect();
        assert_eq!(w, want);
        // Without zero points the default is 8.
        let w = dequantize_nbits(&bt, &s, None, None, &at).unwrap();
        assert_eq!(w[8], 0.0);
    }
}
