//! Pointwise ops on the GPU, all from one WGSL template: N broadcast inputs, one
//! output, and an expression over `a0..aN` per op. Before encoding, dims that every
//! input walks the same way are merged, so most broadcasts run at rank 1–2 and share
//! pipelines; inputs of the output's exact shape (or one element) skip index math.

use super::layout::View;
use super::record::{Recorder, LINEAR};
use super::{GpuTensor, In, Kernel, Lowered, NodeFacts, Out, Storage};
use crate::error::{Error, Result};
use crate::graph::ops::control::Identity;
use crate::graph::ops::elementwise::{
    BinOp, Binary, BitCast, Cast, CastLike, Clip, Dropout, Unary, UnaryOp, VarOp, Variadic, Where,
};
use crate::graph::Activation;
use crate::tensor::small::{CastOptions, RoundMode};
use crate::tensor::DType;

/// A WGSL f32 literal with the exact bits of `x`.
pub fn lit(x: f32) -> String {
    if x.is_finite() {
        format!("bitcast<f32>({}u)", x.to_bits())
    } else {
        // WGSL rejects a constant expression that evaluates to ±inf or NaN (Tint enforces
        // it, naga does not): tie the bits to the params buffer so it is not constant.
        format!("bitcast<f32>({}u + P[0] * 0u)", x.to_bits())
    }
}

/// WGSL helpers some expressions call.
const HELPERS: &str = "
fn erf_(x: f32) -> f32 {
    // Abramowitz–Stegun 7.1.26, |error| < 1.5e-7.
    let s = sign(x);
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return s * y;
}
fn sigmoid_(x: f32) -> f32 {
    if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
    let e = exp(x);
    return e / (1.0 + e);
}
fn softplus_(x: f32) -> f32 {
    return max(x, 0.0) + log(1.0 + exp(-abs(x)));
}
fn is_nan_(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}
fn is_inf_(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u;
}
fn bf16_round_(x: f32) -> f32 {
    // Round to nearest even at bit 16; Inf and NaN pass (the readback keeps them).
    let b = bitcast<u32>(x);
    if ((b & 0x7f800000u) == 0x7f800000u) { return x; }
    return bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u);
}
fn tanh_(x: f32) -> f32 {
    // WGSL's tanh may overflow to NaN for large |x| on some drivers.
    let c = clamp(x, -15.0, 15.0);
    return tanh(c);
}
";

/// The WGSL expression of a fused activation applied to `x` (an f32 expression).
pub fn activation_wgsl(act: Activation, x: &str) -> String {
    match act {
        Activation::Relu => format!("max({x}, 0.0)"),
        Activation::Clip { min, max } => format!("min(max({x}, {}), {})", lit(min), lit(max)),
        Activation::HardSigmoid { alpha, beta } => {
            format!("clamp({} * {x} + {}, 0.0, 1.0)", lit(alpha), lit(beta))
        }
        Activation::Sigmoid => format!("sigmoid_({x})"),
        Activation::Silu => format!("({x} * sigmoid_({x}))"),
        Activation::LeakyRelu { alpha } => format!("select({x}, {} * {x}, {x} < 0.0)", lit(alpha)),
        Activation::Tanh => format!("tanh_({x})"),
    }
}

/// The helper functions activation expressions use (include once per shader).
pub fn activation_helpers() -> &'static str {
    HELPERS
}

fn unary_expr(op: UnaryOp, st: Storage) -> Option<String> {
    use UnaryOp::*;
    let a = "a0";
    if st != Storage::F32 {
        return match (op, st) {
            (Abs, Storage::I32) => Some(format!("abs({a})")),
            (Neg, Storage::I32) => Some(format!("-{a}")),
            (Sign, Storage::I32) => Some(format!("sign({a})")),
            (Relu, Storage::I32) => Some(format!("max({a}, 0)")),
            (Not, Storage::U32) => Some(format!("1u - {a}")),
            (BitwiseNot, Storage::I32) => Some(format!("~{a}")),
            (BitwiseNot, Storage::U32) => Some(format!("~{a}")),
            _ => None,
        };
    }
    Some(match op {
        Abs => format!("abs({a})"),
        Neg => format!("-{a}"),
        Reciprocal => format!("1.0 / {a}"),
        Sqrt => format!("sqrt({a})"),
        Exp => format!("exp({a})"),
        Log => format!("log({a})"),
        Floor => format!("floor({a})"),
        Ceil => format!("ceil({a})"),
        Round => format!("round({a})"),
        Sign => format!("sign({a})"),
        Erf => format!("erf_({a})"),
        Sin => format!("sin({a})"),
        Cos => format!("cos({a})"),
        Tan => format!("tan({a})"),
        Asin => format!("asin({a})"),
        Acos => format!("acos({a})"),
        Atan => format!("atan({a})"),
        Sinh => format!("sinh({a})"),
        Cosh => format!("cosh({a})"),
        Asinh => format!("asinh({a})"),
        Acosh => format!("acosh({a})"),
        Atanh => format!("atanh({a})"),
        IsNaN => format!("u32(is_nan_({a}))"),
        IsInf { negative, positive } => match (negative, positive) {
            (true, true) => format!("u32(is_inf_({a}))"),
            (true, false) => format!("u32(is_inf_({a}) && {a} < 0.0)"),
            (false, true) => format!("u32(is_inf_({a}) && {a} > 0.0)"),
            (false, false) => "0u".to_string(),
        },
        Not | BitwiseNot => return None,
        Relu => format!("max({a}, 0.0)"),
        Tanh => format!("tanh_({a})"),
        Sigmoid => format!("sigmoid_({a})"),
        LeakyRelu { alpha } => format!("select({a}, {} * {a}, {a} < 0.0)", lit(alpha)),
        Elu { alpha } => format!("select({a}, {} * (exp({a}) - 1.0), {a} < 0.0)", lit(alpha)),
        Selu { alpha, gamma } => format!(
            "{} * select({a}, {} * (exp({a}) - 1.0), {a} <= 0.0)",
            lit(gamma),
            lit(alpha)
        ),
        Celu { alpha } => format!(
            "max({a}, 0.0) + min(0.0, {al} * (exp({a} / {al}) - 1.0))",
            al = lit(alpha)
        ),
        HardSigmoid { alpha, beta } => {
            format!("clamp({} * {a} + {}, 0.0, 1.0)", lit(alpha), lit(beta))
        }
        HardSwish => format!("{a} * clamp({a} / 6.0 + 0.5, 0.0, 1.0)"),
        Softplus => format!("softplus_({a})"),
        Softsign => format!("{a} / (1.0 + abs({a}))"),
        Gelu { tanh: false } => format!("0.5 * {a} * (1.0 + erf_({a} * 0.70710678118654752))"),
        Gelu { tanh: true } => format!(
            "0.5 * {a} * (1.0 + tanh_(0.79788456080286536 * ({a} + 0.044715 * {a} * {a} * {a})))"
        ),
        Mish => format!("{a} * tanh_(softplus_({a}))"),
        ThresholdedRelu { alpha } => format!("select(0.0, {a}, {a} > {})", lit(alpha)),
        Shrink { bias, lambd } => format!(
            "select(select(0.0, {a} - {b}, {a} > {l}), {a} + {b}, {a} < -{l})",
            b = lit(bias),
            l = lit(lambd)
        ),
        Swish { alpha } => format!("{a} * sigmoid_({} * {a})", lit(alpha)),
    })
}

fn binary_expr(op: BinOp, st: Storage) -> Option<String> {
    use BinOp::*;
    let f = st == Storage::F32;
    let cmp = |o: &str| Some(format!("u32(a0 {o} a1)"));
    match op {
        Add => Some("a0 + a1".into()),
        Sub => Some("a0 - a1".into()),
        Mul => Some("a0 * a1".into()),
        Div if f => Some("a0 / a1".into()),
        // Integer division truncates like C (and onnxruntime); zero divisors give 0
        // instead of WGSL's undefined-but-safe value.
        Div if st == Storage::I32 => Some("select(a0 / a1, 0, a1 == 0)".into()),
        Div if st == Storage::U32 => Some("select(a0 / a1, 0u, a1 == 0u)".into()),
        // fmod: C remainder (sign of the dividend); Mod: the sign of the divisor.
        Mod { fmod: true } if st == Storage::I32 => Some("select(a0 % a1, 0, a1 == 0)".into()),
        Mod { fmod: false } if st == Storage::I32 => Some(
            "select(select(a0 % a1, a0 % a1 + a1, (a0 % a1) != 0 && ((a0 % a1) < 0) != (a1 < 0)), 0, a1 == 0)".into(),
        ),
        Mod { .. } if st == Storage::U32 => Some("select(a0 % a1, 0u, a1 == 0u)".into()),
        BitShift { left: true } if st == Storage::U32 => Some("select(a0 << a1, 0u, a1 >= 32u)".into()),
        BitShift { left: false } if st == Storage::U32 => Some("select(a0 >> a1, 0u, a1 >= 32u)".into()),
        BitwiseAnd if st != Storage::F32 => Some("a0 & a1".into()),
        BitwiseOr if st != Storage::F32 => Some("a0 | a1".into()),
        BitwiseXor if st != Storage::F32 => Some("a0 ^ a1".into()),
        Pow if f => Some("pow_(a0, a1)".into()),
        Mod { fmod: true } if f => Some("a0 - a1 * trunc(a0 / a1)".into()),
        Mod { fmod: false } if f => {
            Some("select(a0 - a1 * floor(a0 / a1), a0 - a1 * trunc(a0 / a1), a1 == 0.0)".into())
        }
        Equal => cmp("=="),
        Less => cmp("<"),
        LessOrEqual => cmp("<="),
        Greater => cmp(">"),
        GreaterOrEqual => cmp(">="),
        And if st == Storage::U32 => Some("a0 & a1".into()),
        Or if st == Storage::U32 => Some("a0 | a1".into()),
        Xor if st == Storage::U32 => Some("a0 ^ a1".into()),
        PRelu if f => Some("select(a0, a1 * a0, a0 < 0.0)".into()),
        _ => None,
    }
}

/// WGSL pow differs from C pow for negative bases (NaN even for integer exponents).
const POW: &str = "
fn pow_(x: f32, y: f32) -> f32 {
    if (y == 0.0) { return 1.0; }
    if (x < 0.0 && y == floor(y)) {
        let r = pow(-x, y);
        return select(r, -r, (abs(y) % 2.0) == 1.0);
    }
    return pow(x, y);
}
";

/// One pointwise node: N inputs of the given storages → one output.
#[derive(Debug)]
pub struct Pointwise {
    ins: Vec<Storage>,
    out: Storage,
    /// Expression over a0.. (already converted to the compute type).
    expr: String,
    /// Input indices whose GPU tensors feed a0.. in order (absent optionals skipped).
    use_inputs: Vec<usize>,
    host: Vec<usize>,
    /// The output dtype when it is narrower than its storage (results are wrapped or
    /// rounded to it, as the CPU would store them).
    narrow: Option<DType>,
    /// Rounding of narrow float outputs (Cast's attributes; saturating otherwise).
    opts: CastOptions,
    /// Legacy binary broadcast (opset < 7): `broadcast=1` with this axis, or PRelu's
    /// per-channel slope (`true`). The second input is aligned to the first there.
    legacy: Option<(Option<i64>, bool)>,
}

impl Pointwise {
    fn new(ins: Vec<Storage>, out: Storage, expr: String) -> Pointwise {
        let use_inputs = (0..ins.len()).collect();
        Pointwise {
            ins,
            out,
            expr,
            use_inputs,
            host: Vec::new(),
            narrow: None,
            opts: CastOptions::default(),
            legacy: None,
        }
    }
}

/// Rounds a float16/bfloat16 tensor computed in f32 to its type, in place (for kernels
/// that do not round their own outputs).
pub(super) fn round_narrow(r: &mut Recorder, t: &GpuTensor) -> Result<()> {
    if t.is_empty() {
        return Ok(());
    }
    let src = format!(
        "{helpers}{LINEAR}
@group(0) @binding(0) var<storage, read_write> X: array<f32>;
@group(0) @binding(1) var<storage, read> P: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    X[i] = {e};
}}
",
        helpers = convert_helpers(),
        e = narrow_wgsl(t.dtype, "X[i]", CastOptions::default())
    );
    let grid = r.grid(t.len());
    r.dispatch(&src, &[t.buffer()], &[t.len() as u32], grid)
}

/// The shape `b` takes under a legacy binary broadcast against `a` (as the op's own
/// `legacy_shape`: aligned at the axis, padded with trailing ones), or None.
fn legacy_b_shape(
    a: &[usize],
    b: &[usize],
    axis: Option<i64>,
    prelu_channel: bool,
) -> Result<Option<Vec<usize>>> {
    let axis = if prelu_channel {
        match b {
            [c] if a.len() > 2 && a[1] == *c && *c != 1 => Some(1),
            _ => None,
        }
    } else {
        axis
    };
    let Some(axis) = axis else {
        return Ok(None);
    };
    let ax = crate::graph::attrs::norm_axis(axis, a.len().max(1))?;
    if ax + b.len() > a.len() {
        return Err(Error::shape(format!(
            "legacy broadcast: rank {} at axis {axis} does not fit rank {}",
            b.len(),
            a.len()
        )));
    }
    let mut s = b.to_vec();
    s.resize(a.len() - ax, 1);
    Ok(Some(s))
}

/// `e` brought into the range and precision of `dt` where its storage is wider
/// (narrow floats round with `opts`, as the CPU's Cast does; integers wrap).
fn narrow_expr(dt: DType, e: &str, opts: CastOptions) -> String {
    let sat = opts.saturate;
    match dt {
        DType::I8 => format!("((({e}) << 24u) >> 24u)"),
        DType::I16 => format!("((({e}) << 16u) >> 16u)"),
        DType::I4 => format!("((({e}) << 28u) >> 28u)"),
        DType::I2 => format!("((({e}) << 30u) >> 30u)"),
        DType::U8 => format!("(({e}) & 0xffu)"),
        DType::U16 => format!("(({e}) & 0xffffu)"),
        DType::U4 => format!("(({e}) & 0xfu)"),
        DType::U2 => format!("(({e}) & 0x3u)"),
        DType::F16 => format!("unpack2x16float(pack2x16float(vec2<f32>({e}, 0.0))).x"),
        DType::BF16 => format!("bf16_round_({e})"),
        // lowf_(x, mantissa bits, min exponent, max finite, special codes, saturate)
        DType::F8E4M3FN => format!("lowf_({e}, 3, -6, 448.0, 0u, {sat})"),
        DType::F8E4M3FNUZ => format!("lowf_({e}, 3, -7, 240.0, 1u, {sat})"),
        DType::F8E5M2 => format!("lowf_({e}, 2, -14, 57344.0, 2u, {sat})"),
        DType::F8E5M2FNUZ => format!("lowf_({e}, 2, -15, 57344.0, 1u, {sat})"),
        DType::F4E2M1 => format!("lowf_({e}, 1, 0, 6.0, 3u, {sat})"),
        DType::F8E8M0 => {
            let mode = match opts.round_mode {
                RoundMode::Up => 0,
                RoundMode::Down => 1,
                RoundMode::Nearest => 2,
            };
            format!("e8m0_({e}, {mode}u, {sat})")
        }
        _ => e.to_string(),
    }
}

/// [`narrow_expr`] for other families: `e` (an f32, i32 or u32 expression in the
/// storage of `dt`) rounded or wrapped to `dt`. Its helpers are [`convert_helpers`].
pub(super) fn narrow_wgsl(dt: DType, e: &str, opts: CastOptions) -> String {
    narrow_expr(dt, e, opts)
}

/// The WGSL functions [`narrow_wgsl`] expressions call (include once per shader).
pub(super) fn convert_helpers() -> String {
    format!("{HELPERS}{POW}{CONVERT}")
}

/// The dtypes held in a wider storage, whose results [`narrow_expr`] brings back.
fn is_narrow(dt: DType) -> bool {
    matches!(
        dt,
        DType::I8 | DType::I16 | DType::U8 | DType::U16 | DType::F16 | DType::BF16
    ) || dt.is_small()
}

/// WGSL conversions and narrow-float rounding (included when an expression uses them).
/// They follow the CPU's Cast bit for bit: float → integer truncates toward zero,
/// saturates and maps NaN to 0 (Rust's `as`); float8/float4 round to nearest even with
/// the ONNX saturate rules (`small::Format::encode`); float8e8m0 as `e8m0_from_f32`.
const CONVERT: &str = "
fn f2i_(x: f32, lo: f32, hi: f32) -> i32 {
    if (is_nan_(x)) { return 0; }
    if (x >= 2147483648.0) { return 2147483647; }
    if (x < -2147483648.0) { return i32(-2147483647 - 1); }
    return i32(clamp(trunc(x), lo, hi));
}
// The low 32 bits of Rust's `x as i64` (for the 4-bit and 2-bit targets, which keep the
// low bits): beyond ±2^31 an f32 is a multiple of 256 until i64 saturates.
fn f2low_(x: f32) -> i32 {
    if (is_nan_(x)) { return 0; }
    if (x >= 9223372036854775808.0) { return -1; }
    if (abs(x) >= 2147483648.0) { return 0; }
    return i32(trunc(x));
}
fn f2u_(x: f32, hi: f32) -> u32 {
    if (is_nan_(x) || x <= 0.0) { return 0u; }
    if (x >= 4294967296.0) { return 4294967295u; }
    return u32(min(trunc(x), hi));
}
// special: 0 = no infinity, NaN S.1111.111 (E4M3FN); 1 = FNUZ (NaN 0x80, no -0);
// 2 = IEEE-like (E5M2); 3 = every code finite (E2M1).
fn lowf_(x: f32, mbits: i32, emin: i32, maxv: f32, special: u32, sat: bool) -> f32 {
    let b = bitcast<u32>(x);
    // NaN keeps the sign (E4M3FN and E5M2 codes carry it).
    let nan = bitcast<f32>(0x7fc00000u | (b & 0x80000000u));
    let neg = (b & 0x80000000u) != 0u;
    if (is_nan_(x)) {
        if (special == 3u) { return bitcast<f32>(0x80000000u); }
        return nan;
    }
    let a = abs(x);
    var r = maxv * 2.0;
    if (!is_inf_(x)) {
        let ea = i32((bitcast<u32>(a) >> 23u) & 0xffu) - 127;
        let e = max(ea, emin);
        // Scaling by powers of two is exact; round() is round-half-to-even.
        r = ldexp(round(a * ldexp(1.0, mbits - e)), e - mbits);
    }
    if (r > maxv) {
        if (sat || special == 3u) {
            r = maxv;
        } else if (special == 2u) {
            r = bitcast<f32>(0x7f800000u | (b & 0u));
        } else {
            return nan;
        }
    }
    if (special == 1u && r == 0.0) { return 0.0; }
    return select(r, -r, neg);
}
// mode: 0 = up, 1 = down, 2 = nearest.
fn e8m0_(x: f32, mode: u32, sat: bool) -> f32 {
    let b = bitcast<u32>(x);
    let ex = (b >> 23u) & 0xffu;
    let nan = bitcast<f32>(0x7fc00000u | (b & 0u));
    if (ex == 0xffu) { return nan; }
    var up = false;
    if (mode == 0u) {
        up = (b & 0x7fffffu) != 0u;
    } else if (mode == 2u) {
        let g = (b & 0x400000u) != 0u;
        let rr = (b & 0x200000u) != 0u;
        let s = (b & 0x1fffffu) != 0u;
        up = g && (rr || s || ex > 0u);
    }
    if (sat && ex == 0xfeu) { up = false; }
    let code = ex + u32(up);
    if (code == 0xffu) { return nan; }
    if (code == 0u) { return bitcast<f32>(0x00400000u); }
    return bitcast<f32>(code << 23u);
}
fn powi_(x: i32, n: u32) -> i32 {
    var acc = 1;
    var base = x;
    var k = n;
    loop {
        if (k == 0u) { break; }
        if ((k & 1u) == 1u) { acc = acc * base; }
        base = base * base;
        k = k >> 1u;
    }
    return acc;
}
fn powu_(x: u32, n: u32) -> u32 {
    var acc = 1u;
    var base = x;
    var k = n;
    loop {
        if (k == 0u) { break; }
        if ((k & 1u) == 1u) { acc = acc * base; }
        base = base * base;
        k = k >> 1u;
    }
    return acc;
}
fn powf_int_(x: f32, n: u32) -> f32 {
    var acc = 1.0;
    var base = x;
    var k = n;
    loop {
        if (k == 0u) { break; }
        if ((k & 1u) == 1u) { acc = acc * base; }
        base = base * base;
        k = k >> 1u;
    }
    return acc;
}
// An integer base to a float power, as the CPU computes it in f64: integral powers by
// squaring (exact while the result fits f32's mantissa), others through pow_.
fn ipowf_(x: f32, y: f32) -> f32 {
    if (y >= 0.0 && y == floor(y) && y < 4294967296.0) { return powf_int_(x, u32(y)); }
    return pow_(x, y);
}
";

/// Merges adjacent output dims where every input is either broadcast along both or
/// contiguous along both; returns the merged dims and, per input, its strides.
fn collapse(out: &[usize], ins: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let r = out.len();
    // Per input: strides aligned to the output (0 where broadcast).
    let strides: Vec<Vec<usize>> = ins
        .iter()
        .map(|s| {
            let mut st = vec![0; r];
            let off = r - s.len();
            let mut acc = 1;
            for k in (0..s.len()).rev() {
                st[off + k] = if s[k] == 1 { 0 } else { acc };
                acc *= s[k];
            }
            st
        })
        .collect();
    let mut dims: Vec<usize> = Vec::new();
    let mut ss: Vec<Vec<usize>> = vec![Vec::new(); ins.len()];
    for k in 0..r {
        if out[k] == 1 {
            continue;
        }
        let can_merge = !dims.is_empty()
            && strides.iter().zip(&ss).all(|(st, s)| {
                let prev = *s.last().unwrap_or(&0);
                (prev == 0 && st[k] == 0) || (st[k] != 0 && prev == st[k] * out[k])
            });
        if can_merge {
            let last = dims.len() - 1;
            dims[last] *= out[k];
            for (st, s) in strides.iter().zip(ss.iter_mut()) {
                let l = s.len() - 1;
                s[l] = st[k];
            }
        } else {
            dims.push(out[k]);
            for (st, s) in strides.iter().zip(ss.iter_mut()) {
                s.push(st[k]);
            }
        }
    }
    (dims, ss)
}

impl Kernel for Pointwise {
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn rounds_outputs(&self) -> bool {
        true
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let (odt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("pointwise op without an output"))?;
        let srcs: Vec<&super::GpuTensor> = self
            .use_inputs
            .iter()
            .map(|&i| {
                ins.get(i)
                    .ok_or_else(|| Error::runtime("missing input"))
                    .and_then(|x| x.dev())
            })
            .collect::<Result<_>>()?;
        let y = r.alloc(*odt, oshape.clone())?;
        let n = y.len();
        if n == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        let mut shapes: Vec<&[usize]> = srcs.iter().map(|t| t.shape.as_slice()).collect();
        let aligned = match (self.legacy, shapes.as_slice()) {
            (Some((axis, prelu)), [a, b]) => legacy_b_shape(a, b, axis, prelu)?,
            _ => None,
        };
        if let Some(s) = &aligned {
            shapes[1] = s.as_slice();
        }
        let (dims, strides) = collapse(oshape, &shapes);
        let rank = dims.len();
        // Per input: 0 = same layout as the output, 1 = one element, 2 = strided.
        let modes: Vec<u8> = srcs
            .iter()
            .zip(&strides)
            .map(|(t, st)| {
                if t.len() == 1 {
                    1
                } else if t.len() == n && rank == 1 && st[0] == 1 {
                    0
                } else {
                    2
                }
            })
            .collect();
        let mut src = String::new();
        src.push_str(LINEAR);
        src.push_str(HELPERS);
        let e = match self.narrow {
            Some(dt) => narrow_expr(dt, &self.expr, self.opts),
            None => self.expr.clone(),
        };
        if ["pow_", "f2i_", "f2u_", "f2low_", "lowf_", "e8m0_"]
            .iter()
            .any(|h| e.contains(h))
        {
            src.push_str(POW);
            src.push_str(CONVERT);
        }
        for (k, st) in self.ins.iter().enumerate() {
            src.push_str(&format!(
                "@group(0) @binding({k}) var<storage, read> in{k}: array<{}>;\n",
                st.wgsl()
            ));
        }
        let ni = self.ins.len();
        src.push_str(&format!(
            "@group(0) @binding({ni}) var<storage, read_write> out: array<{}>;\n\
             @group(0) @binding({}) var<storage, read> P: array<u32>;\n\
             @compute @workgroup_size(256)\n\
             fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n\
             let i = linear_id(gid, nwg);\n\
             if (i >= P[0]) {{ return; }}\n",
            self.out.wgsl(),
            ni + 1
        ));
        // P = [n, dims…, strides of each strided input…]
        let mut params = vec![n as u32];
        params.extend(dims.iter().map(|&d| d as u32));
        let mut slot = 0;
        for (k, m) in modes.iter().enumerate() {
            match m {
                0 => src.push_str(&format!("let a{k} = in{k}[i];\n")),
                1 => src.push_str(&format!("let a{k} = in{k}[0];\n")),
                _ => {
                    let base = 1 + rank + slot * rank;
                    src.push_str(&format!(
                        "var o{k} = 0u;\n{{ var rem = i;\n\
                         for (var d = {rank}i - 1; d >= 0; d--) {{\n\
                           let dim = P[1u + u32(d)];\n\
                           o{k} += (rem % dim) * P[{base}u + u32(d)];\n\
                           rem = rem / dim;\n\
                         }} }}\n\
                         let a{k} = in{k}[o{k}];\n"
                    ));
                    params.extend(strides[k].iter().map(|&s| s as u32));
                    slot += 1;
                }
            }
        }
        src.push_str(&format!("out[i] = {e};\n}}\n"));
        let grid = r.grid(n);
        let mut bufs: Vec<&wgpu::Buffer> = srcs.iter().map(|t| t.buffer()).collect();
        bufs.push(y.buffer());
        r.dispatch(&src, &bufs, &params, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

fn storages(f: &NodeFacts, n: usize) -> Option<Vec<Storage>> {
    (0..n)
        .map(|i| f.in_dtype(i).and_then(Storage::of))
        .collect()
}

/// Converts `x`, a value of dtype `from` in its storage, to dtype `to` in its storage,
/// as the CPU's Cast does before the output is narrowed ([`narrow_expr`] then wraps
/// integers and rounds floats). None where the widened storage cannot match the CPU:
/// strings, and integer casts whose 64-bit result differs from the 32-bit one (signed
/// values to uint64, uint32/uint64 values to int64).
fn convert(x: &str, from: DType, to: DType) -> Option<String> {
    let fs = Storage::of(from)?;
    let ts = Storage::of(to)?;
    if to == DType::Bool {
        return Some(match fs {
            Storage::F32 => format!("u32({x} != 0.0)"),
            Storage::I32 => format!("u32({x} != 0)"),
            Storage::U32 => format!("u32({x} != 0u)"),
        });
    }
    const I32_RANGE: &str = "-2147483648.0, 2147483520.0";
    Some(match (fs, ts) {
        (Storage::F32, Storage::F32)
        | (Storage::I32, Storage::I32)
        | (Storage::U32, Storage::U32)
            if !(fs == Storage::I32 && to == DType::U64) =>
        {
            x.to_string()
        }
        (Storage::I32 | Storage::U32, Storage::F32) => format!("f32({x})"),
        (Storage::F32, Storage::I32) => match to {
            DType::I8 => format!("f2i_({x}, -128.0, 127.0)"),
            DType::I16 => format!("f2i_({x}, -32768.0, 32767.0)"),
            // int4/int2 keep the low bits of the i64 value (the narrowing wraps).
            DType::I4 | DType::I2 => format!("f2low_({x})"),
            _ => format!("f2i_({x}, {I32_RANGE})"),
        },
        (Storage::F32, Storage::U32) => match to {
            DType::U8 => format!("f2u_({x}, 255.0)"),
            DType::U16 => format!("f2u_({x}, 65535.0)"),
            DType::U32 | DType::U64 => format!("f2u_({x}, 4294967040.0)"),
            _ => format!("bitcast<u32>(f2low_({x}))"),
        },
        (Storage::U32, Storage::I32) => {
            if to == DType::I64 && matches!(from, DType::U32 | DType::U64) {
                return None;
            }
            format!("bitcast<i32>({x})")
        }
        (Storage::I32, Storage::U32) => {
            if to == DType::U64 {
                return None;
            }
            format!("bitcast<u32>({x})")
        }
        _ => return None,
    })
}

/// BitCast of `x` (dtype `from`, in its storage) to `to`, on the element's real bits.
/// None where the widened storage has lost them: float64 and the 64-bit integers
/// (narrowed to 32 bits), and the float8/float4 codes (held as their f32 values).
fn bitcast_expr(x: &str, from: DType, to: DType) -> Option<String> {
    use DType::*;
    // The element's bits as u32 (low bits).
    let bits = match from {
        F32 | U32 | U8 | U16 | U4 | U2 | Bool => {
            if from == F32 {
                format!("bitcast<u32>({x})")
            } else {
                x.to_string()
            }
        }
        I32 => format!("bitcast<u32>({x})"),
        I8 => format!("(bitcast<u32>({x}) & 0xffu)"),
        I16 => format!("(bitcast<u32>({x}) & 0xffffu)"),
        I4 => format!("(bitcast<u32>({x}) & 0xfu)"),
        I2 => format!("(bitcast<u32>({x}) & 0x3u)"),
        F16 => format!("(pack2x16float(vec2<f32>({x}, 0.0)) & 0xffffu)"),
        BF16 => format!("(bitcast<u32>({x}) >> 16u)"),
        _ => return None,
    };
    Some(match to {
        F32 => format!("bitcast<f32>({bits})"),
        U32 | U16 | U8 | U4 | U2 => bits,
        // One byte, nonzero reads as true.
        Bool => format!("u32({bits} != 0u)"),
        // Signed: sign-extend from the top bit of the field (the narrowing does it).
        I32 | I16 | I8 | I4 | I2 => format!("bitcast<i32>({bits})"),
        F16 => format!("unpack2x16float({bits}).x"),
        BF16 => format!("bitcast<f32>({bits} << 16u)"),
        _ => return None,
    })
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let narrow = f.out_dtype(0).filter(|&d| is_narrow(d));
    let k = |mut p: Pointwise| {
        p.narrow = narrow;
        Lowered::Kernel(Box::new(p))
    };
    let unsupported = || {
        Lowered::Cpu(format!(
            "{} on these dtypes stays on the CPU",
            f.node.op_type
        ))
    };
    if any.is::<Identity>() {
        return match f.in_dtype(0).and_then(Storage::of) {
            Some(_) => Lowered::Kernel(Box::new(View::of_input())),
            None => unsupported(),
        };
    }
    if let Some(d) = any.downcast_ref::<Dropout>() {
        if Storage::of(f.in_dtype(0).unwrap_or(DType::Str)).is_none() {
            return unsupported();
        }
        // Ratio and training_mode are read on the host and checked as the CPU does
        // (training with a nonzero ratio needs random masks: an error on both).
        let host: Vec<usize> = (1..f.ins.len().min(3))
            .filter(|&i| f.has_input(i))
            .collect();
        let mask = if d.want_mask {
            // Without dropping, the mask is all ones.
            match f.out_dtype(1).and_then(Storage::of) {
                Some(st) => Some(st),
                None => return unsupported(),
            }
        } else {
            None
        };
        if mask.is_none() && host.is_empty() {
            return Lowered::Kernel(Box::new(View::of_input()));
        }
        return Lowered::Kernel(Box::new(DropoutKernel {
            mask,
            ratio: d.ratio,
            host,
        }));
    }
    if let Some(u) = any.downcast_ref::<Unary>() {
        let (Some(st), Some(odt)) = (storages(f, 1), f.out_dtype(0)) else {
            return unsupported();
        };
        let Some(ost) = Storage::of(odt) else {
            return unsupported();
        };
        // uint64 is held in 32 bits: its complement needs the high word.
        if u.op == UnaryOp::BitwiseNot && matches!(f.in_dtype(0), Some(DType::U64 | DType::Bool)) {
            return unsupported();
        }
        return match unary_expr(u.op, st[0]) {
            Some(e) => k(Pointwise::new(st, ost, e)),
            None => unsupported(),
        };
    }
    if let Some(b) = any.downcast_ref::<Binary>() {
        let k = |mut p: Pointwise| {
            if b.legacy_axis.is_some() || b.prelu_channel {
                p.legacy = Some((b.legacy_axis, b.prelu_channel));
            }
            k(p)
        };
        let (Some(st), Some(odt)) = (storages(f, 2), f.out_dtype(0)) else {
            return unsupported();
        };
        let Some(ost) = Storage::of(odt) else {
            return unsupported();
        };
        if st[0] != st[1] && b.op != BinOp::Pow {
            return unsupported();
        }
        if b.op == BinOp::Pow {
            return match pow_expr(f.in_dtype(0), f.in_dtype(1), st[0], st[1]) {
                Some(e) => k(Pointwise::new(st, ost, e)),
                None => unsupported(),
            };
        }
        let Some(e) = binary_expr(b.op, st[0]) else {
            return unsupported();
        };
        return k(Pointwise::new(st, ost, e));
    }
    if let Some(v) = any.downcast_ref::<Variadic>() {
        let n = f.ins.len();
        let (Some(st), Some(odt)) = (storages(f, n), f.out_dtype(0)) else {
            return unsupported();
        };
        let Some(ost) = Storage::of(odt) else {
            return unsupported();
        };
        // Unsigned Max/Min/Sum as the CPU (Sum wraps; uint64 at 32 bits, its storage).
        if st.iter().any(|&s| s != st[0])
            || (st[0] != Storage::F32 && v.op == VarOp::Mean)
            || f.in_dtype(0) == Some(DType::Bool)
        {
            return unsupported();
        }
        let mut e = "a0".to_string();
        for i in 1..n {
            e = match v.op {
                VarOp::Sum | VarOp::Mean => format!("{e} + a{i}"),
                // NaN propagates (max/min in WGSL would drop it).
                VarOp::Max if st[0] == Storage::F32 => {
                    format!("select(max({e}, a{i}), a{i}, is_nan_(a{i}))")
                }
                VarOp::Min if st[0] == Storage::F32 => {
                    format!("select(min({e}, a{i}), a{i}, is_nan_(a{i}))")
                }
                VarOp::Max => format!("max({e}, a{i})"),
                VarOp::Min => format!("min({e}, a{i})"),
            };
        }
        if v.op == VarOp::Mean {
            e = format!("({e}) / {}", lit(n as f32));
        }
        return k(Pointwise::new(st, ost, e));
    }
    if any.is::<Where>() {
        let (Some(st), Some(odt)) = (storages(f, 3), f.out_dtype(0)) else {
            return unsupported();
        };
        let Some(ost) = Storage::of(odt) else {
            return unsupported();
        };
        return k(Pointwise::new(st, ost, "select(a2, a1, a0 != 0u)".into()));
    }
    if let Some(c) = any.downcast_ref::<Clip>() {
        let Some(st) = f.in_dtype(0).and_then(Storage::of) else {
            return unsupported();
        };
        if st == Storage::U32 {
            return unsupported();
        }
        // Limits: attributes (old opsets) or optional inputs 1 and 2 (bound on the GPU).
        let mut e = "a0".to_string();
        let mut ins = vec![st];
        let mut use_inputs = vec![0];
        if let Some(mn) = c.min {
            e = format!("max({e}, {})", lit(mn));
        }
        if let Some(mx) = c.max {
            e = format!("min({e}, {})", lit(mx));
        }
        // max(x, lo) before min(·, hi), as onnxruntime does.
        for (i, fname) in [(1usize, "max"), (2, "min")] {
            if f.has_input(i) {
                ins.push(st);
                e = format!("{fname}({e}, a{})", use_inputs.len());
                use_inputs.push(i);
            }
        }
        return k(Pointwise {
            ins,
            out: st,
            expr: e,
            use_inputs,
            host: Vec::new(),
            narrow: None,
            opts: CastOptions::default(),
            legacy: None,
        });
    }
    if let Some(c) = any.downcast_ref::<Cast>() {
        return cast_kernel(f, c.to, c.opts, "Cast");
    }
    if let Some(c) = any.downcast_ref::<CastLike>() {
        return match f.out_dtype(0) {
            // The second input only gives the dtype: it must be storable to bind.
            Some(to) if f.in_dtype(1).and_then(Storage::of).is_some() => {
                cast_kernel(f, to, c.opts, "CastLike")
            }
            _ => unsupported(),
        };
    }
    if let Some(c) = any.downcast_ref::<BitCast>() {
        let from = f.in_dtype(0);
        let e = from
            .filter(|d| d.bit_width() == c.to.bit_width())
            .and_then(|d| bitcast_expr("a0", d, c.to));
        return match (e, from.and_then(Storage::of), Storage::of(c.to)) {
            (Some(e), Some(st), Some(ost)) => {
                let mut p = Pointwise::new(vec![st], ost, e);
                p.narrow = Some(c.to);
                Lowered::Kernel(Box::new(p))
            }
            _ => Lowered::Cpu(format!(
                "BitCast from {} to {} stays on the CPU (float64, 64-bit integers and \
                 float8/float4 codes are not held bit for bit on the GPU; strings never)",
                from.map_or("?".to_string(), |d| d.to_string()),
                c.to
            )),
        };
    }
    Lowered::NotMine
}

fn cast_kernel(f: &NodeFacts, to: DType, opts: CastOptions, op: &str) -> Lowered {
    let from = f.in_dtype(0);
    let unsupported = || {
        Lowered::Cpu(match from {
            Some(DType::Str) => format!("{op} from strings stays on the CPU"),
            _ if to == DType::Str => format!("{op} to strings stays on the CPU"),
            Some(d) => format!("{op} from {d} to {to} stays on the CPU (64-bit integer range)"),
            None => format!("{op} of an unknown dtype stays on the CPU"),
        })
    };
    let Some(from) = from else {
        return unsupported();
    };
    let (Some(st), Some(e), Some(ost)) =
        (Storage::of(from), convert("a0", from, to), Storage::of(to))
    else {
        return unsupported();
    };
    let mut p = Pointwise::new(vec![st], ost, e);
    p.narrow = Some(to);
    p.opts = opts;
    Lowered::Kernel(Box::new(p))
}

/// Pow as the CPU computes it: float bases in float (f32 here) whatever the exponent's
/// dtype; integer bases with integer exponents ≥ 0 by wrapping multiplication, other
/// exponents through a float power truncated and saturated to the base type.
fn pow_expr(bdt: Option<DType>, edt: Option<DType>, bs: Storage, es: Storage) -> Option<String> {
    let (bdt, edt) = (bdt?, edt?);
    if !(bdt.is_numeric() && edt.is_numeric()) {
        return None;
    }
    let y = if es == Storage::F32 { "a1" } else { "f32(a1)" };
    Some(match bs {
        Storage::F32 => format!("pow_(a0, {y})"),
        Storage::I32 | Storage::U32 => {
            let x = "f32(a0)";
            let float_pow = match es {
                Storage::F32 => format!("ipowf_({x}, a1)"),
                _ => format!("pow_({x}, {y})"),
            };
            let back = convert(&float_pow, DType::F32, bdt)?;
            match (bs, es) {
                (_, Storage::F32) => back,
                (Storage::I32, Storage::I32) => {
                    format!("select({back}, powi_(a0, bitcast<u32>(a1)), a1 >= 0)")
                }
                (Storage::I32, _) => "powi_(a0, a1)".to_string(),
                (Storage::U32, Storage::I32) => {
                    format!("select({back}, powu_(a0, bitcast<u32>(a1)), a1 >= 0)")
                }
                _ => "powu_(a0, a1)".to_string(),
            }
        }
    })
}

/// Dropout that drops nothing (inference, or a zero ratio): the output is the input and
/// the mask, when asked for, all ones (of its dtype: bool, or the input's for old
/// opsets). Ratio and training_mode inputs are read on the host and checked like the CPU.
#[derive(Debug)]
struct DropoutKernel {
    /// The mask's storage when the model reads it.
    mask: Option<Storage>,
    /// The attribute ratio (opset < 12), when no ratio input is given.
    ratio: f32,
    host: Vec<usize>,
}

impl Kernel for DropoutKernel {
    fn moves_only(&self) -> bool {
        true
    }
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = ins
            .first()
            .ok_or_else(|| Error::runtime("missing input"))?
            .dev()?;
        let ratio = match ins.get(1).and_then(|t| t.host()) {
            Some(t) => t.scalar_f64()?,
            None => f64::from(self.ratio),
        };
        let training = match ins.get(2).and_then(|t| t.host()) {
            Some(t) => *t
                .as_slice::<bool>()?
                .first()
                .ok_or_else(|| Error::shape("Dropout training_mode is empty"))?,
            None => false,
        };
        if training && ratio != 0.0 {
            return Err(Error::unsupported_op(
                "Dropout in training mode with a nonzero ratio is not supported",
            ));
        }
        if !(0.0..1.0).contains(&ratio) {
            return Err(Error::runtime(format!(
                "Dropout ratio must be in [0, 1), got {ratio}"
            )));
        }
        let (ydt, yshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let y = super::GpuTensor {
            buf: x.buf.clone(),
            shape: yshape.clone(),
            dtype: *ydt,
        };
        let (Some(st), Some((mdt, mshape))) = (self.mask, outs.get(1)) else {
            return Ok(vec![Out::Dev(y)]);
        };
        let m = r.alloc(*mdt, mshape.clone())?;
        let n = m.len();
        if n > 0 {
            let one = match st {
                Storage::F32 => 1f32.to_bits(),
                _ => 1,
            };
            let src = format!(
                "{LINEAR}@group(0) @binding(0) var<storage, read_write> out: array<u32>;\n\
                 @group(0) @binding(1) var<storage, read> P: array<u32>;\n\
                 @compute @workgroup_size(256)\n\
                 fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n\
                 let i = linear_id(gid, nwg);\n\
                 if (i >= P[0]) {{ return; }}\n\
                 out[i] = P[1];\n}}\n"
            );
            let grid = r.grid(n);
            r.dispatch(&src, &[m.buffer()], &[n as u32, one], grid)?;
        }
        Ok(vec![Out::Dev(y), Out::Dev(m)])
    }
}

#[cfg(test)]
mod tests {
    use super::collapse;

    #[test]
    fn collapse_merges_what_walks_together() {
        // NCHW + per-channel bias: channels stay apart, H·W merge.
        let (d, s) = collapse(&[1, 64, 56, 56], &[&[1, 64, 56, 56], &[1, 64, 1, 1]]);
        assert_eq!(d, [64 * 56 * 56 / (56 * 56), 56 * 56].to_vec());
        assert_eq!(s[0], vec![3136, 1]);
        assert_eq!(s[1], vec![1, 0]);
        // Same shapes: one flat dim.
        let (d, s) = collapse(&[2, 3, 4], &[&[2, 3, 4], &[2, 3, 4]]);
        assert_eq!(d, vec![24]);
        assert_eq!(s, vec![vec![1], vec![1]]);
        // Row broadcast.
        let (d, s) = collapse(&[5, 7], &[&[5, 7], &[7]]);
        assert_eq!(d, vec![5, 7]);
        assert_eq!(s[1], vec![0, 1]);
    }
}
