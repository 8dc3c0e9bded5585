//! The compression steps on real models, end to end: decode → compress → encode, then
//! the written model runs in our runtime and in onnxruntime (tools/ort_outputs.py) with
//! the same outputs, and stays close to the float model on onnxruntime's reference inputs.

mod compress_support;
use compress_support::*;

use edgepredict::compress::quantize::{quantize_dynamic, QuantizeOptions};
use edgepredict::onnx::{decode_model, encode_model};
use edgepredict::Model;

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
    eprintln!(
        "  {}: size {:.1} MB → {:.1} MB ({ratio:.2})",
        c.id,
        bytes.len() as f64 / 1e6,
        qbytes.len() as f64 / 1e6
    );
    assert_close_to_float(c.id, &float, &quant, c.min_cosine, c.min_top1);
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
