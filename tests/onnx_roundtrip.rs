//! The ONNX encoder against real files:
//! 1. every model of the onnx 1.22 conformance suite survives decode → encode → decode
//!    unchanged, and encoding again gives the same bytes;
//! 2. every real model of `.cache/models`, re-encoded, runs in our runtime with outputs
//!    bitwise identical to the original's on the reference inputs;
//! 3. onnxruntime loads the re-encoded real models and gives the same outputs as on the
//!    originals (`tools/check_reencoded.py`, with `.cache/venv`).
//!
//! Missing data (suite, models, venv) skips a test with a message, unless
//! EDGEPREDICT_REQUIRE_MODELS is set (CI), where it is a failure.

use edgepredict::api::io::read_npy;
use edgepredict::onnx::proto::TensorProto;
use edgepredict::onnx::{decode_model, encode_model, tensor_to_proto, ModelProto};
use edgepredict::{DType, Model, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// False (skip) when `path` is missing and CI does not require it; panics when it does.
fn present(path: &Path, test: &str, how: &str) -> bool {
    if path.exists() {
        return true;
    }
    if std::env::var_os("EDGEPREDICT_REQUIRE_MODELS").is_some() {
        panic!(
            "{} is missing and EDGEPREDICT_REQUIRE_MODELS is set: {how}",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: {} is absent ({how}; set EDGEPREDICT_REQUIRE_MODELS=1 to make this \
         an error)",
        path.display()
    );
    false
}

fn sorted_glob(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| keep(p));
    v.sort();
    v
}

/// Equal as structs. Derived PartialEq says NaN != NaN, so a model holding a NaN constant
/// is compared through its Debug text instead; the bit patterns are covered by the
/// stable-bytes check.
fn same_model(a: &ModelProto, b: &ModelProto) -> bool {
    a == b || format!("{a:?}") == format!("{b:?}")
}

#[test]
fn conformance_suite_round_trips() {
    let data = root().join(".cache/onnx-suite/onnx/backend/test/data");
    if !present(
        &data,
        "conformance_suite_round_trips",
        "run tools/fetch_onnx_suite.sh",
    ) {
        return;
    }
    let mut files = Vec::new();
    for suite in ["node", "pytorch-converted", "pytorch-operator", "simple"] {
        for case in sorted_glob(&data.join(suite), |p| p.is_dir()) {
            files.push(case.join("model.onnx"));
        }
    }
    files.extend(sorted_glob(&data.join("light"), |p| {
        p.extension().is_some_and(|e| e == "onnx")
    }));
    let (mut orig_bytes, mut new_bytes, mut identical) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for f in &files {
        let name = f.strip_prefix(&data).unwrap().display().to_string();
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{name}: {e}"));
        let first = match decode_model(&bytes) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: the original does not decode: {e}"));
                continue;
            }
        };
        let enc = encode_model(&first);
        let second = match decode_model(&enc) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: the re-encoded model does not decode: {e}"));
                continue;
            }
        };
        if !same_model(&first, &second) {
            failures.push(format!("{name}: decode(encode(m)) differs from m"));
            continue;
        }
        if encode_model(&second) != enc {
            failures.push(format!("{name}: encoding twice gives different bytes"));
            continue;
        }
        orig_bytes += bytes.len();
        new_bytes += enc.len();
        identical += usize::from(enc == bytes);
    }
    eprintln!(
        "{} suite models: {} round-trip; {} re-encode byte for byte; {} bytes → {} ({:+.2}%)",
        files.len(),
        files.len() - failures.len(),
        identical,
        orig_bytes,
        new_bytes,
        100.0 * (new_bytes as f64 / orig_bytes.max(1) as f64 - 1.0)
    );
    assert!(
        files.len() > 1800,
        "only {} models found in {}",
        files.len(),
        data.display()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The real models, as (id, original bytes, re-encoded bytes).
fn real_models(test: &str) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let dir = root().join(".cache/models");
    if !present(&dir, test, "run tools/fetch_models.sh") {
        return Vec::new();
    }
    let files = sorted_glob(&dir, |p| p.extension().is_some_and(|e| e == "onnx"));
    assert!(!files.is_empty(), "no .onnx in {}", dir.display());
    files
        .iter()
        .map(|p| {
            let id = p.file_stem().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let m = decode_model(&bytes).unwrap_or_else(|e| panic!("{id}: {e}"));
            let enc = encode_model(&m);
            eprintln!(
                "{id}: {} bytes → re-encoded {} ({:+})",
                bytes.len(),
                enc.len(),
                enc.len() as i64 - bytes.len() as i64
            );
            (id, bytes, enc)
        })
        .collect()
}

fn npy(p: &Path) -> Tensor {
    read_npy(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// The reference inputs of `tests/real_models.rs`: `meta.json`'s list, or for silero the
/// first frames of the clip (64 samples of context + 512), each a separate run.
fn reference_runs(id: &str) -> Vec<Vec<(String, Tensor)>> {
    let dir = root().join(".cache/reference").join(id);
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("meta.json")).unwrap_or_else(|e| {
            panic!("{id}: reference data missing ({e}): run tools/make_reference.py")
        }),
    )
    .unwrap();
    if let Some(inputs) = meta["inputs"].as_array() {
        let run = inputs
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().unwrap().to_string(),
                    npy(&dir.join(pair[1].as_str().unwrap())),
                )
            })
            .collect();
        return vec![run];
    }
    let clip = npy(&dir.join("clip.npy")).to_f32_vec().unwrap();
    let state = npy(&dir.join("state_final.npy"));
    (0..4)
        .map(|k| {
            let start = k * 4000;
            let frame = clip[start..start + 576].to_vec();
            vec![
                (
                    "input".to_string(),
                    Tensor::from_vec(vec![1, 576], frame).unwrap(),
                ),
                // A non-zero state too, so the recurrent path is exercised.
                (
                    "state".to_string(),
                    if k % 2 == 0 {
                        Tensor::zeros(DType::F32, vec![2, 1, 128]).unwrap()
                    } else {
                        state.clone()
                    },
                ),
                ("sr".to_string(), Tensor::scalar(16000i64)),
            ]
        })
        .collect()
}

/// The tensor as ONNX stores it: equal protos hold bitwise-equal values (raw bytes).
fn bits(t: &Tensor) -> TensorProto {
    tensor_to_proto("", t).unwrap()
}

#[test]
fn real_models_reencoded_run_identically() {
    for (id, orig, enc) in real_models("real_models_reencoded_run_identically") {
        let a = Model::load(&orig).unwrap_or_else(|e| panic!("{id}: {e}"));
        let b = Model::load(&enc).unwrap_or_else(|e| panic!("{id} re-encoded: {e}"));
        assert_eq!(a.meta().metadata, b.meta().metadata, "{id}: metadata");
        for (k, run) in reference_runs(&id).iter().enumerate() {
            let inputs: Vec<(&str, Tensor)> =
                run.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
            let want = a.run(&inputs).unwrap_or_else(|e| panic!("{id}: {e}"));
            let got = b
                .run(&inputs)
                .unwrap_or_else(|e| panic!("{id} re-encoded: {e}"));
            assert_eq!(want.len(), got.len(), "{id}: output count");
            for ((wn, wt), (gn, gt)) in want.iter().zip(&got) {
                assert_eq!(wn, gn, "{id}: output names");
                assert!(
                    bits(wt) == bits(gt),
                    "{id} run {k}: output {wn} differs after re-encoding"
                );
            }
            eprintln!("{id} run {k}: {} outputs bitwise identical", want.len());
        }
    }
}

#[test]
fn onnxruntime_accepts_reencoded_models() {
    let python = root().join(".cache/venv/bin/python");
    if !present(
        &python,
        "onnxruntime_accepts_reencoded_models",
        "run tools/setup.sh",
    ) {
        return;
    }
    let models = real_models("onnxruntime_accepts_reencoded_models");
    if models.is_empty() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("edgepredict-reencoded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (id, orig, enc) in &models {
        std::fs::write(dir.join(format!("{id}.onnx")), orig).unwrap();
        std::fs::write(dir.join(format!("{id}.reencoded.onnx")), enc).unwrap();
    }
    let out = Command::new(&python)
        .arg(root().join("tools/check_reencoded.py"))
        .arg(&dir)
        // Token ids and byte values in range; silero's 16 kHz branch with a real frame
        // length; MiniLM with a batch of 2 and 16 tokens; two 64×64 images for PP-OCR
        // (det wants sides that are multiples of 32).
        .args(["--int-high", "100", "--value", "sr=16000"])
        .args(["--shape", "input=1,576", "--shape", "x=2,3,64,64"])
        .args([
            "--shape",
            "input_ids=2,16",
            "--shape",
            "attention_mask=2,16",
        ])
        .output()
        .expect("running tools/check_reencoded.py");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "check_reencoded.py: {}", out.status);
    assert!(
        stdout.contains(&format!("{0} of {0} pairs identical", models.len())),
        "check_reencoded.py did not check every model"
    );
}
