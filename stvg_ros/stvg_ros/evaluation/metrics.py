"""The STVG metrics (METHOD.md §9): the one home of tIoU, vIoU, m_tIoU, m_vIoU and vIoU@R.

Pure functions over `Query` (ground truth) and `Prediction`. Three protocols, named after the code
whose numbers they reproduce:

- ``tubedetr`` (default; the published baselines): frames sampled at 5 fps from the clip
  (`tubedetr_frames`: decoded frames 0 .. img_num − 2 for HC-STVG), spans end-exclusive, tIoU on the
  raw frame spans, vIoU over the sampled frames of the union, vIoU@R strict (>). With the default
  ``decoded`` frame ids this is TubeDETR's `hcstvg_eval.py` number for number.
- ``hcstvg_official`` (HC-STVG's `eval_hcvg.py`, the PIC challenge): every frame, inclusive ends,
  vIoU = Σ IoU over GT frames that have a predicted box / (max end − min start + 1), and tIoU =
  (number of those frames) / the same union. vIoU@R strict.
- ``stvgr1`` (STVG-R1's `evaluate.py`): spans in seconds, tIoU in seconds, frames = int(t · fps)
  (0-based decoded) with inclusive ends, all frames of the intersection, the GT box of decoded frame
  d is `bbox[d − st_frame]` (`st_frame` as written, like TubeDETR; under ``one_based`` frame ids
  this pairs each predicted box with the GT box one frame earlier), thresholds inclusive (≥) at
  0.3 / 0.5 / 0.7.

A query without a prediction, or with an empty span, scores 0 (as `eval_hcvg.py` counts it).
Box IoU is plain area IoU on [x1, y1, x2, y2] without "+1"; 0 when the union is empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stvg_ros.evaluation.errors import EvalError
from stvg_ros.evaluation.loaders import Box, Query
from stvg_ros.evaluation.predictions import Prediction

PROTOCOLS = ("tubedetr", "hcstvg_official", "stvgr1")
DEFAULT_PROTOCOL = "tubedetr"
#: TubeDETR's evaluator: frames per second it samples, and the most frames it keeps per video.
TUBEDETR_FPS = 5
TUBEDETR_MAX_FRAMES = 200
STVGR1_THRESHOLDS = (0.3, 0.5, 0.7)
COMMUNITY_THRESHOLDS = (0.3, 0.5)


@dataclass(frozen=True)
class QueryScore:
    """tIoU and vIoU of one query, with the frame counts behind vIoU."""

    query_id: str
    tiou: float
    viou: float
    predicted: bool = True  # False: no prediction (or an empty span); both IoUs are 0
    union_frames: int = 0  # |S_u| as the protocol counts it
    inter_frames: int = 0  # |S_i| as the protocol counts it
    target_id: int | None = None


# --------------------------------------------------------------------------------------------
# elementary IoUs


def box_iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    """Area IoU of two [x1, y1, x2, y2] boxes; 0 when either is None or the union is empty."""
    if a is None or b is None:
        return 0.0
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def temporal_iou_frames(pred: tuple[int, int], gt: tuple[int, int]) -> float:
    """tIoU of end-exclusive frame spans [start, end) (TubeDETR)."""
    inter = min(pred[1], gt[1]) - max(pred[0], gt[0])
    if inter <= 0:
        return 0.0
    union = (gt[1] - gt[0]) + (pred[1] - pred[0]) - inter
    return inter / union


def temporal_iou_seconds(pred: tuple[float, float], gt: tuple[float, float]) -> float:
    """tIoU of two spans in seconds [start, end]: overlap / hull, clipped at 0 (STVG-R1).

    The training reward reuses this function (METHOD.md §7)."""
    union = max(pred[1], gt[1]) - min(pred[0], gt[0])
    if union <= 0:
        return 0.0
    return max((min(pred[1], gt[1]) - max(pred[0], gt[0])) / union, 0.0)


def tubedetr_frames(
    start: int, end: int, video_fps: float, fps: int = TUBEDETR_FPS, max_frames: int = TUBEDETR_MAX_FRAMES
) -> list[int]:
    """The frames TubeDETR's evaluator samples from `range(start, end)`: frame `start`, then
    each frame whose `int(f * rate)` passes the last kept one (rate = fps / video_fps); more
    than `max_frames` are thinned to `kept[(j * n) // max_frames]`. Same float operations as the
    evaluator, so the same frames."""
    rate = fps / video_fps
    kept = [start]
    for frame in range(start, end):
        if int(kept[-1] * rate) < int(frame * rate):
            kept.append(frame)
    if len(kept) > max_frames:
        kept = [kept[(j * len(kept)) // max_frames] for j in range(max_frames)]
    return kept


def tubedetr_query_frames(query: Query) -> list[int]:
    """The evaluation frames (frame ids) of a query under the TubeDETR protocol: sampled on decoded
    frame numbers, as TubeDETR samples, then written in the query's frame ids."""
    base = query.frame_base
    return [f + base for f in tubedetr_frames(query.eval_start - base, query.eval_end - base, query.sampling_fps)]


# --------------------------------------------------------------------------------------------
# per-query scores


def _missing(query: Query, pred: Prediction | None) -> QueryScore:
    return QueryScore(query.query_id, 0.0, 0.0, predicted=False, target_id=pred.target_id if pred else None)


def score_tubedetr(query: Query, pred: Prediction | None, frames: Sequence[int] | None = None) -> QueryScore:
    """TubeDETR's `hcstvg_eval.py` / `vidstg_eval.py` for one query (`frames`: the sampled frames,
    computed when not given)."""
    if pred is None or pred.empty:
        return _missing(query, pred)
    frames = tubedetr_query_frames(query) if frames is None else frames
    gs, ge, ps, pe = query.gt_start, query.gt_end, pred.start, pred.end
    max_start, min_end = max(gs, ps), min(ge, pe)
    min_start, max_end = min(gs, ps), max(ge, pe)
    tiou = temporal_iou_frames((ps, pe), (gs, ge))
    union = [f for f in frames if min_start <= f < max_end]
    inter = [f for f in frames if max_start <= f < min_end]  # inside the GT span too
    total = sum(box_iou(pred.boxes.get(f), query.gt_boxes.get(f)) for f in inter)
    viou = total / max(len(union), 1)
    return QueryScore(query.query_id, tiou, viou, True, len(union), len(inter), pred.target_id)


def score_hcstvg_official(query: Query, pred: Prediction | None) -> QueryScore:
    """HC-STVG's `eval_hcvg.py` for one query: every frame, inclusive ends. Predicted boxes
    outside the predicted span are ignored (the submission format holds st..ed only)."""
    if pred is None or pred.empty:
        return _missing(query, pred)
    gt_st, gt_ed = query.gt_start, query.gt_end - 1
    pr_st, pr_ed = pred.start, pred.end - 1
    ious = [
        box_iou(pred.boxes[f], box)
        for f, box in query.gt_boxes.items()
        if gt_st <= f <= gt_ed and f in pred.boxes and pr_st <= f <= pr_ed
    ]
    all_frames = max(gt_ed, pr_ed) - min(gt_st, pr_st) + 1
    return QueryScore(
        query.query_id, len(ious) / all_frames, sum(ious) / all_frames, True, all_frames, len(ious), pred.target_id
    )


def _seconds_span(query: Query, pred: Prediction) -> tuple[float, float]:
    if pred.start_s is not None and pred.end_s is not None:
        return pred.start_s, pred.end_s
    return query.to_decoded(pred.start) / query.fps, query.to_decoded(pred.end - 1) / query.fps


def _gt_seconds(query: Query) -> tuple[float, float]:
    if query.gt_start_s is not None and query.gt_end_s is not None:
        return float(query.gt_start_s), float(query.gt_end_s)
    return query.to_decoded(query.gt_start) / query.fps, query.to_decoded(query.gt_end - 1) / query.fps


def score_stvgr1(query: Query, pred: Prediction | None) -> QueryScore:
    """STVG-R1's `evaluate.py` for one query, given the predicted span (seconds when the prediction
    has `span_s`, else its frames) and the predicted tube boxes."""
    if pred is None or pred.empty:
        return _missing(query, pred)
    fps = query.fps
    gt_s, gt_e = _gt_seconds(query)
    sp, ep = _seconds_span(query, pred)
    tiou = temporal_iou_seconds((sp, ep), (gt_s, gt_e))
    # decoded (0-based) frames, as the script indexes its per-frame mask store
    g0, g1 = int(gt_s * fps), int(gt_e * fps)
    if pred.start_s is not None and pred.end_s is not None:
        p0, p1 = int(sp * fps), int(ep * fps)
    else:
        p0, p1 = query.to_decoded(pred.start), query.to_decoded(pred.end - 1)
    lo, hi = max(g0, p0), min(g1, p1)
    union = max(g1, p1) - min(g0, p0) + 1
    if lo >= hi or union <= 0:
        return QueryScore(query.query_id, tiou, 0.0, True, max(union, 0), 0, pred.target_id)
    total = 0.0
    for decoded in range(lo, hi + 1):
        # the script reads GT bbox[d - st_frame] with a 0-based d: GT frame id d, whatever the convention
        total += box_iou(pred.boxes.get(query.to_annotation(decoded)), query.gt_boxes.get(decoded))
    return QueryScore(query.query_id, tiou, total / union, True, union, hi - lo + 1, pred.target_id)


def score_query(query: Query, pred: Prediction | None, protocol: str = DEFAULT_PROTOCOL) -> QueryScore:
    if protocol == "tubedetr":
        return score_tubedetr(query, pred)
    if protocol == "hcstvg_official":
        return score_hcstvg_official(query, pred)
    if protocol == "stvgr1":
        return score_stvgr1(query, pred)
    raise EvalError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")


# --------------------------------------------------------------------------------------------
# aggregates


def thresholds_of(protocol: str) -> tuple[tuple[float, ...], str]:
    """(vIoU@R thresholds, comparison) of a protocol."""
    return (STVGR1_THRESHOLDS, ">=") if protocol == "stvgr1" else (COMMUNITY_THRESHOLDS, ">")


def _share(values: np.ndarray, threshold: float, rule: str) -> float:
    if not len(values):
        return 0.0
    hits = values >= threshold if rule == ">=" else values > threshold
    return float(np.mean(hits))


def summarize(scores: Sequence[QueryScore], protocol: str = DEFAULT_PROTOCOL) -> dict:
    """m_tIoU, m_vIoU and vIoU@R (fractions in [0, 1]) over all queries; missing ones count 0."""
    thresholds, rule = thresholds_of(protocol)
    tious = np.array([s.tiou for s in scores], dtype=np.float64)
    vious = np.array([s.viou for s in scores], dtype=np.float64)
    summary = {
        "protocol": protocol,
        "n_queries": len(scores),
        "n_predicted": sum(1 for s in scores if s.predicted),
        "m_tIoU": float(tious.mean()) if len(tious) else 0.0,
        "m_vIoU": float(vious.mean()) if len(vious) else 0.0,
        "threshold_rule": rule,
    }
    for threshold in thresholds:
        summary[f"vIoU@{threshold}"] = _share(vious, threshold, rule)
    if protocol == "stvgr1":
        for threshold in thresholds:
            summary[f"tIoU@{threshold}"] = _share(tious, threshold, rule)
    summary["n_missing"] = summary["n_queries"] - summary["n_predicted"]
    return summary


def evaluate(
    queries: Iterable[Query], predictions: Mapping[str, Prediction], protocol: str = DEFAULT_PROTOCOL
) -> tuple[dict, list[QueryScore]]:
    """Score every query (missing predictions count 0). Returns (summary with `per_video`, and
    `by_qtype` when the queries have sentence types, scores)."""
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    queries = list(queries)
    scores = [score_query(q, predictions.get(q.query_id), protocol) for q in queries]
    summary = summarize(scores, protocol)
    # VidSTG results are reported per sentence type (declarative / interrogative), as TubeDETR does
    qtypes = sorted({q.qtype for q in queries if q.qtype})
    if qtypes:
        summary["by_qtype"] = {
            qtype: summarize([s for q, s in zip(queries, scores, strict=True) if q.qtype == qtype], protocol)
            for qtype in qtypes
        }
    summary["per_video"] = {s.query_id: {"tIoU": s.tiou, "vIoU": s.viou, "predicted": s.predicted} for s in scores}
    return summary, scores


# --------------------------------------------------------------------------------------------
# diagnostics: the perception ceiling and ID accuracy

#: frame id -> (track IDs (N,), boxes (N, 4) xyxy) of the tracker on that frame
FrameTracks = Mapping[int, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Ceiling:
    """The best vIoU reachable with the tracker's tracks had the model named the right ID and
    span (the GT span: any other span only adds union frames), and which track gives it."""

    query_id: str
    viou: float
    track_id: int | None  # None: no track on any GT frame


def track_tube(frame_tracks: FrameTracks, track_id: int, start: int, end: int) -> dict[int, Box]:
    """Boxes of one track on the frames [start, end) where it exists."""
    tube: dict[int, Box] = {}
    for frame in range(start, end):
        entry = frame_tracks.get(frame)
        if entry is None:
            continue
        ids, boxes = entry
        rows = np.flatnonzero(np.asarray(ids) == track_id)
        if len(rows):
            tube[frame] = tuple(float(v) for v in np.asarray(boxes)[rows[0]])
    return tube


def perception_ceiling(query: Query, frame_tracks: FrameTracks, protocol: str = DEFAULT_PROTOCOL) -> Ceiling:
    """Max over the tracks present in the GT span of the vIoU of (GT span, that track's boxes).

    Scored with the same protocol as the predictions, so ceiling and score are comparable.
    Ties go to the smaller track ID."""
    candidates: set[int] = set()
    for frame in range(query.gt_start, query.gt_end):
        entry = frame_tracks.get(frame)
        if entry is not None:
            candidates.update(int(t) for t in np.asarray(entry[0]).tolist() if int(t) >= 0)
    best = Ceiling(query.query_id, 0.0, None)
    frames = tubedetr_query_frames(query) if protocol == "tubedetr" else None
    for track_id in sorted(candidates):
        oracle = Prediction(
            query.query_id,
            query.gt_start,
            query.gt_end,
            track_tube(frame_tracks, track_id, query.gt_start, query.gt_end),
            start_s=query.gt_start_s,
            end_s=query.gt_end_s,
        )
        score = score_tubedetr(query, oracle, frames) if frames is not None else score_query(query, oracle, protocol)
        if score.viou > best.viou:
            best = Ceiling(query.query_id, score.viou, track_id)
    return best


def id_accuracy(pairs: Iterable[tuple[int | None, int | None]]) -> float | None:
    """Share of (predicted ID, reference ID) pairs that agree, over pairs with a reference.
    None when no pair has one. A missing prediction counts as wrong."""
    judged = [(p, r) for p, r in pairs if r is not None]
    if not judged:
        return None
    return sum(1 for p, r in judged if p is not None and int(p) == int(r)) / len(judged)
