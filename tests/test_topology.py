"""Topology morphing on hand-built graphs: dead residual branches, dead towers, zero branches,
Splits that cannot lose a whole output, and masks that would cut the network."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import morphonnx
from morphonnx import BadInput
from morphonnx.groups import find_groups
from morphonnx.masks import all_alive, legalize, masks_from_sources
from morphonnx.rewrite import prune
from morphonnx.verify import check

from conftest import Net


def head(n: Net, x: str, c: int) -> str:
    p = n.node("Flatten", [n.node("GlobalAveragePool", [x])], axis=1)
    return n.node("Gemm", [p, n.param((3, c), "fc.weight")], "fc", transB=1)


def pruned(m, masks: dict):
    g = morphonnx.load(m)
    gr = find_groups(g)
    result = prune(gr, legalize(gr, masks_from_sources(gr, masks)))
    c = check(g, result.oracle, result.model)
    assert c.ok, c
    return g, result


def residual_net(bn: bool = True):
    n = Net()
    stem = n.cbr("x", 4, 8, name="stem")
    if bn:
        r = n.cbr(n.cbr(stem, 8, 6, name="a"), 6, 8, name="b")
    else:
        r = n.conv(n.node("Relu", [n.conv(stem, 8, 6, name="a.conv", bias=False)]), 6, 8, name="b.conv", bias=False)
    y = n.node("Relu", [n.node("Add", [stem, r], "add")])
    return n.model(head(n, y, 8))


def test_dead_residual_branch_keeps_the_skip_path():
    g, r = pruned(residual_net(), {"a.conv": [0] * 6})
    assert {"a.conv", "a.bn", "b.conv", "b.bn"} <= set(r.removed_nodes) and "stem.conv" not in r.removed_nodes
    assert set(r.removed_layers()) >= {"a.conv", "b.conv"}
    assert r.morphed == ["the branch ending in b.conv.weight is constant: Add 'add' adds its value"]
    assert len(r.model.graph.node) < len(g.nodes)


def test_zero_branch_removes_the_add():
    """Without BN or biases a dead branch computes exact zeros: the Add itself goes."""
    g, r = pruned(residual_net(bn=False), {"a.conv": [0] * 6})
    names = {n.name for n in r.model.graph.node}
    assert "add" not in names and "b.conv" not in names
    assert r.morphed == ["the branch ending in b.conv.weight is constant zero: Add 'add' removed"]


def test_dead_tower_leaves_the_concat():
    n = Net()
    t1 = n.cbr("x", 4, 3, name="t1")
    t2 = n.cbr(n.cbr("x", 4, 2, name="t2r"), 2, 5, name="t2")
    cat = n.node("Concat", [t1, t2], "cat", axis=1)
    m = n.model(head(n, n.cbr(cat, 8, 4, name="after"), 4))
    g, r = pruned(m, {"t2.conv": [0] * 5})
    assert {"t2r.conv", "t2.conv"} <= set(r.removed_nodes) and r.dropped == [("cat", "t2.relu")]
    cat_node = next(x for x in r.model.graph.node if x.name == "cat")
    assert list(cat_node.input) == ["t1.relu"]


def test_split_that_would_lose_a_whole_output_keeps_one_channel():
    n = Net()
    x = n.cbr("x", 4, 8, name="pre")
    a, b = n.node("Split", [x, n.const([3, 5], dtype=np.int64)], "split", outputs=2, axis=1)
    y = n.node("Concat", [n.cbr(a, 3, 4, name="pa"), n.cbr(b, 5, 4, name="pb")], "cat", axis=1)
    m = n.model(head(n, y, 8))
    g, r = pruned(m, {"pre.conv": [0, 0, 0, 1, 1, 1, 1, 1]})
    assert any("cannot do without 'split_0'" in note for note in r.notes)


def test_masks_that_cut_the_network_are_refused():
    g = morphonnx.load(residual_net())
    gr = find_groups(g)
    with pytest.raises(BadInput, match="cut every path from the graph inputs to output 'fc'"):
        prune(gr, masks_from_sources(gr, {"stem.conv": [0] * 8}))


def test_structure_marks_vanished_layers(tmp_path):
    from morphonnx.structure import structure
    g = morphonnx.load(residual_net())
    gr = find_groups(g)
    masks = legalize(gr, masks_from_sources(gr, {"a.conv": [0] * 6, "stem.conv": [1, 1, 0, 1, 1, 1, 1, 1]}))
    doc = structure(prune(gr, masks))
    assert doc["structure"]["a.conv"] == 0 and doc["structure"]["b.conv"] == 0 and doc["structure"]["stem.conv"] == 7
    rows = {r["node"]: r for r in doc["sources"]}
    assert rows["b.conv"]["vanished"] and rows["stem.conv"]["kept"] == [0, 1, 3, 4, 5, 6, 7]
    assert doc["masks"]["a.conv.weight"] == [0] * 6
    assert len(doc["silenced"]["stem.conv.weight"]) == 8  # its BN's shifts, for a BN-folded export


def test_all_alive_morphs_nothing():
    g = morphonnx.load(residual_net())
    gr = find_groups(g)
    r = prune(gr, all_alive(gr))
    assert r.removed_nodes == [] and r.morphed == []


# ---- the zoo ----------------------------------------------------------------------------------------

from conftest import export_zoo  # noqa: E402
from morphonnx.masks import apply_silenced, masks_from_threshold  # noqa: E402
from morphonnx.structure import structure  # noqa: E402


def zoo_groups(zoo, name, kind):
    out, manifest = zoo
    g = morphonnx.load(out / manifest[name]["files"][kind])
    return g, find_groups(g)


def kill(gr, tensors) -> "object":
    """Masks that remove every group touching these tensors."""
    masks = all_alive(gr)
    for g in gr.groups:
        if any(t in g.members for t in tensors):
            masks.keep[g.id][:] = False
    return legalize(gr, masks)


def by_weight(gr) -> dict[str, str]:
    return {s.weight: s.node for s in gr.plan.sources if s.weight}


@pytest.mark.zoo
@pytest.mark.parametrize("kind", ["folded", "bn"])
def test_resnet50_dead_bottlenecks_keep_their_skip_paths(zoo, kind):
    g, gr = zoo_groups(zoo, "resnet50", kind)
    w = by_weight(gr)
    blocks = sorted({k.rsplit(".", 2)[0] for k in w if k.startswith("layer") and k.endswith("conv1.weight")})
    assert len(blocks) == 16
    conv1_out = [g.nodes[w[f"{b}.conv1.weight"]].output[0] for b in blocks]
    r = prune(gr, kill(gr, conv1_out))
    assert check(g, r.oracle, r.model).ok
    gone = set(r.removed_nodes)
    for b in blocks:
        assert all(w[f"{b}.conv{i}.weight"] in gone for i in (1, 2, 3)), b
    assert not any(w[k] in gone for k in w if "downsample" in k)  # the skip paths stay
    convs = lambda nodes: sum(1 for n in nodes if n.op_type == "Conv")
    assert convs(r.model.graph.node) == convs(g.model.graph.node) - 48
    assert len(r.model.graph.node) < len(g.model.graph.node) - 48


@pytest.mark.zoo
@pytest.mark.parametrize("kind", ["folded", "bn"])
@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_one_dead_tower_per_inception_module(zoo, name, kind):
    g, gr = zoo_groups(zoo, name, kind)
    modules = [n for n in g.nodes.values() if n.op_type == "Concat" and len(n.input) >= 3
               and n.output[0] in gr.plan.spaces]
    assert len(modules) >= 9
    towers = [(n.name, n.input[1]) for n in modules]
    r = prune(gr, kill(gr, [t for _, t in towers]))
    assert check(g, r.oracle, r.model).ok
    assert set(towers) <= set(r.dropped)
    assert len(r.removed_layers()) >= len(towers)


@pytest.mark.zoo
@pytest.mark.parametrize("kind", ["folded", "bn"])
def test_densenet_layers_leave_their_concats(zoo, kind):
    g, gr = zoo_groups(zoo, "densenet121", kind)
    w = by_weight(gr)
    layers = [f"features.denseblock{b}.denselayer2" for b in (1, 2, 3, 4)]
    growth = [g.nodes[w[f"{x}.conv2.weight"]].output[0] for x in layers]
    r = prune(gr, kill(gr, growth))
    assert check(g, r.oracle, r.model).ok
    gone = set(r.removed_nodes)
    assert all(w[f"{x}.conv{i}.weight"] in gone for x in layers for i in (1, 2))
    assert {t for _, t in r.dropped} >= set(growth)


BN_MODELS = [n for n in export_zoo.TORCH_MODELS
             if n not in ("alexnet", "squeezenet1_1", "convnext_tiny", "vit_b_16", "swin_t")]


@pytest.mark.zoo
@pytest.mark.parametrize("name", BN_MODELS)
def test_threshold_with_30_percent_below_equals_the_oracle(zoo, name):
    """MorphNet's real case: channels under the threshold output their (non-zero) BN shift."""
    g, gr = zoo_groups(zoo, name, "bn")
    scales = np.concatenate([np.abs(g.array(s.weight)) for s in gr.plan.sources if s.kind == "bn"])
    threshold = float(np.quantile(scales, 0.3))
    r = prune(gr, legalize(gr, masks_from_threshold(gr, threshold)))
    c = check(g, r.oracle, r.model)
    assert c.ok, c
    assert r.folds  # the shifts were folded somewhere


def test_models_without_bn_are_the_ones_left_out(zoo):
    out, manifest = zoo
    for name in export_zoo.TORCH_MODELS:
        has_bn = any(n.op_type == "BatchNormalization" for n in onnx.load(
            str(out / manifest[name]["files"]["bn"]), load_external_data=False).graph.node)
        assert has_bn == (name in BN_MODELS), name


@pytest.mark.zoo
def test_masks_from_the_bn_kept_export_apply_to_the_folded_one(zoo):
    gb, grb = zoo_groups(zoo, "resnet50", "bn")
    scales = np.concatenate([np.abs(gb.array(s.weight)) for s in grb.plan.sources if s.kind == "bn"])
    rb = prune(grb, legalize(grb, masks_from_threshold(grb, float(np.quantile(scales, 0.3)))))
    doc = structure(rb)
    gf, grf = zoo_groups(zoo, "resnet50", "folded")
    masks = masks_from_sources(grf, doc["masks"])
    apply_silenced(grf, masks, doc["silenced"])
    rf = prune(grf, legalize(grf, masks))
    c = check(gf, rb.oracle, rf.model)  # the folded prune computes the BN-kept oracle
    assert c.ok, c


@pytest.mark.zoo
@pytest.mark.parametrize("name, kind", [
    (n, k) for n in export_zoo.TORCH_MODELS for k in ("folded", "bn")] + [(n, "onnx") for n in export_zoo.KERAS_MODELS])
def test_random_dead_groups_pass_or_are_refused(zoo, name, kind):
    g, gr = zoo_groups(zoo, name, kind)
    free = [x for x in gr.groups if not x.pinned]
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        masks = all_alive(gr)
        for x in free:
            keep = rng.random(x.size) < rng.uniform(0.1, 0.9)
            keep[rng.integers(x.size)] = True
            masks.keep[x.id] = keep
        for x in rng.choice(free, size=max(1, len(free) // 5), replace=False):
            masks.keep[x.id][:] = False
        try:
            r = prune(gr, legalize(gr, masks))
        except BadInput as e:
            assert "\n" not in str(e) and "cut every path" in str(e)
            continue
        c = check(g, r.oracle, r.model)
        assert c.ok, f"seed {seed}: {c}"
