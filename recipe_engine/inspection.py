"""``recipe inspect model.pt``: what a saved model holds, read without building or importing anything.

The file is read with ``torch.load(weights_only=True)``; its recipe lock is parsed by the recipe
loader for display only, with imports refused; the model is never built.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .model_file import read_model_file, recipe_from_lock


def _amax(value) -> str:
    """An amax with 4 significant digits (amax values span orders of magnitude)."""
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def inspect_model(path: str | Path) -> dict:
    """A saved model's recipe, quantizers (amax, enabled), disabled set and exports; builds nothing."""
    import torch

    from .util.imports import imports_refused

    payload = read_model_file(path)
    with imports_refused(f"{path}'s recipe"):
        loaded = recipe_from_lock(payload["lock"], f"{path} (its recipe lock)")
    spec = loaded.spec
    disabled = list(payload.get("disabled", []))
    quantizers: dict[str, dict] = {}
    for key, value in payload.get("state_dict", {}).items():
        if not key.endswith("amax") or not isinstance(value, torch.Tensor):
            continue
        name = _quantizer_name(key)
        quantizers[name] = {"amax": float(value.detach().abs().max()) if value.numel() else None,
                            "channels": int(value.numel()), "enabled": name not in disabled}
    exports = [entry.model_dump(exclude_defaults=True) if hasattr(entry, "model_dump") else dict(entry)
               for entry in (spec.export or [])]
    return {"file": str(path), "recipe": spec.recipe, "version": spec.version, "sha256": payload.get("sha256"),
            "quantizers": quantizers, "disabled": disabled, "exports": exports}


def _quantizer_name(key: str) -> str:
    """``block1.conv1._input_quantizer._amax`` -> ``block1.conv1.input`` (the names of metrics.json's ``amax``)."""
    name = key.rsplit(".", 1)[0]
    for slot, short in (("._input_quantizer", ".input"), ("._weight_quantizer", ".weight")):
        if name.endswith(slot):
            return name.removesuffix(slot) + short
    return name.replace("._recipe_op_quantizers.", ".")


def print_inspection(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    click.echo(f"{info['file']}: recipe {info['recipe']} {info['version']}, sha256 {info['sha256']}")
    table = Table("quantizer", "amax", "channels", "enabled", box=None, pad_edge=False)
    for name, q in info["quantizers"].items():
        table.add_row(Text(name), _amax(q["amax"]), str(q["channels"]), "yes" if q["enabled"] else "no")
    Console(width=200, highlight=False, file=sys.stdout).print(table)
    click.echo(f"disabled ({len(info['disabled'])}): {', '.join(info['disabled']) or '-'}")
    click.echo("exports:" if info["exports"] else "exports: (none)")
    for entry in info["exports"]:
        click.echo("  " + ", ".join(f"{k}={v}" for k, v in entry.items()))
