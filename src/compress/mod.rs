//! Model compression (issue #6): measuring a compressed or distilled model against its
//! reference. Library code, usable from wasm; file handling stays in the CLI.

pub mod evaluate;
