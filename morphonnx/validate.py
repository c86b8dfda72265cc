"""Validation of a model at load, before any work: what onnx's checker would refuse and what this
tool cannot handle, each as one line naming the node, tensor or field."""
from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import Sequence

import onnx
from onnx import TensorProto

from .errors import BadInput

OLDEST_OPSET = 11
MAX_DIM = 2**31 - 1


def validate_model(model: onnx.ModelProto, base_dir: Path | None, where: object) -> None:
    """BadInput for the first problem found; nothing is read from external data."""
    _versions(model, where)
    _external_locations(model, base_dir, where)
    _structure(model.graph, where)
    _operators(model.graph, where)
    _input_dims(model.graph, where)


def _versions(model: onnx.ModelProto, where: object) -> None:
    if model.ir_version > onnx.IR_VERSION:
        raise BadInput(f"{where}: IR version {model.ir_version} is newer than this onnx ({onnx.__version__}) "
                       f"reads (up to {onnx.IR_VERSION})")
    if model.ir_version < 3:
        raise BadInput(f"{where}: IR version {model.ir_version} is too old (3 and newer are read)")
    newest = onnx.defs.onnx_opset_version()
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not default:
        raise BadInput(f"{where}: the model imports no default-domain opset")
    if default[0] > newest:
        raise BadInput(f"{where}: opset {default[0]} is newer than this onnx ({onnx.__version__}) knows "
                       f"(up to {newest})")
    if default[0] < OLDEST_OPSET:
        raise BadInput(f"{where}: opset {default[0]} is older than the oldest handled ({OLDEST_OPSET}); convert "
                       f"it first: onnx.version_converter.convert_version(model, 13)")


def _external_locations(model: onnx.ModelProto, base_dir: Path | None, where: object) -> None:
    """External data must lie inside the model's folder: no absolute path, no '..' out of it."""
    for t in _initializers(model.graph):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        loc = {e.key: e.value for e in t.external_data}.get("location", "")
        inside = base_dir is not None and os.path.realpath(base_dir / loc).startswith(
            os.path.realpath(base_dir) + os.sep)
        if os.path.isabs(loc) or ".." in Path(loc).parts or (base_dir is not None and not inside):
            raise BadInput(f"{where}: external data '{loc}' of initializer '{t.name}' lies outside the "
                           f"model's folder; refused")


def _initializers(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _initializers(g)


def _structure(graph: onnx.GraphProto, where: object) -> None:
    """Each tensor produced once, every input defined, no cycle, every output produced."""
    produced: dict[str, str] = {}   # tensor → name of the node that writes it
    index: dict[str, int] = {}      # tensor → index of that node
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for t in graph.sparse_initializer:
        defined.add(t.values.name)
    for i, node in enumerate(graph.node):
        name = node.name or f"#{i} ({node.op_type})"
        for o in node.output:
            if not o:
                continue
            if o in produced:
                raise BadInput(f"{where}: tensor '{o}' is produced twice (by {produced[o]} and {name})")
            if o in defined:
                raise BadInput(f"{where}: node {name} writes '{o}', which is a graph input or initializer")
            produced[o] = name
            index[o] = i
    known = defined | set(produced)
    for i, node in enumerate(graph.node):
        for t in node.input:
            if t and t not in known:
                raise BadInput(f"{where}: input '{t}' of node {node.name or f'#{i}'} ({node.op_type}) is "
                               f"neither a graph input, an initializer nor any node's output")
    for o in graph.output:
        if o.name not in known:
            raise BadInput(f"{where}: graph output '{o.name}' is produced by no node")
    order = topological_order(graph.node)
    if len(order) == len(graph.node):
        return
    import networkx as nx  # only to name a node on the cycle
    left = sorted(set(range(len(graph.node))) - set(order))
    dag = nx.DiGraph()
    dag.add_edges_from((index[t], i) for i in left for t in graph.node[i].input if t in index and index[t] in left)
    k = nx.find_cycle(dag)[0][0]
    node = graph.node[k]
    raise BadInput(f"{where}: the graph has a cycle through node {node.name or f'#{k}'} ({node.op_type})")


def topological_order(nodes: Sequence[onnx.NodeProto]) -> list[int]:
    """Indices of `nodes` in a topological order, file order where the file allows (ONNX
    files are sorted, so usually just 0..n-1); nodes on or behind a cycle are left out."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    preds = [{producer[t] for t in n.input if t in producer} for n in nodes]
    if all(p < i for i, ps in enumerate(preds) for p in ps):
        return list(range(len(nodes)))
    users: list[list[int]] = [[] for _ in nodes]
    for i, ps in enumerate(preds):
        for p in ps:
            users[p].append(i)
    waiting = [len(ps) for ps in preds]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    return order


def _operators(graph: onnx.GraphProto, where: object) -> None:
    """A node of the default domain must be an ONNX operator (converters sometimes leave their own,
    like tf2onnx's StatefulPartitionedCall); other domains are runtime extensions, pinned later."""
    known: set[str] = set()
    for i, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type in known:
            continue
        if onnx.defs.has(node.op_type):
            known.add(node.op_type)
        else:
            raise BadInput(f"{where}: node {node.name or f'#{i}'} has op type '{node.op_type}', which is no ONNX "
                           f"operator (left by the converter?); onnxruntime cannot run this file either")


def _input_dims(graph: onnx.GraphProto, where: object) -> None:
    init = {t.name for t in graph.initializer}
    for vi in graph.input:
        if vi.name in init or not vi.type.tensor_type.HasField("shape"):
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and not 0 < d.dim_value <= MAX_DIM:
                raise BadInput(f"{where}: dimension {k} of input '{vi.name}' is {d.dim_value}; "
                               f"sizes from 1 to {MAX_DIM} are handled")


def check_dim(value: int, what: str) -> int:
    """A user-given size (--batch, --input-shape): 1 to MAX_DIM."""
    if not 0 < value <= MAX_DIM:
        raise BadInput(f"{what}: {value} is not a size from 1 to {MAX_DIM}")
    return value
