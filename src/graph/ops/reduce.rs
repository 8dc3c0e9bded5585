//! Op family: reduce. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::reduce`.
//!
//! Reduce* (ten kinds), ArgMax/ArgMin, Softmax/LogSoftmax/Hardmax, CumSum/CumProd, TopK.

use super::{def, OpDef};
use crate::cpu::reduce::{self as k, ReduceKind, SoftmaxKind};
use crate::error::{Error, Result};
use crate::graph::attrs::norm_axis;
use crate::graph::{Args, Dim, Fact, InferCx, NodeCx, Op, RunCx, Value};
use crate::op_common;
use crate::tensor::{DType, Tensor};

pub const OPS: &[OpDef] = &[
    def("", "ReduceSum", |cx| parse_reduce(cx, ReduceKind::Sum)),
    def("", "ReduceMean", |cx| parse_reduce(cx, ReduceKind::Mean)),
    def("", "ReduceMax", |cx| parse_reduce(cx, ReduceKind::Max)),
    def("", "ReduceMin", |cx| parse_reduce(cx, ReduceKind::Min)),
    def("", "ReduceProd", |cx| parse_reduce(cx, ReduceKind::Prod)),
    def("", "ReduceL1", |cx| parse_reduce(cx, ReduceKind::L1)),
    def("", "ReduceL2", |cx| parse_reduce(cx, ReduceKind::L2)),
    def("", "ReduceLogSum", |cx| {
        parse_reduce(cx, ReduceKind::LogSum)
    }),
    def("", "ReduceLogSumExp", |cx| {
        parse_reduce(cx, ReduceKind::LogSumExp)
    }),
    def("", "ReduceSumSquare", |cx| {
        parse_reduce(cx, ReduceKind::SumSquare)
    }),
    def("", "ArgMax", |cx| parse_arg(cx, true)),
    def("", "ArgMin", |cx| parse_arg(cx, false)),
    def("", "Softmax", |cx| parse_softmax(cx, SoftmaxKind::Softmax)),
    def("", "LogSoftmax", |cx| {
        parse_softmax(cx, SoftmaxKind::LogSoftmax)
    }),
    def("", "Hardmax", |cx| parse_softmax(cx, SoftmaxKind::Hardmax)),
    def("", "CumSum", |cx| parse_cum(cx, false)),
    def("", "CumProd", |cx| parse_cum(cx, true)),
    def("", "TopK", parse_topk),
];

fn one(v: Tensor) -> Result<Vec<Value>> {
    Ok(vec![Value::from(v)])
}

fn check_dtype(f: &Fact, what: &str, ok: impl Fn(DType) -> bool) -> Result<Option<DType>> {
    match f.dtype {
        Some(dt) if !ok(dt) => Err(Error::dtype(format!("{what} does not support {dt}"))),
        dt => Ok(dt),
    }
}

/// Output dims of a reduction when the axes are known.
fn reduced_dims(dims: &[Dim], axes: &[usize], keepdims: bool) -> Vec<Dim> {
    let mut out = Vec::with_capacity(dims.len());
    for (i, d) in dims.iter().enumerate() {
        if axes.contains(&i) {
            if keepdims {
                out.push(Dim::Known(1));
            }
        } else {
            out.push(d.clone());
        }
    }
    out
}

/// `ReduceSum`, `ReduceMean`, `ReduceMax`, `ReduceMin`, `ReduceProd`, `ReduceL1`,
/// `ReduceL2`, `ReduceLogSum`, `ReduceLogSumExp`, `ReduceSumSquare`.
/// Spec: https://onnx.ai/onnx/operators/onnx__ReduceSum.html (and siblings).
#[derive(Debug, Clone)]
pub struct Reduce {
    pub kind: ReduceKind,
    /// Axes from the attribute (older opsets); None when absent or given as an input.
    pub axes: Option<Vec<i64>>,
    /// True from the opset where axes became the optional second input.
    pub axes_input: bool,
    pub keepdims: bool,
    pub noop_with_empty_axes: bool,
}

fn parse_reduce(cx: &mut NodeCx, kind: ReduceKind) -> Result<Box<dyn Op>> {
    let input_since = if kind == ReduceKind::Sum { 13 } else { 18 };
    let axes_input = cx.opset >= input_since;
    let (axes, noop) = if axes_input {
        (None, cx.int_or("noop_with_empty_axes", 0)? != 0)
    } else {
        (cx.ints("axes")?, false)
    };
    Ok(Box::new(Reduce {
        kind,
        axes,
        axes_input,
        keepdims: cx.int_or("keepdims", 1)? != 0,
        noop_with_empty_axes: noop,
    }))
}

impl Reduce {
    /// The axes list (attribute or input); None when it cannot be known yet.
    fn axes_from(&self, input: Option<Option<Vec<i64>>>) -> Option<Vec<i64>> {
        if self.axes_input {
            // Outer None: input value unknown; inner None: input absent.
            input.map(|v| v.unwrap_or_default())
        } else {
            Some(self.axes.clone().unwrap_or_default())
        }
    }
}

impl Op for Reduce {
    fn name(&self) -> &'static str {
        self.kind.op_name()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let bool_ok = matches!(self.kind, ReduceKind::Max | ReduceKind::Min);
        let dt = check_dtype(x, self.kind.op_name(), |d| {
            d.is_numeric() || (bool_ok && d == DType::Bool)
        })?;
        let axes_in = if self.axes_input {
            match cx.opt(1) {
                None => Some(None),
                Some(f) => f.const_i64().map(Some),
            }
        } else {
            None
        };
        let shape = match (&x.shape, self.axes_from(axes_in)) {
            (Some(dims), Some(axes)) => {
                if axes.is_empty() && self.noop_with_empty_axes {
                    Some(dims.clone())
                } else if axes.is_empty() {
                    let all: Vec<usize> = (0..dims.len()).collect();
                    Some(reduced_dims(dims, &all, self.keepdims))
                } else {
                    let a = k::normalize_axes(&axes, dims.len())?;
                    Some(reduced_dims(dims, &a, self.keepdims))
                }
            }
            (Some(dims), None) if self.keepdims => Some(vec![Dim::Unknown; dims.len()]),
            _ => None,
        };
        Ok(vec![Fact::new(dt, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let axes_in = if self.axes_input {
            Some(match args.opt(1)? {
                Some(t) => Some(t.to_i64_vec()?),
                None => None,
            })
        } else {
            None
        };
        let axes = self.axes_from(axes_in).unwrap_or_default();
        if axes.is_empty() && self.noop_with_empty_axes {
            return one(x.clone());
        }
        let axes = k::normalize_axes(&axes, x.rank())?;
        one(k::reduce(x, &axes, self.keepdims, self.kind)?)
    }
}

/// `ArgMax` / `ArgMin`: index of the largest/smallest element along an axis.
/// Spec: https://onnx.ai/onnx/operators/onnx__ArgMax.html
#[derive(Debug, Clone)]
pub struct ArgExtreme {
    pub max: bool,
    pub axis: i64,
    pub keepdims: bool,
    pub select_last_index: bool,
}

fn parse_arg(cx: &mut NodeCx, max: bool) -> Result<Box<dyn Op>> {
    Ok(Box::new(ArgExtreme {
        max,
        axis: cx.int_or("axis", 0)?,
        keepdims: cx.int_or("keepdims", 1)? != 0,
        select_last_index: cx.int_or("select_last_index", 0)? != 0,
    }))
}

impl Op for ArgExtreme {
    fn name(&self) -> &'static str {
        if self.max {
            "ArgMax"
        } else {
            "ArgMin"
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_dtype(x, self.name(), |d| d.is_numeric() || d == DType::Bool)?;
        let shape = match &x.shape {
            Some(dims) => {
                let a = norm_axis(self.axis, dims.len())?;
                Some(reduced_dims(dims, &[a], self.keepdims))
            }
            None => None,
        };
        Ok(vec![Fact::new(Some(DType::I64), shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let a = norm_axis(self.axis, x.rank())?;
        one(k::arg_extreme(
            x,
            a,
            self.keepdims,
            self.select_last_index,
            self.max,
        )?)
    }
}

/// `Softmax`, `LogSoftmax`, `Hardmax`. Before opset 13 the input is coerced to 2-D at
/// `axis` (default 1); from 13 the op runs along `axis` (default -1).
/// Spec: https://onnx.ai/onnx/operators/onnx__Softmax.html
#[derive(Debug, Clone)]
pub struct Softmax {
    pub kind: SoftmaxKind,
    pub axis: i64,
    /// Opset < 13 semantics (flatten to 2-D at `axis`).
    pub coerce_2d: bool,
}

fn parse_softmax(cx: &mut NodeCx, kind: SoftmaxKind) -> Result<Box<dyn Op>> {
    let coerce_2d = cx.opset < 13;
    Ok(Box::new(Softmax {
        kind,
        axis: cx.int_or("axis", if coerce_2d { 1 } else { -1 })?,
        coerce_2d,
    }))
}

impl Softmax {
    /// (outer, n, inner) for an input shape.
    pub fn dims(&self, shape: &[usize]) -> Result<(usize, usize, usize)> {
        if self.coerce_2d {
            // Axis may equal the rank here (everything in the outer part).
            let r = shape.len();
            let a = if self.axis < 0 {
                self.axis + r as i64
            } else {
                self.axis
            };
            let a = usize::try_from(a).ok().filter(|&a| a <= r).ok_or_else(|| {
                Error::shape(format!("axis {} out of range for rank {r}", self.axis))
            })?;
            Ok((shape[..a].iter().product(), shape[a..].iter().product(), 1))
        } else {
            let a = norm_axis(self.axis, shape.len())?;
            Ok(crate::cpu::common::split_at_axis(shape, a))
        }
    }
}

impl Op for Softmax {
    fn name(&self) -> &'static str {
        match self.kind {
            SoftmaxKind::Softmax => "Softmax",
            SoftmaxKind::LogSoftmax => "LogSoftmax",
            SoftmaxKind::Hardmax => "Hardmax",
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let dt = check_dtype(x, self.name(), DType::is_float)?;
        if let Some(r) = x.rank() {
            if !self.coerce_2d {
                norm_axis(self.axis, r)?;
            }
        }
        Ok(vec![Fact::new(dt, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let dims = self.dims(x.shape())?;
        one(k::softmax(x, dims, self.kind)?)
    }
}

/// `CumSum` / `CumProd`: cumulative sum/product along an axis given as an input.
/// Spec: https://onnx.ai/onnx/operators/onnx__CumSum.html
#[derive(Debug, Clone)]
pub struct Cumulative {
    pub prod: bool,
    pub exclusive: bool,
    pub reverse: bool,
}

fn parse_cum(cx: &mut NodeCx, prod: bool) -> Result<Box<dyn Op>> {
    Ok(Box::new(Cumulative {
        prod,
        exclusive: cx.int_or("exclusive", 0)? != 0,
        reverse: cx.int_or("reverse", 0)? != 0,
    }))
}

impl Op for Cumulative {
    fn name(&self) -> &'static str {
        if self.prod {
            "CumProd"
        } else {
            "CumSum"
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let dt = check_dtype(x, self.name(), DType::is_numeric)?;
        check_dtype(cx.input(1)?, "axis of CumSum/CumProd", |d| {
            matches!(d, DType::I32 | DType::I64)
        })?;
        Ok(vec![Fact::new(dt, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let a = args.t(1)?;
        if a.len() != 1 {
            return Err(Error::shape(format!(
                "{}: axis must be a scalar, got shape {:?}",
                self.name(),
                a.shape()
            )));
        }
        let axis = norm_axis(a.scalar_i64()?, x.rank())?;
        one(k::cumulative(
            x,
            axis,
            self.exclusive,
            self.reverse,
            self.prod,
        )?)
    }
}

/// `TopK`: the k largest (or smallest) elements along an axis, with their indices.
/// Spec: https://onnx.ai/onnx/operators/onnx__TopK.html
#[derive(Debug, Clone)]
pub struct TopK {
    pub axis: i64,
    pub largest: bool,
    pub sorted: bool,
    /// `k` attribute (opset 1); from opset 10 `k` is the second input.
    pub k: Option<i64>,
}

fn parse_topk(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let k = if cx.opset < 10 {
        Some(cx.req_int("k")?)
    } else {
        None
    };
    let (largest, sorted) = if cx.opset >= 11 {
        (cx.int_or("largest", 1)? != 0, cx.int_or("sorted", 1)? != 0)
    } else {
        (true, true)
    };
    Ok(Box::new(TopK {
        axis: cx.int_or("axis", -1)?,
        largest,
        sorted,
        k,
    }))
}

fn k_value(v: Option<Vec<i64>>) -> Result<Option<usize>> {
    match v {
        None => Ok(None),
        Some(v) => {
            let [k] = v[..] else {
                return Err(Error::shape("TopK: K must hold exactly one value"));
            };
            usize::try_from(k)
                .map(Some)
                .map_err(|_| Error::runtime(format!("TopK: k = {k} is negative")))
        }
    }
}

impl Op for TopK {
    op_common!("TopK");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let dt = check_dtype(x, "TopK", DType::is_numeric)?;
        let kv = match self.k {
            Some(k) => k_value(Some(vec![k]))?,
            None => k_value(cx.input(1)?.const_i64())?,
        };
        let shape = match &x.shape {
            Some(dims) => {
                let a = norm_axis(self.axis, dims.len())?;
                let mut d = dims.clone();
                d[a] = kv.map_or(Dim::Unknown, Dim::Known);
                Some(d)
            }
            None => None,
        };
        Ok(vec![
            Fact::new(dt, shape.clone()),
            Fact::new(Some(DType::I64), shape),
        ])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let kv = match self.k {
            Some(k) => k_value(Some(vec![k]))?,
            None => k_value(Some(args.t(1)?.to_i64_vec()?))?,
        }
        .unwrap_or(0);
        let a = norm_axis(self.axis, x.rank())?;
        let (v, i) = k::top_k(x, kv, a, self.largest)?;
        Ok(vec![Value::from(v), Value::from(i)])
    }
}
