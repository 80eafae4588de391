"""`stvg-ros demo`, the README's main command: the whole graph on a generated video, one query over the
service, an annotated video, a plain statement that the tiny model's answer is not meaningful, and a
check of the answer against the scene's ground truth (judged, not assumed right).

The tiny VLM is built by the demo itself through the model registry when it is not cached yet; the
detector is the session's tiny detector (training it a second time would double the suite's
slowest step; `stvg-ros models pull yolo-synth-tiny` runs the same build, see test_models_*).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.ros_support import REPO

pytestmark = [pytest.mark.ros, pytest.mark.slow]
pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")


def test_demo_runs_the_graph_answers_over_the_service_and_writes_the_video(tiny_detector, tmp_path):
    import cv2

    from stvg_ros.cli.demo import _report

    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "demo", "--out", str(out), "--json", "--seconds", "6",
         "--detector", str(tiny_detector["onnx-int8"]), "--rate", "3", "--timeout", "240"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    assert summary["answered"] and summary["success"], summary["message"]
    assert summary["model"] and summary["backend"] == "llama_cpp"
    assert summary["grounding_model"] == "qwen25vl-tiny-random"
    assert summary["meaningful"] is False and "not meaningful" in summary["disclaimer"]
    assert summary["frames_played"] == 60 and summary["tracks_received"] > 0
    # every frame reached the graph, and the grounding buffer holds every frame its 2 fps asks for
    frames = summary["frames"]
    assert frames["played"] == 60 and set(frames) >= {"tracker_node", "grounding_node", "frames_lost"}
    for node in ("tracker_node", "grounding_node"):
        lost = ("lost_in_transport", "lost_in_reader_queue", "dropped_backlog", "decode_errors")
        assert frames[node]["frames_lost"] == sum(frames[node][key] for key in lost)
        assert frames[node]["frames_received"] + frames[node]["frames_lost"] - frames[node]["decode_errors"] <= 60
    assert frames["buffer_frames"] >= 11 and frames["buffer_missed_samples"] <= 1
    assert len(summary["sampled_stamps"]) == 8  # the demo's --num-frames default (no recorded input format)
    assert isinstance(summary["target_id"], int) and 0.0 <= summary["start"] <= summary["end"] <= 6.0
    # The answer is judged against the scene's ground truth (not assumed right: a random model).
    # The easy scene's target is tracked, so its track is among those received.
    gt = summary["ground_truth"]
    assert set(gt) >= {"text", "start", "end", "track_id"} and gt["text"] == summary["query"]
    assert isinstance(gt["track_id"], int) and gt["track_id"] in summary["track_ids_received"]
    check = summary["check"]
    assert set(check) == {"id_correct", "tiou", "span_overlaps"}
    assert check["id_correct"] is (summary["target_id"] == gt["track_id"])
    assert 0.0 <= check["tiou"] <= 1.0 and isinstance(check["span_overlaps"], bool)
    assert check["span_overlaps"] or check["tiou"] == 0.0
    # The random model may pick a span in which its target has no box: then the tube is empty and the
    # message says so; otherwise every box lies in the span.
    assert summary["tube"] or "empty tube" in summary["message"]
    # (a span shorter than a frame interval gets the one frame nearest to it: 10 fps here)
    slack = 0.1 if len(summary["tube"]) == 1 else 1e-6
    assert all(
        summary["start_stamp"] - slack <= box["stamp"] <= summary["end_stamp"] + slack for box in summary["tube"]
    )
    assert json.loads((out / "demo_result.json").read_text())["target_id"] == summary["target_id"]
    saved = json.loads((out / "demo_result.json").read_text())
    assert saved["check"] == check and saved["ground_truth"] == gt
    video = cv2.VideoCapture(summary["annotated_video"])
    try:
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 60
    finally:
        video.release()
    # The human-readable report says which model answered, ID, span, tube, the disclaimer and the check.
    report = _report(summary)
    assert f"target ID {summary['target_id']}" in report and "tube:" in report
    assert "answered by the grounding model qwen25vl-tiny-random" in report
    assert "NOTE:" in report and "not meaningful" in report
    verdict = "right target ID" if check["id_correct"] else "WRONG target ID"
    assert f"check: {verdict}" in report and f"tIoU {check['tiou']:.2f}" in report
    assert "[demo]" in done.stderr and "Traceback" not in done.stderr


def _demo(out, seconds: int, detector, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stvg_ros.cli.main", "demo", "--out", str(out), "--json", "--seconds", str(seconds),
         "--detector", str(detector), "--timeout", "240", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip


def test_two_demos_at_once_each_answer_from_their_own_frames(tiny_detector, tmp_path):
    """Each demo's graph has a namespace of its own: neither hears the other's camera or queries.
    The 4 s one asks for 4 frames: --num-frames reaches the grounding node."""
    models = {4: ("--num-frames", "4"), 6: ()}
    runs = {
        seconds: _demo(tmp_path / f"demo{seconds}", seconds, tiny_detector["onnx-int8"], *models[seconds])
        for seconds in (4, 6)
    }
    summaries = {}
    try:
        for seconds, run in runs.items():
            out, err = run.communicate(timeout=400)
            assert run.returncode == 0, err[-4000:]
            summaries[seconds] = json.loads(out)
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
    assert summaries[4]["namespace"] != summaries[6]["namespace"]
    for seconds, summary in summaries.items():
        assert summary["success"], summary["message"]
        played = seconds * 10
        assert summary["frames_played"] == played
        # a demo that heard the other one's camera would count more frames than it played
        for node in ("tracker_node", "grounding_node"):
            assert 0 < summary["frames"][node]["frames_received"] <= played, summary["frames"]
        assert 0 < summary["tracks_received"] <= played
        assert all(s["stamp"] <= 1_700_000_000 + seconds for s in summary["tube"])
        assert set(summary["check"]) == {"id_correct", "tiou", "span_overlaps"}
    assert len(summaries[4]["sampled_stamps"]) == 4 and len(summaries[6]["sampled_stamps"]) == 8  # --num-frames


def test_demo_with_a_missing_model_fails_clearly(tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    done = subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "demo", "--out", str(tmp_path / "demo"), "--json",
         "--seconds", "4", "--model", str(missing), "--detector", "yolo-synth-tiny"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 1
    summary = json.loads(done.stdout)  # stdout stays pure JSON even when a step fails
    assert summary["success"] is False and str(missing) in summary["message"]
    assert "Traceback" not in done.stderr and "building yolo-synth-tiny" not in done.stderr  # failed first
