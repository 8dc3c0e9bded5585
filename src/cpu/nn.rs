//! CPU kernels for the nn family (ops in `crate::graph::ops::nn`).
