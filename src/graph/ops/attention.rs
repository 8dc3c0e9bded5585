//! Op family: attention. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::attention`.

use super::OpDef;

pub const OPS: &[OpDef] = &[];
