"""morphonnx: MorphNet for every framework, through ONNX.

Public API:
    load(model, batch=None, input_shapes=None) -> Graph
    cost_model(graph) -> CostModel
    load_profile(name_or_path) -> Profile
    analyze(model, profiles=(), batch=None, input_shapes=None) -> Analysis
    DEFAULT_MODEL: path of the bundled small CNN
"""
from __future__ import annotations

from pathlib import Path

from .costs import CostModel, OpCost, cost_model
from .errors import BadInput
from .graph import Graph, load
from .profiles import Profile, available_profiles, load_profile
from .report import Analysis, analyze

__version__ = "0.1.0"
DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "small_cnn.onnx"

__all__ = ["Analysis", "BadInput", "CostModel", "DEFAULT_MODEL", "Graph", "OpCost", "Profile", "analyze",
           "available_profiles", "cost_model", "load", "load_profile"]
