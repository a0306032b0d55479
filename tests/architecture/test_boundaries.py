"""Only the backend packages know the quantization libraries (issue 12)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.architecture import scan
from tests.conftest import ROOT


def test_no_library_import_outside_the_backends() -> None:
    hits = scan.library_imports(ROOT)
    assert not hits, "import pytorch_quantization/modelopt only in recipe_engine/backends/:\n" + "\n".join(map(str, hits))


def test_no_private_attribute_of_library_objects_outside_the_backends() -> None:
    names = scan.library_private_names()
    assert {"_amax", "_calibrator", "_disabled", "_calib_hist", "_if_calib"} <= names  # the scan sees the libraries
    hits = scan.private_accesses(ROOT, names)
    assert not hits, "use recipe_engine.quant.backend instead of:\n" + "\n".join(map(str, hits))


def test_the_scans_find_what_they_look_for(tmp_path) -> None:
    package = tmp_path / scan.PACKAGE
    (package / "backends").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "backends" / "__init__.py").write_text("import modelopt\n")  # allowed here
    (package / "bad.py").write_text(textwrap.dedent("""
        def f(q):
            from pytorch_quantization import nn
            return q._amax, getattr(q, "_calibrator"), self._amax
    """))
    assert [str(h) for h in scan.library_imports(tmp_path)] == ["recipe_engine.bad:3: imports pytorch_quantization"]
    hits = scan.private_accesses(tmp_path, {"_amax", "_calibrator"})
    assert sorted(h.text for h in hits) == ["getattr(q, '_calibrator')", "q._amax"]


def test_importing_every_module_loads_no_library() -> None:
    """Every engine module imports without loading a library: only using a backend loads it."""
    names = [n for n in scan.modules(ROOT) if not n.startswith(scan.BACKENDS + ".")]
    code = textwrap.dedent(f"""
        import importlib, sys
        for name in {names!r}:
            importlib.import_module(name)
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & {set(scan.LIBRARIES)!r})
        print(len({names!r}), loaded)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    count, loaded = out.stdout.split(maxsplit=1)
    assert int(count) > 60
    assert loaded.strip() == "[]", f"importing the engine loaded {loaded.strip()}"
