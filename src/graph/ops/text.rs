//! Op family: text. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::text`.

use super::OpDef;

pub const OPS: &[OpDef] = &[];
