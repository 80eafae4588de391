"""Answer -> tube: the tracker's box of the target on every camera frame of the answered span.

METHOD §8: the model names an ID and a span; the boxes come from the tracks. Where the tracker
predicted the box (no detector run, or missed) the entry is flagged `interpolated`; where the ID is
absent on a frame between two frames that have it (a short occlusion), the box is interpolated
linearly and flagged. Before the track's first and after its last box in the snapshot there is no
entry unless `hold_ends` (then the nearest box is repeated, as the official script does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TubeEntry:
    """The target's box on one camera frame: source-image pixels, xyxy."""

    stamp_ns: int
    frame_id: str
    xyxy: tuple[float, float, float, float]
    interpolated: bool

    def to_json(self, clip_start_ns: int | None = None) -> dict:
        entry = {"stamp": self.stamp_ns / 1e9, "stamp_ns": int(self.stamp_ns),
                 "box": [round(float(v), 2) for v in self.xyxy], "interpolated": bool(self.interpolated)}
        if clip_start_ns is not None:
            entry["t"] = round((self.stamp_ns - clip_start_ns) / 1e9, 4)
        return entry


def _sightings(track_frames, target_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame indices, boxes, detected flags) of the frames where `target_id` has a box."""
    indices, boxes, detected = [], [], []
    for index, frame in enumerate(track_frames):
        rows = np.flatnonzero(frame.tracks.track_id == target_id)
        if len(rows):
            indices.append(index)
            boxes.append(frame.tracks.xyxy[rows[0]])
            detected.append(bool(frame.tracks.detected[rows[0]]))
    if not indices:
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, bool)
    return np.asarray(indices), np.asarray(boxes, np.float32), np.asarray(detected)


def build_tube(snapshot, target_id: int, start_ns: int, end_ns: int, *, hold_ends: bool = False) -> list[TubeEntry]:
    """The target's box on every camera frame of `snapshot.track_frames` with start_ns <= stamp <= end_ns
    (the one frame nearest to the span's middle when the span falls between two frames)."""
    frames = list(snapshot.track_frames)
    if start_ns > end_ns:
        start_ns, end_ns = end_ns, start_ns
    seen, boxes, detected = _sightings(frames, int(target_id))
    if len(seen) == 0:
        return []
    stamps = np.array([f.stamp_ns for f in frames], dtype=np.int64)
    inside = np.flatnonzero((stamps >= start_ns) & (stamps <= end_ns))
    if len(inside) == 0:  # a span shorter than a frame interval: the frame nearest to its middle
        inside = np.array([int(np.argmin(np.abs(stamps - (start_ns + end_ns) // 2)))])
    tube: list[TubeEntry] = []
    for index in inside:
        k = int(np.searchsorted(seen, index))
        if k < len(seen) and seen[k] == index:
            box, interpolated = boxes[k], not detected[k]
        elif 0 < k < len(seen):  # between two sightings: linear in time
            before, after = seen[k - 1], seen[k]
            w = (stamps[index] - stamps[before]) / max(1, stamps[after] - stamps[before])
            box, interpolated = (1 - w) * boxes[k - 1] + w * boxes[k], True
        elif hold_ends:
            box, interpolated = boxes[0 if k == 0 else -1], True
        else:
            continue
        frame = frames[index]
        tube.append(TubeEntry(int(frame.stamp_ns), str(frame.frame_id), tuple(float(v) for v in box), bool(interpolated)))
    return tube
