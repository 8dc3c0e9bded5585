//! wasm-bindgen surface: `EdgeModel` (load once, run many), `Feeds` (named inputs) and
//! `Outputs`. Errors are thrown as `EdgeError` objects with `kind`, `message`, `node` and
//! `op`, so JS can branch on the kind. Nothing here panics; a failed call leaves the
//! instance serving.

use super::stream::{Stream, StreamSpec};
use super::{Backend, IoInfo, LoadOptions, Model};
use crate::error::Error;
use crate::graph::shape::ValueKind;
use crate::graph::Dim;
use crate::plan::Placement;
use crate::tensor::{DType, Data, Tensor};
use half::{bf16, f16};
use js_sys::{
    Array, BigInt64Array, BigUint64Array, Float32Array, Float64Array, Int16Array, Int32Array,
    Int8Array, Uint16Array, Uint32Array, Uint8Array,
};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

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
    /// Any dtype from its typed array (see docs/js-api.md): `Float32Array` for float32,
    /// `BigInt64Array` for int64, `Uint16Array` bits for float16/bfloat16, `Uint8Array`
    /// for bool, an array of strings for string…
    pub fn add(
        &mut self,
        name: String,
        dtype: String,
        data: JsValue,
        shape: Vec<u32>,
    ) -> Result<(), EdgeError> {
        let t = tensor_from_js(&name, &dtype, &data, shape_of(&shape));
        self.push(name, t)
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
    /// Values as the typed array of their dtype (docs/js-api.md). Float8/float4 come as
    /// `Float32Array` and 4/2-bit integers as `Int8Array`/`Uint8Array`, widened.
    pub fn data(&self, i: usize) -> Result<JsValue, EdgeError> {
        Ok(tensor_to_js(self.get(i)?)?)
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

    /// Loads (a Promise) with options `{backend, optimize, memoryLimit}` or just the backend
    /// name, "cpu", "auto" or "webgpu". `auto` uses WebGPU only where it should win and
    /// says why not in `fallbackReason`; `webgpu` fails with a `Device` error when no GPU
    /// comes up.
    pub async fn create(bytes: Vec<u8>, options: JsValue) -> Result<EdgeModel, EdgeError> {
        #[cfg(debug_assertions)]
        console_error_panic_hook::set_once();
        let opts = load_options(options)?;
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

    /// Inputs, outputs (dtype and dims: a number, a symbol's name, or null), producer,
    /// opsets and metadata_props, as a plain object.
    pub fn describe(&self) -> Result<JsValue, EdgeError> {
        let m = &self.model;
        let meta = m.meta();
        let d = Description {
            inputs: m.inputs().iter().map(io_desc).collect(),
            outputs: m.outputs().iter().map(io_desc).collect(),
            producer: meta.producer.clone(),
            ir_version: meta.ir_version,
            opsets: meta.opsets.iter().cloned().collect(),
            props: meta.metadata.iter().cloned().collect(),
            no_stacking: match super::batch::stacking(m) {
                super::batch::Stacking::Batch(_) => None,
                super::batch::Stacking::OneByOne(why) => Some(why),
            },
        };
        to_js(&d)
    }
    /// Where every node runs and why, with the counts, as a plain object.
    pub fn placement(&self) -> Result<JsValue, EdgeError> {
        let g = self.model.graph();
        let b = self.model.backend();
        let nodes = g
            .nodes
            .iter()
            .zip(&self.model.plan().placement)
            .map(|(n, (p, why))| NodePlacement {
                name: n.name.clone(),
                op: n.op_type.clone(),
                device: match p {
                    Placement::Gpu => "gpu",
                    Placement::Cpu => "cpu",
                },
                reason: why.clone(),
            })
            .collect();
        to_js(&PlanDesc {
            gpu_nodes: b.gpu_nodes,
            nodes: b.nodes,
            placement: nodes,
        })
    }

    /// A stream over this model (`api::stream`): options `{input, hop, context, state?}`
    /// (`state`: [[input, output], …], found by name when left out) and the inputs that
    /// stay the same for every window.
    pub fn stream(&self, options: JsValue, fixed: &Feeds) -> Result<EdgeStream, EdgeError> {
        let o: JsStreamOptions = serde_wasm_bindgen::from_value(options)
            .map_err(|e| Error::input(format!("bad stream options: {e}")))?;
        let spec = StreamSpec {
            input: o.input,
            hop: o.hop,
            context: o.context,
            state: o
                .state
                .unwrap_or_else(|| StreamSpec::detect_state(&self.model)),
            fixed: fixed.inner.clone(),
        };
        Ok(EdgeStream {
            stream: Rc::new(RefCell::new(Stream::new(self.model.clone(), spec)?)),
            busy: Rc::new(std::cell::Cell::new(false)),
        })
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

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsLoadOptions {
    backend: Option<String>,
    optimize: Option<bool>,
    memory_limit: Option<f64>,
    gpu_greedy: Option<bool>,
}

fn load_options(v: JsValue) -> Result<LoadOptions, Error> {
    let mut opts = LoadOptions::default();
    let js: JsLoadOptions = if let Some(name) = v.as_string() {
        JsLoadOptions {
            backend: Some(name),
            ..Default::default()
        }
    } else if v.is_undefined() || v.is_null() {
        JsLoadOptions::default()
    } else {
        serde_wasm_bindgen::from_value(v)
            .map_err(|e| Error::input(format!("bad load options: {e}")))?
    };
    if let Some(b) = js.backend {
        opts.backend = b.parse::<Backend>()?;
    }
    if let Some(o) = js.optimize {
        opts.optimize = o;
    }
    if let Some(limit) = js.memory_limit {
        if !(limit.is_finite() && limit >= 1.0) {
            return Err(Error::input(format!(
                "memoryLimit must be a positive number of bytes, not {limit}"
            )));
        }
        opts.memory_budget = limit as usize;
    }
    if let Some(g) = js.gpu_greedy {
        opts.gpu_greedy = g;
    }
    Ok(opts)
}

/// A dim for JS: its size, its symbol, or null.
#[derive(Serialize)]
#[serde(untagged)]
enum JsDim {
    Known(usize),
    Sym(String),
    Unknown(Option<()>),
}

#[derive(Serialize)]
struct IoDesc {
    name: String,
    /// "tensor", "sequence" or "optional".
    kind: &'static str,
    dtype: Option<&'static str>,
    /// None when the rank is unknown.
    dims: Option<Vec<JsDim>>,
    optional: bool,
}

fn io_desc(io: &IoInfo) -> IoDesc {
    IoDesc {
        name: io.name.clone(),
        kind: match io.fact.kind {
            ValueKind::Sequence => "sequence",
            ValueKind::Optional => "optional",
            _ => "tensor",
        },
        dtype: io.fact.dtype.map(DType::name),
        dims: io.fact.shape.as_ref().map(|dims| {
            dims.iter()
                .map(|d| match d {
                    Dim::Known(v) => JsDim::Known(*v),
                    Dim::Sym(s) => JsDim::Sym(s.clone()),
                    Dim::Unknown => JsDim::Unknown(None),
                })
                .collect()
        }),
        optional: io.optional,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Description {
    inputs: Vec<IoDesc>,
    outputs: Vec<IoDesc>,
    producer: String,
    ir_version: i64,
    opsets: BTreeMap<String, i64>,
    props: BTreeMap<String, String>,
    /// Why inputs cannot be stacked along a batch dim (`runBatch` then runs them one by
    /// one); None when they can.
    no_stacking: Option<String>,
}

#[derive(Serialize)]
struct NodePlacement {
    name: String,
    op: String,
    device: &'static str,
    reason: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanDesc {
    gpu_nodes: usize,
    nodes: usize,
    placement: Vec<NodePlacement>,
}

fn to_js<T: Serialize>(v: &T) -> Result<JsValue, EdgeError> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| Error::runtime(format!("cannot describe to JS: {e}")).into())
}

/// Copies a JS typed array of the type `A` out, or says which array `dtype` needs.
fn typed<A: JsCast, T>(
    name: &str,
    dtype: &str,
    v: &JsValue,
    want: &str,
    to_vec: impl Fn(&A) -> Vec<T>,
) -> Result<Vec<T>, Error> {
    v.dyn_ref::<A>().map(to_vec).ok_or_else(|| {
        Error::dtype(format!(
            "input '{name}': {dtype} data must be a {want}, got {}",
            v.js_typeof().as_string().unwrap_or_default()
        ))
    })
}

fn tensor_from_js(
    name: &str,
    dtype: &str,
    v: &JsValue,
    shape: Vec<usize>,
) -> Result<Tensor, Error> {
    let data = match dtype {
        "float32" => Data::F32(typed(name, dtype, v, "Float32Array", Float32Array::to_vec)?),
        "float64" => Data::F64(typed(name, dtype, v, "Float64Array", Float64Array::to_vec)?),
        "int64" => Data::I64(typed(
            name,
            dtype,
            v,
            "BigInt64Array",
            BigInt64Array::to_vec,
        )?),
        "uint64" => Data::U64(typed(
            name,
            dtype,
            v,
            "BigUint64Array",
            BigUint64Array::to_vec,
        )?),
        "int32" => Data::I32(typed(name, dtype, v, "Int32Array", Int32Array::to_vec)?),
        "uint32" => Data::U32(typed(name, dtype, v, "Uint32Array", Uint32Array::to_vec)?),
        "int16" => Data::I16(typed(name, dtype, v, "Int16Array", Int16Array::to_vec)?),
        "uint16" => Data::U16(typed(name, dtype, v, "Uint16Array", Uint16Array::to_vec)?),
        "int8" => Data::I8(typed(name, dtype, v, "Int8Array", Int8Array::to_vec)?),
        "uint8" => Data::U8(typed(name, dtype, v, "Uint8Array", Uint8Array::to_vec)?),
        "bool" => Data::Bool(
            typed(name, dtype, v, "Uint8Array", Uint8Array::to_vec)?
                .into_iter()
                .map(|b| b != 0)
                .collect(),
        ),
        "float16" => Data::F16(
            typed(
                name,
                dtype,
                v,
                "Uint16Array of float16 bits",
                Uint16Array::to_vec,
            )?
            .into_iter()
            .map(f16::from_bits)
            .collect(),
        ),
        "bfloat16" => Data::BF16(
            typed(
                name,
                dtype,
                v,
                "Uint16Array of bfloat16 bits",
                Uint16Array::to_vec,
            )?
            .into_iter()
            .map(bf16::from_bits)
            .collect(),
        ),
        "string" => {
            let arr = v.dyn_ref::<Array>().ok_or_else(|| {
                Error::dtype(format!(
                    "input '{name}': string data must be an array of strings"
                ))
            })?;
            let mut out = Vec::with_capacity(arr.length() as usize);
            for x in arr.iter() {
                out.push(x.as_string().ok_or_else(|| {
                    Error::dtype(format!(
                        "input '{name}': a string tensor holds only strings"
                    ))
                })?);
            }
            Data::Str(out)
        }
        other => {
            return Err(Error::dtype(format!(
                "input '{name}': dtype '{other}' cannot be fed from JS (see docs/js-api.md)"
            )))
        }
    };
    Tensor::new(shape, data)
}

fn tensor_to_js(t: &Tensor) -> Result<JsValue, Error> {
    Ok(match t.data() {
        Data::F32(v) => Float32Array::from(&v[..]).into(),
        Data::F64(v) => Float64Array::from(&v[..]).into(),
        Data::I64(v) => BigInt64Array::from(&v[..]).into(),
        Data::U64(v) => BigUint64Array::from(&v[..]).into(),
        Data::I32(v) => Int32Array::from(&v[..]).into(),
        Data::U32(v) => Uint32Array::from(&v[..]).into(),
        Data::I16(v) => Int16Array::from(&v[..]).into(),
        Data::U16(v) => Uint16Array::from(&v[..]).into(),
        Data::I8(v) => Int8Array::from(&v[..]).into(),
        Data::U8(v) => Uint8Array::from(&v[..]).into(),
        Data::Bool(v) => {
            let bytes: Vec<u8> = v.iter().map(|&b| u8::from(b)).collect();
            Uint8Array::from(&bytes[..]).into()
        }
        Data::F16(v) => {
            let bits: Vec<u16> = v.iter().map(|x| x.to_bits()).collect();
            Uint16Array::from(&bits[..]).into()
        }
        Data::BF16(v) => {
            let bits: Vec<u16> = v.iter().map(|x| x.to_bits()).collect();
            Uint16Array::from(&bits[..]).into()
        }
        Data::Str(v) => v
            .iter()
            .map(|s| JsValue::from_str(s))
            .collect::<Array>()
            .into(),
        _ if t.dtype().is_float() => Float32Array::from(&t.to_f32_vec()?[..]).into(),
        _ if t.dtype().is_signed_int() => {
            let v: Vec<i8> = t.to_i64_vec()?.into_iter().map(|x| x as i8).collect();
            Int8Array::from(&v[..]).into()
        }
        _ => {
            let v: Vec<u8> = t.to_i64_vec()?.into_iter().map(|x| x as u8).collect();
            Uint8Array::from(&v[..]).into()
        }
    })
}

/// GEMM micro-benchmark (f32 GFLOP/s, int8 GOP/s, fraction of the SIMD peak) as a
/// printable table; `budget_ms` bounds each measurement. See `examples/gemm_micro.rs`.
#[wasm_bindgen]
pub fn gemm_microbench(budget_ms: f64) -> String {
    crate::cpu::simd::bench::report(budget_ms)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsStreamOptions {
    input: String,
    hop: usize,
    #[serde(default)]
    context: usize,
    state: Option<Vec<(String, String)>>,
}

/// A live stream: samples in (`push`, a Promise of one `Outputs` per completed window),
/// state carried between windows. Windows run through `runAsync`, so a WebGPU model streams
/// too. One call at a time: a push while another is running is refused.
#[wasm_bindgen]
pub struct EdgeStream {
    stream: Rc<RefCell<Stream<Rc<Model>>>>,
    busy: Rc<std::cell::Cell<bool>>,
}

#[wasm_bindgen]
impl EdgeStream {
    /// Appends samples; resolves to the windows they completed, in order.
    pub fn push(&self, samples: Vec<f32>) -> js_sys::Promise {
        self.drive(Some(samples), false)
    }
    /// Runs the zero-padded partial window left, if any.
    pub fn finish(&self) -> js_sys::Promise {
        self.drive(None, true)
    }
    /// Back to the start: zero state and context, nothing pending.
    pub fn reset(&self) -> Result<(), EdgeError> {
        if self.busy.get() {
            return Err(Error::input("a stream call is still running: await it first").into());
        }
        Ok(self.stream.borrow_mut().reset()?)
    }
    /// Samples buffered toward the next window.
    pub fn pending(&self) -> usize {
        self.stream.borrow().pending()
    }

    fn drive(&self, samples: Option<Vec<f32>>, flush: bool) -> js_sys::Promise {
        let (stream, busy) = (self.stream.clone(), self.busy.clone());
        wasm_bindgen_futures::future_to_promise(async move {
            if busy.replace(true) {
                return Err(JsValue::from(EdgeError::from(Error::input(
                    "a stream call is still running: await it first",
                ))));
            }
            let r = async {
                if let Some(s) = samples {
                    stream.borrow_mut().feed(&s);
                }
                let out = Array::new();
                loop {
                    let feeds = stream.borrow_mut().next_window(flush)?;
                    let Some(feeds) = feeds else { break };
                    let model = stream.borrow().model().clone();
                    let refs: Vec<(&str, Tensor)> =
                        feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
                    let outs = model.run_async(&refs).await?;
                    let window = stream.borrow_mut().absorb(outs)?;
                    out.push(&JsValue::from(Outputs { inner: window }));
                    if flush {
                        break;
                    }
                }
                Ok::<_, Error>(out)
            }
            .await;
            busy.set(false);
            r.map(JsValue::from)
                .map_err(|e| JsValue::from(EdgeError::from(e)))
        })
    }
}
