"""Wiring of trl.GRPOTrainer for STVG-R1: config -> GRPOConfig, model, processor, data, rewards, callbacks.

Nothing here changes TRL's algorithm. The clip reaches the model as a list of images (see
stvg_train.data), which TRL 1.16 passes to the loss forward; `VisionGradProbe` counts the
vision-tower calls made with gradients enabled so a run can show its visual inputs take part in
the gradient.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from stvg_ros.grounding.backends.models import INPUT_FORMAT_FILE  # the record's file name, defined once
from stvg_train.config import ConfigError, TrainConfig
from stvg_train.data import load_prepared, prepared_id_numbering, training_dataset
from stvg_train.rewards import reward_functions

log = logging.getLogger("stvg_train.grpo")

#: GRPOConfig values of the official STVG-R1 run (METHOD §7 / METHOD_DETAILS §4.3-4.4) that differ
#: from TRL 1.16 defaults; a config's `grpo:` section overrides them.
STVG_R1_GRPO_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-6,
    "beta": 0.04,  # KL weight (TRL 0.15.1 default used by the official run)
    "num_generations": 8,
    "max_completion_length": 1024,
    "temperature": 1.0,
    "top_k": 50,  # transformers' sampling default, which the official trainer used
    "loss_type": "grpo",  # mean over sequences of the per-sequence token mean
    "scale_rewards": "group",
    "per_device_train_batch_size": 8,  # = num_generations: one prompt per device per step
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 1,
    "save_steps": 50,
    "logging_steps": 1,
    "data_seed": 42,
    "max_grad_norm": 1.0,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "activation_checkpointing": True,
    # METHOD §7: the KL term is beta * k3(pi, pi_ref) per token, as TRL 0.15.1 computed it. TRL >= 1.x
    # multiplies it by the importance ratio pi/pi_old by default, which changes the KL gradient even
    # on-policy (the ratio is 1 but differentiable): off, to train the objective the paper trained.
    "use_bias_correction_kl": False,
}


def find_vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The Qwen2.5-VL vision encoder inside `model` (also through PEFT / DeepSpeed wrappers)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "visual":
            return module
    raise ValueError(f"{type(model).__name__} has no vision tower (`visual` module); is it a Qwen2.5-VL model?")


class VisionGradProbe(TrainerCallback):
    """Counts vision-tower forward calls with gradients enabled, and the tower's gradient norm.

    TRL runs generation and the reference/old log-probs under no_grad, so a grad-enabled call can
    only come from the loss forward: `grad_calls > 0` shows the images take part in the loss.
    """

    def __init__(self, model: torch.nn.Module, *, deepspeed: bool = False):
        self.tower = find_vision_tower(model)
        self.grad_calls = 0
        self.no_grad_calls = 0
        self.grad_norms: list[float] = []
        #: Why the tower's gradient norm cannot be read in this run (None: it is read every optimizer step).
        self.norm_unreadable: str | None = None
        if deepspeed:
            self.norm_unreadable = (
                "DeepSpeed: accelerate's DeepSpeedEngineWrapper runs engine.step() inside backward, so the "
                "(partitioned) gradients are applied and cleared before the optimizer-step callback; "
                "the grad-enabled vision-tower calls still show the images are in the loss")
        self._handle = self.tower.register_forward_hook(self._on_forward)

    def _on_forward(self, module, inputs, output) -> None:
        if torch.is_grad_enabled():
            self.grad_calls += 1
        else:
            self.no_grad_calls += 1

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.norm_unreadable:
            return
        norms = [p.grad.detach().float().norm() for p in self.tower.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.stack(norms).norm()) if norms else 0.0)

    def close(self) -> None:
        self._handle.remove()


class JsonLogCallback(TrainerCallback):
    """Appends every Trainer log record (loss, rewards, KL, ...) to a JSON-lines file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "time": time.time(), **logs}
        self.records.append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")


@dataclass
class BuiltTrainer:
    """A ready GRPOTrainer and what was decided while building it."""

    trainer: Any
    args: Any
    probe: VisionGradProbe
    json_log: JsonLogCallback | None
    train_rows: int
    resume_from: str | None
    #: Parts of the config not engaged in this build and why (dry runs without the hardware).
    substitutions: dict[str, str] = field(default_factory=dict)
    #: How clips reach the model in this run (written beside the trained model, read by the export).
    input_format: dict[str, Any] = field(default_factory=dict)




def training_input_format(processor, frames_per_clip: list[int], id_numbering: str = "track") -> dict[str, Any]:
    """The clip representation of this run: images with `Frame at t s:` labels, frame counts, pixel budget,
    and how the drawn IDs are numbered (`grounding.sampling.ID_NUMBERINGS`)."""
    from stvg_ros.core.prompt import frame_label

    size = dict(processor.image_processor.size or {})
    return {
        "representation": "images",  # not native video: TRL 1.16 drops video tensors from the loss
        "frame_label": frame_label(0.0).replace("0.00", "{seconds:.2f}"),
        "frames_per_clip": sorted(set(frames_per_clip)),
        "max_pixels_per_frame": size.get("longest_edge"),
        "min_pixels_per_frame": size.get("shortest_edge"),
        "id_numbering": id_numbering,
    }


def grpo_arguments(cfg: TrainConfig, *, overrides: dict[str, Any] | None = None):
    """trl.GRPOConfig from the config: STVG-R1 defaults < `grpo:` section < `overrides`."""
    from trl import GRPOConfig

    values = {**STVG_R1_GRPO_DEFAULTS, **cfg.grpo, **(overrides or {})}
    if values.get("deepspeed") and isinstance(values["deepspeed"], str):
        ds_path = cfg.config_relative(values["deepspeed"])
        if not ds_path.is_file():
            raise ConfigError(f"grpo.deepspeed: {ds_path} not found")
        values["deepspeed"] = str(ds_path)
    report_to = ["tensorboard"] if "tensorboard" in cfg.log_to else []
    if report_to:
        from transformers.integrations import is_tensorboard_available

        if not is_tensorboard_available():
            raise ConfigError("log_to: tensorboard needs the `tensorboard` package (pip install tensorboard)")
    try:
        return GRPOConfig(output_dir=cfg.output_dir, seed=cfg.seed, report_to=report_to, **values)
    except (TypeError, ValueError) as exc:  # unknown field, or a value GRPOConfig rejects
        raise ConfigError(f"grpo: {exc}") from None


def set_pixel_budget(processor, *, max_pixels: int | None = None, min_pixels: int | None = None) -> None:
    """Per-frame pixel budget of a Qwen2.5-VL processor's image processor (None: keep).

    Set through `size` (longest_edge / shortest_edge are pixel counts for Qwen); the legacy
    `max_pixels` / `min_pixels` attributes are cleared, since transformers passes them to every call.
    """
    image_processor = processor.image_processor
    size = dict(image_processor.size or {})
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    image_processor.size = size
    for legacy in ("max_pixels", "min_pixels"):
        if getattr(image_processor, legacy, None) is not None:
            setattr(image_processor, legacy, None)


def policy_device_map(device: torch.device, *, zero3: bool) -> dict[str, str] | None:
    """`device_map` for the policy's from_pretrained in one training process.

    None under DeepSpeed ZeRO-3 (DeepSpeed partitions the weights while they load and transformers
    refuses any map there) and on CPU; otherwise the whole model on this process's own device. Never
    "auto", which TRL would pick on CUDA and which shards one process's model over every visible GPU.
    """
    if zero3 or device.type == "cpu":
        return None
    return {"": str(device)}


def policy_load_kwargs(cfg: TrainConfig, *, device: torch.device | None = None,
                       zero3: bool | None = None) -> dict[str, Any]:
    """Keyword arguments for the policy's from_pretrained (device and ZeRO-3 state: this process's by default)."""
    from accelerate import PartialState
    from transformers.integrations import is_deepspeed_zero3_enabled

    device = PartialState().device if device is None else device
    zero3 = is_deepspeed_zero3_enabled() if zero3 is None else zero3
    return {"dtype": cfg.model.dtype, "attn_implementation": cfg.model.attn_implementation,
            "device_map": policy_device_map(device, zero3=zero3)}


def load_policy(cfg: TrainConfig, model_path: str | None = None):
    """The policy model and its processor (per-frame pixel budget from the config).

    Call after the GRPOConfig is built, so that a ZeRO-3 run is already set up (see policy_device_map).
    """
    from transformers import AutoProcessor
    from trl.trainer.utils import create_model_from_path

    path = model_path or cfg.model.name_or_path
    model = create_model_from_path(path, **policy_load_kwargs(cfg))
    processor = AutoProcessor.from_pretrained(path, padding_side="left")
    set_pixel_budget(processor, max_pixels=cfg.model.max_pixels, min_pixels=cfg.model.min_pixels)
    if cfg.model.freeze_vision_tower:
        for p in find_vision_tower(model).parameters():
            p.requires_grad_(False)
    return model, processor


def lora_config(cfg: TrainConfig):
    """peft.LoraConfig for the language model, or None for full fine-tuning."""
    if cfg.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        # Keep adapters off the vision tower (the merged model must convert to a stock mmproj).
        exclude_modules=r".*visual.*",
        task_type="CAUSAL_LM",
    )


def resume_checkpoint(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from: "auto" picks the last one in output_dir, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    value = cfg.resume_from_checkpoint
    if value in (None, "", False):
        return None
    if value == "auto":
        out = Path(cfg.output_dir)
        return get_last_checkpoint(str(out)) if out.is_dir() else None
    if not Path(value).is_dir():
        raise ConfigError(f"resume_from_checkpoint: {value} is not a checkpoint folder")
    return str(value)


def build_trainer(
    cfg: TrainConfig,
    *,
    model_path: str | None = None,
    data_paths: list[str] | None = None,
    grpo_overrides: dict[str, Any] | None = None,
    substitutions: dict[str, str] | None = None,
    extra_rewards: list | None = None,
) -> BuiltTrainer:
    """Build a GRPOTrainer from the config (no training yet).

    `model_path` / `data_paths` replace the config's model and datasets (dry runs, the smoke test);
    `grpo_overrides` replace GRPOConfig values, `substitutions` records why; `extra_rewards` are
    reward functions added after the configured ones.
    """
    from trl import GRPOTrainer

    args = grpo_arguments(cfg, overrides=grpo_overrides)  # first: ZeRO-3 must be set up before the model loads
    prepared = load_prepared(data_paths or cfg.data.train)
    train_ds = training_dataset(prepared, min_vote_share=cfg.data.min_vote_share, max_samples=cfg.data.max_samples)
    model, processor = load_policy(cfg, model_path)
    input_format = training_input_format(processor, [len(t) for t in prepared["timestamps_s"]],
                                         prepared_id_numbering(data_paths or cfg.data.train))
    probe = VisionGradProbe(model, deepspeed=bool(args.deepspeed))
    callbacks: list[TrainerCallback] = [probe]
    json_log = None
    if "json" in cfg.log_to:
        json_log = JsonLogCallback(Path(cfg.output_dir) / "train_log.jsonl")
        callbacks.append(json_log)
    trainer = GRPOTrainer(
        model=model,
        processing_class=processor,
        reward_funcs=reward_functions(cfg.rewards) + list(extra_rewards or []),
        args=args,
        train_dataset=train_ds,
        peft_config=lora_config(cfg),
        callbacks=callbacks,
    )
    return BuiltTrainer(
        trainer=trainer,
        args=args,
        probe=probe,
        json_log=json_log,
        train_rows=len(train_ds),
        resume_from=resume_checkpoint(cfg),
        substitutions=dict(substitutions or {}),
        input_format=input_format,
    )


def train(built: BuiltTrainer) -> dict[str, Any]:
    """Run training (resuming if a checkpoint was found) and save the final model; a summary dict."""
    trainer = built.trainer
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=built.resume_from)
    trainer.save_model(built.args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(built.args.output_dir)
        (Path(built.args.output_dir) / INPUT_FORMAT_FILE).write_text(json.dumps(built.input_format, indent=1))
    history = [r for r in trainer.state.log_history if "loss" in r]
    rewards = [float(r["reward"]) for r in history if "reward" in r]  # one mean per logged step
    quarter = max(1, len(rewards) // 4)
    losses = [float(r["loss"]) for r in history]
    if rewards and not any(rewards):
        log.warning("every logged reward was 0, so every advantage and the policy gradient were 0: does the "
                    "model write `<think>...</think><answer>Target ID: N, Time range: a to b</answer>` at all?")
    return {
        "steps": int(trainer.state.global_step),
        "train_rows": built.train_rows,
        "resumed_from": built.resume_from,
        "train_loss": float(result.training_loss),
        "loss_finite": all(math.isfinite(v) for v in losses) and math.isfinite(float(result.training_loss)),
        # mean of the per-step mean rewards over the first and the last quarter of the logged steps
        "reward_mean_first_quarter": sum(rewards[:quarter]) / quarter if rewards else None,
        "reward_mean_last_quarter": sum(rewards[-quarter:]) / quarter if rewards else None,
        "reward_steps_per_quarter": quarter if rewards else 0,
        "visual_grad_calls": built.probe.grad_calls,
        "visual_grad_norm_max": None if built.probe.norm_unreadable else max(built.probe.grad_norms, default=0.0),
        "visual_grad_norm_unreadable": built.probe.norm_unreadable,
        "output_dir": str(built.args.output_dir),
        "log_file": str(built.json_log.path) if built.json_log else None,
        "wall_s": round(time.monotonic() - start, 2),
    }


def ensure_launcher_env() -> bool:
    """Give a plain single process (no accelerate/torchrun launcher) the variables DeepSpeed needs.

    Lets `stvg-train grpo` run a DeepSpeed config on one GPU (or build it in a dry run) without a
    launcher. Returns True when the variables were set here.
    """
    if "WORLD_SIZE" in os.environ:
        return False
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return True


def accelerate_deepspeed_fields(acc: dict[str, Any]) -> list[str]:
    """The DeepSpeed fields `accelerate launch` exports in ACCELERATE_CONFIG_DS_FIELDS for this config file."""
    fields = list((acc.get("deepspeed_config") or {}).keys())
    if acc.get("mixed_precision") is not None:  # accelerate: "mixed precision from the config file"
        fields.append("mixed_precision")
    return fields


def check_accelerate_fields_against_deepspeed_json(acc: dict[str, Any], *, where: str) -> None:
    """Raise accelerate's own error for an accelerate config that sets what a DeepSpeed JSON must own.

    With a DeepSpeed JSON (grpo.deepspeed), accelerate's DeepSpeedPlugin refuses launch configs
    that set zero_stage, offloading, gradient accumulation/clipping or mixed_precision; this runs
    that same check (accelerate's code) on the file, before any process is started.
    """
    from accelerate.utils import DeepSpeedPlugin, patch_environment

    with patch_environment(ACCELERATE_CONFIG_DS_FIELDS=",".join(accelerate_deepspeed_fields(acc))):
        try:
            DeepSpeedPlugin._deepspeed_config_checks(None)  # reads only the environment
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}".splitlines()[0]) from None


def _validate_accelerate_config(cfg: TrainConfig) -> dict[str, Any]:
    """Check the accelerate launch file named by `launch.accelerate_config` against the run config."""
    import yaml

    path = cfg.config_relative(cfg.launch.accelerate_config)
    if path is None:
        return {}
    if not path.is_file():
        raise ConfigError(f"launch.accelerate_config: {path} not found")
    acc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    procs = int(acc.get("num_processes", 1))
    if procs != cfg.launch.num_processes:
        raise ConfigError(f"{path}: num_processes {procs} != launch.num_processes {cfg.launch.num_processes}")
    kind = acc.get("distributed_type", "NO")
    if cfg.grpo.get("deepspeed") and kind != "DEEPSPEED":
        raise ConfigError(f"{path}: distributed_type must be DEEPSPEED for a DeepSpeed config, got {kind}")
    ds_file = (acc.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if ds_file and not (Path(ds_file).is_file() or (path.parent / Path(ds_file).name).is_file()):
        raise ConfigError(f"{path}: deepspeed_config_file {ds_file} not found")
    if cfg.grpo.get("deepspeed") and kind == "DEEPSPEED":
        check_accelerate_fields_against_deepspeed_json(acc, where=str(path))
    return {"accelerate_config": str(path), "launch_distributed_type": kind, "launch_num_processes": procs}


def check_deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    """Validate the DeepSpeed JSON named by `grpo.deepspeed` without the deepspeed package.

    Parsed with accelerate's DeepSpeed config reader; values that are not "auto" must agree with
    the run (micro batch, accumulation, global batch on the launched world size, bf16). Returns
    what the dry run reports: ZeRO stage and where parameters and optimizer state live.
    """
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    path = cfg.config_relative(cfg.grpo["deepspeed"])
    if not path.is_file():
        raise ConfigError(f"grpo.deepspeed: {path} not found")
    try:
        ds = HfDeepSpeedConfig(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a DeepSpeed config ({exc})") from None
    stage = int(ds.get_value("zero_optimization.stage", 0) or 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{path}: zero_optimization.stage must be 0-3, got {stage}")
    micro = int(cfg.grpo.get("per_device_train_batch_size", STVG_R1_GRPO_DEFAULTS["per_device_train_batch_size"]))
    accumulation = int(cfg.grpo.get("gradient_accumulation_steps", 1))
    expected = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * max(cfg.launch.num_processes, 1),
    }
    for key, want in expected.items():
        value = ds.get_value(key, "auto")
        if value != "auto" and int(value) != want:
            raise ConfigError(f"{path}: {key} is {value} but the run has {want}; set it to \"auto\"")
    bf16 = ds.get_value("bf16.enabled", "auto")
    if bf16 != "auto" and bool(bf16) != bool(cfg.grpo.get("bf16", False)):
        raise ConfigError(f"{path}: bf16.enabled is {bf16} but grpo.bf16 is {cfg.grpo.get('bf16', False)}")
    return {
        "deepspeed_config": str(path),
        "zero_stage": stage,
        "offload_param": ds.get_value("zero_optimization.offload_param.device", "none") or "none",
        "offload_optimizer": ds.get_value("zero_optimization.offload_optimizer.device", "none") or "none",
    }


def _global_batch(cfg: TrainConfig, args) -> dict[str, int]:
    """Completions and prompts per generation batch on the launched world size (not this process's)."""
    world = max(cfg.launch.num_processes, 1)
    generation_batch = int(args.per_device_train_batch_size) * world * int(args.steps_per_generation)
    return {
        "world_size": world,
        "completions_per_step": generation_batch,
        "prompts_per_step": generation_batch // args.num_generations,
    }


def dry_run(
    cfg: TrainConfig, *, model_path: str | None = None, data_paths: list[str] | None = None
) -> dict[str, Any]:
    """Parse the config and build the trainer without training; a JSON-able report.

    Without a GPU, the parts that need one are replaced and the report says so in `substitutions`:
    the run is built on CPU, FlashAttention-2 becomes SDPA, and vLLM (which needs CUDA) is validated
    by GRPOConfig but its engine is not started. DeepSpeed ZeRO-3 is really initialised (one CPU
    process, gloo) when the deepspeed package is installed.
    """
    import importlib.util

    from trl import GRPOConfig

    substitutions: dict[str, str] = {}
    overrides: dict[str, Any] = {}
    launch = _validate_accelerate_config(cfg)
    uses_deepspeed = bool(cfg.grpo.get("deepspeed"))
    missing: list[str] = []
    if uses_deepspeed:
        launch.update(check_deepspeed_config(cfg))
        if importlib.util.find_spec("deepspeed") is None:
            missing.append("deepspeed")
            overrides["deepspeed"] = None
            substitutions["deepspeed"] = ("deepspeed is not installed (pip install 'stvg-train[deepspeed]'): "
                                          "its JSON was checked against the run, the trainer built without ZeRO")
        else:
            ensure_launcher_env()
    if not torch.cuda.is_available():
        overrides["use_cpu"] = True
        substitutions["device"] = "no CUDA device: built on CPU"
        if cfg.model.attn_implementation == "flash_attention_2":
            cfg.model.attn_implementation = "sdpa"
            substitutions["attn_implementation"] = "flash_attention_2 needs CUDA: sdpa"
    elif cfg.model.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        missing.append("flash_attn")
        cfg.model.attn_implementation = "sdpa"
        substitutions["attn_implementation"] = "flash-attn is not installed: sdpa"
    if "tensorboard" in cfg.log_to:
        from transformers.integrations import is_tensorboard_available

        if not is_tensorboard_available():
            missing.append("tensorboard")
            cfg.log_to = [t for t in cfg.log_to if t != "tensorboard"] or ["json"]
            substitutions["tensorboard"] = "tensorboard is not installed: JSON log only"
    vllm_settings = {}
    if cfg.grpo.get("use_vllm"):
        # Let GRPOConfig validate the vLLM settings as written, then build without the engine if it cannot start.
        GRPOConfig(output_dir=cfg.output_dir, **{**STVG_R1_GRPO_DEFAULTS, **cfg.grpo, "deepspeed": None,
                                                 "use_cpu": True, "report_to": []})
        vllm_settings = {k: v for k, v in cfg.grpo.items() if k.startswith("vllm_")}
        if importlib.util.find_spec("vllm") is None:
            missing.append("vllm")
        if "vllm" in missing or not torch.cuda.is_available():
            overrides["use_vllm"] = False
            substitutions["vllm"] = "vLLM needs its package and a CUDA GPU: settings validated, engine not started"
    built = build_trainer(cfg, model_path=model_path, data_paths=data_paths, grpo_overrides=overrides,
                          substitutions=substitutions)
    trainer, args = built.trainer, built.args
    model = trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ds_engine = type(getattr(trainer, "ref_model", None)).__name__ if uses_deepspeed else None
    report = {
        "dry_run": True,
        "trainer": type(trainer).__name__,
        "model": model_path or cfg.model.name_or_path,
        "lora": cfg.lora is not None,
        "trainable_parameters": int(trainable),
        "train_rows": built.train_rows,
        "rewards": list(trainer.reward_func_names),
        "distributed_type": args.distributed_state.distributed_type.value,
        "deepspeed_zero3": bool(getattr(args, "hf_deepspeed_config", None) and args.hf_deepspeed_config.is_zero3()),
        "reference_model": ds_engine or (type(trainer.ref_model).__name__ if trainer.ref_model is not None else None),
        "use_vllm": bool(cfg.grpo.get("use_vllm")),
        "vllm": vllm_settings,
        "num_generations": int(args.num_generations),
        "learning_rate": float(args.learning_rate),
        "beta": float(args.beta),
        **_global_batch(cfg, args),
        **launch,
        "resume_from": built.resume_from,
        "substitutions": substitutions,
        "missing_packages": missing,
    }
    built.probe.close()
    return report


def distributed_env_hint() -> dict[str, str]:
    """The launcher variables this process sees (for logs and dry-run reports)."""
    keys = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_CONFIG_FILE")
    return {k: os.environ[k] for k in keys if k in os.environ}
