//! Real models from ../shared/models.md against onnxruntime references made by
//! tools/make_reference.py (fixed inputs → outputs within 1e-4 of the output scale), and
//! the task checks: magika labels real files, PP-OCR reads a rendered line and tells its
//! orientation, silero VAD streams a 17 s clip with its state carried, the digits MLP
//! classifies held-out digits.
//!
//! Needs `tools/fetch_models.sh` and `tools/make_reference.py` to have run (CI does).

use edgepredict::api::io::read_npy;
use edgepredict::{Model, Tensor};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn reference(id: &str) -> PathBuf {
    let d = root().join(".cache/reference").join(id);
    assert!(
        d.join("meta.json").exists(),
        "reference data for {id} missing: run tools/fetch_models.sh and tools/make_reference.py"
    );
    d
}

/// The backend under test: `EDGEPREDICT_BACKEND=webgpu` runs these tests on the GPU
/// (nodes without GPU kernels stay on the CPU), against the same references.
fn load_opts() -> edgepredict::LoadOptions {
    let backend = std::env::var("EDGEPREDICT_BACKEND")
        .ok()
        .map(|b| b.parse().expect("EDGEPREDICT_BACKEND: cpu, auto or webgpu"))
        .unwrap_or_default();
    edgepredict::LoadOptions {
        backend,
        ..Default::default()
    }
}

fn describe_backend(name: &str, m: &Model) {
    let b = m.backend();
    if b.requested != edgepredict::api::Backend::Cpu {
        eprintln!(
            "{name}: backend {}, {} of {} nodes on the GPU{}",
            b.active,
            b.gpu_nodes,
            b.nodes,
            b.fallback_reason
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
}

fn load_model(id: &str) -> Model {
    let p = if id == "digits_mlp" {
        root().join("models/digits_mlp.onnx")
    } else {
        root().join(".cache/models").join(format!("{id}.onnx"))
    };
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let m = Model::load_with(&bytes, &load_opts()).unwrap_or_else(|e| panic!("loading {id}: {e}"));
    describe_backend(id, &m);
    m
}

fn npy(p: &Path) -> Tensor {
    read_npy(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn meta(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap()
}

/// Largest |a-b| and the reference's scale (max |b|).
fn max_diff(a: &Tensor, b: &Tensor) -> (f64, f64) {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let x = a.to_f64_vec().unwrap();
    let y = b.to_f64_vec().unwrap();
    let d = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    let s = y.iter().map(|q| q.abs()).fold(0.0, f64::max);
    (d, s)
}

/// Runs the model on the stored inputs and compares every output with onnxruntime's.
fn check_against_reference(id: &str) -> (Model, Vec<(String, Tensor)>) {
    let dir = reference(id);
    let m = meta(&dir);
    let model = load_model(id);
    let inputs: Vec<(String, Tensor)> = m["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_string(),
                npy(&dir.join(pair[1].as_str().unwrap())),
            )
        })
        .collect();
    let refs: Vec<(&str, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let outs = model
        .run(&refs)
        .unwrap_or_else(|e| panic!("running {id}: {e}"));
    for (k, (name, got)) in outs.iter().enumerate() {
        let want = npy(&dir.join(format!("output_{k}.npy")));
        if want.dtype().is_float() {
            let (d, scale) = max_diff(got, &want);
            let tol = 1e-4 * scale.max(1e-3);
            eprintln!(
                "{id} output {name}: max abs diff {d:.3e}, scale {scale:.3e}, tolerance {tol:.3e}"
            );
            assert!(d <= tol, "{id} output {name}: max abs diff {d} > {tol}");
        } else {
            assert_eq!(
                got.to_i64_vec().unwrap(),
                want.to_i64_vec().unwrap(),
                "{id} output {name}"
            );
        }
    }
    (model, outs)
}

fn argmax_rows(t: &Tensor) -> Vec<usize> {
    let cols = *t.shape().last().unwrap();
    let v = t.to_f32_vec().unwrap();
    v.chunks(cols)
        .map(|r| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap()
        })
        .collect()
}

#[test]
fn digits_mlp_matches_and_classifies() {
    let (_, outs) = check_against_reference("digits_mlp");
    let labels = outs[0].1.to_i64_vec().unwrap();
    let truth = npy(&root().join("models/digits_test_labels.npy"))
        .to_i64_vec()
        .unwrap();
    let acc = labels.iter().zip(&truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64;
    eprintln!("digits accuracy {acc:.4}");
    assert!(acc >= 0.97, "accuracy {acc}");
}

/// Magika's features: the first and last 1024 bytes of the (whitespace-stripped) first
/// and last 4096-byte blocks, padded with token 256.
fn magika_features(data: &[u8], cfg: &serde_json::Value) -> Vec<i32> {
    let (beg_size, end_size) = (
        cfg["beg_size"].as_u64().unwrap() as usize,
        cfg["end_size"].as_u64().unwrap() as usize,
    );
    let pad = cfg["padding_token"].as_i64().unwrap() as i32;
    let block = (cfg["block_size"].as_u64().unwrap() as usize).min(data.len());
    let ws = |b: &u8| b" \t\n\r\x0b\x0c".contains(b);
    let head = &data[..block];
    let head = &head[head.iter().position(|b| !ws(b)).unwrap_or(head.len())..];
    let mut beg: Vec<i32> = head.iter().take(beg_size).map(|&b| i32::from(b)).collect();
    beg.resize(beg_size, pad);
    let tail = &data[data.len() - block..];
    let tail = &tail[..tail.iter().rposition(|b| !ws(b)).map_or(0, |p| p + 1)];
    let tail = &tail[tail.len().saturating_sub(end_size)..];
    let mut end = vec![pad; end_size - tail.len()];
    end.extend(tail.iter().map(|&b| i32::from(b)));
    beg.extend(end);
    beg
}

#[test]
fn magika_matches_and_labels_real_files() {
    check_against_reference("magika");
    let dir = reference("magika");
    let m = meta(&dir);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(".cache/models/magika_config.json")).unwrap(),
    )
    .unwrap();
    let files = m["files"].as_array().unwrap();
    let mut feats = Vec::new();
    for f in files {
        let data = std::fs::read(root().join(f[0].as_str().unwrap())).unwrap();
        feats.extend(magika_features(&data, &cfg));
    }
    let x = Tensor::from_vec(vec![files.len(), 2048], feats).unwrap();
    let model = load_model("magika");
    let out = model.run(&[("bytes", x)]).unwrap();
    let labels: Vec<&str> = argmax_rows(&out[0].1)
        .into_iter()
        .map(|i| cfg["target_labels_space"][i].as_str().unwrap())
        .collect();
    let want: Vec<&str> = files.iter().map(|f| f[1].as_str().unwrap()).collect();
    eprintln!("magika labels {labels:?}");
    assert_eq!(labels, want);
}

#[test]
fn ppocr_rec_reads_rendered_line() {
    let (model, outs) = check_against_reference("ppocr_rec");
    let chars_meta = model
        .meta()
        .metadata
        .iter()
        .find(|(k, _)| k == "character")
        .map(|(_, v)| v.clone())
        .expect("character metadata");
    let mut chars = vec!["".to_string()];
    chars.extend(chars_meta.lines().map(String::from));
    chars.push(" ".into());
    let idx = argmax_rows(&outs[0].1);
    let mut text = String::new();
    let mut prev = 0;
    for i in idx {
        if i != prev && i != 0 {
            text.push_str(&chars[i]);
        }
        prev = i;
    }
    let want = meta(&reference("ppocr_rec"))["text"]
        .as_str()
        .unwrap()
        .to_string();
    eprintln!("ppocr_rec read {text:?}");
    assert_eq!(text, want);
}

#[test]
fn ppocr_cls_tells_orientation() {
    let (_, outs) = check_against_reference("ppocr_cls");
    assert_eq!(argmax_rows(&outs[0].1), vec![0, 1]);
}

#[test]
fn ppocr_det_matches() {
    check_against_reference("ppocr_det");
}

#[test]
fn minilm_l3_matches() {
    check_against_reference("minilm_l3");
}

/// Streams the clip in 512-sample chunks (plus 64 samples of context), carrying the LSTM
/// state between calls, and compares each frame's probability with onnxruntime's.
fn silero_streams(id: &str) {
    let dir = reference(id);
    let clip = npy(&dir.join("clip.npy")).to_f32_vec().unwrap();
    let want = npy(&dir.join("probs.npy")).to_f32_vec().unwrap();
    let truth = npy(&dir.join("speech_truth.npy")).to_i64_vec().unwrap();
    let model = load_model(id);
    let (chunk, ctx) = (512, 64);
    let mut state = Tensor::zeros(edgepredict::DType::F32, vec![2, 1, 128]).unwrap();
    let mut context = vec![0f32; ctx];
    let mut probs = Vec::new();
    for i in 0..want.len() {
        let x = &clip[i * chunk..(i + 1) * chunk];
        let mut inp = context.clone();
        inp.extend_from_slice(x);
        let outs = model
            .run(&[
                (
                    "input",
                    Tensor::from_vec(vec![1, chunk + ctx], inp).unwrap(),
                ),
                ("state", state.clone()),
                ("sr", Tensor::scalar(16000i64)),
            ])
            .unwrap_or_else(|e| panic!("{id} frame {i}: {e}"));
        probs.push(outs[0].1.to_f32_vec().unwrap()[0]);
        state = outs[1].1.clone();
        context = x[chunk - ctx..].to_vec();
    }
    let max_d = probs
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let agree = probs
        .iter()
        .zip(&want)
        .filter(|(a, b)| (**a > 0.5) == (**b > 0.5))
        .count() as f64
        / want.len() as f64;
    let truth_agree = probs
        .iter()
        .zip(&truth)
        .filter(|(a, t)| (**a > 0.5) == (**t == 1))
        .count() as f64
        / truth.len() as f64;
    eprintln!(
        "{id}: {} frames, max prob diff {max_d:.2e}, agreement with onnxruntime {agree:.4}, with placed speech {truth_agree:.3}",
        want.len()
    );
    let final_state = npy(&dir.join("state_final.npy"));
    let (sd, _) = max_diff(&state, &final_state);
    assert!(max_d <= 1e-4, "{id}: frame probability differs by {max_d}");
    assert!(sd <= 1e-3, "{id}: final state differs by {sd}");
    assert!(agree >= 0.99, "{id}: frame agreement {agree}");
    assert!(
        truth_agree >= 0.85,
        "{id}: speech detection agreement {truth_agree}"
    );
}

#[test]
fn silero_vad_streams_with_state() {
    silero_streams("silero_vad");
}

#[test]
fn silero_vad_op15_streams_with_state() {
    silero_streams("silero_vad_op15");
}
