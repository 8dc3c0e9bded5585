//! Op family: rnn. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::rnn`.

use super::OpDef;

pub const OPS: &[OpDef] = &[];
