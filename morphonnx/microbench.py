"""Microbenchmarks of runtime kernels, and the kernel latency model fitted on them.

`benchmarks()` builds small models that cover the space of the kernels onnxruntime runs on a
CPU: convolutions of every variant (1x1, kxk, depthwise, grouped) at channel counts drawn
log-uniformly (half of them multiples of 16, as unpruned networks have them, the rest as
pruned ones do), spatial sizes, strides and kernel sizes, in both forms a runtime meets (fused
into its blocked NCHWc kernels, and the plain kernels it runs when an export computes the bias
at run time), matrix products, pools, normalizations, elementwise ops, concats, reductions,
softmax and transposes. `measure()` times each whole run (onnxruntime, the profile's threads,
all optimizations, median of runs, the lowest of five rounds) and each of its kernels
(onnxruntime's profiler, `node_seconds`). `fit()` gives every kernel class the model

    seconds = overhead + MACs / mac_rate + bytes / byte_rate + groups × group_cost

with the MACs and bytes of the op that carries the kernel (`kernels.kernel_map`), fitted on
that class's own kernel times by non-negative least squares on relative error: monotone (more
work is never faster) and physical (a class never computes faster than the measured peak);
less the profiler's cost per kernel (what whole runs of the networks show; `KernelFit`). A
fifth of the benchmarks is held out first and predicted by the fit on the rest: that error is
reported and written into the profile's sources; the profile's model is then fitted on all.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .costs import cost_model
from .graph import load
from .profiles import KERNEL_RATES, Profile, kernel_factors, thread_setting, work_amounts

MIN_SAMPLES = 4  # a class with fewer benchmarks shares the pooled "*" model
WIDTH = 2 + len(KERNEL_RATES)  # per class: overhead, one term per rate, the cost per group


@dataclass
class Bench:
    """One benchmark model, its feeds, and what it measured: the seconds of a run, and of each
    runtime kernel (onnxruntime's profiler, by node name)."""

    name: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    seconds: float = 0.0
    nodes: dict[str, tuple[str, np.ndarray]] | None = None  # runtime node → (class, [MACs, bytes...])
    node_seconds: dict[str, float] | None = None
    network: bool = False  # a whole random network (its kernels in context), not one kernel


class _Net:
    """A tiny graph builder for the benchmarks."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.nodes, self.inits, self.k = rng, [], [], 0

    def name(self, stem: str) -> str:
        self.k += 1
        return f"{stem}{self.k}"

    def const(self, value: np.ndarray, stem: str = "w") -> str:
        n = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def node(self, op: str, inputs, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out + "_node", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int, group: int, runtime_bias: bool) -> str:
        w = self.const((self.rng.standard_normal((cout, cin // group, k, k)) * 0.05).astype(np.float32))
        if runtime_bias:  # the dynamo export's bias=False: zeros computed from the input's type
            zero = self.node("CastLike", [self.const(np.zeros((), np.float32), "z"), x])
            shape = self.const(np.array([cout], np.int64), "s")
            b = self.node("Expand", [zero, shape])
        else:
            b = self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32), "b")
        return self.node("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride],
                         pads=[k // 2] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        p = [self.const(v.astype(np.float32), "bn") for v in
             (1 + 0.1 * self.rng.standard_normal(c), 0.1 * self.rng.standard_normal(c),
              0.1 * self.rng.standard_normal(c), 1 + self.rng.random(c))]
        return self.node("BatchNormalization", [x, *p])

    def model(self, inputs: dict[str, tuple], out: str) -> tuple[onnx.ModelProto, dict]:
        g = helper.make_graph(self.nodes, "bench", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                                    for n, s in inputs.items()],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        feeds = {n: self.rng.standard_normal(s).astype(np.float32) for n, s in inputs.items()}
        return m, feeds


def _channels(rng: np.random.Generator, lo: int, hi: int, aligned: float = 0.0) -> int:
    """A channel count drawn log-uniformly; with probability `aligned` a multiple of 16 (what
    unpruned networks have: the runtime's blocked kernels take those)."""
    c = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    return max(16, int(round(c / 16)) * 16) if rng.random() < aligned else c


def _conv_bench(rng: np.random.Generator, variant: str, plain: bool) -> Bench:
    """A conv block as exports have them: conv, then activation (and BN for the plain form),
    sometimes a residual add."""
    net = _Net(rng)
    hw = int(rng.choice([7, 14, 28, 56, 112]))
    stride = int(rng.choice([1, 1, 2]))
    if variant == "dw":
        c = _channels(rng, 8, 1200, 0.5)
        cin = cout = group = c
        k = int(rng.choice([3, 3, 5]))
    else:
        cin, cout = _channels(rng, 4, 1024, 0.5), _channels(rng, 4, 1024, 0.5)
        k = 1 if variant == "k1" else int(rng.choice([3, 3, 3, 5, 7]))
        group = 1
        if variant == "grouped":  # few wide groups (a split) to many narrow ones (ResNeXt, RegNet)
            c = _channels(rng, 16, 1024, 0.5)
            per_group = min(c // 2, int(round(math.exp(rng.uniform(math.log(2), math.log(128))))))
            group = max(2, c // per_group)
            cin = group * (c // group)
            cout = cin * int(rng.choice([1, 1, 2]))
    while cin * cout // group * k * k * (hw // stride) ** 2 > 3e8 and hw > 7:
        hw //= 2
    x = "x"
    y = net.conv(x, cin, cout, k, stride, group, plain)
    if plain:
        y = net.bn(y, cout)
    residual = stride == 1 and cin == cout and rng.random() < 0.3
    if residual:
        y = net.node("Add", [y, x])
    y = net.node(str(rng.choice(["Relu", "Relu", "Clip"])) if variant != "dw" or rng.random() < 0.7 else "Relu", [y])
    chained = not plain and rng.random() < 0.5
    if chained:  # a second conv in the blocked layout: no reorder between the two
        out_hw = -(-hw // stride)
        c2 = cout if variant == "dw" else group * max(1, min(_channels(rng, 4, 1024, 0.5),
                                                             int(3e8 / (cout * k * k * out_hw ** 2))) // group)
        y = net.node("Relu", [net.conv(y, cout, c2, k, 1, cout if variant == "dw" else group, False)])
    m, feeds = net.model({"x": (1, cin, hw, hw)}, y)
    name = f"{'plain' if plain else 'fused'} conv {variant} {cin}->{cout} k{k} s{stride} g{group} {hw}x{hw}" + \
        (" +res" if residual else "") + (f" ->{c2}" if chained else "")
    return Bench(name, m, feeds)


def _network_bench(rng: np.random.Generator, plain: bool) -> Bench:
    """A random convolutional network: a stem, four stages of random blocks (basic, bottleneck,
    inverted residual with or without squeeze-excitation, dense, inception-like) at random
    widths (all multiples of 16, as unpruned networks, or none, as pruned ones), a classifier.
    Its kernels run in the context a network gives them: other layers' weights and activations
    in the caches, the runtime's reorders where they fall."""
    net = _Net(rng)
    aligned = rng.random() < 0.5
    width = lambda lo, hi: _channels(rng, max(4, int(lo)), max(5, int(hi)), 1.0 if aligned else 0.0)
    act = lambda y: net.node(str(rng.choice(["Relu", "Relu", "Clip", "HardSwish", "Sigmoid"])), [y])

    def conv(x, cin, cout, k, stride=1, group=1):
        y = net.conv(x, cin, cout, k, stride, group, plain)
        return net.bn(y, cout) if plain else y

    def block(x, cin, cout, stride):
        kind = str(rng.choice(["basic", "bottleneck", "inverted", "inverted_se", "dense", "inception"]))
        residual = stride == 1 and cin == cout
        if kind == "basic":
            y = conv(act(conv(x, cin, cout, 3, stride)), cout, cout, 3)
        elif kind == "bottleneck":
            mid = width(cout / 4, cout / 2)
            y = conv(act(conv(act(conv(x, cin, mid, 1)), mid, mid, 3, stride)), mid, cout, 1)
        elif kind.startswith("inverted"):
            mid = width(cin * 2, cin * 6)
            k = int(rng.choice([3, 5]))
            y = act(conv(act(conv(x, cin, mid, 1)), mid, mid, k, stride, mid))
            if kind == "inverted_se":
                squeeze = width(mid / 8, mid / 4)
                g = net.node("GlobalAveragePool", [y])
                g = net.node("Relu", [net.conv(g, mid, squeeze, 1, 1, 1, False)])
                g = net.conv(g, squeeze, mid, 1, 1, 1, False)
                y = net.node("Mul", [y, net.node(str(rng.choice(["Sigmoid", "HardSigmoid"])), [g])])
            y = conv(y, mid, cout, 1)
        elif kind == "dense":
            grow = cout - cin if cout > cin else width(16, 48)
            x2 = conv(act(x), cin, grow, 3)
            y, cout = net.node("Concat", [x, x2], axis=1), cin + grow
            if stride == 2:
                y = net.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
            return y, cout
        else:
            a = width(cout / 4, cout / 2)
            b = cout - a
            p = net.node("MaxPool", [x], kernel_shape=[3, 3], strides=[stride, stride], pads=[1, 1, 1, 1])
            y = net.node("Concat", [act(conv(x, cin, a, 1, stride)), act(conv(p, cin, b, 3))], axis=1)
            return y, cout
        if residual:
            y = net.node("Add", [y, x])
        return act(y), cout

    hw = int(rng.choice([96, 128, 160, 224]))
    c = width(16, 48)
    y = net.node("Relu", [conv("x", 3, c, 3, 2)])
    if rng.random() < 0.5:
        y = net.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for stage in range(4):
        target = width(c * 1.2, c * 2.5) if stage else c
        for i in range(int(rng.integers(1, 4))):
            y, c = block(y, c, target if i == 0 else c, 2 if i == 0 and stage else 1)
    y = net.node("Flatten", [net.node("GlobalAveragePool", [y])])
    classes = _channels(rng, 10, 1000)
    w = net.const((rng.standard_normal((c, classes)) * 0.02).astype(np.float32))
    y = net.node("Add", [net.node("MatMul", [y, w]), net.const(np.zeros(classes, np.float32), "b")])
    m, feeds = net.model({"x": (1, 3, hw, hw)}, y)
    return Bench(f"{'plain' if plain else 'fused'} network {'aligned' if aligned else 'unaligned'} {hw}x{hw} "
                 f"({len(net.nodes)} ops)", m, feeds, network=True)


def _gemm_bench(rng: np.random.Generator) -> Bench:
    net = _Net(rng)
    rows = int(rng.choice([1, 1, 1, 8, 49, 197, 784]))
    k, n = _channels(rng, 16, 4096), _channels(rng, 16, 4096)
    while rows * k * n > 3e8:
        rows = max(1, rows // 4)
        k = max(16, k // 2)
    w = net.const((rng.standard_normal((k, n)) * 0.02).astype(np.float32))
    y = net.node("MatMul", ["x", w])
    y = net.node("Add", [y, net.const((rng.standard_normal(n) * 0.1).astype(np.float32), "b")])
    if rng.random() < 0.5:
        y = net.node(str(rng.choice(["Relu", "Sigmoid", "Erf"])), [y])
    m, feeds = net.model({"x": (1, rows, k)}, y)
    return Bench(f"matmul {rows}x{k}x{n}", m, feeds)


def _other_bench(rng: np.random.Generator, kind: str) -> Bench:
    """Memory-bound kernels: pools, a lone BatchNormalization, elementwise ops, concat, mean,
    softmax, layer norm, transpose."""
    net = _Net(rng)
    c, hw = _channels(rng, 8, 1024), int(rng.choice([7, 14, 28, 56, 112]))
    while c * hw * hw > 4e6:
        hw //= 2
    shape = (1, c, hw, hw)
    x = "x"
    inputs = {"x": shape}
    if kind == "pool":
        op = str(rng.choice(["MaxPool", "AveragePool", "GlobalAveragePool"]))
        attrs = {} if op == "GlobalAveragePool" else {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
        y = net.node(op, [x], **attrs)
    elif kind == "bn":
        y = net.bn(x, c)
    elif kind == "elementwise":
        op = str(rng.choice(["Add", "Mul", "Sigmoid", "Relu", "Clip", "HardSwish", "Tanh", "Erf"]))
        if op in ("Add", "Mul"):
            inputs["x2"] = shape if rng.random() < 0.6 else (1, c, 1, 1)
            y = net.node(op, [x, "x2"])
        else:
            y = net.node(op, [x])
    elif kind == "concat":
        inputs["x2"] = (1, _channels(rng, 8, 512), hw, hw)
        y = net.node("Concat", [x, "x2"], axis=1)
    elif kind == "mean":
        y = net.node("ReduceMean", [x], axes=[2, 3], keepdims=1)
    elif kind == "gate":  # a squeeze-excitation gate: a per-channel sigmoid scaling the tensor
        inputs["x2"] = (1, c, 1, 1)
        y = net.node("Mul", [x, net.node(str(rng.choice(["Sigmoid", "HardSigmoid"])), ["x2"])])
    elif kind == "small":  # elementwise on a per-channel vector (inside an SE block)
        inputs = {"x": (1, c, 1, 1)}
        shape = inputs["x"]
        op = str(rng.choice(["Sigmoid", "Relu", "Mul", "Add", "HardSwish"]))
        y = net.node(op, [x, x] if op in ("Mul", "Add") else [x])
    else:  # token ops of a transformer: [1, tokens, width]
        tokens, width = int(rng.choice([49, 197, 785, 3136])), _channels(rng, 32, 1024)
        while tokens * width > 4e6:
            tokens //= 2
        inputs = {"x": (1, tokens, width)}
        if kind == "softmax":
            y = net.node("Softmax", [x], axis=-1)
        elif kind == "layernorm":
            y = net.node("LayerNormalization", [x, net.const(np.ones(width, np.float32)),
                                                net.const(np.zeros(width, np.float32))], axis=-1)
        else:
            y = net.node("Transpose", [x], perm=[0, 2, 1])
        shape = inputs["x"]
    m, feeds = net.model(inputs, y)
    return Bench(f"{kind} {'x'.join(map(str, shape))}", m, feeds)


def benchmarks(seed: int = 0, scale: float = 1.0) -> list[Bench]:
    """The benchmark models (`scale` < 1: fewer of each, for a quick calibration)."""
    rng = np.random.default_rng(seed)
    n = lambda k: max(MIN_SAMPLES + 2, int(k * scale))
    out = []
    for plain in (False, True):
        for variant, k in (("k1", 36), ("kxk", 36), ("dw", 20), ("grouped", 12)):
            out += [_conv_bench(rng, variant, plain) for _ in range(n(k if not plain else k // 2))]
    out += [_gemm_bench(rng) for _ in range(n(24))]
    out += [_network_bench(rng, plain) for plain in (False, True) for _ in range(n(12))]
    for kind, k in (("pool", 12), ("bn", 8), ("elementwise", 28), ("concat", 8), ("mean", 8), ("gate", 10),
                    ("small", 8), ("softmax", 6), ("layernorm", 6), ("transpose", 6)):
        out += [_other_bench(rng, kind) for _ in range(n(k))]
    return out


def measure(benches: list[Bench], progress: Callable[[str], None] | None = None, rounds: int = 5,
            threads: int = 0) -> None:
    """Time every benchmark as a user times a model (one session, runs back to back; `threads`
    intra-op threads, 0 for onnxruntime's default; all optimizations): the median of a round of
    at least 30 runs and 0.05 s after 3 warm-ups, the lowest of `rounds` rounds, since a busy
    moment of the machine only ever slows a round down; then each of its kernels the same way
    under onnxruntime's profiler."""
    from .calibrate import _session
    say = progress or (lambda msg: None)
    for k, b in enumerate(benches, 1):
        b.seconds, n = median_seconds(_session(b.model, threads), b.feeds, rounds, runs=30)
        b.node_seconds = node_seconds(b.model, b.feeds, n, rounds, threads)
        if k % 25 == 0 or k == len(benches):
            say(f"  measured {k}/{len(benches)} benchmarks")


def median_seconds(sess, feeds: dict, rounds: int = 3, runs: int = 15, min_seconds: float = 0.05
                   ) -> tuple[float, int]:
    """(the lowest over `rounds` of the median of a round, runs per round): a round is >= `runs`
    runs and >= `min_seconds` of a session, after 3 warm-ups."""
    from .calibrate import _run_times
    first = _run_times(sess, feeds, 3, 0)
    n = max(runs, min(400, int(min_seconds / max(min(first), 1e-6))))
    return float(min(np.median(_run_times(sess, feeds, n, 0)) for _ in range(rounds))), n


class _Profiled:
    """An onnxruntime session whose kernels its profiler times."""

    def __init__(self, model: onnx.ModelProto, threads: int = 0):
        from .calibrate import _session
        self.folder = tempfile.mkdtemp(prefix="morphonnx.profile.")
        self.session = _session(model, threads, profile_prefix=os.path.join(self.folder, "p"))

    def run(self, feeds: dict, times: int) -> None:
        for _ in range(times):
            self.session.run(None, feeds)

    def node_seconds(self, batches: list[int]) -> dict[str, float]:
        """Per runtime node (by name): the lowest over the batches of runs (after the first, the
        warm-ups) of the median seconds of its kernel in the batch."""
        with open(self.session.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
        times: dict[str, list[float]] = {}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                times.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"] * 1e-6)
        out = {}
        ends = np.cumsum(batches)
        for name, ts in times.items():
            if len(ts) == ends[-1]:  # one event per run: split into the batches
                out[name] = float(min(np.median(ts[lo:hi]) for lo, hi in zip(ends[:-1], ends[1:])))
        return out

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def node_seconds(model: onnx.ModelProto, feeds: dict, runs: int = 30, rounds: int = 3, threads: int = 0
                 ) -> dict[str, float]:
    """Per runtime node (by name): the median seconds of its kernel over `runs` runs profiled by
    onnxruntime (after 3 warm-ups; `threads` intra-op threads), the lowest of `rounds` such medians."""
    p = _Profiled(model, threads)
    try:
        p.run(feeds, 3 + runs * rounds)
        return p.node_seconds([3] + [runs] * rounds)
    finally:
        p.close()


def node_work(model: onnx.ModelProto | str, block: int = 16) -> dict[str, tuple[str, np.ndarray]]:
    """Per runtime node of a model (by name): its kernel class and [MACs, bytes read, written,
    of weights, groups] (the terms of `Profile.kernel_latency`)."""
    from .kernels import runtime_kernels
    graph = load(model)
    costs = cost_model(graph)
    by_name = {c.name: c for c in costs.ops}
    return {node: (cls, work_amounts(by_name[op]) * np.array(kernel_factors(by_name[op], cls, own, block)))
            for node, (op, cls, own) in runtime_kernels(graph).nodes.items() if op in by_name}


def _solve(x: np.ndarray, t: np.ndarray, min_s_per_mac: float) -> np.ndarray:
    """[overhead, s per MAC, per byte read, written, of weights, per group] of one class: NNLS on
    relative error, every s-per-MAC at least `min_s_per_mac` (the peak)."""
    from .calibrate import nnls
    a = np.concatenate([np.ones((len(t), 1)), x], axis=1)
    floor = np.zeros(WIDTH)
    floor[1] = min_s_per_mac
    w = nnls(a / t[:, None], (t - a @ floor) / t)
    return w + floor


def _spans(some: list[tuple[np.ndarray, float]], every: list[tuple[np.ndarray, float]]) -> bool:
    """Enough kernels in `some`, from the smallest tenth to the largest tenth of `every`'s
    sizes (MACs and bytes)."""
    if len(some) < MIN_SAMPLES:
        return False
    size = lambda v: np.array([w[:-1].sum() for w, _ in v])
    lo, hi = np.quantile(size(every), [0.1, 0.9])
    return size(some).min() <= lo and size(some).max() >= hi


class KernelFit:
    """The fitted kernel model: per class [overhead, s per MAC, per byte read, written, of
    weights, per group] ("*" for classes with fewer than MIN_SAMPLES kernels), and per run a
    fixed cost."""

    def __init__(self, benches: list[Bench], peak_macs: float, run_overhead: float):
        def samples_of(group: list[Bench]) -> dict[str, list[tuple[np.ndarray, float]]]:
            out: dict[str, list[tuple[np.ndarray, float]]] = {}
            for b in group:
                for node, (cls, work) in b.nodes.items():
                    if b.node_seconds.get(node, 0) > 0:
                        out.setdefault(cls, []).append((work, b.node_seconds[node]))
            return out

        # a kernel runs slower inside a network (other layers' weights and activations in the
        # caches) than alone: a class is fitted on its kernels inside the random networks where
        # they have enough of them, of sizes that span the class's benchmarks (a network's only
        # matrix product is its classifier: not what a transformer's are), else on all its kernels
        networks = [b for b in benches if b.network]
        samples, in_context = samples_of(benches), samples_of(networks)
        floor = 1.0 / peak_macs
        solve = lambda v: _solve(np.array([w for w, _ in v]), np.array([t for _, t in v]), floor)
        self.terms = {"*": solve([s for v in samples.values() for s in v])}
        for cls, v in samples.items():
            if _spans(in_context.get(cls, []), v):
                v = in_context[cls]
            if len(v) >= MIN_SAMPLES:
                self.terms[cls] = solve(v)
        # a run costs its own overhead (`run_overhead`, measured on chains of tiny ops) beyond its
        # kernels; the profiler adds a cost to every kernel it times: what a whole run's profiled
        # kernels take beyond the run without the profiler, per kernel, the median over the
        # networks (over all benchmarks where there are none)
        runs = networks or benches
        self.per_kernel = float(np.median([(sum(b.node_seconds.values()) - (b.seconds - run_overhead))
                                           / max(1, len(b.node_seconds)) for b in runs]))
        self.run_overhead = run_overhead
        for w in self.terms.values():
            w[0] = max(0.0, w[0] - self.per_kernel)

    def kernel_seconds(self, cls: str, work: np.ndarray) -> float:
        w = self.terms.get(cls, self.terms["*"])
        return float(w[0] + work @ w[1:])

    def kernels_seconds(self, b: Bench) -> float:
        return sum(self.kernel_seconds(cls, work) for cls, work in b.nodes.values())

    def seconds(self, b: Bench) -> float:
        """Predicted seconds of a run of a benchmark."""
        return self.run_overhead + self.kernels_seconds(b)


def fit(benches: list[Bench], base: Profile, seed: int = 0) -> tuple[Profile, dict]:
    """The kernel model of every class with enough kernels measured ("*" for the rest), the
    held-out report, and the profile that carries them."""
    peak = base.peak_gflops.get("fp32", 1.0) * 1e9 / 2  # MACs per second
    run = base.run_overhead_us * 1e-6
    rng = np.random.default_rng(seed)
    held = rng.random(len(benches)) < 0.2
    train = [b for b, h in zip(benches, held) if not h]
    test = [b for b, h in zip(benches, held) if h]
    model = KernelFit(train, peak, run)
    err = np.array([abs(model.seconds(b) - b.seconds) / b.seconds for b in test])
    model = KernelFit(benches, peak, run)
    fit_err = np.array([abs(model.seconds(b) - b.seconds) / b.seconds for b in benches])
    report = {"benchmarks": len(benches), "held_out": len(test),
              "held_out_median_error": float(np.median(err)) if err.size else 0.0,
              "held_out_p90_error": float(np.quantile(err, 0.9)) if err.size else 0.0,
              "held_out_within_10pct": float(np.mean(err <= 0.10)) if err.size else 0.0,
              "fit_median_error": float(np.median(fit_err))}
    used = {cls: np.zeros(WIDTH - 1, bool) for cls in model.terms}
    for b in benches:
        for cls, work in b.nodes.values():
            used[cls if cls in used else "*"] |= work > 0
            used["*"] |= work > 0
    kernels = {}
    for cls, w in sorted(model.terms.items(), key=lambda kv: (kv[0] == "*", kv[0])):
        entry = {"overhead_us": round(float(w[0]) * 1e6, 3)}
        for k, rate in enumerate(KERNEL_RATES, 1):
            # a term the fit drove to nothing (over 1000x the memory bandwidth) is left out
            if used[cls][k - 1] and w[k] * base.bandwidth_gbs * 1e9 * 1000 > 1:
                entry[rate] = round(float(1e-9 / w[k]), 3)
        if used[cls][-1] and w[-1] > 1e-9:  # at least a ns per group
            entry["group_us"] = round(float(w[-1]) * 1e6, 4)
        kernels[cls] = entry
    when = datetime.date.today().isoformat()
    how = (f"fitted by morphonnx calibrate --kernels on {when}: {len(benches)} kernel microbenchmarks, "
           f"each class on its own kernels' times (onnxruntime's profiler; inside the random networks where they "
           f"have enough), less the profiler's own cost per kernel (onnxruntime, {thread_setting(base.threads)}; "
           f"the lowest of 5 medians of >= 30 runs and 0.05 s); held out {report['held_out']} benchmarks: median error "
           f"{report['held_out_median_error']:.1%}, 90th percentile {report['held_out_p90_error']:.1%}, "
           f"{report['held_out_within_10pct']:.0%} within 10%")
    sources = dict(base.sources)
    sources["kernels"] = how
    profile = dataclasses.replace(base, op_overhead_us=0.0, sources=sources, efficiency={},
                                  run_overhead_us=round(float(model.run_overhead) * 1e6, 3), kernels=kernels)
    return profile, report


def calibrate_kernels(base: Profile, quick: bool = False, progress: Callable[[str], None] | None = None
                      ) -> tuple[Profile, dict]:
    """Build, measure and fit the kernel microbenchmarks on this machine (see the module docstring)."""
    say = progress or (lambda msg: None)
    benches = benchmarks(scale=0.4 if quick else 1.0)
    say(f"kernel microbenchmarks: {len(benches)} models")
    start = time.perf_counter()
    for b in benches:
        b.nodes = node_work(b.model, base.block)
    measure(benches, say, threads=base.threads)
    profile, report = fit(benches, base)
    say(f"kernel model: {len(profile.kernels)} classes in {time.perf_counter() - start:.0f}s; held out "
        f"{report['held_out']}: median error {report['held_out_median_error']:.1%}, "
        f"{report['held_out_within_10pct']:.0%} within 10%")
    return profile, report
