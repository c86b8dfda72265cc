"""Pools: windowed (MaxPool, AveragePool, LpPool) and global."""
from __future__ import annotations

import math

from . import OpContext, Work, register


@register("MaxPool", "AveragePool", "LpPool")
def window_pool(ctx: OpContext) -> Work:
    """One FLOP per element taken into each output's window."""
    return Work(flops=ctx.out_numel() * math.prod(ctx.attr("kernel_shape", [1])))


@register("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def global_pool(ctx: OpContext) -> Work:
    """One FLOP per input element."""
    return Work(flops=ctx.in_numel(0))
