"""Constant folding: every tensor whose value does not depend on the graph inputs becomes a constant.

Exporters route constants through nodes: shape clutter (Shape → Expand → CastLike chains), a
parameter re-laid out (Transpose of a Linear weight), a parameter routed through Identity (the
TorchScript exporter deduplicates equal initializers and gives every duplicate an Identity
of the first), a weight computed from parameters (weight standardization). All of them are
folded into constants that the ops read directly, so that channel rules and the rewriter can
slice them.

Parameters keep their names and their count (as the framework counts them):
- a re-layout of a parameter (Transpose, Reshape, Identity, Squeeze, Unsqueeze) is that
  parameter (`origins`); its value is a numpy view, never a copy;
- an Identity of a parameter that other ops also read is a duplicate the exporter merged: a
  parameter of its own, under the Identity's output name (`twins`);
- a constant computed from parameters (`derived`) counts those parameters, once each.
Nodes that compute only from metadata (tensor shapes and element types) and small constants
are evaluated with onnx's reference evaluator, bounded in size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

MAX_FOLDED_ELEMENTS = 1 << 16  # a shape computation is small; a causal mask (S x T) is an activation
METADATA_INPUTS = {"Shape": (0,), "Size": (0,), "CastLike": (1,)}  # inputs read only for shape or type
LAYOUT = ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten")
# Not constant although they read no graph input.
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}


@dataclass
class Folded:
    """What one folding pass did: values kept outside the model (parameters and what derives
    from them) and where each folded constant comes from."""

    values: dict[str, np.ndarray] = field(default_factory=dict)   # param-derived constants, outside the model
    origins: dict[str, str] = field(default_factory=dict)        # folded constant → the parameter it names
    derived: dict[str, tuple[str, ...]] = field(default_factory=dict)  # folded constant → parameters it counts
    twins: set[str] = field(default_factory=set)                 # merged duplicates: parameters of their own
    folded: int = 0                                              # nodes removed

    def update(self, other: "Folded") -> None:
        """Merge a later pass."""
        self.values.update(other.values)
        self.origins.update(other.origins)
        self.derived.update(other.derived)
        self.twins |= other.twins
        self.folded += other.folded


def _static(vi: onnx.ValueInfoProto | None) -> tuple[int, ...] | None:
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = vi.type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims) if all(d.HasField("dim_value") for d in dims) else None


class _ValueInfos(dict):
    """The graph's value infos by name; an initializer's is made when first asked for."""

    def __init__(self, g: onnx.GraphProto):
        super().__init__((vi.name, vi) for vi in list(g.value_info) + list(g.input) + list(g.output))
        self._stored = {t.name: t for t in g.initializer}

    def get(self, name: str, default=None):
        t = self._stored.get(name)
        if t is not None:  # an initializer's own dims win over a stale value info
            self[name] = helper.make_tensor_value_info(name, t.data_type, list(t.dims))
            del self._stored[name]
        return super().get(name, default)


def is_parameter(t: onnx.TensorProto) -> bool:
    """A float tensor with more than one element (what frameworks train)."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    return t.data_type in floats and math.prod(t.dims) > 1


def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Constant nodes become initializers (in place), so that every op reads its constants directly."""
    g = model.graph
    outputs = {o.name for o in g.output}
    keep = []
    for node in g.node:
        value = constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if value is None or len(node.output) != 1 or node.output[0] in outputs:
            keep.append(node)
            continue
        t = onnx.TensorProto()
        t.CopyFrom(value)
        t.name = node.output[0]
        g.initializer.append(t)
    del g.node[:]
    g.node.extend(keep)


def constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node outputs, None for forms without one (sparse, strings)."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            value = helper.get_attribute_value(a)
            dtype = np.float32 if "float" in a.name else np.int64
            return numpy_helper.from_array(np.asarray(value, dtype=dtype))
    return None


def _foldable_op(node: onnx.NodeProto) -> bool:
    return (node.domain in ("", "ai.onnx") and node.op_type not in NONDETERMINISTIC and node.op_type != "Constant"
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute))


def fold_constants(model: onnx.ModelProto, weights: dict[str, onnx.TensorProto] | None = None,
                   base_dir: str | None = None, values: dict[str, np.ndarray] | None = None,
                   derived: dict[str, tuple[str, ...]] | None = None) -> Folded:
    """Fold every node whose inputs are all constant, in place.

    `weights` are initializers kept outside the model (see graph.load) and `values` the
    param-derived constants of earlier passes (also outside the model, with typed graph inputs
    standing in for them), `derived` the parameters behind those. Param-derived results join them (returned in `Folded.values`, with
    a typed graph input each); the others become initializers of the model.
    """
    weights = weights or {}
    values = values if values is not None else {}
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    inits.update(weights)
    users: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            users[t] = users.get(t, 0) + 1
    info = _ValueInfos(g)

    def params_of(t: str) -> tuple[str, ...]:
        if t in prior_derived:
            return prior_derived[t]
        return (t,) if t in inits and is_parameter(inits[t]) else ()

    prior_derived = dict(derived or {})
    known = set(inits) | set(values)
    out = Folded()
    evaluate: list[onnx.NodeProto] = []      # nodes for the reference evaluator
    relayouts: list[onnx.NodeProto] = []     # re-layouts of param-derived values (numpy views)
    graph_outputs = {o.name for o in g.output}
    for node in g.node:
        if not _foldable_op(node) or any(o in graph_outputs for o in node.output):
            continue
        meta = METADATA_INPUTS.get(node.op_type, ())
        reads = [t for i, t in enumerate(node.input) if t and i not in meta]
        if not all(t in known for t in reads):
            continue
        if meta:
            node = _without_metadata(node, info)
            if node is None:
                continue
        params = tuple(dict.fromkeys(p for t in reads for p in params_of(t)))
        heavy = [t for t in reads if t in values or (t in inits and is_parameter(inits[t]))]
        if params or heavy:
            first = node.input[0] if node.input else ""
            laid_out = node.op_type in ("Identity", "Transpose") or _static(info.get(node.output[0])) is not None
            if node.op_type in LAYOUT and heavy == [first] and laid_out:
                o = node.output[0]
                if node.op_type == "Identity" and first in inits and params == (first,) and users.get(first, 0) > 1:
                    out.twins.add(o)  # a merged duplicate: a parameter of its own
                    params = (o,)
                else:
                    out.origins[o] = _root(first, out.origins)
                if params:
                    out.derived[o] = prior_derived[o] = params
                relayouts.append(node)
                known.add(o)
                continue
            shapes = [_static(info.get(o)) for o in node.output if o]
            biggest = max([math.prod(inits[t].dims) if t in inits else values[t].size for t in heavy] + [0])
            if any(s is None or math.prod(s) > max(MAX_FOLDED_ELEMENTS, biggest) for s in shapes):
                continue
            for o in node.output:
                if o:
                    out.derived[o] = params
                    prior_derived[o] = params
            if params:
                main = max(params, key=lambda p: math.prod(inits[p].dims) if p in inits else 0)
                out.origins.update((o, main) for o in node.output if o)
        else:  # an output of unknown size waits for the next pass's shapes (it may be a whole mask)
            shapes = [_static(info.get(o)) for o in node.output if o]
            if any(s is None or math.prod(s) > MAX_FOLDED_ELEMENTS for s in shapes):
                continue
        evaluate.append(node)
        known.update(o for o in node.output if o)
    if not evaluate and not relayouts:
        return out
    computed: dict[str, np.ndarray] = {}
    heavy_values = dict(values)
    for n in relayouts:  # in file order, so chains of re-layouts see their inputs
        x = heavy_values.get(n.input[0])
        if x is None:
            x = numpy_helper.to_array(inits[n.input[0]], base_dir or "")
        heavy_values[n.output[0]] = computed[n.output[0]] = _relayout(n, x, info)
    if evaluate:
        computed.update(_evaluate(evaluate, inits, heavy_values, model, base_dir))
    param_derived = {o for o in computed if out.derived.get(o) or o in out.twins or o in out.origins}
    done = set(computed)
    keep = [n for n in g.node if not any(o in done for o in n.output)]
    out.folded = len(g.node) - len(keep)
    del g.node[:]
    g.node.extend(keep)
    needed = {t for n in keep for t in n.input} | {o.name for o in g.output}
    out.values = {o: computed[o] for o in param_derived if o in needed}
    g.initializer.extend(numpy_helper.from_array(np.asarray(computed[o]), o)
                         for o in computed if o not in param_derived and o in needed)
    listed = {i.name for i in g.input}
    g.input.extend(helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                   for o, v in out.values.items() if o not in listed)
    return out


def _root(name: str, origins: dict[str, str]) -> str:
    while name in origins:
        name = origins[name]
    return name


def _relayout(n: onnx.NodeProto, value: np.ndarray, info: dict) -> np.ndarray:
    """A re-layout with numpy: a view (copied only if the rewrite needs it)."""
    if n.op_type == "Identity":
        return value
    if n.op_type == "Transpose":
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
        return np.transpose(value, perm)
    shape = _static(info.get(n.output[0]))
    if shape is None:
        raise ValueError(f"re-layout {n.name}: output shape unknown")
    return value.reshape(shape)


def _evaluate(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto], heavy: dict[str, np.ndarray],
              model: onnx.ModelProto, base_dir: str | None) -> dict[str, np.ndarray]:
    """Values of the nodes' outputs with the reference evaluator; parameters and param-derived
    values are fed as inputs (no proto copies), small constants are initializers."""
    produced = {o for n in nodes for o in n.output if o}
    read = [t for t in dict.fromkeys(t for n in nodes for t in n.input if t) if t not in produced]
    feeds = {}
    initializers = []
    for t in read:
        if t in heavy:
            feeds[t] = heavy[t]
        elif t in inits and (is_parameter(inits[t]) or inits[t].data_location == onnx.TensorProto.EXTERNAL):
            feeds[t] = numpy_helper.to_array(inits[t], base_dir or "")
        elif t in inits:
            initializers.append(inits[t])
    outputs = [o for n in nodes for o in n.output if o]
    quick = _numpy_run(nodes, {**feeds, **{t.name: numpy_helper.to_array(t) for t in initializers}})
    if quick is not None:
        return {o: quick[o] for o in outputs}
    sub = helper.make_model(
        helper.make_graph(nodes, "fold",
                          [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                           for t, v in feeds.items()],
                          [helper.make_tensor_value_info(o, 0, None) for o in outputs], initializer=initializers),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    from onnx.reference import ReferenceEvaluator  # slow to import; few models need it
    return dict(zip(outputs, (np.asarray(v) for v in ReferenceEvaluator(sub).run(None, feeds))))


def _numpy_shape_op(op: str, x: list, a: dict) -> np.ndarray | None:
    """The few ops exporters leave on constants (broadcast BN stats, shape arithmetic), in numpy."""
    if op == "Identity":
        return x[0]
    if op == "Cast":
        to = helper.tensor_dtype_to_np_dtype(a["to"])
        return x[0].astype(to) if to.kind in "fiub" and (x[0].dtype.kind in "iub" or to.kind == "f") else None
    if op == "Expand":
        return np.array(np.broadcast_to(x[0], np.broadcast_shapes(x[0].shape, tuple(int(d) for d in x[1]))))
    if op == "Reshape":
        shape = [x[0].shape[i] if d == 0 and not a.get("allowzero", 0) else int(d) for i, d in enumerate(x[1])]
        return x[0].reshape(shape)
    if op == "Concat":
        return np.concatenate(x, axis=a["axis"])
    if op in ("Unsqueeze", "Squeeze"):
        axes = [int(v) for v in (x[1] if len(x) > 1 else a.get("axes", []))]
        if op == "Squeeze":
            return np.squeeze(x[0], axis=tuple(axes) if axes else None)
        return np.expand_dims(x[0], tuple(axes))
    return None


def _numpy_run(nodes: list[onnx.NodeProto], values: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Values of the nodes' outputs if every node is a Constant or one of `_numpy_shape_op`'s ops,
    else None (the reference evaluator runs them: importing it costs more than most folds)."""
    values = dict(values)
    for n in nodes:
        if n.op_type == "Constant":
            t = constant_value(n)
            y = None if t is None else numpy_helper.to_array(t)
        elif n.domain not in ("", "ai.onnx") or len(n.output) != 1 or not all(t in values for t in n.input if t):
            return None
        else:
            a = {k.name: helper.get_attribute_value(k) for k in n.attribute}
            y = _numpy_shape_op(n.op_type, [values[t] for t in n.input if t], a)
        if y is None:
            return None
        values[n.output[0]] = np.asarray(y)
    return values


def _without_metadata(node: onnx.NodeProto, info: dict) -> onnx.NodeProto | None:
    """Shape/Size become Constants and CastLike a Cast, from inferred shapes and types; None if unknown."""
    if node.op_type in ("Shape", "Size"):
        shape = _static(info.get(node.input[0]))
        if shape is None:
            return None
        if node.op_type == "Size":
            value = np.array(math.prod(shape), dtype=np.int64)
        else:
            attrs = {a.name: a.i for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", len(shape))
            value = np.array(shape[start:end] if "end" in attrs else shape[start:], dtype=np.int64)
        return helper.make_node("Constant", [], list(node.output), value=numpy_helper.from_array(value))
    if node.op_type == "CastLike":
        vi = info.get(node.input[1])
        if vi is None or not vi.type.tensor_type.elem_type:
            return None
        return helper.make_node("Cast", [node.input[0]], list(node.output), to=vi.type.tensor_type.elem_type)
    return node
