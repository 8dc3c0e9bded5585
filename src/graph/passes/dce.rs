//! Dead-node removal: drops nodes none of whose outputs reach a graph output.

use crate::graph::Graph;

/// Removes dead nodes; returns how many were removed.
pub fn run(g: &mut Graph) -> usize {
    let mut live = vec![false; g.values.len()];
    for &o in &g.outputs {
        live[o] = true;
    }
    let mut keep = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate().rev() {
        // Nodes with non-deterministic side effects still die if unused: ONNX has no
        // observable side effects.
        if n.outputs.iter().flatten().any(|&o| live[o]) {
            keep[i] = true;
            for &v in n.inputs.iter().flatten().chain(&n.implicit_inputs) {
                live[v] = true;
            }
        }
    }
    let before = g.nodes.len();
    let mut k = keep.into_iter();
    g.nodes.retain(|_| k.next().unwrap_or(true));
    // Constants nobody reads any more are released.
    for (id, c) in g.consts.iter_mut().enumerate() {
        if !live[id] && !g.inputs.contains(&id) {
            *c = None;
        }
    }
    before - g.nodes.len()
}
