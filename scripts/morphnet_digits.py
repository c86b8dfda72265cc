#!/usr/bin/env python
"""MorphNet end to end on scikit-learn's digits, with morphonnx doing the graph work.

1. Train the seed network (a small ResNet/Inception-style CNN, BN kept) on 16x16 digits.
2. Train it again with MorphNet's FLOP penalty (morphonnx.torch.Regularizer) at several strengths.
3. Export each penalized model to ONNX, `morphonnx prune` it with the learned masks (checked
   against the oracle) and `morphonnx expand` them back to the seed's MACs; read the widths.
4. Retrain every learned structure from scratch (--seeds, default 5), and the uniform width-multiplier
   baseline at the same MACs (MorphNet's central comparison).
5. The full cycle (with --cycles): expand the learned structure by one width multiplier back
   to the seed's MACs, retrain it; train that with the penalty again, shrink, expand, retrain
   (cycle 2).
6. Write a table (results.md, results.json) and a plot (accuracy_vs_macs.png) to --out.

    python scripts/morphnet_digits.py [--out demo-out/digits] [--epochs 40] [--seeds 5]
        [--seed-widths 32,32,64,32,32,48] [--strengths 3e-8,1e-7,3e-7] [--cycles 2] [--write-default-model]

Every training (seed, penalty, retrain, baseline) uses one recipe: SGD with Nesterov momentum,
cosine schedule, L2 on the conv/linear weights; seed i fixes both the initial weights and the
batch order, so a rerun on the same machine gives the same numbers.
`--write-default-model` stores a trained seed (BN kept) as morphonnx/data/digits_cnn.onnx,
the model the README's demo command analyzes, prunes and compares.
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
SEED_WIDTHS = {"stem": 32, "b1": 32, "down": 64, "t1": 32, "t2r": 32, "t2": 48}
LR, WEIGHT_DECAY = 0.05, 5e-4
EXAMPLE = (torch.zeros(1, 1, 16, 16),)  # the example input of every export
WEIGHT_OF = {"stem": "stem.0.weight", "b1": "b1a.0.weight", "down": "down.0.weight", "t1": "t1.0.weight",
             "t2r": "t2r.0.weight", "t2": "t2.0.weight"}


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class DigitsNet(nn.Module):
    """stem → residual block → strided conv → two-tower Inception module → pool → linear.
    A width of 0 removes its block or tower (topology morphing in the framework)."""

    def __init__(self, w: dict[str, int]):
        super().__init__()
        self.w = dict(w)
        self.stem = cbr(1, w["stem"])
        if w["b1"]:
            self.b1a, self.b1b = cbr(w["stem"], w["b1"]), cbr(w["b1"], w["stem"], relu=False)
        self.down = cbr(w["stem"], w["down"], stride=2)
        if w["t1"]:
            self.t1 = cbr(w["down"], w["t1"], k=1)
        if w["t2r"] and w["t2"]:
            self.t2r, self.t2 = cbr(w["down"], w["t2r"], k=1), cbr(w["t2r"], w["t2"])
        width = w["t1"] + (w["t2"] if w["t2r"] else 0)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.w["b1"]:
            x = F.relu(x + self.b1b(self.b1a(x)))
        x = self.down(x)
        towers = ([self.t1(x)] if self.w["t1"] else []) + ([self.t2(self.t2r(x))] if self.w["t2r"] and self.w["t2"] else [])
        x = torch.cat(towers, 1) if len(towers) > 1 else towers[0]
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def data(seed: int = 0):
    """Digits upsampled to 16x16, a stratified 70/30 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed, stratify=d.target)
    return (x[idx_train], y[idx_train]), (x[idx_test], y[idx_test])


def train(model: nn.Module, train_set, epochs: int, seed: int, reg: Regularizer | None = None,
          strength: float = 0.0, lr: float = LR, weight_decay: float = WEIGHT_DECAY) -> nn.Module:
    """SGD with Nesterov momentum, cosine schedule, L2 on conv/linear weights (not on BN or biases).

    The L2 is part of MorphNet's recipe, not decoration: BN makes a conv's output invariant to the
    scale of the weights before it, so without weight decay a network can shrink every gamma and
    grow the next weights to pay the L1 penalty without losing a channel."""
    torch.manual_seed(seed)
    x, y = train_set
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0}],
                          lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            if reg is not None:
                loss = loss + strength * reg.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def accuracy(model: nn.Module, test_set) -> float:
    with torch.no_grad():
        return float((model(test_set[0]).argmax(1) == test_set[1]).float().mean())


def macs(widths: dict[str, int]) -> int:
    """MACs of the network with these widths, from morphonnx's cost model of its ONNX export."""
    model = DigitsNet(widths).eval()
    return morphonnx.cost_model(morphonnx.load(export_bn_kept(model, EXAMPLE))).total("macs")


def uniform(multiplier: float, seed: dict[str, int]) -> dict[str, int]:
    return {k: max(1, int(round(v * multiplier))) for k, v in seed.items()}


def uniform_at(budget: int, seed: dict[str, int]) -> tuple[dict[str, int], int]:
    """The smallest uniform width multiplier whose MACs reach the budget: the baseline never has
    fewer MACs than the learned structure it is compared with."""
    lo, hi = 0.01, 1.5
    for _ in range(16):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(uniform(mid, seed)) < budget else (lo, mid)
    return uniform(hi, seed), macs(uniform(hi, seed))


def by_block(per_weight: dict[str, int]) -> dict[str, int]:
    """DigitsNet widths from channels per conv weight; a vanished block has no weight."""
    w = {k: int(per_weight.get(v, 0)) for k, v in WEIGHT_OF.items()}
    if w["t2r"] == 0 or w["t2"] == 0:
        w["t2r"] = w["t2"] = 0
    return w


def learned_widths(reg: Regularizer) -> dict[str, int]:
    return by_block({name: sum(mask) for name, mask in reg.onnx_masks().items()})


def spread(accs: list[float]) -> dict[str, float]:
    return {"acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs))}


def pct(accs: list[float]) -> str:
    return f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs):.2f}"


def versus(accs: list[float], seed_accs: list[float]) -> dict[str, float]:
    """Mean accuracy minus the seed's, with the standard error of that difference."""
    var = lambda a: np.var(a, ddof=1) / len(a) if len(a) > 1 else np.nan  # one training has no spread
    se = np.sqrt(var(accs) + var(seed_accs))
    return {"delta_vs_seed": float(np.mean(accs) - np.mean(seed_accs)), "delta_se": float(se)}


def fresh(widths: dict[str, int], seed: int) -> DigitsNet:
    """A newly initialized network; the seed fixes its initial weights as well as its training."""
    torch.manual_seed(seed)
    return DigitsNet(widths)


def retrain(widths: dict[str, int], train_set, test_set, epochs: int, seeds: int = 5) -> list[float]:
    """Test accuracies of `seeds` trainings from scratch (seeds 0, 1, ...) on the same split."""
    return [accuracy(train(fresh(widths, seed), train_set, epochs, seed), test_set) for seed in range(seeds)]


def morphonnx_cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "morphonnx", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"morphonnx {args[0]} failed: {r.stderr.strip()}")
    return r.stdout


def prune_and_expand(model: nn.Module, reg: Regularizer, budget: int, out: Path) -> tuple[str, dict]:
    """Export the penalized net (BN kept) and its learned masks; `morphonnx prune` them (checked
    against the oracle) and `morphonnx expand` them to the MACs budget. Returns prune's check
    line and the expansion: widths, MACs (the cost model's), multiplier."""
    import onnx
    onnx_path, masks_path = out / "penalized.onnx", out / "masks.json"
    onnx.save(export_bn_kept(model, EXAMPLE), str(onnx_path))
    reg.save_masks(masks_path)
    stdout = morphonnx_cli("prune", str(onnx_path), "--masks", str(masks_path), "-o", str(out / "pruned.onnx"))
    checked = next(line for line in stdout.splitlines() if line.startswith("check:"))
    morphonnx_cli("expand", str(onnx_path), "--masks", str(masks_path), "--budget", str(budget),
                  "--resource", "macs", "--json", str(out / "expanded.json"))
    grown = json.loads((out / "expanded.json").read_text())
    widths = by_block({s["weight"]: s["expanded"] for s in grown["sources"]})
    return checked, {"widths": widths, "macs": int(grown["cost"]), "multiplier": grown["multiplier"]}


def shrink(widths: dict[str, int], strength: float, train_set, epochs: int, threshold: float,
           budget: int) -> tuple[dict[str, int], str, dict]:
    """Train a fresh net of these widths with the FLOP penalty; return its learned widths, prune's
    check line and the expansion to the budget. RuntimeError when the masks kill a whole layer."""
    model = fresh(widths, 0)
    reg = Regularizer(model, EXAMPLE, resource="flops", threshold=threshold)
    train(model, train_set, epochs, 0, reg, strength)
    with tempfile.TemporaryDirectory() as tmp:
        checked, expanded = prune_and_expand(model, reg, budget, Path(tmp))
    return learned_widths(reg), checked, expanded


def plot(rows: list[dict], seed_row: dict, path: Path, seeds: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker, color in (("uniform", "s--", "tab:gray"), ("morphnet", "o-", "tab:blue")):
        pts = sorted((r["macs"], r["acc_mean"], r["acc_std"]) for r in rows if r["kind"] == kind)
        if pts:
            m, a, s = zip(*pts)
            ax.errorbar([v / 1e6 for v in m], [100 * v for v in a], yerr=[100 * v for v in s], fmt=marker,
                        color=color, capsize=3, label="uniform width multiplier" if kind == "uniform" else
                        "MorphNet (learned structure, retrained)")
    for r in rows:
        if r["kind"].startswith("cycle"):
            ax.errorbar([r["macs"] / 1e6], [100 * r["acc_mean"]], yerr=[100 * r["acc_std"]], fmt="D", capsize=3,
                        label=f"MorphNet {r['kind'].replace('cycle', 'cycle ')} (shrink, expand to the seed's MACs)")
    ax.errorbar([seed_row["macs"] / 1e6], [100 * seed_row["acc_mean"]], yerr=[100 * seed_row["acc_std"]], fmt="*",
                color="tab:red", markersize=12, capsize=3, label="seed network")
    ax.set_xlabel("MACs (millions, morphonnx cost model)")
    ax.set_ylabel(f"test accuracy (%), mean ± std over {seeds} seeds")
    ax.set_title("digits 16x16: accuracy vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "demo-out" / "digits")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--strengths", default="3e-8,1e-7,3e-7", help="FLOP penalty strengths")
    p.add_argument("--threshold", type=float, default=0.01)
    p.add_argument("--write-default-model", action="store_true")
    p.add_argument("--cycles", type=int, default=0, help="MorphNet cycles (shrink, expand) after the strengths")
    p.add_argument("--cycle-from", type=int, default=None,
                   help="index in --strengths of the structure the cycles start from (default: the one closest to "
                        "half the seed's MACs)")
    p.add_argument("--seed-widths", default=",".join(str(v) for v in SEED_WIDTHS.values()),
                   help="widths of the seed network: stem, b1, down, t1, t2r, t2")
    p.add_argument("--seeds", type=int, default=5, help="trainings from scratch per network (mean ± std)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    torch.use_deterministic_algorithms(True)  # same numbers on a rerun on the same machine
    train_set, test_set = data()
    seed_widths = dict(zip(SEED_WIDTHS, (int(v) for v in args.seed_widths.split(","))))
    seed_macs = macs(seed_widths)
    seed_accs = retrain(seed_widths, train_set, test_set, args.epochs, args.seeds)
    seed_row = {"kind": "seed", "widths": seed_widths, "macs": seed_macs, "accs": seed_accs,
                **spread(seed_accs)}
    print(f"seed: {seed_macs / 1e6:.3f} M MACs, accuracy {pct(seed_accs)}")
    if args.write_default_model:
        import onnx
        model = train(fresh(seed_widths, 0), train_set, args.epochs, 0)
        target = ROOT / "morphonnx" / "data" / "digits_cnn.onnx"
        onnx.save(export_bn_kept(model, EXAMPLE), str(target))
        print(f"wrote {target}")
    rows = []
    strengths = [float(s) for s in args.strengths.split(",")]
    for strength in strengths:
        try:
            widths, checked, expanded = shrink(seed_widths, strength, train_set, args.epochs, args.threshold,
                                               seed_macs)
        except RuntimeError as e:  # a strength that kills a whole layer leaves no network to retrain
            print(f"strength {strength:g}: {e}; skipped", flush=True)
            continue
        budget = macs(widths)
        accs = retrain(widths, train_set, test_set, args.epochs, args.seeds)
        rows.append({"kind": "morphnet", "strength": strength, "widths": widths, "macs": budget, "accs": accs,
                     **spread(accs), "prune": checked, "expanded": expanded})
        uw, um = uniform_at(budget, seed_widths)
        uaccs = retrain(uw, train_set, test_set, args.epochs, args.seeds)
        rows.append({"kind": "uniform", "budget": budget, "widths": uw, "macs": um, "accs": uaccs,
                     **spread(uaccs)})
        print(f"strength {strength:g}: widths {widths}, {budget / 1e6:.3f} M MACs ({budget / seed_macs:.0%} of the "
              f"seed), accuracy {pct(accs)}; uniform at {um / 1e6:.3f} M: {pct(uaccs)}  [{checked}]", flush=True)
    cycles = []
    learned = [r for r in rows if r["kind"] == "morphnet"]
    if args.cycle_from is None:
        args.cycle_from = min(range(len(learned)), key=lambda i: abs(learned[i]["macs"] / seed_macs - 0.5))
    widths, expanded = learned[args.cycle_from]["widths"], learned[args.cycle_from]["expanded"]
    for cycle in range(1, args.cycles + 1):
        grown = expanded["widths"]
        accs = retrain(grown, train_set, test_set, args.epochs, args.seeds)
        cycles.append({"kind": f"cycle{cycle}", "from": widths, **expanded, "accs": accs, **spread(accs)})
        print(f"cycle {cycle}: {widths} x {expanded['multiplier']:.3f} -> {grown}, {expanded['macs'] / 1e6:.3f} M "
              f"MACs, accuracy {pct(accs)}", flush=True)
        if cycle < args.cycles:  # shrink the expanded network again, expand it back to the seed's MACs
            try:
                widths, _, expanded = shrink(grown, strengths[args.cycle_from], train_set, args.epochs,
                                             args.threshold, seed_macs)
            except RuntimeError as e:
                print(f"cycle {cycle + 1}: {e}; stopped", flush=True)
                break
    rows += cycles
    for r in rows:
        r.update(versus(r["accs"], seed_accs))
    (args.out / "results.json").write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
                                                       | {"lr": LR, "weight_decay": WEIGHT_DECAY},
                                                       "seed": seed_row, "rows": rows}, indent=1))
    lines = [f"| network | widths (stem, b1, down, t1, t2r, t2) | MACs | vs seed | accuracy ({args.seeds} seeds) "
             "| Δ vs seed ± SE |",
             "|---|---|---:|---:|---:|---:|",
             f"| seed | {', '.join(str(v) for v in seed_widths.values())} | {seed_macs / 1e6:.3f} M | 100% | "
             f"{100 * seed_row['acc_mean']:.2f} ± {100 * seed_row['acc_std']:.2f} | |"]
    for r in rows:
        name = {"morphnet": f"MorphNet λ={r.get('strength', 0):g}", "uniform": "uniform multiplier"}.get(
            r["kind"], f"{r['kind']}: expanded x{r.get('multiplier', 1):.2f}")
        lines.append(f"| {name} | {', '.join(str(v) for v in r['widths'].values())} | {r['macs'] / 1e6:.3f} M | "
                     f"{r['macs'] / seed_macs:.0%} | {100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} | "
                     f"{100 * r['delta_vs_seed']:+.2f} ± {100 * r['delta_se']:.2f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    plot(rows, seed_row, args.out / "accuracy_vs_macs.png", args.seeds)
    print("\n".join(lines))
    print(f"wrote {args.out / 'results.md'}, {args.out / 'accuracy_vs_macs.png'} in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
