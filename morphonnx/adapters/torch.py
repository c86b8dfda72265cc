"""PyTorch adapter: MorphNet's cost-weighted gamma penalty on a torch model's own BN scales.

    reg = Regularizer(model, (x,), resource="flops")      # or "size", or "latency" with profile=
    loss = criterion(model(x), y) + strength * reg.penalty()
    ...
    reg.save_masks("masks.json")   # then: morphonnx prune model.onnx --masks masks.json -o small.onnx

The model is exported once to ONNX with BN kept (dynamo exporter, parameter names preserved)
at one sample of the example batch, so that costs are per sample as `morphonnx analyze`
reports them; groups and costs are resolved there and compiled into a penalty program;
`penalty()` is a pure function of the BN scale parameters made of a few vectorized tensor ops
(no Python loop over layers), so it works under torch.compile and DDP. `structure()` and
`alive_masks()` are keyed by module names (`layer1.0.conv1`), `dead_entries()` by parameter
names; `onnx_names()` gives the ONNX node and weight of each module.
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

from ..graph import load, torchscript_scope
from ..groups import find_groups
from ..output import write_text
from ..tables import SCHEMA_VERSION
from ..penalty import GammaRegularizer, compile_program
from ..oracle import own_bn
from ..profiles import Profile, load_profile


def export_bn_kept(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor) -> onnx.ModelProto:
    """The model as ONNX with BatchNormalization kept and parameter names as initializer names.

    Norm parameters (BN, LayerNorm, GroupNorm) are set to distinct random values during the
    export (exporters merge equal initializers, and fresh norms all have scale 1), then
    restored. `example_inputs`: one tensor or a tuple of them.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    norm_types = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, norm_types)
             and getattr(m, "weight", None) is not None and getattr(m, "bias", None) is not None]
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


def one_sample(example_inputs: Sequence[torch.Tensor] | torch.Tensor) -> tuple:
    """The example inputs as a tuple, every tensor cut to its first sample (its leading dimension
    is the batch): what the adapters export, so that costs are per sample."""
    def cut(x):
        if isinstance(x, torch.Tensor):
            return x[:1] if x.ndim else x
        if isinstance(x, (tuple, list)):
            return type(x)(cut(v) for v in x)
        if isinstance(x, dict):
            return {k: cut(v) for k, v in x.items()}
        return x
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    return tuple(cut(x) for x in example_inputs)


_WEIGHT_INPUTS = {"Conv": ("weight", "bias"), "ConvTranspose": ("weight", "bias"), "Gemm": ("weight", "bias"),
                  "MatMul": ("weight",), "BatchNormalization": ("weight", "bias"),
                  "LayerNormalization": ("weight", "bias"), "InstanceNormalization": ("weight", "bias"),
                  "GroupNormalization": ("weight", "bias")}


def parameter_names(graph, model: torch.nn.Module) -> dict[str, str]:
    """ONNX tensor name → the torch parameter it is, for the tensors ops of the export read.

    The dynamo exporter names initializers after the parameters (`layer1.0.conv1.weight`), or
    after their placeholders (`p_layer1_0_conv1_weight`); a parameter re-laid out for the graph
    (a transposed Linear weight) is its original (`graph.origins`). The TorchScript exporter
    keeps parameter names where it stores a parameter as it is, and writes `onnx::Conv_35`
    where it computed a weight (a BN folded into the conv): those are named by the node's
    scope (`/layer1/layer1.0/conv1/Conv` → module `layer1.0.conv1`) and the input's role
    (weight, bias).
    """
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    placeholders = {"p_" + n.replace(".", "_"): n for n in params}
    out: dict[str, str] = {n: n for n in params}  # (a parameter re-laid out is read under another name)
    for node in graph.nodes.values():
        roles = _WEIGHT_INPUTS.get(node.op_type, ())
        for i, t in enumerate(node.input):
            if not t or t in out:
                continue
            found = _parameter_of(graph, t, params, placeholders)
            if found is None and 0 < i <= len(roles) and graph.is_constant(t):
                owner = modules.get(_scope_module(node.name, modules))
                p = getattr(owner, roles[i - 1], None) if owner is not None else None
                if isinstance(p, torch.nn.Parameter) and (graph.info(t) is None or graph.info(t).shape is None
                                                          or int(np.prod(graph.info(t).shape)) == p.numel()):
                    found = next(n for n, q in params.items() if q is p)
            if found is not None:
                out[t] = found
    return out


def _parameter_of(graph, name: str, params: dict, placeholders: dict) -> str | None:
    for n in (name, graph.origins.get(name), placeholders.get(name)):
        if n in params:
            return n
    found = {graph.origins.get(p, p) for p in graph.parameters_of(name)} & set(params)
    return found.pop() if len(found) == 1 else None


def _scope_module(node_name: str, modules: dict) -> str | None:
    """The module of a TorchScript node name (`graph.torchscript_scope`), if the model has it."""
    if not node_name.startswith("/"):
        return None
    qual = torchscript_scope(node_name)
    return qual if qual in modules else None


def module_names(groups, parameter_of: dict[str, str], params: dict) -> dict[str, str]:
    """Weight source (ONNX node) → the name of the torch module that owns its weight
    (`layer1.0.conv1`); the parameter's name where that module owns several weight sources'
    parameters (or is the root module)."""
    owner = {}
    for s in groups.plan.sources:
        p = parameter_of.get(s.weight) if s.kind == "weight" and s.weight else None
        if p is not None:
            module = p.rpartition(".")[0]
            if ".parametrizations." in f".{module}.":  # parametrize: `conv.parametrizations.weight.original0`
                module = f".{module}".split(".parametrizations.")[0].lstrip(".")
            owner[s.node] = (module, p)
    per_module: dict[str, set[str]] = {}
    for module, p in owner.values():
        per_module.setdefault(module, set()).add(p)
    return {node: module if module and len(per_module[module]) == 1 else p for node, (module, p) in owner.items()}


class Regularizer(GammaRegularizer):
    """MorphNet's GammaFlops / GammaModelSize / GammaLatency regularizer for a torch model.

    A group's gamma is its BN scales (max over the group's BNs). With `gammas="auto"` (the
    default), a group with no BN (a transformer's MLP, its heads, its residual stream) takes the
    L2 norm of its weights instead: for each channel, the rows its Linear/Conv layers write it
    with, bias included (MorphNet's group-lasso regularizers); `gammas="bn"` uses BN scales only.

    `example_inputs`: one tensor or a tuple of them, batched along their first dimension; the
    model is exported at their first sample, so `cost()` is per sample whatever the batch.
    """

    def __init__(self, model: torch.nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor,
                 resource: str = "flops", profile: str | Profile | None = None, threshold: float = 0.01,
                 gammas: str = "auto"):
        if gammas not in ("auto", "bn"):
            raise ValueError(f"gammas must be 'auto' or 'bn', got {gammas!r}")
        module = model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model
        self.model = module
        self.threshold = float(threshold)
        self.onnx_model = export_bn_kept(module, one_sample(example_inputs))
        self.graph = load(self.onnx_model)
        self.groups = find_groups(self.graph)
        params = dict(module.named_parameters())
        self.parameter_of = parameter_names(self.graph, module)  # ONNX tensor → torch parameter
        self.names = module_names(self.groups, self.parameter_of, params)
        prof = load_profile(profile) if isinstance(profile, (str, os.PathLike)) else profile
        norms = _weight_gammas(self.groups, module, params, self.parameter_of) if gammas == "auto" else {}
        self.program = compile_program(self.groups, resource, prof, gamma_of={n: w for n, (w, _, _) in norms.items()},
                                       bn=True)
        names = list(self.program.sources)
        missing = [n for n in names if self.parameter_of.get(n, n) not in params]
        if missing:
            raise ValueError(f"BN scales of the ONNX export not found among the model's parameters: {missing[:5]}")
        by_weight = {w: (axis, bias) for w, axis, bias in norms.values()}
        self._gammas = [params[self.parameter_of.get(n, n)] for n in names]
        self._norm_of = [by_weight.get(n) for n in names]  # (output axis, bias) for weight gammas, None for BN
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
        self._silenced = _silenced_params(self, params) if norms else []
        self._index["extra_slot"] = torch.as_tensor(
            np.concatenate([sl for _, _, sl in self._silenced]) if self._silenced else np.zeros(0, np.int64),
            dtype=torch.long)
        self._cache: tuple | None = None

    def _tensors(self, device, dtype) -> tuple[dict, dict]:
        if self._cache is None or self._cache[0] != (device, dtype):
            ints = {k: v.to(device) for k, v in self._index.items()}
            floats = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in self._float.items()}
            self._cache = ((device, dtype), ints, floats)
        return self._cache[1], self._cache[2]

    def _slot_gammas(self, ints: dict, dtype, detach: bool = False) -> torch.Tensor:
        """Per slot: the max |BN scale| of its BN gammas, or the L2 norm of its weight rows."""
        bn_parts, sq_parts = [], []
        for g, norm in zip(self._gammas, self._norm_of):
            g = (g.detach() if detach else g).to(dtype)
            if norm is None:
                bn_parts.append(g.reshape(-1).abs())
                sq_parts.append(torch.zeros_like(bn_parts[-1]))
                continue
            axis, bias = norm
            sq = g.pow(2).sum(dim=[d for d in range(g.ndim) if d != axis])
            if bias is not None:
                sq = sq + (bias.detach() if detach else bias).to(dtype).pow(2)
            sq_parts.append(sq)
            bn_parts.append(torch.zeros_like(sq))
        n = len(self.program.slot_group)
        idx = ints["src_slot"]
        zeros = torch.zeros(n + 1, dtype=dtype, device=idx.device)
        bn = zeros.scatter_reduce(0, idx, torch.cat(bn_parts), reduce="amax", include_self=True)[:n]
        if not any(v is not None for v in self._norm_of):
            return bn
        sq = zeros.index_add(0, idx, torch.cat(sq_parts))
        if self._silenced:  # a stream norm's scale and bias at the channel go with it
            extra = [((g.detach() if detach else g).to(dtype).pow(2)).movedim(axis, 0).reshape(g.shape[axis], -1).sum(1)
                     for g, axis, _ in self._silenced]
            sq = sq.index_add(0, ints["extra_slot"], torch.cat(extra))
        sq = sq[:n]
        return torch.maximum(bn, torch.sqrt(sq + 1e-12))  # (a slot has BN gammas or weights, not both)

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
        """Current per-slot gammas (max |BN scale|, or the L2 norm of the weight rows)."""
        with torch.no_grad():
            ints, _ = self._tensors(torch.device("cpu"), torch.float64)
            return self._slot_gammas(ints, torch.float64, detach=True).cpu().numpy()

    def silenced(self) -> dict[str, list[float]]:
        """Per weight source with its own BN: the BN shift each channel outputs when its scale is 0."""
        graph, params = self.graph, dict(self.model.named_parameters())
        out = {}
        for s in self.groups.plan.sources:
            bn = own_bn(graph, s.tensor) if s.kind == "weight" else None
            if bn is not None:
                bias = self.parameter_of.get(graph.nodes[bn].input[2])
                if bias in params:
                    out[s.weight or s.node] = [float(v) for v in params[bias].detach().cpu().reshape(-1)]
        return out

    def dead_entries(self) -> dict[str, torch.Tensor]:
        """Per parameter, a 0/1 tensor of its shape: 0 where the pruned model (the oracle of the
        learned masks, legalized) has no entry or a silenced one: the rows of removed channels
        in their Linear/Conv weights and biases, a stream LayerNorm's scale and bias at removed
        channels. Multiply the parameters by it to make the torch model compute what the pruned
        ONNX model computes (e.g. to fine-tune the shrunk network with the dead channels held at 0)."""
        from ..masks import legalize, masks_from_sources
        from ..oracle import removed_by_tensor
        groups, params = self.groups, dict(self.model.named_parameters())
        masks = legalize(groups, masks_from_sources(groups, self.onnx_masks()))
        removed = removed_by_tensor(groups, masks)
        out: dict[str, torch.Tensor] = {}

        def zero(name: str, axis: int, dead: np.ndarray) -> None:
            if name not in params or not len(dead) or params[name].shape[axis] <= int(dead.max()):
                return
            mask = out.setdefault(name, torch.ones_like(params[name], dtype=torch.float32))
            index = [slice(None)] * mask.ndim
            index[axis] = torch.as_tensor(dead)
            mask[tuple(index)] = 0
        for src in groups.plan.sources:
            rows, dead = _rows(self.model, params, groups.plan, src, self.parameter_of), removed.get(src.tensor)
            if rows is None or dead is None:
                continue
            axis, bias = rows
            zero(self.parameter_of[src.weight], axis, dead)
            if bias is not None:
                zero(bias, 0, dead)
        for sl in groups.plan.silenced:
            dead = removed.get(sl.tensor)
            name = self.parameter_of.get(self.graph.nodes[sl.node].input[sl.input])
            if dead is not None and name is not None:
                zero(name, sl.axis, dead)
        return out

    def save_masks(self, path: str | os.PathLike) -> None:
        """Write the masks file `morphonnx prune --masks` reads, keyed by the export's weight names
        (the parameter names: it also applies to the BN-folded export)."""
        write_text(path, json.dumps({"schema_version": SCHEMA_VERSION, "masks": self.onnx_masks(),
                                     "silenced": self.silenced()}))


def _silenced_params(reg: "Regularizer", params: dict) -> list[tuple[torch.Tensor, int, np.ndarray]]:
    """Parameters the oracle zeroes with a channel (a stream LayerNorm's scale and bias), with
    the slot of each entry along their channel axis (the sentinel slot for channels that have none)."""
    p, groups = reg.program, reg.groups
    n = len(p.slot_group)
    first = {int(g): int(np.argmax(p.slot_group == g)) for g in np.unique(p.slot_group)}
    out = []
    for sl in groups.plan.silenced:
        name = reg.parameter_of.get(reg.graph.nodes[sl.node].input[sl.input])
        if name not in params or params[name].shape[sl.axis] != groups.plan.spaces[sl.tensor].size:
            continue
        eg = groups.element_group[groups.plan.ids(sl.tensor)]
        slots = np.array([first[g] + k if g in first else n for g, k in eg.tolist()], dtype=np.int64)
        out.append((params[name], sl.axis, slots))
    return out


def _rows(module: torch.nn.Module, params: dict, plan, s, parameter_of: dict) -> tuple[int, str | None] | None:
    """(output axis, bias name) of a weight source's torch parameter, None if it is not one."""
    weight = parameter_of.get(s.weight) if s.kind == "weight" and s.weight else None
    if weight not in params:
        return None
    prefix = weight.rpartition(".")[0]
    layer = module.get_submodule(prefix) if prefix else module
    axis = 1 if isinstance(layer, torch.nn.modules.conv._ConvTransposeNd) else 0
    if params[weight].ndim <= axis or params[weight].shape[axis] != plan.spaces[s.tensor].size:
        return None
    bias = f"{prefix}.bias" if prefix else "bias"
    return axis, bias if bias in params else None


def _weight_gammas(groups, module: torch.nn.Module, params: dict,
                   parameter_of: dict) -> dict[str, tuple[str, int, object]]:
    """Weight sources of groups without a BN, with their torch parameter: node → (parameter
    name, output axis of the parameter, bias parameter or None)."""
    eg, plan = groups.element_group, groups.plan
    with_bn = {int(eg[i, 0]) for s in plan.sources if s.kind == "bn" for i in plan.ids(s.tensor).tolist()}
    out = {}
    for s in plan.sources:
        rows = _rows(module, params, plan, s, parameter_of)
        if rows is not None and not with_bn & set(eg[plan.ids(s.tensor), 0].tolist()):
            out[s.node] = (parameter_of[s.weight], rows[0], params.get(rows[1]) if rows[1] else None)
    return out


def apply_structure(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor],
                    masks: dict[str, list[int]] | None = None, widths: dict[str, int] | None = None,
                    seed: int = 0) -> torch.nn.Module:
    """A copy of the model with a learned or expanded structure, to retrain in PyTorch.

    `masks` ({layer: [0/1 per output channel]}, as `Regularizer.alive_masks()` gives them or
    `save_masks` writes them) keeps the alive channels of every group (a shrink: kept weights
    are sliced); `widths` ({layer: output channels}, as `morphonnx expand --json` writes) sets
    the width of each group (an expand: kept channels first, new ones freshly initialized). A
    layer is named by its module (`layer1.0.conv1`), its weight parameter
    (`layer1.0.conv1.weight`) or its ONNX node. Conv, Linear and BN modules are resized
    consistently with the channel groups of the model's ONNX export. A width that the model's
    code hard-codes (a `view` with a literal) makes the check forward pass fail with the name
    of the module where it broke.
    """
    import copy

    from ..masks import legalize, masks_from_sources
    from ..grow import tensor_order
    from ..oracle import expand_channels as _expand
    from ..rewrite import take_or_init as _take_or_init
    if (masks is None) == (widths is None):
        raise ValueError("apply_structure: give exactly one of masks and widths")
    graph = load(export_bn_kept(model, one_sample(example_inputs)))
    groups = find_groups(graph)
    parameter_of = parameter_names(graph, model)
    layer = module_names(groups, parameter_of, dict(model.named_parameters()))
    onnx_key = _onnx_keys(groups, parameter_of, layer)
    if masks is not None:
        m = legalize(groups, masks_from_sources(groups, {onnx_key.get(k, k): v for k, v in masks.items()}))
        order = {g.id: np.flatnonzero(m.keep[g.id]) for g in groups.groups}
    else:
        order = _orders_from_widths(groups, {onnx_key.get(k, k): v for k, v in widths.items()})
    for g in groups.groups:
        if len(order[g.id]) == 0:
            names = ", ".join(layer.get(s.node) or s.weight or s.node for s, _ in g.sources[:3])
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
            name = name if name in state else parameter_of.get(name, name)
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
    _check_forward(new, (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs))
    return new


def _onnx_keys(groups, parameter_of: dict[str, str], layer: dict[str, str]) -> dict[str, str]:
    """Module and parameter names of the weight sources → their ONNX weight names (the keys
    `masks_from_sources` and the widths lookup take)."""
    out: dict[str, str] = {}
    for s in groups.plan.sources:
        if s.kind == "weight":
            key = s.weight or s.node
            for alias in (layer.get(s.node), parameter_of.get(s.weight) if s.weight else None):
                if alias and alias != key:
                    out.setdefault(alias, key)
    return out


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
