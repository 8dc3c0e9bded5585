//! Weight-storage steps on real models, end to end: int4 blockwise (MatMulNBits) and
//! float16 weights. decode → compress → encode; the written model runs in our runtime
//! and in onnxruntime (tools/ort_outputs.py) with the same outputs, and stays close to
//! the float model on onnxruntime's reference inputs (.cache/reference/<id>/).

use edgepredict::compress::fp16::{weights_to_fp16, Fp16Options};
use edgepredict::compress::int4::{quantize_int4, Int4Options};
use edgepredict::compress::StepReport;
use edgepredict::onnx::proto::ModelProto;
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

/// The reference inputs of a model (tools/make_reference.py), by name.
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

/// Row-wise argmax agreement over the last axis (for PP-OCR rec: per time step).
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
    /// "int4" or "fp16": the file suffix.
    tag: &'static str,
    min_cosine: f64,
    /// Smallest row-wise top-1 agreement with the float model (classifiers, CTC).
    min_top1: Option<f64>,
    /// Largest size ratio compressed / float.
    max_size_ratio: f64,
    /// Largest relative max difference ours vs onnxruntime on the written model.
    max_ort_diff: f64,
}

fn check(c: &Case, step: impl Fn(&mut ModelProto) -> StepReport) {
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
    let report = step(&mut proto);
    eprint!("{} {}: {report}", c.id, c.tag);
    assert!(!report.changed.is_empty(), "{}: nothing changed", c.id);
    let cbytes = encode_model(&proto);
    let ratio = cbytes.len() as f64 / bytes.len() as f64;
    let work = root().join("target/tmp/compress");
    std::fs::create_dir_all(&work).unwrap();
    let cpath = work.join(format!("{}_{}.onnx", c.id, c.tag));
    std::fs::write(&cpath, &cbytes).unwrap();
    eprintln!(
        "  size {:.2} MB → {:.2} MB ({ratio:.3})",
        bytes.len() as f64 / 1e6,
        cbytes.len() as f64 / 1e6
    );

    let inputs = reference_inputs(&dir);
    let float = run(&Model::load(&bytes).unwrap(), &inputs);
    let comp = run(&Model::load(&cbytes).unwrap(), &inputs);
    assert_eq!(float.len(), comp.len());
    for ((name, f), (_, q)) in float.iter().zip(&comp) {
        if !f.dtype().is_float() {
            continue;
        }
        let cos = cosine(q, f);
        let top1 = c.min_top1.map(|_| top1_agreement(q, f));
        eprintln!("  {name}: cosine to float {cos:.6}, top-1 agreement {top1:?}");
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

    // onnxruntime runs the written model, and agrees with our runtime on it.
    let ort_dir = work.join(format!("{}_{}_ort", c.id, c.tag));
    if let Some(ort) = ort_outputs(&cpath, &dir, &ort_dir) {
        assert_eq!(ort.len(), comp.len());
        for ((name, q), o) in comp.iter().zip(&ort) {
            if !q.dtype().is_float() {
                assert_eq!(q.to_i64_vec().unwrap(), o.to_i64_vec().unwrap(), "{name}");
                continue;
            }
            let (cos, rel) = (cosine(q, o), rel_max_diff(q, o));
            eprintln!(
                "  {name}: ours vs onnxruntime: cosine {cos:.7}, max diff {rel:.2e} of scale"
            );
            assert!(
                cos > 0.99999 && rel < c.max_ort_diff,
                "{} {name}: ours and onnxruntime differ: cosine {cos}, {rel}",
                c.id
            );
        }
    }
}

fn int4(m: &mut ModelProto) -> StepReport {
    quantize_int4(m, &Int4Options::default()).unwrap()
}

fn fp16(m: &mut ModelProto) -> StepReport {
    weights_to_fp16(m, &Fp16Options::default()).unwrap()
}

#[test]
fn int4_minilm() {
    check(
        &Case {
            id: "minilm_l3",
            tag: "int4",
            min_cosine: 0.95,
            min_top1: None,
            max_size_ratio: 0.75,
            max_ort_diff: 1e-3,
        },
        int4,
    );
}

#[test]
fn int4_ppocr_rec() {
    check(
        &Case {
            id: "ppocr_rec",
            tag: "int4",
            min_cosine: 0.95,
            min_top1: Some(0.9),
            max_size_ratio: 0.9,
            max_ort_diff: 1e-3,
        },
        int4,
    );
}

/// Symmetric blocks (no zero points, signed scales) of 64: K = 120 and 240 pad.
#[test]
fn int4_ppocr_rec_symmetric_block64() {
    check(
        &Case {
            id: "ppocr_rec",
            tag: "int4_sym64",
            min_cosine: 0.95,
            min_top1: Some(0.9),
            max_size_ratio: 0.9,
            max_ort_diff: 1e-3,
        },
        |m| {
            let opts = Int4Options {
                block_size: 64,
                symmetric: true,
                ..Default::default()
            };
            quantize_int4(m, &opts).unwrap()
        },
    );
}

#[test]
fn fp16_magika() {
    check(
        &Case {
            id: "magika",
            tag: "fp16",
            min_cosine: 0.9999,
            min_top1: Some(1.0),
            max_size_ratio: 0.55,
            max_ort_diff: 1e-4,
        },
        fp16,
    );
}

#[test]
fn fp16_ppocr_cls() {
    check(
        &Case {
            id: "ppocr_cls",
            tag: "fp16",
            min_cosine: 0.9999,
            min_top1: Some(1.0),
            // Many weights of under 64 values stay float32.
            max_size_ratio: 0.6,
            max_ort_diff: 1e-4,
        },
        fp16,
    );
}

#[test]
fn fp16_minilm() {
    check(
        &Case {
            id: "minilm_l3",
            tag: "fp16",
            min_cosine: 0.999,
            min_top1: None,
            max_size_ratio: 0.55,
            max_ort_diff: 1e-4,
        },
        fp16,
    );
}
