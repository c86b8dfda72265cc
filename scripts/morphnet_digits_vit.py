#!/usr/bin/env python
"""MorphNet on a small Vision Transformer, on scikit-learn's digits, with morphonnx doing the graph work.

1. Train the seed ViT (16x16 digits in 4x4 patches: 16 tokens; width 64, 4 blocks of 4 heads of
   16, MLP 128, LayerNorms) several times (--seeds): the seed accuracy.
2. Train it with MorphNet's FLOP penalty (`morphonnx.torch.Regularizer`: a group with no BN, here
   every group, takes the L2 norm of the weights that write each channel as its gamma) at
   several strengths; fine-tune the alive channels a few epochs without the penalty (dead ones
   held at 0), as MorphNet's shrink step ends.
3. Export each penalized net to ONNX and `morphonnx prune` it with its learned masks (residual
   stream channels, MLP channels and head_dim channels of q/k and v), checked against the oracle
   on the written file; run the pruned file in onnxruntime on the test set.
4. Write results.md / results.json: per strength, the pruned model's MACs (morphonnx's count of
   the written file) against the seed's, its test accuracy in onnxruntime, the widths learned.

    python scripts/morphnet_digits_vit.py [--out docs/digits_vit] [--epochs 60] [--seeds 3]
        [--strengths 2e-8,5e-8,1e-7]
"""
from __future__ import annotations

import argparse
import json
import subprocess
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
EXAMPLE = torch.zeros(1, 1, 16, 16)
LR, WEIGHT_DECAY, BATCH = 0.02, 1e-4, 64


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


class DigitsViT(nn.Module):
    """Patch embedding (a Linear on 4x4 patches) + position embedding, pre-norm blocks, mean pool."""

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, head_dim: int = 16, mlp: int = 128,
                 patch: int = 4, size: int = 16):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, head_dim, mlp) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p = x.shape[0], self.patch
        x = x.reshape(b, 1, x.shape[2] // p, p, x.shape[3] // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, p * p)
        x = self.blocks(self.embed(x) + self.pos)
        return self.head(self.norm(x).mean(1))


def data(seed: int = 0):
    """Digits upsampled to 16x16, a stratified 70/30 split (as scripts/morphnet_digits.py)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed, stratify=d.target)
    return (x[idx_train], y[idx_train]), (x[idx_test], y[idx_test])


def train(model: nn.Module, train_set, epochs: int, seed: int, reg: Regularizer | None = None,
          strength: float = 0.0, frozen: dict[str, torch.Tensor] | None = None, lr: float = LR) -> nn.Module:
    """SGD with Nesterov momentum, cosine schedule, L2 on the weights.
    `frozen`: per parameter, a 0/1 mask of the entries held at 0 (the dead channels of a shrink)."""
    torch.manual_seed(seed)
    x, y = train_set
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": WEIGHT_DECAY}, {"params": others, "weight_decay": 0}],
                          lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    params = dict(model.named_parameters())
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), BATCH):
            b = perm[i:i + BATCH]
            loss = F.cross_entropy(model(x[b]), y[b])
            if reg is not None:
                loss = loss + strength * reg.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if frozen:
                with torch.no_grad():
                    for name, keep in frozen.items():
                        params[name].mul_(keep)
        sched.step()
    return model.eval()


def accuracy(model: nn.Module, test_set) -> float:
    with torch.no_grad():
        return float((model(test_set[0]).argmax(1) == test_set[1]).float().mean())


def dead_entries(model: nn.Module, reg: Regularizer) -> dict[str, torch.Tensor]:
    """Per weight (and bias) of a source, 0 at the rows of channels the masks remove."""
    params = dict(model.named_parameters())
    out = {}
    for weight, alive in reg.alive_masks().items():
        if weight not in params or all(alive):
            continue
        keep = torch.tensor(alive, dtype=torch.float32)
        out[weight] = keep.reshape(-1, *[1] * (params[weight].ndim - 1))
        bias = weight.rpartition(".")[0] + ".bias"
        if bias in params:
            out[bias] = keep
    return out


def morphonnx_cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "morphonnx", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"morphonnx {args[0]} failed: {r.stderr.strip()}")
    return r.stdout


def onnx_accuracy(path: Path, test_set) -> float:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x, y = test_set
    pred = [sess.run(None, {name: x[i:i + 1].numpy()})[0].argmax(1)[0] for i in range(len(y))]
    return float(np.mean(np.array(pred) == y.numpy()))


def widths(path: Path) -> dict[str, int]:
    """Stream width, and per block q/k and v head_dim and MLP width, read off a (pruned) ONNX file."""
    g = morphonnx.load(str(path))
    out = {}
    for name in g.nodes:
        node = g.nodes[name]
        if node.op_type == "MatMul" and g.is_constant(node.input[1]):
            out[name] = int(g.info(node.input[1]).shape[1])
    return out


def prune(model: nn.Module, reg: Regularizer, out: Path, test_set) -> dict:
    """Export, prune with the learned masks (checked on the written file), and evaluate the file."""
    import onnx
    onnx_path, masks_path, pruned = out / "penalized.onnx", out / "masks.json", out / "pruned.onnx"
    onnx.save(export_bn_kept(model, EXAMPLE), str(onnx_path))
    reg.save_masks(masks_path)
    stdout = morphonnx_cli("prune", str(onnx_path), "--masks", str(masks_path), "-o", str(pruned))
    checked = next(line for line in stdout.splitlines() if line.startswith("check:"))
    macs = morphonnx.cost_model(morphonnx.load(str(pruned))).total("macs")
    return {"check": checked.split(": ", 1)[1], "macs": int(macs), "onnx_acc": onnx_accuracy(pruned, test_set),
            "widths": learned(reg)}


def learned(reg: Regularizer) -> dict[str, int]:
    """Alive channels per source, by torch parameter name."""
    return {name: int(sum(alive)) for name, alive in reg.alive_masks().items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "digits_vit")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--finetune", type=int, default=15, help="epochs without the penalty after the shrink")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--strengths", default="2e-8,5e-8,1e-7", help="FLOP penalty strengths")
    p.add_argument("--threshold", type=float, default=0.01)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = data()
    t0 = time.time()
    seed_accs = [accuracy(train(DigitsViT(), train_set, args.epochs, s), test_set) for s in range(args.seeds)]
    seed_macs = morphonnx.cost_model(morphonnx.load(export_bn_kept(DigitsViT().eval(), EXAMPLE))).total("macs")
    print(f"seed: {np.mean(seed_accs):.4f} ± {np.std(seed_accs):.4f}, {seed_macs} MACs ({time.time() - t0:.0f}s)")
    rows = []
    for strength in [float(v) for v in args.strengths.split(",")]:
        for s in range(args.seeds):
            torch.manual_seed(s)
            model = DigitsViT()
            reg = Regularizer(model, EXAMPLE, resource="flops", threshold=args.threshold)
            train(model, train_set, args.epochs, s, reg, strength)
            penalized = accuracy(model, test_set)
            frozen = dead_entries(model, reg)
            with torch.no_grad():
                for name, keep in frozen.items():
                    dict(model.named_parameters())[name].mul_(keep)
            train(model, train_set, args.finetune, s, frozen=frozen, lr=LR / 5)
            with tempfile.TemporaryDirectory() as tmp:
                row = prune(model, reg, Path(tmp), test_set)
            row.update(strength=strength, seed=s, penalized_acc=penalized, torch_acc=accuracy(model, test_set),
                       macs_share=row["macs"] / seed_macs)
            rows.append(row)
            print(f"strength {strength:g} seed {s}: {row['macs_share']:.1%} of the MACs, accuracy "
                  f"{row['onnx_acc']:.4f} (onnxruntime, pruned file; seed mean {np.mean(seed_accs):.4f}); "
                  f"{row['check']} ({time.time() - t0:.0f}s)")
    doc = {"seed": {"macs": int(seed_macs), "accs": seed_accs}, "runs": rows,
           "settings": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "results.json").write_text(json.dumps(doc, indent=1))
    lines = ["| strength | MACs (share of the seed's) | accuracy, pruned file in onnxruntime | vs seed mean | check |",
             "|---|---|---|---|---|"]
    for strength in sorted({r["strength"] for r in rows}):
        rs = [r for r in rows if r["strength"] == strength]
        share = np.mean([r["macs_share"] for r in rs])
        acc = np.mean([r["onnx_acc"] for r in rs])
        ok = all("max abs error" in r["check"] for r in rs)
        lines.append(f"| {strength:g} | {np.mean([r['macs'] for r in rs]) / 1e6:.3f} M ({share:.1%}) | "
                     f"{100 * acc:.2f}% ± {100 * np.std([r['onnx_acc'] for r in rs]):.2f} | "
                     f"{100 * (acc - np.mean(seed_accs)):+.2f} points | {'passed' if ok else 'see JSON'} |")
    head = (f"Seed ViT: {seed_macs / 1e6:.3f} M MACs, test accuracy {100 * np.mean(seed_accs):.2f}% ± "
            f"{100 * np.std(seed_accs):.2f} over {args.seeds} seeds. Each row: mean over {args.seeds} seeds.\n\n")
    (args.out / "results.md").write_text(head + "\n".join(lines) + "\n")
    print(head + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
