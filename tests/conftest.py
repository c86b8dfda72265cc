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
