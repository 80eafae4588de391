"""`stvg-ros eval run`: videos (or bags) + annotations -> perception -> grounding -> predictions,
metrics and a report, offline, without ROS.

It runs the robot's own parts in the robot's order, in one process: every frame goes through the
perception pipeline (detector + tracker) and into a ClipBuffer; each query of the video is then
grounded over the whole video (the buffer is sized to hold it) with the GroundingPipeline. Both are
built by the code the nodes use (`PerceptionConfig.from_node_parameters` + `build_perception`;
`grounding.settings.grounding_settings` + `make_backend` + `GroundingPipeline`), from the graph's own
parameters (`nodes.graph.graph_parameters`: the nodes' config files, `--params`,
`-p` overrides), so `eval run` and `eval replay` with the same arguments run the same configuration.

Outputs in `--out`: predictions.json (annotation frame indexing), records.jsonl (one per query:
answer, raw output, stamps, timings, failure reason, scores), tracks.jsonl (every frame's tracks),
report.json / report.md / plots.

Frame stamps: a bag's header stamps; for a video file, EPOCH_NS + frame / fps (the synthetic scenes'
and the player node's convention), so bag and video runs of the same scene agree.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stvg_ros.evaluation.errors import EvalError
from stvg_ros.evaluation.loaders import AnnotationSet, Query, find_video, load_annotations
from stvg_ros.evaluation.predictions import (
    Prediction,
    query_record,
    save_predictions,
    span_indices,
    write_records,
)
from stvg_ros.evaluation.tracks import TrackLog, TrackWriter

log = logging.getLogger("stvg_ros.eval.run")

#: Seconds of history kept beyond the video's length, so a query sees the whole video.
BUFFER_MARGIN_S = 2.0


@dataclass
class RunConfig:
    videos: Path
    annotations: Path
    out: Path
    protocol: str = "tubedetr"
    annotation_format: str = "auto"
    vidor_dir: str | None = None
    source: str = "auto"  # auto | video | bag
    params_file: str | None = None
    overrides: dict = field(default_factory=dict)  # {node: {name: value}}, as `stvg-ros up -p`
    perception: str = "tracker"  # tracker | gt (synthetic sets: ground-truth tracks, to judge the model alone)
    limit: int | None = None  # at most this many videos
    frame_tolerance: int = 0  # allowed |decoded frames - annotated frames|
    progress: bool = True


# --------------------------------------------------------------------------------------------
# settings: the graph's parameters file, without ROS


def node_parameters(params_file: str | None, overrides: dict) -> dict[str, dict]:
    """{node name: {parameter: value}} exactly as the graph applies them: the nodes' own config/
    files, then `params_file`, then the overrides (`nodes.graph.graph_parameters`, no ROS needed)."""
    from stvg_ros.nodes.graph import graph_parameters

    if params_file and not Path(params_file).is_file():
        raise EvalError(f"parameters file not found: {params_file}")
    try:
        return graph_parameters(params_file, overrides)
    except (ValueError, FileNotFoundError) as exc:
        raise EvalError(str(exc)) from None


def perception_config(values: dict):
    """PerceptionConfig from the tracker node's parameters, as the tracker node builds it
    (`PerceptionConfig.from_node_parameters`: `detector` names the model; ROS-only keys ignored)."""
    from stvg_ros.perception.pipeline import PerceptionConfig

    try:
        return PerceptionConfig.from_node_parameters(values)
    except (TypeError, ValueError) as exc:
        raise EvalError(f"bad tracker_node parameters: {exc}") from None


# --------------------------------------------------------------------------------------------
# frame sources


def _frame_source(config: RunConfig, query: Query) -> tuple[str, Path]:
    """('video' | 'bag', path) of a video id."""
    root = Path(config.videos)
    bag_dir = root / query.video_id
    if config.source in ("auto", "bag") and bag_dir.is_dir() and (bag_dir / "metadata.yaml").is_file():
        return "bag", bag_dir
    if config.source == "bag":
        raise EvalError(f"no rosbag2 folder {bag_dir} for video {query.video_id!r}")
    return "video", find_video(root, query.video_id)


def iter_frames(kind: str, path: Path, fps: float) -> Iterator[tuple[int, int, str, np.ndarray]]:
    """(decoded index, stamp_ns, frame_id, rgb) of every frame of a video file or a bag's image topic."""
    if kind == "bag":
        from stvg_ros.core.bag_io import iter_image_bag

        for index, frame in enumerate(iter_image_bag(path)):
            yield index, frame.stamp_ns, frame.frame_id, frame.rgb
    else:
        from stvg_ros.core.types import frame_stamp_ns as stamp_ns
        from stvg_ros.core.video_io import iter_video

        for index, _, rgb in iter_video(path):
            yield index, stamp_ns(index, fps), "camera", rgb


def frame_count(kind: str, path: Path) -> int:
    if kind == "bag":
        from stvg_ros.core.bag_io import bag_info

        info = bag_info(path)
        topics = info.image_topics
        if len(topics) != 1:
            raise EvalError(f"bag {path} needs exactly one image topic, has {topics}")
        return info.topics[topics[0]][1]
    from stvg_ros.core.video_io import video_info

    return video_info(path).frames


# --------------------------------------------------------------------------------------------
# the run


class OfflinePipeline:
    """Perception + buffer + grounding, built from the graph's node parameters the way the tracker
    and grounding nodes build them (`perception_config`, `grounding_settings`, `make_backend`)."""

    def __init__(self, params: dict[str, dict], with_detector: bool = True) -> None:
        from stvg_ros.grounding.backends import make_backend
        from stvg_ros.grounding.pipeline import GroundingPipeline
        from stvg_ros.grounding.settings import grounding_settings
        from stvg_ros.perception.pipeline import build_perception

        self.perception_config = perception_config(params.get("tracker_node", {}))
        grounding = dict(params.get("grounding_node", {}))
        self.buffer_seconds = float(grounding.get("buffer_seconds", 30.0))
        self.buffer_sample_fps = float(grounding.get("buffer_sample_fps", 2.0))
        self.buffer_max_bytes = int(float(grounding.get("buffer_max_mb", 64.0)) * 2**20)
        self.backend_name, backend_kwargs, config = grounding_settings(grounding)
        self.reasoning = config.reasoning
        self.model_name = str(grounding.get("model", ""))
        # the detector first: it is the cheaper of the two to find missing
        self.perception = build_perception(self.perception_config) if with_detector else None
        self.backend = make_backend(self.backend_name, **backend_kwargs)
        self.grounding = GroundingPipeline(self.backend, config)

    def start_video(self):
        """The perception pipeline with fresh tracks for a new video. Track IDs continue (never
        reused), as they do in the tracker node when a replay moves on to the next bag."""
        self.perception.reset()
        return self.perception

    def new_buffer(self, min_seconds: float):
        """A ClipBuffer as the grounding node makes it, holding at least `min_seconds`."""
        from stvg_ros.perception.buffer import ClipBuffer

        return ClipBuffer(max_seconds=max(self.buffer_seconds, min_seconds), sample_fps=self.buffer_sample_fps,
                          max_bytes=self.buffer_max_bytes)  # fmt: skip

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def _build_pipeline(params: dict[str, dict], with_detector: bool = True) -> OfflinePipeline:
    """OfflinePipeline, with a missing or unloadable model turned into one clear EvalError."""
    from stvg_ros.core.model_registry import ModelRegistryError
    from stvg_ros.grounding.backends.base import ModelLoadError
    from stvg_ros.perception.detector import DetectorError

    try:
        return OfflinePipeline(params, with_detector)
    except (ModelLoadError, ModelRegistryError, DetectorError) as exc:
        raise EvalError(f"cannot load a model: {exc}") from None


class GroundTruthPerception:
    """Perfect tracks from a synthetic set's gt/<name>.json: every object of the scene with its
    exact box and its object ID as track ID, hidden ones included (as a tracker that never loses an
    object reports them: `detected` False). The perception ceiling is then 1, so the scores judge
    the model alone: `--perception gt`."""

    def __init__(self, gt_file: Path) -> None:
        import json

        if not gt_file.is_file():
            raise EvalError(f"--perception gt needs the synthetic ground truth {gt_file}")
        self._frames = json.loads(gt_file.read_text())["frames"]
        self._next = 0

    def process(self, stamp_ns: int, rgb: np.ndarray):
        from stvg_ros.core.types import Tracks

        if self._next >= len(self._frames):
            raise EvalError(f"the video has more frames than its ground truth ({len(self._frames)})")
        objects = self._frames[self._next]["objects"]
        self._next += 1
        return Tracks(
            xyxy=np.array([o["xyxy"] for o in objects], np.float32).reshape(-1, 4),
            track_id=np.array([o["id"] for o in objects], np.int64),
            detected=np.array([o["visible"] > 0 for o in objects], bool),
        )


def _gt_file(config: RunConfig, video_id: str) -> Path:
    root = Path(config.annotations)
    root = root if root.is_dir() else root.parent
    return root / "gt" / f"{video_id}.json"


def _tracks_of(result):
    """Tracks from whatever the perception pipeline returns for a frame."""
    from stvg_ros.core.types import Tracks

    if isinstance(result, Tracks):
        return result
    return result.tracks


def outcome_to_prediction(query: Query, outcome, stamps: list[int], frame_of: dict[int, int], video_start_ns: int):
    """GroundingOutcome -> Prediction in annotation frames: the span covers the frames whose stamps
    lie in [start_ns, end_ns] (as the tube does); tube boxes map back by their frame stamps."""
    if not outcome.success or outcome.start_ns is None or outcome.end_ns is None:
        return Prediction.failed(query.query_id)
    indices = span_indices(stamps, int(outcome.start_ns), int(outcome.end_ns))
    if indices is None:
        return Prediction.failed(query.query_id)
    start, end = frame_of[stamps[indices[0]]], frame_of[stamps[indices[1]]]
    boxes = {}
    for entry in outcome.tube or []:
        frame = frame_of.get(int(entry.stamp_ns))
        if frame is not None:
            boxes[frame] = tuple(float(v) for v in entry.xyxy)
    clip_offset_s = ((outcome.clip_start_ns or video_start_ns) - video_start_ns) / 1e9
    start_s = None if outcome.start_s is None else clip_offset_s + float(outcome.start_s)
    end_s = None if outcome.end_s is None else clip_offset_s + float(outcome.end_s)
    return Prediction(query.query_id, start, end + 1, boxes, start_s, end_s, outcome.target_id)


def _record(query: Query, prediction: Prediction, outcome, wall_s: float, error: str = "") -> dict:
    record = {
        **query_record(query, prediction, wall_s),
        "success": bool(outcome is not None and outcome.success),
        "failure": error,
    }
    if outcome is not None:
        record.update(
            failure=error or ("" if outcome.success else str(outcome.message or "")),
            start_stamp_ns=outcome.start_ns,
            end_stamp_ns=outcome.end_ns,
            sampled_stamps_ns=list(outcome.sampled_stamps_ns or []),
            raw_answer=str(outcome.raw or ""),
            reasoning=str(getattr(outcome, "reasoning", "") or ""),
            model=str(getattr(outcome, "model", "") or ""),
            timings_ms=dict(getattr(outcome, "timings", {}) or {}),
        )
    return record


def run_dataset(config: RunConfig) -> dict:
    """Run the pipeline over every video of the annotations; write outputs; return the summary."""
    from tqdm import tqdm

    from stvg_ros.core.prompt import QueryError, normalize_query
    from stvg_ros.evaluation.report import write_report
    from stvg_ros.evaluation.scoring import score
    from stvg_ros.grounding.pipeline import GroundingRequest

    annotations = load_annotations(config.annotations, config.annotation_format, config.vidor_dir)
    by_video: dict[str, list[Query]] = {}
    for query in annotations:
        by_video.setdefault(query.video_id, []).append(query)
    videos = sorted(by_video)[: config.limit] if config.limit else sorted(by_video)
    # check every input before the (slow) run starts
    sources = {v: _frame_source(config, by_video[v][0]) for v in videos}
    total_frames = 0
    for video_id, (kind, path) in sources.items():
        frames = frame_count(kind, path)
        expected = by_video[video_id][0].num_frames
        if abs(frames - expected) > config.frame_tolerance:
            raise EvalError(
                f"frame-index mismatch: {path} has {frames} frames, the annotations say {expected} "
                f"(--frame-tolerance {config.frame_tolerance})"
            )
        total_frames += frames
    if config.perception == "gt":
        for video_id in videos:
            if not _gt_file(config, video_id).is_file():
                raise EvalError(f"--perception gt needs the synthetic ground truth {_gt_file(config, video_id)}")

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    params = node_parameters(config.params_file, config.overrides)
    pipeline = _build_pipeline(params, with_detector=config.perception == "tracker")
    # only the frames inside GT spans are kept in memory (the perception ceiling needs no others);
    # every frame's tracks go to tracks.jsonl as they come
    gt_frames = {(q.video_id, f) for v in videos for q in by_video[v] for f in range(q.gt_start, q.gt_end)}
    tracks = TrackLog()
    predictions: dict[str, Prediction] = {}
    records: list[dict] = []
    started = time.monotonic()
    n_frames = 0
    perception_s = 0.0
    progress = tqdm(total=total_frames, desc="eval run", unit="frame", disable=not config.progress, file=sys.stderr)
    try:
        with TrackWriter(out / "tracks.jsonl") as track_file:
            for video_id in videos:
                kind, path = sources[video_id]
                first = by_video[video_id][0]
                progress.set_postfix_str(video_id[-24:], refresh=False)
                if config.perception == "gt":
                    perception = GroundTruthPerception(_gt_file(config, video_id))
                else:
                    perception = pipeline.start_video()
                buffer = pipeline.new_buffer(first.num_frames / first.fps + BUFFER_MARGIN_S)
                frame_of: dict[int, int] = {}
                stamps: list[int] = []
                video_start_ns = None
                for index, stamp, frame_id, rgb in iter_frames(kind, path, first.fps):
                    video_start_ns = stamp if video_start_ns is None else video_start_ns
                    tick = time.perf_counter()
                    frame_tracks = _tracks_of(perception.process(stamp, rgb))
                    perception_s += time.perf_counter() - tick
                    buffer.add_frame(stamp, rgb, frame_id=frame_id)
                    buffer.add_tracks(stamp, frame_tracks, frame_id=frame_id)
                    frame = first.to_annotation(index)
                    frame_of[stamp] = frame
                    stamps.append(stamp)
                    track_file.write(video_id, frame, frame_tracks.track_id, frame_tracks.xyxy, stamp)
                    if (video_id, frame) in gt_frames:
                        tracks.add(video_id, frame, frame_tracks.track_id, frame_tracks.xyxy, stamp)
                    n_frames += 1
                    progress.update(1)
                for query in by_video[video_id]:
                    tick = time.monotonic()
                    outcome, error = None, ""
                    try:
                        request = GroundingRequest(query=normalize_query(query.caption), window_s=0.0)
                        outcome = pipeline.grounding.ground(buffer.snapshot(0.0), request)
                        prediction = outcome_to_prediction(query, outcome, stamps, frame_of, video_start_ns)
                    except QueryError as exc:
                        prediction, error = Prediction.failed(query.query_id), f"bad query: {exc}"
                    predictions[query.query_id] = prediction
                    records.append(_record(query, prediction, outcome, time.monotonic() - tick, error))
    finally:
        progress.close()
        pipeline.close()

    subset = AnnotationSet({q.query_id: q for v in videos for q in by_video[v]}, annotations.format,
                           annotations.path, annotations.warnings)  # fmt: skip
    summary, _ = score(subset, predictions, config.protocol, tracks)
    per_video = summary["per_video"]
    for record in records:
        entry = per_video[record["query_id"]]
        record.update(tIoU=entry["tIoU"], vIoU=entry["vIoU"], ceiling_vIoU=entry.get("ceiling_vIoU"),
                      error_source=entry.get("error_source"))  # fmt: skip
    wall_s = time.monotonic() - started
    summary["run"] = {
        "videos": len(videos),
        "frames": n_frames,
        "wall_s": round(wall_s, 2),
        "perception": config.perception,
        "perception_fps": round(n_frames / perception_s, 2) if perception_s > 0 else None,
        "mean_query_latency_s": round(float(np.mean([r["latency_s"] for r in records])), 3) if records else None,
        "backend": pipeline.backend_name,
        "model": pipeline.model_name,
    }
    save_predictions(out / "predictions.json", predictions)
    write_records(out / "records.jsonl", records)
    write_report(out, summary, subset, predictions)
    return summary


# --------------------------------------------------------------------------------------------
# CLI glue


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", choices=("auto", "video", "bag"), default="auto",
                        help="read <videos>/<video_id>/ rosbag2 folders or video files (default: what exists)")  # fmt: skip
    parser.add_argument("--params", default=None, metavar="FILE",
                        help="ROS parameters file for the graph's nodes, applied over their config/*.yaml "
                        "(as `stvg-ros up --params`)")  # fmt: skip
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NODE:NAME=VALUE",
                        help="override one parameter, e.g. grounding_node:num_frames=8 (repeatable)")  # fmt: skip
    parser.add_argument("--backend", default=None, help="grounding backend (llama_cpp, transformers, http)")
    parser.add_argument("--model", default=None, help="grounding model: manifest name or path")
    parser.add_argument("--perception", choices=("tracker", "gt"), default="tracker",
                        help="tracker: the detector + tracker (default); gt: a synthetic set's ground-truth "
                        "tracks, to judge the model alone")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="only the first N videos")
    parser.add_argument("--frame-tolerance", type=int, default=0,
                        help="allowed difference between decoded and annotated frame counts")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> dict:
    from stvg_ros.cli.up import parse_overrides

    try:
        overrides = parse_overrides(args.param)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    grounding = overrides.setdefault("grounding_node", {})
    if args.backend:
        grounding["backend"] = args.backend
    if args.model:
        grounding["model"] = args.model
    config = RunConfig(
        videos=Path(args.videos),
        annotations=Path(args.annotations),
        out=Path(args.out),
        protocol=args.protocol,
        annotation_format=args.annotation_format,
        vidor_dir=args.vidor_dir,
        source=args.source,
        perception=args.perception,
        params_file=args.params,
        overrides=overrides,
        limit=args.limit,
        frame_tolerance=args.frame_tolerance,
        progress=not args.no_progress,
    )
    return run_dataset(config)
