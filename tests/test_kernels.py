"""Kernels as onnxruntime runs them: the optimized CPU graph mapped onto the loaded ops, the
kernel latency model of a profile, and its fit on microbenchmarks."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from onnx import numpy_helper

import morphonnx
from morphonnx.errors import BadInput
from morphonnx.kernels import kernel_map, optimized_model, standard_fusions
from morphonnx.microbench import Bench, _Net, fit
from morphonnx.penalty import compile_program
from morphonnx.profiles import Profile, kernel_work, load_profile


def conv_block(runtime_bias: bool = False, residual: bool = True, c: int = 32):
    """conv → BN → (+ x) → Relu, as an export writes it (a bias computed at run time from the
    input's type, as the dynamo exporter writes `bias=False`, with `runtime_bias`)."""
    net = _Net(np.random.default_rng(0))
    y = net.conv("x", c, c, 3, 1, 1, runtime_bias)
    y = net.bn(y, c)
    if residual:
        y = net.node("Add", [y, "x"])
    y = net.node("Relu", [y])
    return net.model({"x": (1, c, 28, 28)}, y)[0]


def kernel_profile(**kernels) -> Profile:
    ks = {"*": {"overhead_us": 1.0, "gmacs": 100.0, "read_gbs": 10.0, "write_gbs": 10.0, "weight_gbs": 20.0},
          **kernels}
    return Profile("k", "test", {"fp32": 1000.0}, 50.0, run_overhead_us=5.0, channel_block=16,
                   sources={"kernels": "test"}, kernels=ks)


def test_a_fused_conv_block_is_one_kernel_carried_by_the_conv():
    """onnxruntime folds the BN into the conv and fuses the activation: the conv carries the one
    kernel, BN and Relu no work of their own (at most the reorders out of the blocked layout)."""
    m = conv_block(residual=False)
    g = morphonnx.load(m)
    km = kernel_map(g, optimized_model(m))
    conv = next(n for n in g.nodes if g.nodes[n].op_type == "Conv")
    main = [cls for cls, own in km.kernels[conv] if own]
    assert len(main) == 1 and main[0].removeprefix("nchwc.").startswith("Conv.kxk")
    assert all(not any(own for _, own in km.kernels.get(n, ())) and km.kernels.get(n, []) != km.kernels[conv]
               for n in g.nodes if g.nodes[n].op_type in ("BatchNormalization", "Relu"))


def test_a_bias_computed_at_run_time_keeps_the_bn_apart():
    """The dynamo exporter's bias=False (zeros cast like the input) is computed at every run:
    onnxruntime cannot fold the BN into the conv, and the map says so (the BN runs its own kernel)."""
    m = conv_block(runtime_bias=True)
    g = morphonnx.load(m)
    km = kernel_map(g, optimized_model(m))
    bn = next(n for n in g.nodes if g.nodes[n].op_type == "BatchNormalization")
    assert km.roles[bn] == "kernel"
    conv = next(n for n in g.nodes if g.nodes[n].op_type == "Conv")
    assert not any(cls.startswith("nchwc.") for cls, _ in km.kernels[conv])


def test_kernel_latency_sums_the_kernels_an_op_carries():
    m = conv_block(residual=False)
    costs = morphonnx.cost_model(morphonnx.load(m))
    p = kernel_profile()
    total = costs.resource("latency", p)
    per_op = [p.latency(c) for c in costs.ops]
    assert total == pytest.approx(sum(t for t, _ in per_op) + 5e-6)
    fused = [c for c in costs.ops if c.runtime == ()]
    assert fused and all(p.latency(c) == (0.0, "fused") for c in fused)
    conv = next(c for c in costs.ops if c.op_type == "Conv")
    cls, amounts = next(kernel_work(conv))
    # whole blocks of 16; one group: no cost per group
    assert list(amounts) == [conv.macs, conv.read_bytes, conv.write_bytes, conv.weight_bytes, 0]


def test_unaligned_channels_cost_whole_blocks_in_the_blocked_layout():
    costs = morphonnx.cost_model(morphonnx.load(conv_block(c=40)))
    costs.attach_runtime()
    conv = next(c for c in costs.ops if c.op_type == "Conv")
    cls, (macs, *_) = next(kernel_work(conv))
    if cls.startswith("nchwc."):
        assert macs == pytest.approx(conv.macs * (48 / 40) ** 2)
    else:
        assert macs == conv.macs


def test_the_penalty_program_is_the_kernel_model(tmp_path):
    """compile_program on a kernel profile costs the full structure exactly as analyze does."""
    m = conv_block(residual=False)
    g = morphonnx.load(m)
    groups = morphonnx.find_groups(g)
    p = kernel_profile(**{"nchwc.Conv.kxk": {"overhead_us": 2.0, "gmacs": 200.0, "read_gbs": 40.0,
                                                         "write_gbs": 30.0, "weight_gbs": 80.0}})
    program = compile_program(groups, "latency", p)
    assert program.cost(program.full_alive()) == pytest.approx(morphonnx.cost_model(g).resource("latency", p))


def test_fit_recovers_a_kernel_model_and_keeps_it_physical():
    """Synthetic benchmarks from known per-class terms, their kernels timed by a profiler that
    adds 3 µs to each: the fit finds the terms (the run's own cost measured apart), takes the
    profiler's cost off, fits a class on its kernels inside whole networks where there are
    some, and never makes a class faster than the peak."""
    rng = np.random.default_rng(0)
    # per class: overhead, seconds per MAC, per byte read, written, of weights, per group
    truth = {"A": np.array([2e-6, 1 / 100e9, 1 / 20e9, 1 / 10e9, 0.0, 0.0]),
             "B": np.array([5e-6, 1 / 50e9, 0.0, 0.0, 1 / 40e9, 0.0]),
             "C": np.array([1e-6, 1 / 900e9, 1 / 5e9, 0.0, 0.0, 0.0]),  # C: faster than the peak unless bounded
             "G": np.array([3e-6, 1 / 60e9, 1 / 20e9, 0.0, 0.0, 0.5e-6])}  # G: grouped, half a µs per group

    def synthetic(classes, count, network=False, slower=1.0):
        out = []
        for k in range(count):
            nodes = {f"n{j}": (str(cls), np.array([rng.uniform(1e6, 1e8), *rng.uniform(1e4, 1e7, 3),
                                                    rng.integers(2, 500) if cls == "G" else 0]))
                     for j, cls in enumerate(rng.choice(classes, rng.integers(1, 5) if not network else 6))}
            kernel = {n: slower * (truth[cls][0] + work @ truth[cls][1:]) for n, (cls, work) in nodes.items()}
            out.append(Bench(f"b{k}", None, None, 10e-6 + sum(kernel.values()), nodes,
                             {n: t + 3e-6 for n, t in kernel.items()}, network=network))
        return out

    base = Profile("x", "x", {"fp32": 400.0}, 10.0, channel_block=16, sources={}, run_overhead_us=10.0)
    benches = synthetic(["A", "B"], 120)
    p, report = fit(benches, base)
    assert report["held_out_median_error"] < 0.02
    assert p.kernels["A"]["gmacs"] == pytest.approx(100.0, rel=0.02)
    assert p.kernels["B"]["gmacs"] == pytest.approx(50.0, rel=0.02)
    assert p.kernels["B"]["overhead_us"] == pytest.approx(5.0, abs=0.5)
    assert p.run_overhead_us == 10.0 and "group_us" not in p.kernels["A"]

    p, _ = fit(benches + synthetic(["G"], 40), base)
    assert p.kernels["G"]["group_us"] == pytest.approx(0.5, rel=0.05)
    assert p.kernels["G"]["gmacs"] == pytest.approx(60.0, rel=0.05)

    p, _ = fit(benches + synthetic(["C"], 30), base)
    assert all(k.get("gmacs", 0) <= 200.0 + 1e-6 for k in p.kernels.values())  # peak: 400 GFLOP/s = 200 GMAC/s
    assert p.kernels["C"]["gmacs"] == pytest.approx(200.0)  # at the bound

    # whole networks whose class-A kernels run 1.25x slower (in context): A is fitted on those
    p, _ = fit(benches + synthetic(["A"], 40, network=True, slower=1.25), base)
    assert p.kernels["A"]["gmacs"] == pytest.approx(80.0, rel=0.03)
    assert p.kernels["B"]["gmacs"] == pytest.approx(50.0, rel=0.03)  # none in the networks: all its kernels


def test_the_cost_per_group_is_in_the_kernel_model_and_the_penalty():
    """A grouped conv costs `group_us` per group, a depthwise one per channel (one group each);
    the penalty program costs the full structure as analyze does."""
    net = _Net(np.random.default_rng(0))
    y = net.node("Relu", [net.conv("x", 16, 64, 1, 1, 1, False)])
    y = net.node("Relu", [net.conv(y, 64, 64, 3, 1, 64, False)])
    y = net.conv(net.conv(y, 64, 64, 3, 1, 4, False), 64, 16, 1, 1, 1, False)
    m = net.model({"x": (1, 16, 14, 14)}, y)[0]
    g = morphonnx.load(m)
    costs = morphonnx.cost_model(g)
    assert sorted(c.groups for c in costs.ops if c.op_type == "Conv") == [1, 1, 4, 64]
    plain, grouped = kernel_profile(), kernel_profile(**{"*": {**kernel_profile().kernels["*"], "group_us": 0.5}})
    extra = costs.resource("latency", grouped) - costs.resource("latency", plain)
    assert extra == pytest.approx((64 + 4) * 0.5e-6)
    program = compile_program(morphonnx.find_groups(g), "latency", grouped)
    assert program.cost(program.full_alive()) == pytest.approx(costs.resource("latency", grouped))


def test_a_kernel_profile_round_trips_and_bad_ones_are_refused(tmp_path):
    p = kernel_profile(Gemm={"overhead_us": 0.0, "gmacs": 150.0})
    path = tmp_path / "k.yaml"
    doc = yaml.safe_load(p.to_yaml())
    doc["sources"].update({"peak_gflops.fp32": "test", "bandwidth_gbs": "test", "run_overhead_us": "test",
                           "channel_block": "test"})
    path.write_text(yaml.safe_dump(doc))
    assert load_profile(path).kernels == p.kernels
    for change, message in ((lambda d: d["kernels"].pop("*"), "kernels.*"),
                            (lambda d: d["kernels"]["*"].update(speed=1), "kernels.*.speed"),
                            (lambda d: d["kernels"]["*"].update(gmacs=-1), "kernels.*.gmacs"),
                            (lambda d: d["sources"].pop("kernels"), "sources.kernels")):
        bad = yaml.safe_load(path.read_text())
        change(bad)
        f = tmp_path / "bad.yaml"
        f.write_text(yaml.safe_dump(bad))
        with pytest.raises(BadInput, match=message.replace("*", r"\*")):
            load_profile(f)


def folded_block(c: int = 32):
    """conv_block with the BN folded into the conv's weights and bias."""
    m = conv_block(c=c)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    scale, shift, mean, var = (inits[i] for i in bn.input[1:])
    k = scale / np.sqrt(var + 1e-5)
    w, b = inits[conv.input[1]] * k[:, None, None, None], (inits[conv.input[2]] - mean) * k + shift
    net = _Net(np.random.default_rng(0))
    y = net.node("Conv", ["x", net.const(w.astype(np.float32)), net.const(b.astype(np.float32))],
                 kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4, group=1)
    y = net.node("Relu", [net.node("Add", [y, "x"])])
    return net.model({"x": (1, c, 28, 28)}, y)[0]


def test_standard_fusions_put_the_conv_epilogue_into_the_conv():
    g = morphonnx.load(conv_block())
    fused = standard_fusions(g)
    conv = next(n for n in g.nodes if g.nodes[n].op_type == "Conv")
    assert {g.nodes[n].op_type for n in fused} == {"BatchNormalization", "Add", "Relu"}
    assert set(fused.values()) == {conv}


def test_swish_and_elementwise_chains_fuse():
    net = _Net(np.random.default_rng(0))
    y = net.conv("x", 8, 8, 1, 1, 1, False)
    y = net.node("Mul", [y, net.node("Sigmoid", [y])])  # SiLU after the conv
    z = net.node("Mul", [net.node("Sigmoid", [net.node("Add", ["x", "x"])]), "x"])  # a chain on its own
    m = net.model({"x": (1, 8, 8, 8)}, net.node("Concat", [y, z], axis=1))[0]
    g = morphonnx.load(m)
    fused = standard_fusions(g)
    conv = next(n for n in g.nodes if g.nodes[n].op_type == "Conv")
    assert sum(1 for v in fused.values() if v == conv) == 2
    chain_end = g.producer[z]
    assert [n for n, v in fused.items() if v == chain_end] and chain_end not in fused


@pytest.mark.parametrize("profile", ["v100", "x86-server-cpu", "kernels"])
def test_bn_kept_and_folded_predict_alike(profile):
    """A BN the runtime folds costs nothing: the BN-kept and folded forms of one block predict
    within 5% of each other on a roofline profile and on a kernel model."""
    p = kernel_profile() if profile == "kernels" else load_profile(profile)
    kept, folded = (morphonnx.cost_model(morphonnx.load(m)).resource("latency", p) for m in (conv_block(), folded_block()))
    assert kept == pytest.approx(folded, rel=0.05)
    unfused = dataclasses.replace(load_profile("v100"), fuse=False)
    if profile == "v100":  # charged one op at a time, the BN and the add would cost their own bytes
        assert morphonnx.cost_model(morphonnx.load(conv_block())).resource("latency", unfused) > 1.2 * kept


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("c", [(16, 24), (13, 21)])  # blocked kernels; plain ones (unaligned channels)
def test_a_residual_of_two_convs_charges_each_conv_once(swap, c):
    """conv3x3(x) + conv1x1(x) → Relu: onnxruntime fuses one conv with the add and the ReLU; the
    fused kernel's MACs go to the conv it was made from, not to the other branch's conv."""
    net = _Net(np.random.default_rng(0))
    a = net.conv("x", c[0], c[1], 3, 1, 1, False)
    b = net.conv("x", c[0], c[1], 1, 1, 1, False)
    y = net.node("Relu", [net.node("Add", [b, a] if swap else [a, b])])
    m = net.model({"x": (1, c[0], 14, 14)}, y)[0]
    g = morphonnx.load(m)
    km = kernel_map(g, optimized_model(m))
    for conv, variant in ((g.producer[a], "kxk"), (g.producer[b], "k1")):
        heavy = [cls for cls, own in km.kernels.get(conv, ()) if own and "Conv" in cls]
        assert len(heavy) == 1 and heavy[0].endswith(variant), (conv, km.kernels)


def test_the_profiler_times_the_kernels_the_map_knows():
    """Every kernel onnxruntime's profiler times is a node of the kernel map (by name), so the
    fit can read each class's own kernel times."""
    from morphonnx.microbench import node_seconds, node_work
    m, feeds = None, None
    net = _Net(np.random.default_rng(0))
    y = net.node("Relu", [net.conv("x", 16, 24, 3, 1, 1, False)])
    y = net.node("HardSwish", [net.conv(y, 24, 13, 1, 1, 1, False)])  # an op the runtime inlines, nameless
    m, feeds = net.model({"x": (1, 16, 14, 14)}, y)
    work = node_work(m, 8)
    timed = node_seconds(m, feeds, runs=5, rounds=1)
    named = {n for n in work if not n.startswith("#")}
    assert named and named <= set(timed) and all(t > 0 for t in timed.values())
    classes = {work[n][0] for n in named}
    assert any(c.removeprefix("nchwc.").startswith("Conv.kxk") for c in classes)
    assert any(w[0] > 0 for _, w in work.values())  # the conv kernels carry the MACs


@pytest.mark.parametrize("cin,cout,group,stride,cls", [(32, 32, 32, 1, "Conv.dw"), (32, 32, 32, 2, "Conv.dw.s2"),
                                                        (8, 32, 8, 1, "Conv.grouped"), (32, 32, 4, 1, "Conv.grouped")])
def test_depthwise_is_one_channel_in_and_out_per_group(cin, cout, group, stride, cls):
    """A depthwise kernel reads and writes one channel per group (strided ones run another
    path); a depth multiplier (more outputs per group) is a grouped conv, blocked or not."""
    net = _Net(np.random.default_rng(0))
    y = net.conv("x", cin, cout, 3, stride, group, False)
    m = net.model({"x": (1, cin, 28, 28)}, y)[0]
    g = morphonnx.load(m)
    km = kernel_map(g, optimized_model(m))
    conv = next(n for n in g.nodes if g.nodes[n].op_type == "Conv")
    own = [c for c, o in km.kernels[conv] if o]
    assert [c.removeprefix("nchwc.") for c in own] == [cls]


@pytest.mark.parametrize("cin,cls", [(3, "nchwc.Conv.nchw"), (32, "nchwc.Conv.kxk")])
def test_a_blocked_conv_that_reads_the_plain_layout_is_its_own_kernel(cin, cls):
    """Fewer input channels than a block (a stem, or a layer pruned that narrow): the runtime's
    blocked conv reads the plain layout, another kernel; more: the blocked kernel."""
    net = _Net(np.random.default_rng(0))
    y = net.node("Relu", [net.conv("x", cin, 32, 3, 1, 1, False)])
    m = net.model({"x": (1, cin, 28, 28)}, y)[0]
    g = morphonnx.load(m)
    km = kernel_map(g, optimized_model(m))
    conv = next(n for n in g.nodes if g.nodes[n].op_type == "Conv")
    assert [c for c, own in km.kernels[conv] if own] == [cls]
