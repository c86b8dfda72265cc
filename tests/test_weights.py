"""Weights of models over memory: memory maps of external data, rewritten weights computed
only when written, and a prune of a model with external data that holds one weight at a time."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import morphonnx
from morphonnx.masks import masks_document
from morphonnx.output import write_model
from morphonnx.weights import Deferred, map_external

from conftest import init, model, random_masks, tensor


def mlp(width: int, hidden: int, layers: int = 2) -> onnx.ModelProto:
    """x → (MatMul up, Relu, MatMul down) × layers, weights N(0, 1/fan_in)."""
    nodes, inits, x = [], [], "x"
    for k in range(layers):
        rng = np.random.default_rng(k)
        up = rng.standard_normal((width, hidden)).astype(np.float32) / width ** 0.5
        down = rng.standard_normal((hidden, width)).astype(np.float32) / hidden ** 0.5
        inits += [numpy_helper.from_array(up, f"up{k}"), numpy_helper.from_array(down, f"down{k}")]
        nodes += [helper.make_node("MatMul", [x, f"up{k}"], [f"h{k}"], name=f"up{k}"),
                  helper.make_node("Relu", [f"h{k}"], [f"r{k}"], name=f"relu{k}"),
                  helper.make_node("MatMul", [f"r{k}", f"down{k}"], [f"y{k}"], name=f"down{k}")]
        x = f"y{k}"
    return model(nodes, [tensor("x", [1, width])], [tensor(x, [1, width])], inits)


def saved(m: onnx.ModelProto, path) -> str:
    write_model(m, path, os.path.basename(path) + ".data")
    return str(path)


def test_a_large_external_weight_is_a_read_only_map(tmp_path):
    path = saved(mlp(512, 1024, 1), tmp_path / "m.onnx")
    g = morphonnx.load(path)
    w = g.array("up0")
    assert not w.flags.writeable and "up0" not in g._arrays  # mapped at each call, never held
    expected = numpy_helper.to_array(onnx.load(path).graph.initializer[0])
    assert np.array_equal(w, expected)
    t = onnx.load(path, load_external_data=False).graph.initializer[0]
    assert map_external(t, tmp_path).shape == (512, 1024)


def test_a_deferred_weight_is_computed_when_loaded():
    calls = []
    base = np.arange(24, dtype=np.float32).reshape(4, 6)

    def source():
        calls.append(1)
        return base
    d = Deferred("w", source, base.shape, np.float32)
    d2 = d.then(lambda v: np.take(v, [0, 2], axis=0), (2, 6)).then(lambda v: v[:, ::2], (2, 3))
    assert d2.shape == (2, 3) and d2.nbytes == 24 and not calls
    assert np.array_equal(d2.load(), base[[0, 2]][:, ::2]) and len(calls) == 1


def test_pruning_a_model_with_external_data_streams_its_weights(tmp_path):
    """The pruned model's weights are in a data file of a temporary folder (the model proto
    holds none of them), the result checks against the oracle, saves to a file that reopens, and
    the folder goes with the result."""
    path = saved(mlp(256, 512), tmp_path / "m.onnx")
    g = morphonnx.load(path)
    groups = morphonnx.find_groups(g)
    result = morphonnx.prune(groups, random_masks(groups, 0), stream=True)
    folder = result.base_dir
    assert folder is not None and (folder / "weights.data").exists()
    assert result.model.ByteSize() < 20_000
    big = [t for t in result.model.graph.initializer if np.prod(t.dims) > 1000]
    assert big and all(t.data_location == TensorProto.EXTERNAL for t in big)
    assert result.check().ok
    out = tmp_path / "p.onnx"
    result.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    code = ("import sys, numpy as np, onnxruntime as ort; s = ort.InferenceSession(sys.argv[1]); "
            "print(s.run(None, {'x': np.ones((1, 256), np.float32)})[0].shape)")
    assert subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                          check=True).stdout.strip() == "(1, 256)"
    del result
    import gc
    gc.collect()
    assert not folder.exists()


def test_cli_prune_of_external_data_leaves_no_temporary_files(tmp_path):
    path = saved(mlp(128, 256), tmp_path / "m.onnx")
    groups = morphonnx.find_groups(morphonnx.load(path))
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps(masks_document(groups, random_masks(groups, 1))))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = subprocess.run([sys.executable, "-m", "morphonnx", "prune", path, "--masks", str(masks),
                        "-o", str(out_dir / "p.onnx")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out_dir)) == ["p.onnx", "p.onnx.data"]


# A fresh process from a small launcher: a child forked from pytest itself would report
# pytest's own peak (ru_maxrss is inherited across fork and exec).
LAUNCHER = """import os, sys
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ,
                     file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)
"""

SESSION = """
import sys
import numpy as np
import morphonnx.cli  # the same imports as the prune
import onnxruntime as ort
s = ort.InferenceSession(sys.argv[1])
s.run(None, {"x": np.ones((1, int(sys.argv[2])), np.float32)})
"""


def _peak(*argv) -> int:
    """Peak RSS in bytes of `argv` run as a fresh process."""
    p = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *map(str, argv)], capture_output=True, text=True)
    rc, peak = p.stdout.split()
    assert rc == "0", p.stderr
    return int(peak)


def test_prune_holds_one_weight_at_a_time(tmp_path):
    """Peak memory of `prune` of a 256 MiB model with external data: the rewrite and the write
    hold one weight and its result at a time (at most 1.5x the largest tensor over what `groups`
    of the file takes, and the rewrite's tables; it held every weight, sliced copies and the written proto: 5.6x the
    model), and with the check, at most an onnxruntime session of the model plus that."""
    width, hidden = 1024, 16384  # 4 weights of 64 MiB
    path = saved(mlp(width, hidden), tmp_path / "m.onnx")
    keep = {f"up{k}": [1] * (hidden // 2) + [0] * (hidden // 2) for k in range(2)}
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps({"masks": keep}))
    largest = width * hidden * 4
    cli = (sys.executable, "-m", "morphonnx")
    groups = _peak(*cli, "groups", path)
    rewrite = _peak(*cli, "prune", path, "--masks", masks, "--no-check", "--batch", "1", "-o", tmp_path / "a.onnx")
    session = _peak(sys.executable, "-c", SESSION, path, width)
    checked = _peak(*cli, "prune", path, "--masks", masks, "-o", tmp_path / "p.onnx")
    assert (tmp_path / "p.onnx.data").exists()
    print(f"MiB: groups {groups / 2**20:.0f}, prune --no-check {rewrite / 2**20:.0f}, onnxruntime session "
          f"{session / 2**20:.0f}, prune {checked / 2**20:.0f}, largest tensor {largest / 2**20:.0f}")
    assert rewrite <= groups + 1.5 * largest + 32 * 2**20  # + the rewrite's own tables
    assert checked <= session + 1.5 * largest
