//! Op family: norm. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::norm`.
//!
//! BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization,
//! RMSNormalization, LpNormalization, MeanVarianceNormalization, LRN,
//! SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss.

use super::{def, OpDef};
use crate::cpu::norm::{self as k, LossReduction};
use crate::error::{Error, Result};
use crate::graph::attrs::norm_axis;
use crate::graph::{Args, Dim, Fact, InferCx, NodeCx, Op, RunCx, Value};
use crate::op_common;
use crate::tensor::DType;

pub const OPS: &[OpDef] = &[
    def("", "BatchNormalization", parse_batch_norm),
    def("", "InstanceNormalization", parse_instance_norm),
    def("", "LayerNormalization", parse_layer_norm),
    def("", "GroupNormalization", parse_group_norm),
    def("", "RMSNormalization", parse_rms_norm),
    def("", "LpNormalization", parse_lp_norm),
    def("", "MeanVarianceNormalization", parse_mvn),
    def("", "LRN", parse_lrn),
    def("", "SoftmaxCrossEntropyLoss", |cx| parse_loss(cx, true)),
    def("", "NegativeLogLikelihoodLoss", |cx| parse_loss(cx, false)),
];

fn float_input(f: &Fact, what: &str) -> Result<Option<DType>> {
    match f.dtype {
        Some(dt) if !dt.is_float() => Err(Error::dtype(format!("{what} does not support {dt}"))),
        dt => Ok(dt),
    }
}

/// Same dtype and shape as input 0, which must be float.
fn like_input(cx: &InferCx, what: &str) -> Result<Fact> {
    let x = cx.input(0)?;
    let dt = float_input(x, what)?;
    Ok(Fact::new(dt, x.shape.clone()))
}

/// Checks a rank-known input has rank >= `min`.
fn min_rank(f: &Fact, min: usize, what: &str) -> Result<()> {
    match f.rank() {
        Some(r) if r < min => Err(Error::shape(format!(
            "{what} needs an input of rank >= {min}, got rank {r}"
        ))),
        _ => Ok(()),
    }
}

/// Reads `stash_type` and maps it to a float dtype.
fn stash_dtype(cx: &NodeCx) -> Result<DType> {
    let code = cx.int_or("stash_type", 1)?;
    let dt = i32::try_from(code)
        .ok()
        .and_then(|c| DType::from_onnx(c).ok())
        .filter(|d| d.is_float())
        .ok_or_else(|| Error::attr(format!("stash_type {code} is not a float type")))?;
    Ok(dt)
}

/// `BatchNormalization`: per-channel normalization with running statistics (inference),
/// or with batch statistics when `training_mode` is set (opset 14+).
/// Spec: https://onnx.ai/onnx/operators/onnx__BatchNormalization.html
#[derive(Debug, Clone)]
pub struct BatchNormalization {
    pub epsilon: f32,
    pub momentum: f32,
    /// Training mode (opset 14+ `training_mode = 1`; before 14, extra outputs requested):
    /// normalizes with batch statistics and outputs running mean/var (and, before opset
    /// 14, the batch mean/var as saved_mean/saved_var).
    pub training_mode: bool,
    /// Opset < 9 `spatial` (0: scale/bias/mean/var hold one value per element of a sample).
    pub spatial: bool,
}

fn parse_batch_norm(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let epsilon = cx.float_or("epsilon", 1e-5)?;
    let momentum = cx.float_or("momentum", 0.9)?;
    let mut spatial = true;
    if cx.opset < 9 {
        spatial = cx.int_or("spatial", 1)? != 0;
    }
    let training = if cx.opset < 7 {
        if cx.opset < 6 {
            // consumed_inputs is a legacy optimization hint with no effect on results.
            let _ = cx.ints("consumed_inputs")?;
        }
        cx.int_or("is_test", 0)? == 0 && cx.n_outputs() > 1
    } else if cx.opset < 14 {
        (1..cx.n_outputs()).any(|i| cx.has_output(i))
    } else {
        cx.int_or("training_mode", 0)? != 0
    };
    Ok(Box::new(BatchNormalization {
        epsilon,
        momentum,
        training_mode: training,
        spatial,
    }))
}

impl Op for BatchNormalization {
    op_common!("BatchNormalization");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let y = like_input(cx, "BatchNormalization")?;
        min_rank(cx.input(0)?, 2, "BatchNormalization")?;
        let mut out = vec![y];
        if self.training_mode {
            for i in [3, 4, 3, 4] {
                let f = cx.input(i)?;
                out.push(Fact::new(f.dtype, f.shape.clone()));
            }
        }
        Ok(out)
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let (x, s, b, m, v) = (args.t(0)?, args.t(1)?, args.t(2)?, args.t(3)?, args.t(4)?);
        if self.training_mode {
            let o = k::batch_norm_training(x, s, b, m, v, self.epsilon, self.momentum)?;
            return Ok(vec![
                o.y.into(),
                o.running_mean.into(),
                o.running_var.into(),
                o.batch_mean.into(),
                o.batch_var.into(),
            ]);
        }
        if self.spatial && s.len() != x.shape().get(1).copied().unwrap_or(0) {
            return Err(Error::shape(format!(
                "BatchNormalization: scale has {} values for {:?}",
                s.len(),
                x.shape()
            )));
        }
        Ok(vec![
            k::batch_norm_inference(x, s, b, m, v, self.epsilon)?.into()
        ])
    }
}

/// `InstanceNormalization`: per (sample, channel) normalization with per-channel affine.
/// Spec: https://onnx.ai/onnx/operators/onnx__InstanceNormalization.html
#[derive(Debug, Clone)]
pub struct InstanceNormalization {
    pub epsilon: f32,
}

fn parse_instance_norm(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    if cx.opset < 6 {
        let _ = cx.ints("consumed_inputs")?;
    }
    Ok(Box::new(InstanceNormalization {
        epsilon: cx.float_or("epsilon", 1e-5)?,
    }))
}

impl Op for InstanceNormalization {
    op_common!("InstanceNormalization");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        min_rank(cx.input(0)?, 2, "InstanceNormalization")?;
        Ok(vec![like_input(cx, "InstanceNormalization")?])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let y = k::instance_norm(args.t(0)?, args.t(1)?, args.t(2)?, self.epsilon)?;
        Ok(vec![y.into()])
    }
}

/// `LayerNormalization`: normalizes over the dims from `axis` on; optional Mean and
/// InvStdDev outputs.
/// Spec: https://onnx.ai/onnx/operators/onnx__LayerNormalization.html
#[derive(Debug, Clone)]
pub struct LayerNormalization {
    pub axis: i64,
    pub epsilon: f32,
    /// Precision of the statistics, also the dtype of the Mean/InvStdDev outputs.
    pub stash_type: DType,
}

fn parse_layer_norm(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(LayerNormalization {
        axis: cx.int_or("axis", -1)?,
        epsilon: cx.float_or("epsilon", 1e-5)?,
        stash_type: stash_dtype(cx)?,
    }))
}

impl Op for LayerNormalization {
    op_common!("LayerNormalization");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let y = like_input(cx, "LayerNormalization")?;
        let stats_shape = match &y.shape {
            Some(d) => {
                let a = norm_axis(self.axis, d.len())?;
                let mut s = d[..a].to_vec();
                s.resize(d.len(), Dim::Known(1));
                Some(s)
            }
            None => None,
        };
        let st = Fact::new(Some(self.stash_type), stats_shape);
        Ok(vec![y, st.clone(), st])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let axis = norm_axis(self.axis, x.rank())?;
        let o = k::layer_norm(
            x,
            args.t(1)?,
            args.opt(2)?,
            axis,
            self.epsilon,
            self.stash_type,
        )?;
        Ok(vec![o.y.into(), o.mean.into(), o.inv_std.into()])
    }
}

/// `GroupNormalization`: normalization per (sample, group of channels). Opset 18 takes
/// one scale/bias value per group, opset 21 one per channel.
/// Spec: https://onnx.ai/onnx/operators/onnx__GroupNormalization.html
#[derive(Debug, Clone)]
pub struct GroupNormalization {
    pub epsilon: f32,
    pub num_groups: usize,
    /// Scale and bias have one value per channel (opset 21+).
    pub per_channel: bool,
}

fn parse_group_norm(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let per_channel = cx.opset >= 21;
    if per_channel {
        stash_dtype(cx)?;
    }
    let g = cx.req_int("num_groups")?;
    let num_groups = usize::try_from(g)
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| Error::attr(format!("num_groups must be positive, got {g}")))?;
    Ok(Box::new(GroupNormalization {
        epsilon: cx.float_or("epsilon", 1e-5)?,
        num_groups,
        per_channel,
    }))
}

impl Op for GroupNormalization {
    op_common!("GroupNormalization");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        min_rank(x, 2, "GroupNormalization")?;
        if let Some(Dim::Known(c)) = x.shape.as_ref().and_then(|s| s.get(1)) {
            if c % self.num_groups != 0 {
                return Err(Error::shape(format!(
                    "GroupNormalization: {c} channels do not split into {} groups",
                    self.num_groups
                )));
            }
        }
        Ok(vec![like_input(cx, "GroupNormalization")?])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let y = k::group_norm(
            args.t(0)?,
            args.t(1)?,
            args.t(2)?,
            self.num_groups,
            self.epsilon,
            self.per_channel,
        )?;
        Ok(vec![y.into()])
    }
}

/// `RMSNormalization`: `x / sqrt(mean(x^2) + epsilon) * scale` over the dims from `axis`.
/// Spec: https://onnx.ai/onnx/operators/onnx__RMSNormalization.html
#[derive(Debug, Clone)]
pub struct RMSNormalization {
    pub axis: i64,
    pub epsilon: f32,
    pub stash_type: DType,
}

fn parse_rms_norm(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(RMSNormalization {
        axis: cx.int_or("axis", -1)?,
        epsilon: cx.float_or("epsilon", 1e-5)?,
        stash_type: stash_dtype(cx)?,
    }))
}

impl Op for RMSNormalization {
    op_common!("RMSNormalization");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let y = like_input(cx, "RMSNormalization")?;
        if let Some(r) = y.rank() {
            norm_axis(self.axis, r)?;
        }
        Ok(vec![y])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let axis = norm_axis(self.axis, x.rank())?;
        Ok(vec![k::rms_norm(x, args.t(1)?, axis, self.epsilon)?.into()])
    }
}

/// `LpNormalization`: divides by the L1 or L2 norm along an axis.
/// Spec: https://onnx.ai/onnx/operators/onnx__LpNormalization.html
#[derive(Debug, Clone)]
pub struct LpNormalization {
    pub axis: i64,
    pub p: i64,
}

fn parse_lp_norm(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let p = cx.int_or("p", 2)?;
    if p != 1 && p != 2 {
        return Err(Error::attr(format!(
            "LpNormalization supports p = 1 or 2, got {p}"
        )));
    }
    Ok(Box::new(LpNormalization {
        axis: cx.int_or("axis", -1)?,
        p,
    }))
}

impl Op for LpNormalization {
    op_common!("LpNormalization");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let y = like_input(cx, "LpNormalization")?;
        if let Some(r) = y.rank() {
            norm_axis(self.axis, r)?;
        }
        Ok(vec![y])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let axis = norm_axis(self.axis, x.rank())?;
        Ok(vec![k::lp_norm(x, axis, self.p)?.into()])
    }
}

/// `MeanVarianceNormalization`: `(x - mean) / (std + 1e-9)` over `axes`.
/// Spec: https://onnx.ai/onnx/operators/onnx__MeanVarianceNormalization.html
#[derive(Debug, Clone)]
pub struct MeanVarianceNormalization {
    pub axes: Vec<i64>,
    /// Opset 1 `normalize_variance` (later opsets always normalize).
    pub normalize_variance: bool,
}

fn parse_mvn(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    if cx.opset < 9 {
        let across = cx.int_or("across_channels", 0)? != 0;
        let nv = cx.int_or("normalize_variance", 1)? != 0;
        return Ok(Box::new(MeanVarianceNormalization {
            axes: if across { vec![1, 2, 3] } else { vec![2, 3] },
            normalize_variance: nv,
        }));
    }
    Ok(Box::new(MeanVarianceNormalization {
        axes: cx.ints("axes")?.unwrap_or_else(|| vec![0, 2, 3]),
        normalize_variance: true,
    }))
}

impl Op for MeanVarianceNormalization {
    op_common!("MeanVarianceNormalization");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let y = like_input(cx, "MeanVarianceNormalization")?;
        if let Some(r) = y.rank() {
            crate::cpu::reduce::normalize_axes(&self.axes, r)?;
        }
        Ok(vec![y])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let axes = crate::cpu::reduce::normalize_axes(&self.axes, x.rank())?;
        Ok(vec![k::mean_variance_norm(
            x,
            &axes,
            self.normalize_variance,
        )?
        .into()])
    }
}

/// `LRN`: local response normalization across nearby channels.
/// Spec: https://onnx.ai/onnx/operators/onnx__LRN.html
#[derive(Debug, Clone)]
pub struct Lrn {
    pub alpha: f32,
    pub beta: f32,
    pub bias: f32,
    pub size: usize,
}

fn parse_lrn(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let size = cx.req_int("size")?;
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| Error::attr(format!("LRN size must be positive, got {size}")))?;
    Ok(Box::new(Lrn {
        alpha: cx.float_or("alpha", 1e-4)?,
        beta: cx.float_or("beta", 0.75)?,
        bias: cx.float_or("bias", 1.0)?,
        size,
    }))
}

impl Op for Lrn {
    op_common!("LRN");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        min_rank(cx.input(0)?, 2, "LRN")?;
        Ok(vec![like_input(cx, "LRN")?])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let y = k::lrn(args.t(0)?, self.size, self.alpha, self.beta, self.bias)?;
        Ok(vec![y.into()])
    }
}

/// `SoftmaxCrossEntropyLoss` (`softmax = true`) and `NegativeLogLikelihoodLoss`.
/// Spec: https://onnx.ai/onnx/operators/onnx__SoftmaxCrossEntropyLoss.html and
/// https://onnx.ai/onnx/operators/onnx__NegativeLogLikelihoodLoss.html
#[derive(Debug, Clone)]
pub struct Loss {
    pub softmax: bool,
    pub ignore_index: Option<i64>,
    pub reduction: LossReduction,
}

fn parse_loss(cx: &mut NodeCx, softmax: bool) -> Result<Box<dyn Op>> {
    Ok(Box::new(Loss {
        softmax,
        ignore_index: cx.int("ignore_index")?,
        reduction: LossReduction::parse(&cx.string_or("reduction", "mean")?)?,
    }))
}

impl Op for Loss {
    fn name(&self) -> &'static str {
        if self.softmax {
            "SoftmaxCrossEntropyLoss"
        } else {
            "NegativeLogLikelihoodLoss"
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let dt = float_input(x, self.name())?;
        min_rank(x, 2, self.name())?;
        if let Some(t) = cx.input(1)?.dtype {
            if !matches!(t, DType::I32 | DType::I64) {
                return Err(Error::dtype(format!(
                    "{}: labels must be int32 or int64, got {t}",
                    self.name()
                )));
            }
        }
        let loss_shape = match self.reduction {
            LossReduction::None => x.shape.as_ref().map(|s| {
                let mut v = vec![s[0].clone()];
                v.extend(s[2..].iter().cloned());
                v
            }),
            _ => Some(vec![]),
        };
        let mut out = vec![Fact::new(dt, loss_shape)];
        if self.softmax {
            out.push(Fact::new(dt, x.shape.clone()));
        }
        Ok(out)
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let t = args.t(1)?;
        let w = args.opt(2)?;
        if self.softmax {
            let (l, lp) = k::softmax_cross_entropy(x, t, w, self.ignore_index, self.reduction)?;
            return Ok(vec![l.into(), lp.into()]);
        }
        let xs = k::f32_data(x)?;
        let l = k::nll_loss(
            &xs,
            x.shape(),
            t,
            w,
            self.ignore_index,
            self.reduction,
            x.dtype(),
        )?;
        Ok(vec![l.into()])
    }
}
