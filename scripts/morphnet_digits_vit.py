#!/usr/bin/env python
"""MorphNet on a small Vision Transformer, on scikit-learn's digits, with morphonnx doing the graph work.

1. Train the seed ViT (16x16 digits in 4x4 patches: 16 tokens; width 64, 4 blocks of 4 heads of
   16, MLP 128, LayerNorms) several times (--seeds): the seed accuracy.
2. Train it with MorphNet's FLOP penalty (`morphonnx.torch.Regularizer`: a group with no BN, here
   every group, takes as its gamma the L2 norm of what lives and dies with each channel: the
   weight rows and biases that write it, the stream LayerNorms' scale and bias) per strength.
3. Export the penalized net to ONNX and `morphonnx prune` it with its learned masks (residual
   stream channels, MLP channels, head_dim channels of q/k and v), checked against the oracle
   on the written file; run the pruned file in onnxruntime on the test set (no retraining).
4. Retrain the learned structure from scratch (--seeds), and the uniform width multiplier at the
   same MACs (MorphNet's comparison); write results.md / results.json to --out.

    python scripts/morphnet_digits_vit.py [--out docs/digits_vit] [--epochs 60] [--seeds 3]
        [--strengths 5e-7,7e-7]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import morphonnx
from morphonnx.torch import Regularizer, export_bn_kept

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import morphnet_digits as digits_cnn  # noqa: E402  (the CNN study: data, training recipe, helpers)
from morphnet_digits import accuracy, data, morphonnx_cli  # noqa: E402

EXAMPLE = torch.zeros(1, 1, 16, 16)
LR, WEIGHT_DECAY = 0.02, 1e-4  # transformers train less stably than the CNN at 0.05


class Attention(nn.Module):
    """timm's form: one fused q/k/v projection, scaled_dot_product_attention, an output projection."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, mlp: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, head_dim)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


SEED = {"dim": 64, "blocks": [(16, 128)] * 4}  # stream width; per block: head_dim, MLP width
HEADS = 4


class DigitsViT(nn.Module):
    """Patch embedding (a Linear on 4x4 patches) + position embedding, pre-norm blocks, mean pool.
    `widths`: the stream width and, per block, head_dim (q, k and v alike) and MLP width."""

    def __init__(self, widths: dict | None = None, patch: int = 4, size: int = 16):
        super().__init__()
        w = widths or SEED
        dim = w["dim"]
        self.patch = patch
        self.embed = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, HEADS, hd, mlp) for hd, mlp in w["blocks"]])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p = x.shape[0], self.patch
        x = x.reshape(b, 1, x.shape[2] // p, p, x.shape[3] // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, p * p)
        x = self.blocks(self.embed(x) + self.pos)
        return self.head(self.norm(x).mean(1))


def train(model: nn.Module, train_set, epochs: int, seed: int, reg: Regularizer | None = None,
          strength: float = 0.0) -> nn.Module:
    """The CNN study's recipe (SGD, Nesterov, cosine schedule, L2 on the weights) at this study's rate."""
    return digits_cnn.train(model, train_set, epochs, seed, reg, strength, lr=LR, weight_decay=WEIGHT_DECAY)


def onnx_accuracy(path: Path, test_set) -> float:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x, y = test_set
    pred = [sess.run(None, {name: x[i:i + 1].numpy()})[0].argmax(1)[0] for i in range(len(y))]
    return float(np.mean(np.array(pred) == y.numpy()))


def prune(model: nn.Module, reg: Regularizer, out: Path, test_set) -> dict:
    """Export, prune with the learned masks (checked on the written file), and evaluate the file."""
    import onnx
    onnx_path, masks_path, pruned = out / "penalized.onnx", out / "masks.json", out / "pruned.onnx"
    onnx.save(export_bn_kept(model, EXAMPLE), str(onnx_path))
    reg.save_masks(masks_path)
    stdout = morphonnx_cli("prune", str(onnx_path), "--masks", str(masks_path), "-o", str(pruned))
    checked = next(line for line in stdout.splitlines() if line.startswith("check:"))
    return {"check": checked.split(": ", 1)[1], "pruned_macs": int(macs_of(morphonnx.load(str(pruned)))),
            "pruned_acc": onnx_accuracy(pruned, test_set)}


def macs_of(graph) -> float:
    return morphonnx.cost_model(graph).total("macs")


def macs(widths: dict) -> int:
    return int(macs_of(morphonnx.load(export_bn_kept(DigitsViT(widths).eval(), EXAMPLE))))


def learned_widths(reg: Regularizer) -> dict:
    """The structure the masks leave (legalized: every head keeps as many channels)."""
    alive = {n: int(m.sum() // m[0].numel()) if m.ndim > 1 else int(m.sum()) for n, m in reg.dead_entries().items()}
    depth = len(SEED["blocks"])
    full = {"embed.weight": SEED["dim"], **{f"blocks.{i}.attn.qkv.weight": 3 * HEADS * SEED["blocks"][i][0]
                                               for i in range(depth)},
            **{f"blocks.{i}.fc1.weight": SEED["blocks"][i][1] for i in range(depth)}}
    get = lambda n: alive.get(n, full[n])
    return {"dim": get("embed.weight"),
            "blocks": [(get(f"blocks.{i}.attn.qkv.weight") // (3 * HEADS), get(f"blocks.{i}.fc1.weight"))
                       for i in range(depth)]}


def uniform_at(budget: int) -> tuple[dict, int]:
    """The smallest uniform width multiplier whose MACs reach the budget."""
    for m in np.arange(0.2, 1.0001, 0.01):
        w = {"dim": max(1, round(SEED["dim"] * m)), "blocks": [(max(1, round(hd * m)), max(1, round(f * m)))
                                                             for hd, f in SEED["blocks"]]}
        c = macs(w)
        if c >= budget:
            return w, c
    return SEED, macs(SEED)


def retrain(widths: dict, train_set, test_set, epochs: int, seeds: int) -> list[float]:
    """Train the structure from scratch, once per seed (MorphNet retrains the learned structure)."""
    out = []
    for s in range(seeds):
        torch.manual_seed(s)
        out.append(accuracy(train(DigitsViT(widths), train_set, epochs, s), test_set))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "digits_vit")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--strengths", default="5e-7,7e-7", help="FLOP penalty strengths")
    p.add_argument("--threshold", type=float, default=0.01)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = data()
    t0 = time.time()
    seed_macs = macs(SEED)
    seed_accs = retrain(SEED, train_set, test_set, args.epochs, args.seeds)
    rows = [{"kind": "seed", "widths": SEED, "macs": seed_macs, "accs": seed_accs}]
    print(f"seed: {np.mean(seed_accs):.4f} ± {np.std(seed_accs):.4f}, {seed_macs} MACs ({time.time() - t0:.0f}s)")
    for strength in [float(v) for v in args.strengths.split(",")]:
        torch.manual_seed(0)
        model = DigitsViT()
        reg = Regularizer(model, EXAMPLE, resource="flops", threshold=args.threshold)
        train(model, train_set, args.epochs, 0, reg, strength)
        penalized = accuracy(model, test_set)
        with torch.no_grad():  # the penalized net as its masks leave it: what the pruned file computes
            params = dict(model.named_parameters())
            for name, keep in reg.dead_entries().items():
                params[name].mul_(keep)
        with tempfile.TemporaryDirectory() as tmp:
            row = prune(model, reg, Path(tmp), test_set)
        widths = learned_widths(reg)
        row.update(kind="morphnet", strength=strength, widths=widths, macs=macs(widths), penalized_acc=penalized,
                   masked_acc=accuracy(model, test_set),
                   accs=retrain(widths, train_set, test_set, args.epochs, args.seeds))
        rows.append(row)
        uni, uni_macs = uniform_at(row["macs"])
        rows.append({"kind": "uniform", "strength": strength, "widths": uni, "macs": uni_macs,
                     "accs": retrain(uni, train_set, test_set, args.epochs, args.seeds)})
        print(f"strength {strength:g}: {row['macs'] / seed_macs:.1%} of the MACs ({widths}); pruned file "
              f"{row['pruned_acc']:.4f} (= masked torch {row['masked_acc']:.4f}); retrained "
              f"{np.mean(row['accs']):.4f}; uniform at {uni_macs / seed_macs:.1%}: {np.mean(rows[-1]['accs']):.4f}; "
              f"{row['check']} ({time.time() - t0:.0f}s)")
    doc = {"seed_macs": seed_macs, "rows": rows, "settings": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "results.json").write_text(json.dumps(doc, indent=1))
    pct = lambda a: f"{100 * np.mean(a):.2f}% ± {100 * np.std(a):.2f}"
    lines = ["| network | MACs (of the seed's) | widths: stream; per block head_dim/MLP | accuracy retrained "
             f"({args.seeds} seeds) | vs seed | pruned file, no retraining |", "|---|---|---|---|---|---|"]
    for r in rows:
        name = {"seed": "seed ViT", "morphnet": f"MorphNet, strength {r.get('strength', 0):g}",
                "uniform": "uniform width multiplier"}[r["kind"]]
        blocks = " ".join(f"{hd}/{f}" for hd, f in r["widths"]["blocks"])
        pruned = f"{100 * r['pruned_acc']:.2f}% (check passed)" if "pruned_acc" in r else ""
        lines.append(f"| {name} | {r['macs'] / 1e6:.3f} M ({r['macs'] / seed_macs:.0%}) | {r['widths']['dim']}; "
                     f"{blocks} | {pct(r['accs'])} | {100 * (np.mean(r['accs']) - np.mean(seed_accs)):+.2f} points | "
                     f"{pruned} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
