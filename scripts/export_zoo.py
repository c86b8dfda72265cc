#!/usr/bin/env python
"""Export the model zoo of DESIGN.md into a cache directory outside the repo.

torchvision architectures are exported three times with random weights and randomized norm
layers: `NAME.folded.onnx` (+ `NAME.folded.onnx.data`: the default call
`torch.onnx.export(m, (x,), path, dynamo=True)`, eval mode, optimized, BN folded into Conv,
weights as external data: the form users get by default), `NAME.bn.onnx` (dynamo exporter,
optimize=False: BN kept, Constant / Shape / Expand / CastLike clutter left in) and
`NAME.ts.onnx` (the legacy TorchScript exporter, `dynamo=False`, TrainingMode.PRESERVE, no
constant folding, opset 17: BN kept as inference BatchNormalization, equal initializers
deduplicated, constants routed through Identity/Constant nodes: the form of most ONNX files in
circulation). timm architectures (random weights, randomized norm layers only: zero conv
biases stay equal, so the TorchScript exporter shares them) are exported as `timm_NAME.dynamo.onnx`
(+ .data, the default dynamo call) and `timm_NAME.ts.onnx` (as above); a form that fails to
export is recorded under `export_failed` with the reason. keras.applications architectures
are converted with tf2onnx into `keras_NAME.onnx`. Models already in the cache are skipped.
`manifest.json` holds, per model, its files, input shape and reference figures (torchvision's
published GFLOPS and params, the framework's own parameter counts).

    python scripts/export_zoo.py [--out DIR] [--only resnet18,timm_dpn68,keras_resnet50]
                                 [--framework torch|timm|keras|all]

The cache directory is `--out`, else $MORPHONNX_ZOO, else ~/.cache/morphonnx/zoo/<versions>.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

TORCH_MODELS = [
    "resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
    "regnet_y_400mf", "densenet121", "googlenet", "inception_v3", "shufflenet_v2_x1_0", "squeezenet1_1",
    "mnasnet1_0", "convnext_tiny", "vgg11_bn", "alexnet", "vit_b_16", "swin_t",
]
TORCH_FORMS = ("folded", "bn", "ts")
# timm architecture → the construct it brings (manifest name: timm_ARCH)
TIMM_ARCHS = {
    "seresnet18": "squeeze-excitation",
    "rexnet_100": "SE in inverted residuals, partial residual add",
    "resnest14d": "split attention (radix softmax)",
    "res2net50_14w_8s": "Res2Net hierarchical splits",
    "cs3darknet_s": "cross-stage partial (CSP) blocks",
    "dpn68": "dual path (residual add + dense concat)",
    "ghostnet_100": "ghost modules (cheap depthwise features, concat + slice)",
    "repvgg_a0": "RepVGG training form (3x3 + 1x1 + identity BN branches)",
    "mobileone_s0": "MobileOne training form (over-parameterized branches)",
    "poolformer_s12": "MLP-conv blocks (pooling token mixer, GroupNorm, layer scale)",
    "tf_mobilenetv3_small_100": "TF 'same' padding (explicit Pad), hard-swish SE",
    "skresnet18": "selective kernel attention",
    "nf_resnet26": "NF-ResNet weight standardization (ScaledStdConv2d)",
    "efficientnet_b0": "MBConv with SE, depthwise",
    "mixnet_s": "mixed depthwise kernels (split + concat)",
    "regnetx_002": "grouped convolutions (RegNetX)",
    "hrnet_w18_small": "multi-resolution fusion (upsample + add)",
    "deit_tiny_patch16_224": "ViT with distillation token",
    "levit_128s": "LeViT attention with BN-linear layers",
    "mobilevit_xxs": "MobileViT (conv + transformer unfold/fold)",
    "efficientformer_l1": "EfficientFormer (pool mixer + attention, BN)",
    "swin_tiny_patch4_window7_224": "Swin window attention (timm)",
    "lcnet_050": "PP-LCNet (depthwise separable, SE, hard-swish)",
    "convnext_atto": "ConvNeXt-atto (timm: LayerNorm2d, layer scale)",
}
TIMM_MODELS = [f"timm_{a}" for a in TIMM_ARCHS]
TIMM_FORMS = ("dynamo", "ts")
KERAS_MODELS = {
    "keras_resnet50": ("ResNet50", 224),
    "keras_mobilenet_v2": ("MobileNetV2", 224),
    "keras_inception_v3": ("InceptionV3", 299),
    "keras_densenet121": ("DenseNet121", 224),
}
ALL_MODELS = TORCH_MODELS + TIMM_MODELS + list(KERAS_MODELS)
SEED = 0
RECIPE = "zoo4"  # bump when the export recipe changes, so caches are rebuilt


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg).split("+")[0]
    except metadata.PackageNotFoundError:
        return "none"


def default_dir() -> Path:
    """The cache directory: $MORPHONNX_ZOO or a folder keyed by the exporters' versions."""
    if os.environ.get("MORPHONNX_ZOO"):
        return Path(os.environ["MORPHONNX_ZOO"])
    key = (f"{RECIPE}-torch{_version('torch')}-tv{_version('torchvision')}-timm{_version('timm')}"
           f"-tf{_version('tensorflow-cpu')}"
           f"-tf2onnx{_version('tf2onnx')}-onnx{_version('onnx')}")
    return Path.home() / ".cache" / "morphonnx" / "zoo" / key


def read_manifest(out: Path) -> dict:
    """The manifest of a zoo directory ({} when there is none yet)."""
    path = out / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out / "manifest.json")


def _complete(out: Path, entry: dict | None) -> bool:
    return bool(entry) and all((out / f).exists() for f in entry["files"].values())


# ---- torchvision ------------------------------------------------------------------------------

def _randomize_norms(model, torch, gen) -> None:
    """Random weights, biases and running statistics of every norm layer (BN, LN, GN)."""
    for mod in model.modules():
        if getattr(mod, "weight", None) is not None and isinstance(
                mod, (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)):
            with torch.no_grad():
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) + 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
                if getattr(mod, "running_mean", None) is not None:
                    mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=gen) * 0.1)
                    mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) + 0.5)


def _randomize_torch(model, torch) -> None:
    """Random norm parameters, running stats and constant-initialized tensors.

    Exporters deduplicate equal initializers and drop all-zero biases (fresh BNs all have
    scale 1, torchvision zero-initializes biases, convnext's layer scales are all 1e-6),
    and equal parameters hide grouping bugs.
    """
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and bool(p.min() == p.max()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + p.flatten()[0])
    _randomize_norms(model, torch, gen)


def _export_form(model, x, out: Path, file: str, form: str, torch) -> list[str]:
    """Export one form into `out/file` (through a scratch folder, then moved: external data
    files are referenced by name); return the files written (the model, then its data)."""
    import shutil
    import warnings
    scratch = out / f".tmp-{file}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    path = str(scratch / file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if form in ("folded", "dynamo"):  # the default call: optimized, weights as external data
            torch.onnx.export(model, (x,), path, dynamo=True, external_data=True, verbose=False)
        elif form == "bn":
            torch.onnx.export(model, (x,), path, dynamo=True, optimize=False, external_data=False, verbose=False)
        elif form == "ts":
            torch.onnx.export(model, (x,), path, dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                              do_constant_folding=False, opset_version=17)
        else:
            raise ValueError(form)
    written = [file] + sorted(f.name for f in scratch.iterdir() if f.name != file)
    for f in written[1:] + written[:1]:  # the model last: it is what _complete looks for first
        os.replace(scratch / f, out / f)
    shutil.rmtree(scratch, ignore_errors=True)
    return written


def _folded_param_count(model, x, torch) -> tuple[int, int]:
    """(params after BN folding, number of BNs not folded), from the exported program's graph.

    A BN whose input is a convolution used only by it folds into that convolution (adding a
    bias of C entries if the conv had none); any other BN keeps its scale and shift (2C).
    """
    ep = torch.export.export(model, (x,))
    total = sum(p.numel() for p in model.parameters())
    kept = 0
    for node in ep.graph.nodes:
        if node.op != "call_function" or "batch_norm" not in str(node.target):
            continue
        channels = node.args[1].meta["val"].shape[0]
        total -= 2 * channels
        src = node.args[0]
        is_conv = src.op == "call_function" and "conv" in str(src.target) and len(src.users) == 1
        if is_conv:
            has_bias = len(src.args) > 2 and src.args[2] is not None
            total += 0 if has_bias else channels
        else:
            total += 2 * channels
            kept += 1
    return total, kept


def export_torch(name: str, out: Path) -> dict:
    """Export one torchvision architecture twice; return its manifest entry."""
    import torch
    import torchvision

    torch.manual_seed(SEED)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    _randomize_torch(model, torch)
    size = 299 if name == "inception_v3" else 224
    x = torch.randn(1, 3, size, size)
    files = {}
    for kind in TORCH_FORMS:
        written = _export_form(model, x, out, f"{name}.{kind}.onnx", kind, torch)
        files[kind] = written[0]
        files.update({f"{kind}.data" if i == 0 else f"{kind}.data{i}": f for i, f in enumerate(written[1:])})
    meta = torchvision.models.get_model_weights(name).DEFAULT.meta
    bn_params = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
                    for p in m.parameters(recurse=False))
    folded, bn_kept = _folded_param_count(model, x, torch)
    # Published counts include auxiliary heads that eval-mode exports never contain.
    aux = 0
    if name == "inception_v3":
        full = torchvision.models.get_model(name, weights=None, aux_logits=True, init_weights=False)
        aux = sum(p.numel() for p in full.AuxLogits.parameters())
    return {
        "framework": "torch",
        "files": files,
        "input_shape": [1, 3, size, size],
        "published_gmacs": meta["_ops"],
        "published_params": meta["num_params"],
        "torch_params": sum(p.numel() for p in model.parameters()),
        "ts_params_expected": sum(p.numel() for p in model.parameters()),  # BN kept, running stats excluded
        "published_aux_params": aux,
        "bn_params": bn_params,
        "folded_params_expected": folded,
        "bn_not_folded": bn_kept,
    }


# ---- timm -------------------------------------------------------------------------------------

def export_timm(name: str, out: Path) -> dict:
    """Export one timm architecture in the dynamo and TorchScript forms; return its manifest entry.

    Random weights (nothing is downloaded); norm layers randomized, nothing else: timm's
    zero-initialized biases stay equal, so the TorchScript exporter deduplicates them.
    A form that fails is recorded under `export_failed` with the reason.
    """
    import timm
    import torch

    arch = name.removeprefix("timm_")
    torch.manual_seed(SEED)
    model = timm.create_model(arch, pretrained=False).eval()
    _randomize_norms(model, torch, torch.Generator().manual_seed(SEED))
    shape = [1, *(model.pretrained_cfg.get("input_size") or (3, 224, 224))]
    x = torch.randn(*shape)
    files, failed = {}, {}
    for kind in TIMM_FORMS:
        try:
            written = _export_form(model, x, out, f"{name}.{kind}.onnx", kind, torch)
        except Exception as e:  # recorded, never fatal: the rest of the zoo still exports
            failed[kind] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
            continue
        files[kind] = written[0]
        files.update({f"{kind}.data" if i == 0 else f"{kind}.data{i}": f for i, f in enumerate(written[1:])})
    try:  # the BN folding arithmetic of the torchvision folded form, for the dynamo (optimized) form
        folded, bn_kept = _folded_param_count(model, x, torch)
    except Exception as e:
        folded, bn_kept = None, f"{type(e).__name__}: {str(e).strip()[:200]}"
    entry = {
        "framework": "timm",
        "arch": arch,
        "construct": TIMM_ARCHS[arch],
        "files": files,
        "input_shape": shape,
        "torch_params": sum(p.numel() for p in model.parameters()),  # the ts form's expectation (BN kept)
        "folded_params_expected": folded,  # the dynamo form's expectation (BN folded where it can be)
        "bn_not_folded": bn_kept,
        "timm_version": timm.__version__,
    }
    if failed:
        entry["export_failed"] = failed
    return entry


def forms(entry: dict) -> list[str]:
    """The model forms of a manifest entry (its files less their external data)."""
    return [k for k in entry["files"] if ".data" not in k]


def framework(name: str) -> str:
    return "keras" if name in KERAS_MODELS else "timm" if name in TIMM_MODELS else "torch"


# ---- keras.applications -----------------------------------------------------------------------

def export_keras(name: str, out: Path) -> dict:
    """Convert one keras.applications architecture with tf2onnx; return its manifest entry."""
    import numpy as np
    import tensorflow as tf
    import tf2onnx

    arch, size = KERAS_MODELS[name]
    tf.keras.utils.set_random_seed(SEED)
    model = getattr(tf.keras.applications, arch)(weights=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(SEED)
    for layer in model.layers:
        # BN stats by role; any other all-equal weight (zero biases) gets noise, as for torch.
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if v.name in ("gamma", "moving_variance")
                               else rng.normal(0, 0.1, w.shape) for v, w in zip(layer.weights, layer.get_weights())])
        elif layer.weights:
            layer.set_weights([w + rng.normal(0, 0.1, w.shape) if w.size > 1 and w.min() == w.max() else w
                               for w in layer.get_weights()])
    moving, folded = _keras_bn_arithmetic(model, tf)
    spec = (tf.TensorSpec((1, size, size, 3), tf.float32, name="input"),)
    fn = tf.function(lambda x: model(x, training=False))
    tmp = out / f"{name}.onnx.tmp"
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=17, output_path=str(tmp))
    os.replace(tmp, out / f"{name}.onnx")
    return {
        "framework": "keras",
        "files": {"onnx": f"{name}.onnx"},
        "input_shape": [1, size, size, 3],
        "keras_count_params": int(model.count_params()),
        "keras_bn_moving_stats": moving,
        "folded_params_expected": folded,
    }


def _keras_bn_arithmetic(model, tf) -> tuple[int, int]:
    """(BN moving statistics, params after tf2onnx's BN handling).

    tf2onnx folds a BN into the Conv2D that alone feeds it when that conv has no bias (the
    BN shift becomes a bias of C entries); any other BN (after a biased or depthwise conv, a
    concat) becomes a Mul/Add pair with a scale and a shift (2C entries, gamma=1 when the
    layer has no scale).
    """
    users: dict[int, int] = {}
    for layer in model.layers:
        for t in [] if isinstance(layer, tf.keras.layers.InputLayer) else tf.nest.flatten(layer.input):
            users[id(t)] = users.get(id(t), 0) + 1
    moving = 0
    total = model.count_params()
    for layer in model.layers:
        if not isinstance(layer, tf.keras.layers.BatchNormalization):
            continue
        channels = int(layer.moving_mean.shape[0])
        moving += 2 * channels
        total -= sum(int(w.numpy().size) for w in layer.weights)
        src = layer.input._keras_history.operation
        if type(src).__name__ == "Conv2D" and not src.use_bias and users.get(id(layer.input), 0) == 1:
            total += channels
        else:
            total += 2 * channels
    return moving, total


# ---- driver -----------------------------------------------------------------------------------

def export(out: Path, names: list[str]) -> dict:
    """Export the named models that the manifest in `out` lacks; return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    for name in names:
        if _complete(out, manifest.get(name)):
            continue
        start = time.time()
        fw = framework(name)
        entry = export_keras(name, out) if fw == "keras" else export_timm(name, out) if fw == "timm" \
            else export_torch(name, out)
        entry["export_seconds"] = round(time.time() - start, 1)
        manifest[name] = entry
        _write_manifest(out, manifest)
        failed = f" (failed: {entry['export_failed']})" if entry.get("export_failed") else ""
        print(f"exported {name} in {time.time() - start:.1f}s{failed}", flush=True)
    return manifest


def ensure(out: Path | None = None, names: list[str] | None = None) -> dict:
    """Build whatever part of the zoo is missing, each framework in its own process."""
    out = out or default_dir()
    names = names or ALL_MODELS
    manifest = read_manifest(out)
    missing = [n for n in names if not _complete(out, manifest.get(n))]
    for fw in ("torch", "timm", "keras"):
        group = [n for n in missing if framework(n) == fw]
        if group:
            subprocess.run([sys.executable, __file__, "--out", str(out), "--only", ",".join(group),
                            "--framework", fw], check=True)
    return read_manifest(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="cache directory (default: $MORPHONNX_ZOO or ~/.cache/...)")
    p.add_argument("--only", default="", help="comma-separated model names (default: all)")
    p.add_argument("--framework", choices=("torch", "timm", "keras", "all"), default="all")
    args = p.parse_args(argv)
    out = args.out or default_dir()
    names = [n for n in args.only.split(",") if n] or ALL_MODELS
    unknown = [n for n in names if n not in ALL_MODELS]
    if unknown:
        p.error(f"unknown model {unknown[0]}; known: {', '.join(ALL_MODELS)}")
    start = time.time()
    if args.framework == "all":
        ensure(out, names)
    else:
        export(out, [n for n in names if framework(n) == args.framework])
    print(f"zoo ready in {out} ({time.time() - start:.0f}s)")
    print(f"zoo ready in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
