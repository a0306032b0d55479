"""Export and verification: ``onnx-qdq`` (dense), ``onnx-sparse`` (libspconv), ``tensorrt``.

Modules: :mod:`.capture` (inputs recorded from a calibration batch), :mod:`.onnx_qdq`,
:mod:`.fp16`, :mod:`.sparse_trace` + :mod:`.onnx_sparse` + :mod:`.scn_checks` (the sparse
format; :mod:`.scn_precision` its int8 chains, :mod:`.scn_tail` its dense tails, :mod:`.scn_compat`
the NVIDIA applications' profiles), :mod:`.scn_rulebook` + :mod:`.scn_runtime` (its
reference runtime, independent of spconv), :mod:`.tensorrt`, :mod:`.verify`,
:mod:`.artifact` and :mod:`.runner` (``export`` / ``run_exports``).

``recipe_engine.export`` is both this package and the function :func:`.runner.export`: once the
package is imported Python binds the attribute to the package, so the package module is
made callable and forwards to that function (``recipe_engine.export(model, recipe, out, batches)``
works either way).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> list[dict]:
        from .runner import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
