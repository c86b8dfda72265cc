"""Sources: ops whose constant weights create their output channels (Conv, ConvTranspose, Gemm, MatMul).

Removing an output channel removes weight rows and bias entries; removing an input channel
removes weight columns (the op consumes its input's channels). Depthwise convolution ties
input channel i to its output block instead; other grouped convolutions keep equal-sized
conv groups (`constraints`, `grouped_convs`, legalized in masks.py); a conv group whose input
and output blocks are both removed is removed whole (the hook lowers `group`).
"""
from __future__ import annotations

import numpy as np

from . import TieContext, register


@register("Conv")
def conv(ctx: TieContext) -> None:
    """Conv(x, W[C_out, C_in/g, k...], B): plain, depthwise (with multiplier) or grouped."""
    x, w, out = ctx.input(0), ctx.input(1), ctx.output(0)
    wshape = ctx.shape(w) if w else None
    xshape = ctx.shape(x)
    if not ctx.is_constant(w) or wshape is None or xshape is None:
        return ctx.pin_all(f"{ctx.where} has a non-constant weight")
    c_out, group, c_in = wshape[0], int(ctx.attr("group", 1)), xshape[1]
    ctx.out_space(out, 1, c_out)
    ctx.source(out, "weight", w)
    ctx.slice(1, 0, out)
    if ctx.input(2):
        ctx.slice(2, 0, out)
    xs = ctx.space(x)
    if group == 1:
        if xs is not None and xs.axis == 1:
            ctx.slice(1, 1, x)
            ctx.consume(0)
        elif xs is not None:
            ctx.pin(x, f"{ctx.where} convolves over the channel axis")
        return
    if xs is None or xs.axis != 1:
        return ctx.pin(out, f"grouped {ctx.where} on an input without channels")
    if group == c_in:  # depthwise: input channel i feeds output block [i*m, (i+1)*m)
        m = c_out // c_in
        ctx.tie(x, out, np.repeat(np.arange(c_in), m), np.arange(c_out))
        ctx.hook(_depthwise_group)
        return
    ctx.consume(0)
    ctx.plan.block_constraints += [(x, group), (out, group)]
    ctx.plan.grouped_convs[ctx.node.name] = (x, out, group)
    ctx.hook(_grouped_columns(c_in // group, c_out // group))


def _depthwise_group(rw) -> None:
    rw.set_attr("group", rw.kept_count(rw.node.inputs[0]))


def _grouped_columns(in_per_group: int, out_per_group: int):
    """Each kept output row keeps the columns of the input channels its group keeps. A conv group
    whose input and output blocks are both removed is gone (`legalize`, `conv_groups`): `group`
    becomes the count of surviving groups, each keeping as many inputs and outputs as the others."""
    def hook(rw) -> None:
        x = rw.node.inputs[0]
        kept_in = rw.kept(x)
        kept_out = rw.kept(rw.node.outputs[0])
        if kept_in is None and kept_out is None:
            return
        n_groups = rw.size(x) // in_per_group
        kept_in = np.arange(rw.size(x)) if kept_in is None else kept_in
        kept_out = np.arange(n_groups * out_per_group) if kept_out is None else kept_out
        if rw.growing:
            return _grow_grouped(rw, kept_in, kept_out, n_groups, in_per_group, out_per_group)
        g_in, g_out = kept_in // in_per_group, kept_out // out_per_group
        live = np.unique(g_out)
        n_in, n_out = np.bincount(g_in, minlength=n_groups)[live], np.bincount(g_out, minlength=n_groups)[live]
        if not np.array_equal(np.unique(g_in), live) or len(set(n_in.tolist())) > 1 or len(set(n_out.tolist())) > 1:
            raise ValueError(f"Conv '{rw.node.name}': the kept channels do not form equal conv groups "
                             f"(inputs {n_in.tolist()}, outputs {n_out.tolist()} per group): legalize the masks")
        local = {j: kept_in[g_in == j] - j * in_per_group for j in live.tolist()}
        w = rw.const(1)
        rows = [w[r, local[o // out_per_group]] for r, o in enumerate(kept_out)]
        rw.set_const(1, np.stack(rows))
        if len(live) != n_groups:
            rw.set_attr("group", len(live))
    return hook


def _grow_grouped(rw, kept_in: np.ndarray, kept_out: np.ndarray, n_groups: int, in_per_group: int,
                  out_per_group: int) -> None:
    """A grown grouped conv (new channels are -1): the same group count over the new widths;
    a weight keeps its old value where its row and column are old channels of one old conv
    group, and gets fresh values at the weight's scale elsewhere (the model is retrained)."""
    w = rw.const(1)  # rows already laid out for kept_out (new rows fresh)
    new_in, new_out = len(kept_in) // n_groups, len(kept_out) // n_groups
    rng = np.random.default_rng(len(kept_in) * 1_000_003 + len(kept_out))
    out = rng.normal(0.0, float(w.std()) or 1.0, (len(kept_out), new_in) + w.shape[2:]).astype(w.dtype)
    for r, o in enumerate(kept_out.tolist()):
        cols = kept_in[(r // new_out) * new_in:(r // new_out + 1) * new_in]
        same = (o >= 0) & (cols >= 0) & (cols // in_per_group == o // out_per_group)
        out[r, same] = w[r, cols[same] % in_per_group]
    rw.set_const(1, out)


@register("ConvTranspose")
def conv_transpose(ctx: TieContext) -> None:
    """ConvTranspose(x, W[C_in, C_out/g, k...], B), group 1 only."""
    x, w, out = ctx.input(0), ctx.input(1), ctx.output(0)
    wshape = ctx.shape(w) if w else None
    if not ctx.is_constant(w) or wshape is None or int(ctx.attr("group", 1)) != 1:
        return ctx.pin_all(f"{ctx.where}: only group-1 ConvTranspose with a constant weight is pruned")
    ctx.out_space(out, 1, wshape[1])
    ctx.source(out, "weight", w)
    ctx.slice(1, 1, out)
    if ctx.input(2):
        ctx.slice(2, 0, out)
    xs = ctx.space(x)
    if xs is not None and xs.axis == 1:
        ctx.slice(1, 0, x)
        ctx.consume(0)
    elif xs is not None:
        ctx.pin(x, f"{ctx.where} convolves over the channel axis")


@register("Gemm")
def gemm(ctx: TieContext) -> None:
    """Gemm(A, B, C): features of A (axis 1, or 0 with transA) in, columns of the output out."""
    a, b, c, out = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    bshape, oshape = ctx.shape(b), ctx.shape(out)
    if not ctx.is_constant(b) or bshape is None or oshape is None:
        return ctx.pin_all(f"{ctx.where} multiplies two activations")
    trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    ctx.out_space(out, 1, oshape[1])
    ctx.source(out, "weight", b)
    ctx.slice(1, 0 if trans_b else 1, out)
    cshape = ctx.shape(c) if c else None
    if c and ctx.is_constant(c) and cshape and cshape[-1] == oshape[1] and oshape[1] > 1:
        ctx.slice(2, len(cshape) - 1, out)
    elif c and not ctx.is_constant(c):
        ctx.pin(out, f"{ctx.where} adds a non-constant C")
    xs = ctx.space(a)
    if xs is not None:
        if xs.axis == (0 if trans_a else 1):
            ctx.slice(1, 1 if trans_b else 0, a)
            ctx.consume(0)
        else:
            ctx.pin(a, f"{ctx.where} contracts an axis that is not the channel axis")


@register("MatMul")
def matmul(ctx: TieContext) -> None:
    """MatMul(A, B const [.., K, N]): A's last axis in, the output's last axis out."""
    a, b, out = ctx.input(0), ctx.input(1), ctx.output(0)
    bshape, oshape, ashape = ctx.shape(b), ctx.shape(out), ctx.shape(a)
    if not ctx.is_constant(b) or bshape is None or oshape is None or ashape is None or len(bshape) < 2:
        return ctx.pin_all(f"{ctx.where} multiplies two activations")
    ctx.out_space(out, len(oshape) - 1, oshape[-1])
    ctx.source(out, "weight", b)
    ctx.slice(1, len(bshape) - 1, out)
    xs = ctx.space(a)
    if xs is not None:
        if xs.axis == len(ashape) - 1:
            ctx.slice(1, len(bshape) - 2, a)
            ctx.consume(0)
        else:
            ctx.pin(a, f"{ctx.where} contracts an axis that is not the channel axis")
