//! CPU kernels for the norm family (ops in `crate::graph::ops::norm`).
