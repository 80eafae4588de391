"""`stvg-train smoke`: the whole training path on CPU in a few minutes, with a tiny random Qwen2.5-VL.

synthetic scenes -> `prep` (the robot's perception) -> a held-out split -> a short supervised warm
start -> >= 20 GRPO steps (4 prompts x 4 generations each, constant learning rate) -> `export` (GGUF
Q8_0 + mmproj with llama.cpp's converter) -> the grounding pipeline loads the export and answers one
query through the answer grammar. It reports the mean reward of the first and last quarter of the
steps and the held-out prompts' mean reward (with its standard error) before and after GRPO.

Why the warm start: a randomly initialised model never writes a parsable answer, so every GRPO
reward is 0, every advantage is 0 and the gradient is exactly zero. A few supervised steps on
answers in the trained format (random IDs and spans: no answer is given away) make completions
parse, rewards vary within a group, and GRPO's gradient — through the vision tower too — non-zero.
The real 7B model needs no such step (STVG-R1 trains with GRPO only).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("stvg_train.smoke")

#: Bump when the smoke recipe changes (cached synthetic data and prep output are keyed by it).
SMOKE_VERSION = "1"
SMOKE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smoke_cpu.yaml"
#: Synthetic scenes: short, small, few objects (the tiny model sees 112-px frames anyway).
SMOKE_SCENE = {"seconds": 8.0, "fps": 5.0, "width": 320, "height": 240, "n_objects": 3, "difficulty": "easy",
               "max_queries": 4}
SMOKE_FRAMES = 4
#: Pixels per frame for the tiny model (16 visual tokens), used by prep, training and grounding alike.
SMOKE_MAX_PIXELS = 112 * 112
#: The robot's perception with the tiny synthetic-shape detector (built here if it is missing).
SMOKE_PERCEPTION = {"model": "yolo-synth-tiny", "build_missing": True, "detect_every": 1}
#: Every HELDOUT_EVERY-th prepared sample is held out of training and scored before and after GRPO.
HELDOUT_EVERY = 4
#: Completions sampled per held-out prompt (temperature 1, as in training) for its mean reward.
HELDOUT_SAMPLES = 8
#: The smoke run must update on at least this many prompts per optimizer step (one prompt's group is too noisy).
MIN_PROMPTS_PER_STEP = 4


def encode_prompt(processor, row) -> dict:
    """A prepared row's prompt (its question, frame labels and frames) as model inputs."""
    from stvg_train.data import clip_prompt

    prompt = clip_prompt(row["question"], row["timestamps_s"])
    images = iter(row["images"])
    for part in prompt[0]["content"]:
        if part["type"] == "image":
            part["image"] = next(images)
    return processor.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True,
                                         return_tensors="pt")

def smoke_perception(detector: str | None = None) -> dict[str, Any]:
    """PerceptionConfig fields for the smoke run: the tiny detector, or `detector` (a manifest name or file)."""
    return {**SMOKE_PERCEPTION, "model": detector} if detector else dict(SMOKE_PERCEPTION)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def warm_start(model_dir: Path, prepared: Path, out_dir: Path, *, steps: int = 60, lr: float = 3e-3,
               seed: int = 0, max_pixels: int | None = None) -> dict[str, Any]:
    """Supervised steps on completions in the answer format with RANDOM IDs (among the drawn tracks)
    and random spans, so a random model learns the format but not the answers. Saves the model and
    its processor (with `max_pixels` per frame, if given) to out_dir."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stvg_ros.core.answer import format_answer
    from stvg_train.data import load_prepared
    from stvg_train.grpo import set_pixel_budget

    rng = random.Random(seed)
    torch.manual_seed(seed)
    rows = load_prepared([prepared])
    processor = AutoProcessor.from_pretrained(model_dir)
    set_pixel_budget(processor, max_pixels=max_pixels or None)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    encoded = []
    for row in rows:
        enc = encode_prompt(processor, row)
        ids = sorted({i for frame in row["frame_track_ids"] for i in frame}) or [1]
        encoded.append((enc, ids, float(row["clip_duration_s"])))
    end_ids = processor.tokenizer("<|im_end|>\n", add_special_tokens=False, return_tensors="pt")["input_ids"]
    losses = []
    for step in range(steps):
        enc, ids, duration = encoded[step % len(encoded)]
        target = rng.choice(ids)
        a = rng.uniform(0.0, 0.7 * duration)
        b = rng.uniform(a + 0.5, duration)
        completion = f"<think>Object {target}.</think>\n<answer>{format_answer(target, a, b)}</answer>"
        answer_ids = processor.tokenizer(completion, add_special_tokens=False, return_tensors="pt")["input_ids"]
        input_ids = torch.cat([enc["input_ids"], answer_ids, end_ids], dim=1)
        labels = input_ids.clone()
        labels[:, : enc["input_ids"].shape[1]] = -100
        # mm_token_type_ids marks the image tokens: without it Qwen2.5-VL silently falls back to 1-D
        # positions instead of its 3-D mRoPE, and the model learns positions generate() never uses.
        token_types = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(input_ids[:, enc["input_ids"].shape[1]:])], 1)
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels,
                    mm_token_type_ids=token_types, pixel_values=enc["pixel_values"],
                    image_grid_thw=enc["image_grid_thw"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(out.loss.detach()))
    model.eval()
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    tiny_marker = Path(model_dir) / "stvg_tiny.json"
    if tiny_marker.is_file():  # still a tiny test model: keep the marker the grounding side checks
        shutil.copy(tiny_marker, out_dir / "stvg_tiny.json")
    return {"steps": steps, "loss_first": losses[0], "loss_last": float(sum(losses[-10:]) / len(losses[-10:]))}


def split_heldout(prepared: Path, out_dir: Path, *, every: int = HELDOUT_EVERY) -> tuple[Path, Path]:
    """Split a prepared dataset into train and held-out folders (every `every`-th usable sample held out)."""
    from stvg_train.data import gt_id_drawn, load_prepared

    rows = load_prepared([prepared])
    usable = [i for i, (gid, ids) in enumerate(zip(rows["gt_target_id"], rows["frame_track_ids"], strict=True))
              if gt_id_drawn(gid, ids)]
    heldout = set(usable[::every])
    train_dir, heldout_dir = out_dir / "train", out_dir / "heldout"
    shutil.rmtree(out_dir, ignore_errors=True)
    rows.select([i for i in range(len(rows)) if i not in heldout]).save_to_disk(str(train_dir / "dataset"))
    rows.select(sorted(heldout)).save_to_disk(str(heldout_dir / "dataset"))
    return train_dir, heldout_dir


def heldout_reward(model_dir: Path, heldout: Path, *, rewards: list[str], samples: int = HELDOUT_SAMPLES,
                   max_new_tokens: int = 48, temperature: float = 1.0, top_k: int = 50, seed: int = 0,
                   max_pixels: int | None = None) -> dict[str, Any]:
    """Mean summed reward of `samples` sampled completions per held-out prompt, and its standard error.

    The prompts are fixed, so the error is the sampling error of the mean: sqrt(sum_p var_p / k) / P
    for P prompts with k completions each (var_p: the sample variance of prompt p's rewards).
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stvg_train.data import load_prepared
    from stvg_train.grpo import set_pixel_budget
    from stvg_train.rewards import reward_functions

    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(model_dir, padding_side="left")
    set_pixel_budget(processor, max_pixels=max_pixels)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    funcs = reward_functions(rewards)
    per_prompt: list[list[float]] = []
    for row in load_prepared([heldout]):
        enc = encode_prompt(processor, row)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0,
                                 max_new_tokens=max_new_tokens, num_return_sequences=samples)
        texts = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        columns = {k: [row[k]] * samples for k in row if k.startswith(("gt_", "frame_")) or k == "clip_duration_s"}
        scores = [f(completions=texts, **columns) for f in funcs]
        per_prompt.append([float(sum(v)) for v in zip(*scores, strict=True)])
    n = len(per_prompt)
    means = [sum(r) / len(r) for r in per_prompt]
    variances = [sum((x - m) ** 2 for x in r) / max(len(r) - 1, 1) for r, m in zip(per_prompt, means, strict=True)]
    return {"mean": sum(means) / n if n else None,
            "se": math.sqrt(sum(v / samples for v in variances)) / n if n else None,
            "prompts": n, "samples_per_prompt": samples}


def _answer_one_query(model: dict[str, Any], synthetic_root: Path, perception: dict[str, Any],
                      max_pixels: int) -> dict[str, Any]:
    """The robot's path with the exported files: perception -> clip buffer -> GroundingPipeline with the
    llama.cpp backend (Q8_0 + mmproj, grammar-constrained) -> parsed answer."""
    from stvg_ros.core.answer import parse_answer
    from stvg_ros.grounding.backends import make_backend
    from stvg_ros.grounding.pipeline import GroundingConfig, GroundingPipeline, GroundingRequest
    from stvg_ros.perception.pipeline import PerceptionConfig
    from stvg_ros.synthetic.scenes import DatasetIndex
    from stvg_train.prep import perceive_video

    index = DatasetIndex.load(synthetic_root)
    query = index.load_queries()[0]
    seen = perceive_video(synthetic_root / "videos" / query["video"], PerceptionConfig.from_dict(perception))
    backend = make_backend("llama_cpp", model=model["path"], mmproj=model["mmproj"], n_ctx=4096, n_threads=1)
    try:
        config = GroundingConfig(num_frames=SMOKE_FRAMES, max_pixels=max_pixels, max_new_tokens=96, timeout_s=120.0)
        outcome = GroundingPipeline(backend, config).ground(seen.snapshot, GroundingRequest(query["text"]))
    finally:
        backend.close()
    strict = parse_answer(outcome.raw, strict=True)  # the official grammar, not only the robot's lenient reading
    return {"query": query["text"], "success": outcome.success, "strict_parse": strict.ok,
            "well_formatted": strict.well_formatted, "target_id": outcome.target_id,
            "start_s": outcome.start_s, "end_s": outcome.end_s, "track_ids": list(outcome.track_ids),
            "tube_boxes": len(outcome.tube), "message": outcome.message, "raw": outcome.raw}


def run_smoke(work_dir: str | Path | None = None, *, steps: int = 20, videos: int = 5, threads: int = 1,
              warm_steps: int = 100, seed: int = 0, detector: str | None = None) -> dict[str, Any]:
    """Run the smoke pipeline; a JSON-able summary (see docs/training.md for the keys)."""
    from stvg_ros.core.paths import cache_dir
    from stvg_ros.synthetic.tiny_vlm import build_tiny_qwen25vl
    from stvg_train.config import load_config
    from stvg_train.export import ExportOptions, export
    from stvg_train.grpo import build_trainer, train
    from stvg_train.prep import PrepOptions, prepare

    start = time.monotonic()
    _set_threads(threads)
    work = Path(work_dir) if work_dir else cache_dir("train-smoke", f"v{SMOKE_VERSION}")
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.monotonic() - t0, 2)

    perception = smoke_perception(detector)
    t0 = time.monotonic()
    synthetic = work / f"synthetic-{videos}"
    prep_report = prepare(PrepOptions(
        out_dir=str(work / f"prepared-{videos}"), synthetic=str(synthetic), synthetic_videos=videos,
        synthetic_seed=seed, synthetic_spec=SMOKE_SCENE, num_frames=SMOKE_FRAMES, max_pixels=SMOKE_MAX_PIXELS,
        threads=threads, perception_config=perception))
    lap("prep_s", t0)

    train_split, heldout_split = split_heldout(work / f"prepared-{videos}", work / f"split-{videos}")
    cfg = load_config(SMOKE_CONFIG)
    prompts_per_step = int(cfg.grpo["per_device_train_batch_size"]) // int(cfg.grpo["num_generations"])
    if prompts_per_step < MIN_PROMPTS_PER_STEP:
        raise ValueError(f"{SMOKE_CONFIG}: {prompts_per_step} prompts per step; the smoke run needs "
                         f">= {MIN_PROMPTS_PER_STEP} (per_device_train_batch_size / num_generations)")

    t0 = time.monotonic()
    tiny = build_tiny_qwen25vl(work / "tiny-random")
    warm = warm_start(tiny, train_split, work / "tiny-warm", steps=warm_steps, seed=seed,
                      max_pixels=SMOKE_MAX_PIXELS)
    lap("warm_start_s", t0)

    t0 = time.monotonic()
    sampling = {"rewards": list(cfg.rewards), "max_new_tokens": int(cfg.grpo["max_completion_length"]),
                "temperature": float(cfg.grpo["temperature"]), "top_k": int(cfg.grpo["top_k"]), "seed": seed,
                "max_pixels": SMOKE_MAX_PIXELS}
    before = heldout_reward(work / "tiny-warm", heldout_split, **sampling)
    lap("heldout_before_s", t0)

    t0 = time.monotonic()
    cfg.model.name_or_path = str(work / "tiny-warm")
    cfg.model.max_pixels = SMOKE_MAX_PIXELS
    cfg.data.train = [str(train_split)]
    cfg.output_dir = str(work / "grpo")
    cfg.seed = seed
    cfg.grpo["max_steps"] = steps
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    built = build_trainer(cfg)
    summary = train(built)
    built.probe.close()
    lap("grpo_s", t0)

    t0 = time.monotonic()
    after = heldout_reward(Path(cfg.output_dir), heldout_split, **sampling)
    lap("heldout_after_s", t0)

    t0 = time.monotonic()
    manifest = export(ExportOptions(model_dir=cfg.output_dir, out_dir=str(work / "export"), name="stvg-r1-smoke",
                                    quants=["Q8_0"], verify=True, threads=threads))
    lap("export_s", t0)

    t0 = time.monotonic()
    q8 = next(f for f in manifest["files"] if f["role"] == "model" and f["quantization"] == "Q8_0")
    answer = _answer_one_query(q8, synthetic, perception, SMOKE_MAX_PIXELS)
    lap("ground_s", t0)

    exported = [f["path"] for f in manifest["files"]]
    all_loaded = all(f.get("loaded", False) for f in manifest["files"])
    # The robot's reading: the grammar-constrained answer parsed to an ID and a span. The official strict
    # parser is reported too (`strict_parse`); it also refuses a reversed span, which the grammar allows.
    answer_parsed = bool(answer["success"] and answer["well_formatted"])
    # The images must reach the gradient: a non-zero vision-tower gradient norm, or (where the norm cannot
    # be read, e.g. under DeepSpeed) grad-enabled vision-tower calls and the reason in the result.
    unreadable = summary["visual_grad_norm_unreadable"]
    visual_gradient = bool(summary["visual_grad_calls"] > 0
                           and (unreadable is not None or (summary["visual_grad_norm_max"] or 0.0) > 0.0))
    change = (after["mean"] - before["mean"]) if before["mean"] is not None and after["mean"] is not None else None
    result = {
        "ok": bool(summary["loss_finite"] and summary["steps"] >= steps and visual_gradient
                   and all_loaded and answer_parsed and prep_report["samples"] > 0),
        "steps": summary["steps"],
        "prompts_per_step": prompts_per_step,
        "completions_per_step": int(cfg.grpo["per_device_train_batch_size"]),
        "learning_rate": float(cfg.grpo["learning_rate"]),
        "lr_scheduler_type": built.args.lr_scheduler_type.value if hasattr(built.args.lr_scheduler_type, "value")
        else str(built.args.lr_scheduler_type),
        "loss_finite": summary["loss_finite"],
        "train_loss": summary["train_loss"],
        "reward_mean_first_quarter": summary["reward_mean_first_quarter"],
        "reward_mean_last_quarter": summary["reward_mean_last_quarter"],
        "reward_steps_per_quarter": summary["reward_steps_per_quarter"],
        "heldout_reward": {"before": before, "after": after, "change": change,
                           "change_se": math.hypot(before["se"], after["se"]) if change is not None else None},
        "visual_grad_calls": summary["visual_grad_calls"],
        "visual_grad_norm_max": summary["visual_grad_norm_max"],
        "visual_grad_norm_unreadable": unreadable,
        "visual_gradient": visual_gradient,
        "exported_files": exported,
        "exported_loaded": all_loaded,
        "answer_parsed": answer_parsed,
        "answer": answer,
        "prep": {k: prep_report[k] for k in ("samples", "matched", "unmatched", "matched_share", "vote_share_mean",
                                             "gt_mean_iou_mean", "id_correct_share")},
        "warm_start": warm,
        "log_file": summary["log_file"],
        "work_dir": str(work),
        "timings_s": timings,
        "wall_s": round(time.monotonic() - start, 2),
        "note": "tiny random-weight model: rewards and answers show the pipeline works, not accuracy",
    }
    if not all(math.isfinite(v) for v in (summary["train_loss"],)):
        result["ok"] = False
    (work / "smoke.json").write_text(json.dumps(result, indent=1, default=str))
    return result
