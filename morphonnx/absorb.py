"""Absorb what removed channels leave behind into the consumers that stay.

A silenced channel is not always zero downstream (a BN shift, sigmoid(0), a bias), so before a
consumer (an op that reduces channels away: a Conv or Gemm input side) drops those channels,
their contribution is folded: the oracle is evaluated at the consumer's input, the removed
channels' values are checked to be input-independent, and the consumer applied to them alone
gives a constant that goes into its bias, or, where it varies over positions (zero padding at
the borders of a k×k conv), into an added bias map. A removed channel whose value depends on
the input cannot be folded: it is kept, and the report says why.
(Not to be confused with fold.py, which folds the exporters' shape clutter at load time.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .graph import Graph
from .groups import Groups
from .masks import Masks
from .oracle import (Oracle, bias_add, expand_channels, oracle_model, own_bn, random_inputs, removed_by_tensor, run,
                     session)
from .topology import Morph

BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}

@dataclass
class Fold:
    """A constant that removed input channels add to a consumer's output."""

    node: str
    tensor: str
    value: np.ndarray  # the consumer's output-shaped contribution (batch 1), all output channels
    uniform: bool
    # a raw consumer (a norm over the channels): `value` is the removed channels' values at its
    # input, which its statistics read, and `tensor` that input
    raw: bool = False


def _contributions(groups: Groups, jobs: list[tuple[str, int, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Run each consumer node alone, bias dropped, on the removed channels of its input (`pos`,
    the rest being zero), all in one session. Where the node's weight is sliced along that
    input's channels, only those channels and weight entries are fed."""
    graph, plan = groups.graph, groups.plan
    nodes, feeds, inputs = [], {}, []
    for k, (node_name, index, x, pos) in enumerate(jobs):
        node = graph.nodes[node_name]
        tensor = node.input[index]
        cut = {sl.input: sl.axis for sl in plan.slicings.get(node_name, []) if sl.tensor == tensor}
        if cut:
            x = np.take(x, pos, axis=plan.spaces[tensor].axis)
        bias = BIAS_INPUT.get(node.op_type)
        names = []
        for i, t in enumerate(node.input):
            if i == bias or not t:
                names.append("")
            elif i == index:
                names.append(f"x{k}")
            else:
                value = graph.array(t)
                if i in cut:
                    value = np.take(value, pos, axis=cut[i])
                names.append(f"c{k}.{i}")  # fed as an input: no serialization of weights
                feeds[f"c{k}.{i}"] = np.ascontiguousarray(value)
                inputs.append(helper.make_tensor_value_info(
                    f"c{k}.{i}", helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
        while names and not names[-1]:
            names.pop()
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.append(helper.make_node(node.op_type, names, [f"y{k}"], **attrs))
        inputs.append(helper.make_tensor_value_info(f"x{k}", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape))
        feeds[f"x{k}"] = x
    m = helper.make_model(helper.make_graph(nodes, "fold", inputs,
                                           [helper.make_empty_tensor_value_info(f"y{k}") for k in range(len(jobs))]),
                          opset_imports=list(graph.model.opset_import))
    return run(session(m, optimize=False), feeds)


def _uniform(y: np.ndarray, axis: int) -> bool:
    """True if `y` is the same vector along `axis` at every position."""
    if all(y.strides[i] == 0 or y.shape[i] == 1 for i in range(y.ndim) if i != axis):
        return True  # a broadcast view
    flat = np.moveaxis(y, axis, -1).reshape(-1, y.shape[axis])
    return bool(np.allclose(flat, flat[:1], rtol=1e-6, atol=1e-7 * max(1e-30, float(np.max(np.abs(y))))))


def _uniform_conv(groups: Groups, node_name: str, index: int, x: np.ndarray, pos: np.ndarray) -> np.ndarray | None:
    """What `_contributions` computes, without a run, for the common case: a 2-D Conv (one
    group, explicit pads, constant weight) whose removed input channels each hold one value
    over the whole image (a BN shift through a ReLU). Only the kernel taps that fall in the
    zero padding make the result vary, and they factor per axis:
    y[o, i, j] = sum_kl (sum_c v_c W[o, c, k, l]) * inside_h(i, k) * inside_w(j, l).
    None where this does not apply."""
    graph = groups.graph
    node = graph.nodes[node_name]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type != "Conv" or index != 0 or x.ndim != 4 or x.shape[0] != 1 or attrs.get("group", 1) != 1 \
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or not graph.is_constant(node.input[1]):
        return None
    v = x[0, pos]
    if v.size == 0 or not np.all(v == v[:, :1, :1]):
        return None
    w = graph.array(node.input[1])
    if w.ndim != 4 or w.shape[1] != x.shape[1]:
        return None
    full = np.zeros(w.shape[1], dtype=w.dtype)
    full[pos] = v[:, 0, 0]
    o, c, kh, kw = w.shape
    kernel = np.matmul(full, w.reshape(o, c, kh * kw)).reshape(o, kh, kw).astype(np.float64)  # batched gemv, no copy
    pads = attrs.get("pads", [0, 0, 0, 0])
    strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    inside = []
    for ax in range(2):
        size, k = x.shape[2 + ax], w.shape[2 + ax]
        out = (size + pads[ax] + pads[ax + 2] - dilations[ax] * (k - 1) - 1) // strides[ax] + 1
        at = np.arange(out)[:, None] * strides[ax] - pads[ax] + np.arange(k)[None, :] * dilations[ax]
        inside.append(((at >= 0) & (at < size)).astype(np.float64))
    if all(m.all() for m in inside):  # no tap falls in the padding: the same vector everywhere
        return np.broadcast_to(kernel.sum(axis=(1, 2)).astype(x.dtype)[None, :, None, None],
                               (1, o, inside[0].shape[0], inside[1].shape[0]))
    taps = (inside[0].T[:, None, :, None] * inside[1].T[None, :, None, :]).reshape(kh * kw, -1)  # [(k,l), (i,j)]
    y = (kernel.reshape(o, kh * kw) @ taps).reshape(o, inside[0].shape[0], inside[1].shape[0])  # one GEMM
    return y[None].astype(x.dtype)


# 0 in, 0 out: ops through which silenced (zero) channels stay zero. Add and Sub only when
# every operand is a tied channel tensor (a constant or a broadcast operand adds something).
ZERO_PRESERVING = {"Clip", "Relu", "LeakyRelu", "PRelu", "HardSwish", "Gelu", "Tanh", "Mish", "Neg", "Abs", "Erf", "Elu",
                   "Selu", "Celu", "Sign", "Cast", "Identity", "Dropout", "MaxPool", "AveragePool",
                   "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "Concat", "Split", "Slice",
                   "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Resize", "Upsample", "Pad", "Gather",
                   "Expand", "Tile", "Mul", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "Add", "Sub", "Sum"}


def zero_when_silenced(groups: Groups, masks: Masks) -> set[str]:
    """Tensors whose silenced channels are exactly zero in the oracle, whatever the input.

    A source silenced by zero rows outputs zero; zero-preserving ops keep it so. Anything else
    (a BN shift, a sigmoid, a bias add) may not, and is evaluated numerically.
    """
    graph, plan = groups.graph, groups.plan
    zero: set[str] = set()
    sourced = {s.tensor for s in plan.sources if s.kind == "weight" and own_bn(graph, s.tensor) is None
               and not np.any(masks.silenced.get(s.node, 0))}
    sourced |= {graph.nodes[b[0]].output[0] for s in plan.sources if s.op_type == "MatMul"
                for b in [bias_add(groups, s.tensor)] if b is not None}
    silencing = {sl.node for sl in plan.silenced}  # their per-channel constants are 0 there: output 0
    for name in graph.topological_nodes():
        node = graph.nodes[name]
        outs = [o for o in node.output if o in plan.spaces]
        if not outs:
            continue
        if outs[0] in sourced or name in silencing:
            zero.update(outs)
            continue
        if node.op_type not in ZERO_PRESERVING or node.op_type == "Clip" and not _clip_keeps_zero(graph, node) \
                or node.op_type == "Pad" and not _pad_keeps_zero(graph, node):
            continue
        spaced = [t for t in node.input if t in plan.spaces]
        if not spaced or not all(t in zero for t in spaced):
            continue
        if node.op_type in ("Add", "Sub", "Sum", "Concat") and any(
                t and t not in plan.spaces and not (graph.is_constant(t) and not np.any(graph.array(t)))
                for t in node.input):  # another operand (a class token joined to the tokens) adds its values
            continue
        zero.update(outs)
    return zero


def independent_when_silenced(groups: Groups) -> set[str]:
    """Tensors whose silenced channels provably do not depend on the input.

    Silenced sources output constants; ops that act channel by channel keep them constant
    unless they also read an activation that is not cut along the same channels (a
    broadcast operand computed from the input), which may make them vary.
    """
    graph, plan = groups.graph, groups.plan
    independent = {s.tensor for s in plan.sources}
    consumers = {n for n, _, _ in plan.consumers}
    for name in graph.topological_nodes():
        node = graph.nodes[name]
        outs = [o for o in node.output if o in plan.spaces]
        if not outs or outs[0] in independent or name in consumers:
            continue
        if all(not t or graph.is_constant(t) or t in independent for t in node.input):
            independent.update(outs)
    return independent


def _pad_keeps_zero(graph: Graph, node: onnx.NodeProto) -> bool:
    """A Pad adds zeros: mode edge/reflect/wrap, or a constant value of 0 (the default)."""
    mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return True
    value = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "value"), 0.0)
    if len(node.input) > 2 and node.input[2]:
        if not graph.is_constant(node.input[2]):
            return False
        value = graph.array(node.input[2])
    return not np.any(value)


def _clip_keeps_zero(graph: Graph, node: onnx.NodeProto) -> bool:
    bounds = [graph.array(t) for t in node.input[1:3] if t and graph.is_constant(t)]
    return len(bounds) == len([t for t in node.input[1:3] if t]) and all(
        (b <= 0).all() if i == 0 else (b >= 0).all() for i, b in enumerate(bounds))


def compute_folds(groups: Groups, masks: Masks, m: Morph, seeds: tuple[int, int] = (101, 202),
                  removed: dict[str, np.ndarray] | None = None
                  ) -> tuple[list[Fold], dict[int, set[int]], Oracle | None, dict[str, np.ndarray]]:
    """Folds for every live consumer of removed channels that may not be zero, group channels
    that must be revived because their silenced value depends on the input (group id → group
    channels), the oracle if it had to be built, and the values of the static boundaries."""
    graph, plan = groups.graph, groups.plan
    removed = removed_by_tensor(groups, masks) if removed is None else removed
    zero = zero_when_silenced(groups, masks)
    points = [(n, i, t) for n, i, t in plan.consumers
              if t in removed and t not in zero and n not in m.static_nodes]
    if not points and not m.boundaries:
        return [], {}, None, {}
    tensors = sorted({t for _, _, t in points} | set(m.boundaries))
    oracle = oracle_model(groups, masks, removed)
    sess = oracle.session(tensors)
    if {t for _, _, t in points} <= independent_when_silenced(groups):
        seeds = seeds[:1]  # one run says it all
    runs = [dict(zip(tensors, r)) for r in oracle.run(sess, [random_inputs(graph, s) for s in seeds], tensors)]
    values = {t: runs[0][t] for t in m.boundaries}
    tensors = sorted({t for _, _, t in points})
    at: dict[str, list[tuple[str, int]]] = {}  # tensor → the consumers that read it
    for node_name, i, t in points:
        at.setdefault(t, []).append((node_name, i))
    folds: list[Fold] = []
    jobs: list[tuple[str, int, np.ndarray, np.ndarray]] = []
    revive: dict[int, set[int]] = {}
    for t in tensors:
        space = plan.spaces[t]
        dead = removed[t]
        pos = expand_channels(dead, space.block)
        a, *b = (np.take(r[t], pos, axis=space.axis) for r in runs)
        varies = np.zeros(1, dtype=bool)
        if b:  # two runs: removed values that differ depend on the input
            scale = max(1e-30, float(np.max(np.abs(runs[0][t]))))
            varies = np.abs(a - b[0]) > 1e-6 * scale + 1e-7 * np.abs(a)
        if varies.any():
            axes = tuple(i for i in range(a.ndim) if i != space.axis)
            bad = np.unique(np.flatnonzero(varies.any(axis=axes)) // space.block)
            for c in dead[bad].tolist():
                gid, k = groups.element_group[plan.ids(t, [c])[0]]
                revive.setdefault(int(gid), set()).add(int(k))
            continue
        if not np.any(a):
            continue
        folds += [Fold(n, t, a, False, raw=True) for n, _ in at[t] if n in plan.raw_consumers]
        at[t] = [(n, i) for n, i in at[t] if n not in plan.raw_consumers]
        only_dead = np.zeros_like(runs[0][t])
        index = [slice(None)] * only_dead.ndim
        index[space.axis] = pos
        only_dead[tuple(index)] = a
        jobs += [(node_name, i, only_dead, pos) for node_name, i in at[t]]
    direct = [_uniform_conv(groups, *job) for job in jobs]
    rest = [job for job, y in zip(jobs, direct) if y is None]
    ran = iter(_contributions(groups, rest) if rest else [])
    for (node_name, *_), y in zip(jobs, [y if y is not None else next(ran) for y in direct]):
        out = graph.nodes[node_name].output[0]
        oaxis = plan.spaces[out].axis if out in plan.spaces else 1
        folds.append(Fold(node_name, out, y, _uniform(y, oaxis)))
    return folds, revive, oracle, values
