"""`stvg-train`: prep | grpo | export | smoke. Parses arguments and calls the library; JSON on stdout."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

log = logging.getLogger("stvg_train")


#: Where results go. main() points file descriptor 1 at stderr while a command runs, because
#: libraries print progress to stdout (DeepSpeed, ninja builds), and keeps the real stdout here.
_result_stream = sys.stdout


def _emit(result: dict[str, Any], as_json: bool) -> None:
    text = json.dumps(result, indent=1, default=str) if as_json else "\n".join(f"{k}: {v}" for k, v in result.items())
    _result_stream.write(text + "\n")
    _result_stream.flush()


def _add_prep(sub) -> None:
    from stvg_ros.grounding.sampling import DEFAULT_MAX_PIXELS, DEFAULT_NUM_FRAMES

    p = sub.add_parser("prep", help="annotations + videos -> perception -> prepared samples (a datasets folder)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--annotations", help="HC-STVG v1/v2, TubeDETR or VidSTG annotation file")
    src.add_argument("--synthetic", help="a synthetic dataset folder (`stvg-ros synth`), or where to write one")
    p.add_argument("--videos", help="folder with the videos (default: <synthetic>/videos)")
    p.add_argument("--synthetic-videos", type=int, default=0,
                   help="generate this many synthetic videos into --synthetic first (0: use what is there)")
    p.add_argument("--out", required=True, help="output folder (the dataset, shards for resuming, report.json)")
    p.add_argument("--detector", default=None, help="detector (manifest name or file); default: the robot's")
    p.add_argument("--perception-config", default=None, help="YAML of PerceptionConfig fields (the robot's file)")
    p.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES, help="frames sampled per clip (the robot's)")
    p.add_argument("--sample-fps", type=float, default=2.0, help="clip buffer frame rate (the node's 2.0)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixel budget per frame (the robot's)")
    p.add_argument("--min-iou", type=float, default=0.5,
                   help="a GT frame votes only for a track with at least this IoU (0: the official rule, any overlap)")
    p.add_argument("--id-numbering", choices=("track", "clip"), default="track",
                   help="numbers drawn: the track IDs, or 1..K per clip in order of first appearance")
    p.add_argument("--workers", type=int, default=1, help="parallel video workers")
    p.add_argument("--limit", type=int, default=None, help="prepare at most this many videos")
    p.add_argument("--no-resume", action="store_true", help="redo videos that already have a shard")
    p.add_argument("--json", action="store_true")


def _run_prep(args) -> int:
    from stvg_train.prep import PrepOptions, prepare

    report = prepare(
        PrepOptions(
            out_dir=args.out,
            annotations=args.annotations,
            synthetic=args.synthetic,
            synthetic_videos=args.synthetic_videos,
            videos=args.videos,
            detector=args.detector,
            perception_config=args.perception_config,
            num_frames=args.num_frames,
            sample_fps=args.sample_fps,
            max_pixels=args.max_pixels,
            min_iou=args.min_iou,
            id_numbering=args.id_numbering,
            workers=args.workers,
            limit=args.limit,
            resume=not args.no_resume,
        )
    )
    _emit(report, args.json)
    return 0 if report["samples"] > 0 else 1


def _add_grpo(sub) -> None:
    p = sub.add_parser("grpo", help="GRPO training with trl.GRPOTrainer from a YAML config")
    p.add_argument("--config", required=True, help="training config (training/configs/*.yaml)")
    p.add_argument("--dry-run", action="store_true", help="build the trainer, report, do not train")
    p.add_argument("--launch-check", action="store_true",
                   help="run the config's launch path on CPU (accelerate launch with 2 gloo processes for a "
                        "multi-GPU config): config parsing, model load, trainer build, one optimizer step; "
                        "lists what needs CUDA and was not exercised")
    p.add_argument("--launch-check-worker", default=None, metavar="REPORT_DIR", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="replace the config's model (a local Qwen2.5-VL folder)")
    p.add_argument("--data", nargs="+", default=None, help="replace the config's prepared datasets")
    p.add_argument("--output-dir", default=None, help="replace the config's output_dir")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--json", action="store_true")


def _run_grpo(args) -> int:
    from stvg_train.config import load_config

    cfg = load_config(args.config)  # a bad config fails before torch and TRL are imported
    from stvg_train.grpo import build_trainer, dry_run, ensure_launcher_env, train

    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.max_steps is not None:
        cfg.grpo["max_steps"] = args.max_steps
    if args.launch_check_worker:
        from stvg_train.launch_check import run_worker

        return run_worker(cfg, args.launch_check_worker, model_path=args.model, data_paths=args.data)
    if args.launch_check:
        from stvg_train.launch_check import launch_check

        report = launch_check(cfg, args.config, model_path=args.model, data_paths=args.data,
                              work_dir=args.output_dir)
        _emit(report, args.json)
        return 0 if report["ok"] else 1
    if args.dry_run:
        _emit(dry_run(cfg, model_path=args.model, data_paths=args.data), args.json)
        return 0
    if cfg.grpo.get("deepspeed"):
        ensure_launcher_env()  # one GPU without accelerate/torchrun
    built = build_trainer(cfg, model_path=args.model, data_paths=args.data)
    summary = train(built)
    _emit(summary, args.json)
    return 0 if summary["loss_finite"] else 1


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="trained model -> GGUF (+ mmproj) -> Q8_0 / Q4_K_M; detector -> ONNX int8")
    p.add_argument("--model", required=True, help="trained model folder (a grpo output_dir or checkpoint)")
    p.add_argument("--base-model", default=None, help="base model for a LoRA adapter folder (default: from the adapter)")
    p.add_argument("--out", default=None, help="output folder (default: $STVG_ROS_MODELS, else ~/.cache/stvg_ros/models)")
    p.add_argument("--name", default="stvg-r1-custom", help="name of the exported model (manifest name)")
    p.add_argument("--quant", nargs="+", default=["Q8_0", "Q4_K_M"], help="llama.cpp quantizations")
    p.add_argument("--detector", default=None, help="detector weights to export to ONNX (optional)")
    p.add_argument("--calibration-data", default=None,
                   help="videos folder or prepared dataset whose frames calibrate the detector's int8")
    p.add_argument("--calibration-frames", type=int, default=32, help="frames used for int8 calibration")
    p.add_argument("--threads", type=int, default=0, help="threads for quantization and the load check (0: all)")
    p.add_argument("--no-verify", action="store_true", help="skip loading each exported file in its backend")
    p.add_argument("--json", action="store_true")


def _run_export(args) -> int:
    from stvg_train.export import ExportOptions, export

    result = export(
        ExportOptions(
            model_dir=args.model,
            base_model=args.base_model,
            out_dir=args.out,
            name=args.name,
            quants=args.quant,
            detector=args.detector,
            calibration_data=args.calibration_data,
            calibration_frames=args.calibration_frames,
            verify=not args.no_verify,
            threads=args.threads,
        )
    )
    _emit(result, args.json)
    return 0 if all(f.get("loaded", True) for f in result["files"]) else 1


def _add_smoke(sub) -> None:
    p = sub.add_parser("smoke", help="CPU end-to-end check: synthetic prep -> GRPO -> GGUF export -> grounding")
    p.add_argument("--work-dir", default=None, help="where to build (default: a cache folder)")
    p.add_argument("--steps", type=int, default=20, help="GRPO steps")
    p.add_argument("--videos", type=int, default=5, help="synthetic videos")
    p.add_argument("--detector", default=None,
                   help="detector manifest name or file (default: yolo-synth-tiny, built once if missing)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", action="store_true")


def _run_smoke(args) -> int:
    from stvg_train.smoke import run_smoke

    result = run_smoke(work_dir=args.work_dir, steps=args.steps, videos=args.videos, threads=args.threads,
                       detector=args.detector)
    _emit(result, args.json)
    return 0 if result["ok"] else 1


def _add_recipe(sub) -> None:
    p = sub.add_parser("recipe", help="train our small STVG model from scratch on synthetic scenes (all stages)")
    p.add_argument("recipe", help="recipe name (synth-small) or a recipe YAML file")
    p.add_argument("--work-dir", required=True, help="where every stage writes (rerun to resume)")
    p.add_argument("--stages", nargs="+", default=None, help="run only these stages (default: all, in order)")
    p.add_argument("--redo", nargs="+", default=None, help="run these stages again even if finished")
    p.add_argument("--json", action="store_true")


def _run_recipe(args) -> int:
    from stvg_train.recipe import run_recipe

    _emit(run_recipe(args.recipe, args.work_dir, stages=args.stages, redo=args.redo), args.json)
    return 0


COMMANDS = {
    "prep": (_add_prep, _run_prep),
    "grpo": (_add_grpo, _run_grpo),
    "export": (_add_export, _run_export),
    "smoke": (_add_smoke, _run_smoke),
    "recipe": (_add_recipe, _run_recipe),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stvg-train", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from stvg_train.config import ConfigError

    global _result_stream
    sys.stdout.flush()
    saved_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed while the command runs lands on stderr
    _result_stream = os.fdopen(os.dup(saved_fd), "w")
    try:
        return COMMANDS[args.command][1](args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"stvg-train {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        _result_stream.close()
        _result_stream = sys.stdout


if __name__ == "__main__":
    sys.exit(main())

