//! wasm-bindgen surface (filled in with the JS layer).
