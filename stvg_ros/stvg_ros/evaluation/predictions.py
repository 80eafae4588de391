"""Prediction files and per-query records.

Prediction file (JSON), one entry per query, keyed by the annotations' frame ids (by default the
0-based decoded frame numbers TubeDETR uses, see `loaders.py`), spans end-exclusive as in TubeDETR::

    {"<query_id>": {"sted": [start_frame, end_frame],
                    "boxes": {"<frame>": [x1, y1, x2, y2], ...},   # or [[x1, y1, x2, y2]] as TubeDETR
                    "target_id": 3,              # optional: the predicted object/track ID
                    "span_s": [12.54, 17.83]}}   # optional: the span in seconds as the model said it

`query_id` is the video file name without extension for HC-STVG and the synthetic sets (one query
per video) and TubeDETR's query index for VidSTG. Also read: the official HC-STVG submission
layout (`{"st_frame", "ed_frame" (inclusive), "bbox": {...}}`) and TubeDETR's own evaluator output
(`predictions` + `video_predictions`, bare or inside its log_stats.json, keyed by TubeDETR's video
index). A failed query is written as `"sted": [0, 0]` with no boxes, or left out: either scores 0.
Unknown fields are ignored; a malformed known field is an EvalError naming file, query and field.

Per-query records (JSONL, `records.jsonl`) carry what a prediction file cannot: the query, the
parsed answer, the raw model output, stamps, timings, the failure reason and the scores.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stvg_ros.evaluation.errors import EvalError
from stvg_ros.evaluation.loaders import AnnotationSet, Box, Query


@dataclass(frozen=True)
class Prediction:
    """A predicted tube: span `[start, end)` and boxes, in the annotations' frame ids."""

    query_id: str
    start: int
    end: int
    boxes: Mapping[int, Box] = field(default_factory=dict)
    start_s: float | None = None
    end_s: float | None = None
    target_id: int | None = None

    @property
    def empty(self) -> bool:
        """True for a failed query (no span): it scores 0 under every protocol."""
        return self.end <= self.start

    @classmethod
    def failed(cls, query_id: str) -> Prediction:
        return cls(query_id, 0, 0)


def span_indices(stamps_ns: Sequence[int], start_ns: int, end_ns: int) -> tuple[int, int] | None:
    """Indices (first, last) of the frames whose stamps lie in [start_ns, end_ns] (sorted
    `stamps_ns`), as the tube is built; the frame nearest the span's middle when no stamp falls
    inside (a span shorter than a frame interval). None when there are no frames."""
    if not len(stamps_ns):
        return None
    if start_ns > end_ns:
        start_ns, end_ns = end_ns, start_ns
    first = bisect.bisect_left(stamps_ns, start_ns)
    last = bisect.bisect_right(stamps_ns, end_ns) - 1
    if first <= last:
        return first, last
    middle = (start_ns + end_ns) // 2
    nearest = min(range(max(0, first - 1), min(len(stamps_ns), first + 1)), key=lambda i: abs(stamps_ns[i] - middle))
    return nearest, nearest


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value) -> str:
    return json.dumps(value, default=str)[:60]


def _box(value, where: str) -> Box:
    """[x1, y1, x2, y2], or TubeDETR's [[x1, y1, x2, y2]] (one box per frame)."""
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]
    if not isinstance(value, (list, tuple)) or len(value) != 4 or any(isinstance(v, (list, tuple)) for v in value):
        raise EvalError(f"{where} must be one box [x1, y1, x2, y2] (or [[x1, y1, x2, y2]]), got {_shown(value)}")
    for v in value:
        if not _finite(v):
            raise EvalError(f"{where}: box coordinate {_shown(v)} is not a finite number")
    x1, y1, x2, y2 = (float(v) for v in value)
    if x2 < x1 or y2 < y1:
        raise EvalError(f"{where}: box {[x1, y1, x2, y2]} has x2 < x1 or y2 < y1 (boxes are [x1, y1, x2, y2])")
    return (x1, y1, x2, y2)


def _frame(key, where: str) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    text = str(key).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    raise EvalError(f"{where}: frame key {_shown(key)} is not an integer frame id")


def _int(value, where: str) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise EvalError(f"{where}: {_shown(value)} is not an integer frame id")
    return value


def _pair(entry: Mapping, key: str, where: str, what: str) -> list:
    value = entry[key]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise EvalError(f"{where} field {key!r} must be {what}, got {_shown(value)}")
    return list(value)


def parse_prediction(query_id: str, entry, source: str = "prediction file") -> Prediction:
    """One prediction-file entry -> Prediction (either layout).

    EvalError for any malformed field, one line naming `source`, the query and the field."""
    where = f"{source}: prediction {query_id!r}"
    if not isinstance(entry, Mapping):
        raise EvalError(f"{where}: expected an object with 'sted' and 'boxes', got {type(entry).__name__}")
    if "sted" in entry:
        sted = _pair(entry, "sted", where, "[start_frame, end_frame] (end exclusive)")
        start, end = (_int(v, f"{where} field 'sted'") for v in sted)
        boxes_key = "boxes"
    elif "st_frame" in entry and "ed_frame" in entry:  # official HC-STVG layout, inclusive end
        start = _int(entry["st_frame"], f"{where} field 'st_frame'")
        end = _int(entry["ed_frame"], f"{where} field 'ed_frame'") + 1
        boxes_key = "bbox"
    else:
        raise EvalError(f"{where}: no span (expected 'sted': [start, end] or 'st_frame'/'ed_frame')")
    if end < start:
        raise EvalError(f"{where} field 'sted': span [{start}, {end}) ends before it starts")
    raw_boxes = entry.get(boxes_key, {})
    if raw_boxes is None:
        raw_boxes = {}
    if not isinstance(raw_boxes, Mapping):
        raise EvalError(f"{where} field {boxes_key!r} must map frame id -> [x1, y1, x2, y2], got {_shown(raw_boxes)}")
    boxes = {}
    for key, value in raw_boxes.items():
        frame_where = f"{where} field {boxes_key!r} frame {key}"
        boxes[_frame(key, frame_where)] = _box(value, frame_where)
    start_s = end_s = None
    if entry.get("span_s") is not None:
        span_s = _pair(entry, "span_s", where, "[start_seconds, end_seconds]")
        for v in span_s:
            if not _finite(v):
                raise EvalError(f"{where} field 'span_s': {_shown(v)} is not a finite number of seconds")
        start_s, end_s = (float(v) for v in span_s)
    target_id = entry.get("target_id")
    if target_id is not None:
        if isinstance(target_id, float) and math.isfinite(target_id) and target_id.is_integer():
            target_id = int(target_id)
        if isinstance(target_id, bool) or not isinstance(target_id, int):
            raise EvalError(f"{where} field 'target_id' must be an integer object ID, got {_shown(target_id)}")
    return Prediction(str(query_id), start, end, boxes, start_s, end_s, target_id)


def _tubedetr_key(data: Mapping, suffix: str) -> str | None:
    """The key of TubeDETR's `predictions` / `video_predictions` (also `test_<dataset>_...`)."""
    keys = [k for k in data if k == suffix or (k.startswith("test_") and k.endswith(f"_{suffix}"))]
    if suffix == "predictions":
        keys = [k for k in keys if not k.endswith("video_predictions")]
    return keys[0] if len(keys) == 1 else None


def is_tubedetr_dump(data) -> bool:
    """True for TubeDETR's evaluator output: `predictions` ({"<video>_<frame>": {"boxes"}}) and
    `video_predictions` ({"<video>": {"sted"}}), bare or as `test_<dataset>_...` in log_stats.json."""
    return (
        isinstance(data, Mapping)
        and _tubedetr_key(data, "video_predictions") is not None
        and _tubedetr_key(data, "predictions") is not None
    )


def from_tubedetr_dump(data: Mapping, source: str, query_ids: Sequence[str] | None) -> dict[str, dict]:
    """TubeDETR's evaluator output -> our layout {query_id: {"sted", "boxes"}}.

    TubeDETR keys videos by its `video_id`: the position in the annotation file for HC-STVG
    (`query_ids` in file order maps it), the query id itself for VidSTG (`query_ids` None)."""
    videos = data[_tubedetr_key(data, "video_predictions")]
    frames = data[_tubedetr_key(data, "predictions")]
    if not isinstance(videos, Mapping) or not isinstance(frames, Mapping):
        raise EvalError(f"{source}: TubeDETR's 'predictions' and 'video_predictions' must be objects")

    def query_of(video: str, where: str) -> str:
        if query_ids is None:
            return video
        if not video.strip().isdigit() or int(video) >= len(query_ids):
            raise EvalError(f"{where}: TubeDETR video id {video!r} is not an index of the {len(query_ids)} annotations")
        return query_ids[int(video)]

    entries: dict[str, dict] = {}
    for video, prediction in videos.items():
        where = f"{source}: video_predictions {video!r}"
        if not isinstance(prediction, Mapping) or "sted" not in prediction:
            raise EvalError(f"{where}: expected an object with 'sted', got {_shown(prediction)}")
        entries[query_of(str(video), where)] = {"sted": prediction["sted"], "boxes": {}}
    for image_id, prediction in frames.items():
        where = f"{source}: predictions {image_id!r}"
        video, _, frame = str(image_id).rpartition("_")
        if not video or not frame.strip().isdigit():
            raise EvalError(f"{where}: key must be '<video_id>_<frame_id>'")
        if not isinstance(prediction, Mapping) or "boxes" not in prediction:
            raise EvalError(f"{where}: expected an object with 'boxes', got {_shown(prediction)}")
        query_id = query_of(video, where)
        if query_id not in entries:
            raise EvalError(f"{where}: no video_predictions entry for video {video!r}")
        entries[query_id]["boxes"][frame] = prediction["boxes"]
    return entries


def load_predictions(path: str | Path, annotations: AnnotationSet | None = None) -> dict[str, Prediction]:
    """Read a prediction file: our layout, the official HC-STVG layout, or TubeDETR's evaluator
    output (which needs `annotations` to map TubeDETR's video index to query ids).

    EvalError, one line naming the file, the query and the field, when anything is malformed."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"prediction file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"prediction file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise EvalError(f"prediction file {path} must be a JSON object keyed by query id, got {type(data).__name__}")
    if is_tubedetr_dump(data):
        if annotations is None:
            raise EvalError(f"{path}: TubeDETR's output is keyed by its video index; score it against the annotations")
        query_ids = None if annotations.format == "vidstg" else list(annotations.queries)
        data = from_tubedetr_dump(data, str(path), query_ids)
    return {str(k): parse_prediction(str(k), v, str(path)) for k, v in data.items()}


def prediction_to_json(prediction: Prediction) -> dict:
    entry: dict = {
        "sted": [int(prediction.start), int(prediction.end)],
        "boxes": {str(f): [round(float(c), 3) for c in box] for f, box in sorted(prediction.boxes.items())},
    }
    if prediction.target_id is not None:
        entry["target_id"] = int(prediction.target_id)
    if prediction.start_s is not None and prediction.end_s is not None:
        entry["span_s"] = [float(prediction.start_s), float(prediction.end_s)]
    return entry


def save_predictions(path: str | Path, predictions: Mapping[str, Prediction] | Iterable[Prediction]) -> Path:
    path = Path(path)
    items = predictions.values() if isinstance(predictions, Mapping) else predictions
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({p.query_id: prediction_to_json(p) for p in items}, indent=1) + "\n", encoding="utf-8")
    return path


def check_predictions(predictions: Mapping[str, Prediction], annotations: AnnotationSet) -> None:
    """EvalError for predictions of queries the annotations do not have, or frames outside the video."""
    unknown = sorted(set(predictions) - set(annotations.queries))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise EvalError(
            f"{len(unknown)} prediction(s) for videos/queries not in the annotations {annotations.path.name}: {shown}"
        )
    for query_id, pred in predictions.items():
        query = annotations.queries[query_id]
        lo, hi = query.first_frame, query.end_frame
        frames = list(pred.boxes)
        if not pred.empty:
            frames += [pred.start, pred.end - 1]
        bad = [f for f in frames if not lo <= f < hi]
        if bad:
            raise EvalError(
                f"frame-index mismatch in prediction {query_id!r}: frame {min(bad) if min(bad) < lo else max(bad)} "
                f"is outside the video's frames {lo}..{hi - 1} (frame ids: {query.frame_ids}, the first decoded "
                f"frame is {lo})"
            )


# --------------------------------------------------------------------------------------------
# per-query records (JSONL)


def query_record(query: Query, prediction: Prediction, wall_s: float) -> dict:
    """The fields every per-query record starts with (`eval run` and `eval replay` add their own)."""
    return {
        "query_id": query.query_id,
        "video_id": query.video_id,
        "query": query.caption,
        "gt_sted": [query.gt_start, query.gt_end],
        "sted": [prediction.start, prediction.end],
        "target_id": prediction.target_id,
        "span_s": [prediction.start_s, prediction.end_s],
        "n_tube_boxes": len(prediction.boxes),
        "latency_s": round(wall_s, 3),
    }


def write_records(path: str | Path, records: Iterable[Mapping]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True, default=_jsonable) + "\n")
    return path


def append_record(path: str | Path, record: Mapping) -> None:
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True, default=_jsonable) + "\n")


def read_records(path: str | Path) -> Iterator[dict]:
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"records file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalError(f"{path} line {number} is not valid JSON: {exc.msg}") from None


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "value"):  # enums
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
