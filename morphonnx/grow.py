"""Growth: the model with every group at new widths (MorphNet's expand step, written as ONNX)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .errors import BadInput
from .groups import Groups
from .rewrite import Rewriter
from .topology import Morph


def grow(groups: Groups, widths: np.ndarray, folder: Path | None = None) -> onnx.ModelProto:
    """The model with every group at `widths` channels: existing channels keep their weights
    (the first ones, when a group narrows), new ones are freshly initialized (MorphNet retrains
    the expanded network from scratch; this model is for timing and inspection). With `folder`,
    large weights are computed one at a time into a data file there, which the model refers to."""
    order = {g.id: widened(g.size, int(widths[g.id])) for g in groups.groups}
    kept = {t: idx for t in groups.plan.spaces for idx in [tensor_order(groups, t, order)] if idx is not None}
    rw = Rewriter(groups, kept, Morph(), folder)
    rw.norm_values = None  # a new model, not a pruned one: its norms normalize over their new width
    rw.growing = True
    rw.slice_constants()
    rw.run_hooks()
    return without_folds(rw.export(groups.graph.model))


def without_folds(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without the constants a prune folded in for removed channels (bias maps and
    vectors added after an op, biases it gave an op that had none): an expanded model is
    trained anew, and what the removed channels left behind is no part of its structure."""
    from .rewrite import FOLDED_BIAS, FOLDED_MAP
    nodes = model.graph.node
    producer = {o: n for n in nodes for o in n.output}
    for n in list(nodes):
        if n.op_type == "Add" and len(n.input) == 2 and n.input[1].endswith(FOLDED_MAP) and n.input[0] in producer:
            src = producer[n.input[0]]
            src.output[list(src.output).index(n.input[0])] = n.output[0]
            nodes.remove(n)
        elif n.input and n.input[-1].endswith(FOLDED_BIAS):
            n.input.pop()
    used = {t for n in nodes for t in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def widened(size: int, width: int) -> np.ndarray:
    """Group channels of a group resized to `width`: the first ones kept, -1 for each new one."""
    return np.array(list(range(min(width, size))) + [-1] * max(0, width - size), dtype=np.int64)


def tensor_order(groups: Groups, tensor: str, order: dict[int, np.ndarray]) -> np.ndarray | None:
    """Old channel (or -1 for a new one) at each channel of a tensor, given each group's new
    order of group channels; None if the tensor does not change.

    The tensor's channels are walked in order, one run per group (a concat holds several);
    each run keeps its old channels in the group's new order, and a group's new channels go at
    the end of its last run (a group in two runs: the channels around a Slice). A changing group
    in three runs or more interleaves with others (a channel shuffle): refused.
    """
    eg = groups.element_group[groups.plan.ids(tensor)]
    cuts = np.flatnonzero(np.diff(eg[:, 0])) + 1
    runs = [(int(eg[a, 0]), int(a), int(b)) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(eg)])]
    last = {gid: j for j, (gid, _, _) in enumerate(runs)}
    count = {gid: int(np.sum(eg[:, 0] == gid)) for gid in last}
    out, changed = [], False
    for j, (gid, start, stop) in enumerate(runs):
        size = groups.groups[gid].size
        same = np.array_equal(order[gid], np.arange(size))
        if not same and sum(r[0] == gid for r in runs) > 2:
            raise BadInput(f"expand -o: the channels of tensor '{tensor}' interleave groups (a channel shuffle); "
                           f"growing them is not written yet (the expanded structure can still be written with --json)")
        by_k: dict[int, list[int]] = {}
        for ch in range(start, stop):
            by_k.setdefault(int(eg[ch, 1]), []).append(ch)
        m = max(1, count[gid] // size)
        for k in order[gid].tolist():
            out += by_k.get(k, []) if k >= 0 else [-1] * m if j == last[gid] else []
        changed |= not same
    return np.array(out, dtype=np.int64) if changed else None
