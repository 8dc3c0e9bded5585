//! What only the browser (or Deno, or a Worker) can tell: whether WebGPU exists here.

use wasm_bindgen::prelude::*;

#[wasm_bindgen(inline_js = "export function ep_has_navigator_gpu() { \
    return typeof navigator !== 'undefined' && navigator !== null && !!navigator.gpu; }")]
extern "C" {
    fn ep_has_navigator_gpu() -> bool;
}

/// False in Node, in Workers and in browsers without WebGPU: requesting an adapter
/// there would fail less clearly.
pub fn has_navigator_gpu() -> bool {
    ep_has_navigator_gpu()
}
