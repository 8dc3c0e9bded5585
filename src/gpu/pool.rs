//! Pooling on the GPU: MaxPool (values only), AveragePool, LpPool with one thread per
//! output walking its window (the geometry is `Window::resolve`, as on the CPU, so
//! ceil_mode, dilations and pads agree), and the global pools with one workgroup per
//! (n, c) plane reducing through workgroup memory.

use super::elementwise::lit;
use super::record::{Recorder, LINEAR};
use super::{In, Kernel, Lowered, NodeFacts, Out, Storage};
use crate::cpu::nn::{GlobalKind, PoolKind, Window};
use crate::error::{Error, Result};
use crate::graph::ops::nn::{GlobalPool, MaxPool, Pool};
use crate::tensor::DType;

/// What a windowed pool computes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Max,
    Avg { count_include_pad: bool },
    Lp(f32),
}

/// `|x|^p`, 0 at 0 (WGSL's pow is undefined there).
fn pow_fn(p: f32) -> String {
    format!(
        "fn pw_(x: f32) -> f32 {{ let a = abs(x); if (a == 0.0) {{ return 0.0; }} return pow(a, {}); }}\n",
        lit(p)
    )
}

// P: total osz isz | id ih iw | od oh ow | kd kh kw | sd sh sw | dd dh dw | pd ph pw |
// ped peh pew
fn window_source(kind: Kind, st: Storage) -> String {
    let ty = st.wgsl();
    let (init, step, fin, extra) = match kind {
        Kind::Max => (
            match st {
                Storage::F32 => "bitcast<f32>(0xff800000u + P[0] * 0u)",
                Storage::I32 => "i32(-2147483647 - 1)",
                Storage::U32 => "0u",
            }
            .to_string(),
            "if (cnt == 0u || v > acc) { acc = v; }".to_string(),
            "acc".to_string(),
            String::new(),
        ),
        Kind::Avg { count_include_pad } => (
            "0.0".into(),
            "acc += v;".into(),
            format!(
                "select(acc / f32({div}), 0.0, {div} == 0u)",
                div = if count_include_pad {
                    "(pa * pb * pc)"
                } else {
                    "cnt"
                }
            ),
            String::new(),
        ),
        Kind::Lp(p) => (
            "0.0".into(),
            "acc += pw_(v);".into(),
            format!("select(pow(acc, {}), 0.0, acc == 0.0)", lit(1.0 / p)),
            pow_fn(p),
        ),
    };
    format!(
        "{LINEAR}{extra}
@group(0) @binding(0) var<storage, read> X: array<{ty}>;
@group(0) @binding(1) var<storage, read_write> Y: array<{ty}>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
fn padded_taps(o: u32, s: u32, k: u32, dl: u32, lim: u32) -> u32 {{
    var c = 0u;
    for (var t = 0u; t < k; t++) {{ if (o * s + t * dl < lim) {{ c++; }} }}
    return c;
}}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let osz = P[1]; let isz = P[2];
    let id = P[3]; let ih = P[4]; let iw = P[5];
    let kd = P[9]; let kh = P[10]; let kw = P[11];
    let sd = P[12]; let sh = P[13]; let sw = P[14];
    let dd = P[15]; let dh = P[16]; let dw = P[17];
    let pd = P[18]; let ph = P[19]; let pwd = P[20];
    let p = i % osz; let plane = i / osz;
    let ow_ = p % P[8]; let t1 = p / P[8];
    let oh_ = t1 % P[7]; let od_ = t1 / P[7];
    let pa = padded_taps(od_, sd, kd, dd, pd + id + P[21]);
    let pb = padded_taps(oh_, sh, kh, dh, ph + ih + P[22]);
    let pc = padded_taps(ow_, sw, kw, dw, pwd + iw + P[23]);
    let xb = plane * isz;
    var acc: {ty} = {init};
    var cnt = 0u;
    for (var a = 0u; a < kd; a++) {{
        let zd = od_ * sd + a * dd;
        if (zd < pd || zd - pd >= id) {{ continue; }}
        for (var b = 0u; b < kh; b++) {{
            let zh = oh_ * sh + b * dh;
            if (zh < ph || zh - ph >= ih) {{ continue; }}
            let row = xb + ((zd - pd) * ih + zh - ph) * iw;
            for (var e = 0u; e < kw; e++) {{
                let zw = ow_ * sw + e * dw;
                if (zw < pwd || zw - pwd >= iw) {{ continue; }}
                let v = X[row + zw - pwd];
                {step}
                cnt++;
            }}
        }}
    }}
    Y[i] = {fin};
}}
"
    )
}

#[derive(Debug)]
struct WindowPool {
    window: Window,
    kind: Kind,
    st: Storage,
}

impl Kernel for WindowPool {
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
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let xs = &x.shape;
        if xs.len() < 3 {
            return Err(Error::shape(format!(
                "pooling input {xs:?} needs rank >= 3"
            )));
        }
        let ks = self
            .window
            .kernel_shape
            .clone()
            .ok_or_else(|| Error::attr("pooling needs kernel_shape"))?;
        let g = self.window.resolve(&xs[2..], &ks)?;
        let y = r.alloc(*dt, oshape.clone())?;
        let (isz, osz) = (g.in_size(), g.out_size());
        if y.len() != xs[0] * xs[1] * osz {
            return Err(Error::shape(
                "pool output shape disagrees with its geometry",
            ));
        }
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        if x.len() > u32::MAX as usize / 2 || y.len() > u32::MAX as usize / 2 {
            return Err(Error::unsupported_op(
                "a pool too large for the GPU's 32-bit indexing",
            ));
        }
        let total = y.len();
        let mut params = vec![total as u32, osz as u32, isz as u32];
        for a in [
            g.input,
            g.output,
            g.kernel,
            g.stride,
            g.dilation,
            g.pad_begin,
            g.pad_end,
        ] {
            params.extend(a.iter().map(|&v| v as u32));
        }
        let src = window_source(self.kind, self.st);
        let grid = r.grid(total);
        r.dispatch(&src, &[x.buffer(), y.buffer()], &params, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

// P: planes sz
fn global_source(kind: GlobalKind) -> String {
    let (init, step, comb, fin, extra) = match kind {
        GlobalKind::Average => (
            "0.0".to_string(),
            "acc += v;",
            "S[t] + S[t + s]",
            "select(S[0] / f32(sz), bitcast<f32>(0x7fc00000u + P[0] * 0u), sz == 0u)".to_string(),
            String::new(),
        ),
        GlobalKind::Max => (
            "bitcast<f32>(0xff800000u + P[0] * 0u)".to_string(),
            // f32::max on the CPU skips NaN.
            "if (!((bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u)) { acc = max(acc, v); }",
            "max(S[t], S[t + s])",
            "S[0]".to_string(),
            String::new(),
        ),
        GlobalKind::Lp(p) => (
            "0.0".to_string(),
            "acc += pw_(v);",
            "S[t] + S[t + s]",
            format!("select(pow(S[0], {}), 0.0, S[0] == 0.0)", lit(1.0 / p)),
            pow_fn(p),
        ),
    };
    format!(
        "{extra}
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
var<workgroup> S: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let plane = wid.x + wid.y * nwg.x;
    let planes = P[0]; let sz = P[1];
    let ok = plane < planes;
    let t = lid.x;
    var acc: f32 = {init};
    if (ok) {{
        let base = plane * sz;
        for (var j = t; j < sz; j += 256u) {{
            let v = X[base + j];
            {step}
        }}
    }}
    S[t] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {{
        if (t < s) {{ S[t] = {comb}; }}
        workgroupBarrier();
    }}
    if (ok && t == 0u) {{ Y[plane] = {fin}; }}
}}
"
    )
}

#[derive(Debug)]
struct GlobalKernel {
    kind: GlobalKind,
}

impl Kernel for GlobalKernel {
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
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        if x.shape.len() < 2 {
            return Err(Error::shape("global pooling input needs rank >= 2"));
        }
        let planes = x.shape[0] * x.shape[1];
        let sz: usize = x.shape[2..].iter().product();
        let y = r.alloc(*dt, oshape.clone())?;
        if y.len() != planes {
            return Err(Error::shape("global pool output shape disagrees"));
        }
        if planes == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        if x.len() > u32::MAX as usize / 2 {
            return Err(Error::unsupported_op(
                "a pool too large for the GPU's 32-bit indexing",
            ));
        }
        let max = r.cx.max_workgroups.max(1) as usize;
        let grid = if planes <= max {
            [planes as u32, 1, 1]
        } else {
            [max as u32, planes.div_ceil(max) as u32, 1]
        };
        let src = global_source(self.kind);
        r.dispatch(
            &src,
            &[x.buffer(), y.buffer()],
            &[planes as u32, sz as u32],
            grid,
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let f32_in = super::gpu_float(f.in_dtype(0));
    if let Some(mp) = any.downcast_ref::<MaxPool>() {
        if mp.want_indices {
            return Lowered::Cpu("MaxPool's Indices output stays on the CPU".into());
        }
        let st = match f.in_dtype(0) {
            Some(DType::F32 | DType::F16 | DType::BF16) => Storage::F32,
            Some(DType::U8) => Storage::U32,
            _ => return Lowered::Cpu("MaxPool on this dtype stays on the CPU".into()),
        };
        return Lowered::Kernel(Box::new(WindowPool {
            window: mp.window.clone(),
            kind: Kind::Max,
            st,
        }));
    }
    if let Some(p) = any.downcast_ref::<Pool>() {
        if !f32_in {
            return Lowered::Cpu(format!("{} on non-f32 stays on the CPU", f.node.op_type));
        }
        let kind = match p.kind {
            PoolKind::Average { count_include_pad } => Kind::Avg { count_include_pad },
            PoolKind::Lp { p } => Kind::Lp(p),
        };
        return Lowered::Kernel(Box::new(WindowPool {
            window: p.window.clone(),
            kind,
            st: Storage::F32,
        }));
    }
    if let Some(gp) = any.downcast_ref::<GlobalPool>() {
        if !f32_in {
            return Lowered::Cpu(format!("{} on non-f32 stays on the CPU", f.node.op_type));
        }
        return Lowered::Kernel(Box::new(GlobalKernel { kind: gp.kind }));
    }
    Lowered::NotMine
}
