//! Reductions on the GPU: Reduce*, ArgMax/ArgMin, Softmax/LogSoftmax/Hardmax and
//! CumSum/CumProd, plus the row engine the normalizations (`norm.rs`) share.
//!
//! Every kernel here sees its input as rows: the kept dims enumerate the rows (in
//! row-major order, which is also the order of a reduction's output) and the reduced
//! dims enumerate the elements of a row. Both are described by dims and strides in the
//! params (size-1 dims dropped, adjacent dims of one kind merged), so scattered axes
//! need no transpose and one pipeline serves every shape. Per shape the kernel runs
//! either one thread per row (short rows, many of them) or one workgroup per row with
//! a tree reduction in workgroup memory (long rows: a softmax over a vocabulary).

use super::record::{Recorder, LINEAR};
use super::{In, Kernel, Lowered, NodeFacts, Out, Storage};
use crate::cpu::reduce::{normalize_axes, ReduceKind, SoftmaxKind};
use crate::error::{Error, Result};
use crate::graph::attrs::norm_axis;
use crate::graph::ops::reduce::{ArgExtreme, Cumulative, Reduce, Softmax};
use crate::tensor::DType;

/// A tensor seen as `nrows` rows of `n` elements: kept (dim, stride) pairs enumerate
/// the rows, reduced ones the elements of a row. Both lists hold at least one entry.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Rows {
    pub nrows: usize,
    pub n: usize,
    pub kept: Vec<(usize, usize)>,
    pub red: Vec<(usize, usize)>,
}

impl Rows {
    /// Rows of a contiguous tensor of `shape`, reducing over sorted `axes`.
    pub fn new(shape: &[usize], axes: &[usize]) -> Rows {
        let mut st = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            st[d] = st[d + 1] * shape[d + 1];
        }
        let mut kept: Vec<(usize, usize)> = Vec::new();
        let mut red: Vec<(usize, usize)> = Vec::new();
        // Which list the previous (non-1) dim went to.
        let mut last: Option<bool> = None;
        for (d, (&dim, &s)) in shape.iter().zip(&st).enumerate() {
            if dim == 1 {
                continue;
            }
            let is_red = axes.contains(&d);
            let list = if is_red { &mut red } else { &mut kept };
            match list.last_mut() {
                Some(p) if last == Some(is_red) && p.1 == s * dim => {
                    p.0 *= dim;
                    p.1 = s;
                }
                _ => list.push((dim, s)),
            }
            last = Some(is_red);
        }
        let nrows = kept.iter().map(|p| p.0).product();
        let n = red.iter().map(|p| p.0).product();
        if kept.is_empty() {
            kept.push((1, 0));
        }
        if red.is_empty() {
            red.push((1, 0));
        }
        Rows {
            nrows,
            n,
            kept,
            red,
        }
    }

    /// Rows of `(outer, n, inner)` data, reducing over `n`.
    pub fn split(outer: usize, n: usize, inner: usize) -> Rows {
        Rows::new(&[outer, n, inner], &[1])
    }

    /// The params prefix the row helpers read: nrows n nk nr | kd ks | rd rs.
    pub fn params(&self) -> Result<Vec<u32>> {
        let mut p = vec![self.nrows, self.n, self.kept.len(), self.red.len()];
        p.extend(self.kept.iter().map(|k| k.0));
        p.extend(self.kept.iter().map(|k| k.1));
        p.extend(self.red.iter().map(|k| k.0));
        p.extend(self.red.iter().map(|k| k.1));
        p.into_iter()
            .map(|v| {
                u32::try_from(v)
                    .map_err(|_| Error::shape("tensor too large for the GPU's 32-bit indices"))
            })
            .collect()
    }

    /// One workgroup per row (true) or one thread per row.
    pub fn coop(&self) -> bool {
        let (n, rows) = (self.n, self.nrows);
        if n < 32 {
            return false;
        }
        if self.red[self.red.len() - 1].1 == 1 {
            n >= 128 || rows < 2048
        } else {
            n >= 256 && rows < 4096
        }
    }

    /// Records `source` over the rows (the source's entry from [`entry`] with `coop`).
    pub fn dispatch(
        &self,
        r: &mut Recorder,
        coop: bool,
        source: &str,
        bufs: &[&wgpu::Buffer],
        params: &[u32],
    ) -> Result<()> {
        let grid = if coop {
            let max = r.cx.max_workgroups as usize;
            if self.nrows <= max {
                [self.nrows as u32, 1, 1]
            } else {
                [max as u32, self.nrows.div_ceil(max) as u32, 1]
            }
        } else {
            r.grid(self.nrows)
        };
        r.dispatch(source, bufs, params, grid)
    }
}

/// A WGSL f32 literal with the exact bits of `x`.
pub(super) fn flit(x: f32) -> String {
    if x.is_finite() {
        format!("bitcast<f32>({}u)", x.to_bits())
    } else {
        // WGSL rejects a constant expression that evaluates to ±inf or NaN (Tint enforces
        // it, naga does not): tie the bits to the params buffer so it is not constant.
        format!("bitcast<f32>({}u + P[0] * 0u)", x.to_bits())
    }
}

/// The scalar helpers and the row helpers (`rbase(row)`, `roff(j)`) of a kernel over
/// scalar `s` ("f32" or "i32"), and the workgroup (or per-thread) reductions `wsum`,
/// `wprod`, `wmax`/`wmin` (NaN-propagating), `wmaxi` (NaN-ignoring).
pub(super) fn prelude(s: &str, coop: bool) -> String {
    let f = s == "f32";
    let mut out = String::from(LINEAR);
    out.push_str(
        "
fn is_nan_(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}
fn rbase(row: u32) -> u32 {
    let nk = P[2];
    var rem = row;
    var o = 0u;
    for (var d = i32(nk) - 1; d >= 0; d--) {
        let dim = P[4u + u32(d)];
        o += (rem % dim) * P[4u + nk + u32(d)];
        rem = rem / dim;
    }
    return o;
}
fn roff(j: u32) -> u32 {
    let nr = P[3];
    let b = 4u + 2u * P[2];
    var rem = j;
    var o = 0u;
    for (var d = i32(nr) - 1; d >= 1; d--) {
        let dim = P[b + u32(d)];
        o += (rem % dim) * P[b + nr + u32(d)];
        rem = rem / dim;
    }
    return o + rem * P[b + nr];
}
",
    );
    if f {
        out.push_str(
            "
fn isn(x: f32) -> bool { return is_nan_(x); }
fn mx(a: f32, b: f32) -> f32 { return select(a, b, b > a || is_nan_(b)); }
fn mn(a: f32, b: f32) -> f32 { return select(a, b, b < a || is_nan_(b)); }
fn mxi(a: f32, b: f32) -> f32 { return select(a, b, b > a); }
",
        );
    } else {
        out.push_str(&format!(
            "
fn isn(x: {s}) -> bool {{ return false; }}
fn mx(a: {s}, b: {s}) -> {s} {{ return max(a, b); }}
fn mn(a: {s}, b: {s}) -> {s} {{ return min(a, b); }}
fn mxi(a: {s}, b: {s}) -> {s} {{ return max(a, b); }}
"
        ));
    }
    let trees = [
        ("wsum", "a + b"),
        ("wprod", "a * b"),
        ("wmax", "mx(a, b)"),
        ("wmin", "mn(a, b)"),
        ("wmaxi", "mxi(a, b)"),
    ];
    if coop {
        out.push_str(&format!(
            "const T: u32 = 256u;\nvar<workgroup> red: array<{s}, 256>;\n"
        ));
        for (name, e) in trees {
            out.push_str(&format!(
                "
fn {name}(v: {s}, t: u32) -> {s} {{
    red[t] = v;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k = k >> 1u) {{
        if (t < k) {{
            let a = red[t];
            let b = red[t + k];
            red[t] = {e};
        }}
        workgroupBarrier();
    }}
    let r = red[0];
    workgroupBarrier();
    return r;
}}
"
            ));
        }
    } else {
        out.push_str("const T: u32 = 1u;\n");
        for (name, _) in trees {
            out.push_str(&format!(
                "fn {name}(v: {s}, t: u32) -> {s} {{ return v; }}\n"
            ));
        }
    }
    out
}

/// The entry point: `row`, `t` (thread in the row's workgroup; 0 per-thread), `n`,
/// `base` (offset of the row's first element) and `E` (index of the kernel's own
/// params after the row prefix) are in scope for `body`.
pub(super) fn entry(coop: bool, body: &str) -> String {
    let head = if coop {
        "@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= P[0]) { return; }
    let t = lid.x;"
    } else {
        "@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = linear_id(gid, nwg);
    if (row >= P[0]) { return; }
    let t = 0u;"
    };
    format!(
        "{head}
    let n = P[1];
    let base = rbase(row);
    let E = 4u + 2u * (P[2] + P[3]);
{body}
}}
"
    )
}

fn first<'a>(ins: &'a [In]) -> Result<&'a super::GpuTensor> {
    ins.first()
        .ok_or_else(|| Error::runtime("missing input"))?
        .dev()
}

fn out0(outs: &[(DType, Vec<usize>)]) -> Result<&(DType, Vec<usize>)> {
    outs.first().ok_or_else(|| Error::runtime("missing output"))
}

/// WGSL scalar of a storage.
fn scalar(st: Storage) -> &'static str {
    st.wgsl()
}

// ---------------------------------------------------------------- Reduce*

#[derive(Debug)]
struct ReduceKernel {
    op: Reduce,
    st: Storage,
    host: Vec<usize>,
}

fn reduce_body(kind: ReduceKind, s: &str) -> String {
    let f = s == "f32";
    let (zero, one, lo, hi) = if f {
        (
            "0.0".to_string(),
            "1.0".to_string(),
            flit(f32::NEG_INFINITY),
            flit(f32::INFINITY),
        )
    } else if s == "u32" {
        // bool: Max is any, Min is all (true over the empty set, like the CPU).
        (
            "0u".to_string(),
            "1u".to_string(),
            "0u".to_string(),
            "1u".to_string(),
        )
    } else {
        (
            "0i".to_string(),
            "1i".to_string(),
            "bitcast<i32>(0x80000000u)".to_string(),
            "2147483647i".to_string(),
        )
    };
    use ReduceKind::*;
    if kind == LogSumExp {
        return format!(
            "    var m = {lo};
    for (var j = t; j < n; j += T) {{ m = mx(m, X[base + roff(j)]); }}
    m = wmax(m, t);
    let fin = !is_nan_(m) && abs(m) != {inf};
    let mm = select(0.0, m, fin);
    var s = 0.0;
    for (var j = t; j < n; j += T) {{ s += exp(X[base + roff(j)] - mm); }}
    s = wsum(s, t);
    if (t == 0u) {{
        var v = m + log(s);
        if (!fin) {{ v = select({lo}, m, is_nan_(m) || m > 0.0); }}
        Y[row] = v;
    }}",
            inf = flit(f32::INFINITY)
        );
    }
    let (id, pre, comb, tree, post) = match kind {
        Sum => (&zero, "x", "a + p", "wsum", "a"),
        Mean => (&zero, "x", "a + p", "wsum", "a / f32(n)"),
        Prod => (&one, "x", "a * p", "wprod", "a"),
        Max => (&lo, "x", "mx(a, p)", "wmax", "a"),
        Min => (&hi, "x", "mn(a, p)", "wmin", "a"),
        L1 => (&zero, "abs(x)", "a + p", "wsum", "a"),
        L2 => (&zero, "x * x", "a + p", "wsum", "sqrt(a)"),
        SumSquare => (&zero, "x * x", "a + p", "wsum", "a"),
        LogSum => (&zero, "x", "a + p", "wsum", "log(a)"),
        LogSumExp => unreachable!("handled above"),
    };
    format!(
        "    var a: {s} = {id};
    for (var j = t; j < n; j += T) {{
        let x = X[base + roff(j)];
        let p = {pre};
        a = {comb};
    }}
    a = {tree}(a, t);
    if (t == 0u) {{ Y[row] = {post}; }}"
    )
}

fn io_bindings(s_in: &str, s_out: &str) -> String {
    format!(
        "@group(0) @binding(0) var<storage, read> X: array<{s_in}>;
@group(0) @binding(1) var<storage, read_write> Y: array<{s_out}>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
"
    )
}

impl Kernel for ReduceKernel {
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = first(ins)?;
        let (dt, oshape) = out0(outs)?;
        let axes: Vec<i64> = if self.op.axes_input {
            match ins.get(1) {
                Some(In::Host(t)) => t.to_i64_vec()?,
                Some(In::Dev(_)) => return Err(Error::runtime("Reduce axes must be on the host")),
                _ => Vec::new(),
            }
        } else {
            self.op.axes.clone().unwrap_or_default()
        };
        if axes.is_empty() && self.op.noop_with_empty_axes {
            return Ok(vec![Out::Dev(super::GpuTensor {
                buf: x.buf.clone(),
                shape: oshape.clone(),
                dtype: *dt,
            })]);
        }
        let mut axes = normalize_axes(&axes, x.shape.len())?;
        if axes.is_empty() {
            axes = (0..x.shape.len()).collect();
        }
        let rows = Rows::new(&x.shape, &axes);
        let y = r.alloc(*dt, oshape.clone())?;
        if y.len() != rows.nrows {
            return Err(Error::shape("Reduce output size differs from the rows"));
        }
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let coop = rows.coop();
        let s = scalar(self.st);
        let src = format!(
            "{}{}{}",
            io_bindings(s, s),
            prelude(s, coop),
            entry(coop, &reduce_body(self.op.kind, s))
        );
        rows.dispatch(r, coop, &src, &[x.buffer(), y.buffer()], &rows.params()?)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------- ArgMax / ArgMin

#[derive(Debug)]
struct ArgKernel {
    op: ArgExtreme,
    st: Storage,
}

/// `wbest(v, i, t)`: the index of the best (value, index) pair of the workgroup, or
/// 0xffffffff when no thread saw a (non-NaN) value.
fn arg_tree(s: &str, coop: bool, max: bool, last: bool) -> String {
    let strict = if max { "b > a" } else { "b < a" };
    let tie = if last { "bi > ai" } else { "bi < ai" };
    if coop {
        format!(
            "var<workgroup> rv: array<{s}, 256>;
var<workgroup> ri: array<u32, 256>;
fn pick(a: {s}, ai: u32, b: {s}, bi: u32) -> bool {{
    if (bi == 0xffffffffu) {{ return false; }}
    if (ai == 0xffffffffu) {{ return true; }}
    if ({strict}) {{ return true; }}
    return b == a && {tie};
}}
fn wbest(v: {s}, i: u32, t: u32) -> u32 {{
    rv[t] = v;
    ri[t] = i;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k = k >> 1u) {{
        if (t < k) {{
            if (pick(rv[t], ri[t], rv[t + k], ri[t + k])) {{
                rv[t] = rv[t + k];
                ri[t] = ri[t + k];
            }}
        }}
        workgroupBarrier();
    }}
    return ri[0];
}}
"
        )
    } else {
        format!("fn wbest(v: {s}, i: u32, t: u32) -> u32 {{ return i; }}\n")
    }
}

fn arg_source(s: &str, coop: bool, max: bool, last: bool) -> String {
    let scan = match (max, last) {
        (true, false) => "x > bv",
        (true, true) => "x >= bv",
        (false, false) => "x < bv",
        (false, true) => "x <= bv",
    };
    let tree = arg_tree(s, coop, max, last);
    let body = "    var bv = X[base];
    var bi = 0xffffffffu;
    for (var j = t; j < n; j += T) {
        let x = X[base + roff(j)];
        if (!isn(x) && (bi == 0xffffffffu || SCAN)) { bv = x; bi = j; }
    }
    let best = wbest(bv, bi, t);
    if (t == 0u) {
        Y[row] = i32(select(best, 0u, best == 0xffffffffu || isn(X[base])));
    }"
    .replace("SCAN", scan);
    format!(
        "{}{}{}{}",
        io_bindings(s, "i32"),
        prelude(s, coop),
        tree,
        entry(coop, &body)
    )
}

impl Kernel for ArgKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = first(ins)?;
        let (dt, oshape) = out0(outs)?;
        let a = norm_axis(self.op.axis, x.shape.len())?;
        let rows = Rows::new(&x.shape, &[a]);
        let y = r.alloc(*dt, oshape.clone())?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        if rows.n == 0 {
            return Err(Error::shape(format!(
                "{} over an empty axis",
                if self.op.max { "ArgMax" } else { "ArgMin" }
            )));
        }
        let coop = rows.coop();
        let src = arg_source(
            scalar(self.st),
            coop,
            self.op.max,
            self.op.select_last_index,
        );
        rows.dispatch(r, coop, &src, &[x.buffer(), y.buffer()], &rows.params()?)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------- Softmax family

#[derive(Debug)]
struct SoftmaxKernel {
    op: Softmax,
}

fn softmax_body(kind: SoftmaxKind) -> String {
    if kind == SoftmaxKind::Hardmax {
        return "    var bv = X[base];
    var bi = 0xffffffffu;
    for (var j = t; j < n; j += T) {
        let x = X[base + roff(j)];
        if (!isn(x) && (bi == 0xffffffffu || x > bv)) { bv = x; bi = j; }
    }
    var best = wbest(bv, bi, t);
    best = select(best, 0u, best == 0xffffffffu || isn(X[base]));
    for (var j = t; j < n; j += T) {
        Y[base + roff(j)] = select(0.0, 1.0, j == best);
    }"
        .to_string();
    }
    let write = if kind == SoftmaxKind::Softmax {
        "Y[o] = exp(X[o] - m) / s;"
    } else {
        "Y[o] = X[o] - l;"
    };
    format!(
        "    var m = {lo};
    for (var j = t; j < n; j += T) {{ m = mxi(m, X[base + roff(j)]); }}
    m = wmaxi(m, t);
    var s = 0.0;
    for (var j = t; j < n; j += T) {{ s += exp(X[base + roff(j)] - m); }}
    s = wsum(s, t);
    let l = m + log(s);
    for (var j = t; j < n; j += T) {{
        let o = base + roff(j);
        {write}
    }}",
        lo = flit(f32::NEG_INFINITY)
    )
}

impl Kernel for SoftmaxKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = first(ins)?;
        let (dt, oshape) = out0(outs)?;
        let (outer, n, inner) = self.op.dims(&x.shape)?;
        let rows = Rows::split(outer, n, inner);
        let y = r.alloc(*dt, oshape.clone())?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let coop = rows.coop();
        let mut src = format!("{}{}", io_bindings("f32", "f32"), prelude("f32", coop));
        if self.op.kind == SoftmaxKind::Hardmax {
            // The ArgMax tree (first index of the largest).
            src.push_str(&arg_tree("f32", coop, true, false));
        }
        src.push_str(&entry(coop, &softmax_body(self.op.kind)));
        rows.dispatch(r, coop, &src, &[x.buffer(), y.buffer()], &rows.params()?)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------- CumSum / CumProd

#[derive(Debug)]
struct CumKernel {
    op: Cumulative,
    st: Storage,
}

impl Kernel for CumKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = first(ins)?;
        let (dt, oshape) = out0(outs)?;
        let a = ins
            .get(1)
            .and_then(|i| i.host())
            .ok_or_else(|| Error::runtime("CumSum axis must be on the host"))?;
        if a.len() != 1 {
            return Err(Error::shape(format!(
                "CumSum: axis must be a scalar, got shape {:?}",
                a.shape()
            )));
        }
        let axis = norm_axis(a.to_i64_vec()?[0], x.shape.len())?;
        let rows = Rows::new(&x.shape, &[axis]);
        let y = r.alloc(*dt, oshape.clone())?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let s = scalar(self.st);
        let (id, op) = match (self.op.prod, s) {
            (false, "f32") => ("0.0", "+"),
            (true, "f32") => ("1.0", "*"),
            (false, _) => ("0i", "+"),
            (true, _) => ("1i", "*"),
        };
        let step = if self.op.exclusive {
            format!("Y[o] = acc; acc = acc {op} X[o];")
        } else {
            format!("acc = acc {op} X[o]; Y[o] = acc;")
        };
        let j = if self.op.reverse { "n - 1u - k" } else { "k" };
        let body = format!(
            "    var acc: {s} = {id};
    for (var k = 0u; k < n; k++) {{
        let o = base + roff({j});
        {step}
    }}"
        );
        let src = format!(
            "{}{}{}",
            io_bindings(s, s),
            prelude(s, false),
            entry(false, &body)
        );
        rows.dispatch(r, false, &src, &[x.buffer(), y.buffer()], &rows.params()?)?;
        Ok(vec![Out::Dev(y)])
    }
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let dt = f.in_dtype(0);
    let st = dt.and_then(Storage::of);
    if let Some(op) = any.downcast_ref::<Reduce>() {
        let int_ok = matches!(
            op.kind,
            ReduceKind::Sum | ReduceKind::Max | ReduceKind::Min | ReduceKind::Prod
        );
        let st = match (dt, st) {
            // float16/bfloat16 and float64 are held (and reduced) as f32 on the GPU.
            (Some(DType::F32 | DType::F16 | DType::BF16 | DType::F64), _) => Storage::F32,
            (Some(DType::I32 | DType::I64), _) if int_ok => Storage::I32,
            (Some(DType::Bool), _) if matches!(op.kind, ReduceKind::Max | ReduceKind::Min) => {
                Storage::U32
            }
            (Some(d), _) => {
                return Lowered::Cpu(format!("{} on {d} stays on the CPU", op.kind.op_name()))
            }
            (None, _) => return Lowered::Cpu("Reduce input dtype unknown at load".into()),
        };
        return Lowered::Kernel(Box::new(ReduceKernel {
            op: op.clone(),
            st,
            host: if op.axes_input { vec![1] } else { vec![] },
        }));
    }
    if let Some(op) = any.downcast_ref::<ArgExtreme>() {
        // The narrow float8/float4/int4/int2 types have no CPU ArgMax either.
        return match st.filter(|_| !dt.is_some_and(|d| d.is_small())) {
            Some(st) => Lowered::Kernel(Box::new(ArgKernel { op: op.clone(), st })),
            _ => Lowered::Cpu(format!("{} on {dt:?} stays on the CPU", op_name(op))),
        };
    }
    if let Some(op) = any.downcast_ref::<Softmax>() {
        if !super::gpu_float(dt) {
            return Lowered::Cpu(format!("softmax on {dt:?} stays on the CPU"));
        }
        return Lowered::Kernel(Box::new(SoftmaxKernel { op: op.clone() }));
    }
    if let Some(op) = any.downcast_ref::<Cumulative>() {
        return match st.filter(|_| dt.is_some_and(|d| d.is_numeric())) {
            Some(st @ (Storage::F32 | Storage::I32)) => {
                Lowered::Kernel(Box::new(CumKernel { op: op.clone(), st }))
            }
            _ => Lowered::Cpu(format!("cumulative op on {dt:?} stays on the CPU")),
        };
    }
    Lowered::NotMine
}

fn op_name(op: &ArgExtreme) -> &'static str {
    if op.max {
        "ArgMax"
    } else {
        "ArgMin"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_merge_and_scatter() {
        let r = Rows::new(&[2, 3, 4], &[1]);
        assert_eq!((r.nrows, r.n), (8, 3));
        assert_eq!(r.kept, vec![(2, 12), (4, 1)]);
        assert_eq!(r.red, vec![(3, 4)]);
        let r = Rows::new(&[2, 3, 4, 5], &[2, 3]);
        assert_eq!(r.kept, vec![(6, 20)]);
        assert_eq!(r.red, vec![(20, 1)]);
        let r = Rows::new(&[2, 1, 3], &[0, 1, 2]);
        assert_eq!((r.nrows, r.n), (1, 6));
        assert_eq!(r.kept, vec![(1, 0)]);
        assert_eq!(r.red, vec![(6, 1)]);
        let r = Rows::new(&[2, 3, 4], &[0, 2]);
        assert_eq!(r.red, vec![(2, 12), (4, 1)]);
        assert_eq!(r.kept, vec![(3, 4)]);
        let r = Rows::new(&[3, 1], &[1]);
        assert_eq!((r.nrows, r.n), (3, 1));
        assert_eq!(r.red, vec![(1, 0)]);
    }
}
