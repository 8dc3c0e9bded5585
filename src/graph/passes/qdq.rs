//! QDQ fusion: the graph a QDQ quantizer writes computes in float between
//! DequantizeLinear (DQ) and QuantizeLinear (Q) nodes; this pass rewrites those islands
//! into integer ops, the way onnxruntime's QDQ transformer does:
//! - DQ(x), DQ(w) [, bias] → Conv → Q            ⇒ QLinearConv
//! - DQ(a), DQ(b) → MatMul → Q                   ⇒ QLinearMatMul
//! - DQ(a), DQ(b) → MatMul (float output)        ⇒ MatMulIntegerToFloat
//! - DQ(a), DQ(b) [, bias] → Gemm [→ Q]          ⇒ QGemm
//! - DQ(a), DQ(b) → Add | Mul → Q                ⇒ QLinearAdd | QLinearMul
//! - DQ → Sigmoid | LeakyRelu | Softmax | AveragePool | GlobalAveragePool → Q,
//!   DQ… → Concat → Q                             ⇒ the QLinear* op
//! - DQ → MaxPool | Reshape | Transpose | … → Q with the same scale and zero point
//!   ⇒ the op itself on the 8-bit tensor (these ops commute with quantization).
//!
//! Only islands whose scales and zero points are load-time constants are rewritten, with
//! per-tensor activations and per-tensor or per-output-channel weights. Anything else is
//! left alone and still runs correctly: DQ in float, the float op, then Q. The fused ops
//! are built through the op table from the original node's attributes, so they are
//! exactly the ops a QOperator model would contain; an op missing from the table just
//! means no fusion.
//!
//! Runs before constant folding, which would otherwise dequantize constant weights into
//! float tensors and hide the pattern.

use super::fuse::{new_const, Uses};
use crate::error::{Error, Result};
use crate::graph::ops;
use crate::graph::{Graph, Node, NodeCx, Op, ValueId};
use crate::onnx::proto::{AttributeProto, GraphProto, NodeProto};
use crate::tensor::{DType, Tensor};

/// Runs the rewrites; returns the number of islands fused.
pub fn run(g: &mut Graph) -> usize {
    drop_clamps_before_q(g);
    let uses = Uses::new(g);
    let mut producer = vec![None; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &o in n.outputs.iter().flatten() {
            producer[o] = Some(i);
        }
    }
    let mut dead = vec![false; g.nodes.len()];
    let mut fused = 0;
    for i in 0..g.nodes.len() {
        if dead[i] {
            continue;
        }
        let cx = Cx {
            g,
            uses: &uses,
            producer: &producer,
        };
        let Some(rw) = rewrite(&cx, i) else {
            continue;
        };
        if rw.remove.iter().any(|&j| dead[j]) {
            continue;
        }
        let Rewrite {
            op_type,
            domain,
            op,
            inputs,
            output,
            remove,
            consts,
        } = rw;
        let mut inputs = inputs;
        for (slot, t) in consts {
            let name = format!("{}__qdq_{slot}", g.nodes[i].name);
            inputs[slot] = Some(new_const(g, name, t));
        }
        let node = &mut g.nodes[i];
        *node = Node {
            name: node.name.clone(),
            op_type: op_type.to_string(),
            domain: domain.to_string(),
            op,
            inputs,
            outputs: vec![Some(output)],
            implicit_inputs: Vec::new(),
            attrs: Vec::new(),
            opset: node.opset,
        };
        for j in remove {
            dead[j] = true;
        }
        fused += 1;
    }
    let mut k = dead.into_iter();
    g.nodes.retain(|_| !k.next().unwrap_or(false));
    fused
}

/// Relu or Clip whose only reader is a Q that saturates at least as tightly does
/// nothing: Q(relu(x)) = max(Q(x), Q(0)) and Q(0) = zp ≤ every output when zp is the
/// type's minimum (likewise for Clip's limits). Such clamps sit between a quantized op
/// and its Q in QDQ models (ORT removes them the same way); dropping them lets the op
/// fuse.
fn drop_clamps_before_q(g: &mut Graph) {
    let uses = Uses::new(g);
    let mut dropped = Vec::new();
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        if !n.domain.is_empty() || !matches!(n.op_type.as_str(), "Relu" | "Clip") {
            continue;
        }
        let (Some(Some(x)), Some(Some(y))) = (n.inputs.first(), n.outputs.first()) else {
            continue;
        };
        let (x, y) = (*x, *y);
        let Some(j) = uses.single(y) else { continue };
        let q = &g.nodes[j];
        if q.op_type != "QuantizeLinear" || q.inputs.first().copied().flatten() != Some(y) {
            continue;
        }
        let Some(qy) = q.outputs.first().copied().flatten() else {
            continue;
        };
        let Some(dt) = g.values[qy].fact.dtype else {
            continue;
        };
        let Some(p) = params(g, q, qy, dt).filter(activation_ok) else {
            continue;
        };
        let (qmin, qmax) = if dt == DType::U8 {
            (0, 255)
        } else {
            (-128, 127)
        };
        let lo = (qmin - p.zp(0)) as f32 * p.scales[0];
        let hi = (qmax - p.zp(0)) as f32 * p.scales[0];
        let (cmin, cmax) = if n.op_type == "Relu" {
            (0.0, f32::INFINITY)
        } else {
            let lim = |k: usize, attr: &str, dflt: f32| -> Option<f32> {
                match n.inputs.get(k).copied().flatten() {
                    Some(v) => g.const_tensor(v)?.to_f32_vec().ok()?.first().copied(),
                    None => Some(attr_f(n, attr).unwrap_or(dflt)),
                }
            };
            match (
                lim(1, "min", f32::NEG_INFINITY),
                lim(2, "max", f32::INFINITY),
            ) {
                (Some(a), Some(b)) => (a, b),
                _ => continue,
            }
        };
        if lo >= cmin && hi <= cmax {
            g.nodes[j].inputs[0] = Some(x);
            dropped.push(i);
        }
    }
    let mut k = 0..;
    g.nodes
        .retain(|_| !dropped.contains(&k.next().unwrap_or(usize::MAX)));
}

struct Cx<'a> {
    g: &'a Graph,
    uses: &'a Uses,
    producer: &'a [Option<usize>],
}

/// A replacement for node i: the new op, its inputs (slots listed in `consts` get new
/// constants), its single output, and the nodes it absorbs (the trailing Q).
struct Rewrite {
    op_type: &'static str,
    domain: &'static str,
    op: Box<dyn Op>,
    inputs: Vec<Option<ValueId>>,
    output: ValueId,
    remove: Vec<usize>,
    consts: Vec<(usize, Tensor)>,
}

/// The quantized side of a DQ or Q node: the 8-bit value and its constant parameters.
#[derive(Clone, Debug)]
struct QParams {
    /// The 8-bit value (DQ's input, or Q's output).
    q: ValueId,
    scale: ValueId,
    /// None where the model omits the zero point (0 of the 8-bit type).
    zp: Option<ValueId>,
    dtype: DType,
    scales: Vec<f32>,
    zps: Vec<i64>,
    axis: i64,
}

impl QParams {
    fn per_tensor(&self) -> bool {
        self.scales.len() == 1 && self.zps.len() <= 1
    }
    fn zp(&self, i: usize) -> i64 {
        match self.zps.len() {
            0 => 0,
            1 => self.zps[0],
            _ => self.zps.get(i).copied().unwrap_or(0),
        }
    }
    fn same_as(&self, o: &QParams) -> bool {
        self.dtype == o.dtype
            && self.per_tensor()
            && o.per_tensor()
            && self.scales == o.scales
            && self.zp(0) == o.zp(0)
    }
}

fn attr_i(n: &Node, name: &str) -> Option<i64> {
    n.attrs.iter().find(|a| a.name == name).map(|a| a.i)
}

fn attr_f(n: &Node, name: &str) -> Option<f32> {
    n.attrs.iter().find(|a| a.name == name).map(|a| a.f)
}

fn is_const(g: &Graph, v: ValueId) -> bool {
    g.const_tensor(v).is_some() && !g.inputs.contains(&v)
}

/// Scale and zero point of a DQ/Q node, if both are constants of a supported kind.
fn params(g: &Graph, n: &Node, q: ValueId, dtype: DType) -> Option<QParams> {
    if !matches!(dtype, DType::U8 | DType::I8 | DType::I32) {
        return None;
    }
    if attr_i(n, "block_size").unwrap_or(0) != 0 {
        return None;
    }
    let scale = n.inputs.get(1).copied().flatten()?;
    let st = g.const_tensor(scale).filter(|_| is_const(g, scale))?;
    if st.dtype() != DType::F32 || st.rank() > 1 {
        return None;
    }
    let zp = n.inputs.get(2).copied().flatten();
    let zps = match zp {
        Some(z) => {
            let zt = g.const_tensor(z).filter(|_| is_const(g, z))?;
            if zt.dtype() != dtype || zt.len() != st.len() {
                return None;
            }
            zt.to_i64_vec().ok()?
        }
        None => Vec::new(),
    };
    Some(QParams {
        q,
        scale,
        zp,
        dtype,
        scales: st.as_slice::<f32>().ok()?.to_vec(),
        zps,
        axis: attr_i(n, "axis").unwrap_or(1),
    })
}

/// The DQ node producing float value `v`, as parameters of its 8-bit input.
fn dq(cx: &Cx, v: Option<ValueId>) -> Option<QParams> {
    let p = (*cx.producer.get(v?)?)?;
    let n = &cx.g.nodes[p];
    if n.op_type != "DequantizeLinear" {
        return None;
    }
    let x = n.inputs.first().copied().flatten()?;
    let dt = cx.g.values[x].fact.dtype?;
    params(cx.g, n, x, dt)
}

/// The single Q node reading float value `v`: its index and output parameters.
fn q_after(cx: &Cx, v: ValueId) -> Option<(usize, QParams)> {
    let j = cx.uses.single(v)?;
    let n = &cx.g.nodes[j];
    if n.op_type != "QuantizeLinear" || n.inputs.first().copied().flatten() != Some(v) {
        return None;
    }
    if attr_i(n, "saturate").unwrap_or(1) != 1 {
        return None;
    }
    let y = n.outputs.first().copied().flatten()?;
    let dt = cx.g.values[y].fact.dtype?;
    if !matches!(dt, DType::U8 | DType::I8) {
        return None;
    }
    let p = params(cx.g, n, y, dt)?;
    p.per_tensor().then_some((j, p))
}

/// Parses `op_type` through the op table as if a model had written it.
fn make_op(
    domain: &str,
    op_type: &str,
    opset: i64,
    attrs: Vec<AttributeProto>,
    inputs: &[Option<ValueId>],
    consts: &[(usize, Tensor)],
) -> Option<Box<dyn Op>> {
    let def = ops::lookup(domain, op_type)?;
    // Parsers may look at which inputs are present; slots filled by new constants are.
    let present = |k: usize| inputs[k].is_some() || consts.iter().any(|(s, _)| *s == k);
    let nd = NodeProto {
        input: (0..inputs.len())
            .map(|k| {
                if present(k) {
                    format!("in{k}")
                } else {
                    String::new()
                }
            })
            .collect(),
        output: vec!["y".into()],
        name: String::new(),
        op_type: op_type.into(),
        domain: domain.into(),
        attribute: attrs,
    };
    let mut no_subgraphs =
        |_: &GraphProto| -> Result<Graph> { Err(Error::invalid_model("unexpected subgraph")) };
    let mut ncx = NodeCx::new(&nd, opset, &mut no_subgraphs);
    let op = (def.parse)(&mut ncx).ok()?;
    ncx.finish().ok()?;
    Some(op)
}

/// Zero-point operand: the DQ/Q's own, or a new constant 0 of the 8-bit type.
fn zp_input(
    p: &QParams,
    slot: usize,
    inputs: &mut Vec<Option<ValueId>>,
    consts: &mut Vec<(usize, Tensor)>,
) {
    match p.zp {
        Some(z) => inputs.push(Some(z)),
        None => {
            inputs.push(None);
            let t = match p.dtype {
                DType::I8 => Tensor::scalar(0i8),
                _ => Tensor::scalar(0u8),
            };
            consts.push((slot, t));
        }
    }
}

/// Adds (q, scale, zp) operands.
fn push_q(p: &QParams, inputs: &mut Vec<Option<ValueId>>, consts: &mut Vec<(usize, Tensor)>) {
    inputs.push(Some(p.q));
    inputs.push(Some(p.scale));
    let slot = inputs.len();
    zp_input(p, slot, inputs, consts);
}

/// Checks the weight quantization: per tensor, or per channel along `axis` (of a
/// weight of rank `rank`) with `channels` values.
fn weight_ok(w: &QParams, rank: usize, axis: usize, channels: usize) -> bool {
    if !matches!(w.dtype, DType::U8 | DType::I8) {
        return false;
    }
    if w.per_tensor() {
        return true;
    }
    let ax = if w.axis < 0 {
        w.axis + rank as i64
    } else {
        w.axis
    };
    ax == axis as i64 && w.scales.len() == channels
}

fn activation_ok(p: &QParams) -> bool {
    matches!(p.dtype, DType::U8 | DType::I8) && p.per_tensor()
}

/// The float bias of a Conv/Gemm (a constant or DQ of a constant), requantized to i32
/// with scale x_scale·w_scale[c], as the integer kernels add it to their accumulators.
fn int_bias(
    cx: &Cx,
    b: ValueId,
    x: &QParams,
    w: &QParams,
    channels: usize,
    alpha: f32,
) -> Option<Tensor> {
    let bf: Vec<f32> = if let Some(d) = dq(cx, Some(b)) {
        let bt = cx.g.const_tensor(d.q).filter(|_| is_const(cx.g, d.q))?;
        let bq = bt.to_i64_vec().ok()?;
        if !d.per_tensor() && d.scales.len() != bq.len() {
            return None;
        }
        bq.iter()
            .enumerate()
            .map(|(i, &q)| {
                let s = if d.scales.len() == 1 {
                    d.scales[0]
                } else {
                    d.scales[i]
                };
                (q - d.zp(i)) as f32 * s
            })
            .collect()
    } else {
        let bt = cx.g.const_tensor(b).filter(|_| is_const(cx.g, b))?;
        bt.as_slice::<f32>().ok()?.to_vec()
    };
    if bf.len() != channels {
        return None;
    }
    let xs = x.scales[0] * alpha;
    let v: Vec<i32> = bf
        .iter()
        .enumerate()
        .map(|(c, &b)| {
            let ws = if w.scales.len() == 1 {
                w.scales[0]
            } else {
                w.scales[c]
            };
            let s = xs * ws;
            if s == 0.0 {
                0
            } else {
                (b / s)
                    .round_ties_even()
                    .clamp(i32::MIN as f32, i32::MAX as f32) as i32
            }
        })
        .collect();
    Some(Tensor::vector(v))
}

fn rewrite(cx: &Cx, i: usize) -> Option<Rewrite> {
    let n = &cx.g.nodes[i];
    if !n.domain.is_empty() || n.outputs.len() != 1 {
        return None;
    }
    let y = n.outputs[0]?;
    let input = |k: usize| n.inputs.get(k).copied().flatten();
    match n.op_type.as_str() {
        "Conv" => conv(cx, i),
        "MatMul" => matmul(cx, i),
        "Gemm" => gemm(cx, i),
        "Add" | "Mul" => {
            let a = dq(cx, input(0)).filter(activation_ok)?;
            let b = dq(cx, input(1)).filter(activation_ok)?;
            let (j, out) = q_after(cx, y)?;
            if a.dtype != out.dtype || b.dtype != out.dtype {
                return None;
            }
            let (mut inputs, mut consts) = (Vec::new(), Vec::new());
            push_q(&a, &mut inputs, &mut consts);
            push_q(&b, &mut inputs, &mut consts);
            push_scale_zp(&out, &mut inputs, &mut consts);
            let name = if n.op_type == "Add" {
                "QLinearAdd"
            } else {
                "QLinearMul"
            };
            finish(name, Vec::new(), 1, inputs, consts, out, j)
        }
        "Sigmoid" | "LeakyRelu" | "GlobalAveragePool" | "AveragePool" | "Softmax" => {
            let x = dq(cx, input(0)).filter(activation_ok)?;
            let (j, out) = q_after(cx, y)?;
            if x.dtype != out.dtype {
                return None;
            }
            let (mut inputs, mut consts) = (Vec::new(), Vec::new());
            push_q(&x, &mut inputs, &mut consts);
            push_scale_zp(&out, &mut inputs, &mut consts);
            let (name, attrs) = match n.op_type.as_str() {
                "Sigmoid" => ("QLinearSigmoid", Vec::new()),
                "LeakyRelu" => (
                    "QLinearLeakyRelu",
                    vec![AttributeProto::float(
                        "alpha",
                        attr_f(n, "alpha").unwrap_or(0.01),
                    )],
                ),
                "GlobalAveragePool" => (
                    "QLinearGlobalAveragePool",
                    vec![AttributeProto::int("channels_last", 0)],
                ),
                "AveragePool" => {
                    let mut a = n.attrs.clone();
                    a.push(AttributeProto::int("channels_last", 0));
                    ("QLinearAveragePool", a)
                }
                _ => {
                    let default_axis = if n.opset >= 13 { -1 } else { 1 };
                    let axis = attr_i(n, "axis").unwrap_or(default_axis);
                    (
                        "QLinearSoftmax",
                        vec![
                            AttributeProto::int("axis", axis),
                            AttributeProto::int("opset", n.opset),
                        ],
                    )
                }
            };
            finish(name, attrs, 1, inputs, consts, out, j)
        }
        "Concat" => {
            let (j, out) = q_after(cx, y)?;
            let (mut inputs, mut consts) = (Vec::new(), Vec::new());
            push_scale_zp(&out, &mut inputs, &mut consts);
            for k in 0..n.inputs.len() {
                let x = dq(cx, input(k)).filter(activation_ok)?;
                if x.dtype != out.dtype {
                    return None;
                }
                push_q(&x, &mut inputs, &mut consts);
            }
            let attrs = vec![AttributeProto::int("axis", attr_i(n, "axis")?)];
            finish("QLinearConcat", attrs, 1, inputs, consts, out, j)
        }
        "MaxPool" | "Reshape" | "Transpose" | "Flatten" | "Squeeze" | "Unsqueeze" | "Slice"
        | "Gather" | "DepthToSpace" | "SpaceToDepth" => {
            // Data movement (and max) commutes with a monotonic per-tensor quantization
            // when input and output share their parameters.
            if n.op_type == "MaxPool" && attr_i(n, "storage_order").unwrap_or(0) != 0 {
                return None;
            }
            let x = dq(cx, input(0)).filter(activation_ok)?;
            let (j, out) = q_after(cx, y)?;
            if !x.same_as(&out) {
                return None;
            }
            let mut inputs = n.inputs.clone();
            inputs[0] = Some(x.q);
            let op = make_op("", &n.op_type, n.opset, n.attrs.clone(), &inputs, &[])?;
            Some(Rewrite {
                op_type: static_name(&n.op_type)?,
                domain: "",
                op,
                inputs,
                output: out.q,
                remove: vec![j],
                consts: Vec::new(),
            })
        }
        _ => None,
    }
}

fn static_name(s: &str) -> Option<&'static str> {
    [
        "MaxPool",
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Gather",
        "DepthToSpace",
        "SpaceToDepth",
    ]
    .into_iter()
    .find(|n| *n == s)
}

/// Adds an output (scale, zp) pair.
fn push_scale_zp(
    p: &QParams,
    inputs: &mut Vec<Option<ValueId>>,
    consts: &mut Vec<(usize, Tensor)>,
) {
    inputs.push(Some(p.scale));
    let slot = inputs.len();
    zp_input(p, slot, inputs, consts);
}

/// A com.microsoft (or, for QLinearConv/QLinearMatMul, standard) replacement that
/// absorbs the Q node `j`.
fn finish(
    name: &'static str,
    attrs: Vec<AttributeProto>,
    opset: i64,
    inputs: Vec<Option<ValueId>>,
    consts: Vec<(usize, Tensor)>,
    out: QParams,
    j: usize,
) -> Option<Rewrite> {
    let domain = if matches!(name, "QLinearConv" | "QLinearMatMul") {
        ""
    } else {
        "com.microsoft"
    };
    let op = make_op(domain, name, opset, attrs, &inputs, &consts)?;
    Some(Rewrite {
        op_type: name,
        domain,
        op,
        inputs,
        output: out.q,
        remove: vec![j],
        consts,
    })
}

fn conv(cx: &Cx, i: usize) -> Option<Rewrite> {
    let n = &cx.g.nodes[i];
    let input = |k: usize| n.inputs.get(k).copied().flatten();
    let x = dq(cx, input(0)).filter(activation_ok)?;
    let w = dq(cx, input(1))?;
    let wt = cx.g.const_tensor(w.q).filter(|_| is_const(cx.g, w.q))?;
    let m = *wt.shape().first()?;
    if !weight_ok(&w, wt.rank(), 0, m) {
        return None;
    }
    let (j, out) = q_after(cx, n.outputs[0]?)?;
    if x.dtype != out.dtype {
        return None;
    }
    let (mut inputs, mut consts) = (Vec::new(), Vec::new());
    push_q(&x, &mut inputs, &mut consts);
    push_q(&w, &mut inputs, &mut consts);
    push_scale_zp(&out, &mut inputs, &mut consts);
    if let Some(b) = input(2) {
        consts.push((8, int_bias(cx, b, &x, &w, m, 1.0)?));
        inputs.push(None);
    }
    let attrs = n.attrs.clone();
    finish(
        "QLinearConv",
        attrs,
        n.opset.max(10),
        inputs,
        consts,
        out,
        j,
    )
}

fn matmul(cx: &Cx, i: usize) -> Option<Rewrite> {
    let n = &cx.g.nodes[i];
    let input = |k: usize| n.inputs.get(k).copied().flatten();
    let a = dq(cx, input(0)).filter(activation_ok)?;
    let b = dq(cx, input(1))?;
    let bt = cx.g.const_tensor(b.q).filter(|_| is_const(cx.g, b.q))?;
    if bt.rank() != 2 || !weight_ok(&b, 2, 1, bt.shape()[1]) {
        return None;
    }
    let (mut inputs, mut consts) = (Vec::new(), Vec::new());
    match q_after(cx, n.outputs[0]?) {
        Some((j, out)) if out.dtype == a.dtype => {
            push_q(&a, &mut inputs, &mut consts);
            push_q(&b, &mut inputs, &mut consts);
            push_scale_zp(&out, &mut inputs, &mut consts);
            finish(
                "QLinearMatMul",
                Vec::new(),
                n.opset.max(10),
                inputs,
                consts,
                out,
                j,
            )
        }
        Some(_) => None,
        None => {
            // Float output: A, B, a_scale, b_scale, a_zp, b_zp.
            inputs.extend([Some(a.q), Some(b.q), Some(a.scale), Some(b.scale)]);
            zp_input(&a, 4, &mut inputs, &mut consts);
            zp_input(&b, 5, &mut inputs, &mut consts);
            let op = make_op(
                "com.microsoft",
                "MatMulIntegerToFloat",
                1,
                Vec::new(),
                &inputs,
                &consts,
            )?;
            Some(Rewrite {
                op_type: "MatMulIntegerToFloat",
                domain: "com.microsoft",
                op,
                inputs,
                output: n.outputs[0]?,
                remove: Vec::new(),
                consts,
            })
        }
    }
}

fn gemm(cx: &Cx, i: usize) -> Option<Rewrite> {
    let n = &cx.g.nodes[i];
    let input = |k: usize| n.inputs.get(k).copied().flatten();
    if attr_f(n, "beta").unwrap_or(1.0) != 1.0 {
        return None;
    }
    let a = dq(cx, input(0)).filter(activation_ok)?;
    let b = dq(cx, input(1))?;
    let bt = cx.g.const_tensor(b.q).filter(|_| is_const(cx.g, b.q))?;
    if bt.rank() != 2 {
        return None;
    }
    let trans_b = attr_i(n, "transB").unwrap_or(0) != 0;
    let channels = if trans_b {
        bt.shape()[0]
    } else {
        bt.shape()[1]
    };
    if !weight_ok(&b, 2, if trans_b { 0 } else { 1 }, channels) {
        return None;
    }
    let q = q_after(cx, n.outputs[0]?);
    if q.as_ref().is_some_and(|(_, o)| o.dtype != a.dtype) {
        return None;
    }
    let (mut inputs, mut consts) = (Vec::new(), Vec::new());
    push_q(&a, &mut inputs, &mut consts);
    push_q(&b, &mut inputs, &mut consts);
    match input(2) {
        Some(c) => {
            // QGemm's C is int32 with scale alpha·a_scale·b_scale.
            let alpha = attr_f(n, "alpha").unwrap_or(1.0);
            consts.push((6, int_bias(cx, c, &a, &b, channels, alpha)?));
            inputs.push(None);
        }
        None => inputs.push(None),
    }
    let output = match &q {
        Some((_, out)) => {
            push_scale_zp(out, &mut inputs, &mut consts);
            out.q
        }
        None => n.outputs[0]?,
    };
    let attrs: Vec<_> = n
        .attrs
        .iter()
        .filter(|a| a.name != "beta")
        .cloned()
        .collect();
    let op = make_op("com.microsoft", "QGemm", 1, attrs, &inputs, &consts)?;
    Some(Rewrite {
        op_type: "QGemm",
        domain: "com.microsoft",
        op,
        inputs,
        output,
        remove: q.map(|(j, _)| vec![j]).unwrap_or_default(),
        consts,
    })
}
