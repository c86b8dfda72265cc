"""Shape ops: Transpose moves the channel axis; Reshape, Flatten, Squeeze and Unsqueeze keep it,
move it, or merge it with the axes after it (channel c becomes a contiguous run of features);
a reshape that splits channels or merges them with earlier axes pins them. Expand broadcasts."""
from __future__ import annotations

import math

import numpy as np

from . import Space, TieContext, aligned_axis, count_entry, heads, kept_in_order, register


@register("Transpose")
def transpose(ctx: TieContext) -> None:
    """The channel axis moves to where the permutation puts it."""
    x, out = ctx.input(0), ctx.output(0)
    xs, xshape = ctx.space(x), ctx.shape(x)
    if xs is None:
        return
    perm = list(ctx.attr("perm", list(range(len(xshape) - 1, -1, -1))))
    if xs.block != 1:
        return ctx.pin(x, f"{ctx.where} transposes flattened features")
    ctx.out_space(out, perm.index(xs.axis), xs.size)
    ctx.tie(x, out)


def map_space(xs: Space, xshape: tuple[int, ...], oshape: tuple[int, ...]) -> Space | None:
    """Where the channels of a reshaped tensor go, or None if the reshape splits or mixes them.

    The output axis k holds the channels when the axes before it hold exactly the input axes
    before the channel axis, and its width is the channels times a run of the following input
    axes (that run becomes the block of each channel).
    """
    before = math.prod(xshape[: xs.axis])
    width = xs.size * xs.block
    runs = {1}
    for f in xshape[xs.axis + 1:]:
        runs.add(max(runs) * f)
    prod = 1
    for k, d in enumerate(oshape):
        if prod == before and d % width == 0 and d // width in runs:
            return Space(k, xs.size, xs.block * (d // width))
        prod *= d
        if prod > before:
            return None
    return None


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: TieContext) -> None:
    """Channels keep their order; their axis moves or absorbs the axes after it."""
    x, out = ctx.input(0), ctx.output(0)
    xs, xshape, oshape = ctx.space(x), ctx.shape(x), ctx.shape(out)
    if xs is None:
        return
    space = map_space(xs, xshape, oshape) if oshape is not None else None
    if space is None and ctx.node.op_type == "Reshape" and _channel_shuffle(ctx, x, xs, xshape, oshape):
        return
    if space is None and heads.split(ctx, x, xs, xshape, oshape):
        return
    if space is None and _merge_earlier(ctx, x, xs, xshape, oshape):
        return
    if space is None:
        return ctx.pin(x, f"{ctx.where} splits channels or merges them with earlier axes")
    ctx.out_space(out, space.axis, space.size, space.block)
    ctx.tie(x, out)
    if ctx.node.op_type == "Reshape":
        ctx.hook(count_entry(1, space.axis))


def _merge_earlier(ctx: TieContext, x: str, xs: Space, xshape, oshape) -> bool:
    """Channels merged with the axes just before them (timm's Swin patch merging: [.., 2, 2, C]
    into [.., 4C]): output channel p*C + c is a copy of channel c, tied to it. False if not so."""
    if xs.block != 1 or oshape is None or xshape is None:
        return False
    c, rest = xs.size, tuple(xshape[xs.axis + 1:])
    for k in range(len(oshape)):
        if tuple(oshape[k + 1:]) != rest:
            continue
        for m in range(xs.axis):
            copies = math.prod(xshape[m:xs.axis])
            if math.prod(xshape[:m]) == math.prod(oshape[:k]) and oshape[k] == copies * c:
                ctx.out_space(ctx.output(0), k, copies * c)
                ctx.tie(x, ctx.output(0), np.tile(np.arange(c), copies), np.arange(copies * c))
                ctx.hook(count_entry(1, k))
                return True
    return False


def _only_user(ctx: TieContext, tensor: str, op_types: tuple[str, ...]):
    """The single consumer of `tensor` if it has one of these op types and `tensor` is no graph output."""
    users = ctx.graph.consumers.get(tensor, [])
    node = ctx.graph.nodes[users[0]] if len(users) == 1 else None
    return node if node is not None and node.op_type in op_types and tensor not in ctx.graph.outputs else None


def _channel_shuffle(ctx: TieContext, x: str, xs: Space, xshape, oshape) -> bool:
    """ShuffleNet's channel shuffle, Reshape [.., g, C/g, ..] - Transpose of those two axes -
    Reshape back: a fixed permutation of the channels (output channel i*g + k is input channel
    k*C/g + i). Tied as such; the rewrite replaces the three ops by a Gather of the kept
    channels in shuffled order. False (nothing declared) for anything else."""
    a, c = xs.axis, xs.size
    if xs.block != 1 or oshape is None or len(oshape) != len(xshape) + 1 \
            or tuple(oshape[:a]) + tuple(oshape[a + 2:]) != tuple(xshape[:a]) + tuple(xshape[a + 1:]) \
            or oshape[a] * oshape[a + 1] != c:
        return False
    t = _only_user(ctx, ctx.output(0), ("Transpose",))
    swap = list(range(len(oshape)))
    swap[a], swap[a + 1] = a + 1, a
    if t is None or [int(p) for p in next((att.ints for att in t.attribute if att.name == "perm"), [])] != swap:
        return False
    back = _only_user(ctx, t.output[0], ("Reshape", "Flatten", "Identity"))
    while back is not None and back.op_type == "Identity":  # torch's .contiguous() / clone
        back = _only_user(ctx, back.output[0], ("Reshape", "Flatten", "Identity"))
    if back is None or ctx.shape(back.output[0]) != tuple(xshape):
        return False
    g = oshape[a]
    order = np.arange(c).reshape(g, c // g).T.ravel()
    ctx.out_space(back.output[0], a, c)
    ctx.tie(x, back.output[0], order, np.arange(c))
    ctx.hook(_as_gather(order, a, back.name))
    return True


def _as_gather(order: np.ndarray, axis: int, last: str):
    def hook(rw) -> None:
        import onnx_graphsurgeon as gs
        x = rw.node.inputs[0]
        end = rw.rw.nodes[last]
        out = end.outputs[0]
        kept_in, kept_out = rw.kept(x), rw.kept(out)
        if kept_in is None:
            return
        idx = gs.Constant(f"{rw.node.name}.order", kept_in_order(order, kept_in, kept_out))
        end.outputs = []
        rw.rw.gs_graph.nodes.append(gs.Node("Gather", f"{rw.node.name}.shuffle", {"axis": axis}, [x, idx], [out]))
    return hook


@register("Expand", "Tile")
def expand(ctx: TieContext) -> None:
    """Broadcasting copies keep the channels (the target shape names the new count)."""
    x, out = ctx.input(0), ctx.output(0)
    xs, xshape, oshape = ctx.space(x), ctx.shape(x), ctx.shape(out)
    if xs is None or oshape is None:
        return
    axis = aligned_axis(len(oshape), len(xshape), xs.axis)
    if oshape[axis] != xshape[xs.axis]:
        return ctx.pin(x, f"{ctx.where} repeats channels")
    ctx.out_space(out, axis, xs.size, xs.block)
    ctx.tie(x, out)
    if ctx.node.op_type == "Expand":
        ctx.hook(_expand_shape(axis))


def _expand_shape(axis: int):
    def hook(rw) -> None:
        out = rw.node.outputs[0]
        if rw.kept(out) is None or not rw.is_const(1):
            return
        shape = rw.const(1).copy()
        k = axis - (len(rw.node.outputs[0].shape or []) - len(shape)) if rw.node.outputs[0].shape else axis
        if 0 <= k < len(shape) and shape[k] > 1:
            shape[k] = rw.kept_count(out)
        rw.set_const(1, np.asarray(shape, dtype=np.int64))
    return hook
