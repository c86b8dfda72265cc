"""Structure export: the alive channel count of every source after masks and topology morphing
(MorphNet's StructureExporter format `{op_name: count}`), extended with kept indices, group ids,
vanished layers, and a masks section that `prune --masks` reads on another export of the model."""
from __future__ import annotations

import numpy as np

from .oracle import own_bn, removed_by_tensor
from .rewrite import PruneResult


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
            "node": s.node, "op_type": s.op_type, "weight": s.weight, "channels": size, "alive": alive,
            "kept": np.flatnonzero(keep).tolist(), "vanished": vanished,
            "groups": sorted({int(groups.element_group[i, 0]) for i in plan.ids(s.tensor).tolist()}),
        })
        key = s.weight or s.node
        doc["masks"][key] = keep.astype(int).tolist()
        bn = own_bn(graph, s.tensor)
        if bn is not None and not keep.all():
            doc["silenced"][key] = [float(v) for v in graph.array(graph.nodes[bn].input[2])]  # BN output at scale 0
    return doc


def format_structure(doc: dict, top: int = 30) -> str:
    """A readable table of the structure: per source, channels before and after."""
    rows = doc["sources"]
    vanished = sum(r["vanished"] for r in rows)
    before = sum(r["channels"] for r in rows)
    after = sum(r["alive"] for r in rows)
    lines = [f"{len(rows)} layers, {vanished} vanished; output channels {before} -> {after}", "",
             f"{'layer':48s} {'channels':>8s} {'alive':>6s}"]
    for r in rows[:top]:
        name = r["weight"] or r["node"]
        lines.append(f"{name[-48:]:48s} {r['channels']:8d} {r['alive']:6d}" + ("  vanished" if r["vanished"] else ""))
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more (--json for all)")
    return "\n".join(lines)
