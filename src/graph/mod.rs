//! The graph IR: typed values, nodes holding ops from one op table, and subgraphs.
//!
//! A [`Graph`] is built from ONNX by [`build`], checked by shape inference
//! ([`shape`]), rewritten by [`passes`], then scheduled by [`crate::plan`].
//! Each op is a struct implementing [`Op`]; it parses its own attributes, states its
//! type/shape rule and has a CPU kernel entry point. A second backend claims nodes by
//! downcasting `op.as_any()` to the op structs it knows.

pub mod attrs;
pub mod build;
pub mod ops;
pub mod passes;
pub mod shape;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::any::Any;
use std::fmt;
use std::sync::Arc;

pub use attrs::NodeCx;
pub use shape::{Dim, Fact};

/// Index of a value in its graph.
pub type ValueId = usize;

/// A run-time value: a tensor, a sequence of tensors, or an optional.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Tensor(Arc<Tensor>),
    Sequence(Vec<Arc<Tensor>>),
    /// An optional; None is the empty optional.
    Optional(Option<Box<Value>>),
}

impl Value {
    pub fn tensor(&self) -> Result<&Tensor> {
        match self {
            Value::Tensor(t) => Ok(t),
            Value::Sequence(_) => Err(Error::dtype("expected a tensor, got a sequence")),
            Value::Optional(Some(v)) => v.tensor(),
            Value::Optional(None) => Err(Error::dtype("expected a tensor, got an empty optional")),
        }
    }
    pub fn sequence(&self) -> Result<&[Arc<Tensor>]> {
        match self {
            Value::Sequence(s) => Ok(s),
            Value::Optional(Some(v)) => v.sequence(),
            _ => Err(Error::dtype("expected a sequence")),
        }
    }
    pub fn into_tensor(self) -> Result<Tensor> {
        match self {
            Value::Tensor(t) => Ok(Arc::try_unwrap(t).unwrap_or_else(|t| (*t).clone())),
            Value::Optional(Some(v)) => v.into_tensor(),
            _ => Err(Error::dtype("expected a tensor")),
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Value {
        Value::Tensor(Arc::new(t))
    }
}

/// Declared or inferred information about a value.
#[derive(Clone, Debug)]
pub struct ValueInfo {
    pub name: String,
    pub fact: Fact,
}

/// One operator instance.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    /// Op type as written in the model (fused nodes keep the first node's type).
    pub op_type: String,
    pub domain: String,
    pub op: Box<dyn Op>,
    /// `None` where the model omits an optional input.
    pub inputs: Vec<Option<ValueId>>,
    /// `None` where the model leaves an optional output unnamed.
    pub outputs: Vec<Option<ValueId>>,
    /// Outer-scope values that this node's subgraphs read, in order, after the formal inputs.
    pub implicit_inputs: Vec<ValueId>,
    /// The node's scalar and list attributes as written (tensor and graph attributes are
    /// dropped: the op holds what it parsed from them). Passes that turn a node into
    /// another op (QDQ fusion) re-parse these through the op table.
    pub attrs: Vec<crate::onnx::proto::AttributeProto>,
    /// Opset version of the node's domain.
    pub opset: i64,
}

/// A graph (the model's main graph or an If/Loop/Scan body).
#[derive(Debug, Default)]
pub struct Graph {
    pub values: Vec<ValueInfo>,
    /// Nodes in a valid execution order.
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// Constant values (initializers, folded Constants), indexed by value id.
    pub consts: Vec<Option<Value>>,
    /// For subgraphs: values that come from an enclosing scope, by name.
    pub captures: Vec<(ValueId, String)>,
}

impl Graph {
    pub fn value_name(&self, id: ValueId) -> &str {
        self.values.get(id).map_or("?", |v| v.name.as_str())
    }
    pub fn constant(&self, id: ValueId) -> Option<&Value> {
        self.consts.get(id).and_then(|c| c.as_ref())
    }
    pub fn const_tensor(&self, id: ValueId) -> Option<&Tensor> {
        match self.constant(id) {
            Some(Value::Tensor(t)) => Some(t),
            _ => None,
        }
    }
    pub fn add_value(&mut self, name: String, fact: Fact) -> ValueId {
        self.values.push(ValueInfo { name, fact });
        self.consts.push(None);
        self.values.len() - 1
    }
    /// Names of the outer values this graph reads.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.captures.iter().map(|(_, n)| n.as_str())
    }
    /// Counts nodes here and in every subgraph.
    pub fn node_count_deep(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| {
                1 + n
                    .op
                    .subgraphs()
                    .iter()
                    .map(|g| g.node_count_deep())
                    .sum::<usize>()
            })
            .sum()
    }
}

/// The arguments of one kernel call.
pub struct Args<'a> {
    pub inputs: &'a [Option<&'a Value>],
    /// Values for the node's implicit (outer-scope) inputs, by name.
    pub implicit: &'a [(&'a str, &'a Value)],
}

impl<'a> Args<'a> {
    pub fn len(&self) -> usize {
        self.inputs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }
    /// Required tensor input `i`.
    pub fn t(&self, i: usize) -> Result<&'a Tensor> {
        match self.inputs.get(i) {
            Some(Some(v)) => v.tensor(),
            _ => Err(Error::input(format!("missing required input {i}"))),
        }
    }
    /// Optional tensor input `i` (absent or omitted gives None).
    pub fn opt(&self, i: usize) -> Result<Option<&'a Tensor>> {
        match self.inputs.get(i) {
            Some(Some(v)) => v.tensor().map(Some),
            _ => Ok(None),
        }
    }
    /// Any value input `i`.
    pub fn value(&self, i: usize) -> Option<&'a Value> {
        self.inputs.get(i).copied().flatten()
    }
}

/// Context of one kernel call: the knobs a kernel may need and the way back into the
/// executor for subgraphs.
pub struct RunCx<'a> {
    pub options: &'a crate::plan::RunOptions,
    /// Nesting depth of subgraph execution, bounded to stop runaway recursion.
    pub depth: u32,
    /// When set, the top-level graph's executor records each node's wall time here.
    pub profile: Option<Vec<crate::plan::NodeTime>>,
}

/// Facts about the node's inputs at load time, for shape inference.
pub struct InferCx<'a> {
    pub inputs: &'a [Fact],
    pub opset: i64,
}

impl<'a> InferCx<'a> {
    pub fn input(&self, i: usize) -> Result<&'a Fact> {
        self.inputs
            .get(i)
            .ok_or_else(|| Error::invalid_model(format!("missing input {i}")))
    }
    /// Input `i` if present (omitted optionals are `Fact::absent()`).
    pub fn opt(&self, i: usize) -> Option<&'a Fact> {
        self.inputs.get(i).filter(|f| !f.is_absent())
    }
}

/// An operator: attributes parsed at load, a type/shape rule, and a CPU kernel.
pub trait Op: fmt::Debug + Send + Sync + Any {
    /// The ONNX op type this struct implements (e.g. "Conv").
    fn name(&self) -> &'static str;
    /// Output facts from input facts. Must check what can be checked at load time and
    /// may leave shapes unknown where they depend on values.
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>>;
    /// CPU evaluation. Shapes and dtypes were validated by `infer` only as far as they were
    /// known at load, so kernels check what they rely on and return errors, never panic.
    fn run(&self, cx: &mut RunCx, args: &Args) -> Result<Vec<Value>>;
    /// Subgraphs held by this op (If, Loop, Scan).
    fn subgraphs(&self) -> Vec<&Graph> {
        Vec::new()
    }
    /// What the op feeds each subgraph's inputs (one list per subgraph, in the order of
    /// `subgraphs`), given its own input facts: fills in body inputs the model leaves
    /// untyped. Empty: nothing known.
    fn body_input_facts(&self, _inputs: &[Fact]) -> Vec<Vec<Fact>> {
        Vec::new()
    }
    /// The same subgraphs, for inference and passes that rewrite them. An op that
    /// returns them here must not cache anything derived from them before its first run.
    fn subgraphs_mut(&mut self) -> Vec<&mut Graph> {
        Vec::new()
    }
    /// False for ops whose output is not a function of their inputs (random ops), which
    /// constant folding must leave alone.
    fn is_deterministic(&self) -> bool {
        true
    }
    /// Called once at load, after the passes, with the node's inputs that are load-time
    /// constants (None for the others). Ops with weights pack them here into the layout
    /// their kernel wants (GEMM panels, widened int8) so that no run repeats the work;
    /// `run` still receives the same constant inputs and must give the same result
    /// whether or not this was called.
    fn prepack(&mut self, _consts: &[Option<&Tensor>]) -> Result<()> {
        Ok(())
    }
    /// True for pointwise ops: output element i is a function of element i of each
    /// input under numpy broadcasting, and of nothing else (no position, no other
    /// element). The lookup-table pass (`passes::lut`) relies on it to replace a chain
    /// of such ops on an 8-bit tensor by a 256-entry table.
    fn is_elementwise(&self) -> bool {
        false
    }
    fn as_any(&self) -> &dyn Any;
    /// Mutable access for passes that rewrite an op in place (fusions); ops that no
    /// pass rewrites may keep the default.
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        None
    }
}

/// Implements `name`, `as_any` and `as_any_mut` for an op struct.
#[macro_export]
macro_rules! op_common {
    ($name:expr) => {
        fn name(&self) -> &'static str {
            $name
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
            Some(self)
        }
    };
}

/// A fused activation, applied by the producing kernel in place (see `passes::fuse`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Relu,
    Clip {
        min: f32,
        max: f32,
    },
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    Sigmoid,
    /// x * sigmoid(x)
    Silu,
    LeakyRelu {
        alpha: f32,
    },
    Tanh,
}

impl Activation {
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Clip { min, max } => x.max(min).min(max),
            Activation::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Activation::Sigmoid => sigmoid(x),
            Activation::Silu => x * sigmoid(x),
            Activation::LeakyRelu { alpha } => {
                if x < 0.0 {
                    alpha * x
                } else {
                    x
                }
            }
            Activation::Tanh => x.tanh(),
        }
    }
    pub fn apply_slice(self, v: &mut [f32]) {
        for x in v {
            *x = self.apply(*x);
        }
    }
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Dtype check helper for `infer`: all listed facts with known dtypes must agree.
pub fn same_dtype(facts: &[&Fact], what: &str) -> Result<Option<DType>> {
    let mut dt = None;
    for f in facts {
        if let Some(d) = f.dtype {
            match dt {
                None => dt = Some(d),
                Some(x) if x != d => {
                    return Err(Error::dtype(format!(
                        "{what}: inputs have different types {x} and {d}"
                    )))
                }
                _ => {}
            }
        }
    }
    Ok(dt)
}
