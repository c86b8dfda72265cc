"""Ops over axes: reductions, Softmax and normalizations pin channels when they run over the
channel axis, and pass them through otherwise (spatial means of an SE block, token softmax)."""
from __future__ import annotations

import numpy as np

from . import Slicing, TieContext, register

REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")


def _axes(ctx: TieContext, rank: int) -> list[int] | None:
    axes = ctx.attr("axes")
    if axes is None and ctx.input(1):
        value = ctx.value(ctx.input(1))
        if value is None:
            return None
        axes = value.tolist()
    if axes is None:
        axis = ctx.attr("axis")
        axes = [axis] if axis is not None else []
    if not axes and not ctx.attr("noop_with_empty_axes", 0):
        axes = list(range(rank))
    return [int(a) + rank if int(a) < 0 else int(a) for a in axes]


@register(*REDUCE)
def reduce(ctx: TieContext) -> None:
    """Reducing spatial axes keeps channels (their axis shifts without keepdims)."""
    x, out = ctx.input(0), ctx.output(0)
    xs, xshape = ctx.space(x), ctx.shape(x)
    if xs is None:
        return
    axes = _axes(ctx, len(xshape))
    if ctx.node.name in ctx.plan.norm_parts:  # the variance of a decomposed LayerNorm (below)
        return
    if axes == [xs.axis] == [len(xshape) - 1] and xs.block == 1 and ctx.node.op_type == "ReduceMean" \
            and (_decomposed_norm(ctx, x) or _rms_norm(ctx, x)):
        return
    if axes is None or xs.axis in axes:
        return ctx.pin(x, f"{ctx.where} reduces over channels")
    keep = int(ctx.attr("keepdims", 1))
    axis = xs.axis if keep else xs.axis - sum(a < xs.axis for a in axes)
    ctx.out_space(out, axis, xs.size, xs.block)
    ctx.tie(x, out)


@register("Softmax", "LogSoftmax", "Hardmax", "LpNormalization", "CumSum")
def along_axis(ctx: TieContext) -> None:
    """An op along one axis: pins when that axis is the channel axis."""
    x, out = ctx.input(0), ctx.output(0)
    xs, xshape = ctx.space(x), ctx.shape(x)
    if xs is None:
        return
    axis = int(ctx.attr("axis", -1))
    axis = axis + len(xshape) if axis < 0 else axis
    if axis == xs.axis:
        return ctx.pin(x, f"{ctx.where} runs over channels")
    ctx.out_space(out, xs.axis, xs.size, xs.block)
    ctx.tie(x, out)


@register("LayerNormalization", "MeanVarianceNormalization", "GroupNormalization")
def normalization(ctx: TieContext) -> None:
    """LayerNormalization normalizes axes [axis, rank); GroupNormalization mixes channels."""
    x, out = ctx.input(0), ctx.output(0)
    xs, xshape = ctx.space(x), ctx.shape(x)
    if xs is None:
        return
    if ctx.node.op_type == "GroupNormalization":
        return ctx.pin(x, f"{ctx.where} normalizes groups of channels")
    if ctx.node.op_type == "LayerNormalization":
        axis = int(ctx.attr("axis", -1))
        axes = list(range(axis + len(xshape) if axis < 0 else axis, len(xshape)))
    else:
        axes = [a + len(xshape) if a < 0 else a for a in ctx.attr("axes", [0, 2, 3])]
    if ctx.node.op_type == "LayerNormalization" and axes == [xs.axis] == [len(xshape) - 1] and xs.block == 1 \
            and not any(ctx.node.output[1:]):
        return _stream_norm(ctx, x, out, xs)
    if xs.axis in axes:
        return ctx.pin(x, f"{ctx.where} normalizes over channels")
    ctx.out_space(out, xs.axis, xs.size, xs.block)
    ctx.tie(x, out)


def _stream_norm(ctx: TieContext, x: str, out: str, xs) -> None:
    """LayerNormalization over the channels (a transformer's residual stream): channels stay
    prunable. In the oracle a removed channel's scale and bias are 0, so it outputs 0; its
    statistics still count all C channels, which the rewrite keeps exact (`layer_norm_hook`)."""
    ctx.out_space(out, xs.axis, xs.size)
    ctx.tie(x, out)
    for i in (1, 2):
        if ctx.input(i) and ctx.is_constant(ctx.input(i)) and len(ctx.shape(ctx.input(i)) or ()) == 1:
            ctx.silence(i, 0, out)
        elif ctx.input(i):
            return ctx.pin(x, f"{ctx.where} has a scale or bias that is not a constant vector")
    ctx.consume(0, raw=True)  # the removed channels' values at the input enter the statistics
    ctx.hook(layer_norm_hook)


def _decomposed_norm(ctx: TieContext, x: str) -> bool:
    """A LayerNormalization over the last (channel) axis written out, as the TorchScript exporter
    does below opset 17: m = ReduceMean(x); d = x - m; v = ReduceMean(d²); y = d / Sqrt(v + eps)
    · scale + bias. Pruned exactly like LayerNormalization (`_stream_norm`); False (nothing
    declared) if the ops around this mean are not that."""
    g = ctx.graph
    one = lambda t, ops: [g.nodes[u] for u in g.consumers.get(t, []) if g.nodes[u].op_type in ops]
    mean = ctx.output(0)
    sub = [n for n in one(mean, ("Sub",)) if list(n.input) == [x, mean]]
    if len(sub) != 1 or ctx.attr("keepdims", 1) == 0:
        return False
    d = sub[0].output[0]
    sq = [n for n in one(d, ("Pow", "Mul")) if (n.op_type == "Mul" and list(n.input) == [d, d])
          or (n.op_type == "Pow" and ctx.value(n.input[1]) is not None and float(ctx.value(n.input[1])) == 2.0)]
    div = one(d, ("Div",))
    if len(sq) != 1 or len(div) != 1 or len(g.consumers.get(d, [])) != 2:
        return False
    var = one(sq[0].output[0], ("ReduceMean",))
    eps = one(var[0].output[0], ("Add",)) if len(var) == 1 else []
    root = one(eps[0].output[0], ("Sqrt",)) if len(eps) == 1 else []
    if not root or list(div[0].input) != [d, root[0].output[0]] or list(var[0].attribute) != list(ctx.node.attribute) \
            or list(var[0].input[1:]) != list(ctx.node.input[1:]):
        return False
    scale = one(div[0].output[0], ("Mul",))
    bias = one(scale[0].output[0], ("Add",)) if len(scale) == 1 else []
    c = ctx.space(x).size
    vec = lambda n: next((i for i, t in enumerate(n.input) if ctx.is_constant(t) and ctx.shape(t) in ((c,),)), None)
    if len(scale) != 1 or vec(scale[0]) is None or len(g.consumers.get(div[0].output[0], [])) != 1:
        return False  # no per-channel scale: the removed channels would not output 0
    parts = [scale[0]] + (bias if len(bias) == 1 and vec(bias[0]) is not None
                          and len(g.consumers.get(scale[0].output[0], [])) == 1 else [])
    ctx.plan.norm_parts.add(var[0].name)
    out = parts[-1].output[0]
    for n in parts:
        ctx.plan.silenced.append(Slicing(vec(n), 0, out, node=n.name))
    ctx.consume(0, raw=True)
    ctx.hook(_decomposed_hook(sub[0].name, [n.name for n in parts]))
    return True


def _rms_norm(ctx: TieContext, x2: str) -> bool:
    """An RMSNorm over the last (channel) axis written out (Llama, Qwen, Mistral exports):
    x2 = x² (Pow or Mul); m = ReduceMean(x2); r = 1 / Sqrt(m + eps) (Reciprocal, Div or Rsqrt
    forms); y = w · (x · r) with a constant per-channel w. The removed channels' w is 0 in the
    oracle, so they output 0; the pruned mean over C' channels is rescaled to the mean over C
    (`_rms_hook`: × C'/C, + the removed channels' input-independent x² / C). False (nothing
    declared) if the ops around this mean are not that."""
    g = ctx.graph
    users = lambda t: [g.nodes[u] for u in g.consumers.get(t, [])]
    sq = g.nodes.get(g.producer.get(x2, ""))
    if sq is None or ctx.attr("keepdims", 1) == 0:
        return False
    x = sq.input[0]
    square = (sq.op_type == "Mul" and list(sq.input) == [x, x]) or (
        sq.op_type == "Pow" and ctx.value(sq.input[1]) is not None and float(ctx.value(sq.input[1])) == 2.0)
    if not square or len(g.consumers.get(x2, [])) != 1:
        return False
    t, chain = ctx.output(0), []
    for _ in range(4):  # mean → (+ eps) → Sqrt → Reciprocal / 1 / · ; or → Rsqrt-like Pow(-0.5)
        nxt = users(t)
        if len(nxt) != 1 or nxt[0].op_type not in ("Add", "Sqrt", "Reciprocal", "Div", "Pow"):
            break
        chain.append(nxt[0])
        t = nxt[0].output[0]
    scaled = [n for n in users(t) if n.op_type == "Mul" and x in n.input]
    if not chain or len(scaled) != 1:
        return False
    y = scaled[0].output[0]
    after = users(y)
    if len(after) == 1 and after[0].op_type == "Cast":
        y, after = after[0].output[0], users(after[0].output[0])
    c = ctx.space(x2).size
    weight = [n for n in after if n.op_type == "Mul" and
              any(ctx.is_constant(i) and ctx.shape(i) == (c,) for i in n.input)]
    if len(after) != 1 or len(weight) != 1:
        return False  # no per-channel weight: the removed channels would not output 0
    w = weight[0]
    i = next(k for k, t in enumerate(w.input) if ctx.is_constant(t) and ctx.shape(t) == (c,))
    ctx.plan.silenced.append(Slicing(i, 0, w.output[0], node=w.name))
    ctx.consume(0, raw=True)  # the removed channels' x² at the mean enter its statistics
    ctx.hook(_rms_hook)
    return True


def _rms_hook(rw) -> None:
    """The mean of x² over C' of C channels, as the original's over C: × C'/C, + Σ removed x² / C."""
    import onnx_graphsurgeon as gs
    node = rw.node
    x2, m = node.inputs[0], node.outputs[0]
    kept = rw.kept(x2)
    if kept is None or rw.rw.norm_values is None:  # nothing removed, or a grown model: a plain mean
        return
    c, n = rw.size(x2), len(kept)
    dtype = np.dtype(x2.dtype) if x2.dtype is not None else np.dtype(np.float32)
    values = rw.rw.norm_values.get(node.name)
    extra = np.zeros([1], dtype) if values is None else \
        (np.sum(np.asarray(values, dtype=np.float64), axis=-1, keepdims=True) / c).astype(dtype)
    part = gs.Variable(f"{node.name}.kept_mean", dtype=m.dtype)
    node.outputs = [part]
    scaled = gs.Variable(f"{node.name}.over_all", dtype=m.dtype)
    graph = rw.rw.gs_graph
    graph.nodes.append(gs.Node("Mul", f"{node.name}.rescale", {},
                               [part, gs.Constant(f"{node.name}.kept_share", np.array(n / c, dtype=dtype))], [scaled]))
    graph.nodes.append(gs.Node("Add", f"{node.name}.removed", {},
                               [scaled, gs.Constant(f"{node.name}.removed_mean", extra)], [m]))


def _decomposed_hook(sub: str, parts: list[str]):
    """The written-out LayerNorm over C' of C channels: the removed channels' values are appended
    to its input (as `layer_norm_hook` does), scale and bias get 0 there, the kept channels are
    sliced out after the last op."""
    def hook(rw) -> None:
        import onnx_graphsurgeon as gs
        x = rw.node.inputs[0]
        kept = rw.kept(x)
        if kept is None or rw.rw.norm_values is None:
            return
        full, r = _with_removed(rw, x)
        rw.node.inputs[0] = full
        nodes = rw.rw.nodes
        nodes[sub].inputs[0] = full
        for name in parts:
            n = nodes[name]
            i = next(i for i, t in enumerate(n.inputs) if isinstance(t, gs.Constant))
            v = np.asarray(n.inputs[i].values)
            n.inputs[i] = gs.Constant(f"{name}.padded", np.concatenate([v, np.zeros(r, v.dtype)]))
        last = nodes[parts[-1]]
        y = last.outputs[0]
        wide = gs.Variable(f"{parts[-1]}.all_channels", dtype=y.dtype)
        last.outputs = [wide]
        _slice_kept(rw, wide, y, len(kept), parts[-1])
    return hook


def _with_removed(rw, x) -> tuple:
    """x with the removed channels' values (at the raw consumer `rw.node`) appended on its last
    axis: (the new tensor, how many were appended)."""
    import onnx_graphsurgeon as gs
    name, r = rw.node.name, rw.size(x) - len(rw.kept(x))
    dtype = np.dtype(x.dtype) if x.dtype is not None else np.float32
    rank = len(x.shape) if x.shape is not None else len(rw.rw.groups.graph.static_shape(x.name, "norm input"))
    values = rw.rw.norm_values.get(name)
    values = np.zeros([1] * (rank - 1) + [r], dtype=dtype) if values is None else np.asarray(values, dtype=dtype)

    def add(op: str, inputs, label: str, dt=None, **attrs):
        out = gs.Variable(f"{name}.{label}", dtype=dt if dt is not None else x.dtype)
        rw.rw.gs_graph.nodes.append(gs.Node(op, f"{out.name}.op", attrs, list(inputs), [out]))
        return out

    shape_x = add("Shape", [x], "shape", np.int64)  # (Shape's `end` needs opset 15)
    lead = add("Slice", [shape_x, gs.Constant(f"{name}.lead_start", np.array([0], dtype=np.int64)),
                         gs.Constant(f"{name}.lead_stop", np.array([-1], dtype=np.int64))], "lead", np.int64)
    shape = add("Concat", [lead, gs.Constant(f"{name}.removed_count", np.array([r], dtype=np.int64))],
                "removed_shape", np.int64, axis=0)
    removed = add("Expand", [gs.Constant(f"{name}.removed_values", values), shape], "removed")
    return add("Concat", [x, removed], "all_channels", axis=-1), r


def _slice_kept(rw, wide, y, kept: int, name: str) -> None:
    """y = the first `kept` channels of `wide` (last axis)."""
    import onnx_graphsurgeon as gs
    rw.rw.gs_graph.nodes.append(gs.Node("Slice", f"{name}.kept", {}, [
        wide, gs.Constant(f"{name}.start", np.array([0], dtype=np.int64)),
        gs.Constant(f"{name}.stop", np.array([kept], dtype=np.int64)),
        gs.Constant(f"{name}.axis", np.array([-1], dtype=np.int64))], [y]))


def layer_norm_hook(rw) -> None:
    """The pruned LayerNormalization over C' of C channels, exactly as the original over C: the
    removed channels' values at its input (input-independent: 0 when silenced, a position
    embedding or class token otherwise; `rw.rw.norm_values`) are appended back as constants,
    so the norm's statistics see the same C values; scale and bias are 0 there, and the kept
    C' channels are sliced out: Concat - LayerNormalization (its own fused kernel) - Slice."""
    import onnx_graphsurgeon as gs
    node = rw.node
    x, y = node.inputs[0], node.outputs[0]
    kept = rw.kept(x)
    if kept is None or rw.rw.norm_values is None:  # nothing removed, or a grown model: a plain LayerNorm
        return
    full, r = _with_removed(rw, x)
    dtype = np.asarray(node.inputs[1].values).dtype

    def pad(t, label: str):  # 0 at the appended channels
        return gs.Constant(f"{node.name}.{label}", np.concatenate([np.asarray(t.values, dtype=dtype), np.zeros(r, dtype)]))

    normed = gs.Variable(f"{node.name}.normalized", dtype=x.dtype)
    node.inputs = [full, pad(node.inputs[1], "scale_all")] + (
        [pad(node.inputs[2], "bias_all")] if len(node.inputs) > 2 and node.inputs[2].name else [])
    node.outputs = [normed]
    _slice_kept(rw, normed, y, len(kept), node.name)
