//! Inlines model-local functions (`ModelProto.functions`) into the graph before it is
//! built, so their bodies run with ordinary ops. Works on the protobuf structs.

use crate::error::{Error, Result};
use crate::onnx::proto::{AttributeProto, FunctionProto, GraphProto, NodeProto};
use std::collections::HashMap;

const MAX_INLINE_DEPTH: u32 = 16;

/// Returns a copy of `g` with every call of a local function replaced by its body.
pub fn inline(g: &GraphProto, funcs: &[FunctionProto]) -> Result<GraphProto> {
    let mut counter = 0usize;
    let mut out = g.clone();
    out.node = expand_nodes(&g.node, funcs, &mut counter, 0)?;
    Ok(out)
}

fn expand_nodes(
    nodes: &[NodeProto],
    funcs: &[FunctionProto],
    counter: &mut usize,
    depth: u32,
) -> Result<Vec<NodeProto>> {
    if depth > MAX_INLINE_DEPTH {
        return Err(Error::invalid_model(
            "local functions call each other too deeply",
        ));
    }
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        let Some(f) = funcs
            .iter()
            .find(|f| f.name == n.op_type && f.domain == n.domain)
        else {
            let mut n = n.clone();
            for a in &mut n.attribute {
                if let Some(sg) = &mut a.g {
                    sg.node = expand_nodes(&sg.node, funcs, counter, depth + 1)?;
                }
                for sg in &mut a.graphs {
                    sg.node = expand_nodes(&sg.node, funcs, counter, depth + 1)?;
                }
            }
            out.push(n);
            continue;
        };
        *counter += 1;
        let prefix = format!("__fn{}_{}_", counter, f.name);
        let mut rename: HashMap<&str, String> = HashMap::new();
        for (k, formal) in f.input.iter().enumerate() {
            rename.insert(formal, n.input.get(k).cloned().unwrap_or_default());
        }
        for (k, formal) in f.output.iter().enumerate() {
            rename.insert(formal, n.output.get(k).cloned().unwrap_or_default());
        }
        let map = |name: &str| -> String {
            if name.is_empty() {
                return String::new();
            }
            rename
                .get(name)
                .cloned()
                .unwrap_or_else(|| format!("{prefix}{name}"))
        };
        let mut body = Vec::with_capacity(f.node.len());
        for bn in &f.node {
            let mut c = bn.clone();
            c.name = format!("{prefix}{}", bn.name);
            c.input = bn.input.iter().map(|s| map(s)).collect();
            c.output = bn.output.iter().map(|s| map(s)).collect();
            c.attribute = bn
                .attribute
                .iter()
                .filter_map(|a| resolve_attr(a, n, f))
                .collect();
            body.push(c);
        }
        out.extend(expand_nodes(&body, funcs, counter, depth + 1)?);
    }
    Ok(out)
}

/// Replaces a reference attribute by the caller's value (or the function's default).
fn resolve_attr(a: &AttributeProto, call: &NodeProto, f: &FunctionProto) -> Option<AttributeProto> {
    if a.ref_attr_name.is_empty() {
        return Some(a.clone());
    }
    let src = call
        .attribute
        .iter()
        .find(|c| c.name == a.ref_attr_name)
        .or_else(|| f.attribute_proto.iter().find(|d| d.name == a.ref_attr_name))?;
    let mut r = src.clone();
    r.name = a.name.clone();
    Some(r)
}
