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
from ..output import write_text
from ..penalty import GammaRegularizer, compile_program
from ..oracle import own_bn
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


class Regularizer(GammaRegularizer):
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

    def silenced(self) -> dict[str, list[float]]:
        """Per weight source with its own BN: the BN shift each channel outputs when its scale is 0."""
        graph, params = self.graph, dict(self.model.named_parameters())
        out = {}
        for s in self.groups.plan.sources:
            bn = own_bn(graph, s.tensor) if s.kind == "weight" else None
            if bn is not None:
                bias = graph.nodes[bn].input[2]
                if bias in params:
                    out[s.weight or s.node] = [float(v) for v in params[bias].detach().cpu().reshape(-1)]
        return out

    def save_masks(self, path: str | os.PathLike) -> None:
        """Write the masks file `morphonnx prune --masks` reads (it also applies to the BN-folded export)."""
        write_text(path, json.dumps({"masks": self.alive_masks(), "silenced": self.silenced()}))


def apply_structure(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor],
                    masks: dict[str, list[int]] | None = None, widths: dict[str, int] | None = None,
                    seed: int = 0) -> torch.nn.Module:
    """A copy of the model with a learned or expanded structure, to retrain in PyTorch.

    `masks` ({weight name: [0/1 per output channel]}, as `Regularizer.save_masks` writes) keeps
    the alive channels of every group (a shrink: kept weights are sliced); `widths` ({weight
    name: output channels}, as `morphonnx expand --json` writes) sets the width of each group
    (an expand: kept channels first, new ones freshly initialized). Conv, Linear and BN modules
    are resized consistently with the channel groups of the model's ONNX export. A width that
    the model's code hard-codes (a `view` with a literal) makes the check forward pass fail
    with the name of the module where it broke.
    """
    import copy

    from ..masks import legalize, masks_from_sources
    from ..grow import tensor_order
    from ..oracle import expand_channels as _expand
    from ..rewrite import take_or_init as _take_or_init
    if (masks is None) == (widths is None):
        raise ValueError("apply_structure: give exactly one of masks and widths")
    graph = load(export_bn_kept(model, example_inputs))
    groups = find_groups(graph)
    if masks is not None:
        m = legalize(groups, masks_from_sources(groups, masks))
        order = {g.id: np.flatnonzero(m.keep[g.id]) for g in groups.groups}
    else:
        order = _orders_from_widths(groups, widths)
    for g in groups.groups:
        if len(order[g.id]) == 0:
            names = ", ".join(s.weight or s.node for s, _ in g.sources[:3])
            raise ValueError(f"apply_structure: group {g.id} ({names}) would have no channel left; "
                             f"a layer that vanishes has to be removed in the model's code")
    new = copy.deepcopy(model)
    state = dict(new.named_parameters()) | dict(new.named_buffers())
    rng = np.random.default_rng(seed)
    index = {t: tensor_order(groups, t, order) for t in groups.plan.spaces}
    changed: dict[str, np.ndarray] = {}
    for node_name, slicings in groups.plan.slicings.items():
        node = graph.nodes[node_name]
        for sl in slicings:
            name = node.input[sl.input] if sl.input < len(node.input) else ""
            if not name or index.get(sl.tensor) is None:
                continue
            if name in graph.origins:
                raise ValueError(f"apply_structure: '{graph.origins[name]}' reaches ONNX re-laid out; "
                                 f"not supported yet")
            if name not in state:
                continue  # a constant of the exported graph, not a parameter of the model
            value = changed.get(name, state[name].detach().cpu().numpy())
            idx = _expand(index[sl.tensor], groups.plan.spaces[sl.tensor].block)
            changed[name] = _take_or_init(value, idx, sl.axis, rng)
    for name, value in changed.items():
        module_name, _, attr = name.rpartition(".")
        module = new.get_submodule(module_name)
        old = getattr(module, attr)
        tensor = torch.as_tensor(value, dtype=old.dtype, device=old.device)
        if isinstance(old, torch.nn.Parameter):
            setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=old.requires_grad))
        else:
            setattr(module, attr, tensor)
    for module in {new.get_submodule(n.rpartition(".")[0]) for n in changed}:
        _resize_attributes(module)
    _check_forward(new, example_inputs)
    return new


def _orders_from_widths(groups, widths: dict[str, int]) -> dict[int, np.ndarray]:
    from ..grow import widened
    by_name = {}
    for s in groups.plan.sources:
        by_name[s.node] = s
        if s.weight:
            by_name[s.weight] = s
    order = {g.id: np.arange(g.size) for g in groups.groups}
    for name, n in widths.items():
        s = by_name.get(name)
        if s is None:
            raise ValueError(f"apply_structure: '{name}' is not a source of the model")
        gids = set(groups.element_group[groups.plan.ids(s.tensor), 0].tolist())
        if len(gids) != 1:
            continue  # a concat of several groups: set by the groups' own sources
        g = groups.groups[gids.pop()]
        if g.pinned and int(n) != g.size:
            raise ValueError(f"apply_structure: '{name}' is pinned ({g.pinned}); its width stays {g.size}")
        order[g.id] = widened(g.size, int(n))
    return order


def _resize_attributes(module: torch.nn.Module) -> None:
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        w = module.weight
        if module.groups > 1 and module.groups == module.in_channels:  # depthwise: one group per channel
            module.groups = w.shape[0] // (module.out_channels // module.in_channels)
            module.in_channels = module.groups
        elif module.groups > 1:
            raise ValueError(f"apply_structure: grouped convolution {module} cannot be resized yet")
        else:
            module.in_channels = w.shape[1]
        module.out_channels = w.shape[0]
    elif isinstance(module, torch.nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, torch.nn.modules.batchnorm._NormBase):
        module.num_features = module.weight.shape[0] if module.affine else module.running_mean.shape[0]


def _check_forward(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> None:
    """Run the model once; name the module where a hard-coded width breaks it."""
    last: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda mod, args: last.append(names[mod])) for m in names if names[m]]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*example_inputs)
    except RuntimeError as e:
        where = last[-1] if last else "the model's forward code"
        raise ValueError(f"apply_structure: the resized model fails in module '{where}' "
                         f"(a width hard-coded in the model's code?): {str(e).splitlines()[0]}") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
