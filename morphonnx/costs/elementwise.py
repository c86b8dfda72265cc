"""Elementwise arithmetic: activations, unary math, broadcasting binary ops, Softmax, Resize."""
from __future__ import annotations

from . import OpContext, Work, register

UNARY = ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish",
         "Tanh", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Erf", "Exp", "Log", "Sqrt",
         "Reciprocal", "Neg", "Abs", "Clip", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan",
         "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Not", "IsNaN", "IsInf",
         "Shrink")
BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Mean", "Sum", "Equal", "Less",
          "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "BitShift",
          "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot")
ACROSS = ("Softmax", "LogSoftmax", "Hardmax", "CumSum")


@register(*UNARY, *BINARY, *ACROSS, "GridSample")
def elementwise(ctx: OpContext) -> Work:
    """One FLOP per output element (broadcast inputs are read once)."""
    return Work(flops=ctx.out_numel())


@register("Resize", "Upsample")
def resize(ctx: OpContext) -> Work:
    """One FLOP per output element; roi, scales and sizes are settings, not parameters."""
    return Work(flops=ctx.out_numel(), non_params=(1, 2, 3))
