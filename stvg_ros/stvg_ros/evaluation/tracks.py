"""The tracker's output per video and frame, kept for the perception ceiling (`metrics.perception_ceiling`).

Saved as JSONL (`tracks.jsonl`), one line per frame, frames in annotation indexing::

    {"video_id": "clip_000", "frame": 12, "stamp_ns": 400000000, "ids": [1, 2], "boxes": [[x1, y1, x2, y2], ...]}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stvg_ros.evaluation.errors import EvalError
from stvg_ros.evaluation.metrics import FrameTracks


def track_record(video_id: str, frame: int, track_ids, boxes, stamp_ns: int | None = None) -> dict:
    """One tracks.jsonl line (as a dict)."""
    record = {"video_id": video_id, "frame": int(frame), "ids": [int(t) for t in np.asarray(track_ids).reshape(-1)],
              "boxes": np.round(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 3).tolist()}  # fmt: skip
    if stamp_ns is not None:
        record["stamp_ns"] = int(stamp_ns)
    return record


class TrackWriter:
    """Streams tracks.jsonl one frame at a time (long runs keep nothing in memory); `append` adds
    to an existing file (a resumed run), and each line is flushed, so a stopped run loses none."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a" if append else "w", encoding="utf-8")

    def write(self, video_id: str, frame: int, track_ids, boxes, stamp_ns: int | None = None) -> dict:
        """Write one frame; returns the line as a dict (IDs and boxes as the file has them)."""
        record = track_record(video_id, frame, track_ids, boxes, stamp_ns)
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        return record

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> TrackWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TrackLog:
    """Track IDs and boxes of every frame of every video (annotation frame indexing)."""

    def __init__(self) -> None:
        self._videos: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self._stamps: dict[str, dict[int, int]] = {}

    def add(self, video_id: str, frame: int, track_ids, boxes, stamp_ns: int | None = None) -> None:
        ids = np.asarray(track_ids, dtype=np.int64).reshape(-1)
        xyxy = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(ids) != len(xyxy):
            raise EvalError(f"tracks of {video_id!r} frame {frame}: {len(ids)} IDs for {len(xyxy)} boxes")
        self._videos.setdefault(video_id, {})[int(frame)] = (ids, xyxy)
        if stamp_ns is not None:
            self._stamps.setdefault(video_id, {})[int(frame)] = int(stamp_ns)

    def frames(self, video_id: str) -> FrameTracks:
        return self._videos.get(video_id, {})

    def video_ids(self) -> list[str]:
        return sorted(self._videos)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._videos

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with TrackWriter(path) as writer:
            for video_id in sorted(self._videos):
                stamps = self._stamps.get(video_id, {})
                for frame, (ids, boxes) in sorted(self._videos[video_id].items()):
                    writer.write(video_id, frame, ids, boxes, stamps.get(frame))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrackLog:
        path = Path(path)
        if not path.is_file():
            raise EvalError(f"tracks file not found: {path}")
        log = cls()
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    log.add(str(row["video_id"]), int(row["frame"]), row["ids"], row["boxes"], row.get("stamp_ns"))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise EvalError(f"{path} line {number} is not a tracks record: {exc}") from None
        return log
