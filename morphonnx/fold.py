"""Constant folding of the shape clutter exporters leave (Shape → Expand → CastLike chains).

Only nodes that compute from metadata (tensor shapes and element types) and small constants
are folded; a node that reads the values of a stored float parameter is never folded, so
parameters keep their names and their count. The folded values become initializers.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

MAX_FOLDED_ELEMENTS = 1 << 20
METADATA_INPUTS = {"Shape": (0,), "Size": (0,), "CastLike": (1,)}  # inputs read only for shape or type
# Re-layouts of a parameter (an exporter's Transpose of a Linear weight) fold into a new initializer
# that stays a parameter: `fold_constants` reports its origin.
LAYOUT = ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze")


def _static(vi: onnx.ValueInfoProto | None) -> tuple[int, ...] | None:
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = vi.type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims) if all(d.HasField("dim_value") for d in dims) else None


def _is_parameter(t: onnx.TensorProto) -> bool:
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    return t.data_type in floats and math.prod(t.dims) > 1


def _plan(model: onnx.ModelProto, weights: dict[str, onnx.TensorProto]
          ) -> tuple[list[onnx.NodeProto], dict[str, onnx.TensorProto], dict[str, str]]:
    """The nodes to fold (rewritten to run without their metadata inputs), the constants they read,
    and the parameters they only re-lay out (folded output → parameter)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    inits.update(weights)
    users: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            users[t] = users.get(t, 0) + 1
    info = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}
    info.update((t.name, helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))) for t in g.initializer)
    known = set(inits) | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    plan: list[onnx.NodeProto] = []
    origins: dict[str, str] = {}
    for node in g.node:
        meta = METADATA_INPUTS.get(node.op_type, ())
        values = [t for i, t in enumerate(node.input) if t and i not in meta]
        if node.op_type == "Constant" or not all(t in known for t in values) or any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue  # (a subgraph may read outer-scope tensors that are not constant)
        params = [t for t in values if t in inits and _is_parameter(inits[t])]
        if params:
            if node.op_type not in LAYOUT or params != [node.input[0]] or users.get(params[0]) != 1:
                continue
            origins[node.output[0]] = params[0]
        folded = _without_metadata(node, info)
        if folded is None:
            continue
        out = [info.get(o) for o in node.output]
        too_big = any(_static(vi) is not None and math.prod(_static(vi)) > MAX_FOLDED_ELEMENTS for vi in out)
        if too_big and not params:  # a re-laid-out parameter is no bigger than the parameter
            continue
        plan.append(folded)
        known.update(node.output)
    read = {t for n in plan for t in n.input}
    constants = [n for n in g.node if n.op_type == "Constant" and any(o in read for o in n.output)]
    return constants + plan, {t: inits[t] for t in read if t in inits}, origins


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


def fold_constants(model: onnx.ModelProto, weights: dict[str, onnx.TensorProto] | None = None,
                   base_dir: str | None = None) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Fold metadata-only subgraphs into initializers and re-layouts of parameters into values, in place.

    `weights` are initializers kept outside the model (see graph.load). Returns the folded
    re-layouts of parameters (new tensor → the parameter it came from) and their values, which
    stay outside the model like `weights`, with typed graph inputs standing in for them.
    """
    plan, consts, origins = _plan(model, weights or {})
    if not plan:
        return {}, {}
    relaid = _relayout([n for n in plan if n.output[0] in origins], consts, model, base_dir)
    plan = [n for n in plan if n.output[0] not in origins]
    consts = {n: _with_data(t, base_dir) for n, t in consts.items() if n not in set(origins.values())}
    g = model.graph
    outputs = [o for n in plan if n.op_type != "Constant" or n.output[0] not in {
        t for t in (x.output[0] for x in model.graph.node if x.op_type == "Constant")} for o in n.output if o]
    values = dict(relaid)
    if outputs:
        sub = helper.make_model(
            helper.make_graph(plan, "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in outputs],
                              initializer=list(consts.values())),
            opset_imports=list(model.opset_import))
        values.update(zip(outputs, ReferenceEvaluator(sub).run(None, {})))
    by_output = {o: n for n in g.node for o in n.output}
    drop = {id(by_output[o]) for o in list(outputs) + list(relaid)}
    keep = [n for n in g.node if id(n) not in drop]
    needed = {t for n in keep for t in n.input} | {o.name for o in g.output}
    keep = [n for n in keep if n.op_type != "Constant" or any(o in needed for o in n.output)]
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(numpy_helper.from_array(np.asarray(values[o]), o) for o in outputs if o in needed)
    g.input.extend(helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                   for o, v in relaid.items() if o in needed)
    return {o: p for o, p in origins.items() if o in needed}, {o: v for o, v in relaid.items() if o in needed}


def _relayout(nodes: list[onnx.NodeProto], consts: dict[str, onnx.TensorProto], model: onnx.ModelProto,
              base_dir: str | None) -> dict[str, np.ndarray]:
    """Values of re-layouts of parameters, with numpy (a transpose, or a reshape to the inferred shape)."""
    shapes = {vi.name: _static(vi) for vi in model.graph.value_info}
    out = {}
    for n in nodes:
        value = numpy_helper.to_array(consts[n.input[0]], base_dir or "")
        if n.op_type == "Transpose":
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            out[n.output[0]] = np.transpose(value, perm)  # a view: copied only if the rewrite needs it
        else:
            out[n.output[0]] = value.reshape(shapes[n.output[0]])
    return out


def _with_data(t: onnx.TensorProto, base_dir: str | None) -> onnx.TensorProto:
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return t
    return numpy_helper.from_array(numpy_helper.to_array(t, base_dir or ""), t.name)
