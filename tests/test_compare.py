"""compare: per-op latency, bound labels and ratios that follow from the profiles' numbers;
the original/pruned speedup; the plot; inputs that are not a pair; bad profiles."""
from __future__ import annotations

import json

import pytest

from morphonnx import BadInput, load_profile
from morphonnx.cli import main
from morphonnx.compare import compare

from conftest import SMALL_CNN


def by_hand(op, profile):
    if op.fused_into:  # run inside the kernel of the conv or matmul before it
        return 0.0, "fused"
    compute = op.flops / (profile.peak_gflops["fp32"] * 1e9)
    memory = op.bytes / (profile.bandwidth_gbs * 1e9)
    return max(compute, memory), "compute" if compute >= memory else "memory"


def check_ops_by_hand(comparison, names):
    doc = comparison.to_dict()
    p100, v100 = load_profile("p100"), load_profile("v100")
    costs = {c.name: c for c in comparison.sides[0].costs.ops}
    rows = {o["name"]: o for o in doc["ops"]}
    for name in names:
        for p in (p100, v100):
            t, bound = by_hand(costs[name], p)
            assert rows[name]["latency_s"][p.key] == pytest.approx(t, rel=1e-12)
            assert rows[name]["bound"][p.key] == bound
        if not costs[name].fused_into:
            assert rows[name]["ratio"]["v100/p100"] == pytest.approx(
                by_hand(costs[name], v100)[0] / by_hand(costs[name], p100)[0])
    return doc


def test_latency_ratios_and_labels_follow_from_the_yaml():
    c = compare([SMALL_CNN], ["p100", "v100"])
    doc = check_ops_by_hand(c, ["stem.conv", "block1.add", "se.pool", "se.scale", "logits"])
    rows = {o["name"]: o for o in doc["ops"]}
    # a 16-channel 3x3 conv on 32x32 does 56 FLOPs per byte: above P100's ridge point (14.5), so compute-bound
    assert rows["block1.a.conv"]["bound"] == {"p100": "compute", "v100": "compute"}
    assert rows["se.scale"]["bound"] == {"p100": "memory", "v100": "memory"}
    # the residual add and the ReLU after it run in block1.b.conv's kernel
    assert rows["block1.add"]["bound"] == rows["block1.relu"]["bound"] == {"p100": "fused", "v100": "fused"}
    assert doc["models"][0]["latency_s"]["p100"] == pytest.approx(sum(o["latency_s"]["p100"] for o in doc["ops"]))


def test_pruned_pair_speedup_and_plot(tmp_path, capsys):
    pruned = tmp_path / "pruned.onnx"
    masks = tmp_path / "m.json"
    masks.write_text(json.dumps({"masks": {"block1.a.conv": [1, 0] * 8}}))
    assert main(["prune", str(SMALL_CNN), "-o", str(pruned), "--masks", str(masks)]) == 0
    out, plot = tmp_path / "cmp.json", tmp_path / "cmp.png"
    assert main(["compare", str(SMALL_CNN), str(pruned), "--profile", "p100", "--profile", "v100",
                 "--json", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "speedup p100" in text and "warning" not in text
    doc = json.loads(out.read_text())
    assert doc["matching"][0]["looks_like_a_pair"] and doc["speedup"][0]["p100"] > 1
    row = next(o for o in doc["ops"] if o["name"] == "block1.a.conv")
    assert row["model1"]["speedup"]["p100"] == pytest.approx(2.0, rel=0.01)  # half the output channels
    widths = {r["layer"]: r["width"] for r in doc["layers"]}
    assert widths["block1.a.conv.weight"] == {"model0": 16, "model1": 8}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000


def test_models_that_are_not_a_pair(tmp_path, capsys):
    from conftest import SMALL_CNN, Net
    import onnx
    n = Net()
    other = n.model(n.cbr("x", 4, 8, name="unrelated"))
    onnx.save(other, tmp_path / "other.onnx")
    assert main(["compare", str(SMALL_CNN), str(tmp_path / "other.onnx"), "--profile", "v100"]) == 0
    text = capsys.readouterr().out
    assert "does not look like a pruned copy of the reference: 0 ops share a name" in text


def test_bad_profiles_exit_2(tmp_path, capsys):
    assert main(["compare", str(SMALL_CNN), "--profile", "nope"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
    assert main(["compare", str(SMALL_CNN), "--profile", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["compare", str(SMALL_CNN)]) == 2
    assert "at least one --profile" in capsys.readouterr().err
    assert main(["compare", str(SMALL_CNN), "--profile", "v100", "--plot", str(tmp_path / "x.txt")]) == 2
    assert not (tmp_path / "x.txt").exists()


def test_group_latency_per_channel():
    import morphonnx
    from morphonnx.groups import add_latency_per_channel
    g = morphonnx.load(SMALL_CNN)
    gr = morphonnx.find_groups(g)
    add_latency_per_channel(gr, load_profile("v100"))
    a = next(x for x in gr.groups if any(s.node == "block1.a.conv" for s, _ in x.sources))
    cm = morphonnx.cost_model(g)
    v100 = load_profile("v100")
    v100.prepare(cm)  # the BN and ReLU run in the conv's kernel: they cost nothing of their own
    costs = {c.name: c for c in cm.ops}
    # block1.a's channels: out of its conv, through BN and ReLU, into block1.b's conv
    expected = sum(v100.latency(costs[n])[0] for n in ("block1.a.conv", "block1.a.bn", "block1.a.relu",
                                                        "block1.b.conv")) / 16
    assert a.latency_per_channel["v100"] == pytest.approx(expected)
    with pytest.raises(BadInput):
        load_profile("nope")


@pytest.mark.zoo
def test_resnet50_on_p100_and_v100(zoo, tmp_path):
    out, manifest = zoo
    c = compare([out / manifest["resnet50"]["files"]["folded"]], ["p100", "v100"])
    costs = c.sides[0].costs.ops
    convs = [x.name for x in costs if x.op_type == "Conv"]
    others = [x.name for x in costs if x.op_type in ("Add", "Relu", "MaxPool", "Gemm")]
    doc = check_ops_by_hand(c, convs[:3] + convs[-3:] + others[:4])
    bounds = {o["bound"]["v100"] for o in doc["ops"]}
    assert bounds >= {"compute", "memory"}
    c.plot(tmp_path / "r50.png")
    assert (tmp_path / "r50.png").stat().st_size > 50_000
