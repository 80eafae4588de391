"""Seeded synthetic benchmark sets with a difficulty level, as videos + rosbag2 bags + annotations.

`stvg-ros eval make-set --out DIR --level occlusion --count 8 --seed 0` writes, through
`core/synth.write_dataset` (the `stvg-ros synth` engine):

    DIR/videos/<name>.mp4, DIR/bags/<name>/ (rosbag2), DIR/gt/<name>.json,
    DIR/annotations.json (HC-STVG v2 + fps, target_id), DIR/queries.json, DIR/index.json,
    DIR/sidecars/<name>.json (what `eval replay` needs per bag), DIR/benchset.json (this manifest),
    DIR/gt_predictions.json (the ground truth written as predictions: scores 1 under `tubedetr` and
    `hcstvg_official`, a check of any evaluation set-up), and with `--paraphrase`
    DIR/annotations_paraphrased.json (annotations.json with its captions reworded,
    `synthetic/paraphrase.py`: does a model generalise beyond the caption templates?).

Levels: easy, occlusion (the target is fully hidden for a while), distractors (look-alikes),
crossing (paths cross), mixed (cycles through the four).

`write_long_case` writes one long, small bag (default 10 minutes) with its annotation and sidecar:
the memory test of `eval replay` and the replay benchmark.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from stvg_ros.evaluation.errors import EvalError
from stvg_ros.evaluation.loaders import AnnotationSet
from stvg_ros.evaluation.predictions import Prediction, save_predictions

LEVELS = ("easy", "occlusion", "distractors", "crossing", "mixed")
MANIFEST = "benchset.json"
PARAPHRASED = "annotations_paraphrased.json"
DEFAULT_TOPIC = "/camera/image_raw"


def sidecar_for(video_id: str, bag: Path, annotations: Path, query_ids: list[str], topic: str) -> dict:
    """The replay sidecar of one bag: which annotation set, which queries, when to ask them.

    Every query is asked once the bag's last frame has been played (`ask_at_frame` null), over
    the whole buffer (`window_s` 0), as the offline runner grounds over the whole video."""
    return {
        "video_id": video_id,
        "bag": str(bag),
        "topic": topic,
        "annotations": str(annotations),
        "queries": [{"query_id": q, "ask_at_frame": None, "window_s": 0.0} for q in query_ids],
    }


def gt_predictions(annotations: AnnotationSet) -> dict[str, Prediction]:
    """The ground truth as a prediction file (GT span, GT boxes, the annotated target ID)."""
    predictions = {}
    for q in annotations:
        boxes = dict(q.gt_boxes)
        predictions[q.query_id] = Prediction(
            q.query_id, q.gt_start, q.gt_end, boxes, q.gt_start_s, q.gt_end_s, q.target_id
        )
    return predictions


def make_set(
    out: str | Path,
    level: str = "mixed",
    count: int = 8,
    seed: int = 0,
    seconds: float = 20.0,
    fps: float = 10.0,
    width: int = 320,
    height: int = 240,
    objects: int = 4,
    queries_per_video: int = 1,
    storage: str = "sqlite3",
    bags: bool = True,
    paraphrase: bool = False,
) -> dict:
    """Write the set and return its manifest (also saved as DIR/benchset.json).

    `paraphrase`: also write annotations_paraphrased.json (the same queries, captions reworded,
    seeded from `seed`), listed in the manifest as `annotations_paraphrased`."""
    from stvg_ros.evaluation.loaders import load_annotations
    from stvg_ros.synthetic.scenes import SceneSpec, write_dataset

    if level not in LEVELS:
        raise EvalError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
    if count < 1:
        raise EvalError("--count must be at least 1")
    spec = SceneSpec(seconds=seconds, fps=fps, width=width, height=height, n_objects=objects,
                     difficulty=level, max_queries=queries_per_video)  # fmt: skip
    try:
        spec.validate()
    except ValueError as exc:
        raise EvalError(f"invalid set parameters: {exc}") from None
    root = Path(out)
    index = write_dataset(root, seed=seed, n_videos=count, spec=spec, bags=bags, storage=storage)
    annotations = load_annotations(root)
    sidecars = []
    if bags:
        (root / "sidecars").mkdir(exist_ok=True)
        for name, bag in zip(index.names, index.bags, strict=True):
            ids = [q.query_id for q in annotations if q.video_id == name]
            sidecar = sidecar_for(name, Path("..") / bag.relative_to(root), Path(".."), ids, DEFAULT_TOPIC)
            path = root / "sidecars" / f"{name}.json"
            path.write_text(json.dumps(sidecar, indent=1) + "\n")
            sidecars.append(str(path.relative_to(root)))
    save_predictions(root / "gt_predictions.json", gt_predictions(annotations))
    if paraphrase:
        from stvg_ros.synthetic.paraphrase import paraphrase_annotations

        paraphrase_annotations(root / "annotations.json", root / PARAPHRASED, seed)
    manifest = {
        "root": str(root),
        "level": level,
        "seed": seed,
        "spec": asdict(spec),
        "n_videos": count,
        "n_queries": len(annotations),
        "difficulties": list(index.difficulties),
        "annotations": "annotations.json",
        **({"annotations_paraphrased": PARAPHRASED} if paraphrase else {}),
        "videos": "videos",
        "bags": [str(b.relative_to(root)) for b in index.bags],
        "sidecars": sidecars,
        "gt_predictions": "gt_predictions.json",
        "storage": storage,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# --------------------------------------------------------------------------------------------
# a long bag for memory and throughput checks of replay

LONG_CASE_ID = "long_drive"
LONG_CASE_T0_NS = 1_750_000_000 * 10**9


def long_case_square(frame: int, width: int, height: int, side: int) -> tuple[int, int]:
    """Top-left corner of the long case's square: back and forth across the frame, 1 px per frame."""
    span = width - side
    phase = frame % (2 * span)
    return (phase if phase < span else 2 * span - phase), (height - side) // 2


def write_long_case(
    out: str | Path,
    seconds: float = 600.0,
    fps: float = 4.0,
    width: int = 96,
    height: int = 72,
    side: int = 12,
    gt_frames: int = 100,
    storage: str = "mcap",
) -> Path:
    """A bag of `seconds` with one square moving back and forth, an HC-STVG annotation whose GT
    tube covers the square on the last `gt_frames` frames but ten, and the sidecar that asks about
    it after the last frame. Frames are generated one at a time. Returns the sidecar's path."""
    import numpy as np

    from stvg_ros.core.bag_io import write_image_bag

    frames = round(seconds * fps)
    if frames < gt_frames + 20 or side >= min(width, height):
        raise EvalError("the long case needs more frames than its GT tube and a square smaller than the frame")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    background = np.full((height, width, 3), 96, np.uint8)

    def generate():
        for frame in range(frames):
            rgb = background.copy()
            x, y = long_case_square(frame, width, height, side)
            rgb[y : y + side, x : x + side] = (220, 60, 40)
            yield LONG_CASE_T0_NS + round(frame * 1e9 / fps), rgb

    write_image_bag(root / "bag", generate(), topic=DEFAULT_TOPIC, storage=storage, overwrite=True)
    first, end = frames - gt_frames, frames - 10  # decoded [first, end)
    annotation = {
        f"{LONG_CASE_ID}.mp4": {
            "st_frame": first,  # a decoded frame, as TubeDETR reads HC-STVG (frame ids: decoded)
            "bbox": [[*long_case_square(f, width, height, side), side, side] for f in range(first, end)],
            "img_num": frames,
            "img_size": [height, width],
            "fps": fps,
            "English": "the red square moving across",
            "st_time": first / fps,
            "ed_time": (end - 1) / fps,
        }
    }
    (root / "annotations.json").write_text(json.dumps(annotation) + "\n")
    sidecar = sidecar_for(LONG_CASE_ID, Path("bag"), Path("annotations.json"), [LONG_CASE_ID], DEFAULT_TOPIC)
    (root / "sidecar.json").write_text(json.dumps(sidecar, indent=1) + "\n")
    return root / "sidecar.json"
