"""`stvg-ros ground VIDEO "QUERY"` end to end in a subprocess (detector + tracker + tiny llama.cpp model),
its clear failures, and `stvg-ros bench grounding` on the tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TIMEOUT_S = 300


def stvg_ros(*args: str, env: dict | None = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "stvg_ros.cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          check=False)


def test_help_lists_every_option():
    done = stvg_ros("ground", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("--json", "--backend", "--model", "--mmproj", "--endpoint", "--window", "--no-reasoning"):
        assert option in done.stdout


@pytest.fixture(scope="module")
def video(synth_dataset):
    return str(synth_dataset.videos[0])


def test_ground_a_video_with_the_tiny_models(video, tiny_vlm, tiny_detector):
    done = stvg_ros("ground", video, "the shape that stops", "--json", "--model", str(tiny_vlm.gguf_f32),
                    "--mmproj", str(tiny_vlm.mmproj_f32), "--detector", str(tiny_detector["onnx-int8"]),
                    "--num-frames", "6", "--max-new-tokens", "120", "--n-threads", "1", "--n-ctx", "4096")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert {"success", "target_id", "start", "end", "tube", "raw"} <= result.keys()
    assert result["success"] and result["target_id"] in result["track_ids"]
    assert 0.0 <= result["start"] <= result["end"] <= result["duration_s"] + 1e-6
    assert result["raw"].startswith("<think>") and result["raw"].endswith("</answer>")
    # random weights: the span may miss the target's boxes, and then the answer says so
    assert result["tube"] or "empty tube" in result["message"]
    assert all({"stamp", "box"} <= entry.keys() and len(entry["box"]) == 4 for entry in result["tube"])
    # the video's own time: frame i at i / fps, and the tube lies inside the answered span
    stamps = [entry["stamp"] for entry in result["tube"]]
    assert all(result["start_stamp"] - 0.1 <= s <= result["end_stamp"] + 0.1 for s in stamps)
    assert "meaningless" in result["note"]  # the tiny model says that its answer means nothing
    assert result["timings"]["perception_ms"] > 0 and result["frames"] == 80


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", "bad query: query is empty"), ("x" * 10_000, "bad query: query has 10000 characters")],
)
def test_bad_queries_exit_2_before_loading_anything(video, query, expected):
    done = stvg_ros("ground", video, query, "--json", timeout=60)
    assert done.returncode == 2 and json.loads(done.stdout)["message"].startswith(expected)


def test_non_utf8_query_from_the_command_line(video):
    command = [sys.executable, "-m", "stvg_ros.cli.main", "ground", video, b"caf\xe9 \xff".decode("utf-8", "surrogateescape"),
               "--json"]
    done = subprocess.run([os.fsencode(c) for c in command], capture_output=True, timeout=60, check=False)
    assert done.returncode == 2 and b"not valid UTF-8" in done.stdout


def test_missing_model_and_video_fail_clearly(video, tmp_path):
    done = stvg_ros("ground", video, "the box", "--json", "--model", "stvg-r1-7b-q4_k_m",
                    env={"STVG_CACHE": str(tmp_path)}, timeout=60)
    message = json.loads(done.stdout)["message"]
    assert done.returncode == 2 and "stvg-r1-7b-q4_k_m.gguf" in message and "stvg-train export" in message
    done = stvg_ros("ground", str(tmp_path / "none.mp4"), "the box", "--json", timeout=60)
    assert done.returncode == 2 and "video file not found" in json.loads(done.stdout)["message"]
    assert "stvg-ros ground: error: video file not found" in done.stderr


def test_bench_grounding_reports_prep_and_the_split(tiny_vlm):
    done = stvg_ros("bench", "grounding", "--json", "--backends", "llama_cpp,transformers",
                    "--model", str(tiny_vlm.gguf_f32), "--mmproj", str(tiny_vlm.mmproj_f32),
                    "--hf-model", str(tiny_vlm.hf_dir), "--prep-repeats", "3", "--repeats", "1", "--num-frames", "8",
                    "--max-new-tokens", "64", "--n-threads", "1", "--window", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["prep_frames"] == 8 and figures["prep_ms_p50"] > 0 and figures["prep_goal_ms"] == 100
    assert figures["prep_transformers_ms_p50"] > figures["prep_sample_render_ms_p50"] / 2
    for kind in ("llama_cpp", "transformers"):
        for mode in ("reasoning", "answer_only"):
            stats = figures[f"e2e_{kind}"][mode]
            assert stats["answered"] == stats["queries"] == 1, stats
            assert stats["encode_ms_p50"] > 0 and stats["total_ms_p50"] >= stats["prep_ms_p50"]
    assert figures["accelerator"].startswith(("none", "GPU"))
    if figures["accelerator"].startswith("none"):
        assert any("7B" in note for note in figures["notes"])


def test_bench_random_7b_path_converts_to_q4_k_m(tmp_path, monkeypatch):
    """`--random-7b DIR` glue at tiny scale: build -> convert -> Q4_K_M (the robot's quantization) -> measure."""
    import argparse

    from stvg_ros.benchmarks import grounding as bench
    from stvg_ros.grounding import gguf
    from stvg_ros.synthetic import tiny_vlm as tiny

    monkeypatch.setattr(tiny, "build_random_qwen25vl_7b", lambda out: tiny.build_tiny_qwen25vl(out))
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--random-7b", str(tmp_path), "--num-frames", "4", "--window", "2", "--prep-repeats",
                              "1", "--repeats", "1", "--max-new-tokens", "48", "--n-threads", "1", "--n-ctx", "4096"])
    figures = bench.run(args)
    assert gguf.gguf_summary(tmp_path / "random-7b-q4_k_m.gguf")["file_type"] == gguf.QUANTS["q4_k_m"]
    assert figures["e2e_llama_cpp"]["model"] == "random-7b-q4_k_m" and "e2e_transformers" not in figures
    assert figures["e2e_llama_cpp"]["answer_only"]["answered"] == 1
    assert any("7B-architecture Q4_K_M" in note for note in figures["notes"])
