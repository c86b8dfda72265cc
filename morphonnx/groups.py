"""Groups: sets of channels that must live or die together, from a union-find over the ties of
the channel rules, with their sources, members, pins and per-channel marginal costs."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .channels import ChannelPlan, Source, channel_plan
from .costs import CostModel, cost_model
from .graph import Graph
from . import units
from .tables import TOP, Column, Table


@dataclass
class Group:
    """A group of `size` channels; `members[tensor][k]` lists the tensor's channels in group channel k."""

    id: int
    size: int
    members: dict[str, list[list[int]]]
    sources: list[tuple[Source, list[list[int]]]]
    pinned: str | None = None
    elements: list[list[int]] = field(default_factory=list, repr=False)  # plan element ids per group channel
    macs_per_channel: float = 0.0
    params_per_channel: float = 0.0
    latency_per_channel: dict[str, float] = field(default_factory=dict)  # profile key → seconds
    # tensor → its channel per group channel as one array (None when some group channel holds several)
    _flat: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False, compare=False)

    def channels_of(self, tensor: str, ks: np.ndarray) -> np.ndarray:
        """The tensor's channels in group channels `ks`."""
        if tensor not in self._flat:
            chans = self.members[tensor]
            single = all(len(c) == 1 for c in chans)
            self._flat[tensor] = np.array([c[0] for c in chans], dtype=np.int64) if single else None
        flat = self._flat[tensor]
        if flat is not None:
            return flat[ks]
        chans = self.members[tensor]
        return np.array([c for k in ks.tolist() for c in chans[k]], dtype=np.int64)

    def to_dict(self) -> dict:
        """The JSON form (see `morphonnx groups --json`)."""
        flat = lambda chans: [c[0] if len(c) == 1 else c for c in chans]
        return {
            "id": self.id,
            "size": self.size,
            "pinned": self.pinned,
            "sources": [{"node": s.node, "op_type": s.op_type, "kind": s.kind, "weight": s.weight,
                         "tensor": s.tensor, "channels": flat(ch)} for s, ch in self.sources],
            "members": [{"tensor": t, "channels": flat(ch)} for t, ch in self.members.items()],
            "cost_per_channel": {"macs": self.macs_per_channel, "params": self.params_per_channel,
                                 **({"latency_s": self.latency_per_channel} if self.latency_per_channel else {})},
        }


@dataclass
class Groups:
    """All groups of a graph, the plan they come from, and lookups by element and source name."""

    graph: Graph
    plan: ChannelPlan
    groups: list[Group]
    element_group: np.ndarray  # element id → (group id, group channel), shape [count, 2]

    def by_source_name(self) -> dict[str, list[Source]]:
        """Sources by node name, by weight (or BN scale) initializer name, and by the module name
        of a weight the exporter renamed (`val_28` is also `...q_proj.weight`)."""
        out: dict[str, list[Source]] = {}
        for s in self.plan.sources:
            out.setdefault(s.node, []).append(s)
            if s.weight and s.weight != s.node:
                out.setdefault(s.weight, []).append(s)
                shown = self.graph.display_name(s.weight)
                if shown not in (s.weight, s.node) and shown not in self.graph.nodes:
                    out.setdefault(shown, []).append(s)
        return out

    def source_channels(self, source: Source) -> list[tuple[int, int, int]]:
        """(output channel, group id, group channel) for every output channel of a source."""
        ids = self.plan.ids(source.tensor)
        return [(c, int(self.element_group[i, 0]), int(self.element_group[i, 1])) for c, i in enumerate(ids)]

    @property
    def pinned_reasons(self) -> dict[str, int]:
        """Pinned channels per reason."""
        out: dict[str, int] = {}
        for g in self.groups:
            if g.pinned:
                out[g.pinned] = out.get(g.pinned, 0) + g.size
        return out

    def summary(self) -> dict:
        """Counts of groups, channels, prunable and pinned channels, and source channels."""
        free = [g for g in self.groups if not g.pinned and g.sources]
        src_total = sum(self.plan.spaces[s.tensor].size for s in self.plan.sources if s.kind == "weight")
        src_free = sum(1 for s in self.plan.sources if s.kind == "weight"
                       for i in self.plan.ids(s.tensor).tolist()
                       if not self.groups[self.element_group[i, 0]].pinned)
        return {"groups": len(self.groups), "prunable_groups": len(free),
                "prunable_channels": sum(g.size for g in free),
                "pinned_channels": sum(g.size for g in self.groups if g.pinned),
                "source_channels": src_total, "prunable_source_channels": src_free,
                "pinned_by_reason": self.pinned_reasons,
                "ops_without_channel_rule": {k: len(v) for k, v in self.plan.no_rule.items()}}

    def to_dict(self) -> dict:
        """The JSON document of `morphonnx groups`."""
        return {"summary": self.summary(), "groups": [g.to_dict() for g in self.groups]}


def find_groups(graph: Graph, costs: CostModel | None = None) -> Groups:
    """Resolve the channel groups of a graph (union-find over the channel rules' ties)."""
    plan = channel_plan(graph)
    uf = plan.uf
    roots = np.fromiter((uf[i] for i in range(plan.count)), dtype=np.int64, count=plan.count)
    owner = np.empty(plan.count, dtype=np.int64)
    tensors = list(plan.base)  # one per alias class
    aliases: dict[str, list[str]] = {}
    for t, r in plan.rep.items():
        aliases.setdefault(r, []).append(t)
    for k, t in enumerate(tensors):
        owner[plan.base[t]: plan.base[t] + plan.spaces[t].size] = k
    # One component = one group channel; components touching the same tensors form one group.
    comps: dict[int, list[int]] = {}
    for i, r in enumerate(roots.tolist()):
        comps.setdefault(r, []).append(i)
    by_sig: dict[tuple[int, ...], list[list[int]]] = {}
    for elems in comps.values():
        sig = tuple(sorted({int(owner[e]) for e in elems}))
        by_sig.setdefault(sig, []).append(elems)
    element_group = np.zeros((plan.count, 2), dtype=np.int64)
    groups = []
    for sig, channel_elems in by_sig.items():
        channel_elems.sort(key=min)
        gid = len(groups)
        members: dict[str, list[list[int]]] = {tensors[k]: [] for k in sig}
        for k, elems in enumerate(channel_elems):
            per: dict[str, list[int]] = {}
            for e in sorted(elems):
                t = tensors[owner[e]]
                per.setdefault(t, []).append(e - plan.base[t])
                element_group[e] = (gid, k)
            for t, ch in per.items():
                members[t].append(ch)
        for rep in list(members):
            for t in aliases[rep]:
                members[t] = members[rep]
        reasons = [plan.pins[e] for elems in channel_elems for e in elems if e in plan.pins]
        groups.append(Group(gid, len(channel_elems), members, [], reasons[0] if reasons else None, channel_elems))
    for s in plan.sources:
        ids = plan.ids(s.tensor)
        for gid in sorted({int(element_group[i, 0]) for i in ids.tolist()}):
            g = groups[gid]
            g.sources.append((s, g.members[s.tensor]))
    _marginal_costs(graph, plan, groups, element_group, costs or cost_model(graph))
    groups.sort(key=lambda g: (g.pinned is not None, -g.macs_per_channel * g.size, g.id))
    remap = np.empty(len(groups), dtype=np.int64)
    for new, g in enumerate(groups):
        remap[g.id] = new
        g.id = new
    element_group[:, 0] = remap[element_group[:, 0]]
    return Groups(graph, plan, groups, element_group)


def _marginal_costs(graph: Graph, plan: ChannelPlan, groups: list[Group], element_group: np.ndarray,
                    costs: CostModel) -> None:
    """MACs and params that one channel of each group costs (d cost / d channel count).

    A source's MACs scale with its output channels and with the input channels it consumes;
    each sliced constant's elements scale with the channels that index it.
    """
    by_name = {c.name: c for c in costs.ops}
    macs: dict[int, float] = {}
    params: dict[int, float] = {}

    def add(table: dict[int, float], tensor: str, amount: float) -> None:
        ids = plan.ids(tensor)
        gids = element_group[ids, 0]
        for gid in set(gids.tolist()):
            n = int(np.sum(gids == gid)) / groups[gid].size  # channels of this tensor per group channel
            table[gid] = table.get(gid, 0.0) + amount * n

    for s in plan.sources:
        c = by_name.get(s.node)
        if c is not None and c.macs:
            add(macs, s.tensor, c.macs / plan.spaces[s.tensor].size)
    for node, _, tensor in plan.consumers:
        c = by_name.get(node)
        if c is not None and c.macs:
            add(macs, tensor, c.macs / plan.spaces[tensor].size)
    for node, slicings in plan.slicings.items():
        n = graph.nodes[node]
        for sl in slicings:
            name = n.input[sl.input] if sl.input < len(n.input) else ""
            if not name or name not in graph.stored or not graph.is_constant(name):
                continue
            info = graph.info(name)
            if info is None or info.shape is None or sl.axis >= len(info.shape):
                continue
            add(params, sl.tensor, math.prod(info.shape) / plan.spaces[sl.tensor].size)
    for g in groups:
        g.macs_per_channel = macs.get(g.id, 0.0)
        g.params_per_channel = params.get(g.id, 0.0)


def add_latency_per_channel(groups: Groups, profile, costs: CostModel | None = None) -> None:
    """Marginal roofline latency of one channel of each group on a profile.

    Each op's latency is taken as proportional to the channels of every group it touches
    (bilinear for a conv: in and out groups), so one channel of a group that is C wide in the
    op's tensors costs latency / C, counted once per op however many tied tensors it has.
    """
    graph, plan = groups.graph, groups.plan
    costs = costs or cost_model(graph)
    profile.prepare(costs)
    per: dict[int, float] = {}
    eg = groups.element_group
    for c in costs.ops:
        if not c.costed:
            continue
        t, bound = profile.latency(c)
        if bound == "none":
            continue
        node = graph.nodes[c.name]
        seen: set[int] = set()
        for tensor in list(node.output) + list(node.input):
            if tensor not in plan.spaces:
                continue
            size = plan.spaces[tensor].size
            for gid in set(eg[plan.ids(tensor), 0].tolist()) - seen:
                seen.add(gid)
                per[gid] = per.get(gid, 0.0) + t / size * (len(groups.groups[gid].members[tensor][0])
                                                             if groups.groups[gid].members[tensor] else 1)
    for g in groups.groups:
        g.latency_per_channel[profile.key] = per.get(g.id, 0.0)


def groups_table(groups: Groups, top: int | None = TOP) -> Table:
    """The groups as `find_groups` orders them (prunable first, then by the MACs of the whole
    group), with what one channel of each costs."""
    keys = list(groups.groups[0].latency_per_channel) if groups.groups else []
    shown = groups.groups if top is None else groups.groups[:top]
    cols = [Column("id", "int"), Column("size", "int"), Column("MACs/ch", "count", "macs_per_channel"),
            Column("params/ch", "count", "params_per_channel")]
    cols += [Column(f"{k}/ch", "seconds", f"latency_{k}_per_channel_s") for k in keys]
    cols += [Column("sources"), Column("pinned")]
    few = 3 if top is not None else None  # a printed table shows three sources, the full one all of them
    body = [[g.id, g.size, g.macs_per_channel, g.params_per_channel] + [g.latency_per_channel[k] for k in keys] +
            [", ".join(groups.graph.display_name(s.weight) if s.weight else s.node for s, _ in g.sources[:few]) +
             (" ..." if few and len(g.sources) > few else ""),
             g.pinned or ""] for g in shown]
    more = len(groups.groups) - len(shown)
    title = f"{'all' if not more else f'the first {len(shown)} of'} {len(groups.groups)} groups: prunable first, by MACs of the group"
    return Table("groups", title, cols, body, f"... {more} more groups (--top all)" if more else "")


def format_groups(groups: Groups, top: int | None = TOP) -> str:
    """A readable summary: counts, pins by reason, and the largest groups."""
    return groups_summary(groups) + "\n\n" + groups_table(groups, top).text()


def groups_summary(groups: Groups) -> str:
    """The lines above the table: counts, pins by reason, ops without a channel rule."""
    s = groups.summary()
    lines = [f"{s['groups']} groups: {s['prunable_groups']} prunable ({s['prunable_channels']} channels), "
             f"{s['pinned_channels']} channels pinned",
             f"source output channels: {s['source_channels']}, in prunable groups: {s['prunable_source_channels']} "
             f"({units.percent(s['prunable_source_channels'], max(1, s['source_channels']))})"]
    if s["pinned_by_reason"]:
        lines.append("pinned channels by reason:")
        lines += [f"  {n:6d}  {r}" for r, n in sorted(s["pinned_by_reason"].items(), key=lambda kv: -kv[1])]
    if s["ops_without_channel_rule"]:
        lines.append("ops without a channel rule (their channels are pinned): " +
                     ", ".join(f"{k} x{v}" for k, v in s["ops_without_channel_rule"].items()))
    return "\n".join(lines)
