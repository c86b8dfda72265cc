"""The rewrite: folds of what removed channels leave behind, names, external data, and the
contract on every model and form of the zoo with random masks (one seed per case)."""
from __future__ import annotations

import json
import zlib

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import morphonnx
from morphonnx.groups import find_groups
from morphonnx.masks import all_alive, legalize, masks_document, masks_from_sources, read_masks_file
from morphonnx.output import Outputs
from morphonnx.rewrite import prune
from morphonnx.verify import check

from conftest import Net, export_zoo, random_masks, random_prune_ok
from test_masks import blocks, resnext_block


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


ZOO_XFAIL: dict[tuple[str, str], str] = {}  # (name, form) → why it fails today: none do
ZOO_FILES = [(n, f) for n in export_zoo.TORCH_MODELS for f in export_zoo.TORCH_FORMS] + \
    [(n, f) for n in export_zoo.TIMM_MODELS for f in export_zoo.TIMM_FORMS] + \
    [(n, "onnx") for n in export_zoo.KERAS_MODELS]


def zoo_seed(name: str, kind: str) -> int:
    """One seed per case (stable across runs); scripts/zoo_sweep.py runs all three."""
    return zlib.crc32(f"{name}.{kind}".encode()) % 3


@pytest.mark.zoo
@pytest.mark.parametrize("name, kind", [
    pytest.param(n, f, marks=pytest.mark.xfail(strict=True, reason=ZOO_XFAIL[n, f])) if (n, f) in ZOO_XFAIL
    else (n, f) for n, f in ZOO_FILES])
def test_random_masks_on_the_zoo(zoo, name, kind, tmp_path):
    out, manifest = zoo
    if kind not in manifest[name]["files"]:
        pytest.skip(f"export failed: {manifest[name]['export_failed'][kind]}")
    g = morphonnx.load(out / manifest[name]["files"][kind])
    gr = find_groups(g)
    seed = zoo_seed(name, kind)
    result = prune(gr, random_masks(gr, seed))
    with Outputs() as outputs:  # the file as written, reopened from disk
        staged = outputs.model(tmp_path / "pruned.onnx", result.model, external=bool(g.external_files()))
        c = check(g, result.oracle, staged)
        assert c.ok, f"seed {seed}: relative error {c.relative:.2e}, checker {c.checker}; {c.notes}"
        assert morphonnx.cost_model(morphonnx.load(staged)).total("macs") < morphonnx.cost_model(g).total("macs")


# ---- constants shared or routed by the exporter -----------------------------------------------------

def _shared_zero_bias_net(through_identity: bool) -> onnx.ModelProto:
    """Two MLP convs (ConvNeXt/PoolFormer style) whose zero biases the exporter merged into one
    initializer: read directly by both, or by the second through an Identity."""
    import numpy as np
    from onnx import helper
    n = Net(channels=4, size=4)
    zero = n.const(np.zeros(6), "fc1.bias")
    h = n.node("Relu", [n.bn(n.conv("x", 4, 6, k=1, bias=False, name="stem"), 6, name="stem.bn")])
    shared = zero
    if through_identity:
        shared = n.node("Identity", [zero], "fc2.bias")
    a = n.node("Conv", [h, n.param((6, 6, 1, 1), "fc1.weight"), zero], "fc1", kernel_shape=[1, 1])
    a = n.node("Relu", [a])
    b = n.node("Conv", [a, n.param((6, 6, 1, 1), "fc2.weight"), shared], "fc2", kernel_shape=[1, 1])
    b = n.node("Relu", [b])
    p = n.node("Flatten", [n.node("GlobalAveragePool", [b])], axis=1)
    del helper
    return n.model(n.node("Gemm", [p, n.param((3, 6), "fc.weight")], "fc", transB=1))


@pytest.mark.parametrize("through_identity", [False, True])
def test_shared_bias_cut_differently_gets_a_copy_per_consumer(tmp_path, through_identity):
    import numpy as np
    import onnxruntime as ort
    from morphonnx.oracle import random_inputs
    g = morphonnx.load(_shared_zero_bias_net(through_identity))
    gr = find_groups(g)
    masks = masks_from_sources(gr, {"fc1.weight": [1, 0, 1, 0, 0, 1], "fc2.weight": [0, 1, 1, 1, 1, 0]})
    result = prune(gr, masks)
    with Outputs() as out:
        out.model(tmp_path / "p.onnx", result.model)
        out.commit()
    written = onnx.load(str(tmp_path / "p.onnx"))
    biases = {n.name: n.input[2] for n in written.graph.node if n.name in ("fc1", "fc2")}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in written.graph.initializer}
    assert inits[biases["fc1"]].shape == (3,) and inits[biases["fc2"]].shape == (4,)
    ort.InferenceSession(str(tmp_path / "p.onnx")).run(None, random_inputs(g, 0))
    oracle = {n.name: n.input[2] for n in result.oracle.to_model().graph.node if n.name in ("fc1", "fc2")}
    assert oracle["fc1"] != oracle["fc2"]  # silenced differently: a copy each
    c = check(g, result.oracle, tmp_path / "p.onnx")
    assert c.ok and c.relative < 1e-5
    assert np.isfinite(c.max_abs_error)


def test_torchscript_se_block_counts_like_torch_and_prunes(tmp_path):
    """A squeeze-excitation net exported with the legacy TorchScript exporter, BN kept: its equal
    zero SE biases are merged and routed through Identity nodes."""
    import torch
    from torch import nn

    class SE(nn.Module):
        def __init__(self, c, r):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)
            nn.init.zeros_(self.fc1.bias)
            nn.init.zeros_(self.fc2.bias)

        def forward(self, x):
            s = x.mean((2, 3), keepdim=True)
            return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))

    def block(cin, c):
        return nn.Sequential(nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), SE(c, 4))

    torch.manual_seed(0)
    net = nn.Sequential(block(3, 8), block(8, 8), block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.2)
    path = tmp_path / "se.onnx"
    torch.onnx.export(net.eval(), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    exported = onnx.load(str(path))
    assert any(n.op_type == "Identity" for n in exported.graph.node)  # what this test is about
    g = morphonnx.load(path)
    assert morphonnx.cost_model(g).params == sum(p.numel() for p in net.parameters())
    gr = random_prune_ok(path)
    assert sum(1 for grp in gr.groups if not grp.pinned) >= 3

# ---- grouped convolutions: equal groups, whole groups removed ---------------------------------------

def conv_node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def group_attr(model: onnx.ModelProto, name: str) -> int:
    return next(a.i for a in conv_node(model, name).attribute if a.name == "group")


def weight_shape(model: onnx.ModelProto, name: str) -> list[int]:
    return next(list(t.dims) for t in model.graph.initializer if t.name == name)


@pytest.mark.parametrize("residual_around_gconv", [False, True])
@pytest.mark.parametrize("mode", ["equal", "whole"])
def test_resnext_block_with_random_masks(mode, residual_around_gconv):
    g = morphonnx.load(resnext_block(residual_around_gconv=residual_around_gconv))
    gr = find_groups(g)
    for seed in range(6):
        masks = legalize(gr, random_masks(gr, seed, legal=False), conv_groups=mode)
        result = prune(gr, masks)
        c = check(g, result.oracle, result.model)
        assert c.ok, f"seed {seed}: relative error {c.relative:.2e}, checker {c.checker}"
        dead = len(masks.dead_conv_groups.get("g.conv", []))
        assert group_attr(result.model, "g.conv") == 4 - dead


def test_whole_conv_groups_are_removed_from_the_model():
    g = morphonnx.load(resnext_block())
    gr = find_groups(g)
    masks = masks_from_sources(gr, {"a.conv": blocks([4, 4, 1, 4]), "g.conv": blocks([3, 4, 1, 2])})
    equal, whole = legalize(gr, masks), legalize(gr, masks, conv_groups="whole")
    assert sum(c.count for c in whole.revived) < sum(c.count for c in equal.revived)
    for m, groups_left, shape in ((equal, 4, [16, 4, 3, 3]), (whole, 3, [12, 4, 3, 3])):
        result = prune(gr, m)
        assert check(g, result.oracle, result.model).ok
        assert group_attr(result.model, "g.conv") == groups_left
        assert weight_shape(result.model, "g.conv.weight") == shape
    assert weight_shape(result.model, "a.conv.weight") == [12, 8, 1, 1]


def test_conv_groups_dead_in_the_masks_go_in_either_mode():
    g = morphonnx.load(resnext_block())
    gr = find_groups(g)
    masks = masks_from_sources(gr, {"a.conv": blocks([2, 0, 2, 0]), "g.conv": blocks([1, 0, 3, 0])})
    for mode in ("equal", "whole"):
        result = prune(gr, legalize(gr, masks, conv_groups=mode))
        assert check(g, result.oracle, result.model).ok
        assert group_attr(result.model, "g.conv") == 2 and weight_shape(result.model, "g.conv.weight") == [6, 2, 3, 3]


def test_unequal_conv_groups_are_refused_by_the_rewrite():
    gr = find_groups(morphonnx.load(resnext_block()))
    with pytest.raises(ValueError, match="do not form equal conv groups"):
        prune(gr, masks_from_sources(gr, {"g.conv": blocks([3, 4, 4, 4])}))


@pytest.mark.parametrize("mode", ["equal", "whole"])
def test_applied_masks_reproduce_the_model(mode, tmp_path):
    g = morphonnx.load(resnext_block())
    gr = find_groups(g)
    for seed in range(3):
        result = prune(gr, legalize(gr, random_masks(gr, seed, legal=False), multiple=3, conv_groups=mode))
        (tmp_path / "applied.json").write_text(json.dumps(masks_document(gr, result.masks)))
        again = legalize(gr, masks_from_sources(gr, read_masks_file(tmp_path / "applied.json")), multiple=3,
                         conv_groups=mode)
        assert not again.changes
        assert prune(gr, again).model.SerializeToString() == result.model.SerializeToString()


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_convs_are_not_conv_groups(multiplier):
    n = Net()
    x = n.cbr("x", 4, 6, name="pre")
    dw = n.cbr(x, 6, 6 * multiplier, group=6, name="dw")
    y = n.cbr(dw, 6 * multiplier, 4, k=1, name="pw")
    m = n.model(n.node("Flatten", [n.node("GlobalAveragePool", [y])], axis=1))
    g = morphonnx.load(m)
    gr = find_groups(g)
    assert not gr.plan.grouped_convs
    masks = masks_from_sources(gr, {"pre.conv": [1, 0, 0, 1, 0, 0]})
    for mode in ("equal", "whole"):
        legal = legalize(gr, masks, conv_groups=mode)
        assert not legal.changes and not legal.dead_conv_groups
        result = prune(gr, legal)
        assert check(g, result.oracle, result.model).ok and group_attr(result.model, "dw.conv") == 2


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


def test_fp16_model_prunes_in_its_dtype(tmp_path):
    """An fp16 model: folded constants in fp16 (the checker refuses mixed types), checked in fp16
    with fp16's tolerance on the written file."""
    from onnx import TensorProto, helper, numpy_helper
    m = bn_kept_net()
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info(m.graph.output[0].name, TensorProto.FLOAT16, [1, 3]))
    g = morphonnx.load(m)
    gr = find_groups(g)
    result = prune(gr, masks_from_sources(gr, {"a.bn": [1, 0, 1, 1, 0, 1, 1, 1]}))
    assert set(result.folds.values()) == {"bias", "bias map"}
    with Outputs() as out:
        out.model(tmp_path / "h.onnx", result.model)
        out.commit()
    c = check(g, result.oracle, tmp_path / "h.onnx")
    assert c.ok and c.tolerance == 1e-2 and c.checker == "passed"
    assert {t.data_type for t in onnx.load(str(tmp_path / "h.onnx")).graph.initializer} == {TensorProto.FLOAT16}


@pytest.mark.parametrize("bias", ["computed", "empty", "beta0"])
def test_fold_into_a_gemm_whose_bias_is_not_a_constant(bias):
    """LeViT's BN-linear: a Gemm whose bias input is computed (or named empty, or beta 0) gets
    the folded constant in an Add after it, never a fourth input."""
    n = Net(size=4)
    x = n.cbr("x", 4, 8, name="a")
    p = n.node("Flatten", [n.node("GlobalAveragePool", [x])], "flat", axis=1)
    w = n.param((3, 8), "fc.weight")
    attrs = {"transB": 1}
    if bias == "computed":
        c = n.node("Relu", [n.param((3,), "fc.raw_bias")], "fc.bias_relu")
        ins = [p, w, c]
    elif bias == "empty":
        ins = [p, w, ""]
    else:
        ins, attrs = [p, w, n.param((3,), "fc.bias")], {"transB": 1, "beta": 0.0}
    m = n.model(n.node("Gemm", ins, "fc", **attrs))
    g = morphonnx.load(m)
    gr = find_groups(g)
    result = prune(gr, masks_from_sources(gr, {"a.bn": [1, 0, 1, 1, 0, 1, 1, 1]}))
    fc = next(x for x in result.model.graph.node if x.name == "fc")
    assert len(fc.input) <= 3 and check(g, result.oracle, result.model).ok


def layer_norm(x: str, g: str, b: str, y: str, name: str, decomposed: bool) -> list[onnx.NodeProto]:
    """LayerNormalization over the last axis, or written out as the TorchScript exporter does below opset 17."""
    from onnx import helper
    if not decomposed:
        return [helper.make_node("LayerNormalization", [x, g, b], [y], name=name, axis=-1)]
    return [helper.make_node("ReduceMean", [x], [f"{name}.m"], name=f"{name}.mean", axes=[-1]),
            helper.make_node("Sub", [x, f"{name}.m"], [f"{name}.d"], name=f"{name}.sub"),
            helper.make_node("Pow", [f"{name}.d", "two"], [f"{name}.d2"], name=f"{name}.pow"),
            helper.make_node("ReduceMean", [f"{name}.d2"], [f"{name}.v"], name=f"{name}.var", axes=[-1]),
            helper.make_node("Add", [f"{name}.v", "eps"], [f"{name}.ve"], name=f"{name}.eps"),
            helper.make_node("Sqrt", [f"{name}.ve"], [f"{name}.s"], name=f"{name}.sqrt"),
            helper.make_node("Div", [f"{name}.d", f"{name}.s"], [f"{name}.n"], name=f"{name}.div"),
            helper.make_node("Mul", [f"{name}.n", g], [f"{name}.g"], name=f"{name}.scale"),
            helper.make_node("Add", [f"{name}.g", b], [y], name=f"{name}.shift")]


def stream_net(pos_const: bool, decomposed: bool = False) -> onnx.ModelProto:
    """A transformer-like residual stream of 16 channels over 4 tokens: an embedding (MatMul +
    bias, and a position embedding when `pos_const`), two LayerNorm-MLP-residual blocks, a final
    LayerNorm and a head. The stream's channels are tied through every LayerNorm (written out
    in opset 14 when `decomposed`)."""
    from onnx import helper

    from conftest import init, model, tensor
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["e0"], name="embed"),
             helper.make_node("Add", ["e0", "b0"], ["e1"], name="embed.bias")]
    inits = [init("w0", (8, 16), 1), init("b0", (16,), 2)]
    s = "e1"
    if pos_const:
        nodes.append(helper.make_node("Add", ["e1", "pos"], ["e2"], name="pos"))
        inits.append(init("pos", (1, 4, 16), 3))
        s = "e2"
    for k in range(2):
        p = f"blk{k}"
        nodes += layer_norm(s, f"{p}.g", f"{p}.b", f"{p}.n", f"{p}.ln", decomposed)
        nodes += [helper.make_node("MatMul", [f"{p}.n", f"{p}.w1"], [f"{p}.h"], name=f"{p}.fc1"),
                  helper.make_node("Relu", [f"{p}.h"], [f"{p}.r"], name=f"{p}.act"),
                  helper.make_node("MatMul", [f"{p}.r", f"{p}.w2"], [f"{p}.o"], name=f"{p}.fc2"),
                  helper.make_node("Add", [f"{p}.o", f"{p}.b2"], [f"{p}.ob"], name=f"{p}.fc2.bias"),
                  helper.make_node("Add", [s, f"{p}.ob"], [f"{p}.s"], name=f"{p}.residual")]
        inits += [init(f"{p}.g", (16,), 10 + k), init(f"{p}.b", (16,), 20 + k), init(f"{p}.w1", (16, 24), 30 + k),
                  init(f"{p}.w2", (24, 16), 40 + k), init(f"{p}.b2", (16,), 50 + k)]
        s = f"{p}.s"
    nodes += layer_norm(s, "ln.g", "ln.b", "n", "final.ln", decomposed)
    nodes += [helper.make_node("MatMul", ["n", "head"], ["y"], name="head")]
    inits += [init("ln.g", (16,), 60), init("ln.b", (16,), 61), init("head", (16, 5), 62)]
    if decomposed:
        inits += [init("two", (), value=2.0), init("eps", (), value=1e-5)]
    return model(nodes, [tensor("x", [1, 4, 8])], [tensor("y", [1, 4, 5])], inits, opset=14 if decomposed else 17)


@pytest.mark.parametrize("pos_const", [False, True])
def test_layer_norm_stream_prunes_exactly(pos_const, tmp_path):
    """Removed stream channels: the pruned LayerNorms normalize the kept channels with the original
    count (and, with a position embedding, the removed channels' constant values), on the file."""
    g = morphonnx.load(stream_net(pos_const))
    gr = find_groups(g)
    stream = next(grp for grp in gr.groups if grp.size == 16)
    assert stream.pinned is None
    masks = masks_from_sources(gr, {"embed": [1, 0] * 8})
    result = prune(gr, masks)
    path = tmp_path / "pruned.onnx"
    with Outputs([]) as out:
        out.model(path, result.model)
        out.commit()
    c = check(g, result.oracle, path)
    assert c.ok and c.relative < 1e-5, c.describe()
    written = onnx.load(str(path))
    w = {t.name: t for t in written.graph.initializer}
    assert list(w["w0"].dims) == [8, 8] and list(w["head"].dims) == [8, 5]
    assert [n.op_type for n in written.graph.node].count("LayerNormalization") == 3
    removed = [numpy_helper.to_array(t) for n, t in w.items() if n.endswith(".removed_values")]
    assert len(removed) == 3  # each norm sees the removed channels' values again: the position embedding's
    assert any(np.any(v) for v in removed) == pos_const
    random_prune_ok(stream_net(pos_const))


def test_written_out_layer_norm_stream_prunes_exactly(tmp_path):
    """Below opset 17 TorchScript writes LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/
    Mul/Add: pruned like LayerNormalization (removed values appended, scale and bias 0 there)."""
    g = morphonnx.load(stream_net(True, decomposed=True))
    gr = find_groups(g)
    assert next(grp for grp in gr.groups if grp.size == 16).pinned is None
    result = prune(gr, masks_from_sources(gr, {"embed": [1, 0] * 8}))
    path = tmp_path / "pruned.onnx"
    onnx.save(result.model, str(path))
    c = check(g, result.oracle, str(path))
    assert c.ok and c.relative < 1e-5, c.describe()
    written = onnx.load(str(path))
    assert {t.name: list(t.dims) for t in written.graph.initializer}["w0"] == [8, 8]
    assert "LayerNormalization" not in {n.op_type for n in written.graph.node}
    random_prune_ok(stream_net(False, decomposed=True))


def test_class_token_joined_to_the_stream_enters_the_norms_statistics(tmp_path):
    """A class token concatenated to the tokens (no position embedding after it): a removed
    stream channel holds the token's value at position 0, which the norms must still see
    (found on timm's BEiT and CoaT, where it was taken for a zero)."""
    from onnx import helper

    from conftest import init, model, tensor
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["e0"], name="embed"),
             helper.make_node("Add", ["e0", "b0"], ["e1"], name="embed.bias"),
             helper.make_node("Concat", ["cls", "e1"], ["t"], name="join", axis=1),
             helper.make_node("LayerNormalization", ["t", "g", "b"], ["n"], name="ln", axis=-1),
             helper.make_node("MatMul", ["n", "head"], ["y"], name="head")]
    inits = [init("w0", (8, 16), 1), init("b0", (16,), 2), init("cls", (1, 1, 16), 3), init("g", (16,), 4),
             init("b", (16,), 5), init("head", (16, 5), 6)]
    g = morphonnx.load(model(nodes, [tensor("x", [1, 4, 8])], [tensor("y", [1, 5, 5])], inits))
    gr = find_groups(g)
    result = prune(gr, masks_from_sources(gr, {"embed": [1, 0] * 8}))
    path = tmp_path / "pruned.onnx"
    onnx.save(result.model, str(path))
    c = check(g, result.oracle, str(path))
    assert c.ok and c.relative < 1e-5, c.describe()


def test_written_out_layer_norm_without_scale_pins():
    """No per-channel scale: a removed channel would output its normalized value, not 0."""
    m = stream_net(False, decomposed=True)
    for n in m.graph.node:
        if n.op_type == "Mul" and n.input[1].endswith(".g"):
            n.input[1] = "two"
    gr = find_groups(morphonnx.load(m))
    assert next(grp for grp in gr.groups if grp.size == 16).pinned


def test_bn_reading_one_initializer_at_two_inputs_is_cut_once():
    """A dynamo export (timm's EfficientFormerV2 head) that reuses a BN's scale as its running
    variance and its bias as its running mean: each input is cut once, on its own copy."""
    n = Net(channels=4, size=6)
    c = n.conv("x", 4, 8, k=3, bias=False, name="a")
    rng = np.random.default_rng(0)
    s, b = n.const(rng.uniform(0.5, 1.5, 8), "bn.weight"), n.const(rng.uniform(0.1, 0.5, 8), "bn.bias")
    y = n.node("Relu", [n.node("BatchNormalization", [c, s, b, b, s], "a.bn")])
    p = n.node("Flatten", [n.node("GlobalAveragePool", [n.cbr(y, 8, 8, k=3, name="post")])], axis=1)
    random_prune_ok(n.model(n.node("Gemm", [p, n.param((3, 8), "fc.weight")], "fc", transB=1)))
