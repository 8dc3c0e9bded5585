//! The ONNX messages we read, as plain structs, decoded field by field from the wire.
//! Field numbers follow `onnx/onnx.proto3` (ONNX 1.22). Unknown fields are skipped, as
//! protobuf requires; fields we know are type-checked.

use super::wire::{self, Reader, MAX_DEPTH};
use crate::error::{Error, Result};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ModelProto {
    pub ir_version: i64,
    pub opset_import: Vec<OperatorSetId>,
    pub producer_name: String,
    pub producer_version: String,
    pub domain: String,
    pub model_version: i64,
    pub doc_string: String,
    pub graph: Option<GraphProto>,
    pub metadata_props: Vec<(String, String)>,
    pub functions: Vec<FunctionProto>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct OperatorSetId {
    pub domain: String,
    pub version: i64,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct GraphProto {
    pub name: String,
    pub node: Vec<NodeProto>,
    pub initializer: Vec<TensorProto>,
    pub sparse_initializer: Vec<SparseTensorProto>,
    pub input: Vec<ValueInfoProto>,
    pub output: Vec<ValueInfoProto>,
    pub value_info: Vec<ValueInfoProto>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct NodeProto {
    pub input: Vec<String>,
    pub output: Vec<String>,
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub attribute: Vec<AttributeProto>,
}

/// `AttributeProto.AttributeType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttrType {
    #[default]
    Undefined,
    Float,
    Int,
    String,
    Tensor,
    Graph,
    SparseTensor,
    TypeProto,
    Floats,
    Ints,
    Strings,
    Tensors,
    Graphs,
    SparseTensors,
    TypeProtos,
}

impl AttrType {
    fn from_code(c: i32) -> AttrType {
        match c {
            1 => AttrType::Float,
            2 => AttrType::Int,
            3 => AttrType::String,
            4 => AttrType::Tensor,
            5 => AttrType::Graph,
            11 => AttrType::SparseTensor,
            13 => AttrType::TypeProto,
            6 => AttrType::Floats,
            7 => AttrType::Ints,
            8 => AttrType::Strings,
            9 => AttrType::Tensors,
            10 => AttrType::Graphs,
            12 => AttrType::SparseTensors,
            14 => AttrType::TypeProtos,
            _ => AttrType::Undefined,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct AttributeProto {
    pub name: String,
    pub ref_attr_name: String,
    pub r#type: AttrType,
    pub f: f32,
    pub i: i64,
    pub s: Vec<u8>,
    pub t: Option<TensorProto>,
    pub g: Option<GraphProto>,
    pub sparse_tensor: Option<SparseTensorProto>,
    pub tp: Option<TypeProto>,
    pub floats: Vec<f32>,
    pub ints: Vec<i64>,
    pub strings: Vec<Vec<u8>>,
    pub tensors: Vec<TensorProto>,
    pub graphs: Vec<GraphProto>,
}

impl AttributeProto {
    /// An INT attribute (for passes and tools that write nodes).
    pub fn int(name: &str, v: i64) -> Self {
        AttributeProto {
            name: name.into(),
            r#type: AttrType::Int,
            i: v,
            ..Default::default()
        }
    }
    /// A FLOAT attribute.
    pub fn float(name: &str, v: f32) -> Self {
        AttributeProto {
            name: name.into(),
            r#type: AttrType::Float,
            f: v,
            ..Default::default()
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct TensorProto {
    pub dims: Vec<i64>,
    pub data_type: i32,
    pub name: String,
    pub float_data: Vec<f32>,
    pub int32_data: Vec<i64>,
    pub string_data: Vec<Vec<u8>>,
    pub int64_data: Vec<i64>,
    pub raw_data: Option<Vec<u8>>,
    pub double_data: Vec<f64>,
    pub uint64_data: Vec<u64>,
    pub external_data: Vec<(String, String)>,
    /// 1 = EXTERNAL.
    pub data_location: i32,
    pub has_segment: bool,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct SparseTensorProto {
    pub values: Option<TensorProto>,
    pub indices: Option<TensorProto>,
    pub dims: Vec<i64>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ValueInfoProto {
    pub name: String,
    pub r#type: Option<TypeProto>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum TypeProto {
    Tensor {
        elem_type: i32,
        shape: Option<Vec<DimProto>>,
    },
    Sequence(Option<Box<TypeProto>>),
    Optional(Option<Box<TypeProto>>),
    Map,
    SparseTensor {
        elem_type: i32,
    },
    #[default]
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DimProto {
    Value(i64),
    Param(String),
    Unknown,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct FunctionProto {
    pub name: String,
    pub domain: String,
    pub input: Vec<String>,
    pub output: Vec<String>,
    pub attribute: Vec<String>,
    pub attribute_proto: Vec<AttributeProto>,
    pub node: Vec<NodeProto>,
    pub opset_import: Vec<OperatorSetId>,
}

fn depth_check(depth: u32) -> Result<u32> {
    if depth > MAX_DEPTH {
        Err(Error::decode(format!(
            "messages nested deeper than {MAX_DEPTH}"
        )))
    } else {
        Ok(depth + 1)
    }
}

/// Decodes a whole model file.
pub fn decode_model(buf: &[u8]) -> Result<ModelProto> {
    let mut m = ModelProto::default();
    let mut r = Reader::new(buf);
    let mut saw_graph = false;
    while let Some((n, v)) = r.field()? {
        match n {
            1 => m.ir_version = v.as_i64()?,
            2 => m.producer_name = v.as_str()?,
            3 => m.producer_version = v.as_str()?,
            4 => m.domain = v.as_str()?,
            5 => m.model_version = v.as_i64()?,
            6 => m.doc_string = v.as_str()?,
            7 => {
                m.graph = Some(decode_graph(v.as_bytes()?, 1)?);
                saw_graph = true;
            }
            8 => m.opset_import.push(decode_opset(v.as_bytes()?)?),
            14 => m.metadata_props.push(decode_kv(v.as_bytes()?)?),
            25 => m.functions.push(decode_function(v.as_bytes()?, 1)?),
            _ => {}
        }
    }
    if !saw_graph {
        return Err(Error::decode("not an ONNX model: no graph field"));
    }
    Ok(m)
}

fn decode_opset(buf: &[u8]) -> Result<OperatorSetId> {
    let mut o = OperatorSetId::default();
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => o.domain = v.as_str()?,
            2 => o.version = v.as_i64()?,
            _ => {}
        }
    }
    Ok(o)
}

fn decode_kv(buf: &[u8]) -> Result<(String, String)> {
    let (mut k, mut val) = (String::new(), String::new());
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => k = v.as_str()?,
            2 => val = v.as_str()?,
            _ => {}
        }
    }
    Ok((k, val))
}

pub fn decode_graph(buf: &[u8], depth: u32) -> Result<GraphProto> {
    let depth = depth_check(depth)?;
    let mut g = GraphProto::default();
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => g.node.push(decode_node(v.as_bytes()?, depth)?),
            2 => g.name = v.as_str()?,
            5 => g.initializer.push(decode_tensor(v.as_bytes()?, depth)?),
            15 => g
                .sparse_initializer
                .push(decode_sparse(v.as_bytes()?, depth)?),
            11 => g.input.push(decode_value_info(v.as_bytes()?, depth)?),
            12 => g.output.push(decode_value_info(v.as_bytes()?, depth)?),
            13 => g.value_info.push(decode_value_info(v.as_bytes()?, depth)?),
            _ => {}
        }
    }
    Ok(g)
}

fn decode_node(buf: &[u8], depth: u32) -> Result<NodeProto> {
    let mut nd = NodeProto::default();
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => nd.input.push(v.as_str()?),
            2 => nd.output.push(v.as_str()?),
            3 => nd.name = v.as_str()?,
            4 => nd.op_type = v.as_str()?,
            7 => nd.domain = v.as_str()?,
            5 => nd.attribute.push(decode_attr(v.as_bytes()?, depth)?),
            _ => {}
        }
    }
    Ok(nd)
}

fn decode_attr(buf: &[u8], depth: u32) -> Result<AttributeProto> {
    let depth = depth_check(depth)?;
    let mut a = AttributeProto::default();
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => a.name = v.as_str()?,
            21 => a.ref_attr_name = v.as_str()?,
            20 => a.r#type = AttrType::from_code(v.as_i32()?),
            2 => a.f = v.as_f32()?,
            3 => a.i = v.as_i64()?,
            4 => a.s = v.as_bytes()?.to_vec(),
            5 => a.t = Some(decode_tensor(v.as_bytes()?, depth)?),
            6 => a.g = Some(decode_graph(v.as_bytes()?, depth)?),
            22 => a.sparse_tensor = Some(decode_sparse(v.as_bytes()?, depth)?),
            14 => a.tp = Some(decode_type(v.as_bytes()?, depth)?),
            7 => wire::push_f32s(&v, &mut a.floats)?,
            8 => wire::push_varints(&v, &mut a.ints)?,
            9 => a.strings.push(v.as_bytes()?.to_vec()),
            10 => a.tensors.push(decode_tensor(v.as_bytes()?, depth)?),
            11 => a.graphs.push(decode_graph(v.as_bytes()?, depth)?),
            _ => {}
        }
    }
    Ok(a)
}

pub fn decode_tensor(buf: &[u8], depth: u32) -> Result<TensorProto> {
    depth_check(depth)?;
    let mut t = TensorProto::default();
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => wire::push_varints(&v, &mut t.dims)?,
            2 => t.data_type = v.as_i32()?,
            3 => t.has_segment = true,
            4 => wire::push_f32s(&v, &mut t.float_data)?,
            5 => wire::push_varints(&v, &mut t.int32_data)?,
            6 => t.string_data.push(v.as_bytes()?.to_vec()),
            7 => wire::push_varints(&v, &mut t.int64_data)?,
            8 => t.name = v.as_str()?,
            9 => t.raw_data = Some(v.as_bytes()?.to_vec()),
            10 => wire::push_f64s(&v, &mut t.double_data)?,
            11 => wire::push_u64s(&v, &mut t.uint64_data)?,
            13 => t.external_data.push(decode_kv(v.as_bytes()?)?),
            14 => t.data_location = v.as_i32()?,
            _ => {}
        }
    }
    Ok(t)
}

fn decode_sparse(buf: &[u8], depth: u32) -> Result<SparseTensorProto> {
    let depth = depth_check(depth)?;
    let mut s = SparseTensorProto::default();
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => s.values = Some(decode_tensor(v.as_bytes()?, depth)?),
            2 => s.indices = Some(decode_tensor(v.as_bytes()?, depth)?),
            3 => wire::push_varints(&v, &mut s.dims)?,
            _ => {}
        }
    }
    Ok(s)
}

fn decode_value_info(buf: &[u8], depth: u32) -> Result<ValueInfoProto> {
    let mut vi = ValueInfoProto::default();
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => vi.name = v.as_str()?,
            2 => vi.r#type = Some(decode_type(v.as_bytes()?, depth)?),
            _ => {}
        }
    }
    Ok(vi)
}

pub fn decode_type(buf: &[u8], depth: u32) -> Result<TypeProto> {
    let depth = depth_check(depth)?;
    let mut t = TypeProto::Unknown;
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => {
                let (mut elem_type, mut shape) = (0, None);
                let mut rr = Reader::new(v.as_bytes()?);
                while let Some((n, v)) = rr.field()? {
                    match n {
                        1 => elem_type = v.as_i32()?,
                        2 => shape = Some(decode_shape(v.as_bytes()?)?),
                        _ => {}
                    }
                }
                t = TypeProto::Tensor { elem_type, shape };
            }
            4 | 9 => {
                let mut elem = None;
                let mut rr = Reader::new(v.as_bytes()?);
                while let Some((nn, vv)) = rr.field()? {
                    if nn == 1 {
                        elem = Some(Box::new(decode_type(vv.as_bytes()?, depth)?));
                    }
                }
                t = if n == 4 {
                    TypeProto::Sequence(elem)
                } else {
                    TypeProto::Optional(elem)
                };
            }
            5 => t = TypeProto::Map,
            8 => {
                let mut elem_type = 0;
                let mut rr = Reader::new(v.as_bytes()?);
                while let Some((nn, vv)) = rr.field()? {
                    if nn == 1 {
                        elem_type = vv.as_i32()?;
                    }
                }
                t = TypeProto::SparseTensor { elem_type };
            }
            _ => {}
        }
    }
    Ok(t)
}

fn decode_shape(buf: &[u8]) -> Result<Vec<DimProto>> {
    let mut dims = Vec::new();
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        if n != 1 {
            continue;
        }
        let mut d = DimProto::Unknown;
        let mut rr = Reader::new(v.as_bytes()?);
        while let Some((nn, vv)) = rr.field()? {
            match nn {
                1 => d = DimProto::Value(vv.as_i64()?),
                2 => d = DimProto::Param(vv.as_str()?),
                _ => {}
            }
        }
        dims.push(d);
    }
    Ok(dims)
}

fn decode_function(buf: &[u8], depth: u32) -> Result<FunctionProto> {
    let depth = depth_check(depth)?;
    let mut f = FunctionProto::default();
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => f.name = v.as_str()?,
            4 => f.input.push(v.as_str()?),
            5 => f.output.push(v.as_str()?),
            6 => f.attribute.push(v.as_str()?),
            11 => f.attribute_proto.push(decode_attr(v.as_bytes()?, depth)?),
            7 => f.node.push(decode_node(v.as_bytes()?, depth)?),
            9 => f.opset_import.push(decode_opset(v.as_bytes()?)?),
            10 => f.domain = v.as_str()?,
            _ => {}
        }
    }
    Ok(f)
}

/// A lone TensorProto file (the conformance suite's `input_0.pb`).
pub fn decode_tensor_file(buf: &[u8]) -> Result<TensorProto> {
    decode_tensor(buf, 0)
}

/// A value file of the conformance suite: usually a TensorProto; sequences and optionals
/// are `onnx.SequenceProto` / `OptionalProto`, which we decode separately.
#[derive(Debug, Clone)]
pub enum ValueProto {
    Tensor(Box<TensorProto>),
    Sequence(Vec<ValueProto>),
    /// None = an empty optional.
    Optional(Option<Box<ValueProto>>),
}

/// Decodes `onnx.SequenceProto` (elem_type 1 = tensor, 4 = sequence, 5 = map, 6 = optional).
pub fn decode_sequence(buf: &[u8], depth: u32) -> Result<Vec<ValueProto>> {
    let depth = depth_check(depth)?;
    let mut items = Vec::new();
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            3 => items.push(ValueProto::Tensor(Box::new(decode_tensor(
                v.as_bytes()?,
                depth,
            )?))),
            5 => items.push(ValueProto::Sequence(decode_sequence(v.as_bytes()?, depth)?)),
            7 => items.push(decode_optional(v.as_bytes()?, depth)?),
            _ => {}
        }
    }
    Ok(items)
}

/// Decodes `onnx.OptionalProto`.
pub fn decode_optional(buf: &[u8], depth: u32) -> Result<ValueProto> {
    let depth = depth_check(depth)?;
    let mut inner = None;
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            3 => {
                inner = Some(Box::new(ValueProto::Tensor(Box::new(decode_tensor(
                    v.as_bytes()?,
                    depth,
                )?))))
            }
            5 => {
                inner = Some(Box::new(ValueProto::Sequence(decode_sequence(
                    v.as_bytes()?,
                    depth,
                )?)))
            }
            7 => inner = Some(Box::new(decode_optional(v.as_bytes()?, depth)?)),
            _ => {}
        }
    }
    Ok(ValueProto::Optional(inner))
}
