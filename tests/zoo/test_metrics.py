"""BEV centre mAP and top-1 sanity."""

from __future__ import annotations

import numpy as np
import torch

from recipe_engine.zoo import centerpoint
from recipe_engine.zoo.detection import NUM_CLASSES, OUTPUT_GRID, render_targets
from recipe_engine.zoo.metrics import Detections, bev_center_map, decode_centers, top1


def _labels(n_scenes: int = 12):
    batch = centerpoint.make_batch(list(range(2_000_000, 2_000_000 + n_scenes)))
    cls = [c[c >= 0].numpy() for c in batch["gt_cls"]]
    ctr = [x[c >= 0].numpy() for c, x in zip(batch["gt_cls"], batch["gt_center"], strict=True)]
    return batch, cls, ctr


def test_perfect_heatmap_gives_100() -> None:
    batch, cls, ctr = _labels()
    t = render_targets(batch["gt_cls"], batch["gt_center"], batch["gt_size"])
    logits = torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4))  # rendered Gaussians as logits
    out = torch.cat([logits, t["offset"]], dim=1)
    assert out.shape[-1] == OUTPUT_GRID.size
    res = bev_center_map(decode_centers(out, NUM_CLASSES), cls, ctr, NUM_CLASSES)
    assert res["mAP"] > 99.9
    assert {"AP_0", "AP_1", "AP_2"} <= set(res)


def test_empty_predictions_give_0() -> None:
    _, cls, ctr = _labels(4)
    empty = [Detections(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 2), np.float32))] * 4
    assert bev_center_map(empty, cls, ctr, NUM_CLASSES)["mAP"] == 0.0


def test_thresholds_and_false_positives() -> None:
    gt_cls = [np.array([0, 0])]
    gt_ctr = [np.array([[0.0, 0.0], [10.0, 0.0]])]
    # one exact hit, one 1.5 m off: AP@0.5=AP@1 = 50 (101-pt), AP@2=AP@4 = 100
    det = Detections(np.array([0, 0]), np.array([0.9, 0.8], np.float32), np.array([[0.0, 0.0], [11.5, 0.0]]))
    res = bev_center_map([det], gt_cls, gt_ctr, 1)
    assert abs(res["mAP"] - (2 * 51 / 101 * 100 + 2 * 100) / 4) < 1e-6
    # a higher-scored false positive lowers precision
    fp = Detections(np.array([0, 0, 0]), np.array([0.95, 0.9, 0.8], np.float32),
                    np.array([[-20.0, -20.0], [0.0, 0.0], [10.0, 0.0]]))
    assert bev_center_map([fp], gt_cls, gt_ctr, 1)["mAP"] < 100.0


def test_top1() -> None:
    logits = torch.eye(4)
    assert top1(logits, torch.arange(4)) == 100.0
    assert top1(logits, torch.tensor([0, 1, 0, 0])) == 50.0
