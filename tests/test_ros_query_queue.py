"""The grounding node's bounded query queue and target follower, without DDS."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stvg_ros.core.types import Tracks
from stvg_ros.grounding.query_queue import (
    QueryJob,
    QueryQueue,
    TargetFollower,
    check_window,
    last_sighting,
    overall_progress,
    query_problem,
    reasoning_for,
)

S = 1_000_000_000


def _job() -> QueryJob:
    return QueryJob(request=None, snapshot=None)


def test_queue_refuses_at_once_when_full_and_serves_in_order():
    release = threading.Event()
    order = []

    def run(job):
        order.append(job)
        assert release.wait(10)
        return "answer"

    q = QueryQueue(run, waiting=1)
    try:
        jobs = [_job() for _ in range(4)]
        accepted = [q.submit(j) for j in jobs]
        assert accepted == [True, True, False, False]  # one running + one waiting
        release.set()
        assert all(j.done.wait(10) for j in jobs[:2])
        assert [j.outcome for j in jobs[:2]] == ["answer", "answer"] and order == jobs[:2]
        assert q.submit(_job())  # room again
    finally:
        release.set()
        q.stop()


def test_queue_skips_cancelled_jobs_and_survives_a_failing_run():
    def run(job):
        raise RuntimeError("model exploded")

    q = QueryQueue(run, waiting=2)
    try:
        failing, cancelled = _job(), _job()
        cancelled.cancel.set()
        assert q.submit(failing) and q.submit(cancelled)
        assert failing.done.wait(10) and cancelled.done.wait(10)
        assert "model exploded" in failing.error and failing.outcome is None
        assert cancelled.error == "cancelled while queued"
    finally:
        q.stop()


def test_queue_stop_cancels_the_running_job_and_fails_the_waiting_ones():
    started = threading.Event()

    def run(job):
        started.set()
        assert job.cancel.wait(10)
        return "stopped early"

    q = QueryQueue(run, waiting=1)
    running, waiting = _job(), _job()
    assert q.submit(running) and q.submit(waiting)
    assert started.wait(10)
    q.stop(timeout_s=10)
    assert running.done.is_set() and running.outcome == "stopped early"
    assert waiting.done.is_set() and "deactivated" in waiting.error
    assert not q.submit(_job())
    with pytest.raises(ValueError):
        QueryQueue(run, waiting=-1)


def _tracks(tid: int | None, detected: bool = True, box=(10, 10, 20, 20)) -> Tracks:
    if tid is None:
        return Tracks()
    return Tracks(xyxy=[box], track_id=[tid], detected=[detected])


def test_follower_tracks_then_reports_occlusion_then_loss_once():
    f = TargetFollower(lost_timeout_s=1.0)
    assert f.update(0, _tracks(4)) is None  # nothing followed yet
    assert f.follow(4, "the red circle", last_seen_ns=0, box=None) is None
    up = f.update(1 * S, _tracks(4, box=(1, 2, 3, 4)))
    assert (up.status, up.target_id, up.seconds_since_seen) == ("tracking", 4, 0.0)
    np.testing.assert_allclose(up.box, [1, 2, 3, 4])
    up = f.update(int(1.5 * S), _tracks(4, detected=False, box=(2, 2, 4, 4)))  # tracker prediction
    assert up.status == "occluded" and up.seconds_since_seen == pytest.approx(0.5)
    np.testing.assert_allclose(up.box, [2, 2, 4, 4])
    up = f.update(int(1.8 * S), _tracks(7))  # another object only: last box kept
    assert up.status == "occluded"
    np.testing.assert_allclose(up.box, [2, 2, 4, 4])
    up = f.update(int(2.1 * S), _tracks(None))
    assert up.status == "lost" and up.seconds_since_seen == pytest.approx(1.1)
    assert f.update(int(2.2 * S), _tracks(4)) is None  # lost: nothing more is published
    assert f.target_id is None


def test_follower_new_target_and_stop_report_the_previous_one():
    f = TargetFollower(lost_timeout_s=5.0)
    f.follow(1, "a", last_seen_ns=0, box=np.array([0, 0, 1, 1], np.float32))
    previous = f.follow(2, "b", last_seen_ns=0, box=None)
    assert (previous.status, previous.target_id, previous.query) == ("stopped", 1, "a")
    assert f.target_id == 2
    stopped = f.stop()
    assert (stopped.status, stopped.target_id) == ("stopped", 2)
    assert f.stop() is None


def test_reasoning_flag_and_window_checks():
    assert reasoning_for(0, True) is True and reasoning_for(0, False) is False
    assert reasoning_for(1, False) is True and reasoning_for(2, True) is False
    assert check_window(0.0) == "" and check_window(12.5) == ""
    for bad in (-1.0, float("nan"), float("inf")):
        assert "window_seconds" in check_window(bad)


def test_job_reports_every_stage_once_in_order_with_overall_progress():
    job = _job()
    for stage, fraction in [("sampling", 0.0), ("sampling", 1.0), ("encoding", 0.0), ("encoding", 1.0)]:
        job.report(stage, fraction)
    for k in range(1, 101):  # token by token: only steps of >= 5 % are kept
        job.report("reasoning", k / 100)
    job.report("parsing", 0.0)
    job.report("parsing", 1.0)
    updates = job.take_updates()
    stages = [stage for stage, _ in updates]
    assert stages[:3] == ["queued", "sampling", "sampling"] and stages[-1] == "parsing"
    order = ["queued", "sampling", "encoding", "reasoning", "parsing"]
    assert [order.index(s) for s in stages] == sorted(order.index(s) for s in stages)
    progress = [p for _, p in updates]
    assert progress == sorted(progress) and progress[0] == 0.0 and progress[-1] == 1.0
    assert len([s for s in stages if s == "reasoning"]) <= 21  # bounded by the 5 % step
    assert job.take_updates() == [] and job.stage == "parsing" and job.progress == 1.0
    assert overall_progress("encoding", 0.5) == pytest.approx(0.2) and overall_progress("parsing", 1.0) == 1.0


def test_query_problem_refuses_bad_text_and_windows_before_queueing():
    assert query_problem("the red car", 0.0) == ""
    assert query_problem("bad \ufffd bytes", 0.0).startswith("bad query: the query is not valid UTF-8")
    assert query_problem("", 0.0).startswith("bad query:")
    assert query_problem("the red car", -1.0) == check_window(-1.0) != ""


def test_last_sighting_is_the_newest_detected_frame_of_the_target():
    from types import SimpleNamespace

    def frame(stamp_ns, detected):
        tracks = Tracks(xyxy=np.array([[1, 2, 3, 4]], np.float32), track_id=np.array([7]),
                        score=np.ones(1, np.float32), class_id=np.zeros(1, np.int32), detected=np.array([detected]))
        return SimpleNamespace(stamp_ns=stamp_ns, tracks=tracks)

    snapshot = SimpleNamespace(track_frames=[frame(1, True), frame(2, True), frame(3, False)])
    stamp, box = last_sighting(snapshot, 7, default_ns=9)
    assert stamp == 2 and box.tolist() == [1, 2, 3, 4]
    assert last_sighting(snapshot, 8, default_ns=9) == (9, None)



def test_follower_reports_lost_once_when_the_tracks_stop_coming():
    now = [100.0]
    f = TargetFollower(lost_timeout_s=1.0, clock=lambda: now[0])
    f.follow(4, "the red one", last_seen_ns=int(1.0 * S), box=np.array([1, 2, 3, 4], np.float32))
    now[0] += 0.5
    assert f.update(int(1.5 * S), _tracks(4)).status == "tracking"
    now[0] += 1.9  # silence shorter than asked: still following
    assert f.check_silence(2.0) is None and f.target_id == 4
    now[0] += 0.2  # 2.1 s without any tracks message
    lost = f.check_silence(2.0)
    assert (lost.status, lost.target_id, lost.query) == ("lost", 4, "the red one")
    assert lost.seconds_since_seen == pytest.approx(2.1)
    np.testing.assert_allclose(lost.box, [10, 10, 20, 20])  # the last box the tracker gave
    assert f.check_silence(2.0) is None and f.target_id is None  # once
    assert f.update(int(9 * S), _tracks(4)) is None


def test_follower_silence_counts_from_following_when_no_tracks_came():
    now = [0.0]
    f = TargetFollower(lost_timeout_s=1.0, clock=lambda: now[0])
    assert f.check_silence(0.0) is None  # not following
    f.follow(2, "q", last_seen_ns=0, box=None)
    now[0] = 3.0
    assert f.check_silence(2.0).status == "lost"
