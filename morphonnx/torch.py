"""`morphonnx.torch`: the PyTorch adapter (see morphonnx.adapters.torch)."""
from .adapters.torch import Regularizer, apply_structure, export_bn_kept

__all__ = ["Regularizer", "apply_structure", "export_bn_kept"]
