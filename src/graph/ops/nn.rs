//! Op family: nn. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::nn`.

use super::OpDef;

pub const OPS: &[OpDef] = &[];
