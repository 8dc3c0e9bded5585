//! CPU kernels for the reduce family (ops in `crate::graph::ops::reduce`).
