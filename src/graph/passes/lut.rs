//! Lookup tables: a chain of pointwise ops whose only varying input is one 8-bit tensor
//! can take only 256 distinct inputs, so the whole chain is a 256-entry table. The pass
//! finds such chains, evaluates them once at load on the 256 possible bytes with the same
//! kernels that would run them, and replaces them with one `LookupTable` gather.
//!
//! In quantized models this catches what QDQ fusion leaves in float or spreads over
//! several integer ops: hard-swish (`QLinearAdd(x, 3)` → `QLinearMul(x, ·)` → DQ → Div →
//! Q), hard-sigmoid, GELU and friends between a DQ and a Q, requantizations, and
//! the lookup-table ops (QLinearSigmoid), whose table is then built once instead of per run.
//! Rules for a chain (a connected set of nodes ending at one sink):
//! - every node is pointwise (`Op::is_elementwise`) with one output;
//! - every other input is a load-time constant with one element, so it cannot change
//!   which element meets which (it may add leading 1s to the shape: `LookupTable` keeps
//!   the rank);
//! - the varying inputs all trace back to one source value of type uint8/int8;
//! - nothing but the chain reads the intermediate values (they disappear).
//!
//! The result is what the kernels compute element by element, so it is the same up to
//! the last bit wherever a kernel's result for an element does not depend on where the
//! element sits (all integer and requantizing kernels; float kernels with SIMD bodies
//! and scalar tails could differ in the last float bit before a final rounding).

use super::fuse::Uses;
use crate::graph::ops::quant::{DequantizeLinear, LookupTable};
use crate::graph::{Args, Graph, Node, RunCx, Value, ValueId};
use crate::plan::RunOptions;
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;

/// Largest chain folded into one table; real ones are a handful of nodes.
const MAX_CHAIN: usize = 32;

/// Replaces every chain it finds; returns the number of nodes removed.
pub fn run(g: &mut Graph) -> usize {
    let uses = Uses::new(g);
    let mut producer: Vec<Option<usize>> = vec![None; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &o in n.outputs.iter().flatten() {
            producer[o] = Some(i);
        }
    }
    let mut dead = vec![false; g.nodes.len()];
    let mut removed = 0;
    for sink in (0..g.nodes.len()).rev() {
        if dead[sink] {
            continue;
        }
        let Some((chain, source)) = find_chain(g, &uses, &producer, &dead, sink) else {
            continue;
        };
        // A lone DQ (one multiply-add per element, vectorized) is no slower than a
        // gather. (A lone QLinearSigmoid is worth it: its table is then built once.)
        if chain.len() == 1 && super::fuse::op::<DequantizeLinear>(&g.nodes[sink]).is_some() {
            continue;
        }
        let Some(table) = evaluate(g, &chain, source) else {
            continue;
        };
        let Some(out) = g.nodes[sink].outputs[0] else {
            continue;
        };
        if g.values[out].fact.dtype != Some(table.dtype()) {
            continue;
        }
        let rank = const_rank(g, &chain);
        for &j in &chain[1..] {
            dead[j] = true;
            removed += 1;
        }
        let node = &mut g.nodes[sink];
        *node = Node {
            name: node.name.clone(),
            op_type: "LookupTable".to_string(),
            domain: "edgepredict".to_string(),
            op: Box::new(LookupTable { table, rank }),
            inputs: vec![Some(source)],
            outputs: vec![Some(out)],
            implicit_inputs: Vec::new(),
            attrs: Vec::new(),
            opset: 1,
        };
    }
    let mut k = dead.into_iter();
    g.nodes.retain(|_| !k.next().unwrap_or(false));
    removed
}

/// A load-time constant (not an overridable graph input).
fn load_const(g: &Graph, v: ValueId) -> Option<&Tensor> {
    if g.inputs.contains(&v) {
        return None;
    }
    g.const_tensor(v)
}

/// A constant the chain may read: one element, so it cannot change which element meets
/// which.
fn scalar_const(g: &Graph, v: ValueId) -> Option<&Tensor> {
    load_const(g, v).filter(|t| t.len() == 1)
}

fn is_8bit(g: &Graph, v: ValueId) -> bool {
    matches!(g.values[v].fact.dtype, Some(DType::U8 | DType::I8))
}

/// The chain ending at `sink` (sink first, then the absorbed producers) and its one
/// 8-bit source, if there is one. Grows backwards, always opening up the most recently
/// produced varying input, until a single 8-bit value feeds everything.
fn find_chain(
    g: &Graph,
    uses: &Uses,
    producer: &[Option<usize>],
    dead: &[bool],
    sink: usize,
) -> Option<(Vec<usize>, ValueId)> {
    let mut chain = Vec::new();
    let mut sources: Vec<ValueId> = Vec::new();
    let absorb = |i: usize, chain: &mut Vec<usize>, sources: &mut Vec<ValueId>| {
        let n = &g.nodes[i];
        if dead[i] || !n.op.is_elementwise() || n.outputs.len() != 1 {
            return false;
        }
        if !n.implicit_inputs.is_empty() || n.outputs[0].is_none() {
            return false;
        }
        for &v in n.inputs.iter().flatten() {
            match load_const(g, v) {
                Some(t) if t.len() != 1 => return false,
                Some(_) => {}
                None if !sources.contains(&v) => sources.push(v),
                None => {}
            }
        }
        chain.push(i);
        true
    };
    if !absorb(sink, &mut chain, &mut sources) {
        return None;
    }
    // Keep opening up the most recently produced varying input; every state with one
    // 8-bit source whose intermediates nobody else reads is a valid chain, and the
    // longest one wins. (Once an intermediate escapes it stays escaped: nodes added
    // later are its ancestors and cannot read it.)
    let mut best = None;
    loop {
        if let [s] = sources[..] {
            if is_8bit(g, s) {
                if !private(g, uses, &chain) {
                    break;
                }
                best = Some((chain.clone(), s));
            }
        }
        if chain.len() >= MAX_CHAIN {
            break;
        }
        let Some((k, p)) = sources
            .iter()
            .enumerate()
            .filter_map(|(k, &v)| producer[v].map(|p| (k, p)))
            .max_by_key(|&(_, p)| p)
        else {
            break;
        };
        if chain.contains(&p) {
            break;
        }
        sources.swap_remove(k);
        if !absorb(p, &mut chain, &mut sources) {
            break;
        }
    }
    best
}

/// Whether only the chain reads its intermediate values (everything but the sink's
/// output), so that they can disappear.
fn private(g: &Graph, uses: &Uses, chain: &[usize]) -> bool {
    chain[1..].iter().all(|&i| {
        g.nodes[i]
            .outputs
            .iter()
            .flatten()
            .all(|&o| !uses.is_output[o] && uses.readers[o].iter().all(|r| chain.contains(r)))
    })
}

/// Rank of the chain's highest-rank constant: they broadcast the input up to it (the
/// table op keeps the input's rank where that is higher).
fn const_rank(g: &Graph, chain: &[usize]) -> usize {
    chain
        .iter()
        .flat_map(|&i| g.nodes[i].inputs.iter().flatten())
        .filter_map(|&v| scalar_const(g, v))
        .map(|t| t.rank())
        .max()
        .unwrap_or(0)
}

/// Runs the chain on the 256 bytes of the source type, in byte order (for int8: 0..127,
/// then -128..-1), giving the table indexed by the input's byte.
fn evaluate(g: &Graph, chain: &[usize], source: ValueId) -> Option<Tensor> {
    let bytes: Vec<u8> = (0..=255).collect();
    let input = match g.values[source].fact.dtype? {
        DType::U8 => Tensor::from_vec(vec![256], bytes).ok()?,
        DType::I8 => Tensor::from_vec(
            vec![256],
            bytes.iter().map(|&b| b as i8).collect::<Vec<_>>(),
        )
        .ok()?,
        _ => return None,
    };
    let options = RunOptions::default();
    let mut vals: HashMap<ValueId, Value> = HashMap::new();
    vals.insert(source, input.into());
    let mut order = chain.to_vec();
    order.sort_unstable();
    for &i in &order {
        let n = &g.nodes[i];
        let ins: Vec<Option<&Value>> = n
            .inputs
            .iter()
            .map(|v| v.and_then(|v| vals.get(&v).or_else(|| g.constant(v))))
            .collect();
        let mut cx = RunCx {
            options: &options,
            depth: 0,
            profile: None,
        };
        let outs =
            n.op.run(
                &mut cx,
                &Args {
                    inputs: &ins,
                    implicit: &[],
                },
            )
            .ok()?;
        let out = n.outputs[0]?;
        let v = outs.into_iter().next()?;
        vals.insert(out, v);
    }
    // The sink reads the others, so it comes last in graph order.
    let t = vals
        .remove(&g.nodes[chain[0]].outputs[0]?)?
        .into_tensor()
        .ok()?;
    if t.len() != 256 {
        return None;
    }
    t.reshape(vec![256]).ok()
}
