"""Structure export: the alive channel count of every source after masks and topology morphing
(MorphNet's StructureExporter format `{op_name: count}`), extended with kept indices, group ids,
vanished layers, and a masks section that `prune --masks` reads on another export of the model."""
from __future__ import annotations

import numpy as np

from .oracle import own_bn, removed_by_tensor
from . import units
from .rewrite import PruneResult
from .tables import TOP, Column, Table


def structure(result: PruneResult) -> dict:
    """The structure document of a (dry-run) prune."""
    groups, plan, graph = result.groups, result.groups.plan, result.groups.graph
    removed = removed_by_tensor(groups, result.masks)
    gone = set(result.removed_nodes)
    doc: dict = {"structure": {}, "sources": [], "masks": {}, "silenced": {}}
    for s in plan.sources:
        if s.kind != "weight":
            continue
        size = plan.spaces[s.tensor].size
        keep = np.ones(size, dtype=bool)
        keep[removed.get(s.tensor, [])] = False
        vanished = s.node in gone
        alive = 0 if vanished else int(keep.sum())
        doc["structure"][s.node] = alive
        doc["sources"].append({
            "node": s.node, "op_type": s.op_type, "weight": s.weight,
            "name": graph.display_name(s.weight) if s.weight else s.node, "channels": size, "alive": alive,
            "kept": np.flatnonzero(keep).tolist(), "vanished": vanished,
            "groups": sorted({int(groups.element_group[i, 0]) for i in plan.ids(s.tensor).tolist()}),
        })
        key = s.weight or s.node
        doc["masks"][key] = keep.astype(int).tolist()
        bn = own_bn(graph, s.tensor)
        if bn is not None and not keep.all():
            doc["silenced"][key] = [float(v) for v in graph.array(graph.nodes[bn].input[2])]  # BN output at scale 0
    return doc


def structure_table(doc: dict, top: int | None = TOP) -> Table:
    """Per source (largest first): channels before and after, the share kept, vanished layers."""
    rows = sorted(doc["sources"], key=lambda r: -r["channels"])
    shown = rows if top is None else rows[:top]
    cols = [Column("layer"), Column("node"), Column("op_type"), Column("channels", "int"), Column("alive", "int"),
            Column("kept", "percent", "kept_percent"), Column("vanished")]
    body = [[r.get("name") or r["weight"] or r["node"], r["node"], r["op_type"], r["channels"], r["alive"],
             100 * r["alive"] / r["channels"] if r["channels"] else None, "yes" if r["vanished"] else ""]
            for r in shown]
    more = len(rows) - len(shown)
    title = f"{'all' if not more else f'top {len(shown)} of'} {len(rows)} layers by channels"
    return Table("layers", title, cols, body, f"... {more} more layers (--top all)" if more else "")


def format_structure(doc: dict, top: int | None = TOP) -> str:
    """A readable table of the structure: per source, channels before and after."""
    return structure_summary(doc) + "\n\n" + structure_table(doc, top).text()


def structure_summary(doc: dict) -> str:
    """The lines above the table: layers and channels before and after, MACs, FLOPs, params."""
    rows = doc["sources"]
    vanished = sum(r["vanished"] for r in rows)
    before = sum(r["channels"] for r in rows)
    after = sum(r["alive"] for r in rows)
    lines = [f"{len(rows)} layers, {vanished} vanished; output channels {before} -> {after}"]
    costs = doc.get("costs")
    if costs:
        lines.append("  ".join(f"{name} {units.count(costs[k][0])} -> {units.count(costs[k][1])} "
                               f"({units.percent(costs[k][1], costs[k][0])})"
                               for name, k in (("MACs", "macs"), ("FLOPs", "flops"), ("params", "params"))) +
                     (f"  (params incl. {units.count(costs['folded_constant_values'])} folded constant values: "
                      f"bias maps of removed channels)" if costs.get("folded_constant_values") else ""))
    return "\n".join(lines)
