"""Multi-GPU launch paths checked on CPU (training area, issue 16): `stvg-train grpo --launch-check`,
the device_map under ZeRO-3, the accelerate config beside a DeepSpeed JSON, the KL term of METHOD §7."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stvg_train.config import ConfigError, load_config
from stvg_train.grpo import (
    _validate_accelerate_config,
    accelerate_deepspeed_fields,
    grpo_arguments,
    policy_device_map,
    policy_load_kwargs,
)
from stvg_train.launch_check import _accelerate_deepspeed_plugin, _check_device_map_like_transformers

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
#: Training configs (`stvg-train grpo --config`); a recipe (`stvg-train recipe`) is not one: its GRPO stage
#: runs on CPU in tests/test_train_recipe.py.
RUN_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith(("accelerate", "recipe_")))
#: The launch config as shipped before issue 16: sets what the DeepSpeed JSON owns.
OLD_ACCELERATE_CONFIG = {
    "compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED",
    "deepspeed_config": {"zero_stage": 3, "zero3_init_flag": True}, "machine_rank": 0,
    "main_training_function": "main", "mixed_precision": "bf16", "num_machines": 1, "num_processes": 8,
    "rdzv_backend": "static", "same_network": True, "use_cpu": False,
}
ZERO3_ERROR = "DeepSpeed Zero-3 is not compatible with passing a `device_map`"
IGNORED_ERROR = "accelerate config variables will be ignored"


def launch_check(config: Path, out: Path, timeout: float = 400) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "stvg_train.cli", "grpo", "--config", str(config), "--launch-check",
                           "--output-dir", str(out), "--json"], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert proc.returncode == (0 if report["ok"] else 1)
    return report


@pytest.mark.slow
@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_launch_check_runs_every_shipped_config_through_one_optimizer_step(name, tmp_path):
    cfg = load_config(CONFIGS / name)
    report = launch_check(CONFIGS / name, tmp_path / "check")
    assert report["ok"] is True, (report["stage"], report["error"], report.get("stderr_tail", "")[-1500:])
    multi = cfg.launch.accelerate_config is not None
    assert report["processes"] == (2 if multi else 1) and len(report["ranks"]) == report["processes"]
    assert report["launcher"].startswith("accelerate launch" if multi else "one plain process")
    tower_trains = cfg.lora is None and not cfg.model.freeze_vision_tower
    for rank in report["ranks"]:
        assert rank["error"] is None and rank["steps"] == 1 and rank["backend"] == ("gloo" if multi else rank["backend"])
        assert rank["world_size"] == report["processes"]
        assert (rank["visual_grad_norm"] > 0.0) if tower_trains else rank["visual_grad_norm"] == 0.0
    if multi:  # the launcher's own variables reached the processes
        assert all(r["launcher_env"]["ACCELERATE_USE_DEEPSPEED"] == "true" for r in report["ranks"])
        assert "mixed_precision" not in report["ranks"][0]["launcher_env"]["ACCELERATE_CONFIG_DS_FIELDS"]
    exercised = "\n".join(report["exercised"])
    assert "GRPOConfig built" in exercised and "GRPOTrainer built" in exercised and "1 optimizer step" in exercised
    not_exercised = "\n".join(report["not_exercised"])
    if cfg.grpo.get("deepspeed"):
        zero3 = report["zero_stage"] == 3
        assert ("device_map=None accepted" in exercised) if zero3 else True
        assert "DeepSpeedPlugin built" in exercised or importlib.util.find_spec("deepspeed") is not None
        if importlib.util.find_spec("deepspeed") is None:
            assert "DeepSpeed engine: not installed here" in not_exercised
    if cfg.grpo.get("use_vllm"):
        assert "vLLM generation" in not_exercised
    if cfg.model.attn_implementation == "flash_attention_2":
        assert "flash_attention_2" in not_exercised
    if not torch.cuda.is_available():
        assert "CUDA" in not_exercised


@pytest.mark.slow
def test_launch_check_reports_the_accelerate_error_of_the_old_launch_config(tmp_path):
    """Before the fix the shipped accelerate file set zero_stage and mixed_precision: every process failed."""
    run = yaml.safe_load((CONFIGS / "grpo_8gpu_zero3.yaml").read_text())
    (tmp_path / "accelerate.yaml").write_text(yaml.safe_dump(OLD_ACCELERATE_CONFIG))
    run["launch"]["accelerate_config"] = str(tmp_path / "accelerate.yaml")
    run["grpo"]["deepspeed"] = str(CONFIGS / "zero3_offload.json")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    report = launch_check(tmp_path / "run.yaml", tmp_path / "check")
    assert report["ok"] is False
    assert IGNORED_ERROR in report["config_files_error"]  # found in the files, before starting processes
    assert report["stage"] in ("accelerate DeepSpeedPlugin", "GRPOConfig") and IGNORED_ERROR in report["error"]
    assert len(report["ranks"]) == 2 and all(IGNORED_ERROR in r["error"] for r in report["ranks"])


def test_the_shipped_accelerate_config_sets_nothing_the_deepspeed_json_owns(tmp_path, monkeypatch):
    shipped = yaml.safe_load((CONFIGS / "accelerate_zero3_8gpu.yaml").read_text())
    assert accelerate_deepspeed_fields(shipped) == ["zero3_init_flag"]
    for name in ("grpo_8gpu_zero3.yaml", "grpo_8gpu_vllm.yaml"):
        assert _validate_accelerate_config(load_config(CONFIGS / name))["launch_distributed_type"] == "DEEPSPEED"
    # accelerate's own DeepSpeedPlugin under the environment `accelerate launch` exports for each file
    ds_json = CONFIGS / "zero3_offload.json"
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(accelerate_deepspeed_fields(shipped)))
    _accelerate_deepspeed_plugin(ds_json)
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(accelerate_deepspeed_fields(OLD_ACCELERATE_CONFIG)))
    with pytest.raises(ValueError, match=IGNORED_ERROR):
        _accelerate_deepspeed_plugin(ds_json)
    # and the file check a dry run makes
    (tmp_path / "accelerate.yaml").write_text(yaml.safe_dump(OLD_ACCELERATE_CONFIG))
    cfg = load_config(CONFIGS / "grpo_8gpu_zero3.yaml")
    cfg.launch.accelerate_config = str(tmp_path / "accelerate.yaml")
    with pytest.raises(ConfigError, match=IGNORED_ERROR):
        _validate_accelerate_config(cfg)


def test_the_policy_gets_no_device_map_under_zero3_and_its_own_gpu_otherwise():
    cfg = load_config(CONFIGS / "grpo_8gpu_zero3.yaml")
    cuda = torch.device("cuda", 3)
    zero3_kwargs = policy_load_kwargs(cfg, device=cuda, zero3=True)
    assert zero3_kwargs["device_map"] is None and zero3_kwargs["dtype"] == "bfloat16"
    _check_device_map_like_transformers(zero3_kwargs, zero3=True)  # transformers accepts it
    # What load_policy passed before the fix (no device_map: TRL fills in "auto" on CUDA) fails there.
    with pytest.raises(ValueError, match=ZERO3_ERROR):
        _check_device_map_like_transformers({"dtype": "bfloat16", "attn_implementation": "sdpa"}, zero3=True)
    with pytest.raises(ValueError, match=ZERO3_ERROR):
        _check_device_map_like_transformers({"device_map": {"": "cuda:0"}}, zero3=True)
    # DDP / one GPU: the whole model on the process's own device, never sharded over all GPUs by "auto"
    assert policy_device_map(cuda, zero3=False) == {"": "cuda:3"}
    assert policy_device_map(torch.device("cpu"), zero3=False) is None
    _check_device_map_like_transformers(policy_load_kwargs(cfg, device=cuda, zero3=False), zero3=False)


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_every_config_trains_the_method_kl_term(name):
    """METHOD §7: beta * k3 per token, as TRL 0.15.1 did; TRL 1.16 would weight it by the importance ratio."""
    cfg = load_config(CONFIGS / name)
    cfg.log_to = ["json"]
    args = grpo_arguments(cfg, overrides={"deepspeed": None, "use_cpu": True, "bf16": False, "use_vllm": False})
    assert args.use_bias_correction_kl is False
    assert args.beta == 0.04 and args.loss_type == "grpo"


REQUIREMENTS = Path(__file__).resolve().parents[1] / "training" / "requirements"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_the_training_environments_are_pinned_and_consistent():
    """Offline: the files agree with each other and with the records they carry (resolution itself:
    training/requirements/check_resolves.sh, which needs the package index)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    main = _pins(Path(__file__).resolve().parents[1] / "requirements" / "python.txt")
    for name in ("train-base.txt", "train-deepspeed.txt"):  # add packages, never move a main pin
        text = (REQUIREMENTS / name).read_text()
        assert all(not line.startswith(("torch", "transformers", "trl")) for line in text.splitlines())
        assert all(main.get(pkg, version) == version for pkg, version in _pins(REQUIREMENTS / name).items())
    assert "-r ../../requirements/python.txt" in (REQUIREMENTS / "train-base.txt").read_text()
    assert "-r train-base.txt" in (REQUIREMENTS / "train-deepspeed.txt").read_text()
    assert _pins(REQUIREMENTS / "train-deepspeed.txt")["deepspeed"]
    vllm_file = REQUIREMENTS / "train-vllm.txt"
    pins = _pins(vllm_file)
    record = next(line for line in vllm_file.read_text().splitlines() if line.startswith("# vllm-requires:"))
    for requirement in record.split(":", 1)[1].split():
        name, spec = requirement.split("==") if "==" in requirement else (requirement.split(">")[0], None)
        if spec is not None:
            assert pins[name] == spec, requirement
        else:
            assert Version(pins[name]) in SpecifierSet(requirement[len(name):]), requirement
    # the vLLM release is one TRL supports, and the trainer's libraries are the main environment's
    trl_source = Path(importlib.util.find_spec("trl.import_utils").origin).read_text()
    low, high = (Version(v) for v in re.search(
        r'Version\("([\d.]+)"\) <= _vllm_base_version <= Version\("([\d.]+)"\)', trl_source).groups())
    assert low <= Version(pins["vllm"]) <= high
    assert pins["torch"] != main["torch"]  # the reason this environment is separate
    for shared in ("trl", "accelerate", "peft", "datasets"):
        assert pins[shared] == main[shared]
    assert _pins(REQUIREMENTS / "train-deepspeed.txt")["deepspeed"] == pins["deepspeed"]
