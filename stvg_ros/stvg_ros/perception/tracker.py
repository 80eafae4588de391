"""Multi-object tracking: ByteTrack, plus re-association of lost tracks after occlusion.

ByteTrack (`stvg_ros.perception.bytetrack.ByteTracker`, our numpy implementation: no torch, no
ultralytics) does the frame-to-frame association. On top of it this module adds what a grounding
model needs from IDs:

- **Public IDs**: small integers handed out in order of first appearance, unique per camera and
  never reused, even after `reset()` (ByteTrack's internal IDs skip numbers).
- **Re-association**: when ByteTrack starts a new track, it is first compared with public tracks
  that were lost less than `reid_max_gap_s` ago: same class, a motion gate (the new box must lie
  near the segment from where the object was last seen to where its velocity would have taken it)
  and an appearance cue (HSV colour histogram inside the box, Bhattacharyya coefficient). The best
  match (Hungarian assignment) takes the old ID back.
- **Revival from weak detections**: an object coming out from behind an occluder is detected with
  low confidence at first, too low for ByteTrack to start a track, so its old ID could expire
  before a confident detection arrives. A low-score detection (between `track_low_thresh` and
  `new_track_thresh`) that no track took and that passes the same gates for a lost public track
  starts a confirmed track with that ID; ByteTrack's low-score association keeps it from then on.
- **Prediction frames**: `predict(stamp)` advances the Kalman filters without a detection, so a
  pipeline that runs the detector on every k-th frame still has tracks on every frame.

Time is counted in camera frames (one Kalman step per frame); the frame interval is estimated
from the stamps, so a dropped frame counts as two steps.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from stvg_ros.core.types import Tracks
from stvg_ros.perception.bytetrack import ByteTracker, Track, iou_matrix

log = logging.getLogger(__name__)

NS = 1_000_000_000


@dataclass
class TrackerConfig:
    """ByteTrack thresholds (ultralytics defaults) and the re-association settings."""

    track_high_thresh: float = 0.25
    track_low_thresh: float = 0.1
    new_track_thresh: float = 0.25
    match_thresh: float = 0.8
    fuse_score: bool = True
    #: how long ByteTrack keeps a lost track for its own (IoU) re-matching
    lost_buffer_s: float = 1.0
    #: re-associate new tracks with tracks lost at most this long ago (0 disables). It counts time
    #: without detections: the detector also misses an object while it is mostly hidden, so a 2 s
    #: full occlusion behind an occluder is about 3 s without detections.
    reid_max_gap_s: float = 3.0
    #: minimum colour-histogram similarity (Bhattacharyya coefficient, 0..1)
    reid_min_similarity: float = 0.6
    #: motion gate radius in multiples of the lost box's longer side
    reid_gate_sizes: float = 2.5
    #: allowed ratio between the longer sides of the lost box and the new one
    reid_max_size_ratio: float = 2.0
    #: let low-score detections (track_low_thresh..new_track_thresh) revive lost IDs (same gates)
    reid_low_score: bool = True
    reid_same_class: bool = True
    #: most boxes per frame the tracker accepts (highest scores kept); bounds work on bad input
    max_objects: int = 300
    #: a forward stamp jump longer than this starts a fresh tracker (IDs are not reused)
    reset_after_gap_s: float = 10.0
    #: a backward stamp jump longer than this (a bag loop) starts a fresh tracker; shorter ones are dropped
    backward_jump_reset_s: float = 1.0
    #: frame interval assumed until stamps tell (seconds)
    default_frame_interval_s: float = 1.0 / 30.0


# --------------------------------------------------------------------------------------------
# Appearance


HIST_BINS = (8, 4, 4)  # H, S, V
#: how far back full observations count for a lost track's velocity (seconds)
VELOCITY_WINDOW_S = 1.5


def colour_histograms(rgb: np.ndarray, xyxy: np.ndarray, shrink: float = 0.15) -> np.ndarray:
    """(N, 128) L1-normalised HSV histograms of the inner part of each box (0 rows for empty boxes)."""
    out = np.zeros((len(xyxy), int(np.prod(HIST_BINS))), np.float32)
    if len(xyxy) == 0:
        return out
    h, w = rgb.shape[:2]
    for i, (x0, y0, x1, y1) in enumerate(xyxy):
        # Leave the border out (background), unless the box is a thin sliver already.
        dx = (x1 - x0) * shrink if x1 - x0 > 10 else 0.0
        dy = (y1 - y0) * shrink if y1 - y0 > 10 else 0.0
        ix0, iy0 = int(max(0, x0 + dx)), int(max(0, y0 + dy))
        ix1, iy1 = int(min(w, np.ceil(x1 - dx))), int(min(h, np.ceil(y1 - dy)))
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        hsv = cv2.cvtColor(np.ascontiguousarray(rgb[iy0:iy1, ix0:ix1]), cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, list(HIST_BINS), [0, 180, 0, 256, 0, 256]).reshape(-1)
        total = hist.sum()
        if total > 0:
            out[i] = hist / total
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya coefficient of two L1-normalised histograms (1 = identical)."""
    return float(np.sqrt(a * b).sum())


# --------------------------------------------------------------------------------------------
# Public tracks


@dataclass
class _PublicTrack:
    """What the tracker remembers about one public ID (for re-association).

    Boxes shrink while an object slides behind an occluder; only "full" observations (both sides
    within 20 % of the track's typical size) update the velocity and the anchor that predictions
    start from, so a half-hidden object does not look like it slowed down. The velocity is the
    least-squares slope of the full observations' centres over the last `VELOCITY_WINDOW_S`, which
    averages out the detector's frame-to-frame box jitter.
    """

    public_id: int
    class_id: int
    last_seen_ns: int
    anchor_box: np.ndarray  # last full-size box
    anchor_ns: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # px/s of the box centre
    appearance: np.ndarray | None = None
    sizes: deque = field(default_factory=lambda: deque(maxlen=15))  # recent (w, h)
    full_hits: int = 0
    #: (seconds, centre x, centre y) of recent full observations
    path: deque = field(default_factory=lambda: deque(maxlen=60))

    @property
    def typical_size(self) -> np.ndarray:
        return np.median(np.asarray(self.sizes), axis=0) if self.sizes else _size(self.anchor_box)

    def observe(self, box: np.ndarray, stamp_ns: int) -> None:
        box = np.asarray(box, np.float64)
        size = _size(box)
        typical = self.typical_size
        full = not self.sizes or bool(np.all(np.abs(size - typical) <= 0.2 * np.maximum(typical, 1.0)))
        self.sizes.append(size)
        self.last_seen_ns = stamp_ns
        if not full:
            return
        t = stamp_ns / NS
        self.path.append((t, *_centre(box)))
        while self.path and self.path[0][0] < t - VELOCITY_WINDOW_S:
            self.path.popleft()
        points = np.asarray(self.path)
        if len(points) >= 3 and points[-1, 0] - points[0, 0] >= 0.2:
            times = points[:, 0] - points[:, 0].mean()
            self.velocity = (times[:, None] * (points[:, 1:] - points[:, 1:].mean(axis=0))).sum(axis=0) / (times**2).sum()
        self.anchor_box, self.anchor_ns = box, stamp_ns
        self.full_hits += 1

    def update_appearance(self, hist: np.ndarray) -> None:
        if hist.sum() <= 0:
            return
        self.appearance = hist.copy() if self.appearance is None else 0.7 * self.appearance + 0.3 * hist


def _size(box: np.ndarray) -> np.ndarray:
    return np.array([box[2] - box[0], box[3] - box[1]], np.float64)


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float64)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from point p to segment ab."""
    ab = b - a
    t = 0.0 if not ab.any() else float(np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def _rows(tracks: list[Track]) -> np.ndarray:
    """(N, 8) float32 rows of ByteTrack tracks: Kalman box (x0, y0, x1, y1), internal ID, score,
    class, index of the detection last matched."""
    rows = [[*t.xyxy, t.track_id, t.score, t.class_id, t.det_index] for t in tracks]
    return np.asarray(rows, np.float32).reshape(-1, 8)


# --------------------------------------------------------------------------------------------


class Tracker:
    """ByteTrack + re-association with public IDs. One instance per camera."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._next_public_id = 1
        self.stats = {
            "reid_matches": 0,
            "low_score_revivals": 0,
            "tracks_created": 0,
            "out_of_order": 0,
            "resets": 0,
            "capped_frames": 0,
        }
        self._reset_state()

    # ---- state

    def _reset_state(self) -> None:
        c = self.config
        self._byte = ByteTracker(
            track_high_thresh=c.track_high_thresh,
            track_low_thresh=c.track_low_thresh,
            new_track_thresh=c.new_track_thresh,
            track_buffer=max(1, round(c.lost_buffer_s / c.default_frame_interval_s)),
            match_thresh=c.match_thresh,
            fuse_score=c.fuse_score,
        )
        self._public_of: dict[int, int] = {}  # ByteTrack id -> public id
        self._tracks: dict[int, _PublicTrack] = {}  # public id -> memory (live and lost)
        self._last_stamp: int | None = None
        self._last_output = Tracks.empty()
        self._intervals: deque[float] = deque(maxlen=31)

    def reset(self) -> None:
        """Forget every track (e.g. a bag loop); public IDs continue from where they were."""
        self.stats["resets"] += 1
        self._reset_state()

    @property
    def next_track_id(self) -> int:
        """The public ID the next new track gets."""
        return self._next_public_id

    def continue_ids_from(self, next_id: int) -> None:
        """Give new tracks IDs from `next_id` on (never reusing one already given): a resumed run
        goes on with the IDs its stopped run had reached."""
        self._next_public_id = max(self._next_public_id, int(next_id))

    @property
    def frame_interval_s(self) -> float:
        return float(np.median(self._intervals)) if self._intervals else self.config.default_frame_interval_s

    @property
    def live_ids(self) -> list[int]:
        return [int(t) for t in self._last_output.track_id]

    # ---- stamps

    def is_stale(self, stamp_ns: int) -> bool:
        """True for a frame at or before the last one that is not a backward jump (it will be ignored)."""
        if self._last_stamp is None or stamp_ns > self._last_stamp:
            return False
        return (self._last_stamp - stamp_ns) / NS <= self.config.backward_jump_reset_s

    def will_reset(self, stamp_ns: int) -> bool:
        """True when a frame at stamp_ns starts fresh tracks (backward jump or a long gap)."""
        if self._last_stamp is None:
            return False
        dt = (stamp_ns - self._last_stamp) / NS
        return dt < -self.config.backward_jump_reset_s or dt > self.config.reset_after_gap_s

    def _advance(self, stamp_ns: int, skipped: int = 0) -> int | None:
        """Kalman steps to take for a frame at stamp_ns; None when the frame must be ignored.
        `skipped`: camera frames known to be lost since the previous one (for the frame interval)."""
        c = self.config
        if self._last_stamp is None:
            self._last_stamp = stamp_ns
            return 1
        dt = (stamp_ns - self._last_stamp) / NS
        if dt <= 0:
            if -dt > c.backward_jump_reset_s:
                log.info("stamp jumped back %.1f s: starting fresh tracks", -dt)
                self.reset()
                self._last_stamp = stamp_ns
                return 1
            self.stats["out_of_order"] += 1
            return None
        if dt > c.reset_after_gap_s:
            log.info("no frame for %.1f s: starting fresh tracks", dt)
            self.reset()
            self._last_stamp = stamp_ns
            return 1
        self._intervals.append(dt / (1 + max(0, int(skipped))))
        self._last_stamp = stamp_ns
        self._byte.track_buffer = max(1, round(c.lost_buffer_s / self.frame_interval_s))
        return int(np.clip(round(dt / self.frame_interval_s), 1, 30))

    def _coast(self, steps: int) -> None:
        """Advance the Kalman filters of live and lost tracks by `steps` frames without detections."""
        self._byte.coast(steps)

    # ---- public API

    def predict(self, stamp_ns: int, image_size: tuple[int, int] | None = None, skipped: int = 0) -> Tracks:
        """Tracks on a frame without detections: the Kalman prediction of every live track
        (`detected` False). `image_size` (width, height) clips boxes to the image."""
        steps = self._advance(int(stamp_ns), skipped)
        if steps is None:
            return self._last_output[np.arange(len(self._last_output))]
        self._coast(steps)
        live = [t for t in self._byte.tracked_stracks if t.confirmed and t.track_id in self._public_of]
        if not live:
            self._last_output = Tracks.empty()
            return self._last_output
        xyxy = np.asarray([t.xyxy for t in live], np.float32)
        out = Tracks(
            xyxy=xyxy,
            track_id=np.asarray([self._public_of[t.track_id] for t in live], np.int64),
            score=np.asarray([t.score for t in live], np.float32),
            class_id=np.asarray([t.class_id for t in live], np.int32),
            detected=np.zeros(len(live), bool),
        )
        self._last_output = _clip(out, image_size)
        return self._last_output

    def update(self, stamp_ns: int, detections: Tracks, rgb: np.ndarray | None = None, skipped: int = 0) -> Tracks:
        """Tracks on a frame with detections. `rgb` (the frame) enables the appearance cue;
        `skipped` counts camera frames lost since the previous call (they were never seen)."""
        stamp_ns = int(stamp_ns)
        steps = self._advance(stamp_ns, skipped)
        if steps is None:
            return self._last_output[np.arange(len(self._last_output))]
        if steps > 1:
            self._coast(steps - 1)
        detections = self._sanitize(detections)
        rows = _rows(self._byte.update(detections.xyxy, detections.score, detections.class_id))
        rows = self._revive_from_low_scores(stamp_ns, rows, detections, rgb)
        image_size = (rgb.shape[1], rgb.shape[0]) if rgb is not None else None
        out = self._publish(stamp_ns, rows, detections, rgb)
        self._last_output = _clip(out, image_size)
        return self._last_output

    # ---- internals

    def _sanitize(self, detections: Tracks) -> Tracks:
        finite = np.isfinite(detections.xyxy).all(axis=1) & np.isfinite(detections.score)
        detections = detections[finite]
        if len(detections) > self.config.max_objects:
            self.stats["capped_frames"] += 1
            detections = detections[np.argsort(-detections.score, kind="stable")[: self.config.max_objects]]
        return detections

    def _publish(self, stamp_ns: int, rows: np.ndarray, detections: Tracks, rgb: np.ndarray | None) -> Tracks:
        by_id = {t.track_id: t for t in self._byte.tracked_stracks}
        updated_now = np.array([by_id[int(r[4])].frame_id == self._byte.frame_id for r in rows], bool)
        det_index = rows[:, 7].astype(np.int64)
        # The detector's box where the track was matched this frame, the Kalman box otherwise.
        xyxy = rows[:, :4].copy()
        if len(rows):
            xyxy[updated_now] = detections.xyxy[det_index[updated_now]]
        internal = rows[:, 4].astype(np.int64)
        hists = colour_histograms(rgb, xyxy) if rgb is not None and len(rows) else None

        new_rows = [i for i, t in enumerate(internal) if int(t) not in self._public_of]
        if new_rows:
            self._assign_public_ids(stamp_ns, new_rows, internal, xyxy, rows[:, 6].astype(np.int32), hists)

        public = np.asarray([self._public_of[int(t)] for t in internal], np.int64)
        isolated = _isolated(xyxy)
        for i, pid in enumerate(public):
            memory = self._tracks[int(pid)]
            if updated_now[i]:
                memory.observe(xyxy[i], stamp_ns)
                if hists is not None and isolated[i]:
                    memory.update_appearance(hists[i])
        self._forget(stamp_ns, set(int(p) for p in public))
        return Tracks(
            xyxy=xyxy,
            track_id=public,
            score=rows[:, 5],
            class_id=rows[:, 6].astype(np.int32),
            detected=updated_now,
        )

    def _lost_memories(self, stamp_ns: int, live_public: set[int]) -> list[_PublicTrack]:
        """Public tracks not live now and lost at most reid_max_gap_s ago."""
        window = self.config.reid_max_gap_s
        return [
            m
            for pid, m in self._tracks.items()
            if pid not in live_public and 0 < (stamp_ns - m.last_seen_ns) / NS <= window
        ]

    def _revive_from_low_scores(
        self, stamp_ns: int, rows: np.ndarray, detections: Tracks, rgb: np.ndarray | None
    ) -> np.ndarray:
        """Rows plus tracks started from low-score detections that re-associate with a lost ID."""
        c = self.config
        if not c.reid_low_score or c.reid_max_gap_s <= 0 or rgb is None or not len(detections):
            return rows
        weak = (detections.score > c.track_low_thresh) & (detections.score < c.new_track_thresh)
        weak[rows[:, 7].astype(np.int64)] = False  # taken by a track this frame
        candidates = np.flatnonzero(weak)
        if not len(candidates):
            return rows
        if len(rows):  # a weak box on top of a track is that object, not another one
            candidates = candidates[iou_matrix(detections.xyxy[candidates], rows[:, :4]).max(axis=1) < 0.3]
        live_public = {self._public_of[int(t)] for t in rows[:, 4] if int(t) in self._public_of}
        lost = self._lost_memories(stamp_ns, live_public)
        if not len(candidates) or not lost:
            return rows
        hists = colour_histograms(rgb, detections.xyxy[candidates])
        matches = self._match_lost(
            stamp_ns, detections.xyxy[candidates], detections.class_id[candidates], hists, lost
        )
        if not matches:
            return rows
        revived = []
        for a, memory in matches.items():
            d = int(candidates[a])
            # Confirmed at once, so that low-score detections keep it (ByteTrack's second association).
            track = self._byte.start_track(
                detections.xyxy[d], detections.score[d], detections.class_id[d], d, confirmed=True
            )
            self._take_over(track.track_id, memory.public_id)
            self.stats["low_score_revivals"] += 1
            revived.append(track)
        return np.concatenate([rows, _rows(revived)])

    def _assign_public_ids(
        self,
        stamp_ns: int,
        new_rows: list[int],
        internal: np.ndarray,
        xyxy: np.ndarray,
        class_ids: np.ndarray,
        hists: np.ndarray | None,
    ) -> None:
        live_public = {self._public_of[int(t)] for t in internal if int(t) in self._public_of}
        lost = self._lost_memories(stamp_ns, live_public)
        matches: dict[int, _PublicTrack] = {}
        if lost and self.config.reid_max_gap_s > 0 and hists is not None:
            matches = self._match_lost(stamp_ns, xyxy[new_rows], class_ids[new_rows], hists[new_rows], lost)
        for a, row in enumerate(new_rows):
            ident = int(internal[row])
            if a in matches:
                self._take_over(ident, matches[a].public_id)
                continue
            pid = self._next_public_id
            self._next_public_id += 1
            self.stats["tracks_created"] += 1
            box = xyxy[row].astype(np.float64)
            self._tracks[pid] = _PublicTrack(pid, int(class_ids[row]), stamp_ns, box, stamp_ns)
            self._public_of[ident] = pid

    def _match_lost(
        self, stamp_ns: int, xyxy: np.ndarray, class_ids: np.ndarray, hists: np.ndarray, lost: list[_PublicTrack]
    ) -> dict[int, _PublicTrack]:
        """Row of `xyxy` -> the lost track whose ID it takes (Hungarian assignment on `_reid_cost`;
        pairs that fail a gate are never matched)."""
        cost = np.asarray(
            [
                [self._reid_cost(stamp_ns, xyxy[a], int(class_ids[a]), hists[a], memory) for memory in lost]
                for a in range(len(xyxy))
            ],
            np.float64,
        ).reshape(len(xyxy), len(lost))
        if not np.isfinite(cost).any():
            return {}
        rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e6))
        return {int(a): lost[b] for a, b in zip(rows, cols, strict=True) if np.isfinite(cost[a, b])}

    def _take_over(self, internal_id: int, public_id: int) -> None:
        """Give ByteTrack track `internal_id` the lost `public_id` (re-association)."""
        self._drop_internal_of(public_id)
        self._public_of[int(internal_id)] = public_id
        self.stats["reid_matches"] += 1

    def _reid_cost(
        self, stamp_ns: int, box: np.ndarray, class_id: int, hist: np.ndarray, memory: _PublicTrack
    ) -> float:
        """Cost of giving `memory`'s ID to a new box (inf when a gate fails)."""
        c = self.config
        if c.reid_same_class and class_id != memory.class_id:
            return np.inf
        if memory.appearance is None or hist.sum() <= 0:
            return np.inf
        # A box emerging from behind an occluder is cut on one side: compare the longer sides.
        typical = memory.typical_size
        long_new, long_old = max(_size(box)), max(typical)
        if max(long_new / max(long_old, 1e-6), long_old / max(long_new, 1e-6)) > c.reid_max_size_ratio:
            return np.inf
        start = _centre(memory.anchor_box)
        predicted = start + memory.velocity * (stamp_ns - memory.anchor_ns) / NS
        gate = c.reid_gate_sizes * max(long_old, 1.0)
        distance = _segment_distance(_centre(box), start, predicted)
        if distance > gate:
            return np.inf
        sim = similarity(hist, memory.appearance)
        if sim < c.reid_min_similarity:
            return np.inf
        return (1.0 - sim) + 0.5 * distance / gate

    def _drop_internal_of(self, public_id: int) -> None:
        """Remove ByteTrack's lost track that still carries `public_id`, so two tracks never share it."""
        stale = [i for i, p in self._public_of.items() if p == public_id]
        for ident in stale:
            del self._public_of[ident]
        self._byte.drop_lost(set(stale))

    def _forget(self, stamp_ns: int, live: set[int]) -> None:
        """Drop mappings of tracks ByteTrack removed, then memories older than the re-association
        window that no ByteTrack track (live or lost) still carries."""
        kept = {t.track_id for t in self._byte.tracked_stracks} | {t.track_id for t in self._byte.lost_stracks}
        for ident in [i for i in self._public_of if i not in kept]:
            del self._public_of[ident]
        carried = live | set(self._public_of.values())
        horizon = max(self.config.reid_max_gap_s, self.config.lost_buffer_s) * NS
        for pid in [p for p, m in self._tracks.items() if p not in carried and stamp_ns - m.last_seen_ns > horizon]:
            del self._tracks[pid]


def _isolated(xyxy: np.ndarray, max_iou: float = 0.1) -> np.ndarray:
    """Rows whose box barely overlaps any other (their histogram is not mixed with a neighbour's)."""
    if len(xyxy) <= 1:
        return np.ones(len(xyxy), bool)
    if len(xyxy) > 400:  # quadratic; crowds this large get no appearance updates
        return np.zeros(len(xyxy), bool)
    iou = iou_matrix(xyxy, xyxy)
    np.fill_diagonal(iou, 0)
    return iou.max(axis=1) <= max_iou


def _clip(tracks: Tracks, image_size: tuple[int, int] | None) -> Tracks:
    if image_size is None or len(tracks) == 0:
        return tracks
    width, height = image_size
    xyxy = tracks.xyxy.copy()
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    tracks = Tracks(
        xyxy=xyxy, track_id=tracks.track_id, score=tracks.score, class_id=tracks.class_id, detected=tracks.detected
    )
    return tracks[keep]
