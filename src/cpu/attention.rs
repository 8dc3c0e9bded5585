//! CPU kernels for the attention family (ops in `crate::graph::ops::attention`).
