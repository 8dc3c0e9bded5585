//! Graph-editing helpers shared by the compression steps: fresh value names, the graph's
//! constant weights (initializers and Constant nodes), node construction, attribute
//! reads, the clean-up of weights nothing reads any more, and the plan-then-emit loop the
//! node-by-node steps share.

use super::StepReport;
use crate::error::Result;
use crate::onnx::proto::{
    DimProto, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto, ValueInfoProto,
};
use crate::onnx::tensor_from_proto;
use crate::tensor::Tensor;
use std::collections::{HashMap, HashSet};

/// Fresh value and node names that collide with nothing in the model.
#[derive(Default)]
pub struct Names {
    used: HashSet<String>,
}

impl Names {
    /// Every name `g` and its subgraphs use: values, initializers, nodes.
    pub fn of(g: &GraphProto) -> Self {
        let mut n = Names::default();
        n.collect(g);
        n
    }
    fn collect(&mut self, g: &GraphProto) {
        for n in &g.node {
            self.used.extend(n.input.iter().chain(&n.output).cloned());
            if !n.name.is_empty() {
                self.used.insert(n.name.clone());
            }
            for a in &n.attribute {
                for sg in a.g.iter().chain(&a.graphs) {
                    self.collect(sg);
                }
            }
        }
        self.used
            .extend(g.initializer.iter().map(|t| t.name.clone()));
        self.used
            .extend(g.input.iter().chain(&g.output).map(|v| v.name.clone()));
    }
    /// `base`, or `base_K` with the first K that is free.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.used.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used.insert(name.clone());
        name
    }
}

/// Gives every unnamed node (subgraphs too) a unique name, `<op>_<k>`, so that reports,
/// `--exclude` and the accuracy guard can point at any node. Named nodes keep their names.
pub fn name_nodes(m: &mut ModelProto) {
    fn walk(g: &mut GraphProto, names: &mut Names) {
        for n in &mut g.node {
            if n.name.is_empty() {
                n.name = names.fresh(&n.op_type);
            }
            for a in &mut n.attribute {
                for sg in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                    walk(sg, names);
                }
            }
        }
    }
    if let Some(g) = m.graph.as_mut() {
        let mut names = Names::of(g);
        walk(g, &mut names);
    }
}

/// The graph's constants: initializers, and the `value` of Constant nodes (PP-OCR and
/// silero keep their weights there).
pub struct Constants<'a> {
    initializers: HashMap<&'a str, &'a TensorProto>,
    nodes: HashMap<&'a str, &'a TensorProto>,
}

impl<'a> Constants<'a> {
    pub fn new(g: &'a GraphProto) -> Self {
        let nodes = g
            .node
            .iter()
            .filter(|n| n.op_type == "Constant" && n.domain.is_empty())
            .filter_map(|n| {
                let t = n.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?;
                Some((n.output.first()?.as_str(), t))
            })
            .collect();
        // Initializers listed as graph inputs too count as constants: models of IR < 4
        // list every initializer there.
        let initializers = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        Constants {
            initializers,
            nodes,
        }
    }
    /// The stored tensor named `name`, if it is a constant of this graph.
    pub fn proto(&self, name: &str) -> Option<&'a TensorProto> {
        self.initializers
            .get(name)
            .or_else(|| self.nodes.get(name))
            .copied()
    }
    /// The decoded constant named `name`: None when it is no constant of this graph.
    pub fn get(&self, name: &str) -> Option<Result<Tensor>> {
        self.proto(name).map(tensor_from_proto)
    }
}

/// The model's default-domain (ai.onnx) opset; 1 when it imports none.
pub fn default_opset(m: &ModelProto) -> i64 {
    m.opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version)
}

pub fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(default, |a| a.i)
}

pub fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(default, |a| a.f)
}

/// A node of the default domain.
pub fn node(op: &str, name: String, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name,
        op_type: op.to_string(),
        ..Default::default()
    }
}

/// Drops initializers and Constant nodes that nothing reads any more (the float weights
/// just replaced), keeping graph inputs and outputs and anything a subgraph names.
pub fn drop_unused_constants(g: &mut GraphProto) {
    fn reads(g: &GraphProto, used: &mut HashSet<String>) {
        for n in &g.node {
            used.extend(n.input.iter().cloned());
            for a in &n.attribute {
                for sg in a.g.iter().chain(&a.graphs) {
                    reads(sg, used);
                    used.extend(sg.output.iter().map(|o| o.name.clone()));
                }
            }
        }
    }
    let mut used = HashSet::new();
    reads(g, &mut used);
    used.extend(g.output.iter().map(|o| o.name.clone()));
    // An initializer that is also a graph input is an overridable default: keep it.
    used.extend(g.input.iter().map(|i| i.name.clone()));
    g.initializer.retain(|t| used.contains(&t.name));
    g.node.retain(|n| {
        !(n.op_type == "Constant"
            && n.domain.is_empty()
            && n.output.iter().all(|o| !used.contains(o)))
    });
}

/// A float32 graph input or output of fixed shape.
pub fn f32_value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto::Tensor {
            elem_type: crate::tensor::DType::F32.to_onnx(),
            shape: Some(dims.iter().map(|&d| DimProto::Value(d)).collect()),
        }),
    }
}

/// A model around `g` importing the default domain at `opset` (IR 8).
pub fn model_of(g: GraphProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![crate::onnx::proto::OperatorSetId {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(g),
        ..Default::default()
    }
}

/// What a step did with a node it planned to rewrite.
pub enum Emitted {
    /// Rewritten: its replacement is in the output.
    Changed,
    /// Left as it was (the node handed back), for this reason.
    Kept(NodeProto, String),
}

/// Plans one node: Ok(None) for a node the step has nothing to do with, Err(reason) for a
/// candidate it leaves alone.
pub type PlanFn<'a, P> =
    dyn FnMut(&Constants, &NodeProto) -> std::result::Result<Option<P>, String> + 'a;

/// Emits the rewrite of a planned node into `out` (its nodes) and `inits` (new tensors).
pub type EmitFn<'a, P> =
    dyn FnMut(NodeProto, P, &mut Vec<NodeProto>, &mut Vec<TensorProto>) -> Result<Emitted> + 'a;

/// The loop every node-by-node weight rewrite shares: in each graph, subgraphs first
/// (each plans with the constants it can see), every node is planned against the graph
/// as it was, then the planned ones are emitted in place; the report gets what changed
/// and what was kept and why, and the constants nothing reads any more are dropped.
pub fn rewrite_nodes<P>(
    g: &mut GraphProto,
    plan: &mut PlanFn<P>,
    emit: &mut EmitFn<P>,
    report: &mut StepReport,
) -> Result<()> {
    for n in &mut g.node {
        for a in &mut n.attribute {
            for sg in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                rewrite_nodes(sg, plan, emit, report)?;
            }
        }
    }
    let plans: Vec<_> = {
        let consts = Constants::new(g);
        g.node.iter().map(|n| plan(&consts, n)).collect()
    };
    let mut out = Vec::with_capacity(g.node.len());
    let mut inits = Vec::new();
    for (n, p) in std::mem::take(&mut g.node).into_iter().zip(plans) {
        let (name, op) = (n.name.clone(), n.op_type.clone());
        match p {
            Ok(None) => out.push(n),
            Err(why) => {
                report.kept.push((name, op, why));
                out.push(n);
            }
            Ok(Some(p)) => match emit(n, p, &mut out, &mut inits)? {
                Emitted::Changed => report.changed.push((name, op)),
                Emitted::Kept(n, why) => {
                    report.kept.push((name, op, why));
                    out.push(n);
                }
            },
        }
    }
    g.node = out;
    g.initializer.extend(inits);
    drop_unused_constants(g);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_nodes_get_unique_names_that_avoid_value_names() {
        let mut g = GraphProto {
            node: vec![
                node("Relu", String::new(), &["x"], &["Relu"]),
                node("Relu", String::new(), &["Relu"], &["y"]),
                node("Relu", "keep".into(), &["y"], &["z"]),
            ],
            ..Default::default()
        };
        g.node[0].name.clear();
        let mut m = ModelProto {
            graph: Some(g),
            ..Default::default()
        };
        name_nodes(&mut m);
        let names: Vec<_> = m.graph.unwrap().node.into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["Relu_1", "Relu_2", "keep"]);
    }
}
