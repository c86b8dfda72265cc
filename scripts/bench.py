#!/usr/bin/env python
"""Benchmarks, printed as ratios against references measured in the same run; nothing is asserted.

    python scripts/bench.py scaling [--sizes 100,1000,10000] [--repeat 1] [--no-breakdown] [--out FILE]
    python scripts/bench.py prune [--zoo DIR] [--models resnet50:folded,resnet50:bn,densenet121,mobilenet_v2]
                                  [--repeat 3] [--share 0.5] [--seed 0] [--round 16] [--out FILE]
    python scripts/bench.py analyze [--zoo DIR] [--models resnet50,mobilenet_v2,densenet121] [--repeat 3]
                                    [--out FILE]
    python scripts/bench.py latency [--zoo DIR] [--models resnet18,mobilenet_v2] [--variants 50] [--round 1]
                                    [--out FILE]
    python scripts/bench.py penalty [--batch 16] [--steps 3] [--out FILE]

`--models` takes zoo names (scripts/export_zoo.py builds what is missing), each optionally as
NAME:FORM (`resnet50:bn`); a bare name means every form for `analyze` and the folded form for
`prune`. `--out FILE` also writes the printed tables as Markdown to FILE (e.g. docs/bench.md,
to keep a recent result). Timings are the best of `--repeat` runs; a "process" time is the wall time
of a fresh `python` child (start-up included) and its peak RSS (`os.wait4`).

`scaling` builds synthetic residual chains (`res_chain`: a stem Conv-BN, BLOCKS ResNet basic
blocks on 16 channels at 8x8, a GlobalAveragePool-Flatten-Gemm head) of each size and runs
`morphonnx analyze`, `morphonnx groups` and `morphonnx prune --threshold 0.9` (with its check)
on each as fresh processes, next to the references `onnx.load` + `onnx.save` and one
onnxruntime session + run of the original and of the pruned model. It prints seconds and
peak MiB per block, their ratio to the smallest size, and the marginal cost per block
((t_N - t_smallest) / (N - smallest)), which start-up costs cannot flatter: a linear hot path
keeps the marginal cost flat. Unless `--no-breakdown`, one more instrumented prune run per
size splits out onnxruntime's session creation and runs.

`prune` on zoo models: (a) in-process, `morphonnx.rewrite.prune` alone on random masks
keeping `--share` of every group, next to onnxsim's `apply_structured_pruning` at sparsity
1 - share (onnxsim leaves BN-kept exports unchanged); (b) the whole `morphonnx prune --masks`
process (with its check) next to the sum of `onnx.load` + `onnx.save`, one onnxruntime
session + run of the original and one of the pruned model, each its own process; (c) with
masks rounded to multiples of `--round` (0: skip), onnxruntime latency (median of 20 runs
after 3 warm-ups) of the original and the pruned model beside the MACs reduction, then where
the difference goes: onnxruntime's profiler per op class, next to the per-class prediction
of this machine's quick calibrated profile (`morphonnx.calibrate.calibrate(quick=True)`).

`analyze` on zoo models: in-process `morphonnx.analyze` (two profiles, JSON document) next to
in-process `onnx.load` + `onnx.save`; then the whole `morphonnx analyze F` process next to
onnx-tool's `Model(F); graph.shape_infer(); graph.profile()` and `onnx.load` + `onnx.save`
processes ("onnx-tool failed" where it raises).

`latency` measures the latency model's fidelity on this CPU: `--variants` random-width
variants (random masks) of each model are measured in onnxruntime and predicted by (a) the
bare roofline of this machine (`calibrate`), (b) the same with its measured per-op and
per-run overheads, (c) the model fitted (`calibrate.fit`) on every other variant, evaluated
on the variants it did not see. It prints Spearman's rank correlation, the share of variants
within ±10% and ±20%, and the MAPE of each, then the per-op error of the fitted model on the
largest ops of the original, measured with onnxruntime's profiler.

`penalty` times one training step of torchvision's resnet18 (batch 16, 224x224, CPU, SGD)
with and without the torch adapter's FLOP penalty, and prints the ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_zoo  # noqa: E402

import morphonnx  # noqa: E402

PROFILES = ("v100", "p100")
PY = sys.executable


# ---- printed tables, also as Markdown -----------------------------------------------------------

class Table:
    """A table printed row by row as it is measured, kept for the Markdown output."""

    def __init__(self, title: str, columns: list[tuple[str, int]]):
        self.title, self.columns, self.rows = title, columns, []
        print(f"\n{title}")
        self._print([name for name, _ in columns])

    def _print(self, cells: list[str]) -> None:
        """One line: the first column left-aligned, the others right-aligned."""
        (_, w0), rest = self.columns[0], self.columns[1:]
        line = f"{cells[0]:{w0}s}" + "".join(f" {c:>{w}s}" for c, (_, w) in zip(cells[1:], rest))
        print(line.rstrip(), flush=True)

    def row(self, *cells) -> None:
        """Print and keep one row (cells already formatted; numbers are formatted with str)."""
        cells = [c if isinstance(c, str) else str(c) for c in cells]
        self.rows.append(cells)
        self._print(cells)

    def markdown(self) -> str:
        """The table as Markdown."""
        head = [name for name, _ in self.columns]
        lines = [f"**{self.title}**", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        return "\n".join(lines)


class Report:
    """What a subcommand prints: tables and notes, in order, also written as Markdown by `write`."""

    def __init__(self):
        self.parts: list = []

    def header(self, argv: list[str]) -> None:
        """The command line and this machine, as the Markdown heading."""
        self.parts.append(f"## `scripts/bench.py {' '.join(argv)}`\n\n{machine()}")

    def table(self, title: str, columns: list[tuple[str, int]]) -> Table:
        """A new table, printed as it fills."""
        t = Table(title, columns)
        self.parts.append(t)
        return t

    def say(self, text: str = "") -> None:
        """Print a note (its own paragraph in Markdown)."""
        print(text, flush=True)
        if text:
            self.parts.append(text)

    @contextlib.contextmanager
    def verbatim(self):
        """Print through as usual and keep the text as a fenced block (for free-form output)."""
        buf = io.StringIO()

        class Tee(io.TextIOBase):
            def write(self, s):
                sys.__stdout__.write(s)
                return buf.write(s)

            def flush(self):
                sys.__stdout__.flush()

        with contextlib.redirect_stdout(Tee()):
            yield
        self.parts.append("```text\n" + buf.getvalue().rstrip() + "\n```")

    def write(self, path: Path | None) -> None:
        """Write everything as Markdown to `path` (nothing when None)."""
        if path is not None:
            text = "\n\n".join(p.markdown() if isinstance(p, Table) else p for p in self.parts)
            path.write_text(text + "\n")
            print(f"\nwrote {path}")


def machine() -> str:
    """This machine and the versions measured, in one line."""
    import onnxruntime as ort
    from morphonnx.calibrate import cpu_name
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "?"
    return (f"{datetime.date.today().isoformat()}, {cpu_name()} ({os.cpu_count()} cores), Python "
            f"{platform.python_version()}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
            f"morphonnx {morphonnx.__version__} at {commit} (working tree as it was)")


# ---- timing --------------------------------------------------------------------------------------

def best(fn, repeat: int) -> float:
    """Best wall time of `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@dataclass
class Proc:
    """A child process's wall seconds and peak RSS (MiB); `error` is set when it failed."""

    seconds: float
    peak_mib: float
    error: str = ""

    def cell(self, fmt: str = ".3f") -> str:
        """Its seconds, or "failed"."""
        return "failed" if self.error else f"{self.seconds:{fmt}}"


# Peak RSS is read from a small launcher's child: a process exec'd straight from this one (big, once
# zoo models are loaded) starts its ru_maxrss at this process's RSS, the kernel keeps it over exec.
LAUNCHER = """import os, sys, time
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ,
                     file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - start, os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def child_once(argv: list[str]) -> Proc:
    """Run `argv` once as a fresh process (stdout to /dev/null) from the launcher: wall seconds,
    peak RSS (ru_maxrss of `os.wait4`, KiB on Linux), or the failure (last line of stderr)."""
    with tempfile.TemporaryFile() as err:
        done = subprocess.run([PY, "-S", "-c", LAUNCHER, *argv], stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            seconds, rc, kib = done.stdout.split()
        except ValueError:
            seconds, rc, kib = 0, done.returncode or -1, 0
        if int(rc):
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines() or [f"exit {rc}"]
            return Proc(float(seconds), int(kib) / 1024, lines[-1][:200])
        return Proc(float(seconds), int(kib) / 1024)


def child(argv: list[str], repeat: int = 1) -> Proc:
    """`child_once` `repeat` times: the best wall time and the smallest peak RSS, or the first failure."""
    runs = []
    for _ in range(repeat):
        runs.append(child_once(argv))
        if runs[-1].error:
            return runs[-1]
    return Proc(min(r.seconds for r in runs), min(r.peak_mib for r in runs))


def rss_floor() -> float:
    """The peak RSS the launcher's child starts from (MiB), read on `true`."""
    return child_once(["/bin/true"]).peak_mib


IO_REF = """import os, sys, onnx
src, dst, external = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
onnx.save(onnx.load(src), dst, save_as_external_data=external, location=os.path.basename(dst) + ".data")
"""
ORT_REF = """import sys, numpy as np, onnxruntime as ort
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.log_severity_level = 3
sess = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
sess.run(None, {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], types.get(i.type, np.int64))
                for i in sess.get_inputs()})
"""
ONNX_TOOL_REF = "import onnx_tool, sys; m = onnx_tool.Model(sys.argv[1]); m.graph.shape_infer(); m.graph.profile()"


def has_external_data(path: Path) -> bool:
    """Whether the model file keeps its weights in external data."""
    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def io_ref(path: Path, tmp: Path, repeat: int = 1) -> Proc:
    """`onnx.load` + `onnx.save` of the file (external data kept external) as a process."""
    return child([PY, "-c", IO_REF, str(path), str(tmp / "copy.onnx"), "1" if has_external_data(path) else "0"],
                 repeat)


def ort_ref(path: Path, repeat: int = 1) -> Proc:
    """One onnxruntime CPU session (all optimizations) + one run, as a process."""
    return child([PY, "-c", ORT_REF, str(path)], repeat)


def morphonnx_cli(*args, repeat: int = 1) -> Proc:
    """`python -m morphonnx ARGS` as a process."""
    return child([PY, "-m", "morphonnx", *map(str, args)], repeat)


# ---- zoo files ------------------------------------------------------------------------------------

def zoo_files(zoo: Path, specs: str, default_forms: tuple[str, ...] | None) -> list[tuple[str, Path]]:
    """(label, path) of every NAME[:FORM] in `specs`; a bare name takes `default_forms` (None: all)."""
    pairs = [s.partition(":")[::2] for s in specs.split(",") if s]
    manifest = export_zoo.ensure(zoo, sorted({name for name, _ in pairs}))
    out = []
    for name, form in pairs:
        entry = manifest[name]
        forms = [form] if form else [f for f in export_zoo.forms(entry) if default_forms is None or f in default_forms]
        out += [(f"{name} ({f})", zoo / entry["files"][f]) for f in forms]
    return out


def node_count(path: Path) -> int:
    """Nodes of the main graph."""
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def param_count(model: onnx.ModelProto) -> int:
    """Elements of every initializer (from their dims: external data need not be loaded)."""
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in model.graph.initializer))


# ---- scaling ----------------------------------------------------------------------------------------

def _conv(name: str, x: str, w: np.ndarray) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    """A 3x3 'same' Conv node and its weight."""
    init = numpy_helper.from_array(w.astype(np.float32), f"{name}.w")
    return helper.make_node("Conv", [x, init.name], [f"{name}.y"], name=name, kernel_shape=[3, 3],
                            pads=[1, 1, 1, 1]), init


def _bn(name: str, x: str, channels: int, rng) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """A BatchNormalization node with scale ~U(0.5, 1.5), bias and mean ~U(-0.1, 0.1), var ~U(0.5, 1.5)."""
    values = {"scale": rng.uniform(0.5, 1.5, channels), "bias": rng.uniform(-0.1, 0.1, channels),
              "mean": rng.uniform(-0.1, 0.1, channels), "var": rng.uniform(0.5, 1.5, channels)}
    inits = [numpy_helper.from_array(v.astype(np.float32), f"{name}.{k}") for k, v in values.items()]
    return helper.make_node("BatchNormalization", [x] + [t.name for t in inits], [f"{name}.y"], name=name), inits


def res_chain(blocks: int, channels: int = 16, size: int = 8) -> onnx.ModelProto:
    """A stem Conv-BN, `blocks` ResNet basic blocks (Conv3x3-BN-Relu-Conv3x3-BN, Add of the block
    input, Relu) and a GlobalAveragePool-Flatten-Gemm(channels -> 10) head, so that the residual
    stream is prunable too. Weights are He-scaled, the second conv of a block further by
    1/sqrt(blocks), so activations stay bounded however deep the chain (a check of inf against
    inf proves nothing). Opset 17, static input [1, channels, size, size]; 7 * blocks + 5 nodes."""
    rng = np.random.default_rng(0)
    he = np.sqrt(2 / (9 * channels))

    def conv_bn(name: str, x: str, scale: float) -> str:
        conv, w = _conv(f"{name}.conv", x, rng.standard_normal((channels, channels, 3, 3)) * he * scale)
        bn, stats = _bn(f"{name}.bn", conv.output[0], channels, rng)
        nodes.extend([conv, bn])
        inits.extend([w] + stats)
        return bn.output[0]

    nodes, inits = [], []
    x = conv_bn("stem", "input", 1.0)
    for i in range(blocks):
        h = conv_bn(f"b{i}.1", x, 1.0)
        nodes.append(helper.make_node("Relu", [h], [f"b{i}.1.r"], name=f"b{i}.1.relu"))
        h = conv_bn(f"b{i}.2", f"b{i}.1.r", 1 / np.sqrt(blocks))
        nodes += [helper.make_node("Add", [h, x], [f"b{i}.add"], name=f"b{i}.add"),
                  helper.make_node("Relu", [f"b{i}.add"], [f"b{i}.out"], name=f"b{i}.relu")]
        x = f"b{i}.out"
    fc_w = numpy_helper.from_array((rng.standard_normal((10, channels)) / np.sqrt(channels)).astype(np.float32), "fc.w")
    fc_b = numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    x_info = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])
    y_info = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])
    graph = helper.make_graph(nodes, "res_chain", [x_info], [y_info], inits + [fc_w, fc_b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


BREAKDOWN = """import atexit, json, runpy, sys, time
import onnxruntime as ort
spent = {"session": 0.0, "run": 0.0}
def timed(fn, key):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - start
    return wrapper
S = ort.InferenceSession
S._create_inference_session = timed(S._create_inference_session, "session")
S.run = timed(S.run, "run")
S.run_with_iobinding = timed(S.run_with_iobinding, "run")
report = sys.argv.pop(1)
atexit.register(lambda: open(report, "w").write(json.dumps(spent)))
sys.argv[0] = "morphonnx"
runpy.run_module("morphonnx", run_name="__main__", alter_sys=True)
"""


def prune_breakdown(path: Path, out: Path, tmp: Path) -> tuple[Proc, dict]:
    """One `morphonnx prune` process with onnxruntime's session creation and runs timed inside it."""
    spent = tmp / "spent.json"
    proc = child([PY, "-c", BREAKDOWN, str(spent), "prune", str(path), "--threshold", "0.9", "-o", str(out)])
    return proc, ({} if proc.error else json.loads(spent.read_text()))


SCALING_COMMANDS = ("analyze", "groups", "prune")
SCALING_REFS = ("onnx load+save", "ORT session+run", "ORT session+run pruned")


def scaling_runs(blocks: int, repeat: int, tmp: Path) -> dict[str, Proc]:
    """Every command and reference on a residual chain of `blocks` blocks."""
    path, out = tmp / f"res{blocks}.onnx", tmp / f"res{blocks}.pruned.onnx"
    onnx.save(res_chain(blocks), str(path))
    runs = {"analyze": morphonnx_cli("analyze", path, repeat=repeat),
            "groups": morphonnx_cli("groups", path, repeat=repeat),
            "prune": morphonnx_cli("prune", path, "--threshold", "0.9", "-o", out, repeat=repeat),
            "onnx load+save": io_ref(path, tmp, repeat), "ORT session+run": ort_ref(path, repeat)}
    runs["ORT session+run pruned"] = ort_ref(out, repeat) if out.exists() else Proc(0, 0, "no pruned model")
    return runs


def reference_of(label: str, runs: dict[str, Proc]) -> float | None:
    """The reference a command is divided by: load+save, plus both ORT runs for prune."""
    refs = {"analyze": ["onnx load+save"], "groups": ["onnx load+save"], "prune": list(SCALING_REFS)}.get(label)
    if not refs or any(runs[r].error for r in refs):
        return None
    return sum(runs[r].seconds for r in refs)


def scaling_row(t: Table, blocks: int, label: str, run: Proc, first: tuple[int, Proc] | None,
                ref: float | None) -> None:
    """One row: seconds and MiB, per block, against the smallest size, marginal, and against the reference."""
    nodes = 7 * blocks + 5
    if run.error:
        t.row(str(blocks), nodes, label, "failed", run.error[:60], *[""] * 6)
        return
    per_t, per_m = run.seconds / blocks, run.peak_mib * 1024 / blocks
    ratio_t = ratio_m = marg_t = marg_m = "-"
    if first is not None and not first[1].error:
        n0, r0 = first
        ratio_t, ratio_m = f"{per_t / (r0.seconds / n0):.2f}", f"{per_m / (r0.peak_mib * 1024 / n0):.2f}"
        marg_t = f"{(run.seconds - r0.seconds) / (blocks - n0) * 1e3:.3f}"
        marg_m = f"{(run.peak_mib - r0.peak_mib) * 1024 / (blocks - n0):.1f}"
    t.row(str(blocks), nodes, label, f"{run.seconds:.3f}", f"{per_t * 1e3:.3f}", f"{run.peak_mib:.0f}",
          f"{per_m:.1f}", f"{ratio_t} / {ratio_m}", marg_t, marg_m, f"{run.seconds / ref:.2f}" if ref else "-")


def bench_scaling(report: Report, sizes: list[int], repeat: int, breakdown: bool, tmp: Path) -> None:
    """Commands and references on residual chains of growing length, per block."""
    sizes = sorted(set(sizes))
    t = report.table(f"scaling on residual chains (7 nodes per block), fresh processes, best of {repeat}; "
                     f"'/ smallest': per-block time / memory over the same at {sizes[0]} blocks; "
                     f"'marginal': (x_N - x_{sizes[0]}) / (N - {sizes[0]}); '/ ref': time over onnx load+save "
                     "(prune: + both ORT session+run)",
                     [("blocks", 6), ("nodes", 6), ("command", 22), ("s", 8), ("ms/block", 9), ("peak MiB", 8),
                      ("KiB/block", 9), ("/ smallest t/mem", 16), ("marginal ms/block", 17),
                      ("marginal KiB/block", 18), ("/ ref", 6)])
    scaling_runs(2, 1, tmp)  # untimed: warms the page cache and the bytecode caches of every command
    all_runs, firsts = {}, {}
    for blocks in sizes:
        runs = all_runs[blocks] = scaling_runs(blocks, repeat, tmp)
        for label, run in runs.items():
            scaling_row(t, blocks, label, run, firsts.get(label), reference_of(label, runs))
            firsts.setdefault(label, (blocks, run))
    marginal_trend(report, sizes, all_runs)
    if breakdown:
        prune_shares(report, sizes, tmp)


def marginal_trend(report: Report, sizes: list[int], all_runs: dict[int, dict[str, Proc]]) -> None:
    """The marginal time per block between consecutive sizes (flat when the work is linear)."""
    if len(sizes) < 3:
        return
    for label in SCALING_COMMANDS + SCALING_REFS:
        steps = []
        for a, b in zip(sizes, sizes[1:]):
            ra, rb = all_runs[a][label], all_runs[b][label]
            steps.append("failed" if ra.error or rb.error else f"{(rb.seconds - ra.seconds) / (b - a) * 1e3:.3f}")
        report.say(f"{label}: marginal ms/block between consecutive sizes: {', '.join(steps)}")


def prune_shares(report: Report, sizes: list[int], tmp: Path) -> None:
    """Per size, the share of one instrumented prune process spent in onnxruntime."""
    t = report.table("where `morphonnx prune --threshold 0.9` (with its check) spends its time: one more "
                     "process per size, onnxruntime's session creation and runs timed inside it",
                     [("blocks", 6), ("prune s", 8), ("ORT sessions s", 14), ("share", 6), ("ORT runs s", 10),
                      ("share", 6), ("rest s", 8)])
    for blocks in sizes:
        proc, spent = prune_breakdown(tmp / f"res{blocks}.onnx", tmp / "breakdown.onnx", tmp)
        if proc.error:
            t.row(str(blocks), "failed", proc.error[:60], "", "", "", "")
            continue
        s, r = spent["session"], spent["run"]
        t.row(str(blocks), f"{proc.seconds:.3f}", f"{s:.3f}", f"{s / proc.seconds:.0%}", f"{r:.3f}",
              f"{r / proc.seconds:.0%}", f"{proc.seconds - s - r:.3f}")


# ---- prune -----------------------------------------------------------------------------------------

def random_legal_masks(groups, share: float, seed: int, multiple: int):
    """Random masks keeping about `share` of every unpinned group, legalized (and rounded to `multiple`)."""
    from morphonnx.masks import legalize, random_masks
    return legalize(groups, random_masks(groups, seed, share), multiple)


def save_model(model: onnx.ModelProto, out: Path, like: Path) -> Path:
    """Write a pruned model as the CLI would (external data when the original has it)."""
    with morphonnx.Outputs([like]) as outputs:
        outputs.model(out, model, external=has_external_data(like))
        outputs.commit()
    return out


def onnxsim_prune(path: Path, sparsity: float, repeat: int) -> tuple[float, int | None, str]:
    """Best seconds of onnxsim's `apply_structured_pruning` alone (the load is not timed), the
    parameter count of its result, and its error if it raised."""
    from onnxsim.pruning import apply_structured_pruning
    times, params = [], None
    for _ in range(repeat):
        model = onnx.load(str(path))
        start = time.perf_counter()
        try:
            result = apply_structured_pruning(model, sparsity=sparsity)
        except Exception as e:  # report it, go on with the other models
            return 0.0, None, f"{type(e).__name__}: {e}"[:80]
        times.append(time.perf_counter() - start)
        params = param_count(result)
    return min(times), params, ""


def prune_in_process(t: Table, label: str, path: Path, share: float, seed: int, repeat: int):
    """(a) `morphonnx.rewrite.prune` alone vs onnxsim's structured pruning; returns (graph, groups, masks)."""
    from morphonnx.rewrite import prune
    graph = morphonnx.load(path)
    groups = morphonnx.find_groups(graph)
    masks = random_legal_masks(groups, share, seed, 1)
    ours = best(lambda: prune(groups, masks), repeat)
    before = param_count(onnx.load(str(path), load_external_data=False))
    after = param_count(prune(groups, masks).model)
    theirs, their_params, error = onnxsim_prune(path, 1 - share, repeat)
    if error:
        sim, sim_kept, ratio = "failed", error, "-"
    else:
        unchanged = their_params == before
        sim, ratio = f"{theirs:.3f}", f"{ours / theirs:.2f}" + (" (no-op)" if unchanged else "")
        sim_kept = "unchanged" if unchanged else f"{their_params / before:.1%}"
    t.row(label, node_count(path), f"{ours:.3f}", f"{after / before:.1%}", sim, sim_kept, ratio)
    return graph, groups, masks


def prune_whole(t: Table, label: str, path: Path, groups, masks, repeat: int, tmp: Path) -> str:
    """(b) the `morphonnx prune --masks` process (with its check) vs load+save and two ORT sessions;
    the error of the prune process, if any."""
    from morphonnx.masks import masks_document
    mask_file, out = tmp / "masks.json", tmp / "whole.onnx"
    mask_file.write_text(json.dumps(masks_document(groups, masks)))
    ours = morphonnx_cli("prune", path, "--masks", mask_file, "-o", out, repeat=repeat)
    refs = [io_ref(path, tmp, repeat), ort_ref(path, repeat),
            ort_ref(out, repeat) if out.exists() else Proc(0, 0, "no pruned model")]
    total = None if any(r.error for r in refs) else sum(r.seconds for r in refs)
    ratio = "-" if ours.error or total is None else f"{ours.seconds / total:.2f}"
    t.row(label, ours.cell(), "-" if ours.error else f"{ours.peak_mib:.0f}", *[r.cell() for r in refs],
          "-" if total is None else f"{total:.3f}", ratio)
    return ours.error


def prune_rounded(path: Path, groups, share: float, seed: int, multiple: int, tmp: Path) -> Path:
    """Prune with masks rounded to multiples of `multiple`; the pruned model's file."""
    from morphonnx.rewrite import prune
    masks = random_legal_masks(groups, share, seed, multiple)
    return save_model(prune(groups, masks).model, tmp / f"round{multiple}.onnx", path)


def bench_prune(report: Report, zoo: Path, specs: str, repeat: int, share: float, seed: int, multiple: int,
                tmp: Path) -> None:
    """(a) in-process rewrite vs onnxsim, (b) whole process vs references, (c) latency of rounded masks."""
    files = zoo_files(zoo, specs, ("folded",))
    ta = report.table(f"(a) in process: `morphonnx.rewrite.prune` alone on random legalized masks keeping "
                      f"{share:.0%} of every group (seed {seed}) vs onnxsim `apply_structured_pruning` "
                      f"(sparsity {1 - share:g}; the load not timed); best of {repeat}",
                      [("model", 24), ("nodes", 6), ("morphonnx s", 11), ("params kept", 11), ("onnxsim s", 9),
                       ("onnxsim params kept", 19), ("morphonnx / onnxsim", 19)])
    kept = [(label, path, *prune_in_process(ta, label, path, share, seed, repeat)) for label, path in files]
    tb = report.table(f"(b) whole process: `morphonnx prune F --masks M -o OUT` (with its check) vs the sum of "
                      f"onnx load+save of F, ORT session+run of F and of OUT, each its own process; best of {repeat}",
                      [("model", 24), ("prune s", 8), ("peak MiB", 8), ("load+save s", 11), ("ORT F s", 8),
                       ("ORT OUT s", 9), ("refs s", 8), ("prune / refs", 12)])
    errors = {label: prune_whole(tb, label, path, groups, masks, repeat, tmp) for label, path, _, groups, masks in kept}
    for label, error in errors.items():
        if error:
            report.say(f"morphonnx prune failed on {label}: {error}")
    if multiple:
        bench_rounded(report, [(label, path, graph, groups) for label, path, graph, groups, _ in kept],
                      share, seed, multiple, tmp)


CONV_OPS = {"Conv", "FusedConv", "NchwcConv", "ConvTranspose"}
GEMM_OPS = {"Gemm", "MatMul", "FusedGemm", "FusedMatMul"}
MEMORY_OPS = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Sum",
              "BatchNormalization", "Concat", "Split", "Slice", "ReorderInput", "ReorderOutput", "MaxPool",
              "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "Reshape", "Flatten", "Transpose",
              "Identity", "Pad", "Squeeze", "Unsqueeze", "Expand", "Cast", "Gather", "Resize", "Upsample", "Tile"}
OP_CLASSES = ("Conv", "Conv depthwise", "Gemm/MatMul", "elementwise/memory", "other")


def op_class(op_type: str, depthwise: bool) -> str:
    """The class an op's time is summed under."""
    if op_type in CONV_OPS:
        return "Conv depthwise" if depthwise else "Conv"
    return "Gemm/MatMul" if op_type in GEMM_OPS else "elementwise/memory" if op_type in MEMORY_OPS else "other"


def _ort_depthwise(args: dict) -> bool:
    """Whether a profiled Conv kernel is depthwise: a [C, 1, kh, kw] weight on C input channels."""
    shapes = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
    return len(shapes) > 1 and len(shapes[1]) == 4 and shapes[1][1] == 1 and shapes[0][1] > 1


def class_profile(path: Path, feeds: dict, tmp: Path, runs: int = 20, warmup: int = 3) -> dict[str, float]:
    """Mean seconds per run of every op class, from onnxruntime's profiler (optimized graph, so
    fused activations and adds count under their Conv), and of the whole profiled run ("run")."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / "ort_profile")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(warmup + runs):
        sess.run(None, feeds)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_node: dict[str, list[tuple[str, float]]] = {"model_run": []}
    for e in events:
        if e.get("cat") == "Session" and e["name"] == "model_run":
            per_node["model_run"].append(("run", e["dur"] * 1e-6))
        elif e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            cls = op_class(e["args"].get("op_name", ""), _ort_depthwise(e["args"]))
            per_node.setdefault(e["name"], []).append((cls, e["dur"] * 1e-6))
    totals = dict.fromkeys((*OP_CLASSES, "run"), 0.0)
    for samples in per_node.values():
        for cls, seconds in samples[-runs:]:
            totals[cls] += seconds / runs
    return totals


def predicted_classes(profile, costs) -> dict[str, float]:
    """Predicted seconds per op class (and the per-run overhead) of one run."""
    totals = dict.fromkeys(OP_CLASSES, 0.0)
    for c in costs.ops:
        if c.costed:
            totals[op_class(c.op_type, c.kind == "depthwise")] += profile.latency(c)[0]
    totals["per-run overhead"] = profile.run_overhead_us * 1e-6
    return totals


@dataclass
class Side:
    """One model measured and predicted: MACs, median latency, profiler classes, predicted classes."""

    macs: int
    latency: float
    measured: dict[str, float]
    predicted: dict[str, float]


def measure_side(path: Path, feeds: dict, profile, tmp: Path) -> Side:
    """MACs, ORT latency (median of 20 after 3 warm-ups), profile per class, prediction per class."""
    from morphonnx.calibrate import run_time
    costs = morphonnx.cost_model(morphonnx.load(path))
    return Side(costs.total("macs"), run_time(str(path), feeds, repeat=20, warmup=3),
                class_profile(path, feeds, tmp), predicted_classes(profile, costs))


def class_table(report: Report, label: str, before: Side, after: Side) -> None:
    """Where the time goes, per op class, measured and predicted, before and after."""
    t = report.table(f"{label}: time per run by op class (measured: onnxruntime profiler, mean of 20 profiled "
                     "runs; predicted: calibrated profile)",
                     [("op class", 26), ("before ms", 9), ("after ms", 9), ("speedup", 7), ("share before", 12),
                      ("pred before ms", 14), ("pred after ms", 13), ("pred speedup", 12)])
    mb, ma = dict(before.measured), dict(after.measured)
    run_b, run_a = mb.pop("run"), ma.pop("run")
    rows = [(c, mb[c], ma[c], before.predicted[c], after.predicted[c]) for c in OP_CLASSES]
    overhead = "per-run overhead"
    rows += [(overhead, None, None, before.predicted[overhead], after.predicted[overhead]),
             ("outside kernels", run_b - sum(mb.values()), run_a - sum(ma.values()), None, None),
             ("total (profiled run)", run_b, run_a, sum(before.predicted.values()), sum(after.predicted.values())),
             ("total (median, unprofiled)", before.latency, after.latency, None, None)]
    for name, b, a, pb, pa in rows:
        if any((b, a, pb, pa)):
            t.row(name, *_ms_pair(b, a), f"{b / run_b:.0%}" if b is not None else "-", *_ms_pair(pb, pa))


def _ms_pair(before: float | None, after: float | None) -> list[str]:
    """Before ms, after ms, speedup (dashes where unknown)."""
    if before is None or after is None:
        return ["-", "-", "-"]
    return [f"{before * 1e3:.2f}", f"{after * 1e3:.2f}", f"{before / after:.2f}" if after > 0 else "-"]


def bench_rounded(report: Report, kept: list, share: float, seed: int, multiple: int, tmp: Path) -> None:
    """(c) latency of models pruned with masks rounded to `multiple`, beside MACs and the prediction."""
    from morphonnx.calibrate import calibrate
    from morphonnx.oracle import random_inputs
    profile = calibrate(quick=True)
    report.say(f"\nthis machine (calibrate --quick): {profile.peak_gflops['fp32']:g} GFLOP/s, "
               f"{profile.bandwidth_gbs:g} GB/s, {profile.op_overhead_us:g} us/op, {profile.run_overhead_us:g} us/run")
    t = report.table(f"(c) masks keeping {share:.0%} rounded to multiples of {multiple}: onnxruntime latency "
                     "(median of 20 runs after 3 warm-ups) vs MACs, and the speedup the calibrated profile predicts",
                     [("model", 24), ("GMACs", 6), ("pruned", 6), ("MACs reduction", 14), ("ms", 7), ("pruned ms", 9),
                      ("speedup", 7), ("speedup / MACs red.", 19), ("predicted speedup", 17)])
    sides = []
    for label, path, graph, groups in kept:
        out = prune_rounded(path, groups, share, seed, multiple, tmp)
        feeds = random_inputs(graph, 0)
        before, after = measure_side(path, feeds, profile, tmp), measure_side(out, feeds, profile, tmp)
        red, speedup = before.macs / after.macs, before.latency / after.latency
        pred = sum(before.predicted.values()) / sum(after.predicted.values())
        t.row(label, f"{before.macs / 1e9:.2f}", f"{after.macs / 1e9:.2f}", f"{red:.2f}",
              f"{before.latency * 1e3:.2f}", f"{after.latency * 1e3:.2f}", f"{speedup:.2f}", f"{speedup / red:.2f}",
              f"{pred:.2f}")
        sides.append((label, before, after))
    for label, before, after in sides:
        class_table(report, label, before, after)


# ---- analyze -----------------------------------------------------------------------------------------

def analyze_in_process(path: Path) -> None:
    """`morphonnx.analyze` on two profiles, down to its JSON document."""
    morphonnx.analyze(path, PROFILES).to_dict()


def onnx_io_in_process(path: Path, tmp: Path) -> None:
    """`onnx.load` + `onnx.save` (external data kept external)."""
    onnx.save(onnx.load(str(path)), str(tmp / "copy.onnx"), save_as_external_data=has_external_data(path),
              location="copy.onnx.data")


def bench_analyze(report: Report, zoo: Path, specs: str, repeat: int, tmp: Path) -> None:
    """analyze in process vs onnx I/O, and as a process vs onnx-tool and onnx I/O processes."""
    files = zoo_files(zoo, specs, None)
    t = report.table(f"analyze on the zoo ({zoo.name}); best of {repeat}; a ratio < 1: morphonnx is faster",
                     [("model", 26), ("nodes", 6), ("in-process s", 12), ("/ load+save", 11), ("process s", 9),
                      ("peak MiB", 8), ("onnx-tool s", 11), ("/ onnx-tool", 16), ("/ load+save", 11)])
    failures = {}
    for label, path in files:
        inside = best(lambda: analyze_in_process(path), repeat)
        io_inside = best(lambda: onnx_io_in_process(path, tmp), repeat)
        ours, tool = morphonnx_cli("analyze", path, repeat=repeat), child([PY, "-c", ONNX_TOOL_REF, str(path)], repeat)
        io = io_ref(path, tmp, repeat)
        if tool.error:
            failures[label] = tool.error
        t.row(label, node_count(path), f"{inside:.3f}", f"{inside / io_inside:.2f}", ours.cell(),
              "-" if ours.error else f"{ours.peak_mib:.0f}", tool.cell(),
              "onnx-tool failed" if tool.error else "-" if ours.error else f"{ours.seconds / tool.seconds:.2f}",
              "-" if ours.error or io.error else f"{ours.seconds / io.seconds:.2f}")
        if ours.error:
            report.say(f"morphonnx analyze failed on {label}: {ours.error}")
    for label, error in failures.items():
        report.say(f"onnx-tool failed on {label}: {error}")


# ---- a decoder over 2 GB -----------------------------------------------------------------------------

def bench_decoder(report: Report, preset: str, path: Path | None, repeat: int, tmp: Path) -> None:
    """analyze / groups / prune of a decoder language model over 2 GB (scripts/build_decoder.py,
    built once into the cache) against onnx load+save of the same file, with peak memory against
    the model's size and its largest tensor."""
    import onnx
    if path is None:
        path = export_zoo.default_dir().parent / "decoders" / f"llama-{preset}.onnx"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([PY, str(Path(__file__).resolve().parent / "build_decoder.py"), "llama", str(path),
                            "--preset", preset], check=True, stdout=subprocess.DEVNULL)
    m = onnx.load(str(path), load_external_data=False)
    sizes = [int(np.prod(t.dims)) * 4 for t in m.graph.initializer]
    total, largest = sum(sizes) / 2**20, max(sizes) / 2**20
    report.say(f"{path.name}: {total:.0f} MiB of weights, the largest tensor {largest:.0f} MiB")
    t = report.table(f"a decoder over 2 GB; best of {repeat}", [("command", 40), ("s", 8), ("peak MiB", 9),
                                                                  ("/ model size", 12), ("/ load+save s", 13)])
    io = io_ref(path, tmp, repeat)
    decode = ["--dim", "sequence_length=1", "--dim", "past_sequence_length=2047"]
    prefill = ["--dim", "sequence_length=2048", "--dim", "past_sequence_length=0"]
    masks = tmp / "half_mlp.json"
    masks.write_text(subprocess.run([PY, "-c", HALF_MLP, str(path)], check=True, capture_output=True, text=True).stdout)
    runs = [("analyze (decode 1 after 2047)", ["analyze", path, *decode, "--profile", "v100"], repeat),
            ("analyze (prefill 2048)", ["analyze", path, *prefill, "--profile", "v100"], repeat),
            ("groups (decode)", ["groups", path, *decode], repeat),
            ("prune half the MLP channels (checked)", ["prune", path, "--dim", "sequence_length=4", "--dim",
                                                       "past_sequence_length=12", "--masks", masks,
                                                       "-o", tmp / "pruned.onnx"], 1)]
    t.row("onnx load+save", f"{io.seconds:.2f}", f"{io.peak_mib:.0f}", f"{io.peak_mib / total:.2f}", "1.00")
    sess = ort_ref(path, repeat)
    t.row("onnxruntime session + run", sess.cell(".2f"), f"{sess.peak_mib:.0f}", f"{sess.peak_mib / total:.2f}",
          f"{sess.seconds / io.seconds:.2f}")
    for label, argv, times in runs:
        r = morphonnx_cli(*argv, repeat=times)
        t.row(label, r.cell(".2f"), "-" if r.error else f"{r.peak_mib:.0f}",
              "-" if r.error else f"{r.peak_mib / total:.2f}", "-" if r.error else f"{r.seconds / io.seconds:.2f}")
        if r.error:
            report.say(f"{label} failed: {r.error}")
    if not r.error:
        bound = 1.5 * largest + sess.peak_mib
        report.say(f"prune's peak {r.peak_mib:.0f} MiB against 1.5 x the largest tensor + an onnxruntime session "
                   f"of the model = {bound:.0f} MiB: {'within' if r.peak_mib <= bound else 'OVER'}")


HALF_MLP = """import json, sys, morphonnx
g = morphonnx.load(sys.argv[1], dims={"sequence_length": 4, "past_sequence_length": 12})
groups = morphonnx.find_groups(g)
masks = {}
for s in groups.plan.sources:
    name = g.display_name(s.weight) if s.weight else s.node
    if s.kind == "weight" and (name.endswith("gate_proj.weight") or name.endswith("up_proj.weight")):
        n = groups.plan.spaces[s.tensor].size
        masks[s.node] = [1] * (n // 2) + [0] * (n - n // 2)
print(json.dumps({"masks": masks}))
"""


# ---- latency ----------------------------------------------------------------------------------------

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


def per_op_profile(path: Path, feeds: dict, tmp: Path, runs: int = 20) -> dict[str, float]:
    """Mean seconds per node from onnxruntime's profiler (node names of the optimized graph)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / "ort_profile")  # not beside the model: the zoo is a cache
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        sess.run(None, feeds)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
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
        prof = per_op_profile(path, feeds, tmp)
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


# ---- penalty ----------------------------------------------------------------------------------------

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


# ---- command line -----------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    sc = sub.add_parser("scaling", help="analyze / groups / prune processes on residual chains of growing length")
    sc.add_argument("--sizes", default="100,1000,10000", help="blocks per chain (default 100,1000,10000)")
    sc.add_argument("--repeat", type=int, default=1)
    sc.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                    help="skip the instrumented prune run that times onnxruntime inside it")
    pr = sub.add_parser("prune", help="rewrite vs onnxsim, prune process vs references, latency vs MACs")
    pr.add_argument("--models", default="resnet50:folded,resnet50:bn,densenet121,mobilenet_v2",
                    help="comma-separated NAME[:FORM] (a bare name: the folded form)")
    pr.add_argument("--repeat", type=int, default=3)
    pr.add_argument("--share", type=float, default=0.5, help="share of each group the random masks keep (0.5)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--round", type=int, default=16, help="multiple for the latency part (default 16; 0: skip it)")
    a = sub.add_parser("analyze", help="analyze vs onnx-tool and onnx I/O, in process and as processes")
    a.add_argument("--models", default="resnet50,mobilenet_v2,densenet121",
                   help="comma-separated NAME[:FORM] (a bare name: every form)")
    a.add_argument("--repeat", type=int, default=3)
    la = sub.add_parser("latency", help="fidelity of the latency model on this CPU")
    la.add_argument("--models", default="resnet18,mobilenet_v2")
    la.add_argument("--variants", type=int, default=50)
    la.add_argument("--round", type=int, default=1, help="round variant widths to multiples of this (default 1)")
    de = sub.add_parser("decoder", help="analyze / groups / prune of a decoder over 2 GB (built once)")
    de.add_argument("--preset", default="0.6b", help="scripts/build_decoder.py preset (default 0.6b: 2.45 GB)")
    de.add_argument("--model", type=Path, default=None, help="a decoder ONNX file instead of the preset")
    de.add_argument("--repeat", type=int, default=1)
    pe = sub.add_parser("penalty", help="training-step overhead of the torch penalty")
    pe.add_argument("--batch", type=int, default=16)
    pe.add_argument("--steps", type=int, default=3)
    for s in (pr, a, la):
        s.add_argument("--zoo", type=Path, default=None, help="zoo directory (default: export_zoo's cache)")
    for s in (sc, pr, a, la, pe, de):
        s.add_argument("--out", type=Path, default=None, help="also write the tables as Markdown to this file")
    return p


def run(args, report: Report, tmp: Path) -> None:
    """Dispatch one subcommand."""
    zoo = getattr(args, "zoo", None) or export_zoo.default_dir()
    if args.what in ("scaling", "prune", "analyze", "decoder"):
        report.say(f"process times: wall seconds of a fresh child, start-up included; peak MiB: its ru_maxrss, "
                   f"spawned from a small launcher (a `true` process reads {rss_floor():.1f} MiB)")
    if args.what == "scaling":
        bench_scaling(report, [int(s) for s in args.sizes.split(",")], args.repeat, args.breakdown, tmp)
    elif args.what == "prune":
        bench_prune(report, zoo, args.models, args.repeat, args.share, args.seed, args.round, tmp)
    elif args.what == "analyze":
        bench_analyze(report, zoo, args.models, args.repeat, tmp)
    elif args.what == "decoder":
        bench_decoder(report, args.preset, args.model, args.repeat, tmp)
    elif args.what == "latency":
        with report.verbatim():
            bench_latency(zoo, [n for n in args.models.split(",") if n], args.variants, args.round, tmp)
    else:
        with report.verbatim():
            bench_penalty(args.batch, args.steps)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    report = Report()
    report.header(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run(args, report, Path(tmp))
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
