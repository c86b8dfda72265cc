"""The PyTorch adapter: the penalty equals MorphNet's formula computed independently, its
gradients equal finite differences, and its masks prune the BN-folded export of the same model
to exactly what the model computes with those channels silenced."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is part of the test environment")
torchvision = pytest.importorskip("torchvision")

import morphonnx  # noqa: E402
from morphonnx.masks import apply_silenced, legalize, masks_from_sources  # noqa: E402
from morphonnx.rewrite import prune  # noqa: E402
from morphonnx.verify import check  # noqa: E402
from morphonnx.torch import Regularizer  # noqa: E402


def randomized(name: str, seed: int = 0, below: float = 0.3, threshold: float = 0.01):
    """A torchvision model in float64 whose BN scales put `below` of the channels under the threshold."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                w = torch.rand(m.weight.shape, generator=gen, dtype=torch.float64) + 0.5
                dead = torch.rand(m.weight.shape, generator=gen) < below
                w[dead] = threshold * torch.rand(int(dead.sum()), generator=gen, dtype=torch.float64) * 0.5
                m.weight.copy_(w)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=torch.float64) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=torch.float64) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64) + 0.5)
    return model


def reference_penalty(reg: Regularizer) -> float:
    """MorphNet's FLOP regularizer, op by op from the groups (not from the compiled arrays)."""
    groups, plan, t = reg.groups, reg.groups.plan, reg.threshold
    slots = reg.slot_gammas()
    first = {}
    for i, g in enumerate(reg.program.slot_group):
        first.setdefault(int(g), i)
    consumed = {n: x for n, _, x in plan.consumers}

    def alive_and_reg(tensor):
        if tensor is None:
            return 1.0, 0.0
        alive = r = 0.0
        for e in plan.ids(tensor).tolist():
            gid, k = groups.element_group[e]
            if int(gid) in first:
                gamma = slots[first[int(gid)] + int(k)]
                alive += gamma > t
                r += gamma
            else:
                alive += 1
        return alive, r

    total = 0.0
    for c in morphonnx.cost_model(groups.graph).ops:
        if not c.costed or not c.flops:
            continue
        node = groups.graph.nodes[c.name]
        out = node.output[0] if node.output[0] in plan.spaces else None
        inp = consumed.get(c.name)
        if out is None and inp is None:
            inp = next((x for x in node.input if x in plan.spaces), None)
        (i, ri), (o, ro) = alive_and_reg(inp), alive_and_reg(out)
        i0 = plan.spaces[inp].size if inp else 1
        o0 = plan.spaces[out].size if out else 1
        if c.macs and inp and out:
            total += c.flops / (i0 * o0) * (i * ro + o * ri)
        elif out:
            total += c.flops / o0 * ro
        elif inp:
            total += c.flops / i0 * ri
    return total


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_penalty_equals_morphnet_formula_and_numpy(name):
    model = randomized(name)
    reg = Regularizer(model, (torch.randn(1, 3, 224, 224, dtype=torch.float64),), resource="flops")
    value = float(reg.penalty())
    alive, r = reg.program.alive_and_reg(reg.slot_gammas(), reg.threshold)
    assert value == pytest.approx(reg.program.penalty(alive, r), rel=1e-5)
    assert value == pytest.approx(reference_penalty(reg), rel=1e-5)
    assert 0 < reg.cost() < morphonnx.cost_model(reg.graph).total("flops")  # 30% of the channels are below


def test_gradients_match_finite_differences():
    model = randomized("resnet18")
    reg = Regularizer(model, (torch.randn(1, 3, 224, 224, dtype=torch.float64),), resource="latency",
                      profile="v100")
    reg.penalty().backward()
    rng = np.random.default_rng(0)
    for p in [model.bn1.weight, model.layer2[0].bn2.weight, model.layer4[1].bn1.weight]:
        for i in rng.choice(p.numel(), 3, replace=False):
            if float(p.detach().reshape(-1)[i]) < 0.1:
                continue  # stay away from the threshold, where alive counts jump
            eps = 1e-6
            with torch.no_grad():
                p.view(-1)[i] += eps
                up = float(reg.penalty())
                p.view(-1)[i] -= 2 * eps
                down = float(reg.penalty())
                p.view(-1)[i] += eps
            assert float(p.grad.reshape(-1)[i]) == pytest.approx((up - down) / (2 * eps), rel=1e-4)


def test_masks_prune_the_bn_folded_export(tmp_path):
    model = randomized("resnet18").float()
    x = torch.randn(1, 3, 224, 224)
    reg = Regularizer(model, (x,))
    reg.save_masks(tmp_path / "masks.json")
    doc = json.loads((tmp_path / "masks.json").read_text())
    assert "layer1.0.conv1.weight" in doc["masks"] and doc["silenced"]
    layers = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert set(reg.structure()) == set(reg.alive_masks()) == layers  # module names: layer4.0.downsample.0, fc
    torch.onnx.export(model.eval(), (x,), str(tmp_path / "folded.onnx"), dynamo=True)
    g = morphonnx.load(tmp_path / "folded.onnx")
    assert not any(n.op_type == "BatchNormalization" for n in g.model.graph.node)
    gr = morphonnx.find_groups(g)
    masks = masks_from_sources(gr, doc["masks"])
    apply_silenced(gr, masks, doc["silenced"])
    result = prune(gr, legalize(gr, masks))
    assert check(g, result.oracle, result.model).ok
    # and it computes the torch model with the dead channels' scales at 0
    slots = reg.slot_gammas()
    params = dict(model.named_parameters())
    with torch.no_grad():  # a channel dies when every BN scale of its group is under the threshold
        for name, where in reg.program.sources.items():
            dead = torch.as_tensor((where >= 0) & (slots[np.maximum(where, 0)] <= reg.threshold))
            params[name][dead] = 0
        expected = model(x).numpy()
    from morphonnx.oracle import session
    got = session(result.model).run(None, {g.inputs[0]: x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert morphonnx.cost_model(morphonnx.load(result.model)).total("flops") < 0.9 * morphonnx.cost_model(g).total("flops")


def test_penalty_under_torch_compile():
    model = torchvision.models.resnet18(weights=None)
    reg = Regularizer(model, (torch.randn(1, 3, 64, 64),))
    compiled = torch.compile(reg.penalty)
    value = compiled()
    assert float(value) == pytest.approx(float(reg.penalty()), rel=1e-6)
    value.backward()
    assert model.bn1.weight.grad is not None and model.bn1.weight.grad.abs().sum() > 0


def test_export_keeps_the_true_bn_values():
    from morphonnx.torch import export_bn_kept
    model = torchvision.models.resnet18(weights=None)  # fresh BNs: every scale 1, every shift 0
    proto = export_bn_kept(model, (torch.randn(1, 3, 64, 64),))
    inits = {t.name: onnx_to_array(t) for t in proto.graph.initializer}
    assert np.array_equal(inits["layer1.0.bn1.weight"], np.ones(64, np.float32))
    assert np.array_equal(inits["layer1.0.bn1.bias"], np.zeros(64, np.float32))
    assert float(model.layer1[0].bn1.weight[0]) == 1.0
    x = torch.randn(1, 3, 64, 64)
    from morphonnx.oracle import session
    got = session(proto).run(None, {proto.graph.input[0].name: x.numpy()})[0]
    assert np.abs(got - model.eval()(x).detach().numpy()).max() < 1e-4


def onnx_to_array(t):
    from onnx import numpy_helper
    return numpy_helper.to_array(t)


def test_apply_structure_shrink_equals_the_pruned_folded_export(tmp_path):
    """The resized torch model, exported BN-folded, computes what `prune` makes of the
    original's BN-folded export with the same masks."""
    from morphonnx.torch import apply_structure
    model = randomized("resnet18", below=0.0).float().eval()
    x = torch.randn(1, 3, 64, 64)
    folded = tmp_path / "folded.onnx"
    torch.onnx.export(model, (x,), str(folded), dynamo=True)
    g = morphonnx.load(folded)
    gr = morphonnx.find_groups(g)
    rng = np.random.default_rng(0)
    masks = {}
    for s in gr.plan.sources:
        if s.kind == "weight" and s.weight:
            keep = (rng.random(gr.plan.spaces[s.tensor].size) < 0.6).astype(int)
            keep[0] = 1
            masks[s.weight] = keep.tolist()
    small = apply_structure(model, (x,), masks=masks)
    assert small.layer1[0].conv1.out_channels < 64 and small.fc.out_features == 1000
    pruned = prune(gr, legalize(gr, masks_from_sources(gr, masks))).model
    from morphonnx.oracle import session
    want = session(pruned).run(None, {g.inputs[0]: x.numpy()})[0]
    with torch.no_grad():
        got = small(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_apply_structure_expand_has_the_predicted_macs():
    from morphonnx.expand import alive_widths, search, source_widths
    from morphonnx.masks import all_alive
    from morphonnx.penalty import compile_program
    from morphonnx.torch import apply_structure, export_bn_kept
    model = torchvision.models.mobilenet_v2(weights=None)
    x = torch.randn(1, 3, 64, 64)
    g = morphonnx.load(export_bn_kept(model, (x,)))
    gr = morphonnx.find_groups(g)
    program = compile_program(gr, "macs")
    e = search(program, gr, alive_widths(gr, all_alive(gr)), 1.4 * program.cost(program.full_alive()), 8)
    widths = {s.weight: n for s in gr.plan.sources if s.kind == "weight" and s.weight
              for n in [source_widths(gr, e.widths)[s.node]]}
    big = apply_structure(model, (x,), widths=widths)
    macs = morphonnx.cost_model(morphonnx.load(export_bn_kept(big, (x,)))).total("macs")
    assert macs == e.cost


def test_apply_structure_names_the_module_with_a_hard_coded_width():
    from morphonnx.torch import apply_structure

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn = torch.nn.BatchNorm2d(8)
            self.head = torch.nn.Linear(8 * 4 * 4, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            return self.head(x.view(-1, 8 * 16))  # the width 8 is written in the code

    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="fails in module 'head'"):
        apply_structure(Fixed(), (x,), masks={"conv.weight": [1, 0] * 4})


def test_apply_structure_on_the_digits_cnn():
    """The script's CNN: residual block, strided conv, a two-tower concat; shrink and expand."""
    import importlib.util
    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("morphnet_digits", ROOT / "scripts" / "morphnet_digits.py")
    md = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(md)
    from morphonnx.torch import apply_structure
    model = md.DigitsNet(md.SEED_WIDTHS).eval()
    x = torch.randn(2, 1, 16, 16)
    masks = {"stem.0.weight": [1, 0] * 16, "t1.0.weight": [1] * 20 + [0] * 12, "t2.0.weight": [0, 1, 1] * 16}
    small = apply_structure(model, (x,), masks=masks)
    assert small.stem[0].out_channels == 16 and small.b1b[0].out_channels == 16  # tied by the residual add
    assert small.fc.in_features == 20 + 32
    big = apply_structure(model, (x,), widths={"t1.0.weight": 40, "down.0.weight": 80})
    assert big.t1[0].out_channels == 40 and big.t2r[0].in_channels == 80 and big.fc.in_features == 40 + 48
    assert big(x).shape == (2, 10)


def tiny_vit():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "morphnet_digits_vit", Path(__file__).resolve().parent.parent / "scripts" / "morphnet_digits_vit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    return mod, mod.DigitsViT({"dim": 16, "blocks": [(4, 24), (4, 24)]}).eval()


def test_transformer_groups_take_weight_norms_as_gammas():
    """No BN: every group of a ViT (stream, MLP, q/k and v head_dims) gets the L2 norm of the
    rows that write it (and its LayerNorm entries) as its gamma; a tensor is a valid example input."""
    mod, model = tiny_vit()
    reg = Regularizer(model, mod.EXAMPLE)  # a tensor, not a tuple
    assert reg.program.learnable.sum() == len(reg.groups.groups) - 1  # all but the classifier
    assert set(reg.structure()) == {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    slots = reg.slot_gammas()
    qkv = model.blocks[0].attn.qkv
    rows = torch.cat([qkv.weight, qkv.bias[:, None]], 1).detach().double()
    fc1 = model.blocks[0].fc1
    expected_fc1 = torch.cat([fc1.weight, fc1.bias[:, None]], 1).detach().double().norm(dim=1).numpy()
    src = reg.program.sources["blocks.0.fc1.weight"]
    assert np.allclose(slots[src], expected_fc1)
    q = reg.program.sources["blocks.0.attn.qkv.weight"]
    d = 4 * 4  # heads × head_dim: q channel c and k channel c (row d + c) share one slot
    assert q[0] == q[d] and np.isclose(slots[q[0]], float(torch.cat([rows[0], rows[d]]).norm()))
    p = reg.penalty()
    p.backward()
    assert model.blocks[0].fc1.weight.grad.abs().sum() > 0 and model.embed.weight.grad.abs().sum() > 0
    assert model.blocks[0].norm1.weight.grad.abs().sum() > 0  # the stream's LayerNorm scales go with it


def test_dead_entries_make_torch_compute_the_pruned_file(tmp_path):
    mod, model = tiny_vit()
    reg = Regularizer(model, mod.EXAMPLE)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # kill a third of the MLP channels, head_dims and stream channels
        for name, p in model.named_parameters():
            if name.endswith(("fc1.weight", "qkv.weight", "embed.weight")):
                p[torch.rand(p.shape[0], generator=gen) < 0.33] *= 1e-4
    masks = reg.alive_masks()
    assert sum(len(v) - sum(v) for v in masks.values()) > 0
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, keep in reg.dead_entries().items():
            params[name].mul_(keep)
        x = torch.rand(2, 1, 16, 16)
        expected = model(x).numpy()
    import onnx
    onnx.save(mod.export_bn_kept(model, mod.EXAMPLE), str(tmp_path / "m.onnx"))
    reg.save_masks(tmp_path / "masks.json")
    g = morphonnx.load(tmp_path / "m.onnx")
    gr = morphonnx.find_groups(g)
    result = prune(gr, legalize(gr, masks_from_sources(gr, json.loads((tmp_path / "masks.json").read_text())["masks"])))
    onnx.save(result.model, str(tmp_path / "p.onnx"))
    assert check(g, result.oracle, str(tmp_path / "p.onnx")).ok
    from morphonnx.oracle import session
    got = np.concatenate([session(str(tmp_path / "p.onnx")).run(None, {g.inputs[0]: x[i:i + 1].numpy()})[0]
                          for i in range(2)])
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert morphonnx.cost_model(morphonnx.load(result.model)).total("macs") < morphonnx.cost_model(g).total("macs")


class ResidualNet(torch.nn.Module):
    """A small CNN: a stem, one residual block (two convs, the stem's channels tied to the block's
    output by the add) and a classifier."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.layer1 = torch.nn.Sequential(torchvision.models.resnet.BasicBlock(16, 16))
        self.head = torch.nn.Conv2d(16, 24, 1)  # a conv without BN
        self.fc = torch.nn.Linear(24, 10)

    def forward(self, x):
        x = self.layer1(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.relu(self.head(x)).mean((2, 3)))


def residual_net(seed: int = 0) -> ResidualNet:
    torch.manual_seed(seed)
    model = ResidualNet().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking BNs: distinct scales and shifts
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model


RESOURCES = ("flops", "macs", "size", "latency")


def analyzed(path) -> dict[str, float]:
    """Per resource, the figure of the file that `morphonnx analyze` reports (one sample)."""
    v100 = morphonnx.load_profile("v100")
    costs = morphonnx.cost_model(morphonnx.load(path))
    return {r: costs.resource(r, v100) for r in RESOURCES}


def pruned_case(tmp_path):
    """The residual net at a batch of 8, one regularizer per resource; `morphonnx analyze`'s
    figures of the model exported at one sample; then a third of the stem/residual channels
    (every BN of their group) and of layer1.0.conv1's die, their BN shifts at 0 too (a dead
    channel that still outputs its shift is folded into the next layer as a bias map, which the
    pruned file counts), and the figures of the file `morphonnx prune` makes of the model,
    exported again, with the saved masks."""
    import subprocess
    import sys

    import onnx
    from morphonnx.torch import export_bn_kept
    model = residual_net()
    x = torch.randn(8, 3, 16, 16)
    path = tmp_path / "model.onnx"
    onnx.save(export_bn_kept(model, (x[:1],)), str(path))
    regs = {r: Regularizer(model, x, resource=r, profile="v100" if r == "latency" else None) for r in RESOURCES}
    full, want = {r: reg.cost() for r, reg in regs.items()}, analyzed(path)
    with torch.no_grad():
        for bn, dead in ((model.bn1, slice(0, None, 3)), (model.layer1[0].bn2, slice(0, None, 3)),
                         (model.layer1[0].bn1, slice(1, None, 3))):
            bn.weight[dead] = 0
            bn.bias[dead] = 0
    onnx.save(export_bn_kept(model, (x[:1],)), str(path))  # the trained model, as README's flow exports it
    regs["flops"].save_masks(tmp_path / "masks.json")
    r = subprocess.run([sys.executable, "-m", "morphonnx", "prune", str(path), "--masks", str(tmp_path / "masks.json"),
                        "-o", str(tmp_path / "pruned.onnx")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return model, x, regs, full, want, analyzed(tmp_path / "pruned.onnx")


def test_costs_are_per_sample_and_equal_analyze_of_the_export_and_of_the_pruned_file(tmp_path):
    """Whatever the batch of the example input (a tensor or a tuple), cost() is the figure
    `morphonnx analyze` gives the model exported at one sample; after some channels die, the
    figure it gives the file `morphonnx prune` makes with the saved masks."""
    model, x, regs, full, want, pruned = pruned_case(tmp_path)
    totals = morphonnx.analyze(str(tmp_path / "model.onnx"), ["v100"]).to_dict()["totals"]  # the command's figures
    assert (totals["flops"], totals["macs"], totals["params"]) == (want["flops"], want["macs"], want["size"])
    assert totals["latency_s"]["v100"] == pytest.approx(want["latency"], rel=1e-12, abs=0)
    for r in RESOURCES:
        assert full[r] == pytest.approx(want[r], rel=1e-6, abs=0), r
    for reg in regs.values():
        assert reg.graph.static_shape(reg.graph.inputs[0], "input")[0] == 1  # compiled for one sample
    one = Regularizer(model, [x[:1]])
    assert Regularizer(model, (x,)).cost() == one.cost() == regs["flops"].cost()
    assert one.structure() == regs["flops"].structure() == {"conv1": 10, "layer1.0.conv1": 11, "layer1.0.conv2": 10,
                                                           "head": 24, "fc": 10}
    assert pruned["flops"] < 0.8 * want["flops"]
    for r in ("flops", "macs", "size"):
        assert regs[r].cost() == pytest.approx(pruned[r], rel=1e-6, abs=0), r


def test_latency_after_pruning_equals_analyze_of_the_pruned_file(tmp_path):
    _, _, regs, _, _, pruned = pruned_case(tmp_path)
    assert regs["latency"].cost() == pytest.approx(pruned["latency"], rel=1e-6, abs=0)


def test_latency_with_a_view_equals_analyze(tmp_path):
    import onnx
    from morphonnx.torch import export_bn_kept
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 10)).eval()
    x = torch.randn(4, 3, 8, 8)
    onnx.save(export_bn_kept(model, (x[:1],)), str(tmp_path / "m.onnx"))
    assert Regularizer(model, x, resource="latency", profile="v100").cost() == pytest.approx(
        analyzed(tmp_path / "m.onnx")["latency"], rel=1e-6, abs=0)


def test_names_are_the_models_module_names(tmp_path):
    """structure() and alive_masks() are keyed by the modules that own the weights; the ONNX
    node and weight of each stay available; the masks file keeps the export's weight names."""
    model = residual_net()
    convs = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert convs == {"conv1", "layer1.0.conv1", "layer1.0.conv2", "head", "fc"}
    reg = Regularizer(model, torch.randn(4, 3, 16, 16))
    with torch.no_grad():
        model.layer1[0].bn1.weight[:5] = 0
    assert set(reg.structure()) == set(reg.alive_masks()) == set(reg.onnx_names()) == convs
    assert reg.structure() == {"conv1": 16, "layer1.0.conv1": 11, "layer1.0.conv2": 16, "head": 24, "fc": 10}
    node, weight = reg.onnx_names()["layer1.0.conv1"]
    assert weight == "layer1.0.conv1.weight" and reg.graph.nodes[node].op_type == "Conv"
    assert reg.onnx_masks()[weight] == reg.alive_masks()["layer1.0.conv1"]
    reg.save_masks(tmp_path / "masks.json")
    assert set(json.loads((tmp_path / "masks.json").read_text())["masks"]) == {f"{n}.weight" for n in convs}
    from morphonnx.torch import apply_structure  # takes the module-keyed masks
    small = apply_structure(model, (torch.randn(2, 3, 16, 16),), masks=reg.alive_masks())
    assert small.layer1[0].conv1.out_channels == 11 and small.conv1.out_channels == 16


def test_module_names_of_both_torch_exporters():
    """The dynamo export names initializers after the parameters; the TorchScript export writes
    `onnx::Conv_N` for the weights it folded a BN into, named here by the node's scope
    (`/layer1/layer1.0/conv1/Conv`): both map to the same modules and parameters."""
    import io
    import warnings

    import onnx
    from morphonnx.adapters.torch import export_bn_kept, module_names, parameter_names
    model = residual_net()
    x = torch.randn(1, 3, 16, 16)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False)  # eval: BN folded into the convs
    forms = {"dynamo": export_bn_kept(model, (x,)), "torchscript": onnx.load_from_string(buf.getvalue())}
    params = dict(model.named_parameters())
    modules = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "head", "fc"]
    for form, proto in forms.items():
        g = morphonnx.load(proto)
        sources = [s for s in morphonnx.find_groups(g).plan.sources if s.kind == "weight"]
        parameter_of = parameter_names(g, model)
        names = module_names(morphonnx.find_groups(g), parameter_of, params)
        assert sorted(names[s.node] for s in sources) == sorted(modules), form
        assert sorted(parameter_of[s.weight] for s in sources) == sorted(f"{m}.weight" for m in modules), form
        folded = [s.weight for s in sources if s.weight.startswith("onnx::")]
        assert len(folded) == (3 if form == "torchscript" else 0), form  # the three convs with a BN
