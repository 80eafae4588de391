"""`stvg-train recipe` end to end on CPU with a shrunken synth-small recipe: data -> init -> SFT -> GRPO ->
GGUF export -> held-out evaluation -> report; a rerun skips finished stages; `ship` writes a manifest the
model registry reads."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from stvg_train.recipe import CLIP_MAX_ID, RECIPES, STAGES, load_recipe, stage_ship

EVAL_ROWS = ["baseline: random track", "baseline: most-visible track", "SFT only", "SFT + GRPO (shipped)",
             "SFT + GRPO through the ROS graph (eval replay)"]


def _tiny_recipe(path: Path) -> Path:
    recipe = yaml.safe_load(RECIPES["synth-small"].read_text(encoding="utf-8"))
    recipe["threads"], recipe["workers"] = 1, 1
    recipe["data"].update(train_videos=3, val_videos=1, heldout_videos=1, heldout_queries_per_video=1)
    recipe["read"].update(steps=3, frames=2, pool=2, eval_every=3, eval_frames=2, save_every=2, log_every=1)
    recipe["sft"].update(steps=4, batch_size=2, aux_batch_size=2, aux_only_steps=1, eval_every=2, eval_samples=2,
                         save_every=2, log_every=1)
    recipe["grpo"]["grpo"].update(max_steps=1, per_device_train_batch_size=4, num_generations=2, save_steps=1)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _run_recipe(recipe: Path, work: Path, *extra: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "stvg_train.cli", "recipe", str(recipe), "--work-dir", str(work),
                           "--json", *extra], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, tiny_detector):
    """One run of every default stage (the tiny detector of tests/fixtures/detector.py is the recipe's
    `yolo-synth-tiny`: built once into the model cache, where the recipe's perception finds it by name)."""
    root = tmp_path_factory.mktemp("recipe")
    recipe, work = _tiny_recipe(root / "recipe_tiny.yaml"), root / "work"
    start = time.monotonic()
    proc = _run_recipe(recipe, work, timeout=1200)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-6000:]
    return recipe, work, json.loads(proc.stdout), wall


@pytest.mark.slow
def test_recipe_runs_every_stage(recipe_run):
    recipe_path, work, result, _ = recipe_run
    recipe = load_recipe(str(recipe_path))
    assert list(result) == list(STAGES)
    for stage in STAGES:
        marker = json.loads((work / "stages" / f"{stage}.json").read_text())
        assert marker["stage_wall_s"] >= 0 and marker == json.loads(json.dumps(result[stage], default=str))
    assert yaml.safe_load((work / "recipe.yaml").read_text()) == yaml.safe_load(recipe_path.read_text())

    # data: disjoint training / validation / held-out sets through the robot's perception
    data = result["data"]
    assert data["train"]["samples"] >= 3 and data["train"]["matched"] >= 1
    assert data["val"]["samples"] >= 1 and data["heldout"]["samples"] >= 1
    heldout_queries = json.loads((work / "heldout" / "queries.json").read_text())
    assert len(heldout_queries) == 1  # heldout_videos x heldout_queries_per_video
    # the recipe draws 1..K per clip (`id_numbering: clip`): the tracker's IDs, which start at a seeded number in
    # first_track_id's range, relabelled in order of first appearance
    from stvg_train.data import load_prepared

    assert recipe["id_numbering"] == "clip"
    rows = load_prepared([work / "prepared-train"])
    for ids in rows["frame_track_ids"]:
        drawn = [i for frame in ids for i in frame]
        if drawn:
            assert drawn[0] == 1 and max(drawn) <= CLIP_MAX_ID, drawn
    assert len(set(rows["video"])) == 3
    matched = [t for t, ids in zip(rows["gt_target_id"], rows["frame_track_ids"], strict=True) if t >= 0]
    assert matched and all(1 <= t <= CLIP_MAX_ID for t in matched)
    report = json.loads((work / "prepared-train" / "report.json").read_text())
    assert report["options"]["first_track_id"] == recipe["first_track_id"] and report["options"]["id_numbering"] == "clip"

    # init: the untrained small model
    assert 1_000_000 < result["init"]["parameters"] < 20_000_000 and result["init"]["seed"] == 0

    # read: the vision tower's ID-reading exercises, scored on unseen exercises and the validation frames
    assert result["read"]["steps"] == 3
    log = [json.loads(line) for line in (work / "read" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all(e["id_reading_loss"] > 0 for e in log)
    assert log[-1]["heldout_exercises_cells"] > 0 and log[-1]["heldout_id_reading_cells"] > 0
    assert 0.0 <= log[-1]["heldout_id_reading_exact"] <= 1.0
    assert (work / "read" / "final" / "id_reading_head.pt").is_file()
    assert (work / "read" / "checkpoint-last" / "id_reading_head.pt").is_file()  # saved at step 2

    # SFT (from the read stage's model): loss every step, held-out scores every eval_every steps, a resumable checkpoint, the final model
    assert result["sft"]["steps"] == 4
    log = [json.loads(line) for line in (work / "sft" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    # step 1 trains on the auxiliary questions only (aux_only_steps), the rest on full samples too
    assert log[0]["loss"] is None and log[0]["aux_loss"] > 0
    assert all(e["loss"] > 0 and e["aux_loss"] > 0 for e in log[1:])
    assert not any("id_reading_loss" in e for e in log)  # the vision tower is frozen: no reading loss
    # the target-match loss on the language model's visual tokens (binding.py): every full-sample step
    assert recipe["sft"]["match_weight"] > 0 and all(e["match_loss"] > 0 for e in log[1:])
    # the attention guides (binding.guide_loss): every full sample has a description and a drawn target ID
    assert recipe["sft"]["guide_weight"] > 0 and all(e["guide_loss"] > 0 for e in log[1:])
    heldout = [e for e in log if "heldout_id_accuracy" in e]
    assert [e["step"] for e in heldout] == [2, 4]
    assert all(1 <= e["heldout_n"] <= 2 and 0.0 <= e["heldout_tiou"] <= 1.0 for e in heldout)
    # held-out single-frame questions (validation frames): "which numbers are drawn?" always exist
    assert all(0.0 <= e["heldout_read_exact"] <= 1.0 and 0.0 <= e["heldout_read_tokens"] <= 1.0 for e in heldout)
    # where the validation frames give which-object questions, the match head is scored on them too
    assert all(0.0 <= e["heldout_match_top1"] <= 1.0 for e in heldout if "heldout_which_object_exact" in e)
    final = work / "sft" / "final"
    # SFT trains the language model on what the read stage taught the vision tower, which it leaves as it was
    from safetensors.torch import load_file

    read_weights, sft_weights = (load_file(d / "model.safetensors") for d in (work / "read" / "final", final))
    visual = [k for k in read_weights if ".visual." in f".{k}"]
    assert visual and all(torch.equal(read_weights[k], sft_weights[k]) for k in visual)
    assert any(not torch.equal(read_weights[k], sft_weights[k]) for k in read_weights if k not in visual)
    assert (work / "sft" / "checkpoint-last" / "trainer_state.pt").is_file()  # saved at step 2
    state = torch.load(work / "sft" / "checkpoint-last" / "trainer_state.pt", weights_only=False)
    assert state["match_head"]["weight"].shape == (1, 256)  # resumes with the head it trained
    assert not (final / "trainer_state.pt").exists()
    input_format = json.loads((final / "stvg_input_format.json").read_text())
    assert input_format["frames_per_clip"] == [recipe["num_frames"]]
    assert input_format["max_pixels_per_frame"] == recipe["max_pixels"]
    assert input_format["representation"] == "images"
    assert input_format["id_numbering"] == recipe.get("id_numbering", "track")  # as prep numbered the data

    # GRPO: one step from the SFT checkpoint
    assert (work / "grpo" / "config.json").is_file()

    # export: GGUF + mmproj of both models, each loaded once
    for which, folder in (("grpo", "export"), ("sft", "export-sft")):
        files = result["export"][which]["files"]
        assert {f["role"] for f in files} == {"model", "mmproj"}
        for f in files:
            path = Path(f["path"])
            assert path.is_file() and path.suffix == ".gguf" and work / folder in path.parents
            assert f["loaded"] is True, f
        assert any(Path(f["path"]).name.startswith("mmproj-") for f in files)

    # evaluate: baselines and both models on every held-out query, the models also on paraphrases
    evaluation = result["evaluate"]
    assert [row["model"] for row in evaluation["table"]] == EVAL_ROWS
    assert all(row["queries"] == len(heldout_queries) for row in evaluation["table"])
    assert all(row["id_accuracy"] is not None and 0.0 <= row["id_accuracy"] <= 1.0 for row in evaluation["table"])
    assert [row["model"] for row in evaluation["paraphrased"]] == EVAL_ROWS[2:4]
    assert all(row["queries"] == len(heldout_queries) for row in evaluation["paraphrased"])
    assert set(evaluation["heldout_reward"]) == {"sft", "grpo"}
    assert all(r["prompts"] >= 1 for r in evaluation["heldout_reward"].values())

    # report: learning curves and the summary
    report_dir = work / "report"
    training_report = json.loads((report_dir / "training_report.json").read_text())
    plots = training_report["read"]["plots"] + training_report["sft"]["plots"] + training_report["grpo"]["plots"]
    assert plots and all(p.endswith(".png") and (report_dir / p).stat().st_size > 0 for p in plots)
    assert training_report["evaluation"]["table"] == evaluation["table"]
    assert (report_dir / "training_report.md").is_file()


@pytest.mark.slow
def test_recipe_rerun_skips_finished_stages(recipe_run):
    recipe_path, work, first, _ = recipe_run
    markers = {p.name: p.stat().st_mtime_ns for p in (work / "stages").glob("*.json")}
    assert set(markers) == {f"{s}.json" for s in STAGES}
    start = time.monotonic()
    proc = _run_recipe(recipe_path, work, timeout=120)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert wall < 30, wall
    assert json.loads(proc.stdout) == json.loads(json.dumps(first, default=str))
    assert {p.name: p.stat().st_mtime_ns for p in (work / "stages").glob("*.json")} == markers
    assert "done before, skipped" in proc.stderr


@pytest.mark.slow
def test_ship_writes_a_manifest_the_registry_reads(recipe_run, tmp_path):
    from stvg_ros.core.model_registry import _parse_manifest
    from stvg_train.recipe import SHIPPED_NOTE

    recipe_path, work, result, _ = recipe_run
    recipe = load_recipe(str(recipe_path))
    dest = tmp_path / "pkg"
    shipped = stage_ship(recipe, work, dest=dest)
    manifest_path = Path(shipped["manifest"])
    assert manifest_path == dest / f"{recipe['name']}.yaml"
    manifest = _parse_manifest(manifest_path)
    assert manifest.name == recipe["name"] and manifest.kind == "vlm"
    copied = sorted(Path(p) for p in shipped["files"])
    assert sorted(f.name for f in manifest.files) == [p.name for p in copied]
    assert sorted(p.name for p in (dest / recipe["name"]).iterdir()) == [p.name for p in copied]
    assert all(p.parent == dest / recipe["name"] for p in copied)
    exported = {Path(f["path"]).name: f["sha256"] for f in result["export"]["grpo"]["files"]}
    for f in manifest.files:
        digest = hashlib.sha256((dest / recipe["name"] / f.name).read_bytes()).hexdigest()
        assert f.sha256 == digest == exported[f.name]
        assert f.size == (dest / recipe["name"] / f.name).stat().st_size
    data = yaml.safe_load(manifest_path.read_text())
    assert data["note"] == SHIPPED_NOTE
    assert data["input_format"]["frames_per_clip"] == [recipe["num_frames"]]
    assert data["input_format"]["max_pixels_per_frame"] == recipe["max_pixels"]
    assert data["recipe"]["seed"] == recipe["seed"] and data["recipe"]["sft_steps"] == 4
    assert data["recipe"]["grpo_steps"] == 1 and data["recipe"]["data"] == recipe["data"]
    assert [row["model"] for row in data["evaluation"]["heldout"]] == EVAL_ROWS
    assert data["evaluation"]["heldout_reward"] == result["evaluate"]["heldout_reward"]
    assert {f["format"] for f in data["files"]} == {"gguf", "mmproj"}


def test_unknown_recipe_is_a_clear_error(tmp_path, capfd):
    with pytest.raises(FileNotFoundError, match=r"recipe 'no-such-recipe' not found.*synth-small"):
        load_recipe("no-such-recipe")
    from stvg_train.cli import main

    work = tmp_path / "work"
    assert main(["recipe", "no-such-recipe", "--work-dir", str(work)]) == 2
    err = capfd.readouterr().err
    assert "stvg-train recipe: error: recipe 'no-such-recipe' not found" in err
    assert not work.exists()  # nothing written for a recipe that is not there


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "match", "time", "place"])
def test_symbolic_diagnostic_trains_on_a_recipe_folder(recipe_run, tmp_path, mode):
    """`python -m stvg_train.symbolic_sft` end to end on the recipe's work folder: full samples on symbolic
    tokens, then single-frame questions of fresh scenes; plain, with the target-match loss, and with the
    time guides, the span head, the motion lookups and the cells' fixed positions; and with the place head
    instead of the cells' positions."""
    from stvg_train import symbolic_sft

    _, work, _, _ = recipe_run
    extra = {"plain": [], "match": ["--match-weight", "1"],
             "time": ["--match-weight", "1", "--guide-weight", "1", "--time-guides", "--span-weight", "1",
                      "--motion-weight", "1", "--cell-positions", "--motion-lookups", "--fixed-positions", "2",
                      "--span-layer", "3"],
             "place": ["--guide-weight", "1", "--time-guides", "--motion-lookups", "--motion-weight", "1",
                       "--place-weight", "1"]}[mode]
    common = ["--work-dir", str(work), "--steps", "2", "--eval-every", "2", "--threads", "1", *extra]
    symbolic_sft.main([*common, "--out", str(tmp_path / "full"), "--limit", "2", "--batch-size", "2",
                       "--eval-samples", "1"])
    symbolic_sft.main([*common, "--out", str(tmp_path / "questions"), "--fresh-scenes", "2", "--which-object", "2",
                       "--questions-only"])
    full, questions = ([json.loads(line) for line in (tmp_path / kind / "log.jsonl").read_text().splitlines()]
                       for kind in ("full", "questions"))
    assert full[-1]["step"] == 2 and full[-1]["loss"] > 0 and full[-1]["n"] == 1 and 0 <= full[-1]["id_accuracy"] <= 1
    assert (mode == "time") == ("span_loss" in full[-1] and "guide_loss" in full[-1] and "motion_loss" in full[-1])
    assert (mode in ("time", "place")) == ("mass_track_now" in full[-1] and "mass_track_before" in full[-1])
    assert (mode == "place") == ("place_loss" in full[-1] and 0 <= full[-1].get("place_row_right", -1) <= 1
                                 and "mass_track" not in full[-1])  # the place head's layer-0 head is free
    assert questions[-1]["step"] == 2 and questions[-1]["loss"] > 0
    assert 0.0 <= questions[-1]["which_object_exact"] <= 1.0 and 0.0 <= questions[-1]["which_object_tokens"] <= 1.0


@pytest.mark.slow
def test_sft_on_real_frames_trains_the_span_heads_and_resumes_with_them(recipe_run, tmp_path):
    """The recipe's SFT with the span's guides and heads (as the perfect-perception diagnostic trains them):
    each head's loss is logged, the heads are checkpointed and a rerun resumes with them."""
    from stvg_train.recipe import _source_size
    from stvg_train.sft import TRAINER_STATE, SftOptions, train_sft

    recipe_path, work, _, _ = recipe_run
    recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    opts = SftOptions(model_dir=str(work / "read" / "final"), train=str(work / "prepared-train"),
                      out_dir=str(tmp_path / "sft"), steps=3, batch_size=2, save_every=2, log_every=1, eval_every=100,
                      threads=1, max_pixels=int(recipe["max_pixels"]), vision_lr_scale=0,
                      source_size=_source_size(recipe), guide_weight=1.0, time_guides=True, motion_lookups=True,
                      span_weight=1.0, motion_weight=1.0, place_weight=1.0)
    train_sft(opts)
    log = [json.loads(line) for line in (tmp_path / "sft" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3]
    assert all(e["guide_loss"] > 0 and e["span_loss"] >= 0 and e["motion_loss"] > 0 and e["place_loss"] > 0
               for e in log)
    state = torch.load(tmp_path / "sft" / "checkpoint-last" / TRAINER_STATE, weights_only=False)  # step 2
    rows, columns = 6, 8  # cells of the recipe's 224x168 frames (max_pixels 37632)
    assert int(recipe["max_pixels"]) == 224 * 168
    assert state["step"] == 2 and state["place_head"]["weight"].shape[0] == rows + columns
    assert state["span_head"]["weight"].shape[0] == 1 and state["motion_head"]["weight"].shape[0] == 5
    train_sft(opts)  # resumes at step 2 with the heads (a head of other shape would fail to load)
    log = [json.loads(line) for line in (tmp_path / "sft" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and log[-1]["place_loss"] > 0
    with pytest.raises(ValueError, match="time_guides are attention guides"):
        train_sft(SftOptions(**{**opts.__dict__, "guide_weight": 0.0, "out_dir": str(tmp_path / "other")}))
    with pytest.raises(ValueError, match="motion_lookups are time guides"):
        train_sft(SftOptions(**{**opts.__dict__, "time_guides": False, "out_dir": str(tmp_path / "other")}))
