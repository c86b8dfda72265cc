"""`morphonnx.tf`: the TensorFlow/Keras adapter (see morphonnx.adapters.tf)."""
from .adapters.tf import Regularizer, export

__all__ = ["Regularizer", "export"]
