"""The command line: analyze on the bundled model, JSON schema, and bad input (exit 2, one line, no output file)."""
from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
import yaml

from morphonnx import available_profiles
from morphonnx.cli import main
from morphonnx.tables import SCHEMA_VERSION

from conftest import SMALL_CNN, init, model, tensor


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "morphonnx", *args], capture_output=True, text=True)


def test_analyze_default_model_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["analyze", str(SMALL_CNN), "--profile", "p100", "--profile", "v100", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "latency on p100" in text and "top 20 of 35 ops by latency on p100" in text
    doc = json.loads(out.read_text())
    assert set(doc["totals"]) >= {"macs", "flops", "params", "weight_bytes", "activation_bytes", "latency_s"}
    assert set(doc["totals"]["latency_s"]) == {"p100", "v100"}
    op = next(o for o in doc["ops"] if o["op_type"] == "Conv")
    assert set(op) >= {"name", "op_type", "macs", "flops", "params", "bytes", "latency_s", "bound"}
    assert op["bound"]["p100"] in ("compute", "memory")
    assert doc["totals"]["macs"] == sum(o["macs"] for o in doc["ops"])
    assert doc["totals"]["latency_s"]["v100"] == pytest.approx(sum(o["latency_s"]["v100"] for o in doc["ops"]))
    assert doc["not_costed"] == []


def test_per_op_prints_every_op(capsys):
    assert main(["analyze", str(SMALL_CNN), "--per-op"]) == 0
    text = capsys.readouterr().out
    assert "all 35 ops by FLOPs" in text and "se.gate" in text and "flatten" in text


def test_batch_scales_costs(tmp_path):
    one, eight = tmp_path / "1.json", tmp_path / "8.json"
    main(["analyze", str(SMALL_CNN), "--json", str(one)])
    main(["analyze", str(SMALL_CNN), "--batch", "8", "--json", str(eight)])
    a, b = json.loads(one.read_text())["totals"], json.loads(eight.read_text())["totals"]
    assert b["macs"] == 8 * a["macs"] and b["params"] == a["params"]


def test_module_and_console_entry_point():
    r = run("analyze", str(SMALL_CNN), "--profile", "t4")
    assert r.returncode == 0 and "latency on t4" in r.stdout
    assert run("profiles").stdout.count("\n") == len(available_profiles()) + 2  # title and header


def bad_profile(tmp_path, name, **override):
    data = yaml.safe_load(available_profiles()["v100"].read_text())
    data.update(override)
    data = {k: v for k, v in data.items() if v is not None}
    (tmp_path / name).write_text(yaml.safe_dump(data))
    return str(tmp_path / name)


def bad_inputs(tmp_path):
    data = SMALL_CNN.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.onnx").write_text("not a model\n")
    ext = model([onnx.helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 4])], [tensor("y", [1, 4])],
                [init("unused", (64, 64))])
    onnx.save(ext, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    m = str(SMALL_CNN)
    return {
        "missing file": (["analyze", str(tmp_path / "nope.onnx")], "nope.onnx: no such file"),
        "not onnx": (["analyze", str(tmp_path / "text.onnx")], "text.onnx: not"),
        "truncated": (["analyze", str(tmp_path / "cut.onnx")], "cut.onnx: not a valid ONNX model"),
        "external data": (["analyze", str(tmp_path / "ext.onnx")], "ext.onnx.data' of initializer 'unused' is missing"),
        "unknown profile": (["analyze", m, "--profile", "v1000"], "unknown profile 'v1000'"),
        "missing field": (["analyze", m, "--profile", bad_profile(tmp_path, "bad.yaml", bandwidth_gbs=None)],
                          "bad.yaml: field 'bandwidth_gbs' is missing"),
        "negative field": (["analyze", m, "--profile", bad_profile(tmp_path, "neg.yaml", bandwidth_gbs=-1)],
                           "neg.yaml: field 'bandwidth_gbs' must be a positive number, got -1"),
        "bad shape": (["analyze", m, "--input-shape", "input=1,3,x"], "--input-shape 'input=1,3,x'"),
        "bad batch": (["analyze", m, "--batch", "0"], "argument --batch: 0 is below 1"),
        "bad flag": (["analyze", m, "--frobnicate"], "unrecognized arguments: --frobnicate"),
    }


@pytest.mark.parametrize("case", ["missing file", "not onnx", "truncated", "external data", "unknown profile",
                                  "missing field", "negative field", "bad shape", "bad batch", "bad flag"])
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, case, capsys):
    args, message = bad_inputs(tmp_path)[case]
    out = tmp_path / "out.json"
    assert main(args + ["--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("morphonnx: error: ") and message in err
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    r = run("analyze", str(tmp_path / "nope.onnx"))
    assert r.returncode == 2 and r.stdout == "" and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    r = run("--debug", "analyze", str(tmp_path / "nope.onnx"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_groups_json(tmp_path, capsys):
    out = tmp_path / "groups.json"
    assert main(["groups", str(SMALL_CNN), "--json", str(out)]) == 0
    assert "prunable" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    g = doc["groups"][0]
    assert set(g) >= {"id", "size", "pinned", "sources", "members", "cost_per_channel"}
    assert set(g["sources"][0]) >= {"node", "op_type", "weight", "channels"}
    assert len(g["sources"][0]["channels"]) == g["size"] and set(g["cost_per_channel"]) == {"macs", "params"}
    assert any(x["pinned"] == "graph output" for x in doc["groups"])


def test_prune_with_masks_file_and_threshold(tmp_path, capsys):
    before = SMALL_CNN.read_bytes()
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps({"masks": {"block1.a.conv.weight": [1, 0] * 8, "tower2.reduce.conv": [0, 1] * 4}}))
    out = tmp_path / "pruned.onnx"
    assert main(["prune", str(SMALL_CNN), "-o", str(out), "--masks", str(masks)]) == 0
    text = capsys.readouterr().out
    assert "(reopened from disk): onnx full checker passed" in text and "MACs" in text and out.exists()
    pruned = onnx.load(str(out))
    w = {t.name: t for t in pruned.graph.initializer}
    assert list(w["block1.a.conv.weight"].dims) == [8, 16, 3, 3]  # names kept, rows cut
    assert {n.name for n in pruned.graph.node} >= {"block1.a.conv", "tower2.reduce.conv"}
    assert main(["prune", str(SMALL_CNN), "-o", str(tmp_path / "t.onnx"), "--threshold", "0.9"]) == 0
    assert SMALL_CNN.read_bytes() == before


def test_prune_check_failure_exits_1_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import morphonnx.verify as verify
    monkeypatch.setattr(verify, "check", lambda *a, **k: verify.Check(False, 1.0, 1.0))
    out = tmp_path / "pruned.onnx"
    assert main(["prune", str(SMALL_CNN), "-o", str(out), "--threshold", "0.9"]) == 1
    assert not out.exists() and "fails the equivalence check" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staged file left behind
    assert main(["prune", str(SMALL_CNN), "-o", str(out), "--threshold", "0.9", "--no-check"]) == 0
    assert out.exists()


@pytest.mark.parametrize("masks, message", [
    ({"masks": {"nope": [1]}}, "'nope' is not a source"),
    ({"masks": {"stem.conv": [1, 0]}}, "'stem.conv' has 2 values, but stem.conv has 16 output channels"),
    ({"masks": {"stem.conv": [1, 0.5] * 8}}, "'stem.conv' must be a list of 0/1 values"),
    ({"masks": {"stem.conv": [0] * 16}}, "the masks cut every path from the graph inputs to output 'logits'"),
    ([1], "expected an object"),
])
def test_prune_bad_masks_exit_2(tmp_path, capsys, masks, message):
    f = tmp_path / "m.json"
    f.write_text(json.dumps(masks))
    out = tmp_path / "pruned.onnx"
    assert main(["prune", str(SMALL_CNN), "-o", str(out), "--masks", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not out.exists()
    assert list(tmp_path.iterdir()) == [f]


def test_prune_needs_exactly_one_mask_source(tmp_path, capsys):
    assert main(["prune", str(SMALL_CNN), "-o", str(tmp_path / "p.onnx")]) == 2
    assert "exactly one of --masks FILE and --threshold T" in capsys.readouterr().err


def test_the_demo_flow_on_the_default_model(tmp_path, capsys):
    from morphonnx import DEFAULT_MODEL
    assert DEFAULT_MODEL.exists()
    pruned = tmp_path / "pruned.onnx"
    assert main(["analyze", str(DEFAULT_MODEL), "--profile", "v100"]) == 0
    assert main(["prune", str(DEFAULT_MODEL), "--threshold", "0.95", "-o", str(pruned)]) == 0
    assert main(["compare", str(DEFAULT_MODEL), str(pruned), "--profile", "v100"]) == 0
    out = capsys.readouterr().out
    assert "onnx full checker passed" in out and "speedup v100" in out


@pytest.mark.parametrize("mode, groups_left", [("equal", 4), ("whole", 3)])
def test_prune_conv_groups(tmp_path, capsys, mode, groups_left):
    from test_masks import blocks, resnext_block
    onnx.save(resnext_block(), tmp_path / "rx.onnx")
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps({"masks": {"a.conv": blocks([4, 4, 1, 4]), "g.conv": blocks([3, 4, 1, 2])}}))
    out = tmp_path / "pruned.onnx"
    assert main(["prune", str(tmp_path / "rx.onnx"), "-o", str(out), "--masks", str(masks),
                 "--conv-groups", mode]) == 0
    err = capsys.readouterr().err
    assert "equal conv groups of 1 grouped convs" in err and ("whole conv groups: 2 output channels" in err) == \
        (mode == "whole")
    conv = next(n for n in onnx.load(str(out)).graph.node if n.name == "g.conv")
    assert next(a.i for a in conv.attribute if a.name == "group") == groups_left


def test_prune_reports_changed_channels_and_writes_the_applied_masks(tmp_path, capsys):
    """Masks that leave conv groups unequal: the revived channels are reported in the text and the
    JSON summary, and the applied masks reproduce the same model."""
    from test_masks import blocks, resnext_block
    onnx.save(resnext_block(), tmp_path / "rx.onnx")
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps({"masks": {"a.conv": blocks([4, 4, 1, 4]), "g.conv": blocks([3, 4, 1, 2])}}))
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert main(["prune", str(tmp_path / "rx.onnx"), "-o", str(a), "--masks", str(masks),
                 "--masks-out", str(tmp_path / "applied.json"), "--json", str(tmp_path / "s.json")]) == 0
    text = capsys.readouterr().out
    summary = json.loads((tmp_path / "s.json").read_text())
    revived = summary["masks_changed"]["revived"]
    assert revived["channels"] > 0 and f"revived {revived['channels']} channels" in text
    assert summary["check"]["ok"] and summary["check"]["file"] == str(a) and summary["schema_version"] == SCHEMA_VERSION
    assert main(["prune", str(tmp_path / "rx.onnx"), "-o", str(b), "--masks", str(tmp_path / "applied.json"),
                 "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["masks_changed"]["revived"]["channels"] == 0
    assert a.read_bytes() == b.read_bytes()
