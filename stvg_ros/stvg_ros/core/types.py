"""The one data type that flows from detector to tracker, buffer, renderer and tube, and the one
stamp convention for frames that carry no ROS header (video files, generated scenes)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Header stamp of frame 0 of a video file or a generated scene: 1_700_000_000 s after the Unix epoch.
EPOCH_NS = 1_700_000_000 * 1_000_000_000


def frame_stamp_ns(index: int, fps: float) -> int:
    """Stamp of frame `index` of a video without headers: EPOCH_NS + index / fps (the player node,
    `eval run`, `stvg-ros ground`, training prep and the synthetic scenes all use this)."""
    return EPOCH_NS + round(index * 1e9 / fps)


def _as(a, dtype, shape_tail=()) -> np.ndarray:
    arr = np.asarray(a, dtype=dtype)
    if arr.size == 0:
        return np.zeros((0, *shape_tail), dtype=dtype)
    return arr


@dataclass
class Tracks:
    """Objects on one frame as parallel arrays (row i of every array is object i).

    `xyxy` is in pixels of the source image. `track_id` is -1 for untracked detections.
    `detected` is False where the box is a tracker prediction (no detector run on that frame,
    or the object was missed).
    """

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    track_id: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    score: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_id: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    detected: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))

    def __post_init__(self) -> None:
        self.xyxy = _as(self.xyxy, np.float32, (4,)).reshape(-1, 4)
        n = len(self.xyxy)
        self.track_id = _as(self.track_id, np.int64) if len(self.track_id) else np.full(n, -1, np.int64)
        self.score = _as(self.score, np.float32) if len(self.score) else np.ones(n, np.float32)
        self.class_id = _as(self.class_id, np.int32) if len(self.class_id) else np.zeros(n, np.int32)
        self.detected = _as(self.detected, bool) if len(self.detected) else np.ones(n, bool)
        for name in ("track_id", "score", "class_id", "detected"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Tracks.{name} has {len(getattr(self, name))} rows, xyxy has {n}")

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> Tracks:
        """Select rows by boolean mask, index array or slice."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Tracks(
            xyxy=self.xyxy[index],
            track_id=self.track_id[index],
            score=self.score[index],
            class_id=self.class_id[index],
            detected=self.detected[index],
        )

    @classmethod
    def empty(cls) -> Tracks:
        return cls()

    def box_of(self, track_id: int) -> np.ndarray | None:
        """The box of `track_id` on this frame, or None when it is not there."""
        rows = np.flatnonzero(self.track_id == track_id)
        return self.xyxy[rows[0]].copy() if len(rows) else None

    @property
    def centers(self) -> np.ndarray:
        """Box centres (N, 2) as integer pixel coordinates (x, y), floor-divided like METHOD §3."""
        xy = self.xyxy.astype(np.int64)
        return np.stack([(xy[:, 0] + xy[:, 2]) // 2, (xy[:, 1] + xy[:, 3]) // 2], axis=1)


@dataclass
class TrackedFrame:
    """Tracks of one camera frame with its ROS stamp (nanoseconds) and frame id."""

    stamp_ns: int
    tracks: Tracks
    frame_id: str = ""
    width: int = 0
    height: int = 0
