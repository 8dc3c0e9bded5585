//! If, Loop and Scan on the GPU. Their bodies are placed like any graph (each its own
//! [`GpuSession`], made at load), and the executor runs them on the same recorder, so
//! values cross the body boundary where they are, without a round trip through the
//! host. What must be known on the host is read back: If's condition, Loop's trip count
//! and its condition after each iteration. Scan slices its inputs and stacks its outputs
//! along axis 0 with buffer copies; Loop stacks its scan outputs the same way.

use super::record::Recorder;
use super::{GpuSession, GpuTensor, In, Kernel, Lowered, NodeFacts, Out, Slot, Storage};
use crate::error::{Error, Result};
use crate::graph::ops::control::{stack_values, If, Loop, Scan};
use crate::graph::{Fact, Graph, Node, RunCx, Value};
use crate::plan::Plan;
use crate::tensor::{DType, Tensor};

/// The marker kernel of a control-flow node: the executor runs it (see [`run`]).
#[derive(Debug)]
struct ControlFlow;

impl Kernel for ControlFlow {
    fn is_control(&self) -> bool {
        true
    }
    fn encode(
        &self,
        _r: &mut Recorder,
        _ins: &[In],
        _outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        Err(Error::runtime(
            "control flow is run by the GPU executor, not encoded",
        ))
    }
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    if any.is::<If>() || any.is::<Loop>() {
        return Lowered::Kernel(Box::new(ControlFlow));
    }
    if let Some(sc) = any.downcast_ref::<Scan>() {
        if sc.input_axes.iter().chain(&sc.output_axes).any(|&a| a != 0) {
            return Lowered::Cpu("Scan along an axis other than 0 stays on the CPU".into());
        }
        return Lowered::Kernel(Box::new(ControlFlow));
    }
    Lowered::NotMine
}

fn host_slot(t: Tensor) -> Slot {
    Slot {
        host: Some(Value::from(t)),
        dev: None,
    }
}

/// The host tensor of a slot, read back if only the GPU has it.
async fn host_of<'s>(s: &'s mut Slot, r: &mut Recorder<'_>) -> Result<&'s Tensor> {
    if s.host.is_none() {
        let t = s
            .dev
            .as_ref()
            .ok_or_else(|| Error::runtime("value was not computed"))?;
        let got = r.download(&[t]).await?;
        s.host = got.into_iter().next().map(Value::from);
    }
    s.host
        .as_ref()
        .ok_or_else(|| Error::runtime("value was not computed"))?
        .tensor()
}

/// The GPU tensor of a slot, uploaded if only the host has it.
fn dev_of(s: &mut Slot, r: &mut Recorder<'_>) -> Result<GpuTensor> {
    if let Some(t) = &s.dev {
        return Ok(t.clone());
    }
    let t = s
        .host
        .as_ref()
        .ok_or_else(|| Error::runtime("value was not computed"))?
        .tensor()?;
    let d = r.upload(t)?;
    s.dev = Some(d.clone());
    Ok(d)
}

fn flag(t: &Tensor, what: &str) -> Result<bool> {
    t.as_slice::<bool>()?
        .first()
        .copied()
        .ok_or_else(|| Error::shape(format!("{what} is empty")))
}

/// The value of input `k` of `node`.
fn input(node: &Node, vals: &[Slot], k: usize, what: &str) -> Result<Slot> {
    node.inputs
        .get(k)
        .copied()
        .flatten()
        .map(|id| vals[id].clone())
        .ok_or_else(|| Error::input(format!("{what} missing")))
}

/// Stacks per-iteration values along a new axis 0: on the GPU with copies when every
/// item is a tensor the GPU stores, else on the host (as the CPU does).
async fn stack_slots(mut items: Vec<Slot>, fact: &Fact, r: &mut Recorder<'_>) -> Result<Slot> {
    let storable = |s: &Slot| match (&s.dev, &s.host) {
        (Some(_), _) => true,
        (None, Some(Value::Tensor(t))) => Storage::of(t.dtype()).is_some(),
        _ => false,
    };
    if items.is_empty() || !items.iter().all(storable) {
        let mut host = Vec::with_capacity(items.len());
        for s in items.iter_mut() {
            host_of(s, r).await?;
            host.push(s.host.take().ok_or_else(|| Error::runtime("stack"))?);
        }
        return Ok(Slot {
            host: Some(stack_values(host, fact)?),
            dev: None,
        });
    }
    let parts: Vec<GpuTensor> = items
        .iter_mut()
        .map(|s| dev_of(s, r))
        .collect::<Result<_>>()?;
    let first = &parts[0];
    if parts
        .iter()
        .any(|p| p.shape != first.shape || p.dtype != first.dtype)
    {
        return Err(Error::shape(
            "iterations produced values of different shapes or dtypes",
        ));
    }
    let mut shape = vec![parts.len()];
    shape.extend_from_slice(&first.shape);
    let out = r.alloc(first.dtype, shape)?;
    let n = first.len();
    for (k, p) in parts.iter().enumerate() {
        r.copy(p, 0, &out, k * n, n)?;
    }
    Ok(Slot {
        host: None,
        dev: Some(out),
    })
}

/// Runs a control-flow node whose bodies are `bodies` (made from `node.op.subgraphs()`,
/// in that order).
pub(super) async fn run(
    bodies: &[(GpuSession, Plan)],
    g: &Graph,
    node: &Node,
    cx: &mut RunCx<'_>,
    vals: &mut [Slot],
    r: &mut Recorder<'_>,
) -> Result<Vec<Slot>> {
    let captures: Vec<(String, Slot)> = node
        .implicit_inputs
        .iter()
        .map(|&id| (g.value_name(id).to_string(), vals[id].clone()))
        .collect();
    let graphs = node.op.subgraphs();
    let body = |k: usize| -> Result<(&GpuSession, &Plan, &Graph)> {
        match (bodies.get(k), graphs.get(k)) {
            (Some((s, p)), Some(g)) => Ok((s, p, *g)),
            _ => Err(Error::runtime("control-flow body missing")),
        }
    };
    let mut sub = RunCx {
        options: cx.options,
        depth: cx.depth + 1,
        profile: None,
    };
    let any = node.op.as_any();
    if any.is::<If>() {
        let mut c = input(node, vals, 0, "If condition")?;
        let cond = flag(host_of(&mut c, r).await?, "If condition")?;
        let (s, p, bg) = body(if cond { 0 } else { 1 })?;
        return s.run_slots(bg, p, &mut sub, Vec::new(), captures, r).await;
    }
    if any.is::<Loop>() {
        let (s, p, bg) = body(0)?;
        let n_carried = node.inputs.len().saturating_sub(2);
        let max_trip = match node.inputs.first().copied().flatten() {
            Some(id) => {
                let mut m = vals[id].clone();
                Some(host_of(&mut m, r).await?.scalar_i64()?)
            }
            None => None,
        };
        let mut cond = match node.inputs.get(1).copied().flatten() {
            Some(id) => {
                let mut c = vals[id].clone();
                flag(host_of(&mut c, r).await?, "Loop condition")?
            }
            None => true,
        };
        let mut carried: Vec<Slot> = (0..n_carried)
            .map(|k| input(node, vals, k + 2, "Loop carried value"))
            .collect::<Result<_>>()?;
        let n_scan = bg
            .outputs
            .len()
            .checked_sub(1 + n_carried)
            .ok_or_else(|| Error::invalid_model("Loop body has too few outputs"))?;
        let mut scans: Vec<Vec<Slot>> = vec![Vec::new(); n_scan];
        let mut i: i64 = 0;
        while cond && max_trip.is_none_or(|m| i < m) {
            if i as u64 >= cx.options.max_loop_iterations {
                return Err(Error::runtime(format!(
                    "Loop ran {i} iterations, the limit set in RunOptions::max_loop_iterations"
                )));
            }
            let mut inputs = vec![
                Some(host_slot(Tensor::scalar(i))),
                Some(host_slot(Tensor::scalar(cond))),
            ];
            inputs.extend(carried.iter().cloned().map(Some));
            let mut outs = s
                .run_slots(bg, p, &mut sub, inputs, captures.clone(), r)
                .await?
                .into_iter();
            let mut c = outs
                .next()
                .ok_or_else(|| Error::runtime("Loop body produced no condition"))?;
            cond = flag(host_of(&mut c, r).await?, "Loop condition")?;
            for slot in carried.iter_mut() {
                *slot = outs
                    .next()
                    .ok_or_else(|| Error::runtime("Loop body produced too few outputs"))?;
            }
            for sc in scans.iter_mut() {
                sc.push(
                    outs.next()
                        .ok_or_else(|| Error::runtime("Loop body produced too few outputs"))?,
                );
            }
            i += 1;
        }
        let mut result = carried;
        for (k, items) in scans.into_iter().enumerate() {
            let fact = &bg.values[bg.outputs[1 + n_carried + k]].fact;
            result.push(stack_slots(items, fact, r).await?);
        }
        return Ok(result);
    }
    if let Some(op) = any.downcast_ref::<Scan>() {
        let (s, p, bg) = body(0)?;
        let m = op.num_scan_inputs;
        let n_states = node
            .inputs
            .len()
            .checked_sub(m)
            .ok_or_else(|| Error::invalid_model("Scan has fewer inputs than scan inputs"))?;
        let mut states: Vec<Slot> = (0..n_states)
            .map(|k| input(node, vals, k, "Scan state"))
            .collect::<Result<_>>()?;
        let mut scan_in: Vec<GpuTensor> = Vec::with_capacity(m);
        let mut len = None;
        for j in 0..m {
            let mut sl = input(node, vals, n_states + j, "Scan input")?;
            let t = dev_of(&mut sl, r)?;
            let l = *t
                .shape
                .first()
                .ok_or_else(|| Error::shape("a Scan input must have rank >= 1"))?;
            if len.is_some_and(|x| x != l) {
                return Err(Error::shape("Scan inputs have different sequence lengths"));
            }
            len = Some(l);
            scan_in.push(t);
        }
        let len = len.unwrap_or(0);
        let k = bg
            .outputs
            .len()
            .checked_sub(n_states)
            .ok_or_else(|| Error::invalid_model("Scan body outputs"))?;
        let mut scan_out: Vec<Vec<Slot>> = vec![Vec::new(); k];
        for it in 0..len {
            let mut inputs: Vec<Option<Slot>> = states.iter().cloned().map(Some).collect();
            for (j, t) in scan_in.iter().enumerate() {
                let idx = if op.input_directions.get(j) == Some(&1) {
                    len - 1 - it
                } else {
                    it
                };
                let slice = r.alloc(t.dtype, t.shape[1..].to_vec())?;
                let n = slice.len();
                r.copy(t, idx * n, &slice, 0, n)?;
                inputs.push(Some(Slot {
                    host: None,
                    dev: Some(slice),
                }));
            }
            let mut outs = s
                .run_slots(bg, p, &mut sub, inputs, captures.clone(), r)
                .await?
                .into_iter();
            for st in states.iter_mut() {
                *st = outs
                    .next()
                    .ok_or_else(|| Error::runtime("Scan body produced too few outputs"))?;
            }
            for o in scan_out.iter_mut() {
                o.push(
                    outs.next()
                        .ok_or_else(|| Error::runtime("Scan body produced too few outputs"))?,
                );
            }
        }
        let mut result = states;
        for (j, mut items) in scan_out.into_iter().enumerate() {
            if op.output_directions.get(j) == Some(&1) {
                items.reverse();
            }
            if items.is_empty() {
                return Err(Error::shape("Scan over a zero-length sequence"));
            }
            let fact = &bg.values[bg.outputs[n_states + j]].fact;
            result.push(stack_slots(items, fact, r).await?);
        }
        return Ok(result);
    }
    Err(Error::runtime(format!(
        "{} is not a control-flow op",
        node.op_type
    )))
}
