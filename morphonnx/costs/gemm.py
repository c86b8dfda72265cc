"""Matrix products: Gemm (transA/transB) and MatMul (batched, broadcast, 1-D operands)."""
from __future__ import annotations

from . import OpContext, Work, register


@register("Gemm")
def gemm(ctx: OpContext) -> Work:
    """M × K × N MACs with A (M×K) and B (K×N) after their transposes."""
    a = ctx.in_shape(0)
    k = a[0] if ctx.attr("transA", 0) else a[1]
    macs = ctx.out_numel() * k
    return Work(macs=macs, flops=2 * macs)


@register("MatMul")
def matmul(ctx: OpContext) -> Work:
    """Every output element is a K-long dot product (numpy matmul semantics)."""
    k = ctx.in_shape(0)[-1]
    macs = ctx.out_numel() * k
    return Work(macs=macs, flops=2 * macs)
