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


def _static(vi: onnx.ValueInfoProto | None) -> tuple[int, ...] | None:
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = vi.type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims) if all(d.HasField("dim_value") for d in dims) else None


def _is_parameter(t: onnx.TensorProto) -> bool:
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    return t.data_type in floats and math.prod(t.dims) > 1


def _plan(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], dict[str, onnx.TensorProto]]:
    """The nodes to fold (rewritten to run without their metadata inputs) and the constants they read."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    info = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}
    info.update((t.name, helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))) for t in g.initializer)
    known = set(inits) | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    plan: list[onnx.NodeProto] = []
    for node in g.node:
        meta = METADATA_INPUTS.get(node.op_type, ())
        values = [t for i, t in enumerate(node.input) if t and i not in meta]
        if node.op_type == "Constant" or not all(t in known for t in values):
            continue
        if any(t in inits and _is_parameter(inits[t]) for t in values):
            continue
        folded = _without_metadata(node, info)
        if folded is None:
            continue
        out = [info.get(o) for o in node.output]
        if any(_static(vi) is not None and math.prod(_static(vi)) > MAX_FOLDED_ELEMENTS for vi in out):
            continue
        plan.append(folded)
        known.update(node.output)
    read = {t for n in plan for t in n.input}
    constants = [n for n in g.node if n.op_type == "Constant" and any(o in read for o in n.output)]
    return constants + plan, {t: inits[t] for t in read if t in inits}


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


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold metadata-only subgraphs into initializers; returns the model (changed in place) ."""
    plan, consts = _plan(model)
    if not plan:
        return model
    g = model.graph
    outputs = [o for n in plan if n.op_type != "Constant" or n.output[0] not in {
        t for t in (x.output[0] for x in model.graph.node if x.op_type == "Constant")} for o in n.output if o]
    sub = helper.make_model(
        helper.make_graph(plan, "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in outputs],
                          initializer=list(consts.values())),
        opset_imports=list(model.opset_import))
    values = dict(zip(outputs, ReferenceEvaluator(sub).run(None, {})))
    by_output = {o: n for n in g.node for o in n.output}
    drop = {id(by_output[o]) for o in outputs}
    keep = [n for n in g.node if id(n) not in drop]
    needed = {t for n in keep for t in n.input} | {o.name for o in g.output}
    keep = [n for n in keep if n.op_type != "Constant" or any(o in needed for o in n.output)]
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(numpy_helper.from_array(np.asarray(values[o]), o) for o in outputs if o in needed)
    return model
