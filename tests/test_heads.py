"""Channels split into heads (channels/heads.py): attention in the forms exporters write, head_dim
splits, radix softmax, patch merging; pins where the split cannot be followed."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import Net, random_prune_ok, tensor
from morphonnx.groups import find_groups
from morphonnx.masks import all_alive, legalize, random_masks
from morphonnx.rewrite import prune

N, C, H = 9, 32, 4  # tokens, width, heads
D = C // H


def i64(n: Net, value) -> str:
    return n.const(value, dtype=np.int64)


def linear(n: Net, x: str, cin: int, cout: int, name: str) -> str:
    return n.node("Add", [n.node("MatMul", [x, n.param((cin, cout), f"{name}.weight")], f"{name}.mm"),
                          n.param((cout,), f"{name}.bias")], name)


def tokens() -> Net:
    n = Net()
    n.input = tensor("x", [1, N, 16])
    return n


def finish(n: Net, x: str) -> onnx.ModelProto:
    pooled = n.node("ReduceMean", [x], "pool", axes=[1], keepdims=0)
    return n.model(n.node("Gemm", [pooled, n.param((5, C), "head.weight"), n.param((5,), "head.bias")],
                          "head", transB=1))


def attention(n: Net, x: str, unbind: str = "Gather") -> str:
    """timm's Attention: fused qkv, Reshape [1, N, 3, H, D], Transpose, unbind, q·kᵀ, softmax, ·v."""
    qkv = linear(n, x, C, 3 * C, "qkv")
    r = n.node("Reshape", [qkv, i64(n, [1, N, 3, H, D])], "split_heads")
    t = n.node("Transpose", [r], "to_heads", perm=[2, 0, 3, 1, 4])
    if unbind == "Gather":
        q, k, v = (n.node("Gather", [t, i64(n, i)], f"pick{i}", axis=0) for i in range(3))
    else:
        parts = n.node("Split", [t, i64(n, [1, 1, 1])], "unbind", outputs=3, axis=0)
        q, k, v = (n.node("Squeeze", [p, i64(n, [0])], f"squeeze{i}") for i, p in enumerate(parts))
    q = n.node("Mul", [q, n.const(D ** -0.5)], "scale")
    kt = n.node("Transpose", [k], "kt", perm=[0, 1, 3, 2])
    attn = n.node("Softmax", [n.node("MatMul", [q, kt], "scores")], "softmax", axis=-1)
    o = n.node("Transpose", [n.node("MatMul", [attn, v], "mix")], "from_heads", perm=[0, 2, 1, 3])
    merged = n.node("Reshape", [o, i64(n, [1, N, C])], "merge_heads")
    return n.node("Add", [x, linear(n, merged, C, C, "proj")], "residual")


def vit(unbind: str = "Gather") -> onnx.ModelProto:
    n = tokens()
    x = linear(n, "x", 16, C, "embed")
    return finish(n, attention(n, x, unbind))


def group_of(gr, tensor: str, channel: int = 0):
    eid = gr.plan.ids(tensor, [channel])[0]
    return gr.groups[gr.element_group[eid, 0]], int(gr.element_group[eid, 1])


def shape_const(model: onnx.ModelProto, node: str) -> list[int]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    n = next(x for x in model.graph.node if x.name == node)
    return inits[n.input[1]].tolist()


@pytest.mark.parametrize("unbind", ["Gather", "Split"])
def test_fused_qkv_heads_are_prunable_and_q_ties_k(unbind):
    gr = random_prune_ok(vit(unbind))
    q, qk = group_of(gr, "qkv", 3)          # head 0, channel 3 of q
    k, kk = group_of(gr, "qkv", C + 3)      # the same of k
    v, _ = group_of(gr, "qkv", 2 * C + 3)
    assert q.pinned is None and v.pinned is None
    assert (q.id, qk) == (k.id, kk) and v.id != q.id
    assert group_of(gr, "merge_heads", 3)[0] is v  # v's channels come back at the merge
    assert [t for t, _ in gr.plan.equal_blocks] == ["qkv"]


def test_pruned_heads_keep_equal_head_dims_and_the_reshapes_follow(tmp_path):
    from morphonnx.verify import check
    import morphonnx
    m = vit()
    g = morphonnx.load(m)
    gr = find_groups(g)
    masks = random_masks(gr, 1)
    result = prune(gr, legalize(gr, masks))
    path = tmp_path / "p.onnx"
    onnx.save(result.model, path)
    assert check(g, result.oracle, str(path)).ok
    d = shape_const(result.model, "split_heads")[-1]
    assert d < D and shape_const(result.model, "merge_heads") == [1, N, H * d]


def test_unequal_heads_are_legalized_and_dead_heads_go_whole():
    gr = find_groups(__import__("morphonnx").load(vit()))
    masks = all_alive(gr)
    q, v = group_of(gr, "qkv", 0)[0], group_of(gr, "qkv", 2 * C)[0]
    for g in (q, v):  # (a fused q/k/v keeps as many in q, k and v: the blocks span both groups)
        masks.keep[g.id][:] = False
        masks.keep[g.id][[0, 1, D + 2]] = True  # head 0 keeps 2, head 1 keeps 1, heads 2 and 3 none
    legal = legalize(gr, masks)  # heads 2 and 3 lose q, k and v: they go whole; head 1 gets 2
    assert legal.keep[q.id].reshape(H, D).sum(axis=1).tolist() == [2, 2, 0, 0]
    assert legal.keep[v.id].reshape(H, D).sum(axis=1).tolist() == [2, 2, 0, 0]
    masks.keep[q.id][:] = False  # q and k of every head gone, v alive: no head goes
    masks.keep[v.id][:] = True
    legal = legalize(gr, masks)
    assert (legal.keep[q.id].reshape(H, D).sum(axis=1) > 0).all()
    assert any("equal attention heads" in w for w in legal.warnings)


def test_separate_projections_tie_across_tensors():
    """q, k, v from three Linears, each reshaped to [1, N, H, D] and transposed."""
    gr = random_prune_ok(_separate())
    assert group_of(gr, "q", 5) == group_of(gr, "k", 5)
    assert group_of(gr, "v", 5) == group_of(gr, "merge", 5) and group_of(gr, "v", 5)[0].pinned is None


def test_head_dim_split_into_q_k_v_parts():
    """LeViT / EfficientFormer: one projection per head of [q | k | v], split along head_dim."""
    n = tokens()
    x = linear(n, "x", 16, C, "embed")
    kd, vd = 2, 4  # per head: q 2, k 2, v 4
    r = n.node("Reshape", [linear(n, x, C, H * (2 * kd + vd), "qkv"), i64(n, [1, N, H, 2 * kd + vd])], "split_heads")
    q, k, v = n.node("Split", [r, i64(n, [kd, kd, vd])], "parts", outputs=3, axis=3)
    q = n.node("Transpose", [q], "qh", perm=[0, 2, 1, 3])
    k = n.node("Transpose", [k], "kh", perm=[0, 2, 3, 1])
    v = n.node("Transpose", [v], "vh", perm=[0, 2, 1, 3])
    attn = n.node("Softmax", [n.node("MatMul", [q, k], "scores")], "softmax", axis=-1)
    o = n.node("Transpose", [n.node("MatMul", [attn, v], "mix")], "back", perm=[0, 2, 1, 3])
    merged = n.node("Reshape", [o, i64(n, [1, N, H * vd])], "merge")
    gr = random_prune_ok(finish(n, n.node("Add", [x, linear(n, merged, H * vd, C, "proj")], "res")))
    per = 2 * kd + vd
    assert group_of(gr, "qkv", 1) == group_of(gr, "qkv", kd + 1)               # q with k
    assert group_of(gr, "merge", vd + 1) == group_of(gr, "qkv", per + 2 * kd + 1)  # head 1's v
    assert len(gr.plan.equal_blocks) == 4  # the per-head block, and each part


def test_radix_softmax_ties_the_branches():
    """Selective kernel / split attention: softmax over the radix axis of [1, R, C, 1, 1]."""
    n = Net()
    a = n.cbr("x", 4, 8, name="a")
    b = n.cbr("x", 4, 8, 1, name="b")
    stack = n.node("Concat", [n.node("Unsqueeze", [t, i64(n, [1])], f"u{t}") for t in (a, b)], "stack", axis=1)
    pooled = n.node("ReduceMean", [n.node("ReduceSum", [stack, i64(n, [1])], "sum0", keepdims=0)], "gap",
                    axes=[2, 3], keepdims=1)
    logits = n.conv(n.node("Relu", [n.conv(pooled, 8, 4, 1, name="fc1")]), 4, 16, 1, name="fc2")
    w = n.node("Softmax", [n.node("Reshape", [logits, i64(n, [1, 2, 8, 1, 1])], "radix")], "rsoftmax", axis=1)
    out = n.node("ReduceSum", [n.node("Mul", [stack, w], "weigh"), i64(n, [1])], "select", keepdims=0)
    m = n.model(n.node("Gemm", [n.node("Flatten", [n.node("GlobalAveragePool", [n.cbr(out, 8, 6, name="post")])]),
                                n.param((3, 6)), n.param((3,))], "cls", transB=1))
    gr = random_prune_ok(m)
    g, k = group_of(gr, "fc2", 3)
    assert g.pinned is None and group_of(gr, "fc2", 8 + 3) == (g, k) == group_of(gr, "a.relu", 3)


def test_patch_merging_ties_the_copies_of_a_channel():
    """timm's Swin: [1, 4, 4, C] → [1, 2, 2, 2, 2, C] → Transpose → [1, 2, 2, 4C]."""
    n = Net()
    n.input = tensor("x", [1, 4, 4, 8])
    x = linear(n, "x", 8, 6, "embed")
    r = n.node("Reshape", [x, i64(n, [1, 2, 2, 2, 2, 6])], "windows")
    t = n.node("Transpose", [r], "gather2x2", perm=[0, 1, 3, 4, 2, 5])
    merged = n.node("Reshape", [t, i64(n, [1, 2, 2, 24])], "merge")
    norm = n.node("LayerNormalization", [merged, n.param((24,), offset=1.0), n.param((24,))], "norm", axis=-1)
    y = linear(n, norm, 24, 12, "reduction")
    m = n.model(n.node("ReduceMean", [y], "out", axes=[1, 2], keepdims=0))
    gr = random_prune_ok(m)
    g, k = group_of(gr, "embed", 2)
    assert g.pinned is None and all(group_of(gr, "merge", p * 6 + 2) == (g, k) for p in range(4))


def test_softmax_over_head_dim_pins_with_its_reason():
    n = tokens()
    x = linear(n, "x", 16, C, "embed")
    r = n.node("Reshape", [linear(n, x, C, C, "q"), i64(n, [1, N, H, D])], "split")
    s = n.node("Softmax", [r], "odd", axis=-1)
    merged = n.node("Reshape", [s, i64(n, [1, N, C])], "merge")
    gr = find_groups(__import__("morphonnx").load(finish(n, n.node("Add", [x, merged], "res"))))
    assert "runs over head_dim" in group_of(gr, "q")[0].pinned


@pytest.mark.parametrize("build", ["vit", "separate", "levit"])
def test_whole_heads_go(build, tmp_path):
    """A head whose q, k and v channels all die is removed: the reshapes get fewer heads."""
    import morphonnx
    from morphonnx.verify import check
    m = {"vit": vit, "separate": lambda: _separate(), "levit": lambda: _levit()}[build]()
    g = morphonnx.load(m)
    gr = find_groups(g)
    assert len(gr.plan.head_units) == 1
    masks = all_alive(gr)
    q, qr, k, kr, v, vr = gr.plan.head_units[0]
    for t, rows in ((q, qr), (k, kr), (v, vr)):
        for gid, ch in gr.element_group[gr.plan.ids(t, rows[1].ravel())].tolist():
            masks.keep[gid][ch] = False
    result = prune(gr, legalize(gr, masks))
    onnx.save(result.model, tmp_path / "p.onnx")
    assert check(g, result.oracle, str(tmp_path / "p.onnx")).ok
    merge = "merge_heads" if build == "vit" else "merge"
    assert shape_const(result.model, merge)[-1] == (H - 1) * (4 if build == "levit" else D)
    random_prune_ok(m, seeds=(0, 1, 2, 3))


def test_a_bias_per_head_on_the_scores_keeps_every_head():
    """Swin / BEiT add a relative-position bias per head to the scores: heads cannot go whole."""
    n = tokens()
    x = linear(n, "x", 16, C, "embed")
    qkv = linear(n, x, C, 3 * C, "qkv")
    t = n.node("Transpose", [n.node("Reshape", [qkv, i64(n, [1, N, 3, H, D])], "split_heads")], "th", perm=[2, 0, 3, 1, 4])
    q, k, v = (n.node("Gather", [t, i64(n, i)], f"pick{i}", axis=0) for i in range(3))
    s = n.node("Add", [n.node("MatMul", [q, n.node("Transpose", [k], "kt", perm=[0, 1, 3, 2])], "scores"),
                       n.param((1, H, N, N), "rel_bias")], "biased")
    o = n.node("MatMul", [n.node("Softmax", [s], "softmax", axis=-1), v], "mix")
    merged = n.node("Reshape", [n.node("Transpose", [o], "back", perm=[0, 2, 1, 3]), i64(n, [1, N, C])], "merge")
    gr = random_prune_ok(finish(n, n.node("Add", [x, linear(n, merged, C, C, "proj")], "res")))
    assert gr.plan.head_units == [] and group_of(gr, "qkv", 0)[0].pinned is None


def _separate() -> onnx.ModelProto:
    n = tokens()
    x = linear(n, "x", 16, C, "embed")
    heads = {}
    for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        r = n.node("Reshape", [linear(n, x, C, C, name), i64(n, [1, N, H, D])], f"{name}.split")
        heads[name] = n.node("Transpose", [r], f"{name}.heads", perm=perm)
    attn = n.node("Softmax", [n.node("MatMul", [heads["q"], heads["k"]], "scores")], "softmax", axis=-1)
    o = n.node("Transpose", [n.node("MatMul", [attn, heads["v"]], "mix")], "back", perm=[0, 2, 1, 3])
    merged = n.node("Reshape", [o, i64(n, [1, N, C])], "merge")
    return finish(n, n.node("Add", [x, linear(n, merged, C, C, "proj")], "res"))


def _levit() -> onnx.ModelProto:
    n = tokens()
    x = linear(n, "x", 16, C, "embed")
    kd, vd = 2, 4
    r = n.node("Reshape", [linear(n, x, C, H * (2 * kd + vd), "qkv"), i64(n, [1, N, H, 2 * kd + vd])], "split_heads")
    q, k, v = n.node("Split", [r, i64(n, [kd, kd, vd])], "parts", outputs=3, axis=3)
    q = n.node("Transpose", [q], "qh", perm=[0, 2, 1, 3])
    k = n.node("Transpose", [k], "kh", perm=[0, 2, 3, 1])
    v = n.node("Transpose", [v], "vh", perm=[0, 2, 1, 3])
    attn = n.node("Softmax", [n.node("Mul", [n.node("MatMul", [q, k], "scores"), n.const(0.5)], "scale")],
                  "softmax", axis=-1)
    o = n.node("Transpose", [n.node("MatMul", [attn, v], "mix")], "back", perm=[0, 2, 1, 3])
    merged = n.node("Reshape", [o, i64(n, [1, N, H * vd])], "merge")
    return finish(n, n.node("Add", [x, linear(n, merged, H * vd, C, "proj")], "res"))


def test_expand_steps_keep_heads_equal():
    from morphonnx.expand import group_steps
    gr = find_groups(__import__("morphonnx").load(vit()))
    q, _ = group_of(gr, "qkv", 0)
    assert group_steps(gr)[q.id] % H == 0


def test_expand_writes_a_grown_transformer_with_heads_at_their_width(tmp_path):
    import json
    import subprocess
    import sys
    onnx.save(vit(), tmp_path / "vit.onnx")
    (tmp_path / "none.json").write_text(json.dumps({"masks": {}}))
    r = subprocess.run([sys.executable, "-m", "morphonnx", "expand", str(tmp_path / "vit.onnx"), "--masks",
                        str(tmp_path / "none.json"), "--budget", "200%", "-o", str(tmp_path / "big.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    big = onnx.load(tmp_path / "big.onnx")
    assert shape_const(big, "split_heads") == [1, N, 3, H, D]
    inits = {t.name: t for t in big.graph.initializer}
    assert inits["embed.weight"].dims[1] > C  # the stream grew


def test_head_dim_sliced_into_q_k_v_parts():
    """TorchScript's MaxViT: q, k and v cut out of each head's [q | k | v] by Slices."""
    n = tokens()
    x = linear(n, "x", 16, C, "embed")
    kd, vd = 2, 4
    per = 2 * kd + vd
    r = n.node("Reshape", [linear(n, x, C, H * per, "qkv"), i64(n, [1, N, H, per])], "split_heads")
    r = n.node("Transpose", [r], "heads", perm=[0, 2, 1, 3])
    cut = lambda a, b, name: n.node("Slice", [r, i64(n, [a]), i64(n, [b]), i64(n, [3])], name)
    q, k, v = cut(0, kd, "q"), cut(kd, 2 * kd, "k"), cut(2 * kd, per, "v")
    kt = n.node("Transpose", [k], "kt", perm=[0, 1, 3, 2])
    attn = n.node("Softmax", [n.node("MatMul", [q, kt], "scores")], "softmax", axis=-1)
    o = n.node("Transpose", [n.node("MatMul", [attn, v], "mix")], "back", perm=[0, 2, 1, 3])
    merged = n.node("Reshape", [o, i64(n, [1, N, H * vd])], "merge")
    gr = random_prune_ok(finish(n, n.node("Add", [x, linear(n, merged, H * vd, C, "proj")], "res")), seeds=(0, 1, 2, 3))
    assert group_of(gr, "qkv", 1) == group_of(gr, "qkv", kd + 1)
    assert group_of(gr, "qkv", 1)[0].pinned is None and group_of(gr, "merge", vd + 1) == group_of(gr, "qkv", per + 2 * kd + 1)
    masks = legalize(gr, random_masks(gr, 3))
    result = prune(gr, masks)
    bounds = {x.name: x for x in result.model.graph.node if x.op_type == "Slice"}
    assert set(bounds) >= {"q", "k", "v"}
