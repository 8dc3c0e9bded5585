//! Attention (opset 23/24) and RotaryEmbedding on the GPU, following the CPU kernels in
//! `crate::cpu::attention` step by step, in f32:
//!
//! 1. present_key / present_value: past (B, Hkv, P, D) followed by the new keys/values
//!    read from their 3-D or 4-D layout;
//! 2. scores (B, Hq, Sq, T): scaled `Q·Kᵀ`, softcap, the side output for modes 0/1, the
//!    mask (additive float or boolean, broadcast), causal and `nonpad_kv_seqlen` limits,
//!    the side output for mode 2;
//! 3. a stable softmax per row (an all -inf row becomes NaN, as on the CPU), the side
//!    output for mode 3;
//! 4. `P·V` written straight into the output layout.
//!
//! RotaryEmbedding reads `position_ids` on the GPU: an id out of the cache is clamped
//! (a shader cannot fail; the CPU reports an error), constant ids are checked here.

use super::record::{Recorder, LINEAR};
use super::{GpuTensor, In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::attention::{mask_strides, view, AttnParams, View};
use crate::error::{Error, Result};
use crate::graph::ops::attention::{
    Attention, CausalConvWithState, LinearAttention, RotaryEmbedding,
};
use crate::tensor::{DType, Tensor};

fn dev<'a>(ins: &'a [In], i: usize, what: &str) -> Result<&'a GpuTensor> {
    ins.get(i)
        .ok_or_else(|| Error::runtime(format!("missing {what}")))?
        .dev()
}

fn opt_dev<'a>(ins: &'a [In], i: usize) -> Option<&'a GpuTensor> {
    match ins.get(i) {
        Some(In::Dev(t)) => Some(t),
        _ => None,
    }
}

/// Rounds to float16 when the tensor is float16 (outputs are stored widened).
fn narrow(dt: DType, v: &str) -> String {
    match dt {
        DType::F16 => format!("unpack2x16float(pack2x16float(vec2<f32>({v}, 0.0))).x"),
        _ => v.to_string(),
    }
}

fn concat_source(past: bool, dt: DType) -> String {
    let (decl, read) = if past {
        (
            "@group(0) @binding(0) var<storage, read> PAST: array<f32>;
@group(0) @binding(1) var<storage, read> CUR: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;",
            "if (t < past) { v = PAST[((b * h_n + h) * past + t) * d_n + e]; } else { v = CUR[b * P[5] + h * P[6] + (t - past) * P[7] + e]; }",
        )
    } else {
        (
            "@group(0) @binding(0) var<storage, read> CUR: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;",
            "v = CUR[b * P[5] + h * P[6] + (t - past) * P[7] + e];",
        )
    };
    let out = narrow(dt, "v");
    format!(
        "{LINEAR}
{decl}
// P: n H T D past | cur strides sb sh ss
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let h_n = P[1];
    let t_n = P[2];
    let d_n = P[3];
    let past = P[4];
    let e = i % d_n;
    let t = (i / d_n) % t_n;
    let h = (i / (d_n * t_n)) % h_n;
    let b = i / (d_n * t_n * h_n);
    var v = 0.0;
    {read}
    Y[i] = {out};
}}
"
    )
}

/// Mask kinds of the scores kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MaskKind {
    None,
    Float,
    Bool,
}

// Scores params.
const S_N: usize = 0;
const S_HQ: usize = 1;
const S_SQ: usize = 2;
const S_T: usize = 3;
const S_D: usize = 4;
const S_REPS: usize = 5;
const S_HKV: usize = 6;
const S_QSB: usize = 7;
const S_QSH: usize = 8;
const S_QSS: usize = 9;
const S_SCALE: usize = 10;
const S_CAP: usize = 11;
const S_PAST: usize = 12;
const S_CAUSAL: usize = 13;
const S_MODE: usize = 14;
const S_MST: usize = 15;
const S_MCOLS: usize = 19;
const S_VALID: usize = 20;

fn scores_source(mask: MaskKind, want_qk: bool, dt: DType) -> String {
    let mut b = 0;
    let mut decl = String::new();
    let mut bind = |name: &str, ty: &str, rw: bool| {
        decl.push_str(&format!(
            "@group(0) @binding({b}) var<storage, {}> {name}: array<{ty}>;\n",
            if rw { "read_write" } else { "read" }
        ));
        b += 1;
    };
    bind("Q", "f32", false);
    bind("K", "f32", false);
    match mask {
        MaskKind::None => {}
        MaskKind::Float => bind("M", "f32", false),
        MaskKind::Bool => bind("M", "u32", false),
    }
    bind("S", "f32", true);
    if want_qk {
        bind("QK", "f32", true);
    }
    bind("P", "u32", false);
    let mask_add = match mask {
        MaskKind::None => String::new(),
        MaskKind::Float | MaskKind::Bool => {
            let m = if mask == MaskKind::Float {
                "M[mo]".to_string()
            } else {
                "select(ninf, 0.0, M[mo] != 0u)".to_string()
            };
            format!(
                "if (j < P[{S_MCOLS}]) {{
        let mo = b * P[{S_MST}] + h * P[{}] + i * P[{}] + j;
        x = x + {m};
    }} else {{
        x = ninf;
    }}",
                S_MST + 1,
                S_MST + 2
            )
        }
    };
    let (qk01, qk2) = if want_qk {
        (
            format!("if (P[{S_MODE}] <= 1u) {{ QK[g] = {}; }}", narrow(dt, "x")),
            format!("if (P[{S_MODE}] == 2u) {{ QK[g] = {}; }}", narrow(dt, "x")),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "{LINEAR}
{decl}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let g = linear_id(gid, nwg);
    if (g >= P[{S_N}]) {{ return; }}
    let t_n = P[{S_T}];
    let sq = P[{S_SQ}];
    let hq = P[{S_HQ}];
    let d_n = P[{S_D}];
    let j = g % t_n;
    let i = (g / t_n) % sq;
    let h = (g / (t_n * sq)) % hq;
    let b = g / (t_n * sq * hq);
    let kh = h / P[{S_REPS}];
    let qo = b * P[{S_QSB}] + h * P[{S_QSH}] + i * P[{S_QSS}];
    let ko = ((b * P[{S_HKV}] + kh) * t_n + j) * d_n;
    var acc = 0.0;
    for (var e = 0u; e < d_n; e++) {{ acc += Q[qo + e] * K[ko + e]; }}
    var x = acc * bitcast<f32>(P[{S_SCALE}]);
    let cap = bitcast<f32>(P[{S_CAP}]);
    if (cap > 0.0) {{ x = cap * tanh(clamp(x * (1.0 / cap), -15.0, 15.0)); }}
    {qk01}
    let ninf = bitcast<f32>(0xff800000u + P[0] * 0u);
    {mask_add}
    if (P[{S_CAUSAL}] != 0u && j >= P[{S_PAST}] + i + 1u) {{ x = ninf; }}
    if (j >= P[{S_VALID}u + b]) {{ x = ninf; }}
    {qk2}
    S[g] = x;
}}
"
    )
}

fn softmax_source(want_qk: bool, dt: DType) -> String {
    let (decl, qk) = if want_qk {
        (
            "@group(0) @binding(0) var<storage, read_write> S: array<f32>;
@group(0) @binding(1) var<storage, read_write> QK: array<f32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;",
            format!("if (P[2] != 0u) {{ QK[o] = {}; }}", narrow(dt, "v")),
        )
    } else {
        (
            "@group(0) @binding(0) var<storage, read_write> S: array<f32>;
@group(0) @binding(1) var<storage, read> P: array<u32>;",
            String::new(),
        )
    };
    format!(
        "{LINEAR}
{decl}
// P: rows T qk3
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let r = linear_id(gid, nwg);
    if (r >= P[0]) {{ return; }}
    let t_n = P[1];
    let base = r * t_n;
    // f32::max semantics: a NaN score never becomes the maximum.
    var m = bitcast<f32>(0xff800000u + P[0] * 0u);
    for (var j = 0u; j < t_n; j++) {{
        let x = S[base + j];
        m = select(m, x, x > m);
    }}
    var s = 0.0;
    for (var j = 0u; j < t_n; j++) {{
        let x = exp(S[base + j] - m);
        S[base + j] = x;
        s += x;
    }}
    let inv = 1.0 / s;
    for (var j = 0u; j < t_n; j++) {{
        let o = base + j;
        let v = S[o] * inv;
        S[o] = v;
        {qk}
    }}
}}
"
    )
}

fn pv_source(dt: DType) -> String {
    let out = narrow(dt, "acc");
    format!(
        "{LINEAR}
@group(0) @binding(0) var<storage, read> S: array<f32>;
@group(0) @binding(1) var<storage, read> V: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;
// P: n Hq Sq T Dv reps Hkv rank3
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let g = linear_id(gid, nwg);
    if (g >= P[0]) {{ return; }}
    let hq = P[1];
    let sq = P[2];
    let t_n = P[3];
    let dv = P[4];
    // Output coordinates (b, h, i, e) from the output layout.
    var b = 0u; var h = 0u; var i = 0u;
    let e = g % dv;
    if (P[7] != 0u) {{
        h = (g / dv) % hq;
        i = (g / (dv * hq)) % sq;
        b = g / (dv * hq * sq);
    }} else {{
        i = (g / dv) % sq;
        h = (g / (dv * sq)) % hq;
        b = g / (dv * sq * hq);
    }}
    let so = ((b * hq + h) * sq + i) * t_n;
    let vo = (b * P[6] + h / P[5]) * t_n * dv + e;
    var acc = 0.0;
    for (var j = 0u; j < t_n; j++) {{ acc += S[so + j] * V[vo + j * dv]; }}
    Y[g] = {out};
}}
"
    )
}

#[derive(Debug)]
struct AttentionKernel {
    p: AttnParams,
    host: Vec<usize>,
}

impl AttentionKernel {
    /// present = past ++ current, (B, H, P+S, D).
    fn present(
        &self,
        r: &mut Recorder,
        past: Option<&GpuTensor>,
        cur: &GpuTensor,
        v: View,
        out: &(DType, Vec<usize>),
        what: &str,
    ) -> Result<GpuTensor> {
        let p = match past {
            Some(t) => {
                let sh = &t.shape;
                if sh.len() != 4 || sh[0] != v.b || sh[1] != v.h || sh[3] != v.d {
                    return Err(Error::shape(format!(
                        "Attention: past_{what} has shape {sh:?}, expected [{}, {}, P, {}]",
                        v.b, v.h, v.d
                    )));
                }
                sh[2]
            }
            None => 0,
        };
        let t = p + v.s;
        let shape = vec![v.b, v.h, t, v.d];
        if out.1 != shape {
            return Err(Error::shape(format!(
                "Attention: present_{what} is {shape:?}, the shape rule says {:?}",
                out.1
            )));
        }
        let y = r.alloc(out.0, shape)?;
        let n = y.len();
        if n == 0 {
            return Ok(y);
        }
        let params = [
            n as u32,
            v.h as u32,
            t as u32,
            v.d as u32,
            p as u32,
            v.sb as u32,
            v.sh as u32,
            v.ss as u32,
        ];
        let src = concat_source(past.is_some(), out.0);
        let grid = r.grid(n);
        match past {
            Some(pt) => r.dispatch(
                &src,
                &[pt.buffer(), cur.buffer(), y.buffer()],
                &params,
                grid,
            )?,
            None => r.dispatch(&src, &[cur.buffer(), y.buffer()], &params, grid)?,
        }
        Ok(y)
    }
}

impl Kernel for AttentionKernel {
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let p = &self.p;
        let q = dev(ins, 0, "Q")?;
        let k = dev(ins, 1, "K")?;
        let v = dev(ins, 2, "V")?;
        let rank = q.shape.len();
        if k.shape.len() != rank || v.shape.len() != rank {
            return Err(Error::shape(
                "Attention: Q, K and V must have the same rank",
            ));
        }
        let qv = view(&q.shape, p.q_num_heads, "Q")?;
        let kv = view(&k.shape, p.kv_num_heads, "K")?;
        let vv = view(&v.shape, p.kv_num_heads, "V")?;
        if kv.b != qv.b || vv.b != qv.b || kv.s != vv.s || kv.h != vv.h || kv.d != qv.d {
            return Err(Error::shape(format!(
                "Attention: incompatible shapes Q {:?}, K {:?}, V {:?}",
                q.shape, k.shape, v.shape
            )));
        }
        if kv.h == 0 || qv.h % kv.h != 0 {
            return Err(Error::shape(format!(
                "Attention: {} query heads are not a multiple of {} kv heads",
                qv.h, kv.h
            )));
        }
        let reps = qv.h / kv.h;
        let o = |i: usize| outs.get(i).ok_or_else(|| Error::runtime("missing output"));
        let pk = self.present(r, opt_dev(ins, 4), k, kv, o(1)?, "key")?;
        let pv = self.present(r, opt_dev(ins, 5), v, vv, o(2)?, "value")?;
        if pk.shape[2] != pv.shape[2] {
            return Err(Error::shape(
                "Attention: past_key and past_value lengths differ",
            ));
        }
        let t = pk.shape[2];
        let past = t - kv.s;
        let (b, hq, sq, d, dv) = (qv.b, qv.h, qv.s, qv.d, vv.d);
        let scale = p.scale.unwrap_or(1.0 / (d as f32).sqrt());
        let mask = opt_dev(ins, 3);
        let (mst, mcols, mkind) = match mask {
            Some(m) => {
                let (st, cols) = mask_strides(&m.shape, b, hq, sq, t)?;
                let kind = if m.dtype == DType::Bool {
                    MaskKind::Bool
                } else {
                    MaskKind::Float
                };
                (st, cols, kind)
            }
            None => ([0; 4], 0, MaskKind::None),
        };
        let valid: Vec<u32> = match ins.get(6).and_then(|x| x.host()) {
            Some(nt) => {
                let nv = nt.to_i64_vec()?;
                if nv.len() != b {
                    return Err(Error::shape(format!(
                        "Attention: nonpad_kv_seqlen has {} entries for batch {b}",
                        nv.len()
                    )));
                }
                nv.iter()
                    .map(|&x| usize::try_from(x).unwrap_or(0).min(t) as u32)
                    .collect()
            }
            None => vec![t as u32; b],
        };
        let (ydt, yshape) = o(0)?;
        let want_y = if rank == 3 {
            vec![b, sq, hq * dv]
        } else {
            vec![b, hq, sq, dv]
        };
        if *yshape != want_y {
            return Err(Error::shape(format!(
                "Attention: output is {want_y:?}, the shape rule says {yshape:?}"
            )));
        }
        let (qkdt, qkshape) = o(3)?;
        let sshape = vec![b, hq, sq, t];
        if *qkshape != sshape {
            return Err(Error::shape("Attention: qk output shape mismatch"));
        }
        let dt = *ydt;
        let y = r.alloc(dt, yshape.clone())?;
        let s = r.alloc(DType::F32, sshape.clone())?;
        let qk = if p.want_qk {
            Some(r.alloc(*qkdt, sshape.clone())?)
        } else {
            None
        };
        let ns = s.len();
        if ns > 0 {
            let mut params = vec![0u32; S_VALID];
            params[S_N] = ns as u32;
            params[S_HQ] = hq as u32;
            params[S_SQ] = sq as u32;
            params[S_T] = t as u32;
            params[S_D] = d as u32;
            params[S_REPS] = reps as u32;
            params[S_HKV] = kv.h as u32;
            params[S_QSB] = qv.sb as u32;
            params[S_QSH] = qv.sh as u32;
            params[S_QSS] = qv.ss as u32;
            params[S_SCALE] = scale.to_bits();
            params[S_CAP] = p.softcap.to_bits();
            params[S_PAST] = past as u32;
            params[S_CAUSAL] = p.is_causal as u32;
            params[S_MODE] = p.qk_mode as u32;
            for (i, &st) in mst.iter().enumerate() {
                params[S_MST + i] = st as u32;
            }
            params[S_MCOLS] = mcols as u32;
            params.extend(&valid);
            let mut bufs: Vec<&wgpu::Buffer> = vec![q.buffer(), pk.buffer()];
            if let Some(m) = mask {
                bufs.push(m.buffer());
            }
            bufs.push(s.buffer());
            if let Some(qk) = &qk {
                bufs.push(qk.buffer());
            }
            let grid = r.grid(ns);
            r.dispatch(
                &scores_source(mkind, qk.is_some(), dt),
                &bufs,
                &params,
                grid,
            )?;
            let rows = b * hq * sq;
            let sp = [rows as u32, t as u32, (p.qk_mode == 3) as u32];
            let grid = r.grid(rows);
            let src = softmax_source(qk.is_some(), dt);
            match &qk {
                Some(qk) => r.dispatch(&src, &[s.buffer(), qk.buffer()], &sp, grid)?,
                None => r.dispatch(&src, &[s.buffer()], &sp, grid)?,
            }
        }
        let ny = y.len();
        if ny > 0 {
            if t == 0 {
                return Err(Error::runtime("Attention: no keys to attend to"));
            }
            let params = [
                ny as u32,
                hq as u32,
                sq as u32,
                t as u32,
                dv as u32,
                reps as u32,
                kv.h as u32,
                (rank == 3) as u32,
            ];
            let grid = r.grid(ny);
            r.dispatch(
                &pv_source(dt),
                &[s.buffer(), pv.buffer(), y.buffer()],
                &params,
                grid,
            )?;
        }
        // Without the QK output the scores stand in (nothing reads them).
        let qk = qk.unwrap_or(GpuTensor {
            buf: s.buf.clone(),
            shape: sshape,
            dtype: *qkdt,
        });
        Ok(vec![Out::Dev(y), Out::Dev(pk), Out::Dev(pv), Out::Dev(qk)])
    }
}

// ---------------------------------------------------------------------------------------
// RotaryEmbedding

fn rotary_source(pos: bool, dt: DType) -> String {
    let (decl, row) = if pos {
        (
            "@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> C: array<f32>;
@group(0) @binding(2) var<storage, read> SN: array<f32>;
@group(0) @binding(3) var<storage, read> POS: array<i32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
@group(0) @binding(5) var<storage, read> P: array<u32>;",
            "u32(clamp(POS[b * s_n + s], 0, i32(P[9]) - 1))",
        )
    } else {
        (
            "@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> C: array<f32>;
@group(0) @binding(2) var<storage, read> SN: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read> P: array<u32>;",
            "b * s_n + s",
        )
    };
    let out = narrow(dt, "v");
    format!(
        "{LINEAR}
{decl}
// P: n S H D rank3 R interleaved | sb ss | rows
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let s_n = P[1];
    let h_n = P[2];
    let d_n = P[3];
    let r = P[5];
    let e = i % d_n;
    var s = 0u;
    var b = 0u;
    if (P[4] != 0u) {{
        s = (i / (d_n * h_n)) % s_n;
        b = i / (d_n * h_n * s_n);
    }} else {{
        s = (i / d_n) % s_n;
        b = i / (d_n * s_n * h_n);
    }}
    let o = i - e;
    var v = X[i];
    if (e < r) {{
        let half = r / 2u;
        let row = {row};
        if (P[6] != 0u) {{
            let j = e / 2u;
            let c = C[row * half + j];
            let sn = SN[row * half + j];
            if (e % 2u == 0u) {{
                v = c * X[o + e] - sn * X[o + e + 1u];
            }} else {{
                v = sn * X[o + e - 1u] + c * X[o + e];
            }}
        }} else {{
            if (e < half) {{
                v = C[row * half + e] * X[o + e] - SN[row * half + e] * X[o + e + half];
            }} else {{
                let j = e - half;
                v = SN[row * half + j] * X[o + j] + C[row * half + j] * X[o + e];
            }}
        }}
    }}
    Y[i] = {out};
}}
"
    )
}

#[derive(Debug)]
struct RotaryKernel {
    interleaved: bool,
    rot_dim: usize,
    num_heads: Option<usize>,
    /// Constant position ids, checked against the cache at encode time.
    pos: Option<Tensor>,
}

impl Kernel for RotaryKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "input")?;
        let cos = dev(ins, 1, "cos_cache")?;
        let sin = dev(ins, 2, "sin_cache")?;
        let pos = opt_dev(ins, 3);
        let (b, s, h, d, rank3) = match *x.shape.as_slice() {
            [b, h, s, d] => (b, s, h, d, false),
            [b, s, hid] => {
                let h = self
                    .num_heads
                    .ok_or_else(|| Error::attr("RotaryEmbedding: 3-D input needs num_heads"))?;
                if h == 0 || hid % h != 0 {
                    return Err(Error::shape(format!(
                        "RotaryEmbedding: hidden size {hid} not divisible by num_heads {h}"
                    )));
                }
                (b, s, h, hid / h, true)
            }
            _ => {
                return Err(Error::shape(format!(
                    "RotaryEmbedding: input must be 3-D or 4-D, got {:?}",
                    x.shape
                )))
            }
        };
        let rd = if self.rot_dim == 0 { d } else { self.rot_dim };
        if rd > d || rd % 2 != 0 {
            return Err(Error::shape(format!(
                "RotaryEmbedding: rotary_embedding_dim {rd} must be even and at most head size {d}"
            )));
        }
        let half = rd / 2;
        if cos.shape != sin.shape {
            return Err(Error::shape(
                "RotaryEmbedding: cos_cache and sin_cache shapes differ",
            ));
        }
        let cs = &cos.shape;
        if cs.last().copied() != Some(half) {
            return Err(Error::shape(format!(
                "RotaryEmbedding: cache last dim {:?} must be rotary_embedding_dim/2 = {half}",
                cs.last()
            )));
        }
        match pos {
            Some(p) => {
                if p.shape != [b, s] || cs.len() != 2 {
                    return Err(Error::shape(format!(
                        "RotaryEmbedding: position_ids {:?} must be [{b}, {s}] with 2-D caches",
                        p.shape
                    )));
                }
                if let Some(t) = &self.pos {
                    for id in t.to_i64_vec()? {
                        if usize::try_from(id).map_or(true, |u| u >= cs[0]) {
                            return Err(Error::runtime(format!(
                                "RotaryEmbedding: position id {id} out of range [0, {})",
                                cs[0]
                            )));
                        }
                    }
                }
            }
            None => {
                if cs.as_slice() != [b, s, half] {
                    return Err(Error::shape(format!(
                        "RotaryEmbedding: caches {cs:?} must be [{b}, {s}, {half}] without position_ids"
                    )));
                }
            }
        }
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let y = r.alloc(*dt, oshape.clone())?;
        let n = y.len();
        if n == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        if pos.is_some() && cs[0] == 0 {
            return Err(Error::runtime("RotaryEmbedding: empty cache"));
        }
        let params = [
            n as u32,
            s as u32,
            h as u32,
            d as u32,
            rank3 as u32,
            rd as u32,
            self.interleaved as u32,
            0,
            0,
            cs[0] as u32,
        ];
        let src = rotary_source(pos.is_some(), *dt);
        let grid = r.grid(n);
        match pos {
            Some(p) => r.dispatch(
                &src,
                &[
                    x.buffer(),
                    cos.buffer(),
                    sin.buffer(),
                    p.buffer(),
                    y.buffer(),
                ],
                &params,
                grid,
            )?,
            None => r.dispatch(
                &src,
                &[x.buffer(), cos.buffer(), sin.buffer(), y.buffer()],
                &params,
                grid,
            )?,
        }
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// CausalConvWithState and LinearAttention

/// Storage-buffer declarations at bindings 0.. in order: (name, WGSL type, writable).
fn bindings(list: &[(&str, &str, bool)]) -> String {
    list.iter()
        .enumerate()
        .map(|(i, (name, ty, rw))| {
            format!(
                "@group(0) @binding({i}) var<storage, {}> {name}: array<{ty}>;\n",
                if *rw { "read_write" } else { "read" }
            )
        })
        .collect()
}

fn causal_conv_source(bias: bool, past: bool, silu: bool, dt: DType) -> String {
    let mut list = vec![("X", "f32", false), ("W", "f32", false)];
    if bias {
        list.push(("BI", "f32", false));
    }
    if past {
        list.push(("PAST", "f32", false));
    }
    list.push(("Y", "f32", true));
    list.push(("ST", "f32", true));
    list.push(("P", "u32", false));
    let decl = bindings(&list);
    let b0 = if bias { "BI[ci]" } else { "0.0" };
    let past_read = if past { "PAST[so + p]" } else { "0.0" };
    let act = if silu { "acc * sigmoid_(acc)" } else { "acc" };
    let out = narrow(dt, "v");
    let st = narrow(dt, "pad_(row, so, xo, l + i, km1)");
    format!(
        "{LINEAR}
{decl}
fn sigmoid_(x: f32) -> f32 {{
    if (x >= 0.0) {{ return 1.0 / (1.0 + exp(-x)); }}
    let e = exp(x);
    return e / (1.0 + e);
}}
// The padded row: the K-1 state values, then the input.
fn pad_(row: u32, so: u32, xo: u32, p: u32, km1: u32) -> f32 {{
    if (p < km1) {{ return {past_read}; }}
    return X[xo + p - km1];
}}
// P: n(B*C*L) C L K
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let g = linear_id(gid, nwg);
    if (g >= P[0]) {{ return; }}
    let l = P[2];
    let k = P[3];
    let km1 = k - 1u;
    let t = g % l;
    let row = g / l;
    let ci = row % P[1];
    let so = row * km1;
    let xo = row * l;
    var acc = {b0};
    for (var j = 0u; j < k; j++) {{ acc += pad_(row, so, xo, t + j, km1) * W[ci * k + j]; }}
    let v = {act};
    Y[g] = {out};
    // The thread of the row's first step also writes the row's new state.
    if (t == 0u) {{
        for (var i = 0u; i < km1; i++) {{ ST[so + i] = {st}; }}
    }}
}}
"
    )
}

#[derive(Debug)]
struct CausalConvKernel {
    silu: bool,
}

impl Kernel for CausalConvKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "input")?;
        let w = dev(ins, 1, "weight")?;
        let bias = opt_dev(ins, 2);
        let past = opt_dev(ins, 3);
        let [bn, c, l] = *x.shape.as_slice() else {
            return Err(Error::shape(format!(
                "CausalConvWithState: input must be 3-D, got {:?}",
                x.shape
            )));
        };
        let k = match *w.shape.as_slice() {
            [wc, 1, k] if wc == c && k >= 1 => k,
            _ => {
                return Err(Error::shape(format!(
                    "CausalConvWithState: weight {:?} must be [{c}, 1, K]",
                    w.shape
                )))
            }
        };
        if bias.is_some_and(|t| t.shape != [c]) {
            return Err(Error::shape("CausalConvWithState: bias must be [C]"));
        }
        if let Some(t) = past {
            if t.shape != [bn, c, k - 1] {
                return Err(Error::shape(format!(
                    "CausalConvWithState: past_state {:?} must be [{bn}, {c}, {}]",
                    t.shape,
                    k - 1
                )));
            }
        }
        let o = |i: usize| outs.get(i).ok_or_else(|| Error::runtime("missing output"));
        let (ydt, yshape) = o(0)?;
        let (sdt, sshape) = o(1)?;
        if *sshape != [bn, c, k - 1] {
            return Err(Error::shape("CausalConvWithState: state shape mismatch"));
        }
        let y = r.alloc(*ydt, yshape.clone())?;
        let st = r.alloc(*sdt, sshape.clone())?;
        let n = y.len();
        if n == 0 {
            // No input steps: the state carries over (zeros without a past).
            let ns = st.len();
            if ns > 0 {
                let src = state_init_source(past.is_some());
                let grid = r.grid(ns);
                match past {
                    Some(p) => r.dispatch(&src, &[p.buffer(), st.buffer()], &[ns as u32], grid)?,
                    None => r.dispatch(&src, &[st.buffer()], &[ns as u32], grid)?,
                }
            }
            return Ok(vec![Out::Dev(y), Out::Dev(st)]);
        }
        let mut bufs = vec![x.buffer(), w.buffer()];
        if let Some(b) = bias {
            bufs.push(b.buffer());
        }
        if let Some(p) = past {
            bufs.push(p.buffer());
        }
        bufs.push(y.buffer());
        bufs.push(st.buffer());
        let src = causal_conv_source(bias.is_some(), past.is_some(), self.silu, *ydt);
        let grid = r.grid(n);
        r.dispatch(&src, &bufs, &[n as u32, c as u32, l as u32, k as u32], grid)?;
        Ok(vec![Out::Dev(y), Out::Dev(st)])
    }
}

/// One thread per (batch, kv head, value column): the state column it owns evolves
/// independently of the others under every update rule.
fn linear_attention_source(gating: bool, delta: bool, dt: DType, st_dt: DType) -> String {
    let mut list = vec![
        ("Q", "f32", false),
        ("K", "f32", false),
        ("V", "f32", false),
    ];
    if gating {
        list.push(("G", "f32", false));
    }
    if delta {
        list.push(("BE", "f32", false));
    }
    list.push(("Y", "f32", true));
    list.push(("ST", "f32", true));
    list.push(("P", "u32", false));
    let decl = bindings(&list);
    let gate = if gating {
        "for (var i = 0u; i < dk; i++) {
            let f = exp(G[row * hkv * dec_w + h * dec_w + select(i, 0u, dec_w == 1u)]);
            ST[so + i * dv] = ST[so + i * dv] * f;
        }"
    } else {
        ""
    };
    let del = if delta {
        "var rr = 0.0;
        for (var i = 0u; i < dk; i++) { rr += ST[so + i * dv] * K[ko + i]; }
        let bv = BE[row * bet_w + select(h, 0u, bet_w == 1u)];
        x = bv * (x - rr);"
    } else {
        ""
    };
    let out = narrow(dt, "acc");
    let st = narrow(st_dt, "ST[so + i * dv]");
    format!(
        "{LINEAR}
{decl}
// P: n(B*Hkv*dv) T hq hkv dk dv scale dec_w bet_w
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let g = linear_id(gid, nwg);
    if (g >= P[0]) {{ return; }}
    let t_n = P[1];
    let hq = P[2];
    let hkv = P[3];
    let dk = P[4];
    let dv = P[5];
    let scale = bitcast<f32>(P[6]);
    let dec_w = P[7];
    let bet_w = P[8];
    let group = hq / hkv;
    let m = g % dv;
    let h = (g / dv) % hkv;
    let b = g / (dv * hkv);
    let so = (b * hkv + h) * dk * dv + m;
    for (var t = 0u; t < t_n; t++) {{
        let row = b * t_n + t;
        {gate}
        let ko = row * hkv * dk + h * dk;
        var x = V[row * hkv * dv + h * dv + m];
        {del}
        for (var i = 0u; i < dk; i++) {{ ST[so + i * dv] = ST[so + i * dv] + K[ko + i] * x; }}
        for (var gq = 0u; gq < group; gq++) {{
            let qh = h * group + gq;
            let qo = row * hq * dk + qh * dk;
            var acc = 0.0;
            for (var i = 0u; i < dk; i++) {{ acc += (Q[qo + i] * scale) * ST[so + i * dv]; }}
            Y[row * hq * dv + qh * dv + m] = {out};
        }}
    }}
    for (var i = 0u; i < dk; i++) {{ ST[so + i * dv] = {st}; }}
}}
"
    )
}

/// The state's starting value: a copy of past_state, or zeros.
fn state_init_source(past: bool) -> String {
    let (decl, v) = if past {
        (
            bindings(&[
                ("PAST", "f32", false),
                ("ST", "f32", true),
                ("P", "u32", false),
            ]),
            "PAST[i]",
        )
    } else {
        (bindings(&[("ST", "f32", true), ("P", "u32", false)]), "0.0")
    };
    format!(
        "{LINEAR}
{decl}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    ST[i] = {v};
}}
"
    )
}

#[derive(Debug)]
struct LinearAttentionKernel {
    gating: bool,
    delta: bool,
    hq: usize,
    hkv: usize,
    scale: f32,
}

impl Kernel for LinearAttentionKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let q = dev(ins, 0, "query")?;
        let k = dev(ins, 1, "key")?;
        let v = dev(ins, 2, "value")?;
        let past = opt_dev(ins, 3);
        let decay = opt_dev(ins, 4);
        let beta = opt_dev(ins, 5);
        let bad = |m: String| Err(Error::shape(format!("LinearAttention: {m}")));
        let (&[b, t, qh], &[kb, kt, kh], &[vb, vt, vh]) =
            (q.shape.as_slice(), k.shape.as_slice(), v.shape.as_slice())
        else {
            return bad("query, key and value must be 3-D".into());
        };
        let (hq, hkv) = (self.hq, self.hkv);
        if hq == 0 || hkv == 0 || !hq.is_multiple_of(hkv) || qh % hq != 0 || vh % hkv != 0 {
            return bad(format!("heads {hq}/{hkv} do not divide the hidden sizes"));
        }
        let (dk, dv) = (qh / hq, vh / hkv);
        if (kb, kt, kh, vb, vt) != (b, t, hkv * dk, b, t) {
            return bad(format!(
                "shapes {:?}, {:?}, {:?} do not agree",
                q.shape, k.shape, v.shape
            ));
        }
        if self.gating != decay.is_some() || self.delta != beta.is_some() {
            return Err(Error::input(
                "LinearAttention: decay/beta presence does not match update_rule",
            ));
        }
        let dec_w = match decay.map(|d| d.shape.as_slice()) {
            Some(&[x, y, z]) if x == b && y == t && z == hkv => 1,
            Some(&[x, y, z]) if x == b && y == t && z == hkv * dk => dk,
            Some(s) => return bad(format!("decay shape {s:?} is invalid")),
            None => 0,
        };
        let bet_w = match beta.map(|d| d.shape.as_slice()) {
            Some(&[x, y, z]) if x == b && y == t && (z == hkv || z == 1) => z,
            Some(s) => return bad(format!("beta shape {s:?} is invalid")),
            None => 0,
        };
        let st_shape = vec![b, hkv, dk, dv];
        if let Some(p) = past {
            if p.shape != st_shape {
                return bad(format!("past_state {:?} must be {st_shape:?}", p.shape));
            }
        }
        let o = |i: usize| outs.get(i).ok_or_else(|| Error::runtime("missing output"));
        let (ydt, yshape) = o(0)?;
        let (sdt, sshape) = o(1)?;
        if *sshape != st_shape || *yshape != [b, t, hq * dv] {
            return bad("output shapes do not match the shape rule".into());
        }
        let y = r.alloc(*ydt, yshape.clone())?;
        let st = r.alloc(*sdt, st_shape)?;
        let ns = st.len();
        if ns > 0 {
            let grid = r.grid(ns);
            let src = state_init_source(past.is_some());
            match past {
                Some(p) => r.dispatch(&src, &[p.buffer(), st.buffer()], &[ns as u32], grid)?,
                None => r.dispatch(&src, &[st.buffer()], &[ns as u32], grid)?,
            }
        }
        let n = b * hkv * dv;
        if n > 0 && t > 0 {
            let mut bufs = vec![q.buffer(), k.buffer(), v.buffer()];
            if let Some(d) = decay {
                bufs.push(d.buffer());
            }
            if let Some(be) = beta {
                bufs.push(be.buffer());
            }
            bufs.push(y.buffer());
            bufs.push(st.buffer());
            let params = [
                n as u32,
                t as u32,
                hq as u32,
                hkv as u32,
                dk as u32,
                dv as u32,
                self.scale_for(dk).to_bits(),
                dec_w as u32,
                bet_w as u32,
            ];
            let src = linear_attention_source(self.gating, self.delta, *ydt, *sdt);
            let grid = r.grid(n);
            r.dispatch(&src, &bufs, &params, grid)?;
        }
        Ok(vec![Out::Dev(y), Out::Dev(st)])
    }
}

impl LinearAttentionKernel {
    /// The op's scale: the attribute, or 1/sqrt(dk) when it is 0 (as the CPU op does).
    fn scale_for(&self, dk: usize) -> f32 {
        if self.scale == 0.0 {
            1.0 / (dk.max(1) as f32).sqrt()
        } else {
            self.scale
        }
    }
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let float = |i: usize| matches!(f.in_dtype(i), Some(DType::F32 | DType::F16));
    if let Some(a) = any.downcast_ref::<Attention>() {
        if !(float(0) && float(1) && float(2)) || f.in_dtype(0) != f.in_dtype(1) {
            return Lowered::Cpu("Attention on these dtypes stays on the CPU".into());
        }
        for i in [4, 5] {
            if f.has_input(i) && f.in_dtype(i) != f.in_dtype(0) {
                return Lowered::Cpu("Attention: past of another dtype stays on the CPU".into());
            }
        }
        if f.has_input(3) && !(float(3) || f.in_dtype(3) == Some(DType::Bool)) {
            return Lowered::Cpu("Attention: a mask of this dtype stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(AttentionKernel {
            p: a.p,
            host: vec![6],
        }));
    }
    if let Some(re) = any.downcast_ref::<RotaryEmbedding>() {
        if !(float(0) && float(1) && float(2)) {
            return Lowered::Cpu("RotaryEmbedding on these dtypes stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(RotaryKernel {
            interleaved: re.interleaved,
            rot_dim: re.rotary_embedding_dim,
            num_heads: re.num_heads,
            pos: f.consts.get(3).copied().flatten().cloned(),
        }));
    }
    if let Some(c) = any.downcast_ref::<CausalConvWithState>() {
        let all = (0..f.ins.len()).all(|i| !f.has_input(i) || float(i));
        if !all {
            return Lowered::Cpu("CausalConvWithState on these dtypes stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(CausalConvKernel { silu: c.silu }));
    }
    if let Some(la) = any.downcast_ref::<LinearAttention>() {
        let all = (0..f.ins.len()).all(|i| !f.has_input(i) || float(i));
        if !all {
            return Lowered::Cpu("LinearAttention on these dtypes stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(LinearAttentionKernel {
            gating: la.rule.gating,
            delta: la.rule.delta,
            hq: la.q_num_heads,
            hkv: la.kv_num_heads,
            scale: la.scale,
        }));
    }
    Lowered::NotMine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_of_3d_and_4d() {
        let v = view(&[2, 5, 12], Some(3), "Q").unwrap();
        assert_eq!((v.h, v.d, v.sb, v.sh, v.ss), (3, 4, 60, 4, 12));
        let v = view(&[2, 3, 5, 4], None, "Q").unwrap();
        assert_eq!((v.h, v.d, v.sb, v.sh, v.ss), (3, 4, 60, 20, 4));
        assert!(view(&[2, 5, 12], Some(5), "Q").is_err());
        assert!(view(&[2, 5, 12], None, "Q").is_err());
    }

    #[test]
    fn mask_broadcast_strides() {
        // [Sq, T] mask over (B=2, H=3, Sq=4, T=6).
        assert_eq!(
            mask_strides(&[4, 6], 2, 3, 4, 6).unwrap(),
            ([0, 0, 6, 1], 6)
        );
        // [B, 1, Sq, T'] with fewer key columns.
        assert_eq!(
            mask_strides(&[2, 1, 4, 5], 2, 3, 4, 6).unwrap(),
            ([20, 0, 5, 1], 5)
        );
        assert!(mask_strides(&[3, 4, 6], 2, 2, 4, 6).is_err());
        assert!(mask_strides(&[4, 7], 2, 3, 4, 6).is_err());
    }
}
