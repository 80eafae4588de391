"""Trivial baselines for `stvg-ros eval run --baseline`: answers that use the tracker's output but
neither the query nor a model, scored exactly like a model's answers.

- `random`: a track ID drawn uniformly from the IDs the tracker gave in the video (seeded by the
  query ID, so a rerun gives the same answers), with the whole video as the span.
- `most_visible`: the track seen on the most frames of the video, with the whole video as the span.

The tube is the chosen track's boxes on the frames where the tracker had it. A number a trained
model reports means something only above these (issue: a model that really grounds).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping

import numpy as np

from stvg_ros.core.types import Tracks
from stvg_ros.evaluation.loaders import Query
from stvg_ros.evaluation.predictions import Prediction

BASELINES = ("random", "most_visible")


def _query_seed(query_id: str) -> int:
    return int.from_bytes(hashlib.sha256(query_id.encode()).digest()[:8], "little")


def pick_track(kind: str, query_id: str, tracks_by_frame: Mapping[int, Tracks]) -> int | None:
    """The track ID the baseline `kind` answers with (None: the tracker saw nothing in the video)."""
    seen = Counter(int(t) for tracks in tracks_by_frame.values() for t in tracks.track_id)
    if not seen:
        return None
    if kind == "most_visible":
        return min(seen, key=lambda track_id: (-seen[track_id], track_id))  # ties: the lower ID
    if kind == "random":
        ids = sorted(seen)
        return ids[np.random.default_rng(_query_seed(query_id)).integers(len(ids))]
    raise ValueError(f"unknown baseline {kind!r} (known: {', '.join(BASELINES)})")


def baseline_prediction(kind: str, query: Query, tracks_by_frame: Mapping[int, Tracks]) -> Prediction:
    """The baseline's answer to `query` over one video: `tracks_by_frame` maps annotation frame ids to
    the tracker's output on that frame (every frame of the video)."""
    target = pick_track(kind, query.query_id, tracks_by_frame)
    if target is None or not tracks_by_frame:
        return Prediction.failed(query.query_id)
    frames = sorted(tracks_by_frame)
    boxes = {}
    for frame in frames:
        tracks = tracks_by_frame[frame]
        rows = np.flatnonzero(tracks.track_id == target)
        if len(rows):
            boxes[frame] = tuple(float(v) for v in tracks.xyxy[rows[0]])
    start_s, end_s = (query.to_decoded(f) / query.fps if query.fps > 0 else None for f in (frames[0], frames[-1]))
    return Prediction(query.query_id, frames[0], frames[-1] + 1, boxes, start_s, end_s, target)
