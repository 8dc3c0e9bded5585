//! CPU kernels for the elementwise family (ops in `crate::graph::ops::elementwise`).
