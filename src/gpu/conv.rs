//! Conv and ConvTranspose on the GPU (f32).
//!
//! Conv is an implicit GEMM per (image, group): `Y[m, p] = Σ_k W[m, k] · X̂[k, p]` with
//! `k` = (input channel, kernel tap) and `p` = output pixel, where `X̂` (the im2col
//! matrix) is never built: the kernel gathers its tile straight from the input, zero
//! outside the padding. Tiles of 64 output channels × 64 pixels, K in steps of 16
//! through workgroup memory, 4×4 outputs per thread; 1×1 stride-1 unpadded convs read
//! the input as a plain matrix. Depthwise convs (one input and one output channel per
//! group) run a direct kernel, one thread per output. Bias and the fused activation are
//! applied as outputs are written. The geometry is `Window::resolve`, as on the CPU.
//!
//! ConvTranspose is the direct gather form: each output sums the inputs whose taps
//! land on it.

use super::elementwise::{activation_helpers, activation_wgsl};
use super::record::{Recorder, LINEAR};
use super::{GpuTensor, In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::nn::{conv_transpose_geom, Geom, TransposeAttrs, Window};
use crate::error::{Error, Result};
use crate::graph::ops::nn::{Conv, ConvTranspose};
use crate::graph::Activation;
use crate::tensor::DType;

/// The output expression: accumulator `acc` plus the bias of channel `mc`, activated.
fn epilogue(act: Option<Activation>, bias: bool) -> String {
    let v = if bias {
        "(acc + Bias[mc])".to_string()
    } else {
        "acc".to_string()
    };
    match act {
        Some(a) => activation_wgsl(a, &v),
        None => v,
    }
}

/// The bindings after X (0), W (1), Y (2): the optional bias, then the params.
fn tail_bindings(bias: bool) -> &'static str {
    if bias {
        "@group(0) @binding(3) var<storage, read> Bias: array<f32>;\n\
         @group(0) @binding(4) var<storage, read> P: array<u32>;\n"
    } else {
        "@group(0) @binding(3) var<storage, read> P: array<u32>;\n"
    }
}

// P (GEMM): MG NP K G | C M cg isz | id ih iw | od oh ow | kd kh kw | sd sh sw | dd dh dw |
// pd ph pw
/// `half`: float16 operands with `shader-f16`: f16 tiles, K steps of 32, exact products
/// accumulated in f32, output rounded to f16 (as MatMul's, see `matmul::source`).
fn gemm_source(act: Option<Activation>, bias: bool, pointwise: bool, half: bool) -> String {
    let (enable, ty, kt) = if half {
        ("enable f16;\n", "f16", 32u32)
    } else {
        ("", "f32", 16u32)
    };
    let mut out = epilogue(act, bias);
    if half {
        out = super::elementwise::narrow_wgsl(DType::F16, &out, Default::default());
    }
    let load_b = if pointwise {
        "if (gk < K && pok) { vb = X[xbase + gk * isz + p]; }"
    } else {
        "if (gk < K && pok) {
                let c = gk / ksz; let r = gk % ksz;
                let a = r / khw; let r2 = r % khw;
                let bq = r2 / kw; let e = r2 % kw;
                let iz = zd0 + i32(a * P[20]);
                let iy = zh0 + i32(bq * P[21]);
                let ix = zw0 + i32(e * P[22]);
                if (iz >= 0 && iz < i32(P[8]) && iy >= 0 && iy < i32(P[9]) && ix >= 0 && ix < i32(P[10])) {
                    vb = X[xbase + c * isz + (u32(iz) * P[9] + u32(iy)) * P[10] + u32(ix)];
                }
            }"
    };
    format!(
        "{enable}{helpers}
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> W: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
{tail}
var<workgroup> As: array<{ty}, {tile}>;
var<workgroup> Bs: array<{ty}, {tile}>;
@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {{
    let MG = P[0]; let NP = P[1]; let K = P[2]; let G = P[3];
    let C = P[4]; let M = P[5]; let cg = P[6]; let isz = P[7];
    let kw = P[16]; let khw = P[15] * kw; let ksz = P[14] * khw;
    let n = wid.z / G; let gi = wid.z % G;
    let m0 = wid.y * 64u; let p0 = wid.x * 64u;
    let tid = lid.y * 16u + lid.x;
    let wbase = gi * MG * K;
    let xbase = (n * C + gi * cg) * isz;
    // The B tile column this thread loads is fixed: its output pixel's window origin.
    let p = p0 + tid % 64u;
    let pok = p < NP;
    let ow_ = p % P[13]; let t1 = p / P[13];
    let oh_ = t1 % P[12]; let od_ = t1 / P[12];
    let zd0 = i32(od_ * P[17]) - i32(P[23]);
    let zh0 = i32(oh_ * P[18]) - i32(P[24]);
    let zw0 = i32(ow_ * P[19]) - i32(P[25]);
    var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < K; k0 += {kt}u) {{
        for (var l = 0u; l < {loads}u; l++) {{
            let e = tid + l * 256u;
            let mm = e / {kt}u; let kk = e % {kt}u;
            let gm = m0 + mm; let gka = k0 + kk;
            var va = 0.0;
            if (gm < MG && gka < K) {{ va = W[wbase + gm * K + gka]; }}
            As[kk * 64u + mm] = {ty}(va);
            let kb = e / 64u;
            let gk = k0 + kb;
            var vb = 0.0;
            {load_b}
            Bs[kb * 64u + tid % 64u] = {ty}(vb);
        }}
        workgroupBarrier();
        for (var kk = 0u; kk < {kt}u; kk++) {{
            let ab = kk * 64u + lid.y * 4u;
            let a = vec4<f32>(vec4<{ty}>(As[ab], As[ab + 1u], As[ab + 2u], As[ab + 3u]));
            let bb = kk * 64u + lid.x * 4u;
            let bv = vec4<f32>(vec4<{ty}>(Bs[bb], Bs[bb + 1u], Bs[bb + 2u], Bs[bb + 3u]));
            acc0 += a.x * bv; acc1 += a.y * bv; acc2 += a.z * bv; acc3 += a.w * bv;
        }}
        workgroupBarrier();
    }}
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {{
        let m = m0 + lid.y * 4u + i;
        if (m >= MG) {{ break; }}
        let mc = gi * MG + m;
        for (var j = 0u; j < 4u; j++) {{
            let q = p0 + lid.x * 4u + j;
            if (q >= NP) {{ break; }}
            let acc = rows[i][j];
            Y[(n * M + mc) * NP + q] = {out};
        }}
    }}
}}
",
        helpers = activation_helpers(),
        tail = tail_bindings(bias),
        tile = 64 * kt,
        loads = kt / 4,
    )
}

// P (depthwise): total C osz isz | id ih iw | od oh ow | kd kh kw | sd sh sw | dd dh dw |
// pd ph pw
fn depthwise_source(act: Option<Activation>, bias: bool) -> String {
    format!(
        "{LINEAR}{helpers}
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> W: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
{tail}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let C = P[1]; let osz = P[2]; let isz = P[3];
    let ih = P[5]; let iw = P[6];
    let kd = P[10]; let kh = P[11]; let kw = P[12];
    let p = i % osz; let plane = i / osz; let mc = plane % C;
    let ow_ = p % P[9]; let t1 = p / P[9];
    let oh_ = t1 % P[8]; let od_ = t1 / P[8];
    let zd0 = i32(od_ * P[13]) - i32(P[19]);
    let zh0 = i32(oh_ * P[14]) - i32(P[20]);
    let zw0 = i32(ow_ * P[15]) - i32(P[21]);
    let xb = plane * isz;
    let wb = mc * kd * kh * kw;
    var acc = 0.0;
    for (var a = 0u; a < kd; a++) {{
        let iz = zd0 + i32(a * P[16]);
        if (iz < 0 || iz >= i32(P[4])) {{ continue; }}
        for (var b = 0u; b < kh; b++) {{
            let iy = zh0 + i32(b * P[17]);
            if (iy < 0 || iy >= i32(ih)) {{ continue; }}
            let row = xb + (u32(iz) * ih + u32(iy)) * iw;
            let wrow = wb + (a * kh + b) * kw;
            for (var e = 0u; e < kw; e++) {{
                let ix = zw0 + i32(e * P[18]);
                if (ix < 0 || ix >= i32(iw)) {{ continue; }}
                acc += X[row + u32(ix)] * W[wrow + e];
            }}
        }}
    }}
    Y[i] = {out};
}}
",
        helpers = activation_helpers(),
        tail = tail_bindings(bias),
        out = epilogue(act, bias),
    )
}

// P (transpose): total C M cg mg isz osz | id ih iw | od oh ow | kd kh kw | sd sh sw |
// dd dh dw | pd ph pw
fn transpose_source(bias: bool) -> String {
    format!(
        "{LINEAR}
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> W: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
{tail}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let C = P[1]; let M = P[2]; let cg = P[3]; let mg = P[4];
    let isz = P[5]; let osz = P[6];
    let id = i32(P[7]); let ih = P[8]; let iw = P[9];
    let kd = P[13]; let kh = P[14]; let kw = P[15];
    let sd = i32(P[16]); let sh = i32(P[17]); let sw = i32(P[18]);
    let p = i % osz; let plane = i / osz;
    let mc = plane % M; let n = plane / M;
    let gi = mc / mg; let ml = mc % mg;
    let ow_ = p % P[12]; let t1 = p / P[12];
    let oh_ = t1 % P[11]; let od_ = t1 / P[11];
    let zd = i32(od_ + P[22]); let zh = i32(oh_ + P[23]); let zw = i32(ow_ + P[24]);
    let ksz = kd * kh * kw;
    var acc = 0.0;
    for (var a = 0u; a < kd; a++) {{
        let td = zd - i32(a * P[19]);
        if (td < 0 || td % sd != 0 || td / sd >= id) {{ continue; }}
        for (var b = 0u; b < kh; b++) {{
            let th = zh - i32(b * P[20]);
            if (th < 0 || th % sh != 0 || th / sh >= i32(ih)) {{ continue; }}
            for (var e = 0u; e < kw; e++) {{
                let tw = zw - i32(e * P[21]);
                if (tw < 0 || tw % sw != 0 || tw / sw >= i32(iw)) {{ continue; }}
                let xo = (u32(td / sd) * ih + u32(th / sh)) * iw + u32(tw / sw);
                let tap = (a * kh + b) * kw + e;
                for (var c = 0u; c < cg; c++) {{
                    let ci = gi * cg + c;
                    acc += X[(n * C + ci) * isz + xo] * W[(ci * mg + ml) * ksz + tap];
                }}
            }}
        }}
    }}
    Y[i] = {out};
}}
",
        tail = tail_bindings(bias),
        out = epilogue(None, bias),
    )
}

/// The geometry words shared by the kernels: input, output, kernel, strides,
/// dilations, begin pads (18 words).
fn geom_words(g: &Geom) -> Vec<u32> {
    let mut v = Vec::with_capacity(18);
    for a in [
        g.input,
        g.output,
        g.kernel,
        g.stride,
        g.dilation,
        g.pad_begin,
    ] {
        v.extend(a.iter().map(|&x| x as u32));
    }
    v
}

/// Checks that every size fits the kernels' 32-bit index math.
fn fits_u32(vals: &[usize]) -> Result<()> {
    if vals.iter().any(|&v| v > u32::MAX as usize / 2) {
        return Err(Error::unsupported_op(
            "a convolution too large for the GPU's 32-bit indexing",
        ));
    }
    Ok(())
}

fn inputs<'a>(ins: &'a [In]) -> Result<(&'a GpuTensor, &'a GpuTensor, Option<&'a GpuTensor>)> {
    let x = ins
        .first()
        .ok_or_else(|| Error::runtime("missing input"))?
        .dev()?;
    let w = ins
        .get(1)
        .ok_or_else(|| Error::runtime("missing weights"))?
        .dev()?;
    let b = match ins.get(2) {
        Some(In::Dev(b)) if !b.is_empty() => Some(*b),
        _ => None,
    };
    Ok((x, w, b))
}

#[derive(Debug)]
struct ConvKernel {
    window: Window,
    group: usize,
    activation: Option<Activation>,
    /// float16 tiles in the implicit GEMM (see [`gemm_source`]).
    half: bool,
}

impl Kernel for ConvKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let (x, w, bias) = inputs(ins)?;
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let (xs, ws) = (&x.shape, &w.shape);
        if xs.len() < 3 || ws.len() != xs.len() {
            return Err(Error::shape(format!(
                "Conv input {xs:?} and weights {ws:?}: need rank >= 3 and equal ranks"
            )));
        }
        let (n, c, m, cg) = (xs[0], xs[1], ws[0], ws[1]);
        let group = self.group;
        if group == 0 || cg.checked_mul(group) != Some(c) || m % group != 0 {
            return Err(Error::shape(format!(
                "Conv with {c} input channels, weights {ws:?} and group {group} do not fit"
            )));
        }
        let mg = m / group;
        let g = self.window.resolve(&xs[2..], &ws[2..])?;
        if let Some(b) = bias {
            if b.len() != m {
                return Err(Error::shape(format!(
                    "Conv bias has {} values for {m} output channels",
                    b.len()
                )));
            }
        }
        let y = r.alloc(*dt, oshape.clone())?;
        let (isz, osz, ksz) = (g.in_size(), g.out_size(), g.k_size());
        if y.len() != n * m * osz {
            return Err(Error::shape(
                "Conv output shape disagrees with its geometry",
            ));
        }
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        fits_u32(&[x.len(), w.len(), y.len(), cg * ksz])?;
        let mut bufs = vec![x.buffer(), w.buffer(), y.buffer()];
        if let Some(b) = bias {
            bufs.push(b.buffer());
        }
        if cg == 1 && mg == 1 {
            let total = y.len();
            let mut params = vec![total as u32, m as u32, osz as u32, isz as u32];
            params.extend(geom_words(&g));
            let src = depthwise_source(self.activation, bias.is_some());
            let grid = r.grid(total);
            r.dispatch(&src, &bufs, &params, grid)?;
        } else {
            let pointwise = g.kernel == [1; 3]
                && g.stride == [1; 3]
                && g.pad_begin == [0; 3]
                && g.pad_end == [0; 3];
            let mut params = vec![
                mg as u32,
                osz as u32,
                (cg * ksz) as u32,
                group as u32,
                c as u32,
                m as u32,
                cg as u32,
                isz as u32,
            ];
            params.extend(geom_words(&g));
            let src = gemm_source(self.activation, bias.is_some(), pointwise, self.half);
            let grid = [
                osz.div_ceil(64) as u32,
                mg.div_ceil(64) as u32,
                (n * group) as u32,
            ];
            r.dispatch(&src, &bufs, &params, grid)?;
        }
        Ok(vec![Out::Dev(y)])
    }
}

#[derive(Debug)]
struct ConvTransposeKernel {
    window: Window,
    group: usize,
    extra: TransposeAttrs,
}

impl Kernel for ConvTransposeKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let (x, w, bias) = inputs(ins)?;
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let (xs, ws) = (&x.shape, &w.shape);
        if xs.len() < 3 || ws.len() != xs.len() {
            return Err(Error::shape(format!(
                "ConvTranspose input {xs:?} and weights {ws:?}: need rank >= 3 and equal ranks"
            )));
        }
        let (n, c) = (xs[0], xs[1]);
        let group = self.group;
        if group == 0 || ws[0] != c || c % group != 0 {
            return Err(Error::shape(format!(
                "ConvTranspose with {c} input channels, weights {ws:?}, group {group}"
            )));
        }
        let (cg, mg) = (c / group, ws[1]);
        let m = mg * group;
        let g = conv_transpose_geom(&xs[2..], &ws[2..], &self.window, &self.extra)?;
        if let Some(b) = bias {
            if b.len() != m {
                return Err(Error::shape("ConvTranspose bias length"));
            }
        }
        let y = r.alloc(*dt, oshape.clone())?;
        let (isz, osz) = (g.in_size(), g.out_size());
        if y.len() != n * m * osz {
            return Err(Error::shape(
                "ConvTranspose output shape disagrees with its geometry",
            ));
        }
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        fits_u32(&[x.len(), w.len(), y.len()])?;
        let total = y.len();
        let mut params = vec![
            total as u32,
            c as u32,
            m as u32,
            cg as u32,
            mg as u32,
            isz as u32,
            osz as u32,
        ];
        params.extend(geom_words(&g));
        let mut bufs = vec![x.buffer(), w.buffer(), y.buffer()];
        if let Some(b) = bias {
            bufs.push(b.buffer());
        }
        let src = transpose_source(bias.is_some());
        let grid = r.grid(total);
        r.dispatch(&src, &bufs, &params, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

pub(super) fn lower(f: &NodeFacts, cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let floats = f.float_inputs();
    let half = cx.summary.shader_f16
        && (0..f.ins.len()).all(|i| !f.has_input(i) || f.in_dtype(i) == Some(DType::F16));
    if let Some(cv) = any.downcast_ref::<Conv>() {
        if !floats {
            return Lowered::Cpu("Conv on non-float inputs stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(ConvKernel {
            window: cv.window.clone(),
            group: cv.group,
            activation: cv.activation,
            half,
        }));
    }
    if let Some(ct) = any.downcast_ref::<ConvTranspose>() {
        if !floats {
            return Lowered::Cpu("ConvTranspose on non-float inputs stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(ConvTransposeKernel {
            window: ct.window.clone(),
            group: ct.group,
            extra: ct.extra.clone(),
        }));
    }
    Lowered::NotMine
}
