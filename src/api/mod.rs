//! The public API shared by native callers, the CLI and the wasm bindings: load a model
//! from bytes once, then run it many times.

pub mod batch;
pub mod io;
pub mod stream;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

use crate::error::{Error, Result};
use crate::graph::build::{build_model, Opsets};
use crate::graph::shape::{infer_graph, ValueKind};
use crate::graph::{passes, Dim, Fact, Graph, RunCx, Value};
use crate::onnx::decode_model;
use crate::plan::{run_graph, NodeTime, Plan, RunOptions};
use crate::tensor::{set_memory_budget, Tensor};
use std::collections::{BTreeMap, HashMap};

/// Outputs by name, in model order.
pub type Named<T> = Vec<(String, T)>;

/// Which backend runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The CPU kernels (f32 and int8, wasm SIMD in the browser).
    #[default]
    Cpu,
    /// WebGPU when an adapter and device come up, the adapter is a real GPU and every
    /// node that computes on floats is placed on it; otherwise the CPU, with the reason
    /// recorded ([`Model::backend`]).
    Auto,
    /// WebGPU, with nodes that have no GPU kernel on the CPU; loading fails (a `Device`
    /// error) when no GPU comes up.
    WebGpu,
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Backend> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "auto" => Ok(Backend::Auto),
            "webgpu" | "gpu" => Ok(Backend::WebGpu),
            _ => Err(Error::input(format!(
                "unknown backend '{s}' (auto, webgpu or cpu)"
            ))),
        }
    }
}

/// Options for loading.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Run graph optimisations (constant folding, dead-node removal, fusions).
    pub optimize: bool,
    /// Largest tensor a model may declare or produce, in bytes.
    pub memory_budget: usize,
    pub backend: Backend,
    /// With a GPU backend: put every node that has a GPU kernel on the GPU, even data
    /// movement and shape arithmetic on CPU values (for testing kernel coverage). By
    /// default such nodes stay where their inputs are.
    pub gpu_greedy: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            optimize: true,
            memory_budget: crate::tensor::DEFAULT_BUDGET,
            backend: Backend::Cpu,
            gpu_greedy: false,
        }
    }
}

/// Which backend a model runs on and why (`info --backend`, the JS API).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
    /// "webgpu" or "cpu".
    pub active: &'static str,
    pub requested: Backend,
    /// The adapter, when a GPU came up.
    pub adapter: Option<String>,
    /// Why the CPU runs the model (None when the GPU does).
    pub fallback_reason: Option<String>,
    /// Nodes placed on the GPU, of all nodes.
    pub gpu_nodes: usize,
    pub nodes: usize,
}

/// A model input or output as declared.
#[derive(Debug, Clone)]
pub struct IoInfo {
    pub name: String,
    pub fact: Fact,
    /// True for an input that has an initializer default and may be left out.
    pub optional: bool,
}

impl IoInfo {
    /// The declared shape with every symbolic or unknown dim (a batch, a length) set to 1;
    /// None when the rank is not declared.
    pub fn shape_with_ones(&self) -> Option<Vec<usize>> {
        let dims = self.fact.shape.as_ref()?;
        Some(dims.iter().map(|d| d.known().unwrap_or(1)).collect())
    }
}

/// Model-level facts for `info`.
#[derive(Debug, Clone, Default)]
pub struct ModelMeta {
    pub ir_version: i64,
    pub producer: String,
    pub opsets: Vec<(String, i64)>,
    pub metadata: Vec<(String, String)>,
    /// Op type → count, over the graph as loaded (before optimisation), subgraphs included.
    pub op_histogram: BTreeMap<String, usize>,
}

/// A loaded, validated and planned model.
#[derive(Debug)]
pub struct Model {
    graph: Graph,
    plan: Plan,
    opsets: Opsets,
    inputs: Vec<IoInfo>,
    outputs: Vec<IoInfo>,
    meta: ModelMeta,
    options: RunOptions,
    backend: BackendInfo,
    #[cfg(feature = "webgpu")]
    gpu: Option<crate::gpu::GpuSession>,
    /// Set when a GPU run failed on the device: later runs use the CPU.
    gpu_failed: std::sync::Mutex<Option<String>>,
}

/// Restores the previous budget when dropped, so the thread-wide setting is scoped.
struct BudgetGuard(usize);
impl Drop for BudgetGuard {
    fn drop(&mut self) {
        set_memory_budget(self.0);
    }
}

fn histogram(g: &Graph, h: &mut BTreeMap<String, usize>) {
    for n in &g.nodes {
        let key = if n.domain.is_empty() {
            n.op_type.clone()
        } else {
            format!("{}.{}", n.domain, n.op_type)
        };
        *h.entry(key).or_default() += 1;
        for sg in n.op.subgraphs() {
            histogram(sg, h);
        }
    }
}

impl Model {
    /// Decodes, validates, infers shapes, optimises and plans a model.
    pub fn load(bytes: &[u8]) -> Result<Model> {
        Model::load_with(bytes, &LoadOptions::default())
    }

    pub fn load_with(bytes: &[u8], opts: &LoadOptions) -> Result<Model> {
        guard_panics(|| Model::load_inner(bytes, opts))
    }

    fn load_inner(bytes: &[u8], opts: &LoadOptions) -> Result<Model> {
        let _guard = BudgetGuard(set_memory_budget(opts.memory_budget));
        let proto = decode_model(bytes)?;
        let (mut graph, opsets) = build_model(&proto)?;
        let mut op_histogram = BTreeMap::new();
        histogram(&graph, &mut op_histogram);
        let opset_fn = |d: &str| opsets.get(d);
        infer_graph(&mut graph, &opset_fn)?;
        if opts.optimize {
            passes::optimize(&mut graph)?;
        }
        let mut plan = Plan::new(&graph);
        let (backend, gpu) = choose_backend(opts, &graph, &mut plan)?;
        #[cfg(not(feature = "webgpu"))]
        let _ = gpu;
        let io = |ids: &[usize]| -> Vec<IoInfo> {
            ids.iter()
                .map(|&id| IoInfo {
                    name: graph.values[id].name.clone(),
                    fact: graph.values[id].fact.clone(),
                    optional: graph.consts[id].is_some(),
                })
                .collect()
        };
        let inputs = io(&graph.inputs);
        let outputs = io(&graph.outputs);
        let mut ops: Vec<_> = opsets.0.iter().map(|(k, v)| (k.clone(), *v)).collect();
        ops.sort();
        let meta = ModelMeta {
            ir_version: proto.ir_version,
            producer: format!("{} {}", proto.producer_name, proto.producer_version)
                .trim()
                .to_string(),
            opsets: ops,
            metadata: proto.metadata_props.clone(),
            op_histogram,
        };
        let options = RunOptions {
            memory_budget: opts.memory_budget,
            ..RunOptions::default()
        };
        Ok(Model {
            graph,
            plan,
            opsets,
            inputs,
            outputs,
            meta,
            options,
            backend,
            #[cfg(feature = "webgpu")]
            gpu,
            gpu_failed: std::sync::Mutex::new(None),
        })
    }

    /// Marks the GPU device as lost, as a driver reset would (tests of the fallback).
    /// Every model of the process shares the device, so all of them see the loss.
    #[doc(hidden)]
    pub fn simulate_device_loss(&self) {
        #[cfg(feature = "webgpu")]
        if let Some(s) = &self.gpu {
            s.cx.mark_lost("simulated device loss");
        }
    }

    /// Command submissions and bytes uploaded/read back by the last GPU run (None on
    /// the CPU): one submission per run unless a CPU node needs a GPU value midway.
    #[cfg(feature = "webgpu")]
    pub fn last_gpu_run(&self) -> Option<crate::gpu::RunStats> {
        self.gpu.as_ref().and_then(|s| s.last_run())
    }

    /// The backend this model runs on, and why.
    pub fn backend(&self) -> BackendInfo {
        let mut b = self.backend.clone();
        if let Some(why) = self.gpu_failed.lock().ok().and_then(|g| g.clone()) {
            b.active = "cpu";
            b.fallback_reason = Some(why);
        }
        b
    }

    pub fn inputs(&self) -> &[IoInfo] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[IoInfo] {
        &self.outputs
    }
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    pub fn opset(&self, domain: &str) -> i64 {
        self.opsets.get(domain)
    }
    pub fn run_options_mut(&mut self) -> &mut RunOptions {
        &mut self.options
    }

    /// Runs with tensors given by input name; returns (output name, tensor) in model order.
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        self.run_owned(
            inputs
                .iter()
                .map(|(n, t)| (n.to_string(), t.clone()))
                .collect(),
        )
    }

    /// [`Model::run`] with the tensors given by value: nothing of the inputs is copied
    /// (the batch runner's items and stacked batches, a stream's windows).
    pub fn run_owned(&self, inputs: Named<Tensor>) -> Result<Named<Tensor>> {
        let (names, tensors): (Vec<String>, Vec<Tensor>) = inputs.into_iter().unzip();
        let vals: Vec<(&str, Value)> = names
            .iter()
            .map(String::as_str)
            .zip(tensors.into_iter().map(Value::from))
            .collect();
        let outs = self.run_values(vals)?;
        outs.into_iter()
            .map(|(n, v)| {
                let t = v
                    .into_tensor()
                    .map_err(|_| Error::runtime(format!("output '{n}' is not a tensor")))?;
                Ok((n, t))
            })
            .collect()
    }

    /// Runs with any values (tensors, sequences, optionals) by input name.
    pub fn run_values(&self, inputs: Vec<(&str, Value)>) -> Result<Vec<(String, Value)>> {
        guard_panics(|| self.run_inner(inputs, false)).map(|(o, _)| o)
    }

    /// Runs like [`Model::run`] and also returns each node's wall time, in run order
    /// (the top-level graph's nodes; a subgraph's time counts to its If/Loop/Scan).
    pub fn run_profiled(
        &self,
        inputs: &[(&str, Tensor)],
    ) -> Result<(Named<Tensor>, Vec<NodeTime>)> {
        let vals: Vec<(&str, Value)> = inputs
            .iter()
            .map(|(n, t)| (*n, Value::from(t.clone())))
            .collect();
        let (outs, prof) = guard_panics(|| self.run_inner(vals, true))?;
        let outs = outs
            .into_iter()
            .map(|(n, v)| {
                let t = v
                    .into_tensor()
                    .map_err(|_| Error::runtime(format!("output '{n}' is not a tensor")))?;
                Ok((n, t))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((outs, prof))
    }

    /// Checks and binds the inputs in graph order.
    fn bind_inputs(&self, inputs: Vec<(&str, Value)>) -> Result<Vec<Option<Value>>> {
        let mut bound: Vec<Option<Value>> = vec![None; self.graph.inputs.len()];
        for (name, v) in inputs {
            let k = self
                .inputs
                .iter()
                .position(|i| i.name == name)
                .ok_or_else(|| Error::input(format!("the model has no input named '{name}'")))?;
            bound[k] = Some(v);
        }
        let mut syms: HashMap<String, usize> = HashMap::new();
        for (k, info) in self.inputs.iter().enumerate() {
            match &bound[k] {
                Some(v) => check_input(info, v, &mut syms)?,
                None if self.graph.consts[self.graph.inputs[k]].is_some() => {}
                None => return Err(Error::input(format!("missing input '{}'", info.name))),
            }
        }
        Ok(bound)
    }

    fn name_outputs(&self, outs: Vec<Value>) -> Named<Value> {
        self.outputs
            .iter()
            .map(|o| o.name.clone())
            .zip(outs)
            .collect()
    }

    fn run_inner(
        &self,
        inputs: Vec<(&str, Value)>,
        profile: bool,
    ) -> Result<(Named<Value>, Vec<NodeTime>)> {
        let _guard = BudgetGuard(set_memory_budget(self.options.memory_budget));
        let bound = self.bind_inputs(inputs)?;
        let mut cx = RunCx {
            options: &self.options,
            depth: 0,
            profile: profile.then(Vec::new),
        };
        let outs = match self.gpu_session() {
            Some(s) => self.run_on_gpu(s, &mut cx, bound)?,
            None => run_graph(&self.graph, &self.plan, &mut cx, bound, &[])?,
        };
        Ok((self.name_outputs(outs), cx.profile.unwrap_or_default()))
    }

    /// Loads like [`Model::load_with`]; in wasm this is the way to WebGPU, whose
    /// adapter and device only come asynchronously.
    pub async fn load_async(bytes: &[u8], opts: &LoadOptions) -> Result<Model> {
        #[cfg(all(feature = "webgpu", target_arch = "wasm32"))]
        if opts.backend != Backend::Cpu {
            let cpu_opts = LoadOptions {
                backend: Backend::Cpu,
                ..opts.clone()
            };
            let mut m = Model::load_with(bytes, &cpu_opts)?;
            m.backend.requested = opts.backend;
            match crate::gpu::device::shared_web().await {
                Ok(cx) => {
                    let (info, sess) = gpu_backend(opts, &m.graph, &mut m.plan, cx)?;
                    m.backend = info;
                    m.gpu = sess;
                }
                Err(why) => {
                    if opts.backend == Backend::WebGpu {
                        return Err(Error::device(why.to_string()));
                    }
                    m.backend.fallback_reason = Some(why.to_string());
                }
            }
            return Ok(m);
        }
        Model::load_with(bytes, opts)
    }

    /// Runs like [`Model::run`]; on WebGPU in wasm the readback is awaited instead of
    /// blocked on (the browser cannot block).
    pub async fn run_async(&self, inputs: &[(&str, Tensor)]) -> Result<Named<Tensor>> {
        let vals: Vec<(&str, Value)> = inputs
            .iter()
            .map(|(n, t)| (*n, Value::from(t.clone())))
            .collect();
        let _guard = BudgetGuard(set_memory_budget(self.options.memory_budget));
        let bound = self.bind_inputs(vals)?;
        let mut cx = RunCx {
            options: &self.options,
            depth: 0,
            profile: None,
        };
        let outs = match self.gpu_session() {
            #[cfg(feature = "webgpu")]
            Some(s) => {
                let r = s.run(&self.graph, &self.plan, &mut cx, bound).await;
                self.note_gpu_result(r.map(|(o, _)| o))?
            }
            _ => guard_panics(|| run_graph(&self.graph, &self.plan, &mut cx, bound, &[]))?,
        };
        self.name_outputs(outs)
            .into_iter()
            .map(|(n, v)| {
                let t = v
                    .into_tensor()
                    .map_err(|_| Error::runtime(format!("output '{n}' is not a tensor")))?;
                Ok((n, t))
            })
            .collect()
    }

    /// Passes a GPU run's result through; a device failure also switches later runs
    /// to the CPU.
    #[cfg(feature = "webgpu")]
    fn note_gpu_result(&self, r: Result<Vec<Value>>) -> Result<Vec<Value>> {
        if let Err(e) = &r {
            if e.kind() == crate::ErrorKind::Device {
                if let Ok(mut f) = self.gpu_failed.lock() {
                    *f = Some(format!(
                        "a GPU run failed, the CPU runs from now on: {}",
                        e.message()
                    ));
                }
            }
        }
        r
    }
}

#[cfg(feature = "webgpu")]
type GpuSessionRef<'a> = &'a crate::gpu::GpuSession;
#[cfg(not(feature = "webgpu"))]
type GpuSessionRef<'a> = &'a ();

impl Model {
    /// The GPU session, unless the model runs on the CPU or a GPU run failed before.
    fn gpu_session(&self) -> Option<GpuSessionRef<'_>> {
        #[cfg(feature = "webgpu")]
        {
            if self.gpu_failed.lock().map(|g| g.is_some()).unwrap_or(true) {
                return None;
            }
            self.gpu.as_ref()
        }
        #[cfg(not(feature = "webgpu"))]
        {
            None
        }
    }

    #[allow(unused_variables)]
    fn run_on_gpu(
        &self,
        s: GpuSessionRef<'_>,
        cx: &mut RunCx,
        bound: Vec<Option<Value>>,
    ) -> Result<Vec<Value>> {
        #[cfg(all(feature = "webgpu", not(target_arch = "wasm32")))]
        {
            let r = pollster::block_on(s.run(&self.graph, &self.plan, cx, bound));
            match r {
                Ok((outs, _stats)) => Ok(outs),
                Err(e) => {
                    if e.kind() == crate::ErrorKind::Device {
                        if let Ok(mut f) = self.gpu_failed.lock() {
                            *f = Some(format!(
                                "a GPU run failed, the CPU runs from now on: {}",
                                e.message()
                            ));
                        }
                    }
                    Err(e)
                }
            }
        }
        #[cfg(not(all(feature = "webgpu", not(target_arch = "wasm32"))))]
        {
            Err(Error::device(
                "GPU runs are asynchronous in the browser: use runAsync",
            ))
        }
    }
}

/// Sets up the requested backend: the GPU session when one is used, and what was
/// decided either way. Plan placements are updated to match.
#[allow(unused_variables, unused_mut)]
fn choose_backend(
    opts: &LoadOptions,
    g: &Graph,
    plan: &mut Plan,
) -> Result<(BackendInfo, Option<GpuSessionOwned>)> {
    let want = opts.backend;
    let nodes = g.node_count_deep();
    let cpu = |why: String| BackendInfo {
        active: "cpu",
        requested: want,
        adapter: None,
        fallback_reason: Some(why),
        gpu_nodes: 0,
        nodes,
    };
    if want == Backend::Cpu {
        return Ok((cpu("the CPU backend was requested".into()), None));
    }
    #[cfg(not(feature = "webgpu"))]
    {
        let why = "this build has no WebGPU backend".to_string();
        if want == Backend::WebGpu {
            return Err(Error::device(why));
        }
        Ok((cpu(why), None))
    }
    #[cfg(all(feature = "webgpu", target_arch = "wasm32"))]
    {
        let why = "WebGPU in wasm needs the async loader (loadAsync)".to_string();
        if want == Backend::WebGpu {
            return Err(Error::device(why));
        }
        Ok((cpu(why), None))
    }
    #[cfg(all(feature = "webgpu", not(target_arch = "wasm32")))]
    {
        let cx = match crate::gpu::device::shared() {
            Ok(cx) => cx,
            Err(why) => {
                if want == Backend::WebGpu {
                    return Err(Error::device(why.to_string()));
                }
                return Ok((cpu(why.to_string()), None));
            }
        };
        gpu_backend(opts, g, plan, cx)
    }
}

#[cfg(feature = "webgpu")]
type GpuSessionOwned = crate::gpu::GpuSession;
#[cfg(not(feature = "webgpu"))]
type GpuSessionOwned = ();

/// Places the graph on a context that came up and decides, for `auto`, whether to use it.
#[cfg(feature = "webgpu")]
pub(crate) fn gpu_backend(
    opts: &LoadOptions,
    g: &Graph,
    plan: &mut Plan,
    cx: std::sync::Arc<crate::gpu::GpuContext>,
) -> Result<(BackendInfo, Option<GpuSessionOwned>)> {
    use crate::plan::Placement;
    let want = opts.backend;
    if let Some(why) = cx.lost() {
        let why = format!("the GPU device was lost: {why}");
        if want == Backend::WebGpu {
            return Err(Error::device(why));
        }
        return Ok((
            BackendInfo {
                active: "cpu",
                requested: want,
                adapter: Some(cx.summary.to_string()),
                fallback_reason: Some(why),
                gpu_nodes: 0,
                nodes: g.node_count_deep(),
            },
            None,
        ));
    }
    let how = if opts.gpu_greedy {
        crate::gpu::Placement::Greedy
    } else {
        crate::gpu::Placement::Balanced
    };
    let session = crate::gpu::GpuSession::new(cx.clone(), g, how);
    // Bodies of If/Loop/Scan count: a control node on the GPU runs them there.
    let gpu_nodes = session.gpu_nodes();
    let mut info = BackendInfo {
        active: "webgpu",
        requested: want,
        adapter: Some(cx.summary.to_string()),
        fallback_reason: None,
        gpu_nodes,
        nodes: g.node_count_deep(),
    };
    if want == Backend::Auto {
        // Auto takes the GPU only where it should win: a real GPU, and every node that
        // computes on floats placed there (integer shape arithmetic may stay behind).
        let why = if cx.summary.device_type == "Cpu" {
            Some(format!(
                "the adapter is a software renderer ({}): the CPU path is faster",
                cx.summary.name
            ))
        } else {
            let left = session.cpu_float_ops(g);
            (!left.is_empty()).then(|| {
                format!(
                    "{} float node(s) have no GPU kernel ({})",
                    left.len(),
                    left.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                )
            })
        };
        if let Some(why) = why {
            info.active = "cpu";
            info.fallback_reason = Some(why);
            info.gpu_nodes = 0;
            return Ok((info, None));
        }
    }
    for (p, (k, why)) in plan
        .placement
        .iter_mut()
        .zip(session.plan.kernels.iter().zip(&session.plan.reasons))
    {
        *p = if k.is_some() {
            // "webgpu", or for If/Loop/Scan how much of their bodies runs there.
            (Placement::Gpu, why.clone())
        } else {
            (Placement::Cpu, why.clone())
        };
    }
    Ok((info, Some(session)))
}

/// Kernels are written not to panic; should one still do so (a bug), native callers get
/// a Runtime error instead of an unwinding panic. (wasm32 cannot unwind: there the rule
/// is simply that nothing panics, which the fuzz target and suites check.)
fn guard_panics<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(Error::runtime(format!(
                    "internal error (please report): {msg}"
                )))
            }
        }
    }
    #[cfg(target_arch = "wasm32")]
    {
        f()
    }
}

/// Checks a value against its declared input: kind, dtype, rank, fixed dims, and that a
/// symbolic dim has the same size everywhere it appears.
fn check_input(info: &IoInfo, v: &Value, syms: &mut HashMap<String, usize>) -> Result<()> {
    let f = &info.fact;
    let t = match (f.kind, v) {
        (ValueKind::Tensor, Value::Tensor(t)) => t,
        (ValueKind::Tensor, _) => {
            return Err(Error::input(format!(
                "input '{}' must be a tensor",
                info.name
            )))
        }
        _ => return Ok(()),
    };
    if let Some(dt) = f.dtype {
        if t.dtype() != dt {
            return Err(Error::input(format!(
                "input '{}' must be {dt}, got {}",
                info.name,
                t.dtype()
            )));
        }
    }
    if let Some(shape) = &f.shape {
        if shape.len() != t.rank() {
            return Err(Error::input(format!(
                "input '{}' must have rank {} (shape {}), got shape {:?}",
                info.name,
                shape.len(),
                f.shape_string(),
                t.shape()
            )));
        }
        for (k, (d, &actual)) in shape.iter().zip(t.shape()).enumerate() {
            match d {
                Dim::Known(n) if *n != actual => {
                    return Err(Error::input(format!(
                        "input '{}' dim {k} must be {n}, got {actual} (shape {:?})",
                        info.name,
                        t.shape()
                    )))
                }
                Dim::Sym(s) => {
                    let e = syms.entry(s.clone()).or_insert(actual);
                    if *e != actual {
                        return Err(Error::input(format!(
                            "input '{}' dim {k} is '{s}', which another input set to {e}, got {actual}",
                            info.name
                        )));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}
