//! Control flow and values: Constant, Identity, If, Loop, Scan.
//! Their "kernels" orchestrate subgraph runs, so they live here rather than in `cpu/`.

use super::{def, OpDef};
use crate::cpu::common::{index_axis, stack};
use crate::error::{Error, Result};
use crate::graph::attrs::norm_axis;
use crate::graph::shape::ValueKind;
use crate::graph::{Args, Fact, Graph, InferCx, NodeCx, Op, RunCx, Value};
use crate::op_common;
use crate::plan::{run_subgraph, Plan};
use crate::tensor::{DType, Tensor};
use std::sync::{Arc, OnceLock};

pub const OPS: &[OpDef] = &[
    def("", "Constant", parse_constant),
    def("", "Identity", |_| Ok(Box::new(Identity))),
    def("", "If", parse_if),
    def("", "Loop", parse_loop),
    def("", "Scan", parse_scan),
];

/// `Constant`: a tensor given as an attribute in one of its many spellings.
#[derive(Debug)]
pub struct Constant {
    pub value: Arc<Tensor>,
}

fn parse_constant(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let mut found: Vec<Tensor> = Vec::new();
    if let Some(t) = cx.tensor("value")? {
        found.push(t);
    }
    if let Some(t) = cx.sparse_tensor("sparse_value")? {
        found.push(t);
    }
    if let Some(v) = cx.float("value_float")? {
        found.push(Tensor::scalar(v));
    }
    if let Some(v) = cx.floats("value_floats")? {
        found.push(Tensor::vector(v));
    }
    if let Some(v) = cx.int("value_int")? {
        found.push(Tensor::scalar(v));
    }
    if let Some(v) = cx.ints("value_ints")? {
        found.push(Tensor::vector(v));
    }
    if let Some(v) = cx.string("value_string")? {
        found.push(Tensor::scalar(v));
    }
    if let Some(v) = cx.strings("value_strings")? {
        found.push(Tensor::vector(v));
    }
    if found.len() != 1 {
        return Err(Error::attr(format!(
            "Constant needs exactly one value attribute, found {}",
            found.len()
        )));
    }
    Ok(Box::new(Constant {
        value: Arc::new(found.remove(0)),
    }))
}

impl Op for Constant {
    op_common!("Constant");
    fn infer(&self, _cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![Fact::from_value(&Value::Tensor(self.value.clone()))])
    }
    fn run(&self, _cx: &mut RunCx, _args: &Args) -> Result<Vec<Value>> {
        Ok(vec![Value::Tensor(self.value.clone())])
    }
}

/// `Identity` (tensors, sequences and optionals alike).
#[derive(Debug)]
pub struct Identity;

impl Op for Identity {
    op_common!("Identity");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        Ok(vec![cx.input(0)?.clone()])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let v = args
            .value(0)
            .ok_or_else(|| Error::input("Identity needs an input"))?;
        Ok(vec![v.clone()])
    }
}

/// A subgraph with its schedule, planned on first run (after load-time passes have
/// rewritten the graph).
#[derive(Debug)]
pub struct Body {
    pub graph: Graph,
    plan: OnceLock<Plan>,
}

impl Body {
    pub fn new(graph: Graph) -> Body {
        Body {
            graph,
            plan: OnceLock::new(),
        }
    }
    pub fn run(
        &self,
        cx: &mut RunCx,
        inputs: Vec<Value>,
        implicit: &[(&str, &Value)],
    ) -> Result<Vec<Value>> {
        let plan = self.plan.get_or_init(|| Plan::new(&self.graph));
        run_subgraph(cx, &self.graph, plan, inputs, implicit)
    }
    fn output_facts(&self) -> Vec<Fact> {
        self.graph
            .outputs
            .iter()
            .map(|&o| self.graph.values[o].fact.clone())
            .collect()
    }
}

/// `If`: runs one of two branches.
#[derive(Debug)]
pub struct If {
    pub then_branch: Body,
    pub else_branch: Body,
}

fn parse_if(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let then_branch = Body::new(cx.req_graph("then_branch")?);
    let else_branch = Body::new(cx.req_graph("else_branch")?);
    if then_branch.graph.outputs.len() != else_branch.graph.outputs.len() {
        return Err(Error::invalid_model(
            "If branches have different numbers of outputs",
        ));
    }
    Ok(Box::new(If {
        then_branch,
        else_branch,
    }))
}

impl Op for If {
    op_common!("If");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(dt) = cx.input(0)?.dtype {
            if dt != DType::Bool {
                return Err(Error::dtype(format!("If condition must be bool, got {dt}")));
            }
        }
        let t = self.then_branch.output_facts();
        let e = self.else_branch.output_facts();
        Ok(t.into_iter()
            .zip(e)
            .map(|(a, b)| {
                let shape = match (&a.shape, &b.shape) {
                    (Some(x), Some(y)) if x == y => Some(x.clone()),
                    _ => None,
                };
                Fact {
                    kind: a.kind,
                    dtype: a.dtype.or(b.dtype),
                    shape,
                    value: None,
                }
            })
            .collect())
    }
    fn run(&self, cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let c = args.t(0)?;
        let cond = match c.as_slice::<bool>()?.first() {
            Some(&b) => b,
            None => return Err(Error::shape("If condition is empty")),
        };
        let branch = if cond {
            &self.then_branch
        } else {
            &self.else_branch
        };
        branch.run(cx, Vec::new(), args.implicit)
    }
    fn subgraphs(&self) -> Vec<&Graph> {
        vec![&self.then_branch.graph, &self.else_branch.graph]
    }
    fn subgraphs_mut(&mut self) -> Vec<&mut Graph> {
        vec![&mut self.then_branch.graph, &mut self.else_branch.graph]
    }
}

/// `Loop`: a counted and/or conditional loop with carried values and scan outputs.
#[derive(Debug)]
pub struct Loop {
    pub body: Body,
}

fn parse_loop(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let body = Body::new(cx.req_graph("body")?);
    let n_carried = cx.n_inputs().saturating_sub(2);
    if body.graph.inputs.len() != n_carried + 2 {
        return Err(Error::invalid_model(format!(
            "Loop body takes {} inputs, expected {} (iteration, condition, {} carried)",
            body.graph.inputs.len(),
            n_carried + 2,
            n_carried
        )));
    }
    if body.graph.outputs.len() < n_carried + 1 {
        return Err(Error::invalid_model("Loop body has too few outputs"));
    }
    Ok(Box::new(Loop { body }))
}

impl Op for Loop {
    op_common!("Loop");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let n_carried = cx.inputs.len().saturating_sub(2);
        let outs = self.body.output_facts();
        let mut facts = Vec::new();
        for k in 0..n_carried {
            let init = cx.input(k + 2)?;
            facts.push(Fact {
                kind: init.kind,
                dtype: init.dtype,
                shape: None,
                value: None,
            });
        }
        for f in outs.iter().skip(1 + n_carried) {
            let shape = f.shape.as_ref().map(|s| {
                let mut v = vec![crate::graph::Dim::Unknown];
                v.extend(s.iter().cloned());
                v
            });
            facts.push(Fact {
                kind: f.kind,
                dtype: f.dtype,
                shape,
                value: None,
            });
        }
        Ok(facts)
    }
    fn body_input_facts(&self, inputs: &[Fact]) -> Vec<Vec<Fact>> {
        // (iteration, condition, carried…): carried values keep their dtype, not
        // necessarily their shape.
        let mut fed = vec![
            Fact::new(Some(DType::I64), Some(Vec::new())),
            Fact::new(Some(DType::Bool), Some(Vec::new())),
        ];
        fed.extend(inputs.iter().skip(2).map(|f| Fact {
            kind: f.kind,
            dtype: f.dtype,
            shape: None,
            value: None,
        }));
        vec![fed]
    }
    fn run(&self, cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let n_carried = args.len().saturating_sub(2);
        let max_trip = match args.opt(0)? {
            Some(t) => Some(t.scalar_i64()?),
            None => None,
        };
        let mut cond = match args.opt(1)? {
            Some(t) => *t
                .as_slice::<bool>()?
                .first()
                .ok_or_else(|| Error::shape("Loop condition is empty"))?,
            None => true,
        };
        let mut carried: Vec<Value> = (0..n_carried)
            .map(|k| {
                args.value(k + 2)
                    .cloned()
                    .ok_or_else(|| Error::input("Loop carried value missing"))
            })
            .collect::<Result<_>>()?;
        let n_scan = self.body.graph.outputs.len() - 1 - n_carried;
        let mut scans: Vec<Vec<Value>> = vec![Vec::new(); n_scan];
        let mut i: i64 = 0;
        while cond && max_trip.is_none_or(|m| i < m) {
            if i as u64 >= cx.options.max_loop_iterations {
                return Err(Error::runtime(format!(
                    "Loop ran {i} iterations, the limit set in RunOptions::max_loop_iterations"
                )));
            }
            let mut inputs = Vec::with_capacity(n_carried + 2);
            inputs.push(Value::from(Tensor::scalar(i)));
            inputs.push(Value::from(Tensor::scalar(cond)));
            inputs.extend(carried.iter().cloned());
            let mut outs = self.body.run(cx, inputs, args.implicit)?.into_iter();
            let c = outs
                .next()
                .ok_or_else(|| Error::runtime("Loop body produced no condition"))?;
            cond = *c
                .tensor()?
                .as_slice::<bool>()?
                .first()
                .ok_or_else(|| Error::shape("Loop condition is empty"))?;
            for slot in carried.iter_mut() {
                *slot = outs
                    .next()
                    .ok_or_else(|| Error::runtime("Loop body produced too few outputs"))?;
            }
            for s in scans.iter_mut() {
                s.push(
                    outs.next()
                        .ok_or_else(|| Error::runtime("Loop body produced too few outputs"))?,
                );
            }
            i += 1;
        }
        let mut result = carried;
        for (k, s) in scans.into_iter().enumerate() {
            result.push(stack_values(
                s,
                &self.body.graph.values[self.body.graph.outputs[1 + n_carried + k]].fact,
            )?);
        }
        Ok(result)
    }
    fn subgraphs(&self) -> Vec<&Graph> {
        vec![&self.body.graph]
    }
    fn subgraphs_mut(&mut self) -> Vec<&mut Graph> {
        vec![&mut self.body.graph]
    }
}

/// Stacks per-iteration scan outputs along a new first axis (sequences concatenate).
pub(crate) fn stack_values(items: Vec<Value>, fact: &Fact) -> Result<Value> {
    if items.is_empty() {
        let dt = fact.dtype.unwrap_or(DType::F32);
        if fact.kind == ValueKind::Sequence {
            return Ok(Value::Sequence(Vec::new()));
        }
        let mut shape = vec![0];
        if let Some(s) = &fact.shape {
            shape.extend(s.iter().map(|d| d.known().unwrap_or(0)));
        }
        return Ok(Value::from(Tensor::zeros(dt, shape)?));
    }
    if let Value::Sequence(_) = items[0] {
        let mut all = Vec::new();
        for v in items {
            all.extend(v.sequence()?.iter().cloned());
        }
        return Ok(Value::Sequence(all));
    }
    let ts: Vec<&Tensor> = items.iter().map(|v| v.tensor()).collect::<Result<_>>()?;
    Ok(Value::from(stack(&ts, 0)?))
}

/// `Scan`: iterates a body over slices of its scan inputs.
#[derive(Debug)]
pub struct Scan {
    pub body: Body,
    pub num_scan_inputs: usize,
    pub input_directions: Vec<i64>,
    pub output_directions: Vec<i64>,
    pub input_axes: Vec<i64>,
    pub output_axes: Vec<i64>,
}

fn parse_scan(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    if cx.opset < 9 {
        return Err(Error::unsupported_op(
            "Scan before opset 9 (with sequence_lens) is not supported",
        ));
    }
    let body = Body::new(cx.req_graph("body")?);
    let m = usize::try_from(cx.req_int("num_scan_inputs")?)
        .map_err(|_| Error::attr("num_scan_inputs < 0"))?;
    let n_states = cx
        .n_inputs()
        .checked_sub(m)
        .ok_or_else(|| Error::attr("num_scan_inputs exceeds inputs"))?;
    let k = body
        .graph
        .outputs
        .len()
        .checked_sub(n_states)
        .ok_or_else(|| Error::invalid_model("Scan body outputs"))?;
    let input_directions = cx
        .ints("scan_input_directions")?
        .unwrap_or_else(|| vec![0; m]);
    let output_directions = cx
        .ints("scan_output_directions")?
        .unwrap_or_else(|| vec![0; k]);
    let input_axes = cx.ints("scan_input_axes")?.unwrap_or_else(|| vec![0; m]);
    let output_axes = cx.ints("scan_output_axes")?.unwrap_or_else(|| vec![0; k]);
    if input_directions.len() != m
        || input_axes.len() != m
        || output_directions.len() != k
        || output_axes.len() != k
    {
        return Err(Error::attr(
            "Scan direction/axis lists do not match the number of scan inputs/outputs",
        ));
    }
    Ok(Box::new(Scan {
        body,
        num_scan_inputs: m,
        input_directions,
        output_directions,
        input_axes,
        output_axes,
    }))
}

impl Op for Scan {
    op_common!("Scan");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let n_states = cx.inputs.len() - self.num_scan_inputs;
        let outs = self.body.output_facts();
        Ok(outs
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i < n_states {
                    f.clone()
                } else {
                    Fact::new(f.dtype, None)
                }
            })
            .collect())
    }
    fn body_input_facts(&self, inputs: &[Fact]) -> Vec<Vec<Fact>> {
        // (states…, one slice of each scan input…): dtypes carry over; a slice drops the
        // scan axis.
        let n_states = inputs.len().saturating_sub(self.num_scan_inputs);
        let mut fed = Vec::with_capacity(inputs.len());
        for (j, f) in inputs.iter().enumerate() {
            let shape = if j < n_states {
                None
            } else {
                let axis = self.input_axes.get(j - n_states).copied().unwrap_or(0);
                f.shape.as_ref().and_then(|s| {
                    let r = s.len() as i64;
                    let a = if axis < 0 { axis + r } else { axis };
                    (0..r).contains(&a).then(|| {
                        let mut t = s.clone();
                        t.remove(a as usize);
                        t
                    })
                })
            };
            fed.push(Fact {
                kind: f.kind,
                dtype: f.dtype,
                shape,
                value: None,
            });
        }
        vec![fed]
    }
    fn run(&self, cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let m = self.num_scan_inputs;
        let n_states = args.len() - m;
        let mut states: Vec<Value> = (0..n_states)
            .map(|k| {
                args.value(k)
                    .cloned()
                    .ok_or_else(|| Error::input("Scan state missing"))
            })
            .collect::<Result<_>>()?;
        let mut scan_in = Vec::with_capacity(m);
        let mut seq_len = None;
        for j in 0..m {
            let t = args.t(n_states + j)?;
            let axis = norm_axis(self.input_axes[j], t.rank())?;
            let len = t.shape()[axis];
            if seq_len.is_some_and(|l| l != len) {
                return Err(Error::shape("Scan inputs have different sequence lengths"));
            }
            seq_len = Some(len);
            scan_in.push((t, axis));
        }
        let len = seq_len.unwrap_or(0);
        let k = self.body.graph.outputs.len() - n_states;
        let mut scan_out: Vec<Vec<Tensor>> = vec![Vec::new(); k];
        for it in 0..len {
            let mut inputs = states.clone();
            for (j, (t, axis)) in scan_in.iter().enumerate() {
                let idx = if self.input_directions[j] == 1 {
                    len - 1 - it
                } else {
                    it
                };
                inputs.push(Value::from(index_axis(t, *axis, idx)?));
            }
            let outs = self.body.run(cx, inputs, args.implicit)?;
            let mut outs = outs.into_iter();
            for s in states.iter_mut() {
                *s = outs
                    .next()
                    .ok_or_else(|| Error::runtime("Scan body produced too few outputs"))?;
            }
            for o in scan_out.iter_mut() {
                o.push(
                    outs.next()
                        .ok_or_else(|| Error::runtime("Scan body produced too few outputs"))?
                        .into_tensor()?,
                );
            }
        }
        let mut result = states;
        for (j, mut items) in scan_out.into_iter().enumerate() {
            if self.output_directions[j] == 1 {
                items.reverse();
            }
            if items.is_empty() {
                return Err(Error::shape("Scan over a zero-length sequence"));
            }
            let r = items[0].rank() + 1;
            let axis = norm_axis(self.output_axes[j], r)?;
            let refs: Vec<&Tensor> = items.iter().collect();
            let st = stack(&refs, axis)?;
            result.push(Value::from(st));
        }
        Ok(result)
    }
    fn subgraphs(&self) -> Vec<&Graph> {
        vec![&self.body.graph]
    }
    fn subgraphs_mut(&mut self) -> Vec<&mut Graph> {
        vec![&mut self.body.graph]
    }
}
