//! Data movement on the GPU. Reshape, Flatten, Squeeze, Unsqueeze and Identity are
//! views (same buffer, new shape); Shape and Size read only metadata and answer on the
//! host. Transpose, Slice, Expand and Concat are one strided-copy kernel
//! (`Y[wbase + Σ c·ws] = X[rbase + Σ c·rs]` over a region), and Gather has its own.
//! Every GPU dtype is 32 bits wide, so the copies move words and share one pipeline
//! per rank whatever the dtype.

use super::record::{Recorder, LINEAR};
use super::{In, Kernel, Lowered, NodeFacts, Out, Storage};
use crate::cpu::common::strides;
use crate::cpu::layout::norm_axis;
use crate::error::{Error, Result};
use crate::graph::ops::layout::{
    Concat, ConstantOfShape, Expand, Flatten, Gather, Range, Reshape, Shape, Size, Slice, Split,
    Squeeze, Tile, Transpose, Unsqueeze,
};
use crate::graph::Value;
use crate::tensor::{DType, Tensor};

/// Output = input's buffer under the output shape (also Identity and inference
/// Dropout, which keep the shape).
#[derive(Debug)]
pub(super) struct View {
    host: Vec<usize>,
}

impl View {
    /// A view with no host inputs.
    pub(super) fn of_input() -> View {
        View { host: Vec::new() }
    }
}

impl Kernel for View {
    fn moves_only(&self) -> bool {
        true
    }
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn encode(
        &self,
        _r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = ins
            .first()
            .ok_or_else(|| Error::runtime("missing input"))?
            .dev()?;
        let (dt, shape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        if shape.iter().product::<usize>() != x.len() {
            return Err(Error::shape("view changes the element count"));
        }
        Ok(vec![Out::Dev(super::GpuTensor {
            buf: x.buf.clone(),
            shape: shape.clone(),
            dtype: *dt,
        })])
    }
}

/// Shape / Size: the answer is in the output facts already (the shape rule saw the
/// concrete input shape); only the value is built here.
#[derive(Debug)]
struct Metadata {
    size: bool,
    start: i64,
    end: Option<i64>,
}

impl Kernel for Metadata {
    fn moves_only(&self) -> bool {
        true
    }
    fn encode(
        &self,
        _r: &mut Recorder,
        ins: &[In],
        _outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = ins
            .first()
            .ok_or_else(|| Error::runtime("missing input"))?
            .dev()?;
        let dims: Vec<i64> = x.shape.iter().map(|&d| d as i64).collect();
        let t = if self.size {
            Tensor::scalar(dims.iter().product::<i64>())
        } else {
            let r = dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let s = clamp(self.start);
            let e = clamp(self.end.unwrap_or(r));
            Tensor::vector(dims.get(s..e.max(s)).unwrap_or(&[]).to_vec())
        };
        Ok(vec![Out::Host(Value::from(t))])
    }
}

/// The strided copy: `region` dims, read strides (may be negative) and write strides.
fn copy_source(rank: usize) -> String {
    format!(
        "{LINEAR}
@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read_write> Y: array<u32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
// P: n rbase wbase | dims[R] | rs[R] (i32 bits) | ws[R]
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    var rem = i;
    var ro = i32(P[1]);
    var wo = P[2];
    for (var d = {r1}i; d >= 0; d--) {{
        let dim = P[3u + u32(d)];
        let c = rem % dim;
        rem = rem / dim;
        ro += i32(c) * bitcast<i32>(P[3u + {rank}u + u32(d)]);
        wo += c * P[3u + {r2}u + u32(d)];
    }}
    Y[wo] = X[u32(ro)];
}}
",
        r1 = rank as i64 - 1,
        r2 = 2 * rank,
    )
}

/// A copy region: its dims, and where each element is read and written.
struct Region<'a> {
    dims: &'a [usize],
    rbase: i64,
    rs: &'a [i64],
    wbase: usize,
    ws: &'a [usize],
}

/// Records one strided copy of a region's elements.
fn strided_copy(r: &mut Recorder, x: &wgpu::Buffer, y: &wgpu::Buffer, g: Region) -> Result<()> {
    let Region {
        dims: region,
        rbase,
        rs,
        wbase,
        ws,
    } = g;
    let n: usize = region.iter().product();
    if n == 0 {
        return Ok(());
    }
    // Drop unit dims: fewer ranks, fewer pipelines.
    let keep: Vec<usize> = (0..region.len()).filter(|&d| region[d] != 1).collect();
    let rank = keep.len().max(1);
    let mut p = vec![n as u32, rbase as i32 as u32, wbase as u32];
    let pick = |v: &dyn Fn(usize) -> u32| -> Vec<u32> {
        if keep.is_empty() {
            vec![v(usize::MAX)]
        } else {
            keep.iter().map(|&d| v(d)).collect()
        }
    };
    p.extend(pick(&|d| {
        if d == usize::MAX {
            1
        } else {
            region[d] as u32
        }
    }));
    p.extend(pick(&|d| {
        if d == usize::MAX {
            0
        } else {
            rs[d] as i32 as u32
        }
    }));
    p.extend(pick(&|d| if d == usize::MAX { 0 } else { ws[d] as u32 }));
    let grid = r.grid(n);
    r.dispatch(&copy_source(rank), &[x, y], &p, grid)
}

#[derive(Debug)]
enum CopyKind {
    Transpose(Option<Vec<usize>>),
    Slice {
        legacy: bool,
    },
    Expand,
    /// Tile: each axis becomes (repeat, dim) in a region of twice the rank.
    Tile,
}

#[derive(Debug)]
struct Copy {
    kind: CopyKind,
    host: Vec<usize>,
}

impl Kernel for Copy {
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
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let y = r.alloc(*dt, oshape.clone())?;
        let xs = strides(&x.shape);
        let ws = strides(oshape);
        let mut dims = oshape.clone();
        let mut ws = ws;
        let (rbase, rs): (i64, Vec<i64>) = match &self.kind {
            CopyKind::Transpose(perm) => {
                let rank = x.shape.len();
                let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..rank).rev().collect());
                if perm.len() != rank {
                    return Err(Error::shape("Transpose perm length differs from rank"));
                }
                (0, perm.iter().map(|&p| xs[p] as i64).collect())
            }
            CopyKind::Expand => {
                let r = oshape.len();
                let off = r - x.shape.len();
                let mut rs = vec![0i64; r];
                for (k, &d) in x.shape.iter().enumerate() {
                    rs[off + k] = if d == 1 { 0 } else { xs[k] as i64 };
                }
                (0, rs)
            }
            CopyKind::Tile => {
                let (mut rs, mut wsv) = (Vec::new(), Vec::new());
                dims.clear();
                for k in 0..x.shape.len() {
                    let d = x.shape[k];
                    let rep = oshape[k].checked_div(d).unwrap_or(0);
                    dims.extend([rep, d]);
                    rs.extend([0i64, xs[k] as i64]);
                    wsv.extend([d * ws[k], ws[k]]);
                }
                ws = wsv;
                (0, rs)
            }
            CopyKind::Slice { legacy } => {
                if *legacy {
                    return Err(Error::runtime("legacy Slice on the GPU"));
                }
                let get = |i: usize| -> Result<Option<Vec<i64>>> {
                    match ins.get(i) {
                        Some(In::Host(t)) => Ok(Some(t.to_i64_vec()?)),
                        _ => Ok(None),
                    }
                };
                let starts = get(1)?.ok_or_else(|| Error::input("Slice needs starts"))?;
                let ends = get(2)?.ok_or_else(|| Error::input("Slice needs ends"))?;
                let rank = x.shape.len();
                let axes: Vec<usize> = match get(3)? {
                    Some(a) => a
                        .iter()
                        .map(|&v| norm_axis(v, rank, "Slice"))
                        .collect::<Result<_>>()?,
                    None => (0..starts.len()).collect(),
                };
                let steps = get(4)?.unwrap_or_else(|| vec![1; axes.len()]);
                if starts.len() != axes.len()
                    || ends.len() != axes.len()
                    || steps.len() != axes.len()
                {
                    return Err(Error::shape("Slice: parameter lists differ in length"));
                }
                let mut rs: Vec<i64> = xs.iter().map(|&s| s as i64).collect();
                let mut base = 0i64;
                for (k, &a) in axes.iter().enumerate() {
                    let (b, len) =
                        crate::cpu::layout::slice_axis(x.shape[a], starts[k], ends[k], steps[k])?;
                    if len != oshape[a] {
                        return Err(Error::shape("Slice length disagrees with the shape rule"));
                    }
                    base += (b * xs[a]) as i64;
                    rs[a] *= steps[k];
                }
                (base, rs)
            }
        };
        let g = Region {
            dims: &dims,
            rbase,
            rs: &rs,
            wbase: 0,
            ws: &ws,
        };
        strided_copy(r, x.buffer(), y.buffer(), g)?;
        Ok(vec![Out::Dev(y)])
    }
}

/// Range: `start + i·delta` from host scalars (count from the shape rule).
#[derive(Debug)]
struct RangeKernel;

const RANGE: &str = "
@group(0) @binding(0) var<storage, read_write> Y: array<u32>;
@group(0) @binding(1) var<storage, read> P: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    if (P[3] == 1u) {
        Y[i] = bitcast<u32>(bitcast<f32>(P[1]) + f32(i) * bitcast<f32>(P[2]));
    } else {
        Y[i] = bitcast<u32>(bitcast<i32>(P[1]) + i32(i) * bitcast<i32>(P[2]));
    }
}
";

impl Kernel for RangeKernel {
    fn host_inputs(&self) -> &[usize] {
        &[0, 1, 2]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let get = |i: usize| -> Result<&Tensor> {
            ins.get(i)
                .and_then(|x| x.host())
                .ok_or_else(|| Error::input("Range needs start, limit and delta"))
        };
        let (start, delta) = (get(0)?, get(2)?);
        if matches!(dt, DType::F16 | DType::BF16 | DType::F64) {
            // The CPU accumulates in the element type (rounding at every step): the
            // values come from its own rule, computed here and uploaded.
            let t = crate::cpu::layout::range(start, get(1)?, delta)?;
            if t.shape() != oshape.as_slice() {
                return Err(Error::shape("Range length differs from its shape rule"));
            }
            return Ok(vec![Out::Dev(r.upload(&t)?)]);
        }
        let float = *dt == DType::F32;
        let word = |t: &Tensor| -> Result<u32> {
            Ok(if float {
                (t.scalar_f64()? as f32).to_bits()
            } else {
                let v = t.scalar_i64()?;
                i32::try_from(v).map_err(|_| {
                    Error::unsupported_dtype("Range beyond 32-bit integers on the GPU")
                })? as u32
            })
        };
        let y = r.alloc(*dt, oshape.clone())?;
        let n = y.len();
        let grid = r.grid(n);
        let p = [n as u32, word(start)?, word(delta)?, float as u32];
        r.dispatch(&format!("{LINEAR}{RANGE}"), &[y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

/// ConstantOfShape: a fill of the op's one value.
#[derive(Debug)]
struct Fill {
    word: u32,
}

const FILL: &str = "
@group(0) @binding(0) var<storage, read_write> Y: array<u32>;
@group(0) @binding(1) var<storage, read> P: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    Y[i] = P[1];
}
";

impl Kernel for Fill {
    fn host_inputs(&self) -> &[usize] {
        &[0]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        _ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let y = r.alloc(*dt, oshape.clone())?;
        let n = y.len();
        let grid = r.grid(n);
        r.dispatch(
            &format!("{LINEAR}{FILL}"),
            &[y.buffer()],
            &[n as u32, self.word],
            grid,
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

#[derive(Debug)]
struct ConcatKernel {
    axis: i64,
}

impl Kernel for ConcatKernel {
    fn moves_only(&self) -> bool {
        true
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let axis = norm_axis(self.axis, oshape.len(), "Concat")?;
        let y = r.alloc(*dt, oshape.clone())?;
        let ws = strides(oshape);
        let mut at = 0usize;
        for inp in ins {
            let x = inp.dev()?;
            let xs: Vec<i64> = strides(&x.shape).iter().map(|&s| s as i64).collect();
            let g = Region {
                dims: &x.shape,
                rbase: 0,
                rs: &xs,
                wbase: at * ws[axis],
                ws: &ws,
            };
            strided_copy(r, x.buffer(), y.buffer(), g)?;
            at += x.shape.get(axis).copied().unwrap_or(0);
        }
        Ok(vec![Out::Dev(y)])
    }
}

/// Split: each output is a slab of the input along the axis (sizes from the shape rule).
#[derive(Debug)]
struct SplitKernel {
    axis: i64,
}

impl Kernel for SplitKernel {
    fn moves_only(&self) -> bool {
        true
    }
    fn host_inputs(&self) -> &[usize] {
        &[1]
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
        let axis = norm_axis(self.axis, x.shape.len(), "Split")?;
        let xs: Vec<i64> = strides(&x.shape).iter().map(|&s| s as i64).collect();
        let mut at = 0usize;
        let mut result = Vec::with_capacity(outs.len());
        for (dt, oshape) in outs {
            if oshape.len() != x.shape.len() {
                return Err(Error::shape("Split output rank differs from the input's"));
            }
            let y = r.alloc(*dt, oshape.clone())?;
            let ws = strides(oshape);
            let g = Region {
                dims: oshape,
                rbase: (at * xs[axis] as usize) as i64,
                rs: &xs,
                wbase: 0,
                ws: &ws,
            };
            strided_copy(r, x.buffer(), y.buffer(), g)?;
            at += oshape[axis];
            result.push(Out::Dev(y));
        }
        if at > x.shape[axis] {
            return Err(Error::shape("Split sizes exceed the axis"));
        }
        Ok(result)
    }
}

const GATHER: &str = "
@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read> I: array<i32>;
@group(0) @binding(2) var<storage, read_write> Y: array<u32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;
// P: n inner nidx dim | bad (set by a bad index: the output is undefined, the CPU errors)
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    let inner = P[1]; let nidx = P[2]; let dim = P[3];
    let c = i % inner;
    let j = (i / inner) % nidx;
    let o = i / (inner * nidx);
    var k = I[j];
    if (k < 0) { k += i32(dim); }
    k = clamp(k, 0, i32(dim) - 1);
    Y[i] = X[(o * dim + u32(k)) * inner + c];
}
";

#[derive(Debug)]
struct GatherKernel {
    axis: i64,
}

impl Kernel for GatherKernel {
    fn moves_only(&self) -> bool {
        true
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = ins
            .first()
            .ok_or_else(|| Error::runtime("missing data"))?
            .dev()?;
        let idx = ins
            .get(1)
            .ok_or_else(|| Error::runtime("missing indices"))?
            .dev()?;
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing output"))?;
        let axis = norm_axis(self.axis, x.shape.len(), "Gather")?;
        let dim = x.shape[axis];
        if dim == 0 && !idx.is_empty() {
            return Err(Error::runtime("Gather from an empty axis"));
        }
        let inner: usize = x.shape[axis + 1..].iter().product();
        let y = r.alloc(*dt, oshape.clone())?;
        let n = y.len();
        if n == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        let src = format!("{LINEAR}{GATHER}");
        let grid = r.grid(n);
        r.dispatch(
            &src,
            &[x.buffer(), idx.buffer(), y.buffer()],
            &[
                n as u32,
                inner.max(1) as u32,
                idx.len().max(1) as u32,
                dim as u32,
            ],
            grid,
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let data_ok = f.in_dtype(0).and_then(Storage::of).is_some();
    let k = |b: Box<dyn Kernel>| {
        if data_ok {
            Lowered::Kernel(b)
        } else {
            Lowered::Cpu(format!("{} on this dtype stays on the CPU", f.node.op_type))
        }
    };
    if let Some(s) = any.downcast_ref::<Shape>() {
        return k(Box::new(Metadata {
            size: false,
            start: s.start,
            end: s.end,
        }));
    }
    if any.is::<Size>() {
        return k(Box::new(Metadata {
            size: true,
            start: 0,
            end: None,
        }));
    }
    if any.is::<Reshape>() || any.is::<Squeeze>() || any.is::<Unsqueeze>() {
        return k(Box::new(View {
            host: (1..f.ins.len()).collect(),
        }));
    }
    if any.is::<Flatten>() {
        return k(Box::new(View { host: Vec::new() }));
    }
    if let Some(t) = any.downcast_ref::<Transpose>() {
        return k(Box::new(Copy {
            kind: CopyKind::Transpose(t.perm.clone()),
            host: Vec::new(),
        }));
    }
    if let Some(s) = any.downcast_ref::<Slice>() {
        if s.attrs.is_some() {
            return Lowered::Cpu("Slice-1 (attributes) stays on the CPU".into());
        }
        return k(Box::new(Copy {
            kind: CopyKind::Slice { legacy: false },
            host: (1..f.ins.len()).collect(),
        }));
    }
    if any.is::<Expand>() {
        return k(Box::new(Copy {
            kind: CopyKind::Expand,
            host: vec![1],
        }));
    }
    if any.is::<Range>() {
        return match f.out_dtype(0) {
            Some(DType::F32 | DType::I32 | DType::I64 | DType::F16 | DType::BF16 | DType::F64) => {
                Lowered::Kernel(Box::new(RangeKernel))
            }
            _ => Lowered::Cpu("Range of this dtype stays on the CPU".into()),
        };
    }
    if let Some(sp) = any.downcast_ref::<Split>() {
        return k(Box::new(SplitKernel { axis: sp.axis }));
    }
    if any.is::<Tile>() {
        return k(Box::new(Copy {
            kind: CopyKind::Tile,
            host: vec![1],
        }));
    }
    if let Some(c) = any.downcast_ref::<ConstantOfShape>() {
        return match (
            Storage::of(c.value.dtype()),
            super::tensor::to_words(&c.value),
        ) {
            (Some(_), Ok(w)) if w.len() == 1 => Lowered::Kernel(Box::new(Fill { word: w[0] })),
            _ => Lowered::Cpu("ConstantOfShape of this dtype stays on the CPU".into()),
        };
    }
    if let Some(c) = any.downcast_ref::<Concat>() {
        let all = (0..f.ins.len()).all(|i| f.in_dtype(i).and_then(Storage::of).is_some());
        if !all {
            return Lowered::Cpu("Concat on this dtype stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(ConcatKernel { axis: c.axis }));
    }
    if let Some(g) = any.downcast_ref::<Gather>() {
        if !matches!(f.in_dtype(1), Some(DType::I64 | DType::I32)) {
            return Lowered::Cpu("Gather indices of this dtype stay on the CPU".into());
        }
        return k(Box::new(GatherKernel { axis: g.axis }));
    }
    Lowered::NotMine
}
