//! The WebGPU backend (wgpu): Vulkan/GL natively, the browser's WebGPU in wasm.
//!
//! The same graph and plan as the CPU path. At load, [`place`] asks each op family
//! (one file each, WGSL next to its pipeline code) for a [`Kernel`] for every node; a
//! node no family claims stays on the CPU with the reason recorded. At run time,
//! [`run`] walks the node order: GPU nodes append dispatches to one command encoder,
//! CPU nodes read their inputs back first (the only reason to submit before the end),
//! and values move between the two only where a consumer needs them. Output shapes come
//! from the ops' own shape rules evaluated on the concrete input shapes, so kernels and
//! the CPU agree on them by construction.

mod attention;
mod control;
mod conv;
pub mod device;
mod elementwise;
mod indexing;
mod layout;
mod loss;
mod matmul;
mod norm;
mod pool;
mod qconv;
mod qgemm;
mod qnbits;
mod qtile;
mod quant;
pub mod record;
mod reduce;
mod resize;
mod rnn;
mod sample;
mod signal;
pub mod tensor;
#[cfg(target_arch = "wasm32")]
mod web;

pub use device::{AdapterSummary, GpuContext, Unavailable};
pub use record::Recorder;
pub use tensor::{GpuTensor, Storage};

use crate::error::{Error, Result};
use crate::graph::{Fact, Graph, InferCx, Node, RunCx, Value, ValueId};
use crate::plan::Plan;
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// One kernel input, where the kernel wants it.
pub enum In<'a> {
    Dev(&'a GpuTensor),
    /// Inputs listed by [`Kernel::host_inputs`] (shapes, axes, pads…).
    Host(&'a Tensor),
    /// An optional input the model leaves out.
    Absent,
}

impl<'a> In<'a> {
    pub fn dev(&self) -> Result<&'a GpuTensor> {
        match self {
            In::Dev(t) => Ok(t),
            _ => Err(Error::runtime("expected a GPU tensor input")),
        }
    }
    pub fn host(&self) -> Option<&'a Tensor> {
        match self {
            In::Host(t) => Some(t),
            _ => None,
        }
    }
}

/// One kernel output: a GPU tensor, or a host value for metadata ops (Shape, Size)
/// that read only shapes.
pub enum Out {
    Dev(GpuTensor),
    Host(Value),
}

/// The GPU form of one node, made at load by an op family.
pub trait Kernel: Send + Sync + fmt::Debug {
    /// Inputs read on the host (by index); the others arrive as GPU tensors.
    fn host_inputs(&self) -> &[usize] {
        &[]
    }
    /// True for kernels that only move or relabel data (views, copies, gathers, shape
    /// reads): worth running on the GPU only when their input is already there.
    fn moves_only(&self) -> bool {
        false
    }
    /// True for kernels that round float16/bfloat16 outputs themselves. The others
    /// compute in f32 and the executor rounds their narrow float outputs after them, so
    /// every stored value is one the narrow type can hold.
    fn rounds_outputs(&self) -> bool {
        false
    }
    /// True for If/Loop/Scan: the executor runs their bodies itself, on the GPU.
    fn is_control(&self) -> bool {
        false
    }
    /// Records the node's work. `outs` are the output dtypes and shapes from the op's
    /// shape rule on the concrete inputs.
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>>;
}

/// What an op family says about a node at load.
pub enum Lowered {
    /// Not an op of this family.
    NotMine,
    Kernel(Box<dyn Kernel>),
    /// This family's op, but this instance stays on the CPU, because…
    Cpu(String),
}

/// The load-time facts of a node.
pub struct NodeFacts<'a> {
    pub node: &'a Node,
    pub ins: Vec<Option<&'a Fact>>,
    pub outs: Vec<Option<&'a Fact>>,
    /// Constant inputs (initializers and folded values).
    pub consts: Vec<Option<&'a Tensor>>,
}

impl<'a> NodeFacts<'a> {
    pub fn in_dtype(&self, i: usize) -> Option<DType> {
        self.ins.get(i).copied().flatten().and_then(|f| f.dtype)
    }
    pub fn out_dtype(&self, i: usize) -> Option<DType> {
        self.outs.get(i).copied().flatten().and_then(|f| f.dtype)
    }
    pub fn in_rank(&self, i: usize) -> Option<usize> {
        self.ins.get(i).copied().flatten().and_then(|f| f.rank())
    }
    pub fn out_rank(&self, i: usize) -> Option<usize> {
        self.outs.get(i).copied().flatten().and_then(|f| f.rank())
    }
    pub fn has_input(&self, i: usize) -> bool {
        self.ins.get(i).copied().flatten().is_some()
    }
    /// True when every present input is a float the GPU computes in f32 (see
    /// [`gpu_float`]).
    pub fn float_inputs(&self) -> bool {
        (0..self.ins.len()).all(|i| !self.has_input(i) || gpu_float(self.in_dtype(i)))
    }
}

/// Floats that float kernels take: f32; float16/bfloat16 widened to f32 in storage,
/// computed in f32 and rounded back at each output; float64 held and computed as f32
/// (Balanced placement keeps it on the CPU, see [`place`]).
pub fn gpu_float(dt: Option<DType>) -> bool {
    matches!(dt, Some(DType::F32 | DType::F16 | DType::BF16 | DType::F64))
}

/// Each node's kernel (None: CPU) and the reason for its placement.
#[derive(Debug, Default)]
pub struct GpuPlan {
    pub kernels: Vec<Option<Box<dyn Kernel>>>,
    pub reasons: Vec<String>,
}

impl GpuPlan {
    pub fn gpu_nodes(&self) -> usize {
        self.kernels.iter().filter(|k| k.is_some()).count()
    }
    /// Op types left on the CPU that do real work (not shape arithmetic), with counts.
    pub fn cpu_ops(&self, g: &Graph) -> Vec<(String, usize)> {
        let mut m: std::collections::BTreeMap<String, usize> = Default::default();
        for (n, k) in g.nodes.iter().zip(&self.kernels) {
            if k.is_none() {
                *m.entry(n.op_type.clone()).or_default() += 1;
            }
        }
        m.into_iter().collect()
    }
}

type Family = fn(&NodeFacts, &GpuContext) -> Lowered;
const FAMILIES: &[Family] = &[
    elementwise::lower,
    matmul::lower,
    layout::lower,
    reduce::lower,
    norm::lower,
    conv::lower,
    pool::lower,
    resize::lower,
    sample::lower,
    control::lower,
    quant::lower,
    qconv::lower,
    qgemm::lower,
    qnbits::lower,
    indexing::lower,
    loss::lower,
    attention::lower,
    signal::lower,
    rnn::lower,
];

/// How eagerly nodes go to the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Every node with a GPU kernel, wherever its inputs are (measures kernel coverage:
    /// the GPU conformance run uses it).
    Greedy,
    /// Also keeps on the CPU what would only cost transfers: data movement and integer
    /// (shape) arithmetic whose inputs are all on the CPU.
    #[default]
    Balanced,
}

/// Decides, for every node, whether it runs on the GPU.
pub fn place(g: &Graph, cx: &GpuContext, how: Placement) -> GpuPlan {
    let mut plan = GpuPlan::default();
    // Where each value will live: true once a GPU node makes it.
    let mut on_gpu = vec![false; g.values.len()];
    for n in &g.nodes {
        let facts = NodeFacts {
            node: n,
            ins: n
                .inputs
                .iter()
                .map(|i| i.map(|id| &g.values[id].fact))
                .collect(),
            outs: n
                .outputs
                .iter()
                .map(|o| o.map(|id| &g.values[id].fact))
                .collect(),
            consts: n
                .inputs
                .iter()
                .map(|i| i.and_then(|id| g.const_tensor(id)))
                .collect(),
        };
        let mut found = None;
        let tensors_only = facts
            .ins
            .iter()
            .chain(&facts.outs)
            .flatten()
            .all(|f| f.kind == crate::graph::shape::ValueKind::Tensor);
        if !tensors_only {
            found = Some(Err("sequences and optionals stay on the CPU".to_string()));
        }
        for fam in FAMILIES.iter().filter(|_| tensors_only) {
            match fam(&facts, cx) {
                Lowered::NotMine => continue,
                Lowered::Kernel(k) => found = Some(Ok(k)),
                Lowered::Cpu(why) => found = Some(Err(why)),
            }
            break;
        }
        if let (Some(Ok(_)), Placement::Balanced) = (&found, how) {
            let f64_value = n
                .inputs
                .iter()
                .chain(&n.outputs)
                .flatten()
                .any(|&v| g.values[v].fact.dtype == Some(DType::F64));
            if f64_value {
                found = Some(Err(
                    "float64 runs in float32 precision on the GPU; the CPU keeps float64".into(),
                ));
            }
        }
        if let (Some(Ok(k)), Placement::Balanced) = (&found, how) {
            let host = k.host_inputs();
            let data: Vec<usize> = n
                .inputs
                .iter()
                .enumerate()
                .filter(|(j, _)| !host.contains(j))
                .filter_map(|(_, i)| *i)
                .filter(|&id| g.consts[id].is_none())
                .collect();
            let float_out = n
                .outputs
                .iter()
                .flatten()
                .any(|&o| g.values[o].fact.dtype.is_some_and(|d| d.is_float()));
            // Quantized tensors are real work, not shape arithmetic.
            let eight_bit = n
                .inputs
                .iter()
                .chain(&n.outputs)
                .flatten()
                .any(|&v| matches!(g.values[v].fact.dtype, Some(DType::U8 | DType::I8)));
            let inputs_on_cpu = !data.iter().any(|&id| on_gpu[id]);
            if inputs_on_cpu && (k.moves_only() || !(float_out || eight_bit)) {
                found = Some(Err(if k.moves_only() {
                    "its input is on the CPU: moving it there costs more than the op".into()
                } else {
                    "integer (shape) arithmetic on CPU values stays on the CPU".into()
                }));
            }
        }
        match found {
            Some(Ok(k)) => {
                for &o in n.outputs.iter().flatten() {
                    on_gpu[o] = true;
                }
                plan.kernels.push(Some(k));
                plan.reasons.push("webgpu".into());
            }
            Some(Err(why)) => {
                plan.kernels.push(None);
                plan.reasons.push(why);
            }
            None => {
                plan.kernels.push(None);
                plan.reasons
                    .push(format!("no GPU kernel for {}", n.op_type));
            }
        }
    }
    plan
}

/// A value during a GPU run: on the host, on the GPU, or both.
#[derive(Default, Clone)]
pub(crate) struct Slot {
    host: Option<Value>,
    dev: Option<GpuTensor>,
}

/// Per-model GPU state kept between runs: the placement and the constants already
/// uploaded.
#[derive(Debug)]
pub struct GpuSession {
    pub cx: Arc<GpuContext>,
    pub plan: GpuPlan,
    consts: Mutex<HashMap<ValueId, GpuTensor>>,
    last: Mutex<Option<RunStats>>,
    /// The bodies of the control-flow nodes this executor runs (If: then and else;
    /// Loop, Scan: the body), by node index, each with its own placement and schedule.
    bodies: HashMap<usize, Vec<(GpuSession, Plan)>>,
}

/// What one GPU run did, for `bench` and tests.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub submissions: usize,
    pub uploaded: u64,
    pub downloaded: u64,
}

impl GpuSession {
    pub fn new(cx: Arc<GpuContext>, g: &Graph, how: Placement) -> GpuSession {
        let mut plan = place(g, &cx, how);
        let mut bodies = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            if plan.kernels[i].as_ref().is_some_and(|k| k.is_control()) {
                let subs: Vec<(GpuSession, Plan)> =
                    n.op.subgraphs()
                        .into_iter()
                        .map(|sg| (GpuSession::new(cx.clone(), sg, how), Plan::new(sg)))
                        .collect();
                let (on, all) = subs
                    .iter()
                    .fold((0, 0), |(a, b), (s, _)| (a + s.gpu_nodes(), b + s.nodes()));
                let mut why = format!("webgpu ({on} of {all} body nodes on the GPU");
                for ((s, _), sg) in subs.iter().zip(n.op.subgraphs()) {
                    for (bn, r) in sg.nodes.iter().zip(&s.plan.reasons) {
                        if !r.starts_with("webgpu") {
                            why.push_str(&format!("; {}: {r}", bn.op_type));
                        }
                    }
                }
                why.push(')');
                plan.reasons[i] = why;
                bodies.insert(i, subs);
            }
        }
        GpuSession {
            cx,
            plan,
            consts: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
            bodies,
        }
    }

    /// Nodes placed on the GPU, counting the nodes of bodies run on the GPU.
    pub fn gpu_nodes(&self) -> usize {
        self.plan.gpu_nodes()
            + self
                .bodies
                .values()
                .flatten()
                .map(|(s, _)| s.gpu_nodes())
                .sum::<usize>()
    }

    /// Nodes in the placed graph and in the bodies this executor runs.
    fn nodes(&self) -> usize {
        self.plan.kernels.len()
            + self
                .bodies
                .values()
                .flatten()
                .map(|(s, _)| s.nodes())
                .sum::<usize>()
    }

    /// Op types of nodes that compute floats yet stay on the CPU, bodies included.
    pub fn cpu_float_ops(&self, g: &Graph) -> Vec<String> {
        let mut left = Vec::new();
        for (i, (n, k)) in g.nodes.iter().zip(&self.plan.kernels).enumerate() {
            let float = n
                .outputs
                .iter()
                .flatten()
                .any(|&o| g.values[o].fact.dtype.is_some_and(|d| d.is_float()));
            if k.is_none() && float {
                left.push(n.op_type.clone());
            }
            if let Some(subs) = self.bodies.get(&i) {
                for ((s, _), sg) in subs.iter().zip(n.op.subgraphs()) {
                    left.extend(s.cpu_float_ops(sg));
                }
            }
        }
        left
    }

    /// What the last completed run did (submissions, bytes moved).
    pub fn last_run(&self) -> Option<RunStats> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Runs the top-level graph. If/Loop/Scan placed on the GPU run their bodies here
    /// too (see `control.rs`); the others run on the CPU.
    pub async fn run(
        &self,
        g: &Graph,
        plan: &Plan,
        cx: &mut RunCx<'_>,
        inputs: Vec<Option<Value>>,
    ) -> Result<(Vec<Value>, RunStats)> {
        if let Some(why) = self.cx.lost() {
            return Err(Error::device(format!("the GPU device was lost: {why}")));
        }
        // Stale errors from an earlier failed run must not be blamed on this one.
        self.cx.take_uncaptured();
        let mut r = Recorder::new(&self.cx);
        let inputs = inputs
            .into_iter()
            .map(|v| {
                v.map(|v| Slot {
                    host: Some(v),
                    dev: None,
                })
            })
            .collect();
        let mut vals = self
            .run_slots(g, plan, cx, inputs, Vec::new(), &mut r)
            .await?;
        // Graph outputs still on the GPU come back in one submission.
        let ids: Vec<usize> = (0..vals.len())
            .filter(|&k| vals[k].host.is_none())
            .collect();
        download_into(&mut vals, &ids, &mut r).await?;
        let outs = vals
            .iter_mut()
            .zip(&g.outputs)
            .map(|(v, &id)| {
                v.host.take().ok_or_else(|| {
                    Error::runtime(format!(
                        "graph output '{}' was not computed",
                        g.value_name(id)
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Values freed during the run go to the shared pool now that the GPU is done.
        drop(vals);
        r.finish();
        let stats = RunStats {
            submissions: r.submissions,
            uploaded: r.uploaded,
            downloaded: r.downloaded,
        };
        if let Ok(mut l) = self.last.lock() {
            *l = Some(stats.clone());
        }
        Ok((outs, stats))
    }

    /// Runs `g` (the top-level graph or a body) on the recorder `r`, from input and
    /// captured values wherever they are; the outputs stay where they were made.
    pub(crate) fn run_slots<'a, 'b: 'a, 'c: 'a>(
        &'a self,
        g: &'a Graph,
        plan: &'a Plan,
        cx: &'a mut RunCx<'b>,
        inputs: Vec<Option<Slot>>,
        captures: Vec<(String, Slot)>,
        r: &'a mut Recorder<'c>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Slot>>> + 'a>> {
        Box::pin(async move {
            if cx.depth > cx.options.max_depth {
                return Err(Error::runtime("subgraphs nested too deeply at run time"));
            }
            let mut vals: Vec<Slot> = g
                .consts
                .iter()
                .map(|c| Slot {
                    host: c.clone(),
                    dev: None,
                })
                .collect();
            for (k, &id) in g.inputs.iter().enumerate() {
                match inputs.get(k).cloned().flatten() {
                    Some(v) => vals[id] = v,
                    None if vals[id].host.is_some() => {}
                    None => {
                        return Err(Error::input(format!(
                            "missing input '{}'",
                            g.value_name(id)
                        )))
                    }
                }
            }
            for (id, name) in &g.captures {
                vals[*id] = captures
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        Error::runtime(format!("outer value '{name}' is not available"))
                    })?;
            }
            if let Ok(cache) = self.consts.lock() {
                for (&id, t) in cache.iter() {
                    vals[id].dev = Some(t.clone());
                }
            }
            for (i, node) in g.nodes.iter().enumerate() {
                let gpu = match (&self.plan.kernels[i], self.bodies.get(&i)) {
                    (Some(_), Some(bodies)) => Some(
                        control::run(bodies, g, node, cx, &mut vals, r)
                            .await
                            .map_err(|e| e.at_node(&node.name, &node.op_type))?,
                    ),
                    (Some(k), None) => self
                        .run_gpu_node(g, node, k.as_ref(), &mut vals, r)
                        .await
                        .map_err(|e| e.at_node(&node.name, &node.op_type))?,
                    (None, _) => None,
                };
                let outs: Vec<Slot> = match gpu {
                    Some(outs) => {
                        if check_mode() {
                            self.check_node(g, node, cx, &mut vals, &outs, r)
                                .await
                                .map_err(|e| e.at_node(&node.name, &node.op_type))?;
                        }
                        outs
                    }
                    // No kernel, or a tensor over the GPU's binding limit.
                    None => run_cpu_node(g, node, cx, &mut vals, r)
                        .await?
                        .into_iter()
                        .map(|v| Slot {
                            host: Some(v),
                            dev: None,
                        })
                        .collect(),
                };
                for (k, o) in node.outputs.iter().enumerate() {
                    if let Some(id) = o {
                        let s = outs.get(k).cloned().ok_or_else(|| {
                            Error::runtime(format!(
                                "produced {} outputs, the model reads output {k}",
                                outs.len()
                            ))
                            .at_node(&node.name, &node.op_type)
                        })?;
                        vals[*id] = s;
                    }
                }
                for &id in node.inputs.iter().flatten().chain(&node.implicit_inputs) {
                    if plan.last_use[id] == Some(i) && g.consts[id].is_none() {
                        vals[id] = Slot::default();
                    }
                }
            }
            g.outputs
                .iter()
                .map(|&id| {
                    let v = vals[id].clone();
                    if v.host.is_none() && v.dev.is_none() {
                        return Err(Error::runtime(format!(
                            "graph output '{}' was not computed",
                            g.value_name(id)
                        )));
                    }
                    Ok(v)
                })
                .collect()
        })
    }

    async fn run_gpu_node(
        &self,
        g: &Graph,
        node: &Node,
        k: &dyn Kernel,
        vals: &mut [Slot],
        r: &mut Recorder<'_>,
    ) -> Result<Option<Vec<Slot>>> {
        let host_idx = k.host_inputs();
        // Host inputs first: a readback submits, and must come before this node's work.
        let mut need_down: Vec<ValueId> = Vec::new();
        for (j, inp) in node.inputs.iter().enumerate() {
            if let Some(id) = inp {
                if host_idx.contains(&j) && vals[*id].host.is_none() {
                    need_down.push(*id);
                }
            }
        }
        download_into(vals, &need_down, r).await?;
        // A data input over the binding limit cannot be bound: this node runs on the CPU.
        for (j, inp) in node.inputs.iter().enumerate() {
            if let Some(id) = *inp {
                if !host_idx.contains(&j) && vals[id].dev.is_none() {
                    if let Some(Ok(t)) = vals[id].host.as_ref().map(|v| v.tensor()) {
                        if tensor::buffer_bytes(t.len()) > self.cx.max_binding {
                            return Ok(None);
                        }
                    }
                }
            }
        }
        for (j, inp) in node.inputs.iter().enumerate() {
            if let Some(id) = *inp {
                if !host_idx.contains(&j) && vals[id].dev.is_none() {
                    let t = vals[id]
                        .host
                        .as_ref()
                        .ok_or_else(|| {
                            Error::runtime(format!("value '{}' was not computed", g.value_name(id)))
                        })?
                        .tensor()?;
                    let d = r.upload(t)?;
                    if g.consts[id].is_some() {
                        if let Ok(mut c) = self.consts.lock() {
                            c.insert(id, d.clone());
                        }
                    }
                    vals[id].dev = Some(d);
                }
            }
        }
        // Concrete facts for the op's shape rule: shapes of every input, values of host
        // inputs (Reshape's shape, Slice's starts…).
        let facts: Vec<Fact> = node
            .inputs
            .iter()
            .enumerate()
            .map(|(j, inp)| match inp {
                None => Fact::absent(),
                Some(id) => {
                    let s = &vals[*id];
                    match (&s.host, &s.dev) {
                        (Some(v), _) if host_idx.contains(&j) || s.dev.is_none() => {
                            Fact::from_value(v)
                        }
                        (_, Some(t)) => Fact::known(t.dtype, &t.shape),
                        (Some(v), None) => Fact::from_value(v),
                        (None, None) => Fact::unknown(),
                    }
                }
            })
            .collect();
        let out_facts = node.op.infer(&InferCx {
            inputs: &facts,
            opset: node.opset,
        })?;
        let mut outs = Vec::with_capacity(out_facts.len());
        for f in &out_facts {
            let shape = f.concrete_shape().ok_or_else(|| {
                Error::runtime("output shape unknown at run time on the GPU path")
            })?;
            let dt = f
                .dtype
                .ok_or_else(|| Error::runtime("output dtype unknown on the GPU path"))?;
            let n = crate::tensor::numel(&shape, dt)?;
            if tensor::buffer_bytes(n) > self.cx.max_binding {
                return Ok(None);
            }
            outs.push((dt, shape));
        }
        let ins: Vec<In> = node
            .inputs
            .iter()
            .enumerate()
            .map(|(j, inp)| match inp {
                None => In::Absent,
                Some(id) if host_idx.contains(&j) => match vals[*id].host.as_ref() {
                    Some(v) => v.tensor().map(In::Host).unwrap_or(In::Absent),
                    None => In::Absent,
                },
                Some(id) => vals[*id].dev.as_ref().map_or(In::Absent, In::Dev),
            })
            .collect();
        let produced = k.encode(r, &ins, &outs)?;
        if !k.moves_only() && !k.rounds_outputs() {
            for o in &produced {
                if let Out::Dev(t) = o {
                    if matches!(t.dtype, DType::F16 | DType::BF16) {
                        elementwise::round_narrow(r, t)?;
                    }
                }
            }
        }
        Ok(Some(
            produced
                .into_iter()
                .map(|o| match o {
                    Out::Dev(t) => Slot {
                        host: None,
                        dev: Some(t),
                    },
                    Out::Host(v) => Slot {
                        host: Some(v),
                        dev: None,
                    },
                })
                .collect(),
        ))
    }
}

/// `EDGEPREDICT_GPU_CHECK=1` (native): every GPU node's outputs are read back and
/// compared with the CPU kernel on the same inputs; the first disagreement is an error
/// naming the node. Slow; for finding a kernel bug in a real model.
fn check_mode() -> bool {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var_os("EDGEPREDICT_GPU_CHECK").is_some_and(|v| v != "0"))
    }
    #[cfg(target_arch = "wasm32")]
    {
        false
    }
}

/// Runs one node's CPU kernel, reading back its inputs that only the GPU has.
async fn run_cpu_node(
    g: &Graph,
    node: &Node,
    cx: &mut RunCx<'_>,
    vals: &mut [Slot],
    r: &mut Recorder<'_>,
) -> Result<Vec<Value>> {
    let host = fetch_host(g, node, vals, r).await?;
    let args_in: Vec<Option<&Value>> = host.iter().map(|v| v.as_ref()).collect();
    let mut implicit: Vec<(&str, &Value)> = Vec::new();
    for &id in &node.implicit_inputs {
        let v = vals[id].host.as_ref().ok_or_else(|| {
            Error::runtime(format!("value '{}' was not computed", g.value_name(id)))
        })?;
        implicit.push((g.value_name(id), v));
    }
    let args = crate::graph::Args {
        inputs: &args_in,
        implicit: &implicit,
    };
    node.op
        .run(cx, &args)
        .map_err(|e| e.at_node(&node.name, &node.op_type))
}

impl GpuSession {
    async fn check_node(
        &self,
        g: &Graph,
        node: &Node,
        cx: &mut RunCx<'_>,
        vals: &mut [Slot],
        outs: &[Slot],
        r: &mut Recorder<'_>,
    ) -> Result<()> {
        let want = run_cpu_node(g, node, cx, vals, r).await?;
        for (k, (o, w)) in outs.iter().zip(&want).enumerate() {
            let got = match (&o.host, &o.dev) {
                (Some(v), _) => v.tensor()?.clone(),
                (None, Some(t)) => r.download(&[t]).await?.remove(0),
                (None, None) => continue,
            };
            let w = w.tensor()?;
            if got.shape() != w.shape() || got.dtype() != w.dtype() {
                return Err(Error::runtime(format!(
                    "GPU check: output {k} is {}{:?}, the CPU gives {}{:?}",
                    got.dtype(),
                    got.shape(),
                    w.dtype(),
                    w.shape()
                )));
            }
            let (a, b) = (got.to_f64_vec()?, w.to_f64_vec()?);
            let tol = if w.dtype().is_float() { 1e-3 } else { 0.0 };
            let bad = a.iter().zip(&b).position(|(x, y)| {
                let d = (x - y).abs();
                !(d <= tol * (1.0 + y.abs()) || (x.is_nan() && y.is_nan()))
            });
            if let Some(p) = bad {
                return Err(Error::runtime(format!(
                    "GPU check: output {k} element {p} is {} on the GPU, {} on the CPU ({}{:?})",
                    a[p],
                    b[p],
                    w.dtype(),
                    w.shape()
                )));
            }
        }
        Ok(())
    }
}

/// Brings the listed values back to the host, in one submission.
async fn download_into(vals: &mut [Slot], ids: &[ValueId], r: &mut Recorder<'_>) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut pairs: Vec<(ValueId, GpuTensor)> = Vec::new();
    for &id in ids {
        if let Some(t) = &vals[id].dev {
            if !pairs.iter().any(|(p, _)| *p == id) {
                pairs.push((id, t.clone()));
            }
        }
    }
    let refs: Vec<&GpuTensor> = pairs.iter().map(|(_, t)| t).collect();
    let got = r.download(&refs).await?;
    for ((id, _), t) in pairs.iter().zip(got) {
        let id = *id;
        vals[id].host = Some(Value::from(t));
    }
    Ok(())
}

/// The host values of a CPU node's inputs, reading back what only the GPU has.
async fn fetch_host(
    g: &Graph,
    node: &Node,
    vals: &mut [Slot],
    r: &mut Recorder<'_>,
) -> Result<Vec<Option<Value>>> {
    let need: Vec<ValueId> = node
        .inputs
        .iter()
        .flatten()
        .chain(&node.implicit_inputs)
        .copied()
        .filter(|&id| vals[id].host.is_none() && vals[id].dev.is_some())
        .collect();
    download_into(vals, &need, r).await?;
    node.inputs
        .iter()
        .map(|inp| match inp {
            None => Ok(None),
            Some(id) => vals[*id].host.clone().map(Some).ok_or_else(|| {
                Error::runtime(format!("value '{}' was not computed", g.value_name(*id)))
                    .at_node(&node.name, &node.op_type)
            }),
        })
        .collect()
}
