//! Facts about values (dtype, symbolic shape, constant value) and the shape-inference
//! driver. Symbolic dims (`N`, `batch`, unknown) stay symbolic at load and are bound to
//! numbers when inputs arrive (see `plan::bind_inputs`).

use super::{Graph, InferCx, Value};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::fmt;
use std::sync::Arc;

/// One dimension: a number, a named symbol, or unknown.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(usize),
    Sym(String),
    Unknown,
}

impl Dim {
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(v) => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(v) => write!(f, "{v}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// What kind of value a fact describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ValueKind {
    #[default]
    Tensor,
    Sequence,
    Optional,
    /// An omitted optional input.
    Absent,
}

/// What is known about a value before running.
#[derive(Clone, Debug, Default)]
pub struct Fact {
    pub kind: ValueKind,
    /// Element type (for sequences/optionals: of the tensors inside).
    pub dtype: Option<DType>,
    /// Shape, if the rank is known.
    pub shape: Option<Vec<Dim>>,
    /// The value, if constant at load.
    pub value: Option<Arc<Tensor>>,
}

impl Fact {
    pub fn unknown() -> Fact {
        Fact::default()
    }
    pub fn absent() -> Fact {
        Fact {
            kind: ValueKind::Absent,
            ..Fact::default()
        }
    }
    pub fn is_absent(&self) -> bool {
        self.kind == ValueKind::Absent
    }
    pub fn dtype(dt: DType) -> Fact {
        Fact {
            dtype: Some(dt),
            ..Fact::default()
        }
    }
    pub fn new(dt: Option<DType>, shape: Option<Vec<Dim>>) -> Fact {
        Fact {
            dtype: dt,
            shape,
            ..Fact::default()
        }
    }
    pub fn known(dt: DType, shape: &[usize]) -> Fact {
        Fact {
            dtype: Some(dt),
            shape: Some(shape.iter().map(|&d| Dim::Known(d)).collect()),
            ..Fact::default()
        }
    }
    pub fn sequence(dt: Option<DType>) -> Fact {
        Fact {
            kind: ValueKind::Sequence,
            dtype: dt,
            ..Fact::default()
        }
    }
    pub fn from_value(v: &Value) -> Fact {
        match v {
            Value::Tensor(t) => Fact {
                kind: ValueKind::Tensor,
                dtype: Some(t.dtype()),
                shape: Some(t.shape().iter().map(|&d| Dim::Known(d)).collect()),
                value: Some(t.clone()),
            },
            Value::Sequence(s) => Fact::sequence(s.first().map(|t| t.dtype())),
            Value::Optional(_) => Fact {
                kind: ValueKind::Optional,
                ..Fact::default()
            },
        }
    }
    pub fn with_shape(mut self, shape: Vec<Dim>) -> Fact {
        self.shape = Some(shape);
        self
    }
    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(|s| s.len())
    }
    /// Concrete dims when every dim is known.
    pub fn concrete_shape(&self) -> Option<Vec<usize>> {
        self.shape.as_ref()?.iter().map(|d| d.known()).collect()
    }
    /// The constant value as i64s, if known (shape/axes inputs).
    pub fn const_i64(&self) -> Option<Vec<i64>> {
        self.value.as_ref().and_then(|t| t.to_i64_vec().ok())
    }
    pub fn shape_string(&self) -> String {
        match &self.shape {
            None => "?".into(),
            Some(s) => format!(
                "[{}]",
                s.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

impl fmt::Display for Fact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dt = self.dtype.map_or("?", |d| d.name());
        match self.kind {
            ValueKind::Sequence => write!(f, "seq<{dt}>"),
            ValueKind::Optional => write!(f, "optional<{dt}>"),
            ValueKind::Absent => f.write_str("(absent)"),
            ValueKind::Tensor => write!(f, "{dt}{}", self.shape_string()),
        }
    }
}

/// Numpy broadcasting of two symbolic shapes.
pub fn broadcast_dims(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>> {
    let r = a.len().max(b.len());
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let da = if i + a.len() >= r {
            &a[i + a.len() - r]
        } else {
            &Dim::Known(1)
        };
        let db = if i + b.len() >= r {
            &b[i + b.len() - r]
        } else {
            &Dim::Known(1)
        };
        out.push(match (da, db) {
            (Dim::Known(1), d) | (d, Dim::Known(1)) => d.clone(),
            (Dim::Known(x), Dim::Known(y)) if x == y => Dim::Known(*x),
            (Dim::Known(x), Dim::Known(y)) => {
                return Err(Error::shape(format!("cannot broadcast dims {x} and {y}")))
            }
            (Dim::Known(x), _) | (_, Dim::Known(x)) => Dim::Known(*x),
            (Dim::Sym(x), Dim::Sym(y)) if x == y => Dim::Sym(x.clone()),
            _ => Dim::Unknown,
        });
    }
    Ok(out)
}

/// Broadcast shape of several facts, or None if any rank is unknown.
pub fn broadcast_facts(facts: &[&Fact]) -> Result<Option<Vec<Dim>>> {
    let mut acc: Vec<Dim> = Vec::new();
    for f in facts {
        match &f.shape {
            None => return Ok(None),
            Some(s) => acc = broadcast_dims(&acc, s)?,
        }
    }
    Ok(Some(acc))
}

/// Runs every node's rule in order, filling the graph's value facts. Declared facts from
/// the model (value_info, outputs) are merged: inferred dims refine unknown declared dims;
/// a clash of known dims or dtypes is an error.
pub fn infer_graph(g: &mut Graph, opsets: &dyn Fn(&str) -> i64) -> Result<()> {
    for i in 0..g.nodes.len() {
        // Subgraphs first, with the facts of the outer values they capture, so that
        // If/Loop rules see their bodies' output facts.
        {
            let Graph { nodes, values, .. } = &mut *g;
            let outer_inputs: Vec<Fact> = nodes[i]
                .inputs
                .iter()
                .map(|inp| inp.map_or_else(Fact::absent, |id| values[id].fact.clone()))
                .collect();
            let fed = nodes[i].op.body_input_facts(&outer_inputs);
            for (k, sub) in nodes[i].op.subgraphs_mut().into_iter().enumerate() {
                for (cid, name) in sub.captures.clone() {
                    if let Some(outer) = values.iter().find(|v| v.name == name) {
                        sub.values[cid].fact = outer.fact.clone();
                    }
                }
                // Untyped body inputs take what the op feeds them.
                if let Some(fed) = fed.get(k) {
                    for (&id, f) in sub.inputs.clone().iter().zip(fed) {
                        let v = &mut sub.values[id].fact;
                        if v.dtype.is_none() {
                            v.dtype = f.dtype;
                        }
                        if v.shape.is_none() {
                            v.shape = f.shape.clone();
                        }
                    }
                }
                infer_graph(sub, opsets)?;
            }
        }
        let node = &g.nodes[i];
        let inputs: Vec<Fact> = node
            .inputs
            .iter()
            .map(|inp| match inp {
                None => Fact::absent(),
                Some(id) => g.values[*id].fact.clone(),
            })
            .collect();
        let cx = InferCx {
            inputs: &inputs,
            opset: opsets(&node.domain),
        };
        let outs = node
            .op
            .infer(&cx)
            .map_err(|e| e.at_node(&node.name, &node.op_type))?;
        let outputs = node.outputs.clone();
        let (name, op_type) = (node.name.clone(), node.op_type.clone());
        for (k, out) in outputs.iter().enumerate() {
            let Some(id) = out else { continue };
            let Some(inferred) = outs.get(k).cloned() else {
                continue;
            };
            let declared = &g.values[*id].fact;
            let merged = merge(declared, inferred).map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("output '{}': {}", g.values[*id].name, e.message()),
                )
                .at_node(&name, &op_type)
            })?;
            g.values[*id].fact = merged;
        }
    }
    Ok(())
}

fn merge(declared: &Fact, inferred: Fact) -> Result<Fact> {
    let mut out = inferred;
    match (declared.dtype, out.dtype) {
        (Some(d), Some(i)) if d != i => {
            return Err(Error::dtype(format!(
                "declared type {d} but the op produces {i}"
            )))
        }
        (Some(d), None) => out.dtype = Some(d),
        _ => {}
    }
    if let Some(ds) = &declared.shape {
        match &mut out.shape {
            None => out.shape = Some(ds.clone()),
            Some(is) if is.len() == ds.len() => {
                // Known dims that clash are left as the op computes them: exporters
                // declare wrong shapes (skl2onnx multi-target regressors), and
                // onnxruntime only warns.
                for (i, d) in is.iter_mut().zip(ds) {
                    if matches!((&*i, d), (Dim::Unknown, _) | (Dim::Sym(_), Dim::Known(_))) {
                        *i = d.clone();
                    }
                }
            }
            // Exporters sometimes declare a wrong rank for intermediate values; trust the op.
            Some(_) => {}
        }
    }
    if declared.kind != ValueKind::Tensor && out.kind == ValueKind::Tensor && out.dtype.is_none() {
        out.kind = declared.kind;
    }
    Ok(out)
}

pub fn fmt_dims(d: &[Dim]) -> String {
    format!(
        "[{}]",
        d.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_symbolic() {
        let a = vec![Dim::Sym("N".into()), Dim::Known(1), Dim::Known(4)];
        let b = vec![Dim::Known(3), Dim::Known(4)];
        assert_eq!(
            broadcast_dims(&a, &b).unwrap(),
            vec![Dim::Sym("N".into()), Dim::Known(3), Dim::Known(4)]
        );
        assert!(broadcast_dims(&[Dim::Known(2)], &[Dim::Known(3)]).is_err());
    }
}
