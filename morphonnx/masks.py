"""Masks: which channels of each group stay alive.

Masks come per source (node name, or weight / BN-scale initializer name) as 0/1 per output
channel, from a JSON file `{"masks": {SOURCE: [1, 0, ...]}}` or from BN scales and a threshold
(MorphNet: alive if |gamma| > T). A group keeps a channel if any of its sources keeps it;
disagreements are reported, masks on pinned groups are ignored with a warning. `legalize`
then makes grouped convolutions keep equal-sized conv groups (reviving channels, or removing
whole conv groups) and records every channel it changed, per layer and cause; `masks_document`
writes the masks as applied back as a masks file.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import BadInput
from .groups import Groups


@dataclass
class Masks:
    """Alive flags per group (`keep[group id]`), with what happened on the way."""

    keep: dict[int, np.ndarray]
    warnings: list[str] = field(default_factory=list)
    disagreements: dict[int, int] = field(default_factory=dict)  # group id → channels sources disagree on
    scores: dict[int, np.ndarray] = field(default_factory=dict)  # group id → importance (max |gamma|)
    # source node → per output channel, the value a removed channel outputs (default 0): a BN
    # shift carried over from a BN-kept export to the BN-folded one (see `morphonnx structure`).
    silenced: dict[str, np.ndarray] = field(default_factory=dict)
    changes: list["MaskChange"] = field(default_factory=list)  # what `legalize` changed, per layer and cause
    dead_conv_groups: dict[str, list[int]] = field(default_factory=dict)  # grouped Conv → conv groups removed whole
    ignored: dict[str, str] = field(default_factory=dict)  # source → pin reason of the groups its mask was ignored on

    def removed(self, gid: int) -> np.ndarray:
        """Group channels that die."""
        return np.flatnonzero(~self.keep[gid])

    @property
    def revived(self) -> list["MaskChange"]:
        """Per layer and cause, channels `legalize` kept although the masks remove them."""
        return [c for c in self.changes if c.action == "revived"]

    def copy(self) -> "Masks":
        """An independent copy."""
        return Masks({k: v.copy() for k, v in self.keep.items()}, list(self.warnings), dict(self.disagreements),
                     dict(self.scores), dict(self.silenced), list(self.changes),
                     {k: list(v) for k, v in self.dead_conv_groups.items()}, dict(self.ignored))


def all_alive(groups: Groups) -> Masks:
    """Every channel of every group alive."""
    return Masks({g.id: np.ones(g.size, dtype=bool) for g in groups.groups})


def random_masks(groups: Groups, seed: int, share: float | tuple[float, float] = (0.1, 0.9)) -> Masks:
    """Random masks (not legalized): every unpinned group keeps each channel with probability
    `share` (or one drawn per group from the range), and at least one channel; the heads of an
    attention keep the same head_dim channels, and about a third of the heads that can go whole
    go. For trying a rewrite, benchmarks and tests."""
    rng = np.random.default_rng(seed)
    masks = all_alive(groups)
    for g in groups.groups:
        if not g.pinned:
            draws = rng.random(g.size)
            keep = draws < (rng.uniform(*share) if isinstance(share, tuple) else share)
            keep[rng.integers(g.size)] = True
            masks.keep[g.id] = keep
    for tensor, blocks in groups.plan.equal_blocks:  # every head as the first: legal, and it cuts
        eg = groups.element_group[groups.plan.ids(tensor, blocks.ravel())].reshape(*blocks.shape, 2)
        first = np.array([masks.keep[gid][k] for gid, k in eg[0].tolist()])
        for row in eg[1:]:
            for (gid, k), alive in zip(row.tolist(), first.tolist()):
                masks.keep[gid][k] = alive
    plan = groups.plan
    for q, qr, k, kr, v, vr in plan.head_units:  # and some whole heads go (one stays)
        n = len(qr)
        dead = rng.random(n) < 0.3
        dead[rng.integers(n)] = False
        for t, rows in ((q, qr), (k, kr), (v, vr)):
            for gid, ch in groups.element_group[plan.ids(t, rows[dead].ravel())].tolist():
                if not groups.groups[gid].pinned:
                    masks.keep[gid][ch] = False
    return masks


def read_masks_doc(path: str | os.PathLike) -> tuple[dict[str, list], dict[str, list]]:
    """The `masks` and the optional `silenced` mappings of a masks JSON file, read once;
    BadInput if the file is unreadable, not JSON, or not shaped like one."""
    where = f"masks file {path}"
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
        doc = json.loads(text, parse_constant=_no_constant)
    except FileNotFoundError:
        raise BadInput(f"{where}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{where}: is a directory") from None
    except UnicodeDecodeError:
        raise BadInput(f"{where}: not UTF-8 text (a binary file?)") from None
    except (OSError, ValueError) as e:
        raise BadInput(f"{where}: not valid JSON ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise BadInput(f"{where}: nested too deeply to be a masks file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("masks"), dict):
        raise BadInput(f"{where}: expected an object {{\"masks\": {{SOURCE: [1, 0, ...]}}}}")
    silenced = doc.get("silenced", {})
    if not isinstance(silenced, dict):
        raise BadInput(f"{where}: 'silenced' must map sources to lists of numbers")
    return doc["masks"], silenced


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a masks file may hold")


def read_masks_file(path: str | os.PathLike) -> dict[str, list]:
    """The `masks` mapping of a masks JSON file (see `read_masks_doc`)."""
    return read_masks_doc(path)[0]


def apply_silenced(groups: Groups, masks: Masks, silenced: dict[str, list], where: str = "masks") -> None:
    """Record the values removed channels output, per source (weight sources only)."""
    lookup = groups.by_source_name()
    for name, values in silenced.items():
        sources = [s for s in lookup.get(name, []) if s.kind == "weight"]
        if not sources:
            raise BadInput(f"{where}: silenced '{name}' is not a Conv/Gemm/MatMul source")
        for s in sources:
            size = groups.plan.spaces[s.tensor].size
            if not isinstance(values, list) or len(values) != size or \
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                            and abs(v) < 3e38 for v in values):
                raise BadInput(f"{where}: silenced '{name}' must be {size} finite numbers, one per output channel")
            masks.silenced[s.node] = np.asarray(values, dtype=np.float32)


def masks_from_sources(groups: Groups, masks: dict[str, list], where: str = "masks") -> Masks:
    """Combine per-source 0/1 masks into per-group alive flags; BadInput naming a bad entry."""
    if not isinstance(masks, dict):
        raise BadInput(f"{where}: expected a mapping {{SOURCE: [1, 0, ...]}}, got {type(masks).__name__}")
    lookup = groups.by_source_name()
    votes: dict[int, list[np.ndarray]] = {}
    result = all_alive(groups)
    for name, values in masks.items():
        sources = lookup.get(name)
        if not sources:
            raise BadInput(f"{where}: '{name}' is not a source (a Conv/Gemm/MatMul node, its weight, "
                           f"or a BatchNormalization node or scale)")
        if not isinstance(values, list) or not all(type(v) in (int, float) and v in (0, 1) for v in values):
            raise BadInput(f"{where}: '{name}' must be a list of 0/1 values (not true/false)")
        for s in sources:
            size = groups.plan.spaces[s.tensor].size
            if len(values) != size:
                raise BadInput(f"{where}: '{name}' has {len(values)} values, but {s.node} has {size} output channels")
            _vote(groups, s, np.asarray(values, dtype=bool), votes, result)
    _decide(groups, votes, result)
    return result


def masks_from_threshold(groups: Groups, threshold: float) -> Masks:
    """Alive where |BN scale| > threshold (MorphNet); groups without BN scales stay whole."""
    if not threshold >= 0:
        raise BadInput(f"--threshold {threshold}: must be a non-negative number")
    votes: dict[int, list[np.ndarray]] = {}
    result = all_alive(groups)
    for s in groups.plan.sources:
        if s.kind == "bn" and s.weight:
            gamma = np.abs(groups.graph.array(s.weight))
            _vote(groups, s, gamma > threshold, votes, result)
            for c, gid, k in groups.source_channels(s):
                score = result.scores.setdefault(gid, np.zeros(groups.groups[gid].size))
                score[k] = max(score[k], gamma[c])
    if not any(s.kind == "bn" and s.weight for s in groups.plan.sources):
        result.warnings.append("--threshold: the model has no BatchNormalization scales (exporters such as "
                               "tf2onnx and torch's optimized dynamo export fold them into the convolutions): "
                               "nothing is removed; give --masks from training (morphonnx.torch / morphonnx.tf)")
    _decide(groups, votes, result)
    return result


def _vote(groups: Groups, source, alive: np.ndarray, votes: dict, result: Masks) -> None:
    per_group: dict[int, np.ndarray] = {}
    every: dict[int, np.ndarray] = {}
    for c, gid, k in groups.source_channels(source):
        g = groups.groups[gid]
        vote = per_group.setdefault(gid, np.zeros(g.size, dtype=bool))
        vote[k] |= bool(alive[c])
        every.setdefault(gid, np.ones(g.size, dtype=bool))[k] &= bool(alive[c])
    split = sum(int(np.sum(per_group[gid] & ~every[gid])) for gid in per_group if not groups.groups[gid].pinned)
    if split:  # one source writes a group channel several times (a fused gate/up projection)
        name = groups.graph.display_name(source.weight) if source.weight else source.node
        result.warnings.append(f"{name}: {split} channels it writes more than once (tied, "
                               f"e.g. the gate and up halves of a fused projection) have masks that disagree; "
                               f"kept where any copy is kept")
    for gid, vote in per_group.items():
        g = groups.groups[gid]
        if g.pinned:
            if not vote.all():
                result.ignored.setdefault(source.node, g.pinned)
            continue
        votes.setdefault(gid, []).append(vote)


def _decide(groups: Groups, votes: dict[int, list[np.ndarray]], result: Masks) -> None:
    by_reason: dict[str, list[str]] = {}
    for node, reason in result.ignored.items():
        by_reason.setdefault(reason, []).append(node)
    for reason, nodes in by_reason.items():
        result.warnings.append(f"masks ignored on groups pinned ({reason}): {len(nodes)} sources "
                               f"({', '.join(nodes[:5])}{' ...' if len(nodes) > 5 else ''})")
    for gid, vs in votes.items():
        stack = np.stack(vs)
        keep = stack.any(axis=0)
        disagree = int(np.sum(stack.any(axis=0) != stack.all(axis=0)))
        if disagree:
            result.disagreements[gid] = disagree
        result.keep[gid] = keep
    if result.disagreements:
        result.warnings.append(f"sources of {len(result.disagreements)} groups disagree on "
                               f"{sum(result.disagreements.values())} channels; kept where any source keeps them "
                               f"(groups {', '.join(map(str, sorted(result.disagreements)[:10]))}"
                               f"{' ...' if len(result.disagreements) > 10 else ''})")


CONV_GROUPS = ("equal", "whole")


@dataclass(frozen=True)
class MaskChange:
    """Channels of one layer that `legalize` changed against the masks, and why.

    `action` is "revived" (kept although the masks remove them) or "removed" (removed although
    the masks keep them: whole conv groups); `reason` is "equal conv groups", "whole conv groups"
    or "--round N"; `conv` the grouped Conv behind it (None for --round). `count` counts output
    channels of the layer (`node`, weight initializer `weight`), `group_channels` channels of
    the group (the same for every layer of one group and cause).
    """

    node: str | None
    weight: str | None
    group: int
    count: int
    group_channels: int
    action: str
    reason: str
    conv: str | None = None

    def to_dict(self) -> dict:
        """The JSON form."""
        return {"node": self.node, "weight": self.weight, "group": self.group, "channels": self.count,
                "group_channels": self.group_channels, "action": self.action, "reason": self.reason,
                "conv": self.conv}


def legalize(groups: Groups, masks: Masks, multiple: int = 1, conv_groups: str = "equal") -> Masks:
    """Masks every grouped convolution can run with: each conv group keeps as many input channels
    and as many output channels as the others, and, with `multiple` > 1, every group keeps a
    multiple of that many channels (or all of them).

    A conv group whose input and output blocks are both removed is removed whole (the rewrite
    lowers the conv's `group`); the other conv groups are made equal by reviving channels. With
    `conv_groups` "whole", mostly dead conv groups are removed whole too: the surviving groups are
    the ones that minimize the channels changed against the masks (a group survives when it keeps
    more than about half of what the fullest one keeps), and the channels the masks keep in the
    others are removed. Input block j and output block j live or die together, also where ties
    carry them to other convs' blocks (a conflicting conv group stays alive).

    Runtimes pick their fast kernels for channel counts that are multiples of their SIMD width
    (onnxruntime on AVX-512: 16); revived channels are the most important dead ones (highest
    |gamma| when the masks come from BN scales, else the lowest indices), outside of removed
    conv groups where possible. Every change is recorded in `changes` (per layer, with its
    cause), summed up in one warning per cause; `dead_conv_groups` lists the removed conv groups.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise BadInput(f"--round {multiple}: must be a positive integer")
    if conv_groups not in CONV_GROUPS:
        raise BadInput(f"--conv-groups {conv_groups}: expected one of {', '.join(CONV_GROUPS)}")
    masks = masks.copy()
    state = _Flat(groups, masks)
    plan = groups.plan
    convs = {node: tuple(state.of_element[b] for b in plan.conv_blocks(node)) for node in plan.grouped_convs}
    heads = [(t, state.of_element[plan.ids(t, ch.ravel())].reshape(ch.shape)) for t, ch in plan.equal_blocks]
    flat = lambda t, rows: state.of_element[plan.ids(t, rows.ravel())].reshape(rows.shape)
    units = [np.concatenate([flat(q, qr), flat(k, kr), flat(v, vr)], axis=1)
             for q, qr, k, kr, v, vr in plan.head_units]  # [heads, channels of q, k and v]
    dead = {node: _dead_conv_groups(state, ins, outs, conv_groups, multiple)
            for node, (ins, outs) in convs.items()}
    for node, (ins, outs) in convs.items():
        for j in dead[node]:
            state.set(np.concatenate([ins[j], outs[j]]), False, ("whole conv groups", node))
    changed = True
    while changed:
        protected = np.zeros(len(state.alive), dtype=bool)
        for node, (ins, outs) in convs.items():
            for j in dead[node]:
                protected[ins[j]] = protected[outs[j]] = True
        changed = _round_up(groups, state, multiple, protected)
        for node, blocks in convs.items():
            live = [j for j in range(len(blocks[0])) if j not in dead[node]]
            for side in blocks:
                changed |= _equalize(state, side[live], ("equal conv groups", node))
        gone = _dead_heads(state, units)
        for tensor, blocks in heads:
            live = blocks[~np.isin(blocks, gone).all(axis=1)]
            changed |= _equalize(state, live, ("equal attention heads", tensor), minimum=1)
        for node, (ins, outs) in convs.items():
            for j in sorted(dead[node]):
                if state.alive[ins[j]].any() or state.alive[outs[j]].any():  # revived through a tie
                    dead[node].discard(j)
                    changed = True
    state.store(masks)
    masks.dead_conv_groups = {node: sorted(d) for node, d in dead.items() if d}
    masks.changes += _changes(groups, state)  # a second legalize adds its own
    masks.warnings += _change_warnings(masks.changes, masks.dead_conv_groups, conv_groups)
    return masks


class _Flat:
    """Alive flags of every group channel in one flat array (group g at offset[g]), with what
    each changed channel was changed for."""

    def __init__(self, groups: Groups, masks: Masks):
        sizes = [g.size for g in groups.groups]
        self.offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        cat = lambda arrays, dtype: np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
        self.alive = cat([np.asarray(masks.keep[g.id], dtype=bool) for g in groups.groups], bool)
        self.original = self.alive.copy()
        self.pinned = cat([np.full(g.size, g.pinned is not None) for g in groups.groups], bool)
        self.score = cat([masks.scores.get(g.id, np.zeros(g.size)) for g in groups.groups], float)
        eg = groups.element_group
        self.of_element = self.offset[eg[:, 0]] + eg[:, 1] if len(eg) else np.zeros(0, np.int64)
        self.cause: dict[int, tuple[str, str | None]] = {}

    def set(self, flat: np.ndarray, value: bool, cause: tuple[str, str | None]) -> bool:
        """Set these channels alive (or dead); True if any changed."""
        flat = np.unique(flat[self.alive[flat] != value])
        for i in flat.tolist():
            self.cause[i] = cause
        self.alive[flat] = value
        return bool(len(flat))

    def order(self, flat: np.ndarray, protected: np.ndarray | None = None) -> np.ndarray:
        """Dead channels among `flat`, the ones to revive first first."""
        dead = np.unique(flat[~self.alive[flat]])
        keys = [dead, -self.score[dead]] + ([protected[dead]] if protected is not None else [])
        return dead[np.lexsort(keys)]  # the last key sorts first

    def store(self, masks: Masks) -> None:
        for gid in masks.keep:
            masks.keep[gid] = self.alive[self.offset[gid]: self.offset[gid + 1]].copy()


def _dead_conv_groups(state: _Flat, ins: np.ndarray, outs: np.ndarray, mode: str, multiple: int = 1) -> set[int]:
    """Conv groups to remove whole: the ones the masks already remove whole, and in mode "whole"
    the ones whose removal (instead of filling them up) changes the fewest channels, counting the
    channels `--round multiple` then revives (s surviving groups of t channels need s·t to be a
    multiple, or every group alive and full)."""
    a, b = state.alive[ins].sum(axis=1), state.alive[outs].sum(axis=1)
    n_groups = len(a)
    dead = {j for j in range(n_groups) if a[j] == 0 and b[j] == 0}
    if mode != "whole" or not (a.any() or b.any()):
        return dead
    removable = ~(state.pinned[ins].any(axis=1) | state.pinned[outs].any(axis=1))
    must = [j for j in range(n_groups) if not removable[j]]
    order = [j for j in np.argsort(-(a + b), kind="stable").tolist() if removable[j]]

    def side(counts: np.ndarray, live: list[int], per: int) -> float:
        t, s = int(counts[live].max()), len(live)
        while t and t < per and (s * t) % multiple:
            t += 1
        if t and (s * t) % multiple and s < n_groups:
            return math.inf  # the rounding would revive removed groups
        return s * t - int(counts[live].sum()) + int(counts.sum() - counts[live].sum())

    best, best_cost = set(range(n_groups)), math.inf
    for s in range(0 if must else 1, len(order) + 1):
        live = must + order[:s]
        cost = side(a, live, ins.shape[1]) + side(b, live, outs.shape[1])
        if cost <= best_cost:
            best, best_cost = set(live), cost
    return dead | (set(range(n_groups)) - best)


def _dead_heads(state: _Flat, units: list[np.ndarray]) -> np.ndarray:
    """Channels of attention heads the masks remove whole (q, k and v), which go with their head;
    every attention keeps one head at least."""
    out = []
    for unit in units:
        dead = ~state.alive[unit].any(axis=1) & ~state.pinned[unit].any(axis=1)
        if dead.all():
            dead[0] = False
        out += [unit[h] for h in np.flatnonzero(dead)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _equalize(state: _Flat, blocks: np.ndarray, cause: tuple[str, str], minimum: int = 0) -> bool:
    """Revive channels until these blocks keep equal counts (at least `minimum`); True if any was revived."""
    if not len(blocks):
        return False
    counts = state.alive[blocks].sum(axis=1)
    target, changed = max(int(counts.max()), minimum), False
    for block in blocks:
        n = state.alive[block].sum()  # (blocks may share channels: q's and k's heads do)
        for i in state.order(block).tolist():
            if n >= target:
                break
            changed |= state.set(np.array([i]), True, cause)
            n = state.alive[block].sum()
    return changed


def _round_up(groups: Groups, state: _Flat, multiple: int, protected: np.ndarray) -> bool:
    changed = False
    if multiple == 1:
        return changed
    for g in groups.groups:
        span = np.arange(state.offset[g.id], state.offset[g.id + 1])
        n = int(state.alive[span].sum())
        target = min(g.size, -(-n // multiple) * multiple)
        if g.pinned or n == 0 or n == target:
            continue
        changed |= state.set(state.order(span, protected)[: target - n], True, (f"--round {multiple}", None))
    return changed


def _changes(groups: Groups, state: _Flat) -> list[MaskChange]:
    """Per layer and cause, the channels that differ from the masks."""
    out = []
    for g in groups.groups:
        span = slice(state.offset[g.id], state.offset[g.id + 1])
        diff = np.flatnonzero(state.alive[span] != state.original[span])
        by_cause: dict[tuple[str, str, str | None], list[int]] = {}
        for k in diff.tolist():
            reason, conv = state.cause[int(state.offset[g.id]) + k]
            action = "revived" if state.alive[state.offset[g.id] + k] else "removed"
            by_cause.setdefault((action, reason, conv), []).append(k)
        layers = [(s, ch) for s, ch in g.sources if s.kind == "weight"] or list(g.sources)
        for (action, reason, conv), ks in by_cause.items():
            if not layers:
                out.append(MaskChange(None, None, g.id, len(ks), len(ks), action, reason, conv))
            for s, ch in layers:
                out.append(MaskChange(s.node, s.weight, g.id, sum(len(ch[k]) for k in ks), len(ks), action, reason,
                                      conv))
    return out


def _change_warnings(changes: list[MaskChange], dead_conv_groups: dict[str, list[int]], mode: str) -> list[str]:
    """One line per cause."""
    lines = []
    by: dict[tuple[str, str], list[MaskChange]] = {}
    for c in changes:
        by.setdefault((c.action, c.reason), []).append(c)
    for (action, reason), cs in sorted(by.items()):
        n = sum(c.count for c in cs if c.node is not None)
        layers = len({c.node for c in cs if c.node is not None})
        convs = len({c.conv for c in cs if c.conv})
        what = f"{n} output channels of {layers} layers" if layers else \
            f"{sum(c.group_channels for c in cs)} channels"
        if action == "revived" and reason == "equal conv groups":
            lines.append(f"equal conv groups of {convs} grouped convs: {what} revived that the masks remove" +
                         (" (--conv-groups whole removes mostly dead conv groups instead)" if mode == "equal" else ""))
        elif action == "revived":
            lines.append(f"{reason}: {what} revived that the masks remove")
        else:
            lines.append(f"{reason}: {what} removed that the masks keep, with "
                         f"{sum(map(len, dead_conv_groups.values()))} conv groups of {len(dead_conv_groups)} convs")
    return lines


def revived_summary(masks: Masks) -> dict:
    """What `legalize` changed against the masks (JSON-ready): per action ("revived", "removed"),
    the total output channels of layers (`channels`) and of groups (`group_channels`), the
    channels per cause, and every layer's record; plus disagreements and removed conv groups."""
    doc: dict = {}
    for action in ("revived", "removed"):
        cs = [c for c in masks.changes if c.action == action]
        by_reason: dict[str, int] = {}
        for c in cs:
            by_reason[c.reason] = by_reason.get(c.reason, 0) + c.count
        doc[action] = {"channels": sum(c.count for c in cs),
                       "group_channels": sum({(c.group, c.reason, c.conv): c.group_channels for c in cs}.values()),
                       "by_reason": by_reason, "layers": [c.to_dict() for c in cs]}
    doc["dead_conv_groups"] = {node: list(js) for node, js in masks.dead_conv_groups.items()}
    doc["disagreements"] = {"groups": len(masks.disagreements), "channels": sum(masks.disagreements.values())}
    return doc


def masks_document(groups: Groups, masks: Masks) -> dict:
    """The masks as applied, as a masks file: `{"masks": {SOURCE: [0/1 per output channel]}}` for
    every source (named by its weight or BN scale initializer where that names it alone, else by
    its node), and `"silenced"` where removed channels output other values than 0.
    `masks_from_sources(groups, doc["masks"])` gives back these masks (and `legalize` leaves them)."""
    from .tables import SCHEMA_VERSION
    lookup = groups.by_source_name()
    doc: dict = {"schema_version": SCHEMA_VERSION, "masks": {}}
    silenced: dict[str, list[float]] = {}
    eg = groups.element_group
    for s in groups.plan.sources:
        ids = groups.plan.ids(s.tensor)
        keep = np.array([masks.keep[int(gid)][int(k)] for gid, k in eg[ids]], dtype=bool)
        key = s.weight if s.weight and lookup.get(s.weight) == [s] else s.node
        if key in doc["masks"]:
            continue
        doc["masks"][key] = keep.astype(int).tolist()
        if s.node in masks.silenced:
            silenced[key] = [float(v) for v in masks.silenced[s.node]]
    if silenced:
        doc["silenced"] = silenced
    return doc
