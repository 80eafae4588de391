"""Scoring with diagnostics: metrics + perception ceiling + ID accuracy + where each query failed.

`score_files` is what `stvg-ros eval score` runs; the offline runner and replay call `score` with
what they produced in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from stvg_ros.evaluation.errors import EvalError
from stvg_ros.evaluation.loaders import AnnotationSet, load_annotations
from stvg_ros.evaluation.metrics import (
    DEFAULT_PROTOCOL,
    QueryScore,
    evaluate,
    id_accuracy,
    perception_ceiling,
    thresholds_of,
)
from stvg_ros.evaluation.predictions import Prediction, check_predictions, load_predictions
from stvg_ros.evaluation.tracks import TrackLog

#: vIoU above which a query counts as grounded when attributing failures (the headline vIoU@0.5).
SUCCESS_VIOU = 0.5


def error_source(score: QueryScore, ceiling_viou: float | None, id_correct: bool | None) -> str:
    """Why a query failed: ok | no_answer | perception (no track can reach SUCCESS_VIOU) |
    model_id (a good track existed, the model named another) | model_span (right ID, wrong time) |
    unattributed (vIoU too low, but neither tracks nor reference IDs are known)."""
    if not score.predicted:
        return "no_answer"
    if score.viou > SUCCESS_VIOU:
        return "ok"
    if ceiling_viou is not None and ceiling_viou <= SUCCESS_VIOU:
        return "perception"
    if id_correct is False:
        return "model_id"
    return "model_span" if id_correct else "unattributed"


def score(
    annotations: AnnotationSet,
    predictions: Mapping[str, Prediction],
    protocol: str = DEFAULT_PROTOCOL,
    tracks: TrackLog | None = None,
    require_all: bool = False,
) -> tuple[dict, list[QueryScore]]:
    """Check the predictions against the annotations, score them and add the diagnostics.

    Summary keys: m_tIoU, m_vIoU, vIoU@R, protocol, frame_ids, benchmark, n_queries, n_predicted,
    n_missing, per_video, id_accuracy, id_reference, perception_ceiling (with tracks),
    error_sources, warnings."""
    check_predictions(predictions, annotations)
    queries = list(annotations)
    missing = [q.query_id for q in queries if q.query_id not in predictions]
    if require_all and missing:
        raise EvalError(f"{len(missing)} queries have no prediction, e.g. {missing[0]!r}")
    summary, scores = evaluate(queries, predictions, protocol)
    per_video = summary["per_video"]

    ceilings: dict[str, float] = {}
    references: dict[str, int | None] = {}
    if tracks is not None:
        for query in queries:
            ceiling = perception_ceiling(query, tracks.frames(query.video_id), protocol)
            ceilings[query.query_id] = ceiling.viou
            references[query.query_id] = ceiling.track_id
            per_video[query.query_id].update(ceiling_vIoU=ceiling.viou, ceiling_track_id=ceiling.track_id)
        summary["id_reference"] = "tracks"
    elif any(q.target_id is not None for q in queries):
        references = {q.query_id: q.target_id for q in queries}
        summary["id_reference"] = "annotation"
    else:
        summary["id_reference"] = None

    pairs = []
    sources: Counter[str] = Counter()
    for query, query_score in zip(queries, scores, strict=True):
        reference = references.get(query.query_id)
        predicted_id = query_score.target_id if query_score.predicted else None
        id_correct = None if reference is None else (predicted_id is not None and predicted_id == reference)
        pairs.append((predicted_id, reference))
        entry = per_video[query.query_id]
        entry["target_id"] = predicted_id
        entry["id_correct"] = id_correct
        entry["error_source"] = error_source(query_score, ceilings.get(query.query_id), id_correct)
        sources[entry["error_source"]] += 1
    summary["id_accuracy"] = id_accuracy(pairs)
    summary["error_sources"] = dict(sorted(sources.items()))
    if ceilings:
        values = np.array(list(ceilings.values()), dtype=np.float64)
        thresholds, rule = thresholds_of(protocol)
        ceiling = {"m_vIoU": float(values.mean())}
        for threshold in thresholds:
            hits = values >= threshold if rule == ">=" else values > threshold
            ceiling[f"vIoU@{threshold}"] = float(hits.mean())
        summary["perception_ceiling"] = ceiling
    else:
        summary["perception_ceiling"] = None
    summary["warnings"] = list(annotations.warnings)
    summary["frame_ids"] = annotations.frame_ids
    summary["benchmark"] = annotations.benchmark
    return summary, scores


def score_files(
    annotations: str | Path,
    predictions: str | Path,
    protocol: str = DEFAULT_PROTOCOL,
    annotation_format: str = "auto",
    vidor_dir: str | Path | None = None,
    tracks: str | Path | None = None,
    require_all: bool = False,
    report_dir: str | Path | None = None,
    frame_ids: str | None = None,
) -> dict:
    """`stvg-ros eval score`: load, check, score; optionally write the report. Returns the summary.

    `frame_ids`: the frame-id convention (None: the annotation format's own, see `loaders.py`)."""
    annotation_set = load_annotations(annotations, annotation_format, vidor_dir, frame_ids)
    prediction_map = load_predictions(predictions, annotation_set)
    track_log = TrackLog.load(tracks) if tracks else None
    summary, _ = score(annotation_set, prediction_map, protocol, track_log, require_all)
    summary["annotations"] = str(annotation_set.path)
    summary["predictions"] = str(predictions)
    if report_dir:
        from stvg_ros.evaluation.report import write_report

        write_report(report_dir, summary, annotation_set, prediction_map)
    return summary
