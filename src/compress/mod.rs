//! Model compression (issue #6): steps that rewrite an ONNX model to make it smaller or
//! faster, working on the decoded protobuf (`crate::onnx::proto`) and written back with
//! `crate::onnx::encode`, and the measure of a compressed or distilled model against its
//! reference. Library code, usable from wasm; file handling stays in the CLI.

pub mod evaluate;
pub mod quantize;
