//! Op family: layout. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::layout`.

use super::OpDef;

pub const OPS: &[OpDef] = &[];
