//! 8-bit quantized ops on the GPU, pointwise and reductions: QuantizeLinear,
//! DequantizeLinear, DynamicQuantizeLinear, QLinearAdd/Mul, lookup tables (the internal
//! LookupTable and QLinearSigmoid/LeakyRelu), QLinearConcat, QLinearGlobalAveragePool and
//! QLinearSoftmax. The convolutions and matmuls are in `qconv.rs` / `qgemm.rs`.
//!
//! uint8 is stored as one u32 per element and int8 as one sign-extended i32, so every
//! shader reads 8-bit data as `bitcast<i32>(X[i])` and writes a saturated i32 back as its
//! bits: one pipeline serves both signednesses, only the limits (in the params) differ.
//! Quantization parameters (scales, zero points) are read on the host, where they are
//! constants in every real model, and the multipliers are formed there in f32 exactly as
//! the CPU kernels form them. Requantization rounds half to even (WGSL `round`) after the
//! same clamp to ±2^22 as `cpu::quant::round_to_int`, then saturates.

use super::record::{Recorder, LINEAR};
use super::{GpuTensor, In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::quant::{self as k, QParam};
use crate::error::{Error, Result};
use crate::graph::ops::quant::{
    DequantizeLinear, DynamicQuantizeLinear, LookupKind, LookupTable, QLinearAveragePool,
    QLinearBinary, QLinearConcat, QLinearGlobalAveragePool, QLinearLookup, QLinearSoftmax,
    QuantizeLinear,
};
use crate::tensor::{DType, Tensor};
use std::sync::Mutex;

/// WGSL helpers shared by the quantized kernels.
pub(super) const QHELPERS: &str = "
// cpu::quant::round_to_int: round half to even of a value clamped to ±2^22.
fn round_i(v: f32) -> i32 {
    return i32(round(clamp(v, -4194304.0, 4194304.0)));
}
";

/// The saturation range of an 8-bit type.
pub(super) fn range8(dt: DType) -> Option<(i32, i32)> {
    match dt {
        DType::U8 => Some((0, 255)),
        DType::I8 => Some((-128, 127)),
        _ => None,
    }
}

pub(super) fn is8(dt: Option<DType>) -> bool {
    matches!(dt, Some(DType::U8 | DType::I8))
}

pub(super) fn bits(x: f32) -> u32 {
    x.to_bits()
}

/// Host input `i`, if given.
pub(super) fn host<'a>(ins: &[In<'a>], i: usize) -> Option<&'a Tensor> {
    ins.get(i).and_then(|x| x.host())
}

/// Host input `i`, required.
pub(super) fn host_req<'a>(ins: &[In<'a>], i: usize, what: &str) -> Result<&'a Tensor> {
    host(ins, i).ok_or_else(|| Error::input(format!("missing {what}")))
}

/// Device input `i`, required.
pub(super) fn dev<'a>(ins: &[In<'a>], i: usize, what: &str) -> Result<&'a GpuTensor> {
    match ins.get(i) {
        Some(In::Dev(t)) => Ok(t),
        _ => Err(Error::input(format!("missing {what}"))),
    }
}

/// The only output's dtype and shape.
pub(super) fn out0(outs: &[(DType, Vec<usize>)]) -> Result<(DType, Vec<usize>)> {
    outs.first()
        .cloned()
        .ok_or_else(|| Error::runtime("missing output"))
}

/// Whether input `i` is absent or known to hold one value (a per-tensor parameter).
pub(super) fn one_value(f: &NodeFacts, i: usize) -> bool {
    if !f.has_input(i) {
        return true;
    }
    if let Some(c) = f.consts.get(i).copied().flatten() {
        return c.len() == 1;
    }
    match f
        .ins
        .get(i)
        .copied()
        .flatten()
        .and_then(|x| x.concrete_shape())
    {
        Some(s) => s.iter().product::<usize>() == 1,
        None => false,
    }
}

/// Packs 8-bit values (as i32) four per u32, little-endian, each of `rows` rows padded
/// to whole words. Returns the words and the words per row.
pub(super) fn pack4(vals: &[i32], rows: usize, k: usize) -> (Vec<u32>, usize) {
    let kw = k.div_ceil(4);
    let mut out = vec![0u32; rows * kw];
    for r in 0..rows {
        for j in 0..k {
            if let Some(&v) = vals.get(r * k + j) {
                out[r * kw + j / 4] |= u32::from(v as u8) << (8 * (j % 4));
            }
        }
    }
    (out, kw)
}

/// A tensor whose GPU words are `words` (int32 storage is the identity on bits).
pub(super) fn words_tensor(words: &[u32]) -> Result<Tensor> {
    Tensor::from_vec(
        vec![words.len()],
        words.iter().map(|&w| w as i32).collect::<Vec<i32>>(),
    )
}

/// The values of an 8-bit tensor as i32.
pub(super) fn q8_values(t: &Tensor) -> Result<Vec<i32>> {
    let q = k::Q8::of(t, "weights")?;
    Ok((0..q.len()).map(|i| q.get(i)).collect())
}

/// A device buffer made once from host words and kept in `cache`.
pub(super) fn cached(
    r: &mut Recorder,
    cache: &Mutex<Option<GpuTensor>>,
    make: impl FnOnce() -> Result<Vec<u32>>,
) -> Result<GpuTensor> {
    let mut c = cache
        .lock()
        .map_err(|_| Error::runtime("a GPU constant cache was poisoned"))?;
    if let Some(t) = c.as_ref() {
        return Ok(t.clone());
    }
    let t = r.upload(&words_tensor(&make()?)?)?;
    *c = Some(t.clone());
    Ok(t)
}

fn linear_src(bindings: &str, body: &str) -> String {
    format!(
        "{LINEAR}{QHELPERS}{bindings}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
{body}
}}
"
    )
}

// ---------------------------------------------------------------------------------------
// QuantizeLinear / DequantizeLinear
// ---------------------------------------------------------------------------------------

/// How parameters map onto x, as `cpu::quant::QParams`: (mode, inner, axis length,
/// block, blocks) with mode 0 = per tensor, 1 = per axis, 2 = blocked along the axis.
fn param_layout(
    x: &[usize],
    scale: &[usize],
    axis: i64,
    block: usize,
) -> Result<(u32, usize, usize, usize, usize)> {
    let n_scale: usize = scale.iter().product();
    if x.is_empty() || n_scale == 1 && scale.len() <= 1 {
        return Ok((0, 1, 1, 1, 1));
    }
    let ax = crate::graph::attrs::norm_axis(axis, x.len())?;
    let (_, len, inner) = crate::cpu::common::split_at_axis(x, ax);
    if block == 0 {
        if scale.len() != 1 || scale[0] != len {
            return Err(Error::shape(format!(
                "scale of shape {scale:?} does not fit axis {axis} of input {x:?}"
            )));
        }
        return Ok((1, inner, len, 1, len));
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
    Ok((2, inner, len, block, n_blocks))
}

/// The integer range of a quantized type (None for the narrow float outputs).
fn qrange(dt: DType) -> Option<(f32, f32)> {
    crate::cpu::quant::qrange(dt).ok()
}

/// QuantizeLinear / DequantizeLinear of every width the CPU has: 8/16/4/2-bit integers
/// (held widened, saturated to their range), float8 and float4e2m1 (held as their f32
/// values, rounded to the format like the CPU's Cast, `saturate` as the node says), per
/// tensor, per axis or blocked; f16/bf16 data and outputs are rounded like the CPU's.
#[derive(Debug)]
struct QuantizeKernel {
    axis: i64,
    block: usize,
    dequant: bool,
    saturate: bool,
}

impl Kernel for QuantizeKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1, 2]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "x")?;
        let (odt, oshape) = out0(outs)?;
        let scale_t = host_req(ins, 1, "scale")?;
        let scale = k::scales(scale_t, "scale")?;
        let qdt = if self.dequant { x.dtype } else { odt };
        // Zero points as f32 (exact for every type here), as the CPU reads them.
        let zp: Vec<f32> = match host(ins, 2) {
            Some(z) if z.dtype() != qdt => {
                return Err(Error::dtype(format!(
                    "zero point is {} but the quantized data is {qdt}",
                    z.dtype()
                )))
            }
            Some(z) => z.to_f32_vec()?,
            None => vec![0.0],
        };
        if zp.is_empty() || (zp.len() != 1 && zp.len() != scale.len()) {
            return Err(Error::shape("zero point and scale sizes differ"));
        }
        let (mode, inner, len, block, n_blocks) =
            param_layout(&x.shape, scale_t.shape(), self.axis, self.block)?;
        let (lo, hi) = qrange(qdt).unwrap_or((0.0, 0.0));
        let y = r.alloc(odt, oshape)?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let np = scale.len() as u32;
        let mut p = vec![
            y.len() as u32,
            inner as u32,
            len as u32,
            np,
            bits(lo),
            bits(hi),
            zp.len().min(2) as u32 - 1,
            mode,
            block as u32,
            n_blocks as u32,
        ];
        p.extend(scale.iter().map(|&s| bits(s)));
        p.extend(zp.iter().map(|&z| bits(z)));
        let opts = crate::tensor::small::CastOptions {
            saturate: self.saturate,
            ..Default::default()
        };
        let float_q = qdt.is_low_float();
        let body = match (self.dequant, float_q) {
            (true, false) => {
                let v = "f32(bitcast<i32>(X[i]) - i32(z)) * s";
                format!(
                    "    Y[i] = bitcast<u32>({});",
                    super::elementwise::narrow_wgsl(odt, v, opts)
                )
            }
            (true, true) => {
                let v = "(bitcast<f32>(X[i]) - z) * s";
                format!(
                    "    Y[i] = bitcast<u32>({});",
                    super::elementwise::narrow_wgsl(odt, v, opts)
                )
            }
            (false, false) => "    let v = clamp(round(bitcast<f32>(X[i]) / s) + z, bitcast<f32>(P[4]), bitcast<f32>(P[5]));
    Y[i] = bitcast<u32>(i32(v));"
                .to_string(),
            (false, true) => format!(
                "    Y[i] = bitcast<u32>({});",
                super::elementwise::narrow_wgsl(odt, "bitcast<f32>(X[i]) / s + z", opts)
            ),
        };
        let helpers = if float_q || !self.dequant || odt != DType::F32 {
            super::elementwise::convert_helpers()
        } else {
            String::new()
        };
        let src = linear_src(
            &format!(
                "{helpers}@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read_write> Y: array<u32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;"
            ),
            &format!(
                "    let np = P[3];
    let inner = P[1];
    var pi = 0u;
    if (P[7] == 1u) {{
        pi = (i / inner) % P[2];
    }} else if (P[7] == 2u) {{
        let a = (i / inner) % P[2];
        let o = i / (inner * P[2]);
        pi = (o * P[9] + a / P[8]) * inner + i % inner;
    }}
    let s = bitcast<f32>(P[10u + pi]);
    let z = bitcast<f32>(P[10u + np + pi * P[6]]);
{body}"
            ),
        );
        let grid = r.grid(y.len());
        r.dispatch(&src, &[x.buffer(), y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// DynamicQuantizeLinear: a one-workgroup min/max reduction, then the quantization
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct DynQuantKernel;

pub(super) const DQL_RANGE: &str = "
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read_write> S: array<f32>;
@group(0) @binding(2) var<storage, read_write> Z: array<u32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;
var<workgroup> mx: array<f32, 256>;
var<workgroup> mn: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    var a = 0.0;
    var b = 0.0;
    for (var i = t; i < P[0]; i += 256u) {
        let v = X[i];
        a = max(a, v);
        b = min(b, v);
    }
    mx[t] = a;
    mn[t] = b;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (t < s) {
            mx[t] = max(mx[t], mx[t + s]);
            mn[t] = min(mn[t], mn[t + s]);
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        let hi = mx[0];
        let lo = mn[0];
        var scale = 1.0;
        if (hi != lo) { scale = (hi - lo) / 255.0; }
        let zp = round(clamp(0.0 - lo / scale, 0.0, 255.0));
        S[0] = scale;
        Z[0] = u32(zp);
    }
}
";

impl Kernel for DynQuantKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "x")?;
        let (ydt, yshape) = out0(outs)?;
        let y = r.alloc(ydt, yshape)?;
        let s = r.alloc(DType::F32, vec![])?;
        let z = r.alloc(DType::U8, vec![])?;
        let n = x.len() as u32;
        r.dispatch(
            DQL_RANGE,
            &[x.buffer(), s.buffer(), z.buffer()],
            &[n],
            [1, 1, 1],
        )?;
        let src = linear_src(
            "@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> S: array<f32>;
@group(0) @binding(2) var<storage, read> Z: array<u32>;
@group(0) @binding(3) var<storage, read_write> Y: array<u32>;
@group(0) @binding(4) var<storage, read> P: array<u32>;",
            "    let v = clamp(round(X[i] / S[0]) + f32(Z[0]), 0.0, 255.0);
    Y[i] = u32(v);",
        );
        let grid = r.grid(y.len());
        r.dispatch(
            &src,
            &[x.buffer(), s.buffer(), z.buffer(), y.buffer()],
            &[n],
            grid,
        )?;
        Ok(vec![Out::Dev(y), Out::Dev(s), Out::Dev(z)])
    }
}

// ---------------------------------------------------------------------------------------
// QLinearAdd / QLinearMul
// ---------------------------------------------------------------------------------------

/// Strides of `shape` broadcast to `out` (0 along broadcast dims).
pub(super) fn bcast_strides(shape: &[usize], out: &[usize]) -> Result<Vec<u32>> {
    if shape.len() > out.len() {
        return Err(Error::shape(format!(
            "{shape:?} does not broadcast to {out:?}"
        )));
    }
    let pad = out.len() - shape.len();
    let mut st = vec![0u32; out.len()];
    let mut acc = 1usize;
    for d in (0..shape.len()).rev() {
        let od = out[pad + d];
        if shape[d] == od {
            st[pad + d] = if od == 1 { 0 } else { acc as u32 };
        } else if shape[d] != 1 {
            return Err(Error::shape(format!(
                "{shape:?} does not broadcast to {out:?}"
            )));
        }
        acc *= shape[d];
    }
    Ok(st)
}

#[derive(Debug)]
struct BinaryKernel {
    op: k::QBinOp,
}

impl Kernel for BinaryKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1, 2, 4, 5, 6, 7]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let a = dev(ins, 0, "A")?;
        let b = dev(ins, 3, "B")?;
        let (odt, oshape) = out0(outs)?;
        let dt = a.dtype;
        let pa = QParam::read(host_req(ins, 1, "A_scale")?, host(ins, 2), dt, "A")?;
        let pb = QParam::read(host_req(ins, 4, "B_scale")?, host(ins, 5), dt, "B")?;
        let pc = QParam::read(host_req(ins, 6, "C_scale")?, host(ins, 7), dt, "C")?;
        let (lo, hi) = range8(dt).ok_or_else(|| Error::unsupported_dtype("QLinear binary"))?;
        let zc = pc.zp as f32;
        // The constants of cpu::quant::qlinear_binary, formed the same way.
        let (c0, c1, c2) = match self.op {
            k::QBinOp::Add => {
                let ra = pa.scale / pc.scale;
                let rb = pb.scale / pc.scale;
                (zc - (ra * pa.zp as f32 + rb * pb.zp as f32), ra, rb)
            }
            k::QBinOp::Mul => (zc, pa.scale * pb.scale / pc.scale, 0.0),
        };
        let y = r.alloc(odt, oshape.clone())?;
        let rank = oshape.len();
        let mut p = vec![
            y.len() as u32,
            rank as u32,
            lo as u32,
            hi as u32,
            bits(c0),
            bits(c1),
            bits(c2),
            pa.zp as u32,
            pb.zp as u32,
        ];
        p.extend(oshape.iter().map(|&d| d as u32));
        p.extend(bcast_strides(&a.shape, &oshape)?);
        p.extend(bcast_strides(&b.shape, &oshape)?);
        let expr = match self.op {
            k::QBinOp::Add => "c0 + f32(x) * c1 + f32(w) * c2",
            k::QBinOp::Mul => "c0 + c1 * f32((x - bitcast<i32>(P[7])) * (w - bitcast<i32>(P[8])))",
        };
        let src = linear_src(
            "@group(0) @binding(0) var<storage, read> A: array<u32>;
@group(0) @binding(1) var<storage, read> B: array<u32>;
@group(0) @binding(2) var<storage, read_write> Y: array<u32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;",
            &format!(
                "    let rank = P[1];
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = i32(rank) - 1; d >= 0; d--) {{
        let du = u32(d);
        let dim = P[9u + du];
        let c = rem % dim;
        rem = rem / dim;
        ia += c * P[9u + rank + du];
        ib += c * P[9u + 2u * rank + du];
    }}
    let x = bitcast<i32>(A[ia]);
    let w = bitcast<i32>(B[ib]);
    let c0 = bitcast<f32>(P[4]);
    let c1 = bitcast<f32>(P[5]);
    let c2 = bitcast<f32>(P[6]);
    let q = clamp(round_i({expr}), bitcast<i32>(P[2]), bitcast<i32>(P[3]));
    Y[i] = bitcast<u32>(q);"
            ),
        );
        let grid = r.grid(y.len());
        r.dispatch(&src, &[a.buffer(), b.buffer(), y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// Lookup tables
// ---------------------------------------------------------------------------------------

const GATHER: &str = "@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read> T: array<u32>;
@group(0) @binding(2) var<storage, read_write> Y: array<u32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;";

/// y[i] = table[x[i] & 255] into `y` at `offset(i)`; see [`ConcatKernel`] for the
/// offsets (here: outer 1).
fn gather_table(
    r: &mut Recorder,
    x: &GpuTensor,
    table: &GpuTensor,
    y: &GpuTensor,
    blocks: [usize; 3],
) -> Result<()> {
    // blocks: (input axis block, output axis block, offset) — y[(i / ib) * ob + off + i % ib].
    let [ib, ob, off] = blocks;
    let src = linear_src(
        GATHER,
        "    let o = (i / P[1]) * P[2] + P[3] + i % P[1];
    Y[o] = T[X[i] & 255u];",
    );
    let grid = r.grid(x.len());
    r.dispatch(
        &src,
        &[x.buffer(), table.buffer(), y.buffer()],
        &[x.len() as u32, ib.max(1) as u32, ob as u32, off as u32],
        grid,
    )
}

#[derive(Debug)]
struct TableKernel {
    table: Tensor,
    dev: Mutex<Option<GpuTensor>>,
}

impl Kernel for TableKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "x")?;
        let (odt, oshape) = out0(outs)?;
        let t = cached(r, &self.dev, || super::tensor::to_words(&self.table))?;
        let y = r.alloc(odt, oshape)?;
        let n = y.len();
        gather_table(r, x, &t, &y, [n, n, 0])?;
        Ok(vec![Out::Dev(y)])
    }
}

/// A 256-entry table as the words of its 8-bit outputs (sign-extended for int8).
fn table_words(dt: DType, t: &[u8; 256]) -> Vec<u32> {
    t.iter()
        .map(|&b| {
            if dt == DType::I8 {
                i32::from(b as i8) as u32
            } else {
                u32::from(b)
            }
        })
        .collect()
}

/// QLinearSigmoid / QLinearLeakyRelu: the table is built from the host parameters, and
/// kept for the next run while they stay the same.
#[derive(Debug)]
struct LookupKernel {
    kind: LookupKind,
    dev: Mutex<Option<(QParam, QParam, GpuTensor)>>,
}

impl Kernel for LookupKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1, 2, 3, 4]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "x")?;
        let (odt, oshape) = out0(outs)?;
        let dt = x.dtype;
        let px = QParam::read(host_req(ins, 1, "X_scale")?, host(ins, 2), dt, "X")?;
        let py = QParam::read(host_req(ins, 3, "Y_scale")?, host(ins, 4), dt, "Y")?;
        let mut c = self
            .dev
            .lock()
            .map_err(|_| Error::runtime("a GPU table cache was poisoned"))?;
        let t = match c.as_ref() {
            Some((a, b, t)) if *a == px && *b == py => t.clone(),
            _ => {
                let table = match self.kind {
                    LookupKind::Sigmoid => k::lookup_table(dt, px, py, crate::graph::sigmoid)?,
                    LookupKind::LeakyRelu { alpha } => {
                        k::lookup_table(dt, px, py, |v| if v >= 0.0 { v } else { alpha * v })?
                    }
                };
                let t = r.upload(&words_tensor(&table_words(dt, &table))?)?;
                *c = Some((px, py, t.clone()));
                t
            }
        };
        drop(c);
        let y = r.alloc(odt, oshape)?;
        let n = y.len();
        gather_table(r, x, &t, &y, [n, n, 0])?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// QLinearConcat: each input copied (through a requantizing table where its parameters
// differ from the output's) into its slab of the output
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct ConcatKernel {
    axis: i64,
    host: Vec<usize>,
}

impl Kernel for ConcatKernel {
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let (odt, oshape) = out0(outs)?;
        let y_zp = host_req(ins, 1, "Y_zero_point")?;
        let py = QParam::read(host_req(ins, 0, "Y_scale")?, Some(y_zp), odt, "Y")?;
        let ax = crate::graph::attrs::norm_axis(self.axis, oshape.len())?;
        let inner: usize = oshape[ax + 1..].iter().product();
        let ob = oshape[ax] * inner;
        let y = r.alloc(odt, oshape.clone())?;
        let mut off = 0usize;
        let mut i = 2;
        while i + 2 < ins.len() {
            let x = dev(ins, i, "X")?;
            let px = QParam::read(host_req(ins, i + 1, "X_scale")?, host(ins, i + 2), odt, "X")?;
            let table: Vec<u32> = if px == py {
                (0..256u32)
                    .map(|b| {
                        if odt == DType::I8 {
                            i32::from(b as u8 as i8) as u32
                        } else {
                            b
                        }
                    })
                    .collect()
            } else {
                table_words(odt, &k::lookup_table(odt, px, py, |v| v)?)
            };
            let t = r.upload(&words_tensor(&table)?)?;
            let ib = x.shape.get(ax).copied().unwrap_or(1) * inner;
            if !x.is_empty() {
                gather_table(r, x, &t, &y, [ib, ob, off])?;
            }
            off += ib;
            i += 3;
        }
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// QLinearGlobalAveragePool
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct GlobalPoolKernel {
    channels_last: bool,
}

impl Kernel for GlobalPoolKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1, 2, 3, 4]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "X")?;
        let (odt, oshape) = out0(outs)?;
        let dt = x.dtype;
        let px = QParam::read(host_req(ins, 1, "x_scale")?, host(ins, 2), dt, "X")?;
        let py = QParam::read(host_req(ins, 3, "y_scale")?, host(ins, 4), dt, "Y")?;
        let xs = &x.shape;
        if xs.len() < 3 {
            return Err(Error::shape("QLinearGlobalAveragePool needs rank >= 3"));
        }
        let (c, img) = if self.channels_last {
            (
                xs[xs.len() - 1],
                xs[1..xs.len() - 1].iter().product::<usize>(),
            )
        } else {
            (xs[1], xs[2..].iter().product::<usize>())
        };
        let (lo, hi) = range8(dt).ok_or_else(|| Error::unsupported_dtype("pool input"))?;
        let y = r.alloc(odt, oshape)?;
        let scale = px.scale / (py.scale * img as f32);
        let bias = (-(px.zp as i64) * img as i64) as i32;
        // plane p = n·C + c: NCHW walks img contiguous values, NHWC steps by C.
        let p = [
            y.len() as u32,
            c as u32,
            img as u32,
            self.channels_last as u32,
            bits(scale),
            bias as u32,
            py.zp as u32,
            lo as u32,
            hi as u32,
        ];
        let src = linear_src(
            "@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read_write> Y: array<u32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;",
            "    let c = P[1];
    let img = P[2];
    var base = i * img;
    var step = 1u;
    if (P[3] == 1u) {
        base = (i / c) * img * c + i % c;
        step = c;
    }
    var s = bitcast<i32>(P[5]);
    for (var j = 0u; j < img; j++) {
        s += bitcast<i32>(X[base + j * step]);
    }
    var q = 0;
    if (img > 0u) {
        q = clamp(round_i(f32(s) * bitcast<f32>(P[4])) + bitcast<i32>(P[6]),
                  bitcast<i32>(P[7]), bitcast<i32>(P[8]));
    }
    Y[i] = bitcast<u32>(q);",
        );
        let grid = r.grid(y.len());
        r.dispatch(&src, &[x.buffer(), y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// QLinearAveragePool: one thread per output, dequantize, sum in f32 in row-major window
// order, divide, quantize (see cpu::quant::qlinear_avg_pool)
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct AvgPoolKernel {
    window: crate::cpu::nn::Window,
    count_include_pad: bool,
    channels_last: bool,
}

impl Kernel for AvgPoolKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1, 2, 3, 4]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "X")?;
        let xs = &x.shape;
        let rank = xs.len();
        if rank < 3 {
            return Err(Error::shape("QLinearAveragePool needs rank >= 3"));
        }
        let (c, spatial) = if self.channels_last {
            (xs[rank - 1], &xs[1..rank - 1])
        } else {
            (xs[1], &xs[2..])
        };
        let kernel = self
            .window
            .kernel_shape
            .clone()
            .ok_or_else(|| Error::attr("QLinearAveragePool needs kernel_shape"))?;
        let g = self.window.resolve(spatial, &kernel)?;
        let no_pad = g.pad_begin == [0; 3] && g.pad_end == [0; 3];
        if no_pad && kernel.as_slice() == spatial {
            // As the CPU (and onnxruntime): the global pool's integer formula.
            return GlobalPoolKernel {
                channels_last: self.channels_last,
            }
            .encode(r, ins, outs);
        }
        let (odt, oshape) = out0(outs)?;
        let dt = x.dtype;
        let px = QParam::read(host_req(ins, 1, "x_scale")?, host(ins, 2), dt, "X")?;
        let py = QParam::read(host_req(ins, 3, "y_scale")?, host(ins, 4), dt, "Y")?;
        let (lo, hi) = range8(dt).ok_or_else(|| Error::unsupported_dtype("pool input"))?;
        let (isz, osz) = (g.in_size(), g.out_size());
        let total = xs[0] * c * osz;
        let y = r.alloc(odt, oshape)?;
        if y.len() != total {
            return Err(Error::shape("QLinearAveragePool output size"));
        }
        let (sx, sy) = if self.channels_last {
            ([isz * c, 1, c], [osz * c, 1, c])
        } else {
            ([c * isz, isz, 1], [c * osz, osz, 1])
        };
        let mut p: Vec<u32> = [
            total,
            c,
            osz,
            g.input[0],
            g.input[1],
            g.input[2],
            g.output[0],
            g.output[1],
            g.output[2],
            g.kernel[0],
            g.kernel[1],
            g.kernel[2],
            g.stride[0],
            g.stride[1],
            g.stride[2],
            g.pad_begin[0],
            g.pad_begin[1],
            g.pad_begin[2],
            sx[0],
            sx[1],
            sx[2],
            sy[0],
            sy[1],
            sy[2],
        ]
        .iter()
        .map(|&v| v as u32)
        .collect();
        p.extend([
            bits(px.scale),
            px.zp as u32,
            bits(py.scale),
            py.zp as u32,
            lo as u32,
            hi as u32,
            self.count_include_pad as u32,
            bits(g.k_size() as f32),
        ]);
        let src = linear_src(
            "@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read_write> Y: array<u32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;",
            "    let C = P[1];
    let osz = P[2];
    let sp = i % osz;
    let ch = (i / osz) % C;
    let n = i / (osz * C);
    let o2 = sp % P[8];
    let o1 = (sp / P[8]) % P[7];
    let o0 = sp / (P[8] * P[7]);
    let s0 = i32(o0 * P[12]) - i32(P[15]);
    let s1 = i32(o1 * P[13]) - i32(P[16]);
    let s2 = i32(o2 * P[14]) - i32(P[17]);
    let e0 = u32(max(min(s0 + i32(P[9]), i32(P[3])), 0));
    let e1 = u32(max(min(s1 + i32(P[10]), i32(P[4])), 0));
    let e2 = u32(max(min(s2 + i32(P[11]), i32(P[5])), 0));
    let b0 = u32(max(s0, 0));
    let b1 = u32(max(s1, 0));
    let b2 = u32(max(s2, 0));
    let xsc = bitcast<f32>(P[24]);
    let xz = bitcast<i32>(P[25]);
    let base = n * P[18] + ch * P[19];
    var sum = 0.0;
    for (var a = b0; a < e0; a++) {
        for (var b = b1; b < e1; b++) {
            for (var e = b2; e < e2; e++) {
                let d = xsc * f32(bitcast<i32>(X[base + ((a * P[4] + b) * P[5] + e) * P[20]]) - xz);
                sum += d;
            }
        }
    }
    var count = bitcast<f32>(P[31]);
    if (P[30] == 0u) {
        count = f32((max(e0, b0) - b0) * (max(e1, b1) - b1) * (max(e2, b2) - b2));
    }
    let avg = sum / count;
    let v = clamp(round(avg / bitcast<f32>(P[26]) + f32(bitcast<i32>(P[27]))),
                  f32(bitcast<i32>(P[28])), f32(bitcast<i32>(P[29])));
    Y[n * P[21] + ch * P[22] + sp * P[23]] = bitcast<u32>(i32(v));",
        );
        let grid = r.grid(total);
        r.dispatch(&src, &[x.buffer(), y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// QLinearSoftmax: one thread per row, onnxruntime's exp table (see the CPU kernel)
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct SoftmaxKernel {
    axis: i64,
    opset: i64,
}

impl Kernel for SoftmaxKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1, 2, 3, 4]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "X")?;
        let (odt, oshape) = out0(outs)?;
        let dt = x.dtype;
        let xs = k::scalar_scale(host_req(ins, 1, "X_scale")?, "X_scale")?;
        let py = QParam::read(host_req(ins, 3, "y_scale")?, host(ins, 4), dt, "Y")?;
        let shape = &x.shape;
        let rank = shape.len();
        let ax = crate::graph::attrs::norm_axis(self.axis, rank.max(1))?;
        let (d, inner) = if self.opset >= 13 {
            let d = shape.get(ax).copied().unwrap_or(1);
            (d, shape.get(ax + 1..).map_or(1, |s| s.iter().product()))
        } else {
            (shape.get(ax..).map_or(1, |s| s.iter().product()), 1)
        };
        let (lo, hi) = range8(dt).ok_or_else(|| Error::unsupported_dtype("softmax input"))?;
        // The table of cpu::quant::qlinear_softmax.
        let headroom = f64::from(f32::MAX / d.max(1) as f32).ln();
        let bit_shift = (headroom - 5.0).max(0.0) / f64::from(xs);
        let table: Vec<u32> = (0..256)
            .map(|j| bits(((f64::from(j) - 255.0 + bit_shift) * f64::from(xs)).exp() as f32))
            .collect();
        let ys = (1.0 / py.scale).floor();
        let y = r.alloc(odt, oshape)?;
        let rows = y.len().checked_div(d).unwrap_or(0);
        let mut p = vec![
            rows as u32,
            d as u32,
            inner.max(1) as u32,
            bits(ys),
            py.zp as u32,
            lo as u32,
            hi as u32,
            0,
        ];
        p.extend(table);
        let src = linear_src(
            "@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read_write> Y: array<u32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;",
            "    let d = P[1];
    let inner = P[2];
    let base = (i / inner) * d * inner + i % inner;
    var mx = -2147483647;
    for (var j = 0u; j < d; j++) { mx = max(mx, bitcast<i32>(X[base + j * inner])); }
    var sum = 0.0;
    for (var j = 0u; j < d; j++) {
        let t = u32(clamp(bitcast<i32>(X[base + j * inner]) - mx + 255, 0, 255));
        sum += bitcast<f32>(P[8u + t]);
    }
    let ys = bitcast<f32>(P[3]);
    for (var j = 0u; j < d; j++) {
        let t = u32(clamp(bitcast<i32>(X[base + j * inner]) - mx + 255, 0, 255));
        let v = round(bitcast<f32>(P[8u + t]) * ys / sum) + f32(bitcast<i32>(P[4]));
        let q = clamp(v, f32(bitcast<i32>(P[5])), f32(bitcast<i32>(P[6])));
        Y[base + j * inner] = bitcast<u32>(i32(q));
    }",
        );
        let grid = r.grid(rows);
        r.dispatch(&src, &[x.buffer(), y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let k8 = |b: Box<dyn Kernel>, ok: bool, why: &str| {
        if ok {
            Lowered::Kernel(b)
        } else {
            Lowered::Cpu(format!("{} {why} stays on the CPU", f.node.op_type))
        }
    };
    if let Some(q) = any.downcast_ref::<QuantizeLinear>() {
        let ok = matches!(f.in_dtype(0), Some(DType::F32 | DType::F16 | DType::BF16))
            && f.out_dtype(0)
                .is_some_and(|d| d != DType::F8E8M0 && k::is_quant_type(d))
            && f.in_dtype(1).is_some_and(|d| d.is_float());
        return k8(
            Box::new(QuantizeKernel {
                axis: q.axis,
                block: q.block_size,
                dequant: false,
                saturate: q.saturate,
            }),
            ok,
            "of int32 data, to float8e8m0, or with non-float scales",
        );
    }
    if let Some(q) = any.downcast_ref::<DequantizeLinear>() {
        let xdt = f.in_dtype(0);
        let ok = (xdt.is_some_and(|d| d != DType::F8E8M0 && k::is_quant_type(d))
            || (xdt == Some(DType::I32) && !f.has_input(2)))
            && matches!(f.out_dtype(0), Some(DType::F32 | DType::F16 | DType::BF16))
            && f.in_dtype(1).is_some_and(|d| d.is_float());
        return k8(
            Box::new(QuantizeKernel {
                axis: q.axis,
                block: q.block_size,
                dequant: true,
                saturate: true,
            }),
            ok,
            "of 32/64-bit or float8e8m0 data, to float64, or with non-float scales,",
        );
    }
    if any.is::<DynamicQuantizeLinear>() {
        return k8(
            Box::new(DynQuantKernel),
            f.in_dtype(0) == Some(DType::F32),
            "of non-float32",
        );
    }
    if let Some(b) = any.downcast_ref::<QLinearBinary>() {
        let ok = is8(f.in_dtype(0))
            && f.in_dtype(0) == f.in_dtype(3)
            && [1, 2, 4, 5, 6, 7].iter().all(|&i| one_value(f, i));
        return k8(Box::new(BinaryKernel { op: b.op }), ok, "of this type");
    }
    if let Some(t) = any.downcast_ref::<LookupTable>() {
        let ok = is8(f.in_dtype(0))
            && super::Storage::of(t.table.dtype()).is_some()
            && t.table.len() == 256;
        return k8(
            Box::new(TableKernel {
                table: t.table.clone(),
                dev: Mutex::new(None),
            }),
            ok,
            "of this type",
        );
    }
    if let Some(l) = any.downcast_ref::<QLinearLookup>() {
        return k8(
            Box::new(LookupKernel {
                kind: l.kind,
                dev: Mutex::new(None),
            }),
            is8(f.in_dtype(0)),
            "of this type",
        );
    }
    if let Some(c) = any.downcast_ref::<QLinearConcat>() {
        let n = f.ins.len();
        let ok = is8(f.in_dtype(1)) && (2..n).step_by(3).all(|i| f.in_dtype(i) == f.in_dtype(1));
        let host: Vec<usize> = (0..n).filter(|i| *i < 2 || (i - 2) % 3 != 0).collect();
        return k8(
            Box::new(ConcatKernel { axis: c.axis, host }),
            ok,
            "of this type",
        );
    }
    if let Some(g) = any.downcast_ref::<QLinearGlobalAveragePool>() {
        return k8(
            Box::new(GlobalPoolKernel {
                channels_last: g.channels_last,
            }),
            is8(f.in_dtype(0)),
            "of this type",
        );
    }
    if let Some(a) = any.downcast_ref::<QLinearAveragePool>() {
        let dilated = a
            .window
            .dilations
            .as_ref()
            .is_some_and(|d| d.iter().any(|&v| v != 1));
        return k8(
            Box::new(AvgPoolKernel {
                window: a.window.clone(),
                count_include_pad: a.count_include_pad,
                channels_last: a.channels_last,
            }),
            is8(f.in_dtype(0)) && !dilated,
            "of this type or dilated",
        );
    }
    if let Some(s) = any.downcast_ref::<QLinearSoftmax>() {
        return k8(
            Box::new(SoftmaxKernel {
                axis: s.axis,
                opset: s.opset,
            }),
            is8(f.in_dtype(0)),
            "of this type",
        );
    }
    Lowered::NotMine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack4_pads_rows_to_words() {
        let (w, kw) = pack4(&[1, -1, 3, 4, 5, 6, 7, 8, 9, -128], 2, 5);
        assert_eq!(kw, 2);
        assert_eq!(w, vec![0x0403_ff01, 0x05, 0x0908_0706, 0x80]);
    }

    #[test]
    fn broadcast_strides() {
        assert_eq!(
            bcast_strides(&[3, 1], &[2, 3, 4]).unwrap_or_default(),
            vec![0, 1, 0]
        );
        assert_eq!(
            bcast_strides(&[2, 3, 4], &[2, 3, 4]).unwrap_or_default(),
            vec![12, 4, 1]
        );
        assert!(bcast_strides(&[5], &[3]).is_err());
    }
}
