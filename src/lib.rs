//! edgepredict: load an ONNX model at run time and predict on the user's device.
//!
//! Pipeline: [`onnx`] (decode) → [`graph`] (IR, shape inference, passes) → [`plan`]
//! (schedule, lifetimes) → [`cpu`] (kernels) → [`api`] (native and wasm).
//!
//! ```no_run
//! let bytes = std::fs::read("model.onnx").unwrap();
//! let model = edgepredict::Model::load(&bytes).unwrap();
//! let x = edgepredict::Tensor::from_vec(vec![1, 4], vec![0f32; 4]).unwrap();
//! let outputs = model.run(&[("x", x)]).unwrap();
//! ```

pub mod error;
pub mod tensor;

pub mod api;
pub mod compress;
pub mod cpu;
#[cfg(feature = "webgpu")]
pub mod gpu;
pub mod graph;
pub mod onnx;
pub mod plan;

pub use api::{LoadOptions, Model};
pub use error::{Error, ErrorKind, Result};
pub use graph::Value;
pub use tensor::{DType, Tensor};
