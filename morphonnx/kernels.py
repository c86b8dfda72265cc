"""Kernels as the runtime runs them: onnxruntime's optimized CPU graph mapped onto the ops of
the loaded model.

onnxruntime fuses a Conv with the BatchNormalization, activation and residual Add after it,
a MatMul with its bias Add, runs convolutions in its blocked NCHWc layout (with reorders in
and out of it), and computes once what depends on no input (constant folding). `kernel_map`
asks onnxruntime for its optimized model (`SessionOptions.optimized_model_filepath`) and maps
every node of it to the op of the loaded graph whose output it computes: an NCHWc node is
named after that tensor (`<tensor>_nchwc`, a BatchNormalization run as a blocked conv
`<tensor>_bn_nchwc`), other nodes keep the op's name or its output; a reorder into the
layout belongs to the op that reads it. An op whose output no runtime node computes was fused
into the kernel that reads it (`fused`: it costs nothing of its own) or eliminated;
the others carry the runtime kernels mapped to them, each of a `kernel_class` (the key of a
fitted kernel model).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import onnx

from .graph import Graph, node_attr

NCHWC = "com.microsoft.nchwc"
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf",
               "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "LeakyRelu", "Neg", "Sqrt", "Pow", "Exp", "Where", "Max",
               "Min", "Cast", "Abs", "Equal", "Less", "Greater", "Not", "And", "Or", "Mod", "Floor", "Ceil", "Round",
               "Sin", "Cos", "Reciprocal", "Softplus", "Mish", "Elu", "Selu", "PRelu", "Sum", "Swish"}
# elementwise ops that compute a transcendental per element (an exp, an erf, a root): several times
# the cost of an add
MATH = {"Sigmoid", "Tanh", "Erf", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Exp", "Log", "Pow", "Sqrt",
        "Reciprocal", "Softplus", "Mish", "Elu", "Selu", "Sin", "Cos", "Swish"}
VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Shape", "Size", "Constant",
         "ConstantOfShape", "Range"}
HEAVY = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}


@dataclass
class KernelMap:
    """Per op of the loaded graph: `kernels` (the runtime kernels it carries: class and whether
    it is the op's own work or a helper of it, a reorder or a bias computed at run time, which
    does none of the op's MACs) and `roles` (`kernel`, `fused`: no kernel of its own)."""

    kernels: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    # per runtime node (by name): (the op it is mapped to, its class, whether it is the op's own work)
    nodes: dict[str, tuple[str, str, bool]] = field(default_factory=dict)

    def add(self, node: onnx.NodeProto, op: str, cls: str, own: bool) -> None:
        """Map one runtime node onto an op."""
        self.kernels.setdefault(op, []).append((cls, own))
        # a node the runtime made without a name (an inlined function's) is kept, under a key
        # no profiler event carries
        self.nodes[node.name or f"#{len(self.nodes)}"] = (op, cls, own)


def optimized_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """onnxruntime's CPU graph of a model (a file, or a ModelProto with its weights), all
    optimizations on: what a session runs."""
    import onnxruntime as ort
    folder = tempfile.mkdtemp(prefix="morphonnx.kernels.")
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "0")
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
        ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath, load_external_data=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def runtime_kernels(graph: Graph) -> KernelMap:
    """The kernel map of a loaded graph (asked of onnxruntime once per graph): its file, or the
    ModelProto it was loaded from."""
    if graph._kernel_map is None:
        source = graph.path if graph.path is not None else graph.source
        if source is None:
            raise ValueError("the runtime's kernels need the model the graph was loaded from")
        graph._kernel_map = kernel_map(graph, optimized_model(source))
    return graph._kernel_map


def kernel_class(node: onnx.NodeProto, graph: Graph | None = None, op: str | None = None,
                 plain_input: bool = False) -> str:
    """The family of a runtime node: the blocked layout, the op family, and for convolutions
    the variant (`k1`, `kxk`, `dw` for one input channel per group, `grouped`; `nchw` for a
    blocked conv that reads the plain layout, `plain_input`: fewer input channels than a block,
    a network's stem or a layer pruned that narrow, another kernel of the runtime); elementwise
    ops that compute a transcendental apart (`Elementwise.math`)."""
    prefix = "nchwc." if node.domain == NCHWC else ""
    t = node.op_type
    if t in ("Conv", "FusedConv"):
        if prefix and plain_input:
            return "nchwc.Conv.nchw"
        group = node_attr(node, "group", 1) or 1
        strided = any(d > 1 for d in node_attr(node, "strides", None) or ())
        if group > 1 and _depthwise(graph, op):
            # one channel in and out per group; strided ones take another path in the runtime
            return f"{prefix}Conv.dw" + (".s2" if strided else "")
        if group > 1:
            return f"{prefix}Conv.grouped"
        k = node_attr(node, "kernel_shape", None)
        return f"{prefix}Conv.{'k1' if k is not None and all(d == 1 for d in k) else 'kxk'}"
    if t in ("Gemm", "FusedGemm", "MatMul", "FusedMatMul"):
        return "Gemm"
    if t in POOLS:
        return prefix + "Pool"
    if t in ELEMENTWISE:
        return "Elementwise.math" if t in MATH else "Elementwise"
    if t in VIEWS:
        return "View"
    return prefix + t


def _depthwise(graph: Graph | None, op: str | None) -> bool:
    """One input and one output channel per group: read from the loaded op (a runtime
    BatchNormalization run as a blocked conv has no such op: it is one channel per group)."""
    if graph is None or op is None or graph.nodes[op].op_type not in ("Conv", "ConvTranspose"):
        return True
    info = graph.info(graph.nodes[op].input[1])
    return info is not None and info.shape is not None and len(info.shape) > 1 and info.shape[1] == 1 and \
        info.shape[0] == (node_attr(graph.nodes[op], "group", 1) or 1)


def _tensor_of(node: onnx.NodeProto, graph: Graph) -> str | None:
    """The tensor of the loaded graph that a runtime node computes (None: a node of its own)."""
    for o in node.output:
        if o in graph.producer:
            return o
    for suffix in ("_bn_nchwc", "_nchwc"):
        if node.name.endswith(suffix) and node.name[:-len(suffix)] in graph.producer:
            return node.name[:-len(suffix)]
    # a fused node keeps the name of the op it was made from: `<op>/MatMulAddFusion`
    for name in (node.name, node.name.split("/")[0]):
        if name in graph.nodes:
            out = graph.nodes[name].output
            return out[0] if out and out[0] else None
    return None


def kernel_map(graph: Graph, optimized: onnx.ModelProto) -> KernelMap:
    """Map the runtime's optimized graph onto `graph`'s ops (see the module docstring)."""
    km = KernelMap()
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in optimized.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    blocked = {o for n in optimized.graph.node if n.domain == NCHWC for o in n.output}
    plain = {n.name for n in optimized.graph.node
             if n.domain == NCHWC and n.op_type == "Conv" and n.input[0] not in blocked}
    pending: list[onnx.NodeProto] = []
    moved: list[tuple[str, str, onnx.NodeProto]] = []  # a heavy kernel that ends at another op
    for n in optimized.graph.node:
        t = _tensor_of(n, graph)
        if t is None:
            pending.append(n)
            continue
        op = graph.producer[t]
        cls = kernel_class(n, graph, op, n.name in plain)
        if _heavy(cls) and graph.nodes[op].op_type not in HEAVY:
            moved.append((op, cls, n))
            continue
        km.add(n, op, cls, not cls.startswith("nchwc.Reorder"))
    for op, cls, n in moved:  # the kernel of a fused chain carries its heavy op's cost
        anchor = _anchor(graph, op, km, n)
        km.add(n, anchor, kernel_class(n, graph, anchor, n.name in plain), True)
    for n in pending:  # a reorder into the blocked layout, a bias computed at run time: the op that reads it
        op = _reader(n, readers, graph)
        if op is not None:
            km.add(n, op, kernel_class(n, graph, op), False)
    for name in graph.nodes:
        km.roles[name] = "kernel" if name in km.kernels else "fused"
    return km


def _heavy(cls: str) -> bool:
    return cls.removeprefix("nchwc.").split(".")[0] in ("Conv", "Gemm")


def _anchor(graph: Graph, op: str, km: KernelMap, node: onnx.NodeProto) -> str:
    """The Conv/Gemm/MatMul that the runtime kernel `node`, which ends at `op`, was fused from:
    among those up through ops that run no kernel of their own and that carry no heavy kernel
    yet, the one the node is named after, else the first whose kernel shape, strides and group
    match it."""
    todo, seen, found = [op], {op}, []
    while todo:
        name = todo.pop(0)
        if graph.nodes[name].op_type in HEAVY:
            if not any(_heavy(c) and own for c, own in km.kernels.get(name, ())):
                found.append(name)
            continue
        for t in graph.nodes[name].input:
            p = graph.producer.get(t)
            if p is not None and p not in seen and (p not in km.kernels or graph.nodes[p].op_type in HEAVY):
                seen.add(p)
                todo.append(p)
    if not found:
        return op
    base = node.name.split("/")[0]
    if base in found:
        return base
    keys = ("kernel_shape", "strides", "group")
    want = [node_attr(node, k, None) for k in keys]
    return next((f for f in found if [node_attr(graph.nodes[f], k, None) for k in keys] == want), found[0])


def _reader(node: onnx.NodeProto, readers: dict, graph: Graph) -> str | None:
    """The loaded op that reads what `node` computes, following runtime nodes to the first one
    mapped to an op."""
    todo, seen = [o for o in node.output if o], set()
    while todo:
        t = todo.pop(0)
        for r in readers.get(t, []):
            if id(r) in seen:
                continue
            seen.add(id(r))
            mapped = _tensor_of(r, graph)
            if mapped is not None:
                return graph.producer[mapped]
            todo += [o for o in r.output if o]
    inputs = [i for i in node.input if i in graph.producer]
    return graph.producer[inputs[0]] if inputs else None


ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Elu", "Selu", "Gelu",
               "FastGelu", "QuickGelu", "Softplus", "Mish", "Swish", "PRelu", "Erf"}
POINTWISE = ELEMENTWISE | {"BatchNormalization"}


def standard_fusions(graph: Graph) -> dict[str, str]:
    """The fusions every inference runtime does (TensorRT, onnxruntime, XLA), read from the graph
    alone: per fused op, the op whose kernel carries it.

    A Conv/ConvTranspose/Gemm/MatMul takes into its epilogue the chain after it while each
    tensor has one reader: a BatchNormalization, a per-channel constant Add/Mul/Sub/Div (a bias,
    a scale), activations (x·sigmoid(x) too), and one residual Add. Of a chain of elementwise
    ops whose intermediate tensors have one reader each, the last op runs the one kernel."""
    fused: dict[str, str] = {}
    outputs = set(graph.outputs)

    def single_reader(t: str) -> str | None:
        users = graph.consumers.get(t, [])
        return users[0] if len(users) == 1 and t not in outputs else None

    def swish(t: str) -> tuple[str, str] | None:
        """x·sigmoid(x) read from `t`: (Sigmoid, Mul)."""
        users = graph.consumers.get(t, [])
        if len(users) != 2 or t in outputs:
            return None
        ops = {graph.nodes[u].op_type: u for u in users}
        s, m = ops.get("Sigmoid"), ops.get("Mul")
        if s and m and set(graph.nodes[m].input) == {t, graph.nodes[s].output[0]} and \
                single_reader(graph.nodes[s].output[0]) == m:
            return s, m
        return None

    for name in graph.topological_nodes():
        node = graph.nodes[name]
        if node.op_type not in HEAVY or name in fused:
            continue
        t, residual = node.output[0], False
        while True:
            pair = swish(t)
            if pair:
                for p in pair:
                    fused[p] = name
                t = graph.nodes[pair[1]].output[0]
                continue
            r = single_reader(t)
            if r is None or r in fused:
                break
            rn = graph.nodes[r]
            others = [i for i in rn.input if i and i != t]
            if rn.op_type == "BatchNormalization" or rn.op_type in ACTIVATIONS and \
                    all(graph.is_constant(i) for i in others):
                pass
            elif rn.op_type in ("Add", "Mul", "Sub", "Div") and len(others) == 1 and graph.is_constant(others[0]):
                pass
            elif rn.op_type == "Add" and len(others) == 1 and not residual and _same_shape(graph, t, others[0]):
                residual = True
            else:
                break
            fused[r] = name
            t = rn.output[0]
    for name in graph.topological_nodes():  # elementwise chains: each op but the last
        node = graph.nodes[name]
        if name in fused or node.op_type not in POINTWISE or not node.output:
            continue
        r = single_reader(node.output[0])
        if r is not None and graph.nodes[r].op_type in POINTWISE and \
                _same_shape(graph, node.output[0], graph.nodes[r].output[0]):
            fused[name] = r
    for name, into in list(fused.items()):  # a chain's carrier is the op at its end
        while into in fused:
            into = fused[into]
        fused[name] = into
    return fused


def _same_shape(graph: Graph, a: str, b: str) -> bool:
    ia, ib = graph.info(a), graph.info(b)
    return ia is not None and ib is not None and ia.shape is not None and ia.shape == ib.shape
