"""Hardware profiles: every bundled YAML validates; bad ones are named by file and field; roofline math."""
from __future__ import annotations

import pytest
import yaml

from morphonnx import BadInput, available_profiles, load_profile
from morphonnx.costs import OpCost
from morphonnx.profiles import REQUIRED

EXPECTED = {"k80", "p4", "t4", "p100", "v100", "a100-40gb", "a100-80gb", "a10", "l4", "h100-sxm", "h200",
            "jetson-agx-orin", "x86-server-cpu"}
# MorphNet's latency constants (google-research/morph-net, morph_net/network_regularizers/resource_function.py,
# PEAK_COMPUTE in GFLOP/s and MEMORY_BANDWIDTH in GB/s): profile → (its key there, GFLOP/s, GB/s).
MORPHNET = {"morphnet-k80": ("K80", 8740, 480), "morphnet-p4": ("P4", 5500, 192), "morphnet-t4": ("T4", 8100, 300),
            "morphnet-p100": ("P100", 9300, 732), "morphnet-v100": ("V100", 125000, 900),
            "morphnet-tpuv2": ("TPUv2", 22500, 300)}


def test_bundled_profiles_validate():
    found = available_profiles()
    assert EXPECTED <= set(found)
    for name in found:
        p = load_profile(name)
        assert p.peak_gflops["fp32"] > 0 and p.bandwidth_gbs > 0
        assert all(f"peak_gflops.{k}" in p.sources for k in p.peak_gflops)


def test_morphnet_profiles_reproduce_its_constants():
    for name, (key, gflops, gbs) in MORPHNET.items():
        p = load_profile(name)
        assert p.peak_gflops == {"fp32": gflops} and p.bandwidth_gbs == gbs  # one peak for every precision
        assert p.peak("float16") == (gflops * 1e9, "fp32")
        for f, table in (("peak_gflops.fp32", "PEAK_COMPUTE"), ("bandwidth_gbs", "MEMORY_BANDWIDTH")):
            assert "google-research/morph-net, morph_net/network_regularizers/resource_function.py" in p.sources[f]
            assert f"{table}['{key}'] = {gflops if table == 'PEAK_COMPUTE' else gbs}," in p.sources[f]
    # a model costs on MorphNet's V100 what its latency function says: max(flops / 125000 GFLOP/s, bytes / 900 GB/s)
    conv = OpCost("c", "Conv", "float32", flops=int(125e9), read_bytes=int(4.5e8))  # 1 ms of compute, 0.5 ms of memory
    assert load_profile("morphnet-v100").latency(conv) == (pytest.approx(1e-3), "compute")


def test_profiles_command_lists_the_morphnet_profiles(capsys):
    from morphonnx.cli import main
    assert main(["profiles"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for name in MORPHNET:
        assert load_profile(name).name in listed[name]


def test_profile_by_path(tmp_path):
    src = available_profiles()["v100"]
    (tmp_path / "mine.yaml").write_text(src.read_text())
    assert load_profile(tmp_path / "mine.yaml").peak_gflops == load_profile("v100").peak_gflops


def write(tmp_path, **changes):
    data = yaml.safe_load(available_profiles()["v100"].read_text())
    for key, value in changes.items():
        node, *rest = key.split(".", 1)
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
    ({"op_overhead_us": 5}, r"bad.yaml: field 'sources.op_overhead_us' is missing: say where"),
    ({"run_overhead_us": 20}, r"bad.yaml: field 'sources.run_overhead_us' is missing"),
    ({"channel_block": 16}, r"bad.yaml: field 'sources.channel_block' is missing"),
    ({"efficiency": {"Conv": 0.5}}, r"bad.yaml: field 'sources.efficiency.Conv' is missing"),
    ({"efficiency": {"Conv": 0.5, "*": 0.4}, "sources.efficiency.Conv": "fitted"},
     r"field 'sources.efficiency.\*' is missing"),
    ({"op_overhead_us": 5, "sources.op_overhead_us": " "}, r"field 'sources.op_overhead_us' is missing"),
    ({"threads": -1}, r"bad.yaml: field 'threads' must be a whole number of threads \(0: onnxruntime's default\), "
                      r"got -1"),
    ({"threads": "two"}, r"field 'threads' must be a whole number of threads .*got 'two'"),
    ({"threads": True}, r"field 'threads' must be a whole number of threads .*got True"),
    ({"threads": 1}, r"bad.yaml: field 'sources.threads' is missing"),
])
def test_bad_fields(tmp_path, changes, message):
    with pytest.raises(BadInput, match=message):
        load_profile(write(tmp_path, **changes))


def test_optional_numbers_with_sources_load(tmp_path):
    path = write(tmp_path, op_overhead_us=5, run_overhead_us=20, channel_block=16, efficiency={"Conv": 0.5, "*": 0.4},
                 threads=1, **{"sources.op_overhead_us": "measured", "sources.run_overhead_us": "measured",
                               "sources.channel_block": "AVX-512", "sources.efficiency.Conv": "fitted",
                               "sources.efficiency.*": "fitted", "sources.threads": "calibrate --threads 1"})
    p = load_profile(path)
    assert (p.op_overhead_us, p.run_overhead_us, p.channel_block, p.efficiency) == (5, 20, 16, {"Conv": 0.5, "*": 0.4})
    assert p.threads == 1 and load_profile(write(tmp_path, threads=0)).threads == 0
    path.write_text(p.to_yaml())  # written back, the setting stays
    assert load_profile(path).threads == 1
    # zero means absent: no source needed; one `sources.efficiency` entry covers every fitted efficiency
    assert load_profile(write(tmp_path, op_overhead_us=0, run_overhead_us=0, channel_block=0)).op_overhead_us == 0
    assert load_profile(write(tmp_path, efficiency={"Conv": 0.5, "*": 0.4}, **{"sources.efficiency": "fitted"}))


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
