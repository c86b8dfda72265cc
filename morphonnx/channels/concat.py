"""Concat, Split, Slice and Gather: offsets on the channel axis, ties on any other axis."""
from __future__ import annotations

import numpy as np

from . import TieContext, kept_in_order, register


def _axis(ctx: TieContext, rank: int, default: int = 0) -> int:
    a = int(ctx.attr("axis", default))
    return a + rank if a < 0 else a


@register("Concat")
def concat(ctx: TieContext) -> None:
    """On the channel axis: input k's channels sit at an offset in the output; elsewhere: all tied."""
    out = ctx.output(0)
    oshape, first = ctx.shape(out), ctx.first_space()
    if first is None or oshape is None:
        return
    ref = first[1]
    axis = _axis(ctx, len(oshape))
    if axis == ref.axis:
        ctx.out_space(out, axis, oshape[axis] // ref.block, ref.block)
        offset = 0
        for t in ctx.node.input:
            width = ctx.shape(t)[axis] // ref.block
            space = ctx.space(t)
            rng = range(offset, offset + width)
            if space is not None and space.axis == axis and space.block == ref.block:
                ctx.tie(t, out, None, rng)
            else:
                ctx.pin(out, f"{ctx.where} input '{t}' has no channels to cut", rng)
                ctx.pin(t, f"{ctx.where} joins '{t}' along another axis than its channels")
            offset += width
        return
    ctx.out_space(out, ref.axis, ref.size, ref.block)
    for i, t in enumerate(ctx.node.input):
        space = ctx.space(t)
        if space is not None and space.axis == ref.axis and space.size == ref.size:
            ctx.tie(t, out)
        elif ctx.is_constant(t) and ref.block == 1:
            ctx.slice(i, ref.axis, out)
        else:
            ctx.pin(out, f"{ctx.where} joins '{t}', which cannot be cut along channels")
            ctx.pin(t, f"{ctx.where} joins '{t}' along its channel axis")


@register("Split")
def split(ctx: TieContext) -> None:
    """On the channel axis: output k takes a contiguous range (sizes rewritten); elsewhere: tied."""
    x = ctx.input(0)
    xs, xshape = ctx.space(x), ctx.shape(x)
    if xs is None:
        return
    axis = _axis(ctx, len(xshape))
    if axis != xs.axis:
        for out in ctx.node.output:
            ctx.out_space(out, xs.axis, xs.size, xs.block)
            ctx.tie(x, out)
        return
    offset = 0
    for out in ctx.node.output:
        width = ctx.shape(out)[axis] // xs.block
        ctx.out_space(out, axis, width, xs.block)
        ctx.tie(x, out, range(offset, offset + width))
        offset += width
    ctx.hook(_split_sizes)


def _split_sizes(rw) -> None:
    write_split_sizes(rw, np.array([rw.kept_count(o) * rw.block(o) for o in rw.node.outputs], dtype=np.int64))


def write_split_sizes(rw, sizes: np.ndarray) -> None:
    """Give a Split node these output sizes: its `split` input or attribute, or (opset 18's
    `num_outputs`, unless the parts are still equal) a new `split` input."""
    if len(rw.node.inputs) > 1 and rw.node.inputs[1] is not None and rw.is_const(1):
        rw.set_const(1, sizes)
    elif "split" in rw.node.attrs:
        rw.set_attr("split", [int(s) for s in sizes])
    else:
        n, k = int(sizes.sum()), len(sizes)
        part = -(-n // k)
        if "num_outputs" in rw.node.attrs and sizes.tolist() == [min(part, max(0, n - i * part)) for i in range(k)]:
            return
        import onnx_graphsurgeon as gs
        rw.node.attrs.pop("num_outputs", None)
        rw.node.inputs.append(gs.Constant(f"{rw.node.name}.split", sizes))


@register("Slice")
def slice_(ctx: TieContext) -> None:
    """A step-1 slice of the channel axis keeps a contiguous range; other axes pass channels through."""
    x, out = ctx.input(0), ctx.output(0)
    xs, xshape = ctx.space(x), ctx.shape(x)
    if xs is None:
        return
    consts = [ctx.value(ctx.input(i)) if ctx.input(i) else None for i in range(1, 5)]
    if ctx.node.input[1:3] and any(c is None for c in consts[:2]):
        return ctx.pin(x, f"{ctx.where} has non-constant bounds")
    starts, ends = consts[0], consts[1]
    axes = consts[2] if consts[2] is not None else np.arange(len(starts))
    steps = consts[3] if consts[3] is not None else np.ones(len(starts), dtype=np.int64)
    axes = [int(a) + len(xshape) if a < 0 else int(a) for a in axes]
    if xs.axis not in axes:
        ctx.out_space(out, xs.axis, xs.size, xs.block)
        return ctx.tie(x, out)
    k = axes.index(xs.axis)
    start, stop, step = slice(int(starts[k]), int(ends[k]), int(steps[k])).indices(xshape[xs.axis])
    if step != 1 or xs.block != 1 or stop <= start:
        return ctx.pin(x, f"{ctx.where} slices channels with a step")
    ctx.out_space(out, xs.axis, stop - start)
    ctx.tie(x, out, range(start, stop))
    ctx.hook(_slice_bounds(k, start))


def _slice_bounds(k: int, start: int):
    def hook(rw) -> None:
        x, out = rw.node.inputs[0], rw.node.outputs[0]
        kept_in = rw.kept(x)
        # the first kept channel at or after `start` (a grown model's new channels, -1, end
        # each group's run, so they count with the runs before it)
        at = np.flatnonzero(kept_in >= start) if kept_in is not None else None
        new_start = start if kept_in is None else int(at[0]) if at.size else len(kept_in)
        starts, ends = rw.const(1).copy(), rw.const(2).copy()
        starts[k], ends[k] = new_start, new_start + rw.kept_count(out)
        rw.set_const(1, starts)
        rw.set_const(2, ends)
    return hook


@register("Gather")
def gather(ctx: TieContext) -> None:
    """Gathering along another axis passes channels through (the axis may move); along channels: pin."""
    x, idx, out = ctx.input(0), ctx.input(1), ctx.output(0)
    xs, xshape, ishape = ctx.space(x), ctx.shape(x), ctx.shape(idx)
    if xs is None and ishape is not None and xshape is not None and len(xshape) == 2 and ctx.is_constant(x) \
            and not ctx.is_constant(idx) and _axis(ctx, 2) == 0:
        # an embedding lookup: its table's columns create the output channels (a token or
        # position embedding starts a transformer's residual stream)
        ctx.out_space(out, len(ishape), xshape[1])
        ctx.source(out, "weight", x)
        ctx.slice(0, 1, out)
        return
    if xs is None or ishape is None:
        return
    axis = _axis(ctx, len(xshape))
    if axis == xs.axis:
        return _channel_permutation(ctx, x, idx, out, xs, axis, ishape)
    new_axis = xs.axis if xs.axis < axis else xs.axis - 1 + len(ishape)
    ctx.out_space(out, new_axis, xs.size, xs.block)
    ctx.tie(x, out)


def _channel_permutation(ctx: TieContext, x: str, idx: str, out: str, xs, axis: int, ishape) -> None:
    """A Gather of every channel in a fixed order (torch's `as_strided` over channels, a channel
    shuffle): output channel j is input channel idx[j], so the two are tied as a permutation;
    the rewrite renumbers the indices over the kept channels. Anything else pins."""
    value = ctx.value(idx)
    wide = [d for d, n in enumerate(ishape) if n != 1]
    if value is None or xs.block != 1 or len(wide) > 1 or value.size != xs.size:
        return ctx.pin(x, f"{ctx.where} gathers along channels")
    order = value.ravel().astype(np.int64) % xs.size
    if not np.array_equal(np.sort(order), np.arange(xs.size)):
        return ctx.pin(x, f"{ctx.where} gathers channels in a pattern that is no permutation")
    ctx.out_space(out, axis + (wide[0] if wide else 0), xs.size)
    ctx.tie(x, out, order, np.arange(xs.size))
    ctx.hook(_renumber(order))


def _renumber(order: np.ndarray):
    def hook(rw) -> None:
        kept_in, kept_out = rw.kept(rw.node.inputs[0]), rw.kept(rw.node.outputs[0])
        if kept_in is None or not rw.is_const(1):
            return
        new = kept_in_order(order, kept_in, kept_out)
        rw.set_const(1, new.reshape([len(new) if n != 1 else 1 for n in rw.const(1).shape]))
    return hook
