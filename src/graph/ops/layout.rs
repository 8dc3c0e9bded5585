//! Op family: layout (shape, reshape, transpose, gather/scatter, pad, …), sequences and
//! optionals. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::layout`.
//!
//! Shape rules propagate symbolic dims and, when every input is a small constant, run the
//! kernel at load so constant shape computations (Shape → Gather → Concat → Reshape) give
//! downstream ops concrete shapes.

use super::{def, OpDef};
use crate::cpu::common::{concat, stack};
use crate::cpu::layout as k;
use crate::error::{Error, Result};
use crate::graph::attrs::norm_axis;
use crate::graph::shape::{broadcast_dims, ValueKind};
use crate::graph::{Args, Dim, Fact, Graph, InferCx, NodeCx, Op, RunCx, Value};
use crate::op_common;
use crate::plan::{run_subgraph, Plan, RunOptions};
use crate::tensor::{set_memory_budget, DType, Tensor};
use std::sync::Arc;

pub const OPS: &[OpDef] = &[
    def("", "Shape", parse_shape),
    def("", "Size", |_| Ok(Box::new(Size))),
    def("", "Reshape", parse_reshape),
    def("", "Flatten", parse_flatten),
    def("", "Squeeze", parse_squeeze),
    def("", "Unsqueeze", parse_unsqueeze),
    def("", "Transpose", parse_transpose),
    def("", "Concat", parse_concat),
    def("", "Split", parse_split),
    def("", "Slice", parse_slice),
    def("", "Gather", parse_gather),
    def("", "GatherElements", parse_gather_elements),
    def("", "GatherND", parse_gather_nd),
    def("", "Scatter", parse_scatter),
    def("", "ScatterElements", parse_scatter),
    def("", "ScatterND", parse_scatter_nd),
    def("", "Expand", |_| Ok(Box::new(Expand))),
    def("", "Tile", parse_tile),
    def("", "Pad", parse_pad),
    def("", "ConstantOfShape", parse_constant_of_shape),
    def("", "Range", |_| Ok(Box::new(Range))),
    def("", "NonZero", |_| Ok(Box::new(NonZero))),
    def("", "OneHot", parse_one_hot),
    def("", "DepthToSpace", parse_depth_to_space),
    def("", "SpaceToDepth", parse_space_to_depth),
    def("", "Trilu", parse_trilu),
    def("", "ReverseSequence", parse_reverse_sequence),
    def("", "Compress", parse_compress),
    def("", "Unique", parse_unique),
    def("", "EyeLike", parse_eye_like),
    def("", "CenterCropPad", parse_center_crop_pad),
    def("", "TensorScatter", parse_tensor_scatter),
    def("", "SequenceConstruct", |_| Ok(Box::new(SequenceConstruct))),
    def("", "SequenceEmpty", parse_sequence_empty),
    def("", "SequenceInsert", |_| Ok(Box::new(SequenceInsert))),
    def("", "SequenceAt", |_| Ok(Box::new(SequenceAt))),
    def("", "SequenceErase", |_| Ok(Box::new(SequenceErase))),
    def("", "SequenceLength", |_| Ok(Box::new(SequenceLength))),
    def("", "SplitToSequence", parse_split_to_sequence),
    def("", "ConcatFromSequence", parse_concat_from_sequence),
    def("", "SequenceMap", parse_sequence_map),
    def("", "Optional", parse_optional),
    def("", "OptionalHasElement", |_| {
        Ok(Box::new(OptionalHasElement))
    }),
    def("", "OptionalGetElement", |_| {
        Ok(Box::new(OptionalGetElement))
    }),
];

// ---------------------------------------------------------------------------------------
// Shared helpers

/// Largest constant input (elements) folded during shape inference.
const FOLD_MAX_ELEMS: usize = 1 << 16;
/// Budget for tensors built while folding at load.
const FOLD_BUDGET: usize = 1 << 20;

/// Runs `op` on constant inputs at load time, when all present inputs are small constants.
fn fold(op: &dyn Op, cx: &InferCx) -> Option<Vec<Fact>> {
    if cx.inputs.iter().all(|f| f.is_absent()) {
        return None;
    }
    let mut vals: Vec<Option<Value>> = Vec::with_capacity(cx.inputs.len());
    for f in cx.inputs {
        if f.is_absent() {
            vals.push(None);
            continue;
        }
        let t = f.value.as_ref()?;
        if f.kind != ValueKind::Tensor || t.len() > FOLD_MAX_ELEMS {
            return None;
        }
        vals.push(Some(Value::Tensor(t.clone())));
    }
    let refs: Vec<Option<&Value>> = vals.iter().map(|v| v.as_ref()).collect();
    let opts = RunOptions::default();
    let mut rcx = RunCx {
        options: &opts,
        depth: 0,
        profile: None,
    };
    let old = set_memory_budget(FOLD_BUDGET);
    let r = op.run(
        &mut rcx,
        &Args {
            inputs: &refs,
            implicit: &[],
        },
    );
    set_memory_budget(old);
    let outs = r.ok()?;
    if outs.iter().any(|v| !matches!(v, Value::Tensor(_))) {
        return None;
    }
    Some(outs.iter().map(Fact::from_value).collect())
}

fn dims(f: &Fact) -> Option<&[Dim]> {
    f.shape.as_deref()
}

/// Product of dims, symbolic where possible.
fn dim_product(ds: &[Dim]) -> Dim {
    let mut known = 1usize;
    let mut other: Option<&Dim> = None;
    for d in ds {
        match d {
            Dim::Known(v) => known = known.saturating_mul(*v),
            _ if other.is_none() => other = Some(d),
            _ => return Dim::Unknown,
        }
    }
    match other {
        None => Dim::Known(known),
        Some(d) if known == 1 => d.clone(),
        Some(_) if known == 0 => Dim::Known(0),
        Some(_) => Dim::Unknown,
    }
}

fn known_dims(v: &[usize]) -> Vec<Dim> {
    v.iter().map(|&d| Dim::Known(d)).collect()
}

fn idx_dtype_check(f: &Fact, what: &str) -> Result<()> {
    if let Some(dt) = f.dtype {
        if !dt.is_int() {
            return Err(Error::dtype(format!(
                "{what} must be an integer tensor, got {dt}"
            )));
        }
    }
    Ok(())
}

/// Input `i` as i64 values.
fn ints_input(args: &Args, i: usize) -> Result<Option<Vec<i64>>> {
    args.opt(i)?.map(|t| t.to_i64_vec()).transpose()
}

fn fact_tensor(dt: Option<DType>, shape: Option<Vec<Dim>>) -> Fact {
    Fact::new(dt, shape)
}

fn out(t: Tensor) -> Result<Vec<Value>> {
    Ok(vec![Value::from(t)])
}

// ---------------------------------------------------------------------------------------
// Shape, Size

/// `Shape`: the input's shape as int64, sliced by start/end.
/// Spec: https://onnx.ai/onnx/operators/onnx__Shape.html
#[derive(Debug)]
pub struct Shape {
    pub start: i64,
    pub end: Option<i64>,
}

fn parse_shape(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Shape {
        start: cx.int_or("start", 0)?,
        end: cx.int("end")?,
    }))
}

impl Shape {
    fn range(&self, r: usize) -> (usize, usize) {
        let ri = r as i64;
        let clamp = |v: i64| {
            let v = if v < 0 { v.saturating_add(ri) } else { v };
            v.clamp(0, ri) as usize
        };
        let s = clamp(self.start);
        let e = clamp(self.end.unwrap_or(ri));
        (s, e.max(s))
    }
}

impl Op for Shape {
    op_common!("Shape");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let Some(d) = dims(x) else {
            return Ok(vec![Fact::new(Some(DType::I64), Some(vec![Dim::Unknown]))]);
        };
        let (s, e) = self.range(d.len());
        let sl = &d[s..e];
        if let Some(v) = sl.iter().map(|d| d.known()).collect::<Option<Vec<usize>>>() {
            let t = Tensor::vector(v.iter().map(|&x| x as i64).collect::<Vec<i64>>());
            return Ok(vec![Fact::from_value(&Value::from(t))]);
        }
        Ok(vec![Fact::known(DType::I64, &[e - s])])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let (s, e) = self.range(x.rank());
        out(Tensor::vector(
            x.shape()[s..e]
                .iter()
                .map(|&d| d as i64)
                .collect::<Vec<i64>>(),
        ))
    }
}

/// `Size`: number of elements as an int64 scalar.
/// Spec: https://onnx.ai/onnx/operators/onnx__Size.html
#[derive(Debug)]
pub struct Size;

impl Op for Size {
    op_common!("Size");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(s) = cx.input(0)?.concrete_shape() {
            let n: usize = s.iter().product();
            return Ok(vec![Fact::from_value(&Value::from(Tensor::scalar(
                n as i64,
            )))]);
        }
        Ok(vec![Fact::known(DType::I64, &[])])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(Tensor::scalar(args.t(0)?.len() as i64))
    }
}

// ---------------------------------------------------------------------------------------
// Reshape, Flatten, Squeeze, Unsqueeze

/// `Reshape` (0 copies a dim unless allowzero, one -1 is inferred).
/// Spec: https://onnx.ai/onnx/operators/onnx__Reshape.html
#[derive(Debug)]
pub struct Reshape {
    pub allowzero: bool,
}

fn parse_reshape(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    if cx.opset < 5 {
        return Err(Error::unsupported_op("Reshape-1 (shape as an attribute)"));
    }
    Ok(Box::new(Reshape {
        allowzero: cx.int_or("allowzero", 0)? != 0,
    }))
}

/// Symbolic Reshape output.
fn reshape_dims(input: Option<&[Dim]>, spec: &[i64], allowzero: bool) -> Result<Vec<Dim>> {
    let mut outd = Vec::with_capacity(spec.len());
    let mut minus = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            -1 => {
                if minus.is_some() {
                    return Err(Error::shape("Reshape: more than one -1"));
                }
                minus = Some(i);
                outd.push(Dim::Unknown);
            }
            0 if !allowzero => outd.push(match input {
                Some(d) => d.get(i).cloned().ok_or_else(|| {
                    Error::shape(format!("Reshape: 0 at position {i} beyond the input rank"))
                })?,
                None => Dim::Unknown,
            }),
            s if s < 0 => return Err(Error::shape(format!("Reshape: invalid dim {s}"))),
            s => outd.push(usize::try_from(s).map_or(Dim::Unknown, Dim::Known)),
        }
    }
    if let (Some(m), Some(inp)) = (minus, input) {
        // Cancel symbols shared by input and output, then divide the known parts.
        let mut in_syms: Vec<&Dim> = Vec::new();
        let mut kin = 1usize;
        let mut ok = true;
        for d in inp {
            match d {
                Dim::Known(v) => kin = kin.saturating_mul(*v),
                Dim::Sym(_) => in_syms.push(d),
                Dim::Unknown => ok = false,
            }
        }
        let mut kout = 1usize;
        for (i, d) in outd.iter().enumerate() {
            if i == m {
                continue;
            }
            match d {
                Dim::Known(v) => kout = kout.saturating_mul(*v),
                Dim::Sym(_) => match in_syms.iter().position(|x| *x == d) {
                    Some(p) => {
                        in_syms.remove(p);
                    }
                    None => ok = false,
                },
                Dim::Unknown => ok = false,
            }
        }
        if ok && kout != 0 {
            if in_syms.is_empty() && kin.is_multiple_of(kout) {
                outd[m] = Dim::Known(kin / kout);
            } else if in_syms.len() == 1 && kin == kout {
                outd[m] = in_syms[0].clone();
            }
        }
    }
    Ok(outd)
}

impl Op for Reshape {
    op_common!("Reshape");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let x = cx.input(0)?;
        let s = cx.input(1)?;
        idx_dtype_check(s, "Reshape shape")?;
        let shape = match s.const_i64() {
            Some(spec) => match x.concrete_shape() {
                Some(c) => Some(known_dims(&k::reshape_shape(&c, &spec, self.allowzero)?)),
                None => Some(reshape_dims(dims(x), &spec, self.allowzero)?),
            },
            None => s
                .shape
                .as_ref()
                .and_then(|d| d.first().and_then(|d| d.known()))
                .map(|r| vec![Dim::Unknown; r]),
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let spec = args.t(1)?.to_i64_vec()?;
        let shape = k::reshape_shape(x.shape(), &spec, self.allowzero)?;
        out(k::with_shape(x, shape)?)
    }
}

/// `Flatten`: to 2-D around `axis`.
/// Spec: https://onnx.ai/onnx/operators/onnx__Flatten.html
#[derive(Debug)]
pub struct Flatten {
    pub axis: i64,
}

fn parse_flatten(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Flatten {
        axis: cx.int_or("axis", 1)?,
    }))
}

fn flatten_axis(axis: i64, r: usize) -> Result<usize> {
    let a = if axis < 0 { axis + r as i64 } else { axis };
    if a < 0 || a > r as i64 {
        return Err(Error::shape(format!(
            "Flatten: axis {axis} out of range for rank {r}"
        )));
    }
    Ok(a as usize)
}

impl Op for Flatten {
    op_common!("Flatten");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let shape = match dims(x) {
            Some(d) => {
                let a = flatten_axis(self.axis, d.len())?;
                Some(vec![dim_product(&d[..a]), dim_product(&d[a..])])
            }
            None => Some(vec![Dim::Unknown, Dim::Unknown]),
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let a = flatten_axis(self.axis, x.rank())?;
        let s = x.shape();
        out(k::with_shape(
            x,
            vec![s[..a].iter().product(), s[a..].iter().product()],
        )?)
    }
}

/// `Squeeze`: removes size-1 axes (axes as attribute before opset 13, input after).
/// Spec: https://onnx.ai/onnx/operators/onnx__Squeeze.html
#[derive(Debug)]
pub struct Squeeze {
    pub axes: Option<Vec<i64>>,
}

fn parse_squeeze(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let axes = if cx.opset < 13 {
        cx.ints("axes")?
    } else {
        None
    };
    Ok(Box::new(Squeeze { axes }))
}

impl Op for Squeeze {
    op_common!("Squeeze");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let x = cx.input(0)?;
        let axes = match (&self.axes, cx.opt(1)) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(f)) => match f.const_i64() {
                Some(a) => Some(a),
                None => return Ok(vec![fact_tensor(x.dtype, None)]),
            },
            (None, None) => None,
        };
        let shape = match (dims(x), axes) {
            (Some(d), Some(axes)) => {
                let mut drop = vec![false; d.len()];
                for a in axes {
                    let i = norm_axis(a, d.len())?;
                    if let Dim::Known(v) = d[i] {
                        if v != 1 {
                            return Err(Error::shape(format!("Squeeze: dim {i} is {v}, not 1")));
                        }
                    }
                    drop[i] = true;
                }
                Some(
                    d.iter()
                        .zip(drop)
                        .filter(|(_, x)| !x)
                        .map(|(d, _)| d.clone())
                        .collect(),
                )
            }
            (Some(d), None) if d.iter().all(|d| d.known().is_some()) => {
                Some(d.iter().filter(|d| **d != Dim::Known(1)).cloned().collect())
            }
            _ => None,
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let axes = match &self.axes {
            Some(a) => Some(a.clone()),
            None => ints_input(args, 1)?,
        };
        let shape = k::squeeze_shape(x.shape(), axes.as_deref())?;
        out(k::with_shape(x, shape)?)
    }
}

/// `Unsqueeze`: inserts size-1 axes (axes as attribute before opset 13, input after).
/// Spec: https://onnx.ai/onnx/operators/onnx__Unsqueeze.html
#[derive(Debug)]
pub struct Unsqueeze {
    pub axes: Option<Vec<i64>>,
}

fn parse_unsqueeze(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let axes = if cx.opset < 13 {
        Some(
            cx.ints("axes")?
                .ok_or_else(|| Error::attr("Unsqueeze needs 'axes'"))?,
        )
    } else {
        None
    };
    Ok(Box::new(Unsqueeze { axes }))
}

impl Op for Unsqueeze {
    op_common!("Unsqueeze");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let x = cx.input(0)?;
        let axes = match &self.axes {
            Some(a) => Some(a.clone()),
            None => cx.input(1)?.const_i64(),
        };
        let shape = match (dims(x), axes) {
            (Some(d), Some(axes)) => {
                let new = k::unsqueeze_axes(d.len(), &axes)?;
                let mut it = d.iter();
                Some(
                    new.iter()
                        .map(|&n| {
                            if n {
                                Dim::Known(1)
                            } else {
                                it.next().cloned().unwrap_or(Dim::Unknown)
                            }
                        })
                        .collect(),
                )
            }
            _ => None,
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let axes = match &self.axes {
            Some(a) => a.clone(),
            None => args.t(1)?.to_i64_vec()?,
        };
        let shape = k::unsqueeze_shape(x.shape(), &axes)?;
        out(k::with_shape(x, shape)?)
    }
}

// ---------------------------------------------------------------------------------------
// Transpose, Concat, Split, Slice

/// `Transpose`: permutes axes (default: reverses them).
/// Spec: https://onnx.ai/onnx/operators/onnx__Transpose.html
#[derive(Debug)]
pub struct Transpose {
    pub perm: Option<Vec<usize>>,
}

fn parse_transpose(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let perm = match cx.ints("perm")? {
        None => None,
        Some(p) => {
            let v: Vec<usize> = p
                .iter()
                .map(|&x| {
                    usize::try_from(x)
                        .map_err(|_| Error::attr(format!("Transpose: bad perm {p:?}")))
                })
                .collect::<Result<_>>()?;
            let mut seen = vec![false; v.len()];
            for &x in &v {
                if x >= v.len() || seen[x] {
                    return Err(Error::attr(format!(
                        "Transpose: perm {p:?} is not a permutation"
                    )));
                }
                seen[x] = true;
            }
            Some(v)
        }
    };
    Ok(Box::new(Transpose { perm }))
}

impl Op for Transpose {
    op_common!("Transpose");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let x = cx.input(0)?;
        let shape = match dims(x) {
            Some(d) => Some(match &self.perm {
                Some(p) => {
                    if p.len() != d.len() {
                        return Err(Error::shape(format!(
                            "Transpose: perm of length {} for rank {}",
                            p.len(),
                            d.len()
                        )));
                    }
                    p.iter().map(|&i| d[i].clone()).collect()
                }
                None => d.iter().rev().cloned().collect(),
            }),
            None => self.perm.as_ref().map(|p| vec![Dim::Unknown; p.len()]),
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::transpose(args.t(0)?, self.perm.as_deref())?)
    }
}

/// `Concat`: joins tensors along an axis.
/// Spec: https://onnx.ai/onnx/operators/onnx__Concat.html
#[derive(Debug)]
pub struct Concat {
    pub axis: i64,
}

fn parse_concat(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let axis = if cx.opset < 4 {
        cx.int_or("axis", 1)?
    } else {
        cx.req_int("axis")?
    };
    Ok(Box::new(Concat { axis }))
}

impl Op for Concat {
    op_common!("Concat");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let facts: Vec<&Fact> = cx.inputs.iter().filter(|f| !f.is_absent()).collect();
        if facts.is_empty() {
            return Err(Error::invalid_model("Concat needs at least one input"));
        }
        let dt = crate::graph::same_dtype(&facts, "Concat")?;
        let Some(first) = facts.iter().find_map(|f| dims(f)) else {
            return Ok(vec![fact_tensor(dt, None)]);
        };
        let r = first.len();
        let a = norm_axis(self.axis, r)?;
        let mut shape: Vec<Dim> = first.to_vec();
        let mut sum: Option<usize> = Some(0);
        let mut all_known = true;
        for f in &facts {
            let Some(d) = dims(f) else {
                all_known = false;
                sum = None;
                continue;
            };
            if d.len() != r {
                return Err(Error::shape(format!(
                    "Concat: inputs of rank {} and {}",
                    r,
                    d.len()
                )));
            }
            for (i, di) in d.iter().enumerate() {
                if i == a {
                    sum = match (sum, di) {
                        (Some(s), Dim::Known(v)) => Some(s + v),
                        _ => None,
                    };
                } else {
                    match (&shape[i], di) {
                        (Dim::Known(x), Dim::Known(y)) if x != y => {
                            return Err(Error::shape(format!(
                                "Concat: dim {i} differs ({x} vs {y})"
                            )))
                        }
                        (Dim::Known(_), _) => {}
                        (_, Dim::Known(y)) => shape[i] = Dim::Known(*y),
                        _ => {}
                    }
                }
            }
        }
        shape[a] = match sum {
            Some(s) if all_known => Dim::Known(s),
            _ if facts.len() == 1 => first[a].clone(),
            _ => Dim::Unknown,
        };
        Ok(vec![fact_tensor(dt, Some(shape))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let ts: Vec<&Tensor> = (0..args.len())
            .filter_map(|i| args.opt(i).transpose())
            .collect::<Result<_>>()?;
        let first = ts
            .first()
            .ok_or_else(|| Error::input("Concat needs inputs"))?;
        let a = norm_axis(self.axis, first.rank())?;
        out(concat(&ts, a)?)
    }
}

/// `Split`: splits along an axis into parts (sizes from `split` attribute/input or even).
/// Spec: https://onnx.ai/onnx/operators/onnx__Split.html
#[derive(Debug)]
pub struct Split {
    pub axis: i64,
    pub split: Option<Vec<i64>>,
    pub num_outputs: usize,
}

fn parse_split(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let axis = cx.int_or("axis", 0)?;
    let split = if cx.opset < 13 {
        cx.ints("split")?
    } else {
        None
    };
    let n = if cx.opset >= 18 {
        cx.int("num_outputs")?
    } else {
        None
    };
    let num_outputs = match n {
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| Error::attr(format!("Split: num_outputs {n}")))?,
        None => cx.n_outputs(),
    };
    Ok(Box::new(Split {
        axis,
        split,
        num_outputs,
    }))
}

impl Split {
    fn sizes(&self, len: usize, split: Option<Vec<i64>>) -> Result<Vec<usize>> {
        match split.or_else(|| self.split.clone()) {
            Some(s) => {
                if s.len() != self.num_outputs {
                    return Err(Error::shape(format!(
                        "Split: {} sizes for {} outputs",
                        s.len(),
                        self.num_outputs
                    )));
                }
                k::shape_from_i64(&s, "Split")
            }
            None => k::even_split(len, self.num_outputs),
        }
    }
}

impl Op for Split {
    op_common!("Split");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let unknown = vec![fact_tensor(x.dtype, None); self.num_outputs];
        let Some(d) = dims(x) else { return Ok(unknown) };
        let a = norm_axis(self.axis, d.len())?;
        let split = match cx.opt(1) {
            Some(f) => match f.const_i64() {
                Some(v) => Some(v),
                None => {
                    let mut s = d.to_vec();
                    s[a] = Dim::Unknown;
                    return Ok(vec![fact_tensor(x.dtype, Some(s)); self.num_outputs]);
                }
            },
            None => None,
        };
        let sizes = match d[a].known() {
            Some(len) => Some(self.sizes(len, split)?),
            None => match split.or_else(|| self.split.clone()) {
                Some(s) => Some(k::shape_from_i64(&s, "Split")?),
                None => None,
            },
        };
        Ok((0..self.num_outputs)
            .map(|i| {
                let mut s = d.to_vec();
                s[a] = sizes
                    .as_ref()
                    .and_then(|v| v.get(i))
                    .map_or(Dim::Unknown, |&v| Dim::Known(v));
                fact_tensor(x.dtype, Some(s))
            })
            .collect())
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let a = norm_axis(self.axis, x.rank())?;
        let sizes = self.sizes(x.shape()[a], ints_input(args, 1)?)?;
        Ok(k::split(x, a, &sizes)?
            .into_iter()
            .map(Value::from)
            .collect())
    }
}

/// `Slice` (attributes before opset 10, inputs after; negative steps, clamping).
/// Spec: https://onnx.ai/onnx/operators/onnx__Slice.html
#[derive(Debug)]
pub struct Slice {
    /// Opset < 10: (starts, ends, axes) attributes.
    pub attrs: Option<SliceAttrs>,
}

/// Slice-1 attributes: starts, ends, optional axes.
pub type SliceAttrs = (Vec<i64>, Vec<i64>, Option<Vec<i64>>);

fn parse_slice(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let attrs = if cx.opset < 10 {
        let s = cx
            .ints("starts")?
            .ok_or_else(|| Error::attr("Slice needs 'starts'"))?;
        let e = cx
            .ints("ends")?
            .ok_or_else(|| Error::attr("Slice needs 'ends'"))?;
        Some((s, e, cx.ints("axes")?))
    } else {
        None
    };
    Ok(Box::new(Slice { attrs }))
}

type SliceParams = (Vec<i64>, Vec<i64>, Vec<usize>, Vec<i64>);

/// Checks and normalizes slice parameters for a rank.
fn slice_params(
    rank: usize,
    starts: Vec<i64>,
    ends: Vec<i64>,
    axes: Option<Vec<i64>>,
    steps: Option<Vec<i64>>,
) -> Result<SliceParams> {
    let n = starts.len();
    if ends.len() != n {
        return Err(Error::shape("Slice: starts and ends differ in length"));
    }
    let axes: Vec<usize> = match axes {
        Some(a) => {
            if a.len() != n {
                return Err(Error::shape("Slice: axes and starts differ in length"));
            }
            a.iter()
                .map(|&x| norm_axis(x, rank))
                .collect::<Result<_>>()?
        }
        None => {
            if n > rank {
                return Err(Error::shape("Slice: more starts than axes"));
            }
            (0..n).collect()
        }
    };
    let mut seen = vec![false; rank];
    for &a in &axes {
        if seen[a] {
            return Err(Error::shape("Slice: repeated axis"));
        }
        seen[a] = true;
    }
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if steps.len() != n {
        return Err(Error::shape("Slice: steps and starts differ in length"));
    }
    if steps.contains(&0) {
        return Err(Error::runtime("Slice: step cannot be 0"));
    }
    Ok((starts, ends, axes, steps))
}

impl Slice {
    #[allow(clippy::type_complexity)]
    fn raw(
        &self,
        get: &dyn Fn(usize) -> Option<Option<Vec<i64>>>,
    ) -> Option<(Vec<i64>, Vec<i64>, Option<Vec<i64>>, Option<Vec<i64>>)> {
        match &self.attrs {
            Some((s, e, a)) => Some((s.clone(), e.clone(), a.clone(), None)),
            None => Some((get(1)??, get(2)??, get(3)?, get(4)?)),
        }
    }
}

impl Op for Slice {
    op_common!("Slice");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let x = cx.input(0)?;
        // Some(Some(v)): constant; Some(None): absent; None: present but not constant.
        let get = |i: usize| -> Option<Option<Vec<i64>>> {
            match cx.opt(i) {
                None => Some(None),
                Some(f) => f.const_i64().map(Some),
            }
        };
        let Some(d) = dims(x) else {
            return Ok(vec![fact_tensor(x.dtype, None)]);
        };
        let Some((s, e, a, st)) = self.raw(&get) else {
            // Axes known: only those dims change.
            let mut shape = d.to_vec();
            match (&self.attrs, cx.opt(3).map(|f| f.const_i64())) {
                (None, Some(Some(axes))) => {
                    for ax in axes {
                        shape[norm_axis(ax, d.len())?] = Dim::Unknown;
                    }
                }
                _ => shape = vec![Dim::Unknown; d.len()],
            }
            return Ok(vec![fact_tensor(x.dtype, Some(shape))]);
        };
        let (s, e, axes, st) = slice_params(d.len(), s, e, a, st)?;
        let mut shape = d.to_vec();
        for (i, &ax) in axes.iter().enumerate() {
            shape[ax] = match &d[ax] {
                Dim::Known(v) => Dim::Known(k::slice_axis(*v, s[i], e[i], st[i])?.1),
                other if s[i] == 0 && st[i] == 1 && e[i] >= i64::MAX / 2 => other.clone(),
                _ => Dim::Unknown,
            };
        }
        Ok(vec![fact_tensor(x.dtype, Some(shape))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let (s, e, a, st) = match &self.attrs {
            Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), None),
            None => (
                args.t(1)?.to_i64_vec()?,
                args.t(2)?.to_i64_vec()?,
                ints_input(args, 3)?,
                ints_input(args, 4)?,
            ),
        };
        let (s, e, axes, st) = slice_params(x.rank(), s, e, a, st)?;
        out(k::slice(x, &s, &e, &axes, &st)?)
    }
}

// ---------------------------------------------------------------------------------------
// Gather / Scatter

/// `Gather`: selects slices along an axis by index (negative indices wrap).
/// Spec: https://onnx.ai/onnx/operators/onnx__Gather.html
#[derive(Debug)]
pub struct Gather {
    pub axis: i64,
}

fn parse_gather(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Gather {
        axis: cx.int_or("axis", 0)?,
    }))
}

impl Op for Gather {
    op_common!("Gather");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let x = cx.input(0)?;
        let i = cx.input(1)?;
        idx_dtype_check(i, "Gather indices")?;
        let shape = match (dims(x), dims(i)) {
            (Some(d), Some(id)) => {
                let a = norm_axis(self.axis, d.len())?;
                let mut s = d[..a].to_vec();
                s.extend(id.iter().cloned());
                s.extend(d[a + 1..].iter().cloned());
                Some(s)
            }
            _ => None,
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let a = norm_axis(self.axis, x.rank())?;
        out(k::gather(x, args.t(1)?, a)?)
    }
}

/// `GatherElements`: per-element gather along an axis.
/// Spec: https://onnx.ai/onnx/operators/onnx__GatherElements.html
#[derive(Debug)]
pub struct GatherElements {
    pub axis: i64,
}

fn parse_gather_elements(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(GatherElements {
        axis: cx.int_or("axis", 0)?,
    }))
}

impl Op for GatherElements {
    op_common!("GatherElements");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let i = cx.input(1)?;
        idx_dtype_check(i, "GatherElements indices")?;
        Ok(vec![fact_tensor(x.dtype, i.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let a = norm_axis(self.axis, x.rank())?;
        out(k::gather_elements(x, args.t(1)?, a)?)
    }
}

/// `GatherND` with batch_dims.
/// Spec: https://onnx.ai/onnx/operators/onnx__GatherND.html
#[derive(Debug)]
pub struct GatherND {
    pub batch_dims: usize,
}

fn parse_gather_nd(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let b = cx.int_or("batch_dims", 0)?;
    Ok(Box::new(GatherND {
        batch_dims: usize::try_from(b).map_err(|_| Error::attr("GatherND: negative batch_dims"))?,
    }))
}

impl Op for GatherND {
    op_common!("GatherND");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let i = cx.input(1)?;
        idx_dtype_check(i, "GatherND indices")?;
        let shape = match (dims(x), dims(i)) {
            (Some(d), Some(id)) if !id.is_empty() => match id[id.len() - 1].known() {
                Some(kk) if self.batch_dims + kk <= d.len() => {
                    let mut s = id[..id.len() - 1].to_vec();
                    s.extend(d[self.batch_dims + kk..].iter().cloned());
                    Some(s)
                }
                Some(_) => {
                    return Err(Error::shape(
                        "GatherND: index tuples longer than the data rank",
                    ))
                }
                None => None,
            },
            _ => None,
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::gather_nd(args.t(0)?, args.t(1)?, self.batch_dims)?)
    }
}

/// `ScatterElements` (and the deprecated `Scatter`) with reduction none/add/mul/max/min.
/// Spec: https://onnx.ai/onnx/operators/onnx__ScatterElements.html
#[derive(Debug)]
pub struct ScatterElements {
    pub axis: i64,
    pub reduction: k::Reduction,
}

fn parse_reduction(cx: &NodeCx) -> Result<k::Reduction> {
    if cx.opset >= 16 || cx.node.op_type == "ScatterElements" || cx.node.op_type == "ScatterND" {
        k::Reduction::parse(&cx.string_or("reduction", "none")?)
    } else {
        Ok(k::Reduction::None)
    }
}

fn parse_scatter(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(ScatterElements {
        axis: cx.int_or("axis", 0)?,
        reduction: parse_reduction(cx)?,
    }))
}

impl Op for ScatterElements {
    op_common!("ScatterElements");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        idx_dtype_check(cx.input(1)?, "ScatterElements indices")?;
        let dt = crate::graph::same_dtype(&[x, cx.input(2)?], "ScatterElements")?;
        Ok(vec![fact_tensor(dt, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let a = norm_axis(self.axis, x.rank())?;
        out(k::scatter_elements(
            x,
            args.t(1)?,
            args.t(2)?,
            a,
            self.reduction,
        )?)
    }
}

/// `ScatterND` with reduction none/add/mul/max/min.
/// Spec: https://onnx.ai/onnx/operators/onnx__ScatterND.html
#[derive(Debug)]
pub struct ScatterND {
    pub reduction: k::Reduction,
}

fn parse_scatter_nd(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(ScatterND {
        reduction: parse_reduction(cx)?,
    }))
}

impl Op for ScatterND {
    op_common!("ScatterND");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        idx_dtype_check(cx.input(1)?, "ScatterND indices")?;
        let dt = crate::graph::same_dtype(&[x, cx.input(2)?], "ScatterND")?;
        Ok(vec![fact_tensor(dt, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::scatter_nd(
            args.t(0)?,
            args.t(1)?,
            args.t(2)?,
            self.reduction,
        )?)
    }
}

/// `TensorScatter`: KV-cache style update along an axis (linear or circular).
/// Spec: https://onnx.ai/onnx/operators/onnx__TensorScatter.html
#[derive(Debug)]
pub struct TensorScatter {
    pub axis: i64,
    pub circular: bool,
}

fn parse_tensor_scatter(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let mode = cx.string_or("mode", "linear")?;
    let circular = match mode.as_str() {
        "linear" => false,
        "circular" => true,
        m => return Err(Error::attr(format!("TensorScatter: unknown mode '{m}'"))),
    };
    Ok(Box::new(TensorScatter {
        axis: cx.int_or("axis", -2)?,
        circular,
    }))
}

impl Op for TensorScatter {
    op_common!("TensorScatter");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let dt = crate::graph::same_dtype(&[x, cx.input(1)?], "TensorScatter")?;
        Ok(vec![fact_tensor(dt, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let a = norm_axis(self.axis, x.rank())?;
        out(k::tensor_scatter(
            x,
            args.t(1)?,
            args.opt(2)?,
            a,
            self.circular,
        )?)
    }
}

// ---------------------------------------------------------------------------------------
// Expand, Tile, Pad, generators

/// `Expand`: numpy-style broadcast to a shape.
/// Spec: https://onnx.ai/onnx/operators/onnx__Expand.html
#[derive(Debug)]
pub struct Expand;

impl Op for Expand {
    op_common!("Expand");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let x = cx.input(0)?;
        let s = cx.input(1)?;
        idx_dtype_check(s, "Expand shape")?;
        let shape = match (dims(x), s.const_i64()) {
            (Some(d), Some(v)) => {
                let sd: Vec<Dim> = v
                    .iter()
                    .map(|&e| usize::try_from(e).map(Dim::Known))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| Error::shape(format!("Expand: negative dim in {v:?}")))?;
                Some(broadcast_dims(d, &sd)?)
            }
            (Some(d), None) => s
                .shape
                .as_ref()
                .and_then(|sd| sd.first().and_then(|x| x.known()))
                .map(|n| vec![Dim::Unknown; n.max(d.len())]),
            _ => None,
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let s = k::shape_from_i64(&args.t(1)?.to_i64_vec()?, "Expand")?;
        out(k::expand(args.t(0)?, &s)?)
    }
}

/// `Tile`: repeats the input along each axis.
/// Spec: https://onnx.ai/onnx/operators/onnx__Tile.html
#[derive(Debug)]
pub struct Tile;

fn parse_tile(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    if cx.opset < 6 {
        return Err(Error::unsupported_op("Tile-1 (tiles/axis inputs)"));
    }
    Ok(Box::new(Tile))
}

impl Op for Tile {
    op_common!("Tile");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let x = cx.input(0)?;
        let shape = match (dims(x), cx.input(1)?.const_i64()) {
            (Some(d), Some(r)) => {
                if r.len() != d.len() {
                    return Err(Error::shape("Tile: repeats do not match the rank"));
                }
                Some(
                    d.iter()
                        .zip(&r)
                        .map(|(d, &r)| match (d, r) {
                            (_, 1) => d.clone(),
                            (_, 0) => Dim::Known(0),
                            (Dim::Known(v), r) if r > 0 => usize::try_from(r)
                                .map_or(Dim::Unknown, |r| Dim::Known(v.saturating_mul(r))),
                            _ => Dim::Unknown,
                        })
                        .collect(),
                )
            }
            (Some(d), None) => Some(vec![Dim::Unknown; d.len()]),
            _ => None,
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::tile(args.t(0)?, &args.t(1)?.to_i64_vec()?)?)
    }
}

/// `Pad` (constant/reflect/edge/wrap; pads attribute before opset 11, inputs after).
/// Spec: https://onnx.ai/onnx/operators/onnx__Pad.html
#[derive(Debug)]
pub struct Pad {
    pub mode: k::PadMode,
    /// Opset < 11: pads and value attributes.
    pub attrs: Option<(Vec<i64>, f32)>,
}

fn parse_pad(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let mode = match cx.string_or("mode", "constant")?.as_str() {
        "constant" => k::PadMode::Constant,
        "reflect" => k::PadMode::Reflect,
        "edge" => k::PadMode::Edge,
        "wrap" => k::PadMode::Wrap,
        m => return Err(Error::attr(format!("Pad: unknown mode '{m}'"))),
    };
    let attrs = if cx.opset < 11 {
        let pads = match cx.ints("pads")? {
            Some(p) => p,
            None => cx
                .ints("paddings")?
                .ok_or_else(|| Error::attr("Pad needs 'pads'"))?,
        };
        Some((pads, cx.float_or("value", 0.0)?))
    } else {
        None
    };
    Ok(Box::new(Pad { mode, attrs }))
}

/// Per-axis (begin, end) pads from the flat pads list and optional axes.
fn pad_pairs(rank: usize, pads: &[i64], axes: Option<&[i64]>) -> Result<Vec<(i64, i64)>> {
    let axes: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&x| norm_axis(x, rank))
            .collect::<Result<_>>()?,
        None => (0..rank).collect(),
    };
    let n = axes.len();
    if pads.len() != 2 * n {
        return Err(Error::shape(format!(
            "Pad: {} pads for {n} axes",
            pads.len()
        )));
    }
    let mut out = vec![(0i64, 0i64); rank];
    for (i, &a) in axes.iter().enumerate() {
        out[a] = (pads[i], pads[n + i]);
    }
    Ok(out)
}

impl Op for Pad {
    op_common!("Pad");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let x = cx.input(0)?;
        let Some(d) = dims(x) else {
            return Ok(vec![fact_tensor(x.dtype, None)]);
        };
        let pads = match &self.attrs {
            Some((p, _)) => Some(p.clone()),
            None => cx.input(1)?.const_i64(),
        };
        let axes = match cx.opt(3) {
            None => Some(None),
            Some(f) => f.const_i64().map(Some),
        };
        let shape = match (pads, axes) {
            (Some(p), Some(a)) => {
                let pairs = pad_pairs(d.len(), &p, a.as_deref())?;
                d.iter()
                    .zip(pairs)
                    .map(|(d, (b, e))| match d {
                        _ if b == 0 && e == 0 => d.clone(),
                        Dim::Known(v) => {
                            let n = (*v as i64).saturating_add(b).saturating_add(e);
                            usize::try_from(n).map_or(Dim::Unknown, Dim::Known)
                        }
                        _ => Dim::Unknown,
                    })
                    .collect()
            }
            _ => vec![Dim::Unknown; d.len()],
        };
        Ok(vec![fact_tensor(x.dtype, Some(shape))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let (pads, value) = match &self.attrs {
            Some((p, v)) => (p.clone(), Tensor::scalar(*v).cast(x.dtype())?),
            None => {
                let v = match args.opt(2)? {
                    Some(t) if !t.is_empty() => {
                        let t = t.cast(x.dtype())?;
                        k::with_shape(&t, vec![t.len()])?
                    }
                    _ => Tensor::zeros(x.dtype(), vec![])?,
                };
                (args.t(1)?.to_i64_vec()?, v)
            }
        };
        let axes = ints_input(args, 3)?;
        let pairs = pad_pairs(x.rank(), &pads, axes.as_deref())?;
        out(k::pad(x, &pairs, self.mode, &value)?)
    }
}

/// `CenterCropPad`: crops or zero-pads the given axes around the center.
/// Spec: https://onnx.ai/onnx/operators/onnx__CenterCropPad.html
#[derive(Debug)]
pub struct CenterCropPad {
    pub axes: Option<Vec<i64>>,
}

fn parse_center_crop_pad(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(CenterCropPad {
        axes: cx.ints("axes")?,
    }))
}

impl Op for CenterCropPad {
    op_common!("CenterCropPad");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let shape = match (dims(x), cx.input(1)?.const_i64()) {
            (Some(d), Some(s)) => {
                let mut out = d.to_vec();
                let axes = self
                    .axes
                    .clone()
                    .unwrap_or_else(|| (0..d.len() as i64).collect());
                if axes.len() != s.len() {
                    return Err(Error::shape(
                        "CenterCropPad: shape and axes differ in length",
                    ));
                }
                for (a, v) in axes.iter().zip(&s) {
                    let i = norm_axis(*a, d.len())?;
                    out[i] = Dim::Known(
                        usize::try_from(*v)
                            .map_err(|_| Error::shape("CenterCropPad: negative size"))?,
                    );
                }
                Some(out)
            }
            _ => x.rank().map(|r| vec![Dim::Unknown; r]),
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let s = k::shape_from_i64(&args.t(1)?.to_i64_vec()?, "CenterCropPad")?;
        let axes: Vec<usize> = match &self.axes {
            Some(a) => a
                .iter()
                .map(|&v| norm_axis(v, x.rank()))
                .collect::<Result<_>>()?,
            None => (0..x.rank()).collect(),
        };
        if axes.len() != s.len() {
            return Err(Error::shape(
                "CenterCropPad: shape and axes differ in length",
            ));
        }
        out(k::center_crop_pad(x, &axes, &s)?)
    }
}

/// `ConstantOfShape`: a tensor of the given shape filled with `value` (default 0.0f).
/// Spec: https://onnx.ai/onnx/operators/onnx__ConstantOfShape.html
#[derive(Debug)]
pub struct ConstantOfShape {
    pub value: Tensor,
}

fn parse_constant_of_shape(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let value = match cx.tensor("value")? {
        Some(t) => {
            if t.len() != 1 {
                return Err(Error::attr("ConstantOfShape: value must have one element"));
            }
            t
        }
        None => Tensor::scalar(0f32),
    };
    Ok(Box::new(ConstantOfShape { value }))
}

impl Op for ConstantOfShape {
    op_common!("ConstantOfShape");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let s = cx.input(0)?;
        idx_dtype_check(s, "ConstantOfShape shape")?;
        let dt = Some(self.value.dtype());
        let shape = match s.const_i64() {
            Some(v) => Some(known_dims(&k::shape_from_i64(&v, "ConstantOfShape")?)),
            None => s
                .shape
                .as_ref()
                .and_then(|d| d.first().and_then(|x| x.known()))
                .map(|n| vec![Dim::Unknown; n]),
        };
        // Small constants fold at load like other constant chains.
        if let Some(c) = shape
            .as_ref()
            .and_then(|s| s.iter().map(|d| d.known()).collect::<Option<Vec<_>>>())
        {
            if c.iter().product::<usize>() <= 4096 {
                if let Some(f) = fold(self, cx) {
                    return Ok(f);
                }
            }
        }
        Ok(vec![fact_tensor(dt, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::constant_of_shape(
            &args.t(0)?.to_i64_vec()?,
            &self.value,
        )?)
    }
}

/// `Range`: start, start+delta, … up to limit (exclusive).
/// Spec: https://onnx.ai/onnx/operators/onnx__Range.html
#[derive(Debug)]
pub struct Range;

impl Op for Range {
    op_common!("Range");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let dt = crate::graph::same_dtype(&[cx.input(0)?, cx.input(1)?, cx.input(2)?], "Range")?;
        Ok(vec![fact_tensor(dt, Some(vec![Dim::Unknown]))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::range(args.t(0)?, args.t(1)?, args.t(2)?)?)
    }
}

/// `NonZero`: indices of nonzero elements, shape [rank, count].
/// Spec: https://onnx.ai/onnx/operators/onnx__NonZero.html
#[derive(Debug)]
pub struct NonZero;

impl Op for NonZero {
    op_common!("NonZero");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(f) = fold(self, cx) {
            return Ok(f);
        }
        let r = cx.input(0)?.rank();
        Ok(vec![fact_tensor(
            Some(DType::I64),
            Some(vec![r.map_or(Dim::Unknown, Dim::Known), Dim::Unknown]),
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::non_zero(args.t(0)?)?)
    }
}

/// `OneHot`: one-hot encoding along a new axis.
/// Spec: https://onnx.ai/onnx/operators/onnx__OneHot.html
#[derive(Debug)]
pub struct OneHot {
    pub axis: i64,
}

fn parse_one_hot(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(OneHot {
        axis: cx.int_or("axis", -1)?,
    }))
}

impl Op for OneHot {
    op_common!("OneHot");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let i = cx.input(0)?;
        let depth = cx
            .input(1)?
            .value
            .as_ref()
            .and_then(|t| t.scalar_f64().ok())
            .filter(|d| *d >= 1.0 && *d < 1e15)
            .and_then(|d| usize::try_from(d as u64).ok())
            .map_or(Dim::Unknown, Dim::Known);
        let dt = cx.input(2)?.dtype;
        let shape = match dims(i) {
            Some(d) => {
                let a = norm_axis(self.axis, d.len() + 1)?;
                let mut s = d.to_vec();
                s.insert(a, depth);
                Some(s)
            }
            None => None,
        };
        Ok(vec![fact_tensor(dt, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::one_hot(args.t(0)?, args.t(1)?, args.t(2)?, self.axis)?)
    }
}

/// `EyeLike`: a 2-D identity-like tensor with ones on diagonal `k`.
/// Spec: https://onnx.ai/onnx/operators/onnx__EyeLike.html
#[derive(Debug)]
pub struct EyeLike {
    pub dtype: Option<DType>,
    pub k: i64,
}

fn parse_eye_like(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let dtype = match cx.int("dtype")? {
        Some(c) => {
            Some(DType::from_onnx(i32::try_from(c).map_err(|_| {
                Error::attr(format!("EyeLike: bad dtype {c}"))
            })?)?)
        }
        None => None,
    };
    Ok(Box::new(EyeLike {
        dtype,
        k: cx.int_or("k", 0)?,
    }))
}

impl Op for EyeLike {
    op_common!("EyeLike");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        if let Some(r) = x.rank() {
            if r != 2 {
                return Err(Error::shape(format!(
                    "EyeLike needs a 2-D input, got rank {r}"
                )));
            }
        }
        Ok(vec![fact_tensor(self.dtype.or(x.dtype), x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        out(k::eye_like(
            x.shape(),
            self.k,
            self.dtype.unwrap_or(x.dtype()),
        )?)
    }
}

// ---------------------------------------------------------------------------------------
// DepthToSpace, SpaceToDepth, Trilu, ReverseSequence, Compress, Unique

/// `DepthToSpace` (DCR or CRD).
/// Spec: https://onnx.ai/onnx/operators/onnx__DepthToSpace.html
#[derive(Debug)]
pub struct DepthToSpace {
    pub blocksize: usize,
    pub crd: bool,
}

fn blocksize(cx: &NodeCx) -> Result<usize> {
    let b = cx.req_int("blocksize")?;
    usize::try_from(b)
        .ok()
        .filter(|&b| b >= 1)
        .ok_or_else(|| Error::attr(format!("blocksize {b} must be positive")))
}

fn parse_depth_to_space(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let crd = match cx.string_or("mode", "DCR")?.as_str() {
        "DCR" => false,
        "CRD" => true,
        m => return Err(Error::attr(format!("DepthToSpace: unknown mode '{m}'"))),
    };
    Ok(Box::new(DepthToSpace {
        blocksize: blocksize(cx)?,
        crd,
    }))
}

fn mul_dim(d: &Dim, b: usize) -> Dim {
    match d {
        Dim::Known(v) => Dim::Known(v.saturating_mul(b)),
        _ if b == 1 => d.clone(),
        _ => Dim::Unknown,
    }
}

fn div_dim(d: &Dim, b: usize) -> Dim {
    match d {
        Dim::Known(v) => Dim::Known(v / b),
        _ if b == 1 => d.clone(),
        _ => Dim::Unknown,
    }
}

impl Op for DepthToSpace {
    op_common!("DepthToSpace");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let b = self.blocksize;
        let shape = match dims(x) {
            Some(d) if d.len() == 4 => Some(vec![
                d[0].clone(),
                div_dim(&d[1], b.saturating_mul(b)),
                mul_dim(&d[2], b),
                mul_dim(&d[3], b),
            ]),
            Some(_) => return Err(Error::shape("DepthToSpace needs a 4-D input")),
            None => None,
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::depth_to_space(args.t(0)?, self.blocksize, self.crd)?)
    }
}

/// `SpaceToDepth`.
/// Spec: https://onnx.ai/onnx/operators/onnx__SpaceToDepth.html
#[derive(Debug)]
pub struct SpaceToDepth {
    pub blocksize: usize,
}

fn parse_space_to_depth(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(SpaceToDepth {
        blocksize: blocksize(cx)?,
    }))
}

impl Op for SpaceToDepth {
    op_common!("SpaceToDepth");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let b = self.blocksize;
        let shape = match dims(x) {
            Some(d) if d.len() == 4 => Some(vec![
                d[0].clone(),
                mul_dim(&d[1], b.saturating_mul(b)),
                div_dim(&d[2], b),
                div_dim(&d[3], b),
            ]),
            Some(_) => return Err(Error::shape("SpaceToDepth needs a 4-D input")),
            None => None,
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::space_to_depth(args.t(0)?, self.blocksize)?)
    }
}

/// `Trilu`: keeps the upper or lower triangle (offset by k) of the last two dims.
/// Spec: https://onnx.ai/onnx/operators/onnx__Trilu.html
#[derive(Debug)]
pub struct Trilu {
    pub upper: bool,
}

fn parse_trilu(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Trilu {
        upper: cx.int_or("upper", 1)? != 0,
    }))
}

impl Op for Trilu {
    op_common!("Trilu");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        Ok(vec![fact_tensor(x.dtype, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let kk = match args.opt(1)? {
            Some(t) => t.scalar_i64()?,
            None => 0,
        };
        out(k::trilu(args.t(0)?, kk, self.upper)?)
    }
}

/// `ReverseSequence`: reverses the first `sequence_lens[b]` time steps of each batch.
/// Spec: https://onnx.ai/onnx/operators/onnx__ReverseSequence.html
#[derive(Debug)]
pub struct ReverseSequence {
    pub batch_axis: usize,
    pub time_axis: usize,
}

fn parse_reverse_sequence(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let b = cx.int_or("batch_axis", 1)?;
    let t = cx.int_or("time_axis", 0)?;
    if !((b == 0 && t == 1) || (b == 1 && t == 0)) {
        return Err(Error::attr(
            "ReverseSequence: batch_axis/time_axis must be 0 and 1",
        ));
    }
    Ok(Box::new(ReverseSequence {
        batch_axis: b as usize,
        time_axis: t as usize,
    }))
}

impl Op for ReverseSequence {
    op_common!("ReverseSequence");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        Ok(vec![fact_tensor(x.dtype, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::reverse_sequence(
            args.t(0)?,
            args.t(1)?,
            self.batch_axis,
            self.time_axis,
        )?)
    }
}

/// `Compress`: selects slices where a boolean condition holds.
/// Spec: https://onnx.ai/onnx/operators/onnx__Compress.html
#[derive(Debug)]
pub struct Compress {
    pub axis: Option<i64>,
}

fn parse_compress(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Compress {
        axis: cx.int("axis")?,
    }))
}

impl Op for Compress {
    op_common!("Compress");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        // A known condition (a constant, or the value at run time) gives the length.
        let kept = cx.input(1)?.const_i64().map_or(Dim::Unknown, |c| {
            Dim::Known(c.iter().filter(|&&v| v != 0).count())
        });
        let shape = match (self.axis, dims(x)) {
            (None, _) => Some(vec![kept]),
            (Some(a), Some(d)) => {
                let i = norm_axis(a, d.len())?;
                let mut s = d.to_vec();
                s[i] = kept;
                Some(s)
            }
            _ => None,
        };
        Ok(vec![fact_tensor(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let a = self.axis.map(|a| norm_axis(a, x.rank())).transpose()?;
        out(k::compress(x, args.t(1)?, a)?)
    }
}

/// `Unique`: unique elements or slices, with first indices, inverse indices and counts.
/// Spec: https://onnx.ai/onnx/operators/onnx__Unique.html
#[derive(Debug)]
pub struct Unique {
    pub axis: Option<i64>,
    pub sorted: bool,
}

fn parse_unique(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Unique {
        axis: cx.int("axis")?,
        sorted: cx.int_or("sorted", 1)? != 0,
    }))
}

impl Op for Unique {
    op_common!("Unique");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let y = match (self.axis, dims(x)) {
            (None, _) => Some(vec![Dim::Unknown]),
            (Some(a), Some(d)) => {
                let i = norm_axis(a, d.len())?;
                let mut s = d.to_vec();
                s[i] = Dim::Unknown;
                Some(s)
            }
            _ => None,
        };
        let v = || fact_tensor(Some(DType::I64), Some(vec![Dim::Unknown]));
        Ok(vec![fact_tensor(x.dtype, y), v(), v(), v()])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let a = self.axis.map(|a| norm_axis(a, x.rank())).transpose()?;
        Ok(k::unique(x, a, self.sorted)?
            .into_iter()
            .map(Value::from)
            .collect())
    }
}

// ---------------------------------------------------------------------------------------
// Sequences

fn seq_arg<'a>(args: &Args<'a>, i: usize) -> Result<&'a [Arc<Tensor>]> {
    args.value(i)
        .ok_or_else(|| Error::input(format!("missing sequence input {i}")))?
        .sequence()
}

fn seq_dtype(cx: &InferCx, i: usize) -> Option<DType> {
    cx.inputs.get(i).and_then(|f| f.dtype)
}

/// Position in a sequence of `n` (negative wraps once); `allow_end` admits `n` (insert).
fn seq_pos(p: i64, n: usize, allow_end: bool, what: &str) -> Result<usize> {
    let ni = n as i64;
    let q = if p < 0 { p + ni } else { p };
    let hi = if allow_end { ni } else { ni - 1 };
    if q < 0 || q > hi {
        return Err(Error::runtime(format!(
            "{what}: position {p} out of range for a sequence of {n}"
        )));
    }
    Ok(q as usize)
}

/// `SequenceConstruct`: a sequence of the input tensors.
/// Spec: https://onnx.ai/onnx/operators/onnx__SequenceConstruct.html
#[derive(Debug)]
pub struct SequenceConstruct;

impl Op for SequenceConstruct {
    op_common!("SequenceConstruct");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let facts: Vec<&Fact> = cx.inputs.iter().collect();
        Ok(vec![Fact::sequence(crate::graph::same_dtype(
            &facts,
            "SequenceConstruct",
        )?)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let mut v = Vec::with_capacity(args.len());
        for i in 0..args.len() {
            match args.value(i) {
                Some(Value::Tensor(t)) => v.push(t.clone()),
                Some(other) => v.push(Arc::new(other.tensor()?.clone())),
                None => return Err(Error::input("SequenceConstruct: missing input")),
            }
        }
        Ok(vec![Value::Sequence(v)])
    }
}

/// `SequenceEmpty`: an empty sequence of a given element type.
/// Spec: https://onnx.ai/onnx/operators/onnx__SequenceEmpty.html
#[derive(Debug)]
pub struct SequenceEmpty {
    pub dtype: DType,
}

fn parse_sequence_empty(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let dtype = match cx.int("dtype")? {
        Some(c) => DType::from_onnx(
            i32::try_from(c).map_err(|_| Error::attr(format!("SequenceEmpty: bad dtype {c}")))?,
        )?,
        None => DType::F32,
    };
    Ok(Box::new(SequenceEmpty { dtype }))
}

impl Op for SequenceEmpty {
    op_common!("SequenceEmpty");
    fn infer(&self, _cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact::sequence(Some(self.dtype))])
    }
    fn run(&self, _cx: &mut RunCx, _args: &Args) -> Result<Vec<Value>> {
        Ok(vec![Value::Sequence(Vec::new())])
    }
}

/// `SequenceInsert`: inserts a tensor at a position (default: the end).
/// Spec: https://onnx.ai/onnx/operators/onnx__SequenceInsert.html
#[derive(Debug)]
pub struct SequenceInsert;

impl Op for SequenceInsert {
    op_common!("SequenceInsert");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact::sequence(seq_dtype(cx, 0).or(seq_dtype(cx, 1)))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let mut s = seq_arg(args, 0)?.to_vec();
        let t = match args.value(1) {
            Some(Value::Tensor(t)) => t.clone(),
            Some(v) => Arc::new(v.tensor()?.clone()),
            None => return Err(Error::input("SequenceInsert: missing tensor")),
        };
        if let Some(first) = s.first() {
            if first.dtype() != t.dtype() {
                return Err(Error::dtype(
                    "SequenceInsert: tensor type differs from the sequence",
                ));
            }
        }
        let p = match args.opt(2)? {
            Some(p) => seq_pos(p.scalar_i64()?, s.len(), true, "SequenceInsert")?,
            None => s.len(),
        };
        s.insert(p, t);
        Ok(vec![Value::Sequence(s)])
    }
}

/// `SequenceAt`: the tensor at a position.
/// Spec: https://onnx.ai/onnx/operators/onnx__SequenceAt.html
#[derive(Debug)]
pub struct SequenceAt;

impl Op for SequenceAt {
    op_common!("SequenceAt");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact::new(seq_dtype(cx, 0), None)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let s = seq_arg(args, 0)?;
        let p = seq_pos(args.t(1)?.scalar_i64()?, s.len(), false, "SequenceAt")?;
        Ok(vec![Value::Tensor(s[p].clone())])
    }
}

/// `SequenceErase`: removes the tensor at a position (default: the last).
/// Spec: https://onnx.ai/onnx/operators/onnx__SequenceErase.html
#[derive(Debug)]
pub struct SequenceErase;

impl Op for SequenceErase {
    op_common!("SequenceErase");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact::sequence(seq_dtype(cx, 0))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let mut s = seq_arg(args, 0)?.to_vec();
        let p = match args.opt(1)? {
            Some(p) => p.scalar_i64()?,
            None => -1,
        };
        let p = seq_pos(p, s.len(), false, "SequenceErase")?;
        s.remove(p);
        Ok(vec![Value::Sequence(s)])
    }
}

/// `SequenceLength`: number of tensors, as an int64 scalar.
/// Spec: https://onnx.ai/onnx/operators/onnx__SequenceLength.html
#[derive(Debug)]
pub struct SequenceLength;

impl Op for SequenceLength {
    op_common!("SequenceLength");
    fn infer(&self, _cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact::known(DType::I64, &[])])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(Tensor::scalar(seq_arg(args, 0)?.len() as i64))
    }
}

/// `SplitToSequence`: splits a tensor into a sequence.
/// Spec: https://onnx.ai/onnx/operators/onnx__SplitToSequence.html
#[derive(Debug)]
pub struct SplitToSequence {
    pub axis: i64,
    pub keepdims: bool,
}

fn parse_split_to_sequence(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(SplitToSequence {
        axis: cx.int_or("axis", 0)?,
        keepdims: cx.int_or("keepdims", 1)? != 0,
    }))
}

impl Op for SplitToSequence {
    op_common!("SplitToSequence");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact::sequence(seq_dtype(cx, 0))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let a = norm_axis(self.axis, x.rank())?;
        let len = x.shape()[a];
        let (sizes, squeeze) = match args.opt(1)? {
            None => (vec![1; len], !self.keepdims),
            Some(s) if s.rank() == 0 => {
                let c = s.scalar_i64()?;
                let c = usize::try_from(c).ok().filter(|&c| c > 0).ok_or_else(|| {
                    Error::runtime(format!("SplitToSequence: split {c} must be positive"))
                })?;
                let mut v = vec![c; len / c];
                if len % c != 0 {
                    v.push(len % c);
                }
                (v, false)
            }
            Some(s) => (
                k::shape_from_i64(&s.to_i64_vec()?, "SplitToSequence")?,
                false,
            ),
        };
        let parts = k::split(x, a, &sizes)?;
        let mut v = Vec::with_capacity(parts.len());
        for p in parts {
            let p = if squeeze {
                let mut sh = p.shape().to_vec();
                sh.remove(a);
                p.reshape(sh)?
            } else {
                p
            };
            v.push(Arc::new(p));
        }
        Ok(vec![Value::Sequence(v)])
    }
}

/// `ConcatFromSequence`: concatenates (or stacks, with new_axis) a sequence.
/// Spec: https://onnx.ai/onnx/operators/onnx__ConcatFromSequence.html
#[derive(Debug)]
pub struct ConcatFromSequence {
    pub axis: i64,
    pub new_axis: bool,
}

fn parse_concat_from_sequence(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(ConcatFromSequence {
        axis: cx.req_int("axis")?,
        new_axis: cx.int_or("new_axis", 0)? != 0,
    }))
}

impl Op for ConcatFromSequence {
    op_common!("ConcatFromSequence");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact::new(seq_dtype(cx, 0), None)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let s = seq_arg(args, 0)?;
        let first = s
            .first()
            .ok_or_else(|| Error::runtime("ConcatFromSequence of an empty sequence"))?;
        let ts: Vec<&Tensor> = s.iter().map(|t| t.as_ref()).collect();
        if self.new_axis {
            let a = norm_axis(self.axis, first.rank() + 1)?;
            out(stack(&ts, a)?)
        } else {
            let a = norm_axis(self.axis, first.rank())?;
            out(concat(&ts, a)?)
        }
    }
}

/// `SequenceMap`: runs a body graph on each element of the input sequence(s).
/// Spec: https://onnx.ai/onnx/operators/onnx__SequenceMap.html
#[derive(Debug)]
pub struct SequenceMap {
    pub body: Graph,
    pub plan: Plan,
}

fn parse_sequence_map(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let body = cx.req_graph("body")?;
    if body.inputs.len() != cx.n_inputs() {
        return Err(Error::invalid_model(format!(
            "SequenceMap body takes {} inputs, the node has {}",
            body.inputs.len(),
            cx.n_inputs()
        )));
    }
    if body.outputs.len() != cx.n_outputs() {
        return Err(Error::invalid_model(
            "SequenceMap body outputs do not match the node",
        ));
    }
    let plan = Plan::new(&body);
    Ok(Box::new(SequenceMap { body, plan }))
}

impl Op for SequenceMap {
    op_common!("SequenceMap");
    fn infer(&self, _cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(self
            .body
            .outputs
            .iter()
            .map(|&o| Fact::sequence(self.body.values[o].fact.dtype))
            .collect())
    }
    fn run(&self, cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        if cx.depth >= cx.options.max_depth {
            return Err(Error::runtime("SequenceMap: subgraph nesting too deep"));
        }
        let n = seq_arg(args, 0)?.len();
        // Formal inputs after the first: sequences (indexed) or tensors (shared).
        let n_formal = self.body.inputs.len();
        let mut extra: Vec<&Value> = Vec::with_capacity(n_formal);
        for i in 0..n_formal {
            let v = args
                .value(i)
                .ok_or_else(|| Error::input(format!("SequenceMap: missing input {i}")))?;
            if let Value::Sequence(s) = v {
                if s.len() != n {
                    return Err(Error::shape("SequenceMap: sequences differ in length"));
                }
            }
            extra.push(v);
        }
        let mut outs: Vec<Vec<Arc<Tensor>>> = vec![Vec::with_capacity(n); self.body.outputs.len()];
        for it in 0..n {
            let inputs: Vec<Value> = extra
                .iter()
                .map(|v| match v {
                    Value::Sequence(s) => Value::Tensor(s[it].clone()),
                    other => (*other).clone(),
                })
                .collect();
            let res = run_subgraph(cx, &self.body, &self.plan, inputs, args.implicit)?;
            for (o, v) in outs.iter_mut().zip(res) {
                o.push(match v {
                    Value::Tensor(t) => t,
                    other => Arc::new(other.into_tensor()?),
                });
            }
        }
        Ok(outs.into_iter().map(Value::Sequence).collect())
    }
    fn subgraphs(&self) -> Vec<&Graph> {
        vec![&self.body]
    }
}

// ---------------------------------------------------------------------------------------
// Optionals

/// `Optional`: wraps its input, or makes an empty optional of the given type.
/// Spec: https://onnx.ai/onnx/operators/onnx__Optional.html
#[derive(Debug)]
pub struct Optional;

fn parse_optional(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    // The `type` attribute only matters for the (untyped at run time) empty optional.
    cx.has("type");
    Ok(Box::new(Optional))
}

impl Op for Optional {
    op_common!("Optional");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact {
            kind: ValueKind::Optional,
            dtype: cx.opt(0).and_then(|f| f.dtype),
            shape: None,
            value: None,
        }])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![Value::Optional(
            args.value(0).map(|v| Box::new(v.clone())),
        )])
    }
    fn is_deterministic(&self) -> bool {
        // Folding would lose the optional wrapper in facts; keep it a node.
        false
    }
}

/// `OptionalHasElement`: whether an optional (or an omitted input) holds a value.
/// Spec: https://onnx.ai/onnx/operators/onnx__OptionalHasElement.html
#[derive(Debug)]
pub struct OptionalHasElement;

impl Op for OptionalHasElement {
    op_common!("OptionalHasElement");
    fn infer(&self, _cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact::known(DType::Bool, &[])])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let has = match args.value(0) {
            None | Some(Value::Optional(None)) => false,
            Some(_) => true,
        };
        out(Tensor::scalar(has))
    }
    fn is_deterministic(&self) -> bool {
        false
    }
}

/// `OptionalGetElement`: the value inside an optional (tensors and sequences pass through).
/// Spec: https://onnx.ai/onnx/operators/onnx__OptionalGetElement.html
#[derive(Debug)]
pub struct OptionalGetElement;

impl Op for OptionalGetElement {
    op_common!("OptionalGetElement");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        Ok(vec![match x.kind {
            ValueKind::Optional => Fact::unknown(),
            _ => Fact {
                value: None,
                ..x.clone()
            },
        }])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        match args.value(0) {
            Some(Value::Optional(Some(v))) => Ok(vec![(**v).clone()]),
            Some(Value::Optional(None)) => {
                Err(Error::runtime("OptionalGetElement of an empty optional"))
            }
            Some(v) => Ok(vec![v.clone()]),
            None => Err(Error::input("OptionalGetElement: missing input")),
        }
    }
    fn is_deterministic(&self) -> bool {
        false
    }
}
