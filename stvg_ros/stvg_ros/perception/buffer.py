"""ClipBuffer: a bounded history of what the camera saw, for answering queries about the recent past.

It keeps two streams side by side:
- downscaled frames at the model's sampling rate (`sample_fps`, long side `frame_long_side`),
  stored WITHOUT IDs: IDs are drawn (core/render.py) only when a query arrives;
- the tracks of EVERY camera frame, so the answer's tube has a box on each frame.

Bounds: `max_seconds` of history and `max_bytes` of memory (oldest dropped first). Stamps that go
backwards a little (reordered messages) are dropped and counted; a backward jump of more than
`jump_reset_s` (a rosbag loop, a restarted camera) clears the buffer. Thread-safe.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from stvg_ros.core.types import TrackedFrame, Tracks

NS = 1_000_000_000
#: A longer gap between camera frames is a pause (camera stopped), not missed samples.
PAUSE_S = 5.0
#: rough per-entry cost of the Python objects around the arrays (bytes)
ENTRY_OVERHEAD = 512


@dataclass(frozen=True)
class SampledFrame:
    """A downscaled frame: `rgb_small` is read-only; `scale` = small size / original size."""

    stamp_ns: int
    rgb_small: np.ndarray
    scale: float

    @property
    def nbytes(self) -> int:
        return int(self.rgb_small.nbytes) + ENTRY_OVERHEAD


def _tracks_nbytes(frame: TrackedFrame) -> int:
    t = frame.tracks
    return (
        int(t.xyxy.nbytes + t.track_id.nbytes + t.score.nbytes + t.class_id.nbytes + t.detected.nbytes) + ENTRY_OVERHEAD
    )


def _frozen(tracks: Tracks) -> Tracks:
    """A read-only copy, so snapshots can share it safely."""
    copy = Tracks(
        xyxy=tracks.xyxy.copy(),
        track_id=tracks.track_id.copy(),
        score=tracks.score.copy(),
        class_id=tracks.class_id.copy(),
        detected=tracks.detected.copy(),
    )
    for array in (copy.xyxy, copy.track_id, copy.score, copy.class_id, copy.detected):
        array.flags.writeable = False
    return copy


class ClipSnapshot:
    """An immutable view of a time window of the buffer."""

    def __init__(self, frames: list[SampledFrame], track_frames: list[TrackedFrame], frame_id: str) -> None:
        self._frames = tuple(frames)
        self._track_frames = tuple(track_frames)
        self._track_stamps = [f.stamp_ns for f in self._track_frames]
        self.frame_id = frame_id

    @property
    def frames(self) -> list[SampledFrame]:
        return list(self._frames)

    @property
    def track_frames(self) -> list[TrackedFrame]:
        return list(self._track_frames)

    def _ends(self) -> list[int]:
        """First and last stamps of both streams (empty when the snapshot is empty)."""
        ends = []
        if self._frames:
            ends += [self._frames[0].stamp_ns, self._frames[-1].stamp_ns]
        if self._track_stamps:
            ends += [self._track_stamps[0], self._track_stamps[-1]]
        return ends

    @property
    def start_ns(self) -> int:
        """Earliest stamp of either stream (0 when empty)."""
        return min(self._ends(), default=0)

    @property
    def end_ns(self) -> int:
        """Latest stamp of either stream (0 when empty)."""
        return max(self._ends(), default=0)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / NS

    def __len__(self) -> int:
        return len(self._frames)

    def tracks_at(self, stamp_ns: int, max_offset_s: float | None = None) -> TrackedFrame | None:
        """The tracked frame nearest to stamp_ns (None when empty or farther than max_offset_s)."""
        if not self._track_stamps:
            return None
        i = bisect.bisect_left(self._track_stamps, stamp_ns)
        candidates = [j for j in (i - 1, i) if 0 <= j < len(self._track_stamps)]
        best = min(candidates, key=lambda j: abs(self._track_stamps[j] - stamp_ns))
        if max_offset_s is not None and abs(self._track_stamps[best] - stamp_ns) > max_offset_s * NS:
            return None
        return self._track_frames[best]

    def track_ids(self) -> list[int]:
        """Every track ID seen in the window, sorted."""
        ids: set[int] = set()
        for frame in self._track_frames:
            ids.update(int(t) for t in frame.tracks.track_id if t >= 0)
        return sorted(ids)


@dataclass(frozen=True)
class BufferConfig:
    """How much camera history a ClipBuffer keeps: the defaults of the grounding node, the offline
    pipeline (grounding/offline.py) and every other caller, ClipBuffer's own included (defined here only)."""

    #: seconds of source time kept for queries
    max_seconds: float = 30.0
    #: frames per second kept (STVG-R1 samples video at 2 fps)
    sample_fps: float = 2.0
    #: memory bound in MB (oldest entries dropped first)
    max_mb: float = 64.0
    #: long side of the kept (downscaled) frames in pixels
    frame_long_side: int = 448


class ClipBuffer:
    """Bounded history of sampled frames and per-frame tracks (see module docstring)."""

    @classmethod
    def from_config(cls, config: BufferConfig) -> ClipBuffer:
        return cls(
            max_seconds=config.max_seconds,
            sample_fps=config.sample_fps,
            frame_long_side=config.frame_long_side,
            max_bytes=int(config.max_mb * 2**20),
        )

    def __init__(
        self,
        max_seconds: float = BufferConfig.max_seconds,
        sample_fps: float = BufferConfig.sample_fps,
        frame_long_side: int = BufferConfig.frame_long_side,
        max_bytes: int = int(BufferConfig.max_mb * 2**20),
        jump_reset_s: float = 1.0,
    ) -> None:
        if max_seconds <= 0 or sample_fps <= 0 or frame_long_side < 16 or max_bytes <= 0:
            raise ValueError("ClipBuffer needs max_seconds > 0, sample_fps > 0, frame_long_side >= 16, max_bytes > 0")
        self.max_seconds = float(max_seconds)
        self.sample_fps = float(sample_fps)
        self.frame_long_side = int(frame_long_side)
        self.max_bytes = int(max_bytes)
        self.jump_reset_s = float(jump_reset_s)
        self._lock = threading.Lock()
        self.dropped_out_of_order = 0
        self.dropped_for_memory = 0
        self.missed_samples = 0  # sampling slots with no camera frame, in gaps up to PAUSE_S (frames lost)
        self.resets = 0
        self._clear()

    def _clear(self) -> None:
        self._frames: deque[SampledFrame] = deque()
        self._tracks: deque[TrackedFrame] = deque()
        self._nbytes = 0
        self._newest_ns: int | None = None
        self._last_frame_seen_ns: int | None = None  # last camera frame offered (kept or not)
        self._last_tracks_ns: int | None = None
        self._stale_range: tuple[int, int] | None = None  # old timeline after a backward jump
        self.frame_id = ""

    def clear(self) -> None:
        with self._lock:
            self._clear()

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._frames)

    # ---- input

    def _accept(self, stamp_ns: int, last_in_stream: int | None) -> bool:
        """Stamp policy shared by both streams; may clear the buffer on a backward jump."""
        if self._stale_range is not None:
            low, high = self._stale_range
            if stamp_ns > self._newest_ns + self.jump_reset_s * NS and low <= stamp_ns <= high:
                self.dropped_out_of_order += 1  # a late message of the timeline before the jump
                return False
        # A backward jump is judged within each stream: the frame stream may lag the tracks stream
        # by more than jump_reset_s (a busy input thread) without being a new timeline.
        if last_in_stream is not None and stamp_ns < last_in_stream - self.jump_reset_s * NS:
            old_newest = self._newest_ns
            self._clear()
            self.resets += 1
            self._stale_range = (stamp_ns, old_newest)
            self._newest_ns = stamp_ns
            return True
        if last_in_stream is not None and stamp_ns <= last_in_stream:
            self.dropped_out_of_order += 1
            return False
        self._newest_ns = stamp_ns if self._newest_ns is None else max(self._newest_ns, stamp_ns)
        if self._stale_range is not None and self._newest_ns > self._stale_range[1]:
            self._stale_range = None
        return True

    def wants_frame(self, stamp_ns: int) -> bool:
        """Whether `add_frame` would keep a frame at this stamp (so a caller can skip decoding the others)."""
        with self._lock:
            last = self._frames[-1].stamp_ns if self._frames else None
        return last is None or not 0 <= int(stamp_ns) - last < 0.95 * NS / self.sample_fps

    def add_frame(self, stamp_ns: int, rgb: np.ndarray, frame_id: str = "") -> bool:
        """Offer a camera frame; a downscaled copy is kept at most `sample_fps` times per second.
        Returns True when it was kept."""
        stamp_ns = int(stamp_ns)
        if (
            not isinstance(rgb, np.ndarray)
            or rgb.ndim != 3
            or rgb.shape[2] != 3
            or rgb.dtype != np.uint8
            or 0 in rgb.shape
        ):
            raise ValueError(f"ClipBuffer.add_frame expects RGB uint8 (H, W, 3), got {getattr(rgb, 'shape', rgb)}")
        with self._lock:
            if not self._accept(stamp_ns, self._last_frame_seen_ns):
                return False
            self._last_frame_seen_ns = stamp_ns
            if frame_id:
                self.frame_id = frame_id
            period_ns = NS / self.sample_fps
            if self._frames and stamp_ns - self._frames[-1].stamp_ns < 0.95 * period_ns:
                return False
            gap_ns = stamp_ns - self._frames[-1].stamp_ns if self._frames else 0
            if gap_ns <= PAUSE_S * NS:  # n periods (a little late is on time) left n - 1 slots empty
                self.missed_samples += max(0, round(gap_ns / period_ns - 0.25) - 1)
            height, width = rgb.shape[:2]
            scale = min(1.0, self.frame_long_side / max(height, width))
            if scale < 1.0:
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            else:
                small = rgb.copy()
            small.flags.writeable = False
            frame = SampledFrame(stamp_ns, small, small.shape[1] / width)
            self._frames.append(frame)
            self._nbytes += frame.nbytes
            self._evict()
            return True

    def add_tracks(self, stamp_ns: int, tracks: Tracks, frame_id: str = "", width: int = 0, height: int = 0) -> bool:
        """Record the tracks of one camera frame. Returns False when dropped (out of order)."""
        stamp_ns = int(stamp_ns)
        with self._lock:
            if not self._accept(stamp_ns, self._last_tracks_ns):
                return False
            self._last_tracks_ns = stamp_ns
            if frame_id:
                self.frame_id = frame_id
            entry = TrackedFrame(stamp_ns, _frozen(tracks), frame_id, int(width), int(height))
            self._tracks.append(entry)
            self._nbytes += _tracks_nbytes(entry)
            self._evict()
            return True

    def _evict(self) -> None:
        horizon = self._newest_ns - int(self.max_seconds * NS)
        while self._frames and self._frames[0].stamp_ns < horizon:
            self._nbytes -= self._frames.popleft().nbytes
        while self._tracks and self._tracks[0].stamp_ns < horizon:
            self._nbytes -= _tracks_nbytes(self._tracks.popleft())
        while self._nbytes > self.max_bytes and (self._frames or self._tracks):
            # Drop whichever stream holds the oldest entry.
            frame_first = self._frames and (not self._tracks or self._frames[0].stamp_ns <= self._tracks[0].stamp_ns)
            if frame_first:
                self._nbytes -= self._frames.popleft().nbytes
            else:
                self._nbytes -= _tracks_nbytes(self._tracks.popleft())
            self.dropped_for_memory += 1

    # ---- output

    def snapshot(self, window_s: float = 0.0) -> ClipSnapshot:
        """The last `window_s` seconds (everything when 0) as an immutable ClipSnapshot."""
        with self._lock:
            frames, tracks = list(self._frames), list(self._tracks)
            frame_id = self.frame_id
            newest = self._newest_ns
        if window_s > 0 and newest is not None:
            start = newest - int(window_s * NS)
            frames = [f for f in frames if f.stamp_ns >= start]
            tracks = [t for t in tracks if t.stamp_ns >= start]
        return ClipSnapshot(frames, tracks, frame_id)

    def stats(self) -> dict:
        with self._lock:
            return {
                "frames": len(self._frames),
                "track_frames": len(self._tracks),
                "nbytes": self._nbytes,
                "dropped_out_of_order": self.dropped_out_of_order,
                "dropped_for_memory": self.dropped_for_memory,
                "missed_samples": self.missed_samples,
                "resets": self.resets,
            }
