//! CPU kernels for the layout family (ops in `crate::graph::ops::layout`).
