"""`stvg-train smoke` end to end on CPU (training area, issue 6): synthetic prep -> >= 20 GRPO steps with
finite loss and visual gradients -> GGUF Q8_0 + mmproj -> the grounding pipeline answers one query."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def test_smoke_runs_the_whole_training_path(tmp_path, tiny_detector):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The session's tiny detector (tests/fixtures/detector.py), so CI trains it once for all tests.
    proc = subprocess.run(
        [sys.executable, "-m", "stvg_train.cli", "smoke", "--json", "--work-dir", str(tmp_path / "smoke"),
         "--detector", str(tiny_detector["onnx-int8"])],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["ok"] is True
    assert result["steps"] >= 20
    assert result["loss_finite"] and math.isfinite(result["train_loss"])
    # >= 4 prompts per step at a constant learning rate; rewards averaged over quarters of the run
    assert result["prompts_per_step"] >= 4 and result["lr_scheduler_type"] == "constant"
    assert result["reward_steps_per_quarter"] == result["steps"] // 4
    assert 0.0 <= result["reward_mean_first_quarter"] <= 3.0 and 0.0 <= result["reward_mean_last_quarter"] <= 3.0
    records = [json.loads(line) for line in Path(result["log_file"]).read_text().splitlines()]
    step_rewards = [r["reward"] for r in records if "reward" in r and "loss" in r]
    quarter = result["reward_steps_per_quarter"]
    assert result["reward_mean_first_quarter"] == pytest.approx(sum(step_rewards[:quarter]) / quarter)
    assert result["reward_mean_last_quarter"] == pytest.approx(sum(step_rewards[-quarter:]) / quarter)
    assert {r["learning_rate"] for r in records if "learning_rate" in r} == {result["learning_rate"]}
    # held-out prompts (never trained on) scored before and after GRPO, with a sampling standard error
    heldout = result["heldout_reward"]
    for when in ("before", "after"):
        assert heldout[when]["prompts"] >= 1 and heldout[when]["samples_per_prompt"] >= 4
        assert 0.0 <= heldout[when]["mean"] <= 3.0 and heldout[when]["se"] >= 0.0
    assert heldout["change"] == pytest.approx(heldout["after"]["mean"] - heldout["before"]["mean"])
    assert heldout["change_se"] >= max(heldout["before"]["se"], heldout["after"]["se"])
    assert result["visual_grad_calls"] >= 20  # one grad-enabled vision-tower call per step at least
    assert result["visual_grad_norm_max"] > 0.0 and result["visual_gradient"] is True
    # rewards were logged every step
    steps_with_rewards = [r for r in records if "rewards/iou_reward/mean" in r and "rewards/format_reward/mean" in r]
    assert len(steps_with_rewards) >= 20
    # exported files exist, are listed in a registry manifest with their sha256, and loaded
    exported = [Path(p) for p in result["exported_files"]]
    assert {p.suffix for p in exported} == {".gguf"} and any(p.name.startswith("mmproj-") for p in exported)
    assert all(p.is_file() for p in exported) and result["exported_loaded"] is True
    model = next(p for p in exported if p.name.endswith("-q8_0.gguf"))
    manifest = yaml.safe_load((model.parent.parent / f"{model.parent.name}.yaml").read_text())
    assert manifest["kind"] == "vlm" and {f["name"] for f in manifest["files"]} == {p.name for p in model.parent.iterdir()}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    # the input format the model was trained with travels in the manifest
    assert manifest["input_format"]["representation"] == "images"
    assert manifest["input_format"]["frame_label"] == "Frame at {seconds:.2f} s:"
    assert manifest["input_format"]["frames_per_clip"] == [4] and manifest["input_format"]["max_pixels_per_frame"] == 112 * 112
    # the grounding pipeline answered through the grammar, with an ID from the tracks and a span in the clip
    assert result["answer_parsed"] is True
    answer = result["answer"]
    assert answer["success"] and answer["well_formatted"] and answer["target_id"] in answer["track_ids"]
    assert isinstance(answer["strict_parse"], bool)
    assert 0.0 <= answer["start_s"] <= answer["end_s"]
    # prep went through the real perception
    assert result["prep"]["samples"] >= 5 and result["prep"]["matched"] >= 1


def test_every_subcommand_has_help(capsys):
    from stvg_train.cli import COMMANDS, main

    assert set(COMMANDS) == {"prep", "grpo", "export", "smoke", "recipe"}
    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        assert f"usage: stvg-train {name}" in capsys.readouterr().out


def test_a_bad_config_is_exit_code_2_with_a_message(tmp_path, capsys):
    from stvg_train.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo: {learning_rate: 1e-6}\nmodle: {}\n")
    assert main(["grpo", "--config", str(bad), "--dry-run", "--json"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["grpo", "--config", str(tmp_path / "missing.yaml")]) == 2
