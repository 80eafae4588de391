"""`stvg-ros ground VIDEO "QUERY"`: the grounding pipeline on a video file, offline, without ROS.

    stvg-ros ground scene.mp4 "the red circle that stops" --json
    stvg-ros ground scene.mp4 "..." --backend transformers --model path/to/hf-folder
    stvg-ros ground scene.mp4 "..." --backend http --endpoint http://gpu-server:8000/v1

Every frame goes through perception (detector + tracker) into a clip buffer, exactly as on the
robot; then the query is answered over the last --window seconds (default: the whole video).
Frame stamps are the video's own times (frame index / fps), so `start`/`end` are seconds into
the video when the window covers it. Exit codes: 0 answered, 1 no usable answer, 2 bad input
(missing video, model or detector that cannot be loaded).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

log = logging.getLogger("stvg_ros.ground")

DEFAULT_MODEL = "stvg-r1-7b-q4_k_m"


def add_parser(sub) -> argparse.ArgumentParser:
    from stvg_ros.grounding.pipeline import GroundingConfig

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
    parser.add_argument("--detector", default="yolo-synth-tiny", help="detector manifest name or model path")
    parser.add_argument("--detect-every", type=int, default=1, help="run the detector every N frames (default 1)")
    parser.add_argument("--window", type=float, default=0.0, help="answer over the last N seconds (0: whole video)")
    parser.add_argument("--num-frames", type=int, default=defaults.num_frames, help="frames shown to the model")
    parser.add_argument("--sample-fps", type=float, default=2.0, help="rate of the buffered model frames")
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


def _perceive(args: argparse.Namespace):
    """Run every frame through perception into a ClipBuffer; (snapshot, frames, fps, perception ms)."""
    from stvg_ros.core.video_io import iter_video, video_info
    from stvg_ros.perception.buffer import ClipBuffer
    from stvg_ros.perception.pipeline import PerceptionConfig, build_perception

    info = video_info(args.video)
    perception = build_perception(PerceptionConfig(model=args.detector, detect_every=max(1, args.detect_every)))
    buffer = None
    started = time.perf_counter()
    count = 0
    for index, _seconds, rgb in iter_video(args.video, max_frames=args.max_frames):
        if buffer is None:
            seconds = (info.frames or 10_000) / info.fps + 1.0
            buffer = ClipBuffer(max_seconds=seconds, sample_fps=args.sample_fps, max_bytes=1 << 30)
        stamp_ns = round(index * 1e9 / info.fps)
        tracks = perception.process(stamp_ns, rgb)
        buffer.add_frame(stamp_ns, rgb, frame_id="video")
        buffer.add_tracks(stamp_ns, tracks, frame_id="video", width=rgb.shape[1], height=rgb.shape[0])
        count += 1
    return buffer.snapshot(), count, info.fps, (time.perf_counter() - started) * 1000.0


def run(args: argparse.Namespace) -> int:
    from stvg_ros.core.prompt import QueryError, normalize_query
    from stvg_ros.core.video_io import VideoError, video_info
    from stvg_ros.grounding.backends import ModelLoadError, make_backend
    from stvg_ros.grounding.pipeline import GroundingConfig, GroundingPipeline, GroundingRequest

    try:  # cheap checks first: a bad query or video should not wait for a model to load
        normalize_query(args.query)
    except QueryError as exc:
        return _error(f"bad query: {exc}", args.json)
    try:
        video_info(args.video)
    except VideoError as exc:
        return _error(str(exc), args.json)
    if args.model is None:
        args.model = DEFAULT_MODEL if args.backend == "llama_cpp" else ""
    try:
        backend = make_backend(args.backend, model=args.model, mmproj=args.mmproj, endpoint=args.endpoint,
                               n_ctx=args.n_ctx, n_threads=args.n_threads, n_gpu_layers=args.n_gpu_layers,
                               flash_attn=not args.no_flash_attn, timeout_s=args.timeout)
    except (ModelLoadError, ValueError) as exc:
        return _error(f"cannot load the model: {exc}", args.json)
    try:
        try:
            snapshot, frames, fps, perception_ms = _perceive(args)
        except Exception as exc:  # detector missing, unreadable frames: one clear line, exit 2
            return _error(f"cannot process {args.video}: {type(exc).__name__}: {exc}", args.json)
        config = GroundingConfig(num_frames=args.num_frames, max_new_tokens=args.max_new_tokens,
                                 reasoning=not args.no_reasoning, strict=args.strict, timeout_s=args.timeout)
        outcome = GroundingPipeline(backend, config).ground(snapshot, GroundingRequest(args.query, args.window))
    finally:
        backend.close()
    result = outcome.to_json()
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


def _model_note(model: str) -> str:
    from stvg_ros.grounding.models import manifest_note
    from stvg_ros.synthetic.tiny_vlm import TINY_DISCLAIMER, is_tiny_model

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
