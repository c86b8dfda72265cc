"""Masks: by node or weight name, from BN scales, combined per group, validated with clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

import morphonnx
from morphonnx import BadInput
from morphonnx.groups import find_groups
from morphonnx.masks import (legalize, masks_document, masks_from_sources, masks_from_threshold, read_masks_file,
                             revived_summary)

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


# ---- grouped convolutions: what legalize changes, and the masks as applied ------------------------

def resnext_block(group: int = 4, width: int = 16, residual_around_gconv: bool = False):
    """stem(8) → 1x1 (width) → grouped 3x3 (`group` conv groups) → 1x1 (8) + the stem, a classifier.
    With `residual_around_gconv`, the grouped conv's output is also added to its input (tied blocks)."""
    n = Net(size=6)
    stem = n.cbr("x", 4, 8, name="stem")
    a = n.cbr(stem, 8, width, k=1, name="a")
    g = n.cbr(a, width, width, group=group, name="g")
    if residual_around_gconv:
        g = n.node("Add", [a, g], "g.add")
    b = n.cbr(g, width, 8, k=1, name="b")
    y = n.node("Add", [stem, b], "add")
    p = n.node("Flatten", [n.node("GlobalAveragePool", [y])], axis=1)
    n.node("Gemm", [p, n.param((3, 8), "fc.weight")], "fc", transB=1)
    return n.model("fc")


def blocks(counts, per=4):
    """A 0/1 mask of len(counts) blocks of `per` channels keeping the first counts[j] of block j."""
    return [int(i < c) for c in counts for i in range(per)]


@pytest.fixture(scope="module")
def rx():
    return find_groups(morphonnx.load(resnext_block()))


def layer_changes(masks, action="revived"):
    return {(c.node, c.weight, c.count, c.reason, c.conv) for c in masks.changes if c.action == action}


def test_equal_conv_groups_report_revived_channels_per_layer(rx):
    m = legalize(rx, masks_from_sources(rx, {"a.conv": blocks([4, 2, 1, 3]), "g.conv.weight": blocks([2, 4, 4, 4])}))
    assert m.keep[gid(rx, "a.relu")].tolist() == [1] * 16 and m.keep[gid(rx, "g.relu")].all()
    assert layer_changes(m) == {("a.conv", "a.conv.weight", 6, "equal conv groups", "g.conv"),
                                ("g.conv", "g.conv.weight", 2, "equal conv groups", "g.conv")}
    assert m.revived == [c for c in m.changes if c.action == "revived"] and not layer_changes(m, "removed")
    s = revived_summary(m)
    assert s["revived"]["channels"] == 8 and s["revived"]["group_channels"] == 8
    assert s["revived"]["by_reason"] == {"equal conv groups": 8} and s["removed"]["channels"] == 0
    assert {r["node"] for r in s["revived"]["layers"]} == {"a.conv", "g.conv"}
    assert json.loads(json.dumps(s)) == s
    [w] = [w for w in m.warnings if "equal conv groups" in w]
    assert "8 output channels of 2 layers revived" in w and "--conv-groups whole" in w


def test_round_is_reported_as_its_own_cause(groups):
    m = legalize(groups, masks_from_sources(groups, {"a.conv": [1, 0, 0, 0, 0, 0]}), multiple=4)
    assert layer_changes(m) == {("a.conv", "a.conv.weight", 3, "--round 4", None)}
    assert revived_summary(m)["revived"]["by_reason"] == {"--round 4": 3}
    assert any(w.startswith("--round 4: 3 output channels of 1 layers revived") for w in m.warnings)


def test_conv_groups_the_masks_remove_whole_stay_removed(rx):
    m = legalize(rx, masks_from_sources(rx, {"a.conv": blocks([2, 0, 2, 2]), "g.conv": blocks([3, 0, 3, 1])}))
    assert m.dead_conv_groups == {"g.conv": [1]}
    assert layer_changes(m) == {("g.conv", "g.conv.weight", 2, "equal conv groups", "g.conv")}
    assert m.keep[gid(rx, "a.relu")].tolist() == blocks([2, 0, 2, 2])


def test_whole_mode_removes_mostly_dead_conv_groups(rx):
    masks = masks_from_sources(rx, {"a.conv": blocks([4, 4, 1, 4]), "g.conv": blocks([4, 3, 1, 4])})
    equal = legalize(rx, masks)
    assert sum(c.count for c in equal.revived) == 7 and equal.keep[gid(rx, "a.relu")].all()
    whole = legalize(rx, masks, conv_groups="whole")
    assert whole.dead_conv_groups == {"g.conv": [2]}
    assert whole.keep[gid(rx, "a.relu")].tolist() == blocks([4, 4, 0, 4])
    assert whole.keep[gid(rx, "g.relu")].tolist() == blocks([4, 4, 0, 4])
    assert layer_changes(whole, "removed") == {("a.conv", "a.conv.weight", 1, "whole conv groups", "g.conv"),
                                              ("g.conv", "g.conv.weight", 1, "whole conv groups", "g.conv")}
    assert layer_changes(whole) == {("g.conv", "g.conv.weight", 1, "equal conv groups", "g.conv")}
    assert revived_summary(whole)["dead_conv_groups"] == {"g.conv": [2]}
    assert any("whole conv groups: 2 output channels of 2 layers removed" in w for w in whole.warnings)
    with pytest.raises(BadInput, match="--conv-groups nope"):
        legalize(rx, masks, conv_groups="nope")


def test_whole_mode_never_removes_pinned_channels():
    n = Net(size=6)
    a = n.cbr("x", 4, 8, k=1, name="a")
    g = n.conv(a, 8, 8, group=4, name="g")  # a graph output: pinned
    gr = find_groups(morphonnx.load(n.model(g)))
    m = legalize(gr, masks_from_sources(gr, {"a.conv": blocks([2, 1, 0, 2], per=2)}), conv_groups="whole")
    assert m.keep[gid(gr, "a.relu")].all() and not m.dead_conv_groups


def test_masks_document_round_trips(rx, tmp_path):
    m = legalize(rx, masks_from_sources(rx, {"a.conv": blocks([4, 4, 1, 4]), "g.conv": blocks([4, 4, 0, 4]),
                                       "b.conv": [1, 0] * 4}),
                 conv_groups="whole")
    m.silenced["b.conv"] = np.arange(8, dtype=np.float32)
    doc = masks_document(rx, m)
    assert {"a.conv.weight", "a.bn.weight", "g.conv.weight", "b.conv.weight", "stem.conv.weight"} <= set(doc["masks"])
    assert doc["silenced"] == {"b.conv.weight": [float(i) for i in range(8)]}
    (tmp_path / "applied.json").write_text(json.dumps(doc))
    again = masks_from_sources(rx, read_masks_file(tmp_path / "applied.json"))
    assert not again.disagreements and not again.warnings
    for mode in ("equal", "whole"):
        legal = legalize(rx, again, conv_groups=mode)
        assert not legal.changes and legal.dead_conv_groups == {"g.conv": [2]}
        assert all(np.array_equal(legal.keep[k], m.keep[k]) for k in m.keep)


def test_whole_mode_keeps_conv_groups_that_round_would_need(rx):
    masks = masks_from_sources(rx, {"a.conv": blocks([4, 4, 1, 4]), "g.conv": blocks([4, 4, 1, 4])})
    assert legalize(rx, masks, multiple=4, conv_groups="whole").dead_conv_groups == {"g.conv": [2]}
    m = legalize(rx, masks, multiple=8, conv_groups="whole")  # 3 groups of 4 are no multiple of 8
    assert not m.dead_conv_groups and not layer_changes(m, "removed") and m.keep[gid(rx, "a.relu")].all()
    assert sum(c.count for c in m.revived) == 6


def test_a_second_legalize_keeps_the_first_ones_changes(rx):
    m = legalize(rx, masks_from_sources(rx, {"a.conv": blocks([4, 2, 4, 4])}))
    assert legalize(rx, m).changes == m.changes and len(m.changes) == 1


def test_a_source_writing_a_channel_twice_warns_when_its_masks_disagree():
    """A fused projection whose two halves are tied (Split → Mul, a fused gate/up) gets one group
    channel per pair: masks that cut one half and not the other are reported, not silently merged."""
    from conftest import Net
    n = Net()
    x = n.cbr("x", 4, 8, name="pre")
    a, b = n.node("Split", [x, n.const([4, 4], dtype=np.int64)], "split", outputs=2, axis=1)
    y = n.node("Mul", [a, b], "gate")
    m = n.model(n.cbr(y, 4, 2, name="post"))
    gr = find_groups(morphonnx.load(m))
    masks = masks_from_sources(gr, {"pre.conv": [1, 1, 1, 1, 0, 0, 0, 0]})
    assert any("4 channels it writes more than once" in w for w in masks.warnings), masks.warnings
    masks = masks_from_sources(gr, {"pre.conv": [1, 0, 1, 0, 1, 0, 1, 0]})
    assert not any("more than once" in w for w in masks.warnings)
