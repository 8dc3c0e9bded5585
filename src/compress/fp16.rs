//! float16 weight storage: every float32 constant weight (initializer or Constant node)
//! is stored as float16 and cast back to float32 by a `Cast(to=FLOAT)` in front of its
//! readers. Compute stays float32; the file roughly halves. The weight keeps its name
//! (the Cast's output), so no reader is rewritten and outer-scope reads from subgraphs
//! keep working.

use super::edit::{node, Names};
use super::StepReport;
use crate::error::{Error, Result};
use crate::onnx::encode::tensor_to_proto;
use crate::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto};
use crate::onnx::tensor_from_proto;
use crate::tensor::{DType, Tensor};
use half::f16;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone)]
pub struct Fp16Options {
    /// Node names or op types whose weights stay float32.
    pub exclude: Vec<String>,
    /// Weights with fewer values stay float32: the Cast would cost more than it saves.
    pub min_elements: usize,
}

impl Default for Fp16Options {
    fn default() -> Self {
        Fp16Options {
            exclude: Vec::new(),
            min_elements: 64,
        }
    }
}

/// Converts `m`'s float32 weights to float16 storage, subgraphs included.
pub fn weights_to_fp16(m: &mut ModelProto, opts: &Fp16Options) -> Result<StepReport> {
    let graph = m
        .graph
        .as_mut()
        .ok_or_else(|| Error::invalid_model("the model has no graph"))?;
    let mut report = StepReport::new("fp16 weights");
    let mut names = Names::of(graph);
    let mut st = Stats::default();
    convert_graph(graph, opts, &mut names, &mut report, &mut st)?;
    report.notes.push(format!(
        "{} weight(s), {} values: {:.2} MB → {:.2} MB",
        st.weights,
        st.values,
        st.values as f64 * 4.0 / 1e6,
        st.values as f64 * 2.0 / 1e6
    ));
    if st.clamped > 0 {
        report.notes.push(format!(
            "{} value(s) beyond the float16 range clamped to ±65504 (largest magnitude {:e})",
            st.clamped, st.largest
        ));
    }
    if st.flushed > 0 {
        report.notes.push(format!(
            "{} non-zero value(s) under float16's smallest subnormal became 0",
            st.flushed
        ));
    }
    Ok(report)
}

#[derive(Default)]
struct Stats {
    weights: usize,
    values: usize,
    clamped: usize,
    flushed: usize,
    largest: f32,
}

/// Every node that reads each value of `g`, its subgraphs' nodes included (they may read
/// outer-scope values), as (node name, op type).
fn readers(g: &GraphProto) -> HashMap<String, Vec<(String, String)>> {
    fn walk(
        g: &GraphProto,
        top: Option<&NodeProto>,
        r: &mut HashMap<String, Vec<(String, String)>>,
    ) {
        for n in &g.node {
            // A subgraph's reads are charged to the node that owns the subgraph too, so
            // excluding an If keeps the weights its branches read from outside.
            for who in std::iter::once(n).chain(top) {
                for i in n.input.iter().filter(|i| !i.is_empty()) {
                    let e = r.entry(i.clone()).or_default();
                    let id = (who.name.clone(), who.op_type.clone());
                    if !e.contains(&id) {
                        e.push(id);
                    }
                }
            }
            for a in &n.attribute {
                for sg in a.g.iter().chain(&a.graphs) {
                    walk(sg, Some(top.unwrap_or(n)), r);
                }
            }
        }
    }
    let mut r = HashMap::new();
    walk(g, None, &mut r);
    r
}

/// float32 → float16 with finite out-of-range values clamped to ±65504.
fn to_f16(v: &[f32], st: &mut Stats) -> Vec<f16> {
    v.iter()
        .map(|&x| {
            if x.is_finite() && x.abs() > f16::MAX.to_f32() {
                st.clamped += 1;
                st.largest = st.largest.max(x.abs());
                f16::from_f32(x.clamp(f16::MIN.to_f32(), f16::MAX.to_f32()))
            } else {
                let h = f16::from_f32(x);
                if x != 0.0 && h.to_f32() == 0.0 {
                    st.flushed += 1;
                }
                h
            }
        })
        .collect()
}

fn convert_graph(
    g: &mut GraphProto,
    opts: &Fp16Options,
    names: &mut Names,
    report: &mut StepReport,
    st: &mut Stats,
) -> Result<()> {
    for n in &mut g.node {
        for a in &mut n.attribute {
            for sg in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                convert_graph(sg, opts, names, report, st)?;
            }
        }
    }
    let readers = readers(g);
    let graph_inputs: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    let mut changed: HashSet<(String, String)> = report.changed.iter().cloned().collect();
    // Whether to convert the weight `name`; records its readers as changed, or why kept.
    let mut decide = |name: &str, t: &Tensor, report: &mut StepReport| -> bool {
        let rs = readers.get(name).map_or(&[][..], Vec::as_slice);
        if t.dtype() != DType::F32 || t.len() < opts.min_elements || rs.is_empty() {
            return false;
        }
        if let Some((n, op)) = rs
            .iter()
            .find(|(n, op)| opts.exclude.iter().any(|e| e == n || e == op))
        {
            report.kept.push((
                n.clone(),
                op.clone(),
                format!("weight '{name}' kept float32: excluded by the user"),
            ));
            return false;
        }
        for r in rs {
            if changed.insert(r.clone()) {
                report.changed.push(r.clone());
            }
        }
        true
    };

    // Initializers: the float16 copy gets a fresh name, the Cast writes the old one.
    let mut casts = Vec::new();
    for t in &mut g.initializer {
        if t.data_type != DType::F32.to_onnx() {
            continue;
        }
        if graph_inputs.contains(t.name.as_str()) {
            // An overridable default: a caller may feed float32 there.
            if readers.contains_key(&t.name) {
                report.kept.push((
                    String::new(),
                    String::new(),
                    format!("initializer '{}' is a graph input: kept float32", t.name),
                ));
            }
            continue;
        }
        let w = tensor_from_proto(t)?;
        if !decide(&t.name, &w, report) {
            continue;
        }
        let h = Tensor::from_vec(w.shape().to_vec(), to_f16(&w.to_f32_vec()?, st))?;
        let old = t.name.clone();
        let new = names.fresh(&format!("{old}_fp16"));
        *t = tensor_to_proto(&new, &h)?;
        casts.push(cast(names, &new, &old));
        st.weights += 1;
        st.values += w.len();
    }

    // Constant nodes: the Constant now writes a float16 value, the Cast follows it.
    let mut out: Vec<NodeProto> = casts;
    for mut n in std::mem::take(&mut g.node) {
        let is_const = n.op_type == "Constant" && n.domain.is_empty() && n.output.len() == 1;
        let value = is_const
            .then(|| n.attribute.iter_mut().find(|a| a.name == "value"))
            .flatten()
            .and_then(|a| a.t.as_mut());
        let Some(t) = value.filter(|t| t.data_type == DType::F32.to_onnx()) else {
            out.push(n);
            continue;
        };
        let w = tensor_from_proto(t)?;
        let old = n.output[0].clone();
        if !decide(&old, &w, report) {
            out.push(n);
            continue;
        }
        let new = names.fresh(&format!("{old}_fp16"));
        *t = tensor_to_proto(
            &t.name.clone(),
            &Tensor::from_vec(w.shape().to_vec(), to_f16(&w.to_f32_vec()?, st))?,
        )?;
        n.output[0] = new.clone();
        out.push(n);
        out.push(cast(names, &new, &old));
        st.weights += 1;
        st.values += w.len();
    }
    g.node = out;
    Ok(())
}

fn cast(names: &mut Names, from: &str, to: &str) -> NodeProto {
    let mut c = node(
        "Cast",
        names.fresh(&format!("{to}_to_float")),
        &[from],
        &[to],
    );
    c.attribute
        .push(AttributeProto::int("to", DType::F32.to_onnx() as i64));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::edit::f32_value_info as vi;
    use crate::onnx::encode::encode_model;
    use crate::onnx::proto::OperatorSetId;

    /// y = (x · W) + B, W an initializer, B a Constant node holding one huge value.
    fn model() -> ModelProto {
        let w: Vec<f32> = (0..128).map(|i| (i as f32 - 64.0) / 7.0).collect();
        let mut b: Vec<f32> = (0..64).map(|i| i as f32 * 0.001).collect();
        b[3] = 1e6;
        let mut konst = node("Constant", "bias".into(), &[], &["B"]);
        konst.attribute.push(AttributeProto {
            name: "value".into(),
            r#type: crate::onnx::proto::AttrType::Tensor,
            t: Some(tensor_to_proto("", &Tensor::from_vec(vec![64], b).unwrap()).unwrap()),
            ..Default::default()
        });
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetId {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: vec![
                    konst,
                    node("MatMul", "mm".into(), &["x", "W"], &["xw"]),
                    node("Add", "add".into(), &["xw", "B"], &["y"]),
                ],
                initializer: vec![
                    tensor_to_proto("W", &Tensor::from_vec(vec![2, 64], w).unwrap()).unwrap(),
                ],
                input: vec![vi("x", &[1, 2])],
                output: vec![vi("y", &[1, 64])],
                name: "g".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn run(m: &ModelProto) -> Vec<f32> {
        let model = crate::Model::load(&encode_model(m)).unwrap();
        let x = Tensor::from_vec(vec![1, 2], vec![0.5f32, -1.25]).unwrap();
        model.run(&[("x", x)]).unwrap()[0].1.to_f32_vec().unwrap()
    }

    #[test]
    fn weights_become_float16_with_a_cast_and_the_outputs_stay_close() {
        let mut m = model();
        let before = run(&m);
        let r = weights_to_fp16(&mut m, &Fp16Options::default()).unwrap();
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.initializer[0].data_type, DType::F16.to_onnx());
        assert_eq!(g.initializer[0].name, "W_fp16");
        assert_eq!(g.node.iter().filter(|n| n.op_type == "Cast").count(), 2);
        let mut changed = r.changed.clone();
        changed.sort();
        assert_eq!(
            changed,
            [("add".into(), "Add".into()), ("mm".into(), "MatMul".into())]
        );
        assert!(
            r.notes.iter().any(|n| n.contains("1 value(s) beyond")),
            "{r}"
        );
        let after = run(&m);
        for (i, (a, b)) in after.iter().zip(&before).enumerate() {
            let want = if i == 3 { 65504.0 + (b - 1e6) } else { *b };
            assert!(
                (a - want).abs() <= 2e-3 * (1.0 + want.abs()),
                "{i}: {a} vs {want}"
            );
        }
    }

    #[test]
    fn excluded_readers_and_graph_inputs_keep_float32() {
        let mut m = model();
        let opts = Fp16Options {
            exclude: vec!["MatMul".into()],
            ..Default::default()
        };
        let r = weights_to_fp16(&mut m, &opts).unwrap();
        assert_eq!(r.changed, [("add".to_string(), "Add".to_string())]);
        assert_eq!(
            m.graph.as_ref().unwrap().initializer[0].data_type,
            DType::F32.to_onnx()
        );

        let mut m = model();
        let g = m.graph.as_mut().unwrap();
        g.input.push(vi("W", &[2, 64]));
        let r = weights_to_fp16(&mut m, &Fp16Options::default()).unwrap();
        assert!(r.kept.iter().any(|k| k.2.contains("graph input")));
        assert_eq!(
            m.graph.as_ref().unwrap().initializer[0].data_type,
            DType::F32.to_onnx()
        );
    }
}
