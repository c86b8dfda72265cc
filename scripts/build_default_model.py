#!/usr/bin/env python
"""Build the bundled default model, morphonnx/data/small_cnn.onnx, with onnx.helper.

A small CNN for 32x32 RGB images with the constructs morphonnx must handle: Conv-BN-ReLU,
a residual add, a depthwise conv, an Inception-style concat of two towers, an SE block
(GlobalAveragePool → Conv → ReLU → Conv → Sigmoid → Mul), and Flatten → Gemm. BN is kept
(the training form) and every parameter is random with a fixed seed, so the file is
reproducible: `python scripts/build_default_model.py` rewrites the same bytes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent.parent / "morphonnx" / "data" / "small_cnn.onnx"


class Builder:
    """Collects nodes and initializers; each method adds one layer and returns its output name."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def param(self, name: str, shape: tuple[int, ...], scale: float = 0.1, offset: float = 0.0) -> str:
        value = (self.rng.standard_normal(shape) * scale + offset).astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv_bn_relu(self, x: str, cin: int, cout: int, name: str, k: int = 3, stride: int = 1,
                     group: int = 1, relu: bool = True) -> str:
        w = self.param(f"{name}.conv.weight", (cout, cin // group, k, k), scale=(2.0 / (cin // group * k * k)) ** 0.5)
        y = self.node("Conv", [x, w], f"{name}.conv", kernel_shape=[k, k], pads=[k // 2] * 4,
                      strides=[stride, stride], group=group)
        bn = [self.param(f"{name}.bn.weight", (cout,), 0.2, 1.0), self.param(f"{name}.bn.bias", (cout,), 0.1),
              self.param(f"{name}.bn.running_mean", (cout,), 0.1), self.param(f"{name}.bn.running_var", (cout,), 0.1, 1.0)]
        self.inits[-1] = numpy_helper.from_array(np.abs(numpy_helper.to_array(self.inits[-1])), bn[3])
        y = self.node("BatchNormalization", [y] + bn, f"{name}.bn", epsilon=1e-5)
        return self.node("Relu", [y], f"{name}.relu") if relu else y


def build() -> onnx.ModelProto:
    """The default model (see the module docstring)."""
    b = Builder()
    x = b.conv_bn_relu("input", 3, 16, "stem")
    r = b.conv_bn_relu(x, 16, 16, "block1.a")
    r = b.conv_bn_relu(r, 16, 16, "block1.b", relu=False)
    x = b.node("Relu", [b.node("Add", [x, r], "block1.add")], "block1.relu")
    x = b.conv_bn_relu(x, 16, 32, "down", stride=2)
    x = b.conv_bn_relu(x, 32, 32, "dw", group=32)
    t1 = b.conv_bn_relu(x, 32, 16, "tower1", k=1)
    t2 = b.conv_bn_relu(b.conv_bn_relu(x, 32, 8, "tower2.reduce", k=1), 8, 16, "tower2.conv")
    x = b.node("Concat", [t1, t2], "towers.concat", axis=1)
    s = b.node("GlobalAveragePool", [x], "se.pool")
    s = b.node("Relu", [b.node("Conv", [s, b.param("se.fc1.weight", (8, 32, 1, 1)), b.param("se.fc1.bias", (8,))],
                                "se.fc1", kernel_shape=[1, 1])], "se.relu")
    s = b.node("Sigmoid", [b.node("Conv", [s, b.param("se.fc2.weight", (32, 8, 1, 1)), b.param("se.fc2.bias", (32,))],
                                   "se.fc2", kernel_shape=[1, 1])], "se.gate")
    x = b.node("Mul", [x, s], "se.scale")
    x = b.node("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Flatten", [x], "flatten", axis=1)
    b.node("Gemm", [x, b.param("fc.weight", (10, 32 * 8 * 8), 0.02), b.param("fc.bias", (10,))], "logits", transB=1)
    graph = helper.make_graph(
        b.nodes, "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="morphonnx")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(), str(OUT))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
