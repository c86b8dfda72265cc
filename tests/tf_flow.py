"""The TensorFlow adapter flow, run in its own process by test_adapters_tf.py: TensorFlow and
torch cannot share one process here (importing torchvision after tensorflow crashes).

`python tests/tf_flow.py DIR` runs the training flow (its own asserts) and writes DIR/results.json:
the adapter's costs beside `morphonnx analyze`'s figures of the exported and pruned files, and
the names the adapter gives the layers, for test_adapters_tf.py to check."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import tensorflow as tf

import morphonnx
from morphonnx.masks import legalize, masks_from_sources
from morphonnx.rewrite import prune
from morphonnx.verify import check

RESOURCES = ("flops", "macs", "size", "latency")


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


def residual_cnn():
    """A stem, a residual block (the stem's channels tied to the block's output by the add), a
    conv without BN and a Dense classifier, with trained-looking BNs: distinct scales, shifts
    and statistics."""
    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    x = tf.keras.Input((16, 16, 3))
    s = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(
        layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)))
    y = layers.ReLU(name="block_relu")(layers.BatchNormalization(name="block_bn1")(
        layers.Conv2D(12, 3, padding="same", use_bias=False, name="block_conv1")(s)))
    y = layers.BatchNormalization(name="block_bn2")(layers.Conv2D(8, 3, padding="same", use_bias=False,
                                                                  name="block_conv2")(y))
    y = layers.ReLU(name="out_relu")(layers.Add(name="residual")([s, y]))
    y = layers.GlobalAveragePooling2D(name="pool")(layers.Conv2D(16, 1, name="head")(y))
    model = tf.keras.Model(x, layers.Dense(10, name="fc")(y))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.1, n).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
    return model


def analyzed(path) -> dict[str, float]:
    """Per resource, the figure of the file that `morphonnx analyze` reports (one sample)."""
    v100 = morphonnx.load_profile("v100")
    costs = morphonnx.cost_model(morphonnx.load(path))
    return {r: costs.resource(r, v100) for r in RESOURCES}


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
    assert reg.structure() == {"conv0": 8, "conv1": 10, "fc": 10}
    alive, r = reg.program.alive_and_reg(reg.slot_gammas(), reg.threshold)
    expected = reg.program.penalty(alive, r)
    assert abs(float(reg.penalty()) - expected) <= 1e-4 * expected


def costs_and_names(tmp_path: Path) -> dict:
    """The residual CNN at a batch of 8: the adapter's costs (example input as a tensor, a tuple
    and a list), `morphonnx analyze`'s figures of the model exported at one sample, and the same
    after a third of some channels die (their BN scales and shifts at 0), against the file
    `morphonnx prune` makes of the re-exported model with the saved masks."""
    from morphonnx.tf import Regularizer, export
    model = residual_cnn()
    x = np.random.default_rng(0).standard_normal((8, 16, 16, 3)).astype(np.float32)
    path = tmp_path / "residual.onnx"
    onnx.save(export(model, x[:1]), str(path))
    out = {"analyzed": analyzed(path), "input_batch": morphonnx.load(path).static_shape("input_0", "input")[0]}
    regs = {r: Regularizer(model, x, resource=r, profile="v100" if r == "latency" else None) for r in RESOURCES}
    out["cost"] = {r: reg.cost() for r, reg in regs.items()}
    out["forms"] = {"tensor": regs["flops"].cost(), "tuple": Regularizer(model, (x,)).cost(),
                    "list": Regularizer(model, [tf.constant(x)]).cost(), "one sample": Regularizer(model, x[:1]).cost()}
    out["layers"] = sorted(layer.name for layer in model.layers
                           if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)))
    reg = regs["flops"]
    out["structure"] = reg.structure()
    out["masks"] = sorted(reg.alive_masks())
    out["onnx_names"] = reg.onnx_names()
    for name, dead in (("stem_bn", slice(0, None, 3)), ("block_bn2", slice(0, None, 3)),
                       ("block_bn1", slice(1, None, 3))):
        bn = model.get_layer(name)
        for v in (bn.gamma, bn.beta):
            value = v.numpy()
            value[dead] = 0
            v.assign(value)
    out["pruned_structure"] = reg.structure()
    out["pruned_cost"] = {r: reg.cost() for r, reg in regs.items()}
    onnx.save(export(model, x[:1]), str(path))  # the trained model, exported again
    reg.save_masks(tmp_path / "masks.json")
    out["masks_file_keys"] = sorted(json.loads((tmp_path / "masks.json").read_text())["masks"])
    r = subprocess.run([sys.executable, "-m", "morphonnx", "prune", str(path), "--masks", str(tmp_path / "masks.json"),
                        "-o", str(tmp_path / "pruned.onnx")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out["pruned_analyzed"] = analyzed(tmp_path / "pruned.onnx")
    return out


if __name__ == "__main__":
    tmp = Path(sys.argv[1])
    flow(tmp)
    (tmp / "results.json").write_text(json.dumps(costs_and_names(tmp), indent=1))
    print("tf flow ok")
