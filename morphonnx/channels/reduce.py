"""Ops over axes: reductions, Softmax and normalizations pin channels when they run over the
channel axis, and pass them through otherwise (spatial means of an SE block, token softmax)."""
from __future__ import annotations

import numpy as np

from . import TieContext, register

REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")


def _axes(ctx: TieContext, rank: int) -> list[int] | None:
    axes = ctx.attr("axes")
    if axes is None and ctx.input(1):
        value = ctx.value(ctx.input(1))
        if value is None:
            return None
        axes = value.tolist()
    if axes is None:
        axis = ctx.attr("axis")
        axes = [axis] if axis is not None else []
    if not axes and not ctx.attr("noop_with_empty_axes", 0):
        axes = list(range(rank))
    return [int(a) + rank if int(a) < 0 else int(a) for a in axes]


@register(*REDUCE)
def reduce(ctx: TieContext) -> None:
    """Reducing spatial axes keeps channels (their axis shifts without keepdims)."""
    x, out = ctx.input(0), ctx.output(0)
    xs, xshape = ctx.space(x), ctx.shape(x)
    if xs is None:
        return
    axes = _axes(ctx, len(xshape))
    if axes is None or xs.axis in axes:
        return ctx.pin(x, f"{ctx.where} reduces over channels")
    keep = int(ctx.attr("keepdims", 1))
    axis = xs.axis if keep else xs.axis - sum(a < xs.axis for a in axes)
    ctx.out_space(out, axis, xs.size, xs.block)
    ctx.tie(x, out)


@register("Softmax", "LogSoftmax", "Hardmax", "LpNormalization", "CumSum")
def along_axis(ctx: TieContext) -> None:
    """An op along one axis: pins when that axis is the channel axis."""
    x, out = ctx.input(0), ctx.output(0)
    xs, xshape = ctx.space(x), ctx.shape(x)
    if xs is None:
        return
    axis = int(ctx.attr("axis", -1))
    axis = axis + len(xshape) if axis < 0 else axis
    if axis == xs.axis:
        return ctx.pin(x, f"{ctx.where} runs over channels")
    ctx.out_space(out, xs.axis, xs.size, xs.block)
    ctx.tie(x, out)


@register("LayerNormalization", "MeanVarianceNormalization", "GroupNormalization")
def normalization(ctx: TieContext) -> None:
    """LayerNormalization normalizes axes [axis, rank); GroupNormalization mixes channels."""
    x, out = ctx.input(0), ctx.output(0)
    xs, xshape = ctx.space(x), ctx.shape(x)
    if xs is None:
        return
    if ctx.node.op_type == "GroupNormalization":
        return ctx.pin(x, f"{ctx.where} normalizes groups of channels")
    if ctx.node.op_type == "LayerNormalization":
        axis = int(ctx.attr("axis", -1))
        axes = list(range(axis + len(xshape) if axis < 0 else axis, len(xshape)))
    else:
        axes = [a + len(xshape) if a < 0 else a for a in ctx.attr("axes", [0, 2, 3])]
    if ctx.node.op_type == "LayerNormalization" and axes == [xs.axis] == [len(xshape) - 1] and xs.block == 1 \
            and not any(ctx.node.output[1:]):
        return _stream_norm(ctx, x, out, xs)
    if xs.axis in axes:
        return ctx.pin(x, f"{ctx.where} normalizes over channels")
    ctx.out_space(out, xs.axis, xs.size, xs.block)
    ctx.tie(x, out)


def _stream_norm(ctx: TieContext, x: str, out: str, xs) -> None:
    """LayerNormalization over the channels (a transformer's residual stream): channels stay
    prunable. In the oracle a removed channel's scale and bias are 0, so it outputs 0; its
    statistics still count all C channels, which the rewrite keeps exact (`layer_norm_hook`)."""
    ctx.out_space(out, xs.axis, xs.size)
    ctx.tie(x, out)
    for i in (1, 2):
        if ctx.input(i) and ctx.is_constant(ctx.input(i)) and len(ctx.shape(ctx.input(i)) or ()) == 1:
            ctx.silence(i, 0, out)
        elif ctx.input(i):
            return ctx.pin(x, f"{ctx.where} has a scale or bias that is not a constant vector")
    ctx.consume(0)  # the removed channels' values at the input enter the statistics
    ctx.hook(layer_norm_hook)


def layer_norm_hook(rw) -> None:
    """The pruned LayerNormalization over C' of C channels, exactly as the original over C
    with the removed channels holding the input-independent values v (0 when silenced):
        mean = (sum_kept x + S1) / C
        var  = (sum_kept (x - mean)^2 + S2 - 2 mean S1 + (C - C') mean^2) / C
    with S1 = sum v and S2 = sum v^2 per position (`rw.rw.norm_stats`), in standard ONNX ops."""
    import onnx_graphsurgeon as gs
    node = rw.node
    x, y = node.inputs[0], node.outputs[0]
    kept = rw.kept(x)
    if kept is None or rw.rw.norm_stats is None:  # nothing removed, or a grown model: a plain LayerNorm
        return
    c, r = rw.size(x), rw.size(x) - len(kept)
    dtype = np.asarray(node.inputs[1].values).dtype
    s1, s2 = rw.rw.norm_stats.get(node.name, (None, None))
    eps = float(node.attrs.get("epsilon", 1e-5))
    name = node.name
    nodes, k = [], [0]

    def op(op_type: str, *inputs, **attrs):
        k[0] += 1
        out = gs.Variable(f"{name}.exact{k[0]}", dtype=x.dtype)
        nodes.append(gs.Node(op_type, f"{name}.exact{k[0]}", attrs, list(inputs), [out]))
        return out

    def const(value, label: str):
        return gs.Constant(f"{name}.{label}", np.asarray(value, dtype=dtype))

    axes = gs.Constant(f"{name}.axes", np.array([-1], dtype=np.int64))
    total = op("ReduceSum", x, axes, keepdims=1)
    if s1 is not None:
        total = op("Add", total, const(s1, "removed_sum"))
    mean = op("Mul", total, const(1.0 / c, "inv_count"))
    d = op("Sub", x, mean)
    sq = op("ReduceSum", op("Mul", d, d), axes, keepdims=1)
    extra = op("Mul", op("Mul", mean, mean), const(r, "removed_count"))
    if s1 is not None:  # S2 - 2 mean S1
        extra = op("Add", extra, op("Sub", const(s2, "removed_sum_sq"), op("Mul", mean, const(2 * s1, "removed_sum2"))))
    var = op("Mul", op("Add", sq, extra), const(1.0 / c, "inv_count2"))
    normed = op("Div", d, op("Sqrt", op("Add", var, const(eps, "epsilon"))))
    scaled = op("Mul", normed, node.inputs[1])
    result = op("Add", scaled, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else scaled
    nodes[-1].outputs = [y]
    node.outputs = []
    node.inputs = []
    rw.rw.gs_graph.nodes.extend(nodes)
