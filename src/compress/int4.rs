//! Blockwise 4-bit weight-only quantization of MatMul, written as onnxruntime's
//! `com.microsoft.MatMulNBits` contrib op: a MatMul whose weight is a constant 2-D
//! [K, N] tensor becomes one MatMulNBits node that reads the same activation.
//!
//! Layout (onnxruntime's contrib-op spec, and `crate::cpu::quant::dequantize_nbits`):
//! the weight is stored transposed, column n of W as row n of B; each row is cut into
//! ceil(K / block_size) blocks along K, the last one padded; B is uint8
//! [N, blocks, block_size / 2] with two codes per byte, the lower k in the low nibble;
//! scales are float [N, blocks]; zero points, when present, are uint8 packed two per
//! byte the same way, each row padded to a whole byte ([N, ceil(blocks / 2)]); absent,
//! they are 8. A weight is w = (code − zero point) · scale.

use super::edit::{rewrite_nodes, Constants, Emitted, Names};
use super::StepReport;
use crate::error::{Error, Result};
use crate::onnx::encode::tensor_to_proto;
use crate::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetId, TensorProto,
};
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;

/// The contrib-op domain onnxruntime reads MatMulNBits from.
pub const MS_DOMAIN: &str = "com.microsoft";

#[derive(Debug, Clone)]
pub struct Int4Options {
    /// Values per block along K: a power of two ≥ 16 (onnxruntime's constraint).
    pub block_size: usize,
    /// Symmetric blocks store no zero points (8 implied); asymmetric ones store one per
    /// block and fit the block's [min, max] range, which costs ~3 % more bytes.
    pub symmetric: bool,
    /// Node names or op types to keep float.
    pub exclude: Vec<String>,
    /// Weights with fewer elements stay float.
    pub min_elements: usize,
    /// A block size of its own for some nodes (by name): the accuracy guard's back-off.
    pub overrides: HashMap<String, usize>,
}

impl Default for Int4Options {
    fn default() -> Self {
        Int4Options {
            block_size: 32,
            symmetric: false,
            exclude: Vec::new(),
            min_elements: 256,
            overrides: HashMap::new(),
        }
    }
}

/// A [K, N] weight in MatMulNBits storage.
#[derive(Debug, Clone, PartialEq)]
pub struct Int4Weight {
    pub k: usize,
    pub n: usize,
    pub block_size: usize,
    /// [N, blocks, block_size / 2] packed codes.
    pub b: Vec<u8>,
    /// [N, blocks] scales.
    pub scales: Vec<f32>,
    /// [N, ceil(blocks / 2)] packed zero points; None for symmetric blocks (zero point 8).
    pub zero_points: Option<Vec<u8>>,
}

impl Int4Weight {
    pub fn blocks(&self) -> usize {
        self.k.div_ceil(self.block_size)
    }
}

fn check_block_size(bs: usize) -> Result<()> {
    if bs < 16 || !bs.is_power_of_two() {
        return Err(Error::attr(format!(
            "int4 block size must be a power of two >= 16, got {bs}"
        )));
    }
    Ok(())
}

/// Quantizes a row-major [K, N] f32 weight to MatMulNBits storage.
pub fn pack_int4(
    w: &[f32],
    k: usize,
    n: usize,
    block_size: usize,
    symmetric: bool,
) -> Result<Int4Weight> {
    check_block_size(block_size)?;
    if w.len() != k * n {
        return Err(Error::shape(format!(
            "int4 weight has {} values, not {k}×{n}",
            w.len()
        )));
    }
    // f32::min/max skip NaN: a NaN weight would quantize silently.
    if w.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid_model("a weight holds inf or NaN"));
    }
    let blocks = k.div_ceil(block_size);
    let blob = block_size / 2;
    let zp_row = blocks.div_ceil(2);
    let mut b = vec![0u8; n * blocks * blob];
    let mut scales = Vec::with_capacity(n * blocks);
    let mut zps = vec![0u8; if symmetric { 0 } else { n * zp_row }];
    for col in 0..n {
        for bl in 0..blocks {
            let k0 = bl * block_size;
            let k1 = (k0 + block_size).min(k);
            let vals = (k0..k1).map(|r| w[r * n + col]);
            let (scale, zp) = if symmetric {
                // As onnxruntime's MLAS quantizer: the value of largest magnitude maps to
                // code 0 exactly (its scale carries the sign), so the far side loses only
                // the one code 16 that does not exist.
                let m = vals.fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                (m / -8.0, 8u8)
            } else {
                // The range always holds 0, so zero weights (and the padding) stay exact.
                let (lo, hi) = vals.fold((0f32, 0f32), |(lo, hi), v| (lo.min(v), hi.max(v)));
                let s = (hi - lo) / 15.0;
                let zp = if s > 0.0 {
                    (-lo / s).round().clamp(0.0, 15.0)
                } else {
                    0.0
                };
                (s, zp as u8)
            };
            let scale = if scale != 0.0 { scale } else { 1.0 };
            scales.push(scale);
            if !symmetric {
                zps[col * zp_row + bl / 2] |= zp << (4 * (bl % 2));
            }
            for r in k0..k0 + block_size {
                // Rows past K pad the last block with the zero point: they dequantize to 0.
                let code = if r < k {
                    ((w[r * n + col] / scale).round() + f32::from(zp)).clamp(0.0, 15.0) as u8
                } else {
                    zp
                };
                let j = r - k0;
                b[(col * blocks + bl) * blob + j / 2] |= code << (4 * (j % 2));
            }
        }
    }
    Ok(Int4Weight {
        k,
        n,
        block_size,
        b,
        scales,
        zero_points: (!symmetric).then_some(zps),
    })
}

/// The row-major [K, N] f32 weight that `q` stands for.
pub fn unpack_int4(q: &Int4Weight) -> Vec<f32> {
    let (k, n, bs) = (q.k, q.n, q.block_size);
    let blocks = q.blocks();
    let (blob, zp_row) = (bs / 2, blocks.div_ceil(2));
    let mut w = vec![0f32; k * n];
    for col in 0..n {
        for bl in 0..blocks {
            let scale = q.scales[col * blocks + bl];
            let zp = q
                .zero_points
                .as_ref()
                .map_or(8, |z| (z[col * zp_row + bl / 2] >> (4 * (bl % 2))) & 0xf);
            for r in bl * bs..((bl + 1) * bs).min(k) {
                let j = r - bl * bs;
                let code = (q.b[(col * blocks + bl) * blob + j / 2] >> (4 * (j % 2))) & 0xf;
                w[r * n + col] = (f32::from(code) - f32::from(zp)) * scale;
            }
        }
    }
    w
}

/// Rewrites `m`'s MatMuls with constant 2-D float weights as MatMulNBits (subgraphs too).
pub fn quantize_int4(m: &mut ModelProto, opts: &Int4Options) -> Result<StepReport> {
    for &bs in std::iter::once(&opts.block_size).chain(opts.overrides.values()) {
        check_block_size(bs)?;
    }
    let graph = m
        .graph
        .as_mut()
        .ok_or_else(|| Error::invalid_model("the model has no graph"))?;
    let mut report = StepReport::new(format!(
        "int4 blockwise ({}, block {})",
        if opts.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        },
        opts.block_size
    ));
    let mut names = Names::of(graph);
    let mut stats = Stats::default();
    quantize_graph(graph, opts, &mut names, &mut report, &mut stats)?;
    if !report.changed.is_empty() {
        if !m.opset_import.iter().any(|o| o.domain == MS_DOMAIN) {
            m.opset_import.push(OperatorSetId {
                domain: MS_DOMAIN.into(),
                version: 1,
            });
        }
        report.notes.push(format!(
            "{} weight values: {:.1} MB as float → {:.1} MB as int4",
            stats.values,
            stats.float_bytes as f64 / 1e6,
            stats.int4_bytes as f64 / 1e6
        ));
    }
    Ok(report)
}

#[derive(Default)]
struct Stats {
    values: usize,
    float_bytes: usize,
    int4_bytes: usize,
}

fn quantize_graph(
    g: &mut GraphProto,
    opts: &Int4Options,
    names: &mut Names,
    report: &mut StepReport,
    stats: &mut Stats,
) -> Result<()> {
    rewrite_nodes(
        g,
        &mut |consts, n| plan_node(consts, n, opts),
        &mut |n, w: Tensor, out, inits| {
            let (k, nn) = (w.shape()[0], w.shape()[1]);
            let bs = opts.overrides.get(&n.name).copied();
            let bs = bs.unwrap_or(opts.block_size);
            let q = pack_int4(&w.to_f32_vec()?, k, nn, bs, opts.symmetric)?;
            stats.values += k * nn;
            stats.float_bytes += 4 * k * nn;
            stats.int4_bytes +=
                q.b.len() + 4 * q.scales.len() + q.zero_points.as_ref().map_or(0, Vec::len);
            out.push(emit(&n, &q, names, inits)?);
            Ok(Emitted::Changed)
        },
        report,
    )
}

/// The weight to quantize, Ok(None) for no candidate, Err(reason) to report it kept.
fn plan_node(
    consts: &Constants,
    n: &NodeProto,
    opts: &Int4Options,
) -> std::result::Result<Option<Tensor>, String> {
    if !(n.domain.is_empty() && n.op_type == "MatMul") {
        return Ok(None);
    }
    let (Some(a), Some(wname)) = (n.input.first(), n.input.get(1)) else {
        return Ok(None);
    };
    if consts.proto(a).is_some() {
        // Constant times constant: constant folding's business, not ours.
        return Ok(None);
    }
    let Some(w) = consts.get(wname) else {
        return Ok(None);
    };
    if opts.exclude.iter().any(|e| *e == n.name || *e == n.op_type) {
        return Err("excluded by the user".into());
    }
    let w = w.map_err(|e| format!("weight unreadable: {e}"))?;
    if w.dtype() != DType::F32 {
        return Err(format!("weight is {}, not float32", w.dtype().name()));
    }
    if w.rank() != 2 {
        return Err(format!(
            "weight of rank {} (MatMulNBits takes 2-D weights)",
            w.rank()
        ));
    }
    if w.len() < opts.min_elements {
        return Err(format!(
            "weight of {} values is under the {}-value minimum",
            w.len(),
            opts.min_elements
        ));
    }
    if w.to_f32_vec()
        .is_ok_and(|v| v.iter().any(|x| !x.is_finite()))
    {
        return Err("weight holds inf or NaN".into());
    }
    Ok(Some(w))
}

/// The MatMulNBits node standing for MatMul `n`; it keeps `n`'s name and output.
fn emit(
    n: &NodeProto,
    q: &Int4Weight,
    names: &mut Names,
    inits: &mut Vec<TensorProto>,
) -> Result<NodeProto> {
    let base = if n.name.is_empty() {
        n.output[0].clone()
    } else {
        n.name.clone()
    };
    let blocks = q.blocks();
    let bname = names.fresh(&format!("{base}_B_int4"));
    let sname = names.fresh(&format!("{base}_B_scales"));
    inits.push(tensor_to_proto(
        &bname,
        &Tensor::from_vec(vec![q.n, blocks, q.block_size / 2], q.b.clone())?,
    )?);
    inits.push(tensor_to_proto(
        &sname,
        &Tensor::from_vec(vec![q.n, blocks], q.scales.clone())?,
    )?);
    let mut inputs = vec![n.input[0].clone(), bname, sname];
    if let Some(z) = &q.zero_points {
        let zname = names.fresh(&format!("{base}_B_zero_points"));
        inits.push(tensor_to_proto(
            &zname,
            &Tensor::from_vec(vec![q.n, blocks.div_ceil(2)], z.clone())?,
        )?);
        inputs.push(zname);
    }
    let dim = |v: usize| i64::try_from(v).map_err(|_| Error::shape("dimension too large"));
    Ok(NodeProto {
        input: inputs,
        output: vec![n.output[0].clone()],
        name: n.name.clone(),
        op_type: "MatMulNBits".into(),
        domain: MS_DOMAIN.into(),
        attribute: vec![
            AttributeProto::int("K", dim(q.k)?),
            AttributeProto::int("N", dim(q.n)?),
            AttributeProto::int("bits", 4),
            AttributeProto::int("block_size", dim(q.block_size)?),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::encode::encode_model;
    use crate::onnx::proto::{DimProto, TypeProto, ValueInfoProto};

    /// A deterministic pseudo-random weight with a few large outliers.
    fn weight(k: usize, n: usize) -> Vec<f32> {
        let mut s = 0x2545f491u32;
        (0..k * n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let v = (s as f32 / u32::MAX as f32) - 0.5;
                if i % 97 == 0 {
                    v * 20.0
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn pack_unpack_round_trip_within_half_a_step() {
        for symmetric in [false, true] {
            // K = 70: three blocks of 32, the last padded with 26 rows.
            let (k, n) = (70, 5);
            let w = weight(k, n);
            let q = pack_int4(&w, k, n, 32, symmetric).unwrap();
            assert_eq!(q.b.len(), n * 3 * 16);
            assert_eq!(q.scales.len(), n * 3);
            assert_eq!(
                q.zero_points.as_ref().map(Vec::len),
                (!symmetric).then_some(n * 2)
            );
            let back = unpack_int4(&q);
            for col in 0..n {
                for r in 0..k {
                    let s = q.scales[col * 3 + r / 32].abs();
                    let (a, b) = (w[r * n + col], back[r * n + col]);
                    // Symmetric blocks clip the far side at 7/8 of the largest magnitude.
                    let tol = if symmetric { s } else { s * 0.5 + 1e-6 };
                    assert!((a - b).abs() <= tol, "{symmetric} [{r},{col}] {a} vs {b}");
                }
            }
            // Packing what unpack gave reproduces the codes and zero points.
            let again = pack_int4(&back, k, n, 32, symmetric).unwrap();
            assert_eq!((&again.b, &again.zero_points), (&q.b, &q.zero_points));
        }
    }

    #[test]
    fn codes_are_packed_low_nibble_first_along_k() {
        // One column, K = 16: asymmetric range [0, 15] → scale 1, zero point 0, code = w.
        let w: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let q = pack_int4(&w, 16, 1, 16, false).unwrap();
        assert_eq!(q.scales, [1.0]);
        assert_eq!(q.zero_points, Some(vec![0]));
        assert_eq!(q.b[0], 0x10);
        assert_eq!(q.b[7], 0xfe);
    }

    #[test]
    fn bad_block_sizes_are_refused() {
        assert!(pack_int4(&[0.0; 8], 8, 1, 8, true).is_err());
        assert!(pack_int4(&[0.0; 48], 48, 1, 48, true).is_err());
    }

    fn tiny_model(k: usize, n: usize, w: &[f32]) -> ModelProto {
        let vi = |name: &str, dims: &[i64]| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto::Tensor {
                elem_type: DType::F32.to_onnx(),
                shape: Some(dims.iter().map(|&d| DimProto::Value(d)).collect()),
            }),
        };
        let winit =
            tensor_to_proto("W", &Tensor::from_vec(vec![k, n], w.to_vec()).unwrap()).unwrap();
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetId {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: vec![super::super::edit::node(
                    "MatMul",
                    "mm".into(),
                    &["x", "W"],
                    &["y"],
                )],
                initializer: vec![winit],
                input: vec![vi("x", &[3, k as i64])],
                output: vec![vi("y", &[3, n as i64])],
                name: "tiny".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn tiny_model_runs_as_x_times_dequantized_w() {
        let (k, n) = (40, 24);
        let w = weight(k, n);
        for symmetric in [false, true] {
            let mut m = tiny_model(k, n, &w);
            let opts = Int4Options {
                block_size: 16,
                symmetric,
                ..Default::default()
            };
            let r = quantize_int4(&mut m, &opts).unwrap();
            assert_eq!(r.changed, [("mm".to_string(), "MatMul".to_string())]);
            let g = m.graph.as_ref().unwrap();
            assert_eq!(g.node[0].op_type, "MatMulNBits");
            assert!(g.initializer.iter().all(|t| t.name != "W"));
            assert!(m.opset_import.iter().any(|o| o.domain == MS_DOMAIN));
            let deq = unpack_int4(&pack_int4(&w, k, n, 16, symmetric).unwrap());
            let x: Vec<f32> = (0..3 * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
            let model = crate::Model::load(&encode_model(&m)).unwrap();
            let y = model
                .run(&[("x", Tensor::from_vec(vec![3, k], x.clone()).unwrap())])
                .unwrap();
            let y = y[0].1.to_f32_vec().unwrap();
            for i in 0..3 {
                for j in 0..n {
                    let want: f32 = (0..k).map(|t| x[i * k + t] * deq[t * n + j]).sum();
                    assert!(
                        (y[i * n + j] - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{symmetric} y[{i},{j}] = {} want {want}",
                        y[i * n + j]
                    );
                }
            }
        }
    }

    #[test]
    fn a_node_override_sets_that_nodes_block_size() {
        let mut m = tiny_model(64, 24, &weight(64, 24));
        let opts = Int4Options {
            block_size: 64,
            overrides: [("mm".to_string(), 16)].into(),
            ..Default::default()
        };
        quantize_int4(&mut m, &opts).unwrap();
        let n = &m.graph.as_ref().unwrap().node[0];
        let bs = n.attribute.iter().find(|a| a.name == "block_size").unwrap();
        assert_eq!(bs.i, 16);
    }

    #[test]
    fn excluded_and_small_matmuls_stay_float() {
        let w = weight(40, 24);
        let mut m = tiny_model(40, 24, &w);
        let opts = Int4Options {
            exclude: vec!["mm".into()],
            ..Default::default()
        };
        let r = quantize_int4(&mut m, &opts).unwrap();
        assert!(r.changed.is_empty() && r.kept.len() == 1);
        let opts = Int4Options {
            min_elements: 2000,
            ..Default::default()
        };
        let r = quantize_int4(&mut m, &opts).unwrap();
        assert!(r.changed.is_empty() && r.kept[0].2.contains("minimum"));
        assert_eq!(m.graph.unwrap().node[0].op_type, "MatMul");
    }
}
