"""`stvg-ros bench perception --json` runs end to end (core, naive loop, node deployments over DDS)
and prints the figures the issue names. No figure is asserted against a goal here: performance
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
#: A deployment without and one with queries (the `stvg-ros up` process and the ground client).
DEPLOYMENTS = ("tracker_process", "graph_one_process_query")


def bench(*args: str, timeout: float = 540) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "bench", "perception", *args],
        capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


@pytest.mark.slow
def test_bench_perception_prints_every_figure(tiny_detector, tiny_vlm):
    done = bench(
        "--seconds", "4", "--naive-frames", "10", "--model", str(tiny_detector["onnx-int8"]),
        "--vlm", str(tiny_vlm.gguf_q8_0), "--vlm-mmproj", str(tiny_vlm.mmproj_f32),
        "--deployments", ",".join(DEPLOYMENTS), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    missing = [k for k in KEYS if figures.get(k) is None]
    assert not missing, (missing, figures)
    assert 0 < figures["frames_with_tracks_fraction"] <= 1 and figures["camera_frames"] == 120
    assert all(math.isfinite(figures[k]) and figures[k] > 0 for k in KEYS if k != "frames_with_tracks_fraction")
    assert figures["naive_model"].endswith("yolo-synth-tiny.pt") and figures["cpus"] <= 2

    deployments = figures["deployments"]
    assert sorted(deployments) == sorted(DEPLOYMENTS), deployments
    for name, run in deployments.items():
        assert "error" not in run, (name, run.get("error"))
        assert run["camera_frames"] == 120 and 0 <= run["frames_with_tracks_fraction"] <= 1, (name, run)
        assert run["latency_p50_ms"] > 0 and run["latency_p95_ms"] >= run["latency_p50_ms"], (name, run)
        assert isinstance(run["goal_met"], bool) and "tracker_input_hz" in run, (name, sorted(run))
    assert figures["ros_frames_with_tracks_fraction"] == deployments["tracker_process"]["frames_with_tracks_fraction"]
    assert deployments["tracker_process"]["queries_answered"] is None

    query = deployments["graph_one_process_query"]
    assert query["processes"] == ["graph"] and query["queries_answered"] >= 1 and query["query_latency_p50_s"] > 0
    assert "grounding_buffer_frames" in query and query["buffer_expected_frames"] == 8, sorted(query)
    assert isinstance(query["buffer_frames_in_window"], int) and isinstance(query["buffer_complete"], bool)


def test_bench_perception_refuses_an_unknown_deployment():
    done = bench("--deployments", "tracker_process,no_such_mode", "--no-ros", timeout=120)
    assert done.returncode == 2 and "unknown deployment" in done.stderr, done.stderr[-2000:]
