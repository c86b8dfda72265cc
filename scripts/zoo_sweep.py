#!/usr/bin/env python
"""Run the command line on every zoo model × form as a user would, and classify what happens.

For each model and form: `morphonnx analyze MODEL` and `morphonnx groups MODEL`; then per seed a
masks JSON with random masks (as `tests/conftest.py::random_masks`: keep 10–90% of every unpinned
group, at least one channel; one entry per source of each unpinned group, by node name) and
`morphonnx prune MODEL --masks M.json -o OUT.onnx`, after which OUT.onnx is reopened from its path
in a fresh process (`onnx.checker.check_model(path, full_check=True)`, an onnxruntime session).

Classes: pass (exit 0; for prune the written file reopens), refused (exit 2, one line on stderr),
check-failed (exit 1), traceback (a Traceback on stderr, or any other exit), artifact-broken
(exit 0, but the written file does not reopen), timeout; `skipped` for prune cases whose masks
could not be made (find_groups failed: see the `groups` case of that model).

    python scripts/zoo_sweep.py [--only resnet18,timm_dpn68] [--forms folded,ts] [--seeds 0,1,2]
                                [--jobs 1] [--timeout 600] [--out docs/zoo_sweep] [--resume]

Writes OUT.json (every case, with its stderr tail) and OUT.md (the tables), after every model.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("analyze", "groups", "prune", "compare")
CLASSES = ("pass", "refused", "check-failed", "traceback", "artifact-broken", "timeout", "skipped")

_spec = importlib.util.spec_from_file_location("export_zoo", ROOT / "scripts" / "export_zoo.py")
export_zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_zoo)

MASKS_CODE = r"""
import json, sys
import numpy as np
import morphonnx
from morphonnx.groups import find_groups
from morphonnx.masks import legalize, random_masks

path, out_dir, seeds = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
gr = find_groups(morphonnx.load(path))
for seed in seeds:
    masks = legalize(gr, random_masks(gr, seed))  # as tests/conftest.py::random_masks
    doc = {}
    for s in gr.plan.sources:
        chans = gr.source_channels(s)
        if s.node in doc or all(gr.groups[g].pinned for _, g, _ in chans):
            continue
        doc[s.node] = [int(bool(masks.keep[g][k])) for _, g, k in chans]
    with open(f"{out_dir}/masks{seed}.json", "w") as f:
        json.dump({"masks": doc}, f)
print(len(gr.groups))
"""

REOPEN_CODE = r"""
import sys, onnx, onnxruntime as ort
onnx.checker.check_model(sys.argv[1], full_check=True)
ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
"""


def _run(args: list[str], timeout: float) -> tuple[int | None, str, str, float]:
    """(exit code or None on timeout, stdout, stderr, seconds)."""
    start = time.time()
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return p.returncode, p.stdout, p.stderr, time.time() - start
    except subprocess.TimeoutExpired as e:
        def txt(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        return None, txt(e.stdout), txt(e.stderr), time.time() - start


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def classify(rc: int | None, stderr: str) -> tuple[str, str]:
    """(class, reason) of one command line run."""
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    if rc is None:
        return "timeout", ""
    if "Traceback" in stderr or rc not in (0, 1, 2):
        return "traceback", (lines[-1] if lines else f"exit {rc}")[:300]
    if rc == 2:
        return "refused", (lines[-1] if lines else "")[:300] + ("" if len(lines) == 1 else f" [{len(lines)} stderr lines]")
    if rc == 1:
        return "check-failed", _tail(stderr, 3)[:300]
    return "pass", ""


def sweep_one(name: str, form: str, path: Path, seeds: list[int], timeout: float, work: Path,
              plots: Path | None = None) -> list[dict]:
    """Every case of one model file: analyze, groups, one prune per seed; with `plots`, a compare
    of the original and its first pruned model on three devices, its plot kept in `plots`."""
    py = sys.executable
    cases = []
    for cmd in ("analyze", "groups"):
        rc, _, err, secs = _run([py, "-m", "morphonnx", cmd, str(path)], timeout)
        cls, why = classify(rc, err)
        cases.append({"model": name, "form": form, "command": cmd, "seed": None, "class": cls, "reason": why,
                      "exit": rc, "seconds": round(secs, 1), "stderr_tail": _tail(err) if cls != "pass" else ""})
    d = Path(tempfile.mkdtemp(prefix=f"{name}.{form}.", dir=work))
    try:
        rc, _, err, _ = _run([py, "-c", MASKS_CODE, str(path), str(d), ",".join(map(str, seeds))], timeout)
        for seed in seeds:
            case = {"model": name, "form": form, "command": "prune", "seed": seed, "exit": None, "seconds": 0.0}
            masks = d / f"masks{seed}.json"
            if not masks.exists():
                why = "timeout" if rc is None else (err.strip().splitlines() or ["?"])[-1][:300]
                cases.append({**case, "class": "skipped", "reason": f"masks not made: {why}", "stderr_tail": _tail(err)})
                continue
            out = d / f"pruned{seed}.onnx"
            rc2, _, err2, secs = _run([py, "-m", "morphonnx", "prune", str(path), "--masks", str(masks),
                                       "-o", str(out)], timeout)
            cls, why = classify(rc2, err2)
            if cls == "pass":
                if not out.exists():
                    cls, why = "artifact-broken", "exit 0 but no file written"
                else:
                    rc3, _, err3, _ = _run([py, "-c", REOPEN_CODE, str(out)], timeout)
                    if rc3 != 0:
                        cls = "artifact-broken"
                        why = "reopen timed out" if rc3 is None else (err3.strip().splitlines() or ["?"])[-1][:300]
                        err2 = err3
            cases.append({**case, "class": cls, "reason": why, "exit": rc2, "seconds": round(secs, 1),
                          "stderr_tail": _tail(err2) if cls != "pass" else ""})
            if plots is not None and seed == seeds[0] and cls == "pass":
                plot = plots / f"{name}.{form}.png"
                rc4, _, err4, secs = _run([py, "-m", "morphonnx", "compare", str(path), str(out), "--profile", "p100",
                                           "--profile", "v100", "--profile", "x86-server-cpu", "--plot", str(plot),
                                           "--csv", str(d / "cmp.csv"), "--md", str(d / "cmp.md")], timeout)
                cls4, why4 = classify(rc4, err4)
                cases.append({"model": name, "form": form, "command": "compare", "seed": seed, "class": cls4,
                              "reason": why4, "exit": rc4, "seconds": round(secs, 1),
                              "stderr_tail": _tail(err4) if cls4 != "pass" else ""})
            for f in d.glob("pruned*"):
                f.unlink()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return cases


def _counts(cases: list[dict]) -> dict[str, int]:
    out = {c: 0 for c in CLASSES}
    for c in cases:
        out[c["class"]] += 1
    return out


def _fmt_counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items() if v) or "-"


def report(cases: list[dict], meta: dict) -> tuple[str, dict]:
    """(markdown, summary) of the cases."""
    by_file: dict[tuple[str, str], list[dict]] = {}
    for c in cases:
        by_file.setdefault((c["model"], c["form"]), []).append(c)
    forms = sorted({c["form"] for c in cases})
    ran = [cmd for cmd in COMMANDS if any(c["command"] == cmd for c in cases)]  # compare only with --plots
    per_form = {f: {cmd: _counts([c for c in cases if c["form"] == f and c["command"] == cmd])
                    for cmd in ran} for f in forms}
    totals = {cmd: _counts([c for c in cases if c["command"] == cmd]) for cmd in ran}
    md = ["# Zoo sweep", "",
          f"`python scripts/zoo_sweep.py {meta['argv']}` — {meta['date']}, {meta['seconds']:.0f}s, "
          f"zoo `{meta['zoo']}`, seeds {meta['seeds']}, timeout {meta['timeout']}s.", "",
          "Each case runs the command line in a subprocess: `analyze`, `groups`, and per seed `prune --masks` "
          "with random masks (10–90% kept per unpinned group); a pruned file must reopen "
          "(`onnx.checker.check_model(full_check=True)`, an onnxruntime session) in a fresh process.", "",
          "## Totals per form", "",
          "| form | command | " + " | ".join(CLASSES) + " |", "|---|---|" + "---|" * len(CLASSES)]
    for f in forms:
        for cmd in ran:
            md.append(f"| {f} | {cmd} | " + " | ".join(str(per_form[f][cmd][k]) for k in CLASSES) + " |")
    for cmd in ran:
        md.append(f"| **all** | {cmd} | " + " | ".join(str(totals[cmd][k]) for k in CLASSES) + " |")
    md += ["", "## Per model and form", "", "| model | form | analyze | groups | prune (per seed) | first failure |",
           "|---|---|---|---|---|---|"]
    for (name, form), cs in by_file.items():
        get = {c["command"]: c for c in cs if c["command"] != "prune"}
        prunes = [c for c in cs if c["command"] == "prune"]
        first = next((c for c in cs if c["class"] != "pass"), None)
        why = f"{first['command']}: {first['class']}: {first['reason']}".replace("|", "\\|").replace("\n", " ")[:220] \
            if first else ""
        md.append(f"| {name} | {form} | {get.get('analyze', {}).get('class', '-')} | "
                  f"{get.get('groups', {}).get('class', '-')} | "
                  f"{' '.join(c['class'] for c in prunes)} | {why} |")
    failed = meta.get("export_failed") or {}
    if failed:
        md += ["", "## Forms that failed to export (not swept)", ""]
        md += [f"- {n} {f}: {why}" for n, fs in failed.items() for f, why in fs.items()]
    return "\n".join(md) + "\n", {"per_form": per_form, "totals": totals}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated model names (default: the whole zoo)")
    p.add_argument("--forms", default="", help="comma-separated forms (folded, bn, ts, dynamo, onnx; default all)")
    p.add_argument("--seeds", default="0,1,2", help="mask seeds for prune (default 0,1,2)")
    p.add_argument("--jobs", type=int, default=1, help="model files swept in parallel (default 1)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per command (default 600)")
    p.add_argument("--zoo", type=Path, default=None, help="zoo directory (default: export_zoo's; built if missing)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "zoo_sweep", help="OUT.md and OUT.json to write")
    p.add_argument("--plots", type=Path, default=None,
                   help="also compare each original with its first pruned model on p100, v100 and a server CPU "
                        "(--csv, --md, --plot) and keep the plots in this folder")
    p.add_argument("--resume", action="store_true",
                   help="keep the model files already in OUT.json (same seeds) and sweep the rest")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or export_zoo.ALL_MODELS
    unknown = [n for n in names if n not in export_zoo.ALL_MODELS]
    if unknown:
        p.error(f"unknown model {unknown[0]}")
    forms = [f for f in args.forms.split(",") if f]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    zoo = args.zoo or export_zoo.default_dir()
    manifest = export_zoo.ensure(zoo, names)
    todo = [(n, f, zoo / manifest[n]["files"][f]) for n in names for f in export_zoo.forms(manifest[n])
            if not forms or f in forms]
    meta = {"argv": " ".join(argv if argv is not None else sys.argv[1:]), "zoo": str(zoo), "seeds": seeds,
            "timeout": args.timeout, "date": time.strftime("%Y-%m-%d %H:%M"),
            "export_failed": {n: manifest[n]["export_failed"] for n in names if manifest[n].get("export_failed")}}
    start = time.time()
    cases: list[dict] = []
    if args.resume and args.out.with_suffix(".json").exists():
        old = json.loads(args.out.with_suffix(".json").read_text())
        if old.get("seeds") == seeds:
            cases = [c for c in old["cases"] if c["model"] in names and (not forms or c["form"] in forms)]
            done = {(c["model"], c["form"]) for c in cases}
            todo = [t for t in todo if t[:2] not in done]
            start -= old.get("seconds", 0)
    work = Path(tempfile.mkdtemp(prefix="zoo_sweep."))
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> dict:
        md, summary = report(cases, {**meta, "seconds": time.time() - start})
        args.out.with_suffix(".md").write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps(
            {**meta, "seconds": round(time.time() - start), **summary, "cases": cases}, indent=1))
        return summary

    try:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            if args.plots is not None:
                args.plots.mkdir(parents=True, exist_ok=True)
            for done in pool.map(lambda t: sweep_one(*t, seeds, args.timeout, work, args.plots), todo):
                cases.extend(done)
                c = done[0]
                print(f"{c['model']:40s} {c['form']:7s} {_fmt_counts(_counts(done))}", flush=True)
                save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = save()
    print(f"\n{'form':8s} {'command':8s} " + " ".join(f"{k:>15s}" for k in CLASSES))
    for f, per in summary["per_form"].items():
        for cmd, counts in per.items():
            print(f"{f:8s} {cmd:8s} " + " ".join(f"{counts[k]:15d}" for k in CLASSES))
    for cmd, counts in summary["totals"].items():
        print(f"{'all':8s} {cmd:8s} " + " ".join(f"{counts[k]:15d}" for k in CLASSES))
    print(f"{len(cases)} cases in {time.time() - start:.0f}s; wrote {args.out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
