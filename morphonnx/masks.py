"""Masks: which channels of each group stay alive.

Masks come per source (node name, or weight / BN-scale initializer name) as 0/1 per output
channel, from a JSON file `{"masks": {SOURCE: [1, 0, ...]}}` or from BN scales and a threshold
(MorphNet: alive if |gamma| > T). A group keeps a channel if any of its sources keeps it;
disagreements are reported, masks on pinned groups are ignored with a warning. `legalize`
then revives channels so that grouped convolutions keep equal-sized groups.
"""
from __future__ import annotations

import json
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

    def removed(self, gid: int) -> np.ndarray:
        """Group channels that die."""
        return np.flatnonzero(~self.keep[gid])

    def copy(self) -> "Masks":
        """An independent copy."""
        return Masks({k: v.copy() for k, v in self.keep.items()}, list(self.warnings), dict(self.disagreements),
                     dict(self.scores), dict(self.silenced))


def all_alive(groups: Groups) -> Masks:
    """Every channel of every group alive."""
    return Masks({g.id: np.ones(g.size, dtype=bool) for g in groups.groups})


def read_masks_file(path: str | os.PathLike) -> dict[str, list]:
    """The `masks` mapping of a masks JSON file (BadInput if unreadable or malformed);
    see `read_silenced` for its optional `silenced` mapping."""
    try:
        doc = json.loads(open(path, encoding="utf-8").read())
    except FileNotFoundError:
        raise BadInput(f"masks file {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"masks file {path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("masks"), dict):
        raise BadInput(f"masks file {path}: expected an object {{\"masks\": {{SOURCE: [1, 0, ...]}}}}")
    return doc["masks"]


def read_silenced(path: str | os.PathLike) -> dict[str, list]:
    """The optional `silenced` mapping of a masks file: SOURCE → value of each removed channel."""
    doc = json.loads(open(path, encoding="utf-8").read())
    silenced = doc.get("silenced", {}) if isinstance(doc, dict) else {}
    if not isinstance(silenced, dict):
        raise BadInput(f"masks file {path}: 'silenced' must map sources to lists of numbers")
    return silenced


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
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise BadInput(f"{where}: silenced '{name}' must be {size} numbers, one per output channel")
            masks.silenced[s.node] = np.asarray(values, dtype=np.float32)


def masks_from_sources(groups: Groups, masks: dict[str, list], where: str = "masks") -> Masks:
    """Combine per-source 0/1 masks into per-group alive flags; BadInput naming a bad entry."""
    lookup = groups.by_source_name()
    votes: dict[int, list[np.ndarray]] = {}
    result = all_alive(groups)
    for name, values in masks.items():
        sources = lookup.get(name)
        if not sources:
            raise BadInput(f"{where}: '{name}' is not a source (a Conv/Gemm/MatMul node, its weight, "
                           f"or a BatchNormalization node or scale)")
        if not isinstance(values, list) or any(v not in (0, 1) or isinstance(v, float) and v not in (0.0, 1.0)
                                               for v in values):
            raise BadInput(f"{where}: '{name}' must be a list of 0/1 values")
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
    _decide(groups, votes, result)
    return result


def _vote(groups: Groups, source, alive: np.ndarray, votes: dict, result: Masks) -> None:
    per_group: dict[int, np.ndarray] = {}
    for c, gid, k in groups.source_channels(source):
        g = groups.groups[gid]
        vote = per_group.setdefault(gid, np.zeros(g.size, dtype=bool))
        vote[k] |= bool(alive[c])
    for gid, vote in per_group.items():
        g = groups.groups[gid]
        if g.pinned:
            if not vote.all():
                result.warnings.append(f"group {gid} is pinned ({g.pinned}); the mask of {source.node} is ignored")
            continue
        votes.setdefault(gid, []).append(vote)


def _decide(groups: Groups, votes: dict[int, list[np.ndarray]], result: Masks) -> None:
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


def legalize(groups: Groups, masks: Masks, multiple: int = 1) -> Masks:
    """Revive channels until every grouped convolution keeps the same count in each of its groups
    and, with `multiple` > 1, every group keeps a multiple of that many channels (or all of them).

    Runtimes pick their fast kernels for channel counts that are multiples of their SIMD width
    (onnxruntime on AVX-512: 16); revived channels are the most important dead ones (highest
    |gamma| when the masks come from BN scales, else the lowest indices).
    """
    if multiple < 1:
        raise BadInput(f"--round {multiple}: must be a positive integer")
    masks = masks.copy()
    eg = groups.element_group
    changed = True
    while changed:
        changed = _round_up(groups, masks, multiple)
        for blocks in groups.plan.constraints:
            counts = [sum(bool(masks.keep[eg[e, 0]][eg[e, 1]]) for e in b.tolist()) for b in blocks]
            target = max(counts)
            for b, n in zip(blocks, counts):
                for e in b.tolist():
                    if n >= target:
                        break
                    gid, k = eg[e]
                    if not masks.keep[gid][k]:
                        masks.keep[gid][k] = True
                        n += 1
                        changed = True
    return masks


def _round_up(groups: Groups, masks: Masks, multiple: int) -> bool:
    changed = False
    if multiple == 1:
        return changed
    for g in groups.groups:
        keep = masks.keep[g.id]
        n = int(keep.sum())
        target = min(g.size, -(-n // multiple) * multiple)
        if g.pinned or n == 0 or n == target:
            continue
        dead = np.flatnonzero(~keep)
        score = masks.scores.get(g.id)
        order = dead[np.argsort(-score[dead], kind="stable")] if score is not None else dead
        keep[order[: target - n]] = True
        changed = True
    return changed
