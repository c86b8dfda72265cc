"""Cost model: one small rule per ONNX op family, dispatched from one table (`RULES`).

A rule sees an `OpContext` (the node, its shapes, its attributes) and returns the op's
`Work`: multiply-accumulates, FLOPs, and whether it moves data. Bytes and parameters follow
generically from the node's tensors, so a rule states only what is particular to its op.

Conventions (DESIGN.md): MACs are those of Conv/ConvTranspose/Gemm/MatMul; FLOPs = 2 × MACs
for those, and for other arithmetic one FLOP per output element (per element taken into
the window for pools and reductions). An op with no rule is reported as not costed.
"""
from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import onnx
from onnx import TensorProto, helper

from ..graph import Graph, node_attr

RULES: dict[str, Callable[["OpContext"], "Work"]] = {}
FOLDED_MAP = ".folded_map"  # initializers a prune adds for the constant output of removed channels

_FAMILIES = ("conv", "gemm", "normalization", "pool", "reduce", "elementwise", "movement")


def register(*op_types: str) -> Callable:
    """Decorator: make the function the cost rule of these op types."""
    def wrap(fn: Callable[["OpContext"], "Work"]) -> Callable[["OpContext"], "Work"]:
        for op in op_types:
            RULES[op] = fn
        return fn
    return wrap


@dataclass(frozen=True)
class Work:
    """What a rule states about an op: its arithmetic and whether it moves data.

    `moves=False` marks views (Reshape, Squeeze, ...) and metadata ops, which read and write
    no activation bytes. `read_bytes` overrides the default (all non-constant inputs) for ops
    that touch only part of their input (Slice, Gather); `write_bytes` the default (all outputs)
    for ops whose outputs are sequences. `non_params` lists input indices that
    are constants but not trainable parameters (BatchNormalization's running mean and var).
    """

    macs: int = 0
    flops: int = 0
    moves: bool = True
    read_bytes: int | None = None
    write_bytes: int | None = None
    non_params: tuple[int, ...] = ()
    constant_reads: bool = True  # False: `read_bytes` already holds what the op reads of its constants
    kind: str = ""  # structural variant that runtimes treat differently ("depthwise", "grouped")
    channels: tuple[int, int] | None = None  # (in, out) channels, for kernels that want aligned counts
    groups: int = 1  # a grouped convolution's groups: runtimes loop over them


@dataclass
class OpCost:
    """The cost of one op; `params` counts its own parameter tensors, `weights` names them."""

    name: str
    op_type: str
    dtype: str
    costed: bool = True
    macs: int = 0
    flops: int = 0
    params: int = 0
    weight_bytes: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    weights: tuple[str, ...] = ()
    note: str = ""
    kind: str = ""
    channels: tuple[int, int] | None = None
    groups: int = 1  # a grouped convolution's groups
    weight_inputs: tuple[int, ...] = ()  # constant inputs whose bytes the op reads
    in_shapes: tuple[tuple, ...] = ()   # shapes of the activation inputs (constants left out)
    out_shapes: tuple[tuple, ...] = ()
    # the runtime kernels this op carries, (class, does the op's MACs) (`kernels.kernel_map`; ()
    # fused into another op's kernel); None until a kernel profile asks (`CostModel.attach_runtime`)
    runtime: tuple[tuple[str, bool], ...] | None = None
    # the op whose kernel carries this one under the standard fusions (`kernels.standard_fusions`;
    # set by `CostModel.attach_fusions`)
    fused_into: str | None = None

    @property
    def activation_bytes(self) -> int:
        """Activation bytes read plus written."""
        return self.read_bytes + self.write_bytes

    @property
    def bytes(self) -> int:
        """All bytes moved: activations read and written plus weights read."""
        return self.read_bytes + self.write_bytes + self.weight_bytes


class OpContext:
    """What a cost rule may ask about one node: shapes, attributes, constant inputs."""

    def __init__(self, graph: Graph, node: onnx.NodeProto):
        self.graph = graph
        self.node = node

    def attr(self, name: str, default=None):
        """An attribute's value (ints, floats, strings decoded), or `default`."""
        return node_attr(self.node, name, default)

    def has_input(self, i: int) -> bool:
        """True if optional input i is present."""
        return i < len(self.node.input) and bool(self.node.input[i])

    def in_shape(self, i: int) -> tuple[int, ...]:
        """Static shape of input i (BadInput if unknown)."""
        return self.graph.static_shape(self.node.input[i], f"input {i} of {self.node.op_type} '{self.node.name}'")

    def out_shape(self, i: int = 0) -> tuple[int, ...]:
        """Static shape of output i (BadInput if unknown)."""
        return self.graph.static_shape(self.node.output[i], f"output {i} of {self.node.op_type} '{self.node.name}'")

    def out_numel(self, i: int = 0) -> int:
        """Number of elements of output i."""
        return math.prod(self.out_shape(i))

    def in_numel(self, i: int = 0) -> int:
        """Number of elements of input i."""
        return math.prod(self.in_shape(i))

    def tensor_bytes(self, name: str, where: str) -> int:
        """Bytes of a tensor with a static shape."""
        info = self.graph.info(name)
        size = _itemsize(info.elem_type if info else TensorProto.FLOAT)
        return math.prod(self.graph.static_shape(name, where)) * size


def _itemsize(elem_type: int) -> int:
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 4


def _dtype_name(graph: Graph, node: onnx.NodeProto) -> str:
    float_types = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    names = [t for t in list(node.output) + list(node.input) if t]
    infos = [graph.info(t) for t in names]
    for info in infos:
        if info is not None and info.elem_type in float_types:
            return helper.tensor_dtype_to_np_dtype(info.elem_type).name if info.elem_type != TensorProto.BFLOAT16 else "bfloat16"
    for info in infos:
        if info is not None and info.elem_type:
            return TensorProto.DataType.Name(info.elem_type).lower()
    return "float32"


def _shape(graph: Graph, name: str) -> tuple:
    info = graph.info(name)
    return tuple(info.shape) if info is not None and info.shape is not None else ()


def _is_parameter(graph: Graph, name: str) -> bool:
    return name in graph.stored and _weight_like(graph, name)


def _weight_like(graph: Graph, name: str) -> bool:
    """A float tensor of at least two elements (one value is a scalar of the op, not a weight)."""
    info = graph.info(name)
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
    return info is not None and info.elem_type in floats and info.shape is not None and math.prod(info.shape) >= 2


def parameters(graph: Graph, name: str) -> list[str]:
    """The parameters a constant input of an op counts as (the one rule behind every params
    figure): a stored tensor itself; a folded one the stored tensors it is computed from (a
    transposed or standardized weight is its raw weight, so a tied weight counts once)."""
    return [p for p in graph.parameters_of(name) if _is_parameter(graph, p)]


def exporter_zero_bias(graph: Graph, node: onnx.NodeProto, i: int) -> bool:
    """The bias of a Conv/ConvTranspose that an exporter computes as zeros from no parameter (an
    Expand of a scalar for `bias=False`): nothing is read, nothing counted (a prune drops it)."""
    if i != 2 or node.op_type not in ("Conv", "ConvTranspose") or node.input[2] in graph.stored:
        return False
    if parameters(graph, node.input[2]):
        return False
    try:
        return not graph.array(node.input[2]).any()
    except KeyError:
        return False


def op_cost(graph: Graph, node: onnx.NodeProto) -> OpCost:
    """Cost of one node: its rule's Work plus bytes and parameters from its tensors."""
    cost = OpCost(node.name, node.op_type, _dtype_name(graph, node))
    cost.in_shapes = tuple(_shape(graph, t) for t in node.input if t and not graph.is_constant(t))
    cost.out_shapes = tuple(_shape(graph, t) for t in node.output if t)
    rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if rule is None:
        cost.costed = False
        cost.note = f"no cost rule for {node.domain + '.' if node.domain else ''}{node.op_type}"
        return cost
    ctx = OpContext(graph, node)
    work = rule(ctx)
    cost.macs, cost.flops = int(work.macs), int(work.flops)
    cost.kind, cost.channels, cost.groups = work.kind, work.channels, work.groups
    weights, read, inputs = [], 0, []
    for i, t in enumerate(node.input):
        if not t:
            continue
        where = f"input {i} of {node.op_type} '{node.name}'"
        if graph.is_constant(t):
            if exporter_zero_bias(graph, node, i):
                continue
            if work.moves and work.constant_reads:
                cost.weight_bytes += ctx.tensor_bytes(t, where)
                inputs.append(i)
            if i not in work.non_params:
                weights += parameters(graph, t)
        elif work.moves and work.read_bytes is None:
            read += ctx.tensor_bytes(t, where)
    if work.moves:
        cost.read_bytes = read if work.read_bytes is None else int(work.read_bytes)
        cost.write_bytes = int(work.write_bytes) if work.write_bytes is not None else sum(
            ctx.tensor_bytes(t, f"output of {node.op_type} '{node.name}'") for t in node.output if t)
    cost.weights = tuple(dict.fromkeys(weights))
    cost.weight_inputs = tuple(inputs)
    cost.params = sum(math.prod(graph.info(w).shape) for w in cost.weights)
    return cost


@dataclass
class CostModel:
    """Per-op costs of a graph, with totals that count each shared parameter once."""

    graph: Graph
    ops: list[OpCost] = field(default_factory=list)

    def attach_runtime(self) -> None:
        """Give every op the runtime kernels it carries (onnxruntime's optimized CPU graph of the
        model, asked once: `kernels.kernel_map`)."""
        if self.ops and all(c.runtime is not None for c in self.ops):
            return
        from ..kernels import runtime_kernels
        km = runtime_kernels(self.graph)
        for c in self.ops:
            c.runtime = tuple(km.kernels.get(c.name, ()))

    def attach_fusions(self) -> None:
        """Mark the ops that the standard inference fusions put into another op's kernel."""
        if getattr(self, "_fusions", False):
            return
        from ..kernels import standard_fusions
        fused = standard_fusions(self.graph)
        for c in self.ops:
            c.fused_into = fused.get(c.name)
        self._fusions = True

    @property
    def not_costed(self) -> list[OpCost]:
        """Ops that have no cost rule."""
        return [c for c in self.ops if not c.costed]

    def total(self, attr: str) -> int:
        """Sum of one OpCost field over all ops."""
        return sum(getattr(c, attr) for c in self.ops)

    @property
    def params(self) -> int:
        """Parameters, each counted once however many ops read it (a folded constant counts the
        parameters it is computed from; a duplicate the exporter merged counts on its own)."""
        unique = {w for c in self.ops for w in c.weights}
        return sum(math.prod(self.graph.info(w).shape) for w in unique)

    @property
    def folded_values(self) -> int:
        """Values of the bias maps and vectors a prune folded in for removed channels (initializers
        named `*.folded_map`): counted in params (the model stores them), shown apart."""
        unique = {w for c in self.ops for w in c.weights if w.endswith(FOLDED_MAP)}
        return sum(math.prod(self.graph.info(w).shape) for w in unique)

    def resource(self, resource: str, profile=None) -> float:
        """One figure of the model, the same for every command: "macs", "flops", "size" (params)
        or "latency" (seconds of one run on `profile`: its ops plus the run overhead)."""
        if resource in ("macs", "flops"):
            return self.total(resource)
        if resource == "size":
            return self.params
        if resource == "latency":
            if profile is None:
                raise ValueError("the latency resource needs a profile")
            return profile.total_latency(self)
        raise ValueError(f"unknown resource {resource!r}")

    def activation_bytes_by_dtype(self) -> dict[str, int]:
        """Activation bytes read plus written, per element type."""
        out: dict[str, int] = {}
        for c in self.ops:
            if c.activation_bytes:
                out[c.dtype] = out.get(c.dtype, 0) + c.activation_bytes
        return out


KV_INPUT = re.compile(r"past|cache", re.IGNORECASE)
KV_OUTPUT = re.compile(r"present|cache", re.IGNORECASE)


def kv_cache(graph: Graph) -> dict[str, int]:
    """Bytes of a decoder's key/value cache: read from its cache inputs (`past_key_values.0.key`,
    `past.0.value`, `*cache*`) and written to its cache outputs (`present.0.key`); 0 and 0 for a
    model without one. Tensors of rank 3 and more only (a cache, not a position counter)."""
    def size(names, pattern) -> int:
        total = 0
        for t in names:
            info = graph.info(t)
            if pattern.search(t) and info is not None and info.shape is not None and len(info.shape) >= 3 \
                    and info.is_static:
                total += math.prod(info.shape) * _itemsize(info.elem_type)
        return total
    return {"read": size(graph.inputs, KV_INPUT), "written": size(graph.outputs, KV_OUTPUT)}


def cost_model(graph: Graph, nodes: Iterable[onnx.NodeProto] | None = None) -> CostModel:
    """Cost every node of the graph (or the given nodes)."""
    nodes = graph.model.graph.node if nodes is None else nodes
    return CostModel(graph, [op_cost(graph, n) for n in nodes])


for _family in _FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")
