"""Markdown tables of the measured rows: one table per model, mean +- sample s.d. over the seeds."""

from __future__ import annotations

from collections.abc import Sequence

from .common import Row, fmt, mean_spread, table
from .models import Settings


def _cell(values: Sequence[float]) -> str:
    mean, spread = mean_spread(values)
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {spread:.2f}" if len(values) > 1 else f"{mean:.2f}"


def _drop(values: Sequence[float], reference: float | None) -> str:
    mean, _ = mean_spread(values)
    return "-" if mean is None or reference is None else f"{reference - mean:+.2f}"


def model_table(name: str, metric: str, rows: Sequence[Row], has_val: bool) -> str:
    """One model's table; FP32 is the first row (its drop reference)."""
    fp32 = rows[0]
    ref_test, _ = mean_spread(fp32.values("test"))
    ref_val, _ = mean_spread(fp32.values("val"))
    split = "test" if has_val else "(one split)"
    header = ["method", f"{metric} {split}", "drop", *([f"{metric} val", "drop val"] if has_val else []),
              "quantize s", "seeds", "produced by", "notes"]
    out = []
    for row in rows:
        test, val = row.values("test"), row.values("val")
        seconds = [m.seconds for m in row.measures.values() if m.seconds is not None]
        mean_s, _ = mean_spread(seconds)
        notes = row.status or next((m.note for m in row.measures.values() if m.note), "")
        seeds = ",".join(str(s) for s in sorted(row.measures)) or "-"
        cells = [row.label, _cell(test), _drop(test, ref_test) if row is not fp32 else "-"]
        if has_val:
            cells += [_cell(val), _drop(val, ref_val) if row is not fp32 else "-"]
        cells += [fmt(mean_s, 1), seeds, row.how, notes]
        out.append(cells)
    right = (1, 2, 3, 4, 5) if has_val else (1, 2, 3)
    return table(header, out, right=right)


def document(settings: Settings, sections: Sequence[tuple[str, str, list[Row], bool]], footer: str) -> str:
    """The whole markdown output: a heading, one table per model, the notes."""
    mode = "--quick" if settings.quick else "full"
    lines = [f"# INT8 accuracy side by side ({mode} run; seeds {','.join(map(str, settings.seeds))}; "
             f"{settings.threads} threads)", ""]
    for name, metric, rows, has_val in sections:
        lines += [f"## {name}", "", model_table(name, metric, rows, has_val), ""]
    lines += [footer]
    return "\n".join(lines) + "\n"
