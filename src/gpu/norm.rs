//! Normalizations on the GPU, on the row engine of `reduce.rs`: Layer, RMS, Instance,
//! Group, Lp and MeanVariance normalization compute their statistics per row (two
//! passes, one workgroup or one thread per row) and write the normalized row in a
//! third pass; BatchNormalization (inference) is pointwise.

use super::record::{Recorder, LINEAR};
use super::reduce::{entry, flit, prelude, Rows};
use super::{GpuTensor, In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::reduce::normalize_axes;
use crate::error::{Error, Result};
use crate::graph::attrs::norm_axis;
use crate::graph::ops::norm::{
    BatchNormalization, GroupNormalization, InstanceNormalization, LayerNormalization,
    LpNormalization, Lrn, MeanVarianceNormalization, RMSNormalization,
};
use crate::tensor::DType;

fn dev<'a>(ins: &'a [In], i: usize, what: &str) -> Result<&'a GpuTensor> {
    ins.get(i)
        .ok_or_else(|| Error::runtime(format!("missing {what}")))?
        .dev()
}

fn out0(outs: &[(DType, Vec<usize>)]) -> Result<&(DType, Vec<usize>)> {
    outs.first().ok_or_else(|| Error::runtime("missing output"))
}

fn u32s(v: impl IntoIterator<Item = usize>) -> Result<Vec<u32>> {
    v.into_iter()
        .map(|x| {
            u32::try_from(x).map_err(|_| Error::shape("tensor too large for the GPU's indices"))
        })
        .collect()
}

/// Strides of parameter `p` broadcast (unidirectionally, right-aligned) to `target`,
/// 0 on broadcast dims; the checks of `cpu::norm::expand_param`.
fn param_strides(p: &[usize], target: &[usize], what: &str) -> Result<Vec<usize>> {
    let bad = || {
        Error::shape(format!(
            "{what} of shape {p:?} does not broadcast to {target:?}"
        ))
    };
    let extra = p.len().saturating_sub(target.len());
    if p[..extra].iter().any(|&d| d != 1) {
        return Err(bad());
    }
    let ps = &p[extra..];
    let off = target.len() - ps.len();
    let mut st = vec![0usize; target.len()];
    let mut acc = 1;
    for k in (0..ps.len()).rev() {
        let d = ps[k];
        if d != 1 && d != target[off + k] {
            return Err(bad());
        }
        if d != 1 {
            st[off + k] = acc;
        }
        acc *= d;
    }
    Ok(st)
}

/// The params of `pidx`: nd | dims[nd] | strides of each parameter [nd], with dims
/// merged where every parameter walks them alike.
fn param_params(target: &[usize], strides: &[Vec<usize>]) -> Result<Vec<u32>> {
    let mut dims: Vec<usize> = Vec::new();
    let mut ss: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for (k, &d) in target.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let merge = !dims.is_empty()
            && strides.iter().zip(&ss).all(|(st, s)| {
                let prev = s.last().copied().unwrap_or(0);
                (prev == 0 && st[k] == 0) || (st[k] != 0 && prev == st[k] * d)
            });
        if merge {
            let l = dims.len() - 1;
            dims[l] *= d;
            for (s, st) in ss.iter_mut().zip(strides) {
                s[l] = st[k];
            }
        } else {
            dims.push(d);
            for (s, st) in ss.iter_mut().zip(strides) {
                s.push(st[k]);
            }
        }
    }
    if dims.is_empty() {
        dims.push(1);
        ss.iter_mut().for_each(|s| s.push(0));
    }
    let mut p = vec![dims.len()];
    p.extend(&dims);
    for s in ss {
        p.extend(s);
    }
    u32s(p)
}

const PIDX: &str = "
fn pidx(j: u32, e: u32, k: u32) -> u32 {
    let nd = P[e];
    let so = e + 1u + nd * (1u + k);
    var rem = j;
    var o = 0u;
    for (var d = i32(nd) - 1; d >= 0; d--) {
        let dim = P[e + 1u + u32(d)];
        o += (rem % dim) * P[so + u32(d)];
        rem = rem / dim;
    }
    return o;
}
";

/// Bindings X, then the read-only `params`, then the outputs `outs`, then P.
fn bindings(params: &[&str], outs: &[&str]) -> String {
    let mut s = String::from("@group(0) @binding(0) var<storage, read> X: array<f32>;\n");
    let mut b = 1;
    for p in params {
        s.push_str(&format!(
            "@group(0) @binding({b}) var<storage, read> {p}: array<f32>;\n"
        ));
        b += 1;
    }
    for o in outs {
        s.push_str(&format!(
            "@group(0) @binding({b}) var<storage, read_write> {o}: array<f32>;\n"
        ));
        b += 1;
    }
    s.push_str(&format!(
        "@group(0) @binding({b}) var<storage, read> P: array<u32>;\n"
    ));
    s
}

/// Mean and variance of the row (two passes), as `mean`, `vr`.
const MEAN_VAR: &str = "    let nf = f32(n);
    var s1 = 0.0;
    for (var j = t; j < n; j += T) { s1 += X[base + roff(j)]; }
    let mean = wsum(s1, t) / nf;
    var s2 = 0.0;
    for (var j = t; j < n; j += T) { let d = X[base + roff(j)] - mean; s2 += d * d; }
    let vr = wsum(s2, t) / nf;
";

// ---------------------------------------------------------------- Layer / RMS

#[derive(Debug)]
struct LayerNormKernel {
    axis: i64,
    epsilon: f32,
    /// RMSNormalization (no mean, no bias, no statistics outputs).
    rms: bool,
    /// Mean/InvStdDev outputs are produced (stash type f32).
    stats: bool,
}

impl Kernel for LayerNormKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "X")?;
        let scale = dev(ins, 1, "scale")?;
        let bias = match ins.get(2) {
            Some(In::Dev(b)) if !self.rms => Some(*b),
            _ => None,
        };
        let (dt, oshape) = out0(outs)?;
        let axis = norm_axis(self.axis, x.shape.len())?;
        let norm_shape = &x.shape[axis..];
        let rows_n: usize = x.shape[..axis].iter().product();
        let cols: usize = norm_shape.iter().product();
        let mut strides = vec![param_strides(&scale.shape, norm_shape, "scale")?];
        if let Some(b) = bias {
            strides.push(param_strides(&b.shape, norm_shape, "B")?);
        }
        let y = r.alloc(*dt, oshape.clone())?;
        let mut stats = Vec::new();
        if self.stats {
            for o in outs.iter().skip(1).take(2) {
                stats.push(r.alloc(o.0, o.1.clone())?);
            }
        }
        let mut res = vec![Out::Dev(y.clone())];
        res.extend(stats.iter().cloned().map(Out::Dev));
        if rows_n == 0 {
            return Ok(res);
        }
        let rows = Rows::split(rows_n, cols, 1);
        let coop = rows.coop();
        let mut params = rows.params()?;
        params.push(self.epsilon.to_bits());
        params.extend(param_params(norm_shape, &strides)?);
        let body = if self.rms {
            "    let nf = f32(n);
    var s2 = 0.0;
    for (var j = t; j < n; j += T) { let v = X[base + roff(j)]; s2 += v * v; }
    let inv = 1.0 / sqrt(wsum(s2, t) / nf + bitcast<f32>(P[E]));
    for (var j = t; j < n; j += T) {
        let o = base + roff(j);
        Y[o] = X[o] * inv * S[pidx(j, E + 1u, 0u)];
    }"
            .to_string()
        } else {
            let b = if bias.is_some() {
                " + B[pidx(j, E + 1u, 1u)]"
            } else {
                ""
            };
            let st = if self.stats {
                "    if (t == 0u) { M[row] = mean; IS[row] = inv; }\n"
            } else {
                ""
            };
            format!(
                "{MEAN_VAR}    let inv = 1.0 / sqrt(vr + bitcast<f32>(P[E]));
    for (var j = t; j < n; j += T) {{
        let o = base + roff(j);
        Y[o] = (X[o] - mean) * inv * S[pidx(j, E + 1u, 0u)]{b};
    }}
{st}"
            )
        };
        let mut pnames = vec!["S"];
        let mut bufs = vec![x.buffer(), scale.buffer()];
        if let Some(b) = bias {
            pnames.push("B");
            bufs.push(b.buffer());
        }
        let mut onames = vec!["Y"];
        bufs.push(y.buffer());
        if self.stats {
            onames.extend(["M", "IS"]);
            bufs.extend(stats.iter().map(|s| s.buffer()));
        }
        let src = format!(
            "{}{}{PIDX}{}",
            bindings(&pnames, &onames),
            prelude("f32", coop),
            entry(coop, &body)
        );
        rows.dispatch(r, coop, &src, &bufs, &params)?;
        Ok(res)
    }
}

// ---------------------------------------------------------------- Instance / Group

#[derive(Debug)]
struct GroupNormKernel {
    epsilon: f32,
    /// None: InstanceNormalization (groups = channels).
    groups: Option<usize>,
    /// Scale/bias hold one value per group (GroupNormalization before opset 21).
    per_group: bool,
}

impl Kernel for GroupNormKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "X")?;
        let scale = dev(ins, 1, "scale")?;
        let bias = dev(ins, 2, "B")?;
        let (dt, oshape) = out0(outs)?;
        let what = if self.groups.is_some() {
            "GroupNormalization"
        } else {
            "InstanceNormalization"
        };
        if x.shape.len() < 2 {
            return Err(Error::shape(format!(
                "{what} needs an input of rank >= 2, got {:?}",
                x.shape
            )));
        }
        let (n, c) = (x.shape[0], x.shape[1]);
        let inner: usize = x.shape[2..].iter().product();
        let groups = self.groups.unwrap_or(c);
        if groups == 0 || c % groups != 0 {
            return Err(Error::shape(format!(
                "{what}: {c} channels do not split into {groups} groups"
            )));
        }
        let plen = if self.per_group { groups } else { c };
        for (t, w) in [(scale, "scale"), (bias, "bias")] {
            if t.len() != plen {
                return Err(Error::shape(format!(
                    "{w} has {} elements, expected {plen}",
                    t.len()
                )));
            }
        }
        let y = r.alloc(*dt, oshape.clone())?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let cpg = c / groups;
        let rows = Rows::split(n * groups, cpg * inner, 1);
        let coop = rows.coop();
        let mut params = rows.params()?;
        params.push(self.epsilon.to_bits());
        params.extend(u32s([groups, inner, cpg, self.per_group as usize])?);
        let body = format!(
            "{MEAN_VAR}    let inv = 1.0 / sqrt(vr + bitcast<f32>(P[E]));
    let g = row % P[E + 1u];
    let inner = P[E + 2u];
    let cpg = P[E + 3u];
    for (var j = t; j < n; j += T) {{
        let ch = g * cpg + j / inner;
        let pi = select(ch, g, P[E + 4u] == 1u);
        let a = inv * S[pi];
        let d = B[pi] - mean * a;
        let o = base + roff(j);
        Y[o] = X[o] * a + d;
    }}"
        );
        let src = format!(
            "{}{}{}",
            bindings(&["S", "B"], &["Y"]),
            prelude("f32", coop),
            entry(coop, &body)
        );
        rows.dispatch(
            r,
            coop,
            &src,
            &[x.buffer(), scale.buffer(), bias.buffer(), y.buffer()],
            &params,
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------- Lp / MVN

#[derive(Debug)]
enum RowNorm {
    Lp { axis: i64, p: i64 },
    Mvn { axes: Vec<i64>, variance: bool },
}

#[derive(Debug)]
struct RowNormKernel {
    op: RowNorm,
}

impl Kernel for RowNormKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "X")?;
        let (dt, oshape) = out0(outs)?;
        let y = r.alloc(*dt, oshape.clone())?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let (rows, body) = match &self.op {
            RowNorm::Lp { axis, p } => {
                let a = norm_axis(*axis, x.shape.len())?;
                let (pre, post) = if *p == 1 {
                    ("abs(v)", "nv")
                } else {
                    ("v * v", "sqrt(nv)")
                };
                (
                    Rows::new(&x.shape, &[a]),
                    format!(
                        "    var s = 0.0;
    for (var j = t; j < n; j += T) {{ let v = X[base + roff(j)]; s += {pre}; }}
    var nv = wsum(s, t);
    nv = {post};
    for (var j = t; j < n; j += T) {{
        let o = base + roff(j);
        Y[o] = select(X[o] / nv, 0.0, nv == 0.0);
    }}"
                    ),
                )
            }
            RowNorm::Mvn { axes, variance } => {
                let a = normalize_axes(axes, x.shape.len())?;
                let w = if *variance {
                    "(X[o] - m) / den"
                } else {
                    "X[o] - m"
                };
                (
                    Rows::new(&x.shape, &a),
                    format!(
                        "    let nf = f32(n);
    var s1 = 0.0;
    var s2 = 0.0;
    for (var j = t; j < n; j += T) {{ let v = X[base + roff(j)]; s1 += v; s2 += v * v; }}
    let m = wsum(s1, t) / nf;
    let msq = wsum(s2, t) / nf;
    let den = sqrt(max(msq - m * m, 0.0)) + {eps};
    for (var j = t; j < n; j += T) {{
        let o = base + roff(j);
        Y[o] = {w};
    }}",
                        eps = flit(1e-9)
                    ),
                )
            }
        };
        let coop = rows.coop();
        let src = format!(
            "{}{}{}",
            bindings(&[], &["Y"]),
            prelude("f32", coop),
            entry(coop, &body)
        );
        rows.dispatch(r, coop, &src, &[x.buffer(), y.buffer()], &rows.params()?)?;
        Ok(vec![Out::Dev(y)])
    }
}

// ---------------------------------------------------------------- BatchNormalization

/// LRN: one thread per element sums the squares of its channel window.
#[derive(Debug)]
struct LrnKernel {
    op: Lrn,
}

// P: total c inner lo hi | k beta bias (f32 bits)
const LRN_SRC: &str = "
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    let c = P[1]; let inner = P[2]; let lo = P[3]; let hi = P[4];
    let k = bitcast<f32>(P[5]); let beta = bitcast<f32>(P[6]); let bias = bitcast<f32>(P[7]);
    let q = i % inner;
    let ch = (i / inner) % c;
    let base = i - (ch * inner + q);
    var begin = 0u;
    if (ch > lo) { begin = ch - lo; }
    let end = min(ch + hi + 1u, c);
    var s = 0.0;
    for (var j = begin; j < end; j++) {
        let v = X[base + j * inner + q];
        s += v * v;
    }
    Y[i] = X[i] / pow(bias + k * s, beta);
}
";

impl Kernel for LrnKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "X")?;
        let (dt, oshape) = out0(outs)?;
        if x.shape.len() < 2 {
            return Err(Error::shape("LRN input needs rank >= 2"));
        }
        let y = r.alloc(*dt, oshape.clone())?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let (c, inner) = (x.shape[1], x.shape[2..].iter().product::<usize>());
        let size = self.op.size;
        let lo = (size - 1) / 2;
        let hi = size - 1 - lo;
        let k = self.op.alpha / size as f32;
        let mut p = u32s([y.len(), c, inner, lo, hi])?;
        p.extend([k.to_bits(), self.op.beta.to_bits(), self.op.bias.to_bits()]);
        let src = format!("{LINEAR}{LRN_SRC}");
        let grid = r.grid(y.len());
        r.dispatch(&src, &[x.buffer(), y.buffer()], &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

#[derive(Debug)]
struct BatchNormKernel {
    epsilon: f32,
}

impl Kernel for BatchNormKernel {
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "X")?;
        let ps = [
            dev(ins, 1, "scale")?,
            dev(ins, 2, "B")?,
            dev(ins, 3, "mean")?,
            dev(ins, 4, "var")?,
        ];
        let (dt, oshape) = out0(outs)?;
        if x.shape.len() < 2 {
            return Err(Error::shape(format!(
                "BatchNormalization needs an input of rank >= 2, got {:?}",
                x.shape
            )));
        }
        let c = x.shape[1];
        let inner: usize = x.shape[2..].iter().product();
        let y = r.alloc(*dt, oshape.clone())?;
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let slen = ps[0].len();
        let per_elem = slen != c && slen == c * inner;
        let plen = if per_elem { c * inner } else { c };
        for (t, w) in ps.iter().zip(["scale", "B", "mean", "var"]) {
            if t.len() != plen {
                return Err(Error::shape(format!(
                    "{w} has {} elements, expected {plen}",
                    t.len()
                )));
            }
        }
        let mut params = u32s([y.len(), c, inner, per_elem as usize])?;
        params.push(self.epsilon.to_bits());
        let src = format!(
            "{LINEAR}{}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let c = P[1];
    let inner = P[2];
    let p = select((i / inner) % c, i % (c * inner), P[3] == 1u);
    let a = S[p] / sqrt(V[p] + bitcast<f32>(P[4]));
    Y[i] = X[i] * a + (B[p] - M[p] * a);
}}
",
            bindings(&["S", "B", "M", "V"], &["Y"])
        );
        let grid = r.grid(y.len());
        r.dispatch(
            &src,
            &[
                x.buffer(),
                ps[0].buffer(),
                ps[1].buffer(),
                ps[2].buffer(),
                ps[3].buffer(),
                y.buffer(),
            ],
            &params,
            grid,
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let all_f32 = || f.float_inputs();
    let name = &f.node.op_type;
    let k: Box<dyn Kernel> = if let Some(op) = any.downcast_ref::<LayerNormalization>() {
        let stats_read = (1..3).any(|i| f.node.outputs.get(i).is_some_and(|o| o.is_some()));
        let stats = op.stash_type == DType::F32;
        if stats_read && !stats {
            return Lowered::Cpu(format!(
                "LayerNormalization statistics in {} stay on the CPU",
                op.stash_type
            ));
        }
        Box::new(LayerNormKernel {
            axis: op.axis,
            epsilon: op.epsilon,
            rms: false,
            stats,
        })
    } else if let Some(op) = any.downcast_ref::<RMSNormalization>() {
        Box::new(LayerNormKernel {
            axis: op.axis,
            epsilon: op.epsilon,
            rms: true,
            stats: false,
        })
    } else if let Some(op) = any.downcast_ref::<InstanceNormalization>() {
        Box::new(GroupNormKernel {
            epsilon: op.epsilon,
            groups: None,
            per_group: false,
        })
    } else if let Some(op) = any.downcast_ref::<GroupNormalization>() {
        Box::new(GroupNormKernel {
            epsilon: op.epsilon,
            groups: Some(op.num_groups),
            per_group: !op.per_channel,
        })
    } else if let Some(op) = any.downcast_ref::<LpNormalization>() {
        Box::new(RowNormKernel {
            op: RowNorm::Lp {
                axis: op.axis,
                p: op.p,
            },
        })
    } else if let Some(op) = any.downcast_ref::<MeanVarianceNormalization>() {
        Box::new(RowNormKernel {
            op: RowNorm::Mvn {
                axes: op.axes.clone(),
                variance: op.normalize_variance,
            },
        })
    } else if let Some(op) = any.downcast_ref::<Lrn>() {
        Box::new(LrnKernel { op: op.clone() })
    } else if let Some(op) = any.downcast_ref::<BatchNormalization>() {
        if op.training_mode {
            return Lowered::Cpu("BatchNormalization in training mode stays on the CPU".into());
        }
        Box::new(BatchNormKernel {
            epsilon: op.epsilon,
        })
    } else {
        return Lowered::NotMine;
    };
    if !all_f32() {
        return Lowered::Cpu(format!("{name} on non-float inputs stays on the CPU"));
    }
    Lowered::Kernel(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_broadcast() {
        assert_eq!(param_strides(&[4], &[3, 4], "s").unwrap(), vec![0, 1]);
        assert_eq!(param_strides(&[3, 1], &[3, 4], "s").unwrap(), vec![1, 0]);
        assert_eq!(param_strides(&[1, 3, 4], &[3, 4], "s").unwrap(), vec![4, 1]);
        assert!(param_strides(&[2, 3, 4], &[3, 4], "s").is_err());
        assert!(param_strides(&[5], &[3, 4], "s").is_err());
        // Both contiguous: one merged dim.
        let p = param_params(&[3, 4], &[vec![4, 1], vec![4, 1]]).unwrap();
        assert_eq!(p, vec![1, 12, 1, 1]);
        // One broadcast along the first dim: no merge.
        let p = param_params(&[3, 4], &[vec![4, 1], vec![0, 1]]).unwrap();
        assert_eq!(p, vec![2, 3, 4, 4, 1, 0, 1]);
    }
}
