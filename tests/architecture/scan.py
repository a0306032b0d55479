"""Static scans of recipe_engine's source (AST only: nothing is imported or run).

- :func:`library_imports`: imports of quantization libraries (``pytorch_quantization``, ``modelopt``).
- :func:`private_accesses`: attribute accesses (``x._amax``, ``getattr(x, "_calibrator")``) of private
  attributes of those libraries' objects.
- :func:`import_graph` / :func:`cycles`: the module import graph, imports inside functions included
  (``if TYPE_CHECKING:`` blocks excluded), and its cycles.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "recipe_engine"
LIBRARIES = ("pytorch_quantization", "modelopt")
BACKENDS = "recipe_engine.backends"  # the only place allowed to know the libraries


@dataclass(frozen=True)
class Hit:
    module: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.text}"


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file for every .py under ``root / PACKAGE``."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_package(name: str, table: dict[str, Path]) -> bool:
    return table[name].name == "__init__.py"


def _walk(tree: ast.AST) -> Iterator[ast.AST]:
    """ast.walk without ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(name: str, path: Path, table: dict[str, Path]) -> Iterator[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every import statement, relative ones resolved."""
    package = name if _is_package(name, table) else name.rpartition(".")[0]
    for node in _walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target, [a.name for a in node.names]


def library_imports(root: Path, allowed: str = BACKENDS) -> list[Hit]:
    table = modules(root)
    hits = []
    for name, path in table.items():
        if name == allowed or name.startswith(allowed + "."):
            continue
        for line, target, _ in _imports(name, path, table):
            if target.split(".")[0] in LIBRARIES:
                hits.append(Hit(name, line, f"imports {target}"))
    return hits


def library_private_names() -> set[str]:
    """Private attribute names of the libraries' quantizers, calibrators and quantized modules.

    Read from live objects of whichever libraries are installed, minus what every torch module has;
    plus the engine's old per-quantizer attributes (``_recipe_method``, ``_recipe_fixed_amax``).
    """
    import torch
    from torch import nn

    base = set(vars(nn.Module())) | set(dir(nn.Module))
    objects: list[object] = []
    try:
        from pytorch_quantization import nn as pq_nn
        from pytorch_quantization.calib import HistogramCalibrator, MaxCalibrator
        from pytorch_quantization.tensor_quant import QuantDescriptor

        quantizer = pq_nn.TensorQuantizer(QuantDescriptor(num_bits=8, amax=1.0))
        objects += [quantizer, pq_nn.QuantConv2d(1, 1, 1), HistogramCalibrator(8, None, False),
                    MaxCalibrator(8, None, False)]
    except ImportError:  # pragma: no cover
        pass
    try:
        from modelopt.torch.quantization.calib import HistogramCalibrator as MoHist
        from modelopt.torch.quantization.calib import MaxCalibrator as MoMax
        from modelopt.torch.quantization.nn import QuantModuleRegistry, TensorQuantizer

        objects += [TensorQuantizer(amax=1.0), QuantModuleRegistry.convert(nn.Conv2d(1, 1, 1)), MoHist(), MoMax()]
    except ImportError:  # pragma: no cover
        pass
    names = {"_recipe_method", "_recipe_fixed_amax", "use_fb_fake_quant"}
    for obj in objects:
        keys = set(vars(obj)) | set(dir(type(obj)))
        if isinstance(obj, nn.Module):
            keys |= set(obj._buffers) | set(obj._modules) | set(obj._parameters)
        names |= {k for k in keys if k.startswith("_") and not k.startswith("__") and k not in base}
    names -= {"_input_quantizer", "_weight_quantizer"}  # also the engine's own sparse-conv slots: see below
    del torch
    return names


def private_accesses(root: Path, names: set[str], allowed: str = BACKENDS) -> list[Hit]:
    """Accesses of ``names`` outside ``allowed``: ``x.NAME`` (not on ``self``: an engine class's own
    attribute) and ``getattr/setattr/hasattr/delattr(x, "NAME")``. ``x._input_quantizer`` /
    ``x._weight_quantizer`` count too unless ``x`` is ``self`` (the engine's sparse convolution)."""
    names = names | {"_input_quantizer", "_weight_quantizer"}
    table = modules(root)
    hits = []
    for name, path in table.items():
        if name == allowed or name.startswith(allowed + "."):
            continue
        for node in _walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in names:
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                hits.append(Hit(name, node.lineno, ast.unparse(node)))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant) and node.args[1].value in names):
                hits.append(Hit(name, node.lineno, ast.unparse(node)))
    return hits


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> engine modules it imports (anywhere in its body). ``from pkg import name`` points at
    ``pkg.name`` when that is a module, else at ``pkg``. Implicit parent-package imports are left out."""
    table = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in table}
    for name, path in table.items():
        for _, target, imported in _imports(name, path, table):
            if target.split(".")[0] != PACKAGE:
                continue
            submodules = [f"{target}.{n}" for n in imported if f"{target}.{n}" in table]
            if submodules:
                graph[name].update(submodules)
            if len(submodules) < len(imported) or not imported:
                while target not in table and "." in target:
                    target = target.rpartition(".")[0]
                if target in table:
                    graph[name].add(target)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)
