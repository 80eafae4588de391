"""`stvg-train grpo --config FILE --launch-check`: a config's real launch path, run on this machine's CPUs.

The parent starts the processes the way the config is launched on a GPU server: configs with
`launch.accelerate_config` through accelerate's own launcher code (`_validate_launch_command`, then
`prepare_deepspeed_cmd_env` / `prepare_multi_gpu_env` and torch.distributed.run) with 2 CPU processes
(gloo), the others as the one plain process their comment names. Each process then runs what
`stvg-train grpo` runs: accelerate's DeepSpeed checks under the launcher's environment, the
GRPOConfig build, the from_pretrained arguments the policy would get on a CUDA server (checked with
transformers' device_map rule), the model load, the trainer build and one optimizer step, on the
tiny random Qwen2.5-VL unless `--model` / `--data` say otherwise.

Whatever needs CUDA or a package missing here is listed under `not_exercised`, never skipped silently.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from stvg_train.config import ConfigError, TrainConfig

#: Processes a launch check starts for a multi-process config (one CPU core each would be ideal).
LAUNCH_CHECK_PROCESSES = 2
#: Bump when the tiny inputs change (they are cached under .cache/launch-check).
TINY_INPUTS_VERSION = "1"
#: The launcher variables a worker records (what `accelerate launch` exported to it).
LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "ACCELERATE_USE_DEEPSPEED",
                      "ACCELERATE_CONFIG_DS_FIELDS", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
                      "ACCELERATE_DEEPSPEED_ZERO3_INIT", "ACCELERATE_DEEPSPEED_CONFIG_FILE")


def build_tiny_inputs(work_dir: Path, *, scenes: int = 5) -> tuple[Path, Path]:
    """A tiny random Qwen2.5-VL and a prepared dataset (2 queries per synthetic scene, 4 frames each).

    The dataset is built from the scenes' ground-truth tracks, not the perception path (which
    `stvg-train prep` and the smoke test cover): a launch check tests the trainer's wiring.
    """
    model_dir = work_dir / "tiny-qwen25vl"
    data_dir = work_dir / f"prepared-{scenes}"
    if (model_dir / "config.json").is_file() and (data_dir / "dataset").is_dir():
        return model_dir, data_dir  # cached: no imports needed
    import datasets

    from stvg_ros.synthetic.tiny_vlm import build_tiny_qwen25vl
    from stvg_train.data import SAMPLE_FEATURES

    if not (model_dir / "config.json").is_file():
        build_tiny_qwen25vl(model_dir)
    if not (data_dir / "dataset").is_dir():
        rows = gt_scene_samples(range(1, scenes + 1))
        tmp = data_dir.with_name(data_dir.name + ".tmp")
        datasets.Dataset.from_list(rows, features=SAMPLE_FEATURES).save_to_disk(str(tmp / "dataset"))
        tmp.rename(data_dir)
    return model_dir, data_dir


def gt_scene_samples(seeds) -> list[dict]:
    """Training rows from synthetic scenes' ground truth (2 queries per scene, frames 0/8/16/24 of a
    6-s clip at 5 fps, IDs drawn from the GT tracks): data for checking the trainer's wiring."""
    from PIL import Image

    from stvg_ros.core.render import render_ids
    from stvg_ros.synthetic.scenes import SceneSpec, generate_scene
    from stvg_train.data import make_sample

    rows = []
    for seed in seeds:
        scene = generate_scene(seed, SceneSpec(seconds=6.0, fps=5.0, difficulty="easy", max_queries=2))
        frames = [0, 8, 16, 24]
        images, ids, boxes = [], [], []
        for f in frames:
            tracks = scene.gt.tracks(f)
            images.append(Image.fromarray(render_ids(scene.render_frame(f), tracks)))
            ids.append(tracks.track_id.tolist())
            boxes.append(tracks.xyxy.tolist())
        for q in scene.queries[:2]:
            rows.append(make_sample(
                sample_id=f"{scene.name}-{q.start_frame}", source="synthetic", video=scene.name, caption=q.text,
                images=images, timestamps_s=[f / scene.fps for f in frames],
                clip_duration_s=scene.num_frames / scene.fps, gt_start_s=q.start_s, gt_end_s=q.end_s,
                gt_target_id=q.target_id, gt_vote_share=1.0, gt_mean_iou=1.0, frame_track_ids=ids,
                frame_track_boxes=boxes, frame_gt_boxes=[scene.gt.box(f, q.target_id).tolist() for f in frames]))
    return rows


def _launcher_command(cfg: TrainConfig, worker_args: list[str], processes: int) -> tuple[list[str], str]:
    """The command that starts the workers as the config is launched, and a description of it."""
    acc = cfg.config_relative(cfg.launch.accelerate_config)
    if acc is None:
        how = "one plain process (no launcher), as on a 1-GPU machine"
        return [sys.executable, "-m", "stvg_train.cli", *worker_args], how
    how = (f"accelerate launch --config_file {acc.name} --num_processes {processes} (accelerate's launcher code, "
           f"torch.distributed.run, gloo on CPU)")
    return [sys.executable, "-m", "stvg_train.launch_check", "--config_file", str(acc), "--num_processes",
            str(processes), "--main_process_port", "0", "-m", "stvg_train.cli", *worker_args], how


def launch_check(cfg: TrainConfig, config_path: str | Path, *, model_path: str | None = None,
                 data_paths: list[str] | None = None, work_dir: str | Path | None = None,
                 processes: int = LAUNCH_CHECK_PROCESSES, timeout_s: float = 900.0) -> dict[str, Any]:
    """Run the config's launch path on CPU; a JSON-able report (`ok`, per-rank reports, what was not exercised)."""
    from stvg_ros.core.paths import cache_dir
    from stvg_train.grpo import _validate_accelerate_config, check_deepspeed_config

    start = time.monotonic()
    static: dict[str, Any] = {}
    static_error = None
    try:  # the file checks a dry run makes; the processes are started anyway, to show the runtime failure too
        static.update(_validate_accelerate_config(cfg))
        if cfg.grpo.get("deepspeed"):
            static.update(check_deepspeed_config(cfg))
    except ConfigError as exc:
        static_error = str(exc)
    substituted: list[str] = []
    if model_path is None or data_paths is None:
        tiny_model, tiny_data = build_tiny_inputs(cache_dir("launch-check", f"v{TINY_INPUTS_VERSION}"))
        if model_path is None:
            model_path = str(tiny_model)
            substituted.append(f"model: the tiny random Qwen2.5-VL instead of "
                               f"{cfg.model.name_or_path or 'the model the caller fills in'} (no weights here)")
        if data_paths is None:
            data_paths = [str(tiny_data)]
            substituted.append(f"data: a tiny synthetic dataset (10 queries) instead of "
                               f"{cfg.data.train or 'the data the caller fills in'}")
    work = Path(work_dir) if work_dir else cache_dir("launch-check", "runs", Path(config_path).stem)
    reports = work / "reports"
    for old in reports.glob("rank-*.json") if reports.is_dir() else []:
        old.unlink()
    reports.mkdir(parents=True, exist_ok=True)
    multi = cfg.launch.accelerate_config is not None
    worker_args = ["grpo", "--config", str(config_path), "--launch-check-worker", str(reports), "--model",
                   model_path, "--output-dir", str(work / "out"), "--data", *data_paths]
    command, how = _launcher_command(cfg, worker_args, processes if multi else 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # the launcher sets these; a parent's would leak into the check
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
        returncode, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, stderr = 124, (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) \
            else (exc.stderr or "")
    ranks = [json.loads(p.read_text()) for p in sorted(reports.glob("rank-*.json"))]
    expected = processes if multi else 1
    errors = [r for r in ranks if r.get("error")]
    first = errors[0] if errors else None
    not_exercised = list(dict.fromkeys(substituted + [x for r in ranks for x in r.get("not_exercised", [])]))
    report: dict[str, Any] = {
        "ok": returncode == 0 and len(ranks) == expected and not errors and static_error is None,
        "config": str(config_path),
        "launcher": how,
        "processes": expected,
        "returncode": returncode,
        "stage": first["stage"] if first else (None if returncode == 0 else "launcher"),
        "error": first["error"] if first else (None if returncode == 0 else _last_error_line(stderr)),
        "config_files_error": static_error,
        "exercised": ranks[0].get("exercised", []) if ranks else [],
        "not_exercised": not_exercised,
        **static,
        "ranks": [{k: r.get(k) for k in ("rank", "world_size", "backend", "steps", "loss", "visual_grad_norm",
                                          "error", "launcher_env")} for r in ranks],
        "wall_s": round(time.monotonic() - start, 1),
    }
    if not report["ok"]:
        report["stderr_tail"] = stderr[-3000:]
    return report


def _last_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["(no output)"])[-1][:1000]


def random_reward(completions: list, **_: Any) -> list[float]:
    """Uniform random rewards: a random-weight model scores 0 on every completion, so the advantages and
    the gradient would be exactly 0; random rewards make one step move the weights (vision tower included)."""
    import random

    return [random.random() for _ in completions]


def _gloo_backend_without_cuda() -> None:
    """Make accelerate's PartialState use gloo where it finds no backend (launched, no CUDA): a CPU-only shim."""
    import torch
    from accelerate.state import PartialState

    if torch.cuda.is_available() or getattr(PartialState, "_stvg_gloo_shim", False):
        return
    original = PartialState._prepare_backend

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        backend, distributed_type = original(self, cpu, sagemaker_dp, backend)
        if backend is None and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            backend = "gloo"
        return backend, distributed_type

    PartialState._prepare_backend = prepare_backend
    PartialState._stvg_gloo_shim = True


def _cpu_overrides(cfg: TrainConfig) -> tuple[dict[str, Any], list[str]]:
    """GRPOConfig values changed for a CPU launch check (one short step), and the reasons to list."""
    overrides: dict[str, Any] = {"max_steps": 1, "max_completion_length": 8, "save_strategy": "no",
                                 "dataloader_num_workers": 0, "logging_steps": 1}
    if cfg.grpo.get("deepspeed") and importlib.util.find_spec("deepspeed") is not None:
        # DeepSpeed on its CPU accelerator: use_cpu would make accelerate pick MULTI_CPU over DEEPSPEED
        _gloo_backend_without_cuda()
        notes = ["accelerate's backend choice: gloo forced (accelerate finds no backend for DeepSpeed without "
                 "CUDA and would count 1 process)"]
    else:
        overrides["use_cpu"] = True
        notes = []
    notes.append("CUDA: every process runs on CPU (gloo between processes) instead of CUDA (NCCL); one optimizer "
                 "step with 8-token completions, no checkpoint saved")
    if cfg.grpo.get("bf16"):
        overrides["bf16"] = False
        notes.append("bf16 mixed precision: float32 on CPU")
    if cfg.model.attn_implementation == "flash_attention_2":
        cfg.model.attn_implementation = "sdpa"
        notes.append("flash_attention_2: needs CUDA and flash-attn; sdpa here")
    if cfg.model.dtype in ("bfloat16", "float16"):
        notes.append(f"model dtype {cfg.model.dtype}: float32 on CPU")
        cfg.model.dtype = "float32"
    if cfg.grpo.get("use_vllm"):
        overrides["use_vllm"] = False
        notes.append(f"vLLM generation ({cfg.grpo.get('vllm_mode', 'colocate')} mode): needs CUDA and the vllm "
                     "package; its settings are validated by GRPOConfig, generation uses transformers here")
    if "tensorboard" in cfg.log_to:
        from transformers.integrations import is_tensorboard_available

        if not is_tensorboard_available():
            cfg.log_to = [t for t in cfg.log_to if t != "tensorboard"] or ["json"]
            notes.append("tensorboard logging: the package is not installed here")
    if cfg.launch.num_processes > LAUNCH_CHECK_PROCESSES:
        notes.append(f"world size: {LAUNCH_CHECK_PROCESSES} processes instead of {cfg.launch.num_processes} "
                     "(the DeepSpeed batch sizes are checked for the configured world size)")
    return overrides, notes


def run_worker(cfg: TrainConfig, report_dir: str | Path, *, model_path: str | None,
               data_paths: list[str] | None) -> int:
    """One process of a launch check: the GPU-server code path with CPU substitutions; writes rank-N.json."""
    import torch

    from stvg_train.grpo import (
        build_trainer,
        check_deepspeed_config,
        ensure_launcher_env,
        policy_load_kwargs,
        train,
    )

    uses_deepspeed = bool(cfg.grpo.get("deepspeed"))
    if uses_deepspeed and cfg.launch.accelerate_config is None:
        ensure_launcher_env()  # what `stvg-train grpo` does for a 1-GPU DeepSpeed config
    rank = int(os.environ.get("RANK", "0"))
    report: dict[str, Any] = {
        "rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "launcher_env": {k: os.environ[k] for k in LAUNCHER_VARIABLES if k in os.environ},
        "exercised": [], "not_exercised": [], "error": None, "stage": None,
    }
    done = report["exercised"]
    stage = "start"
    try:
        overrides, notes = _cpu_overrides(cfg)
        report["not_exercised"].extend(notes)
        zero_stage = 0
        if uses_deepspeed:
            stage = "DeepSpeed config"
            ds_info = check_deepspeed_config(cfg)
            zero_stage = ds_info["zero_stage"]
            done.append(f"DeepSpeed JSON {Path(ds_info['deepspeed_config']).name}: parsed, ZeRO-{zero_stage}, "
                        f"batch sizes checked for {cfg.launch.num_processes} process(es)")
            if importlib.util.find_spec("deepspeed") is None:
                stage = "accelerate DeepSpeedPlugin"
                _accelerate_deepspeed_plugin(cfg.config_relative(cfg.grpo["deepspeed"]))
                done.append("accelerate's DeepSpeedPlugin built from the JSON under the launcher's environment "
                            "(its accelerate-config/JSON conflict check)")
                overrides["deepspeed"] = None
                for key in [k for k in os.environ if k.startswith(("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_"))]:
                    del os.environ[key]  # else accelerate's state asks for the deepspeed package itself
                report["not_exercised"].append(
                    "DeepSpeed engine: not installed here (ZeRO partitioning, zero.Init loading, CPU offload, "
                    "DeepSpeedCPUAdam); the trainer was built and stepped without DeepSpeed (plain data parallel)")
        stage = "GRPOConfig"
        from stvg_train.grpo import grpo_arguments

        args = grpo_arguments(cfg, overrides=overrides)
        done.append(f"GRPOConfig built ({args.distributed_state.distributed_type.value}, "
                    f"{args.distributed_state.num_processes} process(es), backend {args.distributed_state.backend})")
        report["backend"] = args.distributed_state.backend
        if not cfg.grpo.get("use_cpu"):  # a GPU config: what the policy's from_pretrained gets on the server
            stage = "policy from_pretrained arguments on CUDA"
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            planned = policy_load_kwargs(cfg, device=torch.device("cuda", local_rank), zero3=zero_stage == 3)
            _check_device_map_like_transformers(planned, zero3=zero_stage == 3)
            done.append(f"from_pretrained arguments for cuda:{local_rank} under ZeRO-{zero_stage}: "
                        f"device_map={planned['device_map']!r} accepted by transformers' rule")
        stage = "model load + trainer build"
        import random

        random.seed(1000 + rank)
        built = build_trainer(cfg, model_path=model_path, data_paths=data_paths, grpo_overrides=overrides,
                              extra_rewards=[random_reward])
        if uses_deepspeed and importlib.util.find_spec("deepspeed") is not None:
            import deepspeed

            done.append(f"DeepSpeed {deepspeed.__version__} engine: ZeRO-{zero_stage} initialised on its "
                        f"{deepspeed.get_accelerator().device_name()} accelerator (policy and reference model)")
        done.append(f"policy loaded (device_map={policy_load_kwargs(cfg)['device_map']!r} here), "
                    f"{type(built.trainer).__name__} built" + (" with a LoRA adapter" if cfg.lora else ""))
        stage = "optimizer step"
        summary = train(built)
        report.update(steps=summary["steps"], loss=summary["train_loss"],
                      visual_grad_norm=summary["visual_grad_norm_max"])
        tower_trains = not (cfg.lora or cfg.model.freeze_vision_tower)
        unreadable = summary["visual_grad_norm_unreadable"]
        if summary["steps"] < 1 or not summary["loss_finite"]:
            raise RuntimeError(f"no finite optimizer step: {summary['steps']} step(s), loss {summary['train_loss']}")
        if tower_trains and not unreadable and not summary["visual_grad_norm_max"] > 0.0:
            raise RuntimeError("the vision tower received no gradient in the optimizer step")
        if tower_trains and unreadable and summary["visual_grad_calls"] < 1:
            raise RuntimeError("the vision tower was never called with gradients enabled")
        if not tower_trains:
            norm_note = "vision tower frozen (LoRA adapters on the language model only)"
        elif unreadable:
            norm_note = f"{summary['visual_grad_calls']} grad-enabled vision-tower call(s); norm unreadable: {unreadable}"
        else:
            norm_note = f"vision-tower gradient norm {summary['visual_grad_norm_max']:.3g}"
        done.append(f"{summary['steps']} optimizer step (extra random reward for non-zero advantages), "
                    f"loss {summary['train_loss']:.4g}, {norm_note}")
        built.probe.close()
    except Exception as exc:  # every failure is the finding this command reports
        report["stage"] = stage
        report["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:2000]
        report["traceback"] = traceback.format_exc()[-4000:]
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    (Path(report_dir) / f"rank-{rank}.json").write_text(json.dumps(report, indent=1, default=str))
    return 1 if report["error"] else 0


def _accelerate_deepspeed_plugin(ds_path: Path) -> None:
    """accelerate's DeepSpeedPlugin from the JSON, as TrainingArguments builds it (its checks need no deepspeed)."""
    from accelerate.utils import DeepSpeedPlugin

    try:
        DeepSpeedPlugin(hf_ds_config=json.loads(ds_path.read_text(encoding="utf-8")))
    except (ImportError, ModuleNotFoundError) as exc:  # past the checks: transformers' half needs deepspeed
        if "deepspeed" not in str(exc).lower():
            raise


def _check_device_map_like_transformers(kwargs: dict[str, Any], *, zero3: bool) -> None:
    """transformers' own device_map check on what from_pretrained would receive on a CUDA server.

    TRL's create_model_from_path fills in device_map="auto" on CUDA when none is given; under
    ZeRO-3 transformers' check_and_set_device_map then refuses any map.
    """
    from unittest import mock

    from transformers.integrations import accelerate as hf_accelerate

    device_map = kwargs.get("device_map", "auto")  # TRL's default on CUDA
    with mock.patch.object(hf_accelerate, "is_deepspeed_zero3_enabled", return_value=zero3):
        hf_accelerate.check_and_set_device_map(device_map)


def _simulated_accelerate_launch(argv: list[str]) -> int:
    """`accelerate launch ARGV` through accelerate's own code, minus its check that deepspeed is installed.

    Used by the launch check so a DeepSpeed launch config starts its processes (with the exact
    environment accelerate exports) on a machine without deepspeed; `accelerate launch` itself is
    used when deepspeed is installed.
    """
    import torch.distributed.run as distrib_run
    from accelerate.commands.launch import _validate_launch_command, launch_command, launch_command_parser
    from accelerate.utils import patch_environment
    from accelerate.utils.launch import _filter_args, prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(argv)
    checked, defaults, mp_from_config = _validate_launch_command(args)
    if not checked.use_deepspeed or importlib.util.find_spec("deepspeed") is not None:
        launch_command(launch_command_parser().parse_args(argv))
        return 0
    fields = list(defaults.deepspeed_config.keys()) if defaults else []
    if mp_from_config:
        fields.append("mixed_precision")
    checked.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(checked)
    run_args = _filter_args(checked, distrib_run.get_args_parser(),
                            ["--training_script", checked.training_script,
                             "--training_script_args", checked.training_script_args])
    with patch_environment(**env):
        distrib_run.run(run_args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_simulated_accelerate_launch(sys.argv[1:]))
    except Exception as exc:  # torchrun's ChildFailedError and friends: one line, exit 1
        print(f"launcher: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
