//! CPU kernels for the sampling family (ops in `crate::graph::ops::sampling`).
