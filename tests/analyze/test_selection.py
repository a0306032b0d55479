"""Honest selection: with data.test, tune and QAT keep_best choose on data.validation and the run
reports figures measured on data.test (both are kept in metrics.json)."""

from __future__ import annotations

import copy
import json

import pytest

from recipe_engine.pipeline import as_loaded, run_recipe
from tests.analyze.split_models import SPLIT_IDS
from tests.train.common import BASE

VAL, TEST = SPLIT_IDS["validation"], SPLIT_IDS["test"]


def _recipe(**extra) -> dict:
    data = copy.deepcopy(BASE)
    data["qat"] = None
    data["data"]["validation"] = {"factory": "tests.analyze.split_models:tagged_data",
                                  "kwargs": {"split": "validation", "seed": 2}}
    data["data"]["test"] = {"factory": "tests.analyze.split_models:tagged_data", "kwargs": {"split": "test", "seed": 3}}
    data["data"]["evaluate"] = "tests.analyze.split_models:split_energy"
    data.update(extra)
    return {k: v for k, v in data.items() if v is not None}


def _run(tmp_path, data: dict) -> dict:
    metrics = run_recipe(as_loaded(data), tmp_path / "run", show_progress=False)
    assert metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    return metrics


def _check_splits(metrics: dict, phases: tuple[str, ...]) -> None:
    assert metrics["reported_split"] == "test"
    for phase in phases:
        assert metrics[phase] == metrics["test"][phase]            # the reported figure is the test one
        assert metrics["test"][phase]["split"] == TEST
        assert metrics["validation"][phase]["split"] == VAL
        assert metrics["test"][phase]["neg_mse"] != metrics["validation"][phase]["neg_mse"]


def test_tune_selects_on_validation_and_reports_test(tmp_path) -> None:
    tune = {"metric": "neg_mse", "max_drop": 1e-6, "budget": 12, "strategy": "leave_one_out"}
    metrics = _run(tmp_path, _recipe(tune=tune))
    _check_splits(metrics, ("fp32", "int8"))
    table = metrics["tune"]
    assert table["selected_on"] == "validation"
    assert table["fp32"] == pytest.approx(metrics["validation"]["fp32"]["neg_mse"])
    assert table["final"] == pytest.approx(metrics["validation"]["int8"]["neg_mse"])  # what it chose on
    assert metrics["int8"]["neg_mse"] != pytest.approx(table["final"])                # is not what it reports
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| reported split | data.test" in report and "| neg_mse (validation, selection) |" in report


def test_keep_best_selects_on_validation_and_reports_test(tmp_path) -> None:
    qat = copy.deepcopy(BASE["qat"])
    qat.update(steps=6, eval_every=2, keep_best="neg_mse")
    metrics = _run(tmp_path, _recipe(qat=qat))
    _check_splits(metrics, ("fp32", "int8", "qat"))
    log = [json.loads(line) for line in (tmp_path / "run" / "qat_log.jsonl").read_text().splitlines()]
    chosen_on = [e["eval"] for e in log if "eval" in e]
    assert len(chosen_on) == 3 and all(e["split"] == VAL for e in chosen_on)
    assert metrics["qat_best"]["value"] == max(e["neg_mse"] for e in chosen_on)
    assert metrics["validation"]["qat"]["neg_mse"] == metrics["qat_best"]["value"]
    assert metrics["qat"]["neg_mse"] != pytest.approx(metrics["qat_best"]["value"])


def test_without_test_split_the_validation_figures_are_reported(tmp_path) -> None:
    data = _recipe()
    del data["data"]["test"]
    metrics = _run(tmp_path, data)
    assert metrics["reported_split"] == "validation"
    assert "test" not in metrics and "validation" not in metrics
    assert metrics["int8"]["split"] == VAL


def test_without_validation_split_the_figures_say_they_are_on_the_calibration_data(tmp_path) -> None:
    data = _recipe()
    del data["data"]["test"], data["data"]["validation"], data["data"]["evaluate"]
    data["data"]["evaluate"] = "tests.train.models:energy"
    metrics = _run(tmp_path, data)
    assert metrics["reported_split"] == "calibration"  # was "validation": the INT8 figure is on the data it calibrated on
    assert "| reported split | the calibration batches (data.validation is not set) |" in \
        (tmp_path / "run" / "report.md").read_text()
