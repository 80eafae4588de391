"""Annotation loaders: HC-STVG v1/v2, TubeDETR's processed lists, VidSTG and our synthetic sets,
all into one `Query` representation.

Frame ids (the numbers prediction files, GT spans and GT boxes use) follow one of two named
conventions (`FRAME_ID_CONVENTIONS`, METHOD.md §9):

- ``decoded`` (default for HC-STVG, TubeDETR's lists and VidSTG): frame id = 0-based decoded frame
  number, and HC-STVG's `st_frame` is used as written, exactly as TubeDETR's evaluator does. A
  prediction file keyed by TubeDETR's frame ids scores as TubeDETR scores it.
- ``one_based``: decoded frame `d` has id `d + 1` (HC-STVG's `st_frame` read as 1-based, the shift
  CG-STVG applies). Opt-in for HC-STVG files; the format of `stvg-ros synth` sets, whose writer
  stores `st_frame` counting from 1.

`Query.frame_base` is the id of decoded frame 0 (0 or 1). GT spans are end-exclusive:
`[gt_start, gt_end)`, with `gt_end = st_frame + len(bbox)` (TubeDETR's `tube_end_frame`) for HC-STVG
and `temporal_gt.end_fid` for VidSTG. GT boxes are `xyxy` pixels keyed by frame id
(`[x, y, w, h]` -> `[x, y, x + w, y + h]`). Nothing is re-indexed silently: the convention is chosen
by name and travels with every query and score summary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from stvg_ros.evaluation.errors import EvalError

Box = tuple[float, float, float, float]

#: HC-STVG clips are 20 s long; TubeDETR derives their frame rate as img_num / 20.
HCSTVG_CLIP_SECONDS = 20.0
#: Frame-id conventions: name -> id of the first decoded frame (see the module docstring).
FRAME_ID_CONVENTIONS = {"decoded": 0, "one_based": 1}
DEFAULT_FRAME_IDS = "decoded"
#: Frame id of the first decoded frame in each supported format, by default.
HCSTVG_FRAME_BASE = FRAME_ID_CONVENTIONS[DEFAULT_FRAME_IDS]
VIDSTG_FRAME_BASE = 0
SYNTH_FRAME_BASE = FRAME_ID_CONVENTIONS["one_based"]  # `stvg-ros synth` writes st_frame counting from 1
FORMATS = ("auto", "hcstvg", "tubedetr", "vidstg", "synth")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")


@dataclass(frozen=True)
class Query:
    """One grounding query with its ground truth, in frame ids of its convention (`frame_ids`).

    `eval_start`/`eval_end` bound the frames TubeDETR's evaluator samples (the loop runs over
    `range(eval_start, eval_end)`), and `sampling_fps` is the frame rate that sampler assumes.
    """

    query_id: str  # key of this query in prediction files
    video_id: str  # video file name without extension
    caption: str
    gt_start: int  # first GT frame (frame id)
    gt_end: int  # one past the last GT frame
    gt_boxes: Mapping[int, Box]
    num_frames: int  # frames in the video (img_num / frame_count)
    fps: float  # real frame rate when the annotation gives it, else num_frames / 20 (HC-STVG)
    width: int = 0
    height: int = 0
    frame_base: int = HCSTVG_FRAME_BASE
    eval_start: int = 0
    eval_end: int = 0
    sampling_fps: float = 0.0
    gt_start_s: float | None = None  # GT span in seconds from the video start (st_time / ed_time)
    gt_end_s: float | None = None
    target_id: int | None = None  # the target's object ID when the annotation names one
    qtype: str | None = None  # VidSTG: declarative | interrogative
    dataset: str = ""

    @property
    def frame_ids(self) -> str:
        """Name of the frame-id convention (`FRAME_ID_CONVENTIONS`)."""
        return frame_ids_name(self.frame_base)

    @property
    def first_frame(self) -> int:
        """Frame id of the video's first frame."""
        return self.frame_base

    @property
    def end_frame(self) -> int:
        """One past the frame id of the video's last frame."""
        return self.frame_base + self.num_frames

    def to_decoded(self, frame: int) -> int:
        """Frame id -> 0-based decoded frame number."""
        return frame - self.frame_base

    def to_annotation(self, decoded: int) -> int:
        """0-based decoded frame number -> frame id (what prediction files hold)."""
        return decoded + self.frame_base


def frame_ids_name(frame_base: int) -> str:
    """The convention whose first decoded frame has id `frame_base`."""
    for name, base in FRAME_ID_CONVENTIONS.items():
        if base == frame_base:
            return name
    return f"first frame {frame_base}"


def check_frame_ids(frame_ids: str) -> int:
    """The frame base of a convention name; EvalError for an unknown one."""
    if frame_ids not in FRAME_ID_CONVENTIONS:
        raise EvalError(f"unknown frame-id convention {frame_ids!r}; use one of {', '.join(FRAME_ID_CONVENTIONS)}")
    return FRAME_ID_CONVENTIONS[frame_ids]


@dataclass
class AnnotationSet:
    """The queries of one annotation file (insertion order = file order)."""

    queries: dict[str, Query]
    format: str
    path: Path
    warnings: list[str] = field(default_factory=list)
    benchmark: str = ""  # hcstvg_v1 | hcstvg_v2 | vidstg | synth | "" (not known)

    @property
    def frame_ids(self) -> str:
        """The frame-id convention of the queries (one per set)."""
        names = sorted({q.frame_ids for q in self.queries.values()})
        return names[0] if len(names) == 1 else "mixed: " + ", ".join(names)

    def __len__(self) -> int:
        return len(self.queries)

    def __iter__(self):
        return iter(self.queries.values())

    def video_ids(self) -> list[str]:
        return sorted({q.video_id for q in self.queries.values()})


# --------------------------------------------------------------------------------------------
# helpers


def _read_json(path: Path, what: str):
    if not path.exists():
        raise EvalError(f"{what} not found: {path}")
    if path.is_dir():
        raise EvalError(f"{what} {path} is a directory, expected a JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"cannot read {what} {path}: {exc}") from None
    if not text.strip():
        raise EvalError(f"{what} {path} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalError(f"{what} {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def _field(entry: Mapping, key: str, kind, where: str):
    """entry[key], checked against `kind` (int accepts integral floats; bool is never a number)."""
    if not isinstance(entry, Mapping):
        raise EvalError(f"{where}: expected an object, got {type(entry).__name__}")
    if key not in entry:
        raise EvalError(f"{where}: missing field {key!r}")
    value = entry[key]
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise EvalError(f"{where}: field {key!r} has the wrong type ({type(value).__name__}: {str(value)[:40]})")
    return value


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EvalError(f"{where}: {value!r} is not a finite number")
    return float(value)


def xywh_to_xyxy(box, where: str) -> Box:
    """[x, y, w, h] -> (x1, y1, x2, y2), as every STVG evaluator converts GT boxes."""
    if not isinstance(box, (list, tuple)) or len(box) < 4:
        raise EvalError(f"{where}: a box must be [x, y, w, h], got {str(box)[:60]}")
    x, y, w, h = (_number(v, where) for v in box[:4])
    return (x, y, x + w, y + h)


def video_stem(name: str) -> str:
    """'1234_abc.mp4' -> '1234_abc' (video ids are file names without extension)."""
    path = Path(name)
    return path.stem if path.suffix.lower() in VIDEO_EXTENSIONS else path.name


def find_video(videos_dir: str | Path, video_id: str) -> Path:
    """The video file of `video_id` in `videos_dir` (any common extension, searched recursively)."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise EvalError(f"videos directory not found: {videos_dir}")
    for ext in VIDEO_EXTENSIONS:
        candidate = videos_dir / f"{video_id}{ext}"
        if candidate.is_file():
            return candidate
    for ext in VIDEO_EXTENSIONS:
        matches = sorted(videos_dir.rglob(f"{video_id}{ext}"))
        if matches:
            return matches[0]
    raise EvalError(f"no video file for {video_id!r} in {videos_dir} (looked for {', '.join(VIDEO_EXTENSIONS)})")


def _check_tube(query: Query, where: str, warnings: list[str]) -> None:
    if query.num_frames <= 0:
        raise EvalError(f"{where}: the video has {query.num_frames} frames")
    if query.gt_end <= query.gt_start:
        raise EvalError(f"{where}: empty GT span [{query.gt_start}, {query.gt_end})")
    if query.gt_start < query.first_frame:
        raise EvalError(
            f"{where}: GT starts at frame {query.gt_start}, before the video's first frame {query.first_frame} "
            f"(frame ids: {query.frame_ids})"
        )
    if query.gt_end > query.end_frame:
        warnings.append(
            f"{where}: GT tube ends at frame {query.gt_end - 1}, after the video's last frame {query.end_frame - 1}"
        )


# --------------------------------------------------------------------------------------------
# HC-STVG (v1 and v2 original per-video JSON; the synthetic sets use the same schema)


def _hcstvg_query(name: str, entry: Mapping, dataset: str, frame_base: int, warnings: list[str]) -> Query:
    where = f"annotation {name!r}"
    bbox = _field(entry, "bbox", list, where)
    if not bbox:
        raise EvalError(f"{where}: 'bbox' is empty (no GT box)")
    st_frame = _field(entry, "st_frame", int, where)
    num_frames = _field(entry, "img_num", int, where)
    caption = entry.get("English", entry.get("caption"))
    if not isinstance(caption, str):
        raise EvalError(f"{where}: no caption (field 'English' in v2, 'caption' in v1)")
    if "img_size" in entry:  # v2: [height, width]
        size = entry["img_size"]
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise EvalError(f"{where}: 'img_size' must be [height, width]")
        height, width = int(size[0]), int(size[1])
    else:
        width, height = int(entry.get("width", 0) or 0), int(entry.get("height", 0) or 0)
    fps = entry.get("fps")
    if fps is None:
        fps = num_frames / HCSTVG_CLIP_SECONDS
    fps = _number(fps, f"{where} fps")
    if fps <= 0:
        raise EvalError(f"{where}: fps must be positive, got {fps}")
    boxes = {st_frame + i: xywh_to_xyxy(b, f"{where} bbox[{i}]") for i, b in enumerate(bbox)}
    target_id = entry.get("target_id")
    query = Query(
        query_id=video_stem(name),
        video_id=video_stem(name),
        caption=caption,
        gt_start=st_frame,
        gt_end=st_frame + len(bbox),
        gt_boxes=boxes,
        num_frames=num_frames,
        fps=fps,
        width=width,
        height=height,
        frame_base=frame_base,
        # TubeDETR samples decoded frames 0 .. img_num - 2, here in this convention's ids
        eval_start=frame_base,
        eval_end=frame_base + num_frames - 1,
        # TubeDETR samples HC-STVG at img_num / 20 whatever the real rate; synthetic sets give theirs
        sampling_fps=fps if dataset == "synth" else num_frames / HCSTVG_CLIP_SECONDS,
        gt_start_s=_number(entry["st_time"], f"{where} st_time") if "st_time" in entry else None,
        gt_end_s=_number(entry["ed_time"], f"{where} ed_time") if "ed_time" in entry else None,
        target_id=int(target_id) if isinstance(target_id, (int, float)) and not isinstance(target_id, bool) else None,
        dataset=dataset,
    )
    _check_tube(query, where, warnings)
    return query


def load_hcstvg(
    data: Mapping, path: Path, dataset: str = "hcstvg", frame_base: int = HCSTVG_FRAME_BASE
) -> AnnotationSet:
    """HC-STVG v1/v2: `{"<name>.mp4": {"st_frame", "bbox": [[x, y, w, h], ...], "img_num", ...}}`.

    `frame_base`: the frame id of decoded frame 0 (0: TubeDETR's reading, the default)."""
    warnings: list[str] = []
    queries: dict[str, Query] = {}
    for name, entry in data.items():
        query = _hcstvg_query(str(name), entry, dataset, frame_base, warnings)
        if query.query_id in queries:
            raise EvalError(f"annotation file {path}: video {query.query_id!r} appears twice")
        queries[query.query_id] = query
    return AnnotationSet(queries, dataset, path, warnings, benchmark=_hcstvg_version(data, dataset))


def _hcstvg_version(data: Mapping, dataset: str) -> str:
    """hcstvg_v2 (`img_size` + `English`), hcstvg_v1 (`width`/`height` + `caption`), synth, or ""."""
    if dataset != "hcstvg":
        return dataset
    entries = [e for e in data.values() if isinstance(e, Mapping)]
    if entries and all("img_size" in e and "English" in e for e in entries):
        return "hcstvg_v2"
    if entries and all("width" in e and "caption" in e for e in entries):
        return "hcstvg_v1"
    return ""


# --------------------------------------------------------------------------------------------
# TubeDETR processed HC-STVG list


def load_tubedetr_hcstvg(data: list, path: Path, frame_base: int = HCSTVG_FRAME_BASE) -> AnnotationSet:
    """TubeDETR's `*_proc.json`: a list of {original_video_id, frame_count, tube_start_frame,
    tube_end_frame (exclusive), trajectory ([x, y, w, h] per GT frame), caption, ...}."""
    warnings: list[str] = []
    queries: dict[str, Query] = {}
    for index, entry in enumerate(data):
        where = f"{path.name}[{index}]"
        vid = str(_field(entry, "original_video_id", (str, int), where))
        start = _field(entry, "tube_start_frame", int, where)
        end = _field(entry, "tube_end_frame", int, where)
        trajectory = _field(entry, "trajectory", list, where)
        if len(trajectory) < end - start:
            raise EvalError(f"{where}: trajectory has {len(trajectory)} boxes for the span [{start}, {end})")
        num_frames = _field(entry, "frame_count", int, where)
        fps = _number(entry.get("fps", num_frames / HCSTVG_CLIP_SECONDS), f"{where} fps")
        query = Query(
            query_id=video_stem(vid),
            video_id=video_stem(vid),
            caption=str(entry.get("caption", "")),
            gt_start=start,
            gt_end=end,
            gt_boxes={
                start + i: xywh_to_xyxy(b, f"{where} trajectory[{i}]") for i, b in enumerate(trajectory[: end - start])
            },
            num_frames=num_frames,
            fps=fps,
            width=int(entry.get("width", 0) or 0),
            height=int(entry.get("height", 0) or 0),
            frame_base=frame_base,
            eval_start=frame_base,
            eval_end=frame_base + num_frames - 1,
            sampling_fps=num_frames / HCSTVG_CLIP_SECONDS,  # as TubeDETR's hcstvg_eval.py
            gt_start_s=entry.get("tube_start_time"),
            gt_end_s=entry.get("tube_end_time"),
            dataset="hcstvg",
        )
        _check_tube(query, where, warnings)
        if query.query_id in queries:
            raise EvalError(f"{where}: video {query.query_id!r} appears twice")
        queries[query.query_id] = query
    # TubeDETR names its lists {train,test}_proc.json (v1) and {train,val}v2_proc.json (v2)
    name = path.name.lower()
    benchmark = "hcstvg_v2" if "v2" in name else "hcstvg_v1" if name in ("train_proc.json", "test_proc.json") else ""
    return AnnotationSet(queries, "tubedetr", path, warnings, benchmark=benchmark)


# --------------------------------------------------------------------------------------------
# VidSTG (TubeDETR's processed file, or the original sentence annotations + VidOR boxes)


def _vidstg_query(index: int, video: Mapping, boxes_by_frame: Mapping, where: str, warnings: list[str]) -> Query:
    start = _field(video, "tube_start_frame", int, where)
    end = _field(video, "tube_end_frame", int, where)
    fps = _number(_field(video, "fps", (int, float), where), f"{where} fps")
    num_frames = _field(video, "frame_count", int, where)
    gt_boxes: dict[int, Box] = {}
    for frame in range(start, end):
        record = boxes_by_frame.get(str(frame), boxes_by_frame.get(frame))
        if record is not None:
            box = record["bbox"] if isinstance(record, Mapping) else record
            gt_boxes[frame] = xywh_to_xyxy(box, f"{where} frame {frame}")
    if not gt_boxes:
        raise EvalError(f"{where}: the target has no box inside its GT span [{start}, {end})")
    query = Query(
        query_id=str(index),
        video_id=str(video["original_video_id"]),
        caption=str(video.get("caption", "")),
        gt_start=start,
        gt_end=end,
        gt_boxes=gt_boxes,
        num_frames=num_frames,
        fps=fps,
        width=int(video.get("width", 0) or 0),
        height=int(video.get("height", 0) or 0),
        frame_base=VIDSTG_FRAME_BASE,
        eval_start=int(video.get("start_frame", 0)),
        eval_end=int(video.get("end_frame", num_frames)),
        sampling_fps=fps,
        gt_start_s=start / fps,
        gt_end_s=(end - 1) / fps,
        target_id=int(video["target_id"]) if "target_id" in video else None,
        qtype=video.get("qtype"),
        dataset="vidstg",
    )
    _check_tube(query, where, warnings)
    return query


def load_tubedetr_vidstg(data: Mapping, path: Path) -> AnnotationSet:
    """TubeDETR's VidSTG file: {"videos": [...], "trajectories": {vid: {tid: {frame: {"bbox"}}}}}.
    Query ids are the list index (TubeDETR's `video_id`)."""
    warnings: list[str] = []
    queries: dict[str, Query] = {}
    trajectories = data.get("trajectories", {})
    for index, video in enumerate(data.get("videos", [])):
        where = f"{path.name} videos[{index}]"
        vid = str(_field(video, "original_video_id", (str, int), where))
        tid = str(_field(video, "target_id", int, where))
        boxes = trajectories.get(vid, {}).get(tid)
        if boxes is None:
            raise EvalError(f"{where}: no trajectory for video {vid!r} target {tid}")
        query = replace(_vidstg_query(index, video, boxes, where, warnings), query_id=str(video.get("video_id", index)))
        if query.query_id in queries:
            raise EvalError(f"{where}: query id {query.query_id!r} appears twice")
        queries[query.query_id] = query
    return AnnotationSet(queries, "vidstg", path, warnings, benchmark="vidstg")


def _vidor_trajectories(vidor_dir: Path, vid: str, cache: dict) -> dict:
    """tid -> {frame: [x, y, w, h]} from the VidOR annotation `<vid>.json` under `vidor_dir`."""
    if vid in cache:
        return cache[vid]
    matches = sorted(vidor_dir.rglob(f"{vid}.json"))
    if not matches:
        raise EvalError(f"no VidOR annotation {vid}.json under {vidor_dir} (VidSTG takes its boxes from VidOR)")
    data = _read_json(matches[0], "VidOR annotation")
    tracks: dict[str, dict[int, list[float]]] = {}
    for frame, objects in enumerate(data.get("trajectories", [])):
        for obj in objects:
            b = obj["bbox"]
            tracks.setdefault(str(obj["tid"]), {})[frame] = [
                b["xmin"],
                b["ymin"],
                b["xmax"] - b["xmin"],
                b["ymax"] - b["ymin"],
            ]
    cache[vid] = tracks
    return tracks


def load_vidstg_original(data: list, path: Path, vidor_dir: Path | None) -> AnnotationSet:
    """The original VidSTG sentence annotations (a list per video segment) plus the VidOR boxes.
    Queries are numbered as TubeDETR numbers them: per entry, questions first, then captions."""
    if vidor_dir is None:
        raise EvalError(f"{path} is a VidSTG sentence file: pass --vidor-dir (its boxes live in the VidOR annotations)")
    warnings: list[str] = []
    queries: dict[str, Query] = {}
    cache: dict = {}
    for entry_index, entry in enumerate(data):
        where = f"{path.name}[{entry_index}]"
        vid = str(_field(entry, "vid", (str, int), where))
        segment = _field(entry, "used_segment", Mapping, where)
        temporal = _field(entry, "temporal_gt", Mapping, where)
        base = {
            "original_video_id": vid,
            "frame_count": entry.get("frame_count"),
            "fps": entry.get("fps"),
            "width": entry.get("width", 0),
            "height": entry.get("height", 0),
            "start_frame": segment.get("begin_fid"),
            "end_frame": segment.get("end_fid"),
            "tube_start_frame": temporal.get("begin_fid"),
            "tube_end_frame": temporal.get("end_fid"),
        }
        tracks = _vidor_trajectories(vidor_dir, vid, cache)
        for qtype, key in (("interrogative", "questions"), ("declarative", "captions")):
            for sentence in entry.get(key, []):
                video = {**base, "caption": sentence.get("description", ""), "target_id": sentence.get("target_id"),
                         "qtype": qtype}  # fmt: skip
                index = len(queries)
                tid = str(video["target_id"])
                if tid not in tracks:
                    raise EvalError(f"{where}: VidOR video {vid} has no object {tid}")
                queries[str(index)] = _vidstg_query(index, video, tracks[tid], f"{where} {key}", warnings)
    return AnnotationSet(queries, "vidstg", path, warnings, benchmark="vidstg")


# --------------------------------------------------------------------------------------------
# synthetic sets (`stvg-ros synth` / core/synth.write_dataset): every query of queries.json


def synth_query_id(video_id: str, rank: int) -> str:
    """Query id of the rank-th query of a synthetic video: the video id for the first (the one
    annotations.json holds), `<video_id>#<rank>` for the others."""
    return video_id if rank == 0 else f"{video_id}#{rank}"


def load_synth_dataset(root: Path) -> AnnotationSet:
    """All queries of a synthetic set (`index.json`, `annotations.json`, `queries.json`, `gt/`).

    The first query of each video comes from annotations.json (HC-STVG v2 + fps, target_id);
    the others take their boxes from gt/<name>.json. Frame ids are `one_based` (the writer
    stores st_frame counting from 1)."""
    index = _read_json(root / "index.json", "synthetic set index")
    primary = load_hcstvg(_read_json(root / index.get("annotations", "annotations.json"), "annotation file"),
                          root / "annotations.json", dataset="synth", frame_base=SYNTH_FRAME_BASE)  # fmt: skip
    listing = _read_json(root / index.get("queries", "queries.json"), "synthetic query list")
    if not isinstance(listing, list):
        raise EvalError(f"{root / 'queries.json'}: expected a list of queries")
    gt_files = {video_stem(v["video"]): root / v["gt"] for v in index.get("videos", []) if v.get("gt")}
    queries: dict[str, Query] = {}
    ranks: dict[str, int] = {}
    gt_cache: dict[str, dict] = {}
    for number, item in enumerate(listing):
        where = f"{root.name}/queries.json[{number}]"
        video_id = video_stem(str(_field(item, "video", str, where)))
        rank = ranks.get(video_id, 0)
        ranks[video_id] = rank + 1
        query_id = synth_query_id(video_id, rank)
        if rank == 0 and video_id in primary.queries:
            queries[query_id] = primary.queries[video_id]
            continue
        if video_id not in gt_files:
            raise EvalError(f"{where}: no gt file for video {video_id!r} in index.json")
        if video_id not in gt_cache:
            gt_cache[video_id] = _read_json(gt_files[video_id], "synthetic ground truth")
        gt = gt_cache[video_id]
        target = _field(item, "target_id", int, where)
        first, last = _field(item, "start_frame", int, where), _field(item, "end_frame", int, where)
        boxes: dict[int, Box] = {}
        for frame in gt["frames"][first : last + 1]:
            for obj in frame["objects"]:
                if obj["id"] == target:
                    boxes[int(frame["index"]) + SYNTH_FRAME_BASE] = tuple(float(v) for v in obj["xyxy"])
        fps = _number(gt["fps"], f"{where} fps")
        query = Query(
            query_id=query_id,
            video_id=video_id,
            caption=str(item.get("text", "")),
            gt_start=first + SYNTH_FRAME_BASE,
            gt_end=last + 1 + SYNTH_FRAME_BASE,
            gt_boxes=boxes,
            num_frames=int(gt["num_frames"]),
            fps=fps,
            width=int(gt.get("width", 0)),
            height=int(gt.get("height", 0)),
            frame_base=SYNTH_FRAME_BASE,
            eval_start=SYNTH_FRAME_BASE,
            eval_end=SYNTH_FRAME_BASE + int(gt["num_frames"]) - 1,
            sampling_fps=fps,
            gt_start_s=item.get("start_s"),
            gt_end_s=item.get("end_s"),
            target_id=target,
            dataset="synth",
        )
        _check_tube(query, where, primary.warnings)
        queries[query_id] = query
    return AnnotationSet(queries, "synth", root, primary.warnings, benchmark="synth")


# --------------------------------------------------------------------------------------------
# entry point


def detect_format(data) -> str:
    """The annotation format of parsed JSON, or EvalError when it is none of ours."""
    if isinstance(data, Mapping):
        if "videos" in data and "trajectories" in data:
            return "vidstg"
        values = list(data.values())
        if values and all(isinstance(v, Mapping) and "bbox" in v and "st_frame" in v for v in values):
            return "synth" if all("target_id" in v and "fps" in v for v in values) else "hcstvg"
    if isinstance(data, list) and data and isinstance(data[0], Mapping):
        if "tube_start_frame" in data[0] and "trajectory" in data[0]:
            return "tubedetr"
        if "temporal_gt" in data[0] and "used_segment" in data[0]:
            return "vidstg-original"
    if isinstance(data, (Mapping, list)) and not data:
        raise EvalError("the annotation file holds no entries")
    raise EvalError(
        "unrecognised annotation format: expected HC-STVG v1/v2 ({name: {st_frame, bbox, ...}}), a TubeDETR "
        "processed list, VidSTG, or a synthetic set"
    )


def resolve_annotation_path(path: str | Path) -> Path:
    """A file as is; for a directory, its annotations.json (a synthetic set's index.json is
    handled by `load_annotations`)."""
    path = Path(path)
    if path.is_dir():
        for name in ("annotations.json", "annotation.json", "anno.json"):
            if (path / name).is_file():
                return path / name
        raise EvalError(f"{path} is a directory without an annotations.json")
    return path


def load_annotations(
    path: str | Path, fmt: str = "auto", vidor_dir: str | Path | None = None, frame_ids: str | None = None
) -> AnnotationSet:
    """Load any supported annotation file into queries keyed by query id. A synthetic set's
    folder (with index.json) gives every query of its queries.json.

    `frame_ids` names the frame-id convention (`FRAME_ID_CONVENTIONS`); None takes the format's
    own: ``decoded`` for HC-STVG, TubeDETR lists and VidSTG, ``one_based`` for synthetic sets.
    Only files with HC-STVG's `st_frame` (HC-STVG, TubeDETR lists, a synthetic annotations.json)
    can be read in the other convention.

    Raises EvalError naming the file and the problem (missing, not JSON, unknown format, a field
    missing or of the wrong type, a GT span outside the video)."""
    if fmt not in FORMATS:
        raise EvalError(f"unknown annotation format {fmt!r}; use one of {', '.join(FORMATS)}")
    base = None if frame_ids is None else check_frame_ids(frame_ids)
    if Path(path).is_dir() and (Path(path) / "index.json").is_file() and fmt in ("auto", "synth"):
        if base not in (None, SYNTH_FRAME_BASE):
            raise EvalError(f"{path}: a synthetic set's queries.json counts frames one way only (frame ids: one_based)")
        return load_synth_dataset(Path(path))
    path = resolve_annotation_path(path)
    data = _read_json(path, "annotation file")
    try:
        detected = detect_format(data)
    except EvalError as exc:
        raise EvalError(f"{path}: {exc}") from None
    if fmt != "auto" and not detected.startswith(fmt) and not (fmt == "hcstvg" and detected == "synth"):
        raise EvalError(f"{path} looks like {detected}, not {fmt}")
    if detected.startswith("vidstg") and base not in (None, VIDSTG_FRAME_BASE):
        raise EvalError(f"{path}: VidSTG frame ids are 0-based decoded frames (frame ids: decoded) only")
    if detected == "vidstg":
        result = load_tubedetr_vidstg(data, path)
    elif detected == "vidstg-original":
        result = load_vidstg_original(data, path, Path(vidor_dir) if vidor_dir else None)
    elif detected == "tubedetr":
        result = load_tubedetr_hcstvg(data, path, HCSTVG_FRAME_BASE if base is None else base)
    elif detected == "synth":
        result = load_hcstvg(data, path, dataset="synth", frame_base=SYNTH_FRAME_BASE if base is None else base)
    else:
        result = load_hcstvg(data, path, frame_base=HCSTVG_FRAME_BASE if base is None else base)
    if not result.queries:
        raise EvalError(f"{path}: no queries")
    return result


def queries_from(annotations: AnnotationSet | Iterable[Query]) -> list[Query]:
    return list(annotations.queries.values()) if isinstance(annotations, AnnotationSet) else list(annotations)
