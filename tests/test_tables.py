"""The one number formatter (units) and the tables every command prints, in text, CSV and Markdown."""
from __future__ import annotations

import csv
import io
import json

import pytest

from morphonnx import units
from morphonnx.cli import main
from morphonnx.tables import SCHEMA_VERSION, Column, Table

from conftest import SMALL_CNN


@pytest.mark.parametrize("value, text", [(0, "0"), (7, "7"), (999, "999"), (999.6, "1.00 k"), (1234, "1.23 k"),
                                         (186624, "187 k"), (11.68e6, "11.7 M"), (3.63e9, "3.63 G")])
def test_counts_have_three_significant_digits(value, text):
    assert units.count(value) == text


@pytest.mark.parametrize("value, text", [(2.43e-6, "2.43 us"), (907.52e-6, "908 us"), (2.001e-3, "2.00 ms"),
                                         (0.9996e-3, "1.00 ms"), (33e-3, "33.0 ms"), (1.5, "1.50 s"),
                                         (5e-10, "0.500 ns")])
def test_seconds_take_the_unit_that_suits_them(value, text):
    assert units.seconds(value) == text


def test_a_column_of_seconds_has_one_unit_and_csv_raw_numbers():
    t = Table("ops", "two ops", [Column("node"), Column("v100", "seconds", "latency_v100_s"),
                                 Column("MACs", "count", "macs")], [["a", 2.001e-3, 1234], ["b", 907.52e-6, 5]])
    text = t.text().splitlines()
    assert text[1].split() == ["node", "v100", "(ms)", "MACs"]
    assert text[2].split() == ["a", "2.00", "1.23", "k"] and text[3].split() == ["b", "0.908", "5"]
    rows = list(csv.reader(io.StringIO(t.csv())))
    assert rows == [["node", "latency_v100_s", "macs"], ["a", "0.002001", "1234"], ["b", "0.00090752", "5"]]
    md = t.markdown().splitlines()
    assert md[0] == "### two ops" and md[2] == "| node | v100 (ms) | MACs |" and md[3] == "| --- | ---: | ---: |"


def test_csv_holds_every_row_and_markdown_the_printed_ones_under_the_summary(tmp_path, capsys):
    c, m = tmp_path / "ops.csv", tmp_path / "ops.md"
    assert main(["analyze", str(SMALL_CNN), "--profile", "v100", "--top", "3", "--csv", str(c), "--md", str(m)]) == 0
    rows = list(csv.DictReader(c.open()))
    assert len(rows) == 35  # every op, not the --top 3 printed
    assert float(rows[0]["latency_v100_s"]) > 0 and rows[0]["input_shape"] and rows[0]["percent_of_total"]
    text = m.read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert "MACs 6.93 M" in text and len(table) == 2 + 3 and "... 32 more ops (--top all)" in text


def test_compare_with_three_models_has_a_speedup_per_model(tmp_path, capsys):
    masks = tmp_path / "m.json"
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    masks.write_text(json.dumps({"masks": {"block1.a.conv": [1, 0] * 8}}))
    assert main(["prune", str(SMALL_CNN), "-o", str(a), "--masks", str(masks)]) == 0
    masks.write_text(json.dumps({"masks": {"block1.a.conv": [1, 0, 0, 0] * 4}}))
    assert main(["prune", str(SMALL_CNN), "-o", str(b), "--masks", str(masks)]) == 0
    capsys.readouterr()
    assert main(["compare", str(SMALL_CNN), str(a), str(b), "--profile", "v100", "--csv", str(tmp_path / "c.csv")]) == 0
    text = capsys.readouterr().out
    assert "model #2: " in text and "speedup v100 #1" in text and "speedup v100 #2" in text
    ops = list(csv.DictReader((tmp_path / "c.ops.csv").open()))
    assert {"speedup_v100_model1", "speedup_v100_model2"} <= set(ops[0])
    layers = list(csv.DictReader((tmp_path / "c.layers.csv").open()))
    assert {"latency_v100_s", "latency_v100_model2_s", "width_model2"} <= set(layers[0])


def test_profiles_in_base_units(capsys):
    assert main(["profiles", "--json", "-", "--top", "2"]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    v100 = next(p for p in doc["profiles"] if p["profile"] == "v100")
    assert doc["schema_version"] == SCHEMA_VERSION and v100["peak_flops_fp32"] == 15.7e12
    assert v100["bandwidth_bytes_per_s"] == 900e9 and "... " in out.err  # --top 2 of the printed table


def test_stdout_taken_twice_and_argparse_errors_say_it_once(capsys):
    assert main(["analyze", str(SMALL_CNN), "--csv", "-", "--json", "-"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("morphonnx: error: -: named twice") and "stdout takes one of" in err
    assert main(["profiles", "--top", "0"]) == 2
    assert capsys.readouterr().err.startswith("morphonnx: error: profiles: argument --top")
