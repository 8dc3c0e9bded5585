//! Constant folding: a deterministic node whose inputs are all constants is run once at
//! load and replaced by its outputs, in order, so whole constant chains (Shape → Gather →
//! Concat → Reshape on known shapes) fold. Outputs larger than `MAX_FOLD_BYTES` stay
//! computed at run time so folding never bloats memory (e.g. a big ConstantOfShape),
//! unless they are at most twice the constants they come from: a float16 weight cast to
//! float32 (how fp16-compressed models store weights) must fold, or every run repeats it.

use crate::error::Result;
use crate::graph::{Args, Fact, Graph, RunCx, Value};
use crate::plan::RunOptions;

pub const MAX_FOLD_BYTES: usize = 16 << 20;

/// Folds what it can; returns the number of nodes folded.
pub fn run(g: &mut Graph) -> Result<usize> {
    let options = RunOptions::default();
    let Graph {
        nodes,
        consts,
        values,
        inputs,
        ..
    } = g;
    let mut remove = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        if !n.op.is_deterministic() || !n.implicit_inputs.is_empty() || !n.op.subgraphs().is_empty()
        {
            continue;
        }
        let all_const = n
            .inputs
            .iter()
            .flatten()
            .all(|&v| consts[v].is_some() && !inputs.contains(&v));
        if !all_const || n.outputs.iter().flatten().next().is_none() {
            continue;
        }
        let outs = {
            let ins: Vec<Option<&Value>> = n
                .inputs
                .iter()
                .map(|v| v.and_then(|v| consts[v].as_ref()))
                .collect();
            let mut cx = RunCx {
                options: &options,
                depth: 0,
                profile: None,
            };
            // A failure here (say, a bad index in a constant) is reported when the node
            // runs, with its run-time context, so folding just skips it.
            match n.op.run(
                &mut cx,
                &Args {
                    inputs: &ins,
                    implicit: &[],
                },
            ) {
                Ok(o) => o,
                Err(_) => continue,
            }
        };
        let size = outs
            .iter()
            .map(|v| match v {
                Value::Tensor(t) => t.nbytes(),
                _ => usize::MAX,
            })
            .fold(0usize, usize::saturating_add);
        let in_bytes = n
            .inputs
            .iter()
            .flatten()
            .filter_map(|&v| match consts[v].as_ref() {
                Some(Value::Tensor(t)) => Some(t.nbytes()),
                _ => None,
            })
            .fold(0usize, usize::saturating_add);
        let bloats = size > MAX_FOLD_BYTES && size > in_bytes.saturating_mul(2);
        if bloats || outs.len() < n.outputs.len() {
            continue;
        }
        for (o, v) in n.outputs.iter().zip(outs) {
            if let Some(o) = o {
                values[*o].fact = Fact::from_value(&v);
                consts[*o] = Some(v);
            }
        }
        remove[i] = true;
    }
    let count = remove.iter().filter(|&&r| r).count();
    let mut r = remove.into_iter();
    nodes.retain(|_| !r.next().unwrap_or(false));
    Ok(count)
}
