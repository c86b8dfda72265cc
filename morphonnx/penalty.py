"""Penalty program: the cost model compiled to flat arrays, so that any framework evaluates
MorphNet's cost-weighted regularizer on its own gamma tensors with a few vectorized ops.

For every op k, with I = alive channels of its consumed input and O = alive channels of its
output (sums over the groups in those tensors, weighted by how many channels each group has
there), a resource is `a·I·O + b·I + c·O + d`: bilinear for a convolution, linear for an
elementwise op. MorphNet's regularizer replaces one alive count by the group's gamma sum:
`a·(I·R_O + O·R_I) + b·R_I + c·R_O` (GammaFlops, GammaModelSize). For latency on a profile,
compute seconds and memory seconds are two such forms and the op follows whichever binds at
the current alive counts (GammaLatency).

Gammas live in *slots*, one per group channel; a slot's gamma is the max over its sources
(MorphNet's MaxGroupingRegularizer) and it is alive when above the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .costs import CostModel, cost_model, parameters
from .groups import Groups
from .profiles import Profile, kernel_parts, work_amounts

RESOURCES = ("flops", "macs", "size", "latency")


@dataclass
class Form:
    """Per op coefficients of `a·I·O + b·I + c·O + d`."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    d: np.ndarray

    def value(self, i: np.ndarray, o: np.ndarray) -> np.ndarray:
        """Per op value at alive counts I, O."""
        return self.a * i * o + self.b * i + self.c * o + self.d

    def reg(self, i, o, ri, ro):
        """Per op MorphNet regularizer (works on numpy arrays and framework tensors alike)."""
        return self.a * (i * ro + o * ri) + self.b * ri + self.c * ro


@dataclass
class PenaltyProgram:
    """Flat arrays of one resource over one graph's groups."""

    resource: str
    group_size: np.ndarray        # [G] channels per group
    learnable: np.ndarray         # [G] bool: has gamma slots and is not pinned
    slot_group: np.ndarray        # [S] group of each slot (a group channel with a gamma)
    sources: dict[str, np.ndarray]  # gamma name → slot of each of its channels (-1: none)
    in_op: np.ndarray             # triplets (op, group, count): I_k = Σ count · alive[group]
    in_group: np.ndarray
    in_count: np.ndarray
    out_op: np.ndarray
    out_group: np.ndarray
    out_count: np.ndarray
    forms: list[Form]             # one (flops, size) or two (compute s, memory s) for latency
    overhead: float = 0.0         # constant seconds (latency)
    op_names: list[str] = field(default_factory=list)

    @property
    def n_ops(self) -> int:
        """Number of costed ops."""
        return len(self.op_names)

    def io(self, per_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(I, O) per op for a per-group vector (alive counts or gamma sums)."""
        i = np.zeros(self.n_ops)
        o = np.zeros(self.n_ops)
        np.add.at(i, self.in_op, self.in_count * per_group[self.in_group])
        np.add.at(o, self.out_op, self.out_count * per_group[self.out_group])
        return i, o

    def alive_and_reg(self, gamma_slots: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Per group alive counts and gamma sums from per-slot gammas (|gamma|, max over sources)."""
        alive = np.where(self.learnable, 0.0, self.group_size).astype(float)
        reg = np.zeros(len(self.group_size))
        np.add.at(alive, self.slot_group, (gamma_slots > threshold).astype(float))
        np.add.at(reg, self.slot_group, gamma_slots)
        return alive, reg

    def cost(self, alive: np.ndarray) -> float:
        """The resource at these alive counts per group (flops, params or seconds)."""
        i, o = self.io(alive)
        if self.resource != "latency":
            return float(self.forms[0].value(i, o).sum())
        if len(self.forms) == 1:  # a kernel model: overhead + MACs and bytes terms, summed
            return float(self.forms[0].value(i, o).sum() + self.overhead)
        return float(np.maximum(self.forms[0].value(i, o), self.forms[1].value(i, o)).sum() + self.overhead)

    def penalty(self, alive: np.ndarray, reg: np.ndarray) -> float:
        """MorphNet's regularizer at these alive counts and gamma sums (numpy)."""
        i, o = self.io(alive)
        ri, ro = self.io(reg)
        if self.resource != "latency" or len(self.forms) == 1:
            return float(self.forms[0].reg(i, o, ri, ro).sum())
        binds = self.forms[0].value(i, o) >= self.forms[1].value(i, o)
        return float(np.where(binds, self.forms[0].reg(i, o, ri, ro), self.forms[1].reg(i, o, ri, ro)).sum())

    def full_alive(self) -> np.ndarray:
        """Every channel alive."""
        return self.group_size.astype(float)


def _sides(groups: Groups, node_name: str) -> tuple[str | None, str | None]:
    """(consumed input tensor, output tensor) of an op, among tensors with channels."""
    plan, graph = groups.plan, groups.graph
    node = graph.nodes[node_name]
    out = node.output[0] if node.output and node.output[0] in plan.spaces else None
    consumed = _consumed(groups).get(node_name)
    if out is None and consumed is None:
        consumed = next((t for t in node.input if t in plan.spaces), None)
    return consumed, out


def _consumed(groups: Groups) -> dict[str, str]:
    cached = getattr(groups, "_consumed", None)
    if cached is None:
        cached = groups._consumed = {n: t for n, _, t in groups.plan.consumers}
    return cached


def _triplets(groups: Groups, tensor: str | None) -> list[tuple[int, int]]:
    """(group, tensor channels per channel of that group) for the groups in a tensor."""
    if tensor is None:
        return []
    ids = groups.plan.ids(tensor)
    gids, counts = np.unique(groups.element_group[ids, 0], return_counts=True)
    return [(int(g), int(c) // groups.groups[g].size) for g, c in zip(gids, counts)]


def _split(value: float, consumed: str | None, out: str | None, groups: Groups, kind: str) -> tuple:
    """Coefficients (a, b, c, d) of a value that scales with both sides ("io"), one ("i"/"o"), or none."""
    size = lambda t: groups.plan.spaces[t].size if t else 1
    if kind == "io" and consumed and out:
        return value / (size(consumed) * size(out)), 0.0, 0.0, 0.0
    if kind in ("io", "o") and out:
        return 0.0, 0.0, value / size(out), 0.0
    if kind in ("io", "i") and consumed:
        return 0.0, value / size(consumed), 0.0, 0.0
    return 0.0, 0.0, 0.0, value


def _weight_terms(groups: Groups, cost, consumed, out, seen: set[str]) -> tuple[list[tuple], list[tuple]]:
    """Per weight of an op: (params, bytes) coefficient tuples, by which sides index the weight;
    a parameter in `seen` (read by an earlier op) is not counted again, as in CostModel.params."""
    graph, plan = groups.graph, groups.plan
    node = graph.nodes[cost.name]
    sliced: dict[int, set[str]] = {}
    for sl in plan.slicings.get(cost.name, []):
        rep = plan.rep.get(sl.tensor)
        side = "o" if out and rep == plan.rep.get(out) else "i" if consumed and rep == plan.rep.get(consumed) else "o"
        sliced.setdefault(sl.input, set()).add(side)
    params, nbytes = [], []
    for i, t in enumerate(node.input):
        if not t or i not in cost.weight_inputs:
            continue
        info = graph.info(t)
        n = int(np.prod(info.shape)) if info and info.shape is not None else 0
        sides = sliced.get(i, set())
        kind = "io" if sides == {"i", "o"} else "i" if sides == {"i"} else "o" if sides == {"o"} else ""
        itemsize = info.dtype.itemsize if info is not None and info.dtype is not None else 4
        nbytes.append(_split(n * itemsize, consumed, out, groups, kind))
        counted = [w for w in parameters(graph, t) if w in cost.weights and w not in seen]
        seen.update(counted)
        if counted:  # a folded weight counts the parameters it is computed from
            size = sum(int(np.prod(graph.info(w).shape)) for w in counted)
            params.append(_split(size, consumed, out, groups, kind))
    return params, nbytes


def compile_program(groups: Groups, resource: str = "flops", profile: Profile | None = None,
                    costs: CostModel | None = None, gamma_of: dict[str, str] | None = None,
                    bn: bool | None = None) -> PenaltyProgram:
    """Compile the cost model of a graph into a penalty program for one resource.

    Gammas are the model's BatchNormalization scales (`bn`, the default without `gamma_of`);
    `gamma_of` maps weight sources (node names) to gamma names, for exports that folded BN
    away (tf2onnx) and for groups without a BN, whose gamma is a norm of the weights (torch).
    """
    bn = gamma_of is None if bn is None else bn
    if resource not in RESOURCES:
        raise ValueError(f"resource must be one of {', '.join(RESOURCES)}, got {resource!r}")
    if resource == "latency" and profile is None:
        raise ValueError("the latency resource needs a profile")
    plan = groups.plan
    costs = costs or cost_model(groups.graph)
    ops = [c for c in costs.ops if c.costed]
    # slots: one per group channel of every group with a BN source and no pin
    def gamma_name(s) -> str | None:
        if s.kind == "bn":
            return s.weight if bn else None
        return gamma_of.get(s.node) if gamma_of else None

    learnable = np.array([g.pinned is None and any(gamma_name(s) for s, _ in g.sources) for g in groups.groups])
    slot_base = np.full(len(groups.groups), -1)
    slot_group = []
    for g in groups.groups:
        if learnable[g.id]:
            slot_base[g.id] = len(slot_group)
            slot_group += [g.id] * g.size
    sources = {}
    for s in plan.sources:
        name = gamma_name(s)
        if not name:
            continue
        slots = np.full(plan.spaces[s.tensor].size, -1)
        for c, gid, k in groups.source_channels(s):
            if learnable[gid]:
                slots[c] = slot_base[gid] + k
        sources[name] = slots
    trip = {"i": ([], [], []), "o": ([], [], [])}
    coeffs: dict[str, list[list[float]]] = {}
    names, seen = [], set()
    for k, c in enumerate(ops):
        consumed, out = _sides(groups, c.name)
        for side, tensor in (("i", consumed), ("o", out)):
            for g, n in _triplets(groups, tensor):
                trip[side][0].append(k)
                trip[side][1].append(g)
                trip[side][2].append(n)
        params, nbytes = _weight_terms(groups, c, consumed, out, seen)
        flops = _split(c.flops, consumed, out, groups, "io" if c.macs else "o" if out else "i")
        # a read of what has no channels here (the graph input of a first conv) is a constant
        read = _split(c.read_bytes, consumed, out, groups, "i" if consumed else "o" if not c.macs else "")
        write = _split(c.write_bytes, consumed, out, groups, "o")
        act = np.add(read, write)
        coeffs.setdefault("read", []).append(list(read))
        coeffs.setdefault("write", []).append(list(write))
        coeffs.setdefault("weight_bytes", []).append(list(np.sum(nbytes, axis=0)) if nbytes else [0.0] * 4)
        coeffs.setdefault("flops", []).append(list(flops))
        coeffs.setdefault("macs", []).append(list(_split(c.macs, consumed, out, groups, "io")))
        coeffs.setdefault("size", []).append(list(np.sum(params, axis=0)) if params else [0.0] * 4)
        coeffs.setdefault("bytes", []).append(list(act + (np.sum(nbytes, axis=0) if nbytes else 0.0)))
        names.append(c.name)

    def form(table: list[list[float]], scale: np.ndarray | float = 1.0) -> Form:
        arr = np.asarray(table, dtype=float).reshape(-1, 4) * (np.asarray(scale)[:, None] if np.ndim(scale) else scale)
        return Form(*(arr[:, j].copy() for j in range(4)))

    if resource == "latency" and profile.kernels:
        # a kernel model: per op, its kernels' seconds per MAC and per byte read, written and of
        # weights (Profile.kernel_latency at the model's own widths), summed; overheads fixed
        profile.prepare(costs)
        scale = np.zeros((len(ops), 4))  # per MAC, read byte, written byte, weight byte
        overhead = profile.run_overhead_us * 1e-6
        for k, c in enumerate(ops):
            for cls, *factors in kernel_parts(c, profile.block):
                o, per = profile.kernel_terms(cls)
                f = np.array(factors) * per
                scale[k] += f[:4]
                # the cost per group of a grouped conv: a depthwise conv has a group per output
                # channel (charged with what it writes), the others a fixed number
                group_s = f[4] * work_amounts(c)[4]
                if c.kind == "depthwise" and c.write_bytes:
                    scale[k][2] += group_s / c.write_bytes
                else:
                    overhead += group_s
                overhead += o
        table = sum(np.asarray(coeffs[key], dtype=float) * scale[:, j:j + 1]
                    for j, key in enumerate(("macs", "read", "write", "weight_bytes")))
        forms = [form(table.tolist())]
    elif resource == "latency":
        profile.prepare(costs)
        eff = np.array([profile.efficiency_of(c) if profile.efficiency else 1.0 for c in ops])
        peak = np.array([profile.peak(c.dtype)[0] for c in ops])
        bounds = [profile.latency(c)[1] for c in ops]
        live = np.array([0.0 if b == "fused" else 1.0 for b in bounds])
        forms = [form(coeffs["flops"], live / (peak * eff)),
                 form(coeffs["bytes"], live / (profile.bandwidth_gbs * 1e9 * eff))]
        overhead = profile.op_overhead_us * 1e-6 * sum(1 for b in bounds if b not in ("none", "fused")) \
            + profile.run_overhead_us * 1e-6
    else:
        forms, overhead = [form(coeffs[resource])], 0.0
    arr = lambda side, j: np.asarray(trip[side][j], dtype=np.int64 if j < 2 else float)
    return PenaltyProgram(resource, np.array([g.size for g in groups.groups]), learnable,
                          np.asarray(slot_group, dtype=np.int64), sources,
                          arr("i", 0), arr("i", 1), arr("i", 2), arr("o", 0), arr("o", 1), arr("o", 2),
                          forms, overhead, names)


def slot_gammas(program: PenaltyProgram, gammas: dict[str, np.ndarray]) -> np.ndarray:
    """Per slot gamma: the max |gamma| over the BN scales that feed it."""
    out = np.zeros(len(program.slot_group))
    for name, slots in program.sources.items():
        ok = slots >= 0
        np.maximum.at(out, slots[ok], np.abs(np.asarray(gammas[name], dtype=float))[ok])
    return out


class GammaRegularizer:
    """What the framework adapters share: everything computed from the current per-slot gammas.

    A subclass sets `program`, `groups` and `threshold`, implements `slot_gammas()`, and sets
    `names`: per weight source (ONNX node name), the name its framework gives the layer that
    owns the weight (a torch module, a Keras layer). `structure()` and `alive_masks()` are keyed
    by those names; `onnx_masks()` (what `morphonnx prune --masks` reads) and `onnx_names()`
    give the ONNX side.
    """

    program: PenaltyProgram
    groups: Groups
    threshold: float
    names: dict[str, str] = {}

    def slot_gammas(self) -> np.ndarray:
        """Current per-slot gammas (max |gamma| over each slot's sources)."""
        raise NotImplementedError

    def cost(self) -> float:
        """The resource of the structure alive now (FLOPs, MACs, params or seconds), per sample."""
        alive, _ = self.program.alive_and_reg(self.slot_gammas(), self.threshold)
        return self.program.cost(alive)

    def _weight_sources(self) -> list:
        return [s for s in self.groups.plan.sources if s.kind == "weight"]

    def layer_name(self, source) -> str:
        """The framework's name of a weight source (its ONNX weight or node name when unmapped)."""
        return self.names.get(source.node) or source.weight or source.node

    def onnx_names(self) -> dict[str, tuple[str, str | None]]:
        """Per framework layer name (the keys of `structure()`): (ONNX node, ONNX weight)."""
        out: dict[str, tuple[str, str | None]] = {}
        for s in self._weight_sources():
            out.setdefault(self.layer_name(s), (s.node, s.weight))
        return out

    def _masks(self, key) -> dict[str, list[int]]:
        slots, p = self.slot_gammas(), self.program
        first = {int(g): int(np.argmax(p.slot_group == g)) for g in np.unique(p.slot_group)}
        out: dict[str, list[int]] = {}
        for s in self._weight_sources():
            out.setdefault(key(s), [1 if not p.learnable[gid] else int(slots[first[gid] + k] > self.threshold)
                                    for _, gid, k in self.groups.source_channels(s)])
        return out

    def alive_masks(self) -> dict[str, list[int]]:
        """Per layer (torch module / Keras layer name): 1 for each output channel that stays alive."""
        return self._masks(self.layer_name)

    def onnx_masks(self) -> dict[str, list[int]]:
        """The same masks keyed by the export's ONNX weight names (what `morphonnx prune --masks` reads)."""
        return self._masks(lambda s: s.weight or s.node)

    def structure(self) -> dict[str, int]:
        """Alive output channels per layer (MorphNet's structure format), keyed as `alive_masks()`."""
        return {k: int(sum(v)) for k, v in self.alive_masks().items()}
