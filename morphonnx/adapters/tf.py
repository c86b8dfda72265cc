"""TensorFlow/Keras adapter: MorphNet's cost-weighted gamma penalty on a Keras model's BN gammas.

    reg = Regularizer(model, x, resource="flops")          # x: one batch, or a tuple of inputs
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True)) + strength * reg.penalty()
    ...
    reg.save_masks("masks.json")   # keyed by the tf2onnx export's weight names

The model is converted once with tf2onnx at one sample of the example batch, so that costs are
per sample as `morphonnx analyze` reports them. Every weight of the export is named by the
Keras layer that owns the variable it is read from (`structure()` and `alive_masks()` are keyed
by layer names; `onnx_names()` gives the ONNX node and weight of each layer). Keras
BatchNormalization reaches ONNX folded into the convolution before it (or as Mul/Add
constants), so each BN's gamma is mapped to the ONNX source of the layer that feeds it.
`penalty()` is a few vectorized TF ops over the gamma variables.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import onnx
import tensorflow as tf

from ..graph import load
from ..groups import find_groups
from ..output import write_text
from ..tables import SCHEMA_VERSION
from ..penalty import GammaRegularizer, compile_program
from ..profiles import Profile, load_profile


def example_tuple(example_inputs) -> tuple:
    """The example inputs as a tuple: one tensor (or array), or a tuple/list of them."""
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    return (example_inputs,)


def one_sample(example_inputs) -> tuple:
    """The example inputs cut to their first sample (their leading dimension is the batch)."""
    return tuple(x[:1] if len(getattr(x, "shape", ())) else x for x in example_tuple(example_inputs))


def _convert(model: "tf.keras.Model", example_inputs) -> tuple[onnx.ModelProto, object]:
    import tf2onnx
    xs = example_tuple(example_inputs)
    spec = tuple(tf.TensorSpec(np.shape(x), tf.as_dtype(getattr(x, "dtype", np.float32)), name=f"input_{i}")
                 for i, x in enumerate(xs))
    fn = tf.function(lambda *v: model(v[0] if len(v) == 1 else list(v), training=False))
    concrete = fn.get_concrete_function(*spec)  # the traced graph tf2onnx converts (tf.function caches it)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    return proto, concrete


def export(model: "tf.keras.Model", example_inputs) -> onnx.ModelProto:
    """The Keras model converted by tf2onnx (opset 17) at the example inputs' shapes
    (one tensor or a tuple of them)."""
    return _convert(model, example_inputs)[0]


def layer_names(model: "tf.keras.Model", concrete, proto: onnx.ModelProto) -> dict[str, str]:
    """ONNX weight (initializer) name → the Keras layer that owns the kernel it is read from.

    tf2onnx names a weight after the TF op it comes from (`functional_1/fc_1/Cast/ReadVariableOp:0`)
    or the op it was merged into (`functional_1/conv0_1/convolution/merged_input:0`: the conv
    kernel with the BN folded in). The longest prefix of that name that is an op of the traced
    graph names the op; the variables it reads through constant inputs (captured resource
    handles) name the layer: the one owning a variable of two or more dimensions (a kernel).
    """
    owner: dict[int, tuple[object, object]] = {}  # id(resource handle) → (variable, layer)
    for layer in model._flatten_layers(include_self=False, recursive=True):  # parents first: children win
        for v in layer.weights:
            owner[id(v.handle)] = (v, layer)
    graph = concrete.graph
    captured = {internal.op.name: owner[id(external)] for external, internal in graph.captures
                if id(external) in owner}
    const: dict[str, frozenset | None] = {}  # op → variables it reads, None if it depends on an input
    reads: dict[str, frozenset] = {}  # op → variables read through its constant inputs
    for op in graph.get_operations():
        if op.name in captured:
            const[op.name] = reads[op.name] = frozenset([op.name])
            continue
        ins = [const.get(t.op.name) for t in op.inputs]
        reads[op.name] = frozenset().union(*[c for c in ins if c is not None])
        const[op.name] = None if op.type == "Placeholder" or any(c is None for c in ins) else reads[op.name]

    def layer_of(name: str) -> str | None:
        parts = re.sub(r":\d+$", "", name).split("/")
        for k in range(len(parts), 0, -1):
            op = re.sub(r"__\d+$", "", "/".join(parts[:k]))
            kernels = [captured[c] for c in reads.get(op, ()) if len(captured[c][0].shape) >= 2]
            layers = {id(layer): layer for _, layer in kernels}
            if len(layers) == 1:
                return next(iter(layers.values())).name
            if layers:
                return None
        return None
    out = {}
    for t in proto.graph.initializer:
        found = layer_of(t.name)
        if found is not None:
            out[t.name] = found
    return out


def _bn_inputs(model) -> list[tuple[object, object]]:
    """(BatchNormalization layer, the layer feeding it) pairs."""
    pairs = []
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization) and layer.scale:
            pairs.append((layer, layer.input._keras_history.operation))
    return pairs


class Regularizer(GammaRegularizer):
    """GammaFlops / GammaModelSize / GammaLatency for a Keras model (same API as morphonnx.torch).

    `example_inputs`: one tensor (or array) or a tuple/list of them, batched along their first
    dimension; the model is converted at their first sample, so `cost()` is per sample.
    """

    def __init__(self, model, example_inputs, resource: str = "flops",
                 profile: str | Profile | None = None, threshold: float = 0.01):
        self.model = model
        self.threshold = float(threshold)
        self.onnx_model, concrete = _convert(model, one_sample(example_inputs))
        self.graph = load(self.onnx_model)
        self.groups = find_groups(self.graph)
        sources = [s for s in self.groups.plan.sources if s.kind == "weight"]
        self.layer_of = layer_names(model, concrete, self.onnx_model)  # ONNX weight → Keras layer
        self.names = _source_layers(model, sources, self.layer_of)
        self._bn: dict[str, object] = {}
        gamma_of: dict[str, str] = {}
        for bn, producer in _bn_inputs(model):
            found = [s for s in sources if self.names.get(s.node) == producer.name]
            if len(found) == 1:
                gamma_of[found[0].node] = bn.name
                self._bn[bn.name] = bn
        if not gamma_of:
            raise ValueError("no Keras BatchNormalization could be matched to a convolution of the tf2onnx export")
        prof = load_profile(profile) if isinstance(profile, (str, os.PathLike)) else profile
        self.program = compile_program(self.groups, resource, prof, gamma_of=gamma_of)
        self._gamma_source = {g: n for n, g in gamma_of.items()}
        p = self.program
        names = list(p.sources)
        self._gammas = [self._bn[n].gamma for n in names]
        slots = np.concatenate([p.sources[n] for n in names])
        n_slots = len(p.slot_group)
        self._src_slot = tf.constant(np.where(slots >= 0, slots, n_slots), tf.int32)
        self._c = {k: tf.constant(v) for k, v in {
            "slot_group": p.slot_group.astype(np.int32), "in_op": p.in_op.astype(np.int32),
            "in_group": p.in_group.astype(np.int32), "out_op": p.out_op.astype(np.int32),
            "out_group": p.out_group.astype(np.int32), "in_count": p.in_count.astype(np.float32),
            "out_count": p.out_count.astype(np.float32),
            "base_alive": np.where(p.learnable, 0.0, p.group_size).astype(np.float32),
            **{f"{k}{j}": getattr(f, k).astype(np.float32) for j, f in enumerate(p.forms) for k in "abcd"}}.items()}

    def _slot_gammas(self) -> tf.Tensor:
        flat = tf.abs(tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for g in self._gammas], 0))
        n = len(self.program.slot_group)
        return tf.math.unsorted_segment_max(flat, self._src_slot, n + 1)[:n]

    def _io(self, per_group: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        c, k = self._c, self.program.n_ops
        i = tf.math.unsorted_segment_sum(c["in_count"] * tf.gather(per_group, c["in_group"]), c["in_op"], k)
        o = tf.math.unsorted_segment_sum(c["out_count"] * tf.gather(per_group, c["out_group"]), c["out_op"], k)
        return i, o

    def penalty(self) -> tf.Tensor:
        """MorphNet's regularizer: a scalar with gradients to the BN gammas."""
        c, g = self._c, len(self.program.group_size)
        slot = tf.maximum(self._slot_gammas(), 0.0)
        alive = tf.stop_gradient(c["base_alive"] + tf.math.unsorted_segment_sum(
            tf.cast(slot > self.threshold, tf.float32), c["slot_group"], g))
        reg = tf.math.unsorted_segment_sum(slot, c["slot_group"], g)
        i, o = self._io(alive)
        ri, ro = self._io(reg)
        terms = [c[f"a{j}"] * (i * ro + o * ri) + c[f"b{j}"] * ri + c[f"c{j}"] * ro
                 for j in range(len(self.program.forms))]
        if len(terms) == 1:
            return tf.reduce_sum(terms[0])
        value = [c[f"a{j}"] * i * o + c[f"b{j}"] * i + c[f"c{j}"] * o + c[f"d{j}"] for j in range(2)]
        return tf.reduce_sum(tf.where(value[0] >= value[1], terms[0], terms[1]))

    def slot_gammas(self) -> np.ndarray:
        """Current per-slot gammas."""
        return np.maximum(self._slot_gammas().numpy().astype(float), 0.0)

    def save_masks(self, path: str | os.PathLike) -> None:
        """Write the masks file `morphonnx prune --masks` reads, keyed by the tf2onnx export's
        weight names."""
        write_text(path, json.dumps({"schema_version": SCHEMA_VERSION, "masks": self.onnx_masks()}))


def _source_layers(model, sources: list, layer_of: dict[str, str]) -> dict[str, str]:
    """Weight source (ONNX node) → Keras layer name: the layer owning its kernel, else the one
    layer with weights whose name scope appears in the source's weight or node name."""
    scoped = [layer for layer in model._flatten_layers(include_self=False, recursive=True) if layer.weights]
    out = {}
    for s in sources:
        name = layer_of.get(s.weight) if s.weight else None
        if name is None:
            found = {layer.name for layer in scoped
                     if any(re.search(rf"(^|/){re.escape(layer.name)}(_\d+)?/", n) for n in (s.node, s.weight or ""))}
            name = found.pop() if len(found) == 1 else None
        if name is not None:
            out[s.node] = name
    return out
