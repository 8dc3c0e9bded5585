//! Op family: elementwise. Unary math and activations, numpy-broadcasting binary ops,
//! variadic Sum/Mean/Max/Min, Where, Clip, Cast/CastLike and Dropout (inference). Op structs, attribute parsing and shape rules live here; kernels
//! in `crate::cpu::elementwise`.
//!
//! Many ops share one struct (`Unary`, `Binary`, `Variadic`) with a public kind enum, so
//! another backend downcasts once and matches on the kind.

use super::{def, OpDef};
use crate::cpu::elementwise as k;
use crate::error::{Error, Result};
use crate::graph::shape::broadcast_facts;
use crate::graph::{same_dtype, Activation, Args, Dim, Fact, InferCx, NodeCx, Op, RunCx, Value};
use crate::op_common;
use crate::tensor::small::{CastOptions, RoundMode};
use crate::tensor::{DType, Tensor};

pub const OPS: &[OpDef] = &[
    // Unary math.
    def("", "Abs", |cx| unary(cx, UnaryOp::Abs)),
    def("", "Neg", |cx| unary(cx, UnaryOp::Neg)),
    def("", "Reciprocal", |cx| unary(cx, UnaryOp::Reciprocal)),
    def("", "Sqrt", |cx| unary(cx, UnaryOp::Sqrt)),
    def("", "Exp", |cx| unary(cx, UnaryOp::Exp)),
    def("", "Log", |cx| unary(cx, UnaryOp::Log)),
    def("", "Floor", |cx| unary(cx, UnaryOp::Floor)),
    def("", "Ceil", |cx| unary(cx, UnaryOp::Ceil)),
    def("", "Round", |cx| unary(cx, UnaryOp::Round)),
    def("", "Sign", |cx| unary(cx, UnaryOp::Sign)),
    def("", "Erf", |cx| unary(cx, UnaryOp::Erf)),
    def("", "Sin", |cx| unary(cx, UnaryOp::Sin)),
    def("", "Cos", |cx| unary(cx, UnaryOp::Cos)),
    def("", "Tan", |cx| unary(cx, UnaryOp::Tan)),
    def("", "Asin", |cx| unary(cx, UnaryOp::Asin)),
    def("", "Acos", |cx| unary(cx, UnaryOp::Acos)),
    def("", "Atan", |cx| unary(cx, UnaryOp::Atan)),
    def("", "Sinh", |cx| unary(cx, UnaryOp::Sinh)),
    def("", "Cosh", |cx| unary(cx, UnaryOp::Cosh)),
    def("", "Asinh", |cx| unary(cx, UnaryOp::Asinh)),
    def("", "Acosh", |cx| unary(cx, UnaryOp::Acosh)),
    def("", "Atanh", |cx| unary(cx, UnaryOp::Atanh)),
    def("", "IsNaN", |cx| unary(cx, UnaryOp::IsNaN)),
    def("", "IsInf", parse_isinf),
    def("", "Not", |cx| unary(cx, UnaryOp::Not)),
    def("", "BitwiseNot", |cx| unary(cx, UnaryOp::BitwiseNot)),
    // Activations.
    def("", "Relu", |cx| unary(cx, UnaryOp::Relu)),
    def("", "Tanh", |cx| unary(cx, UnaryOp::Tanh)),
    def("", "Sigmoid", |cx| unary(cx, UnaryOp::Sigmoid)),
    def("", "LeakyRelu", parse_leaky_relu),
    def("", "Elu", parse_elu),
    def("", "Selu", parse_selu),
    def("", "Celu", parse_celu),
    def("", "HardSigmoid", parse_hard_sigmoid),
    def("", "HardSwish", |cx| unary(cx, UnaryOp::HardSwish)),
    def("", "Softplus", |cx| unary(cx, UnaryOp::Softplus)),
    def("", "Softsign", |cx| unary(cx, UnaryOp::Softsign)),
    def("", "Gelu", parse_gelu),
    def("", "Mish", |cx| unary(cx, UnaryOp::Mish)),
    def("", "ThresholdedRelu", parse_thresholded_relu),
    def("", "Shrink", parse_shrink),
    def("", "Swish", parse_swish),
    // Binary, numpy broadcasting.
    def("", "Add", |cx| binary(cx, BinOp::Add)),
    def("", "Sub", |cx| binary(cx, BinOp::Sub)),
    def("", "Mul", |cx| binary(cx, BinOp::Mul)),
    def("", "Div", |cx| binary(cx, BinOp::Div)),
    def("", "Pow", |cx| binary(cx, BinOp::Pow)),
    def("", "Mod", parse_mod),
    def("", "BitShift", parse_bitshift),
    def("", "And", |cx| binary(cx, BinOp::And)),
    def("", "Or", |cx| binary(cx, BinOp::Or)),
    def("", "Xor", |cx| binary(cx, BinOp::Xor)),
    def("", "Equal", |cx| binary(cx, BinOp::Equal)),
    def("", "Less", |cx| binary(cx, BinOp::Less)),
    def("", "LessOrEqual", |cx| binary(cx, BinOp::LessOrEqual)),
    def("", "Greater", |cx| binary(cx, BinOp::Greater)),
    def("", "GreaterOrEqual", |cx| binary(cx, BinOp::GreaterOrEqual)),
    def("", "BitwiseAnd", |cx| binary(cx, BinOp::BitwiseAnd)),
    def("", "BitwiseOr", |cx| binary(cx, BinOp::BitwiseOr)),
    def("", "BitwiseXor", |cx| binary(cx, BinOp::BitwiseXor)),
    def("", "PRelu", |cx| binary(cx, BinOp::PRelu)),
    // Variadic.
    def("", "Sum", |cx| variadic(cx, VarOp::Sum)),
    def("", "Mean", |cx| variadic(cx, VarOp::Mean)),
    def("", "Max", |cx| variadic(cx, VarOp::Max)),
    def("", "Min", |cx| variadic(cx, VarOp::Min)),
    // Others.
    def("", "Where", |_| Ok(Box::new(Where))),
    def("", "Clip", parse_clip),
    def("", "Cast", parse_cast),
    def("", "CastLike", parse_cast_like),
    def("", "BitCast", parse_bitcast),
    def("", "Dropout", parse_dropout),
];

/// Marks the legacy `consumed_inputs` attribute (opset < 6, an in-place hint) as read.
fn legacy_consumed(cx: &NodeCx) {
    if cx.opset < 7 {
        cx.has("consumed_inputs");
    }
}

// ---------------------------------------------------------------------------------------
// Unary
// ---------------------------------------------------------------------------------------

/// The function a [`Unary`] op applies to each element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Abs,
    Neg,
    Reciprocal,
    Sqrt,
    Exp,
    Log,
    Floor,
    Ceil,
    /// Round half to even.
    Round,
    Sign,
    Erf,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    IsNaN,
    IsInf {
        negative: bool,
        positive: bool,
    },
    Not,
    BitwiseNot,
    Relu,
    Tanh,
    Sigmoid,
    LeakyRelu {
        alpha: f32,
    },
    Elu {
        alpha: f32,
    },
    Selu {
        alpha: f32,
        gamma: f32,
    },
    Celu {
        alpha: f32,
    },
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    Softplus,
    Softsign,
    Gelu {
        tanh: bool,
    },
    Mish,
    ThresholdedRelu {
        alpha: f32,
    },
    Shrink {
        bias: f32,
        lambd: f32,
    },
    /// x * sigmoid(alpha * x)
    Swish {
        alpha: f32,
    },
}

impl UnaryOp {
    /// The ONNX op type.
    pub fn onnx_name(self) -> &'static str {
        use UnaryOp::*;
        match self {
            Abs => "Abs",
            Neg => "Neg",
            Reciprocal => "Reciprocal",
            Sqrt => "Sqrt",
            Exp => "Exp",
            Log => "Log",
            Floor => "Floor",
            Ceil => "Ceil",
            Round => "Round",
            Sign => "Sign",
            Erf => "Erf",
            Sin => "Sin",
            Cos => "Cos",
            Tan => "Tan",
            Asin => "Asin",
            Acos => "Acos",
            Atan => "Atan",
            Sinh => "Sinh",
            Cosh => "Cosh",
            Asinh => "Asinh",
            Acosh => "Acosh",
            Atanh => "Atanh",
            IsNaN => "IsNaN",
            IsInf { .. } => "IsInf",
            Not => "Not",
            BitwiseNot => "BitwiseNot",
            Relu => "Relu",
            Tanh => "Tanh",
            Sigmoid => "Sigmoid",
            LeakyRelu { .. } => "LeakyRelu",
            Elu { .. } => "Elu",
            Selu { .. } => "Selu",
            Celu { .. } => "Celu",
            HardSigmoid { .. } => "HardSigmoid",
            HardSwish => "HardSwish",
            Softplus => "Softplus",
            Softsign => "Softsign",
            Gelu { .. } => "Gelu",
            Mish => "Mish",
            ThresholdedRelu { .. } => "ThresholdedRelu",
            Shrink { .. } => "Shrink",
            Swish { .. } => "Swish",
        }
    }
    /// Whether the op accepts inputs of `dt`.
    pub fn accepts(self, dt: DType) -> bool {
        match self {
            UnaryOp::Abs
            | UnaryOp::Neg
            | UnaryOp::Sign
            | UnaryOp::Relu
            | UnaryOp::Shrink { .. } => dt.is_numeric(),
            UnaryOp::Not => dt == DType::Bool,
            UnaryOp::BitwiseNot => dt.is_int(),
            _ => dt.is_float(),
        }
    }
    /// The output dtype for an input of `dt`.
    pub fn out_dtype(self, dt: DType) -> DType {
        match self {
            UnaryOp::IsNaN | UnaryOp::IsInf { .. } => DType::Bool,
            _ => dt,
        }
    }
}

/// Elementwise unary math and activations: Abs, Neg, Reciprocal, Sqrt, Exp, Log, Floor,
/// Ceil, Round, Sign, Erf, trigonometric and hyperbolic functions, IsNaN, IsInf, Not,
/// BitwiseNot, Relu, Tanh, Sigmoid, LeakyRelu, Elu, Selu, Celu, HardSigmoid, HardSwish,
/// Softplus, Softsign, Gelu, Mish, ThresholdedRelu, Shrink, Swish.
/// See e.g. <https://onnx.ai/onnx/operators/onnx__Relu.html>.
#[derive(Debug)]
pub struct Unary {
    pub op: UnaryOp,
}

impl Unary {
    /// The fused-activation equivalent of this op for f32, if there is one.
    pub fn activation(&self) -> Option<Activation> {
        Some(match self.op {
            UnaryOp::Relu => Activation::Relu,
            UnaryOp::Sigmoid => Activation::Sigmoid,
            UnaryOp::Tanh => Activation::Tanh,
            UnaryOp::LeakyRelu { alpha } => Activation::LeakyRelu { alpha },
            UnaryOp::HardSigmoid { alpha, beta } => Activation::HardSigmoid { alpha, beta },
            UnaryOp::Swish { alpha: 1.0 } => Activation::Silu,
            _ => return None,
        })
    }
}

fn unary(cx: &mut NodeCx, op: UnaryOp) -> Result<Box<dyn Op>> {
    legacy_consumed(cx);
    Ok(Box::new(Unary { op }))
}

fn parse_isinf(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let negative = cx.int_or("detect_negative", 1)? != 0;
    let positive = cx.int_or("detect_positive", 1)? != 0;
    unary(cx, UnaryOp::IsInf { negative, positive })
}
fn parse_leaky_relu(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let alpha = cx.float_or("alpha", 0.01)?;
    unary(cx, UnaryOp::LeakyRelu { alpha })
}
fn parse_elu(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let alpha = cx.float_or("alpha", 1.0)?;
    unary(cx, UnaryOp::Elu { alpha })
}
fn parse_selu(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let alpha = cx.float_or("alpha", 1.673_263_2)?;
    let gamma = cx.float_or("gamma", 1.050_701)?;
    unary(cx, UnaryOp::Selu { alpha, gamma })
}
fn parse_celu(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let alpha = cx.float_or("alpha", 1.0)?;
    if alpha == 0.0 {
        return Err(Error::attr("Celu alpha must not be 0"));
    }
    unary(cx, UnaryOp::Celu { alpha })
}
fn parse_hard_sigmoid(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let alpha = cx.float_or("alpha", 0.2)?;
    let beta = cx.float_or("beta", 0.5)?;
    unary(cx, UnaryOp::HardSigmoid { alpha, beta })
}
fn parse_gelu(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let tanh = match cx.string_or("approximate", "none")?.as_str() {
        "none" => false,
        "tanh" => true,
        other => return Err(Error::attr(format!("Gelu approximate='{other}'"))),
    };
    unary(cx, UnaryOp::Gelu { tanh })
}
fn parse_thresholded_relu(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let alpha = cx.float_or("alpha", 1.0)?;
    unary(cx, UnaryOp::ThresholdedRelu { alpha })
}
fn parse_shrink(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let bias = cx.float_or("bias", 0.0)?;
    let lambd = cx.float_or("lambd", 0.5)?;
    unary(cx, UnaryOp::Shrink { bias, lambd })
}
fn parse_swish(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let alpha = cx.float_or("alpha", 1.0)?;
    unary(cx, UnaryOp::Swish { alpha })
}

impl Op for Unary {
    fn is_elementwise(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        self.op.onnx_name()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let dtype = match x.dtype {
            Some(dt) if !self.op.accepts(dt) => {
                return Err(Error::unsupported_dtype(format!(
                    "{} does not support {dt}",
                    self.op.onnx_name()
                )))
            }
            Some(dt) => Some(self.op.out_dtype(dt)),
            None => None,
        };
        Ok(vec![Fact::new(dtype, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::unary(self.op, args.t(0)?)?.into()])
    }
}

// ---------------------------------------------------------------------------------------
// Binary
// ---------------------------------------------------------------------------------------

/// The function a [`Binary`] op applies to each pair of broadcast elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// Base and exponent may have different dtypes; the output has the base's.
    Pow,
    /// `fmod`: remainder with the dividend's sign (C fmod) instead of the divisor's.
    Mod {
        fmod: bool,
    },
    BitShift {
        left: bool,
    },
    And,
    Or,
    Xor,
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    BitwiseAnd,
    BitwiseOr,
    BitwiseXor,
    /// x < 0 ? slope * x : x, slope broadcast to x.
    PRelu,
}

impl BinOp {
    /// The ONNX op type.
    pub fn onnx_name(self) -> &'static str {
        match self {
            BinOp::Add => "Add",
            BinOp::Sub => "Sub",
            BinOp::Mul => "Mul",
            BinOp::Div => "Div",
            BinOp::Pow => "Pow",
            BinOp::Mod { .. } => "Mod",
            BinOp::BitShift { .. } => "BitShift",
            BinOp::And => "And",
            BinOp::Or => "Or",
            BinOp::Xor => "Xor",
            BinOp::Equal => "Equal",
            BinOp::Less => "Less",
            BinOp::LessOrEqual => "LessOrEqual",
            BinOp::Greater => "Greater",
            BinOp::GreaterOrEqual => "GreaterOrEqual",
            BinOp::BitwiseAnd => "BitwiseAnd",
            BinOp::BitwiseOr => "BitwiseOr",
            BinOp::BitwiseXor => "BitwiseXor",
            BinOp::PRelu => "PRelu",
        }
    }
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Equal
                | BinOp::Less
                | BinOp::LessOrEqual
                | BinOp::Greater
                | BinOp::GreaterOrEqual
        )
    }
    /// Whether the op accepts operands of `dt` (the first input's type).
    pub fn accepts(self, dt: DType) -> bool {
        match self {
            BinOp::And | BinOp::Or | BinOp::Xor => dt == DType::Bool,
            BinOp::Equal => true,
            BinOp::BitShift { .. } => dt.is_int() && !dt.is_signed_int(),
            BinOp::BitwiseAnd | BinOp::BitwiseOr | BinOp::BitwiseXor => dt.is_int(),
            BinOp::Less | BinOp::LessOrEqual | BinOp::Greater | BinOp::GreaterOrEqual => {
                dt.is_numeric()
            }
            _ => dt.is_numeric(),
        }
    }
}

/// Elementwise binary ops with numpy broadcasting: Add, Sub, Mul, Div, Pow, Mod, BitShift,
/// And, Or, Xor, Equal, Less, LessOrEqual, Greater, GreaterOrEqual, BitwiseAnd/Or/Xor,
/// PRelu. See e.g. <https://onnx.ai/onnx/operators/onnx__Add.html>.
#[derive(Debug)]
pub struct Binary {
    pub op: BinOp,
    /// Legacy (opset < 7) `broadcast=1` with `axis`: the second input is aligned to the
    /// first starting at this axis.
    pub legacy_axis: Option<i64>,
    /// PRelu before opset 7: a 1-D slope of length C applies per channel (axis 1).
    pub prelu_channel: bool,
}

fn binary(cx: &mut NodeCx, op: BinOp) -> Result<Box<dyn Op>> {
    legacy_consumed(cx);
    let mut legacy_axis = None;
    if cx.opset < 7 && !matches!(op, BinOp::PRelu) {
        let bc = cx.int_or("broadcast", 0)?;
        let axis = cx.int("axis")?;
        if bc != 0 {
            legacy_axis = axis;
        }
    }
    let prelu_channel = op == BinOp::PRelu && cx.opset < 7;
    Ok(Box::new(Binary {
        op,
        legacy_axis,
        prelu_channel,
    }))
}
fn parse_mod(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let fmod = match cx.int_or("fmod", 0)? {
        0 => false,
        1 => true,
        v => return Err(Error::attr(format!("Mod fmod must be 0 or 1, got {v}"))),
    };
    binary(cx, BinOp::Mod { fmod })
}
fn parse_bitshift(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let left = match cx.string("direction")?.as_deref() {
        Some("LEFT") => true,
        Some("RIGHT") => false,
        other => {
            return Err(Error::attr(format!(
                "BitShift direction must be LEFT or RIGHT, got {other:?}"
            )))
        }
    };
    binary(cx, BinOp::BitShift { left })
}

/// Shape of the second input as seen by a legacy axis-aligned broadcast.
fn legacy_shape<D: Clone>(a_rank: usize, b: &[D], axis: i64, one: D) -> Result<Vec<D>> {
    let ax = crate::graph::attrs::norm_axis(axis, a_rank.max(1))?;
    if ax + b.len() > a_rank {
        return Err(Error::shape(format!(
            "legacy broadcast: rank {} at axis {axis} does not fit rank {a_rank}",
            b.len()
        )));
    }
    let mut s = b.to_vec();
    s.resize(a_rank - ax, one);
    Ok(s)
}

impl Binary {
    /// The axis the second input is aligned to, for the legacy forms.
    fn legacy_axis(&self, a: Option<&[Dim]>, b: Option<&[Dim]>) -> Option<i64> {
        if self.prelu_channel {
            match (a, b) {
                (Some(a), Some([c])) if a.len() > 2 && a[1] == *c && *c != Dim::Known(1) => {
                    return Some(1)
                }
                _ => return None,
            }
        }
        self.legacy_axis
    }
}

impl Op for Binary {
    fn is_elementwise(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        self.op.onnx_name()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let a = cx.input(0)?;
        let b = cx.input(1)?;
        let dt = if self.op == BinOp::Pow {
            a.dtype
        } else {
            same_dtype(&[a, b], self.op.onnx_name())?
        };
        if let Some(dt) = dt {
            if !self.op.accepts(dt) {
                return Err(Error::unsupported_dtype(format!(
                    "{} does not support {dt}",
                    self.op.onnx_name()
                )));
            }
        }
        let mut bf = b.clone();
        if let (Some(axis), Some(ra), Some(sb)) = (
            self.legacy_axis(a.shape.as_deref(), b.shape.as_deref()),
            a.rank(),
            &b.shape,
        ) {
            bf.shape = Some(legacy_shape(ra, sb, axis, crate::graph::Dim::Known(1))?);
        }
        let shape = broadcast_facts(&[a, &bf])?;
        let out_dt = if self.op.is_comparison() {
            Some(DType::Bool)
        } else {
            dt
        };
        Ok(vec![Fact::new(out_dt, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let a = args.t(0)?;
        let b = args.t(1)?;
        let a_dims: Vec<Dim> = a.shape().iter().map(|&d| Dim::Known(d)).collect();
        let b_dims: Vec<Dim> = b.shape().iter().map(|&d| Dim::Known(d)).collect();
        let out = match self.legacy_axis(Some(&a_dims), Some(&b_dims)) {
            Some(axis) => {
                let s = legacy_shape(a.rank(), b.shape(), axis, 1)?;
                k::binary_op(self.op, a, &b.clone().reshape(s)?)?
            }
            None => k::binary_op(self.op, a, b)?,
        };
        Ok(vec![out.into()])
    }
}

// ---------------------------------------------------------------------------------------
// Variadic
// ---------------------------------------------------------------------------------------

/// The reduction a [`Variadic`] op applies across its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarOp {
    Sum,
    Mean,
    Max,
    Min,
}

/// Sum, Mean, Max, Min over 1..N broadcast inputs (NaN propagates through Max/Min).
/// See e.g. <https://onnx.ai/onnx/operators/onnx__Sum.html>.
#[derive(Debug)]
pub struct Variadic {
    pub op: VarOp,
}

fn variadic(cx: &mut NodeCx, op: VarOp) -> Result<Box<dyn Op>> {
    legacy_consumed(cx);
    if cx.n_inputs() == 0 {
        return Err(Error::invalid_model(format!(
            "{op:?} needs at least one input"
        )));
    }
    Ok(Box::new(Variadic { op }))
}

impl Op for Variadic {
    fn is_elementwise(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        match self.op {
            VarOp::Sum => "Sum",
            VarOp::Mean => "Mean",
            VarOp::Max => "Max",
            VarOp::Min => "Min",
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let ins: Vec<&Fact> = cx.inputs.iter().collect();
        if ins.is_empty() {
            return Err(Error::invalid_model(format!(
                "{:?} needs at least one input",
                self.op
            )));
        }
        let dt = same_dtype(&ins, self.name())?;
        if let Some(dt) = dt {
            let ok = match self.op {
                VarOp::Sum | VarOp::Mean => dt.is_float() || self.op == VarOp::Sum && dt.is_int(),
                VarOp::Max | VarOp::Min => dt.is_numeric(),
            };
            if !ok {
                return Err(Error::unsupported_dtype(format!(
                    "{} does not support {dt}",
                    self.name()
                )));
            }
        }
        Ok(vec![Fact::new(dt, broadcast_facts(&ins)?)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let ts: Vec<&Tensor> = (0..args.len()).map(|i| args.t(i)).collect::<Result<_>>()?;
        Ok(vec![k::variadic(self.op, &ts)?.into()])
    }
}

// ---------------------------------------------------------------------------------------
// Where
// ---------------------------------------------------------------------------------------

/// `Where(cond, X, Y)`: X where cond else Y, all three broadcast.
/// <https://onnx.ai/onnx/operators/onnx__Where.html>
#[derive(Debug)]
pub struct Where;

impl Op for Where {
    fn is_elementwise(&self) -> bool {
        true
    }
    op_common!("Where");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let c = cx.input(0)?;
        let x = cx.input(1)?;
        let y = cx.input(2)?;
        if let Some(dt) = c.dtype {
            if dt != DType::Bool {
                return Err(Error::dtype(format!(
                    "Where condition must be bool, got {dt}"
                )));
            }
        }
        let dt = same_dtype(&[x, y], "Where")?;
        Ok(vec![Fact::new(dt, broadcast_facts(&[c, x, y])?)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::where_(args.t(0)?, args.t(1)?, args.t(2)?)?.into()])
    }
}

// ---------------------------------------------------------------------------------------
// Clip
// ---------------------------------------------------------------------------------------

/// `Clip`: limits values to [min, max]; attributes before opset 11, optional inputs after.
/// <https://onnx.ai/onnx/operators/onnx__Clip.html>
#[derive(Debug)]
pub struct Clip {
    /// Attribute limits (opset < 11).
    pub min: Option<f32>,
    pub max: Option<f32>,
}

impl Clip {
    /// Limits as a fused activation when they are known at load (attributes or constant
    /// inputs given as facts).
    pub fn activation(&self, min: Option<&Fact>, max: Option<&Fact>) -> Option<Activation> {
        let read = |attr: Option<f32>, f: Option<&Fact>, dflt: f32| -> Option<f32> {
            match (attr, f) {
                (Some(v), _) => Some(v),
                (None, None) => Some(dflt),
                (None, Some(f)) => {
                    let t = f.value.as_ref()?;
                    if t.dtype() != DType::F32 {
                        return None;
                    }
                    t.as_slice::<f32>().ok()?.first().copied()
                }
            }
        };
        Some(Activation::Clip {
            min: read(self.min, min, f32::NEG_INFINITY)?,
            max: read(self.max, max, f32::INFINITY)?,
        })
    }
}

fn parse_clip(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    legacy_consumed(cx);
    let (min, max) = if cx.opset < 11 {
        (cx.float("min")?, cx.float("max")?)
    } else {
        (None, None)
    };
    Ok(Box::new(Clip { min, max }))
}

impl Op for Clip {
    fn is_elementwise(&self) -> bool {
        true
    }
    op_common!("Clip");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let mut facts = vec![x];
        facts.extend(cx.opt(1));
        facts.extend(cx.opt(2));
        let dt = same_dtype(&facts, "Clip")?;
        if let Some(dt) = dt {
            if !dt.is_numeric() {
                return Err(Error::unsupported_dtype(format!(
                    "Clip does not support {dt}"
                )));
            }
        }
        Ok(vec![Fact::new(dt, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let out = if self.min.is_some() || self.max.is_some() {
            let lo = self
                .min
                .map(|v| Tensor::scalar(v).cast(x.dtype()))
                .transpose()?;
            let hi = self
                .max
                .map(|v| Tensor::scalar(v).cast(x.dtype()))
                .transpose()?;
            k::clip(x, lo.as_ref(), hi.as_ref())?
        } else {
            k::clip(x, args.opt(1)?, args.opt(2)?)?
        };
        Ok(vec![out.into()])
    }
}

// ---------------------------------------------------------------------------------------
// Cast, CastLike
// ---------------------------------------------------------------------------------------

/// Reads Cast's `saturate` and `round_mode`, which only affect the narrow float targets
/// (float8 types, float8e8m0).
fn cast_attrs(cx: &NodeCx) -> Result<CastOptions> {
    let sat = cx.int_or("saturate", 1)?;
    if sat != 0 && sat != 1 {
        return Err(Error::attr(format!("saturate must be 0 or 1, got {sat}")));
    }
    let rm = cx.string_or("round_mode", "up")?;
    let round_mode =
        RoundMode::parse(&rm).ok_or_else(|| Error::attr(format!("round_mode '{rm}'")))?;
    Ok(CastOptions {
        saturate: sat == 1,
        round_mode,
    })
}

/// `Cast`: converts to the dtype `to` (numbers, bool, strings).
/// <https://onnx.ai/onnx/operators/onnx__Cast.html>
#[derive(Debug)]
pub struct Cast {
    pub to: DType,
    /// `saturate` and `round_mode` (narrow float targets only).
    pub opts: CastOptions,
}

fn parse_cast(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let opts = cast_attrs(cx)?;
    let to = match read_to(cx)? {
        Some(t) => t,
        None => return Err(Error::attr("Cast needs the attribute 'to'")),
    };
    Ok(Box::new(Cast { to, opts }))
}

/// Reads `to`, an int (new) or a string type name (opset 1).
fn read_to(cx: &NodeCx) -> Result<Option<DType>> {
    {
        if cx.opset < 6 {
            if let Ok(Some(s)) = cx.string("to") {
                let dt = match s.to_ascii_uppercase().as_str() {
                    "FLOAT" => DType::F32,
                    "DOUBLE" => DType::F64,
                    "FLOAT16" => DType::F16,
                    "INT8" => DType::I8,
                    "UINT8" => DType::U8,
                    "INT16" => DType::I16,
                    "UINT16" => DType::U16,
                    "INT32" => DType::I32,
                    "UINT32" => DType::U32,
                    "INT64" => DType::I64,
                    "UINT64" => DType::U64,
                    "BOOL" => DType::Bool,
                    "STRING" => DType::Str,
                    other => return Err(Error::attr(format!("Cast to '{other}'"))),
                };
                return Ok(Some(dt));
            }
        }
        match cx.int("to")? {
            None => Ok(None),
            Some(code) => {
                let code = i32::try_from(code)
                    .map_err(|_| Error::attr(format!("Cast to type code {code}")))?;
                DType::from_onnx(code).map(Some)
            }
        }
    }
}

impl Op for Cast {
    fn is_elementwise(&self) -> bool {
        true
    }
    op_common!("Cast");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact::new(Some(self.to), cx.input(0)?.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::cast_with(args.t(0)?, self.to, self.opts)?.into()])
    }
}

/// `CastLike`: converts the first input to the dtype of the second.
/// <https://onnx.ai/onnx/operators/onnx__CastLike.html>
#[derive(Debug)]
pub struct CastLike {
    /// `saturate` and `round_mode` (narrow float targets only).
    pub opts: CastOptions,
}

fn parse_cast_like(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let opts = cast_attrs(cx)?;
    Ok(Box::new(CastLike { opts }))
}

impl Op for CastLike {
    fn is_elementwise(&self) -> bool {
        true
    }
    op_common!("CastLike");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact::new(
            cx.input(1)?.dtype,
            cx.input(0)?.shape.clone(),
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::cast_with(
            args.t(0)?,
            args.t(1)?.dtype(),
            self.opts,
        )?
        .into()])
    }
}

/// `BitCast`: reinterprets the little-endian bytes of each element as `to`, a type of the
/// same width. <https://onnx.ai/onnx/operators/onnx__BitCast.html>
#[derive(Debug)]
pub struct BitCast {
    pub to: DType,
}

fn parse_bitcast(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let code = cx.req_int("to")?;
    let code = i32::try_from(code).map_err(|_| Error::attr(format!("BitCast to {code}")))?;
    let to = DType::from_onnx(code)?;
    if to == DType::Str {
        return Err(Error::attr("BitCast to string"));
    }
    Ok(Box::new(BitCast { to }))
}

impl Op for BitCast {
    op_common!("BitCast");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        if let Some(dt) = x.dtype {
            if dt == DType::Str || dt.bit_width() != self.to.bit_width() {
                return Err(Error::dtype(format!(
                    "BitCast from {dt} to {}: the widths differ",
                    self.to
                )));
            }
        }
        Ok(vec![Fact::new(Some(self.to), x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::bitcast(args.t(0)?, self.to)?.into()])
    }
}

// ---------------------------------------------------------------------------------------
// Dropout
// ---------------------------------------------------------------------------------------

/// `Dropout` at inference: the identity, with an all-true mask. Training mode with a
/// nonzero ratio is refused. <https://onnx.ai/onnx/operators/onnx__Dropout.html>
#[derive(Debug)]
pub struct Dropout {
    /// The mask has the input's dtype (opset < 10) instead of bool.
    pub mask_like_input: bool,
    /// Attribute ratio (opset < 12).
    pub ratio: f32,
    /// Whether the model reads the mask output.
    pub want_mask: bool,
}

fn parse_dropout(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    legacy_consumed(cx);
    let mut ratio = 0.5;
    if cx.opset < 12 {
        ratio = cx.float_or("ratio", 0.5)?;
    } else {
        // The seed only matters in training mode, which is refused at run time.
        cx.int("seed")?;
    }
    if cx.opset < 7 {
        // is_test=0 asked for training, but inference runtimes (onnxruntime included)
        // run these as the identity.
        cx.int("is_test")?;
    }
    Ok(Box::new(Dropout {
        mask_like_input: cx.opset < 10,
        ratio,
        want_mask: cx.has_output(1),
    }))
}

impl Op for Dropout {
    op_common!("Dropout");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let mask_dt = if self.mask_like_input {
            x.dtype
        } else {
            Some(DType::Bool)
        };
        Ok(vec![
            Fact::new(x.dtype, x.shape.clone()),
            Fact::new(mask_dt, x.shape.clone()),
        ])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let ratio = match args.opt(1)? {
            Some(r) => r.scalar_f64()?,
            None => f64::from(self.ratio),
        };
        let training = match args.opt(2)? {
            Some(t) => *t
                .as_slice::<bool>()?
                .first()
                .ok_or_else(|| Error::shape("Dropout training_mode is empty"))?,
            None => false,
        };
        if training && ratio != 0.0 {
            return Err(Error::unsupported_op(
                "Dropout in training mode with a nonzero ratio is not supported",
            ));
        }
        if !(0.0..1.0).contains(&ratio) {
            return Err(Error::runtime(format!(
                "Dropout ratio must be in [0, 1), got {ratio}"
            )));
        }
        let mask_dt = if self.mask_like_input {
            x.dtype()
        } else {
            DType::Bool
        };
        let y = args
            .value(0)
            .cloned()
            .ok_or_else(|| Error::input("Dropout needs an input"))?;
        if !self.want_mask {
            return Ok(vec![y]);
        }
        let mask = k::ones_like(x.shape(), mask_dt)?;
        Ok(vec![y, mask.into()])
    }
}
