"""Rewrite: apply masks to the ONNX model, fold what removed channels leave behind, verify.

The contract (DESIGN.md): the pruned model computes what the *oracle* computes, the original
model with every removed channel silenced (BN scale 0; a Conv/Gemm/MatMul source without its
own BN gets zero weight rows and bias). A silenced channel is not always zero downstream (a BN
shift, sigmoid(0), a bias), so before a consumer (an op that reduces channels away: a Conv or
Gemm input side) drops those channels, their contribution is folded: the oracle is evaluated
at the consumer's input, the removed channels' values are checked to be input-independent,
and the consumer applied to them alone gives a constant that goes into its bias, or, where it
varies over positions (zero padding at the borders of a k×k conv), into an added bias map.
A removed channel whose value depends on the input cannot be folded: it is kept, and the
report says why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import helper, numpy_helper

from .costs import cost_model
from .graph import Graph
from .channels import Slicing
from .groups import Groups
from .masks import Masks
from .topology import Morph, compact, morph, revive_blocked

BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}
FOLDED_MAP = ".folded_map"


# ---- models with all their weights ----------------------------------------------------------------

def _take_or_init(value: np.ndarray, idx: np.ndarray, axis: int, rng: np.random.Generator) -> np.ndarray:
    """Entries `idx` of `value` along `axis`; -1 marks a new channel: a weight gets fresh
    normal values at the weight's scale, a per-channel constant the mean of its entries."""
    out = np.take(value, np.maximum(idx, 0), axis=axis)
    new = idx < 0
    if not new.any():
        return out
    index = [slice(None)] * out.ndim
    index[axis] = new
    if value.size // max(1, value.shape[axis]) > 1 and value.ndim >= 2 and value.shape[axis] > 1:
        std = float(value.std()) or 1.0
        out[tuple(index)] = rng.normal(0, std, out[tuple(index)].shape)
    else:
        out[tuple(index)] = float(value.mean()) if value.size else 0.0
    return out


def _expand(channels: np.ndarray, block: int) -> np.ndarray:
    """Channel indices to entry indices of a blocked axis (-1, a new channel, stays -1)."""
    if block == 1:
        return channels
    entries = channels[:, None] * block + np.arange(block)
    return np.where(channels[:, None] < 0, -1, entries).ravel()


# ---- which channels die ---------------------------------------------------------------------------

def removed_by_tensor(groups: Groups, masks: Masks) -> dict[str, np.ndarray]:
    """Tensor → its removed channel indices (only tensors that lose channels)."""
    out: dict[str, list[int]] = {}
    for g in groups.groups:
        dead = masks.removed(g.id)
        for t, chans in g.members.items():
            for k in dead.tolist():
                out.setdefault(t, []).extend(chans[k])
    return {t: np.array(sorted(v), dtype=np.int64) for t, v in out.items() if v}


def kept_by_tensor(groups: Groups, removed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensor → its kept channel indices, for tensors that lose channels."""
    spaces = groups.plan.spaces
    return {t: np.setdiff1d(np.arange(spaces[t].size), r) for t, r in removed.items()}


def own_bn(graph: Graph, tensor: str) -> str | None:
    """The BatchNormalization node that alone reads a source's output (its own BN), if any."""
    users = graph.consumers.get(tensor, [])
    return users[0] if len(users) == 1 and graph.nodes[users[0]].op_type == "BatchNormalization" else None


def _bias_add(groups: Groups, tensor: str) -> tuple[str, int] | None:
    """(node, input) of the bias of a MatMul source: the Add of a per-channel constant that alone
    follows it (a Linear exported as MatMul + Add); its entries are the source's bias entries."""
    users = groups.graph.consumers.get(tensor, [])
    if len(users) != 1 or groups.graph.nodes[users[0]].op_type != "Add":
        return None
    for sl in groups.plan.slicings.get(users[0], []):
        if sl.tensor == groups.graph.nodes[users[0]].output[0]:
            return users[0], sl.input
    return None


@dataclass
class Oracle:
    """The original model with every removed channel of every source silenced (DESIGN.md).

    `model` is the loaded model (its small initializers in place); `weights` are the large
    ones, fed to onnxruntime as inputs so that no session serializes them.
    """

    model: onnx.ModelProto
    weights: dict[str, np.ndarray]

    def session(self) -> "ort.InferenceSession":
        """An onnxruntime session of the oracle."""
        return session(self.model, optimize=False)

    def run(self, sess: "ort.InferenceSession", feeds: dict[str, np.ndarray], outputs=None) -> list[np.ndarray]:
        """Run with the graph inputs `feeds` (weights added)."""
        return sess.run(outputs, {**feeds, **self.weights})

    def to_model(self) -> onnx.ModelProto:
        """A self-contained ModelProto of the oracle."""
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        names = set(self.weights)
        keep = [i for i in m.graph.input if i.name not in names]
        del m.graph.input[:]
        m.graph.input.extend(keep)
        m.graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v), n) for n, v in self.weights.items())
        return m


def oracle_model(groups: Groups, masks: Masks) -> Oracle:
    """Build the oracle of these masks."""
    graph, plan = groups.graph, groups.plan
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    in_model = {t.name: t for t in model.graph.initializer}
    weights = {n: graph.array(n) for n in graph.initializers if n not in in_model and n in graph.consumers}
    unused = {n for n in graph.initializers if n not in in_model and n not in graph.consumers}
    inputs = [i for i in model.graph.input if i.name not in unused]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    removed = removed_by_tensor(groups, masks)
    values: dict[tuple[str, int], np.ndarray] = {}
    for s in plan.sources:
        dead = removed.get(s.tensor)
        if dead is None or (s.kind == "weight" and own_bn(graph, s.tensor) is not None):
            continue
        node = graph.nodes[s.node]
        wanted = [sl for sl in plan.slicings.get(s.node, []) if sl.tensor == s.tensor]
        if s.kind == "bn":
            wanted = [sl for sl in wanted if sl.input == 1]
        bias = _bias_add(groups, s.tensor) if s.op_type == "MatMul" else None
        if bias is not None:
            wanted.append(Slicing(bias[1], plan.slicings[bias[0]][0].axis, s.tensor, node=bias[0]))
        shift = masks.silenced.get(s.node)
        for sl in wanted:
            key = (sl.node or s.node, sl.input)
            node = graph.nodes[key[0]]
            if key not in values:
                values[key] = graph.array(node.input[sl.input]).copy()
            index = [slice(None)] * values[key].ndim
            index[sl.axis] = dead
            is_bias = sl.input == 2 or sl.node is not None
            values[key][tuple(index)] = shift[dead] if shift is not None and is_bias else 0
        if shift is not None and s.op_type in ("Conv", "Gemm") and not (len(node.input) > 2 and node.input[2]):
            bias = np.zeros(plan.spaces[s.tensor].size, dtype=np.float32)
            bias[dead] = shift[dead]
            values[(s.node, 2)] = bias  # the silenced channel outputs its shift: give the op a bias
    nodes = {n.name: n for n in model.graph.node}
    for (node_name, i), value in values.items():
        node = nodes[node_name]
        if i >= len(node.input) or not node.input[i]:
            while len(node.input) <= i:
                node.input.append("")
            node.input[i] = f"{node_name}.oracle.bias"
        name = node.input[i]
        if len(graph.consumers.get(name, [])) > 1:  # shared: give this node its own silenced copy
            name = node.input[i] = f"{name}.oracle.{node_name}"
        if name in in_model:
            t = in_model[name]
            t.CopyFrom(numpy_helper.from_array(value.astype(helper.tensor_dtype_to_np_dtype(t.data_type)), name))
        elif name in weights:
            weights[name] = value
        else:
            weights[name] = value
            model.graph.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
    return Oracle(model, weights)


# ---- running models -------------------------------------------------------------------------------

def random_inputs(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """Random values for every graph input at the graph's static shapes."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        info = graph.info(name)
        shape = graph.static_shape(name, "graph input")
        dtype = info.dtype or np.float32
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


def session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session (all graph optimizations on by default)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    return m


# ---- folding ----------------------------------------------------------------------------------------

@dataclass
class Fold:
    """A constant that removed input channels add to a consumer's output."""

    node: str
    tensor: str
    value: np.ndarray  # the consumer's output-shaped contribution (batch 1), all output channels
    uniform: bool


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
    return session(m, optimize=False).run(None, feeds)


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
                for b in [_bias_add(groups, s.tensor)] if b is not None}
    for name in graph.topological_nodes():
        node = graph.nodes[name]
        outs = [o for o in node.output if o in plan.spaces]
        if not outs:
            continue
        if outs[0] in sourced:
            zero.update(outs)
            continue
        if node.op_type not in ZERO_PRESERVING or node.op_type == "Clip" and not _clip_keeps_zero(graph, node):
            continue
        spaced = [t for t in node.input if t in plan.spaces]
        if not spaced or not all(t in zero for t in spaced):
            continue
        if node.op_type in ("Add", "Sub", "Sum") and len(spaced) != len([t for t in node.input if t]):
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


def _clip_keeps_zero(graph: Graph, node: onnx.NodeProto) -> bool:
    bounds = [graph.array(t) for t in node.input[1:3] if t and graph.is_constant(t)]
    return len(bounds) == len([t for t in node.input[1:3] if t]) and all(
        (b <= 0).all() if i == 0 else (b >= 0).all() for i, b in enumerate(bounds))


def compute_folds(groups: Groups, masks: Masks, m: Morph, seeds: tuple[int, int] = (101, 202)
                  ) -> tuple[list[Fold], dict[int, set[int]], Oracle | None, dict[str, np.ndarray]]:
    """Folds for every live consumer of removed channels that may not be zero, group channels
    that must be revived because their silenced value depends on the input (group id → group
    channels), the oracle if it had to be built, and the values of the static boundaries."""
    graph, plan = groups.graph, groups.plan
    removed = removed_by_tensor(groups, masks)
    zero = zero_when_silenced(groups, masks)
    points = [(n, i, t) for n, i, t in plan.consumers
              if t in removed and t not in zero and n not in m.static_nodes]
    if not points and not m.boundaries:
        return [], {}, None, {}
    tensors = sorted({t for _, _, t in points} | set(m.boundaries))
    oracle = oracle_model(groups, masks)
    sess = session(_with_outputs(oracle.model, tensors), optimize=False)
    if {t for _, _, t in points} <= independent_when_silenced(groups):
        seeds = seeds[:1]  # one run says it all
    runs = [dict(zip(tensors, oracle.run(sess, random_inputs(graph, s), tensors))) for s in seeds]
    if len(runs) == 1:
        runs = runs * 2
    values = {t: runs[0][t] for t in m.boundaries}
    tensors = sorted({t for _, _, t in points})
    folds: list[Fold] = []
    jobs: list[tuple[str, int, np.ndarray, np.ndarray]] = []
    revive: dict[int, set[int]] = {}
    for t in tensors:
        space = plan.spaces[t]
        dead = removed[t]
        pos = _expand(dead, space.block)
        a, b = (np.take(r[t], pos, axis=space.axis) for r in runs)
        scale = max(1e-30, float(np.max(np.abs(runs[0][t]))))
        varies = np.abs(a - b) > 1e-6 * scale + 1e-7 * np.abs(a)
        if varies.any():
            axes = tuple(i for i in range(a.ndim) if i != space.axis)
            bad = np.unique(np.flatnonzero(varies.any(axis=axes)) // space.block)
            for c in dead[bad].tolist():
                gid, k = groups.element_group[plan.ids(t, [c])[0]]
                revive.setdefault(int(gid), set()).add(int(k))
            continue
        if not np.any(a):
            continue
        only_dead = np.zeros_like(runs[0][t])
        index = [slice(None)] * only_dead.ndim
        index[space.axis] = pos
        only_dead[tuple(index)] = a
        jobs += [(node_name, i, only_dead, pos) for node_name, i, tt in points if tt == t]
    for (node_name, *_), y in zip(jobs, _contributions(groups, jobs) if jobs else []):
        out = graph.nodes[node_name].output[0]
        oaxis = plan.spaces[out].axis if out in plan.spaces else 1
        flat = np.moveaxis(y, oaxis, -1).reshape(-1, y.shape[oaxis])
        uniform = bool(np.allclose(flat, flat[:1], rtol=1e-6, atol=1e-7 * max(1e-30, float(np.max(np.abs(y))))))
        folds.append(Fold(node_name, out, y, uniform))
    return folds, revive, oracle, values


# ---- the rewrite ----------------------------------------------------------------------------------

class RewriteContext:
    """What a channel rule's rewrite hook may read and change on one gs node."""

    def __init__(self, rewriter: "_Rewriter", node: gs.Node):
        self.rw = rewriter
        self.node = node

    def _name(self, t) -> str:
        return t if isinstance(t, str) else t.name

    def kept(self, t) -> np.ndarray | None:
        """Kept channel indices of a tensor, None if it keeps all (or has no channels)."""
        return self.rw.kept.get(self._name(t))

    def size(self, t) -> int:
        """The tensor's channel count before pruning."""
        return self.rw.plan.spaces[self._name(t)].size

    def block(self, t) -> int:
        """Entries per channel on the channel axis."""
        return self.rw.plan.spaces[self._name(t)].block

    def kept_count(self, t) -> int:
        """Channels the tensor keeps."""
        k = self.kept(t)
        return self.size(t) if k is None else len(k)

    def is_const(self, i: int) -> bool:
        """True if input i is a constant."""
        return i < len(self.node.inputs) and isinstance(self.node.inputs[i], gs.Constant)

    def const(self, i: int) -> np.ndarray:
        """The current value of constant input i."""
        return np.asarray(self.node.inputs[i].values)

    def set_const(self, i: int, value: np.ndarray) -> None:
        """Replace constant input i (a private copy when other nodes share it)."""
        self.rw.set_const(self.node, i, value)

    def set_attr(self, name: str, value) -> None:
        """Set an attribute."""
        self.node.attrs[name] = value


def _import_with_weights(graph: Graph) -> gs.Graph:
    """The graph as an onnx-graphsurgeon Graph whose detached weights are Constants (no proto copies)."""
    g = gs.import_onnx(graph.model)
    tensors = g.tensors()
    detached = [n for n in graph.initializers if n in tensors and isinstance(tensors[n], gs.Variable)]
    g.inputs = [t for t in g.inputs if t.name not in set(detached)]
    for n in detached:
        tensors[n].to_constant(graph.array(n))
    return g


class _Rewriter:
    def __init__(self, groups: Groups, kept: dict[str, np.ndarray], m: Morph):
        self.groups = groups
        self.plan = groups.plan
        self.kept = kept
        self.morph = m
        self.rng = np.random.default_rng(0)
        self.gs_graph = _import_with_weights(groups.graph)
        self.nodes = {n.name: n for n in self.gs_graph.nodes}

    def set_const(self, node: gs.Node, i: int, value: np.ndarray) -> None:
        old = node.inputs[i]
        value = np.ascontiguousarray(value, dtype=np.asarray(old.values).dtype)
        if sum(1 for user in old.outputs if user is not node) > 0:
            node.inputs[i] = gs.Constant(f"{old.name}.{node.name}", value)
        else:
            old.values = value

    def slice_constants(self) -> None:
        for node_name, slicings in self.plan.slicings.items():
            if node_name in self.morph.static_nodes:
                continue
            node = self.nodes[node_name]
            by_input: dict[int, list] = {}
            for sl in slicings:
                if sl.tensor in self.kept and sl.input < len(node.inputs) and isinstance(node.inputs[sl.input], gs.Constant):
                    by_input.setdefault(sl.input, []).append(sl)
            for i, sls in by_input.items():
                value = np.asarray(node.inputs[i].values)
                for sl in sls:
                    idx = _expand(self.kept[sl.tensor], self.plan.spaces[sl.tensor].block)
                    value = _take_or_init(value, idx, sl.axis, self.rng)
                self.set_const(node, i, value)

    def run_hooks(self) -> None:
        for node_name, hook in self.plan.hooks.items():
            if node_name not in self.morph.static_nodes:
                hook(RewriteContext(self, self.nodes[node_name]))

    def drop_dead_inputs(self) -> None:
        """Channel concats lose their dead inputs."""
        for node_name, tensor in self.morph.dropped:
            node = self.nodes[node_name]
            node.inputs = [t for t in node.inputs if t.name != tensor]

    def replace_boundaries(self, values: dict[str, np.ndarray]) -> list[str]:
        """Live ops read the value of each static tensor instead of computing it; an Add of
        zero disappears. Returns what was done, for the report."""
        notes = []
        tensors = self.gs_graph.tensors()
        for name, value in values.items():
            space = self.plan.spaces.get(name)
            if space is not None and name in self.kept:
                value = np.take(value, _expand(self.kept[name], space.block), axis=space.axis)
            var = tensors[name]
            for node in [n for n in list(var.outputs) if n.name not in self.morph.static_nodes]:
                const = compact(value, node.op in ("Add", "Sub", "Mul", "Div"))
                branch = f"the branch ending in {self._last_layer(name)}"
                if node.op in ("Add", "Sub") and not np.any(const) and self._bypass(node, var):
                    notes.append(f"{branch} is constant zero: {node.op} '{node.name}' removed")
                    continue
                c = gs.Constant(f"{name}.static", np.ascontiguousarray(const))
                node.inputs = [c if t is var else t for t in node.inputs]
                notes.append(f"{branch} is constant: {node.op} '{node.name}' adds its value"
                             if node.op == "Add" else f"{branch} is constant: {node.op} '{node.name}' reads its value")
        return notes

    def _last_layer(self, tensor: str) -> str:
        """The weight name of the nearest layer that computes `tensor` (for the report)."""
        graph = self.groups.graph
        weights = {s.node: s.weight or s.node for s in self.plan.sources if s.kind == "weight"}
        seen, todo = set(), [tensor]
        while todo:
            t = todo.pop(0)
            node = graph.producer.get(t)
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in weights:
                return weights[node]
            todo += [i for i in graph.nodes[node].input if i and not graph.is_constant(i)]
        return f"'{tensor}'"

    def _bypass(self, node: gs.Node, zero: gs.Tensor) -> bool:
        out = node.outputs[0]
        others = [t for t in node.inputs if t is not zero]
        if len(others) != 1 or out in self.gs_graph.outputs or (node.op == "Sub" and node.inputs[0] is zero):
            return False
        for user in list(out.outputs):
            user.inputs = [others[0] if t is out else t for t in user.inputs]
        node.outputs = []
        return True

    def apply_fold(self, fold: Fold) -> str:
        node = self.nodes[fold.node]
        out_space = self.plan.spaces.get(fold.tensor)
        axis = out_space.axis if out_space else 1
        value = fold.value
        if fold.tensor in self.kept:
            value = np.take(value, self.kept[fold.tensor], axis=axis)
        bias = BIAS_INPUT.get(node.op)
        if fold.uniform and bias is not None:
            vec = np.moveaxis(value, axis, -1).reshape(-1, value.shape[axis])[0]
            if node.op == "Gemm":
                vec = vec / float(node.attrs.get("beta", 1.0))
            if len(node.inputs) > bias and isinstance(node.inputs[bias], gs.Constant):
                old = np.asarray(node.inputs[bias].values)
                new = (np.broadcast_to(old, vec.shape) if old.size != vec.size else old.reshape(vec.shape)) + vec
                self.set_const(node, bias, new.reshape(vec.shape) if old.ndim <= 1 else new.reshape(old.shape[:-1] + vec.shape))
            else:
                while len(node.inputs) < bias:
                    node.inputs.append(gs.Variable.empty())
                node.inputs.append(gs.Constant(f"{node.name}.folded_bias", vec.astype(np.float32)))
            return "bias"
        out = node.outputs[0]
        pre = gs.Variable(f"{out.name}.before_fold", dtype=out.dtype)
        node.outputs[0] = pre
        if fold.uniform:
            shape = [1] * value.ndim
            shape[axis] = value.shape[axis]
            value = np.moveaxis(value, axis, -1).reshape(-1, value.shape[axis])[0].reshape(shape)
        const = gs.Constant(f"{node.name}{FOLDED_MAP}", np.ascontiguousarray(value, dtype=np.float32))
        self.gs_graph.nodes.append(gs.Node("Add", f"{node.name}.fold", inputs=[pre, const], outputs=[out]))
        return "bias vector" if fold.uniform else "bias map"

    def export(self, original: onnx.ModelProto) -> onnx.ModelProto:
        g = self.gs_graph
        inputs = {t.name for t in g.inputs}
        outputs = {t.name for t in g.outputs}
        for t in g.tensors().values():
            if isinstance(t, gs.Variable) and t.name not in inputs and t.name not in outputs:
                t.shape = None
        g.cleanup().toposort()
        model = gs.export_onnx(g, do_type_check=False)
        model.ir_version = original.ir_version
        del model.opset_import[:]
        model.opset_import.extend(original.opset_import)
        model.producer_name = original.producer_name or "morphonnx"
        del model.graph.value_info[:]
        return model


@dataclass
class PruneResult:
    """The pruned model, the final masks and what was done; `oracle` is built when first asked for."""

    model: onnx.ModelProto
    groups: Groups
    masks: Masks
    folds: dict[str, str] = field(default_factory=dict)  # consumer node → "bias" | "bias vector" | "bias map"
    revived: dict[int, int] = field(default_factory=dict)  # group → channels kept since not foldable
    notes: list[str] = field(default_factory=list)
    _oracle: Oracle | None = None
    morphed: list[str] = field(default_factory=list)        # static branches replaced by constants
    removed_nodes: list[str] = field(default_factory=list)  # ops of the original that are gone
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (Concat, dead input) pairs

    def removed_layers(self) -> list[str]:
        """Removed ops that had weights (Conv, Gemm, MatMul, BatchNormalization)."""
        sources = {s.node for s in self.groups.plan.sources}
        return [n for n in self.removed_nodes if n in sources]

    @property
    def oracle(self) -> Oracle:
        """The original model with the removed channels silenced (what `model` must compute)."""
        if self._oracle is None:
            self._oracle = oracle_model(self.groups, self.masks)
        return self._oracle


def prune(groups: Groups, masks: Masks, max_rounds: int = 8) -> PruneResult:
    """Rewrite the model with the masks (already legalized): cut channels, delete what only
    computed dead ones, fold the constants removed channels leave behind."""
    masks = masks.copy()
    revived: dict[int, int] = {}
    notes: list[str] = []
    for _ in range(max_rounds):
        removed = removed_by_tensor(groups, masks)
        m = morph(groups, removed)
        if m.blocked:
            notes += revive_blocked(groups, masks, m)
            continue
        folds, revive, oracle, values = compute_folds(groups, masks, m)
        if not revive:
            break
        for gid, chans in revive.items():
            masks.keep[gid][sorted(chans)] = True
            revived[gid] = revived.get(gid, 0) + len(chans)
    else:
        raise RuntimeError("the masks did not settle after several rounds of keeping what cannot be removed")
    rw = _Rewriter(groups, kept_by_tensor(groups, removed), m)
    rw.slice_constants()
    rw.run_hooks()
    rw.drop_dead_inputs()
    morphed = rw.replace_boundaries(values)
    done = {f.node: rw.apply_fold(f) for f in folds if f.node not in m.static_nodes}
    model = rw.export(groups.graph.model)  # shapes stay to the runtime: inferring them would copy every weight
    notes += [f"group {gid}: {n} removed channels kept: their silenced value depends on the input"
              for gid, n in revived.items()]
    result = PruneResult(model, groups, masks, done, revived, notes, oracle)
    result.morphed = morphed
    result.removed_nodes = [n for n in groups.graph.nodes if n not in {x.name for x in model.graph.node}]
    result.dropped = m.dropped
    return result


# ---- the check ------------------------------------------------------------------------------------

@dataclass
class Check:
    """Result of the equivalence check: worst relative error over outputs and inputs."""

    ok: bool
    max_abs_error: float
    max_abs_output: float
    tolerance: float = 1e-4
    checker: str = "passed"

    @property
    def relative(self) -> float:
        """max abs error / max |output|."""
        return self.max_abs_error / max(self.max_abs_output, 1e-30)


def check(graph: Graph, oracle: Oracle, pruned: onnx.ModelProto, seeds=(0, 1, 2),
          tolerance: float = 1e-4) -> Check:
    """Full onnx checker on the pruned model, then oracle vs pruned in onnxruntime (all optimizations)."""
    try:
        onnx.checker.check_model(pruned, full_check=True)
        status = "passed"
    except onnx.checker.ValidationError as e:
        return Check(False, math.inf, 0.0, tolerance, f"failed: {str(e).splitlines()[0]}")
    a, b = oracle.session(), session(pruned)
    err, top = 0.0, 0.0
    outputs = [o.name for o in oracle.model.graph.output]
    for s in seeds:
        feeds = random_inputs(graph, s)
        for x, y in zip(oracle.run(a, feeds, outputs), b.run(outputs, feeds)):
            top = max(top, float(np.max(np.abs(x))))
            err = max(err, float(np.max(np.abs(x.astype(np.float64) - y))))
    return Check(err <= tolerance * top, err, top, tolerance, status)


def summarize(graph_before: Graph, pruned: onnx.ModelProto) -> dict:
    """MACs and params before and after; folded bias maps are constants, not parameters."""
    from .graph import load
    before = cost_model(graph_before)
    after = cost_model(load(pruned))
    maps = sum(math.prod(t.dims) for t in pruned.graph.initializer if t.name.endswith(FOLDED_MAP))
    return {"macs": [before.total("macs"), after.total("macs")], "params": [before.params, after.params - maps],
            "folded_constant_values": maps}


# ---- the whole job ----------------------------------------------------------------------------------

def channel_counts(groups: Groups, masks: Masks) -> tuple[int, int]:
    """Output channels of weight sources (Conv/Gemm/MatMul) before and after the masks."""
    removed = removed_by_tensor(groups, masks)
    before = after = 0
    for s in groups.plan.sources:
        if s.kind == "weight":
            n = groups.plan.spaces[s.tensor].size
            before += n
            after += n - len(removed.get(s.tensor, ()))
    return before, after


def save_model(model: onnx.ModelProto, path, external: bool = False) -> None:
    """Save atomically (temp files in the target directory, then renames); external data as PATH.data."""
    import os
    import shutil
    import tempfile
    from pathlib import Path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = external or model.ByteSize() > 1_800_000_000
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        data = path.name + ".data"
        if external:
            onnx.save_model(model, str(tmpdir / path.name), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data, size_threshold=0)
            os.replace(tmpdir / data, path.parent / data)
        else:
            onnx.save_model(model, str(tmpdir / path.name))
        os.replace(tmpdir / path.name, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def uses_external_data(graph: Graph) -> bool:
    """True if any initializer of the loaded model lives in an external file."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializers.values())


def grow(groups: Groups, widths: np.ndarray) -> onnx.ModelProto:
    """The model with every group at `widths` channels: existing channels keep their weights
    (the first ones, when a group narrows), new ones are freshly initialized (MorphNet retrains
    the expanded network from scratch; this model is for timing and inspection)."""
    from .errors import BadInput
    hooks = [getattr(h, "__qualname__", "") for h in groups.plan.hooks.values()]
    if any(h.startswith(("_slice_bounds", "_grouped_columns")) for h in hooks):
        raise BadInput("expand -o: grouped convolutions and Slices of channels cannot be grown yet "
                       "(the expanded structure can still be written with --json)")
    order = {g.id: widened(g.size, int(widths[g.id])) for g in groups.groups}
    kept = {t: idx for t in groups.plan.spaces for idx in [tensor_order(groups, t, order)] if idx is not None}
    rw = _Rewriter(groups, kept, Morph())
    rw.slice_constants()
    rw.run_hooks()
    return rw.export(groups.graph.model)


def widened(size: int, width: int) -> np.ndarray:
    """Group channels of a group resized to `width`: the first ones kept, -1 for each new one."""
    return np.array(list(range(min(width, size))) + [-1] * max(0, width - size), dtype=np.int64)


def tensor_order(groups: Groups, tensor: str, order: dict[int, np.ndarray]) -> np.ndarray | None:
    """Old channel (or -1 for a new one) at each channel of a tensor, given each group's new
    order of group channels; None if the tensor does not change.

    The tensor's channels are walked in order, one run per group (a concat holds several);
    each run is laid out in its group's new order.
    """
    eg = groups.element_group[groups.plan.ids(tensor)]
    out, c, changed = [], 0, False
    while c < len(eg):
        gid, start = int(eg[c, 0]), c
        while c < len(eg) and eg[c, 0] == gid:
            c += 1
        size = groups.groups[gid].size
        by_k: dict[int, list[int]] = {}
        for ch in range(start, c):
            by_k.setdefault(int(eg[ch, 1]), []).append(ch)
        m = max(1, (c - start) // size)
        for k in order[gid].tolist():
            out += by_k.get(k, []) if k >= 0 else [-1] * m
        changed |= not np.array_equal(order[gid], np.arange(size))
    return np.array(out, dtype=np.int64) if changed else None
