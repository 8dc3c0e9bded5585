//! Op family: reduce. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::reduce`.

use super::OpDef;

pub const OPS: &[OpDef] = &[];
