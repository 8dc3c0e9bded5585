//! NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss on the GPU.
//!
//! The labels are read on the host: each label is checked there exactly as the CPU does
//! (ignore_index, range), and turned into a per-element class (-1: ignored) and weight,
//! together with the weight sum that `mean` divides by. The GPU computes the log-softmax
//! (SoftmaxCrossEntropyLoss), the per-element losses, and the sum in one workgroup.

use super::record::{Recorder, LINEAR};
use super::{In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::norm::LossReduction;
use crate::error::{Error, Result};
use crate::graph::ops::norm::Loss;
use crate::tensor::{DType, Tensor};

const LOG_SOFTMAX: &str = "
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
// P: rows(n*inner) c inner
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    if (t >= P[0]) { return; }
    let c = P[1];
    let inner = P[2];
    let base = (t / inner) * c * inner + t % inner;
    var m = X[base];
    for (var j = 1u; j < c; j++) { m = max(m, X[base + j * inner]); }
    var s = 0.0;
    for (var j = 0u; j < c; j++) { s += exp(X[base + j * inner] - m); }
    let ls = log(s);
    for (var j = 0u; j < c; j++) {
        let o = base + j * inner;
        Y[o] = X[o] - m - ls;
    }
}
";

const NLL: &str = "
@group(0) @binding(0) var<storage, read> LP: array<f32>;
@group(0) @binding(1) var<storage, read> CLS: array<i32>;
@group(0) @binding(2) var<storage, read> W: array<f32>;
@group(0) @binding(3) var<storage, read_write> L: array<f32>;
@group(0) @binding(4) var<storage, read> P: array<u32>;
// P: count(n*inner) c inner
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    if (t >= P[0]) { return; }
    let inner = P[2];
    let k = CLS[t];
    var v = 0.0;
    if (k >= 0) {
        v = -LP[((t / inner) * P[1] + u32(k)) * inner + t % inner] * W[t];
    }
    L[t] = v;
}
";

/// The sum of `L` (and, for mean, divided by the weight sum) in one workgroup.
const SUM: &str = "
@group(0) @binding(0) var<storage, read> L: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
// P: count mean wsum(f32)
var<workgroup> part: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    for (var i = lid.x; i < P[0]; i += 256u) { s += L[i]; }
    part[lid.x] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lid.x < w) { part[lid.x] += part[lid.x + w]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        var v = part[0];
        if (P[1] != 0u) { v = v / bitcast<f32>(P[2]); }
        Y[0] = v;
    }
}
";

/// Per-element classes (-1 where ignored), weights, and the weight sum, checked as the
/// CPU checks them.
fn label_table(
    labels: &[i64],
    c: usize,
    weight: Option<&[f32]>,
    ignore_index: Option<i64>,
) -> Result<(Vec<i32>, Vec<f32>, f64)> {
    let mut cls = Vec::with_capacity(labels.len());
    let mut ws = Vec::with_capacity(labels.len());
    let mut wsum = 0f64;
    for &lbl in labels {
        if Some(lbl) == ignore_index {
            cls.push(-1);
            ws.push(0.0);
            continue;
        }
        let k = usize::try_from(lbl)
            .ok()
            .filter(|&v| v < c)
            .ok_or_else(|| {
                Error::runtime(format!("target value {lbl} is out of range [0, {c})"))
            })?;
        let wv = weight.map_or(1.0, |w| w[k]);
        cls.push(k as i32);
        ws.push(wv);
        wsum += wv as f64;
    }
    Ok((cls, ws, wsum))
}

#[derive(Debug)]
struct LossKernel {
    softmax: bool,
    ignore_index: Option<i64>,
    reduction: LossReduction,
}

impl Kernel for LossKernel {
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
            .ok_or_else(|| Error::runtime("missing scores"))?
            .dev()?;
        let target = ins
            .get(1)
            .and_then(|t| t.host())
            .ok_or_else(|| Error::runtime("missing target"))?;
        let shape = &x.shape;
        if shape.len() < 2 {
            return Err(Error::shape(format!(
                "loss needs an input of rank >= 2, got {shape:?}"
            )));
        }
        let (n, c) = (shape[0], shape[1]);
        let inner: usize = shape[2..].iter().product();
        let mut tshape = vec![n];
        tshape.extend_from_slice(&shape[2..]);
        if target.shape() != tshape.as_slice() {
            return Err(Error::shape(format!(
                "target shape {:?} does not match input shape {shape:?}",
                target.shape()
            )));
        }
        if !matches!(target.dtype(), DType::I32 | DType::I64) {
            return Err(Error::dtype(format!(
                "target must be int32 or int64, got {}",
                target.dtype()
            )));
        }
        let w = match ins.get(2).and_then(|t| t.host()) {
            Some(w) => {
                let v = crate::cpu::norm::f32_data(w)?.into_owned();
                if v.len() != c {
                    return Err(Error::shape(format!(
                        "weight has {} elements, expected {c}",
                        v.len()
                    )));
                }
                Some(v)
            }
            None => None,
        };
        let (cls, ws, wsum) =
            label_table(&target.to_i64_vec()?, c, w.as_deref(), self.ignore_index)?;
        let count = n * inner;
        let mut result = Vec::new();
        // Log-probabilities: the input itself (NLL) or its log-softmax (SCE, output 1).
        let lp = if self.softmax {
            let (dt, s) = outs
                .get(1)
                .ok_or_else(|| Error::runtime("missing log_prob output"))?;
            let lp = r.alloc(*dt, s.clone())?;
            if count > 0 && c > 0 {
                let grid = r.grid(count);
                r.dispatch(
                    &format!("{LINEAR}{LOG_SOFTMAX}"),
                    &[x.buffer(), lp.buffer()],
                    &[count as u32, c as u32, inner.max(1) as u32],
                    grid,
                )?;
            }
            Some(lp)
        } else {
            None
        };
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("missing loss output"))?;
        let per = match self.reduction {
            LossReduction::None => r.alloc(*dt, oshape.clone())?,
            _ => r.alloc(DType::F32, vec![count])?,
        };
        if count > 0 {
            let cb = r.upload(&Tensor::from_vec(vec![count], cls)?)?;
            let wb = r.upload(&Tensor::from_vec(vec![count], ws)?)?;
            let src = lp.as_ref().unwrap_or(x);
            let grid = r.grid(count);
            r.dispatch(
                &format!("{LINEAR}{NLL}"),
                &[src.buffer(), cb.buffer(), wb.buffer(), per.buffer()],
                &[count as u32, c as u32, inner.max(1) as u32],
                grid,
            )?;
        }
        let loss = match self.reduction {
            LossReduction::None => per,
            red => {
                let y = r.alloc(*dt, oshape.clone())?;
                let mean = red == LossReduction::Mean;
                r.dispatch(
                    SUM,
                    &[per.buffer(), y.buffer()],
                    &[count as u32, mean as u32, (wsum as f32).to_bits()],
                    [1, 1, 1],
                )?;
                y
            }
        };
        result.push(Out::Dev(loss));
        if let Some(lp) = lp {
            result.push(Out::Dev(lp));
        }
        Ok(result)
    }
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let Some(l) = f.node.op.as_any().downcast_ref::<Loss>() else {
        return Lowered::NotMine;
    };
    if f.in_dtype(0) != Some(DType::F32) {
        return Lowered::Cpu(format!(
            "{} on {:?} stays on the CPU",
            f.node.op_type,
            f.in_dtype(0)
        ));
    }
    Lowered::Kernel(Box::new(LossKernel {
        softmax: l.softmax,
        ignore_index: l.ignore_index,
        reduction: l.reduction,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_ignore_weights_and_range() {
        let w = [0.5f32, 2.0, 1.0];
        let (cls, ws, sum) = label_table(&[2, -1, 0, 1], 3, Some(&w), Some(-1)).unwrap();
        assert_eq!(cls, vec![2, -1, 0, 1]);
        assert_eq!(ws, vec![1.0, 0.0, 0.5, 2.0]);
        assert_eq!(sum, 3.5);
        let (_, ws, sum) = label_table(&[1, 1], 3, None, None).unwrap();
        assert_eq!((ws, sum), (vec![1.0, 1.0], 2.0));
        // Out of range (and a negative label that is not the ignore index) fails as on
        // the CPU.
        assert!(label_table(&[3], 3, None, None).is_err());
        assert!(label_table(&[-1], 3, None, Some(0)).is_err());
    }
}
