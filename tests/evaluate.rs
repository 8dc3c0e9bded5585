//! `compress::evaluate` and `edgepredict evaluate`: a model against itself agrees fully;
//! PP-OCR cls against its int8 QDQ variant agrees within the thresholds that
//! tests/quantized_models.rs holds the int8 models to; models whose outputs do not match
//! give typed errors; the CLI reads both data layouts and prints JSON that parses.
//!
//! The real-model tests skip with a message when `.cache/models` lacks the models, unless
//! EDGEPREDICT_REQUIRE_MODELS is set (CI), where that fails.

mod support;

use edgepredict::api::io::{read_npy, write_npy};
use edgepredict::compress::evaluate::{compare, Agreement, EvalOptions, FloatAgreement, Report};
use edgepredict::{ErrorKind, Model, Tensor};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The paths under the repository root, or None (skip) when one is missing and CI does
/// not require the models.
fn require(what: &str, paths: &[&str]) -> Option<Vec<PathBuf>> {
    let full: Vec<PathBuf> = paths.iter().map(|p| root().join(p)).collect();
    if let Some(missing) = full.iter().find(|p| !p.exists()) {
        if std::env::var_os("EDGEPREDICT_REQUIRE_MODELS").is_some() {
            panic!(
                "{what}: {} is missing and EDGEPREDICT_REQUIRE_MODELS is set: run tools/setup.sh",
                missing.display()
            );
        }
        eprintln!(
            "SKIPPED {what}: {} is absent (run tools/fetch_models.sh, tools/make_reference.py, \
             tools/make_int8.py; set EDGEPREDICT_REQUIRE_MODELS=1 to make this an error)",
            missing.display()
        );
        return None;
    }
    Some(full)
}

fn load(p: &Path) -> Model {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Model::load(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn npy(p: &Path) -> Tensor {
    read_npy(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn float(r: &Report, k: usize) -> &FloatAgreement {
    match &r.outputs[k].agreement {
        Agreement::Float(f) => f,
        other => panic!("output {k} is not compared as float: {other:?}"),
    }
}

const CLS: &str = ".cache/models/ppocr_cls.onnx";
const CLS_QDQ: &str = ".cache/models/int8/ppocr_cls_qdq.onnx";

#[test]
fn a_model_against_itself_agrees_fully() {
    let Some(p) = require(
        "ppocr_cls vs itself",
        &[CLS, ".cache/reference/ppocr_cls/input_x.npy"],
    ) else {
        return;
    };
    let m = load(&p[0]);
    let set = vec![("x".to_string(), npy(&p[1]))];
    let r = compare(&m, &m, &[set], &EvalOptions { repeat: 1 }).unwrap();
    eprintln!("{r}");
    assert_eq!(r.outputs.len(), 1);
    let f = float(&r, 0);
    assert_eq!(f.top1, Some(1.0));
    assert_eq!((f.cosine_mean, f.cosine_min), (1.0, 1.0));
    assert_eq!((f.max_abs, f.mean_abs, f.max_rel), (0.0, 0.0, 0.0));
    assert!(f.reference_scale > 0.0);
    assert!(r.latency.is_some());
}

/// The thresholds of tests/quantized_models.rs: cls accuracy 0.97 (top-1 agreement with
/// the float model here) and cosine 0.97 (MiniLM's embedding threshold).
#[test]
fn ppocr_cls_float_against_int8_qdq() {
    let Some(p) = require(
        "ppocr_cls vs int8 QDQ",
        &[
            CLS,
            CLS_QDQ,
            ".cache/reference/int8/ppocr_cls_qdq/input_x.npy",
        ],
    ) else {
        return;
    };
    let (float_model, int8) = (load(&p[0]), load(&p[1]));
    let set = vec![("x".to_string(), npy(&p[2]))];
    let r = compare(&float_model, &int8, &[set], &EvalOptions::default()).unwrap();
    eprintln!("{r}");
    let f = float(&r, 0);
    assert_eq!(f.rows, 100);
    assert!(f.top1.unwrap() >= 0.97, "top-1 {:?}", f.top1);
    assert!(f.cosine_mean >= 0.97, "cosine {}", f.cosine_mean);
    assert!(f.cosine_min <= f.cosine_mean);
    // int8 is not float: a report of zero error would mean the same model ran twice.
    assert!(f.max_abs > 0.0 && f.mean_abs > 0.0, "{f:?}");
    // Softmax probabilities: errors stay well under the scale of 1.
    assert!(f.max_rel < 0.5, "{f:?}");
    assert!(r.latency.is_none(), "repeat 0 times nothing");
}

#[test]
fn a_different_model_is_a_typed_error() {
    let Some(p) = require(
        "ppocr_cls vs magika",
        &[
            CLS,
            ".cache/models/magika.onnx",
            ".cache/reference/ppocr_cls/input_x.npy",
        ],
    ) else {
        return;
    };
    let (cls, magika) = (load(&p[0]), load(&p[1]));
    let set = vec![("x".to_string(), npy(&p[2]))];
    let e = compare(&cls, &magika, &[set], &EvalOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.message().contains("'save_infer_model/scale_0.tmp_1'"),
        "{e}"
    );
}

/// y = Identity(x), x float [N,3]; the same with another op, output type and declared
/// output shape.
fn small_model(op: &str, attrs: Vec<Vec<u8>>, out_type: i64, out_dims: &[i64]) -> Model {
    let n = node(&NodeSpec {
        op,
        inputs: &["x"],
        outputs: &["y"],
        attrs,
    });
    let bytes = model(&graph(
        &[n],
        &[],
        &[value_info("x", 1, &[-1, 3])],
        &[value_info("y", out_type, out_dims)],
    ));
    Model::load(&bytes).unwrap()
}

fn x23() -> Vec<(String, Tensor)> {
    vec![(
        "x".to_string(),
        Tensor::from_vec(vec![2, 3], vec![1f32, 2., 3., 4., 5., 6.]).unwrap(),
    )]
}

#[test]
fn mismatched_outputs_are_typed_errors_per_output() {
    let reference = small_model("Identity", vec![], 1, &[-1, 3]);
    let opts = EvalOptions::default();
    // Transposed: [3,N] against [N,3], seen only when run.
    let transposed = small_model("Transpose", vec![], 1, &[3, -1]);
    let e = compare(&reference, &transposed, &[x23()], &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape, "{e}");
    assert!(
        e.message().contains("output 'y': on input set 0")
            && e.message().contains("[2, 3]")
            && e.message().contains("[3, 2]"),
        "{e}"
    );
    // Labels where the reference gives floats: refused from the declarations.
    let cast = small_model("Cast", vec![attr_int("to", 7)], 7, &[-1, 3]);
    let e = compare(&reference, &cast, &[x23()], &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DType, "{e}");
    assert!(e.message().contains("float32") && e.message().contains("int64"));
    // The same model passes, and the candidate's own input errors stay typed.
    assert!(compare(&reference, &reference, &[x23()], &opts).is_ok());
    let wrong = vec![(
        "x".to_string(),
        Tensor::from_vec(vec![4], vec![0f32; 4]).unwrap(),
    )];
    let e = compare(&reference, &reference, &[wrong], &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(compare(&reference, &reference, &[], &opts).is_err());
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgepredict"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run edgepredict");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_json(args: &[&str]) -> Json {
    let (ok, out, err) = cli(args);
    assert!(ok, "edgepredict {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn cli_on_reference_data_prints_json() {
    let Some(_) = require(
        "edgepredict evaluate on .cache/reference/ppocr_cls",
        &[CLS, CLS_QDQ, ".cache/reference/ppocr_cls/input_x.npy"],
    ) else {
        return;
    };
    let j = cli_json(&[
        "evaluate",
        CLS,
        CLS_QDQ,
        "--data",
        ".cache/reference/ppocr_cls",
        "--repeat",
        "2",
        "--json",
    ]);
    eprintln!("{j}");
    assert_eq!(j["sets"], 1);
    let o = &j["outputs"][0];
    assert_eq!(o["name"], "save_infer_model/scale_0.tmp_1");
    assert_eq!(o["shape"], serde_json::json!([2, 2]));
    assert_eq!(o["top1"].as_f64(), Some(1.0));
    assert!(o["cosine_mean"].as_f64().unwrap() >= 0.97);
    assert!(o["max_abs"].as_f64().unwrap() > 0.0);
    let l = &j["latency"];
    assert_eq!(l["repeat"], 2);
    for side in ["reference", "candidate"] {
        let (med, min) = (
            l[side]["median_ms"].as_f64().unwrap(),
            l[side]["min_ms"].as_f64().unwrap(),
        );
        assert!(min > 0.0 && min <= med, "{side}: {l}");
    }
    let sizes = j["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 2);
    let on_disk = std::fs::metadata(root().join(CLS)).unwrap().len();
    assert_eq!(sizes[0]["bytes"].as_u64(), Some(on_disk));
    for s in sizes {
        let (b, g) = (
            s["bytes"].as_u64().unwrap(),
            s["gzip_bytes"].as_u64().unwrap(),
        );
        assert!(g > 0 && g < b, "{s}");
    }
    // The int8 model is smaller than the float one, gzipped even more so.
    assert!(sizes[1]["gzip_bytes"].as_u64() < sizes[0]["gzip_bytes"].as_u64());
    assert!(j["notes"][0]
        .as_str()
        .unwrap()
        .contains("x float32 [2, 3, 48, 192]"));

    let (ok, _, err) = cli(&[
        "evaluate",
        CLS,
        ".cache/models/magika.onnx",
        "--data",
        ".cache/reference/ppocr_cls",
    ]);
    assert!(!ok);
    assert!(
        err.contains("InvalidInput") && err.contains("no such output"),
        "{err}"
    );
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("evaluate_{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The two layouts of --data, and made-up inputs without it, on a model built here (runs
/// without the real models).
#[test]
fn cli_reads_both_data_layouts() {
    let d = scratch("layouts");
    let m = d.join("identity.onnx");
    std::fs::write(&m, identity_model()).unwrap();
    let m = m.to_str().unwrap();

    let pb = d.join("onnx_layout");
    for (k, rows) in [(0, 1i64), (1, 2), (2, 4)] {
        let set = pb.join(format!("test_data_set_{k}"));
        std::fs::create_dir_all(&set).unwrap();
        let v: Vec<f32> = (0..rows * 3).map(|i| i as f32).collect();
        std::fs::write(set.join("input_0.pb"), tensor_f32("", &[rows, 3], &v)).unwrap();
    }
    let j = cli_json(&["evaluate", m, m, "--data", pb.to_str().unwrap(), "--json"]);
    assert_eq!(j["sets"], 3);
    // Rows over all sets: 1 + 2 + 4.
    assert_eq!(j["outputs"][0]["rows"], 7);
    assert_eq!(j["outputs"][0]["cosine_min"].as_f64(), Some(1.0));

    let sub = d.join("npy_sets");
    for (k, rows) in [("a", 1usize), ("b", 3)] {
        std::fs::create_dir_all(sub.join(k)).unwrap();
        let t = Tensor::from_vec(vec![rows, 3], vec![0.5f32; rows * 3]).unwrap();
        std::fs::write(sub.join(k).join("x.npy"), write_npy(&t).unwrap()).unwrap();
    }
    let j = cli_json(&["evaluate", m, m, "--data", sub.to_str().unwrap(), "--json"]);
    assert_eq!(j["sets"], 2);
    assert_eq!(j["outputs"][0]["elements"], 12);

    let j = cli_json(&["evaluate", m, m, "--repeat", "0", "--json"]);
    assert_eq!(j["sets"], 1);
    assert_eq!(j["latency"], Json::Null);
    assert!(j["notes"][0].as_str().unwrap().contains("random inputs"));

    let (ok, out, _) = cli(&["evaluate", m, m]);
    assert!(ok);
    assert!(out.contains("cos mean") && out.contains("gzipped"), "{out}");

    // A folder with nothing named after the input says what it expected.
    let empty = scratch("empty");
    let (ok, _, err) = cli(&["evaluate", m, m, "--data", empty.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("no file for input 'x'") && err.contains("x.npy"),
        "{err}"
    );
}
