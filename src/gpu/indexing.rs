//! Indexing ops on the GPU: GatherElements, GatherND, ScatterElements (and the
//! deprecated Scatter), ScatterND, TensorScatter, OneHot, Trilu, EyeLike and TopK.
//!
//! Gathers read their indices on the GPU: negative indices wrap once as on the CPU, and
//! an index still out of range is clamped to the axis (a shader cannot fail). Constant
//! indices are checked when the kernel is recorded, so a bad model fails as on the CPU.
//! Scatters read their indices on the host: the targets are computed (and checked) there
//! exactly as the CPU does, and each output element applies its updates in index order
//! (an offsets/list table), so duplicate indices and reductions match the CPU.
//! Every GPU dtype is one 32-bit word, so the pure moves share one pipeline per kernel
//! whatever the dtype; only reductions and comparisons are typed.

use super::record::{Recorder, LINEAR};
use super::{GpuTensor, In, Kernel, Lowered, NodeFacts, Out, Storage};
use crate::cpu::common::strides;
use crate::cpu::layout::Reduction;
use crate::error::{Error, Result};
use crate::graph::ops::layout::{
    EyeLike, GatherElements, GatherND, OneHot, ScatterElements, ScatterND, TensorScatter, Trilu,
};
use crate::graph::ops::reduce::TopK;
use crate::tensor::{DType, Tensor};

fn dev<'a>(ins: &'a [In], i: usize, what: &str) -> Result<&'a GpuTensor> {
    ins.get(i)
        .ok_or_else(|| Error::runtime(format!("missing {what}")))?
        .dev()
}

fn host<'a>(ins: &'a [In], i: usize) -> Option<&'a Tensor> {
    ins.get(i).and_then(|x| x.host())
}

fn out_at(outs: &[(DType, Vec<usize>)], i: usize) -> Result<&(DType, Vec<usize>)> {
    outs.get(i).ok_or_else(|| Error::runtime("missing output"))
}

fn words(v: &[usize]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

/// The CPU's index rule: a negative index wraps once; the result must be in `[0, len)`.
fn norm_index(i: i64, len: usize, what: &str) -> Result<usize> {
    crate::cpu::layout::norm_index(i, len, what)
}

/// Constant gather indices checked against the axis they index (as the CPU would).
fn check_indices(t: &Tensor, len: usize, what: &str) -> Result<()> {
    for i in t.to_i64_vec()? {
        norm_index(i, len, what)?;
    }
    Ok(())
}

/// Uploads a host-made u32 table (a one-word dummy when empty: zero-size bindings are
/// invalid).
fn upload_u32(r: &mut Recorder, v: Vec<u32>) -> Result<GpuTensor> {
    let v = if v.is_empty() { vec![0] } else { v };
    r.upload(&Tensor::from_vec(vec![v.len()], v)?)
}

/// The shared index clamp: wrap a negative index once, then clamp into the axis.
const NORM: &str = "
fn norm_(k0: i32, dim: u32) -> u32 {
    var k = k0;
    if (k < 0) { k += i32(dim); }
    return u32(clamp(k, 0, i32(dim) - 1));
}
";

// ---------------------------------------------------------------------------------------
// GatherElements

const GATHER_ELEMENTS: &str = "
@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read> I: array<i32>;
@group(0) @binding(2) var<storage, read_write> Y: array<u32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;
// P: n rank axis | ishape[R] | xstrides[R]
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    let rank = P[1];
    let axis = P[2];
    var rem = i;
    var off = 0u;
    for (var d = i32(rank) - 1; d >= 0; d--) {
        let dim = P[3u + u32(d)];
        let c = rem % dim;
        rem = rem / dim;
        let st = P[3u + rank + u32(d)];
        if (u32(d) == axis) {
            off += norm_(I[i], P[3u + 2u * rank]) * st;
        } else {
            off += c * st;
        }
    }
    Y[i] = X[off];
}
";

#[derive(Debug)]
struct GatherElementsKernel {
    axis: i64,
    /// Constant indices, checked at encode time against the data shape.
    consts: Option<Tensor>,
}

impl Kernel for GatherElementsKernel {
    fn moves_only(&self) -> bool {
        true
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "data")?;
        let idx = dev(ins, 1, "indices")?;
        let what = "GatherElements";
        let rank = x.shape.len();
        let axis = crate::cpu::layout::norm_axis(self.axis, rank, what)?;
        if idx.shape.len() != rank {
            return Err(Error::shape(format!(
                "{what}: indices rank {} != data rank {rank}",
                idx.shape.len()
            )));
        }
        for (k, (&a, &b)) in idx.shape.iter().zip(&x.shape).enumerate() {
            if k != axis && a > b {
                return Err(Error::shape(format!(
                    "{what}: indices shape {:?} exceeds data shape {:?}",
                    idx.shape, x.shape
                )));
            }
        }
        let len = x.shape[axis];
        if let Some(t) = &self.consts {
            check_indices(t, len, what)?;
        }
        let (dt, oshape) = out_at(outs, 0)?;
        let y = r.alloc(*dt, oshape.clone())?;
        let n = y.len();
        if n == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        if len == 0 {
            return Err(Error::runtime(format!("{what}: gather from an empty axis")));
        }
        let mut p = vec![n as u32, rank as u32, axis as u32];
        p.extend(words(&idx.shape));
        p.extend(words(&strides(&x.shape)));
        p.push(len as u32);
        let src = format!("{LINEAR}{NORM}{GATHER_ELEMENTS}");
        let grid = r.grid(n);
        r.dispatch(&src, &[x.buffer(), idx.buffer(), y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// GatherND

const GATHER_ND: &str = "
@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read> I: array<i32>;
@group(0) @binding(2) var<storage, read_write> Y: array<u32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;
// P: n block k per_batch batch_size | dims[k] | strides[k]
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    let block = P[1];
    let k = P[2];
    let t = i / block;
    var off = (t / P[3]) * P[4] + i % block;
    for (var j = 0u; j < k; j++) {
        off += norm_(I[t * k + j], P[5u + j]) * P[5u + k + j];
    }
    Y[i] = X[off];
}
";

#[derive(Debug)]
struct GatherNdKernel {
    batch_dims: usize,
    consts: Option<Tensor>,
}

/// GatherND/ScatterND geometry, checked as the CPU does: (tuple length k, elements per
/// tuple's block, tuples per batch, elements per batch).
fn nd_geometry(
    data: &[usize],
    ishape: &[usize],
    batch_dims: usize,
    what: &str,
) -> Result<(usize, usize, usize, usize)> {
    let q = ishape.len();
    let r = data.len();
    if q < 1 || batch_dims >= q || batch_dims > r {
        return Err(Error::shape(format!(
            "{what}: bad ranks (data {r}, indices {q}, batch_dims {batch_dims})"
        )));
    }
    if data[..batch_dims] != ishape[..batch_dims] {
        return Err(Error::shape(format!("{what}: batch dims differ")));
    }
    let k = ishape[q - 1];
    if batch_dims + k > r {
        return Err(Error::shape(format!(
            "{what}: index tuples of length {k} for rank {r}"
        )));
    }
    let block: usize = data[batch_dims + k..].iter().product();
    let per_batch: usize = ishape[batch_dims..q - 1].iter().product();
    let batch_size: usize = data[batch_dims..].iter().product();
    Ok((k, block, per_batch, batch_size))
}

impl Kernel for GatherNdKernel {
    fn moves_only(&self) -> bool {
        true
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "data")?;
        let idx = dev(ins, 1, "indices")?;
        let what = "GatherND";
        let bd = self.batch_dims;
        let (k, block, per_batch, batch_size) = nd_geometry(&x.shape, &idx.shape, bd, what)?;
        if let Some(t) = &self.consts {
            let v = t.to_i64_vec()?;
            for (j, &i) in v.iter().enumerate() {
                norm_index(i, x.shape[bd + j % k.max(1)], what)?;
            }
        }
        let (dt, oshape) = out_at(outs, 0)?;
        let y = r.alloc(*dt, oshape.clone())?;
        let n = y.len();
        if n == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        if x.shape[bd..bd + k].contains(&0) {
            return Err(Error::runtime(format!("{what}: gather from an empty axis")));
        }
        let st = strides(&x.shape);
        let mut p = vec![
            n as u32,
            block.max(1) as u32,
            k as u32,
            per_batch.max(1) as u32,
            batch_size as u32,
        ];
        p.extend(words(&x.shape[bd..bd + k]));
        p.extend(words(&st[bd..bd + k]));
        let src = format!("{LINEAR}{NORM}{GATHER_ND}");
        let grid = r.grid(n);
        r.dispatch(&src, &[x.buffer(), idx.buffer(), y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// Scatters: targets on the host, one thread per output element applies its updates in
// order.

/// For each output block, the updates that land on it, in update order: a CSR table
/// (`start[slots + 1]`, `list`). `targets[u]` is the first element of update `u`'s block.
fn scatter_table(targets: &[usize], block: usize, slots: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    let block = block.max(1);
    let mut count = vec![0u32; slots + 1];
    for &t in targets {
        let s = t / block;
        if s >= slots || t % block != 0 {
            return Err(Error::runtime("scatter: target out of range"));
        }
        count[s + 1] += 1;
    }
    for s in 0..slots {
        count[s + 1] += count[s];
    }
    let mut fill = count.clone();
    let mut list = vec![0u32; targets.len()];
    for (u, &t) in targets.iter().enumerate() {
        let s = t / block;
        list[fill[s] as usize] = u as u32;
        fill[s] += 1;
    }
    Ok((count, list))
}

fn scatter_source(st: Storage, red: Reduction) -> String {
    let ty = match red {
        Reduction::None => "u32",
        _ => st.wgsl(),
    };
    let comb = match red {
        Reduction::None => "u",
        Reduction::Add => "v + u",
        Reduction::Mul => "v * u",
        Reduction::Max => "select(v, u, u > v)",
        Reduction::Min => "select(v, u, u < v)",
    };
    format!(
        "{LINEAR}
@group(0) @binding(0) var<storage, read> X: array<{ty}>;
@group(0) @binding(1) var<storage, read> U: array<{ty}>;
@group(0) @binding(2) var<storage, read> S: array<u32>;
@group(0) @binding(3) var<storage, read> L: array<u32>;
@group(0) @binding(4) var<storage, read_write> Y: array<{ty}>;
@group(0) @binding(5) var<storage, read> P: array<u32>;
// P: n block
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let block = P[1];
    let s = i / block;
    let c = i % block;
    var v = X[i];
    for (var j = S[s]; j < S[s + 1u]; j++) {{
        let u = U[L[j] * block + c];
        v = {comb};
    }}
    Y[i] = v;
}}
"
    )
}

#[derive(Debug, Clone, Copy)]
enum ScatterKind {
    Elements { axis: i64 },
    Nd,
    Tensor { axis: i64, circular: bool },
}

#[derive(Debug)]
struct ScatterKernel {
    kind: ScatterKind,
    red: Reduction,
    host: Vec<usize>,
}

/// ScatterElements targets (element offsets), checked as the CPU does.
fn element_targets(
    data: &[usize],
    ishape: &[usize],
    idx: &[i64],
    axis: usize,
) -> Result<Vec<usize>> {
    let what = "ScatterElements";
    if ishape.len() != data.len() {
        return Err(Error::shape(format!(
            "{what}: indices rank {} != data rank {}",
            ishape.len(),
            data.len()
        )));
    }
    if axis >= data.len() {
        return Err(Error::shape(format!("{what}: axis out of range")));
    }
    for (k, (&a, &b)) in ishape.iter().zip(data).enumerate() {
        if k != axis && a > b {
            return Err(Error::shape(format!(
                "{what}: indices shape {ishape:?} exceeds data shape {data:?}"
            )));
        }
    }
    let st = strides(data);
    let ist = strides(ishape);
    let len = data[axis];
    let mut offs = Vec::with_capacity(idx.len());
    for (flat, &v) in idx.iter().enumerate() {
        let i = norm_index(v, len, what)?;
        let mut o = 0;
        for d in 0..data.len() {
            let c = (flat / ist[d]) % ishape[d].max(1);
            o += if d == axis { i } else { c } * st[d];
        }
        offs.push(o);
    }
    Ok(offs)
}

/// ScatterND targets (block offsets) and the block size, checked as the CPU does.
fn nd_targets(data: &[usize], ishape: &[usize], idx: &[i64]) -> Result<(Vec<usize>, usize)> {
    let what = "ScatterND";
    let (k, block, _, _) = nd_geometry(data, ishape, 0, what)?;
    let st = strides(data);
    let tuples: usize = ishape[..ishape.len() - 1].iter().product();
    let mut offs = Vec::with_capacity(tuples);
    for t in 0..tuples {
        let mut o = 0;
        for j in 0..k {
            o += norm_index(idx[t * k + j], data[j], what)? * st[j];
        }
        offs.push(o);
    }
    Ok((offs, block))
}

impl Kernel for ScatterKernel {
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn moves_only(&self) -> bool {
        self.red == Reduction::None
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "data")?;
        let (targets, block, upd) = match self.kind {
            ScatterKind::Elements { axis } => {
                let it = host(ins, 1).ok_or_else(|| Error::runtime("missing indices"))?;
                let u = dev(ins, 2, "updates")?;
                if u.shape.as_slice() != it.shape() {
                    return Err(Error::shape(
                        "ScatterElements: updates and indices shapes differ",
                    ));
                }
                let a = crate::cpu::layout::norm_axis(axis, x.shape.len(), "ScatterElements")?;
                let t = element_targets(&x.shape, it.shape(), &it.to_i64_vec()?, a)?;
                (t, 1, u)
            }
            ScatterKind::Nd => {
                let it = host(ins, 1).ok_or_else(|| Error::runtime("missing indices"))?;
                let u = dev(ins, 2, "updates")?;
                let (t, block) = nd_targets(&x.shape, it.shape(), &it.to_i64_vec()?)?;
                let ish = it.shape();
                let k = ish.last().copied().unwrap_or(0);
                let mut want = ish[..ish.len() - 1].to_vec();
                want.extend_from_slice(&x.shape[k..]);
                if u.shape != want {
                    return Err(Error::shape(format!(
                        "ScatterND: updates shape {:?}, expected {want:?}",
                        u.shape
                    )));
                }
                (t, block, u)
            }
            ScatterKind::Tensor { axis, circular } => {
                let u = dev(ins, 1, "update")?;
                let w = match host(ins, 2) {
                    Some(t) => Some(t.to_i64_vec()?),
                    None => None,
                };
                let a = crate::cpu::layout::norm_axis(axis, x.shape.len(), "TensorScatter")?;
                let (t, block) =
                    crate::cpu::layout::tensor_scatter_targets(&x.shape, &u.shape, w, a, circular)?;
                (t, block, u)
            }
        };
        if targets.len().checked_mul(block) != Some(upd.len()) {
            return Err(Error::shape(
                "scatter: updates shape does not match indices",
            ));
        }
        let (dt, oshape) = out_at(outs, 0)?;
        let y = r.alloc(*dt, oshape.clone())?;
        let n = y.len();
        if n == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        let slots = n / block.max(1);
        let (start, list) = scatter_table(&targets, block, slots)?;
        let s = upload_u32(r, start)?;
        let l = upload_u32(r, list)?;
        let st = x.storage();
        let src = scatter_source(st, self.red);
        let grid = r.grid(n);
        r.dispatch(
            &src,
            &[x.buffer(), upd.buffer(), s.buffer(), l.buffer(), y.buffer()],
            &[n as u32, block.max(1) as u32],
            grid,
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// Trilu, EyeLike, OneHot

const TRILU: &str = "
@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read_write> Y: array<u32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
// P: n rows cols k(i32) upper
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    let cols = P[2];
    let j = i32(i % cols);
    let r = i32((i / cols) % P[1]);
    let diff = j - r;
    let k = bitcast<i32>(P[3]);
    let keep = select(diff <= k, diff >= k, P[4] != 0u);
    Y[i] = select(0u, X[i], keep);
}
";

#[derive(Debug)]
struct TriluKernel {
    upper: bool,
    host: Vec<usize>,
}

impl Kernel for TriluKernel {
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn moves_only(&self) -> bool {
        true
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "input")?;
        let k = match host(ins, 1) {
            Some(t) => t.scalar_i64()?,
            None => 0,
        };
        let rank = x.shape.len();
        if rank < 2 {
            return Err(Error::shape("Trilu needs rank >= 2"));
        }
        let (dt, oshape) = out_at(outs, 0)?;
        let y = r.alloc(*dt, oshape.clone())?;
        let n = y.len();
        if n == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        let k = k.clamp(i32::MIN as i64 / 2, i32::MAX as i64 / 2) as i32;
        let p = [
            n as u32,
            x.shape[rank - 2] as u32,
            x.shape[rank - 1] as u32,
            k as u32,
            self.upper as u32,
        ];
        let src = format!("{LINEAR}{TRILU}");
        let grid = r.grid(n);
        r.dispatch(&src, &[x.buffer(), y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

const EYE: &str = "
@group(0) @binding(0) var<storage, read_write> Y: array<u32>;
@group(0) @binding(1) var<storage, read> P: array<u32>;
// P: n cols k(i32) one
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    let c = i32(i % P[1]);
    let r = i32(i / P[1]);
    Y[i] = select(0u, P[3], c - r == bitcast<i32>(P[2]));
}
";

#[derive(Debug)]
struct EyeKernel {
    k: i64,
}

impl Kernel for EyeKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        _ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let (dt, oshape) = out_at(outs, 0)?;
        if oshape.len() != 2 {
            return Err(Error::shape("EyeLike needs a 2-D input"));
        }
        let y = r.alloc(*dt, oshape.clone())?;
        let n = y.len();
        if n == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        let one = match y.storage() {
            Storage::F32 => 1f32.to_bits(),
            _ => 1,
        };
        let k = self.k.clamp(i32::MIN as i64 / 2, i32::MAX as i64 / 2) as i32;
        let p = [n as u32, oshape[1] as u32, k as u32, one];
        let src = format!("{LINEAR}{EYE}");
        let grid = r.grid(n);
        r.dispatch(&src, &[y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

fn one_hot_source(float_idx: bool) -> String {
    let (ty, conv) = if float_idx {
        ("f32", "i32(I[o * inner + c])")
    } else {
        ("i32", "I[o * inner + c]")
    };
    format!(
        "{LINEAR}
@group(0) @binding(0) var<storage, read> I: array<{ty}>;
@group(0) @binding(1) var<storage, read_write> Y: array<u32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
// P: n depth inner off on
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let depth = P[1];
    let inner = P[2];
    let c = i % inner;
    let x = i32((i / inner) % depth);
    let o = i / (inner * depth);
    var v = {conv};
    if (v < 0) {{ v += i32(depth); }}
    Y[i] = select(P[3], P[4], v == x);
}}
"
    )
}

#[derive(Debug)]
struct OneHotKernel {
    axis: i64,
}

impl Kernel for OneHotKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1, 2]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let idx = dev(ins, 0, "indices")?;
        let values = host(ins, 2).ok_or_else(|| Error::runtime("missing values"))?;
        if values.len() != 2 {
            return Err(Error::shape("OneHot: values must have two elements"));
        }
        let vw = super::tensor::to_words(values)?;
        let (dt, oshape) = out_at(outs, 0)?;
        let a = crate::cpu::layout::norm_axis(self.axis, idx.shape.len() + 1, "OneHot")?;
        let depth = oshape.get(a).copied().unwrap_or(0);
        let inner: usize = idx.shape[a..].iter().product();
        let y = r.alloc(*dt, oshape.clone())?;
        let n = y.len();
        if n == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        let p = [n as u32, depth as u32, inner.max(1) as u32, vw[0], vw[1]];
        let src = one_hot_source(idx.storage() == Storage::F32);
        let grid = r.grid(n);
        r.dispatch(&src, &[idx.buffer(), y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------------------------------
// TopK: each element counts the row elements ordered before it (value, then lower
// index, NaN largest as on the CPU); elements ranked below k land at their rank.

fn top_k_source(st: Storage, largest: bool) -> String {
    let ty = st.wgsl();
    let nan = if st == Storage::F32 {
        "fn nan_(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}"
        .to_string()
    } else {
        format!("fn nan_(x: {ty}) -> bool {{ return false; }}")
    };
    let before = if largest {
        "gt_(vb, va) || (eq_(vb, va) && jb < ja)"
    } else {
        "gt_(va, vb) || (eq_(vb, va) && jb < ja)"
    };
    format!(
        "{LINEAR}
{nan}
// a > b with NaN the largest.
fn gt_(a: {ty}, b: {ty}) -> bool {{
    let na = nan_(a);
    let nb = nan_(b);
    if (na) {{ return !nb; }}
    if (nb) {{ return false; }}
    return a > b;
}}
fn eq_(a: {ty}, b: {ty}) -> bool {{
    let na = nan_(a);
    let nb = nan_(b);
    return (na && nb) || (!na && !nb && a == b);
}}
@group(0) @binding(0) var<storage, read> X: array<{ty}>;
@group(0) @binding(1) var<storage, read_write> V: array<{ty}>;
@group(0) @binding(2) var<storage, read_write> J: array<i32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;
// P: total len inner k
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let len = P[1];
    let inner = P[2];
    let k = P[3];
    let c = i % inner;
    let ja = (i / inner) % len;
    let o = i / (inner * len);
    let base = o * len * inner + c;
    let va = X[i];
    var rank = 0u;
    for (var jb = 0u; jb < len; jb++) {{
        let vb = X[base + jb * inner];
        if ({before}) {{ rank++; }}
    }}
    if (rank < k) {{
        let d = (o * k + rank) * inner + c;
        V[d] = va;
        J[d] = i32(ja);
    }}
}}
"
    )
}

#[derive(Debug)]
struct TopKKernel {
    axis: i64,
    largest: bool,
    k: Option<i64>,
    host: Vec<usize>,
}

impl Kernel for TopKKernel {
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "input")?;
        let kv = match self.k {
            Some(k) => k,
            None => {
                let t = host(ins, 1).ok_or_else(|| Error::runtime("missing K"))?;
                let v = t.to_i64_vec()?;
                let [k] = v[..] else {
                    return Err(Error::shape("TopK: K must hold exactly one value"));
                };
                k
            }
        };
        let k = usize::try_from(kv)
            .map_err(|_| Error::runtime(format!("TopK: k = {kv} is negative")))?;
        let axis = crate::cpu::layout::norm_axis(self.axis, x.shape.len(), "TopK")?;
        let len = x.shape[axis];
        if k > len {
            return Err(Error::runtime(format!(
                "TopK: k = {k} is larger than the axis length {len}"
            )));
        }
        let inner: usize = x.shape[axis + 1..].iter().product();
        let (vdt, vshape) = out_at(outs, 0)?;
        let (idt, ishape) = out_at(outs, 1)?;
        let v = r.alloc(*vdt, vshape.clone())?;
        let j = r.alloc(*idt, ishape.clone())?;
        let n = x.len();
        if v.is_empty() || n == 0 {
            return Ok(vec![Out::Dev(v), Out::Dev(j)]);
        }
        let src = top_k_source(x.storage(), self.largest);
        let grid = r.grid(n);
        r.dispatch(
            &src,
            &[x.buffer(), v.buffer(), j.buffer()],
            &[n as u32, len as u32, inner.max(1) as u32, k as u32],
            grid,
        )?;
        Ok(vec![Out::Dev(v), Out::Dev(j)])
    }
}

// ---------------------------------------------------------------------------------------

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let op = &f.node.op_type;
    let data_st = f.in_dtype(0).and_then(Storage::of);
    let int_idx = |i: usize| f.in_dtype(i).and_then(Storage::of) == Some(Storage::I32);
    let cpu = |why: &str| Lowered::Cpu(format!("{op}: {why}"));
    if let Some(g) = any.downcast_ref::<GatherElements>() {
        if data_st.is_none() {
            return cpu("this dtype stays on the CPU");
        }
        if !int_idx(1) {
            return cpu("indices of this dtype stay on the CPU");
        }
        return Lowered::Kernel(Box::new(GatherElementsKernel {
            axis: g.axis,
            consts: f.consts.get(1).copied().flatten().cloned(),
        }));
    }
    if let Some(g) = any.downcast_ref::<GatherND>() {
        if data_st.is_none() {
            return cpu("this dtype stays on the CPU");
        }
        if !int_idx(1) {
            return cpu("indices of this dtype stay on the CPU");
        }
        return Lowered::Kernel(Box::new(GatherNdKernel {
            batch_dims: g.batch_dims,
            consts: f.consts.get(1).copied().flatten().cloned(),
        }));
    }
    let scatter = |kind: ScatterKind, red: Reduction, upd: usize, host: Vec<usize>| {
        let Some(st) = data_st else {
            return cpu("this dtype stays on the CPU");
        };
        if f.in_dtype(upd).and_then(Storage::of) != Some(st) {
            return cpu("updates of this dtype stay on the CPU");
        }
        if red != Reduction::None
            && !matches!(f.in_dtype(0), Some(DType::F32 | DType::I32 | DType::I64))
        {
            return cpu("reductions on this dtype stay on the CPU");
        }
        Lowered::Kernel(Box::new(ScatterKernel { kind, red, host }))
    };
    if let Some(s) = any.downcast_ref::<ScatterElements>() {
        return scatter(
            ScatterKind::Elements { axis: s.axis },
            s.reduction,
            2,
            vec![1],
        );
    }
    if let Some(s) = any.downcast_ref::<ScatterND>() {
        return scatter(ScatterKind::Nd, s.reduction, 2, vec![1]);
    }
    if let Some(s) = any.downcast_ref::<TensorScatter>() {
        return scatter(
            ScatterKind::Tensor {
                axis: s.axis,
                circular: s.circular,
            },
            Reduction::None,
            1,
            vec![2],
        );
    }
    if let Some(t) = any.downcast_ref::<Trilu>() {
        if data_st.is_none() {
            return cpu("this dtype stays on the CPU");
        }
        return Lowered::Kernel(Box::new(TriluKernel {
            upper: t.upper,
            host: vec![1],
        }));
    }
    if let Some(e) = any.downcast_ref::<EyeLike>() {
        if data_st.is_none() || f.out_dtype(0).and_then(Storage::of).is_none() {
            return cpu("this dtype stays on the CPU");
        }
        return Lowered::Kernel(Box::new(EyeKernel { k: e.k }));
    }
    if let Some(o) = any.downcast_ref::<OneHot>() {
        let idx_ok = matches!(data_st, Some(Storage::I32)) || f.in_dtype(0) == Some(DType::F32);
        if !idx_ok {
            return cpu("indices of this dtype stay on the CPU");
        }
        if f.in_dtype(2).and_then(Storage::of).is_none() {
            return cpu("values of this dtype stay on the CPU");
        }
        return Lowered::Kernel(Box::new(OneHotKernel { axis: o.axis }));
    }
    if let Some(t) = any.downcast_ref::<TopK>() {
        // float16/bfloat16 compare as f32 exactly as the CPU does; 64-bit types stay.
        if data_st.is_none() {
            return cpu("this dtype stays on the CPU");
        }
        return Lowered::Kernel(Box::new(TopKKernel {
            axis: t.axis,
            largest: t.largest,
            k: t.k,
            host: if t.k.is_some() { vec![] } else { vec![1] },
        }));
    }
    Lowered::NotMine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_table_keeps_update_order() {
        // Updates 0 and 2 land on slot 1, update 1 on slot 0; slot 2 gets nothing.
        let (start, list) = scatter_table(&[2, 0, 2], 2, 3).unwrap();
        assert_eq!(start, vec![0, 1, 3, 3]);
        assert_eq!(list, vec![1, 0, 2]);
        assert!(scatter_table(&[6], 2, 3).is_err());
    }

    #[test]
    fn element_targets_match_the_cpu_rule() {
        // data 2x3, indices 2x2 along axis 1 with a negative index.
        let t = element_targets(&[2, 3], &[2, 2], &[0, -1, 2, 1], 1).unwrap();
        assert_eq!(t, vec![0, 2, 5, 4]);
        assert!(element_targets(&[2, 3], &[2, 2], &[0, 3, 0, 0], 1).is_err());
        // axis 0
        let t = element_targets(&[2, 3], &[1, 3], &[1, 0, -2], 0).unwrap();
        assert_eq!(t, vec![3, 1, 2]);
    }

    #[test]
    fn nd_and_tensor_targets() {
        // data 4x2, indices [[1],[3]]: blocks of 2 at rows 1 and 3.
        let (t, b) = nd_targets(&[4, 2], &[2, 1], &[1, -1]).unwrap();
        assert_eq!((t, b), (vec![2, 6], 2));
        // cache [2, 4, 3] (batch, seq, dim), update of 2 steps at per-batch offsets.
        let (t, b) = crate::cpu::layout::tensor_scatter_targets(
            &[2, 4, 3],
            &[2, 2, 3],
            Some(vec![1, 3]),
            1,
            true,
        )
        .unwrap();
        assert_eq!(b, 3);
        assert_eq!(t, vec![3, 6, 21, 12]);
        assert!(crate::cpu::layout::tensor_scatter_targets(
            &[2, 4, 3],
            &[2, 2, 3],
            Some(vec![1, 3]),
            1,
            false
        )
        .is_err());
    }

    #[test]
    fn nd_geometry_with_batch_dims() {
        // data [2,3,4], indices [2,5,1], batch_dims 1: blocks of 4, 5 tuples per batch.
        assert_eq!(
            nd_geometry(&[2, 3, 4], &[2, 5, 1], 1, "t").unwrap(),
            (1, 4, 5, 12)
        );
        assert!(nd_geometry(&[2, 3, 4], &[3, 5, 1], 1, "t").is_err());
    }
}
