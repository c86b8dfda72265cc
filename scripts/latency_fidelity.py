"""How well a latency profile predicts onnxruntime on this machine, on models it was not fit on.

    python scripts/latency_fidelity.py --profile this-cpu-kernels.yaml [--zoo DIR]
        [--models resnet18,resnet50,...] [--forms folded,ts,bn] [--variants 10]
        [--variant-forms folded,bn] [--runs 15]
        [--out docs/latency_fidelity]

For every architecture and export form: the model and (in `--variant-forms`) `--variants`
random-width variants of it (random masks, pruned), each measured in onnxruntime (the median of
a round of `--runs` runs and 0.25 s after 3 warm-ups, the lowest of 3 such rounds, with the
profile's `threads`, all optimizations; measured twice, each time in a new session: the lower
counts, and how often the two agree within ±10% says how steady the machine is) and predicted
by `analyze`'s latency on the profile (`CostModel.resource("latency", profile)`). Prints per
architecture and overall: Spearman's rank correlation, the share within ±10% and the median
error; the originals in each export form (BN folded, TorchScript with BN kept, dynamo with BN
kept) side by side; with `--out`, writes fidelity.md, fidelity.json and a predicted-vs-measured
scatter plot (fidelity.png).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import export_zoo  # noqa: E402

from morphonnx.calibrate import _session, random_variants  # noqa: E402
from morphonnx.microbench import median_seconds  # noqa: E402
from morphonnx.costs import cost_model  # noqa: E402
from morphonnx.graph import load  # noqa: E402
from morphonnx.oracle import random_inputs  # noqa: E402
from morphonnx.profiles import load_profile, thread_setting  # noqa: E402

MODELS = ("resnet18,resnet50,mobilenet_v2,mobilenet_v3_large,efficientnet_b0,densenet121,googlenet,"
          "regnet_y_400mf,mnasnet1_0,squeezenet1_1")


def measure(model, feeds, runs: int, threads: int) -> float:
    """The median of a round of at least `runs` runs and 0.25 s after 3 warm-ups, the lowest of 3
    rounds (a busy moment of the machine only ever slows a round down); `threads` intra-op threads
    (0: onnxruntime's default)."""
    return median_seconds(_session(model, threads), feeds, 3, runs, min_seconds=0.25)[0]


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 1 else 1.0


def summary(rows: list[dict]) -> dict:
    p = np.array([r["predicted_ms"] for r in rows])
    m = np.array([r["measured_ms"] for r in rows])
    err = np.abs(p - m) / m
    repeat = np.abs(np.array([r["repeat_ratio"] for r in rows]) - 1)
    return {"n": len(rows), "spearman": spearman(p, m), "within_10pct": float(np.mean(err <= 0.10)),
            "median_error": float(np.median(err)), "max_error": float(np.max(err)),
            "repeat_within_10pct": float(np.mean(repeat <= 0.10)), "repeat_median_change": float(np.median(repeat))}


def run(args) -> dict:
    profile = load_profile(args.profile)
    zoo = args.zoo or export_zoo.default_dir()
    names = args.models.split(",")
    manifest = export_zoo.ensure(zoo, names)
    rows = []
    for name in names:
        for form in args.forms.split(","):
            file = manifest[name]["files"].get(form)
            if file is None:
                print(f"{name}: no {form} export", file=sys.stderr)
                continue
            path = zoo / file
            graph = load(path)
            feeds = random_inputs(graph, 0)
            start = time.perf_counter()
            items = [("original", cost_model(graph), str(path))]
            variants = args.variants if form in args.variant_forms.split(",") else 0
            seed = zlib.crc32(name.encode()) % 1000
            items += [(f"variant {k + 1}", costs, pruned)
                      for k, (costs, pruned, _) in enumerate(random_variants(path, variants, seed=seed))]
            for label, costs, model in items:
                predicted = costs.resource("latency", profile)
                first, second = (measure(model, feeds, args.runs, profile.threads) for _ in range(2))
                rows.append({"model": name, "form": form, "variant": label, "macs": costs.total("macs"),
                             "predicted_ms": predicted * 1e3, "measured_ms": min(first, second) * 1e3,
                             "repeat_ratio": second / first})
            s = summary([r for r in rows if r["model"] == name and r["form"] == form])
            print(f"{name:20s} {form:7s} n={s['n']:3d} spearman {s['spearman']:.3f} within 10% {s['within_10pct']:.0%} "
                  f"median error {s['median_error']:.1%}  ({time.perf_counter() - start:.0f}s)", flush=True)
    return {"profile": profile.key, "threads": profile.threads, "sources": profile.sources.get("kernels", ""),
            "rows": rows,
            "overall": summary(rows),
            "by_model": {f"{n} ({f})": summary([r for r in rows if r["model"] == n and r["form"] == f])
                         for n, f in dict.fromkeys((r["model"], r["form"]) for r in rows)}}


def markdown(doc: dict) -> str:
    setting = thread_setting(doc.get("threads", 0))
    lines = [f"Profile `{doc['profile']}` (measured and predicted with {setting} of onnxruntime): "
             f"{doc['sources']}", "",
             "| model (form) | n | Spearman | within ±10% | median error | max error | repeat within ±10% | repeat median change |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, s in list(doc["by_model"].items()) + [("**all**", doc["overall"])]:
        lines.append(f"| {k} | {s['n']} | {s['spearman']:.3f} | {s['within_10pct']:.0%} | {s['median_error']:.1%} | "
                     f"{s['max_error']:.1%} | {s['repeat_within_10pct']:.0%} | {s['repeat_median_change']:.1%} |")
    originals = {(r["model"], r["form"]): r for r in doc["rows"] if r["variant"] == "original"}
    forms = list(dict.fromkeys(f for _, f in originals))
    if len(forms) > 1:
        lines += ["", "The originals in each export form: predicted / measured ms (dynamo's BN-kept form computes "
                  "its conv biases at run time, which keeps onnxruntime from folding the BN)", "",
                  "| model | " + " | ".join(forms) + " |", "|---|" + "---:|" * len(forms)]
        for m in dict.fromkeys(m for m, _ in originals):
            cells = [f"{originals[(m, f)]['predicted_ms']:.2f} / {originals[(m, f)]['measured_ms']:.2f}"
                     if (m, f) in originals else "" for f in forms]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 6))
    models = list(dict.fromkeys(r["model"] for r in doc["rows"]))
    cmap = plt.get_cmap("tab20")
    for i, m in enumerate(models):
        rs = [r for r in doc["rows"] if r["model"] == m]
        ax.scatter([r["measured_ms"] for r in rs], [r["predicted_ms"] for r in rs], s=14, color=cmap(i % 20), label=m)
    lo = min(min(r["measured_ms"], r["predicted_ms"]) for r in doc["rows"]) * 0.8
    hi = max(max(r["measured_ms"], r["predicted_ms"]) for r in doc["rows"]) * 1.2
    x = np.geomspace(lo, hi, 50)
    ax.plot(x, x, "k-", lw=0.8)
    ax.fill_between(x, x * 0.9, x * 1.1, color="0.85", label="±10%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured onnxruntime latency (ms)")
    ax.set_ylabel("predicted (ms)")
    s = doc["overall"]
    ax.set_title(f"{s['n']} models: Spearman {s['spearman']:.3f}, {s['within_10pct']:.0%} within ±10%", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--zoo", type=Path, default=None)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--forms", default="folded,ts,bn")
    ap.add_argument("--variants", type=int, default=10)
    ap.add_argument("--variant-forms", default="folded,bn", help="the forms whose variants are measured too")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    doc = run(args)
    print(markdown(doc))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fidelity.json").write_text(json.dumps(doc, indent=1))
        (args.out / "fidelity.md").write_text(markdown(doc))
        plot(doc, args.out / "fidelity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
