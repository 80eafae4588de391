"""`stvg-ros eval run`: videos (or bags) + annotations -> perception -> grounding -> predictions,
metrics and a report, offline, without ROS.

It runs the robot's own parts in the robot's order, in one process: every frame goes through the
perception pipeline (detector + tracker) and into a ClipBuffer; each query of the video is then
grounded over the whole video (the buffer is sized to hold it) with the GroundingPipeline: the
`grounding.offline.OfflinePipeline`, configured from the graph's own parameters
(`nodes.graph.graph_parameters`: the nodes' config files, `--params`, `-p` overrides) by the nodes'
own schemas (`nodes.params`: TrackerParams, GroundingParams), so `eval run` and `eval replay` with the
same arguments run the same configuration.

Outputs in `--out` (`run_store`): run.json (the manifest), predictions.json (annotation frame
indexing, `Query.to_annotation`; the prediction-file format `eval score` reads), records.jsonl (one per query: answer,
raw output, stamps, timings, failure reason, its prediction; the scores once the run completes),
tracks.jsonl (every frame's tracks), report.json / report.md / plots (at the end). Each query's
results are written as it finishes; `--resume` continues a stopped run, skipping the done videos
and queries; a video with queries left is decoded and tracked again (each video starts afresh:
`OfflinePipeline.reset`), so a resumed run gives the numbers of an uninterrupted one.

Frame stamps: a bag's header stamps; for a video file, EPOCH_NS + frame / fps (the synthetic scenes'
and the player node's convention), so bag and video runs of the same scene agree.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stvg_ros.core.bag_io import BagError, bag_info, iter_image_bag
from stvg_ros.core.model_registry import ModelRegistryError
from stvg_ros.core.prompt import QueryError, normalize_query
from stvg_ros.core.types import Tracks, frame_stamp_ns
from stvg_ros.core.video_io import VideoError, iter_video, video_info
from stvg_ros.evaluation.baselines import baseline_prediction
from stvg_ros.evaluation.errors import EvalError
from stvg_ros.evaluation.loaders import AnnotationSet, Query, find_video, load_annotations
from stvg_ros.evaluation.predictions import Prediction, query_record, span_indices
from stvg_ros.evaluation.report import write_report
from stvg_ros.evaluation.run_store import RunStore
from stvg_ros.evaluation.scoring import score
from stvg_ros.evaluation.tracks import TrackLog, TrackWriter
from stvg_ros.grounding.backends import ModelLoadError, make_backend
from stvg_ros.grounding.offline import OfflinePipeline
from stvg_ros.grounding.pipeline import GroundingRequest
from stvg_ros.nodes.graph import graph_parameters
from stvg_ros.nodes.params import GroundingParams, TrackerParams, from_values
from stvg_ros.perception.buffer import BufferConfig
from stvg_ros.perception.detector import DetectorError
from stvg_ros.perception.pipeline import PerceptionConfig
from stvg_ros.perception.sam2_refine import Sam2Unavailable

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
    resume: bool = False  # continue the run in `out` (run_store)
    baseline: str = ""  # random | most_visible: a trivial baseline answers instead of the model (baselines.py)


# --------------------------------------------------------------------------------------------
# settings: the graph's parameters file, without ROS


def node_parameters(params_file: str | None, overrides: dict) -> dict[str, dict]:
    """{node name: {parameter: value}} exactly as the graph applies them: the nodes' own config/
    files, then `params_file`, then the overrides (`nodes.graph.graph_parameters`, no ROS needed)."""
    if params_file and not Path(params_file).is_file():
        raise EvalError(f"parameters file not found: {params_file}")
    try:
        return graph_parameters(params_file, overrides)
    except (ValueError, FileNotFoundError) as exc:
        raise EvalError(str(exc)) from None


def perception_config(values: dict) -> PerceptionConfig:
    """PerceptionConfig from the tracker node's parameters, as the tracker node builds it
    (`TrackerParams.perception_config`: `detector` names the model; ROS-only parameters left out)."""
    try:
        return from_values(TrackerParams, values).perception_config()
    except (TypeError, ValueError) as exc:
        raise EvalError(f"bad tracker_node parameters: {exc}") from None


def grounding_params(values: dict) -> GroundingParams:
    """The grounding node's parameters, checked as the node checks them."""
    try:
        params = from_values(GroundingParams, values)
        params.check()
    except (TypeError, ValueError) as exc:
        raise EvalError(f"bad grounding_node parameters: {exc}") from None
    return params


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
        for index, frame in enumerate(iter_image_bag(path)):
            yield index, frame.stamp_ns, frame.frame_id, frame.rgb
    else:
        for index, _, rgb in iter_video(path):
            yield index, frame_stamp_ns(index, fps), "camera", rgb


def frame_count(kind: str, path: Path) -> int:
    if kind == "bag":
        info = bag_info(path)
        topics = info.image_topics
        if len(topics) != 1:
            raise EvalError(f"bag {path} needs exactly one image topic, has {topics}")
        return info.topics[topics[0]][1]
    return video_info(path).frames


# --------------------------------------------------------------------------------------------
# the run


def build_pipeline(
    perception: PerceptionConfig | None, grounding: GroundingParams, with_model: bool = True
) -> OfflinePipeline:
    """The OfflinePipeline of the tracker's PerceptionConfig (None: no detector) and the grounding
    node's parameters, made as the nodes make their parts (the buffer is the node's; `video_buffer`
    resizes it per video); a missing or unloadable model becomes one clear EvalError. Without
    `with_model` (a baseline run) no model is loaded."""
    backend = (lambda: make_backend(grounding.backend, **asdict(grounding.backend_settings()))) if with_model else None
    try:
        return OfflinePipeline(perception, grounding.buffer_config(), grounding.grounding_config(), backend=backend)
    except (ModelLoadError, ModelRegistryError, DetectorError, Sam2Unavailable) as exc:
        raise EvalError(f"cannot load a model: {exc}") from None


def video_buffer(node_buffer: BufferConfig, query: Query) -> BufferConfig:
    """The node's buffer, made long enough to hold the whole video (each query is grounded over all of it)."""
    seconds = query.num_frames / query.fps + BUFFER_MARGIN_S
    return replace(node_buffer, max_seconds=max(node_buffer.max_seconds, seconds))


class GroundTruthPerception:
    """Perfect tracks from a synthetic set's gt/<name>.json: every object of the scene with its
    exact box and its object ID as track ID, hidden ones included (as a tracker that never loses an
    object reports them: `detected` False). The perception ceiling is then 1, so the scores judge
    the model alone: `--perception gt`."""

    def __init__(self, gt_file: Path) -> None:
        if not gt_file.is_file():
            raise EvalError(f"--perception gt needs the synthetic ground truth {gt_file}")
        self._frames = json.loads(gt_file.read_text())["frames"]
        self._next = 0

    def process(self, stamp_ns: int, rgb: np.ndarray) -> Tracks:
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


def run_fingerprint(config: RunConfig, params: dict[str, dict]) -> dict:
    """The settings that decide a run's answers (run.json; `--resume` must match them): inputs,
    perception, limits and the tracker's and grounding node's parameters. The protocol is left out:
    it only scores, so a resumed run may be scored under another."""
    return {
        "videos": str(Path(config.videos).resolve()),
        "annotations": str(Path(config.annotations).resolve()),
        "annotation_format": config.annotation_format,
        "vidor_dir": config.vidor_dir,
        "source": config.source,
        "perception": config.perception,
        "limit": config.limit,
        "frame_tolerance": config.frame_tolerance,
        "baseline": config.baseline,
        "parameters": {node: params.get(node, {}) for node in ("tracker_node", "grounding_node")},
    }


def run_dataset(config: RunConfig) -> dict:
    """Run the pipeline over every video of the annotations and return the summary. Each query's
    results are written as it finishes (`run_store`); `config.resume` continues an earlier run in
    `config.out`. Raises RunInterrupted on SIGINT/SIGTERM, EvalError on bad input or a failure."""
    annotations = load_annotations(config.annotations, config.annotation_format, config.vidor_dir)
    by_video: dict[str, list[Query]] = {}
    for query in annotations:
        by_video.setdefault(query.video_id, []).append(query)
    videos = sorted(by_video)[: config.limit] if config.limit else sorted(by_video)
    # check every input before the (slow) run starts
    sources = {v: _frame_source(config, by_video[v][0]) for v in videos}
    frames_of_video = {}
    for video_id, (kind, path) in sources.items():
        frames = frame_count(kind, path)
        expected = by_video[video_id][0].num_frames
        if abs(frames - expected) > config.frame_tolerance:
            raise EvalError(
                f"frame-index mismatch: {path} has {frames} frames, the annotations say {expected} "
                f"(--frame-tolerance {config.frame_tolerance})"
            )
        frames_of_video[video_id] = frames
    if config.perception == "gt":
        for video_id in videos:
            if not _gt_file(config, video_id).is_file():
                raise EvalError(f"--perception gt needs the synthetic ground truth {_gt_file(config, video_id)}")
    params = node_parameters(config.params_file, config.overrides)
    tracker = perception_config(params.get("tracker_node", {}))  # checked even when --perception gt leaves it out
    grounding = grounding_params(params.get("grounding_node", {}))

    query_ids = [q.query_id for v in videos for q in by_video[v]]
    store = RunStore.open(config.out, "eval run", run_fingerprint(config, params), query_ids, config.resume)
    # only the frames inside GT spans are kept in memory (the perception ceiling needs no others);
    # every frame's tracks go to tracks.jsonl as they come
    gt_frames = {(q.video_id, f) for v in videos for q in by_video[v] for f in range(q.gt_start, q.gt_end)}
    tracks = store.load_tracks(lambda video_id, frame: (video_id, frame) in gt_frames)
    todo = [v for v in videos if not store.is_video_done(v)]
    started = time.monotonic()
    stats = {"frames": 0, "gt_s": 0.0, "perception_s": 0.0}
    with store.recording((EvalError, OSError, BagError, VideoError)):
        _run_videos(config, store, todo, by_video, sources, frames_of_video, tracker, grounding, tracks,
                    gt_frames, stats)  # fmt: skip

    predictions = store.predictions
    subset = AnnotationSet({q: annotations.queries[q] for q in query_ids}, annotations.format, annotations.path,
                           annotations.warnings)  # fmt: skip
    summary, _ = score(subset, predictions, config.protocol, tracks)
    perception_s = stats["perception_s"] + stats["gt_s"]
    summary["run"] = {
        "videos": len(videos),
        "frames": stats["frames"],  # decoded by this segment (a resumed run skips the done videos)
        "wall_s": round(time.monotonic() - started, 2),
        "perception": config.perception,
        "perception_fps": round(stats["frames"] / perception_s, 2) if perception_s > 0 else None,
        "mean_query_latency_s": round(float(np.mean(store.latencies)), 3) if store.latencies else None,
        "backend": "baseline" if config.baseline else grounding.backend,
        "model": f"baseline:{config.baseline}" if config.baseline else grounding.model,
        "resumed_queries": store.resumed,
    }
    write_report(config.out, summary, subset, predictions)
    store.complete(summary["per_video"])
    return summary


def next_track_id(pipeline: OfflinePipeline) -> int | None:
    """The ID the tracker gives its next new track (None without a tracker). Track IDs go on from
    video to video (`OfflinePipeline.reset`), and the IDs drawn on the frames are part of the
    model's input, so a resumed run must go on with the ID the stopped run had reached."""
    tracker = getattr(pipeline.perception, "tracker", None)
    return None if tracker is None else tracker.next_track_id


def set_next_track_id(pipeline: OfflinePipeline, value: int | None) -> None:
    """Continue the tracker's IDs from `value` (a resumed run; see `next_track_id`)."""
    tracker = getattr(pipeline.perception, "tracker", None)
    if value is not None and tracker is not None:
        tracker.continue_ids_from(value)


def _run_videos(config: RunConfig, store: RunStore, videos: list[str], by_video: dict[str, list[Query]],
                sources: dict, frames_of_video: dict[str, int], tracker: PerceptionConfig,
                grounding: GroundingParams, tracks: TrackLog, gt_frames: set, stats: dict) -> None:  # fmt: skip
    """Perception and grounding of `videos`, committing each finished query and video to `store`."""
    if not videos:
        return  # a resumed run that had finished: nothing to load
    pipeline = build_pipeline(tracker if config.perception == "tracker" else None, grounding, not config.baseline)
    node_buffer = pipeline.buffer_config
    set_next_track_id(pipeline, store.state.get("next_track_id"))
    total = sum(frames_of_video[v] for v in videos)
    progress = tqdm(total=total, desc="eval run", unit="frame", disable=not config.progress, file=sys.stderr)
    try:
        with TrackWriter(store.tracks_path, append=True) as track_file:
            for video_id in videos:
                kind, path = sources[video_id]
                first = by_video[video_id][0]
                progress.set_postfix_str(video_id[-24:], refresh=False)
                gt = GroundTruthPerception(_gt_file(config, video_id)) if config.perception == "gt" else None
                pipeline.reset(video_buffer(node_buffer, first))
                frame_of: dict[int, int] = {}
                stamps: list[int] = []
                tracks_by_frame: dict[int, Tracks] = {}  # kept for a baseline only
                video_start_ns = None
                for index, stamp, frame_id, rgb in iter_frames(kind, path, first.fps):
                    video_start_ns = stamp if video_start_ns is None else video_start_ns
                    if gt is None:
                        frame_tracks = pipeline.feed(stamp, rgb, frame_id)
                    else:
                        tick = time.perf_counter()
                        frame_tracks = gt.process(stamp, rgb)
                        stats["gt_s"] += time.perf_counter() - tick
                        pipeline.feed_tracks(stamp, rgb, frame_tracks, frame_id)
                    frame = first.to_annotation(index)
                    frame_of[stamp] = frame
                    if config.baseline:
                        tracks_by_frame[frame] = frame_tracks
                    stamps.append(stamp)
                    # the ceiling gets the tracks as tracks.jsonl has them (a resumed run reads them back)
                    row = track_file.write(video_id, frame, frame_tracks.track_id, frame_tracks.xyxy, stamp)
                    if (video_id, frame) in gt_frames:
                        tracks.add(video_id, frame, row["ids"], row["boxes"], stamp)
                    stats["frames"] += 1
                    progress.update(1)
                for query in by_video[video_id]:
                    if store.done(query.query_id):
                        continue
                    tick = time.monotonic()
                    outcome, error = None, ""
                    if config.baseline:
                        prediction = baseline_prediction(config.baseline, query, tracks_by_frame)
                        record = _record(query, prediction, None, time.monotonic() - tick)
                        store.add(prediction, {**record, "success": not prediction.empty,
                                               "model": f"baseline:{config.baseline}"})  # fmt: skip
                        continue
                    try:
                        request = GroundingRequest(query=normalize_query(query.caption), window_s=0.0)
                        outcome = pipeline.ground(request)
                        prediction = outcome_to_prediction(query, outcome, stamps, frame_of, video_start_ns)
                    except QueryError as exc:
                        prediction, error = Prediction.failed(query.query_id), f"bad query: {exc}"
                    store.add(prediction, _record(query, prediction, outcome, time.monotonic() - tick, error))
                store.video_done(video_id, {"next_track_id": next_track_id(pipeline)})
    finally:
        progress.close()
        stats["perception_s"] += pipeline.perception_s
        pipeline.close()
