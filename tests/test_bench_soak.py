"""`stvg-ros bench soak` through the CLI: a short run of the whole graph, and an interrupted one.

Each runs in a subprocess with the tiny models (the models folder, built by the fixtures when missing)
and asserts the soak's invariants (every query answered or refused with a reason, none lost or hung,
frames with tracks reported, the report files written) and that no process it started outlives it.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

SHORT_RUN = ["--minutes", "0.4", "--fps", "10", "--size", "320x240", "--query-period", "4", "--burst", "4",
             "--burst-period", "10", "--sample-period", "2"]  # fmt: skip
SUMMARY_KEYS = {
    "pass", "failures", "completed", "duration_s", "frames_published", "frames_with_tracks_fraction",
    "frames_with_tracks_fraction_per_minute", "queries_sent", "answered", "refused", "refused_reasons", "lost",
    "hung", "latency_p50_s", "latency_p95_s", "latency_max_s", "rss_mb", "processes", "warmup_s",
}  # fmt: skip


def soak_command(tiny_detector, tiny_vlm, out: Path, *options: str) -> list[str]:
    """The CLI call of a soak with the session's tiny models, writing to `out`."""
    return [sys.executable, "-m", "stvg_ros.cli.main", "bench", "soak", "--json", "--out", str(out),
            "--detector", str(tiny_detector["onnx-int8"]), "--model", str(tiny_vlm.gguf_q8_0),
            "--mmproj", str(tiny_vlm.mmproj_f32), *options]  # fmt: skip


def assert_nothing_left_running(figures: dict) -> None:
    """No process the soak started (by pid, or anything in its ROS namespace) is still running."""
    for name, pid in figures["processes"].items():
        try:
            status = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            continue
        assert status == psutil.STATUS_ZOMBIE, f"{name} (pid {pid}) is still running"
    leftovers = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(figures["namespace"] in part for part in process.info["cmdline"] or ()):
            leftovers.append(process.info)
    assert not leftovers, leftovers


def assert_files_written(out: Path) -> None:
    for name in ("soak.json", "samples.jsonl", "report.md", "soak.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "## Queries" in (out / "report.md").read_text()


def test_a_short_soak_answers_or_refuses_every_query_and_stops_every_process(tiny_detector, tiny_vlm, tmp_path):
    out = tmp_path / "soak"
    done = subprocess.run(soak_command(tiny_detector, tiny_vlm, out, *SHORT_RUN), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.stdout.strip(), done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert not SUMMARY_KEYS - figures.keys(), SUMMARY_KEYS - figures.keys()
    assert done.returncode == (0 if figures["pass"] else 1), done.stderr[-3000:]
    assert figures["completed"], figures["failures"]
    assert figures["queries_sent"] > 0
    assert figures["lost"] == 0 and figures["hung"] == 0, figures
    assert figures["answered"] + figures["refused"] == figures["queries_sent"]
    assert figures["answered"] > 0
    assert figures["refused_reasons"].get("busy", 0) >= 1  # a burst of 4 > 1 running + 2 waiting
    assert "(no message)" not in figures["refused_reasons"]
    assert 0.0 < figures["frames_with_tracks_fraction"] <= 1.0
    assert figures["frames_with_tracks_fraction_per_minute"]
    assert figures["frames_published"] > 0.8 * 10 * 0.4 * 60
    for name in ("tracker_node", "overlay_node", "grounding_node"):
        assert figures["rss_mb"][name]["start_mb"] > 0, name
        assert figures["rss_mb"][name]["growth_pct"] is not None, name
    assert json.loads((out / "soak.json").read_text())["queries_sent"] == figures["queries_sent"]
    kinds = {json.loads(line)["kind"] for line in (out / "samples.jsonl").read_text().splitlines()}
    assert kinds == {"sample", "query"}
    assert_files_written(out)
    assert_nothing_left_running(figures)


def _wait_for_line(process: subprocess.Popen, marker: str, timeout_s: float) -> list[str]:
    """Read the process's stderr until a line contains `marker`; the lines read (fails after `timeout_s`)."""
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if selector.select(timeout=max(0.0, deadline - time.monotonic())):
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if marker in line:
                return lines
    pytest.fail(f"no {marker!r} within {timeout_s:.0f} s: {''.join(lines)[-3000:]}")


def test_sigint_ends_a_soak_cleanly_with_its_report(tiny_detector, tiny_vlm, tmp_path):
    out = tmp_path / "soak"
    options = ["--minutes", "5", "--fps", "10", "--size", "320x240", "--query-period", "2", "--burst", "0"]
    process = subprocess.Popen(soak_command(tiny_detector, tiny_vlm, out, *options), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        _wait_for_line(process, "benchmarks.soak: soak:", timeout_s=240)  # the graph is up, the soak runs
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == 1, stderr[-3000:]
    figures = json.loads(stdout)
    assert not figures["pass"] and not figures["completed"]
    assert any("interrupted by SIGINT" in failure for failure in figures["failures"]), figures["failures"]
    assert figures["duration_s"] < 5 * 60
    assert figures["lost"] == 0 and figures["hung"] == 0, figures
    assert_files_written(out)
    assert_nothing_left_running(figures)
