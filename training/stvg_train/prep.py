"""`stvg-train prep`: annotations + videos -> the robot's perception -> prepared samples on disk.

Each video runs once through the same perception pipeline (detector, tracker) and clip buffer the
robot uses; each query of the video then becomes one sample: the frames the grounding node would
send (`grounding.sampling.sample_clip`, IDs drawn by `core.render.render_ids`), their timestamps,
the question, the GT span in seconds from the clip start, and the GT target ID voted as METHOD §6
says (per GT frame the track with the highest box IoU; the most common winner), with
METHOD_DETAILS §3's production floor by default (a frame votes only with IoU >= 0.5).

Queries whose GT boxes match no track keep gt_target_id = -1: they are written, counted and listed
in report.json, and left out of training by `stvg_train.data.training_dataset`. Work is sharded per
video under <out>/shards/, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from stvg_ros.core.types import Tracks, frame_stamp_ns
from stvg_ros.core.video_io import iter_video, video_info
from stvg_ros.evaluation.loaders import EvalError, find_video, load_annotations
from stvg_ros.evaluation.metrics import box_iou
from stvg_ros.grounding.offline import VIDEO_FRAME_ID, OfflinePipeline
from stvg_ros.grounding.sampling import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DEFAULT_NUM_FRAMES, sample_clip
from stvg_ros.nodes.params import perception_config_from
from stvg_ros.perception.buffer import BufferConfig
from stvg_ros.perception.pipeline import PerceptionConfig
from stvg_ros.synthetic.scenes import DatasetIndex, SceneSpec, mostly_visible, write_dataset
from stvg_train.data import SAMPLE_FEATURES, gt_id_drawn, make_sample

log = logging.getLogger("stvg_train.prep")

#: A sample whose winning track holds less than this share of the voting GT frames is counted as
#: low-confidence in the report (METHOD_DETAILS §3 recommends 0.5 as a production floor).
LOW_CONFIDENCE_SHARE = 0.5
#: Version of the prepared-sample format; shards of another version are redone.
PREP_VERSION = "3"


# ------------------------------------------------------------------------------------------------
# GT target ID (METHOD §6)


@dataclass(frozen=True)
class GtVote:
    """The GT target ID of one query and how convincing the vote was."""

    target_id: int  # -1: no GT frame had an overlapping track
    vote_share: float  # votes of the winner / voting frames
    mean_iou: float  # mean IoU of the winner's box with the GT box on the frames it won
    voting_frames: int  # GT frames with at least one overlapping track
    gt_frames: int  # GT frames seen in the video


def vote_gt_id(frame_tracks: Mapping[int, Tracks], gt_boxes: Mapping[int, Sequence[float]], min_iou: float = 0.0) -> GtVote:
    """Majority vote of per-frame best-IoU tracks (METHOD §6; METHOD_DETAILS §3).

    `frame_tracks` and `gt_boxes` are keyed by the same (decoded) frame index. A frame votes for the
    track with the highest IoU if that IoU is at least `min_iou` and above 0 (0: any overlap, as the
    official code; 0.5: METHOD_DETAILS §3's production labeller); frames without such a track cast
    no vote. Ties go to the ID that got its first vote earliest.
    """
    votes: list[int] = []
    won_ious: dict[int, list[float]] = {}
    seen = 0
    for frame in sorted(gt_boxes):
        tracks = frame_tracks.get(frame)
        if tracks is None:
            continue
        seen += 1
        tracked = tracks[tracks.track_id >= 0]
        if not len(tracked):
            continue
        ious = np.array([box_iou(box, gt_boxes[frame]) for box in tracked.xyxy])
        best = int(np.argmax(ious))
        if ious[best] <= 0.0 or ious[best] < min_iou:
            continue
        winner = int(tracked.track_id[best])
        votes.append(winner)
        won_ious.setdefault(winner, []).append(float(ious[best]))
    if not votes:
        return GtVote(-1, 0.0, 0.0, 0, seen)
    winner, count = Counter(votes).most_common(1)[0]  # stable: the earliest-voted ID wins a tie
    return GtVote(winner, count / len(votes), float(np.mean(won_ious[winner])), len(votes), seen)


def track_identity(
    frame_tracks: Mapping[int, Tracks],
    track_id: int,
    object_boxes: Mapping[int, Mapping[int, Sequence[float]]],
    frames: Iterable[int] | None = None,
) -> int | None:
    """Which annotated object a track followed on `frames` (default: its whole life): per frame the
    object whose box overlaps the track's box best (IoU > 0.3), then the most common one. Used to
    check the vote where the annotation knows every object's box (synthetic scenes), on the GT
    frames: the object the ID drawn during the event belongs to. None if it never overlapped one."""
    votes = []
    chosen = frame_tracks.keys() if frames is None else [f for f in frames if f in frame_tracks]
    for frame in chosen:
        box = frame_tracks[frame].box_of(track_id)
        objects = object_boxes.get(frame)
        if box is None or not objects:
            continue
        ids = list(objects)
        ious = [box_iou(box, objects[i]) for i in ids]
        best = int(np.argmax(ious))
        if ious[best] > 0.3:
            votes.append(ids[best])
    return Counter(votes).most_common(1)[0][0] if votes else None


# ------------------------------------------------------------------------------------------------
# Options and jobs


@dataclass
class PrepOptions:
    """What `stvg-train prep` does (CLI flags map 1:1)."""

    out_dir: str
    annotations: str | None = None
    synthetic: str | None = None
    synthetic_videos: int = 0
    synthetic_seed: int = 0
    #: SceneSpec fields for generated synthetic videos (seconds, fps, width, height, ...).
    synthetic_spec: dict[str, Any] = field(default_factory=dict)
    videos: str | None = None
    detector: str | None = None
    #: PerceptionConfig fields (a YAML file or a mapping); defaults are the robot's.
    perception_config: str | dict[str, Any] | None = None
    #: Sampling as the grounding node does it (grounding.sampling / the node's buffer_sample_fps).
    num_frames: int = DEFAULT_NUM_FRAMES
    sample_fps: float = 2.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_pixels: int = DEFAULT_MIN_PIXELS
    #: A GT frame votes only for a track with at least this IoU: 0.5 is METHOD_DETAILS §3's production
    #: labeller (a query without such a frame is reported unmatched); 0 is the official rule (any overlap).
    min_iou: float = 0.5
    workers: int = 1
    limit: int | None = None
    resume: bool = True
    #: Torch threads per worker (tiny models run fastest on one thread per process).
    threads: int = 1
    #: [low, high]: each video's track IDs start at a number drawn from this range (seeded by the video
    #: id), as on a robot or in `stvg-ros eval`, where IDs keep counting from clip to clip; None: from 1.
    first_track_id: tuple[int, int] | None = None
    #: the numbers drawn (`grounding.sampling.ID_NUMBERINGS`): "track" IDs, or "clip" 1..K per clip, in
    #: which case `frame_track_ids` and `gt_target_id` of the samples hold those numbers (what the model sees)
    id_numbering: str = "track"


@dataclass
class VideoJob:
    video_id: str
    video_path: str
    queries: list[Any]  # evaluation.loaders.Query
    scene_gt: str | None = None  # synthetic gt/<name>.json: every object's box per frame


def _load_jobs(opts: PrepOptions) -> tuple[list[VideoJob], str]:
    scene_gt: dict[str, str] = {}
    if opts.synthetic:
        root = Path(opts.synthetic)
        if opts.synthetic_videos > 0 and not (root / "index.json").is_file():
            log.info("writing %d synthetic videos to %s", opts.synthetic_videos, root)
            write_dataset(root, opts.synthetic_seed, opts.synthetic_videos, SceneSpec(**opts.synthetic_spec), bags=False)
        index = DatasetIndex.load(root)
        # the folder, not its annotations.json: every query of queries.json, not only each video's first
        annotations_path, videos_dir = root, Path(opts.videos or root / "videos")
        scene_gt = {Path(v).stem: str(g) for v, g in zip(index.videos, index.gt, strict=True)}
        source = "synthetic"
    else:
        annotations_path = Path(opts.annotations)
        if not opts.videos:
            raise ValueError("--videos is required with --annotations")
        videos_dir = Path(opts.videos)
        source = ""
    annotations = load_annotations(annotations_path)
    if annotations.format in ("hcstvg", "tubedetr") and annotations.frame_ids != "one_based":
        # Training pairs HC-STVG's GT boxes with frames the corrected way (st_frame 1-based,
        # docs/training.md); evaluation reads st_frame as TubeDETR does (a decoded frame).
        annotations = load_annotations(annotations_path, frame_ids="one_based")
    source = source or annotations.format
    by_video: dict[str, list] = {}
    for query in annotations:
        by_video.setdefault(query.video_id, []).append(query)
    jobs = []
    for video_id in sorted(by_video):
        try:
            path = str(find_video(videos_dir, video_id))
        except EvalError:
            path = ""  # reported as a failed video, not dropped silently
        jobs.append(VideoJob(video_id, path, by_video[video_id], scene_gt.get(video_id)))
    if opts.limit is not None:
        jobs = jobs[: opts.limit]
    return jobs, source


# ------------------------------------------------------------------------------------------------
# One video (runs in a worker process)

_WORKER: dict[str, Any] = {}


def _perception_config(opts: PrepOptions) -> PerceptionConfig:
    """The robot's PerceptionConfig, from a YAML file / mapping of its fields plus --detector."""
    settings: dict[str, Any] = {}
    if isinstance(opts.perception_config, dict):
        settings.update(opts.perception_config)
    elif opts.perception_config:
        settings.update(yaml.safe_load(Path(opts.perception_config).read_text(encoding="utf-8")) or {})
    config = perception_config_from(settings)  # flat fields, or the robot's ROS parameters file
    if opts.detector:
        config = replace(config, model=opts.detector)
    if config.detect_every == 0:
        # Offline there is no camera to keep up with: detect on every frame, so labels do not
        # depend on how busy the machine was (the robot's adaptive rate would).
        config = replace(config, detect_every=1)
    return config


def _init_worker(opts: PrepOptions) -> None:
    import torch  # heavy: only in the worker processes

    torch.set_num_threads(max(1, opts.threads))
    _WORKER["opts"] = opts
    _WORKER["perception_config"] = _perception_config(opts)


@dataclass
class PerceivedVideo:
    """One video after the robot's perception: tracks of every frame and the clip buffer's snapshot."""

    frame_tracks: dict[int, Tracks]  # decoded frame index -> tracks
    snapshot: Any  # perception.buffer.ClipSnapshot
    stamp_to_frame: dict[int, int]
    fps: float
    duration_s: float
    start_ns: int  # stamp of frame 0 (`frame_stamp_ns`)


def first_track_id(video_id: str, id_range: tuple[int, int] | None) -> int:
    """The first track ID of a video: 1, or a number from `id_range` seeded by the video id."""
    if not id_range:
        return 1
    low, high = int(id_range[0]), int(id_range[1])
    seed = int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:8], "little")
    return int(np.random.default_rng(seed).integers(low, high + 1))


def perceive_video(video_path: str | Path, perception_config: PerceptionConfig, *,
                   sample_fps: float = BufferConfig.sample_fps, fps: float | None = None,
                   first_id: int = 1) -> PerceivedVideo:
    """Run a video through a fresh perception pipeline (IDs from `first_id`) into a ClipBuffer, as the
    robot does: every frame goes to the tracker and to the buffer (which keeps frames at `sample_fps`)."""
    info = video_info(video_path)
    fps = float(fps or info.fps)
    # the grounding node's buffer, but holding the whole video (1 GiB): each sample is sampled from all of it
    buffer = replace(BufferConfig(), max_seconds=info.frames / fps + 1.0, sample_fps=sample_fps, max_mb=1024.0)
    pipeline = OfflinePipeline(perception_config, buffer)
    tracker = getattr(pipeline.perception, "tracker", None)
    if first_id != 1 and tracker is not None:
        tracker.continue_ids_from(first_id)
    frame_tracks: dict[int, Tracks] = {}
    stamp_to_frame: dict[int, int] = {}
    for index, _, rgb in iter_video(video_path):
        stamp = frame_stamp_ns(index, fps)
        frame_tracks[index] = pipeline.feed(stamp, rgb, VIDEO_FRAME_ID)
        stamp_to_frame[stamp] = index
    return PerceivedVideo(frame_tracks, pipeline.snapshot(), stamp_to_frame, fps, len(frame_tracks) / fps,
                          frame_stamp_ns(0, fps))


@dataclass
class SceneTruth:
    """What a synthetic scene's gt/<name>.json knows about every object: boxes and visible share per frame."""

    boxes: dict[int, dict[int, list[float]]]  # frame -> object id -> xyxy (objects at least partly visible)
    visible: dict[int, dict[int, float]]  # frame -> object id -> visible share of the object [0, 1]

    @classmethod
    def load(cls, scene_gt_path: str | None) -> SceneTruth:
        if not scene_gt_path:
            return cls({}, {})
        data = json.loads(Path(scene_gt_path).read_text())
        frames = data["frames"]
        return cls(
            {f["index"]: {o["id"]: o["xyxy"] for o in f["objects"] if o.get("visible", 1) > 0} for f in frames},
            {f["index"]: {o["id"]: float(o.get("visible", 1)) for o in f["objects"]} for f in frames},
        )

    def target_visible(self, target_id: int, frames: Iterable[int]) -> bool:
        """Whether a camera could see the target during the event: at least half visible on at least
        half of `frames` (a query about an object hidden the whole time has no trackable target)."""
        return mostly_visible([self.visible.get(f, {}).get(target_id, 0.0) for f in frames])


def prepare_video(job: VideoJob) -> list[dict[str, Any]]:
    """Samples of one video's queries (in a worker set up by _init_worker)."""
    opts: PrepOptions = _WORKER["opts"]
    if not job.video_path:
        raise FileNotFoundError(f"no video file for {job.video_id}")
    fps = float(job.queries[0].fps)
    seen = perceive_video(job.video_path, _WORKER["perception_config"], sample_fps=opts.sample_fps, fps=fps,
                          first_id=first_track_id(job.video_id, opts.first_track_id))
    frame_tracks, duration_s = seen.frame_tracks, seen.duration_s
    # draws the IDs with core.render.render_ids, as the grounding node does
    clip = sample_clip(seen.snapshot, 0.0, opts.num_frames, max_pixels=opts.max_pixels, min_pixels=opts.min_pixels,
                       id_numbering=opts.id_numbering)
    clip_offset_s = (clip.clip_start_ns - seen.start_ns) / 1e9  # where the clip starts in the video
    sampled = [seen.stamp_to_frame.get(int(s)) for s in clip.stamps_ns]
    truth = SceneTruth.load(job.scene_gt)
    # "clip" numbering: tracks never drawn (too small, or not on the sampled frames) get numbers past the drawn ones
    numbers = dict(clip.drawn_numbers)
    samples = []
    for query in job.queries:
        gt_boxes = {query.to_decoded(f): box for f, box in query.gt_boxes.items()}
        vote = vote_gt_id(frame_tracks, gt_boxes, opts.min_iou)
        gt_start = query.gt_start_s if query.gt_start_s is not None else query.to_decoded(query.gt_start) / fps
        gt_end = query.gt_end_s if query.gt_end_s is not None else query.to_decoded(query.gt_end) / fps
        match, visible = -1, -1  # -1: not known (real annotations)
        if truth.boxes and query.target_id is not None:
            visible = int(truth.target_visible(query.target_id, gt_boxes))
            if vote.target_id >= 0:
                match = int(track_identity(frame_tracks, vote.target_id, truth.boxes, gt_boxes) == query.target_id)
        track_ids, track_boxes, frame_gt = [], [], []
        for frame in sampled:
            tracks = frame_tracks.get(frame) if frame is not None else None
            tracked = tracks[tracks.track_id >= 0] if tracks is not None else Tracks.empty()
            track_ids.append(tracked.track_id.tolist())
            if opts.id_numbering == "clip":
                track_ids[-1] = [numbers.setdefault(t, len(numbers) + 1) for t in track_ids[-1]]
            track_boxes.append(tracked.xyxy.tolist())  # source-image pixels, like the GT boxes
            box = gt_boxes.get(frame) if frame is not None else None
            frame_gt.append(list(box) if box is not None else [])
        sample = make_sample(
            sample_id=query.query_id,
            source=query.dataset or "annotations",
            video=job.video_id,
            caption=query.caption,
            images=[Image.fromarray(f) for f in clip.frames_rgb_with_ids],
            timestamps_s=clip.timestamps_s,
            clip_duration_s=duration_s,
            gt_start_s=gt_start - clip_offset_s,
            gt_end_s=gt_end - clip_offset_s,
            gt_target_id=numbers.setdefault(vote.target_id, len(numbers) + 1)
            if opts.id_numbering == "clip" and vote.target_id >= 0 else vote.target_id,
            gt_vote_share=vote.vote_share,
            gt_mean_iou=vote.mean_iou,
            gt_voting_frames=vote.voting_frames,
            gt_frames=vote.gt_frames,
            annotated_target_id=query.target_id if query.target_id is not None else -1,
            frame_track_ids=track_ids,
            frame_track_boxes=track_boxes,
            frame_gt_boxes=frame_gt,
        )
        sample["_annotated_match"] = match
        sample["_target_visible"] = visible
        samples.append(sample)
    return samples


# ------------------------------------------------------------------------------------------------
# Shards, resume, report


def _shard_dir(out: Path, video_id: str) -> Path:
    return out / "shards" / video_id


def settings_key(opts: PrepOptions) -> str:
    """Fingerprint of everything that changes a sample: a shard made with other settings is redone."""
    settings = {
        "version": PREP_VERSION,
        "perception": asdict(_perception_config(opts)),
        **{k: getattr(opts, k) for k in ("num_frames", "sample_fps", "max_pixels", "min_pixels", "min_iou")},
        **({"first_track_id": list(opts.first_track_id)} if opts.first_track_id else {}),
        **({"id_numbering": opts.id_numbering} if opts.id_numbering != "track" else {}),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_shard(out: Path, job: VideoJob, samples: list[dict[str, Any]], key: str) -> dict[str, Any]:
    shard = _shard_dir(out, job.video_id)
    tmp = shard.with_name(shard.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rows = [{k: v for k, v in s.items() if not k.startswith("_")} for s in samples]
    datasets.Dataset.from_list(rows, features=SAMPLE_FEATURES).save_to_disk(str(tmp))
    summary = {
        "prep_version": PREP_VERSION,
        "settings_key": key,
        "video": job.video_id,
        "samples": [
            {
                "sample_id": s["sample_id"],
                "gt_target_id": s["gt_target_id"],
                "gt_vote_share": s["gt_vote_share"],
                "gt_mean_iou": s["gt_mean_iou"],
                "gt_voting_frames": s["gt_voting_frames"],
                "gt_frames": s["gt_frames"],
                "annotated_target_id": s["annotated_target_id"],
                "annotated_match": s["_annotated_match"],
                "target_visible": s["_target_visible"],
                # the model cannot answer with an ID drawn on none of the frames (-1: no GT ID)
                "gt_target_drawn": int(gt_id_drawn(s["gt_target_id"], s["frame_track_ids"]))
                if s["gt_target_id"] >= 0
                else -1,
            }
            for s in samples
        ],
    }
    (tmp / "prep_summary.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(shard, ignore_errors=True)
    tmp.rename(shard)
    return summary


def _finished_shard(out: Path, video_id: str, key: str) -> dict[str, Any] | None:
    path = _shard_dir(out, video_id) / "prep_summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("settings_key") == key else None


def _id_check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the voted ID is the annotated object (synthetic scenes), overall and on the queries
    whose target was visible at all (a hidden object cannot be tracked, only reported)."""
    checkable = [r for r in rows if r.get("target_visible", -1) >= 0]
    visible = [r for r in checkable if r["target_visible"] == 1]

    def correct(group: list[dict]) -> int:
        return sum(1 for r in group if r["annotated_match"] == 1)

    return {
        "id_checked": len(checkable),
        "id_correct": correct(checkable),
        "id_correct_share": correct(checkable) / len(checkable) if checkable else None,
        "wrong_id_samples": [r["sample_id"] for r in checkable if r["annotated_match"] == 0],
        "id_visible_checked": len(visible),
        "id_visible_correct": correct(visible),
        "id_visible_correct_share": correct(visible) / len(visible) if visible else None,
        "hidden_target_samples": [r["sample_id"] for r in checkable if r["target_visible"] == 0],
    }


def _report(summaries: list[dict], failed: list[dict], skipped: int, opts: PrepOptions, dataset_dir: Path,
            wall_s: float, source: str) -> dict[str, Any]:
    rows = [s for summary in summaries for s in summary["samples"]]
    matched = [r for r in rows if r["gt_target_id"] >= 0]
    shares = [r["gt_vote_share"] for r in matched]
    ious = [r["gt_mean_iou"] for r in matched]
    return {
        "source": source,
        "dataset": str(dataset_dir),
        "videos": len(summaries) + len(failed),
        "videos_prepared": len(summaries) - skipped,
        "videos_resumed": skipped,
        "videos_failed": failed,
        "samples": len(rows),
        "matched": len(matched),
        "unmatched": len(rows) - len(matched),
        "unmatched_samples": [r["sample_id"] for r in rows if r["gt_target_id"] < 0],
        # matched, but the GT ID is on none of the sampled frames: left out of training too
        "gt_not_drawn_samples": [r["sample_id"] for r in rows if r.get("gt_target_drawn", -1) == 0],
        "matched_share": len(matched) / len(rows) if rows else 0.0,
        "vote_share_mean": float(np.mean(shares)) if shares else 0.0,
        "vote_share_min": float(np.min(shares)) if shares else 0.0,
        "gt_mean_iou_mean": float(np.mean(ious)) if ious else 0.0,
        "low_confidence": sum(1 for s in shares if s < LOW_CONFIDENCE_SHARE),
        "low_confidence_threshold": LOW_CONFIDENCE_SHARE,
        # Where the annotation names the target object and every object's box is known (synthetic):
        # does the voted track follow that object during the event? Unmatched queries count as wrong.
        **_id_check(rows),
        "min_iou": opts.min_iou,
        "id_numbering": opts.id_numbering,
        "workers": opts.workers,
        "wall_s": round(wall_s, 2),
    }


def prepare(opts: PrepOptions) -> dict[str, Any]:
    """Run data prep; writes <out>/dataset (datasets.save_to_disk), <out>/shards, <out>/report.json."""

    start = time.monotonic()
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs, source = _load_jobs(opts)
    key = settings_key(opts)
    summaries: list[dict] = []
    failed: list[dict] = []
    todo: list[VideoJob] = []
    for job in jobs:
        done = _finished_shard(out, job.video_id, key) if opts.resume else None
        if done is not None:
            summaries.append(done)
        else:
            todo.append(job)
    skipped = len(summaries)
    log.info("%d videos (%d already prepared), %d queries", len(jobs), skipped, sum(len(j.queries) for j in jobs))
    progress = tqdm(total=len(todo), desc="prep videos", unit="video", disable=not todo)

    def finish(job: VideoJob, samples: list | None, error: BaseException | None) -> None:
        if error is not None:
            log.warning("video %s failed: %s", job.video_id, error)
            failed.append({"video": job.video_id, "queries": len(job.queries), "error": f"{type(error).__name__}: {error}"})
        else:
            summaries.append(_write_shard(out, job, samples, key))
        progress.update(1)

    if opts.workers <= 1 or len(todo) <= 1:
        _init_worker(opts)
        for job in todo:
            try:
                finish(job, prepare_video(job), None)
            except Exception as exc:
                finish(job, None, exc)
    else:
        with ProcessPoolExecutor(opts.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(opts,)) as pool:
            futures = {pool.submit(prepare_video, job): job for job in todo}
            for future in as_completed(futures):
                exc = future.exception()
                finish(futures[future], None if exc else future.result(), exc)
    progress.close()

    parts = [datasets.load_from_disk(str(_shard_dir(out, s["video"]))) for s in sorted(summaries, key=lambda s: s["video"])]
    dataset_dir = out / "dataset"
    if parts:
        tmp = out / "dataset.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        datasets.concatenate_datasets(parts).save_to_disk(str(tmp))
        shutil.rmtree(dataset_dir, ignore_errors=True)
        tmp.rename(dataset_dir)
    report = _report(summaries, failed, skipped, opts, dataset_dir, time.monotonic() - start, source)
    report["options"] = {k: v for k, v in asdict(opts).items() if k != "synthetic_spec"}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report
