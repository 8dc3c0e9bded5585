//! MatMul and Gemm on the GPU: one tiled kernel (64×64 output tiles, K in steps of 16
//! through workgroup memory, 4×4 outputs per thread). Operands are read through
//! strides, so transposes and broadcast batches cost nothing; Gemm's C, MatMul's fused
//! bias and the fused activation are applied as the tile is written.

use super::elementwise::{activation_helpers, activation_wgsl};
use super::record::Recorder;
use super::{In, Kernel, Lowered, NodeFacts, Out};
use crate::error::{Error, Result};
use crate::graph::ops::nn::{Gemm, MatMul};
use crate::graph::Activation;
use crate::tensor::{DType, Tensor};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct MatMulKernel {
    gemm: Option<crate::cpu::nn::GemmAttrs>,
    activation: Option<Activation>,
    /// MatMul's fused row bias (a load-time constant), uploaded on first use.
    bias: Option<Arc<Tensor>>,
    bias_dev: Mutex<Option<super::GpuTensor>>,
    /// float16 tiles (see [`source`]).
    half: bool,
}

/// `half`: float16 operands with `shader-f16`: the tiles in workgroup memory are f16
/// (half the memory, so K advances 32 per step instead of 16), products of two f16 are
/// exact in f32 and accumulate there (the tensor-core scheme), and the output is
/// rounded to f16 as it is written.
fn source(act: Option<Activation>, bias: bool, half: bool) -> String {
    let mut out = String::from("v");
    if bias {
        out = "(v + beta * C[P[10] + m * P[8] + n * P[9]])".into();
    }
    if let Some(a) = act {
        out = activation_wgsl(a, &out);
    }
    let (enable, ty, kt) = if half {
        out = super::elementwise::narrow_wgsl(DType::F16, &out, Default::default());
        ("enable f16;\n", "f16", 32u32)
    } else {
        ("", "f32", 16u32)
    };
    let cbind = if bias {
        "@group(0) @binding(3) var<storage, read> C: array<f32>;\n\
         @group(0) @binding(4) var<storage, read> P: array<u32>;\n"
    } else {
        "@group(0) @binding(3) var<storage, read> P: array<u32>;\n"
    };
    format!(
        "{enable}{helpers}
@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
{cbind}
var<workgroup> As: array<{ty}, {tile}>;
var<workgroup> Bs: array<{ty}, {tile}>;
// P: M N K batch | sam sak sbk sbn | scm scn coff | alpha beta | a_off[batch] b_off[batch]
@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {{
    let M = P[0]; let N = P[1]; let K = P[2]; let nb = P[3];
    let sam = P[4]; let sak = P[5]; let sbk = P[6]; let sbn = P[7];
    let alpha = bitcast<f32>(P[11]); let beta = bitcast<f32>(P[12]);
    let b = wid.z;
    let aoff = P[13u + b];
    let boff = P[13u + nb + b];
    let m0 = wid.y * 64u;
    let n0 = wid.x * 64u;
    let tid = lid.y * 16u + lid.x;
    var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < K; k0 += {kt}u) {{
        for (var l = 0u; l < {loads}u; l++) {{
            let e = tid + l * 256u;
            let mm = e / {kt}u; let kk = e % {kt}u;
            let gm = m0 + mm; let gk = k0 + kk;
            var va = 0.0;
            if (gm < M && gk < K) {{ va = A[aoff + gm * sam + gk * sak]; }}
            As[kk * 64u + mm] = {ty}(va);
            let kb = e / 64u; let nn = e % 64u;
            let gk2 = k0 + kb; let gn = n0 + nn;
            var vb = 0.0;
            if (gk2 < K && gn < N) {{ vb = B[boff + gk2 * sbk + gn * sbn]; }}
            Bs[kb * 64u + nn] = {ty}(vb);
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
        if (m >= M) {{ break; }}
        for (var j = 0u; j < 4u; j++) {{
            let n = n0 + lid.x * 4u + j;
            if (n >= N) {{ break; }}
            let v = alpha * rows[i][j];
            Y[(b * M + m) * N + n] = {out};
        }}
    }}
}}
",
        helpers = activation_helpers(),
        tile = 64 * kt,
        loads = kt / 4,
    )
}

impl Kernel for MatMulKernel {
    fn rounds_outputs(&self) -> bool {
        self.half
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let a = ins
            .first()
            .ok_or_else(|| Error::runtime("missing A"))?
            .dev()?;
        let b = ins
            .get(1)
            .ok_or_else(|| Error::runtime("missing B"))?
            .dev()?;
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let y = r.alloc(*dt, oshape.clone())?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let mut params: Vec<u32>;
        let (m, n, k, batch);
        let a_offs: Vec<usize>;
        let b_offs: Vec<usize>;
        let (sam, sak, sbk, sbn);
        let mut alpha = 1.0f32;
        let mut beta = 1.0f32;
        let mut cstr = (0usize, 0usize);
        let mut c_buf: Option<super::GpuTensor> = None;
        if let Some(g) = &self.gemm {
            if a.shape.len() != 2 || b.shape.len() != 2 {
                return Err(Error::shape("Gemm operands must be 2-D"));
            }
            let (ar, ac) = (a.shape[0], a.shape[1]);
            let (br, bc) = (b.shape[0], b.shape[1]);
            (m, k) = if g.trans_a { (ac, ar) } else { (ar, ac) };
            n = if g.trans_b { br } else { bc };
            let kb = if g.trans_b { bc } else { br };
            if kb != k {
                return Err(Error::shape(format!(
                    "Gemm inner dims differ: {:?} and {:?}",
                    a.shape, b.shape
                )));
            }
            (sam, sak) = if g.trans_a { (1, ac) } else { (ac, 1) };
            (sbk, sbn) = if g.trans_b { (1, bc) } else { (bc, 1) };
            batch = 1;
            a_offs = vec![0];
            b_offs = vec![0];
            alpha = g.alpha;
            beta = g.beta;
            if let Some(In::Dev(c)) = ins.get(2) {
                // C broadcasts to [M, N] (unidirectional).
                let cs = &c.shape;
                let (cr, cc) = match cs.len() {
                    0 => (1, 1),
                    1 => (1, cs[0]),
                    2 => (cs[0], cs[1]),
                    _ => return Err(Error::shape("Gemm C must have rank ≤ 2")),
                };
                if (cr != 1 && cr != m) || (cc != 1 && cc != n) {
                    return Err(Error::shape(format!(
                        "Gemm C {cs:?} does not broadcast to [{m}, {n}]"
                    )));
                }
                cstr = (if cr == 1 { 0 } else { cc }, if cc == 1 { 0 } else { 1 });
                c_buf = Some((*c).clone());
            }
        } else {
            let (ash, bsh) = (&a.shape, &b.shape);
            if ash.is_empty() || bsh.is_empty() {
                return Err(Error::shape("MatMul operands must have rank ≥ 1"));
            }
            let a2: Vec<usize> = if ash.len() == 1 {
                vec![1, ash[0]]
            } else {
                ash.clone()
            };
            let b2: Vec<usize> = if bsh.len() == 1 {
                vec![bsh[0], 1]
            } else {
                bsh.clone()
            };
            m = a2[a2.len() - 2];
            k = a2[a2.len() - 1];
            n = b2[b2.len() - 1];
            if b2[b2.len() - 2] != k {
                return Err(Error::shape(format!(
                    "MatMul inner dims differ: {ash:?} and {bsh:?}"
                )));
            }
            (sam, sak, sbk, sbn) = (k, 1, n, 1);
            let ab = &a2[..a2.len() - 2];
            let bb = &b2[..b2.len() - 2];
            let rk = ab.len().max(bb.len());
            let pad = |s: &[usize]| -> Vec<usize> {
                let mut v = vec![1; rk - s.len()];
                v.extend_from_slice(s);
                v
            };
            let (ab, bb) = (pad(ab), pad(bb));
            let ob: Vec<usize> = ab.iter().zip(&bb).map(|(x, y)| *x.max(y)).collect();
            batch = ob.iter().product();
            let strides = |s: &[usize], mat: usize| -> Vec<usize> {
                let mut st = vec![0; rk];
                let mut acc = mat;
                for d in (0..rk).rev() {
                    st[d] = if s[d] == 1 { 0 } else { acc };
                    acc *= s[d];
                }
                st
            };
            let (sa, sb) = (strides(&ab, m * k), strides(&bb, k * n));
            let mut ao = Vec::with_capacity(batch);
            let mut bo = Vec::with_capacity(batch);
            for i in 0..batch {
                let (mut rem, mut oa, mut obf) = (i, 0, 0);
                for d in (0..rk).rev() {
                    let c = rem % ob[d];
                    rem /= ob[d];
                    oa += c * sa[d];
                    obf += c * sb[d];
                }
                ao.push(oa);
                bo.push(obf);
            }
            a_offs = ao;
            b_offs = bo;
            if let Some(bias) = &self.bias {
                let mut cache = self
                    .bias_dev
                    .lock()
                    .map_err(|_| Error::runtime("poisoned"))?;
                if cache.is_none() {
                    *cache = Some(r.upload(bias)?);
                }
                let c = cache.clone().ok_or_else(|| Error::runtime("bias upload"))?;
                if c.len() != n {
                    return Err(Error::shape("fused MatMul bias length differs from N"));
                }
                cstr = (0, 1);
                c_buf = Some(c);
            }
        }
        if batch > 65535 {
            return Err(Error::unsupported_dtype(
                "MatMul batch over 65535 on the GPU",
            ));
        }
        params = vec![
            m as u32,
            n as u32,
            k as u32,
            batch as u32,
            sam as u32,
            sak as u32,
            sbk as u32,
            sbn as u32,
            cstr.0 as u32,
            cstr.1 as u32,
            0,
            alpha.to_bits(),
            beta.to_bits(),
        ];
        params.extend(a_offs.iter().map(|&x| x as u32));
        params.extend(b_offs.iter().map(|&x| x as u32));
        let src = source(self.activation, c_buf.is_some(), self.half);
        let grid = [n.div_ceil(64) as u32, m.div_ceil(64) as u32, batch as u32];
        let mut bufs = vec![a.buffer(), b.buffer(), y.buffer()];
        if let Some(c) = &c_buf {
            bufs.push(c.buffer());
        }
        r.dispatch(&src, &bufs, &params, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

pub(super) fn lower(f: &NodeFacts, cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let floats = f.float_inputs();
    let half = cx.summary.shader_f16
        && (0..f.ins.len()).all(|i| !f.has_input(i) || f.in_dtype(i) == Some(DType::F16));
    if let Some(g) = any.downcast_ref::<Gemm>() {
        if !floats {
            return Lowered::Cpu("Gemm on non-float inputs stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(MatMulKernel {
            gemm: Some(g.attrs),
            activation: g.activation,
            bias: None,
            bias_dev: Mutex::new(None),
            half,
        }));
    }
    if let Some(mm) = any.downcast_ref::<MatMul>() {
        if !floats {
            return Lowered::Cpu("MatMul on non-float inputs stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(MatMulKernel {
            gemm: None,
            activation: mm.activation,
            bias: mm.bias.clone(),
            bias_dev: Mutex::new(None),
            half,
        }));
    }
    Lowered::NotMine
}
