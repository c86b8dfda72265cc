"""Calibration of this machine and the fit of the latency model (no timing is asserted)."""
from __future__ import annotations

import numpy as np
import pytest

import morphonnx
from morphonnx import load_profile
from morphonnx.calibrate import FIT_CLASSES, features, fit, nnls
from morphonnx.cli import main
from morphonnx.profiles import Profile

from conftest import SMALL_CNN


def test_quick_calibration_writes_a_valid_profile(tmp_path, capsys):
    out = tmp_path / "cpu.yaml"
    assert main(["calibrate", "--quick", "--out", str(out)]) == 0
    p = load_profile(out)
    assert p.peak_gflops["fp32"] > 0 and p.bandwidth_gbs > 0 and p.op_overhead_us > 0
    assert "measured by morphonnx calibrate --quick" in p.sources["peak_gflops.fp32"]
    assert "[4/4]" in capsys.readouterr().err
    assert main(["analyze", str(SMALL_CNN), "--profile", str(out)]) == 0


def test_nnls_recovers_non_negative_weights():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (40, 4))
    x = np.array([2.0, 0.0, 0.5, 3.0])
    assert np.allclose(nnls(a, a @ x), x, atol=1e-6)
    assert (nnls(a, a @ np.array([1.0, -2.0, 1.0, 1.0])) >= 0).all()


def test_fit_recovers_a_known_machine():
    """Models measured on a machine with known efficiencies and overheads: the fit finds them."""
    base = Profile("m", "machine", {"fp32": 300.0}, 20.0)
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
