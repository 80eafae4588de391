"""Tracking quality against synthetic ground truth: IDF1 and ID switches (motmetrics), ID kept
across an occlusion.

motmetrics 1.4's `distances.iou_matrix` uses `np.asfarray` (gone in NumPy 2), so the IoU
distances are computed here and handed to `MOTAccumulator.update`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stvg_ros.core.types import Tracks


def iou_distance(gt_xyxy: np.ndarray, hyp_xyxy: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """(G, H) matrix of 1 - IoU, NaN where IoU < min_iou (motmetrics' "cannot match")."""
    a, b = np.asarray(gt_xyxy, np.float64).reshape(-1, 4), np.asarray(hyp_xyxy, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None] + ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None]
    iou = inter / np.maximum(union - inter, 1e-9)
    return np.where(iou >= min_iou, 1.0 - iou, np.nan)


def mot_accumulator(gt_per_frame: Sequence[Tracks], hyp_per_frame: Sequence[Tracks], min_iou: float = 0.5):
    """A motmetrics MOTAccumulator over paired per-frame ground truth and tracker output."""
    import motmetrics as mm

    if len(gt_per_frame) != len(hyp_per_frame):
        raise ValueError(f"{len(gt_per_frame)} ground-truth frames but {len(hyp_per_frame)} tracked frames")
    acc = mm.MOTAccumulator(auto_id=True)
    for gt, hyp in zip(gt_per_frame, hyp_per_frame, strict=True):
        acc.update(gt.track_id.tolist(), hyp.track_id.tolist(), iou_distance(gt.xyxy, hyp.xyxy, min_iou))
    return acc


def mot_summary(accumulators: Sequence, names: Sequence[str]) -> dict:
    """Overall IDF1, ID switches, MOTA, recall, precision over several sequences."""
    import motmetrics as mm

    metrics = ["idf1", "num_switches", "mota", "recall", "precision", "num_frames"]
    summary = mm.metrics.create().compute_many(
        list(accumulators), metrics=metrics, names=list(names), generate_overall=True
    )
    overall = summary.loc["OVERALL"]
    return {m: (int(overall[m]) if m in ("num_switches", "num_frames") else float(overall[m])) for m in metrics}


def id_at(tracks: Tracks, box: np.ndarray, min_iou: float = 0.5) -> int | None:
    """The track ID whose box best overlaps `box` (IoU >= min_iou), or None."""
    if len(tracks) == 0:
        return None
    distance = iou_distance(np.asarray(box)[None], tracks.xyxy, min_iou)[0]
    if np.all(np.isnan(distance)):
        return None
    return int(tracks.track_id[int(np.nanargmin(distance))])


def id_kept_across_gap(
    gt_boxes: np.ndarray, visible: np.ndarray, hyp_per_frame: Sequence[Tracks], gap: tuple[int, int], look: int = 15
) -> tuple[int | None, int | None]:
    """(ID before, ID after) of an object fully hidden over frames gap=[start, end]: the ID on the
    last frame before the gap and the first frame after it where the object is matched (within
    `look` frames). `gt_boxes` (F, 4) and `visible` (F,) are the object's ground truth."""
    start, end = gap

    def matched(frame: int) -> int | None:
        return id_at(hyp_per_frame[frame], gt_boxes[frame]) if visible[frame] > 0 else None

    before = next((i for f in range(start - 1, max(-1, start - 1 - look), -1) if (i := matched(f)) is not None), None)
    after = next(
        (i for f in range(end + 1, min(len(hyp_per_frame), end + 1 + look)) if (i := matched(f)) is not None), None
    )
    return before, after
