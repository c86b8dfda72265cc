"""Topology morphing: what vanishes when every channel of a group dies.

A tensor whose channels are all removed is *dead*. Silenced channels compute constants, so
whatever is computed only from dead tensors and constants no longer depends on the graph
inputs: it is *static* (a ResNet block whose inner channels all died computes a constant
that its Add adds to the skip path; an Inception tower fed by a dead reduce conv outputs
its bias). The rewrite replaces each static tensor that live ops still read (a *boundary*)
by its value, taken from the oracle, drops dead inputs of channel concats, and deletes the
ops that only fed static tensors: dead layers, branches and towers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import BadInput
from .groups import Groups


@dataclass
class Morph:
    """The effect of the masks on the topology."""

    dead: set[str] = field(default_factory=set)           # tensors with every channel removed
    static: set[str] = field(default_factory=set)         # tensors that no longer depend on the inputs
    static_nodes: set[str] = field(default_factory=set)   # ops that only compute static tensors
    boundaries: list[str] = field(default_factory=list)   # static tensors read by live ops
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (Concat node, dead input)
    blocked: dict[str, str] = field(default_factory=dict)  # dead tensor → live op that cannot lose it


def morph(groups: Groups, removed: dict[str, np.ndarray]) -> Morph:
    """Dead and static tensors, the ops that vanish, and the boundaries to replace by constants.

    BadInput if a graph output would no longer depend on the graph inputs.
    """
    graph, plan = groups.graph, groups.plan
    m = Morph()
    m.dead = {t for t, r in removed.items() if len(r) == plan.spaces[t].size}
    if not m.dead:
        return m
    m.static = set(m.dead)
    order = graph.topological_nodes()
    for name in order:
        node = graph.nodes[name]
        ins = [t for t in node.input if t]
        if ins and all(t in m.static or graph.is_constant(t) for t in ins):
            m.static.update(o for o in node.output if o)
    cut = [o for o in graph.outputs if o in m.static]
    if cut:
        raise BadInput(f"the masks cut every path from the graph inputs to output '{cut[0]}': "
                       f"keep at least one channel on the way")
    boundaries = set()
    for name in order:
        node = graph.nodes[name]
        if all(o in m.static for o in node.output if o):
            m.static_nodes.add(name)
            continue
        for t in node.output:
            if t in m.dead and graph.consumers.get(t):
                m.blocked.setdefault(t, name)  # a live op (a Split) would produce a zero-channel tensor
        for t in node.input:
            if t in m.dead:
                if _concat_on_channels(groups, node, t):
                    m.dropped.append((name, t))
                else:
                    m.blocked.setdefault(t, name)
            elif t in m.static and not graph.is_constant(t):
                boundaries.add(t)
    m.boundaries = sorted(boundaries)
    return m


def _concat_on_channels(groups: Groups, node, tensor: str) -> bool:
    if node.op_type != "Concat" or node.output[0] not in groups.plan.spaces:
        return False
    shape = groups.graph.static_shape(node.output[0], "Concat output")
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    axis = axis + len(shape) if axis < 0 else axis
    return groups.plan.spaces[node.output[0]].axis == axis


def revive_blocked(groups: Groups, masks, m: Morph) -> list[str]:
    """Keep one channel of each dead tensor a live op cannot do without; return notes."""
    notes = []
    for tensor, node in m.blocked.items():
        e = groups.plan.ids(tensor, [0])[0]
        gid, k = groups.element_group[e]
        masks.keep[int(gid)][int(k)] = True
        op = groups.graph.nodes[node].op_type
        notes.append(f"group {int(gid)}: one channel kept, since {op} '{node}' cannot do without '{tensor}'")
    return notes


def compact(value: np.ndarray, broadcasting: bool) -> np.ndarray:
    """A constant reduced to size 1 along every axis it does not vary on (for broadcasting consumers)."""
    if not broadcasting:
        return value
    for axis in range(value.ndim):
        first = np.take(value, [0], axis=axis)
        if value.shape[axis] > 1 and np.array_equal(value, np.broadcast_to(first, value.shape)):
            value = first
    return value
