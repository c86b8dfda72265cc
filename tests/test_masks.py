"""Masks: by node or weight name, from BN scales, combined per group, validated with clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

import morphonnx
from morphonnx import BadInput
from morphonnx.groups import find_groups
from morphonnx.masks import legalize, masks_from_sources, masks_from_threshold, read_masks_file

from conftest import Net


@pytest.fixture
def groups():
    """stem(8) + residual block(6 → 8), a classifier on top."""
    n = Net()
    stem = n.cbr("x", 4, 8, name="stem")
    r = n.cbr(n.cbr(stem, 8, 6, name="a"), 6, 8, name="b")
    y = n.node("Add", [stem, r], "add")
    p = n.node("Flatten", [n.node("GlobalAveragePool", [y])], axis=1)
    n.node("Gemm", [p, n.param((3, 8), "fc.weight")], "fc", transB=1)
    return find_groups(morphonnx.load(n.model("fc")))


def gid(groups, tensor):
    return groups.groups[groups.element_group[groups.plan.ids(tensor, [0])[0], 0]].id


def test_by_node_and_weight_name(groups):
    m = masks_from_sources(groups, {"a.conv": [1, 0, 1, 0, 1, 1], "a.bn.weight": [1, 0, 1, 0, 1, 1]})
    assert m.keep[gid(groups, "a.relu")].tolist() == [1, 0, 1, 0, 1, 1]
    assert not m.disagreements


def test_sources_of_one_group_are_combined(groups):
    m = masks_from_sources(groups, {"stem.conv": [1, 1, 0, 0, 0, 0, 0, 1], "b.conv.weight": [0, 1, 1, 0, 0, 0, 0, 0]})
    assert m.keep[gid(groups, "add")].tolist() == [1, 1, 1, 0, 0, 0, 0, 1]
    assert m.disagreements == {gid(groups, "add"): 3} and "disagree on 3 channels" in m.warnings[0]


def test_pinned_group_mask_is_ignored_with_a_warning(groups):
    m = masks_from_sources(groups, {"fc": [1, 0, 1]})
    assert m.keep[gid(groups, "fc")].all() and "pinned (graph output)" in m.warnings[0]


@pytest.mark.parametrize("masks, message", [
    ({"nope": [1]}, "'nope' is not a source"),
    ({"a.conv": [1, 0, 1]}, "'a.conv' has 3 values, but a.conv has 6 output channels"),
    ({"a.conv": [1, 0, 2, 1, 1, 1]}, "'a.conv' must be a list of 0/1 values"),
    ({"a.conv": "110011"}, "'a.conv' must be a list of 0/1 values"),
])
def test_bad_entries(groups, masks, message):
    with pytest.raises(BadInput, match=message):
        masks_from_sources(groups, masks)


def test_masks_file(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"masks": {"a": [1]}}))
    assert read_masks_file(tmp_path / "m.json") == {"a": [1]}
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(BadInput, match="bad.json: not valid JSON"):
        read_masks_file(tmp_path / "bad.json")
    (tmp_path / "shape.json").write_text("[1, 2]")
    with pytest.raises(BadInput, match="expected an object"):
        read_masks_file(tmp_path / "shape.json")
    with pytest.raises(BadInput, match="no such file"):
        read_masks_file(tmp_path / "none.json")


def test_threshold_uses_bn_scales(groups):
    scale = groups.graph.array("a.bn.weight")
    t = float(np.sort(np.abs(scale))[2])
    m = masks_from_threshold(groups, t)
    assert m.keep[gid(groups, "a.relu")].tolist() == (np.abs(scale) > t).tolist()
    with pytest.raises(BadInput, match="non-negative"):
        masks_from_threshold(groups, -1)


def test_all_zero_group_is_a_mask_like_any_other(groups):
    m = legalize(groups, masks_from_sources(groups, {"a.conv": [0] * 6}))
    assert not m.keep[gid(groups, "a.relu")].any()


def test_round_to_multiples_revives_the_largest_gammas(groups):
    scale = np.abs(groups.graph.array("a.bn.weight"))
    m = legalize(groups, masks_from_threshold(groups, float(np.sort(scale)[-2])), multiple=4)
    keep = m.keep[gid(groups, "a.relu")]
    assert keep.sum() == 4 and set(np.flatnonzero(keep)) == set(np.argsort(-scale)[:4])
    with pytest.raises(BadInput, match="--round 0"):
        legalize(groups, m, multiple=0)
