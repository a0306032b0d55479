"""No import cycles among recipe_engine's modules, imports inside functions included (issue 12)."""

from __future__ import annotations

from tests.architecture import scan
from tests.conftest import ROOT


def test_no_import_cycles() -> None:
    found = scan.cycles(scan.import_graph(ROOT))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_scan_sees_function_level_imports(tmp_path) -> None:
    package = tmp_path / scan.PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    graph = scan.import_graph(tmp_path)
    assert graph["recipe_engine.a"] == {"recipe_engine.sub.b"}
    assert graph["recipe_engine.c"] == set()
    assert scan.cycles(graph) == [["recipe_engine.a", "recipe_engine.sub.b"]]
