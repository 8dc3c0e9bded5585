//! CPU kernels for the rnn family (ops in `crate::graph::ops::rnn`).
