"""The TensorFlow adapter flow, run in its own process by test_adapters_tf.py: TensorFlow and
torch cannot share one process here (importing torchvision after tensorflow crashes)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

import morphonnx
from morphonnx.masks import legalize, masks_from_sources
from morphonnx.rewrite import prune
from morphonnx.verify import check


def small_cnn():
    tf.keras.utils.set_random_seed(0)
    x = tf.keras.Input((16, 16, 1))
    y = x
    for i, c in enumerate((8, 16)):
        y = tf.keras.layers.Conv2D(c, 3, padding="same", use_bias=False, name=f"conv{i}")(y)
        y = tf.keras.layers.BatchNormalization(name=f"bn{i}")(y)
        y = tf.keras.layers.ReLU(name=f"relu{i}")(y)
    y = tf.keras.layers.GlobalAveragePooling2D()(y)
    return tf.keras.Model(x, tf.keras.layers.Dense(10, name="fc")(y))


def flow(tmp_path: Path) -> None:
    from morphonnx.tf import Regularizer
    model = small_cnn()
    x = np.random.default_rng(0).standard_normal((32, 16, 16, 1)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, 32)
    reg = Regularizer(model, (x[:1],), resource="flops")
    assert set(reg.program.sources) == {"bn0", "bn1"} and reg.program.learnable.sum() == 2
    gammas = [v for v in model.trainable_variables if "gamma" in v.path]
    opt = tf.keras.optimizers.SGD(0.05)
    first = float(reg.penalty())
    for _ in range(5):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, model(x, training=True),
                                                                                from_logits=True))
            loss = loss + 1e-6 * reg.penalty()
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
    assert float(reg.penalty()) < first
    # kill a third of the channels: gammas under the threshold
    gammas[1].assign(np.where(np.arange(16) % 3 == 0, 0.001, gammas[1].numpy()))
    reg.save_masks(tmp_path / "masks.json")
    doc = json.loads((tmp_path / "masks.json").read_text())
    assert sum(sum(v) for v in doc["masks"].values()) < sum(len(v) for v in doc["masks"].values())
    g = morphonnx.load(reg.onnx_model)
    gr = morphonnx.find_groups(g)
    result = prune(gr, legalize(gr, masks_from_sources(gr, doc["masks"])))
    assert check(g, result.oracle, result.model).ok
    assert reg.cost() < morphonnx.cost_model(g).total("flops")
    alive, r = reg.program.alive_and_reg(reg.slot_gammas(), reg.threshold)
    expected = reg.program.penalty(alive, r)
    assert abs(float(reg.penalty()) - expected) <= 1e-4 * expected


if __name__ == "__main__":
    flow(Path(sys.argv[1]))
    print("tf flow ok")
