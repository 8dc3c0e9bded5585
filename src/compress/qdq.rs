//! Static int8 quantization in QDQ form, the layout onnxruntime's
//! `quantize_static(quant_format=QDQ)` writes, written from the ONNX operator specs:
//! - each quantized node's float activation inputs and its output pass through a
//!   QuantizeLinear → DequantizeLinear pair (uint8, asymmetric, scale and zero point from
//!   the calibrated range);
//! - constant weights are stored as int8 (symmetric, per output channel by default)
//!   read through a DequantizeLinear;
//! - Conv and Gemm biases are stored as int32 with scale x_scale·w_scale.
//!
//! The graph still computes in float between DQ and Q, so any runtime runs it; ours
//! (`graph::passes::qdq`) and onnxruntime fuse DQ → Conv/MatMul/Gemm → Q into
//! QLinearConv / QLinearMatMul / QGemm. Where a Conv, MatMul or Gemm feeds a lone Relu
//! or Clip, the output pair goes after the clamp: the Q saturates the same way, so both
//! fusions drop the clamp and the range spends no levels on negatives.
//!
//! Nodes inside the branch of an If that every calibration set took are quantized in
//! the branch itself (its Q/DQ nodes in its node list, its new scales and int8 weights
//! in its own initializers; outer-scope reads, weights included, keep working): the
//! calibration copy inlines such branches (`calibrate`). Nodes in branches no set took,
//! in Ifs whose branch varies, and in Loop/Scan bodies are reported as kept.

use super::calibrate::{calibrate, Calibration};
use super::edit::{attr_f, attr_i, default_opset, drop_unused_constants, node, Constants, Names};
use super::StepReport;
use crate::error::{Error, Result};
use crate::graph::passes::fuse::fold_bn;
use crate::onnx::encode::tensor_to_proto;
use crate::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use crate::onnx::tensor_from_proto;
use crate::tensor::{DType, Tensor};
use std::collections::{HashMap, HashSet};

/// In `StaticOptions::op_types`: quantize every float activation input of every op.
pub const ALL_OPS: &str = "all";

#[derive(Debug, Clone)]
pub struct StaticOptions {
    pub calibration: Calibration,
    /// Weights with one scale per output channel (default) or one per tensor.
    pub per_channel: bool,
    /// Op types whose nodes are quantized (default Conv, MatMul, Gemm); [`ALL_OPS`]
    /// quantizes the float activation inputs and outputs of every top-level op.
    pub op_types: Vec<String>,
    /// Node names or op types to keep float.
    pub exclude: Vec<String>,
    /// Weights with fewer elements keep their node float.
    pub min_elements: usize,
    /// Milder settings for some nodes (by name): the accuracy guard's back-off.
    pub overrides: HashMap<String, StaticOverride>,
}

/// A milder quantization of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticOverride {
    /// Per-channel weights, whatever `per_channel` says.
    PerChannel,
    /// Per-channel int8 weights and float activations: the file keeps the saving, the
    /// node computes in float.
    WeightsOnly,
}

impl Default for StaticOptions {
    fn default() -> Self {
        StaticOptions {
            calibration: Calibration::MinMax,
            per_channel: true,
            op_types: ["Conv", "MatMul", "Gemm"].map(String::from).to_vec(),
            exclude: Vec::new(),
            // The weight's node becomes an integer kernel: even small weights pay.
            min_elements: 0,
            overrides: HashMap::new(),
        }
    }
}

impl StaticOptions {
    /// Every op quantized (a known-bad recipe on some models, kept for the accuracy guard).
    pub fn all_ops() -> Self {
        StaticOptions {
            op_types: vec![ALL_OPS.to_string()],
            ..Default::default()
        }
    }
    fn selects(&self, op: &str) -> bool {
        self.op_types.iter().any(|t| t == op || t == ALL_OPS)
    }
    fn excludes(&self, n: &NodeProto) -> bool {
        self.exclude.iter().any(|e| *e == n.name || *e == n.op_type)
    }
    fn per_channel_for(&self, n: &NodeProto) -> bool {
        self.per_channel || self.overrides.contains_key(&n.name)
    }
    /// The node reads its activations in float (excluded, or weights only).
    fn float_reader(&self, n: &NodeProto) -> bool {
        self.excludes(n) || self.overrides.get(&n.name) == Some(&StaticOverride::WeightsOnly)
    }
}

/// Ops whose inputs are never quantized, even with [`ALL_OPS`]: quantization nodes
/// themselves, constants, shape reads and control flow (its bodies are not calibrated).
const NEVER: &[&str] = &[
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "Constant",
    "Shape",
    "Size",
    "If",
    "Loop",
    "Scan",
];

/// A constant weight to store as int8: its name, value, and the channel axis (None:
/// one scale for the whole tensor).
struct WeightPlan {
    name: String,
    value: Tensor,
    axis: Option<usize>,
}

/// What happens to one node.
struct NodePlan {
    idx: usize,
    /// Input slots holding float activations to quantize.
    act_slots: Vec<usize>,
    weight: Option<WeightPlan>,
    /// Name and value of a constant float bias (Conv/Gemm input 2) to store as int32.
    bias: Option<(String, Tensor)>,
    /// Tensors written by the node (or by the clamp after it) to quantize.
    outs: Vec<String>,
}

/// Quantizes `m` in place for the inputs in `sets` (each a full set of model inputs).
pub fn quantize_static(
    m: &mut ModelProto,
    sets: &[Vec<(String, Tensor)>],
    opts: &StaticOptions,
) -> Result<StepReport> {
    let mut report = StepReport::new("int8 static QDQ");
    let opset = default_opset(m);
    if opset < 10 {
        report.kept.push((
            String::new(),
            String::new(),
            format!("opset {opset} < 10 has no QuantizeLinear: upgrade the model first"),
        ));
        return Ok(report);
    }
    if opts.selects("Conv") {
        let g = m
            .graph
            .as_mut()
            .ok_or_else(|| Error::invalid_model("the model has no graph"))?;
        let folded = fold_batch_norms(g, opts)?;
        if folded > 0 {
            report.notes.push(format!(
                "{folded} BatchNormalization folded into the Conv before it (one QLinearConv each)"
            ));
        }
    }
    let g = m
        .graph
        .as_ref()
        .ok_or_else(|| Error::invalid_model("the model has no graph"))?;
    // Every graph: the top level first, then each subgraph (its path of node and
    // attribute indices). Each is planned with the constants it can see.
    let mut paths = Vec::new();
    graph_paths(g, &mut Vec::new(), &mut paths);
    let mut planned: Vec<(Path, Vec<NodePlan>, StepReport)> = Vec::new();
    for p in paths {
        let sg = graph_at(g, &p)?;
        let scope = Scope::new(g, &p)?;
        let mut r = StepReport::new("");
        let plans = plan_nodes(sg, &scope, opts, &mut r);
        planned.push((p, plans, r));
    }

    // Calibrate every tensor a plan names, and Softmax inputs, whose rank tells whether
    // an opset upgrade is safe.
    let mut watch: Vec<String> = Vec::new();
    for (p, plans, _) in &planned {
        let sg = graph_at(g, p)?;
        for pl in plans {
            let n = &sg.node[pl.idx];
            watch.extend(pl.act_slots.iter().map(|&s| n.input[s].clone()));
            watch.extend(pl.outs.iter().cloned());
        }
    }
    watch.extend(
        g.node
            .iter()
            .filter(|n| is_softmax(n) && n.domain.is_empty())
            .filter_map(|n| n.input.first().cloned()),
    );
    let ranges = calibrate(m, &watch, sets, opts.calibration)?;
    let g = m
        .graph
        .as_ref()
        .ok_or_else(|| Error::invalid_model("the model has no graph"))?;

    // Per-channel weights are possible when the opset has them or can be raised to 13.
    let per_channel = (opts.per_channel || !opts.overrides.is_empty())
        && {
            if opset >= 13 {
                true
            } else {
                match opset_13_blocker(g, &ranges.rank, opset) {
                    None => {
                        report.notes.push(format!(
                        "default opset raised from {opset} to 13 for per-channel DequantizeLinear"
                    ));
                        true
                    }
                    Some(why) => {
                        report.notes.push(format!(
                        "per-tensor weights: per-channel needs opset 13 and the model (opset {opset}) cannot be raised safely: {why}"
                    ));
                        false
                    }
                }
            }
        };
    let raised = per_channel && opset < 13;
    if raised {
        for o in &mut m.opset_import {
            if o.domain.is_empty() || o.domain == "ai.onnx" {
                o.version = 13;
            }
        }
        // Opset 13 belongs to IR 7; the IR changes before it only add features.
        m.ir_version = m.ir_version.max(7);
    }
    let g = m
        .graph
        .as_mut()
        .ok_or_else(|| Error::invalid_model("the model has no graph"))?;
    let mut names = Names::of(g);
    let mut totals = Totals::default();
    // Deepest graphs first: rewriting a graph moves its nodes, which the paths of its
    // subgraphs index; rewriting a subgraph moves nothing outside it.
    planned.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.len()));
    for (p, plans, r) in planned {
        if let Some(why) = unseen_reason(g, &p, &ranges.taken)? {
            let sg = graph_at(g, &p)?;
            for n in &sg.node {
                if n.domain.is_empty()
                    && opts.selects(&n.op_type)
                    && !NEVER.contains(&n.op_type.as_str())
                {
                    report
                        .kept
                        .push((n.name.clone(), n.op_type.clone(), why.clone()));
                }
            }
            continue;
        }
        report.kept.extend(r.kept);
        let sg = graph_at_mut(g, &p)?;
        rewrite(
            sg,
            plans,
            &ranges.range,
            per_channel,
            opts,
            &mut names,
            &mut totals,
            &mut report,
        )?;
        drop_unused_constants(sg);
    }
    // After the rewrites: they index the nodes as planned.
    if raised {
        attrs_to_inputs(g, &mut names)?;
    }
    if totals.w_bytes_f32 > 0 {
        report.notes.push(format!(
            "weights: {:.2} MB float → {:.2} MB int8 ({})",
            totals.w_bytes_f32 as f64 / 1e6,
            totals.w_bytes_i8 as f64 / 1e6,
            if per_channel && opts.per_channel {
                "per channel"
            } else if per_channel {
                "per tensor, some per channel"
            } else {
                "per tensor"
            }
        ));
    }
    report.notes.push(format!(
        "{} activation tensor(s) quantized to uint8",
        totals.tensors
    ));
    for (name, op, why) in &ranges.unseen {
        report
            .notes
            .push(format!("{op} '{name}': body not calibrated: {why}"));
    }
    Ok(report)
}

/// A subgraph's place: (node index, attribute index) from the top-level graph down.
type Path = Vec<(usize, usize)>;

fn graph_paths(g: &GraphProto, path: &mut Path, out: &mut Vec<Path>) {
    out.push(path.clone());
    for (i, n) in g.node.iter().enumerate() {
        for (j, a) in n.attribute.iter().enumerate() {
            if let Some(sg) = &a.g {
                path.push((i, j));
                graph_paths(sg, path, out);
                path.pop();
            }
        }
    }
}

fn graph_at<'a>(g: &'a GraphProto, path: &[(usize, usize)]) -> Result<&'a GraphProto> {
    let mut g = g;
    for &(i, j) in path {
        g = g
            .node
            .get(i)
            .and_then(|n| n.attribute.get(j))
            .and_then(|a| a.g.as_ref())
            .ok_or_else(|| Error::invalid_model("subgraph path went stale"))?;
    }
    Ok(g)
}

fn graph_at_mut<'a>(g: &'a mut GraphProto, path: &[(usize, usize)]) -> Result<&'a mut GraphProto> {
    let mut g = g;
    for &(i, j) in path {
        g = g
            .node
            .get_mut(i)
            .and_then(|n| n.attribute.get_mut(j))
            .and_then(|a| a.g.as_mut())
            .ok_or_else(|| Error::invalid_model("subgraph path went stale"))?;
    }
    Ok(g)
}

/// Why calibration did not see the subgraph at `path`, or None when it did (the top
/// level, or only branches that every calibration set took).
fn unseen_reason(
    g: &GraphProto,
    path: &[(usize, usize)],
    taken: &HashMap<String, bool>,
) -> Result<Option<String>> {
    let mut g = g;
    for &(i, j) in path {
        let n = &g.node[i];
        let a = &n.attribute[j];
        let key = n.output.first().filter(|_| n.op_type == "If");
        match key.and_then(|k| taken.get(k)) {
            Some(&then) if then == (a.name == "then_branch") => {}
            Some(_) => {
                return Ok(Some(format!(
                    "in the {} of If '{}', which no calibration set took",
                    a.name, n.name
                )))
            }
            None => {
                return Ok(Some(format!(
                    "inside {} '{}': calibration could not follow its body",
                    n.op_type, n.name
                )))
            }
        }
        g = graph_at(g, &[(i, j)])?;
    }
    Ok(None)
}

/// The constants a subgraph can read: its own, then those of the graphs around it.
struct Scope<'a> {
    levels: Vec<Constants<'a>>,
}

impl<'a> Scope<'a> {
    fn new(top: &'a GraphProto, path: &[(usize, usize)]) -> Result<Self> {
        let mut levels = vec![Constants::new(top)];
        for k in 1..=path.len() {
            levels.push(Constants::new(graph_at(top, &path[..k])?));
        }
        Ok(Scope { levels })
    }
    fn proto(&self, name: &str) -> Option<&'a TensorProto> {
        self.levels.iter().rev().find_map(|c| c.proto(name))
    }
    fn get(&self, name: &str) -> Option<Result<Tensor>> {
        self.proto(name).map(tensor_from_proto)
    }
}

/// What the rewrites of all graphs did, for the notes.
#[derive(Default)]
struct Totals {
    tensors: usize,
    w_bytes_f32: usize,
    w_bytes_i8: usize,
}

fn is_softmax(n: &NodeProto) -> bool {
    matches!(n.op_type.as_str(), "Softmax" | "LogSoftmax" | "Hardmax")
}

/// Why the default opset cannot go from `opset` (< 13) to 13 without changing what
/// some node computes, or None when it can. Between 11 and 13 these ops moved
/// attributes to inputs (Split, Squeeze, Unsqueeze, ReduceSum; Dropout in 12), Softmax
/// and its kin changed from "flatten to 2-D at axis" to "along axis" (the same only
/// along the last axis), and Resize dropped a coordinate mode.
fn opset_13_blocker(g: &GraphProto, ranks: &HashMap<String, usize>, opset: i64) -> Option<String> {
    if opset < 11 {
        return Some(format!(
            "opset {opset} predates the input layouts of opset 11"
        ));
    }
    fn walk(
        g: &GraphProto,
        top: bool,
        ranks: &HashMap<String, usize>,
        opset: i64,
    ) -> Option<String> {
        for n in &g.node {
            if !n.domain.is_empty() && n.domain != "ai.onnx" {
                continue;
            }
            let has = |a: &str| n.attribute.iter().any(|x| x.name == a);
            let why = match n.op_type.as_str() {
                "Dropout" if opset < 12 && has("ratio") => Some("Dropout with a 'ratio' attribute"),
                "Resize"
                    if n.attribute.iter().any(|a| {
                        a.name == "coordinate_transformation_mode" && a.s == b"tf_half_pixel_for_nn"
                    }) =>
                {
                    Some("Resize with tf_half_pixel_for_nn")
                }
                _ if is_softmax(n) => {
                    let axis = attr_i(n, "axis", 1);
                    let rank = n.input.first().and_then(|x| ranks.get(x)).filter(|_| top);
                    let last = match rank {
                        Some(&r) => axis == -1 || axis == r as i64 - 1,
                        None => axis == -1,
                    };
                    (!last).then_some("Softmax-family not along the last axis")
                }
                _ => None,
            };
            if let Some(why) = why {
                return Some(format!("{} '{}': {why}", n.op_type, n.name));
            }
            for a in &n.attribute {
                for sg in a.g.iter().chain(&a.graphs) {
                    if let Some(w) = walk(sg, false, ranks, opset) {
                        return Some(w);
                    }
                }
            }
        }
        None
    }
    walk(g, true, ranks, opset)
}

/// Folds each inference-mode BatchNormalization that alone reads a Conv's output into that
/// Conv (the arithmetic is the load-time fusion's, `graph::passes::fuse::fold_bn`).
/// Otherwise the Conv's output pair would be dequantized for a float BatchNormalization and
/// quantized again after it. Excluded (or guard-kept) Convs and BNs stay as they were.
fn fold_batch_norms(g: &mut GraphProto, opts: &StaticOptions) -> Result<usize> {
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for n in &g.node {
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            *readers.entry(x.as_str()).or_default() += 1;
        }
    }
    let captured = captured_names(g);
    let producer: HashMap<&str, usize> = (g.node.iter().enumerate())
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let consts = Constants::new(g);
    let f32_const = |x: &str| match consts.get(x) {
        Some(Ok(t)) if t.dtype() == DType::F32 => t.to_f32_vec().ok().map(|v| (t, v)),
        _ => None,
    };
    // (conv index, bn index, folded weight, folded bias)
    let mut folds: Vec<(usize, usize, Tensor, Tensor)> = Vec::new();
    for (bi, bn) in g.node.iter().enumerate() {
        let plain = |n: &NodeProto| n.domain.is_empty() && !opts.float_reader(n);
        if bn.op_type != "BatchNormalization"
            || !plain(bn)
            || bn.input.len() != 5
            || attr_i(bn, "training_mode", 0) != 0
            || bn.output.iter().skip(1).any(|o| !o.is_empty())
        {
            continue;
        }
        let x = bn.input[0].as_str();
        let Some(&ci) = producer.get(x) else { continue };
        let conv = &g.node[ci];
        if conv.op_type != "Conv"
            || !plain(conv)
            || readers.get(x) != Some(&1)
            || outputs.contains(x)
            || captured.contains(x)
            || conv.input.len() < 2
        {
            continue;
        }
        let Some((w, mut wv)) = f32_const(&conv.input[1]) else {
            continue;
        };
        let m = w.shape()[0];
        let params: Option<Vec<Vec<f32>>> = (1..5)
            .map(|i| {
                f32_const(&bn.input[i])
                    .map(|(_, v)| v)
                    .filter(|v| v.len() == m)
            })
            .collect();
        let Some(p) = params else { continue };
        let bias = match conv.input.get(2).filter(|b| !b.is_empty()) {
            None => vec![0.0; m],
            Some(b) => match f32_const(b) {
                Some((_, v)) if v.len() == m => v,
                _ => continue,
            },
        };
        let eps = attr_f(bn, "epsilon", 1e-5);
        let b2 = fold_bn(&mut wv, &bias, &p[0], &p[1], &p[2], &p[3], eps);
        folds.push((
            ci,
            bi,
            Tensor::from_vec(w.shape().to_vec(), wv)?,
            Tensor::vector(b2),
        ));
    }
    let mut names = Names::of(g);
    let mut drop = HashSet::new();
    for (ci, bi, w, b) in &folds {
        let base = g.node[*ci].name.clone();
        let (wn, bn) = (
            names.fresh(&format!("{base}_W_bn_folded")),
            names.fresh(&format!("{base}_B_bn_folded")),
        );
        g.initializer.push(tensor_to_proto(&wn, w)?);
        g.initializer.push(tensor_to_proto(&bn, b)?);
        let y = g.node[*bi].output[0].clone();
        let conv = &mut g.node[*ci];
        conv.input.truncate(1);
        conv.input.extend([wn, bn]);
        conv.output[0] = y;
        drop.insert(*bi);
    }
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        !drop.contains(&(i - 1))
    });
    drop_unused_constants(g);
    Ok(folds.len())
}

/// Moves the attributes opset 13 made inputs (Squeeze, Unsqueeze and ReduceSum 'axes',
/// Split 'split') into Constant nodes the node reads, in every graph: the model means
/// the same at opset 13.
fn attrs_to_inputs(g: &mut GraphProto, names: &mut Names) -> Result<()> {
    let mut out = Vec::with_capacity(g.node.len());
    for mut n in std::mem::take(&mut g.node) {
        for a in &mut n.attribute {
            for sg in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                attrs_to_inputs(sg, names)?;
            }
        }
        let attr = match n.op_type.as_str() {
            "Squeeze" | "Unsqueeze" | "ReduceSum" => "axes",
            "Split" => "split",
            _ => "",
        };
        let at = (n.domain.is_empty() || n.domain == "ai.onnx")
            .then(|| n.attribute.iter().position(|a| a.name == attr))
            .flatten();
        if let Some(at) = at {
            let a = n.attribute.remove(at);
            let base = if n.name.is_empty() {
                &n.output[0]
            } else {
                &n.name
            };
            let value = names.fresh(&format!("{base}_{attr}"));
            let mut c = node("Constant", names.fresh(&value), &[], &[&value]);
            let t = Tensor::from_vec(vec![a.ints.len()], a.ints.clone())?;
            c.attribute.push(AttributeProto {
                name: "value".into(),
                r#type: crate::onnx::proto::AttrType::Tensor,
                t: Some(tensor_to_proto(&value, &t)?),
                ..Default::default()
            });
            out.push(c);
            n.input.truncate(1);
            n.input.resize(1, String::new());
            n.input.push(value);
        }
        out.push(n);
    }
    g.node = out;
    Ok(())
}

/// Decides, for each top-level node the options select, what to quantize; nodes that
/// cannot be are reported as kept.
fn plan_nodes(
    g: &GraphProto,
    consts: &Scope,
    opts: &StaticOptions,
    report: &mut StepReport,
) -> Vec<NodePlan> {
    let all = opts.op_types.iter().any(|t| t == ALL_OPS);
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            readers.entry(x.as_str()).or_default().push(i);
        }
    }
    let captured = captured_names(g);
    let mut plans = Vec::new();
    for (idx, n) in g.node.iter().enumerate() {
        if !n.domain.is_empty() || !opts.selects(&n.op_type) || NEVER.contains(&n.op_type.as_str())
        {
            continue;
        }
        if opts.excludes(n) {
            report.kept.push((
                n.name.clone(),
                n.op_type.clone(),
                "excluded by the user".into(),
            ));
            continue;
        }
        let is_const = |x: &str| consts.proto(x).is_some();
        let weighted = matches!(n.op_type.as_str(), "Conv" | "MatMul" | "Gemm");
        // The milder settings are about a constant weight: a node without one has none.
        let milder = opts.overrides.get(&n.name).copied();
        let weights_only = milder == Some(StaticOverride::WeightsOnly);
        if milder.is_some() && !weighted {
            report.kept.push((
                n.name.clone(),
                n.op_type.clone(),
                "no constant weight for a milder setting".into(),
            ));
            continue;
        }
        if !weighted {
            plans.push(NodePlan {
                idx,
                act_slots: (0..n.input.len())
                    .filter(|&s| !n.input[s].is_empty() && !is_const(&n.input[s]))
                    .collect(),
                weight: None,
                bias: None,
                outs: n.output.iter().filter(|o| !o.is_empty()).cloned().collect(),
            });
            continue;
        }
        if n.input.len() < 2 || n.output.is_empty() {
            continue;
        }
        let weight = match plan_weight(consts, n, opts) {
            Ok(w) => w,
            Err(why) => {
                report.kept.push((n.name.clone(), n.op_type.clone(), why));
                continue;
            }
        };
        if milder.is_some() && weight.is_none() {
            report.kept.push((
                n.name.clone(),
                n.op_type.clone(),
                "no constant weight for a milder setting".into(),
            ));
            continue;
        }
        let mut act_slots = vec![0];
        if weight.is_none() {
            act_slots.push(1);
        }
        act_slots.retain(|&s| !is_const(&n.input[s]) && !weights_only);
        let channels = weight.as_ref().map(|w| match w.axis {
            Some(a) => w.value.shape()[a],
            None => match n.op_type.as_str() {
                "Conv" => w.value.shape()[0],
                _ if attr_i(n, "transB", 0) != 0 => w.value.shape()[0],
                _ => *w.value.shape().last().unwrap_or(&0),
            },
        });
        let bias = n
            .input
            .get(2)
            .filter(|b| !b.is_empty() && n.op_type != "MatMul")
            .filter(|_| n.op_type != "Gemm" || attr_f(n, "beta", 1.0) == 1.0)
            .filter(|_| weight.is_some())
            .and_then(|b| match consts.get(b) {
                Some(Ok(t))
                    if t.dtype() == DType::F32 && t.rank() == 1 && Some(t.len()) == channels =>
                {
                    Some((b.clone(), t))
                }
                _ => None,
            });
        // The output pair goes after a lone Relu/Clip reader (see the module doc).
        let mut out = n.output[0].clone();
        if let Some(r) = readers.get(out.as_str()).filter(|r| r.len() == 1) {
            let c = &g.node[r[0]];
            let clamp = c.domain.is_empty()
                && (c.op_type == "Relu"
                    || (c.op_type == "Clip"
                        && c.input.iter().skip(1).all(|x| x.is_empty() || is_const(x))));
            let fused_later = all || opts.selects(&c.op_type);
            if clamp
                && !fused_later
                && !opts.excludes(c)
                && !outputs.contains(out.as_str())
                && !captured.contains(out.as_str())
                && c.input.first() == Some(&out)
            {
                out = c.output[0].clone();
            }
        }
        plans.push(NodePlan {
            idx,
            act_slots,
            weight,
            bias,
            outs: if weights_only { Vec::new() } else { vec![out] },
        });
    }
    plans
}

/// Names that subgraphs read from the enclosing graph (or define: harmless here).
fn captured_names(g: &GraphProto) -> HashSet<String> {
    fn walk(g: &GraphProto, set: &mut HashSet<String>) {
        for n in &g.node {
            set.extend(n.input.iter().cloned());
            for a in &n.attribute {
                for sg in a.g.iter().chain(&a.graphs) {
                    walk(sg, set);
                    set.extend(sg.output.iter().map(|o| o.name.clone()));
                }
            }
        }
    }
    let mut set = HashSet::new();
    for n in &g.node {
        for a in &n.attribute {
            for sg in a.g.iter().chain(&a.graphs) {
                walk(sg, &mut set);
            }
        }
    }
    set
}

/// The constant weight (input 1) of a Conv/MatMul/Gemm: Ok(None) when input 1 is no
/// constant (it is quantized as an activation), Err(reason) to keep the node float.
fn plan_weight(
    consts: &Scope,
    n: &NodeProto,
    opts: &StaticOptions,
) -> std::result::Result<Option<WeightPlan>, String> {
    let name = &n.input[1];
    let Some(w) = consts.get(name) else {
        return Ok(None);
    };
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
    if w.to_f32_vec()
        .map_err(|e| e.to_string())?
        .iter()
        .any(|v| !v.is_finite())
    {
        return Err("weight holds inf or NaN".into());
    }
    let axis = match n.op_type.as_str() {
        "Conv" if w.rank() < 3 => return Err("Conv weight of rank < 3".into()),
        "Conv" => Some(0),
        "Gemm" if w.rank() != 2 => return Err("Gemm weight not 2-D".into()),
        "Gemm" => Some(if attr_i(n, "transB", 0) != 0 { 0 } else { 1 }),
        // [K, N]: a scale per column. Batched weights keep one scale.
        _ if w.rank() == 2 => Some(1),
        _ => None,
    };
    Ok(Some(WeightPlan {
        name: name.clone(),
        value: w,
        axis,
    }))
}

/// uint8 scale and zero point for the range [lo, hi] (which holds 0).
fn activation_params(lo: f32, hi: f32) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo) / 255.0;
    if !(scale.is_finite() && scale > 0.0) {
        return (1.0, 0);
    }
    let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

/// Symmetric int8 values and scales of `w`, one scale per index of `axis` (or one).
fn quantize_weight(w: &Tensor, axis: Option<usize>) -> Result<(Vec<i8>, Vec<f32>)> {
    let v = w.to_f32_vec()?;
    let shape = w.shape();
    let (channels, inner) = match axis {
        Some(a) => (shape[a], shape[a + 1..].iter().product::<usize>()),
        None => (1, v.len().max(1)),
    };
    let channel = |i: usize| (i / inner) % channels;
    let mut amax = vec![0f32; channels];
    for (i, x) in v.iter().enumerate() {
        let c = channel(i);
        amax[c] = amax[c].max(x.abs());
    }
    let scales: Vec<f32> = amax
        .iter()
        .map(|&a| if a > 0.0 { a / 127.0 } else { 1.0 })
        .collect();
    let q = v
        .iter()
        .enumerate()
        .map(|(i, x)| (x / scales[channel(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    Ok((q, scales))
}

/// New nodes and initializers, and where the nodes go.
#[derive(Default)]
struct Edits {
    at_start: Vec<NodeProto>,
    after: HashMap<usize, Vec<NodeProto>>,
    before: HashMap<usize, Vec<NodeProto>>,
    inits: Vec<TensorProto>,
}

fn dq_node(
    names: &mut Names,
    base: &str,
    q: &str,
    scale: &str,
    zp: &str,
    axis: Option<usize>,
) -> (NodeProto, String) {
    let out = names.fresh(&format!("{base}_DequantizeLinear_Output"));
    let mut n = node(
        "DequantizeLinear",
        names.fresh(&format!("{base}_DequantizeLinear")),
        &[q, scale, zp],
        &[&out],
    );
    if let Some(a) = axis {
        n.attribute.push(AttributeProto::int("axis", a as i64));
    }
    (n, out)
}

#[allow(clippy::too_many_arguments)]
fn rewrite(
    g: &mut GraphProto,
    plans: Vec<NodePlan>,
    range: &HashMap<String, (f32, f32)>,
    per_channel: bool,
    opts: &StaticOptions,
    names: &mut Names,
    totals: &mut Totals,
    report: &mut StepReport,
) -> Result<()> {
    let mut ed = Edits::default();
    // Readers that keep the float value of a quantized tensor.
    let mut excluded: Vec<bool> = g.node.iter().map(|n| opts.float_reader(n)).collect();

    // Which tensors get a Q/DQ pair: those of plans that can go ahead.
    let mut chosen: Vec<&NodePlan> = Vec::new();
    let mut tensors: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for p in &plans {
        let n = &g.node[p.idx];
        if !per_channel && opts.overrides.get(&n.name) == Some(&StaticOverride::PerChannel) {
            report.kept.push((
                n.name.clone(),
                n.op_type.clone(),
                "per-channel weights are not possible in this model (see the notes)".into(),
            ));
            excluded[p.idx] = true;
            continue;
        }
        let acts: Vec<&String> = p.act_slots.iter().map(|&s| &n.input[s]).collect();
        if p.weight.is_some() || matches!(n.op_type.as_str(), "Conv" | "MatMul" | "Gemm") {
            // An integer kernel needs every operand quantized.
            if let Some(x) = acts.iter().find(|x| !range.contains_key(x.as_str())) {
                report.kept.push((
                    n.name.clone(),
                    n.op_type.clone(),
                    format!("input '{x}' is no float tensor calibration could observe"),
                ));
                continue;
            }
        } else if !acts.iter().any(|x| range.contains_key(x.as_str())) {
            continue;
        }
        chosen.push(p);
        for t in acts.into_iter().chain(&p.outs) {
            if range.contains_key(t) && seen.insert(t.clone()) {
                tensors.push(t.clone());
            }
        }
    }

    let graph_outputs: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let graph_inputs: HashSet<String> = g.input.iter().map(|o| o.name.clone()).collect();
    let mut producer: HashMap<String, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in &n.output {
            producer.insert(o.clone(), i);
        }
    }
    let mut dq_scale: HashMap<String, f32> = HashMap::new();
    for t in &tensors {
        let (lo, hi) = range[t];
        let (scale, zp) = activation_params(lo, hi);
        let p = producer.get(t).copied();
        let as_output = graph_outputs.contains(t) && !graph_inputs.contains(t) && p.is_some();
        let sname = names.fresh(&format!("{t}_scale"));
        let zname = names.fresh(&format!("{t}_zero_point"));
        ed.inits
            .push(tensor_to_proto(&sname, &Tensor::scalar(scale))?);
        ed.inits.push(tensor_to_proto(&zname, &Tensor::scalar(zp))?);
        let qname = names.fresh(&format!("{t}_QuantizeLinear_Output"));
        // A graph output keeps its name on the DQ: the producer writes a new name.
        let (float_in, dq_out) = if as_output {
            (names.fresh(&format!("{t}_QuantizeLinear_Input")), t.clone())
        } else {
            (
                t.clone(),
                names.fresh(&format!("{t}_DequantizeLinear_Output")),
            )
        };
        let q = node(
            "QuantizeLinear",
            names.fresh(&format!("{t}_QuantizeLinear")),
            &[&float_in, &sname, &zname],
            &[&qname],
        );
        let dq = node(
            "DequantizeLinear",
            names.fresh(&format!("{t}_DequantizeLinear")),
            &[&qname, &sname, &zname],
            &[&dq_out],
        );
        for (j, n) in g.node.iter_mut().enumerate() {
            if as_output {
                if Some(j) == p {
                    for o in n.output.iter_mut().filter(|o| *o == t) {
                        o.clone_from(&float_in);
                    }
                }
                // Excluded readers keep the float value.
                if excluded[j] {
                    for x in n.input.iter_mut().filter(|x| *x == t) {
                        x.clone_from(&float_in);
                    }
                }
            } else if !excluded[j] {
                for x in n.input.iter_mut().filter(|x| *x == t) {
                    x.clone_from(&dq_out);
                }
            }
        }
        let place = match p {
            Some(i) => ed.after.entry(i).or_default(),
            None => &mut ed.at_start,
        };
        place.extend([q, dq]);
        dq_scale.insert(dq_out, scale);
    }

    // Weights and biases.
    let mut weight_dq: HashMap<(String, Option<usize>), (String, Vec<f32>)> = HashMap::new();
    for p in chosen {
        let n = &g.node[p.idx];
        let (name, op) = (n.name.clone(), n.op_type.clone());
        let base = if name.is_empty() {
            n.output[0].clone()
        } else {
            name.clone()
        };
        if let Some(w) = &p.weight {
            let axis = w
                .axis
                .filter(|_| per_channel && opts.per_channel_for(&g.node[p.idx]));
            let key = (w.name.clone(), axis);
            if !weight_dq.contains_key(&key) {
                let (q, scales) = quantize_weight(&w.value, axis)?;
                totals.w_bytes_f32 += 4 * q.len();
                totals.w_bytes_i8 += q.len();
                let wq = names.fresh(&format!("{}_quantized", w.name));
                let ws = names.fresh(&format!("{}_scale", w.name));
                let wz = names.fresh(&format!("{}_zero_point", w.name));
                ed.inits.push(tensor_to_proto(
                    &wq,
                    &Tensor::from_vec(w.value.shape().to_vec(), q)?,
                )?);
                let (st, zt) = if axis.is_some() {
                    let len = scales.len();
                    (
                        Tensor::vector(scales.clone()),
                        Tensor::vector(vec![0i8; len]),
                    )
                } else {
                    (Tensor::scalar(scales[0]), Tensor::scalar(0i8))
                };
                ed.inits.push(tensor_to_proto(&ws, &st)?);
                ed.inits.push(tensor_to_proto(&wz, &zt)?);
                let (dq, out) = dq_node(names, &w.name, &wq, &ws, &wz, axis);
                ed.before.entry(p.idx).or_default().push(dq);
                weight_dq.insert(key.clone(), (out, scales));
            }
            let (out, scales) = &weight_dq[&key];
            g.node[p.idx].input[1].clone_from(out);
            if let Some((b, bt)) = &p.bias {
                // Input 0 now reads a DQ output: the scale is that pair's.
                if let Some(&xs) = dq_scale.get(&g.node[p.idx].input[0]) {
                    let bv = bt.to_f32_vec()?;
                    let bscale: Vec<f32> = (0..bv.len())
                        .map(|c| xs * scales[if scales.len() == 1 { 0 } else { c }])
                        .collect();
                    let bq: Vec<i32> = bv
                        .iter()
                        .zip(&bscale)
                        .map(|(v, s)| {
                            (v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32
                        })
                        .collect();
                    let (bqn, bsn, bzn) = (
                        names.fresh(&format!("{b}_quantized")),
                        names.fresh(&format!("{b}_scale")),
                        names.fresh(&format!("{b}_zero_point")),
                    );
                    let len = bq.len();
                    ed.inits.push(tensor_to_proto(&bqn, &Tensor::vector(bq))?);
                    let bias_axis = (axis.is_some() && scales.len() > 1).then_some(0);
                    if bias_axis.is_some() {
                        ed.inits
                            .push(tensor_to_proto(&bsn, &Tensor::vector(bscale))?);
                        ed.inits
                            .push(tensor_to_proto(&bzn, &Tensor::vector(vec![0i32; len]))?);
                    } else {
                        ed.inits
                            .push(tensor_to_proto(&bsn, &Tensor::scalar(bscale[0]))?);
                        ed.inits.push(tensor_to_proto(&bzn, &Tensor::scalar(0i32))?);
                    }
                    let (dq, out) = dq_node(names, &base, &bqn, &bsn, &bzn, bias_axis);
                    ed.before.entry(p.idx).or_default().push(dq);
                    g.node[p.idx].input[2] = out;
                }
            }
        }
        report.changed.push((name, op));
    }
    totals.tensors += tensors.len();

    let old = std::mem::take(&mut g.node);
    let mut out = std::mem::take(&mut ed.at_start);
    for (i, n) in old.into_iter().enumerate() {
        out.extend(ed.before.remove(&i).unwrap_or_default());
        out.push(n);
        out.extend(ed.after.remove(&i).unwrap_or_default());
    }
    g.node = out;
    g.initializer.extend(ed.inits);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::edit::f32_value_info as vi;
    use crate::onnx::encode_model;
    use crate::onnx::proto::OperatorSetId;

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: crate::onnx::proto::AttrType::Ints,
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn opset_11_attributes_become_opset_13_inputs() {
        // x [2, 6] → Unsqueeze(axes 0) → Split(axis 2, split [2, 4]) → ReduceSum(axes 2) each.
        let mut unsq = node("Unsqueeze", "unsq".into(), &["x"], &["u"]);
        unsq.attribute.push(ints("axes", &[0]));
        let mut split = node("Split", "split".into(), &["u"], &["a", "b"]);
        split.attribute.push(ints("split", &[2, 4]));
        split.attribute.push(AttributeProto::int("axis", 2));
        let mut ra = node("ReduceSum", "ra".into(), &["a"], &["ya"]);
        ra.attribute.push(ints("axes", &[2]));
        let mut rb = node("ReduceSum", "rb".into(), &["b"], &["yb"]);
        rb.attribute.push(ints("axes", &[2]));
        let g = GraphProto {
            node: vec![unsq, split, ra, rb],
            input: vec![vi("x", &[2, 6])],
            output: vec![vi("ya", &[1, 2, 1]), vi("yb", &[1, 2, 1])],
            ..Default::default()
        };
        let at = |version| ModelProto {
            ir_version: 7,
            opset_import: vec![OperatorSetId {
                domain: String::new(),
                version,
            }],
            graph: Some(g.clone()),
            ..Default::default()
        };
        let old = at(11);
        let mut new = at(13);
        let ng = new.graph.as_mut().unwrap();
        attrs_to_inputs(ng, &mut Names::of(&g)).unwrap();
        assert!(ng.node.iter().all(|n| n
            .attribute
            .iter()
            .all(|a| a.name != "axes" && a.name != "split")));
        let x = Tensor::from_vec(vec![2, 6], (0..12).map(|i| i as f32).collect()).unwrap();
        let run = |m: &ModelProto| {
            crate::Model::load(&encode_model(m))
                .unwrap()
                .run(&[("x", x.clone())])
                .unwrap()
        };
        let (a, b) = (run(&old), run(&new));
        assert_eq!(a, b);
        assert_eq!(b[0].1.to_f32_vec().unwrap(), [1.0, 13.0]);
    }

    #[test]
    fn batch_norm_folds_into_the_conv_before_it() {
        let t = |name: &str, shape: Vec<usize>, v: Vec<f32>| {
            tensor_to_proto(name, &Tensor::from_vec(shape, v).unwrap()).unwrap()
        };
        let wave = |n: usize, k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect::<Vec<_>>();
        let mut bn = node(
            "BatchNormalization",
            "bn".into(),
            &["c", "s", "b", "mean", "var"],
            &["y"],
        );
        bn.attribute.push(AttributeProto::float("epsilon", 1e-3));
        let g = GraphProto {
            node: vec![
                node("Conv", "conv".into(), &["x", "w", "cb"], &["c"]),
                bn,
                node("Relu", "relu".into(), &["y"], &["z"]),
            ],
            initializer: vec![
                t("w", vec![4, 2, 3, 3], wave(72, 0.37)),
                t("cb", vec![4], vec![0.1, -0.2, 0.3, 0.0]),
                t("s", vec![4], vec![1.5, 0.5, -1.0, 2.0]),
                t("b", vec![4], vec![0.0, 0.1, 0.2, -0.3]),
                t("mean", vec![4], vec![0.2, -0.1, 0.0, 0.4]),
                t("var", vec![4], vec![1.0, 0.25, 4.0, 0.5]),
            ],
            input: vec![vi("x", &[1, 2, 5, 5])],
            output: vec![vi("z", &[1, 4, 3, 3])],
            ..Default::default()
        };
        let model = |g: GraphProto| crate::compress::edit::model_of(g, 17);
        let mut folded = g.clone();
        assert_eq!(
            fold_batch_norms(&mut folded, &StaticOptions::default()).unwrap(),
            1
        );
        let ops: Vec<&str> = folded.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Conv", "Relu"]);
        assert_eq!(folded.initializer.len(), 2, "the old weights are dropped");
        let x = Tensor::from_vec(vec![1, 2, 5, 5], wave(50, 0.91)).unwrap();
        let run = |g: GraphProto| {
            crate::Model::load(&encode_model(&model(g)))
                .unwrap()
                .run(&[("x", x.clone())])
                .unwrap()
                .remove(0)
                .1
                .to_f32_vec()
                .unwrap()
        };
        let (want, got) = (run(g.clone()), run(folded));
        assert!(want.iter().any(|v| *v > 0.1));
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // An excluded BatchNormalization stays.
        let mut kept = g.clone();
        let opts = StaticOptions {
            exclude: vec!["bn".into()],
            ..Default::default()
        };
        assert_eq!(fold_batch_norms(&mut kept, &opts).unwrap(), 0);
        assert_eq!(kept, g);
    }
}
