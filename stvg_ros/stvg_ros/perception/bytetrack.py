"""ByteTrack (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection Box",
ECCV 2022): frame-to-frame association of detector boxes, with numpy and scipy only (no torch).

Each track has a Kalman filter on (centre x, centre y, aspect w/h, height) with constant velocity.
Per frame:

1. Detections split by score: high (>= `track_high_thresh`) and low (`track_low_thresh` < score <
   `track_high_thresh`); boxes without area are ignored.
2. Confirmed live tracks and lost tracks are predicted one step and matched to the high boxes by
   IoU distance (optionally fused with the score: 1 - IoU * score), `match_thresh`.
3. Live tracks left over are matched to the low boxes by IoU distance (threshold 0.5); the rest
   become lost. Low boxes never start a track.
4. Unconfirmed tracks (seen on one frame only) take the remaining high boxes (threshold 0.7) or
   are removed.
5. High boxes still unmatched with score >= `new_track_thresh` start unconfirmed tracks (confirmed
   at once on the first frame); lost tracks older than `track_buffer` frames are removed.

Assignment minimises the total cost with a pair allowed only below its threshold, as ByteTrack's
reference implementation does (leaving a pair unmatched costs the threshold).
This is the tracker behind `stvg_ros.perception.tracker`, which adds public IDs and re-association.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from scipy.optimize import linear_sum_assignment

#: Kalman noise, relative to the box height (the values of DeepSORT and ByteTrack)
POSITION_NOISE = 1.0 / 20
VELOCITY_NOISE = 1.0 / 160
#: second association (low-score boxes) and unconfirmed tracks: IoU-distance thresholds of the paper
LOW_SCORE_MATCH_THRESH = 0.5
UNCONFIRMED_MATCH_THRESH = 0.7
#: a live and a lost track overlapping more than this are one object: the younger one is dropped
DUPLICATE_IOU = 0.85


class TrackState(IntEnum):
    TRACKED = 1
    LOST = 2
    REMOVED = 3


# --------------------------------------------------------------------------------------------
# Geometry and assignment


def xyxy_to_xyah(xyxy: np.ndarray) -> np.ndarray:
    """(..., 4) corner boxes -> (..., 4) (centre x, centre y, width / height, height)."""
    xyxy = np.asarray(xyxy, np.float64)
    w, h = xyxy[..., 2] - xyxy[..., 0], xyxy[..., 3] - xyxy[..., 1]
    return np.stack([xyxy[..., 0] + w / 2, xyxy[..., 1] + h / 2, w / h, h], axis=-1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """Inverse of `xyxy_to_xyah`."""
    xyah = np.asarray(xyah, np.float64)
    h = xyah[..., 3]
    w = xyah[..., 2] * h
    return np.stack([xyah[..., 0] - w / 2, xyah[..., 1] - h / 2, xyah[..., 0] + w / 2, xyah[..., 1] + h / 2], axis=-1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of corner boxes a (N, 4) and b (M, 4)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def linear_assignment(cost: np.ndarray, thresh: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Minimum-cost matching where a pair is allowed only when its cost is below `thresh`.

    Leaving a row and a column unmatched costs `thresh`, so the best matching minimises the sum of
    (cost - thresh) over matched pairs: the Hungarian algorithm on min(cost - thresh, 0).
    Returns (matches as (row, column), unmatched rows, unmatched columns).
    """
    n, m = cost.shape
    if n == 0 or m == 0:
        return [], list(range(n)), list(range(m))
    gain = np.minimum(cost - thresh, 0.0)
    rows, cols = linear_sum_assignment(gain)
    matches = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < thresh]
    matched_rows = {r for r, _ in matches}
    matched_cols = {c for _, c in matches}
    return matches, [r for r in range(n) if r not in matched_rows], [c for c in range(m) if c not in matched_cols]


# --------------------------------------------------------------------------------------------
# Kalman filter


class KalmanBoxFilter:
    """Constant-velocity Kalman filter on (cx, cy, a, h) and their velocities; one step = one frame.
    Noise scales with the box height, except for the aspect ratio (fixed, small)."""

    def __init__(self) -> None:
        self.motion = np.eye(8)
        self.motion[:4, 4:] = np.eye(4)

    @staticmethod
    def _stds(h: np.ndarray, position: float, aspect: float, velocity: float, aspect_velocity: float) -> np.ndarray:
        """(N, 8) standard deviations for box heights h (N,)."""
        h = np.asarray(h, np.float64)
        pos, vel = position * h, velocity * h
        return np.stack(
            [pos, pos, np.full_like(h, aspect), pos, vel, vel, np.full_like(h, aspect_velocity), vel], axis=-1
        )

    def initiate(self, xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """State of a new track at measurement `xyah` (velocities zero, uncertain)."""
        xyah = np.asarray(xyah, np.float64)
        std = self._stds(xyah[3:4], 2 * POSITION_NOISE, 1e-2, 10 * VELOCITY_NOISE, 1e-5)[0]
        return np.concatenate([xyah, np.zeros(4)]), np.diag(std**2)

    def predict(self, means: np.ndarray, covariances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step ahead for (N, 8) means and (N, 8, 8) covariances."""
        std = self._stds(means[:, 3], POSITION_NOISE, 1e-2, VELOCITY_NOISE, 1e-5)
        noise = np.zeros_like(covariances)
        noise[:, np.arange(8), np.arange(8)] = std**2
        means = means @ self.motion.T
        covariances = self.motion @ covariances @ self.motion.T + noise
        return means, covariances

    def update(self, mean: np.ndarray, covariance: np.ndarray, xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct one state with measurement `xyah`."""
        std = self._stds(mean[3:4], POSITION_NOISE, 1e-1, 0.0, 0.0)[0, :4]
        innovation_cov = covariance[:4, :4] + np.diag(std**2)
        gain = np.linalg.solve(innovation_cov, covariance[:4, :]).T  # (8, 4): P Hᵀ S⁻¹ (S symmetric)
        mean = mean + gain @ (np.asarray(xyah, np.float64) - mean[:4])
        covariance = covariance - gain @ innovation_cov @ gain.T
        return mean, covariance


# --------------------------------------------------------------------------------------------
# Tracks


class Track:
    """One ByteTrack track: Kalman state, the last matched detection and its state in the tracker.

    `confirmed` is False for a track started on one frame and not matched since (it is not
    reported, and is removed when the next frame does not match it). `frame_id` is the last frame
    it was matched on; `det_index` the index of that detection in its frame's input.
    """

    __slots__ = (
        "class_id",
        "confirmed",
        "covariance",
        "det_index",
        "frame_id",
        "mean",
        "score",
        "start_frame",
        "state",
        "track_id",
    )

    def __init__(
        self,
        track_id: int,
        mean: np.ndarray,
        covariance: np.ndarray,
        score: float,
        class_id: int,
        det_index: int,
        frame_id: int,
        confirmed: bool,
    ) -> None:
        self.track_id = track_id
        self.mean, self.covariance = mean, covariance
        self.score, self.class_id, self.det_index = score, class_id, det_index
        self.frame_id = self.start_frame = frame_id
        self.confirmed = confirmed
        self.state = TrackState.TRACKED

    @property
    def xyxy(self) -> np.ndarray:
        """The Kalman box (corners, float64)."""
        return xyah_to_xyxy(self.mean[:4])

    def __repr__(self) -> str:
        return f"Track({self.track_id}, {self.state.name}, frames {self.start_frame}-{self.frame_id})"


def _merge(first: list[Track], second: list[Track]) -> list[Track]:
    """`first` followed by the tracks of `second` whose ID is not in `first`."""
    ids = {t.track_id for t in first}
    return first + [t for t in second if t.track_id not in ids]


def _boxes(tracks: list[Track]) -> np.ndarray:
    return np.asarray([t.xyxy for t in tracks], np.float64).reshape(-1, 4)


# --------------------------------------------------------------------------------------------


class ByteTracker:
    """ByteTrack association (see the module docstring). Defaults are ultralytics' bytetrack.yaml.

    `tracked_stracks` holds live tracks (confirmed and unconfirmed), `lost_stracks` tracks kept for
    re-matching, `removed_stracks` the tracks the latest frame removed. Track IDs start at 1 per
    instance and are never reused. `track_buffer` may be changed between frames.
    """

    def __init__(
        self,
        track_high_thresh: float = 0.25,
        track_low_thresh: float = 0.1,
        new_track_thresh: float = 0.25,
        track_buffer: int = 30,
        match_thresh: float = 0.8,
        fuse_score: bool = True,
    ) -> None:
        self.track_high_thresh = track_high_thresh
        self.track_low_thresh = track_low_thresh
        self.new_track_thresh = new_track_thresh
        self.track_buffer = track_buffer
        self.match_thresh = match_thresh
        self.fuse_score = fuse_score
        self.kalman = KalmanBoxFilter()
        self.tracked_stracks: list[Track] = []
        self.lost_stracks: list[Track] = []
        self.removed_stracks: list[Track] = []
        self.frame_id = 0
        self._next_id = 1

    # ---- track life

    def _new_track(self, xyxy: np.ndarray, score: float, class_id: int, det_index: int, confirmed: bool) -> Track:
        mean, covariance = self.kalman.initiate(xyxy_to_xyah(xyxy))
        track = Track(self._next_id, mean, covariance, float(score), int(class_id), int(det_index), self.frame_id,
                      confirmed)  # fmt: skip
        self._next_id += 1
        return track

    def start_track(self, xyxy: np.ndarray, score: float, class_id: int, det_index: int, confirmed: bool) -> Track:
        """A new live track at box `xyxy` on the current frame, added to `tracked_stracks`
        (`confirmed`: reported at once and kept by low-score boxes from the next frame on)."""
        track = self._new_track(xyxy, score, class_id, det_index, confirmed)
        self.tracked_stracks.append(track)
        return track

    def _correct(self, track: Track, xyxy: np.ndarray, score: float, class_id: int, det_index: int) -> None:
        """Update `track` with a matched detection (a lost one comes back to life)."""
        track.mean, track.covariance = self.kalman.update(track.mean, track.covariance, xyxy_to_xyah(xyxy))
        track.score, track.class_id, track.det_index = float(score), int(class_id), int(det_index)
        track.frame_id = self.frame_id
        track.state = TrackState.TRACKED
        track.confirmed = True

    def _predict(self, tracks: list[Track]) -> None:
        """One Kalman step for `tracks`; tracks not live keep their size (height velocity zeroed)."""
        if not tracks:
            return
        means = np.stack([t.mean for t in tracks])
        means[[t.state != TrackState.TRACKED for t in tracks], 7] = 0.0
        means, covariances = self.kalman.predict(means, np.stack([t.covariance for t in tracks]))
        for t, mean, covariance in zip(tracks, means, covariances, strict=True):
            t.mean, t.covariance = mean, covariance

    def coast(self, steps: int) -> None:
        """Advance `steps` frames without detections: confirmed live and lost tracks are predicted,
        nothing is matched, lost or removed."""
        pool = [t for t in self.tracked_stracks if t.confirmed] + self.lost_stracks
        for _ in range(steps):
            self.frame_id += 1
            self._predict(pool)

    def drop_lost(self, track_ids: set[int]) -> None:
        """Forget the lost tracks with these IDs (they will not be re-matched)."""
        self.lost_stracks = [t for t in self.lost_stracks if t.track_id not in track_ids]

    # ---- association

    def _cost(self, tracks: list[Track], xyxy: np.ndarray, scores: np.ndarray, fuse: bool) -> np.ndarray:
        similarity = iou_matrix(_boxes(tracks), xyxy)
        if fuse:
            similarity = similarity * scores[None, :]
        return 1.0 - similarity

    def update(self, xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> list[Track]:
        """One frame of detections (corner boxes, scores, classes) -> the confirmed live tracks."""
        self.frame_id += 1
        xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
        scores = np.asarray(scores).reshape(-1)  # compared in the caller's precision (float32 from the detector)
        class_ids = np.asarray(class_ids).reshape(-1)
        valid = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        high = np.flatnonzero(valid & (scores >= self.track_high_thresh))
        low = np.flatnonzero(valid & (scores > self.track_low_thresh) & (scores < self.track_high_thresh))

        def correct(track: Track, d: int) -> None:
            self._correct(track, xyxy[d], scores[d], class_ids[d], d)

        unconfirmed = [t for t in self.tracked_stracks if not t.confirmed]
        pool = _merge([t for t in self.tracked_stracks if t.confirmed], self.lost_stracks)
        self._predict(pool)
        refound: list[Track] = []
        newly_lost: list[Track] = []
        removed: list[Track] = []

        # 1. confident boxes against live and lost tracks
        cost = self._cost(pool, xyxy[high], scores[high], self.fuse_score)
        matches, left_tracks, left_high = linear_assignment(cost, self.match_thresh)
        for t, d in matches:
            if pool[t].state != TrackState.TRACKED:
                refound.append(pool[t])
            correct(pool[t], int(high[d]))

        # 2. weak boxes against the live tracks still unmatched
        live = [pool[t] for t in left_tracks if pool[t].state == TrackState.TRACKED]
        cost = self._cost(live, xyxy[low], scores[low], fuse=False)
        matches, left_live, _ = linear_assignment(cost, LOW_SCORE_MATCH_THRESH)
        for t, d in matches:
            correct(live[t], int(low[d]))
        for t in left_live:
            live[t].state = TrackState.LOST
            newly_lost.append(live[t])

        # 3. unconfirmed tracks against the confident boxes left
        remaining = high[left_high]
        cost = self._cost(unconfirmed, xyxy[remaining], scores[remaining], self.fuse_score)
        matches, left_unconfirmed, left_remaining = linear_assignment(cost, UNCONFIRMED_MATCH_THRESH)
        for t, d in matches:
            correct(unconfirmed[t], int(remaining[d]))
        for t in left_unconfirmed:
            unconfirmed[t].state = TrackState.REMOVED
            removed.append(unconfirmed[t])

        # 4. new tracks, then lost tracks past the buffer
        started = [
            self._new_track(xyxy[d], scores[d], class_ids[d], int(d), confirmed=self.frame_id == 1)
            for d in remaining[left_remaining]
            if scores[d] >= self.new_track_thresh
        ]
        for track in self.lost_stracks:
            if self.frame_id - track.frame_id > self.track_buffer:
                track.state = TrackState.REMOVED
                removed.append(track)

        # bookkeeping: live = still tracked, then new, then found again
        tracked = [t for t in self.tracked_stracks if t.state == TrackState.TRACKED]
        self.tracked_stracks = _merge(_merge(tracked, started), refound)
        live_ids = {t.track_id for t in self.tracked_stracks}
        lost = [t for t in self.lost_stracks if t.track_id not in live_ids] + newly_lost
        self.lost_stracks = [t for t in lost if t.state != TrackState.REMOVED]
        self.tracked_stracks, self.lost_stracks = self._without_duplicates(self.tracked_stracks, self.lost_stracks)
        self.removed_stracks = removed
        return [t for t in self.tracked_stracks if t.confirmed]

    @staticmethod
    def _without_duplicates(tracked: list[Track], lost: list[Track]) -> tuple[list[Track], list[Track]]:
        """Where a live and a lost track cover the same object, keep the one followed longer
        (the lost one on a tie)."""
        if not tracked or not lost:
            return tracked, lost
        drop_tracked, drop_lost = set(), set()
        for a, b in zip(*np.nonzero(iou_matrix(_boxes(tracked), _boxes(lost)) > DUPLICATE_IOU), strict=True):
            age_a = tracked[a].frame_id - tracked[a].start_frame
            age_b = lost[b].frame_id - lost[b].start_frame
            if age_a > age_b:
                drop_lost.add(int(b))
            else:
                drop_tracked.add(int(a))
        return (
            [t for i, t in enumerate(tracked) if i not in drop_tracked],
            [t for i, t in enumerate(lost) if i not in drop_lost],
        )
