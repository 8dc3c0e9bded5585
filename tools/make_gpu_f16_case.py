"""Writes tests/gpu_cases/f16_block.onnx: a small float16 network (MatMul + bias, Gelu-free
activations, LayerNorm, Softmax, Conv, pooling, Gemm) used by tests/gpu_backend.rs to
check float16 compute on the GPU against the CPU. Deterministic; tiny (a few KB)."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(7)
f16 = lambda a: numpy_helper.from_array(a.astype(np.float16))
inits = {
    "W1": rng.normal(0, 0.2, (48, 40)),
    "B1": rng.normal(0, 0.1, (40,)),
    "G": rng.normal(1, 0.1, (40,)),
    "Be": rng.normal(0, 0.1, (40,)),
    "Wc": rng.normal(0, 0.3, (4, 1, 3, 3)),
    "Bc": rng.normal(0, 0.1, (4,)),
    "W2": rng.normal(0, 0.2, (40, 10)),
    "B2": rng.normal(0, 0.1, (10,)),
}
nodes = [
    helper.make_node("MatMul", ["X", "W1"], ["h0"]),
    helper.make_node("Add", ["h0", "B1"], ["h1"]),
    helper.make_node("Relu", ["h1"], ["h2"]),
    helper.make_node("LayerNormalization", ["h2", "G", "Be"], ["h3"], axis=-1),
    # A 4×10 image per row through a conv and an average pool.
    helper.make_node("Reshape", ["h3", "img_shape"], ["im"]),
    helper.make_node("Conv", ["im", "Wc", "Bc"], ["c0"], pads=[1, 1, 1, 1]),
    helper.make_node("AveragePool", ["c0"], ["c1"], kernel_shape=[1, 1]),
    helper.make_node("ReduceMean", ["c1", "axes1"], ["c2"], keepdims=0),
    helper.make_node("Reshape", ["c2", "row_shape"], ["h4"]),
    helper.make_node("Add", ["h4", "h3"], ["h5"]),
    helper.make_node("Gemm", ["h5", "W2", "B2"], ["z"]),
    helper.make_node("Softmax", ["z"], ["Y"], axis=-1),
]
consts = [
    numpy_helper.from_array(np.array([-1, 1, 4, 10], np.int64), "img_shape"),
    numpy_helper.from_array(np.array([-1, 40], np.int64), "row_shape"),
    numpy_helper.from_array(np.array([1], np.int64), "axes1"),
]
init = [f16(v) for v in inits.values()]
for t, n in zip(init, inits):
    t.name = n
graph = helper.make_graph(
    nodes,
    "f16_block",
    [helper.make_tensor_value_info("X", TensorProto.FLOAT16, ["N", 48])],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, ["N", 10])],
    init + consts,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
model.ir_version = 8
onnx.checker.check_model(model, full_check=True)
onnx.save(model, "tests/gpu_cases/f16_block.onnx")
print("wrote tests/gpu_cases/f16_block.onnx")
