#!/usr/bin/env python
"""Benchmarks, printed as ratios against references measured in the same run.

    python scripts/bench.py analyze [--zoo DIR] [--models a,b] [--repeat 3] [--sizes 100,1000,10000]
    python scripts/bench.py prune [--zoo DIR] [--models a,b] [--repeat 3] [--keep 0.7]
    python scripts/bench.py latency [--zoo DIR] [--models resnet18,mobilenet_v2] [--variants 50]
    python scripts/bench.py penalty [--batch 16] [--steps 3]

`analyze` times `morphonnx.analyze` (load, shape inference, cost model, roofline on two
profiles, JSON document) on every zoo model, next to onnx-tool's
`Model(path); graph.shape_infer(); graph.profile()` and to `onnx.load` + `onnx.save` of the
same file; then on synthetic chains of Conv-BN-ReLU blocks of growing length it prints the
time per node, which stays flat when the hot path is linear.

`prune` times the whole rewrite without the equivalence check (load, groups, masks keeping a
random `--keep` share of every group, prune with folding, atomic save) as a ratio to
`onnx.load` + `onnx.save` of the same file, and runs the original and the pruned model in
onnxruntime on this CPU: the latency ratio is printed beside the MACs ratio.

`latency` measures the latency model's fidelity on this CPU: `--variants` random-width
variants (random masks) of each model are measured in onnxruntime and predicted by (a) the
bare roofline of this machine (`calibrate`), (b) the same with its measured per-op and
per-run overheads, (c) the model fitted (`calibrate.fit`) on every other variant, evaluated
on the variants it did not see. It prints Spearman's rank correlation, the share of variants
within ±10% and ±20%, and the MAPE of each, then the per-op error of the fitted model on the
largest ops of the original, measured with onnxruntime's profiler.

`penalty` times one training step of torchvision's resnet18 (batch 16, 224x224, CPU, SGD)
with and without the torch adapter's FLOP penalty, and prints the ratio.

Timings are the best of `--repeat` runs. Nothing here is asserted: read the ratios.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_zoo  # noqa: E402

import morphonnx  # noqa: E402

PROFILES = ("v100", "p100")


def best(fn, repeat: int) -> float:
    """Best wall time of `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def time_morphonnx(path: Path) -> None:
    morphonnx.analyze(path, PROFILES).to_dict()


def time_onnx_io(path: Path, tmp: Path) -> None:
    onnx.save(onnx.load(str(path)), str(tmp / "copy.onnx"))


def time_onnx_tool(path: Path) -> None:
    import onnx_tool
    m = onnx_tool.Model(str(path))
    m.graph.shape_infer()
    m.graph.profile()


def chain(blocks: int, channels: int = 16, size: int = 8) -> onnx.ModelProto:
    """A synthetic chain of `blocks` Conv → BatchNormalization → Relu blocks."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "input"
    for i in range(blocks):
        # He-scaled weights keep activations bounded however deep the chain (N(0, 1) overflows
        # to inf within ~40 blocks, and a check of inf against inf proves nothing)
        w = rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2 / (9 * channels))
        w = numpy_helper.from_array(w.astype(np.float32), f"b{i}.w")
        bn = [numpy_helper.from_array(rng.uniform(0.5, 1.5, channels).astype(np.float32), f"b{i}.bn.{k}")
              for k in ("scale", "bias", "mean", "var")]
        inits += [w] + bn
        nodes += [helper.make_node("Conv", [x, w.name], [f"b{i}.c"], name=f"b{i}.conv", kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"b{i}.c"] + [t.name for t in bn], [f"b{i}.n"],
                                   name=f"b{i}.bn"),
                  helper.make_node("Relu", [f"b{i}.n"], [f"b{i}.r"], name=f"b{i}.relu")]
        x = f"b{i}.r"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             [1, channels, size, size])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def bench_zoo(zoo: Path, names: list[str], repeat: int, tmp: Path) -> None:
    manifest = export_zoo.ensure(zoo, names)
    print(f"analyze on the zoo ({zoo}); best of {repeat}; ratio < 1 means morphonnx is faster")
    failures: dict[str, str] = {}
    print(f"{'model':34s} {'nodes':>6s} {'morphonnx s':>11s} {'/ onnx-tool':>11s} {'/ onnx load+save':>16s}")
    for name in names:
        for kind, file in ((k, manifest[name]["files"][k]) for k in export_zoo.forms(manifest[name])):
            path = zoo / file
            ours = best(lambda: time_morphonnx(path), repeat)
            try:
                tool = f"{ours / best(lambda: time_onnx_tool(path), repeat):11.2f}"
            except Exception as e:  # onnx-tool cannot read some exports; say so and go on
                tool, failures[name + " (" + kind + ")"] = f"{'failed':>11s}", f"{type(e).__name__}: {e}"
            io = best(lambda: time_onnx_io(path, tmp), repeat)
            nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
            print(f"{name + ' (' + kind + ')':34s} {nodes:6d} {ours:11.4f} {tool} {ours / io:16.2f}", flush=True)
    for model, error in failures.items():
        print(f"onnx-tool failed on {model}: {error}")


def bench_scaling(sizes: list[int], repeat: int, tmp: Path) -> None:
    print(f"\nscaling on chains of Conv-BN-ReLU blocks; best of {repeat}")
    print(f"{'blocks':>7s} {'nodes':>7s} {'morphonnx us/node':>18s} {'onnx load+save us/node':>23s} {'ratio':>6s}")
    per_node = []
    for blocks in sizes:
        path = tmp / f"chain{blocks}.onnx"
        onnx.save(chain(blocks), str(path))
        nodes = 3 * blocks
        ours = best(lambda: time_morphonnx(path), repeat) / nodes
        io = best(lambda: time_onnx_io(path, tmp), repeat) / nodes
        per_node.append(ours)
        print(f"{blocks:7d} {nodes:7d} {ours * 1e6:18.2f} {io * 1e6:23.2f} {ours / io:6.2f}", flush=True)
    print(f"time per node varies by {max(per_node) / min(per_node):.2f}x across sizes (linear: < 2x)")


def random_masks(groups, keep: float, seed: int = 0, multiple: int = 1):
    """Masks keeping a random `keep` share of every unpinned group (at least one channel)."""
    from morphonnx.masks import legalize
    from morphonnx.masks import random_masks as draw
    return legalize(groups, draw(groups, seed, keep), multiple)


def prune_once(path: Path, out: Path, keep: float, multiple: int = 1):
    from morphonnx.groups import find_groups
    from morphonnx.output import Outputs
    from morphonnx.rewrite import prune
    graph = morphonnx.load(path)
    groups = find_groups(graph)
    result = prune(groups, random_masks(groups, keep, multiple=multiple))
    with Outputs([path]) as outputs:
        outputs.model(out, result.model, external=bool(graph.external_files()))
        outputs.commit()
    return graph, result


def ort_latency(model_path: Path, feeds: dict, repeat: int = 20) -> float:
    """Median seconds of one onnxruntime run (all optimizations)."""
    from morphonnx.calibrate import run_time
    return run_time(str(model_path), feeds, repeat=repeat, warmup=3)


def bench_prune(zoo: Path, names: list[str], repeat: int, keep: float, multiple: int, tmp: Path) -> None:
    from morphonnx.oracle import random_inputs
    manifest = export_zoo.ensure(zoo, names)
    print(f"prune on the zoo ({zoo}); keep {keep:.0%} of every group at random, rounded to multiples of "
          f"{multiple}; best of {repeat}")
    print(f"{'model':34s} {'prune s':>8s} {'/ onnx load+save':>16s} {'MACs ratio':>10s} {'ORT latency ratio':>17s}")
    for name in names:
        for kind, file in ((k, manifest[name]["files"][k]) for k in export_zoo.forms(manifest[name])):
            path, out = zoo / file, tmp / "pruned.onnx"
            ours = best(lambda: prune_once(path, out, keep, multiple), repeat)
            io = best(lambda: time_onnx_io(path, tmp), repeat)
            graph, _ = prune_once(path, out, keep, multiple)
            macs = morphonnx.cost_model(morphonnx.load(out)).total("macs") / morphonnx.cost_model(graph).total("macs")
            feeds = random_inputs(graph, 0)
            lat = ort_latency(out, feeds) / ort_latency(path, feeds)
            print(f"{name + ' (' + kind + ')':34s} {ours:8.3f} {ours / io:16.2f} {macs:10.2f} {lat:17.2f}", flush=True)


def spearman(a, b) -> float:
    """Spearman's rank correlation (no ties expected in latencies)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def fidelity(predicted, measured) -> str:
    """Spearman, share within ±10% / ±20%, MAPE."""
    p, m = np.asarray(predicted), np.asarray(measured)
    err = np.abs(p - m) / m
    return (f"spearman {spearman(p, m):5.3f}  within 10% {np.mean(err <= 0.1):5.0%}  "
            f"within 20% {np.mean(err <= 0.2):5.0%}  MAPE {np.mean(err):6.1%}")


def per_op_profile(path: Path, feeds: dict, runs: int = 20) -> dict[str, float]:
    """Mean seconds per node from onnxruntime's profiler (node names of the optimized graph)."""
    import json
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.parent / "ort_profile")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"] * 1e-6)
    return {k: float(np.mean(v[len(v) // runs:])) for k, v in times.items()}


def fused_nodes(graph, kernel: str) -> list[str]:
    """Original nodes behind an onnxruntime kernel name: the node itself, or, for a layout-
    transformed (`<output>_nchwc`) or fused kernel, the ops from its output back to its Conv."""
    if kernel in graph.nodes:
        return [kernel]
    node = graph.producer.get(kernel.removesuffix("_nchwc"))
    chain = []
    while node is not None and len(chain) < 4:
        chain.append(node)
        if graph.nodes[node].op_type in ("Conv", "Gemm", "MatMul"):
            return chain
        ins = [t for t in graph.nodes[node].input if t in graph.producer]
        node = graph.producer[ins[0]] if ins else None
    return chain[:1]


def bench_latency(zoo: Path, names: list[str], n: int, multiple: int, tmp: Path) -> None:
    from morphonnx.calibrate import calibrate, fit, random_variants, run_time
    from morphonnx.profiles import Profile
    from morphonnx.oracle import random_inputs
    manifest = export_zoo.ensure(zoo, names)
    base = calibrate(quick=False)
    bare = Profile(base.key, base.name, base.peak_gflops, base.bandwidth_gbs)
    print(f"this machine: {base.name}: {base.peak_gflops['fp32']:g} GFLOP/s, {base.bandwidth_gbs:g} GB/s, "
          f"{base.op_overhead_us:g} us/op, {base.run_overhead_us:g} us/run")
    all_meas, all_pred = [], {"bare": [], "overheads": [], "fitted": []}
    for name in names:
        path = zoo / manifest[name]["files"]["folded"]
        graph = morphonnx.load(path)
        feeds = random_inputs(graph, 0)
        vs = list(random_variants(path, n, multiple=multiple))
        measured = [run_time(pruned, feeds, repeat=15, warmup=3) for _, pruned, _ in vs]
        costs = [c for c, _, _ in vs]
        train, test = list(range(0, n, 2)), list(range(1, n, 2))
        fitted_a = fit(base, [(costs[i], measured[i]) for i in train])
        fitted_b = fit(base, [(costs[i], measured[i]) for i in test])
        pred = {"bare": [bare.total_latency(c) for c in costs],
                "overheads": [base.total_latency(c) for c in costs],
                "fitted": [(fitted_b if i in train else fitted_a).total_latency(c) for i, c in enumerate(costs)]}
        print(f"\n{name}: {n} variants (widths rounded to {multiple}), measured {min(measured) * 1e3:.2f} .. {max(measured) * 1e3:.2f} ms")
        for k, v in pred.items():
            print(f"  {k:10s} {fidelity(v, measured)}")
            all_pred[k] += v
        all_meas += measured
        print(f"  fitted on half: efficiency {fitted_a.efficiency}, {fitted_a.op_overhead_us:g} us/op, "
              f"{fitted_a.run_overhead_us:g} us/run")
        prof = per_op_profile(path, feeds)
        full = fit(base, list(zip(costs, measured)))
        ops = {c.name: c for c in morphonnx.cost_model(graph).ops if c.costed}
        rows = [(t, k, fused_nodes(graph, k)) for k, t in prof.items()]
        top = sorted((r for r in rows if r[2]), reverse=True)[:10]
        print("  largest kernels of the original (onnxruntime profiler vs fitted model; a fused kernel is "
              "compared with the ops it fuses):")
        for t, k, nodes in top:
            p = sum(full.latency(ops[n])[0] for n in nodes if n in ops)
            what = "+".join(ops[n].op_type for n in reversed(nodes) if n in ops)
            print(f"    {k[-26:]:26s} {what[:22]:22s} measured {t * 1e6:8.1f} us  predicted {p * 1e6:8.1f} us  "
                  f"error {(p - t) / t:+6.1%}")
    print(f"\nall {len(all_meas)} variants:")
    for k, v in all_pred.items():
        print(f"  {k:10s} {fidelity(v, all_meas)}")


def bench_penalty(batch: int, steps: int) -> None:
    import torch
    import torchvision
    from morphonnx.torch import Regularizer
    model = torchvision.models.resnet18(weights=None)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    start = time.perf_counter()
    reg = Regularizer(model, (x[:1],))
    print(f"resnet18: Regularizer built (export + groups + program) in {time.perf_counter() - start:.1f}s")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(with_penalty: bool) -> None:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if with_penalty:
            loss = loss + 1e-9 * reg.penalty()
        loss.backward()
        opt.step()

    model.train()
    step(True)
    plain = best(lambda: step(False), steps)
    with_penalty = best(lambda: step(True), steps)
    alone = best(lambda: reg.penalty().backward(), 20)
    print(f"step without penalty {plain:.3f}s, with penalty {with_penalty:.3f}s: ratio {with_penalty / plain:.3f}; "
          f"penalty forward+backward alone {alone * 1e3:.2f} ms = {alone / plain:.2%} of a step")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("analyze", help="analyze vs onnx-tool and onnx I/O on the zoo, and scaling")
    a.add_argument("--zoo", type=Path, default=None)
    a.add_argument("--models", default="", help="comma-separated zoo models (default: all)")
    a.add_argument("--repeat", type=int, default=3)
    a.add_argument("--sizes", default="100,1000,10000")
    pr = sub.add_parser("prune", help="prune time vs onnx I/O, and ORT latency of the pruned model")
    pr.add_argument("--zoo", type=Path, default=None)
    pr.add_argument("--models", default="", help="comma-separated zoo models (default: all)")
    pr.add_argument("--repeat", type=int, default=3)
    pr.add_argument("--keep", type=float, default=0.7, help="share of each group kept (0.7: about half the MACs)")
    pr.add_argument("--round", type=int, default=16, help="keep multiples of this many channels (default 16)")
    la = sub.add_parser("latency", help="fidelity of the latency model on this CPU")
    la.add_argument("--zoo", type=Path, default=None)
    la.add_argument("--models", default="resnet18,mobilenet_v2")
    la.add_argument("--variants", type=int, default=50)
    la.add_argument("--round", type=int, default=1, help="round variant widths to multiples of this (default 1)")
    pe = sub.add_parser("penalty", help="training-step overhead of the torch penalty")
    pe.add_argument("--batch", type=int, default=16)
    pe.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    if args.what == "penalty":
        bench_penalty(args.batch, args.steps)
        return 0
    names = [n for n in args.models.split(",") if n] or export_zoo.TORCH_MODELS + list(export_zoo.KERAS_MODELS)
    zoo = args.zoo or export_zoo.default_dir()
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "analyze":
            bench_zoo(zoo, names, args.repeat, Path(tmp))
            bench_scaling([int(s) for s in args.sizes.split(",")], args.repeat, Path(tmp))
        elif args.what == "latency":
            bench_latency(zoo, names, args.variants, args.round, Path(tmp))
        else:
            bench_prune(zoo, names, args.repeat, args.keep, args.round, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
