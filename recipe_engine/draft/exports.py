"""``export:`` candidates for a draft: the sparse part for libspconv, the dense parts for ONNX Q/DQ.

- sparse: the smallest module holding every spconv layer that ran, when it holds no dense
  layer (else each of its children that holds only spconv layers): ``onnx-sparse``;
- dense: the largest modules that ran and hold dense layers and no spconv layer: ``onnx-qdq``,
  each with a ``tensorrt`` entry built from it (skipped without a GPU).
Whether a candidate can really be exported is decided by the engine's own pre-check (the one
``recipe plan`` runs); the draft keeps the ones that pass and writes the others as comments
with the reason (see :mod:`recipe_engine.draft.build`).
"""

from __future__ import annotations

from .entries import Entry, lca


def _inside(path: str, parent: str) -> bool:
    return parent == "" or path == parent or path.startswith(parent + ".")


def _children(paths: set[str], parent: str) -> list[str]:
    """Direct child module paths of ``parent`` among the ancestors of ``paths``."""
    depth = len(parent.split(".")) if parent else 0
    found = []
    for path in sorted(paths):
        if _inside(path, parent) and path != parent:
            child = ".".join(path.split(".")[:depth + 1])
            if child not in found:
                found.append(child)
    return found


def _file_stem(path: str) -> str:
    return path.replace(".", "_") if path else "model"


def draft_exports(layers: dict[str, str], executed: set[str]) -> list[Entry]:
    sparse = {p for p, k in layers.items() if k == "sparse"}
    dense = {p for p, k in layers.items() if k == "dense"}
    entries: list[Entry] = []
    if sparse:
        root = lca(sorted(sparse))
        if any(_inside(d, root) for d in dense):
            parts = [c for c in _children(sparse, root)
                     if not any(_inside(d, c) for d in dense) and c in executed]
        else:
            parts = [root]
        for part in parts:
            count = sum(1 for s in sparse if _inside(s, part))
            value = {"format": "onnx-sparse", "path": f"{_file_stem(part)}_scn.onnx"}
            if part:
                value = {"format": "onnx-sparse", "module": part, "path": value["path"]}
            entries.append(Entry(value, [f"{part or 'the model'} holds {count} spconv layer(s) and no dense layer: "
                                         "NVIDIA libspconv's format, verified by the engine's reference runtime; "
                                         "add `compat: cuda-centerpoint|cuda-bevfusion` for NVIDIA's applications"]))

    def dense_parts(parent: str) -> list[str]:
        inside = [d for d in dense if _inside(d, parent)]
        if not inside:
            return []
        if not any(_inside(s, parent) for s in sparse) and (parent in executed or parent == ""):
            return [parent]
        found: list[str] = []
        for child in _children(set(inside) | {s for s in sparse if _inside(s, parent)}, parent):
            found += dense_parts(child)
        return found

    for part in dense_parts(""):
        count = sum(1 for d in dense if _inside(d, part))
        stem = _file_stem(part)
        value = {"format": "onnx-qdq", "path": f"{stem}.onnx"}
        if part:
            value = {"format": "onnx-qdq", "module": part, "path": f"{stem}.onnx"}
        entries.append(Entry(value, [f"{part or 'the model'} holds {count} dense layer(s) and no spconv layer: "
                                     "ONNX with QuantizeLinear/DequantizeLinear, verified in onnxruntime"]))
        entries.append(Entry({"format": "tensorrt", "source": f"{stem}.onnx", "path": f"{stem}.engine"},
                             ["a TensorRT engine built from it when TensorRT and a GPU are present (skipped "
                              "otherwise)"], extra={"source": f"{stem}.onnx"}))
    return entries


__all__ = ["draft_exports"]
