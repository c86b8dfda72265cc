"""The `analyze` report: totals, per-op costs and roofline latency per profile, as JSON or a table."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import onnx

from . import graph as graph_mod
from . import units
from .costs import CostModel, cost_model, kv_cache
from .profiles import Profile, load_profile
from .tables import SCHEMA_VERSION, TOP, Column, Table

UNITS = {"macs": "multiply-accumulates (Conv, ConvTranspose, Gemm, MatMul), per sample",
         "flops": "2 x MACs + 1 per output element of other arithmetic, per sample",
         "params": "weight values the ops read, each tensor once (folded constants of a prune included)",
         "bytes": "bytes", "latency_s": "seconds of one run: roofline per op (+ per-op overhead) + per-run overhead"}


@dataclass
class Analysis:
    """A graph's cost model evaluated on a list of device profiles."""

    model: str
    batch: int | None
    costs: CostModel
    profiles: list[Profile]
    _doc: dict | None = field(default=None, repr=False, compare=False)  # to_dict, built once

    def op_latency(self) -> list[dict[str, tuple[float, str]]]:
        """Per op, profile key → (seconds, bound)."""
        for p in self.profiles:
            p.prepare(self.costs)
        return [{p.key: p.latency(c) for p in self.profiles} for c in self.costs.ops]

    def to_dict(self) -> dict:
        """The JSON document of the report (built once: the tables and the summary read it too)."""
        if self._doc is None:
            self._doc = self._document()
        return self._doc

    def _document(self) -> dict:
        ops, lat = self.costs.ops, self.op_latency()
        costed = [i for i, c in enumerate(ops) if c.costed]
        g = self.costs.graph
        ops_s = {p.key: sum(lat[i][p.key][0] for i in costed) for p in self.profiles}
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "batch": self.batch or 1,
            "opset": g.opset,
            "nodes": len(ops),
            "dims": dict(g.dims),
            "units": UNITS,
            "profiles": {p.key: {"name": p.name, "peak_gflops": p.peak_gflops, "bandwidth_gbs": p.bandwidth_gbs,
                                 "op_overhead_us": p.op_overhead_us, "run_overhead_us": p.run_overhead_us,
                                 "path": p.path} for p in self.profiles},
            "totals": {
                "macs": self.costs.total("macs"),
                "flops": self.costs.total("flops"),
                "params": self.costs.params,
                "folded_constant_values": self.costs.folded_values,
                "weight_bytes": self.costs.total("weight_bytes"),
                "activation_bytes": self.costs.total("activation_bytes"),
                "activation_bytes_by_dtype": self.costs.activation_bytes_by_dtype(),
                "kv_cache_bytes": kv_cache(g),
                "latency_s": {p.key: self.costs.resource("latency", p) for p in self.profiles},
                "ops_latency_s": ops_s,
                "run_overhead_s": {p.key: p.run_overhead_us * 1e-6 for p in self.profiles},
            },
            "not_costed": [{"name": c.name, "op_type": c.op_type, "reason": c.note} for c in ops if not c.costed],
            "ops": [_op_dict(c, lat[i], g) for i, c in enumerate(ops)],
        }

    def tables(self, top: int | None = TOP) -> list[Table]:
        """The ops table: the `top` costliest ops (all for None) by latency on the first profile
        (FLOPs without a profile), with their share of the total."""
        d = self.to_dict()
        keys = [p.key for p in self.profiles]
        rows = [o for o in d["ops"] if o["costed"]]
        by = f"latency on {keys[0]}" if keys else "FLOPs"
        rows.sort(key=(lambda o: -o["latency_s"][keys[0]]) if keys else (lambda o: -o["flops"]))
        total = d["totals"]["ops_latency_s"][keys[0]] if keys else d["totals"]["flops"]
        cols = [Column("node"), Column("weight"), Column("op_type"), Column("input", key="input_shape"),
                Column("output", key="output_shape"), Column("MACs", "count", "macs"), Column("FLOPs", "count", "flops"),
                Column("params", "count", "params"), Column("bytes", "bytes", "bytes")]
        for k in keys:
            cols += [Column(k, "seconds", f"latency_{k}_s"), Column(f"{k} bound", key=f"bound_{k}")]
        cols.append(Column(f"% of {by}", "percent", "percent_of_total"))
        shown = rows if top is None else rows[:top]
        body = []
        for o in shown:
            r = [o["name"], o["weight"] or "-", o["op_type"], _shapes(o["input_shapes"]), _shapes(o["output_shapes"]),
                 o["macs"], o["flops"], o["params"], o["bytes"]]
            for k in keys:
                r += [o["latency_s"][k], o["bound"][k]]
            r.append(100 * (o["latency_s"][keys[0]] if keys else o["flops"]) / total if total else None)
            body.append(r)
        title = f"{'all' if top is None or top >= len(rows) else f'top {len(shown)} of'} {len(rows)} ops by {by}"
        more = len(rows) - len(shown)
        return [Table("ops", title, cols, body, f"... {more} more ops (--top all)" if more else "")]

    def format_table(self, top: int | None = TOP) -> str:
        """A readable report: totals, latency per profile, the top ops (or every op)."""
        return self.summary() + "\n\n" + "\n".join(t.text() for t in self.tables(top))

    def summary(self) -> str:
        """The lines above the table: the model, its totals, latency per profile, ops not costed."""
        d = self.to_dict()
        t = d["totals"]
        folded = f" (of which {units.count(t['folded_constant_values'])} folded constant values)" \
            if t["folded_constant_values"] else ""
        lines = [f"model: {self.model}  (opset {d['opset']}, {d['nodes']} nodes, batch {d['batch']})"]
        if d["dims"]:
            lines.append("symbolic dims: " + ", ".join(f"{k}={'?' if v is None else v}" for k, v in d["dims"].items()) +
                         "  (set with --dim NAME=VALUE)")
        lines += [
                 f"MACs {units.count(t['macs'])}  FLOPs {units.count(t['flops'])}  params {units.count(t['params'])}"
                 f"{folded}  weights {units.nbytes(t['weight_bytes'])}  activations {units.nbytes(t['activation_bytes'])}"]
        kv = t["kv_cache_bytes"]
        if kv["read"] or kv["written"]:
            lines.append(f"KV cache: reads {units.nbytes(kv['read'])}, writes {units.nbytes(kv['written'])}")
        for p in self.profiles:
            lines.append(f"latency on {p.key} ({p.name}): {latency_text(t['ops_latency_s'][p.key], p.run_overhead_us * 1e-6)}"
                         f" (roofline)")
        if d["not_costed"]:
            by_type: dict[str, int] = {}
            for c in d["not_costed"]:
                by_type[c["op_type"]] = by_type.get(c["op_type"], 0) + 1
            lines.append("not costed (no rule): " + ", ".join(f"{k} x{v}" for k, v in sorted(by_type.items())))
        return "\n".join(lines)


def latency_text(ops_s: float, run_s: float) -> str:
    """A run's latency with the per-run overhead shown apart: '63.7 us + 10.0 us per run = 73.7 us'."""
    if not run_s:
        return units.seconds(ops_s)
    return f"{units.seconds(ops_s + run_s)} ({units.seconds(ops_s)} ops + {units.seconds(run_s)} per run)"


def _shapes(shapes: Sequence[Sequence]) -> str:
    return ", ".join("x".join(str(d) for d in s) or "scalar" for s in shapes) or "-"


def _op_dict(c, lat: Mapping[str, tuple[float, str]], graph) -> dict:
    return {"name": c.name, "op_type": c.op_type, "weight": graph.display_name(c.weights[0]) if c.weights else None,
            "dtype": c.dtype,
            "costed": c.costed, "input_shapes": [list(s) for s in c.in_shapes],
            "output_shapes": [list(s) for s in c.out_shapes], "macs": c.macs,
            "flops": c.flops, "params": c.params, "bytes": c.bytes, "weight_bytes": c.weight_bytes,
            "activation_bytes": c.activation_bytes,
            "latency_s": {k: v[0] for k, v in lat.items()} if c.costed else {k: None for k in lat},
            "bound": {k: v[1] for k, v in lat.items()} if c.costed else {k: None for k in lat},
            **({"note": c.note} if c.note else {})}


def analyze(model: str | os.PathLike | onnx.ModelProto, profiles: Sequence[str | Profile] = (), *,
            batch: int | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None,
            dims: Mapping[str, int] | None = None) -> Analysis:
    """Load a model, cost every op and evaluate the roofline on each profile (name, path or Profile)."""
    profs = [p if isinstance(p, Profile) else load_profile(p) for p in profiles]
    g = graph_mod.load(model, batch=batch, input_shapes=input_shapes, dims=dims)
    name = str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
    return Analysis(name, batch, cost_model(g), profs)
