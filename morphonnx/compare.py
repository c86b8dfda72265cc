"""Device latency side by side: per op and per layer on each profile, the ratios between
profiles, and for an original/pruned pair the speedup per op and in total, with a plot."""
from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import onnx

from .costs import CostModel, cost_model, kv_cache
from .graph import Graph, load
from .profiles import Profile, load_profile
from . import units
from .errors import BadInput
from .tables import SCHEMA_VERSION, TOP, Column, Table

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _weighted(graph: Graph, node) -> str | None:
    """The weight of a Conv/ConvTranspose/Gemm/MatMul with a constant one (its stored name)."""
    weight = next((t for t in node.input[1:2] if t and graph.is_constant(t)), None)
    return graph.display_name(weight) if node.op_type in WEIGHT_OPS and weight else None


def layers(graph: Graph) -> dict[str, str]:
    """Node → its layer: the node itself if it has a weight, else the nearest weighted op
    upstream ("input" before the first). Layers are node names, which a prune keeps, so an
    original and its pruned model match layer by layer whatever their weights are called."""
    out: dict[str, str] = {}
    for name in graph.topological_nodes():
        node = graph.nodes[name]
        if _weighted(graph, node):
            out[name] = name
            continue
        ups = [graph.producer[t] for t in node.input if t in graph.producer]
        out[name] = out.get(ups[0], "input") if ups else "input"
    return out


def layer_names(graph: Graph) -> dict[str, str]:
    """Weighted node → the name a person knows it by: its weight's (`layer1.0.conv1.weight`)."""
    return {name: w for name, node in graph.nodes.items() if (w := _weighted(graph, node))}


def layer_widths(graph: Graph) -> dict[str, int]:
    """Output channels of each weighted node (axis 1 for Conv, last axis for Gemm/MatMul), in graph order."""
    widths = {}
    for name, node in graph.nodes.items():
        info = graph.info(node.output[0])
        if _weighted(graph, node) and info is not None and info.shape:
            widths[name] = int(info.shape[1 if node.op_type.startswith("Conv") else -1])
    return widths


# width bars: greys and colours apart from the op-type colours of the latency panels (tab10)
MODEL_COLOURS = ("0.6", "0.15", "#7b3294", "#1b7837", "#c51b7d")


def layer_label(name: str) -> str:
    """A layer's short name for a plot: a weight's module path without `.weight`
    (`layer1.0.conv1`), a TensorFlow tensor's layer scope (`inception_v3_1/conv2d_1/convolution/
    merged_input:0` → `conv2d_1`)."""
    name = name.split(":")[0]
    for suffix in (".weight", ".bias", ".kernel"):
        name = name.removesuffix(suffix)
    parts = [p for p in name.split("/") if p]
    return parts[1] if len(parts) >= 3 else parts[-1] if parts else name


@dataclass
class Side:
    """One model costed on the profiles."""

    path: str
    graph: Graph
    costs: CostModel
    layer: dict[str, str]
    label: str = ""  # a name of its own (a setting of `--at`); else the file name

    def latency(self, profile: Profile) -> dict[str, tuple[float, str]]:
        """Node → (seconds, bound) on a profile."""
        profile.prepare(self.costs)
        return {c.name: profile.latency(c) for c in self.costs.ops if c.costed}

    def total(self, profile: Profile) -> float:
        """Seconds of one run."""
        return profile.total_latency(self.costs)


@dataclass
class Comparison:
    """Models costed on profiles; the first model is the reference."""

    sides: list[Side]
    profiles: list[Profile]
    _doc: dict | None = field(default=None, repr=False, compare=False)  # to_dict, built once

    def labels(self) -> list[str]:
        """A short name per model: its file name (the path where two file names are equal)."""
        names = [s.label or os.path.basename(s.path) for s in self.sides]
        return [n if names.count(n) == 1 or s.label else s.path for n, s in zip(names, self.sides)]

    def to_dict(self) -> dict:
        """The JSON document of `morphonnx compare` (built once: the tables and the summary read it too)."""
        if self._doc is None:
            self._doc = self._document()
        return self._doc

    def _document(self) -> dict:
        ref, keys = self.sides[0], [p.key for p in self.profiles]
        lat = [{p.key: s.latency(p) for p in self.profiles} for s in self.sides]
        names = self.layer_names()
        ops = []
        for c in ref.costs.ops:
            if not c.costed:
                continue
            row = {"name": c.name, "op_type": c.op_type, "layer": names.get(ref.layer.get(c.name), "input"),
                   "latency_s": {k: lat[0][k][c.name][0] for k in keys},
                   "bound": {k: lat[0][k][c.name][1] for k in keys},
                   "ratio": {f"{k}/{keys[0]}": _ratio(lat[0][k][c.name][0], lat[0][keys[0]][c.name][0])
                             for k in keys[1:]}}
            for i, side in enumerate(self.sides[1:], 1):
                other = {k: lat[i][k].get(c.name) for k in keys}
                row[f"model{i}"] = {"latency_s": {k: (v[0] if v else 0.0) for k, v in other.items()},
                                    "bound": {k: (v[1] if v else None) for k, v in other.items()},
                                    "speedup": {k: _ratio(row["latency_s"][k], v[0] if v else 0.0)
                                                for k, v in other.items()},
                                    "present": other[keys[0]] is not None}
            ops.append(row)
        doc = {
            "schema_version": SCHEMA_VERSION,
            "profiles": {p.key: {"name": p.name, "peak_gflops": p.peak_gflops, "bandwidth_gbs": p.bandwidth_gbs,
                                 "run_overhead_us": p.run_overhead_us} for p in self.profiles},
            "models": [{"model": s.path, "label": label, "dims": dict(s.graph.dims), "nodes": len(s.graph.nodes),
                        "macs": s.costs.total("macs"), "flops": s.costs.total("flops"), "params": s.costs.params,
                        "kv_cache_bytes": kv_cache(s.graph),
                        "latency_s": {p.key: s.total(p) for p in self.profiles},
                        "ops_latency_s": {p.key: s.total(p) - p.run_overhead_us * 1e-6 for p in self.profiles}}
                       for s, label in zip(self.sides, self.labels())],
            "sort": f"latency on {keys[0]}",
            "ops": ops,
            "layers": self.layer_table(),
        }
        if len(self.sides) > 1:
            doc["speedup"] = [{p.key: _ratio(ref.total(p), s.total(p)) for p in self.profiles} for s in self.sides[1:]]
            doc["matching"] = [self.matching(s) for s in self.sides[1:]]
        return doc

    def matching(self, other: Side) -> dict:
        """Which op names the two models share (an original and its pruned model share most)."""
        a, b = set(self.sides[0].graph.nodes), set(other.graph.nodes)
        shared = a & b
        return {"shared_ops": len(shared), "only_in_reference": sorted(a - b), "only_in_other": sorted(b - a),
                "looks_like_a_pair": len(shared) >= 0.5 * min(len(a), len(b)) and len(b - a) <= 0.25 * len(b)}

    def layer_names(self) -> dict[str, str]:
        """Layer (weighted node) → its weight's name, the reference's first."""
        names: dict[str, str] = {"input": "input"}
        for side in reversed(self.sides):
            names.update(layer_names(side.graph))
        return names

    def layer_table(self) -> list[dict]:
        """Per layer (a weighted op of any model, matched by node name): latency on each profile
        (per model) and output width (per model), in the reference's graph order."""
        rows: dict[str, dict] = {}
        names = self.layer_names()
        for i, side in enumerate(self.sides):
            widths = layer_widths(side.graph)
            for layer in widths:
                rows.setdefault(layer, {"layer": names[layer], "node": layer, "latency_s": {}, "width": {}})
            for p in self.profiles:
                for name, (t, _) in side.latency(p).items():
                    layer = side.layer.get(name, "input")
                    row = rows.setdefault(layer, {"layer": names.get(layer, layer), "node": layer,
                                                  "latency_s": {}, "width": {}})
                    key = f"{p.key}" if i == 0 else f"{p.key}@model{i}"
                    row["latency_s"][key] = row["latency_s"].get(key, 0.0) + t
            for layer, row in rows.items():
                row["width"]["model0" if i == 0 else f"model{i}"] = widths.get(layer, 0)
        return list(rows.values())

    def tables(self, top: int | None = TOP) -> list[Table]:
        """Totals per model and profile; the ops and the layers of the reference, both sorted by
        latency on the first profile."""
        doc = self.to_dict()
        keys, labels, n = [p.key for p in self.profiles], self.labels(), len(self.sides)
        cols = [Column("model"), Column("nodes", "int"), Column("MACs", "count", "macs"),
                Column("params", "count", "params")]
        kv = any(m["kv_cache_bytes"]["read"] or m["kv_cache_bytes"]["written"] for m in doc["models"])
        cols += [Column("KV read", "bytes", "kv_cache_read_bytes"), Column("KV written", "bytes", "kv_cache_written_bytes")] \
            if kv else []
        cols += [Column(k, "seconds", f"latency_{k}_s") for k in keys]
        tokens = [_tokens(m["dims"]) for m in doc["models"]]  # new tokens per run (prefill: many, decode: 1)
        per_token = any(tokens) and len({t for t in tokens if t}) > 1
        cols += [Column(f"{k} per token", "seconds", f"latency_{k}_per_token_s") for k in keys] if per_token else []
        cols += [Column(f"speedup {k}", "ratio", f"speedup_{k}") for k in keys] if n > 1 else []
        body = []
        for i, m in enumerate(doc["models"]):
            r = [labels[i] + ("" if i == 0 else f" (#{i})"), m["nodes"], m["macs"], m["params"]] + \
                ([m["kv_cache_bytes"]["read"], m["kv_cache_bytes"]["written"]] if kv else []) + \
                [m["latency_s"][k] for k in keys] + \
                ([m["latency_s"][k] / tokens[i] if tokens[i] else None for k in keys] if per_token else [])
            if n > 1:
                r += [1.0 if i == 0 else doc["speedup"][i - 1][k] for k in keys]
            body.append(r)
        totals = Table("models", "total latency of one run (ops + per-run overhead)", cols, body)

        by = keys[0]
        ops = sorted(doc["ops"], key=lambda o: -o["latency_s"][by])
        shown = ops if top is None else ops[:top]
        whole = doc["models"][0]["ops_latency_s"][by]
        cols = [Column("node"), Column("layer"), Column("op_type")]
        for k in keys:
            cols += [Column(k, "seconds", f"latency_{k}_s"), Column(f"{k} bound", key=f"bound_{k}")]
        cols += [Column(f"% of {by}", "percent", f"percent_of_{by}")]
        cols += [Column(f"{k}/{by}", "ratio", f"ratio_{k}_{by}") for k in keys[1:]]
        cols += [Column(f"speedup {k}" + (f" #{i}" if n > 2 else ""), "ratio", f"speedup_{k}_model{i}")
                 for i in range(1, n) for k in keys]
        body = []
        for o in shown:
            r = [o["name"], o["layer"] or "-", o["op_type"]]
            for k in keys:
                r += [o["latency_s"][k], o["bound"][k]]
            r.append(100 * o["latency_s"][by] / whole if whole else None)
            r += [o["ratio"][f"{k}/{by}"] for k in keys[1:]]
            for i in range(1, n):
                m = o[f"model{i}"]
                r += [m["speedup"][k] if m["present"] else "removed" for k in keys]
            body.append(r)
        more = len(ops) - len(shown)
        op_table = Table("ops", f"{'all' if not more else f'top {len(shown)} of'} {len(ops)} ops of {labels[0]} "
                         f"by latency on {by}", cols, body, f"... {more} more ops (--top all)" if more else "")

        layers_ = sorted(doc["layers"], key=lambda r: -r["latency_s"].get(by, 0.0))
        shown = layers_ if top is None else layers_[:top]
        cols = [Column("layer")]
        for i in range(n):
            tag = "" if i == 0 else f" #{i}"
            cols += [Column(f"{k}{tag}", "seconds", f"latency_{k}{'' if i == 0 else f'_model{i}'}_s") for k in keys]
        cols += [Column("width" + ("" if i == 0 else f" #{i}"), "int", f"width{'' if i == 0 else f'_model{i}'}")
                 for i in range(n)]
        body = [[r["layer"]] + [r["latency_s"].get(k if i == 0 else f"{k}@model{i}", 0.0) for i in range(n) for k in keys]
                + [r["width"].get(f"model{i}", 0) for i in range(n)] for r in shown]
        more = len(layers_) - len(shown)
        layer_table = Table("layers", f"{'all' if not more else f'top {len(shown)} of'} {len(layers_)} layers of "
                            f"{labels[0]} by latency on {by} (ops grouped by the weighted op they follow)", cols, body,
                            f"... {more} more layers (--top all)" if more else "")
        return [totals, op_table, layer_table]

    def format_table(self, top: int | None = TOP) -> str:
        """Profiles, totals per model and profile, the top ops and layers of the reference."""
        return self.summary() + "\n\n" + "\n\n".join(t.text() for t in self.tables(top))

    def summary(self) -> str:
        """The lines above the tables: the profiles, the models, pairs that do not match."""
        doc = self.to_dict()
        labels = self.labels()
        lines = [f"{p.key}: {p.name}: {units.count(p.peak_gflops['fp32'] * 1e9)}FLOP/s fp32, "
                 f"{units.count(p.bandwidth_gbs * 1e9)}B/s" +
                 (f", {units.seconds(p.run_overhead_us * 1e-6)} per run" if p.run_overhead_us else "")
                 for p in self.profiles]
        for i, (m, side) in enumerate(zip(doc["models"], self.sides)):
            at = f" at {', '.join(f'{k}={v}' for k, v in m['dims'].items())}" if side.label and m["dims"] else ""
            lines.append(f"{'reference' if i == 0 else f'model #{i}'}: {m['model']}{at}")
        for i, match in enumerate(doc.get("matching", []), 1):
            if not match["looks_like_a_pair"]:
                lines.append(f"warning: {labels[i]} does not look like a pruned copy of the reference: "
                             f"{match['shared_ops']} ops share a name, {len(match['only_in_other'])} are only in "
                             f"{labels[i]} (e.g. {', '.join(match['only_in_other'][:3])}); compared op by op where "
                             f"names match")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> None:
        """One panel per device: a stacked bar per model, coloured by op type (legend), total on
        top, each panel on its own scale; below, output channels per layer, one bar per model."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels, keys = self.labels(), [p.key for p in self.profiles]
        by_type = [{p.key: {} for p in self.profiles} for _ in self.sides]
        for i, side in enumerate(self.sides):
            for p in self.profiles:
                p.prepare(side.costs)
                for c in side.costs.ops:
                    if c.costed:
                        d = by_type[i][p.key]
                        d[c.op_type] = d.get(c.op_type, 0.0) + p.latency(c)[0]
                if p.run_overhead_us:
                    by_type[i][p.key]["run overhead"] = p.run_overhead_us * 1e-6
        weight: dict[str, float] = {}
        for per in by_type:
            for p in self.profiles:
                total = sum(per[p.key].values()) or 1.0
                for t, v in per[p.key].items():
                    weight[t] = weight.get(t, 0.0) + v / total
        named = [t for t, _ in sorted(weight.items(), key=lambda kv: -kv[1])][:9]
        palette = {t: f"C{j}" for j, t in enumerate(named)}

        order = {name: j for j, name in enumerate(layer_widths(self.sides[0].graph))}
        table = sorted((r for r in self.layer_table() if any(r["width"].values())),
                       key=lambda r: order.get(r["node"], len(order)))
        n_layers, n = len(table), len(self.sides)
        top_h, bottom_h = 4.4, max(3.0, 0.16 * n_layers * max(1.0, n * 0.6) + 1.0)
        fig = plt.figure(figsize=(max(10.0, 3.4 * len(keys) + 2.5), top_h + bottom_h))
        upper, lower = fig.subfigures(2, 1, height_ratios=[top_h, bottom_h])
        axes = upper.subplots(1, len(keys), squeeze=False)[0]
        tilt_in = 0.075 * 0.45 * max(len(x) for x in labels)  # height of a tilted label
        upper.subplots_adjust(left=max(0.08, (tilt_in * 0.9 + 0.3) / fig.get_figwidth()), right=0.84, top=0.82,
                              bottom=min(0.45, (0.35 + tilt_in) / top_h), wspace=0.45)
        for ax, p in zip(axes, self.profiles):
            totals = [sum(by_type[i][p.key].values()) for i in range(n)]
            factor, unit = units.time_unit(totals)
            for i in range(n):
                bottom = 0.0
                parts = by_type[i][p.key]
                for t in named + ["other"]:
                    v = parts.get(t, 0.0) if t != "other" else sum(v for k, v in parts.items() if k not in palette)
                    if v:
                        ax.bar(i, v / factor, bottom=bottom, color=palette.get(t, "0.75"), width=0.6, label=t)
                        bottom += v / factor
                ax.text(i, bottom, units.seconds(totals[i]), ha="center", va="bottom", fontsize=9)
            tilt = sum(len(x) for x in labels) * 0.075 > 2.6  # the labels' inches at 8 pt against a panel's
            ax.set_xticks(range(n), labels, fontsize=8, rotation=25 if tilt else 0, ha="right" if tilt else "center",
                          rotation_mode="anchor")
            ax.set_ylabel(f"latency ({unit})")
            ax.set_title(f"{p.key}\n{textwrap.shorten(p.name, 34, placeholder='...')}", fontsize=9)
            ax.margins(y=0.12)
        handles: dict[str, object] = {}
        for ax in axes:
            for h, l in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(l, h)
        order = [t for t in named + ["other"] if t in handles]
        upper.legend([handles[t] for t in order], order, loc="center right", fontsize=8, title="op type", frameon=False)
        upper.suptitle("roofline latency of one run per device, stacked by op type (each panel on its own scale)",
                       fontsize=10)
        ax = lower.subplots()
        label_in = 7 / 72 * 0.62 * max((len(x) for x in map(layer_label, (r["layer"] for r in table))), default=8)
        lower.subplots_adjust(left=min(0.5, label_in / fig.get_figwidth() + 0.03), right=0.84,
                              top=1 - 0.45 / bottom_h, bottom=0.55 / bottom_h)
        height = 0.8 / n
        ys = range(n_layers)
        for i in range(n):
            ax.barh([y + (i - (n - 1) / 2) * height for y in ys],
                    [r["width"].get(f"model{i}", 0) for r in table], height=height,
                    color=MODEL_COLOURS[i % len(MODEL_COLOURS)], label=labels[i])
        names = [layer_label(r["layer"]) for r in table]
        ax.set_yticks(list(ys), names, fontsize=7)
        ax.set_ylim(n_layers - 0.5, -0.5)
        ax.set_xlabel("output channels")
        ax.set_ylabel("layer (in graph order)")
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=n, frameon=False,
                  title="width per layer", title_fontsize=9, alignment="left")
        fig.savefig(str(path), dpi=110)
        plt.close(fig)


def _tokens(dims: Mapping[str, int | None]) -> int | None:
    """The new tokens of one run: the value of a `sequence_length`-like dimension that is not a
    past (cache) length."""
    for name, value in dims.items():
        low = name.lower()
        if value and ("seq" in low or "token" in low) and "past" not in low and "total" not in low:
            return int(value)
    return None


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf") if a else 1.0


def compare(models: Sequence[str | os.PathLike | onnx.ModelProto], profiles: Sequence[str | Profile], *,
            batch: int | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None,
            dims: Mapping[str, int] | None = None, at: Sequence[tuple[str, Mapping[str, int]]] = ()) -> Comparison:
    """Cost each model on each profile; the first model is the reference. With `at`, one model
    at several settings of its symbolic dimensions (`[("prefill", {"sequence_length": 2048}),
    ("decode", {"sequence_length": 1, "past_sequence_length": 2047})]`), the first the reference."""
    profs = [p if isinstance(p, Profile) else load_profile(p) for p in profiles]
    runs = [(m, "", dict(dims or {})) for m in models] if not at else \
        [(models[0], label, {**(dims or {}), **d}) for label, d in at]
    sides = []
    for m, label, d in runs:
        try:
            g = load(m, batch=batch, input_shapes=input_shapes, dims=d)
            costs = cost_model(g)
        except BadInput as e:
            if not label:
                raise
            text = str(e).removeprefix("--dim ").replace("--dim ", f"--at {label}:...,")
            raise BadInput(f"--at {label}: {text}") from None
        path = str(m) if not isinstance(m, onnx.ModelProto) else "model"
        sides.append(Side(path, g, costs, layers(g), label))
    return Comparison(sides, profs)
