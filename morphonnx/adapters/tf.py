"""TensorFlow/Keras adapter: MorphNet's cost-weighted gamma penalty on a Keras model's BN gammas.

    reg = Regularizer(model, (x,), resource="flops")
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True)) + strength * reg.penalty()
    ...
    reg.save_masks("masks.json")   # keyed by the tf2onnx export's weight names

The model is converted once with tf2onnx; Keras BatchNormalization reaches ONNX folded into
the convolution before it (or as Mul/Add constants), so each BN's gamma is mapped to the
ONNX source of the layer that feeds it, found by that layer's name in the node and weight
names tf2onnx writes. `penalty()` is a few vectorized TF ops over the gamma variables.
"""
from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np
import onnx
import tensorflow as tf

from ..graph import load
from ..groups import find_groups
from ..output import write_text
from ..penalty import GammaRegularizer, compile_program
from ..profiles import Profile, load_profile


def export(model: "tf.keras.Model", example_inputs: Sequence) -> onnx.ModelProto:
    """The Keras model converted by tf2onnx (opset 17) at the example inputs' shapes."""
    import tf2onnx
    spec = tuple(tf.TensorSpec(x.shape, x.dtype, name=f"input_{i}") for i, x in enumerate(example_inputs))
    fn = tf.function(lambda *xs: model(*xs, training=False))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    return proto


def _bn_inputs(model) -> list[tuple[object, object]]:
    """(BatchNormalization layer, the layer feeding it) pairs."""
    pairs = []
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization) and layer.scale:
            pairs.append((layer, layer.input._keras_history.operation))
    return pairs


class Regularizer(GammaRegularizer):
    """GammaFlops / GammaModelSize / GammaLatency for a Keras model (same API as morphonnx.torch)."""

    def __init__(self, model, example_inputs: Sequence, resource: str = "flops",
                 profile: str | Profile | None = None, threshold: float = 0.01):
        self.model = model
        self.threshold = float(threshold)
        self.onnx_model = export(model, example_inputs)
        self.graph = load(self.onnx_model)
        self.groups = find_groups(self.graph)
        sources = [s for s in self.groups.plan.sources if s.kind == "weight"]
        self._bn: dict[str, object] = {}
        gamma_of: dict[str, str] = {}
        for bn, producer in _bn_inputs(model):
            pattern = re.compile(rf"(^|/){re.escape(producer.name)}(_\d+)?/")
            found = [s for s in sources if pattern.search(s.node) or pattern.search(s.weight or "")]
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
        """Write the masks file `morphonnx prune --masks` reads, for the tf2onnx export."""
        write_text(path, json.dumps({"masks": self.alive_masks()}))
