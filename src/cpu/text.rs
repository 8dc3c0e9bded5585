//! CPU kernels for the text family (ops in `crate::graph::ops::text`).
