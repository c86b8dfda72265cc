"""Decoder language models with random weights, exported to ONNX with their key/value cache.

Llama-style (RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP) and GPT-2-style
(LayerNorm, learned positions, multi-head attention, GELU MLP) decoders are built from
`transformers` configurations (nothing is downloaded) and exported with the torch dynamo
exporter through a wrapper whose inputs are `input_ids`, `position_ids` and the cache as
tensors (`past_key_values.{i}.key|value`, [batch, kv_heads, past_sequence_length, head_dim])
and whose outputs are `logits` and `present.{i}.key|value`; `sequence_length` and
`past_sequence_length` stay symbolic (set them with `morphonnx ... --dim`).

    python scripts/build_decoder.py llama out.onnx [--layers 2 --hidden 64 ...]
    python scripts/build_decoder.py llama big.onnx --preset 0.6b   # over 2 GB in fp32: external data
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PRESETS = {
    "tiny": {"layers": 2, "hidden": 64, "intermediate": 176, "heads": 4, "kv_heads": 2, "vocab": 256},
    "0.6b": {"layers": 24, "hidden": 1024, "intermediate": 3072, "heads": 16, "kv_heads": 8, "vocab": 151936},
}


def config(kind: str, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int):
    """A transformers configuration of a decoder of this kind and size."""
    import transformers
    if kind == "llama":
        return transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                                        num_hidden_layers=layers, num_attention_heads=heads,
                                        num_key_value_heads=kv_heads, max_position_embeddings=4096)
    if kind == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_inner=intermediate, n_layer=layers,
                                       n_head=heads, n_positions=4096)
    raise ValueError(f"kind must be llama or gpt2, got {kind!r}")


def build(kind: str, seed: int = 0, **size):
    """A randomly initialized causal LM (eval mode) and its config."""
    import torch
    import transformers
    cfg = config(kind, **size)
    torch.manual_seed(seed)
    model = (transformers.LlamaForCausalLM if kind == "llama" else transformers.GPT2LMHeadModel)(cfg).eval()
    return model, cfg


def cache_shape(cfg) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a config."""
    layers = cfg.num_hidden_layers
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    return layers, kv, cfg.hidden_size // heads


def export(model, cfg, path: str | Path, sequence: int = 8, past: int = 5) -> None:
    """Export with the cache as tensors, `sequence_length` and `past_sequence_length` symbolic."""
    import torch
    from transformers import DynamicCache
    layers, kv, head_dim = cache_shape(cfg)

    class Decoder(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, position_ids, *past_kv):
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past_kv[2 * i], past_kv[2 * i + 1], i)
            out = self.lm(input_ids=input_ids, position_ids=position_ids, past_key_values=cache, use_cache=True)
            return (out.logits,) + tuple(t for layer in out.past_key_values.layers for t in (layer.keys, layer.values))

    ids = torch.randint(0, cfg.vocab_size, (1, sequence))
    pos = torch.arange(past, past + sequence)[None]
    cache = tuple(torch.randn(1, kv, past, head_dim) for _ in range(2 * layers))
    names = ["input_ids", "position_ids"] + [f"past_key_values.{i}.{w}" for i in range(layers) for w in ("key", "value")]
    outs = ["logits"] + [f"present.{i}.{w}" for i in range(layers) for w in ("key", "value")]
    seq = torch.export.Dim("sequence_length", min=1, max=4096)
    pl = torch.export.Dim("past_sequence_length", min=1, max=4096)
    dynamic = ({1: seq}, {1: seq}, tuple({2: pl} for _ in range(2 * layers)))
    torch.onnx.export(Decoder(model).eval(), (ids, pos) + cache, str(path), dynamo=True, input_names=names,
                      output_names=outs, dynamic_shapes=dynamic, external_data=True)


def main(argv: list[str] | None = None) -> int:
    """Build and export one decoder."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("llama", "gpt2"))
    ap.add_argument("out")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    for k in PRESETS["tiny"]:
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=None)
    args = ap.parse_args(argv)
    size = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in PRESETS[args.preset].items()}
    model, cfg = build(args.kind, **size)
    export(model, cfg, args.out)
    print(f"wrote {args.out}: {args.kind} {size}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
