"""Elementwise ops: channel i of every same-width operand and of the output are tied.

A broadcast operand of width 1 on the channel axis is not tied; a constant operand with one
entry per channel is sliced along; an activation operand without channels of its own (a
graph input, the output of a pinned op) pins the channels it meets. BatchNormalization is
elementwise with per-channel constants, and its scales are sources. Pools, Resize and Pad
act on spatial axes only.
"""
from __future__ import annotations

from . import TieContext, aligned_axis, register

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
    ref = first[1]
    axis = aligned_axis(len(oshape), len(ctx.shape(first[0]) or ()), ref.axis)
    ctx.out_space(out, axis, ref.size, ref.block)
    for i, t in enumerate(ctx.node.input):
        shape = ctx.shape(t) if t else None
        if not t or shape is None:
            continue
        a = aligned_axis(len(oshape), len(shape), axis)
        if a < 0 or shape[a] == 1:
            continue  # broadcast along channels: not tied
        space = ctx.space(t)
        if space is not None and space.axis == a and space.size == ref.size:
            ctx.tie(t, out)
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
    ctx.out_space(out, xs.axis, xs.size, xs.block)
    ctx.tie(x, out)


@register("Shape", "Size", "Constant", "ConstantOfShape")
def metadata(ctx: TieContext) -> None:
    """Reads shapes only: nothing to tie, nothing to cut."""
