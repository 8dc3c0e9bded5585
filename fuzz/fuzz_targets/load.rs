//! Load + shape inference + optimisation on arbitrary bytes must return Ok or a typed
//! error, never panic, abort or exhaust memory. Seeded with the conformance suite's
//! models (tools/fuzz_smoke.sh).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = edgepredict::LoadOptions { memory_budget: 64 << 20, ..Default::default() };
    if let Ok(model) = edgepredict::Model::load_with(data, &opts) {
        // Inspecting a loaded model must not panic either.
        let _ = model.plan().describe(model.graph());
    }
});
