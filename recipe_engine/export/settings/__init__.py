"""Settings models of the export formats: light modules (no torch) the recipe schema is assembled from.

Each built-in format's module defines its settings model and registers the format
(:func:`recipe_engine.export.formats.register`), naming its ``run`` function by module path so
that nothing heavy is imported here. Importing this package registers the built-ins.
"""

from __future__ import annotations

from .base import ExportBase
from .onnx_qdq import OnnxQdqExport
from .onnx_sparse import OnnxSparseExport
from .tensorrt import TensorRTExport

__all__ = ["ExportBase", "OnnxQdqExport", "OnnxSparseExport", "TensorRTExport"]
