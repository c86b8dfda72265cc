"""A corpus of bad input, for every command and the Python API (issue 13).

Every CLI case: exit 2, exactly one stderr line `morphonnx: error: ...` naming the problem, no
new file anywhere in the test's folder (outputs are staged and must vanish), and every input
byte-identical afterwards. Every API case: `morphonnx.BadInput` with the same kind of one-line
message, nothing else (no networkx/numpy/onnxruntime/KeyError/ValueError exception).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

import morphonnx
from morphonnx import BadInput, available_profiles
from morphonnx.cli import main

from conftest import SMALL_CNN, Net, init, model, tensor


# ---- helpers ----------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root` (hidden ones too): a file's hash, or its kind."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(folder, d), root)] = "dir"
        for f in files:
            p = os.path.join(folder, f)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
            else:
                out[os.path.relpath(p, root)] = f"mode {st.st_mode:o}"
    return out


def small(tmp: Path, name: str = "m.onnx") -> str:
    """A private copy of the small CNN (input 'input' [batch, 3, 32, 32]; sources stem.conv ...)."""
    dst = tmp / name
    if not dst.exists():
        shutil.copyfile(SMALL_CNN, dst)
    return str(dst)


def put(path: Path, data: bytes | str) -> None:
    """Write a file; None, so that builders can chain with `or`."""
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def save(tmp: Path, name: str, m: onnx.ModelProto) -> str:
    (tmp / name).write_bytes(m.SerializeToString())
    return str(tmp / name)


def relu(**kw) -> onnx.ModelProto:
    return model([helper.make_node("Relu", ["x"], ["y"], name="r")], [tensor("x", [1, 4])], [tensor("y", [1, 4])], **kw)


def fixed_batch_cnn() -> onnx.ModelProto:
    n = Net(channels=4, size=8)
    return n.model(n.cbr(n.input.name, 4, 8))


def pinned_only() -> onnx.ModelProto:
    """One conv whose output is the graph output: its only group is pinned, nothing can shrink."""
    n = Net(channels=4, size=8)
    return n.model(n.conv(n.input.name, 4, 8, name="only"))


def external(tmp: Path, name: str, location: str | None = None, data: bytes | None = None, sub: str = "") -> str:
    """A model whose 64x64 initializer 'w' lives in external data at `location` (default beside it)."""
    folder = tmp / sub if sub else tmp
    folder.mkdir(exist_ok=True)
    w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    raw = w.tobytes() if data is None else data
    location = location or f"{name}.data"
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64, 64])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(64 * 64 * 4))):
        e = t.external_data.add()
        e.key, e.value = k, v
    m = model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [tensor("x", [64, 64])],
              [tensor("y", [64, 64])], [t])
    target = Path(location) if os.path.isabs(location) else folder / location
    target.write_bytes(raw)
    return save(folder, name, m)


def masks_file(tmp: Path, doc, name: str = "masks.json") -> str:
    p = tmp / name
    if isinstance(doc, bytes):
        p.write_bytes(doc)
    elif isinstance(doc, str):
        p.write_text(doc)
    else:
        p.write_text(json.dumps(doc))
    return str(p)


def profile_file(tmp: Path, name: str = "bad.yaml", drop: tuple[str, ...] = (), **override) -> str:
    data = yaml.safe_load(available_profiles()["v100"].read_text())
    data.update(override)
    for key in drop:
        data.pop(key)
    (tmp / name).write_text(yaml.safe_dump(data))
    return str(tmp / name)


def ones(n: int = 16) -> list[int]:
    return [1, 0] * (n // 2)


# ---- the CLI corpus: name -> builder(tmp) -> (argv, a part of the message) ----------------------

CLI = {}


def cli(name: str):
    def register(f):
        assert name not in CLI, name
        CLI[name] = f
        return f
    return register


def structure_masks(tmp: Path, doc) -> list[str]:
    return ["structure", small(tmp), "--masks", masks_file(tmp, doc), "--json", str(tmp / "s.json")]


def prune_masks(tmp: Path, doc) -> list[str]:
    return ["prune", small(tmp), "-o", str(tmp / "p.onnx"), "--masks", masks_file(tmp, doc),
            "--json", str(tmp / "p.json"), "--masks-out", str(tmp / "applied.json")]


# -- model files
cli("model missing")(lambda t: (["analyze", str(t / "nope.onnx")], "nope.onnx: no such file"))
cli("model empty")(lambda t: (put(t / "e.onnx", b"") or ["groups", str(t / "e.onnx")], "e.onnx: not an ONNX"))
cli("model truncated")(lambda t: (put(t / "cut.onnx", SMALL_CNN.read_bytes()[:3000])
                                  or ["analyze", str(t / "cut.onnx"), "--json", str(t / "a.json")],
                                  "cut.onnx: not a valid ONNX model"))
cli("model is text")(lambda t: (put(t / "t.onnx", "not a model\n") or ["structure", str(t / "t.onnx"),
                                "--threshold", "0.5"], "t.onnx: not"))
cli("model is a directory")(lambda t: ((t / "d.onnx").mkdir() or ["prune", str(t / "d.onnx"), "-o", str(t / "p.onnx"),
                                       "--threshold", "0.5"], "d.onnx: not a file"))
cli("model is a json file")(lambda t: (put(t / "j.onnx", '{"graph": 1}') or
                                       ["expand", str(t / "j.onnx"), "--threshold", "0", "--budget", "original"],
                                       "j.onnx: not"))
cli("compare second model missing")(lambda t: (["compare", small(t), str(t / "gone.onnx"), "--profile", "v100",
                                                "--json", str(t / "c.json")], "gone.onnx: no such file"))

# -- graph structure and versions
cli("duplicate producer")(lambda t: (["analyze", save(t, "dup.onnx", model(
    [helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Sigmoid", ["x"], ["y"], name="b")],
    [tensor("x", [1, 4])], [tensor("y", [1, 4])]))], "tensor 'y' is produced twice (by a and b)"))
cli("cycle")(lambda t: (["groups", save(t, "cyc.onnx", model(
    [helper.make_node("Add", ["x", "c"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["c"], name="relu")],
    [tensor("x", [1, 4])], [tensor("c", [1, 4])]))], "cycle through node"))
cli("input nobody produces")(lambda t: (["analyze", save(t, "orphan.onnx", model(
    [helper.make_node("Add", ["x", "ghost"], ["y"], name="add")], [tensor("x", [1, 4])], [tensor("y", [1, 4])]))],
    "input 'ghost' of node add (Add) is neither"))
cli("unproduced graph output")(lambda t: (["analyze", save(t, "out.onnx", model(
    [helper.make_node("Relu", ["x"], ["y"], name="r")], [tensor("x", [1, 4])], [tensor("z", [1, 4])]))],
    "graph output 'z' is produced by no node"))
cli("ir_version 99")(lambda t: (["analyze", save(t, "ir.onnx", (lambda m: setattr(m, "ir_version", 99) or m)(relu()))],
                                "IR version 99 is newer"))
cli("opset 7")(lambda t: (["groups", save(t, "old.onnx", relu(opset=7))], "opset 7 is older"))
cli("opset newer than onnx")(lambda t: (["analyze", save(t, "new.onnx", relu(opset=onnx.defs.onnx_opset_version() + 5))],
                                        f"opset {onnx.defs.onnx_opset_version() + 5} is newer"))
cli("zero-sized input dimension")(lambda t: (["analyze", save(t, "zero.onnx", model(
    [helper.make_node("Relu", ["x"], ["y"], name="r")], [tensor("x", [0, 4])], [tensor("y", [0, 4])]))],
    "dimension 0 of input 'x' is 0"))

# -- external data
cli("external data missing")(lambda t: ((lambda p: (t / "ext.onnx.data").unlink() or ["analyze", p])(
    external(t, "ext.onnx")), "ext.onnx.data' of initializer 'w' is missing"))
cli("external data short")(lambda t: (["analyze", external(t, "short.onnx", data=b"\0" * 100)],
                                      "is shorter than initializer 'w' needs"))
cli("external data outside the folder")(lambda t: (["analyze", external(t, "m.onnx", "../outside.bin", sub="sub")],
                                                   "external data '../outside.bin' of initializer 'w' lies outside"))
cli("external data absolute path")(lambda t: (["groups", external(t, "abs.onnx", str(t / "abs.bin"), sub="sub")],
                                              "of initializer 'w' lies outside"))

# -- shapes
cli("--batch 0")(lambda t: (["analyze", small(t), "--batch", "0"], "argument --batch: 0 is below 1"))
cli("--batch -1")(lambda t: (["groups", small(t), "--batch", "-1"], "argument --batch: -1 is below 1"))
cli("--batch huge")(lambda t: (["analyze", small(t), "--batch", str(2**40)], f"--batch: {2**40} is not a size"))
cli("--batch non-integer")(lambda t: (["analyze", small(t), "--batch", "2.5"], "argument --batch: '2.5' is not an integer"))
cli("--batch on a fixed-batch model")(lambda t: (["analyze", save(t, "fixed.onnx", fixed_batch_cnn()), "--batch", "4"],
                                                 "--batch 4: input 'x' has a fixed batch of 1"))
cli("--input-shape malformed")(lambda t: (["analyze", small(t), "--input-shape", "input:1,3"], "--input-shape 'input:1,3'"))
cli("--input-shape no name")(lambda t: (["analyze", small(t), "--input-shape", "=1,3,32,32"], "--input-shape '=1,3,32,32'"))
cli("--input-shape unknown input")(lambda t: (["analyze", small(t), "--input-shape", "image=1,3,32,32"],
                                              "--input-shape names 'image', which is not a graph input"))
cli("--input-shape wrong rank")(lambda t: (["groups", small(t), "--input-shape", "input=1,3,32"],
                                           "--input-shape input: rank 3 but the model's input has rank 4"))
cli("--input-shape zero")(lambda t: (["analyze", small(t), "--input-shape", "input=1,3,0,32"], "--input-shape 'input=1,3,0,32'"))
cli("--input-shape huge")(lambda t: (["analyze", small(t), "--input-shape", f"input=1,3,{2**40},32"], "--input-shape 'input=1,3,"))

# -- masks files
cli("masks missing")(lambda t: (["structure", small(t), "--masks", str(t / "none.json")], "none.json: no such file"))
cli("masks directory")(lambda t: ((t / "md").mkdir() or ["structure", small(t), "--masks", str(t / "md")], "md: is a directory"))
cli("masks binary")(lambda t: (structure_masks(t, b"\x89PNG\r\n\x1a\n\x00\xff\xfe"), "masks.json: not UTF-8"))
cli("masks not UTF-8")(lambda t: (prune_masks(t, '{"masks": {"café": [1]}}'.encode("latin-1")), "masks.json: not UTF-8"))
cli("masks empty")(lambda t: (structure_masks(t, ""), "masks.json: not valid JSON"))
cli("masks true")(lambda t: (structure_masks(t, {"masks": {"stem.conv": [True] * 16}}), "'stem.conv' must be a list of 0/1"))
cli("masks NaN")(lambda t: (prune_masks(t, '{"masks": {"stem.conv": [NaN' + ", 1" * 15 + "]}}"), "NaN is not a number"))
cli("masks Infinity")(lambda t: (structure_masks(t, '{"masks": {"stem.conv": [Infinity' + ", 1" * 15 + "]}}"),
                                 "Infinity is not a number"))
cli("masks 1e999")(lambda t: (structure_masks(t, '{"masks": {"stem.conv": [1e999' + ", 1" * 15 + "]}}"),
                              "'stem.conv' must be a list of 0/1"))
cli("masks strings")(lambda t: (structure_masks(t, {"masks": {"stem.conv": ["1"] * 16}}), "'stem.conv' must be a list of 0/1"))
cli("masks a string")(lambda t: (prune_masks(t, {"masks": {"stem.conv": "1" * 16}}), "'stem.conv' must be a list of 0/1"))
cli("masks nested 100000 deep")(lambda t: (structure_masks(t, '{"masks": {"stem.conv": ' + "[" * 100_000 + "]" * 100_000 + "}}"),
                                           "masks.json: nested too deeply"))
cli("masks wrong length")(lambda t: (prune_masks(t, {"masks": {"stem.conv": [1, 0, 1]}}),
                                     "'stem.conv' has 3 values, but stem.conv has 16 output channels"))
cli("masks unknown source")(lambda t: (structure_masks(t, {"masks": {"stem.convv": ones()}}), "'stem.convv' is not a source"))
cli("masks a list")(lambda t: (structure_masks(t, [1, 0]), "masks.json: expected an object"))
cli("masks without 'masks'")(lambda t: (structure_masks(t, {"mask": {"stem.conv": ones()}}), "masks.json: expected an object"))
cli("masks cut every path")(lambda t: (prune_masks(t, {"masks": {"stem.conv": [0] * 16}}), "cut every path"))
cli("silenced NaN")(lambda t: (structure_masks(t, '{"masks": {}, "silenced": {"stem.conv": [NaN' + ", 0" * 15 + "]}}"),
                               "NaN is not a number"))
cli("silenced inf")(lambda t: (structure_masks(t, '{"masks": {}, "silenced": {"stem.conv": [1e999' + ", 0" * 15 + "]}}"),
                               "silenced 'stem.conv' must be 16 finite numbers"))
cli("silenced wrong length")(lambda t: (prune_masks(t, {"masks": {}, "silenced": {"stem.conv": [0.5] * 3}}),
                                        "silenced 'stem.conv' must be 16 finite numbers"))
cli("silenced unknown source")(lambda t: (structure_masks(t, {"masks": {}, "silenced": {"stem.bn": [0.0] * 16}}),
                                          "silenced 'stem.bn' is not a Conv/Gemm/MatMul source"))
cli("silenced not a mapping")(lambda t: (structure_masks(t, {"masks": {}, "silenced": [1]}), "'silenced' must map"))
cli("masks and threshold")(lambda t: (["structure", small(t), "--masks", masks_file(t, {"masks": {}}), "--threshold", "0.1"],
                                      "give exactly one of --masks FILE and --threshold T"))
cli("threshold negative")(lambda t: (["structure", small(t), "--threshold", "-1"], "--threshold -1.0: must be a non-negative"))
cli("threshold nan")(lambda t: (["prune", small(t), "-o", str(t / "p.onnx"), "--threshold", "nan"], "--threshold nan"))

# -- profiles
cli("profile unknown name")(lambda t: (["analyze", small(t), "--profile", "v1000"], "unknown profile 'v1000'"))
cli("profile missing name")(lambda t: (["analyze", small(t), "--profile", profile_file(t, drop=("name",))],
                                       "bad.yaml: field 'name' is missing"))
cli("profile missing sources")(lambda t: (["groups", small(t), "--profile", profile_file(t, drop=("sources",))],
                                          "bad.yaml: field 'sources' is missing"))
cli("profile missing fp32")(lambda t: (["analyze", small(t), "--profile", profile_file(t, peak_gflops={"fp16": 100})],
                                       "bad.yaml: field 'peak_gflops.fp32' is missing"))
cli("profile negative bandwidth")(lambda t: (["analyze", small(t), "--profile", profile_file(t, bandwidth_gbs=-900)],
                                             "field 'bandwidth_gbs' must be a positive number, got -900"))
cli("profile zero peak")(lambda t: (["analyze", small(t), "--profile", profile_file(t, peak_gflops={"fp32": 0})],
                                    "field 'peak_gflops.fp32' must be a positive number, got 0"))
cli("profile NaN bandwidth")(lambda t: (["compare", small(t), "--profile", profile_file(t, bandwidth_gbs=float("nan"))],
                                        "field 'bandwidth_gbs' must be a positive number, got nan"))
cli("profile string number")(lambda t: (["analyze", small(t), "--profile", profile_file(t, bandwidth_gbs="900 GB/s")],
                                        "field 'bandwidth_gbs' must be a positive number, got '900 GB/s'"))
cli("profile negative overhead")(lambda t: (["analyze", small(t), "--profile", profile_file(t, op_overhead_us=-3)],
                                            "field 'op_overhead_us' must be a positive number"))
cli("profile zero efficiency")(lambda t: (["analyze", small(t), "--profile", profile_file(t, efficiency={"Conv": 0})],
                                          "field 'efficiency.Conv' must be a positive number, got 0"))
cli("profile channel_block string")(lambda t: (["groups", small(t), "--profile", profile_file(t, channel_block="16")],
                                               "field 'channel_block' must be a positive integer"))
cli("profile unknown field")(lambda t: (["analyze", small(t), "--profile", profile_file(t, peak_tflops=15)],
                                        "unknown field 'peak_tflops'"))
cli("profile binary")(lambda t: (put(t / "bin.yaml", b"\x00\xff\xfe\x80" * 8) or
                                 ["analyze", small(t), "--profile", str(t / "bin.yaml")], "bin.yaml: not UTF-8"))
cli("profile directory")(lambda t: ((t / "dir.yaml").mkdir() or ["analyze", small(t), "--profile", str(t / "dir.yaml")],
                                    "dir.yaml: is a directory"))
cli("profile is a list")(lambda t: (put(t / "list.yaml", "- 1\n- 2\n") or
                                    ["analyze", small(t), "--profile", str(t / "list.yaml")],
                                    "list.yaml: expected a mapping of fields, got list"))
cli("profile empty")(lambda t: (put(t / "empty.yaml", "") or
                                ["analyze", small(t), "--profile", str(t / "empty.yaml")], "empty.yaml: expected a mapping"))
cli("profile bad YAML")(lambda t: (put(t / "syn.yaml", "name: [unclosed\n") or
                                   ["analyze", small(t), "--profile", str(t / "syn.yaml")], "syn.yaml: line"))

# -- outputs
cli("output is a directory")(lambda t: ((t / "od").mkdir() or ["analyze", small(t), "--json", str(t / "od")],
                                        "od: is a directory"))
cli("output folder missing")(lambda t: (["groups", small(t), "--json", str(t / "no" / "g.json")], "does not exist"))
cli("output parent is a file")(lambda t: (put(t / "plain", "x") or
                                          ["prune", small(t), "--threshold", "0.5", "-o", str(t / "plain" / "p.onnx")],
                                          "plain is not a folder"))
cli("output is the model")(lambda t: (["prune", small(t), "--threshold", "0.5", "-o", small(t)], "is an input of this command"))
cli("json output is the model")(lambda t: (["analyze", small(t), "--json", small(t)], "is an input of this command"))
cli("output is the external data")(lambda t: (["analyze", external(t, "ext.onnx"), "--json", str(t / "ext.onnx.data")],
                                              "ext.onnx.data: is an input of this command"))
cli("output is the masks file")(lambda t: (["structure", small(t), "--masks", masks_file(t, {"masks": {}}),
                                            "--json", str(t / "masks.json")], "masks.json: is an input"))
cli("masks-out is the masks file")(lambda t: (["prune", small(t), "-o", str(t / "p.onnx"), "--masks",
                                               masks_file(t, {"masks": {}}), "--masks-out", str(t / "masks.json")],
                                              "masks.json: is an input"))
cli("output is the profile")(lambda t: (["analyze", small(t), "--profile", profile_file(t, "mine.yaml"),
                                         "--json", str(t / "mine.yaml")], "mine.yaml: is an input"))
cli("two outputs, one file (-o, --json)")(lambda t: (["prune", small(t), "--threshold", "0.5", "-o", str(t / "x.onnx"),
                                                      "--json", str(t / "x.onnx")], "named twice"))
cli("two outputs, one file (--json, --masks-out)")(lambda t: (["prune", small(t), "--threshold", "0.5", "-o",
                                                               str(t / "p.onnx"), "--json", str(t / "x.json"),
                                                               "--masks-out", str(t / "x.json")], "named twice"))
cli("two outputs, one file (--json, --plot)")(lambda t: (["compare", small(t), "--profile", "v100", "--json",
                                                          str(t / "c.png"), "--plot", str(t / "c.png")], "named twice"))
cli("two outputs, one file (expand)")(lambda t: (["expand", small(t), "--threshold", "0.5", "--budget", "original",
                                                  "--json", str(t / "e.onnx"), "-o", str(t / "e.onnx")], "named twice"))
cli("two outputs, one file by two spellings")(lambda t: (["prune", small(t), "--threshold", "0.5", "-o",
                                                          str(t / "y.onnx"), "--json", str(t / "." / "y.onnx")],
                                                         "named twice"))
cli("two outputs, one file (--json is the model's data file)")(lambda t: (
    ["prune", external(t, "ext.onnx"), "--threshold", "0.5", "-o", str(t / "q.onnx"), "--json", str(t / "q.onnx.data")],
    "q.onnx.data: named twice as an output of this command (also as"))
cli("two outputs on stdout")(lambda t: (["prune", small(t), "--threshold", "0.5", "-o", str(t / "p.onnx"), "--json", "-",
                                         "--masks-out", "-"], "-: named twice"))
cli("model output to stdout")(lambda t: (["prune", small(t), "--threshold", "0.5", "-o", "-"], "cannot go to stdout"))

# -- integer options
cli("--round 0")(lambda t: (["prune", small(t), "-o", str(t / "p.onnx"), "--threshold", "0.5", "--round", "0"],
                            "argument --round: 0 is below 1"))
cli("--round x")(lambda t: (["structure", small(t), "--threshold", "0.5", "--round", "x"], "argument --round: 'x' is not an integer"))
cli("--round-to 0")(lambda t: (["expand", small(t), "--threshold", "0.5", "--budget", "original", "--round-to", "0"],
                               "argument --round-to: 0 is below 1"))
cli("--round-to -8")(lambda t: (["expand", small(t), "--threshold", "0.5", "--budget", "original", "--round-to", "-8"],
                                "argument --round-to: -8 is below 1"))
cli("--top 0")(lambda t: (["analyze", small(t), "--top", "0"], "argument --top: 0 is below 1"))
cli("--top -1")(lambda t: (["groups", small(t), "--top", "-1"], "argument --top: -1 is below 1"))
cli("--conv-groups bad")(lambda t: (["structure", small(t), "--threshold", "0.5", "--conv-groups", "half"],
                                    "argument --conv-groups: invalid choice"))
cli("unknown command")(lambda t: (["shrink", small(t)], "invalid choice: 'shrink'"))
cli("unknown flag")(lambda t: (["analyze", small(t), "--frobnicate"], "unrecognized arguments: --frobnicate"))
cli("no command")(lambda t: ([], "the following arguments are required"))

# -- expand
cli("expand budget malformed")(lambda t: (["expand", small(t), "--threshold", "0.5", "--budget", "lots", "--json",
                                           str(t / "e.json")], "--budget lots: expected"))
cli("expand budget negative")(lambda t: (["expand", small(t), "--threshold", "0.5", "--budget=-5"], "--budget -5: must be positive"))
cli("expand budget 0%")(lambda t: (["expand", small(t), "--threshold", "0.5", "--budget", "0%"], "--budget 0%: must be positive"))
cli("expand budget nan")(lambda t: (["expand", small(t), "--threshold", "0.5", "--budget", "nan"], "--budget nan"))
cli("expand budget inf")(lambda t: (["expand", small(t), "--threshold", "0.5", "--budget", "inf"], "--budget inf"))
cli("expand budget below the smallest widths")(lambda t: (["expand", small(t), "--threshold", "0.5", "--budget", "1",
                                                           "-o", str(t / "e.onnx")], "is below the cost of the smallest"))
cli("expand latency without profile")(lambda t: (["expand", small(t), "--threshold", "0.5", "--budget", "original",
                                                  "--resource", "latency"], "--resource latency needs --profile"))
cli("expand structure and masks")(lambda t: (["expand", small(t), "--masks", masks_file(t, {"masks": {}}), "--structure",
                                              masks_file(t, {"masks": {}}, "s.json"), "--budget", "original"],
                                             "give one of --masks, --structure and --threshold"))
cli("expand bad structure file")(lambda t: (["expand", small(t), "--structure", masks_file(t, b"\xff\xfe", "s.json"),
                                             "--budget", "original"], "s.json: not UTF-8"))
cli("expand no budget")(lambda t: (["expand", small(t), "--threshold", "0.5"], "the following arguments are required: --budget"))

# -- compare
cli("compare without profile")(lambda t: (["compare", small(t), "--json", str(t / "c.json")], "give at least one --profile"))
cli("compare --plot x.txt")(lambda t: (["compare", small(t), "--profile", "v100", "--plot", str(t / "x.txt")],
                                       "--plot " + str(t / "x.txt") + ": give a .png, .svg or .pdf"))
cli("compare --plot to stdout")(lambda t: (["compare", small(t), "--profile", "v100", "--plot", "-"], "give a .png"))

# -- calibrate: options that fail before measuring
cli("calibrate --variants 0")(lambda t: (["calibrate", "--quick", "--variants", "0", "--out", str(t / "c.yaml")],
                                         "argument --variants: 0 is below 5"))
cli("calibrate --out a directory")(lambda t: ((t / "cd").mkdir() or ["calibrate", "--quick", "--out", str(t / "cd")],
                                              "cd: is a directory"))
cli("calibrate --out missing folder")(lambda t: (["calibrate", "--quick", "--out", str(t / "no" / "c.yaml")], "does not exist"))
cli("calibrate --out -")(lambda t: (["calibrate", "--quick", "--out", "-"], "cannot go to stdout"))
cli("calibrate --out is the --fit model")(lambda t: (["calibrate", "--quick", "--fit", small(t), "--out", small(t)],
                                                     "is an input of this command"))
cli("calibrate --fit missing model")(lambda t: (["calibrate", "--quick", "--fit", str(t / "gone.onnx"), "--out",
                                                 str(t / "c.yaml")], "gone.onnx: no such file"))
cli("calibrate --fit not a model")(lambda t: (put(t / "t.onnx", "text") or
                                              ["calibrate", "--quick", "--fit", str(t / "t.onnx"), "--out",
                                               str(t / "c.yaml")], "t.onnx: not"))


@pytest.fixture
def no_measuring(monkeypatch):
    """calibrate must refuse bad options before it measures anything."""
    import morphonnx.calibrate as cal

    def refuse(*a, **k):
        raise AssertionError("measured before refusing the bad input")
    monkeypatch.setattr(cal, "calibrate", refuse)


@pytest.mark.parametrize("name", list(CLI))
def test_cli_bad_input(tmp_path, capsys, no_measuring, name):
    argv, message = CLI[name](tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("morphonnx: error: "), err
    assert message in err, err
    assert "Traceback" not in err + out
    assert snapshot(tmp_path) == before  # nothing staged is left behind, no input changed


SUBPROCESS = ["model truncated", "external data outside the folder", "masks nested 100000 deep", "masks binary",
              "profile binary", "two outputs, one file (-o, --json)", "--input-shape unknown input", "cycle",
              "expand budget 0%"]


@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_input_in_a_real_process(tmp_path, name):
    argv, message = CLI[name](tmp_path)
    before = snapshot(tmp_path)
    r = subprocess.run([sys.executable, "-m", "morphonnx", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1 and r.stderr.startswith("morphonnx: error: ")
    assert message in r.stderr
    assert snapshot(tmp_path) == before


# ---- positive cases next to the corpus ------------------------------------------------------------

def test_masks_on_a_pinned_group_only_warn(tmp_path, capsys):
    """Masks only on the logits (pinned: graph output) are ignored with a warning, not refused."""
    m = small(tmp_path)
    f = masks_file(tmp_path, {"masks": {"logits": [1, 0] * 5}})
    out = tmp_path / "p.onnx"
    assert main(["prune", m, "--masks", f, "-o", str(out), "--json", str(tmp_path / "p.json")]) == 0
    err = capsys.readouterr().err
    assert "warning: masks ignored on groups pinned (graph output): 1 sources (logits)" in err
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["channels"][0] == doc["channels"][1] and doc["check"]["ok"]
    assert [t.dims for t in onnx.load(str(out)).graph.initializer if t.name == "fc.weight"][0][0] == 10


def test_json_to_dev_null_leaves_a_character_device(tmp_path, capsys):
    m = small(tmp_path)
    before = snapshot(tmp_path)
    assert main(["analyze", m, "--json", "/dev/null"]) == 0
    assert main(["groups", m, "--json", "/dev/null"]) == 0
    assert main(["structure", m, "--threshold", "0.5", "--json", "/dev/null"]) == 0
    assert main(["prune", m, "--threshold", "0.5", "-o", str(tmp_path / "p.onnx"), "--json", "/dev/null",
                 "--masks-out", "/dev/null"]) == 0  # a device named twice is written twice
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    (tmp_path / "p.onnx").unlink()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", [["analyze"], ["groups"], ["structure", "--threshold", "0.5"]])
def test_json_to_stdout_prints_json(tmp_path, capsys, command):
    m = small(tmp_path)
    capsys.readouterr()
    assert main([command[0], m, *command[1:], "--json", "-"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), dict)


def test_expand_original_where_nothing_can_shrink(tmp_path, capsys):
    """Every group pinned: `--budget original` gives back the original widths, or one line of refusal."""
    m = save(tmp_path, "pinned.onnx", pinned_only())
    before = snapshot(tmp_path)
    code = main(["expand", m, "--threshold", "0.5", "--budget", "original", "--json", str(tmp_path / "e.json")])
    out, err = capsys.readouterr()
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("morphonnx: error: ")
        assert snapshot(tmp_path) == before
    else:
        assert code == 0, err
        doc = json.loads((tmp_path / "e.json").read_text())
        assert doc["widths"] == {"only": 8} and doc["cost"] == doc["original_cost"]


# ---- the API corpus: name -> builder(tmp) -> (call, a part of the message) -------------------------

def _groups(tmp: Path):
    return morphonnx.find_groups(morphonnx.load(small(tmp)))


API = {
    "load missing": lambda t: (lambda: morphonnx.load(t / "nope.onnx"), "nope.onnx: no such file"),
    "load directory": lambda t: ((t / "d").mkdir() or (lambda: morphonnx.load(t / "d")), "d: not a file"),
    "load empty": lambda t: (put(t / "e.onnx", b"") or (lambda: morphonnx.load(t / "e.onnx")), "e.onnx: not an ONNX"),
    "load truncated": lambda t: (put(t / "c.onnx", SMALL_CNN.read_bytes()[:5000]) or
                                 (lambda: morphonnx.load(str(t / "c.onnx"))), "c.onnx: not a valid ONNX"),
    "load ir 99 in memory": lambda t: ((lambda m: setattr(m, "ir_version", 99) or (lambda: morphonnx.load(m)))(relu()),
                                       "model: IR version 99"),
    "load cycle in memory": lambda t: ((lambda: morphonnx.load(model(
        [helper.make_node("Add", ["x", "c"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["c"], name="relu")],
        [tensor("x", [1, 4])], [tensor("c", [1, 4])]))), "cycle through node"),
    "load external data in memory": lambda t: ((lambda m: lambda: morphonnx.load(m))(onnx.load(external(t, "x.onnx"), load_external_data=False)),
                                               "given in memory"),
    "load batch 0": lambda t: ((lambda m: lambda: morphonnx.load(m, batch=0))(small(t)), "--batch: 0 is not a size"),
    "load input shape zero": lambda t: ((lambda m: lambda: morphonnx.load(m, input_shapes={"input": (1, 3, 0, 32)}))(small(t)), "input"),
    "load input shape huge": lambda t: ((lambda m: lambda: morphonnx.load(m, input_shapes={"input": (1, 3, 2**40, 32)}))(small(t)),
                                        "input"),
    "load input shape not integers": lambda t: ((lambda m: lambda: morphonnx.load(m, input_shapes={"input": ("a", 3, 32, 32)}))(small(t)),
                                                "input"),
    "load input shape unknown input": lambda t: ((lambda m: lambda: morphonnx.load(m, input_shapes={"img": (1, 3, 32, 32)}))(small(t)),
                                                 "'img', which is not a graph input"),
    "analyze unknown profile": lambda t: ((lambda m: lambda: morphonnx.analyze(m, ["v1000"]))(small(t)), "unknown profile 'v1000'"),
    "analyze missing model": lambda t: ((lambda: morphonnx.analyze(t / "none.onnx")), "none.onnx: no such file"),
    "analyze fixed batch": lambda t: ((lambda m: lambda: morphonnx.analyze(m, batch=3))(save(t, "f.onnx", fixed_batch_cnn())),
                                      "fixed batch of 1"),
    "find_groups symbolic channels": lambda t: ((lambda m: lambda: morphonnx.find_groups(morphonnx.load(m)))(save(t, "sym.onnx", model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Relu", ["y"], ["z"], name="r"),
         helper.make_node("MatMul", ["z", "v"], ["o"], name="mm2")],
        [tensor("x", [1, "k"]), tensor("w", [4, "n"])], [tensor("o", None)], [init("v", (8, 2))]))),
        "shape of tensor"),
    "masks_from_sources unknown source": lambda t: ((lambda g: lambda: morphonnx.masks_from_sources(g, {"nope": [1]}))(_groups(t)),
                                                    "'nope' is not a source"),
    "masks_from_sources booleans": lambda t: ((lambda g: lambda: morphonnx.masks_from_sources(g, {"stem.conv": [True] * 16}))(
        _groups(t)), "'stem.conv' must be a list of 0/1"),
    "masks_from_sources nan": lambda t: ((lambda g: lambda: morphonnx.masks_from_sources(g, {"stem.conv": [float("nan")] * 16}))(
        _groups(t)), "'stem.conv' must be a list of 0/1"),
    "masks_from_sources wrong length": lambda t: ((lambda g: lambda: morphonnx.masks_from_sources(g, {"stem.conv": [1]}))(
        _groups(t)), "'stem.conv' has 1 values"),
    "masks_from_sources not a mapping": lambda t: ((lambda g: lambda: morphonnx.masks_from_sources(g, [1, 0]))(_groups(t)),
                                                   "masks: expected a mapping"),
    "masks_from_sources a string": lambda t: ((lambda g: lambda: morphonnx.masks_from_sources(g, {"stem.conv": "1" * 16}))(
        _groups(t)), "'stem.conv' must be a list of 0/1"),
    "legalize multiple 0": lambda t: ((lambda g: lambda: morphonnx.legalize(g, morphonnx.masks_from_threshold(g, 0.5), 0))(
        _groups(t)), "--round 0: must be a positive integer"),
    "legalize multiple -8": lambda t: ((lambda g: lambda: morphonnx.legalize(g, morphonnx.masks_from_threshold(g, 0.5), -8))(
        _groups(t)), "--round -8"),
    "legalize multiple 2.5": lambda t: ((lambda g: lambda: morphonnx.legalize(g, morphonnx.masks_from_threshold(g, 0.5), 2.5))(
        _groups(t)), "--round 2.5"),
    "legalize conv_groups": lambda t: ((lambda g: lambda: morphonnx.legalize(g, morphonnx.masks_from_threshold(g, 0.5),
                                                                             conv_groups="half"))(_groups(t)),
                                       "--conv-groups half"),
    "masks_from_threshold nan": lambda t: ((lambda g: lambda: morphonnx.masks_from_threshold(g, float("nan")))(_groups(t)),
                                           "--threshold nan"),
    "load_profile unknown": lambda t: ((lambda: morphonnx.load_profile("v1000")), "unknown profile 'v1000'"),
    "load_profile missing file": lambda t: ((lambda: morphonnx.load_profile(t / "none.yaml")), "none.yaml: no such file"),
    "load_profile directory": lambda t: ((t / "p.yaml").mkdir() or (lambda: morphonnx.load_profile(t / "p.yaml")),
                                         "p.yaml: is a directory"),
    "load_profile list": lambda t: (put(t / "l.yaml", "[1, 2]\n") or (lambda: morphonnx.load_profile(t / "l.yaml")),
                                    "expected a mapping of fields, got list"),
    "load_profile binary": lambda t: (put(t / "b.yaml", b"\xff\x00\xfe") or
                                      (lambda: morphonnx.load_profile(t / "b.yaml")), "b.yaml: not UTF-8"),
    "load_profile zero bandwidth": lambda t: ((lambda p: lambda: morphonnx.load_profile(p))(profile_file(t, bandwidth_gbs=0)),
                                              "field 'bandwidth_gbs' must be a positive number, got 0"),
    "read_masks_file missing": lambda t: ((lambda: morphonnx.read_masks_file(t / "none.json")), "none.json: no such file"),
    "read_masks_file directory": lambda t: ((t / "md").mkdir() or (lambda: morphonnx.read_masks_file(t / "md")),
                                            "md: is a directory"),
    "read_masks_file binary": lambda t: ((lambda p: lambda: morphonnx.read_masks_file(p))(masks_file(t, b"\x00\xff")),
                                         "masks.json: not UTF-8"),
    "read_masks_file deep": lambda t: ((lambda p: lambda: morphonnx.read_masks_file(p))(
        masks_file(t, "[" * 100_000 + "]" * 100_000)), "nested too deeply"),
    "read_masks_file Infinity": lambda t: ((lambda p: lambda: morphonnx.read_masks_file(p))(
        masks_file(t, '{"masks": {"a": [Infinity]}}')), "Infinity is not a number"),
}


@pytest.mark.parametrize("name", list(API))
def test_api_bad_input(tmp_path, name):
    call, message = API[name](tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(BadInput) as e:
        call()
    text = str(e.value)
    assert "\n" not in text and message in text, text
    assert snapshot(tmp_path) == before


def test_the_corpus_is_large_enough():
    assert len(CLI) + len(API) >= 70


def test_an_op_that_is_no_onnx_operator_is_named(tmp_path, capsys):
    """tf2onnx leaves TensorFlow's StatefulPartitionedCall in the default domain for some convs:
    the refusal names the node and its op type, not a shape further down."""
    from morphonnx.cli import main
    n = Net(size=4)
    y = n.node("StatefulPartitionedCall", [n.conv("x", 4, 4, name="c")], "tf_call")
    path = tmp_path / "m.onnx"
    onnx.save(n.model(n.node("Relu", [y])), path)
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'StatefulPartitionedCall', which is no ONNX operator" in err and "tf_call" in err


def test_threshold_without_bn_scales_says_so(tmp_path, capsys):
    from morphonnx.cli import main
    n = Net(size=4)
    m = n.model(n.node("Relu", [n.conv("x", 4, 4, name="c")]))
    onnx.save(m, tmp_path / "m.onnx")
    assert main(["prune", str(tmp_path / "m.onnx"), "--threshold", "0.5", "-o", str(tmp_path / "p.onnx")]) == 0
    assert "no BatchNormalization scales" in capsys.readouterr().err
