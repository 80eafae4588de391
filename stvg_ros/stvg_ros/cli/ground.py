"""`stvg-ros ground VIDEO "QUERY"`: the grounding pipeline on a video file, offline, without ROS.

    stvg-ros ground scene.mp4 "the red circle that stops" --json
    stvg-ros ground scene.mp4 "..." --backend transformers --model path/to/hf-folder
    stvg-ros ground scene.mp4 "..." --backend http --endpoint http://gpu-server:8000/v1

Every frame goes through perception (detector + tracker) into a clip buffer, exactly as on the
robot (`grounding.offline.OfflinePipeline`); then the query is answered over the last --window
seconds (default: the whole video). Frames are stamped as every headerless video is
(`core.types.frame_stamp_ns`); the printed stamps are seconds into the video (frame index / fps),
and so are `start`/`end` when the window covers it. Exit codes: 0 answered, 1 no usable answer, 2 bad input
(missing video, model or detector that cannot be loaded).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace

from stvg_ros.core.prompt import QueryError, normalize_query
from stvg_ros.core.types import frame_stamp_ns
from stvg_ros.core.video_io import VideoError, iter_video, video_info
from stvg_ros.grounding.backends import ModelLoadError, make_backend
from stvg_ros.grounding.backends.models import manifest_note
from stvg_ros.grounding.offline import VIDEO_FRAME_ID, OfflinePipeline
from stvg_ros.grounding.pipeline import GroundingConfig, GroundingOutcome, GroundingRequest
from stvg_ros.nodes.params import GroundingParams
from stvg_ros.perception.buffer import BufferConfig
from stvg_ros.perception.pipeline import PerceptionConfig
from stvg_ros.synthetic.tiny_vlm import TINY_DISCLAIMER, is_tiny_model

log = logging.getLogger("stvg_ros.ground")

DEFAULT_MODEL = GroundingParams.model  # the grounding node's default, defined once


def add_parser(sub) -> argparse.ArgumentParser:
    defaults = GroundingConfig()
    parser = sub.add_parser(
        "ground",
        help="ground a query in a video file offline, without ROS",
        description="Detect and track objects in VIDEO, then ask the VLM which object matches QUERY, and when.",
    )
    parser.add_argument("video", help="video file (mp4, avi, ...)")
    parser.add_argument("query", help="what to find, e.g. 'the person in red who sat down'")
    parser.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    parser.add_argument("--backend", choices=("llama_cpp", "transformers", "http"), default="llama_cpp")
    parser.add_argument("--model", default=None,
                        help=f"manifest name or path: GGUF (llama_cpp, default {DEFAULT_MODEL}), HF folder "
                             "(transformers), served model name (http, default: the one the server serves)")
    parser.add_argument("--mmproj", default="", help="vision projector GGUF (llama_cpp; default: the manifest's)")
    parser.add_argument("--endpoint", default="", help="OpenAI-compatible base URL (http backend)")
    parser.add_argument("--detector", default=PerceptionConfig.model, help="detector manifest name or model path")
    parser.add_argument("--detect-every", type=int, default=1, help="run the detector every N frames (default 1)")
    parser.add_argument("--window", type=float, default=0.0, help="answer over the last N seconds (0: whole video)")
    parser.add_argument("--num-frames", type=int, default=defaults.num_frames, help="frames shown to the model")
    parser.add_argument("--sample-fps", type=float, default=BufferConfig.sample_fps,
                        help="rate of the buffered model frames")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--no-reasoning", action="store_true", help="answer only, no <think> block (faster)")
    parser.add_argument("--strict", action="store_true", help="use the official parser only")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="query timeout in seconds")
    parser.add_argument("--n-ctx", type=int, default=8192, help="llama.cpp context length")
    parser.add_argument("--n-threads", type=int, default=0, help="llama.cpp threads (0: all cores but one)")
    parser.add_argument("--n-gpu-layers", type=int, default=-1, help="llama.cpp layers on the GPU (-1: all)")
    parser.add_argument("--no-flash-attn", action="store_true", help="llama.cpp without flash attention")
    parser.add_argument("--max-frames", type=int, default=None, help="read at most this many video frames")
    return parser


def _perceive(args: argparse.Namespace, pipeline: OfflinePipeline) -> tuple[int, int, float, float]:
    """Run every frame through the pipeline's perception into its buffer; (first stamp, frames, fps, ms)."""
    info = video_info(args.video)
    started = time.perf_counter()
    count = 0
    for index, _seconds, rgb in iter_video(args.video, max_frames=args.max_frames):
        pipeline.feed(frame_stamp_ns(index, info.fps), rgb, VIDEO_FRAME_ID)
        count += 1
    return frame_stamp_ns(0, info.fps), count, info.fps, (time.perf_counter() - started) * 1000.0


def _video_buffer(args: argparse.Namespace) -> BufferConfig:
    """The grounding node's buffer, made to hold the whole video (1 GiB) so that --window 0 sees all of it."""
    info = video_info(args.video)
    return replace(BufferConfig(), max_seconds=(info.frames or 10_000) / info.fps + 1.0, sample_fps=args.sample_fps,
                   max_mb=1024.0)  # fmt: skip


def _in_video_time(outcome: GroundingOutcome, start_ns: int) -> GroundingOutcome:
    """The outcome with its stamps counted from the video's first frame (seconds into the video)."""

    def shift(stamp: int | None) -> int | None:
        return None if stamp is None else stamp - start_ns

    return replace(outcome, start_ns=shift(outcome.start_ns), end_ns=shift(outcome.end_ns),
                   clip_start_ns=shift(outcome.clip_start_ns),
                   sampled_stamps_ns=[s - start_ns for s in outcome.sampled_stamps_ns],
                   tube=[replace(entry, stamp_ns=entry.stamp_ns - start_ns) for entry in outcome.tube])  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:  # cheap checks first: a bad query or video should not wait for a model to load
        normalize_query(args.query)
    except QueryError as exc:
        return _error(f"bad query: {exc}", args.json)
    try:
        video_info(args.video)
    except VideoError as exc:
        return _error(str(exc), args.json)
    if problems := _argument_problems(args):
        return _error("; ".join(problems), args.json)
    if args.model is None:
        args.model = DEFAULT_MODEL if args.backend == "llama_cpp" else ""
    try:
        backend = make_backend(args.backend, model=args.model, mmproj=args.mmproj, endpoint=args.endpoint,
                               n_ctx=args.n_ctx, n_threads=args.n_threads, n_gpu_layers=args.n_gpu_layers,
                               flash_attn=not args.no_flash_attn, timeout_s=args.timeout)
    except (ModelLoadError, ValueError) as exc:
        return _error(f"cannot load the model: {exc}", args.json)
    config = _grounding_config(args)
    perception = PerceptionConfig(model=args.detector, detect_every=max(1, args.detect_every))
    try:
        try:
            pipeline = OfflinePipeline(perception, _video_buffer(args), config, backend)
            start_ns, frames, fps, perception_ms = _perceive(args, pipeline)
        except Exception as exc:  # detector missing, unreadable frames: one clear line, exit 2
            return _error(f"cannot process {args.video}: {type(exc).__name__}: {exc}", args.json)
        outcome = pipeline.ground(GroundingRequest(args.query, args.window))
    finally:
        backend.close()
    result = _in_video_time(outcome, start_ns).to_json()
    result.update(video=str(args.video), frames=frames, fps=fps, backend=args.backend, detector=args.detector)
    result["timings"]["perception_ms"] = round(perception_ms, 1)
    note = _model_note(args.model or outcome.model)
    if note:
        result["note"] = note
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_summary(result))
    return 0 if outcome.success else 1


def _grounding_config(args: argparse.Namespace) -> GroundingConfig:
    return GroundingConfig(num_frames=args.num_frames, max_new_tokens=args.max_new_tokens,
                           reasoning=not args.no_reasoning, strict=args.strict, timeout_s=args.timeout)  # fmt: skip


#: The smallest llama.cpp context that holds the prompt and one small frame.
MIN_N_CTX = 512


def _argument_problems(args: argparse.Namespace) -> list[str]:
    """Bad option values, found before any model loads (exit 2)."""
    options = {"num_frames": "--num-frames", "max_new_tokens": "--max-new-tokens", "timeout_s": "--timeout"}
    problems = []
    for problem in _grounding_config(args).problems():
        for name, option in options.items():
            problem = problem.replace(name, option)
        problems.append(problem)
    if not args.window >= 0:
        problems.append(f"--window must be >= 0 seconds (0: the whole video), got {args.window}")
    if not args.sample_fps > 0:
        problems.append(f"--sample-fps must be > 0, got {args.sample_fps}")
    if args.n_ctx < MIN_N_CTX:
        problems.append(f"--n-ctx must be >= {MIN_N_CTX}, got {args.n_ctx}")
    if args.max_frames is not None and args.max_frames < 1:
        problems.append(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.detect_every < 1:
        problems.append(f"--detect-every must be >= 1, got {args.detect_every}")
    return problems


def _model_note(model: str) -> str:
    note = manifest_note(model)
    if not note and is_tiny_model(model):
        note = TINY_DISCLAIMER
    return note


def _summary(result: dict) -> str:
    lines = []
    if result.get("note"):
        lines.append(f"NOTE: {result['note']}")
    if result["success"]:
        lines.append(f"target {result['target_id']}  from {result['start']:.2f} s to {result['end']:.2f} s  "
                     f"({len(result['tube'])} boxes in the tube)")
    else:
        lines.append(f"no answer: {result['message']}")
    lines.append(f"model {result['model']} ({result['backend']}); timings " +
                 ", ".join(f"{k} {v:.0f}" for k, v in sorted(result["timings"].items())))
    if result.get("raw"):
        lines.append(f"raw: {result['raw']}")
    return "\n".join(lines)


def _error(message: str, as_json: bool) -> int:
    message = " ".join(message.split())
    if as_json:
        json.dump({"success": False, "message": message, "target_id": None, "start": None, "end": None, "tube": [],
                   "raw": ""}, sys.stdout)
        sys.stdout.write("\n")
    print(f"stvg-ros ground: error: {message}", file=sys.stderr)
    return 2
