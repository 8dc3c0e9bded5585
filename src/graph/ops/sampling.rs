//! Op family: sampling. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::sampling`.

use super::OpDef;

pub const OPS: &[OpDef] = &[];
