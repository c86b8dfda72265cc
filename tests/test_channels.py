"""Channel rules on hand-built graphs: the groups each construct must produce, then a random-mask
prune of the same graph checked against the oracle (DESIGN.md's contract)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import morphonnx
from morphonnx.groups import find_groups
from morphonnx.masks import all_alive, legalize

from conftest import Net, random_prune_ok


def groups_of(m):
    return find_groups(morphonnx.load(m))


def group_of(gr, tensor: str, channel: int = 0):
    """The group holding channel `channel` of `tensor`."""
    e = gr.plan.ids(tensor, [channel])[0]
    return gr.groups[gr.element_group[e, 0]]


def sources(g) -> set[str]:
    return {s.node for s, _ in g.sources}


def classifier(n: Net, x: str, c: int, size: int = 8) -> str:
    p = n.node("GlobalAveragePool", [x])
    f = n.node("Flatten", [p], axis=1)
    return n.node("Gemm", [f, n.param((3, c), "fc.weight"), n.param((3,), "fc.bias")], "fc", transB=1)


def test_residual_add_ties_the_stream():
    n = Net()
    stem = n.cbr("x", 4, 8, name="stem")
    r = n.cbr(n.cbr(stem, 8, 6, name="a"), 6, 8, name="b")
    y = n.node("Relu", [n.node("Add", [stem, r], "add")])
    m = n.model(classifier(n, y, 8))
    gr = random_prune_ok(m)
    g = group_of(gr, "stem.relu")
    assert sources(g) >= {"stem.conv", "stem.bn", "b.conv", "b.bn"} and g.size == 8 and not g.pinned
    assert group_of(gr, "a.relu").size == 6 and group_of(gr, "fc").pinned == "graph output"


def test_concat_of_towers_and_nested_concat():
    n = Net()
    t1, t2, t3 = n.cbr("x", 4, 3, name="t1"), n.cbr("x", 4, 5, name="t2"), n.cbr("x", 4, 2, name="t3")
    inner = n.node("Concat", [t1, t2], "inner", axis=1)
    outer = n.node("Concat", [inner, t3], "outer", axis=1)
    m = n.model(classifier(n, n.cbr(outer, 10, 4, name="after"), 4))
    gr = random_prune_ok(m)
    assert group_of(gr, "outer", 0) is group_of(gr, "t1.relu", 0)
    assert group_of(gr, "outer", 3) is group_of(gr, "t2.relu", 0)
    g3 = group_of(gr, "t3.relu")
    assert g3.members["outer"] == [[8], [9]]


def test_split_on_channels():
    n = Net()
    x = n.cbr("x", 4, 8, name="pre")
    a, b = n.node("Split", [x, n.const([3, 5], dtype=np.int64)], "split", outputs=2, axis=1)
    y = n.node("Concat", [n.cbr(a, 3, 4, name="pa"), n.cbr(b, 5, 4, name="pb")], "cat", axis=1)
    m = n.model(classifier(n, y, 8))
    gr = random_prune_ok(m)
    assert group_of(gr, "split_1", 0) is group_of(gr, "pre.relu", 3)


def test_slice_on_channels():
    n = Net()
    x = n.cbr("x", 4, 8, name="pre")
    s = n.node("Slice", [x, n.const([2], dtype=np.int64), n.const([7], dtype=np.int64),
                         n.const([1], dtype=np.int64)], "slice")
    m = n.model(classifier(n, n.cbr(s, 5, 4, name="post"), 4))
    gr = random_prune_ok(m)
    assert group_of(gr, "slice", 0) is group_of(gr, "pre.relu", 2)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_ties_input_to_output_block(multiplier):
    n = Net()
    x = n.cbr("x", 4, 6, name="pre")
    dw = n.cbr(x, 6, 6 * multiplier, group=6, name="dw")
    m = n.model(classifier(n, n.cbr(dw, 6 * multiplier, 4, k=1, name="pw"), 4))
    gr = random_prune_ok(m)
    g = group_of(gr, "pre.relu", 1)
    assert g is group_of(gr, "dw.relu", multiplier) and g.size == 6
    assert g.members["dw.relu"][1] == list(range(multiplier, 2 * multiplier))


def test_grouped_conv_keeps_equal_groups():
    n = Net()
    x = n.cbr("x", 4, 8, name="pre")
    gconv = n.cbr(x, 8, 8, group=2, name="g")
    m = n.model(classifier(n, gconv, 8))
    gr = random_prune_ok(m)
    assert len(gr.plan.constraints) == 2
    masks = all_alive(gr)
    pre = group_of(gr, "pre.relu")
    masks.keep[pre.id][:] = [1, 0, 0, 0, 1, 1, 1, 0]
    fixed = legalize(gr, masks).keep[pre.id]
    assert fixed[:4].sum() == fixed[4:].sum() == 3


def test_se_block():
    n = Net()
    x = n.cbr("x", 4, 8, name="pre")
    s = n.node("ReduceMean", [x], "se.mean", axes=[2, 3], keepdims=1)
    s = n.node("Relu", [n.conv(s, 8, 2, k=1, name="se.fc1")])
    gate = n.node("Sigmoid", [n.conv(s, 2, 8, k=1, name="se.fc2")], "se.gate")
    y = n.node("Mul", [x, gate], "se.scale")
    m = n.model(classifier(n, n.cbr(y, 8, 4, name="post"), 4), opset=17)
    gr = random_prune_ok(m)
    assert sources(group_of(gr, "se.scale")) >= {"pre.conv", "pre.bn", "se.fc2"}


def test_flatten_into_gemm_features():
    n = Net()
    x = n.cbr("x", 4, 6, name="pre")
    p = n.node("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
    f = n.node("Flatten", [p], "flatten", axis=1)
    h = n.node("Relu", [n.node("Gemm", [f, n.param((10, 6 * 16), "fc1.weight"), n.param((10,), "fc1.bias")],
                               "fc1", transB=1)])
    m = n.model(n.node("Gemm", [h, n.param((3, 10), "fc2.weight")], "fc2", transB=1))
    gr = random_prune_ok(m)
    assert gr.plan.spaces["flatten"].block == 16 and group_of(gr, "flatten") is group_of(gr, "pre.relu")
    assert not group_of(gr, "fc1").pinned


def test_reshape_flatten_with_shape_constant():
    n = Net()
    x = n.cbr("x", 4, 6, name="pre")
    f = n.node("Reshape", [x, n.const([1, -1], dtype=np.int64)], "reshape")
    m = n.model(n.node("Gemm", [f, n.param((3, 6 * 64), "fc.weight")], "fc", transB=1))
    random_prune_ok(m)


def test_channels_last_mlp():
    """convnext: Transpose to NHWC, MatMul MLP over the last axis, Transpose back."""
    n = Net()
    x = n.conv("x", 4, 8, name="stem")
    t = n.node("Transpose", [x], "to_nhwc", perm=[0, 2, 3, 1])
    h = n.node("Gelu", [n.node("Add", [n.node("MatMul", [t, n.param((8, 16), "mlp.fc1.weight")], "fc1"),
                                        n.param((16,), "mlp.fc1.bias")])], "gelu")
    o = n.node("Add", [n.node("MatMul", [h, n.param((16, 8), "mlp.fc2.weight")], "fc2"), n.param((8,), "b2")])
    back = n.node("Transpose", [o], "to_nchw", perm=[0, 3, 1, 2])
    m = n.model(classifier(n, n.node("Add", [x, back], "res"), 8), opset=20)
    gr = random_prune_ok(m)
    assert gr.plan.spaces["to_nhwc"].axis == 3 and group_of(gr, "gelu").size == 16
    assert group_of(gr, "to_nhwc") is group_of(gr, "stem")


def test_shared_initializer():
    n = Net()
    x = n.cbr("x", 4, 6, name="pre")
    w = n.param((6, 6, 3, 3), "shared.weight")
    a = n.node("Relu", [n.conv(x, 6, 6, weight=w, name="c1", bias=False)])
    b = n.node("Relu", [n.conv(x, 6, 6, weight=w, name="c2", bias=False)])
    m = n.model(classifier(n, n.node("Add", [a, b], "sum"), 6))
    gr = random_prune_ok(m)
    assert {s.weight for s, _ in group_of(gr, "sum").sources} == {"shared.weight"}


@pytest.mark.parametrize("op, attrs, reason", [
    ("LayerNormalization", {"axis": 1}, "normalizes over channels"),
    ("Softmax", {"axis": 1}, "runs over channels"),
    ("ReduceMean", {"axes": [1], "keepdims": 1}, "reduces over channels"),
])
def test_ops_over_channels_pin(op, attrs, reason):
    n = Net()
    x = n.cbr("x", 4, 6, name="pre")
    extra = [n.param((6, 8, 8), "ln.scale", 1.0)] if op == "LayerNormalization" else []
    y = n.node(op, [x] + extra, "mix", **attrs)
    m = n.model(classifier(n, n.cbr(y, 1 if op == "ReduceMean" else 6, 4, name="post"), 4))
    gr = random_prune_ok(m, seeds=(0,))
    assert reason in (group_of(gr, "pre.relu").pinned or "")


def shuffle_net(perm=(0, 2, 1, 3, 4)):
    n = Net()
    x = n.cbr("x", 4, 8, name="pre")
    r = n.node("Reshape", [x, n.const([1, 2, 4, 8, 8], dtype=np.int64)], "split_groups")
    t = n.node("Transpose", [r], perm=list(perm))
    back = n.node("Reshape", [t, n.const([1, 8, 8, 8], dtype=np.int64)], "merge")
    return n.model(classifier(n, n.cbr(back, 8, 4, name="post"), 4))


def test_channel_shuffle_is_a_permutation():
    """Reshape-Transpose-Reshape (ShuffleNet): output channel i*g + k is input channel k*C/g + i;
    the pruned model gathers the kept channels in that order."""
    from morphonnx.rewrite import prune
    gr = random_prune_ok(shuffle_net())
    assert group_of(gr, "pre.relu").pinned is None
    assert group_of(gr, "merge", 1) is group_of(gr, "pre.relu", 4)
    result = prune(gr, legalize(gr, all_alive(gr)))
    assert [n.op_type for n in result.model.graph.node].count("Transpose") == 1  # nothing removed: unchanged
    masks = all_alive(gr)
    masks.keep[group_of(gr, "pre.relu").id][[1, 6]] = False
    ops = [n.op_type for n in prune(gr, legalize(gr, masks)).model.graph.node]
    assert "Gather" in ops and "Transpose" not in ops


def test_split_channels_merged_back_after_a_spatial_transpose_stay_prunable():
    """[1, 2, 4, 8, 8] with H and W swapped, then merged back: the channels are untouched."""
    gr = random_prune_ok(shuffle_net(perm=(0, 1, 2, 4, 3)))
    assert group_of(gr, "pre.relu").pinned is None
    assert group_of(gr, "merge", 1) is group_of(gr, "pre.relu", 1)


def test_split_channels_mixed_with_a_spatial_axis_pin():
    gr = random_prune_ok(shuffle_net(perm=(0, 1, 3, 2, 4)), seeds=(0,))
    assert "merges heads with another axis" in group_of(gr, "pre.relu").pinned


def test_unknown_op_pins_and_is_reported():
    n = Net()
    x = n.cbr("x", 4, 6, name="pre")
    n.nodes.append(helper.make_node("Mystery", [x], ["odd"], name="odd", domain="com.example"))
    m = n.model(classifier(n, n.cbr("odd", 6, 4, name="post"), 4))
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    m.graph.value_info.append(helper.make_tensor_value_info("odd", 1, [1, 6, 8, 8]))
    gr = groups_of(m)
    assert group_of(gr, "pre.relu").pinned == "no channel rule for Mystery"
    assert gr.summary()["ops_without_channel_rule"] == {"Mystery": 1}


# ---- regressions found by the random-graph fuzzer (scripts/fuzz.py) --------------------------------

def _prune_ok(m, masks: dict) -> "morphonnx.rewrite.PruneResult":
    """Prune with these per-source masks and assert the contract."""
    from morphonnx.masks import masks_from_sources
    from morphonnx.rewrite import prune
    from morphonnx.verify import check
    g = morphonnx.load(m)
    gr = find_groups(g)
    result = prune(gr, legalize(gr, masks_from_sources(gr, masks)))
    c = check(g, result.oracle, result.model)
    assert c.ok, f"relative error {c.relative:.2e}, checker {c.checker}, notes {c.notes}"
    return result


def test_resize_with_sizes_follows_the_kept_channels():
    n = Net(size=4)
    x = n.cbr("x", 4, 8, name="a")
    r = n.node("Resize", [x, "", "", n.const([1, 8, 6, 5], dtype=np.int64)], "resize", mode="nearest")
    m = n.model(n.conv(r, 8, 3, name="head"))
    result = _prune_ok(m, {"a.bn": [1, 0, 1, 1, 0, 1, 0, 1]})
    sizes = {t.name: t for t in result.model.graph.initializer}[result.model.graph.node[3].input[3]]
    assert list(np.frombuffer(sizes.raw_data, dtype=np.int64)) == [1, 5, 6, 5]


def test_tensor_read_inside_an_if_subgraph_is_pinned():
    """An If branch reads 'a.relu' by name (not as a node input): its channels cannot be cut."""
    n = Net(size=4)
    x = n.cbr("x", 4, 6, name="a")
    then = helper.make_graph([helper.make_node("Relu", [x], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", 1, [1, 6, 4, 4])])
    other = helper.make_graph([helper.make_node("Sigmoid", [x], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", 1, [1, 6, 4, 4])])
    cond = n.const(True, dtype=np.bool_)
    y = n.node("If", [cond], "if", then_branch=then, else_branch=other)
    m = n.model(n.conv(y, 6, 2, name="head"), n.conv(x, 6, 2, name="head2"))
    gr = groups_of(m)  # loads: the If is not constant-folded although its condition is constant
    assert group_of(gr, "a.relu").pinned == "read inside a subgraph of If 'if'"
    _prune_ok(m, {"a.bn": [1, 0, 1, 0, 1, 1]})


@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool", "Pad"])
def test_ops_over_transposed_channels_pin_them(op):
    """After a Transpose the channels sit on a spatial axis: a conv, pool or pad over that axis
    mixes or shifts them (all keep the size of that axis here)."""
    n = Net(size=5)
    x = n.cbr("x", 4, 6, name="a")
    t = n.node("Transpose", [x], "t", perm=[0, 2, 1, 3])  # [1, 5, 6, 5]: channels on axis 2
    if op == "Conv":
        y = n.conv(t, 5, 5, name="c")
    elif op == "Pad":
        y = n.node("Pad", [t, n.const([0, 0, 1, 0, 0, 0, -1, 0], dtype=np.int64)], "p")
    else:
        y = n.node(op, [t], "p", kernel_shape=[3, 1], pads=[1, 0, 1, 0])
    back = n.node("Transpose", [y], "back", perm=[0, 2, 1, 3])
    m = n.model(n.conv(back, 6, 2, k=1, name="head"))
    gr = groups_of(m)
    assert group_of(gr, "a.relu").pinned
    _prune_ok(m, {"a.bn": [1, 0, 1, 0, 1, 1]})


def test_broadcast_operand_whose_channels_meet_another_axis_pins_them():
    """Mul([1,3,1,6] (channels on axis 3), gate [1,3,1,1] (its channels on axis 1)): not the same channels."""
    n = Net(channels=6, size=1)
    x = n.node("Transpose", [n.cbr("x", 6, 6, k=1, name="a")], "t", perm=[0, 3, 2, 1])  # [1,1,1,6]
    x = n.node("Resize", [x, "", n.const([1, 3, 1, 1])], "up", mode="nearest")  # [1,3,1,6]
    gate = n.node("Sigmoid", [n.conv(n.node("GlobalAveragePool", ["x"]), 6, 3, k=1, name="g")])
    m = n.model(n.node("Mul", [x, gate], "mul"))
    gr = groups_of(m)
    assert "lines up the channels" in group_of(gr, "g").pinned
    _prune_ok(m, {"g": [1, 0, 1]})


def test_split_with_num_outputs_gets_explicit_sizes():
    """Opset 18's Split(num_outputs=2) splits equally: uneven kept counts need the sizes input."""
    n = Net()
    x = n.cbr("x", 4, 8, name="pre")
    a, b = n.node("Split", [x], "split", outputs=2, axis=1, num_outputs=2)
    y = n.node("Concat", [n.cbr(a, 4, 4, name="pa"), n.cbr(b, 4, 4, name="pb")], "cat", axis=1)
    m = n.model(classifier(n, y, 8), opset=18)
    result = _prune_ok(m, {"pre.bn": [1, 0, 0, 1, 1, 1, 1, 0]})
    split = next(nd for nd in result.model.graph.node if nd.op_type == "Split")
    assert len(split.input) == 2 and not any(a.name == "num_outputs" for a in split.attribute)
    _prune_ok(m, {"pre.bn": [1, 0, 0, 1, 1, 0, 1, 0]})  # 2 + 2: num_outputs still right


def test_one_channel_operand_of_a_one_channel_output_is_tied():
    """Relu of a 1-channel conv is the same channel, not a broadcast: it lives and dies with the conv."""
    n = Net()
    r = n.node("Relu", [n.conv("x", 4, 1, name="one")], "r")
    y = n.node("Concat", [n.cbr("x", 4, 3, name="t"), r], "cat", axis=1)
    m = n.model(n.conv(n.node("Add", [n.conv(y, 4, 4, k=1, name="mix"), y], "add"), 4, 2, k=1, name="head"))
    gr = groups_of(m)
    assert group_of(gr, "r") is group_of(gr, "one") and "one" in sources(group_of(gr, "r"))
    _prune_ok(m, {"one": [1], "mix": [1, 1, 1, 0]})


def test_concat_along_another_axis_pins_the_channels_of_its_inputs():
    """Concat on axis 1 of a transposed tensor (channels on axis 3) and a plain one: the plain one's
    channels are concatenated along the transposed tensor's spatial axis and cannot be cut."""
    n = Net(size=4)
    a = n.cbr("x", 4, 4, name="a")
    t = n.node("Transpose", [a], "t", perm=[0, 3, 2, 1])  # [1, 4, 4, 4], channels on axis 3
    b = n.cbr("x", 4, 3, name="b")
    b = n.node("Transpose", [n.node("Transpose", [b], "bt", perm=[0, 1, 3, 2])], "bb", perm=[0, 1, 3, 2])
    m = n.model(n.node("Concat", [t, n.cbr(b, 3, 3, k=1, name="c")], "cat", axis=1))
    gr = groups_of(m)
    assert group_of(gr, "c.relu").pinned
    _prune_ok(m, {"c.bn": [1, 0, 0], "b.bn": [0, 1, 1]})


@pytest.mark.parametrize("shape", [[8], [1, 8, 1, 1]])
def test_gather_of_a_channel_permutation_ties_and_renumbers(shape):
    """A Gather of every channel in a fixed order (a shuffle, torch's as_strided) ties output
    channel j to input channel idx[j]; the pruned Gather reads the kept channels in that order."""
    n = Net()
    x = n.cbr("x", 4, 8, name="pre")
    order = np.array([3, 0, 6, 1, 7, 2, 5, 4])
    if len(shape) == 1:
        y = n.node("Gather", [x, n.const(order, dtype=np.int64)], "shuffle", axis=1)
    else:  # over the flattened channels of a [1, C, 1, 1] mean, as torch's as_strided exports
        m = n.node("GlobalAveragePool", [x], "mean")
        flat = n.node("Reshape", [m, n.const([-1], dtype=np.int64)], "flat")
        y = n.node("Gather", [flat, n.const(order.reshape(shape), dtype=np.int64)], "shuffle", axis=0)
    m = n.model(classifier(n, n.cbr(y, 8, 4, name="post"), 4))
    gr = random_prune_ok(m)
    assert group_of(gr, "pre.relu").pinned is None
    assert group_of(gr, "shuffle", 0) is group_of(gr, "pre.relu", 3)
