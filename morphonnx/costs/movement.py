"""Data movement: views that move nothing, copies that move bytes but compute nothing,
and the metadata ops exporters leave behind (Shape, Constant, ...)."""
from __future__ import annotations

from . import OpContext, Work, register

VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "SequenceAt", "SequenceLength")
METADATA = ("Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike")
COPIES = ("Transpose", "Concat", "Split", "Expand", "Tile", "Pad", "Cast", "CastLike",
          "DepthToSpace", "SpaceToDepth", "ScatterND", "ScatterElements", "Trilu", "ReverseSequence")
PARTIAL = ("Slice", "Gather", "GatherElements", "GatherND", "Compress")


@register(*VIEWS, *METADATA)
def view(ctx: OpContext) -> Work:
    """No arithmetic and no bytes: a runtime aliases the buffer or computes a few integers."""
    return Work(moves=False)


@register(*COPIES)
def copy(ctx: OpContext) -> Work:
    """No arithmetic; reads its inputs and writes its outputs."""
    return Work()


@register(*PARTIAL)
def partial_copy(ctx: OpContext) -> Work:
    """No arithmetic; reads only what it writes (and its indices): an embedding lookup reads the
    rows it gathers, not the whole table."""
    written = sum(ctx.tensor_bytes(t, f"output of {ctx.node.op_type} '{ctx.node.name}'")
                  for t in ctx.node.output if t)
    if not ctx.graph.is_constant(ctx.node.input[0]):
        return Work(read_bytes=written)
    indices = sum(ctx.tensor_bytes(t, f"input {i} of {ctx.node.op_type} '{ctx.node.name}'")
                  for i, t in enumerate(ctx.node.input[1:], 1) if t and not ctx.graph.is_constant(t))
    return Work(read_bytes=written + indices, constant_reads=False)


@register("SplitToSequence")
def split_to_sequence(ctx: OpContext) -> Work:
    """No arithmetic; copies its input into the tensors of a sequence."""
    size = ctx.tensor_bytes(ctx.node.input[0], f"input 0 of SplitToSequence '{ctx.node.name}'")
    return Work(read_bytes=size, write_bytes=size)
