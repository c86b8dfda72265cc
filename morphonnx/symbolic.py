"""A pruned model that keeps the symbolic dimensions of its file (a decoder's sequence lengths).

`load` folds the shape computations of a model at the dimension values it is given (`--dim`),
and the rewrite starts from that folded graph, so a pruned model is written for those values
only. `generalize` puts the file's own computations back: every constant the pruned model
reads that the file computes with nodes, and that the rewrite did not change, is computed
again by those nodes (taken from the file), and the graph inputs and outputs get their
symbolic dimensions back. A constant the rewrite changed (a reshape to fewer heads) stays
folded: the model is then refused at other values by the check `prune` runs at a second
setting of the dimensions.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import Graph, ancestor_nodes, read_model


def generalize(graph: Graph, pruned: onnx.ModelProto, base_dir=None) -> tuple[onnx.ModelProto | None, str]:
    """The pruned model computing its shapes as the file does, with the file's symbolic input
    and output dimensions (`pruned` itself, changed in place; its external data in `base_dir`);
    (None, why) where that cannot be done (`pruned` unchanged)."""
    if graph.path is None or not any(v is not None for v in graph.dims.values()):
        return None, "no symbolic dimensions were set"
    original, _, _ = read_model(graph.path)
    if original.functions:
        return None, "the file has local functions (inlined when loaded)"
    g = original.graph
    producer = {o: n for n in g.node for o in n.output if o}
    made = {o for n in pruned.graph.node for o in n.output if o}
    inits = {t.name: t for t in pruned.graph.initializer}
    recompute = []
    for name, t in inits.items():
        if name not in producer or name in made or not graph.is_constant(name):
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        if np.array_equal(numpy_helper.to_array(t), graph.array(name)):  # folded, not changed by the rewrite
            recompute.append(name)
    nodes = [_copy(g.node[k]) for k in ancestor_nodes(g.node, recompute, stop=made)]
    needed = {i for n in nodes for i in n.input if i}
    file_inits = {t.name: t for t in g.initializer}
    extra = []
    for name in needed:
        if name in inits and name not in recompute:
            if name in file_inits and not np.array_equal(numpy_helper.to_array(inits[name], str(base_dir or "")),
                                                         numpy_helper.to_array(file_inits[name], str(graph.base_dir or ""))):
                return None, f"'{name}' is both a changed weight and an input of a shape computation"
        elif name in file_inits and name not in inits:
            extra.append(file_inits[name])
    m = pruned  # changed in place: a copy would hold every weight twice
    keep = [t for t in m.graph.initializer if t.name not in set(recompute)]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep + extra)
    m.graph.node.extend(nodes)
    _toposort(m.graph)
    declared = {vi.name: vi for vi in list(g.input) + list(g.output)}
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in declared:
            vi.type.CopyFrom(declared[vi.name].type)
    del m.graph.value_info[:]
    return m, ""


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _toposort(graph: onnx.GraphProto) -> None:
    """Order the nodes so that every node follows the producers of its inputs."""
    from .validate import topological_order
    nodes = list(graph.node)
    order = topological_order(nodes)
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def second_setting(graph: Graph) -> dict[str, int]:
    """Other values for the symbolic dimensions that were set (each + 1), to check a model at."""
    return {k: v + 1 for k, v in graph.dims.items() if v is not None}
