"""Exit 1 unless a PNG screenshot is non-trivial: it decodes, has the expected size, and is neither blank
nor a single flat colour (most of a rendered report is white; its tables, text and plots are not).

Usage: python scripts/check_png.py SCREENSHOT.png [WIDTH HEIGHT]   (prints the figures it checked)
"""

from __future__ import annotations

import sys


def png_figures(path: str) -> dict:
    """Width, height, the share of pixels that are not (near) white, and the number of distinct colours."""
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(path, format="png")  # floats in [0, 1], H x W x 3|4
    rgb = (pixels[..., :3] * 255).round().astype(np.uint8)
    flat = rgb.reshape(-1, 3)
    ink = float((flat.min(axis=1) < 235).mean())
    colours = len(np.unique(flat[:: max(1, len(flat) // 200_000)], axis=0))
    return {"width": rgb.shape[1], "height": rgb.shape[0], "ink": ink, "colours": colours}


def check(path: str, width: int | None = None, height: int | None = None) -> list[str]:
    with open(path, "rb") as handle:
        if handle.read(8) != b"\x89PNG\r\n\x1a\n":
            return [f"{path} is not a PNG"]
    figures = png_figures(path)
    problems = []
    if width and height and (figures["width"], figures["height"]) != (width, height):
        problems.append(f"size {figures['width']}x{figures['height']}, expected {width}x{height}")
    if not 0.03 < figures["ink"] < 0.9:
        problems.append(f"{figures['ink']:.1%} of the pixels are not white (blank or flat page)")
    if figures["colours"] < 64:
        problems.append(f"only {figures['colours']} distinct colours (no plots rendered?)")
    print(f"{path}: {figures['width']}x{figures['height']}, {figures['ink']:.1%} ink, {figures['colours']} colours")
    return problems


if __name__ == "__main__":
    size = [int(v) for v in sys.argv[2:4]] if len(sys.argv) >= 4 else [None, None]
    found = check(sys.argv[1], *size)
    for problem in found:
        print(f"screenshot check failed: {problem}", file=sys.stderr)
    sys.exit(1 if found else 0)
