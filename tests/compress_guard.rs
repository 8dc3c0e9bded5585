//! The accuracy guard on a model built here: two MatMuls, one with weights that
//! per-tensor int8 destroys (one huge value beside many small ones), one benign. The guard
//! must back off exactly the fragile one, keep the other quantized, and say so; given a
//! milder setting (per-channel) it must use that instead of keeping the layer float; with
//! a tolerance nothing can meet, it must report failure.

use edgepredict::compress::guard::{compress, Evaluator, GuardOptions, Metric, Step};
use edgepredict::compress::quantize::{quantize_dynamic, QuantizeOptions};
use edgepredict::compress::StepReport;
use edgepredict::onnx::encode::tensor_to_proto;
use edgepredict::onnx::proto::{
    DimProto, GraphProto, ModelProto, NodeProto, OperatorSetId, TypeProto, ValueInfoProto,
};
use edgepredict::Tensor;

fn vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto::Tensor {
            elem_type: 1,
            shape: Some(dims.iter().map(|&d| DimProto::Value(d)).collect()),
        }),
    }
}

fn matmul(name: &str, a: &str, b: &str, y: &str) -> NodeProto {
    NodeProto {
        name: name.into(),
        op_type: "MatMul".into(),
        input: vec![a.into(), b.into()],
        output: vec![y.into()],
        ..Default::default()
    }
}

/// x [8,32] → MatMul(benign) → h [8,32] → MatMul(fragile) → y [8,32].
fn model() -> ModelProto {
    let n = 32;
    let benign: Vec<f32> = (0..n * n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    // One value of 1000 sets the per-tensor scale to ~7.9: every other weight (|w| ≤ 1)
    // rounds to 0, so the layer's output collapses.
    let mut fragile: Vec<f32> = (0..n * n)
        .map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0)
        .collect();
    fragile[5] = 1000.0;
    let graph = GraphProto {
        name: "two".into(),
        node: vec![
            matmul("benign", "x", "wb", "h"),
            matmul("fragile", "h", "wf", "y"),
        ],
        initializer: vec![
            tensor_to_proto("wb", &Tensor::from_vec(vec![n, n], benign).unwrap()).unwrap(),
            tensor_to_proto("wf", &Tensor::from_vec(vec![n, n], fragile).unwrap()).unwrap(),
        ],
        input: vec![vi("x", &[8, n as i64])],
        output: vec![vi("y", &[8, n as i64])],
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetId {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

fn data() -> Vec<Vec<(String, Tensor)>> {
    (0..4)
        .map(|k| {
            let x: Vec<f32> = (0..8 * 32)
                .map(|i| (((i + 7 * k) * 29 % 89) as f32 / 44.0) - 1.0)
                .collect();
            vec![("x".to_string(), Tensor::from_vec(vec![8, 32], x).unwrap())]
        })
        .collect()
}

fn per_tensor_int8() -> Step {
    Step::new(
        "int8 per-tensor",
        |m, g| -> edgepredict::Result<StepReport> {
            let opts = QuantizeOptions {
                per_channel: false,
                exclude: g.kept(),
                overrides: g.milder(0).into_iter().map(|n| (n, true)).collect(),
                ..Default::default()
            };
            quantize_dynamic(m, &opts)
        },
    )
}

fn op_count(m: &ModelProto, op: &str) -> usize {
    let g = m.graph.as_ref().unwrap();
    g.node.iter().filter(|n| n.op_type == op).count()
}

fn evaluator(tolerance: f64) -> Evaluator {
    let opts = GuardOptions {
        metric: Metric::Cosine,
        tolerance,
        output: None,
        load: Default::default(),
    };
    Evaluator::new(&model(), data(), opts).unwrap()
}

#[test]
fn guard_backs_off_only_the_fragile_layer() {
    let eval = evaluator(5e-3);
    let out = compress(&model(), &[per_tensor_int8()], Some(&eval)).unwrap();
    let first = out.first_deviation.unwrap();
    assert!(
        first > 1e-2,
        "the unguarded model should be broken: {first}"
    );
    assert!(
        out.passed,
        "{}",
        out.guard_summary(Metric::Cosine, 5e-3, "y")
    );
    eprintln!("{}", out.guard_summary(Metric::Cosine, 5e-3, "y"));
    let backed: Vec<&str> = out.backed_off.iter().map(|b| b.node.as_str()).collect();
    assert_eq!(backed, ["fragile"]);
    assert!(out.deviation.unwrap() <= 5e-3);
    // The benign layer stayed quantized, the fragile one float.
    assert_eq!(op_count(&out.model, "MatMulInteger"), 1);
    assert_eq!(op_count(&out.model, "MatMul"), 1);
    let summary = out.guard_summary(Metric::Cosine, 5e-3, "y");
    assert!(
        summary.contains("backed off MatMul 'fragile' (int8 per-tensor: kept as it was)"),
        "{summary}"
    );
}

#[test]
fn guard_prefers_a_milder_setting_to_keeping_float() {
    // Per-channel, the outlier's column keeps ~1e-2 of error: this tolerance admits it.
    let tolerance = 0.02;
    let eval = evaluator(tolerance);
    let step = per_tensor_int8().with_milder(vec!["per-channel weights".into()]);
    let out = compress(&model(), &[step], Some(&eval)).unwrap();
    let summary = out.guard_summary(Metric::Cosine, tolerance, "y");
    assert!(out.first_deviation.unwrap() > tolerance, "{summary}");
    assert!(out.passed, "{summary}");
    assert_eq!(out.backed_off.len(), 1, "{summary}");
    let b = &out.backed_off[0];
    assert_eq!(b.node, "fragile");
    assert_eq!(
        b.grades,
        [(
            "int8 per-tensor".to_string(),
            Some("per-channel weights".to_string())
        )]
    );
    // Both layers quantized, the fragile one with a scale per column.
    assert_eq!(op_count(&out.model, "MatMulInteger"), 2);
    assert_eq!(op_count(&out.model, "MatMul"), 0);
    let g = out.model.graph.as_ref().unwrap();
    let scales: Vec<usize> = g
        .initializer
        .iter()
        .filter(|t| t.name.ends_with("_W_scale"))
        .map(|t| t.dims.iter().product::<i64>() as usize)
        .collect();
    assert_eq!(scales.len(), 2, "{scales:?}");
    assert!(scales.contains(&32) && scales.contains(&1), "{scales:?}");
    assert!(
        summary.contains("(int8 per-tensor: per-channel weights)"),
        "{summary}"
    );
    let notes = out.reports[0].notes.join("\n");
    assert!(notes.contains("'fragile': per-channel weights"), "{notes}");
}

#[test]
fn guard_passes_a_good_model_untouched() {
    let eval = evaluator(0.9);
    let out = compress(&model(), &[per_tensor_int8()], Some(&eval)).unwrap();
    assert!(out.passed && out.backed_off.is_empty());
    assert_eq!(out.evaluations, 1);
}

#[test]
fn guard_reports_a_tolerance_it_cannot_meet() {
    // A negative tolerance: not even the float model meets it.
    let eval = evaluator(-1.0);
    let out = compress(&model(), &[per_tensor_int8()], Some(&eval)).unwrap();
    assert!(!out.passed);
    assert!(out
        .guard_summary(Metric::Cosine, -1.0, "y")
        .contains("FAILS"));
}
