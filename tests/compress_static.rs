//! Static QDQ int8 on real models, end to end: calibrate on a few input sets →
//! quantize_static → encode; then the written model (a) runs in our runtime close to
//! the float model, (b) runs in onnxruntime (tools/ort_outputs.py) and agrees with ours,
//! and (c) our QDQ pass fuses it into integer kernels.

mod compress_support;
use compress_support::*;

use edgepredict::compress::qdq::{quantize_static, StaticOptions};
use edgepredict::onnx::proto::ModelProto;
use edgepredict::onnx::{decode_model, encode_model};
use edgepredict::{DType, Model, Tensor};
use std::path::Path;
use std::process::Command;

/// Calibration sets: the reference inputs and copies changed in a way that keeps them
/// valid for the model: float inputs turned 180° (last two axes reversed) and with a
/// fixed ripple added; integer inputs (bytes, token ids) reversed along the last axis.
fn calibration_sets(reference: &[(String, Tensor)]) -> Vec<Vec<(String, Tensor)>> {
    let reversed = |t: &Tensor, axes: usize| -> Tensor {
        let shape = t.shape().to_vec();
        let inner: usize = shape[shape.len() - axes..].iter().product();
        let reverse = |v: Vec<f64>| -> Vec<f64> {
            v.chunks(inner.max(1))
                .flat_map(|c| c.iter().rev().copied())
                .collect()
        };
        let v = reverse(t.to_f64_vec().unwrap());
        match t.dtype() {
            DType::F32 => Tensor::from_vec(shape, v.iter().map(|&x| x as f32).collect()),
            DType::I32 => Tensor::from_vec(shape, v.iter().map(|&x| x as i32).collect()),
            DType::I64 => Tensor::from_vec(shape, v.iter().map(|&x| x as i64).collect()),
            d => panic!("no perturbation for {d:?}"),
        }
        .unwrap()
    };
    let mut sets = vec![reference.to_vec()];
    let turned: Vec<_> = reference
        .iter()
        .map(|(n, t)| {
            // An attention mask must stay as it is: its pattern is the padding.
            let t = if n.contains("mask") {
                t.clone()
            } else if t.dtype() == DType::F32 {
                reversed(t, 2)
            } else {
                reversed(t, 1)
            };
            (n.clone(), t)
        })
        .collect();
    sets.push(turned);
    if reference.iter().any(|(_, t)| t.dtype() == DType::F32) {
        let rippled = reference
            .iter()
            .map(|(n, t)| {
                if t.dtype() != DType::F32 {
                    return (n.clone(), t.clone());
                }
                let v: Vec<f32> = t
                    .to_f32_vec()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(i, x)| (x * 0.9 + 0.1 * ((i as f32) * 0.37).sin()).clamp(-1.0, 1.0))
                    .collect();
                (n.clone(), Tensor::from_vec(t.shape().to_vec(), v).unwrap())
            })
            .collect();
        sets.push(rippled);
    }
    sets
}

struct Case {
    id: &'static str,
    min_cosine: f64,
    min_top1: Option<f64>,
    max_size_ratio: f64,
    /// Smallest cosine between ours and onnxruntime on the int8 model.
    min_ort_cosine: f64,
    /// Integer kernels our QDQ pass must produce, at least this many of each.
    fused: &'static [(&'static str, usize)],
}

fn check_static(c: &Case) {
    check_static_with(c, &StaticOptions::default());
}

/// Quantizes the case's model with `opts` and checks it; returns the QDQ model (None when
/// the model is not fetched).
fn check_static_with(c: &Case, opts: &StaticOptions) -> Option<ModelProto> {
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
    let bytes = std::fs::read(&model).unwrap();
    let mut proto = decode_model(&bytes).unwrap();
    edgepredict::compress::edit::name_nodes(&mut proto);
    let inputs = reference_inputs(&dir);
    let sets = calibration_sets(&inputs);
    let report = quantize_static(&mut proto, &sets, opts).unwrap();
    eprint!("{}: {report}", c.id);
    assert!(!report.changed.is_empty(), "{}: nothing quantized", c.id);
    let qbytes = encode_model(&proto);
    let ratio = qbytes.len() as f64 / bytes.len() as f64;
    let work = root().join("target/tmp/compress");
    std::fs::create_dir_all(&work).unwrap();
    // Tests of one model run in parallel: each writes its own files.
    let tag = if opts.overrides.is_empty() {
        ""
    } else {
        "_overrides"
    };
    let qpath = work.join(format!("{}{tag}_qdq.onnx", c.id));
    std::fs::write(&qpath, &qbytes).unwrap();
    eprintln!(
        "  size {:.2} MB → {:.2} MB ({ratio:.2})",
        bytes.len() as f64 / 1e6,
        qbytes.len() as f64 / 1e6
    );

    // (c) our QDQ pass turns the islands into integer kernels.
    let qmodel = Model::load(&qbytes).unwrap();
    let ops: Vec<&str> = qmodel
        .graph()
        .nodes
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    for (op, min) in c.fused {
        let k = ops.iter().filter(|o| *o == op).count();
        eprintln!("  fused {op}: {k}");
        assert!(k >= *min, "{}: {k} {op} after loading, want ≥ {min}", c.id);
    }
    let left_dq = ops.iter().filter(|o| **o == "DequantizeLinear").count();
    eprintln!("  DequantizeLinear left unfused: {left_dq}");

    // (a) close to the float model.
    let float = run(&Model::load(&bytes).unwrap(), &inputs);
    let quant = run(&qmodel, &inputs);
    assert_close_to_float(c.id, &float, &quant, c.min_cosine, c.min_top1);
    assert!(ratio <= c.max_size_ratio, "{}: size ratio {ratio}", c.id);

    // (b) onnxruntime runs the same file and agrees with our integer kernels.
    if let Some(ort) = ort_outputs(&qpath, &dir, &work.join(format!("{}{tag}_qdq_ort", c.id))) {
        assert_eq!(ort.len(), quant.len());
        for ((name, q), o) in quant.iter().zip(&ort) {
            if !q.dtype().is_float() {
                continue;
            }
            let cos = cosine(q, o);
            eprintln!("  {name}: ours vs onnxruntime on the QDQ model: cosine {cos:.6}");
            assert!(
                cos >= c.min_ort_cosine,
                "{} {name}: ours and onnxruntime differ: cosine {cos}",
                c.id
            );
            if c.min_top1.is_some() {
                assert_eq!(top1_agreement(q, o), 1.0, "{} {name}: top-1 differs", c.id);
            }
        }
    }
    Some(proto)
}

#[test]
fn static_qdq_ppocr_cls() {
    check_static(&Case {
        id: "ppocr_cls",
        min_cosine: 0.99,
        min_top1: Some(1.0),
        max_size_ratio: 0.6,
        min_ort_cosine: 0.999,
        fused: &[("QLinearConv", 40)],
    });
}

/// The accuracy guard's milder settings: per-tensor weights, but one Conv per-channel and
/// one with int8 weights and float activations. onnxruntime runs the mix too.
#[test]
fn static_qdq_ppocr_cls_node_overrides() {
    use edgepredict::compress::qdq::StaticOverride;
    let opts = StaticOptions {
        per_channel: false,
        overrides: [
            ("Conv@1".to_string(), StaticOverride::PerChannel),
            ("Conv@2".to_string(), StaticOverride::WeightsOnly),
        ]
        .into(),
        ..Default::default()
    };
    let case = Case {
        id: "ppocr_cls",
        min_cosine: 0.98,
        min_top1: Some(1.0),
        max_size_ratio: 0.6,
        min_ort_cosine: 0.999,
        fused: &[("QLinearConv", 38)],
    };
    let Some(m) = check_static_with(&case, &opts) else {
        return;
    };
    let g = m.graph.as_ref().unwrap();
    let producer = |t: &str| g.node.iter().find(|n| n.output.iter().any(|o| o == t));
    let scale_len = |conv: &str| {
        let n = g.node.iter().find(|n| n.name == conv).unwrap();
        let dq = producer(&n.input[1]).unwrap();
        assert_eq!(dq.op_type, "DequantizeLinear", "{conv}'s weight");
        let s = g
            .initializer
            .iter()
            .find(|t| t.name == dq.input[1])
            .unwrap();
        s.dims.iter().product::<i64>()
    };
    assert!(scale_len("Conv@1") > 1, "Conv@1 should be per-channel");
    assert!(scale_len("Conv@2") > 1, "weights only are per-channel");
    assert_eq!(scale_len("Conv@3"), 1, "the rest are per-tensor");
    let conv2 = g.node.iter().find(|n| n.name == "Conv@2").unwrap();
    let input = producer(&conv2.input[0]).map(|n| n.op_type.as_str());
    assert_ne!(input, Some("DequantizeLinear"), "Conv@2 reads float");
}

#[test]
fn static_qdq_magika() {
    check_static(&Case {
        id: "magika",
        min_cosine: 0.99,
        min_top1: Some(1.0),
        max_size_ratio: 0.45,
        min_ort_cosine: 0.999,
        fused: &[("QLinearConv", 1)],
    });
}

#[test]
fn static_qdq_minilm() {
    check_static(&Case {
        id: "minilm_l3",
        // Measured 0.962 (dynamic int8 reaches 0.977): static activation ranges on
        // attention and GELU cost more. The float embedding tables keep the size up.
        min_cosine: 0.95,
        min_top1: None,
        max_size_ratio: 0.8,
        min_ort_cosine: 0.99,
        fused: &[("QLinearMatMul", 12)],
    });
}

/// The silero_vad calibration or evaluation sets: each `set_*/{input,state,sr}.npy`.
fn silero_sets(kind: &str) -> Vec<Vec<(String, Tensor)>> {
    let dir = root().join(".cache/compress-data/silero_vad").join(kind);
    let mut sets: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    sets.iter()
        .map(|d| {
            ["input", "state", "sr"]
                .iter()
                .map(|n| (n.to_string(), npy(&d.join(format!("{n}.npy")))))
                .collect()
        })
        .collect()
}

/// Speech probability (`output`, [1,1]) of each set.
fn silero_probs(m: &Model, sets: &[Vec<(String, Tensor)>]) -> Vec<f32> {
    sets.iter()
        .map(|s| {
            let out = run(m, s);
            let (_, p) = out.iter().find(|(n, _)| n == "output").unwrap();
            p.to_f32_vec().unwrap()[0]
        })
        .collect()
}

/// onnxruntime's speech probability on each evaluation set.
fn silero_probs_ort(model: &Path) -> Option<Vec<f32>> {
    let py = root().join(".cache/venv/bin/python");
    if !py.exists() {
        assert!(!require(), "no .cache/venv: run tools/setup.sh");
        return None;
    }
    let script = "import sys, glob, os, numpy as np, onnxruntime as ort\n\
        o = ort.SessionOptions(); o.intra_op_num_threads = 1\n\
        s = ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])\n\
        ps = []\n\
        for d in sorted(glob.glob(os.path.join(sys.argv[2], 'set_*'))):\n\
        \x20   f = {n: np.load(os.path.join(d, n + '.npy')) for n in ('input', 'state', 'sr')}\n\
        \x20   ps.append(float(s.run(['output'], f)[0].reshape(-1)[0]))\n\
        print(' '.join(map(str, ps)))\n";
    let out = Command::new(py)
        .args(["-c", script])
        .arg(model)
        .arg(root().join(".cache/compress-data/silero_vad/eval"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onnxruntime failed on {}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect(),
    )
}

fn frame_agreement(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let same = a
        .iter()
        .zip(b)
        .filter(|(x, y)| (**x > 0.5) == (**y > 0.5))
        .count();
    same as f64 / a.len() as f64
}

/// Quantizes silero_vad (whose whole network sits in the branches of an If on `sr`)
/// with `opts`; returns the frame agreement with the float model, ours and
/// onnxruntime's, and the report.
fn silero_static(
    tag: &str,
    opts: impl Fn(&edgepredict::onnx::proto::ModelProto) -> StaticOptions,
) -> Option<(f64, Option<f64>, edgepredict::compress::StepReport)> {
    let model = root().join(".cache/models/silero_vad.onnx");
    let data = root().join(".cache/compress-data/silero_vad");
    if !model.exists() || !data.exists() {
        assert!(
            !require(),
            "silero_vad or its data missing: run tools/setup.sh"
        );
        eprintln!("skip silero_vad: not fetched");
        return None;
    }
    let bytes = std::fs::read(&model).unwrap();
    let mut proto = decode_model(&bytes).unwrap();
    edgepredict::compress::edit::name_nodes(&mut proto);
    let opts = opts(&proto);
    let calib = silero_sets("calib");
    let report = quantize_static(&mut proto, &calib, &opts).unwrap();
    eprint!("silero_vad {tag}: {report}");
    let qbytes = encode_model(&proto);
    let work = root().join("target/tmp/compress");
    std::fs::create_dir_all(&work).unwrap();
    let qpath = work.join(format!("silero_vad_qdq_{tag}.onnx"));
    std::fs::write(&qpath, &qbytes).unwrap();

    let eval = silero_sets("eval");
    let float = silero_probs(&Model::load(&bytes).unwrap(), &eval);
    let ours = silero_probs(&Model::load(&qbytes).unwrap(), &eval);
    let agree = frame_agreement(&float, &ours);
    eprintln!("  frame agreement with float (ours): {agree:.3}");
    let ort_agree = silero_probs_ort(&qpath).map(|ort| {
        // The same QDQ graph: both runtimes compute the same probabilities, within the
        // rounding of their integer kernels.
        let worst = ours
            .iter()
            .zip(&ort)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("  ours vs onnxruntime on the QDQ model: max |Δp| {worst:.4}");
        assert!(
            worst < 0.05,
            "silero_vad {tag}: ours and onnxruntime differ by {worst}"
        );
        let a = frame_agreement(&float, &ort);
        eprintln!("  frame agreement with float (onnxruntime): {a:.3}");
        a
    });
    Some((agree, ort_agree, report))
}

#[test]
fn static_qdq_silero_all_ops_inside_if_branches() {
    let Some((agree, ort_agree, report)) = silero_static("all", |_| StaticOptions::all_ops())
    else {
        return;
    };
    // The network lives in the If's branches: its nodes are changed under their own
    // (subgraph) names, and the branch no calibration set took stays float.
    let in_branch = |n: &str| n.contains("_branch__");
    let changed: Vec<_> = report
        .changed
        .iter()
        .filter(|(n, _)| in_branch(n))
        .collect();
    assert!(
        changed.len() > 20,
        "{} subgraph nodes changed",
        changed.len()
    );
    assert!(changed.iter().any(|(_, op)| op == "Conv"));
    assert!(report
        .kept
        .iter()
        .any(|(n, _, why)| in_branch(n) && why.contains("no calibration set took")));
    // Quantizing everything is the known-bad recipe: the guard needs it broken
    // (measured 0.891 here, ours and onnxruntime alike; Conv only keeps 1.0).
    eprintln!("all ops: frame agreement {agree:.3}, onnxruntime {ort_agree:?}");
    assert!(agree <= 0.95, "all ops kept frame agreement {agree}");
    // Per-tensor weights on top of it, as onnxruntime's quantizer does by default.
    let (pt, pt_ort, _) = silero_static("all_per_tensor", |_| StaticOptions {
        per_channel: false,
        ..StaticOptions::all_ops()
    })
    .unwrap();
    eprintln!("all ops, per-tensor weights: frame agreement {pt:.3}, onnxruntime {pt_ort:?}");
    assert!(
        pt <= 0.95,
        "all ops, per-tensor weights kept frame agreement {pt}"
    );
}

#[test]
fn static_qdq_silero_conv_only_stays_good() {
    let Some((agree, ort_agree, report)) = silero_static("conv", |m| {
        // The STFT as a Conv: its output spans a huge range, so it stays float.
        let mut stft = Vec::new();
        fn walk(g: &edgepredict::onnx::proto::GraphProto, out: &mut Vec<String>) {
            for n in &g.node {
                if n.name.ends_with("/stft/Conv") {
                    out.push(n.name.clone());
                }
                for a in &n.attribute {
                    a.g.iter().for_each(|sg| walk(sg, out));
                }
            }
        }
        walk(m.graph.as_ref().unwrap(), &mut stft);
        assert_eq!(stft.len(), 2, "{stft:?}");
        StaticOptions {
            op_types: vec!["Conv".into()],
            exclude: stft,
            ..Default::default()
        }
    }) else {
        return;
    };
    assert!(report
        .changed
        .iter()
        .all(|(n, op)| op == "Conv" && !n.ends_with("/stft/Conv")));
    assert!(report.changed.len() >= 5, "{:?}", report.changed);
    eprintln!("conv only: frame agreement {agree:.3}, onnxruntime {ort_agree:?}");
    assert!(agree >= 0.95, "frame agreement {agree}");
}
