//! ONNX structs → IR: resolves names (including outer-scope names used inside
//! subgraphs), parses every node through the op table, sorts topologically and rejects
//! cycles, dangling names and duplicate definitions. Unsupported ops are collected over
//! the whole model and reported in one error.

use super::shape::{Dim, Fact, ValueKind};
use super::{ops, Graph, Node, NodeCx, Value, ValueId};
use crate::error::{Error, ErrorKind, Result};
use crate::onnx::proto::{DimProto, GraphProto, ModelProto, TypeProto, ValueInfoProto};
use crate::onnx::{tensor_from_proto, tensor_from_sparse};
use crate::tensor::DType;
use std::collections::{BTreeSet, HashMap};

/// Opset versions by domain ("" and "ai.onnx" are the same domain).
#[derive(Debug, Clone, Default)]
pub struct Opsets(pub HashMap<String, i64>);

impl Opsets {
    pub fn from_model(m: &ModelProto) -> Opsets {
        let mut map = HashMap::new();
        for o in &m.opset_import {
            map.insert(canonical_domain(&o.domain).to_string(), o.version);
        }
        Opsets(map)
    }
    /// Version for a domain; a domain the model never imported gets a high default
    /// (the newest rules), since some writers omit imports they use.
    pub fn get(&self, domain: &str) -> i64 {
        self.0.get(canonical_domain(domain)).copied().unwrap_or(
            if canonical_domain(domain).is_empty() {
                22
            } else {
                1
            },
        )
    }
}

pub fn canonical_domain(d: &str) -> &str {
    if d == "ai.onnx" {
        ""
    } else {
        d
    }
}

/// Converts a declared ONNX type to a fact. Exotic element types yield no dtype.
pub fn fact_from_type(t: &Option<TypeProto>) -> Fact {
    match t {
        Some(TypeProto::Tensor { elem_type, shape }) => Fact {
            kind: ValueKind::Tensor,
            dtype: DType::from_onnx(*elem_type).ok(),
            shape: shape.as_ref().map(|dims| {
                dims.iter()
                    .map(|d| match d {
                        // Some exporters write 0 for "any" (silero VAD declares [0,0]);
                        // a declared 0 is treated as unknown, never enforced.
                        DimProto::Value(0) => Dim::Unknown,
                        DimProto::Value(v) => usize::try_from(*v).map_or(Dim::Unknown, Dim::Known),
                        // "?" marks an unnamed dim (paddle2onnx): two "?" are not the
                        // same symbol.
                        DimProto::Param(p) if !p.is_empty() && p != "?" => Dim::Sym(p.clone()),
                        _ => Dim::Unknown,
                    })
                    .collect()
            }),
            value: None,
        },
        Some(TypeProto::Sequence(inner)) => {
            let f = inner
                .as_ref()
                .map(|b| fact_from_type(&Some((**b).clone())))
                .unwrap_or_default();
            Fact {
                kind: ValueKind::Sequence,
                dtype: f.dtype,
                shape: None,
                value: None,
            }
        }
        Some(TypeProto::Optional(inner)) => {
            let f = inner
                .as_ref()
                .map(|b| fact_from_type(&Some((**b).clone())))
                .unwrap_or_default();
            Fact {
                kind: ValueKind::Optional,
                dtype: f.dtype,
                shape: None,
                value: None,
            }
        }
        _ => Fact::unknown(),
    }
}

struct Builder<'m> {
    opsets: &'m Opsets,
    /// Name → id maps of the enclosing graphs, innermost last (not including the graph
    /// being built).
    outer: Vec<HashMap<String, ValueId>>,
    unsupported: BTreeSet<String>,
    depth: u32,
}

/// Builds the main graph of a model.
pub fn build_model(m: &ModelProto) -> Result<(Graph, Opsets)> {
    let opsets = Opsets::from_model(m);
    let gp = m
        .graph
        .as_ref()
        .ok_or_else(|| Error::decode("model has no graph"))?;
    let expanded;
    let gp = if m.functions.is_empty() {
        gp
    } else {
        expanded = super::passes::inline_functions::inline(gp, &m.functions)?;
        &expanded
    };
    let mut b = Builder {
        opsets: &opsets,
        outer: Vec::new(),
        unsupported: BTreeSet::new(),
        depth: 0,
    };
    let g = b.graph(gp, true);
    if !b.unsupported.is_empty() {
        let list: Vec<_> = b.unsupported.into_iter().collect();
        return Err(Error::unsupported_op(format!(
            "{} unsupported operator(s): {}",
            list.len(),
            list.join(", ")
        )));
    }
    Ok((g?, opsets))
}

impl<'m> Builder<'m> {
    fn graph(&mut self, gp: &GraphProto, main: bool) -> Result<Graph> {
        if self.depth > crate::onnx::wire::MAX_DEPTH {
            return Err(Error::invalid_model("subgraphs nested too deeply"));
        }
        let mut g = Graph::default();
        let mut scope: HashMap<String, ValueId> = HashMap::new();
        let define = |g: &mut Graph,
                      scope: &mut HashMap<String, ValueId>,
                      name: &str,
                      fact: Fact|
         -> Result<ValueId> {
            if scope.contains_key(name) {
                return Err(Error::invalid_model(format!(
                    "value '{name}' is defined more than once"
                )));
            }
            let id = g.add_value(name.to_string(), fact);
            scope.insert(name.to_string(), id);
            Ok(id)
        };

        // Initializers first; an input of the same name is an input with a default.
        let mut init_ids = HashMap::new();
        for t in &gp.initializer {
            if t.name.is_empty() {
                return Err(Error::invalid_model("initializer without a name"));
            }
            let tensor = tensor_from_proto(t).map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("initializer '{}': {}", t.name, e.message()),
                )
            })?;
            let id = define(&mut g, &mut scope, &t.name, Fact::unknown())?;
            g.values[id].fact = Fact::from_value(&Value::from(tensor.clone()));
            g.consts[id] = Some(Value::from(tensor));
            init_ids.insert(t.name.clone(), id);
        }
        for s in &gp.sparse_initializer {
            let name = s
                .values
                .as_ref()
                .map(|v| v.name.clone())
                .unwrap_or_default();
            let tensor = tensor_from_sparse(s)?;
            let id = define(&mut g, &mut scope, &name, Fact::unknown())?;
            g.values[id].fact = Fact::from_value(&Value::from(tensor.clone()));
            g.consts[id] = Some(Value::from(tensor));
            init_ids.insert(name, id);
        }
        for vi in &gp.input {
            if vi.name.is_empty() {
                return Err(Error::invalid_model("graph input without a name"));
            }
            if let Some(&id) = init_ids.get(&vi.name) {
                // Overridable initializer: keep the constant as the default, expose it as
                // an input, and forget its value in the fact so that neither inference
                // nor folding bakes in a value the caller may replace.
                if main {
                    g.inputs.push(id);
                    g.values[id].fact.value = None;
                }
                continue;
            }
            let id = define(&mut g, &mut scope, &vi.name, fact_from_type(&vi.r#type))?;
            g.inputs.push(id);
        }
        for nd in &gp.node {
            for o in &nd.output {
                if !o.is_empty() {
                    define(&mut g, &mut scope, o, Fact::unknown())?;
                }
            }
        }
        // Declared types of intermediate values refine what inference finds.
        for vi in gp.value_info.iter().chain(&gp.output) {
            if let Some(&id) = scope.get(&vi.name) {
                if g.consts[id].is_none() && !g.inputs.contains(&id) {
                    g.values[id].fact = fact_from_type(&vi.r#type);
                }
            }
        }

        // Parse nodes.
        let mut nodes: Vec<Node> = Vec::with_capacity(gp.node.len());
        for nd in &gp.node {
            let mut inputs = Vec::with_capacity(nd.input.len());
            for name in &nd.input {
                if name.is_empty() {
                    inputs.push(None);
                } else {
                    inputs.push(Some(self.resolve(&mut g, &mut scope, name)?));
                }
            }
            let outputs = nd
                .output
                .iter()
                .map(|o| {
                    if o.is_empty() {
                        None
                    } else {
                        scope.get(o).copied()
                    }
                })
                .collect();
            let op_key = format!(
                "{}{}",
                if canonical_domain(&nd.domain).is_empty() {
                    String::new()
                } else {
                    format!("{}.", nd.domain)
                },
                nd.op_type
            );
            let opset = self.opsets.get(&nd.domain);
            let Some(def) = ops::lookup(canonical_domain(&nd.domain), &nd.op_type) else {
                self.unsupported.insert(op_key);
                continue;
            };
            // Subgraphs see this graph's names as their outer scope.
            let has_subgraphs = nd
                .attribute
                .iter()
                .any(|a| a.g.is_some() || !a.graphs.is_empty());
            if has_subgraphs {
                self.outer.push(scope.clone());
            }
            self.depth += 1;
            let parsed = {
                let this = &mut *self;
                let mut sub = |sg: &GraphProto| this.graph(sg, false);
                let mut cx = NodeCx::new(nd, opset, &mut sub);
                (def.parse)(&mut cx).and_then(|op| cx.finish().map(|_| op))
            };
            self.depth -= 1;
            if has_subgraphs {
                self.outer.pop();
            }
            let op = match parsed {
                Ok(op) => op,
                Err(e) if e.kind() == ErrorKind::UnsupportedOp => {
                    self.unsupported
                        .insert(format!("{op_key} ({})", e.message()));
                    continue;
                }
                Err(e) => return Err(e.at_node(&nd.name, &nd.op_type)),
            };
            // Outer names read by this node's subgraphs become implicit inputs here.
            let mut implicit_inputs = Vec::new();
            for sg in op.subgraphs() {
                for name in sg.capture_names() {
                    let id = self.resolve(&mut g, &mut scope, name)?;
                    if !implicit_inputs.contains(&id) {
                        implicit_inputs.push(id);
                    }
                }
            }
            nodes.push(Node {
                name: nd.name.clone(),
                op_type: nd.op_type.clone(),
                domain: canonical_domain(&nd.domain).to_string(),
                op,
                inputs,
                outputs,
                implicit_inputs,
                attrs: nd
                    .attribute
                    .iter()
                    .filter(|a| a.t.is_none() && a.g.is_none() && a.sparse_tensor.is_none())
                    .filter(|a| a.tensors.is_empty() && a.graphs.is_empty())
                    .cloned()
                    .collect(),
                opset,
            });
        }
        for vi in &gp.output {
            let id = self.resolve_output(&mut g, &mut scope, vi)?;
            g.outputs.push(id);
        }
        g.nodes = toposort(&g, nodes)?;
        Ok(g)
    }

    fn resolve_output(
        &mut self,
        g: &mut Graph,
        scope: &mut HashMap<String, ValueId>,
        vi: &ValueInfoProto,
    ) -> Result<ValueId> {
        if vi.name.is_empty() {
            return Err(Error::invalid_model("graph output without a name"));
        }
        self.resolve(g, scope, &vi.name)
    }

    /// Finds a name in this graph, or captures it from an enclosing one.
    fn resolve(
        &mut self,
        g: &mut Graph,
        scope: &mut HashMap<String, ValueId>,
        name: &str,
    ) -> Result<ValueId> {
        if let Some(&id) = scope.get(name) {
            return Ok(id);
        }
        if self.outer.iter().any(|s| s.contains_key(name)) {
            let id = g.add_value(name.to_string(), Fact::unknown());
            scope.insert(name.to_string(), id);
            g.captures.push((id, name.to_string()));
            return Ok(id);
        }
        Err(Error::invalid_model(format!(
            "'{name}' is used but never defined"
        )))
    }
}

/// Orders nodes so each runs after its producers (Kahn's algorithm, stable).
fn toposort(g: &Graph, nodes: Vec<Node>) -> Result<Vec<Node>> {
    let n = nodes.len();
    let mut producer: HashMap<ValueId, usize> = HashMap::new();
    for (i, nd) in nodes.iter().enumerate() {
        for o in nd.outputs.iter().flatten() {
            producer.insert(*o, i);
        }
    }
    let mut indeg = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, nd) in nodes.iter().enumerate() {
        let mut deps: Vec<usize> = nd
            .inputs
            .iter()
            .flatten()
            .chain(&nd.implicit_inputs)
            .filter_map(|v| producer.get(v).copied())
            .collect();
        deps.sort_unstable();
        deps.dedup();
        indeg[i] = deps.len();
        for d in deps {
            users[d].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(&i) = ready.iter().next() {
        ready.remove(&i);
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() != n {
        let stuck: Vec<String> = (0..n)
            .filter(|i| indeg[*i] > 0)
            .take(5)
            .map(|i| {
                let nd = &nodes[i];
                let out = nd
                    .outputs
                    .iter()
                    .flatten()
                    .next()
                    .map_or("?", |&o| g.value_name(o));
                format!("{} '{}'", nd.op_type, out)
            })
            .collect();
        return Err(Error::invalid_model(format!(
            "the graph has a cycle through {}",
            stuck.join(", ")
        )));
    }
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}
