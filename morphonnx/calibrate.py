"""Calibration of this machine with onnxruntime, and fitting the latency model to measurements.

`calibrate` measures peak GFLOP/s (a large MatMul and a large Conv), memory bandwidth (a
large Add) and the cost of one op (a chain of tiny ops) and returns a Profile. `fit` turns a
bare roofline profile into one with per-op-class efficiency factors and overheads, by
non-negative least squares on measured whole-model latencies.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from typing import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .costs import CostModel
from .profiles import Profile

# Op classes whose efficiency is fitted; others share "*".
FIT_CLASSES = ("Conv", "Conv.unaligned", "Conv.depthwise", "Conv.depthwise.unaligned", "Gemm", "MatMul", "*")


def channel_block() -> int:
    """Channels per block of onnxruntime's blocked (NCHWc) CPU kernels: 16 with AVX-512, else 8."""
    try:
        flags = next((line for line in open("/proc/cpuinfo", encoding="utf-8") if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return 16 if " avx512f" in flags else 8


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_time(model: onnx.ModelProto | str | os.PathLike, feeds: dict[str, np.ndarray], repeat: int = 10,
             warmup: int = 2, best: bool = False) -> float:
    """Median (or, with `best`, the shortest) seconds of one onnxruntime run (all optimizations,
    default threads)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.min(times) if best else np.median(times))


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    m = helper.make_model(helper.make_graph(nodes, "calibrate", inputs, outputs, list(inits)),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _f32(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def measure_matmul(n: int, repeat: int) -> float:
    """GFLOP/s of an n×n×n MatMul."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_f32("x", [n, n])], [_f32("y", [n, n])], [w])
    t = run_time(m, {"x": rng.standard_normal((n, n)).astype(np.float32)}, repeat, best=True)
    return 2 * n ** 3 / t / 1e9


def measure_conv(c: int, hw: int, repeat: int) -> float:
    """GFLOP/s of a 3x3 Conv with c input and output channels on hw×hw."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.05, "w")
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
               [_f32("x", [1, c, hw, hw])], [_f32("y", [1, c, hw, hw])], [w])
    t = run_time(m, {"x": rng.standard_normal((1, c, hw, hw)).astype(np.float32)}, repeat, best=True)
    return 2 * c * c * 9 * hw * hw / t / 1e9


def measure_bandwidth(n: int, repeat: int) -> float:
    """GB/s of an elementwise Add of two n-float vectors (3 × 4n bytes moved)."""
    rng = np.random.default_rng(0)
    m = _model([helper.make_node("Add", ["a", "b"], ["y"])], [_f32("a", [n]), _f32("b", [n])], [_f32("y", [n])])
    feeds = {"a": rng.standard_normal(n).astype(np.float32), "b": rng.standard_normal(n).astype(np.float32)}
    return 12 * n / run_time(m, feeds, repeat, best=True) / 1e9


def measure_overheads(ops: int, repeat: int) -> tuple[float, float]:
    """(µs per op, µs per run) from chains of tiny Neg ops (onnxruntime cannot fuse them away)."""
    def chain(k: int) -> float:
        nodes = [helper.make_node("Neg", [f"t{i}"], [f"t{i + 1}"]) for i in range(k)]
        m = _model(nodes, [_f32("t0", [1])], [_f32(f"t{k}", [1])])
        return run_time(m, {"t0": np.ones(1, np.float32)}, repeat * 5)
    short, long = chain(1), chain(ops + 1)
    per_op = max((long - short) / ops, 1e-8)
    return per_op * 1e6, max(short - per_op, 1e-8) * 1e6


def calibrate(quick: bool = False, progress: Callable[[str], None] | None = None) -> Profile:
    """Measure this machine and return its roofline profile."""
    say = progress or (lambda msg: None)
    repeat = 3 if quick else 10
    steps = [
        ("MatMul 512x512x512" if quick else "MatMul 1024x1024x1024", lambda: measure_matmul(512 if quick else 1024, repeat)),
        ("Conv 3x3 128->128 on 28x28" if quick else "Conv 3x3 256->256 on 56x56",
         lambda: measure_conv(128 if quick else 256, 28 if quick else 56, repeat)),
        ("Add of two 16M-float vectors" if quick else "Add of two 32M-float vectors",
         lambda: measure_bandwidth((1 << 24) if quick else (1 << 25), repeat + 2)),
        ("chains of 100 tiny ops", lambda: measure_overheads(100, repeat)),
    ]
    results = []
    for i, (what, fn) in enumerate(steps, 1):
        say(f"[{i}/{len(steps)}] {what} ...")
        start = time.perf_counter()
        results.append(fn())
        say(f"[{i}/{len(steps)}] {what}: done in {time.perf_counter() - start:.1f}s")
    matmul, conv, bandwidth, (per_op, per_run) = results
    when = datetime.date.today().isoformat()
    how = f"measured by morphonnx calibrate{' --quick' if quick else ''} on {when} with onnxruntime {ort.__version__}"
    return Profile(
        key="calibrated", name=f"{cpu_name()} ({os.cpu_count()} cores, onnxruntime {ort.__version__})", kind="cpu",
        peak_gflops={"fp32": round(max(matmul, conv), 2)}, bandwidth_gbs=round(bandwidth, 2),
        op_overhead_us=round(per_op, 3), run_overhead_us=round(per_run, 3), channel_block=channel_block(),
        sources={"peak_gflops.fp32": f"{how}: {steps[0][0]} {matmul:.1f} GFLOP/s, {steps[1][0]} {conv:.1f} GFLOP/s",
                 "bandwidth_gbs": f"{how}: {steps[2][0]}, 12 bytes per element",
                 "op_overhead_us": f"{how}: {steps[3][0]}"})


# ---- fitting ---------------------------------------------------------------------------------------

def fit_class(profile: Profile, cost) -> str:
    """The fitted class of an op (the most specific of FIT_CLASSES that matches)."""
    key = profile.op_class(cost)
    while key and key not in FIT_CLASSES:
        key = key.rpartition(".")[0]
    return key or "*"


def features(profile: Profile, costs: CostModel) -> np.ndarray:
    """Per model: bare roofline seconds of each fitted op class, the op count, and 1."""
    bare = Profile(profile.key, profile.name, profile.peak_gflops, profile.bandwidth_gbs,
                   channel_block=profile.channel_block)
    sums = dict.fromkeys(FIT_CLASSES, 0.0)
    ops = 0
    for c in costs.ops:
        if not c.costed:
            continue
        t, bound = bare.latency(c)
        if bound != "none":
            sums[fit_class(bare, c)] += t
            ops += 1
    return np.array([sums[k] for k in FIT_CLASSES] + [ops, 1.0])


def nnls(a: np.ndarray, b: np.ndarray, sweeps: int = 500) -> np.ndarray:
    """Non-negative least squares min |a x - b| (x >= 0), by coordinate descent on scaled columns."""
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    a = a / scale
    ata, atb = a.T @ a, a.T @ b
    x = np.zeros(a.shape[1])
    for _ in range(sweeps):
        for j in range(len(x)):
            if ata[j, j] > 0:
                x[j] = max(0.0, x[j] + (atb[j] - ata[j] @ x) / ata[j, j])
    return x / scale


def fit(profile: Profile, samples: Sequence[tuple[CostModel, float]]) -> Profile:
    """A profile whose latency model best fits measured seconds of whole models (≥ 5 samples)."""
    if len(samples) < 5:
        raise ValueError("fit needs at least 5 measured models")
    a = np.stack([features(profile, c) for c, _ in samples])
    b = np.array([t for _, t in samples])
    # Relative errors matter: weight each sample by 1 / its latency.
    w = nnls(a / b[:, None], np.ones(len(b)))
    used = a[:, : len(FIT_CLASSES)].any(axis=0)
    efficiency = {k: round(float(min(10.0, 1.0 / v)), 4) if v > 0 else 10.0
                  for k, v, u in zip(FIT_CLASSES, w, used) if u}
    sources = dict(profile.sources)
    sources["efficiency"] = f"fitted by morphonnx on {len(samples)} measured models on {datetime.date.today()}"
    n = len(FIT_CLASSES)
    return Profile(profile.key, profile.name, dict(profile.peak_gflops), profile.bandwidth_gbs,
                   op_overhead_us=round(float(w[n]) * 1e6, 3), kind=profile.kind, sources=sources,
                   efficiency=efficiency, run_overhead_us=round(float(w[n + 1]) * 1e6, 3),
                   channel_block=profile.channel_block)


def random_variants(model, n: int, seed: int = 0, multiple: int = 1):
    """n random-width variants of a model (random masks, pruned without the check):
    yields (cost model, pruned ModelProto, feeds)."""
    from .graph import load
    from .groups import find_groups
    from .masks import all_alive, legalize
    from .oracle import random_inputs
    from .rewrite import prune
    from .costs import cost_model
    graph = load(model)
    groups = find_groups(graph)
    feeds = random_inputs(graph, 0)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        masks = all_alive(groups)
        share = rng.uniform(0.15, 1.0)
        for g in groups.groups:
            if not g.pinned:
                keep = rng.random(g.size) < share * rng.uniform(0.7, 1.0)
                keep[rng.integers(g.size)] = True
                masks.keep[g.id] = keep
        pruned = prune(groups, legalize(groups, masks, multiple)).model
        yield cost_model(load(pruned)), pruned, feeds


def fit_on_models(profile: Profile, models: Sequence[str], variants: int = 12,
                  progress: Callable[[str], None] | None = None) -> Profile:
    """Measure random-width variants of the models in onnxruntime and fit the profile to them."""
    say = progress or (lambda msg: None)
    samples = []
    for m in models:
        for k, (costs, pruned, feeds) in enumerate(random_variants(m, variants)):
            samples.append((costs, run_time(pruned, feeds, repeat=10, warmup=2)))
            say(f"fit: {os.path.basename(str(m))} variant {k + 1}/{variants}: {samples[-1][1] * 1e3:.2f} ms")
    return fit(profile, samples)


def progress_printer(stream=None) -> Callable[[str], None]:
    """A progress callback writing one line per step (to stderr by default)."""
    def say(msg: str) -> None:
        print(f"calibrate {msg}", file=stream or sys.stderr, flush=True)
    return say
