//! Helpers shared by the compression tests (tests/compress*.rs): the real models'
//! reference data, running a model, onnxruntime's outputs on a written model, and the
//! distances the tests bound.
#![allow(dead_code)]

use edgepredict::{Model, Tensor};
use std::path::Path;
use std::process::Command;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn require() -> bool {
    std::env::var("EDGEPREDICT_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

pub fn npy(p: &Path) -> Tensor {
    edgepredict::api::io::read_npy(&std::fs::read(p).unwrap()).unwrap()
}

/// The reference inputs of `id` (tools/make_reference.py), by name.
pub fn reference_inputs(dir: &Path) -> Vec<(String, Tensor)> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|io| {
            let name = io[0].as_str().unwrap().to_string();
            (name, npy(&dir.join(io[1].as_str().unwrap())))
        })
        .collect()
}

pub fn run(m: &Model, inputs: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let refs: Vec<(&str, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    m.run(&refs).unwrap()
}

/// Cosine similarity of two float tensors seen as flat vectors.
pub fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        1.0
    } else {
        dot / (na * nb)
    }
}

/// Largest |a - b| over the largest |b|.
pub fn rel_max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Row-wise argmax agreement over the last axis.
pub fn top1_agreement(a: &Tensor, b: &Tensor) -> f64 {
    let n = *a.shape().last().unwrap();
    let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
    let argmax = |r: &[f32]| {
        r.iter()
            .enumerate()
            .fold(0, |best, (i, v)| if *v > r[best] { i } else { best })
    };
    let rows = a.len() / n;
    let same = (0..rows)
        .filter(|&r| argmax(&a[r * n..(r + 1) * n]) == argmax(&b[r * n..(r + 1) * n]))
        .count();
    same as f64 / rows as f64
}

/// onnxruntime's outputs for `model` on the reference inputs in `dir`, or None without
/// the venv (a failure when models are required).
pub fn ort_outputs(model: &Path, dir: &Path, out: &Path) -> Option<Vec<Tensor>> {
    let py = root().join(".cache/venv/bin/python");
    if !py.exists() {
        assert!(!require(), "no .cache/venv: run tools/setup.sh");
        return None;
    }
    let st = Command::new(py)
        .arg(root().join("tools/ort_outputs.py"))
        .args([model, dir, out])
        .status()
        .unwrap();
    assert!(st.success(), "onnxruntime failed on {}", model.display());
    Some(reference_outputs(out))
}

/// The outputs `output_K.npy` in `dir` (onnxruntime's, from tools/make_reference.py or
/// tools/ort_outputs.py), in order.
pub fn reference_outputs(dir: &Path) -> Vec<Tensor> {
    (0..)
        .map(|k| dir.join(format!("output_{k}.npy")))
        .take_while(|p| p.exists())
        .map(|p| npy(&p))
        .collect()
}

/// Asserts each float output of `cand` stays close to the float model's `float`: cosine
/// ≥ `min_cosine`, and row-wise top-1 agreement ≥ `min_top1` when given. `what` names the
/// case in messages.
pub fn assert_close_to_float(
    what: &str,
    float: &[(String, Tensor)],
    cand: &[(String, Tensor)],
    min_cosine: f64,
    min_top1: Option<f64>,
) {
    assert_eq!(float.len(), cand.len(), "{what}: output count");
    for ((name, f), (_, q)) in float.iter().zip(cand) {
        if !f.dtype().is_float() {
            continue;
        }
        let cos = cosine(q, f);
        let top1 = min_top1.map(|_| top1_agreement(q, f));
        eprintln!("  {what} {name}: cosine to float {cos:.6}, top-1 {top1:?}");
        assert!(
            cos >= min_cosine,
            "{what} {name}: cosine {cos} < {min_cosine}"
        );
        if let (Some(t), Some(min)) = (top1, min_top1) {
            assert!(t >= min, "{what} {name}: top-1 agreement {t} < {min}");
        }
    }
}
