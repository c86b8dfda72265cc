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

from .costs import CostModel, OpCost, cost_model
from .errors import BadInput
from .graph import Graph, load
from .groups import Group, Groups, find_groups
from .masks import Masks, legalize, masks_from_sources, masks_from_threshold, read_masks_file
from .profiles import Profile, available_profiles, load_profile
from .report import Analysis, analyze
from .output import Outputs, write_model
from .rewrite import PruneResult, prune
from .verify import Check, check

__version__ = "0.1.0"
DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "digits_cnn.onnx"

__all__ = ["Analysis", "BadInput", "Check", "CostModel", "DEFAULT_MODEL", "Graph", "Group", "Groups", "Masks",
           "OpCost", "Outputs", "Profile", "PruneResult", "analyze", "available_profiles", "check", "cost_model", "find_groups",
           "legalize", "load", "load_profile", "masks_from_sources", "masks_from_threshold", "prune",
           "read_masks_file", "write_model"]
