//! Low-rank factorization: a constant weight W [K, N] of MatMul or Gemm (or the [M, C]
//! matrix of a 1×1 Conv) becomes two thinner products by truncated SVD, W ≈ A·B with
//! A = U_r·√S_r [K, r] and B = √S_r·V_rᵀ [r, N]. Values and multiply-adds both go from
//! K·N to r·(K + N) (per row of the input); the node is factorized only where that ratio
//! is at most `max_cost` (0.9), because the second product and its intermediate cost
//! something too: on our CPU path the measured time ratio is the multiply-add ratio plus
//! 0.01–0.1 (docs/compression.md), so a factorization saving less than ~10 % is no
//! faster. Elsewhere the node stays as it was.

use super::edit::{attr_i, node, rewrite_nodes, Constants, Emitted, Names};
use super::StepReport;
use crate::error::{Error, Result};
use crate::onnx::encode::tensor_to_proto;
use crate::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use crate::tensor::{DType, Tensor};
use nalgebra::DMatrix;
use std::collections::HashMap;

/// How many singular values to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rank {
    /// The fewest whose squares hold this fraction of the total (0 < e ≤ 1).
    Energy(f64),
    /// At most this many.
    Fixed(usize),
}

#[derive(Debug, Clone)]
pub struct LowRankOptions {
    pub rank: Rank,
    /// Node names or op types to leave alone.
    pub exclude: Vec<String>,
    /// Weights with fewer values are left alone.
    pub min_elements: usize,
    /// A rank of its own for some nodes (by name): the accuracy guard's back-off.
    pub overrides: HashMap<String, Rank>,
    /// The most the factored product may cost, as a fraction of the dense one's values
    /// and multiply-adds (they are the same ratio).
    pub max_cost: f64,
}

impl Default for LowRankOptions {
    fn default() -> Self {
        LowRankOptions {
            rank: Rank::Energy(0.95),
            exclude: Vec::new(),
            min_elements: 4096,
            overrides: HashMap::new(),
            max_cost: 0.9,
        }
    }
}

impl LowRankOptions {
    fn rank_of(&self, n: &NodeProto) -> Rank {
        self.overrides.get(&n.name).copied().unwrap_or(self.rank)
    }
}

/// Factorizes `m`'s MatMul, Gemm and 1×1 Conv weights in place (subgraphs too).
pub fn low_rank(m: &mut ModelProto, opts: &LowRankOptions) -> Result<StepReport> {
    for rank in std::iter::once(&opts.rank).chain(opts.overrides.values()) {
        match *rank {
            Rank::Energy(e) if !(e > 0.0 && e <= 1.0) => {
                return Err(Error::input(format!("energy {e} is outside (0, 1]")))
            }
            Rank::Fixed(0) => return Err(Error::input("rank 0")),
            _ => {}
        }
    }
    let graph = m
        .graph
        .as_mut()
        .ok_or_else(|| Error::invalid_model("the model has no graph"))?;
    let mut report = StepReport::new(match opts.rank {
        Rank::Energy(e) => format!("low-rank {:.1} % energy", e * 100.0),
        Rank::Fixed(r) => format!("low-rank {r}"),
    });
    let mut names = Names::of(graph);
    let mut sizes = (0usize, 0usize);
    factorize_graph(graph, opts, &mut names, &mut report, &mut sizes)?;
    if sizes.0 > 0 {
        report.notes.push(format!(
            "factorized weights: {} → {} values ({:.1} % fewer)",
            sizes.0,
            sizes.1,
            100.0 * (sizes.0 - sizes.1) as f64 / sizes.0 as f64
        ));
    }
    Ok(report)
}

/// The two factors of a [K, N] matrix.
pub struct Factors {
    /// [K, r], row-major.
    pub a: Vec<f32>,
    /// [r, N], row-major.
    pub b: Vec<f32>,
    pub rank: usize,
    /// Fraction of Σσ² kept.
    pub energy: f64,
}

/// Truncated SVD of the row-major [k, n] matrix `w`, in f64.
pub fn factorize(w: &[f32], k: usize, n: usize, rank: Rank) -> Result<Factors> {
    if w.len() != k * n || k == 0 || n == 0 {
        return Err(Error::shape(format!(
            "{} values for a [{k}, {n}] matrix",
            w.len()
        )));
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid_model("a weight holds inf or NaN"));
    }
    let m = DMatrix::from_fn(k, n, |i, j| f64::from(w[i * n + j]));
    let svd = nalgebra::linalg::SVD::try_new(m, true, true, f64::EPSILON, 10_000)
        .ok_or_else(|| Error::runtime("the SVD did not converge"))?;
    let (u, vt) = match (svd.u, svd.v_t) {
        (Some(u), Some(vt)) => (u, vt),
        _ => return Err(Error::runtime("the SVD gave no singular vectors")),
    };
    let s = svd.singular_values;
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
    // Singular values under the round-off of the largest are zero: without this cut an
    // exact rank-2 matrix would need every rank to reach 100 % energy.
    let cut = s.iter().fold(0f64, |m, v| m.max(*v)) * (k.max(n) as f64) * f64::EPSILON;
    let sq: Vec<f64> = order
        .iter()
        .map(|&i| if s[i] > cut { s[i] * s[i] } else { 0.0 })
        .collect();
    let total: f64 = sq.iter().sum();
    let numerical = sq.iter().filter(|v| **v > 0.0).count().max(1);
    let r = match rank {
        Rank::Fixed(r) => r.min(numerical),
        Rank::Energy(e) => {
            let mut acc = 0.0;
            let mut r = numerical;
            for (i, v) in sq.iter().enumerate() {
                acc += v;
                if acc >= e * total * (1.0 - 1e-12) {
                    r = i + 1;
                    break;
                }
            }
            r.min(numerical)
        }
    };
    let kept: f64 = sq[..r].iter().sum();
    let mut a = vec![0f32; k * r];
    let mut b = vec![0f32; r * n];
    for (c, &si) in order[..r].iter().enumerate() {
        let root = s[si].sqrt();
        for i in 0..k {
            a[i * r + c] = (u[(i, si)] * root) as f32;
        }
        for j in 0..n {
            b[c * n + j] = (vt[(si, j)] * root) as f32;
        }
    }
    Ok(Factors {
        a,
        b,
        rank: r,
        energy: if total > 0.0 { kept / total } else { 1.0 },
    })
}

/// What a candidate's weight looks like as a matrix.
enum Shape {
    /// MatMul / Gemm: W' [K, N] = the weight, transposed back when transB.
    Matrix { k: usize, n: usize, trans: bool },
    /// 1×1 Conv: W [M, C, 1…] as [M, C] (y = W·x per pixel).
    Pointwise { m: usize, c: usize, rank: usize },
}

fn plan(
    consts: &Constants,
    n: &NodeProto,
    opts: &LowRankOptions,
) -> std::result::Result<Option<(Tensor, Shape)>, String> {
    if !n.domain.is_empty() || !matches!(n.op_type.as_str(), "MatMul" | "Gemm" | "Conv") {
        return Ok(None);
    }
    let Some(w) = n.input.get(1).and_then(|w| consts.get(w)) else {
        return Ok(None);
    };
    if opts.exclude.iter().any(|e| *e == n.name || *e == n.op_type) {
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
    let s = w.shape().to_vec();
    let shape = match n.op_type.as_str() {
        "MatMul" if s.len() == 2 => Shape::Matrix {
            k: s[0],
            n: s[1],
            trans: false,
        },
        "MatMul" => return Err(format!("weight of rank {}", s.len())),
        "Gemm" => {
            if attr_i(n, "transA", 0) != 0 {
                return Err("Gemm with transA".into());
            }
            if s.len() != 2 {
                return Err("Gemm weight not 2-D".into());
            }
            let trans = attr_i(n, "transB", 0) != 0;
            let (k, nn) = if trans { (s[1], s[0]) } else { (s[0], s[1]) };
            Shape::Matrix { k, n: nn, trans }
        }
        _ => {
            if attr_i(n, "group", 1) != 1 {
                return Err("grouped Conv".into());
            }
            if s.len() < 3 || s[2..].iter().any(|&d| d != 1) {
                return Err("Conv kernel is not 1×1".into());
            }
            Shape::Pointwise {
                m: s[0],
                c: s[1],
                rank: s.len(),
            }
        }
    };
    Ok(Some((w, shape)))
}

fn factorize_graph(
    g: &mut GraphProto,
    opts: &LowRankOptions,
    names: &mut Names,
    report: &mut StepReport,
    sizes: &mut (usize, usize),
) -> Result<()> {
    let mut notes = Vec::new();
    rewrite_nodes(
        g,
        &mut |consts, n| plan(consts, n, opts),
        &mut |n, (w, shape), out, inits| {
            let why = match rewrite(&n, &w, &shape, opts, names, out, inits) {
                Ok(Ok((r, energy, k, nn))) => {
                    notes.push(format!(
                        "{} '{}': [{k}, {nn}] → rank {r} ({:.1} % energy), {} → {} values",
                        n.op_type,
                        n.name,
                        energy * 100.0,
                        k * nn,
                        r * (k + nn)
                    ));
                    sizes.0 += k * nn;
                    sizes.1 += r * (k + nn);
                    return Ok(Emitted::Changed);
                }
                Ok(Err(why)) => why,
                Err(e) => e.to_string(),
            };
            Ok(Emitted::Kept(n, why))
        },
        report,
    )?;
    report.notes.extend(notes);
    Ok(())
}

/// Emits the two products for `n` into `out`; Ok(Err(reason)) when the rank saves
/// nothing (nothing emitted). Returns (rank, energy, K, N).
#[allow(clippy::type_complexity)]
fn rewrite(
    n: &NodeProto,
    w: &Tensor,
    shape: &Shape,
    opts: &LowRankOptions,
    names: &mut Names,
    out: &mut Vec<NodeProto>,
    inits: &mut Vec<TensorProto>,
) -> Result<std::result::Result<(usize, f64, usize, usize), String>> {
    let v = w.to_f32_vec()?;
    // The matrix to factor, row-major [k, nn].
    let (mat, k, nn) = match *shape {
        Shape::Matrix { k, n: nn, trans } => {
            if trans {
                // Stored [N, K]: transpose to [K, N].
                let mut t = vec![0f32; v.len()];
                for i in 0..nn {
                    for j in 0..k {
                        t[j * nn + i] = v[i * k + j];
                    }
                }
                (t, k, nn)
            } else {
                (v, k, nn)
            }
        }
        Shape::Pointwise { m, c, .. } => (v, m, c),
    };
    let f = factorize(&mat, k, nn, opts.rank_of(n))?;
    let r = f.rank;
    let cost = (r * (k + nn)) as f64 / (k * nn) as f64;
    if cost > opts.max_cost {
        return Ok(Err(format!(
            "rank {r} saves too little: {:.0} % of the values and multiply-adds remain \
             ({} of {}; the limit is {:.0} %)",
            cost * 100.0,
            r * (k + nn),
            k * nn,
            opts.max_cost * 100.0
        )));
    }
    let base = if n.name.is_empty() {
        n.output[0].clone()
    } else {
        n.name.clone()
    };
    let a_name = names.fresh(&format!("{base}_lowrank_A"));
    let b_name = names.fresh(&format!("{base}_lowrank_B"));
    let mid = names.fresh(&format!("{base}_lowrank"));
    match *shape {
        Shape::Matrix { .. } => {
            inits.push(tensor_to_proto(
                &a_name,
                &Tensor::from_vec(vec![k, r], f.a)?,
            )?);
            inits.push(tensor_to_proto(
                &b_name,
                &Tensor::from_vec(vec![r, nn], f.b)?,
            )?);
            out.push(node(
                "MatMul",
                names.fresh(&format!("{base}_lowrank_first")),
                &[&n.input[0], &a_name],
                &[&mid],
            ));
            if n.op_type == "MatMul" {
                out.push(node(
                    "MatMul",
                    n.name.clone(),
                    &[&mid, &b_name],
                    &[&n.output[0]],
                ));
            } else {
                // Gemm keeps bias, alpha and beta; only B changes (and is no longer
                // transposed).
                let mut second = n.clone();
                second.input[0] = mid;
                second.input[1] = b_name;
                second.attribute.retain(|a| a.name != "transB");
                out.push(second);
            }
        }
        Shape::Pointwise { rank, .. } => {
            // y = W·x = (U√S)·(√S·Vᵀ·x): the first Conv applies B [r, C], the second A [M, r].
            let ones = vec![1usize; rank - 2];
            let mut bs = vec![r, nn];
            bs.extend(&ones);
            let mut as_ = vec![k, r];
            as_.extend(&ones);
            inits.push(tensor_to_proto(&b_name, &Tensor::from_vec(bs, f.b)?)?);
            inits.push(tensor_to_proto(&a_name, &Tensor::from_vec(as_, f.a)?)?);
            // The first Conv carries the geometry (strides, pads…); padding gives zeros
            // there and the bias in the second, as the original Conv did.
            let mut first = node(
                "Conv",
                names.fresh(&format!("{base}_lowrank_first")),
                &[&n.input[0], &b_name],
                &[&mid],
            );
            first.attribute = n.attribute.clone();
            out.push(first);
            let mut inputs = vec![mid.as_str(), a_name.as_str()];
            if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                inputs.push(b);
            }
            let mut second = node("Conv", n.name.clone(), &inputs, &[&n.output[0]]);
            second.attribute.push(AttributeProto {
                name: "kernel_shape".into(),
                r#type: crate::onnx::proto::AttrType::Ints,
                ints: vec![1; rank - 2],
                ..Default::default()
            });
            out.push(second);
        }
    }
    Ok(Ok((r, f.energy, k, nn)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::edit::f32_value_info as vi;
    use crate::onnx::encode_model;
    use crate::Model;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::compress::evaluate::SplitMix64(seed);
        (0..n)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect()
    }

    fn matmul(a: &[f32], b: &[f32], k: usize, r: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; k * n];
        for i in 0..k {
            for l in 0..r {
                for j in 0..n {
                    c[i * n + j] += a[i * r + l] * b[l * n + j];
                }
            }
        }
        c
    }

    /// A rank-2 [k, n] matrix.
    fn rank2(k: usize, n: usize) -> Vec<f32> {
        matmul(&values(k * 2, 1), &values(2 * n, 2), k, 2, n)
    }

    #[test]
    fn rank_two_matrix_is_rebuilt_exactly_at_full_energy() {
        let (k, n) = (12, 9);
        let w = rank2(k, n);
        let f = factorize(&w, k, n, Rank::Energy(1.0)).unwrap();
        assert_eq!(f.rank, 2);
        let back = matmul(&f.a, &f.b, k, 2, n);
        for (x, y) in w.iter().zip(&back) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        // A fixed rank of 1 loses some of it.
        let f1 = factorize(&w, k, n, Rank::Fixed(1)).unwrap();
        assert_eq!(f1.rank, 1);
        assert!(f1.energy < 1.0 && f1.energy > 0.0);
    }

    fn matmul_model(w: Vec<f32>, k: usize, n: usize) -> ModelProto {
        let g = GraphProto {
            node: vec![node("MatMul", "mm".into(), &["x", "w"], &["y"])],
            initializer: vec![
                tensor_to_proto("w", &Tensor::from_vec(vec![k, n], w).unwrap()).unwrap(),
            ],
            input: vec![vi("x", &[3, k as i64])],
            output: vec![vi("y", &[3, n as i64])],
            ..Default::default()
        };
        crate::compress::edit::model_of(g, 17)
    }

    fn opts(rank: Rank) -> LowRankOptions {
        LowRankOptions {
            rank,
            exclude: vec![],
            min_elements: 0,
            ..Default::default()
        }
    }

    #[test]
    fn full_rank_random_matrix_is_kept() {
        let mut m = matmul_model(values(64, 5), 8, 8);
        let before = m.clone();
        let r = low_rank(&mut m, &opts(Rank::Energy(0.95))).unwrap();
        assert!(r.changed.is_empty(), "{r}");
        assert!(r.kept[0].2.contains("saves too little"), "{r}");
        assert_eq!(m, before);
    }

    #[test]
    fn factorized_matmul_computes_x_a_b() {
        let (k, n) = (16, 12);
        let mut m = matmul_model(rank2(k, n), k, n);
        let dense = Model::load(&encode_model(&m)).unwrap();
        let r = low_rank(&mut m, &opts(Rank::Energy(1.0))).unwrap();
        assert_eq!(r.changed.len(), 1, "{r}");
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.node.len(), 2);
        let get = |name: &str| {
            crate::onnx::tensor_from_proto(g.initializer.iter().find(|t| t.name == name).unwrap())
                .unwrap()
        };
        let a = get(&g.node[0].input[1]);
        let b = get(&g.node[1].input[1]);
        assert_eq!((a.shape(), b.shape()), (&[k, 2][..], &[2, n][..]));
        let x = values(3 * k, 9);
        let expect = matmul(
            &matmul(&x, &a.to_f32_vec().unwrap(), 3, k, 2),
            &b.to_f32_vec().unwrap(),
            3,
            2,
            n,
        );
        let xt = Tensor::from_vec(vec![3, k], x).unwrap();
        let got = Model::load(&encode_model(&m))
            .unwrap()
            .run(&[("x", xt.clone())])
            .unwrap()
            .remove(0)
            .1
            .to_f32_vec()
            .unwrap();
        let want = dense
            .run(&[("x", xt)])
            .unwrap()
            .remove(0)
            .1
            .to_f32_vec()
            .unwrap();
        for ((g, e), d) in got.iter().zip(&expect).zip(&want) {
            assert!((g - e).abs() < 1e-4, "{g} vs x·A·B {e}");
            assert!((g - d).abs() < 1e-4, "{g} vs dense {d}");
        }
    }

    #[test]
    fn gemm_trans_b_and_pointwise_conv_keep_their_results() {
        // Gemm(x, Wᵀ stored [N, K], C) alpha 0.5, beta 2, and a 1×1 Conv with bias.
        let (k, n) = (10, 14);
        let w = rank2(k, n);
        let mut wt = vec![0f32; k * n];
        for i in 0..k {
            for j in 0..n {
                wt[j * k + i] = w[i * n + j];
            }
        }
        let mut gemm = node("Gemm", "g".into(), &["x", "wt", "c"], &["h"]);
        gemm.attribute = vec![
            AttributeProto::int("transB", 1),
            AttributeProto::float("alpha", 0.5),
            AttributeProto::float("beta", 2.0),
        ];
        let g = GraphProto {
            node: vec![
                gemm,
                node("Reshape", "r".into(), &["h", "s"], &["h4"]),
                node("Conv", "pw".into(), &["h4", "cw", "cb"], &["y"]),
            ],
            initializer: vec![
                tensor_to_proto("wt", &Tensor::from_vec(vec![n, k], wt).unwrap()).unwrap(),
                tensor_to_proto("c", &Tensor::from_vec(vec![n], values(n, 3)).unwrap()).unwrap(),
                tensor_to_proto("s", &Tensor::vector(vec![3i64, n as i64, 1, 1])).unwrap(),
                tensor_to_proto(
                    "cw",
                    &Tensor::from_vec(vec![9, n, 1, 1], rank2(9, n)).unwrap(),
                )
                .unwrap(),
                tensor_to_proto("cb", &Tensor::from_vec(vec![9], values(9, 4)).unwrap()).unwrap(),
            ],
            input: vec![vi("x", &[3, k as i64])],
            output: vec![vi("y", &[3, 9, 1, 1])],
            ..Default::default()
        };
        let mut m = matmul_model(vec![0.0; 1], 1, 1);
        m.graph = Some(g);
        let x = Tensor::from_vec(vec![3, k], values(3 * k, 8)).unwrap();
        let want = Model::load(&encode_model(&m))
            .unwrap()
            .run(&[("x", x.clone())])
            .unwrap()
            .remove(0)
            .1;
        let r = low_rank(&mut m, &opts(Rank::Energy(1.0))).unwrap();
        assert_eq!(r.changed.len(), 2, "{r}");
        let got = Model::load(&encode_model(&m))
            .unwrap()
            .run(&[("x", x)])
            .unwrap()
            .remove(0)
            .1;
        assert_eq!(got.shape(), want.shape());
        for (g, w) in got
            .to_f32_vec()
            .unwrap()
            .iter()
            .zip(want.to_f32_vec().unwrap())
        {
            assert!((g - w).abs() < 1e-4 * w.abs().max(1.0), "{g} vs {w}");
        }
    }

    #[test]
    fn a_node_override_sets_that_nodes_rank() {
        let (k, n) = (16, 12);
        let mut m = matmul_model(rank2(k, n), k, n);
        let name = m.graph.as_ref().unwrap().node[0].name.clone();
        let o = LowRankOptions {
            overrides: [(name, Rank::Fixed(1))].into(),
            ..opts(Rank::Energy(1.0))
        };
        let r = low_rank(&mut m, &o).unwrap();
        assert_eq!(r.changed.len(), 1, "{r}");
        let g = m.graph.as_ref().unwrap();
        let a = g
            .initializer
            .iter()
            .find(|t| t.name == g.node[0].input[1])
            .unwrap();
        assert_eq!(a.dims, [k as i64, 1]);
    }

    #[test]
    fn exclude_and_bad_options() {
        let mut m = matmul_model(rank2(16, 12), 16, 12);
        let mut o = opts(Rank::Energy(1.0));
        o.exclude = vec!["MatMul".into()];
        let r = low_rank(&mut m, &o).unwrap();
        assert!(r.changed.is_empty());
        assert!(low_rank(&mut m, &opts(Rank::Energy(0.0))).is_err());
        assert!(low_rank(&mut m, &opts(Rank::Fixed(0))).is_err());
    }
}
