"""The TensorFlow/Keras adapter: a few training steps with the penalty lower it, and the
learned masks prune the tf2onnx export within the contract; its costs are per sample and equal
`morphonnx analyze`'s figures of the exported and of the pruned file; its names are the Keras
layer names (tests/tf_flow.py, in its own process: tensorflow and torch cannot share one)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RESOURCES = ("flops", "macs", "size", "latency")


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("tf_flow")
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "tf_flow.py"), str(tmp)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "tf flow ok" in r.stdout, r.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text())


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * abs(b)


def test_keras_flow(flow):
    """The training flow of tf_flow.py ran with its asserts."""
    assert flow["input_batch"] == 1


def test_example_input_as_a_tensor_a_tuple_or_a_list_gives_one_sample_costs(flow):
    forms = flow["forms"]
    assert forms["tensor"] == forms["tuple"] == forms["list"] == forms["one sample"] == flow["analyzed"]["flops"]


def test_costs_equal_analyze_of_the_export_and_of_the_pruned_file(flow):
    for r in ("flops", "macs", "size"):
        assert close(flow["cost"][r], flow["analyzed"][r]), (r, flow["cost"][r], flow["analyzed"][r])
    assert flow["pruned_analyzed"]["flops"] < 0.8 * flow["analyzed"]["flops"]
    for r in ("flops", "macs", "size"):
        assert close(flow["pruned_cost"][r], flow["pruned_analyzed"][r]), r


@pytest.mark.parametrize("case", ["all alive", "pruned"])
def test_latency_equals_analyze(flow, case):
    cost, want = (flow["cost"], flow["analyzed"]) if case == "all alive" else (flow["pruned_cost"],
                                                                               flow["pruned_analyzed"])
    assert close(cost["latency"], want["latency"]), (cost["latency"], want["latency"])


def test_names_are_keras_layer_names(flow):
    """structure() and alive_masks() are keyed by the Keras layers that own the kernels; the
    ONNX node and weight of each stay available; the masks file keeps the tf2onnx names."""
    layers = flow["layers"]
    assert layers == ["block_conv1", "block_conv2", "fc", "head", "stem"]
    assert sorted(flow["structure"]) == flow["masks"] == sorted(flow["onnx_names"]) == layers
    assert flow["structure"] == {"stem": 8, "block_conv1": 12, "block_conv2": 8, "head": 16, "fc": 10}
    assert flow["pruned_structure"] == {"stem": 5, "block_conv1": 8, "block_conv2": 5, "head": 16, "fc": 10}
    assert sorted(w for _, w in flow["onnx_names"].values()) == flow["masks_file_keys"]
    for layer, (_, weight) in flow["onnx_names"].items():
        assert f"/{layer}_1/" in weight  # the layer's name scope in the tf2onnx weight name
