//! The public API shared by native callers, the CLI and the wasm bindings: load a model
//! from bytes once, then run it many times.

pub mod io;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

use crate::error::{Error, Result};
use crate::graph::build::{build_model, Opsets};
use crate::graph::shape::{infer_graph, ValueKind};
use crate::graph::{passes, Dim, Fact, Graph, RunCx, Value};
use crate::onnx::decode_model;
use crate::plan::{run_graph, NodeTime, Plan, RunOptions};
use crate::tensor::{set_memory_budget, Tensor};
use std::collections::{BTreeMap, HashMap};

/// Outputs by name, in model order.
pub type Named<T> = Vec<(String, T)>;

/// Options for loading.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Run graph optimisations (constant folding, dead-node removal, fusions).
    pub optimize: bool,
    /// Largest tensor a model may declare or produce, in bytes.
    pub memory_budget: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            optimize: true,
            memory_budget: crate::tensor::DEFAULT_BUDGET,
        }
    }
}

/// A model input or output as declared.
#[derive(Debug, Clone)]
pub struct IoInfo {
    pub name: String,
    pub fact: Fact,
    /// True for an input that has an initializer default and may be left out.
    pub optional: bool,
}

/// Model-level facts for `info`.
#[derive(Debug, Clone, Default)]
pub struct ModelMeta {
    pub ir_version: i64,
    pub producer: String,
    pub opsets: Vec<(String, i64)>,
    pub metadata: Vec<(String, String)>,
    /// Op type → count, over the graph as loaded (before optimisation), subgraphs included.
    pub op_histogram: BTreeMap<String, usize>,
}

/// A loaded, validated and planned model.
#[derive(Debug)]
pub struct Model {
    graph: Graph,
    plan: Plan,
    opsets: Opsets,
    inputs: Vec<IoInfo>,
    outputs: Vec<IoInfo>,
    meta: ModelMeta,
    options: RunOptions,
}

/// Restores the previous budget when dropped, so the thread-wide setting is scoped.
struct BudgetGuard(usize);
impl Drop for BudgetGuard {
    fn drop(&mut self) {
        set_memory_budget(self.0);
    }
}

fn histogram(g: &Graph, h: &mut BTreeMap<String, usize>) {
    for n in &g.nodes {
        let key = if n.domain.is_empty() {
            n.op_type.clone()
        } else {
            format!("{}.{}", n.domain, n.op_type)
        };
        *h.entry(key).or_default() += 1;
        for sg in n.op.subgraphs() {
            histogram(sg, h);
        }
    }
}

impl Model {
    /// Decodes, validates, infers shapes, optimises and plans a model.
    pub fn load(bytes: &[u8]) -> Result<Model> {
        Model::load_with(bytes, &LoadOptions::default())
    }

    pub fn load_with(bytes: &[u8], opts: &LoadOptions) -> Result<Model> {
        guard_panics(|| Model::load_inner(bytes, opts))
    }

    fn load_inner(bytes: &[u8], opts: &LoadOptions) -> Result<Model> {
        let _guard = BudgetGuard(set_memory_budget(opts.memory_budget));
        let proto = decode_model(bytes)?;
        let (mut graph, opsets) = build_model(&proto)?;
        let mut op_histogram = BTreeMap::new();
        histogram(&graph, &mut op_histogram);
        let opset_fn = |d: &str| opsets.get(d);
        infer_graph(&mut graph, &opset_fn)?;
        if opts.optimize {
            passes::optimize(&mut graph)?;
        }
        let plan = Plan::new(&graph);
        let io = |ids: &[usize]| -> Vec<IoInfo> {
            ids.iter()
                .map(|&id| IoInfo {
                    name: graph.values[id].name.clone(),
                    fact: graph.values[id].fact.clone(),
                    optional: graph.consts[id].is_some(),
                })
                .collect()
        };
        let inputs = io(&graph.inputs);
        let outputs = io(&graph.outputs);
        let mut ops: Vec<_> = opsets.0.iter().map(|(k, v)| (k.clone(), *v)).collect();
        ops.sort();
        let meta = ModelMeta {
            ir_version: proto.ir_version,
            producer: format!("{} {}", proto.producer_name, proto.producer_version)
                .trim()
                .to_string(),
            opsets: ops,
            metadata: proto.metadata_props.clone(),
            op_histogram,
        };
        let options = RunOptions {
            memory_budget: opts.memory_budget,
            ..RunOptions::default()
        };
        Ok(Model {
            graph,
            plan,
            opsets,
            inputs,
            outputs,
            meta,
            options,
        })
    }

    pub fn inputs(&self) -> &[IoInfo] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[IoInfo] {
        &self.outputs
    }
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    pub fn opset(&self, domain: &str) -> i64 {
        self.opsets.get(domain)
    }
    pub fn run_options_mut(&mut self) -> &mut RunOptions {
        &mut self.options
    }

    /// Runs with tensors given by input name; returns (output name, tensor) in model order.
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let vals: Vec<(&str, Value)> = inputs
            .iter()
            .map(|(n, t)| (*n, Value::from(t.clone())))
            .collect();
        let outs = self.run_values(vals)?;
        outs.into_iter()
            .map(|(n, v)| {
                let t = v
                    .into_tensor()
                    .map_err(|_| Error::runtime(format!("output '{n}' is not a tensor")))?;
                Ok((n, t))
            })
            .collect()
    }

    /// Runs with any values (tensors, sequences, optionals) by input name.
    pub fn run_values(&self, inputs: Vec<(&str, Value)>) -> Result<Vec<(String, Value)>> {
        guard_panics(|| self.run_inner(inputs, false)).map(|(o, _)| o)
    }

    /// Runs like [`Model::run`] and also returns each node's wall time, in run order
    /// (the top-level graph's nodes; a subgraph's time counts to its If/Loop/Scan).
    pub fn run_profiled(
        &self,
        inputs: &[(&str, Tensor)],
    ) -> Result<(Named<Tensor>, Vec<NodeTime>)> {
        let vals: Vec<(&str, Value)> = inputs
            .iter()
            .map(|(n, t)| (*n, Value::from(t.clone())))
            .collect();
        let (outs, prof) = guard_panics(|| self.run_inner(vals, true))?;
        let outs = outs
            .into_iter()
            .map(|(n, v)| {
                let t = v
                    .into_tensor()
                    .map_err(|_| Error::runtime(format!("output '{n}' is not a tensor")))?;
                Ok((n, t))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((outs, prof))
    }

    fn run_inner(
        &self,
        inputs: Vec<(&str, Value)>,
        profile: bool,
    ) -> Result<(Named<Value>, Vec<NodeTime>)> {
        let _guard = BudgetGuard(set_memory_budget(self.options.memory_budget));
        let mut bound: Vec<Option<Value>> = vec![None; self.graph.inputs.len()];
        for (name, v) in inputs {
            let k = self
                .inputs
                .iter()
                .position(|i| i.name == name)
                .ok_or_else(|| Error::input(format!("the model has no input named '{name}'")))?;
            bound[k] = Some(v);
        }
        let mut syms: HashMap<String, usize> = HashMap::new();
        for (k, info) in self.inputs.iter().enumerate() {
            match &bound[k] {
                Some(v) => check_input(info, v, &mut syms)?,
                None if self.graph.consts[self.graph.inputs[k]].is_some() => {}
                None => return Err(Error::input(format!("missing input '{}'", info.name))),
            }
        }
        let mut cx = RunCx {
            options: &self.options,
            depth: 0,
            profile: profile.then(Vec::new),
        };
        let outs = run_graph(&self.graph, &self.plan, &mut cx, bound, &[])?;
        let named = self
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .zip(outs)
            .collect();
        Ok((named, cx.profile.unwrap_or_default()))
    }
}

/// Kernels are written not to panic; should one still do so (a bug), native callers get
/// a Runtime error instead of an unwinding panic. (wasm32 cannot unwind: there the rule
/// is simply that nothing panics, which the fuzz target and suites check.)
fn guard_panics<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(Error::runtime(format!(
                    "internal error (please report): {msg}"
                )))
            }
        }
    }
    #[cfg(target_arch = "wasm32")]
    {
        f()
    }
}

/// Checks a value against its declared input: kind, dtype, rank, fixed dims, and that a
/// symbolic dim has the same size everywhere it appears.
fn check_input(info: &IoInfo, v: &Value, syms: &mut HashMap<String, usize>) -> Result<()> {
    let f = &info.fact;
    let t = match (f.kind, v) {
        (ValueKind::Tensor, Value::Tensor(t)) => t,
        (ValueKind::Tensor, _) => {
            return Err(Error::input(format!(
                "input '{}' must be a tensor",
                info.name
            )))
        }
        _ => return Ok(()),
    };
    if let Some(dt) = f.dtype {
        if t.dtype() != dt {
            return Err(Error::input(format!(
                "input '{}' must be {dt}, got {}",
                info.name,
                t.dtype()
            )));
        }
    }
    if let Some(shape) = &f.shape {
        if shape.len() != t.rank() {
            return Err(Error::input(format!(
                "input '{}' must have rank {} (shape {}), got shape {:?}",
                info.name,
                shape.len(),
                f.shape_string(),
                t.shape()
            )));
        }
        for (k, (d, &actual)) in shape.iter().zip(t.shape()).enumerate() {
            match d {
                Dim::Known(n) if *n != actual => {
                    return Err(Error::input(format!(
                        "input '{}' dim {k} must be {n}, got {actual} (shape {:?})",
                        info.name,
                        t.shape()
                    )))
                }
                Dim::Sym(s) => {
                    let e = syms.entry(s.clone()).or_insert(actual);
                    if *e != actual {
                        return Err(Error::input(format!(
                            "input '{}' dim {k} is '{s}', which another input set to {e}, got {actual}",
                            info.name
                        )));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}
