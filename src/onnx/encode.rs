//! ONNX encoding: the structs of [`super::proto`] → protobuf bytes, the inverse of
//! [`decode_model`](super::proto::decode_model), so the compression tools can write models.
//!
//! Field numbers follow `onnx/onnx.proto3` (ONNX 1.22), as the decoder does. Fields are
//! written in field-number order, as protobuf's own serializers do. Proto3 rules: a scalar
//! at its default (0, empty string) is not written and repeated scalars are packed. What
//! has presence is written whenever it is set: messages held in an `Option` (even empty
//! ones), elements of repeated fields (an empty node input is a skipped optional input),
//! the `Dimension` oneof (`dim_value: 0` is a known size, not an unknown one) and
//! `raw_data` when the struct holds it, even empty.
//!
//! So an attribute `axis: 0` has its name and type but no `i` field, as protobuf's own proto3
//! serializer would write it; onnxruntime 1.32 and `onnx.checker` (full check) both read it
//! as 0 (checked by hand with Concat, Flatten, Softmax and LeakyRelu, and by the
//! onnxruntime test in `tests/onnx_roundtrip.rs` on the real models).
//!
//! The encoding is deterministic: the same struct always gives the same bytes, so
//! decode → encode is a fixed point after one round.
//!
//! ## What is not kept
//! The decoder keeps only the fields the runtime uses, so a re-encoded model loses the
//! rest, unknown fields included:
//! - doc strings of graphs, nodes, attributes, tensors, value infos and functions (the
//!   model's own `doc_string` is kept);
//! - `ModelProto.training_info`, `GraphProto.quantization_annotation`, `TypeProto.denotation`
//!   and `Dimension.denotation`, every `metadata_props` but the model's;
//! - `NodeProto.overload` and `device_configurations`, `FunctionProto.value_info` and
//!   `overload`;
//! - attributes' `sparse_tensors` and `type_protos` lists (their type is kept, the values
//!   are not);
//! - the shape of a sparse tensor type, the key and value types of a map type (a map
//!   becomes an empty `map_type`);
//! - a tensor's `segment` begin and end (an empty segment is written, so the tensor is
//!   still refused as segmented);
//! - packed versus unpacked encoding of repeated scalars and non-minimal varints: the
//!   values are the same, the bytes may be fewer.

use super::proto::{
    AttrType, AttributeProto, DimProto, FunctionProto, GraphProto, ModelProto, NodeProto,
    OperatorSetId, SparseTensorProto, TensorProto, TypeProto, ValueInfoProto,
};
use super::wire::Writer;
use crate::error::{Error, Result};
use crate::tensor::{Data, Tensor};

/// Encodes a whole model file.
pub fn encode_model(m: &ModelProto) -> Vec<u8> {
    let mut w = Writer::new();
    write_model(&mut w, m);
    w.into_bytes()
}

/// Encodes a lone GraphProto.
pub fn encode_graph(g: &GraphProto) -> Vec<u8> {
    one(|w| write_graph(w, g))
}

/// Encodes a lone NodeProto.
pub fn encode_node(n: &NodeProto) -> Vec<u8> {
    one(|w| write_node(w, n))
}

/// Encodes a lone AttributeProto.
pub fn encode_attribute(a: &AttributeProto) -> Vec<u8> {
    one(|w| write_attr(w, a))
}

/// Encodes a lone TensorProto (the format of the conformance suite's `input_0.pb`).
pub fn encode_tensor(t: &TensorProto) -> Vec<u8> {
    one(|w| write_tensor(w, t))
}

/// Encodes a lone SparseTensorProto.
pub fn encode_sparse_tensor(s: &SparseTensorProto) -> Vec<u8> {
    one(|w| write_sparse(w, s))
}

/// Encodes a lone ValueInfoProto.
pub fn encode_value_info(v: &ValueInfoProto) -> Vec<u8> {
    one(|w| write_value_info(w, v))
}

/// Encodes a lone TypeProto.
pub fn encode_type(t: &TypeProto) -> Vec<u8> {
    one(|w| write_type(w, t))
}

/// Encodes a lone FunctionProto.
pub fn encode_function(f: &FunctionProto) -> Vec<u8> {
    one(|w| write_function(w, f))
}

/// Encodes a lone OperatorSetId.
pub fn encode_opset(o: &OperatorSetId) -> Vec<u8> {
    one(|w| write_opset(w, o))
}

fn one(body: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::new();
    body(&mut w);
    w.into_bytes()
}

/// A proto3 int32/int64/enum field: not written at 0; negatives sign-extended.
fn scalar_int(w: &mut Writer, num: u32, v: i64) {
    if v != 0 {
        w.varint_field(num, v as u64);
    }
}

/// A proto3 string or bytes field: not written when empty.
fn scalar_bytes(w: &mut Writer, num: u32, b: &[u8]) {
    if !b.is_empty() {
        w.bytes_field(num, b);
    }
}

fn packed_ints(w: &mut Writer, num: u32, v: &[i64]) {
    w.packed_varints(num, v.iter().map(|&x| x as u64));
}

fn string_entry(w: &mut Writer, num: u32, (k, v): &(String, String)) {
    w.message_field(num, |w| {
        scalar_bytes(w, 1, k.as_bytes());
        scalar_bytes(w, 2, v.as_bytes());
    });
}

fn write_model(w: &mut Writer, m: &ModelProto) {
    scalar_int(w, 1, m.ir_version);
    scalar_bytes(w, 2, m.producer_name.as_bytes());
    scalar_bytes(w, 3, m.producer_version.as_bytes());
    scalar_bytes(w, 4, m.domain.as_bytes());
    scalar_int(w, 5, m.model_version);
    scalar_bytes(w, 6, m.doc_string.as_bytes());
    if let Some(g) = &m.graph {
        w.message_field(7, |w| write_graph(w, g));
    }
    for o in &m.opset_import {
        w.message_field(8, |w| write_opset(w, o));
    }
    for kv in &m.metadata_props {
        string_entry(w, 14, kv);
    }
    for f in &m.functions {
        w.message_field(25, |w| write_function(w, f));
    }
}

fn write_opset(w: &mut Writer, o: &OperatorSetId) {
    scalar_bytes(w, 1, o.domain.as_bytes());
    scalar_int(w, 2, o.version);
}

fn write_graph(w: &mut Writer, g: &GraphProto) {
    for n in &g.node {
        w.message_field(1, |w| write_node(w, n));
    }
    scalar_bytes(w, 2, g.name.as_bytes());
    for t in &g.initializer {
        w.message_field(5, |w| write_tensor(w, t));
    }
    for v in &g.input {
        w.message_field(11, |w| write_value_info(w, v));
    }
    for v in &g.output {
        w.message_field(12, |w| write_value_info(w, v));
    }
    for v in &g.value_info {
        w.message_field(13, |w| write_value_info(w, v));
    }
    for s in &g.sparse_initializer {
        w.message_field(15, |w| write_sparse(w, s));
    }
}

fn write_node(w: &mut Writer, n: &NodeProto) {
    for s in &n.input {
        w.bytes_field(1, s.as_bytes());
    }
    for s in &n.output {
        w.bytes_field(2, s.as_bytes());
    }
    scalar_bytes(w, 3, n.name.as_bytes());
    scalar_bytes(w, 4, n.op_type.as_bytes());
    for a in &n.attribute {
        w.message_field(5, |w| write_attr(w, a));
    }
    scalar_bytes(w, 7, n.domain.as_bytes());
}

/// `AttributeProto.AttributeType` codes.
fn attr_type_code(t: AttrType) -> i64 {
    match t {
        AttrType::Undefined => 0,
        AttrType::Float => 1,
        AttrType::Int => 2,
        AttrType::String => 3,
        AttrType::Tensor => 4,
        AttrType::Graph => 5,
        AttrType::Floats => 6,
        AttrType::Ints => 7,
        AttrType::Strings => 8,
        AttrType::Tensors => 9,
        AttrType::Graphs => 10,
        AttrType::SparseTensor => 11,
        AttrType::SparseTensors => 12,
        AttrType::TypeProto => 13,
        AttrType::TypeProtos => 14,
    }
}

fn write_attr(w: &mut Writer, a: &AttributeProto) {
    scalar_bytes(w, 1, a.name.as_bytes());
    // Bits, not ==, so that -0.0 is kept.
    if a.f.to_bits() != 0 {
        w.f32_field(2, a.f);
    }
    scalar_int(w, 3, a.i);
    scalar_bytes(w, 4, &a.s);
    if let Some(t) = &a.t {
        w.message_field(5, |w| write_tensor(w, t));
    }
    if let Some(g) = &a.g {
        w.message_field(6, |w| write_graph(w, g));
    }
    w.packed_f32s(7, &a.floats);
    packed_ints(w, 8, &a.ints);
    for s in &a.strings {
        w.bytes_field(9, s);
    }
    for t in &a.tensors {
        w.message_field(10, |w| write_tensor(w, t));
    }
    for g in &a.graphs {
        w.message_field(11, |w| write_graph(w, g));
    }
    if let Some(tp) = &a.tp {
        w.message_field(14, |w| write_type(w, tp));
    }
    scalar_int(w, 20, attr_type_code(a.r#type));
    scalar_bytes(w, 21, a.ref_attr_name.as_bytes());
    if let Some(s) = &a.sparse_tensor {
        w.message_field(22, |w| write_sparse(w, s));
    }
}

fn write_tensor(w: &mut Writer, t: &TensorProto) {
    packed_ints(w, 1, &t.dims);
    scalar_int(w, 2, i64::from(t.data_type));
    if t.has_segment {
        w.message_field(3, |_| {});
    }
    w.packed_f32s(4, &t.float_data);
    packed_ints(w, 5, &t.int32_data);
    for s in &t.string_data {
        w.bytes_field(6, s);
    }
    packed_ints(w, 7, &t.int64_data);
    scalar_bytes(w, 8, t.name.as_bytes());
    if let Some(raw) = &t.raw_data {
        w.bytes_field(9, raw);
    }
    w.packed_f64s(10, &t.double_data);
    w.packed_varints(11, t.uint64_data.iter().copied());
    for kv in &t.external_data {
        string_entry(w, 13, kv);
    }
    scalar_int(w, 14, i64::from(t.data_location));
}

fn write_sparse(w: &mut Writer, s: &SparseTensorProto) {
    if let Some(v) = &s.values {
        w.message_field(1, |w| write_tensor(w, v));
    }
    if let Some(i) = &s.indices {
        w.message_field(2, |w| write_tensor(w, i));
    }
    packed_ints(w, 3, &s.dims);
}

fn write_value_info(w: &mut Writer, v: &ValueInfoProto) {
    scalar_bytes(w, 1, v.name.as_bytes());
    if let Some(t) = &v.r#type {
        w.message_field(2, |w| write_type(w, t));
    }
}

fn write_type(w: &mut Writer, t: &TypeProto) {
    match t {
        TypeProto::Tensor { elem_type, shape } => w.message_field(1, |w| {
            scalar_int(w, 1, i64::from(*elem_type));
            if let Some(dims) = shape {
                w.message_field(2, |w| {
                    for d in dims {
                        w.message_field(1, |w| match d {
                            DimProto::Value(v) => w.varint_field(1, *v as u64),
                            DimProto::Param(p) => w.bytes_field(2, p.as_bytes()),
                            DimProto::Unknown => {}
                        });
                    }
                });
            }
        }),
        TypeProto::Sequence(elem) => w.message_field(4, |w| write_elem_type(w, elem)),
        TypeProto::Map => w.message_field(5, |_| {}),
        TypeProto::SparseTensor { elem_type } => {
            w.message_field(8, |w| scalar_int(w, 1, i64::from(*elem_type)))
        }
        TypeProto::Optional(elem) => w.message_field(9, |w| write_elem_type(w, elem)),
        TypeProto::Unknown => {}
    }
}

/// `Sequence.elem_type` / `Optional.elem_type` (field 1 of both).
fn write_elem_type(w: &mut Writer, elem: &Option<Box<TypeProto>>) {
    if let Some(e) = elem {
        w.message_field(1, |w| write_type(w, e));
    }
}

fn write_function(w: &mut Writer, f: &FunctionProto) {
    scalar_bytes(w, 1, f.name.as_bytes());
    for s in &f.input {
        w.bytes_field(4, s.as_bytes());
    }
    for s in &f.output {
        w.bytes_field(5, s.as_bytes());
    }
    for s in &f.attribute {
        w.bytes_field(6, s.as_bytes());
    }
    for n in &f.node {
        w.message_field(7, |w| write_node(w, n));
    }
    for o in &f.opset_import {
        w.message_field(9, |w| write_opset(w, o));
    }
    scalar_bytes(w, 10, f.domain.as_bytes());
    for a in &f.attribute_proto {
        w.message_field(11, |w| write_attr(w, a));
    }
}

/// Little-endian bytes of each element, back to back.
fn le_bytes<T, const N: usize>(v: &[T], f: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * N);
    for x in v {
        out.extend_from_slice(&f(x));
    }
    out
}

/// A tensor as a TensorProto named `name`, the inverse of
/// [`tensor_from_proto`](super::tensor_from_proto): the data goes in `raw_data`, little-endian
/// (the narrow types packed as ONNX stores them), strings in `string_data`.
pub fn tensor_to_proto(name: &str, t: &Tensor) -> Result<TensorProto> {
    let dims = t
        .shape()
        .iter()
        .map(|&d| {
            i64::try_from(d).map_err(|_| Error::shape(format!("dimension {d} does not fit ONNX")))
        })
        .collect::<Result<Vec<i64>>>()?;
    let mut p = TensorProto {
        dims,
        data_type: t.dtype().to_onnx(),
        name: name.to_string(),
        ..Default::default()
    };
    let raw = match t.data() {
        Data::F32(v) => le_bytes(v, |x| x.to_le_bytes()),
        Data::F64(v) => le_bytes(v, |x| x.to_le_bytes()),
        Data::F16(v) => le_bytes(v, |x| x.to_bits().to_le_bytes()),
        Data::BF16(v) => le_bytes(v, |x| x.to_bits().to_le_bytes()),
        Data::I8(v) => le_bytes(v, |x| x.to_le_bytes()),
        Data::U8(v) => v.clone(),
        Data::I16(v) => le_bytes(v, |x| x.to_le_bytes()),
        Data::U16(v) => le_bytes(v, |x| x.to_le_bytes()),
        Data::I32(v) => le_bytes(v, |x| x.to_le_bytes()),
        Data::U32(v) => le_bytes(v, |x| x.to_le_bytes()),
        Data::I64(v) => le_bytes(v, |x| x.to_le_bytes()),
        Data::U64(v) => le_bytes(v, |x| x.to_le_bytes()),
        Data::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
        Data::Str(v) => {
            p.string_data = v.iter().map(|s| s.as_bytes().to_vec()).collect();
            return Ok(p);
        }
        small => crate::tensor::small::to_packed(small)?,
    };
    p.raw_data = Some(raw);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::decode_model;
    use crate::onnx::tensor_from_proto;
    use crate::tensor::DType;

    fn model_with(graph: GraphProto) -> ModelProto {
        ModelProto {
            ir_version: 10,
            opset_import: vec![OperatorSetId {
                domain: String::new(),
                version: 21,
            }],
            graph: Some(graph),
            ..Default::default()
        }
    }

    /// encode → decode gives the struct back, and encoding that again gives the same bytes.
    fn round_trip(m: &ModelProto) {
        let bytes = encode_model(m);
        let back = decode_model(&bytes).unwrap();
        assert_eq!(&back, m);
        assert_eq!(encode_model(&back), bytes);
    }

    fn tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            data_type: 1,
            name: name.into(),
            raw_data: Some(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ..Default::default()
        }
    }

    fn vi(name: &str, elem_type: i32, dims: Vec<DimProto>) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto::Tensor {
                elem_type,
                shape: Some(dims),
            }),
        }
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: format!("{op}_0"),
            op_type: op.into(),
            ..Default::default()
        }
    }

    fn attr(name: &str, r#type: AttrType) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type,
            ..Default::default()
        }
    }

    #[test]
    fn model_opsets_and_metadata() {
        let m = ModelProto {
            ir_version: 8,
            opset_import: vec![
                OperatorSetId {
                    domain: String::new(),
                    version: 17,
                },
                OperatorSetId {
                    domain: "ai.onnx.ml".into(),
                    version: 3,
                },
            ],
            producer_name: "edgepredict".into(),
            producer_version: "0.1".into(),
            domain: "org.example".into(),
            model_version: -2,
            doc_string: "a model".into(),
            graph: Some(GraphProto::default()),
            metadata_props: vec![("k".into(), "v".into()), (String::new(), "é".into())],
            functions: vec![],
        };
        round_trip(&m);
        // The default domain is not written: only field 2, varint 17.
        assert_eq!(encode_opset(&m.opset_import[0]), [0x10, 17]);
        // An empty graph is still written: it is what makes the bytes a model.
        assert_eq!(
            encode_model(&model_with(GraphProto::default())),
            [0x08, 10, 0x3a, 0, 0x42, 2, 0x10, 21]
        );
    }

    #[test]
    fn graph_with_every_list() {
        let g = GraphProto {
            name: "g".into(),
            node: vec![
                node("Add", &["x", "w"], &["y"]),
                node("Relu", &["y"], &["z"]),
            ],
            initializer: vec![tensor("w", &[2], &[1.0, -2.0])],
            sparse_initializer: vec![SparseTensorProto {
                values: Some(tensor("s", &[1], &[3.0])),
                indices: Some(TensorProto {
                    dims: vec![1],
                    data_type: 7,
                    int64_data: vec![1],
                    ..Default::default()
                }),
                dims: vec![2],
            }],
            input: vec![vi(
                "x",
                1,
                vec![DimProto::Param("N".into()), DimProto::Value(2)],
            )],
            output: vec![vi(
                "z",
                1,
                vec![DimProto::Param("N".into()), DimProto::Value(2)],
            )],
            value_info: vec![vi("y", 1, vec![DimProto::Unknown, DimProto::Value(2)])],
        };
        round_trip(&model_with(g.clone()));
        assert_eq!(
            crate::onnx::proto::decode_graph(&encode_graph(&g), 0).unwrap(),
            g
        );
    }

    #[test]
    fn node_keeps_empty_inputs_and_domain() {
        let mut n = node("Clip", &["x", "", "hi"], &["y", ""]);
        n.domain = "com.example".into();
        n.attribute = vec![AttributeProto {
            i: 1,
            ..attr("a", AttrType::Int)
        }];
        let bytes = encode_node(&n);
        // input "x", then an empty input: tag 0x0a, length 0.
        assert_eq!(&bytes[..5], &[0x0a, 1, b'x', 0x0a, 0]);
        round_trip(&model_with(GraphProto {
            node: vec![n, NodeProto::default()],
            ..Default::default()
        }));
    }

    #[test]
    fn attributes_of_every_type() {
        let sub = GraphProto {
            name: "body".into(),
            node: vec![node("Identity", &["outer"], &["o"])],
            output: vec![vi("o", 1, vec![])],
            ..Default::default()
        };
        let sparse = SparseTensorProto {
            values: Some(tensor("", &[1], &[5.0])),
            indices: Some(TensorProto {
                dims: vec![1],
                data_type: 7,
                raw_data: Some(3i64.to_le_bytes().to_vec()),
                ..Default::default()
            }),
            dims: vec![4],
        };
        let attrs = vec![
            AttributeProto {
                f: 0.5,
                ..attr("f", AttrType::Float)
            },
            attr("f0", AttrType::Float),
            AttributeProto {
                f: -0.0,
                ..attr("fneg0", AttrType::Float)
            },
            attr("i0", AttrType::Int),
            AttributeProto {
                i: -7,
                ..attr("i", AttrType::Int)
            },
            AttributeProto {
                s: b"same_upper".to_vec(),
                ..attr("s", AttrType::String)
            },
            attr("s0", AttrType::String),
            AttributeProto {
                t: Some(tensor("t", &[], &[2.0])),
                ..attr("t", AttrType::Tensor)
            },
            AttributeProto {
                g: Some(sub.clone()),
                ..attr("then_branch", AttrType::Graph)
            },
            AttributeProto {
                sparse_tensor: Some(sparse),
                ..attr("sp", AttrType::SparseTensor)
            },
            AttributeProto {
                tp: Some(TypeProto::Sequence(Some(Box::new(TypeProto::Tensor {
                    elem_type: 7,
                    shape: None,
                })))),
                ..attr("tp", AttrType::TypeProto)
            },
            AttributeProto {
                floats: vec![1.0, -0.0, f32::INFINITY],
                ..attr("floats", AttrType::Floats)
            },
            AttributeProto {
                ints: vec![0, -1, i64::MAX, i64::MIN],
                ..attr("ints", AttrType::Ints)
            },
            AttributeProto {
                strings: vec![b"a".to_vec(), vec![], vec![0xff, 0x00]],
                ..attr("strings", AttrType::Strings)
            },
            AttributeProto {
                tensors: vec![tensor("a", &[1], &[1.0]), TensorProto::default()],
                ..attr("tensors", AttrType::Tensors)
            },
            AttributeProto {
                graphs: vec![sub.clone(), GraphProto::default()],
                ..attr("graphs", AttrType::Graphs)
            },
            AttributeProto {
                ref_attr_name: "alpha".into(),
                ..attr("alpha", AttrType::Float)
            },
            attr("undefined", AttrType::Undefined),
        ];
        // i = 0 is the proto3 default: name, then type = INT, nothing else.
        assert_eq!(
            encode_attribute(&attrs[3]),
            [0x0a, 2, b'i', b'0', 0xa0, 0x01, 2]
        );
        let mut n = node("If", &["c"], &["o"]);
        n.attribute = attrs;
        let m = model_with(GraphProto {
            node: vec![n],
            ..Default::default()
        });
        round_trip(&m);
        // -0.0 == 0.0 for PartialEq, so check that the sign survived.
        let back = decode_model(&encode_model(&m)).unwrap();
        let fneg0 = &back.graph.unwrap().node[0].attribute[2];
        assert_eq!(
            (fneg0.name.as_str(), fneg0.f.to_bits()),
            ("fneg0", 0x8000_0000)
        );
    }

    #[test]
    fn tensors_keep_the_field_they_use() {
        let ts = vec![
            tensor("raw", &[2, 1], &[1.5, -3.0]),
            TensorProto {
                name: "empty_raw".into(),
                data_type: 1,
                dims: vec![0],
                raw_data: Some(vec![]),
                ..Default::default()
            },
            TensorProto {
                name: "floats".into(),
                data_type: 1,
                dims: vec![3],
                float_data: vec![1.0, -0.0, f32::MIN_POSITIVE],
                ..Default::default()
            },
            TensorProto {
                name: "int32".into(),
                data_type: 6,
                dims: vec![3],
                int32_data: vec![-1, 0, i64::from(i32::MAX)],
                ..Default::default()
            },
            TensorProto {
                name: "strings".into(),
                data_type: 8,
                dims: vec![2],
                string_data: vec![b"x".to_vec(), vec![]],
                ..Default::default()
            },
            TensorProto {
                name: "int64".into(),
                data_type: 7,
                dims: vec![2],
                int64_data: vec![i64::MIN, 5],
                ..Default::default()
            },
            TensorProto {
                name: "double".into(),
                data_type: 11,
                dims: vec![1],
                double_data: vec![-1e300],
                ..Default::default()
            },
            TensorProto {
                name: "uint64".into(),
                data_type: 13,
                dims: vec![2],
                uint64_data: vec![u64::MAX, 0],
                ..Default::default()
            },
            TensorProto {
                name: "external".into(),
                data_type: 1,
                dims: vec![4],
                external_data: vec![("location".into(), "w.bin".into())],
                data_location: 1,
                ..Default::default()
            },
            TensorProto {
                name: "segmented".into(),
                has_segment: true,
                ..Default::default()
            },
        ];
        round_trip(&model_with(GraphProto {
            initializer: ts.clone(),
            ..Default::default()
        }));
        // Repeated scalars are packed: dims [2, 1] is one field of two bytes.
        assert_eq!(&encode_tensor(&ts[0])[..4], &[0x0a, 2, 2, 1]);
        // NaN payloads go through bit for bit (PartialEq cannot check them).
        let nan = f32::from_bits(0x7fc0_1234);
        let t = TensorProto {
            data_type: 1,
            dims: vec![1],
            float_data: vec![nan],
            ..Default::default()
        };
        let back = crate::onnx::proto::decode_tensor_file(&encode_tensor(&t)).unwrap();
        assert_eq!(back.float_data[0].to_bits(), nan.to_bits());
    }

    #[test]
    fn sparse_tensor_round_trips() {
        let s = SparseTensorProto {
            values: Some(tensor("sp", &[2], &[1.0, 2.0])),
            indices: Some(TensorProto {
                dims: vec![2, 2],
                data_type: 7,
                int64_data: vec![0, 1, 2, 0],
                ..Default::default()
            }),
            dims: vec![3, 2],
        };
        round_trip(&model_with(GraphProto {
            sparse_initializer: vec![s.clone(), SparseTensorProto::default()],
            ..Default::default()
        }));
        // The decoder densifies it as before.
        let g = crate::onnx::proto::decode_graph(
            &encode_graph(&GraphProto {
                sparse_initializer: vec![s],
                ..Default::default()
            }),
            0,
        )
        .unwrap();
        let dense = crate::onnx::tensor_from_sparse(&g.sparse_initializer[0]).unwrap();
        assert_eq!(dense.to_f32_vec().unwrap(), [0.0, 1.0, 0.0, 0.0, 2.0, 0.0]);
    }

    #[test]
    fn value_infos_and_types() {
        let types = vec![
            TypeProto::Tensor {
                elem_type: 1,
                shape: None,
            },
            // A scalar: a shape with no dims, which is not the same as no shape.
            TypeProto::Tensor {
                elem_type: 7,
                shape: Some(vec![]),
            },
            TypeProto::Tensor {
                elem_type: 0,
                shape: Some(vec![
                    DimProto::Value(0),
                    DimProto::Value(-1),
                    DimProto::Param(String::new()),
                    DimProto::Param("batch".into()),
                    DimProto::Unknown,
                ]),
            },
            TypeProto::Sequence(None),
            TypeProto::Sequence(Some(Box::new(TypeProto::Optional(Some(Box::new(
                TypeProto::Tensor {
                    elem_type: 9,
                    shape: Some(vec![DimProto::Value(3)]),
                },
            )))))),
            TypeProto::Optional(None),
            TypeProto::Map,
            TypeProto::SparseTensor { elem_type: 1 },
            TypeProto::Unknown,
        ];
        let mut infos: Vec<ValueInfoProto> = types
            .into_iter()
            .enumerate()
            .map(|(k, t)| ValueInfoProto {
                name: format!("v{k}"),
                r#type: Some(t),
            })
            .collect();
        infos.push(ValueInfoProto {
            name: "untyped".into(),
            r#type: None,
        });
        // dim_value 0 is written: the Dimension oneof has presence.
        let zero = encode_type(&TypeProto::Tensor {
            elem_type: 0,
            shape: Some(vec![DimProto::Value(0)]),
        });
        assert_eq!(zero, [0x0a, 6, 0x12, 4, 0x0a, 2, 0x08, 0]);
        round_trip(&model_with(GraphProto {
            input: infos.clone(),
            output: infos.clone(),
            value_info: infos,
            ..Default::default()
        }));
    }

    #[test]
    fn functions_round_trip() {
        let mut body = node("Mul", &["x", "x"], &["y"]);
        body.attribute = vec![AttributeProto {
            ref_attr_name: "k".into(),
            ..attr("k", AttrType::Int)
        }];
        let f = FunctionProto {
            name: "Square".into(),
            domain: "local".into(),
            input: vec!["x".into()],
            output: vec!["y".into()],
            attribute: vec!["k".into()],
            attribute_proto: vec![AttributeProto {
                f: 1.0,
                ..attr("scale", AttrType::Float)
            }],
            node: vec![body],
            opset_import: vec![OperatorSetId {
                domain: String::new(),
                version: 18,
            }],
        };
        let mut m = model_with(GraphProto {
            node: vec![NodeProto {
                domain: "local".into(),
                ..node("Square", &["a"], &["b"])
            }],
            ..Default::default()
        });
        m.functions = vec![f.clone(), FunctionProto::default()];
        round_trip(&m);
        assert!(encode_function(&f).starts_with(&[0x0a, 6]));
    }

    #[test]
    fn tensor_to_proto_inverts_tensor_from_proto() {
        let f32s = Tensor::from_vec(vec![2, 3], vec![1.0f32, -2.5, 0.0, -0.0, 1e-40, 7.0]).unwrap();
        let p = tensor_to_proto("w", &f32s).unwrap();
        assert_eq!(
            (p.name.as_str(), p.dims.as_slice(), p.data_type),
            ("w", &[2i64, 3][..], 1)
        );
        assert_eq!(
            &p.raw_data.as_ref().unwrap()[4..8],
            &(-2.5f32).to_le_bytes()
        );
        let mut ts = vec![
            f32s.clone(),
            Tensor::from_vec(vec![0], Vec::<f32>::new()).unwrap(),
            Tensor::scalar(3i64),
            Tensor::from_vec(vec![3], vec![true, false, true]).unwrap(),
            Tensor::from_vec(vec![2], vec!["ab".to_string(), String::new()]).unwrap(),
            Tensor::from_vec(vec![2], vec![u64::MAX, 1]).unwrap(),
            Tensor::from_vec(vec![2], vec![-1.0e300f64, 0.5]).unwrap(),
        ];
        // Every other type from a cast; 5 elements, so the 4-bit and 2-bit types end in
        // a partly filled byte.
        let src = Tensor::from_vec(vec![5], vec![-2.0f32, -1.0, 0.0, 1.0, 1.5]).unwrap();
        for dt in [
            DType::F16,
            DType::BF16,
            DType::I8,
            DType::U8,
            DType::I16,
            DType::U16,
            DType::I32,
            DType::U32,
            DType::F8E4M3FN,
            DType::F8E4M3FNUZ,
            DType::F8E5M2,
            DType::F8E5M2FNUZ,
            DType::F8E8M0,
            DType::F4E2M1,
            DType::U4,
            DType::I4,
            DType::U2,
            DType::I2,
        ] {
            ts.push(src.cast(dt).unwrap());
        }
        for t in &ts {
            let p = tensor_to_proto("t", t).unwrap();
            assert_eq!(p.data_type, t.dtype().to_onnx());
            let back = tensor_from_proto(&p).unwrap_or_else(|e| panic!("{}: {e}", t.dtype()));
            assert_eq!(back.shape(), t.shape(), "{}", t.dtype());
            assert!(back.data() == t.data(), "{} data differs", t.dtype());
            // And through the wire.
            let wired = crate::onnx::proto::decode_tensor_file(&encode_tensor(&p)).unwrap();
            assert_eq!(wired, p);
        }
        // INT4 packs two to a byte, low nibble first: [-1, 2, 3] → 0x2f, 0x03.
        let i4 = Tensor::from_vec(vec![3], vec![-1.0f32, 2.0, 3.0])
            .unwrap()
            .cast(DType::I4)
            .unwrap();
        assert_eq!(
            tensor_to_proto("q", &i4).unwrap().raw_data.unwrap(),
            [0x2f, 0x03]
        );
        let s = tensor_to_proto("s", &ts[4]).unwrap();
        assert_eq!(
            (s.raw_data, s.string_data),
            (None, vec![b"ab".to_vec(), vec![]])
        );
    }
}
