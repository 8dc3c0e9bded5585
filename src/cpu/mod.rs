//! CPU kernels, one file per op family (matching `graph::ops`). Kernels take validated
//! attributes and input tensors and return new tensors; they check what they index with
//! and return errors, never panic.

pub mod attention;
pub mod common;
pub mod elementwise;
pub mod gemm;
pub mod layout;
pub mod ml;
pub mod nn;
pub mod norm;
pub mod qconv;
pub mod qgemm;
pub mod quant;
pub mod reduce;
pub mod rnn;
pub mod sampling;
pub mod simd;
pub mod text;
