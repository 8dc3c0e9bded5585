//! The backend choice and the GPU path's contract: `auto` says why it picks the CPU,
//! `webgpu` runs the model (mixed with the CPU where kernels are missing) and agrees
//! with the CPU, the plan shows the placement, bad input still gets typed errors.
//! On a machine without any GPU (not even lavapipe) the GPU cases check the typed
//! `Device` error instead, unless `EDGEPREDICT_REQUIRE_GPU=1` (CI) makes that a failure.
#![cfg(feature = "webgpu")]

use edgepredict::api::io::read_npy;
use edgepredict::api::Backend;
use edgepredict::{ErrorKind, LoadOptions, Model, Tensor};

const DIGITS: &[u8] = include_bytes!("../models/digits_mlp.onnx");
const X: &[u8] = include_bytes!("../models/digits_test.npy");

fn with(backend: Backend) -> LoadOptions {
    LoadOptions {
        backend,
        ..Default::default()
    }
}

/// The GPU model, or None where no adapter exists (allowed unless CI requires one).
fn gpu_model(bytes: &[u8]) -> Option<Model> {
    match Model::load_with(bytes, &with(Backend::WebGpu)) {
        Ok(m) => Some(m),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Device, "{e}");
            assert!(
                std::env::var_os("EDGEPREDICT_REQUIRE_GPU").is_none(),
                "no GPU (install mesa-vulkan-drivers for lavapipe): {e}"
            );
            eprintln!("no GPU here: {e}");
            None
        }
    }
}

#[test]
fn auto_records_why_it_uses_the_cpu() {
    let m = Model::load_with(DIGITS, &with(Backend::Auto)).unwrap();
    let b = m.backend();
    // Software adapters (lavapipe, SwiftShader) and machines without a GPU both land on
    // the CPU, and say which it was.
    if b.active == "cpu" {
        let why = b.fallback_reason.expect("a reason");
        assert!(!why.is_empty());
        eprintln!("auto → cpu: {why}");
    } else {
        assert_eq!(b.active, "webgpu");
        assert!(b.fallback_reason.is_none());
    }
    let cpu = Model::load(DIGITS).unwrap().backend();
    assert_eq!(cpu.active, "cpu");
    assert_eq!(cpu.requested, Backend::Cpu);
}

#[test]
fn webgpu_matches_the_cpu_and_shows_its_plan() {
    let Some(gpu) = gpu_model(DIGITS) else { return };
    let b = gpu.backend();
    assert_eq!(b.active, "webgpu");
    assert!(b.gpu_nodes > 0 && b.gpu_nodes <= b.nodes, "{b:?}");
    assert!(b.adapter.is_some());
    let plan = gpu.plan().describe(gpu.graph());
    assert!(plan.contains("Gpu (webgpu)"), "{plan}");
    let x = read_npy(X).unwrap();
    let cpu = Model::load(DIGITS).unwrap();
    for _ in 0..2 {
        // Twice: the second run reuses cached pipelines, constants and pooled buffers.
        let a = cpu.run(&[("X", x.clone())]).unwrap();
        let g = gpu.run(&[("X", x.clone())]).unwrap();
        assert_eq!(a[0].1, g[0].1, "labels differ");
        let (pa, pg) = (a[1].1.to_f32_vec().unwrap(), g[1].1.to_f32_vec().unwrap());
        let worst = pa
            .iter()
            .zip(&pg)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "probabilities differ by {worst}");
    }
}

#[test]
fn bad_input_on_the_gpu_path_is_a_typed_error() {
    let Some(gpu) = gpu_model(DIGITS) else { return };
    let wrong = Tensor::from_vec(vec![2, 63], vec![0f32; 126]).unwrap();
    let e = gpu.run(&[("X", wrong)]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // The model keeps serving.
    let ok = Tensor::from_vec(vec![1, 64], vec![0f32; 64]).unwrap();
    assert!(gpu.run(&[("X", ok)]).is_ok());
    assert_eq!(gpu.backend().active, "webgpu");
}

#[test]
fn unknown_backend_name_is_an_input_error() {
    let e = "tpu".parse::<Backend>().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!("webgpu".parse::<Backend>().unwrap(), Backend::WebGpu);
}

#[test]
fn a_gpu_only_model_runs_in_one_submission() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/onnx-suite/onnx/backend/test/data/node/test_gemm_default_single_elem_vector_bias/model.onnx");
    let Ok(bytes) = std::fs::read(&p) else {
        eprintln!("{} missing: run tools/fetch_onnx_suite.sh", p.display());
        return;
    };
    let Some(m) = gpu_model(&bytes) else { return };
    let b = m.backend();
    assert_eq!(b.gpu_nodes, b.nodes, "{b:?}");
    let feeds: Vec<(String, Tensor)> = m
        .inputs()
        .iter()
        .map(|i| {
            let shape = i.fact.concrete_shape().unwrap();
            let n = shape.iter().product();
            (
                i.name.clone(),
                Tensor::from_vec(shape, vec![0.5f32; n]).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    m.run(&refs).unwrap();
    let s = m.last_gpu_run().unwrap();
    assert_eq!(s.submissions, 1, "{s:?}");
    assert!(s.uploaded > 0 && s.downloaded > 0, "{s:?}");
}

/// float16 models run on the GPU: every node is placed there, values are stored widened
/// and rounded to float16 after each node (MatMul/Gemm with `shader-f16` use f16 tiles),
/// and the outputs agree with the CPU within float16 precision.
#[test]
fn float16_model_runs_on_the_gpu() {
    let bytes = include_bytes!("gpu_cases/f16_block.onnx");
    let Some(gpu) = gpu_model(bytes) else { return };
    let b = gpu.backend();
    assert_eq!(b.gpu_nodes, b.nodes, "{}", gpu.plan().describe(gpu.graph()));
    let cpu = Model::load(bytes).unwrap();
    let n = 5 * 48;
    let xs: Vec<half::f16> = (0..n)
        .map(|i| half::f16::from_f32(((i * 37 % 101) as f32 / 50.0) - 1.0))
        .collect();
    let x = Tensor::new(vec![5, 48], edgepredict::tensor::Data::F16(xs)).unwrap();
    let a = cpu.run(&[("X", x.clone())]).unwrap();
    let g = gpu.run(&[("X", x)]).unwrap();
    assert_eq!(g[0].1.dtype(), edgepredict::DType::F16);
    let (pa, pg) = (a[0].1.to_f32_vec().unwrap(), g[0].1.to_f32_vec().unwrap());
    let worst = pa
        .iter()
        .zip(&pg)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    // Two float16 roundings apart at most per node; the outputs are probabilities.
    assert!(worst < 4e-3, "float16 outputs differ by {worst}");
}
