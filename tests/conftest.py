"""Shared fixtures: hand-built ONNX graphs and the exported model zoo (built on first use)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
SMALL_CNN = ROOT / "morphonnx" / "data" / "small_cnn.onnx"  # hand-built: every construct, fixed names


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


export_zoo = _load_script("export_zoo")


def tensor(name: str, shape, dtype=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A graph input/output declaration."""
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name: str, shape, seed: int = 0, dtype=np.float32, value=None) -> onnx.TensorProto:
    """A random (or given) initializer."""
    if value is None:
        value = np.random.default_rng(seed).standard_normal(shape)
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def model(nodes, inputs, outputs, inits=(), opset: int = 17, **kw) -> onnx.ModelProto:
    """A ModelProto from nodes and declarations (default opset 17, IR 8)."""
    kw.setdefault("opset_imports", [helper.make_opsetid("", opset)])
    m = helper.make_model(helper.make_graph(nodes, "test", inputs, outputs, initializer=list(inits)), **kw)
    m.ir_version = 8 if opset >= 13 else 6
    return m


@pytest.fixture(scope="session")
def zoo() -> tuple[Path, dict]:
    """The exported model zoo: (directory, manifest); exports what is missing on first use."""
    out = export_zoo.default_dir()
    return out, export_zoo.ensure(out)


class Net:
    """A tiny builder of hand-made CNNs: each method adds a node and returns its output name."""

    def __init__(self, channels: int = 4, size: int = 8, seed: int = 0, rank4: bool = True):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.input = tensor("x", [1, channels, size, size] if rank4 else [1, channels])
        self.n = 0

    def _name(self, op: str) -> str:
        self.n += 1
        return f"{op.lower()}{self.n}"

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        name = name or self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def param(self, shape, name: str | None = None, offset: float = 0.0) -> str:
        return self.const(self.rng.standard_normal(shape) * 0.5 + offset, name)

    def node(self, op: str, inputs, name: str | None = None, outputs: int = 1, **attrs):
        name = name or self._name(op)
        outs = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True,
             name: str | None = None, weight: str | None = None, **attrs) -> str:
        name = name or self._name("conv")
        w = weight or self.param((cout, cin // group, k, k), f"{name}.weight")
        ins = [x, w] + ([self.param((cout,), f"{name}.bias")] if bias else [])
        return self.node("Conv", ins, name, kernel_shape=[k, k], pads=[k // 2] * 4, group=group, **attrs)

    def bn(self, x: str, c: int, name: str | None = None) -> str:
        name = name or self._name("bn")
        ins = [x, self.param((c,), f"{name}.weight", 1.0), self.param((c,), f"{name}.bias", 0.5),
               self.param((c,), f"{name}.mean"), self.const(self.rng.uniform(0.5, 1.5, c), f"{name}.var")]
        return self.node("BatchNormalization", ins, name)

    def cbr(self, x: str, cin: int, cout: int, k: int = 3, **kw) -> str:
        """Conv → BN → ReLU, BN kept."""
        name = kw.pop("name", None) or self._name("block")
        return self.node("Relu", [self.bn(self.conv(x, cin, cout, k, bias=False, name=f"{name}.conv", **kw), cout,
                                          name=f"{name}.bn")], f"{name}.relu")

    def model(self, *outputs: str, opset: int = 17) -> onnx.ModelProto:
        return model(self.nodes, [self.input], [tensor(o, None) for o in outputs], self.inits, opset=opset)


def random_masks(groups, seed: int, legal: bool = True):
    """Masks keeping a random share (10% to 90%) of every unpinned group, at least one channel
    (legalized unless `legal` is False)."""
    from morphonnx.masks import legalize
    from morphonnx.masks import random_masks as draw
    masks = draw(groups, seed)
    return legalize(groups, masks) if legal else masks


def random_prune_ok(m, seeds=(0, 1, 2)):
    """Prune with random masks per seed and assert DESIGN.md's contract; return the groups."""
    import morphonnx
    from morphonnx.groups import find_groups
    from morphonnx.rewrite import prune
    from morphonnx.verify import check
    g = morphonnx.load(m)
    gr = find_groups(g)
    for seed in seeds:
        result = prune(gr, random_masks(gr, seed))
        c = check(g, result.oracle, result.model)
        assert c.ok, f"seed {seed}: relative error {c.relative:.2e}, checker {c.checker}"
    return gr
