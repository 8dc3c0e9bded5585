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
    BinOp, Binary, Cast, CastLike, Clip, Dropout, Unary, UnaryOp, VarOp, Variadic, Where,
};
use crate::graph::Activation;
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
        "{HELPERS}{LINEAR}
@group(0) @binding(0) var<storage, read_write> X: array<f32>;
@group(0) @binding(1) var<storage, read> P: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    X[i] = {e};
}}
",
        e = narrow_expr(t.dtype, "X[i]")
    );
    let grid = r.grid(t.len());
    r.dispatch(&src, &[t.buffer()], &[t.len() as u32], grid)
}

/// `e` brought into the range and precision of `dt` where its storage is wider.
pub(super) fn narrow_expr(dt: DType, e: &str) -> String {
    match dt {
        DType::I8 => format!("((({e}) << 24u) >> 24u)"),
        DType::I16 => format!("((({e}) << 16u) >> 16u)"),
        DType::U8 => format!("(({e}) & 0xffu)"),
        DType::U16 => format!("(({e}) & 0xffffu)"),
        DType::F16 => format!("unpack2x16float(pack2x16float(vec2<f32>({e}, 0.0))).x"),
        DType::BF16 => format!("bf16_round_({e})"),
        _ => e.to_string(),
    }
}

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
        let shapes: Vec<&[usize]> = srcs.iter().map(|t| t.shape.as_slice()).collect();
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
        if self.expr.contains("pow_") {
            src.push_str(POW);
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
        let e = match self.narrow {
            Some(dt) => narrow_expr(dt, &self.expr),
            None => self.expr.clone(),
        };
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

/// Converts a value of storage `from` (named `x`) to the compute type of `to`.
fn convert(x: &str, from: Storage, to_dt: DType) -> Option<String> {
    let to = Storage::of(to_dt)?;
    Some(match (from, to) {
        _ if to_dt == DType::Bool => match from {
            Storage::F32 => format!("u32({x} != 0.0)"),
            Storage::I32 => format!("u32({x} != 0)"),
            Storage::U32 => format!("u32({x} != 0u)"),
        },
        (Storage::F32, Storage::F32)
        | (Storage::I32, Storage::I32)
        | (Storage::U32, Storage::U32) => x.to_string(),
        (Storage::I32 | Storage::U32, Storage::F32) => format!("f32({x})"),
        (Storage::F32, Storage::I32) => format!("i32(trunc({x}))"),
        (Storage::U32, Storage::I32) => format!("bitcast<i32>({x})"),
        (Storage::I32, Storage::U32) => format!("bitcast<u32>({x})"),
        // Float → unsigned saturates on the CPU; WGSL's conversion of negatives differs.
        (Storage::F32, Storage::U32) => return None,
    })
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let narrow = f.out_dtype(0).filter(|d| {
        matches!(
            d,
            DType::I8 | DType::I16 | DType::U8 | DType::U16 | DType::F16 | DType::BF16
        )
    });
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
        // Inference mode only: the mask output and training-mode ratio inputs need RNG.
        if d.want_mask
            || f.ins.len() > 2
            || Storage::of(f.in_dtype(0).unwrap_or(DType::Str)).is_none()
        {
            return unsupported();
        }
        return Lowered::Kernel(Box::new(View::of_input()));
    }
    if let Some(u) = any.downcast_ref::<Unary>() {
        let (Some(st), Some(odt)) = (storages(f, 1), f.out_dtype(0)) else {
            return unsupported();
        };
        let Some(ost) = Storage::of(odt) else {
            return unsupported();
        };
        return match unary_expr(u.op, st[0]) {
            Some(e) => k(Pointwise::new(st, ost, e)),
            None => unsupported(),
        };
    }
    if let Some(b) = any.downcast_ref::<Binary>() {
        if b.legacy_axis.is_some() || b.prelu_channel {
            return Lowered::Cpu("legacy broadcast attributes stay on the CPU".into());
        }
        let (Some(st), Some(odt)) = (storages(f, 2), f.out_dtype(0)) else {
            return unsupported();
        };
        let Some(ost) = Storage::of(odt) else {
            return unsupported();
        };
        if st[0] != st[1] && b.op != BinOp::Pow {
            return unsupported();
        }
        if b.op == BinOp::Pow && (st[0] != Storage::F32 || st[1] == Storage::U32) {
            return unsupported();
        }
        let Some(mut e) = binary_expr(b.op, st[0]) else {
            return unsupported();
        };
        if b.op == BinOp::Pow && st[1] == Storage::I32 {
            e = "pow_(a0, f32(a1))".into();
        }
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
        if st.iter().any(|&s| s != st[0])
            || (st[0] != Storage::F32 && v.op == VarOp::Mean)
            || st[0] == Storage::U32
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
        });
    }
    if let Some(c) = any.downcast_ref::<Cast>() {
        return cast_kernel(f, c.to);
    }
    if any.is::<CastLike>() {
        return match f.out_dtype(0) {
            Some(to) => {
                let Some(st) = f.in_dtype(0).and_then(Storage::of) else {
                    return unsupported();
                };
                let (Some(e), Some(ost)) = (convert("a0", st, to), Storage::of(to)) else {
                    return unsupported();
                };
                k(Pointwise {
                    ins: vec![st],
                    out: ost,
                    expr: e,
                    use_inputs: vec![0],
                    host: Vec::new(),
                    narrow: None,
                })
            }
            None => unsupported(),
        };
    }
    Lowered::NotMine
}

fn cast_kernel(f: &NodeFacts, to: DType) -> Lowered {
    let unsupported = || Lowered::Cpu(format!("Cast to {to} stays on the CPU"));
    let Some(st) = f.in_dtype(0).and_then(Storage::of) else {
        return unsupported();
    };
    let (Some(e), Some(ost)) = (convert("a0", st, to), Storage::of(to)) else {
        return unsupported();
    };
    let mut p = Pointwise::new(vec![st], ost, e);
    p.narrow = Some(to);
    Lowered::Kernel(Box::new(p))
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
