"""`stvg-ros bench grounding`: what one query costs, split into prep / encode / generate.

1. **prep** (`prep_ms_p50`, goal <= 100 ms): sample 16 frames of the last `--window` seconds of a
   ClipBuffer filled from a 640x480 synthetic camera, resize them to the model's pixel budget,
   draw the IDs (`sample_clip`), and turn them into model input: lossless BMP data URIs for
   llama.cpp (the robot's default), the Qwen2.5-VL processor for transformers.
2. **end to end**: `GroundingPipeline.ground` over the same buffer with each backend, with and
   without reasoning; the pipeline's own timings (prep_ms, encode_ms = vision encoder + prefill
   until the first token, generate_ms = decoding after it, total_ms), medians over `--repeats`.

By default both backends run the tiny random-weight Qwen2.5-VL (`qwen25vl-tiny-random`, built
locally on first use): the figures measure OUR code paths and llama.cpp/transformers overheads, not
a real model's compute. `--model` names any GGUF (manifest name or path, with `--mmproj`), e.g. a
7B-architecture Q4_K_M model, to measure on a machine with an accelerator; the output always says
which accelerator (if any) was used.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

from stvg_ros.core import model_registry
from stvg_ros.core.prompt import build_question
from stvg_ros.grounding.backends import make_backend
from stvg_ros.grounding.backends.base import image_data_uri
from stvg_ros.grounding.gguf import convert_to_gguf
from stvg_ros.grounding.offline import OfflinePipeline
from stvg_ros.grounding.pipeline import GroundingConfig, GroundingRequest
from stvg_ros.grounding.sampling import sample_clip
from stvg_ros.perception.buffer import BufferConfig, ClipSnapshot
from stvg_ros.synthetic import tiny_vlm
from stvg_ros.synthetic.scenes import SceneSpec, generate_scene

log = logging.getLogger(__name__)

NS = 1_000_000_000
TINY_MODEL = "qwen25vl-tiny-random"
PREP_GOAL_MS = 100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", default="llama_cpp,transformers",
                        help="comma-separated backends to run end to end (default llama_cpp,transformers)")
    parser.add_argument("--model", default=TINY_MODEL,
                        help=f"llama.cpp model: manifest name or GGUF path (default {TINY_MODEL}, built locally)")
    parser.add_argument("--mmproj", default="", help="vision projector GGUF for --model (default: the manifest's "
                        "or the one mmproj*.gguf beside it)")
    parser.add_argument("--hf-model", default=TINY_MODEL,
                        help=f"transformers model: manifest name or HF folder (default {TINY_MODEL})")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per query (default 16)")
    parser.add_argument("--window", type=float, default=10.0, help="query window in seconds (default 10)")
    parser.add_argument("--width", type=int, default=640, help="camera width (default 640)")
    parser.add_argument("--height", type=int, default=480, help="camera height (default 480)")
    parser.add_argument("--prep-repeats", type=int, default=20, help="prep measurements (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end queries per backend and mode (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="generation budget (default 256)")
    parser.add_argument("--n-threads", type=int, default=0, help="llama.cpp threads (0: all cores but one)")
    parser.add_argument("--n-gpu-layers", type=int, default=-1, help="llama.cpp layers on the GPU (-1: all)")
    parser.add_argument("--n-ctx", type=int, default=8192, help="llama.cpp context length (default 8192)")
    parser.add_argument("--no-flash-attn", action="store_true", help="llama.cpp without flash attention")
    parser.add_argument("--seed", type=int, default=3, help="synthetic scene seed")
    parser.add_argument("--random-7b", default="", metavar="DIR",
                        help="measure llama.cpp with a 7B-architecture Q4_K_M model of random weights, built into DIR "
                             "on first use (~17 GB HF + 5 GB GGUF; meant for a machine with an accelerator)")


# --------------------------------------------------------------------------------------------
# Helpers


def accelerator() -> dict:
    """Which accelerator this run can use: torch CUDA device and llama.cpp GPU offload."""
    info = {"torch_cuda": None, "llama_cpp_gpu_offload": False}
    try:
        import torch

        if torch.cuda.is_available():
            info["torch_cuda"] = torch.cuda.get_device_name(0)
    except Exception:  # no torch or a broken CUDA: treat as no accelerator
        log.debug("torch CUDA probe failed", exc_info=True)
    try:
        import llama_cpp

        info["llama_cpp_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # llama-cpp-python missing: the llama_cpp backend reports it when it runs
        log.debug("llama.cpp GPU probe failed", exc_info=True)
    if info["torch_cuda"]:
        offload = "with" if info["llama_cpp_gpu_offload"] else "WITHOUT (CPU build of llama-cpp-python)"
        info["summary"] = f"GPU {info['torch_cuda']}, llama.cpp {offload} GPU offload"
    else:
        info["summary"] = "none: CPU only (no CUDA device on this machine)"
    return info


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else float("nan")


def camera_snapshot(width: int, height: int, seconds: float, seed: int, fps: float = 10.0) -> ClipSnapshot:
    """A ClipSnapshot like the robot's: a synthetic camera at `fps` with ground-truth tracks on every frame."""
    scene = generate_scene(seed, SceneSpec(seconds=seconds, fps=fps, width=width, height=height, n_objects=6,
                                           difficulty="easy"))
    # the grounding node's buffer, holding the whole scene (256 MB: more than the node's 64 MB at 640x480)
    pipeline = OfflinePipeline(buffer=replace(BufferConfig(), max_seconds=seconds + 1.0, max_mb=256.0))
    for index in range(scene.num_frames):
        pipeline.feed_tracks(scene.stamp_ns(index), scene.render_frame(index), scene.gt.tracks(index, min_visible=0.2),
                             frame_id="camera")  # fmt: skip
    return pipeline.snapshot()


def measure_prep(snapshot, args, transformers=None) -> dict:
    """Median ms of sample_clip (+ render) and of turning the frames into model input: BMP data URIs
    (llama.cpp) and, given a loaded TransformersBackend, its processor call (video input by default)."""
    sample, bmp, processed = [], [], []
    question = build_question("the red circle that stops")
    clip = None
    for _ in range(max(1, args.prep_repeats)):  # the robot's path: llama.cpp images
        started = time.perf_counter()
        clip = sample_clip(snapshot, args.window, args.num_frames)
        sampled = time.perf_counter()
        urls = [image_data_uri(frame, "bmp") for frame in clip.frames_rgb_with_ids]
        sample.append((sampled - started) * 1000.0)
        bmp.append((time.perf_counter() - sampled) * 1000.0)
        assert len(urls) == len(clip.frames_rgb_with_ids)
    for _ in range(max(1, args.prep_repeats) if transformers is not None else 0):  # apart: torch's threads
        started = time.perf_counter()
        sampled_clip = sample_clip(snapshot, args.window, args.num_frames)
        transformers._inputs(sampled_clip.frames_rgb_with_ids, sampled_clip.timestamps_s, question)  # as generate
        processed.append((time.perf_counter() - started) * 1000.0)
    figures = {
        "prep_ms_p50": p50([s + b for s, b in zip(sample, bmp, strict=True)]),
        "prep_sample_render_ms_p50": p50(sample),
        "prep_llama_cpp_images_ms_p50": p50(bmp),
        "prep_frames": len(clip.frames_rgb_with_ids),
        "prep_frame_size": f"{clip.size[0]}x{clip.size[1]}",
        "prep_ids_drawn": len(clip.track_ids),
    }
    if processed:
        figures["prep_transformers_ms_p50"] = p50(processed)
    figures["prep_goal_ms"] = PREP_GOAL_MS
    figures["prep_meets_goal"] = figures["prep_ms_p50"] <= PREP_GOAL_MS
    return figures


def measure_end_to_end(backend, snapshot, args) -> dict:
    """Pipeline timings (medians) with and without reasoning (the caller closes the backend)."""
    config = GroundingConfig(num_frames=args.num_frames, max_new_tokens=args.max_new_tokens, timeout_s=600.0)
    pipeline = OfflinePipeline(grounding=config, backend=backend)
    pipeline.ground(GroundingRequest("warm up", window_s=args.window, reasoning=False), snapshot)  # first-call costs
    figures: dict = {"model": pipeline.model_name}
    for mode, reasoning in (("reasoning", True), ("answer_only", False)):
        runs = [pipeline.ground(GroundingRequest("the red circle that stops", window_s=args.window,
                                                 reasoning=reasoning), snapshot)
                for _ in range(max(1, args.repeats))]
        stats = {f"{key}_p50": p50([r.timings[key] for r in runs])
                 for key in ("prep_ms", "encode_ms", "generate_ms", "total_ms")}
        stats["answered"] = sum(r.success for r in runs)
        stats["queries"] = len(runs)
        stats["raw_chars_p50"] = p50([float(len(r.raw)) for r in runs])
        failures = sorted({r.message for r in runs if not r.success})
        if failures:
            stats["failures"] = failures
        figures[mode] = stats
    return figures


def _tiny_files() -> None:
    """Build the tiny model's files on first use (local, no network)."""
    missing = [c for c in model_registry.verify(TINY_MODEL) if c.status == "missing"]
    if missing:
        log.info("building %s (first use; about a minute)", TINY_MODEL)
        model_registry.pull(TINY_MODEL)


def random_7b_files(folder: str) -> tuple[str, str]:
    """(GGUF, mmproj) of the random-weight 7B-architecture model in `folder`, built and converted on first use
    with the same converter and quantizer as `stvg-train export`."""
    root = Path(folder)
    model, mmproj = root / "random-7b-q4_k_m.gguf", root / "mmproj-random-7b-f16.gguf"
    if not (model.is_file() and mmproj.is_file()):
        hf_dir = root / "hf"
        if not (hf_dir / "model.safetensors.index.json").is_file() and not (hf_dir / "model.safetensors").is_file():
            log.info("building a random-weight Qwen2.5-VL-7B in %s", hf_dir)
            tiny_vlm.build_random_qwen25vl_7b(hf_dir)
        model, mmproj = convert_to_gguf(hf_dir, root, "q4_k_m", name="random-7b")
    return str(model), str(mmproj)


def _make(kind: str, args):
    if kind == "llama_cpp":
        return make_backend("llama_cpp", model=args.model, mmproj=args.mmproj, n_ctx=args.n_ctx,
                            n_threads=args.n_threads, n_gpu_layers=args.n_gpu_layers, flash_attn=not args.no_flash_attn)
    if kind == "transformers":
        return make_backend("transformers", model=args.hf_model)
    raise ValueError(f"backend {kind!r} cannot be benchmarked here (llama_cpp, transformers)")


# --------------------------------------------------------------------------------------------
# Entry point


def run(args: argparse.Namespace) -> dict:
    kinds = [k.strip() for k in str(args.backends).split(",") if k.strip()]
    if args.random_7b:
        args.model, args.mmproj = random_7b_files(args.random_7b)
        kinds = ["llama_cpp"]
    if ("llama_cpp" in kinds and args.model == TINY_MODEL) or ("transformers" in kinds and args.hf_model == TINY_MODEL):
        _tiny_files()
    accel = accelerator()
    figures: dict = {
        "accelerator": accel["summary"],
        "llama_cpp_gpu_offload": accel["llama_cpp_gpu_offload"],
        "cpu_count": os.cpu_count(),
        "camera": f"{args.width}x{args.height}",
        "num_frames": args.num_frames,
        "window_s": args.window,
        "llama_cpp_flash_attn": not args.no_flash_attn,
    }
    snapshot = camera_snapshot(args.width, args.height, max(4.0, args.window + 2.0), args.seed)
    backends = {}
    try:
        for kind in kinds:
            backends[kind] = _make(kind, args)
        figures.update(measure_prep(snapshot, args, backends.get("transformers")))
        for kind, backend in backends.items():
            figures[f"e2e_{kind}"] = measure_end_to_end(backend, snapshot, args)
    finally:
        for backend in backends.values():
            backend.close()
    tiny = [kind for kind in kinds if tiny_vlm.is_tiny_model(args.model if kind == "llama_cpp" else args.hf_model)]
    notes = []
    if tiny:
        notes.append(f"{', '.join(tiny)}: tiny random-weight model; encode/generate times show pipeline and "
                     "runtime overheads, not a 7B model's compute")
    if args.random_7b:
        notes.append("llama_cpp: 7B-architecture Q4_K_M model with random weights (real 7B compute; answers "
                     "meaningless)")
    elif not accel["torch_cuda"] and not accel["llama_cpp_gpu_offload"]:
        notes.append("no accelerator on this machine: the 7B-architecture Q4_K_M measurement was not run "
                     "(on a GPU machine with a CUDA build of llama-cpp-python run `stvg-ros bench grounding "
                     "--random-7b DIR`, or `--backends llama_cpp --model stvg-r1-7b-q4_k_m` for the real one)")
    figures["notes"] = notes
    return figures
