//! wasm-bindgen surface: `EdgeModel` (load once, run many), `Feeds` (named inputs) and
//! `Outputs`. Errors are thrown as `EdgeError` objects with `kind`, `message`, `node` and
//! `op`, so JS can branch on the kind. Nothing here panics; a failed call leaves the
//! instance serving.

use super::{Backend, LoadOptions, Model};
use crate::error::Error;
use crate::tensor::{DType, Tensor};
use std::rc::Rc;
use wasm_bindgen::prelude::*;

/// A typed error for JS.
#[wasm_bindgen]
#[derive(Debug)]
pub struct EdgeError {
    inner: Error,
}

#[wasm_bindgen]
impl EdgeError {
    #[wasm_bindgen(getter)]
    pub fn kind(&self) -> String {
        self.inner.kind().as_str().to_string()
    }
    #[wasm_bindgen(getter)]
    pub fn message(&self) -> String {
        self.inner.to_string()
    }
    #[wasm_bindgen(getter)]
    pub fn node(&self) -> Option<String> {
        self.inner.node().map(String::from)
    }
    #[wasm_bindgen(getter)]
    pub fn op(&self) -> Option<String> {
        self.inner.op().map(String::from)
    }
    #[wasm_bindgen(js_name = toString)]
    pub fn to_js_string(&self) -> String {
        self.inner.to_string()
    }
}

impl From<Error> for EdgeError {
    fn from(inner: Error) -> Self {
        EdgeError { inner }
    }
}

fn shape_of(shape: &[u32]) -> Vec<usize> {
    shape.iter().map(|&d| d as usize).collect()
}

/// Named input tensors for one run.
#[wasm_bindgen]
#[derive(Default)]
pub struct Feeds {
    inner: Vec<(String, Tensor)>,
}

#[wasm_bindgen]
impl Feeds {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Feeds {
        Feeds::default()
    }
    fn push(&mut self, name: String, t: Result<Tensor, Error>) -> Result<(), EdgeError> {
        self.inner.retain(|(n, _)| *n != name);
        self.inner.push((name, t?));
        Ok(())
    }
    pub fn f32(&mut self, name: String, data: Vec<f32>, shape: Vec<u32>) -> Result<(), EdgeError> {
        self.push(name, Tensor::from_vec(shape_of(&shape), data))
    }
    pub fn i64(&mut self, name: String, data: Vec<i64>, shape: Vec<u32>) -> Result<(), EdgeError> {
        self.push(name, Tensor::from_vec(shape_of(&shape), data))
    }
    pub fn i32(&mut self, name: String, data: Vec<i32>, shape: Vec<u32>) -> Result<(), EdgeError> {
        self.push(name, Tensor::from_vec(shape_of(&shape), data))
    }
    pub fn u8(&mut self, name: String, data: Vec<u8>, shape: Vec<u32>) -> Result<(), EdgeError> {
        self.push(name, Tensor::from_vec(shape_of(&shape), data))
    }
    pub fn bool(&mut self, name: String, data: Vec<u8>, shape: Vec<u32>) -> Result<(), EdgeError> {
        self.push(
            name,
            Tensor::from_vec(
                shape_of(&shape),
                data.into_iter().map(|b| b != 0).collect::<Vec<_>>(),
            ),
        )
    }
}

/// The outputs of one run, by index.
#[wasm_bindgen]
pub struct Outputs {
    inner: Vec<(String, Tensor)>,
}

#[wasm_bindgen]
impl Outputs {
    pub fn len(&self) -> usize {
        self.inner.len()
    }
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
    fn get(&self, i: usize) -> Result<&Tensor, EdgeError> {
        self.inner
            .get(i)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::input(format!("no output {i}")).into())
    }
    pub fn name(&self, i: usize) -> Option<String> {
        self.inner.get(i).map(|(n, _)| n.clone())
    }
    pub fn dtype(&self, i: usize) -> Result<String, EdgeError> {
        Ok(self.get(i)?.dtype().name().to_string())
    }
    pub fn shape(&self, i: usize) -> Result<Vec<u32>, EdgeError> {
        Ok(self.get(i)?.shape().iter().map(|&d| d as u32).collect())
    }
    /// Values converted to f32 (any numeric dtype).
    pub fn f32(&self, i: usize) -> Result<Vec<f32>, EdgeError> {
        Ok(self.get(i)?.to_f32_vec()?)
    }
    /// Values as i64 (integer and bool dtypes).
    pub fn i64(&self, i: usize) -> Result<Vec<i64>, EdgeError> {
        Ok(self.get(i)?.to_i64_vec()?)
    }
    /// String outputs.
    pub fn strings(&self, i: usize) -> Result<Vec<String>, EdgeError> {
        let t = self.get(i)?;
        Ok(t.cast(DType::Str)?.into_vec::<String>()?)
    }
}

/// A loaded model.
#[wasm_bindgen]
pub struct EdgeModel {
    // Shared with the futures of `runAsync`, which outlive the borrow of `self`.
    model: Rc<Model>,
}

#[wasm_bindgen]
impl EdgeModel {
    /// Decodes, validates and plans a model from its bytes.
    #[wasm_bindgen(constructor)]
    pub fn new(bytes: &[u8]) -> Result<EdgeModel, EdgeError> {
        Ok(EdgeModel {
            model: Rc::new(Model::load(bytes)?),
        })
    }

    /// Loads with a backend, "cpu", "auto" or "webgpu" (a Promise). `auto` uses WebGPU
    /// only where it should win and says why not in `fallbackReason`; `webgpu` fails
    /// with a `Device` error when no GPU comes up.
    pub async fn create(bytes: Vec<u8>, backend: String) -> Result<EdgeModel, EdgeError> {
        let backend: Backend = backend.parse()?;
        let opts = LoadOptions {
            backend,
            ..Default::default()
        };
        Ok(EdgeModel {
            model: Rc::new(Model::load_async(&bytes, &opts).await?),
        })
    }

    /// "webgpu" or "cpu": where runs go now (a GPU failure switches to "cpu").
    pub fn backend(&self) -> String {
        self.model.backend().active.to_string()
    }
    /// Why the CPU runs the model (no navigator.gpu, no adapter, software adapter,
    /// nodes without GPU kernels, device lost…), or undefined.
    #[wasm_bindgen(js_name = fallbackReason)]
    pub fn fallback_reason(&self) -> Option<String> {
        self.model.backend().fallback_reason
    }
    /// The GPU adapter, when one came up.
    pub fn adapter(&self) -> Option<String> {
        self.model.backend().adapter
    }
    /// Nodes placed on the GPU.
    #[wasm_bindgen(js_name = gpuNodes)]
    pub fn gpu_nodes(&self) -> usize {
        self.model.backend().gpu_nodes
    }
    /// The execution plan: node order, placement (GPU/CPU and why), buffer slots.
    #[wasm_bindgen(js_name = planText)]
    pub fn plan_text(&self) -> String {
        self.model.plan().describe(self.model.graph())
    }

    /// Runs without blocking (a Promise of Outputs): the way to run on WebGPU.
    #[wasm_bindgen(js_name = runAsync)]
    pub fn run_async(&self, feeds: &Feeds) -> js_sys::Promise {
        let model = self.model.clone();
        let inputs = feeds.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let refs: Vec<(&str, Tensor)> = inputs
                .iter()
                .map(|(n, t)| (n.as_str(), t.clone()))
                .collect();
            match model.run_async(&refs).await {
                Ok(o) => Ok(JsValue::from(Outputs { inner: o })),
                Err(e) => Err(JsValue::from(EdgeError::from(e))),
            }
        })
    }
    #[wasm_bindgen(js_name = inputNames)]
    pub fn input_names(&self) -> Vec<String> {
        self.model.inputs().iter().map(|i| i.name.clone()).collect()
    }
    #[wasm_bindgen(js_name = outputNames)]
    pub fn output_names(&self) -> Vec<String> {
        self.model
            .outputs()
            .iter()
            .map(|i| i.name.clone())
            .collect()
    }
    /// Declared input type, e.g. "float32[N,3,48,?]".
    #[wasm_bindgen(js_name = inputType)]
    pub fn input_type(&self, i: usize) -> Option<String> {
        self.model.inputs().get(i).map(|x| x.fact.to_string())
    }
    pub fn run(&self, feeds: &Feeds) -> Result<Outputs, EdgeError> {
        let refs: Vec<(&str, Tensor)> = feeds
            .inner
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        Ok(Outputs {
            inner: self.model.run(&refs)?,
        })
    }
}

/// GEMM micro-benchmark (f32 GFLOP/s, int8 GOP/s, fraction of the SIMD peak) as a
/// printable table; `budget_ms` bounds each measurement. See `examples/gemm_micro.rs`.
#[wasm_bindgen]
pub fn gemm_microbench(budget_ms: f64) -> String {
    crate::cpu::simd::bench::report(budget_ms)
}
