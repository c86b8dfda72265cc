"""Convolutions: Conv (grouped, depthwise, dilated, strided) and ConvTranspose."""
from __future__ import annotations

import math

from . import OpContext, Work, register


@register("Conv")
def conv(ctx: OpContext) -> Work:
    """Each output element takes (C_in / group) × kernel MACs; dilation and stride show in the output shape."""
    w = ctx.in_shape(1)
    macs = ctx.out_numel() * w[1] * math.prod(w[2:])
    group, c_in = int(ctx.attr("group", 1)), ctx.in_shape(0)[1]
    kind = "depthwise" if group > 1 and group == c_in else "grouped" if group > 1 else ""
    return Work(macs=macs, flops=2 * macs, kind=kind, channels=(c_in, w[0]), groups=group)


@register("ConvTranspose")
def conv_transpose(ctx: OpContext) -> Work:
    """Each input element scatters into (C_out / group) × kernel outputs."""
    w = ctx.in_shape(1)
    macs = ctx.in_numel(0) * w[1] * math.prod(w[2:])
    return Work(macs=macs, flops=2 * macs)
