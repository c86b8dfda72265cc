"""Ops over axes: reductions, Softmax and normalizations pin channels when they run over the
channel axis, and pass them through otherwise (spatial means of an SE block, token softmax)."""
from __future__ import annotations

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
    if xs.axis in axes:
        return ctx.pin(x, f"{ctx.where} normalizes over channels")
    ctx.out_space(out, xs.axis, xs.size, xs.block)
    ctx.tie(x, out)
