"""Our ByteTrack (stvg_ros.perception.bytetrack): association, lost pool, low-score boxes, track
removal; and the tracker running with neither ultralytics nor torch importable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from stvg_ros.perception.bytetrack import ByteTracker, KalmanBoxFilter, TrackState, linear_assignment


def box_at(x: float, y: float = 100.0, w: float = 40.0, h: float = 80.0) -> np.ndarray:
    return np.array([x, y, x + w, y + h], np.float32)


def step(tracker: ByteTracker, boxes: list[np.ndarray], scores: list[float] | float = 0.9) -> dict[int, np.ndarray]:
    """One frame; the confirmed live tracks as {ID: Kalman box}."""
    xyxy = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.broadcast_to(np.asarray(scores, np.float32), (len(xyxy),))
    return {t.track_id: t.xyxy for t in tracker.update(xyxy, scores, np.zeros(len(xyxy), np.int32))}


def test_a_moving_box_keeps_its_id():
    tracker = ByteTracker()
    ids = [list(step(tracker, [box_at(10 + 7 * f)])) for f in range(40)]
    assert ids == [[1]] * 40
    # The Kalman filter learns the velocity: its box is where the detection is.
    np.testing.assert_allclose(tracker.tracked_stracks[0].xyxy, box_at(10 + 7 * 39), atol=2)
    assert tracker.tracked_stracks[0].mean[4] > 5


def test_a_track_started_later_is_reported_from_its_second_frame():
    tracker = ByteTracker()
    step(tracker, [box_at(10)])  # frame 1: confirmed at once
    assert list(step(tracker, [box_at(10), box_at(300)])) == [1]  # the new box: not yet
    assert sorted(step(tracker, [box_at(10), box_at(300)])) == [1, 2]
    # A box seen on one frame only never shows up and never holds an ID.
    step(tracker, [box_at(10), box_at(300), box_at(500)])
    assert sorted(step(tracker, [box_at(10), box_at(300)])) == [1, 2]
    assert sorted(step(tracker, [box_at(10), box_at(300), box_at(500, y=300)])) == [1, 2]
    assert sorted(step(tracker, [box_at(10), box_at(300), box_at(500, y=300)])) == [1, 2, 4]


def test_missed_detections_keep_the_id_through_the_lost_pool():
    tracker = ByteTracker(track_buffer=30)
    for f in range(20):
        step(tracker, [box_at(10 + 5 * f)])
    for _ in range(8):  # eight frames without the object
        assert step(tracker, []) == {}
        assert [t.track_id for t in tracker.lost_stracks] == [1]
        assert tracker.lost_stracks[0].state == TrackState.LOST
    # The lost track kept moving with its velocity, so the box where the object now is matches it.
    assert list(step(tracker, [box_at(10 + 5 * 28)])) == [1]
    assert tracker.lost_stracks == [] and [t.track_id for t in tracker.tracked_stracks] == [1]


def test_two_crossing_objects_keep_distinct_ids():
    tracker = ByteTracker()
    frames = []
    for f in range(40):  # one moves right, the other left, a little lower; they overlap for 5 frames
        right, left = box_at(20 + 8 * f, y=100), box_at(340 - 8 * f, y=105)
        frames.append(step(tracker, [right, left]))
    first, last = frames[0], frames[-1]
    assert len(first) == 2 and sorted(last) == sorted(first)
    right_id = min(first, key=lambda i: first[i][0])  # the one starting on the left moves right
    assert all(len(f) == 2 for f in frames)
    assert last[right_id][0] > max(b[0] for i, b in last.items() if i != right_id)


def test_low_score_boxes_extend_a_track_but_never_start_one():
    tracker = ByteTracker()
    for f in range(30):  # a weak box alone, for a second at 30 FPS: nothing
        assert step(tracker, [box_at(10 + 4 * f)], 0.15) == {}
    assert tracker.tracked_stracks == [] and tracker.lost_stracks == []
    for f in range(30, 35):
        step(tracker, [box_at(10 + 4 * f)], 0.9)
    (track_id,) = step(tracker, [box_at(10 + 4 * 35)], 0.9)
    for f in range(36, 60):  # the same object, now weakly detected: the track follows it
        out = step(tracker, [box_at(10 + 4 * f)], 0.15)
        assert list(out) == [track_id]
        np.testing.assert_allclose(out[track_id], box_at(10 + 4 * f), atol=3)
    assert tracker.tracked_stracks[0].score == np.float32(0.15)
    # Below track_low_thresh a box is ignored altogether: the track is lost.
    assert step(tracker, [box_at(10 + 4 * 60)], 0.05) == {}
    assert [t.track_id for t in tracker.lost_stracks] == [track_id]


def test_a_weak_box_does_not_revive_a_lost_track():
    """The second association only considers live tracks; a lost one needs a confident box."""
    tracker = ByteTracker()
    for _ in range(10):
        step(tracker, [box_at(10)])
    step(tracker, [])
    assert step(tracker, [box_at(10)], 0.15) == {} and len(tracker.lost_stracks) == 1
    assert list(step(tracker, [box_at(10)], 0.9)) == [1]


def test_a_track_is_dropped_after_track_buffer_frames():
    tracker = ByteTracker(track_buffer=10)
    for _ in range(5):
        step(tracker, [box_at(100)])
    last_seen = tracker.frame_id
    while tracker.frame_id < last_seen + 10:
        step(tracker, [])
        assert len(tracker.lost_stracks) == 1, tracker.frame_id - last_seen
    step(tracker, [])  # track_buffer + 1 frames after it was last seen
    assert tracker.lost_stracks == [] and tracker.tracked_stracks == []
    assert [(t.track_id, t.state) for t in tracker.removed_stracks] == [(1, TrackState.REMOVED)]
    step(tracker, [box_at(100)])
    assert sorted(step(tracker, [box_at(100)])) == [2]  # the object back: a new ID, never a reused one


def test_coasting_moves_live_tracks_without_losing_them():
    tracker = ByteTracker()
    for f in range(15):
        step(tracker, [box_at(10 + 6 * f)])
    tracker.coast(5)
    assert [t.state for t in tracker.tracked_stracks] == [TrackState.TRACKED] and tracker.frame_id == 20
    np.testing.assert_allclose(tracker.tracked_stracks[0].xyxy, box_at(10 + 6 * 19), atol=3)
    assert list(step(tracker, [box_at(10 + 6 * 20)])) == [1]


def test_assignment_leaves_pairs_above_the_threshold_unmatched_and_minimises_the_total():
    cost = np.array([[0.1, 0.75], [0.75, 0.95]])
    # Matching (0, 1) and (1, 0) pairs everything but costs more than (0, 0) alone plus one row and
    # one column left over (0.8 each side): the cheaper matching wins.
    matches, rows, cols = linear_assignment(cost, 0.8)
    assert matches == [(0, 0)] and rows == [1] and cols == [1]
    matches, rows, cols = linear_assignment(np.zeros((0, 3)), 0.8)
    assert matches == [] and rows == [] and cols == [0, 1, 2]


def test_kalman_filter_follows_a_constant_velocity():
    kalman = KalmanBoxFilter()
    mean, cov = kalman.initiate(np.array([100.0, 50.0, 0.5, 80.0]))
    for k in range(1, 30):
        means, covs = kalman.predict(mean[None], cov[None])
        mean, cov = kalman.update(means[0], covs[0], np.array([100.0 + 3 * k, 50.0 - k, 0.5, 80.0]))
    np.testing.assert_allclose(mean[4:6], [3.0, -1.0], atol=0.2)
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_the_tracker_runs_without_ultralytics_and_torch():
    """The ONNX path must not pull in torch: with both made unimportable, the tracker still works."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["ultralytics"] = None
        sys.modules["torch"] = None
        import numpy as np
        from stvg_ros.core.types import Tracks
        from stvg_ros.perception.tracker import Tracker

        tracker = Tracker()
        rgb = np.full((240, 320, 3), 128, np.uint8)
        for f in range(5):
            box = np.array([[20 + 4 * f, 40, 50 + 4 * f, 80]], np.float32)
            out = tracker.update(100_000_000_000 + f * 33_333_333, Tracks(xyxy=box, score=np.array([0.9])), rgb)
        predicted = tracker.predict(100_000_000_000 + 5 * 33_333_333, (320, 240))
        print(out.track_id.tolist(), predicted.track_id.tolist(), bool(predicted.detected.any()))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "[1] [1] False"


def test_the_onnx_perception_pipeline_runs_without_ultralytics_and_torch(tiny_detector):
    """Detector (ONNX Runtime, int8) + tracker, as the tracker node builds them, with neither installed."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["ultralytics"] = None
        sys.modules["torch"] = None
        import numpy as np
        from stvg_ros.perception.pipeline import PerceptionConfig, build_perception

        pipeline = build_perception(PerceptionConfig(model={str(tiny_detector["onnx-int8"])!r}, threads=1))
        rgb = np.full((240, 320, 3), 90, np.uint8)
        rgb[60:120, 100:160] = (220, 40, 40)
        tracks = [pipeline.process(1_000_000_000 + f * 33_333_333, rgb) for f in range(3)]
        print(type(pipeline.detector).__name__, all(hasattr(t, "track_id") for t in tracks))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "OnnxDetector True", result.stdout
