"""The `morphonnx` command line: one subcommand per step of the flow.

Exit codes: 0 success, 1 a check you asked for failed, 2 bad input (one line on stderr
saying what and where; a traceback only with --debug).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from . import __version__
from .errors import BadInput
from .graph import parse_input_shape
from .io import atomic_write_text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage errors are bad input too: exit 2, one line
        raise BadInput(f"{self.prog}: {message}")


def _add_shape_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=None, help="batch size for symbolic leading dimensions (default 1)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="fix the shape of a graph input (repeatable)")


def _shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    return dict(parse_input_shape(s) for s in args.input_shape)


def cmd_analyze(args: argparse.Namespace) -> int:
    """MACs, FLOPs, parameters, bytes and roofline latency per op and in total."""
    from .report import analyze
    result = analyze(args.model, args.profile, batch=args.batch, input_shapes=_shapes(args))
    if args.json:
        atomic_write_text(args.json, json.dumps(result.to_dict(), indent=1))
    print(result.format_table(top=args.top, per_op=args.per_op))
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    """List the hardware profiles that --profile accepts by name."""
    from .profiles import available_profiles, load_profile
    for key, path in available_profiles().items():
        p = load_profile(path)
        peaks = ", ".join(f"{k} {v:g}" for k, v in p.peak_gflops.items())
        print(f"{key:18s} {p.name}  [GFLOP/s: {peaks}; {p.bandwidth_gbs:g} GB/s]")
    return 0


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
    a.add_argument("--per-op", action="store_true", help="print every op, not only the top ones")
    a.add_argument("--top", type=int, default=10, help="how many of the costliest ops to print (default 10)")
    a.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    a.set_defaults(func=cmd_analyze)

    pr = sub.add_parser("profiles", help="list the bundled hardware profiles")
    pr.set_defaults(func=cmd_profiles)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BadInput as e:
        if debug:
            raise
        print(f"morphonnx: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
