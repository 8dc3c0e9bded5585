//! Pruning and low-rank factorization on real models, end to end: decode → compress →
//! encode, then the written model runs in our runtime and in onnxruntime
//! (tools/ort_outputs.py) with the same outputs (all float: tight tolerance), and its
//! distance to the float model (onnxruntime's reference outputs) is measured and bounded.

mod compress_support;
use compress_support::*;

use edgepredict::compress::evaluate::gzip_len;
use edgepredict::compress::lowrank::{low_rank, LowRankOptions, Rank};
use edgepredict::compress::prune::{prune, PruneOptions};
use edgepredict::compress::StepReport;
use edgepredict::onnx::proto::ModelProto;
use edgepredict::onnx::{decode_model, encode_model, tensor_from_proto};
use edgepredict::{Model, Tensor};

struct Case {
    id: &'static str,
    tag: &'static str,
    /// Smallest cosine to the float model, per float output.
    min_cosine: f64,
    /// Smallest row-wise top-1 agreement with the float model (classifiers).
    min_top1: Option<f64>,
}

struct Written {
    float_bytes: Vec<u8>,
    bytes: Vec<u8>,
    proto: ModelProto,
}

/// Applies `step` to the model `c.id`, writes it, checks it in our runtime and in
/// onnxruntime, and bounds its distance to the float model. None when the model is not
/// fetched.
fn check(c: &Case, step: impl FnOnce(&mut ModelProto) -> StepReport) -> Option<Written> {
    let model = root().join(format!(".cache/models/{}.onnx", c.id));
    let dir = root().join(format!(".cache/reference/{}", c.id));
    if !model.exists() || !dir.exists() {
        assert!(
            !require(),
            "{} missing: run tools/setup.sh",
            model.display()
        );
        eprintln!("skip {}: not fetched", c.id);
        return None;
    }
    let float_bytes = std::fs::read(&model).unwrap();
    let mut proto = decode_model(&float_bytes).unwrap();
    edgepredict::compress::edit::name_nodes(&mut proto);
    let report = step(&mut proto);
    eprint!("{} {}: {report}", c.id, c.tag);
    let bytes = encode_model(&proto);
    let work = root().join("target/tmp/compress_prune");
    std::fs::create_dir_all(&work).unwrap();
    let path = work.join(format!("{}_{}.onnx", c.id, c.tag));
    std::fs::write(&path, &bytes).unwrap();

    let inputs = reference_inputs(&dir);
    let ours = run(&Model::load(&bytes).unwrap(), &inputs);
    // The float model's outputs, named as ours.
    let reference = reference_outputs(&dir);
    assert_eq!(ours.len(), reference.len());
    let float: Vec<(String, Tensor)> = ours.iter().map(|(n, _)| n.clone()).zip(reference).collect();
    let what = format!("{} {}", c.id, c.tag);
    assert_close_to_float(&what, &float, &ours, c.min_cosine, c.min_top1);
    let out = work.join(format!("{}_{}_ort", c.id, c.tag));
    if let Some(ort) = ort_outputs(&path, &dir, &out) {
        assert_eq!(ort.len(), ours.len());
        for ((name, o), r) in ours.iter().zip(&ort) {
            if !o.dtype().is_float() {
                assert_eq!(o.to_i64_vec().unwrap(), r.to_i64_vec().unwrap());
                continue;
            }
            let (cos, rel) = (cosine(o, r), rel_max_diff(o, r));
            eprintln!(
                "  {name}: ours vs onnxruntime: cosine {cos:.7}, max diff {rel:.1e} of scale"
            );
            assert!(
                cos > 0.99999 && rel < 1e-3,
                "{} {} {name}: ours and onnxruntime differ: cosine {cos}, {rel}",
                c.id,
                c.tag
            );
        }
    }
    Some(Written {
        float_bytes,
        bytes,
        proto,
    })
}

fn sizes(w: &Written, gzip: bool) -> (usize, usize, Option<(usize, usize)>) {
    let gz = gzip.then(|| {
        (
            gzip_len(&w.float_bytes).unwrap().unwrap(),
            gzip_len(&w.bytes).unwrap().unwrap(),
        )
    });
    eprintln!(
        "  size {} → {} bytes, gzipped {:?}",
        w.float_bytes.len(),
        w.bytes.len(),
        gz
    );
    (w.float_bytes.len(), w.bytes.len(), gz)
}

/// Zero fraction over the weights of the nodes the step changed.
fn sparsity_of(p: &ModelProto, changed: &[(String, String)]) -> f64 {
    let g = p.graph.as_ref().unwrap();
    let (mut zeros, mut total) = (0usize, 0usize);
    for n in g
        .node
        .iter()
        .filter(|n| changed.iter().any(|c| c.0 == n.name))
    {
        let t = g.initializer.iter().find(|t| t.name == n.input[1]).unwrap();
        let v = tensor_from_proto(t).unwrap().to_f32_vec().unwrap();
        zeros += v.iter().filter(|x| **x == 0.0).count();
        total += v.len();
    }
    zeros as f64 / total as f64
}

/// `max_gzip_ratio`: gzipped pruned / gzipped float (MiniLM's embedding table, 2/3 of
/// its weights, is no MatMul weight and stays dense).
fn unstructured(id: &'static str, min_cosine: f64, min_top1: Option<f64>, max_gzip_ratio: f64) {
    let mut changed = Vec::new();
    let opts = PruneOptions {
        sparsity: 0.5,
        ..Default::default()
    };
    let case = Case {
        id,
        tag: "prune50",
        min_cosine,
        min_top1,
    };
    let Some(w) = check(&case, |m| {
        let r = prune(m, &opts).unwrap();
        changed = r.changed.clone();
        r
    }) else {
        return;
    };
    assert!(!changed.is_empty(), "{id}: nothing pruned");
    let s = sparsity_of(&w.proto, &changed);
    eprintln!("  sparsity of the {} pruned weights: {s:.4}", changed.len());
    assert!((s - 0.5).abs() < 0.01, "{id}: sparsity {s}");
    let (f, c, gz) = sizes(&w, true);
    // Dense storage: the same size; the zeros show once gzipped.
    assert!(c as f64 <= f as f64 * 1.01, "{id}: {f} → {c}");
    let (gf, gc) = gz.unwrap();
    assert!(
        (gc as f64) < max_gzip_ratio * gf as f64,
        "{id}: gzipped {gf} → {gc}"
    );
}

#[test]
fn unstructured_50_magika() {
    // Measured: cosine 1.00000, top-1 1.0, gzipped 2.92 → 1.68 MB.
    unstructured("magika", 0.99, Some(1.0), 0.7);
}

#[test]
fn unstructured_50_minilm() {
    // Measured: cosine 0.925 (token states) and 0.907 (pooled), gzipped 63.2 → 54.7 MB.
    unstructured("minilm_l3", 0.85, None, 0.9);
}

#[test]
fn structured_50_ppocr_cls() {
    let opts = PruneOptions {
        sparsity: 0.5,
        structured: true,
        min_elements: 0,
        ..Default::default()
    };
    let mut changed = 0;
    let case = Case {
        id: "ppocr_cls",
        tag: "prune50s",
        // Measured: one of the two reference lines flips (top-1 0.5, cosine 0.50):
        // 50 % of the channels without fine-tuning is too much for this model, which is
        // what the accuracy guard is for. The bound only catches a worse break.
        min_cosine: 0.4,
        min_top1: Some(0.5),
    };
    let Some(w) = check(&case, |m| {
        let r = prune(m, &opts).unwrap();
        changed = r.changed.len();
        r
    }) else {
        return;
    };
    assert!(changed >= 5, "only {changed} node(s) pruned");
    let (f, c, _) = sizes(&w, true);
    assert!((c as f64) < 0.9 * f as f64, "no real size drop: {f} → {c}");
}

#[test]
fn low_rank_95_minilm() {
    let opts = LowRankOptions {
        rank: Rank::Energy(0.95),
        ..Default::default()
    };
    let mut report = StepReport::default();
    let case = Case {
        id: "minilm_l3",
        tag: "lowrank95",
        // Measured: cosine 0.994 (token states and pooled); 0.932 / 0.900 before the 90 %
        // cost limit, when 14 MatMuls were factorized.
        min_cosine: 0.98,
        min_top1: None,
    };
    let Some(w) = check(&case, |m| {
        report = low_rank(m, &opts).unwrap();
        report.clone()
    }) else {
        return;
    };
    let (f, c, _) = sizes(&w, false);
    // Measured: 4 of 18 MatMuls factorized (ranks 156-274), 20.9 % fewer of their values,
    // 69.1 → 67.8 MB. Every 2-D MatMul weight is either factorized (and the file shrinks)
    // or kept because its rank at 95 % energy keeps over 90 % of the multiply-adds.
    let considered = report.changed.len() + report.kept.len();
    assert!(considered >= 18, "{report}");
    for (n, _, why) in &report.kept {
        assert!(why.contains("saves too little"), "{n}: {why}");
    }
    if report.changed.is_empty() {
        assert_eq!(c, f);
    } else {
        assert!(c < f, "{f} → {c}");
    }
}
