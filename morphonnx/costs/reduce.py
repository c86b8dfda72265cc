"""Reductions over axes: Reduce*, ArgMax/ArgMin."""
from __future__ import annotations

from . import OpContext, Work, register


@register("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")
def reduce(ctx: OpContext) -> Work:
    """One FLOP per input element."""
    return Work(flops=ctx.in_numel(0))
