//! Graph rewrites, one small named pass per file, each tested on its own.
//! `optimize` runs them in order after shape inference.

pub mod const_fold;
pub mod dce;
pub mod fuse;
pub mod inline_functions;
pub mod lut;
pub mod prepack;
pub mod qdq;

use super::Graph;
use crate::error::Result;

/// Runs the standard pipeline on a graph, then on its subgraphs, whose captured outer
/// constants are seeded as constants inside so that folding reaches into If/Loop bodies.
pub fn optimize(g: &mut Graph) -> Result<()> {
    qdq::run(g);
    const_fold::run(g)?;
    // QDQ fusion leaves DQs nobody reads; the table pass must not count them as readers.
    dce::run(g);
    lut::run(g);
    fuse::run(g);
    dce::run(g);
    let Graph {
        nodes,
        values,
        consts,
        ..
    } = g;
    for node in nodes.iter_mut() {
        for sub in node.op.subgraphs_mut() {
            for (cid, name) in sub.captures.clone() {
                let outer = values.iter().position(|v| v.name == name);
                if let Some(c) = outer.and_then(|o| consts[o].clone()) {
                    sub.values[cid].fact = crate::graph::Fact::from_value(&c);
                    sub.consts[cid] = Some(c);
                }
            }
            optimize(sub)?;
        }
    }
    prepack::run(g)
}
