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
    ctx.consume(0, raw=True)  # the removed channels' values at the input enter the statistics
    ctx.hook(layer_norm_hook)


def layer_norm_hook(rw) -> None:
    """The pruned LayerNormalization over C' of C channels, exactly as the original over C: the
    removed channels' values at its input (input-independent: 0 when silenced, a position
    embedding or class token otherwise; `rw.rw.norm_values`) are appended back as constants,
    so the norm's statistics see the same C values; scale and bias are 0 there, and the kept
    C' channels are sliced out: Concat - LayerNormalization (its own fused kernel) - Slice."""
    import onnx_graphsurgeon as gs
    node = rw.node
    x, y = node.inputs[0], node.outputs[0]
    kept = rw.kept(x)
    if kept is None or rw.rw.norm_values is None:  # nothing removed, or a grown model: a plain LayerNorm
        return
    c, r, name = rw.size(x), rw.size(x) - len(kept), node.name
    dtype = np.asarray(node.inputs[1].values).dtype
    rank = len(x.shape) if x.shape is not None else len(rw.rw.groups.graph.static_shape(x.name, "LayerNorm input"))
    values = rw.rw.norm_values.get(name)
    values = np.zeros([1] * (rank - 1) + [r], dtype=dtype) if values is None else np.asarray(values, dtype=dtype)

    def var(label: str, dt=None) -> gs.Variable:
        return gs.Variable(f"{name}.{label}", dtype=dt if dt is not None else x.dtype)

    def add(op: str, inputs, out: gs.Variable, **attrs) -> gs.Variable:
        rw.rw.gs_graph.nodes.append(gs.Node(op, f"{out.name}.op", attrs, list(inputs), [out]))
        return out

    lead = add("Shape", [x], var("lead", np.int64), end=-1)
    shape = add("Concat", [lead, gs.Constant(f"{name}.removed_count", np.array([r], dtype=np.int64))],
                var("removed_shape", np.int64), axis=0)
    removed = add("Expand", [gs.Constant(f"{name}.removed_values", values), shape], var("removed"))
    full = add("Concat", [x, removed], var("all_channels"), axis=-1)
    def pad(t: gs.Constant, label: str) -> gs.Constant:  # 0 at the appended channels
        return gs.Constant(f"{name}.{label}", np.concatenate([np.asarray(t.values, dtype=dtype), np.zeros(r, dtype)]))

    normed = var("normalized")
    node.inputs = [full, pad(node.inputs[1], "scale_all")] + (
        [pad(node.inputs[2], "bias_all")] if len(node.inputs) > 2 and node.inputs[2].name else [])
    node.outputs = [normed]
    add("Slice", [normed, gs.Constant(f"{name}.start", np.array([0], dtype=np.int64)),
                  gs.Constant(f"{name}.stop", np.array([c - r], dtype=np.int64)),
                  gs.Constant(f"{name}.axis", np.array([-1], dtype=np.int64))], y)
