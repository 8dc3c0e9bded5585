#!/usr/bin/env python3
"""Makes the small quantized-op cases of tests/quant_ops.rs: one folder per case under
tests/quant_cases/ with model.onnx, input_N.pb and output_N.pb (TensorProto), outputs
computed by onnxruntime (graph optimizations off, so each op runs as written), and
tests/quant_cases/cases.txt listing `name tolerance` (exact, int1 = one quantization unit,
or a float relative tolerance). Weights are initializers, so our loader pre-packs them.

Run from the repository root:  .cache/venv/bin/python tools/make_quant_cases.py
Cases that this onnxruntime refuses are reported and left out.
"""
import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "quant_cases")
rng = np.random.default_rng(20260)
MS = "com.microsoft"
NP2ONNX = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
           np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
           np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.uint16): TensorProto.UINT16,
           np.dtype(np.int16): TensorProto.INT16}


def q8(shape, dt):
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max + 1, size=shape).astype(dt)


def f32(*v):
    return np.array(v, dtype=np.float32) if len(v) != 1 else np.array(v[0], dtype=np.float32)


def zp(v, dt):
    return np.array(v, dtype=dt)


cases = []


def case(name, tol, op, inputs, consts, attrs=None, domain="", n_out=1, out_names=None, extra_nodes=None):
    """inputs: list of (name, array or None for omitted); consts: names among them that are
    initializers."""
    cases.append((name, tol, op, inputs, consts, attrs or {}, domain, n_out, extra_nodes))


def build(name, op, inputs, consts, attrs, domain, n_out, extra_nodes):
    outs = [f"y{i}" for i in range(n_out)]
    names = [n if a is not None else "" for n, a in inputs]
    nodes = [helper.make_node(op, names, outs, domain=domain, **attrs)]
    g_inputs, inits, feeds = [], [], {}
    for n, a in inputs:
        if a is None:
            continue
        if n in consts:
            inits.append(numpy_helper.from_array(a, n))
        else:
            g_inputs.append(helper.make_tensor_value_info(n, NP2ONNX[a.dtype], list(a.shape)))
            feeds[n] = a
    g_outputs = [onnx.ValueInfoProto(name=o) for o in outs]
    graph = helper.make_graph(nodes, name, g_inputs, g_outputs, inits)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)]
    m = helper.make_model(graph, opset_imports=opsets, producer_name="make_quant_cases")
    m.ir_version = 10
    return m, feeds


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    lines = []
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for (name, tol, op, inputs, consts, attrs, domain, n_out, extra) in cases:
        if extra is not None:
            m, feeds = extra()
        else:
            m, feeds = build(name, op, inputs, consts, attrs, domain, n_out, extra)
        try:
            s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
            res = s.run(None, feeds)
        except Exception as e:  # noqa: BLE001 - report and skip what ORT refuses
            print(f"skip {name}: {str(e).splitlines()[0][:150]}", file=sys.stderr)
            continue
        d = os.path.join(OUT, name)
        os.makedirs(d)
        onnx.save(m, os.path.join(d, "model.onnx"))
        for i, inp in enumerate(s.get_inputs()):
            with open(os.path.join(d, f"input_{i}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(feeds[inp.name], inp.name).SerializeToString())
        for i, r in enumerate(res):
            with open(os.path.join(d, f"output_{i}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(np.asarray(r), f"y{i}").SerializeToString())
        lines.append(f"{name} {tol}")
    # Models we must refuse at load, with the error kind expected (not run by ORT).
    bad = []
    for bname, kind, op, ins, attrs in BAD:
        nodes = [helper.make_node(op, [n for n, _ in ins], ["y0"], domain=MS, **attrs)]
        g = helper.make_graph(nodes, bname,
                              [helper.make_tensor_value_info(n, t, sh) for n, (t, sh) in ins],
                              [onnx.ValueInfoProto(name="y0")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)])
        m.ir_version = 10
        onnx.save(m, os.path.join(OUT, f"bad_{bname}.onnx"))
        bad.append(f"{bname} {kind}")
    with open(os.path.join(OUT, "bad.txt"), "w") as f:
        f.write("# model (bad_NAME.onnx) and the error kind its load must give\n" + "\n".join(bad) + "\n")
    with open(os.path.join(OUT, "cases.txt"), "w") as f:
        f.write("# name tolerance (exact | int1 | relative float tolerance); made by tools/make_quant_cases.py\n")
        f.write("\n".join(lines) + "\n")
    print(f"{len(lines)} cases written to {os.path.normpath(OUT)}")


# --- QLinearAdd / QLinearMul: ORT rounds through float (kernel-dependent), so int1.
for dt, tag in [(np.uint8, "u8"), (np.int8, "i8")]:
    z = 128 if dt == np.uint8 else 0
    for op in ["QLinearAdd", "QLinearMul"]:
        for shp, bshp, sub in [([2, 3, 5], [2, 3, 5], "same"), ([2, 3, 5], [3, 1], "bcast"), ([1], [4, 7], "scalar_a")]:
            case(f"{op.lower()}_{tag}_{sub}", "int1", op,
                 [("A", q8(shp, dt)), ("A_scale", f32(0.05)), ("A_zp", zp(z - 3, dt)),
                  ("B", q8(bshp, dt)), ("B_scale", f32(0.07)), ("B_zp", zp(z + 5, dt)),
                  ("C_scale", f32(0.09 if op == "QLinearAdd" else 0.6)), ("C_zp", zp(z + 1, dt))],
                 {"A_scale", "A_zp", "B_scale", "B_zp", "C_scale", "C_zp"}, domain=MS)
    case(f"qlinearsigmoid_{tag}", "int1", "QLinearSigmoid",
         [("X", q8([3, 40], dt)), ("X_scale", f32(0.06)), ("X_zp", zp(z - 10, dt)),
          ("Y_scale", f32(1 / 256)), ("Y_zp", zp(0 if dt == np.uint8 else -128, dt))],
         {"X_scale", "X_zp", "Y_scale", "Y_zp"}, domain=MS)
    case(f"qlinearleakyrelu_{tag}", "exact", "QLinearLeakyRelu",
         [("X", q8([3, 40], dt)), ("X_scale", f32(0.06)), ("X_zp", zp(z - 10, dt)),
          ("Y_scale", f32(0.03)), ("Y_zp", zp(z + 20, dt))],
         {"X_scale", "X_zp", "Y_scale", "Y_zp"}, {"alpha": 0.13}, domain=MS)
    case(f"qlinearconcat_{tag}", "exact", "QLinearConcat",
         [("Y_scale", f32(0.05)), ("Y_zp", zp(z + 2, dt)),
          ("X0", q8([2, 3, 4], dt)), ("S0", f32(0.05)), ("Z0", zp(z + 2, dt)),
          ("X1", q8([2, 1, 4], dt)), ("S1", f32(0.11)), ("Z1", zp(z - 7, dt)),
          ("X2", q8([2, 2, 4], dt)), ("S2", f32(0.02)), ("Z2", zp(z, dt))],
         {"Y_scale", "Y_zp", "S0", "Z0", "S1", "Z1", "S2", "Z2"}, {"axis": -2}, domain=MS)
    for cl in [0, 1]:
        shp = [2, 5, 6, 3] if cl == 0 else [2, 6, 3, 5]
        case(f"qlinearglobalavgpool_{tag}_cl{cl}", "exact", "QLinearGlobalAveragePool",
             [("X", q8(shp, dt)), ("x_scale", f32(0.04)), ("x_zp", zp(z + 3, dt)),
              ("y_scale", f32(0.03)), ("y_zp", zp(z - 4, dt))],
             {"x_scale", "x_zp", "y_scale", "y_zp"}, {"channels_last": cl}, domain=MS)
    for sub, shp, attrs in [
        ("pad", [2, 3, 7, 6], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        ("pad_incl", [2, 3, 7, 6], {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1], "count_include_pad": 1}),
        ("stride_ceil", [1, 2, 9, 8], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
        ("global", [1, 4, 5, 5], {"kernel_shape": [5, 5]}),
        ("1d", [2, 3, 11], {"kernel_shape": [4], "strides": [2], "pads": [1, 2]}),
        ("cl", [1, 6, 5, 3], {"kernel_shape": [2, 2], "channels_last": 1}),
    ]:
        case(f"qlinearavgpool_{tag}_{sub}", "exact", "QLinearAveragePool",
             [("X", q8(shp, dt)), ("x_scale", f32(0.04)), ("x_zp", zp(z + 3, dt)),
              ("y_scale", f32(0.035)), ("y_zp", zp(z - 4, dt))],
             {"x_scale", "x_zp", "y_scale", "y_zp"}, attrs, domain=MS)
    ys, yz = (1 / 256, 0) if dt == np.uint8 else (1 / 256, -128)
    for sub, shp, attrs in [("o13_last", [3, 17], {"opset": 13}), ("o13_axis1", [2, 6, 3], {"opset": 13, "axis": 1}),
                            ("o12_axis1", [2, 3, 4], {"opset": 12, "axis": 1})]:
        case(f"qlinearsoftmax_{tag}_{sub}", "int1", "QLinearSoftmax",
             [("X", q8(shp, dt)), ("X_scale", f32(0.1)), ("x_zp", zp(z, dt)),
              ("y_scale", f32(ys)), ("y_zp", zp(yz, dt))],
             {"X_scale", "x_zp", "y_scale", "y_zp"}, attrs, domain=MS)

# --- QGemm
case("qgemm_u8s8_float", "1e-5", "QGemm",
     [("A", q8([3, 7], np.uint8)), ("a_scale", f32(0.02)), ("a_zp", zp(120, np.uint8)),
      ("B", q8([7, 5], np.int8)), ("b_scale", f32(0.03)), ("b_zp", zp(0, np.int8))],
     {"a_scale", "a_zp", "B", "b_scale", "b_zp"}, domain=MS)
case("qgemm_u8u8_quant_c", "exact", "QGemm",
     [("A", q8([4, 6], np.uint8)), ("a_scale", f32(0.02)), ("a_zp", zp(120, np.uint8)),
      ("B", q8([6, 5], np.uint8)), ("b_scale", f32(0.03)), ("b_zp", zp(130, np.uint8)),
      ("C", rng.integers(-500, 500, size=[5]).astype(np.int32)), ("y_scale", f32(0.4)), ("y_zp", zp(100, np.uint8))],
     {"a_scale", "a_zp", "B", "b_scale", "b_zp", "C", "y_scale", "y_zp"}, {"alpha": 0.75}, domain=MS)
case("qgemm_i8_perchannel_trans", "exact", "QGemm",
     [("A", q8([6, 4], np.int8)), ("a_scale", f32(0.02)), ("a_zp", zp(3, np.int8)),
      ("B", q8([5, 6], np.int8)), ("b_scale", np.linspace(0.01, 0.05, 5).astype(np.float32)),
      ("b_zp", np.zeros(5, np.int8)),
      ("C", rng.integers(-500, 500, size=[4, 5]).astype(np.int32)), ("y_scale", f32(0.3)), ("y_zp", zp(-5, np.int8))],
     {"a_scale", "a_zp", "B", "b_scale", "b_zp", "C", "y_scale", "y_zp"}, {"transA": 1, "transB": 1}, domain=MS)

# --- MatMulIntegerToFloat / DynamicQuantizeMatMul
case("matmulintegertofloat_u8s8_perchannel", "1e-5", "MatMulIntegerToFloat",
     [("A", q8([2, 3, 8], np.uint8)), ("B", q8([8, 6], np.int8)), ("a_scale", f32(0.02)),
      ("b_scale", np.linspace(0.01, 0.06, 6).astype(np.float32)), ("a_zp", zp(128, np.uint8)),
      ("b_zp", np.zeros(6, np.int8)), ("bias", rng.standard_normal(6).astype(np.float32))],
     {"B", "b_scale", "b_zp", "bias"}, domain=MS)
case("matmulintegertofloat_u8u8", "1e-5", "MatMulIntegerToFloat",
     [("A", q8([5, 8], np.uint8)), ("B", q8([8, 3], np.uint8)), ("a_scale", f32(0.02)),
      ("b_scale", f32(0.05)), ("a_zp", zp(100, np.uint8)), ("b_zp", zp(140, np.uint8))],
     {"B", "b_scale", "b_zp"}, domain=MS)
case("dynamicquantizematmul_u8", "1e-5", "DynamicQuantizeMatMul",
     [("A", rng.standard_normal([3, 10]).astype(np.float32)), ("B", q8([10, 4], np.uint8)),
      ("b_scale", f32(0.05)), ("b_zp", zp(128, np.uint8))],
     {"B", "b_scale", "b_zp"}, domain=MS)
case("dynamicquantizematmul_s8_perchannel_bias", "1e-5", "DynamicQuantizeMatMul",
     [("A", rng.standard_normal([2, 3, 10]).astype(np.float32)), ("B", q8([10, 4], np.int8)),
      ("b_scale", np.linspace(0.01, 0.04, 4).astype(np.float32)), ("b_zp", np.zeros(4, np.int8)),
      ("bias", rng.standard_normal(4).astype(np.float32))],
     {"B", "b_scale", "b_zp", "bias"}, domain=MS)

# --- MatMulNBits (float math: tolerance relative to the output scale)
def nbits_case(name, K, N, bits, bs, zp_kind, batch, bias):
    blocks = (K + bs - 1) // bs
    blob = bs * bits // 8
    B = rng.integers(0, 256, size=[N, blocks, blob]).astype(np.uint8)
    scales = (rng.random(N * blocks).astype(np.float32) * 0.05 + 0.01)
    ins = [("A", rng.standard_normal(batch + [K]).astype(np.float32)), ("B", B), ("scales", scales)]
    if zp_kind == "packed":
        zrow = (blocks * bits + 7) // 8
        ins.append(("zero_points", rng.integers(0, 256, size=[N * zrow]).astype(np.uint8)))
    elif zp_kind == "float":
        ins.append(("zero_points", (rng.random(N * blocks) * (2 ** bits - 1)).astype(np.float32)))
    else:
        ins.append(("zero_points", None))
    ins.append(("g_idx", None))
    ins.append(("bias", rng.standard_normal(N).astype(np.float32) if bias else None))
    case(name, "1e-4", "MatMulNBits", ins, {"B", "scales", "zero_points", "bias"},
         {"K": K, "N": N, "bits": bits, "block_size": bs, "accuracy_level": 0}, domain=MS)


nbits_case("matmulnbits_4b_zp_bias", 64, 8, 4, 32, "packed", [3], True)
nbits_case("matmulnbits_4b_nozp_batched", 40, 6, 4, 16, "none", [2, 3], False)
nbits_case("matmulnbits_4b_floatzp", 32, 5, 4, 16, "float", [4], False)
nbits_case("matmulnbits_8b_zp", 48, 7, 8, 16, "packed", [2], True)
nbits_case("matmulnbits_2b_zp", 64, 4, 2, 32, "packed", [2], False)

# --- Standard-domain integer ops beyond the ONNX suite's cases
case("qlinearconv_u8s8_perchannel_pad_stride", "exact", "QLinearConv",
     [("x", q8([2, 4, 7, 6], np.uint8)), ("x_scale", f32(0.02)), ("x_zp", zp(130, np.uint8)),
      ("w", q8([6, 4, 3, 3], np.int8)), ("w_scale", np.linspace(0.005, 0.02, 6).astype(np.float32)),
      ("w_zp", np.zeros(6, np.int8)), ("y_scale", f32(0.15)), ("y_zp", zp(110, np.uint8)),
      ("B", rng.integers(-2000, 2000, size=[6]).astype(np.int32))],
     {"x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp", "B"},
     {"pads": [1, 2, 1, 0], "strides": [2, 1]})
case("qlinearconv_u8u8_depthwise", "exact", "QLinearConv",
     [("x", q8([1, 6, 8, 8], np.uint8)), ("x_scale", f32(0.02)), ("x_zp", zp(128, np.uint8)),
      ("w", q8([6, 1, 3, 3], np.uint8)), ("w_scale", f32(0.01)),
      ("w_zp", zp(120, np.uint8)), ("y_scale", f32(0.1)), ("y_zp", zp(128, np.uint8))],
     {"x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"},
     {"group": 6, "pads": [1, 1, 1, 1], "dilations": [2, 1]})
case("qlinearconv_s8s8_group_pointwise", "exact", "QLinearConv",
     [("x", q8([2, 4, 5, 3], np.int8)), ("x_scale", f32(0.02)), ("x_zp", zp(-3, np.int8)),
      ("w", q8([6, 2, 1, 1], np.int8)), ("w_scale", np.linspace(0.01, 0.03, 6).astype(np.float32)),
      ("w_zp", np.zeros(6, np.int8)), ("y_scale", f32(0.05)), ("y_zp", zp(4, np.int8))],
     {"x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"}, {"group": 2})
case("qlinearconv_u8s8_1d", "exact", "QLinearConv",
     [("x", q8([1, 3, 12], np.uint8)), ("x_scale", f32(0.02)), ("x_zp", zp(128, np.uint8)),
      ("w", q8([4, 3, 5], np.int8)), ("w_scale", f32(0.01)),
      ("w_zp", zp(0, np.int8)), ("y_scale", f32(0.1)), ("y_zp", zp(128, np.uint8))],
     {"x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"}, {"auto_pad": "SAME_UPPER", "strides": [2]})
case("qlinearconv_ms_channels_last", "exact", "QLinearConv",
     [("x", q8([1, 5, 6, 4], np.uint8)), ("x_scale", f32(0.02)), ("x_zp", zp(128, np.uint8)),
      ("w", q8([3, 4, 3, 3], np.int8)), ("w_scale", f32(0.01)),
      ("w_zp", zp(0, np.int8)), ("y_scale", f32(0.1)), ("y_zp", zp(128, np.uint8))],
     {"x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"}, {"channels_last": 1, "pads": [1, 1, 1, 1]},
     domain=MS)
case("qlinearmatmul_s8_perchannel_3d", "exact", "QLinearMatMul",
     [("a", q8([2, 3, 9], np.int8)), ("a_scale", f32(0.03)), ("a_zp", zp(2, np.int8)),
      ("b", q8([9, 5], np.int8)), ("b_scale", np.linspace(0.01, 0.05, 5).astype(np.float32)),
      ("b_zp", np.zeros(5, np.int8)), ("y_scale", f32(0.2)), ("y_zp", zp(-1, np.int8))],
     {"a_scale", "a_zp", "b", "b_scale", "b_zp", "y_scale", "y_zp"})
case("matmulinteger_u8s8_perchannel", "exact", "MatMulInteger",
     [("A", q8([2, 4, 7], np.uint8)), ("B", q8([7, 3], np.int8)), ("a_zp", zp(130, np.uint8)),
      ("b_zp", np.array([1, -2, 3], np.int8))], {"B", "b_zp"})
case("matmulinteger_batched_b", "exact", "MatMulInteger",
     [("A", q8([2, 4, 7], np.uint8)), ("B", q8([2, 7, 3], np.uint8)), ("a_zp", zp(3, np.uint8)),
      ("b_zp", zp(200, np.uint8))], {"b_zp"})
case("convinteger_u8u8_pad_group", "exact", "ConvInteger",
     [("x", q8([1, 4, 6, 6], np.uint8)), ("w", q8([4, 2, 3, 3], np.uint8)), ("x_zp", zp(128, np.uint8)),
      ("w_zp", zp(100, np.uint8))], {"w", "w_zp"}, {"pads": [1, 1, 1, 1], "group": 2})
case("quantizelinear_ms_axis_i8", "exact", "QuantizeLinear",
     [("x", rng.standard_normal([2, 3, 4]).astype(np.float32)), ("s", np.array([0.01, 0.02, 0.05], np.float32)),
      ("z", np.array([-3, 0, 7], np.int8))], {"s", "z"}, {"axis": 1}, domain=MS)
case("quantizelinear_ms_u16", "exact", "QuantizeLinear",
     [("x", rng.standard_normal([5, 4]).astype(np.float32)), ("s", f32(0.0001)),
      ("z", zp(30000, np.uint16))], {"s", "z"}, domain=MS)
case("dequantizelinear_ms_axis_u8", "1e-6", "DequantizeLinear",
     [("x", q8([3, 4], np.uint8)), ("s", np.array([0.01, 0.02, 0.05, 0.1], np.float32)),
      ("z", np.array([3, 100, 128, 255], np.uint8))], {"s", "z"}, {"axis": 1}, domain=MS)
case("dynamicquantizelinear_zeros", "exact", "DynamicQuantizeLinear",
     [("x", np.zeros([2, 3], np.float32))], set(), n_out=3)


def fp16_weights():
    w = (rng.standard_normal([6, 4]) * 0.5).astype(np.float16)
    nodes = [helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w"], ["y0"])]
    g = helper.make_graph(nodes, "fp16_weights",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6])],
                          [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [3, 4])],
                          [numpy_helper.from_array(w, "w16")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m, {"x": rng.standard_normal([3, 6]).astype(np.float32)}


cases.append(("fp16_weights_cast_matmul", "1e-5", None, None, None, None, None, 1, fp16_weights))

U8 = TensorProto.UINT8
F = TensorProto.FLOAT
BAD = [
    ("matmulnbits_bits3", "UnsupportedOp", "MatMulNBits",
     [("A", (F, [1, 32])), ("B", (U8, [2, 2, 6])), ("s", (F, [4]))],
     {"K": 32, "N": 2, "bits": 3, "block_size": 16}),
    ("matmulnbits_prepacked", "UnsupportedOp", "MatMulNBits",
     [("A", (F, [1, 32])), ("B", (U8, [2, 2, 8])), ("s", (F, [4]))],
     {"K": 32, "N": 2, "block_size": 16, "weight_prepacked": 1}),
    ("avgpool_channels_last_2", "InvalidAttribute", "QLinearAveragePool",
     [("X", (U8, [1, 1, 4, 4])), ("xs", (F, [])), ("xz", (U8, [])), ("ys", (F, []))],
     {"kernel_shape": [2, 2], "channels_last": 2}),
    ("concat_no_axis", "InvalidAttribute", "QLinearConcat",
     [("ys", (F, [])), ("yz", (U8, [])), ("X", (U8, [2])), ("xs", (F, [])), ("xz", (U8, []))], {}),
    ("softmax_no_opset", "InvalidAttribute", "QLinearSoftmax",
     [("X", (U8, [2, 3])), ("xs", (F, [])), ("xz", (U8, [])), ("ys", (F, [])), ("yz", (U8, []))], {}),
    ("qgemm_float_a", "DType", "QGemm",
     [("A", (F, [2, 3])), ("as", (F, [])), ("az", (U8, [])), ("B", (U8, [3, 2])), ("bs", (F, [])),
      ("bz", (U8, []))], {}),
]

if __name__ == "__main__":
    main()
