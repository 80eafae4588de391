"""`stvg-train smoke`: the whole training path on CPU in a few minutes, with a tiny random Qwen2.5-VL.

synthetic scenes -> `prep` (the robot's perception) -> a short supervised warm start -> >= 20 GRPO
steps -> `export` (GGUF Q8_0 + mmproj with llama.cpp's converter) -> the grounding pipeline loads
the export and answers one query through the answer grammar.

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
    from stvg_train.data import clip_prompt, load_prepared
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
        prompt = clip_prompt(row["question"], row["timestamps_s"])
        images = iter(row["images"])
        for part in prompt[0]["content"]:
            if part["type"] == "image":
                part["image"] = next(images)
        enc = processor.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True,
                                            return_tensors="pt")
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

    t0 = time.monotonic()
    tiny = build_tiny_qwen25vl(work / "tiny-random")
    warm = warm_start(tiny, work / f"prepared-{videos}", work / "tiny-warm", steps=warm_steps, seed=seed,
                      max_pixels=SMOKE_MAX_PIXELS)
    lap("warm_start_s", t0)

    t0 = time.monotonic()
    cfg = load_config(SMOKE_CONFIG)
    cfg.model.name_or_path = str(work / "tiny-warm")
    cfg.model.max_pixels = SMOKE_MAX_PIXELS
    cfg.data.train = [str(work / f"prepared-{videos}")]
    cfg.output_dir = str(work / "grpo")
    cfg.seed = seed
    cfg.grpo["max_steps"] = steps
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    built = build_trainer(cfg)
    summary = train(built)
    built.probe.close()
    lap("grpo_s", t0)

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
    result = {
        "ok": bool(summary["loss_finite"] and summary["steps"] >= steps and summary["visual_grad_calls"] > 0
                   and all_loaded and answer_parsed and prep_report["samples"] > 0),
        "steps": summary["steps"],
        "loss_finite": summary["loss_finite"],
        "train_loss": summary["train_loss"],
        "reward_mean_first": summary["reward_mean_first"],
        "reward_mean_last": summary["reward_mean_last"],
        "visual_grad_calls": summary["visual_grad_calls"],
        "visual_grad_norm_max": summary["visual_grad_norm_max"],
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
