"""PyTorch adapter: MorphNet's cost-weighted gamma penalty on a torch model's own BN scales.

    reg = Regularizer(model, (x,), resource="flops")      # or "size", or "latency" with profile=
    loss = criterion(model(x), y) + strength * reg.penalty()
    ...
    reg.save_masks("masks.json")   # then: morphonnx prune model.onnx --masks masks.json -o small.onnx

The model is exported once to ONNX with BN kept (dynamo exporter, parameter names preserved);
groups and costs are resolved there and compiled into a penalty program; `penalty()` is a
pure function of the BN scale parameters made of a few vectorized tensor ops (no Python loop
over layers), so it works under torch.compile and DDP.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Sequence

import numpy as np
import onnx
import torch

from ..graph import load
from ..groups import find_groups
from ..io import atomic_write_text
from ..penalty import compile_program
from ..profiles import Profile, load_profile


def export_bn_kept(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> onnx.ModelProto:
    """The model as ONNX with BatchNormalization kept and parameter names as initializer names.

    Norm parameters are set to distinct random values during the export (exporters merge equal
    initializers, and fresh BNs all have scale 1), then restored.
    """
    named = [(n, m) for n, m in model.named_modules()
             if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.affine]
    norms = [m for _, m in named]
    saved = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in norms]
    gen = torch.Generator().manual_seed(0)
    was_training = model.training
    try:
        with torch.no_grad():
            for m in norms:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
        model.eval()
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(model, tuple(example_inputs), dynamo=True, optimize=False)
        proto = program.model_proto
        inits = {t.name: t for t in proto.graph.initializer}
        for (name, _), (w, b) in zip(named, saved):  # the true values, now that names are unique
            for suffix, value in (("weight", w), ("bias", b)):
                key = f"{name}.{suffix}" if name else suffix
                if key in inits:
                    inits[key].CopyFrom(onnx.numpy_helper.from_array(value.cpu().numpy(), key))
        return proto
    finally:
        with torch.no_grad():
            for m, (w, b) in zip(norms, saved):
                m.weight.copy_(w)
                m.bias.copy_(b)
        model.train(was_training)


class Regularizer:
    """MorphNet's GammaFlops / GammaModelSize / GammaLatency regularizer for a torch model."""

    def __init__(self, model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], resource: str = "flops",
                 profile: str | Profile | None = None, threshold: float = 0.01):
        module = model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model
        self.model = module
        self.threshold = float(threshold)
        self.onnx_model = export_bn_kept(module, example_inputs)
        self.graph = load(self.onnx_model)
        self.groups = find_groups(self.graph)
        prof = load_profile(profile) if isinstance(profile, (str, os.PathLike)) else profile
        self.program = compile_program(self.groups, resource, prof)
        params = dict(module.named_parameters())
        names = list(self.program.sources)
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"BN scales of the ONNX export not found among the model's parameters: {missing[:5]}")
        self._gammas = [params[n] for n in names]
        p = self.program
        slots = np.concatenate([p.sources[n] for n in names]) if names else np.zeros(0, dtype=np.int64)
        n_slots = len(p.slot_group)
        self._index = {
            "src_slot": torch.as_tensor(np.where(slots >= 0, slots, n_slots), dtype=torch.long),
            "slot_group": torch.as_tensor(p.slot_group, dtype=torch.long),
            "in_op": torch.as_tensor(p.in_op), "in_group": torch.as_tensor(p.in_group),
            "out_op": torch.as_tensor(p.out_op), "out_group": torch.as_tensor(p.out_group),
        }
        self._float = {
            "in_count": p.in_count, "out_count": p.out_count,
            "base_alive": np.where(p.learnable, 0.0, p.group_size),
            **{f"{k}{j}": getattr(f, k) for j, f in enumerate(p.forms) for k in "abcd"},
        }
        self._cache: tuple | None = None

    def _tensors(self, device, dtype) -> tuple[dict, dict]:
        if self._cache is None or self._cache[0] != (device, dtype):
            ints = {k: v.to(device) for k, v in self._index.items()}
            floats = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in self._float.items()}
            self._cache = ((device, dtype), ints, floats)
        return self._cache[1], self._cache[2]

    def _slot_gammas(self, ints: dict, dtype) -> torch.Tensor:
        flat = torch.cat([g.reshape(-1) for g in self._gammas]).abs().to(dtype)
        n = len(self.program.slot_group)
        out = torch.zeros(n + 1, dtype=dtype, device=flat.device)
        return out.scatter_reduce(0, ints["src_slot"], flat, reduce="amax", include_self=True)[:n]

    def _io(self, ints: dict, floats: dict, per_group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.program.n_ops
        i = per_group.new_zeros(k).index_add(0, ints["in_op"], floats["in_count"] * per_group[ints["in_group"]])
        o = per_group.new_zeros(k).index_add(0, ints["out_op"], floats["out_count"] * per_group[ints["out_group"]])
        return i, o

    def penalty(self) -> torch.Tensor:
        """MorphNet's regularizer: a scalar with gradients to the BN scales."""
        if not self._gammas:
            return torch.zeros(())
        ref = self._gammas[0]
        dtype = ref.dtype if ref.dtype in (torch.float32, torch.float64) else torch.float32
        ints, f = self._tensors(ref.device, dtype)
        slot = self._slot_gammas(ints, dtype)
        alive = f["base_alive"].index_add(0, ints["slot_group"], (slot > self.threshold).to(dtype)).detach()
        reg = torch.zeros_like(alive).index_add(0, ints["slot_group"], slot)
        i, o = self._io(ints, f, alive)
        ri, ro = self._io(ints, f, reg)
        terms = [f[f"a{j}"] * (i * ro + o * ri) + f[f"b{j}"] * ri + f[f"c{j}"] * ro for j in range(len(self.program.forms))]
        if len(terms) == 1:
            return terms[0].sum()
        value = [f[f"a{j}"] * i * o + f[f"b{j}"] * i + f[f"c{j}"] * o + f[f"d{j}"] for j in range(2)]
        return torch.where(value[0] >= value[1], terms[0], terms[1]).sum()

    def slot_gammas(self) -> np.ndarray:
        """Current per-slot gammas (max |gamma| over each slot's sources)."""
        with torch.no_grad():
            ints, _ = self._tensors(torch.device("cpu"), torch.float64)
            saved = self._gammas
            self._gammas = [g.detach().cpu().double() for g in saved]
            try:
                return self._slot_gammas(ints, torch.float64).numpy()
            finally:
                self._gammas = saved

    def cost(self) -> float:
        """The resource of the structure alive now (FLOPs, params or seconds)."""
        alive, _ = self.program.alive_and_reg(self.slot_gammas(), self.threshold)
        return self.program.cost(alive)

    def alive_masks(self) -> dict[str, list[int]]:
        """Per Conv/Gemm/MatMul weight name: 1 for each output channel that stays alive."""
        slots = self.slot_gammas()
        p = self.program
        first = {int(g): int(np.argmax(p.slot_group == g)) for g in np.unique(p.slot_group)}
        out = {}
        for s in self.groups.plan.sources:
            if s.kind != "weight":
                continue
            keep = [1 if not p.learnable[gid] else int(slots[first[gid] + k] > self.threshold)
                    for _, gid, k in self.groups.source_channels(s)]
            out[s.weight or s.node] = keep
        return out

    def silenced(self) -> dict[str, list[float]]:
        """Per weight source with its own BN: the BN shift each channel outputs when its scale is 0."""
        graph, params = self.graph, dict(self.model.named_parameters())
        out = {}
        for s in self.groups.plan.sources:
            users = graph.consumers.get(s.tensor, [])
            if s.kind == "weight" and len(users) == 1 and graph.nodes[users[0]].op_type == "BatchNormalization":
                bias = graph.nodes[users[0]].input[2]
                if bias in params:
                    out[s.weight or s.node] = [float(v) for v in params[bias].detach().cpu().reshape(-1)]
        return out

    def save_masks(self, path: str | os.PathLike) -> None:
        """Write the masks file `morphonnx prune --masks` reads (it also applies to the BN-folded export)."""
        atomic_write_text(path, json.dumps({"masks": self.alive_masks(), "silenced": self.silenced()}))

    def structure(self) -> dict[str, int]:
        """Alive output channels per Conv/Gemm/MatMul node (MorphNet's structure format)."""
        names = {s.weight or s.node: s.node for s in self.groups.plan.sources if s.kind == "weight"}
        return {names[k]: int(sum(v)) for k, v in self.alive_masks().items()}
