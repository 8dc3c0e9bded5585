//! Last pass: hands each op its load-time constant inputs so that it can pre-pack
//! weights once (see [`crate::graph::Op::prepack`]). Graph inputs are never passed, even
//! when an initializer gives them a default, since a caller may override them.

use crate::error::Result;
use crate::graph::{Graph, Value};

pub fn run(g: &mut Graph) -> Result<()> {
    let Graph {
        nodes,
        consts,
        inputs,
        ..
    } = g;
    for node in nodes.iter_mut() {
        let cs: Vec<_> = node
            .inputs
            .iter()
            .map(|i| match i {
                Some(id) if !inputs.contains(id) => match consts.get(*id) {
                    Some(Some(Value::Tensor(t))) => Some(&**t),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        if cs.iter().any(Option::is_some) {
            node.op
                .prepack(&cs)
                .map_err(|e| e.at_node(&node.name, &node.op_type))?;
        }
    }
    Ok(())
}
