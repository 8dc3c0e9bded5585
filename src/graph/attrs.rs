//! Attribute access for op parsers. Every attribute read is marked used; an attribute
//! left unread when the parser finishes is a load error, so nothing is silently ignored.

use super::Graph;
use crate::error::{Error, Result};
use crate::onnx::proto::{AttrType, AttributeProto, GraphProto, NodeProto};
use crate::onnx::tensor_from_proto;
use crate::tensor::Tensor;
use std::cell::Cell;

/// What an op parser sees of its node.
pub struct NodeCx<'a> {
    pub node: &'a NodeProto,
    /// Opset version of the node's domain.
    pub opset: i64,
    used: Vec<Cell<bool>>,
    pub(crate) subgraph: &'a mut dyn FnMut(&GraphProto) -> Result<Graph>,
}

fn type_name(t: AttrType) -> &'static str {
    match t {
        AttrType::Float => "float",
        AttrType::Int => "int",
        AttrType::String => "string",
        AttrType::Tensor => "tensor",
        AttrType::Graph => "graph",
        AttrType::Floats => "floats",
        AttrType::Ints => "ints",
        AttrType::Strings => "strings",
        AttrType::Tensors => "tensors",
        AttrType::Graphs => "graphs",
        AttrType::SparseTensor => "sparse tensor",
        AttrType::SparseTensors => "sparse tensors",
        AttrType::TypeProto => "type",
        AttrType::TypeProtos => "types",
        AttrType::Undefined => "undefined",
    }
}

impl<'a> NodeCx<'a> {
    pub(crate) fn new(
        node: &'a NodeProto,
        opset: i64,
        subgraph: &'a mut dyn FnMut(&GraphProto) -> Result<Graph>,
    ) -> Self {
        let used = node.attribute.iter().map(|_| Cell::new(false)).collect();
        NodeCx {
            node,
            opset,
            used,
            subgraph,
        }
    }

    /// Number of inputs as written (including omitted optionals).
    pub fn n_inputs(&self) -> usize {
        self.node.input.len()
    }
    pub fn n_outputs(&self) -> usize {
        self.node.output.len()
    }
    /// True if input `i` is present and non-empty.
    pub fn has_input(&self, i: usize) -> bool {
        self.node.input.get(i).is_some_and(|s| !s.is_empty())
    }
    /// True if output `i` is present and non-empty.
    pub fn has_output(&self, i: usize) -> bool {
        self.node.output.get(i).is_some_and(|s| !s.is_empty())
    }

    fn find(&self, name: &str, want: AttrType) -> Result<Option<&'a AttributeProto>> {
        let Some(k) = self.node.attribute.iter().position(|a| a.name == name) else {
            return Ok(None);
        };
        self.used[k].set(true);
        let a = &self.node.attribute[k];
        if !a.ref_attr_name.is_empty() {
            return Err(Error::attr(format!(
                "attribute '{name}' refers to function attribute '{}' outside a function",
                a.ref_attr_name
            )));
        }
        // Old writers omit the type; accept when the matching field is set.
        let ok = a.r#type == want
            || (a.r#type == AttrType::Undefined
                && match want {
                    AttrType::Ints => !a.ints.is_empty(),
                    AttrType::Floats => !a.floats.is_empty(),
                    AttrType::Strings => !a.strings.is_empty(),
                    AttrType::Tensor => a.t.is_some(),
                    AttrType::Graph => a.g.is_some(),
                    _ => true,
                });
        if !ok {
            return Err(Error::attr(format!(
                "attribute '{name}' should be {}, found {}",
                type_name(want),
                type_name(a.r#type)
            )));
        }
        Ok(Some(a))
    }

    /// True if the attribute is present (marks it used).
    pub fn has(&self, name: &str) -> bool {
        match self.node.attribute.iter().position(|a| a.name == name) {
            Some(k) => {
                self.used[k].set(true);
                true
            }
            None => false,
        }
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.find(name, AttrType::Int)?.map(|a| a.i))
    }
    pub fn int_or(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.int(name)?.unwrap_or(default))
    }
    pub fn req_int(&self, name: &str) -> Result<i64> {
        self.int(name)?
            .ok_or_else(|| Error::attr(format!("missing required attribute '{name}'")))
    }
    pub fn float(&self, name: &str) -> Result<Option<f32>> {
        Ok(self.find(name, AttrType::Float)?.map(|a| a.f))
    }
    pub fn float_or(&self, name: &str, default: f32) -> Result<f32> {
        Ok(self.float(name)?.unwrap_or(default))
    }
    pub fn string(&self, name: &str) -> Result<Option<String>> {
        match self.find(name, AttrType::String)? {
            None => Ok(None),
            Some(a) => String::from_utf8(a.s.clone())
                .map(Some)
                .map_err(|_| Error::attr(format!("attribute '{name}' is not UTF-8"))),
        }
    }
    pub fn string_or(&self, name: &str, default: &str) -> Result<String> {
        Ok(self.string(name)?.unwrap_or_else(|| default.to_string()))
    }
    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        Ok(self.find(name, AttrType::Ints)?.map(|a| a.ints.clone()))
    }
    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>> {
        Ok(self.find(name, AttrType::Floats)?.map(|a| a.floats.clone()))
    }
    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        Ok(self.find(name, AttrType::Strings)?.map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        }))
    }
    pub fn tensor(&self, name: &str) -> Result<Option<Tensor>> {
        match self.find(name, AttrType::Tensor)? {
            None => Ok(None),
            Some(a) => match &a.t {
                Some(t) => tensor_from_proto(t).map(Some),
                None => Err(Error::attr(format!("attribute '{name}' has no tensor"))),
            },
        }
    }
    /// Sparse tensor attribute, densified.
    pub fn sparse_tensor(&self, name: &str) -> Result<Option<Tensor>> {
        match self.find(name, AttrType::SparseTensor)? {
            None => Ok(None),
            Some(a) => match &a.sparse_tensor {
                Some(t) => crate::onnx::tensor_from_sparse(t).map(Some),
                None => Err(Error::attr(format!(
                    "attribute '{name}' has no sparse tensor"
                ))),
            },
        }
    }
    /// Builds the subgraph held by a graph attribute.
    pub fn graph(&mut self, name: &str) -> Result<Option<Graph>> {
        match self.find(name, AttrType::Graph)? {
            None => Ok(None),
            Some(a) => match &a.g {
                Some(g) => (self.subgraph)(g).map(Some),
                None => Err(Error::attr(format!("attribute '{name}' has no graph"))),
            },
        }
    }
    pub fn req_graph(&mut self, name: &str) -> Result<Graph> {
        self.graph(name)?
            .ok_or_else(|| Error::attr(format!("missing required graph attribute '{name}'")))
    }

    /// Fails on any attribute the parser did not read.
    pub(crate) fn finish(&self) -> Result<()> {
        let unused: Vec<&str> = self
            .node
            .attribute
            .iter()
            .zip(&self.used)
            .filter(|(_, u)| !u.get())
            .map(|(a, _)| a.name.as_str())
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(Error::attr(format!(
                "unsupported attribute(s): {}",
                unused.join(", ")
            )))
        }
    }
}

/// Normalizes a possibly negative axis against a rank.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = i64::try_from(rank).map_err(|_| Error::shape("rank too large"))?;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(Error::shape(format!(
            "axis {axis} is out of range for rank {rank}"
        )));
    }
    usize::try_from(a)
        .map_err(|_| Error::shape(format!("axis {axis} is out of range for rank {rank}")))
}
