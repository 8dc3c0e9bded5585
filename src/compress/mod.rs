//! Model compression (issue #6): steps that rewrite an ONNX model to make it smaller or
//! faster, working on the decoded protobuf (`crate::onnx::proto`) and written back with
//! `crate::onnx::encode`.

pub mod quantize;
