"""Device latency side by side: per op and per layer on each profile, the ratios between
profiles, and for an original/pruned pair the speedup per op and in total, with a plot."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import onnx

from .costs import CostModel, cost_model
from .graph import Graph, load
from .profiles import Profile, load_profile
from .report import human, seconds

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def layers(graph: Graph) -> dict[str, str]:
    """Node → its layer: the weight name of the node, or of the nearest weighted op upstream."""
    out: dict[str, str] = {}
    for name in graph.topological_nodes():
        node = graph.nodes[name]
        weight = next((t for t in node.input[1:2] if t and graph.is_constant(t)), None)
        if node.op_type in WEIGHT_OPS and weight:
            out[name] = graph.origins.get(weight, weight)
            continue
        ups = [graph.producer[t] for t in node.input if t in graph.producer]
        out[name] = out.get(ups[0], "input") if ups else "input"
    return out


def layer_widths(graph: Graph) -> dict[str, int]:
    """Output channels of each weighted layer (axis 1 for Conv, last axis for Gemm/MatMul)."""
    widths = {}
    for name, node in graph.nodes.items():
        weight = next((t for t in node.input[1:2] if t and graph.is_constant(t)), None)
        info = graph.info(node.output[0])
        if node.op_type in WEIGHT_OPS and weight and info is not None and info.shape:
            axis = 1 if node.op_type.startswith("Conv") else -1
            widths[graph.origins.get(weight, weight)] = int(info.shape[axis])
    return widths


@dataclass
class Side:
    """One model costed on the profiles."""

    path: str
    graph: Graph
    costs: CostModel
    layer: dict[str, str]

    def latency(self, profile: Profile) -> dict[str, tuple[float, str]]:
        """Node → (seconds, bound) on a profile."""
        return {c.name: profile.latency(c) for c in self.costs.ops if c.costed}

    def total(self, profile: Profile) -> float:
        """Seconds of one run."""
        return profile.total_latency(self.costs)


@dataclass
class Comparison:
    """Models costed on profiles; the first model is the reference."""

    sides: list[Side]
    profiles: list[Profile]

    def to_dict(self) -> dict:
        """The JSON document of `morphonnx compare`."""
        ref, keys = self.sides[0], [p.key for p in self.profiles]
        lat = [{p.key: s.latency(p) for p in self.profiles} for s in self.sides]
        ops = []
        for c in ref.costs.ops:
            if not c.costed:
                continue
            row = {"name": c.name, "op_type": c.op_type, "layer": ref.layer.get(c.name),
                   "latency_s": {k: lat[0][k][c.name][0] for k in keys},
                   "bound": {k: lat[0][k][c.name][1] for k in keys},
                   "ratio": {f"{k}/{keys[0]}": _ratio(lat[0][k][c.name][0], lat[0][keys[0]][c.name][0])
                             for k in keys[1:]}}
            for i, side in enumerate(self.sides[1:], 1):
                other = {k: lat[i][k].get(c.name) for k in keys}
                row[f"model{i}"] = {"latency_s": {k: (v[0] if v else 0.0) for k, v in other.items()},
                                    "speedup": {k: _ratio(row["latency_s"][k], v[0] if v else 0.0)
                                                for k, v in other.items()},
                                    "present": other[keys[0]] is not None}
            ops.append(row)
        doc = {
            "profiles": {p.key: {"name": p.name, "peak_gflops": p.peak_gflops, "bandwidth_gbs": p.bandwidth_gbs}
                         for p in self.profiles},
            "models": [{"model": s.path, "nodes": len(s.graph.nodes), "macs": s.costs.total("macs"),
                        "latency_s": {p.key: s.total(p) for p in self.profiles}} for s in self.sides],
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

    def layer_table(self) -> list[dict]:
        """Per layer of the reference: latency on each profile (per model) and output width (per model)."""
        rows: dict[str, dict] = {}
        for i, side in enumerate(self.sides):
            widths = layer_widths(side.graph)
            for p in self.profiles:
                for name, (t, _) in side.latency(p).items():
                    layer = side.layer.get(name, "input")
                    row = rows.setdefault(layer, {"layer": layer, "latency_s": {}, "width": {}})
                    key = f"{p.key}" if i == 0 else f"{p.key}@model{i}"
                    row["latency_s"][key] = row["latency_s"].get(key, 0.0) + t
            for layer, row in rows.items():
                row["width"]["model0" if i == 0 else f"model{i}"] = widths.get(layer, 0)
        return list(rows.values())

    def format_table(self, top: int = 15) -> str:
        """Totals per model and profile, the top ops of the reference side by side."""
        doc = self.to_dict()
        keys = [p.key for p in self.profiles]
        lines = []
        for p in self.profiles:
            lines.append(f"{p.key}: {p.name}: {p.peak_gflops['fp32']:g} GFLOP/s fp32, {p.bandwidth_gbs:g} GB/s")
        for i, m in enumerate(doc["models"]):
            tag = "reference" if i == 0 else f"model {i}"
            lines.append(f"{tag}: {m['model']}  ({m['nodes']} nodes, {human(m['macs'])} MACs)  " +
                         "  ".join(f"{k} {seconds(m['latency_s'][k])}" for k in keys))
        for i, sp in enumerate(doc.get("speedup", []), 1):
            lines.append(f"speedup of model {i}: " + "  ".join(f"{k} {v:.2f}x" for k, v in sp.items()))
            match = doc["matching"][i - 1]
            if not match["looks_like_a_pair"]:
                lines.append(f"warning: model {i} does not look like a pruned copy of the reference: "
                             f"{match['shared_ops']} ops share a name, {len(match['only_in_other'])} are only in "
                             f"model {i} (e.g. {', '.join(match['only_in_other'][:3])}); compared op by op where "
                             f"names match")
        if len(keys) > 1:
            totals = doc["models"][0]["latency_s"]
            lines.append("ratio " + "  ".join(f"{k}/{keys[0]} {_ratio(totals[k], totals[keys[0]]):.2f}" for k in keys[1:]))
        rows = sorted(doc["ops"], key=lambda o: -max(o["latency_s"].values()))[:top]
        lines.append("")
        lines.append(f"top {len(rows)} ops of the reference:")
        head = ["node", "layer", "op_type"] + [f"{k} (bound)" for k in keys] + \
            [f"{k}/{keys[0]}" for k in keys[1:]] + [f"speedup {k}" for k in keys if len(self.sides) > 1]
        body = []
        for o in rows:
            r = [o["name"][-28:], (o["layer"] or "-")[-32:], o["op_type"]]
            r += [f"{seconds(o['latency_s'][k])} ({o['bound'][k]})" for k in keys]
            r += [f"{o['ratio'][f'{k}/{keys[0]}']:.2f}" for k in keys[1:]]
            if len(self.sides) > 1:
                m1 = o["model1"]
                r += [f"{m1['speedup'][k]:.2f}x" if m1["present"] else "removed" for k in keys]
            body.append(r)
        lines += _columns([head] + body, 3)
        layers_ = sorted(doc["layers"], key=lambda r: -r["latency_s"].get(keys[0], 0.0))[:top]
        lines.append("")
        lines.append(f"top {len(layers_)} layers of the reference (ops grouped by the weighted op they follow):")
        head = ["layer"] + keys + [f"{k} model{i}" for i in range(1, len(self.sides)) for k in keys] + \
            ["width"] + [f"width model{i}" for i in range(1, len(self.sides))]
        body = [[r["layer"][-40:]] + [seconds(r["latency_s"].get(k, 0.0)) for k in keys] +
                [seconds(r["latency_s"].get(f"{k}@model{i}", 0.0)) for i in range(1, len(self.sides)) for k in keys] +
                [str(r["width"].get(f"model{i}", 0)) for i in range(len(self.sides))] for r in layers_]
        lines += _columns([head] + body, 1)
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> None:
        """Stacked per-layer latency per device (and model), and per-layer widths per model."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import colormaps

        table = self.layer_table()
        names = [r["layer"] for r in table]
        cmap = colormaps["tab20"]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 9), gridspec_kw={"height_ratios": [1.2, 1]})
        bars, labels = [], []
        for p in self.profiles:
            for i in range(len(self.sides)):
                key = p.key if i == 0 else f"{p.key}@model{i}"
                bars.append([r["latency_s"].get(key, 0.0) * 1e3 for r in table])
                labels.append(p.key if len(self.sides) == 1 else f"{p.key}\n{'original' if i == 0 else f'model {i}'}")
        for b, values in enumerate(bars):
            bottom_at = 0.0
            for j, v in enumerate(values):
                top.bar(b, v, bottom=bottom_at, color=cmap(j % 20), edgecolor="white", linewidth=0.3)
                bottom_at += v
            top.text(b, bottom_at, f"{bottom_at:.3g} ms", ha="center", va="bottom", fontsize=8)
        top.set_xticks(range(len(bars)), labels, fontsize=8)
        top.set_ylabel("roofline latency (ms), stacked by layer")
        top.set_title("latency per device, one colour per layer")
        x = range(len(names))
        for i in range(len(self.sides)):
            widths = [r["width"].get("model0" if i == 0 else f"model{i}", 0) for r in table]
            bottom.bar(x, widths, width=0.8 if i == 0 else 0.5, alpha=0.35 if i == 0 else 0.9,
                       label="original" if i == 0 else f"model {i}", color="tab:gray" if i == 0 else f"C{i}")
        bottom.set_ylabel("output channels")
        bottom.set_title("width per layer")
        step = max(1, len(names) // 40)
        short = [n.removesuffix(".weight")[-24:] for n in names]
        bottom.set_xticks(list(x)[::step], short[::step], rotation=90, fontsize=6)
        bottom.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(str(path), dpi=110)
        plt.close(fig)


def _columns(rows: list[list[str]], left: int) -> list[str]:
    widths = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf") if a else 1.0


def compare(models: Sequence[str | os.PathLike | onnx.ModelProto], profiles: Sequence[str | Profile], *,
            batch: int | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Comparison:
    """Cost each model on each profile; the first model is the reference."""
    profs = [p if isinstance(p, Profile) else load_profile(p) for p in profiles]
    sides = []
    for m in models:
        g = load(m, batch=batch, input_shapes=input_shapes)
        sides.append(Side(str(m) if not isinstance(m, onnx.ModelProto) else "model", g, cost_model(g), layers(g)))
    return Comparison(sides, profs)
