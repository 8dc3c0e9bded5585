//! Op family: ml. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::ml`.

use super::OpDef;

pub const OPS: &[OpDef] = &[];
