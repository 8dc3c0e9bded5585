//! Resampling and spatial re-indexing on the GPU: Resize / Upsample, Pad,
//! DepthToSpace / SpaceToDepth.
//!
//! Everything that decides *where* a value comes from is computed on the host, per
//! axis, exactly as the CPU kernels do (`crate::cpu::sampling` for Resize, `pad_map`
//! for Pad), and uploaded as small tables; the GPU only gathers. Nearest Resize and
//! Pad are one gather through per-axis index maps (−1 = fill value). Linear and cubic
//! Resize are separable passes, one dispatch per resized axis in the CPU's order, each
//! output a weighted sum of its taps. DepthToSpace / SpaceToDepth are 6-D permutations.

use super::record::{Recorder, LINEAR};
use super::tensor::to_words;
use super::{GpuTensor, In, Kernel, Lowered, NodeFacts, Out, Storage};
use crate::cpu::common::strides;
use crate::cpu::layout::{center_crop_maps, compress_indices, norm_axis, pad_map, shape_from_i64};
use crate::cpu::sampling::{
    interp_table, nearest_map, pass_order, resize_axes, AxisSpec, CoordMode, InterpMode,
    KeepAspect, ResizeCfg, Table,
};
use crate::error::{Error, Result};
use crate::graph::ops::layout::{CenterCropPad, Compress, DepthToSpace, Pad, SpaceToDepth};
use crate::graph::ops::sampling::{Resize, Upsample};
use crate::tensor::{DType, Tensor};

// ---------------------------------------------------------------------------------------
// Shared gathers
// ---------------------------------------------------------------------------------------

// P: total R fill | dims[R] | strides[R] | map offsets[R]
const MAP_GATHER: &str = "
@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read> Mp: array<i32>;
@group(0) @binding(2) var<storage, read_write> Y: array<u32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    let R = P[1];
    var rem = i;
    var src = 0u;
    var ok = true;
    for (var d = i32(R) - 1; d >= 0; d--) {
        let du = u32(d);
        let dim = P[3u + du];
        let c = rem % dim;
        rem = rem / dim;
        let s = Mp[P[3u + 2u * R + du] + c];
        if (s < 0) { ok = false; } else { src += u32(s) * P[3u + R + du]; }
    }
    if (ok) { Y[i] = X[src]; } else { Y[i] = P[2]; }
}
";

fn check_u32(n: usize) -> Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|&v| v < u32::MAX / 2)
        .ok_or_else(|| Error::unsupported_op("a tensor too large for the GPU's 32-bit indexing"))
}

/// `Y[o] = X[Σ map_d[o_d] · stride_d]`, or `fill` where any map entry is None.
fn map_gather(
    r: &mut Recorder,
    x: &GpuTensor,
    y: &GpuTensor,
    maps: &[Vec<Option<usize>>],
    fill: u32,
) -> Result<()> {
    let n = y.len();
    if n == 0 {
        return Ok(());
    }
    let rank = maps.len();
    if rank != x.shape.len() || rank != y.shape.len() {
        return Err(Error::shape("gather maps do not match the ranks"));
    }
    check_u32(x.len())?;
    check_u32(n)?;
    let mut table: Vec<i32> = Vec::new();
    let mut offs = Vec::with_capacity(rank);
    for (d, m) in maps.iter().enumerate() {
        if m.len() != y.shape[d] {
            return Err(Error::shape(
                "gather map length differs from the output dim",
            ));
        }
        offs.push(check_u32(table.len())?);
        for v in m {
            table.push(match v {
                Some(i) if *i < x.shape[d] => *i as i32,
                Some(_) => return Err(Error::runtime("gather map index out of range")),
                None => -1,
            });
        }
    }
    if table.is_empty() {
        table.push(0);
    }
    let len = table.len();
    let t = r.upload(&Tensor::from_vec(vec![len], table)?)?;
    let mut params = vec![n as u32, rank as u32, fill];
    params.extend(y.shape.iter().map(|&d| d as u32));
    params.extend(strides(&x.shape).iter().map(|&s| s as u32));
    params.extend(offs);
    let src = format!("{LINEAR}{MAP_GATHER}");
    let grid = r.grid(n);
    r.dispatch(&src, &[x.buffer(), t.buffer(), y.buffer()], &params, grid)
}

// P: total R | dims[R] | read strides[R]
const PERMUTE: &str = "
@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read_write> Y: array<u32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    let R = P[1];
    var rem = i;
    var src = 0u;
    for (var d = i32(R) - 1; d >= 0; d--) {
        let du = u32(d);
        let dim = P[2u + du];
        src += (rem % dim) * P[2u + R + du];
        rem = rem / dim;
    }
    Y[i] = X[src];
}
";

/// Writes `y` (contiguous) from `x` viewed with `view` dims, permuted by `perm`.
fn permute(
    r: &mut Recorder,
    x: &GpuTensor,
    y: &GpuTensor,
    view: &[usize],
    perm: &[usize],
) -> Result<()> {
    let n = y.len();
    if n == 0 {
        return Ok(());
    }
    check_u32(n)?;
    let st = strides(view);
    let mut params = vec![n as u32, perm.len() as u32];
    params.extend(perm.iter().map(|&p| view[p] as u32));
    params.extend(perm.iter().map(|&p| st[p] as u32));
    let src = format!("{LINEAR}{PERMUTE}");
    let grid = r.grid(n);
    r.dispatch(&src, &[x.buffer(), y.buffer()], &params, grid)
}

fn first_in<'a>(ins: &'a [In]) -> Result<&'a GpuTensor> {
    ins.first()
        .ok_or_else(|| Error::runtime("missing input"))?
        .dev()
}

fn first_out(outs: &[(DType, Vec<usize>)]) -> Result<&(DType, Vec<usize>)> {
    outs.first().ok_or_else(|| Error::runtime("missing output"))
}

/// The one storage word of `v` cast to `dt`.
fn fill_word(v: &Tensor, dt: DType) -> Result<u32> {
    let t = v.cast(dt)?;
    Ok(to_words(&t)?.first().copied().unwrap_or(0))
}

// Resize tables: the CPU's (`crate::cpu::sampling`), uploaded per pass.
// ---------------------------------------------------------------------------------------

/// Most taps per output position a pass binds (an antialiased shrink by over ~2000×).
const MAX_TAPS: usize = 4096;

// P: total in_len out_len inner taps fill; T: idx[out·taps] | w bits | extrap[out]
const INTERP_PASS: &str = "
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> T: array<i32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    let in_len = P[1]; let out_len = P[2]; let inner = P[3]; let taps = P[4];
    let c = i % inner;
    let t = i / inner;
    let o = t % out_len;
    let outer = t / out_len;
    let nt = out_len * taps;
    if (T[2u * nt + o] != 0) { Y[i] = bitcast<f32>(P[5]); return; }
    let base = outer * in_len * inner + c;
    var acc = 0.0;
    for (var k = 0u; k < taps; k++) {
        let j = o * taps + k;
        acc += bitcast<f32>(T[nt + j]) * X[base + u32(T[j]) * inner];
    }
    Y[i] = acc;
}
";

fn interp_pass(
    r: &mut Recorder,
    x: &GpuTensor,
    y: &GpuTensor,
    axis: usize,
    t: &Table,
    fill: f32,
) -> Result<()> {
    let n = y.len();
    if n == 0 {
        return Ok(());
    }
    check_u32(x.len())?;
    check_u32(n)?;
    let in_len = x.shape[axis];
    let out_len = y.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    if in_len == 0 {
        return Err(Error::runtime("Resize: cannot interpolate an empty axis"));
    }
    let mut words: Vec<i32> = Vec::with_capacity(t.idx.len() * 2 + t.extrap.len());
    words.extend(t.idx.iter().map(|&i| i as i32));
    words.extend(t.w.iter().map(|w| w.to_bits() as i32));
    words.extend(t.extrap.iter().map(|&e| e as i32));
    let len = words.len();
    let tb = r.upload(&Tensor::from_vec(vec![len], words)?)?;
    let params = [
        n as u32,
        in_len as u32,
        out_len as u32,
        inner.max(1) as u32,
        t.taps as u32,
        fill.to_bits(),
    ];
    let src = format!("{LINEAR}{INTERP_PASS}");
    let grid = r.grid(n);
    r.dispatch(&src, &[x.buffer(), tb.buffer(), y.buffer()], &params, grid)
}

/// Resize of `x` into a fresh tensor of `oshape` with per-axis `specs`.
fn resize(
    r: &mut Recorder,
    x: &GpuTensor,
    dt: DType,
    oshape: &[usize],
    cfg: &ResizeCfg,
    specs: &[AxisSpec],
) -> Result<GpuTensor> {
    let in_shape: Vec<usize> = specs.iter().map(|s| s.in_len).collect();
    let out_shape: Vec<usize> = specs.iter().map(|s| s.out_len).collect();
    if in_shape != x.shape || out_shape != oshape {
        return Err(Error::shape(format!(
            "Resize: geometry {in_shape:?} → {out_shape:?} applied to {:?} → {oshape:?}",
            x.shape
        )));
    }
    if cfg.mode == InterpMode::Nearest {
        let y = r.alloc(dt, out_shape)?;
        let maps: Vec<Vec<Option<usize>>> = specs
            .iter()
            .map(|a| nearest_map(cfg, a))
            .collect::<Result<_>>()?;
        let fill = fill_word(&Tensor::scalar(cfg.extrapolation), dt)?;
        map_gather(r, x, &y, &maps, fill)?;
        return Ok(y);
    }
    if dt != DType::F32 {
        return Err(Error::unsupported_dtype("Resize interpolation of non-f32"));
    }
    let order = pass_order(cfg, specs);
    if order.is_empty() || out_shape.iter().product::<usize>() == 0 {
        let y = r.alloc(dt, out_shape)?;
        if y.is_empty() {
            return Ok(y);
        }
        let maps: Vec<Vec<Option<usize>>> = specs
            .iter()
            .map(|a| (0..a.out_len).map(Some).collect())
            .collect();
        map_gather(r, x, &y, &maps, 0)?;
        return Ok(y);
    }
    let mut shape = in_shape;
    let mut cur = x.clone();
    for axis in order {
        let spec = &specs[axis];
        let table = interp_table(cfg, spec)?;
        if table.taps > MAX_TAPS {
            return Err(Error::memory("Resize: antialias filter too large"));
        }
        shape[axis] = spec.out_len;
        let next = r.alloc(dt, shape.clone())?;
        interp_pass(r, &cur, &next, axis, &table, cfg.extrapolation)?;
        cur = next;
    }
    Ok(cur)
}

fn host_f32(ins: &[In], i: Option<usize>) -> Result<Option<Vec<f32>>> {
    match i.and_then(|i| ins.get(i)).and_then(|x| x.host()) {
        Some(t) if !t.is_empty() => Ok(Some(t.to_f32_vec()?)),
        _ => Ok(None),
    }
}

#[derive(Debug)]
struct ResizeKernel {
    cfg: ResizeCfg,
    axes: Option<Vec<i64>>,
    keep_aspect: KeepAspect,
    legacy: bool,
    /// Upsample's scales attribute (Upsample-7).
    upsample: Option<Option<Vec<f32>>>,
    host: Vec<usize>,
}

impl Kernel for ResizeKernel {
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = first_in(ins)?;
        let (dt, oshape) = first_out(outs)?;
        let rank = x.shape.len();
        let specs = if let Some(attr) = &self.upsample {
            let scales = match attr {
                Some(s) => s.clone(),
                None => {
                    host_f32(ins, Some(1))?.ok_or_else(|| Error::input("Upsample needs scales"))?
                }
            };
            let axes: Vec<usize> = (0..rank).collect();
            resize_axes(
                &x.shape,
                Some(&scales),
                None,
                &axes,
                None,
                KeepAspect::Stretch,
            )?
        } else {
            let (roi_i, sc_i, sz_i) = if self.legacy {
                (None, Some(1), None)
            } else {
                (Some(1), Some(2), Some(3))
            };
            let axes: Vec<usize> = match &self.axes {
                None => (0..rank).collect(),
                Some(a) => a
                    .iter()
                    .map(|&v| norm_axis(v, rank, "Resize"))
                    .collect::<Result<_>>()?,
            };
            let roi = if self.cfg.coord == CoordMode::TfCropAndResize {
                host_f32(ins, roi_i)?
            } else {
                None
            };
            let scales = host_f32(ins, sc_i)?;
            let sizes = match sz_i.and_then(|i| ins.get(i)).and_then(|v| v.host()) {
                Some(t) if !t.is_empty() => Some(t.to_i64_vec()?),
                _ => None,
            };
            resize_axes(
                &x.shape,
                scales.as_deref(),
                sizes.as_deref(),
                &axes,
                roi.as_deref(),
                self.keep_aspect,
            )?
        };
        let y = resize(r, x, *dt, oshape, &self.cfg, &specs)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// Pad, DepthToSpace, SpaceToDepth
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct PadKernel {
    mode: crate::cpu::layout::PadMode,
    attrs: Option<(Vec<i64>, f32)>,
    host: Vec<usize>,
}

impl Kernel for PadKernel {
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = first_in(ins)?;
        let (dt, oshape) = first_out(outs)?;
        let rank = x.shape.len();
        let (pads, fill) = match &self.attrs {
            Some((p, v)) => (p.clone(), fill_word(&Tensor::scalar(*v), x.dtype)?),
            None => {
                let pads = ins
                    .get(1)
                    .and_then(|v| v.host())
                    .ok_or_else(|| Error::input("Pad needs pads"))?
                    .to_i64_vec()?;
                let fill = match ins.get(2).and_then(|v| v.host()) {
                    Some(t) if !t.is_empty() => fill_word(t, x.dtype)?,
                    _ => 0,
                };
                (pads, fill)
            }
        };
        let axes: Vec<usize> = match ins.get(3).and_then(|v| v.host()) {
            Some(t) => t
                .to_i64_vec()?
                .iter()
                .map(|&a| norm_axis(a, rank, "Pad"))
                .collect::<Result<_>>()?,
            None => (0..rank).collect(),
        };
        let k = axes.len();
        if pads.len() != 2 * k {
            return Err(Error::shape(format!(
                "Pad: {} pads for {k} axes",
                pads.len()
            )));
        }
        let mut pairs = vec![(0i64, 0i64); rank];
        for (i, &a) in axes.iter().enumerate() {
            pairs[a] = (pads[i], pads[k + i]);
        }
        let maps: Vec<Vec<Option<usize>>> = x
            .shape
            .iter()
            .zip(&pairs)
            .map(|(&d, &(b, e))| pad_map(d, b, e, self.mode))
            .collect::<Result<_>>()?;
        let y = r.alloc(*dt, oshape.clone())?;
        map_gather(r, x, &y, &maps, fill)?;
        Ok(vec![Out::Dev(y)])
    }
}

/// CenterCropPad: the CPU's per-axis maps, one gather.
#[derive(Debug)]
struct CenterCropPadKernel {
    axes: Option<Vec<i64>>,
}

impl Kernel for CenterCropPadKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = first_in(ins)?;
        let (dt, oshape) = first_out(outs)?;
        let sizes = shape_from_i64(
            &ins.get(1)
                .and_then(|v| v.host())
                .ok_or_else(|| Error::input("CenterCropPad needs shape"))?
                .to_i64_vec()?,
            "CenterCropPad",
        )?;
        let rank = x.shape.len();
        let axes: Vec<usize> = match &self.axes {
            Some(a) => a
                .iter()
                .map(|&v| norm_axis(v, rank, "CenterCropPad"))
                .collect::<Result<_>>()?,
            None => (0..rank).collect(),
        };
        if axes.len() != sizes.len() {
            return Err(Error::shape(
                "CenterCropPad: shape and axes differ in length",
            ));
        }
        let maps = center_crop_maps(&x.shape, &axes, &sizes)?;
        let y = r.alloc(*dt, oshape.clone())?;
        map_gather(r, x, &y, &maps, 0)?;
        Ok(vec![Out::Dev(y)])
    }
}

/// Compress: the condition is read on the host (it decides the output shape); the kept
/// indices become the map of the compressed axis.
#[derive(Debug)]
struct CompressKernel {
    axis: Option<i64>,
}

impl Kernel for CompressKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = first_in(ins)?;
        let (dt, oshape) = first_out(outs)?;
        let cond = ins
            .get(1)
            .and_then(|v| v.host())
            .ok_or_else(|| Error::input("Compress needs condition"))?;
        // Without an axis, the input is read flattened.
        let (view, axis) = match self.axis {
            Some(a) => (x.clone(), norm_axis(a, x.shape.len(), "Compress")?),
            None => (
                GpuTensor {
                    buf: x.buf.clone(),
                    shape: vec![x.len()],
                    dtype: x.dtype,
                },
                0,
            ),
        };
        let idx = compress_indices(cond, view.shape[axis])?;
        let mut maps: Vec<Vec<Option<usize>>> = view
            .shape
            .iter()
            .map(|&d| (0..d).map(Some).collect())
            .collect();
        maps[axis] = idx.into_iter().map(Some).collect();
        let y = r.alloc(*dt, oshape.clone())?;
        if y.len() != maps.iter().map(|m| m.len()).product::<usize>() {
            return Err(Error::shape("Compress output shape disagrees"));
        }
        let flat = GpuTensor {
            buf: y.buf.clone(),
            shape: maps.iter().map(|m| m.len()).collect(),
            dtype: y.dtype,
        };
        map_gather(r, &view, &flat, &maps, 0)?;
        Ok(vec![Out::Dev(y)])
    }
}

#[derive(Debug)]
struct DepthSpace {
    blocksize: usize,
    /// None: SpaceToDepth; Some(crd): DepthToSpace in CRD or DCR mode.
    to_space: Option<bool>,
}

impl Kernel for DepthSpace {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = first_in(ins)?;
        let (dt, oshape) = first_out(outs)?;
        let s = &x.shape;
        let b = self.blocksize;
        if s.len() != 4 || b == 0 {
            return Err(Error::shape(format!(
                "DepthToSpace/SpaceToDepth: bad input {s:?} for blocksize {b}"
            )));
        }
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        let (view, perm): (Vec<usize>, [usize; 6]) = match self.to_space {
            Some(crd) => {
                if !c.is_multiple_of(b * b) {
                    return Err(Error::shape(format!(
                        "DepthToSpace: bad input {s:?} for blocksize {b}"
                    )));
                }
                let c2 = c / (b * b);
                if crd {
                    (vec![n, c2, b, b, h, w], [0, 1, 4, 2, 5, 3])
                } else {
                    (vec![n, b, b, c2, h, w], [0, 3, 4, 1, 5, 2])
                }
            }
            None => {
                if !h.is_multiple_of(b) || !w.is_multiple_of(b) {
                    return Err(Error::shape(format!(
                        "SpaceToDepth: bad input {s:?} for blocksize {b}"
                    )));
                }
                (vec![n, c, h / b, b, w / b, b], [0, 3, 5, 1, 2, 4])
            }
        };
        let y = r.alloc(*dt, oshape.clone())?;
        if y.len() != x.len() {
            return Err(Error::shape("DepthToSpace/SpaceToDepth changes the size"));
        }
        permute(r, x, &y, &view, &perm)?;
        Ok(vec![Out::Dev(y)])
    }
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let storable = f.in_dtype(0).and_then(Storage::of).is_some();
    let dtype_cpu = || Lowered::Cpu(format!("{} on this dtype stays on the CPU", f.node.op_type));
    let interp_ok =
        |cfg: &ResizeCfg| cfg.mode == InterpMode::Nearest || super::gpu_float(f.in_dtype(0));
    if let Some(rz) = any.downcast_ref::<Resize>() {
        if !storable || !interp_ok(&rz.cfg) {
            return dtype_cpu();
        }
        return Lowered::Kernel(Box::new(ResizeKernel {
            cfg: rz.cfg,
            axes: rz.axes.clone(),
            keep_aspect: rz.keep_aspect,
            legacy: rz.legacy,
            upsample: None,
            host: (1..f.ins.len()).collect(),
        }));
    }
    if let Some(up) = any.downcast_ref::<Upsample>() {
        if !storable || !interp_ok(&up.cfg) {
            return dtype_cpu();
        }
        return Lowered::Kernel(Box::new(ResizeKernel {
            cfg: up.cfg,
            axes: None,
            keep_aspect: KeepAspect::Stretch,
            legacy: false,
            upsample: Some(up.scales.clone()),
            host: if up.scales.is_some() { vec![] } else { vec![1] },
        }));
    }
    if let Some(op) = any.downcast_ref::<CenterCropPad>() {
        if !storable {
            return dtype_cpu();
        }
        return Lowered::Kernel(Box::new(CenterCropPadKernel {
            axes: op.axes.clone(),
        }));
    }
    if let Some(op) = any.downcast_ref::<Compress>() {
        if !storable {
            return dtype_cpu();
        }
        return Lowered::Kernel(Box::new(CompressKernel { axis: op.axis }));
    }
    if let Some(p) = any.downcast_ref::<Pad>() {
        if !storable {
            return dtype_cpu();
        }
        return Lowered::Kernel(Box::new(PadKernel {
            mode: p.mode,
            attrs: p.attrs.clone(),
            host: if p.attrs.is_some() {
                vec![]
            } else {
                (1..f.ins.len()).collect()
            },
        }));
    }
    if let Some(d) = any.downcast_ref::<DepthToSpace>() {
        if !storable {
            return dtype_cpu();
        }
        return Lowered::Kernel(Box::new(DepthSpace {
            blocksize: d.blocksize,
            to_space: Some(d.crd),
        }));
    }
    if let Some(d) = any.downcast_ref::<SpaceToDepth>() {
        if !storable {
            return dtype_cpu();
        }
        return Lowered::Kernel(Box::new(DepthSpace {
            blocksize: d.blocksize,
            to_space: None,
        }));
    }
    Lowered::NotMine
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::sampling::NearestMode;

    /// The host tables reproduce the CPU's resize (1-D, every coordinate mode).
    #[test]
    fn tables_match_the_cpu() {
        let src: Vec<f32> = (0..7).map(|i| (i * i) as f32 * 0.37 - 1.0).collect();
        let x = Tensor::from_vec(vec![7], src.clone()).unwrap();
        let coords = [
            CoordMode::HalfPixel,
            CoordMode::HalfPixelSymmetric,
            CoordMode::PytorchHalfPixel,
            CoordMode::AlignCorners,
            CoordMode::Asymmetric,
            CoordMode::TfHalfPixelForNn,
            CoordMode::TfCropAndResize,
        ];
        for mode in [InterpMode::Nearest, InterpMode::Linear, InterpMode::Cubic] {
            for coord in coords {
                for scale in [0.6f32, 1.7, 3.0] {
                    for aa in [false, true] {
                        let cfg = ResizeCfg {
                            mode,
                            coord,
                            nearest: NearestMode::RoundPreferFloor,
                            cubic_a: -0.75,
                            exclude_outside: false,
                            extrapolation: 10.0,
                            antialias: aa,
                        };
                        let roi = [0.1f32, 0.8];
                        let specs = resize_axes(
                            &[7],
                            Some(&[scale]),
                            None,
                            &[0],
                            Some(&roi),
                            KeepAspect::Stretch,
                        )
                        .unwrap();
                        let want = crate::cpu::sampling::resize(&x, &cfg, &specs).unwrap();
                        let want = want.as_slice::<f32>().unwrap();
                        let got: Vec<f32> = if mode == InterpMode::Nearest {
                            nearest_map(&cfg, &specs[0])
                                .unwrap()
                                .iter()
                                .map(|m| m.map_or(10.0, |i| src[i]))
                                .collect()
                        } else {
                            let t = interp_table(&cfg, &specs[0]).unwrap();
                            (0..specs[0].out_len)
                                .map(|o| {
                                    if t.extrap[o] {
                                        return 10.0;
                                    }
                                    (0..t.taps)
                                        .map(|k| t.w[o * t.taps + k] * src[t.idx[o * t.taps + k]])
                                        .sum()
                                })
                                .collect()
                        };
                        assert_eq!(got.len(), want.len());
                        for (g, w) in got.iter().zip(want) {
                            assert!(
                                (g - w).abs() < 1e-5,
                                "{mode:?} {coord:?} {scale}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
