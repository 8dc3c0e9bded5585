//! `edgepredict compress` end to end on real models and held-out data
//! (tools/make_compress_data.py): the steps compose, the accuracy guard backs off what
//! breaks the tolerance and never writes a failing model silently, and --pack gzip writes
//! what the JS loader reads. This is the subset of the README's results table that CI
//! runs; tools/compress_table.py makes the whole table.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A folder with the first `n` input sets of `dir` (keeps the guard's loop short here).
fn first_sets(dir: &Path, n: usize, tag: &str) -> PathBuf {
    let out = std::env::temp_dir().join(format!(
        "edgepredict-compress-cli-{}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    for s in sets.iter().take(n) {
        let to = out.join(s.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(s).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    out
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgepredict"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `evaluate --metric` on `cand`: the guard's deviation from the float model.
fn deviation(model: &str, cand: &Path, data: &Path, metric: &str, output: Option<&str>) -> f64 {
    let mut args = vec![
        "evaluate",
        model,
        cand.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--repeat",
        "0",
        "--json",
        "--metric",
        metric,
    ];
    if let Some(o) = output {
        args.extend(["--metric-output", o]);
    }
    let o = cli(&args);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    j["task"]["deviation"].as_f64().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "edgepredict-compress-cli-{}-{name}",
        std::process::id()
    ))
}

/// The known-bad recipe on PP-OCR rec: per-tensor int8 weights. Unguarded it breaks the
/// per-step top-1; guarded, the layers that break it are backed off (per-channel, weights
/// only, or float) and the written model meets the tolerance.
#[test]
fn guard_rescues_per_tensor_ppocr_rec() {
    let Some(p) = support::require(
        "guard on ppocr_rec",
        &[
            ".cache/models/ppocr_rec.onnx",
            ".cache/compress-data/ppocr_rec/eval",
        ],
    ) else {
        return;
    };
    let model = p[0].to_str().unwrap();
    let data = root().join(".cache/compress-data/ppocr_rec");
    let eval = first_sets(&data.join("eval"), 6, "rec-eval");
    let calib = first_sets(&data.join("calib"), 4, "rec-calib");
    let bad = tmp("rec-bad.onnx");
    let o = cli(&[
        "compress",
        model,
        "-o",
        bad.to_str().unwrap(),
        "--quantize",
        "static",
        "--per-tensor",
        "--calib",
        calib.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let broken = deviation(model, &bad, &eval, "top1", None);
    eprintln!("ppocr_rec static per-tensor, unguarded: per-step top-1 deviation {broken:.4}");
    assert!(
        broken > 0.05,
        "the known-bad recipe should break rec: {broken}"
    );

    let good = tmp("rec-guarded.onnx");
    let o = cli(&[
        "compress",
        model,
        "-o",
        good.to_str().unwrap(),
        "--quantize",
        "static",
        "--per-tensor",
        "--calib",
        calib.to_str().unwrap(),
        "--eval",
        eval.to_str().unwrap(),
        "--metric",
        "top1",
        "--tolerance",
        "0.02",
    ]);
    let out = text(&o);
    eprintln!("{out}");
    assert!(o.status.success(), "{out}");
    assert!(out.contains("backed off"), "nothing backed off:\n{out}");
    assert!(out.contains("passes"), "{out}");
    // Graded: some layers only went per-channel (the opset raised to 13 for it, the
    // Squeeze axes moved to an input) or kept int8 weights with float activations.
    assert!(
        out.contains("(int8 static QDQ: per-channel weights)")
            && out.contains("(int8 static QDQ: int8 weights only)"),
        "{out}"
    );
    let d = deviation(model, &good, &eval, "top1", None);
    assert!(d <= 0.02, "guarded model deviates {d}");
    // Still compressed: backing off layers must not give the float model back.
    let (float_len, good_len) = (
        std::fs::metadata(model).unwrap().len(),
        std::fs::metadata(&good).unwrap().len(),
    );
    // Measured ×0.50 (2026-11-30: 7 of the backed-off layers went to per-channel or
    // weights-only, the rest stayed float); the bound leaves room for another order.
    assert!(good_len * 10 < float_len * 6, "{good_len} vs {float_len}");
}

/// A tolerance that cannot be met: the guard refuses and writes nothing; with --force it
/// writes the model and still fails.
#[test]
fn guard_refuses_what_it_cannot_rescue_and_says_so() {
    let Some(p) = support::require(
        "guard refusal",
        &[
            ".cache/models/ppocr_cls.onnx",
            ".cache/compress-data/ppocr_cls/eval",
        ],
    ) else {
        return;
    };
    let model = p[0].to_str().unwrap();
    let eval = first_sets(
        &root().join(".cache/compress-data/ppocr_cls/eval"),
        4,
        "cls-eval",
    );
    let out = tmp("cls-refused.onnx");
    let _ = std::fs::remove_file(&out);
    // A negative tolerance is met by nothing, not even with every node backed off.
    let args = [
        "compress",
        model,
        "-o",
        out.to_str().unwrap(),
        "--quantize",
        "dynamic",
        "--eval",
        eval.to_str().unwrap(),
        "--metric",
        "maxabs",
        "--tolerance=-1",
    ];
    let o = cli(&args);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("FAILS") && t.contains("nothing written"), "{t}");
    assert!(!out.exists(), "a failing model was written");
    let mut forced = args.to_vec();
    forced.push("--force");
    let o = cli(&forced);
    assert!(!o.status.success());
    assert!(text(&o).contains("written anyway"), "{}", text(&o));
    assert!(out.exists());
}

/// Steps compose (structured pruning, then static int8, then gzip) and the packed file is
/// the model, gzipped.
#[test]
fn prune_quantize_pack_compose() {
    let Some(p) = support::require(
        "prune + static + pack",
        &[
            ".cache/models/ppocr_cls.onnx",
            ".cache/compress-data/ppocr_cls/calib",
        ],
    ) else {
        return;
    };
    let model = p[0].to_str().unwrap();
    let calib = first_sets(
        &root().join(".cache/compress-data/ppocr_cls/calib"),
        4,
        "cls-calib",
    );
    let out = tmp("cls-small.onnx");
    let o = cli(&[
        "compress",
        model,
        "-o",
        out.to_str().unwrap(),
        "--prune",
        "0.3",
        "--structured",
        "--quantize",
        "static",
        "--calib",
        calib.to_str().unwrap(),
        "--pack",
        "gzip",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("prune 30 % structured: changed") && t.contains("int8 static QDQ: changed"),
        "{t}"
    );
    let onnx = std::fs::read(&out).unwrap();
    let gz = std::fs::read(format!("{}.gz", out.display())).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "not gzip");
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back).unwrap();
    assert_eq!(back, onnx);
    assert!(gz.len() < onnx.len());
    let float_len = std::fs::metadata(model).unwrap().len() as usize;
    assert!(onnx.len() * 2 < float_len, "{} vs {float_len}", onnx.len());
    // It runs.
    let o = cli(&["info", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The other known-bad recipe: every op of silero VAD quantized (static QDQ, per-tensor
/// weights, inside the If branches the data takes). Unguarded it breaks the speech
/// decisions; the guard either backs off until the frame agreement holds or refuses, and
/// what it writes meets the tolerance.
#[test]
fn guard_on_silero_quantize_everything() {
    let Some(p) = support::require(
        "guard on silero",
        &[
            ".cache/models/silero_vad.onnx",
            ".cache/compress-data/silero_vad/eval",
        ],
    ) else {
        return;
    };
    let model = p[0].to_str().unwrap();
    let data = root().join(".cache/compress-data/silero_vad");
    let eval = first_sets(&data.join("eval"), 32, "silero-eval");
    let calib = first_sets(&data.join("calib"), 16, "silero-calib");
    let recipe = [
        "--quantize",
        "static",
        "--op-types",
        "all",
        "--per-tensor",
        "--calib",
        calib.to_str().unwrap(),
    ];
    let bad = tmp("silero-bad.onnx");
    let mut args = vec!["compress", model, "-o", bad.to_str().unwrap()];
    args.extend(recipe);
    let o = cli(&args);
    assert!(o.status.success(), "{}", text(&o));
    let broken = deviation(model, &bad, &eval, "agree@0.5", Some("output"));
    eprintln!("silero quantize-everything, unguarded: frame disagreement {broken:.4}");
    assert!(
        broken > 0.1,
        "the known-bad recipe should break silero: {broken}"
    );

    let good = tmp("silero-guarded.onnx");
    let _ = std::fs::remove_file(&good);
    let mut args = vec!["compress", model, "-o", good.to_str().unwrap()];
    args.extend(recipe);
    args.extend(["--eval", eval.to_str().unwrap(), "--metric", "agree@0.5"]);
    args.extend(["--metric-output", "output", "--tolerance", "0.02"]);
    let o = cli(&args);
    let out = text(&o);
    eprintln!("{out}");
    assert!(out.contains("guard: agree@0.5 on 'output'"), "{out}");
    if o.status.success() {
        assert!(out.contains("backed off"), "{out}");
        let d = deviation(model, &good, &eval, "agree@0.5", Some("output"));
        assert!(d <= 0.02, "guarded silero deviates {d}");
    } else {
        assert!(
            out.contains("FAILS") && out.contains("nothing written"),
            "{out}"
        );
        assert!(!good.exists());
    }
}

/// Calibration inputs made up from a spec (`--calib random:N` with bench's shape and range
/// flags) instead of a folder: the model is written, quantized, and runs.
#[test]
fn static_int8_calibrated_from_a_spec() {
    let Some(p) = support::require("calibration from a spec", &[".cache/models/ppocr_cls.onnx"])
    else {
        return;
    };
    let model = p[0].to_str().unwrap();
    let out = tmp("cls-spec.onnx");
    let o = cli(&[
        "compress",
        model,
        "-o",
        out.to_str().unwrap(),
        "--quantize",
        "static",
        "--calib",
        "random:4",
        "--shape",
        "x=1,3,48,192",
        "--range",
        "x=-1,1",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("int8 static QDQ: changed"), "{t}");
    let spec = format!(
        "x={}",
        root()
            .join(".cache/reference/ppocr_cls/input_x.npy")
            .display()
    );
    let o = cli(&["run", out.to_str().unwrap(), "-i", &spec]);
    assert!(o.status.success(), "{}", text(&o));
    // A bad count is a clear error.
    let o = cli(&[
        "compress",
        model,
        "-o",
        out.to_str().unwrap(),
        "--quantize",
        "static",
        "--calib",
        "random:0",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("N ≥ 1"),
        "{}",
        text(&o)
    );
}
