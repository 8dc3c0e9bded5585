//! The int8 ops on the WebGPU backend against the CPU backend (the ground truth, itself
//! checked against onnxruntime by `tests/quant_ops.rs`): every case of
//! `tests/quant_cases/` whose ops have GPU kernels must place all its nodes on the GPU
//! and give the CPU's outputs — integers within one quantization unit (equal in almost
//! every element: the integer accumulation is exact and requantization rounds the same
//! way; a float division where the CPU divides exactly, or a fused multiply-add, can
//! move a value across a rounding tie), floats within a relative 1e-5. Then a real int8
//! model end to end. Skipped with a message where no GPU adapter comes up.
#![cfg(feature = "webgpu")]

use edgepredict::api::io::read_pb;
use edgepredict::api::Backend;
use edgepredict::{LoadOptions, Model, Tensor};
use std::path::{Path, PathBuf};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/quant_cases")
}

fn load(bytes: &[u8], backend: Backend) -> Option<Model> {
    match Model::load_with(
        bytes,
        &LoadOptions {
            backend,
            ..Default::default()
        },
    ) {
        Ok(m) => Some(m),
        Err(e) if backend == Backend::WebGpu => {
            eprintln!("skipped: no WebGPU device ({e})");
            None
        }
        Err(e) => panic!("load: {e}"),
    }
}

fn run(model: &Model, inputs: &[Tensor]) -> Vec<Tensor> {
    let feeds: Vec<(&str, Tensor)> = model
        .inputs()
        .iter()
        .filter(|i| !i.optional)
        .zip(inputs)
        .map(|(i, t)| (i.name.as_str(), t.clone()))
        .collect();
    model
        .run(&feeds)
        .unwrap_or_else(|e| panic!("run: {e}"))
        .into_iter()
        .map(|(_, t)| t)
        .collect()
}

/// (largest difference, elements that differ, largest |CPU value|).
fn diff(a: &Tensor, b: &Tensor) -> (f64, usize, f64) {
    let (x, y) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    let mut d = 0f64;
    let mut n = 0;
    let mut m = 0f64;
    for (p, q) in x.iter().zip(&y) {
        let e = (p - q).abs();
        if e > 0.0 || p.is_nan() != q.is_nan() {
            n += 1;
        }
        d = d.max(e);
        m = m.max(q.abs());
    }
    (d, n, m)
}

/// Cases with an op that stays on the CPU (no GPU kernel yet, or a type the GPU does not
/// store).
const CPU_CASES: &[&str] = &["quantizelinear_ms_u16", "fp16_weights_cast_matmul"];

#[test]
fn quant_cases_match_the_cpu_on_the_gpu() {
    let dir = cases_dir();
    let list = std::fs::read_to_string(dir.join("cases.txt")).expect("tests/quant_cases/cases.txt");
    let mut failures = Vec::new();
    let (mut n, mut exact) = (0, 0);
    let mut inexact = Vec::new();
    for line in list
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let name = line.split_whitespace().next().unwrap_or_default();
        let cdir = dir.join(name);
        let bytes = std::fs::read(cdir.join("model.onnx")).unwrap();
        let inputs: Vec<Tensor> = (0..)
            .map(|i| cdir.join(format!("input_{i}.pb")))
            .take_while(|p| p.exists())
            .map(|p| read_pb(&std::fs::read(p).unwrap()).unwrap())
            .collect();
        let Some(gpu) = load(&bytes, Backend::WebGpu) else {
            return;
        };
        let b = gpu.backend();
        let on_cpu = CPU_CASES.iter().any(|c| name.starts_with(c));
        if !on_cpu && b.gpu_nodes < b.nodes {
            let left: Vec<String> = gpu
                .plan()
                .placement
                .iter()
                .zip(&gpu.graph().nodes)
                .filter(|((p, _), _)| *p != edgepredict::plan::Placement::Gpu)
                .map(|((_, why), n)| format!("{}: {why}", n.op_type))
                .collect();
            failures.push(format!("{name}: not all on the GPU: {left:?}"));
            continue;
        }
        let cpu = load(&bytes, Backend::Cpu).unwrap();
        let (g, c) = (run(&gpu, &inputs), run(&cpu, &inputs));
        let mut same = true;
        for (k, (x, y)) in g.iter().zip(&c).enumerate() {
            if x.dtype() != y.dtype() || x.shape() != y.shape() {
                failures.push(format!(
                    "{name} output {k}: {} {:?} on the GPU, {} {:?} on the CPU",
                    x.dtype(),
                    x.shape(),
                    y.dtype(),
                    y.shape()
                ));
                continue;
            }
            let (d, nd, m) = diff(x, y);
            same &= nd == 0;
            let ok = if x.dtype().is_float() {
                d <= 1e-5 * (1.0 + m)
            } else {
                d <= 1.0
            };
            if !ok {
                failures.push(format!(
                    "{name} output {k}: max diff {d} ({nd} of {} differ)",
                    x.len()
                ));
            }
        }
        exact += same as usize;
        if !same {
            inexact.push(name.to_string());
        }
        n += 1;
    }
    eprintln!("{exact} of {n} cases bit-exact on the GPU; not: {inexact:?}");
    assert!(
        failures.is_empty(),
        "{} cases fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A deterministic pseudo-random f32 tensor in [-1, 1).
fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

#[test]
fn int8_model_end_to_end_matches_the_cpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/int8");
    for (name, shape) in [
        ("ppocr_cls_qdq", [1, 3, 48, 192]),
        ("ppocr_cls_dyn", [1, 3, 48, 192]),
        ("ppocr_rec_qdq", [1, 3, 48, 320]),
    ] {
        let path = root.join(format!("{name}.onnx"));
        let Ok(bytes) = std::fs::read(&path) else {
            eprintln!("skipped: {} not found", path.display());
            continue;
        };
        let Some(gpu) = load(&bytes, Backend::WebGpu) else {
            return;
        };
        let cpu = load(&bytes, Backend::Cpu).unwrap();
        let b = gpu.backend();
        eprintln!("{name}: {} of {} nodes on the GPU", b.gpu_nodes, b.nodes);
        let x = random(&shape, 7);
        let (g, c) = (run(&gpu, std::slice::from_ref(&x)), run(&cpu, &[x]));
        for (y, z) in g.iter().zip(&c) {
            let (d, nd, _) = diff(y, z);
            eprintln!("{name}: max diff {d}, {nd} of {} differ", y.len());
            // Softmax probabilities; one int8 step is 1/256.
            assert!(d <= 2.0 / 256.0, "{name}: GPU and CPU differ by {d}");
        }
    }
}
