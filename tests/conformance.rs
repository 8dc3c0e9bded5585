//! ONNX backend conformance: runs every case of the onnx 1.22.0 suite (node,
//! pytorch-converted, pytorch-operator, simple, light), compares outputs (rtol 1e-3,
//! atol 1e-5, exact for integers, NaN-aware), prints per-op and total pass counts, and
//! fails if a case listed in `tests/conformance/passing.txt` no longer passes or if any
//! case panics.
//!
//! Data: `tools/fetch_onnx_suite.sh` (CI runs it first). Knobs (env):
//! - `CONFORMANCE_FILTER=substr` — only cases whose path contains substr;
//! - `CONFORMANCE_UPDATE=1` — rewrite passing.txt with today's passing set;
//! - `CONFORMANCE_VERBOSE=1` — print every failure reason.
//!
//! With the `webgpu` feature a second test runs the same cases on the GPU backend
//! (Mesa lavapipe in CI) against `tests/conformance/passing_webgpu.txt`; there a case
//! passes only if every node of the model was placed on the GPU and the outputs match.
//! `CONFORMANCE_SUITE=cpu|webgpu` runs one of the two.

use edgepredict::api::Backend;
use edgepredict::graph::shape::ValueKind;
use edgepredict::onnx::proto::{self, ValueProto};
use edgepredict::onnx::tensor_from_proto;
use edgepredict::tensor::Data;
use edgepredict::{LoadOptions, Model, Tensor, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SUITES: &[&str] = &[
    "node",
    "pytorch-converted",
    "pytorch-operator",
    "simple",
    "light",
];
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-5;

fn data_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("EDGEPREDICT_ONNX_SUITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/onnx-suite/onnx/backend/test/data"))
}

fn value_from_proto(v: ValueProto) -> Result<Value, String> {
    Ok(match v {
        ValueProto::Tensor(t) => Value::from(tensor_from_proto(&t).map_err(|e| e.to_string())?),
        ValueProto::Sequence(items) => {
            let mut ts = Vec::new();
            for it in items {
                match value_from_proto(it)? {
                    Value::Tensor(t) => ts.push(t),
                    _ => return Err("nested sequences are not supported by the harness".into()),
                }
            }
            Value::Sequence(ts)
        }
        ValueProto::Optional(inner) => Value::Optional(match inner {
            None => None,
            Some(b) => Some(Box::new(value_from_proto(*b)?)),
        }),
    })
}

fn read_value(path: &Path, kind: ValueKind) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let vp = match kind {
        ValueKind::Sequence => {
            ValueProto::Sequence(proto::decode_sequence(&bytes, 0).map_err(|e| e.to_string())?)
        }
        ValueKind::Optional => proto::decode_optional(&bytes, 0).map_err(|e| e.to_string())?,
        _ => ValueProto::Tensor(Box::new(
            proto::decode_tensor_file(&bytes).map_err(|e| e.to_string())?,
        )),
    };
    value_from_proto(vp)
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= ATOL + RTOL * b.abs()
}

fn compare_tensor(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!(
            "dtype {} != expected {}",
            got.dtype(),
            want.dtype()
        ));
    }
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?} != expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    match (got.data(), want.data()) {
        (Data::Str(a), Data::Str(b)) => {
            if a != b {
                return Err(format!(
                    "strings differ: {:?} vs {:?}",
                    &a[..a.len().min(4)],
                    &b[..b.len().min(4)]
                ));
            }
        }
        (Data::Bool(a), Data::Bool(b)) => {
            if a != b {
                return Err("bools differ".into());
            }
        }
        _ if want.dtype().is_float() => {
            let a = got.to_f64_vec().map_err(|e| e.to_string())?;
            let b = want.to_f64_vec().map_err(|e| e.to_string())?;
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                if !close(*x, *y) {
                    return Err(format!("element {i}: {x} != expected {y}"));
                }
            }
        }
        _ => {
            if got != want {
                let a = got.to_i64_vec().unwrap_or_default();
                let b = want.to_i64_vec().unwrap_or_default();
                let i = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(0);
                return Err(format!(
                    "element {i}: {:?} != expected {:?}",
                    a.get(i),
                    b.get(i)
                ));
            }
        }
    }
    Ok(())
}

fn compare(got: &Value, want: &Value) -> Result<(), String> {
    match (got, want) {
        (Value::Tensor(a), Value::Tensor(b)) => compare_tensor(a, b),
        (Value::Sequence(a), Value::Sequence(b)) => {
            if a.len() != b.len() {
                return Err(format!(
                    "sequence length {} != expected {}",
                    a.len(),
                    b.len()
                ));
            }
            a.iter().zip(b).try_for_each(|(x, y)| compare_tensor(x, y))
        }
        (Value::Optional(a), Value::Optional(b)) => match (a, b) {
            (None, None) => Ok(()),
            (Some(x), Some(y)) => compare(x, y),
            _ => Err("optional presence differs".into()),
        },
        (Value::Optional(Some(x)), y) | (y, Value::Optional(Some(x))) => compare(x, y),
        _ => Err("value kinds differ".into()),
    }
}

fn load(bytes: &[u8], backend: Backend) -> Result<Model, String> {
    let opts = LoadOptions {
        backend,
        gpu_greedy: true,
        ..Default::default()
    };
    let model = Model::load_with(bytes, &opts).map_err(|e| format!("load: {e}"))?;
    if backend == Backend::WebGpu {
        let b = model.backend();
        if b.gpu_nodes == 0 || b.gpu_nodes < b.nodes {
            let left: Vec<String> = model
                .plan()
                .placement
                .iter()
                .zip(&model.graph().nodes)
                .filter(|((p, why), _)| {
                    *p != edgepredict::plan::Placement::Gpu || why.contains("; ")
                })
                .map(|((_, why), n)| format!("{}: {why}", n.op_type))
                .collect();
            return Err(format!(
                "not on the GPU: {} of {} nodes placed ({})",
                b.gpu_nodes,
                b.nodes,
                left.join("; ")
            ));
        }
    }
    Ok(model)
}

fn run_case(dir: &Path, backend: Backend) -> Result<(), String> {
    let bytes = std::fs::read(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let model = load(&bytes, backend)?;
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set"))
        })
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Err("no test data".into());
    }
    for set in sets {
        let mut inputs = Vec::new();
        for (k, info) in model.inputs().iter().enumerate() {
            let p = set.join(format!("input_{k}.pb"));
            if !p.exists() {
                continue;
            }
            inputs.push((info.name.as_str(), read_value(&p, info.fact.kind)?));
        }
        let outs = model.run_values(inputs).map_err(|e| format!("run: {e}"))?;
        for (k, (name, got)) in outs.iter().enumerate() {
            let p = set.join(format!("output_{k}.pb"));
            if !p.exists() {
                continue;
            }
            let kind = match got {
                Value::Sequence(_) => ValueKind::Sequence,
                Value::Optional(_) => ValueKind::Optional,
                Value::Tensor(_) => model.outputs()[k].fact.kind,
            };
            let want = read_value(&p, kind)?;
            compare(got, &want).map_err(|e| format!("output '{name}': {e}"))?;
        }
    }
    Ok(())
}

/// A `light/` case: a real topology with constant weights; the input is the onnx
/// runner's dummy (arange(n)/n, unknown dims as 1) and the output is stored beside it.
fn run_light_case(model_path: &Path, backend: Backend) -> Result<(), String> {
    let bytes = std::fs::read(model_path).map_err(|e| e.to_string())?;
    let model = load(&bytes, backend)?;
    let mut inputs = Vec::new();
    for info in model.inputs().iter().filter(|i| !i.optional) {
        let shape: Vec<usize> = info
            .fact
            .shape
            .as_ref()
            .map(|s| s.iter().map(|d| d.known().unwrap_or(1)).collect())
            .unwrap_or_default();
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| (i as f64 / n as f64) as f32).collect();
        inputs.push((
            info.name.as_str(),
            Value::from(Tensor::from_vec(shape, data).map_err(|e| e.to_string())?),
        ));
    }
    let outs = model.run_values(inputs).map_err(|e| format!("run: {e}"))?;
    let stem = model_path.with_extension("");
    for (k, (name, got)) in outs.iter().enumerate() {
        let p = PathBuf::from(format!("{}_output_{k}.pb", stem.display()));
        let want = read_value(&p, ValueKind::Tensor)?;
        compare(got, &want).map_err(|e| format!("output '{name}': {e}"))?;
    }
    Ok(())
}

/// The op a case exercises: the single node's type, or "(multi-node)".
fn case_op(dir: &Path) -> String {
    let file = if dir.is_dir() {
        dir.join("model.onnx")
    } else {
        dir.to_path_buf()
    };
    let Ok(bytes) = std::fs::read(file) else {
        return "?".into();
    };
    match proto::decode_model(&bytes) {
        Ok(m) => match m.graph.as_ref().map(|g| g.node.as_slice()) {
            Some([n]) => n.op_type.clone(),
            _ => "(multi-node)".into(),
        },
        Err(_) => "?".into(),
    }
}

#[test]
fn onnx_backend_suite() {
    if std::env::var("CONFORMANCE_SUITE").is_ok_and(|s| s != "cpu") {
        return;
    }
    suite(Backend::Cpu, "passing.txt", "conformance-report.txt");
}

#[cfg(feature = "webgpu")]
#[test]
fn onnx_backend_suite_webgpu() {
    if std::env::var("CONFORMANCE_SUITE").is_ok_and(|s| s != "webgpu") {
        return;
    }
    suite(
        Backend::WebGpu,
        "passing_webgpu.txt",
        "conformance-report-webgpu.txt",
    );
}

fn suite(backend: Backend, list_name: &str, report_name: &str) {
    let data = data_dir();
    assert!(
        data.join("node").is_dir(),
        "ONNX suite not found at {}: run tools/fetch_onnx_suite.sh",
        data.display()
    );
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    let verbose = std::env::var_os("CONFORMANCE_VERBOSE").is_some();
    let mut cases = Vec::new();
    for s in SUITES {
        let light = *s == "light";
        let mut v: Vec<PathBuf> = std::fs::read_dir(data.join(s))
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        if light {
                            p.extension().is_some_and(|e| e == "onnx")
                        } else {
                            p.is_dir()
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        cases.extend(v.into_iter().map(|p| {
            let stem = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (format!("{s}/{stem}"), p)
        }));
    }
    if let Some(f) = &filter {
        cases.retain(|(n, _)| n.contains(f.as_str()));
    }
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut passed = BTreeSet::new();
    let mut panicked = Vec::new();
    let mut per_op: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut per_suite: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for (name, dir) in &cases {
        let r = std::panic::catch_unwind(|| {
            if dir.is_dir() {
                run_case(dir, backend)
            } else {
                run_light_case(dir, backend)
            }
        });
        let op = case_op(dir);
        let suite = SUITES
            .iter()
            .find(|s| name.starts_with(&format!("{s}/")))
            .copied()
            .unwrap_or("?");
        let e = per_op.entry(op).or_default();
        let se = per_suite.entry(suite).or_default();
        e.1 += 1;
        se.1 += 1;
        match r {
            Ok(Ok(())) => {
                e.0 += 1;
                se.0 += 1;
                passed.insert(name.clone());
            }
            // The API turns a kernel panic into this error; it is still a bug.
            Ok(Err(msg)) if msg.contains("internal error (please report)") => {
                panicked.push(format!("{name}: {msg}"));
                failures.push((name.clone(), format!("PANIC {msg}")));
            }
            Ok(Err(msg)) => failures.push((name.clone(), msg)),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panicked.push(format!("{name}: {msg}"));
                failures.push((name.clone(), format!("PANIC {msg}")));
            }
        }
    }
    std::panic::set_hook(prev_hook);

    let mut report = String::new();
    report.push_str("per op (passed/total):\n");
    for (op, (p, t)) in &per_op {
        report.push_str(&format!("  {op:<32} {p}/{t}\n"));
    }
    for (n, msg) in &failures {
        if verbose {
            report.push_str(&format!("FAIL {n}: {msg}\n"));
        }
    }
    for (s, (p, t)) in &per_suite {
        report.push_str(&format!("suite {s}: {p}/{t} passed\n"));
    }
    report.push_str(&format!(
        "conformance total ({backend:?}): {}/{} cases passed\n",
        passed.len(),
        cases.len()
    ));
    eprintln!("{report}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let _ = std::fs::create_dir_all(root.join("target"));
    let failures_txt: String = failures
        .iter()
        .map(|(n, m)| format!("{n}: {m}\n"))
        .collect();
    let _ = std::fs::write(
        root.join("target").join(report_name),
        format!("{report}\n{failures_txt}"),
    );

    let list_path = root.join("tests/conformance").join(list_name);
    let listed: BTreeSet<String> = std::fs::read_to_string(&list_path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if std::env::var_os("CONFORMANCE_UPDATE").is_some() && filter.is_none() {
        let body: String = passed.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(
            &list_path,
            format!("# Cases that pass; a regression fails tests/conformance.rs. Regenerate with CONFORMANCE_UPDATE=1.\n{body}"),
        )
        .expect("write passing.txt");
    }
    let regressions: Vec<&String> = listed
        .iter()
        .filter(|n| filter.as_ref().is_none_or(|f| n.contains(f.as_str())))
        .filter(|n| !passed.contains(*n))
        .collect();
    assert!(
        panicked.is_empty(),
        "{} case(s) panicked (a bug: bad input must give errors):\n{}",
        panicked.len(),
        panicked.join("\n")
    );
    assert!(
        regressions.is_empty(),
        "{} listed case(s) no longer pass:\n{}",
        regressions.len(),
        regressions
            .iter()
            .map(|n| format!(
                "{n}: {}",
                failures
                    .iter()
                    .find(|(f, _)| f == *n)
                    .map_or("", |(_, m)| m.as_str())
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
