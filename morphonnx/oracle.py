"""The oracle of a set of masks: the original model with every removed channel silenced.

DESIGN.md's contract: a pruned model computes what its oracle computes. A BatchNormalization
source gets scale 0 for a removed channel (its output becomes the constant shift); a
Conv/Gemm/MatMul source without its own BN gets zero weight rows and bias entries. Also here:
which channels of which tensor die, random graph inputs, and onnxruntime sessions.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from .channels import Slicing
from .graph import Graph
from .groups import Groups
from .masks import Masks

def expand_channels(channels: np.ndarray, block: int) -> np.ndarray:
    """Channel indices to entry indices of a blocked axis (-1, a new channel, stays -1)."""
    if block == 1:
        return channels
    entries = channels[:, None] * block + np.arange(block)
    return np.where(channels[:, None] < 0, -1, entries).ravel()


def removed_by_tensor(groups: Groups, masks: Masks) -> dict[str, np.ndarray]:
    """Tensor → its removed channel indices (only tensors that lose channels)."""
    out: dict[str, list[np.ndarray]] = {}
    for g in groups.groups:
        dead = masks.removed(g.id)
        if not dead.size:
            continue
        for t in g.members:
            out.setdefault(t, []).append(g.channels_of(t, dead))
    return {t: np.unique(np.concatenate(v)) for t, v in out.items() if sum(len(a) for a in v)}


def kept_by_tensor(groups: Groups, removed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensor → its kept channel indices, for tensors that lose channels."""
    spaces = groups.plan.spaces
    out = {}
    for t, r in removed.items():
        keep = np.ones(spaces[t].size, dtype=bool)
        keep[r] = False
        out[t] = np.flatnonzero(keep)
    return out


def own_bn(graph: Graph, tensor: str) -> str | None:
    """The BatchNormalization node that alone reads a source's output (its own BN), if any."""
    users = graph.consumers.get(tensor, [])
    return users[0] if len(users) == 1 and graph.nodes[users[0]].op_type == "BatchNormalization" else None


def bias_add(groups: Groups, tensor: str) -> tuple[str, int] | None:
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
    ones, fed to onnxruntime as inputs so that no session serializes them (made for each run,
    not held: see `Weights`). `kept` and `spaces`
    say which channels of each tensor the pruned model keeps and where (axis, entries per
    channel), so that any tensor of the pruned model can be compared with the oracle's.
    """

    model: onnx.ModelProto
    weights: Mapping[str, np.ndarray]  # `Weights`: made for each run
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    spaces: dict[str, tuple[int, int]] = field(default_factory=dict)
    _session: tuple[frozenset, "ort.InferenceSession"] | None = field(default=None, repr=False)

    def restrict(self, tensor: str, value: np.ndarray) -> np.ndarray:
        """The oracle's value of `tensor` on the channels the pruned model keeps."""
        if tensor not in self.kept:
            return value
        axis, block = self.spaces[tensor]
        return np.take(value, expand_channels(self.kept[tensor], block), axis=axis)

    def session(self, extra: Sequence[str] = ()) -> "ort.InferenceSession":
        """An onnxruntime session of the oracle whose outputs include `extra` tensors. One session
        serves every later call asking for no more (creating one costs more than running it)."""
        names = frozenset(extra) | {o.name for o in self.model.graph.output}
        if self._session is None or not names <= self._session[0]:
            names |= self._session[0] if self._session else frozenset()
            model = with_outputs(self.model, sorted(names)) if extra or self._session else self.model
            self._session = (names, session(model, optimize=False))
        return self._session[1]

    def run(self, sess: "ort.InferenceSession", feeds: Sequence[dict[str, np.ndarray]], outputs=None
            ) -> list[list[np.ndarray]]:
        """Run once for each dict of graph inputs in `feeds` (the weights made once for all)."""
        weights = dict(self.weights)
        return [run(sess, {**f, **weights}, outputs) for f in feeds]

    def close(self) -> None:
        """Let the session go (a later call makes another)."""
        self._session = None

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


class Weights(Mapping):
    """The weights an oracle feeds as inputs, made when a run asks for them: a stored weight is
    read (a memory map of external data), a silenced one copied with its edits applied. Nothing
    is held between runs, so a model over memory costs one copy of its weights while it runs."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.sources: dict[str, str | np.ndarray] = {}  # name → the graph's constant, or a value
        self.edits: dict[str, list[Callable[[np.ndarray], None]]] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        src = self.sources[name]
        value = self.graph.array(src) if isinstance(src, str) else src
        edits = self.edits.get(name)
        if edits:
            value = np.array(value)
            for edit in edits:
                edit(value)
        return value

    def __iter__(self):
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)


def _zero_along(axis: int, dead: np.ndarray, fill) -> Callable[[np.ndarray], None]:
    def edit(v: np.ndarray) -> None:
        index = [slice(None)] * v.ndim
        index[axis] = dead
        v[tuple(index)] = fill
    return edit


def oracle_model(groups: Groups, masks: Masks, removed: dict[str, np.ndarray] | None = None) -> Oracle:
    """Build the oracle of these masks (`removed`: their `removed_by_tensor`, if already known)."""
    graph, plan = groups.graph, groups.plan
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    in_model = {t.name: t for t in model.graph.initializer}
    weights = Weights(graph)
    weights.sources = {n: n for n in graph.initializers if n not in in_model and n in graph.consumers}
    unused = {n for n in graph.initializers if n not in in_model and n not in graph.consumers}
    inputs = [i for i in model.graph.input if i.name not in unused]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    removed = removed_by_tensor(groups, masks) if removed is None else removed
    sources: dict[tuple[str, int], str | np.ndarray] = {}  # (node, input) → what it reads, before edits
    edits: dict[tuple[str, int], list] = {}

    def edit(key: tuple[str, int], change) -> None:
        if key not in sources:
            sources[key] = graph.nodes[key[0]].input[key[1]]
        edits.setdefault(key, []).append(change)

    for s in plan.sources:
        dead = removed.get(s.tensor)
        if dead is None or (s.kind == "weight" and own_bn(graph, s.tensor) is not None):
            continue
        node = graph.nodes[s.node]
        wanted = [sl for sl in plan.slicings.get(s.node, []) if sl.tensor == s.tensor]
        if s.kind == "bn":
            wanted = [sl for sl in wanted if sl.input == 1]
        bias = bias_add(groups, s.tensor) if s.op_type == "MatMul" else None
        if bias is not None:
            wanted.append(Slicing(bias[1], plan.slicings[bias[0]][0].axis, s.tensor, node=bias[0]))
        shift = masks.silenced.get(s.node)
        for sl in wanted:
            is_bias = sl.input == 2 or sl.node is not None
            fill = shift[dead] if shift is not None and is_bias else 0
            edit((sl.node or s.node, sl.input), _zero_along(sl.axis, dead, fill))
        if shift is not None and s.op_type in ("Conv", "Gemm") and not (len(node.input) > 2 and node.input[2]):
            bias = np.zeros(plan.spaces[s.tensor].size, dtype=graph.info(s.tensor).dtype or np.float32)
            bias[dead] = shift[dead]
            sources[(s.node, 2)] = bias  # the silenced channel outputs its shift: give the op a bias
    for sl in plan.silenced:  # a stream norm's scale and bias: 0 at removed channels
        dead = removed.get(sl.tensor)
        if dead is not None:
            edit((sl.node, sl.input), _zero_along(sl.axis, dead, 0))
    nodes = {n.name: n for n in model.graph.node}
    for key, src in sources.items():
        node_name, i = key
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
            value = np.array(graph.array(src) if isinstance(src, str) else src)
            for change in edits.get(key, []):
                change(value)
            t.CopyFrom(numpy_helper.from_array(value.astype(helper.tensor_dtype_to_np_dtype(t.data_type)), name))
            continue
        new = name not in weights.sources
        weights.sources[name] = src
        weights.edits[name] = edits.get(key, [])
        if new:
            value = graph.array(src) if isinstance(src, str) else src  # a map: only its shape is read
            model.graph.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
    spaces = {t: (plan.spaces[t].axis, plan.spaces[t].block) for t in removed}
    return Oracle(model, weights, kept_by_tensor(groups, removed), spaces)


# ---- running models -------------------------------------------------------------------------------

def random_inputs(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """Random values for every graph input at the graph's static shapes.

    The scale changes with the seed as real inputs do: normalized (N(0, 1)), raw pixels
    (U(0, 1)), and wide (N(0.5, 2)). Integer inputs that index a table (a Gather's indices,
    token ids) stay inside it; other integer inputs are 0 or 1.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        info = graph.info(name)
        shape = graph.static_shape(name, "graph input")
        dtype = info.dtype or np.float32
        if np.issubdtype(dtype, np.floating):
            x = (rng.standard_normal(shape), rng.random(shape), 0.5 + 2 * rng.standard_normal(shape))[seed % 3]
            feeds[name] = x.astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, _index_bound(graph, name), shape).astype(dtype)
    return feeds


def _index_bound(graph: Graph, name: str) -> int:
    """The size of the table an integer input indexes (Gather data along its axis), else 2."""
    for user in graph.consumers.get(name, []):
        node = graph.nodes[user]
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
            info = graph.info(node.input[0])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if info is not None and info.shape and isinstance(info.shape[axis], int):
                return max(1, info.shape[axis])
    return 2


def session(model: onnx.ModelProto | str | os.PathLike, optimize: bool = True,
            base_dir: str | os.PathLike | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session of a model or a model file (all graph optimizations on by
    default). A ModelProto with external data opens from a file written in `base_dir`, where
    its data lies (onnxruntime finds external data beside the model file only)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(os.fspath(model), opts, providers=["CPUExecutionProvider"])
    if base_dir is None:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    fd, file = tempfile.mkstemp(suffix=".onnx", dir=base_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(model.SerializeToString())
        return ort.InferenceSession(file, opts, providers=["CPUExecutionProvider"])
    finally:
        os.unlink(file)


def run(sess: "ort.InferenceSession", feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
    """`sess.run` through an IO binding: onnxruntime's `run` checks each input name against a
    list of the feeds, quadratic in the thousands of weights an oracle is fed."""
    io = sess.io_binding()
    for name, value in feeds.items():
        io.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in outputs if outputs is not None else [o.name for o in sess.get_outputs()]:
        io.bind_output(name)
    sess.run_with_iobinding(io)
    return io.copy_outputs_to_cpu()


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    return m
