"""morphonnx: MorphNet for every framework, through ONNX.

Public API:
    load(model, batch=None, input_shapes=None) -> Graph
    cost_model(graph) -> CostModel
    load_profile(name_or_path) -> Profile
    analyze(model, profiles=(), batch=None, input_shapes=None) -> Analysis
    find_groups(graph) -> Groups
    masks_from_sources(groups, {source: [1, 0, ...]}) / masks_from_threshold(groups, t) -> Masks
    legalize(groups, masks, multiple=1, conv_groups="equal") -> Masks (.changes: what it changed, per layer)
    prune(groups, masks) -> PruneResult (.model, .oracle, .folds, .notes)
    check(graph, oracle, pruned_model) -> Check
    Outputs(inputs): stage outputs (.text, .model) and commit them together; write_model(model, path, data_name)
    DEFAULT_MODEL: the bundled default model, a CNN trained on digits (BN kept; scripts/morphnet_digits.py)
"""
from __future__ import annotations

from pathlib import Path

from .errors import BadInput

# Submodules load on first use (PEP 562): the command line imports only what a command needs,
# so `morphonnx analyze` never pays for onnxruntime or onnx-graphsurgeon.
_LAZY = {
    "CostModel": "costs", "OpCost": "costs", "cost_model": "costs",
    "Graph": "graph", "load": "graph",
    "Group": "groups", "Groups": "groups", "find_groups": "groups",
    "Masks": "masks", "legalize": "masks", "masks_from_sources": "masks", "masks_from_threshold": "masks",
    "read_masks_file": "masks",
    "Profile": "profiles", "available_profiles": "profiles", "load_profile": "profiles",
    "Analysis": "report", "analyze": "report",
    "Outputs": "output", "write_model": "output",
    "PruneResult": "rewrite", "prune": "rewrite",
    "Check": "verify", "check": "verify",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'morphonnx' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"
DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "digits_cnn.onnx"

__all__ = ["Analysis", "BadInput", "Check", "CostModel", "DEFAULT_MODEL", "Graph", "Group", "Groups", "Masks",
           "OpCost", "Outputs", "Profile", "PruneResult", "analyze", "available_profiles", "check", "cost_model", "find_groups",
           "legalize", "load", "load_profile", "masks_from_sources", "masks_from_threshold", "prune",
           "read_masks_file", "write_model"]
