"""The expand phase: one width multiplier for every free group, as large as the budget allows.

MorphNet alternates shrinking (penalty, then prune) with expanding: all widths of the shrunk
structure are multiplied by one factor w, the largest with cost(round(w · widths)) ≤ budget,
so that channels move from layers where they were wasted to layers where they help. Widths
are rounded per group (every member of a group gets the same width), optionally to a
multiple of N, and to a multiple of the group count of any grouped convolution the group
feeds; pinned groups and attention heads keep their widths (new channels are not yet placed
head by head); dead groups stay dead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import BadInput
from .groups import Groups
from .masks import Masks
from .penalty import PenaltyProgram


@dataclass
class Expansion:
    """The multiplier found, the widths per group, and the cost they reach."""

    multiplier: float
    widths: np.ndarray
    cost: float
    budget: float
    original_cost: float
    measured: bool = False  # `cost` is that of the grown model as `analyze` counts it (not the estimate)
    estimate: float = 0.0   # the penalty program's figure for these widths
    next_cost: float | None = None  # the measured cost of the nearest larger widths tried (over the budget)


def parse_budget(spec: str, original_cost: float) -> float:
    """'original' (match the original model), '80%' (of the original), or an absolute number."""
    text = str(spec).strip().lower()
    try:
        if text in ("original", "match", "match-original"):
            value = original_cost
        elif text.endswith("%"):
            value = float(text[:-1]) / 100 * original_cost
        else:
            value = float(text)
    except ValueError:
        raise BadInput(f"--budget {spec}: expected 'original', a percentage like 80%, or a number") from None
    if not value > 0 or not math.isfinite(value):
        raise BadInput(f"--budget {spec}: must be positive")
    return value


def group_steps(groups: Groups, multiple: int | np.ndarray = 1) -> np.ndarray:
    """Per group, the step its width must be a multiple of (grouped convs and attention heads need
    equal blocks); `multiple` an array of steps is taken as it is."""
    if isinstance(multiple, np.ndarray):
        return multiple
    step = np.full(len(groups.groups), max(1, multiple), dtype=np.int64)
    for tensor, n in groups.plan.block_constraints:
        for gid in set(groups.element_group[groups.plan.ids(tensor), 0].tolist()):
            step[gid] = math.lcm(int(step[gid]), int(n))
    for tensor, blocks in groups.plan.equal_blocks:  # attention heads keep equal head_dims
        gids = groups.element_group[groups.plan.ids(tensor, blocks.ravel()), 0].reshape(blocks.shape)
        for gid in set(gids.ravel().tolist()):
            step[gid] = math.lcm(int(step[gid]), int(np.any(gids == gid, axis=1).sum()))
    return step


def head_groups(groups: Groups) -> list[int]:
    """Groups with channels split into attention heads (their growth is not written yet)."""
    out: set[int] = set()
    for tensor, blocks in groups.plan.equal_blocks:
        out.update(groups.element_group[groups.plan.ids(tensor, blocks.ravel()), 0].tolist())
    return sorted(out)


def free_groups(groups: Groups) -> np.ndarray:
    """Groups whose width the multiplier scales: not pinned, not split into attention heads (new
    channels cannot be placed head by head yet)."""
    free = np.array([g.pinned is None for g in groups.groups], dtype=bool)
    free[head_groups(groups)] = False
    return free


def scaled(base: np.ndarray, free: np.ndarray, step: np.ndarray, w: float) -> np.ndarray:
    """round(w · base) per free group to its step (at least one step); other groups unchanged."""
    grown = np.maximum(step, np.round(w * base / step) * step)
    return np.where(free & (base > 0), grown, base).astype(np.int64)


def search(program: PenaltyProgram, groups: Groups, base: np.ndarray, budget: float,
           multiple: int | np.ndarray = 1, fmt: Callable[[float], str] = lambda v: f"{v:.4g}") -> Expansion:
    """The largest w with cost(scaled widths) ≤ budget; BadInput if even the smallest widths exceed it."""
    free = free_groups(groups)
    step = group_steps(groups, multiple)
    cost = lambda w: program.cost(scaled(base, free, step, w).astype(float))
    original = program.cost(program.full_alive())
    lo, hi = 0.0, 1.0
    if cost(lo) > budget:
        raise BadInput(f"the budget {fmt(budget)} is below the cost of the smallest widths ({fmt(cost(lo))})")
    while cost(hi) <= budget:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            break
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
    widths = scaled(base, free, step, lo)
    estimate = program.cost(widths.astype(float))
    return Expansion(lo, widths, estimate, budget, original, estimate=estimate)


def fit(program: PenaltyProgram, groups: Groups, base: np.ndarray, budget: float, multiple: int | np.ndarray,
        measure: Callable[[np.ndarray], float], rounds: int = 10,
        fmt: Callable[[float], str] = lambda v: f"{v:.4g}") -> Expansion:
    """The largest widths whose *measured* cost (`measure`: the grown model costed as `analyze`
    costs a file) stays within the budget.

    The program's estimate gives the first multiplier; where the grown model costs more or less
    than estimated (ops the program does not see, rounding), the next guess searches the program
    for a target corrected by the measured ratio, and once a multiplier under and one over the
    budget are known, bisects between them. Stops within 0.5% under the budget."""
    free, step = free_groups(groups), group_steps(groups, multiple)
    original = program.cost(program.full_alive())
    seen: dict[bytes, float] = {}
    under: Expansion | None = None
    over_w, over_cost = math.inf, None

    def trial(w: float) -> Expansion:
        widths = scaled(base, free, step, w)
        key = widths.tobytes()
        if key not in seen:
            seen[key] = measure(widths)
        return Expansion(w, widths, seen[key], budget, original, measured=True,
                         estimate=program.cost(widths.astype(float)))

    w = _multiplier(program, groups, base, budget, multiple)
    for _ in range(rounds):
        e = trial(w)
        if e.cost <= budget:
            if under is None or e.cost > under.cost or (e.cost == under.cost and w < under.multiplier):
                under = e
            if e.cost >= 0.995 * budget:
                break
        elif w < over_w:
            over_w, over_cost = w, e.cost
        lo = under.multiplier if under is not None else None
        # the program's target that the measured ratio says lands on the budget
        guess = _multiplier(program, groups, base, budget * e.estimate / e.cost, multiple) if e.cost else w * 2
        if lo is not None and over_w < math.inf:
            guess = guess if lo < guess < over_w else (lo + over_w) / 2
        elif lo is None and guess >= over_w:
            guess = over_w * 0.97
        if over_w - (lo or 0.0) < 1e-6 or guess == w:
            break
        w = guess
    if under is None:
        smallest = trial(0.0)
        if smallest.cost > budget:
            raise BadInput(f"the budget {fmt(budget)} is below the cost of the smallest widths "
                           f"({fmt(smallest.cost)}, measured on the grown model)")
        under = smallest
    under.next_cost = over_cost
    return under


def _multiplier(program: PenaltyProgram, groups: Groups, base: np.ndarray, target: float,
                multiple: int | np.ndarray) -> float:
    """The program's largest multiplier within `target` (0 when even the smallest widths exceed it)."""
    try:
        return search(program, groups, base, target, multiple).multiplier
    except BadInput:
        return 0.0


def alive_widths(groups: Groups, masks: Masks) -> np.ndarray:
    """Alive channels per group under the masks."""
    return np.array([int(masks.keep[g.id].sum()) for g in groups.groups], dtype=np.int64)


def source_widths(groups: Groups, widths: np.ndarray) -> dict[str, int]:
    """Output channels of every Conv/Gemm/MatMul source at these group widths."""
    out = {}
    for s in groups.plan.sources:
        if s.kind != "weight":
            continue
        ids = groups.plan.ids(s.tensor)
        gids, counts = np.unique(groups.element_group[ids, 0], return_counts=True)
        out[s.node] = int(sum(widths[g] * (c // groups.groups[g].size) for g, c in zip(gids, counts)))
    return out


def carry_widths(original: Groups, pruned: Groups, masks: Masks, widths: np.ndarray) -> np.ndarray:
    """Widths for the groups of the pruned model: each takes the width of its original group."""
    out = np.array([g.size for g in pruned.groups], dtype=np.int64)
    for pid, gid in original_groups(original, pruned, masks).items():
        out[pid] = int(widths[gid])
    return out


def original_groups(original: Groups, pruned: Groups, masks: Masks) -> dict[int, int]:
    """Pruned group → the original group of one of its channels (the rewrite keeps tensor names,
    and a tensor keeps its channels in order, so pruned channel j of a tensor is its j-th kept
    original channel)."""
    from .oracle import kept_by_tensor, removed_by_tensor
    kept = kept_by_tensor(original, removed_by_tensor(original, masks))
    out = {}
    for g in pruned.groups:
        tensor = next((t for t in g.members if t in original.plan.spaces), None)
        if tensor is None:
            continue
        j = int(g.channels_of(tensor, np.array([0]))[0])
        c = int(kept[tensor][j]) if tensor in kept else j
        out[g.id] = int(original.element_group[original.plan.ids(tensor, [c])[0], 0])
    return out


class _Owner:
    """Holds a grown model's data folder: the folder goes with it."""


class Grower:
    """Grown models of a pruned structure at widths of the original groups, and their cost as
    `analyze` counts it; `reason` says why this structure cannot be grown (then `cost` is None)."""

    def __init__(self, groups: Groups, result, resource: str, profile=None, workdir=None):
        from .graph import load
        from .groups import find_groups
        self.groups, self.result, self.resource, self.profile = groups, result, resource, profile
        self.workdir = workdir  # where grown models' data files go (beside the output: one move)
        self.stream = result.base_dir is not None  # the shrunk model streamed: so do the grown ones
        self.last: tuple | None = None
        self.costs: dict[bytes, float] = {}
        self.reason: str | None = None
        try:
            self.pruned = find_groups(load(result.model, base_dir=result.base_dir))
        except BadInput as e:
            self.reason = f"expand -o: the channel groups of the shrunk model cannot be read ({e})"
            return
        try:
            self.base_cost = self.cost(alive_widths(groups, result.masks))
        except BadInput as e:
            self.reason = str(e) if str(e).startswith("expand -o") else \
                f"expand -o: the structure grown at its own widths does not load ({e}); growing it is not written yet"

    def steps(self, multiple: int = 1) -> np.ndarray:
        """Per original group, the step its width must be a multiple of: its own, and that of
        the pruned model's group it becomes (a grouped conv that lost whole conv groups)."""
        step = group_steps(self.groups, multiple)
        pruned = group_steps(self.pruned, 1)
        for pid, gid in original_groups(self.groups, self.pruned, self.result.masks).items():
            step[gid] = math.lcm(int(step[gid]), int(pruned[pid]))
        return step

    def model(self, widths: np.ndarray):
        """The grown ONNX model at these widths (the last one is kept; a model with external
        data refers to a data file in `base_dir`, there while it is the last)."""
        from .grow import grow
        from .rewrite import weights_folder
        key = np.asarray(widths).tobytes()
        if self.last is None or self.last[0] != key:
            self.last = None  # its data folder goes first
            owner = _Owner()
            folder = weights_folder(self.pruned.graph, owner, self.workdir, self.stream)
            model = grow(self.pruned, carry_widths(self.groups, self.pruned, self.result.masks, widths), folder)
            self.last = (key, model, folder, owner)
        return self.last[1]

    @property
    def base_dir(self):
        """Where the last grown model's external data lies (None: in the model)."""
        return self.last[2] if self.last is not None else None

    def cost(self, widths: np.ndarray) -> float:
        """The resource of the grown model, from its own cost model (what `analyze` reports)."""
        from .costs import cost_model
        from .graph import load
        key = np.asarray(widths).tobytes()
        if key not in self.costs:
            model = self.model(widths)
            self.costs[key] = cost_model(load(model, base_dir=self.base_dir)).resource(self.resource, self.profile)
        return self.costs[key]


def expand_structure(graph, groups: Groups, masks: Masks, resource: str, budget_spec: str, profile=None,
                     multiple: int = 1, need_model: bool = False, workdir=None, stream: bool | None = None
                     ) -> tuple[Expansion, Grower, dict]:
    """MorphNet's expand step on a shrunk structure: the widths at the budget (`parse_budget` of
    the original's cost), measured on the grown model where it can be built (`fit`), else the
    program's estimate (`search`); with `need_model`, BadInput where it cannot be built.
    Returns the expansion, the grower (`.model(widths)`) and the JSON document of `expand`.
    `workdir`, `stream`: where and whether the weights of a model with external data are
    streamed (`rewrite.prune`)."""
    from .costs import cost_model
    from .penalty import compile_program
    from .rewrite import prune
    original = cost_model(graph).resource(resource, profile)
    budget = parse_budget(budget_spec, original)
    program = compile_program(groups, resource, profile)
    result = prune(groups, masks, workdir=workdir, stream=stream)  # dead layers and pinned groups as the rewrite sees them
    base = alive_widths(groups, result.masks)
    grower = Grower(groups, result, resource, profile, workdir)
    if grower.reason and need_model:
        raise BadInput(grower.reason)
    from .units import resource as fmt
    say = lambda v: fmt(v, resource)
    if grower.reason:
        e = search(program, groups, base, budget, multiple, fmt=say)
        shrunk = program.cost(base.astype(float))
    else:
        e = fit(program, groups, base, budget, grower.steps(multiple), grower.cost, fmt=say)
        shrunk = grower.cost(base)
    fixed = program.cost(np.where(free_groups(groups), 0, base).astype(float))  # what no width changes
    widths = source_widths(groups, e.widths)
    before = source_widths(groups, np.array([g.size for g in groups.groups]))
    shrunk_w = source_widths(groups, base)
    doc = {"resource": resource, "multiplier": e.multiplier, "budget": budget, "cost": e.cost,
           "cost_measured": e.measured, "estimate": e.estimate, "original_cost": original, "shrunk_cost": shrunk,
           "next_cost": e.next_cost, "fixed_cost_estimate": fixed, "widths": widths,
           "sources": [{"node": s.node, "weight": s.weight, "original": before[s.node], "shrunk": shrunk_w[s.node],
                        "expanded": widths[s.node]} for s in groups.plan.sources if s.kind == "weight"],
           "groups": [{"id": g.id, "original": g.size, "shrunk": int(base[g.id]), "expanded": int(e.widths[g.id]),
                       "pinned": g.pinned} for g in groups.groups]}
    return e, grower, doc
