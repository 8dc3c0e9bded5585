//! The compression steps on real models, end to end: decode → compress → encode, then
//! the written model runs in our runtime and in onnxruntime (tools/ort_outputs.py) with
//! the same outputs, and stays close to the float model on onnxruntime's reference inputs.

use edgepredict::compress::quantize::{quantize_dynamic, QuantizeOptions};
use edgepredict::onnx::{decode_model, encode_model};
use edgepredict::{Model, Tensor};
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn require() -> bool {
    std::env::var("EDGEPREDICT_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

fn npy(p: &Path) -> Tensor {
    edgepredict::api::io::read_npy(&std::fs::read(p).unwrap()).unwrap()
}

/// The reference inputs of `id` (tools/make_reference.py), by name.
fn reference_inputs(dir: &Path) -> Vec<(String, Tensor)> {
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

fn run(m: &Model, inputs: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let refs: Vec<(&str, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    m.run(&refs).unwrap()
}

/// Cosine similarity of two float tensors seen as flat vectors.
fn cosine(a: &Tensor, b: &Tensor) -> f64 {
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
fn rel_max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Row-wise argmax agreement over the last axis.
fn top1_agreement(a: &Tensor, b: &Tensor) -> f64 {
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
fn ort_outputs(model: &Path, dir: &Path, out: &Path) -> Option<Vec<Tensor>> {
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
    let mut outs = Vec::new();
    for k in 0.. {
        let p = out.join(format!("output_{k}.npy"));
        if !p.exists() {
            break;
        }
        outs.push(npy(&p));
    }
    Some(outs)
}

struct Case {
    id: &'static str,
    /// Smallest cosine to the float model, per output.
    min_cosine: f64,
    /// Smallest row-wise top-1 agreement with the float model (classifiers).
    min_top1: Option<f64>,
    /// Largest size ratio quantized / float.
    max_size_ratio: f64,
}

fn check_dynamic(c: &Case) {
    let model = root().join(format!(".cache/models/{}.onnx", c.id));
    let dir = root().join(format!(".cache/reference/{}", c.id));
    if !model.exists() || !dir.exists() {
        assert!(
            !require(),
            "{} missing: run tools/setup.sh",
            model.display()
        );
        eprintln!("skip {}: not fetched", c.id);
        return;
    }
    let bytes = std::fs::read(&model).unwrap();
    let mut proto = decode_model(&bytes).unwrap();
    let report = quantize_dynamic(&mut proto, &QuantizeOptions::default()).unwrap();
    eprint!("{}: {report}", c.id);
    assert!(!report.changed.is_empty(), "{}: nothing quantized", c.id);
    let qbytes = encode_model(&proto);
    let ratio = qbytes.len() as f64 / bytes.len() as f64;
    let work = root().join("target/tmp/compress");
    std::fs::create_dir_all(&work).unwrap();
    let qpath = work.join(format!("{}_dyn.onnx", c.id));
    std::fs::write(&qpath, &qbytes).unwrap();

    let inputs = reference_inputs(&dir);
    let float = run(&Model::load(&bytes).unwrap(), &inputs);
    let quant = run(&Model::load(&qbytes).unwrap(), &inputs);
    for ((name, f), (_, q)) in float.iter().zip(&quant) {
        if !f.dtype().is_float() {
            continue;
        }
        let cos = cosine(q, f);
        let top1 = c.min_top1.map(|_| top1_agreement(q, f));
        eprintln!(
            "  {name}: size {:.1} MB → {:.1} MB ({ratio:.2}), cosine to float {cos:.5}, top-1 {top1:?}",
            bytes.len() as f64 / 1e6,
            qbytes.len() as f64 / 1e6
        );
        assert!(
            cos >= c.min_cosine,
            "{} {name}: cosine {cos} < {}",
            c.id,
            c.min_cosine
        );
        if let (Some(t), Some(min)) = (top1, c.min_top1) {
            assert!(t >= min, "{} {name}: top-1 agreement {t} < {min}", c.id);
        }
    }
    assert!(ratio <= c.max_size_ratio, "{}: size ratio {ratio}", c.id);

    // onnxruntime runs the written model, and agrees with our int8 kernels on it.
    if let Some(ort) = ort_outputs(&qpath, &dir, &work.join(format!("{}_dyn_ort", c.id))) {
        assert_eq!(ort.len(), quant.len());
        for ((name, q), o) in quant.iter().zip(&ort) {
            if !q.dtype().is_float() {
                assert_eq!(
                    q.to_i64_vec().unwrap(),
                    o.to_i64_vec().unwrap(),
                    "{} {name}",
                    c.id
                );
                continue;
            }
            let (cos, rel) = (cosine(q, o), rel_max_diff(q, o));
            eprintln!("  {name}: ours vs onnxruntime on the int8 model: cosine {cos:.6}, max diff {rel:.2e} of scale");
            assert!(
                cos > 0.9999 && rel < 0.02,
                "{} {name}: ours and onnxruntime differ: cosine {cos}, {rel}",
                c.id
            );
        }
    }
}

#[test]
fn dynamic_int8_magika() {
    check_dynamic(&Case {
        id: "magika",
        min_cosine: 0.99,
        min_top1: Some(1.0),
        max_size_ratio: 0.45,
    });
}

#[test]
fn dynamic_int8_ppocr_cls() {
    check_dynamic(&Case {
        id: "ppocr_cls",
        min_cosine: 0.99,
        min_top1: Some(1.0),
        max_size_ratio: 0.5,
    });
}

#[test]
fn dynamic_int8_minilm() {
    check_dynamic(&Case {
        id: "minilm_l3",
        min_cosine: 0.97,
        min_top1: None,
        max_size_ratio: 0.3,
    });
}
