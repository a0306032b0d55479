"""report.html is self-contained and shows the run's figures; report.md lists the worst layers (issue 14)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from recipe_engine.cli import main
from tests.conftest import ROOT

RECIPE = str(ROOT / "recipes" / "digits_int8.yaml")
PNG_PREFIX = "data:image/png;base64,"


class _Page(HTMLParser):
    """Every tag's attributes and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "digits"
    result = CliRunner().invoke(main, ["run", RECIPE, "--out", str(out), "--set", "disable=[stem.0]"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "metrics.json").read_text())


def test_report_html_has_no_external_references_and_its_images_are_pngs(digits_run) -> None:
    out, _ = digits_run
    page = _parse(out / "report.html")
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed"}
    for tag, attrs in page.tags:
        for key in ("src", "href", "srcset", "action", "poster"):
            if key in attrs:
                value = attrs[key]
                assert value.startswith("#") or value.startswith(PNG_PREFIX), (tag, key, value[:80])
        assert "url(" not in attrs.get("style", "")
    assert "url(" not in (out / "report.html").read_text() and "http" not in (out / "report.html").read_text()
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(images) >= 3  # per-layer SQNR plot and at least two calibration histograms
    for src in images:
        width, height = _png_size(base64.b64decode(src[len(PNG_PREFIX):], validate=True))
        assert width >= 300 and height >= 150
    anchors = {attrs["href"][1:] for tag, attrs in page.tags if tag == "a"}
    ids = {attrs["id"] for _, attrs in page.tags if "id" in attrs}
    assert anchors <= ids


def test_report_html_shows_metrics_exports_quantizers_and_every_layer(digits_run) -> None:
    out, metrics = digits_run
    text = " ".join(" ".join(_parse(out / "report.html").text).split())
    fp32, int8 = metrics["fp32"]["top1"], metrics["int8"]["top1"]
    assert f"top1 {fp32:.4g} {int8:.4g} {fp32 - int8:+.4g}" in text  # the metrics table row
    onnx, engine = metrics["exports"]
    assert onnx["status"] == "ok"
    assert f"digits.onnx onnx-qdq ok {onnx['sqnr_pytorch_db']:.4g} {onnx['sqnr_runtime_db']:.4g}" in text
    assert "digits.engine tensorrt skipped (the tensorrt Python package is not installed" in text
    for name, figures in metrics["amax"].items():  # the quantizer table: name, kind, enabled, SQNR, amax
        assert re.search(rf"{re.escape(name)} (input|weight|op) (yes|no) [-\d.e+inf]+ {figures['amax_max']:.4g} ",
                         text), name
    layers = metrics["layer_sqnr"]
    assert [item["index"] for item in layers] == list(range(len(layers))) and len(layers) == 9
    for item in layers:
        output = "inf" if item["identical"] else f"{item['output_db']:.2f}"
        assert f"{item['index']} {item['name']} {item['type']} " in text and f" {output} " in text, item
    first = layers[0]
    assert (first["name"], first["quantized"], first["identical"]) == ("stem.0", False, True)  # disabled
    assert all(item["output_db"] is not None and 20.0 < item["output_db"] < 50.0 for item in layers[1:])


def test_report_md_lists_the_worst_layers_and_links_existing_images(digits_run) -> None:
    out, metrics = digits_run
    report = (out / "report.md").read_text()
    worst = min((i for i in metrics["layer_sqnr"] if i["output_db"] is not None), key=lambda i: i["output_db"])
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    section = report.split("## Per-layer output SQNR vs FP32")[1].split("## ")[0]
    first_row = [line for line in section.splitlines() if line.startswith("| ")][1]  # after the header
    assert first_row.startswith(f"| {worst['index']} | {worst['name']} | {worst['type']} | yes |")
    assert f"{worst['output_db']:.2f}" in first_row
    assert "| 0 | stem.0 | QuantConv2d | no | inf | inf | - |" in rows
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / image).is_file(), image
    assert "layer_sqnr.png" in report


def test_failed_run_report_html_opens_with_the_failure(tmp_path) -> None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the required engine would be built")
    out = tmp_path / "digits"
    result = CliRunner().invoke(main, ["run", RECIPE, "--out", str(out), "--set", "export.1.required=true"])
    assert result.exit_code == 1
    record = tmp_path / "digits.failed"
    text = " ".join(" ".join(_parse(record / "report.html").text).split())
    assert "FAILED during export" in text and "tensorrt: cannot build the engine" in text
    metrics = json.loads((record / "metrics.json").read_text())
    assert [e["status"] for e in metrics["exports"]] == ["ok", "failed"]  # the figures of the entry that was done
    assert f"{metrics['exports'][0]['sqnr_runtime_db']:.4g}" in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (CI: skipped; "
                    "scripts/check_report_html.sh installs it)")
def test_report_html_renders_in_headless_chromium(digits_run, tmp_path) -> None:
    out, _ = digits_run
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1280,2400", f"file://{out / 'report.html'}"],
                   check=True, capture_output=True, timeout=120)
    checked = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_png.py"), str(shot), "1280", "2400"],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
