"""Prediction files and per-query records.

Prediction file (JSON), one entry per query, frames in the annotation's indexing
(see `loaders.py`), spans end-exclusive as in TubeDETR::

    {"<query_id>": {"sted": [start_frame, end_frame],
                    "boxes": {"<frame>": [x1, y1, x2, y2], ...},
                    "target_id": 3,              # optional: the predicted object/track ID
                    "span_s": [12.54, 17.83]}}   # optional: the span in seconds as the model said it

`query_id` is the video file name without extension for HC-STVG and the synthetic sets (one query
per video) and TubeDETR's query index for VidSTG. The official HC-STVG submission layout
(`{"st_frame", "ed_frame" (inclusive), "bbox": {...}}`) is read too. A failed query is written
as `"sted": [0, 0]` with no boxes, or left out: either scores 0.

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
    """A predicted tube: span `[start, end)` and boxes, in annotation frame indexing."""

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


def _box(value, where: str) -> Box:
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]  # TubeDETR writes [[x1, y1, x2, y2]]
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise EvalError(f"{where}: a box must be [x1, y1, x2, y2], got {str(value)[:60]}")
    numbers = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise EvalError(f"{where}: box coordinate {v!r} is not a finite number")
        numbers.append(float(v))
    x1, y1, x2, y2 = numbers
    if x2 < x1 or y2 < y1:
        raise EvalError(f"{where}: box {numbers} has x2 < x1 or y2 < y1 (boxes are [x1, y1, x2, y2])")
    return (x1, y1, x2, y2)


def _frame(key, where: str) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    text = str(key).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    raise EvalError(f"{where}: frame key {key!r} is not an integer")


def _int(value, where: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise EvalError(f"{where}: {value!r} is not an integer frame index")
    return value


def parse_prediction(query_id: str, entry) -> Prediction:
    """One prediction-file entry -> Prediction (either layout); EvalError when malformed."""
    where = f"prediction {query_id!r}"
    if not isinstance(entry, Mapping):
        raise EvalError(f"{where}: expected an object, got {type(entry).__name__}")
    if "sted" in entry:
        sted = entry["sted"]
        if not isinstance(sted, (list, tuple)) or len(sted) != 2:
            raise EvalError(f"{where}: 'sted' must be [start_frame, end_frame]")
        start, end = _int(sted[0], where), _int(sted[1], where)
        raw_boxes = entry.get("boxes", {})
    elif "st_frame" in entry and "ed_frame" in entry:  # official HC-STVG layout, inclusive end
        start, end = _int(entry["st_frame"], where), _int(entry["ed_frame"], where) + 1
        raw_boxes = entry.get("bbox", {})
    else:
        raise EvalError(f"{where}: no span (expected 'sted': [start, end] or 'st_frame'/'ed_frame')")
    if end < start:
        raise EvalError(f"{where}: span [{start}, {end}) ends before it starts")
    if not isinstance(raw_boxes, Mapping):
        raise EvalError(f"{where}: 'boxes' must map frame -> [x1, y1, x2, y2]")
    boxes = {_frame(k, where): _box(v, f"{where} frame {k}") for k, v in raw_boxes.items()}
    span_s = entry.get("span_s")
    start_s = end_s = None
    if span_s is not None:
        if not isinstance(span_s, (list, tuple)) or len(span_s) != 2:
            raise EvalError(f"{where}: 'span_s' must be [start_seconds, end_seconds]")
        start_s, end_s = (float(v) for v in span_s)
    target_id = entry.get("target_id")
    if target_id is not None and (isinstance(target_id, bool) or not isinstance(target_id, int)):
        raise EvalError(f"{where}: 'target_id' must be an integer")
    return Prediction(str(query_id), start, end, boxes, start_s, end_s, target_id)


def load_predictions(path: str | Path) -> dict[str, Prediction]:
    """Read a prediction file; EvalError when missing, not JSON or malformed."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"prediction file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"prediction file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise EvalError(f"prediction file {path} must be a JSON object keyed by query id")
    return {str(k): parse_prediction(str(k), v) for k, v in data.items()}


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
                f"is outside the video's frames {lo}..{hi - 1} ({annotations.format} annotations count frames "
                f"from {query.frame_base})"
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
