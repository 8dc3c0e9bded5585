//! Runs a real model inside wasm (wasm-bindgen-test; under Node by default):
//! the digits MLP through the core API and through the JS-facing bindings.
#![cfg(target_arch = "wasm32")]

use edgepredict::api::io::read_npy;
use edgepredict::api::wasm::{EdgeModel, Feeds};
use edgepredict::Model;
use wasm_bindgen_test::*;

const MODEL: &[u8] = include_bytes!("../models/digits_mlp.onnx");
const X: &[u8] = include_bytes!("../models/digits_test.npy");
const Y: &[u8] = include_bytes!("../models/digits_test_labels.npy");

#[wasm_bindgen_test]
fn digits_mlp_in_wasm() {
    let model = Model::load(MODEL).unwrap();
    let x = read_npy(X).unwrap();
    let y = read_npy(Y).unwrap().to_i64_vec().unwrap();
    let out = model.run(&[("X", x)]).unwrap();
    let labels = out[0].1.to_i64_vec().unwrap();
    let acc = labels.iter().zip(&y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64;
    assert!(acc >= 0.97, "accuracy {acc}");
}

#[wasm_bindgen_test]
fn bindings_run_and_report_typed_errors() {
    let m = EdgeModel::new(MODEL).unwrap();
    assert_eq!(m.input_names(), vec!["X".to_string()]);
    let x = read_npy(X).unwrap();
    let mut feeds = Feeds::new();
    feeds
        .f32(
            "X".into(),
            x.to_f32_vec().unwrap()[..64].to_vec(),
            vec![1, 64],
        )
        .unwrap();
    let out = m.run(&feeds).unwrap();
    assert_eq!(out.shape(1).unwrap(), vec![1, 10]);
    let p: f32 = out.f32(1).unwrap().iter().sum();
    assert!((p - 1.0).abs() < 1e-4);
    // Wrong shape: a typed error, and the instance keeps serving.
    let mut bad = Feeds::new();
    bad.f32("X".into(), vec![0.0; 10], vec![1, 10]).unwrap();
    let e = m.run(&bad).err().unwrap();
    assert_eq!(e.kind(), "InvalidInput");
    assert!(m.run(&feeds).is_ok());
    assert_eq!(EdgeModel::new(b"garbage").err().unwrap().kind(), "Decode");
}
