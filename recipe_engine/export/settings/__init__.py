"""Settings models of the export formats: light modules (no torch) that the recipe schema is built from."""

from __future__ import annotations

from .base import ExportBase
from .onnx_qdq import OnnxQdqExport
from .onnx_sparse import OnnxSparseExport
from .tensorrt import TensorRTExport

__all__ = ["ExportBase", "OnnxQdqExport", "OnnxSparseExport", "TensorRTExport"]
