"""Channel rules: what each ONNX op type does to channels, one small rule per op family.

A rule is called once per node, in topological order, with a `TieContext`. It declares:
- the channel space of each output (`out_space`: which axis holds channels, how many);
- ties: channel i of one tensor lives or dies with channel j of another (`tie`);
- slicings: a constant input whose axis is indexed by a tensor's channels (`slice`), so the
  rewrite cuts it and the cost model knows what one channel weighs;
- sources: the node's weights or BN scales create the channels of a tensor (`source`);
- consumers: the node reduces a tensor's channels away (a Conv or Gemm input side), the
  place where removed channels' constant outputs are folded (`consume`);
- silenced constants: cut like slicings and zeroed at removed channels in the oracle (a
  stream LayerNorm's scale and bias, `silence`);
- pins, with a reason: channels that must never be removed (`pin`).
An op with no rule pins every channel it touches and is reported by type.

The result is a `ChannelPlan`; `groups.py` turns its ties into groups, `rewrite.py` uses its
slicings and rewrite hooks to cut the model.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from networkx.utils import UnionFind

from ..graph import Graph, node_attr

RULES: dict[str, Callable[["TieContext"], None]] = {}
_FAMILIES = ("source", "elementwise", "concat", "reshape", "reduce")


def register(*op_types: str) -> Callable:
    """Decorator: make the function the channel rule of these op types."""
    def wrap(fn: Callable[["TieContext"], None]) -> Callable[["TieContext"], None]:
        for op in op_types:
            RULES[op] = fn
        return fn
    return wrap


@dataclass(frozen=True)
class Space:
    """Where a tensor's channels are: `axis` holds `size` channels of `block` contiguous entries each
    (block > 1 after a Flatten: channel c is features [c*block, (c+1)*block))."""

    axis: int
    size: int
    block: int = 1


@dataclass(frozen=True)
class Slicing:
    """Constant input `input` of a node has `axis` indexed by the channels of `tensor` (blocked like it)."""

    input: int
    axis: int
    tensor: str
    node: str | None = None  # another node's constant (the bias Add of a MatMul), for the oracle


@dataclass(frozen=True)
class Source:
    """`node` creates the channels of `tensor` with its weights (`kind` "weight") or BN scales ("bn")."""

    node: str
    op_type: str
    tensor: str
    kind: str
    weight: str | None


@dataclass
class ChannelPlan:
    """Channel spaces, ties, slicings, sources, consumers and pins of a whole graph.

    Whole-tensor identity ties (elementwise ops, most of a network) merge tensors into one
    alias class that shares one set of channel elements; only the other ties (offsets of a
    concat, a depthwise block) go through a union-find over channel elements. `finalize`
    assigns the elements once every rule has run.
    """

    graph: Graph
    spaces: dict[str, Space] = field(default_factory=dict)
    alias: UnionFind = field(default_factory=UnionFind)
    partial: list[tuple[str, str, np.ndarray, np.ndarray]] = field(default_factory=list)
    pin_list: list[tuple[str, np.ndarray | None, str]] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    slicings: dict[str, list[Slicing]] = field(default_factory=dict)
    consumers: list[tuple[str, int, str]] = field(default_factory=list)  # (node, input index, tensor)
    raw_consumers: set[str] = field(default_factory=set)  # consumers that read removed values as they are
    hooks: dict[str, Callable] = field(default_factory=dict)  # node → rewrite hook for attributes
    # (tensor, number of equal blocks): the groups of a grouped conv must keep equal counts.
    block_constraints: list[tuple[str, int]] = field(default_factory=list)
    # grouped (not depthwise) Conv node → (input, output, group): input block j feeds output block j.
    grouped_convs: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    no_rule: dict[str, list[str]] = field(default_factory=dict)  # op_type → node names
    # constants the oracle zeroes at removed channels (a LayerNorm's scale and bias over a stream)
    silenced: list[Slicing] = field(default_factory=list)
    # tensors whose channels are split across axes (attention heads, channels/heads.py)
    layouts: dict[str, object] = field(default_factory=dict)
    # (tensor, channels [blocks, per block]): blocks that must keep equal counts, at least one each
    equal_blocks: list[tuple[str, np.ndarray]] = field(default_factory=list)
    # q·kᵀ scores on their way to attn·v → (heads axis, q origin, q rows, k origin, k rows)
    scores: dict[str, tuple] = field(default_factory=dict)
    # attentions whose heads can go whole: (q origin, q rows, k origin, k rows, v origin, v rows),
    # rows [heads, head_dim] of origin channels
    head_units: list[tuple] = field(default_factory=list)
    # reductions over channels that belong to a written-out LayerNorm (its variance), not pins
    norm_parts: set[str] = field(default_factory=set)
    # set by finalize():
    rep: dict[str, str] = field(default_factory=dict)
    base: dict[str, int] = field(default_factory=dict)
    count: int = 0
    uf: UnionFind = field(default_factory=UnionFind)
    pins: dict[int, str] = field(default_factory=dict)

    def ids(self, tensor: str, channels: Iterable[int] | None = None) -> np.ndarray:
        """Global element ids of a tensor's channels (all of them by default)."""
        base = self.base[self.rep[tensor]]
        if channels is None:
            return np.arange(base, base + self.spaces[tensor].size)
        return base + np.asarray(list(channels), dtype=np.int64)

    @property
    def constraints(self) -> list[list[np.ndarray]]:
        """Element-id blocks that must keep equal counts."""
        out = []
        for tensor, n in self.block_constraints:
            per = self.spaces[tensor].size // n
            out.append([self.ids(tensor, range(j * per, (j + 1) * per)) for j in range(n)])
        return out

    def conv_blocks(self, node: str) -> tuple[np.ndarray, np.ndarray]:
        """Element ids of a grouped conv's input blocks and output blocks, [group, channels per group] each."""
        x, out, n = self.grouped_convs[node]
        return self.ids(x).reshape(n, -1), self.ids(out).reshape(n, -1)

    def finalize(self) -> None:
        """Give each alias class its channel elements, then apply partial ties and pins."""
        for t in self.spaces:
            rep = self.alias[t]
            self.rep[t] = rep
            if rep not in self.base:
                self.base[rep] = self.count
                self.count += self.spaces[t].size
        for a, b, ca, cb in self.partial:
            for x, y in zip(self.ids(a, ca).tolist(), self.ids(b, cb).tolist()):
                self.uf.union(x, y)
        for tensor, channels, reason in self.pin_list:
            for i in self.ids(tensor, channels).tolist():
                self.pins.setdefault(i, reason)


class TieContext:
    """What a channel rule sees of one node and may declare about it."""

    def __init__(self, plan: ChannelPlan, node: onnx.NodeProto):
        self.plan = plan
        self.graph = plan.graph
        self.node = node

    # ---- reading ------------------------------------------------------------------------------
    def attr(self, name: str, default=None):
        """An attribute's value, or `default`."""
        return node_attr(self.node, name, default)

    def input(self, i: int) -> str | None:
        """Name of input i, None if absent."""
        return self.node.input[i] if i < len(self.node.input) and self.node.input[i] else None

    def output(self, i: int = 0) -> str:
        """Name of output i."""
        return self.node.output[i]

    def space(self, tensor: str | None) -> Space | None:
        """The channel space of a tensor, None if it has none."""
        return self.plan.spaces.get(tensor) if tensor else None

    def first_space(self) -> tuple[str, Space] | None:
        """The first input with channels and its space (the reference of a multi-input op)."""
        for t in self.node.input:
            if t in self.plan.spaces:
                return t, self.plan.spaces[t]
        return None

    def shape(self, tensor: str) -> tuple[int, ...] | None:
        """The static shape of a tensor, None if not static."""
        info = self.graph.info(tensor)
        return tuple(info.shape) if info is not None and info.is_static else None  # type: ignore[arg-type]

    def is_constant(self, tensor: str | None) -> bool:
        """True for initializers and Constant outputs."""
        return bool(tensor) and self.graph.is_constant(tensor)

    def value(self, tensor: str) -> np.ndarray | None:
        """The value of a constant input, None if it is not constant."""
        return self.graph.array(tensor) if self.is_constant(tensor) else None

    @property
    def where(self) -> str:
        """`OpType 'name'` for reasons and messages."""
        return f"{self.node.op_type} '{self.node.name}'"

    # ---- declaring ----------------------------------------------------------------------------
    def out_space(self, tensor: str, axis: int, size: int, block: int = 1) -> Space:
        """Give `tensor` a channel space (once)."""
        return self.plan.spaces.setdefault(tensor, Space(axis, size, block))

    def tie(self, a: str, b: str, a_channels: Sequence[int] | None = None,
            b_channels: Sequence[int] | None = None) -> None:
        """Channel a_channels[k] of `a` lives or dies with b_channels[k] of `b` (default: all, in order)."""
        sa, sb = self.plan.spaces[a], self.plan.spaces[b]
        ca = np.arange(sa.size) if a_channels is None else np.asarray(list(a_channels), dtype=np.int64)
        cb = np.arange(sb.size) if b_channels is None else np.asarray(list(b_channels), dtype=np.int64)
        if len(ca) != len(cb):
            raise ValueError(f"{self.where}: tie of {len(ca)} with {len(cb)} channels")
        if a_channels is None and b_channels is None and sa.size == sb.size:
            self.plan.alias.union(a, b)
        else:
            self.plan.partial.append((a, b, ca, cb))

    def slice(self, input_index: int, axis: int, tensor: str) -> None:
        """Constant input `input_index` has `axis` indexed by the channels of `tensor`."""
        self.plan.slicings.setdefault(self.node.name, []).append(Slicing(input_index, axis, tensor))

    def source(self, tensor: str, kind: str, weight: str | None) -> None:
        """This node creates the channels of `tensor` (a folded re-layout is named by its parameter)."""
        weight = self.graph.origins.get(weight, weight) if weight else weight
        self.plan.sources.append(Source(self.node.name, self.node.op_type, tensor, kind, weight))

    def silence(self, input_index: int, axis: int, tensor: str) -> None:
        """Constant input `input_index` is cut along `tensor`'s channels and, in the oracle, zeroed
        at the removed ones (so that the op outputs exactly 0 there whatever its input)."""
        self.slice(input_index, axis, tensor)
        self.plan.silenced.append(Slicing(input_index, axis, tensor, node=self.node.name))

    def consume(self, input_index: int, raw: bool = False) -> None:
        """This node reduces the channels of input `input_index` away (folding point). `raw`: it
        needs the removed channels' values themselves (a norm's statistics), not their
        contribution through the op, which is what gets folded otherwise."""
        tensor = self.input(input_index)
        if tensor in self.plan.spaces:
            self.plan.consumers.append((self.node.name, input_index, tensor))
            if raw:
                self.plan.raw_consumers.add(self.node.name)

    def pin(self, tensor: str | None, reason: str, channels: Sequence[int] | None = None) -> None:
        """Never remove these channels of `tensor` (all by default)."""
        if tensor in self.plan.spaces:
            self.plan.pin_list.append((tensor, None if channels is None else np.asarray(list(channels)), reason))

    def pin_all(self, reason: str) -> None:
        """Pin every channel of every input and output with a space."""
        for t in list(self.node.input) + list(self.node.output):
            self.pin(t, reason)

    def hook(self, fn: Callable) -> None:
        """Run `fn(rewrite_context)` when the node is rewritten (attributes, shape constants)."""
        self.plan.hooks[self.node.name] = fn


def count_entry(input_index: int, k: int) -> Callable:
    """A rewrite hook: entry k of constant input `input_index` (a Reshape shape, a Resize `sizes`)
    becomes the output's kept channel count; 0 (copy) and -1 (infer) entries stay."""
    def hook(rw) -> None:
        out = rw.node.outputs[0]
        if rw.kept(out) is None or not rw.is_const(input_index):
            return
        value = rw.const(input_index).copy()
        if value[k] > 0:
            value[k] = rw.kept_count(out) * rw.block(out)
            rw.set_const(input_index, value)
    return hook


def kept_in_order(order: np.ndarray, kept_in: np.ndarray, kept_out: np.ndarray) -> np.ndarray:
    """For an op whose output channel j is input channel order[j]: the positions, among the
    kept input channels, of the kept output channels' sources (a grown model's new channels,
    -1 in `kept_in`, stay where they are)."""
    if np.any(kept_in < 0):
        return np.arange(len(kept_in))
    rank = {int(c): r for r, c in enumerate(kept_in.tolist())}
    return np.array([rank[int(order[j])] for j in kept_out.tolist()], dtype=np.int64)


def channel_plan(graph: Graph) -> ChannelPlan:
    """Run every node's channel rule in topological order; pin graph outputs."""
    plan = ChannelPlan(graph)
    for name in graph.topological_nodes():
        node = graph.nodes[name]
        ctx = TieContext(plan, node)
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            plan.no_rule.setdefault(node.op_type, []).append(name)
            ctx.pin_all(f"no channel rule for {node.op_type}")
        else:
            rule(ctx)
        if plan.layouts and any(t in plan.layouts for t in node.input):
            heads.propagate(ctx)
        if plan.scores and any(t in plan.scores for t in node.input):
            heads.follow_scores(ctx)
    for name, node in graph.nodes.items():  # subgraphs (If, Loop, Scan) read outer tensors by name
        for t in sorted(outer_reads(node)):
            TieContext(plan, node).pin(t, f"read inside a subgraph of {node.op_type} '{name}'")
    for out in graph.outputs:
        TieContext(plan, onnx.NodeProto()).pin(out, "graph output")
        if out in plan.layouts:
            TieContext(plan, onnx.NodeProto()).pin(plan.layouts[out].origin, "graph output (split into heads)")
    plan.finalize()
    return plan


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """Tensors of the enclosing scope that the subgraphs of a node (If, Loop, Scan) read."""
    reads: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sub in graphs:
            defined = {t.name for t in sub.initializer} | {i.name for i in sub.input}
            for n in sub.node:
                reads.update(t for t in n.input if t and t not in defined)
                reads.update(t for t in outer_reads(n) if t not in defined)
                defined.update(n.output)
            reads.update(o.name for o in sub.output if o.name not in defined)
    return reads


def aligned_axis(out_rank: int, in_rank: int, out_axis: int) -> int:
    """The axis of a broadcast input (numpy right alignment) that lines up with `out_axis`."""
    return out_axis - (out_rank - in_rank)


for _family in _FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")
from . import heads  # noqa: E402  (layouts are followed after each node's rule)
