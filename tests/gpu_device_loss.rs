//! Device loss mid-life: the run that meets it fails with a typed `Device` error, the
//! next run falls back to the CPU and gives the right answer, and the model says why.
//! Its own test binary: the loss is process-wide (every model shares the device).
#![cfg(feature = "webgpu")]

use edgepredict::api::Backend;
use edgepredict::{ErrorKind, LoadOptions, Model, Tensor};

const DIGITS: &[u8] = include_bytes!("../models/digits_mlp.onnx");

#[test]
fn device_loss_is_an_error_then_the_cpu_takes_over() {
    let opts = LoadOptions {
        backend: Backend::WebGpu,
        ..Default::default()
    };
    let gpu = match Model::load_with(DIGITS, &opts) {
        Ok(m) => m,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Device);
            assert!(std::env::var_os("EDGEPREDICT_REQUIRE_GPU").is_none(), "{e}");
            return;
        }
    };
    let x = Tensor::from_vec(vec![3, 64], (0..192).map(|i| (i % 17) as f32).collect()).unwrap();
    let want = Model::load(DIGITS)
        .unwrap()
        .run(&[("X", x.clone())])
        .unwrap();
    assert_eq!(gpu.run(&[("X", x.clone())]).unwrap()[0].1, want[0].1);
    gpu.simulate_device_loss();
    let e = gpu.run(&[("X", x.clone())]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Device, "{e}");
    assert!(e.to_string().contains("lost"), "{e}");
    let b = gpu.backend();
    assert_eq!(b.active, "cpu");
    assert!(b.fallback_reason.unwrap().contains("lost"));
    let again = gpu.run(&[("X", x.clone())]).unwrap();
    assert_eq!(again[0].1, want[0].1);
    // A model loaded after the loss does not get the lost device.
    let auto = Model::load_with(
        DIGITS,
        &LoadOptions {
            backend: Backend::Auto,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(auto.backend().active, "cpu");
    assert!(Model::load_with(DIGITS, &opts).is_err());
}
