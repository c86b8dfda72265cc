"""Channels split across axes: attention heads.

A Reshape that splits a channel axis into trailing factors ([.., 3*H*d] into [.., 3, H, d] for
a fused q/k/v projection, [.., H*d] into [.., H, d] for one) gives its output a `Layout`: the
tensor holds the channels of its origin indexed by several axes, one per factor of the channel
number (most significant first), some factors fixed by a select (q is digit 0 of the 3). The
layout is followed through transposes, selects (Gather, Slice, Split of a factor other than the
last), reshapes that move or merge axes, elementwise ops with operands that do not vary along
its axes, and the products of attention:

- q·kᵀ contracts the last factor (head_dim) of q with that of k: channel (h, i) of q lives or
  dies with channel (h, i) of k, and the scores carry no channels (a removed pair adds 0, or a
  constant that the softmax cancels);
- attn·v keeps v's layout, and the Reshape that merges heads back gives the output a plain
  channel space again, tied to v's channels (the output projection consumes it).

Every live head keeps as many head_dim channels as the others (the split's blocks are
`equal_blocks`, legalized in masks.py, at least one each). A head whose q, k and v all die goes
whole where the scores carry nothing per head on their way from q·kᵀ to attn·v
(`follow_scores`, `ChannelPlan.head_units`). The reshapes on the way get the heads left and the
new head_dim (`live_heads`). Anything else that reads a layout pins its origin's channels, with
the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from . import Space, TieContext
from .concat import write_split_sizes
from .elementwise import BINARY, UNARY


@dataclass(frozen=True)
class Factor:
    """One digit of the origin's channel number: `size` values, of which the tensor holds
    `count` from `start` along `axis` (axis None: the one digit `start`)."""

    size: int
    axis: int | None
    start: int = 0
    count: int = 1


@dataclass(frozen=True)
class Layout:
    """The channels of `origin` (a tensor with a plain channel space) spread over axes.

    The last factor (head_dim) is the one the rewrite narrows: every live head keeps as many of
    its digits (`head_rows`); the factor before it (the heads) loses the heads removed whole."""

    origin: str
    factors: tuple[Factor, ...]

    def head_rows(self) -> np.ndarray:
        """The origin channels of every head, [heads, head_dim]: the factor before head_dim along
        its axis, the other factors at their first digit (all of head_dim when it has no such axis)."""
        axes, chans = self.grid()
        minor = axes.index(self.factors[-1].axis)
        head = self.factors[-2].axis if len(self.factors) > 1 else None
        keep = [minor] + ([axes.index(head)] if head is not None else [])
        index = tuple(slice(None) if i in keep else 0 for i in range(chans.ndim))
        sub = chans[index]
        if head is None:
            return sub.reshape(1, -1)
        return sub if axes.index(head) < minor else sub.T

    def heads(self) -> np.ndarray:
        """The origin channels of every head, [heads, head_dim]."""
        axes, chans = self.grid()
        minor = axes.index(self.factors[-1].axis)
        return np.moveaxis(chans, minor, -1).reshape(-1, chans.shape[minor])

    def grid(self) -> tuple[list[int], np.ndarray]:
        """The axes that hold factors (ascending) and the origin channel at every position of them."""
        strides = np.cumprod([1] + [f.size for f in reversed(self.factors)])[:-1][::-1]
        axes = sorted(f.axis for f in self.factors if f.axis is not None)
        base = sum(int(s) * f.start for f, s in zip(self.factors, strides) if f.axis is None)
        chans = np.full([1] * len(axes), base, dtype=np.int64)
        for f, s in zip(self.factors, strides):
            if f.axis is not None:
                shape = [1] * len(axes)
                shape[axes.index(f.axis)] = f.count
                chans = chans + ((f.start + np.arange(f.count)) * int(s)).reshape(shape)
        return axes, chans

    def factor_at(self, axis: int) -> int | None:
        """Index of the factor on `axis`, None if none."""
        return next((i for i, f in enumerate(self.factors) if f.axis == axis), None)

    def moved(self, axis_map: dict[int, int | None]) -> "Layout":
        """The layout with factor axes renumbered (an axis mapped to None is fixed at its start)."""
        return replace(self, factors=tuple(
            f if f.axis is None else replace(f, axis=axis_map[f.axis]) if axis_map[f.axis] is not None
            else replace(f, axis=None, count=1) for f in self.factors))


class Unsupported(Exception):
    """The op reads a layout in a way that cannot be cut exactly."""


def split(ctx: TieContext, x: str, xs: Space, xshape, oshape) -> bool:
    """A Reshape of a channel axis into trailing factors: give the output a layout and make the
    blocks (every value of the leading factors) keep equal counts. False if it is not one."""
    if xs.block != 1 or oshape is None:
        return False
    segments = _segments(xshape, oshape)
    seg = next((s for s in segments or [] if xs.axis in s[0]), None)
    if seg is None or [a for a in seg[0] if xshape[a] != 1] != [xs.axis]:
        return False
    outs = [j for j in seg[1] if oshape[j] != 1]
    if len(outs) < 2 or oshape[outs[-1]] < 2:
        return False
    lay = Layout(x, tuple(Factor(oshape[j], j, 0, oshape[j]) for j in outs))
    ctx.plan.equal_blocks.append((x, lay.heads()))
    _emit(ctx, ctx.output(0), lay)
    ctx.hook(_entries(x, lay.head_rows(), [(outs[-1], False, True, 1), (outs[-2], True, False, 1)]))
    return True


def propagate(ctx: TieContext) -> None:
    """Follow the layouts of the node's inputs to its outputs, or pin their origins."""
    fn = HEAD_RULES.get(ctx.node.op_type)
    try:
        if fn is None:
            raise Unsupported(f"{ctx.where} has no rule for channels split into heads")
        fn(ctx)
    except Unsupported as e:
        for t in ctx.node.input:
            lay = ctx.plan.layouts.get(t)
            if lay is not None:
                ctx.pin(lay.origin, f"{e} (channels split into heads)")


def _emit(ctx: TieContext, out: str, lay: Layout) -> None:
    """Give `out` the layout, or a plain channel space when one axis alone holds channels."""
    shape = ctx.shape(out)
    if shape is None:
        raise Unsupported(f"{ctx.where}: shape of '{out}' unknown")
    for f in lay.factors:
        if f.axis is not None and shape[f.axis] != f.count:
            raise Unsupported(f"{ctx.where}: '{out}' does not line up with its heads")
    axes, chans = lay.grid()
    if len(axes) == 1:
        ctx.out_space(out, axes[0], int(chans.size))
        ctx.tie(out, lay.origin, np.arange(chans.size), chans.ravel())
    else:
        ctx.plan.layouts[out] = lay


def _layout(ctx: TieContext, i: int) -> Layout | None:
    t = ctx.input(i)
    return ctx.plan.layouts.get(t) if t else None


def live_heads(rw, origin: str, rows: np.ndarray) -> tuple[int, int] | None:
    """(head_dim kept by every live head, heads left) of `rows` [heads, head_dim] (None: nothing cut)."""
    kept = rw.kept(origin)
    if kept is None:
        return None
    alive = np.isin(rows, kept)
    live = alive.any(axis=1)  # (a part of head_dim that keeps nothing anywhere: width 0)
    return int(alive[live].sum(axis=1).max()) if live.any() else 0, int(live.sum())


def _entries(origin: str, rows: np.ndarray, spec: list[tuple[int, bool, bool, int]]):
    """Rewrite hook of a Reshape on heads: output axis `axis` becomes (heads left if `heads`) ×
    (kept head_dim if `dim`) × `mult`; entries 0 (copy) and -1 (infer) stay."""
    def hook(rw) -> None:
        got = live_heads(rw, origin, rows)
        if got is None or not rw.is_const(1):
            return
        width, n = got
        value = rw.const(1).copy()
        for axis, heads, dim, mult in spec:
            if value[axis] > 0:
                value[axis] = (n if heads else 1) * (width if dim else 1) * mult
        rw.set_const(1, value)
    return hook


def _segments(a, b) -> list[tuple[list[int], list[int]]] | None:
    """Runs of axes of shape `a` and shape `b` with equal products (a reshape maps each run to
    the other); size-1 axes join a neighbouring run. None if the shapes do not factor so."""
    if math.prod(a) != math.prod(b) or 0 in a or 0 in b:
        return None
    segs, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        ins, outs, pa, pb = [i], [j], a[i], b[j]
        while pa != pb:
            if pa < pb:
                i += 1
                ins.append(i)
                pa *= a[i]
            else:
                j += 1
                outs.append(j)
                pb *= b[j]
        segs.append((ins, outs))
        i, j = i + 1, j + 1
    if not segs:
        return None
    segs[-1][0].extend(range(i, len(a)))
    segs[-1][1].extend(range(j, len(b)))
    return segs


def _reshape(ctx: TieContext) -> None:
    """Axes of a layout move, drop (size 1) or merge (whole consecutive factors) through a reshape."""
    lay, x, out = _layout(ctx, 0), ctx.input(0), ctx.output(0)
    xshape, oshape = ctx.shape(x), ctx.shape(out)
    segments = _segments(xshape, oshape) if xshape is not None and oshape is not None else None
    if segments is None:
        raise Unsupported(f"{ctx.where} reshapes heads with unknown shapes")
    last = len(lay.factors) - 1
    factors: list[Factor | None] = list(lay.factors)
    minor_axis, merged, head_axis, head_merged = None, 1, None, False
    for ins, outs in segments:
        held = [(a, lay.factor_at(a)) for a in ins]
        run = [k for a, k in held if k is not None and xshape[a] != 1]
        for a, k in held:
            if k is not None and xshape[a] == 1:  # a selected digit's axis goes
                if k == last:
                    raise Unsupported(f"{ctx.where} drops the head_dim axis")
                factors[k] = replace(lay.factors[k], axis=None, count=1)
        if not run:
            continue
        if any(k is None and xshape[a] != 1 for a, k in held):
            raise Unsupported(f"{ctx.where} merges heads with another axis")
        targets = [j for j in outs if oshape[j] != 1]
        if len(targets) != 1 or run != list(range(run[0], run[-1] + 1)):
            raise Unsupported(f"{ctx.where} splits heads")
        if len(run) > 1 and any(lay.factors[k].count != lay.factors[k].size for k in run):
            return _merge_parts(ctx, lay, run, targets[0])
        first = lay.factors[run[0]]
        size = math.prod(lay.factors[k].size for k in run)
        factors[run[0]] = replace(first, axis=targets[0]) if len(run) == 1 else Factor(size, targets[0], 0, size)
        for k in run[1:]:
            factors[k] = None
        if run[-1] == last:
            minor_axis, merged = targets[0], size // lay.factors[last].size
            head_merged = last - 1 in run
        elif run == [last - 1]:
            head_axis = targets[0]
    if minor_axis is None:
        raise Unsupported(f"{ctx.where} reshapes the head_dim axis")
    _emit(ctx, out, Layout(lay.origin, tuple(f for f in factors if f is not None)))
    if ctx.node.op_type == "Reshape":
        heads = lay.factors[last - 1].count if head_merged else 1
        spec = [(minor_axis, head_merged, True, merged // heads)] + ([(head_axis, True, False, 1)] if head_axis is not None else [])
        ctx.hook(_entries(lay.origin, lay.head_rows(), spec))


def _merge_parts(ctx: TieContext, lay: Layout, run: list[int], axis: int) -> None:
    """Heads merged back when some of them hold part of a factor (v, the last part of a
    head_dim split): the merged axis must be the only one with channels; it gets a plain space."""
    if [k for k, f in enumerate(lay.factors) if f.axis is not None] != run:
        raise Unsupported(f"{ctx.where} partly merges heads")
    _, chans = lay.grid()
    ctx.out_space(ctx.output(0), axis, int(chans.size))
    ctx.tie(ctx.output(0), lay.origin, np.arange(chans.size), chans.ravel())
    if ctx.node.op_type == "Reshape":
        head = len(lay.factors) - 2 in run
        others = chans.size // lay.factors[-1].count // (lay.factors[-2].count if head else 1)
        ctx.hook(_entries(lay.origin, lay.head_rows(), [(axis, head, True, others)]))


def _transpose(ctx: TieContext) -> None:
    lay = _layout(ctx, 0)
    rank = len(ctx.shape(ctx.input(0)))
    perm = [int(p) for p in ctx.attr("perm", list(range(rank - 1, -1, -1)))]
    _emit(ctx, ctx.output(0), lay.moved({a: perm.index(a) for a in range(rank)}))


def _select(lay: Layout, axis: int, start: int, count: int, where: str, minor: bool = False) -> Layout:
    """The layout with `axis` cut to [start, start + count) (its own indices); of head_dim only
    if `minor`."""
    k = lay.factor_at(axis)
    if k is None:
        return lay
    f = lay.factors[k]
    if k == len(lay.factors) - 1 and (start, count) != (0, f.count) and not minor:
        raise Unsupported(f"{where} selects part of head_dim")
    factors = list(lay.factors)
    factors[k] = replace(f, start=f.start + start, count=count)
    return replace(lay, factors=tuple(factors))


def _gather(ctx: TieContext) -> None:
    lay, idx = _layout(ctx, 0), ctx.input(1)
    rank = len(ctx.shape(ctx.input(0)))
    axis = int(ctx.attr("axis", 0)) % rank
    ishape = ctx.shape(idx)
    value = ctx.value(idx)
    if ishape is None:
        raise Unsupported(f"{ctx.where}: index shape unknown")
    k = lay.factor_at(axis)
    if k is not None:
        if value is None or value.size != 1 or k == len(lay.factors) - 1:
            raise Unsupported(f"{ctx.where} gathers along heads")
        i = int(value.ravel()[0]) % lay.factors[k].count
        lay = _select(lay, axis, i, 1, ctx.where)
    shift = len(ishape) - 1
    _emit(ctx, ctx.output(0), lay.moved({a: (a if a < axis else a + shift if a > axis else
                                             (None if not ishape else a)) for a in range(rank)}))


def _slice(ctx: TieContext) -> None:
    """A step-1 Slice of head axes; of head_dim too (q, k and v cut out of each head, as
    TorchScript exports MaxViT): that part keeps as many channels in every head, and the
    bounds follow the kept channels."""
    lay, x = _layout(ctx, 0), ctx.input(0)
    xshape = ctx.shape(x)
    consts = [ctx.value(ctx.input(i)) if ctx.input(i) else None for i in range(1, 5)]
    if consts[0] is None or consts[1] is None:
        raise Unsupported(f"{ctx.where} has non-constant bounds")
    axes = consts[2] if consts[2] is not None else np.arange(len(consts[0]))
    steps = consts[3] if consts[3] is not None else np.ones(len(consts[0]), dtype=np.int64)
    minor = None
    for k, (s, e, a, st) in enumerate(zip(consts[0], consts[1], axes, steps)):
        a = int(a) % len(xshape)
        start, stop, step = slice(int(s), int(e), int(st)).indices(xshape[a])
        if lay.factor_at(a) is not None and step != 1:
            raise Unsupported(f"{ctx.where} slices heads with a step")
        whole = lay.factor_at(a) == len(lay.factors) - 1 and (start, stop) != (0, xshape[a])
        if whole and stop > start:
            minor = (k, lay.head_rows()[:, :start])
        lay = _select(lay, a, start, max(0, stop - start), ctx.where, minor=whole)
    if minor is not None:
        ctx.plan.equal_blocks.append((lay.origin, lay.heads()))
        ctx.hook(_slice_widths(lay.origin, minor[0], minor[1], lay.head_rows()))
    _emit(ctx, ctx.output(0), lay)


def _slice_widths(origin: str, k: int, before: np.ndarray, rows: np.ndarray):
    """Rewrite hook of a Slice of head_dim: entry k of the bounds covers the part's kept channels."""
    def hook(rw) -> None:
        got = live_heads(rw, origin, rows)
        if got is None:
            return
        width, start = got[0], live_heads(rw, origin, before)[0]
        starts, ends = rw.const(1).copy(), rw.const(2).copy()
        starts[k], ends[k] = start, start + width
        rw.set_const(1, starts)
        rw.set_const(2, ends)
    return hook


def _split(ctx: TieContext) -> None:
    """A split of head_dim (LeViT's and EfficientFormer's q, k, v of one projection per head):
    each part keeps as many channels in every head, and the split sizes follow."""
    lay, x = _layout(ctx, 0), ctx.input(0)
    xshape = ctx.shape(x)
    axis = int(ctx.attr("axis", 0)) % len(xshape)
    minor = lay.factor_at(axis) == len(lay.factors) - 1
    offset, runs = 0, []
    for out in ctx.node.output:
        width = ctx.shape(out)[axis]
        part = _select(lay, axis, offset, width, ctx.where, minor=True)
        if minor:
            ctx.plan.equal_blocks.append((lay.origin, part.heads()))
            runs.append(part.head_rows())
        _emit(ctx, out, part)
        offset += width
    if minor:
        ctx.hook(_split_widths(lay.origin, runs))


def _split_widths(origin: str, runs: list[np.ndarray]):
    def hook(rw) -> None:
        widths = [live_heads(rw, origin, r) for r in runs]
        if widths[0] is not None:
            write_split_sizes(rw, np.array([w for w, _ in widths], dtype=np.int64))
    return hook


def _elementwise(ctx: TieContext) -> None:
    """The layout passes when every other operand is constant along its axes or has the same
    layout (its channels tie); an operand with plain channels on the head_dim axis (split
    attention's branches times their softmax weights) ties channel c to every head's c."""
    out = ctx.output(0)
    oshape = ctx.shape(out)
    i0, lay = next((i, _layout(ctx, i)) for i in range(len(ctx.node.input)) if _layout(ctx, i) is not None)
    if oshape is None or len(ctx.shape(ctx.input(i0))) != len(oshape):
        raise Unsupported(f"{ctx.where} broadcasts heads")
    axes, grid = lay.grid()
    plain = False
    for i, t in enumerate(ctx.node.input):
        if not t or i == i0:
            continue
        shape = ctx.shape(t)
        other = ctx.plan.layouts.get(t)
        if other is not None:
            oaxes, ogrid = other.grid()
            if oaxes != axes or ogrid.shape != grid.shape or len(shape) != len(oshape):
                raise Unsupported(f"{ctx.where} combines heads of different layouts")
            ctx.tie(lay.origin, other.origin, grid.ravel(), ogrid.ravel())
            continue
        if shape is None:
            raise Unsupported(f"{ctx.where} combines heads with '{t}' of unknown shape")
        space = ctx.space(t)
        offset = len(oshape) - len(shape)
        if space is not None:
            _tie_plain(ctx, lay, t, space, offset)
            plain = True
            continue
        for a in axes:
            if a - offset >= 0 and shape[a - offset] != 1:
                raise Unsupported(f"{ctx.where} combines heads with '{t}', which varies along them")
    if not plain:
        _emit(ctx, out, lay)


def _tie_plain(ctx: TieContext, lay: Layout, t: str, space: Space, offset: int) -> None:
    """Channel c of plain `t` with the head_dim digit c of every head (same axis, same width)."""
    minor = lay.factors[-1]
    if space.block != 1 or space.axis + offset != minor.axis or space.size != minor.count:
        raise Unsupported(f"{ctx.where} combines heads with the channels of '{t}' on another axis")
    heads = lay.heads()
    ctx.tie(t, lay.origin, np.tile(np.arange(space.size), len(heads)), heads.ravel())


def _tie_along(ctx: TieContext, lay: Layout, axis: int) -> Layout:
    """Channels that differ only in the factor on `axis` tie (an op mixes them): the layout
    with that factor at its first digit."""
    k = lay.factor_at(axis)
    if k is None:
        return lay
    if k == len(lay.factors) - 1:
        raise Unsupported(f"{ctx.where} runs over head_dim")
    axes, grid = lay.grid()
    grid = np.moveaxis(grid, axes.index(axis), 0)
    for j in range(1, grid.shape[0]):
        ctx.tie(lay.origin, lay.origin, grid[0].ravel(), grid[j].ravel())
    return lay


def _softmax(ctx: TieContext) -> None:
    """Along a head factor (split attention's softmax over radix branches): its channels tie."""
    rank = len(ctx.shape(ctx.input(0)))
    lay = _tie_along(ctx, _layout(ctx, 0), int(ctx.attr("axis", -1)) % rank)
    _emit(ctx, ctx.output(0), lay)


def _reduce(ctx: TieContext) -> None:
    """A reduction over head factors (the sum over radix branches) ties their channels and
    drops those factors."""
    from .reduce import _axes
    lay = _layout(ctx, 0)
    rank = len(ctx.shape(ctx.input(0)))
    axes = _axes(ctx, rank)
    if axes is None:
        raise Unsupported(f"{ctx.where} reduces over unknown axes")
    keep = int(ctx.attr("keepdims", 1))
    for a in axes:
        lay = _tie_along(ctx, lay, a)
    fixed = lay.moved({a: None if a in axes else a for a in range(rank)})
    if not keep:
        fixed = fixed.moved({a: a - sum(r < a for r in axes) for a in range(rank) if a not in axes})
    _emit(ctx, ctx.output(0), fixed)


def _matmul(ctx: TieContext) -> None:
    """q·kᵀ ties the head_dim channels of q and k; attn·v carries v's layout to the output."""
    a, b, out = ctx.input(0), ctx.input(1), ctx.output(0)
    la, lb = ctx.plan.layouts.get(a), ctx.plan.layouts.get(b)
    ra, rb, ro = len(ctx.shape(a) or ()), len(ctx.shape(b) or ()), len(ctx.shape(out) or ())
    if min(ra, rb) < 2 or ro != max(ra, rb):
        raise Unsupported(f"{ctx.where} multiplies heads of rank < 2")
    if (la is None and (a in ctx.plan.spaces or ctx.is_constant(a))) \
            or (lb is None and (b in ctx.plan.spaces or ctx.is_constant(b))):
        raise Unsupported(f"{ctx.where} multiplies heads with channels")
    if la is not None and lb is not None:
        return _contract(ctx, la, lb, ra, rb, ro)
    lay, rank, free, contracted = (la, ra, ra - 2, ra - 1) if la is not None else (lb, rb, rb - 1, rb - 2)
    if lay.factor_at(contracted) is not None:
        raise Unsupported(f"{ctx.where} contracts heads with a tensor without them")
    _emit(ctx, out, lay.moved({k: k + ro - rank for k in range(rank)}))


def _contract(ctx: TieContext, la: Layout, lb: Layout, ra: int, rb: int, ro: int) -> None:
    last_a, last_b = len(la.factors) - 1, len(lb.factors) - 1
    if la.factor_at(ra - 1) != last_a or lb.factor_at(rb - 2) != last_b \
            or la.factor_at(ra - 2) is not None or lb.factor_at(rb - 1) is not None:
        raise Unsupported(f"{ctx.where} contracts other axes than head_dim")
    axes_a, ga = la.grid()
    axes_b, gb = lb.grid()
    batch_a = [k + ro - ra for k in axes_a if k < ra - 2]
    batch_b = [k + ro - rb for k in axes_b if k < rb - 2]
    if batch_a != batch_b or ga.shape != gb.shape:
        raise Unsupported(f"{ctx.where}: the heads of its operands do not line up")
    ctx.tie(la.origin, lb.origin, ga.ravel(), gb.ravel())
    ha, hb = la.factors[last_a - 1].axis if last_a else None, lb.factors[last_b - 1].axis if last_b else None
    if len(batch_a) == 1 and ha is not None and hb is not None and ha + ro - ra == batch_a[0] == hb + ro - rb:
        ctx.plan.scores[ctx.output(0)] = (batch_a[0], la.origin, la.head_rows(), lb.origin, lb.head_rows())


def follow_scores(ctx: TieContext) -> None:
    """Attention scores [.., heads, q, k] on their way to attn·v: while nothing varies along the
    heads axis (a scale, a mask, the softmax), head h of q, k and v is one unit that can go
    whole (`ChannelPlan.head_units`); anything else leaves the heads at one channel at least."""
    plan, op = ctx.plan, ctx.node.op_type
    i0 = next(i for i, t in enumerate(ctx.node.input) if t in plan.scores)
    axis, *qk = plan.scores[ctx.input(i0)]
    oshape = ctx.shape(ctx.output(0))
    if oshape is None or len(oshape) != len(ctx.shape(ctx.input(i0)) or ()):
        return
    if op == "MatMul" and i0 == 0 and ctx.input(1) in plan.layouts:
        v = plan.layouts[ctx.input(1)]
        rb = len(ctx.shape(ctx.input(1)))
        if len(v.factors) > 1 and v.factors[-2].axis is not None and v.factors[-2].axis + len(oshape) - rb == axis:
            rows = v.head_rows()
            if len(rows) == len(qk[1]) == len(qk[3]):
                plan.head_units.append((qk[0], qk[1], qk[2], qk[3], v.origin, rows))
        return
    if op in ("Softmax", "LogSoftmax"):
        if int(ctx.attr("axis", -1)) % len(oshape) == axis:
            return
    elif op not in UNARY + BINARY or op == "Where":
        return
    for t in ctx.node.input:
        if not t or t == ctx.input(i0):
            continue
        shape = ctx.shape(t)
        a = axis - (len(oshape) - len(shape)) if shape is not None else None
        if t in plan.spaces or t in plan.layouts or shape is None or (a is not None and a >= 0 and shape[a] != 1):
            return
    plan.scores[ctx.output(0)] = (axis, *qk)


HEAD_RULES = {"Softmax": _softmax, "LogSoftmax": _softmax,
              **{op: _reduce for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd")},
              "Reshape": _reshape, "Flatten": _reshape, "Squeeze": _reshape, "Unsqueeze": _reshape,
              "Transpose": _transpose, "Gather": _gather, "Slice": _slice, "Split": _split,
              "MatMul": _matmul, **{op: _elementwise for op in UNARY + BINARY if op != "Where"}}
