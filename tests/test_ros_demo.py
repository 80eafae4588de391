"""`stvg-ros demo`, the README's main command: the whole graph on a generated video, one query over the
service, an annotated video, and a plain statement that the tiny model's answer is not meaningful.

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
    assert summary["meaningful"] is False and "not meaningful" in summary["disclaimer"]
    assert summary["frames_played"] == 60 and summary["tracks_received"] > 0
    assert isinstance(summary["target_id"], int) and 0.0 <= summary["start"] <= summary["end"] <= 6.0
    # The random model may pick a span in which its target has no box: then the tube is empty and
    # the message says so; otherwise every box lies in the span.
    assert summary["tube"] or "empty tube" in summary["message"]
    # (a span shorter than a frame interval gets the one frame nearest to it: 10 fps here)
    slack = 0.1 if len(summary["tube"]) == 1 else 1e-6
    assert all(
        summary["start_stamp"] - slack <= box["stamp"] <= summary["end_stamp"] + slack for box in summary["tube"]
    )
    assert json.loads((out / "demo_result.json").read_text())["target_id"] == summary["target_id"]
    video = cv2.VideoCapture(summary["annotated_video"])
    try:
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 60
    finally:
        video.release()
    # The human-readable report says which model answered, ID, span and tube, and the disclaimer.
    report = _report(summary)
    assert f"target ID {summary['target_id']}" in report and "tube:" in report
    assert summary["model"] in report and "NOTE:" in report and "not meaningful" in report
    assert "[demo]" in done.stderr and "Traceback" not in done.stderr


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
