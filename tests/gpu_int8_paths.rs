//! The int8 GEMM/convolution kernels have two inner products: WGSL `dot4I8Packed` (where
//! the adapter's WGSL offers `packed_4x8_integer_dot_product`) and a portable unpack of
//! the packed bytes. Both give the same integers, so the int8 cases and a real int8 model
//! must come out identical on the two paths, and equal to the CPU. Where the adapter
//! lacks the packed dot product only the portable path runs (and the test says so);
//! skipped with a message where no GPU adapter comes up.
#![cfg(all(feature = "webgpu", not(target_arch = "wasm32")))]

use edgepredict::api::io::read_pb;
use edgepredict::api::Backend;
use edgepredict::{LoadOptions, Model, Tensor};
use std::path::Path;

fn load(bytes: &[u8], backend: Backend) -> Model {
    Model::load_with(
        bytes,
        &LoadOptions {
            backend,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("load: {e}"))
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

/// Integer GEMM and convolution cases of `tests/quant_cases`, and a real int8 model.
fn workloads() -> Vec<(String, Vec<u8>, Vec<Tensor>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/quant_cases");
    let mut out = Vec::new();
    let list = std::fs::read_to_string(dir.join("cases.txt")).expect("tests/quant_cases/cases.txt");
    for name in list
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            [
                "qlinearconv",
                "convinteger",
                "matmulinteger",
                "qlinearmatmul",
                "qgemm",
            ]
            .iter()
            .any(|p| n.starts_with(p))
        })
    {
        let cdir = dir.join(name);
        let inputs: Vec<Tensor> = (0..)
            .map(|i| cdir.join(format!("input_{i}.pb")))
            .take_while(|p| p.exists())
            .map(|p| read_pb(&std::fs::read(p).unwrap()).unwrap())
            .collect();
        out.push((
            name.to_string(),
            std::fs::read(cdir.join("model.onnx")).unwrap(),
            inputs,
        ));
    }
    let model = root.join(".cache/models/int8/ppocr_rec_qdq.onnx");
    match std::fs::read(&model) {
        Ok(bytes) => {
            let n = 3 * 48 * 320;
            let mut s = 11u64;
            let x: Vec<f32> = (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect();
            let x = Tensor::from_vec(vec![1, 3, 48, 320], x).unwrap();
            out.push(("ppocr_rec_qdq".into(), bytes, vec![x]));
        }
        Err(_) => eprintln!("{} not found: only the op cases", model.display()),
    }
    out
}

#[test]
fn packed_dot_and_portable_unpack_agree() {
    let cx = match edgepredict::gpu::device::shared() {
        Ok(cx) => cx,
        Err(e) => {
            eprintln!("skipped: no WebGPU device ({e})");
            return;
        }
    };
    let had = cx.packed_dot();
    let dot4 = cx.set_packed_dot(true);
    eprintln!(
        "{}: packed dot product {}",
        cx.summary,
        if dot4 {
            "available"
        } else {
            "not offered: portable path only"
        }
    );
    for (name, bytes, inputs) in workloads() {
        cx.set_packed_dot(true);
        let fast = load(&bytes, Backend::WebGpu);
        cx.set_packed_dot(false);
        let portable = load(&bytes, Backend::WebGpu);
        let cpu = load(&bytes, Backend::Cpu);
        let b = portable.backend();
        assert!(b.gpu_nodes > 0, "{name}: nothing on the GPU");
        let (f, p, c) = (
            run(&fast, &inputs),
            run(&portable, &inputs),
            run(&cpu, &inputs),
        );
        for (k, ((x, y), z)) in f.iter().zip(&p).zip(&c).enumerate() {
            let (x, y, z) = (
                x.to_f64_vec().unwrap(),
                y.to_f64_vec().unwrap(),
                z.to_f64_vec().unwrap(),
            );
            assert_eq!(x, y, "{name} output {k}: dot4 and portable paths differ");
            if name.starts_with("ppocr") {
                let d = y
                    .iter()
                    .zip(&z)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(d <= 2.0 / 256.0, "{name}: GPU and CPU differ by {d}");
            } else {
                assert_eq!(y, z, "{name} output {k}: GPU and CPU differ");
            }
        }
        eprintln!(
            "{name}: identical on both paths ({} of {} nodes on the GPU)",
            b.gpu_nodes, b.nodes
        );
    }
    cx.set_packed_dot(had);
}
