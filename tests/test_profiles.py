"""Hardware profiles: every bundled YAML validates; bad ones are named by file and field; roofline math."""
from __future__ import annotations

import pytest
import yaml

from morphonnx import BadInput, available_profiles, load_profile
from morphonnx.costs import OpCost
from morphonnx.profiles import REQUIRED

EXPECTED = {"k80", "p4", "t4", "p100", "v100", "a100-40gb", "a100-80gb", "a10", "l4", "h100-sxm", "h200",
            "jetson-agx-orin", "x86-server-cpu"}


def test_bundled_profiles_validate():
    found = available_profiles()
    assert EXPECTED <= set(found)
    for name in found:
        p = load_profile(name)
        assert p.peak_gflops["fp32"] > 0 and p.bandwidth_gbs > 0
        assert all(f"peak_gflops.{k}" in p.sources for k in p.peak_gflops)


def test_profile_by_path(tmp_path):
    src = available_profiles()["v100"]
    (tmp_path / "mine.yaml").write_text(src.read_text())
    assert load_profile(tmp_path / "mine.yaml").peak_gflops == load_profile("v100").peak_gflops


def write(tmp_path, **changes):
    data = yaml.safe_load(available_profiles()["v100"].read_text())
    for key, value in changes.items():
        node, *rest = key.split(".")
        if rest:
            if value is None:
                data[node].pop(rest[0])
            else:
                data[node][rest[0]] = value
        elif value is None:
            data.pop(node)
        else:
            data[node] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_field(tmp_path, field):
    with pytest.raises(BadInput, match=rf"bad.yaml: field '{field}' is missing"):
        load_profile(write(tmp_path, **{field: None}))


@pytest.mark.parametrize("changes, message", [
    ({"bandwidth_gbs": -900}, r"field 'bandwidth_gbs' must be a positive number, got -900"),
    ({"peak_gflops.fp32": 0}, r"field 'peak_gflops.fp32' must be a positive number"),
    ({"peak_gflops.fp16": "fast"}, r"field 'peak_gflops.fp16' must be a positive number, got 'fast'"),
    ({"peak_gflops.fp32": None}, r"field 'peak_gflops.fp32' is missing"),
    ({"peak_gflops.fp8x": 3}, r"unknown precision 'peak_gflops.fp8x'"),
    ({"sources.bandwidth_gbs": None}, r"field 'sources.bandwidth_gbs' is missing"),
    ({"bandwith_gbs": 3}, r"unknown field 'bandwith_gbs'"),
])
def test_bad_fields(tmp_path, changes, message):
    with pytest.raises(BadInput, match=message):
        load_profile(write(tmp_path, **changes))


def test_bad_yaml_and_unknown_names(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(BadInput, match=r"broken.yaml: line \d+ not valid YAML"):
        load_profile(tmp_path / "broken.yaml")
    with pytest.raises(BadInput, match=r"unknown profile 'v1000'; known: .*v100"):
        load_profile("v1000")
    with pytest.raises(BadInput, match="no such file"):
        load_profile(tmp_path / "none.yaml")


def test_roofline():
    v100 = load_profile("v100")
    conv = OpCost("c", "Conv", "float32", flops=int(15.7e9), read_bytes=int(9e8))  # 1 ms of compute, 1 ms of memory
    seconds, bound = v100.latency(conv)
    assert seconds == pytest.approx(1e-3) and bound == "compute"
    add = OpCost("a", "Add", "float32", flops=1000, read_bytes=int(1.8e9))
    assert v100.latency(add) == (pytest.approx(2e-3), "memory")
    half = OpCost("h", "Conv", "float16", flops=int(125e9))
    assert v100.latency(half)[0] == pytest.approx(1e-3)
    assert load_profile("k80").peak("float16") == (4365e9, "fp32")  # no fast fp16: falls back
    assert v100.latency(OpCost("r", "Reshape", "float32")) == (0.0, "none")
