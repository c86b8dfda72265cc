"""`expand -o` across the zoo: does the written model meet its budget by `analyze`'s own count?

For every zoo model and export form, random masks (seed 0) give a shrunk structure; `morphonnx
expand -o` grows it to the budget (default: the original's cost) on MACs, FLOPs, size and
latency (v100); the written file is reopened from its path and costed as `analyze` costs it.
A run passes when that figure is at most the budget and at least 95% of it. Structures the
grower cannot write yet (grouped convolutions, channel Slices, channel shuffles) are listed as
refused with the reason.

    python scripts/expand_sweep.py [--only NAME ...] [--budget original|80%] [--out docs/expand_sweep]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

RESOURCES = ("macs", "flops", "size", "latency")


def sweep_one(path: Path, budget: str, workdir: Path) -> list[dict]:
    """Expand one model to each resource's budget; the written file's cost against the budget."""
    import morphonnx
    from morphonnx.cli import main
    from morphonnx.costs import cost_model
    from morphonnx.groups import find_groups
    from morphonnx.masks import legalize, masks_document, random_masks
    graph = morphonnx.load(path)
    groups = find_groups(graph)
    masks = workdir / "masks.json"
    masks.write_text(json.dumps(masks_document(groups, legalize(groups, random_masks(groups, 0)))))
    profile = morphonnx.load_profile("v100")
    rows = []
    for resource in RESOURCES:
        out, doc = workdir / "grown.onnx", workdir / "expand.json"
        argv = ["expand", str(path), "--masks", str(masks), "--budget", budget, "--resource", resource,
                "--profile", "v100", "-o", str(out), "--json", str(doc)]
        err = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(argv)
        row = {"model": path.name, "resource": resource, "code": code, "seconds": round(time.perf_counter() - t0, 1)}
        if code == 0:
            d = json.loads(doc.read_text())
            written = cost_model(morphonnx.load(out)).resource(resource, profile)
            row.update(budget=d["budget"], reported=d["cost"], written=written, ratio=written / d["budget"],
                       multiplier=d["multiplier"], ok=0.95 <= written / d["budget"] <= 1.0 + 1e-12
                       and abs(written - d["cost"]) <= 1e-9 * max(1.0, abs(written)))
            out.unlink()
        else:
            row.update(ok=None if code == 2 else False, reason=err.getvalue().strip().splitlines()[-1][:200])
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and write OUT.md and OUT.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="model name prefixes (default: the whole zoo)")
    ap.add_argument("--budget", default="original")
    ap.add_argument("--out", default=str(ROOT / "docs" / "expand_sweep"))
    args = ap.parse_args(argv)
    from conftest import export_zoo
    zoo = Path(export_zoo.default_dir())
    files = sorted(p for p in zoo.glob("*.onnx") if not args.only or any(p.name.startswith(o) for o in args.only))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            try:
                got = sweep_one(f, args.budget, Path(tmp))
            except Exception as e:  # a model that does not load or group: say so, go on
                got = [{"model": f.name, "resource": "-", "code": 3, "ok": False, "reason": f"{type(e).__name__}: {e}"[:200]}]
            rows += got
            for r in got:
                print(f"{r['model']:48s} {r['resource']:8s} " + (f"{r['ratio']:.4f} {'ok' if r['ok'] else 'FAIL'}"
                      if r.get("ratio") is not None else f"refused: {r.get('reason')}"), flush=True)
    written = [r for r in rows if r.get("ratio") is not None]
    passed = [r for r in written if r["ok"]]
    refused = [r for r in rows if r["ok"] is None]
    failed = [r for r in rows if r["ok"] is False]
    lines = [f"# expand -o across the zoo (budget: {args.budget}; random masks, seed 0)", "",
             f"{len(written)} expansions written: {len(passed)} within [95%, 100%] of the budget by analyze's count "
             f"of the written file; {len(failed)} failed; {len(refused)} refused with a reason "
             f"(structures the grower cannot write yet).", ""]
    if written:
        ratios = sorted(r["ratio"] for r in written)
        lines += [f"written/budget: min {ratios[0]:.4f}, median {ratios[len(ratios) // 2]:.4f}, max {ratios[-1]:.4f}", ""]
    lines += ["| model | resource | written / budget | multiplier | ok |", "| --- | --- | ---: | ---: | --- |"]
    for r in rows:
        if r.get("ratio") is not None:
            lines.append(f"| {r['model']} | {r['resource']} | {r['ratio']:.4f} | {r['multiplier']:.3f} | "
                         f"{'yes' if r['ok'] else '**no**'} |")
        else:
            lines.append(f"| {r['model']} | {r['resource']} | - | - | {'refused' if r['ok'] is None else '**failed**'}: "
                         f"{r.get('reason', '').replace('|', '/')} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines[:5]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
