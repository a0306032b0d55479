"""torchrun with 2 gloo processes: merged calibration equals one process; QAT runs; only rank 0 writes."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from recipe_engine.train import distributed
from tests.train.common import BASE, prepared

WORKER = Path(__file__).with_name("dist_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def dist_recipe() -> dict:
    data = copy.deepcopy(BASE)
    data["data"]["calibration"]["kwargs"] = {"count": 6}
    data["quantizers"]["act_max"] = {}  # a max calibrator on activations: all-reduce max across ranks
    data["rules"].append({"select": {"type": "tests.helpers:TinyDenseNet"}, "ops": {"cat": "act_max"}})
    data["qat"].update(steps=3, log_every=1, checkpoint_every=2)
    return data


def test_two_gloo_ranks_calibrate_like_one_process_and_only_rank0_writes(tmp_path) -> None:
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(dist_recipe()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(WORKER), str(path), str(tmp_path / "out")]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rank 0 done: calibration_batches=6" in done.stdout
    assert "rank 1 done: calibration_batches=6" in done.stdout

    rank0 = tmp_path / "out" / "rank0"
    assert not [p for p in (tmp_path / "out").iterdir() if "rank1" in p.name]  # rank 1 writes nothing at all
    assert {"model.pt", "metrics.json", "recipe.lock.yaml", "qat_checkpoint.pt", "qat_log.jsonl"} <= {
        p.name for p in rank0.iterdir()}
    log = (rank0 / "qat_log.jsonl").read_text().splitlines()
    assert len([line for line in log if '"loss"' in line]) == 3

    saved = torch.load(rank0 / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    single, _ = prepared(dist_recipe())  # one process, all 6 calibration batches
    expected = {k: v for k, v in single.state_dict().items() if k.endswith("_amax")}
    assert expected and expected.keys() <= saved.keys()
    assert "cat0._amax" in "".join(expected)  # the max-calibrated op site is compared too
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, rtol=1e-6, atol=0, msg=key)


# ----------------------------------------------------------------------------- single-process units
def test_merge_rank_statistics() -> None:
    from recipe_engine.train.distributed import merge_rank_statistics

    merged = merge_rank_statistics([{"amax": torch.tensor([1.0, 5.0])}, None, {"amax": torch.tensor([3.0, 2.0])}])
    assert torch.equal(merged["amax"], torch.tensor([3.0, 5.0]))
    edges = torch.linspace(0, 4, 5)
    a = {"hist": torch.tensor([1.0, 2, 3, 4]), "edges": edges}
    b = {"hist": torch.tensor([1.0, 1, 1, 1, 1, 1]), "edges": torch.arange(0, 7.0)}  # same grid, wider
    merged = merge_rank_statistics([a, b])
    assert torch.equal(merged["hist"], torch.tensor([2.0, 3, 4, 5, 1, 1]))
    assert torch.equal(merged["edges"], torch.arange(0, 7.0))
    assert merge_rank_statistics([None, None]) is None


def test_shards_are_disjoint_equal_and_resumable() -> None:
    data = list(range(11))
    shards = [list(distributed.shard(data, rank_=r, ranks=3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert list(distributed.shard(data, 2, rank_=1, ranks=3)) == [7]
    assert list(distributed.shard(iter(data), 1, rank_=0, ranks=2)) == [2, 4, 6, 8, 10]  # unsized: all
    assert list(distributed.shard(data)) == data and distributed.shard_length(data) == 11


def test_nproc_builds_a_torchrun_command() -> None:
    command = distributed.torchrun_command(2, ["run", "r.yaml", "--out", "o"])
    assert command[:3] == [sys.executable, "-m", "recipe_engine.train.launch"]  # torchrun without its tracebacks
    assert "--nproc_per_node=2" in command and command[-5:] == ["recipe_engine.cli", "run", "r.yaml", "--out", "o"]


@pytest.mark.parametrize("value", [None, True, False])
def test_helpers_are_no_ops_in_one_process(value) -> None:
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.is_main()
    assert distributed.all_gather_object(value) == [value] and distributed.broadcast_object(value) is value
