"""Cost rules, one op family at a time, on hand-built graphs with figures worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import morphonnx
from morphonnx.costs import RULES

from conftest import init, model, tensor


def costs(nodes, inputs, outputs, inits=()):
    cm = morphonnx.cost_model(morphonnx.load(model(nodes, inputs, outputs, inits)))
    return cm, {c.name: c for c in cm.ops}


def single(op, inputs, in_shapes, inits=(), dtype=TensorProto.FLOAT, **attrs):
    node = helper.make_node(op, inputs, ["y"], name="op", **attrs)
    cm, ops = costs([node], [tensor(n, s, dtype) for n, s in in_shapes], [tensor("y", None, dtype)], inits)
    return ops["op"]


@pytest.mark.parametrize("attrs, x, w, macs", [
    ({}, (1, 16, 32, 32), (32, 16, 3, 3), 32 * 32 * 32 * 16 * 9),                        # plain, same padding
    ({"strides": [2, 2]}, (1, 16, 32, 32), (32, 16, 3, 3), 32 * 16 * 16 * 16 * 9),       # strided
    ({"group": 4}, (1, 16, 32, 32), (32, 4, 3, 3), 32 * 32 * 32 * 4 * 9),                # grouped
    ({"group": 16}, (1, 16, 32, 32), (32, 1, 3, 3), 32 * 32 * 32 * 9),                   # depthwise, multiplier 2
    ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, (1, 16, 32, 32), (32, 16, 3, 3), 32 * 32 * 32 * 16 * 9),
    ({"pads": [0, 0, 0, 0]}, (2, 16, 32, 32), (32, 16, 3, 3), 2 * 32 * 30 * 30 * 16 * 9),  # batch 2, valid
])
def test_conv(attrs, x, w, macs):
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], **attrs}
    c = single("Conv", ["x", "w", "b"], [("x", x)], [init("w", w), init("b", (w[0],))], **attrs)
    assert c.macs == macs and c.flops == 2 * macs
    assert c.params == np.prod(w) + w[0]
    y = macs // (w[1] * 9)  # output elements
    assert c.read_bytes == 4 * np.prod(x) and c.write_bytes == 4 * y and c.weight_bytes == 4 * c.params


def test_conv_transpose():
    c = single("ConvTranspose", ["x", "w"], [("x", (1, 8, 10, 10))], [init("w", (8, 4, 4, 4))],
               kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1])
    assert c.macs == 8 * 10 * 10 * 4 * 16


@pytest.mark.parametrize("ta, tb, a, b", [(0, 0, (5, 7), (7, 3)), (1, 0, (7, 5), (7, 3)),
                                          (0, 1, (5, 7), (3, 7)), (1, 1, (7, 5), (3, 7))])
def test_gemm_transposes(ta, tb, a, b):
    c = single("Gemm", ["a", "b", "c"], [("a", a)], [init("b", b), init("c", (3,))], transA=ta, transB=tb)
    assert c.macs == 5 * 7 * 3 and c.params == 21 + 3


@pytest.mark.parametrize("a, b, macs", [((2, 4, 5, 6), (2, 4, 6, 3), 2 * 4 * 5 * 6 * 3),   # batched
                                        ((2, 4, 5, 6), (6, 3), 2 * 4 * 5 * 6 * 3),         # broadcast weight
                                        ((6,), (6, 3), 6 * 3), ((5, 6), (6,), 5 * 6)])      # 1-D operands
def test_matmul(a, b, macs):
    c = single("MatMul", ["a", "b"], [("a", a), ("b", b)])
    assert c.macs == macs and c.params == 0


def test_batchnorm_running_stats_are_not_parameters():
    c = single("BatchNormalization", ["x", "s", "b", "m", "v"], [("x", (1, 8, 4, 4))],
               [init("s", (8,), 1), init("b", (8,), 2), init("m", (8,), 3), init("v", (8,), 4)])
    assert c.params == 16 and c.flops == 8 * 16 and c.weight_bytes == 4 * 32


def test_layernorm_softmax_elementwise():
    assert single("LayerNormalization", ["x", "s", "b"], [("x", (2, 5, 8))],
                  [init("s", (8,)), init("b", (8,), 1)], axis=-1).params == 16
    assert single("Softmax", ["x"], [("x", (2, 5, 8))], axis=-1).flops == 80
    add = single("Add", ["x", "c"], [("x", (1, 8, 4, 4))], [init("c", (1, 8, 1, 1))])
    assert add.flops == 128 and add.read_bytes == 4 * 128 and add.weight_bytes == 32 and add.params == 8


def test_pools_and_reductions():
    assert single("MaxPool", ["x"], [("x", (1, 4, 8, 8))], kernel_shape=[2, 2], strides=[2, 2]).flops == 4 * 16 * 4
    assert single("GlobalAveragePool", ["x"], [("x", (1, 4, 8, 8))]).flops == 256
    assert single("ReduceMean", ["x", "axes"], [("x", (1, 4, 8, 8))],
                  [init("axes", None, value=[2, 3], dtype=np.int64)], keepdims=1).flops == 256


def test_resize_concat_views():
    r = single("Resize", ["x", "", "scales"], [("x", (1, 4, 8, 8))],
               [init("scales", None, value=[1, 1, 2, 2])], mode="nearest")
    assert r.flops == 4 * 16 * 16 and r.params == 0  # scales are a setting, not a parameter
    cm, ops = costs([helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=1),
                     helper.make_node("Reshape", ["y", "shape"], ["z"], name="flat")],
                    [tensor("a", (1, 4, 2, 2)), tensor("b", (1, 6, 2, 2))], [tensor("z", None)],
                    [init("shape", None, value=[1, -1], dtype=np.int64)])
    assert ops["cat"].read_bytes == 4 * 40 and ops["cat"].write_bytes == 4 * 40 and ops["cat"].flops == 0
    assert ops["flat"].bytes == 0


def test_fp16_bytes_and_dtype():
    c = single("Relu", ["x"], [("x", (1, 8))], dtype=TensorProto.FLOAT16)
    assert c.dtype == "float16" and c.read_bytes == 16 and c.write_bytes == 16


def test_shared_initializer_counted_once():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="m1"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="m2")]
    cm, ops = costs(nodes, [tensor("x", (2, 8))], [tensor("y", None)], [init("w", (8, 8))])
    assert ops["m1"].params == ops["m2"].params == 64 and cm.params == 64


def test_unknown_op_is_listed_not_zero():
    node = helper.make_node("FancyOp", ["x"], ["y"], name="fancy", domain="com.example")
    m = model([node], [tensor("x", (1, 4))], [tensor("y", None)],
              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    cm = morphonnx.cost_model(morphonnx.load(m))
    assert [c.name for c in cm.not_costed] == ["fancy"] and "com.example.FancyOp" in cm.not_costed[0].note


def test_every_rule_is_a_callable_in_one_table():
    assert {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization", "MaxPool",
            "GlobalAveragePool", "Relu", "Add", "Softmax", "Resize", "Concat", "Reshape"} <= set(RULES)


def test_duplicates_merged_by_the_exporter_count_once_each():
    """The TorchScript exporter keeps one of several equal initializers and routes the others
    through Identity: each is a parameter of the framework, and counts."""
    from onnx import numpy_helper
    zero = init("a.bias", None, value=np.zeros(4))
    nodes = [helper.make_node("Conv", ["x", "a.weight", "a.bias"], ["a"], name="a", kernel_shape=[1, 1]),
             helper.make_node("Identity", ["a.bias"], ["b.bias"]),
             helper.make_node("Conv", ["a", "b.weight", "b.bias"], ["y"], name="b", kernel_shape=[1, 1])]
    g = morphonnx.load(model(nodes, [tensor("x", [1, 4, 2, 2])], [tensor("y", None)],
                             [init("a.weight", (4, 4, 1, 1)), zero, init("b.weight", (4, 4, 1, 1), seed=1)]))
    cm = morphonnx.cost_model(g)
    assert cm.params == 2 * (16 + 4)
    assert {w for c in cm.ops for w in c.weights} == {"a.weight", "a.bias", "b.weight", "b.bias"}
    assert np.array_equal(g.array(g.nodes["b"].input[2]), numpy_helper.to_array(zero))


def test_computed_weight_counts_its_parameters_not_its_helper_constants():
    """w' = w * gain * ones (a Constant node helper): w and gain count, the helper does not."""
    ones = helper.make_tensor("ones", TensorProto.FLOAT, [4, 1, 1, 1], [1.0] * 4)
    nodes = [helper.make_node("Constant", [], ["one"], value=ones),
             helper.make_node("Mul", ["w", "gain"], ["wg"]),
             helper.make_node("Mul", ["wg", "one"], ["ws"]),
             helper.make_node("Conv", ["x", "ws"], ["y"], name="conv", kernel_shape=[1, 1])]
    g = morphonnx.load(model(nodes, [tensor("x", [1, 3, 2, 2])], [tensor("y", None)],
                             [init("w", (4, 3, 1, 1)), init("gain", (4, 1, 1, 1), seed=1)]))
    cm = morphonnx.cost_model(g)
    assert cm.params == 12 + 4 and cm.ops[0].weights == ("w", "gain")


def test_tied_relayouts_of_one_parameter_count_once():
    """One weight read twice through Transposes (tied weights): one parameter."""
    nodes = [helper.make_node("Transpose", ["w"], ["t1"], perm=[1, 0]),
             helper.make_node("Transpose", ["w"], ["t2"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "t1"], ["h"], name="m1"),
             helper.make_node("MatMul", ["h", "t2"], ["y"], name="m2")]
    g = morphonnx.load(model(nodes, [tensor("x", [1, 4])], [tensor("y", None)], [init("w", (4, 4))]))
    assert [n.op_type for n in g.model.graph.node] == ["MatMul", "MatMul"]
    assert morphonnx.cost_model(g).params == 16
