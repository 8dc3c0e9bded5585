//! Hostile and broken inputs give typed errors, never panics, and the model (or a fresh
//! one) keeps serving afterwards.

mod support;

use edgepredict::{DType, ErrorKind, LoadOptions, Model, Tensor};
use support::*;

fn load_err(bytes: &[u8]) -> edgepredict::Error {
    match Model::load(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn garbage_and_truncated_bytes() {
    assert_eq!(load_err(b"").kind(), ErrorKind::Decode);
    assert_eq!(load_err(b"\xff\xff\xff\xff").kind(), ErrorKind::Decode);
    assert_eq!(
        load_err(b"hello, this is not a model").kind(),
        ErrorKind::Decode
    );
    let good = identity_model();
    for cut in [1, 5, good.len() / 2, good.len() - 1] {
        let e = load_err(&good[..cut]);
        assert!(
            matches!(e.kind(), ErrorKind::Decode | ErrorKind::InvalidModel),
            "cut {cut}: {e}"
        );
    }
    // Every single-byte corruption either loads or errors, never panics.
    for i in 0..good.len() {
        for x in [0x00u8, 0xff, 0x80] {
            let mut b = good.clone();
            b[i] = x;
            let _ = Model::load(&b);
        }
    }
}

#[test]
fn cyclic_graph_is_rejected() {
    let a = node(&NodeSpec {
        op: "Identity",
        inputs: &["b"],
        outputs: &["a"],
        attrs: vec![],
    });
    let b = node(&NodeSpec {
        op: "Identity",
        inputs: &["a"],
        outputs: &["b"],
        attrs: vec![],
    });
    let m = model(&graph(
        &[a, b],
        &[],
        &[value_info("x", 1, &[1])],
        &[value_info("b", 1, &[1])],
    ));
    let e = load_err(&m);
    assert_eq!(e.kind(), ErrorKind::InvalidModel);
    assert!(e.message().contains("cycle"), "{e}");
}

#[test]
fn dangling_and_duplicate_names() {
    let n = node(&NodeSpec {
        op: "Identity",
        inputs: &["nowhere"],
        outputs: &["y"],
        attrs: vec![],
    });
    let m = model(&graph(
        &[n],
        &[],
        &[value_info("x", 1, &[1])],
        &[value_info("y", 1, &[1])],
    ));
    let e = load_err(&m);
    assert_eq!(e.kind(), ErrorKind::InvalidModel);
    assert!(e.message().contains("nowhere"), "{e}");

    let a = node(&NodeSpec {
        op: "Identity",
        inputs: &["x"],
        outputs: &["y"],
        attrs: vec![],
    });
    let b = node(&NodeSpec {
        op: "Identity",
        inputs: &["x"],
        outputs: &["y"],
        attrs: vec![],
    });
    let m = model(&graph(
        &[a, b],
        &[],
        &[value_info("x", 1, &[1])],
        &[value_info("y", 1, &[1])],
    ));
    assert_eq!(load_err(&m).kind(), ErrorKind::InvalidModel);
}

#[test]
fn every_unsupported_op_is_listed_at_load() {
    let a = node(&NodeSpec {
        op: "FrobnicateA",
        inputs: &["x"],
        outputs: &["a"],
        attrs: vec![],
    });
    let b = node(&NodeSpec {
        op: "FrobnicateB",
        inputs: &["a"],
        outputs: &["y"],
        attrs: vec![],
    });
    let m = model(&graph(
        &[a, b],
        &[],
        &[value_info("x", 1, &[1])],
        &[value_info("y", 1, &[1])],
    ));
    let e = load_err(&m);
    assert_eq!(e.kind(), ErrorKind::UnsupportedOp);
    assert!(
        e.message().contains("FrobnicateA") && e.message().contains("FrobnicateB"),
        "{e}"
    );
}

#[test]
fn unknown_attribute_is_an_error() {
    let n = node(&NodeSpec {
        op: "Identity",
        inputs: &["x"],
        outputs: &["y"],
        attrs: vec![attr_int("bogus", 1)],
    });
    let m = model(&graph(
        &[n],
        &[],
        &[value_info("x", 1, &[1])],
        &[value_info("y", 1, &[1])],
    ));
    let e = load_err(&m);
    assert_eq!(e.kind(), ErrorKind::InvalidAttribute);
    assert_eq!(e.op(), Some("Identity"));
}

#[test]
fn huge_or_negative_declared_tensors() {
    // An initializer that claims 1e12 floats with no data behind it.
    let mut t = Vec::new();
    field_varint(1, 1_000_000, &mut t);
    field_varint(1, 1_000_000, &mut t);
    field_varint(2, 1, &mut t);
    field_str(8, "w", &mut t);
    let n = node(&NodeSpec {
        op: "Identity",
        inputs: &["w"],
        outputs: &["y"],
        attrs: vec![],
    });
    let m = model(&graph(&[n], &[t], &[], &[value_info("y", 1, &[])]));
    assert_eq!(load_err(&m).kind(), ErrorKind::MemoryLimit);

    let mut t = Vec::new();
    field_varint(1, -4, &mut t);
    field_varint(2, 1, &mut t);
    field_str(8, "w", &mut t);
    let m = model(&graph(&[], &[t], &[], &[value_info("w", 1, &[])]));
    assert_eq!(load_err(&m).kind(), ErrorKind::InvalidModel);

    // Data that does not match its dims.
    let t = tensor_f32("w", &[3], &[1.0, 2.0]);
    let m = model(&graph(&[], &[t], &[], &[value_info("w", 1, &[])]));
    assert_eq!(load_err(&m).kind(), ErrorKind::Decode);

    // A Constant whose value is within the dims but over a small configured budget.
    let big = tensor_f32("c", &[1024], &vec![0.0; 1024]);
    let n = node(&NodeSpec {
        op: "Constant",
        inputs: &[],
        outputs: &["y"],
        attrs: vec![attr_tensor("value", &big)],
    });
    let m = model(&graph(&[n], &[], &[], &[value_info("y", 1, &[1024])]));
    let opts = LoadOptions {
        memory_budget: 1000,
        ..LoadOptions::default()
    };
    assert_eq!(
        Model::load_with(&m, &opts).unwrap_err().kind(),
        ErrorKind::MemoryLimit
    );
    assert!(Model::load(&m).is_ok());
}

#[test]
fn external_data_names_the_file() {
    let mut kv = Vec::new();
    field_str(1, "location", &mut kv);
    field_str(2, "weights.bin", &mut kv);
    let mut t = Vec::new();
    field_varint(1, 4, &mut t);
    field_varint(2, 1, &mut t);
    field_str(8, "w", &mut t);
    field_bytes(13, &kv, &mut t);
    field_varint(14, 1, &mut t);
    let m = model(&graph(&[], &[t], &[], &[value_info("w", 1, &[4])]));
    let e = load_err(&m);
    assert_eq!(e.kind(), ErrorKind::ExternalData);
    assert!(e.message().contains("weights.bin"), "{e}");
}

#[test]
fn wrong_inputs_then_keeps_serving() {
    let model = Model::load(&identity_model()).unwrap();
    let ok = Tensor::from_vec(vec![2, 3], vec![1f32; 6]).unwrap();
    let wrong_rank = Tensor::from_vec(vec![6], vec![1f32; 6]).unwrap();
    let wrong_dim = Tensor::from_vec(vec![2, 2], vec![1f32; 4]).unwrap();
    let wrong_dtype = Tensor::from_vec(vec![2, 3], vec![1i64; 6]).unwrap();
    for (t, what) in [
        (wrong_rank, "rank"),
        (wrong_dim, "dim"),
        (wrong_dtype, "must be float32"),
    ] {
        let e = model.run(&[("x", t)]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains(what), "{e}");
    }
    assert_eq!(
        model.run(&[("nope", ok.clone())]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(model.run(&[]).unwrap_err().kind(), ErrorKind::InvalidInput);
    let out = model.run(&[("x", ok.clone())]).unwrap();
    assert_eq!(out[0].1, ok);
    assert_eq!(out[0].1.dtype(), DType::F32);
}

#[test]
fn deep_nesting_is_refused() {
    // A graph attribute nested inside itself 100 times.
    let mut g = graph(&[], &[], &[], &[]);
    for _ in 0..100 {
        let mut a = Vec::new();
        field_str(1, "then_branch", &mut a);
        field_varint(20, 5, &mut a);
        field_bytes(6, &g, &mut a);
        let n = node(&NodeSpec {
            op: "If",
            inputs: &["c"],
            outputs: &["y"],
            attrs: vec![a],
        });
        g = graph(&[n], &[], &[], &[]);
    }
    let e = load_err(&model(&g));
    assert_eq!(e.kind(), ErrorKind::Decode);
}
