//! Each graph pass, before and after: the optimised model gives the same outputs as the
//! unoptimised one, and the rewritten graph has the expected nodes.

mod support;

use edgepredict::{LoadOptions, Model, Tensor};
use support::*;

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

fn attr_ints(name: &str, v: &[i64]) -> Vec<u8> {
    let mut a = Vec::new();
    field_str(1, name, &mut a);
    field_varint(20, 7, &mut a);
    for &x in v {
        field_varint(8, x, &mut a);
    }
    a
}

/// Loads twice (optimised and not), runs both on `x`, checks equal outputs; returns the
/// op types left in the optimised graph.
fn before_after(bytes: &[u8], x: Tensor) -> Vec<String> {
    let (plain, opt) = plain_and_optimized(bytes);
    let a = plain.run(&[("x", x.clone())]).unwrap();
    let b = opt.run(&[("x", x)]).unwrap();
    let (a, b) = (a[0].1.to_f32_vec().unwrap(), b[0].1.to_f32_vec().unwrap());
    assert_eq!(a.len(), b.len());
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{p} vs {q}");
    }
    opt.graph()
        .nodes
        .iter()
        .map(|n| n.op.name().to_string())
        .collect()
}

#[test]
fn conv_batchnorm_relu_becomes_one_conv() {
    let (c, m) = (3, 4);
    let w = tensor_f32("w", &[m, c, 3, 3], &rand((m * c * 9) as usize, 1));
    let b = tensor_f32("b", &[m], &rand(m as usize, 2));
    let scale = tensor_f32("scale", &[m], &rand(m as usize, 3));
    let shift = tensor_f32("shift", &[m], &rand(m as usize, 4));
    let mean = tensor_f32("mean", &[m], &rand(m as usize, 5));
    let var: Vec<f32> = rand(m as usize, 6).iter().map(|v| v.abs() + 0.5).collect();
    let var = tensor_f32("var", &[m], &var);
    let nodes = [
        node(&NodeSpec {
            op: "Conv",
            inputs: &["x", "w", "b"],
            outputs: &["y"],
            attrs: vec![attr_ints("pads", &[1, 1, 1, 1])],
        }),
        node(&NodeSpec {
            op: "BatchNormalization",
            inputs: &["y", "scale", "shift", "mean", "var"],
            outputs: &["z"],
            attrs: vec![],
        }),
        node(&NodeSpec {
            op: "Relu",
            inputs: &["z"],
            outputs: &["out"],
            attrs: vec![],
        }),
    ];
    let m = model(&graph(
        &nodes,
        &[w, b, scale, shift, mean, var],
        &[value_info("x", 1, &[1, c, 5, 5])],
        &[value_info("out", 1, &[1, m, 5, 5])],
    ));
    let x = Tensor::from_vec(vec![1, 3, 5, 5], rand(75, 7)).unwrap();
    assert_eq!(before_after(&m, x), vec!["Conv"]);
}

#[test]
fn matmul_add_relu_becomes_one_matmul() {
    let w = tensor_f32("w", &[8, 6], &rand(48, 1));
    let b = tensor_f32("b", &[6], &rand(6, 2));
    let nodes = [
        node(&NodeSpec {
            op: "MatMul",
            inputs: &["x", "w"],
            outputs: &["y"],
            attrs: vec![],
        }),
        node(&NodeSpec {
            op: "Add",
            inputs: &["y", "b"],
            outputs: &["z"],
            attrs: vec![],
        }),
        node(&NodeSpec {
            op: "Relu",
            inputs: &["z"],
            outputs: &["out"],
            attrs: vec![],
        }),
    ];
    let m = model(&graph(
        &nodes,
        &[w, b],
        &[value_info("x", 1, &[-1, 8])],
        &[value_info("out", 1, &[-1, 6])],
    ));
    let x = Tensor::from_vec(vec![5, 8], rand(40, 3)).unwrap();
    assert_eq!(before_after(&m, x), vec!["MatMul"]);
}

#[test]
fn conv_sigmoid_mul_becomes_silu_conv() {
    let w = tensor_f32("w", &[2, 2, 1, 1], &rand(4, 1));
    let nodes = [
        node(&NodeSpec {
            op: "Conv",
            inputs: &["x", "w"],
            outputs: &["y"],
            attrs: vec![],
        }),
        node(&NodeSpec {
            op: "Sigmoid",
            inputs: &["y"],
            outputs: &["s"],
            attrs: vec![],
        }),
        node(&NodeSpec {
            op: "Mul",
            inputs: &["y", "s"],
            outputs: &["out"],
            attrs: vec![],
        }),
    ];
    let m = model(&graph(
        &nodes,
        &[w],
        &[value_info("x", 1, &[1, 2, 3, 3])],
        &[value_info("out", 1, &[1, 2, 3, 3])],
    ));
    let x = Tensor::from_vec(vec![1, 2, 3, 3], rand(18, 4)).unwrap();
    assert_eq!(before_after(&m, x), vec!["Conv"]);
}

#[test]
fn shared_intermediate_is_not_fused() {
    // y feeds both Relu and the output: fusing would change y.
    let w = tensor_f32("w", &[4, 4], &rand(16, 1));
    let nodes = [
        node(&NodeSpec {
            op: "MatMul",
            inputs: &["x", "w"],
            outputs: &["y"],
            attrs: vec![],
        }),
        node(&NodeSpec {
            op: "Relu",
            inputs: &["y"],
            outputs: &["out"],
            attrs: vec![],
        }),
    ];
    let g = graph(
        &nodes,
        &[w],
        &[value_info("x", 1, &[2, 4])],
        &[value_info("out", 1, &[2, 4]), value_info("y", 1, &[2, 4])],
    );
    let m = Model::load(&model(&g)).unwrap();
    assert_eq!(m.graph().nodes.len(), 2);
}

#[test]
fn constant_chains_fold_and_dead_nodes_go() {
    // Shape(w) -> Reshape(x, shape) folds the Shape; an unused Relu disappears.
    let w = tensor_f32("w", &[2, 3], &rand(6, 1));
    let nodes = [
        node(&NodeSpec {
            op: "Shape",
            inputs: &["w"],
            outputs: &["s"],
            attrs: vec![],
        }),
        node(&NodeSpec {
            op: "Reshape",
            inputs: &["x", "s"],
            outputs: &["out"],
            attrs: vec![],
        }),
        node(&NodeSpec {
            op: "Relu",
            inputs: &["x"],
            outputs: &["unused"],
            attrs: vec![],
        }),
    ];
    let m = model(&graph(
        &nodes,
        &[w],
        &[value_info("x", 1, &[6])],
        &[value_info("out", 1, &[2, 3])],
    ));
    let x = Tensor::from_vec(vec![6], rand(6, 2)).unwrap();
    assert_eq!(before_after(&m, x), vec!["Reshape"]);
}

const U8: i64 = 2;
const I8: i64 = 3;
const I32: i64 = 6;

fn qnode(op: &'static str, inputs: &'static [&'static str], out: &'static str) -> Vec<u8> {
    node(&NodeSpec {
        op,
        inputs,
        outputs: &[out],
        attrs: vec![],
    })
}

/// x → Q → DQ → Conv(DQ(w int8 per channel), DQ(bias int32)) → Q → DQ → MaxPool
/// → Q → DQ → y: the QDQ quantizer's shape of a quantized conv block.
fn qdq_conv_model() -> Vec<u8> {
    let (c, m) = (3usize, 4usize);
    let w: Vec<u8> = (0..m * c * 9)
        .map(|i| ((i * 37 % 255) as i32 - 127) as i8 as u8)
        .collect();
    let w_scale: Vec<f32> = (0..m).map(|i| 0.01 + 0.002 * i as f32).collect();
    let x_scale = 0.02f32;
    let bias: Vec<u8> = (0..m as i32)
        .flat_map(|i| ((i - 2) * 300).to_le_bytes())
        .collect();
    let b_scale: Vec<f32> = w_scale.iter().map(|s| s * x_scale).collect();
    let mut conv_attrs = vec![attr_ints("pads", &[1, 1, 1, 1])];
    conv_attrs.push(attr_ints("strides", &[1, 1]));
    let mut axis0 = Vec::new();
    field_str(1, "axis", &mut axis0);
    field_varint(20, 2, &mut axis0);
    field_varint(3, 0, &mut axis0);
    let nodes = [
        qnode("QuantizeLinear", &["x", "xs", "xz"], "xq"),
        qnode("DequantizeLinear", &["xq", "xs", "xz"], "xd"),
        node(&NodeSpec {
            op: "DequantizeLinear",
            inputs: &["w", "ws", "wz"],
            outputs: &["wd"],
            attrs: vec![axis0.clone()],
        }),
        node(&NodeSpec {
            op: "DequantizeLinear",
            inputs: &["b", "bs"],
            outputs: &["bd"],
            attrs: vec![axis0],
        }),
        node(&NodeSpec {
            op: "Conv",
            inputs: &["xd", "wd", "bd"],
            outputs: &["y"],
            attrs: conv_attrs,
        }),
        qnode("QuantizeLinear", &["y", "ys", "yz"], "yq"),
        qnode("DequantizeLinear", &["yq", "ys", "yz"], "yd"),
        node(&NodeSpec {
            op: "MaxPool",
            inputs: &["yd"],
            outputs: &["p"],
            attrs: vec![attr_ints("kernel_shape", &[2, 2])],
        }),
        qnode("QuantizeLinear", &["p", "ys", "yz"], "pq"),
        qnode("DequantizeLinear", &["pq", "ys", "yz"], "z"),
    ];
    let inits = [
        tensor_f32("xs", &[], &[x_scale]),
        tensor_raw("xz", U8, &[], &[128]),
        tensor_raw("w", I8, &[m as i64, c as i64, 3, 3], &w),
        tensor_f32("ws", &[m as i64], &w_scale),
        tensor_raw("wz", I8, &[m as i64], &[0; 4]),
        tensor_raw("b", I32, &[m as i64], &bias),
        tensor_f32("bs", &[m as i64], &b_scale),
        tensor_f32("ys", &[], &[0.05]),
        tensor_raw("yz", U8, &[], &[100]),
    ];
    model(&graph(
        &nodes,
        &inits,
        &[value_info("x", 1, &[1, c as i64, 6, 6])],
        &[value_info("z", 1, &[1, m as i64, 3, 3])],
    ))
}

/// The model loaded without and with the optimization passes.
fn plain_and_optimized(bytes: &[u8]) -> (Model, Model) {
    let plain = Model::load_with(
        bytes,
        &LoadOptions {
            optimize: false,
            ..Default::default()
        },
    )
    .unwrap();
    (plain, Model::load(bytes).unwrap())
}

#[test]
fn qdq_conv_becomes_qlinear_conv() {
    let bytes = qdq_conv_model();
    let x = Tensor::from_vec(
        vec![1, 3, 6, 6],
        rand(108, 11).iter().map(|v| v * 4.0).collect(),
    )
    .unwrap();
    // The integer path may differ from float-then-requantize by one output step where the
    // float sum lands next to a rounding boundary; compare in steps of the output scale.
    let (plain, opt) = plain_and_optimized(&bytes);
    let a = plain.run(&[("x", x.clone())]).unwrap()[0]
        .1
        .to_f32_vec()
        .unwrap();
    let b = opt.run(&[("x", x)]).unwrap()[0].1.to_f32_vec().unwrap();
    let off = a.iter().zip(&b).filter(|(p, q)| p != q).count();
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 0.05 * 1.001, "{p} vs {q}");
    }
    assert!(off <= a.len() / 20, "{off} of {} values differ", a.len());
    let ops: Vec<_> = opt
        .graph()
        .nodes
        .iter()
        .map(|n| n.op.name().to_string())
        .collect();
    assert_eq!(
        ops,
        [
            "QuantizeLinear",
            "QLinearConv",
            "MaxPool",
            "DequantizeLinear"
        ],
        "{ops:?}"
    );
}

/// x → Q → DQ → hard-swish written out (Add 3, Clip 0..6, Mul, Div 6) → Q → DQ → y, and
/// optionally the Add's result as a second output (then it must stay).
fn qdq_hardswish_model(expose_add: bool) -> Vec<u8> {
    let nodes = [
        qnode("QuantizeLinear", &["x", "xs", "xz"], "xq"),
        qnode("DequantizeLinear", &["xq", "xs", "xz"], "xd"),
        node(&NodeSpec {
            op: "Add",
            inputs: &["xd", "three"],
            outputs: &["a"],
            attrs: vec![],
        }),
        node(&NodeSpec {
            op: "Clip",
            inputs: &["a", "zero", "six"],
            outputs: &["c"],
            attrs: vec![],
        }),
        node(&NodeSpec {
            op: "Mul",
            inputs: &["xd", "c"],
            outputs: &["m"],
            attrs: vec![],
        }),
        node(&NodeSpec {
            op: "Div",
            inputs: &["m", "six"],
            outputs: &["h"],
            attrs: vec![],
        }),
        qnode("QuantizeLinear", &["h", "ys", "yz"], "hq"),
        qnode("DequantizeLinear", &["hq", "ys", "yz"], "y"),
    ];
    let inits = [
        tensor_f32("xs", &[], &[0.05]),
        tensor_raw("xz", U8, &[], &[120]),
        tensor_f32("three", &[1], &[3.0]),
        tensor_f32("zero", &[], &[0.0]),
        tensor_f32("six", &[], &[6.0]),
        tensor_f32("ys", &[], &[0.03]),
        tensor_raw("yz", U8, &[], &[20]),
    ];
    let mut outputs = vec![value_info("y", 1, &[2, 3, 5])];
    if expose_add {
        outputs.push(value_info("a", 1, &[2, 3, 5]));
    }
    model(&graph(
        &nodes,
        &inits,
        &[value_info("x", 1, &[2, 3, 5])],
        &outputs,
    ))
}

#[test]
fn pointwise_chain_on_8bit_becomes_one_table() {
    let bytes = qdq_hardswish_model(false);
    // Every byte of the input range and beyond (saturation), in a fixed order.
    let x = Tensor::from_vec(
        vec![2, 3, 5],
        (0..30).map(|i| (i as f32 - 12.0) * 0.37).collect(),
    )
    .unwrap();
    let (plain, opt) = plain_and_optimized(&bytes);
    let a = plain.run(&[("x", x.clone())]).unwrap()[0].1.clone();
    let b = opt.run(&[("x", x)]).unwrap()[0].1.clone();
    // The table holds what the same kernels compute, so the result is bit-identical.
    assert_eq!(a.shape(), b.shape());
    assert_eq!(a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
    let ops: Vec<_> = opt.graph().nodes.iter().map(|n| n.op.name()).collect();
    // The final DQ folds in too: the table holds the float outputs.
    assert_eq!(ops, ["QuantizeLinear", "LookupTable"], "{ops:?}");
}

#[test]
fn table_keeps_values_read_outside_the_chain() {
    let opt = Model::load(&qdq_hardswish_model(true)).unwrap();
    let ops: Vec<_> = opt.graph().nodes.iter().map(|n| n.op.name()).collect();
    // `a` is a graph output, so the Add stays; what follows it may still fold.
    assert!(ops.contains(&"Add"), "{ops:?}");
    let x = Tensor::from_vec(vec![2, 3, 5], vec![0.5f32; 30]).unwrap();
    let outs = opt.run(&[("x", x)]).unwrap();
    assert_eq!(outs.len(), 2);
}
