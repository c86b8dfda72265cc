"""Calibration of this machine with onnxruntime, and fitting the latency model to measurements.

`calibrate` measures peak GFLOP/s (a large MatMul and a large Conv), memory bandwidth (a
large Add) and the cost of one op (a chain of tiny ops) and returns a Profile. Each
measurement runs in rounds (3, or 5 without --quick) and keeps the best; the spread of the
rounds, (slowest - fastest) / fastest, is reported and written into the profile's sources,
and a spread over 10% warns that the machine looks busy. `fit` turns a bare roofline profile
into one with per-op-class efficiency factors and overheads, by non-negative least squares on
measured whole-model latencies. Every number of the profile gets a source saying how it was
measured or fitted.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .costs import CostModel
from .profiles import Profile, thread_setting

# Op classes whose efficiency is fitted; others share "*".
FIT_CLASSES = ("Conv", "Conv.unaligned", "Conv.depthwise", "Conv.depthwise.unaligned", "Gemm", "MatMul", "*")


def _cpu_flags() -> set[str] | None:
    """The processor's feature flags (from /proc/cpuinfo), None where there is none to read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return None
    return set(line.partition(":")[2].split())


def channel_block() -> int:
    """Channels per block of onnxruntime's blocked (NCHWc) CPU kernels: 16 with AVX-512, else 8."""
    return 16 if "avx512f" in (_cpu_flags() or ()) else 8


def channel_block_source() -> str:
    """How `channel_block` was found, for a profile's sources."""
    flags = _cpu_flags()
    seen = ("no /proc/cpuinfo to read (taken as no AVX-512)" if flags is None
            else f"/proc/cpuinfo flags {'include' if 'avx512f' in flags else 'lack'} avx512f")
    return (f"{seen}; onnxruntime's blocked (NCHWc) CPU kernels take 16 channels per block with AVX-512, "
            "else 8")


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
             warmup: int = 2, best: bool = False, threads: int = 0) -> float:
    """Median (or, with `best`, the shortest) seconds of one onnxruntime run (all optimizations,
    `threads` intra-op threads, 0 for onnxruntime's default)."""
    times = _run_times(_session(model, threads), feeds, repeat, warmup)
    return float(np.min(times) if best else np.median(times))


def _session(model: onnx.ModelProto | str | os.PathLike, threads: int = 0,
             profile_prefix: str | None = None) -> ort.InferenceSession:
    """A CPU session, all optimizations, `threads` intra-op threads (0: onnxruntime's default, one
    per core); with `profile_prefix`, its kernels timed by onnxruntime's profiler into files of
    that prefix."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _run_times(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], repeat: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return times


# ---- measuring this machine -------------------------------------------------------------------------

ROUNDS = 3             # rounds of every measurement, --quick included; the best round is kept
ROUNDS_FULL = 5        # without --quick
SPREAD_WARNING = 0.10  # rounds further apart than this: the machine looks busy


@dataclass(frozen=True)
class Figure:
    """One measured figure: its value from the best round, and how far apart the rounds were.

    `spread` is (slowest round - fastest round) / fastest round, over the timings the figure is
    computed from: 0.04 means the slowest round took 4% longer than the fastest. A round is the
    shortest of several runs, so a spread over SPREAD_WARNING means the machine was likely busy.
    """

    value: float
    spread: float
    rounds: int
    runs: int  # runs per round

    def how(self) -> str:
        """How the figure was taken, for a profile's sources."""
        busy = f" (over {SPREAD_WARNING:.0%}: the machine looked busy, the number may be low)" \
            if self.spread > SPREAD_WARNING else ""
        return (f"best of {self.rounds} rounds of {self.runs} runs, spread {self.spread:.1%}: the slowest round "
                f"took {self.spread:.1%} longer{busy}")


def round_times(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rounds: int, repeat: int,
                warmup: int = 2, threads: int = 0) -> list[float]:
    """Seconds of one onnxruntime run in each of `rounds` rounds, a round being the shortest of
    `repeat` runs (one session of `threads` intra-op threads, warmed up once). Every measurement of
    `calibrate` times through here."""
    sess = _session(model, threads)
    _run_times(sess, feeds, 0, warmup)
    return [min(_run_times(sess, feeds, repeat, 0)) for _ in range(rounds)]


def spread(times: Sequence[float]) -> float:
    """(slowest - fastest) / fastest of the rounds' seconds."""
    return (max(times) - min(times)) / max(min(times), 1e-12)


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    m = helper.make_model(helper.make_graph(nodes, "calibrate", inputs, outputs, list(inits)),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _f32(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _rate(work: float, model: onnx.ModelProto, feeds: dict[str, np.ndarray], repeat: int, rounds: int,
          threads: int = 0) -> Figure:
    """`work` per second of the fastest round, in billions."""
    times = round_times(model, feeds, rounds, repeat, threads=threads)
    return Figure(work / min(times) / 1e9, spread(times), rounds, repeat)


def measure_matmul(n: int, repeat: int, rounds: int = ROUNDS, threads: int = 0) -> Figure:
    """GFLOP/s of an n×n×n MatMul."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_f32("x", [n, n])], [_f32("y", [n, n])], [w])
    return _rate(2 * n ** 3, m, {"x": rng.standard_normal((n, n)).astype(np.float32)}, repeat, rounds, threads)


def measure_conv(c: int, hw: int, repeat: int, rounds: int = ROUNDS, threads: int = 0) -> Figure:
    """GFLOP/s of a 3x3 Conv with c input and output channels on hw×hw."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.05, "w")
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
               [_f32("x", [1, c, hw, hw])], [_f32("y", [1, c, hw, hw])], [w])
    return _rate(2 * c * c * 9 * hw * hw, m, {"x": rng.standard_normal((1, c, hw, hw)).astype(np.float32)},
                 repeat, rounds, threads)


def measure_bandwidth(n: int, repeat: int, rounds: int = ROUNDS, threads: int = 0) -> Figure:
    """GB/s of an elementwise Add of two n-float vectors (3 × 4n bytes moved)."""
    rng = np.random.default_rng(0)
    m = _model([helper.make_node("Add", ["a", "b"], ["y"])], [_f32("a", [n]), _f32("b", [n])], [_f32("y", [n])])
    feeds = {"a": rng.standard_normal(n).astype(np.float32), "b": rng.standard_normal(n).astype(np.float32)}
    return _rate(12 * n, m, feeds, repeat, rounds, threads)


def measure_overheads(ops: int, repeat: int, rounds: int = ROUNDS, threads: int = 0) -> tuple[Figure, Figure]:
    """(µs per op, µs per run) from chains of 1 and ops + 1 tiny Neg ops (onnxruntime cannot fuse
    them away), each chain's fastest round: per op (long - short) / ops, per run short - per op.
    Both take the larger spread of the two chains."""
    def chain(k: int) -> list[float]:
        nodes = [helper.make_node("Neg", [f"t{i}"], [f"t{i + 1}"]) for i in range(k)]
        m = _model(nodes, [_f32("t0", [1])], [_f32(f"t{k}", [1])])
        return round_times(m, {"t0": np.ones(1, np.float32)}, rounds, repeat * 5, threads=threads)
    short, long = chain(1), chain(ops + 1)
    per_op = max((min(long) - min(short)) / ops, 1e-8)
    per_run = max(min(short) - per_op, 1e-8)
    s = max(spread(short), spread(long))
    return Figure(per_op * 1e6, s, rounds, repeat * 5), Figure(per_run * 1e6, s, rounds, repeat * 5)


def calibrate(quick: bool = False, progress: Callable[[str], None] | None = None, threads: int = 0) -> Profile:
    """Measure this machine, with `threads` intra-op threads (0: onnxruntime's default, one per
    core), and return its roofline profile.

    Every measurement runs in ROUNDS rounds (ROUNDS_FULL without `quick`) and keeps the best;
    each figure's value, rounds and spread go to `progress` and into the profile's sources.
    Rounds further apart than SPREAD_WARNING give one "warning: ..." message (to `progress`,
    else as a RuntimeWarning): the machine looks busy and the numbers may be low.
    """
    say = progress or (lambda msg: None)
    repeat = 10  # runs per round: fewer leave rounds of the small --quick sizes 5-10% apart on an idle machine
    rounds = ROUNDS if quick else ROUNDS_FULL
    steps = [
        ("MatMul 512x512x512" if quick else "MatMul 1024x1024x1024",
         lambda: measure_matmul(512 if quick else 1024, repeat, rounds, threads)),
        ("Conv 3x3 128->128 on 28x28" if quick else "Conv 3x3 256->256 on 56x56",
         lambda: measure_conv(128 if quick else 256, 28 if quick else 56, repeat, rounds, threads)),
        ("Add of two 16M-float vectors" if quick else "Add of two 32M-float vectors",
         lambda: measure_bandwidth((1 << 24) if quick else (1 << 25), repeat + 2, rounds, threads)),
        ("chains of 1 and 101 tiny ops", lambda: measure_overheads(100, repeat, rounds, threads)),
    ]
    units = (("GFLOP/s",), ("GFLOP/s",), ("GB/s",), ("us per op", "us per run"))
    results = []
    for i, ((what, fn), unit) in enumerate(zip(steps, units), 1):
        say(f"[{i}/{len(steps)}] {what} ...")
        start = time.perf_counter()
        result = fn()
        results.append(result)
        figures = result if isinstance(result, tuple) else (result,)
        values = ", ".join(f"{f.value:.4g} {u}" for f, u in zip(figures, unit))
        say(f"[{i}/{len(steps)}] {what}: {values}, best of {figures[0].rounds} rounds, "
            f"spread {figures[0].spread:.1%} (in {time.perf_counter() - start:.1f}s)")
    matmul, conv, bandwidth, (per_op, per_run) = results
    busy = [f"{what} {fig.spread:.0%}" for (what, _), fig in zip(steps, (matmul, conv, bandwidth, per_op))
            if fig.spread > SPREAD_WARNING]
    if busy:
        message = (f"warning: the rounds of a measurement differ by more than {SPREAD_WARNING:.0%} "
                   f"({', '.join(busy)}): the machine looks busy and the numbers may be low; "
                   "calibrate again when it is idle")
        if progress is None:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        say(message)
    when = datetime.date.today().isoformat()
    flags = (" --quick" if quick else "") + (f" --threads {threads}" if threads else "")
    how = f"measured by morphonnx calibrate{flags} on {when} with onnxruntime {ort.__version__}"
    block = channel_block()
    setting = f", {thread_setting(threads)}" if threads else ""
    return Profile(
        key="calibrated", name=f"{cpu_name()} ({os.cpu_count()} cores, onnxruntime {ort.__version__}{setting})",
        kind="cpu", threads=threads,
        peak_gflops={"fp32": round(max(matmul.value, conv.value), 2)}, bandwidth_gbs=round(bandwidth.value, 2),
        op_overhead_us=round(per_op.value, 3), run_overhead_us=round(per_run.value, 3), channel_block=block,
        sources={
            "peak_gflops.fp32": f"{how}: the faster of {steps[0][0]} {matmul.value:.1f} GFLOP/s ({matmul.how()}) "
                                f"and {steps[1][0]} {conv.value:.1f} GFLOP/s ({conv.how()})",
            "bandwidth_gbs": f"{how}: {steps[2][0]}, 12 bytes per element, {bandwidth.value:.2f} GB/s "
                             f"({bandwidth.how()})",
            "op_overhead_us": f"{how}: (101-op chain - 1-op chain) / 100 of tiny Neg ops ({per_op.how()})",
            "run_overhead_us": f"{how}: 1-op chain minus the per-op overhead ({per_run.how()})",
            "channel_block": f"detected by morphonnx calibrate on {when}: {channel_block_source()}",
            **({"threads": f"set by morphonnx calibrate{flags} on {when}: every measurement ran with onnxruntime's "
                           f"intra-op threads at {threads}"} if threads else {})})


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
    bare.prepare(costs)
    sums = dict.fromkeys(FIT_CLASSES, 0.0)
    ops = 0
    for c in costs.ops:
        if not c.costed:
            continue
        t, bound = bare.latency(c)
        if bound not in ("none", "fused"):
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


def fit(profile: Profile, samples: Sequence[tuple[CostModel, float]], measured: str = "measured models") -> Profile:
    """A profile whose latency model best fits measured seconds of whole models (≥ 5 samples).

    `measured` says what the samples are, for the sources of the fitted numbers (each fitted
    efficiency and overhead gets one; a measured overhead's source is replaced).
    """
    if len(samples) < 5:
        raise ValueError("fit needs at least 5 measured models")
    a = np.stack([features(profile, c) for c, _ in samples])
    b = np.array([t for _, t in samples])
    # Relative errors matter: weight each sample by 1 / its latency.
    w = nnls(a / b[:, None], np.ones(len(b)))
    used = a[:, : len(FIT_CLASSES)].any(axis=0)
    efficiency = {k: round(float(min(10.0, 1.0 / v)), 4) if v > 0 else 10.0
                  for k, v, u in zip(FIT_CLASSES, w, used) if u}
    n = len(FIT_CLASSES)
    op_overhead, run_overhead = round(float(w[n]) * 1e6, 3), round(float(w[n + 1]) * 1e6, 3)
    how = (f"fitted by morphonnx on {len(samples)} {measured} on {datetime.date.today()} "
           "(non-negative least squares on the relative error of whole-model latency)")
    sources = {k: v for k, v in profile.sources.items()
               if k not in ("efficiency", "op_overhead_us", "run_overhead_us") and not k.startswith("efficiency.")}
    for k, v in zip(FIT_CLASSES, w):
        if k in efficiency:
            sources[f"efficiency.{k}"] = how if v > 0 else f"{how}; no time left to the class: capped at 10"
    if op_overhead:
        sources["op_overhead_us"] = how
    if run_overhead:
        sources["run_overhead_us"] = how
    return dataclasses.replace(profile, op_overhead_us=op_overhead, sources=sources, efficiency=efficiency,
                               run_overhead_us=run_overhead, kernels={})


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
            samples.append((costs, run_time(pruned, feeds, repeat=10, warmup=2, threads=profile.threads)))
            say(f"fit: {os.path.basename(str(m))} variant {k + 1}/{variants}: {samples[-1][1] * 1e3:.2f} ms")
    names = ", ".join(os.path.basename(str(m)) for m in models)
    return fit(profile, samples, f"random-width variants of {names} (each the median of 10 onnxruntime runs)")


def progress_printer(stream=None) -> Callable[[str], None]:
    """A progress callback writing one line per step (to stderr by default), "calibrate ..." or,
    for a warning, "warning: ..." as it is."""
    def say(msg: str) -> None:
        line = msg if msg.startswith("warning:") else f"calibrate {msg}"
        print(line, file=stream or sys.stderr, flush=True)
    return say
