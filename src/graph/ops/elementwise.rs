//! Op family: elementwise. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::elementwise`.

use super::OpDef;

pub const OPS: &[OpDef] = &[];
