//! Op family: norm. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::norm`.

use super::OpDef;

pub const OPS: &[OpDef] = &[];
