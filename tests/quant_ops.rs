//! Quantized ops against onnxruntime: every case of `tests/quant_cases/` (made by
//! `tools/make_quant_cases.py`, outputs from onnxruntime 1.32) is loaded twice — with the
//! optimisation passes, so constant weights are pre-packed, and without them — and both
//! runs must give identical outputs that match onnxruntime's within the case's tolerance:
//! `exact`, `int1` (one quantization unit, where onnxruntime itself rounds through float
//! kernels whose rounding differs from ours: QLinearAdd/Mul, QLinearSigmoid's
//! approximate logistic, QLinearSoftmax), or a relative float tolerance. Plus typed-error
//! cases for bad zero points and dtypes.

use edgepredict::api::io::read_pb;
use edgepredict::cpu::qgemm::QPacked;
use edgepredict::cpu::quant;
use edgepredict::{DType, ErrorKind, LoadOptions, Model, Tensor};
use std::path::{Path, PathBuf};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/quant_cases")
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

/// Largest difference between two tensors, as f64 (integers compare exactly).
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (x, y) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    x.iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max)
}

fn max_abs(a: &Tensor) -> f64 {
    a.to_f64_vec()
        .unwrap()
        .iter()
        .fold(0.0, |m, v| m.max(v.abs()))
}

fn check(name: &str, tol: &str, got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return Err(format!(
            "{name}: got {} {:?}, want {} {:?}",
            got.dtype(),
            got.shape(),
            want.dtype(),
            want.shape()
        ));
    }
    let d = max_diff(got, want);
    let ok = match tol {
        "exact" => d == 0.0,
        "int1" => d <= 1.0,
        t => {
            let rel: f64 = t.parse().map_err(|_| format!("bad tolerance {t}"))?;
            let scale = want
                .to_f64_vec()
                .unwrap()
                .iter()
                .fold(1e-6f64, |m, v| m.max(v.abs()));
            d <= rel * scale
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{name}: max diff {d} over tolerance {tol}"))
    }
}

#[test]
fn quant_cases_match_onnxruntime_with_and_without_prepack() {
    let dir = cases_dir();
    let list = std::fs::read_to_string(dir.join("cases.txt")).expect("tests/quant_cases/cases.txt");
    let mut failures = Vec::new();
    let mut n = 0;
    for line in list
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut it = line.split_whitespace();
        let (name, tol) = (it.next().unwrap(), it.next().unwrap_or("exact"));
        let cdir = dir.join(name);
        let bytes = std::fs::read(cdir.join("model.onnx")).unwrap();
        let read_all = |prefix: &str| -> Vec<Tensor> {
            (0..)
                .map(|i| cdir.join(format!("{prefix}_{i}.pb")))
                .take_while(|p| p.exists())
                .map(|p| read_pb(&std::fs::read(p).unwrap()).unwrap())
                .collect()
        };
        let (inputs, wants) = (read_all("input"), read_all("output"));
        let packed = Model::load(&bytes).unwrap_or_else(|e| panic!("{name}: load: {e}"));
        let plain = Model::load_with(
            &bytes,
            &LoadOptions {
                optimize: false,
                ..LoadOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name}: load: {e}"));
        let (a, b) = (run(&packed, &inputs), run(&plain, &inputs));
        assert_eq!(a.len(), wants.len(), "{name}: output count");
        for ((x, y), w) in a.iter().zip(&b).zip(&wants) {
            // Integer outputs must be identical; float GEMMs may sum in another order
            // once their weights are packed, so allow a few ulps there.
            let same = if x.dtype().is_float() {
                max_diff(x, y) <= 1e-6 * (1.0 + max_abs(y))
            } else {
                x == y
            };
            assert!(
                same,
                "{name}: pre-packed and plain runs differ (max diff {})",
                max_diff(x, y)
            );
            if let Err(e) = check(name, tol, x, w) {
                failures.push(e);
            }
        }
        n += 1;
    }
    assert!(n >= 60, "only {n} cases found");
    assert!(
        failures.is_empty(),
        "{} of {n} cases fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn constant_weights_are_prepacked_at_load() {
    use edgepredict::graph::ops::quant as q;
    let any_packed = |case: &str| -> bool {
        let bytes = std::fs::read(cases_dir().join(case).join("model.onnx")).unwrap();
        let m = Model::load(&bytes).unwrap();
        m.graph().nodes.iter().any(|n| {
            let a = n.op.as_any();
            a.downcast_ref::<q::QLinearConv>()
                .is_some_and(|o| o.packed_w.is_some())
                || a.downcast_ref::<q::ConvInteger>()
                    .is_some_and(|o| o.packed_w.is_some())
                || a.downcast_ref::<q::QLinearMatMul>()
                    .is_some_and(|o| o.packed_b.is_some())
                || a.downcast_ref::<q::MatMulInteger>()
                    .is_some_and(|o| o.packed_b.is_some())
                || a.downcast_ref::<q::QGemm>()
                    .is_some_and(|o| o.packed_b.is_some())
                || a.downcast_ref::<q::MatMulIntegerToFloat>()
                    .is_some_and(|o| o.packed_b.is_some())
                || a.downcast_ref::<q::DynamicQuantizeMatMul>()
                    .is_some_and(|o| o.packed_b.is_some())
                || a.downcast_ref::<q::MatMulNBits>()
                    .is_some_and(|o| o.dequantized.is_some())
        })
    };
    for case in [
        "qlinearconv_u8s8_perchannel_pad_stride",
        "qlinearconv_ms_channels_last",
        "convinteger_u8u8_pad_group",
        "qlinearmatmul_s8_perchannel_3d",
        "matmulinteger_u8s8_perchannel",
        "qgemm_i8_perchannel_trans",
        "matmulintegertofloat_u8s8_perchannel",
        "dynamicquantizematmul_u8",
        "matmulnbits_4b_zp_bias",
        "matmulnbits_4b_nozp_batched",
    ] {
        assert!(any_packed(case), "{case}: weights not pre-packed");
    }
    // B is a graph input there: nothing to pack.
    assert!(!any_packed("matmulinteger_batched_b"));
}

fn u8t(shape: &[usize], v: &[u8]) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap()
}

#[test]
fn matmul_integer_per_row_a_zero_point_and_packing() {
    // ONNX allows one A zero point per row (onnxruntime does not); check against sums.
    let a = u8t(&[2, 3], &[1, 2, 3, 4, 5, 6]);
    let b = Tensor::from_vec(vec![3, 2], vec![1i8, -1, 2, 0, -3, 5]).unwrap();
    let az = u8t(&[2], &[1, 4]);
    let bz = Tensor::from_vec(vec![2], vec![0i8, 1]).unwrap();
    let y = quant::matmul_integer(&a, &b, Some(&az), Some(&bz), None).unwrap();
    // row 0: a - 1 = [0, 1, 2]; row 1: a - 4 = [0, 1, 2]; b - bz = [[1,-2],[2,-1],[-3,4]]
    assert_eq!(y.as_slice::<i32>().unwrap(), &[-4, 7, -4, 7]);
    let p: QPacked = quant::pack_matmul_b(&b, Some(&bz)).unwrap().unwrap();
    let y2 = quant::matmul_integer(&a, &b, Some(&az), Some(&bz), Some(&p)).unwrap();
    assert_eq!(y, y2);
}

#[test]
fn bad_zero_points_and_dtypes_are_typed_errors() {
    let a = u8t(&[2, 3], &[1, 2, 3, 4, 5, 6]);
    let b = u8t(&[3, 2], &[1, 2, 3, 4, 5, 6]);
    let s = Tensor::scalar(0.1f32);
    // Three zero points for two columns.
    let bz = u8t(&[3], &[1, 2, 3]);
    let e = quant::matmul_integer(&a, &b, None, Some(&bz), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape, "{e}");
    // A zero point of another type than its data.
    let iz = Tensor::scalar(0i8);
    let e = quant::matmul_integer(&a, &b, Some(&iz), None, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DType, "{e}");
    // Float data where 8-bit is required.
    let f = Tensor::from_vec(vec![2, 3], vec![0f32; 6]).unwrap();
    let e = quant::matmul_integer(&f, &b, None, None, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DType, "{e}");
    // A per-tensor-only scale given per channel.
    let vs = Tensor::from_vec(vec![2], vec![0.1f32, 0.2]).unwrap();
    let e = quant::qlinear_matmul(&a, &s, None, &b, &s, None, &vs, None, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape, "{e}");
    // Integer scale.
    let is = Tensor::scalar(1i32);
    let e = quant::qlinear_matmul(&a, &is, None, &b, &s, None, &s, None, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DType, "{e}");
    // Conv: per-channel weight zero points of the wrong length.
    let x = u8t(&[1, 1, 3, 3], &[1; 9]);
    let w = u8t(&[2, 1, 2, 2], &[1; 8]);
    let wz = u8t(&[3], &[0, 0, 0]);
    let win = edgepredict::cpu::nn::Window::default();
    let e = quant::conv_integer(&x, &w, None, Some(&wz), &win, 1, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape, "{e}");
    // QLinearConv bias of the wrong type.
    let bias = Tensor::from_vec(vec![2], vec![1f32, 2.]).unwrap();
    let e = quant::qlinear_conv(
        &x,
        &s,
        None,
        &w,
        &s,
        None,
        &s,
        None,
        Some(&bias),
        &win,
        1,
        None,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DType, "{e}");
    // MatMulNBits: B of the wrong shape.
    let at = quant::NBitsAttrs {
        k: 32,
        n: 2,
        bits: 4,
        block_size: 16,
    };
    let bq = u8t(&[2, 2, 4], &[0; 16]);
    let sc = Tensor::from_vec(vec![4], vec![1f32; 4]).unwrap();
    let e = quant::dequantize_nbits(&bq, &sc, None, None, &at).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape, "{e}");
    // QLinearAdd of mixed types.
    let p = quant::QParam { scale: 0.1, zp: 0 };
    let i8a = Tensor::from_vec(vec![2], vec![1i8, 2]).unwrap();
    let e = quant::qlinear_binary(quant::QBinOp::Add, &a, p, &i8a, p, p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DType, "{e}");
}

#[test]
fn bad_quantized_models_fail_to_load_with_typed_errors() {
    let dir = cases_dir();
    let list = std::fs::read_to_string(dir.join("bad.txt")).unwrap();
    let mut n = 0;
    for line in list
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut it = line.split_whitespace();
        let (name, kind) = (it.next().unwrap(), it.next().unwrap());
        let bytes = std::fs::read(dir.join(format!("bad_{name}.onnx"))).unwrap();
        match Model::load(&bytes) {
            Ok(_) => panic!("{name}: loaded, expected a {kind} error"),
            Err(e) => assert_eq!(e.kind().as_str(), kind, "{name}: {e}"),
        }
        n += 1;
    }
    assert!(n >= 5);
    assert_eq!(quant::int_range(DType::U8).unwrap(), (0, 255));
    assert!(quant::int_range(DType::F32).is_err());
}
