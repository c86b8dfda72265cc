"""The expand phase: the multiplier search, budgets, and grown ONNX models."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import morphonnx
from morphonnx import BadInput
from morphonnx.cli import main
from morphonnx.expand import alive_widths, parse_budget, search
from morphonnx.masks import all_alive
from morphonnx.penalty import compile_program
from morphonnx.grow import grow
from morphonnx.oracle import random_inputs, session

from conftest import SMALL_CNN, export_zoo


def test_budgets():
    assert parse_budget("original", 10.0) == 10.0
    assert parse_budget("80%", 10.0) == pytest.approx(8.0)
    assert parse_budget("2.5e9", 10.0) == 2.5e9
    for bad in ("lots", "-5", "0%"):
        with pytest.raises(BadInput, match="--budget"):
            parse_budget(bad, 10.0)


def test_expand_cli_writes_a_model_of_the_predicted_macs(tmp_path, capsys):
    out = tmp_path / "expanded.onnx"
    masks = tmp_path / "m.json"
    masks.write_text('{"masks": {"block1.a.conv": [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]}}')
    assert main(["expand", str(SMALL_CNN), "--masks", str(masks), "--budget", "original", "--round-to", "2",
                 "-o", str(out), "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "width multiplier" in text
    import json
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["cost"] <= doc["budget"] and all(r["expanded"] % 2 == 0 or r["expanded"] == r["original"]
                                                  for r in doc["sources"])
    g = morphonnx.load(out)
    assert morphonnx.cost_model(g).total("macs") == doc["cost"]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert main(["expand", str(SMALL_CNN), "--threshold", "0", "--budget", "lots"]) == 2


@pytest.mark.zoo
@pytest.mark.parametrize("name", export_zoo.TORCH_MODELS)
def test_expand_to_the_original_budget(zoo, name):
    out, manifest = zoo
    g = morphonnx.load(out / manifest[name]["files"]["folded"])
    gr = morphonnx.find_groups(g)
    program = compile_program(gr, "macs")
    base = alive_widths(gr, all_alive(gr))
    original = program.cost(program.full_alive())
    e = search(program, gr, base, original)
    assert (e.widths == base).all() and e.multiplier == pytest.approx(1.0, abs=1e-2)
    # a structure at about half the MACs grows back to within 2% under the original, never over
    rng = np.random.default_rng(0)
    free = np.array([x.pinned is None for x in gr.groups])
    half = np.where(free, np.maximum(1, np.round(base * rng.uniform(0.5, 0.9, len(base)))), base).astype(np.int64)
    e = search(program, gr, half, original)
    assert original * 0.98 <= e.cost <= original, (e.multiplier, e.cost / original)


@pytest.mark.zoo
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_grown_models_run_and_cost_what_was_predicted(zoo, name):
    out, manifest = zoo
    g = morphonnx.load(out / manifest[name]["files"]["folded"])
    gr = morphonnx.find_groups(g)
    program = compile_program(gr, "macs")
    e = search(program, gr, alive_widths(gr, all_alive(gr)), 1.3 * program.cost(program.full_alive()), 8)
    model = grow(gr, e.widths)
    onnx.checker.check_model(model, full_check=True)
    y = session(model).run(None, random_inputs(g, 0))[0]
    assert y.shape == (1, 1000) and np.isfinite(y).all()
    assert morphonnx.cost_model(morphonnx.load(model)).total("macs") == e.cost


@pytest.mark.parametrize("factor", [0.5, 1.5])
def test_grown_layer_norm_streams_stay_plain_norms(factor):
    """Growing (or narrowing) a stream gives a new model: its LayerNorms normalize over the new width."""
    from test_rewrite import stream_net
    g = morphonnx.load(stream_net(True))
    gr = morphonnx.find_groups(g)
    widths = np.array([grp.size if grp.pinned else max(1, int(grp.size * factor)) for grp in gr.groups])
    model = grow(gr, widths)
    onnx.checker.check_model(model, full_check=True)
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    sizes = {t.name: list(t.dims) for t in model.graph.initializer}
    assert len(norms) == 3 and sizes["ln.g"] == [int(16 * factor)]
    y = session(model).run(None, random_inputs(g, 0))[0]
    assert y.shape == (1, 4, 5) and np.isfinite(y).all()
