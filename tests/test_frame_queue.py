"""FrameWorker (core/frame_queue.py): the bounded hand-over from a subscription callback to a node's
processing thread, and the pipeline's catch-up path it enables (no frame without tracks)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from stvg_ros.core.frame_queue import FrameWorker


def _wait(predicate, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_a_slow_handler_gets_every_waiting_frame_at_once_oldest_first_and_nothing_is_lost():
    batches: list[list[int]] = []
    release = threading.Event()

    def handle(items: list[int]) -> None:
        batches.append(items)
        release.wait(5.0)  # the first batch blocks while frames keep arriving

    worker = FrameWorker(handle, capacity=10).start()
    try:
        worker.submit(0)
        assert _wait(lambda: batches)
        for i in range(1, 6):
            assert worker.submit(i)
        release.set()
        assert _wait(lambda: sum(len(b) for b in batches) == 6)
    finally:
        worker.stop()
    assert batches == [[0], [1, 2, 3, 4, 5]]
    assert worker.dropped == 0 and worker.handled == 6


def test_a_full_queue_drops_its_oldest_frames_and_counts_them():
    release = threading.Event()
    seen: list[int] = []
    worker = FrameWorker(lambda items: (seen.extend(items), release.wait(5.0)), capacity=3).start()
    try:
        worker.submit(0)
        assert _wait(lambda: seen == [0])
        results = [worker.submit(i) for i in range(1, 8)]  # 7 frames into 3 places
        assert results == [True, True, True, False, False, False, False]
        assert len(worker) == 3 and worker.dropped == 4
        release.set()
        assert _wait(lambda: len(seen) == 4)
    finally:
        worker.stop()
    assert seen == [0, 5, 6, 7]  # the newest frames survive


def test_a_handler_error_is_reported_and_the_thread_goes_on():
    errors: list[Exception] = []
    seen: list[int] = []

    def handle(items: list[int]) -> None:
        if 0 in items:
            raise RuntimeError("bad frame")
        seen.extend(items)

    worker = FrameWorker(handle, capacity=4, on_error=errors.append).start()
    try:
        worker.submit(0)
        assert _wait(lambda: errors)
        worker.submit(1)
        assert _wait(lambda: seen == [1])
    finally:
        worker.stop()
    assert worker.errors == 1 and str(errors[0]) == "bad frame"


def test_stop_returns_and_discards_waiting_frames():
    worker = FrameWorker(lambda items: time.sleep(0.2), capacity=5).start()
    for i in range(5):
        worker.submit(i)
    started = time.monotonic()
    worker.stop(timeout_s=5.0)
    assert time.monotonic() - started < 5.0 and len(worker) == 0
    with pytest.raises(ValueError, match="at least 1"):
        FrameWorker(lambda items: None, capacity=0)


def test_catch_up_gives_a_late_frame_the_trackers_prediction_without_the_image(tiny_detector):
    from stvg_ros.perception.pipeline import PerceptionConfig, build_perception
    from stvg_ros.synthetic.scenes import SceneSpec, generate_scene

    scene = generate_scene(3, SceneSpec(seconds=4.0, fps=10.0, n_objects=3))
    pipeline = build_perception(PerceptionConfig(model=str(tiny_detector["onnx-int8"]), threads=1, detect_every=1))
    size = (scene.spec.width, scene.spec.height)
    stamp = lambda i: 1_000_000_000 + i * 100_000_000  # noqa: E731
    for i in range(5):
        tracks = pipeline.process(stamp(i), scene.render_frame(i))
    assert len(tracks) > 0
    ids = set(tracks.track_id.tolist())
    caught = [pipeline.catch_up(stamp(i), size) for i in range(5, 8)]  # the node fell behind
    assert all(set(t.track_id.tolist()) == ids and not t.detected.any() for t in caught)
    assert pipeline.stats.caught_up == 3 and pipeline.stats.detector_runs == 5
    after = pipeline.process(stamp(8), scene.render_frame(8))  # detection resumes on the newest frame
    assert pipeline.stats.detector_runs == 6 and after.detected.any()
    assert np.all(caught[-1].xyxy[:, 2] <= size[0]) and np.all(caught[-1].xyxy[:, 3] <= size[1])
