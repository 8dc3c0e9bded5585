//! Grid sampling on the GPU: GridSample (nearest, linear, cubic; zeros, border,
//! reflection padding; 2-D and 3-D) with one thread per output element gathering its
//! taps, AffineGrid with one thread per grid point, and Col2Im with one thread per
//! image element gathering its blocks in the CPU's order (so sums agree bit for bit). The tap rules are those of
//! `cpu::sampling::grid_sample` (the CPU's f64 accumulation becomes f32 here).

use super::record::{Recorder, LINEAR};
use super::{In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::sampling::{GridMode, GridPad};
use crate::error::{Error, Result};
use crate::graph::ops::sampling::{AffineGrid, Col2Im, GridSample};
use crate::tensor::DType;

#[derive(Debug)]
struct GridSampleKernel {
    mode: GridMode,
    pad: GridPad,
    align: bool,
}

/// Spatial ranks the kernels take (GridSample's taps live in fixed-size arrays).
const MAX_RANK: usize = 3;

// P: total c pts sp | len[R] | stride[R]
fn grid_sample_source(r: usize, mode: GridMode, pad: GridPad, align: bool) -> String {
    let (mode_n, taps) = match mode {
        GridMode::Nearest => (0, 1),
        GridMode::Linear => (1, 2),
        GridMode::Cubic => (2, 4),
    };
    let pad_n = match pad {
        GridPad::Zeros => 0,
        GridPad::Border => 1,
        GridPad::Reflection => 2,
    };
    format!(
        "{LINEAR}
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;
const R: u32 = {r}u;
const NT: u32 = {taps}u;
const MODE: u32 = {mode_n}u;
const PAD: u32 = {pad_n}u;
const ALIGN: bool = {align};

fn finite_(x: f32) -> bool {{
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}}
fn reflect_(x: f32, lo: f32, hi: f32) -> f32 {{
    let rng = hi - lo;
    if (rng <= 0.0 || !finite_(x)) {{ return lo; }}
    if (x < lo) {{
        let dx = lo - x;
        let n = trunc(dx / rng);
        let rr = dx - n * rng;
        if (n % 2.0 == 0.0) {{ return lo + rr; }}
        return hi - rr;
    }}
    if (x > hi) {{
        let dx = x - hi;
        let n = trunc(dx / rng);
        let rr = dx - n * rng;
        if (n % 2.0 == 0.0) {{ return hi - rr; }}
        return lo + rr;
    }}
    return x;
}}
fn clamp_index_(i: i32, len: u32) -> i32 {{
    if (i <= 0) {{ return 0; }}
    return min(i, i32(len) - 1);
}}
// The input index of tap i, or -1 for a zero-padding tap.
fn pix_(i: i32, len: u32, lo: f32, hi: f32) -> i32 {{
    if (PAD == 0u) {{
        if (i >= 0 && u32(i) < len) {{ return i; }}
        return -1;
    }}
    if (PAD == 1u) {{ return clamp_index_(i, len); }}
    return clamp_index_(i32(reflect_(f32(i), lo, hi)), len);
}}
fn cubic_(s: f32, k: u32) -> f32 {{
    let a = -0.75;
    if (k == 0u) {{ return ((a * (s + 1.0) - 5.0 * a) * (s + 1.0) + 8.0 * a) * (s + 1.0) - 4.0 * a; }}
    if (k == 1u) {{ return ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0; }}
    if (k == 2u) {{ return ((a + 2.0) * (1.0 - s) - (a + 3.0)) * (1.0 - s) * (1.0 - s) + 1.0; }}
    return ((a * (2.0 - s) - 5.0 * a) * (2.0 - s) + 8.0 * a) * (2.0 - s) - 4.0 * a;
}}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let c = P[1]; let pts = P[2]; let sp = P[3];
    let p = i % pts;
    let bc = i / pts;
    let b = bc / c;
    var ti: array<i32, 12>;
    var tw: array<f32, 12>;
    for (var d = 0u; d < R; d++) {{
        let len = P[4u + d];
        let lf = f32(len);
        let g = G[(b * pts + p) * R + (R - 1u - d)];
        var lo = -0.5; var hi = lf - 0.5;
        var x = ((g + 1.0) * lf - 1.0) / 2.0;
        if (ALIGN) {{ lo = 0.0; hi = lf - 1.0; x = (g + 1.0) / 2.0 * (lf - 1.0); }}
        if (MODE == 0u) {{ x = round(x); }}
        if (MODE != 2u && (x < lo || x > hi)) {{
            if (PAD == 1u) {{ x = min(max(x, 0.0), lf - 1.0); }}
            if (PAD == 2u) {{ x = reflect_(x, lo, hi); }}
        }}
        let x0 = floor(x);
        let t = x - x0;
        let i0 = i32(x0);
        if (MODE == 0u) {{
            ti[d * 4u] = pix_(i32(x), len, lo, hi); tw[d * 4u] = 1.0;
        }} else if (MODE == 1u) {{
            ti[d * 4u] = pix_(i0, len, lo, hi); tw[d * 4u] = 1.0 - t;
            ti[d * 4u + 1u] = pix_(i0 + 1, len, lo, hi); tw[d * 4u + 1u] = t;
        }} else {{
            for (var k = 0u; k < 4u; k++) {{
                ti[d * 4u + k] = pix_(i0 + i32(k) - 1, len, lo, hi);
                tw[d * 4u + k] = cubic_(t, k);
            }}
        }}
    }}
    var combos = 1u;
    for (var d = 0u; d < R; d++) {{ combos *= NT; }}
    let base = bc * sp;
    var acc = 0.0;
    for (var cc = 0u; cc < combos; cc++) {{
        var rem = cc;
        var off = 0u;
        var w = 1.0;
        var valid = true;
        for (var d = R; d > 0u; d--) {{
            let dd = d - 1u;
            let k = rem % NT;
            rem = rem / NT;
            let idx = ti[dd * 4u + k];
            if (idx < 0) {{ valid = false; }} else {{ off += u32(idx) * P[4u + R + dd]; }}
            w *= tw[dd * 4u + k];
        }}
        if (valid) {{ acc += w * X[base + off]; }}
    }}
    Y[i] = acc;
}}
"
    )
}

impl Kernel for GridSampleKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = ins
            .first()
            .ok_or_else(|| Error::runtime("missing X"))?
            .dev()?;
        let g = ins
            .get(1)
            .ok_or_else(|| Error::runtime("missing grid"))?
            .dev()?;
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let (xs, gs) = (&x.shape, &g.shape);
        if xs.len() < 3 || gs.len() != xs.len() {
            return Err(Error::shape(format!(
                "GridSample: input {xs:?} and grid {gs:?} must have the same rank, at least 3"
            )));
        }
        let rank = xs.len() - 2;
        if gs[0] != xs[0] || gs[rank + 1] != rank {
            return Err(Error::shape(format!(
                "GridSample: grid {gs:?} does not fit input {xs:?}"
            )));
        }
        if rank > MAX_RANK {
            return Err(Error::unsupported_op(format!(
                "GridSample over {rank} spatial dims on the GPU (at most {MAX_RANK})"
            )));
        }
        let y = r.alloc(*dt, oshape.clone())?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let dims = &xs[2..];
        let sp: usize = dims.iter().product();
        if sp == 0 {
            return Err(Error::shape("GridSample: input has an empty spatial dim"));
        }
        let pts: usize = gs[1..=rank].iter().product();
        let strides = crate::cpu::common::strides(dims);
        let mut p = vec![y.len() as u32, xs[1] as u32, pts as u32, sp as u32];
        p.extend(dims.iter().map(|&d| d as u32));
        p.extend(strides.iter().map(|&s| s as u32));
        let src = grid_sample_source(rank, self.mode, self.pad, self.align);
        let grid = r.grid(y.len());
        r.dispatch(&src, &[x.buffer(), g.buffer(), y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

#[derive(Debug)]
struct AffineGridKernel {
    align: bool,
}

// P: points pts R len[R]
fn affine_grid_source(align: bool) -> String {
    format!(
        "{LINEAR}
@group(0) @binding(0) var<storage, read> T: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
const ALIGN: bool = {align};
fn coord_(i: u32, n: u32) -> f32 {{
    if (n <= 1u) {{ return 0.0; }}
    if (ALIGN) {{ return -1.0 + 2.0 * f32(i) / f32(n - 1u); }}
    return -1.0 + f32(2u * i + 1u) / f32(n);
}}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let k = linear_id(gid, nwg);
    if (k >= P[0]) {{ return; }}
    let pts = P[1]; let R = P[2];
    let b = k / pts;
    var q = k % pts;
    // h = (x, y[, z], 1) with x the last spatial dim.
    var h = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var d = R; d > 0u; d--) {{
        let n = P[3u + d - 1u];
        h[R - d] = coord_(q % n, n);
        q = q / n;
    }}
    h[R] = 1.0;
    let tb = b * R * (R + 1u);
    for (var row = 0u; row < R; row++) {{
        var acc = 0.0;
        for (var col = 0u; col <= R; col++) {{
            acc += T[tb + row * (R + 1u) + col] * h[col];
        }}
        Y[k * R + row] = acc;
    }}
}}
"
    )
}

impl Kernel for AffineGridKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let theta = ins
            .first()
            .ok_or_else(|| Error::runtime("missing theta"))?
            .dev()?;
        let size = ins
            .get(1)
            .and_then(|i| i.host())
            .ok_or_else(|| Error::input("AffineGrid needs size"))?
            .to_i64_vec()?;
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let rank = match size.len() {
            4 => 2,
            5 => 3,
            k => {
                return Err(Error::shape(format!(
                    "AffineGrid: size must have 4 or 5 values, got {k}"
                )))
            }
        };
        let ts = &theta.shape;
        let n = usize::try_from(size[0]).map_err(|_| Error::input("AffineGrid: negative N"))?;
        if ts.len() != 3 || ts[0] != n || ts[1] != rank || ts[2] != rank + 1 {
            return Err(Error::shape(format!(
                "AffineGrid: theta {ts:?} does not fit size {size:?}"
            )));
        }
        let y = r.alloc(*dt, oshape.clone())?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let sp: Vec<u32> = size[2..].iter().map(|&v| v as u32).collect();
        let pts: usize = sp.iter().map(|&v| v as usize).product();
        let points = n * pts;
        if points * rank != y.len() {
            return Err(Error::shape("AffineGrid output shape disagrees with size"));
        }
        let mut p = vec![points as u32, pts as u32, rank as u32];
        p.extend(sp);
        let grid = r.grid(points);
        r.dispatch(
            &affine_grid_source(self.align),
            &[theta.buffer(), y.buffer()],
            &p,
            grid,
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

#[derive(Debug)]
struct Col2ImKernel {
    dilations: Option<Vec<i64>>,
    pads: Option<Vec<i64>>,
    strides: Option<Vec<i64>>,
}

// P: total c ksize l r | img[r] blk[r] dil[r] st[r] pb[r] nb[r]
const COL2IM_SRC: &str = "
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    let ksize = P[2]; let l = P[3]; let R = P[4];
    var isz = 1u;
    for (var d = 0u; d < R; d++) { isz *= P[5u + d]; }
    let plane = i / isz;
    let pix = i % isz;
    var acc = 0.0;
    for (var kk = 0u; kk < ksize; kk++) {
        // Block offset of kk and position of pix, dim by dim from the last.
        var krem = kk; var prem = pix;
        var lidx = 0u; var lmul = 1u;
        var inside = true;
        for (var e = R; e > 0u; e--) {
            let d = e - 1u;
            let img = P[5u + d]; let blk = P[5u + R + d];
            let dil = P[5u + 2u * R + d]; let st = P[5u + 3u * R + d];
            let pb = P[5u + 4u * R + d]; let nb = P[5u + 5u * R + d];
            let koff = krem % blk; krem = krem / blk;
            let pos = prem % img; prem = prem / img;
            let t = i32(pos + pb) - i32(koff * dil);
            if (t < 0 || u32(t) % st != 0u || u32(t) / st >= nb) { inside = false; break; }
            lidx += (u32(t) / st) * lmul;
            lmul *= nb;
        }
        if (inside) { acc += X[(plane * ksize + kk) * l + lidx]; }
    }
    Y[i] = acc;
}
";

impl Kernel for Col2ImKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1, 2]
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
        let host = |i: usize, what: &str| -> Result<Vec<i64>> {
            ins.get(i)
                .and_then(|t| t.host())
                .ok_or_else(|| Error::input(format!("Col2Im needs {what}")))?
                .to_i64_vec()
        };
        let (image, block) = (host(1, "image_shape")?, host(2, "block_shape")?);
        let rank = image.len();
        let dil = self.dilations.clone().unwrap_or_else(|| vec![1; rank]);
        let pads = self.pads.clone().unwrap_or_else(|| vec![0; 2 * rank]);
        let st = self.strides.clone().unwrap_or_else(|| vec![1; rank]);
        if rank == 0
            || block.len() != rank
            || dil.len() != rank
            || st.len() != rank
            || pads.len() != 2 * rank
        {
            return Err(Error::shape(
                "Col2Im: image_shape, block_shape, dilations, pads and strides do not agree",
            ));
        }
        let pos = |v: i64, what: &str| -> Result<usize> {
            usize::try_from(v)
                .ok()
                .filter(|&u| u > 0)
                .ok_or_else(|| Error::runtime(format!("Col2Im: {what} must be positive, got {v}")))
        };
        let mut nb = Vec::with_capacity(rank);
        let mut ksize = 1usize;
        let mut l = 1usize;
        for d in 0..rank {
            let (im, bl, di, s) = (
                pos(image[d], "image_shape")?,
                pos(block[d], "block_shape")?,
                pos(dil[d], "dilations")?,
                pos(st[d], "strides")?,
            );
            if pads[d] < 0 || pads[d + rank] < 0 {
                return Err(Error::runtime("Col2Im: negative pad"));
            }
            let full = (im + pads[d] as usize + pads[d + rank] as usize) as i64
                - (di * (bl - 1) + 1) as i64;
            if full < 0 {
                return Err(Error::shape("Col2Im: block larger than the padded image"));
            }
            let n = full as usize / s + 1;
            nb.push(n);
            ksize = ksize.saturating_mul(bl);
            l = l.saturating_mul(n);
        }
        let xs = &x.shape;
        if xs.len() != 3 || !xs[1].is_multiple_of(ksize) || xs[2] != l {
            return Err(Error::shape(format!(
                "Col2Im: input {xs:?} does not fit {ksize} block elements and {l} blocks"
            )));
        }
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let y = r.alloc(*dt, oshape.clone())?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let mut p: Vec<u32> = vec![
            y.len() as u32,
            (xs[1] / ksize) as u32,
            ksize as u32,
            l as u32,
            rank as u32,
        ];
        p.extend(image.iter().map(|&v| v as u32));
        p.extend(block.iter().map(|&v| v as u32));
        p.extend(dil.iter().map(|&v| v as u32));
        p.extend(st.iter().map(|&v| v as u32));
        p.extend(pads[..rank].iter().map(|&v| v as u32));
        p.extend(nb.iter().map(|&v| v as u32));
        let grid = r.grid(y.len());
        r.dispatch(
            &format!("{LINEAR}{COL2IM_SRC}"),
            &[x.buffer(), y.buffer()],
            &p,
            grid,
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    if let Some(gs) = any.downcast_ref::<GridSample>() {
        if !super::gpu_float(f.in_dtype(0)) || !super::gpu_float(f.in_dtype(1)) {
            return Lowered::Cpu("GridSample on non-float inputs stays on the CPU".into());
        }
        if f.in_rank(0).is_some_and(|r| r > MAX_RANK + 2) {
            return Lowered::Cpu(format!(
                "GridSample over more than {MAX_RANK} spatial dims stays on the CPU"
            ));
        }
        return Lowered::Kernel(Box::new(GridSampleKernel {
            mode: gs.mode,
            pad: gs.padding,
            align: gs.align_corners,
        }));
    }
    if let Some(op) = any.downcast_ref::<Col2Im>() {
        if !super::gpu_float(f.in_dtype(0)) {
            return Lowered::Cpu("Col2Im on non-float input stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(Col2ImKernel {
            dilations: op.dilations.clone(),
            pads: op.pads.clone(),
            strides: op.strides.clone(),
        }));
    }
    if let Some(ag) = any.downcast_ref::<AffineGrid>() {
        if !super::gpu_float(f.in_dtype(0)) {
            return Lowered::Cpu("AffineGrid on non-float theta stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(AffineGridKernel {
            align: ag.align_corners,
        }));
    }
    Lowered::NotMine
}
