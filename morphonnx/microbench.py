"""Microbenchmarks of runtime kernels, and the kernel latency model fitted on them.

`benchmarks()` builds small models that cover the space of the kernels onnxruntime runs on a
CPU: convolutions of every variant (1x1, kxk, depthwise, grouped) at channel counts drawn
log-uniformly (aligned to the SIMD block or not, as pruned models have them), spatial sizes,
strides and kernel sizes, in both forms a runtime meets (fused into its blocked NCHWc kernels,
and the plain kernels it runs when an export computes the bias at run time), matrix products,
pools, normalizations, elementwise ops, concats, reductions, softmax and transposes.
`measure()` times each (onnxruntime, default threads, all optimizations, median of runs, the
lowest of five rounds) and
`fit()` gives every kernel class the model

    seconds = overhead + MACs / mac_rate + bytes / byte_rate

with the MACs and bytes of the op that carries the kernel (`kernels.kernel_map`), fitted by
non-negative least squares on relative error: monotone (more work is never faster) and
physical (a class never computes faster than the measured peak). A fifth of the benchmarks is
held out first and predicted by the fit on the rest: that error is reported and written into
the profile's sources; the profile's model is then fitted on all of them.
"""
from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .costs import cost_model
from .graph import load
from .profiles import KERNEL_RATES, Profile, kernel_work

MIN_SAMPLES = 4  # a class with fewer benchmarks shares the pooled "*" model
WIDTH = 1 + len(KERNEL_RATES)  # per class: kernels, then one amount per rate


@dataclass
class Bench:
    """One benchmark model, its feeds, and what it measured."""

    name: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    seconds: float = 0.0
    features: dict[str, np.ndarray] | None = None  # class → [kernels, MACs, bytes]


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


def _channels(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def _conv_bench(rng: np.random.Generator, variant: str, plain: bool) -> Bench:
    """A conv block as exports have them: conv, then activation (and BN for the plain form),
    sometimes a residual add."""
    net = _Net(rng)
    hw = int(rng.choice([7, 14, 28, 56, 112]))
    stride = int(rng.choice([1, 1, 2]))
    if variant == "dw":
        c = _channels(rng, 8, 1200)
        cin = cout = group = c
        k = int(rng.choice([3, 3, 5]))
    else:
        cin, cout = _channels(rng, 4, 1024), _channels(rng, 4, 1024)
        k = 1 if variant == "k1" else int(rng.choice([3, 3, 3, 5, 7]))
        group = 1
        if variant == "grouped":
            group = int(rng.choice([2, 4, 8, 16, 32]))
            cin, cout = group * max(1, cin // group), group * max(1, cout // group)
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
        c2 = cout if variant == "dw" else group * max(1, min(_channels(rng, 4, 1024),
                                                             int(3e8 / (cout * k * k * out_hw ** 2))) // group)
        y = net.node("Relu", [net.conv(y, cout, c2, k, 1, cout if variant == "dw" else group, False)])
    m, feeds = net.model({"x": (1, cin, hw, hw)}, y)
    name = f"{'plain' if plain else 'fused'} conv {variant} {cin}->{cout} k{k} s{stride} g{group} {hw}x{hw}" + \
        (" +res" if residual else "") + (f" ->{c2}" if chained else "")
    return Bench(name, m, feeds)


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
    for kind, k in (("pool", 12), ("bn", 8), ("elementwise", 28), ("concat", 8), ("mean", 8), ("gate", 10),
                    ("small", 8), ("softmax", 6), ("layernorm", 6), ("transpose", 6)):
        out += [_other_bench(rng, kind) for _ in range(n(k))]
    return out


def measure(benches: list[Bench], progress: Callable[[str], None] | None = None, rounds: int = 5) -> None:
    """Time every benchmark (default threads, all optimizations): the median of a round of at
    least 30 runs and 0.1 s, after 3 warm-ups; the lowest of `rounds` such medians, since a busy
    moment of the machine only ever slows a round down."""
    from .calibrate import _session
    say = progress or (lambda msg: None)
    for k, b in enumerate(benches, 1):
        b.seconds = median_seconds(_session(b.model), b.feeds, rounds, runs=30, min_seconds=0.1)
        if k % 25 == 0 or k == len(benches):
            say(f"  measured {k}/{len(benches)} benchmarks")


def median_seconds(sess, feeds: dict, rounds: int = 3, runs: int = 15, min_seconds: float = 0.05) -> float:
    """The lowest over `rounds` of the median of >= `runs` runs (and >= `min_seconds`) of a session."""
    from .calibrate import _run_times
    first = _run_times(sess, feeds, 3, 0)
    n = max(runs, min(400, int(min_seconds / max(min(first), 1e-6))))
    return float(min(np.median(_run_times(sess, feeds, n, 0)) for _ in range(rounds)))


def features(model: onnx.ModelProto | str, block: int = 16) -> dict[str, np.ndarray]:
    """Per kernel class: [kernels, MACs, bytes read, written, of weights] of the runtime kernels
    of a model (the terms of `Profile.kernel_latency`)."""
    costs = cost_model(load(model))
    costs.attach_runtime()
    out: dict[str, np.ndarray] = {}
    for c in costs.ops:
        for cls, amounts in kernel_work(c, block):
            out[cls] = out.get(cls, np.zeros(WIDTH)) + np.concatenate([[1.0], amounts])
    return out


def _design(benches: list[Bench], classes: list[str]) -> np.ndarray:
    """Columns: run overhead, then per class its kernels and amounts (`features`); a class not
    fitted on its own goes to "*"."""
    index = {c: i for i, c in enumerate(classes)}
    a = np.zeros((len(benches), 1 + WIDTH * len(classes)))
    a[:, 0] = 1.0
    for r, b in enumerate(benches):
        for cls, f in b.features.items():
            j = 1 + WIDTH * index.get(cls, index["*"])
            a[r, j: j + WIDTH] += f
    return a


def _solve(a: np.ndarray, t: np.ndarray, min_s_per_mac: float) -> np.ndarray:
    """NNLS on relative error with every s-per-MAC at least `min_s_per_mac` (the peak)."""
    from .calibrate import nnls
    floor = np.zeros(a.shape[1])
    floor[2::WIDTH] = min_s_per_mac
    rest = t - a @ floor
    w = nnls(a / t[:, None], rest / t)
    return w + floor


def fit(benches: list[Bench], base: Profile, seed: int = 0) -> tuple[Profile, dict]:
    """The kernel model of every class with enough benchmarks ("*" for the rest), the held-out
    report, and the profile that carries them."""
    counts: dict[str, int] = {}
    for b in benches:
        for cls in b.features:
            counts[cls] = counts.get(cls, 0) + 1
    classes = sorted(c for c, n in counts.items() if n >= MIN_SAMPLES) + ["*"]
    t = np.array([b.seconds for b in benches])
    peak = base.peak_gflops.get("fp32", 1.0) * 1e9 / 2  # MACs per second
    rng = np.random.default_rng(seed)
    held = rng.random(len(benches)) < 0.2
    a = _design(benches, classes)
    w = _solve(a[~held], t[~held], 1.0 / peak)
    err = np.abs(a[held] @ w - t[held]) / t[held]
    w = _solve(a, t, 1.0 / peak)
    fit_err = np.abs(a @ w - t) / t
    report = {"benchmarks": len(benches), "held_out": int(held.sum()),
              "held_out_median_error": float(np.median(err)) if err.size else 0.0,
              "held_out_p90_error": float(np.quantile(err, 0.9)) if err.size else 0.0,
              "held_out_within_10pct": float(np.mean(err <= 0.10)) if err.size else 0.0,
              "fit_median_error": float(np.median(fit_err))}
    kernels = {}
    present = a.any(axis=0)
    for i, cls in enumerate(classes):
        j = 1 + WIDTH * i
        entry = {"overhead_us": round(float(w[j]) * 1e6, 3)}
        for k, rate in enumerate(KERNEL_RATES, 1):
            # a term the fit drove to nothing (over 1000x the memory bandwidth) is left out
            if present[j + k] and w[j + k] * base.bandwidth_gbs * 1e9 * 1000 > 1:
                entry[rate] = round(float(1e-9 / w[j + k]), 3)
        kernels[cls] = entry
    when = datetime.date.today().isoformat()
    how = (f"fitted by morphonnx calibrate --kernels on {when}: {len(benches)} kernel microbenchmarks "
           f"(onnxruntime, default threads, lowest of 5 medians of >= 30 runs and 0.1 s); held out {report['held_out']}: median error "
           f"{report['held_out_median_error']:.1%}, 90th percentile {report['held_out_p90_error']:.1%}, "
           f"{report['held_out_within_10pct']:.0%} within 10%")
    sources = dict(base.sources)
    sources["kernels"] = how
    sources["run_overhead_us"] = how
    profile = Profile(base.key, base.name, dict(base.peak_gflops), base.bandwidth_gbs, op_overhead_us=0.0,
                      kind=base.kind, sources=sources, run_overhead_us=round(float(w[0]) * 1e6, 3),
                      channel_block=base.channel_block, kernels=kernels)
    return profile, report


def calibrate_kernels(base: Profile, quick: bool = False, progress: Callable[[str], None] | None = None
                      ) -> tuple[Profile, dict]:
    """Build, measure and fit the kernel microbenchmarks on this machine (see the module docstring)."""
    say = progress or (lambda msg: None)
    benches = benchmarks(scale=0.4 if quick else 1.0)
    say(f"kernel microbenchmarks: {len(benches)} models")
    start = time.perf_counter()
    for b in benches:
        b.features = features(b.model, base.block)
    measure(benches, say)
    profile, report = fit(benches, base)
    say(f"kernel model: {len(profile.kernels)} classes in {time.perf_counter() - start:.0f}s; held out "
        f"{report['held_out']}: median error {report['held_out_median_error']:.1%}, "
        f"{report['held_out_within_10pct']:.0%} within 10%")
    return profile, report
