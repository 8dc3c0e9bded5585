//! CPU kernels for the ml family (ops in `crate::graph::ops::ml`).
