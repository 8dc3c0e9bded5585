//! A tiny ONNX protobuf encoder for tests: builds models field by field, so tests can
//! make malformed ones too. Also [`require`]: the fetched real models, or a skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The paths under the repository root, or None (skip) when one is missing and CI does
/// not require the models (tools/setup.sh fetches and makes them).
pub fn require(what: &str, paths: &[&str]) -> Option<Vec<PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let full: Vec<PathBuf> = paths.iter().map(|p| root.join(p)).collect();
    if let Some(missing) = full.iter().find(|p| !p.exists()) {
        assert!(
            std::env::var_os("EDGEPREDICT_REQUIRE_MODELS").is_none(),
            "{what}: {} is missing and EDGEPREDICT_REQUIRE_MODELS is set: run tools/setup.sh",
            missing.display()
        );
        eprintln!(
            "SKIPPED {what}: {} is absent (run tools/setup.sh)",
            missing.display()
        );
        return None;
    }
    Some(full)
}

pub fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}
pub fn field_varint(num: u32, v: i64, out: &mut Vec<u8>) {
    varint(u64::from(num) << 3, out);
    varint(v as u64, out);
}
pub fn field_bytes(num: u32, b: &[u8], out: &mut Vec<u8>) {
    varint((u64::from(num) << 3) | 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}
pub fn field_str(num: u32, s: &str, out: &mut Vec<u8>) {
    field_bytes(num, s.as_bytes(), out)
}

/// TensorProto with raw little-endian f32 data.
pub fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        field_varint(1, d, &mut t);
    }
    field_varint(2, 1, &mut t);
    field_str(8, name, &mut t);
    let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    field_bytes(9, &raw, &mut t);
    t
}

/// TensorProto of ONNX type `elem_type` with the given little-endian raw bytes.
pub fn tensor_raw(name: &str, elem_type: i64, dims: &[i64], raw: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        field_varint(1, d, &mut t);
    }
    field_varint(2, elem_type, &mut t);
    field_str(8, name, &mut t);
    field_bytes(9, raw, &mut t);
    t
}

/// ValueInfoProto of a tensor; dims < 0 are written as a symbolic "N".
pub fn value_info(name: &str, elem_type: i64, dims: &[i64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in dims {
        let mut dim = Vec::new();
        if d < 0 {
            field_str(2, "N", &mut dim);
        } else {
            field_varint(1, d, &mut dim);
        }
        field_bytes(1, &dim, &mut shape);
    }
    let mut tt = Vec::new();
    field_varint(1, elem_type, &mut tt);
    field_bytes(2, &shape, &mut tt);
    let mut tp = Vec::new();
    field_bytes(1, &tt, &mut tp);
    let mut vi = Vec::new();
    field_str(1, name, &mut vi);
    field_bytes(2, &tp, &mut vi);
    vi
}

pub struct NodeSpec<'a> {
    pub op: &'a str,
    pub inputs: &'a [&'a str],
    pub outputs: &'a [&'a str],
    /// Encoded AttributeProtos.
    pub attrs: Vec<Vec<u8>>,
}

pub fn node(n: &NodeSpec) -> Vec<u8> {
    let mut b = Vec::new();
    for i in n.inputs {
        field_str(1, i, &mut b);
    }
    for o in n.outputs {
        field_str(2, o, &mut b);
    }
    field_str(
        3,
        &format!("{}_{}", n.op, n.outputs.first().unwrap_or(&"")),
        &mut b,
    );
    field_str(4, n.op, &mut b);
    for a in &n.attrs {
        field_bytes(5, a, &mut b);
    }
    b
}

pub fn attr_tensor(name: &str, tensor: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    field_str(1, name, &mut a);
    field_varint(20, 4, &mut a);
    field_bytes(5, tensor, &mut a);
    a
}

pub fn attr_int(name: &str, v: i64) -> Vec<u8> {
    let mut a = Vec::new();
    field_str(1, name, &mut a);
    field_varint(20, 2, &mut a);
    field_varint(3, v, &mut a);
    a
}

/// GraphProto bytes.
pub fn graph(
    nodes: &[Vec<u8>],
    inits: &[Vec<u8>],
    inputs: &[Vec<u8>],
    outputs: &[Vec<u8>],
) -> Vec<u8> {
    let mut g = Vec::new();
    for n in nodes {
        field_bytes(1, n, &mut g);
    }
    field_str(2, "g", &mut g);
    for t in inits {
        field_bytes(5, t, &mut g);
    }
    for i in inputs {
        field_bytes(11, i, &mut g);
    }
    for o in outputs {
        field_bytes(12, o, &mut g);
    }
    g
}

/// ModelProto bytes (IR 8, default opset 17).
pub fn model(graph: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    field_varint(1, 8, &mut m);
    let mut opset = Vec::new();
    field_str(1, "", &mut opset);
    field_varint(2, 17, &mut opset);
    field_bytes(8, &opset, &mut m);
    field_bytes(7, graph, &mut m);
    m
}

/// A valid model: y = Identity(x), x float [N, 3].
pub fn identity_model() -> Vec<u8> {
    let n = node(&NodeSpec {
        op: "Identity",
        inputs: &["x"],
        outputs: &["y"],
        attrs: vec![],
    });
    model(&graph(
        &[n],
        &[],
        &[value_info("x", 1, &[-1, 3])],
        &[value_info("y", 1, &[-1, 3])],
    ))
}
