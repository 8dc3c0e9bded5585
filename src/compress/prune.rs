//! Magnitude pruning of Conv, Gemm and MatMul weights.
//!
//! - Unstructured: the smallest-magnitude fraction of each weight becomes zero. The file
//!   keeps dense storage, so it only shrinks once compressed (gzip, zstd); the runtime
//!   does the same work.
//! - Structured: whole output channels with the smallest L2 norm go, and the model really
//!   shrinks: the producer's weight and bias, the channel-wise ops that follow
//!   (BatchNormalization, activations, Add/Mul/Sub/Div with a scalar or a per-channel
//!   constant, depthwise Conv, pooling) and the input channels of every consumer (Conv,
//!   MatMul, Gemm) are sliced together. A chain that reaches anything else (a residual
//!   Add of two activations, Concat, Reshape, a graph output…) is left whole, with the
//!   reason in the report.

use super::edit::{attr_i, drop_unused_constants, rewrite_nodes, Constants, Emitted, Names};
use super::StepReport;
use crate::error::{Error, Result};
use crate::onnx::encode::tensor_to_proto;
use crate::onnx::proto::{AttrType, AttributeProto, GraphProto, ModelProto, NodeProto};
use crate::tensor::{DType, Tensor};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Fraction of each weight's values (unstructured) or output channels (structured)
    /// to remove, in [0, 1).
    pub sparsity: f32,
    /// Whole output channels instead of single values.
    pub structured: bool,
    /// Node names or op types to leave alone.
    pub exclude: Vec<String>,
    /// Weights with fewer values are left alone: too small to matter.
    pub min_elements: usize,
    /// A sparsity of its own for some nodes (by name): the accuracy guard's back-off.
    pub overrides: HashMap<String, f32>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            sparsity: 0.5,
            structured: false,
            exclude: Vec::new(),
            min_elements: 256,
            overrides: HashMap::new(),
        }
    }
}

impl PruneOptions {
    fn sparsity_of(&self, n: &NodeProto) -> f32 {
        self.overrides
            .get(&n.name)
            .copied()
            .unwrap_or(self.sparsity)
    }
}

/// Prunes `m` in place.
pub fn prune(m: &mut ModelProto, opts: &PruneOptions) -> Result<StepReport> {
    if let Some(s) = std::iter::once(&opts.sparsity)
        .chain(opts.overrides.values())
        .find(|s| !(0.0..1.0).contains(*s))
    {
        return Err(Error::input(format!("sparsity {s} is outside [0, 1)")));
    }
    let graph = m
        .graph
        .as_mut()
        .ok_or_else(|| Error::invalid_model("the model has no graph"))?;
    let pct = opts.sparsity * 100.0;
    let mut names = Names::of(graph);
    if opts.structured {
        let mut report = StepReport::new(format!("prune {pct:.0} % structured"));
        structured(graph, opts, &mut names, &mut report)?;
        Ok(report)
    } else {
        let mut report = StepReport::new(format!("prune {pct:.0} %"));
        let mut tally = (0usize, 0usize);
        unstructured_graph(graph, opts, &mut names, &mut report, &mut tally)?;
        if tally.1 > 0 {
            report.notes.push(format!(
                "{} of {} values of the pruned weights are zero ({:.1} %); the file keeps \
                 dense storage: the saving shows once gzipped",
                tally.0,
                tally.1,
                100.0 * tally.0 as f64 / tally.1 as f64
            ));
        }
        Ok(report)
    }
}

fn excluded(opts: &PruneOptions, n: &NodeProto) -> bool {
    opts.exclude.iter().any(|e| *e == n.name || *e == n.op_type)
}

fn is_candidate(n: &NodeProto) -> bool {
    n.domain.is_empty() && matches!(n.op_type.as_str(), "Conv" | "Gemm" | "MatMul")
}

/// The float32 constant weight (input 1) of a candidate, or why there is none to prune;
/// Ok(None) when the weight is no constant at all (not a candidate).
fn weight_of(
    consts: &Constants,
    n: &NodeProto,
    opts: &PruneOptions,
) -> std::result::Result<Option<Tensor>, String> {
    let Some(w) = n.input.get(1).and_then(|w| consts.get(w)) else {
        return Ok(None);
    };
    if excluded(opts, n) {
        return Err("excluded by the user".into());
    }
    let w = w.map_err(|e| format!("weight unreadable: {e}"))?;
    if w.dtype() != DType::F32 {
        return Err(format!("weight is {}, not float32", w.dtype().name()));
    }
    if w.len() < opts.min_elements {
        return Err(format!(
            "weight of {} values is under the {}-value minimum",
            w.len(),
            opts.min_elements
        ));
    }
    Ok(Some(w))
}

// ---------------------------------------------------------------------------------------
// Unstructured

fn unstructured_graph(
    g: &mut GraphProto,
    opts: &PruneOptions,
    names: &mut Names,
    report: &mut StepReport,
    tally: &mut (usize, usize),
) -> Result<()> {
    rewrite_nodes(
        g,
        &mut |consts, n| {
            if is_candidate(n) {
                weight_of(consts, n, opts)
            } else {
                Ok(None)
            }
        },
        &mut |mut n, w, out, inits| {
            let mut v = w.to_f32_vec()?;
            if v.iter().any(|x| !x.is_finite()) {
                return Ok(Emitted::Kept(n, "weight holds inf or NaN".into()));
            }
            zero_smallest(&mut v, opts.sparsity_of(&n));
            tally.0 += v.iter().filter(|x| **x == 0.0).count();
            tally.1 += v.len();
            // A new tensor for this node alone: another node may share the weight.
            let name = names.fresh(&format!("{}_pruned", n.input[1]));
            let t = Tensor::from_vec(w.shape().to_vec(), v)?;
            inits.push(tensor_to_proto(&name, &t)?);
            n.input[1] = name;
            out.push(n);
            Ok(Emitted::Changed)
        },
        report,
    )
}

/// Zeroes the `sparsity` fraction of `v` with the smallest magnitudes (exactly that many,
/// ties broken by position).
fn zero_smallest(v: &mut [f32], sparsity: f32) {
    let k = ((v.len() as f64) * f64::from(sparsity)).round() as usize;
    if k == 0 {
        return;
    }
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.select_nth_unstable_by(k - 1, |&a, &b| v[a].abs().total_cmp(&v[b].abs()));
    for &i in &idx[..k] {
        v[i] = 0.0;
    }
}

// ---------------------------------------------------------------------------------------
// Structured

/// Where the channels sit in the activations a producer writes.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Axis 1 of an activation of this rank (Conv: NC…).
    Channels(usize),
    /// The last axis (MatMul, Gemm).
    Last,
}

impl Layout {
    /// The channel axis counted from the end (1 = last), as broadcasting aligns shapes.
    fn axis_from_end(self) -> usize {
        match self {
            Layout::Channels(rank) => rank - 1,
            Layout::Last => 1,
        }
    }
}

/// A constant input to slice along one axis: the node, the input, the current value.
struct Slice {
    node: usize,
    input: usize,
    value: Tensor,
    axis: usize,
}

/// Everything that changes when the producer loses channels.
struct Plan {
    channels: usize,
    norms: Vec<f64>,
    slices: Vec<Slice>,
    /// Depthwise Convs whose `group` becomes the kept count.
    groups: Vec<usize>,
    /// Activations that carry the channels (their value_info goes stale).
    tensors: HashSet<String>,
    consumers: Vec<String>,
}

fn structured(
    g: &mut GraphProto,
    opts: &PruneOptions,
    names: &mut Names,
    report: &mut StepReport,
) -> Result<()> {
    let mut before = 0usize;
    let mut after = 0usize;
    for i in 0..g.node.len() {
        if !is_candidate(&g.node[i]) {
            continue;
        }
        let plan = {
            let consts = Constants::new(g);
            match weight_of(&consts, &g.node[i], opts) {
                Ok(None) => continue,
                Err(why) => Err(why),
                Ok(Some(w)) => plan_structured(g, &consts, i, w, opts),
            }
        };
        let n = &g.node[i];
        let plan = match plan {
            Ok(p) => p,
            Err(why) => {
                report.kept.push((n.name.clone(), n.op_type.clone(), why));
                continue;
            }
        };
        let sparsity = opts.sparsity_of(&g.node[i]);
        let remove = ((plan.channels as f64) * f64::from(sparsity)).floor() as usize;
        let remove = remove.min(plan.channels - 1);
        if remove == 0 {
            report.kept.push((
                n.name.clone(),
                n.op_type.clone(),
                format!(
                    "{} output channel(s): {:.0} % removes none",
                    plan.channels,
                    sparsity * 100.0
                ),
            ));
            continue;
        }
        let mut order: Vec<usize> = (0..plan.channels).collect();
        order.sort_by(|&a, &b| plan.norms[b].total_cmp(&plan.norms[a]));
        let mut keep = order[..plan.channels - remove].to_vec();
        keep.sort_unstable();
        for s in &plan.slices {
            before += s.value.len();
            let t = slice_axis(&s.value, s.axis, &keep)?;
            after += t.len();
            let old = &g.node[s.node].input[s.input];
            let name = names.fresh(&format!("{old}_sliced"));
            g.initializer.push(tensor_to_proto(&name, &t)?);
            g.node[s.node].input[s.input] = name;
        }
        for &gi in &plan.groups {
            set_int_attr(&mut g.node[gi], "group", keep.len() as i64);
        }
        g.value_info.retain(|v| !plan.tensors.contains(&v.name));
        let n = &g.node[i];
        report.notes.push(format!(
            "{} '{}': {} → {} output channels (consumers: {})",
            n.op_type,
            n.name,
            plan.channels,
            keep.len(),
            plan.consumers.join(", ")
        ));
        report.changed.push((n.name.clone(), n.op_type.clone()));
    }
    remove_dead_folds(g);
    drop_unused_constants(g);
    if before > 0 {
        report.notes.push(format!(
            "sliced weights: {before} → {after} values ({:.1} % fewer)",
            100.0 * (before - after) as f64 / before as f64
        ));
    }
    Ok(())
}

fn set_int_attr(n: &mut NodeProto, name: &str, v: i64) {
    match n.attribute.iter_mut().find(|a| a.name == name) {
        Some(a) => {
            a.r#type = AttrType::Int;
            a.i = v;
        }
        None => n.attribute.push(AttributeProto::int(name, v)),
    }
}

/// `t` with only the `keep` indices of `axis`.
fn slice_axis(t: &Tensor, axis: usize, keep: &[usize]) -> Result<Tensor> {
    let shape = t.shape();
    let v = t.to_f32_vec()?;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let dim = shape[axis];
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            let start = (o * dim + k) * inner;
            out.extend_from_slice(&v[start..start + inner]);
        }
    }
    let mut s = shape.to_vec();
    s[axis] = keep.len();
    Tensor::from_vec(s, out)
}

/// L2 norm of each of `channels` slices of `w` along `axis`.
fn channel_norms(w: &Tensor, axis: usize) -> Result<Vec<f64>> {
    let shape = w.shape();
    let v = w.to_f32_vec()?;
    let inner: usize = shape[axis + 1..].iter().product();
    let dim = shape[axis];
    let mut norms = vec![0f64; dim];
    for (i, x) in v.iter().enumerate() {
        let c = (i / inner) % dim;
        norms[c] += f64::from(*x) * f64::from(*x);
    }
    Ok(norms.into_iter().map(f64::sqrt).collect())
}

/// A constant operand: a constant, or a Reshape of a constant by a constant shape (how
/// PaddlePaddle exports write per-channel biases). Returns its value.
fn const_operand(
    g: &GraphProto,
    consts: &Constants,
    producers: &HashMap<&str, usize>,
    name: &str,
) -> Option<std::result::Result<Tensor, String>> {
    if let Some(t) = consts.get(name) {
        return Some(t.map_err(|e| format!("constant '{name}' unreadable: {e}")));
    }
    let p = &g.node[*producers.get(name)?];
    if p.op_type != "Reshape" || !p.domain.is_empty() || p.input.len() < 2 {
        return None;
    }
    let data = consts.get(&p.input[0])?;
    let shape = consts.get(&p.input[1])?;
    Some((|| {
        let data = data.map_err(|e| e.to_string())?;
        let shape = shape
            .and_then(|s| s.to_i64_vec())
            .map_err(|e| e.to_string())?;
        let dims = reshape_dims(data.shape(), &shape, attr_i(p, "allowzero", 0) != 0)
            .ok_or_else(|| format!("Reshape '{}' of a constant is invalid", p.name))?;
        if data.dtype() != DType::F32 {
            return Err(format!("constant '{name}' is not float32"));
        }
        Tensor::from_vec(dims, data.to_f32_vec().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    })())
}

/// Reshape's output shape (0 copies the input dim unless allowzero, -1 is inferred).
fn reshape_dims(input: &[usize], target: &[i64], allowzero: bool) -> Option<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut dims = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        dims.push(match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            0 if !allowzero => *input.get(i)?,
            d if d >= 0 => d as usize,
            _ => return None,
        });
    }
    let known: usize = dims.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        dims[i] = total / known;
    } else if known != total {
        return None;
    }
    Some(dims)
}

/// The axis of `t` to slice for a per-channel operand, None for a scalar-like one, or why
/// it does not broadcast one value per channel.
fn channel_axis(
    t: &Tensor,
    layout: Layout,
    channels: usize,
) -> std::result::Result<Option<usize>, String> {
    let shape = t.shape();
    if shape.iter().all(|&d| d == 1) {
        return Ok(None);
    }
    let fe = layout.axis_from_end();
    if shape.len() >= fe {
        let axis = shape.len() - fe;
        let others_one = shape.iter().enumerate().all(|(i, &d)| i == axis || d == 1);
        if shape[axis] == channels && others_one {
            return Ok(Some(axis));
        }
    }
    Err(format!(
        "constant of shape {shape:?} is not one value per channel"
    ))
}

fn plan_structured(
    g: &GraphProto,
    consts: &Constants,
    pi: usize,
    w: Tensor,
    opts: &PruneOptions,
) -> std::result::Result<Plan, String> {
    let p = &g.node[pi];
    let err = |e: Error| e.to_string();
    // The producer's weight axis holding output channels, and the activation layout.
    let (waxis, layout) = match p.op_type.as_str() {
        "Conv" => {
            if attr_i(p, "group", 1) != 1 {
                return Err("grouped or depthwise Conv: its outputs are tied to its inputs".into());
            }
            if w.rank() < 3 {
                return Err("Conv weight of rank < 3".into());
            }
            (0, Layout::Channels(w.rank()))
        }
        "MatMul" => {
            if w.rank() != 2 {
                return Err(format!("MatMul weight of rank {}", w.rank()));
            }
            (1, Layout::Last)
        }
        _ => {
            if attr_i(p, "transA", 0) != 0 {
                return Err("Gemm with transA".into());
            }
            if w.rank() != 2 {
                return Err("Gemm weight not 2-D".into());
            }
            (usize::from(attr_i(p, "transB", 0) == 0), Layout::Last)
        }
    };
    let channels = w.shape()[waxis];
    if channels < 2 {
        return Err("a single output channel".into());
    }
    let norms = channel_norms(&w, waxis).map_err(err)?;
    let mut plan = Plan {
        channels,
        norms,
        slices: vec![Slice {
            node: pi,
            input: 1,
            value: w,
            axis: waxis,
        }],
        groups: Vec::new(),
        tensors: HashSet::new(),
        consumers: Vec::new(),
    };
    let mut producers: HashMap<&str, usize> = HashMap::new();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in &n.output {
            producers.insert(o, i);
        }
        for x in &n.input {
            consumers.entry(x).or_default().push(i);
        }
    }
    let mut subgraph_reads = HashSet::new();
    for n in &g.node {
        for a in &n.attribute {
            for sg in a.g.iter().chain(&a.graphs) {
                outer_reads(sg, &mut subgraph_reads);
            }
        }
    }
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();

    // The bias: Conv's [M], or Gemm's C (broadcast over the last axis).
    if let Some(b) = p.input.get(2).filter(|b| !b.is_empty()) {
        let value = match const_operand(g, consts, &producers, b) {
            Some(v) => v?,
            None => return Err("bias is not a constant".into()),
        };
        let axis = if p.op_type == "Conv" {
            (value.shape() == [channels]).then_some(0)
        } else {
            channel_axis(&value, Layout::Last, channels)?
        };
        if let Some(axis) = axis {
            plan.slices.push(Slice {
                node: pi,
                input: 2,
                value,
                axis,
            });
        } else if p.op_type == "Conv" {
            return Err(format!("Conv bias of shape {:?}", value.shape()));
        }
    }

    // Follow the channels through channel-wise nodes to the consumers.
    let mut queue = vec![p.output[0].clone()];
    plan.tensors.insert(p.output[0].clone());
    let mut visited = HashSet::new();
    // Non-constant operands of binary nodes: they must carry the same channels.
    let mut joined: Vec<(String, String)> = Vec::new();
    while let Some(t) = queue.pop() {
        if outputs.contains(t.as_str()) {
            return Err(format!("'{t}' is a graph output"));
        }
        if subgraph_reads.contains(&t) {
            return Err(format!("'{t}' is read inside a subgraph"));
        }
        for &ci in consumers.get(t.as_str()).into_iter().flatten() {
            if !visited.insert(ci) {
                continue;
            }
            let c = &g.node[ci];
            let what = format!("{} '{}'", c.op_type, c.name);
            if excluded(opts, c) {
                return Err(format!("{what} is excluded by the user"));
            }
            if !c.domain.is_empty() {
                return Err(format!("{what} of domain {}", c.domain));
            }
            let at0_only = c.input.iter().skip(1).all(|x| x != &t);
            let mut passes = false;
            match c.op_type.as_str() {
                "Relu" | "Sigmoid" | "HardSigmoid" | "HardSwish" | "LeakyRelu" | "Tanh" | "Elu"
                | "Selu" | "Softplus" | "Identity" | "Neg" | "Abs" | "Sqrt" | "Exp" | "Clip"
                    if at0_only =>
                {
                    passes = true
                }
                "Add" | "Mul" | "Sub" | "Div" => {
                    for (j, x) in c.input.iter().enumerate() {
                        if plan.tensors.contains(x) {
                            continue;
                        }
                        match const_operand(g, consts, &producers, x) {
                            Some(v) => {
                                let v = v?;
                                if let Some(axis) = channel_axis(&v, layout, channels)? {
                                    plan.slices.push(Slice {
                                        node: ci,
                                        input: j,
                                        value: v,
                                        axis,
                                    });
                                }
                            }
                            None => joined.push((x.clone(), what.clone())),
                        }
                    }
                    passes = true;
                }
                "BatchNormalization" if at0_only && matches!(layout, Layout::Channels(_)) => {
                    if c.output.iter().skip(1).any(|o| !o.is_empty()) {
                        return Err(format!("{what} in training mode"));
                    }
                    for j in 1..c.input.len().min(5) {
                        let v = consts
                            .get(&c.input[j])
                            .ok_or_else(|| format!("{what} with non-constant parameters"))?
                            .map_err(err)?;
                        if v.shape() != [channels] {
                            return Err(format!("{what} parameter of shape {:?}", v.shape()));
                        }
                        plan.slices.push(Slice {
                            node: ci,
                            input: j,
                            value: v,
                            axis: 0,
                        });
                    }
                    passes = true;
                }
                "GlobalAveragePool" | "GlobalMaxPool" | "AveragePool" | "MaxPool" | "LpPool"
                    if matches!(layout, Layout::Channels(_)) =>
                {
                    if c.output.iter().skip(1).any(|o| !o.is_empty()) {
                        return Err(format!("{what} with indices"));
                    }
                    passes = true;
                }
                "Conv" if at0_only && matches!(layout, Layout::Channels(_)) => {
                    let cw = consts
                        .get(c.input.get(1).map_or("", |s| s.as_str()))
                        .ok_or_else(|| format!("{what} with a non-constant weight"))?
                        .map_err(err)?;
                    let group = attr_i(c, "group", 1);
                    if cw.rank() < 3 || cw.dtype() != DType::F32 {
                        return Err(format!("{what} weight is not a float Conv weight"));
                    }
                    if group == 1 && cw.shape()[1] == channels {
                        plan.slices.push(Slice {
                            node: ci,
                            input: 1,
                            value: cw,
                            axis: 1,
                        });
                        plan.consumers.push(c.name.clone());
                    } else if group as usize == channels
                        && cw.shape()[0] == channels
                        && cw.shape()[1] == 1
                    {
                        // Depthwise: channel c in, channel c out; its bias goes with it.
                        plan.slices.push(Slice {
                            node: ci,
                            input: 1,
                            value: cw,
                            axis: 0,
                        });
                        if let Some(b) = c.input.get(2).filter(|b| !b.is_empty()) {
                            let bv = consts
                                .get(b)
                                .ok_or_else(|| format!("{what} with a non-constant bias"))?
                                .map_err(err)?;
                            plan.slices.push(Slice {
                                node: ci,
                                input: 2,
                                value: bv,
                                axis: 0,
                            });
                        }
                        plan.groups.push(ci);
                        passes = true;
                    } else {
                        return Err(format!("{what} is grouped ({group} groups)"));
                    }
                }
                "MatMul" | "Gemm" if at0_only && layout == Layout::Last => {
                    if c.op_type == "Gemm" && attr_i(c, "transA", 0) != 0 {
                        return Err(format!("{what} with transA"));
                    }
                    let cw = consts
                        .get(c.input.get(1).map_or("", |s| s.as_str()))
                        .ok_or_else(|| format!("{what} with a non-constant weight"))?
                        .map_err(err)?;
                    if cw.rank() != 2 || cw.dtype() != DType::F32 {
                        return Err(format!("{what} weight is not a float matrix"));
                    }
                    let axis = usize::from(c.op_type == "Gemm" && attr_i(c, "transB", 0) != 0);
                    if cw.shape()[axis] != channels {
                        return Err(format!("{what} weight of shape {:?}", cw.shape()));
                    }
                    plan.slices.push(Slice {
                        node: ci,
                        input: 1,
                        value: cw,
                        axis,
                    });
                    plan.consumers.push(c.name.clone());
                }
                _ => return Err(format!("'{t}' reaches {what}, which is not channel-wise")),
            }
            if passes {
                if c.output.is_empty() {
                    return Err(format!("{what} has no output"));
                }
                if plan.tensors.insert(c.output[0].clone()) {
                    queue.push(c.output[0].clone());
                }
            }
        }
    }
    for (x, what) in joined {
        if !plan.tensors.contains(&x) {
            return Err(format!(
                "{what} joins '{x}', which does not carry the same channels (a residual or gate)"
            ));
        }
    }
    // A constant sliced twice (the same node input) would be written twice.
    let mut seen = HashSet::new();
    plan.slices.retain(|s| seen.insert((s.node, s.input)));
    if plan.consumers.is_empty() {
        plan.consumers.push("none".into());
    }
    Ok(plan)
}

/// Names of outer-scope values a subgraph reads (everything it reads that it does not
/// define; over-approximate, which only makes pruning more careful).
fn outer_reads(g: &GraphProto, out: &mut HashSet<String>) {
    for n in &g.node {
        out.extend(n.input.iter().cloned());
        for a in &n.attribute {
            for sg in a.g.iter().chain(&a.graphs) {
                outer_reads(sg, out);
            }
        }
    }
    out.extend(g.output.iter().map(|o| o.name.clone()));
}

/// Reshapes of constants whose outputs nothing reads any more (their values were folded
/// into sliced constants).
fn remove_dead_folds(g: &mut GraphProto) {
    let mut used: HashSet<String> = HashSet::new();
    outer_reads(g, &mut used);
    used.extend(g.output.iter().map(|o| o.name.clone()));
    g.node
        .retain(|n| !(n.op_type == "Reshape" && n.output.iter().all(|o| !used.contains(o))));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::edit::f32_value_info as vi;
    use crate::compress::edit::node;
    use crate::onnx::dims_to_shape;
    use crate::onnx::{decode_model, encode_model};
    use crate::Model;

    fn shape_of(g: &GraphProto, name: &str) -> Option<Vec<usize>> {
        let t = g.initializer.iter().find(|t| t.name == name)?;
        dims_to_shape(&t.dims).ok()
    }

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::compress::evaluate::SplitMix64(seed);
        (0..n)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect()
    }

    fn init(g: &mut GraphProto, name: &str, shape: &[usize], v: Vec<f32>) {
        let t = Tensor::from_vec(shape.to_vec(), v).unwrap();
        g.initializer.push(tensor_to_proto(name, &t).unwrap());
    }

    fn model(g: GraphProto) -> ModelProto {
        crate::compress::edit::model_of(g, 17)
    }

    fn run(m: &ModelProto, x: &Tensor) -> Tensor {
        let model = Model::load(&encode_model(m)).unwrap();
        model.run(&[("x", x.clone())]).unwrap().remove(0).1
    }

    /// x [1,3,5,5] → Conv(8) → BN → Relu → Conv(4, 3×3) → y; `residual` adds a second
    /// path x → Conv(8) joined by Add before the ReLU.
    fn conv_bn_relu_conv(residual: bool) -> ModelProto {
        let mut g = GraphProto {
            input: vec![vi("x", &[1, 3, 5, 5])],
            output: vec![vi("y", &[1, 4, 3, 3])],
            ..Default::default()
        };
        init(&mut g, "w1", &[8, 3, 1, 1], values(24, 1));
        // Channel scales differ a lot so the L2 ranking is clear-cut.
        let mut w1 = values(24, 1);
        for (i, v) in w1.iter_mut().enumerate() {
            *v = (0.5 + v.abs() / 2.0).copysign(*v) * 3f32.powi((i / 3) as i32);
        }
        g.initializer[0] =
            tensor_to_proto("w1", &Tensor::from_vec(vec![8, 3, 1, 1], w1).unwrap()).unwrap();
        init(&mut g, "b1", &[8], values(8, 2));
        init(
            &mut g,
            "scale",
            &[8],
            values(8, 3).iter().map(|v| v + 2.0).collect(),
        );
        init(&mut g, "bias", &[8], values(8, 4));
        init(&mut g, "mean", &[8], values(8, 5));
        init(
            &mut g,
            "var",
            &[8],
            values(8, 6).iter().map(|v| v + 1.5).collect(),
        );
        init(&mut g, "w2", &[4, 8, 3, 3], values(288, 7));
        init(&mut g, "b2", &[4], values(4, 8));
        g.node
            .push(node("Conv", "conv1".into(), &["x", "w1", "b1"], &["c1"]));
        g.node.push(node(
            "BatchNormalization",
            "bn".into(),
            &["c1", "scale", "bias", "mean", "var"],
            &["n1"],
        ));
        let relu_in = if residual {
            init(&mut g, "w3", &[8, 3, 1, 1], values(24, 9));
            g.node
                .push(node("Conv", "side".into(), &["x", "w3"], &["s1"]));
            g.node
                .push(node("Add", "res".into(), &["n1", "s1"], &["a1"]));
            "a1"
        } else {
            "n1"
        };
        g.node
            .push(node("Relu", "relu".into(), &[relu_in], &["r1"]));
        g.node
            .push(node("Conv", "conv2".into(), &["r1", "w2", "b2"], &["y"]));
        g.value_info.push(vi("c1", &[1, 8, 5, 5]));
        model(g)
    }

    fn structured_opts() -> PruneOptions {
        PruneOptions {
            sparsity: 0.5,
            structured: true,
            exclude: vec![],
            min_elements: 0,
            ..Default::default()
        }
    }

    #[test]
    fn structured_conv_bn_relu_conv_shrinks_and_matches_zeroed_channels() {
        let dense = conv_bn_relu_conv(false);
        let mut pruned = dense.clone();
        let r = prune(&mut pruned, &structured_opts()).unwrap();
        assert!(r.changed.iter().any(|(n, _)| n == "conv1"), "{r}");
        let g = pruned.graph.as_ref().unwrap();
        let conv1 = g.node.iter().find(|n| n.name == "conv1").unwrap();
        let conv2 = g.node.iter().find(|n| n.name == "conv2").unwrap();
        assert_eq!(shape_of(g, &conv1.input[1]).unwrap(), [4, 3, 1, 1]);
        assert_eq!(shape_of(g, &conv2.input[1]).unwrap(), [4, 4, 3, 3]);
        assert!(
            g.value_info.iter().all(|v| v.name != "c1"),
            "stale value_info kept"
        );
        // The kept channels are the 4 with the largest norms: the last 4 by construction.
        // The dense model with channels 0..4 zeroed out of conv2's inputs computes the same.
        let mut zeroed = dense.clone();
        let zg = zeroed.graph.as_mut().unwrap();
        let w2 = tensor_from(zg, "w2");
        let mut v = w2.to_f32_vec().unwrap();
        for o in 0..4 {
            for c in 0..4 {
                for k in 0..9 {
                    v[(o * 8 + c) * 9 + k] = 0.0;
                }
            }
        }
        let i = zg.initializer.iter().position(|t| t.name == "w2").unwrap();
        zg.initializer[i] =
            tensor_to_proto("w2", &Tensor::from_vec(vec![4, 8, 3, 3], v).unwrap()).unwrap();
        let x = Tensor::from_vec(vec![1, 3, 5, 5], values(75, 11)).unwrap();
        let (a, b) = (run(&pruned, &x), run(&zeroed, &x));
        assert_eq!(a.shape(), [1, 4, 3, 3]);
        let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-5 * q.abs().max(1.0), "{p} vs {q}");
        }
        // And it differs from the untouched model (the test can fail).
        let d = run(&dense, &x).to_f32_vec().unwrap();
        assert!(d.iter().zip(&a).any(|(p, q)| (p - q).abs() > 1e-3));
        // It encodes and decodes.
        decode_model(&encode_model(&pruned)).unwrap();
    }

    fn tensor_from(g: &GraphProto, name: &str) -> Tensor {
        crate::onnx::tensor_from_proto(g.initializer.iter().find(|t| t.name == name).unwrap())
            .unwrap()
    }

    #[test]
    fn structured_refuses_a_residual_add() {
        let mut m = conv_bn_relu_conv(true);
        let before = m.clone();
        let r = prune(&mut m, &structured_opts()).unwrap();
        let why = r
            .kept
            .iter()
            .find(|(n, _, _)| n == "conv1")
            .map(|k| k.2.clone())
            .unwrap_or_default();
        assert!(why.contains("residual"), "{r}");
        assert!(r.changed.iter().all(|(n, _)| n != "conv1" && n != "side"));
        // conv2 is a producer too, but its output is the graph output.
        assert!(r
            .kept
            .iter()
            .any(|(n, _, w)| n == "conv2" && w.contains("graph output")));
        assert_eq!(m, before);
    }

    #[test]
    fn structured_honours_exclude_by_name_and_op() {
        for ex in ["conv1", "Relu"] {
            let mut m = conv_bn_relu_conv(false);
            let opts = PruneOptions {
                exclude: vec![ex.into()],
                ..structured_opts()
            };
            let r = prune(&mut m, &opts).unwrap();
            assert!(r.changed.is_empty(), "{ex}: {r}");
        }
    }

    #[test]
    fn structured_matmul_chain_with_per_channel_add() {
        // x [2,6] → MatMul W1 [6,10] → Add b [10] → Sigmoid → MatMul W2 [10,3] → y.
        let mut g = GraphProto {
            input: vec![vi("x", &[2, 6])],
            output: vec![vi("y", &[2, 3])],
            ..Default::default()
        };
        init(&mut g, "w1", &[6, 10], values(60, 21));
        init(&mut g, "b", &[10], values(10, 22));
        init(&mut g, "w2", &[10, 3], values(30, 23));
        g.node
            .push(node("MatMul", "mm1".into(), &["x", "w1"], &["h"]));
        g.node.push(node("Add", "add".into(), &["h", "b"], &["hb"]));
        g.node.push(node("Sigmoid", "sig".into(), &["hb"], &["s"]));
        g.node
            .push(node("MatMul", "mm2".into(), &["s", "w2"], &["y"]));
        let mut m = model(g);
        let mut opts = structured_opts();
        opts.sparsity = 0.3;
        let r = prune(&mut m, &opts).unwrap();
        assert_eq!(
            r.changed,
            [("mm1".to_string(), "MatMul".to_string())],
            "{r}"
        );
        let g = m.graph.as_ref().unwrap();
        let add = g.node.iter().find(|n| n.name == "add").unwrap();
        assert_eq!(shape_of(g, &add.input[1]).unwrap(), [7]);
        let x = Tensor::from_vec(vec![2, 6], values(12, 24)).unwrap();
        assert_eq!(run(&m, &x).shape(), [2, 3]);
    }

    #[test]
    fn unstructured_hits_the_requested_sparsity() {
        let mut m = conv_bn_relu_conv(false);
        let opts = PruneOptions {
            sparsity: 0.6,
            min_elements: 0,
            ..Default::default()
        };
        let r = prune(&mut m, &opts).unwrap();
        assert_eq!(r.changed.len(), 2, "{r}");
        let g = m.graph.as_ref().unwrap();
        for n in g.node.iter().filter(|n| n.op_type == "Conv") {
            let w = tensor_from(g, &n.input[1]).to_f32_vec().unwrap();
            let zeros = w.iter().filter(|v| **v == 0.0).count();
            assert_eq!(zeros, (w.len() as f64 * 0.6).round() as usize, "{}", n.name);
            // What is left is the large part: every kept value beats every zeroed one.
        }
        // The kept values are the largest magnitudes of the original.
        let orig = tensor_from(conv_bn_relu_conv(false).graph.as_ref().unwrap(), "w2")
            .to_f32_vec()
            .unwrap();
        let conv2 = g.node.iter().find(|n| n.name == "conv2").unwrap();
        let new = tensor_from(g, &conv2.input[1]).to_f32_vec().unwrap();
        let max_zeroed = orig
            .iter()
            .zip(&new)
            .filter(|(_, n)| **n == 0.0)
            .fold(0f32, |m, (o, _)| m.max(o.abs()));
        let min_kept = new
            .iter()
            .filter(|v| **v != 0.0)
            .fold(f32::INFINITY, |m, v| m.min(v.abs()));
        assert!(max_zeroed <= min_kept);
        let x = Tensor::from_vec(vec![1, 3, 5, 5], values(75, 11)).unwrap();
        assert_eq!(run(&m, &x).shape(), [1, 4, 3, 3]);
    }

    #[test]
    fn a_node_override_prunes_that_node_less() {
        let mut m = conv_bn_relu_conv(false);
        let opts = PruneOptions {
            sparsity: 0.6,
            min_elements: 0,
            overrides: [("conv2".to_string(), 0.3)].into(),
            ..Default::default()
        };
        prune(&mut m, &opts).unwrap();
        let g = m.graph.as_ref().unwrap();
        for n in g.node.iter().filter(|n| n.op_type == "Conv") {
            let w = tensor_from(g, &n.input[1]).to_f32_vec().unwrap();
            let zeros = w.iter().filter(|v| **v == 0.0).count();
            let want = if n.name == "conv2" { 0.3 } else { 0.6 };
            assert_eq!(
                zeros,
                (w.len() as f64 * want).round() as usize,
                "{}",
                n.name
            );
        }
        // Structured: conv1 keeps 6 of its 8 channels instead of 4.
        let mut m = conv_bn_relu_conv(false);
        let opts = PruneOptions {
            overrides: [("conv1".to_string(), 0.25)].into(),
            ..structured_opts()
        };
        prune(&mut m, &opts).unwrap();
        let g = m.graph.as_ref().unwrap();
        let conv1 = g.node.iter().find(|n| n.name == "conv1").unwrap();
        assert_eq!(shape_of(g, &conv1.input[1]).unwrap(), [6, 3, 1, 1]);
        let bad = PruneOptions {
            overrides: [("conv1".to_string(), 1.5)].into(),
            ..Default::default()
        };
        assert!(prune(&mut conv_bn_relu_conv(false), &bad).is_err());
    }

    #[test]
    fn bad_sparsity_is_an_error() {
        let mut m = conv_bn_relu_conv(false);
        let opts = PruneOptions {
            sparsity: 1.0,
            ..Default::default()
        };
        assert!(prune(&mut m, &opts).is_err());
    }

    #[test]
    fn reshape_dims_follow_onnx() {
        assert_eq!(
            reshape_dims(&[8], &[1, -1, 1, 1], false),
            Some(vec![1, 8, 1, 1])
        );
        assert_eq!(reshape_dims(&[2, 4], &[0, 4], false), Some(vec![2, 4]));
        assert_eq!(reshape_dims(&[8], &[3, -1], false), None);
    }
}
