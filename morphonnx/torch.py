"""`morphonnx.torch`: the PyTorch adapter (see morphonnx.adapters.torch)."""
from .adapters.torch import Regularizer, export_bn_kept

__all__ = ["Regularizer", "export_bn_kept"]
