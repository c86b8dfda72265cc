"""The rewrite: folds of what removed channels leave behind, names, external data, and the
contract on every model of the zoo with random masks (3 seeds)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import morphonnx
from morphonnx.groups import find_groups
from morphonnx.masks import all_alive, masks_from_sources
from morphonnx.rewrite import prune
from morphonnx.output import Outputs
from morphonnx.verify import check

from conftest import Net, export_zoo, random_masks


def bn_kept_net() -> onnx.ModelProto:
    """Conv-BN-ReLU (BN shifts non-zero) into a 1x1 conv and a 3x3 conv, then a classifier."""
    n = Net(size=6)
    x = n.cbr("x", 4, 8, name="a")
    y = n.node("Add", [n.cbr(x, 8, 8, k=1, name="p1"), n.cbr(x, 8, 8, k=3, name="p3")], "sum")
    p = n.node("Flatten", [n.node("GlobalAveragePool", [y])], axis=1)
    return n.model(n.node("Gemm", [p, n.param((3, 8), "fc.weight")], "fc", transB=1))


def test_removed_bn_channels_fold_into_bias_and_bias_map():
    g = morphonnx.load(bn_kept_net())
    gr = find_groups(g)
    masks = masks_from_sources(gr, {"a.bn": [1, 0, 1, 1, 0, 1, 1, 1]})
    result = prune(gr, masks)
    assert result.folds == {"p1.conv": "bias", "p3.conv": "bias map"}
    c = check(g, result.oracle, result.model)
    assert c.ok and c.relative < 1e-5
    names = {n.name for n in result.model.graph.node}
    assert {"a.conv", "p1.conv", "p3.conv", "p3.conv.fold"} <= names
    w = {t.name: t for t in result.model.graph.initializer}
    assert list(w["a.conv.weight"].dims) == [6, 4, 3, 3] and list(w["p1.conv.weight"].dims) == [8, 6, 1, 1]


def test_silenced_value_that_depends_on_the_input_is_kept():
    """A removed channel multiplied by an input-dependent scalar cannot be folded: it stays."""
    n = Net(size=6)
    x = n.cbr("x", 4, 8, name="a")
    s = n.node("ReduceMean", ["x"], "s", keepdims=1)  # [1,1,1,1]: broadcast, not tied
    y = n.cbr(n.node("Mul", [x, s], "scaled"), 8, 4, k=1, name="b")
    m = n.model(n.node("Flatten", [n.node("GlobalAveragePool", [y])], axis=1))
    g = morphonnx.load(m)
    gr = find_groups(g)
    result = prune(gr, masks_from_sources(gr, {"a.bn": [1, 0, 1, 1, 0, 1, 1, 1]}))
    assert sum(result.revived.values()) == 2 and "depends on the input" in result.notes[0]
    assert check(g, result.oracle, result.model).ok


def test_external_data_is_kept(tmp_path):
    m = bn_kept_net()
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    g = morphonnx.load(tmp_path / "m.onnx")
    gr = find_groups(g)
    result = prune(gr, random_masks(gr, 0))
    with Outputs([tmp_path / "m.onnx", *g.external_files()]) as out:
        out.model(tmp_path / "out.onnx", result.model, external=bool(g.external_files()))
        out.commit()
    assert (tmp_path / "out.onnx.data").exists()
    assert check(g, result.oracle, tmp_path / "out.onnx").ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data", "out.onnx", "out.onnx.data"]


def test_all_alive_changes_nothing():
    g = morphonnx.load(bn_kept_net())
    gr = find_groups(g)
    result = prune(gr, all_alive(gr))
    assert result.folds == {} and check(g, result.oracle, result.model).relative < 1e-6


ZOO_FILES = [(name, kind) for name in export_zoo.TORCH_MODELS for kind in ("folded", "bn")] + \
    [(name, "onnx") for name in export_zoo.KERAS_MODELS]


@pytest.mark.zoo
@pytest.mark.parametrize("name, kind", ZOO_FILES)
def test_random_masks_on_the_zoo(zoo, name, kind):
    out, manifest = zoo
    g = morphonnx.load(out / manifest[name]["files"][kind])
    gr = find_groups(g)
    for seed in (0, 1, 2):
        result = prune(gr, random_masks(gr, seed))
        c = check(g, result.oracle, result.model)
        assert c.ok, f"seed {seed}: relative error {c.relative:.2e}, checker {c.checker}"
        assert morphonnx.cost_model(morphonnx.load(result.model)).total("macs") < \
            morphonnx.cost_model(g).total("macs")


def test_pad_with_a_non_zero_value_is_folded():
    """Found by scripts/fuzz.py: zero-silenced channels padded with 0.5 are 0.5 at the borders,
    not zero: the 3x3 conv after the Pad gets a bias map."""
    n = Net(size=5)
    x = n.conv("x", 4, 8, k=1, name="a")  # no BN: silenced by zero rows
    p = n.node("Pad", [x, n.const([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), n.const(0.5)], "pad")
    m = n.model(n.conv(p, 8, 3, name="b"))
    g = morphonnx.load(m)
    gr = find_groups(g)
    result = prune(gr, masks_from_sources(gr, {"a": [1, 0, 1, 1, 0, 1, 1, 1]}))
    assert result.folds == {"b": "bias map"}
    assert check(g, result.oracle, result.model).ok
