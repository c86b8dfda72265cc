"""The `analyze` report: totals, per-op costs and roofline latency per profile, as JSON or a table."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import onnx

from . import graph as graph_mod
from .costs import CostModel, cost_model
from .profiles import Profile, load_profile


@dataclass
class Analysis:
    """A graph's cost model evaluated on a list of device profiles."""

    model: str
    batch: int | None
    costs: CostModel
    profiles: list[Profile]

    def op_latency(self) -> list[dict[str, tuple[float, str]]]:
        """Per op, profile key → (seconds, bound)."""
        return [{p.key: p.latency(c) for p in self.profiles} for c in self.costs.ops]

    def to_dict(self) -> dict:
        """The JSON document of the report."""
        ops, lat = self.costs.ops, self.op_latency()
        costed = [i for i, c in enumerate(ops) if c.costed]
        g = self.costs.graph
        return {
            "model": self.model,
            "batch": self.batch,
            "opset": g.opset,
            "nodes": len(ops),
            "units": {"macs": "multiply-accumulates", "flops": "2 x MACs + 1 per output element of other arithmetic",
                      "bytes": "bytes", "latency_s": "seconds (roofline)"},
            "profiles": {p.key: {"name": p.name, "peak_gflops": p.peak_gflops, "bandwidth_gbs": p.bandwidth_gbs,
                                 "path": p.path} for p in self.profiles},
            "totals": {
                "macs": self.costs.total("macs"),
                "flops": self.costs.total("flops"),
                "params": self.costs.params,
                "weight_bytes": self.costs.total("weight_bytes"),
                "activation_bytes": self.costs.total("activation_bytes"),
                "activation_bytes_by_dtype": self.costs.activation_bytes_by_dtype(),
                "latency_s": {p.key: sum(lat[i][p.key][0] for i in costed) for p in self.profiles},
            },
            "not_costed": [{"name": c.name, "op_type": c.op_type, "reason": c.note} for c in ops if not c.costed],
            "ops": [_op_dict(c, lat[i]) for i, c in enumerate(ops)],
        }

    def format_table(self, top: int = 10, per_op: bool = False) -> str:
        """A readable report: totals, latency per profile, the top ops (or every op)."""
        d = self.to_dict()
        t = d["totals"]
        lines = [f"model: {self.model}  (opset {d['opset']}, {d['nodes']} nodes, batch {self.batch or 1})",
                 f"MACs {human(t['macs'])}  FLOPs {human(t['flops'])}  params {human(t['params'])}  "
                 f"weights {human(t['weight_bytes'], 'B')}  activations {human(t['activation_bytes'], 'B')}"]
        for p in self.profiles:
            lines.append(f"latency on {p.key} ({p.name}): {seconds(t['latency_s'][p.key])} (roofline)")
        if d["not_costed"]:
            by_type: dict[str, int] = {}
            for c in d["not_costed"]:
                by_type[c["op_type"]] = by_type.get(c["op_type"], 0) + 1
            lines.append("not costed (no rule): " + ", ".join(f"{k} x{v}" for k, v in sorted(by_type.items())))
        rows = [o for o in d["ops"] if o["costed"]]
        key = self.profiles[0].key if self.profiles else None
        rows.sort(key=(lambda o: -o["latency_s"][key]) if key else (lambda o: -o["flops"]))
        if not per_op:
            rows = rows[:top]
            lines.append("")
            lines.append(f"top {len(rows)} ops by " + (f"latency on {key}:" if key else "FLOPs:"))
        else:
            lines.append("")
            lines.append("all ops:")
        lines.extend(_table(rows, [p.key for p in self.profiles]))
        return "\n".join(lines)


def _op_dict(c, lat: Mapping[str, tuple[float, str]]) -> dict:
    return {"name": c.name, "op_type": c.op_type, "weight": c.weights[0] if c.weights else None, "dtype": c.dtype, "costed": c.costed, "macs": c.macs,
            "flops": c.flops, "params": c.params, "bytes": c.bytes, "weight_bytes": c.weight_bytes,
            "activation_bytes": c.activation_bytes,
            "latency_s": {k: v[0] for k, v in lat.items()} if c.costed else {k: None for k in lat},
            "bound": {k: v[1] for k, v in lat.items()} if c.costed else {k: None for k in lat},
            **({"note": c.note} if c.note else {})}


def _table(rows: Sequence[dict], keys: Sequence[str]) -> list[str]:
    head = ["node", "weight", "op_type", "MACs", "FLOPs", "params", "bytes"] + [f"{k} (bound)" for k in keys]
    body = [[_clip(o["name"], 32), _clip(o["weight"] or "-", 40), o["op_type"], human(o["macs"]), human(o["flops"]),
             human(o["params"]), human(o["bytes"], "B")]
            + [f"{seconds(o['latency_s'][k])} ({o['bound'][k]})" for k in keys] for o in rows]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(head)] + [fmt(r) for r in body]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else "..." + text[-(n - 3):]


def seconds(s: float) -> str:
    """0.000123 → '123.00 us'."""
    if s < 1e-3:
        return f"{s * 1e6:.2f} us"
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.3f} s"


def human(n: float, unit: str = "") -> str:
    """1234567 → '1.23 M' (decimal prefixes)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip() if unit else f"{n:g}"


def analyze(model: str | os.PathLike | onnx.ModelProto, profiles: Sequence[str | Profile] = (), *,
            batch: int | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Analysis:
    """Load a model, cost every op and evaluate the roofline on each profile (name, path or Profile)."""
    profs = [p if isinstance(p, Profile) else load_profile(p) for p in profiles]
    g = graph_mod.load(model, batch=batch, input_shapes=input_shapes)
    name = str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
    return Analysis(name, batch, cost_model(g), profs)
