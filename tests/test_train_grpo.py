"""GRPO trainer wiring (training area, issue 6): visual inputs in the gradient, resume, configs, dry runs.

The trainer data here are built straight from a synthetic scene's ground-truth tracks (the real
perception path is covered by test_train_prep.py and the smoke test), so these tests isolate the
trainer wiring.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from stvg_ros.core.paths import cache_dir
from stvg_train.config import ConfigError, config_from_dict, load_config
from stvg_train.data import SAMPLE_FEATURES, clip_prompt, load_prepared, training_dataset
from stvg_train.grpo import build_trainer, grpo_arguments, train
from stvg_train.launch_check import gt_scene_samples

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.fixture(scope="session")
def tiny_qwen_dir() -> Path:
    from stvg_ros.synthetic.tiny_vlm import build_tiny_qwen25vl

    return Path(build_tiny_qwen25vl(cache_dir("test-artifacts", "train-tiny-qwen25vl")))


@pytest.fixture(scope="session")
def scene_samples(tmp_path_factory) -> Path:
    """6 samples from 3 synthetic scenes: 4 frames each, IDs drawn from the scene's GT tracks."""
    rows = gt_scene_samples((1, 2, 3))
    rows.append({**rows[0], "sample_id": "unmatched", "gt_target_id": -1})  # must be left out of training
    rows.append({**rows[0], "sample_id": "not drawn", "gt_target_id": 99})  # an ID on no frame: left out too
    out = tmp_path_factory.mktemp("prepared") / "dataset"
    datasets.Dataset.from_list(rows, features=SAMPLE_FEATURES).save_to_disk(str(out))
    return out.parent


def smoke_config(tmp_path: Path, model: Path, data: Path, **grpo) -> dict:
    cfg = load_config(CONFIGS / "smoke_cpu.yaml")
    values = {**cfg.grpo, "max_steps": 2, "max_completion_length": 12, "num_generations": 2,
              "per_device_train_batch_size": 2, **grpo}
    return config_from_dict({
        "output_dir": str(tmp_path / "run"), "seed": 0,
        "model": {"name_or_path": str(model), "dtype": "float32", "attn_implementation": "sdpa"},
        "data": {"train": [str(data)]}, "rewards": ["iou", "format", "spatial"], "log_to": ["json"],
        "resume_from_checkpoint": "auto", "grpo": values,
    })


def noisy_reward(completions, **_):
    """Gives every group reward variance, so advantages (and gradients) are non-zero with a random model."""
    return [random.random() for _ in completions]


def test_training_rows_are_the_llama_cpp_representation(scene_samples):
    ds = training_dataset(load_prepared([scene_samples]))
    assert len(ds) == 6  # the unmatched sample and the one whose GT ID is on no frame are left out
    row = ds[0]
    content = row["prompt"][0]["content"]
    assert content[0]["type"] == "text" and content[0]["text"].startswith("Each object in the video is marked")
    labels = [p["text"].strip() for p in content[1:] if p["type"] == "text"]
    assert labels == ["Frame at 0.00 s:", "Frame at 1.60 s:", "Frame at 3.20 s:", "Frame at 4.80 s:"]
    assert [p["type"] for p in content[1:]] == ["text", "image"] * 4
    assert len(row["images"]) == 4 and row["images"][0].size == (320, 240)
    assert content == clip_prompt(row["question"], row["timestamps_s"])[0]["content"]


def test_visual_inputs_take_part_in_the_gradient_and_resume_works(tmp_path, tiny_qwen_dir, scene_samples):
    random.seed(0)
    cfg = smoke_config(tmp_path, tiny_qwen_dir, scene_samples, save_strategy="steps", save_steps=2)
    built = build_trainer(cfg, extra_rewards=[noisy_reward])
    assert built.resume_from is None
    summary = train(built)
    assert summary["steps"] == 2 and summary["loss_finite"]
    # Generation and reference log-probs run without gradients; only the loss forward has them.
    assert built.probe.no_grad_calls > 0
    assert summary["visual_grad_calls"] > 0
    assert summary["visual_grad_norm_max"] > 0.0  # the images' encoder really receives gradient
    records = [json.loads(line) for line in Path(summary["log_file"]).read_text().splitlines()]
    assert any("rewards/iou_reward/mean" in r and "rewards/format_reward/mean" in r for r in records)
    built.probe.close()

    cfg.grpo["max_steps"] = 3
    resumed = build_trainer(cfg, extra_rewards=[noisy_reward])
    assert resumed.resume_from and resumed.resume_from.endswith("checkpoint-2")
    assert train(resumed)["steps"] == 3
    resumed.probe.close()


def test_lora_trains_only_adapters(tmp_path, tiny_qwen_dir, scene_samples):
    cfg = smoke_config(tmp_path, tiny_qwen_dir, scene_samples, max_steps=1)
    cfg.lora = config_from_dict({"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}).lora
    built = build_trainer(cfg)
    names = [n for n, p in built.trainer.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert not any("visual" in n for n in names)
    assert train(built)["loss_finite"]
    built.probe.close()
    assert (Path(cfg.output_dir) / "adapter_config.json").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rewards": ["iou", "accuracy"]}, "rewards"),
        ({"modle": {}}, "unknown key"),
        ({"model": {"name": "x"}}, "model: unknown key"),
        ({"log_to": ["wandb"]}, "log_to"),
        ({"grpo": {"seed": 3}}, "top level"),
        ({"data": {"min_vote_share": 2}}, "min_vote_share"),
    ],
)
def test_bad_configs_are_clear_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(change)


def test_every_shipped_config_parses():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith(("accelerate", "recipe_")))
    assert {"grpo_1gpu.yaml", "grpo_8gpu_zero3.yaml", "grpo_8gpu_vllm.yaml", "grpo_lora_1gpu.yaml",
            "smoke_cpu.yaml"} <= set(names)
    for name in names:
        cfg = load_config(CONFIGS / name)
        if cfg.grpo.get("deepspeed"):
            assert cfg.config_relative(cfg.grpo["deepspeed"]).is_file()
    # a recipe (`stvg-train recipe`) holds its GRPO stage's training config under `grpo`
    for recipe in sorted(CONFIGS.glob("recipe_*.yaml")):
        cfg = config_from_dict(yaml.safe_load(recipe.read_text())["grpo"])
        assert cfg.rewards == ["iou", "format"] and cfg.grpo["max_steps"] > 0


def run_cli(*args: str, timeout: float = 300) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "stvg_train.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("config", ["grpo_8gpu_zero3.yaml", "grpo_8gpu_vllm.yaml"])
def test_multi_gpu_and_vllm_configs_build_the_trainer_in_a_dry_run(tmp_path, config, tiny_qwen_dir, scene_samples):
    report = run_cli("grpo", "--config", str(CONFIGS / config), "--dry-run", "--model", str(tiny_qwen_dir),
                     "--data", str(scene_samples), "--output-dir", str(tmp_path / "out"), "--json")
    assert report["trainer"] == "GRPOTrainer" and report["train_rows"] == 6
    assert report["world_size"] == 8 and report["prompts_per_step"] == 8 and report["completions_per_step"] == 64
    assert report["zero_stage"] == 3 and report["launch_distributed_type"] == "DEEPSPEED"
    assert report["rewards"] == ["iou_reward", "format_reward"]
    assert report["substitutions"]["device"].startswith("no CUDA")
    assert report["offload_optimizer"] == "cpu"
    assert report["offload_param"] == ("cpu" if config == "grpo_8gpu_zero3.yaml" else "none")
    if importlib.util.find_spec("deepspeed") is None:  # the JSON is still checked; the report names what is missing
        assert "deepspeed" in report["substitutions"] and "deepspeed" in report["missing_packages"]
    else:  # ZeRO-3 really initialised in one CPU process; the reference model is a DeepSpeed engine
        assert report["distributed_type"] == "DEEPSPEED" and report["deepspeed_zero3"] is True
        assert report["reference_model"] == "DeepSpeedEngine"
    if config == "grpo_8gpu_vllm.yaml":
        assert report["use_vllm"] is True and report["vllm"]["vllm_mode"] == "colocate"
        assert "vllm" in report["substitutions"]  # no vLLM engine without CUDA


def test_a_deepspeed_json_that_disagrees_with_the_run_is_a_config_error(tmp_path):
    from stvg_train.grpo import check_deepspeed_config

    cfg = load_config(CONFIGS / "grpo_8gpu_zero3.yaml")
    assert check_deepspeed_config(cfg)["zero_stage"] == 3
    ds = json.loads((CONFIGS / "zero3_offload.json").read_text())
    (tmp_path / "ds.json").write_text(json.dumps({**ds, "train_micro_batch_size_per_gpu": 2}))
    cfg.grpo["deepspeed"] = str(tmp_path / "ds.json")
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu is 2 but the run has 8"):
        check_deepspeed_config(cfg)
    cfg.grpo["deepspeed"] = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="not found"):
        check_deepspeed_config(cfg)


def test_a_batch_that_splits_prompt_groups_is_a_config_error():
    cfg = load_config(CONFIGS / "grpo_lora_1gpu.yaml")
    cfg.grpo.update(per_device_train_batch_size=5, use_cpu=True, bf16=False)  # 5 x 4 steps = 20 completions
    cfg.log_to = ["json"]
    with pytest.raises(ConfigError, match="num_generations"):
        grpo_arguments(cfg)
