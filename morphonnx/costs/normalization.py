"""Normalizations: BatchNormalization, LayerNormalization, InstanceNormalization, GroupNormalization, LRN."""
from __future__ import annotations

from . import OpContext, Work, register


@register("BatchNormalization")
def batch_norm(ctx: OpContext) -> Work:
    """One FLOP per output element (inference form: a per-channel scale and shift);
    running mean and variance are constants but not parameters."""
    return Work(flops=ctx.out_numel(), non_params=(3, 4))


@register("LayerNormalization", "InstanceNormalization", "GroupNormalization", "LpNormalization",
          "MeanVarianceNormalization", "LRN")
def norm(ctx: OpContext) -> Work:
    """One FLOP per output element."""
    return Work(flops=ctx.out_numel())
