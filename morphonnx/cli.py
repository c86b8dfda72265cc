"""The `morphonnx` command line: one subcommand per step of the flow.

Exit codes: 0 success, 1 a check you asked for failed, 2 bad input (one line on stderr
saying what and where; a traceback only with --debug).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import threading

from typing import Sequence

from . import __version__
from .errors import BadInput
from .output import Outputs
from .tables import SCHEMA_VERSION


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage errors are bad input too: exit 2, one line
        raise BadInput(message if self.prog == "morphonnx" else f"{self.prog.removeprefix('morphonnx ')}: {message}")


def _count(low: int):
    """An argparse type: an integer of at least `low`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value
    return parse


def _top(text: str) -> int | None:
    """An argparse type for --top: a count of rows, or 'all' (None)."""
    if text.lower() == "all":
        return None
    return _count(1)(text)


def _add_table_options(p: argparse.ArgumentParser, what: str = "rows") -> None:
    from .tables import TOP
    p.add_argument("--top", type=_top, default=TOP, metavar="N|all",
                   help=f"how many {what} to print (default {TOP}; 'all' for every one)")
    p.add_argument("--json", metavar="OUT", help="write the full result as JSON (- for stdout)")
    p.add_argument("--csv", metavar="OUT.csv", help="write the tables as CSV, raw numbers in base units (- for "
                   "stdout; a second table goes beside the first as OUT.NAME.csv)")
    p.add_argument("--md", metavar="OUT.md", help="write the tables as Markdown (- for stdout)")


def _claim_tables(out: Outputs, args: argparse.Namespace) -> None:
    """Claim the --json, --csv and --md outputs before any work."""
    for path in (args.json, getattr(args, "csv", None), getattr(args, "md", None)):
        out.claim(path)


def _write_tables(out: Outputs, args: argparse.Namespace, tables, full=None, summary: str = "") -> list[str]:
    """Stage the tables where asked: CSV with every row (`full`: the tables without --top), raw
    numbers; Markdown as printed, under the command's summary lines. Return the files written."""
    from .tables import csv_paths, csv_text, markdown_text
    written, full = [], full or tables
    if getattr(args, "csv", None):
        paths = csv_paths(args.csv, full)
        if paths == [args.csv]:
            out.text(args.csv, csv_text(full))
        else:
            for path, t in zip(paths, full):
                out.text(path, t.csv())
        written += paths
    if getattr(args, "md", None):
        title = f"morphonnx {args.command}: {getattr(args, 'model', '')}".rstrip(": ")
        out.text(args.md, markdown_text(tables, title, summary))
        written.append(args.md)
    return written


def _say(args: argparse.Namespace):
    """print, or print to stderr when stdout carries an output (--json/--csv/--md -)."""
    taken = "-" in (args.json, getattr(args, "csv", None), getattr(args, "md", None))
    return (lambda *a, **k: print(*a, **k, file=sys.stderr)) if taken else print


def _add_shape_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=_count(1), default=None, help="batch size for symbolic leading dimensions (default 1)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="fix the shape of a graph input (repeatable)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE",
                   help="set every symbolic input dimension of this name (sequence_length=128; repeatable)")


def _add_mask_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--masks", metavar="FILE", help='JSON {"masks": {SOURCE: [1, 0, ...]}} (node or weight names)')
    p.add_argument("--threshold", type=float, metavar="T", help="keep channels whose |BN scale| > T")
    p.add_argument("--round", type=_count(1), default=1, metavar="N",
                   help="keep a multiple of N channels in every group (fast kernels want 8 or 16; default 1)")
    p.add_argument("--conv-groups", choices=("equal", "whole"), default="equal",
                   help="grouped convs: revive channels until their conv groups are equal (default), or "
                        "'whole': remove mostly dead conv groups whole (lowers the conv's group count)")


def _shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    from .graph import parse_input_shape
    return dict(parse_input_shape(s) for s in args.input_shape)


def _load_kw(args: argparse.Namespace) -> dict:
    """How the command's models are loaded: --batch, --input-shape, --dim."""
    from .graph import parse_dim
    dims = [parse_dim(s) for s in args.dim]
    twice = sorted({k for k, _ in dims if sum(k == j for j, _ in dims) > 1})
    if twice:
        raise BadInput(f"--dim {twice[0]}: given twice")
    return {"batch": args.batch, "input_shapes": _shapes(args), "dims": dict(dims)}


def cmd_analyze(args: argparse.Namespace) -> int:
    """MACs, FLOPs, parameters, bytes and roofline latency per op and in total."""
    from .report import analyze
    with Outputs([args.model, *args.profile]) as out:
        _claim_tables(out, args)
        result = analyze(args.model, args.profile, **_load_kw(args))
        if args.json:
            out.text(args.json, json.dumps(result.to_dict(), indent=1))
        top = None if args.per_op else args.top
        files = _write_tables(out, args, result.tables(top), result.tables(None), result.summary())
        _say(args)(result.format_table(top=top))
        _finish(out, args.json, *files)
    return 0


def _finish(out: Outputs, *announce: str | None) -> None:
    """Commit the command's outputs, then say which files were written (on stderr when stdout
    carries an output)."""
    out.commit()
    stream = sys.stderr if "-" in announce else sys.stdout
    for path in dict.fromkeys(announce):
        if path and path != "-":
            print(f"wrote {path}", file=stream)


def _groups(args: argparse.Namespace, out: Outputs | None = None):
    from .graph import load
    from .groups import find_groups
    graph = load(args.model, **_load_kw(args))
    if out is not None:
        out.add_inputs(graph.external_files())
    return graph, find_groups(graph)


def cmd_groups(args: argparse.Namespace) -> int:
    """Channel groups: which channels live or die together, what one channel costs, what is pinned."""
    from .groups import add_latency_per_channel, format_groups, groups_summary, groups_table
    from .profiles import load_profile
    with Outputs([args.model, *args.profile]) as out:
        _claim_tables(out, args)
        _, groups = _groups(args, out)
        for name in args.profile:
            add_latency_per_channel(groups, load_profile(name))
        if args.json:
            out.text(args.json, json.dumps({"schema_version": SCHEMA_VERSION, "model": str(args.model),
                                            **groups.to_dict()}, indent=1))
        files = _write_tables(out, args, [groups_table(groups, args.top)], [groups_table(groups, None)],
                              groups_summary(groups))
        _say(args)(format_groups(groups, top=args.top))
        _finish(out, args.json, *files)
    return 0


def _masks(args: argparse.Namespace, groups):
    from .masks import apply_silenced, legalize, masks_from_sources, masks_from_threshold, read_masks_doc
    if (args.masks is None) == (args.threshold is None):
        raise BadInput(f"{args.command}: give exactly one of --masks FILE and --threshold T")
    if args.masks is not None:
        where = f"masks file {args.masks}"
        given, silenced = read_masks_doc(args.masks)
        masks = masks_from_sources(groups, given, where=where)
        apply_silenced(groups, masks, silenced, where=where)
    else:
        masks = masks_from_threshold(groups, args.threshold)
    return legalize(groups, masks, args.round, args.conv_groups)


def cmd_structure(args: argparse.Namespace) -> int:
    """Alive channels per layer after masks and topology morphing (MorphNet's structure export)."""
    from .rewrite import prune
    from .structure import format_structure, structure, structure_summary, structure_table
    with Outputs([args.model, args.masks]) as out:
        _claim_tables(out, args)
        graph, groups = _groups(args, out)
        result = prune(groups, _masks(args, groups))
        doc = {"schema_version": SCHEMA_VERSION, "model": str(args.model), **structure(result),
               "costs": _written_costs(args, graph, result)}
        if args.json:
            out.text(args.json, json.dumps(doc, indent=1))
        files = _write_tables(out, args, [structure_table(doc, args.top)], [structure_table(doc, None)],
                              structure_summary(doc))
        _say(args)(format_structure(doc, top=args.top))
        _finish(out, args.json, *files)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Rewrite the model with masks, fold removed channels' constants, write the pruned model and
    verify that file, reopened from disk, against the oracle."""
    from .masks import masks_document
    from .rewrite import prune, summarize
    from .structure import structure, structure_table
    from .verify import check, dynamic_batch
    with Outputs([args.model, args.masks]) as out:
        out.claim(args.output, stdout=False, companions=[args.output and os.path.basename(args.output) + ".data"])
        _claim_tables(out, args)
        out.claim(args.masks_out)
        graph, groups = _groups(args, out)
        result = prune(groups, _masks(args, groups), workdir=os.path.dirname(os.path.realpath(args.output)),
                       stream=True)
        for w in result.masks.warnings + result.notes:
            print(f"warning: {w}", file=sys.stderr)
        say = _say(args)
        general = _symbolic(args, graph, groups, result) if args.dim else None
        written = summarize(graph, general if general is not None else result.model, result.base_dir,
                            **_load_kw(args))
        summary = _prune_report(graph, groups, result, written, args, say)
        if general is not None:
            model, why = general, None
        else:
            model, why = (result.model, None) if args.batch else dynamic_batch(graph, result.model, result.base_dir)
        if why:
            print(f"warning: {why}", file=sys.stderr)
        staged = out.model(args.output, model, external=bool(graph.external_files()), base_dir=result.base_dir, move=True)
        symbolic, model, general, result.model = general is not None, None, None, None  # written: free it
        code = 0
        if not args.no_check:
            c = check(graph, result.oracle, staged)
            c.file = args.output
            say(c.describe())
            for note in c.notes:
                say(f"  {note}")
            summary["check"] = c.to_dict()
            if c.ok and symbolic:
                result._oracle = None  # its onnxruntime sessions hold every weight: free them first
                import gc
                gc.collect()
                c2, dims2 = _check_elsewhere(args, graph, groups, result, staged)
                say(f"  and at {', '.join(f'{k}={v}' for k, v in dims2.items())}: {c2.describe().split(': ', 2)[-1]}")
                summary["check_at_other_dims"] = {"dims": dims2, **c2.to_dict()}
                c = c2
            if not c.ok:
                print(f"morphonnx: the pruned model fails the equivalence check; {args.output} not written",
                      file=sys.stderr)
                out.discard()  # the model goes; the reports below still tell what happened
                code = 1
        doc = structure(result)
        files = _write_tables(out, args, [structure_table(doc, args.top)], [structure_table(doc, None)])
        if args.masks_out:
            out.text(args.masks_out, json.dumps(masks_document(groups, result.masks), indent=1))
        if args.json:
            out.text(args.json, json.dumps(summary, indent=1))
        _finish(out, *(() if code else (args.output,)), args.json, args.masks_out, *files)
    return code


def _written_costs(args: argparse.Namespace, graph, result) -> dict:
    """summarize() of the model `prune` would write (with its symbolic dims back under --dim)."""
    from .rewrite import summarize
    from .symbolic import generalize
    general = generalize(graph, result.model, result.base_dir)[0] if args.dim else None
    return summarize(graph, general if general is not None else result.model, result.base_dir, **_load_kw(args))


def _symbolic(args: argparse.Namespace, graph, groups, result):
    """The pruned model with the file's symbolic dimensions back (`symbolic.generalize`), or
    None with a warning when it cannot be written so (the model keeps the --dim values)."""
    from .symbolic import generalize
    model, why = generalize(graph, result.model, result.base_dir)
    if model is None:
        print(f"warning: the pruned model keeps the --dim values ({why})", file=sys.stderr)
    return model


def _check_elsewhere(args: argparse.Namespace, graph, groups, result, staged):
    """The written model checked at a second setting of the symbolic dimensions (each + 1)
    against the oracle there (the file loaded at those values, the same masks applied)."""
    from .graph import load
    from .groups import find_groups
    from .masks import apply_silenced, legalize, masks_document, masks_from_sources
    from .oracle import oracle_model
    from .symbolic import second_setting
    from .verify import check
    dims2 = second_setting(graph)
    kw = _load_kw(args)
    kw["dims"] = {k: v for k, v in dims2.items() if k in kw["dims"]}
    graph2 = load(args.model, **kw)
    groups2 = find_groups(graph2)
    doc = masks_document(groups, result.masks)  # the masks as applied: no rewrite needed for the oracle
    masks2 = masks_from_sources(groups2, doc["masks"])
    apply_silenced(groups2, masks2, doc.get("silenced", {}))
    c = check(graph2, oracle_model(groups2, legalize(groups2, masks2)), staged)
    c.file = args.output
    return c, kw["dims"]


def _prune_report(graph, groups, result, costs: dict, args: argparse.Namespace, say) -> dict:
    """Print what the prune did; return it as the `--json` summary (without the check)."""
    from .masks import revived_summary
    from .rewrite import channel_counts
    from .units import count, percent
    ch = channel_counts(groups, result.masks)
    for name, key in (("MACs", "macs"), ("FLOPs", "flops"), ("params", "params")):
        a, b = costs[key]
        folded = costs["folded_constant_values"] if key == "params" else 0
        say(f"{name:8s} {count(a):>9s} -> {count(b):>9s}  ({percent(b, a)})" +
            (f"  incl. {count(folded)} folded constant values (bias maps of removed channels)" if folded else ""))
    say(f"channels {ch[0]:>9d} -> {ch[1]:>9d}  (outputs of Conv/Gemm/MatMul)")
    say(f"nodes    {len(graph.nodes):>9d} -> {len(result.model.graph.node):>9d}")
    changes = revived_summary(result.masks)
    _print_changes(changes, args.verbose, say)
    _print_topology(groups, result, args.verbose, say)
    kinds = {k: list(result.folds.values()).count(k) for k in sorted(set(result.folds.values()))}
    if kinds:
        say("folded constants of removed channels: " + ", ".join(f"{v} into a {k}" for k, v in kinds.items()))
    return {"schema_version": SCHEMA_VERSION, "model": str(args.model), "output": args.output, **costs,
            "channels": list(ch), "nodes": [len(graph.nodes), len(result.model.graph.node)],
            "removed_layers": result.removed_layers(), "folds": result.folds, "masks_changed": changes,
            "warnings": result.masks.warnings + result.notes, "check": None}


def _print_changes(changes: dict, verbose: bool, say=print) -> None:
    """Channels the masks had to change to be legal, in total and per layer."""
    for action in ("revived", "removed"):
        doc = changes[action]
        if not doc["channels"]:
            continue
        why = ", ".join(f"{n} for {r}" for r, n in doc["by_reason"].items())
        say(f"{action} {doc['channels']} channels against the masks ({why})")
        layers = sorted(doc["layers"], key=lambda r: -r["channels"])
        for r in layers[: None if verbose else 5]:
            say(f"  {r['weight'] or r['node'] or 'group ' + str(r['group'])}: {r['channels']} ({r['reason']})")
        if not verbose and len(layers) > 5:
            say(f"  ... {len(layers) - 5} more layers (--verbose)")
    if changes["revived"]["channels"] or changes["removed"]["channels"]:
        say("  (the masks as applied: --masks-out FILE; per layer: --json FILE)")


def _print_topology(groups, result, verbose: bool, say=print) -> None:
    weight = {s.node: s.weight or s.node for s in groups.plan.sources if s.kind == "weight"}
    layers = [weight[n] for n in result.removed_layers() if n in weight]
    if layers:
        shown = layers if verbose else layers[:8]
        say(f"removed {len(layers)} layers: " + ", ".join(shown) + (" ..." if len(shown) < len(layers) else ""))
    if result.dropped:
        say(f"removed {len(result.dropped)} concat inputs (towers, dense layers): " +
              ", ".join(f"{t} from {n}" for n, t in result.dropped[: None if verbose else 6]) +
              (" ..." if not verbose and len(result.dropped) > 6 else ""))
    if result.morphed:
        say(f"{len(result.morphed)} dead branches became constants:")
        for line in result.morphed[: None if verbose else 6]:
            say(f"  {line}")
        if not verbose and len(result.morphed) > 6:
            say(f"  ... {len(result.morphed) - 6} more (--verbose)")


def cmd_compare(args: argparse.Namespace) -> int:
    """Per-op and per-layer latency of one or more models on several device profiles."""
    from .compare import compare
    if not args.profile:
        raise BadInput("compare: give at least one --profile")
    if args.at and (len(args.models) != 1 or len(args.at) < 2):
        raise BadInput("compare --at: give one model and two or more settings (--at prefill:sequence_length=128 "
                       "--at decode:sequence_length=1,past_sequence_length=127)")
    suffix = os.path.splitext(args.plot or "")[1].lower()
    if args.plot and suffix not in (".png", ".svg", ".pdf"):
        raise BadInput(f"--plot {args.plot}: give a .png, .svg or .pdf file name")
    with Outputs([*args.models, *args.profile]) as out:
        _claim_tables(out, args)
        out.claim(args.plot, stdout=False)
        result = compare(args.models, args.profile, at=[_parse_at(a) for a in args.at], **_load_kw(args))
        if args.json:
            out.text(args.json, json.dumps(result.to_dict(), indent=1))
        if args.plot:
            out.file(args.plot, result.plot, suffix)
        files = _write_tables(out, args, result.tables(args.top), result.tables(None), result.summary())
        _say(args)(result.format_table(top=args.top))
        _finish(out, args.json, args.plot, *files)
    return 0


def _parse_at(spec: str) -> tuple[str, dict[str, int]]:
    """`prefill:sequence_length=2048,past_sequence_length=0` → ("prefill", {...})."""
    from .graph import parse_dim
    label, sep, rest = spec.partition(":")
    if not sep or not label.strip() or not rest.strip():
        raise BadInput(f"--at '{spec}': expected LABEL:NAME=VALUE,NAME=VALUE")
    return label.strip(), dict(parse_dim(p) for p in rest.split(",") if p.strip())


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure this machine with onnxruntime and write a profile YAML."""
    from .calibrate import calibrate, fit_on_models, progress_printer
    from .profiles import load_profile
    say = progress_printer()
    if args.kernels and args.fit:
        raise BadInput("calibrate: --kernels and --fit are two latency models; give one")
    with Outputs(args.fit) as out:
        out.claim(args.out, stdout=False)
        if args.fit:  # bad --fit models are refused before measuring
            from .graph import load
            for model in args.fit:
                out.add_inputs(load(model).external_files())
        profile = calibrate(quick=args.quick, progress=say, threads=args.threads)
        if args.kernels:
            from .microbench import calibrate_kernels
            profile, _ = calibrate_kernels(profile, quick=args.quick, progress=say)
        if args.fit:
            profile = fit_on_models(profile, args.fit, args.variants, progress=say)
        staged = out.text(args.out, profile.to_yaml())
        checked = load_profile(staged) if staged is not None else profile
        print(f"peak {checked.peak_gflops['fp32']:g} GFLOP/s fp32, bandwidth {checked.bandwidth_gbs:g} GB/s, "
              f"{checked.op_overhead_us:g} us per op, {checked.run_overhead_us:g} us per run")
        if checked.efficiency:
            print("fitted efficiency: " + ", ".join(f"{k} {v:g}" for k, v in checked.efficiency.items()))
        if checked.kernels:
            print(f"kernel model: {len(checked.kernels)} classes; {checked.sources['kernels'].split(': ', 1)[1]}")
        out.commit()
    print(f"wrote {args.out} (use it with --profile {args.out})")
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    """Grow the (shrunk) structure by one width multiplier until the budget is reached."""
    if args.structure is not None:
        if args.masks is not None:
            raise BadInput("expand: give one of --masks, --structure and --threshold")
        args.masks = args.structure
    with Outputs([args.model, args.masks, args.profile]) as out:
        _claim_tables(out, args)
        out.claim(args.output, stdout=False, companions=[args.output and os.path.basename(args.output) + ".data"])
        return _expand(args, out)


def _expand(args: argparse.Namespace, out: Outputs) -> int:
    from . import units
    from .expand import expand_structure
    from .profiles import load_profile
    from .verify import check_runs, dynamic_batch
    graph, groups = _groups(args, out)
    masks = _masks(args, groups)
    profile = load_profile(args.profile) if args.profile else None
    if args.resource == "latency" and profile is None:
        raise BadInput("expand: --resource latency needs --profile")
    workdir = os.path.dirname(os.path.realpath(args.output)) if args.output else None
    e, grower, doc = expand_structure(graph, groups, masks, args.resource, args.budget, profile, args.round_to,
                                      need_model=bool(args.output), workdir=workdir,
                                      stream=True if args.output else None)
    fmt = lambda v: units.resource(v, args.resource)
    how = "of the grown model, as analyze counts it" if e.measured else \
        f"estimated: the grown model cannot be built ({grower.reason})"
    say = _say(args)
    lines = [f"original {fmt(doc['original_cost'])}; shrunk structure {fmt(doc['shrunk_cost'])}; budget {fmt(e.budget)}",
             f"width multiplier {e.multiplier:.4f}: {fmt(e.cost)} ({units.percent(e.cost, e.budget)} of the budget; {how})"]
    if e.next_cost is not None and e.cost < 0.95 * e.budget:
        lines.append(f"note: one multiplier lands no closer: the next larger widths (steps of --round-to and of conv "
                     f"group counts) cost {fmt(e.next_cost)}, over the budget")
    if doc["fixed_cost_estimate"] > 0.5 * e.budget:
        lines.append(f"note: about {fmt(doc['fixed_cost_estimate'])} of the budget does not scale with the widths "
                     f"(pinned channels, per-op and per-run overheads)")
    say = _say(args)
    say("\n".join(lines))
    doc = {"schema_version": SCHEMA_VERSION, "model": str(args.model), **doc}
    table = _expand_table(doc, args.top)
    say()
    say(table.text())
    files = _write_tables(out, args, [table], [_expand_table(doc, None)], "\n".join(lines))
    if args.json:
        out.text(args.json, json.dumps(doc, indent=1))
    if args.output:
        grown = grower.model(e.widths)
        if args.dim:
            from .symbolic import generalize
            general, why = generalize(graph, grown, grower.base_dir)
            model, why = (general, None) if general is not None else \
                (grown, f"the expanded model keeps the --dim values ({why})")
        else:
            model, why = (grown, None) if args.batch else dynamic_batch(graph, grown, grower.base_dir)
        if why:
            print(f"warning: {why}", file=sys.stderr)
        staged = out.model(args.output, model, external=bool(graph.external_files()), base_dir=grower.base_dir,
                           move=True)
        c = check_runs(graph, staged)
        c.file = args.output
        say(c.describe())
        if not c.ok:
            print(f"morphonnx: the expanded model does not pass; {args.output} not written", file=sys.stderr)
            return 1
    _finish(out, args.json, *files)
    if args.output:
        say(f"wrote {args.output} (kept channels carry their weights, new ones are freshly initialized)")
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    """List the hardware profiles that --profile accepts by name."""
    from .profiles import available_profiles, load_profile
    from .tables import Column, Table
    cols = [Column("profile"), Column("name"), Column("kind"), Column("fp32 FLOP/s", "count", "peak_flops_fp32"),
            Column("fp16 FLOP/s", "count", "peak_flops_fp16"), Column("bandwidth B/s", "count", "bandwidth_bytes_per_s"),
            Column("per op", "seconds", "op_overhead_s"), Column("per run", "seconds", "run_overhead_s")]
    rows = []
    for key, path in available_profiles().items():
        p = load_profile(path)
        rows.append([key, p.name, p.kind or "-", p.peak_gflops["fp32"] * 1e9,
                     p.peak_gflops["fp16"] * 1e9 if "fp16" in p.peak_gflops else None, p.bandwidth_gbs * 1e9,
                     p.op_overhead_us * 1e-6, p.run_overhead_us * 1e-6])
    shown = rows if args.top is None else rows[:args.top]
    more = len(rows) - len(shown)
    table = Table("profiles", f"{len(rows)} hardware profiles (--profile NAME)", cols, shown,
                  f"... {more} more profiles (--top all)" if more else "")
    with Outputs([]) as out:
        _claim_tables(out, args)
        if args.json:
            out.text(args.json, json.dumps({"schema_version": SCHEMA_VERSION, "profiles": [
                dict(zip([c.key for c in cols], r)) for r in rows]}, indent=1))
        files = _write_tables(out, args, [table], [Table("profiles", table.title, cols, rows)])
        _say(args)(table.text())
        _finish(out, args.json, *files)
    return 0


def _expand_table(doc: dict, top: int | None):
    """Per source (widest first): output channels of the original, the shrunk and the expanded model."""
    from .tables import Column, Table
    rows = sorted(doc["sources"], key=lambda r: -r["original"])
    shown = rows if top is None else rows[:top]
    cols = [Column("layer"), Column("original", "int"), Column("shrunk", "int"), Column("expanded", "int"),
            Column("expanded/original", "percent", "expanded_percent")]
    body = [[r["weight"] or r["node"], r["original"], r["shrunk"], r["expanded"],
             100 * r["expanded"] / r["original"] if r["original"] else None] for r in shown]
    more = len(rows) - len(shown)
    title = f"{'all' if not more else f'top {len(shown)} of'} {len(rows)} layers by original width"
    return Table("layers", title, cols, body, f"... {more} more layers (--top all)" if more else "")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand."""
    p = _Parser(prog="morphonnx", description="MorphNet for every framework, through ONNX.")
    p.add_argument("--version", action="version", version=f"morphonnx {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    a = sub.add_parser("analyze", help="cost analysis per op and per device")
    a.add_argument("model", help="ONNX model file")
    a.add_argument("--profile", action="append", default=[], metavar="NAME|FILE.yaml",
                   help="hardware profile for roofline latency (repeatable; see `morphonnx profiles`)")
    _add_shape_options(a)
    a.add_argument("--per-op", action="store_true", help="print every op (same as --top all)")
    _add_table_options(a, "of the costliest ops")
    a.set_defaults(func=cmd_analyze)

    g = sub.add_parser("groups", help="channel groups, their costs and pins")
    g.add_argument("model", help="ONNX model file")
    _add_shape_options(g)
    g.add_argument("--profile", action="append", default=[], metavar="NAME|FILE.yaml",
                   help="add the roofline latency of one channel on this device (repeatable)")
    _add_table_options(g, "groups")
    g.set_defaults(func=cmd_groups)

    p_ = sub.add_parser("prune", help="rewrite the model with channel masks and verify it")
    p_.add_argument("model", help="ONNX model file")
    p_.add_argument("-o", "--output", required=True, help="pruned ONNX model to write")
    _add_mask_options(p_)
    p_.add_argument("--no-check", action="store_true", help="skip the checker and the equivalence check")
    _add_table_options(p_, "layers")
    p_.add_argument("--masks-out", metavar="FILE", help="write the masks actually applied (after equal conv groups, "
                    "--round, and channels kept since not foldable) as a masks file for --masks")
    p_.add_argument("--verbose", action="store_true", help="list every removed layer and branch")
    _add_shape_options(p_)
    p_.set_defaults(func=cmd_prune)

    st = sub.add_parser("structure", help="alive channels per layer (MorphNet's structure export)")
    st.add_argument("model", help="ONNX model file")
    _add_mask_options(st)
    _add_shape_options(st)
    _add_table_options(st, "layers")
    st.set_defaults(func=cmd_structure)

    c = sub.add_parser("compare", help="latency per op and layer on several devices; speedup of a pruned model")
    c.add_argument("models", nargs="+", help="ONNX model files; the first is the reference (the original)")
    c.add_argument("--profile", action="append", default=[], metavar="NAME|FILE.yaml", help="repeatable")
    _add_shape_options(c)
    _add_table_options(c, "ops and layers")
    c.add_argument("--plot", metavar="OUT.png", help="latency per device (stacked by op type) and width per layer "
                   "(.png, .svg or .pdf)")
    c.add_argument("--at", action="append", default=[], metavar="LABEL:NAME=VALUE,...",
                   help="compare one model at several settings of its symbolic dimensions, side by side "
                        "(prefill:sequence_length=2048 --at decode:sequence_length=1,past_sequence_length=2047)")
    c.set_defaults(func=cmd_compare)

    cal = sub.add_parser("calibrate", help="measure this machine and write a profile YAML")
    cal.add_argument("--out", default="my-machine.yaml", help="profile to write (default my-machine.yaml)")
    cal.add_argument("--quick", action="store_true", help="smaller, fewer measurements (seconds)")
    cal.add_argument("--kernels", action="store_true",
                     help="fit a latency model per runtime kernel class on microbenchmarks (minutes; --quick: fewer)")
    cal.add_argument("--fit", action="append", default=[], metavar="MODEL",
                     help="also fit per-op-class efficiency and overheads on random-width variants of this model "
                          "(repeatable)")
    cal.add_argument("--variants", type=_count(5), default=12, help="variants per --fit model (default 12)")
    cal.add_argument("--threads", type=_count(0), default=0,
                     help="onnxruntime intra-op threads to measure with, the setting the profile predicts "
                          "(default 0: onnxruntime's default, one per core)")
    cal.set_defaults(func=cmd_calibrate)

    ex = sub.add_parser("expand", help="grow the structure by one width multiplier up to a budget")
    ex.add_argument("model", help="ONNX model file")
    _add_mask_options(ex)
    ex.add_argument("--structure", metavar="FILE", help="a structure (or masks) JSON from `morphonnx structure`")
    ex.add_argument("--budget", required=True, help="'original', a percentage (80%%) or an absolute number")
    ex.add_argument("--resource", choices=("macs", "flops", "size", "latency"), default="macs")
    ex.add_argument("--profile", metavar="NAME|FILE.yaml", help="device for --resource latency")
    ex.add_argument("--round-to", type=_count(1), default=1, metavar="N", help="widths in multiples of N (default 1)")
    _add_shape_options(ex)
    _add_table_options(ex, "layers")
    ex.add_argument("-o", "--output", metavar="OUT.onnx", help="also write the expanded ONNX model")
    ex.set_defaults(func=cmd_expand)

    pr = sub.add_parser("profiles", help="list the bundled hardware profiles")
    _add_table_options(pr, "profiles")
    pr.set_defaults(func=cmd_profiles)
    return p


def _exit_on_sigterm() -> None:
    """SIGTERM (timeout, a scheduler, docker stop) unwinds like Ctrl-C: staged outputs and the
    temporary folders of streamed weights are removed."""
    import signal

    def stop(*_) -> None:
        raise Terminated()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


class Terminated(KeyboardInterrupt):
    """SIGTERM received."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _exit_on_sigterm()
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BadInput as e:
        if debug:
            raise
        print(f"morphonnx: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `morphonnx ... | head`
        sys.stdout = None
        return 0
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or debug:
            raise
        print(f"morphonnx: error: {e.filename or 'output'}: {os.strerror(e.errno)}; nothing was written",
              file=sys.stderr)
        return 2
    except Exception as e:  # a bug of ours: one line and exit 3 (--debug shows the traceback)
        if debug:
            raise
        where = e.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        at = f" at {os.path.basename(where.tb_frame.f_code.co_filename)}:{where.tb_lineno}" if where else ""
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"morphonnx: internal error: {type(e).__name__}{': ' + text if text else ''}{at} "
              f"(please report it; --debug shows the traceback)", file=sys.stderr)
        return 3
