"""Training configuration: dataclasses filled from one YAML file (configs/*.yaml).

The `grpo:` section is passed to `trl.GRPOConfig` as it is (any GRPOConfig field), so TRL's own
validation applies and TRL's documentation is the reference for it. Everything else (model, LoRA,
data, rewards, logging, launch) is ours and is checked here. Data and output paths are relative to
the working directory; the files a config points at beside itself (`grpo.deepspeed`,
`launch.accelerate_config`) are relative to the config file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A training config that cannot be used (unknown key, bad value, missing file)."""


@dataclass
class ModelConfig:
    """The policy model (Qwen2.5-VL, a Hugging Face folder or hub id) and how it is loaded."""

    name_or_path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    #: torch dtype name: bfloat16 on GPUs, float32 for the CPU smoke test.
    dtype: str = "bfloat16"
    #: "flash_attention_2" (what the official run used), "sdpa" or "eager".
    attn_implementation: str = "sdpa"
    #: Per-frame pixel budget of the image processor (frames are sent as images). Must match the robot's.
    max_pixels: int | None = None
    min_pixels: int | None = None
    #: Freeze the vision tower (full fine-tuning of the LLM only). The official run trains everything.
    freeze_vision_tower: bool = False


@dataclass
class LoraSettings:
    """LoRA instead of full fine-tuning (peft). Merged into the base weights at export."""

    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    #: Module names to adapt; "all-linear" adapts every linear layer of the language model.
    target_modules: list[str] | str = "all-linear"


@dataclass
class DataConfig:
    """Prepared datasets (`stvg-train prep` output folders)."""

    train: list[str] = field(default_factory=list)
    eval: list[str] = field(default_factory=list)
    #: Drop samples whose GT ID won less than this share of the GT frames (METHOD_DETAILS §3: 0.5
    #: is the recommended production floor; 0 keeps everything like the official code).
    min_vote_share: float = 0.0
    #: Use at most this many training samples (None: all).
    max_samples: int | None = None


@dataclass
class LaunchConfig:
    """How the run is launched on several GPUs (documentation + dry-run validation; see docs/training.md)."""

    #: accelerate config file for `accelerate launch --config_file` (relative to the YAML file).
    accelerate_config: str | None = None
    num_processes: int = 1


@dataclass
class TrainConfig:
    """One training run: `stvg-train grpo --config FILE`."""

    output_dir: str = "runs/stvg-r1-grpo"
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings | None = None
    data: DataConfig = field(default_factory=DataConfig)
    #: Reward names from stvg_train.rewards.REWARDS, summed by TRL (weights in grpo.reward_weights).
    rewards: list[str] = field(default_factory=lambda: ["iou", "format"])
    #: "json" (train_log.jsonl in output_dir), "tensorboard", or both.
    log_to: list[str] = field(default_factory=lambda: ["json"])
    #: "auto" resumes from the last checkpoint in output_dir if there is one; a path resumes from it; null starts fresh.
    resume_from_checkpoint: str | None = "auto"
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    #: Passed to trl.GRPOConfig unchanged (learning_rate, beta, num_generations, deepspeed, use_vllm, ...).
    grpo: dict[str, Any] = field(default_factory=dict)
    #: Folder of the YAML file (for the DeepSpeed JSON and accelerate config beside it).
    base_dir: str = "."

    def config_relative(self, value: str | None) -> Path | None:
        """`value` resolved against the config file's folder (absolute paths unchanged)."""
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p)


def _build(cls, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    return cls(**data)


def config_from_dict(data: dict[str, Any], base_dir: str | Path = ".") -> TrainConfig:
    """Build and validate a TrainConfig from a parsed YAML mapping."""
    if not isinstance(data, dict):
        raise ConfigError("a training config is a YAML mapping")
    data = dict(data)
    nested = {
        "model": _build(ModelConfig, data.pop("model", None), "model"),
        "lora": _build(LoraSettings, data.pop("lora"), "lora") if data.get("lora") is not None else None,
        "data": _build(DataConfig, data.pop("data", None), "data"),
        "launch": _build(LaunchConfig, data.pop("launch", None), "launch"),
    }
    data.pop("lora", None)
    data["base_dir"] = str(base_dir)
    cfg = _build(TrainConfig, {**data, **nested}, "config")
    for key in ("train", "eval"):
        value = getattr(cfg.data, key)
        setattr(cfg.data, key, [value] if isinstance(value, str) else list(value or []))
    if isinstance(cfg.log_to, str):
        cfg.log_to = [cfg.log_to]
    bad_logs = sorted(set(cfg.log_to) - {"json", "tensorboard"})
    if bad_logs:
        raise ConfigError(f"log_to: unknown target(s) {bad_logs}; use json and/or tensorboard")
    from stvg_train.rewards import REWARDS

    bad_rewards = [r for r in cfg.rewards if r not in REWARDS]
    if bad_rewards or not cfg.rewards:
        raise ConfigError(f"rewards: {bad_rewards or 'empty'}; choose from {sorted(REWARDS)}")
    if not 0.0 <= cfg.data.min_vote_share <= 1.0:
        raise ConfigError("data.min_vote_share must lie in [0, 1]")
    reserved = {"output_dir", "seed", "report_to"} & set(cfg.grpo)
    if reserved:
        raise ConfigError(f"grpo: set {sorted(reserved)} at the top level (output_dir, seed, log_to)")
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML training config; relative paths inside it are relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return config_from_dict(data or {}, base_dir=path.resolve().parent)
