"""Calibration of this machine and the fit of the latency model (no real timing is asserted)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

import morphonnx
from morphonnx import load_profile
from morphonnx import calibrate as cal
from morphonnx.calibrate import FIT_CLASSES, features, fit, nnls
from morphonnx.cli import main
from morphonnx.profiles import Profile

from conftest import SMALL_CNN


def unsourced(text: str) -> list[str]:
    """The numbers of a profile YAML that have no entry in its sources."""
    doc = yaml.safe_load(text)
    numbers = [f"{k}.{sub}" for k in ("peak_gflops", "efficiency") for sub in doc.get(k) or {}]
    numbers += [k for k, v in doc.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return [n for n in numbers if not str(doc["sources"].get(n) or "").strip()]


def test_quick_calibration_writes_a_valid_profile(tmp_path, capsys):
    out = tmp_path / "cpu.yaml"
    assert main(["calibrate", "--quick", "--out", str(out)]) == 0
    p = load_profile(out)
    assert p.peak_gflops["fp32"] > 0 and p.bandwidth_gbs > 0 and p.op_overhead_us > 0
    assert "measured by morphonnx calibrate --quick" in p.sources["peak_gflops.fp32"]
    err = capsys.readouterr().err
    assert "[4/4]" in err
    assert len(re.findall(r"best of 3 rounds, spread \d+\.\d%", err)) == 4  # one per measurement
    assert unsourced(out.read_text()) == [] and set(p.sources) >= {"op_overhead_us", "run_overhead_us", "channel_block"}
    assert all("spread" in p.sources[f] for f in ("peak_gflops.fp32", "bandwidth_gbs", "op_overhead_us",
                                                   "run_overhead_us"))
    assert main(["analyze", str(SMALL_CNN), "--profile", str(out)]) == 0


seen_threads: set[int] = set()  # the thread counts `fake_rounds` was asked to measure with


def fake_rounds(slow: dict[str, float]):
    """A stand-in for `round_times`: a machine of 500 GFLOP/s on MatMul, 400 on Conv, 50 GB/s on Add,
    1 us per op and 3 us per run, with the second round of the op types in `slow` that much slower."""
    def round_times(model, feeds, rounds, repeat, warmup=2, threads=0):
        seen_threads.add(threads)
        op = model.graph.node[0].op_type
        if op == "MatMul":
            t = 2 * feeds["x"].shape[0] ** 3 / 500e9
        elif op == "Conv":
            _, c, h, w = feeds["x"].shape
            t = 2 * c * c * 9 * h * w / 400e9
        elif op == "Add":
            t = 12 * feeds["a"].size / 50e9
        else:
            t = 3e-6 + 1e-6 * len(model.graph.node)
        times = [t] * rounds
        times[1] *= 1 + slow.get(op, 0.0)
        return times
    return round_times


@pytest.fixture
def small_sizes(monkeypatch):
    """The bandwidth measured on 16 floats instead of 16M: only the (faked) timing matters here."""
    real = cal.measure_bandwidth
    monkeypatch.setattr(cal, "measure_bandwidth", lambda n, *args: real(16, *args))


def test_a_spread_over_10_percent_warns_and_is_recorded(tmp_path, capsys, monkeypatch, small_sizes):
    monkeypatch.setattr(cal, "round_times", fake_rounds({"MatMul": 0.25, "Add": 0.05}))
    out = tmp_path / "busy.yaml"
    assert main(["calibrate", "--quick", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "MatMul 512x512x512 25%" in warning[0] and "Add" not in warning[0]
    assert "the machine looks busy and the numbers may be low" in warning[0]
    assert "MatMul 512x512x512: 500 GFLOP/s, best of 3 rounds, spread 25.0%" in err  # the best round is kept
    assert "Conv 3x3 128->128 on 28x28: 400 GFLOP/s, best of 3 rounds, spread 0.0%" in err
    assert "Add of two 16M-float vectors: 50 GB/s, best of 3 rounds, spread 5.0%" in err
    assert "1 us per op, 3 us per run, best of 3 rounds, spread 0.0%" in err
    p = load_profile(out)
    assert (p.peak_gflops["fp32"], p.bandwidth_gbs, p.op_overhead_us, p.run_overhead_us) == (500, 50, 1, 3)
    assert "spread 25.0%: the slowest round took 25.0% longer (over 10%: the machine looked busy" \
        in p.sources["peak_gflops.fp32"]
    assert "spread 5.0%" in p.sources["bandwidth_gbs"] and "busy" not in p.sources["bandwidth_gbs"]
    assert unsourced(out.read_text()) == []


def test_steady_rounds_do_not_warn(capsys, monkeypatch, small_sizes):
    monkeypatch.setattr(cal, "round_times", fake_rounds({"Conv": 0.08}))
    p = cal.calibrate(quick=True, progress=cal.progress_printer())
    assert "warning" not in capsys.readouterr().err
    assert p.op_overhead_us == pytest.approx(1.0) and p.run_overhead_us == pytest.approx(3.0)
    monkeypatch.setattr(cal, "round_times", fake_rounds({"Neg": 0.5}))
    with pytest.warns(RuntimeWarning, match=r"chains of 1 and 101 tiny ops 50%\): the machine looks busy"):
        cal.calibrate(quick=True)  # no progress callback: a Python warning


def test_threads_are_the_setting_every_measurement_and_the_profile_take(tmp_path, capsys, monkeypatch, small_sizes):
    monkeypatch.setattr(cal, "round_times", fake_rounds({}))
    seen_threads.clear()
    out = tmp_path / "one.yaml"
    assert main(["calibrate", "--quick", "--threads", "1", "--out", str(out)]) == 0
    assert seen_threads == {1}
    p = load_profile(out)
    assert p.threads == 1 and p.name.endswith(", 1 thread)") and "--threads 1" in p.sources["threads"]
    assert unsourced(out.read_text()) == []
    assert cal._session(SMALL_CNN, 1).get_session_options().intra_op_num_threads == 1
    assert cal._session(SMALL_CNN).get_session_options().intra_op_num_threads == 0
    assert main(["calibrate", "--quick", "--threads", "-2", "--out", str(tmp_path / "bad.yaml")]) == 2
    assert "argument --threads: -2 is below 0" in capsys.readouterr().err
    assert not (tmp_path / "bad.yaml").exists()


def test_nnls_recovers_non_negative_weights():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (40, 4))
    x = np.array([2.0, 0.0, 0.5, 3.0])
    assert np.allclose(nnls(a, a @ x), x, atol=1e-6)
    assert (nnls(a, a @ np.array([1.0, -2.0, 1.0, 1.0])) >= 0).all()


def test_fit_recovers_a_known_machine(tmp_path):
    """Models measured on a machine with known efficiencies and overheads: the fit finds them."""
    base = Profile("m", "machine", {"fp32": 300.0}, 20.0, op_overhead_us=0.5,
                   sources={"peak_gflops.fp32": "measured", "bandwidth_gbs": "measured",
                            "op_overhead_us": "measured on chains"})
    truth = Profile("m", "machine", {"fp32": 300.0}, 20.0, op_overhead_us=2.0, run_overhead_us=30.0,
                    efficiency={"Conv": 0.5, "ConvTranspose": 0.5, "Gemm": 0.8, "MatMul": 0.8, "*": 0.25})
    from conftest import SMALL_CNN, random_masks
    g = morphonnx.load(SMALL_CNN)
    groups = morphonnx.find_groups(g)
    variants = [morphonnx.prune(groups, random_masks(groups, seed)).model for seed in range(10)]
    samples = [(morphonnx.cost_model(morphonnx.load(m, input_shapes={"input": (1 + seed % 3, 3, 32, 32)})), 0.0)
               for seed, m in enumerate(variants)]
    samples = [(c, truth.total_latency(c)) for c, _ in samples]
    fitted = fit(base, samples)
    for c, t in samples:
        assert fitted.total_latency(c) == pytest.approx(t, rel=0.02)
    assert fitted.efficiency["Conv"] == pytest.approx(0.5, rel=0.05)
    # every fitted number gets its own source, the measured overhead's source is replaced
    (tmp_path / "fitted.yaml").write_text(fitted.to_yaml())
    assert load_profile(tmp_path / "fitted.yaml").efficiency == fitted.efficiency
    assert unsourced(fitted.to_yaml()) == []
    assert all(fitted.sources[f"efficiency.{k}"].startswith("fitted by morphonnx on 10 measured models")
               for k in fitted.efficiency)
    assert fitted.sources["op_overhead_us"].startswith("fitted") and fitted.sources["peak_gflops.fp32"] == "measured"
    assert len(features(base, morphonnx.cost_model(g))) == len(FIT_CLASSES) + 2
    with pytest.raises(ValueError):
        fit(base, samples[:2])


def test_efficiency_field_is_validated(tmp_path):
    from morphonnx import BadInput
    text = load_profile("v100").to_yaml()
    (tmp_path / "e.yaml").write_text(text + "efficiency:\n  Conv: -1\n")
    with pytest.raises(BadInput, match="efficiency.Conv' must be a positive number"):
        load_profile(tmp_path / "e.yaml")


def test_channel_alignment_selects_the_efficiency_class():
    from morphonnx.costs import OpCost
    p = Profile("m", "machine", {"fp32": 100.0}, 10.0, channel_block=16,
                efficiency={"Conv": 0.8, "Conv.unaligned": 0.4, "Conv.depthwise.unaligned": 0.1, "*": 0.5})
    conv = lambda c_in, c_out, kind="": OpCost("c", "Conv", "float32", flops=10 ** 9, kind=kind, channels=(c_in, c_out))
    assert p.op_class(conv(32, 64)) == "Conv" and p.efficiency_of(conv(32, 64)) == 0.8
    assert p.op_class(conv(32, 60)) == "Conv.unaligned" and p.efficiency_of(conv(32, 60)) == 0.4
    assert p.efficiency_of(conv(30, 30, "depthwise")) == 0.1
    assert p.efficiency_of(conv(32, 32, "depthwise")) == 0.8  # Conv.depthwise not fitted: falls back to Conv
    assert p.efficiency_of(OpCost("r", "Relu", "float32", flops=1)) == 0.5
    assert p.latency(conv(32, 60))[0] == pytest.approx(2 * p.latency(conv(32, 64))[0])
