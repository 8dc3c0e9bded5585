//! CPU kernels for the elementwise family (ops in `crate::graph::ops::elementwise`).
//!
//! Broadcasting is written once: [`broadcast_shapes`] checks the numpy rule and
//! [`BcastPlan`] collapses the output into rows (merging adjacent dims that every input
//! either spans or broadcasts alike, dropping size-1 dims), so the inner loop runs over a
//! contiguous row where each input is either contiguous or a single repeated value. Same
//! shapes, scalars, trailing-dim ([N,C] + [C]) and channel ([N,C,H,W] + [C,1,1])
//! broadcasts all end up in tight loops that auto-vectorize. [`binary`] and [`ternary`]
//! build every binary op and Where on it.

use crate::error::{Error, Result};
use crate::graph::ops::elementwise::{BinOp, UnaryOp, VarOp};
use crate::tensor::small::{CastOptions, SmallElem};
use crate::tensor::{numel, DType, Data, Elem, Num, Tensor};
use half::{bf16, f16};
use std::ops::{Add, Div, Mul, Neg, Sub};

// ---------------------------------------------------------------------------------------
// Broadcasting
// ---------------------------------------------------------------------------------------

/// Numpy broadcast of several shapes.
pub fn broadcast_shapes(shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let r = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; r];
    for s in shapes {
        let off = r - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(Error::shape(format!(
                    "cannot broadcast shapes {:?}",
                    shapes.iter().collect::<Vec<_>>()
                )));
            }
        }
    }
    Ok(out)
}

/// The output of a broadcast collapsed into `dims` (at least one), with each input's
/// element stride per collapsed dim (0 where it is broadcast). The last dim is the row.
#[derive(Debug)]
pub struct BcastPlan<const N: usize> {
    pub dims: Vec<usize>,
    pub strides: [Vec<usize>; N],
}

impl<const N: usize> BcastPlan<N> {
    /// Plans `out` (already the broadcast of `ins`, no zero dims) for the inputs.
    pub fn new(out: &[usize], ins: [&[usize]; N]) -> BcastPlan<N> {
        let r = out.len();
        let mut dims: Vec<usize> = Vec::new();
        let mut flags: Vec<[bool; N]> = Vec::new();
        for (d, &od) in out.iter().enumerate() {
            if od == 1 {
                continue;
            }
            let mut f = [false; N];
            for (k, s) in ins.iter().enumerate() {
                let off = r - s.len();
                f[k] = d >= off && s[d - off] != 1;
            }
            match (dims.last_mut(), flags.last()) {
                (Some(last), Some(lf)) if *lf == f => *last *= od,
                _ => {
                    dims.push(od);
                    flags.push(f);
                }
            }
        }
        if dims.is_empty() {
            dims.push(1);
            flags.push([true; N]);
        }
        let strides = std::array::from_fn(|k| {
            let mut st = vec![0usize; dims.len()];
            let mut acc = 1usize;
            for j in (0..dims.len()).rev() {
                if flags[j][k] {
                    st[j] = acc;
                    acc *= dims[j];
                }
            }
            st
        });
        BcastPlan { dims, strides }
    }

    /// Length of one row and each input's stride inside it (0 or 1).
    pub fn row(&self) -> (usize, [usize; N]) {
        let last = self.dims.len() - 1;
        (
            self.dims[last],
            std::array::from_fn(|k| self.strides[k][last]),
        )
    }

    /// Calls `f` with each input's offset for every row, in output order.
    pub fn for_each_row(&self, mut f: impl FnMut([usize; N]) -> Result<()>) -> Result<()> {
        let last = self.dims.len() - 1;
        let outer: usize = self.dims[..last].iter().product();
        let mut idx = vec![0usize; last];
        let mut off = [0usize; N];
        for _ in 0..outer {
            f(off)?;
            let mut d = last;
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                for (o, s) in off.iter_mut().zip(&self.strides) {
                    *o += s[d];
                }
                if idx[d] < self.dims[d] {
                    break;
                }
                for (o, s) in off.iter_mut().zip(&self.strides) {
                    *o -= s[d] * self.dims[d];
                }
                idx[d] = 0;
            }
        }
        Ok(())
    }
}

fn internal() -> Error {
    Error::runtime("broadcast offsets out of range (internal error)")
}

/// A row of an input: `n` contiguous elements at `off`, or one element when `stride` is 0.
#[inline]
fn row_of<T>(v: &[T], off: usize, n: usize, stride: usize) -> Result<&[T]> {
    let len = if stride == 0 { 1 } else { n };
    v.get(off..off + len).ok_or_else(internal)
}

/// Elementwise `f(a, b)` with numpy broadcasting; the output dtype is `O`'s.
pub fn binary<A: Elem, B: Elem, O: Elem>(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(&A, &B) -> O,
) -> Result<Tensor> {
    let av = a.as_slice::<A>()?;
    let bv = b.as_slice::<B>()?;
    let shape = broadcast_shapes(&[a.shape(), b.shape()])?;
    let n = numel(&shape, O::DTYPE)?;
    if n == 0 {
        return Tensor::from_vec(shape, Vec::<O>::new());
    }
    // Same shape (the most common case): one zip.
    if a.shape() == b.shape() {
        let out: Vec<O> = av.iter().zip(bv).map(|(x, y)| f(x, y)).collect();
        return Tensor::from_vec(shape, out);
    }
    let plan = BcastPlan::new(&shape, [a.shape(), b.shape()]);
    let (len, [sa, sb]) = plan.row();
    let mut out: Vec<O> = Vec::with_capacity(n);
    plan.for_each_row(|[oa, ob]| {
        let ra = row_of(av, oa, len, sa)?;
        let rb = row_of(bv, ob, len, sb)?;
        match (sa, sb) {
            (0, 0) => {
                let v = f(&ra[0], &rb[0]);
                out.extend(std::iter::repeat_n(v, len));
            }
            (0, _) => {
                let x = &ra[0];
                out.extend(rb.iter().map(|y| f(x, y)));
            }
            (_, 0) => {
                let y = &rb[0];
                out.extend(ra.iter().map(|x| f(x, y)));
            }
            _ => out.extend(ra.iter().zip(rb).map(|(x, y)| f(x, y))),
        }
        Ok(())
    })?;
    Tensor::from_vec(shape, out)
}

/// Elementwise `f(a, b, c)` with numpy broadcasting of all three.
pub fn ternary<A: Elem, B: Elem, C: Elem, O: Elem>(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    f: impl Fn(&A, &B, &C) -> O,
) -> Result<Tensor> {
    let av = a.as_slice::<A>()?;
    let bv = b.as_slice::<B>()?;
    let cv = c.as_slice::<C>()?;
    let shape = broadcast_shapes(&[a.shape(), b.shape(), c.shape()])?;
    let n = numel(&shape, O::DTYPE)?;
    if n == 0 {
        return Tensor::from_vec(shape, Vec::<O>::new());
    }
    let plan = BcastPlan::new(&shape, [a.shape(), b.shape(), c.shape()]);
    let (len, [sa, sb, sc]) = plan.row();
    let mut out: Vec<O> = Vec::with_capacity(n);
    plan.for_each_row(|[oa, ob, oc]| {
        let ra = row_of(av, oa, len, sa)?;
        let rb = row_of(bv, ob, len, sb)?;
        let rc = row_of(cv, oc, len, sc)?;
        if sa == 1 && sb == 1 && sc == 1 {
            out.extend(ra.iter().zip(rb).zip(rc).map(|((x, y), z)| f(x, y, z)));
        } else {
            out.extend((0..len).map(|i| f(&ra[i * sa], &rb[i * sb], &rc[i * sc])));
        }
        Ok(())
    })?;
    Tensor::from_vec(shape, out)
}

/// Elementwise `f(x)`; the output dtype is `O`'s.
pub fn map<A: Elem, O: Elem>(t: &Tensor, f: impl Fn(&A) -> O) -> Result<Tensor> {
    let v = t.as_slice::<A>()?;
    numel(t.shape(), O::DTYPE)?;
    let out: Vec<O> = v.iter().map(f).collect();
    Tensor::from_vec(t.shape().to_vec(), out)
}

// ---------------------------------------------------------------------------------------
// Unary
// ---------------------------------------------------------------------------------------

/// f32/f64 math used by the float kernels (f16/bf16 compute in f32).
pub trait Real:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    fn c(v: f64) -> Self;
    fn exp(self) -> Self;
    fn exp_m1(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn floor(self) -> Self;
    fn ceil(self) -> Self;
    fn round_ties_even(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn tan(self) -> Self;
    fn asin(self) -> Self;
    fn acos(self) -> Self;
    fn atan(self) -> Self;
    fn sinh(self) -> Self;
    fn cosh(self) -> Self;
    fn tanh(self) -> Self;
    fn asinh(self) -> Self;
    fn acosh(self) -> Self;
    fn atanh(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn is_nan(self) -> bool;
    fn is_infinite(self) -> bool;
}

macro_rules! impl_real {
    ($($t:ty),*) => {$(
        impl Real for $t {
            #[inline] fn c(v: f64) -> Self { v as $t }
            #[inline] fn exp(self) -> Self { <$t>::exp(self) }
            #[inline] fn exp_m1(self) -> Self { <$t>::exp_m1(self) }
            #[inline] fn ln(self) -> Self { <$t>::ln(self) }
            #[inline] fn ln_1p(self) -> Self { <$t>::ln_1p(self) }
            #[inline] fn sqrt(self) -> Self { <$t>::sqrt(self) }
            #[inline] fn abs(self) -> Self { <$t>::abs(self) }
            #[inline] fn floor(self) -> Self { <$t>::floor(self) }
            #[inline] fn ceil(self) -> Self { <$t>::ceil(self) }
            #[inline] fn round_ties_even(self) -> Self { <$t>::round_ties_even(self) }
            #[inline] fn sin(self) -> Self { <$t>::sin(self) }
            #[inline] fn cos(self) -> Self { <$t>::cos(self) }
            #[inline] fn tan(self) -> Self { <$t>::tan(self) }
            #[inline] fn asin(self) -> Self { <$t>::asin(self) }
            #[inline] fn acos(self) -> Self { <$t>::acos(self) }
            #[inline] fn atan(self) -> Self { <$t>::atan(self) }
            #[inline] fn sinh(self) -> Self { <$t>::sinh(self) }
            #[inline] fn cosh(self) -> Self { <$t>::cosh(self) }
            #[inline] fn tanh(self) -> Self { <$t>::tanh(self) }
            #[inline] fn asinh(self) -> Self { <$t>::asinh(self) }
            #[inline] fn acosh(self) -> Self { <$t>::acosh(self) }
            #[inline] fn atanh(self) -> Self { <$t>::atanh(self) }
            #[inline] fn powf(self, e: Self) -> Self { <$t>::powf(self, e) }
            #[inline] fn is_nan(self) -> bool { <$t>::is_nan(self) }
            #[inline] fn is_infinite(self) -> bool { <$t>::is_infinite(self) }
        }
    )*};
}
impl_real!(f32, f64);

/// Error function: a Taylor series near 0 and the Numerical Recipes erfc (fractional
/// error < 1.2e-7) elsewhere.
#[inline]
pub fn erf<T: Real>(x: T) -> T {
    let c = T::c;
    let ax = x.abs();
    if ax < c(0.5) {
        let x2 = x * x;
        let p = c(1.0 / 9360.0);
        let p = c(-1.0 / 1320.0) + x2 * p;
        let p = c(1.0 / 216.0) + x2 * p;
        let p = c(-1.0 / 42.0) + x2 * p;
        let p = c(1.0 / 10.0) + x2 * p;
        let p = c(-1.0 / 3.0) + x2 * p;
        let p = c(1.0) + x2 * p;
        return c(std::f64::consts::FRAC_2_SQRT_PI) * x * p;
    }
    let t = c(1.0) / (c(1.0) + c(0.5) * ax);
    let poly = c(-1.265_512_23)
        + t * (c(1.000_023_68)
            + t * (c(0.374_091_96)
                + t * (c(0.096_784_18)
                    + t * (c(-0.186_288_06)
                        + t * (c(0.278_868_07)
                            + t * (c(-1.135_203_98)
                                + t * (c(1.488_515_87)
                                    + t * (c(-0.822_152_23) + t * c(0.170_872_77)))))))));
    let erfc = t * (-ax * ax + poly).exp();
    let r = c(1.0) - erfc;
    if x < c(0.0) {
        -r
    } else {
        r
    }
}

#[inline]
fn sigmoid<T: Real>(x: T) -> T {
    let one = T::c(1.0);
    if x >= T::c(0.0) {
        one / (one + (-x).exp())
    } else {
        let e = x.exp();
        e / (one + e)
    }
}

#[inline]
fn softplus<T: Real>(x: T) -> T {
    if x > T::c(0.0) {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

#[inline]
fn clamp01<T: Real>(v: T) -> T {
    let v = if v < T::c(0.0) { T::c(0.0) } else { v };
    if v > T::c(1.0) {
        T::c(1.0)
    } else {
        v
    }
}

fn mapv<T: Real>(x: &[T], f: impl Fn(T) -> T) -> Vec<T> {
    x.iter().map(|&v| f(v)).collect()
}

/// Float unary ops on a slice (the caller checked the op is a float op).
fn unary_real<T: Real>(op: UnaryOp, x: &[T]) -> Result<Vec<T>> {
    let c = T::c;
    let zero = c(0.0);
    let one = c(1.0);
    Ok(match op {
        UnaryOp::Reciprocal => mapv(x, |v| one / v),
        UnaryOp::Sqrt => mapv(x, |v| v.sqrt()),
        UnaryOp::Exp => mapv(x, |v| v.exp()),
        UnaryOp::Log => mapv(x, |v| v.ln()),
        UnaryOp::Floor => mapv(x, |v| v.floor()),
        UnaryOp::Ceil => mapv(x, |v| v.ceil()),
        UnaryOp::Round => mapv(x, |v| v.round_ties_even()),
        UnaryOp::Erf => mapv(x, erf),
        UnaryOp::Sin => mapv(x, |v| v.sin()),
        UnaryOp::Cos => mapv(x, |v| v.cos()),
        UnaryOp::Tan => mapv(x, |v| v.tan()),
        UnaryOp::Asin => mapv(x, |v| v.asin()),
        UnaryOp::Acos => mapv(x, |v| v.acos()),
        UnaryOp::Atan => mapv(x, |v| v.atan()),
        UnaryOp::Sinh => mapv(x, |v| v.sinh()),
        UnaryOp::Cosh => mapv(x, |v| v.cosh()),
        UnaryOp::Asinh => mapv(x, |v| v.asinh()),
        UnaryOp::Acosh => mapv(x, |v| v.acosh()),
        UnaryOp::Atanh => mapv(x, |v| v.atanh()),
        UnaryOp::Tanh => mapv(x, |v| v.tanh()),
        UnaryOp::Sigmoid => mapv(x, sigmoid),
        UnaryOp::LeakyRelu { alpha } => {
            let a = c(f64::from(alpha));
            mapv(x, |v| if v < zero { a * v } else { v })
        }
        UnaryOp::Elu { alpha } => {
            let a = c(f64::from(alpha));
            mapv(x, |v| if v < zero { a * v.exp_m1() } else { v })
        }
        UnaryOp::Selu { alpha, gamma } => {
            let (a, g) = (c(f64::from(alpha)), c(f64::from(gamma)));
            mapv(x, |v| if v > zero { g * v } else { g * a * v.exp_m1() })
        }
        UnaryOp::Celu { alpha } => {
            let a = c(f64::from(alpha));
            mapv(x, |v| if v > zero { v } else { a * (v / a).exp_m1() })
        }
        UnaryOp::HardSigmoid { alpha, beta } => {
            let (a, b) = (c(f64::from(alpha)), c(f64::from(beta)));
            mapv(x, |v| clamp01(a * v + b))
        }
        UnaryOp::HardSwish => {
            let (a, b) = (c(1.0 / 6.0), c(0.5));
            mapv(x, |v| v * clamp01(a * v + b))
        }
        UnaryOp::Softplus => mapv(x, softplus),
        UnaryOp::Softsign => mapv(x, |v| v / (one + v.abs())),
        UnaryOp::Gelu { tanh: false } => {
            let r = c(std::f64::consts::FRAC_1_SQRT_2);
            let h = c(0.5);
            mapv(x, |v| h * v * (one + erf(v * r)))
        }
        UnaryOp::Gelu { tanh: true } => {
            let k = c((2.0 / std::f64::consts::PI).sqrt());
            let (h, b) = (c(0.5), c(0.044715));
            mapv(x, |v| h * v * (one + (k * (v + b * v * v * v)).tanh()))
        }
        UnaryOp::Mish => mapv(x, |v| v * softplus(v).tanh()),
        UnaryOp::ThresholdedRelu { alpha } => {
            let a = c(f64::from(alpha));
            mapv(x, |v| if v > a { v } else { zero })
        }
        UnaryOp::Swish { alpha } => {
            let a = c(f64::from(alpha));
            mapv(x, |v| v * sigmoid(a * v))
        }
        other => {
            return Err(Error::unsupported_op(format!(
                "{} is not a float op (internal)",
                other.onnx_name()
            )))
        }
    })
}

/// exp for f32 without branches or calls, so loops over it vectorize: Cephes' expf
/// polynomial (about 1 ulp) with the power of two applied in two halves, so results
/// overflow to inf and underflow through subnormals to 0 like `f32::exp`.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-104.0, 88.8);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let ni = n as i32;
    let e1 = ni >> 1;
    let e2 = ni - e1;
    let s1 = f32::from_bits(((e1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((e2 + 127) as u32) << 23);
    y * s1 * s2
}

/// Logistic sigmoid on top of [`exp_f32`], branch-free.
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    let e = exp_f32(-x.abs());
    let d = 1.0 / (1.0 + e);
    if x >= 0.0 {
        d
    } else {
        e * d
    }
}

/// [`erf`] for f32, branch-free on top of [`exp_f32`] so loops vectorize.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let ax = x.abs();
    let x2 = x * x;
    let mut p = 1.0f32 / 9360.0;
    p = -1.0 / 1320.0 + x2 * p;
    p = 1.0 / 216.0 + x2 * p;
    p = -1.0 / 42.0 + x2 * p;
    p = 1.0 / 10.0 + x2 * p;
    p = -1.0 / 3.0 + x2 * p;
    p = 1.0 + x2 * p;
    let small = std::f32::consts::FRAC_2_SQRT_PI * x * p;
    let t = 1.0 / (1.0 + 0.5 * ax);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    let big = 1.0 - t * exp_f32(-ax * ax + poly);
    let big = if x < 0.0 { -big } else { big };
    if ax < 0.5 {
        small
    } else {
        big
    }
}

/// f32 kernels that beat the generic ones (vectorizable exp); None to fall back.
fn unary_f32_fast(op: UnaryOp, x: &[f32]) -> Option<Vec<f32>> {
    Some(match op {
        UnaryOp::Exp => mapv(x, exp_f32),
        UnaryOp::Sigmoid => mapv(x, sigmoid_f32),
        UnaryOp::Swish { alpha } => mapv(x, |v| v * sigmoid_f32(alpha * v)),
        UnaryOp::Erf => mapv(x, erf_f32),
        UnaryOp::Gelu { tanh: false } => mapv(x, |v| {
            0.5 * v * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2))
        }),
        _ => return None,
    })
}

/// Runs a float unary op on a float tensor of any precision.
fn unary_float(op: UnaryOp, t: &Tensor) -> Result<Tensor> {
    let shape = t.shape().to_vec();
    match t.dtype() {
        DType::F32 => {
            let x = t.as_slice::<f32>()?;
            let out = match unary_f32_fast(op, x) {
                Some(v) => v,
                None => unary_real(op, x)?,
            };
            Tensor::from_vec(shape, out)
        }
        DType::F64 => Tensor::from_vec(shape, unary_real(op, t.as_slice::<f64>()?)?),
        DType::F16 => {
            let v: Vec<f32> = t.as_slice::<f16>()?.iter().map(|x| x.to_f32()).collect();
            let r = unary_real(op, &v)?;
            Tensor::from_vec(shape, r.into_iter().map(f16::from_f32).collect::<Vec<_>>())
        }
        DType::BF16 => {
            let v: Vec<f32> = t.as_slice::<bf16>()?.iter().map(|x| x.to_f32()).collect();
            let r = unary_real(op, &v)?;
            Tensor::from_vec(shape, r.into_iter().map(bf16::from_f32).collect::<Vec<_>>())
        }
        dt => Err(Error::unsupported_dtype(format!(
            "{} does not support {dt}",
            op.onnx_name()
        ))),
    }
}

/// Applies a unary op.
pub fn unary(op: UnaryOp, t: &Tensor) -> Result<Tensor> {
    let name = op.onnx_name();
    let dt = t.dtype();
    if !op.accepts(dt) {
        return Err(Error::unsupported_dtype(format!(
            "{name} does not support {dt}"
        )));
    }
    match op {
        UnaryOp::Abs => crate::dispatch!(num dt, name, T => { map::<T, T>(t, |x| Num::abs(*x)) }),
        UnaryOp::Neg => crate::dispatch!(num dt, name, T => { map::<T, T>(t, |x| Num::neg(*x)) }),
        UnaryOp::Sign => crate::dispatch!(num dt, name, T => {
            map::<T, T>(t, |x| {
                let z = T::zero();
                if *x > z {
                    T::one()
                } else if *x < z {
                    Num::neg(T::one())
                } else {
                    *x // zero, or NaN
                }
            })
        }),
        UnaryOp::Relu => crate::dispatch!(num dt, name, T => {
            map::<T, T>(t, |x| if *x < T::zero() { T::zero() } else { *x })
        }),
        UnaryOp::Shrink { bias, lambd } => {
            let (b, l) = (f64::from(bias), f64::from(lambd));
            crate::dispatch!(num dt, name, T => {
                map::<T, T>(t, |x| {
                    let v = x.to_f64();
                    if v < -l {
                        T::from_f64(v + b)
                    } else if v > l {
                        T::from_f64(v - b)
                    } else {
                        T::zero()
                    }
                })
            })
        }
        UnaryOp::IsNaN => {
            crate::dispatch!(float dt, name, T => { map::<T, bool>(t, |x| Num::is_nan(*x)) })
        }
        UnaryOp::IsInf { negative, positive } => crate::dispatch!(float dt, name, T => {
            map::<T, bool>(t, |x| {
                let v = x.to_f64();
                v.is_infinite() && if v > 0.0 { positive } else { negative }
            })
        }),
        UnaryOp::Not => map::<bool, bool>(t, |x| !*x),
        UnaryOp::BitwiseNot => crate::dispatch!(int dt, name, T => { map::<T, T>(t, |x| !*x) }),
        _ => unary_float(op, t),
    }
}

// ---------------------------------------------------------------------------------------
// Binary
// ---------------------------------------------------------------------------------------

#[inline]
fn nan_max<T: Num>(x: T, y: T) -> T {
    if x.is_nan() || x >= y {
        x
    } else {
        y
    }
}

#[inline]
fn nan_min<T: Num>(x: T, y: T) -> T {
    if x.is_nan() || x <= y {
        x
    } else {
        y
    }
}

/// `Pow`: output has the base's dtype; the exponent may be any numeric dtype.
fn pow(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dt = a.dtype();
    if dt == DType::F32 && b.dtype() == DType::F32 {
        // Scalar exponents common in real models (x^2 in norms, x^0.5, x^3 in Gelu).
        if b.len() == 1 && b.rank() <= a.rank() {
            let e = b.as_slice::<f32>()?[0];
            let shaped = |t: Tensor| -> Result<Tensor> {
                let shape = broadcast_shapes(&[a.shape(), b.shape()])?;
                t.reshape(shape)
            };
            if e == 2.0 {
                return shaped(map::<f32, f32>(a, |x| x * x)?);
            }
            if e == 3.0 {
                return shaped(map::<f32, f32>(a, |x| x * x * x)?);
            }
            if e == 1.0 {
                return shaped(map::<f32, f32>(a, |x| *x)?);
            }
            if e == 0.5 {
                return shaped(map::<f32, f32>(a, |x| x.sqrt())?);
            }
        }
        return binary::<f32, f32, f32>(a, b, |x, y| x.powf(*y));
    }
    if !b.dtype().is_numeric() {
        return Err(Error::unsupported_dtype(format!(
            "Pow exponent of type {}",
            b.dtype()
        )));
    }
    let e = b.cast(DType::F64)?;
    if dt.is_int() {
        // Integer bases: exact integer power for integer exponents (onnxruntime computes
        // in the base type), float exponents go through f64.
        let int_exp = b.dtype().is_int();
        return crate::dispatch!(int dt, "Pow", T => {
            binary::<T, f64, T>(a, &e, |x, y| {
                if int_exp && *y >= 0.0 {
                    int_pow(*x, *y)
                } else {
                    T::from_f64(x.to_f64().powf(*y))
                }
            })
        });
    }
    crate::dispatch!(float dt, "Pow", T => {
        binary::<T, f64, T>(a, &e, |x, y| T::from_f64(x.to_f64().powf(*y)))
    })
}

/// x^n by squaring with wrapping multiplication (n a non-negative integer in f64).
#[inline]
fn int_pow<T: Num>(x: T, n: f64) -> T {
    let mut n = n as u64;
    let mut base = x;
    let mut acc = T::one();
    while n > 0 {
        if n & 1 == 1 {
            acc = acc.mul(base);
        }
        base = base.mul(base);
        n >>= 1;
    }
    acc
}

/// Applies a binary op with numpy broadcasting.
pub fn binary_op(op: BinOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dt = a.dtype();
    let name = op.onnx_name();
    if op == BinOp::Pow {
        return pow(a, b);
    }
    if b.dtype() != dt {
        return Err(Error::dtype(format!(
            "{name}: inputs have different types {dt} and {}",
            b.dtype()
        )));
    }
    if !op.accepts(dt) {
        return Err(Error::unsupported_dtype(format!(
            "{name} does not support {dt}"
        )));
    }
    match op {
        BinOp::Add => {
            crate::dispatch!(num dt, name, T => { binary::<T, T, T>(a, b, |x, y| Num::add(*x, *y)) })
        }
        BinOp::Sub => {
            crate::dispatch!(num dt, name, T => { binary::<T, T, T>(a, b, |x, y| Num::sub(*x, *y)) })
        }
        BinOp::Mul => {
            crate::dispatch!(num dt, name, T => { binary::<T, T, T>(a, b, |x, y| Num::mul(*x, *y)) })
        }
        BinOp::Div => {
            crate::dispatch!(num dt, name, T => { binary::<T, T, T>(a, b, |x, y| Num::div(*x, *y)) })
        }
        BinOp::Mod { fmod } => crate::dispatch!(num dt, name, T => {
            if fmod {
                binary::<T, T, T>(a, b, |x, y| x.rem_trunc(*y))
            } else {
                binary::<T, T, T>(a, b, |x, y| x.rem_floor(*y))
            }
        }),
        BinOp::PRelu => crate::dispatch!(num dt, name, T => {
            binary::<T, T, T>(a, b, |x, s| if *x < T::zero() { Num::mul(*x, *s) } else { *x })
        }),
        BinOp::BitShift { left } => crate::dispatch!(int dt, name, T => {
            let bits = (std::mem::size_of::<T>() * 8) as i128;
            binary::<T, T, T>(a, b, |x, s| {
                let s = s.to_i128();
                if !(0..bits).contains(&s) {
                    return T::zero();
                }
                let v = x.to_i128() as u64;
                T::from_i128(i128::from(if left { v << s } else { v >> s }))
            })
        }),
        BinOp::And => binary::<bool, bool, bool>(a, b, |x, y| *x && *y),
        BinOp::Or => binary::<bool, bool, bool>(a, b, |x, y| *x || *y),
        BinOp::Xor => binary::<bool, bool, bool>(a, b, |x, y| *x != *y),
        BinOp::BitwiseAnd => {
            crate::dispatch!(int dt, name, T => { binary::<T, T, T>(a, b, |x, y| *x & *y) })
        }
        BinOp::BitwiseOr => {
            crate::dispatch!(int dt, name, T => { binary::<T, T, T>(a, b, |x, y| *x | *y) })
        }
        BinOp::BitwiseXor => {
            crate::dispatch!(int dt, name, T => { binary::<T, T, T>(a, b, |x, y| *x ^ *y) })
        }
        BinOp::Equal => {
            crate::dispatch!(all dt, name, T => { binary::<T, T, bool>(a, b, |x, y| x == y) })
        }
        BinOp::Less => {
            crate::dispatch!(num dt, name, T => { binary::<T, T, bool>(a, b, |x, y| x < y) })
        }
        BinOp::LessOrEqual => {
            crate::dispatch!(num dt, name, T => { binary::<T, T, bool>(a, b, |x, y| x <= y) })
        }
        BinOp::Greater => {
            crate::dispatch!(num dt, name, T => { binary::<T, T, bool>(a, b, |x, y| x > y) })
        }
        BinOp::GreaterOrEqual => {
            crate::dispatch!(num dt, name, T => { binary::<T, T, bool>(a, b, |x, y| x >= y) })
        }
        BinOp::Pow => pow(a, b),
    }
}

/// Sum, Mean, Max or Min of 1..N broadcast inputs.
pub fn variadic(op: VarOp, ts: &[&Tensor]) -> Result<Tensor> {
    let (first, rest) = ts
        .split_first()
        .ok_or_else(|| Error::input("variadic op with no inputs"))?;
    let dt = first.dtype();
    if let Some(t) = rest.iter().find(|t| t.dtype() != dt) {
        return Err(Error::dtype(format!(
            "{op:?}: inputs have different types {dt} and {}",
            t.dtype()
        )));
    }
    let what = format!("{op:?}");
    crate::dispatch!(num dt, what, T => {
        let f = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
            match op {
                VarOp::Sum | VarOp::Mean => binary::<T, T, T>(a, b, |x, y| Num::add(*x, *y)),
                VarOp::Max => binary::<T, T, T>(a, b, |x, y| nan_max(*x, *y)),
                VarOp::Min => binary::<T, T, T>(a, b, |x, y| nan_min(*x, *y)),
            }
        };
        let mut acc = match rest.split_first() {
            None => (*first).clone(),
            Some((second, _)) => f(first, second)?,
        };
        for t in rest.iter().skip(1) {
            acc = f(&acc, t)?;
        }
        if op == VarOp::Mean && ts.len() > 1 {
            let n = T::from_f64(ts.len() as f64);
            for v in acc.as_mut_slice::<T>()? {
                *v = Num::div(*v, n);
            }
        }
        Ok(acc)
    })
}

/// `Where(cond, x, y)`.
#[allow(clippy::clone_on_copy)]
pub fn where_(cond: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if x.dtype() != y.dtype() {
        return Err(Error::dtype(format!(
            "Where: X is {} but Y is {}",
            x.dtype(),
            y.dtype()
        )));
    }
    crate::dispatch!(all x.dtype(), "Where", T => {
        ternary::<bool, T, T, T>(cond, x, y, |c, a, b| if *c { a.clone() } else { b.clone() })
    })
}

/// `Clip(x, min, max)`; absent limits are unbounded. Values below `min` become `min`,
/// then values above `max` become `max` (so min > max gives max everywhere); NaN stays.
pub fn clip(x: &Tensor, min: Option<&Tensor>, max: Option<&Tensor>) -> Result<Tensor> {
    let dt = x.dtype();
    crate::dispatch!(num dt, "Clip", T => {
        let lim = |t: Option<&Tensor>, what: &str| -> Result<Option<T>> {
            match t {
                None => Ok(None),
                Some(t) => {
                    if t.dtype() != dt {
                        return Err(Error::dtype(format!(
                            "Clip {what} is {} but the input is {dt}",
                            t.dtype()
                        )));
                    }
                    if t.len() != 1 {
                        return Err(Error::shape(format!(
                            "Clip {what} must be a scalar, got shape {:?}",
                            t.shape()
                        )));
                    }
                    Ok(t.as_slice::<T>()?.first().copied())
                }
            }
        };
        let lo = lim(min, "min")?.unwrap_or(<T as Num>::min_value());
        let hi = lim(max, "max")?.unwrap_or(<T as Num>::max_value());
        map::<T, T>(x, |v| {
            let v = if *v < lo { lo } else { *v };
            if v > hi {
                hi
            } else {
                v
            }
        })
    })
}

/// `Cast` to `to`.
pub fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    numel(x.shape(), to)?;
    x.cast(to)
}

/// `Cast` to `to` with `saturate` / `round_mode` (narrow float targets).
pub fn cast_with(x: &Tensor, to: DType, opts: CastOptions) -> Result<Tensor> {
    numel(x.shape(), to)?;
    x.cast_with(to, opts)
}

/// `BitCast`: the same little-endian bytes read as `to` (same width; bool is one byte,
/// nonzero reads as true; the narrow types reinterpret their bits, float8 with 8-bit
/// types and 4-bit/2-bit ones with the same width).
pub fn bitcast(x: &Tensor, to: DType) -> Result<Tensor> {
    let from = x.dtype();
    if from == DType::Str || to == DType::Str || from.bit_width() != to.bit_width() {
        return Err(Error::dtype(format!(
            "BitCast from {from} to {to}: the widths differ"
        )));
    }
    if from == to {
        return Ok(x.clone());
    }
    let mut bytes: Vec<u8> = Vec::with_capacity(x.nbytes());
    macro_rules! put {
        ($v:expr) => {
            for e in $v {
                bytes.extend_from_slice(&e.to_le_bytes())
            }
        };
    }
    match x.data() {
        Data::F32(v) => put!(v),
        Data::F64(v) => put!(v),
        Data::F16(v) => put!(v),
        Data::BF16(v) => put!(v),
        Data::I8(v) => put!(v),
        Data::U8(v) => put!(v),
        Data::I16(v) => put!(v),
        Data::U16(v) => put!(v),
        Data::I32(v) => put!(v),
        Data::U32(v) => put!(v),
        Data::I64(v) => put!(v),
        Data::U64(v) => put!(v),
        Data::Bool(v) => bytes.extend(v.iter().map(|&b| u8::from(b))),
        Data::Str(_) => return Err(Error::dtype("BitCast of strings")),
        d => {
            // One code per element, in the low bits of a byte.
            crate::dispatch!(small from, "BitCast", T => {
                let v = T::slice(d).ok_or_else(internal)?;
                bytes.extend(v.iter().map(|e| e.to_bits()));
                Ok::<(), Error>(())
            })?
        }
    }
    let shape = x.shape().to_vec();
    macro_rules! get {
        ($t:ty) => {{
            const W: usize = std::mem::size_of::<$t>();
            let v: Vec<$t> = bytes
                .chunks_exact(W)
                .map(|c| {
                    let mut a = [0u8; W];
                    a.copy_from_slice(c);
                    <$t>::from_le_bytes(a)
                })
                .collect();
            Tensor::from_vec(shape, v)
        }};
    }
    match to {
        DType::F32 => get!(f32),
        DType::F64 => get!(f64),
        DType::F16 => get!(f16),
        DType::BF16 => get!(bf16),
        DType::I8 => get!(i8),
        DType::U8 => get!(u8),
        DType::I16 => get!(i16),
        DType::U16 => get!(u16),
        DType::I32 => get!(i32),
        DType::U32 => get!(u32),
        DType::I64 => get!(i64),
        DType::U64 => get!(u64),
        DType::Bool => Tensor::from_vec(shape, bytes.iter().map(|&b| b != 0).collect::<Vec<_>>()),
        DType::Str => Err(Error::dtype("BitCast to strings")),
        small_dt => crate::dispatch!(small small_dt, "BitCast", T => {
            Tensor::from_vec(shape, bytes.iter().map(|&b| T::from_bits(b)).collect::<Vec<T>>())
        }),
    }
}

/// A tensor of ones (true) of the given dtype.
pub fn ones_like(shape: &[usize], dt: DType) -> Result<Tensor> {
    let n = numel(shape, dt)?;
    crate::dispatch!(num dt, "ones", T => { Tensor::from_vec(shape.to_vec(), vec![T::one(); n]) })
        .or_else(|_| match dt {
            DType::Bool => Tensor::from_vec(shape.to_vec(), vec![true; n]),
            _ => Err(Error::unsupported_dtype(format!("a mask of type {dt}"))),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t32(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap()
    }

    #[test]
    fn narrow_bitcast() {
        let x = Tensor::vector(vec![0x38u8, 0xC0]);
        let f = bitcast(&x, DType::F8E4M3FN).unwrap();
        assert_eq!(f.to_f32_vec().unwrap(), vec![1.0, -2.0]);
        assert!(bitcast(&x, DType::I4).is_err());
    }

    #[test]
    fn broadcast_paths() {
        // Trailing-dim broadcast.
        let a = t32(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = t32(&[3], &[10., 20., 30.]);
        let r = binary_op(BinOp::Add, &a, &b).unwrap();
        assert_eq!(r.shape(), &[2, 3]);
        assert_eq!(
            r.as_slice::<f32>().unwrap(),
            &[11., 22., 33., 14., 25., 36.]
        );
        // Column broadcast and scalar.
        let c = t32(&[2, 1], &[1., 2.]);
        let r = binary_op(BinOp::Mul, &a, &c).unwrap();
        assert_eq!(r.as_slice::<f32>().unwrap(), &[1., 2., 3., 8., 10., 12.]);
        let s = Tensor::scalar(2f32);
        let r = binary_op(BinOp::Sub, &s, &a).unwrap();
        assert_eq!(r.as_slice::<f32>().unwrap(), &[1., 0., -1., -2., -3., -4.]);
        // Outer product [3,1] x [1,2] and a middle-axis broadcast.
        let col = t32(&[3, 1], &[1., 2., 3.]);
        let row = t32(&[1, 2], &[10., 100.]);
        let r = binary_op(BinOp::Mul, &col, &row).unwrap();
        assert_eq!(r.shape(), &[3, 2]);
        assert_eq!(
            r.as_slice::<f32>().unwrap(),
            &[10., 100., 20., 200., 30., 300.]
        );
        let x = t32(&[2, 2, 2], &[0., 1., 2., 3., 4., 5., 6., 7.]);
        let m = t32(&[2, 1], &[100., 200.]);
        let r = binary_op(BinOp::Add, &x, &m).unwrap();
        assert_eq!(
            r.as_slice::<f32>().unwrap(),
            &[100., 101., 202., 203., 104., 105., 206., 207.]
        );
    }

    #[test]
    fn broadcast_errors() {
        let a = t32(&[2, 3], &[0.; 6]);
        let b = t32(&[2], &[0.; 2]);
        assert!(binary_op(BinOp::Add, &a, &b).is_err());
        let i = Tensor::from_vec(vec![3], vec![1i32, 2, 3]).unwrap();
        assert_eq!(
            binary_op(BinOp::Add, &a, &i).unwrap_err().kind(),
            crate::error::ErrorKind::DType
        );
    }

    #[test]
    fn integer_semantics() {
        let a = Tensor::vector(vec![-7i32, 7, 5, i32::MAX]);
        let b = Tensor::vector(vec![3i32, -3, 0, 1]);
        let r = binary_op(BinOp::Mod { fmod: false }, &a, &b).unwrap();
        assert_eq!(r.as_slice::<i32>().unwrap(), &[2, -2, 0, 0]);
        let r = binary_op(BinOp::Div, &a, &b).unwrap();
        assert_eq!(r.as_slice::<i32>().unwrap(), &[-2, -2, 0, i32::MAX]);
        let r = binary_op(BinOp::Add, &a, &b).unwrap();
        assert_eq!(r.as_slice::<i32>().unwrap()[3], i32::MIN);
        let p = binary_op(
            BinOp::Pow,
            &Tensor::vector(vec![3i64]),
            &Tensor::vector(vec![4i64]),
        );
        assert_eq!(p.unwrap().as_slice::<i64>().unwrap(), &[81]);
        let sh = binary_op(
            BinOp::BitShift { left: true },
            &Tensor::vector(vec![1u8, 1]),
            &Tensor::vector(vec![7u8, 9]),
        )
        .unwrap();
        assert_eq!(sh.as_slice::<u8>().unwrap(), &[128, 0]);
    }

    #[test]
    fn unary_and_where() {
        let x = t32(&[4], &[-1.5, 0.0, 2.5, f32::NAN]);
        let r = unary(UnaryOp::Round, &x).unwrap();
        let v = r.as_slice::<f32>().unwrap();
        assert_eq!(&v[..3], &[-2.0, 0.0, 2.0]);
        assert!(v[3].is_nan());
        let r = unary(UnaryOp::Relu, &x).unwrap();
        assert_eq!(&r.as_slice::<f32>().unwrap()[..3], &[0.0, 0.0, 2.5]);
        assert!((erf(0.3f32) - 0.328_626_75).abs() < 1e-6);
        assert!((erf(-1.7f64) + 0.983_790_46).abs() < 1e-6);
        assert!(unary(UnaryOp::Sqrt, &Tensor::vector(vec![1i32])).is_err());
        let c = Tensor::from_vec(vec![2, 1], vec![true, false]).unwrap();
        let w = where_(&c, &t32(&[2], &[1., 2.]), &Tensor::scalar(0f32)).unwrap();
        assert_eq!(w.shape(), &[2, 2]);
        assert_eq!(w.as_slice::<f32>().unwrap(), &[1., 2., 0., 0.]);
    }

    #[test]
    fn fast_f32_math() {
        let mut x = -110.0f32;
        while x < 95.0 {
            let (a, b) = (exp_f32(x), x.exp());
            assert!(
                a == b || (a - b).abs() <= 2e-7 * b.abs() || b < 1e-37,
                "exp({x}) = {a}, want {b}"
            );
            let (s, w) = (sigmoid_f32(x), 1.0 / (1.0 + (-f64::from(x)).exp()));
            assert!(
                (f64::from(s) - w).abs() <= 1e-6 * w + 1e-37,
                "sigmoid({x}) = {s}, want {w}"
            );
            let (e, g) = (erf_f32(x / 20.0), erf(f64::from(x / 20.0)));
            assert!(
                (f64::from(e) - g).abs() <= 6e-7 * g.abs() + 1e-12,
                "erf({x}) = {e}, want {g}"
            );
            x += 0.037;
        }
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(0.0), 1.0);
        for v in [
            -2.5f32, -1.5, -0.5, 0.5, 1.5, 2.5, 3.7, -3.2, 1e9, 4194303.5,
        ] {
            assert_eq!(
                crate::cpu::quant::round_even_f32(v),
                v.round_ties_even(),
                "{v}"
            );
        }
        assert!(crate::cpu::quant::round_even_f32(f32::NAN).is_nan());
    }

    #[test]
    fn bitcast_bits() {
        let x = Tensor::vector(vec![1.0f32, -2.0]);
        let y = bitcast(&x, DType::I32).unwrap();
        assert_eq!(
            y.as_slice::<i32>().unwrap(),
            &[0x3f80_0000, 0xc000_0000u32 as i32]
        );
        let b = bitcast(&Tensor::vector(vec![true, false]), DType::U8).unwrap();
        assert_eq!(b.as_slice::<u8>().unwrap(), &[1, 0]);
        assert!(bitcast(&x, DType::I64).is_err());
    }

    #[test]
    fn variadic_and_clip() {
        let a = t32(&[2], &[1., f32::NAN]);
        let b = t32(&[2, 1], &[3., 0.]);
        let m = variadic(VarOp::Max, &[&a, &b]).unwrap();
        let v = m.as_slice::<f32>().unwrap();
        assert_eq!(m.shape(), &[2, 2]);
        assert_eq!((v[0], v[2]), (3., 1.));
        assert!(v[1].is_nan() && v[3].is_nan());
        let mean = variadic(VarOp::Mean, &[&t32(&[1], &[1.]), &t32(&[1], &[2.])]).unwrap();
        assert_eq!(mean.as_slice::<f32>().unwrap(), &[1.5]);
        let c = clip(
            &t32(&[3], &[-2., 0.5, 9.]),
            Some(&Tensor::scalar(0f32)),
            None,
        )
        .unwrap();
        assert_eq!(c.as_slice::<f32>().unwrap(), &[0., 0.5, 9.]);
        assert!(clip(&t32(&[1], &[0.]), Some(&Tensor::scalar(0i32)), None).is_err());
    }
}
