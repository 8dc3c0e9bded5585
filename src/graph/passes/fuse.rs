//! Fusions. Each rule finds a producer whose single consumer can be folded into it,
//! rewrites the producer and drops the consumer:
//! - `conv_bn`: Conv → BatchNormalization (inference, constant parameters) becomes one
//!   Conv with rescaled weights and bias;
//! - `matmul_add`: MatMul → Add(constant row vector) becomes MatMul with a bias;
//! - `activation`: Conv/Gemm/MatMul → Relu, Clip (constant limits), HardSigmoid,
//!   Sigmoid, Tanh, LeakyRelu, and x·sigmoid(x) (Sigmoid + Mul) become the producer with
//!   a fused activation. Only f32 producers are fused (the kernels apply activations on
//!   their f32 path).

use crate::graph::ops::elementwise::{BinOp, Binary, Clip, Unary, UnaryOp};
use crate::graph::ops::nn::{Conv, Gemm, MatMul};
use crate::graph::ops::norm::BatchNormalization;
use crate::graph::{Activation, Fact, Graph, Node, Value, ValueId};
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

/// Runs every fusion to a fixed point; returns the number of nodes removed.
pub fn run(g: &mut Graph) -> usize {
    let mut removed = 0;
    removed += apply(g, conv_bn);
    removed += apply(g, matmul_add);
    removed += apply(g, silu);
    removed += apply(g, activation);
    removed
}

/// Who reads each value: node indices, plus whether it is a graph output.
pub(super) struct Uses {
    pub(super) readers: Vec<Vec<usize>>,
    pub(super) is_output: Vec<bool>,
}

impl Uses {
    pub(super) fn new(g: &Graph) -> Uses {
        let mut readers = vec![Vec::new(); g.values.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            for &v in n.inputs.iter().flatten().chain(&n.implicit_inputs) {
                if !readers[v].contains(&i) {
                    readers[v].push(i);
                }
            }
        }
        let mut is_output = vec![false; g.values.len()];
        for &o in &g.outputs {
            is_output[o] = true;
        }
        Uses { readers, is_output }
    }
    /// The single reader of `v`, if `v` has exactly one and is not a graph output.
    pub(super) fn single(&self, v: ValueId) -> Option<usize> {
        match self.readers[v].as_slice() {
            [r] if !self.is_output[v] => Some(*r),
            _ => None,
        }
    }
}

/// A rule looks at node `i` and, if it matches, rewrites the graph and returns the index
/// of the node to remove.
type Rule = fn(&mut Graph, &Uses, usize) -> Option<usize>;

fn apply(g: &mut Graph, rule: Rule) -> usize {
    let mut total = 0;
    loop {
        let uses = Uses::new(g);
        let mut dead = vec![false; g.nodes.len()];
        let mut touched = vec![false; g.nodes.len()];
        let mut n = 0;
        for i in 0..g.nodes.len() {
            if dead[i] || touched[i] {
                continue;
            }
            if let Some(j) = rule(g, &uses, i) {
                dead[j] = true;
                touched[i] = true;
                n += 1;
            }
        }
        if n == 0 {
            return total;
        }
        let mut k = dead.into_iter();
        g.nodes.retain(|_| !k.next().unwrap_or(false));
        total += n;
    }
}

pub(super) fn op<T: 'static>(n: &Node) -> Option<&T> {
    n.op.as_any().downcast_ref::<T>()
}

fn f32_const(g: &Graph, v: Option<ValueId>) -> Option<&[f32]> {
    let t = g.const_tensor(v?)?;
    if g.inputs.contains(&v?) {
        return None;
    }
    t.as_slice::<f32>().ok()
}

fn is_f32(g: &Graph, v: ValueId) -> bool {
    g.values[v].fact.dtype == Some(DType::F32)
}

/// Moves `j`'s first output onto `i` (so `i` now produces what `j` produced).
pub(super) fn take_output(g: &mut Graph, i: usize, j: usize) {
    let out = g.nodes[j].outputs.first().copied().flatten();
    g.nodes[i].outputs[0] = out;
    if let Some(o) = out {
        if g.nodes[i].name.is_empty() {
            g.nodes[i].name = g.values[o].name.clone();
        }
    }
}

pub(super) fn new_const(g: &mut Graph, name: String, t: Tensor) -> ValueId {
    let v = Value::from(t);
    let id = g.add_value(name, Fact::from_value(&v));
    g.consts[id] = Some(v);
    id
}

fn conv_bn(g: &mut Graph, uses: &Uses, i: usize) -> Option<usize> {
    let conv = op::<Conv>(&g.nodes[i])?;
    if conv.activation.is_some() {
        return None;
    }
    let y = g.nodes[i].outputs.first().copied().flatten()?;
    let j = uses.single(y)?;
    let bn = op::<BatchNormalization>(&g.nodes[j])?;
    if bn.training_mode || !bn.spatial || g.nodes[j].inputs.first().copied().flatten() != Some(y) {
        return None;
    }
    if g.nodes[j]
        .outputs
        .iter()
        .skip(1)
        .flatten()
        .any(|&o| !uses.readers[o].is_empty() || uses.is_output[o])
    {
        return None;
    }
    let eps = bn.epsilon;
    let p = |k: usize| f32_const(g, g.nodes[j].inputs.get(k).copied().flatten());
    let (scale, shift, mean, var) = (p(1)?, p(2)?, p(3)?, p(4)?);
    let w_id = g.nodes[i].inputs.get(1).copied().flatten()?;
    let w = g.const_tensor(w_id)?;
    let m = *w.shape().first()?;
    if w.dtype() != DType::F32
        || [scale.len(), shift.len(), mean.len(), var.len()]
            .iter()
            .any(|&l| l != m)
    {
        return None;
    }
    let bias = match g.nodes[i].inputs.get(2).copied().flatten() {
        Some(b) => {
            let b = f32_const(g, Some(b))?;
            if b.len() != m {
                return None;
            }
            b.to_vec()
        }
        None => vec![0.0; m],
    };
    let mut wv = w.as_slice::<f32>().ok()?.to_vec();
    let bv = fold_bn(&mut wv, &bias, scale, shift, mean, var, eps);
    let w_shape = w.shape().to_vec();
    let base = g.nodes[i].name.clone();
    let w_new = new_const(
        g,
        format!("{base}/bn_folded_w"),
        Tensor::from_vec(w_shape, wv).ok()?,
    );
    let b_new = new_const(g, format!("{base}/bn_folded_b"), Tensor::vector(bv));
    let node = &mut g.nodes[i];
    node.inputs.resize(3, None);
    node.inputs[1] = Some(w_new);
    node.inputs[2] = Some(b_new);
    take_output(g, i, j);
    Some(j)
}

/// Folds an inference BatchNormalization into the weight W [M, …] (scaled in place) and
/// bias b [M] of the Conv before it, returning the new bias: per output channel c,
/// f = scale / √(var + ε), W'[c] = f·W[c], b' = f·(b − mean) + shift. Shared with the
/// static quantizer (`compress::qdq`), which folds before it places Q/DQ pairs.
pub fn fold_bn(
    w: &mut [f32],
    bias: &[f32],
    scale: &[f32],
    shift: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Vec<f32> {
    let m = bias.len();
    let s: Vec<f32> = (0..m).map(|c| scale[c] / (var[c] + eps).sqrt()).collect();
    let per = w.len() / m.max(1);
    for (c, chunk) in w.chunks_mut(per.max(1)).enumerate().take(m) {
        chunk.iter_mut().for_each(|x| *x *= s[c]);
    }
    (0..m)
        .map(|c| (bias[c] - mean[c]) * s[c] + shift[c])
        .collect()
}

fn matmul_add(g: &mut Graph, uses: &Uses, i: usize) -> Option<usize> {
    let mm = op::<MatMul>(&g.nodes[i])?;
    if mm.activation.is_some() || mm.bias.is_some() {
        return None;
    }
    let y = g.nodes[i].outputs.first().copied().flatten()?;
    if !is_f32(g, y) {
        return None;
    }
    let n_out = g.values[y].fact.shape.as_ref()?.last()?.known()?;
    let j = uses.single(y)?;
    let add = op::<Binary>(&g.nodes[j])?;
    if !matches!(add.op, BinOp::Add) || add.legacy_axis.is_some() {
        return None;
    }
    let other = g.nodes[j]
        .inputs
        .iter()
        .flatten()
        .copied()
        .find(|&v| v != y)?;
    if g.nodes[j]
        .inputs
        .iter()
        .flatten()
        .filter(|&&v| v == y)
        .count()
        != 1
    {
        return None;
    }
    let b = g.const_tensor(other)?;
    // A row vector: [N] or [1, …, 1, N], no wider than the output's rank.
    let rank = g.values[y].fact.rank()?;
    if b.dtype() != DType::F32
        || b.len() != n_out
        || b.rank() > rank
        || b.shape().last() != Some(&n_out)
    {
        return None;
    }
    let bias = Arc::new(Tensor::vector(b.as_slice::<f32>().ok()?.to_vec()));
    g.nodes[i].op.as_any_mut()?.downcast_mut::<MatMul>()?.bias = Some(bias);
    take_output(g, i, j);
    Some(j)
}

/// Sets `act` on a Conv/Gemm/MatMul node without one; false if the node is not such.
fn set_activation(node: &mut Node, act: Activation) -> bool {
    let Some(any) = node.op.as_any_mut() else {
        return false;
    };
    if let Some(c) = any.downcast_mut::<Conv>() {
        if c.activation.is_none() {
            c.activation = Some(act);
            return true;
        }
    } else if let Some(c) = any.downcast_mut::<Gemm>() {
        if c.activation.is_none() {
            c.activation = Some(act);
            return true;
        }
    } else if let Some(c) = any.downcast_mut::<MatMul>() {
        if c.activation.is_none() {
            c.activation = Some(act);
            return true;
        }
    }
    false
}

fn fusable_producer(n: &Node) -> bool {
    op::<Conv>(n).is_some_and(|c| c.activation.is_none())
        || op::<Gemm>(n).is_some_and(|c| c.activation.is_none())
        || op::<MatMul>(n).is_some_and(|c| c.activation.is_none())
}

fn activation(g: &mut Graph, uses: &Uses, i: usize) -> Option<usize> {
    if !fusable_producer(&g.nodes[i]) {
        return None;
    }
    let y = g.nodes[i].outputs.first().copied().flatten()?;
    if !is_f32(g, y) {
        return None;
    }
    let j = uses.single(y)?;
    let consumer = &g.nodes[j];
    if consumer.inputs.first().copied().flatten() != Some(y) {
        return None;
    }
    let act = if let Some(u) = op::<Unary>(consumer) {
        u.activation()?
    } else if let Some(c) = op::<Clip>(consumer) {
        let fact = |k: usize| {
            consumer
                .inputs
                .get(k)
                .copied()
                .flatten()
                .map(|v| &g.values[v].fact)
        };
        c.activation(fact(1), fact(2))?
    } else {
        return None;
    };
    if !set_activation(&mut g.nodes[i], act) {
        return None;
    }
    take_output(g, i, j);
    Some(j)
}

/// x·sigmoid(x): the producer's output feeds a Sigmoid and a Mul that multiplies the two.
fn silu(g: &mut Graph, uses: &Uses, i: usize) -> Option<usize> {
    if !fusable_producer(&g.nodes[i]) {
        return None;
    }
    let y = g.nodes[i].outputs.first().copied().flatten()?;
    if !is_f32(g, y) || uses.is_output[y] {
        return None;
    }
    let [a, b] = uses.readers[y].as_slice() else {
        return None;
    };
    let (sig, mul) = if op::<Unary>(&g.nodes[*a]).is_some_and(|u| matches!(u.op, UnaryOp::Sigmoid))
    {
        (*a, *b)
    } else {
        (*b, *a)
    };
    if !op::<Unary>(&g.nodes[sig]).is_some_and(|u| matches!(u.op, UnaryOp::Sigmoid)) {
        return None;
    }
    if !op::<Binary>(&g.nodes[mul]).is_some_and(|m| matches!(m.op, BinOp::Mul)) {
        return None;
    }
    let s = g.nodes[sig].outputs.first().copied().flatten()?;
    if uses.single(s) != Some(mul) {
        return None;
    }
    let mut ins: Vec<ValueId> = g.nodes[mul].inputs.iter().flatten().copied().collect();
    ins.sort_unstable();
    let mut want = vec![y, s];
    want.sort_unstable();
    if ins != want {
        return None;
    }
    // The Sigmoid dies with the Mul: make it dead first by giving it no readers, then
    // let the caller drop the Mul; the dangling Sigmoid is removed by dead-node removal.
    if !set_activation(&mut g.nodes[i], Activation::Silu) {
        return None;
    }
    take_output(g, i, mul);
    g.nodes[sig].outputs[0] = None;
    Some(mul)
}
