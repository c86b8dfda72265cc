"""The one writer: staged outputs committed together, targets of every kind, models with
external data that reopen from their path in a fresh onnxruntime session."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from morphonnx.errors import BadInput
from morphonnx.output import Outputs, write_model

from conftest import SMALL_CNN, Net


def reduce_net() -> onnx.ModelProto:
    """A conv with a big weight, then a ReduceMean whose axes are a (tiny, int64) initializer:
    runtimes read the axes while building the graph, so they must stay inside the model file."""
    n = Net(channels=8, size=6)
    y = n.conv("x", 8, 16, k=3, name="c")
    axes = n.const([2, 3], "axes", dtype=np.int64)
    m = n.model(n.node("ReduceMean", [y, axes], "mean", keepdims=0), opset=18)
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 16]))
    return m


def reopen(path) -> list[np.ndarray]:
    """Full checker and a fresh onnxruntime session on the path; outputs on a fixed input."""
    code = ("import sys, numpy as np, onnx, onnxruntime as ort; p = sys.argv[1]; "
            "onnx.checker.check_model(p, full_check=True); s = ort.InferenceSession(p); "
            "x = np.random.default_rng(0).standard_normal(s.get_inputs()[0].shape).astype(np.float32); "
            "np.save(sys.stdout.buffer, s.run(None, {s.get_inputs()[0].name: x})[0])")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, check=True)
    import io
    return np.load(io.BytesIO(out.stdout))


def test_external_data_model_reopens_from_its_path(tmp_path):
    m = reduce_net()
    with Outputs() as out:
        staged = out.model(tmp_path / "m.onnx", m, external=True)
        assert staged.exists() and not (tmp_path / "m.onnx").exists()  # nothing in place before commit
        out.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    bare = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    where = {t.name: t.data_location for t in bare.graph.initializer}
    assert where["axes"] == TensorProto.DEFAULT and where["c.weight"] == TensorProto.EXTERNAL
    loc = {e.key: e.value for e in bare.graph.initializer[0].external_data} or \
        {e.key: e.value for t in bare.graph.initializer for e in t.external_data}
    assert loc["location"] == "m.onnx.data"  # relative, named after the model
    expected = ort.InferenceSession(m.SerializeToString()).run(
        None, {"x": np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32)})[0]
    np.testing.assert_allclose(reopen(tmp_path / "m.onnx"), expected, rtol=1e-6)
    assert m.graph.initializer[0].HasField("raw_data")  # the in-memory model is left as it was


def test_overwrite_model_and_data_from_a_folder_that_has_one_too(tmp_path, monkeypatch):
    """Writing again, or while NAME.onnx.data exists in the current folder, works."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.onnx.data").write_bytes(b"junk")
    (tmp_path / "sub").mkdir()
    for _ in range(2):
        with Outputs() as out:
            out.model("sub/m.onnx", reduce_net(), external=True)
            out.commit()
        reopen(tmp_path / "sub" / "m.onnx")
    with Outputs() as out:  # inline now: the old data file is the old model's, and goes
        out.model("sub/m.onnx", reduce_net(), external=False)
        out.commit()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["m.onnx"]
    reopen(tmp_path / "sub" / "m.onnx")


def test_a_failed_command_leaves_previous_outputs_intact(tmp_path):
    (tmp_path / "a.json").write_text("old")
    with pytest.raises(RuntimeError):
        with Outputs() as out:
            out.text(tmp_path / "a.json", "new")
            out.model(tmp_path / "m.onnx", reduce_net(), external=True)
            raise RuntimeError("a later step fails")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old"


def test_devices_fifos_symlinks_and_stdout(tmp_path, capsys):
    with Outputs() as out:
        out.text("/dev/null", "x")
        out.text("-", '{"a": 1}')
        (tmp_path / "real.json").write_text("old")
        os.symlink(tmp_path / "real.json", tmp_path / "link.json")
        out.text(tmp_path / "link.json", "new")
        out.commit()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert json.loads(capsys.readouterr().out) == {"a": 1}
    assert os.path.islink(tmp_path / "link.json") and (tmp_path / "real.json").read_text() == "new"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    with Outputs() as out:
        out.text(fifo, "through")
        out.commit()
    assert reader.communicate(timeout=10)[0] == b"through" and stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize("make, message", [
    (lambda p: (p / "d").mkdir() or p / "d", "is a directory"),
    (lambda p: p / "missing" / "x.json", "does not exist"),
    (lambda p: (p / "f").write_text("") or p / "f" / "x.json", "is not a folder"),
])
def test_bad_targets_are_refused_before_any_work(tmp_path, make, message):
    target = make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(BadInput, match=message):
        Outputs().claim(target)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_inputs_are_never_outputs(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    (tmp_path / "other.onnx.data").write_bytes(b"x")
    with pytest.raises(BadInput, match="is an input"):
        Outputs([model]).claim(model)
    os.symlink(model, tmp_path / "alias.onnx")
    with pytest.raises(BadInput, match="is an input"):
        Outputs([model]).claim(tmp_path / "alias.onnx")
    out = Outputs([model])
    out.claim(tmp_path / "other.onnx", companions=["other.onnx.data"])
    with pytest.raises(BadInput, match="is an input"):
        out.add_inputs([tmp_path / "other.onnx.data"])  # the external data of the input model


def test_files_get_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        with Outputs() as out:
            out.text(tmp_path / "new.json", "{}")
            out.model(tmp_path / "m.onnx", reduce_net(), external=True)
            out.commit()
    finally:
        os.umask(old)
    for name in ("new.json", "m.onnx", "m.onnx.data"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name
    os.chmod(tmp_path / "new.json", 0o600)
    with Outputs() as out:
        out.text(tmp_path / "new.json", "[]")
        out.commit()
    assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o600


def test_write_model_keeps_typed_tensors_and_subgraph_initializers(tmp_path):
    big = helper.make_tensor("w", TensorProto.FLOAT, [512], np.arange(512, dtype=np.float32).tolist())
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [512])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512])], [big])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    write_model(m, tmp_path / "t.onnx", "t.onnx.data")
    back = onnx.load(str(tmp_path / "t.onnx"))
    np.testing.assert_array_equal(numpy_helper.to_array(back.graph.initializer[0]), np.arange(512))


def test_cli_json_to_stdout_and_dev_null(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "morphonnx", *a], capture_output=True, text=True)
    r = run("analyze", str(SMALL_CNN), "--json", "-")
    assert r.returncode == 0 and json.loads(r.stdout)["totals"]
    r = run("analyze", str(SMALL_CNN), "--json", "/dev/null")
    assert r.returncode == 0 and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    r = run("analyze", str(SMALL_CNN), "--json", str(SMALL_CNN))
    assert r.returncode == 2 and "is an input" in r.stderr and len(r.stderr.strip().splitlines()) == 1
