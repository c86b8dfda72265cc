"""Hardware profiles (one YAML per device) and the roofline latency of an op on them."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .costs import OpCost
from .errors import BadInput

PRECISIONS = ("fp64", "fp32", "tf32", "fp16", "bf16", "int8")
REQUIRED = ("name", "peak_gflops", "bandwidth_gbs", "sources")
OPTIONAL = ("kind", "notes", "op_overhead_us", "run_overhead_us", "efficiency", "channel_block", "kernels", "fuse",
            "threads")
# A kernel's seconds: overhead + MACs / gmacs + bytes read / read_gbs + bytes written / write_gbs
# + weight bytes / weight_gbs (rates in 1e9 per second; an absent rate costs nothing)
# + groups × group_us (a grouped conv's groups, `work_amounts`).
KERNEL_RATES = ("gmacs", "read_gbs", "write_gbs", "weight_gbs")
KERNEL_FIELDS = ("overhead_us",) + KERNEL_RATES + ("group_us",)
DTYPE_PRECISION = {"float64": "fp64", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16",
                   "int8": "int8", "uint8": "int8"}


@dataclass(frozen=True)
class Profile:
    """One device: peak dense GFLOP/s per precision, memory bandwidth, per-op overhead."""

    key: str
    name: str
    peak_gflops: dict[str, float]
    bandwidth_gbs: float
    op_overhead_us: float = 0.0
    kind: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    path: str = ""
    # Fitted on measurements (`morphonnx calibrate --fit`): achieved fraction of the roofline per
    # op type (key "*" for the rest), and a fixed cost per inference run.
    efficiency: dict[str, float] = field(default_factory=dict)
    run_overhead_us: float = 0.0
    # Channel counts that are multiples of this get the runtime's fast blocked kernels (0: not modelled).
    channel_block: int = 0
    # Fitted on kernel microbenchmarks (`morphonnx calibrate --kernels`): per runtime kernel class
    # (`kernels.kernel_class`), {overhead_us, and the rates of KERNEL_RATES}; "*" for the
    # rest. With it, an op costs the runtime kernels it carries (`kernels.kernel_map`).
    kernels: dict[str, dict[str, float]] = field(default_factory=dict)
    # The roofline charges nothing to an op that the standard fusions run inside another op's
    # kernel (a BN, activation or bias after a conv; `kernels.standard_fusions`).
    fuse: bool = True
    # The onnxruntime intra-op threads the profile was measured with (0: the runtime's default, one
    # per core): the setting its latencies predict.
    threads: int = 0

    @property
    def block(self) -> int:
        """Channels per block of the blocked kernels a kernel model pads to (16 when not given)."""
        return self.channel_block or 16

    def kernel_terms(self, cls: str) -> tuple[float, np.ndarray]:
        """(seconds, seconds per unit of each amount of `work_amounts`) of one kernel of a class."""
        k = self.kernels.get(cls) or self.kernels.get("*") or {}
        per = [1e-9 / k[f] if k.get(f) else 0.0 for f in KERNEL_RATES] + [k.get("group_us", 0.0) * 1e-6]
        return k.get("overhead_us", 0.0) * 1e-6, np.array(per)

    def kernel_latency(self, cost: OpCost) -> tuple[float, str]:
        """Seconds of the runtime kernels an op carries (none: "fused" into another op's kernel)."""
        if not cost.runtime:
            return 0.0, "fused" if cost.runtime is not None else "none"
        overhead, work = 0.0, np.zeros(len(KERNEL_RATES) + 1)
        for cls, amounts in kernel_work(cost, self.block):
            o, per = self.kernel_terms(cls)
            overhead, work = overhead + o, work + amounts * per
        overhead += float(work[-1])  # the per-group cost: a loop's overhead
        compute, memory = float(work[0]), float(work[1:-1].sum())
        bound = "overhead" if overhead > compute + memory else "compute" if compute >= memory else "memory"
        return overhead + compute + memory, bound

    def prepare(self, costs) -> None:
        """Map a cost model's ops onto the runtime's kernels when this profile models kernels, onto
        the standard fusions when it fuses."""
        if self.kernels:
            costs.attach_runtime()
        elif self.fuse:
            costs.attach_fusions()

    def op_class(self, cost: OpCost) -> str:
        """The efficiency key of an op: type, structural kind, and `unaligned` when its channel
        counts are not multiples of `channel_block` ("Conv.depthwise.unaligned")."""
        key = cost.op_type + (f".{cost.kind}" if cost.kind else "")
        if self.channel_block and cost.channels and any(c % self.channel_block for c in cost.channels):
            key += ".unaligned"
        return key

    def efficiency_of(self, cost: OpCost) -> float:
        """The fitted efficiency of an op: its class, else its less specific classes, else "*", else 1."""
        key = self.op_class(cost)
        while key:
            if key in self.efficiency:
                return self.efficiency[key]
            key = key.rpartition(".")[0]
        return self.efficiency.get("*", 1.0)

    def peak(self, dtype: str) -> tuple[float, str]:
        """(peak FLOP/s, precision used) for an op of this numpy dtype name; fp32 when absent."""
        precision = DTYPE_PRECISION.get(dtype, "fp32")
        if precision not in self.peak_gflops:
            precision = "fp32"
        return self.peak_gflops[precision] * 1e9, precision

    def latency(self, cost: OpCost) -> tuple[float, str]:
        """Roofline seconds `max(flops / peak, bytes / bandwidth)` plus overhead, and the bound label.

        The label is "compute" or "memory" by which term is larger, "overhead" when the per-op
        overhead is more than both, "none" for an op with no work at all (a view or a metadata op),
        "fused" for one run inside another op's kernel (`prepare`).
        """
        if self.kernels:
            return self.kernel_latency(cost)
        if self.fuse and cost.fused_into:
            return 0.0, "fused"
        compute = cost.flops / self.peak(cost.dtype)[0]
        memory = cost.bytes / (self.bandwidth_gbs * 1e9)
        if compute == 0 and memory == 0:
            return 0.0, "none"
        eff = self.efficiency_of(cost) if self.efficiency else 1.0
        overhead = self.op_overhead_us * 1e-6
        work = max(compute, memory) / eff
        bound = "overhead" if overhead > work else "compute" if compute >= memory else "memory"
        return work + overhead, bound

    def total_latency(self, costs) -> float:
        """Seconds of one run of a model: its ops' latencies plus the per-run overhead."""
        self.prepare(costs)
        return sum(self.latency(c)[0] for c in costs.ops if c.costed) + self.run_overhead_us * 1e-6

    def to_yaml(self) -> str:
        """The profile as a YAML document that `load_profile` accepts."""
        doc = {"name": self.name, "kind": self.kind or "cpu", "peak_gflops": dict(self.peak_gflops),
               "bandwidth_gbs": self.bandwidth_gbs}
        if self.op_overhead_us:
            doc["op_overhead_us"] = self.op_overhead_us
        if self.run_overhead_us:
            doc["run_overhead_us"] = self.run_overhead_us
        if self.efficiency:
            doc["efficiency"] = dict(self.efficiency)
        if self.channel_block:
            doc["channel_block"] = self.channel_block
        if not self.fuse:
            doc["fuse"] = False
        if self.threads:
            doc["threads"] = self.threads
        if self.kernels:
            doc["kernels"] = {k: dict(v) for k, v in self.kernels.items()}
        doc["sources"] = dict(self.sources)
        import yaml  # only where profiles are read or written (10 ms at start-up otherwise)
        return yaml.safe_dump(doc, sort_keys=False, width=120)


def thread_setting(threads: int) -> str:
    """A profile's thread count in words: "1 thread", "4 threads", "default threads" (0)."""
    return f"{threads} thread{'s' if threads > 1 else ''}" if threads else "default threads"


def kernel_parts(cost: OpCost, block: int = 16):
    """Per runtime kernel an op carries: (class, MACs factor, read, write, weight-bytes, groups
    factors) (`kernel_factors`)."""
    for cls, own in cost.runtime or ():
        yield (cls, *kernel_factors(cost, cls, own, block))


def kernel_factors(cost: OpCost, cls: str, own: bool, block: int = 16
                   ) -> tuple[float, float, float, float, float]:
    """The share of an op's MACs, bytes read, written, of weights and of groups that one of its
    runtime kernels does.

    The op's own kernel does its MACs (a blocked NCHWc convolution on channel counts rounded up
    to the block, `block` wide) and moves all its bytes; a reorder into the blocked layout moves
    the op's input, one out of it the op's output; a helper (a bias computed at run time) only
    costs its overhead."""
    if own:
        return _padding(cls, cost.channels, block), 1.0, 1.0, 1.0, 1.0
    if cls.endswith("ReorderInput"):
        return 0.0, 1.0, 0.0, 0.0, 0.0
    if cls.endswith("ReorderOutput"):
        return 0.0, 0.0, 1.0, 0.0, 0.0
    return 0.0, 0.0, 0.0, 0.0, 0.0


def _padding(cls: str, channels: tuple[int, int] | None, block: int) -> float:
    """MACs done per MAC of the op: a blocked conv computes whole blocks of output channels, and of
    input channels unless it reads the plain layout (fewer input channels than a block)."""
    if not cls.startswith("nchwc.Conv") or not channels or not block:
        return 1.0
    up = lambda c: -(-c // block) * block / c if c else 1.0
    cin, cout = channels
    if ".dw" in cls:
        return up(cout)
    return up(cout) * (up(cin) if cin >= block else 1.0)


def work_amounts(cost: OpCost) -> np.ndarray:
    """[MACs, bytes read, written, of weights, groups] of an op: what the rates of KERNEL_RATES
    divide, and the groups of a grouped convolution (0 for the rest) that `group_us` costs."""
    groups = cost.groups if cost.groups > 1 else 0
    return np.array([cost.macs, cost.read_bytes, cost.write_bytes, cost.weight_bytes, groups], dtype=float)


def kernel_work(cost: OpCost, block: int = 16):
    """(class, [MACs, bytes read, written, of weights, groups]) of each runtime kernel an op
    carries (`kernel_parts`)."""
    amounts = work_amounts(cost)
    for cls, *factors in kernel_parts(cost, block):
        yield cls, amounts * np.array(factors)


def _flag(value: object, path: Path, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadInput(f"profile {path}: field '{name}' must be true or false, got {value!r}")
    return value


def profile_dirs() -> list[Path]:
    """Where profiles are looked up by name: $MORPHONNX_PROFILES (os.pathsep-separated), then the bundled ones."""
    dirs = [Path(p) for p in os.environ.get("MORPHONNX_PROFILES", "").split(os.pathsep) if p]
    return dirs + [Path(__file__).resolve().parent.parent / "hardware_profiles"]


def available_profiles() -> dict[str, Path]:
    """Profile name (file stem) → path, the first directory winning."""
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for p in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            found.setdefault(p.stem, p)
    return found


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """A profile by name (`v100`) or by YAML path, validated; BadInput naming file and field."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
        if path.is_dir():
            raise BadInput(f"profile file {path}: is a directory")
        if not path.is_file():
            raise BadInput(f"profile file {path}: no such file")
    else:
        known = available_profiles()
        if text not in known:
            raise BadInput(f"unknown profile '{text}'; known: {', '.join(sorted(known))}")
        path = known[text]
    import yaml
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"profile {path}: not UTF-8 text (a binary file?)") from None
    except OSError as e:
        raise BadInput(f"profile {path}: cannot read ({e.strerror})") from None
    except RecursionError:
        raise BadInput(f"profile {path}: nested too deeply to be a profile") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise BadInput(f"profile {path}:{line} not valid YAML ({getattr(e, 'problem', e)})") from None
    return validate_profile(data, path)


def _positive(value, path: Path, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BadInput(f"profile {path}: field '{field_name}' must be a positive number, got {value!r}")
    return float(value)


def validate_profile(data: object, path: Path) -> Profile:
    """Check a parsed profile document and build the Profile."""
    if not isinstance(data, dict):
        raise BadInput(f"profile {path}: expected a mapping of fields, got {type(data).__name__}")
    for key in REQUIRED:
        if key not in data:
            raise BadInput(f"profile {path}: field '{key}' is missing")
    extra = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if extra:
        raise BadInput(f"profile {path}: unknown field '{extra[0]}' (fields: {', '.join(REQUIRED + OPTIONAL)})")
    if not isinstance(data["name"], str) or not data["name"].strip():
        raise BadInput(f"profile {path}: field 'name' must be a non-empty string")
    peaks = data["peak_gflops"]
    if not isinstance(peaks, dict):
        raise BadInput(f"profile {path}: field 'peak_gflops' must map precisions ({', '.join(PRECISIONS)}) to GFLOP/s")
    if "fp32" not in peaks:
        raise BadInput(f"profile {path}: field 'peak_gflops.fp32' is missing")
    for p in peaks:
        if p not in PRECISIONS:
            raise BadInput(f"profile {path}: unknown precision 'peak_gflops.{p}' (known: {', '.join(PRECISIONS)})")
    peak = {p: _positive(v, path, f"peak_gflops.{p}") for p, v in peaks.items()}
    bandwidth = _positive(data["bandwidth_gbs"], path, "bandwidth_gbs")
    overhead = data.get("op_overhead_us", 0.0)
    if overhead != 0:
        overhead = _positive(overhead, path, "op_overhead_us")
    run_overhead = data.get("run_overhead_us", 0.0)
    if run_overhead != 0:
        run_overhead = _positive(run_overhead, path, "run_overhead_us")
    block = data.get("channel_block", 0)
    if block != 0 and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise BadInput(f"profile {path}: field 'channel_block' must be a positive integer, got {block!r}")
    threads = data.get("threads", 0)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise BadInput(f"profile {path}: field 'threads' must be a whole number of threads (0: onnxruntime's "
                       f"default), got {threads!r}")
    efficiency = data.get("efficiency") or {}
    if not isinstance(efficiency, dict):
        raise BadInput(f"profile {path}: field 'efficiency' must map op types to factors in (0, 10]")
    for op, f in efficiency.items():
        if _positive(f, path, f"efficiency.{op}") > 10:
            raise BadInput(f"profile {path}: field 'efficiency.{op}' must be at most 10, got {f!r}")
    kernels = data.get("kernels") or {}
    if not isinstance(kernels, dict):
        raise BadInput(f"profile {path}: field 'kernels' must map kernel classes to {{{', '.join(KERNEL_FIELDS)}}}")
    for cls, k in kernels.items():
        if not isinstance(k, dict):
            raise BadInput(f"profile {path}: field 'kernels.{cls}' must map {', '.join(KERNEL_FIELDS)} to numbers")
        for f, v in k.items():
            if f not in KERNEL_FIELDS:
                raise BadInput(f"profile {path}: unknown field 'kernels.{cls}.{f}' (fields: {', '.join(KERNEL_FIELDS)})")
            if not (f == "overhead_us" and v == 0):
                _positive(v, path, f"kernels.{cls}.{f}")
    if kernels and "*" not in kernels:
        raise BadInput(f"profile {path}: field 'kernels.*' is missing: the model of the kernels of no fitted class")
    sources = data["sources"]
    if not isinstance(sources, dict):
        raise BadInput(f"profile {path}: field 'sources' must map each number's field to its source")
    # Every number needs its source; an optional one only when present and non-zero. Fitted
    # efficiencies may share one `sources.efficiency` entry instead of one each.
    numbers = [f"peak_gflops.{p}" for p in peak] + ["bandwidth_gbs"]
    numbers += [f for f, v in (("op_overhead_us", overhead), ("run_overhead_us", run_overhead),
                               ("channel_block", block), ("threads", threads)) if v]
    numbers += [f"efficiency.{op}" for op in efficiency]
    numbers += ["kernels"] if kernels else []

    def sourced(f: str) -> bool:
        return bool(str(sources.get(f) or "").strip())
    for f in numbers:
        if not sourced(f) and not (f.startswith("efficiency.") and sourced("efficiency")):
            raise BadInput(f"profile {path}: field 'sources.{f}' is missing: say where the number comes from")
    return Profile(key=path.stem, name=data["name"].strip(), peak_gflops=peak, bandwidth_gbs=bandwidth,
                   op_overhead_us=float(overhead), kind=str(data.get("kind", "")),
                   sources={str(k): str(v) for k, v in sources.items()}, path=str(path),
                   efficiency={str(k): float(v) for k, v in efficiency.items()}, run_overhead_us=float(run_overhead),
                   channel_block=int(block), fuse=_flag(data.get("fuse", True), path, "fuse"), threads=threads,
                   kernels={str(c): {f: float(v) for f, v in k.items()} for c, k in kernels.items()})
