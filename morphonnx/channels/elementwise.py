"""Elementwise ops: channel i of every same-width operand and of the output are tied.

A broadcast operand of width 1 on the channel axis is not tied; a constant operand with one
entry per channel is sliced along; an activation operand without channels of its own (a
graph input, the output of a pinned op) pins the channels it meets. BatchNormalization is
elementwise with per-channel constants, and its scales are sources. Pools, Resize and Pad
act on spatial axes only.
"""
from __future__ import annotations

import numpy as np

from . import TieContext, aligned_axis, count_entry, register

UNARY = ("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
         "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg",
         "Abs", "Clip", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Not", "Cast", "CastLike", "Identity",
         "Dropout", "IsNaN", "IsInf", "Shrink")
BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Mean", "Sum", "Equal", "Less", "Greater",
          "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "PRelu", "BitShift")
POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


@register(*UNARY, *BINARY)
def broadcast(ctx: TieContext) -> None:
    """Numpy-broadcast elementwise op (extra scalar inputs such as Clip's bounds broadcast)."""
    out = ctx.output(0)
    oshape, first = ctx.shape(out), ctx.first_space()
    if first is None or oshape is None:
        return
    for t in ctx.node.input:  # the reference: an operand as wide as the output on its channel axis
        ts, tshape = ctx.space(t), ctx.shape(t) if t else None
        if ts is not None and tshape is not None and tshape[ts.axis] == oshape[ts.axis + len(oshape) - len(tshape)]:
            first = (t, ts)
            break
    ref = first[1]
    axis = aligned_axis(len(oshape), len(ctx.shape(first[0]) or ()), ref.axis)
    ctx.out_space(out, axis, ref.size, ref.block)
    for i, t in enumerate(ctx.node.input):
        shape = ctx.shape(t) if t else None
        if not t or shape is None or t in ctx.plan.layouts:  # heads: channels/heads.py
            continue
        a = aligned_axis(len(oshape), len(shape), axis)
        space = ctx.space(t)
        if space is not None and space.axis != a:  # its channels meet another axis of the output
            ctx.pin(t, f"{ctx.where} lines up the channels of '{t}' with another axis")
            continue
        if space is not None and space.size == ref.size and space.block == ref.block:
            ctx.tie(t, out)  # (also a 1-channel operand of a 1-channel output)
        elif a < 0 or shape[a] == 1:
            if space is not None:  # one channel broadcast over all: it cannot go
                ctx.pin(t, f"{ctx.where} broadcasts '{t}' along channels")
        elif ctx.is_constant(t) and shape[a] == ref.size * ref.block and ref.block == 1:
            ctx.slice(i, a, out)
        else:
            ctx.pin(out, f"{ctx.where} combines channels with '{t}', which cannot be cut along them")


@register("BatchNormalization", "InstanceNormalization")
def per_channel_norm(ctx: TieContext) -> None:
    """Per-channel scale, bias (and BN's mean and var) are sliced; BN scales are sources (MorphNet's gammas)."""
    x, out = ctx.input(0), ctx.output(0)
    xs = ctx.space(x)
    if xs is None or xs.axis != 1:
        return ctx.pin_all(f"{ctx.where} normalizes an input without channels on axis 1")
    ctx.out_space(out, 1, xs.size)
    ctx.tie(x, out)
    for i in range(1, len(ctx.node.input)):
        ctx.slice(i, 0, out)
    if ctx.node.op_type == "BatchNormalization":
        ctx.source(out, "bn", ctx.input(1))


@register(*POOLS, "Resize", "Upsample", "Pad", "LRN")
def spatial(ctx: TieContext) -> None:
    """Ops on spatial axes: channels pass through unless the op changes the channel axis' width."""
    x, out = ctx.input(0), ctx.output(0)
    xs, xshape, oshape = ctx.space(x), ctx.shape(x), ctx.shape(out)
    if xs is None:
        return
    if ctx.node.op_type == "LRN" or oshape is None or len(oshape) != len(xshape) or oshape[xs.axis] != xshape[xs.axis]:
        return ctx.pin(x, f"{ctx.where} mixes or resizes channels")
    if not _passes_axis(ctx, xs.axis):
        return ctx.pin(x, f"{ctx.where} acts on the channel axis")
    if ctx.node.op_type == "Resize" and len(ctx.node.input) > 3 and ctx.node.input[3]:
        axes = [a + len(xshape) if a < 0 else a for a in ctx.attr("axes", None) or range(len(xshape))]
        if xs.axis in axes:  # the sizes input names the channel count
            if not ctx.is_constant(ctx.node.input[3]):
                return ctx.pin(x, f"{ctx.where} has non-constant sizes")
            ctx.hook(count_entry(3, axes.index(xs.axis)))
    ctx.out_space(out, xs.axis, xs.size, xs.block)
    ctx.tie(x, out)


def _passes_axis(ctx: TieContext, axis: int) -> bool:
    """True if the op leaves `axis` alone: pools act on axes 2+, Pad on axes with pads (a pad of
    zero either side leaves an axis alone), Resize on axes whose size changes or are cropped."""
    op = ctx.node.op_type
    if op in POOLS or op == "Upsample":
        return axis < 2
    if op == "Pad":
        rank = len(ctx.shape(ctx.input(0)))
        pads = ctx.value(ctx.input(1)) if len(ctx.node.input) > 1 else ctx.attr("pads")
        if pads is None:
            return False
        pads = np.asarray(pads).ravel().tolist()
        axes = ctx.value(ctx.input(3)) if len(ctx.node.input) > 3 and ctx.input(3) else None
        axes = list(range(rank)) if axes is None else [int(a) + rank if a < 0 else int(a) for a in axes.ravel()]
        if axis not in axes:
            return True
        k = axes.index(axis)
        return pads[k] == 0 and pads[k + len(axes)] == 0
    if op == "Resize":
        mode = ctx.attr("coordinate_transformation_mode", "half_pixel")
        return (mode.decode() if isinstance(mode, bytes) else mode) != "tf_crop_and_resize"
    return True


@register("Shape", "Size", "Constant", "ConstantOfShape")
def metadata(ctx: TieContext) -> None:
    """Reads shapes only: nothing to tie, nothing to cut."""
