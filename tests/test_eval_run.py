"""`stvg-ros eval run`: the offline pipeline over a dataset (videos or bags), its outputs, and its
refusal of bad input before any model is loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


def eval_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "eval", *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def expect_error(done, message):
    assert done.returncode == 2, (done.stdout, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("stvg-ros eval: error:"), done.stderr[-2000:]
    assert message in lines[-1], (message, lines[-1])
    assert "Traceback" not in done.stderr


def test_run_with_ground_truth_tracks_and_rescoring(tmp_path, synth_dataset, tiny_vlm):
    """--perception gt: the model alone is judged (the ceiling is 1 for every query); the files it
    writes score to the same numbers with `eval score`."""
    out = tmp_path / "run"
    done = eval_cli("run", "--videos", synth_dataset.root / "videos", "--annotations", synth_dataset.annotations,
                    "--out", out, "--source", "video", "--perception", "gt", "--limit", 1, "--json",
                    "-p", f"grounding_node:model={tiny_vlm.gguf_q8_0}", "-p", f"grounding_node:mmproj={tiny_vlm.mmproj_f32}",
                    "-p", "grounding_node:n_gpu_layers=0", "-p", "grounding_node:n_threads=1",
                    "-p", "grounding_node:num_frames=6", "-p", "grounding_node:reasoning=false")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    name = synth_dataset.names[0]
    assert summary["n_queries"] == 1 and summary["run"]["perception"] == "gt"
    assert summary["perception_ceiling"]["m_vIoU"] == pytest.approx(1.0)
    assert summary["id_reference"] == "tracks" and summary["per_video"][name]["ceiling_track_id"] is not None
    record = json.loads((out / "records.jsonl").read_text().splitlines()[0])
    assert record["success"], record["failure"]  # the grammar keeps the tiny model's answer well-formed
    assert record["raw_answer"].startswith("<answer>Target ID: ")
    assert len(record["sampled_stamps_ns"]) == 6
    assert "progress" not in done.stdout and "eval run" in done.stderr  # the bar is on stderr
    for file in ("predictions.json", "tracks.jsonl", "report.json", "report.md", "report.html", "hist_viou.png"):
        assert (out / file).is_file(), file
    manifest = json.loads((out / "run.json").read_text())  # the run's manifest (tests/test_eval_resume.py)
    assert manifest["status"] == "complete" and manifest["queries_done"] == manifest["queries_total"] == 1
    assert record["tIoU"] == summary["per_video"][name]["tIoU"]  # the scores are added once the run completes
    again = eval_cli("score", "--annotations", synth_dataset.annotations, "--predictions", out / "predictions.json",
                     "--tracks", out / "tracks.jsonl", "--json")  # fmt: skip
    assert again.returncode == 0, again.stderr
    rescored = json.loads(again.stdout)
    # the other videos have no prediction in a --limit 1 run; compare the one that ran
    assert rescored["per_video"][name]["tIoU"] == pytest.approx(summary["per_video"][name]["tIoU"])
    assert rescored["per_video"][name]["vIoU"] == pytest.approx(summary["per_video"][name]["vIoU"], abs=1e-4)
    assert rescored["per_video"][name]["ceiling_vIoU"] == pytest.approx(1.0, abs=1e-4)


def test_run_refuses_bad_input_before_loading_models(tmp_path, synth_dataset):
    ann = json.loads(synth_dataset.annotations.read_text())
    first = next(iter(ann))
    wrong = tmp_path / "wrong_count.json"
    wrong.write_text(json.dumps({first: {**ann[first], "img_num": ann[first]["img_num"] + 7}}))
    videos = synth_dataset.root / "videos"
    out = tmp_path / "out"
    expect_error(eval_cli("run", "--videos", videos, "--annotations", wrong, "--out", out, "--source", "video"),
                 "frame-index mismatch")  # fmt: skip
    expect_error(eval_cli("run", "--videos", tmp_path / "nowhere", "--annotations", synth_dataset.annotations,
                          "--out", out, "--source", "video"), "videos directory not found")  # fmt: skip
    expect_error(eval_cli("run", "--videos", synth_dataset.root / "bags", "--annotations", tmp_path / "none.json",
                          "--out", out), "annotation file not found")  # fmt: skip
    empty = tmp_path / "empty_videos"
    empty.mkdir()
    expect_error(eval_cli("run", "--videos", empty, "--annotations", synth_dataset.annotations, "--out", out),
                 "no video file for")  # fmt: skip
    # ground-truth perception needs the synthetic ground truth beside the annotations
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(synth_dataset.annotations, alone / "annotations.json")
    expect_error(eval_cli("run", "--videos", videos, "--annotations", alone / "annotations.json", "--out", out,
                          "--perception", "gt"), "needs the synthetic ground truth")  # fmt: skip
    # a model that is not there: one line naming it
    expect_error(eval_cli("run", "--videos", videos, "--annotations", synth_dataset.annotations, "--out", out,
                          "--perception", "gt", "--model", tmp_path / "missing.gguf"), "missing.gguf")  # fmt: skip


def test_run_reads_the_parameters_the_graph_applies(tmp_path):
    """The nodes' config files, then --params, then -p: the offline pipeline gets the tracker
    node's settings (`detector` is its model) exactly as the graph does."""
    import yaml

    from stvg_ros.evaluation import EvalError
    from stvg_ros.evaluation.runner import node_parameters, perception_config
    from stvg_ros.nodes.graph import config_dir

    shipped = yaml.safe_load((config_dir() / "tracker.yaml").read_text())
    shipped = next(iter(shipped.values()))["ros__parameters"]
    user = tmp_path / "params.yaml"
    user.write_text(yaml.safe_dump({"tracker_node": {"ros__parameters": {"conf": 0.3, "detect_every": 2}}}))
    params = node_parameters(str(user), {"tracker_node": {"detect_every": 1, "detector": "some.onnx"}})
    config = perception_config(params["tracker_node"])
    assert (config.model, config.conf, config.detect_every) == ("some.onnx", 0.3, 1)
    assert config.tracker.reid_max_gap_s == shipped["reid_max_gap_s"]  # from config/tracker.yaml
    assert "model" in params["grounding_node"] and "buffer_seconds" in params["grounding_node"]
    with pytest.raises(EvalError, match="parameters file not found"):
        node_parameters(str(tmp_path / "none.yaml"), {})
    with pytest.raises(EvalError, match="bad tracker_node parameters"):
        perception_config({"backend": "tensorrt"})


def test_run_reads_the_detector_of_a_parameters_file(tmp_path):
    """A --params file's `detector:` is the tracker node's model, offline as in the graph."""
    import yaml

    from stvg_ros.evaluation.runner import node_parameters, perception_config

    user = tmp_path / "params.yaml"
    user.write_text(yaml.safe_dump({"/**/tracker_node": {"ros__parameters": {"detector": "yolo11n"}}}))
    assert perception_config(node_parameters(str(user), {})["tracker_node"]).model == "yolo11n"


def test_run_and_grounding_node_map_parameters_the_same_way(tmp_path):
    """The runner and the grounding node share `nodes.params.GroundingParams`: the node's schema
    defaults and the shipped config/grounding.yaml give the same backend, buffer and GroundingConfig."""
    from stvg_ros.evaluation import EvalError
    from stvg_ros.evaluation.runner import grounding_params, node_parameters
    from stvg_ros.nodes.params import GroundingParams

    def configs(p: GroundingParams):
        return p.backend, p.backend_settings(), p.buffer_config(), p.grounding_config()

    shipped = grounding_params(node_parameters(None, {})["grounding_node"])
    assert configs(shipped) == configs(GroundingParams())
    overridden = grounding_params(node_parameters(None, {"grounding_node": {"flash_attn": False, "query_timeout_s": 9.0,
                                                                            "num_frames": 4}})["grounding_node"])  # fmt: skip
    backend, settings, _, config = configs(overridden)
    assert backend == "llama_cpp" and settings.flash_attn is False and settings.timeout_s == 9.0
    assert (config.num_frames, config.timeout_s) == (4, 9.0)
    with pytest.raises(EvalError, match="bad grounding_node parameters: num_frames must be >= 1"):
        grounding_params({"num_frames": 0})
