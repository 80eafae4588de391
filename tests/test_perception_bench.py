"""`stvg-ros bench perception --json` runs end to end (core, naive loop, tracker node over DDS) and
prints the figures the issue names. No figure is asserted against a goal here: performance
targets belong to the benchmark itself, not to unit tests."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")

KEYS = (
    "frames_with_tracks_fraction", "latency_p50_ms", "latency_p95_ms", "detector_hz", "rss_mb_start",
    "rss_mb_end", "naive_ratio", "naive_ratio_every_frame", "ros_ratio",
)  # fmt: skip


def test_bench_perception_prints_every_figure(tiny_detector):
    command = [
        sys.executable, "-m", "stvg_ros.cli.main", "bench", "perception", "--seconds", "2", "--naive-frames", "10",
        "--model", str(tiny_detector["onnx-int8"]), "--json",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    missing = [k for k in KEYS if figures.get(k) is None]
    assert not missing, (missing, figures)
    assert 0 < figures["frames_with_tracks_fraction"] <= 1 and figures["camera_frames"] == 60
    assert all(math.isfinite(figures[k]) and figures[k] > 0 for k in KEYS if k != "frames_with_tracks_fraction")
    assert figures["naive_model"].endswith("yolo-synth-tiny.pt") and figures["cpus"] <= 2
