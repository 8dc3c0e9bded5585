//! Weight-storage steps on real models, end to end: int4 blockwise (MatMulNBits) and
//! float16 weights. decode → compress → encode; the written model runs in our runtime
//! and in onnxruntime (tools/ort_outputs.py) with the same outputs, and stays close to
//! the float model on onnxruntime's reference inputs (.cache/reference/<id>/).

mod compress_support;
use compress_support::*;

use edgepredict::compress::fp16::{weights_to_fp16, Fp16Options};
use edgepredict::compress::int4::{quantize_int4, Int4Options};
use edgepredict::compress::StepReport;
use edgepredict::onnx::proto::ModelProto;
use edgepredict::onnx::{decode_model, encode_model};
use edgepredict::Model;

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
    assert_close_to_float(c.id, &float, &comp, c.min_cosine, c.min_top1);
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
