"""Metrics: BEV centre-distance mAP for the detectors, top-1 accuracy for digits.

mAP follows nuScenes' matching rule (greedy by descending score, each detection matched to
the closest unmatched ground-truth centre of the same class and scene within a distance
threshold; thresholds 0.5/1/2/4 m). AP per class and threshold is the area under the
monotone precision envelope sampled at 101 recall points (no nuScenes min-recall/precision
clipping); mAP is the mean over classes and thresholds, in [0, 100].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DIST_THRESHOLDS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class BEVGrid:
    """Geometry of a detector output map: ``x = x_min + (ix + dx) * cell`` (same for y)."""

    x_min: float = -25.6
    y_min: float = -25.6
    cell: float = 1.6
    size: int = 32


@dataclass(frozen=True)
class Detections:
    """Detections of one scene: ``cls`` int64 [K], ``score`` float32 [K], ``center`` [K, 2]."""

    cls: np.ndarray
    score: np.ndarray
    center: np.ndarray


def decode_centers(output: torch.Tensor, num_classes: int, grid: BEVGrid = BEVGrid(),
                   top_k: int = 64) -> list[Detections]:
    """Heatmap peaks (3x3 max-pool NMS) -> top-K detections per scene.

    ``output`` is [B, num_classes + 2, H, W]: heatmap logits then centre offset (dx, dy).
    """
    output = output.detach().float().cpu()
    heat = torch.sigmoid(output[:, :num_classes])
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    b, c, h, w = heat.shape
    k = min(top_k, c * h * w)
    scores, flat = peaks.view(b, -1).topk(k, dim=1)
    cls = flat // (h * w)
    iy = (flat % (h * w)) // w
    ix = flat % w
    dets = []
    for i in range(b):
        dx = output[i, num_classes, iy[i], ix[i]]
        dy = output[i, num_classes + 1, iy[i], ix[i]]
        cx = grid.x_min + (ix[i].float() + dx) * grid.cell
        cy = grid.y_min + (iy[i].float() + dy) * grid.cell
        keep = scores[i] > 0
        dets.append(Detections(cls[i][keep].numpy().astype(np.int64), scores[i][keep].numpy(),
                               torch.stack([cx, cy], 1)[keep].numpy()))
    return dets


def _average_precision(tp: np.ndarray, num_gt: int) -> float:
    """101-point interpolated AP of a score-sorted TP/FP sequence."""
    if num_gt == 0 or len(tp) == 0:
        return 0.0
    ctp = np.cumsum(tp)
    precision = ctp / np.arange(1, len(tp) + 1)
    recall = ctp / num_gt
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    ap = 0.0
    for r in np.linspace(0.0, 1.0, 101):
        idx = np.searchsorted(recall, r, side="left")
        ap += envelope[idx] if idx < len(envelope) else 0.0
    return float(ap / 101.0)


def bev_center_map(detections: Sequence[Detections], gt_cls: Sequence[np.ndarray],
                   gt_center: Sequence[np.ndarray], num_classes: int,
                   thresholds: Sequence[float] = DIST_THRESHOLDS) -> dict[str, float]:
    """mAP (and per-class AP) in [0, 100]; classes without any ground truth are skipped."""
    per_class: dict[int, list[float]] = {}
    for c in range(num_classes):
        num_gt = int(sum((g == c).sum() for g in gt_cls))
        if num_gt == 0:
            continue
        scene, score, center = [], [], []
        for s, d in enumerate(detections):
            m = d.cls == c
            scene.append(np.full(int(m.sum()), s))
            score.append(d.score[m])
            center.append(d.center[m])
        scene_a = np.concatenate(scene)
        score_a = np.concatenate(score)
        center_a = np.concatenate(center).reshape(-1, 2)
        order = np.lexsort((scene_a, -score_a))  # by score desc, ties by scene (deterministic)
        aps = []
        for thr in thresholds:
            gts = [np.asarray(gc)[np.asarray(gl) == c] for gl, gc in zip(gt_cls, gt_center, strict=True)]
            used = [np.zeros(len(g), bool) for g in gts]
            tp = np.zeros(len(order))
            for j, o in enumerate(order):
                g, u = gts[scene_a[o]], used[scene_a[o]]
                if len(g) == 0:
                    continue
                dist = np.where(u, np.inf, np.linalg.norm(g - center_a[o], axis=1))
                best = int(dist.argmin())
                if dist[best] <= thr:
                    u[best] = True
                    tp[j] = 1.0
            aps.append(_average_precision(tp, num_gt))
        per_class[c] = aps
    if not per_class:
        return {"mAP": 0.0}
    result = {"mAP": 100.0 * float(np.mean([np.mean(v) for v in per_class.values()]))}
    result.update({f"AP_{c}": 100.0 * float(np.mean(v)) for c, v in per_class.items()})
    return result


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 100]."""
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())
