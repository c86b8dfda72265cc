"""Decoder language models (Llama-style and GPT-2-style, random weights, exported with their
key/value cache): named symbolic dimensions, costs per token in prefill and decode against the
analytic count, key/value cache bytes, and prefill against decode side by side."""
from __future__ import annotations

import json

import pytest

import morphonnx
from morphonnx import BadInput
from morphonnx.cli import main

from conftest import _load_script

build_decoder = _load_script("build_decoder")  # needs transformers (the `llm` extra, installed by scripts/test.sh)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def decoder(request, tmp_path_factory):
    """(kind, config, path) of a tiny exported decoder."""
    model, cfg = build_decoder.build(request.param, **build_decoder.PRESETS["tiny"])
    path = tmp_path_factory.mktemp(request.param) / f"{request.param}.onnx"
    build_decoder.export(model, cfg, path)
    return request.param, cfg, path


def analytic_macs(cfg, sequence: int, past: int) -> int:
    """Linear layers: their weights' elements per token; attention: q·kᵀ and attn·v over the
    sequence against past + sequence positions, per head."""
    layers, kv, head_dim = build_decoder.cache_shape(cfg)
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    inner = getattr(cfg, "intermediate_size", None) or cfg.n_inner
    attention_weights = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2  # q, o; k, v
    mlp = hidden * inner * (3 if hasattr(cfg, "intermediate_size") else 2)      # SwiGLU: gate, up, down
    per_token = layers * (attention_weights + mlp) + hidden * cfg.vocab_size     # + the LM head
    attention = layers * 2 * heads * sequence * (past + sequence) * head_dim
    return per_token * sequence + attention


@pytest.mark.parametrize("sequence, past", [(16, 0), (1, 15), (1, 127)])
def test_macs_per_token_equal_the_analytic_count(decoder, sequence, past):
    kind, cfg, path = decoder
    g = morphonnx.load(path, dims={"sequence_length": sequence, "past_sequence_length": past})
    assert g.dims == {"sequence_length": sequence, "past_sequence_length": past}
    macs = morphonnx.cost_model(g).total("macs")
    assert macs == pytest.approx(analytic_macs(cfg, sequence, past), rel=0.01)


def test_kv_cache_bytes(decoder):
    from morphonnx.costs import kv_cache
    kind, cfg, path = decoder
    layers, kv, head_dim = build_decoder.cache_shape(cfg)
    g = morphonnx.load(path, dims={"sequence_length": 3, "past_sequence_length": 29})
    assert kv_cache(g) == {"read": layers * 2 * kv * head_dim * 29 * 4, "written": layers * 2 * kv * head_dim * 32 * 4}


def test_dims_are_listed_and_checked(decoder, capsys):
    kind, cfg, path = decoder
    assert main(["analyze", str(path), "--dim", "sequence_length=4", "--dim", "past_sequence_length=4"]) == 0
    out = capsys.readouterr().out
    assert "symbolic dims: sequence_length=4, past_sequence_length=4" in out and "KV cache: reads" in out
    assert main(["analyze", str(path)]) == 2
    assert "--dim sequence_length=N" in capsys.readouterr().err
    with pytest.raises(BadInput, match="no symbolic dimension of that name.*sequence_length, past_sequence_length"):
        morphonnx.load(path, dims={"seq_len": 4})
    assert main(["analyze", str(path), "--dim", "sequence_length=x"]) == 2


def test_prefill_and_decode_side_by_side(decoder, tmp_path, capsys):
    kind, cfg, path = decoder
    out = tmp_path / "c.json"
    assert main(["compare", str(path), "--at", "prefill:sequence_length=128,past_sequence_length=0",
                 "--at", "decode:sequence_length=1,past_sequence_length=127", "--profile", "v100",
                 "--profile", "a100-80gb", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    prefill, decode = doc["models"]
    assert prefill["label"] == "prefill" and decode["dims"] == {"sequence_length": 1, "past_sequence_length": 127}
    assert prefill["macs"] == pytest.approx(analytic_macs(cfg, 128, 0), rel=0.01)
    assert decode["macs"] == pytest.approx(analytic_macs(cfg, 1, 127), rel=0.01)
    layers, kv, head_dim = build_decoder.cache_shape(cfg)
    assert decode["kv_cache_bytes"]["read"] == layers * 2 * kv * head_dim * 127 * 4
    # prefill reads each weight once for 128 tokens, decode for one: per token, decode costs more
    assert prefill["latency_s"]["v100"] / 128 < decode["latency_s"]["v100"]
    assert "prefill" in text and "decode (#1)" in text and "KV read" in text
    decode_only = morphonnx.analyze(path, ["v100"], dims={"sequence_length": 1, "past_sequence_length": 127})
    bounds = {o["bound"]["v100"] for o in decode_only.to_dict()["ops"] if o["op_type"] in ("MatMul", "Gemm")
              and o["macs"] >= cfg.hidden_size * 64}
    assert bounds == {"memory"}


def test_shapes_come_from_inference_not_a_run(decoder):
    """Every shape is inferred (no onnxruntime run, which would read every weight: a model over
    2 GB analyzes in a second at ~100 MB); folded constants' stale symbolic shapes do not stop it."""
    kind, cfg, path = decoder
    g = morphonnx.load(path, dims={"sequence_length": 1, "past_sequence_length": 31})
    assert g.measured == set()
    assert all(g.info(t) is not None and g.info(t).is_static for n in g.nodes.values() for t in n.output if t)


def test_random_prunes_keep_the_contract(decoder):
    """MLP channels and the residual stream (token and position embeddings are its sources;
    GPT-2's LayerNormalization and Llama's written-out RMSNorm normalize over it exactly) prune
    with random masks and compute what the oracle computes."""
    from conftest import random_masks
    from morphonnx.rewrite import prune
    from morphonnx.verify import check
    kind, cfg, path = decoder
    g = morphonnx.load(path, dims={"sequence_length": 4, "past_sequence_length": 3})
    groups = morphonnx.find_groups(g)
    stream = next(x for x in groups.groups if any(s.op_type == "Gather" for s, _ in x.sources))
    assert stream.pinned is None and stream.size == cfg.hidden_size
    before = morphonnx.cost_model(g).total("macs")
    for seed in (0, 1):
        result = prune(groups, random_masks(groups, seed))
        c = result.check()
        assert c.ok, (seed, c.relative)
        assert morphonnx.cost_model(morphonnx.load(result.model, base_dir=result.base_dir)).total("macs") < before


def test_a_pruned_decoder_keeps_its_symbolic_dims(decoder, tmp_path, capsys):
    """prune --dim writes the pruned decoder with the file's shape computations and symbolic
    dims (not folded at the --dim values): checked at those values and at a second setting by the
    command, and here at a third (decode after a long cache) against the oracle there."""
    from conftest import random_masks
    from morphonnx.masks import legalize, masks_document, masks_from_sources
    from morphonnx.rewrite import prune
    from morphonnx.verify import check
    kind, cfg, path = decoder
    dims = {"sequence_length": 4, "past_sequence_length": 3}
    groups = morphonnx.find_groups(morphonnx.load(path, dims=dims))
    masks = tmp_path / "m.json"
    masks.write_text(json.dumps(masks_document(groups, random_masks(groups, 2))))
    out = tmp_path / "p.onnx"
    assert main(["prune", str(path), "--dim", "sequence_length=4", "--dim", "past_sequence_length=3",
                 "--masks", str(masks), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "and at sequence_length=5, past_sequence_length=4: onnx full checker passed" in text
    import onnx
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx.load(out).graph.input}
    assert shapes["input_ids"] == [1, "sequence_length"] and shapes["past_key_values.0.key"][2] == "past_sequence_length"
    other = {"sequence_length": 1, "past_sequence_length": 40}
    g = morphonnx.load(path, dims=other)
    g_groups = morphonnx.find_groups(g)
    result = prune(g_groups, legalize(g_groups, masks_from_sources(g_groups, json.loads(masks.read_text())["masks"])))
    assert check(g, result.oracle, str(out)).ok


def test_at_settings_name_themselves_in_errors_and_carry_bounds(decoder, tmp_path, capsys):
    kind, cfg, path = decoder
    assert main(["compare", str(path), "--at", "a:sequence_length=8", "--at", "b:sequence_length=1",
                 "--profile", "v100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("morphonnx: error: --at a: ") and "--at a:...,past_sequence_length=N" in err
    assert main(["compare", str(path), "--at", "a:sequence_length=8,past_seq=3", "--at",
                 "b:sequence_length=1,past_sequence_length=3", "--profile", "v100"]) == 2
    assert capsys.readouterr().err.startswith("morphonnx: error: --at a: past_seq: the model's inputs have no")
    out = tmp_path / "c.json"
    assert main(["compare", str(path), "--at", "p:sequence_length=8,past_sequence_length=0", "--at",
                 "d:sequence_length=1,past_sequence_length=7", "--profile", "v100", "--json", str(out)]) == 0
    ops = json.loads(out.read_text())["ops"]
    assert all(o["model1"]["bound"]["v100"] in ("memory", "compute", "overhead", "none", "fused", None) for o in ops)
    assert any(o["model1"]["bound"]["v100"] == "memory" for o in ops)
