//! Dynamic int8 quantization: weights are quantized once, here, and activations at run
//! time by `DynamicQuantizeLinear`. MatMul, Gemm and Conv whose weight is a constant
//! (initializer or Constant node) become `MatMulInteger` / `ConvInteger` on 8-bit
//! operands, then a Cast and a Mul by the product of the two scales (and the bias Add).
//! The result is standard ONNX (opset ≥ 11) that onnxruntime runs too: the same layout
//! as onnxruntime's `quantize_dynamic`, written from the ONNX operator specs.
//!
//! Weights are per output channel by default (a column of a MatMul weight, an output
//! channel of a Conv): per-tensor int8 wrecks models such as PP-OCR rec, where channel
//! ranges differ by orders of magnitude.

use super::edit::{attr_f, attr_i, default_opset, node, rewrite_nodes, Constants, Emitted, Names};
use super::StepReport;
use crate::error::{Error, Result};
use crate::onnx::encode::tensor_to_proto;
use crate::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;

/// The 8-bit type of the quantized weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    /// Signed, symmetric (zero point 0, range ±127).
    Int8,
    /// Unsigned, asymmetric (a zero point per channel): onnxruntime's ConvInteger only
    /// takes uint8 weights, so Conv always uses this.
    UInt8,
}

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// One scale per output channel (default) or one per tensor.
    pub per_channel: bool,
    pub weight_type: WeightType,
    /// Node names or op types to keep float.
    pub exclude: Vec<String>,
    /// Weights with fewer elements stay float: the added nodes would cost more than the
    /// bytes saved.
    pub min_elements: usize,
    /// `per_channel` of its own for some nodes (by name): the accuracy guard's back-off.
    pub overrides: HashMap<String, bool>,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            per_channel: true,
            weight_type: WeightType::Int8,
            exclude: Vec::new(),
            min_elements: 256,
            overrides: HashMap::new(),
        }
    }
}

/// Quantizes the weights of `m`'s MatMul, Gemm and Conv nodes in place (subgraphs too).
pub fn quantize_dynamic(m: &mut ModelProto, opts: &QuantizeOptions) -> Result<StepReport> {
    let opset = default_opset(m);
    let graph = m
        .graph
        .as_mut()
        .ok_or_else(|| Error::invalid_model("the model has no graph"))?;
    let mut report = StepReport::new("int8 dynamic");
    if opset < 11 {
        // DynamicQuantizeLinear arrived in opset 11.
        report.kept.push((
            String::new(),
            String::new(),
            format!("opset {opset} < 11 has no DynamicQuantizeLinear: upgrade the model first"),
        ));
        return Ok(report);
    }
    let mut names = Names::of(graph);
    quantize_graph(graph, opts, &mut names, &mut report)?;
    Ok(report)
}

/// A [rows, cols] f32 weight quantized per column (or as a whole): values, scales, zero
/// points. Scales are chosen so the largest magnitude maps to the end of the range.
struct QuantWeight {
    values: Tensor,
    scale: Vec<f32>,
    zero_point: Tensor,
}

/// Quantizes `w` seen as `groups` channels of `len` values each, channel `c`'s values at
/// `index(c, j)`. Returns the 8-bit values in `w`'s order.
fn quantize_channels(
    w: &[f32],
    groups: usize,
    len: usize,
    index: impl Fn(usize, usize) -> usize,
    wt: WeightType,
) -> Result<(Vec<f32>, Vec<i64>, Vec<i64>)> {
    // f32::min/max skip NaN, so check first: a NaN weight would quantize silently.
    if w.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid_model("a weight holds inf or NaN"));
    }
    let mut q = vec![0i64; w.len()];
    let mut scales = Vec::with_capacity(groups);
    let mut zps = Vec::with_capacity(groups);
    for c in 0..groups {
        let vals = (0..len).map(|j| w[index(c, j)]);
        let (lo, hi) = vals.fold((0f32, 0f32), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (scale, zp) = match wt {
            WeightType::Int8 => (hi.max(-lo) / 127.0, 0i64),
            WeightType::UInt8 => {
                let s = (hi - lo) / 255.0;
                let zp = if s > 0.0 { (-lo / s).round() as i64 } else { 0 };
                (s, zp.clamp(0, 255))
            }
        };
        let scale = if scale > 0.0 { scale } else { 1.0 };
        let (qmin, qmax) = match wt {
            WeightType::Int8 => (-127, 127),
            WeightType::UInt8 => (0, 255),
        };
        for j in 0..len {
            let i = index(c, j);
            q[i] = ((w[i] / scale).round() as i64 + zp).clamp(qmin, qmax);
        }
        scales.push(scale);
        zps.push(zp);
    }
    Ok((scales, zps, q))
}

fn to_8bit(v: &[i64], shape: Vec<usize>, wt: WeightType) -> Result<Tensor> {
    match wt {
        WeightType::Int8 => Tensor::from_vec(shape, v.iter().map(|&x| x as i8).collect::<Vec<_>>()),
        WeightType::UInt8 => {
            Tensor::from_vec(shape, v.iter().map(|&x| x as u8).collect::<Vec<_>>())
        }
    }
}

/// A MatMul weight [K, N]: per column n (N channels of K values).
fn quantize_matmul_weight(w: &Tensor, opts: &QuantizeOptions) -> Result<QuantWeight> {
    let (k, n) = (w.shape()[0], w.shape()[1]);
    let data = w.to_f32_vec()?;
    let (scale, zp, q) = if opts.per_channel {
        quantize_channels(&data, n, k, |c, j| j * n + c, opts.weight_type)?
    } else {
        quantize_channels(&data, 1, k * n, |_, j| j, opts.weight_type)?
    };
    let zp_len = zp.len();
    Ok(QuantWeight {
        values: to_8bit(&q, vec![k, n], opts.weight_type)?,
        scale,
        zero_point: to_8bit(
            &zp,
            if opts.per_channel {
                vec![zp_len]
            } else {
                vec![]
            },
            opts.weight_type,
        )?,
    })
}

/// A Conv weight [M, C/g, kh, kw…]: a scale per output channel m, and one zero point.
/// onnxruntime's ConvInteger takes only uint8 weights with a single zero point, so the
/// weights are symmetric int8 shifted by 128: per-channel scales (applied after the
/// integer convolution) with a per-tensor zero point of 128.
fn quantize_conv_weight(w: &Tensor, opts: &QuantizeOptions) -> Result<QuantWeight> {
    let m = w.shape()[0];
    let len = w.len() / m.max(1);
    let data = w.to_f32_vec()?;
    let (scale, _, q) = if opts.per_channel {
        quantize_channels(&data, m, len, |c, j| c * len + j, WeightType::Int8)?
    } else {
        quantize_channels(&data, 1, m * len, |_, j| j, WeightType::Int8)?
    };
    let shifted: Vec<i64> = q.iter().map(|v| v + 128).collect();
    Ok(QuantWeight {
        values: to_8bit(&shifted, w.shape().to_vec(), WeightType::UInt8)?,
        scale,
        zero_point: to_8bit(&[128], vec![], WeightType::UInt8)?,
    })
}

fn quantize_graph(
    g: &mut GraphProto,
    opts: &QuantizeOptions,
    names: &mut Names,
    report: &mut StepReport,
) -> Result<()> {
    rewrite_nodes(
        g,
        &mut |consts, n| {
            let candidate = n.domain.is_empty()
                && matches!(n.op_type.as_str(), "MatMul" | "Gemm" | "Conv" | "Gather");
            let excluded = opts.exclude.iter().any(|e| *e == n.name || *e == n.op_type);
            if candidate {
                plan_node(consts, n, opts, excluded)
            } else {
                Ok(None)
            }
        },
        &mut |n, w, out, inits| {
            if n.op_type == "Gather" {
                emit_gather(&n, w, names, out, inits)?;
            } else {
                emit(&n, w, opts, names, out, inits)?;
            }
            Ok(Emitted::Changed)
        },
        report,
    )
}

/// The weight to quantize, or Ok(None) for a node that is no candidate at all (its weight
/// is not constant), or Err(reason) to report it kept float.
fn plan_node(
    consts: &Constants,
    n: &NodeProto,
    opts: &QuantizeOptions,
    excluded: bool,
) -> std::result::Result<Option<Tensor>, String> {
    // The weight: input 1, or for Gather the table it gathers from (input 0).
    let wi = usize::from(n.op_type != "Gather");
    let Some(wname) = n.input.get(wi) else {
        return Ok(None);
    };
    let Some(w) = consts.get(wname) else {
        return Ok(None);
    };
    if excluded {
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
    match n.op_type.as_str() {
        "MatMul" if w.rank() != 2 => Err(format!(
            "weight of rank {} (only 2-D is quantized)",
            w.rank()
        )),
        "Gemm" => {
            if attr_i(n, "transA", 0) != 0 {
                return Err("Gemm with transA".into());
            }
            if attr_f(n, "alpha", 1.0) != 1.0 || attr_f(n, "beta", 1.0) != 1.0 {
                return Err("Gemm with alpha or beta other than 1".into());
            }
            if w.rank() != 2 {
                return Err("Gemm weight not 2-D".into());
            }
            Ok(Some(w))
        }
        "Conv" if w.rank() < 3 => Err("Conv weight of rank < 3".into()),
        "Gather" if w.rank() != 2 => Err(format!("Gather table of rank {}", w.rank())),
        _ => Ok(Some(w)),
    }
}

fn transpose2(w: &Tensor) -> Result<Tensor> {
    let (r, c) = (w.shape()[0], w.shape()[1]);
    let v = w.to_f32_vec()?;
    let mut t = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = v[i * c + j];
        }
    }
    Tensor::from_vec(vec![c, r], t)
}

/// Replaces `n` with DynamicQuantizeLinear → MatMulInteger/ConvInteger → Cast → Mul
/// (→ Add for a bias), writing to `n`'s output.
fn emit(
    n: &NodeProto,
    w: Tensor,
    opts: &QuantizeOptions,
    names: &mut Names,
    out: &mut Vec<NodeProto>,
    inits: &mut Vec<TensorProto>,
) -> Result<()> {
    let node_opts;
    let opts = match opts.overrides.get(&n.name) {
        Some(&per_channel) => {
            node_opts = QuantizeOptions {
                per_channel,
                exclude: Vec::new(),
                overrides: HashMap::new(),
                ..opts.clone()
            };
            &node_opts
        }
        None => opts,
    };
    let base = if n.name.is_empty() {
        n.output[0].clone()
    } else {
        n.name.clone()
    };
    let is_conv = n.op_type == "Conv";
    let rank = w.rank();
    let (qw, scale_shape) = if is_conv {
        let q = quantize_conv_weight(&w, opts)?;
        // Broadcast over [N, M, spatial…]: [M, 1, 1…].
        let mut s = vec![q.scale.len()];
        s.extend(std::iter::repeat_n(1, rank - 2));
        (q, s)
    } else {
        let w = if n.op_type == "Gemm" && attr_i(n, "transB", 0) != 0 {
            transpose2(&w)?
        } else {
            w
        };
        let q = quantize_matmul_weight(&w, opts)?;
        let len = q.scale.len();
        (q, if opts.per_channel { vec![len] } else { vec![] })
    };
    let wq = names.fresh(&format!("{base}_W_quantized"));
    let wzp = names.fresh(&format!("{base}_W_zero_point"));
    let wscale = names.fresh(&format!("{base}_W_scale"));
    inits.push(tensor_to_proto(&wq, &qw.values)?);
    inits.push(tensor_to_proto(&wzp, &qw.zero_point)?);
    inits.push(tensor_to_proto(
        &wscale,
        &Tensor::from_vec(scale_shape, qw.scale)?,
    )?);

    let x = &n.input[0];
    let (xq, xs, xzp) = (
        names.fresh(&format!("{base}_X_quantized")),
        names.fresh(&format!("{base}_X_scale")),
        names.fresh(&format!("{base}_X_zero_point")),
    );
    out.push(node(
        "DynamicQuantizeLinear",
        names.fresh(&format!("{base}_quantize_input")),
        &[x],
        &[&xq, &xs, &xzp],
    ));
    let acc = names.fresh(&format!("{base}_int32"));
    let mut int_op = node(
        if is_conv {
            "ConvInteger"
        } else {
            "MatMulInteger"
        },
        names.fresh(&format!("{base}_integer")),
        &[&xq, &wq, &xzp, &wzp],
        &[&acc],
    );
    if is_conv {
        // ConvInteger takes Conv's geometry attributes as they are.
        int_op.attribute = n
            .attribute
            .iter()
            .filter(|a| {
                matches!(
                    a.name.as_str(),
                    "auto_pad" | "dilations" | "group" | "kernel_shape" | "pads" | "strides"
                )
            })
            .cloned()
            .collect();
    }
    out.push(int_op);
    let accf = names.fresh(&format!("{base}_int32_as_float"));
    let mut cast = node(
        "Cast",
        names.fresh(&format!("{base}_cast")),
        &[&acc],
        &[&accf],
    );
    cast.attribute
        .push(AttributeProto::int("to", DType::F32.to_onnx() as i64));
    out.push(cast);
    let scale = names.fresh(&format!("{base}_scale"));
    out.push(node(
        "Mul",
        names.fresh(&format!("{base}_scales")),
        &[&xs, &wscale],
        &[&scale],
    ));
    let bias = n.input.get(2).filter(|b| !b.is_empty());
    let y = &n.output[0];
    match bias {
        None => out.push(node(
            "Mul",
            names.fresh(&format!("{base}_rescale")),
            &[&accf, &scale],
            &[y],
        )),
        Some(b) => {
            let scaled = names.fresh(&format!("{base}_rescaled"));
            out.push(node(
                "Mul",
                names.fresh(&format!("{base}_rescale")),
                &[&accf, &scale],
                &[&scaled],
            ));
            let b = if is_conv {
                // Conv's bias is [M]: reshape to [M, 1, 1…] for the NCHW output.
                let shape = names.fresh(&format!("{base}_bias_shape"));
                let mut dims = vec![-1i64];
                dims.extend(std::iter::repeat_n(1, rank - 2));
                inits.push(tensor_to_proto(&shape, &Tensor::vector(dims))?);
                let r = names.fresh(&format!("{base}_bias_reshaped"));
                out.push(node(
                    "Reshape",
                    names.fresh(&format!("{base}_bias_reshape")),
                    &[b, &shape],
                    &[&r],
                ));
                r
            } else {
                b.clone()
            };
            out.push(node(
                "Add",
                names.fresh(&format!("{base}_bias_add")),
                &[&scaled, &b],
                &[y],
            ));
        }
    }
    Ok(())
}

/// A Gather from a constant table (an embedding): the table is stored as int8 with one
/// scale per row; Gather picks the rows and their scales, and a Mul restores them. The
/// rows are the output channels here: the per-row range of an embedding varies widely.
fn emit_gather(
    n: &NodeProto,
    w: Tensor,
    names: &mut Names,
    out: &mut Vec<NodeProto>,
    inits: &mut Vec<TensorProto>,
) -> Result<()> {
    if attr_i(n, "axis", 0) != 0 {
        return Err(Error::attr("only Gather on axis 0 is quantized"));
    }
    let base = if n.name.is_empty() {
        n.output[0].clone()
    } else {
        n.name.clone()
    };
    let (rows, cols) = (w.shape()[0], w.shape()[1]);
    let data = w.to_f32_vec()?;
    let (scale, _, q) =
        quantize_channels(&data, rows, cols, |r, j| r * cols + j, WeightType::Int8)?;
    let wq = names.fresh(&format!("{base}_table_quantized"));
    let ws = names.fresh(&format!("{base}_row_scale"));
    inits.push(tensor_to_proto(
        &wq,
        &to_8bit(&q, vec![rows, cols], WeightType::Int8)?,
    )?);
    // [rows, 1]: gathered with the rows, it broadcasts over the columns.
    inits.push(tensor_to_proto(
        &ws,
        &Tensor::from_vec(vec![rows, 1], scale)?,
    )?);
    let idx = &n.input[1];
    let (gq, gs, gf) = (
        names.fresh(&format!("{base}_rows_quantized")),
        names.fresh(&format!("{base}_rows_scale")),
        names.fresh(&format!("{base}_rows_as_float")),
    );
    out.push(node(
        "Gather",
        names.fresh(&format!("{base}_gather_rows")),
        &[&wq, idx],
        &[&gq],
    ));
    out.push(node(
        "Gather",
        names.fresh(&format!("{base}_gather_scales")),
        &[&ws, idx],
        &[&gs],
    ));
    let mut cast = node(
        "Cast",
        names.fresh(&format!("{base}_rows_cast")),
        &[&gq],
        &[&gf],
    );
    cast.attribute
        .push(AttributeProto::int("to", DType::F32.to_onnx() as i64));
    out.push(cast);
    out.push(node(
        "Mul",
        names.fresh(&format!("{base}_rows_rescale")),
        &[&gf, &gs],
        &[&n.output[0]],
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_per_channel_maps_each_column_extreme_to_127() {
        // Columns with ranges 1 and 100: per channel, both use the full range.
        let w = Tensor::from_vec(vec![2, 2], vec![1.0f32, -100.0, -0.5, 50.0]).unwrap();
        let q = quantize_matmul_weight(&w, &QuantizeOptions::default()).unwrap();
        assert_eq!(q.values.as_slice::<i8>().unwrap(), &[127, -127, -64, 64]);
        assert!((q.scale[0] - 1.0 / 127.0).abs() < 1e-7);
        assert!((q.scale[1] - 100.0 / 127.0).abs() < 1e-5);
        // Per tensor, the small column collapses to a few levels.
        let opts = QuantizeOptions {
            per_channel: false,
            ..Default::default()
        };
        let q = quantize_matmul_weight(&w, &opts).unwrap();
        assert_eq!(q.values.as_slice::<i8>().unwrap(), &[1, -127, -1, 64]);
    }

    #[test]
    fn uint8_asymmetric_zero_point_makes_zero_exact() {
        let opts = QuantizeOptions {
            weight_type: WeightType::UInt8,
            ..Default::default()
        };
        let w = Tensor::from_vec(vec![3, 1], vec![-1.0f32, 0.0, 3.0]).unwrap();
        let q = quantize_matmul_weight(&w, &opts).unwrap();
        let zp = q.zero_point.as_slice::<u8>().unwrap()[0];
        let v = q.values.as_slice::<u8>().unwrap();
        assert_eq!(v[1], zp, "0.0 must quantize to the zero point exactly");
        assert_eq!((v[0], v[2]), (0, 255));
    }

    #[test]
    fn conv_weights_share_zero_point_128_with_per_channel_scales() {
        // Two output channels with ranges 1 and 10.
        let w = Tensor::from_vec(vec![2, 1, 1, 2], vec![1.0f32, -0.5, 10.0, -10.0]).unwrap();
        let q = quantize_conv_weight(&w, &QuantizeOptions::default()).unwrap();
        assert_eq!(q.zero_point.as_slice::<u8>().unwrap(), &[128]);
        assert_eq!(q.values.as_slice::<u8>().unwrap(), &[255, 64, 255, 1]);
        assert!((q.scale[1] / q.scale[0] - 10.0).abs() < 1e-5);
    }

    #[test]
    fn nan_weights_are_an_error() {
        let w = Tensor::from_vec(vec![1, 2], vec![f32::NAN, 1.0]).unwrap();
        assert!(quantize_matmul_weight(&w, &QuantizeOptions::default()).is_err());
    }
}
