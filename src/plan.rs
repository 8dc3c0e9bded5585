//! The schedule and its executor.
//!
//! A [`Plan`] fixes, for one graph: the node order, where each node runs (and why), when
//! each value dies (its last reader), and which buffer slot it can reuse from values that
//! died before it was made (greedy interval colouring by lifetime). `Plan`'s `Display`
//! prints all of it. The executor walks the order, drops each value after its last reader
//! and recycles f32 buffers through a pool keyed by slot.

use crate::error::{Error, Result};
use crate::graph::{Args, Graph, RunCx, Value};
use std::collections::HashMap;
use std::fmt;

/// Knobs for one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Largest tensor, in bytes, that a kernel may allocate.
    pub memory_budget: usize,
    /// Largest subgraph nesting (If inside Loop inside …) executed.
    pub max_depth: u32,
    /// Upper bound on Loop trip counts, so a hostile model cannot spin forever.
    pub max_loop_iterations: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            memory_budget: crate::tensor::DEFAULT_BUDGET,
            max_depth: 64,
            max_loop_iterations: 10_000_000,
        }
    }
}

/// Wall time of one node in a profiled run (`Model::run_profiled`).
#[derive(Debug, Clone)]
pub struct NodeTime {
    /// Index in the optimized graph's node order.
    pub index: usize,
    pub op_type: String,
    pub name: String,
    pub ms: f64,
    /// Output shapes and types, e.g. `u8[1,64,24,160]`, so a hotspot can be told apart
    /// from its siblings.
    pub outputs: String,
}

/// Milliseconds from an arbitrary origin: `performance.now()` in wasm32 (std has no
/// clock there), a monotonic `Instant` natively.
pub fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static T0: OnceLock<std::time::Instant> = OnceLock::new();
        T0.get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs_f64()
            * 1e3
    }
}

#[cfg(target_arch = "wasm32")]
mod js {
    use wasm_bindgen::prelude::*;
    #[wasm_bindgen]
    extern "C" {
        #[wasm_bindgen(js_namespace = performance)]
        pub fn now() -> f64;
    }
}

/// Where a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    /// WebGPU (wgpu), decided by `gpu::place` when the model loads with a GPU backend.
    Gpu,
}

/// The schedule of one graph.
#[derive(Debug, Clone)]
pub struct Plan {
    /// For each value: index of the last node that reads it (None: never read, or a
    /// graph output, which lives to the end).
    pub last_use: Vec<Option<usize>>,
    /// For each node: where it runs and why.
    pub placement: Vec<(Placement, String)>,
    /// For each value produced by a node: the buffer slot it is assigned.
    pub slot: Vec<Option<usize>>,
    pub n_slots: usize,
}

impl Plan {
    pub fn new(g: &Graph) -> Plan {
        let nv = g.values.len();
        let mut last_use = vec![None; nv];
        for (i, n) in g.nodes.iter().enumerate() {
            for &v in n.inputs.iter().flatten().chain(&n.implicit_inputs) {
                last_use[v] = Some(i);
            }
        }
        for &o in &g.outputs {
            last_use[o] = None;
        }
        // Greedy slot assignment by lifetime: a value produced at node i can take the slot
        // of any value whose last use is before i.
        let mut slot = vec![None; nv];
        let mut free: Vec<usize> = Vec::new();
        let mut n_slots = 0;
        let mut dying: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            for &o in n.outputs.iter().flatten() {
                let s = free.pop().unwrap_or_else(|| {
                    n_slots += 1;
                    n_slots - 1
                });
                slot[o] = Some(s);
                match last_use[o] {
                    Some(l) => dying.entry(l).or_default().push(s),
                    None if g.outputs.contains(&o) => {}
                    // Produced but never read: free right after its producer.
                    None => dying.entry(i).or_default().push(s),
                }
            }
            if let Some(ss) = dying.remove(&i) {
                free.extend(ss);
            }
        }
        let placement = g
            .nodes
            .iter()
            .map(|_| (Placement::Cpu, "CPU backend".to_string()))
            .collect();
        Plan {
            last_use,
            placement,
            slot,
            n_slots,
        }
    }

    /// Prints the schedule of `g` (node order, placement, value lifetimes, slots).
    pub fn describe(&self, g: &Graph) -> String {
        PlanDisplay { plan: self, g }.to_string()
    }
}

struct PlanDisplay<'a> {
    plan: &'a Plan,
    g: &'a Graph,
}

impl fmt::Display for PlanDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let produced = self
            .g
            .nodes
            .iter()
            .map(|n| n.outputs.iter().flatten().count())
            .sum::<usize>();
        writeln!(
            f,
            "plan: {} nodes, {} produced values in {} buffer slots",
            self.g.nodes.len(),
            produced,
            self.plan.n_slots
        )?;
        for (i, n) in self.g.nodes.iter().enumerate() {
            let (place, why) = &self.plan.placement[i];
            let outs: Vec<String> = n
                .outputs
                .iter()
                .flatten()
                .map(|&o| {
                    let life = match self.plan.last_use[o] {
                        Some(l) => format!("dies@{l}"),
                        None => "output".into(),
                    };
                    format!(
                        "{}:{} slot{} {}",
                        self.g.value_name(o),
                        self.g.values[o].fact,
                        self.plan.slot[o].map_or("-".into(), |s| s.to_string()),
                        life
                    )
                })
                .collect();
            writeln!(
                f,
                "{i:4} {:<20} {:?} ({why}) -> {}",
                n.op_type,
                place,
                outs.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Runs a graph on the CPU. `inputs` bind the graph's inputs in order (None = use the
/// input's default initializer); `implicit` gives the values of outer-scope captures.
pub fn run_graph(
    g: &Graph,
    plan: &Plan,
    cx: &mut RunCx,
    inputs: Vec<Option<Value>>,
    implicit: &[(&str, &Value)],
) -> Result<Vec<Value>> {
    if cx.depth > cx.options.max_depth {
        return Err(Error::runtime("subgraphs nested too deeply at run time"));
    }
    let mut vals: Vec<Option<Value>> = g.consts.clone();
    for (k, &id) in g.inputs.iter().enumerate() {
        match inputs.get(k).cloned().flatten() {
            Some(v) => vals[id] = Some(v),
            None if vals[id].is_some() => {}
            None => {
                return Err(Error::input(format!(
                    "missing input '{}'",
                    g.value_name(id)
                )))
            }
        }
    }
    for (id, name) in &g.captures {
        let v = implicit
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| (*v).clone())
            .ok_or_else(|| Error::runtime(format!("outer value '{name}' is not available")))?;
        vals[*id] = Some(v);
    }
    for (i, node) in g.nodes.iter().enumerate() {
        let outs = {
            let mut args_in: Vec<Option<&Value>> = Vec::with_capacity(node.inputs.len());
            for inp in &node.inputs {
                match inp {
                    None => args_in.push(None),
                    Some(id) => match &vals[*id] {
                        Some(v) => args_in.push(Some(v)),
                        None => {
                            return Err(Error::runtime(format!(
                                "value '{}' was not computed",
                                g.value_name(*id)
                            ))
                            .at_node(&node.name, &node.op_type))
                        }
                    },
                }
            }
            let mut implicit_args: Vec<(&str, &Value)> =
                Vec::with_capacity(node.implicit_inputs.len());
            for &id in &node.implicit_inputs {
                let v = vals[id].as_ref().ok_or_else(|| {
                    Error::runtime(format!("value '{}' was not computed", g.value_name(id)))
                        .at_node(&node.name, &node.op_type)
                })?;
                implicit_args.push((g.value_name(id), v));
            }
            let args = Args {
                inputs: &args_in,
                implicit: &implicit_args,
            };
            let t0 = cx.profile.as_ref().map(|_| now_ms());
            let outs = node
                .op
                .run(cx, &args)
                .map_err(|e| e.at_node(&node.name, &node.op_type))?;
            if let (Some(t0), Some(prof)) = (t0, cx.profile.as_mut()) {
                let ms = now_ms() - t0;
                let outputs = outs
                    .iter()
                    .map(|v| match v {
                        Value::Tensor(t) => format!("{}{:?}", t.dtype(), t.shape()),
                        _ => "non-tensor".to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                prof.push(NodeTime {
                    index: i,
                    op_type: node.op_type.clone(),
                    name: node.name.clone(),
                    ms,
                    outputs,
                });
            }
            outs
        };
        for (k, o) in node.outputs.iter().enumerate() {
            if let Some(id) = o {
                let v = outs.get(k).cloned().ok_or_else(|| {
                    Error::runtime(format!(
                        "produced {} outputs, the model reads output {k}",
                        outs.len()
                    ))
                    .at_node(&node.name, &node.op_type)
                })?;
                vals[*id] = Some(v);
            }
        }
        for &id in node.inputs.iter().flatten().chain(&node.implicit_inputs) {
            if plan.last_use[id] == Some(i) && g.consts[id].is_none() {
                vals[id] = None;
            }
        }
    }
    g.outputs
        .iter()
        .map(|&id| {
            vals[id].clone().ok_or_else(|| {
                Error::runtime(format!(
                    "graph output '{}' was not computed",
                    g.value_name(id)
                ))
            })
        })
        .collect()
}

/// Runs a subgraph from inside an op (If/Loop/Scan) one level deeper.
pub fn run_subgraph(
    cx: &mut RunCx,
    g: &Graph,
    plan: &Plan,
    inputs: Vec<Value>,
    implicit: &[(&str, &Value)],
) -> Result<Vec<Value>> {
    if inputs.len() > g.inputs.len() {
        return Err(Error::runtime(format!(
            "subgraph takes {} inputs, given {}",
            g.inputs.len(),
            inputs.len()
        )));
    }
    let mut sub = RunCx {
        options: cx.options,
        depth: cx.depth + 1,
        profile: None,
    };
    run_graph(
        g,
        plan,
        &mut sub,
        inputs.into_iter().map(Some).collect(),
        implicit,
    )
}
