"""Rewrite: apply masks to the ONNX model.

Constants are sliced along the channels each tensor keeps, channel rules' hooks fix
attributes and shape constants, dead concat inputs and dead branches go (topology.py), and
the constants removed channels leave behind are absorbed into their consumers (absorb.py).
The result computes what the oracle of the applied masks computes (oracle.py, verify.py).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import os
import shutil
import tempfile
import weakref
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from .absorb import BIAS_INPUT, Fold, compute_folds
from .costs import FOLDED_MAP, cost_model, exporter_zero_bias
from .graph import Graph
from .groups import Groups
from .masks import Masks
from .oracle import Oracle, expand_channels, kept_by_tensor, oracle_model, removed_by_tensor
from .topology import Morph, compact, morph, revive_blocked
from .weights import STREAM_BYTES, Deferred, external_bytes, stream_constants

FOLDED_BIAS = ".folded_bias"


def take_or_init(value: np.ndarray, idx: np.ndarray, axis: int, rng: np.random.Generator) -> np.ndarray:
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


class RewriteContext:
    """What a channel rule's rewrite hook may read and change on one gs node."""

    def __init__(self, rewriter: "Rewriter", node: gs.Node):
        self.rw = rewriter
        self.node = node

    def _name(self, t) -> str:
        return t if isinstance(t, str) else t.name

    def kept(self, t) -> np.ndarray | None:
        """Kept channel indices of a tensor, None if it keeps all (or has no channels)."""
        return self.rw.kept.get(self._name(t))

    @property
    def growing(self) -> bool:
        """True when the rewrite grows the model (new channels are -1, widths may narrow)."""
        return self.rw.growing

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


def _import_with_weights(graph: Graph, defer: bool = False) -> gs.Graph:
    """The graph as an onnx-graphsurgeon Graph whose detached weights are Constants (no proto
    copies); with `defer`, large external ones are `Deferred`: read and changed only when written."""
    g = gs.import_onnx(graph.model)
    tensors = g.tensors()
    detached = {n for n in graph.initializers if n in tensors and isinstance(tensors[n], gs.Variable)}
    g.inputs = [t for t in g.inputs if t.name not in detached]
    for n in detached:
        t = graph.initializers[n]
        if defer and t.data_location == onnx.TensorProto.EXTERNAL:
            dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
            tensors[n].to_constant(Deferred(n, lambda n=n: graph.array(n), t.dims, dtype))
        else:
            tensors[n].to_constant(graph.array(n))
    return g


def _dtype_of(const: gs.Constant) -> np.dtype:
    """A constant's element type, without loading a lazy one."""
    v = const._values
    return np.dtype(v.dtype) if isinstance(v, (np.ndarray, Deferred)) else np.asarray(const.values).dtype


class Rewriter:
    def __init__(self, groups: Groups, kept: dict[str, np.ndarray], m: Morph, folder: Path | None = None):
        self.groups = groups
        self.plan = groups.plan
        self.kept = kept
        self.morph = m
        # with a folder: weights stream from the file's external data to a data file there
        self.folder = folder
        self.gs_graph = _import_with_weights(groups.graph, defer=folder is not None)
        self.nodes = {n.name: n for n in self.gs_graph.nodes}
        self._weights: dict[str, str] | None = None
        # LayerNorm → its removed channels' values (None when growing: norms stay plain)
        self.norm_values: dict[str, np.ndarray] | None = {}
        self.growing = False  # a grown model (`grow`): kept indices may be -1 (new channels)

    def set_const(self, node: gs.Node, i: int, value: np.ndarray) -> None:
        old = node.inputs[i]
        if not isinstance(value, Deferred):
            value = np.ascontiguousarray(value, dtype=_dtype_of(old))
        # shared with another node, or read at another input of this one (an exporter that reuses
        # a BN's scale as its running variance): the change goes to a private copy
        if any(user is not node for user in old.outputs) or sum(t is old for t in node.inputs) > 1:
            node.inputs[i] = gs.Constant(f"{old.name}.{node.name}.{i}", value)
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
                value = node.inputs[i]._values
                if not isinstance(value, Deferred):
                    value = np.asarray(node.inputs[i].values)
                for sl in sls:
                    idx = expand_channels(self.kept[sl.tensor], self.plan.spaces[sl.tensor].block)
                    value = self._take(value, idx, sl.axis, node.inputs[i].name)
                self.set_const(node, i, value)

    def _take(self, value: np.ndarray | Deferred, idx: np.ndarray, axis: int, name: str) -> np.ndarray | Deferred:
        """Entries `idx` along `axis` (`take_or_init`: new channels drawn from a generator of the
        weight's own, so that a grown model is the same whether its weights stream or not)."""
        if not isinstance(value, Deferred):
            return take_or_init(value, idx, axis, np.random.default_rng(zlib.crc32(name.encode())))
        shape = list(value.shape)
        shape[axis] = len(idx)
        return value.then(lambda v, rng=value.rng(): take_or_init(v, idx, axis, rng), shape)

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
                value = np.take(value, expand_channels(self.kept[name], space.block), axis=space.axis)
            var = tensors[name]
            for node in [n for n in list(var.outputs) if n.name not in self.morph.static_nodes]:
                const = compact(value, node.op in ("Add", "Sub", "Mul", "Div"))
                branch = f"the branch ending in {self._last_layer(name)}"
                if node.op in ("Add", "Sub") and not np.any(const) and self._bypass(node, var):
                    notes.append(f"{branch} is constant zero: {node.op} '{node.name}' removed")
                    continue
                cname = f"{name}.static" if f"{name}.static" not in tensors else f"{name}.static.{node.name}"
                c = gs.Constant(cname, np.ascontiguousarray(const))  # one per consumer: values may differ
                tensors[cname] = c
                node.inputs = [c if t is var else t for t in node.inputs]
                notes.append(f"{branch} is constant: {node.op} '{node.name}' adds its value"
                             if node.op == "Add" else f"{branch} is constant: {node.op} '{node.name}' reads its value")
        return notes

    def _last_layer(self, tensor: str) -> str:
        """The weight name of the nearest layer that computes `tensor` (for the report)."""
        graph = self.groups.graph
        if self._weights is None:
            self._weights = {s.node: s.weight or s.node for s in self.plan.sources if s.kind == "weight"}
        weights = self._weights
        seen, todo = set(), deque([tensor])
        while todo:
            t = todo.popleft()
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

    def _dtype(self, node: gs.Node) -> np.dtype:
        """The element type of a node's output (what a folded constant must match)."""
        info = self.groups.graph.info(node.outputs[0].name)
        return (info.dtype if info is not None and info.dtype is not None else None) or np.dtype(np.float32)

    def apply_fold(self, fold: Fold) -> str:
        node = self.nodes[fold.node]
        dtype = self._dtype(node)
        out_space = self.plan.spaces.get(fold.tensor)
        axis = out_space.axis if out_space else 1
        value = fold.value
        if fold.uniform:  # one vector: keep a single position
            value = value[tuple(slice(None) if i == axis else slice(0, 1) for i in range(value.ndim))]
        if fold.tensor in self.kept:
            value = np.take(value, self.kept[fold.tensor], axis=axis)
        bias = BIAS_INPUT.get(node.op)
        has = bias is not None and len(node.inputs) > bias and node.inputs[bias].name != ""
        # Into the op's own bias input, when it has none or a constant one (a computed bias, or a
        # Gemm with beta 0, gets an Add after the op instead).
        settable = bias is not None and (not has or isinstance(node.inputs[bias], gs.Constant)) and \
            not (node.op == "Gemm" and float(node.attrs.get("beta", 1.0)) == 0.0)
        if fold.uniform and settable:
            vec = np.moveaxis(value, axis, -1).reshape(-1, value.shape[axis])[0]
            if node.op == "Gemm":
                vec = vec / float(node.attrs.get("beta", 1.0))
            if has:
                old = np.asarray(node.inputs[bias].values)
                new = (np.broadcast_to(old, vec.shape) if old.size != vec.size else old.reshape(vec.shape)) + vec
                self.set_const(node, bias, new.reshape(vec.shape) if old.ndim <= 1 else new.reshape(old.shape[:-1] + vec.shape))
            else:
                while len(node.inputs) <= bias:
                    node.inputs.append(gs.Variable.empty())
                node.inputs[bias] = gs.Constant(f"{node.name}{FOLDED_BIAS}", vec.astype(dtype))
            return "bias"
        out = node.outputs[0]
        pre = gs.Variable(f"{out.name}.before_fold", dtype=out.dtype)
        node.outputs[0] = pre
        const = gs.Constant(f"{node.name}{FOLDED_MAP}", np.ascontiguousarray(value, dtype=dtype))
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
        if self.folder is not None:
            stream_constants(g, self.folder)
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
    # where `model`'s external data lies (a model over memory: its weights were streamed there)
    base_dir: Path | None = None

    def removed_layers(self) -> list[str]:
        """Removed ops that had weights (Conv, Gemm, MatMul, BatchNormalization)."""
        sources = {s.node for s in self.groups.plan.sources}
        return [n for n in self.removed_nodes if n in sources]

    def check(self, seeds=(0, 1, 2), tolerance: float | None = None) -> "Check":
        """`verify.check` of `model` against the oracle."""
        from .verify import check
        return check(self.groups.graph, self.oracle, self.model, seeds, tolerance, self.base_dir)

    def save(self, path: str | os.PathLike, data_name: str | None = None) -> None:
        """Write `model` to `path` (`output.write_model`); a model rewritten from external data
        writes its weights to `data_name` (default: the file name + `.data`) beside it."""
        from .output import write_model
        if self.base_dir is not None and data_name is None:
            data_name = Path(path).name + ".data"
        write_model(self.model, path, data_name, self.base_dir)

    @property
    def oracle(self) -> Oracle:
        """The original model with the removed channels silenced (what `model` must compute)."""
        if self._oracle is None:
            self._oracle = oracle_model(self.groups, self.masks)
        return self._oracle


def weights_folder(graph: Graph, owner: object, workdir: str | os.PathLike | None = None,
                   stream: bool | None = None) -> Path | None:
    """A temporary folder (in `workdir`, default the system's) for the streamed weights of a
    model with external data, removed with `owner`; None where the rewrite holds the weights
    (`stream` False, no external data, or by default external data under STREAM_BYTES)."""
    if stream is False or not graph.external_files():
        return None
    if stream is None and external_bytes(graph) < STREAM_BYTES:
        return None
    folder = Path(tempfile.mkdtemp(prefix=".morphonnx.", dir=workdir))
    weakref.finalize(owner, shutil.rmtree, folder, True)
    return folder


def prune(groups: Groups, masks: Masks, max_rounds: int = 8, workdir: str | os.PathLike | None = None,
          stream: bool | None = None) -> PruneResult:
    """Rewrite the model with the masks (already legalized): cut channels, delete what only
    computed dead ones, fold the constants removed channels leave behind.

    A model with external data (with `stream`; by default over STREAM_BYTES of it) is rewritten
    weight by weight: `model` then refers to a data file in `base_dir`, a temporary folder in
    `workdir` (where the model will be written, so that the file moves there), removed with the
    result: write it with `save`, check it with `check`."""
    masks = masks.copy()
    revived: dict[int, int] = {}
    notes: list[str] = []
    for _ in range(max_rounds):
        removed = removed_by_tensor(groups, masks)
        m = morph(groups, removed)
        if m.blocked:
            notes += revive_blocked(groups, masks, m)
            continue
        folds, revive, oracle, values = compute_folds(groups, masks, m, removed=removed)
        if not revive:
            break
        for gid, chans in revive.items():
            masks.keep[gid][sorted(chans)] = True
            revived[gid] = revived.get(gid, 0) + len(chans)
    else:
        raise RuntimeError("the masks did not settle after several rounds of keeping what cannot be removed")
    result = PruneResult(None, groups, masks)
    rw = Rewriter(groups, kept_by_tensor(groups, removed), m, weights_folder(groups.graph, result, workdir, stream))
    rw.norm_values = {f.node: f.value for f in folds if f.raw}
    folds = [f for f in folds if not f.raw]
    rw.slice_constants()
    rw.run_hooks()
    rw.drop_dead_inputs()
    morphed = rw.replace_boundaries(values)
    done = {f.node: rw.apply_fold(f) for f in folds if f.node not in m.static_nodes}
    model = rw.export(groups.graph.model)  # shapes stay to the runtime: inferring them would copy every weight
    drop_zero_biases(groups.graph, model, rw.folder)
    notes += [f"group {gid}: {n} removed channels kept: their silenced value depends on the input"
              for gid, n in revived.items()]
    result.model, result.folds, result.revived, result.notes, result._oracle = model, done, revived, notes, oracle
    result.base_dir = rw.folder
    result.morphed = morphed
    left = {x.name for x in model.graph.node}
    result.removed_nodes = [n for n in groups.graph.nodes if n not in left]
    result.dropped = m.dropped
    return result


def drop_zero_biases(graph: Graph, model: onnx.ModelProto, base_dir: Path | None = None) -> None:
    """Remove the bias input of a Conv/ConvTranspose whose bias the original computed from no
    parameter (an exporter's Expand of a scalar zero for `bias=False`) and that is still all
    zero: the rewrite would otherwise store it, and it would count as parameters it never was."""
    from onnx import numpy_helper
    inits = {t.name: t for t in model.graph.initializer}
    dropped: set[str] = set()
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose") or len(n.input) < 3 or n.name not in graph.nodes:
            continue
        was = graph.nodes[n.name]
        if len(was.input) < 3 or not was.input[2] or not exporter_zero_bias(graph, was, 2):
            continue
        t = inits.get(n.input[2])  # still all zero in the pruned model (a fold may have filled it)
        if t is not None and (not t.external_data or base_dir is not None) and \
                not numpy_helper.to_array(t, str(base_dir or "")).any():
            dropped.add(n.input[2])
            del n.input[2]
    used = {t for n in _all_nodes(model.graph) for t in n.input}
    keep = [t for t in model.graph.initializer if t.name not in dropped or t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _all_nodes(graph: onnx.GraphProto):
    """The nodes of a graph and of its subgraphs."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _all_nodes(g)


def summarize(graph_before: Graph, pruned: onnx.ModelProto, base_dir: Path | None = None, **load_kw) -> dict:
    """MACs, FLOPs and params before and after (the figures `analyze` gives for each file, the
    pruned one loaded as the original was: `load_kw`; its external data in `base_dir`), and the values of the bias maps folded in
    for removed channels (counted in params)."""
    from .graph import load, symbolic_dims
    before = cost_model(graph_before)
    if load_kw.get("dims"):  # a model written at the --dim values has none of them left
        load_kw = {**load_kw, "dims": {k: v for k, v in load_kw["dims"].items() if k in symbolic_dims(pruned)}}
    after = cost_model(load(pruned, base_dir=base_dir, **load_kw))
    return {"macs": [before.total("macs"), after.total("macs")], "flops": [before.total("flops"), after.total("flops")],
            "params": [before.params, after.params], "folded_constant_values": after.folded_values}


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
